//! Raft storage and state machine tests: real openraft nodes in one
//! process, each on its own redb file, connected by an in-memory network.

use crate::types::CsId;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory, ServerState};
use redb::{Database, TableDefinition};

use super::*;
use crate::mds::store::{MdsStore, STORE_FORMAT_VERSION};
use crate::types::{FileAttrs, Perms, Replicas, ROOT_INODE};

mod format_10_golden;
mod format_11_golden;
mod format_6_golden;
mod format_7_golden;
mod format_8_golden;
mod format_9_golden;
mod group_commit;
mod leader_clock;

const TIMEOUT: Duration = Duration::from_secs(10);

// ----- the state host ----------------------------------------------------

/// The live state, as the MDS service would own it.
struct TestHost {
    state: Mutex<MdsState>,
}

impl TestHost {
    fn new(state: MdsState) -> Arc<TestHost> {
        Arc::new(TestHost {
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> MdsState {
        self.state.lock().clone()
    }
}

impl StateHost for TestHost {
    fn apply_committed(&self, cmd: Command) -> Result<ApplyOutcome> {
        self.state.lock().apply(cmd)
    }

    fn snapshot_state(&self) -> MdsState {
        self.state()
    }

    fn install_state(&self, state: MdsState) {
        *self.state.lock() = state;
    }
}

// ----- the in-memory network ---------------------------------------------

#[derive(Default)]
struct NetInner {
    nodes: BTreeMap<MdsId, MdsRaft>,
    /// Nodes cut off: they neither send nor receive.
    cut: BTreeSet<MdsId>,
}

/// Routes Raft RPCs to in-process nodes.
#[derive(Clone, Default)]
struct Net {
    inner: Arc<Mutex<NetInner>>,
}

impl Net {
    fn register(&self, id: MdsId, raft: MdsRaft) {
        self.inner.lock().nodes.insert(id, raft);
    }

    fn unregister(&self, id: MdsId) {
        self.inner.lock().nodes.remove(&id);
    }

    fn cut(&self, id: MdsId, cut: bool) {
        let mut inner = self.inner.lock();
        if cut {
            inner.cut.insert(id);
        } else {
            inner.cut.remove(&id);
        }
    }

    fn factory(&self, from: MdsId) -> NetFactory {
        NetFactory {
            net: self.clone(),
            from,
        }
    }

    /// The handle of `to` if `from` can reach it, else why not.
    fn route(&self, from: MdsId, to: MdsId) -> std::result::Result<MdsRaft, String> {
        let inner = self.inner.lock();
        if inner.cut.contains(&from) || inner.cut.contains(&to) {
            return Err(format!("MDS {from} and MDS {to} are cut off"));
        }
        inner
            .nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| format!("MDS {to} is not running"))
    }
}

fn unreachable<E: std::error::Error>(why: String) -> RPCError<MdsId, MdsNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why)))
}

struct NetFactory {
    net: Net,
    from: MdsId,
}

impl RaftNetworkFactory<MdsRaftConfig> for NetFactory {
    type Network = NetConn;

    async fn new_client(&mut self, target: MdsId, _node: &MdsNode) -> NetConn {
        NetConn {
            net: self.net.clone(),
            from: self.from,
            to: target,
        }
    }
}

struct NetConn {
    net: Net,
    from: MdsId,
    to: MdsId,
}

type RpcResult<T, E = openraft::error::Infallible> =
    std::result::Result<T, RPCError<MdsId, MdsNode, RaftError<MdsId, E>>>;

impl NetConn {
    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<MdsId, E>,
    ) -> RPCError<MdsId, MdsNode, RaftError<MdsId, E>> {
        match e {
            // A shut-down node is unreachable, as over a real network.
            RaftError::Fatal(f) => RPCError::Network(NetworkError::new(&f)),
            e => RPCError::RemoteError(RemoteError::new(self.to, e)),
        }
    }
}

impl RaftNetwork<MdsRaftConfig> for NetConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MdsRaftConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<MdsId>> {
        let raft = self.net.route(self.from, self.to).map_err(unreachable)?;
        raft.append_entries(rpc).await.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<MdsRaftConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<MdsId>, InstallSnapshotError> {
        let raft = self.net.route(self.from, self.to).map_err(unreachable)?;
        raft.install_snapshot(rpc).await.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MdsId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<MdsId>> {
        let raft = self.net.route(self.from, self.to).map_err(unreachable)?;
        raft.vote(rpc).await.map_err(|e| self.remote(e))
    }
}

// ----- nodes and clusters ------------------------------------------------

struct Node {
    id: MdsId,
    raft: MdsRaft,
    host: Arc<TestHost>,
    path: PathBuf,
}

fn node_info(id: MdsId) -> MdsNode {
    MdsNode {
        addr: format!("mds{id}:1"),
    }
}

/// Root attributes other than the default, so a joiner that did not get
/// the leader's initial state would differ.
fn cluster_attrs() -> FileAttrs {
    FileAttrs {
        chunk_size: 1 << 20,
        ..FileAttrs::default()
    }
}

fn mkdir(path: &str) -> Command {
    Command::Mkdir {
        perms: Perms::DIR,
        path: path.into(),
        parents: false,
        now_ms: 1_000,
    }
}

/// [`mkdir`] as a build before store format 9 logged it (the golden files
/// of older formats hold it so): they read with the permissions of then.
fn legacy_mkdir(path: &str) -> Command {
    Command::Mkdir {
        perms: Perms::LEGACY_DIR,
        path: path.into(),
        parents: false,
        now_ms: 1_000,
    }
}

async fn start(net: &Net, id: MdsId, storage: RaftStorage, snapshot_every: u64) -> Node {
    let path = storage.path().to_path_buf();
    let host = TestHost::new(storage.initial_state().unwrap());
    let (log, sm) = storage.into_parts(host.clone());
    let config = Arc::new(raft_config("test", snapshot_every).unwrap());
    let raft = MdsRaft::new(id, config, net.factory(id), log, sm)
        .await
        .unwrap();
    net.register(id, raft.clone());
    Node {
        id,
        raft,
        host,
        path,
    }
}

/// Shuts a node down and waits until its database can be opened again
/// (openraft's tasks drop their handles shortly after shutdown).
async fn stop(net: &Net, node: Node) -> PathBuf {
    net.unregister(node.id);
    node.raft.shutdown().await.unwrap();
    let Node { raft, host, .. } = node;
    drop((raft, host));
    node.path
}

async fn reopen(path: &Path) -> RaftStorage {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match RaftStorage::open(path) {
            Ok(s) => return s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("reopen {}: {e}", path.display());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot reopen {}: {e}", path.display()),
        }
    }
}

/// Proposes `cmd` on `node` (which must be the leader).
async fn write(node: &Node, cmd: Command) -> Result<ApplyOutcome> {
    let resp = node
        .raft
        .client_write(RaftRequest::one(cmd))
        .await
        .unwrap_or_else(|e| panic!("MDS {} cannot propose: {e}", node.id));
    resp.data.into_result()
}

/// Starts the first MDS of a new cluster and makes its state a snapshot.
async fn bootstrap(net: &Net, dir: &Path, snapshot_every: u64) -> Node {
    let initial = MdsState::new(cluster_attrs()).unwrap();
    let storage = RaftStorage::create(dir.join("mds1.redb"), &initial).unwrap();
    let node = start(net, MdsId(1), storage, snapshot_every).await;
    node.raft
        .initialize(BTreeMap::from([(MdsId(1), node_info(MdsId(1)))]))
        .await
        .unwrap();
    node.raft
        .wait(Some(TIMEOUT))
        .state(ServerState::Leader, "MDS 1 leads")
        .await
        .unwrap();
    compact_log_now(&node.raft, TIMEOUT).await.unwrap();
    node
}

/// Starts a new empty MDS and adds it through `leader` as a learner, then
/// makes `voters` the voting members.
async fn join(
    net: &Net,
    dir: &Path,
    leader: &Node,
    id: MdsId,
    voters: &[MdsId],
    snapshot_every: u64,
) -> Node {
    let storage = RaftStorage::create_empty(dir.join(format!("mds{id}.redb"))).unwrap();
    assert!(!storage.has_state());
    let node = start(net, id, storage, snapshot_every).await;
    leader
        .raft
        .add_learner(id, node_info(id), true)
        .await
        .unwrap();
    leader
        .raft
        .change_membership(voters.iter().copied().collect::<BTreeSet<_>>(), false)
        .await
        .unwrap();
    node
}

async fn three_nodes(dir: &Path, net: &Net, snapshot_every: u64) -> Vec<Node> {
    let n1 = bootstrap(net, dir, snapshot_every).await;
    let n2 = join(net, dir, &n1, MdsId(2), &[1, 2].map(MdsId), snapshot_every).await;
    let n3 = join(
        net,
        dir,
        &n1,
        MdsId(3),
        &[1, 2, 3].map(MdsId),
        snapshot_every,
    )
    .await;
    vec![n1, n2, n3]
}

/// Waits until every node applied what `leader` applied; returns the
/// common state.
async fn converge(leader: &Node, nodes: &[&Node]) -> MdsState {
    let applied = leader.raft.metrics().borrow().last_applied;
    let index = applied.map(|l| l.index);
    for node in nodes {
        node.raft
            .wait(Some(TIMEOUT))
            .applied_index_at_least(index, format!("MDS {} catches up", node.id))
            .await
            .unwrap();
    }
    let state = leader.host.state();
    for node in nodes {
        assert_eq!(node.host.state(), state, "MDS {} diverged", node.id);
    }
    state.check_invariants().unwrap();
    state
}

async fn wait_leader(nodes: &[&Node], not: MdsId) -> MdsId {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        for node in nodes {
            let m = node.raft.metrics().borrow().clone();
            if m.state == ServerState::Leader && m.id != not {
                return m.id;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new leader elected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- tests ---------------------------------------------------------------

#[tokio::test]
async fn three_mdses_replicate_and_survive_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let mut nodes = three_nodes(dir.path(), &net, DEFAULT_SNAPSHOT_EVERY).await;
    assert_eq!(
        nodes[1].host.state().inode(ROOT_INODE).unwrap().attrs,
        cluster_attrs(),
        "the joiner starts from the leader's initial state"
    );

    assert!(matches!(
        write(&nodes[0], mkdir("/a")).await.unwrap(),
        ApplyOutcome::Stat(_)
    ));
    assert_eq!(
        write(&nodes[0], Command::AllocateCsId).await.unwrap(),
        ApplyOutcome::CsId(CsId(1))
    );
    assert_eq!(
        write(&nodes[0], Command::AllocateMdsId).await.unwrap(),
        ApplyOutcome::MdsId(2)
    );
    let all: Vec<&Node> = nodes.iter().collect();
    let state = converge(&nodes[0], &all).await;
    assert!(state.lookup("/a").is_ok());

    // Kill the leader: another takes over and keeps committing.
    let old = nodes.remove(0);
    let t0 = std::time::Instant::now();
    stop(&net, old).await;
    let survivors: Vec<&Node> = nodes.iter().collect();
    let leader_id = wait_leader(&survivors, MdsId(1)).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let leader = nodes.iter().find(|n| n.id == leader_id).unwrap();
    write(leader, mkdir("/a/b")).await.unwrap();
    assert_eq!(
        write(leader, Command::AllocateCsId).await.unwrap(),
        ApplyOutcome::CsId(CsId(2))
    );
    let state = converge(leader, &survivors).await;
    assert!(state.lookup("/a/b").is_ok());
    for n in nodes {
        stop(&net, n).await;
    }
}

#[tokio::test]
async fn a_refused_command_changes_no_state() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let nodes = three_nodes(dir.path(), &net, DEFAULT_SNAPSHOT_EVERY).await;
    write(&nodes[0], mkdir("/x")).await.unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    let before = converge(&nodes[0], &all).await;

    let err = write(&nodes[0], mkdir("/x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.message().contains("/x"), "{err}");
    let err = write(
        &nodes[0],
        Command::SetCsAddr {
            cs: CsId(7),
            addr: "h:1".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    // The refusals were committed (the log moved on) but every state is
    // what it was.
    assert_eq!(converge(&nodes[0], &all).await, before);
    for n in nodes {
        stop(&net, n).await;
    }
}

#[tokio::test]
async fn a_restarted_mds_has_its_state_and_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let mut nodes = three_nodes(dir.path(), &net, DEFAULT_SNAPSHOT_EVERY).await;
    for i in 0..5 {
        write(&nodes[0], mkdir(&format!("/d{i}"))).await.unwrap();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let state = converge(&nodes[0], &all).await;

    // A follower restarts from its file: the committed entries after its
    // snapshot are re-applied at start, before it hears from the leader.
    let n3 = nodes.pop().unwrap();
    let path = stop(&net, n3).await;
    net.cut(MdsId(3), true);
    let n3 = start(&net, MdsId(3), reopen(&path).await, DEFAULT_SNAPSHOT_EVERY).await;
    let applied = nodes[0].raft.metrics().borrow().last_applied;
    n3.raft
        .wait(Some(TIMEOUT))
        .metrics(|m| m.last_applied >= applied, "replay")
        .await
        .unwrap();
    assert_eq!(n3.host.state(), state);

    // It rejoins and follows new commands.
    net.cut(MdsId(3), false);
    write(&nodes[0], mkdir("/after")).await.unwrap();
    nodes.push(n3);
    let all: Vec<&Node> = nodes.iter().collect();
    let state = converge(&nodes[0], &all).await;
    assert!(state.lookup("/after").is_ok());

    // The whole cluster restarts; the state survives on every MDS.
    let mut paths = Vec::new();
    for n in nodes {
        paths.push((n.id, stop(&net, n).await));
    }
    let mut nodes = Vec::new();
    for (id, path) in &paths {
        nodes.push(start(&net, *id, reopen(path).await, DEFAULT_SNAPSHOT_EVERY).await);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_id = wait_leader(&all, MdsId(0)).await;
    let leader = nodes.iter().find(|n| n.id == leader_id).unwrap();
    write(leader, mkdir("/again")).await.unwrap();
    let after = converge(leader, &all).await;
    assert!(after.lookup("/after").is_ok() && after.lookup("/again").is_ok());
    for n in nodes {
        stop(&net, n).await;
    }
}

#[tokio::test]
async fn a_new_voter_catches_up_through_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let snapshot_every = 5;
    let mut nodes = three_nodes(dir.path(), &net, snapshot_every).await;
    for i in 0..30 {
        write(&nodes[0], mkdir(&format!("/s{i}"))).await.unwrap();
    }
    // Snapshots were taken and the log purged on the leader.
    let m = nodes[0]
        .raft
        .wait(Some(TIMEOUT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= 20),
            "leader purged its log",
        )
        .await
        .unwrap();
    assert!(m.snapshot >= m.purged);

    let n4 = join(
        &net,
        dir.path(),
        &nodes[0],
        MdsId(4),
        &[1, 2, 3, 4].map(MdsId),
        snapshot_every,
    )
    .await;
    nodes.push(n4);
    let all: Vec<&Node> = nodes.iter().collect();
    let state = converge(&nodes[0], &all).await;
    assert!(state.lookup("/s29").is_ok());
    let m4 = nodes[3].raft.metrics().borrow().clone();
    assert!(
        m4.snapshot.is_some_and(|s| s.index >= 20),
        "MDS 4 got a snapshot: {:?}",
        m4.snapshot
    );
    assert_eq!(
        m4.membership_config
            .membership()
            .voter_ids()
            .collect::<Vec<_>>(),
        [1, 2, 3, 4].map(MdsId).to_vec()
    );

    // The snapshot MDS 4 stored is what a restart starts from.
    let n4 = nodes.pop().unwrap();
    let path = stop(&net, n4).await;
    let storage = reopen(&path).await;
    assert!(storage.snapshot_log_id().is_some_and(|l| l.index >= 20));
    let snap = storage.initial_state().unwrap();
    assert!(snap.lookup("/s19").is_ok());
    assert_eq!(snap.inode(ROOT_INODE).unwrap().attrs, cluster_attrs());
    drop(storage);

    // The 4-member group still commits with one member down.
    write(&nodes[0], mkdir("/t")).await.unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&nodes[0], &all).await;
    for n in nodes {
        stop(&net, n).await;
    }
}

#[tokio::test]
async fn a_joiner_without_a_snapshot_stops_instead_of_diverging() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    // The first MDS initializes but does not compact: its initial state is
    // not in any snapshot, and its log starts at entry 0.
    let initial = MdsState::new(cluster_attrs()).unwrap();
    let storage = RaftStorage::create(dir.path().join("mds1.redb"), &initial).unwrap();
    let n1 = start(&net, MdsId(1), storage, DEFAULT_SNAPSHOT_EVERY).await;
    n1.raft
        .initialize(BTreeMap::from([(MdsId(1), node_info(MdsId(1)))]))
        .await
        .unwrap();
    n1.raft
        .wait(Some(TIMEOUT))
        .state(ServerState::Leader, "MDS 1 leads")
        .await
        .unwrap();
    write(&n1, mkdir("/a")).await.unwrap();

    let storage = RaftStorage::create_empty(dir.path().join("mds2.redb")).unwrap();
    let n2 = start(&net, MdsId(2), storage, DEFAULT_SNAPSHOT_EVERY).await;
    n1.raft
        .add_learner(MdsId(2), node_info(MdsId(2)), false)
        .await
        .unwrap();
    let m = n2
        .raft
        .wait(Some(TIMEOUT))
        .metrics(|m| m.running_state.is_err(), "MDS 2 stops")
        .await
        .unwrap();
    let err = m.running_state.unwrap_err().to_string();
    assert!(err.contains("before the cluster state"), "{err}");
    assert_eq!(n2.host.state(), MdsState::default());
    stop(&net, n2).await;
    stop(&net, n1).await;
}

#[tokio::test]
async fn a_single_mds_restarts_with_its_committed_commands() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let n1 = bootstrap(&net, dir.path(), DEFAULT_SNAPSHOT_EVERY).await;
    for i in 0..3 {
        write(&n1, mkdir(&format!("/d{i}"))).await.unwrap();
    }
    let state = n1.host.state();
    let path = stop(&net, n1).await;

    // The snapshot holds the initial state only; the commands are in the
    // log and re-applied when openraft starts (committed is persisted).
    let storage = reopen(&path).await;
    assert!(storage.initial_state().unwrap().lookup("/d0").is_err());
    let n1 = start(&net, MdsId(1), storage, DEFAULT_SNAPSHOT_EVERY).await;
    assert_eq!(n1.host.state(), state);
    n1.raft
        .wait(Some(TIMEOUT))
        .state(ServerState::Leader, "MDS 1 leads again")
        .await
        .unwrap();
    write(&n1, mkdir("/d3")).await.unwrap();
    stop(&net, n1).await;
}

/// `RaftStorage::closed` tells when openraft and its storage tasks have let
/// go of the database after a shutdown: the file opens again at once.
#[tokio::test]
async fn the_storage_tells_when_its_file_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let path = dir.path().join("mds1.redb");
    let storage = RaftStorage::create(&path, &MdsState::new(cluster_attrs()).unwrap()).unwrap();
    let closed = storage.closed();
    let n1 = start(&net, MdsId(1), storage, DEFAULT_SNAPSHOT_EVERY).await;
    n1.raft
        .initialize(BTreeMap::from([(MdsId(1), node_info(MdsId(1)))]))
        .await
        .unwrap();
    n1.raft
        .wait(Some(TIMEOUT))
        .state(ServerState::Leader, "MDS 1 leads")
        .await
        .unwrap();
    write(&n1, mkdir("/d")).await.unwrap();
    assert!(!closed.is_closed(), "open while the node runs");
    stop(&net, n1).await;
    assert!(closed.wait(TIMEOUT).await, "closed after the shutdown");
    let storage = RaftStorage::open(&path).expect("the file is free once closed() says so");
    assert!(!storage.closed().is_closed());
}

#[tokio::test]
async fn a_pre_raft_store_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    let mut expected = MdsState::new(cluster_attrs()).unwrap();
    {
        let mut store = MdsStore::create(&path, &expected).unwrap();
        for cmd in [mkdir("/old"), Command::AllocateCsId] {
            store.append(&cmd).unwrap();
            expected.apply(cmd).unwrap();
        }
    }
    let err = RaftStorage::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().contains("open_legacy_or_raft"), "{err}");
    let err = RaftStorage::create(&path, &MdsState::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);

    let storage = RaftStorage::open_legacy_or_raft(&path).unwrap();
    assert_eq!(storage.initial_state().unwrap(), expected);
    let net = Net::default();
    let n1 = start(&net, MdsId(1), storage, DEFAULT_SNAPSHOT_EVERY).await;
    n1.raft
        .initialize(BTreeMap::from([(MdsId(1), node_info(MdsId(1)))]))
        .await
        .unwrap();
    compact_log_now(&n1.raft, TIMEOUT).await.unwrap();
    write(&n1, mkdir("/old/new")).await.unwrap();
    expected.apply(mkdir("/old/new")).unwrap();
    assert_eq!(n1.host.state(), expected);
    let path = stop(&net, n1).await;

    // Now it is Raft storage: both openers read it as such.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let storage = loop {
        match RaftStorage::open_legacy_or_raft(&path) {
            Ok(s) => break s,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let n1 = start(&net, MdsId(1), storage, DEFAULT_SNAPSHOT_EVERY).await;
    assert_eq!(n1.host.state(), expected);
    stop(&net, n1).await;
}

#[test]
fn create_and_open_refuse_the_wrong_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    let err = RaftStorage::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = RaftStorage::open_legacy_or_raft(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    let storage = RaftStorage::create_empty(&path).unwrap();
    assert!(!storage.has_state());
    assert_eq!(storage.initial_state().unwrap(), MdsState::default());
    drop(storage);
    let err = RaftStorage::create(&path, &MdsState::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let err = RaftStorage::create_empty(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(!RaftStorage::open(&path).unwrap().has_state());

    // An empty redb file holds no MDS.
    let other = dir.path().join("other.redb");
    drop(Database::create(&other).unwrap());
    let err = RaftStorage::open(&other).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // A file that is not a database at all.
    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, b"not a database").unwrap();
    let err = RaftStorage::open(&junk).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("junk.redb"), "{err}");
}

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

fn poke_meta(path: &Path, key: &str, bytes: &[u8]) {
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META).unwrap().insert(key, bytes).unwrap();
    txn.commit().unwrap();
}

#[test]
fn newer_or_garbled_records_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    drop(RaftStorage::create(&path, &MdsState::new(cluster_attrs()).unwrap()).unwrap());
    let snapshot = {
        let db = Database::open(&path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let table = txn.open_table(META).unwrap();
        let value = redb::ReadableTable::get(&table, "snapshot")
            .unwrap()
            .unwrap();
        let bytes = value.value().to_vec();
        bytes
    };
    assert_eq!(snapshot[0], STORE_FORMAT_VERSION);

    let newer = STORE_FORMAT_VERSION + 1;
    // (The committed log id is a record of the log files since layout 12:
    // `log_files`' tests.)
    for key in ["format", "vote", "snapshot_meta"] {
        let mut record = vec![newer];
        record.extend(postcard::to_allocvec(&Option::<u64>::None).unwrap());
        poke_meta(&path, key, &record);
        let err = RaftStorage::open(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{key}: {err}");
        assert!(
            err.message().contains(&format!("format version {newer}")),
            "{key}: {err}"
        );
        assert!(err.message().contains("mds.redb"), "{key}: {err}");
        // Garbage under a current version byte.
        poke_meta(&path, key, &[STORE_FORMAT_VERSION, 0xff, 0xff, 0xff, 0xff]);
        if key != "format" {
            let err = RaftStorage::open(&path).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{key}: {err}");
        }
        // Restore a sane value.
        match key {
            "format" => poke_meta(&path, key, &[LOG_LAYOUT_VERSION]),
            "snapshot_meta" => {
                let meta = postcard::to_allocvec(&openraft::SnapshotMeta::<MdsId, MdsNode> {
                    snapshot_id: "initial".into(),
                    ..Default::default()
                })
                .unwrap();
                poke_meta(&path, key, &[&[STORE_FORMAT_VERSION][..], &meta].concat());
            }
            _ => {
                let db = Database::open(&path).unwrap();
                let txn = db.begin_write().unwrap();
                txn.open_table(META).unwrap().remove(key).unwrap();
                txn.commit().unwrap();
            }
        }
        RaftStorage::open(&path).unwrap();
    }

    // A snapshot of a newer format, an empty one and one of a format that
    // had no Raft snapshots.
    for (bytes, kind) in [
        (vec![newer, 0], ErrorKind::Protocol),
        (vec![], ErrorKind::Corrupt),
        (vec![2, 0], ErrorKind::Corrupt),
        (vec![STORE_FORMAT_VERSION, 0xff, 0xff], ErrorKind::Corrupt),
    ] {
        poke_meta(&path, "snapshot", &bytes);
        let err = RaftStorage::open(&path)
            .unwrap()
            .initial_state()
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{bytes:?}: {err}");
    }
    poke_meta(&path, "snapshot", &snapshot);
    assert_eq!(
        RaftStorage::open(&path).unwrap().initial_state().unwrap(),
        MdsState::new(cluster_attrs()).unwrap()
    );

    // A layout newer than the log files.
    poke_meta(&path, "format", &[LOG_LAYOUT_VERSION + 1]);
    let err = RaftStorage::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(
        err.message()
            .contains(&format!("layout {}", LOG_LAYOUT_VERSION + 1)),
        "{err}"
    );
    poke_meta(&path, "format", &[LOG_LAYOUT_VERSION]);

    // A garbled log entry.
    let log_dir = dir.path().join("mds.redb.log");
    super::log_files::LogFiles::open(Arc::new(crate::chunk::RealDisk), &log_dir)
        .unwrap()
        .append(&[(5, vec![STORE_FORMAT_VERSION, 1, 2])])
        .unwrap();
    let err = RaftStorage::open(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.message().contains("log entry 5"), "{err}");
}

/// `save_committed` returns before its write (openraft applies only after
/// it returns): openraft reads back what it saved at once, the writes never
/// put an older id over a newer one, and the newest one is on disk once
/// the store is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_id_is_read_back_at_once_and_written_behind_never_backwards() {
    use openraft::storage::RaftLogStorage;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    let storage = RaftStorage::create_empty(&path).unwrap();
    let closed = storage.closed();
    let host = TestHost::new(storage.initial_state().unwrap());
    let (mut log, sm) = storage.into_parts(host);
    let id = |index| {
        Some(openraft::LogId::new(
            openraft::CommittedLeaderId::new(2, MdsId(1)),
            index,
        ))
    };
    for index in 1..=200 {
        log.save_committed(id(index)).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), id(index));
    }
    // An older id saved after a newer one (openraft only moves it forward)
    // is not written over the newer.
    log.save_committed(id(100)).await.unwrap();
    drop((log, sm));
    assert!(closed.wait(TIMEOUT).await);
    let storage = RaftStorage::open(&path).unwrap();
    let host = TestHost::new(storage.initial_state().unwrap());
    let (mut log, _sm) = storage.into_parts(host);
    assert_eq!(log.read_committed().await.unwrap(), id(200));
}

/// `state_at` replays a stopped store's log up to a committed index, and
/// refuses one past its log.
#[test]
fn state_at_replays_up_to_an_index_and_refuses_one_past_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    std::fs::write(&path, include_bytes!("../golden/mds_format5.redb")).unwrap();
    let (index, state) = RaftStorage::committed_state(&path).unwrap();
    assert_eq!(RaftStorage::state_at(&path, index).unwrap(), state);
    let err = RaftStorage::state_at(&path, index + 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

#[tokio::test]
async fn a_garbled_snapshot_is_not_installed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = RaftStorage::create_empty(dir.path().join("mds.redb")).unwrap();
    let host = TestHost::new(storage.initial_state().unwrap());
    let (_log, mut sm) = storage.into_parts(host.clone());
    let meta = openraft::SnapshotMeta {
        last_log_id: Some(openraft::LogId::new(
            openraft::CommittedLeaderId::new(1, MdsId(1)),
            9,
        )),
        last_membership: Default::default(),
        snapshot_id: "x".into(),
    };
    let newer = vec![STORE_FORMAT_VERSION + 1, 1, 2, 3];
    let err = openraft::storage::RaftStateMachine::install_snapshot(
        &mut sm,
        &meta,
        Box::new(std::io::Cursor::new(newer)),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("format version"), "{err}");
    let err = openraft::storage::RaftStateMachine::install_snapshot(
        &mut sm,
        &meta,
        Box::new(std::io::Cursor::new(vec![STORE_FORMAT_VERSION, 9, 9])),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot be decoded"), "{err}");
    assert_eq!(host.state(), MdsState::default());
    let (applied, _) = openraft::storage::RaftStateMachine::applied_state(&mut sm)
        .await
        .unwrap();
    assert_eq!(applied, None);
}

#[test]
fn the_raft_config_validates() {
    let c = raft_config("c", DEFAULT_SNAPSHOT_EVERY).unwrap();
    assert_eq!(c.heartbeat_interval, 150);
    assert!(c.election_timeout_min > c.heartbeat_interval * 3);
    assert!(c.election_timeout_max <= 1200);
    assert_eq!(
        c.snapshot_policy,
        openraft::SnapshotPolicy::LogsSinceLast(DEFAULT_SNAPSHOT_EVERY)
    );
    let c = raft_config("c", 0).unwrap();
    assert_eq!(
        c.snapshot_policy,
        openraft::SnapshotPolicy::LogsSinceLast(1)
    );
    assert!(c.max_in_snapshot_log_to_keep <= 1);
}

/// A golden file: the `mds.redb` that the format 5 daemons (pstorage at
/// commit 278f795) wrote for a cluster with two chunk servers, a directory
/// `/d` with `set-attr -R /d replicas=2:1` and a file `/d/f` of 13 bytes
/// (`put`). This build reads it (format 5 snapshot and log entries) and
/// upgrades it to format 6: no client sessions yet, and a tagged command
/// applies.
#[test]
fn a_format_5_golden_database_is_read_and_upgraded() {
    use crate::types::{OpTag, SessionId};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    std::fs::write(&path, include_bytes!("../golden/mds_format5.redb")).unwrap();
    let (index, state) = RaftStorage::committed_state(&path).unwrap();
    assert!(index > 0);
    state.check_invariants().unwrap();
    assert_eq!(state.servers().count(), 2);
    assert!(state.sessions().is_empty());
    let d = state.stat_of(state.lookup("/d").unwrap()).unwrap();
    assert_eq!(d.attrs.replicas, Replicas { norm: 2, min: 1 });
    let f = state.lookup("/d/f").unwrap();
    assert_eq!(state.stat_of(f).unwrap().size, 13);
    let maps = state.file_chunk_maps(f);
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0].replicas.len(), 2);
    let mut state = state;
    let op = OpTag {
        session: SessionId(1),
        seq: 1,
        done_below: 1,
    };
    let tagged = Command::Tagged {
        op,
        now_ms: 1,
        cmd: Box::new(Command::Mkdir {
            perms: Perms::DIR,
            path: "/d/e".into(),
            parents: false,
            now_ms: 1,
        }),
    };
    let first = state.apply(tagged.clone()).unwrap();
    assert_eq!(state.apply(tagged).unwrap(), first);
    assert_eq!(state.sessions().len(), 1);
}

/// A golden file: the `mds.redb` that the format 3 daemons (pstorage at
/// commit d3acdcb) wrote for a cluster with two chunk servers, a directory
/// `/d` with `set-attr -R /d replicas=2:1` and a file `/d/f` of one chunk.
/// This build reads it (format 3 snapshot and log entries, including the
/// old `SetAttr`) and upgrades it to format 4: default locations, unknown
/// hosts, tier 0, failure domain `host`.
#[test]
fn a_format_3_golden_database_is_read_and_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds.redb");
    std::fs::write(&path, include_bytes!("../golden/mds_format3.redb")).unwrap();
    let (index, state) = RaftStorage::committed_state(&path).unwrap();
    assert!(index > 0);
    state.check_invariants().unwrap();
    let servers: Vec<&crate::mds::CsRecord> = state.servers().collect();
    assert_eq!(servers.len(), 2);
    for cs in servers {
        assert!(!cs.addr.is_empty() && !cs.dropped && !cs.releasing);
        assert_eq!(
            (
                cs.location.as_str(),
                cs.host.as_str(),
                cs.tier,
                cs.capacity_bytes
            ),
            (crate::types::DEFAULT_LOCATION, "", 0, 0)
        );
    }
    let d = state.stat_of(state.lookup("/d").unwrap()).unwrap();
    assert_eq!(d.attrs.replicas, Replicas { norm: 2, min: 1 });
    assert_eq!(d.attrs.tier, 0);
    assert_eq!(d.attrs.failure_domain, crate::types::FailureDomain::Host);
    let f = state.lookup("/d/f").unwrap();
    let f_attrs = state.stat_of(f).unwrap();
    assert_eq!((f_attrs.size, f_attrs.attrs.replicas.norm), (13, 2));
    let maps = state.file_chunk_maps(f);
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0].replicas.len(), 2);
    // The upgraded state goes on: a format 4 command applies to it.
    let mut state = state;
    state
        .apply(Command::SetCsPlacement {
            cs: CsId(1),
            update: crate::types::CsPlacementUpdate {
                host: Some("a".into()),
                ..Default::default()
            },
            now_ms: 1,
        })
        .unwrap();
    assert_eq!(state.cs(CsId(1)).unwrap().host, "a");
}
