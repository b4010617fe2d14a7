//! Block repair: a replica whose blocks fail their CRC check (found by a
//! read, by scrubbing, or after an unclean stop) stays in its chain; only
//! those blocks are rewritten from another replica.
//!
//! 1. [`ChunkServer::report_damage`] scans the replica block by block (the
//!    whole replica for the scrubber, a retry and the check after an
//!    unclean stop; only the request's blocks for a read or write that hit
//!    one, which waits for it). A replica whose header or file is unusable
//!    ([`ChunkStore::check_usable`]), or with more than
//!    [`MAX_REPORTED_BLOCKS`] bad blocks, or (in a whole scan) with every
//!    block bad, is taken out of service as a whole (the MDS re-replicates
//!    the chunk, as before). Otherwise the bad blocks go to the
//!    [`BadReplicaSink`](super::BadReplicaSink) and the replica keeps
//!    serving its other blocks (a read of a bad block fails with `Corrupt`,
//!    and the client reads another replica).
//! 2. The daemon's reporter asks the MDS
//!    ([`CsRegistry::report_bad_blocks`](crate::traits::CsRegistry::report_bad_blocks))
//!    for the members to repair from, and calls
//!    [`ChunkServer::repair_blocks`]: each block is read from the first
//!    member that has a good copy (checked against that member's CRC
//!    entry) and written with [`ChunkStore::repair_block`], which writes
//!    only if the block still fails its check (a write since then wins).
//!    The repair is flushed, then reported (repaired from whom, or
//!    unrepairable: no member had a good copy) and logged in the event log.
//!
//! Each chunk has at most one repair in flight; a chunk whose blocks no
//! member could repair is not reported again at the same map version, and
//! one whose repair could not reach a source is looked at again by the
//! reporter after [`REPAIR_RETRY_AFTER`] (findings meanwhile are not
//! reported). When the reporter is the chain's only member, the MDS names
//! the newest stale replica of the chunk as the source; while that one
//! cannot serve (its server down, or it refuses the map's version) the MDS
//! answers `Busy` instead of naming none, and the reporter scans and
//! reports the same blocks again after [`REPAIR_WAIT_RETRY`]. So a guest
//! rereading a bad block costs no scan per read.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::types::{ChunkId, CsId, MapVersion, Replica, BLOCK_SIZE, MAX_REPORTED_BLOCKS};

use super::scrub::VERIFY_PIECE;
use super::server::ChunkServer;
use super::ChunkStore;

/// After a repair that could not reach any source, findings on the chunk
/// are not reported again for this long.
pub const REPAIR_RETRY_AFTER: Duration = Duration::from_secs(30);

/// After the MDS answered that the only copy to repair from cannot serve
/// yet (`Busy`: the chain's only member, its newest stale copy down or
/// refusing), the same blocks are scanned and reported again this soon.
pub const REPAIR_WAIT_RETRY: Duration = Duration::from_secs(5);

/// Most blocks read from a source in one request.
const REPAIR_RUN_BLOCKS: u64 = 64;

/// Why a chunk is not reported again right now.
#[derive(Debug, Clone, Copy)]
pub(super) enum Hold {
    /// A repair is in flight.
    InFlight,
    /// No member had a good copy of some blocks at this version.
    Unrepairable(MapVersion),
    /// No source could be reached: not before this instant.
    RetryAt(tokio::time::Instant),
}

/// The repairs of a chunk server.
#[derive(Default)]
pub(super) struct Repairs {
    held: parking_lot::Mutex<HashMap<ChunkId, Hold>>,
}

impl Repairs {
    fn held(&self) -> parking_lot::MutexGuard<'_, HashMap<ChunkId, Hold>> {
        self.held.lock()
    }
}

/// What a block scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Damage {
    /// Every block passes (a write replaced the bad ones since).
    None,
    /// The replica is gone or already out of service.
    Gone,
    /// The replica is unusable as a whole: `why`.
    Whole(String),
    /// These blocks (ascending) fail their check at `version`.
    Blocks(MapVersion, Vec<u64>),
}

/// What [`ChunkServer::repair_blocks`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairOutcome {
    /// Blocks rewritten (or found good again), by the member they came from.
    pub repaired: Vec<(CsId, Vec<u64>)>,
    /// Blocks every member answered for with a bad copy of its own.
    pub unrepairable: Vec<u64>,
    /// Blocks left as they were because no member could be asked (not
    /// reachable, not at the version): the next finding reports them again.
    pub failed: Vec<u64>,
    /// Why the failed ones failed.
    pub error: Option<String>,
}

impl ChunkServer {
    /// Handles a `Corrupt` finding (`detail`) on replica `chunk`: blocks
    /// that fail their check are reported for repair and the replica stays
    /// in service; a replica that is unusable as a whole is taken out of
    /// service and reported ([`report_bad_replica`](ChunkServer::report_bad_replica)).
    /// Returns whether this call reported something.
    /// `blocks`: the first and last block to scan; `None` for all.
    pub async fn report_damage(
        &self,
        chunk: ChunkId,
        blocks: Option<(u64, u64)>,
        detail: String,
    ) -> bool {
        let held = self.repairs.held().get(&chunk).copied();
        match held {
            Some(Hold::InFlight) => return false,
            Some(Hold::RetryAt(at)) if tokio::time::Instant::now() < at => return false,
            Some(Hold::Unrepairable(version)) => {
                let now = self.blocking(move |store| store.version(chunk)).await;
                if now.ok() == Some(version) {
                    return false;
                }
            }
            _ => {}
        }
        {
            let mut held = self.repairs.held();
            if matches!(held.get(&chunk), Some(Hold::InFlight)) {
                return false;
            }
            held.insert(chunk, Hold::InFlight);
        }
        let damage = match self.find_bad_blocks(chunk, blocks).await {
            Ok(damage) => damage,
            Err(e) => Damage::Whole(format!("{detail}; scanning it for bad blocks failed: {e}")),
        };
        match damage {
            Damage::None | Damage::Gone => {
                self.repairs.held().remove(&chunk);
                false
            }
            Damage::Whole(why) => {
                self.repairs.held().remove(&chunk);
                self.report_bad_replica(chunk, format!("{detail} ({why})"))
                    .await
            }
            Damage::Blocks(version, blocks) => {
                tracing::warn!(cs = %self.id(), %chunk, %version, blocks = ?blocks, %detail,
                    "blocks failing their check: asking the MDS for a replica to repair them from");
                let sink = self.sink.read().clone();
                sink.bad_blocks(chunk, version, blocks, detail);
                true
            }
        }
    }

    /// Reads the blocks `range` (first, last; `None`: all) of replica
    /// `chunk` and lists those that fail their check.
    pub(super) async fn find_bad_blocks(
        &self,
        chunk: ChunkId,
        range: Option<(u64, u64)>,
    ) -> Result<Damage> {
        let (size, version) = match self
            .blocking(move |store| {
                store.check_usable(chunk)?;
                Ok((store.chunk_size(chunk)?, store.version(chunk)?))
            })
            .await
        {
            Ok(found) => found,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Damage::Gone),
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                return match self.blocking(move |store| store.is_bad(chunk)).await {
                    Ok(true) => Ok(Damage::Gone),
                    _ => Ok(Damage::Whole(e.message().to_string())),
                };
            }
            Err(e) => return Err(e),
        };
        let blocks = size / BLOCK_SIZE;
        let (first, last) = range.unwrap_or((0, blocks.saturating_sub(1)));
        let end = (last + 1).min(blocks) * BLOCK_SIZE;
        let mut offset = first * BLOCK_SIZE;
        let mut bad = Vec::new();
        while offset < end {
            let len = VERIFY_PIECE.min(end - offset);
            let found = self
                .blocking(move |store| bad_blocks_in(store, chunk, version, offset, len))
                .await;
            match found {
                Ok(mut found) => bad.append(&mut found),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Damage::Gone),
                Err(e) if e.kind() == ErrorKind::Stale => {
                    // Moved on meanwhile (a copy, a new version): the next
                    // finding starts over.
                    return Ok(Damage::None);
                }
                Err(e) => return Err(e),
            }
            if bad.len() > MAX_REPORTED_BLOCKS {
                return Ok(Damage::Whole(format!(
                    "more than {MAX_REPORTED_BLOCKS} blocks fail their check"
                )));
            }
            offset += len;
        }
        if bad.is_empty() {
            return Ok(Damage::None);
        }
        if range.is_none() && bad.len() as u64 == blocks {
            return Ok(Damage::Whole("every block fails its check".into()));
        }
        Ok(Damage::Blocks(version, bad))
    }

    /// Repairs `blocks` (ascending) of replica `chunk` at `version` from
    /// `sources` (the other members, in chain order, as the MDS named
    /// them), then flushes the replica. See the module docs.
    pub async fn repair_blocks(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        blocks: &[u64],
        sources: &[Replica],
    ) -> RepairOutcome {
        let mut outcome = RepairOutcome::default();
        let mut left: Vec<u64> = blocks.to_vec();
        // Blocks some reachable member answered for with a bad copy.
        let mut bad_elsewhere: Vec<u64> = Vec::new();
        let mut last_error = None;
        for source in sources {
            if left.is_empty() {
                break;
            }
            match self.repair_from(chunk, version, &left, source).await {
                Ok((done, bad)) => {
                    if !done.is_empty() {
                        left.retain(|b| !done.contains(b));
                        outcome.repaired.push((source.cs, done));
                    }
                    bad_elsewhere.extend(bad);
                }
                Err(e) => {
                    tracing::warn!(cs = %self.id(), %chunk, source = %source.cs, error = %e,
                        "block repair: cannot use this source");
                    last_error = Some(format!("chunk server {}: {e}", source.cs));
                }
            }
        }
        if !outcome.repaired.is_empty() {
            if let Err(e) = self.blocking(move |store| store.flush(chunk)).await {
                // Not durable: report none of it as repaired.
                tracing::warn!(cs = %self.id(), %chunk, error = %e, "block repair: flush failed");
                for (_, done) in outcome.repaired.drain(..) {
                    left.extend(done);
                }
                left.sort_unstable();
                last_error = Some(e.to_string());
            }
        }
        bad_elsewhere.sort_unstable();
        bad_elsewhere.dedup();
        for b in left {
            // Unrepairable only when every member was asked and had it bad.
            if last_error.is_none() && bad_elsewhere.contains(&b) || sources.is_empty() {
                outcome.unrepairable.push(b);
            } else {
                outcome.failed.push(b);
            }
        }
        if !outcome.failed.is_empty() {
            outcome.error = last_error;
        }
        outcome
    }

    /// Repairs what it can of `blocks` from one source: returns the blocks
    /// repaired (or found good again) and those the source has bad too.
    async fn repair_from(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        blocks: &[u64],
        source: &Replica,
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        let deadline = self.copies.progress_timeout();
        let within = |what: &'static str| {
            move |_| {
                Error::new(
                    ErrorKind::TimedOut,
                    format!("no answer within {} ms ({what})", deadline.as_millis()),
                )
            }
        };
        let peer = tokio::time::timeout(deadline, self.connector().chunk_service(&source.addr))
            .await
            .map_err(within("connecting"))??;
        let mut done = Vec::new();
        let mut bad = Vec::new();
        for run in runs(blocks) {
            let (first, count) = (run[0], run.len() as u64);
            let entries = tokio::time::timeout(
                deadline,
                peer.block_crcs(chunk, version, first * BLOCK_SIZE, count * BLOCK_SIZE),
            )
            .await
            .map_err(within("the CRC entries"))??;
            if entries.len() as u64 != count {
                return Err(Error::protocol(format!(
                    "chunk server {} answered {} CRC entries for {count} blocks",
                    source.cs,
                    entries.len()
                )));
            }
            let data = match tokio::time::timeout(
                deadline,
                peer.read_verified(chunk, version, first * BLOCK_SIZE, count * BLOCK_SIZE),
            )
            .await
            .map_err(within("a read"))?
            {
                Ok(data) if data.len() as u64 == count * BLOCK_SIZE => Some(data),
                Ok(data) => {
                    return Err(Error::protocol(format!(
                        "chunk server {} answered a read of {count} blocks with {} bytes",
                        source.cs,
                        data.len()
                    )))
                }
                // Some block of the run is bad there too: one at a time.
                Err(e) if e.kind() == ErrorKind::Corrupt => None,
                Err(e) => return Err(e),
            };
            for (i, &block) in run.iter().enumerate() {
                let entry = entries[i];
                let bytes = match &data {
                    Some(data) => {
                        Some(data.slice(i * BLOCK_SIZE as usize..(i + 1) * BLOCK_SIZE as usize))
                    }
                    None if entry == 0 => None,
                    None => {
                        let one = tokio::time::timeout(
                            deadline,
                            peer.read_verified(chunk, version, block * BLOCK_SIZE, BLOCK_SIZE),
                        )
                        .await
                        .map_err(within("a read"))?;
                        match one {
                            Ok(one) if one.len() as u64 == BLOCK_SIZE => Some(one),
                            Ok(one) => {
                                return Err(Error::protocol(format!(
                                    "chunk server {} answered a read of one block with {} bytes",
                                    source.cs,
                                    one.len()
                                )))
                            }
                            Err(e) if e.kind() == ErrorKind::Corrupt => {
                                bad.push(block);
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                };
                let bytes = match (entry, bytes) {
                    // Never written there: zero it here.
                    (0, _) => None,
                    (_, Some(b)) if super::block_entry(&b) == entry => Some(b),
                    // Its data does not match its own entry: damaged on
                    // the way, or a bad copy there.
                    _ => {
                        bad.push(block);
                        continue;
                    }
                };
                let wrote = self
                    .blocking(move |store| {
                        store.repair_block(chunk, version, block, bytes.as_deref())
                    })
                    .await?;
                tracing::info!(
                    cs = %self.id(),
                    %chunk,
                    block,
                    source = %source.cs,
                    wrote,
                    "block repaired"
                );
                done.push(block);
            }
        }
        Ok((done, bad))
    }

    /// Forgets why findings on `chunk` are held back (the reporter's
    /// retry of a repair that could not reach a source).
    pub fn clear_repair_hold(&self, chunk: ChunkId) {
        self.repairs.held().remove(&chunk);
    }

    /// Ends the repair of `chunk` (the reporter calls it once the MDS heard
    /// the outcome, or the report failed): findings are reported again,
    /// except at the same version after an unrepairable outcome and for
    /// [`REPAIR_RETRY_AFTER`] after a failed one.
    pub fn finish_repair(&self, chunk: ChunkId, version: MapVersion, outcome: &RepairOutcome) {
        let mut held = self.repairs.held();
        if !outcome.unrepairable.is_empty() {
            held.insert(chunk, Hold::Unrepairable(version));
        } else if !outcome.failed.is_empty() {
            held.insert(
                chunk,
                Hold::RetryAt(tokio::time::Instant::now() + REPAIR_RETRY_AFTER),
            );
        } else {
            held.remove(&chunk);
        }
    }
}

/// The blocks of `[offset, offset + len)` of `chunk` that fail their check.
fn bad_blocks_in(
    store: &dyn ChunkStore,
    chunk: ChunkId,
    version: MapVersion,
    offset: u64,
    len: u64,
) -> Result<Vec<u64>> {
    let mut buf = vec![0u8; len as usize];
    match store.read_checked(chunk, Some(version), offset, &mut buf) {
        Ok(()) => return Ok(Vec::new()),
        Err(e) if e.kind() == ErrorKind::Corrupt => {}
        Err(e) => return Err(e),
    }
    let mut bad = Vec::new();
    for block in offset / BLOCK_SIZE..(offset + len) / BLOCK_SIZE {
        let one = &mut buf[..BLOCK_SIZE as usize];
        match store.read_checked(chunk, Some(version), block * BLOCK_SIZE, one) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Corrupt => bad.push(block),
            Err(e) => return Err(e),
        }
    }
    Ok(bad)
}

/// `blocks` (ascending) as runs of consecutive blocks, each at most
/// [`REPAIR_RUN_BLOCKS`] long.
fn runs(blocks: &[u64]) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some(run)
                if run.last() == Some(&(b.wrapping_sub(1)))
                    && (run.len() as u64) < REPAIR_RUN_BLOCKS =>
            {
                run.push(b)
            }
            _ => out.push(vec![b]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_split_at_gaps_and_at_the_run_limit() {
        assert_eq!(runs(&[]), Vec::<Vec<u64>>::new());
        assert_eq!(runs(&[3, 4, 5, 9]), vec![vec![3, 4, 5], vec![9]]);
        let long: Vec<u64> = (0..70).collect();
        let r = runs(&long);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].len(), 64);
        assert_eq!(r[1], (64..70).collect::<Vec<u64>>());
    }
}
