//! The MDS state machine replicated by Raft (openraft).
//!
//! Every MDS runs one Raft node. The replicated log carries [`Command`]s;
//! the state machine applies them, in log order, to the live [`MdsState`]
//! of the local [`crate::mds::MdsService`] through the [`StateHost`] seam.
//! Log, vote and snapshots persist in one redb database per MDS
//! (`store`). How Raft messages travel between MDSes is openraft's
//! `RaftNetworkFactory` seam: Cap'n Proto in `pstorage-rpc`, in memory in
//! tests.
//!
//! A single MDS is a Raft cluster of one member: the same code path, and
//! more members can join later.

mod log_files;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::state::{ApplyOutcome, Command, MdsState};
use crate::error::{Error, ErrorKind, Result};

pub use store::{
    compact_log_now, raft_config, MdsSnapshotBuilder, MdsStateMachine, RaftDisk, RaftLogStore,
    RaftStorage, StorageClosed, DEFAULT_SNAPSHOT_EVERY,
};
#[cfg(test)]
pub(crate) use store::{encode_snapshot_record, LOG_LAYOUT_VERSION};

pub use crate::types::MdsId;

/// What the Raft group knows about each member: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdsNode {
    /// `host:port` of the MDS's listening socket (clients, chunk servers and
    /// the other MDSes all connect there).
    pub addr: String,
}

impl fmt::Display for MdsNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// One replicated log entry's payload: the commands that were proposed
/// together (the leader's group commit, [`MdsService`](crate::mds::MdsService)),
/// which every member applies one after another, in order, each with its
/// own outcome (store format 8; an entry of an older format holds one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftRequest {
    /// The commands, in the order they apply.
    pub cmds: Vec<Command>,
}

impl RaftRequest {
    /// An entry of one command.
    pub fn one(cmd: Command) -> RaftRequest {
        RaftRequest { cmds: vec![cmd] }
    }
}

impl fmt::Display for RaftRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.cmds)
    }
}

/// What applying one entry produced: the outcome, or the error the state
/// machine refused the command with (deterministic, so the same on every
/// member; the state is unchanged then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftResponse {
    /// Membership changes and blank entries.
    Empty,
    /// The command applied; what it produced.
    Applied(ApplyOutcome),
    /// The command was refused (the state is unchanged, except that a
    /// tagged command's session remembers the refusal): the error's
    /// [`ErrorKind`] code and message.
    Refused {
        /// The error's [`ErrorKind`] code.
        kind: u16,
        /// The error's message.
        message: String,
    },
    /// An entry of several commands: each one's response, in order.
    Commands(Vec<RaftResponse>),
}

impl RaftResponse {
    /// The response for what [`StateHost::apply_committed`] returned.
    pub fn from_result(result: Result<ApplyOutcome>) -> RaftResponse {
        match result {
            Ok(outcome) => RaftResponse::Applied(outcome),
            Err(e) => RaftResponse::Refused {
                kind: e.kind().code(),
                message: e.message().to_string(),
            },
        }
    }

    /// The command's result as the proposer sees it (of an entry of one
    /// command: its result).
    pub fn into_result(self) -> Result<ApplyOutcome> {
        match self {
            RaftResponse::Empty => Ok(ApplyOutcome::Done),
            RaftResponse::Applied(outcome) => Ok(outcome),
            RaftResponse::Refused { kind, message } => {
                Err(Error::new(ErrorKind::from_code(kind), message))
            }
            RaftResponse::Commands(mut each) if each.len() == 1 => {
                each.pop().map_or(Ok(ApplyOutcome::Done), Self::into_result)
            }
            RaftResponse::Commands(each) => Err(Error::internal(format!(
                "an entry of {} commands answered as one",
                each.len()
            ))),
        }
    }

    /// The results of an entry's `count` commands, in order.
    pub fn into_results(self, count: usize) -> Vec<Result<ApplyOutcome>> {
        match self {
            RaftResponse::Commands(each) if each.len() == count => {
                each.into_iter().map(Self::into_result).collect()
            }
            RaftResponse::Commands(each) => {
                let e = Error::internal(format!(
                    "an entry of {count} commands answered with {} outcomes",
                    each.len()
                ));
                (0..count).map(|_| Err(e.clone())).collect()
            }
            one if count == 1 => vec![one.into_result()],
            _ => {
                let e = Error::internal(format!("an entry of {count} commands answered as one"));
                (0..count).map(|_| Err(e.clone())).collect()
            }
        }
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of the MDS group.
    pub MdsRaftConfig:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = MdsId,
        Node = MdsNode,
        AsyncRuntime = crate::runtime::MdsAsyncRuntime,
);

/// The Raft handle of one MDS.
pub type MdsRaft = openraft::Raft<MdsRaftConfig>;

/// Where the state machine's effects go: the live state of the local MDS
/// service. Implemented by the service; the Raft state machine calls it
/// from openraft's storage task, never while the service holds its lock
/// across an `.await`.
pub trait StateHost: Send + Sync + 'static {
    /// Applies a committed command. An error means the command was refused
    /// (validation failed) and the state is unchanged.
    fn apply_committed(&self, cmd: Command) -> Result<ApplyOutcome>;
    /// A copy of the current state (for a snapshot).
    fn snapshot_state(&self) -> MdsState;
    /// Replaces the whole state (a snapshot was installed).
    fn install_state(&self, state: MdsState);
}
