//! Checking what C passes in: NULL pointers, strings, buffers, and calls
//! that would block on a library thread.

use std::ffi::{c_char, CStr};

use crate::error::{FfiError, FfiResult};

/// The UTF-8 string behind `ptr`; `EINVAL` if NULL or not UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn c_str<'a>(
    ptr: *const c_char,
    what: &str,
    function: &str,
) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(FfiError::invalid(format!("{function}: {what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| FfiError::invalid(format!("{function}: {what} is not valid UTF-8")))
}

/// Checks an output pointer; `EINVAL` if NULL.
pub(crate) fn out_ptr<T>(ptr: *mut T, what: &str, function: &str) -> FfiResult<*mut T> {
    if ptr.is_null() {
        return Err(FfiError::invalid(format!(
            "{function}: the output pointer {what} is NULL"
        )));
    }
    Ok(ptr)
}

/// Checks a data buffer of `len` bytes: NULL is allowed only when empty,
/// and the length must fit `ssize_t` (the return value of byte counts).
pub(crate) fn buffer<T>(ptr: *const T, len: usize, what: &str, function: &str) -> FfiResult<()> {
    if ptr.is_null() && len > 0 {
        return Err(FfiError::invalid(format!(
            "{function}: {what} is NULL but its length is {len}"
        )));
    }
    if len > isize::MAX as usize {
        return Err(FfiError::invalid(format!(
            "{function}: a length of {len} bytes does not fit ssize_t"
        )));
    }
    Ok(())
}

/// Refuses a blocking call on one of the library's own threads (inside a
/// completion callback): it would wait for work that the very same thread
/// has to do.
pub(crate) fn may_block(function: &str) -> FfiResult<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(FfiError::new(
            libc::EDEADLK,
            format!(
                "{function} blocks and was called on a libpstorage I/O thread (from a completion callback); \
                 callbacks must not block: use the pstorage_aio_* calls or hand the work to your own thread"
            ),
        ));
    }
    Ok(())
}
