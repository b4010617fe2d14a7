//! pstorage-rpc: the network layer.

pub mod auth;
pub mod data;
