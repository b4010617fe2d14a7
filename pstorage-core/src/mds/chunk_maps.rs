//! Chain changes of [`MdsService`]: version pushes to chunk servers (and
//! the short control calls they go through), dropping members from a
//! chain, fencing a file whose writer was lost and bringing its chains to
//! one content, and deleting released replicas. Callers hold
//! `chunk_lock` where a function says so.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::service::{unexpected, MdsService};
use super::shared::Core;
use super::state::{ApplyOutcome, Command};
use crate::error::{Error, ErrorKind, Result};
use crate::traits::ChunkControl;
use crate::types::*;

impl MdsService {
    pub(super) async fn sync_versions(&self) {
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

    /// Gives `chunk` a new version with its chain unchanged and pushes it;
    /// members that do not take it get it from `tick` once active (a write
    /// at the new version is refused by them until then, and its report
    /// drops them). For an unclean replica kept as the best copy
    /// (`register_cs`): the version its lost writes were acknowledged at
    /// must end, so that their writer replays them. Callers hold
    /// `chunk_lock`.
    pub(super) async fn move_version_on(&self, chunk: ChunkId) -> Result<ChunkMap> {
        let (version, replicas) = {
            let core = self.core();
            let rec = core
                .state
                .chunk(chunk)
                .ok_or_else(|| Error::not_found(format!("chunk {chunk:#x} no longer exists")))?;
            (rec.version, rec.replicas.clone())
        };
        let outcome = self
            .commit(Command::UpdateChunkMap {
                chunk,
                version: version + 1,
                replicas,
            })
            .await?;
        let ApplyOutcome::ChunkMap(map) = outcome else {
            return Err(unexpected(outcome));
        };
        let failed = self.push_to_all(&map).await;
        let mut core = self.core();
        for cs in failed {
            core.version_sync.entry(cs).or_default().insert(chunk);
        }
        Ok(map)
    }

    /// `Unavailable` naming the file and counts if `map` is below `replicas_min`.
    pub(super) fn check_min(&self, map: ChunkMap) -> Result<ChunkMap> {
        Self::check_min_in(&self.core(), map)
    }

    pub(super) fn check_min_in(core: &Core, map: ChunkMap) -> Result<ChunkMap> {
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
    pub(super) async fn fence(&self, ino: InodeId) -> Result<()> {
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
        self.discard_beyond_size(ino).await;
        self.commit(Command::FinishFence { ino }).await?;
        Ok(())
    }

    /// Zeroes, on every member, what the chunks of file `ino` hold at or
    /// beyond its size (`ChunkControl::zero_tail`): a lost writer's writes
    /// beyond the size it committed are not the file's, and bytes beyond a
    /// file's size must read zeros when it grows (truncate keeps that so;
    /// `--all-faults` seed 100739: a killed writer's unflushed block beyond
    /// the size read back after its successor grew the file over it). A
    /// member that fails leaves the chain (never the last: logged). Part
    /// of the fence: callers hold `chunk_lock`.
    async fn discard_beyond_size(&self, ino: InodeId) {
        let tails: Vec<(ChunkMap, u64)> = {
            let core = self.core();
            let Some(node) = core.state.inode(ino) else {
                return;
            };
            let (size, chunk_size) = (node.size, node.attrs.chunk_size);
            core.state
                .file_chunk_maps(ino)
                .into_iter()
                .filter_map(|map| {
                    let start = map.index * chunk_size;
                    (start + chunk_size > size).then(|| (map, size.saturating_sub(start)))
                })
                .collect()
        };
        for (map, offset) in tails {
            let what = format!(
                "zeroing chunk {:#x} from byte {offset} (beyond the file's size)",
                map.chunk
            );
            let results = join_all(map.replicas.iter().map(|r| {
                let (chunk, version) = (map.chunk, map.version);
                self.cs_call(r, &what, move |control| async move {
                    control.zero_tail(chunk, version, offset).await
                })
            }))
            .await;
            let failed: Vec<CsId> = map
                .replicas
                .iter()
                .zip(results)
                .filter_map(|(r, result)| {
                    let e = result.err()?;
                    tracing::warn!(
                        "MDS: fencing: chunk {:#x}: CS {} did not zero what lies beyond the \
                         file's size: {e}; it leaves the chain",
                        map.chunk,
                        r.cs
                    );
                    Some(r.cs)
                })
                .collect();
            if !failed.is_empty() {
                if let Err(e) = self.drop_replicas(map.chunk, failed).await {
                    tracing::warn!("MDS: fencing: {e}");
                }
            }
        }
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
}
