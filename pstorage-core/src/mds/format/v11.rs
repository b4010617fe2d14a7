//! Store format 11: certificates. The state gains a last field, the
//! certificate table (the certificates the cluster's CA issued, by serial,
//! and the revoked serials in the order they were revoked); the event log
//! gains the kind `Security`, so events and the commands that carry them
//! (`LogEvents`, `Tagged`) are this format's; the commands
//! `RecordCertificate` and `RevokeCertificates` are appended. Everything
//! else is format 10's. Frozen: never change a type here (see [`super`]);
//! a change of a stored live type is a new format.
//!
//! What older records become: a state records no certificates.

use std::collections::{BTreeMap, VecDeque};

use openraft::{LogId, Membership};
use serde::Deserialize;

use super::v1::{
    self, ChunkId, ChunkRecord, CsId, InodeId, LeaseId, LeaseMode, LeaseRecord, MapVersion,
    OpenFlags,
};
use super::v10::{self, FileLock, LockRequest};
use super::v2::EventLevel;
use super::v3::{self, MdsId, MdsNode, Meta};
use super::v5::{AttrUpdate, CsPlacementUpdate, CsRecord};
use super::v6::OpTag;
use super::v9::{Inode, NewNode, Perms, RenameFlags, Sessions, StatChange, XattrSet};

/// A certificate's serial number (`CertSerial`, transparent).
pub(super) type CertSerial = u128;

/// What an event is about (format 11: format 3's and `Security`).
#[derive(Deserialize)]
pub(super) enum EventKind {
    CsState,
    Replication,
    Corruption,
    DiskFull,
    Lease,
    Config,
    Mds,
    Security,
}

/// One entry of the event log (format 11).
#[derive(Deserialize)]
pub(super) struct Event {
    pub(super) seq: u64,
    pub(super) time_ms: u64,
    pub(super) kind: EventKind,
    pub(super) level: EventLevel,
    pub(super) message: String,
}

/// An event to append (format 11).
#[derive(Deserialize)]
pub(super) struct NewEvent {
    pub(super) kind: EventKind,
    pub(super) level: EventLevel,
    pub(super) message: String,
}

/// A certificate as the state records it.
#[derive(Deserialize)]
pub(super) struct CertRecord {
    pub(super) serial: CertSerial,
    pub(super) role: String,
    pub(super) name: String,
    pub(super) issued_ms: u64,
    pub(super) not_after_ms: u64,
    pub(super) revoked_ms: Option<u64>,
}

/// The certificate table.
#[derive(Deserialize)]
pub(super) struct CertTable {
    pub(super) certs: BTreeMap<CertSerial, CertRecord>,
    pub(super) revoked: Vec<CertSerial>,
}

/// The MDS state (format 11: format 10's with this format's events, and
/// the certificate table).
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
    pub(super) certs: CertTable,
}

/// A snapshot record of the pre-Raft store (format 11).
#[derive(Deserialize)]
pub(super) struct Snapshot {
    pub(super) last_index: u64,
    pub(super) state: MdsState,
}

/// A Raft snapshot record (format 11).
#[derive(Deserialize)]
pub(super) struct SnapshotRecord {
    pub(super) meta: Meta,
    pub(super) state: MdsState,
}

/// A logged command (format 11: format 10's over this format's events,
/// then `RecordCertificate` and `RevokeCertificates`).
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
    RecordCertificate {
        record: CertRecord,
        now_ms: u64,
    },
    RevokeCertificates {
        serials: Vec<CertSerial>,
        now_ms: u64,
    },
}

/// A Raft log entry (format 11): format 8's shape with format 11's
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

// ----- upgrades from format 10 -----------------------------------------------

impl From<v3::EventKind> for EventKind {
    fn from(k: v3::EventKind) -> EventKind {
        match k {
            v3::EventKind::CsState => EventKind::CsState,
            v3::EventKind::Replication => EventKind::Replication,
            v3::EventKind::Corruption => EventKind::Corruption,
            v3::EventKind::DiskFull => EventKind::DiskFull,
            v3::EventKind::Lease => EventKind::Lease,
            v3::EventKind::Config => EventKind::Config,
            v3::EventKind::Mds => EventKind::Mds,
        }
    }
}

impl From<v3::Event> for Event {
    fn from(e: v3::Event) -> Event {
        let v3::Event {
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

impl From<v3::NewEvent> for NewEvent {
    fn from(e: v3::NewEvent) -> NewEvent {
        let v3::NewEvent {
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

/// A format 10 state recorded no certificates.
impl From<v10::MdsState> for MdsState {
    fn from(s: v10::MdsState) -> MdsState {
        let v10::MdsState {
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
            next_mds,
            sessions,
            locks,
            certs: CertTable {
                certs: BTreeMap::new(),
                revoked: Vec::new(),
            },
        }
    }
}

impl From<v10::Snapshot> for Snapshot {
    fn from(s: v10::Snapshot) -> Snapshot {
        Snapshot {
            last_index: s.last_index,
            state: s.state.into(),
        }
    }
}

impl From<v10::SnapshotRecord> for SnapshotRecord {
    fn from(s: v10::SnapshotRecord) -> SnapshotRecord {
        SnapshotRecord {
            meta: s.meta,
            state: s.state.into(),
        }
    }
}

impl From<v10::Command> for Command {
    fn from(c: v10::Command) -> Command {
        use v10::Command as C;
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
                cmd: Box::new(Command::from(*cmd)),
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
            C::SetLock { lease, req, now_ms } => Command::SetLock { lease, req, now_ms },
            C::UpgradeLease { lease, now_ms } => Command::UpgradeLease { lease, now_ms },
        }
    }
}

impl From<v10::LogEntry> for LogEntry {
    fn from(e: v10::LogEntry) -> LogEntry {
        let payload = match e.payload {
            v10::EntryPayload::Blank => EntryPayload::Blank,
            v10::EntryPayload::Normal(v10::RaftRequest { cmds }) => {
                EntryPayload::Normal(RaftRequest {
                    cmds: cmds.into_iter().map(Command::from).collect(),
                })
            }
            v10::EntryPayload::Membership(m) => EntryPayload::Membership(m),
        };
        LogEntry {
            log_id: e.log_id,
            payload,
        }
    }
}
