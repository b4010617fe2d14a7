//! The MDS record decoders for [`crate::fuzzing`] (the `fuzzing` feature):
//! `format` is private to this module tree, so its readers are reached
//! from here. Each function runs a decoder on bytes read from a store (or
//! received from another MDS) and, for what decodes, checks that encoding
//! it again and decoding that gives the same value.

use std::path::Path;

use serde::Serialize;

use super::format::{self, RaftMeta};
use super::state::MdsState;
use super::store::{encode, encode_snapshot};

const PATH: &str = "fuzz-input";

/// A pre-Raft snapshot record (`MdsStore`), of any readable format.
pub(crate) fn store_snapshot(bytes: &[u8]) {
    let path = Path::new(PATH);
    let Ok((last_index, state)) = format::store_snapshot(bytes, path) else {
        return;
    };
    let again = encode_snapshot(last_index, &state).expect("a decoded snapshot encodes");
    let (index2, state2) = format::store_snapshot(&again, path).expect("its encoding decodes");
    assert_eq!(index2, last_index);
    assert_eq!(
        encode_snapshot(index2, &state2).expect("encodes"),
        again,
        "a snapshot changed through encode and decode"
    );
}

/// A pre-Raft log record (a command), of any readable format.
pub(crate) fn store_command(bytes: &[u8]) {
    let path = Path::new(PATH);
    let Ok(cmd) = format::store_command(bytes, "command", path) else {
        return;
    };
    let again = encode(&cmd).expect("a decoded command encodes");
    let cmd2 = format::store_command(&again, "command", path).expect("its encoding decodes");
    assert_eq!(cmd2, cmd);
}

/// A Raft log entry record, of any readable format.
pub(crate) fn raft_entry(bytes: &[u8]) {
    let path = Path::new(PATH);
    let Ok(entry) = format::raft_entry(bytes, "entry", path) else {
        return;
    };
    let again = encode(&entry).expect("a decoded entry encodes");
    let entry2 = format::raft_entry(&again, "entry", path).expect("its encoding decodes");
    assert_eq!(entry2, entry);
}

/// The record of a Raft snapshot as the newest format writes it.
#[derive(Serialize)]
struct SnapshotRecordRef<'a> {
    meta: &'a RaftMeta,
    state: &'a MdsState,
}

/// A Raft snapshot record (stored, and sent between MDSes), and the
/// snapshot metadata record.
pub(crate) fn raft_snapshot(bytes: &[u8]) {
    let path = Path::new(PATH);
    if let Ok(meta) = format::raft_snapshot_meta(bytes, "meta", path) {
        let again = encode(&meta).expect("decoded metadata encodes");
        let meta2 = format::raft_snapshot_meta(&again, "meta", path).expect("it decodes");
        assert_eq!(meta2, meta);
    }
    let Ok((meta, state)) = format::raft_snapshot(bytes, path) else {
        return;
    };
    let again = encode(&SnapshotRecordRef {
        meta: &meta,
        state: &state,
    })
    .expect("a decoded snapshot encodes");
    let (meta2, state2) = format::raft_snapshot(&again, path).expect("its encoding decodes");
    assert_eq!(meta2, meta);
    assert_eq!(
        encode(&SnapshotRecordRef {
            meta: &meta2,
            state: &state2,
        })
        .expect("encodes"),
        again,
        "a Raft snapshot changed through encode and decode"
    );
}
