//! The keeper of a [`FileChunkStore`](super::FileChunkStore)'s journal: it
//! knows which chunks have journal records, applies the durable ones to the
//! chunk files, syncs those and trims the journal; a background thread does
//! this when a quarter of the journal is in use, when a writer waits for
//! space, and every [`TRIM_PERIOD`] otherwise, at a low CPU priority until
//! half of the journal is in use (see [`super::priority`]).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::dirty::DirtyLog;
use super::disk::{Disk, DiskFile};
use super::error::{io_error, ChunkStoreError};
use super::file::{ApplyError, OpenChunk};
use super::journal::{FileDevice, Journal, Replayed, DEFAULT_JOURNAL_SIZE, MIN_JOURNAL_SIZE};
use super::priority::KeeperPriority;

/// How long a write waits for journal space before it fails.
pub(crate) const SPACE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a journal record waits to be applied and trimmed.
pub const TRIM_PERIOD: Duration = Duration::from_secs(5);
/// Journalled data kept in memory until it is applied (beyond it, the
/// apply reads it back from the journal).
pub(super) const APPLY_MEMORY: u64 = 64 << 20;
/// Records applied per hold of a chunk's lock (writers and readers of the
/// chunk wait meanwhile).
pub(super) const APPLY_BATCH: usize = 64;
/// Data written in place since the last trim that starts the next one: a
/// replay reads back (to check it) the data of every in-place record still
/// in the journal, so this bounds the work of a replay.
pub(super) const IN_PLACE_TRIM: u64 = 1 << 30;

/// Bytes of journalled data held in memory, returned when dropped.
pub(super) struct MemCharge {
    bytes: u64,
    budget: Arc<AtomicU64>,
}

impl Drop for MemCharge {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The file in the store directory holding the store's id.
const STORE_ID_FILE: &str = "store.id";
/// The file in the store directory naming the journal's directory.
const JOURNAL_LOCATION_FILE: &str = "journal.location";

/// How a [`FileChunkStore`](super::FileChunkStore) is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Where the journal lives (`make-cs -j`): a directory on another
    /// device, an SSD. `None`: the store's own directory.
    pub journal_dir: Option<PathBuf>,
    /// The journal's ring size in bytes, used when it is created.
    pub journal_size: u64,
    /// Open chunk files kept while unused.
    pub max_open: usize,
    /// A thread applies and trims the journal in the background (when a
    /// quarter of it is in use, when a writer waits for space, every
    /// [`TRIM_PERIOD`]). Off (the simulator, whose time is not the
    /// machine's): a writer that finds the journal full trims it itself,
    /// and otherwise only [`FileChunkStore::checkpoint`](super::FileChunkStore::checkpoint)
    /// and a restart do.
    pub background_trims: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            journal_dir: None,
            journal_size: DEFAULT_JOURNAL_SIZE,
            max_open: super::file::DEFAULT_MAX_OPEN,
            background_trims: true,
        }
    }
}

/// The journal, the chunks with records in it, and the trim.
pub(super) struct Keeper {
    journal: Journal,
    /// The store's dirty log (see [`Keeper::checkpoint`]).
    dirty: Arc<DirtyLog>,
    /// Chunks with journal records not yet trimmed (applied or not). A chunk
    /// is added before its first record is appended and removed by a trim,
    /// under the chunk's lock, once none is pending; the reference keeps it
    /// open (never evicted from the cache) meanwhile.
    /// Keyed by the open chunk's address: a replaced replica and its
    /// successor are two entries.
    touched: Mutex<HashMap<usize, Arc<OpenChunk>>>,
    /// One trim at a time.
    trimming: Mutex<()>,
    /// Bytes of journalled data kept in memory for the apply.
    in_memory: Arc<AtomicU64>,
    /// Bytes written in place since the last trim began.
    in_place: AtomicU64,
    stop: AtomicBool,
    /// The background thread does not trim (tests that look at what a
    /// replay finds).
    #[cfg(test)]
    held: AtomicBool,
}

impl Keeper {
    /// Opens (or creates) the journal of the store in `dir`; returns the
    /// records to replay.
    pub(super) fn open(
        disk: &Arc<dyn Disk>,
        dirty: Arc<DirtyLog>,
        dir: &Path,
        options: &StoreOptions,
    ) -> Result<(Keeper, Vec<Replayed>)> {
        if options.journal_size < MIN_JOURNAL_SIZE || !options.journal_size.is_multiple_of(4096) {
            return Err(Error::invalid(format!(
                "journal size {} bytes: it must be a multiple of 4096 and at least {} MiB",
                options.journal_size,
                MIN_JOURNAL_SIZE >> 20
            )));
        }
        let disk = &**disk;
        let store_id = store_id(disk, dir)?;
        let journal_dir = options.journal_dir.as_deref().unwrap_or(dir);
        check_location(disk, dir, journal_dir)?;
        disk.create_dir_all(journal_dir).map_err(|e| {
            io_error(
                e,
                format_args!("creating the journal directory {}", journal_dir.display()),
            )
        })?;
        let path = journal_dir.join(format!("journal.{store_id:016x}"));
        let dev = FileDevice::open(disk, &path)?;
        let (journal, replayed) = Journal::open(Box::new(dev), store_id, options.journal_size)?;
        Ok((
            Keeper {
                journal,
                dirty,
                touched: Mutex::new(HashMap::new()),
                trimming: Mutex::new(()),
                in_memory: Arc::new(AtomicU64::new(0)),
                in_place: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                #[cfg(test)]
                held: AtomicBool::new(false),
            },
            replayed,
        ))
    }

    pub(super) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// A charge of `bytes` against the in-memory budget, if it has room.
    pub(super) fn charge(&self, bytes: u64) -> Option<MemCharge> {
        let before = self.in_memory.fetch_add(bytes, Ordering::Relaxed);
        let charge = MemCharge {
            bytes,
            budget: self.in_memory.clone(),
        };
        (before + bytes <= APPLY_MEMORY).then_some(charge)
    }

    /// Counts `bytes` written in place; past [`IN_PLACE_TRIM`] since the
    /// last trim, asks for the next one.
    pub(super) fn note_in_place(&self, bytes: u64) {
        let before = self.in_place.fetch_add(bytes, Ordering::Relaxed);
        if before < IN_PLACE_TRIM && before + bytes >= IN_PLACE_TRIM {
            self.journal.kick();
        }
    }

    /// Notes that `open` is about to get journal records (call with its
    /// write lock held).
    pub(super) fn touch(&self, open: &Arc<OpenChunk>) {
        self.touched
            .lock()
            .entry(Arc::as_ptr(open) as usize)
            .or_insert_with(|| open.clone());
    }

    /// Applies every durable record to the chunk files, syncs them and
    /// trims the journal up to where it was when this began.
    pub(super) fn checkpoint(&self) -> Result<()> {
        self.trim(None)
    }

    /// [`Keeper::checkpoint`], on the background thread with its
    /// `priority` (set as the journal fills: see [`super::priority`]).
    fn trim(&self, mut priority: Option<&mut KeeperPriority>) -> Result<()> {
        let mut pace = || {
            if let Some(priority) = priority.as_deref_mut() {
                priority.set(self.journal.half_full());
            }
        };
        pace();
        let _one = self.trimming.lock();
        let began = Instant::now();
        let mark = self.journal.head();
        self.in_place.store(0, Ordering::Relaxed);
        self.journal.sync_below(mark.seq)?;
        let chunks: Vec<(usize, Arc<OpenChunk>)> = self
            .touched
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let count = chunks.len();
        for (key, open) in chunks {
            // In batches: the chunk's readers and writers get in between.
            loop {
                pace();
                match open.apply_some(&self.journal, mark.seq, APPLY_BATCH) {
                    Ok(true) => {}
                    Ok(false) => break,
                    // The journal itself: retried at the next trim.
                    Err(ApplyError::Journal(e)) => return Err(e),
                    // The chunk file did not take it.
                    Err(ApplyError::Chunk(e)) => {
                        let mut state = open.write_state();
                        open.fail(&mut state, format!("applying the journal failed: {e}"));
                        break;
                    }
                }
            }
            let (deleted, failed) = {
                let state = open.write_state();
                (state.deleted, state.failed.is_some())
            };
            if !deleted && !failed {
                if let Err(e) = self.sync_chunk(&open) {
                    // The page cache may have dropped what did not reach the
                    // disk: a retried sync could report a false success. The
                    // replica leaves service; its records are dropped with it.
                    let mut state = open.write_state();
                    open.fail(
                        &mut state,
                        format!("syncing it failed ({e}); writes since its last sync may be lost"),
                    );
                } else {
                    // The moved records below the mark are in the file
                    // for good: their blocks' old slots are free.
                    open.punch_moved(&mut open.write_state(), mark.seq);
                }
            }
            let state = open.write_state();
            if state.failed.is_some() && !state.deleted {
                drop(state);
                // Before the journal forgets its records (the file may hold
                // neither them nor what it held before, yet pass its
                // checks): after a restart the replica is verified and
                // reported unclean, so the MDS resyncs it, unless the
                // server took it out of service first.
                self.dirty.pin(open.chunk)?;
            } else if !(state.deleted || state.pending.is_empty()) {
                continue;
            }
            self.touched.lock().remove(&key);
        }
        self.journal.advance_tail(mark)?;
        tracing::debug!(journal = %self.journal.name(), chunks = count, took = ?began.elapsed(),
            "journal applied and trimmed");
        Ok(())
    }

    fn sync_chunk(&self, open: &OpenChunk) -> Result<()> {
        DiskFile::sync_data(&*open.file).map_err(|e| {
            io_error(
                e,
                format_args!(
                    "syncing chunk {:#x} to trim the journal {}",
                    open.chunk,
                    self.journal.name()
                ),
            )
        })
    }

    /// Stops the background thread's trims (tests).
    #[cfg(test)]
    pub(super) fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    /// Starts the background trim thread of `keeper`.
    pub(super) fn spawn(keeper: &Arc<Keeper>) -> Result<std::thread::JoinHandle<()>> {
        let keeper = keeper.clone();
        std::thread::Builder::new()
            .name("pstorage-journal".into())
            .spawn(move || keeper.run())
            .map_err(|source| ChunkStoreError::Thread { source }.into())
    }

    fn run(&self) {
        let mut priority = KeeperPriority::new();
        let mut last = Instant::now();
        let mut backoff = Duration::ZERO;
        while !self.stop.load(Ordering::Acquire) {
            let kicked = self
                .journal
                .wait_kick(Duration::from_millis(500).max(backoff));
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let used = self.journal.stats().used;
            if !(kicked || self.journal.wants_trim() || (used > 0 && last.elapsed() >= TRIM_PERIOD))
            {
                continue;
            }
            #[cfg(test)]
            if self.held.load(Ordering::Acquire) {
                continue;
            }
            match self.trim(Some(&mut priority)) {
                Ok(()) => {
                    last = Instant::now();
                    backoff = Duration::ZERO;
                }
                Err(e) => {
                    tracing::error!(journal = %self.journal.name(), error = %e,
                        "cannot apply the journal to the chunk files; retrying");
                    backoff = (backoff * 2).clamp(Duration::from_millis(100), TRIM_PERIOD);
                }
            }
        }
    }

    /// Stops the background thread (it ends at its next wake-up).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.journal.kick();
    }
}

/// The store's id (created at its first open): a journal names the store it
/// belongs to, so a journal directory shared by several chunk servers, or a
/// wrong `-j`, never replays one store's records into another.
fn store_id(disk: &dyn Disk, dir: &Path) -> Result<u64> {
    let path = dir.join(STORE_ID_FILE);
    match disk.read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            u64::from_str_radix(text.trim(), 16).map_err(|source| {
                ChunkStoreError::BadStoreId {
                    path: path.clone(),
                    text: text.to_string(),
                    source,
                }
                .into()
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = loop {
                let id: u64 = rand::random();
                if id != 0 {
                    break id;
                }
            };
            disk.write_private(&path, format!("{id:016x}\n").as_bytes())
                .map_err(|e| io_error(e, format_args!("writing {}", path.display())))?;
            disk.sync_dir(dir)
                .map_err(|e| io_error(e, format_args!("syncing {}", dir.display())))?;
            Ok(id)
        }
        Err(e) => Err(io_error(e, format_args!("reading {}", path.display()))),
    }
}

/// Records where the journal of the store in `dir` lives at its first
/// open, and refuses to open it later with the journal elsewhere: a store
/// opened without its journal would start an empty one and never replay
/// the writes the real one holds.
fn check_location(disk: &dyn Disk, dir: &Path, journal_dir: &Path) -> Result<()> {
    let path = dir.join(JOURNAL_LOCATION_FILE);
    let canonical = |p: &Path| disk.canonicalize(p);
    let wanted = if journal_dir == dir {
        String::from(".")
    } else {
        disk.create_dir_all(journal_dir).map_err(|e| {
            io_error(
                e,
                format_args!("creating the journal directory {}", journal_dir.display()),
            )
        })?;
        canonical(journal_dir).display().to_string()
    };
    match disk.read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let recorded = text.trim_end_matches('\n');
            if recorded != wanted {
                let shown = if recorded == "." {
                    format!("in {} itself (no -j)", dir.display())
                } else {
                    format!("in {recorded} (-j {recorded})")
                };
                return Err(Error::invalid(format!(
                    "the chunk store {} keeps its journal {shown}, not in {}: open it with its \
                     own journal, or writes it holds would be lost",
                    dir.display(),
                    if wanted == "." {
                        dir.display().to_string()
                    } else {
                        wanted
                    }
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => disk
            .write_private(&path, format!("{wanted}\n").as_bytes())
            .map_err(|e| io_error(e, format_args!("writing {}", path.display()))),
        Err(e) => Err(io_error(e, format_args!("reading {}", path.display()))),
    }
}
