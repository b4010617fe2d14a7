//! Crash consistency with real processes at the default settings (256 MiB
//! chunks, replicas 3:2, the default 30 s lease): a writer (`nbd-serve`
//! under fio) killed mid-write, and every chunk server killed under a
//! writer. Afterwards `pstorage verify` must find every replica of every
//! block identical, no replica may have been deleted for being torn, and
//! flushed data must read back.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pstorage_core::types::DEFAULT_CHUNK_SIZE;
use pstorage_tests::{all_chunks_healthy, pattern, ClusterOptions, NbdServer, TestCluster};

fn defaults() -> ClusterOptions {
    ClusterOptions {
        chunk_size: DEFAULT_CHUNK_SIZE,
        env: Vec::new(),
        ..ClusterOptions::default()
    }
}

/// fio random 4 KiB writes, queue depth 16, over an NBD export until
/// killed; returns once it reports write IOPS (writes are in flight).
fn start_writer(server: &NbdServer, path: &str) -> Child {
    let mut fio = Command::new("fio")
        .args([
            "--name=writer",
            "--ioengine=nbd",
            &format!("--uri={}", server.uri(path)),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--time_based",
            "--runtime=600",
            "--eta=always",
            "--eta-newline=1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fio (apt-get install fio)");
    let stdout = fio.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            // "Jobs: 1 (f=1): [w(1)][2.0%][w=9.8MiB/s][w=2510 IOPS][eta ...]"
            let iops = line
                .split("][")
                .find_map(|f| f.strip_prefix("w=").and_then(|f| f.strip_suffix(" IOPS")))
                .and_then(|n| n.trim().parse::<f64>().ok());
            if !sent && iops.is_some_and(|n| n > 0.0) {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("fio never reported writes");
    fio
}

/// `pstorage verify PATH`, retried while the killed writer's lease still
/// holds the file (it expires by itself).
fn verify(cluster: &TestCluster, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = cluster.cli(&["verify", path]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return stdout;
        }
        let waiting =
            stderr.contains("lease") || stderr.contains("busy") || stderr.contains("Busy");
        assert!(
            waiting && Instant::now() < deadline,
            "verify {path} failed:\n{stdout}\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_healthy(cluster: &TestCluster) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !cluster.status().is_some_and(|s| all_chunks_healthy(&s)) {
        assert!(
            Instant::now() < deadline,
            "chunks not healthy: {:?}\nMDS log:\n{}",
            cluster.status(),
            pstorage_tests::tail(&cluster.log("mds.log"), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_writer_killed_mid_write_leaves_replicas_that_verify_identical() {
    let cluster = TestCluster::start(defaults());
    cluster.cli_ok(&["mkdir", "/vm"]);
    cluster.cli_ok(&["truncate", "-s", "512M", "/vm/disk.img"]);
    let mut server = NbdServer::start(&cluster, "nbd.log", &[]);
    let mut fio = start_writer(&server, "/vm/disk.img");
    server.kill();
    let _ = fio.kill();
    let _ = fio.wait();
    // The next open (verify's) waits out the dead writer's lease, then
    // finds every replica of every block identical.
    let report = verify(&cluster, "/vm/disk.img");
    assert!(report.contains(": 0 problems"), "{report}");
    assert!(report.contains("2 chunks, 6 replicas"), "{report}");
}

#[test]
fn every_chunk_server_killed_under_a_writer_loses_no_replica() {
    let mut cluster = TestCluster::start(defaults());
    cluster.cli_ok(&["mkdir", "/vm"]);
    let flushed = pattern(3, 48 << 20);
    let out = cluster.cli_stdin(&["put", "-", "/vm/flushed.img"], &flushed);
    assert!(out.status.success(), "{out:?}");
    cluster.cli_ok(&["truncate", "-s", "256M", "/vm/disk.img"]);
    let mut server = NbdServer::start(&cluster, "nbd.log", &[]);
    let mut fio = start_writer(&server, "/vm/disk.img");
    for i in 0..3 {
        cluster.kill_cs(i);
    }
    server.kill();
    let _ = fio.kill();
    let _ = fio.wait();
    for i in 0..3 {
        cluster.start_cs(i);
    }
    cluster.wait_active(3);
    wait_healthy(&cluster);
    for path in ["/vm/disk.img", "/vm/flushed.img"] {
        let report = verify(&cluster, path);
        assert!(report.contains(": 0 problems"), "{report}");
    }
    let got = cluster.dir.path().join("flushed.out");
    cluster.cli_ok(&["get", "/vm/flushed.img", got.to_str().unwrap()]);
    assert!(
        std::fs::read(&got).unwrap() == flushed,
        "flushed data changed"
    );
    // No replica was taken out of service or deleted for being torn.
    let events = cluster.cli_ok(&["get-event-log"]);
    assert!(
        !events.contains("corrupt") && !events.contains("torn"),
        "{events}"
    );
    for i in 0..3 {
        let log = cluster.log(&format!("cs{i}.log"));
        assert!(!log.contains("corrupt replica"), "CS {i}:\n{log}");
    }
}
