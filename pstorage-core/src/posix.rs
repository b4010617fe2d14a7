//! The POSIX attributes of the namespace: times with nanoseconds,
//! permission bits and owners, the kinds of node besides files and
//! directories, attribute changes (`chmod`, `chown`, `utimensat`), rename
//! flags and extended attributes. The MDS stores them (store format 9);
//! the mount hands them to the kernel.
//!
//! Permission checks are not made here: the mount asks the kernel to make
//! them (`default_permissions`) from the mode and owners stored here, and
//! SDK clients are trusted cluster nodes (they proved the cluster key).

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// A point in time: seconds and nanoseconds since the Unix epoch (before
/// it when `sec` is negative), as `struct timespec` holds it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Whole seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds within the second (below 1,000,000,000).
    pub nsec: u32,
}

impl Timestamp {
    /// `ms` milliseconds after the epoch.
    pub const fn from_ms(ms: u64) -> Timestamp {
        Timestamp {
            sec: (ms / 1000) as i64,
            nsec: ((ms % 1000) * 1_000_000) as u32,
        }
    }

    /// Milliseconds since the epoch (0 for a time before it).
    pub fn as_ms(&self) -> u64 {
        if self.sec < 0 {
            return 0;
        }
        (self.sec as u64)
            .saturating_mul(1000)
            .saturating_add(u64::from(self.nsec / 1_000_000))
    }

    /// `InvalidArgument` unless `nsec` is below one second.
    pub fn validate(&self) -> Result<()> {
        if self.nsec >= 1_000_000_000 {
            return Err(Error::invalid(format!(
                "time {}.{:09}: nanoseconds must be below 1000000000",
                self.sec, self.nsec
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nsec)
    }
}

/// The permission bits (`S_ISUID`, `S_ISGID`, `S_ISVTX` and `rwxrwxrwx`)
/// a mode may carry.
pub const PERMISSION_BITS: u32 = 0o7777;
/// Set-user-id.
pub const S_ISUID: u32 = 0o4000;
/// Set-group-id (on a directory: new entries take its group).
pub const S_ISGID: u32 = 0o2000;
/// Sticky (on a directory: only owners remove or rename entries).
pub const S_ISVTX: u32 = 0o1000;
/// Group execute.
pub const S_IXGRP: u32 = 0o010;

/// Permission bits and owners of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Perms {
    /// The permission bits ([`PERMISSION_BITS`]); the kind is not in them.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Perms {
    /// What a file created without permissions gets: 0644, root's.
    pub const FILE: Perms = Perms {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    /// What a directory created without permissions gets: 0755, root's.
    pub const DIR: Perms = Perms {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    /// What files stored before permissions existed (store format 8 and
    /// older) have: 0666, root's (anyone could write them then).
    pub const LEGACY_FILE: Perms = Perms {
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    /// What directories stored before permissions existed have: 0777.
    pub const LEGACY_DIR: Perms = Perms {
        mode: 0o777,
        uid: 0,
        gid: 0,
    };

    /// `InvalidArgument` for bits outside [`PERMISSION_BITS`].
    pub fn validate(&self) -> Result<()> {
        validate_mode(self.mode)
    }
}

/// `InvalidArgument` for a mode with bits outside [`PERMISSION_BITS`].
pub fn validate_mode(mode: u32) -> Result<()> {
    if mode & !PERMISSION_BITS != 0 {
        return Err(Error::invalid(format!(
            "mode {mode:#o} has bits outside {PERMISSION_BITS:#o} (the kind is not part of it)"
        )));
    }
    Ok(())
}

/// The longest symbolic link target, in bytes (`PATH_MAX` less the NUL).
pub const MAX_SYMLINK_TARGET: usize = 4095;

/// What [`crate::traits::MetadataService::make_node`] creates (directories
/// are made by `mkdir`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeSpec {
    /// An empty regular file (`mknod S_IFREG`), without a lease.
    File,
    /// A symbolic link to `target` (any non-empty text; not resolved by
    /// the cluster).
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A named pipe; its data never reaches the cluster.
    Fifo,
    /// A Unix socket's name.
    Socket,
    /// A character device node.
    CharDevice {
        /// Its device number.
        rdev: u64,
    },
    /// A block device node.
    BlockDevice {
        /// Its device number.
        rdev: u64,
    },
}

impl NodeSpec {
    /// `InvalidArgument` for an empty or too long symlink target (`NotFound`
    /// for an empty one, as `symlink(2)` answers `ENOENT`).
    pub fn validate(&self) -> Result<()> {
        if let NodeSpec::Symlink { target } = self {
            if target.is_empty() {
                return Err(Error::not_found("symlink: the target is empty"));
            }
            if target.len() > MAX_SYMLINK_TARGET {
                return Err(Error::new(
                    ErrorKind::NameTooLong,
                    format!(
                        "symlink: the target is {} bytes, at most {MAX_SYMLINK_TARGET} are allowed",
                        target.len()
                    ),
                ));
            }
            if target.contains('\0') {
                return Err(Error::invalid("symlink: the target contains a NUL byte"));
            }
        }
        Ok(())
    }
}

/// A node to create: what it is and its permissions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewNode {
    /// What it is.
    pub spec: NodeSpec,
    /// Its permissions (a set-group-id parent directory gives its group).
    pub perms: Perms,
}

/// How `utimensat` sets one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimeChange {
    /// The MDS's time when the change applies (`UTIME_NOW`).
    Now,
    /// This time.
    At(Timestamp),
}

/// A change of POSIX attributes (`chmod`, `chown`, `utimensat`); `None`
/// leaves one as it is. Every change sets the ctime.
///
/// As on Linux, changing the owner or group of a non-directory clears its
/// set-user-id bit, and its set-group-id bit when group execute is set,
/// unless the same change sets the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct StatChange {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New access time.
    pub atime: Option<TimeChange>,
    /// New modification time.
    pub mtime: Option<TimeChange>,
}

impl StatChange {
    /// `InvalidArgument` for a bad mode or time.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = self.mode {
            validate_mode(m)?;
        }
        for t in [self.atime, self.mtime].into_iter().flatten() {
            if let TimeChange::At(t) = t {
                t.validate()?;
            }
        }
        Ok(())
    }
}

/// `renameat2` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct RenameFlags {
    /// Fail with `AlreadyExists` if the target exists (`RENAME_NOREPLACE`).
    pub no_replace: bool,
    /// Swap the two names atomically; both must exist (`RENAME_EXCHANGE`).
    pub exchange: bool,
}

impl RenameFlags {
    /// `InvalidArgument` for both flags at once.
    pub fn validate(&self) -> Result<()> {
        if self.no_replace && self.exchange {
            return Err(Error::invalid(
                "rename: no-replace and exchange cannot be combined",
            ));
        }
        Ok(())
    }
}

/// How `setxattr` treats an existing attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum XattrSet {
    /// Create or replace.
    #[default]
    Any,
    /// Fail with `AlreadyExists` if it exists (`XATTR_CREATE`).
    Create,
    /// Fail with `NoData` if it does not exist (`XATTR_REPLACE`).
    Replace,
}

/// The longest extended attribute name, in bytes (`XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME: usize = 255;
/// The largest extended attribute value, in bytes (`XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// The most bytes of names and values one node's extended attributes may
/// hold together (they live in the MDS's memory and in every snapshot).
pub const MAX_XATTR_BYTES_PER_NODE: usize = 64 << 10;

/// The name spaces of extended attributes the cluster stores. `system.*`
/// (ACLs and the like) is not supported.
pub const XATTR_NAMESPACES: [&str; 3] = ["user.", "trusted.", "security."];

/// Checks an extended attribute name: `NotSupported` outside
/// [`XATTR_NAMESPACES`], `NameTooLong`, `InvalidArgument` for an empty one.
pub fn validate_xattr_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("an extended attribute name cannot be empty"));
    }
    if name.len() > MAX_XATTR_NAME {
        return Err(Error::new(
            ErrorKind::NameTooLong,
            format!(
                "extended attribute name of {} bytes: at most {MAX_XATTR_NAME}",
                name.len()
            ),
        ));
    }
    if name.contains('\0') {
        return Err(Error::invalid(
            "an extended attribute name cannot contain a NUL byte",
        ));
    }
    match XATTR_NAMESPACES
        .iter()
        .find(|ns| name.starts_with(**ns) && name.len() > ns.len())
    {
        Some(_) => Ok(()),
        None => Err(Error::new(
            ErrorKind::NotSupported,
            format!(
                "extended attribute {name:?}: only the user.*, trusted.* and security.* name spaces are stored"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_from_and_to_milliseconds() {
        let t = Timestamp::from_ms(1_700_000_123_456);
        assert_eq!(
            t,
            Timestamp {
                sec: 1_700_000_123,
                nsec: 456_000_000
            }
        );
        assert_eq!(t.as_ms(), 1_700_000_123_456);
        assert_eq!(Timestamp { sec: -5, nsec: 0 }.as_ms(), 0);
        assert!(Timestamp {
            sec: 0,
            nsec: 1_000_000_000
        }
        .validate()
        .is_err());
        assert!(Timestamp { sec: -1, nsec: 0 } < Timestamp { sec: 0, nsec: 0 });
    }

    #[test]
    fn modes_names_and_targets_are_checked() {
        assert!(validate_mode(0o7777).is_ok());
        assert!(validate_mode(0o100644).is_err());
        assert_eq!(
            NodeSpec::Symlink {
                target: String::new()
            }
            .validate()
            .unwrap_err()
            .kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            NodeSpec::Symlink {
                target: "x".repeat(MAX_SYMLINK_TARGET + 1)
            }
            .validate()
            .unwrap_err()
            .kind(),
            ErrorKind::NameTooLong
        );
        assert!(NodeSpec::Symlink {
            target: "x".repeat(MAX_SYMLINK_TARGET)
        }
        .validate()
        .is_ok());
        assert!(validate_xattr_name("user.a").is_ok());
        assert!(validate_xattr_name("trusted.b").is_ok());
        assert_eq!(
            validate_xattr_name("system.posix_acl_access")
                .unwrap_err()
                .kind(),
            ErrorKind::NotSupported
        );
        assert_eq!(
            validate_xattr_name("user.").unwrap_err().kind(),
            ErrorKind::NotSupported
        );
        assert_eq!(
            validate_xattr_name(&format!("user.{}", "a".repeat(251)))
                .unwrap_err()
                .kind(),
            ErrorKind::NameTooLong
        );
        assert!(RenameFlags {
            no_replace: true,
            exchange: true
        }
        .validate()
        .is_err());
        assert!(StatChange {
            mode: Some(0o40755),
            ..StatChange::default()
        }
        .validate()
        .is_err());
    }
}

/// Who holds a byte-range lock, as the client names it: the kernel's lock
/// owner (a process's file table for `fcntl` locks, an open file
/// description for OFD and `flock` locks). Unique within one lease: a lock
/// is held by a (lease, owner) pair.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LockOwner(pub u64);

/// A lock's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    /// A read lock (`F_RDLCK`, `LOCK_SH`): shared with other shared locks.
    Shared,
    /// A write lock (`F_WRLCK`, `LOCK_EX`): excludes every other lock.
    Exclusive,
}

/// The end of a lock range that reaches the end of the file, whatever its
/// size (`l_len` 0 in `fcntl`; FUSE says `OFFSET_MAX`).
pub const LOCK_TO_EOF: u64 = i64::MAX as u64;

/// A lock request of one owner over bytes `start..=end` (`end` at most
/// [`LOCK_TO_EOF`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockRequest {
    /// Who asks.
    pub owner: LockOwner,
    /// The lock wanted, or `None` to unlock the range.
    pub kind: Option<LockKind>,
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// The asking process, as its client sees it (reported to `F_GETLK`
    /// callers; 0 when unknown).
    pub pid: u32,
}

impl LockRequest {
    /// `InvalidArgument` for an empty or out-of-range range.
    pub fn validate(&self) -> Result<()> {
        if self.start > self.end || self.end > LOCK_TO_EOF {
            return Err(Error::invalid(format!(
                "lock range {}..={} is empty or beyond the largest offset {LOCK_TO_EOF}",
                self.start, self.end
            )));
        }
        Ok(())
    }
}

/// A lock held on a file, as `F_GETLK` reports a conflicting one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeldLock {
    /// Shared or exclusive.
    pub kind: LockKind,
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive; [`LOCK_TO_EOF`]: to the end of the file).
    pub end: u64,
    /// The holding process as its client reported it (0: unknown).
    pub pid: u32,
}
