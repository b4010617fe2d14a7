//! The pstorage binaries' logic: the `pstorage` admin CLI and its `bench`
//! command. The binaries in `src/bin/` only parse the process environment
//! and call into here and into `pstorage_rpc::node`.

pub mod bench;
pub mod cli;
pub mod password;
pub mod top;
