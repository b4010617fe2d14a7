//! The mount's file-system operations, with no FUSE types: requests by inode
//! number and handle (as the kernel speaks) mapped onto the pstorage SDK (by
//! path), answered with plain structs ([`Attr`], [`DirEntry`], [`Opened`],
//! [`StatFs`]) or the core [`Error`]. [`FsOps`] owns the inode table
//! ([`InodeTable`]), the open files (`open_files.rs`) and the optional
//! read cache ([`ReadCache`]); the fuser adapter (`fs.rs`) only converts.
//!
//! Open files: one [`File`] per inode shared by every handle of that inode,
//! read lease upgraded to write on the first writable open, released at the
//! last release (see `open_files.rs`).
//!
//! Kernel page cache: while the mount holds a lease on a file no other client
//! can change it (any writer needs the exclusive write lease, which our lease
//! excludes), so pages cached while a lease is held stay valid until it is
//! released. An open that finds the lease already held answers
//! [`Opened::keep_cache`] (the read->write upgrade is in place at the MDS:
//! the same lease); an open that acquires a fresh lease answers without it,
//! which makes the kernel drop the inode's cached pages. The local read cache follows the same rule
//! (`ReadCache::invalidate_inode`). Attributes and directory entries are
//! cached by the kernel for [`FsConfig::attr_ttl`] (1 s by default): sizes
//! and names changed by other clients show up within that time.
//!
//! Unlinking an open file: the MDS refuses to remove a leased file, while
//! POSIX lets a process keep using a file after unlinking it. The mount moves
//! such a file to a hidden directory at the cluster root
//! ([`HIDDEN_DIR_NAME`], invisible through the mount) and removes it when its
//! last handle is released (like libfuse's `.fuse_hidden` files, but out of the
//! way of `rmdir`). A rename over an open file does the same with the target.
//! Leftovers of a mount that died are removed by the next mount.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pstorage_core::client::{Client, File};
use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::types::{
    CsStatus, InodeId, InodeKind, LeaseMode, OpenFlags, Perms, RenameFlags, Stat, StatChange,
    Timestamp, PERMISSION_BITS, ROOT_INODE,
};

pub mod locks;
pub mod posix;

use super::cache::ReadCache;
use super::dir_stats::DirStats;
use super::inodes::InodeTable;
use super::open_files::{acquire, lock, OpenFiles, OpenInode, OpenState};

/// Name of the directory at the cluster root where files unlinked while open
/// wait for their last release. Hidden from the mount's root directory.
pub const HIDDEN_DIR_NAME: &str = ".pstorage-mount-unlinked";

/// Block size [`FsOps::statfs`] reports in.
pub const STATFS_BLOCK_BYTES: u64 = 4096;

/// Tunables of a mounted file system.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long the kernel may cache attributes and directory entries.
    pub attr_ttl: Duration,
    /// Record access times (relatime: at the last close of a file read
    /// since it was opened, when the access time is not after the
    /// modification time or is a day old); off with `noatime`.
    pub atime: bool,
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
            atime: true,
            direct_io: false,
            max_write_bytes: 1 << 20,
            max_readahead_bytes: 1 << 20,
            max_background: 64,
        }
    }
}

/// Attributes of a file or directory, as the mount reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (the MDS's inode id).
    pub ino: u64,
    /// File or directory.
    pub kind: InodeKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// 512-byte blocks (the size rounded up).
    pub blocks: u64,
    /// Access time (as far as the cluster records reads).
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
    /// Creation time (the change time: the cluster keeps no birth time).
    pub crtime: SystemTime,
    /// Permission bits (07777).
    pub perm: u16,
    /// Names it has (0 for a file unlinked while open).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The device of a device node.
    pub rdev: u32,
    /// Preferred I/O size in bytes.
    pub blksize: u32,
}

/// One entry of a directory listing ([`FsOps::readdir`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number of the entry.
    pub ino: u64,
    /// File or directory.
    pub kind: InodeKind,
    /// Name in its directory (`.` and `..` included).
    pub name: String,
}

/// An open handle ([`FsOps::open`], [`FsOps::create`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The handle, for read, write, fsync and release.
    pub fh: u64,
    /// The kernel may keep the pages it cached for the inode (the lease was
    /// held continuously since they were read).
    pub keep_cache: bool,
    /// Bypass the kernel page cache ([`FsConfig::direct_io`]).
    pub direct_io: bool,
}

/// File-system statistics ([`FsOps::statfs`]), in the fields of statvfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks of [`StatFs::block_size`] over the chunk servers not
    /// dropped.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Free blocks available to unprivileged users (all of them).
    pub blocks_available: u64,
    /// Files and directories in the cluster.
    pub files: u64,
    /// Free inodes (no limit: `u32::MAX`).
    pub files_free: u64,
    /// Block size in bytes ([`STATFS_BLOCK_BYTES`]).
    pub block_size: u32,
    /// Longest file name in bytes.
    pub name_max: u32,
    /// Fragment size in bytes (the block size).
    pub fragment_size: u32,
}

/// One open handle.
#[derive(Clone, Copy)]
struct HandleInfo {
    ino: u64,
}

/// The file system over one [`Client`]: every operation of the mount.
/// Shared between request tasks (`Arc<FsOps>`); every method takes `&self`.
pub struct FsOps {
    client: Client,
    cfg: FsConfig,
    inodes: Mutex<InodeTable>,
    open: OpenFiles,
    handles: Mutex<HashMap<u64, HandleInfo>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    next_hidden: AtomicU64,
    cache: Option<Arc<ReadCache>>,
    hidden_ino: u64,
    hidden_prefix: String,
    /// Directories' attributes as creates in them brought them back.
    dir_stats: DirStats,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a file read now is due a new access time (relatime: the access
/// time is not after the modification time, or it is a day old). Unlike
/// Linux, a change time after the access time does not count: recording
/// the access time is an attribute change at the MDS and moves the change
/// time, so it would count every time.
pub(super) fn relatime_due(st: &Stat, now_ms: u64) -> bool {
    st.atime <= st.mtime || now_ms.saturating_sub(st.atime.as_ms()) >= 24 * 3600 * 1000
}

/// A cluster time as the kernel takes it (before the epoch too).
pub(super) fn time_of(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}

/// A time from the kernel as the cluster stores it.
pub(super) fn timestamp_of(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(before) => {
            let d = before.duration();
            let (sec, nsec) = (d.as_secs(), d.subsec_nanos());
            if nsec == 0 {
                Timestamp {
                    sec: -i64::try_from(sec).unwrap_or(i64::MAX),
                    nsec: 0,
                }
            } else {
                Timestamp {
                    sec: -i64::try_from(sec).unwrap_or(i64::MAX) - 1,
                    nsec: 1_000_000_000 - nsec,
                }
            }
        }
    }
}

impl FsOps {
    /// Prepares the file system over `client`: creates the hidden directory
    /// for files unlinked while open and removes what a dead mount left
    /// there. The client's tasks run on the runtime this is awaited on.
    pub async fn new(
        client: Client,
        cfg: FsConfig,
        cache: Option<Arc<ReadCache>>,
    ) -> Result<FsOps> {
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
        Ok(FsOps {
            client,
            dir_stats: DirStats::new(cfg.attr_ttl),
            cfg,
            inodes: Mutex::new(inodes),
            open: OpenFiles::default(),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            next_hidden: AtomicU64::new(1),
            cache,
            hidden_ino: hidden.ino.0,
            hidden_prefix: format!("{host}-{}", std::process::id()),
        })
    }

    /// The tunables this file system was made with.
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// Closes every file still open (flushing it and releasing its lease).
    /// Called after the session ended (unmounted); errors are logged.
    pub async fn close_all(&self) {
        for oi in self.open.all() {
            let file = lock(&oi.file).take();
            if let Some(f) = file {
                if let Err(e) = f.close().await {
                    tracing::warn!("closing {} at unmount: {e}", f.path());
                }
            }
            let hidden = oi.state.lock().await.hidden.take();
            if let Some(h) = hidden {
                let _ = self.client.unlink(&h).await;
            }
        }
    }

    fn attr(&self, st: &Stat, unlinked: bool) -> Attr {
        Attr {
            ino: st.ino.0,
            kind: st.kind,
            size: st.size,
            blocks: st.size.div_ceil(512),
            atime: time_of(st.atime),
            mtime: time_of(st.mtime),
            ctime: time_of(st.ctime),
            crtime: time_of(st.ctime),
            perm: (st.mode & PERMISSION_BITS) as u16,
            nlink: if unlinked && st.kind != InodeKind::Dir {
                st.nlink.saturating_sub(1)
            } else {
                st.nlink
            },
            uid: st.uid,
            gid: st.gid,
            rdev: st.rdev as u32,
            blksize: 128 << 10,
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

    async fn acquire(
        &self,
        ino: u64,
        oi: &OpenInode,
        st: &mut OpenState,
        path: &str,
        want: LeaseMode,
    ) -> Result<bool> {
        acquire(&self.client, self.cache.as_deref(), ino, oi, st, path, want).await
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
        let oi = self.open.get(h.ino).ok_or_else(|| {
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
    /// when it has the file open for writing. Errors: `Stale` if the inode
    /// is unknown to the mount or its path now names another inode.
    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        // The kernel asks for a directory's attributes again after each
        // create in it: the create brought them back.
        if let Some(st) = self.dir_stats.get(ino) {
            return Ok(self.attr(&st, false));
        }
        let unlinked = lock(&self.inodes).parent_is(ino, self.hidden_ino);
        let oi = self.open.get(ino);
        // Not while the inode's lease changes: a release between taking
        // the file out and committing its size would let the MDS's older
        // size through, and the kernel would shrink the file it just wrote
        // (`echo a > f; echo b >> f; stat f` showed 1 byte, not 4).
        let _lease_change = match &oi {
            Some(oi) => Some(oi.state.lock().await),
            None => None,
        };
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
            let local = Timestamp::from_ms(oi.local_mtime_ms.load(Ordering::Relaxed));
            st.mtime = st.mtime.max(local);
            st.ctime = st.ctime.max(local);
        }
        Ok(self.attr(&st, unlinked))
    }

    /// Looks `name` up in directory `parent`; the inode is remembered (one
    /// more lookup for [`FsOps::forget`]). Errors: `NotFound` (also for the
    /// hidden directory), `Stale` for an unknown parent.
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        let path = self.child_path(parent, name).map_err(|e| {
            if e.kind() == ErrorKind::PermissionDenied {
                Error::not_found(format!("{name} not found"))
            } else {
                e
            }
        })?;
        let st = self.client.stat(&path).await?;
        if st.nlink > 1 {
            lock(&self.inodes).add_link_lookup(st.ino.0, parent, name, st.kind);
        } else {
            lock(&self.inodes).add_lookup(st.ino.0, parent, name, st.kind);
        }
        // Newer than what a create may have left of a directory.
        self.dir_stats.forget(st.ino.0);
        // A file open here has attributes of its own (the size written
        // under its lease); any other inode's are the ones just read.
        if self.open.get(st.ino.0).is_none() {
            return Ok(self.attr(&st, false));
        }
        self.getattr(st.ino.0)
            .await
            .or_else(|_| Ok(self.attr(&st, false)))
    }

    /// The kernel forgets `nlookup` lookups of `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        lock(&self.inodes).forget(ino, nlookup);
    }

    /// Opens file `ino` with the open(2) `flags` (only the access mode
    /// counts: read-only takes a read lease, anything else a write lease).
    /// Errors: the SDK's (`Busy` when another client holds a conflicting
    /// lease), `Stale` for an unknown inode.
    pub async fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        let want = match flags & libc::O_ACCMODE {
            libc::O_WRONLY | libc::O_RDWR => LeaseMode::Write,
            _ => LeaseMode::Read,
        };
        let path = self.path(ino)?;
        let (oi, mut st) = self.open.lock(ino).await;
        let fresh = match self.acquire(ino, &oi, &mut st, &path, want).await {
            Ok(f) => f,
            Err(e) => {
                self.open.retire_if_unused(ino, &oi, &mut st);
                return Err(e);
            }
        };
        st.handles += 1;
        let fh = self.new_handle(ino);
        Ok(Opened {
            fh,
            keep_cache: !fresh,
            direct_io: self.cfg.direct_io,
        })
    }

    /// Creates (or opens) file `name` in `parent` for writing, with the
    /// open(2) `flags` `O_EXCL` and `O_TRUNC` honoured. Errors:
    /// `AlreadyExists` with `O_EXCL`, `IsADirectory`, `PermissionDenied` for
    /// the hidden directory, the SDK's.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        flags: i32,
        perms: Perms,
    ) -> Result<(Attr, Opened)> {
        let path = self.child_path(parent, name)?;
        let exclusive = flags & libc::O_EXCL != 0;
        let truncate = flags & libc::O_TRUNC != 0;
        // A file this mount already has open: its lease is ours, so the MDS
        // would refuse a second open; share it like `open` does.
        let known = lock(&self.inodes).child(parent, name);
        if let Some(ino) = known.filter(|i| self.open.get(*i).is_some()) {
            if exclusive {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{path} already exists"),
                ));
            }
            let opened = self
                .open(ino, libc::O_RDWR)
                .await
                .map_err(|e| e.context(format!("create {path}")))?;
            if truncate {
                if let Err(e) = self.truncate(ino, 0).await {
                    let _ = self.release(opened.fh).await;
                    return Err(e);
                }
            }
            lock(&self.inodes).add_lookup(ino, parent, name, InodeKind::File);
            let attr = self.getattr(ino).await?;
            return Ok((attr, opened));
        }
        let ticket = self.dir_stats.ticket();
        let file = self
            .client
            .open_with(
                &path,
                LeaseMode::Write,
                OpenFlags {
                    create: true,
                    exclusive,
                    truncate,
                },
                perms,
            )
            .await?;
        let ino = file.lease().ino;
        let stat = file.opened_stat().clone();
        if let Some(dir) = file.parent_stat() {
            self.dir_stats.keep(parent, dir, ticket);
        }
        let (oi, mut st) = self.open.lock(ino.0).await;
        if st.mode.is_some() {
            // Cannot happen: the MDS just granted us the exclusive lease.
            let _ = file.close().await;
            return Err(Error::internal(format!(
                "{path}: inode {ino} already has a lease in this mount"
            )));
        }
        *lock(&oi.file) = Some(file);
        // A file just created has no attributes to drop at its first write.
        oi.privs_checked.store(true, Ordering::Relaxed);
        st.mode = Some(LeaseMode::Write);
        st.handles += 1;
        if let Some(c) = &self.cache {
            c.invalidate_inode(ino.0);
        }
        drop(st);
        let fh = self.new_handle(ino.0);
        lock(&self.inodes).add_lookup(ino.0, parent, name, InodeKind::File);
        let opened = Opened {
            fh,
            keep_cache: false,
            direct_io: self.cfg.direct_io,
        };
        Ok((self.attr(&stat, false), opened))
    }

    /// Releases handle `fh`; the last handle of an inode closes its file
    /// (committing the size, releasing the lease) and removes it if it was
    /// unlinked while open. An unknown handle is ignored.
    pub async fn release(&self, fh: u64) -> Result<()> {
        let h = lock(&self.handles).remove(&fh);
        let Some(h) = h else {
            return Ok(());
        };
        let (oi, mut st) = self.open.lock(h.ino).await;
        st.handles = st.handles.saturating_sub(1);
        // The OFD and flock locks of the handle's file description end with
        // it (and a process's fcntl locks went at its close already).
        let owners = Self::owners_of_handle(&oi, fh);
        if st.handles > 0 {
            for owner in owners {
                self.unlock_all(&oi, owner)
                    .await
                    .map_err(|e| e.context("unlocking on release"))?;
            }
            return Ok(());
        }
        // The last handle: releasing the lease drops every lock it holds.
        lock(&oi.lock_owners).clear();
        let file = lock(&oi.file).take();
        *lock(&oi.leased_stat) = None;
        st.mode = None;
        let read = oi.read.swap(false, Ordering::Relaxed);
        oi.privs_checked.store(false, Ordering::Relaxed);
        let atime_due = file
            .as_ref()
            .filter(|_| read && self.cfg.atime && st.hidden.is_none())
            .is_some_and(|f| relatime_due(f.opened_stat(), now_ms()));
        let closed = match file {
            Some(f) => f.close().await.map_err(|e| e.context("closing on release")),
            None => Ok(()),
        };
        if atime_due {
            self.touch_atime(h.ino).await;
        }
        if let Some(hidden) = st.hidden.take() {
            if let Err(e) = self.client.unlink(&hidden).await {
                tracing::warn!("removing {hidden} (unlinked while open): {e}");
            }
            if let Some(c) = &self.cache {
                c.invalidate_inode(h.ino);
            }
        }
        self.open.retire_if_unused(h.ino, &oi, &mut st);
        closed
    }

    /// Reads up to `size` bytes at `offset` through handle `fh` (short at
    /// the end of the file, empty past it). Errors: `BadHandle`, the SDK's.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Bytes> {
        let (ino, oi, file) = self.file_of(fh)?;
        oi.read.store(true, Ordering::Relaxed);
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

    /// Writes `data` at `offset` through handle `fh`; returns the bytes
    /// written (all of them). Errors: `BadHandle` (also for a handle opened
    /// read-only), the SDK's.
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: Bytes,
        kill_suidgid: bool,
    ) -> Result<u32> {
        let (ino, oi, file) = self.file_of(fh)?;
        if kill_suidgid || !oi.privs_checked.load(Ordering::Relaxed) {
            self.kill_privs(ino, &oi, kill_suidgid).await?;
        }
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

    /// close(2) of a handle: nothing to do. Writes are acknowledged by every
    /// replica already, and the size is committed when the lease is released
    /// (last close) or on fsync. Flushing at every close would fdatasync
    /// every replica.
    pub fn flush(&self, _fh: u64) -> Result<()> {
        Ok(())
    }

    /// Sets the size of `ino`: through the open file (upgraded to a write
    /// lease if needed), or with a temporary write lease.
    async fn truncate(&self, ino: u64, size: u64) -> Result<()> {
        let path = self.path(ino)?;
        let (oi, mut st) = self.open.lock(ino).await;
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
            self.open.retire_if_unused(ino, &oi, &mut st);
        }
        result
    }

    /// Changes the attributes of `ino`: the size (truncate or extend) when
    /// `size` is given, then the mode, owners and times in `change`. `_fh`
    /// is the handle the kernel names, if any (the inode's shared file is
    /// used either way). Returns the new attributes. Errors:
    /// `IsADirectory` for a size on a directory, `Busy` if another client
    /// holds a lease, the SDK's.
    pub async fn setattr(
        &self,
        ino: u64,
        _fh: Option<u64>,
        size: Option<u64>,
        change: StatChange,
    ) -> Result<Attr> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
        if let Some(size) = size {
            if lock(&self.inodes).kind(ino) == Some(InodeKind::Dir) {
                return Err(Error::new(
                    ErrorKind::IsADirectory,
                    format!("inode {ino} is a directory; only files can be truncated"),
                ));
            }
            self.truncate(ino, size).await?;
        }
        if change != StatChange::default() {
            self.set_stat(ino, change).await?;
        }
        self.getattr(ino).await
    }

    /// Makes everything written through `fh`'s inode durable and commits
    /// its size. Errors: `BadHandle`, the SDK's.
    pub async fn fsync(&self, fh: u64) -> Result<()> {
        let (_, _, file) = self.file_of(fh)?;
        file.flush().await
    }

    /// fallocate(2) through handle `fh` (opened for writing). Supported
    /// modes: 0 (extends the size), `KEEP_SIZE` (nothing to do),
    /// `PUNCH_HOLE|KEEP_SIZE` and `ZERO_RANGE` (with or without `KEEP_SIZE`),
    /// which write zeros. Errors: `InvalidArgument` for any other mode,
    /// `BadHandle` for a read-only handle, `FileTooLarge` if the range
    /// overflows, the SDK's.
    pub async fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
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

    /// Creates directory `name` in `parent`. Errors: `AlreadyExists`,
    /// `PermissionDenied` for the hidden directory, the SDK's.
    pub async fn mkdir(&self, parent: u64, name: &str, perms: Perms) -> Result<Attr> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
        let path = self.child_path(parent, name)?;
        let st = self.client.mkdir_with(&path, false, perms).await?;
        lock(&self.inodes).add_lookup(st.ino.0, parent, name, InodeKind::Dir);
        Ok(self.attr(&st, false))
    }

    /// Drops the attributes an open inode keeps from the MDS (its names or
    /// times changed), so that the next getattr asks again.
    pub(super) fn forget_leased_stat(&self, ino: u64) {
        if let Some(oi) = self.open.get(ino) {
            *lock(&oi.leased_stat) = None;
        }
    }

    /// Moves the name `parent`/`name` (`path`) of the open file `ino` to the
    /// hidden directory; it is removed at its last release. Call with its
    /// open lock held.
    async fn hide(
        &self,
        ino: u64,
        st: &mut OpenState,
        (parent, name): (u64, &str),
        path: &str,
    ) -> Result<()> {
        // Its link count and change time change: ask the MDS again.
        self.forget_leased_stat(ino);
        if st.hidden.is_some() {
            // Another name of a file hidden already (hard links): its hidden
            // name keeps it alive; this one just goes.
            self.client.unlink(path).await?;
            lock(&self.inodes).unlink(parent, name);
            return Ok(());
        }
        let hidden_name = format!(
            "{}-{ino}-{}",
            self.hidden_prefix,
            self.next_hidden.fetch_add(1, Ordering::Relaxed)
        );
        let hidden = format!("/{HIDDEN_DIR_NAME}/{hidden_name}");
        self.client.rename(path, &hidden).await?;
        lock(&self.inodes).rename_entry(parent, name, self.hidden_ino, &hidden_name);
        st.hidden = Some(hidden);
        Ok(())
    }

    /// Removes file `name` from `parent` (hidden until its last release if
    /// this mount has it open). Errors: `NotFound`, `IsADirectory`, `Busy`
    /// if another client has it open, the SDK's.
    pub async fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
        let path = self.child_path(parent, name)?;
        let known = lock(&self.inodes).child(parent, name);
        if let Some(ino) = known.filter(|i| self.open.get(*i).is_some()) {
            let (oi, mut st) = self.open.lock(ino).await;
            if st.handles > 0 {
                self.hide(ino, &mut st, (parent, name), &path).await?;
                return Ok(());
            }
            self.open.retire_if_unused(ino, &oi, &mut st);
        }
        self.client.unlink(&path).await?;
        lock(&self.inodes).unlink(parent, name);
        if let Some(ino) = known {
            self.forget_leased_stat(ino);
        }
        if let (Some(c), Some(ino)) = (&self.cache, known) {
            c.invalidate_inode(ino);
        }
        Ok(())
    }

    /// Removes the empty directory `name` from `parent`. Errors:
    /// `NotFound`, `NotADirectory`, `NotEmpty`, the SDK's.
    pub async fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
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

    /// Renames `parent`/`name` to `new_parent`/`new_name`, replacing a node
    /// there (a file hidden until its last release if this mount has it
    /// open). `flags` are rename2(2)'s: `RENAME_NOREPLACE` and
    /// `RENAME_EXCHANGE` are the MDS's (atomic), `RENAME_WHITEOUT` is
    /// refused (`InvalidArgument`). Errors: `AlreadyExists`
    /// (`RENAME_NOREPLACE`), `NotFound`, the SDK's.
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        flags: u32,
    ) -> Result<()> {
        // Forgets the directories' attributes kept from creates.
        let _change = self.dir_stats.change();
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(Error::invalid(
                "rename with RENAME_WHITEOUT is not supported by pstorage-mount",
            ));
        }
        let rename_flags = RenameFlags {
            no_replace: flags & libc::RENAME_NOREPLACE != 0,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        };
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        if rename_flags != RenameFlags::default() {
            return self
                .rename_flagged(parent, name, new_parent, new_name, rename_flags)
                .await;
        }
        let src = lock(&self.inodes).child(parent, name);
        let target = lock(&self.inodes)
            .child(new_parent, new_name)
            .filter(|t| Some(*t) != src);
        // Replacing a file this mount has open: the MDS refuses to drop a
        // leased file, so move it to the hidden directory first.
        let mut hidden_target = None;
        if let Some(t) = target.filter(|t| self.open.get(*t).is_some()) {
            let (oi, mut st) = self.open.lock(t).await;
            if st.handles > 0 {
                self.hide(t, &mut st, (new_parent, new_name), &to).await?;
                hidden_target = st.hidden.clone().map(|h| (h, oi.clone()));
            } else {
                self.open.retire_if_unused(t, &oi, &mut st);
            }
        }
        if let Err(e) = self.client.rename(&from, &to).await {
            if let Some((hidden, oi)) = hidden_target {
                // Put the replaced file back where it was.
                if self.client.rename(&hidden, &to).await.is_ok() {
                    let mut st = oi.state.lock().await;
                    st.hidden = None;
                    let hidden_name = hidden.rsplit('/').next().unwrap_or_default();
                    lock(&self.inodes).rename_entry(
                        self.hidden_ino,
                        hidden_name,
                        new_parent,
                        new_name,
                    );
                }
            }
            return Err(e);
        }
        lock(&self.inodes).rename_entry(parent, name, new_parent, new_name);
        if let Some(s) = src {
            self.forget_leased_stat(s);
        }
        Ok(())
    }

    /// Opens directory `ino`: takes a snapshot of its entries (`.` and `..`
    /// first, the hidden directory left out) for [`FsOps::readdir`]; returns
    /// its handle. Errors: `NotADirectory`, `Stale`, the SDK's.
    pub async fn opendir(&self, ino: u64) -> Result<u64> {
        let path = self.path(ino)?;
        let entries = self.client.readdir(&path).await?;
        let parent_ino = {
            let inodes = lock(&self.inodes);
            inodes.parent(ino).unwrap_or(ROOT_INODE.0)
        };
        let mut items = vec![
            DirEntry {
                ino,
                kind: InodeKind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: parent_ino,
                kind: InodeKind::Dir,
                name: "..".into(),
            },
        ];
        for e in entries {
            if ino == ROOT_INODE.0 && e.name == HIDDEN_DIR_NAME {
                continue;
            }
            items.push(DirEntry {
                ino: e.stat.ino.0,
                kind: e.stat.kind,
                name: e.name,
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(items));
        Ok(fh)
    }

    /// The entries of the directory handle `fh`, as [`FsOps::opendir`] took
    /// them. The entry at index `i` has the offset `i + 1` (where a listing
    /// resumes after it). Errors: `BadHandle`.
    pub fn readdir(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>> {
        lock(&self.dirs).get(&fh).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::BadHandle,
                format!("directory handle {fh} is not open in this mount"),
            )
        })
    }

    /// Closes the directory handle `fh` (an unknown handle is ignored).
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// fsync(2) of a directory: nothing to do, every namespace change is
    /// committed (fsync'ed) at the MDS before it is answered.
    pub fn fsyncdir(&self, _fh: u64) -> Result<()> {
        Ok(())
    }

    /// Space and file counts of the cluster: the chunk servers' total and
    /// free bytes (those not dropped), in blocks of [`STATFS_BLOCK_BYTES`].
    pub async fn statfs(&self) -> Result<StatFs> {
        let status = self.client.cluster_status().await?;
        let (mut total, mut free) = (0u64, 0u64);
        for cs in &status.cs {
            if cs.status != CsStatus::Dropped {
                total += cs.space.total_bytes;
                free += cs.space.free_bytes;
            }
        }
        Ok(StatFs {
            blocks: total / STATFS_BLOCK_BYTES,
            blocks_free: free / STATFS_BLOCK_BYTES,
            blocks_available: free / STATFS_BLOCK_BYTES,
            files: status.files + status.dirs,
            files_free: u32::MAX as u64,
            block_size: STATFS_BLOCK_BYTES as u32,
            name_max: 255,
            fragment_size: STATFS_BLOCK_BYTES as u32,
        })
    }
}
