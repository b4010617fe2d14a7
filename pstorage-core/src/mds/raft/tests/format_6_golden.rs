//! The format 6 golden file, `mds/golden/mds_format6.redb`: how it was
//! written (an ignored test, run by hand) and what it must read as.

use openraft::EntryPayload;

use super::*;
use crate::mds::{CsRecord, LeaseRecord, NewEvent};
use crate::types::{
    AttrUpdate, ChunkId, CsPlacementUpdate, EventKind, EventLevel, FailureDomain, InodeId, LeaseId,
    LeaseMode, MapVersion, OpTag, OpenFlags, SessionId,
};
use crate::types::{Perms, RenameFlags};

/// The golden file in the source tree.
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/mds/golden/mds_format6.redb"
);

/// The session of most tagged commands.
const SESSION: u64 = 0x5e55;

fn tagged(session: u64, seq: u64, done_below: u64, now_ms: u64, cmd: Command) -> Command {
    Command::Tagged {
        op: OpTag {
            session: SessionId(session),
            seq,
            done_below,
        },
        now_ms,
        cmd: Box::new(cmd),
    }
}

fn create(path: &str, mode: LeaseMode, create: bool, now_ms: u64, duration: u64) -> Command {
    Command::Open {
        perms: Perms::LEGACY_FILE,
        path: path.into(),
        mode,
        flags: OpenFlags {
            create,
            ..OpenFlags::default()
        },
        now_ms,
        lease_duration_ms: duration,
    }
}

fn placement(
    location: &str,
    host: &str,
    tier: Option<u8>,
    capacity: Option<u64>,
) -> CsPlacementUpdate {
    CsPlacementUpdate {
        location: Some(location.into()),
        host: Some(host.into()),
        tier,
        capacity_bytes: capacity,
    }
}

/// What the snapshot of the golden file holds: three chunk servers with
/// placements, `/d` (replicas 2:1) and the 13-byte file `/d/f` of one
/// chunk, opened for writing by a tagged open (lease 1), a parameter, an
/// event, MDS id 2.
pub(super) fn before_the_snapshot() -> Vec<Command> {
    let mut cmds = Vec::new();
    for cs in 1..=3 {
        cmds.push(Command::AllocateCsId);
        cmds.push(Command::SetCsAddr {
            cs: CsId(cs),
            addr: format!("cs{cs}.example:7000"),
        });
    }
    cmds.extend([
        Command::SetCsPlacement {
            cs: CsId(1),
            update: placement("1.1.1", "h1", None, Some(1 << 40)),
            now_ms: 900,
        },
        Command::SetCsPlacement {
            cs: CsId(2),
            update: placement("1.1.2", "h2", None, None),
            now_ms: 901,
        },
        Command::SetCsPlacement {
            cs: CsId(3),
            update: placement("1.2.1", "h3", None, None),
            now_ms: 902,
        },
        legacy_mkdir("/d"),
        Command::SetAttr {
            path: "/d".into(),
            update: AttrUpdate {
                replicas: Some(Replicas { norm: 2, min: 1 }),
                ..AttrUpdate::default()
            },
            recursive: true,
            now_ms: 1_001,
        },
        tagged(
            SESSION,
            1,
            1,
            1_002,
            create("/d/f", LeaseMode::Write, true, 1_002, 60_000),
        ),
        Command::AllocateChunk {
            lease: LeaseId(1),
            index: 0,
            chunk: ChunkId(1),
            version: MapVersion(1),
            replicas: vec![CsId(1), CsId(2)],
            now_ms: 1_003,
        },
        Command::CommitSize {
            lease: LeaseId(1),
            size: 13,
            now_ms: 1_004,
        },
        Command::SetParam {
            key: "mds.repl.concurrency".into(),
            value: 3,
            now_ms: 1_005,
        },
        Command::LogEvents {
            now_ms: 1_006,
            events: vec![NewEvent {
                kind: EventKind::Mds,
                level: EventLevel::Info,
                message: "golden: before the snapshot".into(),
            }],
        },
        Command::AllocateMdsId,
    ]);
    cmds
}

/// The log entries after the snapshot: every command kind, and a tagged
/// command refused ([`refused_unlink`]).
pub(super) fn after_the_snapshot() -> Vec<Command> {
    let y = InodeId(6); // /e/x, renamed /e/y
    vec![
        legacy_mkdir("/e"),
        tagged(
            SESSION,
            2,
            2,
            2_001,
            Command::Mkdir {
                perms: Perms::LEGACY_DIR,
                path: "/e/sub".into(),
                parents: true,
                now_ms: 2_001,
            },
        ),
        create("/e/x", LeaseMode::Write, true, 2_002, 60_000),
        Command::AllocateChunk {
            lease: LeaseId(2),
            index: 0,
            chunk: ChunkId(2),
            version: MapVersion(1),
            replicas: vec![CsId(2), CsId(3)],
            now_ms: 2_003,
        },
        Command::CommitSize {
            lease: LeaseId(2),
            size: 5_000,
            now_ms: 2_004,
        },
        Command::UpdateChunkMap {
            chunk: ChunkId(2),
            version: MapVersion(2),
            replicas: vec![CsId(3), CsId(2)],
        },
        Command::ExtendChain {
            chunk: ChunkId(1),
            version: MapVersion(1),
            added: vec![CsId(3)],
        },
        Command::Truncate {
            lease: LeaseId(2),
            size: 100,
            now_ms: 2_005,
        },
        Command::RenewLease {
            lease: LeaseId(1),
            now_ms: 2_006,
        },
        Command::ReleaseLease {
            lease: LeaseId(2),
            now_ms: 2_007,
        },
        Command::Rename {
            flags: RenameFlags::default(),
            from: "/e/x".into(),
            to: "/e/y".into(),
            now_ms: 2_008,
        },
        Command::SetAttr {
            path: "/e".into(),
            update: AttrUpdate {
                tier: Some(1),
                failure_domain: Some(FailureDomain::Rack),
                ..AttrUpdate::default()
            },
            recursive: true,
            now_ms: 2_009,
        },
        Command::SetAttrV3 {
            path: "/e/sub".into(),
            update: crate::mds::state::AttrUpdateV3 {
                replicas: Some(Replicas { norm: 3, min: 2 }),
                chunk_size: None,
            },
            recursive: false,
            now_ms: 2_010,
        },
        Command::FenceFile { ino: y },
        Command::BeginFence { ino: y },
        Command::FinishFence { ino: y },
        create("/e/y", LeaseMode::Read, false, 2_011, 600_000),
        tagged(
            SESSION,
            3,
            2,
            2_012,
            create("/e/tmp", LeaseMode::Write, true, 2_012, 10),
        ),
        Command::ReleaseLease {
            lease: LeaseId(4),
            now_ms: 2_013,
        },
        tagged(
            SESSION,
            4,
            2,
            2_014,
            Command::Unlink {
                path: "/e/tmp".into(),
                now_ms: 2_014,
            },
        ),
        refused_unlink(),
        // Lease 5 expires: /e/z waits for a fence.
        create("/e/z", LeaseMode::Write, true, 2_016, 10),
        Command::ExpireLeases { now_ms: 3_000 },
        tagged(
            SESSION,
            5,
            3,
            3_001,
            Command::Rename {
                flags: RenameFlags::default(),
                from: "/e/sub".into(),
                to: "/e/sub2".into(),
                now_ms: 3_001,
            },
        ),
        Command::AllocateCsId,
        Command::SetCsAddr {
            cs: CsId(4),
            addr: "cs4.example:7000".into(),
        },
        Command::DropCs { cs: CsId(4) },
        Command::SetCsReleasing {
            cs: CsId(3),
            releasing: true,
            now_ms: 3_002,
        },
        Command::SetCsPlacement {
            cs: CsId(2),
            update: CsPlacementUpdate {
                tier: Some(1),
                capacity_bytes: Some(2 << 40),
                ..CsPlacementUpdate::default()
            },
            now_ms: 3_003,
        },
        Command::SetParam {
            key: "io.replica_tout".into(),
            value: 2_000,
            now_ms: 3_004,
        },
        Command::LogEvents {
            now_ms: 3_005,
            events: vec![
                NewEvent {
                    kind: EventKind::CsState,
                    level: EventLevel::Warning,
                    message: "golden: after the snapshot".into(),
                },
                NewEvent {
                    kind: EventKind::Replication,
                    level: EventLevel::Error,
                    message: "golden: last".into(),
                },
            ],
        },
        Command::AllocateMdsId,
    ]
}

/// The tagged command of the golden file's log that was refused (its
/// session remembers the refusal).
pub(super) fn refused_unlink() -> Command {
    tagged(
        0xbad,
        1,
        1,
        2_015,
        Command::Unlink {
            path: "/nope".into(),
            now_ms: 2_015,
        },
    )
}

/// Writes the golden file with a single MDS through Raft: the commands of
/// [`before_the_snapshot`], a snapshot (the log purged), then those of
/// [`after_the_snapshot`] and a membership change (learner 2). Run by
/// hand, only by a build that writes format 6:
/// `cargo test -p pstorage-core --lib write_the_format_6_golden_database -- --ignored`.
#[tokio::test]
#[ignore = "writes src/mds/golden/mds_format6.redb; run by hand"]
async fn write_the_format_6_golden_database() {
    assert_eq!(STORE_FORMAT_VERSION, 6, "only a format 6 build writes it");
    write_golden_database(GOLDEN, after_the_snapshot()).await;
}

/// Writes `golden` as the golden files are written: [`before_the_snapshot`],
/// a snapshot, then `after` and a membership change (learner 2).
pub(super) async fn write_golden_database(golden: &str, after: Vec<Command>) {
    write_golden_database_with(golden, after, Vec::new()).await;
}

/// [`write_golden_database`], then `batch` as one log entry (store format 8
/// on; each of its commands applies or is refused on its own).
pub(super) async fn write_golden_database_with(
    golden: &str,
    after: Vec<Command>,
    batch: Vec<Command>,
) {
    write_golden_database_from(golden, before_the_snapshot(), after, batch).await;
}

/// [`write_golden_database_with`], with `before` (which must keep the ids
/// [`before_the_snapshot`] allocates) in the snapshot.
pub(super) async fn write_golden_database_from(
    golden: &str,
    before: Vec<Command>,
    after: Vec<Command>,
    batch: Vec<Command>,
) {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let n1 = bootstrap(&net, dir.path(), DEFAULT_SNAPSHOT_EVERY).await;
    for cmd in before {
        write(&n1, cmd.clone())
            .await
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    }
    compact_log_now(&n1.raft, TIMEOUT).await.unwrap();
    for cmd in after {
        let refused = cmd == refused_unlink();
        match write(&n1, cmd.clone()).await {
            Ok(_) if !refused => {}
            Err(e) if refused && e.kind() == ErrorKind::NotFound => {}
            other => panic!("{cmd:?}: {other:?}"),
        }
    }
    if !batch.is_empty() {
        n1.raft
            .client_write(RaftRequest { cmds: batch })
            .await
            .unwrap();
    }
    n1.raft
        .add_learner(MdsId(2), node_info(MdsId(2)), false)
        .await
        .unwrap();
    let path = stop(&net, n1).await;
    drop(reopen(&path).await);
    std::fs::copy(&path, golden).unwrap();
}

/// The log entries after the snapshot of a golden file (`initial` is the
/// snapshot's state, at `snapshot_index`), and the commands among them.
pub(super) async fn log_after_the_snapshot(
    storage: RaftStorage,
    initial: MdsState,
    snapshot_index: u64,
) -> (Vec<openraft::Entry<MdsRaftConfig>>, Vec<Command>) {
    let (mut log, _sm) = storage.into_parts(TestHost::new(initial));
    let entries = openraft::RaftLogReader::try_get_log_entries(&mut log, snapshot_index + 1..)
        .await
        .unwrap();
    let commands = entries
        .iter()
        .flat_map(|e| match &e.payload {
            EntryPayload::Normal(request) => request.cmds.clone(),
            _ => Vec::new(),
        })
        .collect();
    (entries, commands)
}

/// The golden file of format 6, written by
/// [`write_the_format_6_golden_database`]: its snapshot and the log
/// entries after it (every command kind, a refused tagged command, a
/// membership change) read as they were written.
#[tokio::test]
async fn a_format_6_golden_database_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    std::fs::write(&path, include_bytes!("../../golden/mds_format6.redb")).unwrap();

    // The snapshot.
    let storage = RaftStorage::open(&path).unwrap();
    let snapshot_index = storage.snapshot_log_id().unwrap().index;
    let initial = storage.initial_state().unwrap();
    initial.check_invariants().unwrap();
    let f = initial.lookup("/d/f").unwrap();
    assert_eq!(initial.stat_of(f).unwrap().size, 13);
    assert_eq!(initial.stat_of(f).unwrap().attrs.chunk_size, 1 << 20);
    assert!(initial.lookup("/e").is_err());
    assert_eq!(initial.servers().count(), 3);
    assert_eq!(initial.leases().count(), 1);
    assert_eq!(initial.param_overrides().len(), 1);
    assert_eq!(initial.sessions().len(), 1);
    assert_eq!(initial.next_mds_id(), 3);

    // The log after it: a membership change, every command kind.
    let (entries, commands) = log_after_the_snapshot(storage, initial, snapshot_index).await;
    assert_eq!(commands, after_the_snapshot());
    let membership = entries
        .iter()
        .find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        membership.get_joint_config(),
        &vec![BTreeSet::from([MdsId(1)])]
    );
    let nodes: Vec<(&MdsId, &MdsNode)> = membership.nodes().collect();
    assert_eq!(
        nodes,
        [
            (&MdsId(1), &node_info(MdsId(1))),
            (&MdsId(2), &node_info(MdsId(2)))
        ]
    );

    // The committed state, checked piece by piece.
    let (index, state) = RaftStorage::committed_state(&path).unwrap();
    assert_eq!(index, entries.last().unwrap().log_id.index);
    state.check_invariants().unwrap();

    let stat = |p: &str| state.stat_of(state.lookup(p).unwrap()).unwrap();
    assert_eq!(state.lookup("/d/f").unwrap(), f);
    assert_eq!(stat("/d/f").size, 13);
    assert_eq!(stat("/d/f").attrs.replicas, Replicas { norm: 2, min: 1 });
    let maps = state.file_chunk_maps(f);
    assert_eq!(maps.len(), 1);
    assert_eq!(
        (maps[0].chunk, maps[0].version),
        (ChunkId(1), MapVersion(1))
    );
    let chain: Vec<CsId> = maps[0].replicas.iter().map(|r| r.cs).collect();
    assert_eq!(chain, [CsId(1), CsId(2), CsId(3)]);
    assert_eq!(maps[0].replicas[0].addr, "cs1.example:7000");

    let y = state.lookup("/e/y").unwrap();
    let y_stat = stat("/e/y");
    assert_eq!(y_stat.size, 100);
    assert_eq!(
        (y_stat.attrs.tier, y_stat.attrs.failure_domain),
        (1, FailureDomain::Rack)
    );
    let maps = state.file_chunk_maps(y);
    assert_eq!(maps.len(), 1);
    // Version 2 from the update, 3 and 4 from the two fences.
    assert_eq!(
        (maps[0].chunk, maps[0].version),
        (ChunkId(2), MapVersion(4))
    );
    let chain: Vec<CsId> = maps[0].replicas.iter().map(|r| r.cs).collect();
    assert_eq!(chain, [CsId(3), CsId(2)]);
    assert!(!state.inode(y).unwrap().fence_pending);
    assert!(
        state
            .inode(state.lookup("/e/z").unwrap())
            .unwrap()
            .fence_pending
    );
    for gone in ["/e/x", "/e/tmp", "/e/sub"] {
        assert!(state.lookup(gone).is_err(), "{gone}");
    }
    assert_eq!(stat("/e/sub2").attrs.replicas, Replicas { norm: 3, min: 2 });
    assert_eq!(stat("/e/sub2").attrs.failure_domain, FailureDomain::Rack);

    let leases: Vec<&LeaseRecord> = state.leases().collect();
    assert_eq!(
        leases,
        [
            &LeaseRecord {
                id: LeaseId(1),
                ino: f,
                mode: LeaseMode::Write,
                duration_ms: 60_000,
                expires_ms: 62_006,
            },
            &LeaseRecord {
                id: LeaseId(3),
                ino: y,
                mode: LeaseMode::Read,
                duration_ms: 600_000,
                expires_ms: 602_011,
            },
        ]
    );

    assert_eq!(
        state.param_overrides(),
        &BTreeMap::from([
            ("io.replica_tout".to_string(), 2_000),
            ("mds.repl.concurrency".to_string(), 3),
        ])
    );
    let events: Vec<(EventKind, EventLevel, &str)> = state
        .events_after(0)
        .map(|e| (e.kind, e.level, e.message.as_str()))
        .collect();
    for event in [
        (
            EventKind::Mds,
            EventLevel::Info,
            "golden: before the snapshot",
        ),
        (
            EventKind::CsState,
            EventLevel::Warning,
            "golden: after the snapshot",
        ),
        (EventKind::Replication, EventLevel::Error, "golden: last"),
    ] {
        assert!(events.contains(&event), "{event:?} in {events:?}");
    }

    let servers: Vec<&CsRecord> = state.servers().collect();
    assert_eq!(servers.len(), 4);
    let cs1 = state.cs(CsId(1)).unwrap();
    assert_eq!(
        (
            cs1.location.as_str(),
            cs1.host.as_str(),
            cs1.tier,
            cs1.capacity_bytes
        ),
        ("1.1.1", "h1", 0, 1 << 40)
    );
    let cs2 = state.cs(CsId(2)).unwrap();
    assert_eq!((cs2.tier, cs2.capacity_bytes), (1, 2 << 40));
    assert!(state.cs(CsId(3)).unwrap().releasing);
    assert!(state.cs(CsId(4)).unwrap().dropped);
    assert_eq!(state.next_chunk_id(), ChunkId(3));
    assert_eq!(state.next_mds_id(), 4);

    // The sessions remember their answers: a repeated attempt replays them.
    assert_eq!(state.sessions().len(), 2);
    let mut state = state;
    let refused = state.apply(refused_unlink()).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::NotFound);
    let renamed = tagged(
        SESSION,
        5,
        3,
        9_999,
        Command::Rename {
            flags: RenameFlags::default(),
            from: "/e/sub".into(),
            to: "/e/sub2".into(),
            now_ms: 9_999,
        },
    );
    assert_eq!(
        state.apply(renamed).unwrap(),
        ApplyOutcome::Released(Vec::new())
    );
    assert!(state.lookup("/e/sub").is_err());
}
