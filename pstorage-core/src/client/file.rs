//! An open file: reads, writes, flush and truncate over chunk replica chains.

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::map_cache::{Lookup, MapCache, Want};
use super::retry::Retry;
use super::unflushed::Unflushed;
use super::ClientShared;
use crate::error::{Error, ErrorKind, Result};
use crate::traits::{ReplicaError, WritePayload, WriteRequest};
use crate::types::{
    ChunkMap, CsId, FailureReason, HeldLock, IoTimeouts, Lease, LeaseMode, LockRequest, MapVersion,
    OpenReply, Replica, Stat, BLOCK_SIZE, MAX_FILE_SIZE,
};

/// An open file and its lease.
///
/// Cheap to clone (an `Arc` inside): clones share the lease, the chunk map
/// cache and the size, so one `File` can carry many concurrent I/Os (for
/// example queue depth 16 from an NBD server). Every method takes `&self`.
///
/// Consistency: a write returns once every replica of every chunk it touches
/// has applied it; a read started after that returns its data. `flush` makes
/// acknowledged writes durable and commits the size to the MDS.
///
/// The lease is renewed by a background task every third of its duration
/// while any clone is alive. If the MDS says the lease is gone, the file is
/// fenced: every later operation fails with `Stale`. Dropping the last clone
/// without [`File::close`] commits the size and releases the lease on a
/// best-effort basis in the background.
#[derive(Clone)]
pub struct File {
    inner: Arc<FileInner>,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("path", &self.inner.path)
            .field("lease", &self.inner.lease)
            .field("size", &self.inner.size())
            .finish_non_exhaustive()
    }
}

pub(crate) struct FileInner {
    client: Arc<ClientShared>,
    path: String,
    lease: Lease,
    /// The file's stat at open; the size in it is not maintained.
    opened_stat: Stat,
    /// An open that may create: the parent directory's stat after it
    /// (`OpenReply::parent`).
    parent_stat: Option<Stat>,
    chunk_size: u64,
    /// Data-path deadlines (from the MDS at open).
    io_timeouts: IoTimeouts,
    maps: MapCache,
    /// The client's view of the size: the size at open, grown by every
    /// acknowledged write, set by truncate.
    size: AtomicU64,
    /// Chunk indexes written since the last successful flush.
    dirty: Mutex<BTreeSet<u64>>,
    /// Acknowledged writes since the last flush that covered them, kept
    /// for replay ([`super::unflushed`]).
    unflushed: Mutex<Unflushed>,
    /// Writes hold it shared from their send to their record in
    /// `unflushed`; a replay holds it exclusively, so it never races a
    /// newer write to the same bytes.
    replay_lock: tokio::sync::RwLock<()>,
    /// Serializes flushes: a flush that finds the dirty set emptied by one
    /// still in progress must not return before that one made it durable.
    flush_lock: tokio::sync::Mutex<()>,
    /// A flush started by a write past half of
    /// [`ClientOptions::max_unflushed_bytes`](super::ClientOptions::max_unflushed_bytes)
    /// runs in the background.
    background_flush: AtomicBool,
    /// Whether anything changed since the size was last committed.
    modified: AtomicBool,
    /// The lease is gone: the MDS said so on renewal.
    fenced: AtomicBool,
    closed: AtomicBool,
    renewal: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The runtime the file was opened on, for clean-up on drop.
    runtime: tokio::runtime::Handle,
}

/// One part of an I/O that stays inside one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) index: u64,
    /// Offset inside the chunk.
    pub(crate) chunk_offset: u64,
    /// Offset inside the caller's buffer.
    pub(crate) buf_offset: usize,
    pub(crate) len: u64,
}

/// Reads of a chunk are spread over its replicas by offset, a stripe of
/// this many bytes to each replica in turn.
pub const READ_STRIPE: u64 = 1 << 20;

/// Which of a chunk's `count` replicas a read at `chunk_offset` asks first.
/// A block is always read from the same replica while the chunk's replicas
/// stay the same, so it is cached in one chunk server's page cache, not in
/// all of them (turning the replicas in order made every block cold on
/// each replica until each had read it: a third fewer random reads). The
/// stripes still spread a chunk's reads, and a sequential read's, over all
/// the replicas.
pub fn first_replica_to_read(index: u64, chunk_offset: u64, count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    (index.wrapping_add(chunk_offset / READ_STRIPE) % count as u64) as usize
}

/// Splits `[offset, offset+len)` at chunk boundaries and into pieces of at
/// most `max_piece` bytes.
pub(crate) fn split_io(offset: u64, len: u64, chunk_size: u64, max_piece: u64) -> Vec<Piece> {
    assert!(chunk_size > 0 && max_piece > 0);
    let mut pieces = Vec::with_capacity(1);
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let index = pos / chunk_size;
        let chunk_offset = pos % chunk_size;
        let n = (chunk_size - chunk_offset).min(end - pos).min(max_piece);
        pieces.push(Piece {
            index,
            chunk_offset,
            buf_offset: (pos - offset) as usize,
            len: n,
        });
        pos += n;
    }
    debug_assert_eq!(pieces.iter().map(|p| p.len).sum::<u64>(), len);
    pieces
}

/// Where the next attempt gets its chunk map.
enum MapSource {
    /// The cache, asking the MDS on a miss.
    Cache,
    /// The MDS, unless the cache already has a map newer than this version.
    NewerThan(u64),
    /// This map, just returned by the MDS.
    Given(Arc<ChunkMap>),
}

/// Replays of a chunk's unflushed writes one flush tries before it gives up
/// (each follows a change of the chunk's map version).
const MAX_REPLAYS: u32 = 8;

/// What to do after a replica failed.
enum Recovery {
    /// Retry at once with this map.
    Retry(Arc<ChunkMap>),
    /// Pause, refresh the map, retry; the error is what the MDS said.
    Wait(Option<Error>),
    /// The chunk no longer exists (truncated away).
    Gone,
    /// The chunk no longer exists but the write must allocate it again.
    Reallocate,
    Fatal(Error),
}

/// MDS errors worth waiting out (leader change, overload).
fn transient(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::TimedOut)
}

/// A replica error that no other replica or map can fix: our request is bad.
fn request_error(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidArgument | ErrorKind::FileTooLarge | ErrorKind::BadHandle
    )
}

/// Why a replica is reported, from the kind of its error.
pub(crate) fn failure_reason(kind: ErrorKind) -> FailureReason {
    match kind {
        ErrorKind::Unavailable => FailureReason::Unreachable,
        ErrorKind::TimedOut => FailureReason::TimedOut,
        ErrorKind::Corrupt => FailureReason::Corrupt,
        ErrorKind::NoSpace => FailureReason::NoSpace,
        ErrorKind::Stale => FailureReason::VersionMismatch,
        _ => FailureReason::IoError,
    }
}

fn replica_addr(map: &ChunkMap, cs: CsId) -> &str {
    map.replicas
        .iter()
        .find(|r| r.cs == cs)
        .map(|r| r.addr.as_str())
        .unwrap_or("address unknown")
}

/// Names the replica in an error from it.
fn replica_cause(map: &ChunkMap, cs: CsId, error: &Error) -> Error {
    Error::new(
        error.kind(),
        format!(
            "replica on CS {cs} ({}) failed: {error}",
            replica_addr(map, cs)
        ),
    )
}

/// A data-path request to `cs` that outlived its deadline.
fn timed_out(op: &str, map: &ChunkMap, cs: CsId, deadline: Duration, param: &str) -> Error {
    Error::new(
        ErrorKind::TimedOut,
        format!(
            "chunk server {cs} ({}) did not answer a {op} of chunk {:#x} (map version {}) within {} ms ({param})",
            replica_addr(map, cs),
            map.chunk,
            map.version,
            deadline.as_millis()
        ),
    )
}

/// Adds what the MDS said to a replica error.
fn with_mds_answer(cause: Error, mds: Option<Error>) -> Error {
    match mds {
        Some(m) => Error::new(m.kind(), format!("{cause}; the MDS says: {m}")),
        None => cause,
    }
}

impl File {
    /// Wraps a fresh lease and starts its renewal. Needs a tokio runtime.
    pub(crate) fn opened(client: Arc<ClientShared>, path: String, reply: OpenReply) -> File {
        let chunk_size = reply.stat.attrs.chunk_size;
        assert!(chunk_size > 0, "chunk size of {path} is 0");
        let inner = Arc::new(FileInner {
            client,
            path,
            size: AtomicU64::new(reply.stat.size),
            lease: reply.lease,
            opened_stat: reply.stat,
            parent_stat: reply.parent,
            chunk_size,
            io_timeouts: reply.io_timeouts.effective(),
            maps: MapCache::default(),
            dirty: Mutex::new(BTreeSet::new()),
            unflushed: Mutex::new(Unflushed::default()),
            replay_lock: tokio::sync::RwLock::new(()),
            flush_lock: tokio::sync::Mutex::new(()),
            background_flush: AtomicBool::new(false),
            modified: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            renewal: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
        });
        let task = spawn_renewal(Arc::downgrade(&inner), inner.lease.duration_ms);
        *lock(&inner.renewal) = Some(task);
        File { inner }
    }

    /// The path the file was opened by.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The lease this handle holds.
    pub fn lease(&self) -> &Lease {
        &self.inner.lease
    }

    /// The file's attributes as the MDS granted the lease (its size then,
    /// its permissions and times).
    pub fn opened_stat(&self) -> &Stat {
        &self.inner.opened_stat
    }

    /// An open that may create (`OpenFlags::create`): the attributes of the
    /// directory holding the file, as the MDS had them right after the
    /// open (a create changes its times). `None` for other opens, and from
    /// an MDS that does not send them.
    pub fn parent_stat(&self) -> Option<&Stat> {
        self.inner.parent_stat.as_ref()
    }

    /// The chunk size of this file in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.inner.chunk_size
    }

    /// The file size as this handle sees it: under a write lease it includes
    /// every acknowledged write, even before `flush` commits it to the MDS.
    pub fn size(&self) -> u64 {
        self.inner.size()
    }

    /// Whether the lease was lost (every operation now fails with `Stale`).
    pub fn is_fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::Acquire)
    }

    /// The file's attributes from the MDS, with this handle's size.
    /// Errors: `Stale` if fenced, `BadHandle` if closed, MDS errors.
    pub async fn stat(&self) -> Result<Stat> {
        self.inner.check_usable()?;
        let mut stat = self
            .inner
            .mds_call("stat", || self.inner.client.mds.stat(&self.inner.path))
            .await?;
        if stat.ino != self.inner.opened_stat.ino {
            return Err(Error::stale(format!(
                "{} was replaced or renamed since it was opened (inode {} then, {} now); reopen the file",
                self.inner.path, self.inner.opened_stat.ino, stat.ino
            )));
        }
        stat.size = self.size();
        Ok(stat)
    }

    /// Reads into `buf` at `offset`; returns the number of bytes read, which
    /// is less than `buf.len()` only at the end of the file. Unwritten
    /// ranges read as zeros. Errors: `FileTooLarge` if the range ends beyond
    /// the maximum file size, `Stale` if fenced, `BadHandle` if closed, and
    /// the last replica error after `io_timeout` of retries.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inner = &self.inner;
        inner.check_range("read", offset, buf.len() as u64)?;
        inner.check_usable()?;
        let size = inner.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64);
        let buf = &mut buf[..len as usize];
        let pieces = split_io(
            offset,
            len,
            inner.chunk_size,
            inner.client.options.piece_bytes(),
        );
        if let [piece] = pieces[..] {
            fill(buf, inner.read_chunk(piece).await?);
            return Ok(len as usize);
        }
        // Disjoint slices of `buf`, one per piece, so pieces run concurrently.
        let mut rest = buf;
        let mut reads = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let (head, tail) = rest.split_at_mut(piece.len as usize);
            rest = tail;
            reads.push(async move {
                let data = inner.read_chunk(piece).await?;
                fill(head, data);
                Ok::<(), Error>(())
            });
        }
        first_error(futures::future::join_all(reads).await)?;
        Ok(len as usize)
    }

    /// Reads up to `len` bytes at `offset` into a new buffer; shorter only at
    /// the end of the file. A read inside one chunk returns the replica's
    /// buffer without a copy. Errors as [`File::read_at`].
    pub async fn read_at_bytes(&self, offset: u64, len: u64) -> Result<Bytes> {
        let inner = &self.inner;
        inner.check_range("read", offset, len)?;
        inner.check_usable()?;
        let size = inner.size();
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let len = (size - offset).min(len);
        let pieces = split_io(
            offset,
            len,
            inner.chunk_size,
            inner.client.options.piece_bytes(),
        );
        if let [piece] = pieces[..] {
            return Ok(match inner.read_chunk(piece).await? {
                Some(data) => data,
                None => Bytes::from(vec![0u8; len as usize]),
            });
        }
        let mut buf = BytesMut::zeroed(len as usize);
        let n = self.read_at(offset, &mut buf).await?;
        buf.truncate(n);
        Ok(buf.freeze())
    }

    /// Writes `data` at `offset` (copied once). Returns when every replica
    /// of every chunk touched has applied it. Errors: `BadHandle` without a
    /// write lease or after close, `FileTooLarge`, `Stale` if fenced, and the
    /// last cause (naming the file, chunk and replica) if replicas stay
    /// below `replicas_min` or unreachable for `io_timeout`.
    pub async fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.inner
            .check_writable("write", offset, data.len() as u64)?;
        self.write_at_bytes(offset, Bytes::copy_from_slice(data))
            .await
    }

    /// Writes a buffer the caller already owns, without copying it. Same
    /// contract as [`File::write_at`].
    pub async fn write_at_bytes(&self, offset: u64, data: Bytes) -> Result<()> {
        let inner = &self.inner;
        let len = data.len() as u64;
        inner.check_writable("write", offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let pieces = split_io(
            offset,
            len,
            inner.chunk_size,
            inner.client.options.piece_bytes(),
        );
        let payload =
            |p: &Piece| WritePayload::Data(data.slice(p.buf_offset..p.buf_offset + p.len as usize));
        let written = {
            let _shared = inner.replay_lock.read().await;
            inner.write_pieces(&pieces, payload, true).await
        };
        inner.acknowledge(&pieces, offset + len, written)?;
        FileInner::bound_unflushed(inner).await
    }

    /// Zeroes `[offset, offset+len)` without sending zeros over the wire
    /// (NBD TRIM / WRITE_ZEROES); grows the file like a write. Chunks that do
    /// not exist stay unallocated. Errors as [`File::write_at`].
    pub async fn write_zeros(&self, offset: u64, len: u64) -> Result<()> {
        let inner = &self.inner;
        inner.check_writable("zero", offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let pieces = split_io(
            offset,
            len,
            inner.chunk_size,
            inner.client.options.piece_bytes(),
        );
        let written = {
            let _shared = inner.replay_lock.read().await;
            inner
                .write_pieces(&pieces, |p| WritePayload::Zeros(p.len), false)
                .await
        };
        inner.acknowledge(&pieces, offset + len, written)
    }

    /// Makes every write acknowledged so far durable on every replica, then
    /// commits the size to the MDS. A no-op under a read lease. Errors:
    /// `Stale` if fenced, `BadHandle` if closed, replica/MDS errors after
    /// `io_timeout` of retries (the chunks stay dirty for the next flush).
    pub async fn flush(&self) -> Result<()> {
        self.inner.check_usable()?;
        self.inner.flush().await
    }

    /// Sets the file size. Shrinking zeroes the cut-off tail of the boundary
    /// chunk (so a later grow reads zeros) and releases chunks wholly beyond
    /// the new size. Errors: `BadHandle` without a write lease,
    /// `FileTooLarge`, `Stale` if fenced, replica/MDS errors.
    pub async fn truncate(&self, size: u64) -> Result<()> {
        let inner = &self.inner;
        inner.check_writable("truncate", size, 0)?;
        let old = inner.size();
        let chunk_size = inner.chunk_size;
        if size < old && !size.is_multiple_of(chunk_size) {
            let index = size / chunk_size;
            let end = ((index + 1) * chunk_size).min(old);
            let piece = Piece {
                index,
                chunk_offset: size % chunk_size,
                buf_offset: 0,
                len: end - size,
            };
            let _shared = inner.replay_lock.read().await;
            let zeroed = inner
                .write_chunk(piece, WritePayload::Zeros(piece.len), false)
                .await;
            inner.mark_dirty(&[piece]);
            if let Some(version) = zeroed? {
                lock(&inner.unflushed).record(
                    index,
                    piece.chunk_offset,
                    WritePayload::Zeros(piece.len),
                    version,
                );
            }
        }
        inner
            .mds_call("truncate", || {
                inner.client.mds.truncate(inner.lease.id, size)
            })
            .await?;
        let first_gone = size.div_ceil(chunk_size);
        inner.maps.forget_from(first_gone);
        lock(&inner.dirty).retain(|index| *index < first_gone);
        lock(&inner.unflushed).forget_from(first_gone);
        inner.size.store(size, Ordering::Release);
        Ok(())
    }

    /// Turns the read lease into a write lease in place and returns the
    /// file for writing: the same lease (and the byte-range locks it holds),
    /// with no moment in which another client could take the file. This
    /// handle (and its clones) is retired: later operations on it fail with
    /// `BadHandle`; the new one renews and releases the lease. A file opened
    /// for writing answers a clone of itself. Errors: `Busy` while another
    /// lease is on the file, `Stale` if the lease is gone.
    pub async fn upgrade(&self) -> Result<File> {
        let inner = &self.inner;
        inner.check_usable()?;
        if inner.lease.mode == LeaseMode::Write {
            return Ok(self.clone());
        }
        let id = inner.lease.id;
        let reply = inner
            .mds_call("upgrade", || inner.client.mds.upgrade_lease(id))
            .await?;
        if reply.lease.id != id || reply.lease.mode != LeaseMode::Write {
            return Err(Error::protocol(format!(
                "the MDS answered the upgrade of lease {id} on {} with a {:?} lease {}",
                inner.path, reply.lease.mode, reply.lease.id
            )));
        }
        // No release: the lease lives on in the new handle.
        inner.closed.store(true, Ordering::Release);
        if let Some(task) = lock(&inner.renewal).take() {
            task.abort();
        }
        Ok(File::opened(
            inner.client.clone(),
            inner.path.clone(),
            reply,
        ))
    }

    /// Sets or removes (`req.kind` `None`) a byte-range lock held by
    /// (this file's lease, `req.owner`) across every client of the cluster,
    /// until it is unlocked or the lease ends (close, or expiry after a
    /// crash). Does not wait: `WouldBlock` while another holder's lock is in
    /// the way (wait by asking again). `NoLocks` past the bounds.
    pub async fn set_lock(&self, req: LockRequest) -> Result<()> {
        let inner = &self.inner;
        inner.check_usable()?;
        let id = inner.lease.id;
        inner
            .mds_call("lock", || inner.client.mds.set_lock(id, req))
            .await
    }

    /// The lock of another holder in the way of `req` (`F_GETLK`), or
    /// `None` if it could be set now.
    pub async fn test_lock(&self, req: LockRequest) -> Result<Option<HeldLock>> {
        let inner = &self.inner;
        inner.check_usable()?;
        let id = inner.lease.id;
        inner
            .mds_call("lock test", || inner.client.mds.test_lock(id, req))
            .await
    }

    /// Drops the handle the way a crashed process loses it: no flush, no
    /// size commit, no close, no more lease renewals. The lease stays at
    /// the MDS until it expires; writes never flushed may be lost. For
    /// fault-injection tests (the simulator crashes its clients with it);
    /// an application wants [`File::close`].
    pub fn abandon(self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(task) = lock(&self.inner.renewal).take() {
            task.abort();
        }
    }

    /// Flushes (under a write lease), stops lease renewal and releases the
    /// lease. Later operations fail with `BadHandle`; closing again is a
    /// no-op. The lease is released even if the flush fails, and the flush
    /// error is returned. `Stale` if the file was fenced (unflushed writes
    /// may be lost). The MDS answers the release once it is queued ahead of
    /// every later metadata command, before it commits (it goes with the
    /// next Raft entry): any open of the file after this returns, by any
    /// client, finds the lease gone, unless that MDS lost its leadership
    /// before the entry committed (the lease then expires, as a crashed
    /// client's does).
    pub async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let stop_renewal = || {
            if let Some(task) = lock(&inner.renewal).take() {
                task.abort();
            }
        };
        if inner.fenced.load(Ordering::Acquire) {
            stop_renewal();
            let _ = inner.client.mds.close(inner.lease.id).await;
            return Err(inner.fenced_error());
        }
        // The lease is renewed until the flush is done: a flush behind a
        // slow or frozen chunk server may outlast it, and an expired lease
        // fences the file (its unflushed writes would be lost).
        let flushed = inner.flush().await;
        stop_renewal();
        let released = inner
            .mds_call("close", || inner.client.mds.close(inner.lease.id))
            .await;
        if released.is_ok() {
            inner
                .client
                .released
                .note(inner.lease.id, inner.lease.duration_ms);
        }
        flushed.and(released)
    }
}

/// Fills `buf` from a replica's answer (`None`: an absent chunk, zeros).
fn fill(buf: &mut [u8], data: Option<Bytes>) {
    match data {
        Some(data) => {
            assert_eq!(data.len(), buf.len(), "read piece length mismatch");
            buf.copy_from_slice(&data);
        }
        None => buf.fill(0),
    }
}

fn first_error(results: Vec<Result<()>>) -> Result<()> {
    results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
}

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    // Every critical section is a single insert/remove/swap: a panic inside
    // one cannot leave the value inconsistent.
    m.lock()
}

fn spawn_renewal(file: Weak<FileInner>, duration_ms: u64) -> tokio::task::JoinHandle<()> {
    let period = Duration::from_millis((duration_ms / 3).max(10));
    let retry_period = (period / 4).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut delay = period;
        // Whether the last attempt was an immediate retry after a "not the
        // leader" answer (one per failure, so a confused group is not
        // asked in a loop).
        let mut retried_at_once = false;
        loop {
            tokio::time::sleep(delay).await;
            // Holding only a weak reference while asleep lets dropping the
            // last File end the task; `close` aborts it once its flush is
            // done.
            let Some(file) = file.upgrade() else { return };
            let started = tokio::time::Instant::now();
            match file.client.mds.renew(file.lease.id).await {
                Ok(()) => {
                    delay = period;
                    retried_at_once = false;
                }
                Err(e) if e.is_not_leader() && !retried_at_once => {
                    // A deposed leader that just learned who leads (a
                    // frozen one that thawed): asked again now, it
                    // forwards. Waiting `retry_period` instead risks the
                    // next MDS fault eating the rest of the lease (sim
                    // seeds 2341, 6550 of the 10,000-seed campaign).
                    tracing::info!(path = %file.path, lease = %file.lease.id, error = %e,
                        "lease renewal reached a deposed leader; asking again at once");
                    delay = Duration::ZERO;
                    retried_at_once = true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Stale | ErrorKind::BadHandle | ErrorKind::NotFound
                    ) =>
                {
                    tracing::warn!(path = %file.path, lease = %file.lease.id, error = %e,
                        "lease lost; the file is fenced");
                    file.fenced.store(true, Ordering::Release);
                    return;
                }
                Err(e) => {
                    tracing::warn!(path = %file.path, lease = %file.lease.id, error = %e,
                        "lease renewal failed; retrying");
                    // Attempts start at most every `retry_period`: one that
                    // failed slowly (an MDS that did not answer within the
                    // call deadline, now noted as failing, so the next
                    // attempt goes elsewhere) is followed at once. Two 8 s
                    // timeouts and two pauses used up a 30 s lease while
                    // another MDS was up (sim seed 295 of session 19).
                    delay = retry_period.saturating_sub(started.elapsed());
                    retried_at_once = false;
                }
            }
        }
    })
}

impl FileInner {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn fenced_error(&self) -> Error {
        Error::stale(format!(
            "lease on {} expired or was revoked; reopen the file",
            self.path
        ))
    }

    fn check_not_fenced(&self) -> Result<()> {
        if self.fenced.load(Ordering::Acquire) {
            return Err(self.fenced_error());
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::BadHandle,
                format!("{} was closed; open it again", self.path),
            ));
        }
        if self.fenced.load(Ordering::Acquire) {
            return Err(self.fenced_error());
        }
        Ok(())
    }

    fn check_range(&self, op: &str, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= MAX_FILE_SIZE => Ok(()),
            _ => Err(Error::new(
                ErrorKind::FileTooLarge,
                format!(
                    "{op} of {len} bytes at offset {offset} of {} ends beyond the maximum file size of {MAX_FILE_SIZE} bytes",
                    self.path
                ),
            )),
        }
    }

    fn check_writable(&self, op: &str, offset: u64, len: u64) -> Result<()> {
        self.check_range(op, offset, len)?;
        self.check_usable()?;
        if self.lease.mode != LeaseMode::Write {
            return Err(Error::new(
                ErrorKind::BadHandle,
                format!(
                    "cannot {op} {}: it is open with a read lease; open it with LeaseMode::Write",
                    self.path
                ),
            ));
        }
        Ok(())
    }

    /// Records the outcome of a write of `pieces` ending at `end`.
    ///
    /// Chunks are marked dirty only after their write finished: a flush
    /// running concurrently takes the dirty set at its start, and must not
    /// consume the mark of a write it does not cover. Failed writes mark
    /// their chunks too (some pieces may have landed).
    fn acknowledge(&self, pieces: &[Piece], end: u64, written: Result<()>) -> Result<()> {
        self.mark_dirty(pieces);
        written?;
        self.size.fetch_max(end, Ordering::AcqRel);
        self.modified.store(true, Ordering::Release);
        Ok(())
    }

    fn mark_dirty(&self, pieces: &[Piece]) {
        let mut dirty = lock(&self.dirty);
        for p in pieces {
            dirty.insert(p.index);
        }
    }

    /// Calls the MDS, waiting out transient errors up to `io_timeout`.
    async fn mds_call<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut retry = Retry::new(&self.client.options);
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) => {
                    if !retry.wait().await {
                        return Err(e.context(format!(
                            "{what} of {}: the MDS did not answer within {:.1} s",
                            self.path,
                            retry.elapsed().as_secs_f64()
                        )));
                    }
                }
                Err(e) => return Err(e.context(format!("{what} of {}", self.path))),
            }
        }
    }

    /// The map of chunk `index` as `want` asks, from the cache or the MDS.
    /// `Ok(None)`: the chunk does not exist.
    async fn chunk_map(&self, index: u64, want: Want) -> Result<Option<Arc<ChunkMap>>> {
        let load = match self.maps.lookup(index, want) {
            Lookup::Hit(found) => return Ok(found),
            Lookup::Miss(load) => load,
        };
        let _loading = load.lock().await;
        // Whoever held the lock before us may have fetched what we need.
        if let Lookup::Hit(found) = self.maps.lookup(index, want) {
            return Ok(found);
        }
        let allocate = want == Want::Allocated;
        match self
            .client
            .mds
            .chunk_map(self.lease.id, index, allocate)
            .await?
        {
            Some(map) => {
                if map.index != index {
                    return Err(Error::protocol(format!(
                        "the MDS answered chunk {index} of {} with the map of chunk {}",
                        self.path, map.index
                    )));
                }
                Ok(Some(self.maps.install(map)))
            }
            None if allocate => Err(Error::protocol(format!(
                "the MDS did not allocate chunk {index} of {} on a write",
                self.path
            ))),
            None => {
                self.maps.install_absent(index);
                Ok(None)
            }
        }
    }

    async fn resolve(
        &self,
        index: u64,
        source: MapSource,
        allocate: bool,
    ) -> Result<Option<Arc<ChunkMap>>> {
        match source {
            MapSource::Given(map) => Ok(Some(map)),
            MapSource::Cache if allocate => self.chunk_map(index, Want::Allocated).await,
            MapSource::Cache => self.chunk_map(index, Want::Read).await,
            MapSource::NewerThan(v) => self.chunk_map(index, Want::NewerThan(MapVersion(v))).await,
        }
    }

    /// The error after giving up on chunk `index`.
    fn gave_up(
        &self,
        op: &str,
        index: u64,
        map: Option<&ChunkMap>,
        retry: &Retry,
        cause: Error,
    ) -> Error {
        let chunk = map
            .map(|m| format!(" (id {:#x}, map version {})", m.chunk, m.version))
            .unwrap_or_default();
        Error::new(
            cause.kind(),
            format!(
                "{op} of {} chunk {index}{chunk} failed after {:.1} s of retries: {cause}",
                self.path,
                retry.elapsed().as_secs_f64()
            ),
        )
    }

    fn fatal(&self, op: &str, index: u64, map: Option<&ChunkMap>, e: Error) -> Error {
        let chunk = map
            .map(|m| format!(" (id {:#x})", m.chunk))
            .unwrap_or_default();
        e.context(format!("{op} of {} chunk {index}{chunk}", self.path))
    }

    /// Decides how to go on after replica `failed` of `map` failed with `kind`.
    async fn recover(
        &self,
        map: &ChunkMap,
        failed: CsId,
        kind: ErrorKind,
        allocate: bool,
    ) -> Recovery {
        if kind == ErrorKind::Stale {
            // Either our map is old (the MDS moved on) or the replica missed
            // a version bump. A newer map settles it; the same map means the
            // replica is behind and must be reported.
            match self
                .chunk_map(map.index, Want::NewerThan(map.version))
                .await
            {
                Ok(Some(newer)) if newer.version > map.version || newer.chunk != map.chunk => {
                    return Recovery::Retry(newer)
                }
                Ok(Some(_)) => {}
                Ok(None) if allocate => return Recovery::Reallocate,
                Ok(None) => return Recovery::Gone,
                Err(e) if transient(&e) => return Recovery::Wait(Some(e)),
                Err(e) => return Recovery::Fatal(e),
            }
        }
        if let Some(cached) = self.maps.cached(map.index) {
            // A concurrent I/O already reported a failure and got a new map.
            if cached.chunk == map.chunk && cached.version > map.version {
                return Recovery::Retry(cached);
            }
        }
        let reason = failure_reason(kind);
        match self
            .client
            .mds
            .report_failure(self.lease.id, map.chunk, map.version, failed, reason)
            .await
        {
            Ok(new_map) if new_map.index != map.index || new_map.chunk != map.chunk => {
                Recovery::Fatal(Error::protocol(format!(
                    "the MDS answered a failure report on chunk {:#x} with the map of chunk {:#x}",
                    map.chunk, new_map.chunk
                )))
            }
            Ok(new_map) => {
                let new_map = self.maps.install(new_map);
                if new_map.version > map.version {
                    Recovery::Retry(new_map)
                } else {
                    // The MDS kept the chain as it was: pause before
                    // hammering the same replica again.
                    Recovery::Wait(None)
                }
            }
            Err(e) if transient(&e) => Recovery::Wait(Some(e)),
            Err(e) => Recovery::Fatal(e),
        }
    }

    /// Writes pieces concurrently (in place when there is one).
    async fn write_pieces(
        &self,
        pieces: &[Piece],
        payload: impl Fn(&Piece) -> WritePayload,
        allocate: bool,
    ) -> Result<()> {
        let write = |p: Piece| {
            let payload = payload(&p);
            async move {
                let version = self.write_chunk(p, payload.clone(), allocate).await?;
                if let Some(version) = version {
                    lock(&self.unflushed).record(p.index, p.chunk_offset, payload, version);
                }
                Ok(())
            }
        };
        if let [piece] = pieces {
            return write(*piece).await;
        }
        let writes = pieces.iter().map(|p| write(*p));
        // Every piece runs to its end even if one fails, so no chain write
        // is abandoned half-way through a failure report.
        first_error(futures::future::join_all(writes).await)
    }

    /// Writes one piece through the chunk's replica chain, with failover.
    /// Without `allocate` an absent chunk is left alone (zeroing). Returns
    /// the map version every replica applied it at, `None` if the chunk does
    /// not exist (nothing to zero) or went away (truncated).
    async fn write_chunk(
        &self,
        piece: Piece,
        payload: WritePayload,
        allocate: bool,
    ) -> Result<Option<MapVersion>> {
        self.write_chunk_as(piece, payload, allocate, false).await
    }

    /// [`write_chunk`](Self::write_chunk); a `replay` runs inside the flush
    /// of a file being closed, so it checks only that the lease holds.
    async fn write_chunk_as(
        &self,
        piece: Piece,
        payload: WritePayload,
        allocate: bool,
        replay: bool,
    ) -> Result<Option<MapVersion>> {
        let index = piece.index;
        let op = if matches!(payload, WritePayload::Zeros(_)) {
            "zeroing"
        } else {
            "write"
        };
        // Computed once: every attempt, to whichever chain, carries the
        // CRCs of the bytes the application gave.
        let crcs = payload.crcs(piece.chunk_offset);
        let mut retry = Retry::new(&self.client.options);
        let mut source = MapSource::Cache;
        loop {
            if replay {
                self.check_not_fenced()?;
            } else {
                self.check_usable()?;
            }
            let map = match self.resolve(index, source, allocate).await {
                Ok(Some(map)) => map,
                // Only a refresh (which never allocates) can say that: the
                // chunk was truncated away under us; allocate it again.
                Ok(None) if allocate => {
                    source = MapSource::Cache;
                    continue;
                }
                Ok(None) => return Ok(None),
                Err(e) if transient(&e) => {
                    if !retry.wait().await {
                        return Err(self.gave_up(op, index, None, &retry, e));
                    }
                    source = MapSource::Cache;
                    continue;
                }
                Err(e) => return Err(self.fatal(op, index, None, e)),
            };
            let Some(head) = map.replicas.first() else {
                if !retry.wait().await {
                    let cause = Error::unavailable("the MDS lists no replica for it");
                    return Err(self.gave_up(op, index, Some(&map), &retry, cause));
                }
                source = MapSource::NewerThan(map.version.0);
                continue;
            };
            let request = WriteRequest {
                chunk: map.chunk,
                version: map.version,
                offset: piece.chunk_offset,
                payload: payload.clone(),
                chain: map.replicas[1..].to_vec(),
                crcs: crcs.clone(),
            };
            // n replicas, n shares of the deadline: a stuck successor is
            // reported by its predecessor before this fires, so a timeout
            // here blames the head.
            let budget = self.io_timeouts.chain(map.replicas.len());
            let attempt = async {
                match self.client.chunks.chunk_service(&head.addr).await {
                    Ok(service) => service.write(request).await,
                    // Not reaching the head is the head failing.
                    Err(e) => Err(ReplicaError::local(e)),
                }
            };
            let result = match tokio::time::timeout(budget, attempt).await {
                Ok(result) => result,
                Err(_) => Err(ReplicaError::local(timed_out(
                    op,
                    &map,
                    head.cs,
                    budget,
                    "io.replica_tout x replicas",
                ))),
            };
            let error = match result {
                Ok(()) => return Ok(Some(map.version)),
                Err(e) => e,
            };
            let failed = error.failed_replica(head.cs);
            let kind = error.error.kind();
            let cause = replica_cause(&map, failed, &error.error);
            if request_error(kind) {
                return Err(self.fatal(op, index, Some(&map), cause));
            }
            if kind == ErrorKind::Checksum {
                // The bytes changed between two nodes (the wire, a
                // buffer) and the receiver refused them: nothing is wrong
                // with a replica. Send the same write again.
                tracing::warn!(path = %self.path, index, chunk = %map.chunk, cs = %failed,
                    error = %error.error, "a write failed its end-to-end check; sending it again");
                if !retry.wait().await {
                    return Err(self.gave_up(op, index, Some(&map), &retry, cause));
                }
                source = MapSource::Given(map);
                continue;
            }
            tracing::debug!(path = %self.path, index, chunk = %map.chunk, cs = %failed,
                error = %error.error, "chain write failed");
            source = match self.recover(&map, failed, kind, allocate).await {
                Recovery::Retry(next) => MapSource::Given(next),
                Recovery::Gone => return Ok(None),
                Recovery::Reallocate => MapSource::Cache,
                Recovery::Wait(mds) => {
                    if !retry.wait().await {
                        let cause = with_mds_answer(cause, mds);
                        return Err(self.gave_up(op, index, Some(&map), &retry, cause));
                    }
                    MapSource::NewerThan(map.version.0)
                }
                Recovery::Fatal(e) => return Err(self.fatal(op, index, Some(&map), e)),
            };
        }
    }

    /// Reports a replica that failed a read without making the read wait.
    fn report_in_background(self: &Arc<Self>, map: &ChunkMap, cs: CsId, reason: FailureReason) {
        if let Some(cached) = self.maps.cached(map.index) {
            if cached.chunk == map.chunk && cached.version > map.version {
                return;
            }
        }
        let file = self.clone();
        let (chunk, version) = (map.chunk, map.version);
        self.runtime.spawn(async move {
            match file
                .client
                .mds
                .report_failure(file.lease.id, chunk, version, cs, reason)
                .await
            {
                Ok(map) if map.chunk == chunk => {
                    file.maps.install(map);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(path = %file.path, %chunk, %cs, error = %e,
                    "could not report a bad replica to the MDS"),
            }
        });
    }

    /// Reads one piece from some current replica, with failover.
    /// `Ok(None)`: the chunk does not exist (zeros).
    async fn read_chunk(self: &Arc<Self>, piece: Piece) -> Result<Option<Bytes>> {
        let index = piece.index;
        let mut retry = Retry::new(&self.client.options);
        let mut source = MapSource::Cache;
        let mut replays = 0;
        loop {
            self.check_usable()?;
            let map = match self.resolve(index, source, false).await {
                Ok(Some(map)) => map,
                Ok(None) => return Ok(None),
                Err(e) if transient(&e) => {
                    if !retry.wait().await {
                        return Err(self.gave_up("read", index, None, &retry, e));
                    }
                    source = MapSource::Cache;
                    continue;
                }
                Err(e) => return Err(self.fatal("read", index, None, e)),
            };
            // The writer reads its writes: acknowledged writes that the
            // chunk may have lost (its version moved on since) are written
            // again before anything is read at the new version. Otherwise
            // a read returns the older content, and the next flush's replay
            // brings the write back after that read (pstorage-sim --seed 657).
            if self
                .replay_if_moved("read", &map, index, &mut replays, &retry)
                .await?
            {
                source = MapSource::Cache;
                continue;
            }
            let count = map.replicas.len();
            let start = first_replica_to_read(index, piece.chunk_offset, count);
            let mut last_cause = Error::unavailable("the MDS lists no replica for it");
            let mut newer = None;
            // Replicas that answered that the data failed its check there.
            let mut corrupt = 0;
            for i in 0..count {
                let replica = &map.replicas[(start + i) % count];
                let result = self
                    .read_replica(&map, replica, piece.chunk_offset, piece.len)
                    .await;
                let error = match result {
                    Ok(data) if data.len() as u64 == piece.len => return Ok(Some(data)),
                    Ok(data) => Error::protocol(format!(
                        "answered a read of {} bytes with {} bytes",
                        piece.len,
                        data.len()
                    )),
                    Err(e) => e,
                };
                let cause = replica_cause(&map, replica.cs, &error);
                if request_error(error.kind()) {
                    return Err(self.fatal("read", index, Some(&map), cause));
                }
                if error.kind() == ErrorKind::Stale {
                    match self.chunk_map(index, Want::NewerThan(map.version)).await {
                        Ok(Some(m)) if m.version > map.version || m.chunk != map.chunk => {
                            newer = Some(m);
                            break;
                        }
                        Ok(None) => return Ok(None),
                        // Same version: this replica is behind; report it.
                        Ok(Some(_)) => {}
                        Err(e) => {
                            last_cause = with_mds_answer(cause, Some(e));
                            continue;
                        }
                    }
                }
                tracing::debug!(path = %self.path, index, chunk = %map.chunk, cs = %replica.cs,
                    error = %error, "replica read failed; trying the next");
                if error.kind() == ErrorKind::Corrupt {
                    // The chunk server found it and repairs its blocks from
                    // another replica itself (or takes the replica out of
                    // service): a report from here would drop a replica
                    // that is good but for a few blocks.
                    corrupt += 1;
                } else if error.kind() == ErrorKind::Checksum {
                    // Changed between that chunk server's check and here
                    // (the wire, a buffer): the replica is not to blame.
                    tracing::warn!(path = %self.path, index, chunk = %map.chunk,
                        cs = %replica.cs, error = %error,
                        "a read failed its end-to-end check; reading another replica");
                } else {
                    self.report_in_background(&map, replica.cs, failure_reason(error.kind()));
                }
                last_cause = cause;
            }
            if let Some(m) = newer {
                source = MapSource::Given(m);
                continue;
            }
            if corrupt > 0 && corrupt == count {
                // Every replica has a bad block in the range, but maybe not
                // the same one (a bit flip on each of two replicas): each
                // block is read from a replica that has it good (sim seed
                // 3005 of session 19).
                let spans_blocks = piece.chunk_offset / BLOCK_SIZE
                    != (piece.chunk_offset + piece.len - 1) / BLOCK_SIZE;
                if spans_blocks {
                    match self.read_block_by_block(&map, &piece, start).await {
                        Ok(data) => return Ok(Some(data)),
                        Err(e) if e.kind() == ErrorKind::Corrupt => {
                            return Err(self.fatal("read", index, Some(&map), e))
                        }
                        Err(e) if request_error(e.kind()) => {
                            return Err(self.fatal("read", index, Some(&map), e))
                        }
                        Err(e) => last_cause = e,
                    }
                } else {
                    // No replica has a good copy: waiting cannot help, and
                    // the data is never replaced by zeros.
                    return Err(self.fatal("read", index, Some(&map), last_cause));
                }
            }
            if !retry.wait().await {
                return Err(self.gave_up("read", index, Some(&map), &retry, last_cause));
            }
            source = MapSource::NewerThan(map.version.0);
        }
    }

    /// Reads `[offset, offset + len)` of `map`'s chunk from `replica`,
    /// checked end to end, within `io.replica_tout`.
    async fn read_replica(
        &self,
        map: &ChunkMap,
        replica: &Replica,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let deadline = self.io_timeouts.chain(1);
        let attempt = async {
            let service = self.client.chunks.chunk_service(&replica.addr).await?;
            service
                .read_verified(map.chunk, map.version, offset, len)
                .await
        };
        let result = tokio::time::timeout(deadline, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(timed_out(
                    "read",
                    map,
                    replica.cs,
                    deadline,
                    "io.replica_tout",
                ))
            });
        if result.is_ok() {
            tracing::trace!(chunk = %map.chunk, version = %map.version, cs = %replica.cs, offset, len, "read from a replica");
        }
        result
    }

    /// Reads `piece` of `map` one 4 KiB block at a time, each from the first
    /// replica (from `start` on) that has it good: after every replica
    /// answered `Corrupt` for the whole piece. `Corrupt` when no replica has
    /// some block good; another error (a replica down meanwhile) for the
    /// caller to retry.
    async fn read_block_by_block(
        &self,
        map: &ChunkMap,
        piece: &Piece,
        start: usize,
    ) -> Result<Bytes> {
        let count = map.replicas.len();
        let end = piece.chunk_offset + piece.len;
        let mut out = BytesMut::with_capacity(piece.len as usize);
        let mut at = piece.chunk_offset;
        while at < end {
            let len = ((at / BLOCK_SIZE + 1) * BLOCK_SIZE).min(end) - at;
            // Why the replicas failed: `Corrupt` ones, and others (down,
            // timed out: worth a retry of the whole read).
            let (mut corrupt, mut other) = (None, None);
            let mut done = false;
            for i in 0..count {
                let replica = &map.replicas[(start + i) % count];
                let result = self.read_replica(map, replica, at, len).await;
                match result {
                    Ok(data) if data.len() as u64 == len => {
                        out.extend_from_slice(&data);
                        done = true;
                        break;
                    }
                    Ok(data) => {
                        let e = Error::protocol(format!(
                            "answered a read of {len} bytes with {} bytes",
                            data.len()
                        ));
                        other = Some(replica_cause(map, replica.cs, &e));
                    }
                    Err(e) if e.kind() == ErrorKind::Corrupt => {
                        corrupt = Some(replica_cause(map, replica.cs, &e));
                    }
                    Err(e) => other = Some(replica_cause(map, replica.cs, &e)),
                }
            }
            if !done {
                return Err(other
                    .or(corrupt)
                    .unwrap_or_else(|| Error::unavailable("the MDS lists no replica for it")));
            }
            at += len;
        }
        Ok(out.freeze())
    }

    /// Before `op` uses `map` (chunk `index`): writes the unflushed records
    /// of the chunk again when they were acknowledged at another version
    /// (see [`replay`](Self::replay)); returns whether it did, and then the
    /// caller resolves the map again. `replays` counts them for one
    /// operation, which gives up after [`MAX_REPLAYS`].
    async fn replay_if_moved(
        &self,
        op: &str,
        map: &ChunkMap,
        index: u64,
        replays: &mut u32,
        retry: &Retry,
    ) -> Result<bool> {
        if !lock(&self.unflushed).needs_replay(index, map.version) {
            return Ok(false);
        }
        *replays += 1;
        if *replays > MAX_REPLAYS {
            let cause = Error::unavailable(format!(
                "its map version kept changing while {MAX_REPLAYS} replays of the unflushed \
                 writes ran"
            ));
            return Err(self.gave_up(op, index, Some(map), retry, cause));
        }
        self.replay(index).await?;
        Ok(true)
    }

    /// Writes the unflushed records of chunk `index` again, oldest first,
    /// at the chunk's current version, with no other write in flight.
    async fn replay(&self, index: u64) -> Result<()> {
        let _exclusive = self.replay_lock.write().await;
        let records = lock(&self.unflushed).records(index);
        tracing::info!(path = %self.path, index, records = records.len(),
            "the chunk's map version changed since unflushed writes were acknowledged: \
             writing them again before the chunk is flushed or read");
        for (position, record) in records.into_iter().enumerate() {
            let piece = Piece {
                index,
                chunk_offset: record.offset,
                buf_offset: 0,
                len: record.payload.len(),
            };
            // Zeros too allocate: the chunk existed when they were
            // acknowledged (a lost chunk reads as zeros anyway).
            match self
                .write_chunk_as(piece, record.payload, true, true)
                .await?
            {
                Some(version) => lock(&self.unflushed).replayed(index, position, version),
                // Truncated away meanwhile: nothing to make durable.
                None => {
                    lock(&self.unflushed).forget(index);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Bounds the unflushed data kept for replay: past half of its cap a
    /// flush starts in the background (writes go on meanwhile); past the
    /// cap the writer waits for a flush. Every write over the cap waiting
    /// at once is served by one flush, not one each.
    async fn bound_unflushed(inner: &Arc<FileInner>) -> Result<()> {
        let cap = inner.client.options.max_unflushed_bytes;
        let bytes = lock(&inner.unflushed).bytes();
        if bytes > cap {
            let serialized = inner.flush_lock.lock().await;
            // A flush that ran meanwhile may have made room.
            if lock(&inner.unflushed).bytes() > cap {
                return inner.flush_serialized(serialized).await;
            }
        } else if bytes > cap / 2 && !inner.background_flush.swap(true, Ordering::AcqRel) {
            let file = inner.clone();
            inner.runtime.spawn(async move {
                // Not after a close or a fence: nothing is left to flush.
                if file.check_usable().is_ok() {
                    if let Err(e) = file.flush().await {
                        // The chunks stay dirty: the next flush (a writer's
                        // at the cap, the application's) retries and
                        // reports.
                        tracing::warn!(path = %file.path, error = %e,
                            "a background flush of unflushed writes failed");
                    }
                }
                file.background_flush.store(false, Ordering::Release);
            });
        }
        Ok(())
    }

    /// Flushes one chunk on every replica of its current map, first writing
    /// again the unflushed writes acknowledged at another version; drops the
    /// records of generation `covered` and older once durable.
    async fn flush_chunk(&self, index: u64, covered: u64) -> Result<()> {
        let mut retry = Retry::new(&self.client.options);
        let mut source = MapSource::Cache;
        let mut replays = 0;
        loop {
            let map = match self.resolve(index, source, false).await {
                Ok(Some(map)) => map,
                Ok(None) => {
                    // Truncated away: nothing of it is left to make durable.
                    lock(&self.unflushed).forget(index);
                    return Ok(());
                }
                Err(e) if transient(&e) => {
                    if !retry.wait().await {
                        return Err(self.gave_up("flush", index, None, &retry, e));
                    }
                    source = MapSource::Cache;
                    continue;
                }
                Err(e) => return Err(self.fatal("flush", index, None, e)),
            };
            if self
                .replay_if_moved("flush", &map, index, &mut replays, &retry)
                .await?
            {
                source = MapSource::Cache;
                continue;
            }
            let deadline = self.io_timeouts.flush();
            let flushes = map.replicas.iter().map(|replica| async {
                let attempt = async {
                    let service = self.client.chunks.chunk_service(&replica.addr).await?;
                    service.flush(map.chunk, map.version).await
                };
                let result = tokio::time::timeout(deadline, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(timed_out(
                            "flush",
                            &map,
                            replica.cs,
                            deadline,
                            "io.flush_tout",
                        ))
                    });
                result.err().map(|e| (replica.cs, e))
            });
            let failures: Vec<(CsId, Error)> = futures::future::join_all(flushes)
                .await
                .into_iter()
                .flatten()
                .collect();
            let Some((failed, error)) = failures.into_iter().next() else {
                lock(&self.unflushed).flushed(index, covered);
                return Ok(());
            };
            // One failure at a time: the report returns a new map, and every
            // survivor is flushed again under it (cheap when already clean).
            let cause = replica_cause(&map, failed, &error);
            if request_error(error.kind()) {
                return Err(self.fatal("flush", index, Some(&map), cause));
            }
            source = match self.recover(&map, failed, error.kind(), false).await {
                Recovery::Retry(next) => MapSource::Given(next),
                Recovery::Gone | Recovery::Reallocate => {
                    lock(&self.unflushed).forget(index);
                    return Ok(());
                }
                Recovery::Wait(mds) => {
                    if !retry.wait().await {
                        let cause = with_mds_answer(cause, mds);
                        return Err(self.gave_up("flush", index, Some(&map), &retry, cause));
                    }
                    MapSource::NewerThan(map.version.0)
                }
                Recovery::Fatal(e) => return Err(self.fatal("flush", index, Some(&map), e)),
            };
        }
    }

    /// Flushes dirty chunks and commits the size (write lease only).
    async fn flush(&self) -> Result<()> {
        if self.lease.mode != LeaseMode::Write {
            return Ok(());
        }
        let serialized = self.flush_lock.lock().await;
        self.flush_serialized(serialized).await
    }

    /// [`FileInner::flush`], holding `flush_lock`.
    async fn flush_serialized(&self, _serialized: tokio::sync::MutexGuard<'_, ()>) -> Result<()> {
        let covered = lock(&self.unflushed).start_flush();
        let dirty: Vec<u64> = std::mem::take(&mut *lock(&self.dirty))
            .into_iter()
            .collect();
        let modified = self.modified.swap(false, Ordering::AcqRel);
        // The size as of the flush call: writes acknowledged later may not
        // be durable yet, and committing their end would expose a
        // zero-filled range after a crash.
        let size = self.size();
        let flushed = first_error(
            futures::future::join_all(dirty.iter().map(|index| self.flush_chunk(*index, covered)))
                .await,
        );
        let committed = match flushed {
            Ok(()) if modified => {
                self.mds_call("committing the size", || {
                    self.client.mds.commit_size(self.lease.id, size)
                })
                .await
            }
            other => other,
        };
        if committed.is_err() {
            // Keep the work for the next flush.
            lock(&self.dirty).extend(dirty);
            if modified {
                self.modified.store(true, Ordering::Release);
            }
        }
        committed
    }
}

impl Drop for FileInner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.renewal).take() {
            task.abort();
        }
        if self.closed.load(Ordering::Acquire) || self.fenced.load(Ordering::Acquire) {
            return;
        }
        // Dropped without close: commit what was written and release the
        // lease, best effort, so the next opener does not wait for expiry.
        let mds = self.client.mds.clone();
        let lease = self.lease.id;
        let size = self.modified.load(Ordering::Acquire).then(|| self.size());
        let path = std::mem::take(&mut self.path);
        self.runtime.spawn(async move {
            if let Some(size) = size {
                if let Err(e) = mds.commit_size(lease, size).await {
                    tracing::warn!(path, error = %e, "committing the size of a dropped file failed");
                }
            }
            let _ = mds.close(lease).await;
        });
    }
}
