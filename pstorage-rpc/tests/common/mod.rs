//! What the in-process cluster tests share: deterministic data and views of
//! this process's threads and file descriptors (Linux `/proc/self`).
#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pstorage_core::client::Client;
use pstorage_core::types::{LeaseMode, OpenFlags};

/// Deterministic bytes (xorshift) so a mismatch reproduces.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What every open file descriptor of this process points to.
pub fn fd_targets() -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect()
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    fd_targets().len()
}

/// Open file descriptors on files under `dir`.
pub fn fds_under(dir: &Path) -> Vec<PathBuf> {
    fd_targets()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The names of this process's threads.
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// Polls `done` every 50 ms until it holds or `timeout` passes; returns
/// whether it held.
pub fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a TCP socket of this machine is established with local port
/// `port` on 127.0.0.1 (`/proc/net/tcp`: the server side of a connection
/// that a stopped node should have closed).
pub fn established_on(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/self/net/tcp").expect("/proc/self/net/tcp");
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // st 01 = ESTABLISHED.
        fields.len() > 3 && fields[1] == local && fields[3] == "01"
    })
}

/// Creates (or replaces) `path` with `data`, flushed, under a write lease.
pub async fn write_file(client: &Client, path: &str, data: &[u8]) {
    let flags = OpenFlags {
        create: true,
        truncate: true,
        ..Default::default()
    };
    let file = client.open(path, LeaseMode::Write, flags).await.unwrap();
    file.write_at(0, data).await.unwrap();
    file.flush().await.unwrap();
    file.close().await.unwrap();
}

/// The whole of `path`, read under a read lease.
pub async fn read_file(client: &Client, path: &str) -> Vec<u8> {
    let file = client
        .open(path, LeaseMode::Read, OpenFlags::default())
        .await
        .unwrap();
    let mut buf = vec![0u8; file.size() as usize];
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(done as u64, &mut buf[done..]).await.unwrap();
        assert!(n > 0, "short read of {path} at {done}");
        done += n;
    }
    file.close().await.unwrap();
    buf
}
