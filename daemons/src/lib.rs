//! The pstorage binaries' logic: the `pstorage` admin CLI, its `bench`
//! command and the NBD server (`nbd-serve`). The binaries in `src/bin/` only parse the process environment
//! and call into here and into `pstorage_rpc::node`.

pub mod bench;
pub mod cli;
pub mod nbd;
pub mod password;
