//! Copying a chunk from another chunk server: re-replication and resync
//! ([`ChunkControl::replicate_chunk`](crate::traits::ChunkControl::replicate_chunk)).
//!
//! A copy compares CRC tables instead of moving whole chunks:
//!
//! 1. It fetches the source's CRC table (paged
//!    [`ChunkService::block_crcs`], each page under the progress timeout).
//! 2. It picks a base (see [`ChunkServer::replicate`]): a replica of the
//!    chunk held here at an older or equal version (updated in place), a
//!    partial copy left by an earlier interrupted copy (resumed), or a fresh
//!    incoming replica.
//! 3. Blocks whose entries differ are read from the source in runs of up to
//!    [`COPY_READ_MAX`] bytes ([`COPY_READS_IN_FLIGHT`] at a time, paced at
//!    the requested rate), checked against the source's entries and written
//!    to the base; blocks the source never wrote are zeroed in the base.
//! 4. The base's table must then equal the source's. The base is flushed
//!    and set to the new version (an in-place base), or committed at it
//!    (an incoming replica): only then does the new version exist.
//!
//! No deadline bounds the whole copy: every request to the source has the
//! progress timeout ([`DEFAULT_COPY_PROGRESS_TIMEOUT`], settable with
//! [`ChunkServer::set_copy_progress_timeout`]), and
//! [`ChunkServer::copy_progress`] reports bytes done and to do.
//!
//! A failed or abandoned copy into an incoming replica keeps it as a
//! partial copy (at most [`MAX_PARTIAL_COPIES`] per chunk server, the
//! oldest discarded) for the next copy of the same chunk to resume from.
//! Partial copies are never served nor listed, are discarded by
//! `delete_chunk`, and live only as long as the process: the store drops
//! its incoming replicas at the next start (for [`FileChunkStore`], the
//! `.chunk.tmp.*` files are removed at open), so after a restart a copy
//! starts over (or from a stale replica). An in-place base that fails
//! midway keeps its old version: stale (the MDS never puts it in a chain at
//! that version), never wrong, and the next copy resumes from it.
//!
//! [`FileChunkStore`]: super::FileChunkStore
//! [`ChunkService::block_crcs`]: crate::traits::ChunkService::block_crcs

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{Error, ErrorKind, Result};
use crate::types::{
    validate_chunk_size, ChunkId, CopyProgress, CopyStats, MapVersion, Replica, BLOCK_SIZE,
    MAX_BLOCK_CRCS,
};

use super::server::ChunkServer;
use super::{block_entry, ChunkStore, IncomingId};

/// A copy fails with `TimedOut` when one request to the source (connecting,
/// a page of its CRC table, a read) gets no answer for this long.
pub const DEFAULT_COPY_PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest read from the source: differing blocks are coalesced into runs
/// of at most this many bytes.
pub const COPY_READ_MAX: u64 = 1 << 20;
/// Reads from the source a copy keeps in flight.
pub const COPY_READS_IN_FLIGHT: usize = 4;
/// Partial copies (incoming replicas of failed copies) a chunk server keeps
/// for resumption; beyond it the oldest is discarded.
pub const MAX_PARTIAL_COPIES: usize = 4;

const BS: usize = BLOCK_SIZE as usize;

/// The copies of a chunk server: running ones and partial ones.
pub(super) struct Copies {
    running: Mutex<HashMap<ChunkId, Arc<Running>>>,
    /// Replicas a copy updates or updated in place without finishing: a mix
    /// of old and new blocks, refused by the data path until a copy
    /// finishes or `delete_chunk` (a restart serves them again at their old
    /// version, like any stale replica).
    refused: Mutex<HashSet<ChunkId>>,
    /// `refused.len()`, checked without the lock on every data request.
    refused_len: AtomicUsize,
    /// Partial copies, oldest first.
    partial: Mutex<VecDeque<Partial>>,
    progress_timeout_ms: AtomicU64,
}

/// A copy in progress.
struct Running {
    version: MapVersion,
    done: AtomicU64,
    total: AtomicU64,
    in_place: bool,
    /// The incoming replica it writes, for `delete_chunk` to abort.
    incoming: Mutex<IncomingSlot>,
    /// Set by `delete_chunk` (its incoming replica is aborted) or by a
    /// failure for lack of space: keep no partial copy.
    discard: AtomicBool,
}

/// The incoming replica of a running copy.
#[derive(Default)]
struct IncomingSlot {
    id: Option<IncomingId>,
    /// The copy has ended (its guard ran): an incoming replica created
    /// after that (by a storage task still running when the copy's future
    /// was dropped) is aborted at once.
    ended: bool,
}

/// An incoming replica left by a failed copy.
struct Partial {
    chunk: ChunkId,
    incoming: IncomingId,
    chunk_size: u64,
}

impl Default for Copies {
    fn default() -> Self {
        Copies {
            running: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashSet::new()),
            refused_len: AtomicUsize::new(0),
            partial: Mutex::new(VecDeque::new()),
            progress_timeout_ms: AtomicU64::new(DEFAULT_COPY_PROGRESS_TIMEOUT.as_millis() as u64),
        }
    }
}

impl Copies {
    fn running(&self) -> MutexGuard<'_, HashMap<ChunkId, Arc<Running>>> {
        self.running.lock()
    }

    fn partial(&self) -> MutexGuard<'_, VecDeque<Partial>> {
        self.partial.lock()
    }

    /// Takes the partial copy of `chunk`, if any.
    fn take_partial(&self, chunk: ChunkId) -> Option<Partial> {
        let mut partial = self.partial();
        let at = partial.iter().position(|p| p.chunk == chunk)?;
        partial.remove(at)
    }

    /// Keeps a partial copy, discarding the oldest beyond the bound.
    fn keep_partial(&self, store: &dyn ChunkStore, kept: Partial) {
        let evicted: Vec<Partial> = {
            let mut partial = self.partial();
            partial.push_back(kept);
            let excess = partial.len().saturating_sub(MAX_PARTIAL_COPIES);
            partial.drain(..excess).collect()
        };
        for p in evicted {
            tracing::info!(chunk = %p.chunk, "discarding the oldest partial copy");
            store.abort_incoming(p.incoming);
        }
    }

    fn refused(&self) -> MutexGuard<'_, HashSet<ChunkId>> {
        self.refused.lock()
    }

    fn set_refused(&self, chunk: ChunkId, refused: bool) {
        let mut set = self.refused();
        if refused {
            set.insert(chunk);
        } else {
            set.remove(&chunk);
        }
        self.refused_len.store(set.len(), Ordering::Release);
    }

    /// Whether the data path must refuse `chunk`: a copy updates it in
    /// place, or did without finishing.
    pub(super) fn is_resyncing(&self, chunk: ChunkId) -> bool {
        self.refused_len.load(Ordering::Acquire) > 0 && self.refused().contains(&chunk)
    }

    /// Discards the partial copy of `chunk` and aborts a running copy's
    /// incoming replica (`delete_chunk`).
    pub(super) fn discard(&self, store: &dyn ChunkStore, chunk: ChunkId) {
        if let Some(p) = self.take_partial(chunk) {
            store.abort_incoming(p.incoming);
        }
        let running = self.running().get(&chunk).cloned();
        if let Some(running) = running {
            running.discard.store(true, Ordering::SeqCst);
            let incoming = running.incoming.lock().id;
            if let Some(incoming) = incoming {
                store.abort_incoming(incoming);
            }
        }
        self.set_refused(chunk, false);
    }

    /// Chunks with a partial copy, oldest first (tests, diagnostics).
    pub(super) fn partial_chunks(&self) -> Vec<ChunkId> {
        self.partial().iter().map(|p| p.chunk).collect()
    }

    pub(super) fn progress_timeout(&self) -> Duration {
        Duration::from_millis(self.progress_timeout_ms.load(Ordering::Relaxed))
    }
}

/// Removes a running copy from the table when the copy ends (or its future
/// is dropped); keeps its incoming replica as a partial copy unless it was
/// committed (`incoming` taken) or deleted.
struct RunningGuard {
    copies: Arc<Copies>,
    store: Arc<dyn ChunkStore>,
    chunk: ChunkId,
    chunk_size: u64,
    running: Arc<Running>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.copies.running().remove(&self.chunk);
        let incoming = {
            let mut slot = self.running.incoming.lock();
            slot.ended = true;
            slot.id.take()
        };
        if let Some(incoming) = incoming {
            if self.running.discard.load(Ordering::SeqCst) {
                self.store.abort_incoming(incoming);
            } else {
                // Cheap bookkeeping (and at most an unlink): fine in a drop.
                self.copies.keep_partial(
                    self.store.as_ref(),
                    Partial {
                        chunk: self.chunk,
                        incoming,
                        chunk_size: self.chunk_size,
                    },
                );
            }
        }
    }
}

/// Where a copy writes.
#[derive(Debug, Clone, Copy)]
enum Base {
    /// A replica of the chunk held here at `version`, updated in place.
    InPlace { chunk: ChunkId, version: MapVersion },
    /// An incoming replica (fresh or partial).
    Incoming(IncomingId),
}

impl Base {
    fn entries(self, store: &dyn ChunkStore, first: u64, count: u64) -> Result<Vec<u64>> {
        match self {
            Base::InPlace { chunk, version } => {
                store.crc_entries(chunk, Some(version), first, count)
            }
            Base::Incoming(incoming) => store.incoming_crc_entries(incoming, first, count),
        }
    }

    fn write(self, store: &dyn ChunkStore, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            Base::InPlace { chunk, version } => {
                store.write_checked(chunk, Some(version), offset, data)
            }
            Base::Incoming(incoming) => store.write_incoming(incoming, offset, data),
        }
    }

    fn zero(self, store: &dyn ChunkStore, offset: u64, len: u64) -> Result<()> {
        match self {
            Base::InPlace { chunk, version } => {
                store.zero_checked(chunk, Some(version), offset, len)
            }
            Base::Incoming(incoming) => store.zero_incoming(incoming, offset, len),
        }
    }
}

/// `TimedOut`: the source did not answer `what` within `deadline`.
fn timed_out(deadline: Duration, what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::TimedOut,
        format!(
            "the source did not answer {what} within {deadline:?} (the copy's progress \
             timeout): the copy keeps what it has; retry it or pick another source"
        ),
    )
}

/// Runs of blocks `(first, count)` to read from the source and to zero.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    reads: Vec<(u64, u64)>,
    zeros: Vec<(u64, u64)>,
}

impl Plan {
    /// Compares the source's entries with the base's.
    fn new(source: &[u64], base: &[u64]) -> Plan {
        debug_assert_eq!(source.len(), base.len());
        let max_run = COPY_READ_MAX / BLOCK_SIZE;
        let mut plan = Plan::default();
        for (block, (&src, &have)) in source.iter().zip(base).enumerate() {
            if src == have {
                continue;
            }
            let block = block as u64;
            let runs = if src == 0 {
                &mut plan.zeros
            } else {
                &mut plan.reads
            };
            match runs.last_mut() {
                Some((first, count))
                    if *first + *count == block && (src == 0 || *count < max_run) =>
                {
                    *count += 1
                }
                _ => runs.push((block, 1)),
            }
        }
        plan
    }

    fn read_bytes(&self) -> u64 {
        self.reads.iter().map(|(_, n)| n * BLOCK_SIZE).sum()
    }
}

impl ChunkServer {
    /// The timeout on each request a copy makes to its source (default
    /// [`DEFAULT_COPY_PROGRESS_TIMEOUT`]): a source that does not answer one
    /// for this long fails the copy with `TimedOut`.
    pub fn set_copy_progress_timeout(&self, timeout: Duration) {
        self.copies
            .progress_timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Chunks with a partial copy kept for resumption, oldest first.
    pub fn partial_copies(&self) -> Vec<ChunkId> {
        self.copies.partial_chunks()
    }

    /// The copy of `chunk` running here, if any.
    pub(super) fn progress_of(&self, chunk: ChunkId) -> Option<CopyProgress> {
        self.copies.running().get(&chunk).map(|r| CopyProgress {
            chunk,
            version: r.version,
            bytes_done: r.done.load(Ordering::Relaxed),
            bytes_total: r.total.load(Ordering::Relaxed),
        })
    }

    /// [`ChunkControl::replicate_chunk`](crate::traits::ChunkControl::replicate_chunk):
    /// see the module documentation.
    pub(super) async fn replicate(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: Replica,
        rate_bytes_per_s: u64,
    ) -> Result<CopyStats> {
        validate_chunk_size(chunk_size)
            .map_err(|e| self.context(e.context(format_args!("replicating chunk {chunk:#x}"))))?;
        if source.cs == self.id() {
            return Err(self.context(Error::invalid(format!(
                "chunk {chunk:#x}: cannot replicate a chunk from this chunk server to itself: \
                 pick another source replica"
            ))));
        }
        // What is held here decides the base.
        let local = self
            .blocking(move |store| match store.version(chunk) {
                Ok(v) => Ok(Some((v, store.chunk_size(chunk)?))),
                // Absent, or out of service: the commit replaces it.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Corrupt) => Ok(None),
                Err(e) => Err(e),
            })
            .await?;
        if let Some((held, _)) = local {
            if held > version {
                return Err(self.context(Error::stale(format!(
                    "chunk {chunk:#x}: this chunk server holds it at map version {held}, newer \
                     than {version} to copy: the copy is outdated, look at the chunk map again"
                ))));
            }
        }
        let in_place = matches!(local, Some((_, size)) if size == chunk_size);
        let running = Arc::new(Running {
            version,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            in_place,
            incoming: Mutex::new(IncomingSlot::default()),
            discard: AtomicBool::new(false),
        });
        {
            let mut table = self.copies.running();
            if table.contains_key(&chunk) {
                return Err(self.context(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "chunk {chunk:#x} is already being copied to this chunk server: wait \
                         for that copy (see copy_progress) before starting another"
                    ),
                )));
            }
            table.insert(chunk, running.clone());
        }
        if in_place {
            // Until the copy finishes (a failure leaves it a mix).
            self.copies.set_refused(chunk, true);
        }
        let _guard = RunningGuard {
            copies: self.copies.clone(),
            store: self.store().clone(),
            chunk,
            chunk_size,
            running: running.clone(),
        };
        let result = self
            .copy_into(
                chunk,
                version,
                chunk_size,
                &source,
                rate_bytes_per_s,
                local,
                &running,
            )
            .await;
        match &result {
            Ok(_) => self.copies.set_refused(chunk, false),
            // A partial copy would only hold on to the space it lacks.
            Err(e) if e.kind() == ErrorKind::NoSpace => {
                running.discard.store(true, Ordering::SeqCst)
            }
            Err(_) => {}
        }
        result
    }

    /// The copy proper, once registered as running.
    #[allow(clippy::too_many_arguments)]
    async fn copy_into(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: &Replica,
        rate_bytes_per_s: u64,
        local: Option<(MapVersion, u64)>,
        running: &Arc<Running>,
    ) -> Result<CopyStats> {
        let in_place = running.in_place;
        let from = |e: Error| {
            self.context(e.context(format_args!(
                "replicating chunk {chunk:#x} at version {version} from chunk server {} ({})",
                source.cs, source.addr
            )))
        };
        let (base, reused_base) = match local {
            Some((held, _)) if in_place => {
                if let Some(p) = self.copies.take_partial(chunk) {
                    self.store().abort_incoming(p.incoming);
                }
                (
                    Base::InPlace {
                        chunk,
                        version: held,
                    },
                    true,
                )
            }
            _ => {
                let (incoming, reused) = match self.copies.take_partial(chunk) {
                    Some(p) if p.chunk_size == chunk_size => (p.incoming, true),
                    other => {
                        if let Some(p) = other {
                            self.store().abort_incoming(p.incoming);
                        }
                        // Registered by the storage task itself, so that
                        // the copy's guard finds it even if the copy is
                        // dropped while the task runs.
                        let slot = running.clone();
                        let incoming = self
                            .blocking(move |store| {
                                let incoming = store.begin_incoming(chunk, chunk_size)?;
                                let mut slot = slot.incoming.lock();
                                if slot.ended {
                                    store.abort_incoming(incoming);
                                    return Err(Error::internal(format!(
                                        "chunk {chunk:#x}: the copy was abandoned"
                                    )));
                                }
                                slot.id = Some(incoming);
                                Ok(incoming)
                            })
                            .await?;
                        (incoming, false)
                    }
                };
                running.incoming.lock().id = Some(incoming);
                (Base::Incoming(incoming), reused)
            }
        };

        let deadline = self.copies.progress_timeout();
        let peer = tokio::time::timeout(deadline, self.connector().chunk_service(&source.addr))
            .await
            .map_err(|_| timed_out(deadline, "the connection"))
            .and_then(|r| r)
            .map_err(from)?;

        // 1. The tables.
        let blocks = chunk_size / BLOCK_SIZE;
        let mut src = Vec::with_capacity(blocks as usize);
        while (src.len() as u64) < blocks {
            let first = src.len() as u64;
            let count = MAX_BLOCK_CRCS.min(blocks - first);
            let page = tokio::time::timeout(
                deadline,
                peer.block_crcs(chunk, version, first * BLOCK_SIZE, count * BLOCK_SIZE),
            )
            .await
            .map_err(|_| {
                timed_out(
                    deadline,
                    format_args!("the CRC table request at block {first}"),
                )
            })
            .and_then(|r| r)
            .map_err(from)?;
            if page.len() as u64 != count {
                return Err(from(Error::protocol(format!(
                    "the source returned {} CRC entries for {count} blocks from block {first}",
                    page.len()
                ))));
            }
            src.extend_from_slice(&page);
        }
        let have = self
            .blocking(move |store| base.entries(store, 0, blocks))
            .await?;
        let plan = Plan::new(&src, &have);
        drop(have);
        let total = plan.read_bytes();
        running.total.store(total, Ordering::Relaxed);

        // 2. Zeros: local only.
        if !plan.zeros.is_empty() {
            let zeros = plan.zeros.clone();
            self.blocking(move |store| {
                for (first, count) in zeros {
                    base.zero(store, first * BLOCK_SIZE, count * BLOCK_SIZE)?;
                }
                Ok(())
            })
            .await?;
        }

        // 3. Reads, pipelined and paced.
        let started = tokio::time::Instant::now();
        // Each read waits until the bytes up to its end are due.
        let mut due_bytes = 0u64;
        let reads: Vec<(u64, u64, u64)> = plan
            .reads
            .iter()
            .map(|&(first, count)| {
                due_bytes += count * BLOCK_SIZE;
                (first, count, due_bytes)
            })
            .collect();
        let reader = peer.clone();
        let reads = reads.into_iter().map(move |(first, count, due)| {
            let peer = reader.clone();
            async move {
                if rate_bytes_per_s > 0 {
                    let at = Duration::from_secs_f64(due as f64 / rate_bytes_per_s as f64);
                    tokio::time::sleep_until(started + at).await;
                }
                let (offset, len) = (first * BLOCK_SIZE, count * BLOCK_SIZE);
                let data =
                    tokio::time::timeout(deadline, peer.read_verified(chunk, version, offset, len))
                        .await
                        .map_err(|_| {
                            timed_out(
                                deadline,
                                format_args!("a read of {len} bytes at offset {offset}"),
                            )
                        })
                        .and_then(|r| r)?;
                Ok::<_, Error>((first, count, data))
            }
        });
        let mut reads = stream::iter(reads).buffered(COPY_READS_IN_FLIGHT);
        while let Some((first, count, data)) = reads.try_next().await.map_err(from)? {
            let len = data.len() as u64;
            if len != count * BLOCK_SIZE {
                return Err(from(Error::protocol(format!(
                    "the source returned {len} bytes for a read of {count} blocks at block {first}"
                ))));
            }
            for (i, block) in data.chunks_exact(BS).enumerate() {
                let b = first + i as u64;
                let want = src[b as usize];
                let got = block_entry(block);
                if got == want {
                    continue;
                }
                // Writers go on at `version` during a base copy (the
                // delta copy at the next version catches up): a block
                // written since the table was read is taken as it is now
                // if the source's table now says so. Anything else was
                // damaged in transit (or changed again meanwhile).
                let now = tokio::time::timeout(
                    deadline,
                    peer.block_crcs(chunk, version, b * BLOCK_SIZE, BLOCK_SIZE),
                )
                .await
                .map_err(|_| timed_out(deadline, format_args!("the CRC entry of block {b}")))
                .and_then(|r| r)
                .map_err(from)?;
                let zeroed = now.first() == Some(&0) && block.iter().all(|&x| x == 0);
                if now.first() == Some(&got) || zeroed {
                    src[b as usize] = got;
                    continue;
                }
                return Err(from(Error::corrupt(format!(
                    "block {b} read from the source has CRC entry {got:#018x} but the \
                     source's table says {want:#018x} (and now {:#018x}): the data was \
                     damaged in transit or the block changed again during the copy; retry \
                     the copy",
                    now.first().copied().unwrap_or_default()
                ))));
            }
            self.blocking(move |store| base.write(store, first * BLOCK_SIZE, &data))
                .await?;
            running.done.fetch_add(len, Ordering::Relaxed);
        }
        drop(reads);

        // 4. Check, then make it the replica at `version`.
        let have = self
            .blocking(move |store| base.entries(store, 0, blocks))
            .await?;
        if let Some(b) = (0..blocks as usize).find(|&b| have[b] != src[b]) {
            return Err(self.context(Error::internal(format!(
                "chunk {chunk:#x}: after the copy, block {b} has CRC entry {:#018x} but the \
                 source's is {:#018x} (was the replica written during the copy?): retry the copy",
                have[b], src[b]
            ))));
        }
        match base {
            Base::InPlace { .. } => {
                self.blocking(move |store| {
                    store.flush(chunk)?;
                    store.set_version(chunk, version)
                })
                .await?;
            }
            Base::Incoming(incoming) => {
                // Consumed by the commit, whatever its outcome.
                running.incoming.lock().id = None;
                self.blocking(move |store| store.commit_incoming(incoming, version))
                    .await?;
            }
        }
        let stats = CopyStats {
            bytes_copied: total,
            bytes_compared: chunk_size,
            reused_base,
        };
        self.count_replicated(total);
        tracing::info!(
            cs = %self.id(),
            %chunk,
            %version,
            source = %source.cs,
            bytes_copied = stats.bytes_copied,
            reused_base = stats.reused_base,
            "replicated chunk"
        );
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_reads_differing_runs_and_zeros_what_the_source_never_wrote() {
        let max = (COPY_READ_MAX / BLOCK_SIZE) as usize;
        let mut source = vec![7u64; max + 10];
        let mut base = source.clone();
        // Two differing runs, the first longer than one read.
        for b in base.iter_mut().take(max + 2) {
            *b = 8;
        }
        base[max + 5] = 0;
        // The source never wrote two blocks the base has.
        source[max + 7] = 0;
        source[max + 8] = 0;
        let plan = Plan::new(&source, &base);
        assert_eq!(
            plan,
            Plan {
                reads: vec![(0, max as u64), (max as u64, 2), (max as u64 + 5, 1)],
                zeros: vec![(max as u64 + 7, 2)],
            }
        );
        assert_eq!(plan.read_bytes(), (max as u64 + 3) * BLOCK_SIZE);
        assert_eq!(Plan::new(&source, &source), Plan::default());
    }
}
