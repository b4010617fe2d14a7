//! File handles: open/close with a lease and the synchronous I/O calls.

use parking_lot::{Condvar, Mutex};
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use bytes::BytesMut;
use pstorage_core::client::File;
use pstorage_core::types::{LeaseMode, OpenFlags};

use crate::args::{buffer, c_str, may_block, out_ptr};
use crate::cluster::{check_flags, Cluster, CLUSTERS};
use crate::error::{run_int, run_size, FfiError, FfiResult};
use crate::handles::{to_handle, Registry};
use crate::types::{
    pstorage_cluster_t, pstorage_file_t, pstorage_stat_t, PSTORAGE_O_CREAT, PSTORAGE_O_EXCL,
    PSTORAGE_O_RDWR, PSTORAGE_O_TRUNC,
};

/// Most buffers one `preadv`/`pwritev` takes, as POSIX `IOV_MAX` on Linux.
pub const PSTORAGE_IOV_MAX: c_int = 1024;

pub(crate) static FILES: LazyLock<Registry<OpenFile>> = LazyLock::new(|| Registry::new("file"));

/// An open file of a cluster, and the asynchronous operations in flight on it.
pub(crate) struct OpenFile {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) file: File,
    inflight: Mutex<usize>,
    idle: Condvar,
}

impl OpenFile {
    /// Counts an asynchronous operation that is about to start.
    pub(crate) fn begin_io(&self) {
        *self.lock_inflight() += 1;
    }

    /// Counts one finished; wakes `pstorage_close` when none is left.
    pub(crate) fn end_io(&self) {
        let mut n = self.lock_inflight();
        assert!(*n > 0, "more asynchronous operations ended than began");
        *n -= 1;
        if *n == 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut n = self.lock_inflight();
        while *n > 0 {
            self.idle.wait(&mut n);
        }
    }

    fn lock_inflight(&self) -> parking_lot::MutexGuard<'_, usize> {
        // A counter: a panic cannot leave it inconsistent.
        self.inflight.lock()
    }
}

/// Opens file `path` of `cluster` and stores a handle in `*file`.
///
/// `flags` is `PSTORAGE_O_RDONLY` (a shared read lease) or
/// `PSTORAGE_O_RDWR` (an exclusive write lease, which also excludes
/// readers), or-ed with `PSTORAGE_O_CREAT`, `PSTORAGE_O_EXCL`,
/// `PSTORAGE_O_TRUNC` (these three need `PSTORAGE_O_RDWR`). The lease is
/// renewed in the background until `pstorage_close`.
///
/// Ownership: the caller owns `*file` and frees it with `pstorage_close`.
/// Thread-safety: any thread; the file handle may then be used from many
/// threads at once. Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `cluster`, `path` or `file`, malformed `path`, unknown
///   `flags` bits, CREAT/TRUNC without RDWR, EXCL without CREAT;
/// - `-EBADF`: `cluster` is not an open cluster handle;
/// - `-ENOENT`: the file does not exist (and no `PSTORAGE_O_CREAT`), or its
///   parent directory does not exist;
/// - `-EEXIST`: `PSTORAGE_O_CREAT | PSTORAGE_O_EXCL` and the file exists;
/// - `-EISDIR`: `path` is a directory;
/// - `-EBUSY`: another client holds a conflicting lease (a writer excludes
///   everyone; readers exclude a writer);
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`: the MDS could not be reached;
/// - `-EDEADLK`: called from a completion callback.
#[no_mangle]
pub unsafe extern "C" fn pstorage_open(
    cluster: *mut pstorage_cluster_t,
    path: *const c_char,
    flags: u32,
    file: *mut *mut pstorage_file_t,
) -> c_int {
    const F: &str = "pstorage_open";
    run_int(F, || {
        let cluster = CLUSTERS.get(cluster, F)?;
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { c_str(path, "path", F) }?;
        let out = out_ptr(file, "file", F)?;
        check_flags(
            flags,
            PSTORAGE_O_RDWR | PSTORAGE_O_CREAT | PSTORAGE_O_EXCL | PSTORAGE_O_TRUNC,
            F,
        )?;
        let write = flags & PSTORAGE_O_RDWR != 0;
        let open_flags = OpenFlags {
            create: flags & PSTORAGE_O_CREAT != 0,
            exclusive: flags & PSTORAGE_O_EXCL != 0,
            truncate: flags & PSTORAGE_O_TRUNC != 0,
        };
        if (open_flags.create || open_flags.truncate) && !write {
            return Err(FfiError::invalid(format!(
                "{F}: {path}: PSTORAGE_O_CREAT and PSTORAGE_O_TRUNC need a write lease; add PSTORAGE_O_RDWR"
            )));
        }
        if open_flags.exclusive && !open_flags.create {
            return Err(FfiError::invalid(format!(
                "{F}: {path}: PSTORAGE_O_EXCL only makes sense with PSTORAGE_O_CREAT"
            )));
        }
        let mode = if write {
            LeaseMode::Write
        } else {
            LeaseMode::Read
        };
        let opened = cluster.block_on(F, cluster.client.open(path, mode, open_flags))??;
        cluster.children.fetch_add(1, Ordering::AcqRel);
        let id = FILES.insert(Arc::new(OpenFile {
            cluster,
            file: opened,
            inflight: Mutex::new(0),
            idle: Condvar::new(),
        }));
        // SAFETY: checked non-NULL.
        unsafe { *out = to_handle(id) };
        Ok(0)
    })
}

/// Closes the file: waits for its asynchronous operations in flight, makes
/// every write durable (as `pstorage_flush`), commits the size and releases
/// the lease. The handle is freed even when the flush fails, like close(2);
/// the error is still returned.
///
/// Ownership: takes `file`; it is invalid after the call (unless `-EINVAL`,
/// `-EBADF` or `-EDEADLK`). Thread-safety: other threads must not use
/// `file` concurrently (their calls fail with `-EBADF`).
/// Blocking: yes (in-flight operations, flush, one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `file`;
/// - `-EBADF`: `file` is not an open file handle;
/// - `-EDEADLK`: called from a completion callback (the handle stays open);
/// - `-ESTALE`: the lease was lost (writes since the last flush may be lost);
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-ENOSPC`: the final flush failed.
#[no_mangle]
pub extern "C" fn pstorage_close(file: *mut pstorage_file_t) -> c_int {
    const F: &str = "pstorage_close";
    run_int(F, || {
        may_block(F)?;
        let open = FILES.remove(file, F)?;
        open.wait_idle();
        let closed = open.cluster.block_on(F, open.file.close());
        open.cluster.children.fetch_sub(1, Ordering::AcqRel);
        closed??;
        Ok(0)
    })
}

/// Reads up to `len` bytes at `offset` into `buf`; returns the number read,
/// less than `len` only at the end of the file. Unwritten ranges read as
/// zeros. Works under either lease.
///
/// Ownership: `buf` (at least `len` bytes; NULL only if `len` is 0) is
/// borrowed for the call. Thread-safety: any thread; concurrent reads and
/// writes on one handle are fine. Blocking: yes (one round trip to a replica
/// per chunk touched, retried on another replica on failure).
///
/// Returns the byte count (>= 0) or:
/// - `-EINVAL`: NULL `file`, NULL `buf` with `len` > 0;
/// - `-EBADF`: `file` is not an open file handle;
/// - `-EFBIG`: the range ends beyond the maximum file size (16 TiB);
/// - `-ESTALE`: the lease was lost (the file was fenced): reopen it;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`: no replica answered within the I/O
///   timeout (60 s), or every replica's data failed its checksum;
/// - `-EDEADLK`: called from a completion callback.
#[no_mangle]
pub unsafe extern "C" fn pstorage_pread(
    file: *mut pstorage_file_t,
    buf: *mut c_void,
    len: usize,
    offset: u64,
) -> libc::ssize_t {
    const F: &str = "pstorage_pread";
    run_size(F, || {
        let open = FILES.get(file, F)?;
        buffer(buf, len, "buf", F)?;
        if len == 0 {
            return Ok(0);
        }
        // SAFETY: non-NULL, and the caller provides `len` writable bytes for
        // the duration of the call.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
        Ok(open.cluster.block_on(F, open.file.read_at(offset, buf))??)
    })
}

/// Writes `len` bytes from `buf` at `offset`, growing the file if needed;
/// returns `len`. When it returns, every replica has applied the write;
/// it is durable after `pstorage_flush`. Needs a write lease.
///
/// Ownership: `buf` is borrowed for the call. Thread-safety: any thread.
/// Blocking: yes (a round trip through each chunk's replica chain).
///
/// Returns `len` or:
/// - `-EINVAL`: NULL `file`, NULL `buf` with `len` > 0;
/// - `-EBADF`: not an open file handle, or the file is open read-only;
/// - `-EFBIG`: the range ends beyond the maximum file size (16 TiB);
/// - `-ESTALE`: the lease was lost (the file was fenced): reopen it;
/// - `-ENOSPC`: the chunk servers are full;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`: fewer than `replicas_min` replicas
///   were reachable for the I/O timeout (60 s);
/// - `-EDEADLK`: called from a completion callback.
#[no_mangle]
pub unsafe extern "C" fn pstorage_pwrite(
    file: *mut pstorage_file_t,
    buf: *const c_void,
    len: usize,
    offset: u64,
) -> libc::ssize_t {
    const F: &str = "pstorage_pwrite";
    run_size(F, || {
        let open = FILES.get(file, F)?;
        buffer(buf, len, "buf", F)?;
        let data: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: non-NULL, `len` readable bytes for the call.
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
        };
        open.cluster
            .block_on(F, open.file.write_at(offset, data))??;
        Ok(len)
    })
}

/// The buffers of an iovec array, checked.
///
/// # Safety
/// `iov` is NULL or points to `iovcnt` iovecs.
unsafe fn iovecs<'a>(
    iov: *const libc::iovec,
    iovcnt: c_int,
    function: &str,
) -> FfiResult<&'a [libc::iovec]> {
    if !(0..=PSTORAGE_IOV_MAX).contains(&iovcnt) {
        return Err(FfiError::invalid(format!(
            "{function}: iovcnt {iovcnt} is outside 0..={PSTORAGE_IOV_MAX}"
        )));
    }
    let n = iovcnt as usize;
    buffer(iov, n, "iov", function)?;
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: non-NULL with `n` entries by the caller's contract.
    let iovs = unsafe { std::slice::from_raw_parts(iov, n) };
    let mut total: usize = 0;
    for (i, v) in iovs.iter().enumerate() {
        buffer(
            v.iov_base,
            v.iov_len,
            &format!("iov[{i}].iov_base"),
            function,
        )?;
        total = total
            .checked_add(v.iov_len)
            .filter(|t| *t <= isize::MAX as usize)
            .ok_or_else(|| {
                FfiError::invalid(format!(
                    "{function}: the iovecs add up to more than ssize_t holds"
                ))
            })?;
    }
    Ok(iovs)
}

/// Reads into the `iovcnt` buffers of `iov` in order, starting at `offset`,
/// as one read; returns the total read (short only at the end of the file).
///
/// Ownership: `iov` and its buffers are borrowed for the call.
/// Thread-safety and blocking as `pstorage_pread`.
///
/// Returns the byte count or the errors of `pstorage_pread`, and `-EINVAL`
/// for `iovcnt` outside 0..`PSTORAGE_IOV_MAX`, NULL `iov` with `iovcnt` > 0,
/// or a NULL `iov_base` with a non-zero `iov_len`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_preadv(
    file: *mut pstorage_file_t,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: u64,
) -> libc::ssize_t {
    const F: &str = "pstorage_preadv";
    run_size(F, || {
        let open = FILES.get(file, F)?;
        // SAFETY: the caller passes `iovcnt` iovecs or NULL.
        let iovs = unsafe { iovecs(iov, iovcnt, F) }?;
        let total: usize = iovs.iter().map(|v| v.iov_len).sum();
        if total == 0 {
            return Ok(0);
        }
        let data = open
            .cluster
            .block_on(F, open.file.read_at_bytes(offset, total as u64))??;
        let mut rest = &data[..];
        for v in iovs {
            if rest.is_empty() {
                break;
            }
            let n = v.iov_len.min(rest.len());
            // SAFETY: `iov_base` holds `iov_len >= n` writable bytes (checked
            // non-NULL when non-empty); `rest` is our own buffer.
            unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), v.iov_base.cast::<u8>(), n) };
            rest = &rest[n..];
        }
        Ok(data.len())
    })
}

/// Writes the `iovcnt` buffers of `iov` in order at `offset`, as one write;
/// returns the total written.
///
/// Ownership: `iov` and its buffers are borrowed for the call.
/// Thread-safety and blocking as `pstorage_pwrite`.
///
/// Returns the byte count or the errors of `pstorage_pwrite`, and the
/// `-EINVAL` cases of `pstorage_preadv`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_pwritev(
    file: *mut pstorage_file_t,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: u64,
) -> libc::ssize_t {
    const F: &str = "pstorage_pwritev";
    run_size(F, || {
        let open = FILES.get(file, F)?;
        // SAFETY: the caller passes `iovcnt` iovecs or NULL.
        let iovs = unsafe { iovecs(iov, iovcnt, F) }?;
        let total: usize = iovs.iter().map(|v| v.iov_len).sum();
        let mut data = BytesMut::with_capacity(total);
        for v in iovs.iter().filter(|v| v.iov_len > 0) {
            // SAFETY: non-NULL with `iov_len` readable bytes (checked above).
            data.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
            });
        }
        open.cluster
            .block_on(F, open.file.write_at_bytes(offset, data.freeze()))??;
        Ok(total)
    })
}

/// Makes every write acknowledged so far durable on every replica and
/// commits the file size to the MDS (like fsync). A no-op under a read lease.
///
/// Thread-safety: any thread; writes that run concurrently with the flush
/// may or may not be covered. Blocking: yes.
///
/// Returns 0 or:
/// - `-EINVAL` / `-EBADF`: NULL or not an open file handle;
/// - `-ESTALE`: the lease was lost: writes since the last flush may be lost;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`: replicas or the MDS unreachable for
///   the I/O timeout (the data stays pending for the next flush);
/// - `-EDEADLK`: called from a completion callback.
#[no_mangle]
pub extern "C" fn pstorage_flush(file: *mut pstorage_file_t) -> c_int {
    const F: &str = "pstorage_flush";
    run_int(F, || {
        let open = FILES.get(file, F)?;
        open.cluster.block_on(F, open.file.flush())??;
        Ok(0)
    })
}

/// Sets the file size to `size`: shrinking discards the tail (a later
/// grow reads zeros there), growing adds zeros. Needs a write lease.
///
/// Thread-safety: any thread; do not run it concurrently with writes
/// beyond `size`. Blocking: yes.
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `file`;
/// - `-EBADF`: not an open file handle, or the file is open read-only;
/// - `-EFBIG`: `size` is beyond the maximum file size (16 TiB);
/// - `-ESTALE`, `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_pwrite`.
#[no_mangle]
pub extern "C" fn pstorage_truncate(file: *mut pstorage_file_t, size: u64) -> c_int {
    const F: &str = "pstorage_truncate";
    run_int(F, || {
        let open = FILES.get(file, F)?;
        open.cluster.block_on(F, open.file.truncate(size))??;
        Ok(0)
    })
}

/// Fills `*st` with the file's attributes from the MDS and the size as
/// this handle sees it (including its unflushed writes).
///
/// Ownership: the caller owns `st`. Thread-safety: any thread.
/// Blocking: yes (one MDS round trip).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `file` or `st`;
/// - `-EBADF`: `file` is not an open file handle;
/// - `-ESTALE`: the lease was lost, or the path now names another file;
/// - `-EAGAIN`, `-ETIMEDOUT`, `-EIO`, `-EDEADLK`: as `pstorage_flush`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_fstat(
    file: *mut pstorage_file_t,
    st: *mut pstorage_stat_t,
) -> c_int {
    const F: &str = "pstorage_fstat";
    run_int(F, || {
        let open = FILES.get(file, F)?;
        let st = out_ptr(st, "st", F)?;
        let stat = open.cluster.block_on(F, open.file.stat())??;
        // SAFETY: checked non-NULL.
        unsafe { *st = pstorage_stat_t::from(&stat) };
        Ok(0)
    })
}

/// Stores the file size as this handle sees it in `*size`: the size at
/// open, grown by every acknowledged write, set by truncate. Unlike
/// `pstorage_fstat` it asks nobody.
///
/// Thread-safety: any thread. Blocking: no.
///
/// Returns 0 or `-EINVAL` (NULL `file` or `size`) or `-EBADF` (not an open
/// file handle).
#[no_mangle]
pub unsafe extern "C" fn pstorage_get_size(file: *mut pstorage_file_t, size: *mut u64) -> c_int {
    const F: &str = "pstorage_get_size";
    run_int(F, || {
        let open = FILES.get(file, F)?;
        let size = out_ptr(size, "size", F)?;
        // SAFETY: checked non-NULL.
        unsafe { *size = open.file.size() };
        Ok(0)
    })
}
