//! Reads of blocks the page cache does not hold, left to the caller
//! ([`ChunkStore::read_or_defer`]) and read through io_uring
//! ([`DeferredRead::finish`]) while the chunk changes under them.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::types::DEFAULT_CHUNK_SIZE;
use crate::ErrorKind;

const B: u64 = BLOCK_SIZE;
const CHUNK: ChunkId = ChunkId(7);

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A store with one chunk at the default size whose first 48 blocks hold
/// data in its file (applied, synced, not cached), and the chunk's model.
fn cold_store(dir: &std::path::Path) -> (FileChunkStore, Vec<u8>) {
    let store = FileChunkStore::open(dir).unwrap();
    store.hold_trims();
    store
        .create(CHUNK, MapVersion(1), DEFAULT_CHUNK_SIZE)
        .unwrap();
    let mut model = vec![0u8; DEFAULT_CHUNK_SIZE as usize];
    let data = pattern(1, 48 * B as usize);
    store.write(CHUNK, 0, &data).unwrap();
    model[..data.len()].copy_from_slice(&data);
    store.flush(CHUNK).unwrap();
    store.checkpoint().unwrap();
    store.drop_page_cache(CHUNK).unwrap();
    (store, model)
}

/// Whole blocks the page cache lost are deferred, read through the ring
/// and checked; the entries that come with them make the reader's piece
/// CRCs. Blocks never written, blocks in the journal and partial edge
/// blocks are read under the lock as before.
#[test]
fn cold_blocks_are_deferred_and_read_back_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut model) = cold_store(dir.path());
    // Block 10 newer in the journal than in the file.
    let newer = pattern(2, B as usize);
    store.write(CHUNK, 10 * B, &newer).unwrap();
    model[10 * B as usize..11 * B as usize].copy_from_slice(&newer);
    runtime().block_on(async {
        for (offset, len) in [(0, B), (4 * B, 16 * B), (8 * B, 4 * B), (40 * B, 16 * B)] {
            // (Reads through the ring fill the page cache, with readahead.)
            store.drop_page_cache(CHUNK).unwrap();
            let mut buf = vec![0xEEu8; len as usize];
            let deferred = store
                .read_or_defer(CHUNK, Some(MapVersion(1)), offset, &mut buf)
                .unwrap();
            let want = &model[offset as usize..(offset + len) as usize];
            if !uring::available() {
                // Without io_uring the read is done under the lock.
                assert!(deferred.is_none());
                assert_eq!(buf, want);
                continue;
            }
            let deferred =
                deferred.unwrap_or_else(|| panic!("a cold read at {offset} was not deferred"));
            assert!(deferred.finish(&mut buf).await);
            assert_eq!(buf, want, "read at {offset}");
            let first = offset / B;
            let count = crate::checksums::piece_count(offset, len) as u64;
            assert_eq!(
                deferred.entries(),
                store.crc_entries(CHUNK, None, first, count).unwrap()
            );
            crate::checksums::CheckedBytes::from_entries(
                offset,
                bytes::Bytes::from(buf),
                deferred.entries(),
            )
            .verified(CHUNK, offset)
            .unwrap();
        }
        // Cached now, or never written, or partial: nothing to defer.
        for (offset, len) in [(44 * B, B), (100 * B, 8 * B), (B + 100, 200), (10 * B, B)] {
            let mut buf = vec![0xEEu8; len as usize];
            let deferred = store.read_or_defer(CHUNK, None, offset, &mut buf).unwrap();
            assert!(deferred.is_none(), "read at {offset} deferred");
            assert_eq!(buf, model[offset as usize..(offset + len) as usize]);
        }
    });
    // The version check and range check still come first.
    let mut buf = vec![0u8; B as usize];
    let stale = store
        .read_or_defer(CHUNK, Some(MapVersion(2)), 0, &mut buf)
        .err()
        .unwrap();
    assert_eq!(stale.kind(), ErrorKind::Stale);
    let beyond = store
        .read_or_defer(CHUNK, None, DEFAULT_CHUNK_SIZE, &mut buf)
        .err()
        .unwrap();
    assert_eq!(beyond.kind(), ErrorKind::InvalidArgument);
}

/// A deferred block whose bytes on disk no longer match the entry taken
/// with it fails `finish`, and the read under the lock decides: damage is
/// `Corrupt` there.
#[test]
fn a_deferred_block_damaged_on_disk_fails_and_the_locked_read_says_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _model) = cold_store(dir.path());
    let runtime = runtime();
    let _in_runtime = runtime.enter();
    if !uring::available() {
        return;
    }
    let mut buf = vec![0u8; 4 * B as usize];
    let deferred = store
        .read_or_defer(CHUNK, None, 4 * B, &mut buf)
        .unwrap()
        .expect("a cold read is deferred");
    let at = store.block_file_offset(CHUNK, 5 * B + 17).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(store.chunk_path(CHUNK))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"damage", at).unwrap();
    assert!(!runtime.block_on(deferred.finish(&mut buf)));
    let err = store
        .read_checked(CHUNK, None, 4 * B, &mut buf)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

/// The chunk changes between the plan of a deferred read and its reads
/// from the disk (writes applied into the file, big writes moved to the
/// other slot, zeroing, writes still in the journal, deletes): `finish`
/// either gives exactly what the chunk held when the read was planned, or
/// fails, and then the read under the lock gives what it holds now. Never
/// an error, never a mix. At the default chunk size.
#[test]
fn a_deferred_read_gives_the_planned_content_or_fails_while_the_chunk_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut model) = cold_store(dir.path());
    let runtime = runtime();
    let _in_runtime = runtime.enter();
    if !uring::available() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(36);
    let (mut finished, mut failed) = (0, 0);
    for i in 0..300u64 {
        store.checkpoint().unwrap();
        store.drop_page_cache(CHUNK).unwrap();
        let offset = rng.gen_range(0..56u64) * B;
        let len = rng.gen_range(1..=4u64) * B;
        let range = offset as usize..(offset + len) as usize;
        let planned = model[range.clone()].to_vec();
        let mut buf = vec![0xEEu8; len as usize];
        let deferred = store.read_or_defer(CHUNK, None, offset, &mut buf).unwrap();
        // Something happens to the chunk before the disk is read.
        let at = rng.gen_range(0..60u64) * B;
        match rng.gen_range(0..5) {
            0 => {
                let data = pattern(1000 + i, B as usize);
                store.write(CHUNK, at, &data).unwrap();
                model[at as usize..(at + B) as usize].copy_from_slice(&data);
                store.checkpoint().unwrap();
            }
            1 => {
                let data = pattern(2000 + i, 16 * B as usize);
                let at = at.min(44 * B);
                store.write(CHUNK, at, &data).unwrap();
                model[at as usize..(at + 16 * B) as usize].copy_from_slice(&data);
                store.flush(CHUNK).unwrap();
                store.checkpoint().unwrap();
            }
            2 => {
                store.zero(CHUNK, at, 2 * B).unwrap();
                model[at as usize..(at + 2 * B) as usize].fill(0);
                store.checkpoint().unwrap();
            }
            3 => {
                let data = pattern(3000 + i, B as usize);
                store.write(CHUNK, at, &data).unwrap();
                model[at as usize..(at + B) as usize].copy_from_slice(&data);
            }
            _ => {}
        }
        match deferred {
            None => assert_eq!(buf, planned, "read {i} at {offset}, not deferred"),
            Some(deferred) => {
                if runtime.block_on(deferred.finish(&mut buf)) {
                    finished += 1;
                    assert_eq!(buf, planned, "read {i} at {offset} finished");
                } else {
                    failed += 1;
                    store.read_checked(CHUNK, None, offset, &mut buf).unwrap();
                    assert_eq!(buf, model[range], "read {i} at {offset} read again");
                }
            }
        }
    }
    // Both outcomes happened: a block rewritten in place fails its check.
    assert!(finished > 50, "{finished} deferred reads finished");
    assert!(failed > 5, "{failed} deferred reads failed their check");
    // A chunk deleted after the plan: its file stays open for the read,
    // which gives what the chunk held.
    store.drop_page_cache(CHUNK).unwrap();
    let mut buf = vec![0u8; 8 * B as usize];
    let deferred = store.read_or_defer(CHUNK, None, 0, &mut buf).unwrap();
    store.delete(CHUNK).unwrap();
    if let Some(deferred) = deferred {
        assert!(runtime.block_on(deferred.finish(&mut buf)));
        assert_eq!(buf, model[..8 * B as usize]);
    }
}

/// Through a chunk server on one thread: many cold 4 KiB reads at once go
/// through the ring, and each comes back with piece CRCs that match it.
#[tokio::test(flavor = "current_thread")]
async fn a_chunk_server_reads_cold_blocks_through_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let (store, model) = cold_store(dir.path());
    let store = Arc::new(store);
    let net = memory::MemNetwork::new();
    let server = net.add_server(crate::types::CsId(1), "cs1", store.clone());
    let reads = (0..48u64).map(|i| {
        let server = server.clone();
        let offset = (i * 7 % 48) * B;
        // As the transport counts them: all 48 arrived together.
        let counted = DataRequest::begin();
        async move {
            let _counted = counted;
            let got = crate::traits::ChunkService::read_verified(
                server.as_ref(),
                CHUNK,
                MapVersion(1),
                offset,
                B,
            )
            .await
            .unwrap();
            (offset, got)
        }
    });
    for (offset, got) in futures::future::join_all(reads).await {
        assert_eq!(got[..], model[offset as usize..(offset + B) as usize]);
    }
    let through_ring = server.ring_reads();
    // (Not all of them: the kernel's readahead for the first brings some
    // of the others' blocks into the page cache before they are planned.)
    if uring::available() {
        assert!(through_ring > 0, "no read went through the ring");
    } else {
        assert_eq!(through_ring, 0);
    }
    // A read alone waits for the disk on the serving thread.
    store.drop_page_cache(CHUNK).unwrap();
    let counted = DataRequest::begin();
    let got =
        crate::traits::ChunkService::read_verified(server.as_ref(), CHUNK, MapVersion(1), 0, B)
            .await
            .unwrap();
    drop(counted);
    assert_eq!(got[..], model[..B as usize]);
    assert_eq!(server.ring_reads(), through_ring);
}
