//! A real pstorage cluster inside the calling process, for the tests of
//! programs that embed pstorage.
//!
//! [`LocalCluster`] starts N metadata servers and M chunk servers on
//! 127.0.0.1 in a temporary directory, with the daemons' own code
//! ([`node::run_mds`], [`node::run_cs`], and [`node::create_cluster_mds`],
//! [`node::join_cluster_mds`], [`node::create_cs`] to make their
//! directories): the real Raft group, the real chunk servers on real files,
//! the real network protocols on loopback TCP. No daemon binary is needed.
//! It hands out connected SDK clients, kills and restarts nodes, and removes
//! everything when it is stopped or dropped.
//!
//! ```no_run
//! # async fn demo() -> pstorage_core::Result<()> {
//! use pstorage_core::types::{LeaseMode, OpenFlags};
//! use pstorage_rpc::local::LocalCluster;
//!
//! // 3 MDSes (a Raft group) and 4 chunk servers; 256 MiB chunks, replicas 3:2.
//! let cluster = LocalCluster::builder().mds(3).cs(4).start().await?;
//! let client = cluster.client()?;
//! let flags = OpenFlags { create: true, ..Default::default() };
//! let file = client.open("/disk.img", LeaseMode::Write, flags).await?;
//! file.write_at(0, b"hello").await?;
//! file.flush().await?;
//! cluster.kill_cs(0).await?; // writes go on with 2 of 3 replicas
//! file.write_at(5, b" world").await?;
//! cluster.restart_cs(0).await?;
//! cluster.wait_healthy(std::time::Duration::from_secs(120)).await?;
//! file.close().await?;
//! cluster.stop().await
//! # }
//! ```
//!
//! # Runtime
//!
//! Every node runs on its own tokio runtime on its own threads, so the
//! nodes neither depend on nor slow down the caller's runtime (a
//! `#[tokio::test]` on the current-thread runtime works). The `async`
//! methods need a tokio runtime (any flavor) to be awaited on; so do the
//! clients [`LocalCluster::client`] returns, whose tasks run on the
//! runtime they are used from.
//!
//! # What a kill models, and what it does not
//!
//! [`LocalCluster::kill_cs`] and [`LocalCluster::kill_mds`] are as close to
//! `kill -9` as one process allows: the node's runtime is dropped, so every
//! task of the node stops at the point where it waits, no shutdown code
//! runs (a chunk server does not flush and marks no clean stop; an MDS
//! does not stop Raft), and its listener and every socket it owns are
//! closed, so its peers see the connections break. Like `kill -9`, and
//! unlike a power cut, what the node wrote to its files stays in the page
//! cache: unsynced writes are not lost. A kill also does not interrupt a
//! disk operation already running on a blocking thread (it completes before
//! the kill returns), so torn writes are not modeled either. Freezes
//! (SIGSTOP), network partitions, message loss or delay, full or failing
//! disks and clock jumps are not modeled: the deterministic simulator
//! (`pstorage-sim`) and the chaos suite (`scripts/chaos.sh`) cover those.
//!
//! All nodes share the process: its environment (`PSTORAGE_*` tuning
//! variables apply to every node, as they would to the daemons), its file
//! descriptor limit, and its fate (a process abort ends the whole cluster).

use parking_lot::{Mutex, MutexGuard};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::conf::{ClusterConf, ClusterKey};
use pstorage_core::traits::MetadataService;
use pstorage_core::types::{
    validate_chunk_size, AttrUpdate, ClusterStatus, CsId, CsStatus, MdsRole, Replicas,
    DEFAULT_CHUNK_SIZE,
};
use pstorage_core::{Error, ErrorKind, Result};
use tokio::sync::{oneshot, watch};

use crate::node;
use crate::{ClientOptions as RpcClientOptions, MdsClient};

/// How long [`LocalClusterBuilder::start`] waits for a healthy cluster by
/// default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a graceful stop of one node may take before it is killed.
const GRACEFUL_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Worker threads of each MDS's runtime (the daemon's runtime has one per
/// core; two keep a 7-node cluster at a few dozen threads). A chunk server
/// runs on `node::runtime`, as the daemon does.
const NODE_WORKER_THREADS: usize = 2;

/// How often the `wait_*` methods ask the MDS group for its status.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Deadline of the status calls of the cluster's own MDS client.
const STATUS_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of a [`LocalCluster`]; [`LocalCluster::builder`] makes one with
/// the product's defaults.
#[derive(Debug, Clone)]
pub struct LocalClusterBuilder {
    name: String,
    mds: usize,
    cs: Option<usize>,
    chunk_size: u64,
    replicas: Replicas,
    password: Option<String>,
    parent_dir: Option<PathBuf>,
    keep_dir: bool,
    start_timeout: Duration,
    data_path: crate::pki::DataPath,
}

impl Default for LocalClusterBuilder {
    fn default() -> Self {
        LocalClusterBuilder {
            name: "local".to_string(),
            mds: 1,
            cs: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            replicas: Replicas::default(),
            password: None,
            parent_dir: None,
            keep_dir: false,
            start_timeout: DEFAULT_START_TIMEOUT,
            data_path: crate::pki::DataPath::Encrypted,
        }
    }
}

impl LocalClusterBuilder {
    /// The cluster's name (default `local`): the directory under
    /// [`LocalCluster::conf_root`] that tools are pointed at (`-c NAME`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Number of metadata servers (default 1; 3 or 5 make a Raft group
    /// that survives the loss of 1 or 2). At least 1.
    pub fn mds(mut self, count: usize) -> Self {
        self.mds = count;
        self
    }

    /// Number of chunk servers (default: `replicas.norm`, 3). At least
    /// `replicas.min`; with fewer than `replicas.norm` the cluster accepts
    /// writes but is never healthy once it holds data.
    pub fn cs(mut self, count: usize) -> Self {
        self.cs = Some(count);
        self
    }

    /// Chunk size of the cluster's root directory, in bytes (default
    /// 256 MiB; a multiple of 4 KiB between 64 KiB and 1 GiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Replication of the root directory, inherited by everything created
    /// in it: `norm` copies of every chunk, writes accepted while `min`
    /// remain (default 3:2).
    pub fn replicas(mut self, norm: u8, min: u8) -> Self {
        self.replicas = Replicas { norm, min };
        self
    }

    /// Derives the cluster key from this password, as `make-mds -I -p`
    /// does, so that tools can `auth-node` with it. Without it the key is
    /// random (and stored in the configuration directory, where every
    /// tool given [`LocalCluster::conf_root`] finds it).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    /// Creates the cluster's temporary directory in `dir` rather than in
    /// the system's temporary directory.
    pub fn parent_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.parent_dir = Some(dir.into());
        self
    }

    /// Keeps the cluster's directory (data, configuration) when it stops,
    /// e.g. to look at it after a failed test. Default: removed.
    pub fn keep_dir(mut self, keep: bool) -> Self {
        self.keep_dir = keep;
        self
    }

    /// How the data channel travels (default encrypted; `make-mds -I
    /// --data-encryption off` is [`crate::pki::DataPath::Clear`]).
    pub fn data_path(mut self, data_path: crate::pki::DataPath) -> Self {
        self.data_path = data_path;
        self
    }

    /// How long [`LocalClusterBuilder::start`] waits for the cluster to be
    /// healthy (default [`DEFAULT_START_TIMEOUT`]).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Checks the options; `InvalidArgument` naming the option and the fix.
    fn validate(&self) -> Result<usize> {
        pstorage_core::conf::validate_cluster_name(&self.name)?;
        if self.mds == 0 {
            return Err(Error::invalid(
                "a local cluster needs at least 1 MDS (got .mds(0)); use 1, or 3 or 5 for a Raft group",
            ));
        }
        let replicas = self.replicas.validate()?;
        validate_chunk_size(self.chunk_size)?;
        let cs = self.cs.unwrap_or(replicas.norm as usize);
        if cs < replicas.min as usize {
            return Err(Error::invalid(format!(
                "{cs} chunk servers cannot hold replicas.min={} copies of a chunk: use .cs({}) or \
                 more, or lower .replicas({}, {})",
                replicas.min, replicas.min, replicas.norm, replicas.min
            )));
        }
        Ok(cs)
    }

    /// Creates the cluster and starts every node; returns once it is
    /// healthy (every MDS a voting member of the group, every chunk server
    /// active). Errors: `InvalidArgument` for bad options; the error of a
    /// node that failed to start; `TimedOut` naming what was not ready
    /// after the start timeout. Whatever was started is stopped and
    /// removed on error.
    pub async fn start(self) -> Result<LocalCluster> {
        let cs_count = self.validate()?;
        let parent = self.parent_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)?;
        let temp = tempfile::Builder::new()
            .prefix("pstorage-local-")
            .tempdir_in(&parent)
            .map_err(|e| {
                Error::from(e).context(format!("cannot create a directory in {}", parent.display()))
            })?;
        let (dir, temp) = if self.keep_dir {
            (temp.keep(), None)
        } else {
            (temp.path().to_path_buf(), Some(temp))
        };
        let conf_root = dir.join("conf");
        let conf = ClusterConf::new(&conf_root, &self.name)?;
        let key = match &self.password {
            Some(password) => crate::auth::derive_key(&self.name, password),
            None => ClusterKey(rand::random()),
        };
        let first = free_loopback_addr()?;
        let mds_dir = dir.join("mds0");
        node::create_cluster_mds_with(
            &conf,
            &mds_dir,
            &first,
            &key,
            self.chunk_size,
            self.data_path,
        )?;
        let admin = admin_client(&conf)?;
        let cluster = LocalCluster {
            conf_root,
            conf,
            dir,
            temp,
            admin: Mutex::new(admin),
            nodes: Mutex::new(Nodes::default()),
        };
        cluster.lock().mds.push(Slot::new(mds_dir, Some(first)));
        cluster.start_node(Kind::Mds, 0)?;
        cluster
            .wait_for(self.start_timeout, |status, nodes| {
                mds_missing(status, nodes)
            })
            .await?;
        for _ in 1..self.mds {
            cluster.add_mds_within(self.start_timeout).await?;
        }
        for _ in 0..cs_count {
            cluster.add_cs().await?;
        }
        if self.replicas != Replicas::default() {
            let update = AttrUpdate {
                replicas: Some(self.replicas),
                ..AttrUpdate::default()
            };
            cluster.admin().set_attr("/", update, false, None).await?;
        }
        cluster.wait_healthy(self.start_timeout).await?;
        Ok(cluster)
    }
}

/// Which kind of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mds,
    Cs,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Mds => "MDS",
            Kind::Cs => "chunk server",
        }
    }
}

/// How a node is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Its shutdown future resolves: it closes its port and connections,
    /// flushes (CS) or stops Raft (MDS).
    Graceful,
    /// Its runtime is dropped wherever it is.
    Kill,
}

/// A node running on its own thread and runtime.
struct RunningNode {
    stop: watch::Sender<Option<Stop>>,
    /// Resolves (or fails) once the node's runtime is gone.
    ended: oneshot::Receiver<()>,
    thread: JoinHandle<Result<()>>,
}

impl RunningNode {
    fn spawn(kind: Kind, index: usize, dir: PathBuf) -> Result<RunningNode> {
        let name = match kind {
            Kind::Mds => format!("ps-mds{index}"),
            Kind::Cs => format!("ps-cs{index}"),
        };
        let (stop, stop_rx) = watch::channel(None);
        let (ended_tx, ended) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let result = run_node(kind, &name, &dir, stop_rx);
                let _ = ended_tx.send(());
                result
            })
            .map_err(|e| {
                Error::internal(format!(
                    "cannot start a thread for {} {index}: {e}",
                    kind.label()
                ))
                .caused_by(e)
            })?;
        Ok(RunningNode {
            stop,
            ended,
            thread,
        })
    }

    /// Stops the node (`Graceful` turns into `Kill` after
    /// [`GRACEFUL_STOP_TIMEOUT`]) and waits until nothing of it remains.
    /// Returns how its run ended (a kill is `Ok`).
    async fn stop(mut self, how: Stop) -> Result<()> {
        let _ = self.stop.send(Some(how));
        if tokio::time::timeout(GRACEFUL_STOP_TIMEOUT, &mut self.ended)
            .await
            .is_err()
        {
            tracing::warn!(
                "a local cluster node did not stop within {GRACEFUL_STOP_TIMEOUT:?}; killing it"
            );
            let _ = self.stop.send(Some(Stop::Kill));
            let _ = (&mut self.ended).await;
        }
        // The thread has dropped its runtime and is returning.
        join_node(self.thread)
    }

    /// The same from synchronous code (`Drop`): asks, waits by polling.
    fn stop_blocking(self, how: Stop) -> Result<()> {
        let _ = self.stop.send(Some(how));
        let deadline = std::time::Instant::now() + GRACEFUL_STOP_TIMEOUT;
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.stop.send(Some(Stop::Kill));
        join_node(self.thread)
    }
}

fn join_node(thread: JoinHandle<Result<()>>) -> Result<()> {
    thread
        .join()
        .unwrap_or_else(|_| Err(Error::internal("a local cluster node's thread panicked")))
}

/// The body of a node's thread: runs the daemon's main loop on a runtime
/// of its own until asked to stop, then drops the runtime, which ends every
/// task the node started (a kill ends them where they are).
fn run_node(kind: Kind, name: &str, dir: &Path, stop: watch::Receiver<Option<Stop>>) -> Result<()> {
    // A chunk server runs on the daemon's runtime (`node::runtime`).
    let runtime = match kind {
        Kind::Cs => node::runtime(node::CS_DEFAULT_THREADS, name)?,
        Kind::Mds => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(NODE_WORKER_THREADS)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|e| {
                Error::internal(format!("cannot build the runtime of {name}: {e}")).caused_by(e)
            })?,
    };
    let result = runtime.block_on(async {
        let mut graceful = stop.clone();
        let shutdown = async move {
            // A closed channel (the handle is gone) also means stop.
            let _ = graceful.wait_for(|s| s.is_some()).await;
        };
        let mut kill = stop;
        let killed = async move {
            let _ = kill.wait_for(|s| *s == Some(Stop::Kill)).await;
        };
        let run = async {
            match kind {
                Kind::Mds => node::run_mds(dir, shutdown).await,
                Kind::Cs => node::run_cs(dir, shutdown).await,
            }
        };
        tokio::select! {
            biased;
            _ = killed => Ok(()),
            r = run => r,
        }
    });
    drop(runtime);
    result
}

/// One node of the cluster: its directory, and its thread while it runs.
struct Slot {
    dir: PathBuf,
    /// An MDS's address (fixed: it is in `bs.list` and the Raft membership).
    addr: Option<String>,
    /// A chunk server's id.
    cs_id: Option<CsId>,
    running: Option<RunningNode>,
}

impl Slot {
    fn new(dir: PathBuf, addr: Option<String>) -> Slot {
        Slot {
            dir,
            addr,
            cs_id: None,
            running: None,
        }
    }
}

#[derive(Default)]
struct Nodes {
    mds: Vec<Slot>,
    cs: Vec<Slot>,
}

impl Nodes {
    fn slots(&mut self, kind: Kind) -> &mut Vec<Slot> {
        match kind {
            Kind::Mds => &mut self.mds,
            Kind::Cs => &mut self.cs,
        }
    }

    /// The first node that was started and has ended on its own (its
    /// run returned an error, or stopped), with how it ended.
    fn take_ended(&mut self) -> Option<(Kind, usize, Result<()>)> {
        for kind in [Kind::Mds, Kind::Cs] {
            for (i, slot) in self.slots(kind).iter_mut().enumerate() {
                if slot
                    .running
                    .as_ref()
                    .is_some_and(|r| r.thread.is_finished())
                {
                    let node = slot.running.take().expect("checked above");
                    return Some((kind, i, join_node(node.thread)));
                }
            }
        }
        None
    }
}

/// A cluster of real MDSes and chunk servers running in this process (see
/// the [module documentation](self)).
///
/// Nodes are numbered from 0 in the order they were added (MDS 0 formed
/// the group). Every method takes `&self`, so the cluster can be shared
/// (`Arc`) between a test's tasks. Dropping it stops every node (gracefully,
/// then by force after 30 s, blocking the dropping thread meanwhile) and
/// removes its directory unless [`LocalClusterBuilder::keep_dir`] was set;
/// [`LocalCluster::stop`] does the same without blocking.
pub struct LocalCluster {
    dir: PathBuf,
    /// Removes `dir` when dropped; `None` when it is kept.
    temp: Option<tempfile::TempDir>,
    conf_root: PathBuf,
    conf: ClusterConf,
    /// The cluster's own MDS client (status, attributes); replaced when an
    /// MDS is added, so that it knows every address of `bs.list` (a client
    /// learns later members from the group only every 10 s).
    admin: Mutex<MdsClient>,
    nodes: Mutex<Nodes>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("name", &self.conf.name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// Options with the product's defaults: 1 MDS, 3 chunk servers,
    /// 256 MiB chunks, replicas 3:2, a random key, a temporary directory.
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder::default()
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.conf.name
    }

    /// The configuration root to give tools (`pstorage --conf-dir ROOT -c
    /// NAME`, `PSTORAGE_CONF_DIR`, the C and Python SDKs' `conf_dir`).
    pub fn conf_root(&self) -> &Path {
        &self.conf_root
    }

    /// The cluster's configuration (`<conf_root>/<name>`: `bs.list`,
    /// `auth.key`).
    pub fn conf(&self) -> &ClusterConf {
        &self.conf
    }

    /// The cluster's `bs.list` (one MDS address per line).
    pub fn bs_list(&self) -> PathBuf {
        self.conf.bs_list_path()
    }

    /// The directory holding everything (configuration, `mdsN/`, `csN/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An SDK client of the cluster with the default options. Its tasks run
    /// on the tokio runtime it is used from.
    pub fn client(&self) -> Result<Client> {
        self.client_with(ClientOptions::default())
    }

    /// An SDK client of the cluster.
    pub fn client_with(&self, options: ClientOptions) -> Result<Client> {
        node::connect_client(&self.conf, options)
    }

    /// Number of MDSes ever added (running or not).
    pub fn mds_count(&self) -> usize {
        self.lock().mds.len()
    }

    /// Number of chunk servers ever added (running or not).
    pub fn cs_count(&self) -> usize {
        self.lock().cs.len()
    }

    /// The address MDS `i` listens on.
    pub fn mds_addr(&self, i: usize) -> Result<String> {
        let mut nodes = self.lock();
        let slot = slot(&mut nodes, Kind::Mds, i)?;
        Ok(slot.addr.clone().expect("every MDS has an address"))
    }

    /// The directory of MDS `i`.
    pub fn mds_dir(&self, i: usize) -> Result<PathBuf> {
        Ok(slot(&mut self.lock(), Kind::Mds, i)?.dir.clone())
    }

    /// The directory of chunk server `i`.
    pub fn cs_dir(&self, i: usize) -> Result<PathBuf> {
        Ok(slot(&mut self.lock(), Kind::Cs, i)?.dir.clone())
    }

    /// The cluster id of chunk server `i` (as `stat` and chunk maps show it).
    pub fn cs_id(&self, i: usize) -> Result<CsId> {
        Ok(slot(&mut self.lock(), Kind::Cs, i)?
            .cs_id
            .expect("every chunk server has an id"))
    }

    /// Whether MDS `i` runs (started and neither killed, stopped nor ended).
    pub fn mds_running(&self, i: usize) -> bool {
        self.is_running(Kind::Mds, i)
    }

    /// Whether chunk server `i` runs.
    pub fn cs_running(&self, i: usize) -> bool {
        self.is_running(Kind::Cs, i)
    }

    /// The cluster status, as `pstorage stat` shows it.
    pub async fn status(&self) -> Result<ClusterStatus> {
        self.admin().cluster_status().await
    }

    /// The index of the MDS that leads the group now.
    pub async fn leader_mds(&self) -> Result<usize> {
        let status = self.status().await?;
        let leader = status
            .mds
            .iter()
            .find(|m| m.role == MdsRole::Leader)
            .ok_or_else(|| Error::unavailable("the MDS group has no leader right now; retry"))?;
        self.lock()
            .mds
            .iter()
            .position(|s| s.addr.as_deref() == Some(leader.addr.as_str()))
            .ok_or_else(|| {
                Error::internal(format!(
                    "the leader {} is not an MDS of this local cluster",
                    leader.addr
                ))
            })
    }

    /// Kills chunk server `i` (see the module documentation for what a
    /// kill models). `InvalidArgument` if it does not run.
    pub async fn kill_cs(&self, i: usize) -> Result<()> {
        self.stop_node(Kind::Cs, i, Stop::Kill).await
    }

    /// Stops chunk server `i` cleanly (closes its port, flushes every
    /// replica). `InvalidArgument` if it does not run.
    pub async fn stop_cs(&self, i: usize) -> Result<()> {
        self.stop_node(Kind::Cs, i, Stop::Graceful).await
    }

    /// Starts chunk server `i` again on its directory (stopping it cleanly
    /// first if it runs). Returns once it runs; it serves once it has
    /// registered with the MDS ([`LocalCluster::wait_healthy`] waits for it).
    pub async fn restart_cs(&self, i: usize) -> Result<()> {
        self.restart(Kind::Cs, i).await
    }

    /// Kills MDS `i` (see the module documentation). `InvalidArgument` if
    /// it does not run.
    pub async fn kill_mds(&self, i: usize) -> Result<()> {
        self.stop_node(Kind::Mds, i, Stop::Kill).await
    }

    /// Stops MDS `i` cleanly. `InvalidArgument` if it does not run.
    pub async fn stop_mds(&self, i: usize) -> Result<()> {
        self.stop_node(Kind::Mds, i, Stop::Graceful).await
    }

    /// Starts MDS `i` again on its directory and address (stopping it
    /// cleanly first if it runs). Returns once it runs.
    pub async fn restart_mds(&self, i: usize) -> Result<()> {
        self.restart(Kind::Mds, i).await
    }

    /// Adds a chunk server (`make-cs`, then starts it); returns its index.
    /// It serves once it has registered ([`LocalCluster::wait_healthy`]).
    pub async fn add_cs(&self) -> Result<usize> {
        let i = self.cs_count();
        let dir = self.dir.join(format!("cs{i}"));
        let id = node::create_cs(
            &self.conf,
            &self.conf_root,
            &dir,
            "127.0.0.1:0",
            Default::default(),
            &Default::default(),
        )
        .await?;
        {
            let mut nodes = self.lock();
            let mut slot = Slot::new(dir, None);
            slot.cs_id = Some(id);
            nodes.cs.push(slot);
        }
        self.start_node(Kind::Cs, i)?;
        Ok(i)
    }

    /// Adds an MDS to the group (`make-mds` without `-I`, then starts it);
    /// returns its index once it is a voting member. Needs a leader.
    pub async fn add_mds(&self) -> Result<usize> {
        self.add_mds_within(DEFAULT_START_TIMEOUT).await
    }

    async fn add_mds_within(&self, timeout: Duration) -> Result<usize> {
        let i = self.mds_count();
        let dir = self.dir.join(format!("mds{i}"));
        let addr = free_loopback_addr()?;
        node::join_cluster_mds(&self.conf, &dir, &addr).await?;
        self.lock().mds.push(Slot::new(dir, Some(addr)));
        *self.admin.lock() = admin_client(&self.conf)?;
        self.start_node(Kind::Mds, i)?;
        self.wait_for(timeout, mds_missing).await?;
        Ok(i)
    }

    /// Waits until the cluster is healthy: an MDS leads the group, every
    /// running MDS is a voting member that hears from it, every running
    /// chunk server is active, and no chunk is below `replicas.norm` or
    /// being copied. Nodes that were killed or stopped are not waited for
    /// (but their chunks must have their copies elsewhere). Returns the
    /// status that was healthy. Errors: the error of a node that ended on
    /// its own; `TimedOut` naming what is still missing.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<ClusterStatus> {
        self.wait_for(timeout, |status, nodes| {
            let mut missing = mds_missing(status, nodes);
            missing.extend(cs_missing(status, nodes));
            let c = &status.chunk_counts;
            let below_norm = c.degraded + c.urgent + c.blocked;
            if below_norm > 0 {
                missing.push(format!("{below_norm} chunks below replicas.norm"));
            }
            if c.replicating > 0 {
                missing.push(format!("{} chunks being copied", c.replicating));
            }
            missing
        })
        .await
    }

    /// Stops every node cleanly (chunk servers first, then the MDSes; any
    /// node that takes longer than 30 s is killed) and removes the
    /// directory unless it is kept. Returns the first error a node ended
    /// with.
    pub async fn stop(self) -> Result<()> {
        let mut first_error = Ok(());
        for kind in [Kind::Cs, Kind::Mds] {
            let running: Vec<RunningNode> = self
                .lock()
                .slots(kind)
                .iter_mut()
                .filter_map(|s| s.running.take())
                .collect();
            let results =
                futures::future::join_all(running.into_iter().map(|n| n.stop(Stop::Graceful)))
                    .await;
            for r in results {
                if first_error.is_ok() {
                    first_error = r;
                }
            }
        }
        drop(self);
        first_error
    }

    fn admin(&self) -> MdsClient {
        self.admin.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Nodes> {
        // Slots are only pushed or have `running` swapped: never half-updated.
        self.nodes.lock()
    }

    fn is_running(&self, kind: Kind, i: usize) -> bool {
        self.lock()
            .slots(kind)
            .get(i)
            .and_then(|s| s.running.as_ref())
            .is_some_and(|r| !r.thread.is_finished())
    }

    fn start_node(&self, kind: Kind, i: usize) -> Result<()> {
        let mut nodes = self.lock();
        let slot = slot(&mut nodes, kind, i)?;
        if let Some(running) = &slot.running {
            if !running.thread.is_finished() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{} {i} is running already", kind.label()),
                ));
            }
            // Ended on its own: reap it before starting again.
            let _ = join_node(slot.running.take().expect("checked above").thread);
        }
        slot.running = Some(RunningNode::spawn(kind, i, slot.dir.clone())?);
        Ok(())
    }

    async fn stop_node(&self, kind: Kind, i: usize, how: Stop) -> Result<()> {
        let running = {
            let mut nodes = self.lock();
            slot(&mut nodes, kind, i)?.running.take()
        };
        match running {
            Some(node) => node
                .stop(how)
                .await
                .map_err(|e| e.context(format!("{} {i} had ended with an error", kind.label()))),
            None => Err(Error::invalid(format!(
                "{} {i} is not running; start it with restart_{}({i})",
                kind.label(),
                match kind {
                    Kind::Mds => "mds",
                    Kind::Cs => "cs",
                }
            ))),
        }
    }

    async fn restart(&self, kind: Kind, i: usize) -> Result<()> {
        let running = {
            let mut nodes = self.lock();
            slot(&mut nodes, kind, i)?.running.take()
        };
        if let Some(node) = running {
            // How it ended does not matter: it starts again.
            let _ = node.stop(Stop::Graceful).await;
        }
        self.start_node(kind, i)
    }

    /// Polls the status until `missing` finds nothing missing, at most
    /// `timeout`; fails at once if a node ended on its own.
    async fn wait_for<F>(&self, timeout: Duration, missing: F) -> Result<ClusterStatus>
    where
        F: Fn(&ClusterStatus, &Nodes) -> Vec<String>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((kind, i, ended)) = self.lock().take_ended() {
                let why = match ended {
                    Ok(()) => Error::unavailable("it stopped"),
                    Err(e) => e,
                };
                return Err(why.context(format!(
                    "{} {i} of the local cluster in {} ended",
                    kind.label(),
                    self.dir.display()
                )));
            }
            let (status, not_ready) = match self.status().await {
                Ok(status) => {
                    let not_ready = missing(&status, &self.lock());
                    (Some(status), not_ready)
                }
                Err(e) => (None, vec![format!("no MDS answered ({e})")]),
            };
            if let (Some(status), true) = (status, not_ready.is_empty()) {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "the local cluster in {} was not healthy after {timeout:?}: {}",
                        self.dir.display(),
                        not_ready.join("; ")
                    ),
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for kind in [Kind::Cs, Kind::Mds] {
            let running: Vec<RunningNode> = self
                .lock()
                .slots(kind)
                .iter_mut()
                .filter_map(|s| s.running.take())
                .collect();
            // Ask them all at once, then wait for each.
            for node in &running {
                let _ = node.stop.send(Some(Stop::Graceful));
            }
            for node in running {
                if let Err(e) = node.stop_blocking(Stop::Graceful) {
                    tracing::warn!("stopping a local cluster node: {e}");
                }
            }
        }
        if let Some(temp) = self.temp.take() {
            if let Err(e) = temp.close() {
                tracing::warn!(
                    "removing the local cluster's directory {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}

fn slot(nodes: &mut Nodes, kind: Kind, i: usize) -> Result<&mut Slot> {
    let slots = nodes.slots(kind);
    let count = slots.len();
    slots.get_mut(i).ok_or_else(|| {
        Error::invalid(format!(
            "there is no {} {i}: the local cluster has {count} (numbered from 0)",
            kind.label()
        ))
    })
}

/// What keeps the running MDSes from being a healthy group: a leader, and
/// every running MDS a voter that the leader hears from.
fn mds_missing(status: &ClusterStatus, nodes: &Nodes) -> Vec<String> {
    let mut missing = Vec::new();
    if !status.mds.iter().any(|m| m.role == MdsRole::Leader) {
        missing.push("the MDS group has no leader".to_string());
    }
    for (i, slot) in nodes.mds.iter().enumerate() {
        if slot.running.is_none() {
            continue;
        }
        let addr = slot.addr.as_deref().unwrap_or_default();
        match status.mds.iter().find(|m| m.addr == addr) {
            Some(m) if m.role.is_in_quorum() => {}
            Some(m) => missing.push(format!("MDS {i} ({addr}) is {}", m.role)),
            None => missing.push(format!("MDS {i} ({addr}) is not a member yet")),
        }
    }
    missing
}

/// Running chunk servers that the MDS does not see active.
fn cs_missing(status: &ClusterStatus, nodes: &Nodes) -> Vec<String> {
    let mut missing = Vec::new();
    for (i, slot) in nodes.cs.iter().enumerate() {
        if slot.running.is_none() {
            continue;
        }
        let id = slot.cs_id.expect("every chunk server has an id");
        match status.cs.iter().find(|c| c.id == id) {
            Some(c) if c.status == CsStatus::Active => {}
            Some(c) => missing.push(format!("chunk server {i} (CS {id}) is {}", c.status)),
            None => missing.push(format!("chunk server {i} (CS {id}) has not registered")),
        }
    }
    missing
}

/// The cluster's own MDS client, for every MDS of `bs.list`.
fn admin_client(conf: &ClusterConf) -> Result<MdsClient> {
    node::connect_mds(
        conf,
        RpcClientOptions {
            connect_timeout: STATUS_CALL_TIMEOUT,
            call_timeout: Some(STATUS_CALL_TIMEOUT),
        },
    )
}

/// `127.0.0.1:PORT` with a port that was free a moment ago (an MDS needs a
/// fixed address: it is in `bs.list` and the group's membership).
fn free_loopback_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::from(e).context("cannot find a free port on 127.0.0.1"))?;
    Ok(listener.local_addr()?.to_string())
}
