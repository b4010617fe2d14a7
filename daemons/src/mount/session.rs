//! The embeddable mount: [`mount`] mounts a cluster, through a connected
//! [`Client`], at a directory in a background FUSE session and returns a
//! [`MountHandle`]; [`MountHandle::unmount`] or dropping the handle
//! unmounts. No argument parsing, no fork, no process exit: the
//! `pstorage-mount` daemon (`super::daemon::run`) is a wrapper around it.
//!
//! ```no_run
//! # fn demo(client: pstorage_core::client::Client) -> pstorage_core::Result<()> {
//! use pstorage_daemons::mount::{mount, MountOptions};
//!
//! let rt = tokio::runtime::Runtime::new()?;
//! let opts = MountOptions {
//!     runtime: Some(rt.handle().clone()),
//!     ..MountOptions::default()
//! };
//! let handle = mount(client, std::path::Path::new("/mnt/pstorage"), opts)?;
//! std::fs::write("/mnt/pstorage/hello", b"hello")?;
//! handle.unmount()?;
//! # Ok(())
//! # }
//! ```

use parking_lot::Mutex;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuser::{Config, MountOption, SessionACL, SessionUnmounter};
use pstorage_core::client::Client;
use pstorage_core::error::{Error, ErrorKind, Result};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::cache::ReadCache;
use super::fs::PstorageFs;
use super::ops::{FsConfig, FsOps};

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

/// How [`mount`] mounts.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Tunables of the file system (attribute TTL, owner, direct I/O, ...).
    pub fs: FsConfig,
    /// The local read cache, if any.
    pub cache: Option<Arc<ReadCache>>,
    /// Kernel / fusermount options (`FSName`, `RO`, ...), as given.
    pub mount_options: Vec<MountOption>,
    /// Who may use the mount.
    pub acl: AclChoice,
    /// FUSE request threads (requests themselves run concurrently on the
    /// runtime). At least 1; default 2.
    pub threads: usize,
    /// The multi-thread tokio runtime the operations run on (the client's
    /// tasks run there too). Default: the runtime [`mount`] is called
    /// within.
    pub runtime: Option<Handle>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fs: FsConfig::default(),
            cache: None,
            mount_options: Vec::new(),
            acl: AclChoice::Owner,
            threads: 2,
            runtime: None,
        }
    }
}

/// Unmounts a [`MountHandle`]'s mount from anywhere (a signal handler's
/// task, another thread). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Unmounter {
    session: Arc<Mutex<SessionUnmounter>>,
    mountpoint: PathBuf,
}

impl Unmounter {
    /// Unmounts; a busy mount is detached lazily instead (the kernel ends
    /// the session when its last user is gone). Unmounting twice, or a
    /// mount already unmounted, does nothing. Errors: `Busy` if the mount
    /// could neither be unmounted nor detached (the session goes on).
    pub fn unmount(&self) -> Result<()> {
        let unmounted = self.session.lock().unmount();
        let Err(e) = unmounted else {
            return Ok(());
        };
        // Busy: detach now, the kernel ends the session when the last user
        // is gone.
        let mountpoint = self.mountpoint.display();
        tracing::warn!("unmount of {mountpoint}: {e}; detaching lazily");
        let detached = match std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
        {
            Ok(c) => {
                // SAFETY: a valid C path.
                let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                rc == 0
            }
            Err(_) => false,
        };
        if detached {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Busy,
                format!("cannot unmount {mountpoint} ({e}) nor detach it; it stays mounted"),
            ))
        }
    }
}

/// A mounted file system served by a background FUSE session. Dropping it
/// unmounts (as [`MountHandle::unmount`], errors logged).
pub struct MountHandle {
    ops: Arc<FsOps>,
    rt: Handle,
    unmounter: Unmounter,
    /// The thread running the FUSE session; `None` once joined or left.
    session: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle")
            .field("mountpoint", &self.unmounter.mountpoint)
            .finish_non_exhaustive()
    }
}

/// Runs `fut` to completion on `rt` from a thread of its own, so that it
/// works whether or not the caller is inside the runtime.
fn block_on<F>(rt: &Handle, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| match s.spawn(|| rt.block_on(fut)).join() {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Mounts the cluster `client` is connected to at `mountpoint` (an existing
/// directory) and serves it in the background until the returned handle
/// unmounts it or someone else does (`fusermount3 -u`, `umount`). Returns
/// once the mount answers. Blocks meanwhile (it waits on the runtime from
/// a thread of its own, so it may be called inside or outside it).
///
/// Errors: `InvalidArgument` without a runtime, with a current-thread
/// runtime (the operations need worker threads of their own: the thread
/// using the mount would otherwise be the one that must serve it) or with
/// 0 threads; the cluster's errors preparing the file system (its hidden
/// directory); the mount's (no `/dev/fuse`, no `fusermount3`, already
/// mounted).
pub fn mount(client: Client, mountpoint: &Path, opts: MountOptions) -> Result<MountHandle> {
    let rt = match opts.runtime {
        Some(rt) => rt,
        None => Handle::try_current().map_err(|_| {
            Error::invalid(
                "mounting needs a tokio runtime: set MountOptions::runtime or call within one",
            )
        })?,
    };
    if rt.runtime_flavor() == RuntimeFlavor::CurrentThread {
        return Err(Error::invalid(
            "mounting needs a multi-thread tokio runtime (a current-thread one cannot serve \
             the mount while its thread uses it)",
        ));
    }
    if opts.threads == 0 {
        return Err(Error::invalid("a mount needs at least 1 FUSE thread"));
    }
    let ops = Arc::new(block_on(&rt, FsOps::new(client, opts.fs, opts.cache))?);
    let fs = PstorageFs::new(ops.clone(), rt.clone());
    let mut config = Config::default();
    config.mount_options = opts.mount_options;
    config.acl = match opts.acl {
        AclChoice::Owner => SessionACL::Owner,
        AclChoice::RootAndOwner => SessionACL::RootAndOwner,
        AclChoice::All => SessionACL::All,
    };
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    // Mounts and does the FUSE handshake: the file system answers after.
    let mut session = fuser::Session::new(fs, mountpoint, &config).map_err(|e| {
        Error::from(e).context(format!(
            "cannot mount at {} (is /dev/fuse there and fusermount3 installed? already mounted?)",
            mountpoint.display()
        ))
    })?;
    // Not `Session::spawn`: it takes the mount out of the session, so an
    // unmounter taken before could not unmount, and its handle can only
    // unmount by value. The session's own unmounter stays usable here.
    let unmounter = Unmounter {
        session: Arc::new(Mutex::new(session.unmount_callable())),
        mountpoint: mountpoint.to_path_buf(),
    };
    // A failed spawn drops the session, which unmounts.
    let thread = std::thread::Builder::new()
        .name("pstorage-fuse".into())
        .spawn(move || session.run())?;
    Ok(MountHandle {
        ops,
        rt,
        unmounter,
        session: Some(thread),
    })
}

impl MountHandle {
    /// Where the file system is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.unmounter.mountpoint
    }

    /// The operations the mount serves (to use them in-process).
    pub fn ops(&self) -> &Arc<FsOps> {
        &self.ops
    }

    /// An [`Unmounter`] for this mount, to unmount it from elsewhere while
    /// [`MountHandle::wait`] waits.
    pub fn unmounter(&self) -> Unmounter {
        self.unmounter.clone()
    }

    /// Unmounts (a busy mount is detached lazily), waits for the session to
    /// end, and closes the files still open (committing their sizes,
    /// releasing their leases). Errors: `Busy` if the mount could neither be
    /// unmounted nor detached (the session is left serving); the session's
    /// error.
    pub fn unmount(mut self) -> Result<()> {
        if let Err(e) = self.unmounter.unmount() {
            // Joining would wait for whoever unmounts it some day.
            self.session = None;
            return Err(e);
        }
        self.finish()
    }

    /// Waits until the file system is unmounted (by an [`Unmounter`],
    /// `fusermount3 -u`, `umount`), then closes the files still open.
    /// Errors: the session's.
    pub fn wait(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let Some(thread) = self.session.take() else {
            return Ok(());
        };
        let served = match thread.join() {
            Ok(served) => served.map_err(Error::from),
            Err(_) => Err(Error::internal("the FUSE session thread panicked")),
        };
        block_on(&self.rt, self.ops.close_all());
        served.map_err(|e| e.context("the FUSE session failed"))
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if self.session.is_none() {
            return;
        }
        if let Err(e) = self.unmounter.unmount() {
            tracing::warn!("dropping the mount handle: {e}");
            return;
        }
        if let Err(e) = self.finish() {
            tracing::warn!("unmounting {}: {e}", self.mountpoint().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pstorage_core::types::{LeaseMode, OpenFlags};
    use pstorage_rpc::local::LocalCluster;

    fn is_mounted(dir: &Path) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let dir = dir.to_str().unwrap();
        mounts.lines().any(|l| l.split(' ').nth(1) == Some(dir))
    }

    /// Mounted in-process, used through std::fs, unmounted; the data is
    /// then read back through the SDK.
    #[test]
    fn mount_serves_std_fs_and_unmounts() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cluster = rt.block_on(LocalCluster::builder().start()).unwrap();
        let client = {
            let _in_rt = rt.enter();
            cluster.client().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().canonicalize().unwrap();
        let opts = MountOptions {
            mount_options: vec![MountOption::FSName("pstorage:test".into())],
            runtime: Some(rt.handle().clone()),
            ..MountOptions::default()
        };
        let handle = mount(client.clone(), &mountpoint, opts).unwrap();
        assert_eq!(handle.mountpoint(), mountpoint);
        assert!(is_mounted(&mountpoint));

        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::create_dir(mountpoint.join("d")).unwrap();
        std::fs::write(mountpoint.join("d/file"), &data).unwrap();
        assert_eq!(std::fs::read(mountpoint.join("d/file")).unwrap(), data);
        let names: Vec<_> = std::fs::read_dir(&mountpoint)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["d"]);
        let e = std::fs::read(mountpoint.join("missing")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let e = std::fs::remove_dir(mountpoint.join("d")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));

        handle.unmount().unwrap();
        assert!(!is_mounted(&mountpoint));
        assert!(std::fs::read_dir(&mountpoint).unwrap().next().is_none());

        rt.block_on(async {
            let f = client
                .open("/d/file", LeaseMode::Read, OpenFlags::default())
                .await
                .unwrap();
            assert_eq!(f.size(), data.len() as u64);
            let got = f.read_at_bytes(0, data.len() as u64).await.unwrap();
            assert!(got[..] == data[..], "the data through the SDK");
            f.close().await.unwrap();
            cluster.stop().await.unwrap();
        });
    }

    #[test]
    fn mount_refuses_a_current_thread_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cluster = rt.block_on(LocalCluster::builder().start()).unwrap();
        let client = {
            let _in_rt = rt.enter();
            cluster.client().unwrap()
        };
        let opts = MountOptions {
            runtime: Some(rt.handle().clone()),
            ..MountOptions::default()
        };
        let e = mount(client, Path::new("/nonexistent"), opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        rt.block_on(cluster.stop()).unwrap();
    }
}
