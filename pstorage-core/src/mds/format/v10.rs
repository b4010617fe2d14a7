//! Store format 10: byte-range locks and in-place lease upgrades. The
//! state gains a last field, the lock table (per inode, its locks sorted
//! by start, each held by a lease and a lock owner), and the commands
//! `SetLock` (set or remove a lock of a leased file) and `UpgradeLease` (a
//! read lease becomes a write lease, keeping its id and locks) are
//! appended. Inodes, `stat` answers, sessions, snapshot metadata and
//! everything else are format 9's. Frozen: never change a type here (see
//! [`super`]); a change of a stored live type is a new format.
//!
//! What older records become: a state holds no locks.

use std::collections::{BTreeMap, VecDeque};

use openraft::{LogId, Membership};
use serde::Deserialize;

use super::v1::{
    self, ChunkId, ChunkRecord, CsId, InodeId, LeaseId, LeaseMode, LeaseRecord, MapVersion,
    OpenFlags,
};
use super::v3::{Event, MdsId, MdsNode, Meta, NewEvent};
use super::v5::{AttrUpdate, CsPlacementUpdate, CsRecord};
use super::v6::OpTag;
use super::v9::{self, Inode, NewNode, Perms, RenameFlags, Sessions, StatChange, XattrSet};

/// Who holds a lock, as its client names it (`LockOwner`, transparent).
pub(super) type LockOwner = u64;

/// A lock's kind.
#[derive(Deserialize)]
pub(super) enum LockKind {
    Shared,
    Exclusive,
}

/// A byte-range lock as the state stores it.
#[derive(Deserialize)]
pub(super) struct FileLock {
    pub(super) lease: LeaseId,
    pub(super) owner: LockOwner,
    pub(super) kind: LockKind,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) pid: u32,
}

/// A lock request of one owner over bytes `start..=end`; no kind unlocks.
#[derive(Deserialize)]
pub(super) struct LockRequest {
    pub(super) owner: LockOwner,
    pub(super) kind: Option<LockKind>,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) pid: u32,
}

/// The MDS state (format 10: format 9's and the lock table, a
/// transparent `LockTable`).
#[derive(Deserialize)]
pub(super) struct MdsState {
    pub(super) inodes: BTreeMap<InodeId, Inode>,
    pub(super) chunks: BTreeMap<ChunkId, ChunkRecord>,
    pub(super) servers: BTreeMap<CsId, CsRecord>,
    pub(super) leases: BTreeMap<LeaseId, LeaseRecord>,
    pub(super) next_ino: InodeId,
    pub(super) next_chunk: ChunkId,
    pub(super) next_lease: LeaseId,
    pub(super) next_cs: CsId,
    pub(super) params: BTreeMap<String, u64>,
    pub(super) events: VecDeque<Event>,
    pub(super) next_event: u64,
    pub(super) next_mds: u64,
    pub(super) sessions: Sessions,
    pub(super) locks: BTreeMap<InodeId, Vec<FileLock>>,
}

/// A snapshot record of the pre-Raft store (format 10).
#[derive(Deserialize)]
pub(super) struct Snapshot {
    pub(super) last_index: u64,
    pub(super) state: MdsState,
}

/// A Raft snapshot record (format 10).
#[derive(Deserialize)]
pub(super) struct SnapshotRecord {
    pub(super) meta: Meta,
    pub(super) state: MdsState,
}

/// A logged command (format 10: format 9's, then `SetLock` and
/// `UpgradeLease`).
#[derive(Deserialize)]
pub(super) enum Command {
    Mkdir {
        path: String,
        parents: bool,
        perms: Perms,
        now_ms: u64,
    },
    Open {
        path: String,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        now_ms: u64,
        lease_duration_ms: u64,
    },
    Unlink {
        path: String,
        now_ms: u64,
    },
    Rename {
        from: String,
        to: String,
        flags: RenameFlags,
        now_ms: u64,
    },
    SetAttrV3 {
        path: String,
        update: v1::AttrUpdate,
        recursive: bool,
        now_ms: u64,
    },
    RenewLease {
        lease: LeaseId,
        now_ms: u64,
    },
    ReleaseLease {
        lease: LeaseId,
        now_ms: u64,
    },
    ExpireLeases {
        now_ms: u64,
    },
    AllocateChunk {
        lease: LeaseId,
        index: u64,
        chunk: ChunkId,
        version: MapVersion,
        replicas: Vec<CsId>,
        now_ms: u64,
    },
    UpdateChunkMap {
        chunk: ChunkId,
        version: MapVersion,
        replicas: Vec<CsId>,
    },
    FenceFile {
        ino: InodeId,
    },
    CommitSize {
        lease: LeaseId,
        size: u64,
        now_ms: u64,
    },
    Truncate {
        lease: LeaseId,
        size: u64,
        now_ms: u64,
    },
    AllocateCsId,
    SetCsAddr {
        cs: CsId,
        addr: String,
    },
    DropCs {
        cs: CsId,
    },
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
        version: MapVersion,
        added: Vec<CsId>,
    },
    SetCsReleasing {
        cs: CsId,
        releasing: bool,
        now_ms: u64,
    },
    AllocateMdsId,
    SetAttr {
        path: String,
        update: AttrUpdate,
        recursive: bool,
        now_ms: u64,
    },
    SetCsPlacement {
        cs: CsId,
        update: CsPlacementUpdate,
        now_ms: u64,
    },
    BeginFence {
        ino: InodeId,
    },
    FinishFence {
        ino: InodeId,
    },
    Tagged {
        op: OpTag,
        now_ms: u64,
        cmd: Box<Command>,
    },
    RefreshLeases {
        now_ms: u64,
    },
    MakeNode {
        path: String,
        node: NewNode,
        now_ms: u64,
    },
    Link {
        from: String,
        to: String,
        now_ms: u64,
    },
    SetStat {
        path: String,
        change: StatChange,
        now_ms: u64,
    },
    SetXattr {
        path: String,
        name: String,
        value: Option<Vec<u8>>,
        how: XattrSet,
        now_ms: u64,
    },
    SetLock {
        lease: LeaseId,
        req: LockRequest,
        now_ms: u64,
    },
    UpgradeLease {
        lease: LeaseId,
        now_ms: u64,
    },
}

/// A Raft log entry (format 10): format 8's shape with format 10's
/// commands.
#[derive(Deserialize)]
pub(super) struct LogEntry {
    pub(super) log_id: LogId<MdsId>,
    pub(super) payload: EntryPayload,
}

/// openraft's `EntryPayload` shape.
#[derive(Deserialize)]
pub(super) enum EntryPayload {
    Blank,
    Normal(RaftRequest),
    Membership(Membership<MdsId, MdsNode>),
}

/// The replicated commands of one entry, applied in order.
#[derive(Deserialize)]
pub(super) struct RaftRequest {
    pub(super) cmds: Vec<Command>,
}

// ----- upgrades from format 9 ------------------------------------------------

/// A format 9 state held no locks.
impl From<v9::MdsState> for MdsState {
    fn from(s: v9::MdsState) -> MdsState {
        let v9::MdsState {
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
        } = s;
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
            locks: BTreeMap::new(),
        }
    }
}

impl From<v9::Snapshot> for Snapshot {
    fn from(s: v9::Snapshot) -> Snapshot {
        Snapshot {
            last_index: s.last_index,
            state: s.state.into(),
        }
    }
}

impl From<v9::SnapshotRecord> for SnapshotRecord {
    fn from(s: v9::SnapshotRecord) -> SnapshotRecord {
        SnapshotRecord {
            meta: s.meta,
            state: s.state.into(),
        }
    }
}

impl From<v9::Command> for Command {
    fn from(c: v9::Command) -> Command {
        use v9::Command as C;
        match c {
            C::Mkdir {
                path,
                parents,
                perms,
                now_ms,
            } => Command::Mkdir {
                path,
                parents,
                perms,
                now_ms,
            },
            C::Open {
                path,
                mode,
                flags,
                perms,
                now_ms,
                lease_duration_ms,
            } => Command::Open {
                path,
                mode,
                flags,
                perms,
                now_ms,
                lease_duration_ms,
            },
            C::Unlink { path, now_ms } => Command::Unlink { path, now_ms },
            C::Rename {
                from,
                to,
                flags,
                now_ms,
            } => Command::Rename {
                from,
                to,
                flags,
                now_ms,
            },
            C::SetAttrV3 {
                path,
                update,
                recursive,
                now_ms,
            } => Command::SetAttrV3 {
                path,
                update,
                recursive,
                now_ms,
            },
            C::RenewLease { lease, now_ms } => Command::RenewLease { lease, now_ms },
            C::ReleaseLease { lease, now_ms } => Command::ReleaseLease { lease, now_ms },
            C::ExpireLeases { now_ms } => Command::ExpireLeases { now_ms },
            C::AllocateChunk {
                lease,
                index,
                chunk,
                version,
                replicas,
                now_ms,
            } => Command::AllocateChunk {
                lease,
                index,
                chunk,
                version,
                replicas,
                now_ms,
            },
            C::UpdateChunkMap {
                chunk,
                version,
                replicas,
            } => Command::UpdateChunkMap {
                chunk,
                version,
                replicas,
            },
            C::FenceFile { ino } => Command::FenceFile { ino },
            C::CommitSize {
                lease,
                size,
                now_ms,
            } => Command::CommitSize {
                lease,
                size,
                now_ms,
            },
            C::Truncate {
                lease,
                size,
                now_ms,
            } => Command::Truncate {
                lease,
                size,
                now_ms,
            },
            C::AllocateCsId => Command::AllocateCsId,
            C::SetCsAddr { cs, addr } => Command::SetCsAddr { cs, addr },
            C::DropCs { cs } => Command::DropCs { cs },
            C::SetParam { key, value, now_ms } => Command::SetParam { key, value, now_ms },
            C::LogEvents { now_ms, events } => Command::LogEvents { now_ms, events },
            C::ExtendChain {
                chunk,
                version,
                added,
            } => Command::ExtendChain {
                chunk,
                version,
                added,
            },
            C::SetCsReleasing {
                cs,
                releasing,
                now_ms,
            } => Command::SetCsReleasing {
                cs,
                releasing,
                now_ms,
            },
            C::AllocateMdsId => Command::AllocateMdsId,
            C::SetAttr {
                path,
                update,
                recursive,
                now_ms,
            } => Command::SetAttr {
                path,
                update,
                recursive,
                now_ms,
            },
            C::SetCsPlacement { cs, update, now_ms } => {
                Command::SetCsPlacement { cs, update, now_ms }
            }
            C::BeginFence { ino } => Command::BeginFence { ino },
            C::FinishFence { ino } => Command::FinishFence { ino },
            C::Tagged { op, now_ms, cmd } => Command::Tagged {
                op,
                now_ms,
                cmd: Box::new((*cmd).into()),
            },
            C::RefreshLeases { now_ms } => Command::RefreshLeases { now_ms },
            C::MakeNode { path, node, now_ms } => Command::MakeNode { path, node, now_ms },
            C::Link { from, to, now_ms } => Command::Link { from, to, now_ms },
            C::SetStat {
                path,
                change,
                now_ms,
            } => Command::SetStat {
                path,
                change,
                now_ms,
            },
            C::SetXattr {
                path,
                name,
                value,
                how,
                now_ms,
            } => Command::SetXattr {
                path,
                name,
                value,
                how,
                now_ms,
            },
        }
    }
}

impl From<v9::LogEntry> for LogEntry {
    fn from(e: v9::LogEntry) -> LogEntry {
        let payload = match e.payload {
            v9::EntryPayload::Blank => EntryPayload::Blank,
            v9::EntryPayload::Normal(v9::RaftRequest { cmds }) => {
                EntryPayload::Normal(RaftRequest {
                    cmds: cmds.into_iter().map(Command::from).collect(),
                })
            }
            v9::EntryPayload::Membership(m) => EntryPayload::Membership(m),
        };
        LogEntry {
            log_id: e.log_id,
            payload,
        }
    }
}
