//! A frozen chunk server (SIGSTOP: its TCP connections stay open, nothing
//! answers) under a VM-like writer: fio with crc32c verification through
//! `pstorage nbd-serve`, at the default chunk size and default timeouts.
//! The guest must see a pause, never an error: the frozen server is
//! reported by whoever waits on it, the MDS's own probe confirms it, and
//! the chains go on without it. Needs fio with its nbd engine
//! (scripts/apt.d/nbd.list).

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pstorage_core::types::{CsStatus, LeaseMode, OpenFlags};
use pstorage_tests::{pattern, ClusterOptions, NbdServer, TestCluster};

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child process of this test.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Polls `cond` every 200 ms until it holds or `limit` passes.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sigstop_of_a_chain_member_under_fio_verify_pauses_and_never_fails() {
    let mut cluster = TestCluster::start(ClusterOptions {
        chunk_size: 256 << 20,
        ..ClusterOptions::default()
    });
    cluster.cli_ok(&["mkdir", "/vm"]);
    cluster.cli_ok(&["truncate", "-s", "512M", "/vm/disk.img"]);
    let server = NbdServer::start(&cluster, "nbd.log", &[]);

    // Random 4 KiB writes at queue depth 16 across the boundary of the two
    // chunks, paced so the write phase lasts well past the freeze, then a
    // crc32c verify of everything written.
    let fio = Command::new("timeout")
        .arg("600")
        .arg("fio")
        .args([
            "--name=frozen-cs",
            "--ioengine=nbd",
            &format!("--uri={}", server.uri("/vm/disk.img")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--offset=192M",
            "--size=96M",
            "--rate_iops=2000",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run fio (scripts/install-deps.sh installs it)");

    // Every chain holds all three servers (replicas 3): freeze one 3 s in.
    std::thread::sleep(Duration::from_secs(3));
    let frozen = 1;
    let frozen_id = cluster.cs_id(frozen);
    let pid = cluster.cs_pid(frozen).expect("CS runs");
    signal(pid, libc::SIGSTOP);
    let frozen_at = Instant::now();

    let out = fio.wait_with_output().expect("fio");
    let fio_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "fio failed ({}):\n{fio_out}\n{}\nnbd-serve log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    let fio_done = frozen_at.elapsed();
    let json: serde_json::Value =
        serde_json::from_str(&fio_out[fio_out.find('{').expect("fio json")..]).expect("fio json");
    let job = &json["jobs"][0];
    assert_eq!(job["error"], 0, "{fio_out}");
    assert!(
        job["write"]["io_bytes"].as_u64().unwrap() >= 96 << 20,
        "{fio_out}"
    );
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() >= 96 << 20,
        "{fio_out}"
    );
    let clat_max = |dir: &str| Duration::from_nanos(job[dir]["clat_ns"]["max"].as_u64().unwrap());
    let (write_max, read_max) = (clat_max("write"), clat_max("read"));
    eprintln!(
        "fio finished {fio_done:?} after the SIGSTOP; longest write {write_max:?}, longest read {read_max:?}"
    );
    assert!(write_max < Duration::from_secs(20), "{fio_out}");
    assert!(read_max < Duration::from_secs(20), "{fio_out}");
    // The run outlasted the freeze by far: the frozen server really was
    // in the way, and it was dropped from the chains the writer used.
    assert!(fio_done > Duration::from_secs(5), "{fio_done:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = cluster.client();
    let chains = rt.block_on(client.file_chunks("/vm/disk.img")).unwrap();
    assert_eq!(chains.len(), 2, "{chains:?}");
    for map in &chains {
        assert!(
            map.replicas.iter().all(|r| r.cs != frozen_id),
            "CS {frozen_id} was frozen but is still in {map:?}"
        );
        assert_eq!(map.replicas.len(), 2, "{map:?}");
    }
    let events = cluster.cli(&["get-event-log"]);
    eprintln!("{}", String::from_utf8_lossy(&events.stdout));

    // Thawed, the server heartbeats again and the cluster keeps serving.
    signal(pid, libc::SIGCONT);
    wait_for(
        "the thawed CS is active again",
        Duration::from_secs(60),
        || {
            cluster.status().is_some_and(|s| {
                s.cs.iter()
                    .any(|c| c.id == frozen_id && c.status == CsStatus::Active)
            })
        },
    );
    let data = pattern(7, 8 << 20);
    rt.block_on(async {
        let file = client
            .open(
                "/vm/after.img",
                LeaseMode::Write,
                OpenFlags {
                    create: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        file.write_at(250 << 20, &data).await.unwrap();
        file.close().await.unwrap();
        let file = client
            .open("/vm/after.img", LeaseMode::Read, OpenFlags::default())
            .await
            .unwrap();
        let mut back = vec![0u8; data.len()];
        let n = file.read_at(250 << 20, &mut back).await.unwrap();
        assert_eq!(n, data.len());
        assert!(back == data, "read back differs");
        file.close().await.unwrap();
    });
    assert!(cluster.cs_running(frozen));
    // Full recovery (the dropped replicas copied back, 256 MiB each) is
    // re-replication's job, tested in healing.rs; it is not waited for here.
    eprintln!("{}", cluster.cli_ok(&["stat"]));
}
