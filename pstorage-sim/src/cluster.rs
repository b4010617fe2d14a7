//! The simulated cluster: MDSes (the real `MdsService` on a real openraft
//! node with redb storage in memory), chunk servers (the real
//! `ChunkServer` and `CsSession` on a `MemChunkStore` that loses unflushed
//! writes at a crash), started, crashed and restarted on the simulated
//! network.

use pstorage_core::types::ChunkId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pstorage_core::chunk::session::{bad_replica_queue, CsSession, SessionOptions};
use pstorage_core::chunk::{
    BlockFate, ChunkServer, ChunkStore, CrashDisk, FileChunkStore, MemChunkStore, StoreOptions,
    MIN_JOURNAL_SIZE,
};
use pstorage_core::mds::raft::{raft_config, MdsNode, MdsRaft, RaftDisk, RaftStorage};
use pstorage_core::mds::{MdsConfig, MdsService, MdsState};
use pstorage_core::membership::{DirectoryOptions, MemberDirectory};
use pstorage_core::traits::{Clock, CsRegistry};
use pstorage_core::types::{CsId, FileAttrs, MdsId, Replicas};
use pstorage_core::{Error, Result};
use rand::Rng;
use tokio::time::Instant;

use crate::net::{NodeId, Services, SimNet};
use crate::rpc::{MdsEndpoint, SimConnector, SimMdsClient, SimRaftNetwork, CONTROL_CALL_TIMEOUT};
use crate::{SimConfig, SimRng};

/// The wall clock of one node: simulated time from a fixed epoch, plus the
/// node's own offset (clock jumps).
pub struct SimClock {
    start: Instant,
    offset_ms: AtomicI64,
}

/// 2026-01-01, the simulated epoch.
const EPOCH_MS: u64 = 1_767_225_600_000;

impl SimClock {
    pub fn new(start: Instant) -> Arc<SimClock> {
        Arc::new(SimClock {
            start,
            offset_ms: AtomicI64::new(0),
        })
    }

    /// Moves this clock by `ms` (forward or back).
    pub fn jump(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let now = EPOCH_MS + self.start.elapsed().as_millis() as u64;
        now.saturating_add_signed(self.offset_ms.load(Ordering::SeqCst))
    }

    fn monotonic_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

struct MdsSlot {
    disk: RaftDisk,
    clock: Arc<SimClock>,
    running: Option<(Arc<MdsService>, MdsRaft)>,
}

/// A chunk server's store in a run.
#[derive(Clone)]
pub enum CsStore {
    /// In memory, with its own model of a power loss (blocks kept, lost,
    /// or torn as CRC without data).
    Mem(Arc<MemChunkStore>),
    /// The real file store (write journal, chunk files, dirty log) on a
    /// disk in memory that loses, keeps or tears at 512-byte sectors what
    /// was not synced at a power loss (`--file-store`). Its journal is
    /// trimmed by writers that find it full, by [`CsStore::checkpoint`]
    /// and at restarts: no thread of its own, so runs stay deterministic.
    File {
        disk: CrashDisk,
        store: Arc<FileChunkStore>,
    },
}

/// What a crash did to a store, for the trace.
pub struct StoreCrash(pub String);

const CS_DIR: &str = "/cs";

impl CsStore {
    fn new(file: bool) -> CsStore {
        if !file {
            return CsStore::Mem(Arc::new(MemChunkStore::new()));
        }
        let disk = CrashDisk::new();
        let store = open_file_store(&disk);
        CsStore::File { disk, store }
    }

    /// The store, for the chunk server and the checks.
    pub fn store(&self) -> Arc<dyn ChunkStore> {
        match self {
            CsStore::Mem(store) => store.clone(),
            CsStore::File { store, .. } => store.clone(),
        }
    }

    /// The process died (and, with `power_loss`, the machine's power):
    /// what was not synced is kept, lost or torn as `rng` decides.
    /// `damaged_elsewhere`: blocks damaged on another server, never torn
    /// here (lost instead).
    fn crash(
        &mut self,
        power_loss: bool,
        rng: &SimRng,
        damaged_elsewhere: &BTreeSet<(ChunkId, u64)>,
    ) -> StoreCrash {
        match self {
            CsStore::Mem(store) => {
                let report = store.crash(&mut |chunk, block| {
                    if !power_loss {
                        return BlockFate::Kept;
                    }
                    let roll = rng.lock().gen_range(0..100);
                    match roll {
                        0..=49 => BlockFate::Kept,
                        50..=84 => BlockFate::Lost,
                        _ if damaged_elsewhere.contains(&(chunk, block)) => BlockFate::Lost,
                        _ => BlockFate::Torn,
                    }
                });
                StoreCrash(format!(
                    "unflushed blocks: {} kept, {} lost, {} torn",
                    report.kept, report.lost, report.torn
                ))
            }
            CsStore::File { disk, store } => {
                // The old store must be gone before the disk's power is cut
                // (its files die with it).
                *store = open_file_store(&CrashDisk::new());
                let what = if power_loss {
                    let loss = disk.power_loss(&mut *rng.lock());
                    format!(
                        "unsynced pages: {} kept, {} lost, {} torn; namespace changes: {} kept, \
                         {} lost",
                        loss.kept, loss.lost, loss.torn, loss.changes_kept, loss.changes_lost
                    )
                } else {
                    disk.kill();
                    "the page cache keeps every write".to_string()
                };
                *store = open_file_store(disk);
                StoreCrash(what)
            }
        }
    }

    /// Makes the disk full (`full`) or gives it room again.
    pub fn set_full(&self, full: bool) {
        match self {
            CsStore::Mem(store) => {
                let used = if full {
                    store
                        .space()
                        .map(|s| s.total_bytes - s.free_bytes)
                        .unwrap_or(0)
                } else {
                    1 << 40
                };
                store.set_capacity(used);
            }
            CsStore::File { disk, .. } => disk.set_space_left(full.then_some(0)),
        }
    }

    /// Flips a bit of byte `offset` of the stored data of `chunk` (on the
    /// medium, under the store).
    pub fn corrupt(&self, chunk: u64, offset: u64) -> pstorage_core::Result<()> {
        match self {
            CsStore::Mem(store) => store.corrupt(ChunkId(chunk), offset),
            CsStore::File { disk, store } => {
                let size = store.chunk_size(ChunkId(chunk))?;
                disk.flip(
                    &store.chunk_path(ChunkId(chunk)),
                    FileChunkStore::data_file_offset(size, offset),
                )
                .map_err(|e| pstorage_core::Error::not_found(format!("chunk {chunk:#x}: {e}")))
            }
        }
    }

    /// Applies and trims the file store's journal (what its thread does
    /// in a chunk server).
    pub fn checkpoint(&self) {
        if let CsStore::File { store, .. } = self {
            if let Err(e) = store.checkpoint() {
                tracing::warn!("trimming the journal failed: {e}");
            }
        }
    }
}

fn file_store_options() -> StoreOptions {
    StoreOptions {
        journal_size: MIN_JOURNAL_SIZE,
        background_trims: false,
        ..StoreOptions::default()
    }
}

fn open_file_store(disk: &CrashDisk) -> Arc<FileChunkStore> {
    let opened = FileChunkStore::open_on(
        Arc::new(disk.clone()),
        std::path::Path::new(CS_DIR),
        &file_store_options(),
    );
    Arc::new(opened.unwrap_or_else(|e| panic!("the chunk store does not open after a crash: {e}")))
}

struct CsSlot {
    store: CsStore,
    clock: Arc<SimClock>,
    running: Option<Arc<ChunkServer>>,
}

/// The nodes of one run.
pub struct Cluster {
    pub net: Arc<SimNet>,
    rng: SimRng,
    config: SimConfig,
    start: Instant,
    mds: BTreeMap<u64, MdsSlot>,
    cs: BTreeMap<CsId, CsSlot>,
}

impl Cluster {
    /// Creates the MDS group (started, leader elected) and registers the
    /// chunk servers' ids (not started yet).
    pub async fn new(net: Arc<SimNet>, rng: SimRng, config: SimConfig) -> Result<Cluster> {
        let start = Instant::now();
        let root = FileAttrs {
            replicas: Replicas {
                norm: config.replicas_norm,
                min: config.replicas_min,
            },
            chunk_size: config.chunk_size,
            ..Default::default()
        };
        let initial = MdsState::new(root)?;
        let mut cluster = Cluster {
            net,
            rng,
            config: config.clone(),
            start,
            mds: BTreeMap::new(),
            cs: BTreeMap::new(),
        };
        for id in 1..=config.mds as u64 {
            // Every member starts from the same initial snapshot; MDS 1
            // forms the group below.
            let storage = RaftStorage::create_in_memory(&format!("mds{id}.redb"), Some(&initial))?;
            cluster.mds.insert(
                id,
                MdsSlot {
                    disk: storage.disk(),
                    clock: SimClock::new(start),
                    running: None,
                },
            );
        }
        for id in 1..=config.mds as u64 {
            cluster.start_mds(id).await?;
        }
        let members: BTreeMap<MdsId, MdsNode> = (1..=config.mds as u64)
            .map(|id| {
                (
                    MdsId(id),
                    MdsNode {
                        addr: NodeId::Mds(id).addr(),
                    },
                )
            })
            .collect();
        let first = cluster.mds[&1]
            .running
            .as_ref()
            .expect("just started")
            .1
            .clone();
        first
            .initialize(members)
            .await
            .map_err(|e| Error::internal(format!("forming the simulated MDS group: {e}")))?;
        // As the daemon does after forming a group: a joining MDS must
        // start from a snapshot (the root exists only in snapshots).
        pstorage_core::mds::raft::compact_log_now(&first, Duration::from_secs(30)).await?;
        // make-cs: ids through the group.
        let admin = cluster.mds_client(NodeId::Client(0));
        for _ in 0..config.cs {
            let id = loop {
                match admin.allocate_cs_id().await {
                    Ok(id) => break id,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            cluster.cs.insert(
                id,
                CsSlot {
                    store: CsStore::new(config.file_store),
                    clock: SimClock::new(start),
                    running: None,
                },
            );
        }
        Ok(cluster)
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The run's random generator.
    pub fn rng(&self) -> &SimRng {
        &self.rng
    }

    /// Creates and starts a new MDS `id` (allocated through the group)
    /// with empty storage: it catches up from the group once added.
    pub async fn add_mds(&mut self, id: u64) -> Result<()> {
        let storage = RaftStorage::create_in_memory(&format!("mds{id}.redb"), None)?;
        self.mds.insert(
            id,
            MdsSlot {
                disk: storage.disk(),
                clock: SimClock::new(self.start),
                running: None,
            },
        );
        self.start_mds(id).await
    }

    /// Stops MDS `id` for good (after `rm-mds`).
    pub async fn retire_mds(&mut self, id: u64) {
        self.crash_mds(id).await;
        self.mds.remove(&id);
    }

    pub fn mds_ids(&self) -> Vec<u64> {
        self.mds.keys().copied().collect()
    }

    pub fn cs_ids(&self) -> Vec<CsId> {
        self.cs.keys().copied().collect()
    }

    /// The bootstrap list of every node (`bs.list`): the MDSes the group
    /// was formed with (a node learns later members from the group).
    pub fn mds_addrs(&self) -> Vec<String> {
        (1..=self.config.mds as u64)
            .map(|id| NodeId::Mds(id).addr())
            .collect()
    }

    /// An MDS client for node `from`, dialing the members in order.
    pub fn mds_client(&self, from: NodeId) -> Arc<SimMdsClient> {
        let directory = Arc::new(MemberDirectory::new(
            self.mds_addrs(),
            None,
            SimClock::new(self.start),
            DirectoryOptions::default(),
        ));
        Arc::new(SimMdsClient::new(self.net.clone(), from, directory))
    }

    fn mds_config(&self, id: u64) -> MdsConfig {
        let mut config = MdsConfig {
            cluster_name: "sim".to_string(),
            addr: NodeId::Mds(id).addr(),
            ..MdsConfig::default()
        };
        config.params.offline_timeout_ms = self.config.offline_timeout_ms;
        config.params.scrub_period_ms = self.config.scrub_period_ms;
        config.params.repl_bandwidth_bytes_per_s = self.config.repl_bandwidth_bytes_per_s;
        config
    }

    /// Starts MDS `id` from what its storage holds.
    pub async fn start_mds(&mut self, id: u64) -> Result<()> {
        let node = NodeId::Mds(id);
        let slot = self.mds.get(&id).expect("unknown MDS");
        let storage = RaftStorage::reopen(&slot.disk)?;
        let state = storage.initial_state()?;
        let clock: Arc<dyn Clock> = slot.clock.clone();
        let control = Arc::new(SimConnector::new(
            self.net.clone(),
            node,
            Some(CONTROL_CALL_TIMEOUT),
        ));
        let copies = Arc::new(SimConnector::new(self.net.clone(), node, None));
        let service = Arc::new(
            MdsService::new(state, None, control, clock, self.mds_config(id))
                .with_copy_connector(copies),
        );
        let (log, state_machine) = storage.into_parts(service.clone());
        let raft_conf = raft_config("sim", self.config.snapshot_every)?;
        let raft = MdsRaft::new(
            MdsId(id),
            Arc::new(raft_conf),
            SimRaftNetwork {
                net: self.net.clone(),
                from: MdsId(id),
            },
            log,
            state_machine,
        )
        .await
        .map_err(|e| Error::internal(format!("starting the Raft node of MDS {id}: {e}")))?;
        service.attach_raft(MdsId(id), raft.clone())?;
        let endpoint = Arc::new(MdsEndpoint::new(
            MdsId(id),
            service.clone(),
            raft.clone(),
            self.net.clone(),
        ));
        self.net.start(node, Services::Mds(endpoint));
        let duties = service.clone();
        self.net.spawn_on(node, async move {
            duties.run_duties(crate::MDS_TICK).await;
        });
        self.mds.get_mut(&id).expect("unknown MDS").running = Some((service, raft));
        Ok(())
    }

    /// kill -9 of MDS `id`: its Raft storage keeps what was committed.
    pub async fn crash_mds(&mut self, id: u64) {
        self.net.crash(NodeId::Mds(id));
        if let Some((_, raft)) = self.mds.get_mut(&id).and_then(|s| s.running.take()) {
            let _ = raft.shutdown().await;
        }
    }

    pub fn mds_running(&self, id: u64) -> bool {
        self.mds.get(&id).is_some_and(|s| s.running.is_some())
    }

    /// The running MDS services.
    pub fn mds_services(&self) -> Vec<(u64, Arc<MdsService>)> {
        self.mds
            .iter()
            .filter_map(|(id, s)| s.running.as_ref().map(|(svc, _)| (*id, svc.clone())))
            .collect()
    }

    /// The MDS that leads now (as its own Raft node sees it), if any.
    pub fn leader(&self) -> Option<(u64, Arc<MdsService>)> {
        self.mds_services()
            .into_iter()
            .find(|(_, svc)| svc.is_leader() && !self.net.is_frozen(NodeId::Mds(svc_id(svc))))
    }

    pub fn clock_of(&self, node: NodeId) -> Option<Arc<SimClock>> {
        match node {
            NodeId::Mds(id) => self.mds.get(&id).map(|s| s.clock.clone()),
            NodeId::Cs(id) => self.cs.get(&CsId(id)).map(|s| s.clock.clone()),
            NodeId::Client(_) => None,
        }
    }

    /// Starts chunk server `id` on its store (after a crash: the chunks
    /// written but not flushed are verified first, by the session).
    pub fn start_cs(&mut self, id: CsId) {
        let node = NodeId::Cs(id.0);
        let slot = self.cs.get(&id).expect("unknown CS");
        let store: Arc<dyn ChunkStore> = slot.store.store();
        let clock: Arc<dyn Clock> = slot.clock.clone();
        let peers = Arc::new(SimConnector::new(self.net.clone(), node, None));
        let server = Arc::new(ChunkServer::new(id, store, peers));
        let (reports, reporter) = bad_replica_queue();
        server.set_bad_replica_sink(reports);
        let directory = Arc::new(MemberDirectory::new(
            self.mds_addrs(),
            None,
            clock.clone(),
            DirectoryOptions {
                refresh_period: Duration::from_secs(5),
                ..DirectoryOptions::default()
            },
        ));
        let options = SessionOptions::default();
        let mds = Arc::new(
            SimMdsClient::new(self.net.clone(), node, directory.clone())
                .with_heartbeat_timeout(options.heartbeat_timeout),
        );
        let session = CsSession::new(
            server.clone(),
            mds.clone(),
            mds.clone(),
            directory,
            clock,
            node.addr(),
            options,
        );
        self.net.start(node, Services::Cs(server.clone()));
        self.net.spawn_on(node, async move {
            if let Err(e) = session.run().await {
                tracing::warn!("CS {id}: the session ended: {e}");
            }
        });
        let repairer = server.clone();
        self.net.spawn_on(node, async move {
            reporter
                .run(mds, repairer, crate::rpc::MDS_CALL_TIMEOUT)
                .await;
        });
        let scrubber = server.clone();
        self.net.spawn_on(node, async move {
            scrubber.run_scrubber().await;
        });
        self.cs.get_mut(&id).expect("unknown CS").running = Some(server);
    }

    /// Crashes chunk server `id`. `power_loss == false`: kill -9 (the
    /// host's page cache keeps every write; the store still lists the
    /// chunks written since their flush as unverified, as the file store's
    /// dirty log does). `power_loss`: unflushed writes are kept, lost or
    /// torn, block by block, as the seed decides.
    ///
    /// A block is torn only where no other chunk server's copy of it is
    /// damaged (torn or flipped, not repaired yet): like a bit flip, the
    /// damage stays within what the replicas can repair. The real store
    /// never tears a block (its journal: `--file-store`); the in-memory
    /// store's torn blocks stand for damage the restart check finds, and
    /// two damaged copies of one block would be a double fault (`--all-faults`
    /// seeds 100234, 100257, 100545, 100683, 100997: both members of a chain
    /// torn at the same block by one power cut, unrepairable).
    pub fn crash_cs(&mut self, id: CsId, power_loss: bool) -> StoreCrash {
        self.net.crash(NodeId::Cs(id.0));
        let damaged_elsewhere: BTreeSet<(ChunkId, u64)> = self
            .cs
            .iter()
            .filter(|&(&other, _)| other != id)
            .filter_map(|(_, slot)| match &slot.store {
                CsStore::Mem(store) => Some(store.damaged_blocks()),
                CsStore::File { .. } => None,
            })
            .flatten()
            .collect();
        let slot = self.cs.get_mut(&id).expect("unknown CS");
        slot.running = None;
        let rng = self.rng.clone();
        slot.store.crash(power_loss, &rng, &damaged_elsewhere)
    }

    pub fn cs_running(&self, id: CsId) -> bool {
        self.cs.get(&id).is_some_and(|s| s.running.is_some())
    }

    pub fn cs_store(&self, id: CsId) -> CsStore {
        self.cs[&id].store.clone()
    }

    pub fn cs_server(&self, id: CsId) -> Option<Arc<ChunkServer>> {
        self.cs.get(&id).and_then(|s| s.running.clone())
    }

    /// Stops every node (the end of a run).
    pub async fn shutdown(&mut self) {
        for id in self.mds_ids() {
            self.crash_mds(id).await;
        }
        self.net.clear();
    }
}

fn svc_id(svc: &MdsService) -> u64 {
    svc.raft().map(|(id, _)| id.0).unwrap_or(0)
}
