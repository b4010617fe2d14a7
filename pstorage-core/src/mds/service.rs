//! The MDS service: drives [`MdsState`] from client and chunk server
//! requests, talking to chunk servers through [`ControlConnector`].
//!
//! Concurrency: the state, the command log and the volatile chunk server
//! liveness live behind one std `Mutex`, never held across an `.await`.
//! Every mutation is a [`Command`] committed through [`MdsService::commit`]:
//! with Raft attached ([`MdsService::attach_raft`]) it is proposed to the
//! group and applied by the Raft state machine (through [`StateHost`]) once
//! a majority has it durably; without Raft (tests, simulation) it is
//! validated, appended to the local [`CommandLog`] and applied under the
//! mutex. Either way a refused or failed command changes nothing and no
//! reader sees an undurable effect. A tokio `Mutex` serializes the
//! multi-step chunk map changes (allocation, failure handling, fencing,
//! registration) that call chunk servers between commits.
//!
//! Only the Raft leader serves requests and runs the periodic duties
//! (`tick`, re-replication); the volatile state (chunk server liveness,
//! copies in flight) starts afresh when an MDS becomes leader.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;

use super::params::ClusterParams;
use super::placement;
use super::raft::{MdsId, MdsRaft, RaftRequest, StateHost};
use super::state::{ApplyOutcome, Command, MdsState, NewEvent};
use super::store::{CommandLog, MdsStore};
use crate::error::{Error, ErrorKind, Result};
use crate::traits::{ChunkControl, Clock, ControlConnector, CsRegistry, MetadataService};
use crate::types::*;

/// Tunables of the MDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdsConfig {
    /// Shown by `pstorage stat`.
    pub cluster_name: String,
    /// How long a lease lasts after grant or renewal, in ms.
    pub lease_duration_ms: u64,
    /// Heartbeat interval chunk servers are told to use, in ms. A chunk
    /// server silent for 3 intervals is inactive.
    pub heartbeat_interval_ms: u64,
    /// Defaults of the cluster parameters (`set-config` overrides them).
    pub params: ClusterParams,
    /// This MDS's address, shown by `pstorage stat`.
    pub addr: String,
}

impl Default for MdsConfig {
    fn default() -> Self {
        MdsConfig {
            cluster_name: "pstorage".to_string(),
            lease_duration_ms: 30_000,
            heartbeat_interval_ms: 1_000,
            params: ClusterParams::default(),
            addr: String::new(),
        }
    }
}

/// What the MDS knows about a chunk server only while it runs.
#[derive(Debug, Clone)]
pub(super) struct CsLive {
    pub(super) last_heartbeat_ms: u64,
    pub(super) space: SpaceInfo,
    /// Bytes placed on it since its last space report: keeps a burst of
    /// allocations from all landing on the server that looked emptiest.
    pub(super) placed_bytes: u64,
    /// The last I/O counters and when they came.
    pub(super) stats: CsStats,
    pub(super) stats_ms: u64,
    pub(super) rates: IoRates,
    /// Below the fill margin at the last space report.
    pub(super) full: bool,
    /// It answered a write with ENOSPC while it reported this many free
    /// bytes: no new replicas until it reports more.
    pub(super) no_space_at_free: Option<u64>,
}

impl CsLive {
    pub(super) fn new(now_ms: u64, space: SpaceInfo) -> CsLive {
        CsLive {
            last_heartbeat_ms: now_ms,
            space,
            placed_bytes: 0,
            stats: CsStats::default(),
            stats_ms: now_ms,
            rates: IoRates::default(),
            full: false,
            no_space_at_free: None,
        }
    }
}

/// Re-replication progress (volatile).
#[derive(Debug, Default)]
pub(super) struct ReplProgress {
    /// When the current episode (some chunk needing copies) began.
    pub(super) episode_started_ms: Option<u64>,
    pub(super) episode_chunks: u64,
    pub(super) episode_bytes: u64,
    /// Chunks needing copies at the last planning round.
    pub(super) pending: u64,
    pub(super) in_flight: u64,
    pub(super) done_chunks: u64,
    pub(super) done_bytes: u64,
    pub(super) failed_chunks: u64,
    /// Bytes sent by finished copies (differing blocks only).
    pub(super) copied_bytes: u64,
    /// (time ms, bytes sent) of recent copy progress, for the rate.
    pub(super) recent: VecDeque<(u64, u64)>,
    /// Bytes left per copy in flight (chunk, target), from its last progress.
    pub(super) remaining: BTreeMap<(ChunkId, CsId), u64>,
}

pub(super) struct Core {
    pub(super) state: MdsState,
    log: Option<Box<dyn CommandLog>>,
    /// Chunk servers that registered since this MDS started.
    pub(super) live: BTreeMap<CsId, CsLive>,
    /// Chain members that reported an older version than the map at
    /// registration: `tick` pushes them the current version.
    pub(super) version_sync: BTreeMap<CsId, BTreeSet<ChunkId>>,
    /// Chunk ids handed to chunk servers but maybe not committed: never
    /// reused while this MDS runs.
    next_chunk_reserved: ChunkId,
    /// Chunks picked for re-replication whose copy has not started.
    pub(super) planned: BTreeSet<ChunkId>,
    /// Chunks whose last copy failed: not planned again before the backoff
    /// ends, and not onto the targets that failed ([`CopyBackoff`]).
    pub(super) copy_backoff: BTreeMap<ChunkId, super::healing::CopyBackoff>,
    /// Chunks being copied: their version was bumped and writers are told
    /// to wait (`Unavailable`) until the new chain is committed.
    pub(super) busy: BTreeSet<ChunkId>,
    /// The status each chunk server had at the last health check.
    pub(super) seen_status: BTreeMap<CsId, CsStatus>,
    pub(super) repl: ReplProgress,
    /// Replicas outside their chunk's chain that are kept as bases for a
    /// copy while the chunk has fewer than `replicas_norm` members: server
    /// -> chunk -> the replica's version (as last known). Filled by
    /// registrations, by drops from chains and by failed copies; emptied as
    /// the chunks get their copies (see `prune_stale`).
    pub(super) stale: BTreeMap<CsId, BTreeMap<ChunkId, MapVersion>>,
    /// Copies in flight per chunk server, as source or target.
    pub(super) copies_per_cs: BTreeMap<CsId, u64>,
    /// Chunks whose only reachable copies are stale ones (logged once).
    pub(super) stale_only: BTreeSet<ChunkId>,
    /// Chain members kept although their server registered them unclean
    /// (no other member was active). A member registering clean at the
    /// map's version is sure to be current (it holds every write the chain
    /// acknowledged since it joined, and lost none), so these leave the
    /// chain then (see `register_cs`).
    pub(super) unclean_kept: BTreeMap<ChunkId, BTreeSet<CsId>>,
    /// Chunks that lost a corrupt replica, with what was found: the event
    /// log says when each is repaired.
    pub(super) repairs: BTreeMap<ChunkId, String>,
    /// Commands go through Raft: events are queued for
    /// [`MdsService::flush_events`] instead of committed under the lock.
    replicated: bool,
    /// Events waiting to be committed (Raft mode).
    pending_events: Vec<(u64, Vec<NewEvent>)>,
    /// When this MDS became the leader (or started, without Raft): chunk
    /// servers get the offline timeout from then to register with it.
    pub(super) leader_since_ms: u64,
    /// The term this MDS leads in (`None`: not the leader).
    pub(super) led_term: Option<u64>,
    /// Bytes of chunks each chunk server holds (chunk sizes of the chains
    /// it is in), recounted every `tick` and grown by each placement in
    /// between: placement's fullness without a scan of every chunk.
    pub(super) held: BTreeMap<CsId, u64>,
    /// Rebalancing (volatile).
    pub(super) balance: super::balance::BalanceProgress,
}

impl Core {
    /// Validates, logs durably, then applies `cmd` (no Raft).
    fn commit_local(&mut self, cmd: Command) -> Result<ApplyOutcome> {
        debug_assert!(!self.replicated, "commands go through Raft");
        let prepared = self.state.prepare(&cmd)?;
        if let Some(log) = self.log.as_mut() {
            log.append(&cmd)?;
        }
        // A tagged command's refusal is a result too: it is logged and
        // remembered like an outcome.
        let outcome = self.state.execute(prepared);
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.applied(&self.state) {
                tracing::warn!("MDS store compaction failed (the log keeps growing): {e}");
            }
        }
        outcome
    }

    /// Appends events to the persistent event log (and the daemon's log).
    /// A failure to persist is logged, never fatal: events are a record,
    /// not a decision.
    pub(super) fn log_events(&mut self, now_ms: u64, events: Vec<NewEvent>) {
        if events.is_empty() {
            return;
        }
        for e in &events {
            match e.level {
                EventLevel::Info => tracing::info!("event ({}): {}", e.kind, e.message),
                _ => tracing::warn!("event ({}): {}", e.kind, e.message),
            }
        }
        if self.replicated {
            self.pending_events.push((now_ms, events));
        } else if let Err(e) = self.commit_local(Command::LogEvents { now_ms, events }) {
            tracing::warn!("MDS: cannot record events: {e}");
        }
    }

    /// [`Core::log_events`] of one event.
    pub(super) fn log_event(
        &mut self,
        now_ms: u64,
        kind: EventKind,
        level: EventLevel,
        message: String,
    ) {
        self.log_events(
            now_ms,
            vec![NewEvent {
                kind,
                level,
                message,
            }],
        );
    }

    /// The address of a chunk server as registered (empty if never).
    pub(super) fn cs_addr(&self, cs: CsId) -> String {
        self.state
            .cs(cs)
            .map(|r| r.addr.clone())
            .unwrap_or_default()
    }
}

/// The metadata server. `Send + Sync`; share it behind an `Arc`.
pub struct MdsService {
    core: Mutex<Core>,
    pub(super) chunk_lock: tokio::sync::Mutex<()>,
    pub(super) connector: Arc<dyn ControlConnector>,
    /// For `replicate_chunk` only: a copy has no whole-call deadline (its
    /// progress is watched instead), unlike every other control call.
    pub(super) copy_connector: Arc<dyn ControlConnector>,
    clock: Arc<dyn Clock>,
    pub(super) config: MdsConfig,
    /// The Raft group this MDS proposes its commands to, and its id there.
    raft: OnceLock<(MdsId, MdsRaft)>,
    /// Reachability probes of reported chunk servers and their drop budgets.
    probes: super::probe::Probes,
}

/// The free space a chunk server of `total_bytes` keeps before it gets no
/// new replicas: `mds.alloc.fill_margin` percent of its disk, at most
/// `mds.alloc.fill_margin_max` bytes.
pub(super) fn margin_bytes(params: &ClusterParams, total_bytes: u64) -> u64 {
    let percent = (total_bytes as u128) * (params.fill_margin_percent as u128) / 100;
    (percent.min(u64::MAX as u128) as u64).min(params.fill_margin_max_bytes)
}

pub(super) fn unexpected(outcome: ApplyOutcome) -> Error {
    Error::internal(format!("unexpected MDS apply outcome {outcome:?}"))
}

impl MdsService {
    /// A service over `state` whose commands go to `log` (`None`: memory only).
    pub fn new(
        state: MdsState,
        log: Option<Box<dyn CommandLog>>,
        connector: Arc<dyn ControlConnector>,
        clock: Arc<dyn Clock>,
        config: MdsConfig,
    ) -> MdsService {
        let leader_since_ms = clock.now_ms();
        let next_chunk_reserved = state.next_chunk_id();
        MdsService {
            core: Mutex::new(Core {
                state,
                log,
                live: BTreeMap::new(),
                version_sync: BTreeMap::new(),
                next_chunk_reserved,
                planned: BTreeSet::new(),
                copy_backoff: BTreeMap::new(),
                busy: BTreeSet::new(),
                seen_status: BTreeMap::new(),
                repl: ReplProgress::default(),
                stale: BTreeMap::new(),
                copies_per_cs: BTreeMap::new(),
                stale_only: BTreeSet::new(),
                unclean_kept: BTreeMap::new(),
                repairs: BTreeMap::new(),
                replicated: false,
                pending_events: Vec::new(),
                leader_since_ms,
                led_term: None,
                held: BTreeMap::new(),
                balance: Default::default(),
            }),
            chunk_lock: tokio::sync::Mutex::new(()),
            copy_connector: connector.clone(),
            connector,
            clock,
            config,
            raft: OnceLock::new(),
            probes: super::probe::Probes::default(),
        }
    }

    /// A service that loads its state from `store` and logs to it.
    pub fn with_store(
        store: MdsStore,
        connector: Arc<dyn ControlConnector>,
        clock: Arc<dyn Clock>,
        config: MdsConfig,
    ) -> Result<MdsService> {
        let state = store.load()?;
        Ok(MdsService::new(
            state,
            Some(Box::new(store)),
            connector,
            clock,
            config,
        ))
    }

    /// A service with no persistence (tests, simulation).
    pub fn in_memory(
        state: MdsState,
        connector: Arc<dyn ControlConnector>,
        clock: Arc<dyn Clock>,
        config: MdsConfig,
    ) -> MdsService {
        MdsService::new(state, None, connector, clock, config)
    }

    /// Makes chunk copies (`replicate_chunk`) go through `connector`, whose
    /// calls should have no whole-call deadline (a 1 GiB copy at a paced
    /// rate takes minutes); the MDS cancels a copy that stops making
    /// progress (`mds.repl.progress_tout`). By default copies use the
    /// connector given to [`MdsService::new`].
    pub fn with_copy_connector(mut self, connector: Arc<dyn ControlConnector>) -> MdsService {
        self.copy_connector = connector;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &MdsConfig {
        &self.config
    }

    /// A copy of the current state (tests, administration).
    pub fn state_snapshot(&self) -> MdsState {
        self.core().state.clone()
    }

    pub(super) fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().expect("MDS state mutex poisoned")
    }

    /// Makes every later command go through `raft` (this MDS is member
    /// `id`). Call once, before serving requests; the state must be the
    /// one the Raft state machine was built on (see [`StateHost`]).
    pub fn attach_raft(&self, id: MdsId, raft: MdsRaft) -> Result<()> {
        self.core().replicated = true;
        self.raft
            .set((id, raft))
            .map_err(|_| Error::internal("the MDS service already has a Raft group"))
    }

    /// The Raft group and this MDS's id in it, if attached.
    pub fn raft(&self) -> Option<&(MdsId, MdsRaft)> {
        self.raft.get()
    }

    /// Whether this MDS may serve and run leader duties now: always without
    /// Raft, else while its Raft node is the leader.
    pub fn is_leader(&self) -> bool {
        match self.raft.get() {
            None => true,
            Some((id, raft)) => raft.metrics().borrow().current_leader == Some(*id),
        }
    }

    /// Commits `cmd`: through Raft when attached (returns once a majority
    /// has it and it is applied here), else to the local log. The outcome
    /// is the state machine's, refusals included.
    pub(super) async fn commit(&self, cmd: Command) -> Result<ApplyOutcome> {
        let Some((_, raft)) = self.raft.get() else {
            return self.core().commit_local(cmd);
        };
        // Refuse what cannot apply without a round through the log, but
        // only from a state known to be current: a deposed leader or a
        // follower that missed the command creating a lease would refuse
        // that lease's holder for good ("lease unknown") instead of sending
        // it on to the leader.
        let validated = self.core().state.validate(&cmd);
        if validated.is_err() {
            self.read_barrier().await?;
            let revalidated = self.core().state.validate(&cmd);
            revalidated?;
        }
        // Bounded: a leader restored by its Raft node after a restart may
        // append entries that a newer leader neither commits nor replaces
        // for a long time, and Raft answers such a write only then. The
        // outcome of a write that times out is unknown (it may still
        // commit): callers must not undo what it depends on.
        match tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(RaftRequest { cmd })).await {
            Ok(Ok(reply)) => reply.data.into_result(),
            Ok(Err(e)) => Err(raft_write_error(e)),
            Err(_) => Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "the metadata group did not commit the command within {} s (this MDS may \
                     have lost its leadership); it may still take effect: retry",
                    COMMIT_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// `cmd` tagged with its client's `op` (exactly once), or as it is.
    fn tagged(&self, op: Option<OpTag>, cmd: Command) -> Command {
        match op {
            Some(op) => Command::Tagged {
                op,
                now_ms: self.now(),
                cmd: Box::new(cmd),
            },
            None => cmd,
        }
    }

    /// Waits until this MDS is sure it is the leader and has applied every
    /// committed command, so a read sees every acknowledged write (a deposed
    /// leader that does not know it yet fails here instead of serving stale
    /// metadata). A no-op without Raft.
    pub(super) async fn read_barrier(&self) -> Result<()> {
        let Some((_, raft)) = self.raft.get() else {
            return Ok(());
        };
        raft.ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(raft_read_error)
    }

    /// Commits the events queued by [`Core::log_events`] (Raft mode).
    /// Events are a record, not a decision: a failure is logged and the
    /// events dropped.
    pub(super) async fn flush_events(&self) {
        let batches = std::mem::take(&mut self.core().pending_events);
        let mut batches = batches.into_iter();
        while let Some((now_ms, events)) = batches.next() {
            let cmd = Command::LogEvents {
                now_ms,
                events: events.clone(),
            };
            if let Err(e) = self.commit(cmd).await {
                if e.kind() == ErrorKind::Unavailable && self.is_leader() {
                    // A leader still settling in: keep them for the next try.
                    let mut core = self.core();
                    let mut rest: Vec<_> =
                        std::iter::once((now_ms, events)).chain(batches).collect();
                    rest.append(&mut core.pending_events);
                    core.pending_events = rest;
                    return;
                }
                tracing::warn!("MDS: cannot record events: {e}");
            }
        }
    }

    pub(super) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The effective cluster parameters.
    pub(super) fn params(&self, core: &Core) -> ClusterParams {
        core.state.params(&self.config.params)
    }

    pub(super) fn cs_status(&self, core: &Core, cs: CsId, now_ms: u64) -> CsStatus {
        if core.state.cs(cs).is_some_and(|r| r.dropped) {
            return CsStatus::Dropped;
        }
        let offline_timeout_ms = self.params(core).offline_timeout_ms;
        match core.live.get(&cs) {
            // Not registered since this MDS started: it may hold stale
            // replicas it has not been told to delete, so it gets nothing new.
            None if now_ms.saturating_sub(core.leader_since_ms) > offline_timeout_ms => {
                CsStatus::Offline
            }
            None => CsStatus::Inactive,
            Some(l) => {
                let age = now_ms.saturating_sub(l.last_heartbeat_ms);
                if age > offline_timeout_ms {
                    CsStatus::Offline
                } else if age < 3 * self.config.heartbeat_interval_ms {
                    CsStatus::Active
                } else {
                    CsStatus::Inactive
                }
            }
        }
    }

    /// Commits `ExpireLeases` if any lease has expired.
    async fn expire_leases(&self, now_ms: u64) -> Result<()> {
        if self.core().state.has_expired_leases(now_ms) {
            self.commit(Command::ExpireLeases { now_ms }).await?;
        }
        Ok(())
    }

    /// Periodic duties; the daemon calls it about every second: expires
    /// leases (marking files for fencing), brings chain members that
    /// re-registered with an older version up to the map's version, tracks
    /// chunk server health (dropping offline servers from their chains),
    /// trims replicas beyond `replicas_norm`, deletes stale replicas whose
    /// chunks have their copies, and finishes graceful removals. Re-replication runs in [`MdsService::run_replication`].
    ///
    /// With Raft, only the leader does these; an MDS that just became the
    /// leader starts its chunk server bookkeeping afresh (they register
    /// with it within a heartbeat or two).
    pub async fn tick(&self) {
        if !self.track_leadership() {
            return;
        }
        let now = self.now();
        if let Err(e) = self.expire_leases(now).await {
            tracing::warn!("MDS: expiring leases failed: {e}");
        }
        self.sync_versions().await;
        self.check_health().await;
        self.trim_excess().await;
        self.prune_stale().await;
        self.check_domains();
        self.flush_events().await;
    }

    /// Runs the MDS's periodic work forever, as the daemon and the
    /// simulator do: [`tick`](MdsService::tick) every `tick_every`,
    /// [`leadership_changed`](MdsService::leadership_changed) whenever the
    /// Raft metrics change, and [`run_replication`](MdsService::run_replication).
    /// Each of them acts only while this MDS leads. Cancel it (drop the
    /// future) to stop.
    pub async fn run_duties(&self, tick_every: Duration) {
        let ticker = async {
            loop {
                tokio::time::sleep(tick_every).await;
                self.tick().await;
            }
        };
        let leadership = async {
            if let Some((_, raft)) = self.raft.get() {
                let mut metrics = raft.metrics();
                while metrics.changed().await.is_ok() {
                    self.leadership_changed().await;
                }
            }
            std::future::pending::<()>().await
        };
        let replication = self.run_replication();
        tokio::join!(ticker, leadership, replication);
    }

    /// Follows the Raft group's state (the daemon calls it whenever the
    /// Raft metrics change): takes over or drops the leader duties at once
    /// and records an election in the event log.
    pub async fn leadership_changed(&self) {
        if self.track_leadership() {
            self.flush_events().await;
        }
    }

    /// Whether this MDS is the leader now; on a change of leadership,
    /// resets the volatile leader state (liveness, copies, queued events).
    pub(super) fn track_leadership(&self) -> bool {
        let Some((id, raft)) = self.raft.get() else {
            return true;
        };
        let (leader, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.current_leader == Some(*id), m.current_term)
        };
        let now = self.now();
        let mut core = self.core();
        let led_term = if leader { Some(term) } else { None };
        if core.led_term != led_term {
            if leader {
                tracing::info!("MDS {id}: leader in term {term}; taking over the leader duties");
            } else if core.led_term.is_some() {
                tracing::info!("MDS {id}: no longer the leader; leader duties stopped");
            }
            core.led_term = led_term;
            core.leader_since_ms = now;
            core.live.clear();
            core.version_sync.clear();
            core.seen_status.clear();
            core.pending_events.clear();
            core.repl = ReplProgress::default();
            core.stale.clear();
            core.copies_per_cs.clear();
            core.stale_only.clear();
            core.repairs.clear();
            core.balance = Default::default();
            core.next_chunk_reserved = core.state.next_chunk_id();
            if leader {
                let addr = self.config.addr.clone();
                core.log_event(
                    now,
                    EventKind::Mds,
                    EventLevel::Info,
                    format!(
                        "MDS {id} ({addr}) was elected leader of the metadata group in term {term}"
                    ),
                );
            }
        }
        leader
    }

    async fn sync_versions(&self) {
        let pending = std::mem::take(&mut self.core().version_sync);
        if pending.is_empty() {
            return;
        }
        let _chunks = self.chunk_lock.lock().await;
        for (cs, chunks) in pending {
            let now = self.now();
            if self.cs_status(&self.core(), cs, now) != CsStatus::Active {
                // Pushed once it is heard from again (a push now would only
                // wait out its deadline under chunk_lock); what it no longer
                // holds in a chain is forgotten.
                let mut core = self.core();
                let kept: BTreeSet<ChunkId> = chunks
                    .into_iter()
                    .filter(|c| {
                        core.state
                            .chunk(*c)
                            .is_some_and(|r| r.replicas.contains(&cs))
                    })
                    .collect();
                if !kept.is_empty() {
                    core.version_sync.entry(cs).or_default().extend(kept);
                }
                continue;
            }
            for chunk in chunks {
                let map = self.core().state.chunk_map(chunk);
                let Some(map) = map else { continue };
                let Some(replica) = map.replicas.iter().find(|r| r.cs == cs).cloned() else {
                    continue;
                };
                if let Err(e) = self.push_version(&replica, chunk, map.version).await {
                    tracing::warn!(
                        "MDS: chunk {chunk:#x} replica on CS {cs} ({}) cannot move to version {}: {e}; dropping it",
                        replica.addr,
                        map.version
                    );
                    if let Err(e) = self.drop_replicas(chunk, vec![cs]).await {
                        tracing::warn!("MDS: {e}");
                    }
                    // The last member stays in its chain (never dropped):
                    // try again (at the next tick once it is active), or it
                    // is never a source and the chunk never heals.
                    let mut core = self.core();
                    let still_member = core
                        .state
                        .chunk(chunk)
                        .is_some_and(|r| r.replicas.contains(&cs));
                    if still_member {
                        core.version_sync.entry(cs).or_default().insert(chunk);
                    }
                }
            }
        }
    }

    pub(super) async fn push_version(
        &self,
        replica: &Replica,
        chunk: ChunkId,
        version: MapVersion,
    ) -> Result<()> {
        let what = format!("moving chunk {chunk:#x} to version {version}");
        self.cs_call(replica, &what, |control| async move {
            control.set_version(chunk, version).await
        })
        .await
    }

    /// The deadline of the MDS's own calls to chunk servers
    /// (`mds.cs.probe_tout`).
    pub(super) fn cs_call_timeout(&self) -> Duration {
        Duration::from_millis(self.params(&self.core()).cs_probe_timeout_ms)
    }

    /// Runs a short control call (`what`) on `replica`'s chunk server under
    /// the `mds.cs.probe_tout` deadline: `TimedOut` naming the server, the
    /// call and the deadline when it does not answer.
    pub(super) async fn cs_call<T, F, Fut>(
        &self,
        replica: &Replica,
        what: &str,
        call: F,
    ) -> Result<T>
    where
        F: FnOnce(Arc<dyn ChunkControl>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let timeout = self.cs_call_timeout();
        let attempt = async {
            let control = self.connector.chunk_control(&replica.addr).await?;
            call(control).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::TimedOut,
                format!(
                    "chunk server {} ({}) did not answer {what} within {} ms (mds.cs.probe_tout)",
                    replica.cs,
                    replica.addr,
                    timeout.as_millis()
                ),
            )),
        }
    }

    /// Whether the MDS itself reaches chunk server `cs` (a cached verdict,
    /// the probe in flight, or a new probe; see `probe.rs`). Call without
    /// `chunk_lock` where possible: it waits up to `mds.cs.probe_tout`.
    pub(super) async fn probe_cs(&self, cs: CsId, addr: &str) -> super::probe::Verdict {
        let params = self.params(&self.core());
        self.probes
            .probe(
                cs,
                addr,
                self.connector.clone(),
                Duration::from_millis(params.cs_probe_timeout_ms),
                Duration::from_millis(params.cs_probe_cache_ms),
            )
            .await
    }

    /// Pushes `version` to every replica of `map`; returns those that
    /// failed, except members that did not answer in time but that a probe
    /// finds reachable (slow, not dead): they stay in the chain and `tick`
    /// pushes them the version again (a write at the new version is refused
    /// by them until then, and the writer's `VersionMismatch` report pushes
    /// it too).
    pub(super) async fn push_or_keep(&self, map: &ChunkMap) -> Vec<CsId> {
        let failed = self.push_to_all_detailed(map).await;
        let mut dropped = Vec::new();
        for (cs, error) in failed {
            let reachability = matches!(error.kind(), ErrorKind::TimedOut | ErrorKind::Unavailable);
            let addr = self.core().cs_addr(cs);
            if reachability && self.probe_cs(cs, &addr).await.reachable {
                tracing::warn!(
                    "MDS: chunk {:#x}: CS {cs} ({addr}) did not take version {} ({error}) but answers probes; it stays in the chain and gets the version later",
                    map.chunk,
                    map.version
                );
                self.core()
                    .version_sync
                    .entry(cs)
                    .or_default()
                    .insert(map.chunk);
            } else {
                dropped.push(cs);
            }
        }
        dropped
    }

    /// Pushes `version` to every replica of `map`; returns those that failed.
    pub(super) async fn push_to_all(&self, map: &ChunkMap) -> Vec<CsId> {
        self.push_to_all_detailed(map)
            .await
            .into_iter()
            .map(|(cs, _)| cs)
            .collect()
    }

    /// Pushes `version` to every replica of `map`; returns the failures.
    async fn push_to_all_detailed(&self, map: &ChunkMap) -> Vec<(CsId, Error)> {
        let results = join_all(
            map.replicas
                .iter()
                .map(|r| self.push_version(r, map.chunk, map.version)),
        )
        .await;
        map.replicas
            .iter()
            .zip(results)
            .filter_map(|(r, res)| match res {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(
                        "MDS: chunk {:#x} replica on CS {} ({}) did not take version {}: {e}",
                        map.chunk,
                        r.cs,
                        r.addr,
                        map.version
                    );
                    Some((r.cs, e))
                }
            })
            .collect()
    }

    /// Drops `failed` from the chunk's chain at a new version and pushes it
    /// to the survivors, dropping survivors that fail too. The last replica
    /// is never dropped. `Unavailable` when fewer than `replicas_min`
    /// remain. Callers hold `chunk_lock`.
    pub(super) async fn drop_replicas(
        &self,
        chunk: ChunkId,
        mut failed: Vec<CsId>,
    ) -> Result<ChunkMap> {
        loop {
            // The survivors to commit, or the current map if nothing drops.
            let plan = {
                let mut core = self.core();
                let current = core.state.chunk_map(chunk).ok_or_else(|| {
                    Error::not_found(format!("chunk {chunk:#x} no longer exists"))
                })?;
                let survivors: Vec<CsId> = current
                    .replicas
                    .iter()
                    .map(|r| r.cs)
                    .filter(|cs| !failed.contains(cs))
                    .collect();
                // Nothing to drop, or dropping the last copy, which would
                // turn a transient failure into data loss: keep it and let
                // the caller wait.
                if survivors.len() == current.replicas.len() || survivors.is_empty() {
                    if survivors.is_empty() {
                        // The last member is kept though it failed (maybe a
                        // version push): `tick` pushes it the map's version
                        // once it is active, else it is never a copy source
                        // and the chunk stays at one replica for good.
                        for r in &current.replicas {
                            core.version_sync.entry(r.cs).or_default().insert(chunk);
                        }
                    }
                    Err(current)
                } else {
                    let dropped: Vec<CsId> = current
                        .replicas
                        .iter()
                        .map(|r| r.cs)
                        .filter(|cs| failed.contains(cs))
                        .collect();
                    Ok((current.version, survivors, dropped))
                }
            };
            let (map, survivors) = match plan {
                Err(current) => (current, None),
                Ok((version, survivors, dropped)) => {
                    let outcome = self
                        .commit(Command::UpdateChunkMap {
                            chunk,
                            version: version + 1,
                            replicas: survivors.clone(),
                        })
                        .await?;
                    let ApplyOutcome::ChunkMap(map) = outcome else {
                        return Err(unexpected(outcome));
                    };
                    // What the dropped members hold is the chunk at
                    // `version` plus maybe unacknowledged writes: a base
                    // that a later copy to them only has to patch.
                    self.remember_stale(chunk, &dropped, version);
                    (map, Some(survivors.len()))
                }
            };
            if survivors.is_none() || survivors == Some(0) {
                return self.check_min(map);
            }
            failed = self.push_or_keep(&map).await;
            if failed.is_empty() {
                return self.check_min(map);
            }
        }
    }

    /// `Unavailable` naming the file and counts if `map` is below `replicas_min`.
    pub(super) fn check_min(&self, map: ChunkMap) -> Result<ChunkMap> {
        Self::check_min_in(&self.core(), map)
    }

    fn check_min_in(core: &Core, map: ChunkMap) -> Result<ChunkMap> {
        let Some(rec) = core.state.chunk(map.chunk) else {
            return Ok(map);
        };
        let attrs = core
            .state
            .inode(rec.file)
            .map(|n| n.attrs)
            .unwrap_or_default();
        if map.replicas.len() < attrs.replicas.min as usize {
            return Err(Error::unavailable(format!(
                "chunk {:#x} (index {}) of {}: {} of the {} required replicas (replicas={}) are available; writes wait until chunk servers return",
                map.chunk,
                map.index,
                core.state.path_of(rec.file),
                map.replicas.len(),
                attrs.replicas.min,
                attrs.replicas
            )));
        }
        Ok(map)
    }

    /// Fences file `ino` after its writer was lost (its lease expired or
    /// was revoked): bumps every chunk (`BeginFence`: the lost writer's
    /// writes are refused from then on) and pushes the new versions, then
    /// brings each chain to one content ([`MdsService::reconcile_chain`]),
    /// then clears `fence_pending` (`FinishFence`). A writer lost in the
    /// middle of a chain write may have left its blocks written on some
    /// members and not on others; without this, reads rotating over the
    /// members would return two contents for one block. If the MDS stops
    /// before `FinishFence`, the next open fences again. Callers hold
    /// `chunk_lock`.
    async fn fence(&self, ino: InodeId) -> Result<()> {
        let outcome = self.commit(Command::BeginFence { ino }).await?;
        let ApplyOutcome::Fenced(maps) = outcome else {
            return Err(unexpected(outcome));
        };
        for map in &maps {
            let failed = self.push_or_keep(map).await;
            if !failed.is_empty() {
                // The file opens anyway; writes to a chunk below
                // replicas_min report Unavailable until it recovers.
                if let Err(e) = self.drop_replicas(map.chunk, failed).await {
                    tracing::warn!("MDS: fencing: {e}");
                }
            }
        }
        for map in &maps {
            self.reconcile_chain(map.chunk).await;
        }
        self.commit(Command::FinishFence { ino }).await?;
        Ok(())
    }

    /// Makes every member of `chunk`'s chain identical to one source
    /// member: the first one, in chain order, whose server is active and
    /// took the chain's version (the head when it can: a chain write
    /// reaches it first, so it holds every write any member holds). Each
    /// other member copies from it the blocks whose CRC-table entries
    /// differ (`replicate_chunk` in place, at the chain's version;
    /// identical members cost one CRC-table comparison). A member whose
    /// copy fails leaves the chain (a failed in-place copy leaves it a mix
    /// of both contents, refused until a later copy finishes): it is a
    /// stale replica that re-replication brings back. The source is never
    /// dropped here, so the chain always keeps an intact member. With no
    /// usable source (every member inactive or behind on its version)
    /// nothing is copied and the chain is left as it is. Callers hold
    /// `chunk_lock`.
    async fn reconcile_chain(&self, chunk: ChunkId) {
        let job = {
            let core = self.core();
            let Some(map) = core.state.chunk_map(chunk) else {
                return;
            };
            let Some(rec) = core.state.chunk(chunk) else {
                return;
            };
            if map.replicas.len() < 2 {
                return;
            }
            let now = self.now();
            let usable = |r: &Replica| self.can_be_source(&core, r.cs, chunk, now);
            let Some(source) = map.replicas.iter().find(|r| usable(r)).cloned() else {
                tracing::warn!(
                    "MDS: chunk {chunk:#x}: no member can be the source to bring its chain to one content; left as it is"
                );
                return;
            };
            super::healing::CopyJob {
                chunk,
                version: map.version,
                chunk_size: core
                    .state
                    .inode(rec.file)
                    .map(|n| n.attrs.chunk_size)
                    .unwrap_or(0),
                path: core.state.path_of(rec.file),
                index: map.index,
                targets: map
                    .replicas
                    .iter()
                    .filter(|r| r.cs != source.cs)
                    .cloned()
                    .collect(),
                source,
                moving_from: None,
            }
        };
        let mut failed = Vec::new();
        for target in &job.targets {
            match self.replicate_watched(&job, target, job.version, 0).await {
                Ok(stats) if stats.bytes_copied > 0 => {
                    let now = self.now();
                    self.core().log_event(
                        now,
                        EventKind::Replication,
                        EventLevel::Warning,
                        format!(
                            "chunk {chunk:#x} (index {}) of {}: its writer was lost mid-write; \
                             {} bytes on CS {} differed from CS {} and were resynced",
                            job.index, job.path, stats.bytes_copied, target.cs, job.source.cs
                        ),
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        "MDS: chunk {chunk:#x}: bringing CS {} to the content of CS {} failed: {e}; it leaves the chain",
                        target.cs,
                        job.source.cs
                    );
                    failed.push(target.cs);
                }
            }
        }
        if !failed.is_empty() {
            if let Err(e) = self.drop_replicas(chunk, failed).await {
                tracing::warn!("MDS: chunk {chunk:#x}: {e}");
            }
        }
    }

    /// Deletes released chunks on their servers; failures only leave
    /// orphans that the next registration of that server deletes.
    pub(super) async fn delete_replicas(&self, maps: Vec<ChunkMap>) {
        for map in maps {
            for r in &map.replicas {
                let chunk = map.chunk;
                let res = self
                    .cs_call(
                        r,
                        &format!("deleting chunk {chunk:#x}"),
                        |control| async move { control.delete_chunk(chunk).await },
                    )
                    .await;
                if let Err(e) = res {
                    tracing::warn!(
                        "MDS: deleting chunk {:#x} on CS {} ({}) failed: {e}; it is removed when that server re-registers",
                        map.chunk,
                        r.cs,
                        r.addr
                    );
                }
            }
        }
    }

    /// Whether new replicas may go to `cs`: active, registered, not being
    /// released, above the fill margin, and no recent ENOSPC.
    pub(super) fn takes_new_replicas(&self, core: &Core, cs: CsId, now_ms: u64) -> bool {
        let Some(rec) = core.state.cs(cs) else {
            return false;
        };
        if rec.addr.is_empty() || rec.releasing {
            return false;
        }
        if self.cs_status(core, cs, now_ms) != CsStatus::Active {
            return false;
        }
        let live = &core.live[&cs];
        live.no_space_at_free.is_none() && !self.below_margin(core, live, live.placed_bytes)
    }

    /// Whether `live` has less free space than the fill margin (see
    /// [`margin_bytes`]) once
    /// `extra_bytes` more are placed on it. A server that reports no total
    /// (unknown size) is never considered full.
    pub(super) fn below_margin(&self, core: &Core, live: &CsLive, extra_bytes: u64) -> bool {
        let total = live.space.total_bytes;
        if total == 0 {
            return false;
        }
        let free = live.space.free_bytes.saturating_sub(extra_bytes);
        free < margin_bytes(&self.params(core), total)
    }

    /// Picks up to `count` distinct servers of `attrs`' tier that take new
    /// replicas, are not in `members` or `exclude`, spread over `attrs`'
    /// failure domains given the domains `members` already use, emptiest
    /// first ([`placement::choose`]).
    pub(super) fn place(
        &self,
        core: &Core,
        now_ms: u64,
        attrs: &FileAttrs,
        members: &[CsId],
        exclude: &[CsId],
        count: usize,
    ) -> Vec<CsId> {
        let servers = self.server_views(core, now_ms);
        placement::choose(
            &servers,
            &placement::Request {
                tier: attrs.tier,
                domain: attrs.failure_domain,
                members,
                exclude,
                count,
                chunk_bytes: attrs.chunk_size,
            },
        )
    }

    /// Every chunk server that is not dropped, as placement sees it.
    pub(super) fn server_views(&self, core: &Core, now_ms: u64) -> Vec<placement::ServerView> {
        core.state
            .servers()
            .filter(|r| !r.dropped)
            .map(|r| {
                let live = core.live.get(&r.id);
                let capacity_bytes = if r.capacity_bytes > 0 {
                    r.capacity_bytes
                } else {
                    live.map(|l| l.space.total_bytes).unwrap_or(0)
                };
                let active = !r.addr.is_empty()
                    && !r.releasing
                    && self.cs_status(core, r.id, now_ms) == CsStatus::Active;
                placement::ServerView {
                    id: r.id,
                    location: r.location.clone(),
                    host: r.host.clone(),
                    tier: r.tier,
                    held_bytes: core.held.get(&r.id).copied().unwrap_or(0),
                    capacity_bytes,
                    free_bytes: live
                        .map(|l| l.space.free_bytes.saturating_sub(l.placed_bytes))
                        .unwrap_or(0),
                    eligible: active && self.takes_new_replicas(core, r.id, now_ms),
                    active,
                }
            })
            .collect()
    }

    /// Recounts [`Core::held`] from the chunk maps (O(replicas)).
    pub(super) fn recount_held(core: &mut Core) {
        let mut held: BTreeMap<CsId, u64> = BTreeMap::new();
        let state = &core.state;
        for (_, rec) in state.chunks() {
            let size = state
                .inode(rec.file)
                .map(|n| n.attrs.chunk_size)
                .unwrap_or(0);
            for cs in &rec.replicas {
                *held.entry(*cs).or_default() += size;
            }
        }
        core.held = held;
    }

    /// Active servers not being released (whatever their space).
    fn active_servers(&self, core: &Core, now_ms: u64) -> usize {
        core.state
            .servers()
            .filter(|r| !r.addr.is_empty() && !r.releasing)
            .filter(|r| self.cs_status(core, r.id, now_ms) == CsStatus::Active)
            .count()
    }

    async fn allocate_chunk(&self, lease: LeaseId, index: u64) -> Result<ChunkMap> {
        let _chunks = self.chunk_lock.lock().await;
        let now = self.now();
        let (chunk, chosen, attrs, path) = {
            let mut core = self.core();
            let ino = core.state.check_lease(lease, now, true)?.ino;
            if let Some(map) = core.state.file_chunk_map(ino, index) {
                return Ok(map);
            }
            let attrs = core.state.inode(ino).expect("leased file").attrs;
            let path = core.state.path_of(ino);
            let mut chosen = self.place(&core, now, &attrs, &[], &[], attrs.replicas.norm as usize);
            if chosen.len() < attrs.replicas.min as usize {
                let in_tier = core
                    .state
                    .servers()
                    .filter(|r| !r.dropped && !r.addr.is_empty() && r.tier == attrs.tier)
                    .count();
                let registered = core
                    .state
                    .servers()
                    .filter(|r| !r.dropped && !r.addr.is_empty())
                    .count();
                if in_tier < attrs.replicas.min as usize
                    && registered >= attrs.replicas.min as usize
                {
                    return Err(Error::unavailable(format!(
                        "cannot allocate chunk {index} of {path}: tier {} has {in_tier} chunk server(s), replicas={} needs at least {}; add chunk servers to tier {} (make-cs -t {}, set-cs ID tier={}) or set another tier on the file (set-attr {path} tier=N)",
                        attrs.tier, attrs.replicas, attrs.replicas.min, attrs.tier, attrs.tier, attrs.tier
                    )));
                }
                let active = self.active_servers(&core, now);
                if active >= attrs.replicas.min as usize {
                    let params = self.params(&core);
                    let margin = params.fill_margin_percent;
                    let max = params.fill_margin_max_bytes;
                    return Err(Error::new(
                        ErrorKind::NoSpace,
                        format!(
                            "cannot allocate chunk {index} of {path}: no space: only {} of {active} active chunk server(s) have more free disk than mds.alloc.fill_margin={margin}% (at most mds.alloc.fill_margin_max={max} bytes), replicas={} needs {}; free space or add chunk servers",
                            chosen.len(),
                            attrs.replicas,
                            attrs.replicas.min
                        ),
                    ));
                }
                return Err(Error::unavailable(format!(
                    "cannot allocate chunk {index} of {path}: {active} chunk server(s) active, replicas={} needs at least {}; start more chunk servers or lower replicas",
                    attrs.replicas, attrs.replicas.min
                )));
            }
            // From a range of ids of this node's current Raft term (the
            // term any commit it makes now is in). A deposed leader
            // that does not know it yet (frozen, cut off) may still create
            // replicas here, and deletes them when its commit fails: were
            // its ids the new leader's, that would delete the new leader's
            // chunks (creating an existing chunk succeeds, so it would take
            // them for its own).
            let term = self
                .raft
                .get()
                .map(|(_, raft)| raft.metrics().borrow().current_term);
            let chunk = core
                .next_chunk_reserved
                .max(core.state.next_chunk_id())
                .max(term_chunk_floor(term));
            core.next_chunk_reserved = chunk + 1;
            placement::rotate_head(chunk, &mut chosen);
            let chosen: Vec<Replica> = chosen
                .into_iter()
                .map(|cs| Replica {
                    cs,
                    addr: core
                        .state
                        .cs(cs)
                        .expect("placed on a known server")
                        .addr
                        .clone(),
                })
                .collect();
            (chunk, chosen, attrs, path)
        };
        let what = format!("creating chunk {chunk:#x}");
        let results = join_all(chosen.iter().map(|r| {
            self.cs_call(r, &what, |control| async move {
                control
                    .create_chunk(chunk, MapVersion(1), attrs.chunk_size)
                    .await
            })
        }))
        .await;
        let mut created = Vec::new();
        for (r, res) in chosen.iter().zip(results) {
            match res {
                Ok(()) => created.push(r.clone()),
                Err(e) => tracing::warn!(
                    "MDS: creating chunk {chunk:#x} of {path} on CS {} ({}) failed: {e}",
                    r.cs,
                    r.addr
                ),
            }
        }
        let orphan = |replicas: Vec<Replica>| ChunkMap {
            chunk,
            index,
            version: MapVersion(1),
            replicas,
        };
        if created.len() < attrs.replicas.min as usize {
            let n = created.len();
            self.delete_replicas(vec![orphan(created)]).await;
            return Err(Error::unavailable(format!(
                "cannot allocate chunk {index} of {path}: only {n} of {} chosen chunk servers created it, replicas={} needs {}",
                chosen.len(),
                attrs.replicas,
                attrs.replicas.min
            )));
        }
        let committed = {
            let result = self
                .commit(Command::AllocateChunk {
                    lease,
                    index,
                    chunk,
                    version: MapVersion(1),
                    replicas: created.iter().map(|r| r.cs).collect(),
                    now_ms: now,
                })
                .await;
            let mut core = self.core();
            if result.is_ok() {
                for r in &created {
                    if let Some(live) = core.live.get_mut(&r.cs) {
                        live.placed_bytes = live.placed_bytes.saturating_add(attrs.chunk_size);
                    }
                    *core.held.entry(r.cs).or_default() += attrs.chunk_size;
                }
            }
            result
        };
        match committed {
            Ok(ApplyOutcome::ChunkMap(map)) => Ok(map),
            Ok(other) => Err(unexpected(other)),
            // It may still commit: the replicas stay (deleted at their
            // servers' next registration if it did not).
            Err(e) if e.kind() == ErrorKind::TimedOut => Err(e),
            Err(e) => {
                self.delete_replicas(vec![orphan(created)]).await;
                Err(e)
            }
        }
    }

    /// Marks a chunk server as removed by the administrator and drops it
    /// from every chain (bumping versions); re-replication restores the
    /// copies (`rm-cs --force`). The last copy of a chunk stays in its chain.
    pub async fn drop_cs(&self, cs: CsId) -> Result<()> {
        let _chunks = self.chunk_lock.lock().await;
        let now = self.now();
        let was_dropped = self.core().state.cs(cs).is_some_and(|r| r.dropped);
        self.commit(Command::DropCs { cs }).await?;
        let chunks: Vec<ChunkId> = {
            let mut core = self.core();
            core.live.remove(&cs);
            core.version_sync.remove(&cs);
            core.stale.remove(&cs);
            if !was_dropped {
                let addr = core.cs_addr(cs);
                core.log_event(
                    now,
                    EventKind::CsState,
                    EventLevel::Warning,
                    format!("chunk server {cs} ({addr}) dropped by the administrator"),
                );
            }
            core.state
                .chunks()
                .filter(|(_, r)| r.replicas.contains(&cs))
                .map(|(&c, _)| c)
                .collect()
        };
        for chunk in chunks {
            if let Err(e) = self.drop_replicas(chunk, vec![cs]).await {
                tracing::warn!("MDS: dropping CS {cs}: {e}");
            }
        }
        self.flush_events().await;
        Ok(())
    }

    /// `Unavailable` when a writer must not use `map` now: the chunk is
    /// being re-replicated, or has fewer than `replicas_min` replicas.
    fn check_writable(&self, core: &Core, map: ChunkMap) -> Result<ChunkMap> {
        if core.busy.contains(&map.chunk) {
            let path = core
                .state
                .chunk(map.chunk)
                .map(|r| core.state.path_of(r.file))
                .unwrap_or_default();
            return Err(Error::unavailable(format!(
                "chunk {:#x} (index {}) of {path} is being re-replicated; retry",
                map.chunk, map.index
            )));
        }
        Self::check_min_in(core, map)
    }
}

#[async_trait]
impl MetadataService for MdsService {
    async fn open(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        op: Option<OpTag>,
    ) -> Result<OpenReply> {
        let _chunks = self.chunk_lock.lock().await;
        let now = self.now();
        self.expire_leases(now).await?;
        let fence_ino = {
            let core = self.core();
            core.state
                .lookup(path)
                .ok()
                .and_then(|ino| core.state.inode(ino))
                .filter(|n| n.kind == InodeKind::File && n.fence_pending)
                .map(|n| n.ino)
        };
        if let Some(ino) = fence_ino {
            self.fence(ino).await?;
        }
        let outcome = self
            .commit(self.tagged(
                op,
                Command::Open {
                    path: path.to_string(),
                    mode,
                    flags,
                    now_ms: now,
                    lease_duration_ms: self.config.lease_duration_ms,
                },
            ))
            .await?;
        let ApplyOutcome::Opened {
            lease,
            stat,
            released,
        } = outcome
        else {
            return Err(unexpected(outcome));
        };
        if self.core().state.lease(lease.id).is_none() {
            // A repeated attempt replayed an answer whose lease has ended
            // since (expired while the answer was lost).
            return Err(Error::stale(format!(
                "open {path}: this request was granted lease {} before, which has ended since; open again",
                lease.id
            )));
        }
        drop(_chunks);
        self.delete_replicas(released).await;
        let io_timeouts = self.params(&self.core()).io_timeouts();
        Ok(OpenReply {
            lease,
            stat,
            io_timeouts,
        })
    }

    async fn renew(&self, lease: LeaseId) -> Result<()> {
        let now = self.now();
        self.commit(Command::RenewLease { lease, now_ms: now })
            .await
            .map(|_| ())
    }

    async fn close(&self, lease: LeaseId) -> Result<()> {
        let now = self.now();
        if self.core().state.lease(lease).is_none() {
            return Ok(());
        }
        self.commit(Command::ReleaseLease { lease, now_ms: now })
            .await
            .map(|_| ())
    }

    async fn stat(&self, path: &str) -> Result<Stat> {
        self.read_barrier().await?;
        let core = self.core();
        let ino = core.state.lookup(path)?;
        Ok(core.state.stat_of(ino).expect("looked up"))
    }

    async fn mkdir(&self, path: &str, parents: bool, op: Option<OpTag>) -> Result<Stat> {
        let outcome = self
            .commit(self.tagged(
                op,
                Command::Mkdir {
                    path: path.to_string(),
                    parents,
                    now_ms: self.now(),
                },
            ))
            .await?;
        match outcome {
            ApplyOutcome::Stat(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.read_barrier().await?;
        self.core().state.readdir(path)
    }

    async fn unlink(&self, path: &str, op: Option<OpTag>) -> Result<()> {
        let outcome = self
            .commit(self.tagged(
                op,
                Command::Unlink {
                    path: path.to_string(),
                    now_ms: self.now(),
                },
            ))
            .await?;
        let ApplyOutcome::Released(released) = outcome else {
            return Err(unexpected(outcome));
        };
        self.delete_replicas(released).await;
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str, op: Option<OpTag>) -> Result<()> {
        let outcome = self
            .commit(self.tagged(
                op,
                Command::Rename {
                    from: from.to_string(),
                    to: to.to_string(),
                    now_ms: self.now(),
                },
            ))
            .await?;
        match outcome {
            ApplyOutcome::Released(released) => {
                self.delete_replicas(released).await;
                Ok(())
            }
            ApplyOutcome::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn set_attr(
        &self,
        path: &str,
        update: AttrUpdate,
        recursive: bool,
        op: Option<OpTag>,
    ) -> Result<()> {
        self.commit(self.tagged(
            op,
            Command::SetAttr {
                path: path.to_string(),
                update,
                recursive,
                now_ms: self.now(),
            },
        ))
        .await
        .map(|_| ())
    }

    async fn chunk_map(
        &self,
        lease: LeaseId,
        index: u64,
        allocate: bool,
    ) -> Result<Option<ChunkMap>> {
        self.read_barrier().await?;
        let now = self.now();
        {
            let core = self.core();
            let rec = core.state.check_lease(lease, now, allocate)?;
            let (ino, writer) = (rec.ino, rec.mode == LeaseMode::Write);
            if let Some(map) = core.state.file_chunk_map(ino, index) {
                // The holder of the write lease is the only client that can
                // write the file: it gets no map it must not write through.
                if writer {
                    return self.check_writable(&core, map).map(Some);
                }
                return Ok(Some(map));
            }
        }
        if !allocate {
            return Ok(None);
        }
        self.allocate_chunk(lease, index).await.map(Some)
    }

    async fn report_failure(
        &self,
        lease: LeaseId,
        chunk: ChunkId,
        version: MapVersion,
        cs: CsId,
        reason: FailureReason,
    ) -> Result<ChunkMap> {
        // The answer comes from this MDS's state (the lease, the current
        // map): it must be the leader's, not a deposed leader's.
        self.read_barrier().await?;
        if reason.is_reachability() {
            // The reporter's view is evidence: check it from here first,
            // without chunk_lock (a probe may wait mds.cs.probe_tout).
            let replica = match self.check_report(lease, chunk, version, cs)? {
                ReportCheck::Answer(answer) => return answer,
                ReportCheck::Drop(replica) => replica,
            };
            let verdict = self.probe_cs(cs, &replica.addr).await;
            if verdict.reachable {
                if reason == FailureReason::TimedOut {
                    self.fence_attempts_in_flight(lease, chunk, version, cs)
                        .await?;
                }
                return Err(Error::unavailable(format!(
                    "chunk server {cs} ({}) is reachable from the MDS; its replica of chunk \
                     {chunk:#x} stays in the chain (a slow or partitioned server is not \
                     dropped on one client's report); retrying",
                    replica.addr
                )));
            }
        }
        let _chunks = self.chunk_lock.lock().await;
        let replica = match self.check_report(lease, chunk, version, cs)? {
            ReportCheck::Answer(answer) => return answer,
            ReportCheck::Drop(replica) => replica,
        };
        if reason == FailureReason::VersionMismatch {
            // A chain member behind the map only missed a version push (no
            // write can complete at a version a member lacks), so it is
            // current: move it forward instead of dropping a good copy.
            if self.push_version(&replica, chunk, version).await.is_ok() {
                return self.current_for_reporter(lease, chunk);
            }
        }
        if reason.is_reachability() {
            let params = self.params(&self.core());
            if !self.probes.take_drop(
                cs,
                params.report_drop_burst,
                params.report_drop_rate_per_min,
            ) {
                return Err(Error::unavailable(format!(
                    "chunk server {cs} ({}) does not answer the MDS either, but failure \
                     reports dropped {} of its replicas in a burst (mds.report.drop_burst, \
                     refilled at mds.report.drop_rate={}/min); chunk {chunk:#x} keeps it for \
                     now; retrying",
                    replica.addr, params.report_drop_burst, params.report_drop_rate_per_min
                )));
            }
        }
        tracing::info!(
            "MDS: dropping CS {cs} ({}) from chunk {chunk:#x} version {version}: {reason:?}",
            replica.addr
        );
        self.note_bad_replica(cs, &replica.addr, chunk, reason, "a client");
        self.flush_events().await;
        let dropped = self.drop_replicas(chunk, vec![cs]).await;
        if reason == FailureReason::Corrupt {
            // A bad replica is never a base for a copy.
            self.forget_stale(cs, chunk);
        }
        dropped
    }

    async fn commit_size(&self, lease: LeaseId, size: u64) -> Result<()> {
        self.commit(Command::CommitSize {
            lease,
            size,
            now_ms: self.now(),
        })
        .await
        .map(|_| ())
    }

    async fn truncate(&self, lease: LeaseId, size: u64) -> Result<()> {
        let outcome = self
            .commit(Command::Truncate {
                lease,
                size,
                now_ms: self.now(),
            })
            .await?;
        let ApplyOutcome::Released(released) = outcome else {
            return Err(unexpected(outcome));
        };
        self.delete_replicas(released).await;
        Ok(())
    }

    async fn file_chunks(&self, path: &str) -> Result<Vec<ChunkMap>> {
        self.read_barrier().await?;
        let core = self.core();
        let ino = core.state.lookup(path)?;
        if core.state.inode(ino).map(|n| n.kind) == Some(InodeKind::Dir) {
            return Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path} is a directory; chunks belong to files"),
            ));
        }
        Ok(core.state.file_chunk_maps(ino))
    }

    async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.read_barrier().await?;
        Ok(self.status())
    }

    async fn get_config(&self) -> Result<Vec<ConfigEntry>> {
        self.read_barrier().await?;
        let core = self.core();
        Ok(self.config.params.entries(core.state.param_overrides()))
    }

    async fn set_config(&self, key: &str, value: u64) -> Result<()> {
        let now = self.now();
        self.commit(Command::SetParam {
            key: key.to_string(),
            value,
            now_ms: now,
        })
        .await
        .map(|_| ())
    }

    async fn event_log(&self, after_seq: u64) -> Result<Vec<Event>> {
        self.read_barrier().await?;
        Ok(self.core().state.events_after(after_seq).cloned().collect())
    }

    async fn remove_cs(&self, cs: CsId, force: bool) -> Result<()> {
        if force {
            return self.drop_cs(cs).await;
        }
        let now = self.now();
        let _chunks = self.chunk_lock.lock().await;
        self.commit(Command::SetCsReleasing {
            cs,
            releasing: true,
            now_ms: now,
        })
        .await
        .map(|_| ())
    }

    async fn set_cs(&self, cs: CsId, update: CsPlacementUpdate) -> Result<()> {
        let now = self.now();
        self.commit(Command::SetCsPlacement {
            cs,
            update,
            now_ms: now,
        })
        .await?;
        self.flush_events().await;
        Ok(())
    }
}

/// Why `register_cs` takes an unclean replica out of its chain.
#[derive(Debug, Clone, Copy)]
enum Suspect {
    /// Registered unclean while another member of the chain is active.
    BesideActive,
    /// Kept unclean earlier (no member was active); a member registered
    /// clean at the map's version since.
    Superseded,
}

#[async_trait]
impl CsRegistry for MdsService {
    async fn allocate_cs_id(&self) -> Result<CsId> {
        match self.commit(Command::AllocateCsId).await? {
            ApplyOutcome::CsId(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    async fn register_cs(&self, registration: CsRegistration) -> Result<RegisterReply> {
        let CsRegistration {
            id,
            addr,
            space,
            chunks,
            unclean,
        } = registration;
        let unclean: BTreeSet<ChunkId> = unclean.into_iter().collect();
        // The answer tells the server what to delete: only a leader that
        // is sure of its leadership and has applied every committed command
        // may give it (a deposed or restarted one could know fewer chunks).
        self.read_barrier().await?;
        // Serialized with allocation: a chunk being created right now must
        // not look like an orphan to be deleted.
        let _chunks = self.chunk_lock.lock().await;
        let now = self.now();
        let moved = {
            let core = self.core();
            if !core.state.cs_allocated(id) {
                return Err(Error::not_found(format!(
                    "chunk server {id} ({addr}) is not known to cluster {}; create it with make-cs",
                    self.config.cluster_name
                )));
            }
            if core.state.cs(id).is_some_and(|r| r.dropped) {
                return Err(MdsState::dropped_error(id));
            }
            core.state.cs(id).map(|r| r.addr.as_str()) != Some(addr.as_str())
        };
        if moved {
            self.commit(Command::SetCsAddr {
                cs: id,
                addr: addr.clone(),
            })
            .await?;
        }
        let (delete, kept, lost, suspects) = {
            let mut core = self.core();
            let mut live = CsLive::new(now, space);
            live.full = self.below_margin(&core, &live, 0);
            // A registration is news: the next report about it probes anew.
            self.probes.forget_verdict(id);
            core.live.insert(id, live);
            let mut delete = Vec::new();
            let mut kept: BTreeMap<ChunkId, MapVersion> = BTreeMap::new();
            let mut behind = BTreeSet::new();
            let mut reported = BTreeSet::new();
            // Chain members to drop, with why.
            let mut suspects: Vec<(ChunkId, CsId, Suspect)> = Vec::new();
            // Forget kept unclean replicas that left their chain since.
            let chains: BTreeMap<ChunkId, Vec<CsId>> = core
                .unclean_kept
                .keys()
                .filter_map(|&c| core.state.chunk(c).map(|r| (c, r.replicas.clone())))
                .collect();
            core.unclean_kept.retain(|chunk, members| {
                members.retain(|cs| chains.get(chunk).is_some_and(|r| r.contains(cs)));
                !members.is_empty()
            });
            for info in &chunks {
                reported.insert(info.chunk);
                let member = core
                    .state
                    .chunk(info.chunk)
                    .filter(|rec| rec.replicas.contains(&id) && info.version <= rec.version)
                    .map(|rec| (rec.version, rec.replicas.clone()));
                // A member at an older version missed a version push (not a
                // write: those need every member); `behind` below syncs it.
                if let Some((version, replicas)) = member {
                    if unclean.contains(&info.chunk) {
                        // Whole, but it may have lost acknowledged writes
                        // that were never flushed: it must not serve beside
                        // a replica that kept them. It leaves the chain (a
                        // base for the resync that patches it) unless it is
                        // the best copy reachable now.
                        let other_active = replicas.iter().any(|&cs| {
                            cs != id && self.cs_status(&core, cs, now) == CsStatus::Active
                        });
                        if other_active {
                            suspects.push((info.chunk, id, Suspect::BesideActive));
                            continue;
                        }
                        core.unclean_kept.entry(info.chunk).or_default().insert(id);
                    } else if info.version == version {
                        if let Some(kept) = core.unclean_kept.remove(&info.chunk) {
                            for cs in kept.into_iter().filter(|&cs| cs != id) {
                                suspects.push((info.chunk, cs, Suspect::Superseded));
                            }
                        }
                    }
                }
                match core.state.chunk(info.chunk) {
                    None => delete.push(info.chunk),
                    // Not a member (it was dropped while away, or a copy
                    // never landed): a base for the chunk's next copy while
                    // the chunk is short of copies, garbage once it is not.
                    Some(rec) if !rec.replicas.contains(&id) => {
                        if self.needs_copies(&core, rec, now) {
                            kept.insert(info.chunk, info.version);
                        } else {
                            delete.push(info.chunk);
                        }
                    }
                    Some(rec) if info.version < rec.version => {
                        behind.insert(info.chunk);
                    }
                    Some(rec) if info.version > rec.version => tracing::warn!(
                        "MDS: CS {id} reports chunk {:#x} at version {}, newer than the map's {}",
                        info.chunk,
                        info.version,
                        rec.version
                    ),
                    Some(_) => {}
                }
            }
            // Chain members the server no longer has: the copy is gone.
            let lost: Vec<ChunkId> = core
                .state
                .chunks()
                .filter(|(c, r)| r.replicas.contains(&id) && !reported.contains(c))
                .map(|(&c, _)| c)
                .collect();
            if behind.is_empty() {
                core.version_sync.remove(&id);
            } else {
                core.version_sync.insert(id, behind);
            }
            // The server's list is the truth about what it holds.
            if kept.is_empty() {
                core.stale.remove(&id);
            } else {
                core.stale.insert(id, kept.clone());
            }
            (delete, kept, lost, suspects)
        };
        {
            let mut core = self.core();
            core.log_event(
                now,
                EventKind::CsState,
                EventLevel::Info,
                format!(
                    "chunk server {id} registered at {addr} with {} replica(s); {} stale kept to be resynced (their chunks lack copies), {} stale or unknown to be deleted, {} lost",
                    chunks.len(),
                    kept.len(),
                    delete.len(),
                    lost.len()
                ),
            );
            core.seen_status.insert(id, CsStatus::Active);
        }
        for (chunk, cs, why) in suspects {
            let message = match why {
                Suspect::BesideActive => format!(
                    "chunk server {id} stopped uncleanly with unflushed writes to chunk {chunk:#x}: its replica may lack acknowledged writes, so it leaves the chain to be resynced"
                ),
                Suspect::Superseded => format!(
                    "chunk {chunk:#x}: the replica of chunk server {cs}, kept after an unclean stop, leaves the chain to be resynced now that chunk server {id} registered a replica that is sure to be current"
                ),
            };
            tracing::warn!("MDS: {message}");
            self.core()
                .log_event(now, EventKind::CsState, EventLevel::Warning, message);
            if let Err(e) = self.drop_replicas(chunk, vec![cs]).await {
                tracing::warn!("MDS: {e}");
            }
        }
        for chunk in lost {
            tracing::warn!("MDS: CS {id} ({addr}) lost its replica of chunk {chunk:#x}");
            if let Err(e) = self.drop_replicas(chunk, vec![id]).await {
                tracing::warn!("MDS: {e}");
            }
            // Nothing is left there to resync.
            self.forget_stale(id, chunk);
        }
        // What it holds that no chain names now (kept as a copy's base, or
        // just dropped for being unclean) must not serve: a client's cached
        // map may still name it at its version. Never a replica the map
        // names (a drop that failed leaves it a member, served).
        let stale = {
            let core = self.core();
            let deleted: BTreeSet<ChunkId> = delete.iter().copied().collect();
            chunks
                .iter()
                .map(|info| info.chunk)
                .filter(|c| !deleted.contains(c))
                .filter(|&c| {
                    core.state
                        .chunk(c)
                        .is_some_and(|rec| !rec.replicas.contains(&id))
                })
                .collect()
        };
        self.flush_events().await;
        Ok(RegisterReply {
            delete,
            stale,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
        })
    }

    async fn heartbeat(
        &self,
        cs: CsId,
        space: SpaceInfo,
        stats: CsStats,
    ) -> Result<HeartbeatReply> {
        let reply = self.heartbeat_locked(cs, space, stats);
        // A disk-full change is in the event log before the answer.
        self.flush_events().await;
        reply
    }

    async fn report_bad_replica(
        &self,
        cs: CsId,
        chunk: ChunkId,
        reason: FailureReason,
    ) -> Result<()> {
        let _chunks = self.chunk_lock.lock().await;
        let addr = {
            let core = self.core();
            self.check_reporter(&core, cs)?;
            let in_chain = core
                .state
                .chunk(chunk)
                .is_some_and(|rec| rec.replicas.contains(&cs));
            if !in_chain {
                // Not a chain member: nothing reads it, and the server's
                // next registration deletes it.
                return Ok(());
            }
            core.state
                .cs(cs)
                .map(|r| r.addr.clone())
                .unwrap_or_default()
        };
        tracing::warn!("MDS: CS {cs} ({addr}) reports its replica of chunk {chunk:#x} bad: {reason:?}; dropping it");
        self.note_bad_replica(cs, &addr, chunk, reason, "its chunk server");
        self.flush_events().await;
        let dropped = self.drop_replicas(chunk, vec![cs]).await;
        // A bad replica is never a base for a copy.
        self.forget_stale(cs, chunk);
        match dropped {
            Ok(_) => {}
            // Below replicas_min: the drop happened, writes wait for rebuild.
            Err(e) if e.kind() == ErrorKind::Unavailable => tracing::warn!("MDS: {e}"),
            Err(e) => return Err(e),
        }
        let Some(map) = self.core().state.chunk_map(chunk) else {
            return Ok(());
        };
        if map.replicas.iter().any(|r| r.cs == cs) {
            tracing::warn!(
                "MDS: chunk {chunk:#x}: the bad replica on CS {cs} is its only copy; it is kept"
            );
        } else {
            // Out of the chain it is garbage: free its space now.
            self.delete_replicas(vec![ChunkMap {
                replicas: vec![Replica { cs, addr }],
                ..map
            }])
            .await;
        }
        Ok(())
    }

    async fn report_bad_blocks(
        &self,
        cs: CsId,
        chunk: ChunkId,
        report: BadBlocks,
    ) -> Result<ChunkMap> {
        if report.blocks.is_empty() || report.blocks.len() > MAX_REPORTED_BLOCKS {
            return Err(Error::invalid(format!(
                "a bad-block report names {} blocks: it must name between 1 and \
                 {MAX_REPORTED_BLOCKS} (report more as a bad replica)",
                report.blocks.len()
            )));
        }
        let _chunks = self.chunk_lock.lock().await;
        let now = self.now();
        let reply = {
            let core = self.core();
            self.check_reporter(&core, cs)?;
            let Some(map) = core.state.chunk_map(chunk) else {
                return Err(Error::stale(format!(
                    "chunk {chunk:#x} no longer exists: its replica on chunk server {cs} is \
                     garbage"
                )));
            };
            if map.version != report.version || !map.replicas.iter().any(|r| r.cs == cs) {
                return Err(Error::stale(format!(
                    "chunk {chunk:#x} is at map version {} and its chain is {:?}: the replica \
                     on chunk server {cs} at version {} is not in use there, so its blocks need \
                     no repair",
                    map.version,
                    map.replicas.iter().map(|r| r.cs).collect::<Vec<_>>(),
                    report.version
                )));
            }
            let path = core
                .state
                .chunk(chunk)
                .map(|r| format!("{} (index {})", core.state.path_of(r.file), r.index))
                .unwrap_or_default();
            let blocks = block_ranges(&report.blocks);
            let count = report.blocks.len();
            let (level, text) = match report.outcome {
                BlockRepair::Found => (
                    EventLevel::Warning,
                    format!(
                        "chunk server {cs} found {count} block(s) of its replica of chunk \
                         {chunk:#x} of {path} corrupt (failing their CRC check: blocks \
                         {blocks}); the replica stays in the chain and they are rewritten from \
                         another replica"
                    ),
                ),
                BlockRepair::Repaired { from } => (
                    EventLevel::Info,
                    format!(
                        "chunk server {cs} repaired {count} block(s) of its replica of chunk \
                         {chunk:#x} of {path} (blocks {blocks}) from the replica on chunk \
                         server {from}"
                    ),
                ),
                BlockRepair::Unrepairable => (
                    EventLevel::Error,
                    format!(
                        "{count} block(s) of chunk {chunk:#x} of {path} (blocks {blocks}) fail \
                         their check on chunk server {cs} and no other replica has a good copy: \
                         reads of them fail with an I/O error (never wrong data); restore them \
                         from a backup"
                    ),
                ),
            };
            // Every other member, those that can serve first (in chain
            // order): one that cannot fails its reads and the reporter tries
            // again later; none at all means the block has no other copy.
            let sources = if report.outcome == BlockRepair::Found {
                let usable = |r: &Replica| self.can_be_source(&core, r.cs, chunk, now);
                let others = map.replicas.iter().filter(|r| r.cs != cs);
                let (mut first, later): (Vec<Replica>, Vec<Replica>) =
                    others.cloned().partition(|r| usable(r));
                first.extend(later);
                first
            } else {
                Vec::new()
            };
            // The reporter is the chain's only member: its other replicas
            // were dropped (kept as stale bases for a resync). The newest
            // of them holds the block as last acknowledged (every write
            // reached every member of its chain, and it left the chain
            // last). Only the newest: an older one may lack acknowledged
            // writes, so while the newest cannot serve (down, or refusing
            // reads while a copy into it is unfinished) the block waits.
            let newest: Vec<(MapVersion, CsId)> =
                if sources.is_empty() && report.outcome == BlockRepair::Found {
                    let held: Vec<(CsId, MapVersion)> = core
                        .stale
                        .iter()
                        .filter(|&(&s, _)| s != cs)
                        .filter_map(|(&s, chunks)| Some((s, *chunks.get(&chunk)?)))
                        .filter(|&(_, version)| version < map.version)
                        .collect();
                    let newest = held.iter().map(|&(_, v)| v).max();
                    held.into_iter()
                        .filter(|&(_, v)| Some(v) == newest)
                        .map(|(s, v)| (v, s))
                        .collect()
                } else {
                    Vec::new()
                };
            let stale: Vec<(MapVersion, Replica)> = newest
                .iter()
                .filter(|&&(_, s)| self.can_be_source(&core, s, chunk, now))
                .map(|&(version, s)| {
                    let addr = core.cs_addr(s);
                    (version, Replica { cs: s, addr })
                })
                .collect();
            if !newest.is_empty() && stale.is_empty() {
                // Not "no other copy": the copy is there but cannot serve
                // yet. No event: the reporter asks again shortly.
                return Err(Self::repair_waits(chunk, cs, &newest));
            }
            (
                ChunkMap {
                    replicas: sources,
                    ..map
                },
                (stale, newest, level, text),
            )
        };
        let (mut reply, (stale, newest, level, text)) = reply;
        // The stale replica that serves the repair (if one is needed) first:
        // the finding is an event only once the answer is final.
        let mut pushed = stale.is_empty();
        for (version, replica) in stale {
            // Moved to the map's version (its data untouched), it serves
            // the reporter's reads of the block; no chain names it, so no
            // client reads it. The first (of the newest) that takes the
            // version is the source.
            match self.push_version(&replica, chunk, reply.version).await {
                Ok(()) => {
                    // Not an event: the reporter retries until the repair
                    // works, and its outcome is one.
                    tracing::warn!(
                        "MDS: chunk {chunk:#x}: CS {cs} is the only member of the chain; its bad \
                         blocks are repaired from the replica on CS {} that left the chain at \
                         version {version} (the newest other copy)",
                        replica.cs
                    );
                    reply.replicas.push(replica);
                    pushed = true;
                    break;
                }
                Err(e) => tracing::warn!(
                    "MDS: chunk {chunk:#x}: the stale replica on CS {} cannot serve a block \
                     repair: {e}",
                    replica.cs
                ),
            }
        }
        if !pushed {
            return Err(Self::repair_waits(chunk, cs, &newest));
        }
        self.core()
            .log_event(now, EventKind::Corruption, level, text);
        self.flush_events().await;
        Ok(reply)
    }
}

impl MdsService {
    /// `Busy` for a bad-block report of the chain's only member whose
    /// newest other copies (`newest`: version, server) cannot serve yet
    /// (down, or refusing the version): the reporter asks again shortly
    /// instead of calling the blocks unrepairable.
    fn repair_waits(chunk: ChunkId, cs: CsId, newest: &[(MapVersion, CsId)]) -> Error {
        let holders: Vec<String> = newest
            .iter()
            .map(|(v, s)| format!("CS {s} (version {v})"))
            .collect();
        Error::new(
            ErrorKind::Busy,
            format!(
                "chunk {chunk:#x}: chunk server {cs} is the only member of the chain and the \
                 newest other copy of its bad blocks, on {}, cannot serve them yet: report \
                 them again shortly",
                holders.join(", ")
            ),
        )
    }

    /// `NotFound` for a chunk server the cluster never allocated,
    /// `PermissionDenied` for a dropped one: who may report its replicas.
    fn check_reporter(&self, core: &Core, cs: CsId) -> Result<()> {
        if !core.state.cs_allocated(cs) {
            return Err(Error::not_found(format!(
                "chunk server {cs} is not known to cluster {}; create it with make-cs",
                self.config.cluster_name
            )));
        }
        if core.state.cs(cs).is_some_and(|r| r.dropped) {
            return Err(MdsState::dropped_error(cs));
        }
        Ok(())
    }

    /// Whether the replica of `chunk` on `cs` can be copied from: its server
    /// is active and the replica is not waiting for a version sync.
    fn can_be_source(&self, core: &Core, cs: CsId, chunk: ChunkId, now_ms: u64) -> bool {
        self.cs_status(core, cs, now_ms) == CsStatus::Active
            && !core
                .version_sync
                .get(&cs)
                .is_some_and(|chunks| chunks.contains(&chunk))
    }
}

/// `blocks` (ascending) as ranges for a message: `3, 7-9, 12`.
fn block_ranges(blocks: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let mut j = i;
        while j + 1 < blocks.len() && blocks[j + 1] == blocks[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            blocks[i].to_string()
        } else {
            format!("{}-{}", blocks[i], blocks[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// What a failure report calls for.
enum ReportCheck {
    /// Nothing to drop: this is the answer (the current map, or why not).
    Answer(Result<ChunkMap>),
    /// The reported replica is in the current chain at the reported version.
    Drop(Replica),
}

impl MdsService {
    /// Validates a failure report against the current state: lease, chunk,
    /// ownership, a copy in progress, chain membership, version.
    fn check_report(
        &self,
        lease: LeaseId,
        chunk: ChunkId,
        version: MapVersion,
        cs: CsId,
    ) -> Result<ReportCheck> {
        let now = self.now();
        let core = self.core();
        let lease_rec = core.state.check_lease(lease, now, false)?;
        let (ino, writer) = (lease_rec.ino, lease_rec.mode == LeaseMode::Write);
        let rec = core.state.chunk(chunk).ok_or_else(|| {
            Error::stale(format!(
                "chunk {chunk:#x} no longer exists (truncated or removed); refresh the file's chunk maps"
            ))
        })?;
        if rec.file != ino {
            return Err(Error::new(
                ErrorKind::BadHandle,
                format!(
                    "chunk {chunk:#x} belongs to {}, not to {} leased by lease {lease}",
                    core.state.path_of(rec.file),
                    core.state.path_of(ino)
                ),
            ));
        }
        let map = core.state.chunk_map(chunk).expect("exists");
        if core.busy.contains(&chunk) {
            // The chain changes when the copy commits; a report now
            // would race with it.
            return Ok(ReportCheck::Answer(self.check_writable(&core, map)));
        }
        let current = |map: ChunkMap| {
            if writer {
                self.check_writable(&core, map)
            } else {
                Ok(map)
            }
        };
        let replica = map.replicas.iter().find(|r| r.cs == cs).cloned();
        match replica {
            Some(replica) if version == map.version => Ok(ReportCheck::Drop(replica)),
            _ => Ok(ReportCheck::Answer(current(map))),
        }
    }

    /// A writer reported that a chain member the MDS can reach did not
    /// answer in time (a slow or partitioned server is not dropped on one
    /// client's report). That attempt may still be in flight: a partition
    /// holds it, TCP delivers it when the link heals. Landing after the
    /// writer's retry and its later writes, it would put old bytes over
    /// acknowledged ones on some members (sim seed 3079: a flushed write
    /// lost). So the chunk moves to a new version, same chain, before the
    /// writer retries: the old attempt, at the old version, is refused
    /// wherever it lands. A member that cannot take the new version leaves
    /// the chain. A reader's attempt changes nothing: no bump.
    async fn fence_attempts_in_flight(
        &self,
        lease: LeaseId,
        chunk: ChunkId,
        version: MapVersion,
        cs: CsId,
    ) -> Result<()> {
        let _chunks = self.chunk_lock.lock().await;
        let map = match self.check_report(lease, chunk, version, cs)? {
            // Moved on meanwhile (another report, a drop): already fenced.
            ReportCheck::Answer(_) => return Ok(()),
            ReportCheck::Drop(_) => {
                let now = self.now();
                let core = self.core();
                if core.state.check_lease(lease, now, false)?.mode != LeaseMode::Write {
                    return Ok(());
                }
                core.state.chunk_map(chunk).expect("checked")
            }
        };
        tracing::info!(
            "MDS: chunk {chunk:#x}: CS {cs} was reported unreachable but answers the MDS; \
             version {} -> {} so that the writer's attempts still in flight are refused",
            map.version,
            map.version + 1
        );
        let outcome = self
            .commit(Command::UpdateChunkMap {
                chunk,
                version: map.version + 1,
                replicas: map.replicas.iter().map(|r| r.cs).collect(),
            })
            .await?;
        let ApplyOutcome::ChunkMap(map) = outcome else {
            return Err(unexpected(outcome));
        };
        let failed = self.push_or_keep(&map).await;
        if !failed.is_empty() {
            self.drop_replicas(chunk, failed).await?;
        }
        Ok(())
    }

    /// The current map of `chunk` as the holder of `lease` may use it.
    fn current_for_reporter(&self, lease: LeaseId, chunk: ChunkId) -> Result<ChunkMap> {
        let now = self.now();
        let core = self.core();
        let writer = core.state.check_lease(lease, now, false)?.mode == LeaseMode::Write;
        let map = core
            .state
            .chunk_map(chunk)
            .ok_or_else(|| Error::stale(format!("chunk {chunk:#x} no longer exists")))?;
        if writer {
            self.check_writable(&core, map)
        } else {
            Ok(map)
        }
    }
}

impl MdsService {
    /// [`CsRegistry::heartbeat`] under the state lock (may queue events).
    fn heartbeat_locked(
        &self,
        cs: CsId,
        space: SpaceInfo,
        stats: CsStats,
    ) -> Result<HeartbeatReply> {
        let now = self.now();
        let mut core = self.core();
        if !core.state.cs_allocated(cs) {
            return Err(Error::not_found(format!(
                "chunk server {cs} is not known to cluster {}; create it with make-cs",
                self.config.cluster_name
            )));
        }
        if core.state.cs(cs).is_some_and(|r| r.dropped) {
            return Err(MdsState::dropped_error(cs));
        }
        let params = self.params(&core);
        let Some(mut live) = core.live.get(&cs).cloned() else {
            return Err(Error::stale(format!(
                "chunk server {cs} has not registered with this MDS (it restarted); register again"
            )));
        };
        let elapsed_ms = now.saturating_sub(live.stats_ms);
        if elapsed_ms > 0 && stats.read_ops >= live.stats.read_ops {
            let rate =
                |new: u64, old: u64| new.saturating_sub(old).saturating_mul(1000) / elapsed_ms;
            live.rates = IoRates {
                read_ops_per_s: rate(stats.read_ops, live.stats.read_ops),
                write_ops_per_s: rate(stats.write_ops, live.stats.write_ops),
                read_bytes_per_s: rate(stats.read_bytes, live.stats.read_bytes),
                write_bytes_per_s: rate(stats.write_bytes, live.stats.write_bytes),
            };
        }
        live.stats = stats;
        live.stats_ms = now;
        live.last_heartbeat_ms = now;
        live.space = space;
        live.placed_bytes = 0;
        if live
            .no_space_at_free
            .is_some_and(|at| space.free_bytes > at)
        {
            live.no_space_at_free = None;
        }
        let was_full = live.full;
        live.full = self.below_margin(&core, &live, 0);
        let full = live.full;
        core.live.insert(cs, live);
        if full != was_full {
            let addr = core.cs_addr(cs);
            let pct = (space.free_bytes as u128 * 100)
                .checked_div(space.total_bytes as u128)
                .unwrap_or(100);
            let (level, message) = if full {
                (
                    EventLevel::Warning,
                    format!(
                        "chunk server {cs} ({addr}) disk is full: {pct}% free ({} bytes), below mds.alloc.fill_margin={}% (at most mds.alloc.fill_margin_max={} bytes); it gets no new replicas",
                        space.free_bytes,
                        params.fill_margin_percent,
                        params.fill_margin_max_bytes
                    ),
                )
            } else {
                (
                    EventLevel::Info,
                    format!("chunk server {cs} ({addr}) has space again: {pct}% free"),
                )
            };
            core.log_event(now, EventKind::DiskFull, level, message);
        }
        Ok(HeartbeatReply {
            scrub_period_ms: params.scrub_period_ms,
            scrub_rate_bytes_per_s: params.scrub_rate_bytes_per_s,
            io_timeouts: params.io_timeouts(),
            fence_ms: params.cs_fence_timeout_ms,
            heartbeat_timeout_ms: params.cs_heartbeat_timeout_ms,
        })
    }
}

/// "this MDS is not the leader (the leader is ADDR; WHAT)", from openraft's
/// hint ([`Error::not_leader`]).
fn not_leader(
    f: openraft::error::ForwardToLeader<MdsId, super::raft::MdsNode>,
    what: &str,
) -> Error {
    Error::not_leader(format_args!(
        "the leader is {}; {what}",
        f.leader_node
            .map(|n| n.addr)
            .unwrap_or_else(|| "being elected".to_string())
    ))
}

/// A `client_write` failure as the proposer reports it.
pub(super) fn raft_write_error(
    e: openraft::error::RaftError<
        MdsId,
        openraft::error::ClientWriteError<MdsId, super::raft::MdsNode>,
    >,
) -> Error {
    use openraft::error::{ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            not_leader(f, "the command was not applied, retry")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::invalid(format!("MDS membership change refused: {e}"))
        }
        RaftError::Fatal(f) => Error::unavailable(format!(
            "the MDS's Raft node stopped ({f}); restart pstorage-mdsd"
        )),
    }
}

/// The longest a Raft commit is waited for (see [`MdsService::commit`]).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The first chunk id a leader of `term` allocates: each term has its own
/// range of 2^32 ids (without Raft, ids start at 1).
fn term_chunk_floor(term: Option<u64>) -> ChunkId {
    ChunkId(term.map_or(0, |t| t.min(u64::from(u32::MAX))) << 32)
}

/// An `ensure_linearizable` failure.
fn raft_read_error(
    e: openraft::error::RaftError<
        MdsId,
        openraft::error::CheckIsLeaderError<MdsId, super::raft::MdsNode>,
    >,
) -> Error {
    use openraft::error::{CheckIsLeaderError, RaftError};
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => not_leader(f, "retry"),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => Error::unavailable(format!(
            "the MDS leader cannot reach a majority of the MDSes ({q}); metadata waits until they return"
        )),
        RaftError::Fatal(f) => Error::unavailable(format!(
            "the MDS's Raft node stopped ({f}); restart pstorage-mdsd"
        )),
    }
}

impl StateHost for MdsService {
    fn apply_committed(&self, cmd: Command) -> Result<ApplyOutcome> {
        self.core().state.apply(cmd)
    }

    fn snapshot_state(&self) -> MdsState {
        self.core().state.clone()
    }

    fn install_state(&self, state: MdsState) {
        let mut core = self.core();
        core.next_chunk_reserved = core.next_chunk_reserved.max(state.next_chunk_id());
        core.state = state;
    }
}

#[cfg(test)]
mod send_check {
    use super::MdsService;

    fn assert_send<T: Send>(_: &T) {}

    /// The daemon runs these without spawning, so the compiler does not
    /// check on its own that no state guard is held across an await.
    #[allow(dead_code)]
    fn duties_hold_no_lock_across_awaits(mds: &MdsService) {
        assert_send(&mds.tick());
        assert_send(&mds.run_replication());
        assert_send(&mds.flush_events());
    }
}

#[cfg(test)]
mod chunk_id_tests {
    use super::term_chunk_floor;
    use crate::types::ChunkId;

    /// A leader deposed in term t that does not know it yet allocates from
    /// t's range; no leader of a later term ever uses those ids, so when
    /// its commit fails and it deletes the replicas it created, it cannot
    /// delete a chunk of the new leader (found by `pstorage-sim --seed 40
    /// --file-store`: the new leader's chunk lost its every replica).
    #[test]
    fn each_term_allocates_chunk_ids_of_its_own() {
        assert_eq!(
            term_chunk_floor(None),
            ChunkId(0),
            "without Raft, ids start at 1"
        );
        for t in [1u64, 2, 31, 1 << 20] {
            let (lo, next) = (term_chunk_floor(Some(t)), term_chunk_floor(Some(t + 1)));
            assert!(
                lo < next && next.0 - lo.0 >= 1 << 32,
                "term {t}: {lo:#x}..{next:#x}"
            );
        }
        // Terms beyond u32 (never reached) share the last range rather
        // than wrap around into earlier ones.
        assert!(term_chunk_floor(Some(u64::MAX)) >= term_chunk_floor(Some(1 << 20)));
    }
}
