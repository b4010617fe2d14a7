//! The chunk store conformance suite: every case runs against every
//! `ChunkStore` (`MemChunkStore`, `FileChunkStore`, and `FileChunkStore`
//! with a one-file cache); then file format tests, and replica chain tests
//! over the in-memory network. A store-specific test belongs here only for
//! what the trait leaves to the store (durability across a reopen, fault
//! injection).

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::types::MIN_CHUNK_SIZE;
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

// ---- conformance cases: each runs against every store ----

/// `write_checked_crcs` stores the sender's CRC as the entry of a block
/// the write covers whole (so bytes changed after the check on arrival
/// read as `Corrupt`, never as good data), computes the entries of partial
/// blocks, and refuses a CRC list of the wrong length.
fn a_write_with_crcs_keeps_the_senders_crcs_of_whole_blocks(store: &dyn ChunkStore) {
    let bs = BLOCK_SIZE as usize;
    store.create(ChunkId(1), MapVersion(1), CS).unwrap();
    let data: Vec<u8> = (0..2 * bs + 100).map(|i| (i % 253) as u8).collect();
    let crcs = crate::checksums::piece_crcs(0, &data);
    assert_eq!(
        kind(store.write_checked_crcs(ChunkId(1), Some(MapVersion(1)), 0, &data, &crcs[1..])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        read_all(store, ChunkId(1)),
        vec![0u8; CS as usize],
        "a refused write changed data"
    );
    store
        .write_checked_crcs(ChunkId(1), Some(MapVersion(1)), 0, &data, &crcs)
        .unwrap();
    let entries = store
        .crc_entries(ChunkId(1), Some(MapVersion(1)), 0, 3)
        .unwrap();
    assert_eq!(entries[0], encode_block_crc(crcs[0]));
    assert_eq!(entries[1], encode_block_crc(crcs[1]));
    let mut tail = vec![0u8; bs];
    tail[..100].copy_from_slice(&data[2 * bs..]);
    assert_eq!(
        entries[2],
        block_entry(&tail),
        "a partial block's entry is computed"
    );
    let mut buf = vec![0u8; data.len()];
    store.read(ChunkId(1), 0, &mut buf).unwrap();
    assert_eq!(buf, data);
    // Bytes that no longer match the sender's CRC: the block is Corrupt.
    let mut changed = data[..bs].to_vec();
    changed[7] ^= 1;
    store
        .write_checked_crcs(ChunkId(1), Some(MapVersion(1)), 0, &changed, &crcs[..1])
        .unwrap();
    assert_eq!(
        kind(store.read(ChunkId(1), 0, &mut buf)),
        ErrorKind::Corrupt
    );
}

fn new_chunk_reads_as_zeros(store: &dyn ChunkStore) {
    store.create(ChunkId(7), MapVersion(3), CS).unwrap();
    assert_eq!(store.version(ChunkId(7)).unwrap(), MapVersion(3));
    assert_eq!(store.chunk_size(ChunkId(7)).unwrap(), CS);
    assert_eq!(read_all(store, ChunkId(7)), vec![0u8; CS as usize]);
    assert_eq!(
        store.list().unwrap(),
        vec![ChunkReplicaInfo {
            chunk: ChunkId(7),
            version: MapVersion(3)
        }]
    );
}

fn create_is_idempotent_for_the_same_version(store: &dyn ChunkStore) {
    store.create(ChunkId(1), MapVersion(5), CS).unwrap();
    store.write(ChunkId(1), 100, b"kept").unwrap();
    store.create(ChunkId(1), MapVersion(5), CS).unwrap();
    let mut buf = [0u8; 4];
    store.read(ChunkId(1), 100, &mut buf).unwrap();
    assert_eq!(&buf, b"kept", "an idempotent create must not wipe data");
    assert_eq!(
        kind(store.create(ChunkId(1), MapVersion(6), CS)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(store.create(ChunkId(1), MapVersion(5), CS * 2)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(store.version(ChunkId(1)).unwrap(), MapVersion(5));
    assert_eq!(
        kind(store.create(ChunkId(2), MapVersion(1), CS + 1)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(store.create(ChunkId(2), MapVersion(1), 0)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(kind(store.version(ChunkId(2))), ErrorKind::NotFound);
}

fn random_ops_match_a_model(store: &dyn ChunkStore) {
    let chunk = 0x1f2;
    store.create(ChunkId(chunk), MapVersion(1), CS).unwrap();
    let mut model = vec![0u8; CS as usize];
    let mut rng = StdRng::seed_from_u64(42);
    for step in 0..400 {
        let offset = rng.gen_range(0..CS);
        let len = rng.gen_range(0..=(CS - offset).min(3 * B + 17));
        match rng.gen_range(0..3) {
            0 => {
                let data = pattern(step, len as usize);
                store.write(ChunkId(chunk), offset, &data).unwrap();
                model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
            }
            1 => {
                store.zero(ChunkId(chunk), offset, len).unwrap();
                model[offset as usize..(offset + len) as usize].fill(0);
            }
            _ => {
                let mut buf = vec![0x55u8; len as usize];
                store.read(ChunkId(chunk), offset, &mut buf).unwrap();
                assert_eq!(
                    buf,
                    &model[offset as usize..(offset + len) as usize],
                    "step {step}: read at {offset} len {len}"
                );
            }
        }
    }
    assert_eq!(read_all(store, ChunkId(chunk)), model);
}

fn unaligned_writes_across_blocks_round_trip(store: &dyn ChunkStore) {
    store.create(ChunkId(3), MapVersion(1), CS).unwrap();
    // Starts mid-block, covers two whole blocks, ends mid-block.
    let data = pattern(1, (3 * B) as usize);
    store.write(ChunkId(3), B / 2, &data).unwrap();
    let mut buf = vec![0u8; data.len()];
    store.read(ChunkId(3), B / 2, &mut buf).unwrap();
    assert_eq!(buf, data);
    // A small write inside one block keeps its neighbours.
    store.write(ChunkId(3), B + 10, b"xyz").unwrap();
    let mut small = [0u8; 7];
    store.read(ChunkId(3), B + 8, &mut small).unwrap();
    assert_eq!(
        &small[..2],
        &data[(B / 2 + 8) as usize..(B / 2 + 10) as usize]
    );
    assert_eq!(&small[2..5], b"xyz");
    assert_eq!(
        &small[5..],
        &data[(B / 2 + 13) as usize..(B / 2 + 15) as usize]
    );
    // The last byte of the chunk.
    store.write(ChunkId(3), CS - 1, &[9]).unwrap();
    let mut last = [0u8; 2];
    store.read(ChunkId(3), CS - 2, &mut last).unwrap();
    assert_eq!(last, [0, 9]);
}

fn sparse_chunk_reads_zeros_around_data(store: &dyn ChunkStore) {
    store.create(ChunkId(4), MapVersion(1), CS).unwrap();
    let data = pattern(2, B as usize);
    store.write(ChunkId(4), 5 * B, &data).unwrap();
    let all = read_all(store, ChunkId(4));
    assert!(all[..(5 * B) as usize].iter().all(|&b| b == 0));
    assert_eq!(&all[(5 * B) as usize..(6 * B) as usize], &data[..]);
    assert!(all[(6 * B) as usize..].iter().all(|&b| b == 0));
}

fn zero_makes_ranges_read_as_zeros(store: &dyn ChunkStore) {
    store.create(ChunkId(5), MapVersion(1), CS).unwrap();
    let data = pattern(3, CS as usize);
    store.write(ChunkId(5), 0, &data).unwrap();
    let mut model = data.clone();
    // Unaligned, spanning whole blocks; then exactly one block; then within a block.
    for (offset, len) in [(B / 3, 3 * B), (8 * B, B), (12 * B + 5, 10), (CS - 1, 1)] {
        store.zero(ChunkId(5), offset, len).unwrap();
        model[offset as usize..(offset + len) as usize].fill(0);
        assert_eq!(
            read_all(store, ChunkId(5)),
            model,
            "after zero({offset}, {len})"
        );
    }
    // Writing over a zeroed range works like over a fresh one.
    store.write(ChunkId(5), 8 * B + 1, b"again").unwrap();
    model[(8 * B + 1) as usize..(8 * B + 6) as usize].copy_from_slice(b"again");
    assert_eq!(read_all(store, ChunkId(5)), model);
    // Zeroing a never-written partial block keeps it reading zeros.
    store.create(ChunkId(6), MapVersion(1), CS).unwrap();
    store.zero(ChunkId(6), 10, 100).unwrap();
    assert_eq!(read_all(store, ChunkId(6)), vec![0u8; CS as usize]);
}

fn out_of_range_is_refused_and_changes_nothing(store: &dyn ChunkStore) {
    store.create(ChunkId(8), MapVersion(1), CS).unwrap();
    let data = pattern(4, CS as usize);
    store.write(ChunkId(8), 0, &data).unwrap();
    assert_eq!(
        kind(store.write(ChunkId(8), CS - 2, b"abc")),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(store.write(ChunkId(8), CS, b"a")),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(store.write(ChunkId(8), u64::MAX, b"a")),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(store.zero(ChunkId(8), CS - 1, 2)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(store.zero(ChunkId(8), 1, u64::MAX)),
        ErrorKind::InvalidArgument
    );
    let mut buf = [0u8; 2];
    assert_eq!(
        kind(store.read(ChunkId(8), CS - 1, &mut buf)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(read_all(store, ChunkId(8)), data);
    // Empty operations at the very end are fine.
    store.write(ChunkId(8), CS, &[]).unwrap();
    store.read(ChunkId(8), CS, &mut []).unwrap();
    store.zero(ChunkId(8), CS, 0).unwrap();
}

fn missing_chunks_are_not_found(store: &dyn ChunkStore) {
    let mut buf = [0u8; 1];
    assert_eq!(kind(store.version(ChunkId(9))), ErrorKind::NotFound);
    assert_eq!(kind(store.chunk_size(ChunkId(9))), ErrorKind::NotFound);
    assert_eq!(
        kind(store.set_version(ChunkId(9), MapVersion(2))),
        ErrorKind::NotFound
    );
    assert_eq!(kind(store.write(ChunkId(9), 0, b"a")), ErrorKind::NotFound);
    assert_eq!(kind(store.zero(ChunkId(9), 0, 1)), ErrorKind::NotFound);
    assert_eq!(
        kind(store.read(ChunkId(9), 0, &mut buf)),
        ErrorKind::NotFound
    );
    assert_eq!(kind(store.flush(ChunkId(9))), ErrorKind::NotFound);
    store.delete(ChunkId(9)).unwrap();
    assert!(store.list().unwrap().is_empty());
}

fn versions_only_grow_and_checked_ops_enforce_them(store: &dyn ChunkStore) {
    store.create(ChunkId(10), MapVersion(4), CS).unwrap();
    store
        .write_checked(ChunkId(10), Some(MapVersion(4)), 0, b"v4")
        .unwrap();
    store.set_version(ChunkId(10), MapVersion(6)).unwrap();
    store.set_version(ChunkId(10), MapVersion(6)).unwrap();
    let e = store.set_version(ChunkId(10), MapVersion(5)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale);
    assert_eq!(store.version(ChunkId(10)).unwrap(), MapVersion(6));

    let e = store
        .write_checked(ChunkId(10), Some(MapVersion(4)), 0, b"xx")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale);
    assert!(
        e.message().contains('4') && e.message().contains('6'),
        "{e}"
    );
    assert_eq!(
        kind(store.zero_checked(ChunkId(10), Some(MapVersion(7)), 0, 2)),
        ErrorKind::Stale
    );
    let mut buf = [0u8; 2];
    assert_eq!(
        kind(store.read_checked(ChunkId(10), Some(MapVersion(5)), 0, &mut buf)),
        ErrorKind::Stale
    );
    store
        .read_checked(ChunkId(10), Some(MapVersion(6)), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"v4", "refused writes must change nothing");
    store
        .write_checked(ChunkId(10), Some(MapVersion(6)), 0, b"v6")
        .unwrap();
    store.read_checked(ChunkId(10), None, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"v6");
    store.flush(ChunkId(10)).unwrap();
}

fn delete_removes_and_recreate_starts_empty(store: &dyn ChunkStore) {
    store.create(ChunkId(11), MapVersion(1), CS).unwrap();
    store.create(ChunkId(12), MapVersion(2), CS).unwrap();
    store
        .write(ChunkId(11), 0, &pattern(5, B as usize))
        .unwrap();
    store.delete(ChunkId(11)).unwrap();
    store.delete(ChunkId(11)).unwrap();
    assert_eq!(kind(store.version(ChunkId(11))), ErrorKind::NotFound);
    let mut buf = [0u8; 1];
    assert_eq!(
        kind(store.read(ChunkId(11), 0, &mut buf)),
        ErrorKind::NotFound
    );
    assert_eq!(
        store.list().unwrap(),
        vec![ChunkReplicaInfo {
            chunk: ChunkId(12),
            version: MapVersion(2)
        }]
    );
    store.create(ChunkId(11), MapVersion(3), CS).unwrap();
    assert_eq!(read_all(store, ChunkId(11)), vec![0u8; CS as usize]);
    assert_eq!(
        store.list().unwrap(),
        vec![
            ChunkReplicaInfo {
                chunk: ChunkId(11),
                version: MapVersion(3)
            },
            ChunkReplicaInfo {
                chunk: ChunkId(12),
                version: MapVersion(2)
            }
        ]
    );
}

fn space_is_reported(store: &dyn ChunkStore) {
    let space = store.space().unwrap();
    assert!(space.total_bytes > 0);
    assert!(space.free_bytes <= space.total_bytes);
}

fn concurrent_writes_to_shared_blocks_do_not_lose_updates(store: &dyn ChunkStore) {
    store.create(ChunkId(13), MapVersion(1), CS).unwrap();
    store.create(ChunkId(14), MapVersion(1), CS).unwrap();
    // Eight writers own interleaved 100-byte stripes, so every block is
    // read-modify-written by several of them at once.
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Readers racing the writers never see a block whose data and CRC
        // disagree.
        let reader = s.spawn(|| {
            let mut buf = vec![0u8; CS as usize];
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                store.read(ChunkId(13), 0, &mut buf).unwrap();
                store.read(ChunkId(14), 50, &mut buf[..B as usize]).unwrap();
            }
        });
        let writers: Vec<_> = (0..8u64)
            .map(|t| {
                s.spawn(move || {
                    let mut offset = t * 100;
                    while offset + 100 <= CS {
                        store
                            .write(ChunkId(13), offset, &[t as u8 + 1; 100])
                            .unwrap();
                        store
                            .write(ChunkId(14), offset, &[t as u8 + 1; 100])
                            .unwrap();
                        offset += 800;
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.join().unwrap();
    });
    for chunk in [13, 14] {
        let all = read_all(store, ChunkId(chunk));
        for (i, &byte) in all.iter().enumerate() {
            let stripe = i as u64 / 100;
            let expected = if (stripe + 1) * 100 <= CS {
                (stripe % 8) as u8 + 1
            } else {
                0
            };
            assert_eq!(byte, expected, "chunk {chunk} byte {i}");
        }
    }
}

fn incoming_replica_invisible_until_committed_then_replaces_the_old_one(store: &dyn ChunkStore) {
    store.create(ChunkId(1), MapVersion(3), CS).unwrap();
    let old = pattern(1, CS as usize);
    store.write(ChunkId(1), 0, &old).unwrap();

    let incoming = store.begin_incoming(ChunkId(1), 2 * CS).unwrap();
    let new = pattern(2, (3 * B + 5) as usize);
    store.write_incoming(incoming, B - 5, &new).unwrap();
    assert_eq!(
        kind(store.write_incoming(incoming, 2 * CS - 1, b"xy")),
        ErrorKind::InvalidArgument
    );
    // The old replica is untouched meanwhile.
    assert_eq!(store.version(ChunkId(1)).unwrap(), MapVersion(3));
    assert_eq!(store.chunk_size(ChunkId(1)).unwrap(), CS);
    assert_eq!(read_all(store, ChunkId(1)), old);
    assert_eq!(store.list().unwrap().len(), 1);

    store.commit_incoming(incoming, MapVersion(2)).unwrap();
    // Replaced whatever its version (the MDS decides), size included.
    assert_eq!(store.version(ChunkId(1)).unwrap(), MapVersion(2));
    assert_eq!(store.chunk_size(ChunkId(1)).unwrap(), 2 * CS);
    let mut expected = vec![0u8; 2 * CS as usize];
    expected[(B - 5) as usize..(B - 5) as usize + new.len()].copy_from_slice(&new);
    assert_eq!(read_all(store, ChunkId(1)), expected);
    assert_eq!(
        store.list().unwrap(),
        vec![ChunkReplicaInfo {
            chunk: ChunkId(1),
            version: MapVersion(2)
        }]
    );
    // The handle is consumed.
    assert_eq!(
        kind(store.write_incoming(incoming, 0, b"x")),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(store.commit_incoming(incoming, MapVersion(2))),
        ErrorKind::NotFound
    );

    // A new chunk, and an aborted copy that leaves nothing behind.
    let fresh = store.begin_incoming(ChunkId(7), CS).unwrap();
    store.write_incoming(fresh, 0, b"hello").unwrap();
    store.commit_incoming(fresh, MapVersion(9)).unwrap();
    let mut buf = [0u8; 5];
    store
        .read_checked(ChunkId(7), Some(MapVersion(9)), 0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"hello");
    let aborted = store.begin_incoming(ChunkId(8), CS).unwrap();
    store.write_incoming(aborted, 0, b"x").unwrap();
    store.abort_incoming(aborted);
    store.abort_incoming(aborted);
    assert_eq!(kind(store.version(ChunkId(8))), ErrorKind::NotFound);
    assert_eq!(
        kind(store.begin_incoming(ChunkId(8), 100)),
        ErrorKind::InvalidArgument
    );
}

fn incoming_crc_entries_and_zeroing_follow_the_writes(store: &dyn ChunkStore) {
    let incoming = store.begin_incoming(ChunkId(3), CS).unwrap();
    let data = pattern(3, (2 * B) as usize);
    store.write_incoming(incoming, 0, &data).unwrap();
    let entries = store.incoming_crc_entries(incoming, 0, 3).unwrap();
    assert_eq!(
        entries,
        vec![
            block_entry(&data[..B as usize]),
            block_entry(&data[B as usize..]),
            0
        ]
    );
    store.zero_incoming(incoming, B, B).unwrap();
    assert_eq!(store.incoming_crc_entries(incoming, 1, 1).unwrap(), vec![0]);
    assert_eq!(
        kind(store.incoming_crc_entries(incoming, CS / B, 1)),
        ErrorKind::InvalidArgument
    );
    store.commit_incoming(incoming, MapVersion(4)).unwrap();
    assert_eq!(
        store
            .crc_entries(ChunkId(3), Some(MapVersion(4)), 0, 2)
            .unwrap(),
        vec![block_entry(&data[..B as usize]), 0]
    );
    assert_eq!(
        kind(store.incoming_crc_entries(incoming, 0, 1)),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(store.zero_incoming(incoming, 0, B)),
        ErrorKind::NotFound
    );
}

fn crc_entries_describe_the_blocks_and_check_the_version(store: &dyn ChunkStore) {
    store.create(ChunkId(5), MapVersion(2), CS).unwrap();
    let data = pattern(5, (B + 100) as usize);
    store.write(ChunkId(5), B, &data).unwrap();
    let mut second = vec![0u8; B as usize];
    second[..100].copy_from_slice(&data[B as usize..]);
    let entries = store
        .crc_entries(ChunkId(5), Some(MapVersion(2)), 0, 3)
        .unwrap();
    assert_eq!(
        entries,
        vec![0, block_entry(&data[..B as usize]), block_entry(&second)]
    );
    // Zeroing whole blocks makes their entries 0 again.
    store.zero(ChunkId(5), B, 2 * B).unwrap();
    assert_eq!(
        store.crc_entries(ChunkId(5), None, 0, 3).unwrap(),
        vec![0, 0, 0]
    );
    assert_eq!(
        kind(store.crc_entries(ChunkId(5), Some(MapVersion(1)), 0, 1)),
        ErrorKind::Stale
    );
    assert_eq!(
        kind(store.crc_entries(ChunkId(5), None, CS / B - 1, 2)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(store.crc_entries(ChunkId(6), None, 0, 1)),
        ErrorKind::NotFound
    );
}

fn bad_replicas_are_out_of_service_until_deleted_or_replaced(store: &dyn ChunkStore) {
    store.create(ChunkId(1), MapVersion(2), CS).unwrap();
    store.create(ChunkId(2), MapVersion(2), CS).unwrap();
    store.write(ChunkId(1), 0, b"data").unwrap();
    assert!(!store.is_bad(ChunkId(1)).unwrap());
    store.mark_bad(ChunkId(1)).unwrap();
    store.mark_bad(ChunkId(1)).unwrap();
    assert!(store.is_bad(ChunkId(1)).unwrap());
    assert_eq!(kind(store.mark_bad(ChunkId(3))), ErrorKind::NotFound);
    assert_eq!(store.list_bad().unwrap(), vec![ChunkId(1)]);
    assert_eq!(
        store
            .list()
            .unwrap()
            .iter()
            .map(|c| c.chunk)
            .collect::<Vec<_>>(),
        [ChunkId(2)]
    );
    let mut buf = [0u8; 4];
    assert_eq!(
        kind(store.read(ChunkId(1), 0, &mut buf)),
        ErrorKind::Corrupt
    );
    assert_eq!(kind(store.write(ChunkId(1), 0, b"x")), ErrorKind::Corrupt);
    assert_eq!(kind(store.version(ChunkId(1))), ErrorKind::Corrupt);
    // A replacement puts a good replica back in service.
    let incoming = store.begin_incoming(ChunkId(1), CS).unwrap();
    store.write_incoming(incoming, 0, b"good").unwrap();
    store.commit_incoming(incoming, MapVersion(3)).unwrap();
    assert!(store.list_bad().unwrap().is_empty());
    store.read(ChunkId(1), 0, &mut buf).unwrap();
    assert_eq!(&buf, b"good");
    // Delete removes a bad replica.
    store.mark_bad(ChunkId(2)).unwrap();
    store.delete(ChunkId(2)).unwrap();
    assert!(store.list_bad().unwrap().is_empty());
    assert_eq!(
        kind(store.read(ChunkId(2), 0, &mut buf)),
        ErrorKind::NotFound
    );
}

fn a_fresh_store_has_nothing_to_verify_and_closes_clean(store: &dyn ChunkStore) {
    assert!(store.unverified().is_empty());
    store.create(ChunkId(1), MapVersion(1), CS).unwrap();
    store.write(ChunkId(1), 0, b"x").unwrap();
    // Verifying a chunk that is not listed (or missing) just succeeds.
    store.verified(ChunkId(1)).unwrap();
    store.verified(ChunkId(99)).unwrap();
    store.close_clean().unwrap();
    assert!(store.unverified().is_empty());
    // Still usable after a clean close.
    store.write(ChunkId(1), 1, b"y").unwrap();
    let mut buf = [0u8; 2];
    store.read(ChunkId(1), 0, &mut buf).unwrap();
    assert_eq!(&buf, b"xy");
    store.flush(ChunkId(1)).unwrap();
    assert_eq!(kind(store.flush(ChunkId(2))), ErrorKind::NotFound);
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod mem_store {
            $(
                #[test]
                fn $case() {
                    super::$case(&super::MemChunkStore::new());
                }
            )*
        }
        mod file_store {
            $(
                #[test]
                fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$case(&super::FileChunkStore::open(dir.path()).unwrap());
                }
            )*
        }
        mod file_store_tiny_cache {
            // One open chunk at a time: every switch closes and reopens files.
            $(
                #[test]
                fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$case(&super::FileChunkStore::open_with_cache(dir.path(), 1).unwrap());
                }
            )*
        }
    };
}

conformance!(
    new_chunk_reads_as_zeros,
    create_is_idempotent_for_the_same_version,
    random_ops_match_a_model,
    unaligned_writes_across_blocks_round_trip,
    sparse_chunk_reads_zeros_around_data,
    zero_makes_ranges_read_as_zeros,
    out_of_range_is_refused_and_changes_nothing,
    missing_chunks_are_not_found,
    versions_only_grow_and_checked_ops_enforce_them,
    delete_removes_and_recreate_starts_empty,
    space_is_reported,
    concurrent_writes_to_shared_blocks_do_not_lose_updates,
    incoming_replica_invisible_until_committed_then_replaces_the_old_one,
    incoming_crc_entries_and_zeroing_follow_the_writes,
    crc_entries_describe_the_blocks_and_check_the_version,
    bad_replicas_are_out_of_service_until_deleted_or_replaced,
    a_fresh_store_has_nothing_to_verify_and_closes_clean,
    a_write_with_crcs_keeps_the_senders_crcs_of_whole_blocks,
);

#[test]
fn crc_encoding_reserves_zero_and_lost() {
    assert_eq!(encode_block_crc(0), 2);
    assert_eq!(encode_block_crc(1), 2);
    assert_eq!(encode_block_crc(2), 2);
    assert_eq!(encode_block_crc(0xdead), 0xdead);
    assert_ne!(block_entry(&[0u8; BLOCK_SIZE as usize]), 0);
    assert_ne!(block_entry(&[0u8; BLOCK_SIZE as usize]), LOST_ENTRY);
    // Older builds stored CRC 0 as 1.
    assert_eq!(super::upgrade_entry(1), 2);
    assert_eq!(super::upgrade_entry(0), 0);
    assert_eq!(super::upgrade_entry(0xdead), 0xdead);
    // CRC-64/XZ check value.
    assert_eq!(crc64(b"123456789"), 0x995d_c9bb_df19_39fa);
}

// ---- memory store fault injection ----

#[test]
fn mem_store_detects_corruption_and_refuses_rmw_of_a_corrupt_block() {
    let store = MemChunkStore::new();
    store.create(ChunkId(1), MapVersion(1), CS).unwrap();
    let data = pattern(6, (2 * B) as usize);
    store.write(ChunkId(1), 0, &data).unwrap();
    store.corrupt(ChunkId(1), B + 7).unwrap();
    let mut buf = vec![0u8; 10];
    store.read(ChunkId(1), 0, &mut buf).unwrap();
    let e = store.read(ChunkId(1), B, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(
        e.message().contains("0x1") && e.message().contains("block 1"),
        "{e}"
    );
    assert_eq!(
        kind(store.write(ChunkId(1), B + 100, b"x")),
        ErrorKind::Corrupt
    );
    // A whole-block overwrite needs no old data and heals the block.
    store.write(ChunkId(1), B, &data[..B as usize]).unwrap();
    store.read(ChunkId(1), B, &mut buf).unwrap();
    assert_eq!(
        kind(store.corrupt(ChunkId(1), 5 * B)),
        ErrorKind::InvalidArgument
    );
}

/// `repair_block` on both stores: writes a bad block only, zeroes with
/// `None`, checks the version and the length.
#[test]
fn repair_block_rewrites_only_a_block_that_fails_its_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileChunkStore::open(dir.path()).unwrap();
    let mem = MemChunkStore::new();
    let data = pattern(41, (3 * B) as usize);
    let stores: [(&dyn ChunkStore, &dyn Fn()); 2] = [
        (&mem, &|| mem.corrupt(ChunkId(1), B + 9).unwrap()),
        (&file, &|| {
            use std::os::unix::fs::FileExt;
            file.checkpoint().unwrap();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(file.chunk_path(ChunkId(1)))
                .unwrap();
            let at = FileChunkStore::data_file_offset(CS, B + 9);
            f.write_all_at(&[data[(B + 9) as usize] ^ 0x10], at)
                .unwrap();
        }),
    ];
    for (store, corrupt) in stores {
        store.create(ChunkId(1), MapVersion(4), CS).unwrap();
        store.write(ChunkId(1), 0, &data).unwrap();
        store.flush(ChunkId(1)).unwrap();
        // A good block is left alone.
        assert!(!store
            .repair_block(ChunkId(1), MapVersion(4), 0, Some(&[9u8; B as usize]))
            .unwrap());
        corrupt();
        let mut buf = vec![0u8; B as usize];
        assert_eq!(
            kind(store.read(ChunkId(1), B, &mut buf)),
            ErrorKind::Corrupt
        );
        // Wrong version, wrong length: refused, nothing written.
        let good = &data[B as usize..(2 * B) as usize];
        assert_eq!(
            kind(store.repair_block(ChunkId(1), MapVersion(3), 1, Some(good))),
            ErrorKind::Stale
        );
        assert_eq!(
            kind(store.repair_block(ChunkId(1), MapVersion(4), 1, Some(&good[..100]))),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(store.read(ChunkId(1), B, &mut buf)),
            ErrorKind::Corrupt
        );
        assert!(store
            .repair_block(ChunkId(1), MapVersion(4), 1, Some(good))
            .unwrap());
        assert_eq!(read_all(store, ChunkId(1))[..(3 * B) as usize], data[..]);
        // A bad block the source never wrote is zeroed.
        corrupt();
        assert!(store
            .repair_block(ChunkId(1), MapVersion(4), 1, None)
            .unwrap());
        assert_eq!(store.crc_entries(ChunkId(1), None, 1, 1).unwrap(), [0]);
        store.read(ChunkId(1), B, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
    }
}

#[test]
fn mem_store_runs_out_of_space_without_changing_anything() {
    let store = MemChunkStore::new();
    store.set_capacity(3 * B);
    store.create(ChunkId(1), MapVersion(1), CS).unwrap();
    store
        .write(ChunkId(1), 0, &pattern(7, (2 * B) as usize))
        .unwrap();
    assert_eq!(store.space().unwrap().free_bytes, B);
    assert_eq!(
        kind(store.write(ChunkId(1), 2 * B, &[1u8; 2 * B as usize])),
        ErrorKind::NoSpace
    );
    assert_eq!(
        &read_all(&store, ChunkId(1))[(2 * B) as usize..],
        &vec![0u8; (CS - 2 * B) as usize][..]
    );
    store.zero(ChunkId(1), 0, B).unwrap();
    assert_eq!(store.space().unwrap().free_bytes, 2 * B);
    store.delete(ChunkId(1)).unwrap();
    assert_eq!(store.space().unwrap().free_bytes, 3 * B);
}

// ---- file store: persistence and on-disk format ----

mod file_format {
    use std::os::unix::fs::FileExt;

    use super::super::file::test_support::crc_entry_offset;
    use super::*;

    /// The chunk's file, once the journal is applied to it and trimmed.
    fn open_file(store: &FileChunkStore, chunk: ChunkId) -> std::fs::File {
        store.checkpoint().unwrap();
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(store.chunk_path(chunk))
            .unwrap()
    }

    fn flip(store: &FileChunkStore, chunk: ChunkId, file_offset: u64) {
        let f = open_file(store, chunk);
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, file_offset).unwrap();
        b[0] ^= 0x01;
        f.write_all_at(&b, file_offset).unwrap();
    }

    #[test]
    fn data_and_versions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(8, (3 * B + 5) as usize);
        {
            let store = FileChunkStore::open(dir.path()).unwrap();
            store.create(ChunkId(0xabc), MapVersion(1), CS).unwrap();
            store.create(ChunkId(0xdef), MapVersion(2), 2 * CS).unwrap();
            store.write(ChunkId(0xabc), 77, &data).unwrap();
            store.zero(ChunkId(0xabc), 100, 10).unwrap();
            store.set_version(ChunkId(0xabc), MapVersion(9)).unwrap();
            store.flush(ChunkId(0xabc)).unwrap();
        }
        let store = FileChunkStore::open(dir.path()).unwrap();
        assert!(store
            .chunk_path(ChunkId(0xabc))
            .ends_with("chunks/0000000000000abc.chunk"));
        assert_eq!(store.version(ChunkId(0xabc)).unwrap(), MapVersion(9));
        assert_eq!(store.chunk_size(ChunkId(0xdef)).unwrap(), 2 * CS);
        let mut expected = data.clone();
        expected[23..33].fill(0);
        let mut buf = vec![0u8; data.len()];
        store.read(ChunkId(0xabc), 77, &mut buf).unwrap();
        assert_eq!(buf, expected);
        assert_eq!(
            store.list().unwrap(),
            vec![
                ChunkReplicaInfo {
                    chunk: ChunkId(0xabc),
                    version: MapVersion(9)
                },
                ChunkReplicaInfo {
                    chunk: ChunkId(0xdef),
                    version: MapVersion(2)
                }
            ]
        );
    }

    #[test]
    fn crc_table_entries_follow_the_documented_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.create(ChunkId(1), MapVersion(1), CS).unwrap();
        let block = pattern(9, B as usize);
        store.write(ChunkId(1), 2 * B, &block).unwrap();
        store.write(ChunkId(1), 3 * B, &block).unwrap();
        store.zero(ChunkId(1), 3 * B, B).unwrap();
        let f = open_file(&store, ChunkId(1));
        let entry = |b: u64| {
            let mut raw = [0u8; 8];
            f.read_exact_at(&mut raw, crc_entry_offset(b)).unwrap();
            u64::from_le_bytes(raw)
        };
        // Format 2: 1 reads as zeros, 0 is a lost entry.
        assert_eq!(entry(0), 1, "never written");
        assert_eq!(entry(2), encode_block_crc(crc64(&block)));
        assert_eq!(entry(3), 1, "zeroed whole block");
        assert_eq!(entry(CS / B - 1), 1, "the last block");
        // In memory and on the wire, 0 reads as zeros.
        assert_eq!(
            store.crc_entries(ChunkId(1), None, 0, 4).unwrap(),
            vec![0, 0, encode_block_crc(crc64(&block)), 0]
        );
        let mut on_disk = vec![0u8; B as usize];
        f.read_exact_at(&mut on_disk, FileChunkStore::data_file_offset(CS, 2 * B))
            .unwrap();
        assert_eq!(on_disk, block);
    }

    #[test]
    fn a_flipped_data_byte_is_detected_and_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(10, (4 * B) as usize);
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.create(ChunkId(0x77), MapVersion(1), CS).unwrap();
        store.write(ChunkId(0x77), 0, &data).unwrap();
        store.flush(ChunkId(0x77)).unwrap();
        flip(
            &store,
            ChunkId(0x77),
            FileChunkStore::data_file_offset(CS, 2 * B + 123),
        );

        // Detected by the running store (the page cache holds the flip) and
        // after a restart.
        for store in [store, FileChunkStore::open(dir.path()).unwrap()] {
            let mut buf = vec![0u8; (4 * B) as usize];
            let e = store.read(ChunkId(0x77), 0, &mut buf).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt);
            let path = store.chunk_path(ChunkId(0x77)).display().to_string();
            assert!(e.message().contains("0x77"), "{e}");
            assert!(e.message().contains("block 2"), "{e}");
            assert!(e.message().contains(&path), "{e}");
            // A partial read of the bad block fails too; other blocks are fine.
            let mut small = [0u8; 3];
            assert_eq!(
                kind(store.read(ChunkId(0x77), 2 * B + 4000, &mut small)),
                ErrorKind::Corrupt
            );
            store.read(ChunkId(0x77), 3 * B, &mut small).unwrap();
            assert_eq!(&small, &data[(3 * B) as usize..(3 * B + 3) as usize]);

            // A partial write would have to trust the bad block: refused, nothing changed.
            let f = open_file(&store, ChunkId(0x77));
            let mut entry_before = [0u8; 8];
            f.read_exact_at(&mut entry_before, crc_entry_offset(2))
                .unwrap();
            assert_eq!(
                kind(store.write(ChunkId(0x77), 2 * B + 10, b"new")),
                ErrorKind::Corrupt
            );
            assert_eq!(
                kind(store.zero(ChunkId(0x77), 2 * B + 10, 3)),
                ErrorKind::Corrupt
            );
            let mut entry_after = [0u8; 8];
            f.read_exact_at(&mut entry_after, crc_entry_offset(2))
                .unwrap();
            assert_eq!(entry_before, entry_after);
        }

        // Overwriting the whole block needs no old data and heals it.
        let store = FileChunkStore::open(dir.path()).unwrap();
        store
            .write(
                ChunkId(0x77),
                2 * B,
                &data[(2 * B) as usize..(3 * B) as usize],
            )
            .unwrap();
        assert_eq!(
            read_all(&store, ChunkId(0x77))[..(4 * B) as usize],
            data[..]
        );
    }

    #[test]
    fn a_torn_write_reads_as_corrupt() {
        // Data on disk without its CRC entry, as after a crash between the two.
        let dir = tempfile::tempdir().unwrap();
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.create(ChunkId(5), MapVersion(1), CS).unwrap();
        store
            .write(ChunkId(5), 0, &pattern(11, B as usize))
            .unwrap();
        drop(store);
        let store = FileChunkStore::open(dir.path()).unwrap();
        open_file(&store, ChunkId(5))
            .write_all_at(&pattern(12, 512), FileChunkStore::data_file_offset(CS, 0))
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            kind(store.read(ChunkId(5), 1024, &mut buf)),
            ErrorKind::Corrupt
        );
    }

    /// The chunk file format, byte for byte: header, CRC table and slot
    /// map of a 128 KiB chunk with a written block, a block written with
    /// zeros, a zeroed block, never written ones, and blocks 16..32 written
    /// twice by big writes (the second went to data slot 1). A change here
    /// is a format change (bump `FORMAT_VERSION`, keep reading the old one).
    #[test]
    fn chunk_format_3_matches_the_golden_file() {
        const SIZE: u64 = 2 * CS;
        let dir = tempfile::tempdir().unwrap();
        let store = FileChunkStore::open(dir.path()).unwrap();
        let chunk = 0x0123_4567_89ab_cdef;
        store.create(ChunkId(chunk), MapVersion(3), SIZE).unwrap();
        let data: Vec<u8> = (0..B as u32).map(|i| (i % 251) as u8).collect();
        store.write(ChunkId(chunk), 0, &data).unwrap();
        store
            .write(ChunkId(chunk), B, &vec![0u8; B as usize])
            .unwrap();
        store.write(ChunkId(chunk), 2 * B, &data).unwrap();
        store.zero(ChunkId(chunk), 2 * B, B).unwrap();
        let big: Vec<u8> = (0..16 * B as u32).map(|i| (i % 241) as u8).collect();
        store.write(ChunkId(chunk), 16 * B, &big).unwrap();
        // Trimmed: the next big write over them moves them.
        store.checkpoint().unwrap();
        let big: Vec<u8> = (0..16 * B as u32).map(|i| (i % 239) as u8).collect();
        store.write(ChunkId(chunk), 16 * B, &big).unwrap();
        store.set_version(ChunkId(chunk), MapVersion(7)).unwrap();
        store.flush(ChunkId(chunk)).unwrap();
        let f = open_file(&store, ChunkId(chunk));
        let mut head = vec![0u8; 2 * B as usize];
        f.read_exact_at(&mut head, 0).unwrap();
        let mut text = String::new();
        text.push_str("# header (4096 bytes)\n");
        text.push_str(&hex_lines(&head[..B as usize]));
        text.push_str("# CRC table (32 entries, one page)\n");
        text.push_str(&hex_lines(&head[B as usize..]));
        let map_at = FileChunkStore::data_file_offset(SIZE, SIZE);
        let mut map = vec![0u8; B as usize];
        f.read_exact_at(&mut map, map_at).unwrap();
        text.push_str(&format!(
            "# slot map at {map_at} (one bit per block, one page)\n"
        ));
        text.push_str(&hex_lines(&map));
        let mut block = vec![0u8; B as usize];
        f.read_exact_at(&mut block, FileChunkStore::data_file_offset(SIZE, 0))
            .unwrap();
        text.push_str(&format!("# slot 0 block 0 crc64 {:016x}\n", crc64(&block)));
        let slot1_at = map_at + B;
        f.read_exact_at(&mut block, slot1_at + 16 * B).unwrap();
        text.push_str(&format!(
            "# slot 1 at {slot1_at}: block 16 crc64 {:016x}\n",
            crc64(&block)
        ));
        assert_eq!(
            store.block_file_offset(ChunkId(chunk), 16 * B + 5).unwrap(),
            slot1_at + 16 * B + 5
        );
        let len = f.metadata().unwrap().len();
        text.push_str(&format!("# file length {len}\n"));
        let golden = include_str!("chunk_v3.golden");
        if std::env::var_os("PSTORAGE_WRITE_GOLDEN").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/src/chunk/chunk_v3.golden"),
                &text,
            )
            .unwrap();
        }
        assert_eq!(text, golden);
    }

    /// A chunk file of format 2 (one data slot), built from its golden
    /// file, is read, written (big writes too, through the journal) and
    /// kept in its format.
    #[test]
    fn a_format_2_chunk_file_is_read_and_kept_in_its_format() {
        let golden = include_str!("chunk_v2.golden");
        let chunk: ChunkId = ChunkId(0x0123_4567_89ab_cdef);
        let dir = tempfile::tempdir().unwrap();
        {
            FileChunkStore::open(dir.path()).unwrap();
        }
        let path = dir.path().join("chunks/0123456789abcdef.chunk");
        let header = crate::chunk::journal::tests::golden_bytes(golden, "# header", B as usize);
        let table = crate::chunk::journal::tests::golden_bytes(golden, "# CRC table", B as usize);
        let data: Vec<u8> = (0..B as u32).map(|i| (i % 251) as u8).collect();
        assert!(golden.contains(&format!("# data block 0 crc64 {:016x}", crc64(&data))));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(FileChunkStore::data_file_offset(CS, CS)).unwrap();
        f.write_all_at(&header, 0).unwrap();
        f.write_all_at(&table, B).unwrap();
        f.write_all_at(&data, FileChunkStore::data_file_offset(CS, 0))
            .unwrap();
        drop(f);

        let store = FileChunkStore::open(dir.path()).unwrap();
        assert_eq!(store.version(chunk).unwrap(), MapVersion(7));
        let all = read_all(&store, chunk);
        assert_eq!(&all[..B as usize], &data[..]);
        assert!(all[B as usize..].iter().all(|b| *b == 0));
        let entries = store.crc_entries(chunk, None, 0, 16).unwrap();
        assert_eq!(entries[0], block_entry(&data));
        assert_eq!(entries[1], block_entry(&[0u8; B as usize]));
        assert!(entries[2..].iter().all(|e| *e == 0));
        // A big write over blocks that hold data: no second slot here.
        let big = pattern(33, CS as usize);
        store.write(chunk, 0, &big).unwrap();
        store.flush(chunk).unwrap();
        let f = open_file(&store, chunk);
        let mut on_disk = vec![0u8; CS as usize];
        f.read_exact_at(&mut on_disk, FileChunkStore::data_file_offset(CS, 0))
            .unwrap();
        assert!(on_disk == big, "written where it was");
        let mut format = [0u8; 4];
        f.read_exact_at(&mut format, 8).unwrap();
        assert_eq!(u32::from_le_bytes(format), 2, "still format 2");
        assert_eq!(
            f.metadata().unwrap().len(),
            FileChunkStore::data_file_offset(CS, CS)
        );
        drop(store);
        let store = FileChunkStore::open(dir.path()).unwrap();
        assert!(read_all(&store, chunk) == big);
    }

    /// A chunk file of format 1 (written by older builds): `0` in its CRC
    /// table reads as zeros, `1` is a block whose CRC-64 is 0. It is read,
    /// written and versioned in its own format.
    #[test]
    fn a_format_1_chunk_file_is_read_and_kept_in_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let chunk: ChunkId = ChunkId(0x42);
        let data = pattern(31, B as usize);
        {
            // Creates the store's directories.
            FileChunkStore::open(dir.path()).unwrap();
        }
        let path = dir.path().join("chunks/0000000000000042.chunk");
        let mut header = [0u8; 4096];
        header[0..8].copy_from_slice(b"PSTCHUNK");
        header[8..12].copy_from_slice(&1u32.to_le_bytes());
        header[12..16].copy_from_slice(&4096u32.to_le_bytes());
        header[16..24].copy_from_slice(&chunk.0.to_le_bytes());
        header[24..32].copy_from_slice(&5u64.to_le_bytes());
        header[32..40].copy_from_slice(&CS.to_le_bytes());
        let crc = crc64(&header);
        header[40..48].copy_from_slice(&crc.to_le_bytes());
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(FileChunkStore::data_file_offset(CS, CS)).unwrap();
        f.write_all_at(&header, 0).unwrap();
        f.write_all_at(&crc64(&data).to_le_bytes(), crc_entry_offset(0))
            .unwrap();
        f.write_all_at(&data, FileChunkStore::data_file_offset(CS, 0))
            .unwrap();
        // Block 2: entry 0 (reads as zeros) over stale bytes.
        f.write_all_at(
            &pattern(32, B as usize),
            FileChunkStore::data_file_offset(CS, 2 * B),
        )
        .unwrap();
        drop(f);

        let store = FileChunkStore::open(dir.path()).unwrap();
        assert_eq!(store.version(chunk).unwrap(), MapVersion(5));
        let all = read_all(&store, chunk);
        assert_eq!(&all[..B as usize], &data[..]);
        assert!(all[B as usize..].iter().all(|b| *b == 0));
        assert_eq!(
            store.crc_entries(chunk, None, 0, 3).unwrap(),
            vec![block_entry(&data), 0, 0]
        );
        store.write(chunk, 3 * B, &data).unwrap();
        store.zero(chunk, 0, B).unwrap();
        store.set_version(chunk, MapVersion(6)).unwrap();
        store.flush(chunk).unwrap();
        let f = open_file(&store, chunk);
        let raw = |b: u64| {
            let mut raw = [0u8; 8];
            f.read_exact_at(&mut raw, crc_entry_offset(b)).unwrap();
            u64::from_le_bytes(raw)
        };
        assert_eq!((raw(0), raw(2), raw(3)), (0, 0, block_entry(&data)));
        let mut format = [0u8; 4];
        f.read_exact_at(&mut format, 8).unwrap();
        assert_eq!(u32::from_le_bytes(format), 1, "still format 1");
        drop(store);
        let store = FileChunkStore::open(dir.path()).unwrap();
        assert_eq!(store.version(chunk).unwrap(), MapVersion(6));
        let all = read_all(&store, chunk);
        assert!(all[..3 * B as usize].iter().all(|b| *b == 0));
        assert_eq!(&all[3 * B as usize..4 * B as usize], &data[..]);
    }

    /// A sector of the CRC table zeroed behind the store's back (a disk
    /// that lost it): its 64 blocks read as `Corrupt`, never as zeros, and
    /// their entries say lost; rewriting a whole block heals it.
    #[test]
    fn a_zeroed_crc_table_sector_reads_as_corrupt_not_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20; // 256 blocks: a table of 4 sectors
        let data = pattern(33, size as usize);
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.create(ChunkId(9), MapVersion(1), size).unwrap();
        store
            .write(ChunkId(9), 0, &data[..(200 * B) as usize])
            .unwrap();
        store.flush(ChunkId(9)).unwrap();
        let f = open_file(&store, ChunkId(9));
        // Sector 1 of the table: the entries of blocks 64..128, written
        // ones, and sector 3 (blocks 192..256): written and never written.
        f.write_all_at(&[0u8; 512], crc_entry_offset(64)).unwrap();
        f.write_all_at(&[0u8; 512], crc_entry_offset(192)).unwrap();
        drop(f);
        drop(store);
        let store = FileChunkStore::open(dir.path()).unwrap();
        for block in [64, 100, 127, 192, 199, 200, 255] {
            let mut buf = [0u8; 16];
            let e = store.read(ChunkId(9), block * B + 8, &mut buf).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "block {block}");
            assert!(e.message().contains("is lost"), "{e}");
        }
        let entries = store.crc_entries(ChunkId(9), None, 0, 256).unwrap();
        for (b, e) in entries.iter().enumerate() {
            let lost = (64..128).contains(&b) || b >= 192;
            assert_eq!(*e == LOST_ENTRY, lost, "block {b}");
        }
        let mut buf = vec![0u8; (64 * B) as usize];
        store.read(ChunkId(9), 0, &mut buf).unwrap();
        assert_eq!(buf, &data[..(64 * B) as usize]);
        // A partial write cannot trust the block; a whole one heals it.
        assert_eq!(
            kind(store.write(ChunkId(9), 64 * B + 1, b"x")),
            ErrorKind::Corrupt
        );
        store
            .write(
                ChunkId(9),
                64 * B,
                &data[(64 * B) as usize..(65 * B) as usize],
            )
            .unwrap();
        store.zero(ChunkId(9), 255 * B, B).unwrap();
        let mut buf = vec![0u8; B as usize];
        store.read(ChunkId(9), 64 * B, &mut buf).unwrap();
        assert_eq!(buf, &data[(64 * B) as usize..(65 * B) as usize]);
        store.read(ChunkId(9), 255 * B, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
    }

    #[test]
    fn header_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileChunkStore::open(dir.path()).unwrap();
        for chunk in 1..=4 {
            store.create(ChunkId(chunk), MapVersion(1), CS).unwrap();
        }
        drop(store);
        let store = FileChunkStore::open(dir.path()).unwrap();
        flip(&store, ChunkId(1), 26); // the map version: caught by the header CRC
        flip(&store, ChunkId(2), 0); // the magic
        flip(&store, ChunkId(3), 2000); // a reserved byte, still covered by the CRC

        let e = store.version(ChunkId(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(
            e.message().contains("header") && e.message().contains("CRC"),
            "{e}"
        );
        let e = store.version(ChunkId(2)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.message().contains("magic"), "{e}");
        assert_eq!(kind(store.version(ChunkId(3))), ErrorKind::Corrupt);
        let mut buf = [0u8; 1];
        assert_eq!(
            kind(store.read(ChunkId(1), 0, &mut buf)),
            ErrorKind::Corrupt
        );
        // Unreadable replicas are not reported to the MDS.
        assert_eq!(
            store.list().unwrap(),
            vec![ChunkReplicaInfo {
                chunk: ChunkId(4),
                version: MapVersion(1)
            }]
        );
        // Nor can they be silently replaced.
        assert_eq!(
            kind(store.create(ChunkId(1), MapVersion(1), CS)),
            ErrorKind::Corrupt
        );
    }

    #[test]
    fn a_newer_format_is_refused_with_an_upgrade_hint() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.create(ChunkId(1), MapVersion(1), CS).unwrap();
        drop(store);
        let store = FileChunkStore::open(dir.path()).unwrap();
        open_file(&store, ChunkId(1))
            .write_all_at(&(FORMAT_VERSION + 1).to_le_bytes(), 8)
            .unwrap();
        let e = store.version(ChunkId(1)).unwrap_err();
        assert!(e.message().contains("upgrade"), "{e}");
        assert_ne!(e.kind(), ErrorKind::NotFound);
        // Refusing to list keeps the MDS from declaring the replica lost.
        assert!(store.list().is_err());
    }

    #[test]
    fn a_truncated_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.create(ChunkId(1), MapVersion(1), CS).unwrap();
        drop(store);
        let store = FileChunkStore::open(dir.path()).unwrap();
        open_file(&store, ChunkId(1)).set_len(4096 + 100).unwrap();
        let e = store.version(ChunkId(1)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.message().contains("truncated"), "{e}");
    }

    #[test]
    fn leftovers_of_interrupted_creates_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileChunkStore::open(dir.path()).unwrap();
        store.create(ChunkId(1), MapVersion(1), CS).unwrap();
        drop(store);
        let leftover = dir.path().join("chunks/0000000000000002.chunk.tmp.0");
        std::fs::write(&leftover, b"half a header").unwrap();
        let store = FileChunkStore::open(dir.path()).unwrap();
        assert!(!leftover.exists());
        assert_eq!(
            store.list().unwrap(),
            vec![ChunkReplicaInfo {
                chunk: ChunkId(1),
                version: MapVersion(1)
            }]
        );
    }
}

// ---- chunk servers chained over the in-memory network ----

mod chain {
    use bytes::Bytes;

    use super::*;
    use crate::traits::{ChunkControl, ChunkService, ReplicaError, WritePayload, WriteRequest};
    use crate::types::{CsId, RegisterReply, Replica, MAX_IO_SIZE};
    use memory::MemNetwork;

    const CHUNK: ChunkId = ChunkId(0x1f2);

    struct Cluster {
        net: Arc<MemNetwork>,
        servers: Vec<Arc<ChunkServer>>,
    }

    impl Cluster {
        /// Three serving chunk servers (ids 1..=3) holding `CHUNK` at version 1.
        async fn new(stores: Vec<Arc<dyn ChunkStore>>) -> Cluster {
            let net = MemNetwork::new();
            let mut servers = Vec::new();
            for (i, store) in stores.into_iter().enumerate() {
                let id = CsId(i as u32) + 1;
                let server = net.add_server(id, &addr(id), store);
                server.create_chunk(CHUNK, MapVersion(1), CS).await.unwrap();
                servers.push(server);
            }
            Cluster { net, servers }
        }

        async fn mem() -> Cluster {
            Cluster::new(
                (0..3)
                    .map(|_| Arc::new(MemChunkStore::new()) as _)
                    .collect(),
            )
            .await
        }

        fn replica(&self, i: usize) -> Replica {
            Replica {
                cs: self.servers[i].id(),
                addr: addr(self.servers[i].id()),
            }
        }

        /// A write sent to the head with the other two as its chain.
        async fn write(
            &self,
            version: MapVersion,
            offset: u64,
            payload: WritePayload,
        ) -> Result<(), ReplicaError> {
            self.servers[0]
                .write(WriteRequest::new(
                    CHUNK,
                    version,
                    offset,
                    payload,
                    vec![self.replica(1), self.replica(2)],
                ))
                .await
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            self.net.clear();
        }
    }

    fn addr(id: CsId) -> String {
        format!("10.0.0.{id}:9100")
    }

    #[tokio::test]
    async fn a_write_reaches_every_replica() {
        let c = Cluster::mem().await;
        let data = Bytes::from(pattern(20, 3 * B as usize + 11));
        c.write(MapVersion(1), 1000, WritePayload::Data(data.clone()))
            .await
            .unwrap();
        c.write(MapVersion(1), 2000, WritePayload::Zeros(100))
            .await
            .unwrap();
        let mut expected = data.to_vec();
        expected[1000..1100].fill(0);
        for s in &c.servers {
            let got = s
                .read_verified(CHUNK, MapVersion(1), 1000, data.len() as u64)
                .await
                .unwrap();
            assert_eq!(&got[..], &expected[..], "replica on CS {}", s.id());
            s.flush(CHUNK, MapVersion(1)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn large_writes_and_reads_run_off_the_async_task() {
        let stores: Vec<Arc<dyn ChunkStore>> = (0..3)
            .map(|_| Arc::new(MemChunkStore::new()) as _)
            .collect();
        let c = Cluster::new(stores).await;
        let data = Bytes::from(pattern(21, 48 << 10));
        // 48 KiB inline, then a whole-chunk write and read (> 64 KiB).
        c.write(MapVersion(1), 0, WritePayload::Data(data.clone()))
            .await
            .unwrap();
        let whole = Bytes::from(pattern(22, CS as usize));
        c.write(MapVersion(1), 0, WritePayload::Data(whole.clone()))
            .await
            .unwrap();
        c.write(MapVersion(1), 0, WritePayload::Zeros(CS))
            .await
            .unwrap();
        c.write(MapVersion(1), 0, WritePayload::Data(whole.clone()))
            .await
            .unwrap();
        for s in &c.servers {
            assert_eq!(
                s.read_verified(CHUNK, MapVersion(1), 0, CS).await.unwrap(),
                whole
            );
        }

        // Zeroing more than MAX_IO_SIZE is one request (no bytes travel),
        // but data beyond it is refused before anything is written.
        let big: ChunkId = ChunkId(0x99);
        let big_size = 2 * MAX_IO_SIZE;
        for s in &c.servers {
            s.create_chunk(big, MapVersion(1), big_size).await.unwrap();
        }
        let request = |payload| {
            WriteRequest::new(
                big,
                MapVersion(1),
                0,
                payload,
                vec![c.replica(1), c.replica(2)],
            )
        };
        c.servers[0]
            .write(request(WritePayload::Data(Bytes::from_static(b"tail"))))
            .await
            .unwrap();
        c.servers[0]
            .write(request(WritePayload::Zeros(big_size)))
            .await
            .unwrap();
        let e = c.servers[0]
            .write(request(WritePayload::Data(Bytes::from(vec![
                1u8;
                MAX_IO_SIZE
                    as usize
                    + 1
            ]))))
            .await
            .unwrap_err();
        assert_eq!(
            (e.failed_cs, e.error.kind()),
            (None, ErrorKind::InvalidArgument)
        );
        for s in &c.servers {
            assert_eq!(
                s.read_verified(big, MapVersion(1), 0, 4).await.unwrap()[..],
                [0, 0, 0, 0]
            );
        }
    }

    #[tokio::test]
    async fn a_stale_middle_replica_is_named_and_the_head_is_named_by_none() {
        let c = Cluster::mem().await;
        ChunkControl::set_version(c.servers[1].as_ref(), CHUNK, MapVersion(2))
            .await
            .unwrap();
        let e = c
            .write(
                MapVersion(1),
                0,
                WritePayload::Data(Bytes::from_static(b"x")),
            )
            .await
            .unwrap_err();
        assert_eq!(e.failed_cs, Some(CsId(2)));
        assert_eq!(e.error.kind(), ErrorKind::Stale);
        assert!(
            e.error.message().contains("version 1") && e.error.message().contains("version 2"),
            "{e}"
        );
        assert_eq!(e.failed_replica(CsId(1)), CsId(2));
        // The refusing replica did nothing.
        assert_eq!(
            c.servers[1]
                .read_verified(CHUNK, MapVersion(2), 0, 1)
                .await
                .unwrap()[..],
            [0]
        );

        // Now the head is behind the map the client has.
        for s in &c.servers[1..] {
            ChunkControl::set_version(s.as_ref(), CHUNK, MapVersion(3))
                .await
                .unwrap();
        }
        ChunkControl::set_version(c.servers[0].as_ref(), CHUNK, MapVersion(2))
            .await
            .unwrap();
        let e = c
            .write(
                MapVersion(3),
                0,
                WritePayload::Data(Bytes::from_static(b"y")),
            )
            .await
            .unwrap_err();
        assert_eq!(e.failed_cs, None);
        assert_eq!(e.failed_replica(CsId(1)), CsId(1));
        assert_eq!(e.error.kind(), ErrorKind::Stale);

        let e = c.servers[0]
            .read_verified(CHUNK, MapVersion(1), 0, 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Stale);
        assert_eq!(
            ChunkService::flush(c.servers[0].as_ref(), CHUNK, MapVersion(3))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Stale
        );
    }

    #[tokio::test]
    async fn an_unreachable_tail_is_named() {
        let c = Cluster::mem().await;
        c.net.set_reachable(&addr(CsId(3)), false);
        let e = c
            .write(
                MapVersion(1),
                0,
                WritePayload::Data(Bytes::from_static(b"x")),
            )
            .await
            .unwrap_err();
        assert_eq!(e.failed_cs, Some(CsId(3)));
        assert_eq!(e.error.kind(), ErrorKind::Unavailable);
        assert!(e.error.message().contains(&addr(CsId(3))), "{e}");

        // A removed (dead) middle server is named the same way.
        c.net.set_reachable(&addr(CsId(3)), true);
        c.write(
            MapVersion(1),
            0,
            WritePayload::Data(Bytes::from_static(b"x")),
        )
        .await
        .unwrap();
        c.net.remove(&addr(CsId(2)));
        let e = c
            .write(
                MapVersion(1),
                0,
                WritePayload::Data(Bytes::from_static(b"z")),
            )
            .await
            .unwrap_err();
        assert_eq!(e.failed_cs, Some(CsId(2)));
        assert_eq!(e.error.kind(), ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn a_local_failure_wins_over_a_downstream_one() {
        let c = Cluster::mem().await;
        c.net.set_reachable(&addr(CsId(2)), false);
        let e = c
            .write(
                MapVersion(1),
                CS,
                WritePayload::Data(Bytes::from_static(b"x")),
            )
            .await
            .unwrap_err();
        assert_eq!(e.failed_cs, None);
        assert_eq!(e.error.kind(), ErrorKind::InvalidArgument);
        assert!(e.error.message().contains("chunk server 1"), "{e}");
    }

    #[tokio::test]
    async fn the_data_path_is_closed_until_registration() {
        let c = Cluster::mem().await;
        let s = &c.servers[0];
        s.set_serving(false);
        let e = s
            .read_verified(CHUNK, MapVersion(1), 0, 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(
            e.message()
                .contains("chunk server 1 has not registered with the MDS yet"),
            "{e}"
        );
        let e = c
            .write(
                MapVersion(1),
                0,
                WritePayload::Data(Bytes::from_static(b"x")),
            )
            .await
            .unwrap_err();
        assert_eq!(
            (e.failed_cs, e.error.kind()),
            (None, ErrorKind::Unavailable)
        );
        assert_eq!(
            ChunkService::flush(s.as_ref(), CHUNK, MapVersion(1))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Unavailable
        );
        // A closed middle server is named by the head.
        s.set_serving(true);
        c.servers[1].set_serving(false);
        let e = c
            .write(
                MapVersion(1),
                0,
                WritePayload::Data(Bytes::from_static(b"x")),
            )
            .await
            .unwrap_err();
        assert_eq!(
            (e.failed_cs, e.error.kind()),
            (Some(CsId(2)), ErrorKind::Unavailable)
        );

        // Control works regardless.
        let closed = &c.servers[1];
        closed
            .create_chunk(ChunkId(99), MapVersion(4), CS)
            .await
            .unwrap();
        assert_eq!(closed.list_chunks().await.unwrap().len(), 2);

        // Registration reports the replicas; the reply's deletions apply.
        let reg = closed.registration(&addr(CsId(2))).await.unwrap();
        assert_eq!(reg.id, CsId(2));
        assert_eq!(reg.addr, addr(CsId(2)));
        assert!(reg.space.total_bytes > 0);
        assert_eq!(
            reg.chunks,
            vec![
                ChunkReplicaInfo {
                    chunk: ChunkId(99),
                    version: MapVersion(4)
                },
                ChunkReplicaInfo {
                    chunk: CHUNK,
                    version: MapVersion(1)
                }
            ]
        );
        closed
            .apply_register_reply(&RegisterReply {
                delete: vec![ChunkId(99)],
                stale: vec![],
                heartbeat_interval_ms: 1000,
            })
            .await
            .unwrap();
        closed.set_serving(true);
        // The write refused while it was closed never reached it.
        assert_eq!(
            closed
                .read_verified(CHUNK, MapVersion(1), 0, 1)
                .await
                .unwrap()[..],
            [0]
        );
        c.write(
            MapVersion(1),
            0,
            WritePayload::Data(Bytes::from_static(b"x")),
        )
        .await
        .unwrap();
        assert_eq!(
            closed
                .read_verified(CHUNK, MapVersion(1), 0, 1)
                .await
                .unwrap()[..],
            [b'x']
        );
        assert_eq!(
            closed
                .read_verified(ChunkId(99), MapVersion(4), 0, 1)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        closed.delete_chunk(ChunkId(99)).await.unwrap();
    }

    /// Seed 484: a replica the MDS keeps out of its chain is not served at
    /// the version a client's cached map may still name; once a copy gives
    /// it the chain's newer version, it is.
    #[tokio::test]
    async fn a_replica_named_stale_is_not_served_at_its_version() {
        let c = Cluster::mem().await;
        c.write(
            MapVersion(1),
            0,
            WritePayload::Data(Bytes::from_static(b"x")),
        )
        .await
        .unwrap();
        let away = &c.servers[2];
        away.set_serving(false);
        away.registration(&addr(CsId(3))).await.unwrap();
        away.apply_register_reply(&RegisterReply {
            stale: vec![CHUNK, ChunkId(0x777)],
            heartbeat_interval_ms: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
        away.set_serving(true);
        let err = away
            .read_verified(CHUNK, MapVersion(1), 0, 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Stale, "{err}");
        assert!(err.message().contains("in no chain"), "{err}");
        assert_eq!(
            away.flush(CHUNK, MapVersion(1)).await.unwrap_err().kind(),
            ErrorKind::Stale
        );
        assert_eq!(
            away.block_crcs(CHUNK, MapVersion(1), 0, B)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Stale
        );
        let err = away
            .write(WriteRequest::new(
                CHUNK,
                MapVersion(1),
                0,
                WritePayload::Data(Bytes::from_static(b"y")),
                vec![],
            ))
            .await
            .unwrap_err();
        assert_eq!(err.error.kind(), ErrorKind::Stale, "{}", err.error);
        // The other replicas serve.
        assert_eq!(
            c.servers[1]
                .read_verified(CHUNK, MapVersion(1), 0, 1)
                .await
                .unwrap()[..],
            [b'x']
        );
        // Brought to a newer version (as a copy ends): served again.
        away.set_version(CHUNK, MapVersion(2)).await.unwrap();
        assert_eq!(
            away.read_verified(CHUNK, MapVersion(2), 0, 1)
                .await
                .unwrap()[..],
            [b'x']
        );
        // A registration that names nothing stale lifts every fence.
        away.registration(&addr(CsId(3))).await.unwrap();
        away.apply_register_reply(&RegisterReply {
            stale: vec![CHUNK],
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(away
            .read_verified(CHUNK, MapVersion(2), 0, 1)
            .await
            .is_err());
        away.registration(&addr(CsId(3))).await.unwrap();
        away.apply_register_reply(&RegisterReply::default())
            .await
            .unwrap();
        assert_eq!(
            away.read_verified(CHUNK, MapVersion(2), 0, 1)
                .await
                .unwrap()[..],
            [b'x']
        );
        // The fence is at the version registered: a copy that moved the
        // replica on before the reply arrived made it current.
        away.registration(&addr(CsId(3))).await.unwrap();
        away.set_version(CHUNK, MapVersion(3)).await.unwrap();
        away.apply_register_reply(&RegisterReply {
            stale: vec![CHUNK],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(
            away.read_verified(CHUNK, MapVersion(3), 0, 1)
                .await
                .unwrap()[..],
            [b'x']
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_store_chain_serves_writes_and_control() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores = dirs
            .iter()
            .map(|d| Arc::new(FileChunkStore::open(d.path()).unwrap()) as Arc<dyn ChunkStore>)
            .collect();
        let c = Cluster::new(stores).await;
        let mut model = vec![0u8; CS as usize];
        for i in 0..64u64 {
            let offset = (i * 977) % (CS - B);
            let data = pattern(100 + i, B as usize);
            model[offset as usize..(offset + B) as usize].copy_from_slice(&data);
            c.write(MapVersion(1), offset, WritePayload::Data(Bytes::from(data)))
                .await
                .unwrap();
        }
        for s in &c.servers {
            ChunkService::flush(s.as_ref(), CHUNK, MapVersion(1))
                .await
                .unwrap();
            assert_eq!(
                s.read_verified(CHUNK, MapVersion(1), 0, CS).await.unwrap()[..],
                model[..]
            );
            ChunkControl::set_version(s.as_ref(), CHUNK, MapVersion(2))
                .await
                .unwrap();
        }
        assert_eq!(
            c.write(MapVersion(1), 0, WritePayload::Zeros(1))
                .await
                .unwrap_err()
                .error
                .kind(),
            ErrorKind::Stale
        );
        for s in &c.servers {
            s.delete_chunk(CHUNK).await.unwrap();
            assert!(s.list_chunks().await.unwrap().is_empty());
        }
    }

    /// Not a test: how many 4 KiB chain writes per second three file stores
    /// take without a network (`cargo test -p pstorage-core chain_write_rate
    /// -- --ignored --nocapture`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn chain_write_rate() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores = dirs
            .iter()
            .map(|d| Arc::new(FileChunkStore::open(d.path()).unwrap()) as Arc<dyn ChunkStore>)
            .collect();
        let c = Arc::new(Cluster::new(stores).await);
        let block = Bytes::from(pattern(1, B as usize));
        let n = 20_000u64;
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let c = c.clone();
            let block = block.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..n / 8 {
                    let offset = ((t * 7919 + i * 13) % (CS / B)) * B;
                    c.write(MapVersion(1), offset, WritePayload::Data(block.clone()))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{n} chain writes of 4 KiB in {secs:.2} s: {:.0} writes/s",
            n as f64 / secs
        );
    }
}
