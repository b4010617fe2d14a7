//! Byte-range locks of the mount: `fcntl` (POSIX), OFD and `flock` locks
//! held across every client of the cluster.
//!
//! The kernel hands every lock request to this file system
//! (`FUSE_POSIX_LOCKS`, `FUSE_FLOCK_LOCKS`) with its lock owner: a process's
//! file table for `fcntl` locks, the open file description for OFD and
//! `flock` locks (FUSE sends `flock` as a whole-file lock of its file
//! description, so it conflicts with `fcntl` locks of other owners, as on
//! NFS). The MDS holds the locks, each owned by (the inode's lease, the
//! owner), and drops them with the lease: a client that dies loses its
//! locks when its lease expires.
//!
//! What the kernel leaves to us: `close` of any descriptor drops the
//! process's `fcntl` locks on the file (FLUSH carries its owner); the last
//! close of a file description drops its OFD and `flock` locks (RELEASE).
//! A blocking request (`F_SETLKW`, `flock` without `LOCK_NB`) is retried
//! here until it is granted, the lease is lost, or the waiting thread has a
//! signal pending (FUSE interrupts are not delivered by fuser, so the
//! thread's pending signals are read from `/proc`): then `EINTR`, and a
//! `kill -9` of a waiter works.

use std::time::Duration;

use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::types::{HeldLock, LockKind, LockOwner, LockRequest, LOCK_TO_EOF};

use super::{lock, FsOps};

/// First pause of a blocking lock request between attempts.
const WAIT_FIRST: Duration = Duration::from_millis(5);
/// Longest pause between attempts.
const WAIT_MAX: Duration = Duration::from_millis(250);

/// The kind of an `F_RDLCK`/`F_WRLCK`/`F_UNLCK` lock type (`None`:
/// unlock).
pub fn lock_kind(typ: i32) -> Result<Option<LockKind>> {
    match typ {
        libc::F_RDLCK => Ok(Some(LockKind::Shared)),
        libc::F_WRLCK => Ok(Some(LockKind::Exclusive)),
        libc::F_UNLCK => Ok(None),
        other => Err(Error::invalid(format!("lock type {other}"))),
    }
}

/// The `F_*LCK` type of a lock kind.
pub fn lock_type(kind: LockKind) -> i32 {
    match kind {
        LockKind::Shared => libc::F_RDLCK,
        LockKind::Exclusive => libc::F_WRLCK,
    }
}

/// Whether thread `tid` has a signal pending that it neither blocks nor
/// ignores (a waiter to wake with `EINTR`). `false` when it cannot be
/// told (no such thread in our pid namespace, no `/proc`).
pub fn signal_pending(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return false;
    };
    pending_in_status(&status)
}

/// [`signal_pending`] of a `/proc/TID/status` text.
fn pending_in_status(status: &str) -> bool {
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    let kill = 1u64 << (libc::SIGKILL - 1);
    (pending & kill) != 0 || (pending & !field("SigBlk:") & !field("SigIgn:")) != 0
}

/// A lock request from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct LockCall {
    /// The handle it came through.
    pub fh: u64,
    /// The kernel's lock owner.
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive; `OFFSET_MAX`: to the end of the file).
    pub end: u64,
    /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
    pub typ: i32,
    /// The lock's `l_pid` (the owner's process).
    pub pid: u32,
}

impl LockCall {
    fn request(&self, kind: Option<LockKind>) -> LockRequest {
        LockRequest {
            owner: LockOwner(self.owner),
            kind,
            start: self.start,
            end: self.end.min(LOCK_TO_EOF),
            pid: self.pid,
        }
    }
}

/// How a lock request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SetLk {
    /// Granted (or unlocked).
    Done,
    /// A blocking request whose thread got a signal: answer `EINTR`.
    Interrupted,
}

impl FsOps {
    /// Sets or removes the lock `call` asks for. With `wait`, asks again
    /// until it is granted or thread `waiter` has a signal pending. Errors:
    /// `WouldBlock` (not waiting), `BadHandle`, `Stale` (the lease is gone,
    /// and its locks with it), `NoLocks`.
    pub async fn setlk(&self, call: LockCall, wait: bool, waiter: u32) -> Result<SetLk> {
        let kind = lock_kind(call.typ)?;
        let (_ino, oi, mut file) = self.file_of(call.fh)?;
        if kind.is_none() && !lock(&oi.lock_owners).contains_key(&call.owner) {
            // Nothing was ever locked by this owner here.
            return Ok(SetLk::Done);
        }
        // Recorded before the MDS call: a close racing with it unlocks.
        lock(&oi.lock_owners)
            .entry(call.owner)
            .or_default()
            .insert(call.fh);
        let req = call.request(kind);
        let pid = waiter;
        let mut pause = WAIT_FIRST;
        loop {
            match file.set_lock(req).await {
                Ok(()) => return Ok(SetLk::Done),
                Err(e) if e.kind() == ErrorKind::WouldBlock && wait => {
                    if signal_pending(pid) {
                        return Ok(SetLk::Interrupted);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(WAIT_MAX);
                    if signal_pending(pid) {
                        return Ok(SetLk::Interrupted);
                    }
                }
                // The file was upgraded to a write lease meanwhile (the same
                // lease): ask through the current one.
                Err(e) if e.kind() == ErrorKind::BadHandle => match lock(&oi.file).clone() {
                    Some(current) if current.lease().id == file.lease().id => file = current,
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// The lock of another owner in the way of the lock `call` describes
    /// (`F_GETLK`), or `None`.
    pub async fn getlk(&self, call: LockCall) -> Result<Option<HeldLock>> {
        let Some(kind) = lock_kind(call.typ)? else {
            return Err(Error::invalid("F_GETLK of F_UNLCK"));
        };
        let (_ino, oi, mut file) = self.file_of(call.fh)?;
        let req = call.request(Some(kind));
        loop {
            match file.test_lock(req).await {
                Err(e) if e.kind() == ErrorKind::BadHandle => match lock(&oi.file).clone() {
                    Some(current) if current.lease().id == file.lease().id => file = current,
                    _ => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// Whether closing handle `fh` with lock owner `owner` (FLUSH) must
    /// unlock something: the owner locked through this mount on that file.
    pub fn flush_unlocks(&self, fh: u64, owner: u64) -> bool {
        self.file_of(fh)
            .is_ok_and(|(_, oi, _)| lock(&oi.lock_owners).contains_key(&owner))
    }

    /// close(2) by a process: its `fcntl` locks on the file go, whichever
    /// descriptor set them (POSIX).
    pub async fn unlock_owner(&self, fh: u64, owner: u64) -> Result<()> {
        let (_ino, oi, _file) = self.file_of(fh)?;
        if lock(&oi.lock_owners).remove(&owner).is_none() {
            return Ok(());
        }
        self.unlock_all(&oi, owner).await
    }

    /// Unlocks everything `owner` holds on the file of `oi`.
    pub(super) async fn unlock_all(&self, oi: &super::OpenInode, owner: u64) -> Result<()> {
        let Some(file) = lock(&oi.file).clone() else {
            return Ok(());
        };
        let req = LockRequest {
            owner: LockOwner(owner),
            kind: None,
            start: 0,
            end: LOCK_TO_EOF,
            pid: 0,
        };
        match file.set_lock(req).await {
            // The lease is gone: so are its locks.
            Err(e) if matches!(e.kind(), ErrorKind::Stale | ErrorKind::BadHandle) => Ok(()),
            other => other,
        }
    }

    /// The owners that locked through handle `fh` (its release drops their
    /// locks: OFD and `flock` locks live as long as their file
    /// description), taken out of the inode's record.
    pub(super) fn owners_of_handle(oi: &super::OpenInode, fh: u64) -> Vec<u64> {
        let mut owners = lock(&oi.lock_owners);
        let mut out = Vec::new();
        owners.retain(|owner, handles| {
            if handles.remove(&fh) {
                out.push(*owner);
            }
            !handles.is_empty()
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_signals_are_read_from_the_status_text() {
        let status = |pnd: &str, shd: &str, blk: &str, ign: &str| {
            format!("Name:\tx\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t{ign}\n")
        };
        let zero = "0000000000000000";
        assert!(!pending_in_status(&status(zero, zero, zero, zero)));
        // SIGINT (2) pending for the process.
        assert!(pending_in_status(&status(
            zero,
            "0000000000000002",
            zero,
            zero
        )));
        // Blocked or ignored: not a reason to wake.
        assert!(!pending_in_status(&status(
            "0000000000000002",
            zero,
            "0000000000000002",
            zero
        )));
        assert!(!pending_in_status(&status(
            zero,
            "0000000000000002",
            zero,
            "0000000000000002"
        )));
        // SIGKILL (9) always.
        assert!(pending_in_status(&status(
            zero,
            "0000000000000100",
            "ffffffffffffffff",
            zero
        )));
        // This thread has none.
        assert!(!signal_pending(std::process::id()));
        assert!(!signal_pending(0));
    }

    #[test]
    fn lock_types_map_both_ways() {
        assert_eq!(lock_kind(libc::F_RDLCK).unwrap(), Some(LockKind::Shared));
        assert_eq!(lock_kind(libc::F_WRLCK).unwrap(), Some(LockKind::Exclusive));
        assert_eq!(lock_kind(libc::F_UNLCK).unwrap(), None);
        assert!(lock_kind(99).is_err());
        assert_eq!(lock_type(LockKind::Shared), libc::F_RDLCK);
        assert_eq!(lock_type(LockKind::Exclusive), libc::F_WRLCK);
    }
}
