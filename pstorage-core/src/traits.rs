//! The seams of pstorage (DESIGN.md section 2): every state machine talks to
//! the others only through these traits. `pstorage-rpc` implements them over
//! the network; this crate has in-memory implementations for tests.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::checksums::CheckedBytes;
use crate::error::{Error, ErrorKind, Result};
use crate::types::*;

/// The metadata service as a client sees it (namespace, leases, chunk maps).
///
/// Every method is linearizable: once it returns, every later call from any
/// client observes its effect. Mutations are durable when they return.
#[async_trait]
pub trait MetadataService: Send + Sync {
    /// Opens `path` with a lease. `Write` is exclusive (no other lease of any
    /// mode may exist); `Read` is shared. Errors: `NotFound`, `IsADirectory`,
    /// `Busy` (conflicting lease), `AlreadyExists` (create+exclusive),
    /// `Stale` (`op` was answered before and that answer's lease has ended
    /// since: open again with a new tag).
    ///
    /// `op` names the mutation for exactly-once execution (see
    /// [`OpTag`]); `None` executes every attempt (tests, tools).
    ///
    /// A file it creates gets [`Perms::FILE`]; [`Self::open_with`] gives
    /// others.
    async fn open(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        op: Option<OpTag>,
    ) -> Result<OpenReply> {
        self.open_with(path, mode, flags, Perms::FILE, op).await
    }
    /// [`Self::open`]; a file it creates gets `perms` (a set-group-id
    /// parent directory gives it its group).
    async fn open_with(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<OpenReply>;
    /// Extends a lease by its duration. `Stale` if it expired or was revoked.
    async fn renew(&self, lease: LeaseId) -> Result<()>;
    /// Releases a lease. Idempotent.
    async fn close(&self, lease: LeaseId) -> Result<()>;
    /// Turns read lease `lease` into a write lease in place: same id, its
    /// locks kept. `Busy` while another lease is on the file; a write lease
    /// is answered as it is.
    async fn upgrade_lease(&self, lease: LeaseId) -> Result<OpenReply> {
        Err(no_locks(lease))
    }
    /// Sets or removes (`req.kind` `None`) a byte-range lock on the file
    /// leased by `lease`, held by (`lease`, `req.owner`) until it is
    /// unlocked or the lease ends. `WouldBlock` while another holder's lock
    /// is in the way, `NoLocks` past the bounds.
    async fn set_lock(&self, lease: LeaseId, req: LockRequest) -> Result<()> {
        let _ = req;
        Err(no_locks(lease))
    }
    /// The lock of another holder in the way of `req` (`F_GETLK`), or
    /// `None` if it could be set now.
    async fn test_lock(&self, lease: LeaseId, req: LockRequest) -> Result<Option<HeldLock>> {
        let _ = req;
        Err(no_locks(lease))
    }
    /// Attributes of a file or directory.
    async fn stat(&self, path: &str) -> Result<Stat>;
    /// Creates a directory (and missing parents when `parents`) with
    /// [`Perms::DIR`].
    async fn mkdir(&self, path: &str, parents: bool, op: Option<OpTag>) -> Result<Stat> {
        self.mkdir_with(path, parents, Perms::DIR, op).await
    }
    /// [`Self::mkdir`] with `perms` (a set-group-id parent gives its group
    /// and its set-group-id bit).
    async fn mkdir_with(
        &self,
        path: &str,
        parents: bool,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<Stat>;
    /// Lists a directory, sorted by name.
    async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>>;
    /// One page of [`Self::readdir`]: at most [`DIR_PAGE_ENTRIES`] entries
    /// after the name `after` (from the first with `None`). A listing
    /// taken page by page sees every entry that exists throughout it
    /// exactly once; one added or removed meanwhile may or may not appear
    /// (as POSIX `readdir` allows). What an MDS answers a remote caller, so
    /// that no answer grows with the directory.
    async fn readdir_page(&self, path: &str, after: Option<&str>) -> Result<DirPage> {
        let entries = self.readdir(path).await?;
        Ok(dir_page_after(entries, after))
    }
    /// Removes a name: of a file (its last name only while no lease is
    /// held on it), of any other node, or an empty directory.
    async fn unlink(&self, path: &str, op: Option<OpTag>) -> Result<()>;
    /// Renames a node; replaces an existing node at `to` (a directory only
    /// by an empty directory).
    async fn rename(&self, from: &str, to: &str, op: Option<OpTag>) -> Result<()> {
        self.rename_with(from, to, RenameFlags::default(), op).await
    }
    /// [`Self::rename`] with `renameat2`'s flags: `no_replace` refuses an
    /// existing target (`AlreadyExists`), `exchange` swaps two existing
    /// names atomically.
    async fn rename_with(
        &self,
        from: &str,
        to: &str,
        flags: RenameFlags,
        op: Option<OpTag>,
    ) -> Result<()>;
    /// Creates a node that is not a directory (an empty file, a symbolic
    /// link, a FIFO, a socket, a device node) and returns its attributes.
    /// `AlreadyExists` if the name is taken. The default refuses with
    /// `NotSupported` (implementations without a POSIX namespace: fakes).
    async fn make_node(&self, path: &str, node: NewNode, op: Option<OpTag>) -> Result<Stat> {
        let _ = (node, op);
        Err(not_posix(path))
    }
    /// Gives the node at `from` (not a directory: `PermissionDenied`)
    /// another name `to` (a hard link) and returns its attributes.
    async fn link(&self, from: &str, to: &str, op: Option<OpTag>) -> Result<Stat> {
        let _ = (to, op);
        Err(not_posix(from))
    }
    /// The target of the symbolic link at `path` (`InvalidArgument` for
    /// another kind of node).
    async fn readlink(&self, path: &str) -> Result<String> {
        Err(not_posix(path))
    }
    /// Changes the mode, owners or times of `path` (`chmod`, `chown`,
    /// `utimensat`) and returns its attributes.
    async fn set_stat(&self, path: &str, change: StatChange, op: Option<OpTag>) -> Result<Stat> {
        let _ = (change, op);
        Err(not_posix(path))
    }
    /// The value of an extended attribute (`NoData` if it is not set).
    async fn get_xattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        let _ = name;
        Err(not_posix(path))
    }
    /// The names of the extended attributes of `path`, sorted.
    async fn list_xattrs(&self, path: &str) -> Result<Vec<String>> {
        Err(not_posix(path))
    }
    /// Sets (`value` given) or removes (`None`; `NoData` if it is not set)
    /// an extended attribute. Names: `user.*`, `trusted.*`, `security.*`
    /// (`NotSupported` otherwise); values up to [`MAX_XATTR_VALUE`] bytes,
    /// [`MAX_XATTR_BYTES_PER_NODE`] in all per node (`NoSpace` beyond).
    async fn set_xattr(
        &self,
        path: &str,
        name: &str,
        value: Option<Vec<u8>>,
        how: XattrSet,
        op: Option<OpTag>,
    ) -> Result<()> {
        let _ = (name, value, how, op);
        Err(not_posix(path))
    }
    /// Changes attributes of `path` (and everything below it when `recursive`).
    /// Only future chunks use a changed chunk size.
    async fn set_attr(
        &self,
        path: &str,
        update: AttrUpdate,
        recursive: bool,
        op: Option<OpTag>,
    ) -> Result<()>;
    /// The map of chunk `index` of the leased file. With `allocate` (needs a
    /// write lease) a missing chunk is created on chunk servers chosen by the
    /// placement rules, which know its version before this returns.
    /// `Ok(None)`: the chunk does not exist (reads as zeros).
    async fn chunk_map(
        &self,
        lease: LeaseId,
        index: u64,
        allocate: bool,
    ) -> Result<Option<ChunkMap>>;
    /// Reports a failed replica of a chunk at `version`. The MDS drops it
    /// from the chain, bumps the version on the survivors and returns the new
    /// map (or the current one if the report is outdated). `Unavailable` if
    /// fewer than `replicas_min` replicas remain.
    async fn report_failure(
        &self,
        lease: LeaseId,
        chunk: ChunkId,
        version: MapVersion,
        cs: CsId,
        reason: FailureReason,
    ) -> Result<ChunkMap>;
    /// Records that the file is at least `size` bytes long (after writes
    /// through the lease) and was modified now. Never shrinks the file.
    async fn commit_size(&self, lease: LeaseId, size: u64) -> Result<()>;
    /// Sets the file size; chunks wholly beyond it are released.
    async fn truncate(&self, lease: LeaseId, size: u64) -> Result<()>;
    /// Every chunk map of a file, by index (administration and tests).
    async fn file_chunks(&self, path: &str) -> Result<Vec<ChunkMap>>;
    /// One page of [`Self::file_chunks`]: at most [`CHUNK_MAP_PAGE`] maps of
    /// chunks at index `from` or later.
    async fn file_chunks_page(&self, path: &str, from: u64) -> Result<ChunkMapPage> {
        let maps = self.file_chunks(path).await?;
        let (maps, more) = take_page(maps.into_iter().filter(|m| m.index >= from), CHUNK_MAP_PAGE);
        Ok(ChunkMapPage { maps, more })
    }
    /// Cluster status for `pstorage stat`.
    async fn cluster_status(&self) -> Result<ClusterStatus>;
    /// Every cluster parameter with its value and default (`get-config`).
    async fn get_config(&self) -> Result<Vec<ConfigEntry>>;
    /// Sets a cluster parameter durably (`set-config KEY=VALUE`).
    /// `InvalidArgument` for an unknown key or a value out of range; then
    /// nothing changes.
    async fn set_config(&self, key: &str, value: u64) -> Result<()>;
    /// The global event log: events with a sequence number above
    /// `after_seq`, oldest first (the MDS keeps the most recent 1000).
    async fn event_log(&self, after_seq: u64) -> Result<Vec<Event>>;
    /// Removes a chunk server (`rm-cs`). Graceful (`force == false`): it
    /// gets no new replicas, its chunks are copied to other servers, and it
    /// is dropped once it holds none; this returns when the removal has
    /// started (watch `cluster_status`). `force`: dropped at once, its
    /// chunks are re-replicated from the other copies. `NotFound` for an
    /// unknown server.
    async fn remove_cs(&self, cs: CsId, force: bool) -> Result<()>;
    /// Changes where a chunk server is (location, host), its tier or its
    /// capacity (`make-cs`, `set-cs`); it need not be running. Placement,
    /// re-replication and rebalancing follow the change (a chunk whose
    /// replicas now share a failure domain is moved). `NotFound` for an
    /// unknown server, `PermissionDenied` for a dropped one,
    /// `InvalidArgument` for a bad value. The default refuses with
    /// `InvalidArgument` (implementations without placement: fakes, the
    /// simulator's client).
    async fn set_cs(&self, cs: CsId, update: CsPlacementUpdate) -> Result<()> {
        let _ = update;
        Err(Error::invalid(format!(
            "chunk server {cs}: this metadata service does not keep chunk server placement"
        )))
    }
}

/// The refusal of a POSIX namespace operation by an implementation that
/// keeps only files and directories.
fn no_locks(lease: LeaseId) -> Error {
    Error::new(
        ErrorKind::NotSupported,
        format!("lease {lease}: this metadata service keeps no locks"),
    )
}

fn not_posix(path: &str) -> Error {
    Error::new(
        ErrorKind::NotSupported,
        format!("{path}: this metadata service keeps only files and directories"),
    )
}

/// Membership of the MDS group (the Raft members), for `make-mds`,
/// `rm-mds` and an MDS joining at its first start. Served by the leader
/// (any MDS forwards to it).
#[async_trait]
pub trait MdsGroup: Send + Sync {
    /// Allocates the id of a new MDS (`make-mds` without `-I`). Ids are
    /// never reused, even after `rm-mds`.
    async fn allocate_mds_id(&self) -> Result<MdsId>;
    /// Adds MDS `id` listening at `addr`: first as a non-voting learner
    /// that catches up (from a snapshot if it is far behind), then as a
    /// voter. Returns once it votes. Adding a member again is a no-op.
    /// `InvalidArgument` for an id that was never allocated.
    async fn add_mds(&self, id: MdsId, addr: &str) -> Result<()>;
    /// Removes MDS `id` from the group (it may be the leader: leadership
    /// moves). `NotFound` if it is not a member; `InvalidArgument` for the
    /// last member.
    async fn remove_mds(&self, id: MdsId) -> Result<()>;
    /// The current members (id, address, voter or learner) and the leader
    /// if known. Unlike the other methods, every MDS answers this itself,
    /// from its own Raft state, without forwarding: it works during an
    /// election, but a follower's answer may lag the leader's (see
    /// [`MdsMembership`]). Clients and chunk servers call it to follow the
    /// group (`membership::MemberDirectory`).
    async fn members(&self) -> Result<MdsMembership>;
}

/// The certificates of the cluster's CA as the MDSes record them (store
/// format 11 on): `pstorage certs`, `pstorage revoke`, and the revocation
/// list every node syncs. The MDS that signs a certificate records it
/// first; writes and `certificates` are served by the leader (any MDS
/// forwards), `revoked_serials` by every MDS from its own state.
#[async_trait]
pub trait CertificateRegistry: Send + Sync {
    /// Records a certificate about to be handed out. `AlreadyExists` for a
    /// known serial; `NoSpace` when the table is full.
    async fn record_certificate(&self, record: CertRecord) -> Result<()>;
    /// Revokes, for good, the certificates `which` names: a serial number,
    /// or every unrevoked certificate of a node name. Returns their
    /// records. `NotFound` for a name with none.
    async fn revoke_certificates(&self, which: &str) -> Result<Vec<CertRecord>>;
    /// Every recorded certificate, revoked ones too, by serial.
    async fn certificates(&self) -> Result<Vec<CertRecord>>;
    /// The revoked serials from position `from` of the revocation list.
    async fn revoked_serials(&self, from: u64) -> Result<RevokedSerials>;
    /// Logs a security event (a refused enrollment) in the event log.
    async fn log_security_event(&self, level: EventLevel, message: &str) -> Result<()>;
}

/// The metadata service as a chunk server sees it.
#[async_trait]
pub trait CsRegistry: Send + Sync {
    /// Allocates the id of a new chunk server (`make-cs`).
    async fn allocate_cs_id(&self) -> Result<CsId>;
    /// Called when a chunk server starts or reconnects. It must not serve any
    /// I/O before this returns, and must delete `RegisterReply::delete` first.
    async fn register_cs(&self, registration: CsRegistration) -> Result<RegisterReply>;
    /// Periodic liveness, space and I/O report; the reply carries the
    /// cluster parameters the chunk server applies. `Stale` if the MDS does
    /// not know the server as registered (it restarted): register again.
    async fn heartbeat(&self, cs: CsId, space: SpaceInfo, stats: CsStats)
        -> Result<HeartbeatReply>;
    /// A chunk server reports one of its own replicas as bad (scrubbing
    /// found a checksum mismatch, or a crash may have torn it). The MDS
    /// drops it from the chain (bumping the version) and re-replicates.
    /// Errors: `NotFound` for an unknown chunk server, `PermissionDenied`
    /// for a dropped one; a chunk the MDS does not know (or whose chain does
    /// not name `cs`) is not an error: the replica is simply not used.
    async fn report_bad_replica(
        &self,
        cs: CsId,
        chunk: ChunkId,
        reason: FailureReason,
    ) -> Result<()>;
    /// A chunk server reports blocks of its replica of `chunk` that failed
    /// their CRC check, and later how their repair went. For
    /// [`BlockRepair::Found`] the MDS answers with the chunk's map whose
    /// `replicas` are the members to repair from: the chain without `cs`,
    /// those that can serve now first (empty: the chain has no other
    /// member); the replica stays in the chain. Every report is in the
    /// event log. `Stale` when the chain is not at `report.version` or
    /// does not name `cs` (the replica is not used, or a resync replaces
    /// its blocks anyway); `NotFound`/`PermissionDenied` as for
    /// [`report_bad_replica`](CsRegistry::report_bad_replica);
    /// `InvalidArgument` for more than [`MAX_REPORTED_BLOCKS`]
    /// blocks or none.
    async fn report_bad_blocks(
        &self,
        cs: CsId,
        chunk: ChunkId,
        report: BadBlocks,
    ) -> Result<ChunkMap>;
}

/// What a write carries: bytes, or a range to zero (truncate, NBD TRIM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WritePayload {
    /// These bytes.
    Data(Bytes),
    /// This many bytes of zeros.
    Zeros(u64),
}

impl WritePayload {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            WritePayload::Data(b) => b.len() as u64,
            WritePayload::Zeros(n) => *n,
        }
    }

    /// Whether the payload is 0 bytes long.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The piece CRCs a write of this payload at `offset` carries
    /// ([`crate::checksums`]): none for zeros.
    pub fn crcs(&self, offset: u64) -> Vec<u64> {
        match self {
            WritePayload::Data(data) => crate::checksums::piece_crcs(offset, data),
            WritePayload::Zeros(_) => Vec::new(),
        }
    }
}

/// A chain write: the receiver applies it and forwards it to `chain[0]` with
/// `chain[1..]`; it answers once every replica down the chain has applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRequest {
    /// The chunk written.
    pub chunk: ChunkId,
    /// The map version the writer holds; a replica at another version refuses the write (`Stale`).
    pub version: MapVersion,
    /// Offset within the chunk.
    pub offset: u64,
    /// What is written.
    pub payload: WritePayload,
    /// The rest of the chain after the receiver.
    pub chain: Vec<Replica>,
    /// The CRC-64 of each piece of a `Data` payload as the client computed
    /// them ([`crate::checksums`]); every chunk server checks them before
    /// taking the write and forwards them unchanged. Empty for `Zeros`.
    pub crcs: Vec<u64>,
}

impl WriteRequest {
    /// A write with the CRCs of its payload computed here (the client).
    pub fn new(
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        payload: WritePayload,
        chain: Vec<Replica>,
    ) -> WriteRequest {
        let crcs = payload.crcs(offset);
        WriteRequest {
            chunk,
            version,
            offset,
            payload,
            chain,
            crcs,
        }
    }
}

/// A failed chain write: which replica failed and why.
///
/// `failed_cs == None` means the receiver itself failed; a chunk server that
/// forwards a write turns a downstream `None` into `Some(next.cs)` and passes
/// `Some(_)` through unchanged, so the client always learns which replica to
/// report to the MDS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ReplicaError {
    /// The chunk server whose replica failed (`None`: the receiver itself).
    pub failed_cs: Option<CsId>,
    /// What failed.
    pub error: crate::error::Error,
}

impl ReplicaError {
    /// The receiver itself failed.
    pub fn local(error: crate::error::Error) -> ReplicaError {
        ReplicaError {
            failed_cs: None,
            error,
        }
    }

    /// Seen from the sender to `receiver`: which replica failed.
    pub fn failed_replica(&self, receiver: CsId) -> CsId {
        self.failed_cs.unwrap_or(receiver)
    }
}

/// The data path of one chunk server (client -> CS, CS -> CS).
///
/// Every call carries the map version the caller believes current; a chunk
/// server whose version differs answers `Stale` and does nothing.
#[async_trait]
pub trait ChunkService: Send + Sync {
    /// Applies a write here and down the chain. Errors name the replica
    /// that failed (`Unavailable` for an unreachable one, `TimedOut` for
    /// one that did not answer within its share of the chain's deadline).
    async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError>;
    /// Reads `len` bytes at `offset`, verifying block checksums
    /// (`Corrupt` on a mismatch). Unwritten ranges read as zeros. The data
    /// comes with its piece CRCs ([`crate::checksums`]): check them with
    /// [`CheckedBytes::verified`] before using it.
    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<CheckedBytes>;
    /// [`read`](ChunkService::read) with its piece CRCs checked: the data,
    /// or `Checksum` if it changed on its way here.
    async fn read_verified(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        self.read(chunk, version, offset, len)
            .await?
            .verified(chunk, offset)
    }
    /// Makes every write applied so far durable on this replica.
    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()>;
    /// The CRC-table entries of the 4 KiB blocks of `[offset, offset +
    /// len)`, in order: `0` for a block never written (or zeroed), which
    /// reads as zeros; otherwise the block's CRC-64 as the chunk format
    /// stores it ([`encode_block_crc`](crate::chunk::encode_block_crc)).
    /// Two replicas whose entries for a block are equal hold the same bytes
    /// there (up to a CRC-64 collision). Version-checked like `read`.
    /// `offset` and `len` must be multiples of [`BLOCK_SIZE`] and `len` at
    /// most [`MAX_BLOCK_CRCS`] blocks (`InvalidArgument` otherwise): callers
    /// page through larger chunks.
    async fn block_crcs(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u64>>;
}

/// Control operations the MDS performs on a chunk server.
#[async_trait]
pub trait ChunkControl: Send + Sync {
    /// Creates an empty replica at `version` (idempotent for the same version).
    async fn create_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
    ) -> Result<()>;
    /// Moves a replica to a newer `version` (durably). `Stale` if the replica
    /// is already newer; `NotFound` if absent.
    async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()>;
    /// [`set_version`](ChunkControl::set_version) for a replica no chain
    /// names, lent as the source of a block repair by the chain's only
    /// member: its reads (`read`, `block_crcs`) are served at `version`
    /// even while a copy into it is unfinished (the blocks a repair asks
    /// for are those its reporter cannot read, which no copy from the
    /// reporter wrote). The loan ends when the replica's version changes.
    async fn lend_for_repair(&self, chunk: ChunkId, version: MapVersion) -> Result<()>;
    /// Zeroes the replica of `chunk` from `offset` to its end and flushes
    /// it, if it is at `version` (`Stale` otherwise; `NotFound` if absent;
    /// `InvalidArgument` beyond the chunk). The fence discards with it what
    /// a lost writer wrote beyond the size it committed, so that bytes
    /// beyond a file's size read zeros when it grows.
    async fn zero_tail(&self, chunk: ChunkId, version: MapVersion, offset: u64) -> Result<()>;
    /// Deletes a replica. Idempotent.
    async fn delete_chunk(&self, chunk: ChunkId) -> Result<()>;
    /// Every replica held, with its version.
    async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>>;
    /// One page of [`Self::list_chunks`]: at most [`REPLICA_PAGE`] replicas
    /// of chunks `from` or later, by chunk id.
    async fn list_chunks_page(&self, from: ChunkId) -> Result<ReplicaPage> {
        let mut replicas = self.list_chunks().await?;
        replicas.retain(|r| r.chunk >= from);
        replicas.sort_unstable_by_key(|r| r.chunk);
        let (replicas, more) = take_page(replicas, REPLICA_PAGE);
        Ok(ReplicaPage { replicas, more })
    }
    /// Makes this chunk server hold a replica of `chunk` identical to
    /// `source`'s (a replica at `version`, quiescent while this runs), and
    /// sets it to `version` durably (flushed first) before returning.
    ///
    /// Only what differs is copied: the source's CRC table (paged
    /// [`ChunkService::block_crcs`]) is compared with the base's, blocks
    /// whose entries differ are read from the source (verified by their
    /// CRCs) and written here, blocks the source never wrote are zeroed
    /// here. The base is, in order of preference: a replica of `chunk` held
    /// here at a version up to `version` (a replica that fell behind, out of
    /// every chain while this runs: updated in place, its version set only
    /// at the end, so a crash leaves it stale, never wrong), a partial copy
    /// left by an earlier interrupted call (resumed), or an empty replica.
    /// The bytes read from the source are paced at `rate_bytes_per_s` (0 =
    /// unlimited).
    ///
    /// There is no deadline on the whole copy, only on progress: a request
    /// to the source that gets no answer within the chunk server's progress
    /// timeout fails the copy with `TimedOut`; [`copy_progress`] shows how
    /// far it got. A failed copy keeps what it copied for a later call (see
    /// the chunk server's documentation for bounds), never served or listed.
    ///
    /// Errors: `Stale` if a replica held here is newer than `version` (or
    /// the source is not at `version`), `Busy` if a copy of `chunk` is
    /// already running here, `InvalidArgument` for a bad chunk size or
    /// `source` being this chunk server; otherwise the source's or the local
    /// store's error.
    ///
    /// [`copy_progress`]: ChunkControl::copy_progress
    async fn replicate_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: Replica,
        rate_bytes_per_s: u64,
    ) -> Result<CopyStats>;
    /// The copy of `chunk` running here ([`replicate_chunk`]), if any.
    ///
    /// [`replicate_chunk`]: ChunkControl::replicate_chunk
    async fn copy_progress(&self, chunk: ChunkId) -> Result<Option<CopyProgress>>;
    /// Answers at once, touching no disk, while the chunk server serves its
    /// data path; `Unavailable` while it does not (not registered, fenced).
    /// The MDS's probe before it drops a replica a client reported
    /// unreachable: the caller bounds it with its own deadline.
    async fn ping(&self) -> Result<()>;
}

/// Opens (or reuses) data-path connections to chunk servers.
#[async_trait]
pub trait ChunkConnector: Send + Sync {
    /// A data-path client of the chunk server at `addr` (`host:port`).
    async fn chunk_service(&self, addr: &str) -> Result<Arc<dyn ChunkService>>;
}

/// Opens (or reuses) control connections to chunk servers.
#[async_trait]
pub trait ControlConnector: Send + Sync {
    /// A control client of the chunk server at `addr` (`host:port`).
    async fn chunk_control(&self, addr: &str) -> Result<Arc<dyn ChunkControl>>;
}

/// Time, injectable for deterministic tests: the wall clock, and a
/// monotonic clock that never steps.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch. It can step forward or back at any
    /// moment (NTP, an operator): use it to stamp times people read, never
    /// to measure how long something took.
    fn now_ms(&self) -> u64;

    /// Milliseconds on a clock that only moves forward at the rate of real
    /// time (`CLOCK_MONOTONIC`) from an arbitrary origin: durations and
    /// deadlines.
    fn monotonic_ms(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn monotonic_ms(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
    }
}

/// A clock that only moves when told to (tests, simulation).
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: std::sync::atomic::AtomicU64,
    monotonic_ms: std::sync::atomic::AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ms` (ms since the epoch) until advanced.
    pub fn new(start_ms: u64) -> ManualClock {
        ManualClock {
            now_ms: std::sync::atomic::AtomicU64::new(start_ms),
            monotonic_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Time passes: both clocks move forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now_ms
            .fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
        self.monotonic_ms
            .fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// The wall clock is stepped by `ms` (forward or back); no time passes.
    pub fn step(&self, ms: i64) {
        let _ = self.now_ms.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |now| Some(now.saturating_add_signed(ms)),
        );
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The page of `entries` (sorted by name) after the name `after`: at most
/// [`DIR_PAGE_ENTRIES`], and whether more follow.
pub fn dir_page_after(entries: Vec<DirEntry>, after: Option<&str>) -> DirPage {
    let rest = entries
        .into_iter()
        .filter(|e| after.is_none_or(|a| e.name.as_str() > a));
    let (entries, more) = take_page(rest, DIR_PAGE_ENTRIES);
    DirPage { entries, more }
}
