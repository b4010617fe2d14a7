//! The readers of the MDS's persisted formats, each decoding into types
//! frozen for its format, so that changing a live type can never change
//! how an existing file is read.
//!
//! Every MDS record (`store` and `raft::store`) is a format version byte
//! and postcard bytes, which are not self-describing: they only decode
//! with the exact type tree that wrote them. Records are written from the
//! live types ([`super::MdsState`], [`super::Command`], ...) with
//! [`STORE_FORMAT_VERSION`], and read here:
//!
//! 1. the body is decoded with the frozen type tree of its format:
//!    `v1` (format 1), `v2` (2), `v3` (3), `v5` (4 and 5), `v6` (6),
//!    `v7` (7: format 6's state, one more command), `v8` (8: format 7's
//!    commands, several to a Raft log entry), `v9` (9: the POSIX
//!    attributes: permissions, owners, times in nanoseconds, hard links,
//!    symbolic links, special files, extended attributes), `v10` (10:
//!    byte-range locks and in-place lease upgrades: format 9's state with
//!    a lock table, two more commands), `v11` (11: certificates: format
//!    10's state with a certificate table, a new event kind, two more
//!    commands). A module holds every type reachable from its records (state,
//!    snapshots, commands, Raft log entries), reusing identical types of
//!    older modules, never live ones. Ids are frozen as the numbers their
//!    transparent newtypes serialize as (`v1::CsId` = `u32`, the others
//!    `u64`). openraft's own types (`LogId`, `SnapshotMeta`,
//!    `StoredMembership`, `Membership`; the crate is pinned) are reused
//!    over the frozen node type `v3::MdsNode`; a log entry is decoded as
//!    `v3::Entry`, openraft's `Entry` shape with the format's own command;
//! 2. it is upgraded step by step to the newest format's types (`From`
//!    impls in each newer module: `v1` -> `v2` -> `v3` -> `v5` -> `v6` ->
//!    `v7` -> `v8` -> `v9` -> `v10` -> `v11`);
//! 3. `live` converts the newest format's types to the live ones.
//!
//! A frozen type derives only what its reader needs and is never changed.
//! `tripwire` tests that the live types still write exactly what the
//! newest frozen types read. When a stored live type changes (a field, a
//! variant, a nested type), format 12 is added: `STORE_FORMAT_VERSION`
//! becomes 12, a new `v12.rs` holds the new tree (reusing unchanged `v11`
//! and older types) with `From` upgrades from `v11`, the decoders below
//! get a `12` arm and a `.map_into::<v12::..>()` step on every older arm,
//! `live` converts from `v12`, and the tripwire and a new golden file move
//! to format 12. `v11.rs` is not edited.

mod live;
#[cfg(test)]
mod tripwire;
mod v1;
mod v10;
mod v11;
mod v2;
mod v3;
mod v5;
mod v6;
mod v7;
mod v8;
mod v9;

use std::path::Path;

use openraft::{Entry, SnapshotMeta};

use super::raft::{MdsId, MdsNode, MdsRaftConfig};
use super::state::{Command, MdsState};
use super::store::{decode_body, split_record, STORE_FORMAT_VERSION};
use crate::error::{Error, ErrorKind, Result};

/// The metadata of a Raft snapshot, over the live node type.
pub(crate) type RaftMeta = SnapshotMeta<MdsId, MdsNode>;

/// `Protocol` for a version outside the readable range ([`split_record`]
/// refuses those first).
fn unknown_version(version: u8, what: &str, path: &Path) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!(
            "{what} in {} has format version {version}, this build reads version {STORE_FORMAT_VERSION}",
            path.display()
        ),
    )
}

/// `Corrupt` for a Raft record of a format before Raft.
fn not_raft(version: u8, what: &str, path: &Path) -> Error {
    Error::corrupt(format!(
        "{what} in {} has format version {version}, which had no Raft records",
        path.display()
    ))
}

/// A snapshot record of the pre-Raft store ([`super::MdsStore`]): the last
/// log index it covers and the state. `Protocol` for a newer format,
/// `Corrupt` if it does not decode.
pub(crate) fn store_snapshot(bytes: &[u8], path: &Path) -> Result<(u64, MdsState)> {
    let what = "MDS snapshot";
    let (version, b) = split_record(bytes, what, path)?;
    let newest = match version {
        1 => decode_body::<v1::Snapshot>(b, what, path)?
            .map_into::<v2::Snapshot>()
            .map_into::<v3::Snapshot>()
            .map_into::<v5::Snapshot>()
            .map_into::<v6::Snapshot>()
            .map_into::<v9::Snapshot>()
            .map_into::<v10::Snapshot>()
            .map_into::<v11::Snapshot>(),
        2 => decode_body::<v2::Snapshot>(b, what, path)?
            .map_into::<v3::Snapshot>()
            .map_into::<v5::Snapshot>()
            .map_into::<v6::Snapshot>()
            .map_into::<v9::Snapshot>()
            .map_into::<v10::Snapshot>()
            .map_into::<v11::Snapshot>(),
        3 => decode_body::<v3::Snapshot>(b, what, path)?
            .map_into::<v5::Snapshot>()
            .map_into::<v6::Snapshot>()
            .map_into::<v9::Snapshot>()
            .map_into::<v10::Snapshot>()
            .map_into::<v11::Snapshot>(),
        4 | 5 => decode_body::<v5::Snapshot>(b, what, path)?
            .map_into::<v6::Snapshot>()
            .map_into::<v9::Snapshot>()
            .map_into::<v10::Snapshot>()
            .map_into::<v11::Snapshot>(),
        // Formats 7 and 8 changed only the commands and log entries.
        6..=8 => decode_body::<v6::Snapshot>(b, what, path)?
            .map_into::<v9::Snapshot>()
            .map_into::<v10::Snapshot>()
            .map_into::<v11::Snapshot>(),
        9 => decode_body::<v9::Snapshot>(b, what, path)?
            .map_into::<v10::Snapshot>()
            .map_into::<v11::Snapshot>(),
        10 => decode_body::<v10::Snapshot>(b, what, path)?.map_into::<v11::Snapshot>(),
        STORE_FORMAT_VERSION => {
            let current: CurrentSnapshot = decode_body(b, what, path)?;
            return Ok((current.last_index, current.state));
        }
        _ => return Err(unknown_version(version, what, path)),
    };
    Ok(live::store_snapshot(newest))
}

// The newest format's snapshots, the big records, decode straight into the
// live types: `tripwire` proves they read its bytes exactly as the frozen
// `v11` types do, and this saves a second copy of the whole state at load
// (1,000,000 chunks: 0.3 s and 50 MiB of peak memory). Older snapshots go
// through their frozen types (format 11 changed the state).

/// A pre-Raft snapshot of the newest format, decoded into live types.
#[derive(serde::Deserialize)]
struct CurrentSnapshot {
    last_index: u64,
    state: MdsState,
}

/// A Raft snapshot record of the newest format, decoded into live types.
#[derive(serde::Deserialize)]
struct CurrentSnapshotRecord {
    meta: RaftMeta,
    state: MdsState,
}

/// A log record of the pre-Raft store: the command. `Protocol` for a newer
/// format, `Corrupt` if it does not decode.
pub(crate) fn store_command(bytes: &[u8], what: &str, path: &Path) -> Result<Command> {
    let (version, b) = split_record(bytes, what, path)?;
    let newest = match version {
        1 => decode_body::<v1::Command>(b, what, path)?
            .map_into::<v2::Command>()
            .map_into::<v3::Command>()
            .map_into::<v5::Command>()
            .map_into::<v6::Command>()
            .map_into::<v7::Command>()
            .map_into::<v9::Command>()
            .map_into::<v10::Command>()
            .map_into::<v11::Command>(),
        2 => decode_body::<v2::Command>(b, what, path)?
            .map_into::<v3::Command>()
            .map_into::<v5::Command>()
            .map_into::<v6::Command>()
            .map_into::<v7::Command>()
            .map_into::<v9::Command>()
            .map_into::<v10::Command>()
            .map_into::<v11::Command>(),
        3 => decode_body::<v3::Command>(b, what, path)?
            .map_into::<v5::Command>()
            .map_into::<v6::Command>()
            .map_into::<v7::Command>()
            .map_into::<v9::Command>()
            .map_into::<v10::Command>()
            .map_into::<v11::Command>(),
        4 | 5 => decode_body::<v5::Command>(b, what, path)?
            .map_into::<v6::Command>()
            .map_into::<v7::Command>()
            .map_into::<v9::Command>()
            .map_into::<v10::Command>()
            .map_into::<v11::Command>(),
        6 => decode_body::<v6::Command>(b, what, path)?
            .map_into::<v7::Command>()
            .map_into::<v9::Command>()
            .map_into::<v10::Command>()
            .map_into::<v11::Command>(),
        // Format 8 changed the log entries, not the commands.
        7 | 8 => decode_body::<v7::Command>(b, what, path)?
            .map_into::<v9::Command>()
            .map_into::<v10::Command>()
            .map_into::<v11::Command>(),
        9 => decode_body::<v9::Command>(b, what, path)?
            .map_into::<v10::Command>()
            .map_into::<v11::Command>(),
        10 => decode_body::<v10::Command>(b, what, path)?.map_into::<v11::Command>(),
        11 => decode_body::<v11::Command>(b, what, path)?,
        _ => return Err(unknown_version(version, what, path)),
    };
    Ok(newest.into())
}

/// A Raft snapshot record (stored, and sent between MDSes): its metadata
/// and state. `Protocol` for a newer format, `Corrupt` for garbage or a
/// format that had no Raft snapshots.
pub(crate) fn raft_snapshot(bytes: &[u8], path: &Path) -> Result<(RaftMeta, MdsState)> {
    let what = "MDS Raft snapshot";
    let (version, b) = split_record(bytes, what, path)?;
    let newest = match version {
        1 | 2 => {
            return Err(Error::corrupt(format!(
                "{what} in {} has format version {version}, which had no Raft snapshots",
                path.display()
            )))
        }
        3 => decode_body::<v3::SnapshotRecord>(b, what, path)?
            .map_into::<v5::SnapshotRecord>()
            .map_into::<v6::SnapshotRecord>()
            .map_into::<v9::SnapshotRecord>()
            .map_into::<v10::SnapshotRecord>()
            .map_into::<v11::SnapshotRecord>(),
        4 | 5 => decode_body::<v5::SnapshotRecord>(b, what, path)?
            .map_into::<v6::SnapshotRecord>()
            .map_into::<v9::SnapshotRecord>()
            .map_into::<v10::SnapshotRecord>()
            .map_into::<v11::SnapshotRecord>(),
        6..=8 => decode_body::<v6::SnapshotRecord>(b, what, path)?
            .map_into::<v9::SnapshotRecord>()
            .map_into::<v10::SnapshotRecord>()
            .map_into::<v11::SnapshotRecord>(),
        9 => decode_body::<v9::SnapshotRecord>(b, what, path)?
            .map_into::<v10::SnapshotRecord>()
            .map_into::<v11::SnapshotRecord>(),
        10 => decode_body::<v10::SnapshotRecord>(b, what, path)?.map_into::<v11::SnapshotRecord>(),
        STORE_FORMAT_VERSION => {
            let current: CurrentSnapshotRecord = decode_body(b, what, path)?;
            return Ok((current.meta, current.state));
        }
        _ => return Err(unknown_version(version, what, path)),
    };
    Ok(live::raft_snapshot(newest))
}

/// A Raft snapshot's metadata record (formats 3 to 11 share its shape).
pub(crate) fn raft_snapshot_meta(bytes: &[u8], what: &str, path: &Path) -> Result<RaftMeta> {
    let (version, b) = split_record(bytes, what, path)?;
    match version {
        1 | 2 => Err(not_raft(version, what, path)),
        3..=11 => Ok(live::meta(decode_body::<v3::Meta>(b, what, path)?)),
        _ => Err(unknown_version(version, what, path)),
    }
}

/// A Raft log entry record, its command decoded with its format's frozen
/// command type.
pub(crate) fn raft_entry(bytes: &[u8], what: &str, path: &Path) -> Result<Entry<MdsRaftConfig>> {
    let (version, b) = split_record(bytes, what, path)?;
    let newest = match version {
        1 | 2 => return Err(not_raft(version, what, path)),
        3 => decode_body::<v3::Entry<v3::Command>>(b, what, path)?
            .upgrade::<v5::Command>()
            .upgrade::<v6::Command>()
            .upgrade::<v7::Command>()
            .map_into::<v8::LogEntry>()
            .map_into::<v9::LogEntry>()
            .map_into::<v10::LogEntry>()
            .map_into::<v11::LogEntry>(),
        4 | 5 => decode_body::<v3::Entry<v5::Command>>(b, what, path)?
            .upgrade::<v6::Command>()
            .upgrade::<v7::Command>()
            .map_into::<v8::LogEntry>()
            .map_into::<v9::LogEntry>()
            .map_into::<v10::LogEntry>()
            .map_into::<v11::LogEntry>(),
        6 => decode_body::<v6::LogEntry>(b, what, path)?
            .upgrade::<v7::Command>()
            .map_into::<v8::LogEntry>()
            .map_into::<v9::LogEntry>()
            .map_into::<v10::LogEntry>()
            .map_into::<v11::LogEntry>(),
        7 => decode_body::<v7::LogEntry>(b, what, path)?
            .map_into::<v8::LogEntry>()
            .map_into::<v9::LogEntry>()
            .map_into::<v10::LogEntry>()
            .map_into::<v11::LogEntry>(),
        8 => decode_body::<v8::LogEntry>(b, what, path)?
            .map_into::<v9::LogEntry>()
            .map_into::<v10::LogEntry>()
            .map_into::<v11::LogEntry>(),
        9 => decode_body::<v9::LogEntry>(b, what, path)?
            .map_into::<v10::LogEntry>()
            .map_into::<v11::LogEntry>(),
        10 => decode_body::<v10::LogEntry>(b, what, path)?.map_into::<v11::LogEntry>(),
        11 => decode_body::<v11::LogEntry>(b, what, path)?,
        _ => return Err(unknown_version(version, what, path)),
    };
    Ok(live::raft_entry(newest))
}

/// `.map_into::<U>()`: `U::from(self)`, so that an upgrade chain reads in
/// order.
trait MapInto: Sized {
    fn map_into<U: From<Self>>(self) -> U {
        U::from(self)
    }
}

impl<T> MapInto for T {}
