//! The `pstorage-mount` daemon: [`run`] checks the command line, daemonizes
//! (unless `-f`), connects to the cluster, mounts with [`mount`] and tells
//! the waiting parent the mount is ready, then serves until unmounted
//! (`fusermount3 -u`, `umount`, SIGTERM or SIGINT).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::MountOption;
use pstorage_core::client::ClientOptions;
use pstorage_core::conf::{conf_root, ClusterConf};
use pstorage_core::error::{Error, ErrorKind, Result};
use pstorage_core::types::parse_size;

use super::cache::ReadCache;
use super::ops::FsConfig;
use super::options::{parse_mount_options, MountArgs, MountOpts};
use super::session::{mount, MountOptions};

/// Everything needed to mount, checked before daemonizing so that mistakes
/// are reported on the terminal.
#[derive(Debug)]
struct Plan {
    conf: ClusterConf,
    mountpoint: PathBuf,
    foreground: bool,
    opts: MountOpts,
    cache: Option<(PathBuf, u64)>,
    threads: usize,
    log: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    /// The metrics endpoint, bound before daemonizing (a busy address is
    /// reported on the terminal); the daemon inherits it.
    metrics: Option<std::net::TcpListener>,
}

fn plan(args: &MountArgs) -> Result<Plan> {
    let opts = parse_mount_options(&args.options)?;
    let (source, mountpoint) = match args.targets.as_slice() {
        [m] => (None, m.clone()),
        [s, m] => (Some(s.clone()), m.clone()),
        _ => return Err(Error::invalid("give [CLUSTER] MOUNTPOINT")),
    };
    let mut names: Vec<String> = [args.cluster.clone(), source, opts.cluster.clone()]
        .into_iter()
        .flatten()
        .collect();
    names.dedup();
    let cluster = match names.as_slice() {
        [] => {
            return Err(Error::invalid(
                "no cluster given: use -c CLUSTER (or CLUSTER before the mount point)",
            ))
        }
        [one] => one.clone(),
        _ => {
            return Err(Error::invalid(format!(
                "the cluster is given twice with different names: {names:?}"
            )))
        }
    };
    let root = conf_root(args.conf_dir.as_deref().or(opts.conf_dir.as_deref()));
    let conf = ClusterConf::new(&root, &cluster)?;
    // Fail now, on the terminal, rather than in the daemon.
    conf.bootstrap()?;
    pstorage_rpc::node::node_credentials(&conf)?;
    let mountpoint = std::fs::canonicalize(&mountpoint).map_err(|e| {
        Error::from(e).context(format!(
            "mount point {mountpoint} (create the directory first)"
        ))
    })?;
    if !mountpoint.is_dir() {
        return Err(Error::new(
            ErrorKind::NotADirectory,
            format!("mount point {} is not a directory", mountpoint.display()),
        ));
    }
    let cache_file = args.cache_file.clone().or(opts.cache_file.clone());
    let cache_size = match &args.cache_size {
        Some(s) => Some(parse_size(s)?),
        None => opts.cache_size,
    };
    let cache = match (cache_file, cache_size) {
        (Some(f), Some(s)) => Some((absolute(&f)?, s)),
        (None, None) => None,
        _ => {
            return Err(Error::invalid(
                "the read cache needs both -C CACHE_FILE and -R SIZE",
            ))
        }
    };
    let threads = args.threads.or(opts.threads).unwrap_or(2);
    if !(1..=64).contains(&threads) {
        return Err(Error::invalid("--threads must be within 1..64"));
    }
    let log = match args.log.clone().or(opts.log.clone()) {
        Some(p) => Some(absolute(&p)?),
        None => None,
    };
    let pid_file = match &args.pid_file {
        Some(p) => Some(absolute(p)?),
        None => None,
    };
    let metrics = match args.metrics.as_ref().or(opts.metrics.as_ref()) {
        Some(addr) => Some(std::net::TcpListener::bind(addr).map_err(|e| {
            Error::invalid(format!(
                "cannot serve metrics at {addr}: {e}; give --metrics a free local HOST:PORT"
            ))
            .caused_by(e)
        })?),
        None => None,
    };
    Ok(Plan {
        conf,
        mountpoint,
        foreground: args.foreground,
        opts,
        cache,
        threads,
        log,
        pid_file,
        metrics,
    })
}

/// `path` made absolute against the current directory (the daemon changes
/// to `/`).
fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(path))
}

/// The write end of the pipe a daemonized child reports readiness on.
struct ReadyPipe(std::fs::File);

impl ReadyPipe {
    fn report(mut self, outcome: &Result<()>) {
        let msg = match outcome {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error: {e}\n"),
        };
        let _ = self.0.write_all(msg.as_bytes());
    }
}

/// Forks. The parent waits for the child's report on a pipe and exits with
/// 0 once the mount is ready, or prints the child's error and exits with 1.
/// The child returns the pipe's write end, in a new session. Must be called
/// before any thread is started.
fn daemonize() -> Result<ReadyPipe> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills two fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: both fds are ours and open.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread runs yet (checked by the caller's contract),
    // so the child is a consistent copy.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error().into()),
        0 => {
            drop(read_end);
            // SAFETY: plain syscall; fails only if already a group leader.
            unsafe { libc::setsid() };
            Ok(ReadyPipe(std::fs::File::from(write_end)))
        }
        child => {
            drop(write_end);
            let mut msg = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
            if msg.starts_with("ok") {
                std::process::exit(0);
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
            let msg = msg.trim().strip_prefix("error: ").unwrap_or(msg.trim());
            if msg.is_empty() {
                eprintln!("pstorage-mount: the mount process exited before the mount was ready");
            } else {
                eprintln!("pstorage-mount: {msg}");
            }
            std::process::exit(1);
        }
    }
}

/// Points stdin and stdout at /dev/null and stderr at the log file (or
/// /dev/null): a daemon must not hold the terminal or the caller's pipes.
fn detach_stdio(log: Option<&Path>) -> Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err = match log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(p)
            .map_err(|e| Error::from(e).context(format!("log file {}", p.display())))?,
        None => null.try_clone()?,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto the standard descriptors of this process.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(err.as_raw_fd(), 2);
    }
    Ok(())
}

/// Runs `pstorage-mount`: returns when the file system was unmounted, or
/// with the first error. In daemon mode the calling process exits inside
/// (0 once the mount is ready) and only the daemon returns.
pub fn run(args: MountArgs) -> Result<()> {
    let plan = plan(&args)?;
    let ready = if plan.foreground {
        None
    } else {
        Some(daemonize()?)
    };
    let mut ready = ready;
    let result = serve(&plan, &mut ready);
    if let Some(p) = &plan.pid_file {
        let _ = std::fs::remove_file(p);
    }
    if let Some(r) = ready.take() {
        // Failed before the mount was ready: the waiting parent says why and
        // exits 1. The child still shares the caller's stderr, so it exits
        // without a word of its own (both would print, interleaved).
        r.report(&result);
        if result.is_err() {
            std::process::exit(1);
        }
    }
    result
}

fn serve(plan: &Plan, ready: &mut Option<ReadyPipe>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("pstorage-mount")
        .enable_all()
        .build()?;
    let client = {
        let _in_rt = rt.enter();
        pstorage_rpc::node::connect_client(&plan.conf, ClientOptions::default())?
    };
    rt.block_on(client.cluster_status()).map_err(|e| {
        e.context(format!(
            "cannot reach cluster {} (bs.list {})",
            plan.conf.name,
            plan.conf.bs_list_path().display()
        ))
    })?;
    let cache = match &plan.cache {
        Some((path, size)) => Some(Arc::new(ReadCache::create(
            path,
            *size,
            plan.opts.cache_admit.unwrap_or(2),
        )?)),
        None => None,
    };
    let (_stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(listener) = &plan.metrics {
        let listener = listener
            .try_clone()
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(|l| {
                let _in_rt = rt.enter();
                tokio::net::TcpListener::from_std(l)
            })?;
        rt.spawn(pstorage_rpc::metrics::serve(
            listener,
            render_metrics(cache.clone()),
            async {
                let _ = metrics_stopped.await;
            },
        ));
    }
    let mut fs = FsConfig {
        direct_io: plan.opts.direct_io,
        atime: !plan.opts.mount.contains(&MountOption::NoAtime),
        ..FsConfig::default()
    };
    if let Some(t) = plan.opts.attr_timeout {
        fs.attr_ttl = t;
    }
    // The kernel checks every access against the modes and owners the
    // cluster stores (the mount never does it itself).
    let mut mount_options = vec![
        MountOption::FSName(format!("pstorage:{}", plan.conf.name)),
        MountOption::Subtype("pstorage-mount".into()),
        MountOption::DefaultPermissions,
    ];
    mount_options.extend(
        plan.opts
            .mount
            .iter()
            .filter(|o| **o != MountOption::DefaultPermissions)
            .cloned(),
    );
    let opts = MountOptions {
        fs,
        cache: cache.clone(),
        mount_options,
        acl: plan.opts.acl,
        threads: plan.threads,
        runtime: Some(rt.handle().clone()),
    };
    let handle = mount(client, &plan.mountpoint, opts)?;
    // Mounted and the FUSE handshake done: the file system answers.
    if let Some(p) = &plan.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| Error::from(e).context(format!("pid file {}", p.display())))?;
    }
    if let Some(r) = ready.take() {
        detach_stdio(plan.log.as_deref())?;
        // SAFETY: chdir to a static C string.
        unsafe { libc::chdir(c"/".as_ptr()) };
        r.report(&Ok(()));
    }
    tracing::info!(
        "mounted cluster {} at {}",
        plan.conf.name,
        plan.mountpoint.display()
    );
    let unmounter = handle.unmounter();
    let mountpoint = plan.mountpoint.clone();
    rt.spawn(async move {
        crate::cli::termination().await;
        tracing::info!("signal: unmounting {}", mountpoint.display());
        // A mount that can be neither unmounted nor detached goes on serving
        // (the error is logged).
        let _ = tokio::task::spawn_blocking(move || unmounter.unmount()).await;
    });
    let served = handle.wait();
    if let Some(c) = &cache {
        tracing::info!("read cache: {:?}", c.stats());
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    served
}

/// What `pstorage-mount --metrics` answers: the FUSE requests by operation,
/// the SDK's calls to the MDS and the chunk servers, and the read cache.
fn render_metrics(cache: Option<Arc<ReadCache>>) -> pstorage_rpc::metrics::Render {
    Arc::new(move || {
        let mut m = pstorage_rpc::metrics::MetricsText::new();
        super::fs::FUSE_REQUESTS.render_into(&mut m);
        pstorage_rpc::call_metrics::CLIENT_CS.render_into(&mut m);
        pstorage_rpc::call_metrics::CLIENT_MDS.render_into(&mut m);
        if let Some(c) = &cache {
            let s = c.stats();
            for (name, help, value) in [
                ("hits", "Reads served from the read cache.", s.hits),
                (
                    "misses",
                    "Random reads the read cache did not hold.",
                    s.misses,
                ),
                (
                    "sequential",
                    "Sequential reads that bypassed the read cache.",
                    s.sequential,
                ),
                (
                    "admitted",
                    "Blocks written into the read cache.",
                    s.admitted,
                ),
                (
                    "corrupt",
                    "Cached blocks that failed their check (dropped).",
                    s.corrupt,
                ),
                (
                    "invalidated",
                    "Cached blocks dropped by writes, truncates and leases.",
                    s.invalidated,
                ),
            ] {
                m.counter(&format!("pstorage_mount_cache_{name}_total"), help, value);
            }
        }
        Box::pin(std::future::ready(m.render()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn plan_checks_cluster_and_mountpoint() {
        let args = |v: &[&str]| {
            MountArgs::try_parse_from(std::iter::once("pstorage-mount").chain(v.iter().copied()))
                .unwrap()
        };
        let e = plan(&args(&["/tmp"])).unwrap_err();
        assert!(e.message().contains("no cluster"), "{e}");
        let e = plan(&args(&["-c", "a", "b", "/tmp"])).unwrap_err();
        assert!(e.message().contains("twice"), "{e}");
        let e = plan(&args(&[
            "--conf-dir",
            "/nonexistent-pstorage-conf",
            "-c",
            "x",
            "/tmp",
        ]))
        .unwrap_err();
        assert!(e.message().contains("x"), "{e}");
        assert!(MountArgs::try_parse_from(["pstorage-mount"]).is_err());
    }
}
