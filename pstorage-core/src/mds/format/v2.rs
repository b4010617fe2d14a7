//! Store format 2 (pstorage 41b813c to 3019047): cluster parameters, the
//! event log and graceful chunk server removal; the commands after
//! `DropCs`. Frozen: never change a type here (see [`super`]).

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use super::v1::{
    self, AttrUpdate, ChunkId, ChunkRecord, CsId, Inode, InodeId, LeaseId, LeaseMode, LeaseRecord,
    MapVersion, OpenFlags,
};

/// What an event is about (format 2; format 3 appended `Mds`).
#[derive(Deserialize)]
pub(super) enum EventKind {
    CsState,
    Replication,
    Corruption,
    DiskFull,
    Lease,
    Config,
}

/// How serious an event is (every format so far).
#[derive(Deserialize)]
pub(super) enum EventLevel {
    Info,
    Warning,
    Error,
}

/// One entry of the event log (format 2).
#[derive(Deserialize)]
pub(super) struct Event {
    pub(super) seq: u64,
    pub(super) time_ms: u64,
    pub(super) kind: EventKind,
    pub(super) level: EventLevel,
    pub(super) message: String,
}

/// An event to append (format 2).
#[derive(Deserialize)]
pub(super) struct NewEvent {
    pub(super) kind: EventKind,
    pub(super) level: EventLevel,
    pub(super) message: String,
}

/// A chunk server (formats 2 and 3).
#[derive(Deserialize)]
pub(super) struct CsRecord {
    pub(super) id: CsId,
    pub(super) addr: String,
    pub(super) dropped: bool,
    pub(super) releasing: bool,
}

/// The MDS state (format 2).
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
}

/// A snapshot record of the pre-Raft store (format 2).
#[derive(Deserialize)]
pub(super) struct Snapshot {
    pub(super) last_index: u64,
    pub(super) state: MdsState,
}

/// A logged command (format 2: format 1's and four more).
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
    SetAttr {
        path: String,
        update: AttrUpdate,
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
}

impl From<v1::CsRecord> for CsRecord {
    fn from(r: v1::CsRecord) -> CsRecord {
        let v1::CsRecord { id, addr, dropped } = r;
        CsRecord {
            id,
            addr,
            dropped,
            releasing: false,
        }
    }
}

/// Format 1 had no parameters and no events.
impl From<v1::MdsState> for MdsState {
    fn from(s: v1::MdsState) -> MdsState {
        let v1::MdsState {
            inodes,
            chunks,
            servers,
            leases,
            next_ino,
            next_chunk,
            next_lease,
            next_cs,
        } = s;
        MdsState {
            inodes,
            chunks,
            servers: servers.into_iter().map(|(k, v)| (k, v.into())).collect(),
            leases,
            next_ino,
            next_chunk,
            next_lease,
            next_cs,
            params: BTreeMap::new(),
            events: VecDeque::new(),
            next_event: 1,
        }
    }
}

impl From<v1::Snapshot> for Snapshot {
    fn from(s: v1::Snapshot) -> Snapshot {
        Snapshot {
            last_index: s.last_index,
            state: s.state.into(),
        }
    }
}

impl From<v1::Command> for Command {
    fn from(c: v1::Command) -> Command {
        use v1::Command as C;
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
        }
    }
}
