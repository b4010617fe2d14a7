//! `pstorage._pstorage.RawCluster`: a connection to one cluster. The Python
//! `pstorage.Cluster` wraps it (modes, `makedirs`, closing open files).

use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use pstorage_core::client::{blocking, ClientOptions};
use pstorage_core::conf::{conf_root, ClusterConf};
use pstorage_core::types::{
    AttrUpdate, LeaseMode, NewNode, NodeSpec, OpenFlags, Perms, RenameFlags, Replicas, StatChange,
    TimeChange, Timestamp, XattrSet,
};

use crate::errors::PyResultExt;
use crate::file::RawFile;
use crate::types::{PyAttrs, PyClusterStatus, PyStat};

/// A connected cluster client. Thread-safe; every call releases the GIL
/// while it waits for the network.
#[pyclass(module = "pstorage._pstorage", name = "RawCluster", frozen)]
pub struct RawCluster {
    name: String,
    conf_dir: PathBuf,
    // `None` once closed. The runtime inside is shared with the files opened
    // through this client, which keep working until they are closed.
    client: Mutex<Option<blocking::Client>>,
}

impl RawCluster {
    fn client(&self) -> PyResult<blocking::Client> {
        lock(&self.client)
            .clone()
            .ok_or_else(|| PyValueError::new_err(format!("cluster {} is closed", self.name)))
    }
}

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    // The guarded value is an Option swapped in one step: never half-updated.
    m.lock()
}

/// Connects the SDK to the cluster `conf` describes; `timeout` bounds every
/// call (connecting, and the retries of one read, write or metadata call).
/// One MDS call waits at most the MDS call deadline (8 s, or
/// `PSTORAGE_MDS_CALL_TIMEOUT_MS`) or `timeout` if shorter: then the
/// connection is dropped and the call retried on another MDS until
/// `timeout`.
fn connect(conf: &ClusterConf, timeout: Duration) -> pstorage_core::Result<blocking::Client> {
    let runtime = Arc::new(blocking::new_runtime()?);
    // The MDS client spawns its connection actor on the current runtime.
    let _entered = runtime.enter();
    let options = ClientOptions {
        io_timeout: timeout,
        ..ClientOptions::default()
    };
    let client =
        pstorage_rpc::node::build_client(pstorage_rpc::node::MdsSource::Conf(conf), options)?;
    Ok(blocking::Client::from_async(client, runtime.clone()))
}

#[pymethods]
impl RawCluster {
    /// Reads the cluster's configuration (`<conf_dir>/<name>/bs.list` and
    /// this node's certificate: `ca.crt`, `node.crt`, `node.key`) and
    /// prepares a client; the MDS is contacted on the first
    /// call. `conf_dir` defaults to `$PSTORAGE_CONF_DIR`, else
    /// `/etc/pstorage/clusters`.
    #[new]
    #[pyo3(signature = (name, conf_dir=None, timeout=60.0))]
    fn new(py: Python<'_>, name: &str, conf_dir: Option<PathBuf>, timeout: f64) -> PyResult<Self> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(PyValueError::new_err(format!(
                "timeout must be a positive number of seconds, not {timeout}"
            )));
        }
        let root = conf_root(conf_dir.as_deref());
        let conf = ClusterConf::new(&root, name).py_err(py)?;
        let timeout = Duration::from_secs_f64(timeout);
        let client = py.allow_threads(|| connect(&conf, timeout)).py_err(py)?;
        Ok(RawCluster {
            name: name.to_string(),
            conf_dir: root,
            client: Mutex::new(Some(client)),
        })
    }

    /// The cluster's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The configuration root the cluster was found in.
    #[getter]
    fn conf_dir(&self) -> PathBuf {
        self.conf_dir.clone()
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.client).is_none()
    }

    /// Creates a directory; with `parents`, also the missing parents and no
    /// error if it exists.
    fn mkdir(&self, py: Python<'_>, path: &str, parents: bool) -> PyResult<PyStat> {
        let c = self.client()?;
        let s = py.allow_threads(|| c.mkdir(path, parents)).py_err(py)?;
        Ok(PyStat::from(&s))
    }

    /// The entries of a directory, sorted by name, with their stat.
    fn readdir(&self, py: Python<'_>, path: &str) -> PyResult<Vec<(String, PyStat)>> {
        let c = self.client()?;
        let entries = py.allow_threads(|| c.readdir(path)).py_err(py)?;
        Ok(entries
            .iter()
            .map(|e| (e.name.clone(), PyStat::from(&e.stat)))
            .collect())
    }

    /// Attributes of a file or directory.
    fn stat(&self, py: Python<'_>, path: &str) -> PyResult<PyStat> {
        let c = self.client()?;
        let s = py.allow_threads(|| c.stat(path)).py_err(py)?;
        Ok(PyStat::from(&s))
    }

    /// Whether `path` exists.
    fn exists(&self, py: Python<'_>, path: &str) -> PyResult<bool> {
        let c = self.client()?;
        py.allow_threads(|| c.exists(path)).py_err(py)
    }

    /// Removes a file or an empty directory.
    fn unlink(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        let c = self.client()?;
        py.allow_threads(|| c.unlink(path)).py_err(py)
    }

    /// Renames `src` to `dst`, replacing a file at `dst`.
    fn rename(&self, py: Python<'_>, src: &str, dst: &str) -> PyResult<()> {
        let c = self.client()?;
        py.allow_threads(|| c.rename(src, dst)).py_err(py)
    }

    /// Renames with renameat2's flags: `noreplace` refuses an existing
    /// `dst`, `exchange` swaps the two names.
    fn rename2(
        &self,
        py: Python<'_>,
        src: &str,
        dst: &str,
        noreplace: bool,
        exchange: bool,
    ) -> PyResult<()> {
        let c = self.client()?;
        let flags = RenameFlags {
            no_replace: noreplace,
            exchange,
        };
        py.allow_threads(|| c.rename_with(src, dst, flags))
            .py_err(py)
    }

    /// Creates a directory with `mode`, owned by `uid`:`gid`.
    fn mkdir_mode(
        &self,
        py: Python<'_>,
        path: &str,
        parents: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> PyResult<PyStat> {
        let c = self.client()?;
        let perms = Perms { mode, uid, gid };
        let s = py
            .allow_threads(|| c.mkdir_with(path, parents, perms))
            .py_err(py)?;
        Ok(PyStat::from(&s))
    }

    /// Creates a node: `kind` is "file", "symlink" (with `target`), "fifo",
    /// "socket", "chardev" or "blockdev" (with `rdev`).
    #[pyo3(signature = (path, kind, mode, uid, gid, rdev=0, target=None))]
    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &self,
        py: Python<'_>,
        path: &str,
        kind: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        target: Option<String>,
    ) -> PyResult<PyStat> {
        let spec = match (kind, target) {
            ("file", None) => NodeSpec::File,
            ("symlink", Some(target)) => NodeSpec::Symlink { target },
            ("fifo", None) => NodeSpec::Fifo,
            ("socket", None) => NodeSpec::Socket,
            ("chardev", None) => NodeSpec::CharDevice { rdev },
            ("blockdev", None) => NodeSpec::BlockDevice { rdev },
            (k, t) => {
                return Err(PyValueError::new_err(format!(
                    "cannot make a node of kind {k:?} with target {t:?}"
                )))
            }
        };
        let c = self.client()?;
        let node = NewNode {
            spec,
            perms: Perms { mode, uid, gid },
        };
        let s = py.allow_threads(|| c.make_node(path, node)).py_err(py)?;
        Ok(PyStat::from(&s))
    }

    /// The target of a symbolic link.
    fn readlink(&self, py: Python<'_>, path: &str) -> PyResult<String> {
        let c = self.client()?;
        py.allow_threads(|| c.readlink(path)).py_err(py)
    }

    /// Gives `src` the further name `dst` (a hard link).
    fn link(&self, py: Python<'_>, src: &str, dst: &str) -> PyResult<PyStat> {
        let c = self.client()?;
        let s = py.allow_threads(|| c.link(src, dst)).py_err(py)?;
        Ok(PyStat::from(&s))
    }

    /// chmod/chown/utime: each `None` leaves that attribute alone; a time
    /// is nanoseconds since the epoch, or now with `*_now`.
    #[pyo3(signature = (path, mode=None, uid=None, gid=None, atime_ns=None, mtime_ns=None, atime_now=false, mtime_now=false))]
    #[allow(clippy::too_many_arguments)]
    fn set_stat(
        &self,
        py: Python<'_>,
        path: &str,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime_ns: Option<i128>,
        mtime_ns: Option<i128>,
        atime_now: bool,
        mtime_now: bool,
    ) -> PyResult<PyStat> {
        let time = |ns: Option<i128>, now: bool| -> PyResult<Option<TimeChange>> {
            if now {
                return Ok(Some(TimeChange::Now));
            }
            ns.map(|ns| {
                let sec = i64::try_from(ns.div_euclid(1_000_000_000))
                    .map_err(|_| PyValueError::new_err(format!("time {ns} ns is out of range")))?;
                Ok(TimeChange::At(Timestamp {
                    sec,
                    nsec: ns.rem_euclid(1_000_000_000) as u32,
                }))
            })
            .transpose()
        };
        let change = StatChange {
            mode,
            uid,
            gid,
            atime: time(atime_ns, atime_now)?,
            mtime: time(mtime_ns, mtime_now)?,
        };
        let c = self.client()?;
        let s = py.allow_threads(|| c.set_stat(path, change)).py_err(py)?;
        Ok(PyStat::from(&s))
    }

    /// The value of an extended attribute.
    fn get_xattr<'py>(
        &self,
        py: Python<'py>,
        path: &str,
        name: &str,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let c = self.client()?;
        let v = py.allow_threads(|| c.get_xattr(path, name)).py_err(py)?;
        Ok(pyo3::types::PyBytes::new(py, &v))
    }

    /// The names of the extended attributes, sorted.
    fn list_xattrs(&self, py: Python<'_>, path: &str) -> PyResult<Vec<String>> {
        let c = self.client()?;
        py.allow_threads(|| c.list_xattrs(path)).py_err(py)
    }

    /// Sets an extended attribute; `how` is "any", "create" or "replace".
    fn set_xattr(
        &self,
        py: Python<'_>,
        path: &str,
        name: &str,
        value: &[u8],
        how: &str,
    ) -> PyResult<()> {
        let how = match how {
            "any" => XattrSet::Any,
            "create" => XattrSet::Create,
            "replace" => XattrSet::Replace,
            other => {
                return Err(PyValueError::new_err(format!(
                    "how must be \"any\", \"create\" or \"replace\", not {other:?}"
                )))
            }
        };
        let c = self.client()?;
        py.allow_threads(|| c.set_xattr(path, name, value, how))
            .py_err(py)
    }

    /// Removes an extended attribute.
    fn remove_xattr(&self, py: Python<'_>, path: &str, name: &str) -> PyResult<()> {
        let c = self.client()?;
        py.allow_threads(|| c.remove_xattr(path, name)).py_err(py)
    }

    /// Compares every replica of every chunk of file `path` block by block;
    /// with `repair`, rewrites each damaged range from a good replica.
    /// Returns a dict: chunks, replicas, bytes_read, problems and repaired
    /// (lists of descriptions, as `pstorage verify` prints them).
    #[pyo3(signature = (path, repair=false))]
    fn verify<'py>(
        &self,
        py: Python<'py>,
        path: &str,
        repair: bool,
    ) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let c = self.client()?;
        let report = py.allow_threads(|| c.verify(path, repair)).py_err(py)?;
        let out = pyo3::types::PyDict::new(py);
        out.set_item("chunks", report.chunks)?;
        out.set_item("replicas", report.replicas)?;
        out.set_item("bytes_read", report.bytes_read)?;
        let text = |v: &[pstorage_core::client::VerifyProblem]| -> Vec<String> {
            v.iter().map(|p| p.to_string()).collect()
        };
        out.set_item("problems", text(&report.problems))?;
        out.set_item("repaired", text(&report.repaired))?;
        Ok(out)
    }

    /// The attributes of a file or directory.
    fn get_attr(&self, py: Python<'_>, path: &str) -> PyResult<PyAttrs> {
        let c = self.client()?;
        let a = py.allow_threads(|| c.get_attr(path)).py_err(py)?;
        Ok(PyAttrs::from(a))
    }

    /// Sets `replicas` ("NORM:MIN" or "NORM") and/or `chunk_size`.
    #[pyo3(signature = (path, replicas=None, chunk_size=None, recursive=false))]
    fn set_attr(
        &self,
        py: Python<'_>,
        path: &str,
        replicas: Option<&str>,
        chunk_size: Option<u64>,
        recursive: bool,
    ) -> PyResult<()> {
        let c = self.client()?;
        let replicas = replicas.map(Replicas::parse).transpose().py_err(py)?;
        let update = AttrUpdate {
            replicas,
            chunk_size,
            ..Default::default()
        };
        py.allow_threads(|| c.set_attr(path, update, recursive))
            .py_err(py)
    }

    /// Cluster status as `pstorage stat` shows it.
    fn status(&self, py: Python<'_>) -> PyResult<PyClusterStatus> {
        let c = self.client()?;
        let s = py.allow_threads(|| c.cluster_status()).py_err(py)?;
        Ok(PyClusterStatus::from(&s))
    }

    /// Opens `path` with a write (exclusive) or read (shared) lease.
    #[pyo3(signature = (path, write, create=false, exclusive=false, truncate=false))]
    fn open(
        &self,
        py: Python<'_>,
        path: &str,
        write: bool,
        create: bool,
        exclusive: bool,
        truncate: bool,
    ) -> PyResult<RawFile> {
        let c = self.client()?;
        let mode = if write {
            LeaseMode::Write
        } else {
            LeaseMode::Read
        };
        let flags = OpenFlags {
            create,
            exclusive,
            truncate,
        };
        let f = py.allow_threads(|| c.open(path, mode, flags)).py_err(py)?;
        Ok(RawFile::new(f))
    }

    /// Disconnects. Files opened through this client keep their own
    /// reference to the connection until they are closed.
    fn close(&self, py: Python<'_>) {
        let client = lock(&self.client).take();
        // Dropping the last handle stops the runtime, which waits for its
        // threads: do not hold the GIL meanwhile.
        py.allow_threads(move || drop(client));
    }

    fn __repr__(&self) -> String {
        format!(
            "<pstorage RawCluster {:?} conf_dir={:?}{}>",
            self.name,
            self.conf_dir,
            if self.closed() { " closed" } else { "" }
        )
    }
}
