//! Read-only result objects: file stat, attributes, cluster status.

use pyo3::prelude::*;

use pstorage_core::types::{self, ClusterStatus, CsInfo, FileAttrs, InodeKind, MdsInfo};

/// What `Cluster.stat()` and `File.stat()` return.
#[pyclass(module = "pstorage", name = "StatResult", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct PyStat {
    /// Inode number.
    pub ino: u64,
    /// `"file"`, `"dir"`, `"symlink"`, `"fifo"`, `"socket"`, `"chardev"`
    /// or `"blockdev"`.
    pub kind: &'static str,
    /// Whether this is a directory.
    pub is_dir: bool,
    /// Whether this is a regular file.
    pub is_file: bool,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: f64,
    /// Change (creation) time, seconds since the Unix epoch.
    pub ctime: f64,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: u64,
    /// Access time, seconds since the Unix epoch.
    pub atime: f64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i128,
    /// Access time, nanoseconds since the Unix epoch.
    pub atime_ns: i128,
    /// Change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i128,
    /// `st_mode`: the kind's bits and the permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Names it has.
    pub nlink: u32,
    /// The device of a device node.
    pub rdev: u64,
    /// Replicas the cluster keeps of each chunk (the `norm`).
    pub replicas: u8,
    /// Replicas below which writes stop (the `min`).
    pub replicas_min: u8,
    /// Chunk size in bytes.
    pub chunk_size: u64,
}

fn seconds(t: types::Timestamp) -> f64 {
    t.sec as f64 + f64::from(t.nsec) / 1e9
}

fn nanos(t: types::Timestamp) -> i128 {
    i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec)
}

impl From<&types::Stat> for PyStat {
    fn from(s: &types::Stat) -> PyStat {
        PyStat {
            ino: s.ino.0,
            kind: match s.kind {
                InodeKind::File => "file",
                InodeKind::Dir => "dir",
                InodeKind::Symlink => "symlink",
                InodeKind::Fifo => "fifo",
                InodeKind::Socket => "socket",
                InodeKind::CharDevice => "chardev",
                InodeKind::BlockDevice => "blockdev",
            },
            is_dir: s.kind == InodeKind::Dir,
            is_file: s.kind == InodeKind::File,
            size: s.size,
            mtime: seconds(s.mtime),
            ctime: seconds(s.ctime),
            mtime_ms: s.mtime.as_ms(),
            atime: seconds(s.atime),
            mtime_ns: nanos(s.mtime),
            atime_ns: nanos(s.atime),
            ctime_ns: nanos(s.ctime),
            mode: s.st_mode(),
            uid: s.uid,
            gid: s.gid,
            nlink: s.nlink,
            rdev: s.rdev,
            replicas: s.attrs.replicas.norm,
            replicas_min: s.attrs.replicas.min,
            chunk_size: s.attrs.chunk_size,
        }
    }
}

#[pymethods]
impl PyStat {
    fn __repr__(&self) -> String {
        format!(
            "StatResult(kind={:?}, size={}, mtime={:.3}, replicas={}:{}, chunk_size={}, ino={})",
            self.kind,
            self.size,
            self.mtime,
            self.replicas,
            self.replicas_min,
            self.chunk_size,
            self.ino
        )
    }
}

/// What `Cluster.get_attr()` returns: the attributes new chunks get.
#[pyclass(module = "pstorage", name = "Attrs", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct PyAttrs {
    /// Replicas kept of each chunk (`norm`).
    pub replicas: u8,
    /// Replicas below which writes stop (`min`).
    pub replicas_min: u8,
    /// Chunk size in bytes.
    pub chunk_size: u64,
}

impl From<FileAttrs> for PyAttrs {
    fn from(a: FileAttrs) -> PyAttrs {
        PyAttrs {
            replicas: a.replicas.norm,
            replicas_min: a.replicas.min,
            chunk_size: a.chunk_size,
        }
    }
}

#[pymethods]
impl PyAttrs {
    fn __repr__(&self) -> String {
        format!(
            "Attrs(replicas={}, replicas_min={}, chunk_size={})",
            self.replicas, self.replicas_min, self.chunk_size
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        match other.downcast::<PyAttrs>() {
            Ok(o) => {
                let o = o.get();
                (o.replicas, o.replicas_min, o.chunk_size)
                    == (self.replicas, self.replicas_min, self.chunk_size)
            }
            Err(_) => false,
        }
    }
}

/// One chunk server in `ClusterStatus.cs`.
#[pyclass(module = "pstorage", name = "ChunkServerInfo", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct PyCsInfo {
    /// The server's id.
    pub id: u32,
    /// Its data address, `host:port`.
    pub addr: String,
    /// `"active"`, `"inactive"`, `"offline"` or `"dropped"`.
    pub status: String,
    /// Disk space in bytes.
    pub total_bytes: u64,
    /// Free disk space in bytes.
    pub free_bytes: u64,
    /// Chunk replicas the MDS places on it.
    pub chunks: u64,
    /// Milliseconds since its last heartbeat (None if never seen).
    pub last_seen_ms_ago: Option<u64>,
}

impl From<&CsInfo> for PyCsInfo {
    fn from(c: &CsInfo) -> PyCsInfo {
        PyCsInfo {
            id: c.id.0,
            addr: c.addr.clone(),
            status: c.status.to_string(),
            total_bytes: c.space.total_bytes,
            free_bytes: c.space.free_bytes,
            chunks: c.chunks,
            last_seen_ms_ago: (c.last_seen_ms_ago != u64::MAX).then_some(c.last_seen_ms_ago),
        }
    }
}

#[pymethods]
impl PyCsInfo {
    fn __repr__(&self) -> String {
        format!(
            "ChunkServerInfo(id={}, addr={:?}, status={:?}, chunks={}, free_bytes={}, total_bytes={})",
            self.id, self.addr, self.status, self.chunks, self.free_bytes, self.total_bytes
        )
    }
}

/// One metadata server in `ClusterStatus.mds`.
#[pyclass(module = "pstorage", name = "MdsInfo", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct PyMdsInfo {
    /// The MDS id.
    pub id: u64,
    /// Its address, `host:port`.
    pub addr: String,
    /// Its role: `"leader"`, `"follower"`, `"learner"`, `"candidate"` or
    /// `"unreachable"`.
    pub role: String,
    /// Its Raft term.
    pub term: u64,
    /// Last committed and applied log index (as the leader knows them).
    pub commit_index: u64,
    pub applied_index: u64,
    /// Log entries it is behind the leader.
    pub lag: u64,
}

impl From<&MdsInfo> for PyMdsInfo {
    fn from(m: &MdsInfo) -> PyMdsInfo {
        PyMdsInfo {
            id: m.id.0,
            addr: m.addr.clone(),
            role: m.role.to_string(),
            term: m.term,
            commit_index: m.commit_index,
            applied_index: m.applied_index,
            lag: m.lag,
        }
    }
}

#[pymethods]
impl PyMdsInfo {
    fn __repr__(&self) -> String {
        format!(
            "MdsInfo(id={}, addr={:?}, role={:?}, term={}, lag={})",
            self.id, self.addr, self.role, self.term, self.lag
        )
    }
}

/// What `Cluster.status()` returns (what `pstorage stat` shows).
#[pyclass(module = "pstorage", name = "ClusterStatus", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct PyClusterStatus {
    /// The cluster's name.
    pub cluster_name: String,
    /// `"healthy"`, `"degraded"` or `"failure"`.
    pub health: String,
    /// Metadata servers.
    pub mds: Vec<PyMdsInfo>,
    /// Chunk servers.
    pub cs: Vec<PyCsInfo>,
    /// Number of files.
    pub files: u64,
    /// Number of directories.
    pub dirs: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Chunks with fewer than `replicas` but more than `replicas_min`
    /// available replicas.
    pub chunks_degraded: u64,
    /// Chunks with exactly `replicas_min` available replicas.
    pub chunks_urgent: u64,
    /// Chunks with fewer than `replicas_min` available replicas (writes wait).
    pub chunks_blocked: u64,
    /// Chunks being copied right now.
    pub chunks_replicating: u64,
    /// Sum of file sizes in bytes.
    pub logical_bytes: u64,
}

impl From<&ClusterStatus> for PyClusterStatus {
    fn from(s: &ClusterStatus) -> PyClusterStatus {
        PyClusterStatus {
            cluster_name: s.cluster_name.clone(),
            health: s.health.to_string(),
            mds: s.mds.iter().map(PyMdsInfo::from).collect(),
            cs: s.cs.iter().map(PyCsInfo::from).collect(),
            files: s.files,
            dirs: s.dirs,
            chunks: s.chunks,
            chunks_degraded: s.chunk_counts.degraded,
            chunks_urgent: s.chunk_counts.urgent,
            chunks_blocked: s.chunk_counts.blocked,
            chunks_replicating: s.chunk_counts.replicating,
            logical_bytes: s.logical_bytes,
        }
    }
}

#[pymethods]
impl PyClusterStatus {
    fn __repr__(&self) -> String {
        format!(
            "ClusterStatus(cluster_name={:?}, health={:?}, mds={}, cs={}, files={}, dirs={}, chunks={}, chunks_degraded={}, chunks_urgent={}, chunks_blocked={}, chunks_replicating={}, logical_bytes={})",
            self.cluster_name,
            self.health,
            self.mds.len(),
            self.cs.len(),
            self.files,
            self.dirs,
            self.chunks,
            self.chunks_degraded,
            self.chunks_urgent,
            self.chunks_blocked,
            self.chunks_replicating,
            self.logical_bytes
        )
    }
}
