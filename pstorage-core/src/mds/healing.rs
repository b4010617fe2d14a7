//! Self-healing duties of the MDS (DESIGN.md invariant 5): chunk server
//! health, re-replication, trimming of excess replicas, graceful removal,
//! and the status that `pstorage stat` shows.
//!
//! Re-replication of one chunk ("ordered by map versions"):
//!
//! 1. Under `chunk_lock`: commit the chain unchanged at version v+1 and mark
//!    the chunk busy in the same critical section, then push v+1 to every
//!    member. Every map a client holds is now stale (its writes are refused
//!    by the replicas), and while busy the MDS answers a writer's
//!    `chunk_map` / `report_failure` with `Unavailable`, which the client
//!    waits out. A write at v that was in flight finished on each member
//!    before that member took v+1 (the version check and the I/O happen
//!    under the replica's lock), so the members are quiescent at v+1.
//! 2. Without locks: each target copies the chunk from one member at v+1
//!    (`ChunkControl::replicate_chunk`, durable when it returns).
//! 3. Under `chunk_lock`: commit `ExtendChain` (targets appended at v+1,
//!    valid only if the chunk is still at v+1) and clear busy together.
//!    If anything moved the chunk on meanwhile (a failure report, fencing,
//!    truncation), the commit is refused and the copies are deleted.
//!
//! A crash of the MDS in the middle loses only the volatile busy mark: the
//! chain is at v+1 without the targets, whose replicas are deleted when
//! they register with the restarted MDS (they are not chain members).

use std::collections::BTreeMap;

use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};

use super::service::{unexpected, Core, MdsService};
use super::state::{ApplyOutcome, ChunkRecord, Command, NewEvent};
use crate::error::{Error, ErrorKind, Result};
use crate::types::*;

/// How often the replication loop looks for work when idle.
const REPLICATION_POLL_MS: u64 = 500;
/// Copy rates are averaged over this window.
const RATE_WINDOW_MS: u64 = 10_000;

/// One planned copy.
#[derive(Debug, Clone)]
pub(super) struct CopyJob {
    chunk: ChunkId,
    /// The version when planned; the copy is made at `version + 1`.
    version: MapVersion,
    chunk_size: u64,
    path: String,
    index: u64,
    source: Replica,
    targets: Vec<Replica>,
}

/// How the members of one chunk's chain stand.
struct ChainHealth {
    /// Members on active servers that are not being released.
    available: usize,
    /// Members not being released whose server is active or inactive
    /// (inactive ones are waited for until they go offline).
    counted: usize,
    /// Members on active servers: copy sources.
    sources: Vec<CsId>,
}

impl MdsService {
    fn chain_health(&self, core: &Core, rec: &ChunkRecord, now_ms: u64) -> ChainHealth {
        let mut health = ChainHealth {
            available: 0,
            counted: 0,
            sources: Vec::new(),
        };
        for &cs in &rec.replicas {
            let releasing = core.state.cs(cs).is_some_and(|r| r.releasing);
            let status = self.cs_status(core, cs, now_ms);
            if status == CsStatus::Active {
                health.sources.push(cs);
                if !releasing {
                    health.available += 1;
                }
            }
            if !releasing && matches!(status, CsStatus::Active | CsStatus::Inactive) {
                health.counted += 1;
            }
        }
        health
    }

    /// Records a replica found bad (event log; ENOSPC marks the server).
    pub(super) fn note_bad_replica(
        &self,
        cs: CsId,
        addr: &str,
        chunk: ChunkId,
        reason: FailureReason,
        reporter: &str,
    ) {
        let now = self.now();
        let mut core = self.core();
        let path = core
            .state
            .chunk(chunk)
            .map(|r| format!("{} (index {})", core.state.path_of(r.file), r.index))
            .unwrap_or_default();
        match reason {
            FailureReason::Corrupt => {
                let what = format!(
                    "{reporter} found the replica of chunk {chunk:#x} of {path} on chunk server {cs} ({addr}) corrupt"
                );
                core.repairs.insert(chunk, what.clone());
                core.log_event(
                    now,
                    EventKind::Corruption,
                    EventLevel::Warning,
                    format!("{what}; it is dropped and the chunk re-replicated"),
                );
            }
            FailureReason::NoSpace => {
                if let Some(live) = core.live.get_mut(&cs) {
                    live.no_space_at_free = Some(live.space.free_bytes);
                }
                core.log_event(
                    now,
                    EventKind::DiskFull,
                    EventLevel::Warning,
                    format!(
                        "chunk server {cs} ({addr}) is out of space (ENOSPC writing chunk {chunk:#x} of {path}); its replica is dropped and re-created elsewhere, and it gets no new replicas until it reports more free space"
                    ),
                );
            }
            _ => {}
        }
    }

    /// Tracks chunk server states: logs every change, drops offline
    /// servers from their chains (so their chunks get re-replicated), and
    /// drops released servers that hold nothing any more.
    pub(super) async fn check_health(&self) {
        let now = self.now();
        let (to_drop, released) = {
            let mut core = self.core();
            let mut events = Vec::new();
            let ids: Vec<CsId> = core
                .state
                .servers()
                .filter(|r| !r.dropped)
                .map(|r| r.id)
                .collect();
            let offline_timeout_ms = self.params(&core).offline_timeout_ms;
            for id in &ids {
                let status = self.cs_status(&core, *id, now);
                let previous = core.seen_status.insert(*id, status);
                if previous.is_none() || previous == Some(status) {
                    continue;
                }
                let addr = core.cs_addr(*id);
                let (level, message) = match status {
                    CsStatus::Active => (
                        EventLevel::Info,
                        format!("chunk server {id} ({addr}) is active again"),
                    ),
                    CsStatus::Inactive => (
                        EventLevel::Warning,
                        format!("chunk server {id} ({addr}) is inactive: missed its heartbeats"),
                    ),
                    CsStatus::Offline => (
                        EventLevel::Error,
                        format!(
                            "chunk server {id} ({addr}) is offline: no heartbeat for over mds.wd.offline_tout={offline_timeout_ms} ms; its replicas are dropped and re-created elsewhere"
                        ),
                    ),
                    CsStatus::Dropped => continue,
                };
                events.push(NewEvent {
                    kind: EventKind::CsState,
                    level,
                    message,
                });
            }
            core.log_events(now, events);
            let offline: Vec<CsId> = ids
                .iter()
                .copied()
                .filter(|&id| self.cs_status(&core, id, now) == CsStatus::Offline)
                .collect();
            let mut to_drop: BTreeMap<ChunkId, Vec<CsId>> = BTreeMap::new();
            let mut holding: BTreeMap<CsId, u64> = BTreeMap::new();
            for (&chunk, rec) in core.state.chunks() {
                for cs in &rec.replicas {
                    *holding.entry(*cs).or_default() += 1;
                }
                if core.busy.contains(&chunk) {
                    continue;
                }
                let gone: Vec<CsId> = rec
                    .replicas
                    .iter()
                    .copied()
                    .filter(|cs| offline.contains(cs))
                    .collect();
                // The last copy stays in its chain whatever its state.
                if !gone.is_empty() && gone.len() < rec.replicas.len() {
                    to_drop.insert(chunk, gone);
                }
            }
            let released: Vec<CsId> = core
                .state
                .servers()
                .filter(|r| r.releasing && !r.dropped && !holding.contains_key(&r.id))
                .map(|r| r.id)
                .collect();
            (to_drop, released)
        };
        if !to_drop.is_empty() {
            let _chunks = self.chunk_lock.lock().await;
            for (chunk, gone) in to_drop {
                if self.core().busy.contains(&chunk) {
                    continue;
                }
                if let Err(e) = self.drop_replicas(chunk, gone).await {
                    tracing::warn!("MDS: dropping offline replicas: {e}");
                }
            }
        }
        for cs in released {
            let _chunks = self.chunk_lock.lock().await;
            let addr = {
                let core = self.core();
                // Re-check under the lock: a copy may have just landed on it.
                if core.state.chunks().any(|(_, r)| r.replicas.contains(&cs)) {
                    continue;
                }
                core.cs_addr(cs)
            };
            match self.commit(Command::DropCs { cs }).await {
                Ok(_) => {
                    let mut core = self.core();
                    core.live.remove(&cs);
                    core.log_event(
                        now,
                        EventKind::CsState,
                        EventLevel::Info,
                        format!(
                            "chunk server {cs} ({addr}) released: every chunk it held has its copies elsewhere; it is dropped from the cluster"
                        ),
                    );
                }
                Err(e) => tracing::warn!("MDS: dropping released CS {cs}: {e}"),
            }
        }
    }

    /// Removes replicas beyond `replicas_norm` (after `set-attr` lowered
    /// it, or once a released server's copies exist elsewhere): members
    /// being released first, then inactive ones, then from the chain's
    /// tail. Busy chunks are left alone.
    pub(super) async fn trim_excess(&self) {
        let now = self.now();
        let plans: Vec<(ChunkId, MapVersion, Vec<CsId>)> = {
            let core = self.core();
            let mut plans = Vec::new();
            for (&chunk, rec) in core.state.chunks() {
                if core.busy.contains(&chunk) || core.planned.contains(&chunk) {
                    continue;
                }
                let norm = core
                    .state
                    .inode(rec.file)
                    .map(|n| n.attrs.replicas.norm as usize)
                    .unwrap_or(usize::MAX);
                let releasing =
                    |cs: &CsId| core.state.cs(*cs).is_some_and(|r| r.releasing || r.dropped);
                let active = |cs: &CsId| self.cs_status(&core, *cs, now) == CsStatus::Active;
                let mut keep: Vec<CsId> = rec
                    .replicas
                    .iter()
                    .copied()
                    .filter(|cs| !releasing(cs))
                    .collect();
                let mut remove: Vec<CsId> = Vec::new();
                // Extra members that are not released: inactive first, then the tail.
                while keep.len() > norm {
                    let victim = keep
                        .iter()
                        .rposition(|cs| !active(cs))
                        .unwrap_or(keep.len() - 1);
                    remove.push(keep.remove(victim));
                }
                // Members being released go once the others are complete.
                let kept_active = keep.iter().filter(|cs| active(cs)).count();
                let leaving: Vec<CsId> = rec.replicas.iter().copied().filter(releasing).collect();
                if !leaving.is_empty() && kept_active >= norm {
                    remove.extend(leaving);
                }
                if !remove.is_empty() && !keep.is_empty() {
                    plans.push((chunk, rec.version, remove));
                }
            }
            plans
        };
        if plans.is_empty() {
            return;
        }
        let _chunks = self.chunk_lock.lock().await;
        for (chunk, version, remove) in plans {
            let map = {
                let keep: Vec<CsId> = {
                    let core = self.core();
                    if core.busy.contains(&chunk) || core.planned.contains(&chunk) {
                        continue;
                    }
                    let Some(rec) = core.state.chunk(chunk) else {
                        continue;
                    };
                    if rec.version != version {
                        continue;
                    }
                    rec.replicas
                        .iter()
                        .copied()
                        .filter(|cs| !remove.contains(cs))
                        .collect()
                };
                let outcome = self
                    .commit(Command::UpdateChunkMap {
                        chunk,
                        version: version + 1,
                        replicas: keep,
                    })
                    .await;
                match outcome {
                    Ok(ApplyOutcome::ChunkMap(map)) => map,
                    Ok(other) => {
                        tracing::warn!("MDS: trimming: {}", unexpected(other));
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("MDS: trimming chunk {chunk:#x}: {e}");
                        continue;
                    }
                }
            };
            tracing::info!(
                "MDS: chunk {chunk:#x}: removed excess replicas on {remove:?} at version {}",
                map.version
            );
            let removed: Vec<Replica> = {
                let core = self.core();
                remove
                    .iter()
                    .map(|&cs| Replica {
                        cs,
                        addr: core.cs_addr(cs),
                    })
                    .collect()
            };
            let failed = self.push_to_all(&map).await;
            if !failed.is_empty() {
                if let Err(e) = self.drop_replicas(chunk, failed).await {
                    tracing::warn!("MDS: {e}");
                }
            }
            self.delete_replicas(vec![ChunkMap {
                replicas: removed,
                ..map
            }])
            .await;
        }
    }

    /// Picks up to `limit` chunks to copy now (most urgent first) and marks
    /// them planned. Also keeps the replication episode's events.
    pub(super) fn plan_replication(&self, limit: usize) -> Vec<CopyJob> {
        let now = self.now();
        let mut core = self.core();
        let mut candidates: Vec<(i64, ChunkId, usize)> = Vec::new();
        let mut pending = 0u64;
        for (&chunk, rec) in core.state.chunks() {
            if core.busy.contains(&chunk) || core.planned.contains(&chunk) {
                pending += 1;
                continue;
            }
            let Some(attrs) = core.state.inode(rec.file).map(|n| n.attrs) else {
                continue;
            };
            let health = self.chain_health(&core, rec, now);
            let need = (attrs.replicas.norm as usize).saturating_sub(health.counted);
            if need == 0 {
                continue;
            }
            pending += 1;
            if health.sources.is_empty() {
                continue;
            }
            // The health check drops offline members first (a version
            // bump that would void a copy planned now).
            let offline_member = rec
                .replicas
                .iter()
                .any(|cs| self.cs_status(&core, *cs, now) == CsStatus::Offline);
            if offline_member {
                continue;
            }
            let urgency = health.available as i64 - attrs.replicas.min as i64;
            candidates.push((urgency, chunk, need));
        }
        candidates.sort();
        let mut jobs = Vec::new();
        let counts = if candidates.is_empty() || limit == 0 {
            BTreeMap::new()
        } else {
            Self::replica_counts(&core)
        };
        // No server takes new replicas at all: nothing to try this round.
        let any_target = limit > 0 && !self.place_with(&core, now, 1, &[], &counts).is_empty();
        for (_, chunk, need) in candidates {
            if jobs.len() >= limit || !any_target {
                break;
            }
            let rec = core.state.chunk(chunk).expect("listed above").clone();
            let targets = self.place_with(&core, now, need, &rec.replicas, &counts);
            if targets.is_empty() {
                continue;
            }
            let health = self.chain_health(&core, &rec, now);
            // Prefer a source that stays (not being released).
            let source = health
                .sources
                .iter()
                .copied()
                .find(|cs| !core.state.cs(*cs).is_some_and(|r| r.releasing))
                .unwrap_or(health.sources[0]);
            let chunk_size = core
                .state
                .inode(rec.file)
                .map(|n| n.attrs.chunk_size)
                .unwrap_or(0);
            for t in &targets {
                if let Some(live) = core.live.get_mut(t) {
                    live.placed_bytes = live.placed_bytes.saturating_add(chunk_size);
                }
            }
            core.planned.insert(chunk);
            jobs.push(CopyJob {
                chunk,
                version: rec.version,
                chunk_size,
                path: core.state.path_of(rec.file),
                index: rec.index,
                source: Replica {
                    cs: source,
                    addr: core.cs_addr(source),
                },
                targets: targets
                    .into_iter()
                    .map(|cs| Replica {
                        cs,
                        addr: core.cs_addr(cs),
                    })
                    .collect(),
            });
        }
        core.repl.pending = pending;
        let idle = pending == 0 && core.repl.in_flight == 0 && jobs.is_empty();
        match (core.repl.episode_started_ms, idle) {
            (None, false) => {
                core.repl.episode_started_ms = Some(now);
                core.repl.episode_chunks = 0;
                core.repl.episode_bytes = 0;
                core.log_event(
                    now,
                    EventKind::Replication,
                    EventLevel::Warning,
                    format!(
                        "re-replication started: {pending} chunk(s) below replicas_norm or on servers being released"
                    ),
                );
            }
            (Some(started), true) => {
                core.repl.episode_started_ms = None;
                let (chunks, bytes) = (core.repl.episode_chunks, core.repl.episode_bytes);
                core.log_event(
                    now,
                    EventKind::Replication,
                    EventLevel::Info,
                    format!(
                        "re-replication finished: {chunks} chunk(s) copied ({bytes} bytes) in {:.1} s; every chunk has replicas_norm copies",
                        now.saturating_sub(started) as f64 / 1000.0
                    ),
                );
            }
            _ => {}
        }
        jobs
    }

    /// Runs one planned copy (see the module doc) and records the outcome.
    pub(super) async fn run_copy(&self, job: CopyJob) {
        self.core().repl.in_flight += 1;
        let result = self.copy_chunk(&job).await;
        let now = self.now();
        let mut core = self.core();
        core.planned.remove(&job.chunk);
        // Saturating: leadership may have changed (and the counters reset)
        // while the copy ran.
        core.repl.in_flight = core.repl.in_flight.saturating_sub(1);
        match result {
            Ok(added) if !added.is_empty() => {
                let bytes = job.chunk_size * added.len() as u64;
                core.repl.done_chunks += 1;
                core.repl.done_bytes += bytes;
                core.repl.episode_chunks += 1;
                core.repl.episode_bytes += bytes;
                core.repl.recent.push_back((now, bytes));
                if let Some(what) = core.repairs.remove(&job.chunk) {
                    let to: Vec<String> = added.iter().map(|cs| cs.to_string()).collect();
                    core.log_event(
                        now,
                        EventKind::Corruption,
                        EventLevel::Info,
                        format!(
                            "chunk {:#x} of {} (index {}) repaired: copied from chunk server {} to {} (was: {what})",
                            job.chunk,
                            job.path,
                            job.index,
                            job.source.cs,
                            to.join(", ")
                        ),
                    );
                }
            }
            Ok(_) => core.repl.failed_chunks += 1,
            // Overtaken by a chain change: planned again with the new chain.
            Err(e) if e.kind() == ErrorKind::Stale || e.kind() == ErrorKind::NotFound => {
                tracing::info!(
                    "MDS: re-replication of chunk {:#x} of {} postponed: {e}",
                    job.chunk,
                    job.path
                );
            }
            Err(e) => {
                core.repl.failed_chunks += 1;
                tracing::warn!(
                    "MDS: re-replication of chunk {:#x} of {} failed: {e}; it is retried",
                    job.chunk,
                    job.path
                );
            }
        }
        while core
            .repl
            .recent
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > RATE_WINDOW_MS)
        {
            core.repl.recent.pop_front();
        }
    }

    /// Steps 1-3 of the module doc; returns the servers added to the chain.
    async fn copy_chunk(&self, job: &CopyJob) -> Result<Vec<CsId>> {
        let chunk = job.chunk;
        let version = job.version + 1;
        {
            let _chunks = self.chunk_lock.lock().await;
            let replicas = {
                let mut core = self.core();
                let rec = core.state.chunk(chunk).ok_or_else(|| {
                    Error::not_found(format!("chunk {chunk:#x} no longer exists"))
                })?;
                if rec.version != job.version || !rec.replicas.contains(&job.source.cs) {
                    return Err(Error::stale(format!(
                        "chunk {chunk:#x} changed (version {}) since its copy was planned at version {}",
                        rec.version, job.version
                    )));
                }
                let replicas = rec.replicas.clone();
                // Busy before the bump commits: no writer may get the new
                // version's map until the copy is in the chain.
                core.busy.insert(chunk);
                replicas
            };
            let outcome = self
                .commit(Command::UpdateChunkMap {
                    chunk,
                    version,
                    replicas,
                })
                .await;
            let map = match outcome {
                Ok(ApplyOutcome::ChunkMap(map)) => map,
                Ok(other) => {
                    self.core().busy.remove(&chunk);
                    return Err(unexpected(other));
                }
                Err(e) => {
                    self.core().busy.remove(&chunk);
                    return Err(e);
                }
            };
            let failed = self.push_to_all(&map).await;
            if !failed.is_empty() {
                self.core().busy.remove(&chunk);
                let cause = format!(
                    "chunk {chunk:#x}: members {failed:?} did not take version {version}; copy postponed"
                );
                if let Err(e) = self.drop_replicas(chunk, failed).await {
                    tracing::warn!("MDS: {e}");
                }
                return Err(Error::unavailable(cause));
            }
        }
        let rate = {
            let core = self.core();
            let p = self.params(&core);
            p.repl_bandwidth_bytes_per_s / p.repl_concurrency.max(1)
        };
        let results = join_all(job.targets.iter().map(|t| async {
            let control = self.connector.chunk_control(&t.addr).await?;
            control
                .replicate_chunk(chunk, version, job.chunk_size, job.source.clone(), rate)
                .await
        }))
        .await;
        let mut copied = Vec::new();
        let mut failed = Vec::new();
        for (t, r) in job.targets.iter().zip(results) {
            match r {
                Ok(_stats) => copied.push(t.clone()),
                Err(e) => {
                    tracing::warn!(
                        "MDS: copying chunk {chunk:#x} from CS {} to CS {} ({}) failed: {e}",
                        job.source.cs,
                        t.cs,
                        t.addr
                    );
                    failed.push(t.clone());
                }
            }
        }
        let committed = {
            let _chunks = self.chunk_lock.lock().await;
            let result = if copied.is_empty() {
                Ok(())
            } else {
                self.commit(Command::ExtendChain {
                    chunk,
                    version,
                    added: copied.iter().map(|r| r.cs).collect(),
                })
                .await
                .map(|_| ())
            };
            self.core().busy.remove(&chunk);
            result
        };
        let orphan = |replicas: Vec<Replica>| ChunkMap {
            chunk,
            index: job.index,
            version,
            replicas,
        };
        // A failed copy may still have landed (a lost answer): remove it.
        self.delete_replicas(vec![orphan(failed)]).await;
        if let Err(e) = committed {
            self.delete_replicas(vec![orphan(copied)]).await;
            return Err(e);
        }
        Ok(copied.into_iter().map(|r| r.cs).collect())
    }

    /// Re-replicates forever (the daemon runs it beside `tick`): keeps up to
    /// `mds.repl.concurrency` copies in flight, most urgent chunks first.
    pub async fn run_replication(&self) {
        let mut running = FuturesUnordered::new();
        loop {
            let limit = {
                let core = self.core();
                self.params(&core).repl_concurrency as usize
            };
            // Only the leader copies (its commits would fail elsewhere).
            let free = if self.track_leadership() {
                limit.saturating_sub(running.len())
            } else {
                0
            };
            for job in self.plan_replication(free) {
                running.push(self.run_copy(job));
            }
            // Replication started/finished/repaired events, promptly.
            self.flush_events().await;
            let poll = tokio::time::sleep(std::time::Duration::from_millis(REPLICATION_POLL_MS));
            if running.is_empty() {
                poll.await;
            } else {
                tokio::select! {
                    _ = running.next() => {}
                    _ = poll => {}
                }
            }
        }
    }

    /// Runs re-replication rounds until nothing more can be copied, at
    /// most `max_rounds` (tests and simulation). Returns the copies made.
    pub async fn replicate_pending(&self, max_rounds: usize) -> u64 {
        let before = self.core().repl.done_chunks;
        for _ in 0..max_rounds {
            let limit = {
                let core = self.core();
                self.params(&core).repl_concurrency as usize
            };
            let jobs = self.plan_replication(limit);
            if jobs.is_empty() {
                break;
            }
            join_all(jobs.into_iter().map(|j| self.run_copy(j))).await;
        }
        // One more plan to close the episode when done.
        let _ = self.plan_replication(0);
        self.core().repl.done_chunks - before
    }

    /// The cluster status `pstorage stat` shows.
    pub(super) fn status(&self) -> ClusterStatus {
        let now = self.now();
        let core = self.core();
        let state = &core.state;
        let mut per_cs: BTreeMap<CsId, u64> = BTreeMap::new();
        let mut counts = ChunkCounts::default();
        let mut pending = 0u64;
        for (&chunk, rec) in state.chunks() {
            for cs in &rec.replicas {
                *per_cs.entry(*cs).or_default() += 1;
            }
            let replicas = state.inode(rec.file).expect("chunk file").attrs.replicas;
            let health = self.chain_health(&core, rec, now);
            let (norm, min) = (replicas.norm as usize, replicas.min as usize);
            pending += u64::from(health.counted < norm);
            if core.busy.contains(&chunk) {
                counts.replicating += 1;
            } else if health.available < min {
                counts.blocked += 1;
            } else if health.available < norm && health.available <= min {
                counts.urgent += 1;
            } else if health.available < norm {
                counts.degraded += 1;
            } else {
                counts.healthy += 1;
            }
        }
        let cs: Vec<CsInfo> = state
            .servers()
            .map(|r| {
                let live = core.live.get(&r.id);
                CsInfo {
                    id: r.id,
                    addr: r.addr.clone(),
                    status: self.cs_status(&core, r.id, now),
                    space: live.map(|l| l.space).unwrap_or_default(),
                    chunks: per_cs.get(&r.id).copied().unwrap_or(0),
                    last_seen_ms_ago: live
                        .map(|l| now.saturating_sub(l.last_heartbeat_ms))
                        .unwrap_or(u64::MAX),
                    releasing: r.releasing,
                    full: live.is_some_and(|l| l.full || l.no_space_at_free.is_some()),
                    io: live.map(|l| l.rates).unwrap_or_default(),
                }
            })
            .collect();
        let (mut files, mut dirs, mut logical_bytes) = (0u64, 0u64, 0u64);
        for node in state.inodes() {
            match node.kind {
                InodeKind::File => {
                    files += 1;
                    logical_bytes += node.size;
                }
                InodeKind::Dir => dirs += 1,
            }
        }
        let cs_down = cs
            .iter()
            .any(|c| c.status != CsStatus::Active && c.status != CsStatus::Dropped);
        let health = if counts.blocked > 0 {
            "failure"
        } else if counts.degraded + counts.urgent + counts.replicating > 0 || cs_down {
            "degraded"
        } else {
            "healthy"
        };
        let recent_bytes: u64 = core
            .repl
            .recent
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) <= RATE_WINDOW_MS)
            .map(|(_, b)| b)
            .sum();
        ClusterStatus {
            cluster_name: self.config.cluster_name.clone(),
            health: health.to_string(),
            mds: self.mds_infos(),
            cs,
            files,
            dirs,
            chunks: state.chunks().count() as u64,
            chunk_counts: counts,
            replication: ReplicationStatus {
                pending_chunks: pending,
                in_flight: core.repl.in_flight,
                done_chunks: core.repl.done_chunks,
                done_bytes: core.repl.done_bytes,
                failed_chunks: core.repl.failed_chunks,
                rate_bytes_per_s: recent_bytes * 1000 / RATE_WINDOW_MS,
            },
            logical_bytes,
        }
    }
}
