//! Store format 9: the POSIX attributes of the namespace. An inode has
//! permission bits and owners, access/modification/change times with
//! nanoseconds, hard links (its other names), a count of subdirectories,
//! a device number, a symbolic link target and extended attributes; the
//! kinds of node grow symbolic links, FIFOs, sockets and device nodes;
//! `stat` answers (remembered in the sessions) carry them. `Mkdir` and
//! `Open` carry the new node's permissions, `Rename` its flags, and the
//! commands `MakeNode`, `Link`, `SetStat` and `SetXattr` are appended.
//! Snapshot metadata and everything else are older formats'. Frozen: never
//! change a type here (see [`super`]); a change of a stored live type is a
//! new format.
//!
//! What older records become: a file gets mode 0666 and a directory 0777,
//! both owned by root (anyone could write them before); atime = mtime; a
//! remembered `stat` answer gets those permissions and a link count of 1
//! (2 for a directory).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use openraft::{LogId, Membership};
use serde::Deserialize;

use super::v1::{
    self, ChunkId, ChunkRecord, CsId, InodeId, LeaseId, LeaseMode, LeaseRecord, MapVersion,
    OpenFlags,
};
use super::v3::{Event, MdsId, MdsNode, Meta, NewEvent};
use super::v5::{self, AttrUpdate, CsPlacementUpdate, CsRecord, FileAttrs};
use super::v6::{self, ChunkMap, Lease, OpTag, SessionId};
use super::v7;
use super::v8;

/// What a node is (format 9).
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
pub(super) enum InodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Seconds and nanoseconds since the epoch.
#[derive(Deserialize, Clone, Copy)]
pub(super) struct Timestamp {
    pub(super) sec: i64,
    pub(super) nsec: u32,
}

/// Permission bits and owners.
#[derive(Deserialize, Clone, Copy)]
pub(super) struct Perms {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// What `MakeNode` creates.
#[derive(Deserialize)]
pub(super) enum NodeSpec {
    File,
    Symlink { target: String },
    Fifo,
    Socket,
    CharDevice { rdev: u64 },
    BlockDevice { rdev: u64 },
}

/// A node to create.
#[derive(Deserialize)]
pub(super) struct NewNode {
    pub(super) spec: NodeSpec,
    pub(super) perms: Perms,
}

/// How one time is set.
#[derive(Deserialize)]
pub(super) enum TimeChange {
    Now,
    At(Timestamp),
}

/// A change of POSIX attributes.
#[derive(Deserialize)]
pub(super) struct StatChange {
    pub(super) mode: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    pub(super) atime: Option<TimeChange>,
    pub(super) mtime: Option<TimeChange>,
}

/// `renameat2` flags.
#[derive(Deserialize)]
pub(super) struct RenameFlags {
    pub(super) no_replace: bool,
    pub(super) exchange: bool,
}

/// How `setxattr` treats an existing attribute.
#[derive(Deserialize)]
pub(super) enum XattrSet {
    Any,
    Create,
    Replace,
}

/// One node of the namespace (format 9).
#[derive(Deserialize)]
pub(super) struct Inode {
    pub(super) ino: InodeId,
    pub(super) kind: InodeKind,
    pub(super) parent: InodeId,
    pub(super) name: String,
    pub(super) links: BTreeSet<(InodeId, String)>,
    pub(super) children: BTreeMap<String, InodeId>,
    pub(super) subdirs: u32,
    pub(super) size: u64,
    pub(super) perms: Perms,
    pub(super) rdev: u64,
    pub(super) target: String,
    pub(super) atime: Timestamp,
    pub(super) mtime: Timestamp,
    pub(super) ctime: Timestamp,
    pub(super) xattrs: BTreeMap<String, Vec<u8>>,
    pub(super) attrs: FileAttrs,
    pub(super) chunks: BTreeMap<u64, ChunkId>,
    pub(super) fence_pending: bool,
}

/// What `stat` returns (format 9).
#[derive(Deserialize)]
pub(super) struct Stat {
    pub(super) ino: InodeId,
    pub(super) kind: InodeKind,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) nlink: u32,
    pub(super) rdev: u64,
    pub(super) atime: Timestamp,
    pub(super) mtime: Timestamp,
    pub(super) ctime: Timestamp,
    pub(super) attrs: FileAttrs,
}

/// What an applied command produced (format 9: format 6's with format 9's
/// `Stat`).
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

/// The MDS state (format 9).
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

/// A snapshot record of the pre-Raft store (format 9).
#[derive(Deserialize)]
pub(super) struct Snapshot {
    pub(super) last_index: u64,
    pub(super) state: MdsState,
}

/// A Raft snapshot record (format 9).
#[derive(Deserialize)]
pub(super) struct SnapshotRecord {
    pub(super) meta: Meta,
    pub(super) state: MdsState,
}

/// A logged command (format 9).
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
}

/// A Raft log entry (format 9): format 8's shape with format 9's commands.
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

// ----- upgrades from older formats ------------------------------------------

/// The permissions of a node stored before format 9.
fn legacy_perms(kind: InodeKind) -> Perms {
    Perms {
        mode: if kind == InodeKind::Dir { 0o777 } else { 0o666 },
        uid: 0,
        gid: 0,
    }
}

fn from_ms(ms: u64) -> Timestamp {
    Timestamp {
        sec: (ms / 1000) as i64,
        nsec: ((ms % 1000) * 1_000_000) as u32,
    }
}

impl From<v1::InodeKind> for InodeKind {
    fn from(k: v1::InodeKind) -> InodeKind {
        match k {
            v1::InodeKind::File => InodeKind::File,
            v1::InodeKind::Dir => InodeKind::Dir,
        }
    }
}

/// An inode before format 9; `subdirs` is counted by the state's upgrade.
fn inode(n: v5::Inode) -> Inode {
    let v5::Inode {
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
    let kind = InodeKind::from(kind);
    Inode {
        ino,
        kind,
        parent,
        name,
        links: BTreeSet::new(),
        children,
        subdirs: 0,
        size,
        perms: legacy_perms(kind),
        rdev: 0,
        target: String::new(),
        atime: from_ms(mtime_ms),
        mtime: from_ms(mtime_ms),
        ctime: from_ms(ctime_ms),
        xattrs: BTreeMap::new(),
        attrs,
        chunks,
        fence_pending,
    }
}

impl From<v6::Stat> for Stat {
    fn from(s: v6::Stat) -> Stat {
        let v6::Stat {
            ino,
            kind,
            size,
            mtime_ms,
            ctime_ms,
            attrs,
        } = s;
        let kind = InodeKind::from(kind);
        let perms = legacy_perms(kind);
        Stat {
            ino,
            kind,
            size,
            mode: perms.mode,
            uid: perms.uid,
            gid: perms.gid,
            nlink: if kind == InodeKind::Dir { 2 } else { 1 },
            rdev: 0,
            atime: from_ms(mtime_ms),
            mtime: from_ms(mtime_ms),
            ctime: from_ms(ctime_ms),
            attrs,
        }
    }
}

impl From<v6::ApplyOutcome> for ApplyOutcome {
    fn from(o: v6::ApplyOutcome) -> ApplyOutcome {
        use v6::ApplyOutcome as O;
        match o {
            O::Done => ApplyOutcome::Done,
            O::Stat(stat) => ApplyOutcome::Stat(stat.into()),
            O::Opened {
                lease,
                stat,
                released,
            } => ApplyOutcome::Opened {
                lease,
                stat: stat.into(),
                released,
            },
            O::Released(maps) => ApplyOutcome::Released(maps),
            O::Expired(leases) => ApplyOutcome::Expired(leases),
            O::ChunkMap(map) => ApplyOutcome::ChunkMap(map),
            O::Fenced(maps) => ApplyOutcome::Fenced(maps),
            O::CsId(cs) => ApplyOutcome::CsId(cs),
            O::MdsId(id) => ApplyOutcome::MdsId(id),
        }
    }
}

impl From<v6::OpReply> for OpReply {
    fn from(r: v6::OpReply) -> OpReply {
        match r {
            v6::OpReply::Applied(o) => OpReply::Applied(o.into()),
            v6::OpReply::Refused { kind, message } => OpReply::Refused { kind, message },
        }
    }
}

impl From<v6::Sessions> for Sessions {
    fn from(s: v6::Sessions) -> Sessions {
        Sessions {
            by_id: s
                .by_id
                .into_iter()
                .map(|(id, s)| {
                    let v6::Session {
                        done_below,
                        last_seen_ms,
                        replies,
                    } = s;
                    (
                        id,
                        Session {
                            done_below,
                            last_seen_ms,
                            replies: replies.into_iter().map(|(k, r)| (k, r.into())).collect(),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl From<v6::MdsState> for MdsState {
    fn from(s: v6::MdsState) -> MdsState {
        let v6::MdsState {
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
        let mut inodes: BTreeMap<InodeId, Inode> =
            inodes.into_iter().map(|(k, n)| (k, inode(n))).collect();
        let dirs: BTreeSet<InodeId> = inodes
            .values()
            .filter(|n| n.kind == InodeKind::Dir)
            .map(|n| n.ino)
            .collect();
        for n in inodes.values_mut() {
            let count = n.children.values().filter(|c| dirs.contains(c)).count();
            n.subdirs = u32::try_from(count).unwrap_or(u32::MAX);
        }
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
            sessions: sessions.into(),
        }
    }
}

impl From<v6::Snapshot> for Snapshot {
    fn from(s: v6::Snapshot) -> Snapshot {
        Snapshot {
            last_index: s.last_index,
            state: s.state.into(),
        }
    }
}

impl From<v6::SnapshotRecord> for SnapshotRecord {
    fn from(s: v6::SnapshotRecord) -> SnapshotRecord {
        SnapshotRecord {
            meta: s.meta,
            state: s.state.into(),
        }
    }
}

impl From<v7::Command> for Command {
    fn from(c: v7::Command) -> Command {
        use v7::Command as C;
        match c {
            C::Mkdir {
                path,
                parents,
                now_ms,
            } => Command::Mkdir {
                path,
                parents,
                perms: legacy_perms(InodeKind::Dir),
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
                perms: legacy_perms(InodeKind::File),
                now_ms,
                lease_duration_ms,
            },
            C::Unlink { path, now_ms } => Command::Unlink { path, now_ms },
            C::Rename { from, to, now_ms } => Command::Rename {
                from,
                to,
                flags: RenameFlags {
                    no_replace: false,
                    exchange: false,
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
        }
    }
}

impl From<v8::LogEntry> for LogEntry {
    fn from(e: v8::LogEntry) -> LogEntry {
        let payload = match e.payload {
            v8::EntryPayload::Blank => EntryPayload::Blank,
            v8::EntryPayload::Normal(v8::RaftRequest { cmds }) => {
                EntryPayload::Normal(RaftRequest {
                    cmds: cmds.into_iter().map(Command::from).collect(),
                })
            }
            v8::EntryPayload::Membership(m) => EntryPayload::Membership(m),
        };
        LogEntry {
            log_id: e.log_id,
            payload,
        }
    }
}
