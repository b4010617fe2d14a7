//! The client side of pstorage: namespace operations and file I/O with
//! strong consistency, retries and failover (DESIGN.md section 5).
//!
//! Everything here is written against the seams in [`crate::traits`]: a
//! [`MetadataService`] for the namespace, leases and chunk maps, and a
//! [`ChunkConnector`] that hands out [`crate::traits::ChunkService`]s for the
//! data path. `pstorage-rpc` supplies network implementations; the unit tests
//! (`tests.rs`) run against in-memory fakes (`fakes.rs`, test-only).
//!
//! The async API is [`Client`] and [`File`]; [`blocking`] mirrors it for
//! callers without a runtime (C ABI, Python, CLI).
//!
//! Threads and tasks: the async API spawns one tokio task per open file (lease
//! renewal) and short-lived tasks that report bad replicas found by reads;
//! both need a tokio runtime with the time driver enabled.

pub mod blocking;
mod file;
mod map_cache;
mod namespace;
mod op_tags;
mod released;
mod retry;
mod unflushed;
mod verify;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod freeze_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::traits::{ChunkConnector, MetadataService};
use crate::types::{
    AttrUpdate, ChunkMap, ClusterStatus, DirEntry, FileAttrs, InodeKind, LeaseMode, OpTag,
    OpenFlags, Perms, Stat, MAX_IO_SIZE,
};

pub use file::{first_replica_to_read, File, READ_STRIPE};
pub use verify::{ProblemKind, VerifyProblem, VerifyReport};

/// Tunables of a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long one read, write, flush or metadata call keeps retrying while
    /// replicas are below `replicas_min`, unreachable or the MDS is
    /// unavailable, before it fails with the last cause. Default 60 s.
    pub io_timeout: Duration,
    /// Largest piece a read or write is split into on the wire (pieces never
    /// cross a chunk boundary). Clamped to `1..=MAX_IO_SIZE`. Default 4 MiB.
    pub max_piece_bytes: u64,
    /// First pause between retries; doubles up to `retry_backoff_max`.
    /// Default 100 ms.
    pub retry_backoff_min: Duration,
    /// Longest pause between retries. Default 1 s.
    pub retry_backoff_max: Duration,
    /// Acknowledged but unflushed write data a file keeps for replay (see
    /// docs/design.md, "Unflushed writes"): a write that leaves more than
    /// half of this held starts a flush in the background; one that leaves
    /// more than this flushes the file before it returns. Default 64 MiB.
    pub max_unflushed_bytes: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            io_timeout: Duration::from_secs(60),
            max_piece_bytes: 4 << 20,
            retry_backoff_min: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            max_unflushed_bytes: 64 << 20,
        }
    }
}

impl ClientOptions {
    /// The piece size actually used: `max_piece_bytes` within `1..=MAX_IO_SIZE`.
    pub(crate) fn piece_bytes(&self) -> u64 {
        self.max_piece_bytes.clamp(1, MAX_IO_SIZE)
    }
}

/// Shared state of a client and every file it opened.
pub(crate) struct ClientShared {
    pub(crate) mds: Arc<dyn MetadataService>,
    pub(crate) chunks: Arc<dyn ChunkConnector>,
    pub(crate) options: ClientOptions,
    /// Tags namespace mutations for exactly-once execution at the MDS.
    pub(crate) ops: op_tags::OpTagger,
    /// The leases this client released lately (sent again when a call of
    /// its own is refused `Busy`).
    pub(crate) released: released::Released,
}

/// A connection to one cluster: namespace operations and [`File`]s.
///
/// Cheap to clone (an `Arc` inside); every clone talks to the same services.
/// All methods take `&self` and may run concurrently.
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client over the given metadata service and chunk-server connector.
    pub fn new(
        mds: Arc<dyn MetadataService>,
        chunks: Arc<dyn ChunkConnector>,
        options: ClientOptions,
    ) -> Client {
        Client {
            shared: Arc::new(ClientShared {
                mds,
                chunks,
                options,
                ops: op_tags::OpTagger::new(),
                released: released::Released::default(),
            }),
        }
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.shared.options
    }

    /// The metadata service this client talks to (administration tools).
    pub fn mds(&self) -> &Arc<dyn MetadataService> {
        &self.shared.mds
    }

    /// Creates a directory (and its missing parents when `parents`).
    /// Errors: `AlreadyExists`, `NotFound` (missing parent), `NotADirectory`.
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<Stat> {
        let mds = &self.shared.mds;
        self.mutate("mkdir", path, |op| mds.mkdir(path, parents, Some(op)))
            .await
    }

    /// Runs a metadata call, waiting out transient errors (an MDS fail-over,
    /// a leader election) up to `io_timeout`.
    async fn meta<'a, T, F, Fut>(&'a self, what: &str, path: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let mut retry = retry::Retry::new(&self.shared.options);
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::TimedOut) => {
                    if !retry.wait().await {
                        return Err(e.context(format!(
                            "{what} {path}: the metadata service did not answer within {:.1} s",
                            retry.elapsed().as_secs_f64()
                        )));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Client::meta`] for a namespace mutation: every attempt carries the
    /// same [`OpTag`], so the MDS executes it once and a repeated attempt
    /// gets the first one's answer, refusals included (no guessing whether
    /// a lost answer took effect). Once one attempt has executed, a late one
    /// changes nothing; if none had when this returns (every attempt lost),
    /// a late one may still execute until the next mutation of this client
    /// tells the MDS the operation ended, which a caller that got
    /// `Unavailable`/`TimedOut` must allow for anyway.
    async fn mutate<'a, T, F, Fut>(&'a self, what: &str, path: &str, mut call: F) -> Result<T>
    where
        F: FnMut(OpTag) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let ticket = self.shared.ops.begin();
        let result = self.meta(what, path, || call(ticket.tag())).await;
        drop(ticket);
        match result {
            // Maybe by a lease this client released, whose release a
            // fail-over lost (the MDS answers a release before it commits):
            // send those again, and try once more as a new operation (the
            // refusal is the first one's answer for good).
            Err(e) if e.kind() == ErrorKind::Busy => {
                let again = self.shared.released.take();
                if again.is_empty() {
                    return Err(e);
                }
                let mds = &self.shared.mds;
                futures::future::join_all(again.into_iter().map(|lease| mds.close(lease))).await;
                let ticket = self.shared.ops.begin();
                let result = self.meta(what, path, || call(ticket.tag())).await;
                drop(ticket);
                result
            }
            other => other,
        }
    }

    /// Lists a directory, sorted by name. Errors: `NotFound`, `NotADirectory`.
    pub async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let mds = &self.shared.mds;
        self.meta("readdir", path, || mds.readdir(path)).await
    }

    /// Attributes of a file or directory, as committed at the MDS (a file
    /// open for writing elsewhere may be longer than this says until it
    /// flushes). Errors: `NotFound`.
    pub async fn stat(&self, path: &str) -> Result<Stat> {
        let mds = &self.shared.mds;
        self.meta("stat", path, || mds.stat(path)).await
    }

    /// Whether `path` exists. Errors other than `NotFound` are returned.
    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a file (nobody may hold a lease on it) or an empty directory.
    pub async fn unlink(&self, path: &str) -> Result<()> {
        let mds = &self.shared.mds;
        self.mutate("unlink", path, |op| mds.unlink(path, Some(op)))
            .await
    }

    /// Renames a file or directory, replacing an existing file at `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let mds = &self.shared.mds;
        self.mutate("rename", from, |op| mds.rename(from, to, Some(op)))
            .await
    }

    /// Changes attributes of `path` (and everything below it when
    /// `recursive`). A changed chunk size applies to files created later.
    pub async fn set_attr(&self, path: &str, update: AttrUpdate, recursive: bool) -> Result<()> {
        if let Some(r) = update.replicas {
            r.validate()?;
        }
        if let Some(c) = update.chunk_size {
            crate::types::validate_chunk_size(c)?;
        }
        let mds = &self.shared.mds;
        self.mutate("set-attr", path, |op| {
            mds.set_attr(path, update, recursive, Some(op))
        })
        .await
    }

    /// The attributes (replicas, chunk size) of a file or directory.
    pub async fn get_attr(&self, path: &str) -> Result<FileAttrs> {
        Ok(self.stat(path).await?.attrs)
    }

    /// Every chunk map of a file, by index (administration and tests).
    pub async fn file_chunks(&self, path: &str) -> Result<Vec<ChunkMap>> {
        let mds = &self.shared.mds;
        self.meta("chunks", path, || mds.file_chunks(path)).await
    }

    /// Cluster status as `pstorage stat` shows it.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.shared.mds.cluster_status().await
    }

    /// Opens a file with a lease: `Write` is exclusive and needed for
    /// writes, truncate, flush and `flags.create`/`flags.truncate`; `Read`
    /// is shared. The lease is renewed in the background until the
    /// [`File`] is closed or its last clone dropped.
    ///
    /// Errors: `NotFound`, `IsADirectory`, `Busy` (another client's lease
    /// conflicts), `AlreadyExists` (create + exclusive), `InvalidArgument`.
    /// Must be called within a tokio runtime.
    pub async fn open(&self, path: &str, mode: LeaseMode, flags: OpenFlags) -> Result<File> {
        self.open_with(path, mode, flags, Perms::FILE).await
    }

    /// [`Client::open`]; a file it creates gets `perms` (a set-group-id
    /// parent directory gives it its group).
    pub async fn open_with(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
    ) -> Result<File> {
        perms.validate()?;
        if (flags.create || flags.truncate) && mode != LeaseMode::Write {
            return Err(Error::invalid(format!(
                "opening {path} with create or truncate needs a write lease; open it with LeaseMode::Write"
            )));
        }
        let mds = &self.shared.mds;
        let mut replayed_ended = 0;
        let reply = loop {
            let result = self
                .mutate("open", path, |op| {
                    mds.open_with(path, mode, flags, perms, Some(op))
                })
                .await;
            match result {
                // An attempt whose answer was lost was granted a lease that
                // has ended since: open again as a new operation.
                Err(e) if e.kind() == ErrorKind::Stale && replayed_ended < 3 => {
                    replayed_ended += 1;
                }
                other => break other?,
            }
        };
        if reply.stat.kind != InodeKind::File {
            // The MDS should have refused; do not leak its lease either way.
            let _ = self.shared.mds.close(reply.lease.id).await;
            return Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path} is a directory; only files can be opened"),
            ));
        }
        if reply.lease.mode != mode {
            let _ = self.shared.mds.close(reply.lease.id).await;
            return Err(Error::protocol(format!(
                "the MDS granted a {:?} lease on {path} when {mode:?} was asked for",
                reply.lease.mode
            )));
        }
        if let Err(e) = crate::types::validate_chunk_size(reply.stat.attrs.chunk_size) {
            let _ = self.shared.mds.close(reply.lease.id).await;
            return Err(e.context(format!("the MDS returned bad attributes for {path}")));
        }
        Ok(File::opened(self.shared.clone(), path.to_string(), reply))
    }
}
