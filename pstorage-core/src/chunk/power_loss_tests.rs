//! Power loss below the process: the real [`FileChunkStore`] (journal, chunk
//! files, dirty log) on a [`CrashDisk`]. Random writes (partial, whole, big
//! ones in place), zeroings, flushes, trims and replaced replicas; then the
//! power is cut at a random point (unsynced pages kept, lost or torn at
//! 512-byte sectors; namespace changes since the last commit kept as a
//! random prefix) and the store opened again, several times per seed.
//! After each restart every block reads as one of the contents it had since
//! its chunk's last flush: a flushed write is never lost, nothing reads as
//! `Corrupt`, and nothing reads as a content it never had.

use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::types::DEFAULT_CHUNK_SIZE;
use crate::ErrorKind;

const B: u64 = BLOCK_SIZE;
const CHUNKS: u64 = 3;
/// The blocks of each chunk the workload touches (the chunks themselves
/// are of the default size).
const SPAN: u64 = 512;

struct Model {
    /// The content of each chunk's span as the running store shows it.
    current: Vec<Vec<u8>>,
    /// Per chunk and block: the CRCs of every content the block had since
    /// its chunk's last flush (the first one is durable).
    allowed: Vec<Vec<Vec<u64>>>,
    versions: Vec<MapVersion>,
}

impl Model {
    fn new() -> Model {
        let zeros = crc64(&[0u8; B as usize]);
        Model {
            current: vec![vec![0u8; (SPAN * B) as usize]; CHUNKS as usize],
            allowed: vec![vec![vec![zeros]; SPAN as usize]; CHUNKS as usize],
            versions: vec![MapVersion(1); CHUNKS as usize],
        }
    }

    fn block(&self, chunk: u64, block: u64) -> &[u8] {
        let at = (block * B) as usize;
        &self.current[chunk as usize][at..at + B as usize]
    }

    /// `[offset, offset + len)` of `chunk` changed in `current`.
    fn changed(&mut self, chunk: u64, offset: u64, len: u64) {
        for block in offset / B..(offset + len).div_ceil(B) {
            let crc = crc64(self.block(chunk, block));
            let allowed = &mut self.allowed[chunk as usize][block as usize];
            if allowed.last() != Some(&crc) {
                allowed.push(crc);
            }
        }
    }

    /// A flush of `chunk` returned: only the current content is allowed.
    fn flushed(&mut self, chunk: u64) {
        for block in 0..SPAN {
            let crc = crc64(self.block(chunk, block));
            self.allowed[chunk as usize][block as usize] = vec![crc];
        }
    }

    /// After a restart: every block reads as an allowed content, which is
    /// then the current and only allowed one (the replay synced it).
    fn check_restart(&mut self, store: &FileChunkStore, seed: u64, round: u32) {
        for chunk in 0..CHUNKS {
            let mut buf = vec![0u8; (SPAN * B) as usize];
            for block in 0..SPAN {
                let at = (block * B) as usize;
                let out = &mut buf[at..at + B as usize];
                if let Err(e) = store.read(ChunkId(chunk), block * B, out) {
                    panic!(
                        "seed {seed} round {round}: chunk {chunk} block {block} unreadable after \
                         the power loss: {e}"
                    );
                }
                let crc = crc64(out);
                let allowed = &self.allowed[chunk as usize][block as usize];
                assert!(
                    allowed.contains(&crc),
                    "seed {seed} round {round}: chunk {chunk} block {block} reads as content \
                     {crc:#x}, not one of the {} it had since its last flush ({:x?}; the first is \
                     the flushed one)",
                    allowed.len(),
                    allowed
                );
            }
            self.current[chunk as usize] = buf;
            self.flushed(chunk);
        }
    }
}

fn pattern(rng: &mut StdRng, len: u64) -> Vec<u8> {
    let fill: u8 = rng.gen();
    let mut out = vec![fill; len as usize];
    // A few random bytes make every write's content its own.
    for _ in 0..4 {
        let at = rng.gen_range(0..len as usize);
        out[at] = rng.gen();
    }
    out
}

/// One seed: `rounds` times open, `ops` random operations, power loss.
/// Returns how many blocks were in data slot 1 (moved there by big writes)
/// before the power losses.
fn run(seed: u64, rounds: u32, ops: u32, journal_size: u64) -> u64 {
    let mut moved = 0;
    let disk = CrashDisk::new();
    let dir = Path::new("/cs");
    let options = StoreOptions {
        journal_size,
        ..StoreOptions::default()
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::new();
    for round in 0..=rounds {
        let store = FileChunkStore::open_on(Arc::new(disk.clone()), dir, &options)
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: the store does not open: {e}"));
        store.hold_trims();
        if round == 0 {
            for chunk in 0..CHUNKS {
                store
                    .create(ChunkId(chunk), MapVersion(1), DEFAULT_CHUNK_SIZE)
                    .unwrap();
            }
        } else {
            model.check_restart(&store, seed, round);
        }
        if round == rounds {
            break;
        }
        for _ in 0..ops {
            let chunk = rng.gen_range(0..CHUNKS);
            match rng.gen_range(0..100) {
                // Small writes, often unaligned.
                0..=39 => {
                    let offset = rng.gen_range(0..SPAN * B - 1);
                    let len = rng.gen_range(1..=(8 * B).min(SPAN * B - offset));
                    let data = pattern(&mut rng, len);
                    store.write(ChunkId(chunk), offset, &data).unwrap();
                    model.current[chunk as usize][offset as usize..(offset + len) as usize]
                        .copy_from_slice(&data);
                    model.changed(chunk, offset, len);
                }
                // Big writes, mostly aligned: in place where the blocks
                // read as zeros and no record in the journal touches them.
                40..=64 => {
                    let blocks = rng.gen_range(16..=96u64);
                    let first = rng.gen_range(0..=SPAN - blocks);
                    let offset = first * B + if rng.gen_bool(0.2) { 512 } else { 0 };
                    let len = (blocks * B).min(SPAN * B - offset);
                    let data = pattern(&mut rng, len);
                    store.write(ChunkId(chunk), offset, &data).unwrap();
                    model.current[chunk as usize][offset as usize..(offset + len) as usize]
                        .copy_from_slice(&data);
                    model.changed(chunk, offset, len);
                }
                65..=74 => {
                    let offset = rng.gen_range(0..SPAN * B - 1);
                    let len = rng.gen_range(1..=(64 * B).min(SPAN * B - offset));
                    store.zero(ChunkId(chunk), offset, len).unwrap();
                    model.current[chunk as usize][offset as usize..(offset + len) as usize].fill(0);
                    model.changed(chunk, offset, len);
                }
                75..=89 => {
                    store.flush(ChunkId(chunk)).unwrap();
                    model.flushed(chunk);
                }
                90..=94 => store.checkpoint().unwrap(),
                95..=96 => {
                    // The replica is replaced (deleted, created anew).
                    store.delete(ChunkId(chunk)).unwrap();
                    model.versions[chunk as usize] += 1;
                    store
                        .create(
                            ChunkId(chunk),
                            model.versions[chunk as usize],
                            DEFAULT_CHUNK_SIZE,
                        )
                        .unwrap();
                    model.current[chunk as usize].fill(0);
                    model.flushed(chunk);
                }
                _ => {
                    let mut buf = vec![0u8; (SPAN * B) as usize];
                    store.read(ChunkId(chunk), 0, &mut buf).unwrap();
                    assert!(
                        buf == model.current[chunk as usize],
                        "seed {seed}: chunk {chunk} reads otherwise than written"
                    );
                }
            }
        }
        for chunk in 0..CHUNKS {
            for block in 0..SPAN {
                let slot0 = FileChunkStore::data_file_offset(DEFAULT_CHUNK_SIZE, block * B);
                moved +=
                    u64::from(store.block_file_offset(ChunkId(chunk), block * B).unwrap() != slot0);
            }
        }
        // kill -9 and the power with it.
        drop(store);
        disk.power_loss(&mut rng);
    }
    moved
}

#[test]
fn flushed_writes_survive_power_losses_and_nothing_reads_torn() {
    let moved: u64 = (0..24)
        .map(|seed| run(seed, 4, 120, MIN_JOURNAL_SIZE))
        .sum();
    assert!(moved > 0, "no big write went to the other slot");
}

/// The same at the default journal size.
#[test]
fn flushed_writes_survive_power_losses_at_the_default_journal_size() {
    let moved: u64 = (100..108)
        .map(|seed| run(seed, 4, 120, DEFAULT_JOURNAL_SIZE))
        .sum();
    assert!(moved > 0, "no big write went to the other slot");
}

/// Chunk 0 and 1 written (small writes through the journal, a big one in
/// place) and flushed.
fn two_written_chunks(disk: &CrashDisk) -> (FileChunkStore, Vec<u8>) {
    let store = FileChunkStore::open_on(
        Arc::new(disk.clone()),
        Path::new("/cs"),
        &StoreOptions::default(),
    )
    .unwrap();
    store.hold_trims();
    let data: Vec<u8> = (0..64 * B).map(|i| (i % 253) as u8).collect();
    for chunk in 0..2 {
        store
            .create(ChunkId(chunk), MapVersion(1), DEFAULT_CHUNK_SIZE)
            .unwrap();
        store
            .write(ChunkId(chunk), 0, &data[..(4 * B) as usize])
            .unwrap();
        store
            .write(ChunkId(chunk), 4 * B, &data[(4 * B) as usize..])
            .unwrap();
        store.flush(ChunkId(chunk)).unwrap();
    }
    (store, data)
}

fn read_all(store: &FileChunkStore, chunk: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    store.read(ChunkId(chunk), 0, &mut buf).map(|()| buf)
}

/// The kind of error a read of `chunk` fails with.
fn read_error(store: &FileChunkStore, chunk: u64) -> ErrorKind {
    match read_all(store, chunk, 64 * B) {
        Ok(_) => panic!("chunk {chunk} reads, but should fail"),
        Err(e) => e.kind(),
    }
}

/// After the failure of one chunk file, through a power loss: that replica
/// is never served as it was (its file may have fallen back to an older
/// content that passes its checks). If the server took it out of service
/// (`mark_bad`, what it does at the first `Corrupt`), it stays `.bad`;
/// otherwise the store lists it to be verified and reported unclean at the
/// start (so the MDS resyncs it). The other chunk keeps every flushed write.
fn check_failed_through_a_power_loss(
    disk: &CrashDisk,
    store: FileChunkStore,
    data: &[u8],
    mark_bad: bool,
) {
    assert_eq!(read_error(&store, 1), ErrorKind::Corrupt);
    assert!(read_all(&store, 0, 64 * B).unwrap() == data);
    store.checkpoint().unwrap();
    assert_eq!(read_error(&store, 1), ErrorKind::Corrupt);
    if mark_bad {
        store.mark_bad(ChunkId(1)).unwrap();
        assert_eq!(store.list_bad().unwrap(), vec![ChunkId(1)]);
    }
    drop(store);
    disk.fail_syncs(None);
    disk.fail_writes(None);
    disk.fail_reads(None);
    disk.power_loss(&mut StdRng::seed_from_u64(1));
    let store = FileChunkStore::open_on(
        Arc::new(disk.clone()),
        Path::new("/cs"),
        &StoreOptions::default(),
    )
    .unwrap();
    assert!(read_all(&store, 0, 64 * B).unwrap() == data);
    if mark_bad {
        let listed: Vec<ChunkId> = store.list().unwrap().iter().map(|r| r.chunk).collect();
        assert_eq!(listed, vec![ChunkId(0)]);
        assert_eq!(store.list_bad().unwrap(), vec![ChunkId(1)]);
        assert_eq!(read_error(&store, 1), ErrorKind::Corrupt);
    } else {
        assert!(
            store.unverified().contains(&ChunkId(1)),
            "the failed replica is verified and reported unclean at the start: {:?}",
            store.unverified()
        );
    }
}

/// An fsync of a chunk file that fails (EIO) at a trim: the page cache may
/// have dropped the data, so the replica leaves service, durably, before
/// the journal forgets the records that file did not keep.
#[test]
fn a_failed_sync_of_a_chunk_file_takes_the_replica_out_of_service_for_good() {
    failed_sync_at_a_trim(false);
}

/// The same when the server takes the replica out of service first.
#[test]
fn a_failed_sync_then_mark_bad_keeps_the_replica_out_of_service_for_good() {
    failed_sync_at_a_trim(true);
}

fn failed_sync_at_a_trim(mark_bad: bool) {
    let disk = CrashDisk::new();
    let (store, data) = two_written_chunks(&disk);
    // More writes, applied and synced by the trim.
    store.write(ChunkId(1), 0, &data[..B as usize]).unwrap();
    store.flush(ChunkId(1)).unwrap();
    disk.fail_syncs(Some("0000000000000001.chunk"));
    store.checkpoint().unwrap();
    check_failed_through_a_power_loss(&disk, store, &data, mark_bad);
}

/// A write into a chunk file that fails (EIO; here a big write in place):
/// the write fails and the replica leaves service; nothing else changes.
#[test]
fn a_failed_write_into_a_chunk_file_takes_the_replica_out_of_service() {
    failed_big_write(false);
}

/// A flush whose sync of data written in place fails: the flush fails and
/// the replica leaves service (a retried sync could report a false success).
#[test]
fn a_failed_sync_of_data_written_in_place_fails_the_flush_and_the_replica() {
    failed_sync_of_a_big_write(false);
}

/// The same with a big write over written blocks, which goes to their
/// other slot: its failed write takes the replica out of service too.
#[test]
fn a_failed_moved_write_takes_the_replica_out_of_service() {
    failed_big_write(true);
}

/// And a flush whose sync of moved data fails: the flush fails and the
/// replica leaves service.
#[test]
fn a_failed_sync_of_moved_data_fails_the_flush_and_the_replica() {
    failed_sync_of_a_big_write(true);
}

/// Two written chunks and where a big write into chunk 1 goes: into blocks
/// that read as zeros (in place), or, `moved`, after a trim over blocks
/// 4..64 that hold data no record touches (to their other slot).
fn chunks_for_a_big_write(disk: &CrashDisk, moved: bool) -> (FileChunkStore, Vec<u8>, u64) {
    let (store, data) = two_written_chunks(disk);
    if moved {
        store.checkpoint().unwrap();
        (store, data, 4 * B)
    } else {
        (store, data, 100 * B)
    }
}

fn failed_big_write(moved: bool) {
    let disk = CrashDisk::new();
    let (store, data, at) = chunks_for_a_big_write(&disk, moved);
    disk.fail_writes(Some("0000000000000001.chunk"));
    let err = store
        .write(ChunkId(1), at, &data[..(32 * B) as usize])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    check_failed_through_a_power_loss(&disk, store, &data, false);
}

fn failed_sync_of_a_big_write(moved: bool) {
    let disk = CrashDisk::new();
    let (store, data, at) = chunks_for_a_big_write(&disk, moved);
    let used = store.journal_stats().unwrap().used;
    store
        .write(ChunkId(1), at, &data[..(32 * B) as usize])
        .unwrap();
    if moved {
        assert!(
            store.journal_stats().unwrap().used - used < 4096,
            "the write moved"
        );
    }
    disk.fail_syncs(Some("0000000000000001.chunk"));
    let err = store.flush(ChunkId(1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    check_failed_through_a_power_loss(&disk, store, &data, false);
}

/// A read that fails (EIO) is an error, never data, and the replica leaves
/// service (`Corrupt` from then on, so the server takes it out); the other
/// chunks read on.
#[test]
fn a_failed_read_takes_the_replica_out_of_service() {
    let disk = CrashDisk::new();
    let (store, data) = two_written_chunks(&disk);
    store.checkpoint().unwrap();
    disk.fail_reads(Some("0000000000000001.chunk"));
    assert_eq!(read_error(&store, 1), ErrorKind::Corrupt);
    disk.fail_reads(None);
    check_failed_through_a_power_loss(&disk, store, &data, true);
}
