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
