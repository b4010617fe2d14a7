//! The one place where pstorage's core types meet their Cap'n Proto form.
//!
//! Every struct of `schema/pstorage.capnp` that mirrors a core type has one
//! [`WireStruct`] impl here (a writer and a reader), every enum a pair of
//! conversion functions, and every method result union a [`WireReply`] impl.
//! Servers and clients never touch a builder or reader field directly.
//!
//! Readers return `capnp::Result`: a message that does not decode (an unknown
//! enumerant, bad UTF-8, a pointer out of bounds) is a protocol error, which
//! the callers turn into [`ErrorKind::Protocol`].

use capnp::struct_list;
use capnp::traits::OwnedStruct;
use pstorage_core::types::{
    AttrUpdate, ChunkCounts, ChunkMap, ChunkReplicaInfo, ClusterHealth, ClusterStatus, ConfigEntry,
    CopyProgress, CopyStats, CsId, CsInfo, CsPlacementUpdate, CsRegistration, CsStats, CsStatus,
    DirEntry, Event, EventKind, EventLevel, FailureDomain, FailureReason, FileAttrs,
    HeartbeatReply, InodeKind, IoRates, IoTimeouts, Lease, LeaseId, LeaseMode, MdsInfo, MdsMember,
    MdsMembership, MdsRole, OpTag, OpenFlags, OpenReply, RebalanceState, RebalanceStatus,
    RegisterReply, Replica, Replicas, ReplicationStatus, SessionId, SpaceInfo, Stat, TierSpace,
};
use pstorage_core::types::{CertRecord, CertSerial, RevokedSerials, MAX_REVOKED_PER_REPLY};
use pstorage_core::types::{ChunkId, InodeId, MapVersion, MdsId};
use pstorage_core::types::{ChunkMapPage, DirPage, ReplicaPage};
use pstorage_core::types::{HeldLock, LockKind, LockOwner, LockRequest};
use pstorage_core::types::{NewNode, NodeSpec, Perms, StatChange, TimeChange, Timestamp, XattrSet};
use pstorage_core::{Error, ErrorKind, Result};

use crate::generated::pstorage_capnp as schema;

/// Traversal limit of the messages a client reads (answers), in 8-byte
/// words (64 MiB): the largest legitimate answer, with room to spare.
///
/// What bounds each (docs/design.md, "Message sizes"): listings are paged
/// (`readdir` 1,024 entries, `fileChunks` 256 maps, `listChunks` and each
/// part of a registration 65,536 replicas, a registration's reply 65,536
/// ids); the largest answers left whole are the
/// certificate table (65,536 records, under 40 MiB however long their
/// names), `pstorage stat` (16,384 chunk servers, about 15 MiB) and the
/// event log (1,000 events of at most 2 KiB). An error's message is cut to
/// 8 KiB. Requests have [`MDS_REQUEST_LIMIT_WORDS`] from MDSes and
/// [`SMALL_REQUEST_LIMIT_WORDS`] from everyone else.
pub const TRAVERSAL_LIMIT_WORDS: usize = 8 << 20;
/// Traversal limit of a request from an MDS (16 MiB): a Raft append
/// carries at most `raft::MAX_APPEND_BYTES` (4 MiB; openraft splits larger
/// ones by entries) or a single entry of one command (at most 8 MiB,
/// `group_commit::MAX_COMMAND_BYTES`), a snapshot travels in 1 MiB chunks,
/// and a forwarded call is a client's (4 MiB) or a part of a registration.
pub const MDS_REQUEST_LIMIT_WORDS: usize = 2 << 20;
/// Traversal limit of a request a server reads from a peer whose every
/// legitimate request is small (4 MiB): clients and admins on an MDS
/// (their largest are a path of 4 KiB, an extended attribute's value of
/// 64 KiB and a certificate request of 16 KiB), chunk servers on an MDS
/// (their largest is a part of a registration: 65,536 replicas and as
/// many unclean ids, 1.5 MiB), and everyone on a chunk server's control
/// interface (its requests name chunks). The message's size is checked
/// against it before it is read, so such a peer can make a server hold at
/// most this much per message.
pub const SMALL_REQUEST_LIMIT_WORDS: usize = 512 << 10;

/// The reader options of a server's side of a control connection from a
/// peer of `role`, on the `Mds` interface (`mds`) or `ChunkControl`: MDSes
/// (Raft, forwarded calls) get [`MDS_REQUEST_LIMIT_WORDS`] on the `Mds`
/// interface, every other peer [`SMALL_REQUEST_LIMIT_WORDS`].
pub fn request_reader_options(mds: bool, role: crate::pki::Role) -> capnp::message::ReaderOptions {
    use crate::pki::Role;
    let limit = match (mds, role) {
        (true, Role::Mds) => MDS_REQUEST_LIMIT_WORDS,
        _ => SMALL_REQUEST_LIMIT_WORDS,
    };
    let mut options = capnp::message::ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(limit))
        .nesting_limit(NESTING_LIMIT);
    options
}

/// Nesting limit for every message we read: our deepest struct
/// (ClusterStatus > CsInfo > SpaceInfo inside an RPC envelope) needs ~10.
pub const NESTING_LIMIT: i32 = 64;

/// The reader options of both sides of every control connection.
pub fn reader_options() -> capnp::message::ReaderOptions {
    let mut options = capnp::message::ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(TRAVERSAL_LIMIT_WORDS))
        .nesting_limit(NESTING_LIMIT);
    options
}

/// A core type with a Cap'n Proto struct counterpart.
pub trait WireStruct: Sized {
    /// The generated struct type.
    type Schema: OwnedStruct;
    /// Fills `builder` with `self`.
    fn write(&self, builder: <Self::Schema as OwnedStruct>::Builder<'_>);
    /// Decodes a value.
    fn read(reader: <Self::Schema as OwnedStruct>::Reader<'_>) -> capnp::Result<Self>;
}

/// Writes `items` into a list builder that was initialized to their length.
pub fn write_list<T: WireStruct>(mut builder: struct_list::Builder<'_, T::Schema>, items: &[T]) {
    assert_eq!(
        builder.len() as usize,
        items.len(),
        "list initialized to the wrong length"
    );
    for (i, item) in items.iter().enumerate() {
        item.write(builder.reborrow().get(i as u32));
    }
}

/// Decodes a list.
pub fn read_list<T: WireStruct>(
    reader: struct_list::Reader<'_, T::Schema>,
) -> capnp::Result<Vec<T>> {
    reader.iter().map(T::read).collect()
}

/// A list length as Cap'n Proto wants it. Lists are bounded by the traversal
/// limit long before 2^32 elements, so overflow is a bug.
pub fn list_len(len: usize) -> u32 {
    u32::try_from(len).expect("list of more than 2^32 elements cannot be sent")
}

/// Decodes a text field.
/// An optional [`OpTag`] field (`has`: whether it is set).
pub fn read_op<'a>(
    has: bool,
    get: impl FnOnce() -> capnp::Result<schema::op_tag::Reader<'a>>,
) -> capnp::Result<Option<OpTag>> {
    if has {
        Ok(Some(OpTag::read(get()?)?))
    } else {
        Ok(None)
    }
}

/// Sets an optional [`OpTag`] field.
pub fn write_op<'a>(op: Option<OpTag>, init: impl FnOnce() -> schema::op_tag::Builder<'a>) {
    if let Some(op) = op {
        op.write(init());
    }
}

pub fn read_text(text: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    Ok(text?.to_str()?.to_owned())
}

/// Runs a decoder of request parameters, turning a failure into the
/// `Protocol` error the server sends back.
pub fn decode_request<T>(method: &str, decode: impl FnOnce() -> capnp::Result<T>) -> Result<T> {
    decode().map_err(|e| Error::protocol(format!("malformed {method} request: {e}")).caused_by(e))
}

// ---------------------------------------------------------------------------
// Errors

/// Writes a pstorage error: its kind code and message.
pub fn write_error(mut builder: schema::error::Builder<'_>, error: &Error) {
    builder.set_kind(error.kind().code());
    builder.set_message(&*bounded_message(error.message()));
}

/// Most bytes of an error's message on the wire: a message may quote what
/// the request carried (a path of up to 4 KiB, escaped), and an answer
/// stays small whatever it quotes.
pub const MAX_ERROR_MESSAGE: usize = 8 << 10;

/// `message`, cut at a character to at most [`MAX_ERROR_MESSAGE`] bytes
/// (ending `...` when cut).
pub fn bounded_message(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_ERROR_MESSAGE {
        return message.into();
    }
    let mut end = MAX_ERROR_MESSAGE - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end]).into()
}

/// Decodes a pstorage error; an unknown kind code becomes `Internal`.
pub fn read_error(reader: schema::error::Reader<'_>) -> capnp::Result<Error> {
    Ok(Error::new(
        ErrorKind::from_code(reader.get_kind()),
        read_text(reader.get_message())?,
    ))
}

// ---------------------------------------------------------------------------
// Enums

pub fn inode_kind_to_wire(kind: InodeKind) -> schema::InodeKind {
    match kind {
        InodeKind::File => schema::InodeKind::File,
        InodeKind::Dir => schema::InodeKind::Dir,
        InodeKind::Symlink => schema::InodeKind::Symlink,
        InodeKind::Fifo => schema::InodeKind::Fifo,
        InodeKind::Socket => schema::InodeKind::Socket,
        InodeKind::CharDevice => schema::InodeKind::CharDevice,
        InodeKind::BlockDevice => schema::InodeKind::BlockDevice,
    }
}

pub fn inode_kind_from_wire(kind: schema::InodeKind) -> InodeKind {
    match kind {
        schema::InodeKind::File => InodeKind::File,
        schema::InodeKind::Dir => InodeKind::Dir,
        schema::InodeKind::Symlink => InodeKind::Symlink,
        schema::InodeKind::Fifo => InodeKind::Fifo,
        schema::InodeKind::Socket => InodeKind::Socket,
        schema::InodeKind::CharDevice => InodeKind::CharDevice,
        schema::InodeKind::BlockDevice => InodeKind::BlockDevice,
    }
}

pub fn xattr_set_to_wire(how: XattrSet) -> schema::XattrSet {
    match how {
        XattrSet::Any => schema::XattrSet::Any,
        XattrSet::Create => schema::XattrSet::Create,
        XattrSet::Replace => schema::XattrSet::Replace,
    }
}

pub fn xattr_set_from_wire(how: schema::XattrSet) -> XattrSet {
    match how {
        schema::XattrSet::Any => XattrSet::Any,
        schema::XattrSet::Create => XattrSet::Create,
        schema::XattrSet::Replace => XattrSet::Replace,
    }
}

pub fn lease_mode_to_wire(mode: LeaseMode) -> schema::LeaseMode {
    match mode {
        LeaseMode::Read => schema::LeaseMode::Read,
        LeaseMode::Write => schema::LeaseMode::Write,
    }
}

pub fn lease_mode_from_wire(mode: schema::LeaseMode) -> LeaseMode {
    match mode {
        schema::LeaseMode::Read => LeaseMode::Read,
        schema::LeaseMode::Write => LeaseMode::Write,
    }
}

pub fn failure_reason_to_wire(reason: FailureReason) -> schema::FailureReason {
    match reason {
        FailureReason::Unreachable => schema::FailureReason::Unreachable,
        FailureReason::Corrupt => schema::FailureReason::Corrupt,
        FailureReason::NoSpace => schema::FailureReason::NoSpace,
        FailureReason::VersionMismatch => schema::FailureReason::VersionMismatch,
        FailureReason::IoError => schema::FailureReason::IoError,
        FailureReason::TimedOut => schema::FailureReason::TimedOut,
    }
}

pub fn failure_reason_from_wire(reason: schema::FailureReason) -> FailureReason {
    match reason {
        schema::FailureReason::Unreachable => FailureReason::Unreachable,
        schema::FailureReason::Corrupt => FailureReason::Corrupt,
        schema::FailureReason::NoSpace => FailureReason::NoSpace,
        schema::FailureReason::VersionMismatch => FailureReason::VersionMismatch,
        schema::FailureReason::IoError => FailureReason::IoError,
        schema::FailureReason::TimedOut => FailureReason::TimedOut,
    }
}

pub fn cs_status_to_wire(status: CsStatus) -> schema::CsStatus {
    match status {
        CsStatus::Active => schema::CsStatus::Active,
        CsStatus::Inactive => schema::CsStatus::Inactive,
        CsStatus::Offline => schema::CsStatus::Offline,
        CsStatus::Dropped => schema::CsStatus::Dropped,
    }
}

pub fn cs_status_from_wire(status: schema::CsStatus) -> CsStatus {
    match status {
        schema::CsStatus::Active => CsStatus::Active,
        schema::CsStatus::Inactive => CsStatus::Inactive,
        schema::CsStatus::Offline => CsStatus::Offline,
        schema::CsStatus::Dropped => CsStatus::Dropped,
    }
}

pub fn event_kind_to_wire(kind: EventKind) -> schema::EventKind {
    match kind {
        EventKind::CsState => schema::EventKind::CsState,
        EventKind::Replication => schema::EventKind::Replication,
        EventKind::Corruption => schema::EventKind::Corruption,
        EventKind::DiskFull => schema::EventKind::DiskFull,
        EventKind::Lease => schema::EventKind::Lease,
        EventKind::Config => schema::EventKind::Config,
        EventKind::Mds => schema::EventKind::Mds,
        EventKind::Security => schema::EventKind::Security,
    }
}

pub fn event_kind_from_wire(kind: schema::EventKind) -> EventKind {
    match kind {
        schema::EventKind::CsState => EventKind::CsState,
        schema::EventKind::Replication => EventKind::Replication,
        schema::EventKind::Corruption => EventKind::Corruption,
        schema::EventKind::DiskFull => EventKind::DiskFull,
        schema::EventKind::Lease => EventKind::Lease,
        schema::EventKind::Config => EventKind::Config,
        schema::EventKind::Mds => EventKind::Mds,
        schema::EventKind::Security => EventKind::Security,
    }
}

pub fn event_level_to_wire(level: EventLevel) -> schema::EventLevel {
    match level {
        EventLevel::Info => schema::EventLevel::Info,
        EventLevel::Warning => schema::EventLevel::Warning,
        EventLevel::Error => schema::EventLevel::Error,
    }
}

pub fn event_level_from_wire(level: schema::EventLevel) -> EventLevel {
    match level {
        schema::EventLevel::Info => EventLevel::Info,
        schema::EventLevel::Warning => EventLevel::Warning,
        schema::EventLevel::Error => EventLevel::Error,
    }
}

// ---------------------------------------------------------------------------
// Structs

impl WireStruct for Replicas {
    type Schema = schema::replicas::Owned;
    fn write(&self, mut b: schema::replicas::Builder<'_>) {
        b.set_norm(self.norm);
        b.set_min(self.min);
    }
    fn read(r: schema::replicas::Reader<'_>) -> capnp::Result<Self> {
        Ok(Replicas {
            norm: r.get_norm(),
            min: r.get_min(),
        })
    }
}

impl WireStruct for FileAttrs {
    type Schema = schema::file_attrs::Owned;
    fn write(&self, mut b: schema::file_attrs::Builder<'_>) {
        self.replicas.write(b.reborrow().init_replicas());
        b.set_chunk_size(self.chunk_size);
        b.set_tier(self.tier);
        b.set_failure_domain(failure_domain_to_wire(self.failure_domain));
    }
    fn read(r: schema::file_attrs::Reader<'_>) -> capnp::Result<Self> {
        Ok(FileAttrs {
            replicas: Replicas::read(r.get_replicas()?)?,
            chunk_size: r.get_chunk_size(),
            tier: r.get_tier(),
            failure_domain: failure_domain_from_wire(r.get_failure_domain()?),
        })
    }
}

/// The wire form of a failure domain.
pub fn failure_domain_to_wire(d: FailureDomain) -> schema::FailureDomain {
    match d {
        FailureDomain::Disk => schema::FailureDomain::Disk,
        FailureDomain::Host => schema::FailureDomain::Host,
        FailureDomain::Rack => schema::FailureDomain::Rack,
        FailureDomain::Row => schema::FailureDomain::Row,
        FailureDomain::Room => schema::FailureDomain::Room,
    }
}

/// A failure domain from its wire form.
pub fn failure_domain_from_wire(d: schema::FailureDomain) -> FailureDomain {
    match d {
        schema::FailureDomain::Disk => FailureDomain::Disk,
        schema::FailureDomain::Host => FailureDomain::Host,
        schema::FailureDomain::Rack => FailureDomain::Rack,
        schema::FailureDomain::Row => FailureDomain::Row,
        schema::FailureDomain::Room => FailureDomain::Room,
    }
}

impl WireStruct for CsPlacementUpdate {
    type Schema = schema::cs_placement_update::Owned;
    fn write(&self, mut b: schema::cs_placement_update::Builder<'_>) {
        match &self.location {
            Some(l) => b.reborrow().init_location().set_set(l.as_str()),
            None => b.reborrow().init_location().set_unchanged(()),
        }
        match &self.host {
            Some(h) => b.reborrow().init_host().set_set(h.as_str()),
            None => b.reborrow().init_host().set_unchanged(()),
        }
        match self.tier {
            Some(t) => b.reborrow().init_tier().set_set(t),
            None => b.reborrow().init_tier().set_unchanged(()),
        }
        match self.capacity_bytes {
            Some(c) => b.reborrow().init_capacity_bytes().set_set(c),
            None => b.reborrow().init_capacity_bytes().set_unchanged(()),
        }
    }
    fn read(r: schema::cs_placement_update::Reader<'_>) -> capnp::Result<Self> {
        use schema::cs_placement_update::{capacity_bytes, host, location, tier};
        Ok(CsPlacementUpdate {
            location: match r.get_location().which()? {
                location::Unchanged(()) => None,
                location::Set(t) => Some(read_text(t)?),
            },
            host: match r.get_host().which()? {
                host::Unchanged(()) => None,
                host::Set(t) => Some(read_text(t)?),
            },
            tier: match r.get_tier().which()? {
                tier::Unchanged(()) => None,
                tier::Set(t) => Some(t),
            },
            capacity_bytes: match r.get_capacity_bytes().which()? {
                capacity_bytes::Unchanged(()) => None,
                capacity_bytes::Set(c) => Some(c),
            },
        })
    }
}

impl WireStruct for AttrUpdate {
    type Schema = schema::attr_update::Owned;
    fn write(&self, mut b: schema::attr_update::Builder<'_>) {
        match self.replicas {
            Some(replicas) => replicas.write(b.reborrow().init_replicas().init_set()),
            None => b.reborrow().init_replicas().set_unchanged(()),
        }
        match self.chunk_size {
            Some(size) => b.reborrow().init_chunk_size().set_set(size),
            None => b.reborrow().init_chunk_size().set_unchanged(()),
        }
        match self.tier {
            Some(t) => b.reborrow().init_tier().set_set(t),
            None => b.reborrow().init_tier().set_unchanged(()),
        }
        match self.failure_domain {
            Some(d) => b
                .reborrow()
                .init_failure_domain()
                .set_set(failure_domain_to_wire(d)),
            None => b.reborrow().init_failure_domain().set_unchanged(()),
        }
    }
    fn read(r: schema::attr_update::Reader<'_>) -> capnp::Result<Self> {
        use schema::attr_update::{chunk_size, failure_domain, replicas, tier};
        Ok(AttrUpdate {
            replicas: match r.get_replicas().which()? {
                replicas::Unchanged(()) => None,
                replicas::Set(set) => Some(Replicas::read(set?)?),
            },
            chunk_size: match r.get_chunk_size().which()? {
                chunk_size::Unchanged(()) => None,
                chunk_size::Set(size) => Some(size),
            },
            tier: match r.get_tier().which()? {
                tier::Unchanged(()) => None,
                tier::Set(t) => Some(t),
            },
            failure_domain: match r.get_failure_domain().which()? {
                failure_domain::Unchanged(()) => None,
                failure_domain::Set(d) => Some(failure_domain_from_wire(d?)),
            },
        })
    }
}

impl WireStruct for Timestamp {
    type Schema = schema::timestamp::Owned;
    fn write(&self, mut b: schema::timestamp::Builder<'_>) {
        b.set_sec(self.sec);
        b.set_nsec(self.nsec);
    }
    fn read(r: schema::timestamp::Reader<'_>) -> capnp::Result<Self> {
        Ok(Timestamp {
            sec: r.get_sec(),
            nsec: r.get_nsec(),
        })
    }
}

impl WireStruct for Perms {
    type Schema = schema::perms::Owned;
    fn write(&self, mut b: schema::perms::Builder<'_>) {
        b.set_mode(self.mode);
        b.set_uid(self.uid);
        b.set_gid(self.gid);
    }
    fn read(r: schema::perms::Reader<'_>) -> capnp::Result<Self> {
        Ok(Perms {
            mode: r.get_mode(),
            uid: r.get_uid(),
            gid: r.get_gid(),
        })
    }
}

fn lock_kind_to_wire(kind: Option<LockKind>) -> schema::LockKind {
    match kind {
        None => schema::LockKind::Unlock,
        Some(LockKind::Shared) => schema::LockKind::Shared,
        Some(LockKind::Exclusive) => schema::LockKind::Exclusive,
    }
}

fn lock_kind_from_wire(kind: schema::LockKind) -> Option<LockKind> {
    match kind {
        schema::LockKind::Unlock => None,
        schema::LockKind::Shared => Some(LockKind::Shared),
        schema::LockKind::Exclusive => Some(LockKind::Exclusive),
    }
}

impl WireStruct for LockRequest {
    type Schema = schema::lock_request::Owned;
    fn write(&self, mut b: schema::lock_request::Builder<'_>) {
        b.set_owner(self.owner.0);
        b.set_kind(lock_kind_to_wire(self.kind));
        b.set_start(self.start);
        b.set_end(self.end);
        b.set_pid(self.pid);
    }
    fn read(r: schema::lock_request::Reader<'_>) -> capnp::Result<Self> {
        Ok(LockRequest {
            owner: LockOwner(r.get_owner()),
            kind: lock_kind_from_wire(r.get_kind()?),
            start: r.get_start(),
            end: r.get_end(),
            pid: r.get_pid(),
        })
    }
}

impl WireStruct for HeldLock {
    type Schema = schema::held_lock::Owned;
    fn write(&self, mut b: schema::held_lock::Builder<'_>) {
        b.set_kind(lock_kind_to_wire(Some(self.kind)));
        b.set_start(self.start);
        b.set_end(self.end);
        b.set_pid(self.pid);
    }
    fn read(r: schema::held_lock::Reader<'_>) -> capnp::Result<Self> {
        let kind = lock_kind_from_wire(r.get_kind()?)
            .ok_or_else(|| capnp::Error::failed("a held lock of kind unlock".to_string()))?;
        Ok(HeldLock {
            kind,
            start: r.get_start(),
            end: r.get_end(),
            pid: r.get_pid(),
        })
    }
}

impl WireReply for Option<HeldLock> {
    type Schema = schema::test_lock_result::Owned;
    fn write_result(
        outcome: &Result<Option<HeldLock>>,
        mut b: schema::test_lock_result::Builder<'_>,
    ) {
        match outcome {
            Ok(Some(lock)) => lock.write(b.init_held()),
            Ok(None) => b.set_free(()),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(
        r: schema::test_lock_result::Reader<'_>,
    ) -> capnp::Result<Result<Option<HeldLock>>> {
        use schema::test_lock_result::Which;
        Ok(match r.which()? {
            Which::Held(lock) => Ok(Some(HeldLock::read(lock?)?)),
            Which::Free(()) => Ok(None),
            Which::Err(error) => Err(read_error(error?)?),
        })
    }
}

/// An optional [`Perms`] field: `default` when the sender left it out (a
/// client from before permissions).
pub fn read_perms<'a>(
    has: bool,
    get: impl FnOnce() -> capnp::Result<schema::perms::Reader<'a>>,
    default: Perms,
) -> capnp::Result<Perms> {
    if has {
        Perms::read(get()?)
    } else {
        Ok(default)
    }
}

impl WireStruct for NewNode {
    type Schema = schema::new_node::Owned;
    fn write(&self, mut b: schema::new_node::Builder<'_>) {
        self.perms.write(b.reborrow().init_perms());
        match &self.spec {
            NodeSpec::File => b.set_file(()),
            NodeSpec::Symlink { target } => b.set_symlink(target.as_str()),
            NodeSpec::Fifo => b.set_fifo(()),
            NodeSpec::Socket => b.set_socket(()),
            NodeSpec::CharDevice { rdev } => b.set_char_device(*rdev),
            NodeSpec::BlockDevice { rdev } => b.set_block_device(*rdev),
        }
    }
    fn read(r: schema::new_node::Reader<'_>) -> capnp::Result<Self> {
        use schema::new_node::Which;
        let spec = match r.which()? {
            Which::File(()) => NodeSpec::File,
            Which::Symlink(t) => NodeSpec::Symlink {
                target: read_text(t)?,
            },
            Which::Fifo(()) => NodeSpec::Fifo,
            Which::Socket(()) => NodeSpec::Socket,
            Which::CharDevice(rdev) => NodeSpec::CharDevice { rdev },
            Which::BlockDevice(rdev) => NodeSpec::BlockDevice { rdev },
        };
        Ok(NewNode {
            spec,
            perms: Perms::read(r.get_perms()?)?,
        })
    }
}

fn write_time_change(change: Option<TimeChange>, mut b: schema::time_change::Builder<'_>) {
    match change {
        None => b.set_unchanged(()),
        Some(TimeChange::Now) => b.set_now(()),
        Some(TimeChange::At(t)) => t.write(b.init_at()),
    }
}

fn read_time_change(r: schema::time_change::Reader<'_>) -> capnp::Result<Option<TimeChange>> {
    use schema::time_change::Which;
    Ok(match r.which()? {
        Which::Unchanged(()) => None,
        Which::Now(()) => Some(TimeChange::Now),
        Which::At(t) => Some(TimeChange::At(Timestamp::read(t?)?)),
    })
}

impl WireStruct for StatChange {
    type Schema = schema::stat_change::Owned;
    fn write(&self, mut b: schema::stat_change::Builder<'_>) {
        match self.mode {
            Some(m) => b.reborrow().init_mode().set_set(m),
            None => b.reborrow().init_mode().set_unchanged(()),
        }
        match self.uid {
            Some(u) => b.reborrow().init_uid().set_set(u),
            None => b.reborrow().init_uid().set_unchanged(()),
        }
        match self.gid {
            Some(g) => b.reborrow().init_gid().set_set(g),
            None => b.reborrow().init_gid().set_unchanged(()),
        }
        write_time_change(self.atime, b.reborrow().init_atime());
        write_time_change(self.mtime, b.init_mtime());
    }
    fn read(r: schema::stat_change::Reader<'_>) -> capnp::Result<Self> {
        use schema::stat_change::{gid, mode, uid};
        Ok(StatChange {
            mode: match r.get_mode().which()? {
                mode::Unchanged(()) => None,
                mode::Set(m) => Some(m),
            },
            uid: match r.get_uid().which()? {
                uid::Unchanged(()) => None,
                uid::Set(u) => Some(u),
            },
            gid: match r.get_gid().which()? {
                gid::Unchanged(()) => None,
                gid::Set(g) => Some(g),
            },
            atime: if r.has_atime() {
                read_time_change(r.get_atime()?)?
            } else {
                None
            },
            mtime: if r.has_mtime() {
                read_time_change(r.get_mtime()?)?
            } else {
                None
            },
        })
    }
}

/// An extended attribute's new value (`None`: remove it).
pub fn write_xattr_value(value: Option<&[u8]>, mut b: schema::xattr_value::Builder<'_>) {
    match value {
        Some(v) => b.set_set(v),
        None => b.set_remove(()),
    }
}

pub fn read_xattr_value(r: schema::xattr_value::Reader<'_>) -> capnp::Result<Option<Vec<u8>>> {
    use schema::xattr_value::Which;
    Ok(match r.which()? {
        Which::Remove(()) => None,
        Which::Set(v) => Some(v?.to_vec()),
    })
}

impl WireStruct for Stat {
    type Schema = schema::stat::Owned;
    fn write(&self, mut b: schema::stat::Builder<'_>) {
        b.set_ino(self.ino.0);
        b.set_kind(inode_kind_to_wire(self.kind));
        b.set_size(self.size);
        b.set_mtime_ms(self.mtime.as_ms());
        b.set_ctime_ms(self.ctime.as_ms());
        self.attrs.write(b.reborrow().init_attrs());
        b.set_mode(self.mode);
        b.set_uid(self.uid);
        b.set_gid(self.gid);
        b.set_nlink(self.nlink);
        b.set_rdev(self.rdev);
        self.atime.write(b.reborrow().init_atime());
        self.mtime.write(b.reborrow().init_mtime());
        self.ctime.write(b.init_ctime());
    }
    fn read(r: schema::stat::Reader<'_>) -> capnp::Result<Self> {
        let kind = inode_kind_from_wire(r.get_kind()?);
        // An MDS from before store format 9 sends milliseconds only.
        let time = |has: bool, t: capnp::Result<schema::timestamp::Reader<'_>>, ms: u64| {
            if has {
                Timestamp::read(t?)
            } else {
                Ok(Timestamp::from_ms(ms))
            }
        };
        let mtime = time(r.has_mtime(), r.get_mtime(), r.get_mtime_ms())?;
        Ok(Stat {
            ino: InodeId(r.get_ino()),
            kind,
            size: r.get_size(),
            mode: r.get_mode(),
            uid: r.get_uid(),
            gid: r.get_gid(),
            nlink: r.get_nlink(),
            rdev: r.get_rdev(),
            atime: if r.has_atime() {
                Timestamp::read(r.get_atime()?)?
            } else {
                mtime
            },
            mtime,
            ctime: time(r.has_ctime(), r.get_ctime(), r.get_ctime_ms())?,
            attrs: FileAttrs::read(r.get_attrs()?)?,
        })
    }
}

impl WireStruct for DirEntry {
    type Schema = schema::dir_entry::Owned;
    fn write(&self, mut b: schema::dir_entry::Builder<'_>) {
        b.set_name(self.name.as_str());
        self.stat.write(b.init_stat());
    }
    fn read(r: schema::dir_entry::Reader<'_>) -> capnp::Result<Self> {
        Ok(DirEntry {
            name: read_text(r.get_name())?,
            stat: Stat::read(r.get_stat()?)?,
        })
    }
}

impl WireStruct for OpTag {
    type Schema = schema::op_tag::Owned;
    fn write(&self, mut b: schema::op_tag::Builder<'_>) {
        b.set_session(self.session.0);
        b.set_seq(self.seq);
        b.set_done_below(self.done_below);
    }
    fn read(r: schema::op_tag::Reader<'_>) -> capnp::Result<Self> {
        Ok(OpTag {
            session: SessionId(r.get_session()),
            seq: r.get_seq(),
            done_below: r.get_done_below(),
        })
    }
}

impl WireStruct for OpenFlags {
    type Schema = schema::open_flags::Owned;
    fn write(&self, mut b: schema::open_flags::Builder<'_>) {
        b.set_create(self.create);
        b.set_exclusive(self.exclusive);
        b.set_truncate(self.truncate);
    }
    fn read(r: schema::open_flags::Reader<'_>) -> capnp::Result<Self> {
        Ok(OpenFlags {
            create: r.get_create(),
            exclusive: r.get_exclusive(),
            truncate: r.get_truncate(),
        })
    }
}

impl WireStruct for Lease {
    type Schema = schema::lease::Owned;
    fn write(&self, mut b: schema::lease::Builder<'_>) {
        b.set_id(self.id.0);
        b.set_ino(self.ino.0);
        b.set_mode(lease_mode_to_wire(self.mode));
        b.set_duration_ms(self.duration_ms);
    }
    fn read(r: schema::lease::Reader<'_>) -> capnp::Result<Self> {
        Ok(Lease {
            id: LeaseId(r.get_id()),
            ino: InodeId(r.get_ino()),
            mode: lease_mode_from_wire(r.get_mode()?),
            duration_ms: r.get_duration_ms(),
        })
    }
}

impl WireStruct for OpenReply {
    type Schema = schema::open_reply::Owned;
    fn write(&self, mut b: schema::open_reply::Builder<'_>) {
        self.lease.write(b.reborrow().init_lease());
        self.stat.write(b.reborrow().init_stat());
        b.set_replica_timeout_ms(self.io_timeouts.replica_ms);
        b.set_flush_timeout_ms(self.io_timeouts.flush_ms);
        if let Some(parent) = &self.parent {
            parent.write(b.reborrow().init_parent_stat());
        }
    }
    fn read(r: schema::open_reply::Reader<'_>) -> capnp::Result<Self> {
        Ok(OpenReply {
            lease: Lease::read(r.get_lease()?)?,
            stat: Stat::read(r.get_stat()?)?,
            io_timeouts: IoTimeouts {
                replica_ms: r.get_replica_timeout_ms(),
                flush_ms: r.get_flush_timeout_ms(),
            },
            parent: if r.has_parent_stat() {
                Some(Stat::read(r.get_parent_stat()?)?)
            } else {
                None
            },
        })
    }
}

impl WireStruct for Replica {
    type Schema = schema::replica::Owned;
    fn write(&self, mut b: schema::replica::Builder<'_>) {
        b.set_cs(self.cs.0);
        b.set_addr(self.addr.as_str());
    }
    fn read(r: schema::replica::Reader<'_>) -> capnp::Result<Self> {
        Ok(Replica {
            cs: CsId(r.get_cs()),
            addr: read_text(r.get_addr())?,
        })
    }
}

impl WireStruct for ChunkMap {
    type Schema = schema::chunk_map::Owned;
    fn write(&self, mut b: schema::chunk_map::Builder<'_>) {
        b.set_chunk(self.chunk.0);
        b.set_index(self.index);
        b.set_version(self.version.0);
        write_list(
            b.init_replicas(list_len(self.replicas.len())),
            &self.replicas,
        );
    }
    fn read(r: schema::chunk_map::Reader<'_>) -> capnp::Result<Self> {
        Ok(ChunkMap {
            chunk: ChunkId(r.get_chunk()),
            index: r.get_index(),
            version: MapVersion(r.get_version()),
            replicas: read_list(r.get_replicas()?)?,
        })
    }
}

impl WireStruct for SpaceInfo {
    type Schema = schema::space_info::Owned;
    fn write(&self, mut b: schema::space_info::Builder<'_>) {
        b.set_total_bytes(self.total_bytes);
        b.set_free_bytes(self.free_bytes);
    }
    fn read(r: schema::space_info::Reader<'_>) -> capnp::Result<Self> {
        Ok(SpaceInfo {
            total_bytes: r.get_total_bytes(),
            free_bytes: r.get_free_bytes(),
        })
    }
}

impl WireStruct for CsInfo {
    type Schema = schema::cs_info::Owned;
    fn write(&self, mut b: schema::cs_info::Builder<'_>) {
        b.set_id(self.id.0);
        b.set_addr(self.addr.as_str());
        b.set_status(cs_status_to_wire(self.status));
        self.space.write(b.reborrow().init_space());
        b.set_chunks(self.chunks);
        b.set_last_seen_ms_ago(self.last_seen_ms_ago);
        b.set_releasing(self.releasing);
        b.set_full(self.full);
        self.io.write(b.reborrow().init_io());
        b.set_location(self.location.as_str());
        b.set_host(self.host.as_str());
        b.set_tier(self.tier);
        b.set_capacity_bytes(self.capacity_bytes);
        b.set_held_bytes(self.held_bytes);
        b.set_journal_bytes(self.journal_bytes);
        b.set_journal_used_bytes(self.journal_used_bytes);
    }
    fn read(r: schema::cs_info::Reader<'_>) -> capnp::Result<Self> {
        Ok(CsInfo {
            id: CsId(r.get_id()),
            addr: read_text(r.get_addr())?,
            status: cs_status_from_wire(r.get_status()?),
            space: SpaceInfo::read(r.get_space()?)?,
            chunks: r.get_chunks(),
            last_seen_ms_ago: r.get_last_seen_ms_ago(),
            releasing: r.get_releasing(),
            full: r.get_full(),
            io: IoRates::read(r.get_io()?)?,
            location: read_text(r.get_location())?,
            host: read_text(r.get_host())?,
            tier: r.get_tier(),
            capacity_bytes: r.get_capacity_bytes(),
            held_bytes: r.get_held_bytes(),
            journal_bytes: r.get_journal_bytes(),
            journal_used_bytes: r.get_journal_used_bytes(),
        })
    }
}

impl WireStruct for IoRates {
    type Schema = schema::io_rates::Owned;
    fn write(&self, mut b: schema::io_rates::Builder<'_>) {
        b.set_read_ops_per_s(self.read_ops_per_s);
        b.set_write_ops_per_s(self.write_ops_per_s);
        b.set_read_bytes_per_s(self.read_bytes_per_s);
        b.set_write_bytes_per_s(self.write_bytes_per_s);
    }
    fn read(r: schema::io_rates::Reader<'_>) -> capnp::Result<Self> {
        Ok(IoRates {
            read_ops_per_s: r.get_read_ops_per_s(),
            write_ops_per_s: r.get_write_ops_per_s(),
            read_bytes_per_s: r.get_read_bytes_per_s(),
            write_bytes_per_s: r.get_write_bytes_per_s(),
        })
    }
}

impl WireStruct for ChunkCounts {
    type Schema = schema::chunk_counts::Owned;
    fn write(&self, mut b: schema::chunk_counts::Builder<'_>) {
        b.set_healthy(self.healthy);
        b.set_degraded(self.degraded);
        b.set_urgent(self.urgent);
        b.set_blocked(self.blocked);
        b.set_replicating(self.replicating);
    }
    fn read(r: schema::chunk_counts::Reader<'_>) -> capnp::Result<Self> {
        Ok(ChunkCounts {
            healthy: r.get_healthy(),
            degraded: r.get_degraded(),
            urgent: r.get_urgent(),
            blocked: r.get_blocked(),
            replicating: r.get_replicating(),
        })
    }
}

impl WireStruct for ReplicationStatus {
    type Schema = schema::replication_status::Owned;
    fn write(&self, mut b: schema::replication_status::Builder<'_>) {
        b.set_pending_chunks(self.pending_chunks);
        b.set_in_flight(self.in_flight);
        b.set_done_chunks(self.done_chunks);
        b.set_done_bytes(self.done_bytes);
        b.set_failed_chunks(self.failed_chunks);
        b.set_rate_bytes_per_s(self.rate_bytes_per_s);
        b.set_copied_bytes(self.copied_bytes);
        b.set_remaining_bytes(self.remaining_bytes);
        b.set_eta_s(self.eta_s.unwrap_or(u64::MAX));
    }
    fn read(r: schema::replication_status::Reader<'_>) -> capnp::Result<Self> {
        Ok(ReplicationStatus {
            pending_chunks: r.get_pending_chunks(),
            in_flight: r.get_in_flight(),
            done_chunks: r.get_done_chunks(),
            done_bytes: r.get_done_bytes(),
            failed_chunks: r.get_failed_chunks(),
            rate_bytes_per_s: r.get_rate_bytes_per_s(),
            copied_bytes: r.get_copied_bytes(),
            remaining_bytes: r.get_remaining_bytes(),
            eta_s: Some(r.get_eta_s()).filter(|&s| s != u64::MAX),
        })
    }
}

impl WireStruct for ConfigEntry {
    type Schema = schema::config_entry::Owned;
    fn write(&self, mut b: schema::config_entry::Builder<'_>) {
        b.set_key(self.key.as_str());
        b.set_value(self.value);
        b.set_default(self.default);
        b.set_unit(self.unit.as_str());
        b.set_description(self.description.as_str());
    }
    fn read(r: schema::config_entry::Reader<'_>) -> capnp::Result<Self> {
        Ok(ConfigEntry {
            key: read_text(r.get_key())?,
            value: r.get_value(),
            default: r.get_default(),
            unit: read_text(r.get_unit())?,
            description: read_text(r.get_description())?,
        })
    }
}

impl WireStruct for Event {
    type Schema = schema::event::Owned;
    fn write(&self, mut b: schema::event::Builder<'_>) {
        b.set_seq(self.seq);
        b.set_time_ms(self.time_ms);
        b.set_kind(event_kind_to_wire(self.kind));
        b.set_level(event_level_to_wire(self.level));
        b.set_message(self.message.as_str());
    }
    fn read(r: schema::event::Reader<'_>) -> capnp::Result<Self> {
        Ok(Event {
            seq: r.get_seq(),
            time_ms: r.get_time_ms(),
            kind: event_kind_from_wire(r.get_kind()?),
            level: event_level_from_wire(r.get_level()?),
            message: read_text(r.get_message())?,
        })
    }
}

/// A serial number on the wire: 16 bytes, big endian. `failed` for
/// another length.
fn read_serial(bytes: &[u8]) -> capnp::Result<CertSerial> {
    <[u8; 16]>::try_from(bytes)
        .map(|b| CertSerial(u128::from_be_bytes(b)))
        .map_err(|_| {
            capnp::Error::failed(format!(
                "a certificate serial number of {} bytes, not 16",
                bytes.len()
            ))
        })
}

impl WireStruct for CertRecord {
    type Schema = schema::cert_record::Owned;
    fn write(&self, mut b: schema::cert_record::Builder<'_>) {
        b.set_serial(&self.serial.0.to_be_bytes());
        b.set_role(self.role.as_str());
        b.set_name(self.name.as_str());
        b.set_issued_ms(self.issued_ms);
        b.set_not_after_ms(self.not_after_ms);
        b.set_revoked(self.revoked_ms.is_some());
        b.set_revoked_ms(self.revoked_ms.unwrap_or(0));
    }
    fn read(r: schema::cert_record::Reader<'_>) -> capnp::Result<Self> {
        Ok(CertRecord {
            serial: read_serial(r.get_serial()?)?,
            role: read_text(r.get_role())?,
            name: read_text(r.get_name())?,
            issued_ms: r.get_issued_ms(),
            not_after_ms: r.get_not_after_ms(),
            revoked_ms: r.get_revoked().then(|| r.get_revoked_ms()),
        })
    }
}

impl WireStruct for RevokedSerials {
    type Schema = schema::revoked_serials::Owned;
    fn write(&self, mut b: schema::revoked_serials::Builder<'_>) {
        b.set_total(self.total);
        let mut list = b.init_serials(list_len(self.serials.len()));
        for (i, s) in self.serials.iter().enumerate() {
            list.set(i as u32, &s.0.to_be_bytes());
        }
    }
    fn read(r: schema::revoked_serials::Reader<'_>) -> capnp::Result<Self> {
        let list = r.get_serials()?;
        if list.len() as usize > MAX_REVOKED_PER_REPLY {
            return Err(capnp::Error::failed(format!(
                "{} revoked serials in one reply, at most {MAX_REVOKED_PER_REPLY}",
                list.len()
            )));
        }
        Ok(RevokedSerials {
            total: r.get_total(),
            serials: list
                .iter()
                .map(|s| read_serial(s?))
                .collect::<capnp::Result<_>>()?,
        })
    }
}

impl WireStruct for MdsInfo {
    type Schema = schema::mds_info::Owned;
    fn write(&self, mut b: schema::mds_info::Builder<'_>) {
        b.set_id(self.id.0);
        b.set_addr(self.addr.as_str());
        b.set_role(self.role.as_str());
        b.set_term(self.term);
        b.set_commit_index(self.commit_index);
        b.set_applied_index(self.applied_index);
        b.set_lag(self.lag);
    }
    fn read(r: schema::mds_info::Reader<'_>) -> capnp::Result<Self> {
        Ok(MdsInfo {
            id: MdsId(r.get_id()),
            addr: read_text(r.get_addr())?,
            role: MdsRole::from_name(&read_text(r.get_role())?),
            term: r.get_term(),
            commit_index: r.get_commit_index(),
            applied_index: r.get_applied_index(),
            lag: r.get_lag(),
        })
    }
}

impl WireStruct for MdsMember {
    type Schema = schema::mds_member::Owned;
    fn write(&self, mut b: schema::mds_member::Builder<'_>) {
        b.set_id(self.id.0);
        b.set_addr(self.addr.as_str());
        b.set_voter(self.voter);
    }
    fn read(r: schema::mds_member::Reader<'_>) -> capnp::Result<Self> {
        Ok(MdsMember {
            id: MdsId(r.get_id()),
            addr: read_text(r.get_addr())?,
            voter: r.get_voter(),
        })
    }
}

impl WireStruct for MdsMembership {
    type Schema = schema::mds_membership::Owned;
    fn write(&self, mut b: schema::mds_membership::Builder<'_>) {
        write_list(
            b.reborrow().init_members(list_len(self.members.len())),
            &self.members,
        );
        b.set_has_leader(self.leader.is_some());
        b.set_leader(self.leader.map_or(0, |id| id.0));
        b.set_term(self.term);
        b.set_config_index(self.config_index);
    }
    fn read(r: schema::mds_membership::Reader<'_>) -> capnp::Result<Self> {
        Ok(MdsMembership {
            members: read_list(r.get_members()?)?,
            leader: r.get_has_leader().then(|| MdsId(r.get_leader())),
            term: r.get_term(),
            config_index: r.get_config_index(),
        })
    }
}

impl WireStruct for ClusterStatus {
    type Schema = schema::cluster_status::Owned;
    fn write(&self, mut b: schema::cluster_status::Builder<'_>) {
        b.set_cluster_name(self.cluster_name.as_str());
        b.set_health(self.health.as_str());
        write_list(b.reborrow().init_mds(list_len(self.mds.len())), &self.mds);
        write_list(b.reborrow().init_cs(list_len(self.cs.len())), &self.cs);
        b.set_files(self.files);
        b.set_dirs(self.dirs);
        b.set_chunks(self.chunks);
        let c = &self.chunk_counts;
        b.set_chunks_degraded(c.degraded + c.urgent + c.blocked + c.replicating);
        b.set_chunks_urgent(c.blocked);
        b.set_logical_bytes(self.logical_bytes);
        c.write(b.reborrow().init_chunk_counts());
        self.replication.write(b.reborrow().init_replication());
        write_list(
            b.reborrow().init_tiers(list_len(self.tiers.len())),
            &self.tiers,
        );
        self.rebalance.write(b.reborrow().init_rebalance());
        let mut warnings = b.init_warnings(list_len(self.warnings.len()));
        for (i, w) in self.warnings.iter().enumerate() {
            warnings.set(i as u32, w.as_str());
        }
    }
    fn read(r: schema::cluster_status::Reader<'_>) -> capnp::Result<Self> {
        Ok(ClusterStatus {
            cluster_name: read_text(r.get_cluster_name())?,
            health: ClusterHealth::from_name(&read_text(r.get_health())?),
            mds: read_list(r.get_mds()?)?,
            cs: read_list(r.get_cs()?)?,
            files: r.get_files(),
            dirs: r.get_dirs(),
            chunks: r.get_chunks(),
            chunk_counts: ChunkCounts::read(r.get_chunk_counts()?)?,
            replication: ReplicationStatus::read(r.get_replication()?)?,
            logical_bytes: r.get_logical_bytes(),
            tiers: read_list(r.get_tiers()?)?,
            rebalance: RebalanceStatus::read(r.get_rebalance()?)?,
            warnings: r
                .get_warnings()?
                .iter()
                .map(read_text)
                .collect::<capnp::Result<Vec<String>>>()?,
        })
    }
}

impl WireStruct for TierSpace {
    type Schema = schema::tier_space::Owned;
    fn write(&self, mut b: schema::tier_space::Builder<'_>) {
        b.set_tier(self.tier);
        b.set_servers(self.servers);
        b.set_capacity_bytes(self.capacity_bytes);
        b.set_held_bytes(self.held_bytes);
        b.set_free_bytes(self.free_bytes);
    }
    fn read(r: schema::tier_space::Reader<'_>) -> capnp::Result<Self> {
        Ok(TierSpace {
            tier: r.get_tier(),
            servers: r.get_servers(),
            capacity_bytes: r.get_capacity_bytes(),
            held_bytes: r.get_held_bytes(),
            free_bytes: r.get_free_bytes(),
        })
    }
}

impl WireStruct for RebalanceStatus {
    type Schema = schema::rebalance_status::Owned;
    fn write(&self, mut b: schema::rebalance_status::Builder<'_>) {
        b.set_state(match self.state {
            RebalanceState::Balanced => schema::RebalanceState::Balanced,
            RebalanceState::Moving => schema::RebalanceState::Moving,
            RebalanceState::Paused => schema::RebalanceState::Paused,
            RebalanceState::Off => schema::RebalanceState::Off,
        });
        b.set_in_flight(self.in_flight);
        b.set_done(self.done);
        b.set_pending(self.pending);
        b.set_spread_permille(self.spread_permille);
    }
    fn read(r: schema::rebalance_status::Reader<'_>) -> capnp::Result<Self> {
        Ok(RebalanceStatus {
            state: match r.get_state()? {
                schema::RebalanceState::Balanced => RebalanceState::Balanced,
                schema::RebalanceState::Moving => RebalanceState::Moving,
                schema::RebalanceState::Paused => RebalanceState::Paused,
                schema::RebalanceState::Off => RebalanceState::Off,
            },
            in_flight: r.get_in_flight(),
            done: r.get_done(),
            pending: r.get_pending(),
            spread_permille: r.get_spread_permille(),
        })
    }
}

impl WireStruct for ChunkReplicaInfo {
    type Schema = schema::chunk_replica_info::Owned;
    fn write(&self, mut b: schema::chunk_replica_info::Builder<'_>) {
        b.set_chunk(self.chunk.0);
        b.set_version(self.version.0);
    }
    fn read(r: schema::chunk_replica_info::Reader<'_>) -> capnp::Result<Self> {
        Ok(ChunkReplicaInfo {
            chunk: ChunkId(r.get_chunk()),
            version: MapVersion(r.get_version()),
        })
    }
}

impl WireStruct for CsRegistration {
    type Schema = schema::cs_registration::Owned;
    fn write(&self, mut b: schema::cs_registration::Builder<'_>) {
        b.set_id(self.id.0);
        b.set_addr(self.addr.as_str());
        self.space.write(b.reborrow().init_space());
        write_list(
            b.reborrow().init_chunks(list_len(self.chunks.len())),
            &self.chunks,
        );
        let mut unclean = b.init_unclean(list_len(self.unclean.len()));
        for (i, chunk) in self.unclean.iter().enumerate() {
            unclean.set(i as u32, chunk.0);
        }
    }
    fn read(r: schema::cs_registration::Reader<'_>) -> capnp::Result<Self> {
        Ok(CsRegistration {
            id: CsId(r.get_id()),
            addr: read_text(r.get_addr())?,
            space: SpaceInfo::read(r.get_space()?)?,
            chunks: read_list(r.get_chunks()?)?,
            unclean: r.get_unclean()?.iter().map(ChunkId).collect(),
        })
    }
}

impl WireStruct for RegisterReply {
    type Schema = schema::register_reply::Owned;
    fn write(&self, mut b: schema::register_reply::Builder<'_>) {
        let mut delete = b.reborrow().init_delete(list_len(self.delete.len()));
        for (i, chunk) in self.delete.iter().enumerate() {
            delete.set(i as u32, chunk.0);
        }
        let mut stale = b.reborrow().init_stale(list_len(self.stale.len()));
        for (i, chunk) in self.stale.iter().enumerate() {
            stale.set(i as u32, chunk.0);
        }
        b.set_heartbeat_interval_ms(self.heartbeat_interval_ms);
    }
    fn read(r: schema::register_reply::Reader<'_>) -> capnp::Result<Self> {
        Ok(RegisterReply {
            delete: r.get_delete()?.iter().map(ChunkId).collect(),
            stale: r.get_stale()?.iter().map(ChunkId).collect(),
            heartbeat_interval_ms: r.get_heartbeat_interval_ms(),
        })
    }
}

/// One page of a registration's reply: `more` pages follow
/// (`registerCsReply`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterReplyPage {
    /// This page's ids (and the heartbeat interval, on every page).
    pub reply: RegisterReply,
    /// Whether more pages follow.
    pub more: bool,
}

impl WireStruct for RegisterReplyPage {
    type Schema = schema::register_reply::Owned;
    fn write(&self, mut b: schema::register_reply::Builder<'_>) {
        self.reply.write(b.reborrow());
        b.set_more(self.more);
    }
    fn read(r: schema::register_reply::Reader<'_>) -> capnp::Result<Self> {
        Ok(RegisterReplyPage {
            reply: RegisterReply::read(r)?,
            more: r.get_more(),
        })
    }
}

impl WireStruct for DirPage {
    type Schema = schema::dir_page::Owned;
    fn write(&self, mut b: schema::dir_page::Builder<'_>) {
        write_list(
            b.reborrow().init_entries(list_len(self.entries.len())),
            &self.entries,
        );
        b.set_more(self.more);
    }
    fn read(r: schema::dir_page::Reader<'_>) -> capnp::Result<Self> {
        Ok(DirPage {
            entries: read_list(r.get_entries()?)?,
            more: r.get_more(),
        })
    }
}

impl WireStruct for ChunkMapPage {
    type Schema = schema::chunk_map_page::Owned;
    fn write(&self, mut b: schema::chunk_map_page::Builder<'_>) {
        write_list(
            b.reborrow().init_maps(list_len(self.maps.len())),
            &self.maps,
        );
        b.set_more(self.more);
    }
    fn read(r: schema::chunk_map_page::Reader<'_>) -> capnp::Result<Self> {
        Ok(ChunkMapPage {
            maps: read_list(r.get_maps()?)?,
            more: r.get_more(),
        })
    }
}

impl WireStruct for ReplicaPage {
    type Schema = schema::replica_page::Owned;
    fn write(&self, mut b: schema::replica_page::Builder<'_>) {
        write_list(
            b.reborrow().init_replicas(list_len(self.replicas.len())),
            &self.replicas,
        );
        b.set_more(self.more);
    }
    fn read(r: schema::replica_page::Reader<'_>) -> capnp::Result<Self> {
        Ok(ReplicaPage {
            replicas: read_list(r.get_replicas()?)?,
            more: r.get_more(),
        })
    }
}

impl WireStruct for CsStats {
    type Schema = schema::cs_stats::Owned;
    fn write(&self, mut b: schema::cs_stats::Builder<'_>) {
        b.set_read_ops(self.read_ops);
        b.set_write_ops(self.write_ops);
        b.set_read_bytes(self.read_bytes);
        b.set_write_bytes(self.write_bytes);
        b.set_journal_bytes(self.journal_bytes);
        b.set_journal_used_bytes(self.journal_used_bytes);
    }
    fn read(r: schema::cs_stats::Reader<'_>) -> capnp::Result<Self> {
        Ok(CsStats {
            read_ops: r.get_read_ops(),
            write_ops: r.get_write_ops(),
            read_bytes: r.get_read_bytes(),
            write_bytes: r.get_write_bytes(),
            journal_bytes: r.get_journal_bytes(),
            journal_used_bytes: r.get_journal_used_bytes(),
        })
    }
}

impl WireStruct for HeartbeatReply {
    type Schema = schema::heartbeat_reply::Owned;
    fn write(&self, mut b: schema::heartbeat_reply::Builder<'_>) {
        b.set_scrub_period_ms(self.scrub_period_ms);
        b.set_scrub_rate_bytes_per_s(self.scrub_rate_bytes_per_s);
        b.set_replica_timeout_ms(self.io_timeouts.replica_ms);
        b.set_flush_timeout_ms(self.io_timeouts.flush_ms);
        b.set_fence_ms(self.fence_ms);
        b.set_heartbeat_timeout_ms(self.heartbeat_timeout_ms);
    }
    fn read(r: schema::heartbeat_reply::Reader<'_>) -> capnp::Result<Self> {
        Ok(HeartbeatReply {
            scrub_period_ms: r.get_scrub_period_ms(),
            scrub_rate_bytes_per_s: r.get_scrub_rate_bytes_per_s(),
            io_timeouts: IoTimeouts {
                replica_ms: r.get_replica_timeout_ms(),
                flush_ms: r.get_flush_timeout_ms(),
            },
            fence_ms: r.get_fence_ms(),
            heartbeat_timeout_ms: r.get_heartbeat_timeout_ms(),
        })
    }
}

impl WireStruct for CopyStats {
    type Schema = schema::copy_stats::Owned;
    fn write(&self, mut b: schema::copy_stats::Builder<'_>) {
        b.set_bytes_copied(self.bytes_copied);
        b.set_bytes_compared(self.bytes_compared);
        b.set_reused_base(self.reused_base);
    }
    fn read(r: schema::copy_stats::Reader<'_>) -> capnp::Result<Self> {
        Ok(CopyStats {
            bytes_copied: r.get_bytes_copied(),
            bytes_compared: r.get_bytes_compared(),
            reused_base: r.get_reused_base(),
        })
    }
}

impl WireStruct for CopyProgress {
    type Schema = schema::copy_progress::Owned;
    fn write(&self, mut b: schema::copy_progress::Builder<'_>) {
        b.set_chunk(self.chunk.0);
        b.set_version(self.version.0);
        b.set_bytes_done(self.bytes_done);
        b.set_bytes_total(self.bytes_total);
    }
    fn read(r: schema::copy_progress::Reader<'_>) -> capnp::Result<Self> {
        Ok(CopyProgress {
            chunk: ChunkId(r.get_chunk()),
            version: MapVersion(r.get_version()),
            bytes_done: r.get_bytes_done(),
            bytes_total: r.get_bytes_total(),
        })
    }
}

// ---------------------------------------------------------------------------
// Method results: a union of the value and an Error.

/// A method's return value with its `XxxResult` union of the schema.
pub trait WireReply: Sized {
    /// The generated result union struct.
    type Schema: OwnedStruct;
    /// Writes a method's outcome, value or error.
    fn write_result(outcome: &Result<Self>, builder: <Self::Schema as OwnedStruct>::Builder<'_>);
    /// Decodes a method's outcome. The outer `capnp::Result` fails only when
    /// the message does not decode.
    fn read_result(
        reader: <Self::Schema as OwnedStruct>::Reader<'_>,
    ) -> capnp::Result<Result<Self>>;
}

/// `WireReply` for a result union whose `ok` is a struct mirrored by `$value`.
macro_rules! struct_reply {
    ($value:ty, $module:ident) => {
        impl WireReply for $value {
            type Schema = schema::$module::Owned;
            fn write_result(outcome: &Result<Self>, b: schema::$module::Builder<'_>) {
                match outcome {
                    Ok(value) => value.write(b.init_ok()),
                    Err(error) => write_error(b.init_err(), error),
                }
            }
            fn read_result(r: schema::$module::Reader<'_>) -> capnp::Result<Result<Self>> {
                Ok(match r.which()? {
                    schema::$module::Ok(value) => Ok(<$value>::read(value?)?),
                    schema::$module::Err(error) => Err(read_error(error?)?),
                })
            }
        }
    };
}

/// `WireReply` for a result union whose `ok` is a list of `$item`.
macro_rules! list_reply {
    ($item:ty, $module:ident) => {
        impl WireReply for Vec<$item> {
            type Schema = schema::$module::Owned;
            fn write_result(outcome: &Result<Self>, b: schema::$module::Builder<'_>) {
                match outcome {
                    Ok(items) => write_list(b.init_ok(list_len(items.len())), items),
                    Err(error) => write_error(b.init_err(), error),
                }
            }
            fn read_result(r: schema::$module::Reader<'_>) -> capnp::Result<Result<Self>> {
                Ok(match r.which()? {
                    schema::$module::Ok(items) => Ok(read_list(items?)?),
                    schema::$module::Err(error) => Err(read_error(error?)?),
                })
            }
        }
    };
}

struct_reply!(Stat, stat_result);
struct_reply!(OpenReply, open_result);
struct_reply!(ChunkMap, chunk_map_result);
struct_reply!(ClusterStatus, cluster_status_result);
struct_reply!(RegisterReply, register_result);
struct_reply!(HeartbeatReply, heartbeat_result);
struct_reply!(MdsMembership, mds_membership_result);
list_reply!(ConfigEntry, config_entries_result);
list_reply!(Event, events_result);
list_reply!(CertRecord, cert_records_result);
struct_reply!(RevokedSerials, revoked_serials_result);
struct_reply!(RegisterReplyPage, register_result);
struct_reply!(DirPage, dir_page_result);
struct_reply!(ChunkMapPage, chunk_map_page_result);
struct_reply!(ReplicaPage, replica_page_result);

/// The token under which an MDS keeps the parts of a chunk server's
/// registration (`registerCsPart`); 0 names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistrationToken(pub u64);

impl WireReply for RegistrationToken {
    type Schema = schema::token_result::Owned;
    fn write_result(outcome: &Result<Self>, mut b: schema::token_result::Builder<'_>) {
        match outcome {
            Ok(token) => b.set_ok(token.0),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(r: schema::token_result::Reader<'_>) -> capnp::Result<Result<Self>> {
        Ok(match r.which()? {
            schema::token_result::Ok(token) => Ok(RegistrationToken(token)),
            schema::token_result::Err(error) => Err(read_error(error?)?),
        })
    }
}

/// A text answer (`readlink`).
pub struct TextReply(pub String);

impl WireReply for TextReply {
    type Schema = schema::text_result::Owned;
    fn write_result(outcome: &Result<TextReply>, mut b: schema::text_result::Builder<'_>) {
        match outcome {
            Ok(t) => b.set_ok(t.0.as_str()),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(r: schema::text_result::Reader<'_>) -> capnp::Result<Result<TextReply>> {
        Ok(match r.which()? {
            schema::text_result::Ok(t) => Ok(TextReply(read_text(t)?)),
            schema::text_result::Err(error) => Err(read_error(error?)?),
        })
    }
}

/// The answer of `joinSecrets`.
pub struct JoinSecretsReply {
    /// The CA certificate (PEM).
    pub ca_cert: String,
    /// The CA's private key (PEM).
    pub ca_key: String,
    /// The cluster key (hex).
    pub cluster_key: String,
}

impl WireReply for JoinSecretsReply {
    type Schema = schema::join_secrets_result::Owned;
    fn write_result(
        outcome: &Result<JoinSecretsReply>,
        b: schema::join_secrets_result::Builder<'_>,
    ) {
        match outcome {
            Ok(s) => {
                let mut ok = b.init_ok();
                ok.set_ca_cert(s.ca_cert.as_str());
                ok.set_ca_key(s.ca_key.as_str());
                ok.set_cluster_key(s.cluster_key.as_str());
            }
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(
        r: schema::join_secrets_result::Reader<'_>,
    ) -> capnp::Result<Result<JoinSecretsReply>> {
        Ok(match r.which()? {
            schema::join_secrets_result::Ok(s) => {
                let s = s?;
                Ok(JoinSecretsReply {
                    ca_cert: read_text(s.get_ca_cert())?,
                    ca_key: read_text(s.get_ca_key())?,
                    cluster_key: read_text(s.get_cluster_key())?,
                })
            }
            schema::join_secrets_result::Err(error) => Err(read_error(error?)?),
        })
    }
}

/// A bytes answer (`getXattr`).
pub struct DataReply(pub Vec<u8>);

impl WireReply for DataReply {
    type Schema = schema::data_result::Owned;
    fn write_result(outcome: &Result<DataReply>, mut b: schema::data_result::Builder<'_>) {
        match outcome {
            Ok(d) => b.set_ok(&d.0),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(r: schema::data_result::Reader<'_>) -> capnp::Result<Result<DataReply>> {
        Ok(match r.which()? {
            schema::data_result::Ok(d) => Ok(DataReply(d?.to_vec())),
            schema::data_result::Err(error) => Err(read_error(error?)?),
        })
    }
}

/// A list of names (`listXattrs`).
pub struct NamesReply(pub Vec<String>);

impl WireReply for NamesReply {
    type Schema = schema::text_list_result::Owned;
    fn write_result(outcome: &Result<NamesReply>, b: schema::text_list_result::Builder<'_>) {
        match outcome {
            Ok(names) => {
                let mut list = b.init_ok(list_len(names.0.len()));
                for (i, n) in names.0.iter().enumerate() {
                    list.set(i as u32, n.as_str());
                }
            }
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(r: schema::text_list_result::Reader<'_>) -> capnp::Result<Result<NamesReply>> {
        Ok(match r.which()? {
            schema::text_list_result::Ok(list) => Ok(NamesReply(
                list?
                    .iter()
                    .map(read_text)
                    .collect::<capnp::Result<Vec<String>>>()?,
            )),
            schema::text_list_result::Err(error) => Err(read_error(error?)?),
        })
    }
}

impl WireReply for () {
    type Schema = schema::void_result::Owned;
    fn write_result(outcome: &Result<()>, mut b: schema::void_result::Builder<'_>) {
        match outcome {
            Ok(()) => b.set_ok(()),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(r: schema::void_result::Reader<'_>) -> capnp::Result<Result<()>> {
        Ok(match r.which()? {
            schema::void_result::Ok(()) => Ok(()),
            schema::void_result::Err(error) => Err(read_error(error?)?),
        })
    }
}

impl WireReply for CsId {
    type Schema = schema::cs_id_result::Owned;
    fn write_result(outcome: &Result<CsId>, mut b: schema::cs_id_result::Builder<'_>) {
        match outcome {
            Ok(id) => b.set_ok(id.0),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(r: schema::cs_id_result::Reader<'_>) -> capnp::Result<Result<CsId>> {
        Ok(match r.which()? {
            schema::cs_id_result::Ok(id) => Ok(CsId(id)),
            schema::cs_id_result::Err(error) => Err(read_error(error?)?),
        })
    }
}

/// The id of an MDS (`allocateMdsId`).
impl WireReply for MdsId {
    type Schema = schema::mds_id_result::Owned;
    fn write_result(outcome: &Result<MdsId>, mut b: schema::mds_id_result::Builder<'_>) {
        match outcome {
            Ok(id) => b.set_ok(id.0),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(r: schema::mds_id_result::Reader<'_>) -> capnp::Result<Result<MdsId>> {
        Ok(match r.which()? {
            schema::mds_id_result::Ok(id) => Ok(MdsId(id)),
            schema::mds_id_result::Err(error) => Err(read_error(error?)?),
        })
    }
}

/// An encoded Raft reply (`raftAppend`, `raftVote`, `raftSnapshot`).
impl WireReply for Vec<u8> {
    type Schema = schema::raft_result::Owned;
    fn write_result(outcome: &Result<Vec<u8>>, mut b: schema::raft_result::Builder<'_>) {
        match outcome {
            Ok(data) => b.set_ok(data),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(r: schema::raft_result::Reader<'_>) -> capnp::Result<Result<Vec<u8>>> {
        Ok(match r.which()? {
            schema::raft_result::Ok(data) => Ok(data?.to_vec()),
            schema::raft_result::Err(error) => Err(read_error(error?)?),
        })
    }
}

impl WireReply for Option<ChunkMap> {
    type Schema = schema::optional_chunk_map_result::Owned;
    fn write_result(
        outcome: &Result<Option<ChunkMap>>,
        mut b: schema::optional_chunk_map_result::Builder<'_>,
    ) {
        match outcome {
            Ok(Some(map)) => map.write(b.init_ok()),
            Ok(None) => b.set_absent(()),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(
        r: schema::optional_chunk_map_result::Reader<'_>,
    ) -> capnp::Result<Result<Option<ChunkMap>>> {
        use schema::optional_chunk_map_result::Which;
        Ok(match r.which()? {
            Which::Ok(map) => Ok(Some(ChunkMap::read(map?)?)),
            Which::Absent(()) => Ok(None),
            Which::Err(error) => Err(read_error(error?)?),
        })
    }
}

impl WireReply for Option<CopyProgress> {
    type Schema = schema::optional_copy_progress_result::Owned;
    fn write_result(
        outcome: &Result<Option<CopyProgress>>,
        mut b: schema::optional_copy_progress_result::Builder<'_>,
    ) {
        match outcome {
            Ok(Some(progress)) => progress.write(b.init_ok()),
            Ok(None) => b.set_absent(()),
            Err(error) => write_error(b.init_err(), error),
        }
    }
    fn read_result(
        r: schema::optional_copy_progress_result::Reader<'_>,
    ) -> capnp::Result<Result<Option<CopyProgress>>> {
        use schema::optional_copy_progress_result::Which;
        Ok(match r.which()? {
            Which::Ok(progress) => Ok(Some(CopyProgress::read(progress?)?)),
            Which::Absent(()) => Ok(None),
            Which::Err(error) => Err(read_error(error?)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `value` into a fresh message and decodes it again.
    fn round_trip<T: WireStruct>(value: &T) -> T
    where
        for<'a> <T::Schema as OwnedStruct>::Builder<'a>: capnp::traits::FromPointerBuilder<'a>,
        for<'a> <T::Schema as OwnedStruct>::Reader<'a>: capnp::traits::FromPointerReader<'a>,
    {
        let mut message = capnp::message::Builder::new_default();
        value.write(message.init_root());
        let reader = message.get_root_as_reader().expect("root");
        T::read(reader).expect("decode")
    }

    #[test]
    fn an_error_message_on_the_wire_is_bounded() {
        assert_eq!(bounded_message("short"), "short");
        let long = format!("bad path {:?}", "\u{1f}".repeat(4096));
        let cut = bounded_message(&long);
        assert!(
            cut.len() <= MAX_ERROR_MESSAGE && cut.ends_with("..."),
            "{}",
            cut.len()
        );
        let wide = "é".repeat(MAX_ERROR_MESSAGE);
        let cut = bounded_message(&wide);
        assert!(cut.len() <= MAX_ERROR_MESSAGE && cut.ends_with("é..."));
        let mut message = capnp::message::Builder::new_default();
        write_error(
            message.init_root(),
            &Error::new(ErrorKind::NotFound, long.clone()),
        );
        let read = read_error(message.get_root_as_reader().unwrap()).unwrap();
        assert_eq!(read.kind(), ErrorKind::NotFound);
        assert!(read.message().starts_with("bad path"));
        assert!(read.message().len() <= MAX_ERROR_MESSAGE);
    }

    #[test]
    fn attr_update_keeps_absent_fields_absent() {
        for update in [
            AttrUpdate::default(),
            AttrUpdate {
                replicas: Some(Replicas { norm: 2, min: 1 }),
                chunk_size: None,
                ..AttrUpdate::default()
            },
            AttrUpdate {
                replicas: None,
                chunk_size: Some(1 << 20),
                ..AttrUpdate::default()
            },
            AttrUpdate {
                tier: Some(2),
                failure_domain: Some(FailureDomain::Rack),
                ..AttrUpdate::default()
            },
        ] {
            assert_eq!(round_trip(&update), update);
        }
    }

    #[test]
    fn every_error_kind_survives_the_wire() {
        for kind in ErrorKind::ALL {
            let error = Error::new(kind, format!("chunk 0x1f2 on CS 3: {kind}"));
            let mut message = capnp::message::Builder::new_default();
            <()>::write_result(&Err(error.clone()), message.init_root());
            let reader = message
                .get_root_as_reader::<schema::void_result::Reader<'_>>()
                .expect("root");
            assert_eq!(<()>::read_result(reader).expect("decode"), Err(error));
        }
    }

    #[test]
    fn unknown_enumerant_is_a_decode_error() {
        let mut message = capnp::message::Builder::new_default();
        let stat = Stat {
            ino: InodeId(7),
            kind: InodeKind::File,
            size: 1,
            mode: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            rdev: 0,
            atime: Timestamp::from_ms(2),
            mtime: Timestamp::from_ms(2),
            ctime: Timestamp::from_ms(3),
            attrs: FileAttrs::default(),
        };
        stat.write(message.init_root::<schema::stat::Builder<'_>>());
        let segments = message.get_segments_for_output();
        let mut bytes = segments[0].to_vec();
        // Forge an enumerant a newer peer might send. The root pointer is
        // word 0 and the struct's data starts at word 1; the kind is the u16
        // at index 4 of the data section (see the generated get_kind).
        bytes[8 + 8] = 0xff;
        let mut words = capnp::Word::allocate_zeroed_vec(bytes.len() / 8);
        capnp::Word::words_to_bytes_mut(&mut words).copy_from_slice(&bytes);
        let segments = [capnp::Word::words_to_bytes(&words)];
        let reader = capnp::message::Reader::new(
            capnp::message::SegmentArray::new(&segments),
            reader_options(),
        );
        let root: schema::stat::Reader<'_> = reader.get_root().expect("root");
        assert!(Stat::read(root).is_err());
    }
}
