//! The Raft wire tripwire: every kind of Raft message and reply that MDSes
//! exchange (`raftAppend`, `raftVote`, `raftSnapshot`), built from fixed
//! values, must encode to the bytes recorded here. They are openraft's own
//! types in postcard, which is not self-describing: if their shape changes
//! (another openraft), a peer of an older build would misread them, so the
//! change needs a new [`RAFT_WIRE_VERSION`]. Changes of `Command` (the
//! payload of log entries) are caught earlier, at compile time, by the tie
//! of the wire version to the MDS store format (`RAFT_WIRE_STORE_FORMAT`).

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, SnapshotSegmentId,
    StoredMembership, Vote,
};
use pstorage_core::mds::raft::{MdsId, MdsNode, MdsRaftConfig, RaftRequest};
use pstorage_core::mds::Command;
use pstorage_core::ErrorKind;
use serde::Serialize;

use crate::raft::{decode, encode, RAFT_WIRE_VERSION};

/// What a tripped test says.
const TRIPWIRE: &str = "the encoding of a Raft message between MDSes changed (another \
    openraft?), and an MDS of an older build would misread it: bump RAFT_WIRE_VERSION \
    (pstorage-rpc/src/raft.rs), then record the new bytes and version here (see \
    docs/formats.md, Raft messages)";

/// The wire version the bytes in [`RECORDED`] were recorded for.
const RECORDED_FOR: u8 = 7;

/// Each message's postcard bytes (after the version byte), in hex.
const RECORDED: &[(&str, &str)] = &[
    ("vote request", "03020001030228"),
    ("vote reply", "000302010101030228"),
    ("fatal reply", "0102"),
    ("append-entries request", "03020101030228030302290003022a02020201020202030401096d6473313a3235313002096d6473323a3235313003096d6473333a3235313004096d6473343a3235313003022b0102141401030228"),
    ("append-entries replies", "0000000101030228000200030403000101"),
    ("install-snapshot request", "0302010103022801020111020201020202030401096d6473313a3235313002096d6473323a3235313003096d6473333a3235313004096d6473343a3235313008332d322d34302d318080400301020300"),
    ("install-snapshot replies", "0003020101000008332d322d34302d310008332d322d34302d32808040010102"),
];

fn log_id(term: u64, node: u64, index: u64) -> LogId<MdsId> {
    LogId::new(CommittedLeaderId::new(term, MdsId(node)), index)
}

/// A joint configuration and a learner (4).
fn membership() -> Membership<MdsId, MdsNode> {
    let node = |id: u64| {
        (
            MdsId(id),
            MdsNode {
                addr: format!("mds{id}:2510"),
            },
        )
    };
    Membership::new(
        vec![
            BTreeSet::from([1, 2].map(MdsId)),
            BTreeSet::from([2, 3].map(MdsId)),
        ],
        BTreeMap::from([node(1), node(2), node(3), node(4)]),
    )
}

fn hex<T: Serialize>(what: &str, value: &T) -> String {
    let bytes = encode(what, value).unwrap();
    assert_eq!(bytes[0], RAFT_WIRE_VERSION, "{what}");
    bytes[1..].iter().map(|b| format!("{b:02x}")).collect()
}

/// Every message and reply kind, encoded.
fn every_message() -> Vec<(&'static str, String)> {
    let vote = Vote::new(3, MdsId(2));
    let leader = Vote::new_committed(3, MdsId(2));
    let last = Some(log_id(3, 2, 40));
    let entries: Vec<Entry<MdsRaftConfig>> = vec![
        Entry {
            log_id: log_id(3, 2, 41),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(3, 2, 42),
            payload: EntryPayload::Membership(membership()),
        },
        Entry {
            log_id: log_id(3, 2, 43),
            payload: EntryPayload::Normal(RaftRequest {
                cmds: vec![Command::AllocateMdsId, Command::AllocateMdsId],
            }),
        },
    ];
    type Plain<T> = Result<T, Fatal<MdsId>>;
    type Snapshot = Result<InstallSnapshotResponse<MdsId>, RaftError<MdsId, InstallSnapshotError>>;
    let segment = |id: &str, offset: u64| SnapshotSegmentId {
        id: id.into(),
        offset,
    };
    vec![
        (
            "vote request",
            hex("vote request", &VoteRequest::new(vote, last)),
        ),
        (
            "vote reply",
            hex(
                "vote reply",
                &Plain::Ok(VoteResponse::new(leader, last, true)),
            ),
        ),
        (
            "fatal reply",
            hex(
                "fatal reply",
                &Plain::<VoteResponse<MdsId>>::Err(Fatal::Stopped),
            ),
        ),
        (
            "append-entries request",
            hex(
                "append-entries request",
                &AppendEntriesRequest::<MdsRaftConfig> {
                    vote: leader,
                    prev_log_id: last,
                    entries,
                    leader_commit: last,
                },
            ),
        ),
        (
            "append-entries replies",
            hex(
                "append-entries replies",
                &[
                    Plain::Ok(AppendEntriesResponse::Success),
                    Plain::Ok(AppendEntriesResponse::PartialSuccess(last)),
                    Plain::Ok(AppendEntriesResponse::Conflict),
                    Plain::Ok(AppendEntriesResponse::HigherVote(Vote::new(4, MdsId(3)))),
                    Plain::Err(Fatal::Panicked),
                ],
            ),
        ),
        (
            "install-snapshot request",
            hex(
                "install-snapshot request",
                &InstallSnapshotRequest::<MdsRaftConfig> {
                    vote: leader,
                    meta: SnapshotMeta {
                        last_log_id: last,
                        last_membership: StoredMembership::new(
                            Some(log_id(2, 1, 17)),
                            membership(),
                        ),
                        snapshot_id: "3-2-40-1".into(),
                    },
                    offset: 1 << 20,
                    data: vec![1, 2, 3],
                    done: false,
                },
            ),
        ),
        (
            "install-snapshot replies",
            hex(
                "install-snapshot replies",
                &[
                    Snapshot::Ok(InstallSnapshotResponse { vote: leader }),
                    Snapshot::Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                        SnapshotMismatch {
                            expect: segment("3-2-40-1", 0),
                            got: segment("3-2-40-2", 1 << 20),
                        },
                    ))),
                    Snapshot::Err(RaftError::Fatal(Fatal::Stopped)),
                ],
            ),
        ),
    ]
}

#[test]
fn every_raft_message_encodes_as_recorded() {
    let actual = every_message();
    let listing: String = actual
        .iter()
        .map(|(what, hex)| format!("    (\"{what}\", \"{hex}\"),\n"))
        .collect();
    assert_eq!(
        RAFT_WIRE_VERSION, RECORDED_FOR,
        "RAFT_WIRE_VERSION changed: record its bytes (RECORDED_FOR = {RAFT_WIRE_VERSION}; \
         RECORDED =\n{listing})"
    );
    for (what, hex) in &actual {
        let recorded = RECORDED.iter().find(|(w, _)| w == what).map(|(_, h)| *h);
        assert_eq!(
            recorded,
            Some(hex.as_str()),
            "{what}: {TRIPWIRE}. This build's bytes:\n{listing}"
        );
    }
    assert_eq!(RECORDED.len(), actual.len(), "{listing}");
}

/// A peer of another wire version (older or newer) is refused, with both
/// versions and the fix in the error.
#[test]
fn a_message_of_another_wire_version_is_refused() {
    let vote = VoteRequest::new(Vote::new(1, MdsId(7)), None);
    let bytes = encode("vote request", &vote).unwrap();
    let back: VoteRequest<MdsId> = decode("vote request", &bytes).unwrap();
    assert_eq!(back, vote);
    for other in [RAFT_WIRE_VERSION - 1, RAFT_WIRE_VERSION + 1] {
        let mut bytes = bytes.clone();
        bytes[0] = other;
        let error = decode::<VoteRequest<MdsId>>("vote request", &bytes).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Protocol, "{error}");
        let expected = format!(
            "Raft vote request in format version {other}, this MDS speaks version \
             {RAFT_WIRE_VERSION}: upgrade every MDS of the cluster to the same pstorage version"
        );
        assert_eq!(error.message(), expected);
    }
}
