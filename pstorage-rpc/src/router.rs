//! Leader routing: any MDS of a Raft group accepts every call and serves
//! it where the Raft leader is.
//!
//! [`LeaderRouter`] implements `MetadataService + CsRegistry + MdsGroup`.
//! On the leader it calls the local service; elsewhere it forwards the call
//! through an [`MdsClient`] connected to the leader (at the address the Raft
//! membership records), so clients and chunk servers may talk to any MDS in
//! bs.list.

use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pstorage_core::mds::raft::{MdsId, MdsRaft};
use pstorage_core::traits::{CertificateRegistry, CsRegistry, MdsGroup, MetadataService};
use pstorage_core::types::{
    AttrUpdate, BadBlocks, ChunkId, ChunkMap, ClusterStatus, ConfigEntry, CsId, CsPlacementUpdate,
    CsRegistration, CsStats, DirEntry, Event, FailureReason, HeartbeatReply, LeaseId, LeaseMode,
    MapVersion, MdsMembership, OpTag, OpenFlags, OpenReply, RegisterReply, SpaceInfo, Stat,
};
use pstorage_core::types::{CertRecord, EventLevel, RevokedSerials};
use pstorage_core::types::{ChunkMapPage, DirPage};
use pstorage_core::types::{
    HeldLock, LockRequest, NewNode, Perms, RenameFlags, StatChange, XattrSet,
};
use pstorage_core::{Error, ErrorKind, Result};
use tokio::time::Instant;

use crate::actor::{track_delivery, track_sending, ClientOptions, Dialer};
use crate::mds::MdsClient;

/// How a [`LeaderRouter`] waits for and reaches the leader.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// How long a call waits for a leader to be elected, and keeps retrying
    /// a leader it could not reach, before it fails `Unavailable`. Shorter
    /// than a client's call deadline ([`crate::actor::MDS_CALL_TIMEOUT`]),
    /// so the client hears `Unavailable` from this MDS and retries here
    /// rather than giving up on a healthy connection.
    pub election_wait: Duration,
    /// The connections to the leader. `connect_timeout` bounds one attempt
    /// to reach a leader before the router looks for the leader again;
    /// `call_timeout` bounds a forwarded call once sent (the group changes
    /// `addMds`/`removeMds` get [`crate::mds::GROUP_CHANGE_TIMEOUT`]). A
    /// forwarded call also ends, `Unavailable`, as soon as this MDS sees
    /// the leadership move away from where it was sent.
    pub client: ClientOptions,
}

/// Default deadline of a forwarded call: shorter than a client's
/// ([`crate::actor::MDS_CALL_TIMEOUT`]), so the follower answers
/// `TimedOut` itself and the client keeps its connection to the follower.
pub const FORWARD_CALL_TIMEOUT: Duration = Duration::from_secs(6);

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            election_wait: Duration::from_secs(5),
            client: ClientOptions {
                connect_timeout: Duration::from_secs(2),
                call_timeout: Some(FORWARD_CALL_TIMEOUT),
            },
        }
    }
}

/// How often a forwarded call still being dialed is checked for having
/// gone out, after the leadership moved.
const SENT_POLL: Duration = Duration::from_millis(50);

/// Pause before trying a leader again that could not be reached (its
/// successor may not be elected yet).
const UNREACHABLE_RETRY: Duration = Duration::from_millis(100);

/// Where a call goes.
enum Target {
    Local,
    Leader(MdsId, MdsClient),
}

/// The connection to the current leader, replaced when leadership moves.
struct LeaderLink {
    id: MdsId,
    addr: String,
    client: MdsClient,
}

/// The `MetadataService + CsRegistry + MdsGroup` an MDS serves to its RPC
/// peers: the local service when this MDS is the Raft leader, the leader's
/// (over the network) otherwise.
///
/// A call made while no leader is known waits for one for
/// `RouterOptions::election_wait`, then fails `Unavailable`. A forwarded
/// call that could not reach the leader (no connection could be made) is
/// retried on the leader known then, within the same bound; a call whose
/// connection broke after it was sent is not resent (it may have taken
/// effect) and fails `Unavailable`.
pub struct LeaderRouter {
    my_id: MdsId,
    raft: MdsRaft,
    metadata: Arc<dyn MetadataService>,
    registry: Arc<dyn CsRegistry>,
    group: Arc<dyn MdsGroup>,
    /// The local certificate table, when this MDS keeps one.
    certs: Option<Arc<dyn CertificateRegistry>>,
    dialer: Dialer,
    options: RouterOptions,
    leader: Mutex<Option<LeaderLink>>,
}

impl LeaderRouter {
    /// A router for MDS `my_id` whose Raft node is `raft` and whose local
    /// services are `metadata`, `registry`, `group`; the leader is reached
    /// through `dialer` (the MDS uses `node::control_dialer(key)`).
    pub fn new(
        my_id: MdsId,
        raft: MdsRaft,
        metadata: Arc<dyn MetadataService>,
        registry: Arc<dyn CsRegistry>,
        group: Arc<dyn MdsGroup>,
        dialer: Dialer,
        options: RouterOptions,
    ) -> LeaderRouter {
        LeaderRouter {
            my_id,
            raft,
            metadata,
            registry,
            group,
            certs: None,
            dialer,
            options,
            leader: Mutex::new(None),
        }
    }

    /// Serves [`CertificateRegistry`] with the local `certs` (writes go to
    /// the leader).
    pub fn with_certs(mut self, certs: Arc<dyn CertificateRegistry>) -> LeaderRouter {
        self.certs = Some(certs);
        self
    }

    fn certs(&self) -> Result<&Arc<dyn CertificateRegistry>> {
        self.certs
            .as_ref()
            .ok_or_else(|| Error::unavailable("this MDS keeps no certificate table"))
    }

    /// The leader as the local Raft node sees it now, if any: its id, and
    /// its address if the membership records one.
    pub fn current_leader(&self) -> Option<(MdsId, Option<String>)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.current_leader.map(|leader| {
            let addr = metrics
                .membership_config
                .membership()
                .get_node(&leader)
                .map(|node| node.addr.clone());
            (leader, addr)
        })
    }

    /// Where to send a call, waiting until `deadline` for a leader.
    async fn target(&self, deadline: Instant) -> Result<Target> {
        let mut metrics = self.raft.metrics();
        loop {
            let (leader, addr, members) = {
                let m = metrics.borrow_and_update();
                let membership = m.membership_config.membership();
                let addr = m
                    .current_leader
                    .and_then(|l| membership.get_node(&l).map(|node| node.addr.clone()));
                (m.current_leader, addr, membership.nodes().count())
            };
            match (leader, addr) {
                (Some(leader), _) if leader == self.my_id => return Ok(Target::Local),
                (Some(leader), Some(addr)) => {
                    return Ok(Target::Leader(leader, self.leader_client(leader, addr)?))
                }
                _ => {}
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(Error::unavailable(format!(
                        "the Raft node of MDS {} has stopped: restart the MDS",
                        self.my_id
                    )))
                }
                Err(_) => {
                    return Err(Error::unavailable(format!(
                        "no MDS leader is elected (waited {} s at MDS {}; the group has {members} \
                         MDS(es) and a majority of them must run and reach each other): start \
                         the stopped MDSes or check the network between them",
                        self.options.election_wait.as_secs_f64(),
                        self.my_id
                    )))
                }
            }
        }
    }

    /// The client of leader `id` at `addr`, reusing the cached connection
    /// while the leader stays the same.
    fn leader_client(&self, id: MdsId, addr: String) -> Result<MdsClient> {
        let mut cached = self.leader.lock();
        if let Some(link) = cached.as_ref().filter(|l| l.id == id && l.addr == addr) {
            return Ok(link.client.clone());
        }
        let client = MdsClient::new(
            vec![addr.clone()],
            self.dialer.clone(),
            self.options.client.clone(),
        )?;
        tracing::info!(
            "MDS {}: forwarding calls to leader MDS {id} at {addr}",
            self.my_id
        );
        *cached = Some(LeaderLink {
            id,
            addr,
            client: client.clone(),
        });
        Ok(client)
    }

    /// Resolves with the new leader (or `None` during an election) once
    /// this MDS's Raft node no longer sees `id` as the leader.
    async fn leadership_moves_from(&self, id: MdsId) -> Option<MdsId> {
        let mut metrics = self.raft.metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if leader != Some(id) {
                return leader;
            }
            if metrics.changed().await.is_err() {
                // The Raft node stopped: the call's own deadline decides.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Drops the cached connection to leader `id` (it could not be reached).
    fn forget_leader(&self, id: MdsId) {
        let mut cached = self.leader.lock();
        if cached.as_ref().is_some_and(|l| l.id == id) {
            *cached = None;
        }
    }

    /// Runs a call where the leader is: `local` on this MDS when it leads,
    /// `remote` on the leader's client otherwise, retrying a call that could
    /// not reach the leader until `election_wait` passes. A local call
    /// refused as not the leader (the leadership just moved) is routed
    /// again, once, to wherever the leadership went.
    async fn route<T, L, LF, R, RF>(&self, method: &str, local: L, remote: R) -> Result<T>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T>>,
        R: Fn(MdsClient) -> RF,
        RF: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.options.election_wait;
        let mut refused_here = false;
        loop {
            match self.target(deadline).await? {
                Target::Local => match local().await {
                    // The leadership left this MDS between the check and the
                    // call (the local service refused it as not the leader):
                    // served where it went instead, once, as the client's
                    // own retry would be (tagged mutations answer a repeat
                    // from their session), without the client's backoff.
                    Err(e) if e.is_not_leader() && !refused_here => {
                        refused_here = true;
                        tracing::info!(
                            "MDS {}: {method} refused here as not the leader; routing it to the \
                             new leader",
                            self.my_id
                        );
                        let moved = self.leadership_moves_from(self.my_id);
                        if tokio::time::timeout_at(deadline, moved).await.is_err() {
                            return Err(e);
                        }
                    }
                    outcome => return outcome,
                },
                Target::Leader(id, client) => {
                    // Once the leadership moves away from `id`, a call sent
                    // there will likely never be answered (a frozen or
                    // deposed leader): give up on it at once rather than at
                    // its deadline. One still being dialed is left to fail
                    // unsent, and then retried below.
                    let sent = Arc::new(AtomicBool::new(false));
                    let forwarded = track_delivery(track_sending(sent.clone(), remote(client)));
                    let moved = self.leadership_moves_from(id);
                    tokio::pin!(forwarded, moved);
                    let mut moved_to = None;
                    let (outcome, not_sent) = loop {
                        tokio::select! {
                            done = &mut forwarded => break done,
                            now = &mut moved, if moved_to.is_none() => moved_to = Some(now),
                            _ = tokio::time::sleep(SENT_POLL), if moved_to.is_some() => {}
                        }
                        if let (Some(now), true) = (moved_to, sent.load(Ordering::SeqCst)) {
                            // The call may still land on the old leader;
                            // its answer (if any) is lost either way.
                            self.forget_leader(id);
                            return Err(Error::unavailable(format!(
                                "{method}: the MDS leadership moved from MDS {id} to {} while \
                                 the call was forwarded to it; it may or may not have taken \
                                 effect: retry",
                                now.map_or("no leader yet".to_string(), |l| format!("MDS {l}"))
                            )));
                        }
                    };
                    match outcome {
                        Err(e)
                            if not_sent
                                && e.kind() == ErrorKind::Unavailable
                                && Instant::now() + UNREACHABLE_RETRY < deadline =>
                        {
                            tracing::info!(
                                "MDS {}: leader MDS {id} unreachable for {method}, looking for \
                                 the leader again: {e}",
                                self.my_id
                            );
                            self.forget_leader(id);
                            tokio::time::sleep(UNREACHABLE_RETRY).await;
                        }
                        Err(e) if not_sent => {
                            return Err(e.context(format!(
                                "{method}: the MDS leader could not be reached within {} s",
                                self.options.election_wait.as_secs_f64()
                            )))
                        }
                        outcome => return outcome,
                    }
                }
            }
        }
    }
}

#[async_trait]
impl MetadataService for LeaderRouter {
    async fn open_with(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<OpenReply> {
        self.route(
            "open",
            || self.metadata.open_with(path, mode, flags, perms, op),
            |c| async move { c.open_with(path, mode, flags, perms, op).await },
        )
        .await
    }

    async fn renew(&self, lease: LeaseId) -> Result<()> {
        self.route(
            "renew",
            || self.metadata.renew(lease),
            |c| async move { c.renew(lease).await },
        )
        .await
    }

    async fn close(&self, lease: LeaseId) -> Result<()> {
        self.route(
            "close",
            || self.metadata.close(lease),
            |c| async move { c.close(lease).await },
        )
        .await
    }

    async fn upgrade_lease(&self, lease: LeaseId) -> Result<OpenReply> {
        self.route(
            "upgradeLease",
            || self.metadata.upgrade_lease(lease),
            |c| async move { c.upgrade_lease(lease).await },
        )
        .await
    }

    async fn set_lock(&self, lease: LeaseId, req: LockRequest) -> Result<()> {
        self.route(
            "setLock",
            || self.metadata.set_lock(lease, req),
            |c| async move { c.set_lock(lease, req).await },
        )
        .await
    }

    async fn test_lock(&self, lease: LeaseId, req: LockRequest) -> Result<Option<HeldLock>> {
        self.route(
            "testLock",
            || self.metadata.test_lock(lease, req),
            |c| async move { c.test_lock(lease, req).await },
        )
        .await
    }

    async fn stat(&self, path: &str) -> Result<Stat> {
        self.route(
            "stat",
            || self.metadata.stat(path),
            |c| async move { c.stat(path).await },
        )
        .await
    }

    async fn mkdir_with(
        &self,
        path: &str,
        parents: bool,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<Stat> {
        self.route(
            "mkdir",
            || self.metadata.mkdir_with(path, parents, perms, op),
            |c| async move { c.mkdir_with(path, parents, perms, op).await },
        )
        .await
    }

    async fn make_node(&self, path: &str, node: NewNode, op: Option<OpTag>) -> Result<Stat> {
        let n = &node;
        self.route(
            "makeNode",
            || self.metadata.make_node(path, n.clone(), op),
            |c| async move { c.make_node(path, n.clone(), op).await },
        )
        .await
    }

    async fn link(&self, from: &str, to: &str, op: Option<OpTag>) -> Result<Stat> {
        self.route(
            "link",
            || self.metadata.link(from, to, op),
            |c| async move { c.link(from, to, op).await },
        )
        .await
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        self.route(
            "readlink",
            || self.metadata.readlink(path),
            |c| async move { c.readlink(path).await },
        )
        .await
    }

    async fn set_stat(&self, path: &str, change: StatChange, op: Option<OpTag>) -> Result<Stat> {
        self.route(
            "setStat",
            || self.metadata.set_stat(path, change, op),
            |c| async move { c.set_stat(path, change, op).await },
        )
        .await
    }

    async fn get_xattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        self.route(
            "getXattr",
            || self.metadata.get_xattr(path, name),
            |c| async move { c.get_xattr(path, name).await },
        )
        .await
    }

    async fn list_xattrs(&self, path: &str) -> Result<Vec<String>> {
        self.route(
            "listXattrs",
            || self.metadata.list_xattrs(path),
            |c| async move { c.list_xattrs(path).await },
        )
        .await
    }

    async fn set_xattr(
        &self,
        path: &str,
        name: &str,
        value: Option<Vec<u8>>,
        how: XattrSet,
        op: Option<OpTag>,
    ) -> Result<()> {
        let v = &value;
        self.route(
            "setXattr",
            || self.metadata.set_xattr(path, name, v.clone(), how, op),
            |c| async move { c.set_xattr(path, name, v.clone(), how, op).await },
        )
        .await
    }

    async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.route(
            "readdir",
            || self.metadata.readdir(path),
            |c| async move { c.readdir(path).await },
        )
        .await
    }

    async fn readdir_page(&self, path: &str, after: Option<&str>) -> Result<DirPage> {
        self.route(
            "readdir",
            || self.metadata.readdir_page(path, after),
            |c| async move { c.readdir_page(path, after).await },
        )
        .await
    }

    async fn unlink(&self, path: &str, op: Option<OpTag>) -> Result<()> {
        self.route(
            "unlink",
            || self.metadata.unlink(path, op),
            |c| async move { c.unlink(path, op).await },
        )
        .await
    }

    async fn rename_with(
        &self,
        from: &str,
        to: &str,
        flags: RenameFlags,
        op: Option<OpTag>,
    ) -> Result<()> {
        self.route(
            "rename",
            || self.metadata.rename_with(from, to, flags, op),
            |c| async move { c.rename_with(from, to, flags, op).await },
        )
        .await
    }

    async fn set_attr(
        &self,
        path: &str,
        update: AttrUpdate,
        recursive: bool,
        op: Option<OpTag>,
    ) -> Result<()> {
        self.route(
            "setAttr",
            || self.metadata.set_attr(path, update, recursive, op),
            |c| async move { c.set_attr(path, update, recursive, op).await },
        )
        .await
    }

    async fn chunk_map(
        &self,
        lease: LeaseId,
        index: u64,
        allocate: bool,
    ) -> Result<Option<ChunkMap>> {
        self.route(
            "chunkMap",
            || self.metadata.chunk_map(lease, index, allocate),
            |c| async move { c.chunk_map(lease, index, allocate).await },
        )
        .await
    }

    async fn report_failure(
        &self,
        lease: LeaseId,
        chunk: ChunkId,
        version: MapVersion,
        cs: CsId,
        reason: FailureReason,
    ) -> Result<ChunkMap> {
        self.route(
            "reportFailure",
            || {
                self.metadata
                    .report_failure(lease, chunk, version, cs, reason)
            },
            |c| async move { c.report_failure(lease, chunk, version, cs, reason).await },
        )
        .await
    }

    async fn commit_size(&self, lease: LeaseId, size: u64) -> Result<()> {
        self.route(
            "commitSize",
            || self.metadata.commit_size(lease, size),
            |c| async move { c.commit_size(lease, size).await },
        )
        .await
    }

    async fn truncate(&self, lease: LeaseId, size: u64) -> Result<()> {
        self.route(
            "truncate",
            || self.metadata.truncate(lease, size),
            |c| async move { c.truncate(lease, size).await },
        )
        .await
    }

    async fn file_chunks(&self, path: &str) -> Result<Vec<ChunkMap>> {
        self.route(
            "fileChunks",
            || self.metadata.file_chunks(path),
            |c| async move { c.file_chunks(path).await },
        )
        .await
    }

    async fn file_chunks_page(&self, path: &str, from: u64) -> Result<ChunkMapPage> {
        self.route(
            "fileChunks",
            || self.metadata.file_chunks_page(path, from),
            |c| async move { c.file_chunks_page(path, from).await },
        )
        .await
    }

    async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.route(
            "clusterStatus",
            || self.metadata.cluster_status(),
            |c| async move { c.cluster_status().await },
        )
        .await
    }

    async fn get_config(&self) -> Result<Vec<ConfigEntry>> {
        self.route(
            "getConfig",
            || self.metadata.get_config(),
            |c| async move { c.get_config().await },
        )
        .await
    }

    async fn set_config(&self, key: &str, value: u64) -> Result<()> {
        self.route(
            "setConfig",
            || self.metadata.set_config(key, value),
            |c| async move { c.set_config(key, value).await },
        )
        .await
    }

    async fn event_log(&self, after_seq: u64) -> Result<Vec<Event>> {
        self.route(
            "eventLog",
            || self.metadata.event_log(after_seq),
            |c| async move { c.event_log(after_seq).await },
        )
        .await
    }

    async fn remove_cs(&self, cs: CsId, force: bool) -> Result<()> {
        self.route(
            "removeCs",
            || self.metadata.remove_cs(cs, force),
            |c| async move { c.remove_cs(cs, force).await },
        )
        .await
    }

    async fn set_cs(&self, cs: CsId, update: CsPlacementUpdate) -> Result<()> {
        self.route(
            "setCs",
            || self.metadata.set_cs(cs, update.clone()),
            |c| {
                let update = update.clone();
                async move { c.set_cs(cs, update).await }
            },
        )
        .await
    }
}

#[async_trait]
impl CsRegistry for LeaderRouter {
    async fn allocate_cs_id(&self) -> Result<CsId> {
        self.route(
            "allocateCsId",
            || self.registry.allocate_cs_id(),
            |c| async move { c.allocate_cs_id().await },
        )
        .await
    }

    async fn register_cs(&self, registration: CsRegistration) -> Result<RegisterReply> {
        self.route(
            "registerCs",
            || self.registry.register_cs(registration.clone()),
            |c| {
                let registration = registration.clone();
                async move { c.register_cs(registration).await }
            },
        )
        .await
    }

    async fn heartbeat(
        &self,
        cs: CsId,
        space: SpaceInfo,
        stats: CsStats,
    ) -> Result<HeartbeatReply> {
        self.route(
            "csHeartbeat",
            || self.registry.heartbeat(cs, space, stats),
            |c| async move { c.heartbeat(cs, space, stats).await },
        )
        .await
    }

    async fn report_bad_replica(
        &self,
        cs: CsId,
        chunk: ChunkId,
        reason: FailureReason,
    ) -> Result<()> {
        self.route(
            "reportBadReplica",
            || self.registry.report_bad_replica(cs, chunk, reason),
            |c| async move { c.report_bad_replica(cs, chunk, reason).await },
        )
        .await
    }

    async fn report_bad_blocks(
        &self,
        cs: CsId,
        chunk: ChunkId,
        report: BadBlocks,
    ) -> Result<ChunkMap> {
        self.route(
            "reportBadBlocks",
            || self.registry.report_bad_blocks(cs, chunk, report.clone()),
            |c| {
                let report = report.clone();
                async move { c.report_bad_blocks(cs, chunk, report).await }
            },
        )
        .await
    }
}

#[async_trait]
impl CertificateRegistry for LeaderRouter {
    async fn record_certificate(&self, record: CertRecord) -> Result<()> {
        let certs = self.certs()?;
        self.route(
            "recordCertificate",
            || certs.record_certificate(record.clone()),
            |c| {
                let record = record.clone();
                async move { c.record_certificate(record).await }
            },
        )
        .await
    }

    async fn revoke_certificates(&self, which: &str) -> Result<Vec<CertRecord>> {
        let certs = self.certs()?;
        self.route(
            "revokeCertificates",
            || certs.revoke_certificates(which),
            |c| async move { c.revoke_certificates(which).await },
        )
        .await
    }

    async fn certificates(&self) -> Result<Vec<CertRecord>> {
        let certs = self.certs()?;
        self.route(
            "certificates",
            || certs.certificates(),
            |c| async move { c.certificates().await },
        )
        .await
    }

    /// Answered here from this MDS's state, never forwarded.
    async fn revoked_serials(&self, from: u64) -> Result<RevokedSerials> {
        self.certs()?.revoked_serials(from).await
    }

    async fn log_security_event(&self, level: EventLevel, message: &str) -> Result<()> {
        let certs = self.certs()?;
        self.route(
            "logSecurityEvent",
            || certs.log_security_event(level, message),
            |c| async move { c.log_security_event(level, message).await },
        )
        .await
    }
}

#[async_trait]
impl MdsGroup for LeaderRouter {
    async fn allocate_mds_id(&self) -> Result<MdsId> {
        self.route(
            "allocateMdsId",
            || self.group.allocate_mds_id(),
            |c| async move { c.allocate_mds_id().await },
        )
        .await
    }

    async fn add_mds(&self, id: MdsId, addr: &str) -> Result<()> {
        self.route(
            "addMds",
            || self.group.add_mds(id, addr),
            |c| async move { c.add_mds(id, addr).await },
        )
        .await
    }

    async fn remove_mds(&self, id: MdsId) -> Result<()> {
        self.route(
            "removeMds",
            || self.group.remove_mds(id),
            |c| async move { c.remove_mds(id).await },
        )
        .await
    }

    /// Answered here, never forwarded: it must work while no leader is
    /// known, and a node following the group merges answers by their
    /// indexes anyway.
    async fn members(&self) -> Result<MdsMembership> {
        self.group.members().await
    }
}
