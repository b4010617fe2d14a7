//! The file system under a [`FileChunkStore`](super::FileChunkStore): the
//! real one ([`RealDisk`]), or [`CrashDisk`], which keeps files in memory
//! and loses what was not synced when told to cut the power, so that tests
//! and the simulator can run the real store (journal, chunk files, dirty
//! log) through power losses.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;

/// How [`Disk::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The file must exist.
    Existing,
    /// Created empty if missing.
    Create,
    /// Created; it must not exist.
    CreateNew,
}

/// A file system: the operations a chunk store makes on its directories.
pub trait Disk: Send + Sync {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Opens `path` for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Replaces `path` with `bytes`, readable by its owner only: written to
    /// a temporary file, synced, renamed over `path` (not the directory).
    fn write_private(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// (total, available) bytes of the file system holding `dir`.
    fn space(&self, dir: &Path) -> io::Result<(u64, u64)>;
    /// `path` made absolute, for comparing locations.
    fn canonicalize(&self, path: &Path) -> PathBuf;
}

/// An open file of a [`Disk`].
pub trait DiskFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset` if that needs no wait
    /// for the disk (the bytes are in the page cache): `Ok(false)` when it
    /// would, and then `buf` holds nothing meaningful. A file that never
    /// waits (or cannot tell) reads as [`read_at`](DiskFile::read_at).
    fn read_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        self.read_at(buf, offset).map(|()| true)
    }
    /// The file's descriptor, for reads another way (io_uring,
    /// [`crate::chunk::uring`]); `None` for files that are not the
    /// kernel's.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data (and size) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// The file's size.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Sets the file's size.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space for `[offset, offset + len)` without changing the
    /// size; `ENOSPC` when the disk is full. A file system that cannot
    /// reserve space answers `Ok`.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Frees `[offset, offset + len)`, which then reads as zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Drops the clean cached pages of `[offset, offset + len)` (a hint:
    /// nothing changes on disk or in what reads return; a large folio that
    /// reaches outside the range stays).
    fn drop_cached(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The machine's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

struct RealFile(File);

impl Disk for RealDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Replicas and journals are VM data: only their owner reads them.
        crate::private_files::create_private_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>> {
        // Mode 0600 when created, and never through a symbolic link.
        let mut options = crate::private_files::private_options();
        options.read(true).write(true);
        match mode {
            OpenMode::Existing => {}
            OpenMode::Create => {
                options.create(true).truncate(false);
            }
            OpenMode::CreateNew => {
                options.create_new(true);
            }
        }
        Ok(Box::new(RealFile(options.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn write_private(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        crate::conf::write_private_file(path, bytes)
    }

    fn space(&self, dir: &Path) -> io::Result<(u64, u64)> {
        let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: statvfs writes into the zeroed struct we pass; the path is
        // a valid NUL-terminated string that outlives the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let frsize = st.f_frsize as u64;
        Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
    }

    fn canonicalize(&self, path: &Path) -> PathBuf {
        fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }
}

impl DiskFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn read_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec describing `buf`, which outlives the call, on a
        // descriptor we own.
        let n = unsafe {
            libc::preadv2(
                self.0.as_raw_fd(),
                &iov,
                1,
                offset as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        if n >= 0 {
            // Short: part of it is not cached (or the file ends there,
            // which `read_at` reports).
            return Ok(n as usize == buf.len());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(false),
            // A kernel or file system without RWF_NOWAIT.
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => self.read_at(buf, offset).map(|()| true),
            _ => Err(e),
        }
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.0.as_raw_fd())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(libc::FALLOC_FL_KEEP_SIZE, offset, len)
            .or_else(|e| match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) => Ok(()),
                _ => Err(e),
            })
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn drop_cached(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: posix_fadvise on a file descriptor we own, no memory involved.
        let rc = unsafe {
            libc::posix_fadvise(
                self.0.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }
}

impl RealFile {
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on a file descriptor we own, no memory involved.
        let rc = unsafe {
            libc::fallocate(
                self.0.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

const PAGE: u64 = 4096;
const SECTOR: usize = 512;
type Page = Box<[u8; PAGE as usize]>;

/// A file system in memory with a volatile cache, for power-loss tests.
///
/// Writes, size changes and hole punches of a file are volatile until
/// [`DiskFile::sync_data`] of that file; creates, renames and removes are
/// volatile until a [`Disk::sync_dir`] (of any directory: like ext4's
/// journal, one commit makes every earlier change of the namespace
/// durable). [`CrashDisk::power_loss`] keeps, for every page written since
/// its file's last sync, the new page, the old one, or a mix of their
/// 512-byte sectors (a torn write), and a random prefix of the namespace
/// changes since the last commit. Files opened before the power loss fail
/// every later call (their process is gone).
///
/// It can also fail reads, writes or syncs of files whose path contains a
/// given text with EIO, and run out of space.
#[derive(Clone, Default)]
pub struct CrashDisk {
    inner: Arc<Mutex<CrashState>>,
}

#[derive(Default)]
struct CrashState {
    /// Path -> file id, as the running system sees it.
    names: BTreeMap<PathBuf, u64>,
    /// The same as the disk holds it durably.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Namespace changes since `durable_names`, oldest first.
    changes: Vec<Change>,
    files: HashMap<u64, Arc<Mutex<CrashFile>>>,
    next_id: u64,
    /// Bumped by each power loss: handles of an older epoch are dead.
    epoch: u64,
    faults: Faults,
    /// Bytes `allocate` may still reserve (None: unlimited).
    space_left: Option<u64>,
    /// Every directory `sync_dir` synced, in order: `sync_dir` makes every
    /// name durable whatever the directory, so a test that a particular
    /// one is synced reads this.
    synced_dirs: Vec<PathBuf>,
}

#[derive(Clone)]
enum Change {
    Link(PathBuf, u64),
    Unlink(PathBuf),
}

#[derive(Default, Clone)]
struct Faults {
    reads: Option<String>,
    writes: Option<String>,
    syncs: Option<String>,
}

#[derive(Default)]
struct CrashFile {
    durable: BTreeMap<u64, Page>,
    durable_len: u64,
    /// Pages changed since the last sync: `None` reads as zeros.
    cache: BTreeMap<u64, Option<Page>>,
    len: u64,
}

/// What [`CrashDisk::power_loss`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PowerLoss {
    /// Unsynced pages that reached the disk whole, did not, or in part.
    pub kept: u64,
    /// Unsynced pages that did not reach the disk.
    pub lost: u64,
    /// Unsynced pages that reached the disk in part (torn).
    pub torn: u64,
    /// Namespace changes kept and lost.
    pub changes_kept: u64,
    /// Namespace changes (creates, renames, removes) lost.
    pub changes_lost: u64,
}

struct CrashHandle {
    disk: CrashDisk,
    file: Arc<Mutex<CrashFile>>,
    path: PathBuf,
    epoch: u64,
}

/// The errors of the real system calls (callers add what and where).
fn not_found() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl CrashDisk {
    /// An empty disk.
    pub fn new() -> CrashDisk {
        CrashDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, CrashState> {
        self.inner.lock()
    }

    /// The directories synced so far, in order.
    pub fn synced_dirs(&self) -> Vec<PathBuf> {
        self.lock().synced_dirs.clone()
    }

    /// Cuts the power: every file and namespace change not made durable is
    /// kept, lost or torn as `rng` decides; open files die.
    pub fn power_loss(&self, rng: &mut impl Rng) -> PowerLoss {
        let mut state = self.lock();
        let mut report = PowerLoss::default();
        let keep = rng.gen_range(0..=state.changes.len());
        let changes = std::mem::take(&mut state.changes);
        for (i, change) in changes.into_iter().enumerate() {
            if i < keep {
                report.changes_kept += 1;
                apply_change(&mut state.durable_names, change);
            } else {
                report.changes_lost += 1;
            }
        }
        state.names = state.durable_names.clone();
        let live: std::collections::HashSet<u64> = state.names.values().copied().collect();
        state.files.retain(|id, _| live.contains(id));
        let mut ids: Vec<u64> = state.files.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let mut f = state.files[&id].lock();
            let cache = std::mem::take(&mut f.cache);
            for (index, page) in cache {
                match rng.gen_range(0..3) {
                    0 => {
                        report.kept += 1;
                        set_page(&mut f.durable, index, page);
                    }
                    1 => report.lost += 1,
                    _ => {
                        report.torn += 1;
                        let mut mixed = f.durable.get(&index).cloned();
                        let new = page.unwrap_or_else(|| Box::new([0; PAGE as usize]));
                        let old = mixed.get_or_insert_with(|| Box::new([0; PAGE as usize]));
                        for s in 0..PAGE as usize / SECTOR {
                            if rng.gen_bool(0.5) {
                                old[s * SECTOR..(s + 1) * SECTOR]
                                    .copy_from_slice(&new[s * SECTOR..(s + 1) * SECTOR]);
                            }
                        }
                        set_page(&mut f.durable, index, mixed);
                    }
                }
            }
            if f.len != f.durable_len && rng.gen_bool(0.5) {
                f.durable_len = f.len;
            }
            f.len = f.durable_len;
        }
        state.epoch += 1;
        report
    }

    /// The process using the disk died (kill -9): what it wrote stays in
    /// the cache, and the files it had open fail every later call.
    pub fn kill(&self) {
        self.lock().epoch += 1;
    }

    /// Fails reads of files whose path contains `text` with EIO (`None`:
    /// no more failures).
    pub fn fail_reads(&self, text: Option<&str>) {
        self.lock().faults.reads = text.map(str::to_string);
    }

    /// Fails writes (and hole punches) of files whose path contains `text`.
    pub fn fail_writes(&self, text: Option<&str>) {
        self.lock().faults.writes = text.map(str::to_string);
    }

    /// Fails syncs of files whose path contains `text`.
    pub fn fail_syncs(&self, text: Option<&str>) {
        self.lock().faults.syncs = text.map(str::to_string);
    }

    /// Flips one bit of the byte at `offset` of `path`, on the disk and in
    /// its cache (a bit rotted on the medium, seen by every later read).
    /// `NotFound` when there is no such file or byte.
    pub fn flip(&self, path: &Path, offset: u64) -> io::Result<()> {
        let file = {
            let state = self.lock();
            let id = state.names.get(path).ok_or_else(not_found)?;
            state.files[id].clone()
        };
        let mut f = file.lock();
        if offset >= f.len {
            return Err(not_found());
        }
        let index = offset / PAGE;
        let at = (offset % PAGE) as usize;
        if let Some(page) = f.durable.get_mut(&index) {
            page[at] ^= 1;
        } else {
            let mut page: Page = Box::new([0; PAGE as usize]);
            page[at] = 1;
            f.durable.insert(index, page);
        }
        if let Some(Some(page)) = f.cache.get_mut(&index) {
            page[at] ^= 1;
        } else if let Some(None) = f.cache.get(&index) {
            let mut page: Page = Box::new([0; PAGE as usize]);
            page[at] = 1;
            f.cache.insert(index, Some(page));
        }
        Ok(())
    }

    /// Lets `allocate` reserve at most `bytes` more (`None`: no limit).
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.lock().space_left = bytes;
    }

    fn change(state: &mut CrashState, change: Change) {
        apply_change(&mut state.names, change.clone());
        state.changes.push(change);
    }
}

fn apply_change(names: &mut BTreeMap<PathBuf, u64>, change: Change) {
    match change {
        Change::Link(path, id) => {
            names.insert(path, id);
        }
        Change::Unlink(path) => {
            names.remove(&path);
        }
    }
}

fn set_page(pages: &mut BTreeMap<u64, Page>, index: u64, page: Option<Page>) {
    match page {
        Some(page) if page.iter().any(|b| *b != 0) => {
            pages.insert(index, page);
        }
        _ => {
            pages.remove(&index);
        }
    }
}

impl Disk for CrashDisk {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implicit: a path's parent exists.
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = self.lock();
        Ok(state.names.contains_key(path) || state.names.keys().any(|p| p.starts_with(path)))
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>> {
        let mut state = self.lock();
        let file = match (state.names.get(path).copied(), mode) {
            (Some(_), OpenMode::CreateNew) => {
                return Err(io::Error::from_raw_os_error(libc::EEXIST))
            }
            (Some(id), _) => state.files[&id].clone(),
            (None, OpenMode::Existing) => return Err(not_found()),
            (None, _) => {
                state.next_id += 1;
                let id = state.next_id;
                let file = Arc::new(Mutex::new(CrashFile::default()));
                state.files.insert(id, file.clone());
                CrashDisk::change(&mut state, Change::Link(path.to_path_buf(), id));
                file
            }
        };
        Ok(Box::new(CrashHandle {
            disk: self.clone(),
            file,
            path: path.to_path_buf(),
            epoch: state.epoch,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let id = *state.names.get(from).ok_or_else(not_found)?;
        CrashDisk::change(&mut state, Change::Unlink(from.to_path_buf()));
        CrashDisk::change(&mut state, Change::Link(to.to_path_buf(), id));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if !state.names.contains_key(path) {
            return Err(not_found());
        }
        CrashDisk::change(&mut state, Change::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if state
            .faults
            .syncs
            .as_deref()
            .is_some_and(|t| dir.to_string_lossy().contains(t))
        {
            return Err(eio());
        }
        state.synced_dirs.push(dir.to_path_buf());
        for change in std::mem::take(&mut state.changes) {
            apply_change(&mut state.durable_names, change);
        }
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open(path, OpenMode::Existing)?;
        let mut buf = vec![0u8; file.len()? as usize];
        file.read_at(&mut buf, 0)?;
        Ok(buf)
    }

    fn write_private(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        if self.exists(&tmp)? {
            self.remove(&tmp)?;
        }
        let file = self.open(&tmp, OpenMode::CreateNew)?;
        file.write_at(bytes, 0)?;
        file.sync_data()?;
        self.rename(&tmp, path)
    }

    fn space(&self, _dir: &Path) -> io::Result<(u64, u64)> {
        let left = self.lock().space_left.unwrap_or(1 << 40);
        Ok((1 << 40, left))
    }

    fn canonicalize(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
}

impl CrashHandle {
    fn check(&self, fault: impl Fn(&Faults) -> &Option<String>) -> io::Result<()> {
        let state = self.disk.lock();
        if state.epoch != self.epoch {
            return Err(io::Error::other(format!(
                "{}: the power was cut",
                self.path.display()
            )));
        }
        if fault(&state.faults)
            .as_deref()
            .is_some_and(|t| self.path.to_string_lossy().contains(t))
        {
            return Err(eio());
        }
        Ok(())
    }

    fn file(&self) -> MutexGuard<'_, CrashFile> {
        self.file.lock()
    }
}

impl CrashFile {
    fn page(&self, index: u64) -> Option<&[u8; PAGE as usize]> {
        match self.cache.get(&index) {
            Some(page) => page.as_deref(),
            None => self.durable.get(&index).map(|p| &**p),
        }
    }

    fn page_mut(&mut self, index: u64) -> &mut [u8; PAGE as usize] {
        let durable = self.durable.get(&index).cloned();
        self.cache
            .entry(index)
            .or_insert(durable)
            .get_or_insert_with(|| Box::new([0; PAGE as usize]))
    }

    fn write(&mut self, buf: &[u8], offset: u64) {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let index = at / PAGE;
            let within = (at % PAGE) as usize;
            let n = (PAGE as usize - within).min(buf.len() - done);
            self.page_mut(index)[within..within + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
    }

    fn zero(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let within = at % PAGE;
            let n = (PAGE - within).min(end - at);
            if n == PAGE {
                self.cache.insert(index, None);
            } else if self.page(index).is_some() {
                self.page_mut(index)[within as usize..(within + n) as usize].fill(0);
            }
            at += n;
        }
    }
}

impl DiskFile for CrashHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(|f| &f.reads)?;
        let f = self.file();
        if offset + buf.len() as u64 > f.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: read past the end", self.path.display()),
            ));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let within = (at % PAGE) as usize;
            let n = (PAGE as usize - within).min(buf.len() - done);
            match f.page(at / PAGE) {
                Some(page) => buf[done..done + n].copy_from_slice(&page[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(|f| &f.writes)?;
        let mut f = self.file();
        f.write(buf, offset);
        f.len = f.len.max(offset + buf.len() as u64);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check(|f| &f.syncs)?;
        let mut f = self.file();
        for (index, page) in std::mem::take(&mut f.cache) {
            set_page(&mut f.durable, index, page);
        }
        f.durable_len = f.len;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.check(|_| &None)?;
        Ok(self.file().len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check(|f| &f.writes)?;
        let mut f = self.file();
        if len < f.len {
            let old = f.len;
            f.zero(len, old - len);
        }
        f.len = len;
        Ok(())
    }

    fn allocate(&self, _offset: u64, len: u64) -> io::Result<()> {
        self.check(|f| &f.writes)?;
        let mut state = self.disk.lock();
        if let Some(left) = state.space_left.as_mut() {
            if *left < len {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            *left -= len;
        }
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(|f| &f.writes)?;
        self.file().zero(offset, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `path` in the page cache (mincore over a mapping).
    fn resident_pages(path: &Path, len: usize) -> usize {
        let file = File::open(path).unwrap();
        // SAFETY: a private read-only mapping of `len` bytes of a file we
        // opened; only its residency is inspected, never its memory.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `map` is a mapping of `len` bytes; `vec` has a byte per page.
        let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(map, len) };
        assert_eq!(rc, 0);
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    /// Dropping the cache of a synced range leaves its pages out of the
    /// page cache, and reads return the same data.
    #[test]
    fn dropped_pages_leave_the_cache_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = RealDisk.open(&path, OpenMode::Create).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        file.write_at(&data, 0).unwrap();
        file.sync_data().unwrap();
        assert!(resident_pages(&path, data.len()) > 0);
        file.drop_cached(0, data.len() as u64).unwrap();
        assert_eq!(resident_pages(&path, data.len()), 0);
        let mut back = vec![0u8; data.len()];
        file.read_at(&mut back, 0).unwrap();
        assert_eq!(back, data);
    }
}
