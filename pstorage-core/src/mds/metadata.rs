//! [`MetadataService`] for [`MdsService`]: the namespace, leases, chunk
//! maps as clients see them (allocating on demand), clients' failure
//! reports, configuration and the event log.

use async_trait::async_trait;

use super::service::{unexpected, MdsService};
use super::shared::Core;
use super::state::{ApplyOutcome, Command};
use crate::error::{Error, ErrorKind, Result};
use crate::traits::MetadataService;
use crate::types::*;

impl MdsService {
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

    /// Commits `cmd` (tagged with `op`) and returns the `Stat` it answers.
    async fn commit_for_stat(&self, op: Option<OpTag>, cmd: Command) -> Result<Stat> {
        match self.commit(self.tagged(op, cmd)).await? {
            ApplyOutcome::Stat(s) => Ok(s),
            other => Err(unexpected(other)),
        }
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
    async fn open_with(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<OpenReply> {
        // Most opens touch no chunk: no lease to expire, no fence pending
        // on the file, no chunks to release. They go without chunk_lock,
        // so that concurrent ones share Raft entries (the group commit);
        // holding it, every open waited for the one before to commit. One
        // that races with a lease expiring or a fence starting is refused
        // `Stale` by the state machine, and the client opens again.
        let now = self.now();
        let quiet = {
            let core = self.core();
            let found = core
                .state
                .lookup(path)
                .ok()
                .and_then(|ino| core.state.inode(ino));
            !core.state.has_expired_leases(now)
                && match found {
                    None => true,
                    Some(node) => !node.fence_pending && !flags.truncate,
                }
        };
        let _chunks = if quiet {
            None
        } else {
            let held = self.chunk_lock.lock().await;
            self.expire_leases(self.now()).await?;
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
            Some(held)
        };
        let now = self.now();
        let outcome = self
            .commit(self.tagged(
                op,
                Command::Open {
                    path: path.to_string(),
                    mode,
                    flags,
                    perms,
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
        // The state applied now includes this open (and maybe later
        // commands): the directory as it is after the create.
        let parent = flags
            .create
            .then(|| parent_stat(&self.core(), path))
            .flatten();
        Ok(OpenReply {
            lease,
            stat,
            io_timeouts,
            parent,
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
        // Answered before it commits: the next command of any client is
        // ordered after it (`MdsService::commit_later`).
        self.commit_later(Command::ReleaseLease { lease, now_ms: now })
            .await
    }

    async fn upgrade_lease(&self, lease: LeaseId) -> Result<OpenReply> {
        // Like an open for writing: not while a fence of the file is due.
        let ino = self.core().state.lease(lease).map(|l| l.ino);
        let now = self.now();
        let fence_due = ino.is_some_and(|ino| {
            let core = self.core();
            core.state.has_expired_leases(now)
                || core.state.inode(ino).is_some_and(|n| n.fence_pending)
        });
        let _chunks = if fence_due {
            let held = self.chunk_lock.lock().await;
            self.expire_leases(self.now()).await?;
            if let Some(ino) = ino.filter(|ino| {
                self.core()
                    .state
                    .inode(*ino)
                    .is_some_and(|n| n.fence_pending)
            }) {
                self.fence(ino).await?;
            }
            Some(held)
        } else {
            None
        };
        let outcome = self
            .commit(Command::UpgradeLease {
                lease,
                now_ms: self.now(),
            })
            .await?;
        let ApplyOutcome::Opened { lease, stat, .. } = outcome else {
            return Err(unexpected(outcome));
        };
        let io_timeouts = self.params(&self.core()).io_timeouts();
        Ok(OpenReply {
            lease,
            stat,
            io_timeouts,
            parent: None,
        })
    }

    async fn set_lock(&self, lease: LeaseId, req: LockRequest) -> Result<()> {
        self.commit(Command::SetLock {
            lease,
            req,
            now_ms: self.now(),
        })
        .await
        .map(|_| ())
    }

    async fn test_lock(&self, lease: LeaseId, req: LockRequest) -> Result<Option<HeldLock>> {
        self.read_barrier().await?;
        let now = self.now();
        self.core().state.lock_conflict(lease, &req, now)
    }

    async fn stat(&self, path: &str) -> Result<Stat> {
        self.read_barrier().await?;
        let core = self.core();
        let ino = core.state.lookup(path)?;
        Ok(core.state.stat_of(ino).expect("looked up"))
    }

    async fn mkdir_with(
        &self,
        path: &str,
        parents: bool,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<Stat> {
        self.commit_for_stat(
            op,
            Command::Mkdir {
                path: path.to_string(),
                parents,
                perms,
                now_ms: self.now(),
            },
        )
        .await
    }

    async fn make_node(&self, path: &str, node: NewNode, op: Option<OpTag>) -> Result<Stat> {
        self.commit_for_stat(
            op,
            Command::MakeNode {
                path: path.to_string(),
                node,
                now_ms: self.now(),
            },
        )
        .await
    }

    async fn link(&self, from: &str, to: &str, op: Option<OpTag>) -> Result<Stat> {
        self.commit_for_stat(
            op,
            Command::Link {
                from: from.to_string(),
                to: to.to_string(),
                now_ms: self.now(),
            },
        )
        .await
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        self.read_barrier().await?;
        self.core().state.readlink(path)
    }

    async fn set_stat(&self, path: &str, change: StatChange, op: Option<OpTag>) -> Result<Stat> {
        self.commit_for_stat(
            op,
            Command::SetStat {
                path: path.to_string(),
                change,
                now_ms: self.now(),
            },
        )
        .await
    }

    async fn get_xattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        self.read_barrier().await?;
        self.core().state.get_xattr(path, name)
    }

    async fn list_xattrs(&self, path: &str) -> Result<Vec<String>> {
        self.read_barrier().await?;
        self.core().state.list_xattrs(path)
    }

    async fn set_xattr(
        &self,
        path: &str,
        name: &str,
        value: Option<Vec<u8>>,
        how: XattrSet,
        op: Option<OpTag>,
    ) -> Result<()> {
        self.commit(self.tagged(
            op,
            Command::SetXattr {
                path: path.to_string(),
                name: name.to_string(),
                value,
                how,
                now_ms: self.now(),
            },
        ))
        .await
        .map(|_| ())
    }

    async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.read_barrier().await?;
        self.core().state.readdir(path)
    }

    async fn readdir_page(&self, path: &str, after: Option<&str>) -> Result<DirPage> {
        self.read_barrier().await?;
        self.core().state.readdir_page(path, after)
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

    async fn rename_with(
        &self,
        from: &str,
        to: &str,
        flags: RenameFlags,
        op: Option<OpTag>,
    ) -> Result<()> {
        let outcome = self
            .commit(self.tagged(
                op,
                Command::Rename {
                    from: from.to_string(),
                    to: to.to_string(),
                    flags,
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
        let ino = core.state.file_of_chunks(path)?;
        Ok(core.state.file_chunk_maps(ino))
    }

    async fn file_chunks_page(&self, path: &str, from: u64) -> Result<ChunkMapPage> {
        self.read_barrier().await?;
        let core = self.core();
        let ino = core.state.file_of_chunks(path)?;
        Ok(core.state.file_chunk_map_page(ino, from))
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

/// The attributes of the directory that holds `path`, as `core` has them
/// (`None` for a malformed path or `/`, or a directory gone meanwhile).
fn parent_stat(core: &Core, path: &str) -> Option<Stat> {
    let parts = split_path(path).ok()?;
    let (_, dirs) = parts.split_last()?;
    let ino = core.state.lookup(&format!("/{}", dirs.join("/"))).ok()?;
    core.state.stat_of(ino)
}
