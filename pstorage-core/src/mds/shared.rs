//! The MDS's shared volatile state: [`Core`], behind [`MdsService`]'s
//! state mutex (see `service.rs`), with the chunk server liveness
//! ([`CsLive`]) and the re-replication progress ([`ReplProgress`]) it
//! holds.
//!
//! Who owns which field (its main writer; every part of the MDS reads
//! `state`, and a change of leadership resets the volatile fields):
//! - the commit path (`service.rs`, with [`Core::commit_local`] and
//!   [`Core::log_events`] here): `state`, `log`, `replicated`,
//!   `pending_events`; leadership (`service.rs`): `leader_since_ms`,
//!   `led_term`;
//! - registrations and heartbeats (`registry.rs`): `live` (allocation and
//!   `healing.rs` note placements and health in it), `unclean_kept`,
//!   `seen_status` (with the health checks of `healing.rs`);
//! - version pushes and chain changes (`chunk_maps.rs`): `version_sync`
//!   (filled by registrations and `healing.rs` too);
//! - allocation (`allocation.rs`): `next_chunk_reserved`, `held` (grown by
//!   copies in `healing.rs` too);
//! - re-replication (`healing.rs`): `planned`, `copy_backoff`, `busy`,
//!   `repl`, `stale` (set by registrations too), `copies_per_cs`,
//!   `stale_only`, `repairs`; rebalancing (`balance.rs`) shares `planned`,
//!   `busy`, `repl` and `copies_per_cs` and owns `balance`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[cfg(doc)]
use super::service::MdsService;
use super::state::{ApplyOutcome, Command, MdsState, NewEvent, MAX_EVENTS};
use super::store::CommandLog;
use crate::error::Result;
use crate::types::*;

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
    pub(super) log: Option<Box<dyn CommandLog>>,
    /// Chunk servers that registered since this MDS started.
    pub(super) live: BTreeMap<CsId, CsLive>,
    /// Chain members that reported an older version than the map at
    /// registration: `tick` pushes them the current version.
    pub(super) version_sync: BTreeMap<CsId, BTreeSet<ChunkId>>,
    /// Chunk ids handed to chunk servers but maybe not committed: never
    /// reused while this MDS runs.
    pub(super) next_chunk_reserved: ChunkId,
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
    /// (no other member was active; the chunk moved on to a new version).
    /// A member registering clean is sure to be current (it holds every
    /// write the chain acknowledged since it joined, and lost none), so
    /// these leave the chain then (see `register_cs`).
    pub(super) unclean_kept: BTreeMap<ChunkId, BTreeSet<CsId>>,
    /// Chunks that lost a corrupt replica, with what was found: the event
    /// log says when each is repaired.
    pub(super) repairs: BTreeMap<ChunkId, String>,
    /// Commands go through Raft: events are queued for
    /// [`MdsService::flush_events`] instead of committed under the lock.
    pub(super) replicated: bool,
    /// Events waiting to be committed (Raft mode).
    pub(super) pending_events: Vec<(u64, Vec<NewEvent>)>,
    /// When this MDS became the leader (or started, without Raft): chunk
    /// servers get the offline timeout from then to register with it.
    pub(super) leader_since_ms: u64,
    /// The term this MDS leads in (`None`: not the leader).
    pub(super) led_term: Option<u64>,
    /// The term in which this MDS committed [`super::Command::RefreshLeases`].
    pub(super) leases_refreshed: Option<u64>,
    /// What each chunk server holds (the chains it is in), recounted every
    /// `tick` and grown by each placement in between: placement's fullness
    /// without a scan of every chunk.
    pub(super) held: BTreeMap<CsId, Held>,
    /// Rebalancing (volatile).
    pub(super) balance: super::balance::BalanceProgress,
}

/// What one chunk server holds, as [`Core::held`] counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Held {
    /// Chunk sizes of the chains it is in.
    pub(super) bytes: u64,
    /// The chains it is in: near [`MAX_REPLICAS_PER_CS`] it gets no new
    /// replica, so that its registration stays within what the MDS takes.
    pub(super) replicas: u64,
}

/// How far short of [`MAX_REPLICAS_PER_CS`] placement stops: copies
/// planned before a server got there, and placements racing the count,
/// land in this headroom (0.4% of the bound).
pub(super) const REPLICA_HEADROOM: u64 = REPLICA_PAGE as u64;

impl Held {
    /// One more replica of a chunk of `chunk_size` bytes.
    pub(super) fn add(&mut self, chunk_size: u64) {
        self.bytes = self.bytes.saturating_add(chunk_size);
        self.replicas = self.replicas.saturating_add(1);
    }

    /// Whether it holds as many replicas as placement gives a server: the
    /// most a registration may report, less [`REPLICA_HEADROOM`].
    pub(super) fn at_replica_bound(&self) -> bool {
        self.replicas >= MAX_REPLICAS_PER_CS as u64 - REPLICA_HEADROOM
    }
}

impl Core {
    /// Validates, logs durably, then applies `cmd` (no Raft).
    pub(super) fn commit_local(&mut self, cmd: Command) -> Result<ApplyOutcome> {
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
    pub(super) fn log_events(&mut self, now_ms: u64, mut events: Vec<NewEvent>) {
        if events.is_empty() {
            return;
        }
        // Bounded, as everything a command carries: the log keeps the last
        // MAX_EVENTS, and a message names paths and addresses.
        if events.len() > MAX_EVENTS {
            events.drain(..events.len() - MAX_EVENTS);
        }
        for e in &mut events {
            truncate_message(&mut e.message, MAX_EVENT_MESSAGE);
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

/// Most bytes of an event's message; a longer one is cut (at a character)
/// and ends with `...`.
pub const MAX_EVENT_MESSAGE: usize = 2048;

/// Cuts `message` to at most `max` bytes (at least 3), marking the cut.
pub(super) fn truncate_message(message: &mut String, max: usize) {
    if message.len() <= max {
        return;
    }
    let mut end = max - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str("...");
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_at_a_character() {
        let mut short = "short".to_string();
        truncate_message(&mut short, 10);
        assert_eq!(short, "short");
        let mut long = "é".repeat(2000);
        truncate_message(&mut long, MAX_EVENT_MESSAGE);
        assert!(long.len() <= MAX_EVENT_MESSAGE);
        assert!(long.ends_with("é..."));
        let mut exact = "x".repeat(12);
        truncate_message(&mut exact, 10);
        assert_eq!(exact, "xxxxxxx...");
    }
}
