//! `pstorage-mount`: the cluster as a local file system through FUSE.
//!
//! [`run`] parses nothing itself: [`MountArgs`] (clap) is filled by the
//! binary, checked here, then the process daemonizes (unless `-f`), connects
//! to the cluster, mounts with fuser (pure Rust: `mount(2)` as root, else the
//! setuid `fusermount3`), tells the waiting parent the mount is ready, and
//! serves until unmounted (`fusermount3 -u`, `umount`, SIGTERM or SIGINT).
//!
//! - [`fs`]: the FUSE operations over the SDK (leases, inode table, page
//!   cache rules),
//! - [`inodes`]: inode number <-> path,
//! - [`cache`]: the optional local SSD read cache.

pub mod cache;
pub mod fs;
pub mod inodes;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fuser::{Config, MountOption, SessionACL};
use pstorage_core::client::ClientOptions;
use pstorage_core::conf::{conf_root, ClusterConf};
use pstorage_core::error::{Error, ErrorKind, Result};

use cache::ReadCache;
use fs::{FsConfig, PstorageFs};
use pstorage_core::types::parse_size;

/// Command line of `pstorage-mount`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "pstorage-mount",
    version,
    about = "Mount a pstorage cluster as a file system (FUSE)",
    after_help = "Unmount with `fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`.\n\
                  fstab: `NAME /mnt/pstorage fuse.pstorage-mount defaults,_netdev 0 0`"
)]
pub struct MountArgs {
    /// Cluster name (its config is ROOT/NAME/bs.list and auth.key).
    #[arg(short = 'c', long = "cluster")]
    pub cluster: Option<String>,
    /// Cluster config root instead of $PSTORAGE_CONF_DIR or /etc/pstorage/clusters.
    #[arg(long = "conf-dir")]
    pub conf_dir: Option<PathBuf>,
    /// Stay in the foreground (otherwise daemonize once the mount is ready).
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Mount options, comma separated (see the README: rw, ro, allow_other,
    /// conf_dir=DIR, cache_file=PATH, cache_size=SIZE, direct_io, ...).
    #[arg(short = 'o', action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Local read cache file (on an SSD), used with -R.
    #[arg(short = 'C', long = "cache-file")]
    pub cache_file: Option<PathBuf>,
    /// Read cache size, e.g. 4G (powers of 1024).
    #[arg(short = 'R', long = "cache-size")]
    pub cache_size: Option<String>,
    /// FUSE request threads (requests themselves run concurrently on the
    /// async runtime). Default 2.
    #[arg(long = "threads")]
    pub threads: Option<usize>,
    /// Log file (daemon mode logs nowhere otherwise); filter by PSTORAGE_LOG.
    #[arg(long = "log")]
    pub log: Option<PathBuf>,
    /// Write the serving process's pid here once the mount is ready.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// `[CLUSTER] MOUNTPOINT`: the cluster may come first (fstab / mount.fuse3
    /// style) instead of -c.
    #[arg(required = true, num_args = 1..=2, value_name = "[CLUSTER] MOUNTPOINT")]
    pub targets: Vec<String>,
}

/// Mount options from `-o`, after parsing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountOpts {
    /// Kernel / fusermount options.
    pub mount: Vec<MountOption>,
    /// Who may use the mount (`allow_other`, `allow_root`).
    pub acl: AclChoice,
    pub cluster: Option<String>,
    pub conf_dir: Option<PathBuf>,
    pub cache_file: Option<PathBuf>,
    pub cache_size: Option<u64>,
    pub cache_admit: Option<u32>,
    pub threads: Option<usize>,
    pub direct_io: bool,
    pub attr_timeout: Option<Duration>,
    pub log: Option<PathBuf>,
}

/// Who may access the mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AclChoice {
    /// Only the user who mounted (the FUSE default).
    #[default]
    Owner,
    /// That user and root (`allow_root`).
    RootAndOwner,
    /// Everybody (`allow_other`).
    All,
}

/// Parses `-o` lists (comma separated, repeatable) into [`MountOpts`].
/// Unknown options are refused with an error naming them; fstab-only options
/// (`defaults`, `_netdev`, `nofail`, `noauto`, `user`, `x-*`, ...) are
/// accepted and ignored.
pub fn parse_mount_options(lists: &[String]) -> Result<MountOpts> {
    let mut o = MountOpts::default();
    for opt in lists.iter().flat_map(|l| l.split(',')) {
        let opt = opt.trim();
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        fn need<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str> {
            v.filter(|v| !v.is_empty()).ok_or_else(|| {
                Error::invalid(format!("mount option {key} needs a value: {key}=VALUE"))
            })
        }
        match key {
            "" | "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev"
            | "nofail" | "relatime" | "strictatime" | "lazytime" => {}
            k if k.starts_with("x-") || k == "comment" => {}
            "rw" => o.mount.push(MountOption::RW),
            "ro" => o.mount.push(MountOption::RO),
            "dev" => o.mount.push(MountOption::Dev),
            "nodev" => o.mount.push(MountOption::NoDev),
            "suid" => o.mount.push(MountOption::Suid),
            "nosuid" => o.mount.push(MountOption::NoSuid),
            "exec" => o.mount.push(MountOption::Exec),
            "noexec" => o.mount.push(MountOption::NoExec),
            "atime" => o.mount.push(MountOption::Atime),
            "noatime" => o.mount.push(MountOption::NoAtime),
            "sync" => o.mount.push(MountOption::Sync),
            "async" => o.mount.push(MountOption::Async),
            "dirsync" => o.mount.push(MountOption::DirSync),
            "auto_unmount" => o.mount.push(MountOption::AutoUnmount),
            "default_permissions" => o.mount.push(MountOption::DefaultPermissions),
            "fsname" => o.mount.push(MountOption::FSName(need(key, value)?.to_string())),
            "subtype" => o.mount.push(MountOption::Subtype(need(key, value)?.to_string())),
            "allow_other" => o.acl = AclChoice::All,
            "allow_root" => o.acl = AclChoice::RootAndOwner,
            "cluster" => o.cluster = Some(need(key, value)?.to_string()),
            "conf_dir" => o.conf_dir = Some(PathBuf::from(need(key, value)?)),
            "cache_file" => o.cache_file = Some(PathBuf::from(need(key, value)?)),
            "cache_size" => o.cache_size = Some(parse_size(need(key, value)?)?),
            "cache_admit" => {
                o.cache_admit = Some(need(key, value)?.parse().map_err(|_| {
                    Error::invalid(format!("cache_admit={value:?} is not a number of reads"))
                })?)
            }
            "threads" => {
                let n: usize = need(key, value)?.parse().unwrap_or(0);
                if !(1..=64).contains(&n) {
                    return Err(Error::invalid(format!(
                        "threads={value:?} is invalid: give 1..64"
                    )));
                }
                o.threads = Some(n);
            }
            "direct_io" => o.direct_io = true,
            "attr_timeout" => {
                let s: f64 = need(key, value)?.parse().map_err(|_| {
                    Error::invalid(format!("attr_timeout={value:?} is not a number of seconds"))
                })?;
                if !(0.0..=3600.0).contains(&s) {
                    return Err(Error::invalid("attr_timeout must be within 0..3600 seconds"));
                }
                o.attr_timeout = Some(Duration::from_secs_f64(s));
            }
            "log" => o.log = Some(PathBuf::from(need(key, value)?)),
            other => {
                return Err(Error::invalid(format!(
                    "unknown mount option {other:?}; see the README section \"Mounting (pstorage-mount)\""
                )))
            }
        }
    }
    Ok(o)
}

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
    conf.key()?;
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
    Ok(Plan {
        conf,
        mountpoint,
        foreground: args.foreground,
        opts,
        cache,
        threads,
        log,
        pid_file,
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
    if let Some(r) = ready.take() {
        // Failed before the mount was ready: tell the waiting parent.
        r.report(&result);
    }
    if let Some(p) = &plan.pid_file {
        let _ = std::fs::remove_file(p);
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
    let mut cfg = FsConfig {
        direct_io: plan.opts.direct_io,
        ..FsConfig::default()
    };
    if let Some(t) = plan.opts.attr_timeout {
        cfg.attr_ttl = t;
    }
    let fs = rt.block_on(PstorageFs::new(
        client,
        cfg,
        cache.clone(),
        rt.handle().clone(),
    ))?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("pstorage:{}", plan.conf.name)),
        MountOption::Subtype("pstorage-mount".into()),
    ];
    config.mount_options.extend(plan.opts.mount.iter().cloned());
    config.acl = match plan.opts.acl {
        AclChoice::Owner => SessionACL::Owner,
        AclChoice::RootAndOwner => SessionACL::RootAndOwner,
        AclChoice::All => SessionACL::All,
    };
    config.n_threads = Some(plan.threads);
    config.clone_fd = true;
    let mut session = fuser::Session::new(fs.clone(), &plan.mountpoint, &config).map_err(|e| {
        Error::from(e).context(format!(
            "cannot mount at {} (is /dev/fuse there and fusermount3 installed? already mounted?)",
            plan.mountpoint.display()
        ))
    })?;
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
    let mut unmounter = session.unmount_callable();
    let mountpoint = plan.mountpoint.clone();
    rt.spawn(async move {
        crate::cli::termination().await;
        tracing::info!("signal: unmounting {}", mountpoint.display());
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = unmounter.unmount() {
                // Busy: detach now, the kernel ends the session when the
                // last user is gone.
                tracing::warn!("unmount of {}: {e}; detaching lazily", mountpoint.display());
                if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
                    // SAFETY: a valid C path.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        })
        .await;
    });
    let served = session.run();
    rt.block_on(fs.close_all());
    if let Some(c) = &cache {
        tracing::info!("read cache: {:?}", c.stats());
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    served.map_err(|e| Error::from(e).context("the FUSE session failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Result<MountOpts> {
        parse_mount_options(&[s.to_string()])
    }

    #[test]
    fn fstab_options_parse() {
        let o = opts("defaults,_netdev,nofail,ro,noatime,allow_other,conf_dir=/c,cache_file=/ssd/c,cache_size=1G,threads=4,direct_io,attr_timeout=0.5,x-systemd.automount").unwrap();
        assert_eq!(o.mount, vec![MountOption::RO, MountOption::NoAtime]);
        assert_eq!(o.acl, AclChoice::All);
        assert_eq!(o.conf_dir, Some(PathBuf::from("/c")));
        assert_eq!(o.cache_file, Some(PathBuf::from("/ssd/c")));
        assert_eq!(o.cache_size, Some(1 << 30));
        assert_eq!(o.threads, Some(4));
        assert!(o.direct_io);
        assert_eq!(o.attr_timeout, Some(Duration::from_millis(500)));
        let o = parse_mount_options(&["rw".into(), "allow_root,fsname=x".into()]).unwrap();
        assert_eq!(
            o.mount,
            vec![MountOption::RW, MountOption::FSName("x".into())]
        );
        assert_eq!(o.acl, AclChoice::RootAndOwner);
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            "bogus",
            "cache_size=lots",
            "threads=0",
            "threads=x",
            "conf_dir",
            "conf_dir=",
            "attr_timeout=-1",
        ] {
            let e = opts(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        }
    }

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
