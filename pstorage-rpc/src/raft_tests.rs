//! Raft over Cap'n Proto on loopback: real openraft nodes talking through
//! `TcpRaftNetwork` to each other's `RpcServerThread`, each serving a
//! `LeaderRouter` in front of a small Raft-backed metadata service. The
//! Raft storage is in memory (this module), the state machine is the real
//! `MdsState`.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    ChangeMembers, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use pstorage_core::mds::raft::{MdsId, MdsNode, MdsRaft, MdsRaftConfig, RaftRequest, RaftResponse};
use pstorage_core::mds::{ApplyOutcome, Command, MdsState};
use pstorage_core::traits::{CsRegistry, MdsGroup, MetadataService};
use pstorage_core::types::*;
use pstorage_core::{Error, ErrorKind, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::actor::{ClientActor, ClientOptions, Dialer, RpcServerThread, RpcServices};
use crate::generated::pstorage_capnp::mds;
use crate::mds::MdsClient;
use crate::raft::{RaftNetworkOptions, TcpRaftNetwork, RAFT_WIRE_VERSION};
use crate::router::{LeaderRouter, RouterOptions};
use crate::wire::WireReply;

type C = MdsRaftConfig;

// ---------------------------------------------------------------------------
// In-memory Raft storage (tests only)

#[derive(Default)]
struct LogData {
    vote: Option<Vote<MdsId>>,
    committed: Option<LogId<MdsId>>,
    last_purged: Option<LogId<MdsId>>,
    entries: BTreeMap<u64, Entry<C>>,
}

#[derive(Clone, Default)]
struct MemLog(Arc<Mutex<LogData>>);

impl RaftLogReader<C> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry<C>>, StorageError<MdsId>> {
        let data = self.0.lock();
        Ok(data.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<C> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<C>, StorageError<MdsId>> {
        let data = self.0.lock();
        let last = data
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(data.last_purged);
        Ok(LogState {
            last_purged_log_id: data.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> MemLog {
        self.clone()
    }

    async fn save_vote(
        &mut self,
        vote: &Vote<MdsId>,
    ) -> std::result::Result<(), StorageError<MdsId>> {
        self.0.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote<MdsId>>, StorageError<MdsId>> {
        Ok(self.0.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<MdsId>>,
    ) -> std::result::Result<(), StorageError<MdsId>> {
        self.0.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(
        &mut self,
    ) -> std::result::Result<Option<LogId<MdsId>>, StorageError<MdsId>> {
        Ok(self.0.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> std::result::Result<(), StorageError<MdsId>>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        {
            let mut data = self.0.lock();
            for entry in entries {
                data.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(
        &mut self,
        log_id: LogId<MdsId>,
    ) -> std::result::Result<(), StorageError<MdsId>> {
        self.0.lock().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(
        &mut self,
        log_id: LogId<MdsId>,
    ) -> std::result::Result<(), StorageError<MdsId>> {
        let mut data = self.0.lock();
        data.entries.retain(|&index, _| index > log_id.index);
        data.last_purged = Some(log_id);
        Ok(())
    }
}

struct SmData {
    state: MdsState,
    last_applied: Option<LogId<MdsId>>,
    membership: StoredMembership<MdsId, MdsNode>,
    snapshot: Option<(SnapshotMeta<MdsId, MdsNode>, Vec<u8>)>,
    snapshots_built: u64,
    snapshots_installed: u64,
}

#[derive(Clone)]
struct MemSm(Arc<Mutex<SmData>>);

impl MemSm {
    fn new() -> MemSm {
        MemSm(Arc::new(Mutex::new(SmData {
            state: MdsState::new(FileAttrs::default()).unwrap(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
            snapshots_installed: 0,
        })))
    }

    fn stat(&self, path: &str) -> Result<Stat> {
        let data = self.0.lock();
        let ino = data.state.lookup(path)?;
        data.state
            .stat_of(ino)
            .ok_or_else(|| Error::not_found(format!("inode {ino} of {path}")))
    }
}

impl RaftSnapshotBuilder<C> for MemSm {
    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot<C>, StorageError<MdsId>> {
        let mut data = self.0.lock();
        let bytes = postcard::to_allocvec(&data.state)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        data.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                data.last_applied.map(|l| l.index).unwrap_or(0),
                data.snapshots_built
            ),
        };
        data.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<C> for MemSm {
    type SnapshotBuilder = MemSm;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<
        (Option<LogId<MdsId>>, StoredMembership<MdsId, MdsNode>),
        StorageError<MdsId>,
    > {
        let data = self.0.lock();
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> std::result::Result<Vec<RaftResponse>, StorageError<MdsId>>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let mut data = self.0.lock();
        let mut replies = Vec::new();
        for entry in entries {
            data.last_applied = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => RaftResponse::Empty,
                EntryPayload::Normal(request) => RaftResponse::Commands(
                    request
                        .cmds
                        .into_iter()
                        .map(|cmd| RaftResponse::from_result(data.state.apply(cmd)))
                        .collect(),
                ),
                EntryPayload::Membership(membership) => {
                    data.membership = StoredMembership::new(Some(entry.log_id), membership);
                    RaftResponse::Empty
                }
            });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> MemSm {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<Cursor<Vec<u8>>>, StorageError<MdsId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<MdsId, MdsNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> std::result::Result<(), StorageError<MdsId>> {
        let bytes = snapshot.into_inner();
        let state: MdsState = postcard::from_bytes(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut data = self.0.lock();
        data.state = state;
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        data.snapshot = Some((meta.clone(), bytes));
        data.snapshots_installed += 1;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<C>>, StorageError<MdsId>> {
        let data = self.0.lock();
        Ok(data.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

// ---------------------------------------------------------------------------
// A small Raft-backed metadata service: mkdir goes through the Raft log,
// stat reads the local state machine; MdsGroup changes the membership.
// It counts the calls it serves, to show where a routed call landed.

struct RaftMds {
    raft: MdsRaft,
    sm: MemSm,
    calls: AtomicUsize,
    next_mds_id: AtomicU64,
    /// Set: the next `renew` here makes that node campaign, waits until
    /// this one no longer leads, and answers "not the leader" (the
    /// leadership moving between the router's check and the call).
    hand_off: Mutex<Option<MdsRaft>>,
}

impl RaftMds {
    fn refuse<T>(&self, method: &str) -> Result<T> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Error::invalid(format!(
            "{method}: the Raft test service implements only mkdir, stat and MdsGroup"
        )))
    }
}

fn raft_error(e: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("Raft: {e}"))
}

#[async_trait]
impl MetadataService for RaftMds {
    async fn open_with(
        &self,
        _: &str,
        _: LeaseMode,
        _: OpenFlags,
        _: Perms,
        _op: Option<OpTag>,
    ) -> Result<OpenReply> {
        self.refuse("open")
    }
    async fn renew(&self, _: LeaseId) -> Result<()> {
        let hand_off = self.hand_off.lock().take();
        let Some(successor) = hand_off else {
            // Served: renewals are what this test service answers Ok.
            self.calls.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        };
        let mut metrics = self.raft.metrics();
        let me = metrics.borrow().id;
        // A campaign the others refuse (their leader lease still runs) is
        // started again.
        for _ in 0..10 {
            successor.trigger().elect().await.map_err(raft_error)?;
            let moved = async {
                while metrics.borrow_and_update().current_leader == Some(me) {
                    if metrics.changed().await.is_err() {
                        return;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(2), moved)
                .await
                .is_ok()
            {
                break;
            }
        }
        Err(Error::not_leader(
            "the leadership moved during the call; retry",
        ))
    }
    async fn close(&self, _: LeaseId) -> Result<()> {
        self.refuse("close")
    }
    async fn stat(&self, path: &str) -> Result<Stat> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sm.stat(path)
    }
    async fn mkdir_with(
        &self,
        path: &str,
        parents: bool,
        perms: Perms,
        _op: Option<OpTag>,
    ) -> Result<Stat> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let cmd = Command::Mkdir {
            perms,
            path: path.to_owned(),
            parents,
            now_ms: 1_700_000_000_000,
        };
        let reply = self
            .raft
            .client_write(RaftRequest::one(cmd))
            .await
            .map_err(raft_error)?;
        match reply.data.into_result()? {
            ApplyOutcome::Stat(stat) => Ok(stat),
            other => Err(Error::internal(format!("mkdir applied as {other:?}"))),
        }
    }
    async fn readdir(&self, _: &str) -> Result<Vec<DirEntry>> {
        self.refuse("readdir")
    }
    async fn unlink(&self, _: &str, _op: Option<OpTag>) -> Result<()> {
        self.refuse("unlink")
    }
    async fn rename_with(
        &self,
        _: &str,
        _: &str,
        _: RenameFlags,
        _op: Option<OpTag>,
    ) -> Result<()> {
        self.refuse("rename")
    }
    async fn set_attr(&self, _: &str, _: AttrUpdate, _: bool, _op: Option<OpTag>) -> Result<()> {
        self.refuse("setAttr")
    }
    async fn chunk_map(&self, _: LeaseId, _: u64, _: bool) -> Result<Option<ChunkMap>> {
        self.refuse("chunkMap")
    }
    async fn report_failure(
        &self,
        _: LeaseId,
        _: ChunkId,
        _: MapVersion,
        _: CsId,
        _: FailureReason,
    ) -> Result<ChunkMap> {
        self.refuse("reportFailure")
    }
    async fn commit_size(&self, _: LeaseId, _: u64) -> Result<()> {
        self.refuse("commitSize")
    }
    async fn truncate(&self, _: LeaseId, _: u64) -> Result<()> {
        self.refuse("truncate")
    }
    async fn file_chunks(&self, _: &str) -> Result<Vec<ChunkMap>> {
        self.refuse("fileChunks")
    }
    async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.refuse("clusterStatus")
    }
    async fn get_config(&self) -> Result<Vec<ConfigEntry>> {
        self.refuse("getConfig")
    }
    async fn set_config(&self, _: &str, _: u64) -> Result<()> {
        self.refuse("setConfig")
    }
    async fn event_log(&self, _: u64) -> Result<Vec<Event>> {
        self.refuse("eventLog")
    }
    async fn remove_cs(&self, _: CsId, _: bool) -> Result<()> {
        self.refuse("removeCs")
    }
}

#[async_trait]
impl CsRegistry for RaftMds {
    async fn allocate_cs_id(&self) -> Result<CsId> {
        self.refuse("allocateCsId")
    }
    async fn register_cs(&self, _: CsRegistration) -> Result<RegisterReply> {
        self.refuse("registerCs")
    }
    async fn heartbeat(&self, _: CsId, _: SpaceInfo, _: CsStats) -> Result<HeartbeatReply> {
        self.refuse("heartbeat")
    }
    async fn report_bad_replica(&self, _: CsId, _: ChunkId, _: FailureReason) -> Result<()> {
        self.refuse("reportBadReplica")
    }
    async fn report_bad_blocks(
        &self,
        _: CsId,
        _: ChunkId,
        _: pstorage_core::types::BadBlocks,
    ) -> Result<pstorage_core::types::ChunkMap> {
        self.refuse("reportBadBlocks")
    }
}

#[async_trait]
impl MdsGroup for RaftMds {
    async fn allocate_mds_id(&self) -> Result<MdsId> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(MdsId(self.next_mds_id.fetch_add(1, Ordering::SeqCst)))
    }
    async fn add_mds(&self, id: MdsId, addr: &str) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let node = MdsNode {
            addr: addr.to_owned(),
        };
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(raft_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(raft_error)?;
        Ok(())
    }
    async fn remove_mds(&self, id: MdsId) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(raft_error)?;
        Ok(())
    }
    async fn members(&self) -> Result<pstorage_core::types::MdsMembership> {
        Ok(pstorage_core::mds::raft_membership(&self.raft))
    }
}

// ---------------------------------------------------------------------------
// Nodes

fn plain_dialer() -> Dialer {
    crate::node::control_dialer(creds())
}

fn creds() -> crate::tls::Credentials {
    crate::tls::test_credentials(crate::pki::Role::Mds)
}

/// Reads the preface of `stream`, then hands it to `server`'s thread.
fn serve_mds_later(server: Arc<RpcServerThread>, mut stream: TcpStream) {
    tokio::spawn(async move {
        if crate::auth::peek_channel(&mut stream).await.is_ok() {
            let _ = server.serve_mds(stream, None);
        }
    });
}

fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        install_snapshot_timeout: 2000,
        // Small chunks: a snapshot of a few dozen directories takes several
        // raftSnapshot messages.
        snapshot_max_chunk_size: 512,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

fn router_options() -> RouterOptions {
    RouterOptions {
        election_wait: Duration::from_secs(10),
        client: ClientOptions {
            connect_timeout: Duration::from_millis(500),
            call_timeout: Some(Duration::from_secs(10)),
        },
    }
}

/// One MDS: a Raft node, its service behind a `LeaderRouter`, served on an
/// ephemeral loopback port.
struct Node {
    id: MdsId,
    addr: String,
    raft: MdsRaft,
    service: Arc<RaftMds>,
    sm: MemSm,
    server: Option<Arc<RpcServerThread>>,
    accept_loop: tokio::task::JoinHandle<()>,
    /// Connections its Raft network dialed.
    dials: Arc<AtomicUsize>,
}

impl Node {
    async fn start(id: MdsId, router: RouterOptions) -> Node {
        Node::start_with(id, router, raft_config()).await
    }

    /// [`Node::start`] with the openraft configuration `config`.
    async fn start_with(id: MdsId, router: RouterOptions, config: Arc<openraft::Config>) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Each MDS has its own certificate, `mds N`: the members take Raft
        // messages from members only.
        let own =
            crate::tls::test_credentials_named(crate::pki::Role::Mds, &format!("mds {}", id.0));
        let dialer = crate::node::control_dialer(own.clone());
        let dials = Arc::new(AtomicUsize::new(0));
        let counted: Dialer = {
            let (dials, dialer) = (dials.clone(), dialer.clone());
            Arc::new(move |addr| {
                dials.fetch_add(1, Ordering::SeqCst);
                dialer(addr)
            })
        };
        let network = TcpRaftNetwork::new(counted, RaftNetworkOptions::default());
        let sm = MemSm::new();
        let raft = MdsRaft::new(id, config, network, MemLog::default(), sm.clone())
            .await
            .unwrap();
        let service = Arc::new(RaftMds {
            raft: raft.clone(),
            sm: sm.clone(),
            calls: AtomicUsize::new(0),
            next_mds_id: AtomicU64::new(100),
            hand_off: Mutex::new(None),
        });
        let router = Arc::new(LeaderRouter::new(
            id,
            raft.clone(),
            service.clone(),
            service.clone(),
            service.clone(),
            dialer,
            router,
        ));
        let services = RpcServices::new()
            .with_mds(router.clone(), router.clone())
            .with_group(router)
            .with_raft(raft.clone());
        let server =
            Arc::new(RpcServerThread::spawn(&format!("mds {id} rpc"), own, services).unwrap());
        let loop_server = server.clone();
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                serve_mds_later(loop_server.clone(), stream);
            }
        });
        Node {
            id,
            addr,
            raft,
            service,
            sm,
            server: Some(server),
            accept_loop,
            dials,
        }
    }

    fn member(&self) -> (MdsId, MdsNode) {
        (
            self.id,
            MdsNode {
                addr: self.addr.clone(),
            },
        )
    }

    fn client(&self) -> MdsClient {
        MdsClient::new(
            vec![self.addr.clone()],
            plain_dialer(),
            ClientOptions {
                connect_timeout: Duration::from_secs(5),
                call_timeout: Some(Duration::from_secs(20)),
            },
        )
        .unwrap()
    }

    fn calls(&self) -> usize {
        self.service.calls.load(Ordering::SeqCst)
    }

    /// Stops the node as a crash would: no more connections, no Raft.
    async fn stop(&mut self) {
        self.accept_loop.abort();
        let _ = (&mut self.accept_loop).await;
        // Dropping the server thread closes every connection it serves.
        self.server.take();
        self.raft.shutdown().await.unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Starts `n` nodes (ids 1..=n) and makes them one Raft group.
async fn start_group(n: u64) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(Node::start(MdsId(id), router_options()).await);
    }
    let members: BTreeMap<MdsId, MdsNode> = nodes.iter().map(Node::member).collect();
    nodes[0].raft.initialize(members).await.unwrap();
    nodes
}

/// Waits until the nodes agree on a leader among `alive` and returns its index.
async fn wait_for_leader(nodes: &[Node], alive: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leaders: Vec<Option<MdsId>> = alive
            .iter()
            .map(|&i| nodes[i].raft.metrics().borrow().current_leader)
            .collect();
        if let Some(Some(leader)) = leaders.first() {
            if leaders.iter().all(|l| *l == Some(*leader)) {
                if let Some(&i) = alive.iter().find(|&&i| nodes[i].id == *leader) {
                    return i;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no common leader elected: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes directory `path` through the Raft node of `leader` and waits until
/// it is in the state machine of each of the three nodes.
async fn mkdir_everywhere(nodes: &[Node], leader: usize, path: &str) {
    nodes[leader]
        .raft
        .client_write(RaftRequest::one(Command::Mkdir {
            perms: Perms::DIR,
            path: path.into(),
            parents: false,
            now_ms: 1,
        }))
        .await
        .unwrap();
    wait_replicated(nodes, &[0, 1, 2], path).await;
}

/// Waits until `path` exists in the state machine of every node in `which`.
async fn wait_replicated(nodes: &[Node], which: &[usize], path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &i in which {
        loop {
            match nodes[i].sm.stat(path) {
                Ok(stat) => {
                    assert_eq!(stat.kind, InodeKind::Dir);
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{path} not replicated to MDS {}: {e}",
                    nodes[i].id
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mdses_elect_replicate_and_route_to_the_leader() {
    let mut nodes = start_group(3).await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // Written on the leader, replicated to every member over capnp.
    mkdir_everywhere(&nodes, leader, "/direct").await;

    // A client of a follower: its calls are served by the leader's service.
    let client = nodes[followers[0]].client();
    let stat = client.mkdir("/routed", false, None).await.unwrap();
    assert_eq!(stat.kind, InodeKind::Dir);
    assert_eq!(client.stat("/routed").await.unwrap(), stat);
    assert_eq!(nodes[leader].calls(), 2);
    for &f in &followers {
        assert_eq!(nodes[f].calls(), 0, "MDS {} served a call", nodes[f].id);
    }
    wait_replicated(&nodes, &[0, 1, 2], "/routed").await;
    // The service's own errors travel back unchanged through the router.
    let error = client.readdir("/").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    assert!(error.message().contains("readdir"), "{error}");
    // MdsGroup is routed too.
    assert_eq!(client.allocate_mds_id().await.unwrap(), MdsId(100));
    assert_eq!(nodes[leader].calls(), 4);

    // The leader crashes: the survivors elect another one, and a call sent
    // to a survivor reaches it (the router waits for the election and
    // re-resolves the leader it could not reach).
    nodes[leader].stop().await;
    let survivor = followers[0];
    let stat = nodes[survivor]
        .client()
        .mkdir("/after-failover", false, None)
        .await
        .unwrap();
    assert_eq!(stat.kind, InodeKind::Dir);
    let new_leader = wait_for_leader(&nodes, &followers).await;
    assert_ne!(nodes[new_leader].id, nodes[leader].id);
    assert!(nodes[new_leader].calls() >= 1);
    wait_replicated(&nodes, &followers, "/after-failover").await;
    wait_replicated(&nodes, &followers, "/routed").await;
}

/// A read barrier heartbeats every follower through a client openraft asks
/// the network for each time: the connections are kept, not dialed again
/// (a dial, a thread and a TLS handshake per follower per read made a read
/// with 3 MDSes take ~5 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_barriers_reuse_the_connections_to_the_followers() {
    let nodes = start_group(3).await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    // Replicated everywhere: the replication streams are up.
    mkdir_everywhere(&nodes, leader, "/up").await;
    let before = nodes[leader].dials.load(Ordering::SeqCst);
    for _ in 0..50 {
        nodes[leader].raft.ensure_linearizable().await.unwrap();
    }
    let dialed = nodes[leader].dials.load(Ordering::SeqCst) - before;
    // 100 without the kept connections; a replication stream that broke
    // meanwhile may dial once more.
    assert!(dialed <= 2, "{dialed} dials for 50 read barriers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_leader_refuses_as_not_the_leader_is_routed_to_the_new_one() {
    let nodes = start_group(3).await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let successor = (leader + 1) % 3;
    *nodes[leader].service.hand_off.lock() = Some(nodes[successor].raft.clone());
    // The client talks to the old leader only; its router finds the call
    // refused locally and serves it where the leadership went, instead of
    // answering "not the leader" for the client to retry after a backoff.
    nodes[leader]
        .client()
        .renew(LeaseId(1))
        .await
        .expect("routed to the new leader");
    // Served once, by the leader elected after the refusal (usually the one
    // asked to campaign; the old one if the others' leader leases made it
    // win the next term again).
    let served: Vec<usize> = nodes.iter().map(Node::calls).collect();
    assert_eq!(served.iter().sum::<usize>(), 1, "{served:?}");
    let now = wait_for_leader(&nodes, &[0, 1, 2]).await;
    assert_eq!(served[now], 1, "{served:?}, leader {now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_mds_catches_up_from_a_chunked_snapshot() {
    let mut nodes = start_group(3).await;
    let leader = wait_for_leader(&nodes, &[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let client = nodes[follower].client();
    for i in 0..40 {
        client
            .mkdir(&format!("/dir-{i:03}-with-a-long-name"), false, None)
            .await
            .unwrap();
    }
    // Compact the leader's log so that the newcomer can only catch up from
    // the snapshot.
    nodes[leader].raft.trigger().snapshot().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot_index = loop {
        if let Some(snapshot) = nodes[leader].raft.metrics().borrow().snapshot {
            break snapshot.index;
        }
        assert!(Instant::now() < deadline, "the leader built no snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    nodes[leader]
        .raft
        .trigger()
        .purge_log(snapshot_index)
        .await
        .unwrap();
    let snapshot_len = nodes[leader].sm.0.lock().snapshot.as_ref().unwrap().1.len();
    assert!(
        snapshot_len > 4 * 512,
        "snapshot of {snapshot_len} bytes fits in few chunks"
    );

    // The fourth MDS joins through a follower's router (MdsGroup routed to
    // the leader), receives the snapshot in chunks and becomes a voter.
    let newcomer = Node::start(MdsId(4), router_options()).await;
    client.add_mds(MdsId(4), &newcomer.addr).await.unwrap();
    nodes.push(newcomer);
    let all = nodes;
    wait_replicated(&all, &[3], "/dir-039-with-a-long-name").await;
    assert_eq!(all[3].sm.0.lock().snapshots_installed, 1);
    let voters: Vec<MdsId> = all[leader]
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, [1, 2, 3, 4].map(MdsId).to_vec());
    // And it follows new writes.
    client.mkdir("/after-join", false, None).await.unwrap();
    wait_replicated(&all, &[0, 1, 2, 3], "/after-join").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_leader_calls_fail_unavailable_after_the_election_wait() {
    // A node that was never initialized has no members and no leader.
    let node = Node::start(
        MdsId(1),
        RouterOptions {
            election_wait: Duration::from_millis(300),
            ..router_options()
        },
    )
    .await;
    let started = Instant::now();
    let error = node.client().stat("/").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(
        error.message().contains("no MDS leader is elected")
            && error.message().contains("0 MDS(es)"),
        "{error}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(node.calls(), 0);
}

/// Sends raw bytes as a Raft message of `method`.
async fn send_raw(
    actor: &ClientActor<mds::Client>,
    method: &'static str,
    data: Vec<u8>,
) -> Result<Vec<u8>> {
    actor
        .call(method, move |mds| async move {
            let response = match method {
                "raftAppend" => {
                    let mut request = mds.raft_append_request();
                    request.get().set_data(&data);
                    let response = request.send().promise.await?;
                    WireReply::read_result(response.get()?.get_result()?)
                }
                "raftVote" => {
                    let mut request = mds.raft_vote_request();
                    request.get().set_data(&data);
                    let response = request.send().promise.await?;
                    WireReply::read_result(response.get()?.get_result()?)
                }
                _ => {
                    let mut request = mds.raft_snapshot_request();
                    request.get().set_data(&data);
                    let response = request.send().promise.await?;
                    WireReply::read_result(response.get()?.get_result()?)
                }
            };
            response
        })
        .await
}

/// Once a group is formed, its members take Raft messages only from
/// members: an `mds` certificate of another id (a removed MDS, a stolen
/// certificate of a node never added) is refused, before openraft sees the
/// message; a member's is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_from_mdses_outside_the_group_are_refused() {
    let nodes = start_group(2).await;
    wait_for_leader(&nodes, &[0, 1]).await;
    let vote = openraft::raft::VoteRequest::<MdsId>::new(Vote::new(1, MdsId(2)), None);
    for (name, member) in [("mds 9", false), ("test mds", false), ("mds 2", true)] {
        let creds = crate::tls::test_credentials_named(crate::pki::Role::Mds, name);
        let actor: ClientActor<mds::Client> = ClientActor::spawn(
            "MDS",
            vec![nodes[0].addr.clone()],
            crate::node::control_dialer(creds),
            ClientOptions::default(),
        )
        .unwrap();
        let data = crate::raft::encode("vote request", &vote).unwrap();
        let outcome = send_raw(&actor, "raftVote", data).await;
        if member {
            // A stale vote request, answered (not granted) by openraft.
            outcome.unwrap();
        } else {
            let error = outcome.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::PermissionDenied, "{name}: {error}");
            assert!(error.message().contains("not a member"), "{error}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_raft_payloads_get_a_clear_error_and_the_server_keeps_serving() {
    let node = Node::start(MdsId(1), router_options()).await;
    let actor: ClientActor<mds::Client> = ClientActor::spawn(
        "MDS",
        vec![node.addr.clone()],
        plain_dialer(),
        ClientOptions::default(),
    )
    .unwrap();
    for method in ["raftAppend", "raftVote", "raftSnapshot"] {
        let error = send_raw(&actor, method, vec![]).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Protocol, "{error}");
        assert!(error.message().contains("empty Raft"), "{error}");

        let error = send_raw(&actor, method, vec![RAFT_WIRE_VERSION, 0xff, 0xff, 0xff])
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Protocol, "{error}");
        assert!(error.message().contains("malformed Raft"), "{error}");

        let error = send_raw(&actor, method, vec![RAFT_WIRE_VERSION + 8, 1, 2])
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Protocol, "{error}");
        let other = format!("format version {}", RAFT_WIRE_VERSION + 8);
        assert!(
            error.message().contains(&other) && error.message().contains("upgrade"),
            "{error}"
        );
    }
    // The same connection still carries a well-formed message to Raft.
    let vote = openraft::raft::VoteRequest::<MdsId>::new(Vote::new(1, MdsId(7)), None);
    let reply = send_raw(
        &actor,
        "raftVote",
        crate::raft::encode("vote request", &vote).unwrap(),
    )
    .await
    .unwrap();
    let reply: std::result::Result<
        openraft::raft::VoteResponse<MdsId>,
        openraft::error::Fatal<MdsId>,
    > = crate::raft::decode("vote reply", &reply).unwrap();
    assert!(reply.is_ok(), "{reply:?}");
}

fn snapshot_chunk(id: &str, offset: u64, data: Vec<u8>) -> Vec<u8> {
    let request = openraft::raft::InstallSnapshotRequest::<MdsRaftConfig> {
        vote: Vote::new_committed(100, MdsId(7)),
        meta: openraft::SnapshotMeta {
            last_log_id: None,
            last_membership: openraft::StoredMembership::default(),
            snapshot_id: id.to_string(),
        },
        offset,
        data,
        done: false,
    };
    crate::raft::encode("install-snapshot request", &request).unwrap()
}

#[test]
fn snapshot_chunks_are_admitted_only_where_they_continue_what_arrived() {
    use crate::raft::{SnapshotIntake, MAX_SNAPSHOT_BYTES};
    let intake = SnapshotIntake::default();
    let kind = |r: Result<()>| r.unwrap_err().kind();
    // Nothing started: only offset 0 is admitted.
    assert_eq!(kind(intake.admit("a", 10, 5)), ErrorKind::InvalidArgument);
    intake.admit("a", 0, 100).unwrap();
    intake.admit("a", 100, 100).unwrap();
    // A repeated chunk (a retry) is fine; a gap is not.
    intake.admit("a", 100, 100).unwrap();
    assert_eq!(kind(intake.admit("a", 201, 1)), ErrorKind::InvalidArgument);
    assert_eq!(
        kind(intake.admit("a", 1 << 60, 1)),
        ErrorKind::InvalidArgument
    );
    // Another snapshot must start at 0; a new start replaces the old one.
    assert_eq!(kind(intake.admit("b", 200, 1)), ErrorKind::InvalidArgument);
    intake.admit("b", 0, 1).unwrap();
    assert_eq!(kind(intake.admit("a", 200, 1)), ErrorKind::InvalidArgument);
    // Never beyond the largest snapshot, and no overflow.
    assert_eq!(
        kind(intake.admit("c", 0, MAX_SNAPSHOT_BYTES + 1)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(intake.admit("b", u64::MAX, 2)),
        ErrorKind::InvalidArgument
    );
    // Another node's intake is its own.
    let other = SnapshotIntake::default();
    other.admit("z", 0, 10).unwrap();
    intake.admit("b", 1, 1).unwrap();
}

/// A snapshot chunk at a huge offset made the MDS allocate up to it (the
/// snapshot arrives into memory) and abort: it is refused, and the MDS
/// serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_chunk_far_beyond_what_arrived_is_refused_and_the_mds_serves_on() {
    let node = Node::start(MdsId(1), router_options()).await;
    let actor: ClientActor<mds::Client> = ClientActor::spawn(
        "MDS",
        vec![node.addr.clone()],
        plain_dialer(),
        ClientOptions::default(),
    )
    .unwrap();
    // A snapshot starts (from a leader of a newer term), then a chunk of
    // it lands far beyond its end.
    send_raw(
        &actor,
        "raftSnapshot",
        snapshot_chunk("s1", 0, vec![1, 2, 3]),
    )
    .await
    .unwrap();
    for offset in [1u64 << 40, u64::MAX - 2, 4096] {
        let error = send_raw(
            &actor,
            "raftSnapshot",
            snapshot_chunk("s1", offset, vec![1, 2, 3]),
        )
        .await
        .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidArgument, "{error}");
    }
    // Its next chunk in line is taken.
    send_raw(&actor, "raftSnapshot", snapshot_chunk("s1", 3, vec![4, 5]))
        .await
        .unwrap();
    let vote = openraft::raft::VoteRequest::<MdsId>::new(Vote::new(101, MdsId(7)), None);
    let reply = send_raw(
        &actor,
        "raftVote",
        crate::raft::encode("vote request", &vote).unwrap(),
    )
    .await
    .unwrap();
    let reply: std::result::Result<
        openraft::raft::VoteResponse<MdsId>,
        openraft::error::Fatal<MdsId>,
    > = crate::raft::decode("vote reply", &reply).unwrap();
    assert!(reply.is_ok(), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_raft_or_group_says_so() {
    let sm = MemSm::new();
    let network = TcpRaftNetwork::new(plain_dialer(), RaftNetworkOptions::default());
    let raft = MdsRaft::new(
        MdsId(1),
        raft_config(),
        network,
        MemLog::default(),
        sm.clone(),
    )
    .await
    .unwrap();
    let service = Arc::new(RaftMds {
        raft,
        sm,
        calls: AtomicUsize::new(0),
        next_mds_id: AtomicU64::new(1),
        hand_off: Mutex::new(None),
    });
    // The bare service, as an MDS without replication serves it.
    let server = Arc::new(
        RpcServerThread::spawn(
            "plain mds",
            creds(),
            RpcServices::new().with_mds(service.clone(), service.clone()),
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let loop_server = server.clone();
    let accept_loop = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            serve_mds_later(loop_server.clone(), stream);
        }
    });
    let actor: ClientActor<mds::Client> = ClientActor::spawn(
        "MDS",
        vec![addr.clone()],
        plain_dialer(),
        ClientOptions::default(),
    )
    .unwrap();
    let vote = openraft::raft::VoteRequest::<MdsId>::new(Vote::new(1, MdsId(7)), None);
    let data = crate::raft::encode("vote request", &vote).unwrap();
    let error = send_raw(&actor, "raftVote", data).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.message().contains("runs no Raft node"), "{error}");

    let client =
        MdsClient::new(vec![addr.clone()], plain_dialer(), ClientOptions::default()).unwrap();
    let error = client.allocate_mds_id().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(
        error.message().contains("does not manage an MDS group"),
        "{error}"
    );
    assert_eq!(service.calls.load(Ordering::SeqCst), 0);

    // Certificates of other roles may not speak Raft, nor manage the
    // group: refused before the service is asked.
    for role in [
        crate::pki::Role::Client,
        crate::pki::Role::Cs,
        crate::pki::Role::Admin,
    ] {
        let dialer = crate::node::control_dialer(crate::tls::test_credentials(role));
        let actor: ClientActor<mds::Client> =
            ClientActor::spawn("MDS", vec![addr.clone()], dialer, ClientOptions::default())
                .unwrap();
        for method in ["raftVote", "raftAppend", "raftSnapshot"] {
            let data = crate::raft::encode("vote request", &vote).unwrap();
            let error = send_raw(&actor, method, data).await.unwrap_err();
            assert_eq!(
                error.kind(),
                ErrorKind::PermissionDenied,
                "{role} {method}: {error}"
            );
            assert!(error.message().contains("may not call"), "{error}");
        }
    }
    let client = MdsClient::new(
        vec![addr.clone()],
        crate::node::control_dialer(crate::tls::test_credentials(crate::pki::Role::Client)),
        ClientOptions::default(),
    )
    .unwrap();
    let error = client.allocate_mds_id().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PermissionDenied, "{error}");
    assert_eq!(service.calls.load(Ordering::SeqCst), 0);
    accept_loop.abort();
}

/// An append larger than `MAX_APPEND_BYTES` is sent in fewer entries
/// (openraft's `PayloadTooLarge` with a hint); one entry always goes.
#[test]
fn a_large_append_is_split_by_entries() {
    use crate::raft::{fewer_entries, MAX_APPEND_BYTES};
    assert_eq!(fewer_entries(300, MAX_APPEND_BYTES), None);
    assert_eq!(fewer_entries(1, 10 * MAX_APPEND_BYTES), None);
    assert_eq!(fewer_entries(300, 2 * MAX_APPEND_BYTES), Some(150));
    assert_eq!(fewer_entries(300, 3 * MAX_APPEND_BYTES), Some(100));
    // Never all of them, never none.
    assert_eq!(fewer_entries(2, MAX_APPEND_BYTES + 1), Some(1));
    assert_eq!(fewer_entries(300, 1000 * MAX_APPEND_BYTES), Some(1));
}

/// A member far behind is owed more entries than one `raftAppend` may
/// carry (`MAX_APPEND_BYTES`): the leader's network answers openraft
/// `PayloadTooLarge`, openraft sends fewer entries a message, and the
/// member catches up. With the tests' quick timings, and its twin with the
/// MDS's own (`raft_config`: an append has its 150 ms heartbeat interval to
/// be answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_through_split_appends() {
    catch_up_through_split_appends(raft_config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_through_split_appends_at_the_defaults() {
    let mut config = pstorage_core::mds::raft::raft_config(
        "test",
        pstorage_core::mds::raft::DEFAULT_SNAPSHOT_EVERY,
    )
    .unwrap();
    config.snapshot_max_chunk_size = crate::raft::RAFT_SNAPSHOT_CHUNK_BYTES;
    catch_up_through_split_appends(Arc::new(config)).await;
}

async fn catch_up_through_split_appends(config: Arc<openraft::Config>) {
    use crate::raft::{APPENDS_SPLIT, MAX_APPEND_BYTES};
    let start = |id| Node::start_with(MdsId(id), router_options(), config.clone());
    let nodes = vec![start(1).await, start(2).await];
    let members: BTreeMap<MdsId, MdsNode> = nodes.iter().map(Node::member).collect();
    nodes[0].raft.initialize(members).await.unwrap();
    let leader = wait_for_leader(&nodes, &[0, 1]).await;
    // Entries of about 1 MiB (commands the state refuses, logged whole),
    // five times what one message may carry (more than an MDS reads in
    // one request: without the split it would never catch up).
    let long = format!("/{}", "x".repeat(4000));
    let entries = 5 * MAX_APPEND_BYTES / (256 * long.len());
    for _ in 0..entries {
        let cmds = (0..256)
            .map(|_| Command::Mkdir {
                perms: Perms::DIR,
                path: long.clone(),
                parents: false,
                now_ms: 1,
            })
            .collect();
        nodes[leader]
            .raft
            .client_write(RaftRequest { cmds })
            .await
            .unwrap();
    }
    let last = nodes[leader].raft.metrics().borrow().last_log_index;
    let split_before = APPENDS_SPLIT.load(Ordering::Relaxed);
    let third = start(3).await;
    let (id, member) = third.member();
    nodes[leader]
        .raft
        .add_learner(id, member, true)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = third.raft.metrics().borrow().last_applied.map(|l| l.index);
        if applied >= last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "applied {applied:?}, the leader's last {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(APPENDS_SPLIT.load(Ordering::Relaxed) > split_before);
}
