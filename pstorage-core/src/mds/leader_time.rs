//! The time an MDS writes into its commands: lease renewals and expiries,
//! chunk servers' heartbeats, file times, event stamps.
//!
//! The wall clock is read once, when this MDS takes the lead (and when it
//! starts); from then on the time moves with the monotonic clock. A step of
//! the wall clock while it leads (NTP correcting it, an operator) changes
//! nothing: leases and heartbeats are measured in real durations, not in
//! whatever the wall clock did meanwhile. Before, a leader whose clock
//! stepped back and then forward again (NTP) expired every client's lease
//! at once, and one stepped forward would have seen every chunk server as
//! offline. The next leader reads its own wall clock again, so a step is
//! corrected at the next election; its first command
//! ([`super::Command::RefreshLeases`]) gives every lease a whole duration on
//! its clock, so a new leader whose clock is ahead expires nobody either.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::traits::Clock;

/// The MDS's time: the wall clock at the last anchoring, plus the monotonic
/// time since.
pub(super) struct LeaderTime {
    clock: Arc<dyn Clock>,
    anchor: Mutex<Anchor>,
}

#[derive(Clone, Copy)]
struct Anchor {
    wall_ms: u64,
    monotonic_ms: u64,
}

impl LeaderTime {
    /// Anchored at the wall clock's time now.
    pub(super) fn new(clock: Arc<dyn Clock>) -> LeaderTime {
        let anchor = Mutex::new(Anchor::read(clock.as_ref()));
        LeaderTime { clock, anchor }
    }

    /// Milliseconds since the Unix epoch, as this MDS counts them.
    pub(super) fn now_ms(&self) -> u64 {
        let anchor = *self.anchor.lock();
        let elapsed = self
            .clock
            .monotonic_ms()
            .saturating_sub(anchor.monotonic_ms);
        anchor.wall_ms.saturating_add(elapsed)
    }

    /// Reads the wall clock again (this MDS takes or leaves the lead) and
    /// returns the new time.
    pub(super) fn reanchor(&self) -> u64 {
        let anchor = Anchor::read(self.clock.as_ref());
        *self.anchor.lock() = anchor;
        anchor.wall_ms
    }
}

impl Anchor {
    fn read(clock: &dyn Clock) -> Anchor {
        Anchor {
            wall_ms: clock.now_ms(),
            monotonic_ms: clock.monotonic_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traits::ManualClock;

    #[test]
    fn a_step_of_the_wall_clock_is_ignored_until_the_next_anchoring() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let time = LeaderTime::new(clock.clone());
        clock.advance(500);
        assert_eq!(time.now_ms(), 1_000_500);
        clock.step(-172_000);
        clock.advance(100);
        assert_eq!(time.now_ms(), 1_000_600, "a step back is ignored");
        clock.step(600_000);
        assert_eq!(time.now_ms(), 1_000_600, "a step forward is ignored");
        assert_eq!(
            time.reanchor(),
            1_428_600,
            "the next leader reads the clock"
        );
        clock.advance(50);
        assert_eq!(time.now_ms(), 1_428_650);
    }
}
