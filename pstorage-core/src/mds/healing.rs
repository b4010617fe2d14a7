//! Self-healing duties of the MDS (DESIGN.md invariant 5): chunk server
//! health, re-replication, trimming of excess replicas, graceful removal,
//! and the status that `pstorage stat` shows.
//!
//! Re-replication of one chunk planned at version v ("ordered by map
//! versions", writers stalled only for the last delta):
//!
//! 1. Base copy, no lock, not busy: each target makes its replica equal to
//!    the source's at v (`ChunkControl::replicate_chunk`: a stale replica
//!    or partial copy it holds is the base, only the 4 KiB blocks whose CRC
//!    differs are sent). Writers go on at v meanwhile (the target is not in
//!    the chain, so what they write is what phase 3 sends).
//! 2. Under `chunk_lock`: commit the chain unchanged at v+1 and mark the
//!    chunk busy in the same critical section, then push v+1 to every
//!    member. Every map a client holds is now stale (its writes are refused
//!    by the replicas), and while busy the MDS answers a writer's
//!    `chunk_map` / `report_failure` with `Unavailable`, which the client
//!    waits out. A write at v that was in flight finished on each member
//!    before that member took v+1 (the version check and the I/O happen
//!    under the replica's lock), so the members are quiescent at v+1.
//! 3. Without locks: `replicate_chunk` again at v+1: only the blocks
//!    written during phase 1 differ (durable when it returns).
//! 4. Under `chunk_lock`: commit `ExtendChain` (targets appended at v+1,
//!    valid only if the chunk is still at v+1) and clear busy together.
//!    If anything moved the chunk on meanwhile (a failure report, fencing,
//!    truncation), the commit is refused; the copies stay as stale
//!    candidates for the next try.
//!
//! No copy call has a deadline as a whole; the MDS polls the target's
//! `copy_progress` and abandons a copy that moved no bytes for
//! `mds.repl.progress_tout` (the target keeps what it copied, so the next
//! try resumes). At most `mds.repl.concurrency` copies run, at most
//! `mds.repl.per_cs` per chunk server as source or target.
//!
//! Stale replicas (outside their chain: dropped while their server was
//! away, or a copy that did not land) are kept while their chunk has fewer
//! than `replicas_norm` counted members, remembered in volatile state
//! (`Core::stale`, rebuilt by registrations after a fail-over), preferred
//! as copy targets, and deleted once the chunk has its copies.
//!
//! A crash of the MDS in the middle loses only the volatile busy mark: the
//! chain is at v+1 without the targets, whose replicas are kept as stale
//! (or deleted if the chunk has its copies) when they register with the
//! restarted MDS (they are not chain members).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};

use super::placement;
use super::service::{unexpected, MdsService};
use super::shared::{Core, Held};
use super::state::{ApplyOutcome, ChunkRecord, Command, NewEvent};
use crate::error::{Error, ErrorKind, Result};
use crate::types::*;

/// How often the replication loop looks for work when idle.
const REPLICATION_POLL_MS: u64 = 500;
/// Copy rates are averaged over this window.
const RATE_WINDOW_MS: u64 = 10_000;
/// How often the progress of a copy is polled.
const PROGRESS_POLL_MS: u64 = 1_000;
/// The deadline of one progress poll (at most `mds.repl.progress_tout`).
const PROGRESS_POLL_DEADLINE_MS: u64 = 5_000;

/// The first pause after a failed copy of a chunk; it doubles with each
/// failure in a row up to [`COPY_BACKOFF_MAX_MS`].
const COPY_BACKOFF_MIN_MS: u64 = 500;
/// Short: a chunk below `replicas_min` has writers waiting for its copy.
const COPY_BACKOFF_MAX_MS: u64 = 5_000;

/// A chunk whose copies failed `failures` times in a row: it is not planned
/// before `not_before_ms` (a down or full target, or a source that lost its
/// replica, answered at once: without the pause the planner would retry it
/// thousands of times a second), and its next copy avoids the targets that
/// failed while other servers can take it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct CopyBackoff {
    pub(super) failures: u32,
    pub(super) not_before_ms: u64,
    pub(super) failed_targets: Vec<CsId>,
}

impl CopyBackoff {
    /// Records one more failure at `now_ms` of a copy to `targets`.
    pub(super) fn failed(&mut self, now_ms: u64, targets: &[CsId]) {
        self.failures = self.failures.saturating_add(1);
        let pause = COPY_BACKOFF_MIN_MS
            .saturating_mul(1u64 << (self.failures - 1).min(16))
            .min(COPY_BACKOFF_MAX_MS);
        self.not_before_ms = now_ms.saturating_add(pause);
        for t in targets {
            if !self.failed_targets.contains(t) {
                self.failed_targets.push(*t);
            }
        }
    }
}

/// One planned copy.
#[derive(Debug, Clone)]
pub(super) struct CopyJob {
    pub(super) chunk: ChunkId,
    /// The version when planned; the copy is made at `version + 1`.
    pub(super) version: MapVersion,
    pub(super) chunk_size: u64,
    pub(super) path: String,
    pub(super) index: u64,
    pub(super) source: Replica,
    pub(super) targets: Vec<Replica>,
    /// A rebalancing move: this member is dropped (by `trim_excess`) once
    /// the copy is in the chain.
    pub(super) moving_from: Option<CsId>,
}

/// How the members of one chunk's chain stand.
pub(super) struct ChainHealth {
    /// Members on active servers that are not being released.
    pub(super) available: usize,
    /// Members not being released whose server is active or inactive
    /// (inactive ones are waited for until they go offline).
    pub(super) counted: usize,
    /// Members on active servers: copy sources.
    pub(super) sources: Vec<CsId>,
}

impl MdsService {
    pub(super) fn chain_health(&self, core: &Core, rec: &ChunkRecord, now_ms: u64) -> ChainHealth {
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

    /// Whether `rec` has fewer counted members than its `replicas_norm`:
    /// replicas outside its chain are then kept as copy bases.
    pub(super) fn needs_copies(&self, core: &Core, rec: &ChunkRecord, now_ms: u64) -> bool {
        let norm = core
            .state
            .inode(rec.file)
            .map(|n| n.attrs.replicas.norm as usize)
            .unwrap_or(0);
        self.chain_health(core, rec, now_ms).counted < norm
    }

    /// Records that `servers` hold a replica of `chunk` outside its chain
    /// at `version` (a base for a later copy to them).
    pub(super) fn remember_stale(&self, chunk: ChunkId, servers: &[CsId], version: MapVersion) {
        let mut core = self.core();
        for &cs in servers {
            let in_chain = core
                .state
                .chunk(chunk)
                .is_some_and(|r| r.replicas.contains(&cs));
            if !in_chain {
                core.stale.entry(cs).or_default().insert(chunk, version);
            }
        }
    }

    /// Forgets a stale candidate (it is bad, or deleted).
    pub(super) fn forget_stale(&self, cs: CsId, chunk: ChunkId) {
        let mut core = self.core();
        if let Some(chunks) = core.stale.get_mut(&cs) {
            chunks.remove(&chunk);
            if chunks.is_empty() {
                core.stale.remove(&cs);
            }
        }
    }

    /// Deletes the stale replicas whose chunk is gone or has its
    /// `replicas_norm` copies again (never one a copy is about to use),
    /// forgets those that rejoined their chain, and logs, once per chunk,
    /// when only stale copies of a chunk are reachable (they are kept).
    pub(super) async fn prune_stale(&self) {
        let now = self.now();
        let deletes: Vec<(CsId, String, ChunkId)> = {
            let mut core = self.core();
            let mut forget: Vec<(CsId, ChunkId)> = Vec::new();
            let mut deletes = Vec::new();
            let mut stale_only: BTreeMap<ChunkId, Vec<CsId>> = BTreeMap::new();
            for (&cs, chunks) in &core.stale {
                let status = self.cs_status(&core, cs, now);
                if status == CsStatus::Dropped {
                    forget.extend(chunks.keys().map(|&chunk| (cs, chunk)));
                    continue;
                }
                for &chunk in chunks.keys() {
                    if core.planned.contains(&chunk) || core.busy.contains(&chunk) {
                        continue;
                    }
                    let garbage = match core.state.chunk(chunk) {
                        None => true,
                        Some(rec) if rec.replicas.contains(&cs) => {
                            forget.push((cs, chunk));
                            continue;
                        }
                        Some(rec) => {
                            let needed = self.needs_copies(&core, rec, now);
                            // Inactive members are waited for (they may be
                            // restarting); offline ones are gone.
                            let members_reachable = rec.replicas.iter().any(|m| {
                                matches!(
                                    self.cs_status(&core, *m, now),
                                    CsStatus::Active | CsStatus::Inactive
                                )
                            });
                            if !members_reachable && status == CsStatus::Active {
                                stale_only.entry(chunk).or_default().push(cs);
                            }
                            !needed
                        }
                    };
                    // Only an active server can be told; the others are
                    // decided again when they register.
                    if garbage && status == CsStatus::Active {
                        forget.push((cs, chunk));
                        deletes.push((cs, core.cs_addr(cs), chunk));
                    }
                }
            }
            for (cs, chunk) in forget {
                if let Some(chunks) = core.stale.get_mut(&cs) {
                    chunks.remove(&chunk);
                    if chunks.is_empty() {
                        core.stale.remove(&cs);
                    }
                }
            }
            let mut events = Vec::new();
            for (chunk, holders) in &stale_only {
                if !core.stale_only.insert(*chunk) {
                    continue;
                }
                let Some(rec) = core.state.chunk(*chunk) else {
                    continue;
                };
                events.push(NewEvent {
                    kind: EventKind::Replication,
                    level: EventLevel::Error,
                    message: format!(
                        "chunk {chunk:#x} of {} (index {}) has no reachable current copy: its chain {:?} is down; the older copies on chunk server(s) {holders:?} are kept (never deleted) and the chunk is resynced from its chain when a member returns",
                        core.state.path_of(rec.file),
                        rec.index,
                        rec.replicas
                    ),
                });
            }
            core.stale_only.retain(|c| stale_only.contains_key(c));
            core.log_events(now, events);
            deletes
        };
        for (cs, addr, chunk) in deletes {
            let result = async {
                let control = self.connector.chunk_control(&addr).await?;
                control.delete_chunk(chunk).await
            }
            .await;
            match result {
                Ok(()) => tracing::info!(
                    "MDS: deleted the stale replica of chunk {chunk:#x} on CS {cs} ({addr}): the chunk has its copies"
                ),
                Err(e) => tracing::warn!(
                    "MDS: deleting the stale replica of chunk {chunk:#x} on CS {cs} ({addr}) failed: {e}; it is removed when that server re-registers"
                ),
            }
        }
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
            FailureReason::Unreachable | FailureReason::TimedOut => {
                core.log_event(
                    now,
                    EventKind::CsState,
                    EventLevel::Warning,
                    format!(
                        "chunk server {cs} ({addr}) answers neither {reporter} nor the MDS's probe ({reason:?}); its replica of chunk {chunk:#x} of {path} is dropped and re-created elsewhere"
                    ),
                );
            }
            FailureReason::VersionMismatch | FailureReason::IoError => {}
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
            // Only the chains of offline servers can lose members here:
            // their chunks come from the index, not a walk of every chunk.
            let mut to_drop: BTreeMap<ChunkId, Vec<CsId>> = BTreeMap::new();
            let index = core.state.index();
            let chunks_of_offline: BTreeSet<ChunkId> = offline
                .iter()
                .filter_map(|&cs| index.holding(cs))
                .flat_map(|h| h.chunks.iter().copied())
                .collect();
            for chunk in chunks_of_offline {
                if core.busy.contains(&chunk) {
                    continue;
                }
                let Some(rec) = core.state.chunk(chunk) else {
                    continue;
                };
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
                .filter(|r| r.releasing && !r.dropped && index.holding(r.id).is_none())
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
                if core.state.index().holding(cs).is_some() {
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
            // A chain has a member to remove only if it is longer than its
            // norm or names a server being released (or dropped): the
            // index lists both, in chunk order.
            let index = core.state.index();
            let mut candidates: BTreeSet<ChunkId> = index.long().clone();
            for (cs, holding) in index.servers() {
                if core.state.cs(cs).is_some_and(|r| r.releasing || r.dropped) {
                    candidates.extend(holding.chunks.iter().copied());
                }
            }
            for chunk in candidates {
                if core.busy.contains(&chunk) || core.planned.contains(&chunk) {
                    continue;
                }
                let Some(rec) = core.state.chunk(chunk) else {
                    continue;
                };
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
                // A rebalancing move's old member goes first once its copy
                // is in the chain.
                if let Some(&victim) = core.balance.victims.get(&chunk) {
                    if keep.len() > norm {
                        if let Some(at) = keep.iter().position(|&cs| cs == victim) {
                            remove.push(keep.remove(at));
                        }
                    }
                }
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
            {
                let mut core = self.core();
                if core
                    .balance
                    .victims
                    .get(&chunk)
                    .is_some_and(|v| remove.contains(v))
                {
                    core.balance.victims.remove(&chunk);
                    core.balance.done += 1;
                }
            }
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

    /// Copies `cs` may still take part in (`mds.repl.per_cs`).
    fn copy_slots(core: &Core, cs: CsId, per_cs: u64) -> u64 {
        per_cs.saturating_sub(core.copies_per_cs.get(&cs).copied().unwrap_or(0))
    }

    /// Up to `need` copy targets for `chunk` (whose chain is `members`):
    /// servers of its tier holding a stale replica of it first, newest
    /// first (only the blocks that differ are sent) as long as they keep
    /// the failure domain rule, then the placement rules; none without a
    /// copy slot left.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pick_targets(
        &self,
        core: &Core,
        now_ms: u64,
        chunk: ChunkId,
        attrs: &FileAttrs,
        members: &[CsId],
        need: usize,
        per_cs: u64,
        servers: &[placement::ServerView],
    ) -> Vec<CsId> {
        if need == 0 {
            return Vec::new();
        }
        let avoid: &[CsId] = core
            .copy_backoff
            .get(&chunk)
            .map(|b| b.failed_targets.as_slice())
            .unwrap_or(&[]);
        let pick = |avoid: &[CsId]| {
            self.pick_targets_avoiding(
                core, now_ms, chunk, attrs, members, need, per_cs, servers, avoid,
            )
        };
        let targets = pick(avoid);
        if targets.is_empty() && !avoid.is_empty() {
            // Only the servers that failed are left: try them again.
            return pick(&[]);
        }
        targets
    }

    #[allow(clippy::too_many_arguments)]
    fn pick_targets_avoiding(
        &self,
        core: &Core,
        now_ms: u64,
        chunk: ChunkId,
        attrs: &FileAttrs,
        members: &[CsId],
        need: usize,
        per_cs: u64,
        servers: &[placement::ServerView],
        avoid: &[CsId],
    ) -> Vec<CsId> {
        let mut stale: Vec<(MapVersion, CsId)> = core
            .stale
            .iter()
            .filter_map(|(&cs, chunks)| chunks.get(&chunk).map(|&v| (v, cs)))
            .filter(|&(_, cs)| {
                !avoid.contains(&cs)
                    && !members.contains(&cs)
                    && core.state.cs(cs).is_some_and(|r| r.tier == attrs.tier)
                    && Self::copy_slots(core, cs, per_cs) > 0
                    && self.takes_copy_over_stale(core, cs, now_ms)
            })
            .collect();
        stale.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut targets: Vec<CsId> = Vec::new();
        for (_, cs) in stale {
            if targets.len() >= need {
                break;
            }
            // A stale replica is reused unless it would share a failure
            // domain that a fresh target would not.
            let mut chain: Vec<CsId> = members.to_vec();
            chain.extend(&targets);
            chain.push(cs);
            if !placement::violates_domain(servers, &chain, attrs.tier, attrs.failure_domain) {
                targets.push(cs);
            }
        }
        if targets.len() < need {
            let mut keep: Vec<CsId> = members.to_vec();
            keep.extend(&targets);
            let exclude: Vec<CsId> = core
                .state
                .servers()
                .map(|r| r.id)
                .filter(|&cs| Self::copy_slots(core, cs, per_cs) == 0 || avoid.contains(&cs))
                .collect();
            targets.extend(placement::choose(
                servers,
                &placement::Request {
                    tier: attrs.tier,
                    domain: attrs.failure_domain,
                    members: &keep,
                    exclude: &exclude,
                    count: need - targets.len(),
                    chunk_bytes: attrs.chunk_size,
                },
            ));
        }
        targets
    }

    /// Whether `cs` may be the target of a copy over the stale replica it
    /// holds: like [`MdsService::takes_new_replicas`] but without the fill
    /// margin (the replica's space is already taken).
    fn takes_copy_over_stale(&self, core: &Core, cs: CsId, now_ms: u64) -> bool {
        let Some(rec) = core.state.cs(cs) else {
            return false;
        };
        !rec.addr.is_empty()
            && !rec.releasing
            && self.cs_status(core, cs, now_ms) == CsStatus::Active
            && core
                .live
                .get(&cs)
                .is_some_and(|l| l.no_space_at_free.is_none())
    }

    /// Picks up to `limit` chunks to copy now (most urgent first) and marks
    /// them planned. Also keeps the replication episode's events.
    pub(super) fn plan_replication(&self, limit: usize) -> Vec<CopyJob> {
        self.duty_times
            .plan
            .time(|| self.plan_replication_now(limit))
    }

    fn plan_replication_now(&self, limit: usize) -> Vec<CopyJob> {
        let now = self.now();
        let mut core = self.core();
        let mut candidates: Vec<(i64, ChunkId, usize)> = Vec::new();
        let mut pending = 0u64;
        {
            let Core {
                copy_backoff,
                state,
                ..
            } = &mut *core;
            copy_backoff.retain(|chunk, _| state.chunk(*chunk).is_some());
        }
        // A chunk needs copies only if its chain is shorter than its norm
        // or names a server that does not count (being released, offline,
        // dropped); busy, planned and backed-off chunks count as pending.
        // The index lists these, so a round does not walk every chunk.
        let mut listed: BTreeSet<ChunkId> = core.state.index().short().clone();
        for (cs, holding) in core.state.index().servers() {
            let counts = !core.state.cs(cs).is_some_and(|r| r.releasing)
                && matches!(
                    self.cs_status(&core, cs, now),
                    CsStatus::Active | CsStatus::Inactive
                );
            if !counts {
                listed.extend(holding.chunks.iter().copied());
            }
        }
        listed.extend(core.busy.iter().copied());
        listed.extend(core.planned.iter().copied());
        listed.extend(core.copy_backoff.keys().copied());
        for chunk in listed {
            let Some(rec) = core.state.chunk(chunk) else {
                continue;
            };
            if core.busy.contains(&chunk)
                || core.planned.contains(&chunk)
                || core
                    .copy_backoff
                    .get(&chunk)
                    .is_some_and(|b| b.not_before_ms > now)
            {
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
        let mut servers = if candidates.is_empty() || limit == 0 {
            Vec::new()
        } else {
            self.server_views(&core, now)
        };
        // No server takes new replicas at all: nothing to try this round.
        let any_target =
            limit > 0 && (!core.stale.is_empty() || servers.iter().any(|s| s.eligible));
        let per_cs = self.params(&core).repl_per_cs;
        for (_, chunk, need) in candidates {
            if jobs.len() >= limit || !any_target {
                break;
            }
            let rec = core.state.chunk(chunk).expect("listed above").clone();
            let health = self.chain_health(&core, &rec, now);
            // A source with copy slots left whose version is current (a
            // member still being moved to the map's version is not); one
            // that stays (not being released) first, then the least busy.
            let syncing = |cs: CsId| {
                core.version_sync
                    .get(&cs)
                    .is_some_and(|chunks| chunks.contains(&chunk))
            };
            let Some(source) = health
                .sources
                .iter()
                .copied()
                .filter(|&cs| Self::copy_slots(&core, cs, per_cs) > 0 && !syncing(cs))
                .max_by_key(|&cs| {
                    let releasing = core.state.cs(cs).is_some_and(|r| r.releasing);
                    (
                        !releasing,
                        Self::copy_slots(&core, cs, per_cs),
                        std::cmp::Reverse(cs),
                    )
                })
            else {
                continue;
            };
            let need = need.min(Self::copy_slots(&core, source, per_cs) as usize);
            let Some(attrs) = core.state.inode(rec.file).map(|n| n.attrs) else {
                continue;
            };
            // Members being released are leaving: their domains are free.
            let staying: Vec<CsId> = rec
                .replicas
                .iter()
                .copied()
                .filter(|cs| !core.state.cs(*cs).is_some_and(|r| r.releasing))
                .collect();
            let mut targets =
                self.pick_targets(&core, now, chunk, &attrs, &staying, need, per_cs, &servers);
            targets.retain(|t| !rec.replicas.contains(t));
            if targets.is_empty() {
                continue;
            }
            *core.copies_per_cs.entry(source).or_default() += targets.len() as u64;
            for t in &targets {
                *core.copies_per_cs.entry(*t).or_default() += 1;
            }
            let chunk_size = core
                .state
                .inode(rec.file)
                .map(|n| n.attrs.chunk_size)
                .unwrap_or(0);
            for t in &targets {
                if let Some(s) = servers.iter_mut().find(|s| s.id == *t) {
                    s.held_bytes = s.held_bytes.saturating_add(chunk_size);
                }
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
                moving_from: None,
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
        if job.moving_from.is_none() {
            self.core().repl.in_flight += 1;
        }
        let result = self.copy_chunk(&job).await;
        let now = self.now();
        let mut core = self.core();
        core.planned.remove(&job.chunk);
        // Saturating: leadership may have changed (and the counters reset)
        // while the copy ran.
        if job.moving_from.is_none() {
            core.repl.in_flight = core.repl.in_flight.saturating_sub(1);
        }
        let source_slots = job.targets.len() as u64;
        let mut release = vec![(job.source.cs, source_slots)];
        release.extend(job.targets.iter().map(|t| (t.cs, 1)));
        for (cs, n) in release {
            if let Some(count) = core.copies_per_cs.get_mut(&cs) {
                *count = count.saturating_sub(n);
                if *count == 0 {
                    core.copies_per_cs.remove(&cs);
                }
            }
        }
        for t in &job.targets {
            core.repl.remaining.remove(&(job.chunk, t.cs));
        }
        if job.moving_from.is_some() {
            core.balance.in_flight = core.balance.in_flight.saturating_sub(1);
            match &result {
                Ok(added) if !added.is_empty() => {
                    let size = job.chunk_size;
                    for cs in added {
                        core.held.entry(*cs).or_default().add(size);
                    }
                }
                other => {
                    core.balance.victims.remove(&job.chunk);
                    if let Err(e) = other {
                        tracing::info!(
                            "MDS: rebalancing move of chunk {:#x} of {} did not land: {e}",
                            job.chunk,
                            job.path
                        );
                    }
                }
            }
            return;
        }
        match &result {
            Ok(added) if !added.is_empty() => {
                core.copy_backoff.remove(&job.chunk);
            }
            // Overtaken copies too (a source behind the map's version
            // answers `Stale` at once, every time, until it is synced).
            _ => {
                let targets: Vec<CsId> = job.targets.iter().map(|t| t.cs).collect();
                core.copy_backoff
                    .entry(job.chunk)
                    .or_default()
                    .failed(now, &targets);
            }
        }
        match result {
            Ok(added) if !added.is_empty() => {
                let bytes = job.chunk_size * added.len() as u64;
                for cs in &added {
                    core.held.entry(*cs).or_default().add(job.chunk_size);
                }
                core.repl.done_chunks += 1;
                core.repl.done_bytes += bytes;
                core.repl.episode_chunks += 1;
                core.repl.episode_bytes += bytes;
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

    /// The copy of the module doc; returns the servers added to the chain.
    async fn copy_chunk(&self, job: &CopyJob) -> Result<Vec<CsId>> {
        let chunk = job.chunk;
        let rate = {
            let core = self.core();
            let p = self.params(&core);
            p.repl_bandwidth_bytes_per_s / p.repl_concurrency.max(1)
        };
        // Phase 1: base copies at the current version; writers go on.
        let results = join_all(
            job.targets
                .iter()
                .map(|t| self.replicate_watched(job, t, job.version, rate)),
        )
        .await;
        let mut ready = Vec::new();
        let mut partial = Vec::new();
        let mut first_error = None;
        for (t, r) in job.targets.iter().zip(results) {
            match r {
                Ok(_) => {
                    ready.push(t.clone());
                    partial.push(t.cs);
                }
                Err(e) => {
                    // Abandoned for lack of progress: what it copied stays.
                    if e.kind() == ErrorKind::TimedOut {
                        partial.push(t.cs);
                    }
                    tracing::warn!(
                        "MDS: copying chunk {chunk:#x} (version {}) from CS {} to CS {} ({}) failed: {e}; the partial copy is kept for the next try",
                        job.version,
                        job.source.cs,
                        t.cs,
                        t.addr
                    );
                    first_error.get_or_insert(e);
                }
            }
        }
        // What landed is a base for the next try (kept while the chunk
        // lacks copies, then deleted by `prune_stale`). A target that
        // failed otherwise is not preferred again.
        self.remember_stale(chunk, &partial, job.version);
        let all: Vec<CsId> = job.targets.iter().map(|t| t.cs).collect();
        if ready.is_empty() {
            return Err(first_error.unwrap_or_else(|| Error::internal("a copy without targets")));
        }
        // Phase 2: under busy at v+1, only the blocks written meanwhile.
        let version = job.version + 1;
        let term = {
            let _chunks = self.chunk_lock.lock().await;
            let (replicas, term) = {
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
                (replicas, core.led_term)
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
            term
        };
        let results = join_all(
            ready
                .iter()
                .map(|t| self.replicate_watched(job, t, version, rate)),
        )
        .await;
        let mut copied = Vec::new();
        for (t, r) in ready.iter().zip(results) {
            match r {
                Ok(stats) => {
                    tracing::info!(
                        "MDS: chunk {chunk:#x} copied from CS {} to CS {} at version {version}: {} bytes sent, {} compared, base reused: {}",
                        job.source.cs,
                        t.cs,
                        stats.bytes_copied,
                        stats.bytes_compared,
                        stats.reused_base
                    );
                    copied.push(t.clone());
                }
                Err(e) => tracing::warn!(
                    "MDS: copying chunk {chunk:#x} (version {version}) from CS {} to CS {} ({}) failed: {e}; the partial copy is kept for the next try",
                    job.source.cs,
                    t.cs,
                    t.addr
                ),
            }
        }
        let committed = {
            let _chunks = self.chunk_lock.lock().await;
            let led_term = self.core().led_term;
            let result = if copied.is_empty() {
                Ok(())
            } else if led_term != term {
                // Busy lives in the leader's memory: a leader elected while
                // the copy ran handed out maps at `version` and writers
                // wrote at it, which the copy may lack. Another try copies
                // again (the target's replica is a base).
                Err(Error::stale(format!(
                    "chunk {chunk:#x}: the MDS leadership changed (term {term:?} -> \
                     {led_term:?}) while its copy at version {version} ran; planned again"
                )))
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
        // A failed copy may still have landed (a lost answer), and a refused
        // commit leaves good copies outside the chain: both stay stale
        // candidates (bases for the next try).
        committed?;
        if copied.is_empty() {
            return Err(Error::unavailable(format!(
                "chunk {chunk:#x}: no copy to {:?} finished at version {version}",
                all
            )));
        }
        let mut core = self.core();
        for r in &copied {
            if let Some(chunks) = core.stale.get_mut(&r.cs) {
                chunks.remove(&chunk);
            }
        }
        Ok(copied.into_iter().map(|r| r.cs).collect())
    }

    /// `target.replicate_chunk` at `version` from the job's source, with no
    /// deadline on the whole call but one on progress: the target's
    /// `copy_progress` is polled (each poll with its own short deadline)
    /// and the copy is abandoned with `TimedOut` once no bytes moved for
    /// `mds.repl.progress_tout`. Progress feeds the rate and the ETA.
    pub(super) async fn replicate_watched(
        &self,
        job: &CopyJob,
        target: &Replica,
        version: MapVersion,
        rate_bytes_per_s: u64,
    ) -> Result<CopyStats> {
        let chunk = job.chunk;
        let key = (chunk, target.cs);
        let copier = self.copy_connector.chunk_control(&target.addr).await?;
        let poller = self.connector.chunk_control(&target.addr).await?;
        let copy = copier.replicate_chunk(
            chunk,
            version,
            job.chunk_size,
            job.source.clone(),
            rate_bytes_per_s,
        );
        tokio::pin!(copy);
        self.core().repl.remaining.insert(key, job.chunk_size);
        let poll_every = Duration::from_millis(PROGRESS_POLL_MS);
        let mut next_poll = tokio::time::Instant::now() + poll_every;
        let mut last_moved = tokio::time::Instant::now();
        let mut done: Option<u64> = None;
        loop {
            tokio::select! {
                result = &mut copy => {
                    let now = self.now();
                    let mut core = self.core();
                    core.repl.remaining.insert(key, 0);
                    if let Ok(stats) = &result {
                        // What the last poll did not see.
                        let seen = done.unwrap_or(0);
                        core.repl
                            .recent
                            .push_back((now, stats.bytes_copied.saturating_sub(seen)));
                        core.repl.copied_bytes += stats.bytes_copied;
                    }
                    return result;
                }
                _ = tokio::time::sleep_until(next_poll) => {}
            }
            next_poll = tokio::time::Instant::now() + poll_every;
            let progress_timeout_ms = {
                let core = self.core();
                self.params(&core).repl_progress_timeout_ms
            };
            let poll_deadline =
                Duration::from_millis(PROGRESS_POLL_DEADLINE_MS.min(progress_timeout_ms));
            let progress = tokio::time::timeout(poll_deadline, poller.copy_progress(chunk)).await;
            if let Ok(Ok(Some(p))) = progress {
                let moved = match done {
                    None => p.bytes_done > 0,
                    Some(before) => p.bytes_done != before,
                };
                if p.version == version && moved {
                    let delta = p.bytes_done.saturating_sub(done.unwrap_or(0));
                    done = Some(p.bytes_done);
                    last_moved = tokio::time::Instant::now();
                    let now = self.now();
                    let mut core = self.core();
                    core.repl.recent.push_back((now, delta));
                }
                // Known once the CRC tables are compared (0 before).
                if p.version == version && p.bytes_total > 0 {
                    self.core()
                        .repl
                        .remaining
                        .insert(key, p.bytes_total.saturating_sub(p.bytes_done));
                }
            }
            let stalled = tokio::time::Instant::now().duration_since(last_moved);
            if stalled >= Duration::from_millis(progress_timeout_ms) {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "the copy of chunk {chunk:#x} of {} (index {}) at version {version} from chunk server {} to chunk server {} ({}) moved no bytes for {} ms (mds.repl.progress_tout={progress_timeout_ms}); abandoned, it is planned again and resumes from what was copied",
                        job.path,
                        job.index,
                        job.source.cs,
                        target.cs,
                        target.addr,
                        stalled.as_millis()
                    ),
                ));
            }
        }
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
            let jobs = self.plan_replication(free);
            let free = free.saturating_sub(jobs.len());
            for job in jobs {
                running.push(self.run_copy(job));
            }
            if free > 0 {
                for job in self.plan_balance(free) {
                    running.push(self.run_copy(job));
                }
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

    /// One rebalancing pass run to the end (tests and simulation): plans
    /// moves (ignoring the pass interval), copies them, then trims the old
    /// members. Returns the moves that landed.
    pub async fn rebalance_once(&self) -> u64 {
        let before = self.core().balance.done;
        self.check_domains();
        let limit = {
            let mut core = self.core();
            core.balance.forget_last_pass();
            self.params(&core).repl_concurrency as usize
        };
        let _ = self.plan_replication(0);
        let jobs = self.plan_balance(limit);
        join_all(jobs.into_iter().map(|j| self.run_copy(j))).await;
        self.trim_excess().await;
        self.core().balance.done - before
    }

    /// The cluster status `pstorage stat` shows.
    pub(super) fn status(&self) -> ClusterStatus {
        let now = self.now();
        let core = self.core();
        let state = &core.state;
        let mut per_cs: BTreeMap<CsId, u64> = BTreeMap::new();
        let mut held: BTreeMap<CsId, u64> = BTreeMap::new();
        let mut counts = ChunkCounts::default();
        let mut pending = 0u64;
        // Copies in flight: what their last progress left; the others: a
        // chunk size per missing copy.
        let mut remaining_bytes: u64 = core.repl.remaining.values().sum();
        for (&chunk, rec) in state.chunks() {
            let attrs = state.inode(rec.file).expect("chunk file").attrs;
            for cs in &rec.replicas {
                *per_cs.entry(*cs).or_default() += 1;
                *held.entry(*cs).or_default() += attrs.chunk_size;
            }
            let replicas = attrs.replicas;
            let health = self.chain_health(&core, rec, now);
            let (norm, min) = (replicas.norm as usize, replicas.min as usize);
            pending += u64::from(health.counted < norm);
            if !core.busy.contains(&chunk) && !core.planned.contains(&chunk) {
                let missing = norm.saturating_sub(health.counted) as u64;
                remaining_bytes =
                    remaining_bytes.saturating_add(missing.saturating_mul(attrs.chunk_size));
            }
            if core.busy.contains(&chunk) && !core.balance.victims.contains_key(&chunk) {
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
                    full: live.is_some_and(|l| l.full || l.no_space_at_free.is_some())
                        || core.held.get(&r.id).is_some_and(Held::at_replica_bound),
                    io: live.map(|l| l.rates).unwrap_or_default(),
                    location: r.location.clone(),
                    host: r.host.clone(),
                    tier: r.tier,
                    capacity_bytes: if r.capacity_bytes > 0 {
                        r.capacity_bytes
                    } else {
                        live.map(|l| l.space.total_bytes).unwrap_or(0)
                    },
                    held_bytes: held.get(&r.id).copied().unwrap_or(0),
                    journal_bytes: live.map(|l| l.stats.journal_bytes).unwrap_or(0),
                    journal_used_bytes: live.map(|l| l.stats.journal_used_bytes).unwrap_or(0),
                }
            })
            .collect();
        let mut tiers: BTreeMap<u8, TierSpace> = BTreeMap::new();
        for c in cs.iter().filter(|c| c.status != CsStatus::Dropped) {
            let t = tiers.entry(c.tier).or_insert(TierSpace {
                tier: c.tier,
                ..TierSpace::default()
            });
            t.servers += 1;
            t.capacity_bytes += c.capacity_bytes;
            t.held_bytes += c.held_bytes;
            t.free_bytes += c.space.free_bytes;
        }
        let (mut files, mut dirs, mut logical_bytes) = (0u64, 0u64, 0u64);
        for node in state.inodes() {
            match node.kind {
                InodeKind::File => {
                    files += 1;
                    logical_bytes += node.size;
                }
                InodeKind::Dir => dirs += 1,
                _ => {}
            }
        }
        let cs_down = cs
            .iter()
            .any(|c| c.status != CsStatus::Active && c.status != CsStatus::Dropped);
        let health = if counts.blocked > 0 {
            ClusterHealth::Failure
        } else if counts.degraded + counts.urgent + counts.replicating > 0 || cs_down {
            ClusterHealth::Degraded
        } else {
            ClusterHealth::Healthy
        };
        let recent_bytes: u64 = core
            .repl
            .recent
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) <= RATE_WINDOW_MS)
            .map(|(_, b)| b)
            .sum();
        let rate_bytes_per_s = recent_bytes * 1000 / RATE_WINDOW_MS;
        let eta_s = (remaining_bytes > 0 && rate_bytes_per_s > 0)
            .then(|| remaining_bytes.div_ceil(rate_bytes_per_s));
        ClusterStatus {
            cluster_name: self.config.cluster_name.clone(),
            health,
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
                rate_bytes_per_s,
                copied_bytes: core.repl.copied_bytes,
                remaining_bytes,
                eta_s,
            },
            logical_bytes,
            tiers: tiers.into_values().collect(),
            rebalance: Self::balance_status(&core),
            warnings: core.balance.warnings.clone(),
        }
    }
}
