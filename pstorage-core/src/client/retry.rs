//! Bounded retries with exponential backoff.

use std::time::Duration;

use tokio::time::Instant;

use super::ClientOptions;

/// The retry budget of one operation: a deadline `io_timeout` after it
/// started and a pause that doubles from `retry_backoff_min` to
/// `retry_backoff_max`.
pub(crate) struct Retry {
    started: Instant,
    deadline: Instant,
    backoff: Duration,
    backoff_max: Duration,
}

impl Retry {
    pub(crate) fn new(options: &ClientOptions) -> Retry {
        let started = Instant::now();
        Retry {
            started,
            deadline: started + options.io_timeout,
            backoff: options.retry_backoff_min.max(Duration::from_millis(1)),
            backoff_max: options
                .retry_backoff_max
                .max(options.retry_backoff_min)
                .max(Duration::from_millis(1)),
        }
    }

    /// Sleeps before the next attempt. `false` when the deadline has passed:
    /// the caller gives up. The last sleep is cut short at the deadline so
    /// one final attempt happens right at it.
    pub(crate) async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let pause = self.backoff.min(self.deadline - now);
        tokio::time::sleep(pause).await;
        self.backoff = (self.backoff * 2).min(self.backoff_max);
        true
    }

    /// Time spent since the operation started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
