//! Reading the cluster password for `make-mds -p` and `auth-node`.
//!
//! On a terminal the password is asked for with echo off; otherwise the
//! first line of standard input is the password, so scripts can pipe it.

use std::io::{BufRead, IsTerminal, Write};

use pstorage_core::{Error, Result};

/// Reads the password: prompts on a terminal (twice when `confirm`), else
/// reads the first line of stdin. An empty password is refused.
pub fn read_password(prompt: &str, confirm: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt_no_echo(prompt)?;
        if confirm {
            let second = prompt_no_echo("Confirm password: ")?;
            if first != second {
                return Err(Error::invalid("the passwords do not match"));
            }
        }
        first
    } else {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        return Err(Error::invalid("the password must not be empty"));
    }
    Ok(password)
}

/// Shortest cluster password `make-mds -I` accepts.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Fewest distinct characters a cluster password must have.
pub const MIN_DISTINCT_CHARS: usize = 6;

/// The strength a new cluster's password must have: at least
/// [`MIN_PASSWORD_LEN`] characters, [`MIN_DISTINCT_CHARS`] of them
/// distinct, and not the cluster's name or a well-known password. (The
/// password never crosses the wire and guesses over the network are
/// rate-limited, but the MDSes keep a key derived from it.)
pub fn check_strength(password: &str, cluster: &str) -> Result<()> {
    const COMMON: [&str; 8] = [
        "password", "pstorage", "123456", "qwerty", "letmein", "admin", "secret", "changeme",
    ];
    let chars = password.chars().count();
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let lower = password.to_lowercase();
    let why = if chars < MIN_PASSWORD_LEN {
        Some(format!(
            "it has {chars} characters, at least {MIN_PASSWORD_LEN} are needed"
        ))
    } else if distinct.len() < MIN_DISTINCT_CHARS {
        Some(format!(
            "it has {} distinct characters, at least {MIN_DISTINCT_CHARS} are needed",
            distinct.len()
        ))
    } else if lower.contains(&cluster.to_lowercase()) && chars < cluster.len() + 5 {
        Some("it is mostly the cluster's name".to_string())
    } else if COMMON
        .iter()
        .any(|c| lower.contains(c) && chars < c.len() + 5)
    {
        Some("it is mostly a well-known password".to_string())
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::invalid(format!(
            "the cluster password is too weak: {why}; choose a longer one (a passphrase of a few \
             words works)"
        ))),
        None => Ok(()),
    }
}

fn prompt_no_echo(prompt: &str) -> Result<String> {
    let mut stderr = std::io::stderr();
    write!(stderr, "{prompt}")?;
    stderr.flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a terminal fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `saved` is a valid termios to fill.
    let have_tty = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_tty {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: setting attributes on the same terminal fd with a valid struct.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if have_tty {
        // SAFETY: restores the attributes saved above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    writeln!(stderr)?;
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_refused_with_the_reason() {
        for weak in [
            "pstorage",
            "short",
            "aaaaaaaaaaaaaaaa",
            "ababababababab",
            "password1234",
            "mycluster123",
        ] {
            let err = check_strength(weak, "mycluster").unwrap_err();
            assert!(err.to_string().contains("too weak"), "{weak}: {err}");
        }
        for strong in [
            "test-password",
            "correct horse battery",
            "chaos-password",
            "bench-password",
        ] {
            check_strength(strong, "mycluster").unwrap();
        }
    }
}
