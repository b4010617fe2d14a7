//! The MDS state machine: namespace, chunk maps, chunk server registry and
//! leases, changed only by [`MdsState::apply`] of a [`Command`].
//!
//! `apply` is deterministic: time comes only from the command's fields, ids
//! come from counters inside the state, there is no I/O and no randomness.
//! Two states that applied the same commands in the same order are equal,
//! which is what the store's replay and (later) Raft replication rely on.
//! Every command is validated completely before anything changes, so a
//! failed `apply` leaves the state untouched.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::certs::CertTable;
use super::chunk_index::{class_of, ChunkIndex, LazyIndex};
use super::locks::LockTable;
use super::params::ClusterParams;
use super::sessions::{OpReply, Seen, Sessions};
use crate::error::{Error, ErrorKind, Result};
use crate::types::*;

/// The event log keeps this many most recent events.
pub const MAX_EVENTS: usize = 1000;

/// One node of the namespace: a file, directory, symbolic link, FIFO,
/// socket or device node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// Its id; never reused.
    pub ino: InodeId,
    /// What it is.
    pub kind: InodeKind,
    /// The directory holding its first name; the root is its own parent.
    pub parent: InodeId,
    /// Its first name in `parent` (empty for the root).
    pub name: String,
    /// Its other names, (directory, name): the hard links of a
    /// non-directory. `nlink` is one more than their number.
    pub links: BTreeSet<(InodeId, String)>,
    /// Directory entries by name (directories only).
    pub children: BTreeMap<String, InodeId>,
    /// How many of `children` are directories (its `nlink` is 2 more).
    pub subdirs: u32,
    /// File size in bytes (0 for directories; a symbolic link's target
    /// length).
    pub size: u64,
    /// Permission bits and owners.
    pub perms: Perms,
    /// The device of a device node (0 otherwise).
    pub rdev: u64,
    /// A symbolic link's target (empty otherwise).
    pub target: String,
    /// Last access the cluster recorded.
    pub atime: Timestamp,
    /// Last data change (commit_size, truncate) or entry change (dirs).
    pub mtime: Timestamp,
    /// Last data or attribute change.
    pub ctime: Timestamp,
    /// Extended attributes by name (bounded by [`MAX_XATTR_BYTES_PER_NODE`]).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Replication and chunk size; copied from the parent at creation.
    pub attrs: FileAttrs,
    /// Chunk index -> chunk id (files only). Missing indexes read as zeros.
    pub chunks: BTreeMap<u64, ChunkId>,
    /// A write lease on this file expired without a close: the versions of
    /// its chunks must be bumped (fencing the old holder) before any new
    /// lease is granted.
    pub fence_pending: bool,
}

impl Inode {
    /// The link count `stat` reports.
    pub fn nlink(&self) -> u32 {
        if self.kind == InodeKind::Dir {
            self.subdirs.saturating_add(2)
        } else {
            u32::try_from(self.links.len())
                .unwrap_or(u32::MAX)
                .saturating_add(1)
        }
    }

    /// Every name it has, (directory, name), the first one first.
    pub fn names(&self) -> impl Iterator<Item = (InodeId, &str)> {
        std::iter::once((self.parent, self.name.as_str()))
            .chain(self.links.iter().map(|(p, n)| (*p, n.as_str())))
    }

    /// Bytes its extended attributes hold (names and values).
    fn xattr_bytes(&self) -> usize {
        self.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// The most names one node may have (`link` beyond it is `TooManyLinks`).
pub const MAX_LINKS: u32 = 65_000;

/// One chunk: where it belongs and where its replicas live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// The file it belongs to.
    pub file: InodeId,
    /// Its index in that file.
    pub index: u64,
    /// Only ever grows.
    pub version: MapVersion,
    /// The chain, head first; never empty, no duplicates.
    pub replicas: Vec<CsId>,
}

/// A chunk server as persisted by the MDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsRecord {
    /// Its id, from [`Command::AllocateCsId`].
    pub id: CsId,
    /// Its data/control address, `host:port` (empty until it first registers).
    pub addr: String,
    /// Removed by the administrator: never placed on again.
    pub dropped: bool,
    /// Being removed gracefully (`rm-cs`): gets no new replicas and its
    /// replicas do not count towards `replicas_norm`, so they are copied
    /// elsewhere; dropped once it holds none.
    pub releasing: bool,
    /// Where it is, `ROOM.ROW.RACK` (`make-cs --location`, `set-cs`).
    pub location: String,
    /// The host it runs on; empty for a server made before store format 4
    /// (it then counts as a host of its own).
    pub host: String,
    /// Its storage tier (0..=[`MAX_TIER`]).
    pub tier: u8,
    /// Bytes it may fill (`make-cs --capacity`); 0 = its file system's size.
    pub capacity_bytes: u64,
}

impl CsRecord {
    /// A record for a new chunk server: default location, unknown host,
    /// tier 0, the file system's size.
    pub fn new(id: CsId) -> CsRecord {
        CsRecord {
            id,
            addr: String::new(),
            dropped: false,
            releasing: false,
            location: DEFAULT_LOCATION.to_string(),
            host: String::new(),
            tier: 0,
            capacity_bytes: 0,
        }
    }
}

/// [`AttrUpdate`] of store formats 1 to 3, as [`Command::SetAttrV3`] holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrUpdateV3 {
    pub replicas: Option<Replicas>,
    pub chunk_size: Option<u64>,
}

impl From<AttrUpdateV3> for AttrUpdate {
    fn from(u: AttrUpdateV3) -> AttrUpdate {
        AttrUpdate {
            replicas: u.replicas,
            chunk_size: u.chunk_size,
            ..AttrUpdate::default()
        }
    }
}

/// An event to append to the log (the state numbers and timestamps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    pub kind: EventKind,
    pub level: EventLevel,
    pub message: String,
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Its id; never reused.
    pub id: LeaseId,
    /// The leased file.
    pub ino: InodeId,
    /// Shared read or exclusive write.
    pub mode: LeaseMode,
    /// How far each renewal extends it, in ms.
    pub duration_ms: u64,
    /// The lease is live while `now_ms <= expires_ms`.
    pub expires_ms: u64,
}

impl LeaseRecord {
    /// Whether the lease still holds at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_ms >= now_ms
    }
}

/// A change to the MDS state. Every field the change depends on (time,
/// chosen chunk id and replicas) is in the command, so applying it is
/// deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a directory (and missing parents with `parents`) with
    /// `perms` (store format 9 on; older entries read as
    /// [`Perms::LEGACY_DIR`]).
    Mkdir {
        path: String,
        parents: bool,
        perms: Perms,
        now_ms: u64,
    },
    /// Opens a file with a new lease, creating (with `perms`; older entries
    /// read as [`Perms::LEGACY_FILE`]) and/or truncating it per `flags`.
    /// Refused while fencing of the file is pending.
    Open {
        path: String,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        now_ms: u64,
        lease_duration_ms: u64,
    },
    /// Removes a name: of a file (its last name only when no live lease
    /// holds it), another node or an empty directory.
    Unlink { path: String, now_ms: u64 },
    /// Renames; replaces an existing node (or empty directory) at `to`
    /// unless `flags` say otherwise (store format 9 on; older entries read
    /// with no flags).
    Rename {
        from: String,
        to: String,
        flags: RenameFlags,
        now_ms: u64,
    },
    /// [`Command::SetAttr`] as store formats 1 to 3 wrote it (before tiers
    /// and failure domains); applies like it.
    SetAttrV3 {
        path: String,
        update: AttrUpdateV3,
        recursive: bool,
        now_ms: u64,
    },
    /// Extends a live lease by its duration from `now_ms`.
    RenewLease { lease: LeaseId, now_ms: u64 },
    /// Releases a lease (no-op if unknown). An already expired write lease
    /// marks its file for fencing.
    ReleaseLease { lease: LeaseId, now_ms: u64 },
    /// Drops every lease that expired before `now_ms`; files whose write
    /// lease expired get `fence_pending`.
    ExpireLeases { now_ms: u64 },
    /// Records a new chunk, already created on `replicas`, at `index` of the
    /// file leased (for writing) by `lease`.
    AllocateChunk {
        lease: LeaseId,
        index: u64,
        chunk: ChunkId,
        version: MapVersion,
        replicas: Vec<CsId>,
        now_ms: u64,
    },
    /// Sets a chunk's chain at a strictly newer version.
    UpdateChunkMap {
        chunk: ChunkId,
        version: MapVersion,
        replicas: Vec<CsId>,
    },
    /// Bumps the version of every chunk of the file and clears its
    /// `fence_pending` (what the MDS logged up to store format 4; it now
    /// logs `BeginFence` and `FinishFence`, and old entries replay as
    /// they were applied).
    FenceFile { ino: InodeId },
    /// Grows the size of the file leased by `lease` to at least `size` and
    /// sets its mtime.
    CommitSize {
        lease: LeaseId,
        size: u64,
        now_ms: u64,
    },
    /// Sets the size of the file leased by `lease`; drops chunks wholly at
    /// or beyond it.
    Truncate {
        lease: LeaseId,
        size: u64,
        now_ms: u64,
    },
    /// Allocates a new chunk server id.
    AllocateCsId,
    /// Records the address of a chunk server.
    SetCsAddr { cs: CsId, addr: String },
    /// Marks a chunk server as removed by the administrator.
    DropCs { cs: CsId },
    // Appended in store format 2 (only ever append variants: the log
    // stores their index).
    /// Sets a cluster parameter (validated against its range) and logs it.
    SetParam {
        key: String,
        value: u64,
        now_ms: u64,
    },
    /// Appends events to the global event log.
    LogEvents { now_ms: u64, events: Vec<NewEvent> },
    /// Appends `added` (each already holding a current copy) to the tail
    /// of the chunk's chain at its current `version` (re-replication).
    ExtendChain {
        chunk: ChunkId,
        version: MapVersion,
        added: Vec<CsId>,
    },
    /// Starts (or cancels) the graceful removal of a chunk server.
    SetCsReleasing {
        cs: CsId,
        releasing: bool,
        now_ms: u64,
    },
    // Appended in store format 3.
    /// Allocates a new MDS id (a Raft member id; never reused).
    AllocateMdsId,
    // Appended in store format 4.
    /// Changes attributes of `path` (and its subtree with `recursive`).
    SetAttr {
        path: String,
        update: AttrUpdate,
        recursive: bool,
        now_ms: u64,
    },
    /// Changes a chunk server's location, host, tier or capacity (the
    /// server need not have registered yet) and logs the change.
    SetCsPlacement {
        cs: CsId,
        update: CsPlacementUpdate,
        now_ms: u64,
    },
    // Appended in store format 5.
    /// Bumps the version of every chunk of the file (its lost writer's
    /// writes are refused from then on); its `fence_pending` stays set
    /// until `FinishFence`, so an MDS that stops between the two fences
    /// the file again at the next open.
    BeginFence { ino: InodeId },
    /// Clears the file's `fence_pending` once its chunks were fenced
    /// (`BeginFence`) and every chain brought to one content: the file
    /// can be opened again.
    FinishFence { ino: InodeId },
    // Appended in store format 6.
    /// A namespace mutation (`Mkdir`, `Open`, `Unlink`, `Rename`,
    /// `SetAttr`) tagged by its client so it executes at most once (see
    /// [`super::sessions`]). A repeated attempt replays the first one's
    /// answer; one whose client already ended it is refused `Stale`.
    Tagged {
        op: OpTag,
        now_ms: u64,
        cmd: Box<Command>,
    },
    // Appended in store format 7.
    /// Sets every lease to expire one duration after `now_ms`: the first
    /// command of a new leader (store format 7), whose clock may disagree
    /// with its predecessor's. Leases are measured on the leader's clock; a
    /// lease granted on another one lasts one whole duration on this one,
    /// so a leader whose clock is ahead revokes nobody at once, and one
    /// whose clock is behind keeps a dead client's lease no longer.
    RefreshLeases { now_ms: u64 },
    // Appended in store format 9.
    /// Creates a node that is not a directory: an empty file, a symbolic
    /// link, a FIFO, a socket or a device node.
    MakeNode {
        path: String,
        node: NewNode,
        now_ms: u64,
    },
    /// Gives the node at `from` (not a directory) another name, `to`.
    Link {
        from: String,
        to: String,
        now_ms: u64,
    },
    /// Changes POSIX attributes: mode, owners, times.
    SetStat {
        path: String,
        change: StatChange,
        now_ms: u64,
    },
    /// Sets (`value` given) or removes an extended attribute.
    SetXattr {
        path: String,
        name: String,
        value: Option<Vec<u8>>,
        how: XattrSet,
        now_ms: u64,
    },
    /// Sets or removes a byte-range lock of the file leased by `lease`,
    /// held by (`lease`, `req.owner`) (store format 10 on). Refused
    /// `WouldBlock` while another holder's lock is in the way.
    SetLock {
        lease: LeaseId,
        req: LockRequest,
        now_ms: u64,
    },
    /// Turns a read lease into a write lease in place, keeping its id and
    /// its locks (store format 10 on). Refused `Busy` while another lease
    /// is on the file.
    UpgradeLease { lease: LeaseId, now_ms: u64 },
    /// Records a certificate the CA issued (store format 11 on). Refused
    /// `AlreadyExists` for a known serial, `NoSpace` when the table is
    /// full ([`super::certs`]).
    RecordCertificate { record: CertRecord, now_ms: u64 },
    /// Revokes certificates, for good (store format 11 on); each newly
    /// revoked one is logged.
    RevokeCertificates {
        serials: Vec<CertSerial>,
        now_ms: u64,
    },
}

impl Command {
    /// Sets the time the command carries (its `now_ms`, the inner one of a
    /// tagged command too) to `now_ms`; commands without one are left as
    /// they are. [`MdsService::commit`](super::MdsService) stamps every
    /// command again once this MDS's time is anchored for the term it
    /// leads: a command stamped before (a re-elected leader anchors its time
    /// at the first command of its term) would carry the time it counted
    /// while it followed (`--all-faults` seed 100592: a size commit stamped
    /// on a clock NTP stepped back 48 s since was refused `Stale`, its lease
    /// "expired 18 s ago").
    pub fn stamp(&mut self, now_ms: u64) {
        match self {
            Command::Mkdir { now_ms: t, .. }
            | Command::Open { now_ms: t, .. }
            | Command::Unlink { now_ms: t, .. }
            | Command::Rename { now_ms: t, .. }
            | Command::SetAttrV3 { now_ms: t, .. }
            | Command::RenewLease { now_ms: t, .. }
            | Command::ReleaseLease { now_ms: t, .. }
            | Command::ExpireLeases { now_ms: t }
            | Command::AllocateChunk { now_ms: t, .. }
            | Command::CommitSize { now_ms: t, .. }
            | Command::Truncate { now_ms: t, .. }
            | Command::SetParam { now_ms: t, .. }
            | Command::LogEvents { now_ms: t, .. }
            | Command::SetCsReleasing { now_ms: t, .. }
            | Command::SetAttr { now_ms: t, .. }
            | Command::SetCsPlacement { now_ms: t, .. }
            | Command::RefreshLeases { now_ms: t }
            | Command::MakeNode { now_ms: t, .. }
            | Command::Link { now_ms: t, .. }
            | Command::SetStat { now_ms: t, .. }
            | Command::SetXattr { now_ms: t, .. }
            | Command::SetLock { now_ms: t, .. }
            | Command::UpgradeLease { now_ms: t, .. }
            | Command::RecordCertificate { now_ms: t, .. }
            | Command::RevokeCertificates { now_ms: t, .. } => *t = now_ms,
            Command::Tagged { now_ms: t, cmd, .. } => {
                *t = now_ms;
                cmd.stamp(now_ms);
            }
            Command::UpdateChunkMap { .. }
            | Command::FenceFile { .. }
            | Command::AllocateCsId
            | Command::SetCsAddr { .. }
            | Command::DropCs { .. }
            | Command::ExtendChain { .. }
            | Command::AllocateMdsId
            | Command::BeginFence { .. }
            | Command::FinishFence { .. } => {}
        }
    }
}

/// What a successfully applied command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// Nothing to report.
    Done,
    /// The attributes of the created (or existing) object.
    Stat(Stat),
    /// A granted lease; `released` are chunks dropped by `truncate`.
    Opened {
        lease: Lease,
        stat: Stat,
        released: Vec<ChunkMap>,
    },
    /// Chunks removed from the map, to be deleted on their chunk servers.
    Released(Vec<ChunkMap>),
    /// Leases that expired.
    Expired(Vec<LeaseId>),
    /// The new map of a chunk.
    ChunkMap(ChunkMap),
    /// The new maps of a fenced file's chunks.
    Fenced(Vec<ChunkMap>),
    /// A newly allocated chunk server id.
    CsId(CsId),
    /// A newly allocated MDS id.
    MdsId(u64),
}

/// A validated command with every lookup resolved; executing it cannot fail.
#[derive(Debug)]
pub(crate) enum Prepared {
    Noop,
    /// A tagged command seen for the first time: `inner` is the prepared
    /// command, or the refusal to remember.
    Tagged {
        op: OpTag,
        now_ms: u64,
        inner: std::result::Result<Box<Prepared>, OpReply>,
    },
    /// A tagged command already executed: its remembered answer.
    Replay {
        op: OpTag,
        now_ms: u64,
        reply: OpReply,
    },
    MkdirExisting(InodeId),
    Mkdir {
        parent: InodeId,
        names: Vec<String>,
        perms: Perms,
        now_ms: u64,
    },
    Open {
        existing: Option<InodeId>,
        create_in: Option<(InodeId, String)>,
        perms: Perms,
        truncate: bool,
        mode: LeaseMode,
        now_ms: u64,
        duration_ms: u64,
    },
    /// Removes the name (`parent`, `name`) of `ino`; the node too when it
    /// was its last.
    Unlink {
        ino: InodeId,
        parent: InodeId,
        name: String,
        now_ms: u64,
    },
    Rename {
        src: InodeId,
        src_parent: InodeId,
        src_name: String,
        dst_parent: InodeId,
        dst_name: String,
        /// The node at the target: replaced, or swapped with `exchange`.
        replace: Option<InodeId>,
        exchange: bool,
        now_ms: u64,
    },
    MakeNode {
        parent: InodeId,
        name: String,
        node: NewNode,
        now_ms: u64,
    },
    Link {
        ino: InodeId,
        parent: InodeId,
        name: String,
        now_ms: u64,
    },
    SetStat {
        ino: InodeId,
        change: StatChange,
        now_ms: u64,
    },
    SetXattr {
        ino: InodeId,
        name: String,
        value: Option<Vec<u8>>,
        now_ms: u64,
    },
    SetAttr {
        targets: Vec<(InodeId, AttrUpdate)>,
        now_ms: u64,
    },
    Renew {
        lease: LeaseId,
        expires_ms: u64,
    },
    Release {
        lease: LeaseId,
        fence: Option<InodeId>,
    },
    SetLock {
        ino: InodeId,
        lease: LeaseId,
        req: LockRequest,
    },
    Upgrade {
        lease: LeaseId,
        expires_ms: u64,
    },
    Expire {
        leases: Vec<LeaseId>,
        fence: Vec<InodeId>,
        now_ms: u64,
    },
    RefreshLeases {
        now_ms: u64,
    },
    AllocateChunk {
        file: InodeId,
        record: ChunkRecord,
        chunk: ChunkId,
    },
    UpdateChunkMap {
        chunk: ChunkId,
        version: MapVersion,
        replicas: Vec<CsId>,
    },
    /// Bump every chunk; `true`: also clear `fence_pending`.
    Fence(InodeId, bool),
    FinishFence(InodeId),
    CommitSize {
        ino: InodeId,
        size: u64,
        now_ms: u64,
    },
    Truncate {
        ino: InodeId,
        size: u64,
        now_ms: u64,
    },
    AllocateCsId,
    SetCsAddr {
        cs: CsId,
        addr: String,
    },
    DropCs(CsId),
    SetParam {
        key: String,
        value: u64,
        now_ms: u64,
    },
    LogEvents {
        now_ms: u64,
        events: Vec<NewEvent>,
    },
    ExtendChain {
        chunk: ChunkId,
        added: Vec<CsId>,
    },
    SetCsReleasing {
        cs: CsId,
        releasing: bool,
        now_ms: u64,
    },
    AllocateMdsId,
    SetCsPlacement {
        cs: CsId,
        update: CsPlacementUpdate,
        now_ms: u64,
    },
    RecordCertificate {
        record: CertRecord,
        now_ms: u64,
    },
    RevokeCertificates {
        serials: Vec<CertSerial>,
        now_ms: u64,
    },
}

/// The id the first MDS of a cluster takes (`make-mds`); a new state
/// allocates MDS ids after it.
pub const FIRST_MDS_ID: u64 = 1;

/// The whole metadata of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdsState {
    inodes: BTreeMap<InodeId, Inode>,
    chunks: BTreeMap<ChunkId, ChunkRecord>,
    servers: BTreeMap<CsId, CsRecord>,
    leases: BTreeMap<LeaseId, LeaseRecord>,
    next_ino: InodeId,
    next_chunk: ChunkId,
    next_lease: LeaseId,
    next_cs: CsId,
    /// Cluster parameters set with `set-config` (the rest take defaults).
    params: BTreeMap<String, u64>,
    /// The most recent [`MAX_EVENTS`] events, oldest first.
    events: VecDeque<Event>,
    next_event: u64,
    /// The next MDS id [`Command::AllocateMdsId`] hands out.
    next_mds: u64,
    /// Client sessions and the answers of their unfinished mutations.
    sessions: Sessions,
    /// Byte-range locks, each held by a lease (store format 10 on).
    locks: LockTable,
    /// Issued and revoked certificates (store format 11 on).
    certs: CertTable,
    /// Derived, never persisted: see [`super::chunk_index`].
    #[serde(skip)]
    index: LazyIndex,
}

/// Every field of an [`MdsState`]: what the readers of the persisted
/// formats ([`super::format`]) build a decoded state from.
#[derive(Debug)]
pub(crate) struct MdsStateParts {
    pub inodes: BTreeMap<InodeId, Inode>,
    pub chunks: BTreeMap<ChunkId, ChunkRecord>,
    pub servers: BTreeMap<CsId, CsRecord>,
    pub leases: BTreeMap<LeaseId, LeaseRecord>,
    pub next_ino: InodeId,
    pub next_chunk: ChunkId,
    pub next_lease: LeaseId,
    pub next_cs: CsId,
    pub params: BTreeMap<String, u64>,
    pub events: VecDeque<Event>,
    pub next_event: u64,
    pub next_mds: u64,
    pub sessions: Sessions,
    pub locks: LockTable,
    pub certs: CertTable,
}

impl Default for MdsState {
    fn default() -> Self {
        MdsState::new(FileAttrs::default()).expect("default attributes are valid")
    }
}

fn join_path(comps: &[&str]) -> String {
    if comps.is_empty() {
        "/".to_string()
    } else {
        format!("/{}", comps.join("/"))
    }
}

/// What an inode kind is called in messages.
pub fn kind_name(kind: InodeKind) -> &'static str {
    match kind {
        InodeKind::File => "file",
        InodeKind::Dir => "directory",
        InodeKind::Symlink => "symbolic link",
        InodeKind::Fifo => "FIFO",
        InodeKind::Socket => "socket",
        InodeKind::CharDevice => "character device",
        InodeKind::BlockDevice => "block device",
    }
}

fn validate_chain(replicas: &[CsId]) -> Result<()> {
    let distinct: BTreeSet<CsId> = replicas.iter().copied().collect();
    if replicas.is_empty() || distinct.len() != replicas.len() {
        return Err(Error::internal(format!(
            "replica chain {replicas:?} is empty or names a chunk server twice"
        )));
    }
    Ok(())
}

/// A fact that `prepare` checked but that does not hold when the command
/// executes: a bug. The command is refused as `Internal`, the same way on
/// every member of the group (they apply the same entries to the same
/// state), instead of a panic, which would crash every member on this log
/// entry, and again at each replay of it.
fn broken(what: &str) -> Error {
    Error::internal(format!(
        "metadata bug: {what} does not hold, though the command was checked before it \
         executed; the command is refused"
    ))
}

impl MdsState {
    /// A new cluster: an empty root directory with `root_attrs` (inherited
    /// by everything created below it). `InvalidArgument` for bad attrs.
    pub fn new(root_attrs: FileAttrs) -> Result<MdsState> {
        root_attrs.replicas.validate()?;
        validate_chunk_size(root_attrs.chunk_size)?;
        let root = Inode {
            ino: ROOT_INODE,
            kind: InodeKind::Dir,
            parent: ROOT_INODE,
            name: String::new(),
            links: BTreeSet::new(),
            children: BTreeMap::new(),
            subdirs: 0,
            size: 0,
            perms: Perms::LEGACY_DIR,
            rdev: 0,
            target: String::new(),
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            xattrs: BTreeMap::new(),
            attrs: root_attrs,
            chunks: BTreeMap::new(),
            fence_pending: false,
        };
        Ok(MdsState {
            inodes: BTreeMap::from([(ROOT_INODE, root)]),
            chunks: BTreeMap::new(),
            servers: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_ino: ROOT_INODE + 1,
            next_chunk: ChunkId(1),
            next_lease: LeaseId(1),
            next_cs: CsId(1),
            params: BTreeMap::new(),
            events: VecDeque::new(),
            next_event: 1,
            next_mds: FIRST_MDS_ID + 1,
            sessions: Sessions::default(),
            locks: LockTable::default(),
            certs: CertTable::default(),
            index: LazyIndex::default(),
        })
    }

    /// The state made of `parts`, as a persisted record held it (not
    /// checked: see [`MdsState::check_invariants`]).
    pub(crate) fn from_parts(parts: MdsStateParts) -> MdsState {
        let MdsStateParts {
            inodes,
            chunks,
            servers,
            leases,
            next_ino,
            next_chunk,
            next_lease,
            next_cs,
            params,
            events,
            next_event,
            next_mds,
            sessions,
            locks,
            certs,
        } = parts;
        MdsState {
            inodes,
            chunks,
            servers,
            leases,
            next_ino,
            next_chunk,
            next_lease,
            next_cs,
            params,
            events,
            next_event,
            next_mds,
            sessions,
            locks,
            certs,
            index: LazyIndex::default(),
        }
    }

    /// Applies `cmd`. On error nothing changed, except for a tagged
    /// command: its refusal is remembered (see [`super::sessions`]).
    /// Never panics: every member of the metadata group applies the same
    /// log entry, so a panic here would stop them all, again at every
    /// replay (`mds::apply_tests` feeds it random commands). Debug builds
    /// check the invariants after every command.
    pub fn apply(&mut self, cmd: Command) -> Result<ApplyOutcome> {
        let prepared = self.prepare(&cmd)?;
        let result = self.execute(prepared);
        #[cfg(debug_assertions)]
        if let Err(e) = self.check_invariants() {
            panic!("applying {cmd:?} broke an invariant of the metadata: {e}");
        }
        result
    }

    /// The client sessions this state remembers.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Checks that `cmd` would apply, without changing anything.
    pub fn validate(&self, cmd: &Command) -> Result<()> {
        self.prepare(cmd).map(|_| ())
    }

    // ----- queries -------------------------------------------------------

    /// The inode at `path`. `NotFound`, `NotADirectory`, `InvalidArgument`.
    pub fn lookup(&self, path: &str) -> Result<InodeId> {
        let comps = split_path(path)?;
        self.lookup_comps(&comps)
    }

    /// An inode by id.
    pub fn inode(&self, ino: InodeId) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// Every inode, by id.
    pub fn inodes(&self) -> impl Iterator<Item = &Inode> {
        self.inodes.values()
    }

    /// The absolute path of an inode (`<deleted inode N>` if unknown).
    pub fn path_of(&self, ino: InodeId) -> String {
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INODE {
            match self.inodes.get(&cur) {
                Some(node) => {
                    names.push(node.name.as_str());
                    cur = node.parent;
                }
                None => return format!("<deleted inode {ino}>"),
            }
        }
        names.reverse();
        join_path(&names)
    }

    /// `stat` of an inode.
    pub fn stat_of(&self, ino: InodeId) -> Option<Stat> {
        self.inodes.get(&ino).map(|n| Stat {
            ino: n.ino,
            kind: n.kind,
            size: n.size,
            mode: n.perms.mode,
            uid: n.perms.uid,
            gid: n.perms.gid,
            nlink: n.nlink(),
            rdev: n.rdev,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            attrs: n.attrs,
        })
    }

    /// The target of the symbolic link at `path`; `InvalidArgument` for
    /// another kind of node (`readlink(2)` answers `EINVAL`).
    pub fn readlink(&self, path: &str) -> Result<String> {
        let node = &self.inodes[&self.lookup(path)?];
        if node.kind != InodeKind::Symlink {
            return Err(Error::invalid(format!(
                "{path} is a {}, not a symbolic link",
                kind_name(node.kind)
            )));
        }
        Ok(node.target.clone())
    }

    /// The value of the extended attribute `name` of `path`: `NoData` if
    /// it has none of that name.
    pub fn get_xattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        validate_xattr_name(name)?;
        let node = &self.inodes[&self.lookup(path)?];
        node.xattrs.get(name).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NoData,
                format!("{path} has no extended attribute {name:?}"),
            )
        })
    }

    /// The names of the extended attributes of `path`, sorted.
    pub fn list_xattrs(&self, path: &str) -> Result<Vec<String>> {
        let node = &self.inodes[&self.lookup(path)?];
        Ok(node.xattrs.keys().cloned().collect())
    }

    /// The entries of the directory at `path`, sorted by name.
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let children = self.dir_children(path)?;
        Ok(self.dir_entries(children.iter()).collect())
    }

    /// One page of [`Self::readdir`]: at most [`DIR_PAGE_ENTRIES`] entries
    /// after the name `after`.
    pub fn readdir_page(&self, path: &str, after: Option<&str>) -> Result<DirPage> {
        use std::ops::Bound;
        let children = self.dir_children(path)?;
        let from = match after {
            Some(name) => Bound::Excluded(name),
            None => Bound::Unbounded,
        };
        let (entries, more) = take_page(
            self.dir_entries(children.range::<str, _>((from, Bound::Unbounded))),
            DIR_PAGE_ENTRIES,
        );
        Ok(DirPage { entries, more })
    }

    /// The children of the directory at `path` (`NotADirectory` for
    /// another node).
    fn dir_children(&self, path: &str) -> Result<&BTreeMap<String, InodeId>> {
        let ino = self.lookup(path)?;
        let node = &self.inodes[&ino];
        if node.kind != InodeKind::Dir {
            return Err(Error::new(
                ErrorKind::NotADirectory,
                format!("{path} is a file, not a directory"),
            ));
        }
        Ok(&node.children)
    }

    /// The directory entries of `children`.
    fn dir_entries<'a>(
        &'a self,
        children: impl Iterator<Item = (&'a String, &'a InodeId)> + 'a,
    ) -> impl Iterator<Item = DirEntry> + 'a {
        // Every child has its inode (`check_invariants`).
        children.filter_map(|(name, &child)| {
            Some(DirEntry {
                name: name.clone(),
                stat: self.stat_of(child)?,
            })
        })
    }

    /// A chunk record.
    pub fn chunk(&self, chunk: ChunkId) -> Option<&ChunkRecord> {
        self.chunks.get(&chunk)
    }

    /// Every chunk record, by id.
    pub fn chunks(&self) -> impl Iterator<Item = (&ChunkId, &ChunkRecord)> {
        self.chunks.iter()
    }

    /// The map of a chunk, with replica addresses from the registry.
    pub fn chunk_map(&self, chunk: ChunkId) -> Option<ChunkMap> {
        self.chunks.get(&chunk).map(|rec| ChunkMap {
            chunk,
            index: rec.index,
            version: rec.version,
            replicas: rec
                .replicas
                .iter()
                .map(|&cs| Replica {
                    cs,
                    addr: self
                        .servers
                        .get(&cs)
                        .map(|s| s.addr.clone())
                        .unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// The map of chunk `index` of file `ino`, if allocated.
    pub fn file_chunk_map(&self, ino: InodeId, index: u64) -> Option<ChunkMap> {
        let chunk = *self.inodes.get(&ino)?.chunks.get(&index)?;
        self.chunk_map(chunk)
    }

    /// Every chunk map of file `ino`, by index.
    /// The inode of the file at `path`, whose chunks are asked for
    /// (`IsADirectory` for a directory).
    pub fn file_of_chunks(&self, path: &str) -> Result<InodeId> {
        let ino = self.lookup(path)?;
        if self.inode(ino).map(|n| n.kind) == Some(InodeKind::Dir) {
            return Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path} is a directory; chunks belong to files"),
            ));
        }
        Ok(ino)
    }

    /// One page of [`Self::file_chunk_maps`]: at most [`CHUNK_MAP_PAGE`]
    /// maps of chunks at index `from` or later.
    pub fn file_chunk_map_page(&self, ino: InodeId, from: u64) -> ChunkMapPage {
        let Some(node) = self.inodes.get(&ino) else {
            return ChunkMapPage::default();
        };
        let (maps, more) = take_page(
            node.chunks
                .range(from..)
                .filter_map(|(_, &c)| self.chunk_map(c)),
            CHUNK_MAP_PAGE,
        );
        ChunkMapPage { maps, more }
    }

    pub fn file_chunk_maps(&self, ino: InodeId) -> Vec<ChunkMap> {
        self.inodes
            .get(&ino)
            .map(|n| {
                n.chunks
                    .values()
                    // Every chunk has its record (`check_invariants`).
                    .filter_map(|&c| self.chunk_map(c))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A lease by id (live or expired-but-not-yet-reaped).
    pub fn lease(&self, lease: LeaseId) -> Option<&LeaseRecord> {
        self.leases.get(&lease)
    }

    /// Every lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = &LeaseRecord> {
        self.leases.values()
    }

    /// Whether any lease is held.
    pub fn has_leases(&self) -> bool {
        !self.leases.is_empty()
    }

    /// Whether some lease expired before `now_ms` and is not reaped yet.
    pub fn has_expired_leases(&self, now_ms: u64) -> bool {
        self.leases.values().any(|l| !l.is_live(now_ms))
    }

    /// The lease if it is live at `now_ms` (and a write lease when
    /// `need_write`). `Stale` if unknown or expired, `BadHandle` if a read
    /// lease is used for writing.
    pub fn check_lease(
        &self,
        lease: LeaseId,
        now_ms: u64,
        need_write: bool,
    ) -> Result<&LeaseRecord> {
        let rec = self.leases.get(&lease).ok_or_else(|| {
            Error::stale(format!(
                "lease {lease} is unknown (released or expired); reopen the file"
            ))
        })?;
        if !rec.is_live(now_ms) {
            return Err(Error::stale(format!(
                "lease {lease} on {} expired {} ms ago; reopen the file",
                self.path_of(rec.ino),
                now_ms - rec.expires_ms
            )));
        }
        if need_write && rec.mode != LeaseMode::Write {
            return Err(Error::new(
                ErrorKind::BadHandle,
                format!(
                    "lease {lease} on {} is a read lease; open the file for writing",
                    self.path_of(rec.ino)
                ),
            ));
        }
        Ok(rec)
    }

    /// A chunk server record.
    pub fn cs(&self, cs: CsId) -> Option<&CsRecord> {
        self.servers.get(&cs)
    }

    /// Every chunk server record, by id.
    pub fn servers(&self) -> impl Iterator<Item = &CsRecord> {
        self.servers.values()
    }

    /// Chunk servers allocated and not dropped.
    pub fn cs_kept(&self) -> usize {
        let dropped = self.servers.values().filter(|r| r.dropped).count();
        (self.next_cs.0 as usize).saturating_sub(1 + dropped)
    }

    /// Whether `cs` was ever allocated by [`Command::AllocateCsId`].
    pub fn cs_allocated(&self, cs: CsId) -> bool {
        cs >= CsId(1) && cs < self.next_cs
    }

    /// Whether MDS id `id` was ever handed out (the first MDS's
    /// [`FIRST_MDS_ID`] or by [`Command::AllocateMdsId`]).
    pub fn mds_allocated(&self, id: u64) -> bool {
        (FIRST_MDS_ID..self.next_mds).contains(&id)
    }

    /// The MDS id the next [`Command::AllocateMdsId`] returns.
    pub fn next_mds_id(&self) -> u64 {
        self.next_mds
    }

    /// The smallest chunk id never used.
    pub fn next_chunk_id(&self) -> ChunkId {
        self.next_chunk
    }

    /// Cluster parameters set with `set-config`, by key.
    pub fn param_overrides(&self) -> &BTreeMap<String, u64> {
        &self.params
    }

    /// The effective cluster parameters: `defaults` with the stored ones.
    pub fn params(&self, defaults: &ClusterParams) -> ClusterParams {
        defaults.with_overrides(&self.params)
    }

    /// Events with a sequence number above `after_seq`, oldest first (the
    /// log keeps the last [`MAX_EVENTS`]).
    pub fn events_after(&self, after_seq: u64) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.seq > after_seq)
    }

    /// The chunks by server and by chain length, and the placement classes
    /// of the files holding chunks ([`super::chunk_index`]): built on the
    /// first call (O(size of state)), kept up to date by every command
    /// from then on.
    pub fn index(&self) -> &ChunkIndex {
        self.index.get_or_build(&self.inodes, &self.chunks)
    }

    /// Checks every structural invariant (O(size of state); for tests and
    /// simulation). Returns a description of the first violation.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        if let Some(index) = self.index.built() {
            if *index != ChunkIndex::build(&self.inodes, &self.chunks) {
                return Err("the chunk index differs from one counted afresh".into());
            }
        }
        let root = self.inodes.get(&ROOT_INODE).ok_or("root inode missing")?;
        if root.kind != InodeKind::Dir || root.parent != ROOT_INODE {
            return Err("root is not a self-parented directory".into());
        }
        for (&ino, node) in &self.inodes {
            if node.ino != ino || ino >= self.next_ino {
                return Err(format!("inode {ino} has a bad id"));
            }
            if ino != ROOT_INODE {
                for (p, name) in node.names() {
                    let parent = self
                        .inodes
                        .get(&p)
                        .ok_or(format!("inode {ino} has a missing parent {p}"))?;
                    if parent.children.get(name) != Some(&ino) {
                        return Err(format!("inode {ino} is not listed as {name:?} in {p}"));
                    }
                }
            } else if !node.links.is_empty() {
                return Err("the root has links".into());
            }
            for (name, child) in &node.children {
                let c = self
                    .inodes
                    .get(child)
                    .ok_or(format!("dir {ino} lists missing child {child}"))?;
                if !c.names().any(|(p, n)| p == ino && n == name) {
                    return Err(format!("child {child} of {ino} has a wrong parent/name"));
                }
            }
            let subdirs = node
                .children
                .values()
                .filter(|c| self.inodes.get(c).map(|n| n.kind) == Some(InodeKind::Dir))
                .count();
            if subdirs != node.subdirs as usize {
                return Err(format!(
                    "inode {ino} counts {} subdirectories, it has {subdirs}",
                    node.subdirs
                ));
            }
            if node.perms.mode & !PERMISSION_BITS != 0 {
                return Err(format!("inode {ino} has mode {:#o}", node.perms.mode));
            }
            if node.kind != InodeKind::File && !node.chunks.is_empty() {
                return Err(format!("non-file {ino} has chunks"));
            }
            if node.kind != InodeKind::Dir && !node.children.is_empty() {
                return Err(format!("non-directory {ino} has children"));
            }
            if node.kind != InodeKind::Symlink && !node.target.is_empty() {
                return Err(format!("non-symlink {ino} has a target"));
            }
            match node.kind {
                InodeKind::Dir if node.size != 0 || !node.links.is_empty() => {
                    return Err(format!("directory {ino} has a size or hard links"));
                }
                InodeKind::Symlink if node.size != node.target.len() as u64 => {
                    return Err(format!("symlink {ino} has a size other than its target's"));
                }
                _ => {}
            }
            if node.xattr_bytes() > MAX_XATTR_BYTES_PER_NODE {
                return Err(format!("inode {ino} has too many extended attribute bytes"));
            }
            for (&index, &chunk) in &node.chunks {
                let rec = self.chunks.get(&chunk).ok_or(format!(
                    "file {ino} maps index {index} to missing chunk {chunk}"
                ))?;
                if rec.file != ino || rec.index != index {
                    return Err(format!(
                        "chunk {chunk} does not point back to {ino}/{index}"
                    ));
                }
            }
        }
        for (&chunk, rec) in &self.chunks {
            if chunk >= self.next_chunk || rec.version == MapVersion(0) {
                return Err(format!("chunk {chunk} has a bad id or version"));
            }
            let file = self.inodes.get(&rec.file).ok_or(format!(
                "chunk {chunk} belongs to missing file {}",
                rec.file
            ))?;
            if file.chunks.get(&rec.index) != Some(&chunk) {
                return Err(format!("chunk {chunk} is not in its file's index"));
            }
            validate_chain(&rec.replicas).map_err(|e| format!("chunk {chunk}: {e}"))?;
            if let Some(cs) = rec
                .replicas
                .iter()
                .find(|cs| !self.servers.contains_key(cs))
            {
                return Err(format!("chunk {chunk} names unknown chunk server {cs}"));
            }
        }
        for (&id, lease) in &self.leases {
            if lease.id != id || id >= self.next_lease {
                return Err(format!("lease {id} has a bad id"));
            }
            match self.inodes.get(&lease.ino) {
                Some(n) if n.kind == InodeKind::File => {}
                _ => return Err(format!("lease {id} is on a missing file")),
            }
        }
        self.locks
            .check_invariants(|lease| self.leases.get(&lease).map(|l| l.ino))?;
        for (&id, cs) in &self.servers {
            if cs.id != id || !self.cs_allocated(id) {
                return Err(format!("chunk server {id} has a bad id"));
            }
        }
        if self.next_mds <= FIRST_MDS_ID {
            return Err(format!(
                "next MDS id {} is not after the first",
                self.next_mds
            ));
        }
        if self.events.len() > MAX_EVENTS
            || self.events.iter().any(|e| e.seq >= self.next_event)
            || self
                .events
                .iter()
                .zip(self.events.iter().skip(1))
                .any(|(a, b)| a.seq + 1 != b.seq)
        {
            return Err("the event log is longer than its bound or out of order".into());
        }
        self.certs.check_invariants()
    }

    // ----- validation ----------------------------------------------------

    fn lookup_comps(&self, comps: &[&str]) -> Result<InodeId> {
        let mut cur = ROOT_INODE;
        for (i, comp) in comps.iter().enumerate() {
            let node = &self.inodes[&cur];
            if node.kind != InodeKind::Dir {
                return Err(Error::new(
                    ErrorKind::NotADirectory,
                    format!("{} is not a directory", join_path(&comps[..i])),
                ));
            }
            cur = *node.children.get(*comp).ok_or_else(|| {
                Error::not_found(format!(
                    "{} does not exist (no {} in {})",
                    join_path(comps),
                    comp,
                    join_path(&comps[..i])
                ))
            })?;
        }
        Ok(cur)
    }

    /// The directory that holds (or would hold) the last component.
    fn lookup_parent<'a>(&self, comps: &[&'a str]) -> Result<(InodeId, &'a str)> {
        let (name, parent_comps) = comps
            .split_last()
            .ok_or_else(|| Error::invalid("the root directory cannot be used here"))?;
        let parent = self.lookup_comps(parent_comps)?;
        if self.inodes[&parent].kind != InodeKind::Dir {
            return Err(Error::new(
                ErrorKind::NotADirectory,
                format!("{} is not a directory", join_path(parent_comps)),
            ));
        }
        Ok((parent, name))
    }

    fn live_leases_on(&self, ino: InodeId, now_ms: u64) -> impl Iterator<Item = &LeaseRecord> {
        self.leases
            .values()
            .filter(move |l| l.ino == ino && l.is_live(now_ms))
    }

    fn busy_error(&self, what: &str, ino: InodeId, lease: &LeaseRecord, now_ms: u64) -> Error {
        Error::new(
            ErrorKind::Busy,
            format!(
                "{what}: {} is held by another client's {} lease {} for {} more ms; retry after it is closed",
                self.path_of(ino),
                match lease.mode {
                    LeaseMode::Read => "read",
                    LeaseMode::Write => "write",
                },
                lease.id,
                lease.expires_ms - now_ms
            ),
        )
    }

    fn check_file_size(ino_path: &str, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(Error::new(
                ErrorKind::FileTooLarge,
                format!("{ino_path}: size {size} exceeds the maximum file size {MAX_FILE_SIZE}"),
            ));
        }
        Ok(())
    }

    pub(crate) fn prepare(&self, cmd: &Command) -> Result<Prepared> {
        match cmd {
            Command::Tagged { op, now_ms, cmd } => self.prepare_tagged(op, *now_ms, cmd),
            Command::Mkdir {
                path,
                parents,
                perms,
                now_ms,
            } => self.prepare_mkdir(path, *parents, *perms, *now_ms),
            Command::Open {
                path,
                mode,
                flags,
                perms,
                now_ms,
                lease_duration_ms,
            } => self.prepare_open(path, *mode, *flags, *perms, *now_ms, *lease_duration_ms),
            Command::Unlink { path, now_ms } => self.prepare_unlink(path, *now_ms),
            Command::Rename {
                from,
                to,
                flags,
                now_ms,
            } => self.prepare_rename(from, to, *flags, *now_ms),
            Command::MakeNode { path, node, now_ms } => self.prepare_make_node(path, node, *now_ms),
            Command::Link { from, to, now_ms } => self.prepare_link(from, to, *now_ms),
            Command::SetStat {
                path,
                change,
                now_ms,
            } => {
                change.validate()?;
                Ok(Prepared::SetStat {
                    ino: self.lookup(path)?,
                    change: *change,
                    now_ms: *now_ms,
                })
            }
            Command::SetXattr {
                path,
                name,
                value,
                how,
                now_ms,
            } => self.prepare_set_xattr(path, name, value.as_deref(), *how, *now_ms),
            Command::SetAttr {
                path,
                update,
                recursive,
                now_ms,
            } => self.prepare_set_attr(path, *update, *recursive, *now_ms),
            Command::SetAttrV3 {
                path,
                update,
                recursive,
                now_ms,
            } => self.prepare_set_attr(path, (*update).into(), *recursive, *now_ms),
            Command::RenewLease { lease, now_ms } => {
                let rec = self.check_lease(*lease, *now_ms, false)?;
                Ok(Prepared::Renew {
                    lease: *lease,
                    expires_ms: now_ms.saturating_add(rec.duration_ms),
                })
            }
            Command::ReleaseLease { lease, now_ms } => Ok(match self.leases.get(lease) {
                None => Prepared::Noop,
                Some(rec) => Prepared::Release {
                    lease: *lease,
                    fence: (rec.mode == LeaseMode::Write && !rec.is_live(*now_ms))
                        .then_some(rec.ino),
                },
            }),
            Command::ExpireLeases { now_ms } => {
                let expired: Vec<&LeaseRecord> = self
                    .leases
                    .values()
                    .filter(|l| !l.is_live(*now_ms))
                    .collect();
                Ok(Prepared::Expire {
                    leases: expired.iter().map(|l| l.id).collect(),
                    fence: expired
                        .iter()
                        .filter(|l| l.mode == LeaseMode::Write)
                        .map(|l| l.ino)
                        .collect(),
                    now_ms: *now_ms,
                })
            }
            Command::RefreshLeases { now_ms } => Ok(Prepared::RefreshLeases { now_ms: *now_ms }),
            Command::SetLock { lease, req, now_ms } => {
                let ino = self.check_lease(*lease, *now_ms, false)?.ino;
                self.locks
                    .check(ino, *lease, req, |l| self.lease_is_live(l, *now_ms))?;
                Ok(Prepared::SetLock {
                    ino,
                    lease: *lease,
                    req: *req,
                })
            }
            Command::UpgradeLease { lease, now_ms } => self.prepare_upgrade(*lease, *now_ms),
            Command::RecordCertificate { record, now_ms } => {
                self.certs.check_record(record, *now_ms)?;
                Ok(Prepared::RecordCertificate {
                    record: record.clone(),
                    now_ms: *now_ms,
                })
            }
            Command::RevokeCertificates { serials, now_ms } => {
                self.certs.check_revoke(serials)?;
                Ok(Prepared::RevokeCertificates {
                    serials: serials.clone(),
                    now_ms: *now_ms,
                })
            }
            Command::AllocateChunk {
                lease,
                index,
                chunk,
                version,
                replicas,
                now_ms,
            } => self.prepare_allocate(*lease, *index, *chunk, *version, replicas, *now_ms),
            Command::UpdateChunkMap {
                chunk,
                version,
                replicas,
            } => {
                let rec = self
                    .chunks
                    .get(chunk)
                    .ok_or_else(|| Error::not_found(format!("chunk {chunk:#x} does not exist")))?;
                if *version <= rec.version {
                    return Err(Error::stale(format!(
                        "chunk {chunk:#x} of {}: new map version {version} is not newer than {}",
                        self.path_of(rec.file),
                        rec.version
                    )));
                }
                validate_chain(replicas)?;
                // Members already in the chain may stay even if their server
                // was dropped meanwhile; only new members must be usable.
                let added: Vec<CsId> = replicas
                    .iter()
                    .copied()
                    .filter(|cs| !rec.replicas.contains(cs))
                    .collect();
                self.check_servers_usable(&added)?;
                Ok(Prepared::UpdateChunkMap {
                    chunk: *chunk,
                    version: *version,
                    replicas: replicas.clone(),
                })
            }
            Command::FenceFile { ino } | Command::BeginFence { ino } => {
                match self.inodes.get(ino) {
                    Some(n) if n.kind == InodeKind::File => {
                        // A fence bumps every chunk's version by one.
                        if let Some(c) = n
                            .chunks
                            .values()
                            .find(|c| self.chunks[c].version == MapVersion::MAX)
                        {
                            return Err(Error::internal(format!(
                                "{}: chunk {c:#x} is at the last version: it cannot be fenced",
                                self.path_of(*ino)
                            )));
                        }
                        Ok(Prepared::Fence(
                            *ino,
                            matches!(cmd, Command::FenceFile { .. }),
                        ))
                    }
                    _ => Err(Error::not_found(format!("file inode {ino} does not exist"))),
                }
            }
            Command::FinishFence { ino } => match self.inodes.get(ino) {
                Some(n) if n.kind == InodeKind::File => Ok(Prepared::FinishFence(*ino)),
                _ => Err(Error::not_found(format!("file inode {ino} does not exist"))),
            },
            Command::CommitSize {
                lease,
                size,
                now_ms,
            } => {
                let ino = self.check_lease(*lease, *now_ms, true)?.ino;
                Self::check_file_size(&self.path_of(ino), *size)?;
                Ok(Prepared::CommitSize {
                    ino,
                    size: *size,
                    now_ms: *now_ms,
                })
            }
            Command::Truncate {
                lease,
                size,
                now_ms,
            } => {
                let ino = self.check_lease(*lease, *now_ms, true)?.ino;
                Self::check_file_size(&self.path_of(ino), *size)?;
                Ok(Prepared::Truncate {
                    ino,
                    size: *size,
                    now_ms: *now_ms,
                })
            }
            Command::AllocateCsId => {
                if self.next_cs == CsId::MAX {
                    return Err(Error::internal("chunk server ids are exhausted"));
                }
                Ok(Prepared::AllocateCsId)
            }
            Command::SetCsAddr { cs, addr } => {
                self.check_cs_known(*cs)?;
                if addr.is_empty() {
                    return Err(Error::invalid(format!(
                        "chunk server {cs}: empty address; give host:port"
                    )));
                }
                if self.servers.get(cs).is_some_and(|r| r.dropped) {
                    return Err(Self::dropped_error(*cs));
                }
                Ok(Prepared::SetCsAddr {
                    cs: *cs,
                    addr: addr.clone(),
                })
            }
            Command::DropCs { cs } => {
                self.check_cs_known(*cs)?;
                Ok(Prepared::DropCs(*cs))
            }
            Command::SetParam { key, value, now_ms } => {
                ClusterParams::validate(key, *value)?;
                Ok(Prepared::SetParam {
                    key: key.clone(),
                    value: *value,
                    now_ms: *now_ms,
                })
            }
            Command::LogEvents { now_ms, events } => Ok(Prepared::LogEvents {
                now_ms: *now_ms,
                events: events.clone(),
            }),
            Command::ExtendChain {
                chunk,
                version,
                added,
            } => {
                let rec = self
                    .chunks
                    .get(chunk)
                    .ok_or_else(|| Error::not_found(format!("chunk {chunk:#x} does not exist")))?;
                if *version != rec.version {
                    return Err(Error::stale(format!(
                        "chunk {chunk:#x} of {} moved to version {} while a copy at version {version} was made; the copy is discarded",
                        self.path_of(rec.file),
                        rec.version
                    )));
                }
                let mut chain = rec.replicas.clone();
                chain.extend(added.iter().copied());
                validate_chain(&chain)?;
                self.check_servers_usable(added)?;
                if let Some(cs) = added
                    .iter()
                    .find(|cs| self.servers.get(cs).is_some_and(|r| r.releasing))
                {
                    return Err(Error::invalid(format!(
                        "chunk server {cs} is being released; it takes no new replicas"
                    )));
                }
                Ok(Prepared::ExtendChain {
                    chunk: *chunk,
                    added: added.clone(),
                })
            }
            Command::SetCsReleasing {
                cs,
                releasing,
                now_ms,
            } => {
                self.check_cs_known(*cs)?;
                match self.servers.get(cs) {
                    None => Err(Error::not_found(format!(
                        "chunk server {cs} has never registered; remove it with rm-cs --force"
                    ))),
                    Some(r) if r.dropped => Err(Self::dropped_error(*cs)),
                    Some(_) => Ok(Prepared::SetCsReleasing {
                        cs: *cs,
                        releasing: *releasing,
                        now_ms: *now_ms,
                    }),
                }
            }
            Command::AllocateMdsId => {
                if self.next_mds == u64::MAX {
                    return Err(Error::internal("MDS ids are exhausted"));
                }
                Ok(Prepared::AllocateMdsId)
            }
            Command::SetCsPlacement { cs, update, now_ms } => {
                self.check_cs_known(*cs)?;
                if self.servers.get(cs).is_some_and(|r| r.dropped) {
                    return Err(Self::dropped_error(*cs));
                }
                update.validate()?;
                Ok(Prepared::SetCsPlacement {
                    cs: *cs,
                    update: update.clone(),
                    now_ms: *now_ms,
                })
            }
        }
    }

    fn check_cs_known(&self, cs: CsId) -> Result<()> {
        if !self.cs_allocated(cs) {
            return Err(Error::not_found(format!(
                "chunk server {cs} is not known to this cluster; create it with make-cs"
            )));
        }
        Ok(())
    }

    /// The error for a chunk server the administrator removed.
    pub fn dropped_error(cs: CsId) -> Error {
        Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "chunk server {cs} was removed from the cluster; create a new one with make-cs"
            ),
        )
    }

    fn check_servers_usable(&self, replicas: &[CsId]) -> Result<()> {
        for cs in replicas {
            match self.servers.get(cs) {
                None => {
                    return Err(Error::not_found(format!(
                        "chunk server {cs} has never registered; it cannot hold replicas"
                    )))
                }
                Some(r) if r.dropped => return Err(Self::dropped_error(*cs)),
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn prepare_tagged(&self, op: &OpTag, now_ms: u64, cmd: &Command) -> Result<Prepared> {
        op.validate()?;
        if !matches!(
            cmd,
            Command::Mkdir { .. }
                | Command::Open { .. }
                | Command::Unlink { .. }
                | Command::Rename { .. }
                | Command::SetAttr { .. }
                | Command::MakeNode { .. }
                | Command::Link { .. }
                | Command::SetStat { .. }
                | Command::SetXattr { .. }
        ) {
            return Err(Error::invalid(format!(
                "only namespace mutations are tagged by their client, not {cmd:?}"
            )));
        }
        match self.sessions.check(op) {
            Seen::Ended { done_below } => Err(Sessions::ended_error(op, done_below)),
            Seen::Answered(reply) => Ok(Prepared::Replay {
                op: *op,
                now_ms,
                reply,
            }),
            Seen::New => Ok(Prepared::Tagged {
                op: *op,
                now_ms,
                inner: self
                    .prepare(cmd)
                    .map(Box::new)
                    .map_err(|e| OpReply::of(&Err(e))),
            }),
        }
    }

    fn prepare_mkdir(
        &self,
        path: &str,
        parents: bool,
        perms: Perms,
        now_ms: u64,
    ) -> Result<Prepared> {
        perms.validate()?;
        let comps = split_path(path)?;
        let exists = || Error::new(ErrorKind::AlreadyExists, format!("{path} already exists"));
        if comps.is_empty() {
            return if parents {
                Ok(Prepared::MkdirExisting(ROOT_INODE))
            } else {
                Err(exists())
            };
        }
        let mut cur = ROOT_INODE;
        for (i, comp) in comps.iter().enumerate() {
            let node = &self.inodes[&cur];
            if node.kind != InodeKind::Dir {
                return Err(Error::new(
                    ErrorKind::NotADirectory,
                    format!(
                        "mkdir {path}: {} is not a directory",
                        join_path(&comps[..i])
                    ),
                ));
            }
            match node.children.get(*comp) {
                Some(&child) => {
                    if i + 1 == comps.len() {
                        let is_dir = self.inodes[&child].kind == InodeKind::Dir;
                        return if parents && is_dir {
                            Ok(Prepared::MkdirExisting(child))
                        } else {
                            Err(exists())
                        };
                    }
                    cur = child;
                }
                None => {
                    if i + 1 != comps.len() && !parents {
                        return Err(Error::not_found(format!(
                            "mkdir {path}: parent directory {} does not exist; create it first or use -p",
                            join_path(&comps[..=i])
                        )));
                    }
                    return Ok(Prepared::Mkdir {
                        parent: cur,
                        names: comps[i..].iter().map(|s| s.to_string()).collect(),
                        perms,
                        now_ms,
                    });
                }
            }
        }
        unreachable!("the loop returns on the last component")
    }

    fn prepare_open(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        now_ms: u64,
        duration_ms: u64,
    ) -> Result<Prepared> {
        perms.validate()?;
        if (flags.create || flags.truncate) && mode != LeaseMode::Write {
            return Err(Error::invalid(format!(
                "open {path}: create and truncate need a write lease"
            )));
        }
        if duration_ms == 0 {
            return Err(Error::invalid("open: a lease duration of 0 ms is useless"));
        }
        let comps = split_path(path)?;
        if comps.is_empty() {
            return Err(Error::new(
                ErrorKind::IsADirectory,
                "/ is a directory; only files can be opened",
            ));
        }
        let (parent, name) = self.lookup_parent(&comps)?;
        let Some(&ino) = self.inodes[&parent].children.get(name) else {
            if !flags.create {
                return Err(Error::not_found(format!(
                    "{path} does not exist; open it with create to make it"
                )));
            }
            return Ok(Prepared::Open {
                existing: None,
                create_in: Some((parent, name.to_string())),
                perms,
                truncate: false,
                mode,
                now_ms,
                duration_ms,
            });
        };
        let node = &self.inodes[&ino];
        if flags.create && flags.exclusive {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{path} already exists (exclusive create)"),
            ));
        }
        match node.kind {
            InodeKind::File => {}
            InodeKind::Dir => {
                return Err(Error::new(
                    ErrorKind::IsADirectory,
                    format!("{path} is a directory; only files can be opened"),
                ))
            }
            other => {
                return Err(Error::invalid(format!(
                    "{path} is a {}; only regular files can be opened through the cluster",
                    kind_name(other)
                )))
            }
        }
        let expired_writer = self
            .leases
            .values()
            .any(|l| l.ino == ino && l.mode == LeaseMode::Write && !l.is_live(now_ms));
        if node.fence_pending || expired_writer {
            return Err(Error::stale(format!(
                "open {path}: a write lease on it expired and its chunks are not fenced yet; retry"
            )));
        }
        let conflict = self
            .live_leases_on(ino, now_ms)
            .find(|l| mode == LeaseMode::Write || l.mode == LeaseMode::Write);
        if let Some(l) = conflict {
            return Err(self.busy_error("open", ino, l, now_ms));
        }
        Ok(Prepared::Open {
            existing: Some(ino),
            create_in: None,
            perms,
            truncate: flags.truncate,
            mode,
            now_ms,
            duration_ms,
        })
    }

    fn prepare_upgrade(&self, lease: LeaseId, now_ms: u64) -> Result<Prepared> {
        let rec = self.check_lease(lease, now_ms, false)?;
        let expires_ms = now_ms.saturating_add(rec.duration_ms);
        if rec.mode == LeaseMode::Write {
            // A repeated attempt: the first one upgraded it.
            return Ok(Prepared::Upgrade { lease, expires_ms });
        }
        if self.inodes.get(&rec.ino).is_some_and(|n| n.fence_pending) {
            return Err(Error::stale(format!(
                "upgrade of lease {lease}: a write lease on {} expired and its chunks are not fenced yet; retry",
                self.path_of(rec.ino)
            )));
        }
        let other = self.leases.values().find(|l| {
            l.ino == rec.ino && l.id != lease && (l.is_live(now_ms) || l.mode == LeaseMode::Write)
        });
        if let Some(l) = other {
            if !l.is_live(now_ms) {
                return Err(Error::stale(format!(
                    "upgrade of lease {lease}: a write lease on {} expired and its chunks are not fenced yet; retry",
                    self.path_of(rec.ino)
                )));
            }
            return Err(self.busy_error("upgrade", rec.ino, l, now_ms));
        }
        Ok(Prepared::Upgrade { lease, expires_ms })
    }

    /// The lock of another holder that `req` by `lease` conflicts with
    /// (`F_GETLK`): `None` if it could be set. `Stale` for a lease that is
    /// gone, `InvalidArgument` for an unlock or a bad range.
    pub fn lock_conflict(
        &self,
        lease: LeaseId,
        req: &LockRequest,
        now_ms: u64,
    ) -> Result<Option<HeldLock>> {
        let ino = self.check_lease(lease, now_ms, false)?.ino;
        req.validate()?;
        if req.kind.is_none() {
            return Err(Error::invalid(
                "a lock test needs a lock kind, not an unlock",
            ));
        }
        Ok(self
            .locks
            .conflict(ino, lease, req, |l| self.lease_is_live(l, now_ms))
            .map(|l| l.held()))
    }

    fn lease_is_live(&self, lease: LeaseId, now_ms: u64) -> bool {
        self.leases.get(&lease).is_some_and(|l| l.is_live(now_ms))
    }

    /// The recorded and revoked certificates.
    pub fn certs(&self) -> &CertTable {
        &self.certs
    }

    /// Every byte-range lock held.
    pub fn locks(&self) -> &LockTable {
        &self.locks
    }

    fn prepare_unlink(&self, path: &str, now_ms: u64) -> Result<Prepared> {
        let comps = split_path(path)?;
        if comps.is_empty() {
            return Err(Error::invalid("the root directory cannot be removed"));
        }
        let (parent, name) = self.lookup_parent(&comps)?;
        let ino = self.lookup_comps(&comps)?;
        let node = &self.inodes[&ino];
        match node.kind {
            InodeKind::Dir if !node.children.is_empty() => Err(Error::new(
                ErrorKind::NotEmpty,
                format!(
                    "{path} is not empty ({} entries); remove them first",
                    node.children.len()
                ),
            )),
            // The last name of a file goes with its data: not while a
            // client holds it open.
            InodeKind::File if node.links.is_empty() => {
                match self.live_leases_on(ino, now_ms).next() {
                    Some(l) => Err(self.busy_error("unlink", ino, l, now_ms)),
                    None => Ok(Prepared::Unlink {
                        ino,
                        parent,
                        name: name.to_string(),
                        now_ms,
                    }),
                }
            }
            _ => Ok(Prepared::Unlink {
                ino,
                parent,
                name: name.to_string(),
                now_ms,
            }),
        }
    }

    fn prepare_rename(
        &self,
        from: &str,
        to: &str,
        flags: RenameFlags,
        now_ms: u64,
    ) -> Result<Prepared> {
        flags.validate()?;
        let from_comps = split_path(from)?;
        let to_comps = split_path(to)?;
        if from_comps.is_empty() || to_comps.is_empty() {
            return Err(Error::invalid(format!(
                "rename {from} -> {to}: the root directory cannot be renamed or replaced"
            )));
        }
        let (src_parent, src_name) = self.lookup_parent(&from_comps)?;
        let src = self.lookup_comps(&from_comps)?;
        let (dst_parent, dst_name) = self.lookup_parent(&to_comps)?;
        let replace = self.inodes[&dst_parent].children.get(dst_name).copied();
        if flags.no_replace && replace.is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("rename {from} -> {to}: {to} exists (no-replace)"),
            ));
        }
        if flags.exchange && replace.is_none() {
            return Err(Error::not_found(format!(
                "rename {from} -> {to}: {to} does not exist (exchange)"
            )));
        }
        if from_comps == to_comps {
            return Ok(Prepared::Noop);
        }
        let src_kind = self.inodes[&src].kind;
        if src_kind == InodeKind::Dir && to_comps.starts_with(&from_comps) {
            return Err(Error::invalid(format!(
                "rename {from} -> {to}: cannot move a directory into itself"
            )));
        }
        // Two names of one node: POSIX says nothing happens.
        if replace == Some(src) {
            return Ok(Prepared::Noop);
        }
        if let Some(target) = replace {
            let t = &self.inodes[&target];
            if flags.exchange {
                if t.kind == InodeKind::Dir && from_comps.starts_with(&to_comps) {
                    return Err(Error::invalid(format!(
                        "rename {from} <-> {to}: cannot move a directory into itself"
                    )));
                }
            } else {
                match (src_kind == InodeKind::Dir, t.kind == InodeKind::Dir) {
                    (true, false) => {
                        return Err(Error::new(
                            ErrorKind::NotADirectory,
                            format!(
                                "rename {from} -> {to}: cannot replace a non-directory with a directory"
                            ),
                        ))
                    }
                    (false, true) => {
                        return Err(Error::new(
                            ErrorKind::IsADirectory,
                            format!("rename {from} -> {to}: {to} is a directory"),
                        ))
                    }
                    (true, true) if !t.children.is_empty() => {
                        return Err(Error::new(
                            ErrorKind::NotEmpty,
                            format!("rename {from} -> {to}: {to} is not empty"),
                        ))
                    }
                    _ => {}
                }
                // Replacing the last name of a file drops its data.
                if t.kind == InodeKind::File && t.links.is_empty() {
                    if let Some(l) = self.live_leases_on(target, now_ms).next() {
                        return Err(self.busy_error("rename (replaced target)", target, l, now_ms));
                    }
                }
            }
        }
        Ok(Prepared::Rename {
            src,
            src_parent,
            src_name: src_name.to_string(),
            dst_parent,
            dst_name: dst_name.to_string(),
            replace,
            exchange: flags.exchange,
            now_ms,
        })
    }

    /// The free name a new node takes: `AlreadyExists` if it is taken.
    fn free_name<'a>(&self, path: &str, comps: &[&'a str]) -> Result<(InodeId, &'a str)> {
        let (parent, name) = self.lookup_parent(comps)?;
        if self.inodes[&parent].children.contains_key(name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{path} already exists"),
            ));
        }
        Ok((parent, name))
    }

    fn prepare_make_node(&self, path: &str, node: &NewNode, now_ms: u64) -> Result<Prepared> {
        node.perms.validate()?;
        node.spec.validate()?;
        let comps = split_path(path)?;
        if comps.is_empty() {
            return Err(Error::new(ErrorKind::AlreadyExists, "/ already exists"));
        }
        let (parent, name) = self.free_name(path, &comps)?;
        Ok(Prepared::MakeNode {
            parent,
            name: name.to_string(),
            node: node.clone(),
            now_ms,
        })
    }

    fn prepare_link(&self, from: &str, to: &str, now_ms: u64) -> Result<Prepared> {
        let ino = self.lookup(from)?;
        let node = &self.inodes[&ino];
        if node.kind == InodeKind::Dir {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("link {from} -> {to}: {from} is a directory; directories cannot have hard links"),
            ));
        }
        if node.nlink() >= MAX_LINKS {
            return Err(Error::new(
                ErrorKind::TooManyLinks,
                format!("link {from} -> {to}: {from} already has {MAX_LINKS} names"),
            ));
        }
        let comps = split_path(to)?;
        if comps.is_empty() {
            return Err(Error::new(ErrorKind::AlreadyExists, "/ already exists"));
        }
        let (parent, name) = self.free_name(to, &comps)?;
        Ok(Prepared::Link {
            ino,
            parent,
            name: name.to_string(),
            now_ms,
        })
    }

    fn prepare_set_xattr(
        &self,
        path: &str,
        name: &str,
        value: Option<&[u8]>,
        how: XattrSet,
        now_ms: u64,
    ) -> Result<Prepared> {
        validate_xattr_name(name)?;
        let ino = self.lookup(path)?;
        let node = &self.inodes[&ino];
        let old = node.xattrs.get(name);
        match (value, old) {
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::NoData,
                    format!("{path} has no extended attribute {name:?}"),
                ))
            }
            (Some(_), Some(_)) if how == XattrSet::Create => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{path} already has the extended attribute {name:?}"),
                ))
            }
            (Some(_), None) if how == XattrSet::Replace => {
                return Err(Error::new(
                    ErrorKind::NoData,
                    format!("{path} has no extended attribute {name:?} to replace"),
                ))
            }
            _ => {}
        }
        if let Some(v) = value {
            if v.len() > MAX_XATTR_VALUE {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!(
                        "extended attribute {name:?}: a value of {} bytes exceeds {MAX_XATTR_VALUE}",
                        v.len()
                    ),
                ));
            }
            let after =
                node.xattr_bytes() - old.map_or(0, |o| name.len() + o.len()) + name.len() + v.len();
            if after > MAX_XATTR_BYTES_PER_NODE {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!(
                        "{path}: its extended attributes would hold {after} bytes, at most {MAX_XATTR_BYTES_PER_NODE} are allowed"
                    ),
                ));
            }
        }
        Ok(Prepared::SetXattr {
            ino,
            name: name.to_string(),
            value: value.map(<[u8]>::to_vec),
            now_ms,
        })
    }

    fn prepare_set_attr(
        &self,
        path: &str,
        update: AttrUpdate,
        recursive: bool,
        now_ms: u64,
    ) -> Result<Prepared> {
        if let Some(r) = update.replicas {
            r.validate()?;
        }
        if let Some(c) = update.chunk_size {
            validate_chunk_size(c)?;
        }
        if let Some(t) = update.tier {
            validate_tier(t)?;
        }
        let root = self.lookup(path)?;
        let mut targets = Vec::new();
        let mut stack = vec![root];
        while let Some(ino) = stack.pop() {
            let node = &self.inodes[&ino];
            let mut u = update;
            // A file's chunk index math depends on its chunk size, so it is
            // fixed once the file has chunks.
            if let Some(c) = u.chunk_size {
                if node.kind == InodeKind::File
                    && !node.chunks.is_empty()
                    && c != node.attrs.chunk_size
                {
                    if !recursive {
                        return Err(Error::invalid(format!(
                            "{path} already has chunks of {} bytes; its chunk size cannot change",
                            node.attrs.chunk_size
                        )));
                    }
                    u.chunk_size = None;
                }
            }
            targets.push((ino, u));
            if recursive {
                stack.extend(node.children.values().rev());
            }
        }
        Ok(Prepared::SetAttr { targets, now_ms })
    }

    fn prepare_allocate(
        &self,
        lease: LeaseId,
        index: u64,
        chunk: ChunkId,
        version: MapVersion,
        replicas: &[CsId],
        now_ms: u64,
    ) -> Result<Prepared> {
        let file = self.check_lease(lease, now_ms, true)?.ino;
        let node = &self.inodes[&file];
        let path = self.path_of(file);
        if index.saturating_mul(node.attrs.chunk_size) >= MAX_FILE_SIZE {
            return Err(Error::new(
                ErrorKind::FileTooLarge,
                format!("{path}: chunk {index} lies beyond the maximum file size {MAX_FILE_SIZE}"),
            ));
        }
        if let Some(existing) = node.chunks.get(&index) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{path}: chunk {index} is already allocated as {existing:#x}"),
            ));
        }
        if chunk == ChunkId::MAX {
            // `next_chunk` would wrap to 0 and hand out used ids again.
            return Err(Error::internal(format!(
                "{path}: chunk id {chunk:#x} is the last one: the chunk id space is exhausted"
            )));
        }
        if chunk < self.next_chunk || version == MapVersion(0) {
            return Err(Error::internal(format!(
                "{path}: chunk id {chunk:#x} (version {version}) was already used; next free is {:#x}",
                self.next_chunk
            )));
        }
        validate_chain(replicas)?;
        self.check_servers_usable(replicas)?;
        let min = node.attrs.replicas.min as usize;
        if replicas.len() < min {
            return Err(Error::unavailable(format!(
                "{path}: chunk {index} would have {} replicas, replicas={} needs at least {min}",
                replicas.len(),
                node.attrs.replicas
            )));
        }
        Ok(Prepared::AllocateChunk {
            file,
            chunk,
            record: ChunkRecord {
                file,
                index,
                version,
                replicas: replicas.to_vec(),
            },
        })
    }

    // ----- execution (infallible) ----------------------------------------

    /// Creates a node named `name` in the directory `parent` (a directory
    /// in a set-group-id directory takes its group and its set-group-id
    /// bit; anything else takes its group).
    fn insert_child(
        &mut self,
        parent: InodeId,
        name: String,
        kind: InodeKind,
        perms: Perms,
        spec: Option<&NodeSpec>,
        now_ms: u64,
    ) -> Result<InodeId> {
        let ino = self.next_ino;
        let now = Timestamp::from_ms(now_ms);
        let p = self
            .inodes
            .get_mut(&parent)
            .filter(|p| p.kind == InodeKind::Dir)
            .ok_or_else(|| broken("the parent is a directory"))?;
        if p.children.contains_key(&name) {
            return Err(broken("the name is free"));
        }
        self.next_ino += 1;
        let attrs = p.attrs;
        let mut perms = perms;
        if p.perms.mode & S_ISGID != 0 {
            perms.gid = p.perms.gid;
            if kind == InodeKind::Dir {
                perms.mode |= S_ISGID;
            }
        }
        p.children.insert(name.clone(), ino);
        if kind == InodeKind::Dir {
            p.subdirs = p.subdirs.saturating_add(1);
        }
        p.mtime = now;
        p.ctime = now;
        let (rdev, target) = match spec {
            Some(NodeSpec::CharDevice { rdev } | NodeSpec::BlockDevice { rdev }) => {
                (*rdev, String::new())
            }
            Some(NodeSpec::Symlink { target }) => (0, target.clone()),
            _ => (0, String::new()),
        };
        self.inodes.insert(
            ino,
            Inode {
                ino,
                kind,
                parent,
                name,
                links: BTreeSet::new(),
                children: BTreeMap::new(),
                subdirs: 0,
                size: target.len() as u64,
                perms,
                rdev,
                target,
                atime: now,
                mtime: now,
                ctime: now,
                xattrs: BTreeMap::new(),
                attrs,
                chunks: BTreeMap::new(),
                fence_pending: false,
            },
        );
        Ok(ino)
    }

    /// Adds the entry `name` -> `ino` to the directory `dir`.
    fn add_entry(&mut self, dir: InodeId, name: String, ino: InodeId, now_ms: u64) -> Result<()> {
        let is_dir = self.inodes.get(&ino).map(|n| n.kind) == Some(InodeKind::Dir);
        let d = self
            .inodes
            .get_mut(&dir)
            .filter(|d| d.kind == InodeKind::Dir)
            .ok_or_else(|| broken("an entry's directory exists"))?;
        if d.children.insert(name, ino).is_some() {
            return Err(broken("a new entry's name is free"));
        }
        if is_dir {
            d.subdirs = d.subdirs.saturating_add(1);
        }
        d.mtime = Timestamp::from_ms(now_ms);
        d.ctime = d.mtime;
        Ok(())
    }

    /// Removes the entry `name` (naming `ino`) from the directory `dir`.
    fn remove_entry(&mut self, dir: InodeId, name: &str, ino: InodeId, now_ms: u64) -> Result<()> {
        let is_dir = self.inodes.get(&ino).map(|n| n.kind) == Some(InodeKind::Dir);
        let d = self
            .inodes
            .get_mut(&dir)
            .ok_or_else(|| broken("an entry's directory exists"))?;
        if d.children.remove(name) != Some(ino) {
            return Err(broken("a removed entry names its node"));
        }
        if is_dir {
            d.subdirs = d.subdirs.saturating_sub(1);
        }
        d.mtime = Timestamp::from_ms(now_ms);
        d.ctime = d.mtime;
        Ok(())
    }

    /// Moves one name of `ino` from (`from`, `from_name`) to (`to`,
    /// `to_name`) in the node's own record (not in the directories).
    fn rename_in_node(
        &mut self,
        ino: InodeId,
        from: (InodeId, &str),
        to: (InodeId, String),
    ) -> Result<()> {
        let node = self
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| broken("the renamed node exists"))?;
        if (node.parent, node.name.as_str()) == from {
            node.parent = to.0;
            node.name = to.1;
        } else if node.links.remove(&(from.0, from.1.to_string())) {
            node.links.insert(to);
        } else {
            return Err(broken("the renamed node has the old name"));
        }
        Ok(())
    }

    /// Removes chunks of `ino` with index >= `first_index`, returning their maps.
    fn remove_chunks_from(&mut self, ino: InodeId, first_index: u64) -> Result<Vec<ChunkMap>> {
        let node = self
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| broken("the file whose chunks are removed"))?;
        let before = class_of(node);
        let removed: Vec<ChunkId> = node.chunks.split_off(&first_index).into_values().collect();
        let (after, attrs) = (class_of(node), node.attrs);
        if let Some(index) = self.index.built_mut() {
            index.change_class(before, after);
        }
        removed
            .into_iter()
            .map(|c| {
                let map = self
                    .chunk_map(c)
                    .ok_or_else(|| broken("the record of a file's chunk"))?;
                if let (Some(rec), Some(index)) = (self.chunks.remove(&c), self.index.built_mut()) {
                    index.remove_chunk(c, &rec.replicas, &attrs);
                }
                Ok(map)
            })
            .collect()
    }

    /// Removes the name (`parent`, `name`) of `ino`; when it was the last
    /// one, deletes the node (an empty directory, or a file with its chunks
    /// and leases) and returns the released chunks.
    fn remove_name(
        &mut self,
        ino: InodeId,
        parent: InodeId,
        name: &str,
        now_ms: u64,
    ) -> Result<Vec<ChunkMap>> {
        let node = self.inode(ino).ok_or_else(|| broken("the removed inode"))?;
        if ino == ROOT_INODE || !node.children.is_empty() {
            return Err(broken(
                "the removed inode is not the root nor a non-empty directory",
            ));
        }
        self.remove_entry(parent, name, ino, now_ms)?;
        let node = self
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| broken("the removed inode"))?;
        if (node.parent, node.name.as_str()) == (parent, name) {
            match node.links.pop_first() {
                Some((p, n)) => {
                    node.parent = p;
                    node.name = n;
                }
                None => {
                    let released = self.remove_chunks_from(ino, 0)?;
                    self.leases.retain(|_, l| l.ino != ino);
                    self.locks.drop_file(ino);
                    self.inodes.remove(&ino);
                    return Ok(released);
                }
            }
        } else if !node.links.remove(&(parent, name.to_string())) {
            return Err(broken("the removed name is one of the node's"));
        }
        node.ctime = Timestamp::from_ms(now_ms);
        Ok(Vec::new())
    }

    fn touch_ctime(&mut self, ino: InodeId, now_ms: u64) -> Result<()> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| broken("the changed node exists"))?
            .ctime = Timestamp::from_ms(now_ms);
        Ok(())
    }

    fn bump_chunk(
        &mut self,
        chunk: ChunkId,
        version: MapVersion,
        replicas: Option<Vec<CsId>>,
    ) -> Result<()> {
        let rec = self
            .chunks
            .get_mut(&chunk)
            .ok_or_else(|| broken("the bumped chunk"))?;
        if version <= rec.version {
            return Err(broken("a chunk's version only grows"));
        }
        rec.version = version;
        if let Some(r) = replicas {
            let old = std::mem::replace(&mut rec.replicas, r);
            self.reindex_chain(chunk, &old);
        }
        Ok(())
    }

    /// Tells a built index that the chain of `chunk` was `old` and is now
    /// its record's.
    fn reindex_chain(&mut self, chunk: ChunkId, old: &[CsId]) {
        let Some(index) = self.index.built_mut() else {
            return;
        };
        let Some(rec) = self.chunks.get(&chunk) else {
            return;
        };
        let Some(node) = self.inodes.get(&rec.file) else {
            return;
        };
        index.remove_chunk(chunk, old, &node.attrs);
        index.add_chunk(chunk, &rec.replicas, &node.attrs);
    }

    fn cs_entry(&mut self, cs: CsId) -> &mut CsRecord {
        self.servers.entry(cs).or_insert_with(|| CsRecord::new(cs))
    }

    fn push_event(&mut self, now_ms: u64, kind: EventKind, level: EventLevel, message: String) {
        let seq = self.next_event;
        self.next_event += 1;
        self.events.push_back(Event {
            seq,
            time_ms: now_ms,
            kind,
            level,
            message,
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// Executes a prepared command. Only a tagged command can fail here:
    /// with its refusal, remembered (or replayed); or a bug, as `Internal`
    /// (see [`broken`]).
    pub(crate) fn execute(&mut self, prepared: Prepared) -> Result<ApplyOutcome> {
        match prepared {
            Prepared::Tagged { op, now_ms, inner } => {
                let result = match inner {
                    Ok(inner) => self.execute(*inner),
                    Err(refusal) => refusal.to_result(),
                };
                self.sessions
                    .record(&op, now_ms, Some(OpReply::of(&result)));
                result
            }
            Prepared::Replay { op, now_ms, reply } => {
                self.sessions.record(&op, now_ms, None);
                reply.to_result()
            }
            other => self.execute_prepared(other),
        }
    }

    fn execute_prepared(&mut self, prepared: Prepared) -> Result<ApplyOutcome> {
        Ok(match prepared {
            Prepared::Tagged { .. } | Prepared::Replay { .. } => {
                return Err(broken("a tagged command executed as a plain one"))
            }
            Prepared::Noop => ApplyOutcome::Done,
            Prepared::MkdirExisting(ino) => {
                ApplyOutcome::Stat(self.stat_of(ino).ok_or_else(|| broken("exists"))?)
            }
            Prepared::Mkdir {
                parent,
                names,
                perms,
                now_ms,
            } => {
                let mut cur = parent;
                for name in names {
                    cur = self.insert_child(cur, name, InodeKind::Dir, perms, None, now_ms)?;
                }
                ApplyOutcome::Stat(self.stat_of(cur).ok_or_else(|| broken("just created"))?)
            }
            Prepared::Open {
                existing,
                create_in,
                perms,
                truncate,
                mode,
                now_ms,
                duration_ms,
            } => {
                let ino = match (existing, create_in) {
                    (Some(ino), _) => ino,
                    (None, Some((parent, name))) => {
                        self.insert_child(parent, name, InodeKind::File, perms, None, now_ms)?
                    }
                    (None, None) => return Err(broken("an open without a target")),
                };
                let mut released = Vec::new();
                if truncate {
                    released = self.remove_chunks_from(ino, 0)?;
                    let node = self
                        .inodes
                        .get_mut(&ino)
                        .ok_or_else(|| broken("file exists"))?;
                    node.size = 0;
                    node.mtime = Timestamp::from_ms(now_ms);
                    node.ctime = node.mtime;
                }
                let id = self.next_lease;
                self.next_lease = LeaseId(id.0 + 1);
                self.leases.insert(
                    id,
                    LeaseRecord {
                        id,
                        ino,
                        mode,
                        duration_ms,
                        expires_ms: now_ms.saturating_add(duration_ms),
                    },
                );
                ApplyOutcome::Opened {
                    lease: Lease {
                        id,
                        ino,
                        mode,
                        duration_ms,
                    },
                    stat: self.stat_of(ino).ok_or_else(|| broken("file exists"))?,
                    released,
                }
            }
            Prepared::Unlink {
                ino,
                parent,
                name,
                now_ms,
            } => ApplyOutcome::Released(self.remove_name(ino, parent, &name, now_ms)?),
            Prepared::Rename {
                src,
                src_parent,
                src_name,
                dst_parent,
                dst_name,
                replace,
                exchange,
                now_ms,
            } => {
                let mut released = Vec::new();
                if let Some(t) = replace {
                    if exchange {
                        self.remove_entry(dst_parent, &dst_name, t, now_ms)?;
                    } else {
                        released = self.remove_name(t, dst_parent, &dst_name, now_ms)?;
                    }
                }
                self.remove_entry(src_parent, &src_name, src, now_ms)?;
                self.add_entry(dst_parent, dst_name.clone(), src, now_ms)?;
                self.rename_in_node(src, (src_parent, &src_name), (dst_parent, dst_name.clone()))?;
                if let (Some(t), true) = (replace, exchange) {
                    self.add_entry(src_parent, src_name.clone(), t, now_ms)?;
                    self.rename_in_node(t, (dst_parent, &dst_name), (src_parent, src_name))?;
                    self.touch_ctime(t, now_ms)?;
                }
                self.touch_ctime(src, now_ms)?;
                ApplyOutcome::Released(released)
            }
            Prepared::MakeNode {
                parent,
                name,
                node,
                now_ms,
            } => {
                let kind = InodeKind::of_spec(&node.spec);
                let ino =
                    self.insert_child(parent, name, kind, node.perms, Some(&node.spec), now_ms)?;
                ApplyOutcome::Stat(self.stat_of(ino).ok_or_else(|| broken("just created"))?)
            }
            Prepared::Link {
                ino,
                parent,
                name,
                now_ms,
            } => {
                self.add_entry(parent, name.clone(), ino, now_ms)?;
                let node = self
                    .inodes
                    .get_mut(&ino)
                    .ok_or_else(|| broken("the linked node exists"))?;
                if !node.links.insert((parent, name)) {
                    return Err(broken("a new link's name is free"));
                }
                node.ctime = Timestamp::from_ms(now_ms);
                ApplyOutcome::Stat(self.stat_of(ino).ok_or_else(|| broken("exists"))?)
            }
            Prepared::SetStat {
                ino,
                change,
                now_ms,
            } => {
                let now = Timestamp::from_ms(now_ms);
                let node = self
                    .inodes
                    .get_mut(&ino)
                    .ok_or_else(|| broken("the changed node exists"))?;
                let owner_changed = change.uid.is_some() || change.gid.is_some();
                if let Some(uid) = change.uid {
                    node.perms.uid = uid;
                }
                if let Some(gid) = change.gid {
                    node.perms.gid = gid;
                }
                match change.mode {
                    Some(mode) => node.perms.mode = mode,
                    None if owner_changed && node.kind != InodeKind::Dir => {
                        node.perms.mode &= !S_ISUID;
                        if node.perms.mode & S_IXGRP != 0 {
                            node.perms.mode &= !S_ISGID;
                        }
                    }
                    None => {}
                }
                let time = |t: TimeChange| match t {
                    TimeChange::Now => now,
                    TimeChange::At(t) => t,
                };
                if let Some(t) = change.atime {
                    node.atime = time(t);
                }
                if let Some(t) = change.mtime {
                    node.mtime = time(t);
                }
                node.ctime = now;
                ApplyOutcome::Stat(self.stat_of(ino).ok_or_else(|| broken("exists"))?)
            }
            Prepared::SetXattr {
                ino,
                name,
                value,
                now_ms,
            } => {
                let node = self
                    .inodes
                    .get_mut(&ino)
                    .ok_or_else(|| broken("the changed node exists"))?;
                match value {
                    Some(v) => {
                        node.xattrs.insert(name, v);
                    }
                    None => {
                        node.xattrs.remove(&name);
                    }
                }
                node.ctime = Timestamp::from_ms(now_ms);
                ApplyOutcome::Done
            }
            Prepared::SetAttr { targets, now_ms } => {
                for (ino, update) in targets {
                    let node = self
                        .inodes
                        .get_mut(&ino)
                        .ok_or_else(|| broken("target exists"))?;
                    let (old_attrs, old_class) = (node.attrs, class_of(node));
                    update.apply_to(&mut node.attrs);
                    node.ctime = Timestamp::from_ms(now_ms);
                    if let Some(index) = self.index.built_mut() {
                        index.change_class(old_class, class_of(node));
                        if node.attrs != old_attrs {
                            for &c in node.chunks.values() {
                                if let Some(rec) = self.chunks.get(&c) {
                                    index.remove_chunk(c, &rec.replicas, &old_attrs);
                                    index.add_chunk(c, &rec.replicas, &node.attrs);
                                }
                            }
                        }
                    }
                }
                ApplyOutcome::Done
            }
            Prepared::Renew { lease, expires_ms } => {
                let rec = self
                    .leases
                    .get_mut(&lease)
                    .ok_or_else(|| broken("lease exists"))?;
                rec.expires_ms = rec.expires_ms.max(expires_ms);
                ApplyOutcome::Done
            }
            Prepared::SetLock { ino, lease, req } => {
                self.locks.apply(ino, lease, &req);
                ApplyOutcome::Done
            }
            Prepared::Upgrade { lease, expires_ms } => {
                let rec = self
                    .leases
                    .get_mut(&lease)
                    .ok_or_else(|| broken("the upgraded lease exists"))?;
                rec.mode = LeaseMode::Write;
                rec.expires_ms = rec.expires_ms.max(expires_ms);
                let rec = rec.clone();
                ApplyOutcome::Opened {
                    lease: Lease {
                        id: rec.id,
                        ino: rec.ino,
                        mode: rec.mode,
                        duration_ms: rec.duration_ms,
                    },
                    stat: self.stat_of(rec.ino).ok_or_else(|| broken("leased file"))?,
                    released: Vec::new(),
                }
            }
            Prepared::Release { lease, fence } => {
                if let Some(rec) = self.leases.remove(&lease) {
                    self.locks.drop_lease(rec.ino, lease);
                }
                if let Some(ino) = fence {
                    self.inodes
                        .get_mut(&ino)
                        .ok_or_else(|| broken("leased file"))?
                        .fence_pending = true;
                }
                ApplyOutcome::Done
            }
            Prepared::Expire {
                leases,
                fence,
                now_ms,
            } => {
                for id in &leases {
                    if let Some(rec) = self.leases.remove(id) {
                        self.locks.drop_lease(rec.ino, *id);
                    }
                }
                for ino in fence {
                    self.inodes
                        .get_mut(&ino)
                        .ok_or_else(|| broken("leased file"))?
                        .fence_pending = true;
                    let message = format!(
                        "the write lease on {} expired without renewal: revoked; its chunks are fenced before the next open",
                        self.path_of(ino)
                    );
                    self.push_event(now_ms, EventKind::Lease, EventLevel::Warning, message);
                }
                ApplyOutcome::Expired(leases)
            }
            Prepared::RefreshLeases { now_ms } => {
                for lease in self.leases.values_mut() {
                    lease.expires_ms = now_ms.saturating_add(lease.duration_ms);
                }
                ApplyOutcome::Done
            }
            Prepared::AllocateChunk {
                file,
                chunk,
                record,
            } => {
                let next = self.next_chunk;
                let node = self
                    .inodes
                    .get_mut(&file)
                    .ok_or_else(|| broken("leased file"))?;
                if chunk < next || node.chunks.contains_key(&record.index) {
                    return Err(broken("a new chunk id, at a free index of its file"));
                }
                let before = class_of(node);
                node.chunks.insert(record.index, chunk);
                if let Some(index) = self.index.built_mut() {
                    index.change_class(before, class_of(node));
                    index.add_chunk(chunk, &record.replicas, &node.attrs);
                }
                self.next_chunk = chunk + 1;
                self.chunks.insert(chunk, record);
                ApplyOutcome::ChunkMap(
                    self.chunk_map(chunk)
                        .ok_or_else(|| broken("just inserted"))?,
                )
            }
            Prepared::UpdateChunkMap {
                chunk,
                version,
                replicas,
            } => {
                self.bump_chunk(chunk, version, Some(replicas))?;
                ApplyOutcome::ChunkMap(self.chunk_map(chunk).ok_or_else(|| broken("exists"))?)
            }
            Prepared::Fence(ino, finish) => {
                let node = self
                    .inodes
                    .get_mut(&ino)
                    .ok_or_else(|| broken("file exists"))?;
                if finish {
                    node.fence_pending = false;
                }
                let chunks: Vec<ChunkId> = node.chunks.values().copied().collect();
                let maps = chunks
                    .into_iter()
                    .map(|c| {
                        let v = self
                            .chunk(c)
                            .ok_or_else(|| broken("the file's chunk"))?
                            .version
                            + 1;
                        self.bump_chunk(c, v, None)?;
                        self.chunk_map(c).ok_or_else(|| broken("the bumped chunk"))
                    })
                    .collect::<Result<Vec<ChunkMap>>>()?;
                ApplyOutcome::Fenced(maps)
            }
            Prepared::FinishFence(ino) => {
                self.inodes
                    .get_mut(&ino)
                    .ok_or_else(|| broken("file exists"))?
                    .fence_pending = false;
                ApplyOutcome::Done
            }
            Prepared::CommitSize { ino, size, now_ms } => {
                let node = self
                    .inodes
                    .get_mut(&ino)
                    .ok_or_else(|| broken("leased file"))?;
                node.size = node.size.max(size);
                node.mtime = Timestamp::from_ms(now_ms);
                node.ctime = node.mtime;
                ApplyOutcome::Done
            }
            Prepared::Truncate { ino, size, now_ms } => {
                let chunk_size = self
                    .inode(ino)
                    .ok_or_else(|| broken("the truncated file"))?
                    .attrs
                    .chunk_size;
                // Chunk i is dropped when it starts at or after the new size.
                let first_dropped = size.div_ceil(chunk_size);
                let released = self.remove_chunks_from(ino, first_dropped)?;
                let node = self
                    .inodes
                    .get_mut(&ino)
                    .ok_or_else(|| broken("leased file"))?;
                node.size = size;
                node.mtime = Timestamp::from_ms(now_ms);
                node.ctime = node.mtime;
                ApplyOutcome::Released(released)
            }
            Prepared::AllocateCsId => {
                let id = self.next_cs;
                self.next_cs += 1;
                ApplyOutcome::CsId(id)
            }
            Prepared::SetCsAddr { cs, addr } => {
                self.cs_entry(cs).addr = addr;
                ApplyOutcome::Done
            }
            Prepared::DropCs(cs) => {
                let rec = self.cs_entry(cs);
                rec.dropped = true;
                rec.releasing = false;
                ApplyOutcome::Done
            }
            Prepared::SetParam { key, value, now_ms } => {
                let old = self.params.insert(key.clone(), value);
                let message = match old {
                    Some(old) => format!("{key} changed from {old} to {value}"),
                    None => format!("{key} set to {value}"),
                };
                self.push_event(now_ms, EventKind::Config, EventLevel::Info, message);
                ApplyOutcome::Done
            }
            Prepared::LogEvents { now_ms, events } => {
                for e in events {
                    self.push_event(now_ms, e.kind, e.level, e.message);
                }
                ApplyOutcome::Done
            }
            Prepared::RecordCertificate { record, now_ms } => {
                let message = format!(
                    "certificate {} issued to {} ({})",
                    record.serial, record.name, record.role
                );
                self.certs.record(record, now_ms);
                self.push_event(now_ms, EventKind::Security, EventLevel::Info, message);
                ApplyOutcome::Done
            }
            Prepared::RevokeCertificates { serials, now_ms } => {
                for record in self.certs.revoke(&serials, now_ms) {
                    let whose = if record.name.is_empty() {
                        "an unrecorded node".to_string()
                    } else {
                        format!("{} ({})", record.name, record.role)
                    };
                    let message = format!("certificate {} of {whose} revoked", record.serial);
                    self.push_event(now_ms, EventKind::Security, EventLevel::Warning, message);
                }
                ApplyOutcome::Done
            }
            Prepared::ExtendChain { chunk, added } => {
                let rec = self
                    .chunks
                    .get_mut(&chunk)
                    .ok_or_else(|| broken("chunk exists"))?;
                let old = rec.replicas.clone();
                rec.replicas.extend(added);
                self.reindex_chain(chunk, &old);
                ApplyOutcome::ChunkMap(self.chunk_map(chunk).ok_or_else(|| broken("exists"))?)
            }
            Prepared::SetCsReleasing {
                cs,
                releasing,
                now_ms,
            } => {
                let rec = self.cs_entry(cs);
                let changed = rec.releasing != releasing;
                rec.releasing = releasing;
                let addr = rec.addr.clone();
                if changed {
                    let message = if releasing {
                        format!("chunk server {cs} ({addr}) is being released: its replicas move to other servers")
                    } else {
                        format!("release of chunk server {cs} ({addr}) cancelled")
                    };
                    self.push_event(now_ms, EventKind::CsState, EventLevel::Info, message);
                }
                ApplyOutcome::Done
            }
            Prepared::AllocateMdsId => {
                let id = self.next_mds;
                self.next_mds += 1;
                ApplyOutcome::MdsId(id)
            }
            Prepared::SetCsPlacement { cs, update, now_ms } => {
                let rec = self.cs_entry(cs);
                let mut changes = Vec::new();
                if let Some(l) = update.location.filter(|l| *l != rec.location) {
                    changes.push(format!("location {} -> {l}", rec.location));
                    rec.location = l;
                }
                if let Some(h) = update.host.filter(|h| *h != rec.host) {
                    changes.push(format!("host {:?} -> {h:?}", rec.host));
                    rec.host = h;
                }
                if let Some(t) = update.tier.filter(|t| *t != rec.tier) {
                    changes.push(format!("tier {} -> {t}", rec.tier));
                    rec.tier = t;
                }
                if let Some(c) = update.capacity_bytes.filter(|c| *c != rec.capacity_bytes) {
                    changes.push(format!("capacity {} -> {c} bytes", rec.capacity_bytes));
                    rec.capacity_bytes = c;
                }
                if !changes.is_empty() {
                    let message = format!("chunk server {cs}: {}", changes.join(", "));
                    self.push_event(now_ms, EventKind::CsState, EventLevel::Info, message);
                }
                ApplyOutcome::Done
            }
        })
    }
}
