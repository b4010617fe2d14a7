//! Chunk allocation by [`MdsService`]: which chunk servers take new
//! replicas (activity, fill margin, ENOSPC), the servers as placement sees
//! them (the choice itself is `placement.rs`'s), and creating a new chunk
//! on its chain before committing it, with chunk ids from a range of the
//! leader's Raft term.

use futures::future::join_all;

use super::params::ClusterParams;
use super::placement;
use super::service::{unexpected, MdsService};
use super::shared::{Core, CsLive, Held, REPLICA_HEADROOM};
use super::state::{ApplyOutcome, Command};
use crate::error::{Error, ErrorKind, Result};
use crate::types::*;

/// The free space a chunk server of `total_bytes` keeps before it gets no
/// new replicas: `mds.alloc.fill_margin` percent of its disk, at most
/// `mds.alloc.fill_margin_max` bytes.
pub(super) fn margin_bytes(params: &ClusterParams, total_bytes: u64) -> u64 {
    let percent = (total_bytes as u128) * (params.fill_margin_percent as u128) / 100;
    (percent.min(u64::MAX as u128) as u64).min(params.fill_margin_max_bytes)
}

impl MdsService {
    /// Whether new replicas may go to `cs`: active, registered, not being
    /// released, above the fill margin, no recent ENOSPC, and not at the
    /// replica bound ([`Held::at_replica_bound`]).
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
        live.no_space_at_free.is_none()
            && !self.below_margin(core, live, live.placed_bytes)
            && !core.held.get(&cs).is_some_and(Held::at_replica_bound)
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
                    held_bytes: core.held.get(&r.id).map_or(0, |h| h.bytes),
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

    /// Recounts [`Core::held`] from the chunk maps (their index: O(servers)).
    pub(super) fn recount_held(core: &mut Core) {
        core.held = core
            .state
            .index()
            .servers()
            .map(|(cs, holding)| {
                let held = Held {
                    bytes: holding.bytes,
                    replicas: holding.chunks.len() as u64,
                };
                (cs, held)
            })
            .collect();
    }

    /// Active servers not being released (whatever their space).
    fn active_servers(&self, core: &Core, now_ms: u64) -> usize {
        core.state
            .servers()
            .filter(|r| !r.addr.is_empty() && !r.releasing)
            .filter(|r| self.cs_status(core, r.id, now_ms) == CsStatus::Active)
            .count()
    }

    pub(super) async fn allocate_chunk(&self, lease: LeaseId, index: u64) -> Result<ChunkMap> {
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
                            "cannot allocate chunk {index} of {path}: no space: only {} of {active} active chunk server(s) have more free disk than mds.alloc.fill_margin={margin}% (at most mds.alloc.fill_margin_max={max} bytes) and hold fewer than {} replicas, replicas={} needs {}; free space or add chunk servers",
                            chosen.len(),
                            MAX_REPLICAS_PER_CS as u64 - REPLICA_HEADROOM,
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
                .raft()
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
                    core.held.entry(r.cs).or_default().add(attrs.chunk_size);
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
}

/// The first chunk id a leader of `term` allocates: each term has its own
/// range of 2^32 ids (without Raft, ids start at 1).
fn term_chunk_floor(term: Option<u64>) -> ChunkId {
    ChunkId(term.map_or(0, |t| t.min(u64::from(u32::MAX))) << 32)
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
