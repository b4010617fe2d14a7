//! The tripwire: every stored root (pre-Raft snapshot and log record, Raft
//! snapshot record, snapshot metadata and log entry), written from rich
//! live values as this build writes it, must decode exactly (no byte left
//! over) as the newest frozen format (`v11`) and
//! convert back to an equal
//! live value. A change of a stored live type trips it: that change needs
//! a new format, never an edit of a frozen module.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership};
use serde::Deserialize;

use super::{live, v11, v3, v9, RaftMeta};
use crate::error::Error;
use crate::mds::raft::{encode_snapshot_record, MdsId, MdsNode, MdsRaftConfig, RaftRequest};
use crate::mds::sessions::{OpReply, Sessions};
use crate::mds::state::{ApplyOutcome, AttrUpdateV3, Command, MdsState, NewEvent};
use crate::mds::store::{encode, encode_snapshot, STORE_FORMAT_VERSION};
use crate::types::{
    AttrUpdate, CertRecord, CertSerial, ChunkId, ChunkMap, CsId, CsPlacementUpdate, EventKind,
    EventLevel, FailureDomain, FileAttrs, InodeId, InodeKind, Lease, LeaseId, LeaseMode, LockKind,
    LockOwner, LockRequest, MapVersion, NewNode, NodeSpec, OpTag, OpenFlags, Perms, RenameFlags,
    Replica, Replicas, SessionId, Stat, StatChange, TimeChange, Timestamp, XattrSet, LOCK_TO_EOF,
};

/// What a tripped test says.
const TRIPWIRE: &str = "a live type the MDS stores changed, so its records no longer \
    read as format 11: add a new format version (STORE_FORMAT_VERSION + 1) and a \
    pstorage-core/src/mds/format/vN.rs with the new types and upgrades from v11 (see \
    mds::format and docs/formats.md); do not edit v11.rs or older";

/// Decodes a record written by this build as the frozen `T` of format 11,
/// which must use every byte.
fn read_as_newest<T: for<'de> Deserialize<'de>>(record: &[u8], what: &str) -> T {
    assert_eq!(
        STORE_FORMAT_VERSION, 11,
        "the tripwire checks format 11: move it to the newest format's module"
    );
    assert_eq!(record.first(), Some(&STORE_FORMAT_VERSION), "{what}");
    let (value, rest) = postcard::take_from_bytes::<T>(&record[1..])
        .unwrap_or_else(|e| panic!("{what} does not decode as format 11 ({e}): {TRIPWIRE}"));
    assert!(
        rest.is_empty(),
        "{what}: {} bytes are left after decoding it as format 11: {TRIPWIRE}",
        rest.len()
    );
    value
}

fn tag(session: u64, seq: u64, done_below: u64) -> OpTag {
    OpTag {
        session: SessionId(session),
        seq,
        done_below,
    }
}

fn mkdir(path: &str, now_ms: u64) -> Command {
    Command::Mkdir {
        perms: Perms::DIR,
        path: path.into(),
        parents: true,
        now_ms,
    }
}

fn open(path: &str, mode: LeaseMode, create: bool, now_ms: u64, duration: u64) -> Command {
    Command::Open {
        perms: Perms::FILE,
        path: path.into(),
        mode,
        flags: OpenFlags {
            create,
            exclusive: false,
            truncate: false,
        },
        now_ms,
        lease_duration_ms: duration,
    }
}

fn lock(owner: u64, kind: Option<LockKind>, start: u64, end: u64, pid: u32) -> LockRequest {
    LockRequest {
        owner: LockOwner(owner),
        kind,
        start,
        end,
        pid,
    }
}

/// Both [`LockKind`]s and an unlock (a new kind must be added here).
fn every_lock_kind() -> Vec<Option<LockKind>> {
    let all = vec![Some(LockKind::Shared), Some(LockKind::Exclusive), None];
    for kind in all.iter().flatten() {
        // Exhaustive on purpose: a new variant is a new format.
        match kind {
            LockKind::Shared | LockKind::Exclusive => {}
        }
    }
    all
}

/// Every variant of [`EventKind`] (a new one must be added here).
fn every_event_kind() -> Vec<EventKind> {
    let all = vec![
        EventKind::CsState,
        EventKind::Replication,
        EventKind::Corruption,
        EventKind::DiskFull,
        EventKind::Lease,
        EventKind::Config,
        EventKind::Mds,
        EventKind::Security,
    ];
    for kind in &all {
        // Exhaustive on purpose: a new variant is a new format.
        match kind {
            EventKind::CsState
            | EventKind::Replication
            | EventKind::Corruption
            | EventKind::DiskFull
            | EventKind::Lease
            | EventKind::Config
            | EventKind::Mds
            | EventKind::Security => {}
        }
    }
    all
}

/// A node of every kind [`NodeSpec`] makes (a new one must be added here).
fn every_node_spec() -> Vec<NodeSpec> {
    let all = vec![
        NodeSpec::File,
        NodeSpec::Symlink {
            target: "../somewhere/else".into(),
        },
        NodeSpec::Fifo,
        NodeSpec::Socket,
        NodeSpec::CharDevice { rdev: 0x0501 },
        NodeSpec::BlockDevice { rdev: u64::MAX - 1 },
    ];
    for spec in &all {
        // Exhaustive on purpose: a new variant is a new format.
        match spec {
            NodeSpec::File
            | NodeSpec::Symlink { .. }
            | NodeSpec::Fifo
            | NodeSpec::Socket
            | NodeSpec::CharDevice { .. }
            | NodeSpec::BlockDevice { .. } => {}
        }
    }
    all
}

/// Every variant of [`FailureDomain`].
fn every_failure_domain() -> Vec<FailureDomain> {
    for d in FailureDomain::ALL {
        // Exhaustive on purpose: a new variant is a new format.
        match d {
            FailureDomain::Disk
            | FailureDomain::Host
            | FailureDomain::Rack
            | FailureDomain::Row
            | FailureDomain::Room => {}
        }
    }
    FailureDomain::ALL.to_vec()
}

/// A state with every kind of stored thing: files and directories with
/// chunks and attributes of every failure domain, chunk servers with
/// placements (one releasing, one dropped), read and write leases, a file
/// to fence, parameters, events of every kind and level, an MDS id,
/// sessions remembering answers and a refusal, and byte-range locks of
/// several leases and owners (shared and exclusive, one split by an
/// unlock, one of an upgraded lease).
fn rich_state() -> MdsState {
    let root = FileAttrs {
        replicas: Replicas { norm: 2, min: 1 },
        chunk_size: 1 << 20,
        tier: 1,
        failure_domain: FailureDomain::Disk,
    };
    let mut state = MdsState::new(root).unwrap();
    let mut ok = |cmd: Command| {
        state
            .apply(cmd.clone())
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    };
    for cs in 1..=4 {
        ok(Command::AllocateCsId);
        ok(Command::SetCsAddr {
            cs: CsId(cs),
            addr: format!("cs{cs}:7000"),
        });
        ok(Command::SetCsPlacement {
            cs: CsId(cs),
            update: CsPlacementUpdate {
                location: Some(format!("1.{cs}.1")),
                host: Some(format!("h{cs}")),
                tier: Some(1),
                capacity_bytes: (cs == 1).then_some(1 << 40),
            },
            now_ms: 10,
        });
    }
    ok(Command::SetParam {
        key: "mds.repl.concurrency".into(),
        value: 3,
        now_ms: 11,
    });
    ok(Command::LogEvents {
        now_ms: 12,
        events: every_event_kind()
            .into_iter()
            .zip([EventLevel::Info, EventLevel::Warning, EventLevel::Error].repeat(3))
            .map(|(kind, level)| NewEvent {
                kind,
                level,
                message: format!("{kind} {level}"),
            })
            .collect(),
    });
    for (i, domain) in every_failure_domain().into_iter().enumerate() {
        let dir = format!("/d{i}");
        ok(mkdir(&dir, 20));
        ok(Command::SetAttr {
            path: dir,
            update: AttrUpdate {
                failure_domain: Some(domain),
                ..AttrUpdate::default()
            },
            recursive: true,
            now_ms: 21,
        });
    }
    ok(Command::SetAttrV3 {
        path: "/d1".into(),
        update: AttrUpdateV3 {
            replicas: Some(Replicas { norm: 3, min: 2 }),
            chunk_size: Some(2 << 20),
        },
        recursive: false,
        now_ms: 22,
    });
    // Tagged mutations remember their answers: a stat, an open, a refusal.
    ok(Command::Tagged {
        op: tag(7, 1, 1),
        now_ms: 30,
        cmd: Box::new(mkdir("/t", 30)),
    });
    ok(Command::Tagged {
        op: tag(7, 2, 1),
        now_ms: 31,
        cmd: Box::new(open("/d1/f", LeaseMode::Write, true, 31, 1_000_000)),
    });
    let refused = Command::Tagged {
        op: tag(8, 1, 1),
        now_ms: 32,
        cmd: Box::new(Command::Unlink {
            path: "/missing".into(),
            now_ms: 32,
        }),
    };
    assert!(state.apply(refused).is_err());
    let mut ok = |cmd: Command| {
        state
            .apply(cmd.clone())
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    };
    ok(Command::AllocateChunk {
        lease: LeaseId(1),
        index: 0,
        chunk: ChunkId(1),
        version: MapVersion(1),
        replicas: vec![CsId(1), CsId(2)],
        now_ms: 40,
    });
    ok(Command::AllocateChunk {
        lease: LeaseId(1),
        index: 3,
        chunk: ChunkId(2),
        version: MapVersion(1),
        replicas: vec![CsId(2), CsId(1)],
        now_ms: 41,
    });
    ok(Command::CommitSize {
        lease: LeaseId(1),
        size: 7 << 20,
        now_ms: 42,
    });
    ok(Command::UpdateChunkMap {
        chunk: ChunkId(2),
        version: MapVersion(2),
        replicas: vec![CsId(1), CsId(2)],
    });
    ok(Command::ExtendChain {
        chunk: ChunkId(1),
        version: MapVersion(1),
        added: vec![CsId(3)],
    });
    // A write lease that expires: its file waits for a fence.
    ok(open("/d2/g", LeaseMode::Write, true, 50, 10));
    ok(Command::AllocateChunk {
        lease: LeaseId(2),
        index: 0,
        chunk: ChunkId(3),
        version: MapVersion(1),
        replicas: vec![CsId(3), CsId(1)],
        now_ms: 51,
    });
    ok(Command::ExpireLeases { now_ms: 100 });
    // A read lease.
    ok(open("/d3/h", LeaseMode::Write, true, 101, 10));
    ok(Command::ReleaseLease {
        lease: LeaseId(3),
        now_ms: 102,
    });
    ok(open("/d3/h", LeaseMode::Read, false, 103, 500_000));
    ok(Command::RenewLease {
        lease: LeaseId(1),
        now_ms: 104,
    });
    ok(Command::SetCsReleasing {
        cs: CsId(3),
        releasing: true,
        now_ms: 105,
    });
    ok(Command::DropCs { cs: CsId(4) });
    ok(Command::AllocateMdsId);
    ok(Command::Tagged {
        op: tag(7, 3, 2),
        now_ms: 106,
        cmd: Box::new(Command::Rename {
            flags: RenameFlags::default(),
            from: "/t".into(),
            to: "/t2".into(),
            now_ms: 106,
        }),
    });
    // The POSIX attributes: a set-group-id directory, a node of every
    // kind, hard links, extended attributes, times before the epoch and
    // with nanoseconds.
    ok(Command::Mkdir {
        path: "/p".into(),
        parents: false,
        perms: Perms {
            mode: 0o2775,
            uid: 1000,
            gid: 100,
        },
        now_ms: 110,
    });
    for (i, spec) in every_node_spec().into_iter().enumerate() {
        ok(Command::MakeNode {
            path: format!("/p/n{i}"),
            node: NewNode {
                spec,
                perms: Perms {
                    mode: 0o4751,
                    uid: 1000 + i as u32,
                    gid: 7,
                },
            },
            now_ms: 111,
        });
    }
    ok(Command::Link {
        from: "/p/n0".into(),
        to: "/d0/hard".into(),
        now_ms: 112,
    });
    ok(Command::Link {
        from: "/p/n0".into(),
        to: "/p/hard2".into(),
        now_ms: 113,
    });
    ok(Command::SetStat {
        path: "/p/n1".into(),
        change: StatChange {
            mode: Some(0o777),
            uid: Some(u32::MAX),
            gid: None,
            atime: Some(TimeChange::At(Timestamp {
                sec: -86_400,
                nsec: 999_999_999,
            })),
            mtime: Some(TimeChange::Now),
        },
        now_ms: 114,
    });
    ok(Command::SetXattr {
        path: "/p/n0".into(),
        name: "user.mime".into(),
        value: Some(b"text/plain".to_vec()),
        how: XattrSet::Create,
        now_ms: 115,
    });
    ok(Command::SetXattr {
        path: "/p".into(),
        name: "trusted.empty".into(),
        value: Some(Vec::new()),
        how: XattrSet::Any,
        now_ms: 116,
    });
    // Byte-range locks: two read leases of /d3/h sharing ranges (one lock
    // split by an unlock), two owners of the write lease of /d1/f, and a
    // read lease of /p/n0 upgraded in place with its exclusive lock.
    let opened = |outcome: ApplyOutcome| match outcome {
        ApplyOutcome::Opened { lease, .. } => lease.id,
        other => panic!("not opened: {other:?}"),
    };
    let h1 = LeaseId(4);
    let h2 = opened(ok(open("/d3/h", LeaseMode::Read, false, 117, 500_000)));
    let n0 = opened(ok(open("/p/n0", LeaseMode::Read, false, 118, 500_000)));
    for (lease, req) in [
        (h1, lock(1, Some(LockKind::Shared), 0, 99, 100)),
        (
            h2,
            lock(2, Some(LockKind::Shared), 50, LOCK_TO_EOF, u32::MAX),
        ),
        (h1, lock(1, None, 10, 19, 100)),
        (
            LeaseId(1),
            lock(7, Some(LockKind::Exclusive), 4096, 8191, 7),
        ),
        (
            LeaseId(1),
            lock(u64::MAX, Some(LockKind::Shared), 0, 4095, 0),
        ),
        (n0, lock(9, Some(LockKind::Exclusive), 0, 0, 9)),
    ] {
        ok(Command::SetLock {
            lease,
            req,
            now_ms: 119,
        });
    }
    ok(Command::UpgradeLease {
        lease: n0,
        now_ms: 120,
    });
    for (serial, role, name) in [(1, "mds", "mds 1"), (u128::MAX, "client", "h1")] {
        ok(Command::RecordCertificate {
            record: cert(serial, role, name),
            now_ms: 121,
        });
    }
    // A recorded certificate and one never recorded, revoked.
    ok(Command::RevokeCertificates {
        serials: vec![CertSerial(u128::MAX), CertSerial(77)],
        now_ms: 122,
    });
    state.check_invariants().unwrap();
    assert_eq!(state.certs().list().len(), 3);
    assert_eq!(state.certs().revoked_from(0).total, 2);
    assert!(state.locks().len() >= 6, "{:?}", state.locks());
    assert!(state.inodes().any(|n| n.links.len() == 2), "hard links");
    assert!(state.inodes().any(|n| n.fence_pending), "a file to fence");
    assert!(state.leases().any(|l| l.mode == LeaseMode::Read));
    assert!(state.servers().any(|cs| cs.dropped));
    assert_eq!(state.sessions().len(), 2);
    state
}

fn cert(serial: u128, role: &str, name: &str) -> CertRecord {
    CertRecord {
        serial: CertSerial(serial),
        role: role.into(),
        name: name.into(),
        issued_ms: 1_700_000_000_000,
        not_after_ms: u64::MAX,
        revoked_ms: None,
    }
}

fn membership() -> Membership<MdsId, MdsNode> {
    let node = |id: u64| {
        (
            MdsId(id),
            MdsNode {
                addr: format!("mds{id}:7100"),
            },
        )
    };
    // A joint configuration and a learner (4).
    Membership::new(
        vec![
            BTreeSet::from([1, 2].map(MdsId)),
            BTreeSet::from([2, 3].map(MdsId)),
        ],
        BTreeMap::from([node(1), node(2), node(3), node(4)]),
    )
}

fn log_id(term: u64, node: u64, index: u64) -> LogId<MdsId> {
    LogId::new(CommittedLeaderId::new(term, MdsId(node)), index)
}

fn meta() -> RaftMeta {
    RaftMeta {
        last_log_id: Some(log_id(3, 2, 40)),
        last_membership: StoredMembership::new(Some(log_id(2, 1, 17)), membership()),
        snapshot_id: "3-2-40-00000000deadbeef".into(),
    }
}

#[test]
fn the_state_is_read_as_format_10() {
    let state = rich_state();

    let record = encode_snapshot(41, &state).unwrap();
    let frozen: v11::Snapshot = read_as_newest(&record, "a pre-Raft snapshot");
    assert_eq!(
        live::store_snapshot(frozen),
        (41, state.clone()),
        "a pre-Raft snapshot: {TRIPWIRE}"
    );

    let record = encode_snapshot_record(&meta(), &state).unwrap();
    let frozen: v11::SnapshotRecord = read_as_newest(&record, "a Raft snapshot");
    assert_eq!(
        live::raft_snapshot(frozen),
        (meta(), state),
        "a Raft snapshot: {TRIPWIRE}"
    );

    let record = encode(&meta()).unwrap();
    let frozen: v3::Meta = read_as_newest(&record, "Raft snapshot metadata");
    assert_eq!(
        live::meta(frozen),
        meta(),
        "Raft snapshot metadata: {TRIPWIRE}"
    );
}

/// Every variant of [`ApplyOutcome`], with an answer of each remembered.
#[test]
fn remembered_answers_are_read_as_format_10() {
    let stat = Stat {
        ino: InodeId(5),
        kind: InodeKind::File,
        size: 9,
        mode: 0o6755,
        uid: 1000,
        gid: u32::MAX,
        nlink: 3,
        rdev: 0x0801,
        atime: Timestamp { sec: -1, nsec: 5 },
        mtime: Timestamp {
            sec: 1,
            nsec: 999_999_999,
        },
        ctime: Timestamp {
            sec: i64::MAX,
            nsec: 0,
        },
        attrs: FileAttrs {
            tier: 2,
            failure_domain: FailureDomain::Room,
            ..FileAttrs::default()
        },
    };
    let map = ChunkMap {
        chunk: ChunkId(0x2a),
        index: 3,
        version: MapVersion(4),
        replicas: vec![Replica {
            cs: CsId(2),
            addr: "cs2:7000".into(),
        }],
    };
    let outcomes = vec![
        ApplyOutcome::Done,
        ApplyOutcome::Stat(stat.clone()),
        ApplyOutcome::Stat(Stat {
            kind: InodeKind::Symlink,
            ..stat.clone()
        }),
        ApplyOutcome::Opened {
            lease: Lease {
                id: LeaseId(6),
                ino: InodeId(5),
                mode: LeaseMode::Write,
                duration_ms: 30_000,
            },
            stat: Stat {
                kind: InodeKind::BlockDevice,
                ..stat.clone()
            },
            released: vec![map.clone()],
        },
        ApplyOutcome::Released(vec![map.clone(), map.clone()]),
        ApplyOutcome::Expired(vec![LeaseId(1), LeaseId(2)]),
        ApplyOutcome::ChunkMap(map.clone()),
        ApplyOutcome::Fenced(vec![map]),
        ApplyOutcome::CsId(CsId(3)),
        ApplyOutcome::MdsId(4),
    ];
    let covered: BTreeSet<usize> = outcomes
        .iter()
        .map(|o| match o {
            // Exhaustive on purpose: a new variant is a new format.
            ApplyOutcome::Done => 0,
            ApplyOutcome::Stat(_) => 1,
            ApplyOutcome::Opened { .. } => 2,
            ApplyOutcome::Released(_) => 3,
            ApplyOutcome::Expired(_) => 4,
            ApplyOutcome::ChunkMap(_) => 5,
            ApplyOutcome::Fenced(_) => 6,
            ApplyOutcome::CsId(_) => 7,
            ApplyOutcome::MdsId(_) => 8,
        })
        .collect();
    assert_eq!(covered, (0..=8).collect(), "every outcome is tested");

    let mut sessions = Sessions::default();
    for (seq, outcome) in (1..).zip(outcomes) {
        // Stored as is, not as `OpReply::of` trims it.
        sessions.record(&tag(9, seq, 1), seq, Some(OpReply::Applied(outcome)));
    }
    let refusal = OpReply::of(&Err(Error::stale("too late")));
    sessions.record(&tag(10, 4, 2), 99, Some(refusal));

    let record = encode(&sessions).unwrap();
    // Format 10 stores format 9's sessions.
    let frozen: v9::Sessions = read_as_newest(&record, "client sessions");
    assert_eq!(
        Sessions::from(frozen),
        sessions,
        "client sessions: {TRIPWIRE}"
    );
}

/// Every [`Command`] variant at least once.
fn every_command() -> Vec<Command> {
    let ino = InodeId(3);
    let lease = LeaseId(4);
    let chunk = ChunkId(0x1f);
    let commands = vec![
        mkdir("/a/b", 1),
        Command::Open {
            perms: Perms::FILE,
            path: "/a/f".into(),
            mode: LeaseMode::Write,
            flags: OpenFlags {
                create: true,
                exclusive: true,
                truncate: true,
            },
            now_ms: 2,
            lease_duration_ms: 30_000,
        },
        Command::Unlink {
            path: "/a/f".into(),
            now_ms: 3,
        },
        Command::Rename {
            flags: RenameFlags::default(),
            from: "/a".into(),
            to: "/b".into(),
            now_ms: 4,
        },
        Command::SetAttrV3 {
            path: "/b".into(),
            update: AttrUpdateV3 {
                replicas: Some(Replicas { norm: 3, min: 2 }),
                chunk_size: None,
            },
            recursive: true,
            now_ms: 5,
        },
        Command::RenewLease { lease, now_ms: 6 },
        Command::ReleaseLease { lease, now_ms: 7 },
        Command::ExpireLeases { now_ms: 8 },
        Command::AllocateChunk {
            lease,
            index: 2,
            chunk,
            version: MapVersion(1),
            replicas: vec![CsId(1), CsId(2)],
            now_ms: 9,
        },
        Command::UpdateChunkMap {
            chunk,
            version: MapVersion(2),
            replicas: vec![CsId(2)],
        },
        Command::FenceFile { ino },
        Command::CommitSize {
            lease,
            size: 1 << 33,
            now_ms: 10,
        },
        Command::Truncate {
            lease,
            size: 5,
            now_ms: 11,
        },
        Command::AllocateCsId,
        Command::SetCsAddr {
            cs: CsId(u32::MAX),
            addr: "h:1".into(),
        },
        Command::DropCs { cs: CsId(2) },
        Command::SetParam {
            key: "io.replica_tout".into(),
            value: 2_000,
            now_ms: 12,
        },
        Command::LogEvents {
            now_ms: 13,
            events: every_event_kind()
                .into_iter()
                .map(|kind| NewEvent {
                    kind,
                    level: EventLevel::Warning,
                    message: kind.to_string(),
                })
                .collect(),
        },
        Command::ExtendChain {
            chunk,
            version: MapVersion(2),
            added: vec![CsId(3)],
        },
        Command::SetCsReleasing {
            cs: CsId(3),
            releasing: true,
            now_ms: 14,
        },
        Command::AllocateMdsId,
        Command::SetAttr {
            path: "/b".into(),
            update: AttrUpdate {
                replicas: Some(Replicas { norm: 1, min: 1 }),
                chunk_size: Some(4 << 20),
                tier: Some(3),
                failure_domain: Some(FailureDomain::Row),
            },
            recursive: false,
            now_ms: 15,
        },
        Command::SetCsPlacement {
            cs: CsId(1),
            update: CsPlacementUpdate {
                location: Some("2.3.4".into()),
                host: Some("h1".into()),
                tier: Some(2),
                capacity_bytes: Some(1 << 41),
            },
            now_ms: 16,
        },
        Command::BeginFence { ino },
        Command::FinishFence { ino },
        Command::Tagged {
            op: tag(u64::MAX, 17, 3),
            now_ms: 17,
            cmd: Box::new(Command::Tagged {
                op: tag(1, 1, 0),
                now_ms: 18,
                cmd: Box::new(open("/c", LeaseMode::Read, false, 18, 1)),
            }),
        },
        Command::RefreshLeases { now_ms: 19 },
        Command::Rename {
            flags: RenameFlags {
                no_replace: true,
                exchange: false,
            },
            from: "/x".into(),
            to: "/y".into(),
            now_ms: 20,
        },
        Command::Rename {
            flags: RenameFlags {
                no_replace: false,
                exchange: true,
            },
            from: "/x".into(),
            to: "/y".into(),
            now_ms: 21,
        },
        Command::Link {
            from: "/x".into(),
            to: "/z".into(),
            now_ms: 22,
        },
        Command::SetStat {
            path: "/x".into(),
            change: StatChange {
                mode: Some(0o1777),
                uid: Some(3),
                gid: Some(4),
                atime: Some(TimeChange::Now),
                mtime: Some(TimeChange::At(Timestamp {
                    sec: i64::MIN,
                    nsec: 1,
                })),
            },
            now_ms: 23,
        },
        Command::SetStat {
            path: "/x".into(),
            change: StatChange::default(),
            now_ms: 24,
        },
        Command::SetXattr {
            path: "/x".into(),
            name: "security.selinux".into(),
            value: None,
            how: XattrSet::Replace,
            now_ms: 25,
        },
    ];
    let mut commands = commands;
    for (i, spec) in every_node_spec().into_iter().enumerate() {
        commands.push(Command::MakeNode {
            path: format!("/n{i}"),
            node: NewNode {
                spec,
                perms: Perms {
                    mode: 0o7777,
                    uid: u32::MAX,
                    gid: 0,
                },
            },
            now_ms: 30,
        });
    }
    for (i, kind) in (0..).zip(every_lock_kind()) {
        commands.push(Command::SetLock {
            lease,
            req: lock(u64::MAX - i, kind, i, LOCK_TO_EOF - i, u32::MAX - i as u32),
            now_ms: 32,
        });
    }
    commands.push(Command::UpgradeLease { lease, now_ms: 33 });
    commands.push(Command::RecordCertificate {
        record: CertRecord {
            revoked_ms: Some(5),
            ..cert(u128::MAX, "admin", "host-a")
        },
        now_ms: 34,
    });
    commands.push(Command::RevokeCertificates {
        serials: vec![CertSerial(0), CertSerial(1 << 100)],
        now_ms: 35,
    });
    commands.push(Command::RevokeCertificates {
        serials: Vec::new(),
        now_ms: 36,
    });
    for how in [XattrSet::Any, XattrSet::Create, XattrSet::Replace] {
        commands.push(Command::SetXattr {
            path: "/x".into(),
            name: "user.k".into(),
            value: Some(vec![0, 255, 7]),
            how,
            now_ms: 31,
        });
    }
    let covered: BTreeSet<usize> = commands
        .iter()
        .map(|c| match c {
            // Exhaustive on purpose: a new variant is a new format.
            Command::Mkdir { .. } => 0,
            Command::Open { .. } => 1,
            Command::Unlink { .. } => 2,
            Command::Rename { .. } => 3,
            Command::SetAttrV3 { .. } => 4,
            Command::RenewLease { .. } => 5,
            Command::ReleaseLease { .. } => 6,
            Command::ExpireLeases { .. } => 7,
            Command::AllocateChunk { .. } => 8,
            Command::UpdateChunkMap { .. } => 9,
            Command::FenceFile { .. } => 10,
            Command::CommitSize { .. } => 11,
            Command::Truncate { .. } => 12,
            Command::AllocateCsId => 13,
            Command::SetCsAddr { .. } => 14,
            Command::DropCs { .. } => 15,
            Command::SetParam { .. } => 16,
            Command::LogEvents { .. } => 17,
            Command::ExtendChain { .. } => 18,
            Command::SetCsReleasing { .. } => 19,
            Command::AllocateMdsId => 20,
            Command::SetAttr { .. } => 21,
            Command::SetCsPlacement { .. } => 22,
            Command::BeginFence { .. } => 23,
            Command::FinishFence { .. } => 24,
            Command::Tagged { .. } => 25,
            Command::RefreshLeases { .. } => 26,
            Command::MakeNode { .. } => 27,
            Command::Link { .. } => 28,
            Command::SetStat { .. } => 29,
            Command::SetXattr { .. } => 30,
            Command::SetLock { .. } => 31,
            Command::UpgradeLease { .. } => 32,
            Command::RecordCertificate { .. } => 33,
            Command::RevokeCertificates { .. } => 34,
        })
        .collect();
    assert_eq!(covered, (0..=34).collect(), "every command is tested");
    commands
}

#[test]
fn every_command_is_read_as_format_10() {
    for cmd in every_command() {
        let what = format!("the pre-Raft log record {cmd:?}");
        let frozen: v11::Command = read_as_newest(&encode(&cmd).unwrap(), &what);
        assert_eq!(Command::from(frozen), cmd, "{what}: {TRIPWIRE}");
    }
}

#[test]
fn every_raft_log_entry_is_read_as_format_10() {
    let mut entries: Vec<Entry<MdsRaftConfig>> = vec![
        Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(1, 1, 2),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    for (index, cmd) in (3..).zip(every_command()) {
        entries.push(Entry {
            log_id: log_id(2, 3, index),
            payload: EntryPayload::Normal(RaftRequest::one(cmd)),
        });
    }
    // Several commands to an entry (the group commit), and none.
    entries.push(Entry {
        log_id: log_id(3, 1, 1000),
        payload: EntryPayload::Normal(RaftRequest {
            cmds: every_command(),
        }),
    });
    entries.push(Entry {
        log_id: log_id(3, 1, 1001),
        payload: EntryPayload::Normal(RaftRequest { cmds: Vec::new() }),
    });
    for entry in entries {
        let what = format!("the Raft log entry {entry:?}");
        let frozen: v11::LogEntry = read_as_newest(&encode(&entry).unwrap(), &what);
        assert_eq!(live::raft_entry(frozen), entry, "{what}: {TRIPWIRE}");
    }
}
