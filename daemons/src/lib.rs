//! The pstorage binaries' logic: the `pstorage` admin CLI and its `bench`
//! command, the NBD server (`pstorage nbd-serve`, [`nbd`]) and
//! `pstorage-mount` (FUSE, [`mount`]). The binaries in `src/bin/` only parse
//! the process environment and call into here and into `pstorage_rpc::node`.

pub mod bench;
pub mod bench_meta;
pub mod cli;
pub mod format;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod mount;
pub mod nbd;
pub mod password;
pub mod top;
