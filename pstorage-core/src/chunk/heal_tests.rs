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
use crate::types::{CsId, RegisterReply, Replica, MIN_CHUNK_SIZE};

use super::scrub::ScrubParams;
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
fn mem_store_space_counts_incoming_blocks_and_releases_replaced_ones() {
    let store = MemChunkStore::new();
    store.set_capacity(4 * B);
    store.create(ChunkId(1), MapVersion(1), CS).unwrap();
    store
        .write(ChunkId(1), 0, &pattern(3, (2 * B) as usize))
        .unwrap();
    let incoming = store.begin_incoming(ChunkId(1), CS).unwrap();
    store
        .write_incoming(incoming, 0, &[1u8; B as usize])
        .unwrap();
    assert_eq!(store.space().unwrap().free_bytes, B);
    assert_eq!(
        kind(store.write_incoming(incoming, B, &[1u8; 2 * B as usize])),
        ErrorKind::NoSpace
    );
    store.commit_incoming(incoming, MapVersion(2)).unwrap();
    assert_eq!(store.space().unwrap().free_bytes, 3 * B);
    let aborted = store.begin_incoming(ChunkId(2), CS).unwrap();
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
        store.create(ChunkId(1), MapVersion(1), CS).unwrap();
        store.write(ChunkId(1), 0, &[9u8; 100]).unwrap();
        // Keep the old replica open (cached) while it is replaced.
        assert_eq!(store.version(ChunkId(1)).unwrap(), MapVersion(1));
        let incoming = store.begin_incoming(ChunkId(1), CS).unwrap();
        store.write_incoming(incoming, 0, &data).unwrap();
        store.commit_incoming(incoming, MapVersion(5)).unwrap();
        // An uncommitted copy "crashes" with the store.
        let pending = store.begin_incoming(ChunkId(2), CS).unwrap();
        store.write_incoming(pending, 0, b"lost").unwrap();
        assert_eq!(chunk_files(dir.path()).len(), 2);
    }
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(chunk_files(dir.path()), vec![format!("{:016x}.chunk", 1)]);
    assert_eq!(store.version(ChunkId(1)).unwrap(), MapVersion(5));
    assert_eq!(read_all(&store, ChunkId(1)), data);
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
    let source = net.add_server(CsId(1), &addr(CsId(1)), Arc::new(MemChunkStore::new()));
    let size = 3 << 20;
    source
        .create_chunk(ChunkId(5), MapVersion(4), size)
        .await
        .unwrap();
    let mut expected = vec![0u8; size as usize];
    let head = pattern(5, 1 << 20);
    let tail = pattern(6, 4000);
    expected[..head.len()].copy_from_slice(&head);
    expected[(2 << 20) + 10..(2 << 20) + 10 + tail.len()].copy_from_slice(&tail);
    source.store().write(ChunkId(5), 0, &head).unwrap();
    source
        .store()
        .write(ChunkId(5), (2 << 20) + 10, &tail)
        .unwrap();
    let target = net.add_server(CsId(2), &addr(CsId(2)), target);
    (net, target, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_chunk_copies_a_replica_and_replaces_a_stale_one() {
    let (net, target, expected) = pair(Arc::new(MemChunkStore::new())).await;
    target
        .create_chunk(ChunkId(5), MapVersion(2), CS)
        .await
        .unwrap();
    target.store().write(ChunkId(5), 0, b"stale").unwrap();
    target
        .replicate_chunk(ChunkId(5), MapVersion(4), 3 << 20, replica(CsId(1)), 0)
        .await
        .unwrap();
    assert_eq!(target.store().version(ChunkId(5)).unwrap(), MapVersion(4));
    let got = target
        .read_verified(ChunkId(5), MapVersion(4), 0, 3 << 20)
        .await
        .unwrap();
    assert!(got[..] == expected[..], "the copy differs from the source");
    net.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_changes_no_replica_and_keeps_only_a_partial_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileChunkStore::open(dir.path()).unwrap());
    let (net, target, _) = pair(store.clone()).await;
    target
        .create_chunk(ChunkId(5), MapVersion(2), CS)
        .await
        .unwrap();
    target.store().write(ChunkId(5), 0, b"stale").unwrap();

    // The source is at another version: Stale, named.
    let e = target
        .replicate_chunk(ChunkId(5), MapVersion(3), 3 << 20, replica(CsId(1)), 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
    assert!(e.message().contains("chunk server 1"), "{e}");
    // The source is unreachable.
    net.set_reachable(&addr(CsId(1)), false);
    let e = target
        .replicate_chunk(ChunkId(5), MapVersion(4), 3 << 20, replica(CsId(1)), 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    net.set_reachable(&addr(CsId(1)), true);
    // Copying from itself, or a bad chunk size.
    let e = target
        .replicate_chunk(ChunkId(5), MapVersion(4), 3 << 20, replica(CsId(2)), 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = target
        .replicate_chunk(ChunkId(5), MapVersion(4), 1000, replica(CsId(1)), 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

    // The old replica (of another size) is untouched; the copies that got
    // as far as starting one share one partial copy, never listed.
    assert_eq!(target.store().version(ChunkId(5)).unwrap(), MapVersion(2));
    let mut buf = [0u8; 5];
    target.store().read(ChunkId(5), 0, &mut buf).unwrap();
    assert_eq!(&buf, b"stale");
    assert_eq!(
        target.store().list().unwrap(),
        vec![ChunkReplicaInfo {
            chunk: ChunkId(5),
            version: MapVersion(2)
        }]
    );
    assert_eq!(target.partial_copies(), vec![ChunkId(5)]);
    let files = chunk_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0], format!("{:016x}.chunk", 5));

    // A copy abandoned midway (the caller dropped it) keeps its partial
    // copy too, and the next copy resumes from it. Paced at 1 MiB/s over
    // 3 written MiB, it is dropped once the first MiB is in.
    let source = net.server(&addr(CsId(1))).unwrap();
    source
        .store()
        .write(ChunkId(5), 0, &pattern(7, 3 << 20))
        .unwrap();
    let copy = {
        let target = target.clone();
        tokio::spawn(async move {
            target
                .replicate_chunk(
                    ChunkId(5),
                    MapVersion(4),
                    3 << 20,
                    replica(CsId(1)),
                    1 << 20,
                )
                .await
        })
    };
    wait_for(|| {
        target
            .progress_of(ChunkId(5))
            .is_some_and(|p| p.bytes_done >= 1 << 20)
    })
    .await;
    copy.abort();
    assert!(copy.await.unwrap_err().is_cancelled());
    assert_eq!(target.store().version(ChunkId(5)).unwrap(), MapVersion(2));
    assert_eq!(target.partial_copies(), vec![ChunkId(5)]);
    let stats = target
        .replicate_chunk(ChunkId(5), MapVersion(4), 3 << 20, replica(CsId(1)), 0)
        .await
        .unwrap();
    assert!(stats.reused_base);
    assert!(stats.bytes_copied <= 2 << 20, "{stats:?}");
    let got = target
        .read_verified(ChunkId(5), MapVersion(4), 0, 3 << 20)
        .await
        .unwrap();
    assert!(got[..] == pattern(7, 3 << 20)[..]);
    assert_eq!(target.store().version(ChunkId(5)).unwrap(), MapVersion(4));
    assert_eq!(chunk_files(dir.path()), vec![format!("{:016x}.chunk", 5)]);
    net.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_chunk_honours_the_rate_limit() {
    let (net, target, _) = pair(Arc::new(MemChunkStore::new())).await;
    let expected = pattern(8, 3 << 20);
    net.server(&addr(CsId(1)))
        .unwrap()
        .store()
        .write(ChunkId(5), 0, &expected)
        .unwrap();
    let started = Instant::now();
    // 3 MiB at 6 MiB/s: about half a second.
    target
        .replicate_chunk(
            ChunkId(5),
            MapVersion(4),
            3 << 20,
            replica(CsId(1)),
            6 << 20,
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    let got = target
        .read_verified(ChunkId(5), MapVersion(4), 0, 3 << 20)
        .await
        .unwrap();
    assert!(got[..] == expected[..]);
    net.clear();
}

// ---- bad replicas, scrubbing ----

/// A bad-blocks report: chunk, version, blocks, detail.
type BlocksReport = (ChunkId, MapVersion, Vec<u64>, String);

/// Records every report.
#[derive(Default)]
struct RecordingSink {
    reports: parking_lot::Mutex<Vec<(ChunkId, MapVersion, String)>>,
    blocks: parking_lot::Mutex<Vec<BlocksReport>>,
}

impl RecordingSink {
    /// Replicas reported bad as a whole.
    fn chunks(&self) -> Vec<ChunkId> {
        let mut out: Vec<ChunkId> = self.reports.lock().iter().map(|r| r.0).collect();
        out.sort_unstable();
        out
    }

    /// Chunks with blocks reported for repair.
    fn block_chunks(&self) -> Vec<ChunkId> {
        let mut out: Vec<ChunkId> = self.blocks.lock().iter().map(|r| r.0).collect();
        out.sort_unstable();
        out
    }
}

impl BadReplicaSink for RecordingSink {
    fn bad_replica(&self, chunk: ChunkId, version: MapVersion, detail: String) {
        self.reports.lock().push((chunk, version, detail));
    }

    fn bad_blocks(&self, chunk: ChunkId, version: MapVersion, blocks: Vec<u64>, detail: String) {
        self.blocks.lock().push((chunk, version, blocks, detail));
    }
}

/// Flips one bit of the stored data of `chunk` at `chunk_offset`, behind
/// the store's back (in the chunk file, once the journal is applied and
/// trimmed: nothing replays over it).
fn flip_data_bit(store: &FileChunkStore, chunk: ChunkId, chunk_size: u64, chunk_offset: u64) {
    use std::os::unix::fs::FileExt;
    store.checkpoint().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(store.chunk_path(chunk))
        .unwrap();
    let at = FileChunkStore::data_file_offset(chunk_size, chunk_offset);
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1 << (chunk_offset % 8);
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn file_store_keeps_a_replica_out_of_service_across_a_restart() {
    // The rest of the rules of bad replicas: the conformance suite
    // (`chunk/tests.rs`, `bad_replicas_are_out_of_service_until_deleted_or_replaced`).
    let dir = tempfile::tempdir().unwrap();
    let file = FileChunkStore::open(dir.path()).unwrap();
    file.create(ChunkId(1), MapVersion(2), CS).unwrap();
    file.mark_bad(ChunkId(1)).unwrap();
    drop(file);
    let file = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(file.list_bad().unwrap(), vec![ChunkId(1)]);
    assert!(file.list().unwrap().is_empty());
}

/// A chunk server over a file store in a temp dir, with a recording sink.
struct FileCs {
    _dir: tempfile::TempDir,
    net: Arc<MemNetwork>,
    store: Arc<FileChunkStore>,
    server: Arc<ChunkServer>,
    sink: Arc<RecordingSink>,
}

impl FileCs {
    fn new() -> FileCs {
        let dir = tempfile::tempdir().unwrap();
        let store = FileChunkStore::open(dir.path()).unwrap();
        FileCs::serving(dir, store)
    }

    /// The same on a [`CrashDisk`](super::CrashDisk) (faults injected below
    /// the store).
    fn on(disk: &super::CrashDisk) -> FileCs {
        let store = FileChunkStore::open_on(
            Arc::new(disk.clone()),
            std::path::Path::new("/cs"),
            &StoreOptions::default(),
        )
        .unwrap();
        FileCs::serving(tempfile::tempdir().unwrap(), store)
    }

    fn serving(dir: tempfile::TempDir, store: FileChunkStore) -> FileCs {
        let store = Arc::new(store);
        let net = MemNetwork::new();
        let server = net.add_server(CsId(1), &addr(CsId(1)), store.clone());
        let sink = Arc::new(RecordingSink::default());
        server.set_bad_replica_sink(sink.clone());
        FileCs {
            _dir: dir,
            net,
            store,
            server,
            sink,
        }
    }
}

impl Drop for FileCs {
    fn drop(&mut self) {
        self.net.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_finds_every_flipped_bit_without_reads_and_reports_each_once() {
    let cs = FileCs::new();
    let size = 4 * CS; // 256 KiB, 64 blocks
    let chunks: Vec<ChunkId> = (1..=8).map(ChunkId).collect();
    for &chunk in &chunks {
        cs.server
            .create_chunk(chunk, MapVersion(7), size)
            .await
            .unwrap();
        cs.store
            .write(chunk, 0, &pattern(chunk.0, size as usize))
            .unwrap();
        cs.store.flush(chunk).unwrap();
    }
    // Bits flipped in random blocks of four chunks, two in one of them.
    let mut rng = StdRng::seed_from_u64(42);
    let corrupt = [2u64, 3, 5, 8].map(ChunkId);
    for &chunk in &corrupt {
        cs_flip(&cs, chunk, size, rng.gen_range(0..size));
    }
    cs_flip(&cs, ChunkId(5), size, rng.gen_range(0..size));

    // 2 MiB at 4 MiB/s: about half a second.
    let rate = 4 << 20;
    cs.server.set_scrub_params(Duration::from_secs(3600), rate);
    let scrubber = tokio::spawn(cs.server.clone().run_scrubber());
    let started = Instant::now();
    cs.server.scrub_now();
    wait_for(|| cs.server.scrub_stats().passes_completed == 1).await;
    let elapsed = started.elapsed();

    // Each flipped bit is one bad block; the replicas stay in service.
    assert_eq!(cs.sink.block_chunks(), corrupt);
    assert!(cs.sink.chunks().is_empty());
    for (chunk, version, blocks, detail) in cs.sink.blocks.lock().iter() {
        assert_eq!(*version, MapVersion(7));
        assert_eq!(
            blocks.len(),
            if *chunk == ChunkId(5) { 2 } else { 1 },
            "{blocks:?}"
        );
        assert!(
            detail.contains(&format!("chunk {chunk:#x}")) && detail.contains("CRC"),
            "{detail}"
        );
    }
    let stats = cs.server.scrub_stats();
    assert_eq!(stats.corrupt_found, 4);
    assert_eq!(stats.chunks_verified, 8);
    assert_eq!(stats.pass_chunks_total, 8);
    assert_eq!(stats.pass_chunks_done, 8);
    assert_eq!(stats.errors, 0);
    assert!(!stats.running);
    assert!(stats.last_pass_finished_ms >= stats.last_pass_started_ms);
    // The good chunks are read completely; each corrupt one up to its
    // first bad piece.
    assert!(stats.bytes_verified >= 4 * size, "{stats:?}");
    let min = Duration::from_secs_f64(stats.bytes_verified as f64 / rate as f64 * 0.7);
    assert!(elapsed >= min, "{elapsed:?} for {stats:?}");
    assert!(stats.bytes_per_s <= rate * 3 / 2, "{stats:?}");

    // Only the bad blocks fail to read; the rest of each replica serves.
    assert!(cs.store.list_bad().unwrap().is_empty());
    let reported = cs.sink.blocks.lock().clone();
    for &chunk in &chunks {
        let bad: Vec<u64> = reported
            .iter()
            .filter(|r| r.0 == chunk)
            .flat_map(|r| r.2.clone())
            .collect();
        assert_eq!(bad.is_empty(), !corrupt.contains(&chunk));
        let data = pattern(chunk.0, size as usize);
        for block in 0..size / B {
            let read = cs
                .server
                .read_verified(chunk, MapVersion(7), block * B, B)
                .await;
            if bad.contains(&block) {
                assert_eq!(read.unwrap_err().kind(), ErrorKind::Corrupt);
            } else {
                assert!(
                    read.unwrap()[..] == data[(block * B) as usize..((block + 1) * B) as usize]
                );
            }
        }
    }
    // A second pass reports nothing again while the repairs are in flight.
    cs.server.set_scrub_params(Duration::from_secs(3600), 0);
    cs.server.scrub_now();
    wait_for(|| cs.server.scrub_stats().passes_completed == 2).await;
    assert_eq!(cs.sink.block_chunks(), corrupt);
    assert_eq!(cs.server.scrub_stats().pass_chunks_total, 8);
    scrubber.abort();
}

fn cs_flip(cs: &FileCs, chunk: ChunkId, size: u64, offset: u64) {
    flip_data_bit(&cs.store, chunk, size, offset);
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrubber_runs_every_period() {
    let cs = FileCs::new();
    cs.server
        .create_chunk(ChunkId(1), MapVersion(1), CS)
        .await
        .unwrap();
    cs.store
        .write(ChunkId(1), 0, &pattern(1, CS as usize))
        .unwrap();
    cs.server.set_scrub_params(Duration::from_millis(100), 0);
    assert_eq!(
        cs.server.scrub_params(),
        ScrubParams {
            period: Duration::from_millis(100),
            rate_bytes_per_s: 0
        }
    );
    let scrubber = tokio::spawn(cs.server.clone().run_scrubber());
    wait_for(|| cs.server.scrub_stats().passes_completed >= 3).await;
    assert!(cs.sink.chunks().is_empty());
    // Corruption appearing later is found by a later pass.
    flip_data_bit(&cs.store, ChunkId(1), CS, 5000);
    wait_for(|| cs.sink.block_chunks() == [ChunkId(1)]).await;
    // Period 0 stops periodic passes.
    cs.server.set_scrub_params(Duration::ZERO, 0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let passes = cs.server.scrub_stats().passes_completed;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cs.server.scrub_stats().passes_completed, passes);
    assert_eq!(cs.server.scrub_stats().period_ms, 0);
    scrubber.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_read_hitting_a_bad_crc_reports_the_block_once_and_the_replica_keeps_serving() {
    let cs = FileCs::new();
    cs.server
        .create_chunk(ChunkId(1), MapVersion(4), CS)
        .await
        .unwrap();
    let data = pattern(3, CS as usize);
    cs.store.write(ChunkId(1), 0, &data).unwrap();
    flip_data_bit(&cs.store, ChunkId(1), CS, 3 * B + 1);
    cs.server
        .read_verified(ChunkId(1), MapVersion(4), 0, B)
        .await
        .unwrap();
    for _ in 0..3 {
        let e = cs
            .server
            .read_verified(ChunkId(1), MapVersion(4), 2 * B, 2 * B)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    }
    // Block 3 reported once (its repair is in flight); the rest serves.
    let reported = cs.sink.blocks.lock().clone();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!((reported[0].0, reported[0].1), (ChunkId(1), MapVersion(4)));
    assert_eq!(reported[0].2, [3]);
    assert!(cs.sink.chunks().is_empty());
    assert!(
        cs.server
            .read_verified(ChunkId(1), MapVersion(4), 4 * B, CS - 4 * B)
            .await
            .unwrap()[..]
            == data[(4 * B) as usize..]
    );
    let registration = cs.server.registration("x:1").await.unwrap();
    assert_eq!(registration.chunks.len(), 1);
    // A repair from a good copy (here the original bytes) heals it.
    let good = data[(3 * B) as usize..(4 * B) as usize].to_vec();
    assert!(cs
        .store
        .repair_block(ChunkId(1), MapVersion(4), 3, Some(&good))
        .unwrap());
    // A second repair finds the block good and leaves it alone.
    assert!(!cs
        .store
        .repair_block(ChunkId(1), MapVersion(4), 3, Some(&[7u8; B as usize]))
        .unwrap());
    assert!(
        cs.server
            .read_verified(ChunkId(1), MapVersion(4), 0, CS)
            .await
            .unwrap()[..]
            == data[..]
    );
    // Stale version: refused.
    assert_eq!(
        kind(
            cs.store
                .repair_block(ChunkId(1), MapVersion(3), 3, Some(&good))
        ),
        ErrorKind::Stale
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_every_block_bad_is_taken_out_as_a_whole_and_reported_once() {
    let cs = FileCs::new();
    cs.server
        .create_chunk(ChunkId(1), MapVersion(4), CS)
        .await
        .unwrap();
    cs.store
        .write(ChunkId(1), 0, &pattern(3, CS as usize))
        .unwrap();
    for block in 0..CS / B {
        flip_data_bit(&cs.store, ChunkId(1), CS, block * B + 1);
    }
    // A read scans only its own blocks: they are reported for repair.
    let e = cs
        .server
        .read_verified(ChunkId(1), MapVersion(4), 2 * B, 2 * B)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(cs.sink.blocks.lock()[0].2, [2, 3]);
    cs.server
        .finish_repair(ChunkId(1), MapVersion(4), &Default::default());
    // A whole scan (the scrubber's) finds every block bad: the replica
    // leaves service as a whole, reported once.
    assert!(
        cs.server
            .report_damage(ChunkId(1), None, "scrub".into())
            .await
    );
    assert!(
        !cs.server
            .report_damage(ChunkId(1), None, "scrub".into())
            .await
    );
    for _ in 0..3 {
        let e = cs
            .server
            .read_verified(ChunkId(1), MapVersion(4), 2 * B, 2 * B)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    }
    assert_eq!(cs.sink.chunks(), [ChunkId(1)]);
    assert_eq!(cs.sink.blocks.lock().len(), 1);
    assert!(cs.sink.reports.lock()[0]
        .2
        .contains("every block fails its check"));
    // Left out of the registration, deleted once the MDS has it.
    let registration = cs.server.registration("x:1").await.unwrap();
    assert!(registration.chunks.is_empty());
    cs.server
        .apply_register_reply(&crate::types::RegisterReply {
            delete: vec![],
            stale: vec![],
            heartbeat_interval_ms: 1000,
        })
        .await
        .unwrap();
    assert!(cs.store.list_bad().unwrap().is_empty());
    assert_eq!(
        cs.server
            .read_verified(ChunkId(1), MapVersion(4), 0, B)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

// ---- unclean stops ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_block_left_by_an_unclean_stop_is_found_before_serving() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileChunkStore::open(dir.path()).unwrap();
        for chunk in 1..=4 {
            store.create(ChunkId(chunk), MapVersion(1), CS).unwrap();
        }
        store
            .write(ChunkId(1), 0, &pattern(1, CS as usize))
            .unwrap();
        store.flush(ChunkId(1)).unwrap();
        store
            .write(ChunkId(2), 0, &pattern(2, CS as usize))
            .unwrap();
        store
            .write(ChunkId(3), 0, &pattern(3, CS as usize))
            .unwrap();
        // Applied and trimmed from the journal: what follows is damage
        // behind the journal's back, not a write it can replay.
        store.checkpoint().unwrap();
        // Chunk 3: a later write whose data reached the disk but whose CRC
        // entry did not (the process was killed in between).
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(store.chunk_path(ChunkId(3)))
            .unwrap();
        let at = FileChunkStore::data_file_offset(CS, 5 * B);
        f.write_all_at(&pattern(33, B as usize), at).unwrap();
        // "Killed": dropped without close_clean.
    }
    let store = Arc::new(FileChunkStore::open(dir.path()).unwrap());
    let unverified = store.unverified();
    assert!(
        unverified.contains(&ChunkId(2))
            && unverified.contains(&ChunkId(3))
            && !unverified.contains(&ChunkId(4)),
        "{unverified:?}"
    );
    let net = MemNetwork::new();
    let server = Arc::new(ChunkServer::new(CsId(1), store.clone(), net.clone()));
    let sink = Arc::new(RecordingSink::default());
    server.set_bad_replica_sink(sink.clone());
    let report = server.recover().await.unwrap();
    // The torn block is reported for repair; the replica stays.
    assert!(report.corrupt.is_empty(), "{report:?}");
    assert!(report.verified.contains(&ChunkId(2)), "{report:?}");
    assert!(report.verified.contains(&ChunkId(3)), "{report:?}");
    assert!(sink.chunks().is_empty());
    let reported = sink.blocks.lock().clone();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(
        (reported[0].0, reported[0].2.clone()),
        (ChunkId(3), vec![5])
    );
    assert!(reported[0].3.contains("unclean stop"), "{}", reported[0].3);
    // Chunks 2 and 3 are whole (but for the reported block) and may lack
    // writes their chain kept: unclean until the MDS has heard so (a crash
    // before that finds them unverified again). So is chunk 1: the dirty
    // log keeps recently flushed chunks too (it is compacted at most every
    // few seconds), so it cannot tell them apart: their resync finds
    // nothing to copy.
    assert_eq!(store.unverified(), [ChunkId(1), ChunkId(2), ChunkId(3)]);
    let registration = server.registration("x:1").await.unwrap();
    let listed: Vec<ChunkId> = registration.chunks.iter().map(|c| c.chunk).collect();
    assert_eq!(listed, [ChunkId(1), ChunkId(2), ChunkId(3), ChunkId(4)]);
    assert_eq!(registration.unclean, [ChunkId(1), ChunkId(2), ChunkId(3)]);
    // Until a registration succeeds, every attempt says so.
    assert_eq!(
        server.registration("x:1").await.unwrap().unclean,
        [ChunkId(1), ChunkId(2), ChunkId(3)]
    );
    server.set_serving(true);
    // The torn block never reads; the others do.
    assert_eq!(
        server
            .read_verified(ChunkId(3), MapVersion(1), 5 * B, B)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Corrupt
    );
    assert!(
        server
            .read_verified(ChunkId(3), MapVersion(1), 0, 5 * B)
            .await
            .unwrap()[..]
            == pattern(3, CS as usize)[..(5 * B) as usize]
    );
    // The registration went through: the unclean ones are verified, and
    // not served at the version they lost writes at (seed 100078 of
    // --all-faults: a writer whose map names it would not replay them).
    server
        .apply_register_reply(&RegisterReply::default())
        .await
        .unwrap();
    assert!(store.unverified().is_empty());
    let e = server
        .read_verified(ChunkId(2), MapVersion(1), 0, CS)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
    assert!(e.message().contains("lost writes"), "{e}");
    // The one clean replica serves.
    assert!(server
        .read_verified(ChunkId(4), MapVersion(1), 0, CS)
        .await
        .is_ok());
    assert!(server.registration("x:1").await.unwrap().unclean.is_empty());
    // The MDS moves the chunk on: served at its new version.
    server.set_version(ChunkId(2), MapVersion(2)).await.unwrap();
    assert!(
        server
            .read_verified(ChunkId(2), MapVersion(2), 0, CS)
            .await
            .unwrap()[..]
            == pattern(2, CS as usize)[..]
    );
    drop(server);

    // Verified chunks are not checked again after another kill.
    drop(store);
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert!(store.unverified().is_empty(), "{:?}", store.unverified());
}

#[test]
fn a_clean_close_leaves_nothing_to_verify_and_a_kill_everything_written() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileChunkStore::open(dir.path()).unwrap();
        for chunk in 1..=3 {
            store.create(ChunkId(chunk), MapVersion(1), CS).unwrap();
            store.write(ChunkId(chunk), 0, b"x").unwrap();
        }
        store.close_clean().unwrap();
        // Still usable after a clean close.
        store.write(ChunkId(1), 1, b"y").unwrap();
        store.close_clean().unwrap();
    }
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert!(store.unverified().is_empty());
    // Zeroing counts as writing; a version change syncs but a chunk
    // written before it stays listed until flushed.
    store.zero(ChunkId(2), 0, B).unwrap();
    store.write(ChunkId(3), 0, b"z").unwrap();
    store.set_version(ChunkId(3), MapVersion(2)).unwrap();
    drop(store);
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(store.unverified(), [ChunkId(2), ChunkId(3)]);
}

#[test]
fn the_dirty_log_stays_small_under_write_flush_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileChunkStore::open_with_cache(dir.path(), 4).unwrap();
    store.set_dirty_compact_interval(Duration::ZERO);
    for round in 0..20u64 {
        for chunk in 0..50 {
            if round == 0 {
                store.create(ChunkId(chunk), MapVersion(1), CS).unwrap();
            }
            store
                .write(ChunkId(chunk), round * 8, &round.to_le_bytes())
                .unwrap();
            store.flush(ChunkId(chunk)).unwrap();
        }
    }
    store.write(ChunkId(7), 0, b"w").unwrap();
    let log = std::fs::read_to_string(dir.path().join("dirty.log")).unwrap();
    // Compaction keeps it near the live set (here 1 chunk), never 1000 ids.
    assert!(log.lines().count() <= 64, "{} ids", log.lines().count());
    drop(store);
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert!(store.unverified().contains(&ChunkId(7)));
}

// ---- full disks and I/O statistics ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_fails_writes_with_no_space_naming_the_cs_and_keeps_old_data() {
    let store = Arc::new(MemChunkStore::new());
    let net = MemNetwork::new();
    let server = net.add_server(CsId(9), &addr(CsId(9)), store.clone());
    server
        .create_chunk(ChunkId(1), MapVersion(1), CS)
        .await
        .unwrap();
    let old = bytes::Bytes::from(pattern(9, (2 * B) as usize));
    server
        .write(crate::traits::WriteRequest::new(
            ChunkId(1),
            MapVersion(1),
            0,
            crate::traits::WritePayload::Data(old.clone()),
            vec![],
        ))
        .await
        .unwrap();
    store.set_capacity(3 * B);
    assert_eq!(
        server.store().space().unwrap(),
        crate::types::SpaceInfo {
            total_bytes: 3 * B,
            free_bytes: B
        }
    );
    let e = server
        .write(crate::traits::WriteRequest::new(
            ChunkId(1),
            MapVersion(1),
            B,
            crate::traits::WritePayload::Data(bytes::Bytes::from(vec![7u8; 3 * B as usize])),
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.failed_cs, None);
    assert_eq!(e.error.kind(), ErrorKind::NoSpace);
    assert!(e.error.message().contains("chunk server 9"), "{e}");
    let got = server
        .read_verified(ChunkId(1), MapVersion(1), 0, 2 * B)
        .await
        .unwrap();
    assert!(got == old);
    // Re-replication onto a full CS fails the same way and leaves nothing.
    let source = net.add_server(CsId(8), &addr(CsId(8)), Arc::new(MemChunkStore::new()));
    source
        .create_chunk(ChunkId(2), MapVersion(1), CS)
        .await
        .unwrap();
    source
        .store()
        .write(ChunkId(2), 0, &pattern(2, CS as usize))
        .unwrap();
    let e = server
        .replicate_chunk(ChunkId(2), MapVersion(1), CS, replica(CsId(8)), 0)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert_eq!(store.space().unwrap().free_bytes, B);
    assert_eq!(kind(store.version(ChunkId(2))), ErrorKind::NotFound);
    net.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_stats_count_successful_operations() {
    let net = MemNetwork::new();
    let server = net.add_server(CsId(1), &addr(CsId(1)), Arc::new(MemChunkStore::new()));
    let source = net.add_server(CsId(2), &addr(CsId(2)), Arc::new(MemChunkStore::new()));
    source
        .create_chunk(ChunkId(2), MapVersion(1), CS)
        .await
        .unwrap();
    assert_eq!(server.stats(), CsIoStats::default());
    server
        .create_chunk(ChunkId(1), MapVersion(1), CS)
        .await
        .unwrap();
    for payload in [
        crate::traits::WritePayload::Data(bytes::Bytes::from_static(b"hello")),
        crate::traits::WritePayload::Zeros(3 * B),
    ] {
        server
            .write(crate::traits::WriteRequest::new(
                ChunkId(1),
                MapVersion(1),
                0,
                payload,
                vec![],
            ))
            .await
            .unwrap();
    }
    server
        .read_verified(ChunkId(1), MapVersion(1), 0, 100)
        .await
        .unwrap();
    server
        .read_verified(ChunkId(1), MapVersion(1), 0, CS)
        .await
        .unwrap();
    server
        .read_verified(ChunkId(1), MapVersion(2), 0, 100)
        .await
        .unwrap_err();
    ChunkService::flush(server.as_ref(), ChunkId(1), MapVersion(1))
        .await
        .unwrap();
    source
        .store()
        .write(ChunkId(2), B, &[7u8; 2 * B as usize])
        .unwrap();
    server
        .replicate_chunk(ChunkId(2), MapVersion(1), CS, replica(CsId(2)), 0)
        .await
        .unwrap();
    assert_eq!(
        server.stats(),
        CsIoStats {
            read_ops: 2,
            read_bytes: 100 + CS,
            write_ops: 2,
            write_bytes: 5 + 3 * B,
            flush_ops: 1,
            replicated_chunks: 1,
            replicated_bytes: 2 * B,
        }
    );
    net.clear();
}

/// Where [`enospc_on_a_tiny_filesystem`] mounts the tmpfs for its child.
const ENOSPC_DIR_ENV: &str = "PSTORAGE_TEST_ENOSPC_DIR";

/// Runs [`enospc_child`] in a private mount namespace on a 512 KiB tmpfs
/// (`unshare -rm`, no privileges needed where user namespaces are
/// allowed); skipped, saying why, where they are not.
#[test]
fn enospc_on_a_tiny_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = r#"mount -t tmpfs -o size=512k none "$0" || exit 77
exec "$1" --exact chunk::heal_tests::enospc_child --ignored --nocapture"#;
    let output = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", script])
        .arg(dir.path())
        .arg(&exe)
        .env(ENOSPC_DIR_ENV, dir.path())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            eprintln!("SKIPPED enospc_on_a_tiny_filesystem: cannot run unshare: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}"),
        Some(101) => panic!("the ENOSPC scenario failed:\n{stdout}\n{stderr}"),
        _ => eprintln!(
            "SKIPPED enospc_on_a_tiny_filesystem: no private tmpfs mount here \
             (user namespaces disabled?): {stderr}"
        ),
    }
}

/// The ENOSPC scenario, on the tmpfs [`enospc_on_a_tiny_filesystem`]
/// mounts (does nothing elsewhere).
#[test]
#[ignore = "run by enospc_on_a_tiny_filesystem inside a private tmpfs"]
fn enospc_child() {
    let Some(dir) = std::env::var_os(ENOSPC_DIR_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    // The journal on another file system (`make-cs -j`): this one is too
    // small for it.
    let journal_dir = tempfile::tempdir().unwrap();
    let options = crate::chunk::StoreOptions {
        journal_dir: Some(journal_dir.path().to_path_buf()),
        ..Default::default()
    };
    let store = FileChunkStore::open_with(&dir, &options).unwrap();
    let size = 4 * CS;
    store.create(ChunkId(1), MapVersion(1), size).unwrap();
    let old = pattern(1, (2 * B) as usize);
    store.write(ChunkId(1), 0, &old).unwrap();
    store.flush(ChunkId(1)).unwrap();
    // Fill the file system.
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xEEu8; 4096];
        while f.write_all(&block).is_ok() {}
    }
    assert!(
        store.space().unwrap().free_bytes < 8 * B,
        "{:?}",
        store.space()
    );

    // Overwrites block 1 (allocated) and needs new pages beyond it.
    let e = store
        .write(ChunkId(1), B, &pattern(2, (16 * B) as usize))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
    assert!(e.message().contains("free space"), "{e}");
    // Nothing readable changed: each block holds its old content or reads
    // as Corrupt, never the half-written data.
    let mut expected = vec![0u8; size as usize];
    expected[..old.len()].copy_from_slice(&old);
    for block in 0..size / B {
        let mut buf = vec![0u8; B as usize];
        match store.read(ChunkId(1), block * B, &mut buf) {
            Ok(()) => assert!(
                buf[..] == expected[(block * B) as usize..((block + 1) * B) as usize],
                "block {block} reads wrong data"
            ),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupt, "block {block}: {e}"),
        }
    }
    // New chunks fail the same way and leave nothing behind.
    assert_eq!(
        kind(store.create(ChunkId(2), MapVersion(1), size)),
        ErrorKind::NoSpace
    );
    assert_eq!(kind(store.version(ChunkId(2))), ErrorKind::NotFound);
    let incoming = store.begin_incoming(ChunkId(3), size);
    if let Ok(incoming) = incoming {
        assert_eq!(
            kind(store.write_incoming(incoming, 0, &pattern(3, size as usize))),
            ErrorKind::NoSpace
        );
        store.abort_incoming(incoming);
    }

    // With space again, a rewrite heals the blocks.
    std::fs::remove_file(&filler).unwrap();
    let new = pattern(4, (16 * B) as usize);
    store.write(ChunkId(1), B, &new).unwrap();
    expected[B as usize..(17 * B) as usize].copy_from_slice(&new);
    assert_eq!(read_all(&store, ChunkId(1)), expected);
    store.create(ChunkId(2), MapVersion(1), size).unwrap();
}

/// Benchmark of the 4 KiB write path of the file store (the dirty log's
/// cost): `cargo test -p pstorage-core --lib heal_bench -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn heal_bench_4k_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileChunkStore::open(dir.path()).unwrap();
    let size = 64u64 << 20;
    let blocks = size / 4096;
    for chunk in 0..64 {
        store.create(ChunkId(chunk), MapVersion(1), size).unwrap();
    }
    let data = vec![0x5Au8; 4096];
    let mut rng = StdRng::seed_from_u64(1);
    // Warm up: every block written once (allocation out of the way).
    for b in 0..blocks {
        store.write(ChunkId(0), b * 4096, &data).unwrap();
    }
    let n = 200_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        store
            .write(ChunkId(0), rng.gen_range(0..blocks) * 4096, &data)
            .unwrap();
    }
    let per = t.elapsed() / n;
    println!("4 KiB random writes, one chunk, no flush: {per:?}/write");
    let n = 2_000;
    let t = std::time::Instant::now();
    for i in 0..n {
        let chunk = i % 64;
        store
            .write(ChunkId(chunk), rng.gen_range(0..blocks) * 4096, &data)
            .unwrap();
        store.flush(ChunkId(chunk)).unwrap();
    }
    let per = t.elapsed() / n as u32;
    println!("4 KiB write + flush, 64 chunks round robin: {per:?}/pair");
}

/// A chunk file whose sync fails (EIO) when the journal is trimmed is a
/// fact, not something to retry: the page cache may have dropped the data.
/// The replica leaves service (every access is `Corrupt`), the server
/// reports it once, and the other replicas of this store and the journal go
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_file_whose_sync_fails_leaves_service_and_is_reported() {
    let disk = super::CrashDisk::new();
    let cs = FileCs::on(&disk);
    for chunk in [1, 2] {
        cs.server
            .create_chunk(ChunkId(chunk), MapVersion(4), CS)
            .await
            .unwrap();
        cs.store
            .write(ChunkId(chunk), 0, &pattern(chunk, CS as usize))
            .unwrap();
    }
    disk.fail_syncs(Some("0000000000000001.chunk"));
    cs.store.checkpoint().unwrap();
    assert_eq!(
        cs.store.journal_stats().unwrap().used,
        0,
        "trimmed all the same"
    );
    let e = cs
        .server
        .read_verified(ChunkId(1), MapVersion(4), 0, B)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.message().contains("syncing it failed"), "{e}");
    assert_eq!(cs.sink.chunks(), [ChunkId(1)]);
    assert_eq!(cs.store.list_bad().unwrap(), [ChunkId(1)]);
    assert_eq!(
        cs.server
            .read_verified(ChunkId(2), MapVersion(4), 0, CS)
            .await
            .unwrap(),
        pattern(2, CS as usize)
    );
    // Writes to the healthy chunk go on.
    cs.store
        .write(ChunkId(2), 0, &pattern(7, B as usize))
        .unwrap();
    cs.store.flush(ChunkId(2)).unwrap();
}

/// A read of a chunk file that fails with EIO is a fact about the disk: the
/// read fails (never returns data), the server takes the replica out of
/// service and reports it once (the MDS copies the chunk anew); the other
/// replicas of this store go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_error_of_the_disk_takes_the_replica_out_of_service_and_reports_it() {
    let disk = super::CrashDisk::new();
    let cs = FileCs::on(&disk);
    for chunk in [1, 2] {
        cs.server
            .create_chunk(ChunkId(chunk), MapVersion(4), CS)
            .await
            .unwrap();
        cs.store
            .write(ChunkId(chunk), 0, &pattern(chunk, CS as usize))
            .unwrap();
    }
    cs.store.checkpoint().unwrap();
    disk.fail_reads(Some("0000000000000001.chunk"));
    let e = cs
        .server
        .read_verified(ChunkId(1), MapVersion(4), 0, B)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.message().contains("the disk failed a read"), "{e}");
    // The disk's error is the cause, not only words in the message.
    assert_eq!(
        e.find_source::<std::io::Error>()
            .and_then(|io| io.raw_os_error()),
        Some(libc::EIO),
        "{e:?}"
    );
    disk.fail_reads(None);
    assert_eq!(cs.sink.chunks(), [ChunkId(1)]);
    assert_eq!(cs.store.list_bad().unwrap(), [ChunkId(1)]);
    let e = cs
        .server
        .read_verified(ChunkId(1), MapVersion(4), 0, B)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(cs.sink.chunks(), [ChunkId(1)], "reported once");
    assert_eq!(
        cs.server
            .read_verified(ChunkId(2), MapVersion(4), 0, CS)
            .await
            .unwrap(),
        pattern(2, CS as usize)
    );
}

// ---- block repair ----

/// Three chunk servers on memory stores holding chunk 9 at version 3;
/// returns them with the data written.
async fn three() -> (
    Arc<MemNetwork>,
    Vec<(Arc<ChunkServer>, Arc<MemChunkStore>)>,
    Vec<u8>,
) {
    let net = MemNetwork::new();
    let data = pattern(90, (6 * B) as usize);
    let mut servers = Vec::new();
    for id in 1..=3 {
        let store = Arc::new(MemChunkStore::new());
        let server = net.add_server(CsId(id), &addr(CsId(id)), store.clone());
        server.set_serving(true);
        server
            .create_chunk(ChunkId(9), MapVersion(3), CS)
            .await
            .unwrap();
        store.write(ChunkId(9), 0, &data).unwrap();
        servers.push((server, store));
    }
    (net, servers, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_blocks_takes_each_block_from_the_first_member_with_a_good_copy() {
    let (_net, servers, data) = three().await;
    let (a, a_store) = &servers[0];
    // Block 1 bad on A; block 2 bad on A and B; block 4 bad on A.
    a_store.corrupt(ChunkId(9), B + 5).unwrap();
    a_store.corrupt(ChunkId(9), 2 * B + 5).unwrap();
    servers[1].1.corrupt(ChunkId(9), 2 * B + 7).unwrap();
    a_store.corrupt(ChunkId(9), 4 * B).unwrap();
    let outcome = a
        .repair_blocks(
            ChunkId(9),
            MapVersion(3),
            &[1, 2, 4],
            &[replica(CsId(2)), replica(CsId(3))],
        )
        .await;
    assert_eq!(
        outcome.repaired,
        vec![(CsId(2), vec![1, 4]), (CsId(3), vec![2])],
        "{outcome:?}"
    );
    assert!(outcome.unrepairable.is_empty() && outcome.failed.is_empty());
    assert_eq!(
        read_all(a_store.as_ref(), ChunkId(9))[..(6 * B) as usize],
        data[..]
    );
    // Repaired blocks are flushed: they survive a power loss.
    a_store.crash(&mut |_, _| BlockFate::Lost);
    assert_eq!(
        read_all(a_store.as_ref(), ChunkId(9))[..(6 * B) as usize],
        data[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_bad_everywhere_is_unrepairable_and_an_unreachable_source_is_retried() {
    let (net, servers, _data) = three().await;
    for (_, store) in &servers {
        store.corrupt(ChunkId(9), 3 * B + 11).unwrap();
    }
    let (a, a_store) = &servers[0];
    let outcome = a
        .repair_blocks(
            ChunkId(9),
            MapVersion(3),
            &[3],
            &[replica(CsId(2)), replica(CsId(3))],
        )
        .await;
    assert_eq!(outcome.unrepairable, [3], "{outcome:?}");
    assert!(outcome.repaired.is_empty() && outcome.failed.is_empty());
    // Still bad: never zeroed.
    let mut buf = vec![0u8; B as usize];
    assert_eq!(
        kind(a_store.read(ChunkId(9), 3 * B, &mut buf)),
        ErrorKind::Corrupt
    );
    // No other member: unrepairable too.
    let outcome = a.repair_blocks(ChunkId(9), MapVersion(3), &[3], &[]).await;
    assert_eq!(outcome.unrepairable, [3]);
    // Block 0 bad on A; the only source cannot be reached: failed, not
    // unrepairable, and the error says why.
    a_store.corrupt(ChunkId(9), 7).unwrap();
    net.set_reachable(&addr(CsId(2)), false);
    let outcome = a
        .repair_blocks(ChunkId(9), MapVersion(3), &[0], &[replica(CsId(2))])
        .await;
    assert_eq!(outcome.failed, [0], "{outcome:?}");
    assert!(outcome.error.is_some());
    // A source at another version is refused the same way.
    net.set_reachable(&addr(CsId(2)), true);
    let outcome = a
        .repair_blocks(ChunkId(9), MapVersion(4), &[0], &[replica(CsId(2))])
        .await;
    assert_eq!(outcome.failed, [0], "{outcome:?}");
    let outcome = a
        .repair_blocks(ChunkId(9), MapVersion(3), &[0], &[replica(CsId(2))])
        .await;
    assert_eq!(outcome.repaired, vec![(CsId(2), vec![0])]);
}
