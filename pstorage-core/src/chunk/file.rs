//! [`FileChunkStore`]: chunk replicas as files (format in the module docs of
//! [`crate::chunk`]).

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Error, ErrorKind, Result};
use crate::types::{
    validate_chunk_size, ChunkId, ChunkReplicaInfo, MapVersion, SpaceInfo, BLOCK_SIZE,
};

use super::dirty::DirtyLog;
use super::disk::{Disk, DiskFile, OpenMode, RealDisk};
use super::error::io_error;
use super::journal::{Appended, Journal, NewRecord, RecordKind, MAX_RECORD_BLOCKS};
use super::keeper::{Keeper, StoreOptions};
use super::{
    bad_replica, block_entry, block_span, check_blocks, check_range, check_repair, check_version,
    crc64, missing_chunk, missing_incoming, upgrade_entry, ChunkStore, IncomingId, FORMAT_VERSION,
    LOST_ENTRY,
};
use super::{DeferredRead, DeferredRun};

const MAGIC: [u8; 8] = *b"PSTCHUNK";
const HEADER_LEN: u64 = 4096;
const HEADER_CRC_AT: usize = 40;
const BS: usize = BLOCK_SIZE as usize;
/// Open chunk files (fd + CRC table in memory) kept by default. A 256 MiB
/// chunk's CRC table takes 512 KiB, so this bounds the cache near 128 MiB.
/// (Chunks in use stay open beyond the bound.)
pub(super) const DEFAULT_MAX_OPEN: usize = 256;
const CHUNK_SUFFIX: &str = ".chunk";
/// The suffix of a replica taken out of service ([`ChunkStore::mark_bad`]).
const BAD_SUFFIX: &str = ".chunk.bad";
const TMP_MARKER: &str = ".chunk.tmp.";
/// The fewest whole blocks a write puts straight into the chunk file
/// instead of the journal (64 KiB), when they read as zeros and no record
/// still in the journal touches them (see [`OpenChunk::can_write_in_place`]).
pub(super) const IN_PLACE_MIN_BLOCKS: u64 = 16;

/// Chunk replicas stored as one file each under `<dir>/chunks/`.
///
/// Open chunks keep their file descriptor and CRC table in memory (up to a
/// bound; when it is exceeded, chunks nobody is using are closed), so
/// an aligned 4 KiB write costs one `pwrite` of data plus one 8-byte
/// `pwrite` of its CRC entry. Each chunk has its own reader-writer lock:
/// reads of a chunk run in parallel, writes to a chunk are serialized (which
/// keeps read-modify-writes of partial blocks whole), and different chunks
/// never wait for each other except while a chunk file is created or
/// deleted.
pub struct FileChunkStore {
    disk: Arc<dyn Disk>,
    chunks_dir: PathBuf,
    open: Mutex<OpenTable>,
    max_open: usize,
    tmp_counter: AtomicU64,
    /// Incoming replicas (re-replication) by handle: open temporary files.
    incoming: Mutex<HashMap<u64, Arc<OpenChunk>>>,
    dirty: Arc<DirtyLog>,
    /// The dirty log's content at open (chunks that may hold torn writes)
    /// not verified since.
    unverified: Mutex<BTreeSet<ChunkId>>,
    /// The write journal and the thread that applies and trims it.
    keeper: Arc<Keeper>,
    keeper_thread: Option<std::thread::JoinHandle<()>>,
}

struct OpenTable {
    chunks: HashMap<ChunkId, Arc<OpenChunk>>,
    /// Bumped whenever a chunk file appears or disappears, so that a chunk
    /// opened without the table lock is not cached if its file changed
    /// meanwhile.
    generation: u64,
}

pub(super) struct OpenChunk {
    pub(super) chunk: ChunkId,
    path: PathBuf,
    pub(super) file: Box<dyn DiskFile>,
    /// The count of in-place writes ([`ChunkState::in_place_writes`]) that
    /// the last sync of the file covered.
    in_place_synced: AtomicU64,
    /// Set when a read of the file failed with EIO under the read lock:
    /// the replica is out of service from then on, as if
    /// [`ChunkState::failed`] (into which a holder of the write lock moves
    /// it, [`OpenChunk::absorb_broken`]).
    broken: std::sync::OnceLock<String>,
    chunk_size: u64,
    data_offset: u64,
    /// Format 3: the file offset of data slot 1, where big writes over
    /// blocks holding data go (see [`Slots`]); 0 in older formats, which
    /// have one slot.
    slot1_at: u64,
    /// The file's format version: how its CRC table encodes entries.
    format: u32,
    state: RwLock<ChunkState>,
    /// Held by whoever applies journal records to the file (taken before
    /// the state lock): records are applied in order, and the keeper
    /// writes their data with the state lock released
    /// ([`OpenChunk::apply_some`]).
    applying: parking_lot::Mutex<()>,
}

/// Which of its two data slots each block's data is in (format 3; all in
/// slot 0 otherwise). A big write over blocks that hold data goes to their
/// other slot, so their old data stays intact until the write is durable
/// (see [`RecordKind::Moved`]).
#[derive(Debug, Clone)]
pub(super) struct Slots(Vec<u64>);

impl Slots {
    fn new(blocks: u64) -> Slots {
        Slots(vec![0; blocks.div_ceil(64) as usize])
    }

    fn get(&self, block: u64) -> u8 {
        ((self.0[(block / 64) as usize] >> (block % 64)) & 1) as u8
    }

    fn set(&mut self, block: u64, slot: u8) {
        let word = &mut self.0[(block / 64) as usize];
        *word = (*word & !(1 << (block % 64))) | (u64::from(slot) << (block % 64));
    }

    /// Blocks `[first, end)` as runs that lie in one slot:
    /// (first, end, slot). Allocates nothing: every read and every apply
    /// of a record goes through it.
    fn runs(&self, first: u64, end: u64) -> SlotRuns<'_> {
        SlotRuns {
            slots: self,
            next: first,
            end,
        }
    }
}

/// The iterator of [`Slots::runs`].
struct SlotRuns<'a> {
    slots: &'a Slots,
    next: u64,
    end: u64,
}

impl Iterator for SlotRuns<'_> {
    type Item = (u64, u64, u8);

    fn next(&mut self) -> Option<(u64, u64, u8)> {
        if self.next >= self.end {
            return None;
        }
        let first = self.next;
        let slot = self.slots.get(first);
        let mut end = first + 1;
        while end < self.end && self.slots.get(end) == slot {
            end += 1;
        }
        self.next = end;
        Some((first, end, slot))
    }
}

/// The old slot of blocks moved by a record, to free once the record is
/// trimmed (the data there is needed until then: a replay may keep the
/// blocks in it).
struct Punch {
    seq: u64,
    first: u64,
    end: u64,
    slot: u8,
}

impl ChunkState {
    /// Drops the spans of records below `tail_seq` (trimmed) from
    /// [`in_journal`](ChunkState::in_journal).
    fn forget_trimmed(&mut self, tail_seq: u64) {
        let trimmed = self
            .in_journal
            .iter()
            .take_while(|(seq, _, _)| *seq < tail_seq)
            .count();
        self.in_journal.drain(..trimmed);
    }
}

pub(super) struct ChunkState {
    version: MapVersion,
    /// One entry per block, as the chunk file will hold once the journal
    /// records of [`pending`](ChunkState::pending) are applied (0 = reads
    /// as zeros).
    crcs: Vec<u64>,
    /// Set by `delete`: operations that already held this chunk fail with
    /// `NotFound` instead of touching the unlinked file.
    pub(super) deleted: bool,
    /// Written since its last flush, and so in the dirty log.
    dirty: bool,
    /// Set when journal records could not be applied to the file or the
    /// file could not be synced: its content on disk is unknown, so every
    /// access is `Corrupt` (the server takes the replica out of service and
    /// the MDS re-replicates the chunk).
    pub(super) failed: Option<String>,
    /// Journal records of this chunk not applied to its file yet, oldest
    /// first.
    pub(super) pending: Vec<Pending>,
    /// Blocks whose newest data is in the journal: block -> (sequence
    /// number of the record, file offset of the block in the journal).
    overlay: HashMap<u64, (u64, u64)>,
    /// This chunk's records that may still be in the journal (not known to
    /// be trimmed), oldest first: (sequence number, first block, end
    /// block). A replay applies them again, so no write may go in place
    /// over their blocks.
    in_journal: Vec<(u64, u64, u64)>,
    /// In-place writes made so far (their data is in the file, maybe not
    /// synced: a flush syncs the file when this is above
    /// [`OpenChunk::in_place_synced`]).
    in_place_writes: u64,
    /// One more than the sequence number of the newest in-place record.
    in_place_below: u64,
    /// The bound of the newest in-place-durable record appended: the data
    /// of the in-place records below it is on disk.
    durable_below: u64,
    /// The data slot of each block, as the file will hold once
    /// [`pending`](ChunkState::pending) is applied.
    slots: Slots,
    /// Old slots of moved blocks, freed by the trim of their record.
    to_punch: Vec<Punch>,
}

/// A journal record of a chunk not applied to its file yet.
pub(super) struct Pending {
    pub(super) seq: u64,
    kind: RecordKind,
    first_block: u64,
    blocks: u64,
    /// Write records: the blocks' CRC table entries.
    crcs: Vec<u64>,
    /// Write records: file offset of the data in the journal.
    data_at: u64,
    /// Write records: the data, when it is kept in memory until applied.
    data: Option<(Box<[u8]>, super::keeper::MemCharge)>,
}

impl Pending {
    /// A record read back at replay.
    pub(super) fn replayed(r: &super::journal::Replayed) -> Pending {
        Pending {
            seq: r.seq,
            kind: r.kind,
            first_block: r.first_block,
            blocks: r.blocks,
            crcs: r.crcs.clone(),
            data_at: r.data_at,
            data: None,
        }
    }
}

/// What applying records writes into a chunk file besides their data: CRC
/// entries (a record that zeroes blocks gives them 0) and the slots of moved
/// blocks. Later records win.
#[derive(Default)]
struct Tables {
    entries: BTreeMap<u64, u64>,
    slots: BTreeMap<u64, u8>,
}

impl Tables {
    fn note(&mut self, p: &Pending, slots: &Slots) {
        let blocks = p.first_block..p.first_block + p.blocks;
        if p.kind.writes_data_only() {
            self.entries
                .extend(blocks.clone().zip(p.crcs.iter().copied()));
        } else {
            self.entries.extend(blocks.clone().map(|block| (block, 0)));
        }
        if p.kind == RecordKind::Moved {
            // No record after this one moves them (none may while this one
            // is in the journal): their slot now is the record's.
            self.slots
                .extend(blocks.map(|block| (block, slots.get(block))));
        }
    }
}

/// Why journal records could not be applied to a chunk file.
pub(super) enum ApplyError {
    /// Reading them back from the journal failed (the journal's problem).
    Journal(Error),
    /// Writing them into the chunk file failed (the replica's problem).
    Chunk(Error),
}

/// What a write or zeroing changes, computed under the chunk's lock before
/// anything is written.
struct Plan {
    first: u64,
    last: u64,
    /// The patched edge blocks to write, when partial.
    head: Option<[u8; BS]>,
    tail: Option<[u8; BS]>,
    /// Whole blocks strictly inside the range: [mid_first, mid_end).
    mid_first: u64,
    mid_end: u64,
    /// The new CRC table entries of blocks first..=last.
    entries: Vec<u64>,
    /// The middle blocks go straight into the chunk file, and the journal
    /// gets in-place records of their entries.
    in_place: bool,
    /// When they went to their other slot: the moved records to append.
    moves: Vec<Move>,
}

/// A moved-write record to append: blocks `[first, first + blocks)` now in
/// `slot`, with their new entries and then their old ones.
struct Move {
    first: u64,
    blocks: u64,
    slot: u8,
    crcs: Vec<u64>,
}

/// How the middle blocks of a write may go straight into the chunk file.
enum InPlace {
    /// Through the journal.
    No,
    /// Where they are: they read as zeros.
    Fresh,
    /// Into their other data slot: they hold data.
    Move,
}

/// A decoded chunk file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// The file's format version ([`FORMAT_VERSION`] for new files).
    format: u32,
    chunk: ChunkId,
    version: MapVersion,
    chunk_size: u64,
}

/// What a range operation writes.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// Bytes, with their sender's piece CRCs when they came with them.
    Data(&'a [u8], Option<&'a [u64]>),
    Zeros,
}

impl FileChunkStore {
    /// Opens (creating if needed) the store rooted at `dir`. Leftovers of
    /// creates interrupted by a crash are removed. Chunk files are opened
    /// lazily, on first use.
    pub fn open(dir: impl AsRef<Path>) -> Result<FileChunkStore> {
        FileChunkStore::open_with(dir, &StoreOptions::default())
    }

    /// Like [`open`](FileChunkStore::open), keeping at most `max_open`
    /// unused chunk files open (chunks in use are never closed).
    pub fn open_with_cache(dir: impl AsRef<Path>, max_open: usize) -> Result<FileChunkStore> {
        FileChunkStore::open_with(
            dir,
            &StoreOptions {
                max_open,
                ..StoreOptions::default()
            },
        )
    }

    /// Opens the store with `options` (journal place and size, cache).
    /// Replays the journal: every record it holds is applied to the chunk
    /// files, which are then synced, before this returns.
    pub fn open_with(dir: impl AsRef<Path>, options: &StoreOptions) -> Result<FileChunkStore> {
        FileChunkStore::open_on(Arc::new(RealDisk), dir, options)
    }

    /// Like [`open_with`](FileChunkStore::open_with), on `disk` (a
    /// [`CrashDisk`](super::CrashDisk) in power-loss tests).
    pub fn open_on(
        disk: Arc<dyn Disk>,
        dir: impl AsRef<Path>,
        options: &StoreOptions,
    ) -> Result<FileChunkStore> {
        let max_open = options.max_open;
        assert!(
            max_open > 0,
            "the open chunk cache needs room for one chunk"
        );
        let chunks_dir = dir.as_ref().join("chunks");
        disk.create_dir_all(&chunks_dir).map_err(|e| {
            io_error(
                e,
                format_args!("creating the chunk directory {}", chunks_dir.display()),
            )
        })?;
        let names = disk.list(&chunks_dir).map_err(|e| {
            io_error(
                e,
                format_args!("listing the chunk directory {}", chunks_dir.display()),
            )
        })?;
        for name in names {
            if name.contains(TMP_MARKER) {
                // A create that crashed before its rename: the chunk never existed.
                let path = chunks_dir.join(&name);
                disk.remove(&path).map_err(|e| {
                    io_error(e, format_args!("removing the leftover {}", path.display()))
                })?;
            }
        }
        let (dirty, unverified) = DirtyLog::open(disk.clone(), dir.as_ref())?;
        let dirty = Arc::new(dirty);
        let (keeper, replayed) = Keeper::open(&disk, dirty.clone(), dir.as_ref(), options)?;
        let mut store = FileChunkStore {
            disk,
            chunks_dir,
            open: Mutex::new(OpenTable {
                chunks: HashMap::new(),
                generation: 0,
            }),
            max_open,
            tmp_counter: AtomicU64::new(0),
            incoming: Mutex::new(HashMap::new()),
            dirty,
            unverified: Mutex::new(unverified),
            keeper: Arc::new(keeper),
            keeper_thread: None,
        };
        store.replay(replayed)?;
        if options.background_trims {
            store.keeper_thread = Some(Keeper::spawn(&store.keeper)?);
        }
        Ok(store)
    }

    /// Applies the records found in the journal at open to their chunks.
    fn replay(&self, replayed: Vec<super::journal::Replayed>) -> Result<()> {
        if replayed.is_empty() {
            // The trim still moves the tail to where appends start.
            return self.keeper.checkpoint();
        }
        let journal = self.keeper.journal();
        // What was read must be durable before the chunk files depend on it.
        journal.sync_all()?;
        let mut forgotten: HashMap<ChunkId, u64> = HashMap::new();
        // The in-place records below these have their data on disk.
        let mut durable: HashMap<ChunkId, u64> = HashMap::new();
        for r in &replayed {
            match r.kind {
                RecordKind::Forget => {
                    forgotten.insert(r.chunk, r.seq);
                }
                RecordKind::InPlaceDurable => {
                    let below = durable.entry(r.chunk).or_default();
                    *below = (*below).max(r.first_block);
                }
                _ => {}
            }
        }
        let mut applied = 0usize;
        let mut lost_in_place = 0u64;
        for r in &replayed {
            if !matches!(
                r.kind,
                RecordKind::Write | RecordKind::Zero | RecordKind::InPlace | RecordKind::Moved
            ) || forgotten.get(&r.chunk).is_some_and(|f| *f > r.seq)
            {
                continue;
            }
            let open = match self.get(r.chunk) {
                Ok(open) => open,
                // Deleted or taken out of service after the record.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Corrupt) => continue,
                Err(e) => return Err(e),
            };
            let mut state = open.write_state();
            // Both numbers are the record's: their sum may overflow.
            let end = r.first_block.checked_add(r.blocks);
            if end.is_none_or(|end| end > open.chunk_size / BLOCK_SIZE) {
                return Err(Error::corrupt(format!(
                    "journal record {} of {} names blocks {}..{} of chunk {:#x}, which has {}",
                    r.seq,
                    journal.name(),
                    r.first_block,
                    end.map_or_else(|| "2^64 and past".to_string(), |end| end.to_string()),
                    r.chunk,
                    open.chunk_size / BLOCK_SIZE
                )));
            }
            if state.failed.is_some() {
                continue;
            }
            let mut pending = Pending::replayed(r);
            let synced = durable.get(&r.chunk).is_some_and(|below| r.seq < *below);
            let checked = match r.kind {
                RecordKind::InPlace => open.check_in_place(&state, &mut pending, synced),
                RecordKind::Moved if open.slot1_at == 0 => Err(Error::corrupt(format!(
                    "journal record {} of {} moves blocks of chunk {:#x}, whose file (format \
                     {}) has one data slot",
                    r.seq,
                    journal.name(),
                    r.chunk,
                    open.format
                ))),
                RecordKind::Moved => open.check_moved(&mut state, &mut pending, r.slot, synced),
                _ => Ok(0),
            };
            match checked {
                Ok(lost) => lost_in_place += lost,
                Err(e) => {
                    open.fail(&mut state, format!("replaying the journal: {e}"));
                    continue;
                }
            }
            for (i, block) in (r.first_block..r.first_block + r.blocks).enumerate() {
                state.crcs[block as usize] = match r.kind {
                    RecordKind::Write | RecordKind::InPlace | RecordKind::Moved => pending.crcs[i],
                    _ => 0,
                };
            }
            state
                .in_journal
                .push((r.seq, r.first_block, r.first_block + r.blocks));
            state.pending.push(pending);
            self.keeper.touch(&open);
            drop(state);
            applied += 1;
        }
        tracing::info!(
            journal = %journal.name(),
            records = replayed.len(),
            applied,
            lost_in_place,
            "journal replayed"
        );
        self.keeper.checkpoint()
    }

    /// The store's journal (tests that write records by hand).
    #[cfg(test)]
    pub(crate) fn journal(&self) -> &super::journal::Journal {
        self.keeper.journal()
    }

    /// Stops the background trims: what is in the journal stays there
    /// until a flush, a checkpoint or the next open (tests).
    #[cfg(test)]
    pub(crate) fn hold_trims(&self) {
        self.keeper.hold();
    }

    /// Syncs the journal and applies the oldest `records` pending records
    /// of `chunk` to its file (not synced, nothing trimmed), as an apply
    /// does while later records of the chunk are pending (tests).
    #[cfg(test)]
    pub(crate) fn apply_oldest(&self, chunk: ChunkId, records: usize) -> Result<()> {
        let open = self.get(chunk)?;
        let journal = self.keeper.journal();
        journal.sync_all()?;
        let _applying = open.applying.lock();
        let mut state = open.write_state();
        match open.apply_pending(&mut state, journal, u64::MAX, records) {
            Ok(_) => Ok(()),
            Err(ApplyError::Journal(e) | ApplyError::Chunk(e)) => Err(e),
        }
    }

    /// Applies every journal record to the chunk files, syncs them and
    /// trims the journal (what the background keeper does from time to
    /// time).
    pub fn checkpoint(&self) -> Result<()> {
        self.keeper.checkpoint()
    }

    /// Where byte `chunk_offset` of a chunk of `chunk_size` lies in its
    /// file while its block is in data slot 0, as in every new file (for
    /// fault injection below the store; see
    /// [`block_file_offset`](FileChunkStore::block_file_offset)).
    pub fn data_file_offset(chunk_size: u64, chunk_offset: u64) -> u64 {
        data_offset(chunk_size) + chunk_offset
    }

    /// Where byte `chunk_offset` of `chunk` lies in its file now, in the
    /// data slot its block is in (for fault injection below the store).
    pub fn block_file_offset(&self, chunk: ChunkId, chunk_offset: u64) -> Result<u64> {
        let open = self.get(chunk)?;
        check_range(chunk, open.chunk_size, chunk_offset, 1)?;
        let state = open.read_state();
        let block = chunk_offset / BLOCK_SIZE;
        Ok(open.block_at(state.slots.get(block), block) + chunk_offset % BLOCK_SIZE)
    }

    /// The path of `chunk`'s file (whether or not it exists).
    pub fn chunk_path(&self, chunk: ChunkId) -> PathBuf {
        self.chunks_dir.join(format!("{chunk:016x}{CHUNK_SUFFIX}"))
    }

    /// Runs `f` while holding `chunk`'s applier lock, as the keeper does
    /// while it applies the chunk (tests).
    #[cfg(test)]
    pub(crate) fn while_applying<T>(&self, chunk: ChunkId, f: impl FnOnce() -> T) -> Result<T> {
        let open = self.get(chunk)?;
        let _applying = open.applying.lock();
        Ok(f())
    }

    /// [`ChunkStore::read_checked`] of an open chunk; with `deferred`,
    /// [`ChunkStore::read_or_defer`]'s part under the lock: when it lists
    /// runs there, the CRC entries of every block the read touches, as the
    /// runs were planned with them.
    fn read_open(
        &self,
        open: &OpenChunk,
        expected: Option<MapVersion>,
        offset: u64,
        buf: &mut [u8],
        mut deferred: Option<&mut Vec<DeferredRun>>,
    ) -> Result<Option<Vec<u64>>> {
        let chunk = open.chunk;
        check_range(chunk, open.chunk_size, offset, buf.len() as u64)?;
        let state = open.read_state();
        if state.deleted {
            return Err(missing_chunk(chunk));
        }
        open.check_failed(&state)?;
        check_version(chunk, expected, state.version)?;
        if buf.is_empty() {
            return Ok(None);
        }
        let journal = Some(self.keeper.journal());
        open.read_locked(&state, journal, offset, buf, deferred.as_deref_mut())?;
        if deferred.is_none_or(|runs| runs.is_empty()) {
            return Ok(None);
        }
        let (first, last) = block_span(offset, buf.len() as u64);
        Ok(Some(state.crcs[first as usize..=last as usize].to_vec()))
    }

    /// Drops the clean pages of `chunk`'s file from the page cache, so
    /// that reads of it wait for the disk (tests of deferred reads).
    #[cfg(test)]
    pub(crate) fn drop_page_cache(&self, chunk: ChunkId) -> Result<()> {
        let open = self.get(chunk)?;
        let len = open.file.len().map_err(Error::from)?;
        open.file.drop_cached(0, len).map_err(Error::from)
    }

    /// Changes the minimum time between dirty log compactions (tests).
    #[cfg(test)]
    pub(crate) fn set_dirty_compact_interval(&self, interval: std::time::Duration) {
        self.dirty.set_compact_interval(interval);
    }

    /// The path `chunk`'s file moves to when it is taken out of service.
    pub fn bad_chunk_path(&self, chunk: ChunkId) -> PathBuf {
        self.chunks_dir.join(format!("{chunk:016x}{BAD_SUFFIX}"))
    }

    fn unverified_set(&self) -> MutexGuard<'_, BTreeSet<ChunkId>> {
        self.unverified.lock()
    }

    fn table(&self) -> MutexGuard<'_, OpenTable> {
        self.open.lock()
    }

    /// The open chunk, opening its file (outside the table lock) on first use.
    fn get(&self, chunk: ChunkId) -> Result<Arc<OpenChunk>> {
        loop {
            let generation = {
                let table = self.table();
                if let Some(open) = table.chunks.get(&chunk) {
                    return Ok(open.clone());
                }
                table.generation
            };
            let path = self.chunk_path(chunk);
            let mut opened = match OpenChunk::load(&*self.disk, &path, chunk) {
                Ok(opened) => opened,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if self
                        .disk
                        .exists(&self.bad_chunk_path(chunk))
                        .unwrap_or(false)
                    {
                        return Err(bad_replica(chunk));
                    }
                    return Err(missing_chunk(chunk));
                }
                Err(e) => return Err(e),
            };
            opened.state.get_mut().dirty = self.dirty.is_dirty(chunk);
            let mut table = self.table();
            if table.generation != generation {
                // A chunk file was created or deleted meanwhile: ours may be
                // the unlinked one.
                continue;
            }
            let open = table
                .chunks
                .entry(chunk)
                .or_insert_with(|| Arc::new(opened))
                .clone();
            if table.chunks.len() > self.max_open {
                // Close chunks nobody is using (the table holds the only
                // reference, and references are only taken under this lock).
                let excess = table.chunks.len() - self.max_open;
                let idle: Vec<ChunkId> = table
                    .chunks
                    .iter()
                    .filter(|(id, c)| **id != chunk && Arc::strong_count(c) == 1)
                    .map(|(id, _)| *id)
                    .take(excess)
                    .collect();
                for id in idle {
                    table.chunks.remove(&id);
                }
            }
            return Ok(open);
        }
    }

    /// A fresh temporary path for a new file of `chunk` (removed at open
    /// if a crash leaves it behind).
    fn tmp_path(&self, chunk: ChunkId) -> PathBuf {
        self.chunks_dir.join(format!(
            "{chunk:016x}{TMP_MARKER}{}",
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn incoming_table(&self) -> MutexGuard<'_, HashMap<u64, Arc<OpenChunk>>> {
        self.incoming.lock()
    }

    /// The open incoming replica of a handle.
    fn incoming_handle(&self, incoming: IncomingId) -> Result<Arc<OpenChunk>> {
        self.incoming_table()
            .get(&incoming.0)
            .cloned()
            .ok_or_else(|| missing_incoming(incoming))
    }

    /// Makes the incoming replica `open` (a temporary file) durable at
    /// `version` and renames it over the chunk's file.
    fn install_incoming(&self, open: &OpenChunk, version: MapVersion) -> Result<()> {
        self.forget_in_journal(open.chunk)?;
        let header = Header {
            format: open.format,
            chunk: open.chunk,
            version,
            chunk_size: open.chunk_size,
        };
        open.pwrite(&header.encode(), 0)?;
        open.file.sync_data().map_err(|e| {
            io_error(
                e,
                format_args!("syncing the incoming replica {}", open.path.display()),
            )
        })?;
        let path = self.chunk_path(open.chunk);
        let replaced = {
            let mut table = self.table();
            self.disk.rename(&open.path, &path).map_err(|e| {
                io_error(
                    e,
                    format_args!("renaming {} to {}", open.path.display(), path.display()),
                )
            })?;
            table.generation += 1;
            // A replica taken out of service is replaced too.
            let _ = self.disk.remove(&self.bad_chunk_path(open.chunk));
            table.chunks.remove(&open.chunk)
        };
        self.dirty.forget(open.chunk);
        if let Some(old) = replaced {
            // Outside the table lock: this may wait for a long read. Holders
            // of the old replica now fail with NotFound and look it up again.
            old.write_state().deleted = true;
        }
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        self.disk.sync_dir(&self.chunks_dir).map_err(|e| {
            io_error(
                e,
                format_args!("syncing the chunk directory {}", self.chunks_dir.display()),
            )
        })
    }

    /// Idempotency check of `create` against an existing chunk.
    fn check_existing(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
    ) -> Result<Option<()>> {
        match self.get(chunk) {
            Ok(open) => {
                let state = open.read_state();
                if state.deleted {
                    return Ok(None);
                }
                if state.version == version && open.chunk_size == chunk_size {
                    Ok(Some(()))
                } else {
                    Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!(
                            "chunk {chunk:#x} already exists at map version {} with chunk size {} \
                             ({}); it cannot be created again at version {version} with size \
                             {chunk_size}",
                            state.version,
                            open.chunk_size,
                            open.path.display()
                        ),
                    ))
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_new_file(&self, tmp: &Path, header: &Header) -> Result<()> {
        let what = |op: &str| format!("{op} the new chunk file {}", tmp.display());
        let file = self
            .disk
            .open(tmp, OpenMode::CreateNew)
            .map_err(|e| io_error(e, format_args!("{}", what("creating"))))?;
        file.write_at(&header.encode(), 0)
            .map_err(|e| io_error(e, format_args!("{}", what("writing the header of"))))?;
        // Every block reads as zeros: its entry says so (a table of zeros
        // would mean lost entries).
        let blocks = (header.chunk_size / BLOCK_SIZE) as usize;
        let zeros = entry_to_disk(header.format, 0).to_le_bytes();
        let table: Vec<u8> = zeros.iter().copied().cycle().take(blocks * 8).collect();
        file.write_at(&table, HEADER_LEN)
            .map_err(|e| io_error(e, format_args!("{}", what("writing the CRC table of"))))?;
        // Full length up front (sparse): reads never come up short and a
        // shorter file on open means it was truncated behind our back.
        file.set_len(chunk_file_len(header.format, header.chunk_size))
            .map_err(|e| io_error(e, format_args!("{}", what("sizing"))))?;
        file.sync_data()
            .map_err(|e| io_error(e, format_args!("{}", what("syncing"))))
    }

    /// Writes or zeroes a range of a replica through the journal; with
    /// `only_if_bad` only if that block fails its check now (returns
    /// whether it wrote).
    fn apply(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        len: u64,
        source: Source<'_>,
        only_if_bad: Option<u64>,
    ) -> Result<bool> {
        let open = self.get(chunk)?;
        check_range(chunk, open.chunk_size, offset, len)?;
        let journal = self.keeper.journal();
        loop {
            let mut state = open.write_state();
            if state.deleted {
                return Err(missing_chunk(chunk));
            }
            open.check_failed(&state)?;
            check_version(chunk, expected, state.version)?;
            if len == 0 {
                return Ok(true);
            }
            if let Some(block) = only_if_bad {
                let mut buf = [0u8; BS];
                match open.load_block(&state, Some(journal), block, &mut buf) {
                    Ok(()) => return Ok(false),
                    Err(e) if e.kind() == ErrorKind::Corrupt => {}
                    Err(e) => return Err(e),
                }
            }
            if !state.dirty {
                self.dirty.note_write(chunk)?;
                state.dirty = true;
            }
            let mut plan = open.plan(&state, Some(journal), offset, len, source)?;
            // Space for blocks the file may not hold yet, now: a full disk
            // fails this write, not the later apply of the journal.
            if matches!(source, Source::Data(..))
                && state.crcs[plan.first as usize..=plan.last as usize].contains(&0)
            {
                if let Err(e) = open.allocate(&state, plan.first, plan.last + 1 - plan.first) {
                    if e.kind() != ErrorKind::NoSpace {
                        open.fail(&mut state, format!("allocating space failed: {e}"));
                        self.keeper.touch(&open);
                    }
                    return Err(e);
                }
            }
            // The keeper must see this chunk before its records exist (a
            // trim applies and syncs every chunk it lists), and before its
            // file can fail (a trim takes a failed file out of service).
            self.keeper.touch(&open);
            if let Source::Data(data, _) = source {
                let from = (plan.mid_first * BLOCK_SIZE).saturating_sub(offset) as usize;
                let to = (plan.mid_end * BLOCK_SIZE).saturating_sub(offset) as usize;
                // The data goes to the file before its record exists. Until
                // the record is durable the blocks' entries (and slots) on
                // disk are the old ones, and a replay checks the data before
                // it takes the record's.
                let written = match open.in_place_mode(&mut state, &plan, journal.tail_seq()) {
                    InPlace::No => None,
                    InPlace::Fresh => Some(
                        open.pwrite_blocks(&state, plan.mid_first, &data[from..to])
                            .map(|()| Vec::new()),
                    ),
                    InPlace::Move => open.write_moved(&state, &plan, &data[from..to]),
                };
                match written {
                    None => {}
                    Some(Ok(moves)) => {
                        plan.in_place = true;
                        plan.moves = moves;
                        state.in_place_writes += 1;
                    }
                    Some(Err(e)) => {
                        // A disk error is a fact about the replica, not
                        // something to retry.
                        open.fail(&mut state, format!("writing it failed: {e}"));
                        return Err(e);
                    }
                }
            }
            let full = {
                let owned;
                let all: &[u8] = match source {
                    Source::Data(_, _) if plan.in_place => &[],
                    Source::Data(data, _) => {
                        if plan.head.is_none() && plan.tail.is_none() {
                            data
                        } else {
                            owned = plan.whole_blocks(offset, data);
                            &owned
                        }
                    }
                    Source::Zeros => &[],
                };
                let pieces = plan.pieces(all);
                let records = plan.records(chunk, state.version, &pieces);
                match journal.append(&records)? {
                    Some(appended) => {
                        open.note_appended(&mut state, &plan, &records, &appended, &self.keeper);
                        if plan.in_place {
                            self.keeper
                                .note_in_place((plan.mid_end - plan.mid_first) * BLOCK_SIZE);
                        }
                        None
                    }
                    None => Some(
                        records
                            .iter()
                            .map(|r| (r.kind, r.blocks))
                            .collect::<Vec<_>>(),
                    ),
                }
            };
            let Some(need) = full else {
                return Ok(true);
            };
            // The journal is full: wait without the chunk lock (the keeper
            // takes it to apply this chunk's records), then plan again.
            drop(state);
            self.wait_for_space(&need)?;
        }
    }

    /// Waits until `records` (kind, blocks) fit in the journal: for the
    /// keeper thread to trim it, or, without one
    /// ([`StoreOptions::background_trims`] off), trims it here. Call
    /// without holding a chunk's lock.
    fn wait_for_space(&self, records: &[(RecordKind, u64)]) -> Result<()> {
        let journal = self.keeper.journal();
        if self.keeper_thread.is_some() {
            return journal.wait_for_space(records, super::keeper::SPACE_TIMEOUT);
        }
        self.keeper.checkpoint()?;
        // Fails at once if they can never fit.
        journal.wait_for_space(records, std::time::Duration::ZERO)
    }

    /// Appends an in-place-durable record for `open`: its in-place records
    /// below `bound` have their data on disk (the caller synced it).
    /// Returns the record's sequence number.
    fn mark_durable(&self, open: &OpenChunk, bound: u64) -> Result<u64> {
        let journal = self.keeper.journal();
        let record = [NewRecord {
            kind: RecordKind::InPlaceDurable,
            slot: 0,
            chunk: open.chunk,
            version: MapVersion(0),
            first_block: bound,
            blocks: 0,
            crcs: &[],
            data: &[],
        }];
        loop {
            if let Some(appended) = journal.append(&record)? {
                let mut state = open.write_state();
                state.durable_below = state.durable_below.max(bound);
                return Ok(appended[0].seq);
            }
            self.wait_for_space(&[(RecordKind::InPlaceDurable, 0)])?;
        }
    }

    /// Writes a forget record for `chunk` and makes it durable: the
    /// journal's earlier records of the chunk are never applied again,
    /// whatever replaces its file.
    fn forget_in_journal(&self, chunk: ChunkId) -> Result<()> {
        let journal = self.keeper.journal();
        let record = [NewRecord {
            kind: RecordKind::Forget,
            slot: 0,
            chunk,
            version: MapVersion(0),
            first_block: 0,
            blocks: 0,
            crcs: &[],
            data: &[],
        }];
        loop {
            if let Some(appended) = journal.append(&record)? {
                return journal.sync_below(appended[0].seq + 1);
            }
            self.wait_for_space(&[(RecordKind::Forget, 0)])?;
        }
    }
}

impl Plan {
    /// The data of blocks first..=last of a write of `data` at `offset`.
    fn whole_blocks(&self, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(((self.last - self.first + 1) * BLOCK_SIZE) as usize);
        if let Some(head) = &self.head {
            out.extend_from_slice(head);
        }
        if self.mid_first < self.mid_end {
            let from = (self.mid_first * BLOCK_SIZE - offset) as usize;
            let to = (self.mid_end * BLOCK_SIZE - offset) as usize;
            out.extend_from_slice(&data[from..to]);
        }
        if let Some(tail) = &self.tail {
            out.extend_from_slice(tail);
        }
        out
    }

    /// `all` (the data of blocks first..=last, or empty for a zeroing) in
    /// pieces of at most one record each: (first block, blocks, data).
    fn pieces<'a>(&'a self, all: &'a [u8]) -> Vec<(u64, u64, RecordKind, &'a [u8])> {
        let mut out = Vec::new();
        if self.in_place {
            // Patched edge blocks are writes, the middle in-place records.
            if let Some(head) = &self.head {
                out.push((self.first, 1, RecordKind::Write, &head[..]));
            }
            for m in &self.moves {
                out.push((m.first, m.blocks, RecordKind::Moved, &[][..]));
            }
            let mut block = self.mid_first;
            while self.moves.is_empty() && block < self.mid_end {
                let n = (self.mid_end - block).min(MAX_RECORD_BLOCKS);
                out.push((block, n, RecordKind::InPlace, &[][..]));
                block += n;
            }
            if let Some(tail) = &self.tail {
                out.push((self.last, 1, RecordKind::Write, &tail[..]));
            }
            return out;
        }
        if !all.is_empty() {
            let mut block = self.first;
            while block <= self.last {
                let n = (self.last + 1 - block).min(MAX_RECORD_BLOCKS);
                let at = ((block - self.first) * BLOCK_SIZE) as usize;
                let bytes = &all[at..at + (n * BLOCK_SIZE) as usize];
                out.push((block, n, RecordKind::Write, bytes));
                block += n;
            }
            return out;
        }
        // A zeroing: patched edge blocks are writes, the middle a zero record.
        if let Some(head) = &self.head {
            out.push((self.first, 1, RecordKind::Write, &head[..]));
        }
        if self.mid_first < self.mid_end {
            out.push((
                self.mid_first,
                self.mid_end - self.mid_first,
                RecordKind::Zero,
                &[][..],
            ));
        }
        if let Some(tail) = &self.tail {
            out.push((self.last, 1, RecordKind::Write, &tail[..]));
        }
        out
    }

    fn records<'a>(
        &'a self,
        chunk: ChunkId,
        version: MapVersion,
        pieces: &'a [(u64, u64, RecordKind, &'a [u8])],
    ) -> Vec<NewRecord<'a>> {
        pieces
            .iter()
            .map(|(first, blocks, kind, data)| {
                let at = (first - self.first) as usize;
                let moved = self.moves.iter().find(|m| m.first == *first);
                NewRecord {
                    kind: *kind,
                    slot: moved.map_or(0, |m| m.slot),
                    chunk,
                    version,
                    first_block: *first,
                    blocks: *blocks,
                    crcs: match (kind, moved) {
                        (RecordKind::Moved, Some(m)) => &m.crcs,
                        _ if kind.has_entries() => &self.entries[at..at + *blocks as usize],
                        _ => &[],
                    },
                    data: if *kind == RecordKind::Write {
                        data
                    } else {
                        &[]
                    },
                }
            })
            .collect()
    }
}

impl Drop for FileChunkStore {
    fn drop(&mut self) {
        self.keeper.stop();
        if let Some(thread) = self.keeper_thread.take() {
            let _ = thread.join();
        }
    }
}

impl OpenChunk {
    fn load(disk: &dyn Disk, path: &Path, chunk: ChunkId) -> Result<OpenChunk> {
        let file = disk
            .open(path, OpenMode::Existing)
            .map_err(|e| io_error(e, format_args!("opening chunk file {}", path.display())))?;
        let header = read_header(&*file, path, chunk)?;
        let data_offset = data_offset(header.chunk_size);
        let file_len = file
            .len()
            .map_err(|e| io_error(e, format_args!("inspecting chunk file {}", path.display())))?;
        let needed = chunk_file_len(header.format, header.chunk_size);
        if file_len < needed {
            return Err(Error::corrupt(format!(
                "chunk file {} is truncated: {file_len} bytes, but chunk {chunk:#x} of size {} \
                 needs {needed}; the replica is lost, delete the file so the MDS re-replicates it",
                path.display(),
                header.chunk_size,
            )));
        }
        let blocks = (header.chunk_size / BLOCK_SIZE) as usize;
        let mut raw = vec![0u8; blocks * 8];
        file.read_at(&mut raw, HEADER_LEN).map_err(|e| {
            io_error(
                e,
                format_args!("reading the CRC table of chunk file {}", path.display()),
            )
        })?;
        let crcs = raw
            .chunks_exact(8)
            .map(|b| {
                entry_from_disk(
                    header.format,
                    u64::from_le_bytes(b.try_into().expect("8-byte chunks")),
                )
            })
            .collect();
        let mut slots = Slots::new(blocks as u64);
        let slot1_at = if header.format >= 3 {
            let map_at = data_offset + header.chunk_size;
            let mut raw = vec![0u8; slot_map_len(header.chunk_size) as usize];
            file.read_at(&mut raw, map_at).map_err(|e| {
                io_error(
                    e,
                    format_args!("reading the slot map of chunk file {}", path.display()),
                )
            })?;
            for (word, bytes) in slots.0.iter_mut().zip(raw.chunks_exact(8)) {
                *word = u64::from_le_bytes(bytes.try_into().expect("8-byte chunks"));
            }
            map_at + slot_map_len(header.chunk_size)
        } else {
            0
        };
        Ok(OpenChunk {
            chunk,
            path: path.to_path_buf(),
            file,
            in_place_synced: AtomicU64::new(0),
            broken: std::sync::OnceLock::new(),
            chunk_size: header.chunk_size,
            data_offset,
            slot1_at,
            format: header.format,
            state: RwLock::new(ChunkState {
                version: header.version,
                crcs,
                deleted: false,
                dirty: false,
                failed: None,
                pending: Vec::new(),
                overlay: HashMap::new(),
                in_journal: Vec::new(),
                in_place_writes: 0,
                in_place_below: 0,
                durable_below: 0,
                slots,
                to_punch: Vec::new(),
            }),
            applying: parking_lot::Mutex::new(()),
        })
    }

    /// Whether and how the middle blocks of `plan` (a write) may go
    /// straight into the file: there must be enough of them, and none
    /// touched by a record that may still be in the journal (a replay would
    /// apply it again, over the new data, and the slots the file holds for
    /// them are the ones the replay starts from). Blocks that all read as
    /// zeros are written where they are; others (format 3) go to their
    /// other slot. Forgets the records below `tail_seq` (trimmed).
    fn in_place_mode(&self, state: &mut ChunkState, plan: &Plan, tail_seq: u64) -> InPlace {
        if plan.mid_end < plan.mid_first + IN_PLACE_MIN_BLOCKS {
            return InPlace::No;
        }
        state.forget_trimmed(tail_seq);
        if state
            .in_journal
            .iter()
            .any(|(_, first, end)| *first < plan.mid_end && plan.mid_first < *end)
        {
            return InPlace::No;
        }
        if state.crcs[plan.mid_first as usize..plan.mid_end as usize]
            .iter()
            .all(|e| *e == 0)
        {
            InPlace::Fresh
        } else if self.slot1_at != 0 {
            InPlace::Move
        } else {
            InPlace::No
        }
    }

    /// Writes `data`, the middle blocks of `plan`, into their other slots;
    /// returns the records to append. `None` when the disk has no room for
    /// them (the write goes through the journal instead, into the space the
    /// blocks hold).
    fn write_moved(
        &self,
        state: &ChunkState,
        plan: &Plan,
        data: &[u8],
    ) -> Option<Result<Vec<Move>>> {
        for (first, end, slot) in state.slots.runs(plan.mid_first, plan.mid_end) {
            let at = self.block_at(1 - slot, first);
            if let Err(e) = self.file.allocate(at, (end - first) * BLOCK_SIZE) {
                let e = io_error(
                    e,
                    format_args!(
                        "allocating blocks {first}..{end} of chunk {:#x} in slot {} of {}",
                        self.chunk,
                        1 - slot,
                        self.path.display()
                    ),
                );
                return (e.kind() != ErrorKind::NoSpace).then_some(Err(e));
            }
        }
        let mut moves = Vec::new();
        for (first, end, slot) in state.slots.runs(plan.mid_first, plan.mid_end) {
            let from = ((first - plan.mid_first) * BLOCK_SIZE) as usize;
            let to = ((end - plan.mid_first) * BLOCK_SIZE) as usize;
            if let Err(e) = self.pwrite(&data[from..to], self.block_at(1 - slot, first)) {
                return Some(Err(e));
            }
            let mut block = first;
            while block < end {
                let blocks = (end - block).min(MAX_RECORD_BLOCKS);
                let range = block as usize..(block + blocks) as usize;
                let at = (block - plan.first) as usize;
                let mut crcs = plan.entries[at..at + blocks as usize].to_vec();
                crcs.extend_from_slice(&state.crcs[range]);
                moves.push(Move {
                    first: block,
                    blocks,
                    slot: 1 - slot,
                    crcs,
                });
                block += blocks;
            }
        }
        Some(Ok(moves))
    }

    /// The file offset of `block` in data slot `slot`.
    fn block_at(&self, slot: u8, block: u64) -> u64 {
        debug_assert!(slot == 0 || self.slot1_at != 0);
        let base = if slot == 0 {
            self.data_offset
        } else {
            self.slot1_at
        };
        base + block * BLOCK_SIZE
    }

    /// Syncs the file if in-place writes made before this call may not be
    /// durable yet (their records may be, at any time: the journal's pages
    /// are written back as the kernel likes).
    fn sync_in_place(&self, writes: u64) -> Result<()> {
        if self.in_place_synced.load(Ordering::Acquire) >= writes {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| {
            io_error(
                e,
                format_args!(
                    "syncing the data written in place into {}",
                    self.path.display()
                ),
            )
        })?;
        self.in_place_synced.fetch_max(writes, Ordering::AcqRel);
        // Big writes leave large folios in the page cache (ext4 has them
        // since Linux 6.x), and a later 4 KiB write into one walks all of
        // its buffer heads; dropped now that they are clean, later small
        // writes get small pages. The CRC table and the slot map stay
        // cached. A hint: a failure changes nothing.
        let _ = self.file.drop_cached(self.data_offset, self.chunk_size);
        if self.slot1_at != 0 {
            let _ = self.file.drop_cached(self.slot1_at, self.chunk_size);
        }
        Ok(())
    }

    /// At replay: checks the blocks of an in-place record against its
    /// entries. Where the data does not match, the write did not reach the
    /// disk before the crash (it was not flushed): the block reads as it did
    /// before the write, as zeros (a write goes in place only over blocks
    /// that read as zeros and that no record still in the journal touches;
    /// the file's table may hold the record's entry already, written by a
    /// trim cut short before it synced the file). Unless the record's data is known to have been `synced` (a
    /// flush covered it): then the block was damaged since, it keeps the
    /// record's entry and reads as `Corrupt`, to be repaired from another
    /// replica. Returns how many blocks kept their old entry.
    fn check_in_place(
        &self,
        state: &ChunkState,
        record: &mut Pending,
        synced: bool,
    ) -> Result<u64> {
        let mut data = vec![0u8; (record.blocks * BLOCK_SIZE) as usize];
        self.pread_blocks(state, record.first_block, &mut data)?;
        let mut lost = 0;
        for (i, bytes) in data.chunks_exact(BS).enumerate() {
            if block_entry(bytes) == record.crcs[i] {
                continue;
            }
            // Synced: the block keeps the record's entry, and reads and
            // scrubs find it (and block repair fetches it) unless a later
            // record of the journal rewrites it, as it may have before the
            // crash: that is why nothing is reported here.
            if !synced {
                record.crcs[i] = 0;
                lost += 1;
            }
        }
        Ok(lost)
    }

    /// At replay: checks the blocks of a moved record (`record.crcs` holds
    /// the new entries, then the old ones) in the slot they moved to, and
    /// moves them there in `state`. Where the data does not match, the write
    /// did not reach the disk before the crash (it was not flushed): the
    /// block stays in its old slot, whose data nothing overwrote, with its
    /// old entry. Unless the record's data is known to have been `synced`:
    /// then the block was damaged since and reads as `Corrupt` (see
    /// [`check_in_place`](OpenChunk::check_in_place)). Leaves the entries
    /// the blocks end up with in `record.crcs`; returns how many blocks
    /// kept their old content.
    fn check_moved(
        &self,
        state: &mut ChunkState,
        record: &mut Pending,
        slot: u8,
        synced: bool,
    ) -> Result<u64> {
        let blocks = record.blocks as usize;
        let mut data = vec![0u8; blocks * BS];
        self.pread(
            &mut data,
            self.block_at(slot, record.first_block),
            record.first_block * BLOCK_SIZE,
        )?;
        let mut lost = 0;
        for (i, bytes) in data.chunks_exact(BS).enumerate() {
            let block = record.first_block + i as u64;
            if block_entry(bytes) == record.crcs[i] || synced {
                state.slots.set(block, slot);
            } else {
                record.crcs[i] = record.crcs[blocks + i];
                state.slots.set(block, 1 - slot);
                lost += 1;
            }
        }
        record.crcs.truncate(blocks);
        state.to_punch.push(Punch {
            seq: record.seq,
            first: record.first_block,
            end: record.first_block + record.blocks,
            slot: 1 - slot,
        });
        Ok(lost)
    }

    /// Frees the old slots of blocks moved by records below `below`, which
    /// the journal no longer needs (their data in the new slot was synced).
    /// A block that moved back meanwhile keeps its data.
    pub(super) fn punch_moved(&self, state: &mut ChunkState, below: u64) {
        let (done, keep): (Vec<Punch>, Vec<Punch>) = std::mem::take(&mut state.to_punch)
            .into_iter()
            .partition(|p| p.seq < below);
        state.to_punch = keep;
        for p in done {
            for (first, end, slot) in state.slots.runs(p.first, p.end) {
                if slot != p.slot {
                    self.punch_slot(p.slot, first, end);
                }
            }
        }
    }

    pub(super) fn read_state(&self) -> RwLockReadGuard<'_, ChunkState> {
        self.state.read()
    }

    pub(super) fn write_state(&self) -> RwLockWriteGuard<'_, ChunkState> {
        self.state.write()
    }

    /// `Corrupt` once the replica's file failed (see [`ChunkState::failed`]).
    fn check_failed(&self, state: &ChunkState) -> Result<()> {
        // Lock-free: this runs on every read and write.
        match state.failed.as_ref().or(self.broken.get()) {
            Some(why) => Err(self.failed_error(why)),
            None => Ok(()),
        }
    }

    fn failed_error(&self, why: &str) -> Error {
        Error::corrupt(format!(
            "chunk {:#x} in {}: {why}; its content on disk is unknown: this replica is out of \
             service, read another",
            self.chunk,
            self.path.display()
        ))
    }

    /// Fails the replica like [`fail`](OpenChunk::fail) when a read under
    /// the read lock failed ([`OpenChunk::broken`]); call with the write
    /// lock.
    pub(super) fn absorb_broken(&self, state: &mut ChunkState) {
        if let (Some(why), None) = (self.broken.get(), &state.failed) {
            self.fail(state, why.clone());
        }
    }

    /// Takes the replica's file out of use after a failed apply or sync:
    /// its records are dropped (they cannot reach it).
    pub(super) fn fail(&self, state: &mut ChunkState, why: String) {
        tracing::error!(chunk = %self.chunk, path = %self.path.display(), %why,
            "chunk file failed: the replica is out of service");
        state.failed = Some(why);
        state.pending.clear();
        state.overlay.clear();
    }

    fn corrupt_block(&self, block: u64, stored: u64, computed: u64) -> Error {
        if stored == LOST_ENTRY {
            return Error::corrupt(format!(
                "chunk {:#x} block {block} (bytes {}..{} of the chunk) in {}: its CRC-64 entry \
                 is lost (the CRC table holds zero there: a sector of it was zeroed), so the \
                 block cannot be trusted; read another replica and report this one so the MDS \
                 repairs it",
                self.chunk,
                block * BLOCK_SIZE,
                (block + 1) * BLOCK_SIZE,
                self.path.display()
            ));
        }
        Error::corrupt(format!(
            "chunk {:#x} block {block} (bytes {}..{} of the chunk) in {} failed its CRC-64 check \
             (stored {stored:#018x}, computed {computed:#018x}): this replica is corrupt; read \
             another replica and report this one so the MDS repairs it",
            self.chunk,
            block * BLOCK_SIZE,
            (block + 1) * BLOCK_SIZE,
            self.path.display()
        ))
    }

    fn verify(&self, block: u64, entry: u64, bytes: &[u8]) -> Result<()> {
        debug_assert_ne!(entry, 0);
        let computed = crc64(bytes);
        if super::encode_block_crc(computed) != entry {
            return Err(self.corrupt_block(block, entry, computed));
        }
        Ok(())
    }

    /// Reads whole blocks from `first` into `buf`, each from its slot.
    fn pread_blocks(&self, state: &ChunkState, first: u64, buf: &mut [u8]) -> Result<()> {
        let end = first + buf.len() as u64 / BLOCK_SIZE;
        for (from, to, slot) in state.slots.runs(first, end) {
            let part = &mut buf
                [((from - first) * BLOCK_SIZE) as usize..((to - first) * BLOCK_SIZE) as usize];
            self.pread(part, self.block_at(slot, from), from * BLOCK_SIZE)?;
        }
        Ok(())
    }

    /// [`OpenChunk::pread_blocks`] if the page cache holds every block:
    /// `Ok(false)` (and `buf` meaningless) when a read would wait for the
    /// disk. A failing read is read again the blocking way, which reports
    /// it.
    fn pread_blocks_nowait(&self, state: &ChunkState, first: u64, buf: &mut [u8]) -> Result<bool> {
        let end = first + buf.len() as u64 / BLOCK_SIZE;
        for (from, to, slot) in state.slots.runs(first, end) {
            let part = &mut buf
                [((from - first) * BLOCK_SIZE) as usize..((to - first) * BLOCK_SIZE) as usize];
            match self.file.read_nowait(part, self.block_at(slot, from)) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(_) => {
                    self.pread(part, self.block_at(slot, from), from * BLOCK_SIZE)?;
                }
            }
        }
        Ok(true)
    }

    /// Writes whole blocks from `first`, each into its slot.
    fn pwrite_blocks(&self, state: &ChunkState, first: u64, data: &[u8]) -> Result<()> {
        let end = first + data.len() as u64 / BLOCK_SIZE;
        for (from, to, slot) in state.slots.runs(first, end) {
            let part =
                &data[((from - first) * BLOCK_SIZE) as usize..((to - first) * BLOCK_SIZE) as usize];
            self.pwrite(part, self.block_at(slot, from))?;
        }
        Ok(())
    }

    /// Reads `buf` at `file_offset`, the data of byte `chunk_offset` of the
    /// chunk.
    fn pread(&self, buf: &mut [u8], file_offset: u64, chunk_offset: u64) -> Result<()> {
        self.file.read_at(buf, file_offset).map_err(|e| {
            let eio = e.raw_os_error() == Some(libc::EIO);
            let err = io_error(
                e,
                format_args!(
                    "reading chunk {:#x} at offset {chunk_offset} from {}",
                    self.chunk,
                    self.path.display()
                ),
            );
            if !eio {
                return err;
            }
            // A disk error is a fact: the replica leaves service (the
            // server takes it out and the MDS copies the chunk anew).
            let why = format!("the disk failed a read ({})", err.message());
            tracing::error!(chunk = %self.chunk, path = %self.path.display(), %why,
                    "chunk file failed: the replica is out of service");
            self.failed_error(self.broken.get_or_init(|| why))
                .caused_by(err)
        })
    }

    fn pwrite(&self, buf: &[u8], file_offset: u64) -> Result<()> {
        self.file.write_at(buf, file_offset).map_err(|e| {
            io_error(
                e,
                format_args!(
                    "writing chunk {:#x} at file offset {file_offset} of {}",
                    self.chunk,
                    self.path.display()
                ),
            )
        })
    }

    /// Loads block `block` into `buf`, verified (zeros for an unwritten
    /// one), from the journal when its newest data is there.
    fn load_block(
        &self,
        state: &ChunkState,
        journal: Option<&Journal>,
        block: u64,
        buf: &mut [u8; BS],
    ) -> Result<()> {
        let entry = state.crcs[block as usize];
        if entry == 0 {
            buf.fill(0);
            return Ok(());
        }
        match (journal, state.overlay.get(&block)) {
            (Some(journal), Some((_, at))) => journal.read(buf, *at)?,
            _ => self.pread_blocks(state, block, buf)?,
        }
        self.verify(block, entry, buf)
    }

    /// Computes what writing or zeroing `[offset, offset + len)` changes;
    /// the range is checked and non-empty, and the caller holds the write
    /// lock. Reads and verifies the partial edge blocks, so a corrupt edge
    /// block fails the whole operation before anything changes.
    fn plan(
        &self,
        state: &ChunkState,
        journal: Option<&Journal>,
        offset: u64,
        len: u64,
        source: Source<'_>,
    ) -> Result<Plan> {
        let end = offset + len;
        let (first, last) = block_span(offset, len);
        let head_partial = !offset.is_multiple_of(BLOCK_SIZE) || end < (first + 1) * BLOCK_SIZE;
        let tail_partial = last != first && !end.is_multiple_of(BLOCK_SIZE);
        // An edge block that reads as zeros stays that way when zeroed.
        let keep_zero =
            |block: u64| matches!(source, Source::Zeros) && state.crcs[block as usize] == 0;
        let mut head = None;
        let mut tail = None;
        if head_partial && !keep_zero(first) {
            let mut buf = [0u8; BS];
            self.load_block(state, journal, first, &mut buf)?;
            patch(&mut buf, first, offset, end, source);
            head = Some(buf);
        }
        if tail_partial && !keep_zero(last) {
            let mut buf = [0u8; BS];
            self.load_block(state, journal, last, &mut buf)?;
            patch(&mut buf, last, offset, end, source);
            tail = Some(buf);
        }
        let mid_first = if head_partial { first + 1 } else { first };
        let mid_end = if tail_partial { last } else { last + 1 };
        let mut entries = Vec::with_capacity((last - first + 1) as usize);
        for block in first..=last {
            let entry = if block == first && head_partial {
                head.as_ref().map_or(0, |b| block_entry(b))
            } else if block == last && tail_partial {
                tail.as_ref().map_or(0, |b| block_entry(b))
            } else {
                match source {
                    // The sender's CRC of a whole block is its entry.
                    Source::Data(_, Some(crcs)) => {
                        super::encode_block_crc(crcs[(block - first) as usize])
                    }
                    Source::Data(data, None) => {
                        let at = (block * BLOCK_SIZE - offset) as usize;
                        block_entry(&data[at..at + BS])
                    }
                    Source::Zeros => 0,
                }
            };
            entries.push(entry);
        }
        Ok(Plan {
            first,
            last,
            head,
            tail,
            mid_first,
            mid_end,
            entries,
            in_place: false,
            moves: Vec::new(),
        })
    }

    /// Writes or zeroes `[offset, offset + len)` straight into the file
    /// (incoming replicas, which are synced whole before they are used);
    /// the range is checked and non-empty, and the caller holds the write
    /// lock.
    fn apply_locked(
        &self,
        state: &mut ChunkState,
        offset: u64,
        len: u64,
        source: Source<'_>,
    ) -> Result<()> {
        let plan = self.plan(state, None, offset, len, source)?;
        // Data before its CRC entries: a crash in between leaves a block
        // that fails its check (never wrong data served).
        if let Some(head) = &plan.head {
            self.pwrite_blocks(state, plan.first, head)?;
        }
        if let (Source::Data(data, _), true) = (source, plan.mid_first < plan.mid_end) {
            let from = (plan.mid_first * BLOCK_SIZE - offset) as usize;
            let to = (plan.mid_end * BLOCK_SIZE - offset) as usize;
            self.pwrite_blocks(state, plan.mid_first, &data[from..to])?;
        }
        if let Some(tail) = &plan.tail {
            self.pwrite_blocks(state, plan.last, tail)?;
        }
        self.write_entries(plan.first, &plan.entries)?;
        state.crcs[plan.first as usize..=plan.last as usize].copy_from_slice(&plan.entries);
        if let (Source::Zeros, true) = (source, plan.mid_first < plan.mid_end) {
            // Their entries say zero already; freeing the space is a bonus.
            self.punch_hole(state, plan.mid_first, plan.mid_end);
        }
        Ok(())
    }

    fn write_entries(&self, first: u64, entries: &[u64]) -> Result<()> {
        let mut raw = Vec::with_capacity(entries.len() * 8);
        for &e in entries {
            raw.extend_from_slice(&entry_to_disk(self.format, e).to_le_bytes());
        }
        self.pwrite(&raw, HEADER_LEN + first * 8)
    }

    /// Records in the chunk's state what `records` (of `plan`), now in the
    /// journal, changed: CRC entries, the blocks to read from the journal,
    /// the records to apply.
    fn note_appended(
        &self,
        state: &mut ChunkState,
        plan: &Plan,
        records: &[NewRecord<'_>],
        appended: &[Appended],
        keeper: &Keeper,
    ) {
        state.crcs[plan.first as usize..=plan.last as usize].copy_from_slice(&plan.entries);
        // Bounded by this chunk's records in the journal, whatever writes
        // it gets (a lock-free read of the tail).
        state.forget_trimmed(keeper.journal().tail_seq());
        for (r, a) in records.iter().zip(appended) {
            state
                .in_journal
                .push((a.seq, r.first_block, r.first_block + r.blocks));
            if matches!(r.kind, RecordKind::InPlace | RecordKind::Moved) {
                state.in_place_below = a.seq + 1;
            }
            if r.kind == RecordKind::Moved {
                for block in r.first_block..r.first_block + r.blocks {
                    state.slots.set(block, r.slot);
                }
                state.to_punch.push(Punch {
                    seq: a.seq,
                    first: r.first_block,
                    end: r.first_block + r.blocks,
                    slot: 1 - r.slot,
                });
            }
            for i in 0..r.blocks {
                let block = r.first_block + i;
                match r.kind {
                    RecordKind::Write => {
                        state
                            .overlay
                            .insert(block, (a.seq, a.data_at + i * BLOCK_SIZE));
                    }
                    _ => {
                        state.overlay.remove(&block);
                    }
                }
            }
            let data = (r.kind == RecordKind::Write)
                .then(|| keeper.charge(r.data.len() as u64))
                .flatten()
                .map(|charge| (Box::<[u8]>::from(r.data), charge));
            state.pending.push(Pending {
                seq: a.seq,
                kind: r.kind,
                first_block: r.first_block,
                blocks: r.blocks,
                // A moved record's old entries are for a replay only.
                crcs: r.crcs[..r.crcs.len().min(r.blocks as usize)].to_vec(),
                data_at: a.data_at,
                data,
            });
        }
    }

    /// Applies up to `max` of this chunk's pending records with a sequence
    /// number below `below` to its file (not synced); returns whether more
    /// such records remain. The caller made them durable in `journal` first
    /// and holds [`OpenChunk::applying`], then the write lock.
    pub(super) fn apply_pending(
        &self,
        state: &mut ChunkState,
        journal: &Journal,
        below: u64,
        max: usize,
    ) -> std::result::Result<bool, ApplyError> {
        let eligible = state.pending.iter().take_while(|p| p.seq < below).count();
        let n = eligible.min(max);
        if n == 0 {
            return Ok(false);
        }
        self.apply_first(state, journal, n)?;
        Ok(eligible > n)
    }

    /// The keeper's [`OpenChunk::apply_pending`]: the data of write records
    /// and then their CRC entries and slots go to the file with the chunk's
    /// lock released, so the chunk's writers and readers wait only for the
    /// bookkeeping in memory. (Held through the apply, the lock stalled
    /// 4 KiB random writes 3-30 ms at every trim on a busy 2-core machine,
    /// where its holder gets preempted; held through the CRC entries' writes
    /// alone, 1-10 ms.) Safe unlocked: `applying` keeps other appliers out,
    /// and only appliers write a chunk file's tables; no write goes into
    /// the file over blocks that records still in the journal touch (see
    /// [`OpenChunk::in_place_mode`]), so their slots stay put; readers take
    /// those blocks from the journal until the records leave
    /// [`ChunkState::pending`], after their data is in the file. A record
    /// that zeroes blocks is applied under the lock, after the data before
    /// it and before the data after it.
    pub(super) fn apply_some(
        &self,
        journal: &Journal,
        below: u64,
        max: usize,
    ) -> std::result::Result<bool, ApplyError> {
        let applying = self.applying.lock();
        self.apply_some_holding(applying, journal, below, max)
    }

    /// [`OpenChunk::apply_some`] unless another applier (the keeper, at a
    /// low priority in the background) is at it: then `Ok(None)` at once,
    /// and the records wait for that applier. A flush must not wait for a
    /// thread that everything else preempts.
    pub(super) fn try_apply_some(
        &self,
        journal: &Journal,
        below: u64,
        max: usize,
    ) -> std::result::Result<Option<bool>, ApplyError> {
        match self.applying.try_lock() {
            Some(applying) => self
                .apply_some_holding(applying, journal, below, max)
                .map(Some),
            None => Ok(None),
        }
    }

    fn apply_some_holding(
        &self,
        _applying: parking_lot::MutexGuard<'_, ()>,
        journal: &Journal,
        below: u64,
        max: usize,
    ) -> std::result::Result<bool, ApplyError> {
        let (first_seq, n, eligible, writes, tables) = {
            let mut state = self.write_state();
            self.absorb_broken(&mut state);
            if state.deleted || state.failed.is_some() {
                return Ok(false);
            }
            let eligible = state.pending.iter().take_while(|p| p.seq < below).count();
            let n = state.pending[..eligible.min(max)]
                .iter()
                .take_while(|p| p.kind.writes_data_only())
                .count();
            if n == 0 {
                return self.apply_pending(&mut state, journal, below, 1);
            }
            let ChunkState { pending, slots, .. } = &mut *state;
            let mut writes = Vec::new();
            let mut tables = Tables::default();
            for p in &mut pending[..n] {
                tables.note(p, slots);
                if p.kind == RecordKind::Write {
                    let runs: Vec<(u64, usize, usize)> = slots
                        .runs(p.first_block, p.first_block + p.blocks)
                        .map(|(from, to, slot)| {
                            (
                                self.block_at(slot, from),
                                ((from - p.first_block) * BLOCK_SIZE) as usize,
                                ((to - p.first_block) * BLOCK_SIZE) as usize,
                            )
                        })
                        .collect();
                    writes.push((p.data.take(), p.data_at, p.blocks, runs));
                }
            }
            (pending[0].seq, n, eligible, writes, tables)
        };
        let mut buf = Vec::new();
        for (data, data_at, blocks, runs) in &writes {
            let bytes = match data {
                Some((data, _)) => &data[..],
                None => {
                    buf.resize((blocks * BLOCK_SIZE) as usize, 0);
                    journal
                        .read(&mut buf, *data_at)
                        .map_err(ApplyError::Journal)?;
                    &buf[..]
                }
            };
            for &(at, from, to) in runs {
                self.pwrite(&bytes[from..to], at)
                    .map_err(ApplyError::Chunk)?;
            }
        }
        drop(writes);
        // The tables too: only appliers write them (an incoming replica,
        // written straight, is another file), and data before entries.
        self.write_tables(&tables).map_err(ApplyError::Chunk)?;
        let mut state = self.write_state();
        // Only a failed file (its records dropped) or a deleted chunk
        // changes the pending records of a chunk being applied.
        if state.deleted
            || state.failed.is_some()
            || state.pending.first().map(|p| p.seq) != Some(first_seq)
        {
            return Ok(false);
        }
        Self::forget_applied(&mut state, n);
        Ok(eligible > n)
    }

    /// Applies the first `n` pending records (data, CRC entries, slots,
    /// holes) and drops them from the pending list.
    fn apply_first(
        &self,
        state: &mut ChunkState,
        journal: &Journal,
        n: usize,
    ) -> std::result::Result<(), ApplyError> {
        let mut buf = Vec::new();
        let mut tables = Tables::default();
        for p in &state.pending[..n] {
            tables.note(p, &state.slots);
            match p.kind {
                RecordKind::Write => {
                    let data = match &p.data {
                        Some((data, _)) => &data[..],
                        None => {
                            buf.resize((p.blocks * BLOCK_SIZE) as usize, 0);
                            journal
                                .read(&mut buf, p.data_at)
                                .map_err(ApplyError::Journal)?;
                            &buf[..]
                        }
                    };
                    self.pwrite_blocks(state, p.first_block, data)
                        .map_err(ApplyError::Chunk)?;
                }
                // The data is in the file already.
                RecordKind::InPlace | RecordKind::Moved => {}
                _ => self.punch_hole(state, p.first_block, p.first_block + p.blocks),
            }
        }
        self.write_tables(&tables).map_err(ApplyError::Chunk)?;
        Self::forget_applied(state, n);
        Ok(())
    }

    /// Drops the first `n` pending records, applied to the file.
    fn forget_applied(state: &mut ChunkState, n: usize) {
        let ChunkState {
            pending, overlay, ..
        } = state;
        for p in pending.drain(..n) {
            if p.kind == RecordKind::Write {
                for block in p.first_block..p.first_block + p.blocks {
                    if overlay.get(&block).is_some_and(|(seq, _)| *seq == p.seq) {
                        overlay.remove(&block);
                    }
                }
            }
        }
    }

    /// Writes the CRC entries and slots that applied records set.
    fn write_tables(&self, tables: &Tables) -> Result<()> {
        self.write_entry_map(&tables.entries)?;
        self.write_slot_map(&tables.slots)
    }

    /// Writes CRC table entries (block -> entry): a page at a time where a
    /// page has several, else one entry at a time.
    fn write_entry_map(&self, entries: &BTreeMap<u64, u64>) -> Result<()> {
        const PER_PAGE: u64 = BLOCK_SIZE / 8;
        let mut it = entries.iter().peekable();
        let mut page = [0u8; BS];
        while let Some((&first, _)) = it.peek() {
            let index = first / PER_PAGE;
            let mut in_page = Vec::new();
            while let Some((&block, &entry)) = it.peek() {
                if block / PER_PAGE != index {
                    break;
                }
                in_page.push((block, entry));
                it.next();
            }
            if in_page.len() <= 2 {
                for (block, entry) in in_page {
                    let raw = entry_to_disk(self.format, entry);
                    self.pwrite(&raw.to_le_bytes(), HEADER_LEN + block * 8)?;
                }
                continue;
            }
            // The page as the file holds it (applied entries only), patched.
            let at = HEADER_LEN + index * BLOCK_SIZE;
            self.file.read_at(&mut page, at).map_err(|e| {
                io_error(
                    e,
                    format_args!("reading the CRC table of {}", self.path.display()),
                )
            })?;
            for (block, entry) in in_page {
                let o = ((block % PER_PAGE) * 8) as usize;
                page[o..o + 8].copy_from_slice(&entry_to_disk(self.format, entry).to_le_bytes());
            }
            self.pwrite(&page, at)?;
        }
        Ok(())
    }

    /// Writes the slots of `slots` (block -> slot) into the file's slot
    /// map, a page at a time. (Only theirs: other blocks of a page may have
    /// moved by records not applied yet, maybe not durable.)
    fn write_slot_map(&self, slots: &BTreeMap<u64, u8>) -> Result<()> {
        const PER_PAGE: u64 = BLOCK_SIZE * 8;
        let map_at = self.data_offset + self.chunk_size;
        let mut it = slots.iter().peekable();
        let mut page = [0u8; BS];
        while let Some(&(&first, _)) = it.peek() {
            let index = first / PER_PAGE;
            let at = map_at + index * BLOCK_SIZE;
            self.file.read_at(&mut page, at).map_err(|e| {
                io_error(
                    e,
                    format_args!("reading the slot map of {}", self.path.display()),
                )
            })?;
            while let Some(&(&block, &slot)) = it.peek() {
                if block / PER_PAGE != index {
                    break;
                }
                let bit = block % PER_PAGE;
                let byte = &mut page[(bit / 8) as usize];
                *byte = (*byte & !(1 << (bit % 8))) | (slot << (bit % 8));
                it.next();
            }
            self.pwrite(&page, at)?;
        }
        Ok(())
    }

    /// Allocates the file space of blocks `[first, first + blocks)` where
    /// their data is (they may be holes). `NoSpace` when the disk is full.
    fn allocate(&self, state: &ChunkState, first: u64, blocks: u64) -> Result<()> {
        for (from, to, slot) in state.slots.runs(first, first + blocks) {
            self.file
                .allocate(self.block_at(slot, from), (to - from) * BLOCK_SIZE)
                .map_err(|e| {
                    io_error(
                        e,
                        format_args!(
                            "allocating blocks {from}..{to} of chunk {:#x} in {}",
                            self.chunk,
                            self.path.display()
                        ),
                    )
                })?;
        }
        Ok(())
    }

    /// Frees the space of blocks `[first, end)` (which read as zeros)
    /// where their data is.
    fn punch_hole(&self, state: &ChunkState, first: u64, end: u64) {
        for (from, to, slot) in state.slots.runs(first, end) {
            self.punch_slot(slot, from, to);
        }
    }

    fn punch_slot(&self, slot: u8, first: u64, end: u64) {
        let at = self.block_at(slot, first);
        if let Err(e) = self.file.punch_hole(at, (end - first) * BLOCK_SIZE) {
            tracing::debug!(
                chunk = %self.chunk,
                error = %e,
                "punching a hole failed; freed blocks keep their space"
            );
        }
    }

    /// Fills `buf` from `offset` under the chunk's read lock (`state`),
    /// each block checked. With `deferred`, runs of whole blocks in the
    /// file that are not in the page cache are left out of `buf` and
    /// listed there instead (see [`ChunkStore::read_or_defer`]).
    fn read_locked(
        &self,
        state: &ChunkState,
        journal: Option<&Journal>,
        offset: u64,
        buf: &mut [u8],
        mut deferred: Option<&mut Vec<DeferredRun>>,
    ) -> Result<()> {
        let end = offset + buf.len() as u64;
        let (first, last) = block_span(offset, buf.len() as u64);
        let in_journal = |block: u64| journal.and_then(|_| state.overlay.get(&block));
        let mut block = first;
        while block <= last {
            let block_start = block * BLOCK_SIZE;
            let lo = offset.max(block_start);
            let hi = end.min(block_start + BLOCK_SIZE);
            let entry = state.crcs[block as usize];
            if entry == 0 {
                buf[(lo - offset) as usize..(hi - offset) as usize].fill(0);
                block += 1;
            } else if lo == block_start
                && hi == block_start + BLOCK_SIZE
                && in_journal(block).is_none()
            {
                // A run of whole written blocks in the file: one pread
                // straight into the caller's buffer, then verify each block
                // in place.
                let mut run_end = block + 1;
                while run_end <= last
                    && (run_end + 1) * BLOCK_SIZE <= end
                    && state.crcs[run_end as usize] != 0
                    && in_journal(run_end).is_none()
                {
                    run_end += 1;
                }
                let out = &mut buf
                    [(block_start - offset) as usize..(run_end * BLOCK_SIZE - offset) as usize];
                if let Some(deferred) = deferred.as_deref_mut() {
                    if !self.pread_blocks_nowait(state, block, out)? {
                        for (from, to, slot) in state.slots.runs(block, run_end) {
                            deferred.push(DeferredRun {
                                file_offset: self.block_at(slot, from),
                                buf_offset: (from * BLOCK_SIZE - offset) as usize,
                                blocks: from..to,
                            });
                        }
                        block = run_end;
                        continue;
                    }
                } else {
                    self.pread_blocks(state, block, out)?;
                }
                for (i, bytes) in out.chunks_exact(BS).enumerate() {
                    let b = block + i as u64;
                    self.verify(b, state.crcs[b as usize], bytes)?;
                }
                block = run_end;
            } else {
                let mut whole = [0u8; BS];
                self.load_block(state, journal, block, &mut whole)?;
                buf[(lo - offset) as usize..(hi - offset) as usize].copy_from_slice(
                    &whole[(lo - block_start) as usize..(hi - block_start) as usize],
                );
                block += 1;
            }
        }
        Ok(())
    }
}

/// Copies the part of `[offset, end)` that falls in `block` into `buf`.
fn patch(buf: &mut [u8; BS], block: u64, offset: u64, end: u64, source: Source<'_>) {
    let block_start = block * BLOCK_SIZE;
    let lo = offset.max(block_start);
    let hi = end.min(block_start + BLOCK_SIZE);
    debug_assert!(lo < hi);
    let dst = &mut buf[(lo - block_start) as usize..(hi - block_start) as usize];
    match source {
        Source::Data(data, _) => {
            dst.copy_from_slice(&data[(lo - offset) as usize..(hi - offset) as usize])
        }
        Source::Zeros => dst.fill(0),
    }
}

/// A CRC table entry as the chunk file of format `format` holds it, in
/// today's in-memory encoding (see the format in [`crate::chunk`]).
fn entry_from_disk(format: u32, raw: u64) -> u64 {
    match (format, raw) {
        (1, raw) => upgrade_entry(raw),
        (_, 0) => LOST_ENTRY,
        (_, 1) => 0,
        (_, raw) => raw,
    }
}

/// The inverse of [`entry_from_disk`]. (Format 1 has no lost entries: a
/// file of format 1 never holds one in memory.)
fn entry_to_disk(format: u32, entry: u64) -> u64 {
    match (format, entry) {
        (1, entry) => entry,
        (_, 0) => 1,
        (_, LOST_ENTRY) => 0,
        (_, entry) => entry,
    }
}

/// Where the data region (slot 0) starts for chunks of `chunk_size`.
fn data_offset(chunk_size: u64) -> u64 {
    let table = chunk_size / BLOCK_SIZE * 8;
    HEADER_LEN + table.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

/// The length of the slot map of a format-3 file of chunks of
/// `chunk_size`: a bit per block, padded to whole pages.
fn slot_map_len(chunk_size: u64) -> u64 {
    (chunk_size / BLOCK_SIZE)
        .div_ceil(8)
        .div_ceil(BLOCK_SIZE)
        .max(1)
        * BLOCK_SIZE
}

/// The length of a chunk file of `format` for chunks of `chunk_size`
/// (sparse where never written).
fn chunk_file_len(format: u32, chunk_size: u64) -> u64 {
    let slot0_end = data_offset(chunk_size) + chunk_size;
    if format >= 3 {
        slot0_end + slot_map_len(chunk_size) + chunk_size
    } else {
        slot0_end
    }
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut buf = [0u8; HEADER_LEN as usize];
        buf[0..8].copy_from_slice(&MAGIC);
        buf[8..12].copy_from_slice(&self.format.to_le_bytes());
        buf[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        buf[16..24].copy_from_slice(&self.chunk.0.to_le_bytes());
        buf[24..32].copy_from_slice(&self.version.0.to_le_bytes());
        buf[32..40].copy_from_slice(&self.chunk_size.to_le_bytes());
        let crc = crc64(&buf);
        buf[HEADER_CRC_AT..HEADER_CRC_AT + 8].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes and checks a header read from `path`, which must hold `chunk`.
    fn decode(buf: &[u8; HEADER_LEN as usize], path: &Path, chunk: ChunkId) -> Result<Header> {
        let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        if buf[0..8] != MAGIC {
            return Err(Error::corrupt(format!(
                "{} is not a pstorage chunk file (bad magic): its header is destroyed or it does \
                 not belong in the chunk directory; move it away",
                path.display()
            )));
        }
        let format = u32_at(8);
        if format > FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "chunk file {} has format version {format}, but this build reads format \
                     versions up to {FORMAT_VERSION}: upgrade pstorage to serve it",
                    path.display()
                ),
            ));
        }
        if format == 0 {
            return Err(Error::corrupt(format!(
                "chunk file {} has format version 0, which no pstorage writes: its header is \
                 corrupt",
                path.display()
            )));
        }
        // Formats 1 to 3 share the header; they differ in how the CRC
        // table encodes entries (`entry_from_disk`) and in format 3's
        // second data slot.
        let stored_crc = u64_at(HEADER_CRC_AT);
        let mut zeroed = *buf;
        zeroed[HEADER_CRC_AT..HEADER_CRC_AT + 8].fill(0);
        let computed = crc64(&zeroed);
        if stored_crc != computed || u32_at(12) as u64 != HEADER_LEN {
            return Err(Error::corrupt(format!(
                "the header of chunk file {} failed its CRC-64 check (stored {stored_crc:#018x}, \
                 computed {computed:#018x}): the replica is unusable; delete the file so the MDS \
                 re-replicates the chunk",
                path.display()
            )));
        }
        let header = Header {
            format,
            chunk: ChunkId(u64_at(16)),
            version: MapVersion(u64_at(24)),
            chunk_size: u64_at(32),
        };
        if header.chunk != chunk {
            return Err(Error::corrupt(format!(
                "chunk file {} holds chunk {:#x}, not {chunk:#x} as its name says: move it away",
                path.display(),
                header.chunk
            )));
        }
        validate_chunk_size(header.chunk_size).map_err(|e| {
            Error::corrupt(format!(
                "chunk file {} has a bad chunk size: {}",
                path.display(),
                e.message()
            ))
        })?;
        Ok(header)
    }
}

fn read_header(file: &dyn DiskFile, path: &Path, chunk: ChunkId) -> Result<Header> {
    let mut buf = [0u8; HEADER_LEN as usize];
    file.read_at(&mut buf, 0).map_err(|e| {
        io_error(
            e,
            format_args!("reading the header of chunk file {}", path.display()),
        )
    })?;
    Header::decode(&buf, path, chunk)
}

/// The chunk id of a chunk file name (`<16 hex>.chunk`).
fn parse_chunk_name(name: &str) -> Option<ChunkId> {
    let stem = name.strip_suffix(CHUNK_SUFFIX)?;
    if stem.len() != 16 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(stem, 16).ok().map(ChunkId)
}

impl ChunkStore for FileChunkStore {
    fn create(&self, chunk: ChunkId, version: MapVersion, chunk_size: u64) -> Result<()> {
        validate_chunk_size(chunk_size).map_err(|e| e.context(format_args!("chunk {chunk:#x}")))?;
        if self.check_existing(chunk, version, chunk_size)?.is_some() {
            return Ok(());
        }
        let header = Header {
            format: FORMAT_VERSION,
            chunk,
            version,
            chunk_size,
        };
        let tmp = self.tmp_path(chunk);
        // The slow part (write + fsync) happens on a private file; only the
        // rename runs under the table lock.
        if let Err(e) = self.write_new_file(&tmp, &header) {
            let _ = self.disk.remove(&tmp);
            return Err(e);
        }
        let path = self.chunk_path(chunk);
        let renamed = {
            let mut table = self.table();
            if self.disk.exists(&path).unwrap_or(false) {
                false
            } else {
                let result = self.disk.rename(&tmp, &path);
                table.generation += 1;
                result.map_err(|e| {
                    io_error(
                        e,
                        format_args!("renaming {} to {}", tmp.display(), path.display()),
                    )
                })?;
                true
            }
        };
        if !renamed {
            // A concurrent create won the race: same answer as if it had
            // finished before we started.
            let _ = self.disk.remove(&tmp);
            return match self.check_existing(chunk, version, chunk_size)? {
                Some(()) => Ok(()),
                None => Err(Error::new(
                    ErrorKind::Busy,
                    format!("chunk {chunk:#x} was created and deleted concurrently: retry"),
                )),
            };
        }
        self.sync_dir()
    }

    fn version(&self, chunk: ChunkId) -> Result<MapVersion> {
        let open = self.get(chunk)?;
        let state = open.read_state();
        if state.deleted {
            return Err(missing_chunk(chunk));
        }
        Ok(state.version)
    }

    fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        let open = self.get(chunk)?;
        let mut state = open.write_state();
        if state.deleted {
            return Err(missing_chunk(chunk));
        }
        super::check_version_forward(chunk, state.version, version)?;
        if version == state.version {
            return Ok(());
        }
        let header = Header {
            format: open.format,
            chunk,
            version,
            chunk_size: open.chunk_size,
        };
        open.pwrite(&header.encode(), 0)?;
        open.file.sync_data().map_err(|e| {
            io_error(
                e,
                format_args!(
                    "syncing the new version of chunk file {}",
                    open.path.display()
                ),
            )
        })?;
        assert!(version > state.version, "a chunk version went backwards");
        state.version = version;
        Ok(())
    }

    fn check_usable(&self, chunk: ChunkId) -> Result<()> {
        let open = self.get(chunk)?;
        let state = open.read_state();
        if state.deleted {
            return Err(missing_chunk(chunk));
        }
        open.check_failed(&state)
    }

    fn chunk_size(&self, chunk: ChunkId) -> Result<u64> {
        let open = self.get(chunk)?;
        if open.read_state().deleted {
            return Err(missing_chunk(chunk));
        }
        Ok(open.chunk_size)
    }

    fn write_checked(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        self.apply(
            chunk,
            expected,
            offset,
            data.len() as u64,
            Source::Data(data, None),
            None,
        )
        .map(|_| ())
    }

    fn write_checked_crcs(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        data: &[u8],
        crcs: &[u64],
    ) -> Result<()> {
        super::check_piece_crcs_len(chunk, offset, data.len() as u64, crcs)?;
        self.apply(
            chunk,
            expected,
            offset,
            data.len() as u64,
            Source::Data(data, Some(crcs)),
            None,
        )
        .map(|_| ())
    }

    fn repair_block(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        block: u64,
        data: Option<&[u8]>,
    ) -> Result<bool> {
        check_repair(chunk, block, data)?;
        self.apply(
            chunk,
            Some(version),
            block * BLOCK_SIZE,
            BLOCK_SIZE,
            data.map_or(Source::Zeros, |d| Source::Data(d, None)),
            Some(block),
        )
    }

    fn zero_checked(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.apply(chunk, expected, offset, len, Source::Zeros, None)
            .map(|_| ())
    }

    fn read_checked(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let open = self.get(chunk)?;
        self.read_open(&open, expected, offset, buf, None)
            .map(|_| ())
    }

    fn read_or_defer(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<DeferredRead>> {
        let open = self.get(chunk)?;
        // Only a thread that can read through a ring defers (not one of the
        // blocking pool's, nor where io_uring is unavailable).
        let fd = match open.file.raw_fd() {
            Some(fd) if super::uring::available() => fd,
            _ => {
                return self
                    .read_open(&open, expected, offset, buf, None)
                    .map(|_| None)
            }
        };
        let mut runs = Vec::new();
        Ok(self
            .read_open(&open, expected, offset, buf, Some(&mut runs))?
            .map(|entries| DeferredRead::new(open, fd, runs, offset / BLOCK_SIZE, entries)))
    }

    fn flush(&self, chunk: ChunkId) -> Result<()> {
        let open = self.get(chunk)?;
        let below = {
            let mut state = open.write_state();
            if state.deleted {
                return Err(missing_chunk(chunk));
            }
            open.check_failed(&state)?;
            // Writes from now on mark the chunk dirty again; those before
            // are covered by the sync below.
            state.dirty = false;
            self.dirty.begin_flush(chunk);
            let unmarked =
                (state.in_place_below > state.durable_below).then_some(state.in_place_below);
            (
                state.pending.last().map(|p| p.seq + 1),
                state.in_place_writes,
                unmarked,
            )
        };
        let (below, in_place_writes, unmarked) = below;
        // Without the chunk lock: writes go on while the journal syncs
        // (one sync for every flush waiting meanwhile). Records already
        // applied to the chunk file were durable before they were applied,
        // and stay in the journal until the file is synced. Data written in
        // place is synced first, and the journal says so.
        let journal = self.keeper.journal();
        let result = open
            .sync_in_place(in_place_writes)
            .and_then(|()| match unmarked {
                Some(bound) => self.mark_durable(&open, bound).map(|seq| Some(seq + 1)),
                None => Ok(None),
            })
            .and_then(|marker| match below.max(marker) {
                Some(below) => journal.sync_below(below),
                None => Ok(()),
            });
        self.dirty.end_flush(chunk, result.is_ok());
        if let Err(e) = result {
            if open.in_place_synced.load(Ordering::Acquire) < in_place_writes {
                // The page cache may have dropped what did not reach the
                // disk: a retried sync could report a false success.
                let mut state = open.write_state();
                open.fail(
                    &mut state,
                    format!("syncing it failed ({e}); writes since its last sync may be lost"),
                );
            }
            return Err(e);
        }
        // Apply what is durable now, so reads go to the chunk file (as
        // the trim does: the data with the chunk's lock released), unless
        // the keeper is applying this chunk already.
        if let Some(below) = below {
            match open.try_apply_some(journal, below, super::keeper::APPLY_BATCH) {
                Ok(_) => {}
                // Durable in the journal all the same: applied later.
                Err(ApplyError::Journal(e)) => return Err(e),
                Err(ApplyError::Chunk(e)) => {
                    let mut state = open.write_state();
                    open.fail(&mut state, format!("applying the journal failed: {e}"));
                    return open.check_failed(&state);
                }
            }
        }
        Ok(())
    }

    fn delete(&self, chunk: ChunkId) -> Result<()> {
        let path = self.chunk_path(chunk);
        if self.disk.exists(&path).unwrap_or(true)
            || self
                .disk
                .exists(&self.bad_chunk_path(chunk))
                .unwrap_or(true)
        {
            self.forget_in_journal(chunk)?;
        }
        let removed = {
            let mut table = self.table();
            let removed = table.chunks.remove(&chunk);
            let result = self.disk.remove(&path);
            table.generation += 1;
            if let Err(e) = self.disk.remove(&self.bad_chunk_path(chunk)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io_error(
                        e,
                        format_args!("deleting {}", self.bad_chunk_path(chunk).display()),
                    ));
                }
            }
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    if let Some(open) = removed {
                        table.chunks.insert(chunk, open);
                    }
                    return Err(io_error(
                        e,
                        format_args!("deleting chunk file {}", path.display()),
                    ));
                }
            }
            removed
        };
        if let Some(open) = removed {
            // Outside the table lock: this may wait for a long read.
            open.write_state().deleted = true;
        }
        self.dirty.forget(chunk);
        self.sync_dir()
    }

    fn list(&self) -> Result<Vec<ChunkReplicaInfo>> {
        let names = self.disk.list(&self.chunks_dir).map_err(|e| {
            io_error(
                e,
                format_args!("listing the chunk directory {}", self.chunks_dir.display()),
            )
        })?;
        let mut out = Vec::new();
        for name in names {
            let Some(chunk) = parse_chunk_name(&name) else {
                continue;
            };
            let entry_path = self.chunks_dir.join(&name);
            let cached = self.table().chunks.get(&chunk).cloned();
            let version = match cached {
                Some(open) => {
                    let state = open.read_state();
                    if state.deleted {
                        continue;
                    }
                    Ok(state.version)
                }
                None => self
                    .disk
                    .open(&entry_path, OpenMode::Existing)
                    .map_err(|e| {
                        io_error(
                            e,
                            format_args!("opening chunk file {}", entry_path.display()),
                        )
                    })
                    .and_then(|f| read_header(&*f, &entry_path, chunk))
                    .map(|h| h.version),
            };
            match version {
                Ok(version) => out.push(ChunkReplicaInfo { chunk, version }),
                // Deleted between readdir and open.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                // A file from a newer pstorage: refuse to run rather than
                // let the MDS think the replica is gone.
                Err(e) if e.kind() == ErrorKind::Io => return Err(e),
                Err(e) => {
                    tracing::warn!(%chunk, error = %e, "chunk replica not reported: unreadable header")
                }
            }
        }
        out.sort_by_key(|c| c.chunk);
        Ok(out)
    }

    fn mark_bad(&self, chunk: ChunkId) -> Result<()> {
        let path = self.chunk_path(chunk);
        let bad = self.bad_chunk_path(chunk);
        let removed = {
            let mut table = self.table();
            match self.disk.rename(&path, &bad) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return if self.disk.exists(&bad).unwrap_or(false) {
                        Ok(())
                    } else {
                        Err(missing_chunk(chunk))
                    };
                }
                Err(e) => {
                    return Err(io_error(
                        e,
                        format_args!("renaming {} to {}", path.display(), bad.display()),
                    ))
                }
            }
            table.generation += 1;
            table.chunks.remove(&chunk)
        };
        if let Some(open) = removed {
            open.write_state().deleted = true;
        }
        self.dirty.forget(chunk);
        self.sync_dir()
    }

    fn list_bad(&self) -> Result<Vec<ChunkId>> {
        let names = self.disk.list(&self.chunks_dir).map_err(|e| {
            io_error(
                e,
                format_args!("listing the chunk directory {}", self.chunks_dir.display()),
            )
        })?;
        let mut out = Vec::new();
        for name in names {
            if let Some(stem) = name.strip_suffix(BAD_SUFFIX) {
                if let Some(chunk) = parse_chunk_name(&format!("{stem}{CHUNK_SUFFIX}")) {
                    out.push(chunk);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn is_bad(&self, chunk: ChunkId) -> Result<bool> {
        let path = self.bad_chunk_path(chunk);
        self.disk
            .exists(&path)
            .map_err(|e| io_error(e, format_args!("inspecting {}", path.display())))
    }

    fn unverified(&self) -> Vec<ChunkId> {
        self.unverified_set().iter().copied().collect()
    }

    fn verified(&self, chunk: ChunkId) -> Result<()> {
        match self.flush(chunk) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Corrupt) => {}
            Err(e) => return Err(e),
        }
        let mut unverified = self.unverified_set();
        if unverified.remove(&chunk) && unverified.is_empty() {
            // Recovery is over: drop the checked ids from the log, so the
            // next unclean stop does not check them again.
            self.dirty.compact_now()?;
        }
        Ok(())
    }

    fn close_clean(&self) -> Result<()> {
        self.keeper.checkpoint()?;
        let unverified = self.unverified_set().clone();
        for chunk in self.dirty.dirty_chunks() {
            if unverified.contains(&chunk) {
                // Still to be checked at the next start.
                continue;
            }
            match self.flush(chunk) {
                Ok(()) => {}
                // Deleted meanwhile.
                Err(e) if e.kind() == ErrorKind::NotFound => self.dirty.forget(chunk),
                // Its file failed: it stays listed, to be verified and
                // resynced at the next start (a replica taken out of
                // service is forgotten when it is).
                Err(e) if e.kind() == ErrorKind::Corrupt => {}
                Err(e) => return Err(e),
            }
        }
        self.dirty.compact_now()
    }

    fn begin_incoming(&self, chunk: ChunkId, chunk_size: u64) -> Result<IncomingId> {
        validate_chunk_size(chunk_size).map_err(|e| e.context(format_args!("chunk {chunk:#x}")))?;
        let tmp = self.tmp_path(chunk);
        // Version 0 until the commit writes the real one; the file is
        // invisible to everything but its handle meanwhile.
        let header = Header {
            format: FORMAT_VERSION,
            chunk,
            version: MapVersion(0),
            chunk_size,
        };
        let opened = self
            .write_new_file(&tmp, &header)
            .and_then(|()| OpenChunk::load(&*self.disk, &tmp, chunk));
        let open = match opened {
            Ok(open) => open,
            Err(e) => {
                let _ = self.disk.remove(&tmp);
                return Err(e);
            }
        };
        let id = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.incoming_table().insert(id, Arc::new(open));
        Ok(IncomingId(id))
    }

    fn write_incoming(&self, incoming: IncomingId, offset: u64, data: &[u8]) -> Result<()> {
        let open = self.incoming_handle(incoming)?;
        check_range(open.chunk, open.chunk_size, offset, data.len() as u64)?;
        let mut state = open.write_state();
        if state.deleted {
            return Err(missing_incoming(incoming));
        }
        if data.is_empty() {
            return Ok(());
        }
        open.apply_locked(
            &mut state,
            offset,
            data.len() as u64,
            Source::Data(data, None),
        )
    }

    fn commit_incoming(&self, incoming: IncomingId, version: MapVersion) -> Result<()> {
        let open = self
            .incoming_table()
            .remove(&incoming.0)
            .ok_or_else(|| missing_incoming(incoming))?;
        // Waits for a write in progress; later ones fail with NotFound.
        open.write_state().deleted = true;
        let result = self.install_incoming(&open, version);
        if result.is_err() {
            let _ = self.disk.remove(&open.path);
        }
        result
    }

    fn abort_incoming(&self, incoming: IncomingId) {
        let Some(open) = self.incoming_table().remove(&incoming.0) else {
            return;
        };
        open.write_state().deleted = true;
        if let Err(e) = self.disk.remove(&open.path) {
            tracing::warn!(
                chunk = %open.chunk,
                path = %open.path.display(),
                error = %e,
                "cannot remove an aborted incoming replica; it is removed at the next start"
            );
        }
    }

    fn zero_incoming(&self, incoming: IncomingId, offset: u64, len: u64) -> Result<()> {
        let open = self.incoming_handle(incoming)?;
        check_range(open.chunk, open.chunk_size, offset, len)?;
        let mut state = open.write_state();
        if state.deleted {
            return Err(missing_incoming(incoming));
        }
        if len == 0 {
            return Ok(());
        }
        open.apply_locked(&mut state, offset, len, Source::Zeros)
    }

    fn crc_entries(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        first_block: u64,
        count: u64,
    ) -> Result<Vec<u64>> {
        let open = self.get(chunk)?;
        check_blocks(chunk, open.chunk_size, first_block, count)?;
        let state = open.read_state();
        if state.deleted {
            return Err(missing_chunk(chunk));
        }
        open.check_failed(&state)?;
        check_version(chunk, expected, state.version)?;
        Ok(state.crcs[first_block as usize..(first_block + count) as usize].to_vec())
    }

    fn incoming_crc_entries(
        &self,
        incoming: IncomingId,
        first_block: u64,
        count: u64,
    ) -> Result<Vec<u64>> {
        let open = self.incoming_handle(incoming)?;
        check_blocks(open.chunk, open.chunk_size, first_block, count)?;
        let state = open.read_state();
        if state.deleted {
            return Err(missing_incoming(incoming));
        }
        Ok(state.crcs[first_block as usize..(first_block + count) as usize].to_vec())
    }

    fn journal_stats(&self) -> Option<super::JournalStats> {
        Some(self.keeper.journal().stats())
    }

    fn space(&self) -> Result<SpaceInfo> {
        let (total_bytes, free_bytes) = self
            .disk
            .space(&self.chunks_dir)
            .map_err(|e| io_error(e, format_args!("statvfs of {}", self.chunks_dir.display())))?;
        Ok(SpaceInfo {
            total_bytes,
            free_bytes,
        })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Byte-level access to chunk files for corruption tests.
    use super::*;

    /// The file offset of the CRC entry of `block`.
    pub fn crc_entry_offset(block: u64) -> u64 {
        HEADER_LEN + block * 8
    }
}
