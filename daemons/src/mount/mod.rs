//! `pstorage-mount`: the cluster as a local file system through FUSE.
//!
//! - [`ops`]: the file-system operations on inode numbers and handles, with
//!   no FUSE types (leases, inode table, page cache rules, files unlinked
//!   while open), answering plain structs or the core `Error`,
//! - `open_files`: one shared `File` (and lease) per open inode,
//! - [`inodes`]: inode number <-> path,
//! - [`cache`]: the optional local SSD read cache,
//! - [`fs`]: the fuser adapter (`impl Filesystem`): converts arguments and
//!   replies, errors to errno with `ErrorKind::errno`,
//! - [`session`]: the embeddable entry point, [`mount`] -> [`MountHandle`]
//!   (a background FUSE session; no fork, no exit),
//! - [`options`]: the command line ([`MountArgs`]) and `-o` options,
//! - [`daemon`]: [`run`], the `pstorage-mount` binary's logic (checks,
//!   daemonizing, the ready pipe, signals) around [`mount`].

pub mod cache;
pub mod daemon;
mod dir_stats;
pub mod fs;
pub mod inodes;
mod open_files;
pub mod ops;
pub mod options;
pub mod session;

#[cfg(test)]
mod ops_tests;

pub use daemon::run;
pub use ops::{Attr, DirEntry, FsConfig, FsOps, Opened, StatFs};
pub use options::{parse_mount_options, MountArgs, MountOpts};
pub use session::{mount, AclChoice, MountHandle, MountOptions, Unmounter};
