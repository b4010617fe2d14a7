//! [`CsRegistry`] for [`MdsService`]: chunk server ids, registration
//! (reconciling what a server holds with the chains), heartbeats (liveness,
//! I/O rates, disk-full events), bad-replica and bad-block reports, and the
//! administrator's drop of a server.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;

use super::service::{unexpected, MdsService};
use super::shared::{Core, CsLive};
use super::state::{ApplyOutcome, Command, MdsState};
use crate::error::{Error, ErrorKind, Result};
use crate::traits::CsRegistry;
use crate::types::*;

impl MdsService {
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
        // Checked by the leader before it proposes, not when the command
        // applies: a log written before the bound replays as it did.
        // Concurrent allocations may pass it together, a few over at most.
        let kept = self.core().state.cs_kept();
        if kept >= MAX_CHUNK_SERVERS {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "the cluster has {kept} chunk servers, the most it takes is \
                     {MAX_CHUNK_SERVERS}: drop one with rm-cs first"
                ),
            ));
        }
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
        validate_addr(&format!("chunk server {id}"), &addr)?;
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
        let (delete, kept, lost, suspects, move_on) = {
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
            // Unclean replicas kept alone at the map's version.
            let mut move_on: Vec<ChunkId> = Vec::new();
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
                        // Kept at the version its lost writes were
                        // acknowledged at, a writer would not know to
                        // replay them (`client/unflushed.rs`), and the
                        // server does not serve it at that version: the
                        // chunk moves on to a new one.
                        if info.version == version {
                            move_on.push(info.chunk);
                        }
                    } else if let Some(kept) = core.unclean_kept.remove(&info.chunk) {
                        // Clean at any version up to the map's (behind, it
                        // missed version pushes, never a write: those need
                        // every member), it holds every acknowledged write.
                        for cs in kept.into_iter().filter(|&cs| cs != id) {
                            suspects.push((info.chunk, cs, Suspect::Superseded));
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
            (delete, kept, lost, suspects, move_on)
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
        for chunk in move_on {
            // A failure fails the registration: the server registers again,
            // its replica still unclean, rather than serve it unmoved.
            match self.move_version_on(chunk).await {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
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
            // client reads it. Lent, not just moved: a copy into it that
            // stopped at the reporter's bad blocks (it could not read them)
            // must not keep it from serving them (`--all-faults` seed
            // 100084: the copies and the repair waited on each other for
            // good). The first (of the newest) that takes the version is
            // the source.
            let what = format!(
                "lending chunk {chunk:#x} at version {} to a block repair",
                reply.version
            );
            let at = reply.version;
            let lent = self
                .cs_call(&replica, &what, |control| async move {
                    control.lend_for_repair(chunk, at).await
                })
                .await;
            match lent {
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
    pub(super) fn can_be_source(&self, core: &Core, cs: CsId, chunk: ChunkId, now_ms: u64) -> bool {
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
