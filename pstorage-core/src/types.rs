//! The data model shared by every component (DESIGN.md section 4).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::posix::*;

/// Declares an id newtype: a `Copy` wrapper of its number that serializes
/// as the bare number (`#[serde(transparent)]`, so the persisted formats and
/// the wire are those of the number), prints as the CLI and the logs print
/// it (`Display`; `Debug` prints the bare number, so traces and logs read as
/// before), and converts only explicitly (`Id(n)`, `id.0`): two ids of
/// different kinds cannot be swapped in a call.
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident($inner:ty), $display:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        /// Pads to the width asked for (`{:>6}` in a table), as the bare
        /// number did.
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if f.width().is_some() {
                    f.pad(&format!($display, self.0))
                } else {
                    write!(f, $display, self.0)
                }
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }

        impl $name {
            /// The largest id of this kind.
            pub const MAX: $name = $name(<$inner>::MAX);
        }

        /// An id `n` later (ids are allocated in order).
        impl std::ops::Add<$inner> for $name {
            type Output = $name;
            fn add(self, n: $inner) -> $name {
                $name(self.0 + n)
            }
        }

        impl std::ops::AddAssign<$inner> for $name {
            fn add_assign(&mut self, n: $inner) {
                self.0 += n;
            }
        }

        impl std::fmt::LowerHex for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// A chunk server's id, assigned by the MDS at `make-cs` time; never
    /// reused. Printed as its number.
    CsId(u32),
    "{}"
);
id_type!(
    /// A cluster-unique chunk id, assigned by the MDS. Printed in hex
    /// (`0x2a`), as the logs and events name chunks.
    ChunkId(u64),
    "{:#x}"
);
id_type!(
    /// An inode (file or directory) id; the root directory is
    /// [`ROOT_INODE`]. Printed as its number (the FUSE inode number).
    InodeId(u64),
    "{}"
);
id_type!(
    /// A lease handle, returned by open and used for every operation on the
    /// file. Printed as its number.
    LeaseId(u64),
    "{}"
);
id_type!(
    /// An MDS's identity in the Raft group (openraft's node id). Chosen
    /// when the MDS is made (`make-mds`), never reused. Printed as its
    /// number.
    MdsId(u64),
    "{}"
);
id_type!(
    /// A chunk map version. Only ever grows for a given chunk. Printed as
    /// its number.
    MapVersion(u64),
    "{}"
);

impl MapVersion {
    /// The version after this one (`None` past `u64::MAX`).
    pub fn checked_next(self) -> Option<MapVersion> {
        self.0.checked_add(1).map(MapVersion)
    }
}

/// A client's metadata session: a random id the client picks when it is
/// created, so the MDS can tell its requests from every other client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Names one namespace mutation of a client (mkdir, unlink, rename,
/// set-attr, open), the same on every attempt of it, so the MDS executes it
/// at most once: a repeated attempt gets the first one's answer, and an
/// attempt that arrives after its client moved on (`seq < done_below` of a
/// later request) is refused instead of taking effect late.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpTag {
    /// The client's session.
    pub session: SessionId,
    /// The operation's number in the session (from 1, growing).
    pub seq: u64,
    /// Every operation of the session numbered below this has ended at the
    /// client (answered or given up): the MDS may forget their answers and
    /// must refuse their attempts.
    pub done_below: u64,
}

impl OpTag {
    /// `InvalidArgument` unless `done_below <= seq` (the operation itself
    /// has not ended while it is sent) and `seq > 0`.
    pub fn validate(&self) -> Result<()> {
        if self.seq == 0 || self.done_below > self.seq {
            return Err(Error::invalid(format!(
                "bad operation tag: seq {} with done_below {} (needs seq > 0 and done_below <= seq)",
                self.seq, self.done_below
            )));
        }
        Ok(())
    }
}

/// The root directory's inode.
pub const ROOT_INODE: InodeId = InodeId(1);
/// Checksum granularity: one CRC-64 per block of this many bytes.
pub const BLOCK_SIZE: u64 = 4096;
/// The cluster default chunk size (like the original pstorage).
pub const DEFAULT_CHUNK_SIZE: u64 = 256 << 20;
/// Smallest allowed chunk size (tests use small chunks).
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
/// Largest allowed chunk size.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;
/// Largest file size: 16 TiB.
pub const MAX_FILE_SIZE: u64 = 1 << 44;
/// Largest number of replicas (norm and min), as in the original.
pub const MAX_REPLICAS: u8 = 15;
/// Largest single read or write request on the data path.
pub const MAX_IO_SIZE: u64 = 16 << 20;

/// Most CRC-table entries one [`ChunkService::block_crcs`] call returns:
/// 65536 blocks, i.e. 256 MiB of chunk in a 512 KiB reply. Callers page
/// through larger chunks.
///
/// [`ChunkService::block_crcs`]: crate::traits::ChunkService::block_crcs
pub const MAX_BLOCK_CRCS: u64 = 64 << 10;

/// `replicas=norm:min`: keep `norm` copies; accept writes while `min` remain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicas {
    /// Copies to keep.
    pub norm: u8,
    /// Copies that must remain for writes to be accepted.
    pub min: u8,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas { norm: 3, min: 2 }
    }
}

impl Replicas {
    /// Checks `1 <= min <= norm <= 15`.
    pub fn validate(self) -> Result<Replicas> {
        if self.min == 0 || self.norm == 0 || self.min > self.norm || self.norm > MAX_REPLICAS {
            return Err(Error::invalid(format!(
                "replicas={}:{} is invalid: need 1 <= min <= norm <= {MAX_REPLICAS}",
                self.norm, self.min
            )));
        }
        Ok(self)
    }

    /// Parses `NORM:MIN` or `NORM` (min then defaults to `NORM/2+1` capped at NORM).
    pub fn parse(s: &str) -> Result<Replicas> {
        let bad = || {
            Error::invalid(format!(
                "bad replicas value {s:?}: expected NORM:MIN, e.g. 3:2"
            ))
        };
        let (norm, min) = match s.split_once(':') {
            Some((n, m)) => (
                n.trim().parse::<u8>().map_err(|_| bad())?,
                m.trim().parse::<u8>().map_err(|_| bad())?,
            ),
            None => {
                let n = s.trim().parse::<u8>().map_err(|_| bad())?;
                (n, (n / 2 + 1).min(n))
            }
        };
        Replicas { norm, min }.validate()
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.norm, self.min)
    }
}

/// The largest storage tier (tiers are 0..=MAX_TIER).
pub const MAX_TIER: u8 = 3;

/// What two replicas of one chunk must not share while enough distinct
/// ones exist (`set-attr failure-domain=...`): the chunk server itself
/// (`disk`), its host, its rack, row or room.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum FailureDomain {
    /// Replicas on different disks (chunk servers).
    Disk,
    /// Replicas on different hosts.
    #[default]
    Host,
    /// Replicas in different racks.
    Rack,
    /// Replicas in different rows.
    Row,
    /// Replicas in different rooms.
    Room,
}

impl FailureDomain {
    /// Every domain, smallest first.
    pub const ALL: [FailureDomain; 5] = [
        FailureDomain::Disk,
        FailureDomain::Host,
        FailureDomain::Rack,
        FailureDomain::Row,
        FailureDomain::Room,
    ];

    /// Parses `disk`, `host`, `rack`, `row` or `room`.
    pub fn parse(s: &str) -> Result<FailureDomain> {
        FailureDomain::ALL
            .into_iter()
            .find(|d| d.to_string() == s.trim())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "bad failure domain {s:?}: expected disk, host, rack, row or room"
                ))
            })
    }
}

impl std::fmt::Display for FailureDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureDomain::Disk => "disk",
            FailureDomain::Host => "host",
            FailureDomain::Rack => "rack",
            FailureDomain::Row => "row",
            FailureDomain::Room => "room",
        })
    }
}

/// Checks a tier number (0..=[`MAX_TIER`]).
pub fn validate_tier(tier: u8) -> Result<u8> {
    if tier > MAX_TIER {
        return Err(Error::invalid(format!(
            "tier {tier} is invalid: tiers are 0 to {MAX_TIER}"
        )));
    }
    Ok(tier)
}

fn parse_tier(v: &str) -> Result<u8> {
    let tier = v
        .trim()
        .parse::<u8>()
        .map_err(|_| Error::invalid(format!("bad tier {v:?}: expected 0 to {MAX_TIER}")))?;
    validate_tier(tier)
}

/// Per-file / per-directory attributes, inherited from the parent on create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAttrs {
    /// Copies to keep of each chunk.
    pub replicas: Replicas,
    /// Chunk size in bytes; a multiple of [`BLOCK_SIZE`].
    pub chunk_size: u64,
    /// The storage tier its chunks live on (0..=[`MAX_TIER`]).
    pub tier: u8,
    /// No two replicas of a chunk share one of these while enough exist.
    pub failure_domain: FailureDomain,
}

impl Default for FileAttrs {
    fn default() -> Self {
        FileAttrs {
            replicas: Replicas::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            tier: 0,
            failure_domain: FailureDomain::default(),
        }
    }
}

/// A change of attributes; `None` fields are left alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrUpdate {
    /// New replication.
    pub replicas: Option<Replicas>,
    /// New chunk size in bytes (a multiple of [`BLOCK_SIZE`]).
    pub chunk_size: Option<u64>,
    /// New storage tier.
    pub tier: Option<u8>,
    /// New failure domain.
    pub failure_domain: Option<FailureDomain>,
}

impl AttrUpdate {
    /// Parses `key=value` (`replicas=3:2`, `chunk-size=BYTES`, `tier=N`,
    /// `failure-domain=host`) into an update.
    pub fn parse_assignment(&mut self, kv: &str) -> Result<()> {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("bad attribute {kv:?}: expected KEY=VALUE")))?;
        match k.trim() {
            "replicas" => self.replicas = Some(Replicas::parse(v)?),
            "chunk-size" | "chunk_size" => {
                let n: u64 = v
                    .trim()
                    .parse()
                    .map_err(|_| Error::invalid(format!("bad chunk size {v:?}")))?;
                validate_chunk_size(n)?;
                self.chunk_size = Some(n);
            }
            "tier" => self.tier = Some(parse_tier(v)?),
            "failure-domain" | "failure_domain" => {
                self.failure_domain = Some(FailureDomain::parse(v)?)
            }
            other => {
                return Err(Error::invalid(format!(
                "unknown attribute {other:?}: known are replicas, chunk-size, tier, failure-domain"
            )))
            }
        }
        Ok(())
    }

    /// Applies the update to `attrs`.
    pub fn apply_to(&self, attrs: &mut FileAttrs) {
        if let Some(r) = self.replicas {
            attrs.replicas = r;
        }
        if let Some(c) = self.chunk_size {
            attrs.chunk_size = c;
        }
        if let Some(t) = self.tier {
            attrs.tier = t;
        }
        if let Some(d) = self.failure_domain {
            attrs.failure_domain = d;
        }
    }
}

/// The location a chunk server gets when `make-cs` is given none.
pub const DEFAULT_LOCATION: &str = "0.0.0";

/// Checks a location `ROOM.ROW.RACK`: three non-empty names of letters,
/// digits, `-` and `_` (at most 64 bytes each).
pub fn validate_location(location: &str) -> Result<&str> {
    let parts: Vec<&str> = location.split('.').collect();
    let name_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if parts.len() != 3 || !parts.iter().all(|p| name_ok(p)) {
        return Err(Error::invalid(format!(
            "bad location {location:?}: expected ROOM.ROW.RACK, three names of letters, digits, - or _ (e.g. 1.4.12)"
        )));
    }
    Ok(location)
}

/// Checks a host name given to a chunk server: non-empty, at most 253
/// bytes, no whitespace or control characters.
pub fn validate_host(host: &str) -> Result<&str> {
    if host.is_empty()
        || host.len() > 253
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(format!(
            "bad host name {host:?}: expected a non-empty name without spaces (at most 253 bytes)"
        )));
    }
    Ok(host)
}

/// A change of where a chunk server is and what it holds (`make-cs`,
/// `set-cs ID key=value...`); `None` fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsPlacementUpdate {
    /// `ROOM.ROW.RACK` ([`validate_location`]).
    pub location: Option<String>,
    /// The host it runs on (replicas avoid sharing one).
    pub host: Option<String>,
    /// Its storage tier.
    pub tier: Option<u8>,
    /// Bytes the chunk server may fill; 0 = the size of its file system.
    pub capacity_bytes: Option<u64>,
}

impl CsPlacementUpdate {
    /// Parses `location=R.R.R`, `host=NAME`, `tier=N` or `capacity=SIZE`
    /// (bytes, suffixes K, M, G, T; 0 = the file system's size).
    pub fn parse_assignment(&mut self, kv: &str) -> Result<()> {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            Error::invalid(format!(
                "bad chunk server setting {kv:?}: expected KEY=VALUE"
            ))
        })?;
        let v = v.trim();
        match k.trim() {
            "location" => self.location = Some(validate_location(v)?.to_string()),
            "host" => self.host = Some(validate_host(v)?.to_string()),
            "tier" => self.tier = Some(parse_tier(v)?),
            "capacity" => self.capacity_bytes = Some(parse_size(v)?),
            other => {
                return Err(Error::invalid(format!(
                "unknown chunk server setting {other:?}: known are location, host, tier, capacity"
            )))
            }
        }
        Ok(())
    }

    /// Checks every field that is set.
    pub fn validate(&self) -> Result<()> {
        if let Some(l) = &self.location {
            validate_location(l)?;
        }
        if let Some(h) = &self.host {
            validate_host(h)?;
        }
        if let Some(t) = self.tier {
            validate_tier(t)?;
        }
        Ok(())
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == CsPlacementUpdate::default()
    }
}

/// Parses a size: a number of bytes with an optional binary suffix `K`,
/// `M`, `G` or `T` (any case, powers of 1024), e.g. `4096`, `512M`, `2G`.
/// The one parser of every size option (CLI, `nbd-serve`, the mount,
/// `set-cs capacity=`).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(format!(
            "bad size {s:?}: give bytes, optionally with a suffix K, M, G or T (powers of \
             1024), e.g. 2G"
        ))
    };
    let t = s.trim();
    let (digits, shift) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..t.len() - 1], shift)
        }
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Checks a chunk size: a multiple of the block size within bounds.
pub fn validate_chunk_size(n: u64) -> Result<u64> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&n) || !n.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::invalid(format!(
            "chunk size {n} is invalid: need a multiple of {BLOCK_SIZE} between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
        )));
    }
    Ok(n)
}

/// What a node of the namespace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (store format 9 on).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket's name.
    Socket,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

impl InodeKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            InodeKind::File => 0o100000,
            InodeKind::Dir => 0o040000,
            InodeKind::Symlink => 0o120000,
            InodeKind::Fifo => 0o010000,
            InodeKind::Socket => 0o140000,
            InodeKind::CharDevice => 0o020000,
            InodeKind::BlockDevice => 0o060000,
        }
    }

    /// The kind a node made from `spec` has.
    pub fn of_spec(spec: &NodeSpec) -> InodeKind {
        match spec {
            NodeSpec::File => InodeKind::File,
            NodeSpec::Symlink { .. } => InodeKind::Symlink,
            NodeSpec::Fifo => InodeKind::Fifo,
            NodeSpec::Socket => InodeKind::Socket,
            NodeSpec::CharDevice { .. } => InodeKind::CharDevice,
            NodeSpec::BlockDevice { .. } => InodeKind::BlockDevice,
        }
    }

    /// The letter `ls -l` shows for it.
    pub fn ls_letter(self) -> char {
        match self {
            InodeKind::File => '-',
            InodeKind::Dir => 'd',
            InodeKind::Symlink => 'l',
            InodeKind::Fifo => 'p',
            InodeKind::Socket => 's',
            InodeKind::CharDevice => 'c',
            InodeKind::BlockDevice => 'b',
        }
    }
}

/// What `stat` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// The inode.
    pub ino: InodeId,
    /// What it is.
    pub kind: InodeKind,
    /// File size in bytes (0 for directories; a symbolic link's target
    /// length).
    pub size: u64,
    /// Permission bits ([`PERMISSION_BITS`]; [`InodeKind::mode_bits`]
    /// gives the kind's).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Names it has (a directory: 2 and one per subdirectory).
    pub nlink: u32,
    /// The device of a device node (0 otherwise).
    pub rdev: u64,
    /// Last access (as far as the cluster records reads).
    pub atime: Timestamp,
    /// Last modification of its data (a directory: of its entries).
    pub mtime: Timestamp,
    /// Last change of its data or attributes.
    pub ctime: Timestamp,
    /// Its replication and placement attributes.
    pub attrs: FileAttrs,
}

impl Stat {
    /// `st_mode`: the kind's bits and the permission bits.
    pub fn st_mode(&self) -> u32 {
        self.kind.mode_bits() | self.mode
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The entry's name (no `/`).
    pub name: String,
    /// The entry's attributes.
    pub stat: Stat,
}

/// Most entries one page of a directory listing carries
/// ([`MetadataService::readdir_page`](crate::traits::MetadataService::readdir_page)):
/// with names of at most 255 bytes, a page stays under 1 MiB on the wire.
pub const DIR_PAGE_ENTRIES: usize = 1024;

/// The first `limit` of `items`, and whether more followed: the one way a
/// page is cut (directory entries, chunk maps, replicas).
pub fn take_page<T>(items: impl IntoIterator<Item = T>, limit: usize) -> (Vec<T>, bool) {
    let mut page: Vec<T> = items.into_iter().take(limit + 1).collect();
    let more = page.len() > limit;
    page.truncate(limit);
    (page, more)
}

/// One page of a directory listing: entries sorted by name, after the name
/// the page was asked from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPage {
    /// At most [`DIR_PAGE_ENTRIES`] entries, sorted by name.
    pub entries: Vec<DirEntry>,
    /// Whether the directory has entries after the last of `entries`: ask
    /// again after its name.
    pub more: bool,
}

/// Most chunk maps one page of a file's chunk list carries
/// ([`MetadataService::file_chunks_page`](crate::traits::MetadataService::file_chunks_page)):
/// with at most [`MAX_REPLICAS`] replicas per map, a page stays under
/// 1 MiB on the wire.
pub const CHUNK_MAP_PAGE: usize = 256;

/// One page of a file's chunk maps, by index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMapPage {
    /// At most [`CHUNK_MAP_PAGE`] maps, by index, from the asked index on.
    pub maps: Vec<ChunkMap>,
    /// Whether the file has chunks after the last of `maps`: ask again
    /// from its index + 1.
    pub more: bool,
}

/// A read (shared, many holders) or write (exclusive, one holder) lease.
///
/// An exclusive lease excludes readers too: only the holder has the file's
/// chunk maps, which is what keeps cached maps from serving stale replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseMode {
    /// Shared: reads only.
    Read,
    /// Exclusive: reads and writes.
    Write,
}

/// How `open` treats a missing or existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OpenFlags {
    /// Create the file if it does not exist (needs [`LeaseMode::Write`]).
    pub create: bool,
    /// With `create`: fail with `AlreadyExists` if the file exists.
    pub exclusive: bool,
    /// Truncate to zero length on open (needs [`LeaseMode::Write`]).
    pub truncate: bool,
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease's handle.
    pub id: LeaseId,
    /// The leased file's inode.
    pub ino: InodeId,
    /// Read or write.
    pub mode: LeaseMode,
    /// How long the lease lasts from the grant or the last renewal, in ms.
    pub duration_ms: u64,
}

/// What `open` returns: the lease and the file's state at that moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenReply {
    /// The lease granted.
    pub lease: Lease,
    /// The file's attributes at the grant.
    pub stat: Stat,
    /// The data-path deadlines the client applies to this file's I/O
    /// (cluster parameters, current at the open).
    pub io_timeouts: IoTimeouts,
    /// An open that may create (`OpenFlags::create`): the parent
    /// directory's attributes after it (a create changes its times), read
    /// as the MDS answered. `None` for other opens, and from an MDS older
    /// than this field.
    #[serde(default)]
    pub parent: Option<Stat>,
}

/// Data-path deadlines (cluster parameters `io.replica_tout` and
/// `io.flush_tout`), handed to clients in [`OpenReply`] and to chunk
/// servers in [`HeartbeatReply`]. A value of 0 (from an MDS that does not
/// send them) means the default.
///
/// A request to one replica fails with `TimedOut` after `replica_ms`; a
/// chain write to `n` replicas waits `n * replica_ms` (a chunk server
/// forwarding to the `k` replicas after it waits `k * replica_ms`, so the
/// hop that is stuck is the one reported); a flush of one replica waits
/// `flush_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoTimeouts {
    /// Deadline of a write or read per replica it goes through, in ms.
    pub replica_ms: u64,
    /// Deadline of a flush of one replica, in ms.
    pub flush_ms: u64,
}

impl IoTimeouts {
    /// Default per-replica deadline: 3 s (see `docs/design.md`, failure
    /// model: a guest pauses at most ~15 s when one chunk server freezes).
    pub const DEFAULT_REPLICA_MS: u64 = 3_000;
    /// Default flush deadline per replica: 10 s.
    pub const DEFAULT_FLUSH_MS: u64 = 10_000;

    /// These timeouts with 0 replaced by the defaults.
    pub fn effective(self) -> IoTimeouts {
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        IoTimeouts {
            replica_ms: or(self.replica_ms, Self::DEFAULT_REPLICA_MS),
            flush_ms: or(self.flush_ms, Self::DEFAULT_FLUSH_MS),
        }
    }

    /// The deadline of a request that must pass through `replicas`
    /// replicas (at least one).
    pub fn chain(self, replicas: usize) -> std::time::Duration {
        let e = self.effective();
        std::time::Duration::from_millis(e.replica_ms.saturating_mul(replicas.max(1) as u64))
    }

    /// The deadline of a flush of one replica.
    pub fn flush(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.effective().flush_ms)
    }
}

impl Default for IoTimeouts {
    fn default() -> Self {
        IoTimeouts {
            replica_ms: Self::DEFAULT_REPLICA_MS,
            flush_ms: Self::DEFAULT_FLUSH_MS,
        }
    }
}

/// One replica in a chunk's chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Replica {
    /// The chunk server holding the replica.
    pub cs: CsId,
    /// The chunk server's data address, `host:port`.
    pub addr: String,
}

/// Where a chunk lives: its id, current map version and replica chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMap {
    /// The chunk's id.
    pub chunk: ChunkId,
    /// The chunk's index in its file: it covers `[index*chunk_size, (index+1)*chunk_size)`.
    pub index: u64,
    /// The chain's map version.
    pub version: MapVersion,
    /// The chain, head first. Writes go to `replicas[0]` and are forwarded in order.
    pub replicas: Vec<Replica>,
}

/// The most blocks one [`BadBlocks`] report names; a replica with more bad
/// blocks than this is reported bad as a whole
/// ([`CsRegistry::report_bad_replica`](crate::traits::CsRegistry::report_bad_replica))
/// and re-replicated.
pub const MAX_REPORTED_BLOCKS: usize = 1024;

/// Where a block repair of a replica stands ([`BadBlocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockRepair {
    /// The blocks failed their check: the chunk server asks for the
    /// replicas to repair them from.
    Found,
    /// The blocks were rewritten from the replica on chunk server `from`.
    Repaired {
        /// The chunk server whose replica the blocks were copied from.
        from: CsId,
    },
    /// No other replica had a good copy of these blocks: they read as
    /// errors on this replica (never as zeros or wrong data).
    Unrepairable,
}

/// A chunk server's report of blocks of one of its replicas that failed
/// their CRC check ([`CsRegistry::report_bad_blocks`](crate::traits::CsRegistry::report_bad_blocks)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadBlocks {
    /// The replica's map version.
    pub version: MapVersion,
    /// Block numbers (4 KiB) within the chunk, ascending, at most
    /// [`MAX_REPORTED_BLOCKS`].
    pub blocks: Vec<u64>,
    /// Where the repair of these blocks stands.
    pub outcome: BlockRepair,
}

/// Why a client reports a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// The chunk server did not answer or the connection broke.
    Unreachable,
    /// The replica returned data that failed its checksum.
    Corrupt,
    /// The chunk server is out of space.
    NoSpace,
    /// The replica's version did not match the map.
    VersionMismatch,
    /// Any other I/O error on the replica.
    IoError,
    /// The chunk server did not answer within the data-path deadline
    /// (`io.replica_tout`, `io.flush_tout`).
    TimedOut,
}

impl FailureReason {
    /// Whether the report is about reaching the chunk server (the reporter's
    /// view, which the MDS checks with a probe of its own) rather than an
    /// answer of the chunk server itself.
    pub fn is_reachability(self) -> bool {
        matches!(self, FailureReason::Unreachable | FailureReason::TimedOut)
    }
}

/// Health of a chunk server as the MDS sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CsStatus {
    /// Heartbeating; eligible for new chunks.
    Active,
    /// Missed heartbeats recently.
    Inactive,
    /// Silent for longer than the offline timeout.
    Offline,
    /// Removed by the administrator.
    Dropped,
}

impl std::fmt::Display for CsStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CsStatus::Active => "active",
            CsStatus::Inactive => "inactive",
            CsStatus::Offline => "offline",
            CsStatus::Dropped => "dropped",
        })
    }
}

/// Disk space of a chunk server, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// Size of the file system, in bytes.
    pub total_bytes: u64,
    /// Free bytes.
    pub free_bytes: u64,
}

/// I/O counters of a chunk server since it started (cumulative; the MDS
/// turns successive reports into rates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsStats {
    /// Reads served (data path).
    pub read_ops: u64,
    /// Writes applied (data path, chain writes included).
    pub write_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Its write journal: ring size and the bytes not yet applied to the
    /// chunk files and trimmed (0 and 0 for a store without one).
    #[serde(default)]
    pub journal_bytes: u64,
    /// Bytes of the journal not yet applied to the chunk files and trimmed.
    #[serde(default)]
    pub journal_used_bytes: u64,
}

/// What the MDS answers a heartbeat: the cluster parameters a chunk server
/// applies (set with `pstorage set-config`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Every replica is verified by scrubbing at least once per this many
    /// ms (`cs.scrub.period`); 0 disables scrubbing.
    pub scrub_period_ms: u64,
    /// Scrubbing reads at most this many bytes/s (`cs.scrub.rate`); 0 means
    /// unlimited.
    pub scrub_rate_bytes_per_s: u64,
    /// Deadlines of chain writes this chunk server forwards.
    pub io_timeouts: IoTimeouts,
    /// The self-fence (`cs.fence_tout`), ms; 0 keeps the server's own.
    pub fence_ms: u64,
    /// Deadline of a heartbeat (`cs.hb_tout`), ms; 0 keeps the server's own.
    pub heartbeat_timeout_ms: u64,
}

/// A chunk server as listed by `stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsInfo {
    /// The chunk server's id.
    pub id: CsId,
    /// Its data address, `host:port`.
    pub addr: String,
    /// Its state as the MDS sees it.
    pub status: CsStatus,
    /// Its disk space.
    pub space: SpaceInfo,
    /// Number of chunk replicas the MDS places on this server.
    pub chunks: u64,
    /// Milliseconds since the last heartbeat (u64::MAX if never seen).
    pub last_seen_ms_ago: u64,
    /// Being removed gracefully (`rm-cs`): gets no new replicas, its chunks
    /// are copied elsewhere, then it is dropped.
    pub releasing: bool,
    /// Below the fill margin, it answered a write with ENOSPC, or it holds
    /// [`MAX_REPLICAS_PER_CS`] replicas: gets no new replicas.
    pub full: bool,
    /// I/O rates over the last heartbeat interval.
    pub io: IoRates,
    /// Where it is: `ROOM.ROW.RACK`.
    pub location: String,
    /// The host it runs on (CSes of one host share that failure domain).
    pub host: String,
    /// Its storage tier (0..=[`MAX_TIER`]).
    pub tier: u8,
    /// Bytes it may fill: `make-cs --capacity`, else its file system's size.
    pub capacity_bytes: u64,
    /// Bytes of the chunks it holds (chunk sizes of its replicas).
    pub held_bytes: u64,
    /// Its write journal's size and the bytes in it not yet applied and
    /// trimmed, as of its last heartbeat.
    #[serde(default)]
    pub journal_bytes: u64,
    /// Bytes of the journal not yet applied and trimmed.
    #[serde(default)]
    pub journal_used_bytes: u64,
}

/// Space of one storage tier (its chunk servers that are not dropped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierSpace {
    /// The tier.
    pub tier: u8,
    /// Chunk servers in it (not dropped).
    pub servers: u64,
    /// Space of its chunk servers, in bytes.
    pub capacity_bytes: u64,
    /// Bytes of chunks held.
    pub held_bytes: u64,
    /// Free bytes the servers report.
    pub free_bytes: u64,
}

/// Progress of rebalancing (volatile: since this MDS became leader).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceStatus {
    /// `balanced`, `moving`, `paused` (the cluster is degraded: recovery
    /// first) or `off` (`mds.balance.rate=0`).
    pub state: RebalanceState,
    /// Replica moves in flight.
    pub in_flight: u64,
    /// Moves finished (copied, then the old replica dropped).
    pub done: u64,
    /// Moves planned to reach the band (or fix a failure domain) at the
    /// last pass.
    pub pending: u64,
    /// The widest spread of fullness within a tier, per mille of capacity
    /// (fullest minus emptiest).
    pub spread_permille: u64,
}

/// See [`RebalanceStatus::state`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RebalanceState {
    /// Every chunk server of each tier is within the balance threshold.
    #[default]
    Balanced,
    /// Replicas are being moved.
    Moving,
    /// Moves are paused (recovery has priority).
    Paused,
    /// Rebalancing is turned off.
    Off,
}

impl std::fmt::Display for RebalanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RebalanceState::Balanced => "balanced",
            RebalanceState::Moving => "moving",
            RebalanceState::Paused => "paused",
            RebalanceState::Off => "off",
        })
    }
}

/// I/O rates of a chunk server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoRates {
    /// Reads per second.
    pub read_ops_per_s: u64,
    /// Writes per second.
    pub write_ops_per_s: u64,
    /// Bytes read per second.
    pub read_bytes_per_s: u64,
    /// Bytes written per second.
    pub write_bytes_per_s: u64,
}

/// An MDS's part in the metadata group, as `stat` shows it. On the wire
/// and in the CLI it is its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MdsRole {
    /// It leads the group: metadata changes go through it.
    Leader,
    /// A voter that follows the leader.
    Follower,
    /// A member that receives the log but does not vote (being added).
    Learner,
    /// A voter standing for election.
    Candidate,
    /// The answering MDS does not hear from it.
    Unreachable,
    /// A role this build does not know (named by a newer MDS).
    Unknown,
}

impl MdsRole {
    /// Every role, in declaration order.
    pub const ALL: [MdsRole; 6] = [
        MdsRole::Leader,
        MdsRole::Follower,
        MdsRole::Learner,
        MdsRole::Candidate,
        MdsRole::Unreachable,
        MdsRole::Unknown,
    ];

    /// Its name on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            MdsRole::Leader => "leader",
            MdsRole::Follower => "follower",
            MdsRole::Learner => "learner",
            MdsRole::Candidate => "candidate",
            MdsRole::Unreachable => "unreachable",
            MdsRole::Unknown => "unknown",
        }
    }

    /// The role named `name`; [`MdsRole::Unknown`] for a name this build
    /// does not know.
    pub fn from_name(name: &str) -> MdsRole {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .unwrap_or(MdsRole::Unknown)
    }

    /// Whether it votes and hears from the leader (or is the leader).
    pub fn is_in_quorum(self) -> bool {
        matches!(self, MdsRole::Leader | MdsRole::Follower)
    }
}

impl std::fmt::Display for MdsRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a cluster, as `stat` shows it. On the wire and in the CLI
/// it is its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterHealth {
    /// Every chunk has `replicas.norm` copies and every chunk server is
    /// active.
    Healthy,
    /// Some chunk is below `replicas.norm`, or a chunk server is down.
    Degraded,
    /// Some chunk is below `replicas.min`: writes to it wait.
    Failure,
    /// A state this build does not know (named by a newer MDS).
    Unknown,
}

impl ClusterHealth {
    /// Every state, in declaration order.
    pub const ALL: [ClusterHealth; 4] = [
        ClusterHealth::Healthy,
        ClusterHealth::Degraded,
        ClusterHealth::Failure,
        ClusterHealth::Unknown,
    ];

    /// Its name on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterHealth::Healthy => "healthy",
            ClusterHealth::Degraded => "degraded",
            ClusterHealth::Failure => "failure",
            ClusterHealth::Unknown => "unknown",
        }
    }

    /// The state named `name`; [`ClusterHealth::Unknown`] for a name this
    /// build does not know.
    pub fn from_name(name: &str) -> ClusterHealth {
        Self::ALL
            .into_iter()
            .find(|h| h.as_str() == name)
            .unwrap_or(ClusterHealth::Unknown)
    }
}

impl std::fmt::Display for ClusterHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An MDS as listed by `stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdsInfo {
    /// Its id in the group.
    pub id: MdsId,
    /// `host:port` it listens on.
    pub addr: String,
    /// Its part in the group, as the answering MDS sees it.
    pub role: MdsRole,
    /// The Raft term it is in (as far as the leader knows).
    pub term: u64,
    /// Last log index known committed, and applied to its state.
    pub commit_index: u64,
    /// Last log index known applied to its state.
    pub applied_index: u64,
    /// Log entries it is behind the leader's last entry (0 when caught up).
    pub lag: u64,
}

/// One member of the MDS group (a Raft member), as `members()` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdsMember {
    /// Its id in the group.
    pub id: MdsId,
    /// `host:port` it serves clients, chunk servers and its peers on.
    pub addr: String,
    /// A voter counts toward the majority; a learner is still catching up
    /// (it serves calls too, forwarding them to the leader).
    pub voter: bool,
}

/// The MDS group as one MDS knows it (`MdsGroup::members`).
///
/// Any MDS answers from its own Raft state without asking the leader, so a
/// follower's answer may lag: it lists the membership it has in its log
/// (possibly older than the leader's by the entries it has not received
/// yet) and the leader it last heard from (`None` during an election or
/// while it is cut off). `config_index` and `term` order two answers:
/// the one with the higher `config_index` has the newer member list, the
/// one with the higher `term` the newer leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdsMembership {
    /// Every member, by id.
    pub members: Vec<MdsMember>,
    /// The leader's id, if the answering MDS knows one.
    pub leader: Option<MdsId>,
    /// The Raft term the answering MDS is in.
    pub term: u64,
    /// Log index of the membership configuration the list comes from (0 for
    /// an MDS that runs without Raft).
    pub config_index: u64,
}

impl MdsMembership {
    /// The leader's address, if the leader is known and a member.
    pub fn leader_addr(&self) -> Option<&str> {
        let leader = self.leader?;
        self.members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.addr.as_str())
    }
}

/// Chunks by replication state. Each chunk is counted once, in the first
/// state that applies: replicating, blocked, urgent, degraded, healthy.
/// "Available" replicas are chain members on active chunk servers that are
/// not being released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkCounts {
    /// At least `replicas_norm` available replicas.
    pub healthy: u64,
    /// Fewer than `replicas_norm` but more than `replicas_min` available.
    pub degraded: u64,
    /// Exactly `replicas_min` available (one more loss blocks writes);
    /// re-replicated first.
    pub urgent: u64,
    /// Fewer than `replicas_min` available: writes wait.
    pub blocked: u64,
    /// A copy is in progress right now.
    pub replicating: u64,
}

/// Progress of re-replication since the MDS started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// Chunks that need copies now (degraded, urgent, blocked, releasing).
    pub pending_chunks: u64,
    /// Copies in flight.
    pub in_flight: u64,
    /// Copies finished.
    pub done_chunks: u64,
    /// Bytes (chunk sizes) copied.
    pub done_bytes: u64,
    /// Copies that failed (and will be retried).
    pub failed_chunks: u64,
    /// Bytes sent by copies per second over the last few seconds.
    pub rate_bytes_per_s: u64,
    /// Bytes sent by finished copies (the blocks that differed; holes and
    /// blocks a stale replica already had are not sent).
    pub copied_bytes: u64,
    /// What is left to go through: the in-flight copies' remainders plus a
    /// chunk size per missing copy of the pending chunks (an upper bound:
    /// sparse chunks and stale replicas go faster).
    pub remaining_bytes: u64,
    /// `remaining_bytes / rate_bytes_per_s`, seconds; `None` when nothing
    /// moved over the last few seconds (unknown) or nothing remains.
    pub eta_s: Option<u64>,
}

/// What `pstorage stat` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The cluster's name.
    pub cluster_name: String,
    /// The cluster's state: healthy, degraded or failure.
    pub health: ClusterHealth,
    /// Every MDS of the group.
    pub mds: Vec<MdsInfo>,
    /// Every chunk server.
    pub cs: Vec<CsInfo>,
    /// Files in the namespace.
    pub files: u64,
    /// Directories in the namespace.
    pub dirs: u64,
    /// Chunks in the namespace.
    pub chunks: u64,
    /// Chunks by replication state.
    pub chunk_counts: ChunkCounts,
    /// Re-replication in progress.
    pub replication: ReplicationStatus,
    /// Bytes of file data (file sizes summed, before replication).
    pub logical_bytes: u64,
    /// Space per storage tier that has chunk servers, by tier.
    pub tiers: Vec<TierSpace>,
    /// Rebalancing state.
    pub rebalance: RebalanceStatus,
    /// Conditions that do not change `health` but need attention (fewer
    /// failure domains than `replicas_norm` in a tier, ...).
    pub warnings: Vec<String>,
}

/// One cluster parameter as `get-config` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// The parameter's name (`set-config KEY=VALUE`).
    pub key: String,
    /// Effective value.
    pub value: u64,
    /// Value when never set.
    pub default: u64,
    /// Unit of both (ms, %, bytes/s, ...).
    pub unit: String,
    /// What the parameter does.
    pub description: String,
}

/// What an event in the MDS's global event log is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A chunk server changed state (active, inactive, offline, released, dropped).
    CsState,
    /// Re-replication started, finished or failed.
    Replication,
    /// A corrupt replica was found, or repaired.
    Corruption,
    /// A chunk server's disk is (nearly) full.
    DiskFull,
    /// A write lease expired or was revoked.
    Lease,
    /// A cluster parameter changed.
    Config,
    /// The metadata group changed: an election, an MDS added or removed.
    Mds,
    /// Certificates: issued, revoked, a failed enrollment (store format
    /// 11 on).
    Security,
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventKind::CsState => "cs",
            EventKind::Replication => "replication",
            EventKind::Corruption => "corruption",
            EventKind::DiskFull => "disk-full",
            EventKind::Lease => "lease",
            EventKind::Config => "config",
            EventKind::Mds => "mds",
            EventKind::Security => "security",
        })
    }
}

/// How serious an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventLevel {
    /// Informational.
    Info,
    /// Needs attention.
    Warning,
    /// Something failed.
    Error,
}

impl std::fmt::Display for EventLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventLevel::Info => "INFO",
            EventLevel::Warning => "WARN",
            EventLevel::Error => "ERROR",
        })
    }
}

/// One entry of the MDS's persistent global event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log; grows by one per event, never reused.
    pub seq: u64,
    /// When it happened, ms since the Unix epoch.
    pub time_ms: u64,
    /// What it is about.
    pub kind: EventKind,
    /// How serious it is.
    pub level: EventLevel,
    /// Names the objects involved (chunk server, chunk, file).
    pub message: String,
}

/// A chunk replica a chunk server holds, as reported to the MDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReplicaInfo {
    /// The chunk.
    pub chunk: ChunkId,
    /// Its version on the chunk server.
    pub version: MapVersion,
}

/// Most bytes of a node's address (`host:port`): what the data path's
/// framing carries, and what keeps every answer naming nodes bounded.
pub const MAX_ADDR_LEN: usize = 255;

/// Most MDSes in one group (voters and learners): a group of 3 or 5
/// survives the loss of 1 or 2; 9 leaves room for a replacement under way.
pub const MAX_MDS_MEMBERS: usize = 9;

/// Most chunk servers of one cluster (allocated and not dropped): one per
/// disk, and what keeps `pstorage stat`'s answer (about 1 KiB a server)
/// far below the largest message.
pub const MAX_CHUNK_SERVERS: usize = 16_384;

/// Checks a node's address as it is registered: not empty, at most
/// [`MAX_ADDR_LEN`] bytes. `what` names the node in the error.
pub fn validate_addr(what: &str, addr: &str) -> crate::error::Result<()> {
    if addr.is_empty() || addr.len() > MAX_ADDR_LEN {
        return Err(crate::error::Error::invalid(format!(
            "{what}: the address must have 1 to {MAX_ADDR_LEN} bytes, not {}",
            addr.len()
        )));
    }
    Ok(())
}

/// Most replicas one page of a chunk server's replica list carries
/// (`listChunks`, and each part of a registration): 16 bytes each on the
/// wire, 1 MiB a page.
pub const REPLICA_PAGE: usize = 65_536;

/// Most replicas one chunk server's registration may report over the
/// network (the MDS's registration intake answers a larger one with an
/// error). The MDS places no new replica on a server that holds nearly this
/// many (65,536 short; it counts them at every tick and at each placement in
/// between), so a server it filled can always register. At the default chunk size it is
/// 4 PiB of data; at the smallest (64 KiB), 1 TiB.
pub const MAX_REPLICAS_PER_CS: usize = 1 << 24;

/// One page of a chunk server's replicas, by chunk id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPage {
    /// At most [`REPLICA_PAGE`] replicas, by chunk id, from the asked id on.
    pub replicas: Vec<ChunkReplicaInfo>,
    /// Whether the server holds replicas after the last of `replicas`: ask
    /// again from its id + 1.
    pub more: bool,
}

/// What one [`replicate_chunk`] call did.
///
/// [`replicate_chunk`]: crate::traits::ChunkControl::replicate_chunk
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStats {
    /// Bytes read from the source replica and written here: the blocks
    /// whose CRC-table entry differed from the base's (blocks the source
    /// never wrote are zeroed locally, not transferred).
    pub bytes_copied: u64,
    /// Bytes of the chunk whose CRC-table entries were compared between the
    /// source and the base (the chunk size for a finished copy): every one
    /// of them not in `bytes_copied` was found identical, or zeroed locally.
    pub bytes_compared: u64,
    /// Whether the copy started from something held here (a stale replica
    /// of the chunk, or a partial copy left by an interrupted earlier call)
    /// rather than from an empty replica.
    pub reused_base: bool,
}

/// A copy in progress on a chunk server ([`copy_progress`]).
///
/// [`copy_progress`]: crate::traits::ChunkControl::copy_progress
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// The chunk copied.
    pub chunk: ChunkId,
    /// The version the copy makes the replica hold.
    pub version: MapVersion,
    /// Bytes copied (read from the source and written here) so far.
    pub bytes_done: u64,
    /// Bytes to copy: known once the source's and the base's CRC tables
    /// have been compared; 0 before.
    pub bytes_total: u64,
}

/// What a chunk server tells the MDS when it (re)connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsRegistration {
    /// The chunk server's id.
    pub id: CsId,
    /// The address clients and peers reach it at, `host:port`.
    pub addr: String,
    /// Its disk space.
    pub space: SpaceInfo,
    /// Every chunk replica it holds.
    pub chunks: Vec<ChunkReplicaInfo>,
    /// Replicas of `chunks` that were written but not flushed when the
    /// server last stopped uncleanly (power loss, OS crash) and passed
    /// their checksums since: each is consistent, but may lack writes that
    /// were acknowledged and never flushed, which the chunk's other
    /// replicas kept. The MDS must not keep them in a chain beside a
    /// replica that is sure to be current. Sorted; empty after a clean stop.
    #[serde(default)]
    pub unclean: Vec<ChunkId>,
}

/// What the MDS answers a registering chunk server.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegisterReply {
    /// Replicas the chunk server must delete (stale or unknown); it must not
    /// serve them in the meantime.
    pub delete: Vec<ChunkId>,
    /// Replicas it keeps that no chain names (left their chain while the
    /// server was away, or after its unclean stop): kept as the base of a
    /// copy, but never served at their present version, which a client's
    /// cached map may still name beside newer writes.
    #[serde(default)]
    pub stale: Vec<ChunkId>,
    /// Heartbeat interval the MDS expects, in ms.
    pub heartbeat_interval_ms: u64,
}

/// Splits an absolute path into its components, rejecting malformed ones.
///
/// `/` gives an empty list. Empty components (`//`), `.`/`..`, NUL bytes and
/// names longer than 255 bytes are rejected.
pub fn split_path(path: &str) -> Result<Vec<&str>> {
    if !path.starts_with('/') {
        return Err(Error::invalid(format!(
            "path {path:?} is not absolute: cluster paths start with /"
        )));
    }
    if path.len() > 4096 {
        return Err(Error::invalid("path longer than 4096 bytes"));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for comp in trimmed[1..].split('/') {
        if comp.is_empty() || comp == "." || comp == ".." || comp.contains('\0') || comp.len() > 255
        {
            return Err(Error::invalid(format!(
                "path {path:?} has a bad component {comp:?}"
            )));
        }
        out.push(comp);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_cut_at_its_limit_and_says_whether_more_follow() {
        assert_eq!(take_page(0..3, 3), (vec![0, 1, 2], false));
        assert_eq!(take_page(0..4, 3), (vec![0, 1, 2], true));
        assert_eq!(take_page(0..0, 3), (vec![], false));
    }

    /// Roles and health states go over the wire by their lowercase names
    /// (what older builds sent as text); a name from a newer MDS reads as
    /// `Unknown`.
    #[test]
    fn roles_and_health_by_name() {
        for role in MdsRole::ALL {
            assert_eq!(MdsRole::from_name(role.as_str()), role);
            assert_eq!(role.to_string(), role.as_str());
        }
        for health in ClusterHealth::ALL {
            assert_eq!(ClusterHealth::from_name(health.as_str()), health);
            assert_eq!(health.to_string(), health.as_str());
        }
        let old = ["leader", "follower", "learner", "candidate", "unreachable"];
        for name in old {
            assert_ne!(MdsRole::from_name(name), MdsRole::Unknown, "{name}");
        }
        for name in ["healthy", "degraded", "failure"] {
            assert_ne!(
                ClusterHealth::from_name(name),
                ClusterHealth::Unknown,
                "{name}"
            );
        }
        assert_eq!(MdsRole::from_name("observer"), MdsRole::Unknown);
        assert_eq!(ClusterHealth::from_name("on fire"), ClusterHealth::Unknown);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size(" 3T ").unwrap(), 3 << 40);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in [
            "",
            "G",
            "x",
            "1.5G",
            "-1",
            "+1",
            "12X",
            "99999999999999999999",
            "20000000T",
            "99999999999T",
            "1 G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replicas_parse_and_validate() {
        assert_eq!(
            Replicas::parse("3:2").unwrap(),
            Replicas { norm: 3, min: 2 }
        );
        assert_eq!(Replicas::parse("1").unwrap(), Replicas { norm: 1, min: 1 });
        assert!(Replicas::parse("2:3").is_err());
        assert!(Replicas::parse("0:0").is_err());
        assert!(Replicas::parse("16:2").is_err());
        assert!(Replicas::parse("x").is_err());
    }

    /// Ids print and serialize as their bare numbers did: tables (`{:>6}`)
    /// stay aligned, and the stored and wire bytes are the number's.
    #[test]
    fn ids_print_and_serialize_as_their_numbers() {
        assert_eq!(
            format!("{:>6}|{}", MdsId(3), MdsId(3)),
            format!("{:>6}|{}", 3, 3)
        );
        assert_eq!(format!("{:<4}|{:?}", CsId(12), CsId(12)), "12  |12");
        assert_eq!(format!("{} {:>6}", ChunkId(42), ChunkId(42)), "0x2a   0x2a");
        assert_eq!(
            postcard::to_allocvec(&MdsId(300)).unwrap(),
            postcard::to_allocvec(&300u64).unwrap()
        );
    }

    #[test]
    fn paths_split() {
        assert_eq!(split_path("/").unwrap(), Vec::<&str>::new());
        assert_eq!(split_path("/a/b/").unwrap(), vec!["a", "b"]);
        assert!(split_path("a").is_err());
        assert!(split_path("/a//b").is_err());
        assert!(split_path("/a/../b").is_err());
    }
}

/// A node certificate's serial number (128 random bits): what revocation
/// names. Shown as 32 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CertSerial(pub u128);

impl CertSerial {
    /// The serial of a certificate's DER-encoded serial number (big
    /// endian, at most 16 bytes after DER's leading zero); `None` for a
    /// longer one (not a serial this cluster's CA issues).
    pub fn from_be_bytes(bytes: &[u8]) -> Option<CertSerial> {
        let bytes = match bytes {
            [0, rest @ ..] if !rest.is_empty() => rest,
            b => b,
        };
        if bytes.len() > 16 {
            return None;
        }
        let mut full = [0u8; 16];
        full[16 - bytes.len()..].copy_from_slice(bytes);
        Some(CertSerial(u128::from_be_bytes(full)))
    }
}

impl std::fmt::Display for CertSerial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for CertSerial {
    type Err = crate::error::Error;

    /// Hexadecimal digits, colons allowed (as `openssl x509 -serial`
    /// and `pstorage certs` show them).
    fn from_str(s: &str) -> crate::error::Result<CertSerial> {
        let digits: String = s.chars().filter(|c| *c != ':').collect();
        if digits.is_empty() || digits.len() > 32 || !digits.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(crate::error::Error::invalid(format!(
                "{s:?} is not a certificate serial number (up to 32 hexadecimal digits)"
            )));
        }
        u128::from_str_radix(&digits, 16)
            .map(CertSerial)
            .map_err(|e| crate::error::Error::invalid(format!("serial number {s:?}: {e}")))
    }
}

/// A certificate the cluster's CA issued, as the MDS records it (store
/// format 11 on): what `pstorage certs` lists and `pstorage revoke` finds
/// by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Its serial number.
    pub serial: CertSerial,
    /// The role it names (`admin`, `client`, `cs`, `mds`), empty when
    /// revoked without having been recorded.
    pub role: String,
    /// The node name it names.
    pub name: String,
    /// When it was issued (ms since the epoch; 0 when not recorded).
    pub issued_ms: u64,
    /// When it expires (ms since the epoch; 0 when not recorded).
    pub not_after_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// Revoked serial numbers in the order they were revoked, from position
/// `from` on: what a node syncs its revocation set with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSerials {
    /// How many serials are revoked in all.
    pub total: u64,
    /// The serials from the asked position on (at most
    /// [`MAX_REVOKED_PER_REPLY`]).
    pub serials: Vec<CertSerial>,
}

/// Most serials one [`RevokedSerials`] reply carries; a node asks again
/// from where it got to.
pub const MAX_REVOKED_PER_REPLY: usize = 4096;
