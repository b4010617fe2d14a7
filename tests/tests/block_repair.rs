//! Block-level repair with real processes at the default settings (256 MiB
//! chunks, replicas 3:2, default timeouts): damage behind a chunk server's
//! back (a flipped data bit, a flipped CRC entry, a zeroed sector of the
//! CRC table) is found by reads, rewritten from another replica block by
//! block, and the replica never leaves its chain; a block bad on every
//! replica reads as an error (never as zeros) until it is written again.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use pstorage_core::types::CsId;
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use pstorage_core::client::Client;
use pstorage_core::traits::ChunkConnector;
use pstorage_core::types::{EventKind, LeaseMode, OpenFlags, DEFAULT_CHUNK_SIZE};
use pstorage_core::ErrorKind;
use pstorage_rpc::data::TcpChunkConnector;
use pstorage_tests::{chain, events, pattern, read_all, write_file, ClusterOptions, TestCluster};

const B: u64 = 4096;
/// A 256 MiB chunk file: 4 KiB header, then 65536 CRC entries (512 KiB),
/// then the data (`docs/formats.md`).
const TABLE_AT: u64 = 4096;
const DATA_AT: u64 = 4096 + (DEFAULT_CHUNK_SIZE / B) * 8;

fn defaults() -> ClusterOptions {
    ClusterOptions {
        chunk_size: DEFAULT_CHUNK_SIZE,
        env: Vec::new(),
        ..ClusterOptions::default()
    }
}

fn chunk_file(cluster: &TestCluster, cs: u32, chunk: u64) -> PathBuf {
    cluster.cs_dirs[cluster.cs_index(CsId(cs))]
        .join("chunks")
        .join(format!("{chunk:016x}.chunk"))
}

fn flip_byte(path: &PathBuf, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x04;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

/// Waits until every member of the chain of chunk 0 of `path` serves
/// reads at the address the MDS has for it (after a restart, which may move
/// a server to a new port, the MDS names it once it registered again).
async fn wait_serving(cluster: &TestCluster, client: &Client, path: &str) {
    let connector =
        TcpChunkConnector::new(pstorage_rpc::node::node_credentials(&cluster.conf()).unwrap());
    cluster
        .wait_for(
            Duration::from_secs(60),
            "the restarted chunk servers to serve",
            || async {
                let map = client.file_chunks(path).await.ok()?.remove(0);
                for r in &map.replicas {
                    let service = connector.chunk_service(&r.addr).await.ok()?;
                    // Block 0 is good on every replica.
                    service
                        .read_verified(map.chunk, map.version, 0, B)
                        .await
                        .ok()?;
                }
                Some(())
            },
        )
        .await;
}

/// The blocks an event names after `marker` ("3, 7-9, 12" up to ")").
fn parse_blocks(line: &str, marker: &str) -> Vec<u64> {
    let Some(at) = line.find(marker) else {
        return Vec::new();
    };
    let list = &line[at + marker.len()..];
    let list = &list[..list.find(')').unwrap_or(list.len())];
    let mut out = Vec::new();
    for part in list.split(", ") {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u64>().unwrap()..=b.parse::<u64>().unwrap()),
            None => out.push(part.parse::<u64>().unwrap()),
        }
    }
    out
}

/// `pstorage verify PATH`: (exit success, stdout + stderr).
fn verify(cluster: &TestCluster, path: &str) -> (bool, String) {
    let out = cluster.cli(&["verify", path]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_blocks_are_rewritten_from_another_replica_and_the_replica_stays() {
    let mut cluster = TestCluster::start(defaults());
    let client = cluster.client();
    let data = pattern(9, 16 << 20);
    write_file(&client, "/disk.img", &data).await;
    let map = client.file_chunks("/disk.img").await.unwrap()[0].clone();
    let members = chain(&map);
    assert_eq!(members.len(), 3, "{map:?}");
    // The middle of the chain: neither the head nor the tail.
    let victim = members[1];
    let i = cluster.cs_index(victim);
    // A clean stop applies the journal to the chunk files: what follows is
    // damage behind the server's back, not a write it replays.
    cluster.stop_cs(i);
    let path = chunk_file(&cluster, victim.0, map.chunk.0);
    flip_byte(&path, DATA_AT + 10 * B + 1000); // block 10's data
    flip_byte(&path, TABLE_AT + 20 * 8 + 3); // block 20's CRC entry
    {
        // The sector of the CRC table holding blocks 512..576: zeroed.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0u8; 512], TABLE_AT + 512 * 8).unwrap();
        f.sync_all().unwrap();
    }
    cluster.start_cs(i);
    cluster.wait_active(3);
    wait_serving(&cluster, &client, "/disk.img").await;

    // verify reads every replica: the damaged ones fail their check there,
    // which the chunk server reports and repairs.
    let (ok, text) = verify(&cluster, "/disk.img");
    assert!(!ok, "verify found nothing:\n{text}");
    cluster
        .wait_for(Duration::from_secs(120), "verify to pass", || async {
            verify(&cluster, "/disk.img").0.then_some(())
        })
        .await;
    let id = format!("{:#x}", map.chunk);
    let log = events(&client, EventKind::Corruption).await;
    // Every damaged block was reported found and repaired (reads report
    // the blocks they hit, so it may take several reports).
    let expected: BTreeSet<u64> = [10, 20].into_iter().chain(512..576).collect();
    let found = format!("chunk server {victim} found ");
    let repaired = format!("chunk server {victim} repaired ");
    let blocks_of = |prefix: &str, marker: &str| -> BTreeSet<u64> {
        log.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(&id))
            .flat_map(|l| parse_blocks(l, marker))
            .collect()
    };
    assert_eq!(blocks_of(&found, "CRC check: blocks "), expected, "{log}");
    assert_eq!(blocks_of(&repaired, "(blocks "), expected, "{log}");
    // The replica never left the chain: nothing was re-replicated.
    let now = client.file_chunks("/disk.img").await.unwrap()[0].clone();
    assert_eq!(chain(&now), members, "{now:?}");
    let replication = events(&client, EventKind::Replication).await;
    assert!(!replication.contains(&id), "{replication}");
    assert!(read_all(&client, "/disk.img").await == data);

    // The repair is durable: after a kill -9 and restart the replica passes
    // (once the server registered its new address) and nothing was found
    // bad again.
    let reports = log.lines().filter(|l| l.starts_with(&found)).count();
    cluster.kill_cs(i);
    cluster.start_cs(i);
    cluster.wait_active(3);
    cluster
        .wait_for(
            Duration::from_secs(120),
            "verify after the restart",
            || async { verify(&cluster, "/disk.img").0.then_some(()) },
        )
        .await;
    let log = events(&client, EventKind::Corruption).await;
    assert_eq!(
        log.lines().filter(|l| l.starts_with(&found)).count(),
        reports,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_bad_on_every_replica_reads_as_an_error_until_rewritten() {
    let mut cluster = TestCluster::start(defaults());
    let client = cluster.client();
    let data = pattern(10, 4 << 20);
    write_file(&client, "/disk.img", &data).await;
    let map = client.file_chunks("/disk.img").await.unwrap()[0].clone();
    let members = chain(&map);
    for (n, cs) in members.iter().enumerate() {
        let i = cluster.cs_index(*cs);
        cluster.stop_cs(i);
        // Block 30 on every replica, at different bytes.
        flip_byte(
            &chunk_file(&cluster, cs.0, map.chunk.0),
            DATA_AT + 30 * B + 100 * n as u64,
        );
    }
    for cs in &members {
        cluster.start_cs(cluster.cs_index(*cs));
    }
    cluster.wait_active(3);
    // Block 0 is good everywhere: each server answers it once it serves.
    wait_serving(&cluster, &client, "/disk.img").await;

    let file = client
        .open("/disk.img", LeaseMode::Write, OpenFlags::default())
        .await
        .unwrap();
    let mut buf = vec![0u8; B as usize];
    let e = file.read_at(30 * B, &mut buf).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // Its neighbours read.
    let mut around = vec![0u8; (2 * B) as usize];
    file.read_at(28 * B, &mut around).await.unwrap();
    assert!(around[..] == data[(28 * B) as usize..(30 * B) as usize]);
    let id = format!("{:#x}", map.chunk);
    cluster
        .wait_for(
            Duration::from_secs(60),
            "the unrepairable block in the event log",
            || async {
                let log = events(&client, EventKind::Corruption).await;
                log.lines()
                    .any(|l| {
                        l.contains(&id)
                            && l.contains("(blocks 30)")
                            && l.contains("no other replica has a good copy")
                    })
                    .then_some(())
            },
        )
        .await;
    // Nothing dropped: every replica is still as good as the others.
    let now = client.file_chunks("/disk.img").await.unwrap()[0].clone();
    assert_eq!(chain(&now), members, "{now:?}");
    // Writing the whole block again heals it everywhere.
    let fresh = pattern(11, B as usize);
    file.write_at(30 * B, &fresh).await.unwrap();
    file.flush().await.unwrap();
    file.read_at(30 * B, &mut buf).await.unwrap();
    assert_eq!(buf, fresh);
    file.close().await.unwrap();
    let (ok, text) = verify(&cluster, "/disk.img");
    assert!(ok, "{text}");
}
