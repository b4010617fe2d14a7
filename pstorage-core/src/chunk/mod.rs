//! The chunk store (a chunk server's disk) and the chunk server logic.
//!
//! * [`ChunkStore`] is the synchronous seam to the disk: chunk replicas with
//!   a map version, a CRC-64 per 4 KiB block verified on every read.
//!   [`FileChunkStore`] keeps one file per chunk; [`MemChunkStore`] keeps
//!   everything in memory for tests and simulation. Both pass the same
//!   conformance suite (the tests of this module).
//! * [`ChunkServer`] is a chunk server's request logic: it implements
//!   [`ChunkService`](crate::traits::ChunkService) (the data path, with
//!   version checks and chain forwarding) and
//!   [`ChunkControl`](crate::traits::ChunkControl) (what the MDS does to it).
//! * [`memory::MemNetwork`] connects chunk servers in memory so whole chains
//!   run in one process.
//!
//! # Chunk file format, version 3
//!
//! One file per chunk replica: `<dir>/chunks/<chunk id as 16 lowercase hex>.chunk`.
//! All integers are little-endian.
//!
//! ```text
//! offset 0      header, 4096 bytes
//!   0..8        magic "PSTCHUNK"
//!   8..12       format version (u32) = 3 (1 and 2 are still read, see below)
//!   12..16      header length in bytes (u32) = 4096
//!   16..24      chunk id (u64)
//!   24..32      map version (u64)
//!   32..40      chunk size in bytes (u64), a multiple of 4096
//!   40..48      CRC-64/XZ of the whole 4096-byte header with these 8 bytes as zero
//!   48..4096    zero (reserved)
//! offset 4096   CRC table: one u64 per 4 KiB data block, padded with zeros to
//!               a multiple of 4096 bytes
//! offset D = 4096 + padded table length
//!               data slot 0: chunk size bytes (sparse where never written)
//! offset D + chunk size
//!               slot map: one bit per block (bit b % 8 of byte b / 8),
//!               padded with zeros to a multiple of 4096 bytes
//! offset S = D + chunk size + padded slot map length
//!               data slot 1: chunk size bytes (sparse where never written)
//! ```
//!
//! Block b's data is at `D + b * 4096` when its slot map bit is 0, at
//! `S + b * 4096` when it is 1. A big write (at least 16 whole blocks) over
//! blocks that hold data, that no record in the journal touches, writes
//! them into their other slot and journals only their new and old entries
//! (a "moved write" record), so the data does not pass through the journal
//! twice and the old data stays intact until the record is durable: after a
//! crash a block whose new data did not reach the disk keeps its old slot
//! and entry. The slot map and the CRC entries change when the record is
//! applied, and the old slots are punched (freed) once it is trimmed. A new
//! file is sized to its full length (sparse), slot 1 included.
//!
//! A CRC table entry of format 2 encodes its block like this:
//!
//! * `1`: the block was never written or was zeroed; it reads as zeros
//!   whatever the data region holds (so zeroing whole blocks needs no data
//!   write and may punch a hole). A new file's table is all `1`s.
//! * `0`: the entry was lost (a sector of the table zeroed by the disk or
//!   behind the store's back): the block reads as `Corrupt`, never as zeros.
//! * otherwise: `crc64(block)`, except that a block whose CRC-64 is `0` or
//!   `1` is stored as `2` (see [`encode_block_crc`]). A block matches its
//!   entry when the encoding of its computed CRC equals the entry, so the
//!   only cost of the remapping is that `0`, `1` and `2` collide, two values
//!   in 2^64.
//!
//! In memory and on the wire (`ChunkStore::crc_entries`, `block_crcs`) the
//! entries are the same except that `0` means "reads as zeros" and `1`
//! ([`LOST_ENTRY`]) a lost entry: the file holds those two values swapped,
//! so that a zeroed sector can never pass for blocks of zeros.
//!
//! Format 2 (older builds) has no slot map and no slot 1 (the file ends
//! with slot 0): every block's data is in slot 0, and big writes over
//! written blocks go through the journal. Format 1 differs from format 2
//! only in its CRC table: `0` means reads as zeros, `1` a block whose
//! CRC-64 is `0` (read as `2`), and a lost sector cannot be told from
//! zeros. Such files are read and written in their own format; new files
//! (created or copied in) are format 3.
//!
//! [`FileChunkStore`] writes go to its write journal first (`journal.rs`,
//! format in `docs/formats.md`) and reach the chunk file only once durable
//! there, so after a crash and the journal's replay data and entries agree.
//! A block whose data and entry disagree all the same (bit rot, damage
//! behind the store's back) reads as
//! [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt): never served, the
//! client reads another replica and the MDS repairs this one. Incoming
//! replicas (copies) write data then entries straight into their file.
//!
//! # Other files of a chunk store
//!
//! * `<dir>/chunks/<id>.chunk.tmp.<n>`: a chunk being created or copied in
//!   (re-replication), in the chunk format above with map version 0, or a
//!   partial copy kept after a failed copy for the next one to resume
//!   (see `copy.rs`); renamed to `<id>.chunk` once complete and synced,
//!   removed at open (partial copies do not outlive the process).
//! * `<dir>/chunks/<id>.chunk.bad`: a replica found corrupt (scrubbing, a
//!   read, or the check after an unclean stop) and taken out of service:
//!   never listed nor served, every access is `Corrupt`, until deleted.
//! * `<dir>/dirty.log`: a header line (`pstorage-dirty-log v2`), then one
//!   chunk id per line (16 lowercase hex digits and `\n`): chunks that may
//!   hold writes never flushed (see `docs/formats.md`). An id is appended
//!   and synced before the first write to a chunk not listed; the file is
//!   rewritten (temp file + rename) with only the chunks written since their
//!   last flush from time to time and at a clean shutdown, when it ends up
//!   empty. At open, the ids it holds are the chunks to verify block by
//!   block before serving ([`ChunkStore::unverified`]). Lines that do not
//!   parse (torn by a crash) are ignored: their write never started.
//!
//! * `<dir>/store.id`, `<dir>/journal.location` and the journal
//!   `journal.<store id>` (in `<dir>` or the `-j` directory): see
//!   `docs/formats.md`.
//!
//! Readers of this format: a daemon reads every format version up to
//! [`FORMAT_VERSION`] and refuses newer ones with a message asking for an
//! upgrade.

mod copy;
mod dirty;
mod disk;
mod error;
mod file;
mod journal;
mod keeper;
mod mem;
pub mod memory;
mod priority;
mod repair;
mod scrub;
mod server;
pub mod session;
pub mod uring;

pub use copy::{
    COPY_READS_IN_FLIGHT, COPY_READ_MAX, DEFAULT_COPY_PROGRESS_TIMEOUT, MAX_PARTIAL_COPIES,
};
pub use disk::{CrashDisk, Disk, DiskFile, OpenMode, PowerLoss, RealDisk};
pub use error::ChunkStoreError;
pub use file::FileChunkStore;
pub use journal::{JournalStats, DEFAULT_JOURNAL_SIZE, JOURNAL_FORMAT_VERSION, MIN_JOURNAL_SIZE};
pub use keeper::{StoreOptions, TRIM_PERIOD};
pub use mem::{BlockFate, CrashReport, MemChunkStore};
pub use repair::{RepairOutcome, REPAIR_RETRY_AFTER, REPAIR_WAIT_RETRY};
pub use scrub::{
    BadReplicaSink, LogSink, ScrubParams, ScrubStats, DEFAULT_SCRUB_PERIOD, DEFAULT_SCRUB_RATE,
    VERIFY_PIECE,
};
pub use server::{ChunkServer, CsIoStats, DataRequest, RecoveryReport};

use crate::error::{Error, Result};
use crate::types::{ChunkId, ChunkReplicaInfo, MapVersion, SpaceInfo, BLOCK_SIZE};

/// The newest chunk file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 3;

/// A chunk server's local storage of chunk replicas.
///
/// Every method is synchronous and may block on disk I/O: async callers run
/// large or syncing operations on a blocking thread. Implementations are safe
/// to share between threads; operations on different chunks run in
/// parallel, and concurrent writes to one chunk never interleave.
///
/// Common errors: `NotFound` for a missing chunk, `InvalidArgument` for an
/// offset or length beyond the chunk size, `Stale` for a version check that
/// fails. On any of these nothing is changed. An I/O error in the middle of a
/// write can leave the blocks it touched reading as `Corrupt` (never as
/// wrong data).
pub trait ChunkStore: Send + Sync {
    /// Creates an empty replica (reads as zeros) at `version`, durably.
    /// Idempotent when the chunk already exists with the same version and
    /// size; `AlreadyExists` when it exists with another one.
    /// `InvalidArgument` for a chunk size that
    /// [`validate_chunk_size`](crate::types::validate_chunk_size) rejects.
    fn create(&self, chunk: ChunkId, version: MapVersion, chunk_size: u64) -> Result<()>;

    /// The replica's current map version.
    fn version(&self, chunk: ChunkId) -> Result<MapVersion>;

    /// Moves the replica to `version`, durably before returning. Setting the
    /// current version again is a no-op; an older one is `Stale` (versions
    /// only grow).
    fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()>;

    /// The replica's chunk size in bytes.
    fn chunk_size(&self, chunk: ChunkId) -> Result<u64>;

    /// `Corrupt` when the replica as a whole is unusable (its file failed
    /// an apply or a sync, so its content on disk is unknown), as opposed
    /// to blocks of it failing their check; `NotFound` for a missing chunk.
    fn check_usable(&self, chunk: ChunkId) -> Result<()>;

    /// Writes `data` at `offset`. With `expected = Some(v)` the write is
    /// applied only if the replica is at version `v` (`Stale` otherwise); the
    /// check and the write are atomic with respect to [`set_version`].
    /// Not durable until [`flush`].
    ///
    /// [`set_version`]: ChunkStore::set_version
    /// [`flush`]: ChunkStore::flush
    fn write_checked(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        data: &[u8],
    ) -> Result<()>;

    /// [`write_checked`](ChunkStore::write_checked) of data that came with
    /// its sender's piece CRCs (`crcs`, one per piece of `[offset, offset +
    /// data.len())`, see [`crate::checksums`]; the caller checked them
    /// against `data`): a block the write covers whole gets its sender's
    /// CRC as its entry, so the entry is the one the bytes left the client
    /// with, not one computed again here. `InvalidArgument` for a list of
    /// the wrong length.
    fn write_checked_crcs(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        data: &[u8],
        crcs: &[u64],
    ) -> Result<()>;

    /// Makes `[offset, offset + len)` read as zeros, with the same version
    /// check as [`write_checked`](ChunkStore::write_checked).
    fn zero_checked(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        len: u64,
    ) -> Result<()>;

    /// Block repair: rewrites block `block` with `data` (4096 bytes, read
    /// from another replica; `None`: zeroes it, for a block the other
    /// replica never wrote) only if the block fails its check now (its
    /// data does not match its CRC entry, or the entry is lost). Returns
    /// whether it wrote: a block that passes (a write replaced it since it
    /// was found bad) is left alone, so a repair never undoes a newer write.
    /// Version check as in [`write_checked`](ChunkStore::write_checked);
    /// the check and the write are atomic with respect to writes. Not
    /// durable until [`flush`](ChunkStore::flush).
    fn repair_block(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        block: u64,
        data: Option<&[u8]>,
    ) -> Result<bool>;

    /// Fills `buf` from `offset`, verifying the CRC of every block touched
    /// (`Corrupt` naming the chunk, block and file on a mismatch). Unwritten
    /// ranges read as zeros. Version check as in
    /// [`write_checked`](ChunkStore::write_checked).
    fn read_checked(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()>;

    /// [`read_checked`](ChunkStore::read_checked), except that whole
    /// blocks the store would have to wait for the disk to read may be
    /// left out of `buf`, returned as a [`DeferredRead`] for the caller to
    /// read without the chunk's lock and without blocking its thread
    /// ([`DeferredRead::finish`]). When that fails (a block fails its
    /// check, the read fails) the caller reads with `read_checked`, which
    /// decides: a block rewritten while it was being read fails its check
    /// against the entry taken before, and that is not damage. A store
    /// that cannot defer reads as `read_checked` (the default).
    fn read_or_defer(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<DeferredRead>> {
        self.read_checked(chunk, expected, offset, buf)
            .map(|()| None)
    }

    /// Makes every write, zero and version change applied to the replica so
    /// far durable (`fdatasync` of data and checksums).
    fn flush(&self, chunk: ChunkId) -> Result<()>;

    /// Deletes the replica. Idempotent: deleting a missing chunk succeeds.
    fn delete(&self, chunk: ChunkId) -> Result<()>;

    /// Every replica held, sorted by chunk id. Replicas whose header is
    /// unreadable are left out (and logged): they are never served.
    fn list(&self) -> Result<Vec<ChunkReplicaInfo>>;

    /// Space of the disk holding the replicas.
    fn space(&self) -> Result<SpaceInfo>;

    /// Takes the replica out of service, durably: from now on every
    /// operation on it fails with `Corrupt`, [`list`](ChunkStore::list)
    /// leaves it out and [`list_bad`](ChunkStore::list_bad) names it, until
    /// [`delete`](ChunkStore::delete) removes it or a committed incoming
    /// replica replaces it. Idempotent; `NotFound` for a missing chunk.
    fn mark_bad(&self, chunk: ChunkId) -> Result<()>;

    /// The replicas taken out of service, sorted.
    fn list_bad(&self) -> Result<Vec<ChunkId>>;

    /// Whether replica `chunk` is out of service ([`mark_bad`](ChunkStore::mark_bad)).
    fn is_bad(&self, chunk: ChunkId) -> Result<bool>;

    /// Chunks that were written but not flushed when the store last stopped
    /// without [`close_clean`](ChunkStore::close_clean) (kill -9, power
    /// loss), and not [`verified`](ChunkStore::verified) since: they may
    /// hold torn blocks and must be verified block by block before they are
    /// served. Sorted. Empty for a store that keeps nothing across restarts.
    fn unverified(&self) -> Vec<ChunkId>;

    /// Records that every block of an [`unverified`](ChunkStore::unverified)
    /// chunk passed its check (flushing it). A missing or bad chunk just
    /// leaves the list.
    fn verified(&self, chunk: ChunkId) -> Result<()>;

    /// Flushes every chunk written since its last flush (except unverified
    /// ones), so that the next open finds nothing to verify. Call at a
    /// clean shutdown; the store stays usable.
    fn close_clean(&self) -> Result<()>;

    /// Starts an incoming replica of `chunk` (re-replication): a private,
    /// empty replica of `chunk_size` bytes that no other method sees until
    /// [`commit_incoming`](ChunkStore::commit_incoming). Several may exist
    /// for one chunk. Crash-safe: an incoming replica not yet committed is
    /// gone after a restart.
    fn begin_incoming(&self, chunk: ChunkId, chunk_size: u64) -> Result<IncomingId>;

    /// Writes `data` at `offset` of an incoming replica (not durable yet).
    /// `NotFound` for an unknown (committed or aborted) handle.
    fn write_incoming(&self, incoming: IncomingId, offset: u64, data: &[u8]) -> Result<()>;

    /// Makes the incoming replica durable at `version`, then atomically
    /// makes it the replica of its chunk, replacing any replica held
    /// (whatever its version): readers see the old replica or the complete
    /// new one, never a mix. Consumes the handle, also on failure (when
    /// nothing changes).
    fn commit_incoming(&self, incoming: IncomingId, version: MapVersion) -> Result<()>;

    /// Discards an incoming replica. Idempotent.
    fn abort_incoming(&self, incoming: IncomingId);

    /// Makes `[offset, offset + len)` of an incoming replica read as zeros
    /// (not durable yet). `NotFound` for an unknown handle.
    fn zero_incoming(&self, incoming: IncomingId, offset: u64, len: u64) -> Result<()>;

    /// The CRC-table entries of blocks `[first_block, first_block + count)`
    /// of the replica (see the format: `0` = reads as zeros), with the same
    /// version check as [`read_checked`](ChunkStore::read_checked).
    /// `InvalidArgument` for blocks beyond the chunk.
    fn crc_entries(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        first_block: u64,
        count: u64,
    ) -> Result<Vec<u64>>;

    /// [`crc_entries`](ChunkStore::crc_entries) of an incoming replica.
    /// `NotFound` for an unknown handle.
    fn incoming_crc_entries(
        &self,
        incoming: IncomingId,
        first_block: u64,
        count: u64,
    ) -> Result<Vec<u64>>;

    /// [`write_checked`](ChunkStore::write_checked) without a version check.
    fn write(&self, chunk: ChunkId, offset: u64, data: &[u8]) -> Result<()> {
        self.write_checked(chunk, None, offset, data)
    }

    /// [`zero_checked`](ChunkStore::zero_checked) without a version check.
    fn zero(&self, chunk: ChunkId, offset: u64, len: u64) -> Result<()> {
        self.zero_checked(chunk, None, offset, len)
    }

    /// The write journal's size and fill; `None` for a store without one.
    fn journal_stats(&self) -> Option<JournalStats> {
        None
    }

    /// [`read_checked`](ChunkStore::read_checked) without a version check.
    fn read(&self, chunk: ChunkId, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_checked(chunk, None, offset, buf)
    }
}

/// `Corrupt` for a replica taken out of service.
pub(crate) fn bad_replica(chunk: ChunkId) -> Error {
    Error::corrupt(format!(
        "chunk {chunk:#x}: this replica was found corrupt and is out of service until the MDS \
         deletes or replaces it (see the chunk server log): read another replica"
    ))
}

/// The handle of an incoming replica ([`ChunkStore::begin_incoming`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IncomingId(pub u64);

/// `NotFound` for an incoming replica handle the store does not know.
pub(crate) fn missing_incoming(incoming: IncomingId) -> Error {
    Error::not_found(format!(
        "incoming replica {} does not exist (already committed or aborted): start the copy again",
        incoming.0
    ))
}

/// The blocks of a read that [`ChunkStore::read_or_defer`] left for its
/// caller: whole blocks of one chunk file, each with the CRC entry it had
/// when the read was planned under the chunk's lock.
pub struct DeferredRead {
    /// Holds the file open until every read of it is done.
    keep: uring::Keep,
    fd: std::os::fd::RawFd,
    runs: Vec<DeferredRun>,
    /// The block of the read's first byte.
    first_block: u64,
    /// The CRC entries of every block the whole read touches (from
    /// `first_block`), as they were when it was planned: what the read's
    /// bytes are checked against, and what the piece CRCs the reader gets
    /// are made of.
    entries: Vec<u64>,
}

/// Whole blocks in a row of one chunk file.
struct DeferredRun {
    file_offset: u64,
    /// Where the run goes in the caller's buffer.
    buf_offset: usize,
    /// Its blocks.
    blocks: std::ops::Range<u64>,
}

impl DeferredRead {
    fn new(
        keep: uring::Keep,
        fd: std::os::fd::RawFd,
        runs: Vec<DeferredRun>,
        first_block: u64,
        entries: Vec<u64>,
    ) -> DeferredRead {
        DeferredRead {
            keep,
            fd,
            runs,
            first_block,
            entries,
        }
    }

    /// The CRC entries of every block of the read, as they were when it
    /// was planned.
    pub fn entries(&self) -> &[u64] {
        &self.entries
    }

    /// Reads the deferred blocks into `buf` (the buffer given to
    /// `read_or_defer`) through this thread's io_uring, all at once, and
    /// checks each against its entry. `false` when any read fails or any
    /// block fails its check (or io_uring is unavailable): the caller then
    /// reads with [`ChunkStore::read_checked`].
    pub async fn finish(&self, buf: &mut [u8]) -> bool {
        let reads = self.runs.iter().map(|run| {
            uring::read_at(
                self.fd,
                self.keep.clone(),
                run.file_offset,
                ((run.blocks.end - run.blocks.start) * BLOCK_SIZE) as usize,
            )
        });
        let results = futures::future::join_all(reads).await;
        for (run, result) in self.runs.iter().zip(results) {
            let Ok(bytes) = result else { return false };
            let Some(out) = buf.get_mut(run.buf_offset..run.buf_offset + bytes.len()) else {
                return false;
            };
            let entries = &self.entries[(run.blocks.start - self.first_block) as usize
                ..(run.blocks.end - self.first_block) as usize];
            for (block, &entry) in bytes.chunks_exact(BLOCK_SIZE as usize).zip(entries) {
                if encode_block_crc(crc64(block)) != entry {
                    return false;
                }
            }
            out.copy_from_slice(&bytes);
        }
        true
    }
}

/// The CRC-64/XZ of `bytes`.
pub fn crc64(bytes: &[u8]) -> u64 {
    let mut digest = crc64fast::Digest::new();
    digest.write(bytes);
    digest.sum64()
}

/// The CRC table entry of a written block whose CRC-64 is `crc`: never `0`
/// (reserved for "reads as zeros") nor `1` (reserved for an entry lost on
/// disk, [`LOST_ENTRY`]): CRCs `0` and `1` are stored as `2`.
pub fn encode_block_crc(crc: u64) -> u64 {
    if crc < 2 {
        2
    } else {
        crc
    }
}

/// A CRC table entry (in memory and on the wire) whose value on disk was
/// lost: a chunk file of format 2 holds `0` there (a zeroed sector of its
/// CRC table). No block matches it: the block reads as `Corrupt`.
pub const LOST_ENTRY: u64 = 1;

/// A block entry as an older build stored it (chunk file format 1, journal
/// records), in today's encoding: `1` meant CRC `0` (or `1`).
pub(crate) fn upgrade_entry(entry: u64) -> u64 {
    if entry == 1 {
        2
    } else {
        entry
    }
}

/// The CRC table entry for a written block holding `block`.
pub(crate) fn block_entry(block: &[u8]) -> u64 {
    debug_assert_eq!(block.len() as u64, BLOCK_SIZE);
    encode_block_crc(crc64(block))
}

/// `InvalidArgument` unless `crcs` has one CRC per piece of a write of
/// `len` bytes at `offset`.
pub(crate) fn check_piece_crcs_len(
    chunk: ChunkId,
    offset: u64,
    len: u64,
    crcs: &[u64],
) -> Result<()> {
    let pieces = crate::checksums::piece_count(offset, len);
    if crcs.len() != pieces {
        return Err(Error::invalid(format!(
            "chunk {chunk:#x}: a write of {len} bytes at offset {offset} has {pieces} pieces, \
             not {} CRCs",
            crcs.len()
        )));
    }
    Ok(())
}

/// `InvalidArgument` unless `[offset, offset + len)` lies within the chunk.
pub(crate) fn check_range(chunk: ChunkId, chunk_size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= chunk_size => Ok(()),
        _ => Err(Error::invalid(format!(
            "chunk {chunk:#x}: range at offset {offset} length {len} is beyond the chunk size \
             {chunk_size}: offsets within a chunk must stay below its size"
        ))),
    }
}

/// `InvalidArgument` unless blocks `[first, first + count)` lie within a
/// chunk of `chunk_size` bytes.
pub(crate) fn check_blocks(chunk: ChunkId, chunk_size: u64, first: u64, count: u64) -> Result<()> {
    let blocks = chunk_size / BLOCK_SIZE;
    match first.checked_add(count) {
        Some(end) if end <= blocks => Ok(()),
        _ => Err(Error::invalid(format!(
            "chunk {chunk:#x}: blocks {first}..{first}+{count} are beyond the {blocks} blocks of \
             the chunk: block numbers stay below chunk size / {BLOCK_SIZE}"
        ))),
    }
}

/// `InvalidArgument` unless `data` is one whole block (a block repair).
pub(crate) fn check_repair(chunk: ChunkId, block: u64, data: Option<&[u8]>) -> Result<()> {
    if let Some(data) = data.filter(|d| d.len() as u64 != BLOCK_SIZE) {
        return Err(Error::invalid(format!(
            "chunk {chunk:#x}: a repair of block {block} carries {} bytes; a block is \
             {BLOCK_SIZE}",
            data.len()
        )));
    }
    Ok(())
}

/// `Stale` unless the replica's `actual` version is the `expected` one.
pub(crate) fn check_version(
    chunk: ChunkId,
    expected: Option<MapVersion>,
    actual: MapVersion,
) -> Result<()> {
    match expected {
        Some(want) if want != actual => Err(Error::stale(format!(
            "chunk {chunk:#x}: the request carries map version {want} but this replica is at \
             version {actual}: refresh the chunk map from the MDS and retry"
        ))),
        _ => Ok(()),
    }
}

/// `NotFound` for a chunk this store does not hold.
pub(crate) fn missing_chunk(chunk: ChunkId) -> Error {
    Error::not_found(format!(
        "chunk {chunk:#x} has no replica on this chunk server: refresh the chunk map from the MDS"
    ))
}

/// The blocks `[first, last]` that `[offset, offset + len)` touches; `len > 0`.
pub(crate) fn block_span(offset: u64, len: u64) -> (u64, u64) {
    debug_assert!(len > 0);
    (offset / BLOCK_SIZE, (offset + len - 1) / BLOCK_SIZE)
}

#[cfg(test)]
mod copy_tests;
#[cfg(test)]
mod heal_tests;
#[cfg(test)]
mod tests;

/// The rule both stores enforce on `set_version`: a replica's map version
/// never goes back. `Stale` names both versions.
pub(crate) fn check_version_forward(
    chunk: ChunkId,
    current: MapVersion,
    new: MapVersion,
) -> Result<()> {
    if new < current {
        return Err(Error::stale(format!(
            "chunk {chunk:#x} is already at map version {current}, newer than {new}: map \
             versions never go back"
        )));
    }
    Ok(())
}
#[cfg(test)]
mod deferred_read_tests;
#[cfg(test)]
mod journal_store_tests;
#[cfg(test)]
mod power_loss_tests;

/// Bytes as hex lines of 32 (offset, then the bytes), all-zero lines left
/// out: the text of the golden-file tests.
#[cfg(test)]
pub(crate) fn hex_lines(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(32).enumerate() {
        if line.iter().all(|b| *b == 0) {
            continue;
        }
        out.push_str(&format!("{:04x}:", i * 32));
        for b in line {
            out.push_str(&format!(" {b:02x}"));
        }
        out.push('\n');
    }
    out
}
