//! The format 11 golden file, `mds/golden/mds_format11.redb`: format 10's
//! log (`format_10_golden`, without its batch) written by a
//! format 11 build, with certificates: the snapshot records two
//! certificates and a revocation of one, and a security event; the log
//! then records two more, revokes one of them with a serial never
//! recorded, and ends with a batch: a second record of a known serial
//! (refused `AlreadyExists`, changing nothing), a revocation of one
//! already revoked (a no-op) and one of the snapshot's live certificate.

use super::format_10_golden::{after_the_snapshot_10, before_the_snapshot_10};
use super::format_6_golden::{log_after_the_snapshot, write_golden_database_from};
use super::*;
use crate::mds::NewEvent;
use crate::types::{CertRecord, CertSerial, EventKind, EventLevel};

/// The golden file in the source tree.
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/mds/golden/mds_format11.redb"
);

fn record(serial: u128, role: &str, name: &str, now_ms: u64) -> Command {
    Command::RecordCertificate {
        record: CertRecord {
            serial: CertSerial(serial),
            role: role.into(),
            name: name.into(),
            issued_ms: now_ms,
            not_after_ms: now_ms + 3650 * 86_400_000,
            revoked_ms: None,
        },
        now_ms,
    }
}

fn revoke(serials: &[u128], now_ms: u64) -> Command {
    Command::RevokeCertificates {
        serials: serials.iter().copied().map(CertSerial).collect(),
        now_ms,
    }
}

const MDS1: u128 = 0x4a1f_0000_0000_0000_0000_0000_0000_0001;
const HOST1: u128 = 0x7fff_ffff_ffff_ffff_ffff_ffff_ffff_fffe;
const CS1: u128 = 0x1234_5678_9abc_def0_1234_5678_9abc_def0;
const HOST2: u128 = 0x0100_0000_0000_0000_0000_0000_0000_0000;
const UNRECORDED: u128 = 0xdead_beef;

/// Format 10's snapshot, with certificates: `mds 1` and `host1`
/// recorded, `host1` revoked, and a failed enrollment logged.
fn before_the_snapshot_11() -> Vec<Command> {
    let mut cmds = before_the_snapshot_10();
    cmds.extend([
        record(MDS1, "mds", "mds 1", 1_009),
        record(HOST1, "admin", "host1", 1_010),
        revoke(&[HOST1], 1_011),
        Command::LogEvents {
            now_ms: 1_012,
            events: vec![NewEvent {
                kind: EventKind::Security,
                level: EventLevel::Warning,
                message: "a failed enrollment from 10.0.0.9".into(),
            }],
        },
    ]);
    cmds
}

/// Format 10's log, then two more certificates and a revocation.
fn after_the_snapshot_11() -> Vec<Command> {
    let mut cmds = after_the_snapshot_10();
    cmds.extend([
        record(CS1, "cs", "cs 1", 700_000),
        record(HOST2, "client", "host2", 700_001),
        revoke(&[HOST2, UNRECORDED], 700_002),
    ]);
    cmds
}

/// The entry of several commands.
fn the_batch() -> Vec<Command> {
    vec![
        record(CS1, "cs", "cs 1 again", 800_000),
        revoke(&[HOST1], 800_001),
        revoke(&[MDS1], 800_002),
    ]
}

/// Writes the golden file. Run by hand, only by a build that writes
/// format 11:
/// `cargo test -p pstorage-core --lib write_the_format_11_golden_database -- --ignored`.
#[tokio::test]
#[ignore = "writes src/mds/golden/mds_format11.redb; run by hand"]
async fn write_the_format_11_golden_database() {
    assert_eq!(STORE_FORMAT_VERSION, 11, "only a format 11 build writes it");
    write_golden_database_from(
        GOLDEN,
        before_the_snapshot_11(),
        after_the_snapshot_11(),
        the_batch(),
    )
    .await;
}

/// (serial, role, name, revoked) of every recorded certificate.
fn certs_of(state: &MdsState) -> Vec<(u128, String, String, bool)> {
    state
        .certs()
        .list()
        .into_iter()
        .map(|c| (c.serial.0, c.role, c.name, c.revoked_ms.is_some()))
        .collect()
}

/// The golden file of format 11: its snapshot holds the certificate table
/// and the security event, its log reads as written, and the committed
/// state revoked in order.
#[tokio::test]
async fn a_format_11_golden_database_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    std::fs::write(&path, include_bytes!("../../golden/mds_format11.redb")).unwrap();

    let storage = RaftStorage::open(&path).unwrap();
    let snapshot_index = storage.snapshot_log_id().unwrap().index;
    let initial = storage.initial_state().unwrap();
    initial.check_invariants().unwrap();
    let s = |x: &str| x.to_string();
    assert_eq!(
        certs_of(&initial),
        vec![
            (MDS1, s("mds"), s("mds 1"), false),
            (HOST1, s("admin"), s("host1"), true),
        ]
    );
    assert!(initial
        .events_after(0)
        .any(|e| e.kind == EventKind::Security && e.message.contains("10.0.0.9")));

    let (_, commands) = log_after_the_snapshot(storage, initial, snapshot_index).await;
    let mut expected = after_the_snapshot_11();
    expected.extend(the_batch());
    assert_eq!(commands, expected);

    let (_, state) = RaftStorage::committed_state(&path).unwrap();
    state.check_invariants().unwrap();
    assert_eq!(
        certs_of(&state),
        vec![
            (UNRECORDED, s(""), s(""), true),
            (HOST2, s("client"), s("host2"), true),
            (CS1, s("cs"), s("cs 1"), false),
            (MDS1, s("mds"), s("mds 1"), true),
            (HOST1, s("admin"), s("host1"), true),
        ]
    );
    assert_eq!(
        state.certs().revoked_from(0).serials,
        [HOST1, HOST2, UNRECORDED, MDS1].map(CertSerial).to_vec()
    );
}
