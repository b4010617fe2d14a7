//! Store format 1 (pstorage 4cf3a52 to 41b813c): the first MDS store.
//! Frozen: never change a type here (see [`super`]).

use std::collections::BTreeMap;

use serde::Deserialize;

/// A chunk server's id (`CsId`, serialized as its bare number).
pub(super) type CsId = u32;
/// A chunk id (`ChunkId`, serialized as its bare number).
pub(super) type ChunkId = u64;
/// An inode id (`InodeId`, serialized as its bare number).
pub(super) type InodeId = u64;
/// A lease id (`LeaseId`, serialized as its bare number).
pub(super) type LeaseId = u64;
/// A chunk map version (`MapVersion`, serialized as its bare number).
pub(super) type MapVersion = u64;

/// `replicas=norm:min`.
#[derive(Deserialize)]
pub(super) struct Replicas {
    pub(super) norm: u8,
    pub(super) min: u8,
}

/// Per-file attributes (formats 1 to 3: no tier, no failure domain).
#[derive(Deserialize)]
pub(super) struct FileAttrs {
    pub(super) replicas: Replicas,
    pub(super) chunk_size: u64,
}

/// A change of attributes (formats 1 to 3; the command `SetAttr`, later
/// `SetAttrV3`).
#[derive(Deserialize)]
pub(super) struct AttrUpdate {
    pub(super) replicas: Option<Replicas>,
    pub(super) chunk_size: Option<u64>,
}

/// File or directory.
#[derive(Deserialize)]
pub(super) enum InodeKind {
    File,
    Dir,
}

/// One file or directory (formats 1 to 3).
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

/// One chunk (every format so far).
#[derive(Deserialize)]
pub(super) struct ChunkRecord {
    pub(super) file: InodeId,
    pub(super) index: u64,
    pub(super) version: MapVersion,
    pub(super) replicas: Vec<CsId>,
}

/// A chunk server (format 1).
#[derive(Deserialize)]
pub(super) struct CsRecord {
    pub(super) id: CsId,
    pub(super) addr: String,
    pub(super) dropped: bool,
}

/// Shared read or exclusive write.
#[derive(Deserialize)]
pub(super) enum LeaseMode {
    Read,
    Write,
}

/// A granted lease (every format so far).
#[derive(Deserialize)]
pub(super) struct LeaseRecord {
    pub(super) id: LeaseId,
    pub(super) ino: InodeId,
    pub(super) mode: LeaseMode,
    pub(super) duration_ms: u64,
    pub(super) expires_ms: u64,
}

/// How `open` treats a missing or existing file.
#[derive(Deserialize)]
pub(super) struct OpenFlags {
    pub(super) create: bool,
    pub(super) exclusive: bool,
    pub(super) truncate: bool,
}

/// The MDS state (format 1).
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
}

/// A snapshot record of the pre-Raft store (format 1).
#[derive(Deserialize)]
pub(super) struct Snapshot {
    pub(super) last_index: u64,
    pub(super) state: MdsState,
}

/// A logged command (format 1).
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
    /// Became `SetAttrV3` in format 4.
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
}
