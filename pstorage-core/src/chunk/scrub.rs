//! Verification of whole replicas: the background scrubber, the check of
//! possibly torn chunks after an unclean stop, and where corrupt replicas
//! are reported ([`BadReplicaSink`]).
//!
//! Both verify a replica piece by piece ([`VERIFY_PIECE`] bytes under the
//! chunk's read lock, each on the blocking pool), so client I/O to the chunk
//! waits at most for one piece.

use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::traits::{Clock, SystemClock};
use crate::types::{ChunkId, MapVersion};

use super::ChunkServer;

/// Bytes verified per step (and per hold of a chunk's read lock).
pub const VERIFY_PIECE: u64 = 256 << 10;
/// How often every replica is verified unless configured otherwise.
pub const DEFAULT_SCRUB_PERIOD: Duration = Duration::from_secs(24 * 3600);
/// How fast the scrubber reads unless configured otherwise: 16 MiB/s
/// verifies a 1 TiB disk in under a day while leaving the disk to clients.
pub const DEFAULT_SCRUB_RATE: u64 = 16 << 20;

/// Where a chunk server reports replicas it found corrupt (the daemon
/// forwards them to the MDS, which re-replicates the chunk from a good
/// copy and deletes this one).
///
/// Called once per replica, after the replica was taken out of service
/// ([`ChunkStore::mark_bad`](super::ChunkStore::mark_bad)): it must not
/// block for long (queue the report if it goes over the network).
pub trait BadReplicaSink: Send + Sync {
    /// Replica `chunk` (last at map `version`) failed verification;
    /// `detail` says where and how.
    fn bad_replica(&self, chunk: ChunkId, version: MapVersion, detail: String);

    /// `blocks` (ascending) of replica `chunk` at map `version` fail their
    /// check; the replica stays in service. The receiver repairs them
    /// ([`ChunkServer::repair_blocks`](super::ChunkServer::repair_blocks))
    /// and then calls
    /// [`ChunkServer::finish_repair`](super::ChunkServer::finish_repair).
    fn bad_blocks(&self, chunk: ChunkId, version: MapVersion, blocks: Vec<u64>, detail: String);
}

/// A sink that only logs (at warn level): the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogSink;

impl BadReplicaSink for LogSink {
    fn bad_replica(&self, chunk: ChunkId, version: MapVersion, detail: String) {
        tracing::warn!(
            %chunk,
            %version,
            %detail,
            "corrupt replica taken out of service (no MDS report wired)"
        );
    }

    fn bad_blocks(&self, chunk: ChunkId, version: MapVersion, blocks: Vec<u64>, detail: String) {
        tracing::warn!(
            %chunk,
            %version,
            ?blocks,
            %detail,
            "blocks failing their check (no MDS report wired: left as they are)"
        );
    }
}

/// When and how fast the scrubber verifies every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubParams {
    /// A pass starts this long after the previous one started (the first
    /// one at a random point within the first period, so chunk servers
    /// started together do not scrub together). Zero disables scrubbing
    /// (except passes asked for with [`ChunkServer::scrub_now`]).
    pub period: Duration,
    /// Read rate limit in bytes per second; 0 = unlimited.
    pub rate_bytes_per_s: u64,
}

impl Default for ScrubParams {
    fn default() -> Self {
        ScrubParams {
            period: DEFAULT_SCRUB_PERIOD,
            rate_bytes_per_s: DEFAULT_SCRUB_RATE,
        }
    }
}

/// Scrubber progress and totals since the chunk server started, for
/// `pstorage stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStats {
    /// Current period in milliseconds (0 = periodic scrubbing off).
    pub period_ms: u64,
    /// Current rate limit in bytes per second (0 = unlimited).
    pub rate_limit_bytes_per_s: u64,
    /// Whether a pass is in progress.
    pub running: bool,
    /// Replicas in the current (or last) pass, and how many are done.
    pub pass_chunks_total: u64,
    /// Replicas of the current (or last) pass verified so far.
    pub pass_chunks_done: u64,
    /// Passes finished.
    pub passes_completed: u64,
    /// Replicas verified completely (good or corrupt), all passes.
    pub chunks_verified: u64,
    /// Bytes read and checked, all passes.
    pub bytes_verified: u64,
    /// Corrupt replicas found (and reported), all passes.
    pub corrupt_found: u64,
    /// Replicas that could not be verified (I/O errors other than a CRC
    /// mismatch), all passes.
    pub errors: u64,
    /// Verification rate of the current (or last) pass, bytes per second.
    pub bytes_per_s: u64,
    /// Wall-clock start and end of the last pass, ms since the epoch (0 =
    /// none yet; end 0 while the first pass runs).
    pub last_pass_started_ms: u64,
    /// When the last pass finished, ms since the epoch (0 while the first pass runs).
    pub last_pass_finished_ms: u64,
}

/// What checking one replica found.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Every block passed.
    Good,
    /// A block failed its check.
    Corrupt(Error),
    /// The replica disappeared meanwhile (deleted, replaced, out of
    /// service).
    Gone,
}

/// The scrubber's shared state inside a [`ChunkServer`].
pub(super) struct Scrubber {
    params: Mutex<ScrubParams>,
    stats: Mutex<ScrubStats>,
    /// Wakes the scrubber loop: parameters changed or a pass was asked for.
    wake: Notify,
    requested: AtomicBool,
}

impl Default for Scrubber {
    fn default() -> Self {
        let params = ScrubParams::default();
        Scrubber {
            params: Mutex::new(params),
            stats: Mutex::new(ScrubStats {
                period_ms: params.period.as_millis() as u64,
                rate_limit_bytes_per_s: params.rate_bytes_per_s,
                ..ScrubStats::default()
            }),
            wake: Notify::new(),
            requested: AtomicBool::new(false),
        }
    }
}

impl Scrubber {
    fn params(&self) -> ScrubParams {
        *self.params.lock()
    }

    fn stats(&self) -> MutexGuard<'_, ScrubStats> {
        self.stats.lock()
    }
}

/// Paces reads to a rate that may change between calls.
pub(super) struct Pacer {
    start: Instant,
    bytes: u64,
    rate: u64,
}

impl Pacer {
    pub(super) fn new() -> Pacer {
        Pacer {
            start: Instant::now(),
            bytes: 0,
            rate: 0,
        }
    }

    /// Accounts `n` bytes just read at `rate` bytes/s (0 = unlimited) and
    /// sleeps until they are due.
    pub(super) async fn pace(&mut self, n: u64, rate: u64) {
        let now = Instant::now();
        if rate != self.rate {
            self.start = now;
            self.bytes = 0;
            self.rate = rate;
        }
        if rate == 0 {
            return;
        }
        self.bytes += n;
        let due = self.start + Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        if due + Duration::from_secs(1) < now {
            // Far behind (the disk was slow): no burst to catch up.
            self.start = now;
            self.bytes = 0;
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

impl ChunkServer {
    /// Sets where corrupt replicas are reported (default: [`LogSink`]).
    pub fn set_bad_replica_sink(&self, sink: Arc<dyn BadReplicaSink>) {
        *self.sink.write() = sink;
    }

    /// Changes the scrubber's period and rate limit; takes effect at once
    /// (a pass in progress continues at the new rate; the next pass is due
    /// `period` after the last one started).
    pub fn set_scrub_params(&self, period: Duration, rate_bytes_per_s: u64) {
        *self.scrub.params.lock() = ScrubParams {
            period,
            rate_bytes_per_s,
        };
        {
            let mut stats = self.scrub.stats();
            stats.period_ms = period.as_millis() as u64;
            stats.rate_limit_bytes_per_s = rate_bytes_per_s;
        }
        self.scrub.wake.notify_one();
    }

    /// The scrubber's current parameters.
    pub fn scrub_params(&self) -> ScrubParams {
        self.scrub.params()
    }

    /// Scrubber progress and totals.
    pub fn scrub_stats(&self) -> ScrubStats {
        self.scrub.stats().clone()
    }

    /// Asks for a pass now (after the current one, if one runs), whatever
    /// the period.
    pub fn scrub_now(&self) {
        self.scrub.requested.store(true, Ordering::SeqCst);
        self.scrub.wake.notify_one();
    }

    /// The scrubber: runs passes over every replica held, forever. Spawn it
    /// once per chunk server; it stops when dropped (cancelled).
    pub async fn run_scrubber(self: Arc<Self>) {
        let period = self.scrub.params().period;
        let mut next = if period.is_zero() {
            None
        } else {
            let jitter = crate::runtime::thread_rng().gen_range(0.0..1.0);
            Some(Instant::now() + period.mul_f64(jitter))
        };
        // When the last pass started, on the monotonic (tokio) clock: the
        // wall clock must not decide when a pass is due (a simulator's
        // seed would not replay, a clock jump would skip or rush a pass).
        let mut last_started: Option<Instant> = None;
        loop {
            let wait = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let due = tokio::select! {
                _ = wait => true,
                _ = self.scrub.wake.notified() => false,
            };
            let requested = self.scrub.requested.swap(false, Ordering::SeqCst);
            if !due && !requested {
                // Parameters changed: the next pass is due a period after
                // the last one started (or from now, if none ran).
                let period = self.scrub.params().period;
                next = match last_started {
                    _ if period.is_zero() => None,
                    None => Some(Instant::now() + period),
                    Some(started) => Some(started + period),
                };
                continue;
            }
            let started = Instant::now();
            last_started = Some(started);
            self.scrub_pass().await;
            let period = self.scrub.params().period;
            next = (!period.is_zero()).then(|| started + period);
        }
    }

    /// One pass over every replica held.
    async fn scrub_pass(&self) {
        let chunks = match self.blocking(|store| store.list()).await {
            Ok(chunks) => chunks,
            Err(e) => {
                tracing::warn!(cs = %self.id(), error = %e, "scrub: cannot list the replicas");
                self.scrub.stats().errors += 1;
                return;
            }
        };
        let pass_start = Instant::now();
        {
            let mut stats = self.scrub.stats();
            stats.running = true;
            stats.pass_chunks_total = chunks.len() as u64;
            stats.pass_chunks_done = 0;
            stats.bytes_per_s = 0;
            stats.last_pass_started_ms = SystemClock.now_ms();
        }
        tracing::info!(cs = %self.id(), chunks = chunks.len(), "scrub pass started");
        let mut pacer = Pacer::new();
        let mut pass_bytes = 0u64;
        for info in chunks {
            let verdict = self
                .verify_replica(info.chunk, &mut pacer, true, &mut |n| {
                    pass_bytes += n;
                })
                .await;
            let corrupt = {
                let mut stats = self.scrub.stats();
                stats.pass_chunks_done += 1;
                match verdict {
                    Ok(Verdict::Good) => {
                        stats.chunks_verified += 1;
                        None
                    }
                    Ok(Verdict::Gone) => None,
                    Ok(Verdict::Corrupt(e)) => {
                        stats.chunks_verified += 1;
                        Some(e)
                    }
                    Err(e) => {
                        stats.errors += 1;
                        tracing::warn!(cs = %self.id(), chunk = %info.chunk, error = %e,
                            "scrub: cannot verify the replica");
                        None
                    }
                }
            };
            if let Some(e) = corrupt {
                if self
                    .report_damage(info.chunk, None, e.message().to_string())
                    .await
                {
                    self.scrub.stats().corrupt_found += 1;
                }
            }
            let secs = pass_start.elapsed().as_secs_f64();
            let mut stats = self.scrub.stats();
            if secs > 0.0 {
                stats.bytes_per_s = (pass_bytes as f64 / secs) as u64;
            }
        }
        let mut stats = self.scrub.stats();
        stats.running = false;
        stats.passes_completed += 1;
        stats.last_pass_finished_ms = SystemClock.now_ms();
        tracing::info!(
            cs = %self.id(),
            bytes = pass_bytes,
            corrupt = stats.corrupt_found,
            "scrub pass finished"
        );
    }

    /// Checks every block of replica `chunk`, piece by piece, pacing the
    /// reads at the scrub rate when `paced`; `progress` gets the bytes of
    /// each piece checked.
    pub(super) async fn verify_replica(
        &self,
        chunk: ChunkId,
        pacer: &mut Pacer,
        paced: bool,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Verdict> {
        let size = match self.blocking(move |store| store.chunk_size(chunk)).await {
            Ok(size) => size,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Verdict::Gone),
            // A header that does not decode: the replica is unusable.
            Err(e) if e.kind() == ErrorKind::Corrupt => return Ok(self.classify(chunk, e).await),
            Err(e) => return Err(e),
        };
        let mut offset = 0;
        let mut buf = Vec::new();
        while offset < size {
            let len = VERIFY_PIECE.min(size - offset);
            let result = self
                .blocking(move |store| {
                    buf.resize(len as usize, 0);
                    store.read_checked(chunk, None, offset, &mut buf)?;
                    Ok(buf)
                })
                .await;
            buf = match result {
                Ok(buf) => buf,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Verdict::Gone),
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    return Ok(self.classify(chunk, e).await)
                }
                Err(e) => return Err(e),
            };
            offset += len;
            progress(len);
            self.count_verified(len);
            if paced {
                pacer.pace(len, self.scrub.params().rate_bytes_per_s).await;
            }
        }
        Ok(Verdict::Good)
    }

    fn count_verified(&self, bytes: u64) {
        self.scrub.stats().bytes_verified += bytes;
    }

    /// A `Corrupt` error while verifying: a finding, unless the replica was
    /// already out of service.
    async fn classify(&self, chunk: ChunkId, e: Error) -> Verdict {
        match self.blocking(move |store| store.is_bad(chunk)).await {
            Ok(true) => Verdict::Gone,
            _ => Verdict::Corrupt(e),
        }
    }
}
