//! Self-healing with real daemons (issue "Self-healing"): a chunk server
//! killed for good is replaced by copies on the others and its stale
//! replicas are deleted when it returns; writes below replicas_min wait,
//! fail clearly, and resume by themselves; scrubbing finds and repairs flipped
//! bits nobody read; a paused writer is fenced; rm-cs migrates before it
//! drops; full disks get no new chunks. Timeouts are shortened through the
//! daemons' environment and `set-config`.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use pstorage_core::types::ChunkId;
use pstorage_core::types::CsId;
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::traits::ControlConnector;
use pstorage_core::types::{
    ClusterHealth, ClusterStatus, CsStatus, EventKind, LeaseMode, OpenFlags,
};
use pstorage_core::ErrorKind;
use pstorage_rpc::control::TcpControlConnector;
use pstorage_tests::{
    bin_dir, chain, events, pattern, read_all, write_file, ClusterOptions, TestCluster,
    TEST_FILL_MARGIN_MAX,
};

const CHUNK: u64 = 1 << 20;
const OFFLINE_MS: u64 = 3_000;

fn options(chunk_servers: usize, extra: &[(&str, &str)]) -> ClusterOptions {
    let mut env = vec![
        ("PSTORAGE_HEARTBEAT_MS".to_string(), "200".to_string()),
        ("PSTORAGE_OFFLINE_MS".to_string(), OFFLINE_MS.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ClusterOptions {
        mds: 1,
        chunk_servers,
        chunk_size: CHUNK,
        env,
        ..ClusterOptions::default()
    }
}

fn create() -> OpenFlags {
    OpenFlags {
        create: true,
        ..Default::default()
    }
}

async fn status(client: &Client) -> ClusterStatus {
    client.cluster_status().await.unwrap()
}

fn control(cluster: &TestCluster) -> TcpControlConnector {
    TcpControlConnector::new(
        pstorage_rpc::node::control_dialer(
            pstorage_rpc::node::node_credentials(&cluster.conf()).unwrap(),
        ),
        Default::default(),
    )
}

/// A writer and a reader that run beside a test: the writer rewrites
/// `/continuous` with a new pattern each round, the reader checks that what
/// it reads is one whole round's pattern (never a mix, never stale bytes
/// of a round older than the last completed one).
struct Continuous {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Continuous {
    fn start(client: Client) -> Continuous {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let len = 2 * CHUNK as usize + 4096;
            let file = client
                .open("/continuous", LeaseMode::Write, create())
                .await
                .unwrap();
            let mut round = 0u64;
            while !flag.load(Ordering::SeqCst) {
                round += 1;
                let data = pattern(1000 + round, len);
                file.write_at(0, &data)
                    .await
                    .unwrap_or_else(|e| panic!("continuous write {round}: {e}"));
                file.flush().await.unwrap();
                // Read back through the same lease (a write lease excludes
                // other readers): every byte of the round is there.
                let mut buf = vec![0u8; len];
                let mut off = 0;
                while off < len {
                    off += file.read_at(off as u64, &mut buf[off..]).await.unwrap();
                }
                assert!(
                    buf == data,
                    "continuous round {round} read back wrong bytes"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            file.close().await.unwrap();
            round
        });
        Continuous { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the continuous writer failed")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_chunk_server_is_replaced_and_its_stale_copies_deleted_on_return() {
    let mut cluster = TestCluster::start(options(4, &[]));
    let client = cluster.client();
    let data = pattern(1, 8 * CHUNK as usize);
    write_file(&client, "/data.bin", &data).await;
    let continuous = Continuous::start(cluster.client());
    let before = client.file_chunks("/data.bin").await.unwrap();
    // The server holding the most replicas goes away for good.
    let victim = (1..=4)
        .map(CsId)
        .max_by_key(|cs| before.iter().filter(|m| chain(m).contains(cs)).count())
        .unwrap();
    let victim_index = cluster.cs_index(victim);
    cluster.kill_cs(victim_index);

    // After the offline timeout every chunk is back to 3 current replicas
    // on the other servers.
    let started = Instant::now();
    cluster
        .wait_for(Duration::from_secs(40), "re-replication", || async {
            let maps = client.file_chunks("/data.bin").await.ok()?;
            let s = status(&client).await;
            let done = maps
                .iter()
                .all(|m| m.replicas.len() == 3 && !chain(m).contains(&victim))
                && s.chunk_counts.healthy == s.chunks;
            done.then_some(())
        })
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(OFFLINE_MS - 1_000),
        "nothing may happen before the offline timeout"
    );
    let s = status(&client).await;
    let dead = s.cs.iter().find(|c| c.id == CsId(victim.0)).unwrap();
    assert_eq!(dead.status, CsStatus::Offline);
    assert_eq!(s.health, ClusterHealth::Degraded, "a server is offline");
    assert!(s.replication.done_chunks >= 1, "{s:?}");
    assert_eq!(read_all(&client, "/data.bin").await, data);
    let story = events(&client, EventKind::CsState).await;
    assert!(
        story.contains(&format!("chunk server {victim}")) && story.contains("offline"),
        "{story}"
    );
    let repl = events(&client, EventKind::Replication).await;
    assert!(
        repl.contains("re-replication started") && repl.contains("re-replication finished"),
        "{repl}"
    );

    // It comes back: its stale replicas are deleted, nothing is
    // over-replicated, and nothing stale is read.
    let after = client.file_chunks("/data.bin").await.unwrap();
    cluster.start_cs(victim_index);
    cluster.wait_active(4);
    let addr = cluster
        .wait_for(Duration::from_secs(10), "its address", || async {
            let s = status(&client).await;
            let c = s.cs.iter().find(|c| c.id == CsId(victim.0))?;
            (c.status == CsStatus::Active).then(|| c.addr.clone())
        })
        .await;
    let held = control(&cluster)
        .chunk_control(&addr)
        .await
        .unwrap()
        .list_chunks()
        .await
        .unwrap();
    let data_chunks: BTreeSet<ChunkId> = after.iter().map(|m| m.chunk).collect();
    assert!(
        held.iter().all(|h| !data_chunks.contains(&h.chunk)),
        "stale replicas kept on the returning server: {held:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let maps = client.file_chunks("/data.bin").await.unwrap();
    assert!(maps.iter().all(|m| m.replicas.len() == 3), "{maps:?}");
    assert_eq!(read_all(&client, "/data.bin").await, data);
    let rounds = continuous.finish().await;
    assert!(rounds >= 3, "the continuous writer made {rounds} rounds");
    cluster
        .wait_for(Duration::from_secs(10), "a healthy cluster", || async {
            (status(&client).await.health == ClusterHealth::Healthy).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_below_replicas_min_wait_fail_clearly_and_resume() {
    let mut cluster = TestCluster::start(options(3, &[]));
    let io_timeout = Duration::from_secs(3);
    let client = cluster.client_with(ClientOptions {
        io_timeout,
        ..Default::default()
    });
    let first = pattern(2, CHUNK as usize);
    let file = client
        .open("/blocked.bin", LeaseMode::Write, create())
        .await
        .unwrap();
    file.write_at(0, &first).await.unwrap();
    file.flush().await.unwrap();
    let map = client.file_chunks("/blocked.bin").await.unwrap()[0].clone();
    assert_eq!(map.replicas.len(), 3);
    // Two of the three holders die.
    let (a, b) = (
        cluster.cs_index(map.replicas[0].cs),
        cluster.cs_index(map.replicas[1].cs),
    );
    cluster.kill_cs(a);
    cluster.kill_cs(b);

    let started = Instant::now();
    let err = file.write_at(4096, b"must wait").await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= io_timeout - Duration::from_millis(200),
        "{waited:?}"
    );
    assert!(waited < io_timeout + Duration::from_secs(10), "{waited:?}");
    // Unavailable, or TimedOut when the MDS call in flight at the I/O
    // deadline (its own deadline is capped by io_timeout) is what expired.
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::TimedOut),
        "{err}"
    );
    for part in ["/blocked.bin", "chunk 0"] {
        assert!(err.message().contains(part), "{part:?} missing in: {err}");
    }
    let s = status(&client).await;
    assert_eq!(s.health, ClusterHealth::Failure, "{s:?}");
    assert_eq!(s.chunk_counts.blocked, 1);

    // The CLI's bound is configurable too: a put gives up after --io-timeout.
    let started = Instant::now();
    let out = cluster.cli_stdin(
        &["--io-timeout", "1500", "put", "-", "/cli.bin"],
        &pattern(3, 4096),
    );
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/cli.bin"), "{stderr}");

    // One comes back: the surviving copy is re-replicated to it and the
    // same file handle writes again, no client restart.
    cluster.start_cs(a);
    let second = pattern(4, 8192);
    cluster
        .wait_for(Duration::from_secs(30), "writes to resume", || async {
            file.write_at(4096, &second).await.ok()
        })
        .await;
    file.flush().await.unwrap();
    file.close().await.unwrap();
    let mut expected = first.clone();
    expected[4096..4096 + second.len()].copy_from_slice(&second);
    assert_eq!(read_all(&client, "/blocked.bin").await, expected);
    let map = client.file_chunks("/blocked.bin").await.unwrap()[0].clone();
    assert_eq!(map.replicas.len(), 2, "{map:?}");
}

/// Flips one bit in a random block of the data region of a chunk file
/// (1 MiB chunks: 4 KiB header, 4 KiB CRC table, then the data).
fn flip_random_bit(path: &std::path::Path, seed: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let random = pattern(seed, 8);
    let r = u64::from_le_bytes(random[..8].try_into().unwrap());
    let block = r % (CHUNK / 4096);
    let at = 8192 + block * 4096 + (r >> 32) % 4096;
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, at).unwrap();
    byte[0] ^= 1 << (r % 8);
    f.write_all_at(&byte, at).unwrap();
    block
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrubbing_finds_and_repairs_every_flipped_bit() {
    let cluster = TestCluster::start(options(3, &[]));
    let client = cluster.client();
    let data = pattern(5, 4 * CHUNK as usize);
    write_file(&client, "/scrub.bin", &data).await;
    let maps = client.file_chunks("/scrub.bin").await.unwrap();
    // Damage chunks 0, 1 and 3, each on a different server, without
    // reading them.
    let mut damaged = Vec::new();
    for (n, index) in [0usize, 1, 3].into_iter().enumerate() {
        let map = &maps[index];
        let cs = map.replicas[n % map.replicas.len()].cs;
        let dir = &cluster.cs_dirs[cluster.cs_index(cs)];
        let path = dir.join("chunks").join(format!("{:016x}.chunk", map.chunk));
        flip_random_bit(&path, 77 + n as u64);
        damaged.push((map.chunk, cs));
    }
    // Scrub every replica about every second, unthrottled.
    let out = cluster.cli(&["set-config", "cs.scrub.period=1000", "cs.scrub.rate=0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .wait_for(Duration::from_secs(40), "every repair", || async {
            let log = events(&client, EventKind::Corruption).await;
            damaged
                .iter()
                .all(|(chunk, _)| {
                    let id = format!("{chunk:#x}");
                    log.lines()
                        .any(|l| l.contains(&id) && l.contains("corrupt"))
                        && log
                            .lines()
                            .any(|l| l.contains(&id) && l.contains("repaired"))
                })
                .then_some(())
        })
        .await;
    let log = events(&client, EventKind::Corruption).await;
    for (chunk, cs) in &damaged {
        let id = format!("{chunk:#x}");
        assert!(
            log.lines()
                .any(|l| l.contains(&id) && l.contains(&format!("chunk server {cs} "))),
            "{log}"
        );
    }
    cluster
        .wait_for(Duration::from_secs(20), "3 replicas each", || async {
            let maps = client.file_chunks("/scrub.bin").await.ok()?;
            maps.iter().all(|m| m.replicas.len() == 3).then_some(())
        })
        .await;
    assert_eq!(read_all(&client, "/scrub.bin").await, data);
    // The event log is on the CLI too, with timestamps.
    let out = cluster.cli(&["get-event-log"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("repaired") && text.contains("cs.scrub.period"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.starts_with("20")), "{text}");
}

/// A child process killed (and continued first, if stopped) when dropped.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: signals to our own child process.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGCONT);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_writer_is_fenced_and_never_mixes_with_the_next() {
    let cluster = TestCluster::start(options(3, &[("PSTORAGE_LEASE_MS", "2000")]));
    let client = cluster.client();
    let mut put = Guarded(
        Command::new(bin_dir().join("pstorage"))
            .arg("--conf-dir")
            .arg(&cluster.conf_root)
            .args(["-c", &cluster.name, "put", "-", "/fenced.bin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = put.0.stdin.take().unwrap();
    // `put` writes in 4 MiB transfers: the first one goes out now.
    stdin.write_all(&pattern(10, 4 << 20)).unwrap();
    stdin.flush().unwrap();
    cluster
        .wait_for(Duration::from_secs(20), "the first write", || async {
            let maps = client.file_chunks("/fenced.bin").await.ok()?;
            (maps.len() == 4).then_some(())
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(put.0.id() as i32, libc::SIGSTOP);
    }
    // Past its lease, another client takes the file and writes.
    let second = pattern(20, 4 << 20);
    let file = cluster
        .wait_for(Duration::from_secs(20), "the lease to expire", || async {
            client
                .open("/fenced.bin", LeaseMode::Write, OpenFlags::default())
                .await
                .ok()
        })
        .await;
    file.write_at(0, &second).await.unwrap();
    file.close().await.unwrap();
    // The first writer wakes up and tries to write more.
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(put.0.id() as i32, libc::SIGCONT);
    }
    let _ = stdin.write_all(&pattern(30, 4 << 20));
    drop(stdin);
    let child = std::mem::replace(&mut put.0, Command::new("true").spawn().unwrap());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the fenced writer must fail");
    assert!(
        stderr.contains("lease") || stderr.contains("fenced") || stderr.contains("stale"),
        "{stderr}"
    );
    assert_eq!(read_all(&client, "/fenced.bin").await, second);
    let log = events(&client, EventKind::Lease).await;
    assert!(
        log.contains("/fenced.bin") && log.contains("revoked"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rm_cs_moves_every_chunk_before_dropping_the_server() {
    let cluster = TestCluster::start(options(4, &[]));
    let client = cluster.client();
    let data = pattern(6, 6 * CHUNK as usize);
    write_file(&client, "/moving.bin", &data).await;
    let before = client.file_chunks("/moving.bin").await.unwrap();
    let victim = (1..=4)
        .map(CsId)
        .max_by_key(|cs| before.iter().filter(|m| chain(m).contains(cs)).count())
        .unwrap();
    let out = cluster.cli(&["rm-cs", &victim.to_string()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("released"));
    let maps = client.file_chunks("/moving.bin").await.unwrap();
    for m in &maps {
        assert_eq!(m.replicas.len(), 3, "{m:?}");
        assert!(!chain(m).contains(&victim), "{m:?}");
    }
    let s = status(&client).await;
    let gone = s.cs.iter().find(|c| c.id == CsId(victim.0)).unwrap();
    assert_eq!((gone.status, gone.chunks), (CsStatus::Dropped, 0));
    assert_eq!(s.chunk_counts.healthy, s.chunks);
    assert_eq!(read_all(&client, "/moving.bin").await, data);
    assert!(events(&client, EventKind::CsState)
        .await
        .contains("released"));
    // A bad id is a clear error.
    let out = cluster.cli(&["rm-cs", "99"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("99"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_disks_get_no_new_chunks_and_configuration_is_checked() {
    let cluster = TestCluster::start(options(3, &[]));
    let client = cluster.client();
    let get = || String::from_utf8_lossy(&cluster.cli(&["get-config"]).stdout).into_owned();
    let initial = get();
    assert!(initial.contains("mds.wd.offline_tout"), "{initial}");
    assert!(initial.contains("mds.alloc.fill_margin"), "{initial}");
    // Bad settings change nothing, also next to good ones.
    for bad in [
        vec!["no.such.key=1"],
        vec!["mds.alloc.fill_margin=100"],
        vec!["mds.alloc.fill_margin=abc"],
        vec!["mds.repl.concurrency=2", "mds.wd.offline_tout"],
    ] {
        let mut args = vec!["set-config"];
        args.extend(bad.iter().copied());
        let out = cluster.cli(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    assert_eq!(get(), initial);

    // Every disk is "full" with a 99% margin without a cap: a clear ENOSPC,
    // nothing written.
    let out = cluster.cli(&[
        "set-config",
        "mds.alloc.fill_margin=99",
        &format!("mds.alloc.fill_margin_max={}", u64::MAX),
    ]);
    assert!(out.status.success());
    let file = client
        .open("/full.bin", LeaseMode::Write, create())
        .await
        .unwrap();
    let err = file.write_at(0, &pattern(8, 4096)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
    assert!(err.message().contains("mds.alloc.fill_margin=99%"), "{err}");
    assert!(client.file_chunks("/full.bin").await.unwrap().is_empty());
    let s = cluster
        .wait_for(Duration::from_secs(5), "full servers", || async {
            let s = status(&client).await;
            s.cs.iter().all(|c| c.full).then_some(s)
        })
        .await;
    assert_eq!(s.cs.len(), 3);
    assert!(events(&client, EventKind::DiskFull).await.contains("full"));
    // With the margin back at its default (and the cap at the tests' own,
    // see `ClusterOptions::fill_margin_max`), the same handle writes.
    let out = cluster.cli(&[
        "set-config",
        "mds.alloc.fill_margin=5",
        &format!("mds.alloc.fill_margin_max={TEST_FILL_MARGIN_MAX}"),
    ]);
    assert!(out.status.success());
    let data = pattern(9, 4096);
    cluster
        .wait_for(Duration::from_secs(5), "space again", || async {
            file.write_at(0, &data).await.ok()
        })
        .await;
    file.close().await.unwrap();
    assert_eq!(read_all(&client, "/full.bin").await, data);
    // `top` without a terminal prints the status once per interval.
    let out = cluster.cli(&["top", "-d", "0.2", "-n", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("Cluster 'test'").count(), 2, "{text}");
    assert!(
        text.contains("healthy") && text.contains("Replication:"),
        "{text}"
    );
}
