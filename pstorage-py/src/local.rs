//! `pstorage._pstorage.RawLocalCluster`: a real cluster inside the Python
//! process ([`pstorage_rpc::local::LocalCluster`]). The Python
//! `pstorage.testing.LocalCluster` wraps it (context manager, clients).

use parking_lot::{Mutex, MutexGuard};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use pstorage_core::types::Replicas;
use pstorage_rpc::local::LocalCluster;

use crate::errors::PyResultExt;
use crate::types::PyClusterStatus;

/// A running in-process cluster. Thread-safe; every call that waits
/// releases the GIL.
#[pyclass(module = "pstorage._pstorage", name = "RawLocalCluster", frozen)]
pub struct RawLocalCluster {
    name: String,
    conf_dir: PathBuf,
    dir: PathBuf,
    /// `None` once stopped. Calls clone the `Arc` and release the lock, so
    /// they do not wait for each other.
    cluster: Mutex<Option<Arc<LocalCluster>>>,
    /// Drives the cluster's async API; the nodes run on runtimes of their own.
    runtime: tokio::runtime::Runtime,
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(PyValueError::new_err(format!(
            "{name} must be a positive number of seconds, not {value}"
        )))
    }
}

impl RawLocalCluster {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<LocalCluster>>> {
        // An Option swapped in one step: never half-updated.
        self.cluster.lock()
    }

    /// Runs `f` on the cluster with the GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&LocalCluster, &tokio::runtime::Runtime) -> pstorage_core::Result<T> + Send,
    ) -> PyResult<T> {
        let cluster = self.lock().clone().ok_or_else(|| {
            PyValueError::new_err(format!("the local cluster {} is stopped", self.name))
        })?;
        py.allow_threads(|| f(&cluster, &self.runtime)).py_err(py)
    }
}

#[pymethods]
impl RawLocalCluster {
    /// Creates and starts a cluster (see `pstorage.testing.LocalCluster`);
    /// returns once it is healthy.
    #[new]
    #[pyo3(signature = (
        mds=1, cs=None, chunk_size=None, replicas=None, password=None, name="local",
        parent_dir=None, keep_dir=false, start_timeout=120.0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        mds: usize,
        cs: Option<usize>,
        chunk_size: Option<u64>,
        replicas: Option<&str>,
        password: Option<&str>,
        name: &str,
        parent_dir: Option<PathBuf>,
        keep_dir: bool,
        start_timeout: f64,
    ) -> PyResult<Self> {
        let mut builder = LocalCluster::builder()
            .name(name)
            .mds(mds)
            .keep_dir(keep_dir)
            .start_timeout(seconds("start_timeout", start_timeout)?);
        if let Some(cs) = cs {
            builder = builder.cs(cs);
        }
        if let Some(bytes) = chunk_size {
            builder = builder.chunk_size(bytes);
        }
        if let Some(r) = replicas {
            let r = Replicas::parse(r).py_err(py)?;
            builder = builder.replicas(r.norm, r.min);
        }
        if let Some(p) = password {
            builder = builder.password(p);
        }
        if let Some(d) = parent_dir {
            builder = builder.parent_dir(d);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pstorage-local")
            .enable_all()
            .build()
            .map_err(|e| PyValueError::new_err(format!("cannot start a tokio runtime: {e}")))?;
        let cluster = py
            .allow_threads(|| runtime.block_on(builder.start()))
            .py_err(py)?;
        Ok(RawLocalCluster {
            name: cluster.name().to_string(),
            conf_dir: cluster.conf_root().to_path_buf(),
            dir: cluster.dir().to_path_buf(),
            runtime,
            cluster: Mutex::new(Some(Arc::new(cluster))),
        })
    }

    /// The cluster's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The configuration root (`conf_dir` of `pstorage.Cluster`,
    /// `--conf-dir` of the CLI).
    #[getter]
    fn conf_dir(&self) -> PathBuf {
        self.conf_dir.clone()
    }

    /// The directory holding everything.
    #[getter]
    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// Whether `stop()` was called.
    #[getter]
    fn stopped(&self) -> bool {
        self.lock().is_none()
    }

    /// Number of MDSes ever added.
    fn mds_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |c, _| Ok(c.mds_count()))
    }

    /// Number of chunk servers ever added.
    fn cs_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |c, _| Ok(c.cs_count()))
    }

    /// The address of MDS `i`.
    fn mds_addr(&self, py: Python<'_>, i: usize) -> PyResult<String> {
        self.with(py, |c, _| c.mds_addr(i))
    }

    /// The cluster id of chunk server `i`.
    fn cs_id(&self, py: Python<'_>, i: usize) -> PyResult<u32> {
        self.with(py, |c, _| c.cs_id(i).map(|id| id.0))
    }

    /// Whether MDS `i` runs.
    fn mds_running(&self, py: Python<'_>, i: usize) -> PyResult<bool> {
        self.with(py, |c, _| Ok(c.mds_running(i)))
    }

    /// Whether chunk server `i` runs.
    fn cs_running(&self, py: Python<'_>, i: usize) -> PyResult<bool> {
        self.with(py, |c, _| Ok(c.cs_running(i)))
    }

    /// The index of the leading MDS.
    fn leader_mds(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |c, rt| rt.block_on(c.leader_mds()))
    }

    /// The cluster status.
    fn status(&self, py: Python<'_>) -> PyResult<PyClusterStatus> {
        let s = self.with(py, |c, rt| rt.block_on(c.status()))?;
        Ok(PyClusterStatus::from(&s))
    }

    /// Waits until the cluster is healthy; returns that status.
    #[pyo3(signature = (timeout=120.0))]
    fn wait_healthy(&self, py: Python<'_>, timeout: f64) -> PyResult<PyClusterStatus> {
        let timeout = seconds("timeout", timeout)?;
        let s = self.with(py, |c, rt| rt.block_on(c.wait_healthy(timeout)))?;
        Ok(PyClusterStatus::from(&s))
    }

    /// Kills chunk server `i`.
    fn kill_cs(&self, py: Python<'_>, i: usize) -> PyResult<()> {
        self.with(py, |c, rt| rt.block_on(c.kill_cs(i)))
    }

    /// Stops chunk server `i` cleanly.
    fn stop_cs(&self, py: Python<'_>, i: usize) -> PyResult<()> {
        self.with(py, |c, rt| rt.block_on(c.stop_cs(i)))
    }

    /// Starts chunk server `i` again.
    fn restart_cs(&self, py: Python<'_>, i: usize) -> PyResult<()> {
        self.with(py, |c, rt| rt.block_on(c.restart_cs(i)))
    }

    /// Kills MDS `i`.
    fn kill_mds(&self, py: Python<'_>, i: usize) -> PyResult<()> {
        self.with(py, |c, rt| rt.block_on(c.kill_mds(i)))
    }

    /// Stops MDS `i` cleanly.
    fn stop_mds(&self, py: Python<'_>, i: usize) -> PyResult<()> {
        self.with(py, |c, rt| rt.block_on(c.stop_mds(i)))
    }

    /// Starts MDS `i` again.
    fn restart_mds(&self, py: Python<'_>, i: usize) -> PyResult<()> {
        self.with(py, |c, rt| rt.block_on(c.restart_mds(i)))
    }

    /// Adds and starts a chunk server; returns its index.
    fn add_cs(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |c, rt| rt.block_on(c.add_cs()))
    }

    /// Adds an MDS to the group; returns its index once it votes.
    fn add_mds(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |c, rt| rt.block_on(c.add_mds()))
    }

    /// Stops every node and removes the directory (unless kept). Stopping
    /// again does nothing. Calls still running on other threads keep the
    /// cluster until they return; it stops then.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let cluster = self.lock().take();
        py.allow_threads(|| match cluster.map(Arc::try_unwrap) {
            Some(Ok(c)) => self.runtime.block_on(c.stop()),
            Some(Err(shared)) => {
                drop(shared);
                Ok(())
            }
            None => Ok(()),
        })
        .py_err(py)
    }
}
