//! The POSIX namespace of the state machine: nodes of every kind, hard
//! links and their counts, renames with flags and over other names of one
//! node, permissions and owners (set-group-id directories, `chown` clearing
//! set-user-id), times, and extended attributes with their bounds. Every
//! refused command changes nothing (`apply` checks the invariants after
//! every command in debug builds).

use super::state::{ApplyOutcome, Command, MdsState};
use crate::error::{ErrorKind, Result};
use crate::types::*;

fn state() -> MdsState {
    MdsState::new(FileAttrs::default()).unwrap()
}

fn stat(s: &MdsState, path: &str) -> Stat {
    s.stat_of(s.lookup(path).unwrap()).unwrap()
}

fn mkdir(s: &mut MdsState, path: &str, perms: Perms, now_ms: u64) -> Result<ApplyOutcome> {
    s.apply(Command::Mkdir {
        path: path.into(),
        parents: false,
        perms,
        now_ms,
    })
}

fn make(s: &mut MdsState, path: &str, spec: NodeSpec, now_ms: u64) -> Result<ApplyOutcome> {
    s.apply(Command::MakeNode {
        path: path.into(),
        node: NewNode {
            spec,
            perms: Perms {
                mode: 0o644,
                uid: 1000,
                gid: 1000,
            },
        },
        now_ms,
    })
}

fn link(s: &mut MdsState, from: &str, to: &str, now_ms: u64) -> Result<ApplyOutcome> {
    s.apply(Command::Link {
        from: from.into(),
        to: to.into(),
        now_ms,
    })
}

fn unlink(s: &mut MdsState, path: &str, now_ms: u64) -> Result<ApplyOutcome> {
    s.apply(Command::Unlink {
        path: path.into(),
        now_ms,
    })
}

fn rename(s: &mut MdsState, from: &str, to: &str, flags: RenameFlags) -> Result<ApplyOutcome> {
    s.apply(Command::Rename {
        from: from.into(),
        to: to.into(),
        flags,
        now_ms: 50,
    })
}

/// Applies `cmd`, which must be refused with `kind` and change nothing.
fn refused(s: &mut MdsState, cmd: Command, kind: ErrorKind) {
    let before = s.clone();
    let err = s.apply(cmd.clone()).unwrap_err();
    assert_eq!(err.kind(), kind, "{cmd:?}: {err}");
    assert_eq!(*s, before, "{cmd:?} was refused but changed the state");
}

fn open_write(s: &mut MdsState, path: &str, now_ms: u64) -> Lease {
    match s
        .apply(Command::Open {
            path: path.into(),
            mode: LeaseMode::Write,
            flags: OpenFlags {
                create: true,
                ..OpenFlags::default()
            },
            perms: Perms::FILE,
            now_ms,
            lease_duration_ms: 1_000,
        })
        .unwrap()
    {
        ApplyOutcome::Opened { lease, .. } => lease,
        other => panic!("{other:?}"),
    }
}

#[test]
fn nodes_of_every_kind_have_their_kind_permissions_and_times() {
    let mut s = state();
    mkdir(&mut s, "/d", Perms::DIR, 10).unwrap();
    let specs = [
        ("/d/f", NodeSpec::File, InodeKind::File, 0),
        (
            "/d/l",
            NodeSpec::Symlink {
                target: "../far/away".into(),
            },
            InodeKind::Symlink,
            0,
        ),
        ("/d/p", NodeSpec::Fifo, InodeKind::Fifo, 0),
        ("/d/s", NodeSpec::Socket, InodeKind::Socket, 0),
        (
            "/d/c",
            NodeSpec::CharDevice { rdev: 0x0105 },
            InodeKind::CharDevice,
            0x0105,
        ),
        (
            "/d/b",
            NodeSpec::BlockDevice { rdev: 0x0801 },
            InodeKind::BlockDevice,
            0x0801,
        ),
    ];
    for (i, (path, spec, kind, rdev)) in specs.into_iter().enumerate() {
        let ApplyOutcome::Stat(st) = make(&mut s, path, spec, 100 + i as u64).unwrap() else {
            panic!("make_node answers a stat");
        };
        assert_eq!(st, stat(&s, path));
        assert_eq!((st.kind, st.rdev, st.nlink), (kind, rdev, 1), "{path}");
        assert_eq!((st.mode, st.uid, st.gid), (0o644, 1000, 1000), "{path}");
        let t = Timestamp::from_ms(100 + i as u64);
        assert_eq!((st.atime, st.mtime, st.ctime), (t, t, t), "{path}");
        assert_eq!(st.st_mode() & 0o170000, kind.mode_bits());
        let d = stat(&s, "/d");
        assert_eq!((d.mtime, d.ctime), (t, t), "the parent's times");
    }
    assert_eq!(s.readlink("/d/l").unwrap(), "../far/away");
    assert_eq!(stat(&s, "/d/l").size, 11, "a symlink's size is its length");
    assert_eq!(
        s.readlink("/d/f").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(s.readlink("/d/x").unwrap_err().kind(), ErrorKind::NotFound);
    // A name taken by any kind of node, a path through a non-directory.
    let again = Command::MakeNode {
        path: "/d/p".into(),
        node: NewNode {
            spec: NodeSpec::File,
            perms: Perms::FILE,
        },
        now_ms: 200,
    };
    refused(&mut s, again, ErrorKind::AlreadyExists);
    let through = Command::MakeNode {
        path: "/d/l/x".into(),
        node: NewNode {
            spec: NodeSpec::Fifo,
            perms: Perms::FILE,
        },
        now_ms: 200,
    };
    refused(&mut s, through, ErrorKind::NotADirectory);
    let bad_mode = Command::MakeNode {
        path: "/d/q".into(),
        node: NewNode {
            spec: NodeSpec::Fifo,
            perms: Perms {
                mode: 0o10644,
                uid: 0,
                gid: 0,
            },
        },
        now_ms: 200,
    };
    refused(&mut s, bad_mode, ErrorKind::InvalidArgument);
    let empty = Command::MakeNode {
        path: "/d/q".into(),
        node: NewNode {
            spec: NodeSpec::Symlink {
                target: String::new(),
            },
            perms: Perms::FILE,
        },
        now_ms: 200,
    };
    refused(&mut s, empty, ErrorKind::NotFound);
    // Only regular files open; every kind unlinks without a lease.
    for path in ["/d/l", "/d/p", "/d/c"] {
        let open = Command::Open {
            path: path.into(),
            mode: LeaseMode::Read,
            flags: OpenFlags::default(),
            perms: Perms::FILE,
            now_ms: 300,
            lease_duration_ms: 1_000,
        };
        refused(&mut s, open, ErrorKind::InvalidArgument);
        unlink(&mut s, path, 300).unwrap();
        assert!(s.lookup(path).is_err());
    }
}

#[test]
fn directories_count_their_subdirectories_in_their_links() {
    let mut s = state();
    assert_eq!(stat(&s, "/").nlink, 2);
    mkdir(&mut s, "/a", Perms::DIR, 1).unwrap();
    mkdir(&mut s, "/a/b", Perms::DIR, 2).unwrap();
    mkdir(&mut s, "/a/c", Perms::DIR, 3).unwrap();
    make(&mut s, "/a/f", NodeSpec::File, 4).unwrap();
    assert_eq!((stat(&s, "/").nlink, stat(&s, "/a").nlink), (3, 4));
    rename(&mut s, "/a/b", "/b", RenameFlags::default()).unwrap();
    assert_eq!((stat(&s, "/").nlink, stat(&s, "/a").nlink), (4, 3));
    unlink(&mut s, "/a/c", 5).unwrap();
    assert_eq!(stat(&s, "/a").nlink, 2);
    // A directory replaced by a rename, and an exchange of a directory
    // with a file, keep the counts.
    mkdir(&mut s, "/a/e", Perms::DIR, 6).unwrap();
    rename(&mut s, "/b", "/a/e", RenameFlags::default()).unwrap();
    assert_eq!((stat(&s, "/").nlink, stat(&s, "/a").nlink), (3, 3));
    let exchange = RenameFlags {
        exchange: true,
        ..RenameFlags::default()
    };
    rename(&mut s, "/a/e", "/a/f", exchange).unwrap();
    assert_eq!(stat(&s, "/a/f").kind, InodeKind::Dir);
    assert_eq!(stat(&s, "/a/e").kind, InodeKind::File);
    assert_eq!(stat(&s, "/a").nlink, 3);
    mkdir(&mut s, "/x", Perms::DIR, 7).unwrap();
    rename(&mut s, "/x", "/a/e", exchange).unwrap();
    assert_eq!((stat(&s, "/").nlink, stat(&s, "/a").nlink), (3, 4));
    s.check_invariants().unwrap();
}

#[test]
fn hard_links_share_one_node_until_its_last_name_goes() {
    let mut s = state();
    mkdir(&mut s, "/a", Perms::DIR, 1).unwrap();
    let lease = open_write(&mut s, "/a/f", 2);
    let ino = lease.ino;
    let ApplyOutcome::Stat(st) = link(&mut s, "/a/f", "/g", 3).unwrap() else {
        panic!("link answers a stat");
    };
    assert_eq!(
        (st.ino, st.nlink, st.ctime),
        (ino, 2, Timestamp::from_ms(3))
    );
    link(&mut s, "/g", "/a/h", 4).unwrap();
    assert_eq!(stat(&s, "/a/h").nlink, 3);
    assert_eq!(stat(&s, "/a/f").ino, ino);
    // Not a directory, not onto a taken name, not from a missing one.
    refused(
        &mut s,
        Command::Link {
            from: "/a".into(),
            to: "/b".into(),
            now_ms: 5,
        },
        ErrorKind::PermissionDenied,
    );
    refused(
        &mut s,
        Command::Link {
            from: "/a/f".into(),
            to: "/g".into(),
            now_ms: 5,
        },
        ErrorKind::AlreadyExists,
    );
    refused(
        &mut s,
        Command::Link {
            from: "/nope".into(),
            to: "/n".into(),
            now_ms: 5,
        },
        ErrorKind::NotFound,
    );
    // A rename onto another name of the same node does nothing.
    let before = s.clone();
    rename(&mut s, "/a/f", "/g", RenameFlags::default()).unwrap();
    assert_eq!(s, before);
    // Names go while the lease is held, except the last one.
    unlink(&mut s, "/a/f", 6).unwrap();
    assert_eq!(stat(&s, "/g").nlink, 2);
    rename(&mut s, "/g", "/a/g2", RenameFlags::default()).unwrap();
    unlink(&mut s, "/a/h", 7).unwrap();
    assert_eq!(stat(&s, "/a/g2").nlink, 1);
    assert_eq!(s.path_of(ino), "/a/g2");
    refused(
        &mut s,
        Command::Unlink {
            path: "/a/g2".into(),
            now_ms: 8,
        },
        ErrorKind::Busy,
    );
    s.apply(Command::ReleaseLease {
        lease: lease.id,
        now_ms: 9,
    })
    .unwrap();
    unlink(&mut s, "/a/g2", 10).unwrap();
    assert!(s.inode(ino).is_none(), "its last name took the node");
    s.check_invariants().unwrap();
}

#[test]
fn rename_flags_refuse_or_exchange() {
    let mut s = state();
    make(&mut s, "/a", NodeSpec::File, 1).unwrap();
    make(&mut s, "/b", NodeSpec::Fifo, 2).unwrap();
    let no_replace = RenameFlags {
        no_replace: true,
        ..RenameFlags::default()
    };
    let exchange = RenameFlags {
        exchange: true,
        ..RenameFlags::default()
    };
    let cmd = |from: &str, to: &str, flags| Command::Rename {
        from: from.into(),
        to: to.into(),
        flags,
        now_ms: 20,
    };
    refused(
        &mut s,
        cmd("/a", "/b", no_replace),
        ErrorKind::AlreadyExists,
    );
    refused(&mut s, cmd("/a", "/c", exchange), ErrorKind::NotFound);
    refused(
        &mut s,
        cmd(
            "/a",
            "/b",
            RenameFlags {
                no_replace: true,
                exchange: true,
            },
        ),
        ErrorKind::InvalidArgument,
    );
    rename(&mut s, "/a", "/c", no_replace).unwrap();
    let (c, b) = (stat(&s, "/c").ino, stat(&s, "/b").ino);
    rename(&mut s, "/c", "/b", exchange).unwrap();
    assert_eq!((stat(&s, "/c").ino, stat(&s, "/b").ino), (b, c));
    assert_eq!(stat(&s, "/c").ctime, Timestamp::from_ms(50));
    // An exchange never moves a directory into itself.
    mkdir(&mut s, "/d", Perms::DIR, 30).unwrap();
    make(&mut s, "/d/x", NodeSpec::File, 31).unwrap();
    refused(
        &mut s,
        cmd("/d/x", "/d", exchange),
        ErrorKind::InvalidArgument,
    );
    // A plain rename replaces any non-directory.
    rename(&mut s, "/b", "/c", RenameFlags::default()).unwrap();
    assert_eq!(stat(&s, "/c").ino, c);
    assert!(s.inode(b).is_none());
    s.check_invariants().unwrap();
}

#[test]
fn permissions_owners_and_times_change_as_linux_changes_them() {
    let mut s = state();
    let sgid = Perms {
        mode: 0o2775,
        uid: 1000,
        gid: 50,
    };
    mkdir(&mut s, "/shared", sgid, 1).unwrap();
    mkdir(
        &mut s,
        "/shared/sub",
        Perms {
            mode: 0o755,
            uid: 7,
            gid: 7,
        },
        2,
    )
    .unwrap();
    let sub = stat(&s, "/shared/sub");
    assert_eq!((sub.mode, sub.uid, sub.gid), (0o2755, 7, 50), "inherits");
    make(&mut s, "/shared/f", NodeSpec::File, 3).unwrap();
    assert_eq!(stat(&s, "/shared/f").gid, 50);
    assert_eq!(stat(&s, "/shared/f").mode, 0o644, "no sgid on a file");

    let set = |s: &mut MdsState, change: StatChange, now_ms: u64| {
        s.apply(Command::SetStat {
            path: "/shared/f".into(),
            change,
            now_ms,
        })
        .unwrap()
    };
    set(
        &mut s,
        StatChange {
            mode: Some(0o6755),
            ..StatChange::default()
        },
        10,
    );
    let f = stat(&s, "/shared/f");
    assert_eq!((f.mode, f.ctime), (0o6755, Timestamp::from_ms(10)));
    assert_eq!(f.mtime, Timestamp::from_ms(3), "chmod leaves the mtime");
    // chown clears set-user-id, and set-group-id with group execute.
    set(
        &mut s,
        StatChange {
            uid: Some(1),
            ..StatChange::default()
        },
        11,
    );
    let f = stat(&s, "/shared/f");
    assert_eq!((f.mode, f.uid, f.gid), (0o755, 1, 50));
    // ... unless the same change sets the mode; directories keep theirs.
    set(
        &mut s,
        StatChange {
            mode: Some(0o4711),
            gid: Some(9),
            ..StatChange::default()
        },
        12,
    );
    assert_eq!(stat(&s, "/shared/f").mode, 0o4711);
    s.apply(Command::SetStat {
        path: "/shared".into(),
        change: StatChange {
            uid: Some(3),
            ..StatChange::default()
        },
        now_ms: 13,
    })
    .unwrap();
    assert_eq!(stat(&s, "/shared").mode, 0o2775);
    // Times: nanoseconds, before the epoch, "now".
    let t = Timestamp {
        sec: -100,
        nsec: 999_999_999,
    };
    set(
        &mut s,
        StatChange {
            atime: Some(TimeChange::At(t)),
            mtime: Some(TimeChange::Now),
            ..StatChange::default()
        },
        14,
    );
    let f = stat(&s, "/shared/f");
    assert_eq!((f.atime, f.mtime), (t, Timestamp::from_ms(14)));
    for bad in [
        StatChange {
            mode: Some(0o100644),
            ..StatChange::default()
        },
        StatChange {
            mtime: Some(TimeChange::At(Timestamp {
                sec: 0,
                nsec: 1_000_000_000,
            })),
            ..StatChange::default()
        },
    ] {
        let cmd = Command::SetStat {
            path: "/shared/f".into(),
            change: bad,
            now_ms: 15,
        };
        refused(&mut s, cmd, ErrorKind::InvalidArgument);
    }
}

#[test]
fn extended_attributes_are_set_replaced_removed_and_bounded() {
    let mut s = state();
    make(&mut s, "/f", NodeSpec::File, 1).unwrap();
    let set = |name: &str, value: Option<Vec<u8>>, how| Command::SetXattr {
        path: "/f".into(),
        name: name.into(),
        value,
        how,
        now_ms: 2,
    };
    refused(
        &mut s,
        set("user.a", Some(b"x".to_vec()), XattrSet::Replace),
        ErrorKind::NoData,
    );
    s.apply(set("user.a", Some(b"x".to_vec()), XattrSet::Create))
        .unwrap();
    assert_eq!(stat(&s, "/f").ctime, Timestamp::from_ms(2));
    refused(
        &mut s,
        set("user.a", Some(b"y".to_vec()), XattrSet::Create),
        ErrorKind::AlreadyExists,
    );
    s.apply(set("user.a", Some(b"yy".to_vec()), XattrSet::Replace))
        .unwrap();
    s.apply(set("trusted.t", Some(Vec::new()), XattrSet::Any))
        .unwrap();
    assert_eq!(s.get_xattr("/f", "user.a").unwrap(), b"yy");
    assert_eq!(s.get_xattr("/f", "trusted.t").unwrap(), b"");
    assert_eq!(s.list_xattrs("/f").unwrap(), ["trusted.t", "user.a"]);
    assert_eq!(
        s.get_xattr("/f", "user.b").unwrap_err().kind(),
        ErrorKind::NoData
    );
    refused(
        &mut s,
        set("system.posix_acl_access", Some(vec![1]), XattrSet::Any),
        ErrorKind::NotSupported,
    );
    refused(
        &mut s,
        set(
            &format!("user.{}", "n".repeat(MAX_XATTR_NAME)),
            None,
            XattrSet::Any,
        ),
        ErrorKind::NameTooLong,
    );
    refused(
        &mut s,
        set(
            "user.big",
            Some(vec![0; MAX_XATTR_VALUE + 1]),
            XattrSet::Any,
        ),
        ErrorKind::NoSpace,
    );
    // The node's total is bounded; replacing a value counts only the new one.
    s.apply(set(
        "user.big",
        Some(vec![0; MAX_XATTR_VALUE - 100]),
        XattrSet::Any,
    ))
    .unwrap();
    refused(
        &mut s,
        set("user.more", Some(vec![0; 200]), XattrSet::Any),
        ErrorKind::NoSpace,
    );
    s.apply(set(
        "user.big",
        Some(vec![1; MAX_XATTR_VALUE - 200]),
        XattrSet::Any,
    ))
    .unwrap();
    s.apply(set("user.a", None, XattrSet::Any)).unwrap();
    refused(
        &mut s,
        set("user.a", None, XattrSet::Any),
        ErrorKind::NoData,
    );
    assert_eq!(s.list_xattrs("/f").unwrap(), ["trusted.t", "user.big"]);
    s.check_invariants().unwrap();
}

fn open_lease(s: &mut MdsState, path: &str, mode: LeaseMode, now_ms: u64) -> Result<LeaseId> {
    match s.apply(Command::Open {
        path: path.into(),
        mode,
        flags: OpenFlags {
            create: mode == LeaseMode::Write,
            ..OpenFlags::default()
        },
        perms: Perms::FILE,
        now_ms,
        lease_duration_ms: 30_000,
    })? {
        ApplyOutcome::Opened { lease, .. } => Ok(lease.id),
        other => panic!("open answered {other:?}"),
    }
}

fn set_lock(
    s: &mut MdsState,
    lease: LeaseId,
    owner: u64,
    kind: Option<LockKind>,
    range: (u64, u64),
    now_ms: u64,
) -> Result<ApplyOutcome> {
    s.apply(Command::SetLock {
        lease,
        req: LockRequest {
            owner: LockOwner(owner),
            kind,
            start: range.0,
            end: range.1,
            pid: owner as u32,
        },
        now_ms,
    })
}

#[test]
fn locks_conflict_across_leases_and_go_with_their_lease() {
    let mut s = state();
    let w = open_lease(&mut s, "/f", LeaseMode::Write, 1).unwrap();
    s.apply(Command::ReleaseLease {
        lease: w,
        now_ms: 2,
    })
    .unwrap();
    // Two clients reading, each with a lock (flock arrives as whole-file
    // locks of the file description).
    let a = open_lease(&mut s, "/f", LeaseMode::Read, 3).unwrap();
    let b = open_lease(&mut s, "/f", LeaseMode::Read, 3).unwrap();
    let all = (0, LOCK_TO_EOF);
    set_lock(&mut s, a, 1, Some(LockKind::Exclusive), all, 4).unwrap();
    let before = s.clone();
    let e = set_lock(&mut s, b, 1, Some(LockKind::Shared), (10, 10), 5).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
    assert_eq!(s, before, "a refused lock changes nothing");
    // F_GETLK from b sees a's lock.
    let test = LockRequest {
        owner: LockOwner(1),
        kind: Some(LockKind::Shared),
        start: 0,
        end: 0,
        pid: 9,
    };
    let held = s.lock_conflict(b, &test, 5).unwrap().unwrap();
    assert_eq!(
        (held.kind, held.start, held.end, held.pid),
        (LockKind::Exclusive, 0, LOCK_TO_EOF, 1)
    );
    // Released with a's lease.
    s.apply(Command::ReleaseLease {
        lease: a,
        now_ms: 6,
    })
    .unwrap();
    assert!(s.locks().is_empty());
    assert_eq!(s.lock_conflict(b, &test, 6).unwrap(), None);
    set_lock(&mut s, b, 1, Some(LockKind::Exclusive), all, 7).unwrap();

    // A lease that expired without renewal (its client died) is not in
    // the way even before the expiry is applied, and its locks go then.
    let c = open_lease(&mut s, "/f", LeaseMode::Read, 8).unwrap();
    let e = set_lock(&mut s, c, 1, Some(LockKind::Shared), all, 9).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    set_lock(&mut s, c, 1, Some(LockKind::Shared), all, 30_005).unwrap();
    s.apply(Command::ExpireLeases { now_ms: 30_005 }).unwrap();
    assert!(s.locks().iter().all(|(_, l)| l.lease == c));
    // A lock through an unknown lease is Stale; an unlock of nothing held
    // and a bad range change nothing.
    let before = s.clone();
    assert_eq!(
        set_lock(&mut s, b, 1, None, all, 40_000)
            .unwrap_err()
            .kind(),
        ErrorKind::Stale
    );
    assert_eq!(
        set_lock(&mut s, c, 1, None, (5, 4), 30_006)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    set_lock(&mut s, c, 2, None, all, 30_006).unwrap();
    assert_eq!(s, before);
}

#[test]
fn a_read_lease_upgrades_in_place_keeping_its_locks_unless_another_lease_is_on_the_file() {
    let mut s = state();
    let w = open_lease(&mut s, "/f", LeaseMode::Write, 1).unwrap();
    s.apply(Command::ReleaseLease {
        lease: w,
        now_ms: 2,
    })
    .unwrap();
    let a = open_lease(&mut s, "/f", LeaseMode::Read, 3).unwrap();
    set_lock(&mut s, a, 1, Some(LockKind::Shared), (0, 99), 4).unwrap();
    let b = open_lease(&mut s, "/f", LeaseMode::Read, 5).unwrap();
    let before = s.clone();
    let e = s
        .apply(Command::UpgradeLease {
            lease: a,
            now_ms: 6,
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert_eq!(s, before);
    s.apply(Command::ReleaseLease {
        lease: b,
        now_ms: 7,
    })
    .unwrap();
    let ApplyOutcome::Opened { lease, .. } = s
        .apply(Command::UpgradeLease {
            lease: a,
            now_ms: 8,
        })
        .unwrap()
    else {
        panic!("upgrade answers the lease")
    };
    assert_eq!((lease.id, lease.mode), (a, LeaseMode::Write));
    assert_eq!(s.lease(a).unwrap().mode, LeaseMode::Write);
    assert_eq!(s.locks().len(), 1, "the lock stays with the lease");
    // A repeated upgrade answers the same; nobody else can open now.
    s.apply(Command::UpgradeLease {
        lease: a,
        now_ms: 9,
    })
    .unwrap();
    let e = open_lease(&mut s, "/f", LeaseMode::Read, 10).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    // A write lease is renewed and refused like any other once gone.
    s.apply(Command::ReleaseLease {
        lease: a,
        now_ms: 11,
    })
    .unwrap();
    assert!(s.locks().is_empty());
    let e = s
        .apply(Command::UpgradeLease {
            lease: a,
            now_ms: 12,
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale);
}
