//! The seams of pstorage-core implemented over the simulated network: what
//! pstorage-rpc does over TCP (connectors, the MDS client with its
//! failover and call deadlines, the follower-to-leader forwarding of the
//! MDS router, the Raft transport), with the same deadlines.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::FutureExt;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use pstorage_core::mds::raft::{MdsId, MdsNode, MdsRaft, MdsRaftConfig};
use pstorage_core::mds::MdsService;
use pstorage_core::membership::MemberDirectory;
use pstorage_core::traits::{
    CheckedBytes, ChunkConnector, ChunkControl, ChunkService, ControlConnector, CsRegistry,
    MdsGroup, MetadataService, ReplicaError, WriteRequest,
};
use pstorage_core::types::*;
use pstorage_core::{Error, ErrorKind, Result};
use tokio::time::Instant;

use crate::net::{NodeId, Services, SimNet};

/// A client's or chunk server's deadline on one MDS call
/// (`PSTORAGE_MDS_CALL_TIMEOUT_MS`, 8 s).
pub const MDS_CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// How long an MDS waits for a leader before answering `Unavailable`
/// (the router's `election_wait`).
pub const ELECTION_WAIT: Duration = Duration::from_secs(5);
/// Deadline of a call a follower forwards to the leader.
pub const FORWARD_CALL_TIMEOUT: Duration = Duration::from_secs(6);
/// The MDS's deadline on control calls to chunk servers (not copies).
pub const CONTROL_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a Raft message.
pub const RAFT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn timed_out(what: &str, to: NodeId, limit: Duration) -> Error {
    Error::new(
        ErrorKind::TimedOut,
        format!("{to} did not answer {what} within {} ms", limit.as_millis()),
    )
}

async fn with_deadline<T>(
    limit: Option<Duration>,
    what: &str,
    to: NodeId,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match limit {
        None => f.await,
        Some(limit) => tokio::time::timeout(limit, f)
            .await
            .unwrap_or_else(|_| Err(timed_out(what, to, limit))),
    }
}

/// A call on an MDS's service that can be made again: a local call
/// refused as "not the leader" is served a second time where the
/// leadership went ([`MdsEndpoint::route`]).
pub trait MdsCallFn<T>: Send + Sync {
    /// Makes the call on `service`.
    fn call(&self, service: Arc<MdsService>) -> BoxFuture<'static, Result<T>>;
}

impl<T, F> MdsCallFn<T> for F
where
    F: FnOnce(Arc<MdsService>) -> BoxFuture<'static, Result<T>> + Clone + Send + Sync,
{
    fn call(&self, service: Arc<MdsService>) -> BoxFuture<'static, Result<T>> {
        (self.clone())(service)
    }
}

/// A routed MDS call (see [`MdsCallFn`]).
pub type MdsCall<T> = Arc<dyn MdsCallFn<T>>;

/// What one MDS serves to the network: its service, reached through
/// [`MdsEndpoint::route`] (served here when this MDS leads, forwarded to
/// the leader otherwise, as the daemon's `LeaderRouter` does).
pub struct MdsEndpoint {
    pub id: MdsId,
    pub service: Arc<MdsService>,
    /// `None`: an MDS without Raft (the conformance suites' world), which
    /// serves every call itself, as the daemon's router does for one.
    pub raft: Option<MdsRaft>,
    net: Arc<SimNet>,
}

impl MdsEndpoint {
    pub fn new(id: MdsId, service: Arc<MdsService>, raft: MdsRaft, net: Arc<SimNet>) -> Self {
        MdsEndpoint {
            id,
            service,
            raft: Some(raft),
            net,
        }
    }

    /// An MDS without Raft: it serves every call itself.
    pub fn standalone(id: MdsId, service: Arc<MdsService>, net: Arc<SimNet>) -> Self {
        MdsEndpoint {
            id,
            service,
            raft: None,
            net,
        }
    }

    /// Serves `call` where the leader is, waiting up to [`ELECTION_WAIT`]
    /// for one.
    pub async fn route<T: Send + 'static>(
        &self,
        what: &'static str,
        call: MdsCall<T>,
    ) -> Result<T> {
        let Some(raft) = &self.raft else {
            return call.call(self.service.clone()).await;
        };
        let deadline = Instant::now() + ELECTION_WAIT;
        let mut metrics = raft.metrics();
        let mut refused_here = false;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            match leader {
                Some(leader) if leader == self.id => {
                    match call.call(self.service.clone()).await {
                        // As the daemon's router: the leadership left this
                        // MDS during the call; served again, once, where it
                        // went.
                        Err(e) if e.is_not_leader() && !refused_here => {
                            refused_here = true;
                            let moved = async {
                                while metrics.borrow_and_update().current_leader == Some(self.id) {
                                    if metrics.changed().await.is_err() {
                                        return;
                                    }
                                }
                            };
                            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                                return Err(e);
                            }
                            continue;
                        }
                        outcome => return outcome,
                    }
                }
                Some(leader) => {
                    let to = NodeId::Mds(leader.0);
                    let forwarded =
                        self.net
                            .call(NodeId::Mds(self.id.0), to, what, move |s| match s {
                                Services::Mds(ep) => call.call(ep.service.clone()),
                                Services::Cs(_) => async move {
                                    Err(Error::internal(format!("{to} is not an MDS")))
                                }
                                .boxed(),
                            });
                    return match tokio::time::timeout(FORWARD_CALL_TIMEOUT, forwarded).await {
                        Err(_) => Err(timed_out(what, to, FORWARD_CALL_TIMEOUT)),
                        Ok(Err(e)) => Err(Error::unavailable(format!(
                            "MDS {} forwarding {what} to leader MDS {leader}: {}",
                            self.id,
                            e.message()
                        ))),
                        Ok(Ok(answer)) => answer,
                    };
                }
                None => match tokio::time::timeout_at(deadline, metrics.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        return Err(Error::unavailable(format!(
                            "the Raft node of MDS {} has stopped",
                            self.id
                        )))
                    }
                    Err(_) => {
                        return Err(Error::unavailable(format!(
                            "no MDS leader is elected (waited {} s at MDS {})",
                            ELECTION_WAIT.as_secs(),
                            self.id
                        )))
                    }
                },
            }
        }
    }
}

/// The MDS group as a client or chunk server reaches it: the member the
/// directory puts first, within [`MDS_CALL_TIMEOUT`]; a member that does
/// not answer goes to the back of the directory's dial order.
pub struct SimMdsClient {
    net: Arc<SimNet>,
    from: NodeId,
    directory: Arc<MemberDirectory>,
    /// Deadline of heartbeats and `members` calls, if not
    /// [`MDS_CALL_TIMEOUT`] (as pstorage-rpc's
    /// `MdsClient::with_heartbeat_timeout`, which a chunk server uses).
    heartbeat_timeout: Option<Duration>,
}

impl SimMdsClient {
    pub fn new(net: Arc<SimNet>, from: NodeId, directory: Arc<MemberDirectory>) -> SimMdsClient {
        SimMdsClient {
            net,
            from,
            directory,
            heartbeat_timeout: None,
        }
    }

    /// Heartbeats and `members` calls wait at most `timeout`, and a member
    /// that lets one time out goes to the back of the dial order, as the
    /// daemon's chunk server does: it gives up on a frozen MDS well before
    /// its self-fence. (Without it, seed 249 froze a follower MDS that two
    /// chunk servers kept heartbeating through until they fenced, and the
    /// MDS dropped their replicas, leaving a chunk on one corrupt copy.)
    pub fn with_heartbeat_timeout(mut self, timeout: Duration) -> SimMdsClient {
        self.heartbeat_timeout = Some(timeout);
        self
    }

    async fn call<T: Send + 'static>(&self, what: &'static str, call: MdsCall<T>) -> Result<T> {
        self.call_with(what, true, call).await
    }

    /// `routed`: served where the leader is; else by the MDS called
    /// (membership questions).
    async fn call_with<T: Send + 'static>(
        &self,
        what: &'static str,
        routed: bool,
        call: MdsCall<T>,
    ) -> Result<T> {
        let addr = self
            .directory
            .addrs()
            .into_iter()
            .next()
            .ok_or_else(|| Error::unavailable("no MDS address is known"))?;
        let to = NodeId::from_addr(&addr)?;
        let sent = self.net.call(self.from, to, what, move |s| match s {
            Services::Mds(ep) if routed => async move { ep.route(what, call).await }.boxed(),
            Services::Mds(ep) => call.call(ep.service.clone()),
            Services::Cs(_) => {
                async move { Err(Error::internal(format!("{to} is not an MDS"))) }.boxed()
            }
        });
        let limit = match self.heartbeat_timeout {
            Some(t) if matches!(what, "heartbeat" | "members") => t,
            _ => MDS_CALL_TIMEOUT,
        };
        match tokio::time::timeout(limit, sent).await {
            Err(_) => {
                self.directory.note_failure(&addr);
                Err(timed_out(what, to, limit))
            }
            Ok(Err(e)) => {
                self.directory.note_failure(&addr);
                Err(e)
            }
            Ok(Ok(answer)) => {
                self.directory.note_connected(&addr);
                answer
            }
        }
    }
}

/// `via!(self, "what", |svc| body)`: a routed MDS call whose body uses the
/// service `svc`.
macro_rules! via {
    ($self:ident, $what:literal, |$svc:ident| $body:expr) => {
        $self
            .call(
                $what,
                Arc::new(move |$svc: Arc<MdsService>| async move { $body }.boxed()),
            )
            .await
    };
}

#[async_trait]
impl MetadataService for SimMdsClient {
    async fn open_with(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<OpenReply> {
        let path = path.to_string();
        via!(self, "open", |s| s
            .open_with(&path, mode, flags, perms, op)
            .await)
    }
    async fn renew(&self, lease: LeaseId) -> Result<()> {
        via!(self, "renew", |s| s.renew(lease).await)
    }
    async fn close(&self, lease: LeaseId) -> Result<()> {
        via!(self, "close", |s| MetadataService::close(&*s, lease).await)
    }
    async fn stat(&self, path: &str) -> Result<Stat> {
        let path = path.to_string();
        via!(self, "stat", |s| s.stat(&path).await)
    }
    async fn mkdir_with(
        &self,
        path: &str,
        parents: bool,
        perms: Perms,
        op: Option<OpTag>,
    ) -> Result<Stat> {
        let path = path.to_string();
        via!(self, "mkdir", |s| s
            .mkdir_with(&path, parents, perms, op)
            .await)
    }
    async fn make_node(&self, path: &str, node: NewNode, op: Option<OpTag>) -> Result<Stat> {
        let path = path.to_string();
        via!(self, "make_node", |s| s
            .make_node(&path, node.clone(), op)
            .await)
    }
    async fn link(&self, from: &str, to: &str, op: Option<OpTag>) -> Result<Stat> {
        let (from, to) = (from.to_string(), to.to_string());
        via!(self, "link", |s| s.link(&from, &to, op).await)
    }
    async fn upgrade_lease(&self, lease: LeaseId) -> Result<OpenReply> {
        via!(self, "upgrade_lease", |s| s.upgrade_lease(lease).await)
    }
    async fn set_lock(&self, lease: LeaseId, req: LockRequest) -> Result<()> {
        via!(self, "set_lock", |s| s.set_lock(lease, req).await)
    }
    async fn test_lock(&self, lease: LeaseId, req: LockRequest) -> Result<Option<HeldLock>> {
        via!(self, "test_lock", |s| s.test_lock(lease, req).await)
    }
    async fn readlink(&self, path: &str) -> Result<String> {
        let path = path.to_string();
        via!(self, "readlink", |s| s.readlink(&path).await)
    }
    async fn set_stat(&self, path: &str, change: StatChange, op: Option<OpTag>) -> Result<Stat> {
        let path = path.to_string();
        via!(self, "set_stat", |s| s.set_stat(&path, change, op).await)
    }
    async fn get_xattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        let (path, name) = (path.to_string(), name.to_string());
        via!(self, "get_xattr", |s| s.get_xattr(&path, &name).await)
    }
    async fn list_xattrs(&self, path: &str) -> Result<Vec<String>> {
        let path = path.to_string();
        via!(self, "list_xattrs", |s| s.list_xattrs(&path).await)
    }
    async fn set_xattr(
        &self,
        path: &str,
        name: &str,
        value: Option<Vec<u8>>,
        how: XattrSet,
        op: Option<OpTag>,
    ) -> Result<()> {
        let (path, name) = (path.to_string(), name.to_string());
        via!(self, "set_xattr", |s| s
            .set_xattr(&path, &name, value.clone(), how, op)
            .await)
    }
    async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let path = path.to_string();
        via!(self, "readdir", |s| s.readdir(&path).await)
    }
    async fn unlink(&self, path: &str, op: Option<OpTag>) -> Result<()> {
        let path = path.to_string();
        via!(self, "unlink", |s| s.unlink(&path, op).await)
    }
    async fn rename_with(
        &self,
        from: &str,
        to: &str,
        flags: RenameFlags,
        op: Option<OpTag>,
    ) -> Result<()> {
        let (from, to) = (from.to_string(), to.to_string());
        via!(self, "rename", |s| s
            .rename_with(&from, &to, flags, op)
            .await)
    }
    async fn set_attr(
        &self,
        path: &str,
        update: AttrUpdate,
        recursive: bool,
        op: Option<OpTag>,
    ) -> Result<()> {
        let path = path.to_string();
        via!(self, "set_attr", |s| s
            .set_attr(&path, update, recursive, op)
            .await)
    }
    async fn chunk_map(
        &self,
        lease: LeaseId,
        index: u64,
        allocate: bool,
    ) -> Result<Option<ChunkMap>> {
        via!(self, "chunk_map", |s| s
            .chunk_map(lease, index, allocate)
            .await)
    }
    async fn report_failure(
        &self,
        lease: LeaseId,
        chunk: ChunkId,
        version: MapVersion,
        cs: CsId,
        reason: FailureReason,
    ) -> Result<ChunkMap> {
        via!(self, "report_failure", |s| s
            .report_failure(lease, chunk, version, cs, reason)
            .await)
    }
    async fn commit_size(&self, lease: LeaseId, size: u64) -> Result<()> {
        via!(self, "commit_size", |s| s.commit_size(lease, size).await)
    }
    async fn truncate(&self, lease: LeaseId, size: u64) -> Result<()> {
        via!(self, "truncate", |s| s.truncate(lease, size).await)
    }
    async fn file_chunks(&self, path: &str) -> Result<Vec<ChunkMap>> {
        let path = path.to_string();
        via!(self, "file_chunks", |s| s.file_chunks(&path).await)
    }
    async fn cluster_status(&self) -> Result<ClusterStatus> {
        via!(self, "cluster_status", |s| s.cluster_status().await)
    }
    async fn get_config(&self) -> Result<Vec<ConfigEntry>> {
        via!(self, "get_config", |s| s.get_config().await)
    }
    async fn set_config(&self, key: &str, value: u64) -> Result<()> {
        let key = key.to_string();
        via!(self, "set_config", |s| s.set_config(&key, value).await)
    }
    async fn event_log(&self, after_seq: u64) -> Result<Vec<Event>> {
        via!(self, "event_log", |s| s.event_log(after_seq).await)
    }
    async fn remove_cs(&self, cs: CsId, force: bool) -> Result<()> {
        via!(self, "remove_cs", |s| s.remove_cs(cs, force).await)
    }
}

#[async_trait]
impl CsRegistry for SimMdsClient {
    async fn allocate_cs_id(&self) -> Result<CsId> {
        via!(self, "allocate_cs_id", |s| s.allocate_cs_id().await)
    }
    async fn register_cs(&self, registration: CsRegistration) -> Result<RegisterReply> {
        via!(self, "register_cs", |s| s.register_cs(registration).await)
    }
    async fn heartbeat(
        &self,
        cs: CsId,
        space: SpaceInfo,
        stats: CsStats,
    ) -> Result<HeartbeatReply> {
        via!(self, "heartbeat", |s| s.heartbeat(cs, space, stats).await)
    }
    async fn report_bad_replica(
        &self,
        cs: CsId,
        chunk: ChunkId,
        reason: FailureReason,
    ) -> Result<()> {
        via!(self, "report_bad_replica", |s| s
            .report_bad_replica(cs, chunk, reason)
            .await)
    }
    async fn report_bad_blocks(
        &self,
        cs: CsId,
        chunk: ChunkId,
        report: BadBlocks,
    ) -> Result<ChunkMap> {
        via!(self, "report_bad_blocks", |s| s
            .report_bad_blocks(cs, chunk, report.clone())
            .await)
    }
}

#[async_trait]
impl MdsGroup for SimMdsClient {
    async fn allocate_mds_id(&self) -> Result<MdsId> {
        via!(self, "allocate_mds_id", |s| s.allocate_mds_id().await)
    }
    async fn add_mds(&self, id: MdsId, addr: &str) -> Result<()> {
        let addr = addr.to_string();
        via!(self, "add_mds", |s| s.add_mds(id, &addr).await)
    }
    async fn remove_mds(&self, id: MdsId) -> Result<()> {
        via!(self, "remove_mds", |s| s.remove_mds(id).await)
    }
    async fn members(&self) -> Result<MdsMembership> {
        // Every MDS answers this itself, without forwarding.
        self.call_with(
            "members",
            false,
            Arc::new(|s: Arc<MdsService>| async move { s.members().await }.boxed()),
        )
        .await
    }
}

/// Opens simulated connections from `from` to chunk servers: the data
/// path (no deadline of its own: core sets them) and control (the MDS's
/// [`CONTROL_CALL_TIMEOUT`], none for copies).
pub struct SimConnector {
    net: Arc<SimNet>,
    from: NodeId,
    control_timeout: Option<Duration>,
}

impl SimConnector {
    pub fn new(net: Arc<SimNet>, from: NodeId, control_timeout: Option<Duration>) -> Self {
        SimConnector {
            net,
            from,
            control_timeout,
        }
    }

    fn peer(&self, addr: &str) -> Result<Arc<SimPeer>> {
        let to = NodeId::from_addr(addr)?;
        Ok(Arc::new(SimPeer {
            net: self.net.clone(),
            from: self.from,
            to,
            control_timeout: self.control_timeout,
        }))
    }
}

#[async_trait]
impl ChunkConnector for SimConnector {
    async fn chunk_service(&self, addr: &str) -> Result<Arc<dyn ChunkService>> {
        Ok(self.peer(addr)?)
    }
}

#[async_trait]
impl ControlConnector for SimConnector {
    async fn chunk_control(&self, addr: &str) -> Result<Arc<dyn ChunkControl>> {
        Ok(self.peer(addr)?)
    }
}

/// A connection to one chunk server.
pub struct SimPeer {
    net: Arc<SimNet>,
    from: NodeId,
    to: NodeId,
    control_timeout: Option<Duration>,
}

type CsCall<T> =
    Box<dyn FnOnce(Arc<pstorage_core::chunk::ChunkServer>) -> BoxFuture<'static, Result<T>> + Send>;

impl SimPeer {
    async fn call<T: Send + 'static>(&self, what: &'static str, call: CsCall<T>) -> Result<T> {
        let to = self.to;
        self.net
            .call(self.from, to, what, move |s| match s {
                Services::Cs(cs) => call(cs),
                Services::Mds(_) => {
                    async move { Err(Error::internal(format!("{to} is not a chunk server"))) }
                        .boxed()
                }
            })
            .await?
    }

    async fn control<T: Send + 'static>(&self, what: &'static str, call: CsCall<T>) -> Result<T> {
        with_deadline(self.control_timeout, what, self.to, self.call(what, call)).await
    }
}

macro_rules! on_cs {
    ($self:ident, $method:ident, $what:literal, |$cs:ident| $body:expr) => {
        $self
            .$method($what, Box::new(move |$cs| async move { $body }.boxed()))
            .await
    };
}

#[async_trait]
impl ChunkService for SimPeer {
    async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError> {
        let to = self.to;
        let answer = self
            .net
            .call(self.from, to, "write", move |s| match s {
                Services::Cs(cs) => async move { cs.write(request).await }.boxed(),
                Services::Mds(_) => async move {
                    Err(ReplicaError::local(Error::internal(format!(
                        "{to} is not a chunk server"
                    ))))
                }
                .boxed(),
            })
            .await;
        match answer {
            Ok(result) => result,
            Err(e) => Err(ReplicaError::local(e)),
        }
    }

    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<CheckedBytes> {
        on_cs!(self, call, "read", |cs| cs
            .read(chunk, version, offset, len)
            .await)
    }

    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        on_cs!(self, call, "flush", |cs| ChunkService::flush(
            &*cs, chunk, version
        )
        .await)
    }

    async fn block_crcs(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u64>> {
        on_cs!(self, call, "block_crcs", |cs| cs
            .block_crcs(chunk, version, offset, len)
            .await)
    }
}

#[async_trait]
impl ChunkControl for SimPeer {
    async fn create_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
    ) -> Result<()> {
        on_cs!(self, control, "create_chunk", |cs| cs
            .create_chunk(chunk, version, chunk_size)
            .await)
    }

    async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        on_cs!(self, control, "set_version", |cs| {
            ChunkControl::set_version(&*cs, chunk, version).await
        })
    }

    async fn lend_for_repair(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        on_cs!(self, control, "lend_for_repair", |cs| {
            ChunkControl::lend_for_repair(&*cs, chunk, version).await
        })
    }

    async fn zero_tail(&self, chunk: ChunkId, version: MapVersion, offset: u64) -> Result<()> {
        on_cs!(self, control, "zero_tail", |cs| cs
            .zero_tail(chunk, version, offset)
            .await)
    }

    async fn delete_chunk(&self, chunk: ChunkId) -> Result<()> {
        on_cs!(self, control, "delete_chunk", |cs| cs
            .delete_chunk(chunk)
            .await)
    }

    async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>> {
        on_cs!(self, control, "list_chunks", |cs| cs.list_chunks().await)
    }

    async fn replicate_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: Replica,
        rate_bytes_per_s: u64,
    ) -> Result<CopyStats> {
        on_cs!(self, control, "replicate_chunk", |cs| cs
            .replicate_chunk(chunk, version, chunk_size, source, rate_bytes_per_s)
            .await)
    }

    async fn copy_progress(&self, chunk: ChunkId) -> Result<Option<CopyProgress>> {
        on_cs!(self, control, "copy_progress", |cs| cs
            .copy_progress(chunk)
            .await)
    }

    async fn ping(&self) -> Result<()> {
        on_cs!(self, control, "ping", |cs| cs.ping().await)
    }
}

/// The Raft transport of MDS `from` over the simulated network.
pub struct SimRaftNetwork {
    pub net: Arc<SimNet>,
    pub from: MdsId,
}

impl RaftNetworkFactory<MdsRaftConfig> for SimRaftNetwork {
    type Network = SimRaftConn;

    async fn new_client(&mut self, target: MdsId, _node: &MdsNode) -> SimRaftConn {
        SimRaftConn {
            net: self.net.clone(),
            from: self.from,
            to: target,
        }
    }
}

pub struct SimRaftConn {
    net: Arc<SimNet>,
    from: MdsId,
    to: MdsId,
}

type RpcResult<T, E = openraft::error::Infallible> =
    std::result::Result<T, RPCError<MdsId, MdsNode, RaftError<MdsId, E>>>;

fn unreachable<E: std::error::Error>(e: Error) -> RPCError<MdsId, MdsNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string())))
}

impl SimRaftConn {
    /// Sends one Raft message; `f` runs on the target's Raft node.
    async fn send<T, E, F, Fut>(&self, what: &'static str, f: F) -> RpcResult<T, E>
    where
        T: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: FnOnce(MdsRaft) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::result::Result<T, RaftError<MdsId, E>>>
            + Send
            + 'static,
    {
        let to = NodeId::Mds(self.to.0);
        let target = self.to;
        let sent = self.net.call(NodeId::Mds(self.from.0), to, what, move |s| {
            async move {
                match s {
                    Services::Mds(ep) => match ep.raft.clone() {
                        Some(raft) => Some(f(raft).await),
                        None => None,
                    },
                    Services::Cs(_) => None,
                }
            }
            .boxed()
        });
        match tokio::time::timeout(RAFT_CALL_TIMEOUT, sent).await {
            Err(_) => Err(unreachable(timed_out(what, to, RAFT_CALL_TIMEOUT))),
            Ok(Err(e)) => Err(unreachable(e)),
            Ok(Ok(None)) => Err(unreachable(Error::internal(format!(
                "{to} is not an MDS with Raft"
            )))),
            Ok(Ok(Some(Ok(answer)))) => Ok(answer),
            Ok(Ok(Some(Err(RaftError::Fatal(f))))) => Err(RPCError::Network(NetworkError::new(&f))),
            Ok(Ok(Some(Err(e)))) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
        }
    }
}

impl RaftNetwork<MdsRaftConfig> for SimRaftConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MdsRaftConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<MdsId>> {
        self.send("raft append", move |raft| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<MdsRaftConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<MdsId>, InstallSnapshotError> {
        self.send("raft snapshot", move |raft| async move {
            raft.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MdsId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<MdsId>> {
        self.send("raft vote", move |raft| async move { raft.vote(rpc).await })
            .await
    }
}
