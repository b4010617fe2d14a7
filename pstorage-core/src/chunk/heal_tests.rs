//! Tests of the self-healing parts of the chunk module: incoming replicas
//! and re-replication, scrubbing, recovery after an unclean stop, full
//! disks and I/O statistics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::memory::MemNetwork;
use super::*;
use crate::traits::{ChunkControl, ChunkService};
use crate::types::{CsId, Replica, MIN_CHUNK_SIZE};
use crate::ErrorKind;

const CS: u64 = MIN_CHUNK_SIZE; // 64 KiB: 16 blocks
const B: u64 = BLOCK_SIZE;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

fn read_all(store: &dyn ChunkStore, chunk: ChunkId) -> Vec<u8> {
    let mut buf = vec![0xAAu8; store.chunk_size(chunk).unwrap() as usize];
    store.read(chunk, 0, &mut buf).unwrap();
    buf
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

/// Runs `case` against a memory store and a file store.
fn each_store(case: impl Fn(&dyn ChunkStore)) {
    case(&MemChunkStore::new());
    let dir = tempfile::tempdir().unwrap();
    case(&FileChunkStore::open(dir.path()).unwrap());
}

fn chunk_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("chunks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---- incoming replicas ----

#[test]
fn an_incoming_replica_is_invisible_until_committed_then_replaces_the_old_one() {
    each_store(|store| {
        store.create(1, 3, CS).unwrap();
        let old = pattern(1, CS as usize);
        store.write(1, 0, &old).unwrap();

        let incoming = store.begin_incoming(1, 2 * CS).unwrap();
        let new = pattern(2, (3 * B + 5) as usize);
        store.write_incoming(incoming, B - 5, &new).unwrap();
        assert_eq!(
            kind(store.write_incoming(incoming, 2 * CS - 1, b"xy")),
            ErrorKind::InvalidArgument
        );
        // The old replica is untouched meanwhile.
        assert_eq!(store.version(1).unwrap(), 3);
        assert_eq!(store.chunk_size(1).unwrap(), CS);
        assert_eq!(read_all(store, 1), old);
        assert_eq!(store.list().unwrap().len(), 1);

        store.commit_incoming(incoming, 2).unwrap();
        // Replaced whatever its version (the MDS decides), size included.
        assert_eq!(store.version(1).unwrap(), 2);
        assert_eq!(store.chunk_size(1).unwrap(), 2 * CS);
        let mut expected = vec![0u8; 2 * CS as usize];
        expected[(B - 5) as usize..(B - 5) as usize + new.len()].copy_from_slice(&new);
        assert_eq!(read_all(store, 1), expected);
        assert_eq!(
            store.list().unwrap(),
            vec![ChunkReplicaInfo {
                chunk: 1,
                version: 2
            }]
        );
        // The handle is consumed.
        assert_eq!(
            kind(store.write_incoming(incoming, 0, b"x")),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(store.commit_incoming(incoming, 2)),
            ErrorKind::NotFound
        );

        // A new chunk, and an aborted copy that leaves nothing behind.
        let fresh = store.begin_incoming(7, CS).unwrap();
        store.write_incoming(fresh, 0, b"hello").unwrap();
        store.commit_incoming(fresh, 9).unwrap();
        let mut buf = [0u8; 5];
        store.read_checked(7, Some(9), 0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        let aborted = store.begin_incoming(8, CS).unwrap();
        store.write_incoming(aborted, 0, b"x").unwrap();
        store.abort_incoming(aborted);
        store.abort_incoming(aborted);
        assert_eq!(kind(store.version(8)), ErrorKind::NotFound);
        assert_eq!(
            kind(store.begin_incoming(8, 100)),
            ErrorKind::InvalidArgument
        );
    });
}

#[test]
fn mem_store_space_counts_incoming_blocks_and_releases_replaced_ones() {
    let store = MemChunkStore::new();
    store.set_capacity(4 * B);
    store.create(1, 1, CS).unwrap();
    store.write(1, 0, &pattern(3, (2 * B) as usize)).unwrap();
    let incoming = store.begin_incoming(1, CS).unwrap();
    store
        .write_incoming(incoming, 0, &[1u8; B as usize])
        .unwrap();
    assert_eq!(store.space().unwrap().free_bytes, B);
    assert_eq!(
        kind(store.write_incoming(incoming, B, &[1u8; 2 * B as usize])),
        ErrorKind::NoSpace
    );
    store.commit_incoming(incoming, 2).unwrap();
    assert_eq!(store.space().unwrap().free_bytes, 3 * B);
    let aborted = store.begin_incoming(2, CS).unwrap();
    store
        .write_incoming(aborted, 0, &[1u8; B as usize])
        .unwrap();
    store.abort_incoming(aborted);
    assert_eq!(store.space().unwrap().free_bytes, 3 * B);
}

#[test]
fn file_store_commits_durably_and_drops_uncommitted_copies_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(4, CS as usize);
    {
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.create(1, 1, CS).unwrap();
        store.write(1, 0, &[9u8; 100]).unwrap();
        // Keep the old replica open (cached) while it is replaced.
        assert_eq!(store.version(1).unwrap(), 1);
        let incoming = store.begin_incoming(1, CS).unwrap();
        store.write_incoming(incoming, 0, &data).unwrap();
        store.commit_incoming(incoming, 5).unwrap();
        // An uncommitted copy "crashes" with the store.
        let pending = store.begin_incoming(2, CS).unwrap();
        store.write_incoming(pending, 0, b"lost").unwrap();
        assert_eq!(chunk_files(dir.path()).len(), 2);
    }
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(chunk_files(dir.path()), vec![format!("{:016x}.chunk", 1)]);
    assert_eq!(store.version(1).unwrap(), 5);
    assert_eq!(read_all(&store, 1), data);
}

// ---- re-replication between chunk servers ----

fn addr(id: CsId) -> String {
    format!("10.0.1.{id}:9100")
}

fn replica(id: CsId) -> Replica {
    Replica {
        cs: id,
        addr: addr(id),
    }
}

/// Two chunk servers over the in-memory network; CS 1 holds chunk 5 at
/// version 4 with data in the first and third MiB of a 3 MiB chunk.
async fn pair(target: Arc<dyn ChunkStore>) -> (Arc<MemNetwork>, Arc<ChunkServer>, Vec<u8>) {
    let net = MemNetwork::new();
    let source = net.add_server(1, &addr(1), Arc::new(MemChunkStore::new()));
    let size = 3 << 20;
    source.create_chunk(5, 4, size).await.unwrap();
    let mut expected = vec![0u8; size as usize];
    let head = pattern(5, 1 << 20);
    let tail = pattern(6, 4000);
    expected[..head.len()].copy_from_slice(&head);
    expected[(2 << 20) + 10..(2 << 20) + 10 + tail.len()].copy_from_slice(&tail);
    source.store().write(5, 0, &head).unwrap();
    source.store().write(5, (2 << 20) + 10, &tail).unwrap();
    let target = net.add_server(2, &addr(2), target);
    (net, target, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_chunk_copies_a_replica_and_replaces_a_stale_one() {
    let (net, target, expected) = pair(Arc::new(MemChunkStore::new())).await;
    target.create_chunk(5, 2, CS).await.unwrap();
    target.store().write(5, 0, b"stale").unwrap();
    target
        .replicate_chunk(5, 4, 3 << 20, replica(1), 0)
        .await
        .unwrap();
    assert_eq!(target.store().version(5).unwrap(), 4);
    let got = target.read(5, 4, 0, 3 << 20).await.unwrap();
    assert!(got[..] == expected[..], "the copy differs from the source");
    net.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_changes_nothing_and_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileChunkStore::open(dir.path()).unwrap());
    let (net, target, _) = pair(store.clone()).await;
    target.create_chunk(5, 2, CS).await.unwrap();
    target.store().write(5, 0, b"stale").unwrap();

    // The source is at another version: Stale, named.
    let e = target
        .replicate_chunk(5, 3, 3 << 20, replica(1), 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
    assert!(e.message().contains("chunk server 1"), "{e}");
    // The source is unreachable.
    net.set_reachable(&addr(1), false);
    let e = target
        .replicate_chunk(5, 4, 3 << 20, replica(1), 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    net.set_reachable(&addr(1), true);
    // Copying from itself, or a bad chunk size.
    let e = target
        .replicate_chunk(5, 4, 3 << 20, replica(2), 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = target
        .replicate_chunk(5, 4, 1000, replica(1), 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

    assert_eq!(target.store().version(5).unwrap(), 2);
    let mut buf = [0u8; 5];
    target.store().read(5, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"stale");
    assert_eq!(chunk_files(dir.path()), vec![format!("{:016x}.chunk", 5)]);

    // A copy abandoned midway (the MDS's call timed out) leaves nothing.
    let copy = target.replicate_chunk(5, 4, 3 << 20, replica(1), 1 << 20);
    assert!(tokio::time::timeout(Duration::from_millis(300), copy)
        .await
        .is_err());
    assert_eq!(chunk_files(dir.path()), vec![format!("{:016x}.chunk", 5)]);
    assert_eq!(target.store().version(5).unwrap(), 2);
    net.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_chunk_honours_the_rate_limit() {
    let (net, target, expected) = pair(Arc::new(MemChunkStore::new())).await;
    let started = Instant::now();
    // 3 MiB at 6 MiB/s: about half a second.
    target
        .replicate_chunk(5, 4, 3 << 20, replica(1), 6 << 20)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    let got = target.read(5, 4, 0, 3 << 20).await.unwrap();
    assert!(got[..] == expected[..]);
    net.clear();
}
