//! Cluster handles (connect, disconnect) and namespace calls: mkdir,
//! stat, unlink, rename, attributes and directory listings.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::conf::{conf_root, with_default_port, ClusterConf};
use pstorage_core::types::{AttrUpdate, DirEntry, Replicas};
use pstorage_rpc::node::{build_client, MdsSource};
use tokio::runtime::{Handle, Runtime};

use crate::aio::Completion;
use crate::args::{buffer, c_str, may_block, out_ptr};
use crate::error::{run_int, FfiError, FfiResult};
use crate::handles::{to_handle, Registry};
use crate::types::{
    pstorage_attrs_t, pstorage_cluster_t, pstorage_dir_t, pstorage_dirent_t, pstorage_stat_t,
    pstorage_verify_result_t, PSTORAGE_ATTR_RECURSIVE, PSTORAGE_MKDIR_PARENTS,
    PSTORAGE_VERIFY_REPAIR,
};

/// How long `pstorage_disconnect` waits for library threads to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) static CLUSTERS: LazyLock<Registry<Cluster>> =
    LazyLock::new(|| Registry::new("cluster"));
static DIRS: LazyLock<Registry<DirListing>> = LazyLock::new(|| Registry::new("directory"));

/// A connected cluster: the async SDK client and the runtime it runs on.
pub(crate) struct Cluster {
    pub(crate) client: Client,
    /// Spawns and blocks on the runtime; stays usable (failing) after
    /// shutdown, unlike a reference to the runtime itself.
    pub(crate) runtime: Handle,
    /// Owned here and shut down by `pstorage_disconnect` on the caller's
    /// thread: dropping a runtime on one of its own threads panics.
    owned_runtime: Mutex<Option<Runtime>>,
    /// Completions reported through the event fd (poll mode).
    pub(crate) events: Arc<EventQueue>,
    /// Open files and directory listings; disconnect waits for none.
    pub(crate) children: AtomicUsize,
}

impl Cluster {
    /// Runs `future` to completion on the cluster's runtime, from a thread
    /// of the caller (never a library thread).
    pub(crate) fn block_on<F: std::future::Future>(
        &self,
        function: &str,
        future: F,
    ) -> FfiResult<F::Output> {
        may_block(function)?;
        Ok(self.runtime.block_on(future))
    }
}

/// Completions without a callback that finished while poll mode was on.
#[derive(Default)]
pub(crate) struct EventQueue {
    state: Mutex<EventState>,
}

#[derive(Default)]
struct EventState {
    /// The eventfd, once `pstorage_cluster_event_fd` turned poll mode on.
    fd: Option<OwnedFd>,
    ready: VecDeque<Arc<Completion>>,
}

impl EventQueue {
    fn lock(&self) -> parking_lot::MutexGuard<'_, EventState> {
        // Single push/pop critical sections: a panic cannot corrupt them.
        self.state.lock()
    }

    /// Turns poll mode on (once) and returns the eventfd.
    fn enable(&self) -> FfiResult<i32> {
        let mut state = self.lock();
        if let Some(fd) = &state.fd {
            return Ok(fd.as_raw_fd());
        }
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return Err(FfiError::new(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("pstorage_cluster_event_fd: cannot create an eventfd: {e}"),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let raw = fd.as_raw_fd();
        state.fd = Some(fd);
        Ok(raw)
    }

    /// Queues a finished completion and signals the eventfd; false if poll
    /// mode is off (the completion is then only waited for or checked).
    pub(crate) fn push(&self, completion: Arc<Completion>) -> bool {
        let mut state = self.lock();
        let Some(fd) = &state.fd else { return false };
        // Only the first completion of a batch signals: the fd stays
        // readable until `poll` drains the queue, and one syscall less per
        // completion matters at high IOPS.
        if state.ready.is_empty() {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our own eventfd; it
            // cannot fail while the counter is far from overflow.
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
        state.ready.push_back(completion);
        true
    }

    /// Moves up to `out.len()` finished completions into `out`; resets the
    /// eventfd once the queue is empty, so the fd is readable exactly while
    /// completions wait.
    fn poll(&self, out: &mut [*mut crate::types::pstorage_completion_t]) -> usize {
        let mut state = self.lock();
        let mut n = 0;
        while n < out.len() {
            let Some(completion) = state.ready.pop_front() else {
                break;
            };
            if completion.is_released() {
                continue;
            }
            out[n] = to_handle(completion.id());
            n += 1;
        }
        if let Some(fd) = &state.fd {
            if state.ready.is_empty() {
                let mut counter: u64 = 0;
                // SAFETY: reads 8 bytes into a live u64; EAGAIN (already 0)
                // is fine.
                unsafe { libc::read(fd.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
            } else {
                // Completions remain: make sure the fd says so even if the
                // caller read (reset) it before calling us.
                let one: u64 = 1;
                // SAFETY: as in `push`.
                unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
            }
        }
        n
    }
}

fn new_runtime() -> FfiResult<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pstorage-io")
        .build()
        .map_err(|e| {
            FfiError::new(
                libc::EIO,
                format!("cannot start the libpstorage I/O threads: {e}"),
            )
        })
}

/// Starts a runtime, builds the client with `make_client` inside it,
/// checks that the MDS answers and registers the cluster.
fn connect(
    function: &str,
    out: *mut *mut pstorage_cluster_t,
    make_client: impl FnOnce() -> FfiResult<Client>,
) -> FfiResult<i32> {
    let out = out_ptr(out, "cluster", function)?;
    may_block(function)?;
    let runtime = new_runtime()?;
    let client = {
        let _context = runtime.enter();
        make_client()?
    };
    // The client connects lazily; a first call proves address and key now,
    // so that a wrong key or an unreachable cluster is reported here.
    if let Err(e) = runtime.block_on(client.stat("/")) {
        runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
        return Err(FfiError::from(e.context(format!("{function}: connecting"))));
    }
    let cluster = Arc::new(Cluster {
        client,
        runtime: runtime.handle().clone(),
        owned_runtime: Mutex::new(Some(runtime)),
        events: Arc::default(),
        children: AtomicUsize::new(0),
    });
    let id = CLUSTERS.insert(cluster);
    // SAFETY: `out` was checked non-NULL; the caller provides writable memory.
    unsafe { *out = to_handle(id) };
    Ok(0)
}

/// Connects to the cluster named `cluster`, configured in
/// `<conf_dir>/<cluster>/` (`bs.list`: the MDS addresses; `auth.key`: the
/// cluster key written by `pstorage -c CLUSTER auth-node`). `conf_dir` NULL
/// means `$PSTORAGE_CONF_DIR`, else `/etc/pstorage/clusters`.
///
/// On success stores a new handle in `*out`. Each handle runs its own pool
/// of I/O threads (one per CPU) on which all of its calls execute.
///
/// Ownership: the caller owns `*out` and frees it with
/// `pstorage_disconnect`. Strings are only read during the call.
/// Thread-safety: may be called from any thread; the handle may be used
/// from many threads at once.
/// Blocking: yes, until an MDS answers (at most about 30 s when none is
/// reachable).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `cluster` or `out`, a bad cluster name, non-UTF-8 text;
/// - `-ENOENT`: the cluster's directory or its bootstrap list `bs.list`
///   does not exist;
/// - `-EACCES`: the key file is missing or unreadable, or the key is wrong;
/// - `-EAGAIN`: no MDS of the list could be reached;
/// - `-ETIMEDOUT`, `-EPROTO`, `-EIO`: the MDS did not answer properly;
/// - `-EDEADLK`: called from a completion callback.
#[no_mangle]
pub unsafe extern "C" fn pstorage_connect(
    cluster: *const c_char,
    conf_dir: *const c_char,
    out: *mut *mut pstorage_cluster_t,
) -> c_int {
    const F: &str = "pstorage_connect";
    run_int(F, || {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let name = unsafe { c_str(cluster, "cluster", F) }?;
        let root = if conf_dir.is_null() {
            None
        } else {
            // SAFETY: as above.
            Some(Path::new(unsafe { c_str(conf_dir, "conf_dir", F) }?))
        };
        let conf = ClusterConf::new(&conf_root(root), name)?;
        if !conf.dir.is_dir() {
            return Err(FfiError::new(
                libc::ENOENT,
                format!(
                    "{F}: cluster {name} is not configured on this node: {} does not exist; \
                     run `pstorage -c {name} auth-node` or pass the right conf_dir",
                    conf.dir.display()
                ),
            ));
        }
        connect(F, out, || {
            Ok(build_client(
                MdsSource::Conf(&conf),
                ClientOptions::default(),
            )?)
        })
    })
}

/// Connects to a cluster given explicitly: `naddrs` MDS addresses
/// (`"host:port"`, port 2510 if omitted) in `addrs`, and the directory of
/// this node's credentials, `cred_dir`: `ca.crt`, `node.crt` and `node.key`
/// as `pstorage auth-node` writes them in a cluster's configuration
/// directory. No `bs.list` is read and nothing is saved.
///
/// Ownership, thread-safety and blocking as `pstorage_connect`.
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `addrs`, `cred_dir` or `out`, `naddrs` 0, a NULL or
///   malformed address, a malformed certificate or key, or a certificate
///   of another CA than `ca.crt`;
/// - `-EACCES`: no certificate in `cred_dir`, the key is readable by
///   others, or the cluster refuses the certificate;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EPROTO`, `-EIO`, `-EDEADLK`: as `pstorage_connect`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_connect_bootstrap(
    addrs: *const *const c_char,
    naddrs: usize,
    cred_dir: *const c_char,
    out: *mut *mut pstorage_cluster_t,
) -> c_int {
    const F: &str = "pstorage_connect_bootstrap";
    run_int(F, || {
        if addrs.is_null() || naddrs == 0 {
            return Err(FfiError::invalid(format!(
                "{F}: give at least one MDS address (addrs is NULL or naddrs is 0)"
            )));
        }
        let mut bootstrap = Vec::with_capacity(naddrs);
        for i in 0..naddrs {
            // SAFETY: the caller passes an array of `naddrs` string pointers.
            let addr = unsafe { c_str(*addrs.add(i), &format!("addrs[{i}]"), F) }?;
            bootstrap.push(with_default_port(addr)?);
        }
        // SAFETY: as above.
        let dir = unsafe { c_str(cred_dir, "cred_dir", F) }?;
        let credentials =
            pstorage_rpc::tls::Credentials::new(pstorage_rpc::pki::NodeIdentity::load(
                Path::new(dir),
                pstorage_rpc::node::NODE_STEM,
                "run `pstorage -c CLUSTER auth-node` and give its configuration directory",
            )?)?;
        connect(F, out, || {
            // It follows the MDS group from these addresses (nothing is
            // saved: there is no configuration directory).
            Ok(build_client(
                MdsSource::Bootstrap {
                    addrs: bootstrap,
                    credentials,
                },
                ClientOptions::default(),
            )?)
        })
    })
}

/// Disconnects and frees the cluster handle: stops its I/O threads and
/// closes its event fd. Every file and directory handle of the cluster must
/// be closed first.
///
/// Ownership: takes `cluster`; it is invalid after a 0 return.
/// Thread-safety: no other call may use `cluster` concurrently.
/// Blocking: yes, until the I/O threads stop (at most about 10 s).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `cluster`;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-EBUSY`: files or directory listings of it are still open (the
///   handle stays valid);
/// - `-EDEADLK`: called from a completion callback (the handle stays valid).
#[no_mangle]
pub extern "C" fn pstorage_disconnect(cluster: *mut pstorage_cluster_t) -> c_int {
    const F: &str = "pstorage_disconnect";
    run_int(F, || {
        may_block(F)?;
        let cluster = CLUSTERS.remove_if(cluster, F, |c| {
            match c.children.load(Ordering::Acquire) {
                0 => Ok(()),
                n => Err(FfiError::new(
                    libc::EBUSY,
                    format!("{F}: {n} files or directory listings of this cluster are still open; close them first"),
                )),
            }
        })?;
        let runtime = cluster.owned_runtime.lock().take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
        }
        Ok(0)
    })
}

/// Turns on poll mode for `cluster` and returns its event fd (an eventfd,
/// non-blocking, close-on-exec). From then on, every completion created
/// without a callback that finishes for a file of this cluster is queued,
/// and the fd is readable while the queue is not empty. Collect them with
/// `pstorage_poll_io_events`. Turn it on before submitting the operations
/// it should report; calling it again returns the same fd.
///
/// Ownership: the fd belongs to the library; do not close it. It is closed
/// by `pstorage_disconnect`. Reading it is not needed (each
/// `pstorage_poll_io_events` re-arms or resets it); a caller that reads it
/// must call `pstorage_poll_io_events` afterwards.
/// Thread-safety: any thread. Blocking: no.
///
/// Returns the fd (>= 0) or:
/// - `-EINVAL` / `-EBADF`: NULL or not an open cluster handle;
/// - `-EMFILE`, `-ENFILE`, `-ENOMEM`: the eventfd could not be created.
#[no_mangle]
pub extern "C" fn pstorage_cluster_event_fd(cluster: *mut pstorage_cluster_t) -> c_int {
    const F: &str = "pstorage_cluster_event_fd";
    run_int(F, || CLUSTERS.get(cluster, F)?.events.enable())
}

/// Moves up to `numcomp` finished completions (poll mode, see
/// `pstorage_cluster_event_fd`) into `comps` and returns how many; 0 when
/// none are ready. Each completion is returned once; read its result with
/// `pstorage_aio_get_return_value` and free it with `pstorage_aio_release`.
/// Resets the event fd once no completion is left.
///
/// Ownership: the caller owns `comps` (an array of `numcomp` pointers) and
/// the returned completions, as before. Thread-safety: any thread; two
/// threads polling get disjoint completions. Blocking: no.
///
/// Returns the count (>= 0) or:
/// - `-EINVAL`: NULL `cluster`, NULL `comps` with `numcomp` > 0, negative
///   `numcomp`;
/// - `-EBADF`: `cluster` is not an open cluster handle.
#[no_mangle]
pub unsafe extern "C" fn pstorage_poll_io_events(
    cluster: *mut pstorage_cluster_t,
    comps: *mut *mut crate::types::pstorage_completion_t,
    numcomp: c_int,
) -> c_int {
    const F: &str = "pstorage_poll_io_events";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        let n = usize::try_from(numcomp)
            .map_err(|_| FfiError::invalid(format!("{F}: numcomp is negative ({numcomp})")))?;
        buffer(comps, n, "comps", F)?;
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: `comps` is non-NULL and the caller provides `n` slots.
        let out = unsafe { std::slice::from_raw_parts_mut(comps, n) };
        let filled = cluster.events.poll(out);
        Ok(i32::try_from(filled).expect("at most numcomp"))
    })
}

/// Creates directory `path` (an absolute cluster path, like "/vm/images").
/// With `PSTORAGE_MKDIR_PARENTS` in `flags`, missing parents are created
/// too and an existing directory is not an error. The new directory
/// inherits its parent's attributes.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip; up to
/// about 30 s while no MDS is reachable).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `cluster`, NULL or relative `path`, unknown `flags` bits;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-EEXIST`: `path` exists (without `PSTORAGE_MKDIR_PARENTS`);
/// - `-ENOENT`: a parent is missing (without `PSTORAGE_MKDIR_PARENTS`);
/// - `-ENOTDIR`: a parent is a file;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`: the MDS could not be reached;
/// - `-EDEADLK`: called from a completion callback.
#[no_mangle]
pub unsafe extern "C" fn pstorage_mkdir(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    flags: u32,
) -> c_int {
    const F: &str = "pstorage_mkdir";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        check_flags(flags, PSTORAGE_MKDIR_PARENTS, F)?;
        let parents = flags & PSTORAGE_MKDIR_PARENTS != 0;
        cluster.block_on(F, cluster.client.mkdir(path, parents))??;
        Ok(0)
    })
}

/// Removes the file or empty directory `path`. A file must not be open
/// (by anyone) with a lease.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL or malformed `path`, NULL `cluster`, removing "/";
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-ENOENT`: `path` does not exist;
/// - `-ENOTEMPTY`: the directory is not empty;
/// - `-EBUSY`: the file is open with a lease;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_mkdir`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_unlink(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
) -> c_int {
    const F: &str = "pstorage_unlink";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        cluster.block_on(F, cluster.client.unlink(path))??;
        Ok(0)
    })
}

/// Renames `from` to `to` (both absolute cluster paths); an existing file
/// at `to` is replaced.
///
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL or malformed paths, moving a directory into itself;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-ENOENT`: `from` or the parent of `to` does not exist;
/// - `-EEXIST`, `-ENOTEMPTY`, `-EISDIR`, `-ENOTDIR`: `to` exists and cannot
///   be replaced by `from`;
/// - `-EBUSY`: a file involved is open with a lease;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_mkdir`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_rename(
    cluster: *mut pstorage_cluster_t,
    from: *const c_char,
    to: *const c_char,
) -> c_int {
    const F: &str = "pstorage_rename";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let (from, to) = unsafe { (c_str(from, "from", F)?, c_str(to, "to", F)?) };
        cluster.block_on(F, cluster.client.rename(from, to))??;
        Ok(0)
    })
}

/// Fills `*st` with the attributes of `path` as committed at the MDS (a
/// file open for writing elsewhere may be longer until its writer flushes).
///
/// Ownership: the caller owns `st`. Thread-safety: any thread.
/// Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `cluster`, `path` or `st`, malformed `path`;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-ENOENT`: `path` does not exist;
/// - `-ENOTDIR`: a parent is a file;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_mkdir`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_stat(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    st: *mut pstorage_stat_t,
) -> c_int {
    const F: &str = "pstorage_stat";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        let st = out_ptr(st, "st", F)?;
        let stat = cluster.block_on(F, cluster.client.stat(path))??;
        // SAFETY: checked non-NULL; the caller provides the struct.
        unsafe { *st = pstorage_stat_t::from(&stat) };
        Ok(0)
    })
}

/// Compares every replica of every chunk of file `path` block by block (CRC
/// tables compared, every written block read back); with
/// `PSTORAGE_VERIFY_REPAIR`, rewrites each damaged range through its chain
/// from the first replica in chain order that reads it. Holds a read lease
/// (a write lease to repair) while it runs. Fills `*result`; problems found
/// are counted there, not errors.
///
/// Ownership: the caller owns `result`. Thread-safety: any thread.
/// Blocking: yes (reads every replica of the file).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL arguments, unknown `flags` bits;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-ENOENT`: `path` does not exist; `-EISDIR`: it is a directory;
/// - `-EBUSY`: another client holds a conflicting lease;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_mkdir`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_verify(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    flags: u32,
    result: *mut pstorage_verify_result_t,
) -> c_int {
    const F: &str = "pstorage_verify";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        check_flags(flags, PSTORAGE_VERIFY_REPAIR, F)?;
        let result = out_ptr(result, "result", F)?;
        let repair = flags & PSTORAGE_VERIFY_REPAIR != 0;
        let report = cluster.block_on(F, cluster.client.verify(path, repair))??;
        let out = pstorage_verify_result_t {
            chunks: report.chunks,
            replicas: report.replicas,
            bytes_read: report.bytes_read,
            problems: report.problems.len() as u64,
            repaired: report.repaired.len() as u64,
        };
        // SAFETY: checked non-NULL; the caller provides the struct.
        unsafe { *result = out };
        Ok(0)
    })
}

/// Fills `*attrs` with the attributes (replicas, chunk size) of `path`.
///
/// Ownership: the caller owns `attrs`. Thread-safety: any thread.
/// Blocking: yes (one MDS round trip).
///
/// Returns 0 or the errors of `pstorage_stat`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_get_attr(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    attrs: *mut pstorage_attrs_t,
) -> c_int {
    const F: &str = "pstorage_get_attr";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        let attrs = out_ptr(attrs, "attrs", F)?;
        let got = cluster.block_on(F, cluster.client.get_attr(path))??;
        // SAFETY: checked non-NULL; the caller provides the struct.
        unsafe { *attrs = got.into() };
        Ok(0)
    })
}

/// Changes the attributes of `path`: fields of `*attrs` that are 0 stay as
/// they are (`replicas_norm` and `replicas_min` change together). With
/// `PSTORAGE_ATTR_RECURSIVE` everything below a directory changes too. New
/// replica counts apply to existing chunks (the cluster re-replicates in
/// the background); a new chunk size applies to files created later.
///
/// Ownership: `attrs` is only read. Thread-safety: any thread.
/// Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL arguments, unknown `flags` bits, only one of the
///   replica counts set, not `1 <= replicas_min <= replicas_norm <= 15`, a
///   chunk size that is not a multiple of 4096 in 64 KiB..1 GiB;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-ENOENT`: `path` does not exist;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_mkdir`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_set_attr(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    attrs: *const pstorage_attrs_t,
    flags: u32,
) -> c_int {
    const F: &str = "pstorage_set_attr";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        check_flags(flags, PSTORAGE_ATTR_RECURSIVE, F)?;
        if attrs.is_null() {
            return Err(FfiError::invalid(format!("{F}: attrs is NULL")));
        }
        // SAFETY: checked non-NULL; the caller provides the struct.
        let attrs = unsafe { *attrs };
        let update = attr_update(&attrs, F)?;
        let recursive = flags & PSTORAGE_ATTR_RECURSIVE != 0;
        cluster.block_on(F, cluster.client.set_attr(path, update, recursive))??;
        Ok(0)
    })
}

fn attr_update(attrs: &pstorage_attrs_t, function: &str) -> FfiResult<AttrUpdate> {
    let replicas = match (attrs.replicas_norm, attrs.replicas_min) {
        (0, 0) => None,
        (norm, min) => {
            let to_u8 = |v: u32| u8::try_from(v).unwrap_or(u8::MAX);
            if norm == 0 || min == 0 {
                return Err(FfiError::invalid(format!(
                    "{function}: set replicas_norm and replicas_min together (got {norm}:{min}), or both to 0 to keep them"
                )));
            }
            Some(
                Replicas {
                    norm: to_u8(norm),
                    min: to_u8(min),
                }
                .validate()?,
            )
        }
    };
    let chunk_size = match attrs.chunk_size {
        0 => None,
        n => Some(pstorage_core::types::validate_chunk_size(n)?),
    };
    Ok(AttrUpdate {
        replicas,
        chunk_size,
        ..Default::default()
    })
}

pub(crate) fn check_flags(flags: u32, known: u32, function: &str) -> FfiResult<()> {
    if flags & !known != 0 {
        return Err(FfiError::invalid(format!(
            "{function}: unknown flags {:#x}",
            flags & !known
        )));
    }
    Ok(())
}

/// A directory listing taken at `pstorage_opendir`.
struct DirListing {
    cluster: Arc<Cluster>,
    state: Mutex<DirCursor>,
}

struct DirCursor {
    entries: std::vec::IntoIter<DirEntry>,
    /// The name handed out last; owned here so C can read it until the
    /// next readdir.
    current: CString,
}

/// Lists directory `path` (taken in full now, sorted by name) and stores
/// an iterator in `*dir`.
///
/// Ownership: the caller owns `*dir` and frees it with `pstorage_closedir`.
/// Thread-safety: any thread. Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `cluster`, `path` or `dir`, malformed `path`;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-ENOENT`: `path` does not exist;
/// - `-ENOTDIR`: `path` is a file;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_mkdir`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_opendir(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    dir: *mut *mut pstorage_dir_t,
) -> c_int {
    const F: &str = "pstorage_opendir";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        let dir = out_ptr(dir, "dir", F)?;
        let entries = cluster.block_on(F, cluster.client.readdir(path))??;
        cluster.children.fetch_add(1, Ordering::AcqRel);
        let id = DIRS.insert(Arc::new(DirListing {
            cluster,
            state: Mutex::new(DirCursor {
                entries: entries.into_iter(),
                current: CString::default(),
            }),
        }));
        // SAFETY: checked non-NULL.
        unsafe { *dir = to_handle(id) };
        Ok(0)
    })
}

/// Fills `*entry` with the next entry of the listing and returns 1, or
/// returns 0 at the end. `entry->name` stays valid until the next
/// `pstorage_readdir` or `pstorage_closedir` on `dir`.
///
/// Ownership: the caller owns `entry`; the name belongs to `dir`.
/// Thread-safety: a listing may be read from one thread at a time
/// (concurrent calls are serialized). Blocking: no.
///
/// Returns 1, 0, or:
/// - `-EINVAL`: NULL `dir` or `entry`;
/// - `-EBADF`: `dir` is not an open directory handle.
///
/// # Safety
/// `entry` is NULL or points to writable memory for one
/// `pstorage_dirent_t`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_readdir(
    dir: *mut pstorage_dir_t,
    entry: *mut pstorage_dirent_t,
) -> c_int {
    const F: &str = "pstorage_readdir";
    run_int(F, || {
        let listing = DIRS.get(dir, F)?;
        let entry = out_ptr(entry, "entry", F)?;
        let mut cursor = listing.state.lock();
        let Some(next) = cursor.entries.next() else {
            return Ok(0);
        };
        // Names come from the MDS, which refuses NUL in names.
        cursor.current = CString::new(next.name.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: checked non-NULL; the name lives in `cursor` until the next call.
        unsafe {
            *entry = pstorage_dirent_t {
                name: cursor.current.as_ptr(),
                stat: pstorage_stat_t::from(&next.stat),
            }
        };
        Ok(1)
    })
}

/// Frees a directory listing.
///
/// Ownership: takes `dir`; it and every name it returned are invalid after.
/// Thread-safety: no other call may use `dir` concurrently. Blocking: no.
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `dir`;
/// - `-EBADF`: `dir` is not an open directory handle.
#[no_mangle]
pub extern "C" fn pstorage_closedir(dir: *mut pstorage_dir_t) -> c_int {
    const F: &str = "pstorage_closedir";
    run_int(F, || {
        let listing = DIRS.remove(dir, F)?;
        listing.cluster.children.fetch_sub(1, Ordering::AcqRel);
        Ok(0)
    })
}
