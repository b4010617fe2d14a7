//! pstorage-rpc: the network layer.
pub mod actor;
pub mod control;
pub mod generated;
pub mod mds;
mod wire;

pub use actor::{ClientOptions, Dialer, RpcServerThread, RpcServices};
pub use control::{ControlClient, TcpControlConnector};
pub use mds::MdsClient;

#[cfg(test)]
mod control_rpc_tests;
