//! `pstorage -c CLUSTER COMMAND ...`: the administration CLI, in the style
//! of the original pstorage.

use pstorage_core::types::CsId;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};

use pstorage_core::client::{Client, ClientOptions, File};
use pstorage_core::conf::{conf_root, ClusterConf};
use pstorage_core::types::{
    AttrUpdate, CsPlacementUpdate, InodeKind, LeaseMode, OpenFlags, DEFAULT_CHUNK_SIZE,
};
use pstorage_core::{Error, ErrorKind, Result};
use pstorage_rpc::node;

use crate::format::{format_status, format_time_ms, human};

/// Size of one transfer in `put`/`get`.
const TRANSFER_BYTES: usize = 4 << 20;
/// Transfers in flight in `put`.
const TRANSFER_DEPTH: usize = 4;

#[derive(Parser, Debug)]
#[command(name = "pstorage", version, about = "pstorage cluster administration")]
pub struct Cli {
    /// Cluster name.
    #[arg(short = 'c', long = "cluster", global = true)]
    pub cluster: Option<String>,
    /// Parent of the per-cluster configuration directories
    /// (default /etc/pstorage/clusters, or $PSTORAGE_CONF_DIR).
    #[arg(long = "conf-dir", global = true)]
    pub conf_dir: Option<PathBuf>,
    /// How long file I/O waits for a chunk that is unavailable (below
    /// replicas_min, being re-replicated, servers unreachable) before it
    /// fails, in ms (default 60000, or $PSTORAGE_IO_TIMEOUT_MS).
    #[arg(long = "io-timeout", global = true, value_name = "MS")]
    pub io_timeout_ms: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a metadata server. With -I, create a new cluster.
    MakeMds {
        /// Initialize a new cluster (its first MDS). Without -I the MDS joins
        /// the running cluster of this node (after auth-node): it gets an id
        /// now and becomes a voting member at its first start.
        #[arg(short = 'I')]
        init: bool,
        // The help is an attribute, not a doc comment: rustdoc would read
        // `[:PORT]` as a link.
        #[arg(
            short = 'a',
            help = "Address to listen on, ADDR[:PORT] (default port 2510)"
        )]
        addr: String,
        /// MDS data directory.
        #[arg(short = 'r')]
        dir: PathBuf,
        /// Ask for the cluster password (first line of stdin when not a terminal).
        #[arg(short = 'p')]
        password: bool,
        /// Default chunk size of the cluster, in bytes.
        #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
        chunk_size: u64,
        /// With -I: whether the data path (reads and writes between
        /// clients and chunk servers, and between chunk servers) is
        /// encrypted. `off` keeps TLS for the handshake (certificates,
        /// roles, revocation) and then sends data in clear: only on a
        /// trusted storage network. Fixed for the cluster's life.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        data_encryption: String,
    },
    /// Prove the cluster password to an MDS and store this node's
    /// certificate (an admin's unless --role client narrows it).
    AuthNode {
        /// Ask for the password (the default; kept for compatibility).
        #[arg(short = 'p')]
        password: bool,
        /// The role of the certificate: admin (administers the cluster) or
        /// client (files only).
        #[arg(long, default_value = "admin", value_parser = ["admin", "client"])]
        role: String,
    },
    /// List the certificates the cluster CA issued (serial, role, name,
    /// expiry, revoked or not).
    Certs,
    /// Revoke certificates for good: a serial number (see `certs`), or
    /// every unrevoked certificate of a node name. Nodes refuse them within
    /// seconds and close the connections they hold.
    Revoke {
        /// A serial number (hexadecimal) or a node name.
        which: String,
    },
    /// Get a new key and certificate with the same role and name, before
    /// the old one expires: this node's, or the MDS's or chunk server's in
    /// DIR (the daemon uses it from its next start).
    RenewCert {
        /// An MDS or chunk server directory.
        #[arg(short = 'r')]
        dir: Option<PathBuf>,
    },
    /// Create a chunk server in DIR.
    MakeCs {
        /// CS data directory.
        #[arg(short = 'r')]
        dir: PathBuf,
        /// Address to listen on, ADDR:PORT (port 0 picks a free port at each start).
        #[arg(short = 'a', default_value = "127.0.0.1:0")]
        addr: String,
        /// Where it is: ROOM.ROW.RACK (names of letters, digits, - or _).
        #[arg(long, short = 'l', default_value = pstorage_core::types::DEFAULT_LOCATION)]
        location: String,
        /// The host it runs on (default: this machine's host name); CSes of
        /// one host share that failure domain.
        #[arg(long)]
        host: Option<String>,
        /// Storage tier, 0-3.
        #[arg(long, short = 't', default_value_t = 0)]
        tier: u8,
        /// Bytes it may fill (K, M, G, T suffixes); default: its file
        /// system's size. Give it when several CSes share a file system.
        #[arg(long)]
        capacity: Option<String>,
        /// Directory for its write journal, on a fast device (an SSD);
        /// several CSes may share one. Default: inside DIR.
        #[arg(short = 'j')]
        journal_dir: Option<PathBuf>,
        /// Journal size in MiB (at least 64).
        #[arg(short = 's', default_value_t = pstorage_core::chunk::DEFAULT_JOURNAL_SIZE >> 20)]
        journal_size_mib: u64,
    },
    /// Change a chunk server's placement: location=ROOM.ROW.RACK host=NAME
    /// tier=N capacity=SIZE (0 = its file system's size).
    SetCs {
        /// The chunk server id (see `stat`).
        id: u32,
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Show cluster status: health, chunks by state, replication, MDS and chunk servers.
    Stat,
    /// Show the cluster status live, refreshed every interval (q or Ctrl-C
    /// quits; without a terminal it prints once per interval).
    Top {
        /// Refresh interval in seconds.
        #[arg(short = 'd', default_value_t = 1.0)]
        interval: f64,
        /// Stop after N refreshes.
        #[arg(short = 'n')]
        iterations: Option<u64>,
    },
    /// Set cluster parameters: KEY=VALUE... (see get-config for the keys).
    SetConfig {
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Show every cluster parameter with its value and default.
    GetConfig,
    /// Print the MDS's global event log (oldest first).
    GetEventLog {
        /// Only the last N events.
        #[arg(short = 'n')]
        last: Option<usize>,
    },
    /// Remove an MDS from the metadata group (it may be the leader; a new
    /// one is elected) and from this node's bs.list.
    RmMds {
        /// The MDS id (see `stat`).
        id: u64,
    },
    /// Remove a chunk server: its chunks move to other servers first, then
    /// it is dropped. With --force it is dropped at once (for a dead server)
    /// and its chunks are re-replicated from their other copies.
    RmCs {
        /// Drop it at once without migrating its chunks.
        #[arg(long, short = 'f')]
        force: bool,
        /// Return once the removal started instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
        id: u32,
    },
    /// Set attributes: replicas=NORM:MIN, chunk-size=BYTES, tier=N (0-3),
    /// failure-domain=disk|host|rack|row|room.
    SetAttr {
        /// Apply to everything below PATH too.
        #[arg(short = 'R')]
        recursive: bool,
        path: String,
        #[arg(required = true)]
        attrs: Vec<String>,
    },
    /// Show the attributes of PATH.
    GetAttr { path: String },
    /// Compare every replica of every chunk of PATH block by block; print
    /// each range whose replicas differ or that a replica cannot read, and
    /// exit 1 if there is any. Takes a read lease (no writer meanwhile).
    Verify {
        /// Rewrite each damaged range through its chain from the first
        /// replica in chain order that reads it (takes a write lease).
        #[arg(long)]
        repair: bool,
        path: String,
    },
    /// Copy a local file (- for stdin) into the cluster.
    Put { local: String, path: String },
    /// Copy a cluster file to a local file (- for stdout).
    Get { path: String, local: String },
    /// List a directory.
    Ls {
        #[arg(short = 'l')]
        long: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Create a directory.
    Mkdir {
        #[arg(short = 'p')]
        parents: bool,
        path: String,
    },
    /// Remove a file or an empty directory.
    Rm { path: String },
    /// Rename a file or directory.
    Mv { from: String, to: String },
    /// Show the chunks of a file: id, version, replicas.
    Chunks { path: String },
    /// Measure the cluster against the local disk (like `rados bench`).
    Bench(crate::bench::BenchArgs),
    /// Create PATH if needed and set its size (an image for nbd-serve).
    Truncate {
        /// New size in bytes; suffixes K, M, G, T (binary).
        #[arg(short = 's')]
        size: String,
        path: String,
    },
    /// Export cluster files as NBD block devices (export name = file path).
    NbdServe {
        /// TCP ADDR:PORT to listen on (default 127.0.0.1:10809 unless --socket).
        #[arg(long)]
        listen: Option<String>,
        /// Unix socket to listen on.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Mode of the Unix socket (octal; 0600: only this user's processes
        /// may connect; 0660 lets the socket's group in too).
        #[arg(long, default_value = "600", value_parser = parse_socket_mode)]
        socket_mode: u32,
        /// Serve only the files below this cluster directory (default: the
        /// whole namespace).
        #[arg(long, value_name = "DIR")]
        export_dir: Option<String>,
        /// Require TLS of every client (NBD_OPT_STARTTLS): this node's
        /// certificate, and a client certificate of the cluster CA
        /// (qemu: tls-creds-x509 with ca-cert.pem, client-cert.pem,
        /// client-key.pem; libnbd: nbds://...?tls-certificates=DIR).
        #[arg(long)]
        tls: bool,
        /// Allow listening on a non-loopback address without --tls: anyone
        /// who reaches the address can read and write every export.
        #[arg(long)]
        insecure: bool,
        /// Refuse writes; open files with read leases.
        #[arg(long)]
        read_only: bool,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<String>,
        /// Threads serving the exports (1..64). The default, 1, measured
        /// best on a 2-core host; more may pay for many busy exports.
        #[arg(long, default_value_t = pstorage_rpc::node::NBD_DEFAULT_THREADS as u16,
              value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
    },
}

/// An octal socket mode (`600`, `0660`), permission bits only.
fn parse_socket_mode(s: &str) -> std::result::Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(mode) if mode & !0o777 == 0 => Ok(mode),
        _ => Err(format!("{s:?} is not an octal mode like 600 or 660")),
    }
}

impl Cli {
    /// The threads the command's runtime should have: `Some` for a server
    /// that chose (`nbd-serve --threads`), `None` for the default (a
    /// worker per core).
    pub fn runtime_threads(&self) -> Option<usize> {
        match &self.command {
            Command::NbdServe { threads, .. } => Some(*threads as usize),
            _ => None,
        }
    }

    fn cluster(&self) -> Result<ClusterConf> {
        let name = self
            .cluster
            .as_deref()
            .ok_or_else(|| Error::invalid("no cluster given: use -c CLUSTER"))?;
        ClusterConf::new(&self.root(), name)
    }

    fn root(&self) -> PathBuf {
        conf_root(self.conf_dir.as_deref())
    }

    /// Client options: the I/O timeout from --io-timeout or the environment.
    fn client_options(&self) -> Result<ClientOptions> {
        let mut options = ClientOptions::default();
        let ms = match self.io_timeout_ms {
            Some(ms) => Some(ms),
            None => match std::env::var("PSTORAGE_IO_TIMEOUT_MS") {
                Ok(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                    Error::invalid(format!(
                        "PSTORAGE_IO_TIMEOUT_MS={v:?} is not a number of milliseconds"
                    ))
                })?),
                Err(_) => None,
            },
        };
        if let Some(ms) = ms {
            options.io_timeout = std::time::Duration::from_millis(ms);
        }
        Ok(options)
    }
}

/// Runs the CLI; returns the process exit code (0 ok, 1 error).
pub async fn run(cli: Cli) -> i32 {
    match execute(&cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pstorage: {e}");
            exit_code(&e)
        }
    }
}

async fn execute(cli: &Cli) -> Result<()> {
    let conf = cli.cluster()?;
    let options = cli.client_options()?;
    let client = |conf: &ClusterConf| node::connect_client(conf, options.clone());
    match &cli.command {
        Command::MakeMds {
            init,
            addr,
            dir,
            password: _,
            chunk_size,
            data_encryption,
        } => {
            let data_path = if data_encryption == "off" {
                pstorage_rpc::pki::DataPath::Clear
            } else {
                pstorage_rpc::pki::DataPath::Encrypted
            };
            if !init {
                if data_path == pstorage_rpc::pki::DataPath::Clear {
                    return Err(Error::invalid(
                        "--data-encryption is chosen when the cluster is made (make-mds -I); \
                         a joining MDS follows the cluster's CA",
                    ));
                }
                let service = node::join_cluster_mds(&conf, dir, addr).await?;
                println!(
                    "MDS {} of cluster {} made at {} in {}; start it with: pstorage-mdsd -r {} (it joins the metadata group at its first start)",
                    service.id,
                    conf.name,
                    service.addr,
                    dir.display(),
                    dir.display()
                );
                return Ok(());
            }
            let password = crate::password::read_password("Cluster password: ", true)?;
            crate::password::check_strength(&password, &conf.name)?;
            let key = pstorage_rpc::auth::derive_key(&conf.name, &password);
            let service =
                node::create_cluster_mds_with(&conf, dir, addr, &key, *chunk_size, data_path)?;
            println!(
                "created cluster {} with its first MDS at {} in {}; start it with: pstorage-mdsd -r {}",
                conf.name,
                service.addr,
                dir.display(),
                dir.display()
            );
            if data_path == pstorage_rpc::pki::DataPath::Clear {
                println!(
                    "the data path of cluster {} is NOT encrypted (--data-encryption off): \
                     use it only on a trusted storage network",
                    conf.name
                );
            }
            println!(
                "cluster CA fingerprint (SHA-256): {}",
                node::ca_fingerprint(dir)?
            );
        }
        Command::AuthNode { role, .. } => {
            let role = pstorage_rpc::pki::Role::parse(role)?;
            let password = crate::password::read_password("Cluster password: ", false)?;
            let identity = node::auth_node(&conf, &password, role).await?;
            println!(
                "node authenticated in cluster {} as {} (role {}, certificate serial {}); cluster CA \
                 fingerprint (SHA-256) {}",
                conf.name,
                identity.peer.name,
                identity.peer.role,
                identity.peer.serial,
                identity.ca_fingerprint()
            );
        }
        Command::Certs => {
            use pstorage_core::traits::CertificateRegistry;
            let mds = node::connect_mds(&conf, pstorage_rpc::ClientOptions::from_env())?;
            let certs = mds.certificates().await?;
            println!(
                "{:<32} {:<6} {:<24} {:<23} {:<23} REVOKED",
                "SERIAL", "ROLE", "NAME", "ISSUED", "EXPIRES"
            );
            for c in &certs {
                let when = |ms: u64| {
                    if ms == 0 {
                        "-".to_string()
                    } else {
                        format_time_ms(ms)
                    }
                };
                println!(
                    "{:<32} {:<6} {:<24} {:<23} {:<23} {}",
                    c.serial,
                    if c.role.is_empty() { "-" } else { &c.role },
                    if c.name.is_empty() { "-" } else { &c.name },
                    when(c.issued_ms),
                    when(c.not_after_ms),
                    c.revoked_ms.map_or("no".to_string(), format_time_ms)
                );
            }
        }
        Command::Revoke { which } => {
            use pstorage_core::traits::CertificateRegistry;
            let mds = node::connect_mds(&conf, pstorage_rpc::ClientOptions::from_env())?;
            for c in mds.revoke_certificates(which).await? {
                let whose = if c.name.is_empty() {
                    "an unrecorded node".to_string()
                } else {
                    format!("{} ({})", c.name, c.role)
                };
                println!("revoked certificate {} of {whose}", c.serial);
            }
        }
        Command::RenewCert { dir } => {
            let identity = node::renew_certificate(&conf, dir.as_deref()).await?;
            let (name, role) = (&identity.peer.name, identity.peer.role);
            match dir {
                Some(dir) => println!(
                    "renewed the certificate of {name} ({role}) in {}: serial {}; restart the \
                     daemon to use it",
                    dir.display(),
                    identity.peer.serial
                ),
                None => println!(
                    "renewed this node's certificate ({name}, {role}): serial {}",
                    identity.peer.serial
                ),
            }
        }
        Command::MakeCs {
            dir,
            addr,
            location,
            host,
            tier,
            capacity,
            journal_dir,
            journal_size_mib,
        } => {
            let mut placement = CsPlacementUpdate::default();
            placement.parse_assignment(&format!("location={location}"))?;
            let host = match host {
                Some(h) => h.clone(),
                None => node::this_host_name()?,
            };
            placement.parse_assignment(&format!("host={host}"))?;
            placement.parse_assignment(&format!("tier={tier}"))?;
            if let Some(c) = capacity {
                placement.parse_assignment(&format!("capacity={c}"))?;
            }
            let journal = pstorage_core::chunk::StoreOptions {
                journal_dir: journal_dir.clone(),
                journal_size: journal_size_mib.saturating_mul(1 << 20),
                ..Default::default()
            };
            let id = node::create_cs(&conf, &cli.root(), dir, addr, placement, &journal).await?;
            println!(
                "created CS {id} in {}; start it with: pstorage-csd -r {}",
                dir.display(),
                dir.display()
            );
        }
        Command::Stat => print_stat(&client(&conf)?).await?,
        Command::SetAttr {
            recursive,
            path,
            attrs,
        } => {
            let mut update = AttrUpdate::default();
            for a in attrs {
                update.parse_assignment(a)?;
            }
            client(&conf)?.set_attr(path, update, *recursive).await?;
        }
        Command::Verify { repair, path } => {
            let report = client(&conf)?.verify(path, *repair).await?;
            for p in &report.repaired {
                println!("repaired: {p}");
            }
            for p in &report.problems {
                println!("{p}");
            }
            println!(
                "{path}: {} chunks, {} replicas, {} read: {} problems{}",
                report.chunks,
                report.replicas,
                human(report.bytes_read),
                report.problems.len(),
                if *repair {
                    format!(" left, {} repaired", report.repaired.len())
                } else {
                    String::new()
                }
            );
            if !report.problems.is_empty() {
                return Err(Error::corrupt(format!(
                    "{} ranges of {path} differ between replicas or cannot be read",
                    report.problems.len()
                )));
            }
        }
        Command::GetAttr { path } => {
            let attrs = client(&conf)?.get_attr(path).await?;
            println!("replicas={}", attrs.replicas);
            println!("chunk-size={}", attrs.chunk_size);
            println!("tier={}", attrs.tier);
            println!("failure-domain={}", attrs.failure_domain);
        }
        Command::SetCs { id, settings } => {
            let mut update = CsPlacementUpdate::default();
            for s in settings {
                update.parse_assignment(s)?;
            }
            let mds = node::connect_mds(&conf, Default::default())?;
            pstorage_core::traits::MetadataService::set_cs(&mds, CsId(*id), update).await?;
        }
        Command::Put { local, path } => put(&client(&conf)?, local, path).await?,
        Command::Get { path, local } => get(&client(&conf)?, path, local).await?,
        Command::Ls { long, path } => ls(&client(&conf)?, path, *long).await?,
        Command::Mkdir { parents, path } => {
            client(&conf)?.mkdir(path, *parents).await?;
        }
        Command::Rm { path } => client(&conf)?.unlink(path).await?,
        Command::Mv { from, to } => client(&conf)?.rename(from, to).await?,
        Command::Chunks { path } => {
            let mds = node::connect_mds(&conf, Default::default())?;
            let maps = pstorage_core::traits::MetadataService::file_chunks(&mds, path).await?;
            println!(
                "{:>8} {:>18} {:>8}  replicas (chain order)",
                "index", "chunk", "version"
            );
            for m in maps {
                let chain: Vec<String> = m
                    .replicas
                    .iter()
                    .map(|r| format!("cs{}@{}", r.cs, r.addr))
                    .collect();
                println!(
                    "{:>8} {:>#18x} {:>8}  {}",
                    m.index,
                    m.chunk,
                    m.version,
                    chain.join(" -> ")
                );
            }
        }
        Command::Bench(args) => crate::bench::run(&conf, args).await?,
        Command::Truncate { size, path } => {
            let size = pstorage_core::types::parse_size(size)?;
            crate::nbd::truncate(&client(&conf)?, path, size).await?;
        }
        Command::NbdServe {
            listen,
            socket,
            socket_mode,
            export_dir,
            tls,
            insecure,
            read_only,
            metrics,
            threads: _,
        } => {
            // With TLS, the export refuses revoked client certificates: it
            // syncs the cluster's revocation list as a chunk server does.
            let (tls, revocation_sync) = match tls {
                true => {
                    let credentials = node::node_credentials(&conf)?;
                    let registry: Arc<dyn pstorage_core::traits::CertificateRegistry> = Arc::new(
                        node::connect_mds(&conf, pstorage_rpc::ClientOptions::from_env())?,
                    );
                    let sync = tokio::spawn(pstorage_rpc::revocation::sync(
                        credentials.revocations().clone(),
                        registry,
                        |_| {},
                        Default::default(),
                    ));
                    (
                        Some(pstorage_rpc::tls::nbd_server_config(&credentials)?),
                        Some(sync),
                    )
                }
                false => (None, None),
            };
            let options = crate::nbd::ServeOptions {
                listen: listen.clone(),
                socket: socket.clone(),
                socket_mode: *socket_mode,
                export_dir: export_dir.clone(),
                insecure: *insecure,
                tls,
                read_only: *read_only,
                metrics: metrics.clone(),
            };
            let served = crate::nbd::serve(client(&conf)?, options, termination()).await;
            if let Some(sync) = revocation_sync {
                sync.abort();
            }
            served?;
        }
        Command::Top {
            interval,
            iterations,
        } => crate::top::run(&client(&conf)?, *interval, *iterations).await?,
        Command::SetConfig { settings } => {
            // Every setting is checked before any is sent: a bad one
            // changes nothing.
            let parsed = settings
                .iter()
                .map(|s| pstorage_core::mds::ClusterParams::parse_assignment(s))
                .collect::<Result<Vec<_>>>()?;
            let client = client(&conf)?;
            for (key, value) in parsed {
                client.mds().set_config(&key, value).await?;
                println!("{key}={value}");
            }
        }
        Command::GetConfig => {
            let entries = client(&conf)?.mds().get_config().await?;
            println!(
                "{:<24} {:>14} {:>14} {:<8} DESCRIPTION",
                "KEY", "VALUE", "DEFAULT", "UNIT"
            );
            for e in entries {
                println!(
                    "{:<24} {:>14} {:>14} {:<8} {}",
                    e.key, e.value, e.default, e.unit, e.description
                );
            }
        }
        Command::GetEventLog { last } => {
            let events = client(&conf)?.mds().event_log(0).await?;
            let skip = last.map_or(0, |n| events.len().saturating_sub(n));
            for e in &events[skip..] {
                println!(
                    "{} {:<5} {:<11} {}",
                    format_time_ms(e.time_ms),
                    e.level.to_string(),
                    e.kind.to_string(),
                    e.message
                );
            }
        }
        Command::RmMds { id } => {
            let addr = node::remove_mds(&conf, pstorage_core::types::MdsId(*id)).await?;
            println!("MDS {id} ({addr}) removed from the metadata group and from bs.list");
        }
        Command::RmCs { force, no_wait, id } => {
            rm_cs(&client(&conf)?, *id, *force, *no_wait).await?
        }
    }
    Ok(())
}

/// `rm-cs`: starts the removal, then (unless `no_wait`) follows it until
/// the server is dropped, printing progress.
async fn rm_cs(client: &Client, id: u32, force: bool, no_wait: bool) -> Result<()> {
    client.mds().remove_cs(CsId(id), force).await?;
    if force {
        println!("chunk server {id} dropped; its chunks are re-replicated from their other copies");
        return Ok(());
    }
    if no_wait {
        println!("chunk server {id} is being released; `pstorage stat` shows the progress");
        return Ok(());
    }
    let mut last_chunks = None;
    loop {
        let status = client.cluster_status().await?;
        let Some(cs) = status.cs.iter().find(|c| c.id == CsId(id)) else {
            return Err(Error::not_found(format!(
                "chunk server {id} disappeared from the cluster status"
            )));
        };
        if cs.status == pstorage_core::types::CsStatus::Dropped {
            println!("chunk server {id} released: its chunks have their copies on other servers");
            return Ok(());
        }
        if last_chunks != Some(cs.chunks) {
            println!(
                "chunk server {id}: {} chunk(s) still to move ({} copies in flight)",
                cs.chunks, status.replication.in_flight
            );
            last_chunks = Some(cs.chunks);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn print_stat(client: &Client) -> Result<()> {
    let s = client.cluster_status().await?;
    print!("{}", format_status(&s));
    Ok(())
}

async fn put(client: &Client, local: &str, path: &str) -> Result<()> {
    let mut input: Box<dyn Read + Send> = if local == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(local).map_err(|e| Error::from(e).context(local))?)
    };
    let flags = OpenFlags {
        create: true,
        truncate: true,
        ..Default::default()
    };
    let file = Arc::new(client.open(path, LeaseMode::Write, flags).await?);
    let result = copy_in(&file, &mut input).await;
    let closed = file.close().await;
    result.and(closed)
}

async fn copy_in(file: &Arc<File>, input: &mut Box<dyn Read + Send>) -> Result<()> {
    let mut offset = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        let mut buf = vec![0u8; TRANSFER_BYTES];
        let n = read_full(input, &mut buf)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        while inflight.len() >= TRANSFER_DEPTH {
            join_one(&mut inflight).await?;
        }
        let f = file.clone();
        let at = offset;
        inflight.spawn(async move { f.write_at(at, &buf).await });
        offset += n as u64;
    }
    while !inflight.is_empty() {
        join_one(&mut inflight).await?;
    }
    file.flush().await
}

async fn join_one(set: &mut tokio::task::JoinSet<Result<()>>) -> Result<()> {
    match set.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(Error::internal(format!("transfer task failed: {e}")).caused_by(e)),
        None => Ok(()),
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(input: &mut Box<dyn Read + Send>, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

async fn get(client: &Client, path: &str, local: &str) -> Result<()> {
    let file = client
        .open(path, LeaseMode::Read, OpenFlags::default())
        .await?;
    let result = copy_out(&file, local).await;
    let closed = file.close().await;
    result.and(closed)
}

async fn copy_out(file: &File, local: &str) -> Result<()> {
    let mut output: Box<dyn Write> = if local == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(local).map_err(|e| Error::from(e).context(local))?)
    };
    let size = file.size();
    let mut buf = vec![0u8; TRANSFER_BYTES];
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(TRANSFER_BYTES as u64) as usize;
        let n = file.read_at(offset, &mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n])?;
        offset += n as u64;
    }
    output.flush()?;
    Ok(())
}

async fn ls(client: &Client, path: &str, long: bool) -> Result<()> {
    let stat = client.stat(path).await?;
    let is_dir = stat.kind == InodeKind::Dir;
    let entries = if is_dir {
        client.readdir(path).await?
    } else {
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string());
        vec![pstorage_core::types::DirEntry { name, stat }]
    };
    for e in entries {
        if long {
            let target = if e.stat.kind == InodeKind::Symlink {
                let link = if is_dir {
                    format!("{}/{}", path.trim_end_matches('/'), e.name)
                } else {
                    path.to_string()
                };
                match client.readlink(&link).await {
                    Ok(t) => format!(" -> {t}"),
                    Err(_) => String::new(),
                }
            } else {
                String::new()
            };
            println!("{}{target}", crate::format::format_ls_line(&e));
        } else {
            println!("{}", e.name);
        }
    }
    Ok(())
}

/// Maps an error onto a process exit code for scripts (1 = generic).
pub fn exit_code(e: &Error) -> i32 {
    match e.kind() {
        ErrorKind::InvalidArgument => 2,
        _ => 1,
    }
}

/// Logs to stderr, filtered by `PSTORAGE_LOG` (default `warn`). The Raft
/// library's own info messages (one per heartbeat round and vote) are
/// left out unless the filter names `openraft`.
pub fn init_logging() {
    let spec = std::env::var("PSTORAGE_LOG").unwrap_or_else(|_| "warn".to_string());
    let spec = if spec.contains("openraft") {
        spec
    } else {
        format!("{spec},openraft=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_utc_dates() {
        assert_eq!(format_time_ms(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_time_ms(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(format_time_ms(1_700_000_000_999), "2023-11-14 22:13:20.999");
    }
}
