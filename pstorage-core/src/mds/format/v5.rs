//! Store formats 4 and 5 (pstorage 86a5e69 to 9c8ca3a): chunk server
//! locations, hosts, tiers and capacities, file tiers and failure domains,
//! the commands `SetAttr` (the older one became `SetAttrV3`) and
//! `SetCsPlacement` (format 4), then `BeginFence` and `FinishFence`
//! (format 5, which changed no other type: a format 4 record never holds
//! them). Frozen: never change a type here (see [`super`]).

use std::collections::{BTreeMap, VecDeque};

use serde::Deserialize;

use super::v1::{
    self, ChunkId, ChunkRecord, CsId, InodeId, InodeKind, LeaseId, LeaseMode, LeaseRecord,
    MapVersion, OpenFlags, Replicas,
};
use super::v2;
use super::v3::{self, Event, Meta, NewEvent};

/// What two replicas of a chunk must not share (formats 4 to 6).
#[derive(Deserialize)]
pub(super) enum FailureDomain {
    Disk,
    Host,
    Rack,
    Row,
    Room,
}

/// Per-file attributes (formats 4 to 6).
#[derive(Deserialize)]
pub(super) struct FileAttrs {
    pub(super) replicas: Replicas,
    pub(super) chunk_size: u64,
    pub(super) tier: u8,
    pub(super) failure_domain: FailureDomain,
}

/// A change of attributes (`SetAttr` of formats 4 to 6).
#[derive(Deserialize)]
pub(super) struct AttrUpdate {
    pub(super) replicas: Option<Replicas>,
    pub(super) chunk_size: Option<u64>,
    pub(super) tier: Option<u8>,
    pub(super) failure_domain: Option<FailureDomain>,
}

/// A change of where a chunk server is and what it holds (formats 4 to 6).
#[derive(Deserialize)]
pub(super) struct CsPlacementUpdate {
    pub(super) location: Option<String>,
    pub(super) host: Option<String>,
    pub(super) tier: Option<u8>,
    pub(super) capacity_bytes: Option<u64>,
}

/// One file or directory (formats 4 to 6).
#[derive(Deserialize)]
pub(super) struct Inode {
    pub(super) ino: InodeId,
    pub(super) kind: InodeKind,
    pub(super) parent: InodeId,
    pub(super) name: String,
    pub(super) children: BTreeMap<String, InodeId>,
    pub(super) size: u64,
    pub(super) mtime_ms: u64,
    pub(super) ctime_ms: u64,
    pub(super) attrs: FileAttrs,
    pub(super) chunks: BTreeMap<u64, ChunkId>,
    pub(super) fence_pending: bool,
}

/// A chunk server (formats 4 to 6).
#[derive(Deserialize)]
pub(super) struct CsRecord {
    pub(super) id: CsId,
    pub(super) addr: String,
    pub(super) dropped: bool,
    pub(super) releasing: bool,
    pub(super) location: String,
    pub(super) host: String,
    pub(super) tier: u8,
    pub(super) capacity_bytes: u64,
}

/// The MDS state (formats 4 and 5).
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
}

/// A snapshot record of the pre-Raft store (formats 4 and 5).
#[derive(Deserialize)]
pub(super) struct Snapshot {
    pub(super) last_index: u64,
    pub(super) state: MdsState,
}

/// A Raft snapshot record (formats 4 and 5).
#[derive(Deserialize)]
pub(super) struct SnapshotRecord {
    pub(super) meta: Meta,
    pub(super) state: MdsState,
}

/// A logged command (formats 4 and 5: format 3's, with `SetAttr` renamed
/// `SetAttrV3`, and four more).
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
    /// Format 5.
    BeginFence {
        ino: InodeId,
    },
    /// Format 5.
    FinishFence {
        ino: InodeId,
    },
}

/// Before format 4 every file had tier 0 and failure domain `host`.
impl From<v1::FileAttrs> for FileAttrs {
    fn from(a: v1::FileAttrs) -> FileAttrs {
        let v1::FileAttrs {
            replicas,
            chunk_size,
        } = a;
        FileAttrs {
            replicas,
            chunk_size,
            tier: 0,
            failure_domain: FailureDomain::Host,
        }
    }
}

impl From<v1::Inode> for Inode {
    fn from(n: v1::Inode) -> Inode {
        let v1::Inode {
            ino,
            kind,
            parent,
            name,
            children,
            size,
            mtime_ms,
            ctime_ms,
            attrs,
            chunks,
            fence_pending,
        } = n;
        Inode {
            ino,
            kind,
            parent,
            name,
            children,
            size,
            mtime_ms,
            ctime_ms,
            attrs: attrs.into(),
            chunks,
            fence_pending,
        }
    }
}

/// Before format 4 a chunk server had the default location `0.0.0`, an
/// unknown host (empty: a host of its own), tier 0 and its file system's
/// size (capacity 0).
impl From<v2::CsRecord> for CsRecord {
    fn from(r: v2::CsRecord) -> CsRecord {
        let v2::CsRecord {
            id,
            addr,
            dropped,
            releasing,
        } = r;
        CsRecord {
            id,
            addr,
            dropped,
            releasing,
            location: "0.0.0".to_string(),
            host: String::new(),
            tier: 0,
            capacity_bytes: 0,
        }
    }
}

impl From<v3::MdsState> for MdsState {
    fn from(s: v3::MdsState) -> MdsState {
        let v3::MdsState {
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
            inodes: inodes.into_iter().map(|(k, v)| (k, v.into())).collect(),
            chunks,
            servers: servers.into_iter().map(|(k, v)| (k, v.into())).collect(),
            leases,
            next_ino,
            next_chunk,
            next_lease,
            next_cs,
            params,
            events,
            next_event,
            next_mds,
        }
    }
}

impl From<v3::Snapshot> for Snapshot {
    fn from(s: v3::Snapshot) -> Snapshot {
        Snapshot {
            last_index: s.last_index,
            state: s.state.into(),
        }
    }
}

impl From<v3::SnapshotRecord> for SnapshotRecord {
    fn from(s: v3::SnapshotRecord) -> SnapshotRecord {
        SnapshotRecord {
            meta: s.meta,
            state: s.state.into(),
        }
    }
}

impl From<v3::Command> for Command {
    fn from(c: v3::Command) -> Command {
        use v3::Command as C;
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
        }
    }
}
