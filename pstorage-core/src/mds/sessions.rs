//! Exactly-once namespace mutations.
//!
//! A client retries a mutation whose answer it did not get, on whichever
//! MDS answers, and an MDS that was frozen or partitioned may still hold
//! the first attempt and forward it to the leader much later. Without
//! help, that late attempt takes effect after operations the client ran
//! since (an `unlink` removing the directory the client created again
//! afterwards). So every mutation carries an [`OpTag`], and the replicated
//! state keeps, per client session, the answers of the operations the
//! client has not finished with:
//!
//! - a repeated attempt gets the first attempt's answer, refusals included,
//!   and changes nothing;
//! - an attempt numbered below the session's `done_below` (its client has
//!   ended that operation: it got an answer or gave up) is refused, never
//!   executed.
//!
//! Bounds (a client chooses its tags, so nothing here may grow with what
//! it sends): at most [`MAX_OPS_PER_SESSION`] answers per session (the
//! oldest is forgotten and its number refused from then on) and at most
//! [`MAX_SESSIONS`] sessions; to make room, sessions idle for
//! [`SESSION_IDLE_MS`] go first, then the least recently seen. An attempt
//! of a forgotten session executes as new: a late attempt can still take
//! effect if its session was idle for an hour or pushed out by
//! [`MAX_SESSIONS`] newer ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::ApplyOutcome;
use crate::error::{Error, ErrorKind, Result};
use crate::types::{OpTag, SessionId};

/// Sessions the MDS remembers at most.
pub const MAX_SESSIONS: usize = 16_384;
/// Answers remembered per session at most (operations a client has in
/// flight at once).
pub const MAX_OPS_PER_SESSION: usize = 256;
/// A session not seen for this long is the first to be forgotten.
pub const SESSION_IDLE_MS: u64 = 3_600_000;

/// The answer an operation got, as it is remembered and replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpReply {
    /// It applied and produced this (chunk lists left out: the MDS that
    /// executed it deleted those replicas).
    Applied(ApplyOutcome),
    /// It was refused with this [`ErrorKind`] code and message.
    Refused {
        /// The error's [`ErrorKind`] code.
        kind: u16,
        /// The error's message.
        message: String,
    },
}

impl OpReply {
    /// What `result` is remembered as.
    pub fn of(result: &Result<ApplyOutcome>) -> OpReply {
        match result {
            Ok(ApplyOutcome::Released(_)) => OpReply::Applied(ApplyOutcome::Released(Vec::new())),
            Ok(ApplyOutcome::Opened { lease, stat, .. }) => {
                OpReply::Applied(ApplyOutcome::Opened {
                    lease: lease.clone(),
                    stat: stat.clone(),
                    released: Vec::new(),
                })
            }
            Ok(outcome) => OpReply::Applied(outcome.clone()),
            Err(e) => OpReply::Refused {
                kind: e.kind().code(),
                message: e.message().to_string(),
            },
        }
    }

    /// The remembered answer as a result.
    pub fn to_result(&self) -> Result<ApplyOutcome> {
        match self {
            OpReply::Applied(outcome) => Ok(outcome.clone()),
            OpReply::Refused { kind, message } => {
                Err(Error::new(ErrorKind::from_code(*kind), message.clone()))
            }
        }
    }
}

/// What the state knows of one client session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Operations numbered below this have ended at the client.
    pub done_below: u64,
    /// The newest command time seen from it.
    pub last_seen_ms: u64,
    /// Answers of operations numbered `done_below` or more.
    pub replies: BTreeMap<u64, OpReply>,
}

/// Where an attempt stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Not executed yet: execute it.
    New,
    /// Executed: this was its answer.
    Answered(OpReply),
    /// Its client has ended it: refuse.
    Ended {
        /// The session's `done_below` that ended it.
        done_below: u64,
    },
}

/// Every remembered session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    by_id: BTreeMap<SessionId, Session>,
}

impl Sessions {
    /// The sessions a persisted state held ([`super::format`]).
    pub(crate) fn from_map(by_id: BTreeMap<SessionId, Session>) -> Sessions {
        Sessions { by_id }
    }

    /// Where an attempt tagged `op` stands.
    pub fn check(&self, op: &OpTag) -> Seen {
        let Some(session) = self.by_id.get(&op.session) else {
            return Seen::New;
        };
        if op.seq < session.done_below {
            return Seen::Ended {
                done_below: session.done_below,
            };
        }
        match session.replies.get(&op.seq) {
            Some(reply) => Seen::Answered(reply.clone()),
            None => Seen::New,
        }
    }

    /// The refusal of an attempt whose operation ended at its client.
    pub fn ended_error(op: &OpTag, done_below: u64) -> Error {
        Error::stale(format!(
            "operation {} of client session {} arrived after the client ended it (it has ended every operation below {done_below}); it is not executed",
            op.seq, op.session
        ))
    }

    /// Records what the attempt tagged `op` learned of its session (its
    /// `done_below`, the time) and, for an executed one, its `reply`.
    pub fn record(&mut self, op: &OpTag, now_ms: u64, reply: Option<OpReply>) {
        if !self.by_id.contains_key(&op.session) {
            self.make_room(now_ms);
        }
        let session = self.by_id.entry(op.session).or_default();
        session.last_seen_ms = session.last_seen_ms.max(now_ms);
        if op.done_below > session.done_below {
            session.done_below = op.done_below;
            session.replies = session.replies.split_off(&op.done_below);
        }
        if let Some(reply) = reply {
            session.replies.insert(op.seq, reply);
        }
        while session.replies.len() > MAX_OPS_PER_SESSION {
            let (first, _) = session.replies.pop_first().expect("not empty");
            session.done_below = session.done_below.max(first + 1);
        }
    }

    /// Forgets sessions until a new one fits: the idle ones, then the least
    /// recently seen.
    fn make_room(&mut self, now_ms: u64) {
        if self.by_id.len() < MAX_SESSIONS {
            return;
        }
        self.by_id
            .retain(|_, s| s.last_seen_ms.saturating_add(SESSION_IDLE_MS) > now_ms);
        while self.by_id.len() >= MAX_SESSIONS {
            let oldest = self
                .by_id
                .iter()
                .min_by_key(|(id, s)| (s.last_seen_ms, **id))
                .map(|(id, _)| *id)
                .expect("not empty");
            self.by_id.remove(&oldest);
        }
    }

    /// How many sessions are remembered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// One session, if remembered.
    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.by_id.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ChunkId, MapVersion};

    fn tag(session: u64, seq: u64, done_below: u64) -> OpTag {
        OpTag {
            session: SessionId(session),
            seq,
            done_below,
        }
    }

    #[test]
    fn an_answer_is_replayed_until_its_client_ends_the_operation() {
        let mut s = Sessions::default();
        assert_eq!(s.check(&tag(7, 1, 1)), Seen::New);
        s.record(
            &tag(7, 1, 1),
            10,
            Some(OpReply::Applied(ApplyOutcome::Done)),
        );
        assert_eq!(
            s.check(&tag(7, 1, 1)),
            Seen::Answered(OpReply::Applied(ApplyOutcome::Done))
        );
        // Another session's operation 1 is its own.
        assert_eq!(s.check(&tag(8, 1, 1)), Seen::New);
        // The next operation says operation 1 ended: its answer goes, and a
        // late attempt of it is refused.
        s.record(
            &tag(7, 2, 2),
            11,
            Some(OpReply::Applied(ApplyOutcome::Done)),
        );
        assert_eq!(s.check(&tag(7, 1, 1)), Seen::Ended { done_below: 2 });
        assert_eq!(s.get(SessionId(7)).unwrap().replies.len(), 1);
    }

    #[test]
    fn refusals_are_replayed_too() {
        let mut s = Sessions::default();
        let refused: Result<ApplyOutcome> = Err(Error::not_found("no x in /"));
        s.record(&tag(1, 3, 1), 0, Some(OpReply::of(&refused)));
        let Seen::Answered(reply) = s.check(&tag(1, 3, 2)) else {
            panic!("not remembered");
        };
        let e = reply.to_result().unwrap_err();
        assert_eq!((e.kind(), e.message()), (ErrorKind::NotFound, "no x in /"));
    }

    #[test]
    fn released_chunks_are_not_remembered() {
        let map = crate::types::ChunkMap {
            chunk: ChunkId(1),
            index: 0,
            version: MapVersion(1),
            replicas: Vec::new(),
        };
        let reply = OpReply::of(&Ok(ApplyOutcome::Released(vec![map])));
        assert_eq!(reply, OpReply::Applied(ApplyOutcome::Released(Vec::new())));
    }

    #[test]
    fn a_session_keeps_a_bounded_number_of_answers() {
        let mut s = Sessions::default();
        // A client that never says it ended anything.
        for seq in 1..=(MAX_OPS_PER_SESSION as u64 + 10) {
            s.record(
                &tag(1, seq, 0),
                seq,
                Some(OpReply::Applied(ApplyOutcome::Done)),
            );
        }
        let session = s.get(SessionId(1)).unwrap();
        assert_eq!(session.replies.len(), MAX_OPS_PER_SESSION);
        assert_eq!(session.done_below, 11);
        // A forgotten answer is refused, not executed again.
        assert_eq!(s.check(&tag(1, 5, 0)), Seen::Ended { done_below: 11 });
    }

    #[test]
    fn the_number_of_sessions_is_bounded_idle_ones_first() {
        let mut s = Sessions::default();
        for id in 0..MAX_SESSIONS as u64 {
            // Session 0 is seen last, all others at time 1.
            let at = if id == 0 { 2 * SESSION_IDLE_MS } else { 1 };
            s.record(&tag(id, 1, 1), at, None);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        // A new session at a time when all but session 0 are idle.
        s.record(&tag(u64::MAX, 1, 1), 2 * SESSION_IDLE_MS, None);
        assert_eq!(s.len(), 2);
        assert!(s.get(SessionId(0)).is_some());
        // Full of active sessions: the least recently seen goes.
        let mut s = Sessions::default();
        for id in 0..MAX_SESSIONS as u64 {
            s.record(&tag(id, 1, 1), 100 + id, None);
        }
        s.record(&tag(u64::MAX, 1, 1), 200, None);
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(SessionId(0)).is_none());
        assert!(s.get(SessionId(1)).is_some());
    }
}
