//! A chunk server's session with the MDS group: registration, heartbeats,
//! self-fencing, following the group's membership, and reporting corrupt
//! replicas.
//!
//! A chunk server serves data only while it is registered
//! ([`ChunkServer::set_serving`]) and the MDS has heard from it recently:
//!
//! * **Registration** (at start, after a fence, or when the MDS answers a
//!   heartbeat `Stale`): the replicas are reported, the ones the MDS names
//!   are deleted, then the data path opens. Each attempt has a deadline
//!   ([`SessionOptions::register_timeout`]).
//! * **Heartbeats** every interval the MDS asked for, each with a deadline
//!   ([`SessionOptions::heartbeat_timeout`]) well under the fence.
//! * **Self-fence**: once [`SessionOptions::fence`] has passed since the
//!   last *successful* heartbeat (or registration), whether the calls in
//!   between failed or hung, the data path closes and the server registers
//!   again: past that time the MDS may have declared it offline and moved
//!   its chunks on (DESIGN.md invariant 3). The fence is checked at its
//!   deadline, not only when a call returns.
//!   The fence and the heartbeat deadline are cluster parameters
//!   (`cs.fence_tout`, `cs.hb_tout`) that heartbeat replies carry; the
//!   options are what applies until the first reply.
//! * **`Stale`** (a new leader, or a restarted MDS, that has not seen this
//!   server register): it registers again but keeps serving meanwhile, as
//!   long as the fence has not passed: nothing can have moved on without
//!   it in that time, every request carries a map version the replica
//!   checks, and closing the data path would make clients report healthy
//!   replicas as failed during every MDS fail-over.
//! * **Following the group**: after each registration and whenever the
//!   [`MemberDirectory`] says a refresh is due, the session asks the group
//!   for its members; the directory persists them (a chunk server keeps
//!   `<dir>/mds.list`), so it can restart when every bootstrap MDS is gone.
//!
//! Waits and deadlines use `tokio::time` (tests run on a paused clock); the
//! injected [`Clock`] stamps the wall-clock time of the last successful
//! contact ([`SessionState::last_contact_ms`]).

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::repair::RepairOutcome;
use super::scrub::BadReplicaSink;
use super::server::ChunkServer;
use crate::error::{Error, ErrorKind, Result};
use crate::membership::MemberDirectory;
use crate::traits::{Clock, CsRegistry, MdsGroup};
use crate::types::{
    BadBlocks, BlockRepair, ChunkId, CsStats, FailureReason, MapVersion, RegisterReply,
};

/// How long a chunk server keeps serving without a successful heartbeat
/// (the self-fence). Well under the MDS's offline timeout (300 s by
/// default, seconds in tests), so a server the MDS may have written off has
/// stopped serving long before.
pub const DEFAULT_FENCE: Duration = Duration::from_secs(10);
/// Deadline of one heartbeat: a frozen MDS costs at most this much before
/// the next heartbeat tries another member.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of one registration (the MDS checks every replica listed).
pub const DEFAULT_REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Tunables of a [`CsSession`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Time without a successful heartbeat after which the server stops
    /// serving and registers again. Default [`DEFAULT_FENCE`].
    pub fence: Duration,
    /// Deadline of each heartbeat and of each `members` call; must be
    /// shorter than `fence`. Default [`DEFAULT_HEARTBEAT_TIMEOUT`]. The
    /// transport should use the same deadline (and drop the connection
    /// when it expires) so the next call tries another MDS.
    pub heartbeat_timeout: Duration,
    /// Deadline of each registration. Default [`DEFAULT_REGISTER_TIMEOUT`].
    pub register_timeout: Duration,
    /// Pause before retrying a failed registration. Default 500 ms.
    pub register_retry: Duration,
    /// Pause before retrying a failed heartbeat (when shorter than the
    /// interval). Default 200 ms.
    pub heartbeat_retry: Duration,
    /// Apply the scrub parameters the MDS sends with heartbeat replies
    /// (`false` when the daemon's environment overrides them).
    pub follow_scrub_params: bool,
    /// Apply the fence and heartbeat deadline the MDS sends with heartbeat
    /// replies (`cs.fence_tout`, `cs.hb_tout`); `false` when the daemon's
    /// environment overrides them.
    pub follow_deadline_params: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            fence: DEFAULT_FENCE,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            register_timeout: DEFAULT_REGISTER_TIMEOUT,
            register_retry: Duration::from_millis(500),
            heartbeat_retry: Duration::from_millis(200),
            follow_scrub_params: true,
            follow_deadline_params: true,
        }
    }
}

/// What a session did so far (diagnostics, tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// Successful registrations.
    pub registrations: u64,
    /// Times the server stopped serving because the fence passed.
    pub fences: u64,
    /// Successful heartbeats.
    pub heartbeats: u64,
    /// Wall-clock time (ms since the epoch) of the last successful
    /// registration or heartbeat; 0 before the first.
    pub last_contact_ms: u64,
}

/// The session of one chunk server with the MDS group; see the module
/// documentation.
pub struct CsSession {
    server: Arc<ChunkServer>,
    registry: Arc<dyn CsRegistry>,
    group: Arc<dyn MdsGroup>,
    members: Arc<MemberDirectory>,
    clock: Arc<dyn Clock>,
    addr: String,
    options: SessionOptions,
    /// The fence and heartbeat deadline in force: the options' until the
    /// MDS sends the cluster's.
    deadlines: Mutex<Deadlines>,
    state: Mutex<SessionState>,
}

/// The session's deadlines in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadlines {
    fence: Duration,
    heartbeat: Duration,
}

impl Deadlines {
    /// `self` with the MDS's values where it sent some (0 keeps ours); the
    /// heartbeat deadline never exceeds half the fence, so a silent MDS
    /// leaves time to try another before the fence.
    fn follow(self, fence_ms: u64, heartbeat_ms: u64) -> Deadlines {
        let fence = match fence_ms {
            0 => self.fence,
            ms => Duration::from_millis(ms),
        };
        let heartbeat = match heartbeat_ms {
            0 => self.heartbeat,
            ms => Duration::from_millis(ms),
        };
        Deadlines {
            fence,
            heartbeat: heartbeat.min(fence / 2),
        }
    }
}

/// Why the heartbeat loop ended.
enum Ended {
    /// The fence passed: stop serving, register again.
    Fenced,
    /// The MDS does not know us: register again, serving until `fence_at`.
    Stale { fence_at: Instant },
}

impl CsSession {
    /// A session for `server`, which serves data at `addr`. `registry` and
    /// `group` are the MDS group (one client implements both); `members`
    /// is the directory the registry's transport dials from.
    pub fn new(
        server: Arc<ChunkServer>,
        registry: Arc<dyn CsRegistry>,
        group: Arc<dyn MdsGroup>,
        members: Arc<MemberDirectory>,
        clock: Arc<dyn Clock>,
        addr: String,
        options: SessionOptions,
    ) -> CsSession {
        assert!(
            options.heartbeat_timeout < options.fence,
            "a heartbeat deadline ({:?}) must be shorter than the fence ({:?})",
            options.heartbeat_timeout,
            options.fence
        );
        CsSession {
            server,
            registry,
            group,
            members,
            clock,
            addr,
            deadlines: Mutex::new(Deadlines {
                fence: options.fence,
                heartbeat: options.heartbeat_timeout,
            }),
            options,
            state: Mutex::new(SessionState::default()),
        }
    }

    /// What the session did so far.
    pub fn state(&self) -> SessionState {
        self.state.lock().clone()
    }

    /// The self-fence in force (`cs.fence_tout` once an MDS sent it).
    pub fn fence_timeout(&self) -> Duration {
        self.deadlines().fence
    }

    /// The heartbeat deadline in force (`cs.hb_tout` once an MDS sent it).
    pub fn heartbeat_timeout(&self) -> Duration {
        self.deadlines().heartbeat
    }

    fn deadlines(&self) -> Deadlines {
        *self.deadlines.lock()
    }

    fn update(&self, f: impl FnOnce(&mut SessionState)) {
        f(&mut self.state.lock())
    }

    /// Runs the session: first checks the replicas written before an
    /// unclean stop ([`ChunkServer::recover`]), then registers and
    /// heartbeats forever. Returns only on a local failure (the chunk store
    /// cannot be read or written); MDS failures are waited out.
    pub async fn run(&self) -> Result<()> {
        let id = self.server.id();
        let recovered = self.server.recover().await?;
        if !recovered.verified.is_empty() || !recovered.corrupt.is_empty() {
            tracing::warn!(
                cs = %id,
                verified = recovered.verified.len(),
                corrupt = ?recovered.corrupt,
                "checked the chunks written before an unclean stop"
            );
        }
        // `Some(t)`: still serving (re-registering after `Stale`) until t.
        let mut serving_until: Option<Instant> = None;
        loop {
            if serving_until.is_none() {
                self.server.set_serving(false);
            }
            let reply = self.register(&mut serving_until).await?;
            self.server.apply_register_reply(&reply).await?;
            self.server.set_serving(true);
            let now_ms = self.clock.now_ms();
            self.update(|s| {
                s.registrations += 1;
                s.last_contact_ms = now_ms;
            });
            tracing::info!(cs = %id, "registered with the MDS");
            self.refresh_members().await;
            let interval = Duration::from_millis(reply.heartbeat_interval_ms.max(100));
            match self.heartbeats(interval).await {
                Ended::Fenced => {
                    self.fence();
                    serving_until = None;
                }
                Ended::Stale { fence_at } => serving_until = Some(fence_at),
            }
        }
    }

    /// Registers, retrying until it succeeds. While `serving_until` is set
    /// the server keeps serving, until that time passes (then it fences
    /// and clears it).
    async fn register(&self, serving_until: &mut Option<Instant>) -> Result<RegisterReply> {
        let id = self.server.id();
        loop {
            if let Some(at) = *serving_until {
                if Instant::now() >= at {
                    self.fence();
                    *serving_until = None;
                }
            }
            let registration = self.server.registration(&self.addr).await?;
            let mut deadline = Instant::now() + self.options.register_timeout;
            if let Some(at) = *serving_until {
                deadline = deadline.min(at);
            }
            let limit = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout_at(deadline, self.registry.register_cs(registration)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => tracing::warn!(cs = %id, "registration failed: {e}"),
                Err(_) => tracing::warn!(
                    cs = %id,
                    "registration: no MDS answered within {} ms",
                    limit.as_millis()
                ),
            }
            // A failed attempt: the group may know better now (never past
            // the fence while serving).
            let mut pause = Instant::now() + self.options.register_retry;
            match *serving_until {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, self.refresh_members()).await;
                    pause = pause.min(at);
                }
                None => self.refresh_members().await,
            }
            tokio::time::sleep_until(pause.max(Instant::now())).await;
        }
    }

    /// Stops serving: the fence passed.
    fn fence(&self) {
        self.server.set_serving(false);
        self.update(|s| s.fences += 1);
        tracing::warn!(
            cs = %self.server.id(),
            "no successful MDS heartbeat for {:?}: stop serving until registered again",
            self.fence_timeout()
        );
    }

    /// Heartbeats every `interval` until the fence passes or the MDS
    /// answers `Stale`.
    async fn heartbeats(&self, interval: Duration) -> Ended {
        let id = self.server.id();
        let mut last_ok = Instant::now();
        let mut next = last_ok + interval;
        let mut applied_scrub = None;
        loop {
            let Deadlines { fence, heartbeat } = self.deadlines();
            let fence_at = last_ok + fence;
            tokio::time::sleep_until(next.min(fence_at)).await;
            if Instant::now() >= fence_at {
                return Ended::Fenced;
            }
            let started = Instant::now();
            let deadline = (started + heartbeat).min(fence_at);
            let space = self.server.store().space().unwrap_or_default();
            let io = self.server.stats();
            let journal = self.server.store().journal_stats().unwrap_or_default();
            let stats = CsStats {
                read_ops: io.read_ops,
                write_ops: io.write_ops,
                read_bytes: io.read_bytes,
                write_bytes: io.write_bytes,
                journal_bytes: journal.size,
                journal_used_bytes: journal.used,
            };
            let outcome =
                tokio::time::timeout_at(deadline, self.registry.heartbeat(id, space, stats)).await;
            match outcome {
                Ok(Ok(params)) => {
                    last_ok = Instant::now();
                    let now_ms = self.clock.now_ms();
                    self.update(|s| {
                        s.heartbeats += 1;
                        s.last_contact_ms = now_ms;
                    });
                    // Deadlines of forwarded chain writes follow the cluster.
                    self.server.set_io_timeouts(params.io_timeouts);
                    if self.options.follow_deadline_params {
                        let mut current = self.deadlines.lock();
                        let next = current.follow(params.fence_ms, params.heartbeat_timeout_ms);
                        if next != *current {
                            tracing::info!(
                                cs = %id,
                                fence_ms = next.fence.as_millis() as u64,
                                heartbeat_ms = next.heartbeat.as_millis() as u64,
                                "self-fence and heartbeat deadline follow the cluster"
                            );
                            *current = next;
                        }
                    }
                    // The cluster parameters rule unless this daemon's
                    // environment overrides scrubbing (tests, tuning).
                    let scrub = (params.scrub_period_ms, params.scrub_rate_bytes_per_s);
                    if self.options.follow_scrub_params && applied_scrub != Some(scrub) {
                        self.server
                            .set_scrub_params(Duration::from_millis(scrub.0), scrub.1);
                        applied_scrub = Some(scrub);
                    }
                    if self.members.refresh_due() {
                        self.refresh_members().await;
                    }
                    next = started + interval;
                }
                // The MDS does not know us (it restarted, or a new leader
                // took over): register again.
                Ok(Err(e)) if e.kind() == ErrorKind::Stale => {
                    tracing::info!(cs = %id, "{e}; registering again");
                    return Ended::Stale { fence_at };
                }
                Ok(Err(e)) => {
                    tracing::warn!(cs = %id, "heartbeat failed: {e}");
                    next = Instant::now() + self.options.heartbeat_retry.min(interval);
                }
                Err(_) => {
                    tracing::warn!(
                        cs = %id,
                        "heartbeat: the MDS did not answer within {} ms",
                        (Instant::now() - started).as_millis()
                    );
                    next = Instant::now() + self.options.heartbeat_retry.min(interval);
                }
            }
        }
    }

    /// Asks the group for its members (the directory learns and saves
    /// them); a failure only waits for the next chance.
    async fn refresh_members(&self) {
        if let Err(e) = self
            .members
            .refresh(&*self.group, self.heartbeat_timeout())
            .await
        {
            tracing::debug!(
                cs = %self.server.id(),
                "asking the MDS group for its members: {e}"
            );
        }
    }
}

/// A [`BadReplicaSink`] that queues reports for [`BadReplicaReporter`]
/// (a sink must not block).
pub struct BadReplicaQueue {
    queue: mpsc::UnboundedSender<Finding>,
}

/// What the queue carries.
enum Finding {
    Replica(ChunkId, String),
    Blocks {
        chunk: ChunkId,
        version: MapVersion,
        blocks: Vec<u64>,
        detail: String,
    },
}

/// Sends the corrupt replicas and blocks queued by [`BadReplicaQueue`] to
/// the MDS, and repairs the blocks from the replicas it names.
pub struct BadReplicaReporter {
    queue: mpsc::UnboundedReceiver<Finding>,
}

/// A connected queue and reporter.
pub fn bad_replica_queue() -> (Arc<BadReplicaQueue>, BadReplicaReporter) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(BadReplicaQueue { queue: tx }),
        BadReplicaReporter { queue: rx },
    )
}

impl BadReplicaSink for BadReplicaQueue {
    fn bad_replica(&self, chunk: ChunkId, _version: MapVersion, detail: String) {
        // Fails only once the reporter stopped, i.e. at shutdown; the next
        // registration leaves the replica out anyway.
        let _ = self.queue.send(Finding::Replica(chunk, detail));
    }

    fn bad_blocks(&self, chunk: ChunkId, version: MapVersion, blocks: Vec<u64>, detail: String) {
        // At shutdown: the blocks stay bad until a later finding.
        let _ = self.queue.send(Finding::Blocks {
            chunk,
            version,
            blocks,
            detail,
        });
    }
}

impl BadReplicaReporter {
    /// Reports each queued finding of chunk server `server`, each call
    /// within `timeout`, retrying (with backoff up to 5 s) while the MDS is
    /// unavailable or does not answer. A report the MDS refuses (this
    /// server is not registered yet, or dropped) is abandoned: registration
    /// leaves out-of-service replicas out, which tells the MDS the same
    /// thing, and bad blocks are found again by the next read or scrub.
    /// Bad blocks are repaired from the members the MDS names
    /// ([`ChunkServer::repair_blocks`]) and the outcome reported. Runs
    /// until every [`BadReplicaQueue`] is dropped.
    pub async fn run(
        mut self,
        registry: Arc<dyn CsRegistry>,
        server: Arc<ChunkServer>,
        timeout: Duration,
    ) {
        let cs = server.id();
        // Chunks whose repair could not reach a source: looked at again
        // when due (a scan that finds them still bad reports them again).
        // The blocks to scan again (`None`: the whole replica).
        type Retry = (tokio::time::Instant, Option<(u64, u64)>);
        let mut retries: std::collections::BTreeMap<ChunkId, Retry> = Default::default();
        loop {
            let next_retry = retries.values().map(|(at, _)| *at).min();
            let finding = tokio::select! {
                finding = self.queue.recv() => match finding {
                    Some(finding) => finding,
                    None => return,
                },
                _ = tokio::time::sleep_until(next_retry.unwrap_or_else(tokio::time::Instant::now)),
                    if next_retry.is_some() =>
                {
                    let now = tokio::time::Instant::now();
                    let due: Vec<(ChunkId, Option<(u64, u64)>)> = retries
                        .iter()
                        .filter(|(_, (at, _))| *at <= now)
                        .map(|(chunk, (_, range))| (*chunk, *range))
                        .collect();
                    for (chunk, range) in due {
                        retries.remove(&chunk);
                        server.clear_repair_hold(chunk);
                        server
                            .report_damage(chunk, range, "retrying a block repair".into())
                            .await;
                    }
                    continue;
                }
            };
            match finding {
                Finding::Replica(chunk, detail) => {
                    let sent = with_retries(cs, chunk, timeout, || {
                        registry.report_bad_replica(cs, chunk, FailureReason::Corrupt)
                    })
                    .await;
                    if refused(cs, chunk, sent).is_some() {
                        tracing::info!(%cs, %chunk, %detail, "corrupt replica reported to the MDS");
                    }
                }
                Finding::Blocks {
                    chunk,
                    version,
                    blocks,
                    detail,
                } => {
                    let report = |outcome, blocks: &[u64]| BadBlocks {
                        version,
                        blocks: blocks.to_vec(),
                        outcome,
                    };
                    let found = with_retries(cs, chunk, timeout, || {
                        registry.report_bad_blocks(cs, chunk, report(BlockRepair::Found, &blocks))
                    })
                    .await;
                    let map = match found {
                        Ok(map) => map,
                        Err(e) => {
                            if e.kind() == ErrorKind::Busy {
                                // The only copy to repair from cannot serve
                                // yet: these blocks again shortly.
                                tracing::info!(%cs, %chunk, ?blocks, "block repair waits: {e}");
                                let range = blocks.first().copied().zip(blocks.last().copied());
                                retries.insert(
                                    chunk,
                                    (
                                        tokio::time::Instant::now()
                                            + crate::chunk::REPAIR_WAIT_RETRY,
                                        range,
                                    ),
                                );
                            } else {
                                refused::<()>(cs, chunk, Err(e));
                            }
                            let outcome = RepairOutcome {
                                failed: blocks.clone(),
                                ..RepairOutcome::default()
                            };
                            server.finish_repair(chunk, version, &outcome);
                            continue;
                        }
                    };
                    tracing::info!(%cs, %chunk, %detail, ?blocks, "bad blocks reported to the MDS");
                    let outcome = server
                        .repair_blocks(chunk, version, &blocks, &map.replicas)
                        .await;
                    for (from, done) in &outcome.repaired {
                        let sent = with_retries(cs, chunk, timeout, || {
                            registry.report_bad_blocks(
                                cs,
                                chunk,
                                report(BlockRepair::Repaired { from: *from }, done),
                            )
                        })
                        .await;
                        refused(cs, chunk, sent);
                    }
                    if !outcome.unrepairable.is_empty() {
                        let sent = with_retries(cs, chunk, timeout, || {
                            registry.report_bad_blocks(
                                cs,
                                chunk,
                                report(BlockRepair::Unrepairable, &outcome.unrepairable),
                            )
                        })
                        .await;
                        refused(cs, chunk, sent);
                    }
                    if !outcome.failed.is_empty() {
                        tracing::warn!(%cs, %chunk, blocks = ?outcome.failed,
                            error = outcome.error.as_deref().unwrap_or(""),
                            "bad blocks not repaired: no member could be asked; trying again \
                             later");
                        retries.insert(
                            chunk,
                            (
                                tokio::time::Instant::now() + crate::chunk::REPAIR_RETRY_AFTER,
                                None,
                            ),
                        );
                    }
                    server.finish_repair(chunk, version, &outcome);
                }
            }
        }
    }
}

/// Calls `call` until it succeeds or fails with something else than
/// `Unavailable`/`TimedOut` (returned: the caller logs it), each attempt
/// within `timeout`, with backoff up to 5 s.
async fn with_retries<T, F, Fut>(
    cs: crate::types::CsId,
    chunk: ChunkId,
    timeout: Duration,
    mut call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        let outcome = tokio::time::timeout(timeout, call())
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::TimedOut,
                    format!("no MDS answered within {} ms", timeout.as_millis()),
                ))
            });
        match outcome {
            Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::TimedOut) => {
                tracing::debug!(
                    %cs,
                    %chunk,
                    "reporting a corrupt replica or blocks: {e}; retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            outcome => return outcome,
        }
    }
}

/// Logs a report the MDS refused (see [`with_retries`]).
fn refused<T>(cs: crate::types::CsId, chunk: ChunkId, sent: Result<T>) -> Option<T> {
    sent.inspect_err(|e| tracing::warn!(%cs, %chunk, "the MDS refused a report of corruption: {e}"))
        .ok()
}

#[cfg(test)]
mod tests;
