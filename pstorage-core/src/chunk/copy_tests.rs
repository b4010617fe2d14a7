//! Tests of chunk copies between chunk servers (`replicate_chunk`): full
//! copies, sparse copies, resync of a stale replica, resumption, progress
//! and the progress deadline, at the default chunk size.

use crate::traits::CheckedBytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::memory::MemNetwork;
use super::*;
use crate::traits::{ChunkConnector, ChunkControl, ChunkService, ReplicaError, WriteRequest};
use crate::types::{CopyProgress, CopyStats, CsId, Replica, DEFAULT_CHUNK_SIZE};
use crate::ErrorKind;

const MIB: u64 = 1 << 20;
const B: u64 = BLOCK_SIZE;

fn addr(id: CsId) -> String {
    format!("10.0.2.{id}:9100")
}

fn replica(id: CsId) -> Replica {
    Replica {
        cs: id,
        addr: addr(id),
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut buf[..]);
    buf
}

/// Writes `len` random bytes at `offset` of `chunk` in pieces of at most 16 MiB.
fn fill(store: &dyn ChunkStore, chunk: ChunkId, offset: u64, len: u64, seed: u64) {
    let mut at = 0;
    while at < len {
        let n = (16 * MIB).min(len - at);
        store
            .write(chunk, offset + at, &pattern(seed + at, n as usize))
            .unwrap();
        at += n;
    }
}

/// The whole CRC table of a replica.
fn table(store: &dyn ChunkStore, chunk: ChunkId) -> Vec<u64> {
    let blocks = store.chunk_size(chunk).unwrap() / B;
    store.crc_entries(chunk, None, 0, blocks).unwrap()
}

/// Asserts that two replicas hold the same bytes and CRC tables (every
/// byte is read back, verified by the stores).
fn assert_identical(a: &dyn ChunkStore, b: &dyn ChunkStore, chunk: ChunkId) {
    let size = a.chunk_size(chunk).unwrap();
    assert_eq!(b.chunk_size(chunk).unwrap(), size);
    assert!(
        table(a, chunk) == table(b, chunk),
        "the CRC tables of chunk {chunk:#x} differ"
    );
    let piece = 16 * MIB;
    let mut x = vec![0u8; piece as usize];
    let mut y = vec![0u8; piece as usize];
    let mut at = 0;
    while at < size {
        let n = piece.min(size - at) as usize;
        a.read(chunk, at, &mut x[..n]).unwrap();
        b.read(chunk, at, &mut y[..n]).unwrap();
        assert!(x[..n] == y[..n], "chunk {chunk:#x} differs in [{at}, +{n})");
        at += n as u64;
    }
}

/// Source and target chunk servers over file stores in temp dirs. The
/// target reaches the source through a [`FaultyConnector`].
struct Pair {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    net: Arc<MemNetwork>,
    faults: Arc<Faults>,
    source: Arc<ChunkServer>,
    target: Arc<ChunkServer>,
    target_dir: std::path::PathBuf,
}

impl Pair {
    fn new() -> Pair {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let net = MemNetwork::new();
        let source = net.add_server(
            CsId(1),
            &addr(CsId(1)),
            Arc::new(FileChunkStore::open(a.path()).unwrap()),
        );
        let connector = FaultyConnector::new(net.clone());
        let faults = connector.faults.clone();
        let target = Arc::new(ChunkServer::new(
            CsId(2),
            Arc::new(FileChunkStore::open(b.path()).unwrap()),
            Arc::new(connector),
        ));
        target.set_serving(true);
        net.insert(&addr(CsId(2)), target.clone());
        let target_dir = b.path().to_path_buf();
        Pair {
            _dirs: (a, b),
            net,
            faults,
            source,
            target,
            target_dir,
        }
    }

    fn src(&self) -> &dyn ChunkStore {
        self.source.store().as_ref()
    }

    fn dst(&self) -> &dyn ChunkStore {
        self.target.store().as_ref()
    }

    async fn copy(&self, chunk: ChunkId, version: MapVersion, rate: u64) -> Result<CopyStats> {
        self.target
            .replicate_chunk(chunk, version, DEFAULT_CHUNK_SIZE, replica(CsId(1)), rate)
            .await
    }

    /// Files in the target's chunk directory.
    fn target_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.target_dir.join("chunks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.net.clear();
    }
}

/// What the source does once its read budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Fail every request with `Unavailable` (the source died).
    Die,
    /// Never answer (the source froze).
    Hang,
}

/// Faults of the source as the target sees it: it can fail or freeze after
/// a number of reads, and hold reads until released.
struct Faults {
    /// Reads that still succeed before the fault (u64::MAX: no fault).
    reads_left: AtomicU64,
    fault: Mutex<Fault>,
    /// When set, each read first takes a permit.
    gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// When set, every read returns its data with one bit flipped (damage
    /// in transit).
    flip: std::sync::atomic::AtomicBool,
}

impl Faults {
    /// After `reads` more successful reads, every request gets `fault`.
    fn fail_after(&self, reads: u64, fault: Fault) {
        *self.fault.lock() = fault;
        self.reads_left.store(reads, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.reads_left.store(u64::MAX, Ordering::SeqCst);
    }

    /// Holds every read until a permit of the returned semaphore is added.
    fn gate(&self) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *self.gate.lock() = Some(gate.clone());
        gate
    }

    fn faulty(&self) -> bool {
        self.reads_left.load(Ordering::SeqCst) == 0
    }

    async fn fault(&self) -> Error {
        let fault = *self.fault.lock();
        if fault == Fault::Hang {
            futures::future::pending::<()>().await;
        }
        Error::unavailable("the source chunk server died (test fault)")
    }
}

/// A connector to the in-memory network through [`Faults`].
struct FaultyConnector {
    net: Arc<MemNetwork>,
    faults: Arc<Faults>,
}

impl FaultyConnector {
    fn new(net: Arc<MemNetwork>) -> FaultyConnector {
        FaultyConnector {
            net,
            faults: Arc::new(Faults {
                reads_left: AtomicU64::new(u64::MAX),
                fault: Mutex::new(Fault::Die),
                gate: Mutex::new(None),
                flip: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

#[async_trait]
impl ChunkConnector for FaultyConnector {
    async fn chunk_service(&self, addr: &str) -> Result<Arc<dyn ChunkService>> {
        Ok(Arc::new(FaultyService {
            faults: self.faults.clone(),
            inner: self.net.chunk_service(addr).await?,
        }))
    }
}

struct FaultyService {
    faults: Arc<Faults>,
    inner: Arc<dyn ChunkService>,
}

#[async_trait]
impl ChunkService for FaultyService {
    async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError> {
        self.inner.write(request).await
    }

    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<CheckedBytes> {
        let gate = self.faults.gate.lock().clone();
        if let Some(gate) = gate {
            gate.acquire().await.unwrap().forget();
        }
        let allowed = self
            .faults
            .reads_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if !allowed {
            return Err(self.faults.fault().await);
        }
        let read = self.inner.read(chunk, version, offset, len).await?;
        if self.faults.flip.load(Ordering::SeqCst) && !read.data.is_empty() {
            // Changed on its way: the CRCs are the sender's.
            let mut damaged = read.data.to_vec();
            damaged[0] ^= 1;
            return Ok(CheckedBytes {
                data: Bytes::from(damaged),
                crcs: read.crcs,
            });
        }
        Ok(read)
    }

    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.inner.flush(chunk, version).await
    }

    async fn block_crcs(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u64>> {
        if self.faults.faulty() {
            return Err(self.faults.fault().await);
        }
        self.inner.block_crcs(chunk, version, offset, len).await
    }
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

fn chunk_file(chunk: ChunkId) -> String {
    format!("{chunk:016x}.chunk")
}

/// Polls `done` every 10 ms until it holds; panics after 60 s.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The target's progress on `chunk`, read synchronously for `wait_for`.
fn progress(server: &ChunkServer, chunk: ChunkId) -> Option<CopyProgress> {
    server.progress_of(chunk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_copy_of_a_fully_written_default_size_chunk_is_identical() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(1), MapVersion(3), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(1), 0, DEFAULT_CHUNK_SIZE, 1);
    let stats = pair.copy(ChunkId(1), MapVersion(3), 0).await.unwrap();
    assert_eq!(
        stats,
        CopyStats {
            bytes_copied: DEFAULT_CHUNK_SIZE,
            bytes_compared: DEFAULT_CHUNK_SIZE,
            reused_base: false,
        }
    );
    assert_eq!(pair.dst().version(ChunkId(1)).unwrap(), MapVersion(3));
    assert_identical(pair.src(), pair.dst(), ChunkId(1));
    assert_eq!(pair.target.copy_progress(ChunkId(1)).await.unwrap(), None);
    assert_eq!(pair.target_files(), vec![chunk_file(ChunkId(1))]);
    assert!(pair.target.partial_copies().is_empty());
    assert_eq!(pair.target.stats().replicated_bytes, DEFAULT_CHUNK_SIZE);
    // Again: nothing differs, nothing moves.
    let again = pair.copy(ChunkId(1), MapVersion(3), 0).await.unwrap();
    assert_eq!(again.bytes_copied, 0);
    assert!(again.reused_base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_chunk_copies_only_its_written_blocks() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(2), MapVersion(1), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    let src = pair.src();
    src.write(ChunkId(2), 10, b"x").unwrap(); // block 0
    src.write(ChunkId(2), 100 * MIB + 5, &pattern(1, 3 * B as usize))
        .unwrap(); // 4 blocks
    fill(src, ChunkId(2), 200 * MIB, 2 * MIB, 2); // 512 blocks
    src.write(ChunkId(2), DEFAULT_CHUNK_SIZE - 1, b"z").unwrap(); // the last block
                                                                  // Zeros written as data are data (their entry is not 0): copied.
    src.write(ChunkId(2), 50 * MIB, &vec![0u8; B as usize])
        .unwrap();
    // A zeroed block reads as zeros: not copied.
    src.write(ChunkId(2), 60 * MIB, &pattern(3, B as usize))
        .unwrap();
    src.zero(ChunkId(2), 60 * MIB, B).unwrap();
    let stats = pair.copy(ChunkId(2), MapVersion(1), 0).await.unwrap();
    assert_eq!(stats.bytes_copied, (1 + 4 + 512 + 1 + 1) * B);
    assert!(!stats.reused_base);
    assert_identical(pair.src(), pair.dst(), ChunkId(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_is_resynced_by_copying_only_the_changed_blocks() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(3), MapVersion(1), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(3), 0, 64 * MIB, 3);
    let first = pair.copy(ChunkId(3), MapVersion(1), 0).await.unwrap();
    assert_eq!(first.bytes_copied, 64 * MIB);

    // The target is away while the chunk moves on to version 2 elsewhere.
    let src = pair.src();
    src.write(ChunkId(3), 10 * MIB, &pattern(4, 2 * B as usize))
        .unwrap(); // 2 blocks changed
    src.write(ChunkId(3), 128 * MIB, &pattern(5, B as usize))
        .unwrap(); // 1 new block
    src.zero(ChunkId(3), 20 * MIB, B).unwrap(); // zeroed at the source: zeroed here
    ChunkControl::set_version(pair.source.as_ref(), ChunkId(3), MapVersion(2))
        .await
        .unwrap();
    // And the stale side diverged (writes it took that the others never saw).
    let dst = pair.dst();
    dst.write(ChunkId(3), 200 * MIB, &pattern(6, B as usize))
        .unwrap(); // source: never written
    dst.write(ChunkId(3), 30 * MIB, &pattern(7, B as usize))
        .unwrap(); // source: other data
    assert_eq!(dst.version(ChunkId(3)).unwrap(), MapVersion(1));

    // Hold the reads to see the replica refused while it is a mix.
    let gate = pair.faults.gate();
    let copy = {
        let target = pair.target.clone();
        tokio::spawn(async move {
            target
                .replicate_chunk(
                    ChunkId(3),
                    MapVersion(2),
                    DEFAULT_CHUNK_SIZE,
                    replica(CsId(1)),
                    0,
                )
                .await
        })
    };
    wait_for("the comparison", || {
        progress(&pair.target, ChunkId(3)).is_some_and(|p| p.bytes_total > 0)
    })
    .await;
    assert_eq!(
        progress(&pair.target, ChunkId(3)),
        Some(CopyProgress {
            chunk: ChunkId(3),
            version: MapVersion(2),
            bytes_done: 0,
            bytes_total: 4 * B,
        })
    );
    let e = pair
        .target
        .read_verified(ChunkId(3), MapVersion(1), 0, B)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
    assert!(e.message().contains("brought up to date"), "{e}");
    gate.add_permits(1000);
    let stats = copy.await.unwrap().unwrap();
    assert_eq!(
        stats,
        CopyStats {
            bytes_copied: 4 * B,
            bytes_compared: DEFAULT_CHUNK_SIZE,
            reused_base: true,
        }
    );
    assert_eq!(pair.dst().version(ChunkId(3)).unwrap(), MapVersion(2));
    assert_identical(pair.src(), pair.dst(), ChunkId(3));
    // Updated in place: no other file, and it serves again.
    assert_eq!(pair.target_files(), vec![chunk_file(ChunkId(3))]);
    pair.target
        .read_verified(ChunkId(3), MapVersion(2), 0, B)
        .await
        .unwrap();
}

/// `--all-faults` seed 100084: the chain's only member had a torn block;
/// every copy from it stopped there, and the stale replica that was to
/// repair the block was refused for the copy into it left unfinished: the
/// chunk stayed at one replica for good. Lent to the repair, it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_lent_to_a_block_repair_is_read_though_a_copy_into_it_stopped() {
    let pair = Pair::new();
    let chunk = ChunkId(9);
    pair.source
        .create_chunk(chunk, MapVersion(1), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), chunk, 0, 16 * MIB, 9);
    pair.copy(chunk, MapVersion(1), 0).await.unwrap();
    let held = |offset: u64| {
        let mut buf = vec![0u8; B as usize];
        pair.dst().read(chunk, offset, &mut buf).unwrap();
        buf
    };
    // The chunk moves on without the target: 8 runs change.
    for i in 0..8 {
        pair.src()
            .write(chunk, i * 2 * MIB, &pattern(90 + i, B as usize))
            .unwrap();
    }
    ChunkControl::set_version(pair.source.as_ref(), chunk, MapVersion(3))
        .await
        .unwrap();
    // A resync stops after 2 reads: the target is a mix, refused.
    pair.faults.fail_after(2, Fault::Die);
    pair.copy(chunk, MapVersion(3), 0).await.unwrap_err();
    pair.faults.heal();
    let refused = |r: Result<Bytes>| {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
        assert!(e.message().contains("brought up to date"), "{e}");
    };
    refused(pair.target.read_verified(chunk, MapVersion(1), 0, B).await);
    // Moved on as any replica is (a version push): still refused.
    ChunkControl::set_version(pair.target.as_ref(), chunk, MapVersion(3))
        .await
        .unwrap();
    refused(pair.target.read_verified(chunk, MapVersion(3), 0, B).await);
    // Lent: read at that version (as it holds its blocks), its CRCs too;
    // never written or flushed.
    pair.target
        .lend_for_repair(chunk, MapVersion(4))
        .await
        .unwrap();
    let data = pair
        .target
        .read_verified(chunk, MapVersion(4), 14 * MIB, B)
        .await
        .unwrap();
    assert_eq!(data[..], held(14 * MIB)[..]);
    let data = pair
        .target
        .read_verified(chunk, MapVersion(4), MIB, B)
        .await
        .unwrap();
    assert_eq!(data[..], held(MIB)[..]);
    pair.target
        .block_crcs(chunk, MapVersion(4), 0, 2 * B)
        .await
        .unwrap();
    let e = pair.target.flush(chunk, MapVersion(4)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
    // The loan ends with its version.
    ChunkControl::set_version(pair.target.as_ref(), chunk, MapVersion(5))
        .await
        .unwrap();
    refused(pair.target.read_verified(chunk, MapVersion(5), 0, B).await);
    // And a finished copy serves it as any replica.
    ChunkControl::set_version(pair.source.as_ref(), chunk, MapVersion(5))
        .await
        .unwrap();
    pair.copy(chunk, MapVersion(5), 0).await.unwrap();
    assert_identical(pair.src(), pair.dst(), chunk);
    pair.target
        .read_verified(chunk, MapVersion(5), 0, B)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_resumes_and_copies_only_the_rest() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(4), MapVersion(5), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(4), 0, 24 * MIB, 4);
    // The source dies after 5 reads of 1 MiB.
    pair.faults.fail_after(5, Fault::Die);
    let e = pair.copy(ChunkId(4), MapVersion(5), 0).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("from chunk server 1"), "{e}");
    // The partial copy is kept, but neither listed nor served.
    assert_eq!(pair.target.partial_copies(), vec![ChunkId(4)]);
    assert!(pair.dst().list().unwrap().is_empty());
    assert_eq!(
        kind(
            pair.target
                .read_verified(ChunkId(4), MapVersion(5), 0, B)
                .await
        ),
        ErrorKind::NotFound
    );
    assert_eq!(pair.target.copy_progress(ChunkId(4)).await.unwrap(), None);
    let files = pair.target_files();
    assert!(
        files.len() == 1 && files[0].contains(".chunk.tmp."),
        "{files:?}"
    );

    pair.faults.heal();
    let stats = pair.copy(ChunkId(4), MapVersion(5), 0).await.unwrap();
    assert_eq!(
        stats,
        CopyStats {
            bytes_copied: 19 * MIB,
            bytes_compared: DEFAULT_CHUNK_SIZE,
            reused_base: true,
        }
    );
    assert_identical(pair.src(), pair.dst(), ChunkId(4));
    assert!(pair.target.partial_copies().is_empty());
    assert_eq!(pair.target_files(), vec![chunk_file(ChunkId(4))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_local_replica_is_refused() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(5), MapVersion(3), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(5), 0, MIB, 5);
    pair.target
        .create_chunk(ChunkId(5), MapVersion(4), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    pair.dst().write(ChunkId(5), 0, b"newer").unwrap();
    let e = pair.copy(ChunkId(5), MapVersion(3), 0).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
    assert!(e.message().contains("version 4, newer than 3"), "{e}");
    assert_eq!(pair.dst().version(ChunkId(5)).unwrap(), MapVersion(4));
    let mut buf = [0u8; 5];
    pair.dst().read(ChunkId(5), 0, &mut buf).unwrap();
    assert_eq!(&buf, b"newer");
    assert_eq!(pair.target_files(), vec![chunk_file(ChunkId(5))]);
    assert!(pair.target.partial_copies().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_progress_reports_a_paced_copy() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(6), MapVersion(2), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(6), 0, 8 * MIB, 6);
    assert_eq!(pair.target.copy_progress(ChunkId(6)).await.unwrap(), None);
    let gate = pair.faults.gate();
    let started = tokio::time::Instant::now();
    let copy = {
        let target = pair.target.clone();
        tokio::spawn(async move {
            target
                .replicate_chunk(
                    ChunkId(6),
                    MapVersion(2),
                    DEFAULT_CHUNK_SIZE,
                    replica(CsId(1)),
                    16 * MIB,
                )
                .await
        })
    };
    gate.add_permits(2);
    let two = Some(CopyProgress {
        chunk: ChunkId(6),
        version: MapVersion(2),
        bytes_done: 2 * MIB,
        bytes_total: 8 * MIB,
    });
    wait_for("2 MiB copied", || progress(&pair.target, ChunkId(6)) == two).await;
    // Held there until more reads are let through.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(progress(&pair.target, ChunkId(6)), two);
    gate.add_permits(1000);
    let stats = copy.await.unwrap().unwrap();
    assert_eq!(stats.bytes_copied, 8 * MIB);
    // 8 MiB at 16 MiB/s.
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pair.target.copy_progress(ChunkId(6)).await.unwrap(), None);
    assert_identical(pair.src(), pair.dst(), ChunkId(6));
}

/// A base copy runs while writers go on at the same version (the MDS's
/// delta copy catches up later): a block written on the source after the
/// copy read its CRC table is taken as it is now, not a reason to fail the
/// whole copy. (The chaos suite saw copies of a chunk under a steady
/// writer fail again and again with "the source changed during the copy".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_the_source_during_a_copy_is_taken_not_a_failure() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(6), MapVersion(2), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(6), 0, 8 * MIB, 6);
    let gate = pair.faults.gate();
    let copy = {
        let target = pair.target.clone();
        tokio::spawn(async move {
            target
                .replicate_chunk(
                    ChunkId(6),
                    MapVersion(2),
                    DEFAULT_CHUNK_SIZE,
                    replica(CsId(1)),
                    0,
                )
                .await
        })
    };
    gate.add_permits(2);
    wait_for("2 MiB copied", || {
        progress(&pair.target, ChunkId(6)).is_some_and(|p| p.bytes_done == 2 * MIB)
    })
    .await;
    // A writer changes blocks the copy has not read yet (and one it has).
    pair.src()
        .write(
            ChunkId(6),
            6 * MIB + 3 * B + 100,
            &pattern(60, 3 * B as usize),
        )
        .unwrap();
    pair.src().write(ChunkId(6), 100, &pattern(61, 10)).unwrap();
    gate.add_permits(1000);
    let stats = copy.await.unwrap().unwrap();
    assert_eq!(stats.bytes_copied, 8 * MIB);
    // The block the copy had already read is behind (the delta copy's
    // job); everything read after the write is current.
    let (src, dst) = (table(pair.src(), ChunkId(6)), table(pair.dst(), ChunkId(6)));
    let differ: Vec<usize> = (0..src.len()).filter(|&b| src[b] != dst[b]).collect();
    assert_eq!(differ, vec![0], "blocks that differ after the copy");
    // The delta copy (at the next version) makes the replicas identical.
    pair.source
        .set_version(ChunkId(6), MapVersion(3))
        .await
        .unwrap();
    let stats = pair
        .target
        .replicate_chunk(
            ChunkId(6),
            MapVersion(3),
            DEFAULT_CHUNK_SIZE,
            replica(CsId(1)),
            0,
        )
        .await
        .unwrap();
    assert_eq!(stats.bytes_copied, B);
    assert_identical(pair.src(), pair.dst(), ChunkId(6));
}

/// Data damaged between the source and the target fails the copy: the
/// read's end-to-end check (`Checksum`) catches it before the comparison
/// with the source's CRC table would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_damaged_in_transit_fails_the_copy() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(6), MapVersion(2), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(6), 0, 2 * MIB, 6);
    pair.faults.flip.store(true, Ordering::SeqCst);
    let err = pair.copy(ChunkId(6), MapVersion(2), 0).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Checksum, "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_source_that_stops_answering_fails_the_copy_within_the_progress_deadline() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(7), MapVersion(1), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(7), 0, 8 * MIB, 7);
    let timeout = DEFAULT_COPY_PROGRESS_TIMEOUT;

    // It freezes after 3 reads.
    pair.faults.fail_after(3, Fault::Hang);
    let started = tokio::time::Instant::now();
    let e = pair.copy(ChunkId(7), MapVersion(1), 0).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(e.message().contains("did not answer a read"), "{e}");
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "{waited:?}"
    );
    // Frozen from the start: the CRC table request times out too.
    pair.faults.fail_after(0, Fault::Hang);
    let started = tokio::time::Instant::now();
    let e = pair.copy(ChunkId(7), MapVersion(1), 0).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(e.message().contains("CRC table"), "{e}");
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(1),
        "{waited:?}"
    );
    // Once it answers again, the copy resumes after the 3 MiB it had.
    pair.faults.heal();
    assert_eq!(
        pair.copy(ChunkId(7), MapVersion(1), 0)
            .await
            .unwrap()
            .bytes_copied,
        5 * MIB
    );
    assert_identical(pair.src(), pair.dst(), ChunkId(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_copies_are_bounded_and_deleted_with_their_chunk() {
    let pair = Pair::new();
    for chunk in 10..10 + MAX_PARTIAL_COPIES as u64 + 1 {
        pair.source
            .create_chunk(ChunkId(chunk), MapVersion(1), DEFAULT_CHUNK_SIZE)
            .await
            .unwrap();
        fill(pair.src(), ChunkId(chunk), 0, 2 * MIB, chunk);
        pair.faults.fail_after(1, Fault::Die);
        pair.copy(ChunkId(chunk), MapVersion(1), 0)
            .await
            .unwrap_err();
    }
    // The oldest was discarded.
    let kept: Vec<ChunkId> = (11..11 + MAX_PARTIAL_COPIES as u64).map(ChunkId).collect();
    assert_eq!(pair.target.partial_copies(), kept);
    assert_eq!(pair.target_files().len(), MAX_PARTIAL_COPIES);
    pair.target.delete_chunk(ChunkId(11)).await.unwrap();
    assert_eq!(pair.target.partial_copies(), kept[1..].to_vec());
    assert_eq!(pair.target_files().len(), MAX_PARTIAL_COPIES - 1);

    // A running copy fails when its chunk is deleted, and keeps nothing.
    pair.faults.heal();
    let gate = pair.faults.gate();
    let copy = {
        let target = pair.target.clone();
        tokio::spawn(async move {
            target
                .replicate_chunk(
                    ChunkId(12),
                    MapVersion(1),
                    DEFAULT_CHUNK_SIZE,
                    replica(CsId(1)),
                    0,
                )
                .await
        })
    };
    wait_for("the comparison", || {
        progress(&pair.target, ChunkId(12)).is_some_and(|p| p.bytes_total > 0)
    })
    .await;
    pair.target.delete_chunk(ChunkId(12)).await.unwrap();
    gate.add_permits(1000);
    let e = copy.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(pair.target.partial_copies(), kept[2..].to_vec());
    assert_eq!(pair.target_files().len(), MAX_PARTIAL_COPIES - 2);
    assert_eq!(kind(pair.dst().version(ChunkId(12))), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: writes and copies a fully written 1 GiB chunk between file stores"]
async fn long_a_full_copy_of_a_1_gib_chunk_is_identical() {
    let size = crate::types::MAX_CHUNK_SIZE;
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(9), MapVersion(2), size)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(9), 0, size, 9);
    let stats = pair
        .target
        .replicate_chunk(ChunkId(9), MapVersion(2), size, replica(CsId(1)), 0)
        .await
        .unwrap();
    assert_eq!(
        stats,
        CopyStats {
            bytes_copied: size,
            bytes_compared: size,
            reused_base: false,
        }
    );
    assert_eq!(pair.dst().version(ChunkId(9)).unwrap(), MapVersion(2));
    assert_identical(pair.src(), pair.dst(), ChunkId(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resync_keeps_the_replica_out_of_service_until_a_copy_finishes() {
    let pair = Pair::new();
    pair.source
        .create_chunk(ChunkId(20), MapVersion(1), DEFAULT_CHUNK_SIZE)
        .await
        .unwrap();
    fill(pair.src(), ChunkId(20), 0, 4 * MIB, 20);
    pair.copy(ChunkId(20), MapVersion(1), 0).await.unwrap();
    pair.src()
        .write(ChunkId(20), 0, &pattern(21, 3 * MIB as usize))
        .unwrap();
    ChunkControl::set_version(pair.source.as_ref(), ChunkId(20), MapVersion(2))
        .await
        .unwrap();
    // The resync dies after 1 of 3 reads: the stale replica is a mix now.
    pair.faults.fail_after(1, Fault::Die);
    pair.copy(ChunkId(20), MapVersion(2), 0).await.unwrap_err();
    assert_eq!(pair.dst().version(ChunkId(20)).unwrap(), MapVersion(1));
    let e = pair
        .target
        .read_verified(ChunkId(20), MapVersion(1), 0, B)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
    // Nothing partial besides the replica itself, which the next copy resumes.
    assert!(pair.target.partial_copies().is_empty());
    pair.faults.heal();
    let stats = pair.copy(ChunkId(20), MapVersion(2), 0).await.unwrap();
    assert_eq!(stats.bytes_copied, 2 * MIB);
    assert!(stats.reused_base);
    pair.target
        .read_verified(ChunkId(20), MapVersion(2), 0, B)
        .await
        .unwrap();
    assert_identical(pair.src(), pair.dst(), ChunkId(20));
}
