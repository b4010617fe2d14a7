//! Placement with real daemons (issue 14), at the cluster defaults (256 MiB
//! chunks, replicas 3:2, failure-domain=host): chunk servers on this one
//! machine are given different `--host`/`--location`/`-t` and a
//! `--capacity` (they share one file system, whose own fill says nothing
//! about each of them).
//!
//! The tests run one at a time (each writes gigabytes; the machine is
//! small). The host-loss test shortens `mds.wd.offline_tout` to 3 s; its
//! `long_*` twin waits for the default 300 s.
//!
//! Every server sees the free space of the one shared file system as its
//! own, so the fill margin (`mds.alloc.fill_margin`, at most
//! `mds.alloc.fill_margin_max` = 4 GiB free per server) would count the
//! same free gigabytes six times over: on CI's build disk (about 10 GB
//! free) it marked every server full mid-test. These tests lower the cap
//! to 512 MiB (the tests' default, `TEST_FILL_MARGIN_MAX`); their `long_*`
//! twins keep the cluster's default ([`start`]).

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::types::{ChunkMap, ClusterHealth, ClusterStatus, CsId, LeaseMode, OpenFlags};
use pstorage_tests::{chain, pattern, ClusterOptions, TestCluster};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 * MIB;
/// Each chunk server's `--capacity`.
const CAPACITY: &str = "16G";
/// The big test files: 3 chunks (768 MiB; 2.25 GiB of replicas).
///
/// Six chunk servers also hold a 256 MiB journal each, and a lost host's
/// stale copies stay on the disk while its chunks are copied again: with
/// 4 chunks the host-loss test needed more than 5,700 MiB free (a CI
/// machine had 6,012 MiB).
const BIG: u64 = 3 * CHUNK;
/// The file of the fill-up test (see [`fill_up`]).
const FILL_UP_FILE: u64 = 2 * CHUNK;
/// Pieces the big files are written and read in.
const PIECE: u64 = 64 * MIB;

/// One test at a time (disk space and the machine's two cores); an async
/// mutex, as each test holds it across its awaits (each test has its own
/// runtime; tokio's mutex does not depend on one).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cluster of one MDS and no chunk server yet, at the defaults but for
/// `offline_ms` (`mds.wd.offline_tout`) and, unless `default_margin`, the
/// fill margin's cap (see the module's text).
fn start(offline_ms: Option<u64>, default_margin: bool) -> TestCluster {
    let mut options = options(offline_ms);
    if default_margin {
        options.fill_margin_max = None;
    }
    TestCluster::start(options)
}

fn options(offline_ms: Option<u64>) -> ClusterOptions {
    let mut env = vec![("PSTORAGE_HEARTBEAT_MS".to_string(), "200".to_string())];
    if let Some(ms) = offline_ms {
        env.push(("PSTORAGE_OFFLINE_MS".to_string(), ms.to_string()));
    }
    ClusterOptions {
        mds: 1,
        chunk_servers: 0,
        chunk_size: CHUNK,
        env,
        ..ClusterOptions::default()
    }
}

/// Adds a chunk server on host `host` (rack `room1.row1.<host>`) of `tier`.
fn add_cs(cluster: &mut TestCluster, host: &str, tier: u8) -> usize {
    let location = format!("room1.row1.{host}");
    let tier = tier.to_string();
    cluster.add_cs_args(&[
        "--host",
        host,
        "--location",
        &location,
        "-t",
        &tier,
        "--capacity",
        CAPACITY,
    ])
}

/// The piece of the big test files at `offset` (deterministic).
fn piece(seed: u64, offset: u64) -> Vec<u8> {
    pattern(seed * 1_000_003 + offset / PIECE, PIECE as usize)
}

fn create() -> OpenFlags {
    OpenFlags {
        create: true,
        ..Default::default()
    }
}

/// Writes `size` bytes of [`piece`]s of `seed` to `path`.
async fn write_big(client: &Client, path: &str, seed: u64, size: u64) {
    let file = client.open(path, LeaseMode::Write, create()).await.unwrap();
    let mut offset = 0;
    while offset < size {
        file.write_at(offset, &piece(seed, offset)).await.unwrap();
        offset += PIECE;
    }
    file.flush().await.unwrap();
    file.close().await.unwrap();
}

/// Reads `path` back and compares it with [`write_big`]'s bytes.
async fn check_big(client: &Client, path: &str, seed: u64, size: u64) {
    let file = client
        .open(path, LeaseMode::Read, OpenFlags::default())
        .await
        .unwrap();
    assert_eq!(file.size(), size, "size of {path}");
    let mut offset = 0;
    let mut buf = vec![0u8; PIECE as usize];
    while offset < size {
        let mut done = 0;
        while done < buf.len() {
            let n = file
                .read_at(offset + done as u64, &mut buf[done..])
                .await
                .unwrap();
            assert!(n > 0, "short read of {path} at {}", offset + done as u64);
            done += n;
        }
        assert!(buf == piece(seed, offset), "{path} differs at {offset}");
        offset += PIECE;
    }
    file.close().await.unwrap();
}

/// Chunk server id -> host, as `stat` shows them.
fn hosts(s: &ClusterStatus) -> BTreeMap<CsId, String> {
    s.cs.iter().map(|c| (c.id, c.host.clone())).collect()
}

/// How many replicas of the chunk each host holds.
fn per_host(map: &ChunkMap, hosts: &BTreeMap<CsId, String>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for cs in chain(map) {
        *n.entry(hosts.get(&cs).cloned().unwrap_or_default())
            .or_default() += 1;
    }
    n
}

/// A writer that overwrites the first chunk of `path` (1 MiB writes) until
/// stopped; returns the writes it made, or the first error.
fn start_writer(
    client: Client,
    path: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    tokio::spawn(async move {
        let file = client
            .open(path, LeaseMode::Write, create())
            .await
            .map_err(|e| format!("open {path}: {e}"))?;
        let mut writes = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let offset = (writes * MIB) % CHUNK;
            let data = pattern(writes, MIB as usize);
            file.write_at(offset, &data)
                .await
                .map_err(|e| format!("write {writes} at {offset}: {e}"))?;
            writes += 1;
            if writes.is_multiple_of(64) {
                file.flush()
                    .await
                    .map_err(|e| format!("flush after {writes}: {e}"))?;
            }
        }
        file.flush().await.map_err(|e| format!("last flush: {e}"))?;
        file.close().await.map_err(|e| format!("close: {e}"))?;
        Ok(writes)
    })
}

/// 6 chunk servers on 3 hosts, a 3-chunk file: every chunk on 3 hosts. Then
/// both servers of one host die (kill -9): reads and writes go on, the
/// file is re-replicated with no host holding more than 2 copies of a
/// chunk (2 hosts left for 3 replicas: as evenly as possible, with a
/// warning in `stat`), and once the host is back every chunk is on 3
/// hosts again.
async fn lose_a_host(offline_ms: Option<u64>, recovery: Duration) {
    let _serial = SERIAL.lock().await;
    let mut cluster = start(offline_ms, offline_ms.is_none());
    for i in 0..6 {
        add_cs(&mut cluster, &format!("h{}", i / 2), 0);
    }
    cluster.wait_active(6);
    let client = cluster.client();
    let size = BIG;
    let chunks = size / CHUNK;
    let started = Instant::now();
    write_big(&client, "/big.bin", 1, size).await;
    eprintln!("wrote {} MiB in {:?}", size / MIB, started.elapsed());
    let s = cluster.status().unwrap();
    let host_of = hosts(&s);
    let maps = client.file_chunks("/big.bin").await.unwrap();
    assert_eq!(maps.len() as u64, chunks, "{maps:?}");
    for m in &maps {
        assert_eq!(m.replicas.len(), 3, "{m:?}");
        assert_eq!(
            per_host(m, &host_of).len(),
            3,
            "chunk not on 3 hosts: {m:?}"
        );
    }
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    // Both chunk servers of host h0 go.
    let dead: Vec<CsId> = host_of
        .iter()
        .filter(|(_, h)| h.as_str() == "h0")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(dead.len(), 2, "{host_of:?}");
    for &id in &dead {
        cluster.kill_cs(cluster.cs_index(id));
    }
    let killed = Instant::now();
    // Reads and writes go on (the client drops the dead replicas from the
    // chains it writes; reads go to the survivors).
    let io = cluster.client();
    let file = io
        .open("/big.bin", LeaseMode::Write, OpenFlags::default())
        .await
        .unwrap();
    let fresh = pattern(77, 4 * MIB as usize);
    for c in 0..chunks {
        file.write_at(c * CHUNK + 8 * MIB, &fresh).await.unwrap();
    }
    file.flush().await.unwrap();
    let mut back = vec![0u8; fresh.len()];
    for c in 0..chunks {
        let mut done = 0;
        while done < back.len() {
            done += file
                .read_at(c * CHUNK + 8 * MIB + done as u64, &mut back[done..])
                .await
                .unwrap();
        }
        assert!(back == fresh, "chunk {c}: fresh bytes differ");
    }
    file.close().await.unwrap();
    eprintln!(
        "wrote and read every chunk {:?} after the kill",
        killed.elapsed()
    );
    // Re-replication: 3 copies again, never 3 on one host (2 hosts left).
    cluster
        .wait_for(recovery, "re-replication after losing host h0", || async {
            let maps = client.file_chunks("/big.bin").await.ok()?;
            let done = maps
                .iter()
                .all(|m| m.replicas.len() == 3 && chain(m).iter().all(|cs| !dead.contains(cs)));
            done.then_some(maps)
        })
        .await;
    eprintln!("re-replicated {:?} after the kill", killed.elapsed());
    let maps = client.file_chunks("/big.bin").await.unwrap();
    for m in &maps {
        let n = per_host(m, &host_of);
        assert_eq!(
            n.len(),
            2,
            "copies not spread over both live hosts: {m:?} {n:?}"
        );
        assert!(n.values().all(|&k| k <= 2), "{m:?} {n:?}");
    }
    let s = cluster.status().unwrap();
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("tier 0 has 2 host(s)")),
        "{:?}",
        s.warnings
    );
    // h0 comes back: the chunks sharing a host move so that each is on 3.
    for &id in &dead {
        cluster.start_cs(cluster.cs_index(id));
    }
    cluster
        .wait_for(
            Duration::from_secs(600),
            "every chunk on 3 hosts again after h0 returned",
            || async {
                let maps = client.file_chunks("/big.bin").await.ok()?;
                let s = client.cluster_status().await.ok()?;
                let done = maps
                    .iter()
                    .all(|m| m.replicas.len() == 3 && per_host(m, &host_of).len() == 3)
                    && s.warnings.is_empty();
                done.then_some(())
            },
        )
        .await;
    let stat = cluster.cli_ok(&["stat"]);
    assert!(!stat.contains("WARNING"), "{stat}");
    // Every byte is still there (with the fresh bytes).
    let file = client
        .open("/big.bin", LeaseMode::Read, OpenFlags::default())
        .await
        .unwrap();
    let mut buf = vec![0u8; PIECE as usize];
    let mut offset = 0;
    while offset < size {
        let mut done = 0;
        while done < buf.len() {
            done += file
                .read_at(offset + done as u64, &mut buf[done..])
                .await
                .unwrap();
        }
        let mut want = piece(1, offset);
        if offset % CHUNK == 0 {
            want[8 * MIB as usize..12 * MIB as usize].copy_from_slice(&fresh);
        }
        assert!(buf == want, "/big.bin differs at {offset}");
        offset += PIECE;
    }
    file.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_span_three_hosts_and_survive_the_loss_of_one() {
    lose_a_host(Some(3_000), Duration::from_secs(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: waits for the default mds.wd.offline_tout (300 s)"]
async fn long_chunks_span_three_hosts_and_survive_the_loss_of_one_at_the_default_offline_timeout() {
    lose_a_host(None, Duration::from_secs(900)).await;
}

/// 3 chunk servers in tier 0 and 2 in tier 1: files under a tier=1
/// directory live only on the tier-1 servers (2 copies: the tier has no
/// third); a directory of tier 2, which has no server, fails allocation
/// with an error that names the tier and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tier_holds_its_files_and_an_empty_tier_is_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let mut cluster = start(None, false);
    for i in 0..3 {
        add_cs(&mut cluster, &format!("h{i}"), 0);
    }
    for i in 3..5 {
        add_cs(&mut cluster, &format!("h{i}"), 1);
    }
    cluster.wait_active(5);
    let s = cluster.status().unwrap();
    let tier1: BTreeSet<CsId> = s.cs.iter().filter(|c| c.tier == 1).map(|c| c.id).collect();
    assert_eq!(tier1.len(), 2, "{s:?}");
    cluster.cli_ok(&["mkdir", "/fast"]);
    cluster.cli_ok(&["set-attr", "-R", "/fast", "tier=1"]);
    assert!(cluster.cli_ok(&["get-attr", "/fast"]).contains("tier=1"));
    let client = cluster.client();
    write_big(&client, "/fast/a.bin", 3, 3 * CHUNK).await;
    write_big(&client, "/slow.bin", 4, CHUNK).await;
    let maps = client.file_chunks("/fast/a.bin").await.unwrap();
    assert_eq!(maps.len(), 3);
    for m in &maps {
        let set: BTreeSet<CsId> = chain(m).into_iter().collect();
        assert_eq!(set, tier1, "a tier-1 chunk outside tier 1: {m:?}");
    }
    for m in client.file_chunks("/slow.bin").await.unwrap() {
        assert!(
            chain(&m).iter().all(|cs| !tier1.contains(cs)) && m.replicas.len() == 3,
            "a tier-0 chunk on tier 1: {m:?}"
        );
    }
    let stat = cluster.cli_ok(&["stat"]);
    assert!(stat.contains("Tier 1: 2 chunk server(s)"), "{stat}");
    check_big(&client, "/fast/a.bin", 3, 3 * CHUNK).await;
    // Re-replication looks for a third tier-1 copy and finds none: the
    // chunks stay on tier 1.
    let maps = client.file_chunks("/fast/a.bin").await.unwrap();
    assert!(maps
        .iter()
        .all(|m| chain(m).iter().all(|cs| tier1.contains(cs))));

    cluster.cli_ok(&["mkdir", "/t2"]);
    cluster.cli_ok(&["set-attr", "-R", "/t2", "tier=2"]);
    let quick = cluster.client_with(ClientOptions {
        io_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    });
    let file = quick
        .open("/t2/x.bin", LeaseMode::Write, create())
        .await
        .unwrap();
    let err = match file.write_at(0, &[1u8; 4096]).await {
        Err(e) => e,
        Ok(()) => file.flush().await.expect_err("a write to an empty tier"),
    };
    let text = err.to_string();
    assert!(
        text.contains("tier 2 has 0 chunk server(s)") && text.contains("make-cs -t 2"),
        "{text}"
    );
}

/// 3 chunk servers hold a 2-chunk file and a writer's chunk; 3 empty ones
/// join: the replicas spread until the per-server chunk counts differ by
/// at most one, while the writer runs with no error. (Sized for a disk with
/// 5,700 MiB free: six journals, 9 replicas and the moves' new copies
/// before the old ones go.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_chunk_servers_fill_up_while_a_writer_runs() {
    fill_up(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: the default fill margin needs about 9 GB free on the temp dir's disk"]
async fn long_new_chunk_servers_fill_up_while_a_writer_runs_at_the_default_fill_margin() {
    fill_up(true).await;
}

async fn fill_up(default_margin: bool) {
    let _serial = SERIAL.lock().await;
    let mut cluster = start(None, default_margin);
    for i in 0..3 {
        add_cs(&mut cluster, &format!("h{i}"), 0);
    }
    cluster.wait_active(3);
    let client = cluster.client();
    write_big(&client, "/big.bin", 5, FILL_UP_FILE).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(cluster.client(), "/w.bin", stop.clone());
    for i in 3..6 {
        add_cs(&mut cluster, &format!("h{i}"), 0);
    }
    cluster.wait_active(6);
    let added = Instant::now();
    let counts = cluster
        .wait_for(
            Duration::from_secs(600),
            "chunk counts within one chunk of each other",
            || async {
                let s = client.cluster_status().await.ok()?;
                // No move half done (a landed copy not yet trimmed leaves
                // a chain of 4).
                let maps = client.file_chunks("/big.bin").await.ok()?;
                if s.rebalance.in_flight > 0 || maps.iter().any(|m| m.replicas.len() != 3) {
                    return None;
                }
                let counts: Vec<u64> = s.cs.iter().map(|c| c.chunks).collect();
                let held: Vec<u64> = s.cs.iter().map(|c| c.held_bytes).collect();
                let (lo, hi) = (*held.iter().min()?, *held.iter().max()?);
                (counts.len() == 6 && hi - lo <= CHUNK && counts.iter().all(|&n| n > 0))
                    .then_some(counts)
            },
        )
        .await;
    eprintln!("balanced in {:?}: {counts:?}", added.elapsed());
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap().unwrap();
    assert!(writes > 0);
    eprintln!("the writer made {writes} 1 MiB writes meanwhile");
    let s = cluster.status().unwrap();
    assert!(s.rebalance.done >= 1, "{:?}", s.rebalance);
    assert_eq!(s.health, ClusterHealth::Healthy, "{s:?}");
    // (A chain of 4 is a move whose copy landed and whose old member is
    // not trimmed yet.)
    for m in client.file_chunks("/big.bin").await.unwrap() {
        let n = per_host(&m, &hosts(&s));
        assert!(
            m.replicas.len() >= 3 && n.values().all(|&k| k == 1),
            "a move broke the host rule: {m:?}"
        );
    }
    check_big(&client, "/big.bin", 5, FILL_UP_FILE).await;
}

/// A chunk server's host changes (`set-cs ID host=...`) so that two
/// replicas of a chunk share a host while a free host exists: the chunk is
/// moved off the shared host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_change_that_breaks_a_chunks_domain_moves_the_chunk() {
    let _serial = SERIAL.lock().await;
    let mut cluster = start(None, false);
    for i in 0..4 {
        add_cs(&mut cluster, &format!("h{i}"), 0);
    }
    cluster.wait_active(4);
    let client = cluster.client();
    let data = pattern(9, 20 * MIB as usize);
    pstorage_tests::write_file(&client, "/one.bin", &data).await;
    let maps = client.file_chunks("/one.bin").await.unwrap();
    assert_eq!(maps.len(), 1);
    let members = chain(&maps[0]);
    assert_eq!(members.len(), 3, "{maps:?}");
    let s = cluster.status().unwrap();
    let host_of = hosts(&s);
    // Member 0 moves (on paper) to member 1's host.
    let (a, b) = (members[0], members[1]);
    let target = host_of[&b].clone();
    cluster.cli_ok(&["set-cs", &a.to_string(), &format!("host={target}")]);
    let stat = cluster.cli_ok(&["stat"]);
    assert!(stat.contains(&target), "{stat}");
    cluster
        .wait_for(
            Duration::from_secs(300),
            "the chunk moved off the shared host",
            || async {
                let s = client.cluster_status().await.ok()?;
                let maps = client.file_chunks("/one.bin").await.ok()?;
                let m = maps.first()?;
                (m.replicas.len() == 3 && per_host(m, &hosts(&s)).len() == 3).then_some(())
            },
        )
        .await;
    let m = &client.file_chunks("/one.bin").await.unwrap()[0];
    let now = chain(m);
    assert!(
        !(now.contains(&a) && now.contains(&b)),
        "both members of host {target} kept the chunk: {m:?}"
    );
    assert!(pstorage_tests::read_all(&client, "/one.bin").await == data);
    let events =
        pstorage_tests::events(&client, pstorage_core::types::EventKind::Replication).await;
    assert!(events.contains("rebalancing"), "{events}");
}
