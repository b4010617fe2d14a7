//! Rebalancing and failure-domain checks: the MDS side of
//! [`super::placement`] (which decides; this module gathers the views,
//! turns moves into copy jobs and keeps the progress).
//!
//! A move of chunk C from server S to server T is a re-replication copy
//! to T (the same four steps, so writers stall only for the last delta)
//! with S remembered as C's victim; once T is in the chain, the chain has
//! `replicas_norm + 1` members and `trim_excess` removes S first. So a
//! chunk never has fewer than `replicas_norm` copies during a move (copy
//! first, then drop). Moves are planned only while nothing needs
//! re-replication and every registered chunk server is active (paused
//! while the cluster is degraded), never for a chunk that is being copied
//! or planned (so never concurrently with its recovery), at most
//! `mds.balance.rate` per minute, and each takes a copy slot like any copy
//! (`mds.repl.concurrency`, `mds.repl.per_cs`, `mds.repl.bandwidth`).

use std::collections::{BTreeMap, BTreeSet};

use super::healing::CopyJob;
use super::placement::{self, ChunkView};
use super::service::MdsService;
use super::shared::Core;
use crate::types::*;

/// A rebalancing pass (a scan of every chunk) runs at most this often.
const BALANCE_PASS_MS: u64 = 2_000;

/// Rebalancing progress and failure-domain warnings (volatile: they start
/// afresh when this MDS becomes leader).
#[derive(Debug, Default)]
pub(super) struct BalanceProgress {
    /// Chunk -> the member a move drops once its copy is in the chain.
    pub(super) victims: BTreeMap<ChunkId, CsId>,
    pub(super) in_flight: u64,
    pub(super) done: u64,
    pub(super) pending: u64,
    pub(super) spread_permille: u64,
    pub(super) state: RebalanceState,
    /// Moves that may start now (thousandths), refilled at `mds.balance.rate`.
    tokens_milli: u64,
    last_refill_ms: Option<u64>,
    last_pass_ms: Option<u64>,
    /// Conditions `stat` shows (fewer failure domains than replicas).
    pub(super) warnings: Vec<String>,
}

impl BalanceProgress {
    /// Lets the next pass run at once.
    pub(super) fn forget_last_pass(&mut self) {
        self.last_pass_ms = None;
    }
}

impl MdsService {
    /// Recounts the bytes each server holds and checks, for every (tier,
    /// failure domain, replicas) that files with chunks use, that the tier
    /// has as many domains as replicas; a shortage is a warning in `stat`
    /// and, when it appears, in the event log (writes go on: placement
    /// spreads as evenly as it can). Called by `tick`.
    pub(super) fn check_domains(&self) {
        let now = self.now();
        let mut core = self.core();
        Self::recount_held(&mut core);
        // The classes of the files holding chunks, from the index: a walk
        // of every inode here grew with the namespace, every tick.
        let wanted: Vec<(u8, FailureDomain, u8)> = core.state.index().classes().collect();
        let servers = self.server_views(&core, now);
        let mut warnings = Vec::new();
        for (tier, domain, norm) in wanted {
            let have = placement::domains_in_tier(&servers, tier, domain);
            if have < norm as usize {
                warnings.push(format!(
                    "tier {tier} has {have} {domain}(s) for files with replicas norm {norm} and failure-domain={domain}: some replicas share a {domain} (placed as evenly as possible); add chunk servers in other {domain}s (make-cs --host/--location, set-cs)"
                ));
            }
        }
        let new: Vec<String> = warnings
            .iter()
            .filter(|w| !core.balance.warnings.contains(w))
            .cloned()
            .collect();
        core.balance.warnings = warnings;
        for w in new {
            core.log_event(now, EventKind::CsState, EventLevel::Warning, w);
        }
    }

    /// Whether rebalancing must wait: some chunk needs copies, a copy for
    /// recovery is in flight, or a registered chunk server is not active.
    fn balance_paused(&self, core: &Core, now_ms: u64) -> bool {
        core.repl.pending > 0
            || core.repl.in_flight > 0
            || core
                .state
                .servers()
                .filter(|r| !r.dropped && !r.addr.is_empty())
                .any(|r| self.cs_status(core, r.id, now_ms) != CsStatus::Active)
    }

    /// Plans up to `limit` rebalancing moves as copy jobs (see the module
    /// doc); none while paused, rate-limited, or within `BALANCE_PASS_MS`
    /// of the last pass.
    pub(super) fn plan_balance(&self, limit: usize) -> Vec<CopyJob> {
        let now = self.now();
        let mut core = self.core();
        let params = self.params(&core);
        if params.balance_rate_per_min == 0 {
            core.balance.state = RebalanceState::Off;
            return Vec::new();
        }
        // Refill: rate per minute, at most 5 s worth (at least one move).
        let cap_milli = (params.balance_rate_per_min * 1000 / 12).max(1000);
        let last = core.balance.last_refill_ms.unwrap_or(now);
        let refill = now.saturating_sub(last) * params.balance_rate_per_min / 60;
        core.balance.tokens_milli = (core.balance.tokens_milli + refill).min(cap_milli);
        if core.balance.last_refill_ms.is_none() {
            core.balance.tokens_milli = cap_milli;
        }
        core.balance.last_refill_ms = Some(now);
        if self.balance_paused(&core, now) {
            core.balance.state = RebalanceState::Paused;
            return Vec::new();
        }
        if core
            .balance
            .last_pass_ms
            .is_some_and(|t| now.saturating_sub(t) < BALANCE_PASS_MS)
        {
            return Vec::new();
        }
        core.balance.last_pass_ms = Some(now);
        let budget = limit.min((core.balance.tokens_milli / 1000) as usize);
        let mut servers = self.server_views(&core, now);
        // Moves in flight count as done for the plan.
        let sizes: BTreeMap<ChunkId, u64> = core
            .balance
            .victims
            .keys()
            .filter_map(|c| {
                let rec = core.state.chunk(*c)?;
                Some((*c, core.state.inode(rec.file)?.attrs.chunk_size))
            })
            .collect();
        for (chunk, from) in &core.balance.victims {
            let size = sizes.get(chunk).copied().unwrap_or(0);
            if let Some(s) = servers.iter_mut().find(|s| s.id == *from) {
                s.held_bytes = s.held_bytes.saturating_sub(size);
            }
        }
        let active: BTreeSet<CsId> = servers.iter().filter(|s| s.active).map(|s| s.id).collect();
        let chunks: Vec<ChunkView> = core
            .state
            .chunks()
            .filter_map(|(&chunk, rec)| {
                let attrs = core.state.inode(rec.file)?.attrs;
                let busy = core.busy.contains(&chunk)
                    || core.planned.contains(&chunk)
                    || core.balance.victims.contains_key(&chunk)
                    || rec.replicas.len() != attrs.replicas.norm as usize
                    || rec.replicas.iter().any(|cs| !active.contains(cs));
                Some(ChunkView {
                    chunk,
                    members: &rec.replicas,
                    tier: attrs.tier,
                    domain: attrs.failure_domain,
                    bytes: attrs.chunk_size,
                    busy,
                })
            })
            .collect();
        let plan =
            placement::plan_rebalance(&servers, &chunks, params.balance_band_percent, budget);
        drop(chunks);
        core.balance.spread_permille = plan.spread_permille;
        let per_cs = params.repl_per_cs;
        let mut jobs = Vec::new();
        let mut skipped = 0u64;
        for mv in &plan.moves {
            let slots = |core: &Core, cs: CsId| {
                per_cs.saturating_sub(core.copies_per_cs.get(&cs).copied().unwrap_or(0))
            };
            if slots(&core, mv.from) == 0 || slots(&core, mv.to) == 0 {
                skipped += 1;
                continue;
            }
            let Some(rec) = core.state.chunk(mv.chunk).cloned() else {
                continue;
            };
            let Some(attrs) = core.state.inode(rec.file).map(|n| n.attrs) else {
                continue;
            };
            *core.copies_per_cs.entry(mv.from).or_default() += 1;
            *core.copies_per_cs.entry(mv.to).or_default() += 1;
            core.planned.insert(mv.chunk);
            core.balance.victims.insert(mv.chunk, mv.from);
            core.balance.in_flight += 1;
            core.balance.tokens_milli = core.balance.tokens_milli.saturating_sub(1000);
            jobs.push(CopyJob {
                chunk: mv.chunk,
                version: rec.version,
                chunk_size: attrs.chunk_size,
                path: core.state.path_of(rec.file),
                index: rec.index,
                source: Replica {
                    cs: mv.from,
                    addr: core.cs_addr(mv.from),
                },
                targets: vec![Replica {
                    cs: mv.to,
                    addr: core.cs_addr(mv.to),
                }],
                moving_from: Some(mv.from),
            });
        }
        core.balance.pending = plan.pending + skipped;
        let moving = !jobs.is_empty() || core.balance.in_flight > 0 || plan.pending > 0;
        let before = core.balance.state;
        core.balance.state = if moving {
            RebalanceState::Moving
        } else {
            RebalanceState::Balanced
        };
        match (before, core.balance.state) {
            (RebalanceState::Balanced, RebalanceState::Moving) => {
                let n = jobs.len() as u64 + plan.pending;
                core.log_event(
                    now,
                    EventKind::Replication,
                    EventLevel::Info,
                    format!(
                        "rebalancing started: about {n} replica move(s) to even out fullness within tiers or fix failure domains (spread {}.{}%)",
                        plan.spread_permille / 10,
                        plan.spread_permille % 10
                    ),
                );
            }
            (RebalanceState::Moving, RebalanceState::Balanced) => {
                let done = core.balance.done;
                core.log_event(
                    now,
                    EventKind::Replication,
                    EventLevel::Info,
                    format!(
                        "rebalancing finished: {done} replica move(s) since this MDS leads; fullness spread {}.{}%",
                        plan.spread_permille / 10,
                        plan.spread_permille % 10
                    ),
                );
            }
            _ => {}
        }
        jobs
    }

    /// What `stat` shows about rebalancing.
    pub(super) fn balance_status(core: &Core) -> RebalanceStatus {
        RebalanceStatus {
            state: core.balance.state,
            in_flight: core.balance.in_flight,
            done: core.balance.done,
            pending: core.balance.pending,
            spread_permille: core.balance.spread_permille,
        }
    }
}
