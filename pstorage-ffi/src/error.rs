//! Errors at the C boundary: every function returns a negative errno value
//! and leaves a message for the calling thread, and no panic ever unwinds
//! into C.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pstorage_core::Error;

/// An error on its way to C: the positive errno value and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FfiError {
    pub(crate) errno: i32,
    pub(crate) message: String,
}

impl FfiError {
    pub(crate) fn new(errno: i32, message: impl Into<String>) -> FfiError {
        debug_assert!(errno > 0, "errno values are positive");
        FfiError {
            errno,
            message: message.into(),
        }
    }

    /// `EINVAL`: a NULL pointer or a bad value from the caller.
    pub(crate) fn invalid(message: impl Into<String>) -> FfiError {
        FfiError::new(libc::EINVAL, message)
    }

    /// `EBADF`: a handle that was never returned by the library or is freed.
    pub(crate) fn bad_handle(what: &str, function: &str) -> FfiError {
        FfiError::new(
            libc::EBADF,
            format!("{function}: the {what} handle is not open (never returned by libpstorage, or already freed)"),
        )
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> FfiError {
        FfiError::new(e.kind().errno(), e.message())
    }
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

thread_local! {
    /// The message of the last failure on this thread, NUL-terminated for C.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as this thread's last error.
pub(crate) fn set_last_error(message: &str) {
    // Interior NULs cannot be represented in a C string; show them visibly.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// Runs the body of an exported function: a panic becomes `EIO` with a
/// message instead of unwinding into C, and an error is recorded for
/// [`pstorage_last_error`] and returned as its errno value.
pub(crate) fn run<T>(function: &str, body: impl FnOnce() -> FfiResult<T>) -> Result<T, i32> {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        Err(FfiError::new(
            libc::EIO,
            format!(
                "{function}: internal error (a bug in libpstorage: {}); the operation may be incomplete, please report it",
                panic_message(&*panic)
            ),
        ))
    });
    outcome.map_err(|e| {
        set_last_error(&e.message);
        e.errno
    })
}

/// [`run`] for functions returning `int`: 0 (or the body's non-negative
/// value) on success, `-errno` on failure.
pub(crate) fn run_int(function: &str, body: impl FnOnce() -> FfiResult<i32>) -> c_int {
    match run(function, body) {
        Ok(v) => {
            debug_assert!(v >= 0, "{function} returned a negative success value");
            v
        }
        Err(errno) => -errno,
    }
}

/// [`run`] for functions returning `ssize_t` (byte counts).
pub(crate) fn run_size(function: &str, body: impl FnOnce() -> FfiResult<usize>) -> libc::ssize_t {
    match run(function, body) {
        Ok(n) => {
            // Lengths are checked against `ssize_t::MAX` on the way in.
            libc::ssize_t::try_from(n).unwrap_or(libc::ssize_t::MAX)
        }
        Err(errno) => -(errno as libc::ssize_t),
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Returns the message of the most recent failed libpstorage call on the
/// calling thread, e.g. "open /vm/disk.img: not found; create it with
/// PSTORAGE_O_CREAT". Returns "" if no call on this thread has failed yet.
///
/// Like `errno`, a successful call does not clear it.
///
/// Ownership: the string belongs to the library and stays valid until the
/// next libpstorage call on the same thread; copy it to keep it.
/// Thread-safety: each thread has its own last error.
/// Blocking: never blocks. Never fails; never returns NULL.
#[no_mangle]
pub extern "C" fn pstorage_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: pstorage_last_error always returns a valid C string.
        unsafe { CStr::from_ptr(pstorage_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_eio_with_a_message() {
        let rc = run_int("pstorage_test", || panic!("boom {}", 42));
        assert_eq!(rc, -libc::EIO);
        let message = last();
        assert!(message.contains("pstorage_test"), "{message}");
        assert!(message.contains("boom 42"), "{message}");
    }

    #[test]
    fn errors_become_negative_errno_and_set_the_message() {
        let rc = run_size("pstorage_test", || {
            Err(pstorage_core::Error::not_found("/a is missing").into())
        });
        assert_eq!(rc, -(libc::ENOENT as libc::ssize_t));
        assert_eq!(last(), "/a is missing");
        // Success keeps the previous message, like errno.
        assert_eq!(run_int("pstorage_test", || Ok(3)), 3);
        assert_eq!(last(), "/a is missing");
    }

    #[test]
    fn interior_nul_does_not_lose_the_message() {
        set_last_error("a\0b");
        assert_eq!(last(), "a\\0b");
    }
}
