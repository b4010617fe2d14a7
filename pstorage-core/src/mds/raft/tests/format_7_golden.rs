//! The format 7 golden file, `mds/golden/mds_format7.redb`: format 6's
//! commands (`format_6_golden`) written by a format 7 build, and then
//! `RefreshLeases`, the command format 7 added.

use super::format_6_golden::{after_the_snapshot, log_after_the_snapshot, write_golden_database};
use super::*;
use crate::mds::LeaseRecord;
use crate::types::LeaseId;

/// The golden file in the source tree.
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/mds/golden/mds_format7.redb"
);

/// The log after the snapshot: format 6's, then a new leader's refresh.
pub(super) fn after_the_snapshot_7() -> Vec<Command> {
    let mut cmds = after_the_snapshot();
    cmds.push(Command::RefreshLeases { now_ms: 100_000 });
    cmds
}

/// Writes the golden file as `write_the_format_6_golden_database` does, with
/// [`after_the_snapshot_7`] after the snapshot. Run by hand, only by a build
/// that writes format 7:
/// `cargo test -p pstorage-core --lib write_the_format_7_golden_database -- --ignored`.
#[tokio::test]
#[ignore = "writes src/mds/golden/mds_format7.redb; run by hand"]
async fn write_the_format_7_golden_database() {
    assert_eq!(STORE_FORMAT_VERSION, 7, "only a format 7 build writes it");
    write_golden_database(GOLDEN, after_the_snapshot_7()).await;
}

/// The golden file of format 7: its snapshot and log read as written, and
/// the refresh set every lease to expire one duration after its `now_ms`.
#[tokio::test]
async fn a_format_7_golden_database_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    std::fs::write(&path, include_bytes!("../../golden/mds_format7.redb")).unwrap();

    let storage = RaftStorage::open(&path).unwrap();
    let snapshot_index = storage.snapshot_log_id().unwrap().index;
    let initial = storage.initial_state().unwrap();
    initial.check_invariants().unwrap();
    assert_eq!(initial.leases().count(), 1);

    let (entries, commands) = log_after_the_snapshot(storage, initial, snapshot_index).await;
    assert_eq!(commands, after_the_snapshot_7());

    let (index, state) = RaftStorage::committed_state(&path).unwrap();
    assert_eq!(index, entries.last().unwrap().log_id.index);
    state.check_invariants().unwrap();
    let leases: Vec<(LeaseId, u64, u64)> = state
        .leases()
        .map(|l: &LeaseRecord| (l.id, l.duration_ms, l.expires_ms))
        .collect();
    // Each lease expires one duration after 100 s: lease 1 (60 s, expiring
    // at 62.006 s) at 160 s, lease 3 (600 s, at 602.011 s) at 700 s.
    assert_eq!(
        leases,
        [
            (LeaseId(1), 60_000, 160_000),
            (LeaseId(3), 600_000, 700_000)
        ]
    );
}
