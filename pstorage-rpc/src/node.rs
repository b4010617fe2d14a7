//! Running pstorage services on a node: the MDS and CS service directories
//! (`make-mds`, `make-cs`), the daemons' main loops (`pstorage-mdsd`,
//! `pstorage-csd`) and connecting a client to a cluster. The binaries in
//! `daemons/` are thin wrappers around this module.
//!
//! Every listening port speaks TLS 1.3 with certificates of the cluster CA
//! ([`crate::auth`], [`crate::tls`], [`crate::pki`]); the ClientHello's
//! ALPN names the channel (Cap'n Proto control RPC, the framed data path,
//! or enrollment).
//!
//! Where the credentials live: an MDS directory holds `mds.crt`/`mds.key`,
//! the cluster CA (`ca.crt`, `ca.key`) and the cluster key (`auth.key`,
//! which checks enrollments); a chunk server directory `cs.crt`/`cs.key`
//! and `ca.crt`; a node's cluster configuration directory `node.crt`/
//! `node.key` and `ca.crt` (`auth-node`: an admin's certificate unless
//! `--role client`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use pstorage_core::chunk::session::{bad_replica_queue, CsSession, SessionOptions};
use pstorage_core::chunk::{ChunkServer, FileChunkStore, ScrubParams, StoreOptions};
use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::conf::{ClusterConf, ClusterKey, KEY_FILE};
use pstorage_core::mds::raft::{
    compact_log_now, raft_config, MdsId, MdsNode, MdsRaft, RaftStorage,
};
use pstorage_core::mds::{MdsConfig, MdsService, MdsState};
use pstorage_core::membership::{DirectoryOptions, FileMemberStore, MemberDirectory};
use pstorage_core::traits::{
    ChunkControl, ChunkService, Clock, CsRegistry, MdsGroup, MetadataService, SystemClock,
};
use pstorage_core::types::{CsId, CsPlacementUpdate, FileAttrs};
use pstorage_core::{Error, ErrorKind, Result};

use crate::auth::{self, Channel, HandshakeSlot};
use crate::control::TcpControlConnector;
use crate::data::{serve_data_connection, TcpChunkConnector};
use crate::enroll::Enrollment;
use crate::pki::{CertRequest, ClusterCa, DataPath, NodeIdentity, Role};
use crate::raft::{RaftNetworkOptions, TcpRaftNetwork, RAFT_SNAPSHOT_CHUNK_BYTES};
use crate::router::{LeaderRouter, RouterOptions};
use crate::tls::Credentials;
use crate::{ClientOptions as RpcClientOptions, Dialer, MdsClient, RpcServerThread, RpcServices};

/// Version of the service config files (`mds.conf`, `cs.conf`).
const SERVICE_CONF_VERSION: u32 = 1;
const MDS_CONF: &str = "mds.conf";
const CS_CONF: &str = "cs.conf";
const MDS_DB: &str = "mds.redb";
/// The file stem of a node's certificate and key in its cluster
/// configuration directory (`node.crt`, `node.key`).
pub const NODE_STEM: &str = "node";
/// The file stem of an MDS's certificate and key in its directory.
pub const MDS_STEM: &str = "mds";
/// The file stem of a chunk server's certificate and key in its directory.
pub const CS_STEM: &str = "cs";

/// This node's credentials for cluster `conf` (`node.crt`, `node.key`,
/// `ca.crt` in its configuration directory). `PermissionDenied` (saying
/// to run `auth-node`) when it has none.
pub fn node_credentials(conf: &ClusterConf) -> Result<Credentials> {
    let hint = format!(
        "this node is not authenticated in cluster {0}; run `pstorage -c {0} auth-node`",
        conf.name
    );
    Credentials::new(NodeIdentity::load(&conf.dir, NODE_STEM, &hint)?)
}

/// The credentials of the MDS or chunk server whose directory is `dir`.
fn service_credentials(dir: &Path, stem: &str) -> Result<Credentials> {
    let hint = format!(
        "{} has no certificate; it was made by an older build: make it again with `pstorage make-{stem}`",
        dir.display()
    );
    Credentials::new(NodeIdentity::load(dir, stem, &hint)?)
}

/// The configuration of an MDS service directory, written by `make-mds`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MdsServiceConf {
    /// The format of this file (1).
    pub format_version: u32,
    /// The name of the cluster the MDS belongs to.
    pub cluster: String,
    /// `host:port` the MDS listens on and is listed under in `bs.list`.
    pub addr: String,
    /// Its id in the metadata group (directories made before MDS groups
    /// existed are MDS 1).
    #[serde(default = "first_mds_id")]
    pub id: MdsId,
    /// Made with `make-mds -I`: it forms the group at its first start.
    /// Otherwise it asks the group to add it.
    #[serde(default = "yes")]
    pub init: bool,
    /// MDSes to ask for membership (the cluster's `bs.list` when it was
    /// made without `-I`).
    #[serde(default)]
    pub join_via: Vec<String>,
}

fn first_mds_id() -> MdsId {
    MdsId(1)
}

fn yes() -> bool {
    true
}

/// The configuration of a CS service directory, written by `make-cs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CsServiceConf {
    /// The format of this file (1).
    pub format_version: u32,
    /// The name of the cluster the chunk server belongs to.
    pub cluster: String,
    /// The chunk server's id, assigned by the MDS at `make-cs`.
    pub id: CsId,
    /// `host:port` to listen on; port 0 picks a free port at each start.
    pub listen: String,
    /// The cluster configuration root (parent of `<cluster>/bs.list`).
    pub conf_root: PathBuf,
    /// Where the write journal lives (`make-cs -j`); none: in the CS
    /// directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_dir: Option<PathBuf>,
    /// The journal's size in bytes (`make-cs -s`, in MiB there).
    #[serde(default = "default_journal_size")]
    pub journal_size: u64,
}

fn default_journal_size() -> u64 {
    pstorage_core::chunk::DEFAULT_JOURNAL_SIZE
}

impl CsServiceConf {
    /// How its chunk store opens.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            journal_dir: self.journal_dir.clone(),
            journal_size: self.journal_size,
            ..StoreOptions::default()
        }
    }
}

fn write_conf<T: Serialize>(path: &Path, conf: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(conf)
        .map_err(|e| Error::internal(format!("encoding {}: {e}", path.display())).caused_by(e))?;
    pstorage_core::conf::write_private(path, text.as_bytes())
}

fn read_conf<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::not_found(format!(
            "{} is not a {what} directory ({e}); create it with `pstorage make-{what}`",
            path.parent().unwrap_or(path).display()
        ))
        .caused_by(e)
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::invalid(format!("{} is malformed: {e}", path.display())).caused_by(e)
    })?;
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
        .map_err(|e| Error::invalid(format!("{} is malformed: {e}", path.display())).caused_by(e))
}

fn ensure_empty_dir(dir: &Path) -> Result<()> {
    // An MDS's store or a chunk server's replicas: only their owner reads
    // them (a directory that exists keeps its mode).
    pstorage_core::private_files::create_private_dir_all(dir)?;
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
    create_cluster_mds_with(conf, dir, addr, key, chunk_size, DataPath::Encrypted)
}

/// [`create_cluster_mds`] with the cluster's data path (`make-mds -I
/// --data-encryption off`: [`DataPath::Clear`]), which its CA carries for
/// good.
pub fn create_cluster_mds_with(
    conf: &ClusterConf,
    dir: &Path,
    addr: &str,
    key: &ClusterKey,
    chunk_size: u64,
    data_path: DataPath,
) -> Result<MdsServiceConf> {
    pstorage_core::types::validate_chunk_size(chunk_size)?;
    let addr = pstorage_core::conf::with_default_port(addr)?;
    addr.parse::<SocketAddr>()
        .map_err(|e| Error::invalid(format!("bad MDS address {addr:?}: {e}")).caused_by(e))?;
    ensure_empty_dir(dir)?;
    let service = MdsServiceConf {
        format_version: SERVICE_CONF_VERSION,
        cluster: conf.name.clone(),
        addr: addr.clone(),
        id: first_mds_id(),
        init: true,
        join_via: Vec::new(),
    };
    let root_attrs = FileAttrs {
        chunk_size,
        ..FileAttrs::default()
    };
    // The cluster CA, this MDS's certificate, and an admin's for the node
    // that made the cluster (as `auth-node` would give it); the state
    // records both, as it records every certificate issued later.
    let ca = ClusterCa::generate_with(&conf.name, data_path)?;
    let mds_identity = ca.issue_identity(Role::Mds, &format!("mds {}", service.id))?;
    let admin_identity = ca.issue_identity(
        Role::Admin,
        &this_host_name().unwrap_or_else(|_| "admin".into()),
    )?;
    let mut state = MdsState::new(root_attrs)?;
    let now_ms = SystemClock.now_ms();
    for identity in [&mds_identity, &admin_identity] {
        state.apply(pstorage_core::mds::Command::RecordCertificate {
            record: crate::pki::record_of(&identity.cert_pem, now_ms)?,
            now_ms,
        })?;
    }
    RaftStorage::create(dir.join(MDS_DB), &state)?;
    key.write(&dir.join(KEY_FILE))?;
    ca.save(dir)?;
    mds_identity.save(dir, MDS_STEM)?;
    admin_identity.save(&conf.dir, NODE_STEM)?;
    write_conf(&dir.join(MDS_CONF), &service)?;
    conf.add_bootstrap(&addr)?;
    Ok(service)
}

/// The SHA-256 fingerprint of the cluster CA kept in MDS directory `dir`
/// (what `make-mds -I` shows).
pub fn ca_fingerprint(dir: &Path) -> Result<String> {
    Ok(ClusterCa::load(dir)?.fingerprint())
}

/// `make-mds` without `-I`: allocates an MDS id from the running cluster
/// (this node must hold an admin's certificate: `auth-node`), gets the new
/// MDS its certificate, the CA and the cluster key, prepares `dir` and adds
/// `addr` to `bs.list`. The MDS joins the group at its first start.
pub async fn join_cluster_mds(
    conf: &ClusterConf,
    dir: &Path,
    addr: &str,
) -> Result<MdsServiceConf> {
    let addr = pstorage_core::conf::with_default_port(addr)?;
    addr.parse::<SocketAddr>()
        .map_err(|e| Error::invalid(format!("bad MDS address {addr:?}: {e}")).caused_by(e))?;
    ensure_empty_dir(dir)?;
    let mds = connect_mds(conf, RpcClientOptions::from_env())?;
    if mds
        .cluster_status()
        .await?
        .mds
        .iter()
        .any(|m| m.addr == addr)
    {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("an MDS of cluster {} already listens at {addr}", conf.name),
        ));
    }
    let id = mds.allocate_mds_id().await?;
    let secrets = mds.join_secrets().await?;
    let request = CertRequest::generate()?;
    let cert = mds
        .issue_certificate(request.csr_der, Role::Mds, &format!("mds {id}"))
        .await?;
    let key = ClusterKey::from_hex(&secrets.cluster_key)?;
    let ca = ClusterCa::from_pem(&secrets.ca_cert, &secrets.ca_key)?;
    let identity = NodeIdentity::from_pem(secrets.ca_cert.clone(), cert, request.key_pem)?;
    let service = MdsServiceConf {
        format_version: SERVICE_CONF_VERSION,
        cluster: conf.name.clone(),
        addr: addr.clone(),
        id,
        init: false,
        join_via: conf.bootstrap()?,
    };
    RaftStorage::create_empty(dir.join(MDS_DB))?;
    key.write(&dir.join(KEY_FILE))?;
    ca.save(dir)?;
    identity.save(dir, MDS_STEM)?;
    write_conf(&dir.join(MDS_CONF), &service)?;
    conf.add_bootstrap(&addr)?;
    Ok(service)
}

/// `rm-mds`: removes MDS `id` from the group and its address from this
/// node's `bs.list`; returns that address.
pub async fn remove_mds(conf: &ClusterConf, id: MdsId) -> Result<String> {
    let mds = connect_mds(conf, RpcClientOptions::from_env())?;
    let addr = mds
        .cluster_status()
        .await?
        .mds
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.addr)
        .ok_or_else(|| {
            Error::not_found(format!(
                "MDS {id} is not a member of cluster {}; see `pstorage stat`",
                conf.name
            ))
        })?;
    if let Err(e) = mds.remove_mds(id).await {
        // The removed MDS (maybe the one we asked) stops serving once the
        // change commits: a broken connection may still mean success.
        if e.kind() != ErrorKind::Unavailable {
            return Err(e);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(status) = mds.cluster_status().await {
                if !status.mds.iter().any(|m| m.id == id) {
                    break;
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(e);
            }
        }
    }
    if let Err(e) = conf.remove_bootstrap(&addr) {
        warn!("MDS {id} removed, but bs.list was not updated: {e}");
    }
    // This node's saved member list forgets it too (best effort).
    if let Some(members) = mds.members_directory() {
        if let Err(e) = members.refresh(&mds, crate::actor::MDS_CALL_TIMEOUT).await {
            warn!("MDS {id} removed, but the saved MDS member list was not refreshed: {e}");
        }
    }
    Ok(addr)
}

/// This machine's host name (the default `make-cs --host`).
pub fn this_host_name() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "cannot read this machine's host name ({}); give make-cs --host NAME",
                std::io::Error::last_os_error()
            ),
        ));
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_string();
    if name.is_empty() {
        return Err(Error::invalid(
            "this machine has an empty host name; give make-cs --host NAME",
        ));
    }
    Ok(name)
}

/// `make-cs`: allocates a CS id from the MDS, records its placement
/// (location, host, tier, capacity) and prepares `dir`.
pub async fn create_cs(
    conf: &ClusterConf,
    conf_root: &Path,
    dir: &Path,
    listen: &str,
    placement: CsPlacementUpdate,
    journal: &StoreOptions,
) -> Result<CsId> {
    listen
        .parse::<SocketAddr>()
        .map_err(|e| Error::invalid(format!("bad CS address {listen:?}: {e}")).caused_by(e))?;
    placement.validate()?;
    if journal.journal_size < pstorage_core::chunk::MIN_JOURNAL_SIZE
        || !journal.journal_size.is_multiple_of(4096)
    {
        return Err(Error::invalid(format!(
            "journal size {} MiB: at least {} MiB",
            journal.journal_size >> 20,
            pstorage_core::chunk::MIN_JOURNAL_SIZE >> 20
        )));
    }
    ensure_empty_dir(dir)?;
    let mds = connect_mds(conf, RpcClientOptions::from_env())?;
    let id = mds.allocate_cs_id().await?;
    if !placement.is_empty() {
        MetadataService::set_cs(&mds, id, placement).await?;
    }
    let request = CertRequest::generate()?;
    let cert = mds
        .issue_certificate(request.csr_der, Role::Cs, &format!("cs {id}"))
        .await?;
    let ca_pem = node_credentials(conf)?.identity().ca_pem.clone();
    let identity = NodeIdentity::from_pem(ca_pem, cert, request.key_pem)?;
    let journal_dir = match &journal.journal_dir {
        Some(d) => {
            pstorage_core::private_files::create_private_dir_all(d)?;
            Some(std::fs::canonicalize(d)?)
        }
        None => None,
    };
    let cs_conf = CsServiceConf {
        format_version: SERVICE_CONF_VERSION,
        cluster: conf.name.clone(),
        id,
        listen: listen.to_string(),
        conf_root: conf_root.to_path_buf(),
        journal_dir,
        journal_size: journal.journal_size,
    };
    FileChunkStore::open_with(dir, &cs_conf.store_options())?;
    identity.save(dir, CS_STEM)?;
    write_conf(&dir.join(CS_CONF), &cs_conf)?;
    Ok(id)
}

/// A dialer that connects a control channel with `credentials`.
pub fn control_dialer(credentials: Credentials) -> Dialer {
    Arc::new(move |addr: String| {
        let credentials = credentials.clone();
        async move { auth::connect(&addr, &credentials, Channel::Control).await }.boxed()
    })
}

/// The MDS member directory of a client or tool of the cluster `conf`
/// describes: `bs.list` as the bootstrap, and the members learned saved in
/// the cluster's configuration directory (`mds.list`) when it is writable
/// (best effort: a client never fails because it is not). Errors: the
/// `bs.list` error when neither names an MDS.
pub fn client_members(conf: &ClusterConf) -> Result<Arc<MemberDirectory>> {
    let (bootstrap, missing) = match conf.bootstrap() {
        Ok(list) => (list, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let members = MemberDirectory::new(
        bootstrap,
        Some(Arc::new(FileMemberStore::in_dir(&conf.dir))),
        Arc::new(SystemClock),
        DirectoryOptions::default(),
    );
    match missing {
        Some(e) if members.addrs().is_empty() => Err(e),
        _ => Ok(Arc::new(members)),
    }
}

/// An MDS client for the cluster described by `conf` (this node's
/// certificate, and the MDSes of [`client_members`]); it follows the MDS
/// group.
pub fn connect_mds(conf: &ClusterConf, options: RpcClientOptions) -> Result<MdsClient> {
    let credentials = node_credentials(conf)?;
    MdsClient::following(
        client_members(conf)?,
        control_dialer(credentials),
        options,
        true,
    )
}

/// Where a client finds the metadata group.
pub enum MdsSource<'a> {
    /// A cluster's configuration directory (`bs.list`, the node's
    /// certificate); the MDS members it learns are saved there.
    Conf(&'a ClusterConf),
    /// Fixed MDS addresses and credentials; nothing is saved.
    Bootstrap {
        /// `HOST:PORT` of one or more MDSes.
        addrs: Vec<String>,
        /// What the client connects with.
        credentials: Credentials,
    },
}

/// A full SDK client: the one builder behind the CLI, the mount,
/// `nbd-serve`, the C ABI and Python. It follows the MDS group from
/// `source`. An MDS call waits at most the MDS call deadline
/// ([`RpcClientOptions::from_env`]: 8 s, or `PSTORAGE_MDS_CALL_TIMEOUT_MS`)
/// and a connection attempt at most the connect deadline (30 s, or
/// `PSTORAGE_MDS_CONNECT_TIMEOUT_MS`), each at most `options.io_timeout`.
pub fn build_client(source: MdsSource<'_>, options: ClientOptions) -> Result<Client> {
    let mut rpc = RpcClientOptions::from_env();
    rpc.call_timeout = Some(
        rpc.call_timeout
            .map_or(options.io_timeout, |t| t.min(options.io_timeout)),
    );
    rpc.connect_timeout = rpc.connect_timeout.min(options.io_timeout);
    let (members, credentials) = match source {
        MdsSource::Conf(conf) => (client_members(conf)?, node_credentials(conf)?),
        MdsSource::Bootstrap { addrs, credentials } => {
            (Arc::new(MemberDirectory::fixed(addrs)), credentials)
        }
    };
    let mds = Arc::new(MdsClient::following(
        members,
        control_dialer(credentials.clone()),
        rpc,
        true,
    )?);
    // The revocation list, for the servers this client dials (with a
    // runtime to run on; the task ends with the client's MDS connection).
    if tokio::runtime::Handle::try_current().is_ok() {
        crate::revocation::follow_as_client(
            credentials.revocations().clone(),
            Arc::downgrade(&mds),
        );
    }
    Ok(Client::new(
        mds,
        Arc::new(TcpChunkConnector::new(credentials)),
        options,
    ))
}

/// [`build_client`] for the cluster described by `conf`.
pub fn connect_client(conf: &ClusterConf, options: ClientOptions) -> Result<Client> {
    build_client(MdsSource::Conf(conf), options)
}

/// `auth-node`: proves the cluster password to one of the MDSes of
/// `bs.list` and stores the certificate it gets for `role` (named after
/// this host) in the node's configuration directory. `PermissionDenied` for
/// a wrong password.
pub async fn auth_node(conf: &ClusterConf, password: &str, role: Role) -> Result<NodeIdentity> {
    let key = auth::derive_key(&conf.name, password);
    let name = this_host_name().unwrap_or_else(|_| role.as_str().to_string());
    let identity =
        crate::enroll::enroll_any(&conf.bootstrap()?, &conf.name, &key, role, &name).await?;
    identity.save(&conf.dir, NODE_STEM)?;
    Ok(identity)
}

/// `renew-cert`: a new key and certificate, with the same role and name,
/// for the identity in `dir` (a daemon's directory: its `mds` or `cs`
/// certificate; without one, this node's configuration directory). The
/// MDS signs it for the caller's own certificate, so a renewal widens
/// nothing; the old certificate stays valid until it expires or is
/// revoked. A daemon uses the new one from its next start. Returns the
/// new identity.
pub async fn renew_certificate(conf: &ClusterConf, dir: Option<&Path>) -> Result<NodeIdentity> {
    let (dir, stem) = match dir {
        None => (conf.dir.as_path(), NODE_STEM),
        Some(dir) => {
            let stem = [MDS_STEM, CS_STEM]
                .into_iter()
                .find(|stem| NodeIdentity::exists(dir, stem))
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "{} holds no MDS or chunk server certificate",
                        dir.display()
                    ))
                })?;
            (dir, stem)
        }
    };
    let hint = format!("no certificate to renew in {}", dir.display());
    let old = NodeIdentity::load(dir, stem, &hint)?;
    let credentials = Credentials::new(old.clone())?;
    let mds = MdsClient::following(
        client_members(conf)?,
        control_dialer(credentials),
        RpcClientOptions::from_env(),
        false,
    )?;
    let request = CertRequest::generate()?;
    let cert = mds.renew_certificate(request.csr_der).await?;
    let new = NodeIdentity::from_pem(old.ca_pem.clone(), cert, request.key_pem)?;
    if (new.peer.role, &new.peer.name) != (old.peer.role, &old.peer.name) {
        return Err(Error::protocol(format!(
            "the MDS renewed {} as {}: not saved",
            old.peer, new.peer
        )));
    }
    new.save(dir, stem)?;
    Ok(new)
}

/// What a connection becomes once its ClientHello is read: handed to a thread
/// that serves it (`None`), or served by the returned future, which the
/// accept loop runs as one of its connection tasks.
type Served = Option<BoxFuture<'static, ()>>;

/// Connections a server keeps at most (control and data together); one
/// more is closed at once. A cluster of a thousand clients with a few
/// connections each fits.
pub const MAX_CONNECTIONS: usize = 8192;
/// Connections that have not finished their handshake (ClientHello and TLS)
/// yet, at most: a flood of silent connections (each waits out the
/// handshake deadline) cannot take every slot from authenticated peers.
pub const MAX_HANDSHAKES: usize = 256;

/// The bounds of an accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AcceptLimits {
    /// Live connections at most (see [`MAX_CONNECTIONS`]).
    pub connections: usize,
    /// Handshakes in progress at most (see [`MAX_HANDSHAKES`]).
    pub handshakes: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        AcceptLimits {
            connections: MAX_CONNECTIONS,
            handshakes: MAX_HANDSHAKES,
        }
    }
}

/// Accepts connections on `listener` until `stop` is cancelled: peeks at
/// each one's ClientHello ([`auth::peek_channel`]) and hands it to `route` with the channel it asked
/// for, its address and its handshake slot, which the TLS handshake's end
/// releases ([`serve_tls`]). A connection with a bad ClientHello is closed and
/// logged; nothing else is affected.
///
/// Bounded: beyond `limits.handshakes` connections in their handshake, or
/// `limits.connections` live ones (this loop's tasks plus `elsewhere()`,
/// the connections `route` handed to another thread), a new connection is
/// closed at once (logged at most once a second).
///
/// Every ClientHello and every connection future `route` returns is a task of
/// this loop. Once `stop` is cancelled the listener is closed and those
/// tasks are ended and awaited, then `route` is dropped: when this returns,
/// nothing it started still runs or holds a socket (a node can be stopped
/// and started again in one process). Dropping the future instead aborts
/// the tasks without waiting for them.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    route: F,
    elsewhere: impl Fn() -> usize,
    limits: AcceptLimits,
    stop: CancellationToken,
) where
    F: Fn(Channel, TcpStream, SocketAddr, HandshakeSlot) -> Served + Send + Sync + 'static,
{
    let route = Arc::new(route);
    let mut connections = JoinSet::new();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let shaking = handshakes.load(std::sync::atomic::Ordering::Acquire);
        let live = connections.len() + elsewhere();
        if shaking >= limits.handshakes || live >= limits.connections {
            let now = tokio::time::Instant::now();
            if last_warned.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                last_warned = Some(now);
                warn!(
                    "refused a connection from {peer}: {live} connections ({} at most), \
                     {shaking} handshakes in progress ({} at most)",
                    limits.connections, limits.handshakes
                );
            }
            drop(stream);
            continue;
        }
        let slot = HandshakeSlot::take(&handshakes);
        let route = route.clone();
        connections.spawn(async move {
            let hello = async {
                auth::configure_socket(&stream)?;
                auth::peek_channel(&mut stream).await
            };
            match hello.await {
                Ok(channel) => {
                    if let Some(serve) = route(channel, stream, peer, slot) {
                        serve.await;
                    }
                }
                Err(e) => warn!("refused connection from {peer}: {e}"),
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// The TLS handshake of an accepted connection (releasing `slot` when it
/// ends), then `serve` with the stream and the peer; a refused handshake is
/// logged.
pub(crate) fn serve_tls<Fut>(
    stream: TcpStream,
    from: SocketAddr,
    slot: HandshakeSlot,
    credentials: Credentials,
    channel: Channel,
    serve: impl FnOnce(auth::ServerStream, Option<crate::pki::Peer>) -> Fut + Send + 'static,
) -> BoxFuture<'static, ()>
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    async move {
        let accepted = auth::accept_tls(stream, &credentials, channel).await;
        drop(slot);
        match accepted {
            Ok((tls, Some(peer))) => {
                let revocations = credentials.revocations();
                let serial = peer.serial;
                let who = peer.to_string();
                let served = serve(tls, Some(peer));
                if crate::revocation::unless_revoked(revocations, serial, served).await {
                    warn!(
                        "closed the {channel:?} connection of {who} at {from}: its certificate \
                         was revoked"
                    );
                }
            }
            Ok((tls, None)) => serve(tls, None).await,
            Err(e) => warn!("refused {channel:?} connection from {from}: {e}"),
        }
    }
    .boxed()
}

/// Runs the MDS in `dir` until `shutdown` resolves (SIGTERM in the daemon).
///
/// The MDS is a member of the metadata group (Raft): it serves clients and
/// chunk servers on its address whatever its role (a follower forwards to
/// the leader), and only the leader runs the periodic duties. An MDS made
/// with `make-mds -I` forms the group at its first start; one made without
/// asks the group to add it until it is a member.
/// How a daemon runs, beyond its directory.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `HOST:PORT` to serve Prometheus metrics on (`GET /metrics`,
    /// [`crate::metrics`]); `None`: no endpoint.
    pub metrics: Option<String>,
}

/// [`run_mds_with`] with the default options.
pub async fn run_mds(dir: &Path, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    run_mds_with(dir, RunOptions::default(), shutdown).await
}

/// Binds the metrics endpoint of `options` (before anything else starts,
/// so that a bad address fails the start cleanly).
async fn bind_metrics(options: &RunOptions) -> Result<Option<TcpListener>> {
    match &options.metrics {
        Some(addr) => Ok(Some(crate::metrics::bind(addr).await?)),
        None => Ok(None),
    }
}

/// Serves the metrics of `render` on `listener` until `stop` is cancelled.
fn start_metrics(
    listener: Option<TcpListener>,
    render: impl FnOnce() -> crate::metrics::Render,
    stop: &CancellationToken,
) -> Option<tokio::task::JoinHandle<Result<()>>> {
    let listener = listener?;
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving metrics at /metrics");
    }
    Some(tokio::spawn(crate::metrics::serve(
        listener,
        render(),
        stop.clone().cancelled_owned(),
    )))
}

/// Runs the MDS of directory `dir` until `shutdown` resolves.
pub async fn run_mds_with(
    dir: &Path,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let metrics_listener = bind_metrics(&options).await?;
    let conf: MdsServiceConf = read_conf(&dir.join(MDS_CONF), "mds")?;
    let key = ClusterKey::read(&dir.join(KEY_FILE))?;
    let credentials = service_credentials(dir, MDS_STEM)?;
    let ca = Arc::new(ClusterCa::load(dir)?);
    let storage = RaftStorage::open_legacy_or_raft(dir.join(MDS_DB))?;
    let state = storage.initial_state()?;
    let control = Arc::new(TcpControlConnector::new(
        control_dialer(credentials.clone()),
        RpcClientOptions {
            connect_timeout: Duration::from_secs(3),
            call_timeout: Some(Duration::from_secs(10)),
        },
    ));
    // Chunk copies have no whole-call deadline: the MDS watches their
    // progress instead (mds.repl.progress_tout).
    let copy_control = Arc::new(TcpControlConnector::new(
        control_dialer(credentials.clone()),
        RpcClientOptions {
            connect_timeout: Duration::from_secs(3),
            call_timeout: None,
        },
    ));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut config = MdsConfig {
        cluster_name: conf.cluster.clone(),
        addr: conf.addr.clone(),
        ..MdsConfig::default()
    };
    apply_env_overrides(&mut config);
    let mds = Arc::new(
        MdsService::new(state, None, control, clock, config).with_copy_connector(copy_control),
    );
    let storage_closed = storage.closed();
    let (log_store, state_machine) = storage.into_parts(mds.clone());
    let raft_options = RaftOptions::from_env();
    let network = TcpRaftNetwork::new(
        control_dialer(credentials.clone()),
        RaftNetworkOptions {
            call_timeout: raft_options.rpc_timeout,
            ..RaftNetworkOptions::default()
        },
    );
    let mut raft_conf = raft_config(&conf.cluster, raft_options.snapshot_every)?;
    raft_conf.snapshot_max_chunk_size = RAFT_SNAPSHOT_CHUNK_BYTES;
    let raft = MdsRaft::new(
        conf.id,
        Arc::new(raft_conf),
        network,
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| Error::internal(format!("cannot start the MDS's Raft node: {e}")).caused_by(e))?;
    mds.attach_raft(conf.id, raft.clone())?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| Error::internal(format!("MDS Raft node: {e}")).caused_by(e))?;
    if conf.init && !initialized {
        info!(id = %conf.id, "forming the metadata group");
        let members = BTreeMap::from([(
            conf.id,
            MdsNode {
                addr: conf.addr.clone(),
            },
        )]);
        if let Err(e) = raft.initialize(members).await {
            warn!("initializing the metadata group: {e}");
        }
        // The initial state (root attributes) lives only in snapshots: make
        // sure MDSes that join later get it as one.
        if let Err(e) = compact_log_now(&raft, Duration::from_secs(30)).await {
            warn!("first snapshot of the metadata group: {e}");
        }
    }
    let router = Arc::new(
        LeaderRouter::new(
            conf.id,
            raft.clone(),
            mds.clone(),
            mds.clone(),
            mds.clone(),
            control_dialer(credentials.clone()),
            RouterOptions::default(),
        )
        .with_certs(mds.clone()),
    );
    let enrollment =
        Arc::new(Enrollment::new(&conf.cluster, key.clone(), ca).with_registry(router.clone()));
    let listener = TcpListener::bind(&conf.addr)
        .await
        .map_err(|e| Error::from(e).context(format!("cannot listen on {}", conf.addr)))?;
    info!(cluster = %conf.cluster, addr = %conf.addr, id = %conf.id, "MDS started");
    println!(
        "pstorage-mdsd: cluster {} MDS {} listening on {}",
        conf.cluster, conf.id, conf.addr
    );
    let rpc = Arc::new(RpcServerThread::spawn(
        "mds-rpc",
        credentials.clone(),
        RpcServices::new()
            .with_mds(router.clone(), router.clone())
            .with_group(router.clone())
            .with_raft(raft.clone())
            .with_enrollment(enrollment.clone())
            .with_certs(router.clone()),
    )?);
    let rpc_count = rpc.clone();
    let stop_accepting = CancellationToken::new();
    let metrics = start_metrics(
        metrics_listener,
        || crate::metrics::mds(conf.id, mds.clone(), raft.clone()),
        &stop_accepting,
    );
    let tls = credentials.clone();
    let accept = accept_loop(
        listener,
        move |channel, stream, from, slot| match channel {
            Channel::Control => {
                if let Err(e) = rpc.serve_mds(stream, Some(slot)) {
                    warn!("cannot serve an MDS connection: {e}");
                }
                None
            }
            Channel::Enroll => {
                let enrollment = enrollment.clone();
                Some(serve_tls(
                    stream,
                    from,
                    slot,
                    tls.clone(),
                    channel,
                    move |tls, _| async move {
                        if let Err(e) = enrollment.serve(tls, from.ip()).await {
                            warn!("enrollment from {from}: {e}");
                        }
                    },
                ))
            }
            // The handshake first, so that a stranger learns only that its
            // certificate is refused.
            Channel::Data => Some(serve_tls(
                stream,
                from,
                slot,
                tls.clone(),
                channel,
                move |_, peer| async move {
                    warn!("{peer:?} at {from} opened a data channel to the MDS; closed");
                },
            )),
        },
        {
            let rpc = rpc_count.clone();
            move || rpc.connections()
        },
        AcceptLimits::default(),
        stop_accepting.clone(),
    );
    tokio::pin!(accept);
    let mut accept_ended = false;
    let join = join_group(&conf, &raft, &credentials, dir);
    let removed = removed_from_group(&raft, conf.id);
    let duties = mds.run_duties(MDS_TICK);
    // This MDS's own state is its revocation list.
    let revocation_sync = crate::revocation::sync(
        credentials.revocations().clone(),
        mds.clone(),
        |_| {},
        stop_accepting.clone(),
    );
    tokio::select! {
        _ = &mut accept => accept_ended = true,
        _ = duties => {}
        () = revocation_sync => {}
        _ = shutdown => info!("MDS stopping"),
        _ = join => unreachable_join(),
        _ = removed => info!(
            id = %conf.id,
            "this MDS was removed from the metadata group (rm-mds); stopping"
        ),
    }
    // Close the port and every connection (the RPC thread too), then stop
    // Raft and wait until its tasks have let go of `mds.redb`: once this
    // returns the directory can be opened again, in this process too.
    stop_accepting.cancel();
    if !accept_ended {
        accept.await;
    }
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    // Releases answered before they committed go in before Raft stops.
    mds.settle_proposals(SETTLE_TIMEOUT).await;
    if let Err(e) = raft.shutdown().await {
        warn!("stopping the Raft node: {e}");
    }
    if !storage_closed.wait(STORAGE_CLOSE_TIMEOUT).await {
        warn!(
            "MDS {}: the Raft storage {} was still open {STORAGE_CLOSE_TIMEOUT:?} after the Raft node stopped",
            conf.id,
            dir.join(MDS_DB).display()
        );
    }
    Ok(())
}

/// How long a stopping MDS waits for the Raft tasks to release its storage.
const STORAGE_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves once this MDS, having been a member of the group, is no longer
/// one (`rm-mds`): it must stop serving, or clients and chunk servers still
/// connected to it would talk to an MDS that can never commit again.
async fn removed_from_group(raft: &MdsRaft, id: MdsId) {
    let mut metrics = raft.metrics();
    let mut was_member = false;
    loop {
        let member = metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if member {
            was_member = true;
        } else if was_member {
            // Let the answer to rm-mds (and other calls in flight) go out.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        if metrics.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// How long a stopping MDS waits for the commands it queued (the releases
/// it answered before they committed) to commit.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the MDS runs its periodic duties ([`MdsService::tick`]).
pub const MDS_TICK: Duration = Duration::from_millis(500);

/// `join_group` never returns; `select!` needs an arm for it anyway.
fn unreachable_join() {}

/// Raft tuning from the environment (tests): `PSTORAGE_RAFT_SNAPSHOT_EVERY`
/// (log entries between snapshots), `PSTORAGE_RAFT_RPC_TIMEOUT_MS`.
struct RaftOptions {
    snapshot_every: u64,
    rpc_timeout: Duration,
}

impl RaftOptions {
    fn from_env() -> RaftOptions {
        let get = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        RaftOptions {
            snapshot_every: get("PSTORAGE_RAFT_SNAPSHOT_EVERY").unwrap_or(10_000),
            rpc_timeout: Duration::from_millis(
                get("PSTORAGE_RAFT_RPC_TIMEOUT_MS").unwrap_or(10_000),
            ),
        }
    }
}

/// Until this MDS is a voting member: asks the group (through the other
/// MDSes of `bs.list`) to add it. Then waits forever.
async fn join_group(conf: &MdsServiceConf, raft: &MdsRaft, credentials: &Credentials, dir: &Path) {
    let is_voter = || {
        raft.metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == conf.id)
    };
    let mut logged = false;
    while !conf.init && !is_voter() {
        let others: Vec<String> = conf
            .join_via
            .iter()
            .filter(|a| **a != conf.addr)
            .cloned()
            .collect();
        if others.is_empty() {
            if !logged {
                warn!(
                    "MDS {} is not a member of the metadata group and bs.list names no other MDS to ask; add one to the cluster's bs.list ({})",
                    conf.id,
                    dir.display()
                );
                logged = true;
            }
        } else {
            let result = async {
                let client = MdsClient::new(
                    others.clone(),
                    control_dialer(credentials.clone()),
                    RpcClientOptions::default(),
                )?;
                client.add_mds(conf.id, &conf.addr).await
            }
            .await;
            match result {
                Ok(()) => info!(id = %conf.id, "joined the metadata group"),
                Err(e) => warn!(
                    "MDS {} joining the metadata group via {others:?}: {e}; retrying",
                    conf.id
                ),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    std::future::pending::<()>().await
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

/// Threads a chunk server's runtime runs its requests on by default
/// (`pstorage-csd --threads`): one. A CS serves one disk, and its small
/// reads and writes run inline on the runtime's threads (the page cache),
/// so what costs is handing requests between threads: on a 2-core host,
/// one thread per CS measured 18% more 4 KiB random writes through three
/// replicas, at 25% less CPU per write, than one per core. Reads and
/// writes over 64 KiB, syncs and the other store calls go to tokio's
/// blocking pool whatever the count.
pub const CS_DEFAULT_THREADS: usize = 1;

/// Threads `pstorage nbd-serve` serves its exports on by default
/// (`--threads`): one, for the same reason as a chunk server's. Measured on
/// a 2-core host through three replicas, against a runtime with a worker
/// per core: 15% more 4 KiB random reads at 20% less CPU per read, and 5%
/// more random writes.
pub const NBD_DEFAULT_THREADS: usize = 1;

/// The runtime of a daemon with `threads` request threads (at least 1): a
/// current-thread runtime for 1, else a multi-thread one. Its threads (and
/// the blocking pool's) are named `name`.
pub fn runtime(threads: usize, name: &str) -> Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.thread_name(name).enable_all().build().map_err(|e| {
        Error::internal(format!("cannot build the runtime of {name}: {e}")).caused_by(e)
    })
}

/// [`run_cs_with`] with the default options.
pub async fn run_cs(dir: &Path, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    run_cs_with(dir, RunOptions::default(), shutdown).await
}

/// Runs the CS in `dir` until `shutdown` resolves.
///
/// The session with the MDS group (registration, heartbeats, self-fencing,
/// following the group, corrupt replica reports) is
/// [`pstorage_core::chunk::session`]; this wires it to the network. The
/// MDSes it dials are `bs.list` merged with the members it learned, saved
/// in `<dir>/mds.list` so that it restarts even when every MDS of its
/// `bs.list` is gone. Before it registers (and so before it serves),
/// chunks written but not flushed when the CS last stopped uncleanly are
/// verified. At `shutdown` every written replica is flushed, so the next
/// start has nothing to verify. Scrubbing defaults to
/// [`ScrubParams::default`]; `PSTORAGE_SCRUB_PERIOD_MS` and
/// `PSTORAGE_SCRUB_RATE` (bytes/s, 0 = unlimited) override it (tests,
/// tuning). `PSTORAGE_CS_FENCE_MS` and `PSTORAGE_CS_HEARTBEAT_TIMEOUT_MS`
/// override the session's self-fence and heartbeat deadline (otherwise the
/// cluster's `cs.fence_tout` and `cs.hb_tout` apply).
pub async fn run_cs_with(
    dir: &Path,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let metrics_listener = bind_metrics(&options).await?;
    let conf: CsServiceConf = read_conf(&dir.join(CS_CONF), "cs")?;
    let cluster = ClusterConf::new(&conf.conf_root, &conf.cluster)?;
    let credentials = service_credentials(dir, CS_STEM)?;
    // The revocations it knew, refused from the start.
    let revoked_file = crate::revocation::RevokedFile::in_dir(dir);
    match revoked_file.load() {
        Ok(list) => {
            credentials.revocations().extend(0, &list);
        }
        // A copy of the MDSes' list: the first sync fetches it again.
        Err(e) => warn!(
            "CS {}: {e}; fetching the revocation list from the MDS",
            conf.id
        ),
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (bootstrap, no_bootstrap) = match cluster.bootstrap() {
        Ok(list) => (list, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let members = Arc::new(MemberDirectory::new(
        bootstrap,
        Some(Arc::new(FileMemberStore::in_dir(dir))),
        clock.clone(),
        DirectoryOptions {
            refresh_period: CS_MEMBERS_REFRESH,
            ..DirectoryOptions::default()
        },
    ));
    if let Some(e) = no_bootstrap {
        if members.addrs().is_empty() {
            return Err(e);
        }
        warn!("CS {}: {e}; using the MDS members it saved", conf.id);
    }
    let store = Arc::new(FileChunkStore::open_with(dir, &conf.store_options())?);
    let peers = Arc::new(TcpChunkConnector::new(credentials.clone()));
    let server = Arc::new(ChunkServer::new(conf.id, store, peers));
    let (reports, reporter) = bad_replica_queue();
    server.set_bad_replica_sink(reports);
    let defaults = ScrubParams::default();
    let env_ms = crate::actor::env_ms;
    let scrub_period = env_ms("PSTORAGE_SCRUB_PERIOD_MS");
    let scrub_rate = env_ms("PSTORAGE_SCRUB_RATE");
    server.set_scrub_params(
        scrub_period
            .map(Duration::from_millis)
            .unwrap_or(defaults.period),
        scrub_rate.unwrap_or(defaults.rate_bytes_per_s),
    );
    let mut session_options = SessionOptions {
        follow_scrub_params: scrub_period.is_none() && scrub_rate.is_none(),
        ..SessionOptions::default()
    };
    // The environment (tests, tuning) overrides the cluster's `cs.fence_tout`
    // and `cs.hb_tout`.
    if let Some(ms) = env_ms("PSTORAGE_CS_FENCE_MS") {
        session_options.fence = Duration::from_millis(ms);
        session_options.follow_deadline_params = false;
    }
    if let Some(ms) = env_ms("PSTORAGE_CS_HEARTBEAT_TIMEOUT_MS") {
        session_options.heartbeat_timeout = Duration::from_millis(ms);
        session_options.follow_deadline_params = false;
    }
    if session_options.heartbeat_timeout >= session_options.fence {
        return Err(Error::invalid(format!(
            "the heartbeat deadline ({:?}) must be shorter than the self-fence ({:?}); check \
             PSTORAGE_CS_HEARTBEAT_TIMEOUT_MS and PSTORAGE_CS_FENCE_MS",
            session_options.heartbeat_timeout, session_options.fence
        )));
    }
    let listener = TcpListener::bind(&conf.listen)
        .await
        .map_err(|e| Error::from(e).context(format!("cannot listen on {}", conf.listen)))?;
    let addr = listener.local_addr()?.to_string();
    info!(cs = %conf.id, %addr, "CS started");
    println!(
        "pstorage-csd: CS {} of cluster {} listening on {addr}",
        conf.id, conf.cluster
    );
    let control: Arc<dyn ChunkControl> = server.clone();
    let rpc = Arc::new(RpcServerThread::spawn(
        "cs-rpc",
        credentials.clone(),
        RpcServices::new().with_control(control),
    )?);
    let rpc_count = rpc.clone();
    let data: Arc<dyn ChunkService> = server.clone();
    let stop_accepting = CancellationToken::new();
    let metrics = start_metrics(
        metrics_listener,
        || crate::metrics::chunk_server(server.clone()),
        &stop_accepting,
    );
    let tls = credentials.clone();
    let accept = accept_loop(
        listener,
        move |channel, stream, from, slot| match channel {
            Channel::Control => {
                if let Err(e) = rpc.serve_control(stream, Some(slot)) {
                    warn!("cannot serve a control connection: {e}");
                }
                None
            }
            Channel::Data => {
                let data = data.clone();
                Some(serve_tls(
                    stream,
                    from,
                    slot,
                    tls.clone(),
                    channel,
                    move |tls, peer| serve_data_connection(tls, peer, data),
                ))
            }
            Channel::Enroll => Some(serve_tls(
                stream,
                from,
                slot,
                tls.clone(),
                channel,
                move |_, _| async move {
                    warn!("{from} asked a chunk server for an enrollment; closed");
                },
            )),
        },
        {
            let rpc = rpc_count.clone();
            move || rpc.connections()
        },
        AcceptLimits::default(),
        stop_accepting.clone(),
    );
    tokio::pin!(accept);
    let mut accept_ended = false;
    // Registration may wait for the MDS to check every replica; heartbeats
    // and membership questions are quick, and must give up on a frozen MDS
    // well before the self-fence.
    let rpc_options = RpcClientOptions {
        call_timeout: Some(session_options.register_timeout),
        ..RpcClientOptions::from_env()
    };
    let mds = MdsClient::following(
        members.clone(),
        control_dialer(credentials.clone()),
        rpc_options,
        false,
    )?
    .with_heartbeat_timeout(session_options.heartbeat_timeout);
    let mds = Arc::new(mds);
    let revocation_sync = crate::revocation::sync(
        credentials.revocations().clone(),
        mds.clone(),
        move |revocations| {
            // The set holds the list's first entries: their number is where
            // the next sync starts, whatever their order.
            if let Err(e) = revoked_file.save(&revocations.serials()) {
                warn!("cannot save the revocation list: {e}");
            }
        },
        stop_accepting.clone(),
    );
    let reporter = reporter.run(mds.clone(), server.clone(), crate::actor::MDS_CALL_TIMEOUT);
    let session = CsSession::new(
        server.clone(),
        mds.clone(),
        mds,
        members,
        clock,
        addr,
        session_options,
    );
    let scrubber = server.clone().run_scrubber();
    let result = tokio::select! {
        _ = &mut accept => {
            accept_ended = true;
            Ok(())
        }
        r = session.run() => r,
        _ = scrubber => Ok(()),
        _ = reporter => Ok(()),
        () = revocation_sync => Ok(()),
        _ = shutdown => {
            info!("CS stopping");
            Ok(())
        }
    };
    server.set_serving(false);
    // Close the port and every connection (the RPC thread too): nothing
    // reaches the store once it is flushed below.
    stop_accepting.cancel();
    if !accept_ended {
        accept.await;
    }
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    if let Err(e) = server.close_clean().await {
        warn!("CS {}: flushing at shutdown failed ({e}); the next start verifies the chunks written since their last flush", conf.id);
    }
    result
}

/// How often a chunk server asks the MDS group for its members (besides
/// after every registration and new connection).
const CS_MEMBERS_REFRESH: Duration = Duration::from_secs(5);

#[cfg(test)]
mod accept_tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Whether the server closed `stream` (EOF or a reset) within 10 s.
    async fn closed_by_server(mut stream: TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_limits_are_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let key = crate::tls::test_credentials(Role::Client);
        let server_credentials = crate::tls::test_credentials(Role::Cs);
        let stop = CancellationToken::new();
        let hold = stop.clone();
        let server = tokio::spawn(accept_loop(
            listener,
            move |channel, stream, from, slot| {
                let hold = hold.clone();
                Some(serve_tls(
                    stream,
                    from,
                    slot,
                    server_credentials.clone(),
                    channel,
                    move |mut stream, _| async move {
                        // Served until the peer closes or the server stops.
                        let mut buf = [0u8; 1];
                        tokio::select! {
                            _ = hold.cancelled() => {}
                            _ = stream.read(&mut buf) => {}
                        }
                    },
                ))
            },
            || 0,
            AcceptLimits {
                connections: 2,
                handshakes: 1,
            },
            stop.clone(),
        ));
        // A silent connection holds the only handshake slot: the next one
        // is closed at once, not after the handshake deadline.
        let silent = TcpStream::connect(&addr).await.unwrap();
        let next = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_by_server(next).await);
        drop(silent);
        // Two authenticated connections fill the server (once the silent
        // one's handshake has ended); a third is refused.
        let mut held = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while held.len() < 2 {
            match auth::connect(&addr, &key, Channel::Data).await {
                Ok(s) => held.push(s),
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        assert!(auth::connect(&addr, &key, Channel::Data).await.is_err());
        // One goes: there is room again.
        drop(held.pop());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match auth::connect(&addr, &key, Channel::Data).await {
                Ok(s) => {
                    held.push(s);
                    break;
                }
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        stop.cancel();
        server.await.unwrap();
    }
}
