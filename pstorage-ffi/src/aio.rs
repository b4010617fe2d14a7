//! Asynchronous I/O in the librbd model: a completion is created with a
//! callback and a user pointer, handed to one `pstorage_aio_*` call, and
//! reports the result through the callback, a wait, or (without a callback)
//! the cluster's event fd.

use parking_lot::{Condvar, Mutex};
use std::ffi::{c_int, c_void};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock};

use futures::FutureExt;
use pstorage_core::client::File;

use crate::args::{buffer, may_block, out_ptr};
use crate::cluster::EventQueue;
use crate::error::{panic_message, run, run_int, set_last_error, FfiError, FfiResult};
use crate::file::FILES;
use crate::handles::{to_handle, Registry};
use crate::types::{pstorage_callback_t, pstorage_completion_t, pstorage_file_t};

static COMPLETIONS: LazyLock<Registry<Completion>> = LazyLock::new(|| Registry::new("completion"));

/// One asynchronous operation's outcome.
pub(crate) struct Completion {
    id: usize,
    /// The caller's pointer, stored as an integer: the library never
    /// dereferences it, only hands it back.
    arg: usize,
    callback: pstorage_callback_t,
    state: Mutex<CompletionState>,
    done: Condvar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Created, not submitted yet.
    Idle,
    /// Submitted; the operation runs.
    Pending,
    /// The result is set; the callback or poll-queue hand-off runs.
    Completing,
    /// Everything is over; waiters are released.
    Done,
}

struct CompletionState {
    phase: Phase,
    /// Bytes transferred, or 0, or `-errno`.
    result: libc::ssize_t,
    message: String,
    released: bool,
}

impl Completion {
    pub(crate) fn id(&self) -> usize {
        self.id
    }

    pub(crate) fn is_released(&self) -> bool {
        self.lock().released
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, CompletionState> {
        // Every critical section assigns plain fields: a panic in one is harmless.
        self.state.lock()
    }

    /// Idle -> Pending; a completion carries exactly one operation.
    fn begin(&self, function: &str) -> FfiResult<()> {
        let mut state = self.lock();
        if state.phase != Phase::Idle {
            return Err(FfiError::invalid(format!(
                "{function}: the completion was already used for an operation; create one completion per operation"
            )));
        }
        state.phase = Phase::Pending;
        Ok(())
    }

    /// Records the outcome, then runs the callback or queues the completion
    /// for polling, then wakes waiters.
    fn finish(self: &Arc<Self>, outcome: FfiResult<usize>, events: &EventQueue) {
        {
            let mut state = self.lock();
            assert_eq!(state.phase, Phase::Pending, "a completion finished twice");
            match outcome {
                Ok(n) => state.result = libc::ssize_t::try_from(n).unwrap_or(libc::ssize_t::MAX),
                Err(e) => {
                    state.result = -(e.errno as libc::ssize_t);
                    state.message = e.message;
                }
            }
            state.phase = Phase::Completing;
        }
        match self.callback {
            // SAFETY: the caller gave this function pointer and promised it
            // may run on a library thread with these arguments.
            Some(callback) => unsafe { callback(to_handle(self.id), self.arg as *mut c_void) },
            None => {
                events.push(self.clone());
            }
        }
        self.lock().phase = Phase::Done;
        self.done.notify_all();
    }
}

/// Creates a completion for one asynchronous operation and stores it in
/// `*comp`. `arg` is handed back to `callback` and by
/// `pstorage_aio_get_arg`; the library never dereferences it.
///
/// With a `callback`, it is called once when the operation finishes, on a
/// library I/O thread; it must not block (see `pstorage_callback_t`).
/// With `callback` NULL, the result is collected with
/// `pstorage_aio_wait_for_complete` / `pstorage_aio_is_complete`, or, once
/// `pstorage_cluster_event_fd` turned poll mode on, through
/// `pstorage_poll_io_events`: no library thread ever calls into the
/// program then.
///
/// Ownership: the caller owns `*comp` and frees it with
/// `pstorage_aio_release`. A completion carries one operation; create a
/// new one for the next. Thread-safety: any thread. Blocking: no.
///
/// Returns 0 or `-EINVAL` (NULL `comp`).
///
/// # Safety
/// `comp` is NULL or points to writable memory for one pointer.
#[no_mangle]
pub unsafe extern "C" fn pstorage_aio_create_completion(
    arg: *mut c_void,
    callback: pstorage_callback_t,
    comp: *mut *mut pstorage_completion_t,
) -> c_int {
    const F: &str = "pstorage_aio_create_completion";
    run_int(F, || {
        let out = out_ptr(comp, "comp", F)?;
        let id = COMPLETIONS.insert_with(|id| Completion {
            id,
            arg: arg as usize,
            callback,
            state: Mutex::new(CompletionState {
                phase: Phase::Idle,
                result: 0,
                message: String::new(),
                released: false,
            }),
            done: Condvar::new(),
        });
        // SAFETY: checked non-NULL.
        unsafe { *out = to_handle(id) };
        Ok(0)
    })
}

/// Starts `operation` on the open file behind `file`, reporting to `comp`.
fn submit<Fut>(
    function: &str,
    file: *mut pstorage_file_t,
    comp: *mut pstorage_completion_t,
    operation: impl FnOnce(File) -> Fut,
) -> i32
where
    Fut: Future<Output = FfiResult<usize>> + Send + 'static,
{
    run_int(function, || {
        let open = FILES.get(file, function)?;
        let completion = COMPLETIONS.get(comp, function)?;
        completion.begin(function)?;
        open.begin_io();
        let future = operation(open.file.clone());
        let function = function.to_string();
        open.cluster.runtime.clone().spawn(async move {
            // A panic must finish the completion too, or its waiter hangs.
            let outcome = AssertUnwindSafe(future)
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(FfiError::new(
                        libc::EIO,
                        format!(
                            "{function}: internal error (a bug in libpstorage: {}); please report it",
                            panic_message(&*panic)
                        ),
                    ))
                });
            completion.finish(outcome, &open.cluster.events);
            open.end_io();
        });
        Ok(0)
    })
}

/// A buffer pointer that crosses to an I/O thread. The caller promised it
/// stays valid and untouched until the operation completes.
struct BorrowedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is used by exactly one operation on one thread at a
// time, and the caller keeps it alive until the completion fires.
unsafe impl Send for BorrowedBuf {}

impl BorrowedBuf {
    /// # Safety
    /// The caller's promise: `len` valid bytes until the completion fires.
    unsafe fn slice_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: see above.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// Starts reading up to `len` bytes at `offset` into `buf`. The
/// completion's return value is the number of bytes read (short only at the
/// end of the file) or `-errno`, with the errors of `pstorage_pread`.
///
/// Ownership: `buf` is borrowed until the completion fires: keep it valid
/// and do not touch it until then. `comp` stays the caller's.
/// Thread-safety: any thread, including a completion callback; operations
/// in flight on one file may complete in any order.
/// Blocking: no; it only queues the operation.
///
/// Returns 0 when queued, or (nothing queued, the completion not fired):
/// - `-EINVAL`: NULL `file` or `comp`, NULL `buf` with `len` > 0, a
///   completion that was already used;
/// - `-EBADF`: `file` or `comp` is not an open handle.
#[no_mangle]
pub unsafe extern "C" fn pstorage_aio_read(
    file: *mut pstorage_file_t,
    offset: u64,
    buf: *mut c_void,
    len: usize,
    comp: *mut pstorage_completion_t,
) -> c_int {
    const F: &str = "pstorage_aio_read";
    if let Err(e) = run(F, || buffer(buf, len, "buf", F)) {
        return -e;
    }
    let mut target = BorrowedBuf {
        ptr: buf.cast(),
        len,
    };
    submit(F, file, comp, move |file| async move {
        // SAFETY: the caller keeps `buf` valid until completion.
        let slice = unsafe { target.slice_mut() };
        Ok(file.read_at(offset, slice).await?)
    })
}

/// Starts writing `len` bytes from `buf` at `offset` (needs a write
/// lease). The completion's return value is `len` or `-errno`, with the
/// errors of `pstorage_pwrite`. Like `pstorage_pwrite`, a completed write
/// is on every replica and durable after a flush.
///
/// Ownership: `buf` is borrowed until the completion fires: do not free
/// or change it before. Thread-safety and blocking as `pstorage_aio_read`;
/// overlapping writes in flight at once land in an unspecified order.
///
/// Returns 0 when queued, or the immediate errors of `pstorage_aio_read`.
#[no_mangle]
pub unsafe extern "C" fn pstorage_aio_write(
    file: *mut pstorage_file_t,
    offset: u64,
    buf: *const c_void,
    len: usize,
    comp: *mut pstorage_completion_t,
) -> c_int {
    const F: &str = "pstorage_aio_write";
    if let Err(e) = run(F, || buffer(buf, len, "buf", F)) {
        return -e;
    }
    let mut source = BorrowedBuf {
        ptr: buf.cast_mut().cast(),
        len,
    };
    submit(F, file, comp, move |file| async move {
        // SAFETY: the caller keeps `buf` valid and unchanged until completion.
        let data = unsafe { source.slice_mut() };
        file.write_at(offset, data).await?;
        Ok(len)
    })
}

/// Starts a flush (see `pstorage_flush`): it covers every write that
/// completed before this call. The completion's return value is 0 or
/// `-errno`, with the errors of `pstorage_flush`.
///
/// Thread-safety and blocking as `pstorage_aio_read`.
///
/// Returns 0 when queued, or `-EINVAL` / `-EBADF` as `pstorage_aio_read`.
#[no_mangle]
pub extern "C" fn pstorage_aio_flush(
    file: *mut pstorage_file_t,
    comp: *mut pstorage_completion_t,
) -> c_int {
    submit("pstorage_aio_flush", file, comp, |file| async move {
        file.flush().await?;
        Ok(0)
    })
}

/// Starts zeroing `len` bytes at `offset` without sending data (TRIM /
/// WRITE_ZEROES; needs a write lease): the range reads as zeros after, and
/// chunks never written stay unallocated. Grows the file like a write. The
/// completion's return value is 0 or `-errno`, with the errors of
/// `pstorage_pwrite`.
///
/// Thread-safety and blocking as `pstorage_aio_read`.
///
/// Returns 0 when queued, or `-EINVAL` / `-EBADF` as `pstorage_aio_read`.
#[no_mangle]
pub extern "C" fn pstorage_aio_discard(
    file: *mut pstorage_file_t,
    offset: u64,
    len: u64,
    comp: *mut pstorage_completion_t,
) -> c_int {
    submit("pstorage_aio_discard", file, comp, move |file| async move {
        file.write_zeros(offset, len).await?;
        Ok(0)
    })
}

/// The result of the completed operation: bytes transferred (read/write),
/// 0 (flush/discard), or `-errno`. After a negative result,
/// `pstorage_last_error()` on this thread describes it.
///
/// Thread-safety: any thread. Blocking: no.
///
/// Returns the result, or:
/// - `-EINPROGRESS`: the operation has not completed yet;
/// - `-EINVAL`: NULL `comp`, or a completion never submitted;
/// - `-EBADF`: `comp` is not an open completion handle.
#[no_mangle]
pub extern "C" fn pstorage_aio_get_return_value(comp: *mut pstorage_completion_t) -> libc::ssize_t {
    const F: &str = "pstorage_aio_get_return_value";
    let outcome = run(F, || {
        let completion = COMPLETIONS.get(comp, F)?;
        let state = completion.lock();
        match state.phase {
            Phase::Idle => Err(FfiError::invalid(format!(
                "{F}: the completion was never submitted"
            ))),
            Phase::Pending => Err(FfiError::new(
                libc::EINPROGRESS,
                format!("{F}: the operation has not completed yet"),
            )),
            Phase::Completing | Phase::Done => Ok((state.result, state.message.clone())),
        }
    });
    match outcome {
        Ok((result, message)) => {
            if result < 0 {
                set_last_error(&message);
            }
            result
        }
        Err(errno) => -(errno as libc::ssize_t),
    }
}

/// Returns 1 if the operation has completed (its result is available), 0
/// if not.
///
/// Thread-safety: any thread. Blocking: no.
///
/// Returns 1, 0, or `-EINVAL` (NULL `comp`) / `-EBADF` (not an open
/// completion handle).
#[no_mangle]
pub extern "C" fn pstorage_aio_is_complete(comp: *mut pstorage_completion_t) -> c_int {
    const F: &str = "pstorage_aio_is_complete";
    run_int(F, || {
        let completion = COMPLETIONS.get(comp, F)?;
        let phase = completion.lock().phase;
        Ok(matches!(phase, Phase::Completing | Phase::Done).into())
    })
}

/// Waits until the operation has completed and its callback (if any) has
/// returned.
///
/// Thread-safety: any thread but a library I/O thread. Blocking: yes,
/// until completion (bounded by the I/O timeout, 60 s, of the operation).
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `comp`, or a completion never submitted (it would
///   never complete);
/// - `-EBADF`: `comp` is not an open completion handle;
/// - `-EDEADLK`: called from a completion callback.
#[no_mangle]
pub extern "C" fn pstorage_aio_wait_for_complete(comp: *mut pstorage_completion_t) -> c_int {
    const F: &str = "pstorage_aio_wait_for_complete";
    run_int(F, || {
        let completion = COMPLETIONS.get(comp, F)?;
        may_block(F)?;
        let mut state = completion.lock();
        if state.phase == Phase::Idle {
            return Err(FfiError::invalid(format!(
                "{F}: the completion was never submitted; it would never complete"
            )));
        }
        while state.phase != Phase::Done {
            completion.done.wait(&mut state);
        }
        Ok(0)
    })
}

/// Stores the `arg` the completion was created with in `*arg`.
///
/// Thread-safety: any thread. Blocking: no.
///
/// Returns 0 or `-EINVAL` (NULL `comp` or `arg`) / `-EBADF` (not an open
/// completion handle).
#[no_mangle]
pub unsafe extern "C" fn pstorage_aio_get_arg(
    comp: *mut pstorage_completion_t,
    arg: *mut *mut c_void,
) -> c_int {
    const F: &str = "pstorage_aio_get_arg";
    run_int(F, || {
        let completion = COMPLETIONS.get(comp, F)?;
        let out = out_ptr(arg, "arg", F)?;
        // SAFETY: checked non-NULL.
        unsafe { *out = completion.arg as *mut c_void };
        Ok(0)
    })
}

/// Frees a completion that was never submitted or whose operation has
/// completed (it may be called from its own callback).
///
/// Ownership: takes `comp`; it is invalid after a 0 return.
/// Thread-safety: no other call may use `comp` concurrently. Blocking: no.
///
/// Returns 0 or:
/// - `-EINVAL`: NULL `comp`;
/// - `-EBADF`: `comp` is not an open completion handle;
/// - `-EBUSY`: the operation is still in flight (the completion stays
///   valid; wait for it first).
#[no_mangle]
pub extern "C" fn pstorage_aio_release(comp: *mut pstorage_completion_t) -> c_int {
    const F: &str = "pstorage_aio_release";
    run_int(F, || {
        let completion = COMPLETIONS.remove_if(comp, F, |c| match c.lock().phase {
            Phase::Pending => Err(FfiError::new(
                libc::EBUSY,
                format!("{F}: the operation is still in flight; wait for it before releasing the completion"),
            )),
            _ => Ok(()),
        })?;
        completion.lock().released = true;
        Ok(0)
    })
}
