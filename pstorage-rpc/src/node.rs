//! Running pstorage services on a node: the MDS and CS service directories
//! (`make-mds`, `make-cs`), the daemons' main loops (`pstorage-mdsd`,
//! `pstorage-csd`) and connecting a client to a cluster. The binaries in
//! `daemons/` are thin wrappers around this module.
//!
//! Every listening port speaks the same preamble: the authentication
//! handshake of [`crate::auth`], which also names the channel that follows
//! (Cap'n Proto control RPC or the framed data path).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use pstorage_core::chunk::{BadReplicaSink, ChunkServer, FileChunkStore, ScrubParams};
use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::conf::{ClusterConf, ClusterKey, KEY_FILE};
use pstorage_core::mds::{MdsConfig, MdsService, MdsState, MdsStore};
use pstorage_core::traits::{ChunkControl, ChunkService, Clock, CsRegistry, SystemClock};
use pstorage_core::types::{ChunkId, CsId, CsStats, FailureReason, FileAttrs, MapVersion};
use pstorage_core::{Error, ErrorKind, Result};

use crate::auth::{self, Channel};
use crate::control::TcpControlConnector;
use crate::data::{serve_data_connection, TcpChunkConnector};
use crate::{ClientOptions as RpcClientOptions, Dialer, MdsClient, RpcServerThread, RpcServices};

/// Version of the service config files (`mds.conf`, `cs.conf`).
const SERVICE_CONF_VERSION: u32 = 1;
const MDS_CONF: &str = "mds.conf";
const CS_CONF: &str = "cs.conf";
const MDS_DB: &str = "mds.redb";

/// The configuration of an MDS service directory, written by `make-mds`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MdsServiceConf {
    pub format_version: u32,
    pub cluster: String,
    /// `host:port` the MDS listens on and is listed under in `bs.list`.
    pub addr: String,
}

/// The configuration of a CS service directory, written by `make-cs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CsServiceConf {
    pub format_version: u32,
    pub cluster: String,
    pub id: CsId,
    /// `host:port` to listen on; port 0 picks a free port at each start.
    pub listen: String,
    /// The cluster configuration root (parent of `<cluster>/bs.list`).
    pub conf_root: PathBuf,
}

fn write_conf<T: Serialize>(path: &Path, conf: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(conf)
        .map_err(|e| Error::internal(format!("encoding {}: {e}", path.display())))?;
    pstorage_core::conf::write_private(path, text.as_bytes())
}

fn read_conf<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::not_found(format!(
            "{} is not a {what} directory ({e}); create it with `pstorage make-{what}`",
            path.parent().unwrap_or(path).display()
        ))
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("{} is malformed: {e}", path.display())))?;
    let version = value
        .get("format_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if version == 0 || version > SERVICE_CONF_VERSION as u64 {
        return Err(Error::invalid(format!(
            "{} has format version {version}; this build reads up to {SERVICE_CONF_VERSION}",
            path.display()
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::invalid(format!("{} is malformed: {e}", path.display())))
}

fn ensure_empty_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("{} is not empty; pick a new directory", dir.display()),
        ));
    }
    Ok(())
}

/// `make-mds -I`: creates a new cluster whose first MDS lives in `dir` and
/// listens on `addr`; stores the key in `dir` and in the node's cluster
/// config (`bs.list` gains `addr`).
pub fn create_cluster_mds(
    conf: &ClusterConf,
    dir: &Path,
    addr: &str,
    key: &ClusterKey,
    chunk_size: u64,
) -> Result<MdsServiceConf> {
    pstorage_core::types::validate_chunk_size(chunk_size)?;
    let addr = pstorage_core::conf::with_default_port(addr)?;
    addr.parse::<SocketAddr>()
        .map_err(|e| Error::invalid(format!("bad MDS address {addr:?}: {e}")))?;
    ensure_empty_dir(dir)?;
    let service = MdsServiceConf {
        format_version: SERVICE_CONF_VERSION,
        cluster: conf.name.clone(),
        addr: addr.clone(),
    };
    let root_attrs = FileAttrs {
        chunk_size,
        ..FileAttrs::default()
    };
    MdsStore::create(dir.join(MDS_DB), &MdsState::new(root_attrs)?)?;
    key.write(&dir.join(KEY_FILE))?;
    write_conf(&dir.join(MDS_CONF), &service)?;
    conf.store_key(key)?;
    conf.add_bootstrap(&addr)?;
    Ok(service)
}

/// `make-cs`: allocates a CS id from the MDS and prepares `dir`.
pub async fn create_cs(
    conf: &ClusterConf,
    conf_root: &Path,
    dir: &Path,
    listen: &str,
) -> Result<CsId> {
    listen
        .parse::<SocketAddr>()
        .map_err(|e| Error::invalid(format!("bad CS address {listen:?}: {e}")))?;
    ensure_empty_dir(dir)?;
    let mds = connect_mds(conf, RpcClientOptions::default())?;
    let id = mds.allocate_cs_id().await?;
    FileChunkStore::open(dir)?;
    write_conf(
        &dir.join(CS_CONF),
        &CsServiceConf {
            format_version: SERVICE_CONF_VERSION,
            cluster: conf.name.clone(),
            id,
            listen: listen.to_string(),
            conf_root: conf_root.to_path_buf(),
        },
    )?;
    Ok(id)
}

/// A dialer that connects and authenticates a control channel.
pub fn control_dialer(key: ClusterKey) -> Dialer {
    Arc::new(move |addr: String| {
        let key = key.clone();
        async move { auth::connect(&addr, &key, Channel::Control).await }.boxed()
    })
}

/// An MDS client for the cluster described by `conf` (bootstrap list + key).
pub fn connect_mds(conf: &ClusterConf, options: RpcClientOptions) -> Result<MdsClient> {
    let key = conf.key()?;
    let bootstrap = conf.bootstrap()?;
    MdsClient::new(bootstrap, control_dialer(key), options)
}

/// A full SDK client for the cluster described by `conf`.
pub fn connect_client(conf: &ClusterConf, options: ClientOptions) -> Result<Client> {
    let key = conf.key()?;
    let mds = Arc::new(connect_mds(conf, RpcClientOptions::default())?);
    let chunks = Arc::new(TcpChunkConnector::new(key));
    Ok(Client::new(mds, chunks, options))
}

/// Checks that `key` is the cluster's key by authenticating to one of its
/// MDSes (`auth-node`). `PermissionDenied` for a wrong password.
pub async fn verify_key(conf: &ClusterConf, key: &ClusterKey) -> Result<()> {
    let mut last = Error::unavailable("the bootstrap list is empty");
    for addr in conf.bootstrap()? {
        match auth::connect(&addr, key, Channel::Control).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("wrong password for cluster {}: {}", conf.name, e.message()),
                ))
            }
            Err(e) => last = e.context(format!("MDS {addr}")),
        }
    }
    Err(last)
}

/// Accepts connections on `listener` forever: authenticates each one and
/// hands it to `route` with the channel it asked for. A connection that
/// fails authentication is closed and logged; nothing else is affected.
async fn accept_loop<F>(listener: TcpListener, key: ClusterKey, route: F)
where
    F: Fn(Channel, TcpStream) + Send + Sync + 'static,
{
    let route = Arc::new(route);
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let key = key.clone();
        let route = route.clone();
        tokio::spawn(async move {
            match auth::server_handshake(&mut stream, &key).await {
                Ok(channel) => route(channel, stream),
                Err(e) => warn!("refused connection from {peer}: {e}"),
            }
        });
    }
}

/// Runs the MDS in `dir` until `shutdown` resolves (SIGTERM in the daemon).
pub async fn run_mds(dir: &Path, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let conf: MdsServiceConf = read_conf(&dir.join(MDS_CONF), "mds")?;
    let key = ClusterKey::read(&dir.join(KEY_FILE))?;
    let store = MdsStore::open(dir.join(MDS_DB))?;
    let control = Arc::new(TcpControlConnector::new(
        control_dialer(key.clone()),
        RpcClientOptions {
            connect_timeout: Duration::from_secs(3),
            call_timeout: Some(Duration::from_secs(10)),
        },
    ));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut config = MdsConfig {
        cluster_name: conf.cluster.clone(),
        addr: conf.addr.clone(),
        ..MdsConfig::default()
    };
    apply_env_overrides(&mut config);
    let mds = Arc::new(MdsService::with_store(store, control, clock, config)?);
    let listener = TcpListener::bind(&conf.addr)
        .await
        .map_err(|e| Error::from(e).context(format!("cannot listen on {}", conf.addr)))?;
    info!(cluster = %conf.cluster, addr = %conf.addr, "MDS started");
    println!(
        "pstorage-mdsd: cluster {} listening on {}",
        conf.cluster, conf.addr
    );
    let rpc = RpcServerThread::spawn(
        "mds-rpc",
        RpcServices::new().with_mds(mds.clone(), mds.clone()),
    )?;
    let accept = accept_loop(listener, key, move |channel, stream| match channel {
        Channel::Control => {
            if let Err(e) = rpc.serve_mds(stream) {
                warn!("cannot serve an MDS connection: {e}");
            }
        }
        Channel::Data => warn!("a data channel was opened to the MDS; closed"),
    });
    let ticker = {
        let mds = mds.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                mds.tick().await;
            }
        }
    };
    let replication = mds.run_replication();
    tokio::select! {
        _ = accept => {}
        _ = ticker => {}
        _ = replication => {}
        _ = shutdown => info!("MDS stopping"),
    }
    Ok(())
}

/// Test and tuning knobs read from the environment by the daemons
/// (`PSTORAGE_LEASE_MS`, `PSTORAGE_HEARTBEAT_MS`, `PSTORAGE_OFFLINE_MS`).
fn apply_env_overrides(config: &mut MdsConfig) {
    let get = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(v) = get("PSTORAGE_LEASE_MS") {
        config.lease_duration_ms = v;
    }
    if let Some(v) = get("PSTORAGE_HEARTBEAT_MS") {
        config.heartbeat_interval_ms = v;
    }
    if let Some(v) = get("PSTORAGE_OFFLINE_MS") {
        config.params.offline_timeout_ms = v;
    }
}

/// Runs the CS in `dir` until `shutdown` resolves.
///
/// Before it registers (and so before it serves), chunks written but not
/// flushed when the CS last stopped uncleanly are verified; corrupt
/// replicas found then or by the scrubber are reported to the MDS. At
/// `shutdown` every written replica is flushed, so the next start has
/// nothing to verify. Scrubbing defaults to [`ScrubParams::default`];
/// `PSTORAGE_SCRUB_PERIOD_MS` and `PSTORAGE_SCRUB_RATE` (bytes/s, 0 =
/// unlimited) override it (tests, tuning).
pub async fn run_cs(dir: &Path, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let conf: CsServiceConf = read_conf(&dir.join(CS_CONF), "cs")?;
    let cluster = ClusterConf::new(&conf.conf_root, &conf.cluster)?;
    let key = cluster.key()?;
    let store = Arc::new(FileChunkStore::open(dir)?);
    let peers = Arc::new(TcpChunkConnector::new(key.clone()));
    let server = Arc::new(ChunkServer::new(conf.id, store, peers));
    let (reports, report_queue) = tokio::sync::mpsc::unbounded_channel();
    server.set_bad_replica_sink(Arc::new(MdsReportSink { queue: reports }));
    let defaults = ScrubParams::default();
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    server.set_scrub_params(
        env("PSTORAGE_SCRUB_PERIOD_MS")
            .map(Duration::from_millis)
            .unwrap_or(defaults.period),
        env("PSTORAGE_SCRUB_RATE").unwrap_or(defaults.rate_bytes_per_s),
    );
    let listener = TcpListener::bind(&conf.listen)
        .await
        .map_err(|e| Error::from(e).context(format!("cannot listen on {}", conf.listen)))?;
    let addr = listener.local_addr()?.to_string();
    info!(cs = conf.id, %addr, "CS started");
    println!(
        "pstorage-csd: CS {} of cluster {} listening on {addr}",
        conf.id, conf.cluster
    );
    let control: Arc<dyn ChunkControl> = server.clone();
    let rpc = RpcServerThread::spawn("cs-rpc", RpcServices::new().with_control(control))?;
    let data: Arc<dyn ChunkService> = server.clone();
    let accept = accept_loop(listener, key, move |channel, stream| match channel {
        Channel::Control => {
            if let Err(e) = rpc.serve_control(stream) {
                warn!("cannot serve a control connection: {e}");
            }
        }
        Channel::Data => {
            let data = data.clone();
            tokio::spawn(serve_data_connection(stream, data));
        }
    });
    let mds = connect_mds(&cluster, RpcClientOptions::default())?;
    let reporter = report_bad_replicas(mds.clone(), conf.id, report_queue);
    let session = {
        let server = server.clone();
        async move {
            let recovered = server.recover().await?;
            if !recovered.verified.is_empty() || !recovered.corrupt.is_empty() {
                warn!(
                    cs = conf.id,
                    verified = recovered.verified.len(),
                    corrupt = ?recovered.corrupt,
                    "checked the chunks written before an unclean stop"
                );
            }
            cs_session(server, mds, conf.id, addr).await
        }
    };
    let scrubber = server.clone().run_scrubber();
    let result = tokio::select! {
        _ = accept => Ok(()),
        r = session => r,
        _ = scrubber => Ok(()),
        _ = reporter => Ok(()),
        _ = shutdown => {
            info!("CS stopping");
            Ok(())
        }
    };
    server.set_serving(false);
    if let Err(e) = server.close_clean().await {
        warn!("CS {}: flushing at shutdown failed ({e}); the next start verifies the chunks written since their last flush", conf.id);
    }
    result
}

/// Queues corrupt replicas for [`report_bad_replicas`] (the sink must not
/// block).
struct MdsReportSink {
    queue: tokio::sync::mpsc::UnboundedSender<(ChunkId, String)>,
}

impl BadReplicaSink for MdsReportSink {
    fn bad_replica(&self, chunk: ChunkId, _version: MapVersion, detail: String) {
        // Fails only once the reporter stopped, i.e. at shutdown; the next
        // registration leaves the replica out anyway.
        let _ = self.queue.send((chunk, detail));
    }
}

/// Sends the queued corrupt replicas to the MDS, retrying while it is
/// unreachable. A report the MDS refuses (this CS is not registered yet,
/// or dropped) is abandoned: registration leaves out-of-service replicas
/// out, which tells the MDS the same thing.
async fn report_bad_replicas(
    mds: MdsClient,
    id: CsId,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<(ChunkId, String)>,
) {
    while let Some((chunk, detail)) = queue.recv().await {
        let mut delay = Duration::from_millis(200);
        loop {
            match mds
                .report_bad_replica(id, chunk, FailureReason::Corrupt)
                .await
            {
                Ok(()) => {
                    info!(cs = id, chunk, %detail, "corrupt replica reported to the MDS");
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    warn!(
                        cs = id,
                        chunk, "the MDS refused a corrupt replica report: {e}"
                    );
                    break;
                }
            }
        }
    }
}

/// How long a CS keeps serving while it cannot reach the MDS. Past it, the
/// MDS may have declared it offline and moved its chunks on, so it stops
/// serving and registers again (its replicas are checked then).
const MDS_SILENCE_FENCE: Duration = Duration::from_secs(10);

/// Registers with the MDS, then heartbeats. A CS serves only while it is
/// registered: a restarted CS, or one cut off from the MDS for longer than
/// [`MDS_SILENCE_FENCE`], must have its replicas checked before it may serve
/// them again (invariant 3).
async fn cs_session(
    server: Arc<ChunkServer>,
    mds: MdsClient,
    id: CsId,
    addr: String,
) -> Result<()> {
    loop {
        server.set_serving(false);
        let registration = server.registration(&addr).await?;
        let reply = match mds.register_cs(registration).await {
            Ok(r) => r,
            Err(e) => {
                warn!("CS {id}: registration failed: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        server.apply_register_reply(&reply).await?;
        server.set_serving(true);
        info!("CS {id}: registered with the MDS");
        let interval = Duration::from_millis(reply.heartbeat_interval_ms.max(100));
        let mds_scrub = std::env::var_os("PSTORAGE_SCRUB_PERIOD_MS").is_none()
            && std::env::var_os("PSTORAGE_SCRUB_RATE").is_none();
        let mut applied_scrub = None;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(interval).await;
            let space = server.store().space().unwrap_or_default();
            let io = server.stats();
            let stats = CsStats {
                read_ops: io.read_ops,
                write_ops: io.write_ops,
                read_bytes: io.read_bytes,
                write_bytes: io.write_bytes,
            };
            match mds.heartbeat(id, space, stats).await {
                Ok(params) => {
                    last_ok = tokio::time::Instant::now();
                    // The cluster parameters rule unless this daemon's
                    // environment overrides scrubbing (tests, tuning).
                    let scrub = (params.scrub_period_ms, params.scrub_rate_bytes_per_s);
                    if mds_scrub && applied_scrub != Some(scrub) {
                        server.set_scrub_params(Duration::from_millis(scrub.0), scrub.1);
                        applied_scrub = Some(scrub);
                    }
                }
                // The MDS does not know us (it restarted): register again.
                Err(e) if e.kind() == ErrorKind::Stale => {
                    info!("CS {id}: {e}; registering again");
                    break;
                }
                Err(e) if last_ok.elapsed() > MDS_SILENCE_FENCE => {
                    warn!("CS {id}: no MDS contact for {MDS_SILENCE_FENCE:?} ({e}); stop serving");
                    break;
                }
                Err(e) => warn!("CS {id}: heartbeat failed: {e}"),
            }
        }
    }
}
