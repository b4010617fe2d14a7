//! Byte-range locks held across clients (`fcntl`, OFD and `flock` locks of
//! the mount), part of the replicated state.
//!
//! A lock is held by a (lease, [`LockOwner`]) pair on the leased file: the
//! client names the owner (the kernel's lock owner), the lease ties the lock
//! to a live client. Releasing or losing the lease (expiry: a dead client)
//! drops its locks, so a crashed host never keeps a lock.
//!
//! The rules are POSIX's: locks of different holders conflict when their
//! ranges overlap and one is exclusive; a holder's new lock replaces its
//! own locks over the range (splitting them), an unlock removes them, and
//! a holder's adjacent or overlapping locks of one kind are merged. `flock`
//! locks arrive as whole-file locks of the open file description (FUSE
//! turns them into POSIX locks), so they conflict with `fcntl` locks of
//! other owners, as on NFS.
//!
//! Bounds (a client chooses its ranges): [`MAX_LOCKS_PER_FILE`] per file and
//! [`MAX_LOCKS`] in all; a request that would need more is `NoLocks`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::types::{HeldLock, InodeId, LeaseId, LockKind, LockOwner, LockRequest, LOCK_TO_EOF};

/// Locks one file may carry at most.
pub const MAX_LOCKS_PER_FILE: usize = 1024;
/// Locks the cluster holds at most.
pub const MAX_LOCKS: usize = 65_536;

/// A lock as the state stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    /// The lease of the holder.
    pub lease: LeaseId,
    /// The holder's lock owner, within its lease.
    pub owner: LockOwner,
    /// Shared or exclusive.
    pub kind: LockKind,
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// The process that set it, as its client reported it.
    pub pid: u32,
}

impl FileLock {
    fn holder(&self) -> (LeaseId, LockOwner) {
        (self.lease, self.owner)
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    /// How `F_GETLK` reports it.
    pub fn held(&self) -> HeldLock {
        HeldLock {
            kind: self.kind,
            start: self.start,
            end: self.end,
            pid: self.pid,
        }
    }
}

/// Every lock, by file, each file's sorted by start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LockTable {
    by_file: BTreeMap<InodeId, Vec<FileLock>>,
}

impl LockTable {
    /// The table of these locks (as a stored state held them).
    pub(crate) fn from_map(by_file: BTreeMap<InodeId, Vec<FileLock>>) -> LockTable {
        LockTable { by_file }
    }

    /// The locks on `ino`, sorted by start.
    pub fn on(&self, ino: InodeId) -> &[FileLock] {
        self.by_file.get(&ino).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every lock held, by file.
    pub fn iter(&self) -> impl Iterator<Item = (InodeId, &FileLock)> {
        self.by_file
            .iter()
            .flat_map(|(ino, locks)| locks.iter().map(move |l| (*ino, l)))
    }

    /// Locks held in all.
    pub fn len(&self) -> usize {
        self.by_file.values().map(Vec::len).sum()
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.by_file.is_empty()
    }

    /// The first lock of another holder that `req` (a lock, not an unlock)
    /// by `lease` conflicts with. Locks of leases that are not `live` any
    /// more (expired, not yet dropped) are not in the way.
    pub fn conflict(
        &self,
        ino: InodeId,
        lease: LeaseId,
        req: &LockRequest,
        live: impl Fn(LeaseId) -> bool,
    ) -> Option<&FileLock> {
        let kind = req.kind?;
        self.on(ino).iter().find(|l| {
            l.holder() != (lease, req.owner)
                && live(l.lease)
                && l.overlaps(req.start, req.end)
                && (kind == LockKind::Exclusive || l.kind == LockKind::Exclusive)
        })
    }

    /// Whether `req` by `lease` on `ino` can be applied: `WouldBlock` when
    /// another `live` holder's lock is in the way, `NoLocks` past the
    /// bounds.
    pub fn check(
        &self,
        ino: InodeId,
        lease: LeaseId,
        req: &LockRequest,
        live: impl Fn(LeaseId) -> bool,
    ) -> Result<()> {
        req.validate()?;
        if let Some(l) = self.conflict(ino, lease, req, live) {
            return Err(Error::new(
                ErrorKind::WouldBlock,
                format!(
                    "bytes {}..={} are locked {} by process {} of another owner",
                    l.start,
                    l.end,
                    kind_name(l.kind),
                    l.pid
                ),
            ));
        }
        let before = self.on(ino).len();
        let after = self.after(ino, lease, req).len();
        if after > before && (after > MAX_LOCKS_PER_FILE || self.len() + after - before > MAX_LOCKS)
        {
            return Err(Error::new(
                ErrorKind::NoLocks,
                format!(
                    "too many locks: at most {MAX_LOCKS_PER_FILE} per file and {MAX_LOCKS} in the cluster"
                ),
            ));
        }
        Ok(())
    }

    /// Applies `req` by `lease` on `ino` (checked by [`LockTable::check`]).
    /// Locks of other holders that overlap it (their leases are no longer
    /// live) are dropped.
    pub fn apply(&mut self, ino: InodeId, lease: LeaseId, req: &LockRequest) {
        let mut after = self.after(ino, lease, req);
        if let Some(kind) = req.kind {
            let holder = (lease, req.owner);
            after.retain(|l| {
                l.holder() == holder
                    || !l.overlaps(req.start, req.end)
                    || (kind == LockKind::Shared && l.kind == LockKind::Shared)
            });
        }
        if after.is_empty() {
            self.by_file.remove(&ino);
        } else {
            self.by_file.insert(ino, after);
        }
    }

    /// Drops every lock `lease` holds on `ino` (its file).
    pub fn drop_lease(&mut self, ino: InodeId, lease: LeaseId) {
        if let Some(locks) = self.by_file.get_mut(&ino) {
            locks.retain(|l| l.lease != lease);
            if locks.is_empty() {
                self.by_file.remove(&ino);
            }
        }
    }

    /// Drops every lock on `ino` (a file removed with its leases).
    pub fn drop_file(&mut self, ino: InodeId) {
        self.by_file.remove(&ino);
    }

    /// The locks of `ino` once `req` by `lease` is applied (conflicts not
    /// checked).
    fn after(&self, ino: InodeId, lease: LeaseId, req: &LockRequest) -> Vec<FileLock> {
        let holder = (lease, req.owner);
        let mut out = Vec::with_capacity(self.on(ino).len() + 2);
        for l in self.on(ino) {
            if l.holder() != holder || !l.overlaps(req.start, req.end) {
                out.push(*l);
                continue;
            }
            // The holder's own lock over the range: keep what lies outside.
            if l.start < req.start {
                out.push(FileLock {
                    end: req.start - 1,
                    ..*l
                });
            }
            if l.end > req.end {
                out.push(FileLock {
                    start: req.end + 1,
                    ..*l
                });
            }
        }
        if let Some(kind) = req.kind {
            let mut new = FileLock {
                lease,
                owner: req.owner,
                kind,
                start: req.start,
                end: req.end,
                pid: req.pid,
            };
            // Merge the holder's neighbours of the same kind (nothing of the
            // holder overlaps the range any more).
            out.retain(|l| {
                let touches = l.end.checked_add(1) == Some(new.start)
                    || new.end.checked_add(1) == Some(l.start);
                if l.holder() == holder && l.kind == kind && touches {
                    new.start = new.start.min(l.start);
                    new.end = new.end.max(l.end);
                    false
                } else {
                    true
                }
            });
            out.push(new);
        }
        out.sort_by_key(|l| (l.start, l.end, l.lease, l.owner));
        out
    }

    /// Checks the table against the leases (`lease_file` answers the file a
    /// live lease is on): every lock's lease exists and is on the lock's
    /// file, ranges are valid, no two holders' locks conflict, a holder's
    /// locks do not overlap, and the bounds hold.
    pub fn check_invariants(
        &self,
        lease_file: impl Fn(LeaseId) -> Option<InodeId>,
    ) -> std::result::Result<(), String> {
        if self.len() > MAX_LOCKS {
            return Err(format!("{} locks, more than {MAX_LOCKS}", self.len()));
        }
        for (ino, locks) in &self.by_file {
            if locks.is_empty() {
                return Err(format!("inode {ino} has an empty lock list"));
            }
            if locks.len() > MAX_LOCKS_PER_FILE {
                return Err(format!("inode {ino} has {} locks", locks.len()));
            }
            for (i, l) in locks.iter().enumerate() {
                if lease_file(l.lease) != Some(*ino) {
                    return Err(format!(
                        "a lock on inode {ino} is held by lease {}, which is not on it",
                        l.lease
                    ));
                }
                if l.start > l.end || l.end > LOCK_TO_EOF {
                    return Err(format!("inode {ino}: lock range {}..={}", l.start, l.end));
                }
                if i > 0 && locks[i - 1].start > l.start {
                    return Err(format!("inode {ino}: locks out of order"));
                }
                for m in &locks[i + 1..] {
                    if !l.overlaps(m.start, m.end) {
                        continue;
                    }
                    if l.holder() == m.holder() {
                        return Err(format!(
                            "inode {ino}: one holder's locks {}..={} and {}..={} overlap",
                            l.start, l.end, m.start, m.end
                        ));
                    }
                    if l.kind == LockKind::Exclusive || m.kind == LockKind::Exclusive {
                        return Err(format!(
                            "inode {ino}: conflicting locks {}..={} and {}..={}",
                            l.start, l.end, m.start, m.end
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn kind_name(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Shared => "shared",
        LockKind::Exclusive => "exclusive",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INO: InodeId = InodeId(7);

    /// Every lease is live.
    const LIVE: fn(LeaseId) -> bool = |_| true;

    fn req(owner: u64, kind: Option<LockKind>, start: u64, end: u64) -> LockRequest {
        LockRequest {
            owner: LockOwner(owner),
            kind,
            start,
            end,
            pid: owner as u32,
        }
    }

    fn ranges(t: &LockTable) -> Vec<(u64, LockKind, u64, u64)> {
        t.on(INO)
            .iter()
            .map(|l| (l.owner.0, l.kind, l.start, l.end))
            .collect()
    }

    #[test]
    fn a_lock_inside_another_of_the_same_owner_splits_it_and_unlock_merges_nothing_back() {
        let mut t = LockTable::default();
        let l = LeaseId(1);
        let ex = Some(LockKind::Exclusive);
        let sh = Some(LockKind::Shared);
        t.check(INO, l, &req(1, ex, 0, 99), LIVE).unwrap();
        t.apply(INO, l, &req(1, ex, 0, 99));
        t.apply(INO, l, &req(1, sh, 10, 19));
        assert_eq!(
            ranges(&t),
            vec![
                (1, LockKind::Exclusive, 0, 9),
                (1, LockKind::Shared, 10, 19),
                (1, LockKind::Exclusive, 20, 99)
            ]
        );
        // The same kind again over the hole merges the three.
        t.apply(INO, l, &req(1, ex, 10, 19));
        assert_eq!(ranges(&t), vec![(1, LockKind::Exclusive, 0, 99)]);
        t.apply(INO, l, &req(1, None, 50, LOCK_TO_EOF));
        assert_eq!(ranges(&t), vec![(1, LockKind::Exclusive, 0, 49)]);
        t.apply(INO, l, &req(1, None, 0, LOCK_TO_EOF));
        assert!(t.is_empty());
    }

    #[test]
    fn other_owners_and_other_leases_conflict_shared_locks_do_not() {
        let mut t = LockTable::default();
        let (a, b) = (LeaseId(1), LeaseId(2));
        t.apply(INO, a, &req(1, Some(LockKind::Shared), 0, LOCK_TO_EOF));
        t.check(INO, b, &req(1, Some(LockKind::Shared), 5, 5), LIVE)
            .unwrap();
        t.check(INO, a, &req(2, Some(LockKind::Shared), 5, 5), LIVE)
            .unwrap();
        let e = t
            .check(INO, b, &req(1, Some(LockKind::Exclusive), 5, 5), LIVE)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        let e = t
            .check(INO, a, &req(2, Some(LockKind::Exclusive), 5, 5), LIVE)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        // The holder itself upgrades its lock.
        t.check(
            INO,
            a,
            &req(1, Some(LockKind::Exclusive), 0, LOCK_TO_EOF),
            LIVE,
        )
        .unwrap();
        // Its lease gone, the lock is gone.
        t.drop_lease(INO, a);
        assert!(t.is_empty());
        t.check(INO, b, &req(1, Some(LockKind::Exclusive), 5, 5), LIVE)
            .unwrap();
    }

    #[test]
    fn bad_ranges_and_too_many_locks_are_refused() {
        let mut t = LockTable::default();
        let l = LeaseId(1);
        for r in [req(1, None, 5, 4), req(1, None, 0, LOCK_TO_EOF + 1)] {
            assert_eq!(
                t.check(INO, l, &r, LIVE).unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
        }
        // Every other byte: no merging.
        for i in 0..MAX_LOCKS_PER_FILE as u64 {
            let r = req(1, Some(LockKind::Shared), 2 * i, 2 * i);
            t.check(INO, l, &r, LIVE).unwrap();
            t.apply(INO, l, &r);
        }
        let r = req(1, Some(LockKind::Shared), 1 << 40, 1 << 40);
        assert_eq!(
            t.check(INO, l, &r, LIVE).unwrap_err().kind(),
            ErrorKind::NoLocks
        );
        // Filling a gap merges: allowed at the bound.
        let r = req(1, Some(LockKind::Shared), 1, 1);
        t.check(INO, l, &r, LIVE).unwrap();
        t.check_invariants(|_| Some(INO)).unwrap();
    }

    /// A byte-by-byte model of one file's locks over a small range.
    type Model = BTreeMap<(u64, u64), Vec<Option<LockKind>>>;

    const SPAN: u64 = 24;

    fn model_apply(m: &mut Model, holder: (u64, u64), r: &LockRequest) -> bool {
        // Conflict check first, as the table does.
        if let Some(kind) = r.kind {
            for (h, bytes) in m.iter() {
                if *h == holder {
                    continue;
                }
                for b in r.start..=r.end.min(SPAN - 1) {
                    if let Some(k) = bytes[b as usize] {
                        if k == LockKind::Exclusive || kind == LockKind::Exclusive {
                            return false;
                        }
                    }
                }
            }
        }
        let bytes = m.entry(holder).or_insert_with(|| vec![None; SPAN as usize]);
        for b in r.start..=r.end.min(SPAN - 1) {
            bytes[b as usize] = r.kind;
        }
        true
    }

    fn table_bytes(t: &LockTable) -> Model {
        let mut m = Model::new();
        for l in t.on(INO) {
            let bytes = m
                .entry((l.lease.0, l.owner.0))
                .or_insert_with(|| vec![None; SPAN as usize]);
            for b in l.start..=l.end.min(SPAN - 1) {
                bytes[b as usize] = Some(l.kind);
            }
        }
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The table agrees with the byte model after any sequence of
        /// requests, refuses exactly what conflicts, keeps its invariants
        /// and merges (no two touching locks of one holder and kind).
        #[test]
        fn the_table_matches_a_byte_model(
            ops in proptest::collection::vec(
                (0u64..2, 0u64..2, proptest::option::of(prop_oneof![Just(LockKind::Shared), Just(LockKind::Exclusive)]), 0u64..SPAN, 0u64..SPAN),
                1..40,
            )
        ) {
            let mut t = LockTable::default();
            let mut m = Model::new();
            for (lease, owner, kind, a, b) in ops {
                let (start, end) = (a.min(b), if a.max(b) == SPAN - 1 { LOCK_TO_EOF } else { a.max(b) });
                let r = req(owner, kind, start, end);
                let ok = t.check(INO, LeaseId(lease), &r, LIVE).is_ok();
                if ok {
                    t.apply(INO, LeaseId(lease), &r);
                }
                prop_assert_eq!(ok, model_apply(&mut m, (lease, owner), &r));
                m.retain(|_, bytes| bytes.iter().any(Option::is_some));
                prop_assert_eq!(table_bytes(&t), m.clone());
                prop_assert!(t.check_invariants(|_| Some(INO)).is_ok());
                let locks = t.on(INO);
                for (i, x) in locks.iter().enumerate() {
                    for y in &locks[i + 1..] {
                        let touch = x.end.checked_add(1) == Some(y.start) || y.end.checked_add(1) == Some(x.start);
                        prop_assert!(!(x.holder() == y.holder() && x.kind == y.kind && touch));
                    }
                }
            }
        }
    }
}
