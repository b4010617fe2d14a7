//! `pstorage._pstorage.RawFile`: positionless I/O on an open file and its
//! lease. `pstorage.File` (Python, an `io.RawIOBase`) keeps the position
//! and the mode on top of it.
//!
//! Every call that waits for the network releases the GIL, so Python
//! threads doing I/O on different files (or on one file with pread/pwrite)
//! run in parallel.

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use pstorage_core::client::blocking;
use pstorage_core::types::LeaseMode;

use crate::errors::{to_pyerr, PyResultExt};
use crate::types::PyStat;

/// An open pstorage file (positionless). Thread-safe: any number of Python
/// threads may call it at once; each call releases the GIL while it waits.
#[pyclass(module = "pstorage._pstorage", name = "RawFile", frozen)]
pub struct RawFile {
    file: blocking::File,
}

impl RawFile {
    pub fn new(file: blocking::File) -> RawFile {
        RawFile { file }
    }
}

/// A Python `bytes` object as the owner of a [`Bytes`] buffer, so a write
/// sends the caller's bytes without copying them.
struct PyBytesOwner {
    // Kept only to hold the object alive; dropped without the GIL, pyo3
    // defers the decref to the next time it holds the GIL.
    _object: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: `ptr`/`len` point into an immutable `bytes` object that `_object`
// keeps alive; reading immutable memory from any thread is sound.
unsafe impl Send for PyBytesOwner {}
// SAFETY: as above: shared access only reads immutable memory.
unsafe impl Sync for PyBytesOwner {}

impl AsRef<[u8]> for PyBytesOwner {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see the `Send` impl: valid for `len` bytes while `_object` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A pointer to the not-yet-shared buffer of a fresh `bytes` object.
struct FreshBuffer(*mut u8, usize);

// SAFETY: the `bytes` object is still being built by `PyBytes::new_with`:
// no other Python code can see it, so writing to it without the GIL from
// the one thread that holds this pointer is sound.
unsafe impl Send for FreshBuffer {}

#[pymethods]
impl RawFile {
    /// The path the file was opened by.
    #[getter]
    fn path(&self) -> &str {
        self.file.path()
    }

    /// Whether this handle holds a write lease.
    #[getter]
    fn writable(&self) -> bool {
        self.file.lease().mode == LeaseMode::Write
    }

    /// The file's chunk size in bytes.
    #[getter]
    fn chunk_size(&self) -> u64 {
        self.file.chunk_size()
    }

    /// The size as this handle sees it (includes acknowledged writes not yet
    /// flushed). No network call.
    fn size(&self) -> u64 {
        self.file.size()
    }

    /// Reads up to `size` bytes at `offset`; fewer only at the end of the file.
    fn pread<'py>(&self, py: Python<'py>, size: u64, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
        let want = self.file.size().saturating_sub(offset).min(size) as usize;
        let file = self.file.clone();
        let mut got = Ok(0usize);
        let data = PyBytes::new_with(py, want, |buf| {
            let fresh = FreshBuffer(buf.as_mut_ptr(), buf.len());
            got = py.allow_threads(move || {
                let fresh = fresh;
                // SAFETY: see `FreshBuffer`.
                let buf = unsafe { std::slice::from_raw_parts_mut(fresh.0, fresh.1) };
                file.read_at(offset, buf)
            });
            Ok(())
        })?;
        let got = got.py_err(py)?;
        if got == want {
            Ok(data)
        } else {
            // The file shrank meanwhile (a truncate on another thread).
            Ok(PyBytes::new(py, &data.as_bytes()[..got]))
        }
    }

    /// Writes all of `data` (a `bytes` object, sent without a copy) at
    /// `offset`; returns when every replica has it.
    fn pwrite(&self, py: Python<'_>, data: Bound<'_, PyBytes>, offset: u64) -> PyResult<usize> {
        let slice = data.as_bytes();
        let (ptr, len) = (slice.as_ptr(), slice.len());
        let owner = PyBytesOwner {
            _object: data.unbind(),
            ptr,
            len,
        };
        let file = self.file.clone();
        py.allow_threads(move || file.write_at_bytes(offset, Bytes::from_owner(owner)))
            .py_err(py)?;
        Ok(len)
    }

    /// Makes acknowledged writes durable and commits the size to the MDS.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let file = self.file.clone();
        py.allow_threads(move || file.flush()).py_err(py)
    }

    /// Sets the file size (needs the write lease).
    fn truncate(&self, py: Python<'_>, size: u64) -> PyResult<()> {
        let file = self.file.clone();
        py.allow_threads(move || file.truncate(size)).py_err(py)
    }

    /// The file's attributes from the MDS with this handle's size.
    fn stat(&self, py: Python<'_>) -> PyResult<PyStat> {
        let file = self.file.clone();
        let stat = py.allow_threads(move || file.stat()).py_err(py)?;
        Ok(PyStat::from(&stat))
    }

    /// Flushes (under a write lease) and releases the lease; closing again
    /// is a no-op.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let file = self.file.clone();
        py.allow_threads(move || file.close())
            .map_err(|e| to_pyerr(py, e))
    }

    fn __repr__(&self) -> String {
        format!(
            "<pstorage RawFile {:?} lease={:?}>",
            self.file.path(),
            self.file.lease().mode
        )
    }
}
