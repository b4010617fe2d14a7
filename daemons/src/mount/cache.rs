//! The optional local read cache of `pstorage-mount` (`-C CACHE_FILE -R SIZE`).
//!
//! Hot 64 KiB blocks of cluster files are kept in one local file (meant to be
//! on an SSD). The design keeps the cache from ever serving wrong data:
//!
//! - A block is admitted only after it was read [`ReadCache::admit_after`]
//!   times (2 by default) by non-sequential reads: a streaming read (a copy, a
//!   backup) would otherwise flush the hot set with blocks read once.
//! - Sequential reads (one that starts where the previous read of the same
//!   inode ended) bypass the cache entirely: the cluster streams them well and
//!   the kernel's readahead already covers them.
//! - Every cached block carries the CRC-64 of its contents, kept in memory and
//!   verified each time the block is served; a mismatch (a bad SSD, a torn
//!   write, a slot reused concurrently) drops the block and the read goes to
//!   the cluster.
//! - Writes, truncates and hole punching through the mount invalidate the
//!   blocks they touch, and every inode has a generation number bumped by each
//!   invalidation: a block read from the cluster before an invalidation is
//!   never admitted after it (see [`ReadCache::offer`]).
//! - The mount drops all blocks of a file whenever it acquires a fresh lease
//!   on it (see `ops.rs`): without a lease held, another client may have
//!   changed the file.
//!
//! The index lives in memory only: the cache file's contents from an earlier
//! run are never trusted (the file is truncated at start).
//!
//! Thread-safety: every method takes `&self`; the index is behind one mutex
//! that is never held during file I/O.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use pstorage_core::error::{Error, Result};

/// Size of one cached block, in bytes.
pub const CACHE_BLOCK_BYTES: u64 = 64 << 10;

/// How many admission counters are kept before they are all forgotten (a
/// bound on memory: counters of blocks that are not hot are not worth it).
const MAX_COUNTERS: usize = 1 << 20;

/// A block of a file: (inode, block index).
type BlockKey = (u64, u64);

/// One slot of the cache file.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The block this slot holds; `None` when free or being filled.
    owner: Option<BlockKey>,
    /// CRC-64 of the slot's 64 KiB.
    crc: u64,
    /// CLOCK reference bit: set when served, cleared when the hand passes.
    referenced: bool,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Block -> slot index.
    index: HashMap<BlockKey, usize>,
    slots: Vec<Slot>,
    /// Slots that are neither holding a block nor being filled.
    free: Vec<usize>,
    /// Slots being written by an admission (not evictable, not indexed).
    filling: usize,
    hand: usize,
    /// Reads seen per block, for admission.
    counters: HashMap<BlockKey, u32>,
    /// Invalidation generation per inode (absent = 0).
    generations: HashMap<u64, u64>,
    /// Where the last read of each inode ended, for sequential detection.
    last_end: HashMap<u64, u64>,
}

/// Counters of what the cache did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served entirely from the cache.
    pub hits: u64,
    /// Reads that went to the cluster although not sequential.
    pub misses: u64,
    /// Reads that bypassed the cache as sequential.
    pub sequential: u64,
    /// Blocks written into the cache.
    pub admitted: u64,
    /// Blocks whose checksum did not match when served (dropped).
    pub corrupt: u64,
    /// Blocks dropped by writes, truncates and fresh leases.
    pub invalidated: u64,
}

/// The local read cache. See the module documentation for its contract.
#[derive(Debug)]
pub struct ReadCache {
    file: File,
    admit_after: u32,
    state: Mutex<CacheState>,
    hits: AtomicU64,
    misses: AtomicU64,
    sequential: AtomicU64,
    admitted: AtomicU64,
    corrupt: AtomicU64,
    invalidated: AtomicU64,
}

impl ReadCache {
    /// Creates (or truncates) `path` to hold `size_bytes / 64 KiB` blocks,
    /// admitting a block after `admit_after` reads (at least 1).
    ///
    /// Errors: `InvalidArgument` if the size holds no block, `Io` if the file
    /// cannot be created or sized.
    pub fn create(path: &Path, size_bytes: u64, admit_after: u32) -> Result<ReadCache> {
        let slots = size_bytes / CACHE_BLOCK_BYTES;
        if slots == 0 {
            return Err(Error::invalid(format!(
                "read cache size {size_bytes} bytes is smaller than one {CACHE_BLOCK_BYTES}-byte block; give -R at least 64K"
            )));
        }
        // The cache holds file data: mode 0600, and a link planted at its
        // path is refused, not followed (truncating its target).
        let file = pstorage_core::private_files::private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| {
                Error::from(e).context(format!("cannot create read cache file {}", path.display()))
            })?;
        file.set_len(slots * CACHE_BLOCK_BYTES).map_err(|e| {
            Error::from(e).context(format!(
                "cannot size read cache file {} to {} bytes",
                path.display(),
                slots * CACHE_BLOCK_BYTES
            ))
        })?;
        let state = CacheState {
            slots: vec![
                Slot {
                    owner: None,
                    crc: 0,
                    referenced: false,
                };
                slots as usize
            ],
            free: (0..slots as usize).rev().collect(),
            ..CacheState::default()
        };
        Ok(ReadCache {
            file,
            admit_after: admit_after.max(1),
            state: Mutex::new(state),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            sequential: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
        })
    }

    /// How many reads of a block admit it.
    pub fn admit_after(&self) -> u32 {
        self.admit_after
    }

    /// Number of block slots.
    pub fn capacity_blocks(&self) -> usize {
        self.lock().slots.len()
    }

    /// Number of blocks cached now.
    pub fn cached_blocks(&self) -> usize {
        self.lock().index.len()
    }

    /// What the cache did so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            sequential: self.sequential.load(Ordering::Relaxed),
            admitted: self.admitted.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            invalidated: self.invalidated.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, CacheState> {
        // A panic while holding the lock leaves a consistent map (every
        // update is a few field writes); keep serving.
        self.state.lock()
    }

    /// Records a read of `[offset, offset+len)` of `ino` and says whether it
    /// is sequential (starts where the previous read of `ino` ended, and is
    /// not the first read at offset 0): such reads must bypass the cache.
    pub fn note_read(&self, ino: u64, offset: u64, len: u64) -> bool {
        let mut st = self.lock();
        let prev = st.last_end.insert(ino, offset + len);
        let sequential = offset > 0 && prev == Some(offset);
        if sequential {
            self.sequential.fetch_add(1, Ordering::Relaxed);
        }
        sequential
    }

    /// The current invalidation generation of `ino`; pass it to
    /// [`ReadCache::offer`] with data read from the cluster after this call.
    pub fn generation(&self, ino: u64) -> u64 {
        self.lock().generations.get(&ino).copied().unwrap_or(0)
    }

    /// Serves `[offset, offset+len)` of `ino` if every block it touches is
    /// cached and passes its checksum. `None` otherwise (corrupt blocks are
    /// dropped on the way). Counts a hit or a miss.
    pub fn get(&self, ino: u64, offset: u64, len: u64) -> Option<Vec<u8>> {
        if len == 0 {
            return None;
        }
        let first = offset / CACHE_BLOCK_BYTES;
        let last = (offset + len - 1) / CACHE_BLOCK_BYTES;
        let wanted: Vec<(u64, usize, u64)> = {
            let st = self.lock();
            let mut v = Vec::with_capacity((last - first + 1) as usize);
            for block in first..=last {
                match st.index.get(&(ino, block)) {
                    Some(&slot) => v.push((block, slot, st.slots[slot].crc)),
                    None => {
                        drop(st);
                        self.misses.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                }
            }
            v
        };
        let mut out = Vec::with_capacity(len as usize);
        let mut buf = vec![0u8; CACHE_BLOCK_BYTES as usize];
        for (block, slot, crc) in wanted {
            let ok = self
                .file
                .read_exact_at(&mut buf, slot as u64 * CACHE_BLOCK_BYTES)
                .is_ok()
                && crc64(&buf) == crc;
            if !ok {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                let mut st = self.lock();
                // Drop it only if the index still maps the block to what we
                // read: a concurrent refill is not ours to drop.
                if st.index.get(&(ino, block)) == Some(&slot) && st.slots[slot].crc == crc {
                    st.index.remove(&(ino, block));
                    st.slots[slot].owner = None;
                    st.free.push(slot);
                }
                return None;
            }
            let block_start = block * CACHE_BLOCK_BYTES;
            let from = offset.max(block_start) - block_start;
            let to = (offset + len).min(block_start + CACHE_BLOCK_BYTES) - block_start;
            out.extend_from_slice(&buf[from as usize..to as usize]);
        }
        {
            let mut st = self.lock();
            for block in first..=last {
                if let Some(&slot) = st.index.get(&(ino, block)) {
                    st.slots[slot].referenced = true;
                }
            }
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    /// Offers data just read from the cluster: `data` is the file's content
    /// at `offset` (short only at the end of the file), read after
    /// [`ReadCache::generation`] returned `generation`. Every whole block in
    /// it counts one read; a block read `admit_after` times is written to the
    /// cache, unless `ino` was invalidated since `generation`.
    pub fn offer(&self, ino: u64, offset: u64, data: &[u8], generation: u64) {
        let end = offset + data.len() as u64;
        let first = offset.div_ceil(CACHE_BLOCK_BYTES);
        let mut block = first;
        while (block + 1) * CACHE_BLOCK_BYTES <= end {
            let start = (block * CACHE_BLOCK_BYTES - offset) as usize;
            let bytes = &data[start..start + CACHE_BLOCK_BYTES as usize];
            self.offer_block(ino, block, bytes, generation);
            block += 1;
        }
    }

    fn offer_block(&self, ino: u64, block: u64, bytes: &[u8], generation: u64) {
        debug_assert_eq!(bytes.len() as u64, CACHE_BLOCK_BYTES);
        let key = (ino, block);
        let slot = {
            let mut st = self.lock();
            if st.generations.get(&ino).copied().unwrap_or(0) != generation
                || st.index.contains_key(&key)
            {
                return;
            }
            if st.counters.len() >= MAX_COUNTERS {
                st.counters.clear();
            }
            let count = st.counters.entry(key).or_insert(0);
            *count += 1;
            if *count < self.admit_after {
                return;
            }
            st.counters.remove(&key);
            match Self::take_slot(&mut st) {
                Some(s) => {
                    st.filling += 1;
                    s
                }
                None => return,
            }
        };
        let crc = crc64(bytes);
        let written = self
            .file
            .write_all_at(bytes, slot as u64 * CACHE_BLOCK_BYTES)
            .is_ok();
        let mut st = self.lock();
        st.filling -= 1;
        let still_valid = st.generations.get(&ino).copied().unwrap_or(0) == generation;
        if !written || !still_valid || st.index.contains_key(&key) {
            st.free.push(slot);
            return;
        }
        st.slots[slot] = Slot {
            owner: Some(key),
            crc,
            referenced: false,
        };
        st.index.insert(key, slot);
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }

    /// A free slot, or one evicted by the CLOCK hand. `None` when every slot
    /// is being filled.
    fn take_slot(st: &mut CacheState) -> Option<usize> {
        if let Some(s) = st.free.pop() {
            return Some(s);
        }
        let n = st.slots.len();
        // Two sweeps clear every reference bit, so a third finds a victim
        // unless all slots are being filled.
        for _ in 0..2 * n + 1 {
            let i = st.hand;
            st.hand = (st.hand + 1) % n;
            let slot = &mut st.slots[i];
            match slot.owner {
                Some(key) if !slot.referenced => {
                    slot.owner = None;
                    st.index.remove(&key);
                    return Some(i);
                }
                Some(_) => slot.referenced = false,
                None => {}
            }
        }
        None
    }

    /// Drops the cached blocks of `ino` that overlap `[offset, offset+len)`
    /// (a write or a punched hole) and bumps its generation.
    pub fn invalidate_range(&self, ino: u64, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / CACHE_BLOCK_BYTES;
        let last = (offset + len - 1) / CACHE_BLOCK_BYTES;
        self.invalidate_where(ino, |b| (first..=last).contains(&b));
    }

    /// Drops the cached blocks of `ino` at or beyond `offset` (a truncate:
    /// the boundary block changes too) and bumps its generation.
    pub fn invalidate_from(&self, ino: u64, offset: u64) {
        let first = offset / CACHE_BLOCK_BYTES;
        self.invalidate_where(ino, |b| b >= first);
    }

    /// Drops every cached block of `ino` and bumps its generation.
    pub fn invalidate_inode(&self, ino: u64) {
        self.invalidate_where(ino, |_| true);
    }

    fn invalidate_where(&self, ino: u64, hit: impl Fn(u64) -> bool) {
        let mut st = self.lock();
        *st.generations.entry(ino).or_insert(0) += 1;
        st.last_end.remove(&ino);
        let victims: Vec<(BlockKey, usize)> = st
            .index
            .iter()
            .filter(|((i, b), _)| *i == ino && hit(*b))
            .map(|(k, s)| (*k, *s))
            .collect();
        for (key, slot) in &victims {
            st.index.remove(key);
            st.slots[*slot].owner = None;
            st.free.push(*slot);
        }
        st.counters.retain(|(i, b), _| *i != ino || !hit(*b));
        self.invalidated
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
    }
}

fn crc64(bytes: &[u8]) -> u64 {
    let mut d = crc64fast::Digest::new();
    d.write(bytes);
    d.sum64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::PathBuf;

    const B: u64 = CACHE_BLOCK_BYTES;

    #[test]
    fn the_cache_file_is_private_and_a_link_at_its_path_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        ReadCache::create(&path, 4 * B, 1).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A link planted at the path (another user's file, a device) is
        // not truncated through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(ReadCache::create(&link, 4 * B, 1).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    }

    /// A cache file in the temp dir, removed on drop.
    struct TempCache {
        path: PathBuf,
        cache: ReadCache,
    }

    impl Drop for TempCache {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn temp_cache(blocks: u64, admit_after: u32) -> TempCache {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "pstorage-mount-cache-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let cache = ReadCache::create(&path, blocks * B, admit_after).unwrap();
        TempCache { path, cache }
    }

    fn data(seed: u8, len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// One non-sequential read of `[off, off+len)` against `content`,
    /// through the cache as the mount does it. Returns (data, hit).
    fn read(c: &ReadCache, ino: u64, content: &[u8], off: u64, len: u64) -> (Vec<u8>, bool) {
        if let Some(d) = c.get(ino, off, len) {
            return (d, true);
        }
        let gen = c.generation(ino);
        let end = (off + len).min(content.len() as u64);
        let d = content[off as usize..end as usize].to_vec();
        c.offer(ino, off, &d, gen);
        (d, false)
    }

    #[test]
    fn blocks_are_admitted_after_two_reads_and_then_served() {
        let t = temp_cache(8, 2);
        let content = data(1, 4 * B);
        let (d, hit) = read(&t.cache, 7, &content, B, B);
        assert!(!hit);
        assert_eq!(d, &content[B as usize..2 * B as usize]);
        assert_eq!(t.cache.cached_blocks(), 0, "one read must not admit");
        let (_, hit) = read(&t.cache, 7, &content, B, B);
        assert!(!hit);
        assert_eq!(t.cache.cached_blocks(), 1, "the second read admits");
        // A partial read inside the cached block is served from the cache.
        let (d, hit) = read(&t.cache, 7, &content, B + 100, 5000);
        assert!(hit);
        assert_eq!(d, &content[(B + 100) as usize..(B + 5100) as usize]);
        // Another inode's same block is not.
        assert!(t.cache.get(8, B, B).is_none());
        assert_eq!(t.cache.stats().admitted, 1);
    }

    #[test]
    fn partial_and_tail_blocks_are_never_admitted() {
        let t = temp_cache(8, 1);
        let content = data(2, B + 1000);
        // A read of half a block admits nothing.
        read(&t.cache, 1, &content, 0, B / 2);
        // The tail block is short (end of file): never admitted.
        read(&t.cache, 1, &content, B, B);
        assert_eq!(t.cache.cached_blocks(), 0);
        // A whole block is.
        read(&t.cache, 1, &content, 0, B);
        assert_eq!(t.cache.cached_blocks(), 1);
    }

    #[test]
    fn sequential_reads_are_detected() {
        let t = temp_cache(4, 2);
        assert!(
            !t.cache.note_read(1, 0, B),
            "the first read at 0 is not sequential"
        );
        assert!(t.cache.note_read(1, B, B));
        assert!(t.cache.note_read(1, 2 * B, B));
        assert!(!t.cache.note_read(1, 10 * B, B), "a jump is random");
        assert!(!t.cache.note_read(2, 11 * B, B), "inodes are tracked apart");
        assert_eq!(t.cache.stats().sequential, 2);
    }

    #[test]
    fn writes_and_truncates_invalidate() {
        let t = temp_cache(8, 1);
        let content = data(3, 4 * B);
        for b in 0..4 {
            read(&t.cache, 5, &content, b * B, B);
        }
        assert_eq!(t.cache.cached_blocks(), 4);
        // A write of 10 bytes straddling blocks 1 and 2 drops both.
        t.cache.invalidate_range(5, 2 * B - 5, 10);
        assert!(t.cache.get(5, B, 1).is_none());
        assert!(t.cache.get(5, 2 * B, 1).is_none());
        assert!(t.cache.get(5, 0, B).is_some());
        assert!(t.cache.get(5, 3 * B, B).is_some());
        // A truncate inside block 3 drops it (its tail changed).
        t.cache.invalidate_from(5, 3 * B + 1);
        assert!(t.cache.get(5, 3 * B, 1).is_none());
        assert!(t.cache.get(5, 0, 1).is_some());
        t.cache.invalidate_inode(5);
        assert_eq!(t.cache.cached_blocks(), 0);
        assert_eq!(t.cache.stats().invalidated, 4);
    }

    #[test]
    fn data_read_before_an_invalidation_is_not_admitted() {
        let t = temp_cache(8, 1);
        let old = data(4, B);
        let gen = t.cache.generation(9);
        // A write lands (and invalidates) while the old data was in flight.
        t.cache.invalidate_range(9, 0, 1);
        t.cache.offer(9, 0, &old, gen);
        assert_eq!(t.cache.cached_blocks(), 0);
        t.cache.offer(9, 0, &old, t.cache.generation(9));
        assert_eq!(t.cache.cached_blocks(), 1);
    }

    #[test]
    fn corrupt_blocks_are_detected_and_dropped() {
        let t = temp_cache(2, 1);
        let content = data(5, B);
        read(&t.cache, 3, &content, 0, B);
        assert!(t.cache.get(3, 0, B).is_some());
        // Flip one byte of the only used slot in the cache file.
        let f = OpenOptions::new().write(true).open(&t.path).unwrap();
        let slot = t.cache.lock().index[&(3, 0)] as u64;
        let mut byte = [0u8; 1];
        t.cache
            .file
            .read_exact_at(&mut byte, slot * B + 777)
            .unwrap();
        byte[0] ^= 0x40;
        f.write_all_at(&byte, slot * B + 777).unwrap();
        assert!(
            t.cache.get(3, 0, B).is_none(),
            "a corrupt block must not be served"
        );
        assert_eq!(t.cache.stats().corrupt, 1);
        assert_eq!(t.cache.cached_blocks(), 0);
        // It can be admitted again and is then good.
        read(&t.cache, 3, &content, 0, B);
        assert_eq!(t.cache.get(3, 0, B).unwrap(), content);
    }

    #[test]
    fn a_full_cache_evicts_unreferenced_blocks() {
        let t = temp_cache(2, 1);
        let content = data(6, 4 * B);
        read(&t.cache, 1, &content, 0, B);
        read(&t.cache, 1, &content, B, B);
        // Block 0 is hot: served, so referenced.
        assert!(t.cache.get(1, 0, B).is_some());
        read(&t.cache, 1, &content, 2 * B, B);
        assert_eq!(t.cache.cached_blocks(), 2);
        assert_eq!(t.cache.capacity_blocks(), 2);
        assert!(t.cache.get(1, 2 * B, B).is_some(), "the new block is in");
        assert!(t.cache.get(1, 0, B).is_some(), "the hot block stayed");
        assert!(t.cache.get(1, B, B).is_none(), "the cold block was evicted");
        for b in 0..3 {
            if let Some(d) = t.cache.get(1, b * B, B) {
                assert_eq!(d, &content[(b * B) as usize..((b + 1) * B) as usize]);
            }
        }
    }

    #[test]
    fn a_cache_too_small_is_refused() {
        let dir = std::env::temp_dir().join("pstorage-mount-cache-too-small");
        assert!(ReadCache::create(&dir, 1000, 2).is_err());
    }
}
