//! `pstorage nbd-serve` as a child process on an ephemeral port, for tests
//! that drive it with real NBD clients (qemu-img, nbdcopy, fio's nbd
//! engine). It is killed on drop, also when the test fails.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin_dir, TestCluster};

/// An `nbd-serve` child process.
pub struct NbdServer {
    child: Option<Child>,
    /// The TCP port it listens on (127.0.0.1).
    pub port: u16,
    /// Its log file (stderr).
    pub log: PathBuf,
}

impl NbdServer {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Starts `pstorage nbd-serve --listen 127.0.0.1:0 EXTRA...` logging to
    /// `log_name` in the cluster's directory, and waits for the port it
    /// prints.
    pub fn start(cluster: &TestCluster, log_name: &str, extra: &[&str]) -> NbdServer {
        Self::start_listening(cluster, log_name, "127.0.0.1:0", extra)
    }

    /// [`NbdServer::start`] listening on `listen` (`ADDR:PORT`).
    pub fn start_listening(
        cluster: &TestCluster,
        log_name: &str,
        listen: &str,
        extra: &[&str],
    ) -> NbdServer {
        let log = cluster.dir.path().join(log_name);
        let log_file = std::fs::File::create(&log).expect("server log");
        let mut child = Command::new(bin_dir().join("pstorage"))
            .arg("--conf-dir")
            .arg(&cluster.conf_root)
            .args(["-c", &cluster.name, "nbd-serve", "--listen", listen])
            .args(extra)
            .env("PSTORAGE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn nbd-serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = NbdServer {
            child: Some(child),
            port: 0,
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("nbd-serve did not start: {}", server.log_text()));
        let addr = line
            .strip_prefix("nbd-serve: listening on tcp ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        server.port = addr.rsplit(':').next().unwrap().parse().expect("port");
        server
    }

    /// `nbd://127.0.0.1:PORT/PATH` (PATH without its leading slash; the
    /// server maps `vm/x` and `/vm/x` to the same file).
    pub fn uri(&self, path: &str) -> String {
        format!(
            "nbd://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9: the server dies wherever it is, mid-write included; its
    /// lease is left to expire.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit (the server flushes and closes
    /// its exports); kill -9 after 60 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child process, which has not been
        // waited for yet, so its pid cannot have been reused.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "nbd-serve exited with {status}: {}",
                    self.log_text()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nbd-serve did not stop on SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
