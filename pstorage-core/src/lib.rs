//! pstorage-core: the data model, the MDS state machine, the chunk store and
//! the client logic of pstorage. No network code lives here: every component
//! talks to the others through the traits in [`traits`], which
//! `pstorage-rpc` implements over the network and this crate implements
//! in memory for tests.

#![warn(missing_docs)]

pub mod checksums;
pub mod chunk;
pub mod client;
pub mod conf;
pub mod conformance;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod mds;
pub mod membership;
pub mod posix;
pub mod private_files;
pub mod runtime;
pub mod traits;
pub mod types;

pub use error::{Error, ErrorKind, Result};
