//! pstorage errors as Python exceptions.
//!
//! The exception classes live in `pstorage/_errors.py`: they need multiple
//! inheritance (`NotFound(Error, FileNotFoundError)`), which pyo3's
//! `create_exception!` cannot express. Rust asks that module's factory for an
//! instance whose class matches the [`ErrorKind`], with the kind's errno and
//! the library's message.

use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;

use pstorage_core::{Error, ErrorKind};

/// `pstorage._errors._from_kind`, looked up once.
static FACTORY: GILOnceCell<PyObject> = GILOnceCell::new();

/// The Python exception for a pstorage error: an instance of the
/// `pstorage.<Kind>` class (a subclass of `pstorage.Error` and, where one
/// fits, of the builtin `OSError` subclass), with `errno` set to
/// [`ErrorKind::errno`] and `strerror` to the library's message.
pub fn to_pyerr(py: Python<'_>, error: Error) -> PyErr {
    match exception(py, &error) {
        Ok(e) => e,
        // The factory itself failed (the package is broken): surface that
        // failure, chained to nothing, rather than losing both messages.
        Err(e) => e,
    }
}

fn exception(py: Python<'_>, error: &Error) -> PyResult<PyErr> {
    let factory = FACTORY.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("pstorage._errors")?
                .getattr("_from_kind")?
                .unbind(),
        )
    })?;
    let value = factory.bind(py).call1((
        kind_name(error.kind()),
        error.kind().errno(),
        error.message(),
    ))?;
    Ok(PyErr::from_value(value))
}

/// The name of the Python class of `kind`: the variant's name.
pub fn kind_name(kind: ErrorKind) -> String {
    format!("{kind:?}")
}

/// Extension that turns `pstorage_core::Result` into `PyResult`.
pub trait PyResultExt<T> {
    /// Converts the error with [`to_pyerr`].
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> PyResultExt<T> for pstorage_core::Result<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_pyerr(py, e))
    }
}
