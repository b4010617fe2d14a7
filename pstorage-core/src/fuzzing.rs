//! Entry points for the fuzz targets of `fuzz/` (the `fuzzing` feature;
//! not part of the normal API). Each function feeds bytes from outside the
//! process (a file of the chunk store, a record of the MDS store) to the
//! real decoder and checks what must hold for what it accepts. A decoder
//! must return an error for bad input: a panic, an unbounded allocation or
//! a hang here is a bug.
//!
//! The chunk store's files are decoded where the store reads them: the
//! bytes become a file of a [`FileChunkStore`] on a [`CrashDisk`] (memory),
//! and the store is opened and used. The first byte of those inputs holds
//! flags that make the harness repair checksums (and a few fields) before
//! the store sees the file, so the fuzzer gets past the CRC checks to the
//! parsing behind them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chunk::{crc64, ChunkStore, CrashDisk, Disk, FileChunkStore, StoreOptions};
use crate::chunk::{JOURNAL_FORMAT_VERSION, MIN_JOURNAL_SIZE};
use crate::types::{ChunkId, MapVersion, BLOCK_SIZE, MIN_CHUNK_SIZE};

/// A pre-Raft MDS snapshot record (`MdsStore`), any format version.
pub fn mds_store_snapshot(bytes: &[u8]) {
    crate::mds::fuzzing::store_snapshot(bytes)
}

/// A pre-Raft MDS log record (a command), any format version.
pub fn mds_store_command(bytes: &[u8]) {
    crate::mds::fuzzing::store_command(bytes)
}

/// A Raft log entry record of the MDS store, any format version.
pub fn mds_raft_entry(bytes: &[u8]) {
    crate::mds::fuzzing::raft_entry(bytes)
}

/// A Raft snapshot record and a snapshot metadata record, any format version.
pub fn mds_raft_snapshot(bytes: &[u8]) {
    crate::mds::fuzzing::raft_snapshot(bytes)
}

const STORE: &str = "/fuzz/store";
/// The store id of the fuzzed store (`store.id`).
pub const STORE_ID: u64 = 0x5eed_0000_0000_0001;
/// The chunk the base store holds (and whose file `chunk_file` replaces).
const CHUNK: ChunkId = ChunkId(1);
const HEADER_LEN: usize = 4096;
const HEADER_CRC_AT: usize = 40;
const SECTOR: usize = 512;
const RING_AT: usize = 4096;
/// The most journal records the fix-up walks.
const MAX_FIXED_RECORDS: usize = 64;
/// The most bytes read from a chunk per exercise.
const MAX_READ: u64 = 256 << 10;

/// Bit 0 of a chunk-store input's first byte: repair the checksum(s) of the
/// superblock or header (and, for a journal, its ring size and store id).
pub const FIX_HEADER: u8 = 1;
/// Bit 1: repair the file's length (chunk file) or its records' head
/// checksums, lengths, sequence numbers and data CRC entries (journal).
pub const FIX_BODY: u8 = 2;
/// Bit 2 (journal, with [`FIX_HEADER`]): keep the ring size and tail the
/// input's slot 0 claims (and the file's length), repairing only the magic,
/// store id and checksum: a superblock that lies about its ring.
pub const KEEP_RING: u8 = 4;

fn options() -> StoreOptions {
    StoreOptions {
        journal_dir: None,
        journal_size: MIN_JOURNAL_SIZE,
        max_open: 4,
        background_trims: false,
    }
}

fn open(disk: &CrashDisk) -> crate::Result<FileChunkStore> {
    FileChunkStore::open_on(Arc::new(disk.clone()), STORE, &options())
}

fn store_path(name: &str) -> PathBuf {
    Path::new(STORE).join(name)
}

fn journal_path() -> PathBuf {
    store_path(&format!("journal.{STORE_ID:016x}"))
}

fn chunk_path(chunk: ChunkId) -> PathBuf {
    store_path("chunks").join(format!("{:016x}.chunk", chunk.0))
}

/// A store holding chunk 1 (minimum size, two written blocks, flushed and
/// trimmed), closed uncleanly. Built once, then copied onto a fresh disk
/// for each input. Panics if that fails: the harness is broken.
pub fn base_store() -> CrashDisk {
    base_store_but(None)
}

/// [`base_store`] whose file `path` holds `bytes` instead, sized to `len`
/// (sparse past `bytes`).
///
/// The file is written onto the fresh disk in place of the base store's,
/// never over it: cutting the base store's 64 MiB journal down marked each
/// of its 16,384 pages zero in the memory disk, and was most of the
/// `chunk_journal` target's time (150 inputs a second).
fn store_with(path: &Path, bytes: &[u8], len: u64) -> CrashDisk {
    let disk = base_store_but(Some(path));
    put_file(&disk, path, bytes, len);
    disk
}

fn base_store_but(skip: Option<&Path>) -> CrashDisk {
    static TEMPLATE: std::sync::OnceLock<Vec<(PathBuf, Vec<u8>, u64)>> = std::sync::OnceLock::new();
    let files = TEMPLATE.get_or_init(|| {
        let disk = build_base_store();
        let mut files = Vec::new();
        for dir in [PathBuf::from(STORE), store_path("chunks")] {
            for name in disk.list(&dir).expect("list") {
                let path = dir.join(name);
                let file = disk
                    .open(&path, crate::chunk::OpenMode::Existing)
                    .expect("open");
                let len = file.len().expect("len");
                // The journal is sparse: its records are near its start.
                let mut bytes = vec![0u8; len.min(1 << 20) as usize];
                file.read_at(&mut bytes, 0).expect("read");
                let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                bytes.truncate(used.div_ceil(4096) * 4096);
                files.push((path, bytes, len));
            }
        }
        files
    });
    let disk = CrashDisk::new();
    for (path, bytes, len) in files {
        if skip != Some(path.as_path()) {
            put_file(&disk, path, bytes, *len);
        }
    }
    disk
}

fn build_base_store() -> CrashDisk {
    let disk = CrashDisk::new();
    disk.write_private(
        &store_path("store.id"),
        format!("{STORE_ID:016x}\n").as_bytes(),
    )
    .expect("store.id");
    let store = open(&disk).expect("a new store opens");
    store
        .create(CHUNK, MapVersion(1), MIN_CHUNK_SIZE)
        .expect("create");
    let data: Vec<u8> = (0..2 * BLOCK_SIZE as usize).map(|i| i as u8).collect();
    store.write_checked(CHUNK, None, 0, &data).expect("write");
    store.flush(CHUNK).expect("flush");
    store.checkpoint().expect("checkpoint");
    drop(store);
    disk
}

/// Writes `bytes` to `path` on `disk` (created if it is not there,
/// emptied if it is), then sizes it to `len` (sparse).
fn put_file(disk: &CrashDisk, path: &Path, bytes: &[u8], len: u64) {
    let file = disk
        .open(path, crate::chunk::OpenMode::Create)
        .expect("open on a memory disk");
    file.set_len(0).expect("truncate");
    file.write_at(bytes, 0).expect("write");
    if len > bytes.len() as u64 {
        file.set_len(len).expect("extend");
    }
}

/// Uses an opened store the way a chunk server does: lists it, reads each
/// chunk (verifying the unverified ones), writes a block and reads it back.
fn exercise(store: &FileChunkStore) {
    let mut chunks: Vec<ChunkId> = store
        .list()
        .map(|l| l.into_iter().map(|i| i.chunk).collect())
        .unwrap_or_default();
    chunks.extend(store.unverified());
    chunks.sort();
    chunks.dedup();
    for &chunk in chunks.iter().take(4) {
        let _ = store.version(chunk);
        let Ok(size) = store.chunk_size(chunk) else {
            continue;
        };
        let _ = store.check_usable(chunk);
        let mut buf = vec![0u8; 64 << 10];
        let mut offset = 0;
        while offset < size.min(MAX_READ) {
            let n = (size - offset).min(buf.len() as u64) as usize;
            let _ = store.read_checked(chunk, None, offset, &mut buf[..n]);
            offset += n as u64;
        }
        let _ = store.verified(chunk);
        let block: Vec<u8> = (0..BLOCK_SIZE as usize).map(|i| (i * 7) as u8).collect();
        if store.write_checked(chunk, None, BLOCK_SIZE, &block).is_ok() {
            let mut back = vec![0u8; BLOCK_SIZE as usize];
            if store
                .read_checked(chunk, None, BLOCK_SIZE, &mut back)
                .is_ok()
            {
                assert!(
                    back == block,
                    "chunk {chunk:?} read back other data than written"
                );
            }
            let _ = store.flush(chunk);
        }
    }
    let _ = store.list_bad();
    let _ = store.close_clean();
}

fn split_flags(bytes: &[u8]) -> (u8, &[u8]) {
    match bytes.split_first() {
        Some((&flags, rest)) => (flags, rest),
        None => (0, bytes),
    }
}

/// A chunk file (`chunks/<id>.chunk`): header, CRC table, slot map, data.
/// The first byte holds [`FIX_HEADER`] (the header's CRC and length field,
/// chunk id 1) and [`FIX_BODY`] (extend the file to the length its header
/// asks for); the rest is the file.
pub fn chunk_file(bytes: &[u8]) {
    let (flags, content) = split_flags(bytes);
    let mut content = content.to_vec();
    let mut len = content.len() as u64;
    if flags & FIX_HEADER != 0 {
        if content.len() < HEADER_LEN {
            content.resize(HEADER_LEN, 0);
        }
        content[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        content[16..24].copy_from_slice(&CHUNK.0.to_le_bytes());
        content[HEADER_CRC_AT..HEADER_CRC_AT + 8].fill(0);
        let crc = crc64(&content[..HEADER_LEN]);
        content[HEADER_CRC_AT..HEADER_CRC_AT + 8].copy_from_slice(&crc.to_le_bytes());
        len = content.len() as u64;
    }
    if flags & FIX_BODY != 0 && content.len() >= 40 {
        // The layout of docs/formats.md: header, CRC table pages, slot 0,
        // then (format 3) the slot map pages and slot 1.
        let format = u32::from_le_bytes(content[8..12].try_into().expect("4 bytes"));
        let size = u64::from_le_bytes(content[32..40].try_into().expect("8 bytes"));
        if (MIN_CHUNK_SIZE..=crate::types::MAX_CHUNK_SIZE).contains(&size) {
            let blocks = size / BLOCK_SIZE;
            let table = (blocks * 8).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
            let map = blocks.div_ceil(8).div_ceil(BLOCK_SIZE).max(1) * BLOCK_SIZE;
            let needed =
                HEADER_LEN as u64 + table + size + if format >= 3 { map + size } else { 0 };
            len = len.max(needed);
        }
    }
    let disk = store_with(&chunk_path(CHUNK), &content, len);
    if let Ok(store) = open(&disk) {
        exercise(&store);
    }
}

/// The dirty log (`dirty.log`, text): the store opens with the chunks it
/// names unverified, and reads (verifies) them.
pub fn dirty_log(bytes: &[u8]) {
    let disk = store_with(&store_path("dirty.log"), bytes, 0);
    if let Ok(store) = open(&disk) {
        exercise(&store);
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Sets the CRC-64 at `crc_at` of `area` (computed with it zeroed).
fn fix_crc(area: &mut [u8], crc_at: usize) {
    area[crc_at..crc_at + 8].fill(0);
    let crc = crc64(area);
    put64(area, crc_at, crc);
}

/// The journal file (`journal.<store id>`): two superblock slots, then the
/// ring of records, replayed into the base store's chunk files at open.
/// The first byte holds [`FIX_HEADER`] (slot 0 made a superblock of this
/// store with the ring the file holds, slot 1's checksum), [`KEEP_RING`]
/// and [`FIX_BODY`] (the records from the tail on get consistent lengths,
/// sequence numbers, data CRC entries and head checksums); the rest is
/// the file. The ring is at most the file's length (a few KiB), so
/// records wrap quickly.
pub fn journal(bytes: &[u8]) {
    let (flags, content) = split_flags(bytes);
    let mut file = content.to_vec();
    if flags & KEEP_RING != 0 {
        if file.len() < SECTOR {
            file.resize(SECTOR, 0);
        }
        let slot = &mut file[..SECTOR];
        slot[0..8].copy_from_slice(b"PSTJRNL\0");
        put64(slot, 24, STORE_ID);
        fix_crc(slot, 56);
    } else if flags & (FIX_HEADER | FIX_BODY) != 0 {
        let ring = file.len().saturating_sub(RING_AT).max(4096).div_ceil(4096) * 4096;
        file.resize(RING_AT + ring, 0);
        if flags & FIX_HEADER != 0 {
            let slot = &mut file[..SECTOR];
            slot[0..8].copy_from_slice(b"PSTJRNL\0");
            let version = le32(slot, 8);
            if version == 0 || version > JOURNAL_FORMAT_VERSION {
                put32(slot, 8, JOURNAL_FORMAT_VERSION);
            }
            put32(slot, 12, SECTOR as u32);
            put64(slot, 24, STORE_ID);
            put64(slot, 32, ring as u64);
            let tail = le64(slot, 40) % ring as u64 / SECTOR as u64 * SECTOR as u64;
            put64(slot, 40, tail);
            fix_crc(slot, 56);
            if file[SECTOR..SECTOR + 8] == *b"PSTJRNL\0" {
                fix_crc(&mut file[SECTOR..2 * SECTOR], 56);
            }
        }
        if flags & FIX_BODY != 0 {
            fix_records(&mut file, ring);
        }
    }
    let disk = store_with(&journal_path(), &file, file.len() as u64);
    if let Ok(store) = open(&disk) {
        exercise(&store);
    }
}

/// Makes the records from the tail of slot 0 on self-consistent (see
/// [`journal`]): the fuzzer then reaches the replay of what they say.
fn fix_records(file: &mut [u8], ring: usize) {
    let tail = (le64(file, 40) as usize).min(ring) / SECTOR * SECTOR;
    let first_seq = le64(file, 48);
    let mut pos = tail;
    for n in 0..MAX_FIXED_RECORDS as u64 {
        let seq = first_seq.wrapping_add(n);
        if pos + SECTOR > ring {
            break;
        }
        let at = RING_AT + pos;
        if file[at..at + 8] != *b"PSTJREC\0" {
            break;
        }
        let kind = u16::from_le_bytes([file[at + 8], file[at + 9]]);
        let per_block = match kind {
            1 | 5 => 1,
            7 => 2,
            _ => 0,
        };
        let mut blocks = le32(file, at + 48) as usize;
        if per_block > 0 {
            blocks = blocks.clamp(1, 256);
        }
        let hlen = (64 + per_block * blocks * 8).div_ceil(SECTOR) * SECTOR;
        let dlen = if kind == 1 {
            blocks * BLOCK_SIZE as usize
        } else {
            0
        };
        if pos + hlen + dlen > ring {
            break;
        }
        put32(file, at + 48, blocks as u32);
        put32(file, at + 12, hlen as u32);
        put32(file, at + 52, dlen as u32);
        put64(file, at + 16, seq);
        if kind == 1 {
            for i in 0..blocks {
                let data_at = at + hlen + i * BLOCK_SIZE as usize;
                let entry =
                    crate::chunk::block_entry(&file[data_at..data_at + BLOCK_SIZE as usize]);
                put64(file, at + 64 + i * 8, entry);
            }
        }
        fix_crc(&mut file[at..at + hlen], 56);
        pos = if kind == 4 { 0 } else { pos + hlen + dlen };
        if pos == tail {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    fn put(target: &str, name: &str, bytes: &[u8]) {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    /// The chunk store's files of the base store, with records in the
    /// journal (not yet applied).
    fn store_seeds() {
        let disk = base_store();
        let file = disk.read(&chunk_path(CHUNK)).unwrap();
        put("chunk_file", "base", &[&[0u8][..], &file].concat());
        put(
            "chunk_file",
            "base-header-fixed",
            &[&[FIX_HEADER | FIX_BODY][..], &file[..2 * HEADER_LEN]].concat(),
        );
        let store = open(&disk).unwrap();
        let data: Vec<u8> = (0..3 * BLOCK_SIZE as usize)
            .map(|i| (i / 3) as u8)
            .collect();
        store.write_checked(CHUNK, None, 100, &data).unwrap();
        store
            .zero_checked(CHUNK, None, 3 * BLOCK_SIZE, 8192)
            .unwrap();
        store.set_version(CHUNK, MapVersion(2)).unwrap();
        store.flush(CHUNK).unwrap();
        drop(store);
        let journal = disk.read(&journal_path()).unwrap();
        let tail = le64(&journal, 40) as usize;
        let end = RING_AT + tail + (64 << 10);
        put(
            "chunk_journal",
            "records",
            &[&[FIX_HEADER | FIX_BODY][..], &journal[..end]].concat(),
        );
        put(
            "chunk_journal",
            "superblock",
            &[&[0u8][..], &journal[..RING_AT]].concat(),
        );
    }

    /// Records of the golden MDS stores (formats 3 to 11): the first and
    /// last 8 of each log.
    fn mds_seeds() {
        use redb::{ReadableDatabase, ReadableTable, TableDefinition};
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/mds/golden");
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&golden).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "redb") {
                continue;
            }
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let copy = tmp.path().join(path.file_name().unwrap());
            std::fs::copy(&path, &copy).unwrap();
            let db = redb::Database::open(&copy).unwrap();
            let txn = db.begin_read().unwrap();
            for (table, target) in [
                ("mds_log", "mds_store_command"),
                ("raft_log", "mds_raft_entry"),
            ] {
                let def: TableDefinition<u64, &[u8]> = TableDefinition::new(table);
                let Ok(t) = txn.open_table(def) else { continue };
                // The first and the last records: a golden file's newest
                // commands are at its end.
                let items: Vec<_> = t.iter().unwrap().map(Result::unwrap).collect();
                let skip = items.len().saturating_sub(8).max(8);
                for (k, v) in items.iter().take(8).chain(items.iter().skip(skip)) {
                    put(target, &format!("{stem}-{}", k.value()), v.value());
                }
            }
            for (table, target) in [
                ("mds_meta", "mds_store_snapshot"),
                ("raft_meta", "mds_raft_snapshot"),
            ] {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
                let Ok(t) = txn.open_table(def) else { continue };
                for item in t.iter().unwrap() {
                    let (k, v) = item.unwrap();
                    put(target, &format!("{stem}-{}", k.value()), v.value());
                }
            }
        }
    }

    /// Writes the seeds that need the store's own encoders into
    /// fuzz/corpus/ (the others come from scripts): run by hand,
    /// `cargo test -p pstorage-core --features fuzzing --lib write_seeds -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus/"]
    fn write_seeds() {
        store_seeds();
        mds_seeds();
        let state = crate::mds::MdsState::new(crate::types::FileAttrs::default()).unwrap();
        let snapshot = crate::mds::store::encode_snapshot(7, &state).unwrap();
        put("mds_store_snapshot", "current-empty", &snapshot);
    }

    /// Every entry point runs on its committed seeds without failing.
    #[test]
    fn the_seeds_pass() {
        type Entry = (&'static str, fn(&[u8]));
        let targets: [Entry; 7] = [
            ("chunk_file", chunk_file),
            ("chunk_journal", journal),
            ("chunk_dirty_log", dirty_log),
            ("mds_store_snapshot", mds_store_snapshot),
            ("mds_store_command", mds_store_command),
            ("mds_raft_entry", mds_raft_entry),
            ("mds_raft_snapshot", mds_raft_snapshot),
        ];
        for (target, run) in targets {
            let dir = std::fs::read_dir(corpus(target))
                .unwrap_or_else(|e| panic!("the corpus of {target}: {e}"));
            let mut seeds = 0;
            for entry in dir {
                run(&std::fs::read(entry.unwrap().path()).unwrap());
                seeds += 1;
            }
            assert!(seeds > 0, "{target} has no seeds");
        }
    }
}
