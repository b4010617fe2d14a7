//! The FUSE file system: kernel requests (by inode number) mapped onto the
//! pstorage SDK (by path), with leases shared per inode.
//!
//! Dispatch: fuser's event-loop threads only decode a request and spawn its
//! handling onto the tokio runtime, so many requests (reads, writes, lookups)
//! run concurrently and a slow one never blocks the others. Replies are sent
//! from the task that finishes the request.
//!
//! Open files: the MDS grants one lease per open, and a write lease excludes
//! every other lease, so the mount keeps **one [`File`] per inode** shared by
//! every FUSE handle of that inode ([`OpenInode`]). Read-only opens take a
//! read lease; the first writable open upgrades it (close the read lease,
//! open a write lease: the MDS has no in-place upgrade). The lease is released
//! when the last handle is released. Every lease change of an inode happens
//! under that inode's async mutex (`OpenInode::state`), so two opens, or an
//! open and a release, never race for the lease against each other.
//!
//! Kernel page cache: while the mount holds a lease on a file no other client
//! can change it (any writer needs the exclusive write lease, which our lease
//! excludes), so pages cached while a lease is held stay valid until it is
//! released. An open that finds the lease already held replies with
//! `FOPEN_KEEP_CACHE`; an open that acquires a fresh lease (none held before,
//! or the read->write upgrade, which leaves a gap between the two leases)
//! replies without it, which makes the kernel drop the inode's cached pages.
//! The local read cache follows the same rule (`ReadCache::invalidate_inode`).
//! Attributes and directory entries are cached by the kernel for
//! [`FsConfig::attr_ttl`] (1 s by default): sizes and names changed by other
//! clients show up within that time.
//!
//! Unlinking an open file: the MDS refuses to remove a leased file, while
//! POSIX lets a process keep using a file after unlinking it. The mount moves
//! such a file to a hidden directory at the cluster root
//! ([`HIDDEN_DIR_NAME`], invisible through the mount) and removes it when its
//! last handle is released (like libfuse's `.fuse_hidden` files, but out of the
//! way of `rmdir`). A rename over an open file does the same with the target.
//! Leftovers of a mount that died are removed by the next mount.

use pstorage_core::types::InodeId;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags as FuseOpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use pstorage_core::client::{Client, File};
use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::types::{CsStatus, InodeKind, LeaseMode, OpenFlags, Stat, ROOT_INODE};
use tokio::runtime::Handle;
use tokio::sync::OwnedMutexGuard;

use super::cache::ReadCache;
use super::inodes::InodeTable;

/// Name of the directory at the cluster root where files unlinked while open
/// wait for their last release. Hidden from the mount's root directory.
pub const HIDDEN_DIR_NAME: &str = ".pstorage-mount-unlinked";

/// Tunables of a mounted file system.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long the kernel may cache attributes and directory entries.
    pub attr_ttl: Duration,
    /// Owner reported for every file and directory (the cluster stores none).
    pub uid: u32,
    /// Group reported for every file and directory.
    pub gid: u32,
    /// Open every file with `FOPEN_DIRECT_IO` (no kernel page cache; mmap of
    /// files then fails).
    pub direct_io: bool,
    /// Largest write request the kernel may send, in bytes.
    pub max_write_bytes: u32,
    /// Largest readahead the kernel may do, in bytes.
    pub max_readahead_bytes: u32,
    /// Most background requests (readahead, async direct I/O) in flight.
    pub max_background: u16,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            attr_ttl: Duration::from_secs(1),
            // SAFETY: geteuid and getegid always succeed and touch no memory.
            uid: unsafe { libc::geteuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getegid() },
            direct_io: false,
            max_write_bytes: 1 << 20,
            max_readahead_bytes: 1 << 20,
            max_background: 64,
        }
    }
}

/// The file system handed to fuser. Cheap to clone.
#[derive(Clone)]
pub struct PstorageFs {
    inner: Arc<Inner>,
    rt: Handle,
}

/// The lease state of one inode shared by all its FUSE handles.
struct OpenInode {
    /// Serializes every lease change of the inode (open, upgrade, release,
    /// truncate without a handle, hiding an unlinked file).
    state: Arc<tokio::sync::Mutex<OpenState>>,
    /// The shared file; cloned out for each I/O (no lock held during I/O).
    file: Mutex<Option<File>>,
    /// Last modification through this mount, ms since the epoch (0: none):
    /// the MDS learns the mtime only when the size is committed.
    local_mtime_ms: AtomicU64,
    /// The file's attributes from the MDS while a lease is held: nobody
    /// else can change the file then (its size comes from `file`), so
    /// `getattr` need not ask the MDS each time. Cleared with the lease.
    leased_stat: Mutex<Option<Stat>>,
}

#[derive(Default)]
struct OpenState {
    /// FUSE handles open on the inode (plus temporary users).
    handles: usize,
    /// The lease of `OpenInode::file`, if any.
    mode: Option<LeaseMode>,
    /// Where the file was moved when it was unlinked while open.
    hidden: Option<String>,
    /// The entry was taken out of `Inner::open`; look it up again.
    removed: bool,
}

/// One FUSE file handle.
#[derive(Clone, Copy)]
struct HandleInfo {
    ino: u64,
}

/// One directory entry of an open directory snapshot.
struct DirItem {
    ino: u64,
    kind: FileType,
    name: String,
}

struct Inner {
    client: Client,
    cfg: FsConfig,
    inodes: Mutex<InodeTable>,
    open: Mutex<HashMap<u64, Arc<OpenInode>>>,
    handles: Mutex<HashMap<u64, HandleInfo>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirItem>>>>,
    next_fh: AtomicU64,
    next_hidden: AtomicU64,
    cache: Option<Arc<ReadCache>>,
    hidden_ino: u64,
    hidden_prefix: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its map consistent; a panic elsewhere
    // must not take the whole mount down.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn errno_of(e: &Error) -> Errno {
    Errno::from_i32(e.kind().errno())
}

/// A file name from the kernel as a `String`: `ENAMETOOLONG` past 255
/// bytes (the kernel leaves that check to the file system), `EINVAL` if not
/// UTF-8 (cluster paths are UTF-8).
fn name_arg(name: &OsStr) -> std::result::Result<String, Errno> {
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    match name.to_str() {
        Some(n) => Ok(n.to_string()),
        None => {
            tracing::debug!("file name {name:?} is not UTF-8; cluster paths are UTF-8");
            Err(Errno::EINVAL)
        }
    }
}

/// Replies `EPERM` for an operation the cluster has no notion of: what
/// link(2), symlink(2) and mknod(2) return when "the file system does not
/// support" it.
fn unsupported(what: &str) -> Errno {
    tracing::debug!("{what} is not supported by pstorage-mount: EPERM");
    Errno::EPERM
}

impl PstorageFs {
    /// Prepares the file system over `client`: creates the hidden directory
    /// for files unlinked while open and removes what a dead mount left
    /// there. Must be called within the runtime `rt` belongs to.
    pub async fn new(
        client: Client,
        cfg: FsConfig,
        cache: Option<Arc<ReadCache>>,
        rt: Handle,
    ) -> Result<PstorageFs> {
        let hidden_path = format!("/{HIDDEN_DIR_NAME}");
        let hidden = match client.mkdir(&hidden_path, false).await {
            Ok(st) => st,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => client.stat(&hidden_path).await?,
            Err(e) => return Err(e.context(format!("cannot create {hidden_path}"))),
        };
        if hidden.kind != InodeKind::Dir {
            return Err(Error::new(
                ErrorKind::NotADirectory,
                format!(
                    "{hidden_path} exists and is not a directory; remove it with `pstorage rm`"
                ),
            ));
        }
        // Files a dead mount hid: their leases expired, so they can go. A
        // live mount's hidden files are leased and refuse (Busy): skipped.
        if let Ok(entries) = client.readdir(&hidden_path).await {
            for e in entries {
                let _ = client.unlink(&format!("{hidden_path}/{}", e.name)).await;
            }
        }
        let mut inodes = InodeTable::new();
        inodes.pin(hidden.ino.0, ROOT_INODE.0, HIDDEN_DIR_NAME, InodeKind::Dir);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".to_string());
        let inner = Inner {
            client,
            cfg,
            inodes: Mutex::new(inodes),
            open: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            next_hidden: AtomicU64::new(1),
            cache,
            hidden_ino: hidden.ino.0,
            hidden_prefix: format!("{host}-{}", std::process::id()),
        };
        Ok(PstorageFs {
            inner: Arc::new(inner),
            rt,
        })
    }

    /// Closes every file still open (flushing it and releasing its lease).
    /// Called after the session ended (unmounted); errors are logged.
    pub async fn close_all(&self) {
        let open: Vec<Arc<OpenInode>> = lock(&self.inner.open).values().cloned().collect();
        for oi in open {
            let file = lock(&oi.file).take();
            if let Some(f) = file {
                if let Err(e) = f.close().await {
                    tracing::warn!("closing {} at unmount: {e}", f.path());
                }
            }
            let hidden = oi.state.lock().await.hidden.take();
            if let Some(h) = hidden {
                let _ = self.inner.client.unlink(&h).await;
            }
        }
    }

    /// Runs `fut` on the runtime; the future sends the reply.
    fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(fut);
    }
}

/// Logs a failed request: expected outcomes (no such file, exists, ...) at
/// debug level, everything else as a warning with the SDK's message.
fn report(op: &str, e: &Error) -> Errno {
    match e.kind() {
        ErrorKind::NotFound
        | ErrorKind::AlreadyExists
        | ErrorKind::NotEmpty
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory => tracing::debug!("{op}: {e}"),
        _ => tracing::warn!("{op}: {e}"),
    }
    errno_of(e)
}

impl Inner {
    fn ttl(&self) -> Duration {
        self.cfg.attr_ttl
    }

    fn attr(&self, st: &Stat, unlinked: bool) -> FileAttr {
        let (kind, perm, nlink) = match st.kind {
            // 1, not 2 + subdirectories (unknown without a listing): tools
            // like find then do not assume a leaf directory.
            InodeKind::Dir => (FileType::Directory, 0o755, 1),
            InodeKind::File => (FileType::RegularFile, 0o644, if unlinked { 0 } else { 1 }),
        };
        let mtime = time_of(st.mtime_ms);
        FileAttr {
            ino: INodeNo(st.ino.0),
            size: st.size,
            blocks: st.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: time_of(st.ctime_ms.max(st.mtime_ms)),
            crtime: time_of(st.ctime_ms),
            kind,
            perm,
            nlink,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
            rdev: 0,
            blksize: 128 << 10,
            flags: 0,
        }
    }

    /// The open state of `ino`, if some handle or operation holds one.
    fn open_inode(&self, ino: u64) -> Option<Arc<OpenInode>> {
        lock(&self.open).get(&ino).cloned()
    }

    /// The open state of `ino` (created if needed), locked.
    async fn lock_open(&self, ino: u64) -> (Arc<OpenInode>, OwnedMutexGuard<OpenState>) {
        loop {
            let oi = lock(&self.open)
                .entry(ino)
                .or_insert_with(|| {
                    Arc::new(OpenInode {
                        state: Arc::new(tokio::sync::Mutex::new(OpenState::default())),
                        file: Mutex::new(None),
                        local_mtime_ms: AtomicU64::new(0),
                        leased_stat: Mutex::new(None),
                    })
                })
                .clone();
            let guard = oi.state.clone().lock_owned().await;
            if !guard.removed {
                return (oi, guard);
            }
        }
    }

    /// Drops the open state of `ino` if nothing uses it any more. Call with
    /// its lock held.
    fn retire_if_unused(&self, ino: u64, oi: &Arc<OpenInode>, st: &mut OpenState) {
        if st.handles == 0 && st.mode.is_none() {
            st.removed = true;
            let mut open = lock(&self.open);
            if open.get(&ino).is_some_and(|cur| Arc::ptr_eq(cur, oi)) {
                open.remove(&ino);
            }
        }
    }

    fn path(&self, ino: u64) -> Result<String> {
        lock(&self.inodes).path(ino)
    }

    fn child_path(&self, parent: u64, name: &str) -> Result<String> {
        if parent == ROOT_INODE.0 && name == HIDDEN_DIR_NAME {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("/{HIDDEN_DIR_NAME} is reserved by pstorage-mount"),
            ));
        }
        lock(&self.inodes).child_path(parent, name)
    }

    /// Makes sure `oi` holds a lease of at least `want` on the file at
    /// `path`. Returns whether a fresh lease was acquired (the file may have
    /// changed since any earlier lease: caches must be dropped).
    async fn acquire(
        &self,
        ino: u64,
        oi: &OpenInode,
        st: &mut OpenState,
        path: &str,
        want: LeaseMode,
    ) -> Result<bool> {
        match (st.mode, want) {
            (Some(LeaseMode::Write), _) | (Some(LeaseMode::Read), LeaseMode::Read) => {
                return Ok(false)
            }
            (Some(LeaseMode::Read), LeaseMode::Write) => {
                // No in-place upgrade at the MDS: release the read lease and
                // ask for the write lease; restore the read lease on failure.
                let old = lock(&oi.file).take();
                *lock(&oi.leased_stat) = None;
                st.mode = None;
                if let Some(f) = old {
                    let _ = f.close().await;
                }
                match self
                    .client
                    .open(path, LeaseMode::Write, OpenFlags::default())
                    .await
                {
                    Ok(f) => {
                        *lock(&oi.file) = Some(f);
                        st.mode = Some(LeaseMode::Write);
                    }
                    Err(e) => {
                        if let Ok(f) = self
                            .client
                            .open(path, LeaseMode::Read, OpenFlags::default())
                            .await
                        {
                            *lock(&oi.file) = Some(f);
                            st.mode = Some(LeaseMode::Read);
                        }
                        return Err(e.context(format!("upgrading {path} to a write lease")));
                    }
                }
            }
            (None, _) => {
                let f = self.client.open(path, want, OpenFlags::default()).await?;
                *lock(&oi.file) = Some(f);
                st.mode = Some(want);
            }
        }
        if let Some(c) = &self.cache {
            c.invalidate_inode(ino);
        }
        Ok(true)
    }

    fn new_handle(&self, ino: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, HandleInfo { ino });
        fh
    }

    fn handle(&self, fh: u64) -> Result<HandleInfo> {
        lock(&self.handles).get(&fh).copied().ok_or_else(|| {
            Error::new(
                ErrorKind::BadHandle,
                format!("file handle {fh} is not open in this mount"),
            )
        })
    }

    /// The shared file of an open handle.
    fn file_of(&self, fh: u64) -> Result<(u64, Arc<OpenInode>, File)> {
        let h = self.handle(fh)?;
        let oi = self.open_inode(h.ino).ok_or_else(|| {
            Error::new(
                ErrorKind::BadHandle,
                format!("inode {} has no open file in this mount", h.ino),
            )
        })?;
        let file = lock(&oi.file).clone().ok_or_else(|| {
            Error::new(
                ErrorKind::BadHandle,
                format!(
                    "inode {} lost its lease (a failed upgrade); reopen it",
                    h.ino
                ),
            )
        })?;
        Ok((h.ino, oi, file))
    }

    /// Attributes of `ino`, with the size and mtime this mount knows better
    /// when it has the file open for writing.
    async fn getattr(&self, ino: u64) -> Result<FileAttr> {
        let unlinked = lock(&self.inodes).parent_is(ino, self.hidden_ino);
        let oi = self.open_inode(ino);
        let leased = oi.as_ref().and_then(|oi| {
            let file = lock(&oi.file).clone()?;
            let stat = lock(&oi.leased_stat).clone();
            Some((file, stat))
        });
        let mut st = match &leased {
            Some((_, Some(cached))) => cached.clone(),
            _ => {
                let path = self.path(ino)?;
                let st = self.client.stat(&path).await?;
                if st.ino != InodeId(ino) {
                    return Err(Error::stale(format!(
                        "{path} is now inode {} (inode {ino} was replaced by another client)",
                        st.ino
                    )));
                }
                if let (Some(oi), Some(_)) = (&oi, &leased) {
                    let still_leased = lock(&oi.file).as_ref().is_some_and(|f| {
                        Some(f.lease().id) == leased.as_ref().map(|l| l.0.lease().id)
                    });
                    if still_leased {
                        *lock(&oi.leased_stat) = Some(st.clone());
                    }
                }
                st
            }
        };
        if let (Some(oi), Some((file, _))) = (&oi, &leased) {
            if file.lease().mode == LeaseMode::Write {
                st.size = file.size();
            }
            st.mtime_ms = st.mtime_ms.max(oi.local_mtime_ms.load(Ordering::Relaxed));
        }
        Ok(self.attr(&st, unlinked))
    }

    async fn lookup(&self, parent: u64, name: &str) -> Result<FileAttr> {
        let path = self.child_path(parent, name).map_err(|e| {
            if e.kind() == ErrorKind::PermissionDenied {
                Error::not_found(format!("{name} not found"))
            } else {
                e
            }
        })?;
        let st = self.client.stat(&path).await?;
        lock(&self.inodes).add_lookup(st.ino.0, parent, name, st.kind);
        self.getattr(st.ino.0)
            .await
            .or_else(|_| Ok(self.attr(&st, false)))
    }

    async fn open(&self, ino: u64, flags: FuseOpenFlags) -> Result<(u64, FopenFlags)> {
        let want = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => LeaseMode::Read,
            _ => LeaseMode::Write,
        };
        let path = self.path(ino)?;
        let (oi, mut st) = self.lock_open(ino).await;
        let fresh = match self.acquire(ino, &oi, &mut st, &path, want).await {
            Ok(f) => f,
            Err(e) => {
                self.retire_if_unused(ino, &oi, &mut st);
                return Err(e);
            }
        };
        st.handles += 1;
        let fh = self.new_handle(ino);
        // Direct writes inside the file may run in parallel (the kernel
        // otherwise serializes them on the inode lock).
        let mut out = FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
        if !fresh {
            out |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        if self.cfg.direct_io {
            out |= FopenFlags::FOPEN_DIRECT_IO;
        }
        Ok((fh, out))
    }

    async fn create(
        &self,
        parent: u64,
        name: &str,
        flags: i32,
    ) -> Result<(FileAttr, u64, FopenFlags)> {
        let path = self.child_path(parent, name)?;
        let exclusive = flags & libc::O_EXCL != 0;
        let truncate = flags & libc::O_TRUNC != 0;
        // A file this mount already has open: its lease is ours, so the MDS
        // would refuse a second open; share it like `open` does.
        let known = lock(&self.inodes).child(parent, name);
        if let Some(ino) = known.filter(|i| self.open_inode(*i).is_some()) {
            if exclusive {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{path} already exists"),
                ));
            }
            let (fh, fl) = self
                .open(ino, FuseOpenFlags(libc::O_RDWR))
                .await
                .map_err(|e| e.context(format!("create {path}")))?;
            if truncate {
                if let Err(e) = self.truncate(ino, Some(fh), 0).await {
                    let _ = self.release(fh).await;
                    return Err(e);
                }
            }
            lock(&self.inodes).add_lookup(ino, parent, name, InodeKind::File);
            let attr = self.getattr(ino).await?;
            return Ok((attr, fh, fl));
        }
        let file = self
            .client
            .open(
                &path,
                LeaseMode::Write,
                OpenFlags {
                    create: true,
                    exclusive,
                    truncate,
                },
            )
            .await?;
        let ino = file.lease().ino;
        let size = file.size();
        let (oi, mut st) = self.lock_open(ino.0).await;
        if st.mode.is_some() {
            // Cannot happen: the MDS just granted us the exclusive lease.
            let _ = file.close().await;
            return Err(Error::internal(format!(
                "{path}: inode {ino} already has a lease in this mount"
            )));
        }
        *lock(&oi.file) = Some(file);
        st.mode = Some(LeaseMode::Write);
        st.handles += 1;
        if let Some(c) = &self.cache {
            c.invalidate_inode(ino.0);
        }
        drop(st);
        let fh = self.new_handle(ino.0);
        lock(&self.inodes).add_lookup(ino.0, parent, name, InodeKind::File);
        let now = now_ms();
        let stat = Stat {
            ino,
            kind: InodeKind::File,
            size,
            mtime_ms: now,
            ctime_ms: now,
            attrs: Default::default(),
        };
        let mut fl = FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
        if self.cfg.direct_io {
            fl |= FopenFlags::FOPEN_DIRECT_IO;
        }
        Ok((self.attr(&stat, false), fh, fl))
    }

    async fn release(&self, fh: u64) -> Result<()> {
        let h = lock(&self.handles).remove(&fh);
        let Some(h) = h else {
            return Ok(());
        };
        let (oi, mut st) = self.lock_open(h.ino).await;
        st.handles = st.handles.saturating_sub(1);
        if st.handles > 0 {
            return Ok(());
        }
        let file = lock(&oi.file).take();
        *lock(&oi.leased_stat) = None;
        st.mode = None;
        let closed = match file {
            Some(f) => f.close().await.map_err(|e| e.context("closing on release")),
            None => Ok(()),
        };
        if let Some(hidden) = st.hidden.take() {
            if let Err(e) = self.client.unlink(&hidden).await {
                tracing::warn!("removing {hidden} (unlinked while open): {e}");
            }
            if let Some(c) = &self.cache {
                c.invalidate_inode(h.ino);
            }
        }
        self.retire_if_unused(h.ino, &oi, &mut st);
        closed
    }

    async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        let (ino, oi, file) = self.file_of(fh)?;
        let Some(cache) = &self.cache else {
            return self.read_file(&oi, file, offset, size as u64).await;
        };
        let end = file.size();
        if offset >= end {
            return Ok(Bytes::new());
        }
        let len = (size as u64).min(end - offset);
        if cache.note_read(ino, offset, len) {
            return self.read_file(&oi, file, offset, len).await;
        }
        if let Some(d) = cache.get(ino, offset, len) {
            return Ok(Bytes::from(d));
        }
        let generation = cache.generation(ino);
        let data = self.read_file(&oi, file, offset, len).await?;
        cache.offer(ino, offset, &data, generation);
        Ok(data)
    }

    /// Reads through `file`, retrying once with the inode's current file if
    /// `file` was replaced by a lease upgrade meanwhile.
    async fn read_file(&self, oi: &OpenInode, file: File, offset: u64, len: u64) -> Result<Bytes> {
        match file.read_at_bytes(offset, len).await {
            Err(e) if e.kind() == ErrorKind::BadHandle => {
                let current = lock(&oi.file).clone().ok_or(e)?;
                current.read_at_bytes(offset, len).await
            }
            other => other,
        }
    }

    async fn write(&self, fh: u64, offset: u64, data: Bytes) -> Result<u32> {
        let (ino, oi, file) = self.file_of(fh)?;
        let len = data.len() as u64;
        if let Some(c) = &self.cache {
            c.invalidate_range(ino, offset, len);
        }
        file.write_at_bytes(offset, data).await?;
        // Again after the write: a read that began between the first
        // invalidation and the write landing must not be admitted.
        if let Some(c) = &self.cache {
            c.invalidate_range(ino, offset, len);
        }
        oi.local_mtime_ms.store(now_ms(), Ordering::Relaxed);
        Ok(len as u32)
    }

    /// Sets the size of `ino`: through the open file (upgraded to a write
    /// lease if needed), or with a temporary write lease.
    async fn truncate(&self, ino: u64, _fh: Option<u64>, size: u64) -> Result<()> {
        let path = self.path(ino)?;
        let (oi, mut st) = self.lock_open(ino).await;
        let temporary = st.mode.is_none();
        let result = async {
            self.acquire(ino, &oi, &mut st, &path, LeaseMode::Write)
                .await?;
            let file = lock(&oi.file).clone().ok_or_else(|| {
                Error::internal(format!("{path}: no file after acquiring a write lease"))
            })?;
            if let Some(c) = &self.cache {
                c.invalidate_from(ino, size);
            }
            file.truncate(size).await?;
            if let Some(c) = &self.cache {
                c.invalidate_from(ino, size);
            }
            // The MDS changed ctime; ask it again.
            *lock(&oi.leased_stat) = None;
            oi.local_mtime_ms.store(now_ms(), Ordering::Relaxed);
            Ok(())
        }
        .await;
        if temporary && st.handles == 0 {
            let file = lock(&oi.file).take();
            *lock(&oi.leased_stat) = None;
            st.mode = None;
            if let Some(f) = file {
                let closed = f.close().await;
                if result.is_ok() {
                    closed?;
                }
            }
            self.retire_if_unused(ino, &oi, &mut st);
        }
        result
    }

    async fn setattr(&self, ino: u64, fh: Option<u64>, size: Option<u64>) -> Result<FileAttr> {
        if let Some(size) = size {
            if lock(&self.inodes).kind(ino) == Some(InodeKind::Dir) {
                return Err(Error::new(
                    ErrorKind::IsADirectory,
                    format!("inode {ino} is a directory; only files can be truncated"),
                ));
            }
            self.truncate(ino, fh, size).await?;
        }
        // Mode, owner and times are not stored by the cluster: accepted and
        // ignored (documented in the README), so cp -p and rsync -a work.
        self.getattr(ino).await
    }

    async fn fsync(&self, fh: u64) -> Result<()> {
        let (_, _, file) = self.file_of(fh)?;
        file.flush().await
    }

    async fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;
        let (ino, oi, file) = self.file_of(fh)?;
        if file.lease().mode != LeaseMode::Write {
            return Err(Error::new(
                ErrorKind::BadHandle,
                "fallocate needs a file opened for writing",
            ));
        }
        let end = offset
            .checked_add(length)
            .ok_or_else(|| Error::new(ErrorKind::FileTooLarge, "fallocate range overflows"))?;
        let size = file.size();
        match mode {
            // Space is allocated on first write; allocating is only a size
            // change, and nothing with KEEP_SIZE.
            0 => {
                if end > size {
                    file.truncate(end).await?;
                    *lock(&oi.leased_stat) = None;
                }
            }
            KEEP_SIZE => {}
            m if m == PUNCH_HOLE | KEEP_SIZE
                || m == ZERO_RANGE
                || m == ZERO_RANGE | KEEP_SIZE =>
            {
                let end = if m & KEEP_SIZE != 0 { end.min(size) } else { end };
                if end > offset {
                    if let Some(c) = &self.cache {
                        c.invalidate_range(ino, offset, end - offset);
                    }
                    file.write_zeros(offset, end - offset).await?;
                    if let Some(c) = &self.cache {
                        c.invalidate_range(ino, offset, end - offset);
                    }
                }
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "fallocate mode {mode:#x} is not supported (supported: 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE)"
                    ),
                ))
            }
        }
        oi.local_mtime_ms.store(now_ms(), Ordering::Relaxed);
        Ok(())
    }

    async fn mkdir(&self, parent: u64, name: &str) -> Result<FileAttr> {
        let path = self.child_path(parent, name)?;
        let st = self.client.mkdir(&path, false).await?;
        lock(&self.inodes).add_lookup(st.ino.0, parent, name, InodeKind::Dir);
        Ok(self.attr(&st, false))
    }

    /// Moves the open file `ino` (now at `path`) to the hidden directory;
    /// it is removed at its last release. Call with its open lock held.
    async fn hide(&self, ino: u64, st: &mut OpenState, path: &str) -> Result<()> {
        let name = format!(
            "{}-{ino}-{}",
            self.hidden_prefix,
            self.next_hidden.fetch_add(1, Ordering::Relaxed)
        );
        let hidden = format!("/{HIDDEN_DIR_NAME}/{name}");
        self.client.rename(path, &hidden).await?;
        lock(&self.inodes).rename(ino, self.hidden_ino, &name);
        st.hidden = Some(hidden);
        Ok(())
    }

    async fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        let path = self.child_path(parent, name)?;
        let known = lock(&self.inodes).child(parent, name);
        if let Some(ino) = known.filter(|i| self.open_inode(*i).is_some()) {
            let (oi, mut st) = self.lock_open(ino).await;
            if st.handles > 0 {
                self.hide(ino, &mut st, &path).await?;
                return Ok(());
            }
            self.retire_if_unused(ino, &oi, &mut st);
        }
        self.client.unlink(&path).await?;
        lock(&self.inodes).unlink(parent, name);
        if let (Some(c), Some(ino)) = (&self.cache, known) {
            c.invalidate_inode(ino);
        }
        Ok(())
    }

    async fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        let path = self.child_path(parent, name)?;
        let st = self.client.stat(&path).await?;
        if st.kind != InodeKind::Dir {
            return Err(Error::new(
                ErrorKind::NotADirectory,
                format!("{path} is not a directory"),
            ));
        }
        self.client.unlink(&path).await?;
        lock(&self.inodes).unlink(parent, name);
        Ok(())
    }

    async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        flags: RenameFlags,
    ) -> Result<()> {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Error::invalid(
                "rename with RENAME_EXCHANGE or RENAME_WHITEOUT is not supported by pstorage-mount",
            ));
        }
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        if flags.contains(RenameFlags::RENAME_NOREPLACE) && self.client.exists(&to).await? {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("rename {from} -> {to}: {to} exists (RENAME_NOREPLACE)"),
            ));
        }
        let src = lock(&self.inodes).child(parent, name);
        let target = lock(&self.inodes)
            .child(new_parent, new_name)
            .filter(|t| Some(*t) != src);
        // Replacing a file this mount has open: the MDS refuses to drop a
        // leased file, so move it to the hidden directory first.
        let mut hidden_target = None;
        if let Some(t) = target.filter(|t| self.open_inode(*t).is_some()) {
            let (oi, mut st) = self.lock_open(t).await;
            if st.handles > 0 {
                self.hide(t, &mut st, &to).await?;
                hidden_target = st.hidden.clone().map(|h| (t, h, oi.clone()));
            } else {
                self.retire_if_unused(t, &oi, &mut st);
            }
        }
        if let Err(e) = self.client.rename(&from, &to).await {
            if let Some((t, hidden, oi)) = hidden_target {
                // Put the replaced file back where it was.
                if self.client.rename(&hidden, &to).await.is_ok() {
                    let mut st = oi.state.lock().await;
                    st.hidden = None;
                    lock(&self.inodes).rename(t, new_parent, new_name);
                }
            }
            return Err(e);
        }
        let mut inodes = lock(&self.inodes);
        match src {
            Some(s) => inodes.rename(s, new_parent, new_name),
            None => inodes.unlink(new_parent, new_name),
        }
        Ok(())
    }

    async fn opendir(&self, ino: u64) -> Result<u64> {
        let path = self.path(ino)?;
        let entries = self.client.readdir(&path).await?;
        let parent_ino = {
            let inodes = lock(&self.inodes);
            inodes.parent(ino).unwrap_or(ROOT_INODE.0)
        };
        let mut items = vec![
            DirItem {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirItem {
                ino: parent_ino,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for e in entries {
            if ino == ROOT_INODE.0 && e.name == HIDDEN_DIR_NAME {
                continue;
            }
            items.push(DirItem {
                ino: e.stat.ino.0,
                kind: match e.stat.kind {
                    InodeKind::Dir => FileType::Directory,
                    InodeKind::File => FileType::RegularFile,
                },
                name: e.name,
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(items));
        Ok(fh)
    }

    async fn statfs(&self) -> Result<(u64, u64, u64)> {
        let status = self.client.cluster_status().await?;
        let (mut total, mut free) = (0u64, 0u64);
        for cs in &status.cs {
            if cs.status != CsStatus::Dropped {
                total += cs.space.total_bytes;
                free += cs.space.free_bytes;
            }
        }
        Ok((total, free, status.files + status.dirs))
    }
}

/// Block size statfs reports in.
const STATFS_BLOCK_BYTES: u64 = 4096;

impl Filesystem for PstorageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let cfg = &self.inner.cfg;
        if let Err(nearest) = config.set_max_write(cfg.max_write_bytes) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(cfg.max_readahead_bytes) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(cfg.max_background);
        // Async direct I/O lets libaio keep several requests in flight;
        // parallel dirops lets lookups in one directory run concurrently.
        // FUSE_AUTO_INVAL_DATA is deliberately not asked for: leases already
        // tell when cached pages may be stale (see the module docs).
        for cap in [InitFlags::FUSE_ASYNC_DIO, InitFlags::FUSE_PARALLEL_DIROPS] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&inner.ttl(), &attr, Generation(0)),
                Err(e) => reply.error(report("lookup", &e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inner.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.getattr(ino.0).await {
                Ok(attr) => reply.attr(&inner.ttl(), &attr),
                Err(e) => reply.error(report("getattr", &e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.setattr(ino.0, fh.map(|f| f.0), size).await {
                Ok(attr) => reply.attr(&inner.ttl(), &attr),
                Err(e) => reply.error(report("setattr", &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        // There are no symlinks; the kernel only asks for symlink inodes.
        reply.error(Errno::EINVAL);
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(unsupported(
                "mknod of anything but a regular file (fifo, socket, device)",
            ));
        }
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            let r = async {
                let (attr, fh, _) = inner.create(parent.0, &name, libc::O_EXCL).await?;
                inner.release(fh).await?;
                Ok::<_, Error>(attr)
            }
            .await;
            match r {
                Ok(attr) => reply.entry(&inner.ttl(), &attr, Generation(0)),
                Err(e) => reply.error(report("mknod", &e)),
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.mkdir(parent.0, &name).await {
                Ok(attr) => reply.entry(&inner.ttl(), &attr, Generation(0)),
                Err(e) => reply.error(report("mkdir", &e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("unlink", &e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("rmdir", &e)),
            }
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        // EPERM: "the file system does not support symbolic links" (symlink(2)).
        reply.error(unsupported("symlink"));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (from, to) = match (name_arg(name), name_arg(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.rename(parent.0, &from, newparent.0, &to, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("rename", &e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // EPERM: "the file system does not support hard links" (link(2)).
        reply.error(unsupported("link (hard links)"));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.open(ino.0, flags).await {
                Ok((fh, fl)) => reply.opened(FileHandle(fh), fl),
                Err(e) => reply.error(report("open", &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(report("read", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let inner = self.inner.clone();
        // The request buffer is fuser's: one copy to own it.
        let data = Bytes::copy_from_slice(data);
        self.spawn(async move {
            match inner.write(fh.0, offset, data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(report("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): writes are acknowledged by every replica already, and
        // the size is committed when the lease is released (last close) or
        // on fsync. Flushing at every close would fdatasync every replica.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("release", &e)),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("fsync", &e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(report("opendir", &e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = lock(&self.inner.dirs).get(&fh.0).cloned();
        let Some(items) = items else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            // The offset of an entry is where the next readdir resumes.
            if reply.add(INodeNo(item.ino), (i + 1) as u64, item.kind, &item.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.inner.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every namespace change is committed (fsync'ed) at the MDS before it
        // is answered.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.statfs().await {
                Ok((total, free, files)) => reply.statfs(
                    total / STATFS_BLOCK_BYTES,
                    free / STATFS_BLOCK_BYTES,
                    free / STATFS_BLOCK_BYTES,
                    files,
                    u32::MAX as u64,
                    STATFS_BLOCK_BYTES as u32,
                    255,
                    STATFS_BLOCK_BYTES as u32,
                ),
                Err(e) => reply.error(report("statfs", &e)),
            }
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.create(parent.0, &name, flags).await {
                Ok((attr, fh, fl)) => {
                    reply.created(&inner.ttl(), &attr, Generation(0), FileHandle(fh), fl)
                }
                Err(e) => reply.error(report("create", &e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let inner = self.inner.clone();
        self.spawn(async move {
            match inner.fallocate(fh.0, offset, length, mode).await {
                Ok(()) => reply.ok(),
                Err(e) if e.kind() == ErrorKind::InvalidArgument => {
                    tracing::debug!("fallocate: {e}");
                    reply.error(Errno::EOPNOTSUPP)
                }
                Err(e) => reply.error(report("fallocate", &e)),
            }
        });
    }

    // What follows is not supported. ENOSYS is the answer the kernel
    // remembers for the whole mount ("not implemented, stop asking"): it then
    // returns EOPNOTSUPP for xattrs without asking again (which also spares
    // the security.capability lookup on every write), checks access by mode
    // bits, keeps POSIX locks local to this host and copies ranges itself.

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: fuser::ReplyLock,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Not a terminal nor a device: what a regular file answers.
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        // The kernel then handles SEEK_DATA/SEEK_HOLE as "all data".
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn bmap(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _blocksize: u32,
        _idx: u64,
        reply: fuser::ReplyBmap,
    ) {
        reply.error(Errno::ENOSYS);
    }
}
