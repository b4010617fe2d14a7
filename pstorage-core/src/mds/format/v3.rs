//! Store format 3 (pstorage 3019047 to 86a5e69): the MDS id counter and
//! `AllocateMdsId`, `EventKind::Mds`, and the Raft records: log entries,
//! snapshot records and their metadata, with the node type of the group.
//! Formats 4 to 6 reuse the Raft record shapes defined here. Frozen: never
//! change a type here (see [`super`]).

use std::collections::{BTreeMap, VecDeque};

use openraft::{LogId, Membership, SnapshotMeta};
use serde::{Deserialize, Serialize};

use super::v1::{
    AttrUpdate, ChunkId, ChunkRecord, CsId, Inode, InodeId, LeaseId, LeaseMode, LeaseRecord,
    MapVersion, OpenFlags,
};
use super::v2::{self, CsRecord, EventLevel};

/// An MDS's Raft id (`MdsId`).
pub(super) type MdsId = u64;

/// What the group knows of a member (`MdsNode`). openraft's `Node` bound
/// asks for every derive here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MdsNode {
    pub(super) addr: String,
}

/// A snapshot's metadata, openraft's type over the frozen [`MdsNode`].
pub(super) type Meta = SnapshotMeta<MdsId, MdsNode>;

/// A Raft log entry: openraft's `Entry` shape (`log_id`, `payload`), with
/// this format's command `C` as the application data.
#[derive(Deserialize)]
pub(super) struct Entry<C> {
    pub(super) log_id: LogId<MdsId>,
    pub(super) payload: EntryPayload<C>,
}

/// openraft's `EntryPayload` shape.
#[derive(Deserialize)]
pub(super) enum EntryPayload<C> {
    Blank,
    Normal(RaftRequest<C>),
    Membership(Membership<MdsId, MdsNode>),
}

/// A replicated command (`RaftRequest`).
#[derive(Deserialize)]
pub(super) struct RaftRequest<C> {
    pub(super) cmd: C,
}

impl<C> Entry<C> {
    /// The same entry with its command upgraded to a newer format's.
    pub(super) fn upgrade<D: From<C>>(self) -> Entry<D> {
        let payload = match self.payload {
            EntryPayload::Blank => EntryPayload::Blank,
            EntryPayload::Normal(RaftRequest { cmd }) => {
                EntryPayload::Normal(RaftRequest { cmd: cmd.into() })
            }
            EntryPayload::Membership(m) => EntryPayload::Membership(m),
        };
        Entry {
            log_id: self.log_id,
            payload,
        }
    }
}

/// What an event is about (formats 3 to 6 so far).
#[derive(Deserialize)]
pub(super) enum EventKind {
    CsState,
    Replication,
    Corruption,
    DiskFull,
    Lease,
    Config,
    /// Appended during format 3.
    Mds,
}

/// One entry of the event log (formats 3 to 6).
#[derive(Deserialize)]
pub(super) struct Event {
    pub(super) seq: u64,
    pub(super) time_ms: u64,
    pub(super) kind: EventKind,
    pub(super) level: EventLevel,
    pub(super) message: String,
}

/// An event to append (formats 3 to 6).
#[derive(Deserialize)]
pub(super) struct NewEvent {
    pub(super) kind: EventKind,
    pub(super) level: EventLevel,
    pub(super) message: String,
}

/// The MDS state (format 3).
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

/// A snapshot record of the pre-Raft store (format 3).
#[derive(Deserialize)]
pub(super) struct Snapshot {
    pub(super) last_index: u64,
    pub(super) state: MdsState,
}

/// A Raft snapshot record (format 3).
#[derive(Deserialize)]
pub(super) struct SnapshotRecord {
    pub(super) meta: Meta,
    pub(super) state: MdsState,
}

/// A logged command (format 3: format 2's and `AllocateMdsId`).
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
    AllocateMdsId,
}

impl From<v2::EventKind> for EventKind {
    fn from(k: v2::EventKind) -> EventKind {
        match k {
            v2::EventKind::CsState => EventKind::CsState,
            v2::EventKind::Replication => EventKind::Replication,
            v2::EventKind::Corruption => EventKind::Corruption,
            v2::EventKind::DiskFull => EventKind::DiskFull,
            v2::EventKind::Lease => EventKind::Lease,
            v2::EventKind::Config => EventKind::Config,
        }
    }
}

impl From<v2::Event> for Event {
    fn from(e: v2::Event) -> Event {
        let v2::Event {
            seq,
            time_ms,
            kind,
            level,
            message,
        } = e;
        Event {
            seq,
            time_ms,
            kind: kind.into(),
            level,
            message,
        }
    }
}

impl From<v2::NewEvent> for NewEvent {
    fn from(e: v2::NewEvent) -> NewEvent {
        let v2::NewEvent {
            kind,
            level,
            message,
        } = e;
        NewEvent {
            kind: kind.into(),
            level,
            message,
        }
    }
}

/// A format 2 cluster had one MDS, with the first MDS id (1): the next is 2.
impl From<v2::MdsState> for MdsState {
    fn from(s: v2::MdsState) -> MdsState {
        let v2::MdsState {
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
            events: events.into_iter().map(Event::from).collect(),
            next_event,
            next_mds: 2,
        }
    }
}

impl From<v2::Snapshot> for Snapshot {
    fn from(s: v2::Snapshot) -> Snapshot {
        Snapshot {
            last_index: s.last_index,
            state: s.state.into(),
        }
    }
}

impl From<v2::Command> for Command {
    fn from(c: v2::Command) -> Command {
        use v2::Command as C;
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
            C::SetParam { key, value, now_ms } => Command::SetParam { key, value, now_ms },
            C::LogEvents { now_ms, events } => Command::LogEvents {
                now_ms,
                events: events.into_iter().map(NewEvent::from).collect(),
            },
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
        }
    }
}
