//! The native part of the Python module `pstorage` (`pstorage._pstorage`).
//!
//! It wraps the blocking Rust SDK (`pstorage_core::client::blocking`) over
//! the network services of `pstorage_rpc`: `cluster::RawCluster` for the
//! namespace, `file::RawFile` for positionless I/O and
//! `local::RawLocalCluster` for an in-process cluster (tests). The Python package
//! (`pstorage-py/python/pstorage/`) builds the public API on top: `Cluster`,
//! `File` (an `io.RawIOBase`) and the exception classes.
//!
//! Every method that waits for the network releases the GIL.

use pyo3::prelude::*;

mod cluster;
mod errors;
mod file;
mod local;
mod types;

/// The native module, `pstorage._pstorage`.
#[pymodule]
#[pyo3(name = "_pstorage")]
fn pstorage_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<cluster::RawCluster>()?;
    m.add_class::<file::RawFile>()?;
    m.add_class::<local::RawLocalCluster>()?;
    m.add_class::<types::PyStat>()?;
    m.add_class::<types::PyAttrs>()?;
    m.add_class::<types::PyClusterStatus>()?;
    m.add_class::<types::PyCsInfo>()?;
    m.add_class::<types::PyMdsInfo>()?;
    Ok(())
}
