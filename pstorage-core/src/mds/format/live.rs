//! The newest format's frozen types converted to the live types: the one
//! place that changes when a live type changes (together with a new
//! format, see [`super`]). Every older format reaches these through its
//! chain of upgrades (`From` impls in the newer format modules).

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership};

use super::{v1, v10, v11, v2, v3, v5, v6, v9, RaftMeta};
use crate::mds::certs::CertTable;
use crate::mds::locks::{FileLock, LockTable};
use crate::mds::raft::{MdsId, MdsNode, MdsRaftConfig, RaftRequest};
use crate::mds::sessions::{OpReply, Session, Sessions};
use crate::mds::state::{
    ApplyOutcome, AttrUpdateV3, ChunkRecord, Command, CsRecord, Inode, LeaseRecord, MdsState,
    MdsStateParts, NewEvent,
};
use crate::types::{
    AttrUpdate, CertRecord, CertSerial, ChunkId, ChunkMap, CsId, CsPlacementUpdate, Event,
    EventKind, EventLevel, FailureDomain, FileAttrs, InodeId, InodeKind, Lease, LeaseId, LeaseMode,
    LockKind, LockOwner, LockRequest, MapVersion, NewNode, NodeSpec, OpTag, OpenFlags, Perms,
    RenameFlags, Replica, Replicas, SessionId, Stat, StatChange, TimeChange, Timestamp, XattrSet,
};

fn cs_ids(ids: Vec<v1::CsId>) -> Vec<CsId> {
    ids.into_iter().map(CsId).collect()
}

impl From<v1::Replicas> for Replicas {
    fn from(r: v1::Replicas) -> Replicas {
        let v1::Replicas { norm, min } = r;
        Replicas { norm, min }
    }
}

impl From<v9::InodeKind> for InodeKind {
    fn from(k: v9::InodeKind) -> InodeKind {
        match k {
            v9::InodeKind::File => InodeKind::File,
            v9::InodeKind::Dir => InodeKind::Dir,
            v9::InodeKind::Symlink => InodeKind::Symlink,
            v9::InodeKind::Fifo => InodeKind::Fifo,
            v9::InodeKind::Socket => InodeKind::Socket,
            v9::InodeKind::CharDevice => InodeKind::CharDevice,
            v9::InodeKind::BlockDevice => InodeKind::BlockDevice,
        }
    }
}

impl From<v1::LeaseMode> for LeaseMode {
    fn from(m: v1::LeaseMode) -> LeaseMode {
        match m {
            v1::LeaseMode::Read => LeaseMode::Read,
            v1::LeaseMode::Write => LeaseMode::Write,
        }
    }
}

impl From<v1::OpenFlags> for OpenFlags {
    fn from(f: v1::OpenFlags) -> OpenFlags {
        let v1::OpenFlags {
            create,
            exclusive,
            truncate,
        } = f;
        OpenFlags {
            create,
            exclusive,
            truncate,
        }
    }
}

impl From<v1::AttrUpdate> for AttrUpdateV3 {
    fn from(u: v1::AttrUpdate) -> AttrUpdateV3 {
        let v1::AttrUpdate {
            replicas,
            chunk_size,
        } = u;
        AttrUpdateV3 {
            replicas: replicas.map(Replicas::from),
            chunk_size,
        }
    }
}

impl From<v1::ChunkRecord> for ChunkRecord {
    fn from(r: v1::ChunkRecord) -> ChunkRecord {
        let v1::ChunkRecord {
            file,
            index,
            version,
            replicas,
        } = r;
        ChunkRecord {
            file: InodeId(file),
            index,
            version: MapVersion(version),
            replicas: cs_ids(replicas),
        }
    }
}

impl From<v1::LeaseRecord> for LeaseRecord {
    fn from(r: v1::LeaseRecord) -> LeaseRecord {
        let v1::LeaseRecord {
            id,
            ino,
            mode,
            duration_ms,
            expires_ms,
        } = r;
        LeaseRecord {
            id: LeaseId(id),
            ino: InodeId(ino),
            mode: mode.into(),
            duration_ms,
            expires_ms,
        }
    }
}

impl From<v2::EventLevel> for EventLevel {
    fn from(l: v2::EventLevel) -> EventLevel {
        match l {
            v2::EventLevel::Info => EventLevel::Info,
            v2::EventLevel::Warning => EventLevel::Warning,
            v2::EventLevel::Error => EventLevel::Error,
        }
    }
}

impl From<v11::EventKind> for EventKind {
    fn from(k: v11::EventKind) -> EventKind {
        match k {
            v11::EventKind::CsState => EventKind::CsState,
            v11::EventKind::Replication => EventKind::Replication,
            v11::EventKind::Corruption => EventKind::Corruption,
            v11::EventKind::DiskFull => EventKind::DiskFull,
            v11::EventKind::Lease => EventKind::Lease,
            v11::EventKind::Config => EventKind::Config,
            v11::EventKind::Mds => EventKind::Mds,
            v11::EventKind::Security => EventKind::Security,
        }
    }
}

impl From<v11::Event> for Event {
    fn from(e: v11::Event) -> Event {
        let v11::Event {
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
            level: level.into(),
            message,
        }
    }
}

impl From<v11::NewEvent> for NewEvent {
    fn from(e: v11::NewEvent) -> NewEvent {
        let v11::NewEvent {
            kind,
            level,
            message,
        } = e;
        NewEvent {
            kind: kind.into(),
            level: level.into(),
            message,
        }
    }
}

impl From<v3::MdsNode> for MdsNode {
    fn from(n: v3::MdsNode) -> MdsNode {
        let v3::MdsNode { addr } = n;
        MdsNode { addr }
    }
}

impl From<v5::FailureDomain> for FailureDomain {
    fn from(d: v5::FailureDomain) -> FailureDomain {
        match d {
            v5::FailureDomain::Disk => FailureDomain::Disk,
            v5::FailureDomain::Host => FailureDomain::Host,
            v5::FailureDomain::Rack => FailureDomain::Rack,
            v5::FailureDomain::Row => FailureDomain::Row,
            v5::FailureDomain::Room => FailureDomain::Room,
        }
    }
}

impl From<v5::FileAttrs> for FileAttrs {
    fn from(a: v5::FileAttrs) -> FileAttrs {
        let v5::FileAttrs {
            replicas,
            chunk_size,
            tier,
            failure_domain,
        } = a;
        FileAttrs {
            replicas: replicas.into(),
            chunk_size,
            tier,
            failure_domain: failure_domain.into(),
        }
    }
}

impl From<v5::AttrUpdate> for AttrUpdate {
    fn from(u: v5::AttrUpdate) -> AttrUpdate {
        let v5::AttrUpdate {
            replicas,
            chunk_size,
            tier,
            failure_domain,
        } = u;
        AttrUpdate {
            replicas: replicas.map(Replicas::from),
            chunk_size,
            tier,
            failure_domain: failure_domain.map(FailureDomain::from),
        }
    }
}

impl From<v5::CsPlacementUpdate> for CsPlacementUpdate {
    fn from(u: v5::CsPlacementUpdate) -> CsPlacementUpdate {
        let v5::CsPlacementUpdate {
            location,
            host,
            tier,
            capacity_bytes,
        } = u;
        CsPlacementUpdate {
            location,
            host,
            tier,
            capacity_bytes,
        }
    }
}

impl From<v5::CsRecord> for CsRecord {
    fn from(r: v5::CsRecord) -> CsRecord {
        let v5::CsRecord {
            id,
            addr,
            dropped,
            releasing,
            location,
            host,
            tier,
            capacity_bytes,
        } = r;
        CsRecord {
            id: CsId(id),
            addr,
            dropped,
            releasing,
            location,
            host,
            tier,
            capacity_bytes,
        }
    }
}

impl From<v6::SessionId> for SessionId {
    fn from(id: v6::SessionId) -> SessionId {
        SessionId(id.0)
    }
}

impl From<v6::OpTag> for OpTag {
    fn from(t: v6::OpTag) -> OpTag {
        let v6::OpTag {
            session,
            seq,
            done_below,
        } = t;
        OpTag {
            session: session.into(),
            seq,
            done_below,
        }
    }
}

impl From<v6::Lease> for Lease {
    fn from(l: v6::Lease) -> Lease {
        let v6::Lease {
            id,
            ino,
            mode,
            duration_ms,
        } = l;
        Lease {
            id: LeaseId(id),
            ino: InodeId(ino),
            mode: mode.into(),
            duration_ms,
        }
    }
}

impl From<v6::Replica> for Replica {
    fn from(r: v6::Replica) -> Replica {
        let v6::Replica { cs, addr } = r;
        Replica { cs: CsId(cs), addr }
    }
}

impl From<v6::ChunkMap> for ChunkMap {
    fn from(m: v6::ChunkMap) -> ChunkMap {
        let v6::ChunkMap {
            chunk,
            index,
            version,
            replicas,
        } = m;
        ChunkMap {
            chunk: ChunkId(chunk),
            index,
            version: MapVersion(version),
            replicas: replicas.into_iter().map(Replica::from).collect(),
        }
    }
}

fn chunk_maps(maps: Vec<v6::ChunkMap>) -> Vec<ChunkMap> {
    maps.into_iter().map(ChunkMap::from).collect()
}

/// The live state and last log index of a pre-Raft snapshot record.
pub(super) fn store_snapshot(s: v11::Snapshot) -> (u64, MdsState) {
    (s.last_index, s.state.into())
}

/// A Raft snapshot record's metadata and live state.
pub(super) fn raft_snapshot(s: v11::SnapshotRecord) -> (RaftMeta, MdsState) {
    (meta(s.meta), s.state.into())
}

/// A membership over the live node type, with the same configs and nodes
/// (`Membership::new` adds a default node for a voter without one, which
/// openraft never stores).
fn membership(m: &Membership<v3::MdsId, v3::MdsNode>) -> Membership<MdsId, MdsNode> {
    let nodes: BTreeMap<MdsId, MdsNode> = m
        .nodes()
        .map(|(id, node)| (MdsId(*id), MdsNode::from(node.clone())))
        .collect();
    let configs: Vec<BTreeSet<MdsId>> = m
        .get_joint_config()
        .iter()
        .map(|voters| voters.iter().copied().map(MdsId).collect())
        .collect();
    Membership::new(configs, nodes)
}

/// A log id over the live node id (the same number).
fn log_id(l: LogId<v3::MdsId>) -> LogId<MdsId> {
    LogId::new(
        CommittedLeaderId::new(l.leader_id.term, MdsId(l.leader_id.node_id)),
        l.index,
    )
}

/// Snapshot metadata over the live node type.
pub(super) fn meta(m: v3::Meta) -> RaftMeta {
    RaftMeta {
        last_log_id: m.last_log_id.map(log_id),
        last_membership: StoredMembership::new(
            m.last_membership.log_id().map(log_id),
            membership(m.last_membership.membership()),
        ),
        snapshot_id: m.snapshot_id,
    }
}

/// A Raft log entry with the live command.
pub(super) fn raft_entry(e: v11::LogEntry) -> Entry<MdsRaftConfig> {
    let payload = match e.payload {
        v11::EntryPayload::Blank => EntryPayload::Blank,
        v11::EntryPayload::Normal(v11::RaftRequest { cmds }) => EntryPayload::Normal(RaftRequest {
            cmds: cmds.into_iter().map(Into::into).collect(),
        }),
        v11::EntryPayload::Membership(m) => EntryPayload::Membership(membership(&m)),
    };
    Entry {
        log_id: log_id(e.log_id),
        payload,
    }
}

impl From<v9::Timestamp> for Timestamp {
    fn from(t: v9::Timestamp) -> Timestamp {
        let v9::Timestamp { sec, nsec } = t;
        Timestamp { sec, nsec }
    }
}

impl From<v9::Perms> for Perms {
    fn from(p: v9::Perms) -> Perms {
        let v9::Perms { mode, uid, gid } = p;
        Perms { mode, uid, gid }
    }
}

impl From<v9::NodeSpec> for NodeSpec {
    fn from(s: v9::NodeSpec) -> NodeSpec {
        match s {
            v9::NodeSpec::File => NodeSpec::File,
            v9::NodeSpec::Symlink { target } => NodeSpec::Symlink { target },
            v9::NodeSpec::Fifo => NodeSpec::Fifo,
            v9::NodeSpec::Socket => NodeSpec::Socket,
            v9::NodeSpec::CharDevice { rdev } => NodeSpec::CharDevice { rdev },
            v9::NodeSpec::BlockDevice { rdev } => NodeSpec::BlockDevice { rdev },
        }
    }
}

impl From<v9::TimeChange> for TimeChange {
    fn from(t: v9::TimeChange) -> TimeChange {
        match t {
            v9::TimeChange::Now => TimeChange::Now,
            v9::TimeChange::At(t) => TimeChange::At(t.into()),
        }
    }
}

impl From<v9::StatChange> for StatChange {
    fn from(c: v9::StatChange) -> StatChange {
        let v9::StatChange {
            mode,
            uid,
            gid,
            atime,
            mtime,
        } = c;
        StatChange {
            mode,
            uid,
            gid,
            atime: atime.map(TimeChange::from),
            mtime: mtime.map(TimeChange::from),
        }
    }
}

impl From<v9::Inode> for Inode {
    fn from(n: v9::Inode) -> Inode {
        let v9::Inode {
            ino,
            kind,
            parent,
            name,
            links,
            children,
            subdirs,
            size,
            perms,
            rdev,
            target,
            atime,
            mtime,
            ctime,
            xattrs,
            attrs,
            chunks,
            fence_pending,
        } = n;
        Inode {
            ino: InodeId(ino),
            kind: kind.into(),
            parent: InodeId(parent),
            name,
            links: links
                .into_iter()
                .map(|(dir, name)| (InodeId(dir), name))
                .collect(),
            children: children
                .into_iter()
                .map(|(name, ino)| (name, InodeId(ino)))
                .collect(),
            subdirs,
            size,
            perms: perms.into(),
            rdev,
            target,
            atime: atime.into(),
            mtime: mtime.into(),
            ctime: ctime.into(),
            xattrs,
            attrs: attrs.into(),
            chunks: chunks
                .into_iter()
                .map(|(index, chunk)| (index, ChunkId(chunk)))
                .collect(),
            fence_pending,
        }
    }
}

impl From<v9::Stat> for Stat {
    fn from(s: v9::Stat) -> Stat {
        let v9::Stat {
            ino,
            kind,
            size,
            mode,
            uid,
            gid,
            nlink,
            rdev,
            atime,
            mtime,
            ctime,
            attrs,
        } = s;
        Stat {
            ino: InodeId(ino),
            kind: kind.into(),
            size,
            mode,
            uid,
            gid,
            nlink,
            rdev,
            atime: atime.into(),
            mtime: mtime.into(),
            ctime: ctime.into(),
            attrs: attrs.into(),
        }
    }
}

impl From<v9::ApplyOutcome> for ApplyOutcome {
    fn from(o: v9::ApplyOutcome) -> ApplyOutcome {
        use v9::ApplyOutcome as O;
        match o {
            O::Done => ApplyOutcome::Done,
            O::Stat(stat) => ApplyOutcome::Stat(stat.into()),
            O::Opened {
                lease,
                stat,
                released,
            } => ApplyOutcome::Opened {
                lease: lease.into(),
                stat: stat.into(),
                released: chunk_maps(released),
            },
            O::Released(maps) => ApplyOutcome::Released(chunk_maps(maps)),
            O::Expired(leases) => ApplyOutcome::Expired(leases.into_iter().map(LeaseId).collect()),
            O::ChunkMap(map) => ApplyOutcome::ChunkMap(map.into()),
            O::Fenced(maps) => ApplyOutcome::Fenced(chunk_maps(maps)),
            O::CsId(cs) => ApplyOutcome::CsId(CsId(cs)),
            O::MdsId(id) => ApplyOutcome::MdsId(id),
        }
    }
}

impl From<v9::OpReply> for OpReply {
    fn from(r: v9::OpReply) -> OpReply {
        match r {
            v9::OpReply::Applied(outcome) => OpReply::Applied(outcome.into()),
            v9::OpReply::Refused { kind, message } => OpReply::Refused { kind, message },
        }
    }
}

impl From<v9::Session> for Session {
    fn from(s: v9::Session) -> Session {
        let v9::Session {
            done_below,
            last_seen_ms,
            replies,
        } = s;
        Session {
            done_below,
            last_seen_ms,
            replies: replies
                .into_iter()
                .map(|(seq, reply)| (seq, reply.into()))
                .collect(),
        }
    }
}

impl From<v9::Sessions> for Sessions {
    fn from(s: v9::Sessions) -> Sessions {
        Sessions::from_map(
            s.by_id
                .into_iter()
                .map(|(id, session)| (id.into(), session.into()))
                .collect(),
        )
    }
}

impl From<v10::LockKind> for LockKind {
    fn from(k: v10::LockKind) -> LockKind {
        match k {
            v10::LockKind::Shared => LockKind::Shared,
            v10::LockKind::Exclusive => LockKind::Exclusive,
        }
    }
}

impl From<v10::FileLock> for FileLock {
    fn from(l: v10::FileLock) -> FileLock {
        let v10::FileLock {
            lease,
            owner,
            kind,
            start,
            end,
            pid,
        } = l;
        FileLock {
            lease: LeaseId(lease),
            owner: LockOwner(owner),
            kind: kind.into(),
            start,
            end,
            pid,
        }
    }
}

impl From<v10::LockRequest> for LockRequest {
    fn from(r: v10::LockRequest) -> LockRequest {
        let v10::LockRequest {
            owner,
            kind,
            start,
            end,
            pid,
        } = r;
        LockRequest {
            owner: LockOwner(owner),
            kind: kind.map(LockKind::from),
            start,
            end,
            pid,
        }
    }
}

impl From<v11::CertRecord> for CertRecord {
    fn from(c: v11::CertRecord) -> CertRecord {
        let v11::CertRecord {
            serial,
            role,
            name,
            issued_ms,
            not_after_ms,
            revoked_ms,
        } = c;
        CertRecord {
            serial: CertSerial(serial),
            role,
            name,
            issued_ms,
            not_after_ms,
            revoked_ms,
        }
    }
}

impl From<v11::MdsState> for MdsState {
    fn from(s: v11::MdsState) -> MdsState {
        let v11::MdsState {
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
        } = s;
        MdsState::from_parts(MdsStateParts {
            inodes: inodes
                .into_iter()
                .map(|(k, v)| (InodeId(k), v.into()))
                .collect(),
            chunks: chunks
                .into_iter()
                .map(|(k, v)| (ChunkId(k), v.into()))
                .collect(),
            servers: servers
                .into_iter()
                .map(|(k, v)| (CsId(k), v.into()))
                .collect(),
            leases: leases
                .into_iter()
                .map(|(k, v)| (LeaseId(k), v.into()))
                .collect(),
            next_ino: InodeId(next_ino),
            next_chunk: ChunkId(next_chunk),
            next_lease: LeaseId(next_lease),
            next_cs: CsId(next_cs),
            params,
            events: events.into_iter().map(Event::from).collect(),
            next_event,
            next_mds,
            sessions: sessions.into(),
            locks: LockTable::from_map(
                locks
                    .into_iter()
                    .map(|(ino, locks)| {
                        (
                            InodeId(ino),
                            locks.into_iter().map(FileLock::from).collect(),
                        )
                    })
                    .collect(),
            ),
            certs: CertTable::from_parts(
                certs
                    .certs
                    .into_iter()
                    .map(|(serial, c)| (CertSerial(serial), c.into()))
                    .collect(),
                certs.revoked.into_iter().map(CertSerial).collect(),
            ),
        })
    }
}

impl From<v11::Command> for Command {
    fn from(c: v11::Command) -> Command {
        use v11::Command as C;
        match c {
            C::Mkdir {
                path,
                parents,
                perms,
                now_ms,
            } => Command::Mkdir {
                path,
                parents,
                perms: perms.into(),
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
                mode: mode.into(),
                flags: flags.into(),
                perms: perms.into(),
                now_ms,
                lease_duration_ms,
            },
            C::Unlink { path, now_ms } => Command::Unlink { path, now_ms },
            C::Rename {
                from,
                to,
                flags:
                    v9::RenameFlags {
                        no_replace,
                        exchange,
                    },
                now_ms,
            } => Command::Rename {
                from,
                to,
                flags: RenameFlags {
                    no_replace,
                    exchange,
                },
                now_ms,
            },
            C::SetAttrV3 {
                path,
                update,
                recursive,
                now_ms,
            } => Command::SetAttrV3 {
                path,
                update: update.into(),
                recursive,
                now_ms,
            },
            C::RenewLease { lease, now_ms } => Command::RenewLease {
                lease: LeaseId(lease),
                now_ms,
            },
            C::ReleaseLease { lease, now_ms } => Command::ReleaseLease {
                lease: LeaseId(lease),
                now_ms,
            },
            C::ExpireLeases { now_ms } => Command::ExpireLeases { now_ms },
            C::AllocateChunk {
                lease,
                index,
                chunk,
                version,
                replicas,
                now_ms,
            } => Command::AllocateChunk {
                lease: LeaseId(lease),
                index,
                chunk: ChunkId(chunk),
                version: MapVersion(version),
                replicas: cs_ids(replicas),
                now_ms,
            },
            C::UpdateChunkMap {
                chunk,
                version,
                replicas,
            } => Command::UpdateChunkMap {
                chunk: ChunkId(chunk),
                version: MapVersion(version),
                replicas: cs_ids(replicas),
            },
            C::FenceFile { ino } => Command::FenceFile { ino: InodeId(ino) },
            C::CommitSize {
                lease,
                size,
                now_ms,
            } => Command::CommitSize {
                lease: LeaseId(lease),
                size,
                now_ms,
            },
            C::Truncate {
                lease,
                size,
                now_ms,
            } => Command::Truncate {
                lease: LeaseId(lease),
                size,
                now_ms,
            },
            C::AllocateCsId => Command::AllocateCsId,
            C::SetCsAddr { cs, addr } => Command::SetCsAddr { cs: CsId(cs), addr },
            C::DropCs { cs } => Command::DropCs { cs: CsId(cs) },
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
                chunk: ChunkId(chunk),
                version: MapVersion(version),
                added: cs_ids(added),
            },
            C::SetCsReleasing {
                cs,
                releasing,
                now_ms,
            } => Command::SetCsReleasing {
                cs: CsId(cs),
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
                update: update.into(),
                recursive,
                now_ms,
            },
            C::SetCsPlacement { cs, update, now_ms } => Command::SetCsPlacement {
                cs: CsId(cs),
                update: update.into(),
                now_ms,
            },
            C::BeginFence { ino } => Command::BeginFence { ino: InodeId(ino) },
            C::FinishFence { ino } => Command::FinishFence { ino: InodeId(ino) },
            C::Tagged { op, now_ms, cmd } => Command::Tagged {
                op: op.into(),
                now_ms,
                cmd: Box::new(Command::from(*cmd)),
            },
            C::RefreshLeases { now_ms } => Command::RefreshLeases { now_ms },
            C::MakeNode {
                path,
                node: v9::NewNode { spec, perms },
                now_ms,
            } => Command::MakeNode {
                path,
                node: NewNode {
                    spec: spec.into(),
                    perms: perms.into(),
                },
                now_ms,
            },
            C::Link { from, to, now_ms } => Command::Link { from, to, now_ms },
            C::SetStat {
                path,
                change,
                now_ms,
            } => Command::SetStat {
                path,
                change: change.into(),
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
                how: match how {
                    v9::XattrSet::Any => XattrSet::Any,
                    v9::XattrSet::Create => XattrSet::Create,
                    v9::XattrSet::Replace => XattrSet::Replace,
                },
                now_ms,
            },
            C::SetLock { lease, req, now_ms } => Command::SetLock {
                lease: LeaseId(lease),
                req: req.into(),
                now_ms,
            },
            C::UpgradeLease { lease, now_ms } => Command::UpgradeLease {
                lease: LeaseId(lease),
                now_ms,
            },
            C::RecordCertificate { record, now_ms } => Command::RecordCertificate {
                record: record.into(),
                now_ms,
            },
            C::RevokeCertificates { serials, now_ms } => Command::RevokeCertificates {
                serials: serials.into_iter().map(CertSerial).collect(),
                now_ms,
            },
        }
    }
}
