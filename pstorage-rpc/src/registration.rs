//! A chunk server's registration in parts, and its reply in pages.
//!
//! A registration lists every replica the chunk server holds, and the
//! MDS needs the whole list at once (a chain member missing from it is a
//! lost copy). One message of millions of replicas would set the size
//! every peer may send, so the client ([`crate::mds::MdsClient`]) sends a
//! registration of more than [`REPLICA_PAGE`] replicas in parts
//! (`registerCsPart`), each answered with a token, and the last part in
//! `registerCs` with that token; the server ([`RegistrationIntake`]) joins
//! them and hands the whole registration to the core. A reply that carries
//! more than [`REPLICA_PAGE`] ids (only possible after parts) is kept under
//! the same token and read page by page (`registerCsReply`).
//!
//! Everything kept belongs to the connection that sent it and goes when it
//! closes, or when it is left untouched for [`KEPT_IDLE`] (a chunk server
//! that gave up half-way registers again on the same connection). Bounds: [`MAX_REPLICAS_PER_CS`] replicas (and as many unclean
//! ids) per registration, [`INTAKE_MAX_IDS`] ids kept in all, and
//! [`INTAKE_MAX_TOKENS`] tokens; past them a part is refused `Busy` (the
//! chunk server registers again after its pause).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pstorage_core::types::{
    ChunkId, ChunkReplicaInfo, CsRegistration, RegisterReply, MAX_REPLICAS_PER_CS, REPLICA_PAGE,
};
use pstorage_core::{Error, ErrorKind, Result};

use crate::wire::{RegisterReplyPage, RegistrationToken};

/// Most ids (replicas, unclean and reply ids) the intake of one MDS keeps
/// in all: two of the largest registrations (16 bytes each: 512 MiB).
pub const INTAKE_MAX_IDS: usize = 2 * MAX_REPLICAS_PER_CS;

/// Most registrations in parts (or replies in pages) one MDS keeps at once.
pub const INTAKE_MAX_TOKENS: usize = 1024;

/// How long a registration in parts (or a reply in pages) is kept without
/// a call on it: its parts follow one another at once.
pub const KEPT_IDLE: Duration = Duration::from_secs(120);

/// The connection a server-side object serves, for [`RegistrationIntake`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnectionId(pub(crate) u64);

/// The registrations in parts and the paged replies of one MDS's
/// connections.
#[derive(Debug, Default)]
pub(crate) struct RegistrationIntake {
    inner: Mutex<Intake>,
}

#[derive(Debug, Default)]
struct Intake {
    /// The last token and connection id handed out.
    last_token: u64,
    last_connection: u64,
    kept: HashMap<RegistrationToken, Kept>,
    /// Ids held by `kept`.
    ids: usize,
}

#[derive(Debug)]
struct Kept {
    connection: ConnectionId,
    /// The last call on it.
    touched: Instant,
    what: KeptWhat,
}

impl Intake {
    /// Forgets what was left untouched for [`KEPT_IDLE`] by `now`.
    fn purge_idle(&mut self, now: Instant) {
        let mut freed = 0;
        self.kept.retain(|_, kept| {
            let keep = now.saturating_duration_since(kept.touched) < KEPT_IDLE;
            if !keep {
                freed += kept.what.ids();
            }
            keep
        });
        self.ids -= freed;
    }
}

#[derive(Debug)]
enum KeptWhat {
    /// The parts of a registration received so far.
    Parts {
        chunks: Vec<ChunkReplicaInfo>,
        unclean: Vec<ChunkId>,
    },
    /// What remains of a reply, ids to delete first, then stale ones.
    Reply {
        delete: Vec<ChunkId>,
        stale: Vec<ChunkId>,
        heartbeat_interval_ms: u64,
    },
}

impl KeptWhat {
    fn ids(&self) -> usize {
        match self {
            KeptWhat::Parts { chunks, unclean } => chunks.len() + unclean.len(),
            KeptWhat::Reply { delete, stale, .. } => delete.len() + stale.len(),
        }
    }
}

fn unknown(token: RegistrationToken, method: &str) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!(
            "{method}: registration token {} is unknown on this connection (its connection \
             closed, or it was finished): register again",
            token.0
        ),
    )
}

/// Refuses a part or last part larger than a page.
pub(crate) fn check_page(method: &str, chunks: usize, unclean: usize) -> Result<()> {
    if chunks > REPLICA_PAGE || unclean > REPLICA_PAGE {
        return Err(Error::invalid(format!(
            "{method}: a part of a registration carries at most {REPLICA_PAGE} replicas and as \
             many unclean ids, not {chunks} and {unclean}: send the rest in more parts"
        )));
    }
    Ok(())
}

impl RegistrationIntake {
    /// A new connection's id.
    pub(crate) fn connection(&self) -> ConnectionId {
        let mut inner = self.inner.lock();
        inner.last_connection += 1;
        ConnectionId(inner.last_connection)
    }

    /// Forgets what `connection` left (it closed).
    pub(crate) fn forget(&self, connection: ConnectionId) {
        let mut inner = self.inner.lock();
        let mut freed = 0;
        inner.kept.retain(|_, kept| {
            let keep = kept.connection != connection;
            if !keep {
                freed += kept.what.ids();
            }
            keep
        });
        inner.ids -= freed;
    }

    /// Adds a part to the registration under `token` (a new one for 0)
    /// and returns its token.
    pub(crate) fn add_part(
        &self,
        connection: ConnectionId,
        token: RegistrationToken,
        chunks: Vec<ChunkReplicaInfo>,
        unclean: Vec<ChunkId>,
    ) -> Result<RegistrationToken> {
        const METHOD: &str = "registerCsPart";
        check_page(METHOD, chunks.len(), unclean.len())?;
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.purge_idle(now);
        let added = chunks.len() + unclean.len();
        if inner.ids + added > INTAKE_MAX_IDS {
            // The client gives this registration up: so does the intake.
            if let Some(kept) = inner
                .kept
                .get(&token)
                .filter(|k| k.connection == connection)
            {
                let ids = kept.what.ids();
                inner.kept.remove(&token);
                inner.ids -= ids;
            }
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{METHOD}: this MDS holds {} replica ids of registrations in parts, the most \
                     it keeps is {INTAKE_MAX_IDS}: try again",
                    inner.ids
                ),
            ));
        }
        let token = if token.0 == 0 {
            if inner.kept.len() >= INTAKE_MAX_TOKENS {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "{METHOD}: this MDS keeps {INTAKE_MAX_TOKENS} registrations in parts \
                         already: try again"
                    ),
                ));
            }
            inner.last_token += 1;
            let token = RegistrationToken(inner.last_token);
            inner.kept.insert(
                token,
                Kept {
                    connection,
                    touched: now,
                    what: KeptWhat::Parts {
                        chunks: Vec::new(),
                        unclean: Vec::new(),
                    },
                },
            );
            token
        } else {
            token
        };
        let Some(Kept {
            connection: owner,
            touched,
            what:
                KeptWhat::Parts {
                    chunks: kept_chunks,
                    unclean: kept_unclean,
                },
        }) = inner.kept.get_mut(&token)
        else {
            return Err(unknown(token, METHOD));
        };
        if *owner != connection {
            return Err(unknown(token, METHOD));
        }
        if kept_chunks.len() + chunks.len() > MAX_REPLICAS_PER_CS
            || kept_unclean.len() + unclean.len() > MAX_REPLICAS_PER_CS
        {
            let held = kept_chunks.len();
            let ids = kept_chunks.len() + kept_unclean.len();
            inner.kept.remove(&token);
            inner.ids -= ids;
            return Err(Error::invalid(format!(
                "{METHOD}: a registration reports at most {MAX_REPLICAS_PER_CS} replicas; this \
                 one reached {held} and more follow"
            )));
        }
        *touched = now;
        kept_chunks.extend(chunks);
        kept_unclean.extend(unclean);
        inner.ids += added;
        Ok(token)
    }

    /// The whole registration: the parts kept under `token` (none for 0)
    /// followed by `last`'s. The token is forgotten.
    pub(crate) fn finish(
        &self,
        connection: ConnectionId,
        token: RegistrationToken,
        mut last: CsRegistration,
    ) -> Result<CsRegistration> {
        const METHOD: &str = "registerCs";
        check_page(METHOD, last.chunks.len(), last.unclean.len())?;
        if token.0 == 0 {
            return Ok(last);
        }
        let mut inner = self.inner.lock();
        inner.purge_idle(Instant::now());
        let (mut chunks, mut unclean) = match inner.kept.remove(&token) {
            Some(Kept {
                connection: owner,
                what: KeptWhat::Parts { chunks, unclean },
                ..
            }) if owner == connection => (chunks, unclean),
            Some(other) => {
                inner.kept.insert(token, other);
                return Err(unknown(token, METHOD));
            }
            None => return Err(unknown(token, METHOD)),
        };
        inner.ids -= chunks.len() + unclean.len();
        if chunks.len() + last.chunks.len() > MAX_REPLICAS_PER_CS
            || unclean.len() + last.unclean.len() > MAX_REPLICAS_PER_CS
        {
            return Err(Error::invalid(format!(
                "{METHOD}: a registration reports at most {MAX_REPLICAS_PER_CS} replicas, not {}",
                chunks.len() + last.chunks.len()
            )));
        }
        chunks.append(&mut last.chunks);
        unclean.append(&mut last.unclean);
        last.chunks = chunks;
        last.unclean = unclean;
        Ok(last)
    }

    /// The first page of `reply`; the rest is kept under `token` (the
    /// registration's, which must be set when the reply needs more than
    /// one page: a registration without parts has at most a page of
    /// replicas, and its reply names each at most once).
    pub(crate) fn first_page(
        &self,
        connection: ConnectionId,
        token: RegistrationToken,
        reply: RegisterReply,
    ) -> Result<RegisterReplyPage> {
        let RegisterReply {
            delete,
            stale,
            heartbeat_interval_ms,
        } = reply;
        if delete.len() + stale.len() <= REPLICA_PAGE {
            return Ok(RegisterReplyPage {
                reply: RegisterReply {
                    delete,
                    stale,
                    heartbeat_interval_ms,
                },
                more: false,
            });
        }
        if token.0 == 0 {
            return Err(Error::internal(format!(
                "registerCs: a registration of at most {REPLICA_PAGE} replicas was answered with \
                 {} ids",
                delete.len() + stale.len()
            )));
        }
        let what = KeptWhat::Reply {
            delete,
            stale,
            heartbeat_interval_ms,
        };
        {
            let mut inner = self.inner.lock();
            // The token's parts were taken by `finish`; a reply is held
            // whatever the bound (the registration took effect), and
            // counted.
            inner.ids += what.ids();
            inner.kept.insert(
                token,
                Kept {
                    connection,
                    touched: Instant::now(),
                    what,
                },
            );
        }
        self.next_page(connection, token)
    }

    /// The next page of the reply kept under `token`.
    pub(crate) fn next_page(
        &self,
        connection: ConnectionId,
        token: RegistrationToken,
    ) -> Result<RegisterReplyPage> {
        const METHOD: &str = "registerCsReply";
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.purge_idle(now);
        let Some(Kept {
            connection: owner,
            touched,
            what:
                KeptWhat::Reply {
                    delete,
                    stale,
                    heartbeat_interval_ms,
                },
        }) = inner.kept.get_mut(&token)
        else {
            return Err(unknown(token, METHOD));
        };
        if *owner != connection {
            return Err(unknown(token, METHOD));
        }
        *touched = now;
        let from_delete = delete.len().min(REPLICA_PAGE);
        let page_delete: Vec<ChunkId> = delete.drain(..from_delete).collect();
        let from_stale = stale.len().min(REPLICA_PAGE - from_delete);
        let page_stale: Vec<ChunkId> = stale.drain(..from_stale).collect();
        let more = !delete.is_empty() || !stale.is_empty();
        let heartbeat_interval_ms = *heartbeat_interval_ms;
        inner.ids -= from_delete + from_stale;
        if !more {
            inner.kept.remove(&token);
        }
        Ok(RegisterReplyPage {
            reply: RegisterReply {
                delete: page_delete,
                stale: page_stale,
                heartbeat_interval_ms,
            },
            more,
        })
    }

    /// Ids held in all (tests).
    #[cfg(test)]
    fn ids(&self) -> usize {
        self.inner.lock().ids
    }
}

/// A part of a registration: replicas and unclean ids.
pub(crate) type Part = (Vec<ChunkReplicaInfo>, Vec<ChunkId>);

/// Splits `registration` into the parts [`crate::mds::MdsClient`] sends
/// before the last (each at most a page of replicas and of unclean ids)
/// and the last part, which keeps the id, address and space.
pub(crate) fn split(mut registration: CsRegistration) -> (Vec<Part>, CsRegistration) {
    let pages = registration
        .chunks
        .len()
        .div_ceil(REPLICA_PAGE)
        .max(registration.unclean.len().div_ceil(REPLICA_PAGE))
        .max(1);
    let mut chunks = std::mem::take(&mut registration.chunks).into_iter();
    let mut unclean = std::mem::take(&mut registration.unclean).into_iter();
    let mut parts: Vec<Part> = (0..pages)
        .map(|_| {
            (
                chunks.by_ref().take(REPLICA_PAGE).collect(),
                unclean.by_ref().take(REPLICA_PAGE).collect(),
            )
        })
        .collect();
    let (last_chunks, last_unclean) = parts.pop().expect("at least one part");
    registration.chunks = last_chunks;
    registration.unclean = last_unclean;
    (parts, registration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pstorage_core::types::{CsId, MapVersion, SpaceInfo};

    fn replicas(from: u64, n: usize) -> Vec<ChunkReplicaInfo> {
        (from..from + n as u64)
            .map(|c| ChunkReplicaInfo {
                chunk: ChunkId(c),
                version: MapVersion(c % 7 + 1),
            })
            .collect()
    }

    fn registration(chunks: Vec<ChunkReplicaInfo>, unclean: Vec<ChunkId>) -> CsRegistration {
        CsRegistration {
            id: CsId(3),
            addr: "127.0.0.1:9".into(),
            space: SpaceInfo::default(),
            chunks,
            unclean,
        }
    }

    #[test]
    fn parts_joined_give_the_registration_back() {
        let whole = registration(
            replicas(1, 2 * REPLICA_PAGE + 17),
            (1..=(REPLICA_PAGE as u64 + 5)).map(ChunkId).collect(),
        );
        let (parts, last) = split(whole.clone());
        assert_eq!(parts.len(), 2);
        assert!(parts
            .iter()
            .all(|(c, u)| c.len() <= REPLICA_PAGE && u.len() <= REPLICA_PAGE));
        let intake = RegistrationIntake::default();
        let conn = intake.connection();
        let mut token = RegistrationToken(0);
        for (chunks, unclean) in parts {
            token = intake.add_part(conn, token, chunks, unclean).unwrap();
        }
        assert_ne!(token.0, 0);
        assert_eq!(intake.finish(conn, token, last).unwrap(), whole);
        assert_eq!(intake.ids(), 0);
        // The token is gone with it.
        let err = intake
            .finish(conn, token, registration(vec![], vec![]))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn a_small_registration_is_one_part() {
        let whole = registration(replicas(1, 10), vec![ChunkId(2)]);
        let (parts, last) = split(whole.clone());
        assert!(parts.is_empty());
        assert_eq!(last, whole);
        let empty = registration(vec![], vec![]);
        let (parts, last) = split(empty.clone());
        assert!(parts.is_empty());
        assert_eq!(last, empty);
    }

    #[test]
    fn a_token_belongs_to_its_connection_and_goes_with_it() {
        let intake = RegistrationIntake::default();
        let (a, b) = (intake.connection(), intake.connection());
        let token = intake
            .add_part(a, RegistrationToken(0), replicas(1, 5), vec![])
            .unwrap();
        let err = intake
            .add_part(b, token, replicas(6, 5), vec![])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let err = intake
            .finish(b, token, registration(vec![], vec![]))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(intake.ids(), 5);
        intake.forget(a);
        assert_eq!(intake.ids(), 0);
        let err = intake
            .finish(a, token, registration(vec![], vec![]))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn an_oversized_part_and_an_oversized_registration_are_refused() {
        let intake = RegistrationIntake::default();
        let conn = intake.connection();
        let err = intake
            .add_part(
                conn,
                RegistrationToken(0),
                replicas(0, REPLICA_PAGE + 1),
                vec![],
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let err = intake
            .finish(
                conn,
                RegistrationToken(0),
                registration(replicas(0, REPLICA_PAGE + 1), vec![]),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        // Parts past the largest registration: refused, and what was kept
        // is freed.
        let mut token = RegistrationToken(0);
        let page = replicas(0, REPLICA_PAGE);
        let pages = MAX_REPLICAS_PER_CS / REPLICA_PAGE;
        for _ in 0..pages {
            token = intake.add_part(conn, token, page.clone(), vec![]).unwrap();
        }
        assert_eq!(intake.ids(), MAX_REPLICAS_PER_CS);
        let err = intake
            .add_part(conn, token, replicas(0, 1), vec![])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(intake.ids(), 0);
    }

    #[test]
    fn what_is_left_untouched_goes() {
        let intake = RegistrationIntake::default();
        let conn = intake.connection();
        let old = intake
            .add_part(conn, RegistrationToken(0), replicas(1, 5), vec![])
            .unwrap();
        let later = Instant::now() + KEPT_IDLE + Duration::from_secs(1);
        intake.inner.lock().purge_idle(later);
        assert_eq!(intake.ids(), 0);
        let err = intake
            .finish(conn, old, registration(vec![], vec![]))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        // What is touched stays.
        let kept = intake
            .add_part(conn, RegistrationToken(0), replicas(1, 5), vec![])
            .unwrap();
        intake.inner.lock().purge_idle(Instant::now());
        assert_eq!(intake.ids(), 5);
        intake
            .finish(conn, kept, registration(vec![], vec![]))
            .unwrap();
    }

    #[test]
    fn the_intake_is_bounded_in_all() {
        let intake = RegistrationIntake::default();
        let page = replicas(0, REPLICA_PAGE);
        let per = MAX_REPLICAS_PER_CS / REPLICA_PAGE;
        for _ in 0..2 {
            let conn = intake.connection();
            let mut token = RegistrationToken(0);
            for _ in 0..per {
                token = intake.add_part(conn, token, page.clone(), vec![]).unwrap();
            }
        }
        assert_eq!(intake.ids(), INTAKE_MAX_IDS);
        let other = intake.connection();
        let err = intake
            .add_part(other, RegistrationToken(0), replicas(0, 1), vec![])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        // A registration refused half-way is given up, its parts freed.
        let last = intake.connection();
        let token = {
            let mut inner = intake.inner.lock();
            let (&token, kept) = inner.kept.iter_mut().next().unwrap();
            kept.connection = last;
            token
        };
        let err = intake
            .add_part(last, token, replicas(0, 1), vec![])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert_eq!(intake.ids(), MAX_REPLICAS_PER_CS);
    }

    #[test]
    fn a_long_reply_is_read_in_pages() {
        let intake = RegistrationIntake::default();
        let conn = intake.connection();
        let delete: Vec<ChunkId> = (0..REPLICA_PAGE as u64 + 10).map(ChunkId).collect();
        let stale: Vec<ChunkId> = (1 << 40..(1 << 40) + REPLICA_PAGE as u64)
            .map(ChunkId)
            .collect();
        let reply = RegisterReply {
            delete: delete.clone(),
            stale: stale.clone(),
            heartbeat_interval_ms: 700,
        };
        // Without a token, a reply must fit a page.
        let err = intake
            .first_page(conn, RegistrationToken(0), reply.clone())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        let token = RegistrationToken(99);
        let mut page = intake.first_page(conn, token, reply).unwrap();
        let mut joined = RegisterReply {
            heartbeat_interval_ms: page.reply.heartbeat_interval_ms,
            ..RegisterReply::default()
        };
        let mut pages = 1;
        loop {
            assert!(page.reply.delete.len() + page.reply.stale.len() <= REPLICA_PAGE);
            joined.delete.extend(page.reply.delete);
            joined.stale.extend(page.reply.stale);
            if !page.more {
                break;
            }
            assert!(intake.next_page(intake.connection(), token).is_err());
            page = intake.next_page(conn, token).unwrap();
            pages += 1;
        }
        assert_eq!(pages, 3);
        assert_eq!((joined.delete, joined.stale), (delete, stale));
        assert_eq!(joined.heartbeat_interval_ms, 700);
        assert_eq!(intake.ids(), 0);
        assert!(intake.next_page(conn, token).is_err());
    }
}
