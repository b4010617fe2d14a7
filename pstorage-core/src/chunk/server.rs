//! [`ChunkServer`]: a chunk server's request logic over a [`ChunkStore`].

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::traits::CheckedBytes;
use async_trait::async_trait;
use bytes::Bytes;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::traits::{
    ChunkConnector, ChunkControl, ChunkService, ReplicaError, WritePayload, WriteRequest,
};
use crate::types::{
    ChunkId, ChunkReplicaInfo, CopyProgress, CopyStats, CsId, CsRegistration, IoTimeouts,
    MapVersion, RegisterReply, Replica, BLOCK_SIZE, MAX_BLOCK_CRCS, MAX_IO_SIZE,
};

use super::copy::Copies;
use super::scrub::{BadReplicaSink, LogSink, Pacer, Scrubber, Verdict};
use super::ChunkStore;

/// Store operations on at most this many bytes run on the async task
/// itself (a 4 KiB pwrite into the page cache takes microseconds); larger
/// ones, and everything that syncs, go to tokio's blocking pool.
const INLINE_IO_MAX_BYTES: u64 = 64 << 10;

/// Why a replica is not served at its registered version
/// ([`ChunkServer::apply_register_reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// The MDS named it stale: in no chain.
    OutOfChain,
    /// Registered unclean: it may lack writes acknowledged at that version.
    Unclean,
}

/// One chunk server: serves the data path ([`ChunkService`]: version-checked
/// reads, writes forwarded down the replica chain, flushes) and the MDS's
/// control operations ([`ChunkControl`]) from a [`ChunkStore`].
///
/// It starts closed: every [`ChunkService`] call fails with `Unavailable`
/// until [`set_serving(true)`](ChunkServer::set_serving), which the daemon
/// calls once it has registered with the MDS and applied its reply
/// ([`registration`](ChunkServer::registration),
/// [`apply_register_reply`](ChunkServer::apply_register_reply)).
/// [`ChunkControl`] works regardless. All methods need a tokio runtime.
pub struct ChunkServer {
    id: CsId,
    store: Arc<dyn ChunkStore>,
    connector: Arc<dyn ChunkConnector>,
    serving: AtomicBool,
    pub(super) sink: RwLock<Arc<dyn BadReplicaSink>>,
    pub(super) scrub: Scrubber,
    /// Serializes bad-replica reports, so each replica is reported once.
    reporting: tokio::sync::Mutex<()>,
    /// Replicas out of service when the last registration was built: the
    /// MDS was told the replica is gone, so they can be deleted.
    bad_at_registration: Mutex<Vec<ChunkId>>,
    /// Replicas that passed [`recover`](ChunkServer::recover) after an
    /// unclean stop: reported to the MDS as unclean at every registration
    /// until one succeeds, and only then marked verified in the store (so
    /// a crash before that finds them unverified, and unclean, again).
    unclean: Mutex<BTreeSet<ChunkId>>,
    /// Replicas not served at the version each had at the last
    /// registration, with why: those its reply named
    /// [`stale`](RegisterReply::stale) (in no chain; a client's cached map
    /// may still name them) and those it reported unclean (they may have
    /// lost writes acknowledged at that version). A newer version (a copy
    /// that brings one up to date, the MDS moving its chunk on) ends the
    /// fence.
    fenced: Mutex<HashMap<ChunkId, (MapVersion, Fence)>>,
    /// Whether `fenced` may hold anything: the data path skips its lock
    /// while nothing is fenced (almost always).
    any_fenced: AtomicBool,
    /// Replicas lent as a block repair's source
    /// ([`ChunkControl::lend_for_repair`]), with the version lent at: read
    /// at that version even while a copy into them is unfinished.
    lent: Mutex<HashMap<ChunkId, MapVersion>>,
    /// The replicas and versions the last registration reported: a
    /// replica the reply names stale is fenced at the version the MDS
    /// judged, even if a copy moved it on since.
    reported: Mutex<HashMap<ChunkId, MapVersion>>,
    io: IoCounters,
    /// Deadlines of forwarded chain writes (from the MDS's heartbeat replies).
    io_timeouts: Mutex<IoTimeouts>,
    /// Copies running here and partial ones (re-replication, resync).
    pub(super) copies: Arc<Copies>,
    /// Block repairs in flight or held back (`repair.rs`).
    pub(super) repairs: super::repair::Repairs,
}

/// Data-path and re-replication counters of a chunk server since it
/// started (for heartbeats and `pstorage stat`). Rates are differences of
/// two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsIoStats {
    /// Successful reads served and their bytes.
    pub read_ops: u64,
    /// Bytes of the successful reads.
    pub read_bytes: u64,
    /// Successful writes (data or zeros) applied to the local replica, and
    /// their length in bytes.
    pub write_ops: u64,
    /// Bytes of the successful writes.
    pub write_bytes: u64,
    /// Successful flushes.
    pub flush_ops: u64,
    /// Replicas copied here by re-replication or resync, and the bytes
    /// read from their sources (only the blocks that differed).
    pub replicated_chunks: u64,
    /// Bytes read from the sources of the replicas copied here.
    pub replicated_bytes: u64,
}

#[derive(Default)]
struct IoCounters {
    read_ops: AtomicU64,
    read_bytes: AtomicU64,
    write_ops: AtomicU64,
    write_bytes: AtomicU64,
    flush_ops: AtomicU64,
    replicated_chunks: AtomicU64,
    replicated_bytes: AtomicU64,
    /// Reads whose blocks were read through io_uring (not in `CsIoStats`,
    /// which heartbeats carry: a metric of this server only).
    ring_reads: AtomicU64,
}

impl IoCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What [`ChunkServer::recover`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Chunks that might hold torn writes and passed the check: whole,
    /// but maybe without writes acknowledged and not flushed before the
    /// stop. The next registration reports them as
    /// [`unclean`](crate::types::CsRegistration::unclean).
    pub verified: Vec<ChunkId>,
    /// Chunks that failed it: out of service and reported.
    pub corrupt: Vec<ChunkId>,
}

impl ChunkServer {
    /// A chunk server `id` over `store`, forwarding chain writes through
    /// `connector`. Not serving yet.
    pub fn new(
        id: CsId,
        store: Arc<dyn ChunkStore>,
        connector: Arc<dyn ChunkConnector>,
    ) -> ChunkServer {
        ChunkServer {
            id,
            store,
            connector,
            serving: AtomicBool::new(false),
            sink: RwLock::new(Arc::new(LogSink)),
            scrub: Scrubber::default(),
            reporting: tokio::sync::Mutex::new(()),
            bad_at_registration: Mutex::new(Vec::new()),
            unclean: Mutex::new(BTreeSet::new()),
            fenced: Mutex::new(HashMap::new()),
            any_fenced: AtomicBool::new(false),
            lent: Mutex::new(HashMap::new()),
            reported: Mutex::new(HashMap::new()),
            io: IoCounters::default(),
            io_timeouts: Mutex::new(IoTimeouts::default()),
            copies: Arc::new(Copies::default()),
            repairs: Default::default(),
        }
    }

    /// Sets the deadlines of chain writes forwarded from now on (the
    /// cluster parameters of the MDS's heartbeat reply; 0 = default).
    pub fn set_io_timeouts(&self, timeouts: IoTimeouts) {
        *self.io_timeouts.lock() = timeouts.effective();
    }

    /// The deadlines in force.
    pub fn io_timeouts(&self) -> IoTimeouts {
        *self.io_timeouts.lock()
    }

    /// This chunk server's id.
    pub fn id(&self) -> CsId {
        self.id
    }

    /// The store it serves from.
    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    /// Opens or closes the data path. Close it before re-registering with
    /// an MDS, open it after applying the MDS's reply.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Whether the data path is open.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// What to send the MDS in `register_cs`: every replica held and the
    /// disk space, with `addr` as the data address. Replicas out of service
    /// are left out (the MDS re-replicates them) and deleted by
    /// [`apply_register_reply`](ChunkServer::apply_register_reply).
    pub async fn registration(&self, addr: &str) -> Result<CsRegistration> {
        let (bad, chunks, space) = self
            .blocking(|store| Ok((store.list_bad()?, store.list()?, store.space()?)))
            .await?;
        *self.bad_at_registration.lock() = bad;
        *self.reported.lock() = chunks.iter().map(|c| (c.chunk, c.version)).collect();
        let unclean = {
            let unclean = self.unclean.lock();
            chunks
                .iter()
                .map(|c| c.chunk)
                .filter(|c| unclean.contains(c))
                .collect()
        };
        Ok(CsRegistration {
            id: self.id,
            addr: addr.to_string(),
            space,
            chunks,
            unclean,
        })
    }

    /// Deletes the replicas the MDS declared stale or unknown, stops
    /// serving those it keeps out of their chains and the unclean ones (at
    /// their registered version), and marks the unclean replicas the MDS
    /// was told about verified (the MDS took them out of their chains, or
    /// kept them as the best copy left and moved their chunk to a new
    /// version). Call before [`set_serving(true)`](ChunkServer::set_serving).
    pub async fn apply_register_reply(&self, reply: &RegisterReply) -> Result<()> {
        // Fenced before the unclean ones count as verified: a crash in
        // between finds them unclean again rather than served. At the
        // version registered (the one the MDS judged): a copy or version
        // push that moved a replica on since made it current, and it stays
        // served.
        let told = std::mem::take(&mut *self.unclean.lock());
        let fenced: HashMap<ChunkId, (MapVersion, Fence)> = {
            // Taken: a server of many replicas does not keep the list.
            let reported = std::mem::take(&mut *self.reported.lock());
            let unclean = told.iter().map(|c| (c, Fence::Unclean));
            let stale = reply.stale.iter().map(|c| (c, Fence::OutOfChain));
            unclean
                .chain(stale)
                .filter_map(|(c, why)| reported.get(c).map(|&v| (*c, (v, why))))
                .collect()
        };
        {
            let mut fences = self.fenced.lock();
            self.any_fenced.store(!fenced.is_empty(), Ordering::SeqCst);
            *fences = fenced;
        }
        for chunk in told {
            self.blocking(move |store| store.verified(chunk)).await?;
        }
        let mut delete = reply.delete.clone();
        delete.extend(self.bad_at_registration.lock().drain(..));
        self.blocking(move |store| {
            for chunk in delete {
                store.delete(chunk)?;
            }
            Ok(())
        })
        .await
    }

    /// Reads served since start whose blocks waiting for the disk were
    /// read through io_uring (see [`DataRequest`]).
    pub fn ring_reads(&self) -> u64 {
        self.io.ring_reads.load(Ordering::Relaxed)
    }

    /// Data-path and re-replication counters since start.
    pub fn stats(&self) -> CsIoStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CsIoStats {
            read_ops: get(&self.io.read_ops),
            read_bytes: get(&self.io.read_bytes),
            write_ops: get(&self.io.write_ops),
            write_bytes: get(&self.io.write_bytes),
            flush_ops: get(&self.io.flush_ops),
            replicated_chunks: get(&self.io.replicated_chunks),
            replicated_bytes: get(&self.io.replicated_bytes),
        }
    }

    /// Takes replica `chunk` out of service (durably: reads of it fail with
    /// `Corrupt` until the MDS deletes or replaces it) and reports it to the
    /// [`BadReplicaSink`]. Returns whether this call did it: a replica
    /// already out of service (or gone) is not reported again.
    pub async fn report_bad_replica(&self, chunk: ChunkId, detail: String) -> bool {
        let _one_at_a_time = self.reporting.lock().await;
        let version = match self.blocking(move |store| store.version(chunk)).await {
            Ok(version) => version,
            // A header that does not decode still makes a bad replica.
            Err(e) if e.kind() == ErrorKind::Corrupt => MapVersion(
                match self.blocking(move |store| store.is_bad(chunk)).await {
                    Ok(true) => return false,
                    _ => 0,
                },
            ),
            Err(_) => return false,
        };
        if let Err(e) = self.blocking(move |store| store.mark_bad(chunk)).await {
            if e.kind() != ErrorKind::NotFound {
                tracing::error!(cs = %self.id, %chunk, error = %e,
                    "cannot take a corrupt replica out of service");
            }
            return false;
        }
        tracing::warn!(cs = %self.id, %chunk, %version, %detail, "corrupt replica taken out of service");
        let sink = self.sink.read().clone();
        sink.bad_replica(chunk, version, detail);
        true
    }

    /// After an unclean stop: verifies every block of each chunk the store
    /// lists as [`unverified`](ChunkStore::unverified) (written but not
    /// flushed at the stop), unthrottled. Corrupt ones are taken out of
    /// service and reported; good ones are whole but may have lost writes
    /// their chain kept, so the next registration reports them unclean
    /// (and [`apply_register_reply`](ChunkServer::apply_register_reply)
    /// marks them verified once the MDS knows). Call before serving
    /// (before [`registration`](ChunkServer::registration)).
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let chunks = self.store.unverified();
        if chunks.is_empty() {
            return Ok(report);
        }
        tracing::warn!(
            cs = %self.id,
            chunks = chunks.len(),
            "unclean stop: verifying the chunks written since their last flush"
        );
        let mut pacer = Pacer::new();
        for chunk in chunks {
            let verdict = match self
                .verify_replica(chunk, &mut pacer, false, &mut |_| {})
                .await
            {
                Ok(verdict) => verdict,
                // Unreadable is unverifiable: never served either.
                Err(e) => Verdict::Corrupt(e.context("it could not be read back")),
            };
            match verdict {
                // Whole, but maybe behind its chain: stays unverified in
                // the store until the MDS has heard of it.
                Verdict::Good => {
                    self.unclean.lock().insert(chunk);
                    report.verified.push(chunk);
                }
                Verdict::Corrupt(e) => {
                    let detail = format!(
                        "after an unclean stop (a write was in progress): {}",
                        e.message()
                    );
                    self.report_damage(chunk, None, detail).await;
                    if self.blocking(move |store| store.is_bad(chunk)).await? {
                        self.blocking(move |store| store.verified(chunk)).await?;
                        report.corrupt.push(chunk);
                    } else {
                        // Bad blocks only: repaired in place; the replica
                        // serves and is unclean like a good one.
                        self.unclean.lock().insert(chunk);
                        report.verified.push(chunk);
                    }
                }
                Verdict::Gone => {
                    self.blocking(move |store| store.verified(chunk)).await?;
                }
            }
        }
        Ok(report)
    }

    /// Flushes every replica written since its last flush, so that the next
    /// start has nothing to verify. Call at a clean shutdown (SIGTERM).
    pub async fn close_clean(&self) -> Result<()> {
        self.blocking(|store| store.close_clean()).await
    }

    /// Reports the damage if `e` says a block of `[offset, offset + len)`
    /// failed its check ([`report_damage`](ChunkServer::report_damage),
    /// scanning only that range: the request waits for it).
    async fn check_corrupt(&self, chunk: ChunkId, offset: u64, len: u64, e: &Error) {
        if e.kind() == ErrorKind::Corrupt {
            let range = super::block_span(offset, len.max(1));
            self.report_damage(chunk, Some(range), e.message().to_string())
                .await;
        }
    }

    fn check_serving(&self) -> Result<()> {
        if self.is_serving() {
            Ok(())
        } else {
            Err(Error::unavailable(format!(
                "chunk server {} has not registered with the MDS yet: retry shortly",
                self.id
            )))
        }
    }

    pub(super) fn context(&self, e: Error) -> Error {
        e.context(format_args!("chunk server {}", self.id))
    }

    /// The connector to other chunk servers.
    pub(super) fn connector(&self) -> &Arc<dyn ChunkConnector> {
        &self.connector
    }

    /// Counts a finished copy that moved `bytes`.
    pub(super) fn count_replicated(&self, bytes: u64) {
        IoCounters::add(&self.io.replicated_chunks, 1);
        IoCounters::add(&self.io.replicated_bytes, bytes);
    }

    /// `Stale` while a copy updates the replica in place: it is behind and
    /// in no chain, and its blocks are a mix until the copy ends.
    fn check_not_resyncing(&self, chunk: ChunkId, read: bool) -> Result<()> {
        if self.copies.is_resyncing(chunk) && !(read && self.is_lent(chunk)) {
            return Err(Error::stale(format!(
                "chunk {chunk:#x} on chunk server {}: this replica is behind and being brought \
                 up to date: refresh the chunk map from the MDS and use the replicas it names",
                self.id
            )));
        }
        Ok(())
    }

    /// `Stale` while the replica is at the version it had when the MDS
    /// named it out of its chain ([`RegisterReply::stale`]) or when it was
    /// registered unclean: a client whose cached map names that version
    /// must not read it (it may lack writes its chain has, or that its
    /// writer must replay, at the same version).
    fn check_in_chain(&self, chunk: ChunkId) -> Result<()> {
        if !self.any_fenced.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some((at, why)) = self.fenced.lock().get(&chunk).copied() else {
            return Ok(());
        };
        match self.store.version(chunk) {
            Ok(version) if version == at => Err(Error::stale(match why {
                Fence::OutOfChain => format!(
                    "chunk {chunk:#x} on chunk server {}: this replica (version {version}) is in \
                     no chain: it left its chain while this server was away or stopped \
                     uncleanly; refresh the chunk map from the MDS and use the replicas it names",
                    self.id
                ),
                Fence::Unclean => format!(
                    "chunk {chunk:#x} on chunk server {}: this replica (version {version}) may \
                     have lost writes acknowledged at this version when its server stopped \
                     uncleanly; it serves at the next version the MDS gives the chunk: refresh \
                     the chunk map from the MDS",
                    self.id
                ),
            })),
            // Brought up to date by a copy (or gone): the fence is over.
            _ => {
                self.unfence(chunk);
                Ok(())
            }
        }
    }

    /// Forgets the fence and the loan of `chunk` (deleted, or created anew).
    fn unfence(&self, chunk: ChunkId) {
        self.fenced.lock().remove(&chunk);
        self.lent.lock().remove(&chunk);
    }

    /// Whether `chunk` is lent to a block repair at the version it has (a
    /// loan whose version passed is forgotten).
    fn is_lent(&self, chunk: ChunkId) -> bool {
        let mut lent = self.lent.lock();
        let Some(&at) = lent.get(&chunk) else {
            return false;
        };
        if matches!(self.store.version(chunk), Ok(version) if version == at) {
            return true;
        }
        lent.remove(&chunk);
        false
    }

    /// Both checks of a replica a client may write or flush: not being
    /// resynced, and in a chain as far as the last registration said.
    fn check_servable(&self, chunk: ChunkId) -> Result<()> {
        self.check_not_resyncing(chunk, false)?;
        self.check_in_chain(chunk)
    }

    /// [`check_servable`](Self::check_servable) for reads: a replica lent
    /// to a block repair is read while a copy into it is unfinished.
    fn check_readable(&self, chunk: ChunkId) -> Result<()> {
        self.check_not_resyncing(chunk, true)?;
        self.check_in_chain(chunk)
    }

    /// Runs `op` on the blocking pool.
    pub(super) async fn blocking<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ChunkStore) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        crate::runtime::run_blocking("a chunk server storage task", move || op(store.as_ref()))
            .await
            .map_err(|e| self.context(e))?
            .map_err(|e| self.context(e))
    }

    /// Applies a write to the local replica, at `version` only; counts it
    /// and reports the replica if it turns out corrupt.
    async fn apply_local(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        payload: &WritePayload,
        crcs: &[u64],
    ) -> Result<()> {
        match self
            .apply_store(chunk, version, offset, payload, crcs)
            .await
        {
            Ok(()) => {
                IoCounters::add(&self.io.write_ops, 1);
                IoCounters::add(&self.io.write_bytes, payload.len());
                Ok(())
            }
            Err(e) => {
                self.check_corrupt(chunk, offset, payload.len(), &e).await;
                Err(e)
            }
        }
    }

    async fn apply_store(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        payload: &WritePayload,
        crcs: &[u64],
    ) -> Result<()> {
        // The data was checked against `crcs` on arrival: the store keeps
        // those CRCs for the blocks the write covers whole.
        let apply =
            move |store: &dyn ChunkStore, payload: &WritePayload, crcs: &[u64]| match payload {
                WritePayload::Data(data) => {
                    store.write_checked_crcs(chunk, Some(version), offset, data, crcs)
                }
                WritePayload::Zeros(len) => store.zero_checked(chunk, Some(version), offset, *len),
            };
        if payload.len() <= INLINE_IO_MAX_BYTES {
            return apply(self.store.as_ref(), payload, crcs).map_err(|e| self.context(e));
        }
        let (payload, crcs) = (payload.clone(), crcs.to_vec());
        self.blocking(move |store| apply(store, &payload, &crcs))
            .await
    }

    /// Fails with `Stale` (naming both versions) unless the replica is at
    /// `version`.
    fn check_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        let actual = self.store.version(chunk).map_err(|e| self.context(e))?;
        super::check_version(chunk, Some(version), actual).map_err(|e| self.context(e))
    }
}

/// Reads `[offset, offset + len)` checked against the CRC table, with the
/// piece CRCs a reader checks it by: whole blocks carry their stored
/// entries (so a block that changed after its check here still fails at
/// the reader), partial ones a CRC computed here.
fn read_with_crcs(
    store: &dyn ChunkStore,
    chunk: ChunkId,
    version: MapVersion,
    offset: u64,
    len: u64,
) -> Result<CheckedBytes> {
    let mut buf = vec![0u8; len as usize];
    store.read_checked(chunk, Some(version), offset, &mut buf)?;
    with_crcs(store, chunk, version, offset, buf)
}

/// `buf`, read from `offset` of `chunk`, with its piece CRCs made of the
/// CRC entries its blocks have now.
fn with_crcs(
    store: &dyn ChunkStore,
    chunk: ChunkId,
    version: MapVersion,
    offset: u64,
    buf: Vec<u8>,
) -> Result<CheckedBytes> {
    if buf.is_empty() {
        return Ok(CheckedBytes::new(offset, Bytes::new()));
    }
    let first = offset / BLOCK_SIZE;
    let count = crate::checksums::piece_count(offset, buf.len() as u64) as u64;
    let entries = store.crc_entries(chunk, Some(version), first, count)?;
    Ok(CheckedBytes::from_entries(
        offset,
        Bytes::from(buf),
        &entries,
    ))
}

/// Data requests the chunk servers of this process are serving, counted by
/// their transport ([`DataRequest`]) from when it reads one until its
/// answer is queued.
static DATA_REQUESTS: AtomicUsize = AtomicUsize::new(0);

/// A data request being served (see [`DataRequest::begin`]).
pub struct DataRequest(());

impl DataRequest {
    /// Counts a data request from when the transport has read it until the
    /// guard goes (its answer queued). A small read whose blocks would wait
    /// for the disk is read through io_uring while others are counted
    /// (several disk reads in flight at once, the thread serving the
    /// others meanwhile); alone, it waits for the disk on the serving
    /// thread, which answers it sooner.
    pub fn begin() -> DataRequest {
        DATA_REQUESTS.fetch_add(1, Ordering::Relaxed);
        DataRequest(())
    }
}

impl Drop for DataRequest {
    fn drop(&mut self) {
        DATA_REQUESTS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`read_with_crcs`] on the serving thread, except that blocks which
/// would wait for the disk are read through io_uring
/// ([`ChunkStore::read_or_defer`]), so the thread serves other requests
/// meanwhile. Should they fail their check (a write replaced them while
/// they were read) or the read fail, the whole read is done again the
/// blocking way, which decides.
async fn read_deferring(
    store: &dyn ChunkStore,
    chunk: ChunkId,
    version: MapVersion,
    offset: u64,
    len: u64,
) -> Result<(CheckedBytes, bool)> {
    let mut buf = vec![0u8; len as usize];
    let Some(deferred) = store.read_or_defer(chunk, Some(version), offset, &mut buf)? else {
        return with_crcs(store, chunk, version, offset, buf).map(|read| (read, false));
    };
    if !deferred.finish(&mut buf).await {
        return read_with_crcs(store, chunk, version, offset, len).map(|read| (read, false));
    }
    Ok((
        CheckedBytes::from_entries(offset, Bytes::from(buf), deferred.entries()),
        true,
    ))
}

#[async_trait]
impl ChunkService for ChunkServer {
    async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError> {
        self.check_serving().map_err(ReplicaError::local)?;
        let WriteRequest {
            chunk,
            version,
            offset,
            payload,
            chain,
            crcs,
        } = request;
        // Zeros carry no bytes, so truncating a whole chunk is one request.
        match &payload {
            WritePayload::Data(data) => {
                if data.len() as u64 > MAX_IO_SIZE {
                    return Err(ReplicaError::local(Error::invalid(format!(
                        "chunk {chunk:#x}: a write of {} bytes exceeds the limit of {MAX_IO_SIZE}: \
                         split it",
                        data.len()
                    ))));
                }
                // End to end: the bytes must be the ones the client sent.
                crate::checksums::verify_piece_crcs(chunk, offset, data, &crcs, "a write")
                    .map_err(|e| ReplicaError::local(self.context(e)))?;
            }
            WritePayload::Zeros(_) if !crcs.is_empty() => {
                return Err(ReplicaError::local(Error::protocol(format!(
                    "chunk {chunk:#x}: a zeroing write carries {} CRCs",
                    crcs.len()
                ))));
            }
            WritePayload::Zeros(_) => {}
        }
        // Refusing here saves forwarding a write this replica will refuse
        // anyway; the authoritative check is the store's, atomic with the
        // write. (A replica being resynced is at an older version than any
        // chain's, so the store refuses writes to it too.)
        self.check_servable(chunk).map_err(ReplicaError::local)?;
        self.check_version(chunk, version)
            .map_err(ReplicaError::local)?;

        let Some((next, rest)) = chain.split_first() else {
            return self
                .apply_local(chunk, version, offset, &payload, &crcs)
                .await
                .map_err(ReplicaError::local);
        };
        // The replicas after this one each get their share of the chain's
        // deadline: a frozen successor is reported by this server before
        // the deadline of whoever sent us the write fires.
        let budget = self.io_timeouts().chain(chain.len());
        let forward = async {
            let downstream = self
                .connector
                .chunk_service(&next.addr)
                .await
                .map_err(|e| ReplicaError {
                    failed_cs: Some(next.cs),
                    error: e.context(format_args!(
                        "chunk server {} forwarding chunk {chunk:#x} to chunk server {} ({})",
                        self.id, next.cs, next.addr
                    )),
                })?;
            downstream
                .write(WriteRequest {
                    chunk,
                    version,
                    offset,
                    payload: payload.clone(),
                    chain: rest.to_vec(),
                    crcs: crcs.clone(),
                })
                .await
                .map_err(|e| ReplicaError {
                    failed_cs: Some(e.failed_replica(next.cs)),
                    error: e.error,
                })
        };
        let forward = async {
            match tokio::time::timeout(budget, forward).await {
                Ok(result) => result,
                Err(_) => Err(ReplicaError {
                    failed_cs: Some(next.cs),
                    error: Error::new(
                        ErrorKind::TimedOut,
                        format!(
                            "chunk server {} forwarding a write of chunk {chunk:#x} (version \
                             {version}): chunk server {} ({}) did not answer within {} ms \
                             ({} replica(s) x io.replica_tout)",
                            self.id,
                            next.cs,
                            next.addr,
                            budget.as_millis(),
                            chain.len()
                        ),
                    ),
                }),
            }
        };
        // The forward is polled first so the request is on its way to the
        // next replica while this one writes locally.
        let (forwarded, local) = futures::future::join(
            forward,
            self.apply_local(chunk, version, offset, &payload, &crcs),
        )
        .await;
        match (local, forwarded) {
            (Err(e), _) => Err(ReplicaError::local(e)),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<CheckedBytes> {
        self.check_serving()?;
        self.check_readable(chunk)?;
        if len > MAX_IO_SIZE {
            return Err(Error::invalid(format!(
                "chunk {chunk:#x}: a read of {len} bytes exceeds the limit of {MAX_IO_SIZE}: split it"
            )));
        }
        // The piece CRCs go with the data, computed once the blocks passed
        // their check against the CRC table, so the client can check that
        // what it got is what was checked here.
        let result = if len <= INLINE_IO_MAX_BYTES && DATA_REQUESTS.load(Ordering::Relaxed) > 1 {
            read_deferring(self.store.as_ref(), chunk, version, offset, len)
                .await
                .map(|(read, through_ring)| {
                    if through_ring {
                        IoCounters::add(&self.io.ring_reads, 1);
                    }
                    read
                })
                .map_err(|e| self.context(e))
        } else if len <= INLINE_IO_MAX_BYTES {
            read_with_crcs(self.store.as_ref(), chunk, version, offset, len)
                .map_err(|e| self.context(e))
        } else {
            self.blocking(move |store| read_with_crcs(store, chunk, version, offset, len))
                .await
        };
        match &result {
            Ok(_) => {
                IoCounters::add(&self.io.read_ops, 1);
                IoCounters::add(&self.io.read_bytes, len);
            }
            Err(e) => self.check_corrupt(chunk, offset, len, e).await,
        }
        result
    }

    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.check_serving()?;
        self.check_servable(chunk)?;
        self.check_version(chunk, version)?;
        self.blocking(move |store| store.flush(chunk)).await?;
        IoCounters::add(&self.io.flush_ops, 1);
        Ok(())
    }

    async fn block_crcs(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u64>> {
        self.check_serving()?;
        self.check_readable(chunk)?;
        if !offset.is_multiple_of(BLOCK_SIZE)
            || !len.is_multiple_of(BLOCK_SIZE)
            || len / BLOCK_SIZE > MAX_BLOCK_CRCS
        {
            return Err(self.context(Error::invalid(format!(
                "chunk {chunk:#x}: CRC entries requested for offset {offset} length {len}: both \
                 must be multiples of {BLOCK_SIZE} and the length at most {MAX_BLOCK_CRCS} \
                 blocks; page through larger ranges"
            ))));
        }
        // Usually in memory, but opening a chunk reads its table from disk.
        self.blocking(move |store| {
            store.crc_entries(chunk, Some(version), offset / BLOCK_SIZE, len / BLOCK_SIZE)
        })
        .await
    }
}

#[async_trait]
impl ChunkControl for ChunkServer {
    async fn create_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
    ) -> Result<()> {
        self.blocking(move |store| store.create(chunk, version, chunk_size))
            .await?;
        self.unfence(chunk);
        Ok(())
    }

    async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.blocking(move |store| store.set_version(chunk, version))
            .await
    }

    async fn zero_tail(&self, chunk: ChunkId, version: MapVersion, offset: u64) -> Result<()> {
        self.blocking(move |store| {
            let size = store.chunk_size(chunk)?;
            if offset > size {
                return Err(Error::invalid(format!(
                    "chunk {chunk:#x}: offset {offset} is beyond the chunk's {size} bytes"
                )));
            }
            store.zero_checked(chunk, Some(version), offset, size - offset)?;
            store.flush(chunk)
        })
        .await
    }

    async fn lend_for_repair(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.blocking(move |store| store.set_version(chunk, version))
            .await?;
        self.lent.lock().insert(chunk, version);
        Ok(())
    }

    async fn delete_chunk(&self, chunk: ChunkId) -> Result<()> {
        let copies = self.copies.clone();
        self.blocking(move |store| {
            // A partial copy goes too, and a running copy fails.
            copies.discard(store, chunk);
            store.delete(chunk)
        })
        .await?;
        self.unfence(chunk);
        Ok(())
    }

    async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>> {
        self.blocking(|store| store.list()).await
    }

    async fn ping(&self) -> Result<()> {
        self.check_serving()
    }

    async fn replicate_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: Replica,
        rate_bytes_per_s: u64,
    ) -> Result<CopyStats> {
        self.replicate(chunk, version, chunk_size, source, rate_bytes_per_s)
            .await
    }

    async fn copy_progress(&self, chunk: ChunkId) -> Result<Option<CopyProgress>> {
        Ok(self.progress_of(chunk))
    }
}
