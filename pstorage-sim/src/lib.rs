//! pstorage-sim: a seeded, deterministic simulator of a whole pstorage
//! cluster in one process (docs/design.md, "Simulation").
//!
//! A run ([`run_seed`]) builds a cluster of real MDSes (`MdsService` on
//! openraft, redb storage in memory), real chunk servers (`ChunkServer` and
//! `CsSession` on a `MemChunkStore` that loses unflushed writes when it
//! crashes) and real `Client`s, connected by a simulated network
//! ([`net`]), on a current-thread tokio runtime whose clock is paused (time
//! jumps to the next timer whenever every task waits). Every random choice
//! — message delays and resets, faults, the workload, openraft's election
//! timeouts, scrubbing — comes from the seed, so a seed replays the same
//! run: [`Outcome::trace_hash`] fingerprints it.
//!
//! The driver advances in steps of [`SimConfig::step_ms`]; at each it may
//! inject a fault and checks the MDS invariants. After
//! [`SimConfig::steps`] it stops the faults, heals everything, and checks
//! that no client operation stays stuck, every block reads back a value
//! its model allows, and every chunk returns to `replicas.norm` identical
//! replicas.

pub mod check;
pub mod cluster;
pub mod net;
pub mod rpc;
pub mod trace;
pub mod workload;

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pstorage_core::chunk::ChunkStore;
use pstorage_core::client::Client;
use pstorage_core::types::{CsId, MdsId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::net::{MessageFaults, NodeId, SimNet};
use crate::rpc::SimConnector;
use crate::trace::Trace;
use crate::workload::{Shared, Worker};

/// How many of the MDS's last events the trace shows when replicas do not
/// converge.
const STALL_EVENTS: usize = 40;

/// The one random generator of a run.
pub type SimRng = Arc<Mutex<StdRng>>;

/// How often an MDS runs its periodic duties (the daemon's `MDS_TICK`).
pub const MDS_TICK: Duration = Duration::from_millis(500);

/// The knobs of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// MDSes (3 or 5).
    pub mds: usize,
    /// Chunk servers.
    pub cs: usize,
    /// Clients running the workload.
    pub clients: u32,
    /// Driver steps with faults (each `step_ms` of simulated time).
    pub steps: u64,
    pub step_ms: u64,
    /// Chunk size of the cluster. Smaller than the 256 MiB default so a
    /// small file spans several chunks.
    pub chunk_size: u64,
    /// Blocks (4 KiB) of each client's file.
    pub file_blocks: u64,
    pub replicas_norm: u8,
    pub replicas_min: u8,
    /// `mds.wd.offline_tout` of the cluster (ms).
    pub offline_timeout_ms: u64,
    /// `cs.scrub.period` of the cluster (ms).
    pub scrub_period_ms: u64,
    /// Raft snapshot every this many entries.
    pub snapshot_every: u64,
    /// Chance of a new fault at each step, per thousand.
    pub fault_permille: u32,
    /// How long the cluster gets, once faults stop, to finish every client
    /// operation and bring every chunk back to norm (simulated ms).
    pub quiet_ms: u64,
    /// `mds.repl.bandwidth` of the cluster (bytes/s): by default the
    /// 100 MiB/s default scaled by `chunk_size / 256 MiB`, so a copy takes
    /// as long as a copy of a default-size chunk at the default rate.
    pub repl_bandwidth_bytes_per_s: u64,
    /// Inject clock jumps (a node's wall clock stepped by seconds to
    /// minutes, then back).
    pub clock_jumps: bool,
    /// Inject hangs: a node frozen for longer than the offline timeout.
    pub hangs: bool,
    /// Inject (at most once per run) an outage of every chunk server for
    /// longer than the offline timeout.
    pub outages: bool,
    /// Inject (at most once per run) the replacement of an MDS (a new one
    /// joins, an old one is removed for good).
    pub mds_changes: bool,
    /// Inject client crashes: a client process killed mid-operation
    /// (no close; its lease left to expire), restarted as a new process.
    pub client_crashes: bool,
    /// Chunk servers run the real file store (journal, chunk files, dirty
    /// log) on a disk in memory that loses unsynced pages at a power loss,
    /// instead of the memory store.
    pub file_store: bool,
    /// Print the trace as it happens.
    pub verbose: bool,
}

/// The cluster's default chunk size (256 MiB).
pub const DEFAULT_CHUNK_SIZE: u64 = 256 << 20;

impl SimConfig {
    /// The default re-replication rate (100 MiB/s) scaled to `chunk_size`.
    pub fn scaled_repl_bandwidth(chunk_size: u64) -> u64 {
        let default =
            pstorage_core::mds::params::ClusterParams::default().repl_bandwidth_bytes_per_s;
        ((default as u128 * chunk_size as u128) / DEFAULT_CHUNK_SIZE as u128).max(1) as u64
    }

    /// A run at the cluster's defaults: 256 MiB chunks, the 300 s offline
    /// timeout, the default re-replication rate (the twin of the default
    /// knobs, which shrink both for speed).
    pub fn at_defaults() -> SimConfig {
        let params = pstorage_core::mds::params::ClusterParams::default();
        SimConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            offline_timeout_ms: params.offline_timeout_ms,
            repl_bandwidth_bytes_per_s: params.repl_bandwidth_bytes_per_s,
            // Faults long enough for the offline timeout to matter.
            quiet_ms: 600_000,
            ..SimConfig::default()
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            mds: 3,
            cs: 5,
            clients: 3,
            steps: 600,
            step_ms: 100,
            chunk_size: 64 << 10,
            file_blocks: 48,
            replicas_norm: 3,
            replicas_min: 2,
            offline_timeout_ms: 30_000,
            scrub_period_ms: 20_000,
            snapshot_every: 200,
            fault_permille: 30,
            quiet_ms: 180_000,
            repl_bandwidth_bytes_per_s: SimConfig::scaled_repl_bandwidth(64 << 10),
            clock_jumps: false,
            hangs: false,
            outages: false,
            mds_changes: false,
            client_crashes: false,
            file_store: false,
            verbose: false,
        }
    }
}

/// Whether runs are deterministic: tokio's internal random choices are
/// seeded only in a build with `--cfg tokio_unstable` (the workspace's
/// `.cargo/config.toml` sets it; a `RUSTFLAGS` environment variable
/// replaces it).
pub fn deterministic() -> bool {
    cfg!(tokio_unstable)
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub seed: u64,
    pub trace_hash: String,
    pub steps: u64,
    pub ops: u64,
    pub faults: u64,
    pub violations: Vec<String>,
    /// The last events before the end (for a failure report).
    pub recent: Vec<String>,
}

/// Runs seed `seed` on a fresh current-thread runtime with a paused clock
/// and returns what happened. Deterministic: the same seed and config give
/// the same outcome.
pub fn run_seed(seed: u64, config: &SimConfig) -> Outcome {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    // tokio's own random choices (watch wake order, unbiased select!)
    // from the seed too; needs `--cfg tokio_unstable` (.cargo/config.toml).
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build().expect("a current-thread runtime");
    pstorage_core::runtime::seed_thread_rng(Some(seed ^ 0x05ee_d0f0_c0de));
    pstorage_core::runtime::set_inline_blocking(true);
    let outcome = runtime.block_on(run(seed, config.clone()));
    drop(runtime);
    pstorage_core::runtime::set_inline_blocking(false);
    pstorage_core::runtime::seed_thread_rng(None);
    outcome
}

/// A fault in force, undone at `until` (a step number).
#[derive(Debug, Clone)]
enum Active {
    CsDown(CsId),
    MdsDown(u64),
    Frozen(NodeId),
    Cut(NodeId, NodeId),
    Isolated(NodeId, Vec<NodeId>),
    DiskFull(CsId),
    /// A node hung for longer than the offline timeout (a stuck disk, a
    /// paused VM): kept past the end of the fault phase until its time.
    LongFreeze(NodeId),
    /// Every chunk server down (kill -9) for longer than the offline
    /// timeout: beyond what the cluster serves through, but nothing
    /// acknowledged and flushed may be lost. Kept past the end of the
    /// fault phase until its time.
    Outage(Vec<CsId>),
    /// A node's wall clock stepped by this many ms; undone by the opposite
    /// step (NTP correcting it).
    ClockJump(NodeId, i64),
    /// A client process crashed (by its number); undone by starting it
    /// again as a new process.
    ClientDown(u32),
}

impl Active {
    /// Faults that last past the end of the fault phase, to their time.
    fn outlasts_the_phase(&self) -> bool {
        matches!(self, Active::LongFreeze(_) | Active::Outage(_))
    }
}

async fn run(seed: u64, config: SimConfig) -> Outcome {
    let rng: SimRng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
    let trace = Arc::new(Trace::new(config.verbose));
    let net = SimNet::new(rng.clone(), trace.clone());
    let mut violations = Vec::new();
    trace.event(format!(
        "seed {seed}: {:?}",
        SimConfig {
            verbose: false,
            ..config.clone()
        }
    ));
    let mut cluster = match Cluster::new(net.clone(), rng.clone(), config.clone()).await {
        Ok(c) => c,
        Err(e) => {
            violations.push(format!("the cluster did not start: {e}"));
            return Outcome {
                seed,
                trace_hash: trace.hash(),
                steps: 0,
                ops: 0,
                faults: 0,
                violations,
                recent: trace.recent(),
            };
        }
    };
    for id in cluster.cs_ids() {
        cluster.start_cs(id);
    }
    let shared = Arc::new(Shared {
        trace: trace.clone(),
        rng: rng.clone(),
        stop: AtomicBool::new(false),
        ops: AtomicU64::new(0),
        violations: Mutex::new(Vec::new()),
        crashes: AtomicU64::new(0),
        outages: Mutex::new(Vec::new()),
        big_writes: config.file_store,
    });
    let mut clients = Clients::start(&cluster, &net, &shared, &config);

    // The fault phase.
    net.set_message_faults(MessageFaults {
        reset_before_ppm: 2_000,
        reset_after_ppm: 2_000,
        slow_ppm: 5_000,
    });
    let mut active: Vec<(u64, Active)> = Vec::new();
    let mut faults = 0u64;
    let mut replaced = false;
    let mut outage_done = false;
    for step in 0..config.steps {
        tokio::time::sleep(Duration::from_millis(config.step_ms)).await;
        // What the journal thread of a real chunk server does, on the
        // simulated clock: about every second.
        if config.file_store && step % (1000 / config.step_ms.max(1)).max(1) == 0 {
            for id in cluster.cs_ids() {
                if cluster.cs_running(id) {
                    cluster.cs_store(id).checkpoint();
                }
            }
        }
        // Undo what is due.
        let (due, rest): (Vec<_>, Vec<_>) =
            active.into_iter().partition(|(until, _)| *until <= step);
        active = rest;
        for (_, fault) in due {
            undo(&mut cluster, &mut clients, &net, &shared, fault).await;
        }
        let roll = rng.lock().gen_range(0..1000);
        if roll < config.fault_permille {
            let mut once = Once {
                replaced: &mut replaced,
                outage_done: &mut outage_done,
            };
            if let Some(fault) = inject(
                &mut cluster,
                &mut clients,
                &net,
                &rng,
                &active,
                &shared,
                &config,
                &mut once,
            )
            .await
            {
                let len = match &fault {
                    // Past the offline timeout.
                    Active::LongFreeze(_) | Active::Outage(_) => {
                        let extra = rng.lock().gen_range(50..400);
                        config.offline_timeout_ms / config.step_ms.max(1) + extra
                    }
                    _ => rng.lock().gen_range(10..200),
                };
                active.push((step + len, fault));
                faults += 1;
            }
        }
        check_mdses(&cluster, &shared);
    }

    // Faults stop: the long ones run to their time (the workload goes
    // on), then everything heals and restarts.
    trace.event("faults stop; healing everything".into());
    net.set_message_faults(MessageFaults::NONE);
    let mut step = config.steps;
    while active.iter().any(|(_, f)| f.outlasts_the_phase()) {
        tokio::time::sleep(Duration::from_millis(config.step_ms)).await;
        let (due, rest): (Vec<_>, Vec<_>) = active
            .into_iter()
            .partition(|(until, f)| *until <= step || !f.outlasts_the_phase());
        active = rest;
        for (_, fault) in due {
            undo(&mut cluster, &mut clients, &net, &shared, fault).await;
        }
        check_mdses(&cluster, &shared);
        step += 1;
    }
    for (_, fault) in std::mem::take(&mut active) {
        undo(&mut cluster, &mut clients, &net, &shared, fault).await;
    }
    net.heal_all();
    shared.stop.store(true, Ordering::SeqCst);
    let quiet_deadline = tokio::time::Instant::now() + Duration::from_millis(config.quiet_ms);
    let mut finished = Vec::new();
    for slot in &mut clients.slots {
        let Some(mut handle) = slot.handle.take() else {
            // Restarted after the workload stopped: only the final check.
            finished.push(slot.worker.clone());
            continue;
        };
        match tokio::time::timeout_at(quiet_deadline, &mut handle).await {
            Ok(Ok(())) => finished.push(slot.worker.clone()),
            Ok(Err(e)) => shared.violation(format!("client{} panicked: {e}", slot.c)),
            Err(_) => {
                handle.abort();
                shared.violation(format!(
                    "client{} is stuck in `{}` {} s after the faults stopped",
                    slot.c,
                    slot.doing.lock(),
                    config.quiet_ms / 1000
                ));
            }
        }
    }
    for worker in &finished {
        let mut worker = worker.lock().await;
        let left = quiet_deadline.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left, worker.verify_all())
            .await
            .is_err()
        {
            shared.violation(format!(
                "client{}: the final check is stuck in `{}` once the faults stopped",
                worker.id,
                worker.doing.lock()
            ));
        }
    }
    // Replicas converge back to norm, identical.
    let last = loop {
        check_mdses(&cluster, &shared);
        let last = match cluster.leader() {
            None => Err("no MDS leads".to_string()),
            Some((_, leader)) => {
                let state = leader.state_snapshot();
                let stores: BTreeMap<CsId, Arc<dyn ChunkStore>> = cluster
                    .cs_ids()
                    .into_iter()
                    .filter(|id| cluster.cs_server(*id).is_some_and(|s| s.is_serving()))
                    .map(|id| (id, cluster.cs_store(id).store()))
                    .collect();
                let refs: BTreeMap<CsId, &dyn ChunkStore> = stores
                    .iter()
                    .map(|(id, s)| (*id, s.as_ref() as &dyn ChunkStore))
                    .collect();
                check::check_replicas(&state, &refs)
            }
        };
        if last.is_ok() || tokio::time::Instant::now() >= quiet_deadline {
            break last;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if let Err(e) = last {
        // What the MDS logged last, for whoever reads the trace of a stall.
        if let Some((_, leader)) = cluster.leader() {
            let state = leader.state_snapshot();
            let events: Vec<_> = state.events_after(0).collect();
            for event in &events[events.len().saturating_sub(STALL_EVENTS)..] {
                trace.event(format!("MDS event {}: {}", event.seq, event.message));
            }
        }
        shared.violation(format!(
            "replicas did not converge within {} s of quiet: {e}",
            config.quiet_ms / 1000
        ));
    } else {
        trace.event("every chunk has its norm of identical replicas".into());
    }
    violations.extend(shared.violations.lock().iter().cloned());
    let outcome = Outcome {
        seed,
        trace_hash: trace.hash(),
        steps: config.steps,
        ops: shared.ops.load(Ordering::SeqCst),
        faults,
        violations,
        recent: trace.recent(),
    };
    drop(finished);
    drop(clients);
    cluster.shutdown().await;
    outcome
}

/// The workload's clients: each one's worker (whose models outlive a
/// crash of its process) and the task running it.
struct Clients {
    net: Arc<SimNet>,
    shared: Arc<Shared>,
    slots: Vec<ClientSlot>,
}

struct ClientSlot {
    /// The client's number (its file is `/f{c}`).
    c: u32,
    worker: Arc<tokio::sync::Mutex<Worker>>,
    doing: Arc<Mutex<String>>,
    /// The task running the workload; `None` while the process is down.
    handle: Option<tokio::task::JoinHandle<()>>,
    /// The node of its current process: a restarted client is a new node
    /// (client `c + 1000 * restarts`), so nothing its dead process left
    /// behind reaches the cluster.
    node: NodeId,
    restarts: u32,
}

impl Clients {
    fn start(
        cluster: &Cluster,
        net: &Arc<SimNet>,
        shared: &Arc<Shared>,
        config: &SimConfig,
    ) -> Clients {
        let mut clients = Clients {
            net: net.clone(),
            shared: shared.clone(),
            slots: Vec::new(),
        };
        for c in 1..=config.clients {
            let node = NodeId::Client(c);
            let client = clients.new_client(cluster, node);
            let worker = Worker::new(c, client, shared.clone(), config.file_blocks);
            let doing = worker.doing.clone();
            clients.slots.push(ClientSlot {
                c,
                worker: Arc::new(tokio::sync::Mutex::new(worker)),
                doing,
                handle: None,
                node,
                restarts: 0,
            });
            let i = clients.slots.len() - 1;
            clients.run(i);
        }
        clients
    }

    fn new_client(&self, cluster: &Cluster, node: NodeId) -> Client {
        self.net.add_client(node);
        Client::new(
            cluster.mds_client(node),
            Arc::new(SimConnector::new(self.net.clone(), node, None)),
            Worker::client_options(),
        )
    }

    fn run(&mut self, i: usize) {
        let worker = self.slots[i].worker.clone();
        self.slots[i].handle = Some(tokio::spawn(async move {
            worker.lock().await.run().await;
        }));
    }

    /// Kills a running client's process (kill -9, wherever it is).
    async fn crash(&mut self, i: usize) -> bool {
        let Some(handle) = self.slots[i].handle.take() else {
            return false;
        };
        handle.abort();
        let _ = handle.await;
        self.net.kill_client(self.slots[i].node);
        true
    }

    /// Starts a crashed client again, as a new process.
    async fn restart(&mut self, cluster: &Cluster, i: usize) {
        let slot = &mut self.slots[i];
        slot.restarts += 1;
        slot.node = NodeId::Client(slot.c + 1000 * slot.restarts);
        let node = slot.node;
        let client = self.new_client(cluster, node);
        self.slots[i].worker.lock().await.crash(client);
        if !self.shared.stop.load(Ordering::SeqCst) {
            self.run(i);
        }
    }
}

/// `MdsState::check_invariants` on every running MDS.
fn check_mdses(cluster: &Cluster, shared: &Shared) {
    for (id, service) in cluster.mds_services() {
        if let Err(e) = check::check_mds(id, &service.state_snapshot()) {
            shared.violation(e);
        }
    }
}

fn pick<T: Clone>(rng: &SimRng, items: &[T]) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    let i = rng.lock().gen_range(0..items.len());
    Some(items[i].clone())
}

/// Faults a run injects at most once.
struct Once<'a> {
    replaced: &'a mut bool,
    outage_done: &'a mut bool,
}

/// Injects one random fault the cluster should tolerate: at most one chunk
/// server and one MDS (a minority of 3) affected at a time; or, rarely,
/// once per run, an outage of every chunk server (beyond the tolerance:
/// the cluster may pause, but must lose nothing) or the replacement of an
/// MDS (`make-mds` of a new one, then `rm-mds` of an old one).
#[allow(clippy::too_many_arguments)]
async fn inject(
    cluster: &mut Cluster,
    clients: &mut Clients,
    net: &Arc<SimNet>,
    rng: &SimRng,
    active: &[(u64, Active)],
    shared: &Shared,
    config: &SimConfig,
    once: &mut Once<'_>,
) -> Option<Active> {
    let trace = net.trace().clone();
    // A cut with a chunk server at one end affects that server: cut from
    // the leader MDS it misses version moves and is dropped from chains,
    // cut from a peer or a client its chain writes fail and it is reported
    // (seed 1402 of the 10,000-seed campaign: cs3 cut from the leader, then
    // cs4's power loss, left a chunk at one replica: two servers down, a
    // write rightly waiting, reported as a violation).
    let cs_busy = active.iter().any(|(_, f)| {
        matches!(
            f,
            Active::CsDown(_) | Active::DiskFull(_) | Active::Outage(_)
        ) || matches!(
            f,
            Active::Frozen(NodeId::Cs(_))
                | Active::LongFreeze(NodeId::Cs(_))
                | Active::Isolated(NodeId::Cs(_), _)
                | Active::Cut(NodeId::Cs(_), _)
                | Active::Cut(_, NodeId::Cs(_))
        )
    });
    // A cut with an MDS at one end affects that MDS too: between two
    // MDSes, with another MDS down or frozen, no majority of the three
    // could talk (seeds 3596, 9678 of the 10,000-seed campaign: a failed
    // renewal the cluster could not have served, reported as a violation);
    // between a client and an MDS, with another MDS frozen, that client
    // reaches only one of the three (seed 152 of session 19: its lease ran
    // out while it tried the two it could not reach).
    let mds_busy = active.iter().any(|(_, f)| {
        matches!(f, Active::MdsDown(_))
            || matches!(
                f,
                Active::Frozen(NodeId::Mds(_))
                    | Active::LongFreeze(NodeId::Mds(_))
                    | Active::Isolated(NodeId::Mds(_), _)
                    | Active::Cut(NodeId::Mds(_), _)
                    | Active::Cut(_, NodeId::Mds(_))
            )
    });
    let net_busy = active.iter().any(|(_, f)| matches!(f, Active::Cut(..)));
    let clock_busy = active
        .iter()
        .any(|(_, f)| matches!(f, Active::ClockJump(..)));
    // Only the basic kinds unless an extended one is on, so the default
    // knobs keep the schedules (and failing seeds) they always had.
    let kinds = if config.client_crashes {
        13
    } else if config.hangs || config.outages || config.mds_changes || config.clock_jumps {
        12
    } else {
        8
    };
    let kind = rng.lock().gen_range(0..kinds);
    let cs_ids = cluster.cs_ids();
    let mds_ids = cluster.mds_ids();
    match kind {
        0 if !cs_busy => {
            let id = pick(rng, &cs_ids)?;
            let power_loss = rng.lock().gen_bool(0.5);
            let report = cluster.crash_cs(id, power_loss);
            if power_loss {
                shared.crashes.fetch_add(1, Ordering::SeqCst);
                trace.event(format!("FAULT power loss of cs{id} ({})", report.0));
            } else {
                trace.event(format!("FAULT kill -9 of cs{id}"));
            }
            Some(Active::CsDown(id))
        }
        1 if !mds_busy => {
            let id = pick(rng, &mds_ids)?;
            cluster.crash_mds(id).await;
            trace.event(format!("FAULT crash mds{id}"));
            Some(Active::MdsDown(id))
        }
        2 if !cs_busy => {
            let node = NodeId::Cs((pick(rng, &cs_ids)?).0);
            net.set_frozen(node, true);
            trace.event(format!("FAULT freeze {node}"));
            Some(Active::Frozen(node))
        }
        3 if !mds_busy => {
            let node = NodeId::Mds(pick(rng, &mds_ids)?);
            net.set_frozen(node, true);
            trace.event(format!("FAULT freeze {node}"));
            Some(Active::Frozen(node))
        }
        4 if !net_busy => {
            let nodes = net.nodes();
            let a = pick(rng, &nodes)?;
            let b = pick(rng, &nodes)?;
            let with_cs = matches!(a, NodeId::Cs(_)) || matches!(b, NodeId::Cs(_));
            let with_mds = matches!(a, NodeId::Mds(_)) || matches!(b, NodeId::Mds(_));
            if a == b || (with_mds && mds_busy) || (with_cs && cs_busy) {
                return None;
            }
            net.set_cut(a, b, true);
            trace.event(format!("FAULT partition {a} <-> {b}"));
            Some(Active::Cut(a, b))
        }
        5 if !cs_busy && !mds_busy => {
            // One node cut from every other.
            let nodes = net.nodes();
            let node = pick(rng, &nodes)?;
            if matches!(node, NodeId::Client(_)) {
                return None;
            }
            let others: Vec<NodeId> = nodes.into_iter().filter(|n| *n != node).collect();
            for other in &others {
                net.set_cut(node, *other, true);
            }
            trace.event(format!("FAULT isolate {node}"));
            Some(Active::Isolated(node, others))
        }
        6 if !cs_busy => {
            let id = pick(rng, &cs_ids)?;
            cluster.cs_store(id).set_full(true);
            trace.event(format!("FAULT disk full on cs{id}"));
            Some(Active::DiskFull(id))
        }
        7 => {
            // A bit flip in a stored block of some replica.
            let id = pick(rng, &cs_ids)?;
            let slot = cluster.cs_store(id);
            let store = slot.store();
            let chunks = store.list().ok()?;
            let chunk = pick(rng, &chunks)?.chunk;
            // Within the tolerance: only a replica of a chunk that has all
            // its copies (a flip on the last good copy loses the block).
            let (_, leader) = cluster.leader()?;
            let state = leader.state_snapshot();
            let record = state.chunk(chunk)?;
            let norm = state.inode(record.file)?.attrs.replicas.norm as usize;
            if record.replicas.len() < norm || !record.replicas.contains(&id) {
                return None;
            }
            let size = store.chunk_size(chunk).ok()?;
            let offset = rng.lock().gen_range(0..size);
            if slot.corrupt(chunk.0, offset).is_ok() {
                trace.event(format!(
                    "FAULT bit flip on cs{id} chunk {chunk:#x} offset {offset}"
                ));
            }
            None
        }
        8 if !cs_busy && !mds_busy && config.hangs => {
            // A hung node, past the offline timeout.
            let nodes = net.nodes();
            let node = pick(rng, &nodes)?;
            let alive = match node {
                NodeId::Cs(id) => cluster.cs_running(CsId(id)),
                NodeId::Mds(id) => cluster.mds_running(id),
                NodeId::Client(_) => false,
            };
            if !alive {
                return None;
            }
            net.set_frozen(node, true);
            trace.event(format!("FAULT long freeze of {node}"));
            Some(Active::LongFreeze(node))
        }
        9 if !cs_busy && config.outages && !*once.outage_done && rng.lock().gen_bool(0.3) => {
            *once.outage_done = true;
            shared
                .outages
                .lock()
                .push((tokio::time::Instant::now(), None));
            // Half of the outages are a power cut of the whole cluster's
            // chunk servers: every replica may lose its unflushed writes.
            let power_loss = rng.lock().gen_bool(0.5);
            for id in &cs_ids {
                cluster.crash_cs(*id, power_loss);
            }
            if power_loss {
                // The clients' models: writes not flushed may be lost.
                shared.crashes.fetch_add(1, Ordering::SeqCst);
            }
            trace.event(if power_loss {
                "FAULT outage: power loss of every chunk server".into()
            } else {
                "FAULT outage: kill -9 of every chunk server".into()
            });
            Some(Active::Outage(cs_ids))
        }
        10 if !mds_busy && config.mds_changes && !*once.replaced && rng.lock().gen_bool(0.5) => {
            *once.replaced = true;
            let old = pick(rng, &mds_ids)?;
            replace_mds(cluster, &trace, old).await;
            None
        }
        11 if !clock_busy && config.clock_jumps => {
            let mut nodes: Vec<NodeId> = mds_ids.iter().map(|id| NodeId::Mds(*id)).collect();
            nodes.extend(cs_ids.iter().map(|id| NodeId::Cs(id.0)));
            let node = pick(rng, &nodes)?;
            let clock = cluster.clock_of(node)?;
            let (secs, back) = {
                let mut rng = rng.lock();
                // Seconds to minutes, either way.
                let secs: i64 = if rng.gen_bool(0.5) {
                    rng.gen_range(1..60)
                } else {
                    rng.gen_range(60..600)
                };
                (secs, rng.gen_bool(0.5))
            };
            let ms = if back { -secs * 1000 } else { secs * 1000 };
            clock.jump(ms);
            trace.event(format!("FAULT clock of {node} jumps {ms:+} ms"));
            Some(Active::ClockJump(node, ms))
        }
        12 if config.client_crashes => {
            let i = rng.lock().gen_range(0..clients.slots.len());
            if !clients.crash(i).await {
                return None;
            }
            let slot = &clients.slots[i];
            trace.event(format!(
                "FAULT kill -9 of client{} (process {})",
                slot.c, slot.node
            ));
            Some(Active::ClientDown(slot.c))
        }
        _ => None,
    }
}

/// Replaces MDS `old`: a new MDS joins the group (learner, then voter),
/// then `old` is removed and stopped for good. Each step is retried for up
/// to 60 s (the membership calls of `make-mds`/`rm-mds`); the workload
/// runs meanwhile.
async fn replace_mds(cluster: &mut Cluster, trace: &Arc<Trace>, old: u64) {
    let admin = cluster.mds_client(NodeId::Client(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let known = cluster.mds_ids();
    let new = loop {
        match pstorage_core::traits::MdsGroup::allocate_mds_id(&*admin).await {
            // The group was formed with ids 1..=mds, not allocated.
            Ok(id) if known.contains(&id.0) || id.0 <= cluster.config().mds as u64 => continue,
            Ok(id) => break id.0,
            Err(e) if tokio::time::Instant::now() < deadline => {
                trace.event(format!(
                    "replace mds{old}: allocate_mds_id -> {:?}",
                    e.kind()
                ));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                trace.event(format!("replace mds{old}: gave up allocating an id: {e}"));
                return;
            }
        }
    };
    if let Err(e) = cluster.add_mds(new).await {
        trace.event(format!("replace mds{old}: mds{new} did not start: {e}"));
        return;
    }
    trace.event(format!(
        "FAULT replace mds{old} by mds{new}: mds{new} starts"
    ));
    let addr = NodeId::Mds(new).addr();
    loop {
        match pstorage_core::traits::MdsGroup::add_mds(&*admin, MdsId(new), &addr).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                trace.event(format!(
                    "replace mds{old}: add_mds({new}) -> {:?}",
                    e.kind()
                ));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                trace.event(format!("replace mds{old}: gave up adding mds{new}: {e}"));
                return;
            }
        }
    }
    trace.event(format!("mds{new} is a voter; removing mds{old}"));
    loop {
        match pstorage_core::traits::MdsGroup::remove_mds(&*admin, MdsId(old)).await {
            Ok(()) => break,
            Err(e) if e.kind() == pstorage_core::ErrorKind::NotFound => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                trace.event(format!("replace mds{old}: remove_mds -> {:?}", e.kind()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                trace.event(format!("replace mds{old}: gave up removing it: {e}"));
                return;
            }
        }
    }
    cluster.retire_mds(old).await;
    trace.event(format!(
        "mds{old} removed from the group and stopped for good"
    ));
}

async fn undo(
    cluster: &mut Cluster,
    clients: &mut Clients,
    net: &Arc<SimNet>,
    shared: &Shared,
    fault: Active,
) {
    let trace = net.trace().clone();
    match fault {
        Active::CsDown(id) => {
            cluster.start_cs(id);
            trace.event(format!("HEAL restart cs{id}"));
        }
        Active::MdsDown(id) => {
            let started = cluster.start_mds(id).await;
            trace.event(format!(
                "HEAL restart mds{id} -> {:?}",
                started.map_err(|e| e.to_string())
            ));
        }
        Active::Frozen(node) => {
            net.set_frozen(node, false);
            trace.event(format!("HEAL thaw {node}"));
        }
        Active::Cut(a, b) => {
            net.set_cut(a, b, false);
            trace.event(format!("HEAL partition {a} <-> {b}"));
        }
        Active::Isolated(node, others) => {
            for other in others {
                net.set_cut(node, other, false);
            }
            trace.event(format!("HEAL rejoin {node}"));
        }
        Active::DiskFull(id) => {
            cluster.cs_store(id).set_full(false);
            trace.event(format!("HEAL disk space on cs{id}"));
        }
        Active::LongFreeze(node) => {
            net.set_frozen(node, false);
            trace.event(format!("HEAL thaw {node} (long freeze)"));
        }
        Active::Outage(ids) => {
            // The servers come back one by one, in the seed's order.
            let mut ids = ids;
            while !ids.is_empty() {
                let (i, pause) = {
                    let mut rng = cluster.rng().lock();
                    (rng.gen_range(0..ids.len()), rng.gen_range(0..3_000))
                };
                let id = ids.remove(i);
                cluster.start_cs(id);
                trace.event(format!("HEAL restart cs{id} (outage)"));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            for (_, end) in shared.outages.lock().iter_mut() {
                end.get_or_insert(tokio::time::Instant::now());
            }
        }
        Active::ClientDown(c) => {
            if let Some(i) = clients.slots.iter().position(|s| s.c == c) {
                clients.restart(cluster, i).await;
                trace.event(format!(
                    "HEAL client{c} starts again as {}",
                    clients.slots[i].node
                ));
            }
        }
        Active::ClockJump(node, ms) => {
            if let Some(clock) = cluster.clock_of(node) {
                clock.jump(-ms);
            }
            trace.event(format!(
                "HEAL clock of {node} stepped back {:+} ms (NTP)",
                -ms
            ));
        }
    }
}
