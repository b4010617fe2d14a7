//! Failures with real daemons: kill -9 of a chunk server mid-write (the
//! write completes on the survivors, the stale replica is never read, also
//! after it restarts), a flipped byte in a chunk file (served from another
//! replica and reported), kill -9 of the MDS (namespace and data intact).

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use pstorage_core::client::first_replica_to_read;
use pstorage_core::types::CsId;
use std::sync::Arc;
use std::time::Duration;

use pstorage_core::chunk::FileChunkStore;
use pstorage_core::traits::{ControlConnector, MetadataService};
use pstorage_core::types::{EventKind, LeaseMode, OpenFlags};
use pstorage_rpc::control::TcpControlConnector;
use pstorage_tests::{pattern, read_all, ClusterOptions, TestCluster};

const CHUNK: u64 = 1 << 20;

fn create() -> OpenFlags {
    OpenFlags {
        create: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_chunk_server_during_writes() {
    let mut cluster = TestCluster::start(ClusterOptions {
        chunk_servers: 3,
        chunk_size: CHUNK,
        ..Default::default()
    });
    let client = cluster.client();
    let file = Arc::new(
        client
            .open("/stream.bin", LeaseMode::Write, create())
            .await
            .unwrap(),
    );
    let total = 48 * CHUNK as usize;
    let data = Arc::new(pattern(42, total));
    // The writer tells when a quarter is written and, at half, waits until
    // the kill happened: the kill lands while writes are in flight, and the
    // second half is always written after it (however fast the disk is).
    let (quarter_tx, quarter_rx) = tokio::sync::oneshot::channel::<()>();
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let (file, data) = (file.clone(), data.clone());
        tokio::spawn(async move {
            let pieces = data.chunks(256 << 10).count();
            let (mut quarter_tx, mut killed_rx) = (Some(quarter_tx), Some(killed_rx));
            for (i, piece) in data.chunks(256 << 10).enumerate() {
                if i == pieces / 4 {
                    let _ = quarter_tx.take().map(|tx| tx.send(()));
                }
                if i == pieces / 2 {
                    if let Some(rx) = killed_rx.take() {
                        let _ = rx.await;
                    }
                }
                file.write_at((i * (256 << 10)) as u64, piece).await?;
            }
            file.flush().await
        })
    };
    // Kill a chunk server under the writer.
    quarter_rx.await.expect("the writer reaches a quarter");
    cluster.kill_cs(1);
    let _ = killed_tx.send(());
    writer
        .await
        .unwrap()
        .expect("the writer must finish without an error");
    file.close().await.unwrap();
    assert_eq!(read_all(&client, "/stream.bin").await, *data);

    // The maps no longer use CS 1 where its copy went stale.
    let mds = pstorage_rpc::node::connect_mds(&cluster.conf(), Default::default()).unwrap();
    let maps = mds.file_chunks("/stream.bin").await.unwrap();
    assert!(maps.iter().all(|m| m.replicas.len() >= 2));
    let dead_id = cs_id_of(&cluster, 1);
    let bumped: Vec<_> = maps
        .iter()
        .filter(|m| !m.replicas.iter().any(|r| r.cs == CsId(dead_id)))
        .collect();
    assert!(
        !bumped.is_empty(),
        "the killed CS must have been dropped from some chains"
    );

    // Restart it: it registers, deletes its stale replicas, and reads stay right.
    cluster.start_cs(1);
    cluster.wait_active(3);
    assert_eq!(read_all(&client, "/stream.bin").await, *data);
    let addr = cluster_cs_addr(&mds, dead_id).await;
    let control = TcpControlConnector::new(
        pstorage_rpc::node::control_dialer(
            pstorage_rpc::node::node_credentials(&cluster.conf()).unwrap(),
        ),
        Default::default(),
    );
    // Re-replication may copy chunks back onto it (as new replicas at new
    // versions): compare with the maps once that settled.
    let maps = settled_maps(&mds, "/stream.bin").await;
    let held = control
        .chunk_control(&addr)
        .await
        .unwrap()
        .list_chunks()
        .await
        .unwrap();
    for m in &maps {
        let in_chain = m.replicas.iter().any(|r| r.cs == CsId(dead_id));
        let copy = held.iter().find(|h| h.chunk == m.chunk);
        match copy {
            Some(h) => assert!(
                in_chain && h.version == m.version,
                "stale replica of chunk {} kept",
                m.index
            ),
            None => assert!(!in_chain),
        }
    }
}

fn cs_id_of(cluster: &TestCluster, i: usize) -> u32 {
    let text = std::fs::read_to_string(cluster.cs_dirs[i].join("cs.conf")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (CsId(v["id"].as_u64().unwrap() as u32)).0
}

async fn cluster_cs_addr(mds: &pstorage_rpc::mds::MdsClient, id: u32) -> String {
    let s = mds.cluster_status().await.unwrap();
    s.cs.iter().find(|c| c.id == CsId(id)).unwrap().addr.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_byte_is_served_from_another_replica_and_repaired_in_place() {
    let cluster = TestCluster::start(ClusterOptions {
        chunk_servers: 3,
        chunk_size: CHUNK,
        ..Default::default()
    });
    let client = cluster.client();
    let data = pattern(7, 3 * CHUNK as usize);
    let file = client
        .open("/flip.bin", LeaseMode::Write, create())
        .await
        .unwrap();
    file.write_at(0, &data).await.unwrap();
    file.close().await.unwrap();

    let mds = pstorage_rpc::node::connect_mds(&cluster.conf(), Default::default()).unwrap();
    let before = mds.file_chunks("/flip.bin").await.unwrap();
    // Flip one byte of chunk 1 in every replica's file on ONE chunk server,
    // namely the one that reads of that block ask first.
    let bad_offset = 2 * CHUNK - 5000;
    let first = first_replica_to_read(1, bad_offset - CHUNK, before[1].replicas.len());
    let victim = before[1].replicas[first].cs;
    let victim_dir = cluster
        .cs_dirs
        .iter()
        .find(|d| cs_conf_id(d) == victim)
        .unwrap()
        .clone();
    let chunk_file = victim_dir
        .join("chunks")
        .join(format!("{:016x}.chunk", before[1].chunk));
    flip_byte(&chunk_file, 5000);

    // Every read returns the right data, and the reads of the damaged block
    // reach the bad copy first.
    assert_eq!(read_all(&client, "/flip.bin").await, data);
    let file = client
        .open("/flip.bin", LeaseMode::Read, OpenFlags::default())
        .await
        .unwrap();
    for _ in 0..6 {
        let mut buf = vec![0u8; 4096];
        let start = bad_offset / 4096 * 4096;
        assert_eq!(file.read_at(start, &mut buf).await.unwrap(), 4096);
        assert!(buf[..] == data[start as usize..start as usize + 4096]);
    }
    // The chunk server that found the bad block repairs it in place from
    // another replica (block-level repair): the replica stays in its chain
    // at the same version, and the event log says what happened.
    file.close().await.unwrap();
    let id = format!("{:#x}", before[1].chunk);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = mds.event_log(0).await.unwrap();
        let repaired = events.iter().any(|e| {
            e.kind == EventKind::Corruption
                && e.message.contains(&id)
                && e.message
                    .starts_with(&format!("chunk server {victim} repaired 1 block(s)"))
        });
        if repaired {
            break events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no repair of chunk {id} on CS {victim}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        events.iter().any(|e| e.kind == EventKind::Corruption
            && e.message.contains(&id)
            && e.message
                .contains(&format!("chunk server {victim} found 1 block(s)"))),
        "{events:?}"
    );
    let after = settled_maps(&mds, "/flip.bin").await;
    assert_eq!(after, before, "the chain changed");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&chunk_file).unwrap();
        let mut tail = vec![0u8; 8192];
        f.read_exact_at(&mut tail, data_end() - 8192).unwrap();
        assert!(
            tail[..] == data[2 * CHUNK as usize - 8192..2 * CHUNK as usize],
            "CS {victim} still holds the corrupt bytes"
        );
    }
    assert_eq!(read_all(&client, "/flip.bin").await, data);
}

/// The file's chunk maps once re-replication settled: every chunk healthy
/// and no copy in flight. Fails the test if that takes more than 20 s.
async fn settled_maps(
    mds: &pstorage_rpc::mds::MdsClient,
    path: &str,
) -> Vec<pstorage_core::types::ChunkMap> {
    for _ in 0..200 {
        let s = mds.cluster_status().await.unwrap();
        if s.chunk_counts.healthy == s.chunks && s.replication.in_flight == 0 {
            return mds.file_chunks(path).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "replication did not settle: {:?}",
        mds.cluster_status().await.unwrap()
    );
}

fn cs_conf_id(dir: &std::path::Path) -> CsId {
    let text = std::fs::read_to_string(dir.join("cs.conf")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    CsId(v["id"].as_u64().unwrap() as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mds_kill_and_restart_keeps_namespace_and_data() {
    let mut cluster = TestCluster::start(ClusterOptions {
        chunk_servers: 3,
        chunk_size: CHUNK,
        ..Default::default()
    });
    let data = pattern(99, 2 * CHUNK as usize + 333);
    {
        let client = cluster.client();
        client.mkdir("/a/b", true).await.unwrap();
        let f = client
            .open("/a/b/file", LeaseMode::Write, create())
            .await
            .unwrap();
        f.write_at(0, &data).await.unwrap();
        f.close().await.unwrap();
        client.rename("/a/b/file", "/a/file2").await.unwrap();
    }
    cluster.kill_mds();
    cluster.start_mds();
    cluster.wait_active(3);
    let client = cluster.client();
    let names: Vec<String> = client
        .readdir("/a")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["b".to_string(), "file2".to_string()]);
    assert_eq!(read_all(&client, "/a/file2").await, data);
}

/// Where the data of a chunk of `CHUNK` bytes ends in its file while its
/// blocks are in data slot 0 (written once, as here; see docs/formats.md).
fn data_end() -> u64 {
    FileChunkStore::data_file_offset(CHUNK, CHUNK)
}

/// Flips one bit of the byte `from_end` bytes before the end of the data of
/// the chunk file `path`, in place.
fn flip_byte(path: &std::path::Path, from_end: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = data_end() - from_end;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}
