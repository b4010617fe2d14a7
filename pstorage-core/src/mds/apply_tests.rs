//! `MdsState::apply` fed random command sequences: it never panics (a
//! panic there would stop every Raft member on the same log entry, and
//! again at every replay), a refused command changes nothing (a tagged one
//! only records its refusal), and the state's invariants hold after every
//! command. The commands come from small pools of paths, ids, versions and
//! times, so that most of them meet objects that exist, and many are
//! nonsense for the state they meet: unknown or expired leases, chunks at
//! older versions, renames into their own subtree, nested tags.

use proptest::prelude::*;

use super::chunk_index::ChunkIndex;
use super::state::{AttrUpdateV3, Command, MdsState, NewEvent};
use crate::types::*;
use crate::ErrorKind;

const PATHS: &[&str] = &["/", "/a", "/b", "/c", "/a/b", "/a/c", "/b/a", "/a/b/c"];
const BAD_PATHS: &[&str] = &["a", "", "/a/", "//a", "/a/../b", "/.", "/a/b/c/d/e"];

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(PATHS),
        1 => prop::sample::select(BAD_PATHS),
    ]
    .prop_map(str::to_string)
}

/// Mostly within a lease's 30 s of each other, sometimes far apart (in
/// either direction: a new leader's clock), rarely the end of time.
fn now() -> impl Strategy<Value = u64> {
    prop_oneof![20 => 0..5_000u64, 4 => 0..120_000u64, 1 => Just(u64::MAX)]
}

/// Ids (leases, inodes, chunks) and versions: mostly ones that exist.
fn small() -> impl Strategy<Value = u64> {
    prop_oneof![12 => 0..8u64, 1 => Just(u64::MAX)]
}

/// Leases: mostly the two the test opens first and the next few.
fn lease() -> impl Strategy<Value = LeaseId> {
    prop_oneof![6 => 1..3u64, 3 => 3..6u64, 1 => small()].prop_map(LeaseId)
}

/// Chunk ids: mostly ones the test allocates (they must be new, from 1).
fn chunk() -> impl Strategy<Value = ChunkId> {
    prop_oneof![6 => 1..10u64, 1 => small()].prop_map(ChunkId)
}

fn version() -> impl Strategy<Value = MapVersion> {
    prop_oneof![6 => 1..5u64, 1 => small()].prop_map(MapVersion)
}

/// Mostly distinct servers that may exist (ids are handed out from 1).
fn cs_list() -> impl Strategy<Value = Vec<CsId>> {
    prop_oneof![
        6 => prop::sample::subsequence(vec![1u32, 2, 3, 4].into_iter().map(CsId).collect::<Vec<_>>(), 2..4).prop_shuffle(),
        2 => prop::sample::subsequence(vec![1u32, 2, 3, 4, 5, 6].into_iter().map(CsId).collect::<Vec<_>>(), 0..6).prop_shuffle(),
        1 => prop::collection::vec((0..6u32).prop_map(CsId), 0..5),
    ]
}

fn replicas() -> impl Strategy<Value = Replicas> {
    (0..6u8, 0..6u8).prop_map(|(norm, min)| Replicas { norm, min })
}

fn chunk_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(DEFAULT_CHUNK_SIZE),
        Just(MIN_CHUNK_SIZE),
        Just(0),
        Just(BLOCK_SIZE + 1),
        Just(u64::MAX)
    ]
}

fn attr_update() -> impl Strategy<Value = AttrUpdate> {
    (
        prop::option::of(replicas()),
        prop::option::of(chunk_size()),
        prop::option::of(0..8u8),
        prop::option::of(prop::sample::select(
            &[
                FailureDomain::Disk,
                FailureDomain::Host,
                FailureDomain::Rack,
                FailureDomain::Row,
                FailureDomain::Room,
            ][..],
        )),
    )
        .prop_map(|(replicas, chunk_size, tier, failure_domain)| AttrUpdate {
            replicas,
            chunk_size,
            tier,
            failure_domain,
        })
}

fn placement_update() -> impl Strategy<Value = CsPlacementUpdate> {
    (
        prop::option::of(prop::sample::select(&["0.0.1", "1.2.3", "bad", ""][..])),
        prop::option::of(prop::sample::select(&["h1", "h2", "", "a b"][..])),
        prop::option::of(0..8u8),
        prop::option::of(prop_oneof![Just(0u64), Just(1 << 30), Just(u64::MAX)]),
    )
        .prop_map(|(location, host, tier, capacity_bytes)| CsPlacementUpdate {
            location: location.map(str::to_string),
            host: host.map(str::to_string),
            tier,
            capacity_bytes,
        })
}

fn mode() -> impl Strategy<Value = LeaseMode> {
    prop_oneof![1 => Just(LeaseMode::Read), 3 => Just(LeaseMode::Write)]
}

fn flags() -> impl Strategy<Value = OpenFlags> {
    (
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(create, exclusive, truncate)| OpenFlags {
            create,
            exclusive,
            truncate,
        })
}

/// Permissions: mostly valid, with set-group-id directories, sometimes
/// with kind bits (refused).
fn perms() -> impl Strategy<Value = Perms> {
    (
        prop_oneof![6 => Just(0o755u32), 2 => Just(0o2775), 1 => Just(0o7777), 1 => Just(0o100644)],
        0..3u32,
        0..3u32,
    )
        .prop_map(|(mode, uid, gid)| Perms { mode, uid, gid })
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    prop_oneof![
        2 => Just(NodeSpec::File),
        3 => prop::sample::select(&["/a", "x", "", "../../b"][..])
            .prop_map(|t| NodeSpec::Symlink { target: t.to_string() }),
        1 => Just(NodeSpec::Fifo),
        1 => Just(NodeSpec::Socket),
        1 => small().prop_map(|rdev| NodeSpec::CharDevice { rdev }),
        1 => small().prop_map(|rdev| NodeSpec::BlockDevice { rdev }),
    ]
}

fn time_change() -> impl Strategy<Value = TimeChange> {
    prop_oneof![
        1 => Just(TimeChange::Now),
        2 => (prop_oneof![Just(0i64), Just(-1), Just(i64::MAX), 0..2_000_000_000i64], prop_oneof![Just(0u32), Just(999_999_999), Just(1_000_000_000)])
            .prop_map(|(sec, nsec)| TimeChange::At(Timestamp { sec, nsec })),
    ]
}

fn stat_change() -> impl Strategy<Value = StatChange> {
    (
        prop::option::of(prop_oneof![Just(0o4755u32), Just(0o644), Just(0o170000)]),
        prop::option::of(0..3u32),
        prop::option::of(0..3u32),
        prop::option::of(time_change()),
        prop::option::of(time_change()),
    )
        .prop_map(|(mode, uid, gid, atime, mtime)| StatChange {
            mode,
            uid,
            gid,
            atime,
            mtime,
        })
}

fn rename_flags() -> impl Strategy<Value = RenameFlags> {
    prop_oneof![
        4 => Just(RenameFlags::default()),
        1 => Just(RenameFlags { no_replace: true, exchange: false }),
        2 => Just(RenameFlags { no_replace: false, exchange: true }),
        1 => Just(RenameFlags { no_replace: true, exchange: true }),
    ]
}

fn xattr_set() -> impl Strategy<Value = Command> {
    (
        path(),
        prop::sample::select(&["user.a", "user.b", "trusted.c", "system.x", ""][..]),
        prop::option::of(prop_oneof![
            4 => Just(b"v".to_vec()),
            1 => Just(vec![7u8; MAX_XATTR_VALUE]),
            1 => Just(vec![7u8; MAX_XATTR_VALUE + 1]),
        ]),
        prop::sample::select(&[XattrSet::Any, XattrSet::Create, XattrSet::Replace][..]),
        now(),
    )
        .prop_map(|(path, name, value, how, now_ms)| Command::SetXattr {
            path,
            name: name.to_string(),
            value,
            how,
            now_ms,
        })
}

fn lock_request() -> impl Strategy<Value = LockRequest> {
    (
        0..3u64,
        prop::option::of(prop_oneof![
            Just(LockKind::Shared),
            Just(LockKind::Exclusive)
        ]),
        prop_oneof![Just(0u64), 0..64u64, Just(LOCK_TO_EOF)],
        prop_oneof![Just(LOCK_TO_EOF), 0..64u64, Just(u64::MAX)],
    )
        .prop_map(|(owner, kind, start, end)| LockRequest {
            owner: LockOwner(owner),
            kind,
            start,
            end,
            pid: 1,
        })
}

/// The commands a client's request becomes, which a tag may wrap.
fn namespace_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => (path(), prop::bool::weighted(0.7), perms(), now()).prop_map(|(path, parents, perms, now_ms)| Command::Mkdir {
            path,
            parents,
            perms,
            now_ms
        }),
        5 => (path(), mode(), flags(), perms(), now(), prop_oneof![1 => Just(0u64), 6 => Just(30_000u64)]).prop_map(
            |(path, mode, flags, perms, now_ms, lease_duration_ms)| Command::Open {
                path,
                mode,
                flags,
                perms,
                now_ms,
                lease_duration_ms,
            }
        ),
        1 => (path(), now()).prop_map(|(path, now_ms)| Command::Unlink { path, now_ms }),
        2 => (path(), path(), rename_flags(), now()).prop_map(|(from, to, flags, now_ms)| Command::Rename { from, to, flags, now_ms }),
        2 => (path(), node_spec(), perms(), now()).prop_map(|(path, spec, perms, now_ms)| Command::MakeNode {
            path,
            node: NewNode { spec, perms },
            now_ms,
        }),
        2 => (path(), path(), now()).prop_map(|(from, to, now_ms)| Command::Link { from, to, now_ms }),
        1 => (path(), stat_change(), now()).prop_map(|(path, change, now_ms)| Command::SetStat { path, change, now_ms }),
        1 => xattr_set(),
        1 => (path(), attr_update(), any::<bool>(), now()).prop_map(
            |(path, update, recursive, now_ms)| Command::SetAttr {
                path,
                update,
                recursive,
                now_ms,
            }
        ),
    ]
}

fn leaf_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        12 => namespace_command(),
        1 => (path(), prop::option::of(replicas()), prop::option::of(chunk_size()), any::<bool>(), now())
            .prop_map(|(path, replicas, chunk_size, recursive, now_ms)| Command::SetAttrV3 {
                path,
                update: AttrUpdateV3 { replicas, chunk_size },
                recursive,
                now_ms,
            }),
        2 => (lease(), now()).prop_map(|(lease, now_ms)| Command::RenewLease { lease, now_ms }),
        2 => (lease(), lock_request(), now()).prop_map(|(lease, req, now_ms)| Command::SetLock { lease, req, now_ms }),
        1 => (lease(), now()).prop_map(|(lease, now_ms)| Command::UpgradeLease { lease, now_ms }),
        1 => (small(), now()).prop_map(|(lease, now_ms)| Command::ReleaseLease { lease: LeaseId(lease), now_ms }),
        1 => now().prop_map(|now_ms| Command::ExpireLeases { now_ms }),
        8 => (lease(), 0..4u64, chunk(), version(), cs_list(), now()).prop_map(
            |(lease, index, chunk, version, replicas, now_ms)| Command::AllocateChunk {
                lease,
                index,
                chunk,
                version,
                replicas,
                now_ms,
            }
        ),
        3 => (chunk(), version(), cs_list()).prop_map(|(chunk, version, replicas)| {
            Command::UpdateChunkMap {
                chunk,
                version,
                replicas,
            }
        }),
        1 => small().prop_map(|ino| Command::FenceFile { ino: InodeId(ino) }),
        1 => small().prop_map(|ino| Command::BeginFence { ino: InodeId(ino) }),
        1 => small().prop_map(|ino| Command::FinishFence { ino: InodeId(ino) }),
        3 => (lease(), prop_oneof![12 => 0..(1u64 << 30), 1 => Just(u64::MAX)], now())
            .prop_map(|(lease, size, now_ms)| Command::CommitSize { lease, size, now_ms }),
        2 => (lease(), prop_oneof![12 => 0..(1u64 << 30), 1 => Just(u64::MAX)], now())
            .prop_map(|(lease, size, now_ms)| Command::Truncate { lease, size, now_ms }),
        2 => Just(Command::AllocateCsId),
        1 => (0..6u32, prop::sample::select(&["127.0.0.1:1", "", "x"][..]))
            .prop_map(|(cs, addr)| Command::SetCsAddr { cs: CsId(cs), addr: addr.to_string() }),
        1 => (0..6u32).prop_map(|cs| Command::DropCs { cs: CsId(cs) }),
        1 => (
            prop::sample::select(&["mds.repl.concurrency", "io.replica_tout", "no-such-key", ""][..]),
            prop_oneof![12 => 0..100_000u64, 1 => Just(u64::MAX)],
            now()
        )
            .prop_map(|(key, value, now_ms)| Command::SetParam {
                key: key.to_string(),
                value,
                now_ms,
            }),
        1 => now().prop_map(|now_ms| Command::LogEvents {
            now_ms,
            events: vec![NewEvent {
                kind: EventKind::Config,
                level: EventLevel::Info,
                message: "e".to_string(),
            }],
        }),
        3 => (chunk(), version(), cs_list()).prop_map(|(chunk, version, added)| Command::ExtendChain {
            chunk,
            version,
            added,
        }),
        1 => (0..6u32, any::<bool>(), now()).prop_map(|(cs, releasing, now_ms)| {
            Command::SetCsReleasing {
                cs: CsId(cs),
                releasing,
                now_ms,
            }
        }),
        1 => Just(Command::AllocateMdsId),
        1 => (0..4u128, prop::sample::select(&["h1", "", "mds 1"][..]), now(), now())
            .prop_map(|(serial, name, not_after_ms, now_ms)| Command::RecordCertificate {
                record: CertRecord {
                    serial: CertSerial(serial),
                    role: "client".to_string(),
                    name: name.to_string(),
                    issued_ms: now_ms,
                    not_after_ms,
                    revoked_ms: None,
                },
                now_ms,
            }),
        1 => (prop::collection::vec((0..6u128).prop_map(CertSerial), 0..3), now())
            .prop_map(|(serials, now_ms)| Command::RevokeCertificates { serials, now_ms }),
        1 => (0..6u32, placement_update(), now())
            .prop_map(|(cs, update, now_ms)| Command::SetCsPlacement { cs: CsId(cs), update, now_ms }),
    ]
}

fn tagged(inner: impl Strategy<Value = Command>) -> impl Strategy<Value = Command> {
    (0..3u64, 0..6u64, 0..6u64, now(), inner).prop_map(|(session, seq, done_below, now_ms, cmd)| {
        Command::Tagged {
            op: OpTag {
                session: SessionId(session),
                seq,
                done_below,
            },
            now_ms,
            cmd: Box::new(cmd),
        }
    })
}

/// Mostly plain commands; some tagged as a client tags them, with tags
/// repeated and out of order, and a few that no client sends (a tag in a
/// tag, a tag on a command that is not a namespace mutation).
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        12 => leaf_command(),
        3 => tagged(namespace_command()),
        1 => tagged(leaf_command()),
        1 => tagged(tagged(namespace_command())),
    ]
}

/// Servers 1-4 (registered), a directory and two files open for writing
/// (`/a/c` with lease 1, `/c` with lease 2), so that chunk commands meet
/// something from the start.
fn seeded() -> MdsState {
    let mut state = MdsState::new(FileAttrs::default()).unwrap();
    for cs in 1..=4 {
        state.apply(Command::AllocateCsId).unwrap();
        state
            .apply(Command::SetCsAddr {
                cs: CsId(cs),
                addr: format!("127.0.0.1:{cs}"),
            })
            .unwrap();
    }
    state
        .apply(Command::Mkdir {
            perms: Perms::DIR,
            path: "/a".into(),
            parents: false,
            now_ms: 0,
        })
        .unwrap();
    for path in ["/a/c", "/c"] {
        state
            .apply(Command::Open {
                perms: Perms::FILE,
                path: path.into(),
                mode: LeaseMode::Write,
                flags: OpenFlags {
                    create: true,
                    ..OpenFlags::default()
                },
                now_ms: 0,
                lease_duration_ms: 30_000,
            })
            .unwrap();
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn apply_never_panics_and_a_refused_command_changes_nothing(
        cmds in prop::collection::vec(command(), 1..80),
    ) {
        let mut state = seeded();
        // Built, the chunk index is checked with the other invariants (it
        // must stay what a fresh count gives after every command).
        let _ = state.index();
        for (i, cmd) in cmds.into_iter().enumerate() {
            let before = state.clone();
            let tagged = matches!(cmd, Command::Tagged { .. });
            let valid = state.validate(&cmd);
            let result = state.apply(cmd.clone());
            // A tagged command that prepares may still be refused (its
            // refusal is remembered); one that does not prepare is not.
            if !tagged || valid.is_err() {
                prop_assert_eq!(
                    valid.is_ok(),
                    result.is_ok(),
                    "command {}: validate and apply disagree on {:?}: {:?}", i, &cmd, &result
                );
            }
            if result.is_err() && (!tagged || valid.is_err()) {
                prop_assert!(state == before, "command {}: refused {:?} changed the state", i, cmd);
            }
            if let Err(e) = state.check_invariants() {
                return Err(TestCaseError::fail(format!(
                    "command {i}: {cmd:?} ({result:?}) broke an invariant: {e}"
                )));
            }
        }
        // A state decoded from its bytes builds the same index.
        let decoded: MdsState = postcard::from_bytes(&postcard::to_allocvec(&state).unwrap()).unwrap();
        prop_assert_eq!(decoded.index(), state.index());
    }
}

/// A hand-made sequence through every change the index follows: a chunk
/// allocated (its file gets a class), its chain extended past the norm
/// (long), cut below it (short), the norm raised by `set-attr` (the class
/// moves), a truncate (the file loses its class) and an unlink.
#[test]
fn the_chunk_index_follows_chains_norms_and_files() {
    let mut state = seeded();
    assert_eq!(state.index().classes().count(), 0);
    assert!(state.index().servers().next().is_none());
    let size = FileAttrs::default().chunk_size;
    let norm = FileAttrs::default().replicas.norm;
    assert_eq!(norm, 3, "the defaults this test is written for");
    let chunk = state.next_chunk_id();
    // Lease 1 is /a/c's; the chain: servers 2 and 3, one short of 3.
    state.apply(allocate(chunk, MapVersion(1))).unwrap();
    let servers = |s: &MdsState| {
        s.index()
            .servers()
            .map(|(cs, h)| (cs, h.chunks.len(), h.bytes))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        servers(&state),
        vec![(CsId(2), 1, size), (CsId(3), 1, size)]
    );
    assert_eq!(
        state.index().classes().collect::<Vec<_>>(),
        vec![(0, FailureDomain::default(), 3)]
    );
    assert!(state.index().short().contains(&chunk));
    state
        .apply(Command::ExtendChain {
            chunk,
            version: MapVersion(1),
            added: vec![CsId(1), CsId(4)],
        })
        .unwrap();
    assert!(state.index().long().contains(&chunk) && state.index().short().is_empty());
    assert_eq!(servers(&state).len(), 4);
    state
        .apply(Command::UpdateChunkMap {
            chunk,
            version: MapVersion(2),
            replicas: vec![CsId(4)],
        })
        .unwrap();
    assert_eq!(servers(&state), vec![(CsId(4), 1, size)]);
    assert!(state.index().short().contains(&chunk) && state.index().long().is_empty());
    state
        .apply(Command::SetAttr {
            path: "/a/c".into(),
            update: AttrUpdate {
                replicas: Some(Replicas { norm: 1, min: 1 }),
                ..AttrUpdate::default()
            },
            recursive: false,
            now_ms: 1,
        })
        .unwrap();
    assert!(state.index().short().is_empty() && state.index().long().is_empty());
    assert_eq!(
        state.index().classes().collect::<Vec<_>>(),
        vec![(0, FailureDomain::default(), 1)]
    );
    state.check_invariants().unwrap();
    state
        .apply(Command::Truncate {
            lease: LeaseId(1),
            size: 0,
            now_ms: 2,
        })
        .unwrap();
    assert_eq!(state.index().classes().count(), 0);
    assert!(state.index().servers().next().is_none());
    state
        .apply(allocate(state.next_chunk_id(), MapVersion(1)))
        .unwrap();
    assert_eq!(servers(&state).len(), 2);
    state
        .apply(Command::ReleaseLease {
            lease: LeaseId(1),
            now_ms: 3,
        })
        .unwrap();
    state
        .apply(Command::Unlink {
            path: "/a/c".into(),
            now_ms: 3,
        })
        .unwrap();
    assert_eq!(state.index(), &ChunkIndex::default());
    state.check_invariants().unwrap();
}

fn allocate(chunk: ChunkId, version: MapVersion) -> Command {
    Command::AllocateChunk {
        lease: LeaseId(1),
        index: 0,
        chunk,
        version,
        replicas: vec![CsId(2), CsId(3)],
        now_ms: 0,
    }
}

/// Found by the property test: the last chunk id overflowed the next one
/// (a panic in debug builds; in release, ids from 0 handed out again).
#[test]
fn the_last_chunk_id_is_refused() {
    let mut state = seeded();
    let before = state.clone();
    let e = state
        .apply(allocate(ChunkId::MAX, MapVersion(1)))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    assert!(state == before);
    state
        .apply(allocate(ChunkId(u64::MAX - 1), MapVersion(1)))
        .unwrap();
    state.check_invariants().unwrap();
}

/// Found by the property test: fencing a chunk at the last version
/// overflowed it.
#[test]
fn a_chunk_at_the_last_version_is_not_fenced() {
    let mut state = seeded();
    state.apply(allocate(ChunkId(5), MapVersion::MAX)).unwrap();
    let ino = state.lookup("/a/c").unwrap();
    let before = state.clone();
    for cmd in [Command::BeginFence { ino }, Command::FenceFile { ino }] {
        let e = state.apply(cmd).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
        assert!(state == before);
    }
}

/// A command whose checked facts no longer hold when it executes (a bug
/// between `prepare` and `execute`) is refused as `Internal`, the same on
/// every member, instead of panicking every member of the group on that
/// log entry, and again at each replay.
#[test]
fn a_fact_broken_between_prepare_and_execute_is_an_internal_error_not_a_panic() {
    use super::state::Prepared;
    let mut state = seeded();
    let before = state.clone();
    for prepared in [
        Prepared::Fence(InodeId(999), true),
        Prepared::FinishFence(InodeId(999)),
        Prepared::MkdirExisting(InodeId(999)),
    ] {
        let err = state.execute(prepared).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
        assert!(err.message().contains("metadata bug"), "{err}");
    }
    assert_eq!(state, before, "nothing changed");
}
