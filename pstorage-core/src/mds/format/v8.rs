//! Store format 8: format 7's commands, several to a Raft log entry (the
//! MDS's group commit: concurrent proposals share one entry, so one log
//! append and one sync). The state, snapshots, commands and pre-Raft
//! records are format 7's. Frozen: never change a type here (see
//! [`super`]); a change of a stored live type is a new format.

use openraft::{LogId, Membership};
use serde::Deserialize;

use super::v3::{self, MdsId, MdsNode};
use super::v7::{self, Command};

/// A Raft log entry (format 8): openraft's `Entry` shape with a batch of
/// commands as the application data.
#[derive(Deserialize)]
pub(super) struct LogEntry {
    pub(super) log_id: LogId<MdsId>,
    pub(super) payload: EntryPayload,
}

/// openraft's `EntryPayload` shape.
#[derive(Deserialize)]
pub(super) enum EntryPayload {
    Blank,
    Normal(RaftRequest),
    Membership(Membership<MdsId, MdsNode>),
}

/// The replicated commands of one entry (`RaftRequest`), applied in order.
#[derive(Deserialize)]
pub(super) struct RaftRequest {
    pub(super) cmds: Vec<Command>,
}

/// A format 7 entry holds one command: a batch of one.
impl From<v7::LogEntry> for LogEntry {
    fn from(e: v7::LogEntry) -> LogEntry {
        let payload = match e.payload {
            v3::EntryPayload::Blank => EntryPayload::Blank,
            v3::EntryPayload::Normal(v3::RaftRequest { cmd }) => {
                EntryPayload::Normal(RaftRequest { cmds: vec![cmd] })
            }
            v3::EntryPayload::Membership(m) => EntryPayload::Membership(m),
        };
        LogEntry {
            log_id: e.log_id,
            payload,
        }
    }
}
