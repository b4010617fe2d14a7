//! Reads of chunk files that would wait for the disk, through io_uring on
//! the thread that asks, so that a chunk server's one thread keeps many of
//! them in flight instead of blocking on each in turn.
//!
//! A chunk server serves small reads inline on its thread: a `pread` that
//! misses the page cache blocks the thread (and every request behind it)
//! for the disk's latency, so one server had one cold read in flight at a
//! time whatever the client's queue depth. Handing such reads to other
//! threads cost more CPU than it saved (see `docs/design.md`, "Threads").
//! Here the thread submits the read to a ring of its own and goes on; the
//! kernel signals the completion on an eventfd the thread's tokio runtime
//! polls, and a task of that runtime hands each result to its reader.
//!
//! Each thread has one ring (for the tokio runtime it runs; a thread
//! that runs another runtime later gets a new one). At most
//! [`RING_ENTRIES`] reads are in flight per ring; more wait for a slot. The
//! buffer of a read belongs to the ring until the kernel is done with it,
//! even when its reader gave up waiting, and so does a handle on the file
//! (`keep`), so the descriptor stays open. Dropping a ring waits for the
//! reads still in flight.
//!
//! Where io_uring cannot be used (no tokio runtime on this thread, a kernel
//! or sandbox without it, `PSTORAGE_NO_URING=1` in the environment) [`read_at`]
//! answers `Unsupported`, and the caller reads the way it did before.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, Semaphore};

/// Submission queue entries of a ring, and the most reads in flight on it.
pub const RING_ENTRIES: u32 = 128;

/// Reads completed through a ring in this process (tests, diagnostics).
pub static RING_READS: AtomicU64 = AtomicU64::new(0);

/// What keeps a read's file descriptor open until the kernel is done.
pub type Keep = Arc<dyn Any + Send + Sync>;

/// Reads `len` bytes at `offset` of `fd` through this thread's ring.
/// `keep` owns the descriptor; the ring holds it until the read completes.
/// `Unsupported` when io_uring cannot be used here (see the module
/// documentation); a short read is `UnexpectedEof`; other errors are the
/// read's.
pub async fn read_at(fd: RawFd, keep: Keep, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let ring = Ring::for_this_thread()?;
    ring.read(fd, keep, offset, len).await
}

/// Whether this thread can read through a ring (creating it if needed).
pub fn available() -> bool {
    Ring::for_this_thread().is_ok()
}

thread_local! {
    static RING: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

/// This thread's ring, or why it has none, for one runtime.
struct Slot {
    runtime: tokio::runtime::Id,
    ring: Result<Arc<Ring>, io::ErrorKind>,
}

/// One io_uring instance, its eventfd and the reads in flight on it.
struct Ring {
    inner: Mutex<Inner>,
    /// Slots for reads in flight: a read holds one from its submission to
    /// its completion being handed over.
    slots: Arc<Semaphore>,
}

struct Inner {
    uring: IoUring,
    next: u64,
    ops: HashMap<u64, Op>,
}

/// A read in flight: the kernel writes into `buf`.
struct Op {
    buf: Vec<u8>,
    _keep: Keep,
    reply: Option<oneshot::Sender<io::Result<Vec<u8>>>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

fn disabled_by_environment() -> bool {
    std::env::var_os("PSTORAGE_NO_URING").is_some_and(|v| !v.is_empty() && v != "0")
}

impl Ring {
    fn for_this_thread() -> io::Result<Arc<Ring>> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::new(io::ErrorKind::Unsupported, "no tokio runtime"))?;
        RING.with(|cell| {
            let mut cell = cell.borrow_mut();
            match &*cell {
                Some(slot) if slot.runtime == runtime.id() => {}
                _ => {
                    let ring = if disabled_by_environment() {
                        Err(io::ErrorKind::Unsupported)
                    } else {
                        Ring::start(&runtime).map_err(|e| {
                            tracing::info!(error = %e, "io_uring unavailable: cold reads of chunk files wait on the serving thread");
                            e.kind()
                        })
                    };
                    *cell = Some(Slot {
                        runtime: runtime.id(),
                        ring,
                    });
                }
            }
            match &cell.as_ref().expect("set above").ring {
                Ok(ring) => Ok(ring.clone()),
                Err(kind) => Err(io::Error::new(
                    *kind,
                    "io_uring is not available on this thread",
                )),
            }
        })
    }

    /// A new ring whose completions a task of `runtime` hands over.
    fn start(runtime: &tokio::runtime::Handle) -> io::Result<Arc<Ring>> {
        let uring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: eventfd takes no pointers; on success it returns a new
        // descriptor that nothing else owns.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nothing else.
        let event = unsafe { OwnedFd::from_raw_fd(raw) };
        uring.submitter().register_eventfd(event.as_raw_fd())?;
        let event = {
            let _entered = runtime.enter();
            // SAFETY: the AsyncFd owns `event`, so the descriptor stays
            // open and the same until the AsyncFd goes.
            unsafe { AsyncFd::register_with_interest(event, tokio::io::Interest::READABLE) }?
        };
        let ring = Arc::new(Ring {
            inner: Mutex::new(Inner {
                uring,
                next: 0,
                ops: HashMap::new(),
            }),
            slots: Arc::new(Semaphore::new(RING_ENTRIES as usize)),
        });
        runtime.spawn(complete(Arc::downgrade(&ring), event));
        Ok(ring)
    }

    async fn read(&self, fd: RawFd, keep: Keep, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let len32 = u32::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read too large"))?;
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slots are never closed");
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.inner.lock();
            let id = inner.next;
            inner.next += 1;
            let mut buf = vec![0u8; len];
            let entry = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), len32)
                .offset(offset)
                .build()
                .user_data(id);
            // The buffer moves into the map before the kernel may see its
            // address: moving a Vec does not move its heap allocation.
            inner.ops.insert(
                id,
                Op {
                    buf,
                    _keep: keep,
                    reply: Some(tx),
                    _slot: slot,
                },
            );
            // SAFETY: the entry points into `ops[id].buf`, which stays
            // allocated (and `fd` open, through `keep`) until its
            // completion is reaped; at most RING_ENTRIES reads hold slots,
            // so the queue has room and the completion queue (twice as big)
            // cannot overflow.
            let pushed = unsafe { inner.uring.submission().push(&entry) };
            if pushed.is_err() {
                // Nothing of the kernel's points at the buffer yet.
                inner.ops.remove(&id);
                return Err(io::Error::other("the io_uring submission queue is full"));
            }
            loop {
                match inner.uring.submit() {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // The entry stays queued (a later submission takes
                        // it), so its buffer stays with the ring until it
                        // completes; this reader reads another way.
                        if let Some(op) = inner.ops.get_mut(&id) {
                            op.reply = None;
                        }
                        return Err(e);
                    }
                }
            }
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the io_uring of this thread stopped")),
        }
    }
}

/// Hands over completions as the kernel signals them on `event`, until the
/// ring is gone.
async fn complete(ring: std::sync::Weak<Ring>, event: AsyncFd<OwnedFd>) {
    loop {
        let mut ready = match event.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::warn!(error = %e, "io_uring eventfd failed");
                return;
            }
        };
        let mut count = [0u8; 8];
        // Resets the counter (nothing to do when it was already zero).
        // SAFETY: reads 8 bytes into a local buffer of 8 bytes.
        let _ = unsafe { libc::read(event.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        // Cleared before the completions are taken: one posted after this
        // signals the eventfd again, which makes it ready again.
        ready.clear_ready();
        let Some(ring) = ring.upgrade() else { return };
        let done = ring.inner.lock().reap();
        for (reply, result) in done {
            let _ = reply.send(result);
        }
    }
}

impl Inner {
    /// Takes every completion posted, with the reply each is for.
    #[allow(clippy::type_complexity)]
    fn reap(&mut self) -> Vec<(oneshot::Sender<io::Result<Vec<u8>>>, io::Result<Vec<u8>>)> {
        let mut done = Vec::new();
        let completed: Vec<(u64, i32)> = self
            .uring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (id, res) in completed {
            let Some(mut op) = self.ops.remove(&id) else {
                continue;
            };
            RING_READS.fetch_add(1, Ordering::Relaxed);
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else if res as usize != op.buf.len() {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read: {res} of {} bytes", op.buf.len()),
                ))
            } else {
                Ok(std::mem::take(&mut op.buf))
            };
            if let Some(reply) = op.reply.take() {
                done.push((reply, result));
            }
        }
        done
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The kernel may still write into buffers of reads in flight: wait
        // for them before the buffers go (bounded by the disk's latency).
        while !self.ops.is_empty() {
            let waited = self.uring.submit_and_wait(1);
            if waited
                .as_ref()
                .is_err_and(|e| e.kind() != io::ErrorKind::Interrupted)
            {
                // Cannot wait: leak the buffers (and keep the files open)
                // rather than free memory the kernel may write into.
                for (_, op) in self.ops.drain() {
                    std::mem::forget(op);
                }
                return;
            }
            let _ = self.reap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, Arc<std::fs::File>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        (dir, Arc::new(file))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_what_pread_reads_many_at_once() {
        if !available() {
            // A kernel or sandbox without io_uring: the caller's fallback
            // is all there is; the chunk server tests cover it.
            assert!(read_at(0, Arc::new(()), 0, 1).await.is_err());
            return;
        }
        let data = pattern(1 << 20);
        let (_dir, file) = file_with(&data);
        let before = RING_READS.load(Ordering::Relaxed);
        let reads = (0..300u64).map(|i| {
            let file = file.clone();
            let offset = (i * 4096 * 13) % (1 << 20);
            let len = 4096 * (1 + (i as usize % 3)).min(((1 << 20) - offset as usize) / 4096);
            async move {
                let got = read_at(file.as_raw_fd(), file.clone(), offset, len)
                    .await
                    .unwrap();
                let mut want = vec![0u8; len];
                file.read_exact_at(&mut want, offset).unwrap();
                assert_eq!(got, want, "read at {offset}");
            }
        });
        futures::future::join_all(reads).await;
        assert!(RING_READS.load(Ordering::Relaxed) >= before + 300);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_read_past_the_end_is_short_and_a_bad_descriptor_an_error() {
        if !available() {
            return;
        }
        let (_dir, file) = file_with(&pattern(4096));
        let short = read_at(file.as_raw_fd(), file.clone(), 2048, 4096).await;
        assert_eq!(short.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let bad = read_at(-1, Arc::new(()), 0, 4096).await.unwrap_err();
        assert_eq!(bad.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn readers_that_give_up_leave_their_buffers_to_the_ring() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let data = pattern(1 << 20);
        let (_dir, file) = file_with(&data);
        runtime.block_on(async {
            if !available() {
                return;
            }
            // Start reads and drop them unfinished; then more reads work.
            for i in 0..64u64 {
                let read = read_at(file.as_raw_fd(), file.clone(), i * 4096, 4096);
                let _ = futures::FutureExt::now_or_never(Box::pin(read));
            }
            let got = read_at(file.as_raw_fd(), file.clone(), 8192, 4096)
                .await
                .unwrap();
            assert_eq!(got, data[8192..12288]);
        });
        // The runtime (and the ring's task) go; this thread's next runtime
        // gets a ring of its own.
        drop(runtime);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            if !available() {
                return;
            }
            let got = read_at(file.as_raw_fd(), file.clone(), 0, 4096)
                .await
                .unwrap();
            assert_eq!(got, data[..4096]);
        });
    }
}
