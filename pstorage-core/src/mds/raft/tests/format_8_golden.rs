//! The format 8 golden file, `mds/golden/mds_format8.redb`: format 7's
//! commands (`format_7_golden`), one to an entry, written by a format 8
//! build, and then one entry of several commands (the group commit), one of
//! them refused.

use super::format_6_golden::{log_after_the_snapshot, write_golden_database_with};
use super::format_7_golden::after_the_snapshot_7;
use super::*;
use openraft::EntryPayload;

/// The golden file in the source tree.
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/mds/golden/mds_format8.redb"
);

/// The entry of several commands: two directories, and the first again
/// (refused `AlreadyExists`, which changes nothing).
fn the_batch() -> Vec<Command> {
    let mkdir = |path: &str| Command::Mkdir {
        perms: Perms::LEGACY_DIR,
        path: path.into(),
        parents: false,
        now_ms: 200_000,
    };
    vec![mkdir("/batch-a"), mkdir("/batch-b"), mkdir("/batch-a")]
}

/// Writes the golden file. Run by hand, only by a build that writes
/// format 8:
/// `cargo test -p pstorage-core --lib write_the_format_8_golden_database -- --ignored`.
#[tokio::test]
#[ignore = "writes src/mds/golden/mds_format8.redb; run by hand"]
async fn write_the_format_8_golden_database() {
    assert_eq!(STORE_FORMAT_VERSION, 8, "only a format 8 build writes it");
    write_golden_database_with(GOLDEN, after_the_snapshot_7(), the_batch()).await;
}

/// The golden file of format 8: its log reads as written, the last entry
/// with its three commands, and the committed state has both directories.
#[tokio::test]
async fn a_format_8_golden_database_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    std::fs::write(&path, include_bytes!("../../golden/mds_format8.redb")).unwrap();

    let storage = RaftStorage::open(&path).unwrap();
    let snapshot_index = storage.snapshot_log_id().unwrap().index;
    let initial = storage.initial_state().unwrap();
    initial.check_invariants().unwrap();

    let (entries, commands) = log_after_the_snapshot(storage, initial, snapshot_index).await;
    let mut expected = after_the_snapshot_7();
    expected.extend(the_batch());
    assert_eq!(commands, expected);
    let batch = entries
        .iter()
        .rev()
        .find_map(|e| match &e.payload {
            EntryPayload::Normal(request) => Some(request.cmds.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(batch, the_batch(), "the last command entry holds the batch");

    let (_, state) = RaftStorage::committed_state(&path).unwrap();
    state.check_invariants().unwrap();
    for dir in ["/batch-a", "/batch-b"] {
        assert!(state.lookup(dir).is_ok(), "{dir} was created");
    }
}
