//! The dirty log of a [`FileChunkStore`](super::FileChunkStore): which
//! chunks may hold writes that were never flushed, so that after an unclean
//! stop (kill -9, power loss) exactly those are verified before they are
//! served. Format in the module docs of [`crate::chunk`].
//!
//! Cost: a chunk's id is appended (and the log synced) on the first write to
//! it after it was compacted out of the log, not on every write after a
//! flush: a flush leaves the id in the log, so the usual write, flush,
//! write, flush... pattern costs one in-memory check per write. The log is
//! compacted (rewritten with only the chunks written since their last flush)
//! when it holds more than twice that set, at most once per
//! [`COMPACT_INTERVAL`]: a chunk written again soon after its flush is
//! still logged, so even many chunks in write+flush cycles cost about one
//! extra sync per chunk per interval. After a crash, the chunks to verify
//! are those written since their last flush plus those flushed within
//! about the last interval or two.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::types::ChunkId;

use super::disk::{Disk, DiskFile, OpenMode};
use super::error::io_error;

/// The log's file name in the store directory.
pub(crate) const DIRTY_LOG: &str = "dirty.log";
/// The format this build writes: 2, a first line `pstorage-dirty-log v2`
/// ([`HEADER_PREFIX`] and the number). Format 1 (no
/// header line, the ids alone) is read, and rewritten as format 2 at open.
pub(crate) const DIRTY_LOG_FORMAT: u32 = 2;
/// The first line of a format 2 log, and the prefix of every later
/// format's. It is not 16 characters long, so a reader of format 1 skips
/// it as a torn line.
const HEADER_PREFIX: &str = "pstorage-dirty-log v";
/// Compaction runs once the log holds at least this many ids and more than
/// twice the chunks that need to be in it...
const COMPACT_MIN_ENTRIES: usize = 8;
/// ...and at most this often.
pub(crate) const COMPACT_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) struct DirtyLog {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: Box<dyn DiskFile>,
    /// Where the next id is appended.
    end: u64,
    /// Ids in the file (since its last rewrite).
    logged: HashSet<ChunkId>,
    /// Chunks written since their last flush began.
    dirty: HashSet<ChunkId>,
    /// Chunks whose flush is in progress, with the number of flushes.
    flushing: HashMap<ChunkId, usize>,
    last_compaction: Instant,
    compact_interval: Duration,
}

impl DirtyLog {
    /// Opens the log in `dir` (creating it empty). Returns the log and the
    /// ids it held: the chunks that may hold torn writes, unless the store
    /// was closed cleanly.
    pub(crate) fn open(disk: Arc<dyn Disk>, dir: &Path) -> Result<(DirtyLog, BTreeSet<ChunkId>)> {
        let path = dir.join(DIRTY_LOG);
        let (format, previous) = match disk.read(&path) {
            // Invalid UTF-8 from a torn append: salvage what parses.
            Ok(bytes) => parse(&String::from_utf8_lossy(&bytes), &path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, BTreeSet::new()),
            Err(e) => return Err(io_error(e, format_args!("reading {}", path.display()))),
        };
        let file = disk
            .open(&path, OpenMode::Create)
            .map_err(|e| io_error(e, format_args!("opening {}", path.display())))?;
        let end = file
            .len()
            .map_err(|e| io_error(e, format_args!("inspecting {}", path.display())))?;
        let log = DirtyLog {
            disk,
            dir: dir.to_path_buf(),
            path,
            inner: Mutex::new(Inner {
                file,
                end,
                logged: previous.iter().copied().collect(),
                // Until verified and flushed, the old ids stay needed.
                dirty: previous.iter().copied().collect(),
                flushing: HashMap::new(),
                last_compaction: Instant::now(),
                compact_interval: COMPACT_INTERVAL,
            }),
        };
        if format != Some(DIRTY_LOG_FORMAT) {
            // New, or format 1: rewritten with the header (and the same ids).
            let mut inner = log.lock();
            log.compact(&mut inner)?;
        }
        Ok((log, previous))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Whether `chunk` was written since its last flush (for a chunk file
    /// opened again after the open-file cache closed it).
    pub(crate) fn is_dirty(&self, chunk: ChunkId) -> bool {
        self.lock().dirty.contains(&chunk)
    }

    /// Records, durably before returning, that `chunk` is about to be
    /// written. Call under the chunk's write lock, before the write.
    pub(crate) fn note_write(&self, chunk: ChunkId) -> Result<()> {
        let mut inner = self.lock();
        if !inner.logged.contains(&chunk) {
            // The id must be on disk before the data it protects.
            let line = format!("{chunk:016x}\n");
            inner
                .file
                .write_at(line.as_bytes(), inner.end)
                .and_then(|()| inner.file.sync_data())
                .map_err(|e| {
                    io_error(
                        e,
                        format_args!("recording chunk {chunk:#x} in {}", self.path.display()),
                    )
                })?;
            inner.end += line.len() as u64;
            inner.logged.insert(chunk);
        }
        inner.dirty.insert(chunk);
        Ok(())
    }

    /// Keeps `chunk` in the log, durably, until it is deleted or taken out
    /// of service ([`forget`](DirtyLog::forget)): its file failed, and may
    /// have lost writes it acknowledged.
    pub(crate) fn pin(&self, chunk: ChunkId) -> Result<()> {
        self.note_write(chunk)
    }

    /// A flush of `chunk` starts: writes from now on are noted again. Call
    /// under the chunk's write lock; then sync, then
    /// [`end_flush`](DirtyLog::end_flush).
    pub(crate) fn begin_flush(&self, chunk: ChunkId) {
        let mut inner = self.lock();
        inner.dirty.remove(&chunk);
        *inner.flushing.entry(chunk).or_insert(0) += 1;
    }

    /// The flush begun by [`begin_flush`](DirtyLog::begin_flush) ended;
    /// unless it `succeeded`, the chunk is dirty again. May compact the log.
    pub(crate) fn end_flush(&self, chunk: ChunkId, succeeded: bool) {
        let mut inner = self.lock();
        if let Some(n) = inner.flushing.get_mut(&chunk) {
            *n -= 1;
            if *n == 0 {
                inner.flushing.remove(&chunk);
            }
        }
        if !succeeded {
            // Still logged (only compaction removes ids, and it keeps
            // flushing chunks), so nothing to write.
            inner.dirty.insert(chunk);
            return;
        }
        let live = inner.dirty.len() + inner.flushing.len();
        if inner.logged.len() >= COMPACT_MIN_ENTRIES
            && inner.logged.len() > 2 * live
            && inner.last_compaction.elapsed() >= inner.compact_interval
        {
            if let Err(e) = self.compact(&mut inner) {
                // The old log stays valid (it only lists extra chunks).
                tracing::warn!(error = %e, "compacting the dirty log failed");
            }
        }
    }

    /// Changes the minimum time between compactions (tests).
    #[cfg(test)]
    pub(crate) fn set_compact_interval(&self, interval: Duration) {
        self.lock().compact_interval = interval;
    }

    /// `chunk` no longer exists here (deleted or out of service): it needs
    /// no verification.
    pub(crate) fn forget(&self, chunk: ChunkId) {
        self.lock().dirty.remove(&chunk);
    }

    /// The chunks written since their last flush.
    pub(crate) fn dirty_chunks(&self) -> Vec<ChunkId> {
        let mut out: Vec<ChunkId> = self.lock().dirty.iter().copied().collect();
        out.sort_unstable();
        out
    }

    /// Rewrites the log with only the chunks that need to be in it; with
    /// everything flushed, that leaves it empty (a clean close).
    pub(crate) fn compact_now(&self) -> Result<()> {
        let mut inner = self.lock();
        self.compact(&mut inner)
    }

    fn compact(&self, inner: &mut Inner) -> Result<()> {
        let mut keep: Vec<ChunkId> = inner
            .dirty
            .iter()
            .chain(inner.flushing.keys())
            .copied()
            .collect();
        keep.sort_unstable();
        keep.dedup();
        let text = render(&keep);
        let tmp = self.dir.join(format!("{DIRTY_LOG}.tmp"));
        let what = |op: &str| format!("{op} {}", tmp.display());
        if self.disk.exists(&tmp).unwrap_or(true) {
            match self.disk.remove(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(e, format_args!("{}", what("removing")))),
            }
        }
        let file = self
            .disk
            .open(&tmp, OpenMode::CreateNew)
            .map_err(|e| io_error(e, format_args!("{}", what("creating"))))?;
        file.write_at(text.as_bytes(), 0)
            .and_then(|()| file.sync_data())
            .map_err(|e| io_error(e, format_args!("{}", what("writing"))))?;
        self.disk.rename(&tmp, &self.path).map_err(|e| {
            io_error(
                e,
                format_args!("renaming {} to {}", tmp.display(), self.path.display()),
            )
        })?;
        self.disk
            .sync_dir(&self.dir)
            .map_err(|e| io_error(e, format_args!("syncing {}", self.dir.display())))?;
        inner.file = file;
        inner.end = text.len() as u64;
        inner.logged = keep.into_iter().collect();
        inner.last_compaction = Instant::now();
        Ok(())
    }
}

/// A log of format [`DIRTY_LOG_FORMAT`] listing `ids`.
fn render(ids: &[ChunkId]) -> String {
    let mut text = format!("{HEADER_PREFIX}{DIRTY_LOG_FORMAT}\n");
    for id in ids {
        text.push_str(&format!("{id:016x}\n"));
    }
    text
}

/// The format of a log's text (`None` for one without a header: format 1,
/// or a header torn before its first sync) and its ids; a line torn by a
/// crash is skipped (its write never started: the append is synced before
/// the data is written). A newer format than this build's is refused: its
/// ids may be written in a way this build would misread, and a chunk it
/// failed to list would be served unverified.
fn parse(text: &str, path: &Path) -> Result<(Option<u32>, BTreeSet<ChunkId>)> {
    let format = match text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix(HEADER_PREFIX))
    {
        Some(v) => match v.parse::<u32>() {
            Ok(v) if v > DIRTY_LOG_FORMAT => {
                return Err(Error::corrupt(format!(
                    "{} is of format {v}; this build reads formats 1 to {DIRTY_LOG_FORMAT}: run \
                     a newer build",
                    path.display()
                )))
            }
            Ok(v) => Some(v),
            Err(_) => None,
        },
        None => None,
    };
    let ids = text
        .lines()
        .filter(|line| line.len() == 16)
        .filter_map(|line| u64::from_str_radix(line, 16).ok().map(ChunkId))
        .collect();
    Ok((format, ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::disk::RealDisk;

    const GOLDEN_V1: &[u8] = include_bytes!("dirty_v1.golden");
    const GOLDEN_V2: &[u8] = include_bytes!("dirty_v2.golden");

    fn open(dir: &Path) -> Result<(DirtyLog, BTreeSet<ChunkId>)> {
        DirtyLog::open(Arc::new(RealDisk), dir)
    }

    /// Both formats' golden files read as the same ids; format 1 is
    /// rewritten as format 2 at open, byte for byte the golden file.
    #[test]
    fn every_format_is_read_and_the_old_one_rewritten() {
        let want = BTreeSet::from([0x1, 0xabc, 0x0123_4567_89ab_cdef].map(ChunkId));
        for golden in [GOLDEN_V1, GOLDEN_V2] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(DIRTY_LOG), golden).unwrap();
            let (log, ids) = open(dir.path()).unwrap();
            assert_eq!(ids, want);
            assert_eq!(
                std::fs::read(dir.path().join(DIRTY_LOG)).unwrap(),
                GOLDEN_V2
            );
            assert_eq!(log.dirty_chunks(), Vec::from_iter(want.iter().copied()));
        }
    }

    /// What this build writes is the golden file (a change of format must
    /// add a version, not change this one).
    #[test]
    fn the_log_is_written_as_the_golden_file() {
        let dir = tempfile::tempdir().unwrap();
        let (log, ids) = open(dir.path()).unwrap();
        assert!(ids.is_empty());
        let header = format!("{HEADER_PREFIX}{DIRTY_LOG_FORMAT}\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(DIRTY_LOG)).unwrap(),
            header
        );
        for id in [0xabc, 0x0123_4567_89ab_cdef, 0x1] {
            log.note_write(ChunkId(id)).unwrap();
        }
        log.compact_now().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(DIRTY_LOG)).unwrap(),
            GOLDEN_V2
        );
    }

    /// A newer format is refused at open, and the file is left as it was.
    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let newer = format!(
            "{HEADER_PREFIX}{}\n0000000000000001\n",
            DIRTY_LOG_FORMAT + 1
        );
        std::fs::write(dir.path().join(DIRTY_LOG), &newer).unwrap();
        let e = open(dir.path())
            .err()
            .expect("a newer format must be refused");
        assert!(e.to_string().contains("format 3"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(DIRTY_LOG)).unwrap(),
            newer
        );
    }

    /// A header torn by a crash at creation reads as an empty log, and is
    /// written again.
    #[test]
    fn a_torn_header_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DIRTY_LOG), &HEADER_PREFIX[..7]).unwrap();
        let (_log, ids) = open(dir.path()).unwrap();
        assert!(ids.is_empty());
        let text = std::fs::read_to_string(dir.path().join(DIRTY_LOG)).unwrap();
        assert_eq!(text, format!("{HEADER_PREFIX}{DIRTY_LOG_FORMAT}\n"));
    }
}
