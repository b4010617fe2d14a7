//! `pstorage nbd-serve`: cluster files as NBD block devices.
//!
//! An NBD server (protocol: `doc/proto.md` of github.com/NetworkBlockDevice/nbd)
//! written by hand over the client SDK. An export is named by the cluster
//! path of a file (`nbd://127.0.0.1:10809/vm/disk.img` or
//! `nbd://127.0.0.1:10809//vm/disk.img` both export `/vm/disk.img`); its size
//! is the file's size (`pstorage truncate -s SIZE PATH` creates or resizes
//! one).
//!
//! What the server promises:
//! - fixed newstyle handshake with `NBD_OPT_GO`, `INFO`, `LIST`, `ABORT`,
//!   `EXPORT_NAME` (old clients) and, with `--tls`, `STARTTLS` (required:
//!   certificates of the cluster CA on both ends); simple replies only;
//! - `READ`, `WRITE`, `FLUSH`, `FUA`, `TRIM`, `WRITE_ZEROES`, `DISC`, many
//!   requests in flight per connection, answered as they complete;
//! - `FLUSH` and `FUA` return once the data is durable on every replica
//!   ([`File::flush`](pstorage_core::client::File::flush)); concurrent
//!   flushes of an export share one flush of the file;
//! - the first connection to an export opens the file with a write lease
//!   (read lease with `--read-only`), held until the last connection to it
//!   leaves: another server process asking for the same file is refused
//!   with `NBD_REP_ERR_POLICY` and a message naming the conflict (a missing
//!   file gets `NBD_REP_ERR_UNKNOWN`);
//! - every connection to an export shares one file handle, which is why
//!   `NBD_FLAG_CAN_MULTI_CONN` is advertised (see `export.rs`);
//! - requests beyond the export or larger than 32 MiB get the protocol's
//!   error replies (`EINVAL`, `ENOSPC`, `EPERM` on a read-only export); a
//!   request with a bad magic closes that connection only.

mod error;
pub mod export;
pub mod handshake;
pub mod proto;
pub mod transmission;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pstorage_rpc::metrics::{MetricsText, OpHistograms};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use pstorage_core::client::Client;
use pstorage_core::types::{LeaseMode, OpenFlags};
use pstorage_core::{Error, Result};

pub use error::NbdError;
use export::Exports;
use handshake::{Negotiated, TlsState};
use pstorage_rpc::pki::Role;

/// The default listen address (the NBD port, loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";
/// The default mode of a Unix socket listener: only its user connects.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Connections served at once at most; one more is closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to choose an export.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown waits for connections to finish their requests and
/// for exports to be flushed and closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// Where and how `nbd-serve` serves.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// TCP `ADDR:PORT` to listen on. With neither this nor `socket`,
    /// [`DEFAULT_LISTEN`]. Port 0 picks a free port (printed at start).
    pub listen: Option<String>,
    /// Unix socket path to listen on (a stale socket file is replaced).
    pub socket: Option<PathBuf>,
    /// The Unix socket's mode (0: [`DEFAULT_SOCKET_MODE`]).
    pub socket_mode: u32,
    /// Serve only files below this cluster directory (`None`: all).
    pub export_dir: Option<String>,
    /// Allow a TCP listener on a non-loopback address without TLS (no
    /// authentication, no encryption: a trusted network only).
    pub insecure: bool,
    /// TLS (`NBD_OPT_STARTTLS`), required of every client: this server's
    /// configuration ([`pstorage_rpc::tls::nbd_server_config`]: the node's
    /// certificate; clients must show a certificate of the cluster CA).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Refuse writes, and open files with read leases.
    pub read_only: bool,
    /// `HOST:PORT` to serve Prometheus metrics on (`GET /metrics`).
    pub metrics: Option<String>,
}

/// An open connection, counted by [`NbdMetrics`].
struct ConnectionGuard(Arc<NbdMetrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What `nbd-serve` counts for its metrics endpoint.
pub struct NbdMetrics {
    ops: OpHistograms,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    errors: AtomicU64,
    connections: AtomicI64,
}

impl Default for NbdMetrics {
    fn default() -> Self {
        NbdMetrics {
            ops: OpHistograms::new(
                "pstorage_nbd_request_seconds",
                "NBD requests by command, and how long they took.",
            )
            .expect("a valid metric name"),
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connections: AtomicI64::new(0),
        }
    }
}

impl NbdMetrics {
    /// Accounts one request of command `op` over `length` bytes, answered
    /// with NBD error `error` (0: success) after `took`.
    pub fn done(&self, op: &str, length: u32, error: u32, took: Duration) {
        self.ops.observe(op, took);
        let counter = match (error, op) {
            (0, "READ") => &self.read_bytes,
            (0, "WRITE") => &self.written_bytes,
            (0, _) => return,
            _ => &self.errors,
        };
        let n = if error == 0 { u64::from(length) } else { 1 };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an open connection until the guard is dropped.
    fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// The metrics text of one scrape.
    fn render(&self) -> String {
        let mut m = MetricsText::new();
        m.histograms(&self.ops);
        m.counter(
            "pstorage_nbd_read_bytes_total",
            "Bytes read by NBD clients.",
            self.read_bytes.load(Ordering::Relaxed),
        );
        m.counter(
            "pstorage_nbd_written_bytes_total",
            "Bytes written by NBD clients.",
            self.written_bytes.load(Ordering::Relaxed),
        );
        m.counter(
            "pstorage_nbd_errors_total",
            "NBD requests answered with an error.",
            self.errors.load(Ordering::Relaxed),
        );
        m.gauge(
            "pstorage_nbd_connections",
            "NBD connections open.",
            self.connections.load(Ordering::Relaxed),
        );
        pstorage_rpc::call_metrics::CLIENT_CS.render_into(&mut m);
        pstorage_rpc::call_metrics::CLIENT_MDS.render_into(&mut m);
        m.render()
    }
}

/// Serves cluster files over NBD until `shutdown` resolves, then stops
/// accepting, lets every connection finish the requests it has in flight,
/// and closes every export (flushing it and releasing its lease).
///
/// Prints one line per listener to stdout once it accepts connections:
/// `nbd-serve: listening on tcp 127.0.0.1:10809` or `... on unix PATH`.
/// Errors: the address cannot be bound, or the socket path is in use.
pub async fn serve(
    client: Client,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let metrics = Arc::new(NbdMetrics::default());
    let metrics_listener = match &options.metrics {
        Some(addr) => Some(pstorage_rpc::metrics::bind(addr).await?),
        None => None,
    };
    let export_dir = match &options.export_dir {
        Some(dir) => Some(export::export_dir(dir)?),
        None => None,
    };
    let tcp = match (&options.listen, &options.socket) {
        (Some(addr), _) => Some(bind_tcp(addr).await?),
        (None, None) => Some(bind_tcp(DEFAULT_LISTEN).await?),
        (None, Some(_)) => None,
    };
    if let Some(l) = &tcp {
        let addr = l.local_addr()?;
        if !addr.ip().is_loopback() && !options.insecure && options.tls.is_none() {
            return Err(Error::new(
                pstorage_core::ErrorKind::PermissionDenied,
                format!(
                    "nbd-serve will not listen on {addr} without TLS: anyone who reaches that \
                     address could read and write every exported disk. Give --tls (clients \
                     then need a certificate of the cluster CA), listen on 127.0.0.1 or a Unix \
                     socket (--socket), or pass --insecure on a trusted network"
                ),
            ));
        }
    }
    let unix = match &options.socket {
        Some(path) => {
            let mode = match options.socket_mode {
                0 => DEFAULT_SOCKET_MODE,
                m => m,
            };
            Some(bind_unix(path, mode).await?)
        }
        None => None,
    };
    if let Some(l) = &tcp {
        println!("nbd-serve: listening on tcp {}", l.local_addr()?);
    }
    if let Some(path) = &options.socket {
        println!("nbd-serve: listening on unix {}", path.display());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = metrics_listener.map(|listener| {
        let metrics = metrics.clone();
        let render: pstorage_rpc::metrics::Render =
            Arc::new(move || Box::pin(std::future::ready(metrics.render())));
        tokio::spawn(pstorage_rpc::metrics::serve(listener, render, async {
            let _ = metrics_stopped.await;
        }))
    });
    let exports = Exports::new(client, options.read_only, metrics.clone(), export_dir);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept_tcp(&tcp) => match accepted {
                Ok((stream, peer)) if connections.len() >= MAX_CONNECTIONS => {
                    tracing::warn!(%peer, "refused a connection: {MAX_CONNECTIONS} are served already");
                    drop(stream);
                }
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (r, w) = stream.into_split();
                    connections.spawn(connection(r, w, peer.to_string(), exports.clone(), options.tls.clone(), stop_rx.clone()));
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_unix(&unix) => match accepted {
                Ok(stream) if connections.len() >= MAX_CONNECTIONS => {
                    tracing::warn!("refused a connection: {MAX_CONNECTIONS} are served already");
                    drop(stream);
                }
                Ok(stream) => {
                    let (r, w) = stream.into_split();
                    connections.spawn(connection(r, w, "unix".to_string(), exports.clone(), options.tls.clone(), stop_rx.clone()));
                }
                Err(e) => accept_failed(e).await,
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::info!(connections = connections.len(), "nbd-serve shutting down");
    drop(tcp);
    drop(unix);
    if let Some(path) = &options.socket {
        let _ = std::fs::remove_file(path);
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "connections did not finish within {SHUTDOWN_GRACE:?}; closing exports anyway"
        );
        connections.abort_all();
    }
    exports.close_all().await;
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    Ok(())
}

async fn bind_tcp(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        Error::from(e).context(format!(
            "cannot listen on {addr}; pick another address with --listen ADDR:PORT"
        ))
    })
}

async fn bind_unix(path: &std::path::Path, mode: u32) -> Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(Error::new(
                pstorage_core::ErrorKind::Busy,
                format!(
                    "{} is in use by a running server; stop it or choose another --socket",
                    path.display()
                ),
            ));
        }
        // A socket left behind by a server that died.
        std::fs::remove_file(path).map_err(|e| Error::from(e).context(path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::from(e).context(format!("cannot listen on {}", path.display())))?;
    // Whoever may connect may read and write every export: the socket's
    // mode is the access control.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::from(e).context(format!("setting the mode of {}", path.display())))?;
    Ok(listener)
}

async fn accept_tcp(
    l: &Option<TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match l {
        Some(l) => {
            let (stream, peer) = l.accept().await?;
            // Keepalive and a user timeout: a hypervisor host that lost
            // power does not leave its connection (and lease) behind.
            if let Err(e) = pstorage_rpc::auth::configure_socket(&stream) {
                tracing::warn!(%peer, "setting socket options on an NBD connection: {e}");
            }
            Ok((stream, peer))
        }
        None => std::future::pending().await,
    }
}

async fn accept_unix(l: &Option<UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn accept_failed(e: std::io::Error) {
    // Out of file descriptors and the like: pause instead of spinning.
    tracing::warn!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One client connection: handshake (TLS when `tls` is given), then
/// transmission on the chosen export.
async fn connection<R, W>(
    reader: R,
    writer: W,
    peer: String,
    exports: Arc<Exports>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut stream = tokio::io::join(reader, writer);
    let state = match tls {
        Some(_) => TlsState::Required,
        None => TlsState::Unavailable,
    };
    let negotiated = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake::negotiate(&mut stream, &exports, state)) => r,
        _ = stop.wait_for(|s| *s) => return,
    };
    let negotiated = match negotiated {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::warn!(peer, error = %e, "NBD handshake failed; connection closed");
            return;
        }
        Err(_) => {
            tracing::warn!(
                peer,
                "NBD handshake took longer than {HANDSHAKE_TIMEOUT:?}; connection closed"
            );
            return;
        }
    };
    match (negotiated, tls) {
        (Negotiated::Export(handle), _) => {
            let (reader, writer) = stream.into_inner();
            transmit(reader, writer, handle, peer, stop).await
        }
        (Negotiated::Done, _) => {}
        (Negotiated::StartTls { no_zeroes }, Some(config)) => {
            let in_tls = async {
                let mut tls = tokio_rustls::TlsAcceptor::from(config)
                    .accept(stream)
                    .await
                    .map_err(|e| pstorage_rpc::tls::handshake_error(e, &peer))?;
                let who = pstorage_rpc::tls::peer_of(tls.get_ref().1.peer_certificates())?;
                match &who {
                    Some(p) if matches!(p.role, Role::Admin | Role::Client) => {}
                    other => {
                        return Err(Error::new(
                            pstorage_core::ErrorKind::PermissionDenied,
                            format!("{other:?} may not use NBD exports (an admin's or client's certificate may)"),
                        ))
                    }
                }
                let negotiated = handshake::negotiate_in_tls(&mut tls, &exports, no_zeroes).await?;
                Ok::<_, Error>((tls, who, negotiated))
            };
            let outcome = tokio::select! {
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, in_tls) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match outcome {
                Ok(Ok((tls, who, Negotiated::Export(handle)))) => {
                    let peer = match who {
                        Some(who) => format!("{peer} ({who}, TLS)"),
                        None => peer,
                    };
                    let (reader, writer) = tokio::io::split(tls);
                    transmit(reader, writer, handle, peer, stop).await
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(peer, error = %e, "NBD TLS handshake failed; connection closed")
                }
                Err(_) => tracing::warn!(
                    peer,
                    "NBD handshake took longer than {HANDSHAKE_TIMEOUT:?}; connection closed"
                ),
            }
        }
        (Negotiated::StartTls { .. }, None) => {
            unreachable!("STARTTLS is acknowledged only when TLS is configured")
        }
    }
}

/// Transmission on the chosen export, then the export's release.
async fn transmit<R, W>(
    reader: R,
    writer: W,
    handle: export::ExportHandle,
    peer: String,
    stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let export = handle.export().clone();
    let _open = export.metrics.connection_opened();
    tracing::info!(peer, export = %export.path, "NBD client connected");
    match transmission::serve(reader, writer, export.clone(), stop).await {
        Ok(ending) => tracing::info!(peer, export = %export.path, ?ending, "NBD client left"),
        Err(e) => tracing::warn!(peer, export = %export.path, error = %e, "NBD connection dropped"),
    }
    drop(export);
    handle.release().await;
}

/// Creates `path` if needed and sets its size to `size_bytes` (growing reads
/// as zeros; shrinking drops the tail). Needs the file's write lease, so it
/// fails with `Busy` while the file is exported for writing.
pub async fn truncate(client: &Client, path: &str, size_bytes: u64) -> Result<()> {
    let flags = OpenFlags {
        create: true,
        ..Default::default()
    };
    let file = client.open(path, LeaseMode::Write, flags).await?;
    let resized = file.truncate(size_bytes).await;
    let closed = file.close().await;
    resized.and(closed)
}
