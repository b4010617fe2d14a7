//! Store format 6 (pstorage 9c8ca3a onwards): client sessions in the
//! state, with the remembered answers of their mutations, and `Tagged`
//! (exactly-once namespace mutations). Frozen: never change a type here
//! (see [`super`]); a change of a stored live type is a new format.

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use super::v1::{
    self, ChunkId, ChunkRecord, CsId, InodeId, InodeKind, LeaseId, LeaseMode, LeaseRecord,
    MapVersion, OpenFlags,
};
use super::v3::{self, Event, Meta, NewEvent};
use super::v5::{self, AttrUpdate, CsPlacementUpdate, CsRecord, FileAttrs, Inode};

/// A client's session (`SessionId`, a newtype struct: serialized as its
/// number).
#[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SessionId(pub(super) u64);

/// Names one namespace mutation of a client.
#[derive(Deserialize)]
pub(super) struct OpTag {
    pub(super) session: SessionId,
    pub(super) seq: u64,
    pub(super) done_below: u64,
}

/// What `stat` returns.
#[derive(Deserialize)]
pub(super) struct Stat {
    pub(super) ino: InodeId,
    pub(super) kind: InodeKind,
    pub(super) size: u64,
    pub(super) mtime_ms: u64,
    pub(super) ctime_ms: u64,
    pub(super) attrs: FileAttrs,
}

/// A granted lease, as `open` answers it.
#[derive(Deserialize)]
pub(super) struct Lease {
    pub(super) id: LeaseId,
    pub(super) ino: InodeId,
    pub(super) mode: LeaseMode,
    pub(super) duration_ms: u64,
}

/// One replica in a chunk's chain.
#[derive(Deserialize)]
pub(super) struct Replica {
    pub(super) cs: CsId,
    pub(super) addr: String,
}

/// Where a chunk lives.
#[derive(Deserialize)]
pub(super) struct ChunkMap {
    pub(super) chunk: ChunkId,
    pub(super) index: u64,
    pub(super) version: MapVersion,
    pub(super) replicas: Vec<Replica>,
}

/// What an applied command produced.
#[derive(Deserialize)]
pub(super) enum ApplyOutcome {
    Done,
    Stat(Stat),
    Opened {
        lease: Lease,
        stat: Stat,
        released: Vec<ChunkMap>,
    },
    Released(Vec<ChunkMap>),
    Expired(Vec<LeaseId>),
    ChunkMap(ChunkMap),
    Fenced(Vec<ChunkMap>),
    CsId(CsId),
    MdsId(u64),
}

/// The answer a tagged operation got.
#[derive(Deserialize)]
pub(super) enum OpReply {
    Applied(ApplyOutcome),
    Refused { kind: u16, message: String },
}

/// What the state knows of one client session.
#[derive(Deserialize)]
pub(super) struct Session {
    pub(super) done_below: u64,
    pub(super) last_seen_ms: u64,
    pub(super) replies: BTreeMap<u64, OpReply>,
}

/// Every remembered session.
#[derive(Deserialize)]
pub(super) struct Sessions {
    pub(super) by_id: BTreeMap<SessionId, Session>,
}

/// The MDS state (format 6).
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
}

/// A snapshot record of the pre-Raft store (format 6).
#[derive(Deserialize)]
pub(super) struct Snapshot {
    pub(super) last_index: u64,
    pub(super) state: MdsState,
}

/// A Raft snapshot record (format 6).
#[derive(Deserialize)]
pub(super) struct SnapshotRecord {
    pub(super) meta: Meta,
    pub(super) state: MdsState,
}

/// A Raft log entry (format 6).
pub(super) type LogEntry = v3::Entry<Command>;

/// A logged command (format 6: format 5's and `Tagged`).
#[derive(Deserialize)]
pub(super) enum Command {
    Mkdir {
        path: String,
        parents: bool,
        now_ms: u64,
    },
    Open {
        path: String,
        mode: LeaseMode,
        flags: OpenFlags,
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
}

/// Before format 6 the state remembered no sessions.
impl From<v5::MdsState> for MdsState {
    fn from(s: v5::MdsState) -> MdsState {
        let v5::MdsState {
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
            sessions: Sessions {
                by_id: BTreeMap::new(),
            },
        }
    }
}

impl From<v5::Snapshot> for Snapshot {
    fn from(s: v5::Snapshot) -> Snapshot {
        Snapshot {
            last_index: s.last_index,
            state: s.state.into(),
        }
    }
}

impl From<v5::SnapshotRecord> for SnapshotRecord {
    fn from(s: v5::SnapshotRecord) -> SnapshotRecord {
        SnapshotRecord {
            meta: s.meta,
            state: s.state.into(),
        }
    }
}

impl From<v5::Command> for Command {
    fn from(c: v5::Command) -> Command {
        use v5::Command as C;
        match c {
            C::Mkdir {
                path,
                parents,
                now_ms,
            } => Command::Mkdir {
                path,
                parents,
                now_ms,
            },
            C::Open {
                path,
                mode,
                flags,
                now_ms,
                lease_duration_ms,
            } => Command::Open {
                path,
                mode,
                flags,
                now_ms,
                lease_duration_ms,
            },
            C::Unlink { path, now_ms } => Command::Unlink { path, now_ms },
            C::Rename { from, to, now_ms } => Command::Rename { from, to, now_ms },
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
        }
    }
}
