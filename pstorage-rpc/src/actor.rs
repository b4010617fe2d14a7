//! The threads that own Cap'n Proto connections.
//!
//! capnp-rpc is single-threaded: an `RpcSystem` and every capability client
//! are `!Send`. So each side keeps its connections on a dedicated OS thread
//! running a current-thread tokio runtime and a `LocalSet`, and the rest of
//! the program talks to that thread through channels:
//!
//! - [`RpcServerThread`] serves already-authenticated streams handed to it.
//! - `ClientActor` (behind `MdsClient` and `ControlClient`) owns one client
//!   connection; each call travels to it as a boxed job with a oneshot reply,
//!   so the clients are `Send + Sync` and usable from any runtime.
//!
//! A daemon may instead host them all on one thread ([`run_hosted`]): the
//! servers and clients started from that thread run as tasks of its
//! `LocalSet`, beside the daemon's own tasks, and a call crosses no thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capnp::capability::FromClientHook;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{twoparty, RpcSystem};
use futures::future::{BoxFuture, LocalBoxFuture};
use pstorage_core::mds::raft::MdsRaft;
use pstorage_core::membership::MemberDirectory;
use pstorage_core::traits::{ChunkControl, CsRegistry, MdsGroup, MetadataService};
use pstorage_core::{Error, ErrorKind, Result};
use tokio::net::TcpStream;

use crate::auth::{ClientStream, HandshakeSlot};
use crate::pki::Peer;
use crate::tls::Credentials;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::wire;

/// Opens an authenticated connection to `host:port`.
///
/// Supplied by the caller (the daemons connect with TLS,
/// [`crate::auth::connect`]); the stream it returns must be ready for Cap'n
/// Proto messages. It is awaited on the client thread's runtime, which the
/// stream then belongs to.
pub type Dialer = Arc<dyn Fn(String) -> BoxFuture<'static, Result<ClientStream>> + Send + Sync>;

/// Where a client connects: the addresses to try, in order, at every
/// (re)connection, told which ones failed and which one answered so that it
/// can reorder them (a [`MemberDirectory`] puts recently failed MDSes last).
pub trait Endpoints: Send + Sync {
    /// The addresses to try, best first. Read again at every dial round.
    fn addrs(&self) -> Vec<String>;
    /// `addr` could not be reached, or a call on it broke or timed out.
    fn failed(&self, addr: &str);
    /// A connection to `addr` was made.
    fn connected(&self, addr: &str);
}

/// A fixed list of addresses, always tried in the same order.
pub struct FixedEndpoints(pub Vec<String>);

impl Endpoints for FixedEndpoints {
    fn addrs(&self) -> Vec<String> {
        self.0.clone()
    }
    fn failed(&self, _addr: &str) {}
    fn connected(&self, _addr: &str) {}
}

impl Endpoints for MemberDirectory {
    fn addrs(&self) -> Vec<String> {
        MemberDirectory::addrs(self)
    }
    fn failed(&self, addr: &str) {
        self.note_failure(addr);
    }
    fn connected(&self, addr: &str) {
        self.note_connected(addr);
    }
}

/// Longest time one dial attempt (TCP connect and authentication) to one
/// address may take before the next address is tried: a frozen peer
/// accepts TCP connections in its kernel but never answers the handshake.
pub const DIAL_ATTEMPT_TIMEOUT: Duration = crate::auth::CONNECT_TIMEOUT;

/// How long an MDS call waits for its answer by default (client -> MDS,
/// chunk server -> MDS): a frozen MDS costs at most this much before the
/// connection is dropped and the next call tries another member. Short
/// enough that an MDS fail-over stays under 10 s (DESIGN.md invariant 6),
/// long enough for an allocation that waits for a slow chunk server.
/// `PSTORAGE_MDS_CALL_TIMEOUT_MS` overrides it ([`ClientOptions::from_env`]).
pub const MDS_CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long a call keeps retrying to establish a connection (all
    /// addresses, with backoff) before it fails with `Unavailable`.
    pub connect_timeout: Duration,
    /// How long a call waits for its reply once sent, or `None` to wait as
    /// long as the connection lives. An expired call fails with `TimedOut`
    /// and may or may not have taken effect.
    pub call_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    /// Connect within 30 s, every call within [`MDS_CALL_TIMEOUT`].
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(30),
            call_timeout: Some(MDS_CALL_TIMEOUT),
        }
    }
}

impl ClientOptions {
    /// The defaults, with `PSTORAGE_MDS_CALL_TIMEOUT_MS` (call timeout, ms;
    /// 0 = none) and `PSTORAGE_MDS_CONNECT_TIMEOUT_MS` applied. A value
    /// that is not a number is ignored with a warning.
    pub fn from_env() -> ClientOptions {
        let mut options = ClientOptions::default();
        if let Some(ms) = env_ms("PSTORAGE_MDS_CALL_TIMEOUT_MS") {
            options.call_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(ms) = env_ms("PSTORAGE_MDS_CONNECT_TIMEOUT_MS") {
            options.connect_timeout = Duration::from_millis(ms);
        }
        options
    }
}

/// A number of milliseconds from the environment.
pub(crate) fn env_ms(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<u64>() {
        Ok(ms) => Some(ms),
        Err(_) => {
            tracing::warn!("{name}={value:?} is not a number of milliseconds; ignored");
            None
        }
    }
}

/// First pause between two rounds of dialing every address.
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest pause between two rounds of dialing.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Builds the two-party network of one connection.
fn vat_network<S>(
    stream: S,
    side: Side,
    options: capnp::message::ReaderOptions,
) -> Box<dyn capnp_rpc::VatNetwork<twoparty::VatId>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    Box::new(twoparty::VatNetwork::new(
        futures::io::BufReader::new(crate::tls::CloseAsEof(reader).compat()),
        futures::io::BufWriter::new(writer.compat_write()),
        side,
        options,
    ))
}

/// A connection task's start, sent to the thread that hosts it: the
/// closure runs there and builds the (`!Send`) future to spawn.
type HostedStart = Box<dyn FnOnce() -> LocalBoxFuture<'static, ()> + Send>;

thread_local! {
    /// Set on the thread of [`run_hosted`] while it runs: the connection
    /// tasks started from it run on its `LocalSet`.
    static HOST: RefCell<Option<mpsc::UnboundedSender<HostedStart>>> =
        const { RefCell::new(None) };
}

/// Runs `future` to its end on a current-thread runtime whose `LocalSet`
/// also hosts every RPC connection (server or client) started from this
/// thread meanwhile, instead of a thread of its own for each (a daemon
/// whose work is small calls: every hand-off between threads costs a
/// wake-up and a context switch of tens of microseconds). Tasks the
/// future spawns with `tokio::spawn` run on this thread too.
pub fn run_hosted<F: Future>(future: F) -> Result<F::Output> {
    let runtime = thread_runtime()?;
    let local = tokio::task::LocalSet::new();
    let (starts_tx, mut starts) = mpsc::unbounded_channel::<HostedStart>();
    local.spawn_local(async move {
        while let Some(start) = starts.recv().await {
            tokio::task::spawn_local(start());
        }
    });
    let previous = HOST.with(|host| host.borrow_mut().replace(starts_tx));
    let output = local.block_on(&runtime, future);
    HOST.with(|host| *host.borrow_mut() = previous);
    // Drop the connection tasks inside the runtime they belong to.
    let _guard = runtime.enter();
    drop(local);
    Ok(output)
}

/// Starts the connection task `start` builds: on the hosting thread when
/// called from one (see [`run_hosted`]), else on a new OS thread `name`
/// running a current-thread runtime and a `LocalSet`, returned to be
/// joined.
fn start_task(name: String, start: HostedStart) -> Result<Option<std::thread::JoinHandle<()>>> {
    let start = match HOST.with(|host| host.borrow().clone()) {
        Some(host) => match host.send(start) {
            Ok(()) => return Ok(None),
            Err(mpsc::error::SendError(start)) => start,
        },
        None => start,
    };
    let runtime = thread_runtime()?;
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, start());
            // Drop the connection tasks inside the runtime they belong to.
            let _guard = runtime.enter();
            drop(local);
        })
        .map_err(|e| Error::internal(format!("cannot start thread {name}: {e}")).caused_by(e))?;
    Ok(Some(thread))
}

/// Builds a current-thread runtime for a connection thread, or for the
/// thread of [`run_hosted`].
fn thread_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::internal(format!("cannot build an RPC thread's tokio runtime: {e}")).caused_by(e)
        })
}

// ---------------------------------------------------------------------------
// Server side

/// The services a [`RpcServerThread`] can serve.
#[derive(Clone, Default)]
pub struct RpcServices {
    mds: Option<(Arc<dyn MetadataService>, Arc<dyn CsRegistry>)>,
    group: Option<Arc<dyn MdsGroup>>,
    raft: Option<MdsRaft>,
    /// The snapshot this server's Raft node is receiving (one per node).
    snapshot_intake: Arc<crate::raft::SnapshotIntake>,
    /// The chunk servers' registrations in parts this server holds.
    registration_intake: Arc<crate::registration::RegistrationIntake>,
    control: Option<Arc<dyn ChunkControl>>,
    /// Issues certificates (`issueCertificate`, `joinSecrets`) when present.
    enrollment: Option<Arc<crate::enroll::Enrollment>>,
    /// The certificate table (`revokeCertificates`, ...) when present.
    certs: Option<Arc<dyn pstorage_core::traits::CertificateRegistry>>,
}

impl RpcServices {
    /// No services yet; add them with the `with_` methods.
    pub fn new() -> RpcServices {
        RpcServices::default()
    }

    /// Serves the `Mds` interface from these implementations.
    pub fn with_mds(
        mut self,
        metadata: Arc<dyn MetadataService>,
        registry: Arc<dyn CsRegistry>,
    ) -> RpcServices {
        self.mds = Some((metadata, registry));
        self
    }

    /// Serves the `MdsGroup` methods of the `Mds` interface (`allocateMdsId`,
    /// `addMds`, `removeMds`) from this implementation. Without it they
    /// answer `Unavailable`. Needs [`RpcServices::with_mds`] to be served.
    pub fn with_group(mut self, group: Arc<dyn MdsGroup>) -> RpcServices {
        self.group = Some(group);
        self
    }

    /// Hands the Raft messages of the `Mds` interface (`raftAppend`,
    /// `raftVote`, `raftSnapshot`) to this Raft node. Without it they answer
    /// `Unavailable`. Needs [`RpcServices::with_mds`] to be served.
    pub fn with_raft(mut self, raft: MdsRaft) -> RpcServices {
        self.raft = Some(raft);
        self
    }

    /// Serves `issueCertificate` and `joinSecrets` of the `Mds` interface
    /// with this MDS's CA and cluster key. Without it they answer
    /// `Unavailable`.
    pub fn with_enrollment(mut self, enrollment: Arc<crate::enroll::Enrollment>) -> RpcServices {
        self.enrollment = Some(enrollment);
        self
    }

    /// Serves the certificate table's methods of the `Mds` interface
    /// (`recordCertificate`, `revokeCertificates`, `certificates`,
    /// `revokedSerials`, `logSecurityEvent`) from this implementation.
    /// Without it they answer `Unavailable`.
    pub fn with_certs(
        mut self,
        certs: Arc<dyn pstorage_core::traits::CertificateRegistry>,
    ) -> RpcServices {
        self.certs = Some(certs);
        self
    }

    /// Serves the `ChunkControl` interface from this implementation.
    pub fn with_control(mut self, control: Arc<dyn ChunkControl>) -> RpcServices {
        self.control = Some(control);
        self
    }
}

/// Which interface a connection gets as its bootstrap capability.
#[derive(Debug, Clone, Copy)]
enum Interface {
    Mds,
    Control,
}

/// A connection handed to the server thread.
struct Incoming {
    stream: std::net::TcpStream,
    interface: Interface,
    /// Held until the TLS handshake ends (the accept loop's bound).
    slot: Option<HandshakeSlot>,
}

/// A dedicated OS thread that serves control-RPC connections (or, started
/// under [`run_hosted`], tasks on the hosting thread).
///
/// Every connection runs as its own task on the thread, so a malformed
/// message, a protocol violation or a panic in a service kills only that
/// connection. The service futures run on this thread too: a service method
/// that blocks the thread stalls every connection of this server.
///
/// Dropping it closes every connection it serves and joins the thread
/// (hosted: the connections' tasks are aborted).
pub struct RpcServerThread {
    incoming: Option<mpsc::UnboundedSender<Incoming>>,
    thread: Option<std::thread::JoinHandle<()>>,
    has_mds: bool,
    has_control: bool,
    connections: Arc<AtomicUsize>,
}

impl RpcServerThread {
    /// Starts the thread. `name` names the OS thread (for `top -H`, logs);
    /// `credentials` are what the connections' TLS handshakes show and
    /// check.
    pub fn spawn(
        name: &str,
        credentials: Credentials,
        services: RpcServices,
    ) -> Result<RpcServerThread> {
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let has_mds = services.mds.is_some();
        let has_control = services.control.is_some();
        let thread_connections = connections.clone();
        let thread = start_task(
            name.to_owned(),
            Box::new(move || {
                Box::pin(run_server(
                    incoming_rx,
                    credentials,
                    services,
                    thread_connections,
                ))
            }),
        )
        .map_err(|e| e.context(format!("starting RPC server {name}")))?;
        Ok(RpcServerThread {
            incoming: Some(incoming_tx),
            thread,
            has_mds,
            has_control,
            connections,
        })
    }

    /// Serves the `Mds` interface on a connection whose preface asked for
    /// the control channel: the thread runs the TLS handshake (the client
    /// must show a certificate of the cluster CA), then serves calls, each
    /// checked against the client's role, until the peer disconnects.
    /// `slot` is released once the handshake ends. Errors: `Internal` if
    /// this server has no MDS service or its thread stopped; `Io` if the
    /// stream is unusable.
    pub fn serve_mds(&self, stream: TcpStream, slot: Option<HandshakeSlot>) -> Result<()> {
        if !self.has_mds {
            return Err(Error::internal(
                "this RPC server has no MDS service: build it with RpcServices::with_mds",
            ));
        }
        self.hand_over(stream, Interface::Mds, slot)
    }

    /// Serves the `ChunkControl` interface, as [`RpcServerThread::serve_mds`].
    pub fn serve_control(&self, stream: TcpStream, slot: Option<HandshakeSlot>) -> Result<()> {
        if !self.has_control {
            return Err(Error::internal(
                "this RPC server has no chunk control service: build it with RpcServices::with_control",
            ));
        }
        self.hand_over(stream, Interface::Control, slot)
    }

    /// Whether it runs on a thread of its own, not hosted (see
    /// [`run_hosted`]).
    pub fn runs_on_own_thread(&self) -> bool {
        self.thread.is_some()
    }

    /// How many connections are being served right now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn hand_over(
        &self,
        stream: TcpStream,
        interface: Interface,
        slot: Option<HandshakeSlot>,
    ) -> Result<()> {
        let stream = stream.into_std()?;
        self.incoming
            .as_ref()
            .expect("the sender lives until drop")
            .send(Incoming {
                stream,
                interface,
                slot,
            })
            .map_err(|_| Error::internal("the RPC server thread has stopped"))
    }
}

impl Drop for RpcServerThread {
    fn drop(&mut self) {
        // Closing the channel ends the accept loop, which drops every connection.
        self.incoming.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the RPC server thread panicked");
            }
        }
    }
}

/// Counts a connection as served while it lives.
struct ConnectionCount(Arc<AtomicUsize>);

impl ConnectionCount {
    fn new(count: Arc<AtomicUsize>) -> ConnectionCount {
        count.fetch_add(1, Ordering::SeqCst);
        ConnectionCount(count)
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run_server(
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    credentials: Credentials,
    services: RpcServices,
    connections: Arc<AtomicUsize>,
) {
    // The connections' tasks: dropped (aborted) when the server stops,
    // hosted or not.
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            next = incoming.recv() => next,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Some(Incoming {
            stream,
            interface,
            slot,
        }) = next
        else {
            break;
        };
        let peer_addr = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "an unknown peer".into());
        let stream = match TcpStream::from_std(stream).and_then(|s| s.set_nodelay(true).map(|()| s))
        {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("dropping {interface:?} connection from {peer_addr}: {e}");
                continue;
            }
        };
        let count = ConnectionCount::new(connections.clone());
        let (credentials, services) = (credentials.clone(), services.clone());
        tasks.spawn_local(async move {
            let _count = count;
            let accepted =
                crate::auth::accept_tls(stream, &credentials, crate::auth::Channel::Control).await;
            drop(slot);
            let (stream, peer) = match accepted {
                Ok((stream, Some(peer))) => (stream, peer),
                Ok((_, None)) => return,
                Err(e) => {
                    tracing::warn!("refused {interface:?} connection from {peer_addr}: {e}");
                    return;
                }
            };
            let bootstrap = bootstrap_for(interface, &services, peer.clone());
            let options =
                wire::request_reader_options(matches!(interface, Interface::Mds), peer.role);
            let system =
                RpcSystem::new(vat_network(stream, Side::Server, options), Some(bootstrap));
            let served = async {
                match system.await {
                    Ok(()) => tracing::debug!(
                        "{interface:?} connection from {peer} at {peer_addr} closed"
                    ),
                    Err(e) => tracing::info!(
                        "{interface:?} connection from {peer} at {peer_addr} closed: {e}"
                    ),
                }
            };
            let revocations = credentials.revocations();
            if crate::revocation::unless_revoked(revocations, peer.serial, served).await {
                tracing::warn!(
                    "closed the {interface:?} connection of {peer} at {peer_addr}: its \
                     certificate was revoked"
                );
            }
        });
    }
}

/// The bootstrap capability of a connection from `peer`.
fn bootstrap_for(
    interface: Interface,
    services: &RpcServices,
    peer: Peer,
) -> capnp::capability::Client {
    match (interface, services) {
        (
            Interface::Mds,
            RpcServices {
                mds: Some((metadata, registry)),
                group,
                raft,
                snapshot_intake,
                registration_intake,
                enrollment,
                certs,
                ..
            },
        ) => crate::mds::bootstrap(
            crate::mds::MdsServices {
                metadata: metadata.clone(),
                registry: registry.clone(),
                group: group.clone(),
                raft: raft.clone(),
                snapshot_intake: snapshot_intake.clone(),
                registration_intake: registration_intake.clone(),
                enrollment: enrollment.clone(),
                certs: certs.clone(),
            },
            peer,
        ),
        (
            Interface::Control,
            RpcServices {
                control: Some(control),
                ..
            },
        ) => crate::control::bootstrap(control.clone(), peer),
        // serve_mds / serve_control checked this before handing over.
        _ => unreachable!("connection for a service this server does not have"),
    }
}

// ---------------------------------------------------------------------------
// Client side

/// A live connection as a call sees it.
struct Link<C> {
    client: C,
    addr: Rc<str>,
    /// Cleared when the RPC system of this connection ends or a call on it
    /// saw it break: the next call then reconnects.
    alive: Rc<Cell<bool>>,
    /// Closes the connection: taken by the first `drop_connection`.
    closer: Rc<Cell<Option<Closer>>>,
    endpoints: Arc<dyn Endpoints>,
}

/// What closes a connection: its RPC system's disconnector (which fails
/// the calls in flight with `Disconnected`) and its task.
struct Closer {
    disconnector: capnp_rpc::Disconnector<twoparty::VatId>,
    task: tokio::task::AbortHandle,
}

impl<C: Clone> Clone for Link<C> {
    fn clone(&self) -> Self {
        Link {
            client: self.client.clone(),
            addr: self.addr.clone(),
            alive: self.alive.clone(),
            closer: self.closer.clone(),
            endpoints: self.endpoints.clone(),
        }
    }
}

impl<C> Link<C> {
    /// Gives up on the connection: the next call dials again, trying the
    /// other addresses first. The connection itself is closed `grace`
    /// later, so that the calls still in flight on it end at their own
    /// deadlines (`TimedOut`) rather than at once; a call still waiting
    /// then fails `Unavailable`.
    fn drop_connection(&self, grace: Duration) {
        self.alive.set(false);
        self.endpoints.failed(&self.addr);
        if let Some(Closer { disconnector, task }) = self.closer.take() {
            tokio::task::spawn_local(async move {
                tokio::time::sleep(grace).await;
                // The first poll fails every call in flight; the orderly
                // shutdown that follows may wait for the (frozen) peer.
                let _ = tokio::time::timeout(Duration::from_secs(1), disconnector).await;
                task.abort();
            });
        }
    }

    /// Turns a Cap'n Proto failure of `method` into a pstorage error, with
    /// the `capnp::Error` as its source.
    fn call_failed(&self, service: &str, method: &str, e: capnp::Error) -> Error {
        let addr = &self.addr;
        let error = match e.kind {
            capnp::ErrorKind::Disconnected => {
                self.alive.set(false);
                self.endpoints.failed(addr);
                Error::unavailable(format!(
                    "the connection to {service} at {addr} broke during {method}, which may or \
                     may not have taken effect; the next call reconnects ({e})"
                ))
            }
            capnp::ErrorKind::Unimplemented => Error::protocol(format!(
                "{service} at {addr} does not implement {method}: it runs another pstorage \
                 version; upgrade it ({e})"
            )),
            capnp::ErrorKind::Overloaded => {
                Error::unavailable(format!("{service} at {addr} is overloaded: {e}"))
            }
            capnp::ErrorKind::Failed if e.extra.contains(crate::roles::DENIED) => Error::new(
                ErrorKind::PermissionDenied,
                format!("{method}: {service} at {addr} refused it: {}", e.extra),
            ),
            _ => Error::protocol(format!(
                "{method} with {service} at {addr} failed in the RPC layer: {e}"
            )),
        };
        error.caused_by(e)
    }
}

/// One call on its way to the client thread: run it on a link, or fail it
/// with the error that prevented connecting.
type Job<C> = Box<dyn FnOnce(Result<Link<C>>) -> LocalBoxFuture<'static, ()> + Send>;

/// A `Send + Sync` handle to a thread that owns one client connection of
/// interface `C` (a generated capnp client), reconnecting on demand.
///
/// The thread ends when the last handle is dropped.
pub(crate) struct ClientActor<C> {
    jobs: mpsc::UnboundedSender<Job<C>>,
    service: &'static str,
    call_timeout: Option<Duration>,
    /// A call that times out closes the connection (see `spawn_following`).
    drop_on_timeout: bool,
    connected: Arc<AtomicBool>,
    /// It runs on a thread of its own (not hosted: see [`run_hosted`]).
    own_thread: bool,
}

impl<C> Clone for ClientActor<C> {
    fn clone(&self) -> Self {
        ClientActor {
            jobs: self.jobs.clone(),
            service: self.service,
            call_timeout: self.call_timeout,
            drop_on_timeout: self.drop_on_timeout,
            connected: self.connected.clone(),
            own_thread: self.own_thread,
        }
    }
}

impl<C: FromClientHook + Clone + 'static> ClientActor<C> {
    /// Starts the thread. `service` names the peer in errors ("MDS");
    /// `addrs` are tried in order at every (re)connection. A call that
    /// times out leaves the connection open (other calls on it may be
    /// long by design).
    pub(crate) fn spawn(
        service: &'static str,
        addrs: Vec<String>,
        dialer: Dialer,
        options: ClientOptions,
    ) -> Result<ClientActor<C>> {
        Self::start(
            service,
            Arc::new(FixedEndpoints(addrs)),
            dialer,
            options,
            false,
        )
    }

    /// Starts the thread for a replicated service whose members
    /// `endpoints` knows: a call that times out closes the connection and
    /// counts as a failure of that address, so the next call dials again,
    /// trying the other members first (a frozen MDS accepts connections and
    /// never answers).
    pub(crate) fn spawn_following(
        service: &'static str,
        endpoints: Arc<dyn Endpoints>,
        dialer: Dialer,
        options: ClientOptions,
    ) -> Result<ClientActor<C>> {
        Self::start(service, endpoints, dialer, options, true)
    }

    fn start(
        service: &'static str,
        endpoints: Arc<dyn Endpoints>,
        dialer: Dialer,
        options: ClientOptions,
        drop_on_timeout: bool,
    ) -> Result<ClientActor<C>> {
        if endpoints.addrs().is_empty() {
            return Err(Error::invalid(format!(
                "no {service} address given: list at least one host:port"
            )));
        }
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let call_timeout = options.call_timeout;
        let dialing = Dialing {
            service,
            endpoints,
            dialer,
            options,
        };
        let thread_connected = connected.clone();
        let thread = start_task(
            format!("pstorage {service} client"),
            Box::new(move || Box::pin(run_client(jobs_rx, dialing, thread_connected))),
        )
        .map_err(|e| e.context(format!("starting the {service} client")))?;
        Ok(ClientActor {
            jobs: jobs_tx,
            service,
            call_timeout,
            drop_on_timeout,
            connected,
            // The thread ends by itself when the last handle goes.
            own_thread: thread.is_some(),
        })
    }

    /// A handle on the same connection whose calls wait at most `timeout`
    /// for their answer (`None`: as long as the connection lives).
    pub(crate) fn with_call_timeout(&self, timeout: Option<Duration>) -> ClientActor<C> {
        ClientActor {
            call_timeout: timeout,
            ..self.clone()
        }
    }

    /// Whether it runs on a thread of its own (not hosted).
    pub(crate) fn runs_on_own_thread(&self) -> bool {
        self.own_thread
    }

    /// The call timeout of this handle.
    pub(crate) fn call_timeout(&self) -> Option<Duration> {
        self.call_timeout
    }

    /// Whether a connection is established right now (diagnostics; the
    /// answer may be outdated by the time it is read).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Runs `call` on the connection (connecting first if needed) and
    /// returns its outcome. A transport failure becomes `Unavailable` (the
    /// connection broke: the call may or may not have taken effect) or
    /// `Protocol`, an expired `call_timeout` becomes `TimedOut`; a call is
    /// never resent.
    pub(crate) async fn call<T, F, Fut>(&self, method: &'static str, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(C) -> Fut + Send + 'static,
        Fut: Future<Output = capnp::Result<Result<T>>> + 'static,
    {
        let (service, call_timeout, drop_on_timeout) =
            (self.service, self.call_timeout, self.drop_on_timeout);
        let (reply_tx, reply_rx) = oneshot::channel();
        let sending = SENDING.try_with(Arc::clone).ok();
        let job: Job<C> = Box::new(move |link: Result<Link<C>>| {
            Box::pin(async move {
                let sent = link.is_ok();
                if let (true, Some(flag)) = (sent, sending) {
                    flag.store(true, Ordering::SeqCst);
                }
                let outcome = match link {
                    Err(e) => Err(e),
                    Ok(link) => {
                        let reply = call(link.client.clone());
                        let reply = match call_timeout {
                            None => Ok(reply.await),
                            Some(limit) => tokio::time::timeout(limit, reply).await,
                        };
                        match reply {
                            Ok(Ok(outcome)) => outcome,
                            Ok(Err(e)) => Err(link.call_failed(service, method, e)),
                            Err(_) => {
                                let next = if drop_on_timeout {
                                    // A frozen peer: stop waiting on it.
                                    link.drop_connection(call_timeout.unwrap_or_default());
                                    "; the connection was closed and the next call tries \
                                     another address"
                                } else {
                                    ""
                                };
                                Err(Error::new(
                                    ErrorKind::TimedOut,
                                    format!(
                                        "{service} at {} did not answer {method} within {} ms; \
                                         it may or may not have taken effect{next}",
                                        link.addr,
                                        call_timeout.unwrap_or_default().as_millis()
                                    ),
                                ))
                            }
                        }
                    }
                };
                // The caller may have given up waiting; nothing to do then.
                let _ = reply_tx.send((outcome, sent));
            })
        });
        let stopped = || Error::internal(format!("the {service} client thread has stopped"));
        self.jobs.send(job).map_err(|_| stopped())?;
        let (outcome, sent) = reply_rx.await.map_err(|_| stopped())?;
        if !sent {
            // Tell a surrounding `track_delivery` that this call never left.
            let _ = NOT_SENT.try_with(|flag| flag.set(true));
        }
        outcome
    }
}

tokio::task_local! {
    /// Set by a [`ClientActor::call`] made inside [`track_delivery`] when the
    /// call failed before it was sent (no connection could be made).
    static NOT_SENT: Cell<bool>;
}

tokio::task_local! {
    /// Set by a [`ClientActor::call`] made inside [`track_sending`] as soon
    /// as the call goes out on a connection.
    static SENDING: Arc<AtomicBool>;
}

/// Runs `call` (which makes client calls) and sets `sent` as soon as one of
/// them has gone out on a connection: from then on it may take effect.
pub(crate) async fn track_sending<F: Future>(sent: Arc<AtomicBool>, call: F) -> F::Output {
    SENDING.scope(sent, call).await
}

/// Runs `call` (which makes client calls through `MdsClient` or
/// `ControlClient`) and tells whether every failed call it made failed
/// before being sent: `true` in the second field means some call could not
/// even reach the peer (dial failure), so it certainly did not take effect
/// and may be retried elsewhere.
pub(crate) async fn track_delivery<F: Future>(call: F) -> (F::Output, bool) {
    NOT_SENT
        .scope(Cell::new(false), async move {
            let output = call.await;
            (output, NOT_SENT.with(Cell::get))
        })
        .await
}

/// Where and how a client thread connects.
struct Dialing {
    service: &'static str,
    endpoints: Arc<dyn Endpoints>,
    dialer: Dialer,
    options: ClientOptions,
}

impl Dialing {
    /// Dials the addresses in the order `endpoints` gives (asked again at
    /// every round), each attempt within [`DIAL_ATTEMPT_TIMEOUT`], in
    /// rounds with backoff, until one answers or `connect_timeout` passes.
    /// Errors the dialer reports as not worth retrying (a refused key, a
    /// bad address) fail at once.
    async fn dial(&self) -> Result<(String, ClientStream)> {
        let service = self.service;
        let deadline = Instant::now() + self.options.connect_timeout;
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let addrs = self.endpoints.addrs();
            let mut failures = Vec::with_capacity(addrs.len());
            for addr in &addrs {
                // Give every address a chance even if the deadline is near,
                // so that a short timeout still tries each one once.
                let attempt_timeout = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(100))
                    .min(DIAL_ATTEMPT_TIMEOUT);
                match tokio::time::timeout(attempt_timeout, (self.dialer)(addr.clone())).await {
                    Ok(Ok(stream)) => {
                        self.endpoints.connected(addr);
                        return Ok((addr.clone(), stream));
                    }
                    Ok(Err(e)) if !dial_error_is_transient(&e) => {
                        return Err(e.context(format!("connecting to {service} at {addr}")));
                    }
                    Ok(Err(e)) => {
                        self.endpoints.failed(addr);
                        failures.push(format!("{addr}: {}", e.message()));
                    }
                    Err(_) => {
                        self.endpoints.failed(addr);
                        failures.push(format!(
                            "{addr}: no answer within {} ms",
                            attempt_timeout.as_millis()
                        ));
                    }
                }
            }
            if addrs.is_empty() {
                failures.push("no address known".to_string());
            }
            if Instant::now() + backoff >= deadline {
                return Err(Error::unavailable(format!(
                    "no {service} reachable at {} (retried for {} s; check that it runs and the \
                     address is right)",
                    failures.join(", "),
                    self.options.connect_timeout.as_secs_f64()
                )));
            }
            tracing::debug!(
                "no {service} reachable yet ({}), retrying in {backoff:?}",
                failures.join(", ")
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Dials and starts the RPC system of a new connection on this thread.
    async fn connect<C: FromClientHook>(
        &self,
        generation: &Rc<Cell<u64>>,
        connected: &Arc<AtomicBool>,
    ) -> Result<Link<C>> {
        let (addr, stream) = self.dial().await?;
        let mut system = RpcSystem::new(
            vat_network(stream, Side::Client, wire::reader_options()),
            None,
        );
        let client: C = system.bootstrap(Side::Server);
        let disconnector = system.get_disconnector();
        generation.set(generation.get() + 1);
        let link_generation = generation.get();
        let alive = Rc::new(Cell::new(true));
        connected.store(true, Ordering::SeqCst);
        let addr: Rc<str> = addr.into();
        let ended = SystemEnded {
            alive: alive.clone(),
            generation: generation.clone(),
            link_generation,
            connected: connected.clone(),
        };
        let (service, task_addr) = (self.service, addr.clone());
        let task = tokio::task::spawn_local(async move {
            // Marks the link dead however the task ends (aborted too).
            let _ended = ended;
            match system.await {
                Ok(()) => tracing::debug!("connection to {service} at {task_addr} closed"),
                Err(e) => tracing::info!("connection to {service} at {task_addr} closed: {e}"),
            }
        });
        tracing::debug!("connected to {service} at {addr}");
        Ok(Link {
            client,
            addr,
            alive,
            closer: Rc::new(Cell::new(Some(Closer {
                disconnector,
                task: task.abort_handle(),
            }))),
            endpoints: self.endpoints.clone(),
        })
    }
}

/// Runs when the RPC system of a connection ends (or is aborted): the link
/// is dead, and unless a newer connection replaced it, nothing is connected.
struct SystemEnded {
    alive: Rc<Cell<bool>>,
    generation: Rc<Cell<u64>>,
    link_generation: u64,
    connected: Arc<AtomicBool>,
}

impl Drop for SystemEnded {
    fn drop(&mut self) {
        self.alive.set(false);
        if self.generation.get() == self.link_generation {
            self.connected.store(false, Ordering::SeqCst);
        }
    }
}

/// Whether a dial failure may go away by itself (the peer is starting,
/// restarting, or briefly unreachable).
fn dial_error_is_transient(e: &Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::PermissionDenied | ErrorKind::InvalidArgument | ErrorKind::Protocol
    )
}

async fn run_client<C: FromClientHook + Clone + 'static>(
    mut jobs: mpsc::UnboundedReceiver<Job<C>>,
    dialing: Dialing,
    connected: Arc<AtomicBool>,
) {
    let generation = Rc::new(Cell::new(0u64));
    let mut link: Option<Link<C>> = None;
    while let Some(job) = jobs.recv().await {
        // Let the RPC task of the current connection run first, so that a
        // connection the peer has closed is noticed before it is picked for
        // this call rather than by the call failing.
        tokio::task::yield_now().await;
        let current = match link.as_ref().filter(|l| l.alive.get()) {
            Some(current) => current.clone(),
            None => {
                link = None;
                match dialing.connect::<C>(&generation, &connected).await {
                    Ok(new_link) => link.insert(new_link).clone(),
                    Err(e) => {
                        // The calls queued behind this one waited through the
                        // whole dial already: fail them too.
                        tokio::task::spawn_local(job(Err(e.clone())));
                        while let Ok(job) = jobs.try_recv() {
                            tokio::task::spawn_local(job(Err(e.clone())));
                        }
                        continue;
                    }
                }
            }
        };
        tokio::task::spawn_local(job(Ok(current)));
    }
}
