//! The simulated network: every call between two nodes is a message there
//! and a reply back, each delayed, possibly reset, held by a partition or a
//! frozen peer, all decided by the seeded random generator. The callee's
//! side runs as a task of the callee node, so crashing the node ends every
//! request it was serving (the caller sees the connection reset), and
//! freezing it stops them where they are.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::future::BoxFuture;
use pstorage_core::chunk::ChunkServer;
use pstorage_core::{Error, Result};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::rpc::MdsEndpoint;
use crate::trace::Trace;
use crate::SimRng;

/// A node of the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeId {
    Mds(u64),
    Cs(u32),
    Client(u32),
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeId::Mds(id) => write!(f, "mds{id}"),
            NodeId::Cs(id) => write!(f, "cs{id}"),
            NodeId::Client(id) => write!(f, "client{id}"),
        }
    }
}

impl NodeId {
    /// The address other nodes know it by (`mdsN:1`, `csN:1`).
    pub fn addr(&self) -> String {
        format!("{self}:1")
    }

    /// The node at `addr` (as [`NodeId::addr`] writes it).
    pub fn from_addr(addr: &str) -> Result<NodeId> {
        let name = addr.strip_suffix(":1").unwrap_or(addr);
        let parse = |digits: &str| {
            digits
                .parse::<u64>()
                .map_err(|_| Error::invalid(format!("no simulated node at address {addr:?}")))
        };
        if let Some(n) = name.strip_prefix("mds") {
            Ok(NodeId::Mds(parse(n)?))
        } else if let Some(n) = name.strip_prefix("cs") {
            Ok(NodeId::Cs(parse(n)? as u32))
        } else {
            Err(Error::unavailable(format!(
                "no simulated node at address {addr:?}: connection refused"
            )))
        }
    }
}

/// What a node serves to the others.
#[derive(Clone)]
pub enum Services {
    Mds(Arc<MdsEndpoint>),
    Cs(Arc<ChunkServer>),
}

/// Per-message faults, as probabilities in parts per million.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageFaults {
    /// The connection breaks before the request is delivered.
    pub reset_before_ppm: u32,
    /// The request is served but the connection breaks before the reply.
    pub reset_after_ppm: u32,
    /// A delay of 50 ms .. 2 s instead of the usual 0.1 .. 2 ms.
    pub slow_ppm: u32,
}

impl MessageFaults {
    pub const NONE: MessageFaults = MessageFaults {
        reset_before_ppm: 0,
        reset_after_ppm: 0,
        slow_ppm: 0,
    };
}

/// How long a call across a partition waits before its connection breaks
/// (the daemons' `TCP_USER_TIMEOUT`).
pub const PARTITION_BREAK: Duration = Duration::from_secs(15);

/// Stops a node's tasks while it is frozen (SIGSTOP).
struct Gate {
    frozen: watch::Sender<bool>,
}

struct Slot {
    /// Counts starts: a request from an older incarnation is not served.
    incarnation: u64,
    services: Option<Services>,
    gate: Arc<Gate>,
    tasks: Vec<AbortHandle>,
    /// A client process that crashed: whatever its leftover tasks still
    /// send is refused (its connections died with it).
    dead: bool,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            incarnation: 0,
            services: None,
            gate: Arc::new(Gate {
                frozen: watch::channel(false).0,
            }),
            tasks: Vec::new(),
            dead: false,
        }
    }

    fn frozen(&self) -> bool {
        *self.gate.frozen.borrow()
    }
}

struct State {
    nodes: BTreeMap<NodeId, Slot>,
    /// Pairs that cannot reach each other (smaller id first).
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: MessageFaults,
}

/// The network of one simulated run.
pub struct SimNet {
    state: Mutex<State>,
    /// Bumped at every change of partitions, freezes or nodes.
    changed: watch::Sender<u64>,
    rng: SimRng,
    trace: Arc<Trace>,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl SimNet {
    pub fn new(rng: SimRng, trace: Arc<Trace>) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(State {
                nodes: BTreeMap::new(),
                cut: BTreeSet::new(),
                faults: MessageFaults::NONE,
            }),
            changed: watch::channel(0).0,
            rng,
            trace,
        })
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn trace(&self) -> &Arc<Trace> {
        &self.trace
    }

    pub fn set_message_faults(&self, faults: MessageFaults) {
        self.state().faults = faults;
    }

    /// Makes `node` serve `services` (a start or restart).
    pub fn start(&self, node: NodeId, services: Services) {
        {
            let mut state = self.state();
            let slot = state.nodes.entry(node).or_insert_with(Slot::new);
            slot.incarnation += 1;
            slot.services = Some(services);
        }
        self.bump();
    }

    /// Registers a node that serves nothing (a client), so it can be
    /// partitioned and frozen like the others.
    pub fn add_client(&self, node: NodeId) {
        self.state().nodes.entry(node).or_insert_with(Slot::new);
    }

    /// A client process crashes for good: its tasks end and nothing it
    /// still sends arrives (a restarted client is a new node).
    pub fn kill_client(&self, node: NodeId) {
        if let Some(slot) = self.state().nodes.get_mut(&node) {
            slot.dead = true;
        }
        self.crash(node);
    }

    /// Ends every task of `node` and stops it serving (kill -9).
    pub fn crash(&self, node: NodeId) {
        let tasks = {
            let mut state = self.state();
            let Some(slot) = state.nodes.get_mut(&node) else {
                return;
            };
            slot.services = None;
            slot.incarnation += 1;
            // A crashed process is not frozen any more.
            slot.gate.frozen.send_replace(false);
            std::mem::take(&mut slot.tasks)
        };
        for task in tasks {
            task.abort();
        }
        self.bump();
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        self.state()
            .nodes
            .get(&node)
            .is_some_and(|s| s.services.is_some())
    }

    pub fn set_frozen(&self, node: NodeId, frozen: bool) {
        if let Some(slot) = self.state().nodes.get(&node) {
            slot.gate.frozen.send_replace(frozen);
        }
        self.bump();
    }

    pub fn is_frozen(&self, node: NodeId) -> bool {
        self.state().nodes.get(&node).is_some_and(|s| s.frozen())
    }

    /// Cuts (or restores) the link between `a` and `b`.
    pub fn set_cut(&self, a: NodeId, b: NodeId, cut: bool) {
        {
            let mut state = self.state();
            if cut {
                state.cut.insert(pair(a, b));
            } else {
                state.cut.remove(&pair(a, b));
            }
        }
        self.bump();
    }

    /// Restores every link and thaws every node.
    pub fn heal_all(&self) {
        {
            let mut state = self.state();
            state.cut.clear();
            for slot in state.nodes.values() {
                slot.gate.frozen.send_replace(false);
            }
        }
        self.bump();
    }

    pub fn nodes(&self) -> Vec<NodeId> {
        self.state().nodes.keys().copied().collect()
    }

    /// Runs `task` as a task of `node`: frozen with it, ended by its crash.
    pub fn spawn_on<F>(&self, node: NodeId, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut state = self.state();
        let slot = state.nodes.entry(node).or_insert_with(Slot::new);
        let gate = slot.gate.clone();
        let handle = tokio::spawn(freezable(gate, task));
        slot.tasks.retain(|t| !t.is_finished());
        slot.tasks.push(handle.abort_handle());
    }

    /// Drops every node (the end of a run): breaks the reference cycles
    /// between nodes and the network.
    pub fn clear(&self) {
        let slots: Vec<Slot> = std::mem::take(&mut self.state().nodes)
            .into_values()
            .collect();
        for slot in slots {
            for task in slot.tasks {
                task.abort();
            }
        }
    }

    fn delay(&self, faults: MessageFaults) -> Duration {
        let mut rng = self.rng.lock();
        if rng.gen_range(0..1_000_000) < faults.slow_ppm {
            Duration::from_millis(rng.gen_range(50..2_000))
        } else {
            Duration::from_micros(rng.gen_range(100..2_000))
        }
    }

    fn chance(&self, ppm: u32) -> bool {
        ppm > 0 && self.rng.lock().gen_range(0..1_000_000) < ppm
    }

    /// Waits until `a` can reach `b`: across a partition until it heals
    /// or [`PARTITION_BREAK`] passes (then the connection breaks); to or
    /// from a frozen node until it thaws (its kernel keeps the connection).
    async fn wait_link(&self, a: NodeId, b: NodeId) -> Result<()> {
        let started = Instant::now();
        let mut changed = self.changed.subscribe();
        loop {
            let (cut, frozen) = {
                let state = self.state();
                let frozen = |n: NodeId| state.nodes.get(&n).is_some_and(|s| s.frozen());
                (state.cut.contains(&pair(a, b)), frozen(a) || frozen(b))
            };
            if !cut && !frozen {
                return Ok(());
            }
            if cut {
                let deadline = started + PARTITION_BREAK;
                match tokio::time::timeout_at(deadline, changed.changed()).await {
                    Ok(_) => continue,
                    Err(_) => {
                        return Err(Error::unavailable(format!(
                            "the connection between {a} and {b} broke (partitioned for {} s)",
                            PARTITION_BREAK.as_secs()
                        )))
                    }
                }
            }
            let _ = changed.changed().await;
        }
    }

    /// Sends a request `what` from `from` to `to`, served by `serve` as a
    /// task of `to`, and brings its answer back. A network failure
    /// (refused, reset, a partition that lasted too long, the callee
    /// crashing) is an `Unavailable` error; the caller cannot tell whether
    /// a request whose reply was lost took effect.
    pub async fn call<T, F>(&self, from: NodeId, to: NodeId, what: &str, serve: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Services) -> BoxFuture<'static, T> + Send + 'static,
    {
        let faults = self.state().faults;
        let dead = |net: &SimNet| net.state().nodes.get(&from).is_some_and(|s| s.dead);
        if dead(self) {
            return Err(Error::unavailable(format!(
                "{from} crashed: {what} to {to} is never sent"
            )));
        }
        tokio::time::sleep(self.delay(faults)).await;
        self.wait_link(from, to).await?;
        if dead(self) {
            // Bytes not yet on the wire when the process died.
            return Err(Error::unavailable(format!(
                "{from} crashed before {what} to {to} left it"
            )));
        }
        if self.chance(faults.reset_before_ppm) {
            self.trace
                .event(format!("net {from}->{to} {what}: reset before delivery"));
            return Err(Error::unavailable(format!(
                "the connection from {from} to {to} was reset ({what} not sent)"
            )));
        }
        let (services, gate, incarnation) = {
            let state = self.state();
            match state.nodes.get(&to).and_then(|s| {
                s.services
                    .clone()
                    .map(|svc| (svc, s.gate.clone(), s.incarnation))
            }) {
                Some(found) => found,
                None => {
                    return Err(Error::unavailable(format!(
                        "{to} refused the connection from {from} ({what}): it is down"
                    )))
                }
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut state = self.state();
            let slot = state.nodes.get_mut(&to).expect("node vanished");
            if slot.incarnation != incarnation {
                return Err(Error::unavailable(format!(
                    "{to} restarted before {what} from {from} arrived"
                )));
            }
            let handle = tokio::spawn(freezable(gate, async move {
                let _ = tx.send(serve(services).await);
            }));
            slot.tasks.retain(|t| !t.is_finished());
            slot.tasks.push(handle.abort_handle());
        }
        let answer = rx.await.map_err(|_| {
            Error::unavailable(format!(
                "{to} crashed while serving {what} from {from}: connection reset"
            ))
        })?;
        tokio::time::sleep(self.delay(faults)).await;
        self.wait_link(to, from).await?;
        if self.chance(faults.reset_after_ppm) {
            self.trace
                .event(format!("net {from}->{to} {what}: reply lost (reset)"));
            return Err(Error::unavailable(format!(
                "the connection from {from} to {to} was reset before the answer to {what}"
            )));
        }
        Ok(answer)
    }
}

/// Runs `task`, but only while `gate` is not frozen: a frozen node's tasks
/// stop where they are and go on when it thaws.
async fn freezable<F: Future<Output = ()>>(gate: Arc<Gate>, task: F) {
    let mut task = std::pin::pin!(task);
    let mut thawed: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    futures::future::poll_fn(|cx| loop {
        if let Some(wait) = thawed.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            thawed = None;
        }
        if *gate.frozen.borrow() {
            let mut rx = gate.frozen.subscribe();
            thawed = Some(Box::pin(async move {
                let _ = rx.wait_for(|frozen| !*frozen).await;
            }));
            continue;
        }
        return task.as_mut().poll(cx);
    })
    .await
}
