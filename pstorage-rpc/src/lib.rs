//! pstorage-rpc: the network layer of pstorage.
//!
//! * [`auth`]: the handshake every connection starts with (cluster key
//!   challenge-response, then the channel that follows).
//! * [`data`]: the framed data path (client -> CS, CS -> CS).
//! * [`mds`], [`control`], [`actor`]: the Cap'n Proto control RPC (MDS and
//!   chunk-server control), schema in `schema/pstorage.capnp`.
//! * [`raft`]: Raft messages between MDSes ([`TcpRaftNetwork`]), and
//!   [`router`]: any MDS forwards calls to the Raft leader ([`LeaderRouter`]).
//! * [`node`]: running the MDS and CS services and connecting clients.
//! * [`local`]: a whole cluster inside the calling process, for the tests
//!   of programs that embed pstorage ([`local::LocalCluster`]).

#![warn(missing_docs)]

pub mod actor;
pub mod auth;
pub mod call_metrics;
pub mod control;
pub mod data;
pub mod enroll;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod generated;
pub mod local;
pub mod mds;
pub mod metrics;
pub mod node;
pub mod node_stream;
pub mod pki;
pub mod raft;
mod registration;
pub mod revocation;
pub mod roles;
pub mod router;
pub mod tls;
mod wire;
pub use wire::JoinSecretsReply;

pub use actor::{ClientOptions, Dialer, RpcServerThread, RpcServices};
pub use control::{ControlClient, TcpControlConnector};
pub use mds::MdsClient;
pub use raft::{RaftNetworkOptions, TcpRaftNetwork};
pub use router::{LeaderRouter, RouterOptions};

#[cfg(test)]
mod conformance_tests;
#[cfg(test)]
mod control_rpc_tests;
#[cfg(test)]
mod raft_tests;
#[cfg(test)]
mod raft_wire_tripwire;
