//! Determinism seams of the runtime: randomness and blocking work.
//!
//! Daemons run with the defaults: random choices come from the operating
//! system's entropy and blocking work (disk I/O, redb commits) runs on
//! tokio's blocking pool. The simulator (`pstorage-sim`) runs a whole
//! cluster on one current-thread runtime and needs the same seed to give the
//! same run, so on its thread it
//!
//! * seeds every random choice made in this crate (scrub jitter, snapshot
//!   ids) and in openraft (election timeouts, through [`MdsAsyncRuntime`])
//!   with [`seed_thread_rng`], and
//! * runs blocking work inline ([`set_inline_blocking`]): a real thread
//!   would finish at a moment the seed does not decide.
//!
//! Both settings are per thread, so a daemon's threads are unaffected by a
//! simulator running in the same process (tests).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::error::{Error, ErrorKind, Result};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
    static INLINE_BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Makes every random choice drawn through [`ThreadRng`] on this thread
/// come from a generator seeded with `seed` (`None`: back to the
/// operating system's entropy).
pub fn seed_thread_rng(seed: Option<u64>) {
    SEEDED.with(|rng| *rng.borrow_mut() = seed.map(StdRng::seed_from_u64));
}

/// Whether [`seed_thread_rng`] seeded this thread.
pub fn thread_rng_is_seeded() -> bool {
    SEEDED.with(|rng| rng.borrow().is_some())
}

/// The random number generator of this thread: seeded by
/// [`seed_thread_rng`], else `rand::thread_rng()`. Every random choice in
/// pstorage-core goes through it.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRng;

/// A [`ThreadRng`] handle.
pub fn thread_rng() -> ThreadRng {
    ThreadRng
}

impl ThreadRng {
    fn with<T>(f: impl FnOnce(&mut dyn RngCore) -> T) -> T {
        SEEDED.with(|seeded| match seeded.borrow_mut().as_mut() {
            Some(rng) => f(rng),
            None => f(&mut rand::thread_rng()),
        })
    }
}

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        ThreadRng::with(|r| r.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        ThreadRng::with(|r| r.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        ThreadRng::with(|r| r.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), rand::Error> {
        ThreadRng::with(|r| r.try_fill_bytes(dest))
    }
}

/// Makes [`run_blocking`] on this thread run its work inline (`true`, the
/// simulator) or on tokio's blocking pool (`false`, the default).
pub fn set_inline_blocking(inline: bool) {
    INLINE_BLOCKING.with(|flag| flag.set(inline));
}

/// Runs blocking work (disk I/O) off the async runtime's threads, or inline
/// when [`set_inline_blocking`] asked for it on this thread. `what` names
/// the work in the error if the task panicked.
pub async fn run_blocking<T, F>(what: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if INLINE_BLOCKING.with(|flag| flag.get()) {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        let message = format!("{what}: the blocking task failed: {e}");
        Error::with_source(ErrorKind::Internal, message, e)
    })
}

/// Starts blocking work (disk I/O) on tokio's blocking pool without waiting
/// for it, or runs it inline now when [`set_inline_blocking`] asked for
/// that on this thread (the simulator: its schedules stay the same as with
/// [`run_blocking`]). The work reports its own failures.
pub fn start_blocking<F>(f: F)
where
    F: FnOnce() + Send + 'static,
{
    if INLINE_BLOCKING.with(|flag| flag.get()) {
        f();
        return;
    }
    drop(tokio::task::spawn_blocking(f));
}

/// openraft's runtime for the MDS group: tokio, with election timeouts and
/// other random choices drawn from [`ThreadRng`] (so a seeded simulator
/// elects the same leaders in every run).
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct MdsAsyncRuntime;

impl openraft::AsyncRuntime for MdsAsyncRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: openraft::OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = openraft::TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + openraft::OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: openraft::OptionalSend> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: openraft::OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + openraft::OptionalSend + 'static,
        T::Output: openraft::OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + openraft::OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + openraft::OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: openraft::OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (openraft::async_runtime::TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_numbers_again() {
        seed_thread_rng(Some(7));
        let a: Vec<u64> = (0..4).map(|_| thread_rng().gen()).collect();
        seed_thread_rng(Some(7));
        let b: Vec<u64> = (0..4).map(|_| thread_rng().gen()).collect();
        seed_thread_rng(None);
        assert_eq!(a, b);
        assert!(!thread_rng_is_seeded());
    }

    #[tokio::test]
    async fn inline_blocking_runs_on_the_calling_thread() {
        set_inline_blocking(true);
        let me = std::thread::current().id();
        let there = run_blocking("test", move || std::thread::current().id())
            .await
            .unwrap();
        set_inline_blocking(false);
        assert_eq!(me, there);
        let pool = run_blocking("test", move || std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(me, pool);
    }
}
