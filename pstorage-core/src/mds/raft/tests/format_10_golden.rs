//! The format 10 golden file, `mds/golden/mds_format10.redb`: format 9's
//! log (`format_9_golden`, its batch as single entries) written by a
//! format 10 build, with byte-range locks: the snapshot holds two locks of
//! lease 1 (a shared and an exclusive range of two owners), and the log
//! then makes a file, locks it through two read leases (shared ranges
//! overlapping, an exclusive one, one split by an unlock), upgrades a third
//! read lease in place and locks its file exclusively, and ends with a
//! batch of lock commands and upgrades, two of them refused.

use super::format_6_golden::{
    before_the_snapshot, log_after_the_snapshot, write_golden_database_from,
};
use super::format_9_golden::{after_the_snapshot_9, the_batch as the_batch_9};
use super::*;
use crate::mds::locks::FileLock;
use crate::types::{
    InodeId, LeaseId, LeaseMode, LockKind, LockOwner, LockRequest, NewNode, NodeSpec, OpenFlags,
    LOCK_TO_EOF,
};

/// The golden file in the source tree.
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/mds/golden/mds_format10.redb"
);

/// The write lease of `/d/f` (format 6's snapshot).
const F: LeaseId = LeaseId(1);
/// The two read leases of `/locks/f`.
const A: LeaseId = LeaseId(6);
const B: LeaseId = LeaseId(7);
/// The read lease of `/locks/g`, upgraded.
const G: LeaseId = LeaseId(8);

fn set_lock(
    lease: LeaseId,
    owner: u64,
    kind: Option<LockKind>,
    range: (u64, u64),
    now_ms: u64,
) -> Command {
    Command::SetLock {
        lease,
        req: LockRequest {
            owner: LockOwner(owner),
            kind,
            start: range.0,
            end: range.1,
            pid: 100 + owner as u32,
        },
        now_ms,
    }
}

fn read_open(path: &str, now_ms: u64) -> Command {
    Command::Open {
        path: path.into(),
        mode: LeaseMode::Read,
        flags: OpenFlags::default(),
        perms: Perms::FILE,
        now_ms,
        lease_duration_ms: 600_000,
    }
}

fn file(path: &str, now_ms: u64) -> Command {
    Command::MakeNode {
        path: path.into(),
        node: NewNode {
            spec: NodeSpec::File,
            perms: Perms::FILE,
        },
        now_ms,
    }
}

const SH: Option<LockKind> = Some(LockKind::Shared);
const EX: Option<LockKind> = Some(LockKind::Exclusive);

/// Format 6's snapshot, with two locks of lease 1 (the write lease of
/// `/d/f`): owner 1 shares bytes 0..=99, owner 2 holds the rest.
pub(super) fn before_the_snapshot_10() -> Vec<Command> {
    let mut cmds = before_the_snapshot();
    cmds.extend([
        set_lock(F, 1, SH, (0, 99), 1_007),
        set_lock(F, 2, EX, (100, LOCK_TO_EOF), 1_008),
    ]);
    cmds
}

/// Format 9's log, then the locks.
pub(super) fn after_the_snapshot_10() -> Vec<Command> {
    let mut cmds = after_the_snapshot_9();
    cmds.extend(the_batch_9());
    cmds.extend([
        Command::Mkdir {
            path: "/locks".into(),
            parents: false,
            perms: Perms::DIR,
            now_ms: 500_000,
        },
        file("/locks/f", 500_001),
        read_open("/locks/f", 500_002), // A
        read_open("/locks/f", 500_003), // B
        set_lock(A, 1, SH, (0, 99), 500_004),
        set_lock(B, 2, SH, (50, 149), 500_005),
        set_lock(B, 2, EX, (1000, LOCK_TO_EOF), 500_006),
        // Splits A's shared lock: 0..=9 and 20..=99.
        set_lock(A, 1, None, (10, 19), 500_007),
        file("/locks/g", 500_008),
        read_open("/locks/g", 500_009), // G
        set_lock(G, 3, SH, (0, LOCK_TO_EOF), 500_010),
        Command::UpgradeLease {
            lease: G,
            now_ms: 500_011,
        },
        set_lock(G, 3, EX, (0, 4095), 500_012),
    ]);
    cmds
}

/// The entry of several commands: an exclusive lock of A; B's upgrade
/// (refused `Busy`: A is on the file) and lock over A's (refused
/// `WouldBlock`), which change nothing; G's upgrade again (done: it is a
/// write lease).
pub(super) fn the_batch() -> Vec<Command> {
    vec![
        set_lock(A, 1, EX, (200, 299), 600_000),
        Command::UpgradeLease {
            lease: B,
            now_ms: 600_001,
        },
        set_lock(B, 2, EX, (0, 9), 600_002),
        Command::UpgradeLease {
            lease: G,
            now_ms: 600_003,
        },
    ]
}

/// Writes the golden file. Run by hand, only by a build that writes
/// format 10:
/// `cargo test -p pstorage-core --lib write_the_format_10_golden_database -- --ignored`.
#[tokio::test]
#[ignore = "writes src/mds/golden/mds_format10.redb; run by hand"]
async fn write_the_format_10_golden_database() {
    assert_eq!(STORE_FORMAT_VERSION, 10, "only a format 10 build writes it");
    write_golden_database_from(
        GOLDEN,
        before_the_snapshot_10(),
        after_the_snapshot_10(),
        the_batch(),
    )
    .await;
}

/// Each lock on `ino`: (lease, owner, kind, start, end, pid).
fn locks_on(state: &MdsState, ino: InodeId) -> Vec<(u64, u64, LockKind, u64, u64, u32)> {
    state
        .locks()
        .on(ino)
        .iter()
        .map(|l: &FileLock| (l.lease.0, l.owner.0, l.kind, l.start, l.end, l.pid))
        .collect()
}

/// The golden file of format 10: its snapshot holds lease 1's locks, its
/// log reads as written, and the committed state holds every lock with the
/// upgraded lease.
#[tokio::test]
async fn a_format_10_golden_database_is_read() {
    use LockKind::{Exclusive, Shared};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    std::fs::write(&path, include_bytes!("../../golden/mds_format10.redb")).unwrap();

    let storage = RaftStorage::open(&path).unwrap();
    let snapshot_index = storage.snapshot_log_id().unwrap().index;
    let initial = storage.initial_state().unwrap();
    initial.check_invariants().unwrap();
    let f = initial.lookup("/d/f").unwrap();
    let f_locks = vec![
        (1, 1, Shared, 0, 99, 101),
        (1, 2, Exclusive, 100, LOCK_TO_EOF, 102),
    ];
    assert_eq!(locks_on(&initial, f), f_locks, "the snapshot's locks");
    assert_eq!(initial.locks().len(), 2);

    let (entries, commands) = log_after_the_snapshot(storage, initial, snapshot_index).await;
    let mut expected = after_the_snapshot_10();
    expected.extend(the_batch());
    assert_eq!(commands, expected);
    let batch = entries
        .iter()
        .rev()
        .find_map(|e| match &e.payload {
            openraft::EntryPayload::Normal(request) => Some(request.cmds.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(batch, the_batch(), "the last command entry holds the batch");

    let (_, state) = RaftStorage::committed_state(&path).unwrap();
    state.check_invariants().unwrap();
    assert_eq!(locks_on(&state, f), f_locks);
    let lf = state.lookup("/locks/f").unwrap();
    assert_eq!(
        locks_on(&state, lf),
        vec![
            (6, 1, Shared, 0, 9, 101),
            (6, 1, Shared, 20, 99, 101),
            (7, 2, Shared, 50, 149, 102),
            (6, 1, Exclusive, 200, 299, 101),
            (7, 2, Exclusive, 1000, LOCK_TO_EOF, 102),
        ]
    );
    let lg = state.lookup("/locks/g").unwrap();
    assert_eq!(
        locks_on(&state, lg),
        vec![
            (8, 3, Exclusive, 0, 4095, 103),
            (8, 3, Shared, 4096, LOCK_TO_EOF, 103),
        ]
    );
    assert_eq!(state.locks().len(), 9);
    let mode = |lease: LeaseId| state.lease(lease).map(|l| (l.ino, l.mode));
    assert_eq!(mode(A), Some((lf, LeaseMode::Read)));
    assert_eq!(
        mode(B),
        Some((lf, LeaseMode::Read)),
        "its upgrade was refused"
    );
    assert_eq!(mode(G), Some((lg, LeaseMode::Write)), "upgraded in place");
}
