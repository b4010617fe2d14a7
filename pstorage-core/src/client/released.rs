//! The leases this client released lately. The MDS answers a release before
//! it commits (it goes with the next Raft entry), so an MDS that loses the
//! leadership in those milliseconds loses it, and the new leader still
//! holds the lease until it expires. A `Busy` answer to this client's own
//! next namespace call may then come from its own closed file: the client
//! sends those releases again (to whoever leads now) and tries the call
//! once more ([`super::Client`]'s `mutate`).

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::types::LeaseId;

/// Most releases remembered (the oldest is forgotten first).
pub(crate) const MAX_REMEMBERED: usize = 128;

/// Releases this client made, each until its lease could no longer be held
/// anywhere (two of its durations after the release: a new leader keeps a
/// lease one duration from its take-over).
#[derive(Debug, Default)]
pub(crate) struct Released {
    leases: Mutex<VecDeque<(LeaseId, Instant)>>,
}

impl Released {
    /// Remembers the release of `lease` (of `duration_ms`) made now.
    pub(crate) fn note(&self, lease: LeaseId, duration_ms: u64) {
        let until = Instant::now() + Duration::from_millis(duration_ms.saturating_mul(2));
        let mut leases = self.leases.lock();
        if leases.len() == MAX_REMEMBERED {
            leases.pop_front();
        }
        leases.push_back((lease, until));
    }

    /// The releases to send again, forgotten here (each is sent again once):
    /// those whose lease could still be held.
    pub(crate) fn take(&self) -> Vec<LeaseId> {
        let now = Instant::now();
        let mut leases = self.leases.lock();
        leases
            .drain(..)
            .filter(|(_, until)| *until > now)
            .map(|(lease, _)| lease)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn remembers_the_newest_until_they_could_no_longer_be_held() {
        let released = Released::default();
        for i in 0..(MAX_REMEMBERED as u64 + 2) {
            released.note(LeaseId(i), 1_000);
        }
        let taken = released.take();
        assert_eq!(taken.len(), MAX_REMEMBERED);
        assert_eq!(taken[0], LeaseId(2), "the oldest go first");
        assert!(released.take().is_empty(), "each is sent again once");

        released.note(LeaseId(7), 1_000);
        tokio::time::advance(Duration::from_millis(2_001)).await;
        released.note(LeaseId(8), 1_000);
        assert_eq!(released.take(), vec![LeaseId(8)]);
    }
}
