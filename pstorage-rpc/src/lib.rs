//! pstorage-rpc: the network layer.
