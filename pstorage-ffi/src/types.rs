//! The C-visible types and constants: opaque handles, flags, and the
//! plain structs that `stat`, `readdir` and the attribute calls fill in.
//! The Rust names are the C names so that `include/pstorage.h` reads the
//! same as this file.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};

use pstorage_core::types::{FileAttrs, InodeKind, Stat};

/// A connection to one cluster, from `pstorage_connect` or
/// `pstorage_connect_bootstrap`; freed by `pstorage_disconnect`.
pub struct pstorage_cluster_t {
    _opaque: [u8; 0],
}

/// An open file and its lease, from `pstorage_open`; freed by `pstorage_close`.
pub struct pstorage_file_t {
    _opaque: [u8; 0],
}

/// A directory listing being read, from `pstorage_opendir`; freed by
/// `pstorage_closedir`.
pub struct pstorage_dir_t {
    _opaque: [u8; 0],
}

/// The state of one asynchronous operation, from
/// `pstorage_aio_create_completion`; freed by `pstorage_aio_release`.
pub struct pstorage_completion_t {
    _opaque: [u8; 0],
}

/// Called once when an asynchronous operation finishes, on one of the
/// library's I/O threads, with the completion and the `arg` it was created
/// with. It must not block (no synchronous libpstorage call, no waiting on
/// locks held across I/O): blocking calls made from it fail with
/// `-EDEADLK`. It may submit new asynchronous operations, read the return
/// value and release the completion.
pub type pstorage_callback_t =
    Option<unsafe extern "C" fn(comp: *mut pstorage_completion_t, arg: *mut c_void)>;

/// `pstorage_open` flag: a shared read lease (the default; value 0). Any
/// number of readers may hold one; no writer may.
pub const PSTORAGE_O_RDONLY: u32 = 0;
/// `pstorage_open` flag: an exclusive write lease, needed by every call
/// that changes the file. Excludes readers too.
pub const PSTORAGE_O_RDWR: u32 = 1;
/// `pstorage_open` flag: create the file if it does not exist (needs
/// `PSTORAGE_O_RDWR`).
pub const PSTORAGE_O_CREAT: u32 = 2;
/// `pstorage_open` flag: with `PSTORAGE_O_CREAT`, fail with `-EEXIST` if
/// the file exists.
pub const PSTORAGE_O_EXCL: u32 = 4;
/// `pstorage_open` flag: truncate the file to 0 bytes (needs `PSTORAGE_O_RDWR`).
pub const PSTORAGE_O_TRUNC: u32 = 8;

/// `pstorage_mkdir` flag: create missing parents, like `mkdir -p`.
pub const PSTORAGE_MKDIR_PARENTS: u32 = 1;

/// `pstorage_set_attr` flag: apply the change to everything below the
/// directory too.
pub const PSTORAGE_ATTR_RECURSIVE: u32 = 1;

/// `pstorage_verify` flag: rewrite each damaged range from a good replica.
pub const PSTORAGE_VERIFY_REPAIR: u32 = 1;

/// What `pstorage_verify` found.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct pstorage_verify_result_t {
    /// Chunks and replicas checked.
    pub chunks: u64,
    /// Replicas checked.
    pub replicas: u64,
    /// Bytes read from replicas.
    pub bytes_read: u64,
    /// Ranges whose replicas differ or that a replica cannot read (with
    /// `PSTORAGE_VERIFY_REPAIR`: those left after the repair). The CLI's
    /// `pstorage verify` prints them.
    pub problems: u64,
    /// Ranges the repair fixed.
    pub repaired: u64,
}

/// `pstorage_stat_t.kind` of a file.
pub const PSTORAGE_KIND_FILE: u32 = 1;
/// `pstorage_stat_t.kind` of a directory.
pub const PSTORAGE_KIND_DIR: u32 = 2;
/// `pstorage_stat_t.kind` of a symbolic link.
pub const PSTORAGE_KIND_SYMLINK: u32 = 3;
/// `pstorage_stat_t.kind` of a FIFO.
pub const PSTORAGE_KIND_FIFO: u32 = 4;
/// `pstorage_stat_t.kind` of a socket.
pub const PSTORAGE_KIND_SOCKET: u32 = 5;
/// `pstorage_stat_t.kind` of a character device.
pub const PSTORAGE_KIND_CHAR_DEVICE: u32 = 6;
/// `pstorage_stat_t.kind` of a block device.
pub const PSTORAGE_KIND_BLOCK_DEVICE: u32 = 7;

/// The attributes of a file or directory, inherited from the parent on create.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct pstorage_attrs_t {
    /// Copies kept of each chunk (1..15).
    pub replicas_norm: u32,
    /// Copies that must be reachable for writes to proceed (1..replicas_norm).
    pub replicas_min: u32,
    /// Chunk size in bytes (a multiple of 4096).
    pub chunk_size: u64,
}

/// What `pstorage_stat` and `pstorage_fstat` return.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct pstorage_stat_t {
    /// The inode number, unique in the cluster.
    pub ino: u64,
    /// `PSTORAGE_KIND_FILE`, `PSTORAGE_KIND_DIR`, `PSTORAGE_KIND_SYMLINK`,
    /// `PSTORAGE_KIND_FIFO`, `PSTORAGE_KIND_SOCKET`,
    /// `PSTORAGE_KIND_CHAR_DEVICE` or `PSTORAGE_KIND_BLOCK_DEVICE`.
    pub kind: u32,
    /// File size in bytes (0 for directories).
    pub size: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: u64,
    /// Change (or creation) time, milliseconds since the Unix epoch.
    pub ctime_ms: u64,
    /// Replication and chunk size.
    pub attrs: pstorage_attrs_t,
    /// Permission bits (07777; the kind is `kind`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Names it has (a directory: 2 and one per subdirectory).
    pub nlink: u32,
    /// The device of a device node.
    pub rdev: u64,
    /// Access time: seconds since the Unix epoch (negative before it).
    pub atime_sec: i64,
    /// Nanoseconds of `atime_sec`.
    pub atime_nsec: u32,
    /// Modification time: seconds since the Unix epoch.
    pub mtime_sec: i64,
    /// Nanoseconds of `mtime_sec`.
    pub mtime_nsec: u32,
    /// Change time: seconds since the Unix epoch.
    pub ctime_sec: i64,
    /// Nanoseconds of `ctime_sec`.
    pub ctime_nsec: u32,
}

/// One entry of a directory listing.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pstorage_dirent_t {
    /// The entry's name (no slashes), NUL-terminated. Owned by the
    /// directory handle: valid until the next `pstorage_readdir` or
    /// `pstorage_closedir` on it.
    pub name: *const c_char,
    /// The entry's attributes at the time of `pstorage_opendir`.
    pub stat: pstorage_stat_t,
}

impl From<FileAttrs> for pstorage_attrs_t {
    fn from(a: FileAttrs) -> pstorage_attrs_t {
        pstorage_attrs_t {
            replicas_norm: a.replicas.norm.into(),
            replicas_min: a.replicas.min.into(),
            chunk_size: a.chunk_size,
        }
    }
}

impl From<&Stat> for pstorage_stat_t {
    fn from(s: &Stat) -> pstorage_stat_t {
        pstorage_stat_t {
            ino: s.ino.0,
            kind: match s.kind {
                InodeKind::File => PSTORAGE_KIND_FILE,
                InodeKind::Dir => PSTORAGE_KIND_DIR,
                InodeKind::Symlink => PSTORAGE_KIND_SYMLINK,
                InodeKind::Fifo => PSTORAGE_KIND_FIFO,
                InodeKind::Socket => PSTORAGE_KIND_SOCKET,
                InodeKind::CharDevice => PSTORAGE_KIND_CHAR_DEVICE,
                InodeKind::BlockDevice => PSTORAGE_KIND_BLOCK_DEVICE,
            },
            size: s.size,
            mtime_ms: s.mtime.as_ms(),
            ctime_ms: s.ctime.as_ms(),
            attrs: s.attrs.into(),
            mode: s.mode,
            uid: s.uid,
            gid: s.gid,
            nlink: s.nlink,
            rdev: s.rdev,
            atime_sec: s.atime.sec,
            atime_nsec: s.atime.nsec,
            mtime_sec: s.mtime.sec,
            mtime_nsec: s.mtime.nsec,
            ctime_sec: s.ctime.sec,
            ctime_nsec: s.ctime.nsec,
        }
    }
}
