//! Directories' attributes that a create in them brought back.
//!
//! The kernel drops a directory's attributes after every create in it
//! (`fuse_dir_changed`), and with `default_permissions` asks for them again
//! at the next path walk through it: one more MDS round trip for every file
//! created. The MDS answers a create with the directory's attributes after
//! it ([`File::parent_stat`](pstorage_core::client::File::parent_stat));
//! [`DirStats`] keeps them for the attribute TTL, as long as the kernel
//! would have kept them had it not dropped them, and `getattr` answers
//! from it.
//!
//! Every other change this mount makes (anything but a create, a read or a
//! write of file data) forgets all of it, both when it is sent and when it
//! is answered, and a create answered across such a change keeps nothing:
//! what is kept never hides a change of this mount's own. Changes by other
//! clients show after the TTL, as they do through the kernel's cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pstorage_core::types::{InodeKind, Stat};

/// At most this many directories are kept (the first kept go first).
const MAX_KEPT: usize = 4096;

/// See the module's documentation.
pub(super) struct DirStats {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Directory inode -> its attributes, when they were asked for, and
    /// the order they were kept in (the smallest goes first when full).
    kept: HashMap<u64, (Stat, Instant, u64)>,
    kept_so_far: u64,
    /// Changes begun or answered so far: a create keeps its answer only if
    /// none came between its sending and its answer.
    changes: u64,
}

/// Taken before a create is sent; see [`DirStats::keep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    changes: u64,
    sent: Instant,
}

/// A change in progress: it forgot everything when it began, and forgets
/// everything again when dropped (answered or abandoned).
pub(super) struct Change<'a>(&'a DirStats);

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.0.forget_all();
    }
}

impl DirStats {
    /// Keeps attributes for `ttl` (none at all for a zero TTL).
    pub(super) fn new(ttl: Duration) -> DirStats {
        DirStats {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call just before a create is sent.
    pub(super) fn ticket(&self) -> Ticket {
        Ticket {
            changes: self.lock().changes,
            sent: Instant::now(),
        }
    }

    /// Keeps `stat`, the attributes of directory `ino` that a create sent
    /// with `ticket` brought back, unless another change came meanwhile or
    /// what is kept of it is newer. They count as asked for when the
    /// create was sent.
    pub(super) fn keep(&self, ino: u64, stat: &Stat, ticket: Ticket) {
        if self.ttl.is_zero() || stat.ino.0 != ino || stat.kind != InodeKind::Dir {
            return;
        }
        let mut inner = self.lock();
        if inner.changes != ticket.changes {
            return;
        }
        if let Some((kept, _, _)) = inner.kept.get(&ino) {
            if (kept.mtime, kept.ctime) > (stat.mtime, stat.ctime) {
                return;
            }
        }
        if inner.kept.len() >= MAX_KEPT && !inner.kept.contains_key(&ino) {
            let oldest = inner
                .kept
                .iter()
                .min_by_key(|(_, (_, _, order))| *order)
                .map(|(ino, _)| *ino);
            if let Some(oldest) = oldest {
                inner.kept.remove(&oldest);
            }
        }
        inner.kept_so_far += 1;
        let order = inner.kept_so_far;
        inner.kept.insert(ino, (stat.clone(), ticket.sent, order));
    }

    /// The attributes kept of directory `ino`, if they are younger than
    /// the TTL.
    pub(super) fn get(&self, ino: u64) -> Option<Stat> {
        let mut inner = self.lock();
        let (stat, at, _) = inner.kept.get(&ino)?;
        if at.elapsed() < self.ttl {
            return Some(stat.clone());
        }
        inner.kept.remove(&ino);
        None
    }

    /// Forgets what is kept of `ino`: newer attributes were read.
    pub(super) fn forget(&self, ino: u64) {
        self.lock().kept.remove(&ino);
    }

    /// Forgets everything kept; creates sent before this keep nothing.
    pub(super) fn forget_all(&self) {
        let mut inner = self.lock();
        inner.changes += 1;
        inner.kept.clear();
    }

    /// A change other than a create begins: see [`Change`].
    pub(super) fn change(&self) -> Change<'_> {
        self.forget_all();
        Change(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pstorage_core::types::{FileAttrs, InodeId, Timestamp};

    fn dir(ino: u64, mtime_ms: u64) -> Stat {
        Stat {
            ino: InodeId(ino),
            kind: InodeKind::Dir,
            size: 0,
            mode: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            rdev: 0,
            atime: Timestamp::from_ms(mtime_ms),
            mtime: Timestamp::from_ms(mtime_ms),
            ctime: Timestamp::from_ms(mtime_ms),
            attrs: FileAttrs::default(),
        }
    }

    #[test]
    fn a_create_keeps_its_directory_until_a_change_or_the_ttl() {
        let stats = DirStats::new(Duration::from_secs(60));
        let t = stats.ticket();
        stats.keep(5, &dir(5, 1_000), t);
        assert_eq!(
            stats.get(5).map(|s| s.mtime),
            Some(Timestamp::from_ms(1_000))
        );
        assert_eq!(stats.get(6), None);
        // A change forgets it at once.
        let change = stats.change();
        assert_eq!(stats.get(5), None);
        // A create answered while the change is in flight keeps it (its
        // ticket is younger than the change's start)...
        let t = stats.ticket();
        stats.keep(5, &dir(5, 2_000), t);
        assert!(stats.get(5).is_some());
        // ...until the change is answered.
        drop(change);
        assert_eq!(stats.get(5), None);

        let expired = DirStats::new(Duration::from_millis(0));
        let t = expired.ticket();
        expired.keep(5, &dir(5, 1_000), t);
        assert_eq!(expired.get(5), None, "a zero TTL keeps nothing");
    }

    #[test]
    fn a_create_answered_across_a_change_keeps_nothing() {
        let stats = DirStats::new(Duration::from_secs(60));
        let t = stats.ticket();
        drop(stats.change());
        stats.keep(5, &dir(5, 1_000), t);
        assert_eq!(stats.get(5), None);
    }

    #[test]
    fn the_newer_attributes_win_and_only_a_directory_s_own_are_kept() {
        let stats = DirStats::new(Duration::from_secs(60));
        let (a, b) = (stats.ticket(), stats.ticket());
        // Two creates in one directory, answered out of order.
        stats.keep(5, &dir(5, 2_000), b);
        stats.keep(5, &dir(5, 1_000), a);
        assert_eq!(
            stats.get(5).map(|s| s.mtime),
            Some(Timestamp::from_ms(2_000))
        );
        // Another inode's attributes, or a file's, are not kept.
        let t = stats.ticket();
        stats.keep(7, &dir(8, 1_000), t);
        let mut file = dir(9, 1_000);
        file.kind = InodeKind::File;
        stats.keep(9, &file, t);
        assert_eq!(
            (stats.get(7), stats.get(8), stats.get(9)),
            (None, None, None)
        );
    }

    #[test]
    fn at_most_max_kept_directories_are_kept() {
        let stats = DirStats::new(Duration::from_secs(60));
        for ino in 0..MAX_KEPT as u64 + 10 {
            let t = stats.ticket();
            stats.keep(ino, &dir(ino, 1_000), t);
        }
        assert_eq!(stats.lock().kept.len(), MAX_KEPT);
        assert!(
            stats.get(MAX_KEPT as u64 + 9).is_some(),
            "the newest is kept"
        );
    }
}
