//! The journal under a [`FileChunkStore`]: replay after a kill, repair of a
//! torn apply, forgotten records of a replaced replica, a full journal,
//! a journal in another directory.

use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::types::{DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::ErrorKind;

const B: u64 = BLOCK_SIZE;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

fn read(store: &dyn ChunkStore, chunk: ChunkId, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    store.read(chunk, offset, &mut buf).unwrap();
    buf
}

/// Zeroes `len` bytes of `chunk` at `offset`, or writes `pattern(seed)`
/// there; `model` (the chunk's content) follows.
fn write_or_zero(
    store: &FileChunkStore,
    model: &mut [u8],
    chunk: ChunkId,
    offset: u64,
    len: u64,
    seed: u64,
    zero: bool,
) {
    let range = offset as usize..(offset + len) as usize;
    if zero {
        store.zero(chunk, offset, len).unwrap();
        model[range].fill(0);
    } else {
        let data = pattern(seed, len as usize);
        store.write(chunk, offset, &data).unwrap();
        model[range].copy_from_slice(&data);
    }
}

/// A store in `dir` (trims held) with `chunks` chunks of `size` bytes, and
/// their content as a model.
fn store_with_chunks(dir: &Path, chunks: u64, size: u64) -> (FileChunkStore, Vec<Vec<u8>>) {
    let store = FileChunkStore::open(dir).unwrap();
    store.hold_trims();
    for chunk in 0..chunks {
        store.create(ChunkId(chunk), MapVersion(1), size).unwrap();
    }
    (store, vec![vec![0u8; size as usize]; chunks as usize])
}

/// Every chunk of `store` reads as its `model`; `when` names the moment.
fn assert_chunks(store: &FileChunkStore, model: &[Vec<u8>], when: &str) {
    for (c, m) in model.iter().enumerate() {
        assert_eq!(
            &read(store, ChunkId(c as u64), 0, m.len() as u64),
            m,
            "chunk {c} {when}"
        );
    }
}

/// Random writes, partial and whole, zeroings and overwrites, mirrored in
/// a model; then the store is dropped without a clean close (kill -9: the
/// page cache survives, nothing was applied or trimmed on purpose) and
/// reopened: everything reads back, from the chunk files.
#[test]
fn a_killed_store_replays_every_write_it_acknowledged() {
    killed_store_replays(4 * MIN_CHUNK_SIZE, 5 * B, 7, None);
}

/// The same with writes of up to 80 blocks into larger chunks: many go in
/// place (into the chunk file, their entries in the journal), mixed with
/// journalled writes and zeroings of the same blocks.
#[test]
fn a_killed_store_replays_big_writes_in_place_too() {
    killed_store_replays(64 * MIN_CHUNK_SIZE, 80 * B, 8, None);
}

/// The same with trims in the middle, after which big writes over written
/// blocks go to their other data slot (moved records in the journal).
#[test]
fn a_killed_store_replays_big_writes_moved_to_the_other_slot_too() {
    killed_store_replays(64 * MIN_CHUNK_SIZE, 80 * B, 9, Some(20));
}

fn killed_store_replays(size: u64, max_len: u64, seed: u64, trim_every: Option<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let model = {
        let (store, mut model) = store_with_chunks(dir.path(), 3, size);
        for i in 0..300 {
            let chunk = rng.gen_range(0..3u64);
            let offset = rng.gen_range(0..size - 1);
            let len = rng.gen_range(1..=(size - offset).min(max_len));
            write_or_zero(
                &store,
                &mut model[chunk as usize],
                ChunkId(chunk),
                offset,
                len,
                i,
                i % 7 == 0,
            );
            // Some flushes (apply to the file, no trim) in the middle.
            if i % 50 == 25 {
                store.flush(ChunkId(chunk)).unwrap();
            }
            if trim_every.is_some_and(|n| i % n == n / 2) {
                store.checkpoint().unwrap();
            }
            if i % 40 == 0 {
                assert_chunks(&store, &model, "before the kill");
            }
        }
        assert!(store.journal_stats().unwrap().used > 0);
        if trim_every.is_some() {
            let moved = (0..3u64)
                .flat_map(|c| (0..size / B).map(move |b| (c, b)))
                .filter(|&(c, b)| {
                    store.block_file_offset(ChunkId(c), b * B).unwrap()
                        != FileChunkStore::data_file_offset(size, b * B)
                })
                .count();
            assert!(moved > 0, "no big write went to the other slot");
        }
        model
    };
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(
        store.journal_stats().unwrap().used,
        0,
        "replayed and trimmed"
    );
    assert_chunks(&store, &model, "after the replay");
}

/// A write applied to the chunk file but torn there (the apply was cut by
/// a crash) is whole again after the replay: the journal still holds it.
#[test]
fn a_torn_apply_is_repaired_by_the_replay() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let size = MIN_CHUNK_SIZE;
    let data = pattern(3, size as usize);
    {
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.hold_trims();
        store.create(ChunkId(9), MapVersion(1), size).unwrap();
        // Writes small enough to go through the journal.
        for (i, piece) in data.chunks(4 * B as usize).enumerate() {
            store.write(ChunkId(9), i as u64 * 4 * B, piece).unwrap();
        }
        // Durable in the journal and applied to the file, not trimmed.
        store.flush(ChunkId(9)).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(store.chunk_path(ChunkId(9)))
            .unwrap();
        let at = FileChunkStore::data_file_offset(size, 5 * B);
        f.write_all_at(&[0xAB; 512], at + 1024).unwrap();
        let at = super::file::test_support::crc_entry_offset(7);
        f.write_all_at(&[0; 8], at).unwrap();
    }
    let store = Arc::new(FileChunkStore::open(dir.path()).unwrap());
    assert_eq!(read(&*store, ChunkId(9), 0, size), data);
}

/// Journal bytes in use.
fn used(store: &FileChunkStore) -> u64 {
    store.journal_stats().unwrap().used
}

/// A big write into blocks that read as zeros goes straight into the chunk
/// file: the journal gets a few hundred bytes of CRC entries per MiB, not
/// the MiB. A write over written blocks goes through the journal. Both
/// survive a kill and are read back, at the default chunk size.
#[test]
fn a_big_write_into_fresh_blocks_puts_only_its_entries_in_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mib = 1u64 << 20;
    let first = pattern(1, mib as usize);
    let second = pattern(2, mib as usize);
    {
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.hold_trims();
        store
            .create(ChunkId(1), MapVersion(1), DEFAULT_CHUNK_SIZE)
            .unwrap();
        let before = used(&store);
        store.write(ChunkId(1), 100 * mib, &first).unwrap();
        let in_place = used(&store) - before;
        assert!(
            in_place <= 8192,
            "{in_place} journal bytes for 1 MiB in place"
        );
        assert_eq!(read(&store, ChunkId(1), 100 * mib, mib), first);
        // Over written blocks (and unaligned): through the journal.
        store.write(ChunkId(1), 100 * mib + 512, &second).unwrap();
        let journalled = used(&store) - before - in_place;
        assert!(
            journalled > mib,
            "{journalled} journal bytes for 1 MiB over written blocks"
        );
        store.flush(ChunkId(1)).unwrap();
    }
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, ChunkId(1), 100 * mib, 512), first[..512]);
    assert_eq!(read(&store, ChunkId(1), 100 * mib + 512, mib), second);
    assert_eq!(read(&store, ChunkId(1), 0, mib), vec![0u8; mib as usize]);
}

/// Blocks 64..96 of chunk 1 (of the default size): `old` written and trimmed
/// first when given, so the big write of `new` over them moves them to
/// their other slot, else `new` goes in place into blocks that read as
/// zeros. The record reached the disk but not all of the data (it was not
/// flushed; a flush of chunk 2 synced the journal): block 64+3 never
/// reached the disk, block 64+7 is torn after its first sector. Returns the
/// store opened again (the replay ran) and what the blocks must read: as
/// written, but blocks 3 and 7 as they were before the write (`old`, or
/// zeros), never `Corrupt`.
fn big_write_whose_data_missed_the_disk(
    dir: &Path,
    old: Option<&[u8]>,
    new: &[u8],
) -> (FileChunkStore, Vec<u8>) {
    use std::os::unix::fs::FileExt;
    let size = DEFAULT_CHUNK_SIZE;
    {
        let store = FileChunkStore::open(dir).unwrap();
        store.hold_trims();
        store.create(ChunkId(1), MapVersion(1), size).unwrap();
        store.create(ChunkId(2), MapVersion(1), size).unwrap();
        if let Some(old) = old {
            store.write(ChunkId(1), 64 * B, old).unwrap();
            store.flush(ChunkId(1)).unwrap();
            store.checkpoint().unwrap();
        }
        store.write(ChunkId(1), 64 * B, new).unwrap();
        store.write(ChunkId(2), 0, b"other").unwrap();
        store.flush(ChunkId(2)).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(store.chunk_path(ChunkId(1)))
            .unwrap();
        let at = |block: u64| store.block_file_offset(ChunkId(1), block * B).unwrap();
        f.write_all_at(&[0; B as usize], at(64 + 3)).unwrap();
        f.write_all_at(&[0; 512], at(64 + 7) + 512).unwrap();
    }
    let store = FileChunkStore::open(dir).unwrap();
    let zeros = vec![0u8; new.len()];
    let before = old.unwrap_or(&zeros);
    let mut expected = new.to_vec();
    for block in [3, 7] {
        let range = (block * B) as usize..((block + 1) * B) as usize;
        expected[range.clone()].copy_from_slice(&before[range]);
    }
    assert_eq!(read(&store, ChunkId(1), 64 * B, 32 * B), expected);
    assert_eq!(&read(&store, ChunkId(2), 0, 5), b"other");
    (store, expected)
}

/// Blocks 0..32 of chunk 1 (of the default size) written with `new` by a
/// big write (in place, or moved over `old`, written and trimmed first),
/// flushed, then block 5 damaged on disk before the journal was trimmed:
/// the replay does not take it for a write that missed the disk (it would
/// silently read as zeros or the older content); it reads as `Corrupt`, to
/// be repaired from another replica. Its neighbours read as written.
fn flushed_big_write_damaged_on_disk_reads_as_corrupt(old: Option<&[u8]>, new: &[u8]) {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.hold_trims();
        store
            .create(ChunkId(1), MapVersion(1), DEFAULT_CHUNK_SIZE)
            .unwrap();
        if let Some(old) = old {
            store.write(ChunkId(1), 0, old).unwrap();
            store.checkpoint().unwrap();
        }
        let before = used(&store);
        store.write(ChunkId(1), 0, new).unwrap();
        assert!(used(&store) - before < 4096, "written in place or moved");
        store.flush(ChunkId(1)).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(store.chunk_path(ChunkId(1)))
            .unwrap();
        let at = store.block_file_offset(ChunkId(1), 5 * B).unwrap();
        f.write_all_at(&[0xEE; 512], at).unwrap();
    }
    let store = FileChunkStore::open(dir.path()).unwrap();
    let mut buf = vec![0u8; B as usize];
    let err = store.read(ChunkId(1), 5 * B, &mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert_eq!(read(&store, ChunkId(1), 0, 5 * B), new[..(5 * B) as usize]);
    assert_eq!(
        read(&store, ChunkId(1), 6 * B, 26 * B),
        new[(6 * B) as usize..]
    );
}

/// An in-place write whose data missed the disk at a crash reads as before
/// (zeros) where it did; the blocks can be written again, in place or not.
#[test]
fn an_in_place_write_whose_data_missed_the_disk_reads_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(5, (32 * B) as usize);
    let (store, _) = big_write_whose_data_missed_the_disk(dir.path(), None, &data);
    store.write(ChunkId(1), 64 * B, &data).unwrap();
    store.flush(ChunkId(1)).unwrap();
    assert_eq!(read(&store, ChunkId(1), 64 * B, 32 * B), data);
}

#[test]
fn a_flushed_in_place_block_damaged_on_disk_reads_as_corrupt_not_as_zeros() {
    flushed_big_write_damaged_on_disk_reads_as_corrupt(None, &pattern(6, (32 * B) as usize));
}

/// A big write over blocks that hold data, once no record in the journal
/// touches them, goes to their other data slot: the journal gets their new
/// and old entries (a few KiB per MiB), the old data stays where it was
/// until the record is trimmed, and the trim frees its space. A second big
/// write before that trim goes through the journal. At the default chunk
/// size, through a kill.
#[test]
fn a_big_overwrite_goes_to_the_other_slot_with_only_entries_in_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let size = DEFAULT_CHUNK_SIZE;
    let mib = 1u64 << 20;
    let (a, b, c) = (
        pattern(1, mib as usize),
        pattern(2, mib as usize),
        pattern(3, mib as usize),
    );
    let at = 100 * mib;
    let allocated = |store: &FileChunkStore| {
        std::fs::metadata(store.chunk_path(ChunkId(1)))
            .unwrap()
            .blocks()
            * 512
    };
    {
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.hold_trims();
        store.create(ChunkId(1), MapVersion(1), size).unwrap();
        store.write(ChunkId(1), at, &a).unwrap();
        store.checkpoint().unwrap();
        let slot0 = FileChunkStore::data_file_offset(size, at);
        assert_eq!(store.block_file_offset(ChunkId(1), at).unwrap(), slot0);
        let before = used(&store);
        store.write(ChunkId(1), at, &b).unwrap();
        let moved = used(&store) - before;
        assert!(moved <= 8192, "{moved} journal bytes for 1 MiB moved");
        let slot1 = store.block_file_offset(ChunkId(1), at).unwrap();
        assert!(
            slot1 > FileChunkStore::data_file_offset(size, size),
            "moved"
        );
        assert_eq!(read(&store, ChunkId(1), at, mib), b);
        // The old data is still there, in case the new one misses the disk.
        let mut old = vec![0u8; mib as usize];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(store.chunk_path(ChunkId(1))).unwrap(),
            &mut old,
            slot0,
        )
        .unwrap();
        assert!(old == a, "the old slot keeps the old data until the trim");
        // Not trimmed yet: the next big write goes through the journal.
        let before = used(&store);
        store.write(ChunkId(1), at, &c).unwrap();
        assert!(used(&store) - before > mib, "journalled");
        assert_eq!(store.block_file_offset(ChunkId(1), at).unwrap(), slot1);
        store.flush(ChunkId(1)).unwrap();
    }
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, ChunkId(1), at, mib), c);
    store.checkpoint().unwrap();
    // The header, the table of 65536 entries, the slot map and 1 MiB of
    // data: the old slot's MiB was freed.
    let held = allocated(&store);
    assert!(
        held < mib + (600 << 10),
        "{held} bytes allocated for 1 MiB of data"
    );
    // Back to slot 0 at the next big write.
    store.write(ChunkId(1), at, &a).unwrap();
    assert_eq!(
        store.block_file_offset(ChunkId(1), at).unwrap(),
        FileChunkStore::data_file_offset(size, at)
    );
    store.flush(ChunkId(1)).unwrap();
    store.checkpoint().unwrap();
    assert_eq!(read(&store, ChunkId(1), at, mib), a);
    assert!(allocated(&store) < mib + (600 << 10));
}

/// A moved write whose new data missed the disk at a crash reads as before
/// where it did, from the blocks' old slot, and so it stays after the trim
/// (which frees the slots not used) and the next open.
#[test]
fn a_moved_write_whose_data_missed_the_disk_reads_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let old = pattern(4, (32 * B) as usize);
    let new = pattern(5, (32 * B) as usize);
    let (store, expected) = big_write_whose_data_missed_the_disk(dir.path(), Some(&old), &new);
    store.checkpoint().unwrap();
    assert_eq!(read(&store, ChunkId(1), 64 * B, 32 * B), expected);
    drop(store);
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, ChunkId(1), 64 * B, 32 * B), expected);
}

#[test]
fn a_flushed_moved_block_damaged_on_disk_reads_as_corrupt_not_as_before() {
    flushed_big_write_damaged_on_disk_reads_as_corrupt(
        Some(&pattern(6, (32 * B) as usize)),
        &pattern(7, (32 * B) as usize),
    );
}

/// The slot map in the file says where the data of applied records is,
/// never where pending ones put it: an apply of the first of two moves in
/// one slot-map page writes only its blocks' bits (the second record may
/// not be durable yet; its bits on disk would send the blocks, after a
/// crash that lost it, to a slot whose data their entries do not cover).
#[test]
fn an_apply_writes_the_slots_of_its_records_only() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let size = DEFAULT_CHUNK_SIZE;
    let store = FileChunkStore::open(dir.path()).unwrap();
    store.hold_trims();
    store.create(ChunkId(1), MapVersion(1), size).unwrap();
    for first in [0, 32] {
        store
            .write(ChunkId(1), first * B, &pattern(first, (16 * B) as usize))
            .unwrap();
    }
    store.checkpoint().unwrap();
    for first in [0, 32] {
        let before = used(&store);
        store
            .write(
                ChunkId(1),
                first * B,
                &pattern(first + 1, (16 * B) as usize),
            )
            .unwrap();
        assert!(used(&store) - before < 4096, "moved");
    }
    // The first move's record only.
    store.apply_oldest(ChunkId(1), 1).unwrap();
    let map_at = FileChunkStore::data_file_offset(size, size);
    let bits = |store: &FileChunkStore| {
        let mut map = [0u8; 6];
        std::fs::File::open(store.chunk_path(ChunkId(1)))
            .unwrap()
            .read_exact_at(&mut map, map_at)
            .unwrap();
        map
    };
    assert_eq!(bits(&store), [0xff, 0xff, 0, 0, 0, 0]);
    store.checkpoint().unwrap();
    assert_eq!(bits(&store), [0xff, 0xff, 0, 0, 0xff, 0xff]);
    assert_eq!(
        read(&store, ChunkId(1), 32 * B, 16 * B),
        pattern(33, (16 * B) as usize)
    );
}

/// Blocks zeroed by a record still in the journal are not written in place
/// (a replay would zero them again after the new data): a flushed write
/// there survives a kill.
#[test]
fn blocks_a_journal_record_still_touches_are_not_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let size = DEFAULT_CHUNK_SIZE;
    let first = pattern(1, (64 * B) as usize);
    let second = pattern(2, (64 * B) as usize);
    {
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.hold_trims();
        store.create(ChunkId(1), MapVersion(1), size).unwrap();
        store.write(ChunkId(1), 0, &first).unwrap();
        store.flush(ChunkId(1)).unwrap();
        // Applied by the flush, not trimmed.
        store.zero(ChunkId(1), 0, 64 * B).unwrap();
        store.flush(ChunkId(1)).unwrap();
        let before = used(&store);
        store.write(ChunkId(1), 0, &second).unwrap();
        assert!(
            used(&store) - before > 64 * B,
            "the write over zeroed blocks went to the journal"
        );
        store.flush(ChunkId(1)).unwrap();
    }
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, ChunkId(1), 0, 64 * B), second);
    // After the trim of the open, the blocks may go in place again.
    store.zero(ChunkId(1), 0, 64 * B).unwrap();
    store.checkpoint().unwrap();
    let before = used(&store);
    store.write(ChunkId(1), 0, &first).unwrap();
    assert!(used(&store) - before < 4096, "in place once trimmed");
    store.flush(ChunkId(1)).unwrap();
    assert_eq!(read(&store, ChunkId(1), 0, 64 * B), first);
}

/// The records of a replica deleted and then copied in again are never
/// applied to the new replica, even when they are still in the journal at
/// the next start.
#[test]
fn records_of_a_replaced_replica_are_not_replayed_into_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let size = MIN_CHUNK_SIZE;
    let old = pattern(1, size as usize);
    let new = pattern(2, size as usize);
    {
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.create(ChunkId(4), MapVersion(1), size).unwrap();
        store.write(ChunkId(4), 0, &old).unwrap();
        store.flush(ChunkId(4)).unwrap();
        store.delete(ChunkId(4)).unwrap();
        let incoming = store.begin_incoming(ChunkId(4), size).unwrap();
        store.write_incoming(incoming, 0, &new).unwrap();
        store.commit_incoming(incoming, MapVersion(3)).unwrap();
        // Another chunk written after, so the journal is not empty.
        store.create(ChunkId(5), MapVersion(1), size).unwrap();
        store.write(ChunkId(5), 0, &old).unwrap();
        assert_eq!(read(&store, ChunkId(4), 0, size), new);
    }
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, ChunkId(4), 0, size), new);
    assert_eq!(store.version(ChunkId(4)).unwrap(), MapVersion(3));
    assert_eq!(read(&store, ChunkId(5), 0, size), old);
}

/// A whole chunk at the default size written through the smallest
/// journal: writers wait for the keeper to apply and trim, nothing is
/// lost, and the journal never overflows.
#[test]
fn a_default_size_chunk_streams_through_the_smallest_journal() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        journal_size: MIN_JOURNAL_SIZE,
        ..Default::default()
    };
    let store = FileChunkStore::open_with(dir.path(), &options).unwrap();
    let size = DEFAULT_CHUNK_SIZE;
    store.create(ChunkId(1), MapVersion(1), size).unwrap();
    let piece = 1u64 << 20;
    let mut max_used = 0;
    for i in 0..size / piece {
        store
            .write(ChunkId(1), i * piece, &pattern(i, piece as usize))
            .unwrap();
        max_used = max_used.max(store.journal_stats().unwrap().used);
    }
    assert!(max_used <= MIN_JOURNAL_SIZE);
    store.flush(ChunkId(1)).unwrap();
    drop(store);
    let store = FileChunkStore::open_with(dir.path(), &options).unwrap();
    for i in (0..size / piece).step_by(17) {
        assert_eq!(
            read(&store, ChunkId(1), i * piece, piece),
            pattern(i, piece as usize),
            "MiB {i}"
        );
    }
}

/// `make-cs -j DIR`: the journal lives in DIR; opening the store without
/// it (or with another one) is refused rather than losing what it holds.
#[test]
fn a_journal_in_another_directory_is_required_at_every_open() {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        journal_dir: Some(journal_dir.path().to_path_buf()),
        ..Default::default()
    };
    let data = pattern(5, MIN_CHUNK_SIZE as usize);
    {
        let store = FileChunkStore::open_with(dir.path(), &options).unwrap();
        store
            .create(ChunkId(1), MapVersion(1), MIN_CHUNK_SIZE)
            .unwrap();
        store.write(ChunkId(1), 0, &data).unwrap();
    }
    let in_journal_dir: Vec<_> = std::fs::read_dir(journal_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        in_journal_dir.iter().any(|n| n.starts_with("journal.")),
        "{in_journal_dir:?}"
    );
    let err = FileChunkStore::open(dir.path()).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("-j"), "{err}");
    let store = FileChunkStore::open_with(dir.path(), &options).unwrap();
    assert_eq!(read(&store, ChunkId(1), 0, MIN_CHUNK_SIZE), data);
}

/// Reads see a write at once, from the journal, before it is applied; and
/// a partial write merges with journalled data of its block.
#[test]
fn unapplied_writes_are_read_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileChunkStore::open(dir.path()).unwrap();
    store
        .create(ChunkId(1), MapVersion(1), MIN_CHUNK_SIZE)
        .unwrap();
    let block = pattern(1, B as usize);
    store.write(ChunkId(1), 0, &block).unwrap();
    store.write(ChunkId(1), 100, b"hello").unwrap();
    let mut expected = block.clone();
    expected[100..105].copy_from_slice(b"hello");
    assert_eq!(read(&store, ChunkId(1), 0, B), expected);
    store.zero(ChunkId(1), 0, B).unwrap();
    assert_eq!(read(&store, ChunkId(1), 0, B), vec![0u8; B as usize]);
    store.write(ChunkId(1), B - 3, b"abcdef").unwrap();
    assert_eq!(&read(&store, ChunkId(1), B - 3, 6), b"abcdef");
    store.checkpoint().unwrap();
    assert_eq!(store.journal_stats().unwrap().used, 0);
    assert_eq!(&read(&store, ChunkId(1), B - 3, 6), b"abcdef");
    assert_eq!(read(&store, ChunkId(1), 0, 100), vec![0u8; 100]);
}

/// A flush does not wait for the keeper applying the same chunk (at nice 19
/// in the background, preempted by everything else): the flush syncs the
/// journal and leaves the records to the keeper, and they read back, before
/// and after the keeper applied them.
#[test]
fn a_flush_does_not_wait_for_the_keeper_applying_its_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut model) = store_with_chunks(dir.path(), 1, DEFAULT_CHUNK_SIZE);
    let store = Arc::new(store);
    for i in 0..8u64 {
        write_or_zero(&store, &mut model[0], ChunkId(0), i * 3 * B, B, i, false);
    }
    let (done, flushed) = std::sync::mpsc::channel();
    let flushing = store.clone();
    store
        .while_applying(ChunkId(0), || {
            std::thread::spawn(move || done.send(flushing.flush(ChunkId(0))).unwrap());
            // Bounded so that a flush stuck behind the applier fails the
            // test instead of hanging it.
            flushed
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the flush waited for the applier")
                .unwrap();
        })
        .unwrap();
    assert!(store.journal_stats().unwrap().used > 0);
    assert_chunks(&store, &model, "flushed, not applied");
    store.checkpoint().unwrap();
    assert_eq!(store.journal_stats().unwrap().used, 0);
    assert_chunks(&store, &model, "applied");
}

/// Journal sizes below the minimum or not in whole 4 KiB are refused up
/// front, with nothing created.
#[test]
fn bad_journal_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for size in [0, MIN_JOURNAL_SIZE - 4096, MIN_JOURNAL_SIZE + 1] {
        let err = FileChunkStore::open_with(
            dir.path(),
            &StoreOptions {
                journal_size: size,
                ..Default::default()
            },
        )
        .err()
        .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{size}: {err}");
    }
}

/// Trims run over and over on another thread (the keeper writes the data
/// of journalled writes into the files with the chunk's lock released)
/// while one thread writes, zeroes and reads: every read returns the
/// newest data, and so does every chunk after a kill and replay.
#[test]
fn trims_running_beside_writes_and_reads_never_show_older_data() {
    trims_beside_writes_and_reads(64 * MIN_CHUNK_SIZE, 11);
}

/// The same at the default chunk size.
#[test]
fn trims_running_beside_writes_and_reads_at_the_default_chunk_size() {
    trims_beside_writes_and_reads(DEFAULT_CHUNK_SIZE, 12);
}

fn trims_beside_writes_and_reads(size: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let model = {
        let (store, mut model) = store_with_chunks(dir.path(), 2, size);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let trims = std::sync::atomic::AtomicU64::new(0);
        /// Stops the trims however the writer ends (a failed assertion
        /// too: the scope waits for its threads before it panics).
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        std::thread::scope(|scope| {
            let _stop = StopOnDrop(&stop);
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    store.checkpoint().unwrap();
                    trims.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            for i in 0..1500u64 {
                let chunk = rng.gen_range(0..2u64);
                // Mostly a few hot blocks, so that records of one block
                // are applied while newer ones arrive.
                let offset = if i % 3 == 0 {
                    rng.gen_range(0..size - 1)
                } else {
                    rng.gen_range(0..16 * B)
                };
                let len =
                    rng.gen_range(1..=(size - offset).min(if i % 5 == 0 { 80 } else { 3 } * B));
                let zero = i % 11 == 0;
                write_or_zero(
                    &store,
                    &mut model[chunk as usize],
                    ChunkId(chunk),
                    offset,
                    len,
                    i,
                    zero,
                );
                if i % 97 == 0 {
                    store.flush(ChunkId(chunk)).unwrap();
                }
                let at = rng.gen_range(0..32 * B);
                let m = &model[chunk as usize][at as usize..(at + 32 * B) as usize];
                assert_eq!(&read(&store, ChunkId(chunk), at, 32 * B), m, "op {i}");
            }
        });
        assert!(trims.load(std::sync::atomic::Ordering::Relaxed) > 1);
        assert_chunks(&store, &model, "before the kill");
        model
    };
    let store = FileChunkStore::open(dir.path()).unwrap();
    assert_chunks(&store, &model, "after the replay");
}

/// A journal record (with valid checksums) naming blocks past 2^64 of a
/// chunk fails the open as corrupt: the range check overflowed (a panic in
/// debug builds; found by the chunk_journal fuzz target).
#[test]
fn a_record_naming_blocks_past_2_pow_64_is_refused_at_replay() {
    for (first_block, blocks) in [(u64::MAX - 1, 4), (1, u64::MAX), (u64::MAX, u64::MAX)] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FileChunkStore::open(dir.path()).unwrap();
            store.hold_trims();
            store
                .create(ChunkId(4), MapVersion(1), MIN_CHUNK_SIZE)
                .unwrap();
            let journal = store.journal();
            journal
                .append(&[super::journal::NewRecord {
                    kind: super::journal::RecordKind::Zero,
                    chunk: ChunkId(4),
                    version: MapVersion(1),
                    first_block,
                    blocks,
                    slot: 0,
                    crcs: &[],
                    data: &[],
                }])
                .unwrap();
            journal.sync_all().unwrap();
        }
        let err = FileChunkStore::open(dir.path()).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(err.message().contains("names blocks"), "{err}");
    }
}
