//! The format 9 golden file, `mds/golden/mds_format9.redb`: format 8's log
//! (`format_8_golden`) written by a format 9 build (a format 9 snapshot,
//! commands with permissions and rename flags), then the POSIX commands:
//! a set-group-id directory, a node of every kind, hard links, attribute
//! changes, extended attributes and an exchanging rename, one of them
//! tagged, and a batch of them in one entry.

use super::format_6_golden::{log_after_the_snapshot, write_golden_database_with};
use super::format_7_golden::after_the_snapshot_7;
use super::*;
use crate::types::{
    InodeKind, NewNode, NodeSpec, OpTag, RenameFlags, SessionId, StatChange, TimeChange, Timestamp,
    XattrSet, S_ISGID,
};

/// The golden file in the source tree.
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/mds/golden/mds_format9.redb"
);

fn node(path: &str, spec: NodeSpec, now_ms: u64) -> Command {
    Command::MakeNode {
        path: path.into(),
        node: NewNode {
            spec,
            perms: Perms {
                mode: 0o640,
                uid: 1000,
                gid: 1000,
            },
        },
        now_ms,
    }
}

/// Format 8's commands after the snapshot, then the POSIX ones.
pub(super) fn after_the_snapshot_9() -> Vec<Command> {
    let mut cmds = after_the_snapshot_7();
    cmds.extend([
        Command::Mkdir {
            path: "/posix".into(),
            parents: false,
            perms: Perms {
                mode: 0o2770,
                uid: 1000,
                gid: 50,
            },
            now_ms: 300_000,
        },
        node("/posix/file", NodeSpec::File, 300_001),
        node(
            "/posix/link",
            NodeSpec::Symlink {
                target: "file".into(),
            },
            300_002,
        ),
        node("/posix/fifo", NodeSpec::Fifo, 300_003),
        node("/posix/sock", NodeSpec::Socket, 300_004),
        node("/posix/tty", NodeSpec::CharDevice { rdev: 0x0400 }, 300_005),
        node(
            "/posix/sda",
            NodeSpec::BlockDevice { rdev: 0x0800 },
            300_006,
        ),
        Command::Link {
            from: "/posix/file".into(),
            to: "/posix/hard".into(),
            now_ms: 300_007,
        },
        Command::SetStat {
            path: "/posix/file".into(),
            change: StatChange {
                mode: Some(0o4755),
                uid: Some(0),
                gid: None,
                atime: Some(TimeChange::At(Timestamp {
                    sec: -1,
                    nsec: 123_456_789,
                })),
                mtime: Some(TimeChange::Now),
            },
            now_ms: 300_008,
        },
        Command::SetXattr {
            path: "/posix/file".into(),
            name: "user.origin".into(),
            value: Some(b"golden".to_vec()),
            how: XattrSet::Create,
            now_ms: 300_009,
        },
        Command::Tagged {
            op: OpTag {
                session: SessionId(0x9999),
                seq: 1,
                done_below: 1,
            },
            now_ms: 300_010,
            cmd: Box::new(Command::Rename {
                from: "/posix/fifo".into(),
                to: "/posix/sock".into(),
                flags: RenameFlags {
                    no_replace: false,
                    exchange: true,
                },
                now_ms: 300_010,
            }),
        },
    ]);
    cmds
}

/// The entry of several commands: a symbolic link, a hard link and the
/// removal of an attribute.
pub(super) fn the_batch() -> Vec<Command> {
    vec![
        node(
            "/posix/abs",
            NodeSpec::Symlink {
                target: "/posix/file".into(),
            },
            400_000,
        ),
        Command::Link {
            from: "/posix/hard".into(),
            to: "/e/hard3".into(),
            now_ms: 400_001,
        },
        Command::SetXattr {
            path: "/posix/hard".into(),
            name: "user.origin".into(),
            value: None,
            how: XattrSet::Any,
            now_ms: 400_002,
        },
    ]
}

/// Writes the golden file. Run by hand, only by a build that writes
/// format 9:
/// `cargo test -p pstorage-core --lib write_the_format_9_golden_database -- --ignored`.
#[tokio::test]
#[ignore = "writes src/mds/golden/mds_format9.redb; run by hand"]
async fn write_the_format_9_golden_database() {
    assert_eq!(STORE_FORMAT_VERSION, 9, "only a format 9 build writes it");
    write_golden_database_with(GOLDEN, after_the_snapshot_9(), the_batch()).await;
}

/// The golden file of format 9: its log reads as written, and the committed
/// state has every node with its attributes.
#[tokio::test]
async fn a_format_9_golden_database_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    std::fs::write(&path, include_bytes!("../../golden/mds_format9.redb")).unwrap();

    let storage = RaftStorage::open(&path).unwrap();
    let snapshot_index = storage.snapshot_log_id().unwrap().index;
    let initial = storage.initial_state().unwrap();
    initial.check_invariants().unwrap();
    let d = initial.stat_of(initial.lookup("/d").unwrap()).unwrap();
    assert_eq!((d.mode, d.nlink), (0o777, 2), "a format 9 snapshot");
    assert!(initial.locks().is_empty(), "format 9 had no locks");

    let (_, commands) = log_after_the_snapshot(storage, initial, snapshot_index).await;
    let mut expected = after_the_snapshot_9();
    expected.extend(the_batch());
    assert_eq!(commands, expected);

    let (_, state) = RaftStorage::committed_state(&path).unwrap();
    state.check_invariants().unwrap();
    let stat = |p: &str| state.stat_of(state.lookup(p).unwrap()).unwrap();
    let posix = stat("/posix");
    assert_eq!(
        (posix.mode, posix.uid, posix.gid),
        (0o2770, 1000, 50),
        "{posix:?}"
    );
    assert_eq!(posix.mode & S_ISGID, S_ISGID);
    let file = stat("/posix/file");
    assert_eq!(
        (file.mode, file.uid, file.gid, file.nlink),
        (0o4755, 0, 50, 3),
        "set-group-id parent's group; three names"
    );
    assert_eq!(
        file.atime,
        Timestamp {
            sec: -1,
            nsec: 123_456_789
        }
    );
    assert_eq!(file.mtime, Timestamp::from_ms(300_008));
    assert_eq!(stat("/e/hard3").ino, file.ino);
    assert_eq!(state.readlink("/posix/link").unwrap(), "file");
    assert_eq!(state.readlink("/posix/abs").unwrap(), "/posix/file");
    assert_eq!(stat("/posix/link").size, 4);
    assert_eq!(stat("/posix/sock").kind, InodeKind::Fifo, "exchanged");
    assert_eq!(stat("/posix/fifo").kind, InodeKind::Socket, "exchanged");
    let tty = stat("/posix/tty");
    assert_eq!((tty.kind, tty.rdev), (InodeKind::CharDevice, 0x0400));
    assert_eq!(stat("/posix/sda").kind, InodeKind::BlockDevice);
    assert!(state.list_xattrs("/posix/file").unwrap().is_empty());
}
