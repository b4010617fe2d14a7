//! libpstorage: the C ABI of the pstorage SDK (`include/pstorage.h`).
//!
//! A thin shell over [`pstorage_core::client`]: every exported function
//! checks its arguments, looks its handles up (`handles`), runs the async
//! SDK on the cluster's runtime, and turns the outcome into `0`, a byte
//! count, or `-errno` plus a per-thread message (`error`). Nothing panics
//! across the boundary and no handle the library gets from C is ever
//! dereferenced, so bad input is an error code, not a crash.
//!
//! The header is generated from the `///` docs here by cbindgen
//! (`pstorage-ffi/cbindgen.toml`); `tests/header.rs` fails when the
//! committed header is out of date and rewrites it with
//! `PSTORAGE_BLESS_HEADER=1`.

#![warn(missing_docs)]
// The contract of every pointer argument is spelled out C-style in each
// function's doc (the "Ownership" part), which is what the header shows;
// Rust-style "# Safety" sections would only repeat it.
#![allow(clippy::missing_safety_doc)]

mod aio;
mod args;
mod cluster;
mod error;
mod file;
mod handles;
mod posix;
mod types;

pub use aio::*;
pub use cluster::*;
pub use error::pstorage_last_error;
pub use file::*;
pub use types::*;
