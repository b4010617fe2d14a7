//! pstorage-rpc: the network layer.
pub mod generated;
