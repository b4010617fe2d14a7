//! The Raft log of one MDS in segment files (the database's layout 12,
//! `docs/formats.md`): an append is one write and one `fdatasync` of a
//! preallocated file. In the redb table it replaced, an append was a redb
//! commit that wrote ~10 pages and synced them: ~310 of the ~470 us an MDS
//! spent in a create with one client.
//!
//! A directory beside the database (`mds.redb.log`) holds segments named
//! by the index of their first entry (`{first:020}.seg`): a 40-byte header
//! (magic, version, first index, the CRC the first record chains from,
//! the header's CRC) and records, in a file of [`SEGMENT_BYTES`]
//! preallocated (reading as zeros) so that an append changes no size. A
//! record is a 24-byte header (body length, kind, index, CRC) and its
//! body: a log entry (the record bytes the redb table held: format byte
//! and postcard) or the committed log id (the same encoding), written in
//! front of the entries of the next append (so it is durable with them,
//! as in the redb table, where a commit made it durable).
//!
//! Each record's CRC (CRC-64) covers the previous record's, so a record
//! only reads as part of the log behind the record it was written after:
//! the rest of a torn append never reads as the log after a newer record
//! written over its start. The log ends at the first record that does not
//! read (zeros, a torn write); in any segment but the last, that is
//! damage, and the MDS refuses to start rather than lose committed
//! entries. A truncate writes zeros over what it removes and syncs, so no
//! entry it removed comes back.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::chunk::{crc64, Disk, DiskFile, OpenMode};
use crate::error::{Error, ErrorKind, Result};
use crate::mds::store_error;

/// The first bytes of every segment.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"pstorlog";
/// The version of the segment format this build writes and reads.
pub(crate) const LOG_FORMAT_VERSION: u32 = 1;
/// A segment's header: magic, version (u32), zero (u32), first index
/// (u64), seed (u64: the CRC the first record chains from), CRC-64 of the
/// 32 bytes before it (u64); little-endian.
pub(crate) const SEGMENT_HEADER_BYTES: u64 = 40;
/// A record's header: body length (u32), kind (u8), three zero bytes,
/// index (u64: the entry's; for a committed log id, its index + 1, 0 for
/// none), CRC-64 (u64) of the
/// previous record's CRC (or the segment's seed), the 16 bytes before it
/// and the body; little-endian.
pub(crate) const RECORD_HEADER_BYTES: u64 = 24;
/// The size a segment is preallocated to; a new segment starts when an
/// append would not fit (an append larger than that makes its segment
/// longer).
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;
/// The longest record body read back: a damaged length must not make the
/// reader allocate it.
const MAX_RECORD_BYTES: u32 = 256 << 20;
/// A log entry record.
const KIND_ENTRY: u8 = 1;
/// A committed log id record.
const KIND_COMMITTED: u8 = 2;
/// Zeros written at a time by a truncate.
const ZEROS: usize = 1 << 20;

/// The segment files of one Raft log, with an index of where each entry
/// is. Writers (append, truncate, purge) are serialized; readers run
/// beside them.
pub(crate) struct LogFiles {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// Serializes writers; holds the error of a write that failed, after
    /// which every write fails (what it left past the end is only cleaned
    /// at the next open).
    writing: Mutex<Option<String>>,
    state: Mutex<State>,
    /// The committed log id record to write in front of the next append.
    pending_committed: Mutex<Option<Committed>>,
}

struct State {
    segments: Vec<Segment>,
    /// The CRC of the last record: the next record chains from it.
    tip: u64,
    /// Entries up to this index are purged and never read.
    purged: Option<u64>,
    /// The last committed record read or written.
    committed: Option<Committed>,
}

struct Segment {
    first: u64,
    /// The CRC its first record chains from.
    seed: u64,
    file: Arc<dyn DiskFile>,
    /// Where the next record goes.
    end: u64,
    /// Entry `first + i` is `entries[i]`.
    entries: Vec<Loc>,
}

impl Segment {
    /// The index after its last entry.
    fn next(&self) -> u64 {
        self.first + self.entries.len() as u64
    }
}

#[derive(Clone, Copy)]
struct Loc {
    /// The record's offset in its segment.
    at: u64,
    /// Its body's length.
    len: u32,
    /// The CRC it chains from.
    prev: u64,
}

/// A committed log id record: its key (the id's index + 1, 0 for none:
/// they only grow) and body.
#[derive(Clone)]
struct Committed {
    key: u64,
    body: Vec<u8>,
}

/// Where a new segment goes.
#[derive(Clone, Copy)]
enum Start {
    /// After the others (the last one is full, or there is none).
    After,
    /// Instead of the others, which hold no entry or only purged ones.
    Alone,
}

/// A record to write.
struct Record<'a> {
    kind: u8,
    index: u64,
    body: &'a [u8],
}

fn crc(prev: u64, header: &[u8], body: &[u8]) -> u64 {
    let mut digest = crc64fast::Digest::new();
    digest.write(&prev.to_le_bytes());
    digest.write(header);
    digest.write(body);
    digest.sum64()
}

/// Appends `record`, chained from `prev`, to `out`; returns its CRC.
fn encode_record(out: &mut Vec<u8>, prev: u64, record: &Record<'_>) -> u64 {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&(record.body.len() as u32).to_le_bytes());
    header[4] = record.kind;
    header[8..].copy_from_slice(&record.index.to_le_bytes());
    let sum = crc(prev, &header, record.body);
    out.extend_from_slice(&header);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(record.body);
    sum
}

fn segment_header(first: u64, seed: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&LOG_FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first.to_le_bytes());
    h[24..32].copy_from_slice(&seed.to_le_bytes());
    let sum = crc64(&h[..32]);
    h[32..].copy_from_slice(&sum.to_le_bytes());
    h
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// How the scan of a segment's records ended.
enum ScanEnd {
    /// At zeros or the end of the file.
    Clean,
    /// At a record that does not read, at this offset.
    Broken(u64, String),
}

impl LogFiles {
    /// Creates an empty log in `dir` (created if missing; segments left
    /// in it are removed).
    pub(crate) fn create(disk: Arc<dyn Disk>, dir: &Path) -> Result<LogFiles> {
        let io = |e| log_error(dir, e);
        disk.create_dir_all(dir).map_err(io)?;
        for name in disk.list(dir).map_err(io)? {
            if name.ends_with(".seg") {
                disk.remove(&dir.join(name)).map_err(io)?;
            }
        }
        disk.sync_dir(dir).map_err(io)?;
        // Its name too: a database whose log directory is gone does not
        // start.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            disk.sync_dir(parent).map_err(io)?;
        }
        Ok(LogFiles::with_state(
            disk,
            dir,
            State {
                segments: Vec::new(),
                tip: 0,
                purged: None,
                committed: None,
            },
        ))
    }

    /// Opens the log in `dir`: reads every segment and checks every
    /// record. `Corrupt` if a segment other than the last is damaged,
    /// `Protocol` if a newer build wrote it, `NotFound` if `dir` is missing.
    pub(crate) fn open(disk: Arc<dyn Disk>, dir: &Path) -> Result<LogFiles> {
        let state = scan(disk.as_ref(), dir)?;
        Ok(LogFiles::with_state(disk, dir, state))
    }

    fn with_state(disk: Arc<dyn Disk>, dir: &Path, state: State) -> LogFiles {
        LogFiles {
            disk,
            dir: dir.to_path_buf(),
            writing: Mutex::new(None),
            state: Mutex::new(state),
            pending_committed: Mutex::new(None),
        }
    }

    /// The body of the last committed log id record (read at open or
    /// written since).
    pub(crate) fn committed(&self) -> Option<Vec<u8>> {
        self.state.lock().committed.as_ref().map(|c| c.body.clone())
    }

    /// Records the committed log id `body`, of index `index`, to write in
    /// front of the next append (or when the log is dropped), unless a
    /// newer one is written or wanted already.
    pub(crate) fn want_committed(&self, index: Option<u64>, body: Vec<u8>) {
        let key = index.map_or(0, |i| i + 1);
        let written = self.state.lock().committed.as_ref().map(|c| c.key);
        let mut pending = self.pending_committed.lock();
        let newest = pending.as_ref().map(|c| c.key).max(written);
        if newest.is_none_or(|n| key > n) {
            *pending = Some(Committed { key, body });
        }
    }

    /// Runs the write `f` unless an earlier write failed; a failure of
    /// `f` fails every later one.
    fn write<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut failed = self.writing.lock();
        if let Some(why) = &*failed {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the MDS Raft log {} failed a write ({why}); restart the MDS",
                    self.dir.display()
                ),
            ));
        }
        let result = f();
        match &result {
            // Refused before writing anything (entries that do not follow).
            Err(e) if e.kind() == ErrorKind::Internal => {}
            Err(e) => *failed = Some(e.to_string()),
            Ok(_) => {}
        }
        result
    }

    /// Entries up to `index` are purged: never read again. Segments
    /// holding only such entries are removed.
    pub(crate) fn purge(&self, index: u64) -> Result<()> {
        self.write(|| self.purge_now(index))
    }

    fn purge_now(&self, index: u64) -> Result<()> {
        let removed: Vec<u64> = {
            let mut state = self.state.lock();
            state.purged = state.purged.max(Some(index));
            let (gone, kept): (Vec<Segment>, Vec<Segment>) = std::mem::take(&mut state.segments)
                .into_iter()
                .partition(|s| s.next() <= index + 1);
            state.segments = kept;
            gone.into_iter().map(|s| s.first).collect()
        };
        self.remove_segments(&removed)
    }

    fn remove_segments(&self, firsts: &[u64]) -> Result<()> {
        if firsts.is_empty() {
            return Ok(());
        }
        let io = |e| log_error(&self.dir, e);
        for first in firsts {
            self.disk
                .remove(&self.dir.join(segment_name(*first)))
                .map_err(io)?;
        }
        self.disk.sync_dir(&self.dir).map_err(io)
    }

    /// The last entry's index, unless the log holds none (after the
    /// purged ones).
    pub(crate) fn last_index(&self) -> Option<u64> {
        let state = self.state.lock();
        if state.segments.iter().all(|s| s.entries.is_empty()) {
            return None;
        }
        let last = state.segments.last()?.next() - 1;
        state.purged.is_none_or(|p| last > p).then_some(last)
    }

    /// The entries in `from..=to` that the log holds, in order, as
    /// (index, body).
    pub(crate) fn read(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        // Where they are, then the reads without the lock.
        let spans: Vec<(Arc<dyn DiskFile>, u64, Vec<Loc>)> = {
            let state = self.state.lock();
            let from = from.max(state.purged.map_or(0, |p| p + 1));
            state
                .segments
                .iter()
                .filter_map(|s| {
                    let lo = from.max(s.first);
                    let hi = to.min(s.next().checked_sub(1)?);
                    (lo <= hi).then(|| {
                        let locs =
                            s.entries[(lo - s.first) as usize..=(hi - s.first) as usize].to_vec();
                        (Arc::clone(&s.file), lo, locs)
                    })
                })
                .collect()
        };
        let mut out = Vec::new();
        for (file, first, locs) in spans {
            let (Some(a), Some(z)) = (locs.first(), locs.last()) else {
                continue;
            };
            let start = a.at;
            let end = z.at + RECORD_HEADER_BYTES + u64::from(z.len);
            let mut bytes = vec![0u8; (end - start) as usize];
            file.read_at(&mut bytes, start)
                .map_err(|e| log_error(&self.dir, e))?;
            for (i, loc) in locs.iter().enumerate() {
                let index = first + i as u64;
                let at = (loc.at - start) as usize;
                let hdr = &bytes[at..at + RECORD_HEADER_BYTES as usize];
                let body_at = at + RECORD_HEADER_BYTES as usize;
                let body = &bytes[body_at..body_at + loc.len as usize];
                if crc(loc.prev, &hdr[..16], body) != u64_at(hdr, 16) || u64_at(hdr, 8) != index {
                    return Err(Error::corrupt(format!(
                        "the MDS Raft log {}: entry {index} no longer reads (its CRC does not match)",
                        self.dir.display()
                    )));
                }
                out.push((index, body.to_vec()));
            }
        }
        Ok(out)
    }

    /// Appends `entries` (index, body), which must follow the last entry
    /// (any index when the log holds none), and the committed log id
    /// wanted, if any, in front of them; durable when it returns.
    pub(crate) fn append(&self, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        self.write(|| self.append_now(entries))
    }

    fn append_now(&self, entries: &[(u64, Vec<u8>)]) -> Result<()> {
        let committed = self.pending_committed.lock().take();
        let result = self.append_locked(committed.as_ref(), entries);
        if result.is_err() {
            if let Some(c) = committed {
                self.pending_committed.lock().get_or_insert(c);
            }
        }
        result
    }

    fn append_locked(
        &self,
        committed: Option<&Committed>,
        entries: &[(u64, Vec<u8>)],
    ) -> Result<()> {
        let Some(&(first, _)) = entries.first() else {
            return self.write_committed(committed);
        };
        for (i, (index, _)) in entries.iter().enumerate() {
            if *index != first + i as u64 {
                return Err(Error::internal(format!(
                    "the MDS Raft log {}: appended entries are not consecutive ({first} then {index} at {i})",
                    self.dir.display()
                )));
            }
        }
        let bytes: u64 = entries
            .iter()
            .map(|(_, b)| RECORD_HEADER_BYTES + b.len() as u64)
            .sum::<u64>()
            + committed.map_or(0, |c| RECORD_HEADER_BYTES + c.body.len() as u64);
        let last_index = self.last_index();
        let (start, tip) = {
            let state = self.state.lock();
            let start = match state.segments.last() {
                None => Some(Start::After),
                Some(last) if last.next() == first => (last.end + bytes > SEGMENT_BYTES
                    && !last.entries.is_empty())
                .then_some(Start::After),
                Some(last) => match last_index {
                    Some(_) => {
                        return Err(Error::internal(format!(
                            "the MDS Raft log {}: entry {first} appended after entry {}",
                            self.dir.display(),
                            last.next() - 1
                        )))
                    }
                    // Only purged entries before it: they go.
                    None => Some(Start::Alone),
                },
            };
            (start, state.tip)
        };
        if let Some(Start::Alone) = start {
            // They hold nothing readable: gone before the new one starts,
            // so the directory never holds a gap.
            let gone: Vec<u64> = self
                .state
                .lock()
                .segments
                .drain(..)
                .map(|old| old.first)
                .collect();
            self.remove_segments(&gone)?;
        }
        let created = match start {
            Some(_) => Some(self.create_segment(first, tip)?),
            None => None,
        };
        self.write_records(committed, entries, created)
    }

    /// Writes the records at the end of the last segment, or of a segment
    /// just created, which then follows the others or replaces them.
    fn write_records(
        &self,
        committed: Option<&Committed>,
        entries: &[(u64, Vec<u8>)],
        created: Option<Segment>,
    ) -> Result<()> {
        let io = |e| log_error(&self.dir, e);
        let (file, end, mut tip) = {
            let state = self.state.lock();
            match &created {
                Some(s) => (Arc::clone(&s.file), s.end, state.tip),
                None => {
                    let last = state.segments.last().expect("a segment to append to");
                    (Arc::clone(&last.file), last.end, state.tip)
                }
            }
        };
        let mut buf = Vec::new();
        let mut locs = Vec::with_capacity(entries.len());
        if let Some(c) = committed {
            tip = encode_record(
                &mut buf,
                tip,
                &Record {
                    kind: KIND_COMMITTED,
                    index: c.key,
                    body: &c.body,
                },
            );
        }
        for (index, body) in entries {
            locs.push(Loc {
                at: end + buf.len() as u64,
                len: body.len() as u32,
                prev: tip,
            });
            tip = encode_record(
                &mut buf,
                tip,
                &Record {
                    kind: KIND_ENTRY,
                    index: *index,
                    body,
                },
            );
        }
        file.write_at(&buf, end).map_err(io)?;
        file.sync_data().map_err(io)?;
        let mut state = self.state.lock();
        if let Some(s) = created {
            state.segments.push(s);
        }
        let last = state.segments.last_mut().expect("a segment");
        last.end = end + buf.len() as u64;
        last.entries.extend(locs);
        state.tip = tip;
        if let Some(c) = committed {
            state.committed = Some(c.clone());
        }
        Ok(())
    }

    /// Writes a committed log id record alone, at the end of the last
    /// segment, or in a new one (named after the entry that follows it)
    /// when there is none.
    fn write_committed(&self, committed: Option<&Committed>) -> Result<()> {
        let Some(c) = committed else {
            return Ok(());
        };
        let (none, tip) = {
            let state = self.state.lock();
            (state.segments.is_empty(), state.tip)
        };
        let created = match none {
            true if c.key == 0 => return Ok(()),
            true => Some(self.create_segment(c.key, tip)?),
            false => None,
        };
        self.write_records(Some(c), &[], created)
    }

    /// Creates the segment of entries from `first`, chaining from `seed`.
    fn create_segment(&self, first: u64, seed: u64) -> Result<Segment> {
        let io = |e| log_error(&self.dir, e);
        let path = self.dir.join(segment_name(first));
        let file: Arc<dyn DiskFile> =
            Arc::from(self.disk.open(&path, OpenMode::Create).map_err(io)?);
        file.set_len(0).map_err(io)?;
        file.allocate(0, SEGMENT_BYTES).map_err(io)?;
        file.set_len(SEGMENT_BYTES).map_err(io)?;
        file.write_at(&segment_header(first, seed), 0).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.disk.sync_dir(&self.dir).map_err(io)?;
        Ok(Segment {
            first,
            seed,
            file,
            end: SEGMENT_HEADER_BYTES,
            entries: Vec::new(),
        })
    }

    /// Removes the entries from `index` on, durably: later segments are
    /// removed, and the rest of the segment holding `index` is zeroed.
    pub(crate) fn truncate(&self, index: u64) -> Result<()> {
        self.write(|| self.truncate_now(index))
    }

    fn truncate_now(&self, index: u64) -> Result<()> {
        let (cut, removed) = {
            let mut state = self.state.lock();
            let mut removed = Vec::new();
            while state.segments.last().is_some_and(|s| s.first >= index) {
                let s = state.segments.pop().expect("a segment");
                state.tip = s.seed;
                removed.push(s.first);
            }
            let cut = match state.segments.last_mut() {
                Some(s) if index < s.next() => {
                    let loc = s.entries[(index - s.first) as usize];
                    s.entries.truncate((index - s.first) as usize);
                    let old_end = s.end;
                    s.end = loc.at;
                    let file = Arc::clone(&s.file);
                    state.tip = loc.prev;
                    Some((file, loc.at, old_end))
                }
                _ => None,
            };
            (cut, removed)
        };
        // Later segments first: a crash between the two leaves a prefix
        // of the old log, never a segment that does not follow its
        // predecessor.
        self.remove_segments(&removed)?;
        if let Some((file, from, to)) = cut {
            zero_range(file.as_ref(), from, to, &self.dir)?;
        }
        Ok(())
    }
}

impl Drop for LogFiles {
    fn drop(&mut self) {
        // The committed log id saved since the last append, so a clean
        // restart applies at once what it had applied.
        let Some(c) = self.pending_committed.lock().take() else {
            return;
        };
        if let Err(e) = self.write(|| self.write_committed(Some(&c))) {
            tracing::warn!(error = %e, "cannot record the committed log id");
        }
    }
}

fn log_error(dir: &Path, e: io::Error) -> Error {
    store_error::db_error("MDS Raft log", dir, e)
}

/// Reads `len` bytes at `at`; `None` past the end of the file.
fn read_some(file: &dyn DiskFile, at: u64, len: u64, dir: &Path) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; len as usize];
    match file.read_at(&mut buf, at) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(log_error(dir, e)),
    }
}

/// Writes zeros over whatever is not zero from `from` to the end of
/// `file`, and syncs if it wrote any.
fn zero_tail(file: &dyn DiskFile, from: u64, dir: &Path) -> Result<()> {
    let len = file.len().map_err(|e| log_error(dir, e))?;
    zero_range(file, from, len, dir)
}

/// Writes zeros over whatever is not zero in `[from, to)` of `file`, and
/// syncs if it wrote any.
fn zero_range(file: &dyn DiskFile, from: u64, to: u64, dir: &Path) -> Result<()> {
    let io = |e| log_error(dir, e);
    let mut at = from;
    let mut wrote = false;
    let mut buf = vec![0u8; ZEROS];
    while at < to {
        let n = ((to - at) as usize).min(ZEROS);
        file.read_at(&mut buf[..n], at).map_err(io)?;
        if buf[..n].iter().any(|&b| b != 0) {
            buf[..n].fill(0);
            file.write_at(&buf[..n], at).map_err(io)?;
            wrote = true;
        }
        at += n as u64;
    }
    if wrote {
        file.sync_data().map_err(io)?;
    }
    Ok(())
}

/// Reads every segment of `dir`.
fn scan(disk: &dyn Disk, dir: &Path) -> Result<State> {
    let io = |e| log_error(dir, e);
    let mut firsts: Vec<u64> = Vec::new();
    let names = match disk.list(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::not_found(format!(
                "the MDS Raft log {} is missing",
                dir.display()
            )))
        }
        Err(e) => return Err(io(e)),
    };
    for name in names {
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        match stem.parse::<u64>() {
            Ok(first) if segment_name(first) == name => firsts.push(first),
            _ => {
                return Err(Error::corrupt(format!(
                    "the MDS Raft log {} holds a file it did not write: {name}",
                    dir.display()
                )))
            }
        }
    }
    firsts.sort_unstable();
    let mut state = State {
        segments: Vec::new(),
        tip: 0,
        purged: None,
        committed: None,
    };
    let count = firsts.len();
    for (n, first) in firsts.into_iter().enumerate() {
        let last = n + 1 == count;
        let path = dir.join(segment_name(first));
        let file: Arc<dyn DiskFile> = Arc::from(disk.open(&path, OpenMode::Existing).map_err(io)?);
        let header = read_some(file.as_ref(), 0, SEGMENT_HEADER_BYTES, dir)?;
        let header = match header.filter(|h| h[..8] == SEGMENT_MAGIC) {
            Some(h) => h,
            // A segment whose creation a crash cut short: nothing was
            // ever written to it.
            None if last => {
                disk.remove(&path).map_err(io)?;
                disk.sync_dir(dir).map_err(io)?;
                continue;
            }
            None => {
                return Err(Error::corrupt(format!(
                    "the MDS Raft log segment {} has no valid header",
                    path.display()
                )))
            }
        };
        let version = u32_at(&header, 8);
        if version > LOG_FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "the MDS Raft log segment {} has format version {version}, this build reads version {LOG_FORMAT_VERSION}; run a pstorage release that supports it",
                    path.display()
                ),
            ));
        }
        let seed = u64_at(&header, 24);
        let chained = state
            .segments
            .last()
            .is_none_or(|prev: &Segment| prev.next() == first && state.tip == seed);
        if crc64(&header[..32]) != u64_at(&header, 32) || u64_at(&header, 16) != first || !chained {
            return Err(Error::corrupt(format!(
                "the MDS Raft log segment {} does not follow the segment before it (or its header is damaged)",
                path.display()
            )));
        }
        let mut segment = Segment {
            first,
            seed,
            file,
            end: SEGMENT_HEADER_BYTES,
            entries: Vec::new(),
        };
        let mut tip = seed;
        let end = loop {
            let at = segment.end;
            let Some(hdr) = read_some(segment.file.as_ref(), at, RECORD_HEADER_BYTES, dir)? else {
                break ScanEnd::Clean;
            };
            if hdr.iter().all(|&b| b == 0) {
                break ScanEnd::Clean;
            }
            let len = u32_at(&hdr, 0);
            let kind = hdr[4];
            let index = u64_at(&hdr, 8);
            if len > MAX_RECORD_BYTES {
                break ScanEnd::Broken(at, format!("a record claims {len} bytes"));
            }
            let Some(body) = read_some(
                segment.file.as_ref(),
                at + RECORD_HEADER_BYTES,
                u64::from(len),
                dir,
            )?
            else {
                break ScanEnd::Broken(at, "a record runs past the end of the file".into());
            };
            if crc(tip, &hdr[..16], &body) != u64_at(&hdr, 16) {
                break ScanEnd::Broken(at, "a record's CRC does not match".into());
            }
            match kind {
                KIND_ENTRY if index == segment.next() => {
                    segment.entries.push(Loc { at, len, prev: tip })
                }
                KIND_COMMITTED => state.committed = Some(Committed { key: index, body }),
                _ => {
                    break ScanEnd::Broken(
                        at,
                        format!("a record of kind {kind} claims index {index}"),
                    )
                }
            }
            tip = u64_at(&hdr, 16);
            segment.end = at + RECORD_HEADER_BYTES + u64::from(len);
        };
        if last {
            // Past the end only zeros, so no piece of an unfinished
            // append can ever read as records after the next ones.
            zero_tail(segment.file.as_ref(), segment.end, dir)?;
        }
        if let ScanEnd::Broken(at, why) = end {
            if !last {
                return Err(Error::corrupt(format!(
                    "the MDS Raft log segment {} is damaged at offset {at}: {why}",
                    path.display()
                )));
            }
            // The end of an append a crash cut short: it was never
            // acknowledged.
            tracing::warn!(
                segment = %path.display(),
                offset = at,
                why,
                "the MDS Raft log ends with an unfinished write, left out"
            );
        }
        state.tip = tip;
        state.segments.push(segment);
    }
    Ok(state)
}

#[cfg(test)]
#[path = "log_files_tests.rs"]
mod tests;
