//! Recovery at the default chunk size (256 MiB, replicas 3:2) with real
//! daemons: a lost chunk server is replaced, a returning one is resynced
//! (only the blocks that changed are sent), every chunk server killed at
//! once under a writer recovers by itself, and `rm-cs` finishes for full
//! chunks. Tests that shorten `mds.wd.offline_tout` have a `long_*` twin at
//! the default (run by `scripts/test.sh --long`).

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use pstorage_core::types::CsId;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pstorage_core::client::ClientOptions;
use pstorage_core::types::{ClusterHealth, CsStatus, EventKind, LeaseMode, OpenFlags};
use pstorage_tests::{
    all_chunks_healthy, chain, events, pattern, read_all, tail, write_file, ClusterOptions,
    NbdServer, TestCluster,
};

const MIB: u64 = 1 << 20;
/// The cluster default.
const CHUNK: u64 = 256 * MIB;

fn options(chunk_servers: usize, chunk_size: u64, offline_ms: Option<u64>) -> ClusterOptions {
    let mut env = vec![("PSTORAGE_HEARTBEAT_MS".to_string(), "200".to_string())];
    if let Some(ms) = offline_ms {
        env.push(("PSTORAGE_OFFLINE_MS".to_string(), ms.to_string()));
    }
    ClusterOptions {
        mds: 1,
        chunk_servers,
        chunk_size,
        env,
        ..ClusterOptions::default()
    }
}

// ---- a lost chunk server ----

/// kill -9 one of 4 chunk servers holding a 300 MiB file: every chunk gets
/// its 3 copies back (`stat` healthy once the dead server is removed), then
/// two more are killed and every byte reads back from the last one.
async fn lose_one_then_two_more(offline_ms: Option<u64>, recovery: Duration) {
    let mut cluster = TestCluster::start(options(4, CHUNK, offline_ms));
    let client = cluster.client();
    let data = pattern(31, 300 * MIB as usize);
    write_file(&client, "/data.bin", &data).await;
    let before = client.file_chunks("/data.bin").await.unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    let victim = (1..=4)
        .map(CsId)
        .max_by_key(|cs| before.iter().filter(|m| chain(m).contains(cs)).count())
        .unwrap();
    cluster.kill_cs(cluster.cs_index(CsId(victim.0)));
    let started = Instant::now();
    cluster
        .wait_for(
            recovery,
            "re-replication of the lost server's chunks",
            || async {
                let maps = client.file_chunks("/data.bin").await.ok()?;
                let s = client.cluster_status().await.ok()?;
                let done = maps
                    .iter()
                    .all(|m| m.replicas.len() == 3 && !chain(m).contains(&victim))
                    && all_chunks_healthy(&s);
                done.then_some(())
            },
        )
        .await;
    eprintln!("re-replicated in {:?}", started.elapsed());
    let s = client.cluster_status().await.unwrap();
    assert!(s.replication.done_chunks >= 1, "{s:?}");
    assert!(s.replication.copied_bytes >= 44 * MIB, "{s:?}");
    assert_eq!(s.replication.remaining_bytes, 0, "{s:?}");
    // The dead server is the only thing that keeps stat from "healthy".
    cluster.cli_ok(&["rm-cs", "--force", &victim.to_string()]);
    cluster
        .wait_for(Duration::from_secs(30), "stat: healthy", || async {
            let text = cluster.cli_ok(&["stat"]);
            text.lines()
                .next()
                .is_some_and(|l| l.ends_with(": healthy"))
                .then_some(())
        })
        .await;

    // Two more go: the last one holds every chunk.
    let maps = client.file_chunks("/data.bin").await.unwrap();
    let survivor = chain(&maps[0])[0];
    assert!(
        maps.iter().all(|m| chain(m).contains(&survivor)),
        "{maps:?}"
    );
    for id in (1..=4).map(CsId) {
        if id != victim && id != survivor {
            cluster.kill_cs(cluster.cs_index(id));
        }
    }
    let reader = cluster.client_with(ClientOptions {
        io_timeout: Duration::from_secs(120),
        ..ClientOptions::default()
    });
    assert!(read_all(&reader, "/data.bin").await == data, "data differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_chunk_server_is_replaced_at_the_default_chunk_size() {
    lose_one_then_two_more(Some(3_000), Duration::from_secs(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: waits for the default mds.wd.offline_tout (300 s)"]
async fn long_a_lost_chunk_server_is_replaced_at_the_default_offline_timeout() {
    lose_one_then_two_more(None, Duration::from_secs(900)).await;
}

// ---- a returning chunk server ----

/// A chunk server that misses a few writes (its replicas' versions are
/// bumped while it is away) is resynced when it returns: its replica goes
/// back in the chain and only the changed blocks are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_server_is_resynced_not_recopied() {
    let mut cluster = TestCluster::start(options(3, CHUNK, None));
    let client = cluster.client();
    let mut data = pattern(41, 64 * MIB as usize);
    write_file(&client, "/vm.img", &data).await;
    let before = client.file_chunks("/vm.img").await.unwrap();
    assert_eq!(
        (before.len(), before[0].replicas.len()),
        (1, 3),
        "{before:?}"
    );
    let away = chain(&before[0])[2];
    cluster.kill_cs(cluster.cs_index(away));

    // Three blocks change while it is away: the chain drops it and bumps.
    let file = client
        .open("/vm.img", LeaseMode::Write, OpenFlags::default())
        .await
        .unwrap();
    for (i, off) in [4096u64, 20 * MIB, 60 * MIB + 8192].into_iter().enumerate() {
        let block = pattern(100 + i as u64, 4096);
        file.write_at(off, &block).await.unwrap();
        data[off as usize..off as usize + 4096].copy_from_slice(&block);
    }
    file.flush().await.unwrap();
    file.close().await.unwrap();
    let during = client.file_chunks("/vm.img").await.unwrap();
    assert!(!chain(&during[0]).contains(&away), "{during:?}");
    assert!(during[0].version > before[0].version);
    let copied_before = client
        .cluster_status()
        .await
        .unwrap()
        .replication
        .copied_bytes;

    cluster.start_cs(cluster.cs_index(away));
    cluster
        .wait_for(
            Duration::from_secs(120),
            "the returning server back in the chain",
            || async {
                let maps = client.file_chunks("/vm.img").await.ok()?;
                let s = client.cluster_status().await.ok()?;
                (chain(&maps[0]).contains(&away) && all_chunks_healthy(&s)).then_some(())
            },
        )
        .await;
    let s = client.cluster_status().await.unwrap();
    let sent = s.replication.copied_bytes - copied_before;
    assert!(
        (4096..=MIB).contains(&sent),
        "{sent} bytes sent to resync 3 changed blocks of a 64 MiB replica: {s:?}"
    );
    let registered = events(&client, EventKind::CsState).await;
    assert!(
        registered.contains("1 stale kept to be resynced"),
        "{registered}"
    );

    // The resynced replica alone has every byte.
    for id in chain(&client.file_chunks("/vm.img").await.unwrap()[0]) {
        if id != away {
            cluster.kill_cs(cluster.cs_index(id));
        }
    }
    let reader = cluster.client_with(ClientOptions {
        io_timeout: Duration::from_secs(120),
        ..ClientOptions::default()
    });
    assert!(read_all(&reader, "/vm.img").await == data, "data differs");
}

// ---- every chunk server at once ----

/// kill -9 of every chunk server at once under a fio random writer through
/// nbd-serve, restarted a second later: the writer sees no error, every
/// chunk has its 3 copies again within 2 minutes, and a file flushed
/// before the crash reads back equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_chunk_server_killed_at_once_under_a_writer_recovers() {
    let began = Instant::now();
    let mut cluster = TestCluster::start(options(3, CHUNK, None));
    let client = cluster.client();
    let kept = pattern(51, 20 * MIB as usize);
    write_file(&client, "/kept.bin", &kept).await;
    cluster.cli_ok(&["truncate", "-s", "1G", "/fio.img"]);
    let server = NbdServer::start(&cluster, "nbd.log", &[]);
    let fio = Command::new("timeout")
        .args(["600", "fio", "--name=crash", "--ioengine=nbd"])
        .arg(format!("--uri=nbd://127.0.0.1:{}/fio.img", server.port))
        .args([
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=1G",
            // Capped: every 4 KiB random write becomes an extent of a
            // sparse chunk file, and the temp dir's removal at the end
            // frees them one by one (minutes on a busy disk at full speed).
            "--rate_iops=2000",
            "--time_based",
            "--runtime=30",
            "--output-format=json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fio (scripts/apt.d/nbd.list installs it)");
    // Writes are flowing: the file has chunks on every server.
    cluster
        .wait_for(Duration::from_secs(60), "fio writing", || async {
            let maps = client.file_chunks("/fio.img").await.ok()?;
            (maps.len() >= 3).then_some(())
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..3 {
        cluster.kill_cs(i);
    }
    let crashed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        cluster.start_cs(i);
    }
    cluster
        .wait_for(
            Duration::from_secs(120),
            "3 copies of every chunk",
            || async {
                let s = client.cluster_status().await.ok()?;
                let maps = client.file_chunks("/fio.img").await.ok()?;
                (all_chunks_healthy(&s)
                    && s.health == ClusterHealth::Healthy
                    && maps.iter().all(|m| m.replicas.len() == 3))
                .then_some(())
            },
        )
        .await;
    eprintln!(
        "healthy {:?} after the crash ({:?} into the test)",
        crashed.elapsed(),
        began.elapsed()
    );
    let out = tokio::task::spawn_blocking(move || fio.wait_with_output().unwrap())
        .await
        .unwrap();
    eprintln!("fio ended {:?} into the test", began.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {stdout}{}\nnbd-serve log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(
            &std::fs::read_to_string(&server.log).unwrap_or_default(),
            40
        )
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    assert_eq!(json["jobs"][0]["error"], 0, "{stdout}");
    drop(server);
    assert!(
        read_all(&client, "/kept.bin").await == kept,
        "data flushed before the crash differs"
    );
    let maps = client.file_chunks("/kept.bin").await.unwrap();
    assert!(maps.iter().all(|m| m.replicas.len() == 3), "{maps:?}");
    eprintln!("checked {:?} into the test", began.elapsed());
}

// ---- rm-cs ----

/// `rm-cs` of a server holding a full chunk finishes: its chunk is copied
/// elsewhere and it is dropped.
async fn rm_cs_of_a_full_chunk(chunk_size: u64) {
    let cluster = TestCluster::start(options(4, chunk_size, None));
    let client = cluster.client();
    let data = pattern(61, chunk_size as usize);
    write_file(&client, "/full.bin", &data).await;
    let before = client.file_chunks("/full.bin").await.unwrap();
    let victim = chain(&before[0])[0];
    let started = Instant::now();
    let out = cluster.cli_ok(&["rm-cs", &victim.to_string()]);
    assert!(out.contains("released"), "{out}");
    eprintln!(
        "rm-cs of a full {} MiB chunk took {:?}",
        chunk_size >> 20,
        started.elapsed()
    );
    let maps = client.file_chunks("/full.bin").await.unwrap();
    assert_eq!(maps[0].replicas.len(), 3, "{maps:?}");
    assert!(!chain(&maps[0]).contains(&victim), "{maps:?}");
    let s = client.cluster_status().await.unwrap();
    let gone = s.cs.iter().find(|c| c.id == victim).unwrap();
    assert_eq!(gone.status, CsStatus::Dropped);
    assert!(s.replication.copied_bytes >= chunk_size, "{s:?}");
    assert!(read_all(&client, "/full.bin").await == data, "data differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rm_cs_of_a_full_default_size_chunk_finishes() {
    rm_cs_of_a_full_chunk(CHUNK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: writes and moves a full 1 GiB chunk"]
async fn long_rm_cs_of_a_full_one_gib_chunk_finishes() {
    rm_cs_of_a_full_chunk(1 << 30).await;
}
