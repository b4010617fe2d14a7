//! Store format 7: format 6 and the command `RefreshLeases` (a new
//! leader's first command: every lease gets a whole duration on its clock).
//! The state, snapshots and everything else are format 6's. Frozen: never
//! change a type here (see [`super`]); a change of a stored live type is a
//! new format.

use serde::Deserialize;

use super::v1::{self, ChunkId, CsId, InodeId, LeaseId, LeaseMode, MapVersion, OpenFlags};
use super::v3::{self, NewEvent};
use super::v5::{AttrUpdate, CsPlacementUpdate};
use super::v6::{self, OpTag};

/// A Raft log entry (format 7).
pub(super) type LogEntry = v3::Entry<Command>;

/// A logged command (format 7: format 6's and `RefreshLeases`).
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
    RefreshLeases {
        now_ms: u64,
    },
}

impl From<v6::Command> for Command {
    fn from(c: v6::Command) -> Command {
        use v6::Command as C;
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
            C::Tagged { op, now_ms, cmd } => Command::Tagged {
                op,
                now_ms,
                cmd: Box::new((*cmd).into()),
            },
        }
    }
}
