//! The MDS service: drives [`MdsState`] from client and chunk server
//! requests, talking to chunk servers through [`ControlConnector`].
//!
//! Concurrency: the state, the command log and the volatile chunk server
//! liveness live behind one `Mutex`, never held across an `.await`.
//! Every mutation is a [`Command`] committed through `MdsService::commit`:
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
//!
//! This file holds the service itself: construction, the commit path,
//! leadership and the periodic duties, and [`StateHost`]. The rest of
//! `MdsService` is split by responsibility: the shared state under the
//! mutex in `shared.rs`, `MetadataService` in `metadata.rs`, `CsRegistry` in
//! `registry.rs`, allocation in `allocation.rs`, version pushes and chain
//! changes in `chunk_maps.rs`, re-replication in `healing.rs`, rebalancing
//! in `balance.rs`, the MDS group in `group.rs`.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::group_commit::{GroupCommit, ReadBarriers};
use super::leader_time::LeaderTime;
use super::params::ClusterParams;
use super::raft::{MdsId, MdsRaft, StateHost};
use super::shared::{Core, ReplProgress};
use super::state::{ApplyOutcome, Command, MdsState};
use super::store::{CommandLog, MdsStore};
use crate::error::{Error, ErrorKind, Result};
use crate::traits::{Clock, ControlConnector};
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

/// The metadata server. `Send + Sync`; share it behind an `Arc`.
pub struct MdsService {
    core: Mutex<Core>,
    pub(super) chunk_lock: tokio::sync::Mutex<()>,
    pub(super) connector: Arc<dyn ControlConnector>,
    /// For `replicate_chunk` only: a copy has no whole-call deadline (its
    /// progress is watched instead), unlike every other control call.
    pub(super) copy_connector: Arc<dyn ControlConnector>,
    /// The time this MDS writes into its commands ([`LeaderTime`]).
    time: LeaderTime,
    pub(super) config: MdsConfig,
    /// The Raft group this MDS proposes its commands to, and its id there.
    raft: OnceLock<(MdsId, MdsRaft)>,
    /// Reachability probes of reported chunk servers and their drop budgets.
    pub(super) probes: super::probe::Probes,
    /// Commands waiting for the next Raft entry (the group commit).
    proposals: GroupCommit,
    /// Reads waiting for the next read barrier round.
    pub(super) barriers: ReadBarriers,
    /// How long the leader's periodic duties ran.
    pub(super) duty_times: DutyTimes,
}

/// How long one kind of periodic duty ran, in total (wall clock).
#[derive(Default)]
pub(super) struct DutyTime {
    runs: AtomicU64,
    nanos: AtomicU64,
}

impl DutyTime {
    /// Runs `f`, counting its time.
    pub(super) fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let out = f();
        self.add(start);
        out
    }

    /// Counts one run that started at `start`.
    pub(super) fn add(&self, start: std::time::Instant) {
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn stats(&self) -> (u64, f64) {
        let nanos = self.nanos.load(Ordering::Relaxed);
        (self.runs.load(Ordering::Relaxed), nanos as f64 / 1e9)
    }
}

/// The periodic duties [`MdsService::duty_stats`] reports.
#[derive(Default)]
pub(super) struct DutyTimes {
    /// [`MdsService::tick`] while leading.
    pub(super) tick: DutyTime,
    /// Re-replication planning rounds.
    pub(super) plan: DutyTime,
}

/// How long this MDS's periodic duties ran since it started (its metrics
/// endpoint): the tick and the replication planning walk the chunk index,
/// not every chunk, so their time should not grow with the namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DutyStats {
    /// Ticks run as the leader.
    pub ticks: u64,
    /// Their time in seconds (wall clock, awaits included).
    pub tick_seconds: f64,
    /// Replication planning rounds run.
    pub plans: u64,
    /// Their time in seconds.
    pub plan_seconds: f64,
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
        let time = LeaderTime::new(clock);
        let leader_since_ms = time.now_ms();
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
                leases_refreshed: None,
                held: BTreeMap::new(),
                balance: Default::default(),
            }),
            chunk_lock: tokio::sync::Mutex::new(()),
            copy_connector: connector.clone(),
            connector,
            time,
            config,
            raft: OnceLock::new(),
            probes: super::probe::Probes::default(),
            proposals: GroupCommit::default(),
            barriers: ReadBarriers::default(),
            duty_times: DutyTimes::default(),
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

    /// What this MDS's group commit and read barriers did since it started
    /// (nothing unless it led the group meanwhile).
    pub fn commit_stats(&self) -> super::group_commit::CommitStats {
        super::group_commit::CommitStats {
            barrier_rounds: self.barriers.rounds(),
            barrier_waiting: self.barriers.waiting(),
            barrier_skipped: self.barriers.skipped(),
            ..self.proposals.stats()
        }
    }

    /// How long the periodic duties ran since this MDS started.
    pub fn duty_stats(&self) -> DutyStats {
        let (ticks, tick_seconds) = self.duty_times.tick.stats();
        let (plans, plan_seconds) = self.duty_times.plan.stats();
        DutyStats {
            ticks,
            tick_seconds,
            plans,
            plan_seconds,
        }
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
        self.core.lock()
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
    pub(super) async fn commit(&self, mut cmd: Command) -> Result<ApplyOutcome> {
        let Some((_, raft)) = self.raft.get() else {
            return self.core().commit_local(cmd);
        };
        // Before this leader's first lease check: its clock is not its
        // predecessor's ([`Command::RefreshLeases`]).
        self.refresh_leases().await?;
        // On this leader's time, anchored for its term by now.
        cmd.stamp(self.now());
        // Refuse what cannot apply without a round through the log, but
        // only from a state known to be current: a deposed leader or a
        // follower that missed the command creating a lease would refuse
        // that lease's holder for good ("lease unknown") instead of sending
        // it on to the leader.
        let validated = self.core().state.validate(&cmd);
        if validated.is_err() {
            // The commands queued before this one apply first: a release
            // answered already (`commit_later`) may be what refuses it.
            self.proposals.settle(raft, COMMIT_TIMEOUT).await;
            self.read_barrier().await?;
            let revalidated = self.core().state.validate(&cmd);
            revalidated?;
        }
        self.propose(raft, cmd).await
    }

    /// Commits `cmd` without waiting for it: it is queued behind every
    /// command proposed so far, ahead of every command proposed after this
    /// returns, and goes with the next Raft entry ([`super::group_commit::LATER_DELAY`] at the
    /// latest). For a lease's release only: its effect is a lease that
    /// ends, so a later command of any client that depends on it applies
    /// after it, and one validated before it is proposed waits for it
    /// ([`GroupCommit::settle`]). If this MDS loses the leadership before
    /// the entry commits, the command is lost and the lease expires as a
    /// dead client's does. A command the state would refuse now, or one
    /// proposed on an MDS that does not see itself as the leader, is
    /// committed and waited for as usual.
    pub(super) async fn commit_later(&self, mut cmd: Command) -> Result<()> {
        let Some((_, raft)) = self.raft.get() else {
            return self.core().commit_local(cmd).map(|_| ());
        };
        if !self.is_leader() {
            return self.commit(cmd).await.map(|_| ());
        }
        self.refresh_leases().await?;
        cmd.stamp(self.now());
        if self.core().state.validate(&cmd).is_err() {
            return self.commit(cmd).await.map(|_| ());
        }
        self.proposals.propose_later(raft, cmd, COMMIT_TIMEOUT)
    }

    /// Waits (at most `timeout`) until every command queued so far has had
    /// its Raft entry, releases answered before they committed included:
    /// an MDS that stops cleanly calls it before it stops its Raft node, so
    /// a restart does not find a closed file still leased.
    pub async fn settle_proposals(&self, timeout: Duration) {
        if let Some((_, raft)) = self.raft.get() {
            self.proposals.settle(raft, timeout).await;
        }
    }

    /// Commits [`Command::RefreshLeases`] once in each term this MDS leads,
    /// before anything else it commits in that term and before it checks a
    /// lease (none while there are no leases): when it takes the lead, and
    /// at each commit and read barrier until that succeeded.
    async fn refresh_leases(&self) -> Result<()> {
        let Some((_, raft)) = self.raft.get() else {
            return Ok(());
        };
        if !self.track_leadership() {
            return Ok(());
        }
        let (term, has_leases) = {
            let core = self.core();
            if core.leases_refreshed == core.led_term {
                return Ok(());
            }
            (core.led_term, core.state.has_leases())
        };
        if has_leases {
            let now_ms = self.now();
            self.propose(raft, Command::RefreshLeases { now_ms })
                .await?;
        }
        let mut core = self.core();
        if core.led_term == term {
            core.leases_refreshed = term;
        }
        Ok(())
    }

    /// Proposes `cmd` to the Raft group and waits for its outcome.
    async fn propose(&self, raft: &MdsRaft, cmd: Command) -> Result<ApplyOutcome> {
        // Bounded: a leader restored by its Raft node after a restart may
        // append entries that a newer leader neither commits nor replaces
        // for a long time, and Raft answers such a write only then. The
        // outcome of a write that times out is unknown (it may still
        // commit): callers must not undo what it depends on.
        // With the commands proposed meanwhile, as one entry.
        self.proposals.propose(raft, cmd, COMMIT_TIMEOUT).await
    }

    /// Waits until this MDS is sure it is the leader and has applied every
    /// committed command, so a read sees every acknowledged write (a deposed
    /// leader that does not know it yet fails here instead of serving stale
    /// metadata). A no-op without Raft.
    pub(super) async fn read_barrier(&self) -> Result<()> {
        let Some((id, raft)) = self.raft.get() else {
            return Ok(());
        };
        if sole_voter_serving(*id, raft) {
            self.barriers.count_skipped();
        } else {
            // Shared with the reads that arrived meanwhile (a round started
            // after this one arrived).
            self.barriers.wait(raft).await?;
        }
        // Reads check leases on this leader's clock.
        self.refresh_leases().await
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
        self.time.now_ms()
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
    pub(super) async fn expire_leases(&self, now_ms: u64) -> Result<()> {
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
        let start = std::time::Instant::now();
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
        self.duty_times.tick.add(start);
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
            if let Err(e) = self.refresh_leases().await {
                tracing::warn!("MDS: refreshing the leases as the new leader failed: {e}");
            }
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
        let mut core = self.core();
        let led_term = if leader { Some(term) } else { None };
        if core.led_term != led_term {
            let now = self.time.reanchor();
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

/// Whether `id` leads a group whose only voter it is and has applied an
/// entry of its term (so every entry before its term too): then every
/// write acknowledged so far was applied here before it was answered, no
/// other member can be elected (every configuration that could elect one,
/// a joint one included, counts another voter, and this node appends it
/// before anyone else has it), and a read of the applied state is
/// linearizable without an `ensure_linearizable` round. That round waits
/// for the Raft core, which in openraft 0.9 waits for each log append's
/// sync: under writes it made a `stat` at one MDS take ~300 us instead of
/// ~30.
fn sole_voter_serving(id: MdsId, raft: &MdsRaft) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.state == openraft::ServerState::Leader
        && m.current_leader == Some(id)
        && m.last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term)
        && {
            let mut voters = m.membership_config.membership().voter_ids();
            voters.next() == Some(id) && voters.next().is_none()
        }
}

/// An `ensure_linearizable` failure.
pub(super) fn raft_read_error(
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
