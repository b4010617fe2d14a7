//! [`MemChunkStore`]: chunk replicas in memory, for tests and simulation.

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::types::{
    validate_chunk_size, ChunkId, ChunkReplicaInfo, MapVersion, SpaceInfo, BLOCK_SIZE,
};

use super::{
    bad_replica, block_entry, block_span, check_blocks, check_range, check_repair, check_version,
    crc64, encode_block_crc, missing_chunk, missing_incoming, ChunkStore, IncomingId,
};

const BS: usize = BLOCK_SIZE as usize;
/// Capacity a new store reports unless told otherwise: 1 TiB.
const DEFAULT_CAPACITY_BYTES: u64 = 1 << 40;

/// Chunk replicas in memory, with the same semantics as
/// [`FileChunkStore`](super::FileChunkStore): sparse blocks, a CRC per
/// block verified on every read, version rules, bounds checks.
///
/// Durability is modelled like a disk with a volatile cache: creating,
/// deleting, marking bad, committing an incoming replica and version changes
/// are durable at once (the file store syncs them), writes and zeroes only
/// after [`flush`](ChunkStore::flush) of their chunk. A simulated power
/// loss ([`MemChunkStore::crash`]) decides for every block changed since
/// its chunk's last flush whether the change survived, was lost, or was
/// torn (the CRC entry written without the data: the block reads as
/// `Corrupt`), drops incoming replicas, and lists the chunks touched as
/// [`unverified`](ChunkStore::unverified), as the file store's dirty log
/// does.
///
/// For fault injection it can also flip stored bytes
/// ([`MemChunkStore::corrupt`]) and run out of space
/// ([`MemChunkStore::set_capacity`]).
pub struct MemChunkStore {
    chunks: Mutex<HashMap<ChunkId, Arc<RwLock<MemChunk>>>>,
    capacity_bytes: AtomicU64,
    /// Blocks stored across all chunks (space accounting).
    used_blocks: AtomicU64,
    /// Incoming replicas (re-replication) by handle.
    incoming: Mutex<HashMap<u64, (ChunkId, SharedChunk)>>,
    next_incoming: AtomicU64,
    /// Replicas taken out of service ([`ChunkStore::mark_bad`]).
    bad: Mutex<HashMap<ChunkId, SharedChunk>>,
    /// Chunks written but not flushed at the last [`MemChunkStore::crash`],
    /// not verified since.
    unverified: Mutex<BTreeSet<ChunkId>>,
    /// Reads of written blocks left to damage after their check
    /// ([`MemChunkStore::misread`]).
    misreads: AtomicU64,
}

/// What a simulated power loss ([`MemChunkStore::crash`]) does to one
/// block changed since its chunk's last flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFate {
    /// The change reached the disk.
    Kept,
    /// The change never reached the disk: the block holds what it held at
    /// the last flush.
    Lost,
    /// The CRC entry reached the disk, the data did not: the block reads as
    /// `Corrupt` (or as its old value when the change was a zeroing).
    Torn,
}

/// What [`MemChunkStore::crash`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Chunks that had unflushed changes (now unverified).
    pub chunks: Vec<ChunkId>,
    /// Blocks whose change was kept, lost, torn.
    pub kept: u64,
    /// Unsynced writes lost.
    pub lost: u64,
    /// Unsynced writes that reached the store in part (torn).
    pub torn: u64,
}

type SharedChunk = Arc<RwLock<MemChunk>>;

struct MemChunk {
    version: MapVersion,
    chunk_size: u64,
    /// Written blocks by index; an absent block reads as zeros.
    blocks: BTreeMap<u64, MemBlock>,
    /// The blocks as of the last flush, while there were writes since.
    durable: Option<BTreeMap<u64, MemBlock>>,
    deleted: bool,
}

#[derive(Clone, PartialEq, Eq)]
struct MemBlock {
    bytes: Box<[u8]>,
    /// The CRC table entry, as the file store keeps it (never 0 here).
    entry: u64,
}

impl Default for MemChunkStore {
    fn default() -> Self {
        MemChunkStore::new()
    }
}

impl MemChunkStore {
    /// An empty store reporting 1 TiB of capacity.
    pub fn new() -> MemChunkStore {
        MemChunkStore {
            chunks: Mutex::new(HashMap::new()),
            capacity_bytes: AtomicU64::new(DEFAULT_CAPACITY_BYTES),
            used_blocks: AtomicU64::new(0),
            incoming: Mutex::new(HashMap::new()),
            next_incoming: AtomicU64::new(0),
            bad: Mutex::new(HashMap::new()),
            unverified: Mutex::new(BTreeSet::new()),
            misreads: AtomicU64::new(0),
        }
    }

    /// Makes the next `blocks` written blocks that reads return come back
    /// with their first byte flipped *after* they passed their CRC check: a fault
    /// between the chunk server's check and the wire (a bad buffer, a bug)
    /// that only the reader's end-to-end check can catch.
    pub fn misread(&self, blocks: u64) {
        self.misreads.store(blocks, Ordering::SeqCst);
    }

    /// How many damaged reads [`MemChunkStore::misread`] has left to do.
    pub fn misreads_left(&self) -> u64 {
        self.misreads.load(Ordering::SeqCst)
    }

    /// A simulated power loss: every block changed since its chunk's last
    /// flush gets the fate `fate(chunk, block)` decides (called in chunk,
    /// then block order, so a seeded caller decides the same way every
    /// time); incoming replicas are gone; chunks that had such changes
    /// become [`unverified`](ChunkStore::unverified). Durable changes
    /// (create, delete, versions, committed copies) are kept. The store
    /// stays usable, as the disk a restarted chunk server opens.
    pub fn crash(&self, fate: &mut dyn FnMut(ChunkId, u64) -> BlockFate) -> CrashReport {
        let incoming: Vec<SharedChunk> = std::mem::take(&mut *self.incoming.lock())
            .into_values()
            .map(|(_, entry)| entry)
            .collect();
        for entry in incoming {
            self.release(&entry);
        }
        let chunks = self.replicas();
        let mut report = CrashReport::default();
        for (chunk, entry) in chunks {
            let mut c = entry.write();
            let Some(durable) = c.durable.take() else {
                continue;
            };
            let touched: BTreeSet<u64> = c.blocks.keys().chain(durable.keys()).copied().collect();
            for block in touched {
                let new = c.blocks.get(&block).cloned();
                let old = durable.get(&block).cloned();
                if new == old {
                    continue;
                }
                let after = match fate(chunk, block) {
                    BlockFate::Kept => {
                        report.kept += 1;
                        new
                    }
                    BlockFate::Lost => {
                        report.lost += 1;
                        old
                    }
                    BlockFate::Torn => {
                        report.torn += 1;
                        match new {
                            // The new entry over the old bytes.
                            Some(new) => Some(MemBlock {
                                bytes: old
                                    .map(|o| o.bytes)
                                    .unwrap_or_else(|| vec![0u8; BS].into_boxed_slice()),
                                entry: new.entry,
                            }),
                            // A zeroing only clears the entry.
                            None => None,
                        }
                    }
                };
                match after {
                    Some(b) => {
                        c.blocks.insert(block, b);
                    }
                    None => {
                        c.blocks.remove(&block);
                    }
                }
            }
            report.chunks.push(chunk);
        }
        self.unverified.lock().extend(report.chunks.iter().copied());
        self.recount();
        report
    }

    /// Recomputes the space used from the blocks held.
    fn recount(&self) {
        let mut used = 0u64;
        let tables = [
            self.chunks.lock().values().cloned().collect::<Vec<_>>(),
            self.bad_table().values().cloned().collect::<Vec<_>>(),
        ];
        for entry in tables.iter().flatten() {
            used += entry.read().blocks.len() as u64;
        }
        self.used_blocks.store(used, Ordering::SeqCst);
    }

    /// The blocks of replicas in service whose bytes fail their CRC entry
    /// (torn by [`crash`](MemChunkStore::crash), flipped by
    /// [`corrupt`](MemChunkStore::corrupt), not rewritten since), in
    /// chunk and block order: what a fault injector asks before damaging
    /// another copy of a block.
    pub fn damaged_blocks(&self) -> BTreeSet<(ChunkId, u64)> {
        let chunks = self.replicas();
        let mut damaged = BTreeSet::new();
        for (chunk, entry) in chunks {
            let c = entry.read();
            for (&block, stored) in &c.blocks {
                if block_entry(&stored.bytes) != stored.entry {
                    damaged.insert((chunk, block));
                }
            }
        }
        damaged
    }

    /// Whether `chunk` has writes not flushed yet (tests).
    pub fn has_unflushed(&self, chunk: ChunkId) -> bool {
        self.get(chunk)
            .map(|e| e.read().durable.is_some())
            .unwrap_or(false)
    }

    /// Sets the capacity: writes that would store more fail with `NoSpace`
    /// (changing nothing), and [`space`](ChunkStore::space) reports it.
    pub fn set_capacity(&self, bytes: u64) {
        self.capacity_bytes.store(bytes, Ordering::SeqCst);
    }

    /// Flips every bit of the stored byte at `offset` of `chunk` without
    /// updating its CRC, as a bad disk would. `InvalidArgument` if the block
    /// holding `offset` was never written (it has no bytes to flip).
    pub fn corrupt(&self, chunk: ChunkId, offset: u64) -> Result<()> {
        let entry = self.get(chunk)?;
        let mut c = entry.write();
        check_range(chunk, c.chunk_size, offset, 1)?;
        let block = offset / BLOCK_SIZE;
        let Some(stored) = c.blocks.get_mut(&block) else {
            return Err(Error::invalid(format!(
                "chunk {chunk:#x} block {block} was never written: nothing to corrupt"
            )));
        };
        stored.bytes[(offset % BLOCK_SIZE) as usize] ^= 0xff;
        Ok(())
    }

    /// Every replica in service, in chunk order (a copy of the table, so
    /// that no caller holds its lock while it works on one).
    fn replicas(&self) -> Vec<(ChunkId, SharedChunk)> {
        let mut chunks: Vec<(ChunkId, SharedChunk)> = self
            .chunks
            .lock()
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        chunks.sort_by_key(|(id, _)| *id);
        chunks
    }

    fn get(&self, chunk: ChunkId) -> Result<Arc<RwLock<MemChunk>>> {
        let found = self.chunks.lock().get(&chunk).cloned();
        found.ok_or_else(|| {
            if self.bad_table().contains_key(&chunk) {
                bad_replica(chunk)
            } else {
                missing_chunk(chunk)
            }
        })
    }

    fn bad_table(&self) -> parking_lot::MutexGuard<'_, HashMap<ChunkId, SharedChunk>> {
        self.bad.lock()
    }

    /// Releases the blocks of a replica that left the store.
    fn release(&self, entry: &SharedChunk) {
        let mut c = entry.write();
        c.deleted = true;
        self.used_blocks
            .fetch_sub(c.blocks.len() as u64, Ordering::SeqCst);
        c.blocks.clear();
    }

    fn incoming_entry(&self, incoming: IncomingId) -> Result<(ChunkId, SharedChunk)> {
        self.incoming
            .lock()
            .get(&incoming.0)
            .cloned()
            .ok_or_else(|| missing_incoming(incoming))
    }

    /// Writes (`Some`) or zeroes a range of an incoming replica.
    fn apply_incoming(
        &self,
        incoming: IncomingId,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
    ) -> Result<()> {
        let (chunk, entry) = self.incoming_entry(incoming)?;
        let mut c = entry.write();
        if c.deleted {
            return Err(missing_incoming(incoming));
        }
        check_range(chunk, c.chunk_size, offset, len)?;
        self.apply_locked(chunk, &mut c, offset, len, data, None)
    }

    /// Writes (`Some`) or zeroes a range of a replica; with `only_if_bad`
    /// only if that block fails its check (returns whether it wrote).
    fn apply(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        len: u64,
        data: Option<(&[u8], Option<&[u64]>)>,
        only_if_bad: Option<u64>,
    ) -> Result<bool> {
        let entry = self.get(chunk)?;
        let mut c = entry.write();
        if c.deleted {
            return Err(missing_chunk(chunk));
        }
        check_range(chunk, c.chunk_size, offset, len)?;
        check_version(chunk, expected, c.version)?;
        if let Some(block) = only_if_bad {
            match c.blocks.get(&block) {
                Some(stored) if verify(chunk, block, stored).is_err() => {}
                _ => return Ok(false),
            }
        }
        if c.durable.is_none() {
            c.durable = Some(c.blocks.clone());
        }
        let (data, crcs) = match data {
            Some((data, crcs)) => (Some(data), crcs),
            None => (None, None),
        };
        self.apply_locked(chunk, &mut c, offset, len, data, crcs)?;
        Ok(true)
    }

    /// Writes (`Some`) or zeroes `[offset, offset + len)` of `c`, whose range
    /// and version are checked.
    fn apply_locked(
        &self,
        chunk: ChunkId,
        c: &mut MemChunk,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        crcs: Option<&[u64]>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let (first, last) = block_span(offset, len);

        // Build every new block first (verifying the old ones a partial
        // update keeps), so a failure changes nothing.
        let mut updates: Vec<(u64, Option<MemBlock>)> =
            Vec::with_capacity((last - first + 1) as usize);
        for block in first..=last {
            let block_start = block * BLOCK_SIZE;
            let lo = offset.max(block_start);
            let hi = end.min(block_start + BLOCK_SIZE);
            let whole = lo == block_start && hi == block_start + BLOCK_SIZE;
            let old = c.blocks.get(&block);
            let new = match (data, whole) {
                (None, true) => None,
                (None, false) if old.is_none() => continue,
                _ => {
                    let mut bytes = vec![0u8; BS].into_boxed_slice();
                    if !whole {
                        if let Some(old) = old {
                            verify(chunk, block, old)?;
                            bytes.copy_from_slice(&old.bytes);
                        }
                    }
                    let dst = &mut bytes[(lo - block_start) as usize..(hi - block_start) as usize];
                    match data {
                        Some(d) => {
                            dst.copy_from_slice(&d[(lo - offset) as usize..(hi - offset) as usize])
                        }
                        None => dst.fill(0),
                    }
                    // The sender's CRC of a whole block is its entry.
                    let entry = match crcs {
                        Some(crcs) if whole => {
                            super::encode_block_crc(crcs[(block - first) as usize])
                        }
                        _ => block_entry(&bytes),
                    };
                    Some(MemBlock { bytes, entry })
                }
            };
            updates.push((block, new));
        }
        let added = updates
            .iter()
            .filter(|(b, new)| new.is_some() && !c.blocks.contains_key(b))
            .count() as u64;
        let removed = updates
            .iter()
            .filter(|(b, new)| new.is_none() && c.blocks.contains_key(b))
            .count() as u64;
        let used = self.used_blocks.load(Ordering::SeqCst);
        let capacity = self.capacity_bytes.load(Ordering::SeqCst);
        if added > removed && (used + added - removed) * BLOCK_SIZE > capacity {
            return Err(Error::new(
                crate::ErrorKind::NoSpace,
                format!(
                    "chunk {chunk:#x}: no space left in the in-memory store ({capacity} bytes): \
                     free space or raise the capacity"
                ),
            ));
        }
        for (block, new) in updates {
            match new {
                Some(b) => {
                    c.blocks.insert(block, b);
                }
                None => {
                    c.blocks.remove(&block);
                }
            }
        }
        self.used_blocks.fetch_add(added, Ordering::SeqCst);
        self.used_blocks.fetch_sub(removed, Ordering::SeqCst);
        Ok(())
    }
}

impl MemChunk {
    /// CRC-table entries of `count` blocks from `first` (0 = unwritten).
    fn entries(&self, first: u64, count: u64) -> Vec<u64> {
        (first..first + count)
            .map(|b| self.blocks.get(&b).map_or(0, |stored| stored.entry))
            .collect()
    }
}

fn verify(chunk: ChunkId, block: u64, stored: &MemBlock) -> Result<()> {
    let computed = crc64(&stored.bytes);
    if encode_block_crc(computed) != stored.entry {
        return Err(Error::corrupt(format!(
            "chunk {chunk:#x} block {block} (bytes {}..{} of the chunk) in memory failed its \
             CRC-64 check (stored {:#018x}, computed {computed:#018x}): this replica is corrupt; \
             read another replica and report this one so the MDS repairs it",
            block * BLOCK_SIZE,
            (block + 1) * BLOCK_SIZE,
            stored.entry
        )));
    }
    Ok(())
}

impl ChunkStore for MemChunkStore {
    fn create(&self, chunk: ChunkId, version: MapVersion, chunk_size: u64) -> Result<()> {
        validate_chunk_size(chunk_size).map_err(|e| e.context(format_args!("chunk {chunk:#x}")))?;
        let mut chunks = self.chunks.lock();
        if let Some(existing) = chunks.get(&chunk) {
            let c = existing.read();
            if c.version == version && c.chunk_size == chunk_size {
                return Ok(());
            }
            return Err(Error::new(
                crate::ErrorKind::AlreadyExists,
                format!(
                    "chunk {chunk:#x} already exists at map version {} with chunk size {}; it \
                     cannot be created again at version {version} with size {chunk_size}",
                    c.version, c.chunk_size
                ),
            ));
        }
        chunks.insert(
            chunk,
            Arc::new(RwLock::new(MemChunk {
                version,
                chunk_size,
                blocks: BTreeMap::new(),
                durable: None,
                deleted: false,
            })),
        );
        Ok(())
    }

    fn version(&self, chunk: ChunkId) -> Result<MapVersion> {
        let entry = self.get(chunk)?;
        let c = entry.read();
        Ok(c.version)
    }

    fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        let entry = self.get(chunk)?;
        let mut c = entry.write();
        if c.deleted {
            return Err(missing_chunk(chunk));
        }
        super::check_version_forward(chunk, c.version, version)?;
        c.version = version;
        Ok(())
    }

    fn check_usable(&self, chunk: ChunkId) -> Result<()> {
        self.get(chunk).map(|_| ())
    }

    fn chunk_size(&self, chunk: ChunkId) -> Result<u64> {
        let entry = self.get(chunk)?;
        let c = entry.read();
        Ok(c.chunk_size)
    }

    fn write_checked(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        self.apply(
            chunk,
            expected,
            offset,
            data.len() as u64,
            Some((data, None)),
            None,
        )
        .map(|_| ())
    }

    fn write_checked_crcs(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        data: &[u8],
        crcs: &[u64],
    ) -> Result<()> {
        super::check_piece_crcs_len(chunk, offset, data.len() as u64, crcs)?;
        self.apply(
            chunk,
            expected,
            offset,
            data.len() as u64,
            Some((data, Some(crcs))),
            None,
        )
        .map(|_| ())
    }

    fn repair_block(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        block: u64,
        data: Option<&[u8]>,
    ) -> Result<bool> {
        check_repair(chunk, block, data)?;
        self.apply(
            chunk,
            Some(version),
            block * BLOCK_SIZE,
            BLOCK_SIZE,
            data.map(|d| (d, None)),
            Some(block),
        )
    }

    fn zero_checked(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.apply(chunk, expected, offset, len, None, None)
            .map(|_| ())
    }

    fn read_checked(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let entry = self.get(chunk)?;
        let c = entry.read();
        if c.deleted {
            return Err(missing_chunk(chunk));
        }
        check_range(chunk, c.chunk_size, offset, buf.len() as u64)?;
        check_version(chunk, expected, c.version)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let (first, last) = block_span(offset, buf.len() as u64);
        for block in first..=last {
            let block_start = block * BLOCK_SIZE;
            let lo = offset.max(block_start);
            let hi = end.min(block_start + BLOCK_SIZE);
            let out = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match c.blocks.get(&block) {
                None => out.fill(0),
                Some(stored) => {
                    verify(chunk, block, stored)?;
                    out.copy_from_slice(
                        &stored.bytes[(lo - block_start) as usize..(hi - block_start) as usize],
                    );
                    let misread =
                        self.misreads
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                    if misread.is_ok() {
                        out[0] ^= 0x01;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&self, chunk: ChunkId) -> Result<()> {
        let entry = self.get(chunk)?;
        entry.write().durable = None;
        Ok(())
    }

    fn delete(&self, chunk: ChunkId) -> Result<()> {
        let removed = self.chunks.lock().remove(&chunk);
        if let Some(entry) = removed {
            self.release(&entry);
        }
        let bad = self.bad_table().remove(&chunk);
        if let Some(entry) = bad {
            self.release(&entry);
        }
        Ok(())
    }

    fn mark_bad(&self, chunk: ChunkId) -> Result<()> {
        let mut chunks = self.chunks.lock();
        match chunks.remove(&chunk) {
            Some(entry) => {
                // Its blocks still take space until it is deleted.
                self.bad_table().insert(chunk, entry);
                Ok(())
            }
            None if self.bad_table().contains_key(&chunk) => Ok(()),
            None => Err(missing_chunk(chunk)),
        }
    }

    fn list_bad(&self) -> Result<Vec<ChunkId>> {
        let mut out: Vec<ChunkId> = self.bad_table().keys().copied().collect();
        out.sort_unstable();
        Ok(out)
    }

    fn is_bad(&self, chunk: ChunkId) -> Result<bool> {
        Ok(self.bad_table().contains_key(&chunk))
    }

    fn unverified(&self) -> Vec<ChunkId> {
        self.unverified.lock().iter().copied().collect()
    }

    fn verified(&self, chunk: ChunkId) -> Result<()> {
        if let Ok(entry) = self.get(chunk) {
            entry.write().durable = None;
        }
        self.unverified.lock().remove(&chunk);
        Ok(())
    }

    fn close_clean(&self) -> Result<()> {
        let unverified = self.unverified();
        let chunks = self.replicas();
        for (chunk, entry) in chunks {
            if !unverified.contains(&chunk) {
                entry.write().durable = None;
            }
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<ChunkReplicaInfo>> {
        let chunks: Vec<(ChunkId, Arc<RwLock<MemChunk>>)> = self
            .chunks
            .lock()
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        let mut out: Vec<ChunkReplicaInfo> = chunks
            .into_iter()
            .map(|(chunk, c)| ChunkReplicaInfo {
                chunk,
                version: c.read().version,
            })
            .collect();
        out.sort_by_key(|c| c.chunk);
        Ok(out)
    }

    fn begin_incoming(&self, chunk: ChunkId, chunk_size: u64) -> Result<IncomingId> {
        validate_chunk_size(chunk_size).map_err(|e| e.context(format_args!("chunk {chunk:#x}")))?;
        let id = self.next_incoming.fetch_add(1, Ordering::Relaxed);
        let replica = MemChunk {
            version: MapVersion(0),
            chunk_size,
            blocks: BTreeMap::new(),
            durable: None,
            deleted: false,
        };
        self.incoming
            .lock()
            .insert(id, (chunk, Arc::new(RwLock::new(replica))));
        Ok(IncomingId(id))
    }

    fn write_incoming(&self, incoming: IncomingId, offset: u64, data: &[u8]) -> Result<()> {
        self.apply_incoming(incoming, offset, data.len() as u64, Some(data))
    }

    fn zero_incoming(&self, incoming: IncomingId, offset: u64, len: u64) -> Result<()> {
        self.apply_incoming(incoming, offset, len, None)
    }

    fn crc_entries(
        &self,
        chunk: ChunkId,
        expected: Option<MapVersion>,
        first_block: u64,
        count: u64,
    ) -> Result<Vec<u64>> {
        let entry = self.get(chunk)?;
        let c = entry.read();
        if c.deleted {
            return Err(missing_chunk(chunk));
        }
        check_blocks(chunk, c.chunk_size, first_block, count)?;
        check_version(chunk, expected, c.version)?;
        Ok(c.entries(first_block, count))
    }

    fn incoming_crc_entries(
        &self,
        incoming: IncomingId,
        first_block: u64,
        count: u64,
    ) -> Result<Vec<u64>> {
        let (chunk, entry) = self.incoming_entry(incoming)?;
        let c = entry.read();
        if c.deleted {
            return Err(missing_incoming(incoming));
        }
        check_blocks(chunk, c.chunk_size, first_block, count)?;
        Ok(c.entries(first_block, count))
    }

    fn commit_incoming(&self, incoming: IncomingId, version: MapVersion) -> Result<()> {
        let (chunk, entry) = self
            .incoming
            .lock()
            .remove(&incoming.0)
            .ok_or_else(|| missing_incoming(incoming))?;
        // Waits for a write in progress to the incoming replica.
        entry.write().version = version;
        let replaced = self.chunks.lock().insert(chunk, entry);
        if let Some(old) = replaced {
            self.release(&old);
        }
        let bad = self.bad_table().remove(&chunk);
        if let Some(old) = bad {
            self.release(&old);
        }
        Ok(())
    }

    fn abort_incoming(&self, incoming: IncomingId) {
        let removed = self.incoming.lock().remove(&incoming.0);
        if let Some((_, entry)) = removed {
            self.release(&entry);
        }
    }

    fn space(&self) -> Result<SpaceInfo> {
        let total_bytes = self.capacity_bytes.load(Ordering::SeqCst);
        let used = self.used_blocks.load(Ordering::SeqCst) * BLOCK_SIZE;
        Ok(SpaceInfo {
            total_bytes,
            free_bytes: total_bytes.saturating_sub(used),
        })
    }
}

#[cfg(test)]
mod crash_tests {
    use super::*;

    const CHUNK: ChunkId = ChunkId(7);
    const SIZE: u64 = 1 << 20;

    fn block(fill: u8) -> Vec<u8> {
        vec![fill; BS]
    }

    fn read_block(store: &MemChunkStore, index: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; BS];
        store.read(CHUNK, index * BLOCK_SIZE, &mut buf)?;
        Ok(buf)
    }

    /// A store with blocks 0..3 flushed as 1, then overwritten with 2.
    fn written() -> MemChunkStore {
        let store = MemChunkStore::new();
        store.create(CHUNK, MapVersion(1), SIZE).unwrap();
        for b in 0..3 {
            store.write(CHUNK, b * BLOCK_SIZE, &block(1)).unwrap();
        }
        store.flush(CHUNK).unwrap();
        for b in 0..3 {
            store.write(CHUNK, b * BLOCK_SIZE, &block(2)).unwrap();
        }
        store
    }

    #[test]
    fn a_crash_keeps_loses_or_tears_each_unflushed_block() {
        let store = written();
        let fates = [BlockFate::Kept, BlockFate::Lost, BlockFate::Torn];
        let report = store.crash(&mut |_, b| fates[b as usize]);
        assert_eq!((report.kept, report.lost, report.torn), (1, 1, 1));
        assert_eq!(read_block(&store, 0).unwrap(), block(2));
        assert_eq!(read_block(&store, 1).unwrap(), block(1));
        assert_eq!(
            read_block(&store, 2).unwrap_err().kind(),
            crate::ErrorKind::Corrupt
        );
        assert_eq!(store.unverified(), vec![CHUNK]);
        store.verified(CHUNK).unwrap();
        assert!(store.unverified().is_empty());
    }

    #[test]
    fn damaged_blocks_lists_torn_and_flipped_blocks_until_rewritten() {
        let store = written();
        assert!(store.damaged_blocks().is_empty());
        let fates = [BlockFate::Kept, BlockFate::Lost, BlockFate::Torn];
        store.crash(&mut |_, b| fates[b as usize]);
        assert_eq!(store.damaged_blocks(), BTreeSet::from([(CHUNK, 2)]));
        store.corrupt(CHUNK, 10).unwrap();
        assert_eq!(
            store.damaged_blocks(),
            BTreeSet::from([(CHUNK, 0), (CHUNK, 2)])
        );
        // A write replaces the damage.
        store.write(CHUNK, 2 * BLOCK_SIZE, &block(3)).unwrap();
        assert_eq!(store.damaged_blocks(), BTreeSet::from([(CHUNK, 0)]));
    }

    #[test]
    fn flushed_writes_and_versions_survive_a_crash() {
        let store = written();
        store.set_version(CHUNK, MapVersion(2)).unwrap();
        store.flush(CHUNK).unwrap();
        let report = store.crash(&mut |_, _| BlockFate::Lost);
        assert!(report.chunks.is_empty());
        assert_eq!(store.version(CHUNK).unwrap(), MapVersion(2));
        for b in 0..3 {
            assert_eq!(read_block(&store, b).unwrap(), block(2));
        }
        assert!(store.unverified().is_empty());
    }

    #[test]
    fn a_crash_drops_incoming_replicas() {
        let store = MemChunkStore::new();
        let incoming = store.begin_incoming(CHUNK, SIZE).unwrap();
        store.write_incoming(incoming, 0, &block(3)).unwrap();
        store.crash(&mut |_, _| BlockFate::Kept);
        assert!(store.write_incoming(incoming, 0, &block(3)).is_err());
        assert_eq!(store.space().unwrap().free_bytes, DEFAULT_CAPACITY_BYTES);
    }
}
