//! Tags for the client's namespace mutations, so the MDS executes each at
//! most once however many attempts of it arrive, and never after the
//! client has ended it (see [`crate::mds::sessions`]).

use parking_lot::Mutex;
use std::collections::BTreeSet;

use rand::RngCore;

use crate::types::{OpTag, SessionId};

/// One client's session: its id and the operations it has in flight.
#[derive(Debug)]
pub(crate) struct OpTagger {
    session: SessionId,
    state: Mutex<InFlight>,
}

#[derive(Debug)]
struct InFlight {
    next_seq: u64,
    seqs: BTreeSet<u64>,
}

/// One operation in flight; it ends (for the MDS, at the next tag sent)
/// when this is dropped, whatever its outcome.
#[derive(Debug)]
pub(crate) struct OpTicket<'a> {
    tagger: &'a OpTagger,
    seq: u64,
}

impl OpTagger {
    /// A new session with a random id (from the seeded generator in the
    /// simulator).
    pub(crate) fn new() -> OpTagger {
        OpTagger {
            session: SessionId(crate::runtime::thread_rng().next_u64()),
            state: Mutex::new(InFlight {
                next_seq: 1,
                seqs: BTreeSet::new(),
            }),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, InFlight> {
        self.state.lock()
    }

    /// Starts an operation.
    pub(crate) fn begin(&self) -> OpTicket<'_> {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.seqs.insert(seq);
        OpTicket { tagger: self, seq }
    }
}

impl OpTicket<'_> {
    /// The tag of the next attempt: this operation's number, and the
    /// oldest operation still in flight (this one or an older one) as
    /// `done_below`.
    pub(crate) fn tag(&self) -> OpTag {
        let state = self.tagger.lock();
        let oldest = state.seqs.first().copied().unwrap_or(self.seq);
        OpTag {
            session: self.tagger.session,
            seq: self.seq,
            done_below: oldest.min(self.seq),
        }
    }
}

impl Drop for OpTicket<'_> {
    fn drop(&mut self) {
        self.tagger.lock().seqs.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_below_is_the_oldest_operation_in_flight() {
        let tagger = OpTagger::new();
        let a = tagger.begin();
        let b = tagger.begin();
        assert_eq!((a.tag().seq, a.tag().done_below), (1, 1));
        assert_eq!((b.tag().seq, b.tag().done_below), (2, 1));
        drop(a);
        assert_eq!(b.tag().done_below, 2);
        let c = tagger.begin();
        assert_eq!((c.tag().seq, c.tag().done_below), (3, 2));
        drop(b);
        assert_eq!(c.tag().done_below, 3);
        assert_eq!(c.tag().session, tagger.session);
        c.tag().validate().unwrap();
    }
}
