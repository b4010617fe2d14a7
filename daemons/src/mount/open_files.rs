//! The mount's open-file state: **one [`File`] per inode** shared by every
//! handle of that inode ([`OpenInode`]), and the lease it holds.
//!
//! The MDS grants one lease per open, and a write lease excludes every other
//! lease, so handles of one inode cannot each have their own `File`.
//! Read-only opens take a read lease; the first writable open upgrades it
//! in place at the MDS ([`acquire`], `File::upgrade`: the same lease and
//! its byte-range locks; `Busy` while another client reads the file). The
//! lease is released when the last handle is released, and with it every
//! lock taken through it. Every lease change of an inode happens under that inode's async
//! mutex ([`OpenInode::state`]), so two opens, or an open and a release,
//! never race for the lease against each other.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use pstorage_core::client::{Client, File};
use pstorage_core::error::{ErrorKind, Result};
use pstorage_core::types::{LeaseMode, OpenFlags, Stat};
use tokio::sync::OwnedMutexGuard;

use super::cache::ReadCache;

/// Locks a mutex (parking_lot's, which a panic does not poison).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its map consistent; a panic elsewhere
    // must not take the whole mount down.
    m.lock()
}

/// The lease state of one inode shared by all its handles.
pub(super) struct OpenInode {
    /// Serializes every lease change of the inode (open, upgrade, release,
    /// truncate without a handle, hiding an unlinked file).
    pub(super) state: Arc<tokio::sync::Mutex<OpenState>>,
    /// The shared file; cloned out for each I/O (no lock held during I/O).
    pub(super) file: Mutex<Option<File>>,
    /// Last modification through this mount, ms since the epoch (0: none):
    /// the MDS learns the mtime only when the size is committed.
    pub(super) local_mtime_ms: AtomicU64,
    /// The file's attributes from the MDS while a lease is held: nobody
    /// else can change the file then (its size comes from `file`), so
    /// `getattr` need not ask the MDS each time. Cleared with the lease.
    pub(super) leased_stat: Mutex<Option<Stat>>,
    /// The file was read since its lease was taken: its access time is
    /// due at the last close (relatime, one commit per open, not per read).
    pub(super) read: AtomicBool,
    /// The file's security.capability attribute was looked for (and
    /// removed) since its lease was taken: a write drops capabilities, as
    /// on Linux (the kernel leaves that to this file system with
    /// `FUSE_HANDLE_KILLPRIV_V2`).
    pub(super) privs_checked: AtomicBool,
    /// The kernel's lock owners that set a byte-range lock on the file
    /// through this mount since its lease was taken, each with the handles
    /// they used: a close (flush) or release unlocks only what some owner
    /// may hold, so closing a file nobody locked costs no MDS call. The
    /// locks themselves are the MDS's, held by the lease.
    pub(super) lock_owners: Mutex<HashMap<u64, HashSet<u64>>>,
}

/// What [`OpenInode::state`] guards.
#[derive(Default)]
pub(super) struct OpenState {
    /// Handles open on the inode (plus temporary users).
    pub(super) handles: usize,
    /// The lease of `OpenInode::file`, if any.
    pub(super) mode: Option<LeaseMode>,
    /// Where the file was moved when it was unlinked while open.
    pub(super) hidden: Option<String>,
    /// The entry was taken out of [`OpenFiles`]; look it up again.
    pub(super) removed: bool,
}

/// Inode number -> its open state, for the inodes some handle or operation
/// holds.
#[derive(Default)]
pub(super) struct OpenFiles {
    map: Mutex<HashMap<u64, Arc<OpenInode>>>,
}

impl OpenFiles {
    /// The open state of `ino`, if some handle or operation holds one.
    pub(super) fn get(&self, ino: u64) -> Option<Arc<OpenInode>> {
        lock(&self.map).get(&ino).cloned()
    }

    /// Every open state (for closing them all at unmount).
    pub(super) fn all(&self) -> Vec<Arc<OpenInode>> {
        lock(&self.map).values().cloned().collect()
    }

    /// The open state of `ino` (created if needed), locked.
    pub(super) async fn lock(&self, ino: u64) -> (Arc<OpenInode>, OwnedMutexGuard<OpenState>) {
        loop {
            let oi = lock(&self.map)
                .entry(ino)
                .or_insert_with(|| {
                    Arc::new(OpenInode {
                        state: Arc::new(tokio::sync::Mutex::new(OpenState::default())),
                        file: Mutex::new(None),
                        local_mtime_ms: AtomicU64::new(0),
                        leased_stat: Mutex::new(None),
                        read: AtomicBool::new(false),
                        privs_checked: AtomicBool::new(false),
                        lock_owners: Mutex::new(HashMap::new()),
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
    pub(super) fn retire_if_unused(&self, ino: u64, oi: &Arc<OpenInode>, st: &mut OpenState) {
        if st.handles == 0 && st.mode.is_none() {
            st.removed = true;
            let mut open = lock(&self.map);
            if open.get(&ino).is_some_and(|cur| Arc::ptr_eq(cur, oi)) {
                open.remove(&ino);
            }
        }
    }
}

/// Makes sure `oi` holds a lease of at least `want` on the file at `path`.
/// Returns whether a fresh lease was acquired (the file may have changed
/// since any earlier lease: caches must be dropped). Call with `oi`'s lock
/// held (`st`).
pub(super) async fn acquire(
    client: &Client,
    cache: Option<&ReadCache>,
    ino: u64,
    oi: &OpenInode,
    st: &mut OpenState,
    path: &str,
    want: LeaseMode,
) -> Result<bool> {
    match (st.mode, want) {
        (Some(LeaseMode::Write), _) | (Some(LeaseMode::Read), LeaseMode::Read) => return Ok(false),
        (Some(LeaseMode::Read), LeaseMode::Write) => {
            // In place at the MDS: the same lease, its locks kept, and no
            // moment in which another client could take the file. `Busy`
            // leaves the read lease as it was.
            let old = lock(&oi.file).clone();
            if let Some(old) = old {
                match old.upgrade().await {
                    Ok(f) => {
                        *lock(&oi.file) = Some(f);
                        *lock(&oi.leased_stat) = None;
                        st.mode = Some(LeaseMode::Write);
                        // The same lease: nobody else could change the file,
                        // the cached pages stay valid.
                        return Ok(false);
                    }
                    Err(e)
                        if !matches!(
                            e.kind(),
                            ErrorKind::Stale | ErrorKind::BadHandle | ErrorKind::NotSupported
                        ) =>
                    {
                        return Err(e.context(format!("upgrading {path} to a write lease")));
                    }
                    // The lease is gone (or the MDS is older): open anew.
                    Err(_) => {}
                }
            }
            lock(&oi.lock_owners).clear();
            let old = lock(&oi.file).take();
            *lock(&oi.leased_stat) = None;
            st.mode = None;
            if let Some(f) = old {
                let _ = f.close().await;
            }
            match client
                .open(path, LeaseMode::Write, OpenFlags::default())
                .await
            {
                Ok(f) => {
                    *lock(&oi.file) = Some(f);
                    st.mode = Some(LeaseMode::Write);
                }
                Err(e) => {
                    if let Ok(f) = client
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
            let f = client.open(path, want, OpenFlags::default()).await?;
            *lock(&oi.file) = Some(f);
            st.mode = Some(want);
        }
    }
    if let Some(c) = cache {
        c.invalidate_inode(ino);
    }
    Ok(true)
}
