//! `pstorage top`: the cluster status, redrawn live.
//!
//! On a terminal the screen is cleared and redrawn every interval until `q`
//! or Ctrl-C (stdin is put in non-canonical mode meanwhile and restored on
//! exit). Otherwise (a pipe, a file) the status is printed once per
//! interval, separated by a timestamp line, forever or `-n` times.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use pstorage_core::client::Client;
use pstorage_core::{Error, Result};

use crate::format::{format_status, format_time_ms};

/// Puts a terminal's stdin in non-canonical, no-echo mode until dropped.
struct RawStdin {
    saved: libc::termios,
}

impl RawStdin {
    fn enable() -> Option<RawStdin> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a valid termios struct.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawStdin { saved })
        }
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enable`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// Runs `top`. `interval_s` must be positive.
pub async fn run(client: &Client, interval_s: f64, iterations: Option<u64>) -> Result<()> {
    if !(interval_s.is_finite() && interval_s > 0.0) {
        return Err(Error::invalid(format!(
            "bad interval {interval_s}: give a positive number of seconds"
        )));
    }
    let interval = Duration::from_secs_f64(interval_s.max(0.05));
    let interactive = std::io::stdout().is_terminal();
    let (quit_tx, mut quit_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _raw = if interactive && std::io::stdin().is_terminal() {
        let raw = RawStdin::enable();
        // A detached reader: it ends with the process.
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            let mut stdin = std::io::stdin();
            while let Ok(1) = stdin.read(&mut byte) {
                if byte[0] == b'q' || byte[0] == b'Q' {
                    let _ = quit_tx.send(());
                    return;
                }
            }
        });
        raw
    } else {
        drop(quit_tx);
        None
    };
    let mut done = 0u64;
    loop {
        let status = client.cluster_status().await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut out = std::io::stdout().lock();
        if interactive {
            // Home + clear screen, then the status.
            write!(out, "\x1b[H\x1b[2J")?;
            writeln!(
                out,
                "pstorage top - {} UTC (q to quit)\n",
                format_time_ms(now_ms)
            )?;
        } else {
            writeln!(out, "--- {} UTC", format_time_ms(now_ms))?;
        }
        write!(out, "{}", format_status(&status))?;
        out.flush()?;
        drop(out);
        done += 1;
        if iterations.is_some_and(|n| done >= n) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            Some(()) = quit_rx.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
