//! `pstorage-mount`'s command line ([`MountArgs`]) and its `-o` mount
//! options ([`parse_mount_options`]): parsing only, no side effects.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fuser::MountOption;
use pstorage_core::error::{Error, Result};
use pstorage_core::types::parse_size;

use super::session::AclChoice;

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
    /// Cluster name (its config is ROOT/NAME: bs.list and the node's certificate).
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
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long = "metrics", value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
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
    /// `cluster=NAME`.
    pub cluster: Option<String>,
    /// `conf_dir=DIR`: the cluster config root.
    pub conf_dir: Option<PathBuf>,
    /// `cache_file=PATH`: the read cache file.
    pub cache_file: Option<PathBuf>,
    /// `cache_size=SIZE`: the read cache size in bytes.
    pub cache_size: Option<u64>,
    /// `cache_admit=N`: reads of a block before it is cached.
    pub cache_admit: Option<u32>,
    /// `threads=N`: FUSE request threads.
    pub threads: Option<usize>,
    /// `direct_io`: no kernel page cache.
    pub direct_io: bool,
    /// `attr_timeout=SECONDS`: how long the kernel caches attributes.
    pub attr_timeout: Option<Duration>,
    /// `log=PATH`: the daemon's log file.
    pub log: Option<PathBuf>,
    /// `metrics=ADDR:PORT`: where to serve Prometheus metrics.
    pub metrics: Option<String>,
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
            "metrics" => o.metrics = Some(need(key, value)?.to_string()),
            other => {
                return Err(Error::invalid(format!(
                    "unknown mount option {other:?}; see the README section \"Mounting (pstorage-mount)\""
                )))
            }
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pstorage_core::error::ErrorKind;

    fn opts(s: &str) -> Result<MountOpts> {
        parse_mount_options(&[s.to_string()])
    }

    #[test]
    fn fstab_options_parse() {
        let o = opts("defaults,_netdev,nofail,ro,noatime,allow_other,conf_dir=/c,cache_file=/ssd/c,cache_size=1G,threads=4,direct_io,attr_timeout=0.5,metrics=127.0.0.1:9101,x-systemd.automount").unwrap();
        assert_eq!(o.mount, vec![MountOption::RO, MountOption::NoAtime]);
        assert_eq!(o.acl, AclChoice::All);
        assert_eq!(o.conf_dir, Some(PathBuf::from("/c")));
        assert_eq!(o.cache_file, Some(PathBuf::from("/ssd/c")));
        assert_eq!(o.cache_size, Some(1 << 30));
        assert_eq!(o.threads, Some(4));
        assert!(o.direct_io);
        assert_eq!(o.attr_timeout, Some(Duration::from_millis(500)));
        assert_eq!(o.metrics.as_deref(), Some("127.0.0.1:9101"));
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
            "metrics",
        ] {
            let e = opts(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        }
    }
}
