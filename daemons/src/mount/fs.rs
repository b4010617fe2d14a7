//! The fuser adapter: [`PstorageFs`] implements fuser's [`Filesystem`] over
//! [`FsOps`]. Each method converts the kernel's arguments (names to UTF-8
//! strings, fuser's newtypes to numbers), runs the operation and converts
//! the answer back; every error becomes an errno through `errno_of`, the
//! core's one mapping ([`ErrorKind::errno`]).
//!
//! Dispatch: fuser's event-loop threads only decode a request and spawn its
//! handling onto the tokio runtime, so many requests (reads, writes, lookups)
//! run concurrently and a slow one never blocks the others. Replies are sent
//! from the task that finishes the request. The semantics (leases, page
//! cache, files unlinked while open) are [`super::ops`]'s.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags as FuseOpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};
use pstorage_core::error::{Error, ErrorKind};
use pstorage_core::types::{InodeKind, Perms, PERMISSION_BITS};
use pstorage_rpc::call_metrics::CallMetrics;
use tokio::runtime::Handle;

use super::ops::locks::{lock_type, LockCall, SetLk};
use super::ops::posix::{node_spec, stat_change, XattrReply};
use super::ops::{Attr, FsOps, Opened};

/// The file system handed to fuser: [`FsOps`] and the runtime its
/// operations run on. Cheap to clone.
#[derive(Clone)]
pub struct PstorageFs {
    ops: Arc<FsOps>,
    rt: Handle,
}

/// The errno for a failed operation: the core's [`ErrorKind::errno`].
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

/// The permissions of a node `req` creates with `mode` under `umask`.
fn perms_of(req: &Request, mode: u32, umask: u32) -> Perms {
    Perms {
        mode: mode & !umask & PERMISSION_BITS,
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// A kernel time argument as the ops take it (`None`: now).
fn time_arg(t: Option<TimeOrNow>) -> Option<Option<SystemTime>> {
    t.map(|t| match t {
        TimeOrNow::Now => None,
        TimeOrNow::SpecificTime(t) => Some(t),
    })
}

/// An extended attribute name from the kernel (UTF-8, as the cluster
/// stores names).
fn xattr_name(name: &OsStr) -> std::result::Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

fn reply_xattr(r: pstorage_core::error::Result<XattrReply>, op: &str, reply: fuser::ReplyXattr) {
    match r {
        Ok(XattrReply::Size(n)) => reply.size(n),
        Ok(XattrReply::Data(d)) => reply.data(&d),
        // A buffer too small for the value.
        Err(e) if e.kind() == ErrorKind::InvalidArgument => reply.error(Errno::ERANGE),
        Err(e) => reply.error(report(op, &e)),
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
        | ErrorKind::IsADirectory
        | ErrorKind::NoData
        | ErrorKind::NotSupported
        | ErrorKind::NameTooLong
        | ErrorKind::PermissionDenied
        | ErrorKind::WouldBlock
        | ErrorKind::InvalidArgument => tracing::debug!("{op}: {e}"),
        _ => tracing::warn!("{op}: {e}"),
    }
    errno_of(e)
}

fn file_type(kind: InodeKind) -> FileType {
    match kind {
        InodeKind::Dir => FileType::Directory,
        InodeKind::File => FileType::RegularFile,
        InodeKind::Symlink => FileType::Symlink,
        InodeKind::Fifo => FileType::NamedPipe,
        InodeKind::Socket => FileType::Socket,
        InodeKind::CharDevice => FileType::CharDevice,
        InodeKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn fopen_flags(o: &Opened) -> FopenFlags {
    // Direct writes inside the file may run in parallel (the kernel
    // otherwise serializes them on the inode lock).
    let mut out = FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
    if o.keep_cache {
        out |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    if o.direct_io {
        out |= FopenFlags::FOPEN_DIRECT_IO;
    }
    out
}

/// The FUSE requests this mount served, by operation, and how long each
/// took from its arrival to its reply (`pstorage-mount --metrics`).
pub static FUSE_REQUESTS: std::sync::LazyLock<CallMetrics> = std::sync::LazyLock::new(|| {
    CallMetrics::new(
        "pstorage_fuse_request_seconds",
        "FUSE requests served, by operation, and how long they took to answer.",
        "pstorage_fuse_requests_in_flight",
        "FUSE requests being served.",
    )
});

impl PstorageFs {
    /// The adapter over `ops`, whose operations run on `rt`.
    pub fn new(ops: Arc<FsOps>, rt: Handle) -> PstorageFs {
        PstorageFs { ops, rt }
    }

    /// The operations this adapter calls.
    pub fn ops(&self) -> &Arc<FsOps> {
        &self.ops
    }

    /// Runs `fut`, FUSE operation `op`, on the runtime; the future sends
    /// the reply. Timed from here to the reply ([`FUSE_REQUESTS`]).
    fn spawn<F>(&self, op: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let timer = FUSE_REQUESTS.start(op);
        self.rt.spawn(async move {
            fut.await;
            drop(timer);
        });
    }
}

impl Filesystem for PstorageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let cfg = self.ops.config();
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
        // tell when cached pages may be stale (see `ops.rs`).
        // FUSE_HANDLE_KILLPRIV_V2: this file system clears set-user-id and
        // set-group-id when a write or truncate must (the kernel flags
        // those requests), so the kernel does not ask for the
        // security.capability attribute before every write (an MDS round
        // trip each).
        // FUSE_POSIX_LOCKS, FUSE_FLOCK_LOCKS: fcntl, OFD and flock locks
        // come here and are held at the MDS, across every client
        // (`ops/locks.rs`), not in this host's kernel.
        for cap in [
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ops = self.ops.clone();
        self.spawn("lookup", async move {
            match ops.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&ops.config().attr_ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(report("lookup", &e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ops.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ops = self.ops.clone();
        self.spawn("getattr", async move {
            match ops.getattr(ino.0).await {
                Ok(attr) => reply.attr(&ops.config().attr_ttl, &file_attr(&attr)),
                Err(e) => reply.error(report("getattr", &e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ops = self.ops.clone();
        let change = stat_change(mode, uid, gid, time_arg(atime), time_arg(mtime));
        self.spawn("setattr", async move {
            match ops.setattr(ino.0, fh.map(|f| f.0), size, change).await {
                Ok(attr) => reply.attr(&ops.config().attr_ttl, &file_attr(&attr)),
                Err(e) => reply.error(report("setattr", &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ops = self.ops.clone();
        self.spawn("readlink", async move {
            match ops.readlink(ino.0).await {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(report("readlink", &e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let spec = match node_spec(mode, rdev) {
            Ok(s) => s,
            Err(e) => return reply.error(report("mknod", &e)),
        };
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let perms = perms_of(req, mode, umask);
        let ops = self.ops.clone();
        self.spawn("mknod", async move {
            match ops.mknod(parent.0, &name, spec, perms).await {
                Ok(attr) => reply.entry(&ops.config().attr_ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(report("mknod", &e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let perms = perms_of(req, mode, umask);
        let ops = self.ops.clone();
        self.spawn("mkdir", async move {
            match ops.mkdir(parent.0, &name, perms).await {
                Ok(attr) => reply.entry(&ops.config().attr_ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(report("mkdir", &e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ops = self.ops.clone();
        self.spawn("unlink", async move {
            match ops.unlink(parent.0, &name).await {
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
        let ops = self.ops.clone();
        self.spawn("rmdir", async move {
            match ops.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("rmdir", &e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = match name_arg(link_name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        // Targets are stored as text: a non-UTF-8 one cannot be.
        let Some(target) = target.to_str().map(str::to_string) else {
            return reply.error(Errno::EINVAL);
        };
        let (uid, gid) = (req.uid(), req.gid());
        let ops = self.ops.clone();
        self.spawn("symlink", async move {
            match ops.symlink(parent.0, &name, &target, uid, gid).await {
                Ok(attr) => reply.entry(&ops.config().attr_ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(report("symlink", &e)),
            }
        });
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
        let ops = self.ops.clone();
        self.spawn("rename", async move {
            match ops
                .rename(parent.0, &from, newparent.0, &to, flags.bits())
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("rename", &e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = match name_arg(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ops = self.ops.clone();
        self.spawn("link", async move {
            match ops.link(ino.0, newparent.0, &name).await {
                Ok(attr) => reply.entry(&ops.config().attr_ttl, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(report("link", &e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        let ops = self.ops.clone();
        self.spawn("open", async move {
            match ops.open(ino.0, flags.0).await {
                Ok(o) => reply.opened(FileHandle(o.fh), fopen_flags(&o)),
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
        let ops = self.ops.clone();
        self.spawn("read", async move {
            match ops.read(fh.0, offset, size).await {
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
        write_flags: WriteFlags,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let ops = self.ops.clone();
        // The request buffer is fuser's: one copy to own it.
        let data = Bytes::copy_from_slice(data);
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        self.spawn("write", async move {
            match ops.write(fh.0, offset, data, kill).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(report("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close drops the process's fcntl locks on the file (POSIX); the
        // data has nothing to wait for (see FsOps::flush).
        if self.ops.flush_unlocks(fh.0, lock_owner.0) {
            let ops = self.ops.clone();
            self.spawn("flush", async move {
                match ops.unlock_owner(fh.0, lock_owner.0).await {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(report("flush", &e)),
                }
            });
            return;
        }
        match self.ops.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(report("flush", &e)),
        }
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
        let ops = self.ops.clone();
        self.spawn("release", async move {
            match ops.release(fh.0).await {
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
        let ops = self.ops.clone();
        self.spawn("fsync", async move {
            match ops.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("fsync", &e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        let ops = self.ops.clone();
        self.spawn("opendir", async move {
            match ops.opendir(ino.0).await {
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
        let items = match self.ops.readdir(fh.0) {
            Ok(items) => items,
            // A handle the kernel did not get from opendir: not worth a log.
            Err(e) => return reply.error(errno_of(&e)),
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            // The offset of an entry is where the next readdir resumes.
            let kind = file_type(item.kind);
            if reply.add(INodeNo(item.ino), (i + 1) as u64, kind, &item.name) {
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
        self.ops.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.ops.fsyncdir(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(report("fsyncdir", &e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let ops = self.ops.clone();
        self.spawn("statfs", async move {
            match ops.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.blocks_free,
                    s.blocks_available,
                    s.files,
                    s.files_free,
                    s.block_size,
                    s.name_max,
                    s.fragment_size,
                ),
                Err(e) => reply.error(report("statfs", &e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_arg(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let perms = perms_of(req, mode, umask);
        let ops = self.ops.clone();
        self.spawn("create", async move {
            match ops.create(parent.0, &name, flags, perms).await {
                Ok((attr, o)) => reply.created(
                    &ops.config().attr_ttl,
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(o.fh),
                    fopen_flags(&o),
                ),
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
        let ops = self.ops.clone();
        self.spawn("fallocate", async move {
            match ops.fallocate(fh.0, offset, length, mode).await {
                Ok(()) => reply.ok(),
                Err(e) if e.kind() == ErrorKind::InvalidArgument => {
                    tracing::debug!("fallocate: {e}");
                    reply.error(Errno::EOPNOTSUPP)
                }
                Err(e) => reply.error(report("fallocate", &e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = match xattr_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let value = value.to_vec();
        let ops = self.ops.clone();
        self.spawn("setxattr", async move {
            match ops.setxattr(ino.0, &name, &value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("setxattr", &e)),
            }
        });
    }

    fn getxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: fuser::ReplyXattr,
    ) {
        let name = match xattr_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ops = self.ops.clone();
        self.spawn("getxattr", async move {
            reply_xattr(ops.getxattr(ino.0, &name, size).await, "getxattr", reply);
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        let ops = self.ops.clone();
        self.spawn("listxattr", async move {
            reply_xattr(ops.listxattr(ino.0, size).await, "listxattr", reply);
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match xattr_name(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ops = self.ops.clone();
        self.spawn("removexattr", async move {
            match ops.removexattr(ino.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(report("removexattr", &e)),
            }
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: fuser::ReplyLock,
    ) {
        let ops = self.ops.clone();
        self.spawn("getlk", async move {
            let call = LockCall {
                fh: fh.0,
                owner: lock_owner.0,
                start,
                end,
                typ,
                pid,
            };
            match ops.getlk(call).await {
                Ok(Some(held)) => {
                    reply.locked(held.start, held.end, lock_type(held.kind), held.pid)
                }
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(report("getlk", &e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let ops = self.ops.clone();
        // The thread that waits (for its pending signals); `pid` is the
        // lock's l_pid.
        let waiter = req.pid();
        self.spawn("setlk", async move {
            let call = LockCall {
                fh: fh.0,
                owner: lock_owner.0,
                start,
                end,
                typ,
                pid,
            };
            let result = ops.setlk(call, sleep, waiter).await;
            match result {
                Ok(SetLk::Done) => reply.ok(),
                Ok(SetLk::Interrupted) => reply.error(Errno::EINTR),
                Err(e) => reply.error(report("setlk", &e)),
            }
        });
    }

    // What follows is not supported. ENOSYS is the answer the kernel
    // remembers for the whole mount ("not implemented, stop asking"): it
    // checks access by mode bits (`default_permissions`) and copies ranges
    // itself.

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
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
