//! The chunk map cache of one open file.
//!
//! Hits take one short synchronous lock and clone an `Arc`; the lock is
//! never held across an await. Misses and refreshes of one index serialize
//! on a per-index async lock so that concurrent I/Os to a chunk cost one MDS
//! call, not one each.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::types::{ChunkMap, MapVersion};

/// What the cache knows about one chunk index.
#[derive(Clone)]
enum Known {
    /// The MDS said the chunk does not exist (reads as zeros).
    Absent,
    Present(Arc<ChunkMap>),
}

#[derive(Default)]
struct Entry {
    known: Option<Known>,
    load: Arc<tokio::sync::Mutex<()>>,
}

/// What a lookup wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Any known state; an absent chunk is an answer.
    Read,
    /// An existing chunk (a write allocates on a miss).
    Allocated,
    /// A map newer than this version (or of another chunk id), after a
    /// replica said ours is stale.
    NewerThan(MapVersion),
}

/// The outcome of a lookup.
pub(crate) enum Lookup {
    /// Answered from the cache: `None` means the chunk does not exist.
    Hit(Option<Arc<ChunkMap>>),
    /// Not answerable: take this lock, look again, then ask the MDS.
    Miss(Arc<tokio::sync::Mutex<()>>),
}

#[derive(Default)]
pub(crate) struct MapCache {
    entries: Mutex<BTreeMap<u64, Entry>>,
}

impl MapCache {
    fn entries(&self) -> parking_lot::MutexGuard<'_, BTreeMap<u64, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every update is a single insert/replace).
        self.entries.lock()
    }

    pub(crate) fn lookup(&self, index: u64, want: Want) -> Lookup {
        let mut entries = self.entries();
        let entry = entries.entry(index).or_default();
        let hit = match (&entry.known, want) {
            (Some(Known::Present(m)), Want::Read | Want::Allocated) => Some(Some(m.clone())),
            (Some(Known::Present(m)), Want::NewerThan(v)) if m.version > v => Some(Some(m.clone())),
            (Some(Known::Absent), Want::Read) => Some(None),
            _ => None,
        };
        match hit {
            Some(h) => Lookup::Hit(h),
            None => Lookup::Miss(entry.load.clone()),
        }
    }

    /// The cached map of `index`, if any.
    pub(crate) fn cached(&self, index: u64) -> Option<Arc<ChunkMap>> {
        match self.entries().get(&index).and_then(|e| e.known.clone()) {
            Some(Known::Present(m)) => Some(m),
            _ => None,
        }
    }

    /// Caches `map` unless a newer map of the same chunk is already cached;
    /// returns whichever is cached afterwards.
    pub(crate) fn install(&self, map: ChunkMap) -> Arc<ChunkMap> {
        let mut entries = self.entries();
        let entry = entries.entry(map.index).or_default();
        if let Some(Known::Present(current)) = &entry.known {
            // Answers to concurrent MDS calls can arrive out of order; map
            // versions only grow, so the larger one is the later truth. A
            // different chunk id means the index was truncated away and
            // allocated again: the newcomer wins.
            if current.chunk == map.chunk && current.version > map.version {
                return current.clone();
            }
        }
        let map = Arc::new(map);
        entry.known = Some(Known::Present(map.clone()));
        map
    }

    /// Records that chunk `index` does not exist, unless a map is cached
    /// (an allocation that raced with this answer is the later truth).
    pub(crate) fn install_absent(&self, index: u64) {
        let mut entries = self.entries();
        let entry = entries.entry(index).or_default();
        if !matches!(entry.known, Some(Known::Present(_))) {
            entry.known = Some(Known::Absent);
        }
    }

    /// Forgets every index `>= first` (after a truncate released them).
    pub(crate) fn forget_from(&self, first: u64) {
        self.entries().retain(|index, _| *index < first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Replica;
    use crate::types::{ChunkId, CsId};

    fn map(chunk: u64, index: u64, version: u64) -> ChunkMap {
        ChunkMap {
            chunk: ChunkId(chunk),
            index,
            version: MapVersion(version),
            replicas: vec![Replica {
                cs: CsId(1),
                addr: "cs1".into(),
            }],
        }
    }

    #[test]
    fn lookups_follow_what_is_known() {
        let cache = MapCache::default();
        assert!(matches!(cache.lookup(0, Want::Read), Lookup::Miss(_)));
        cache.install_absent(0);
        assert!(matches!(cache.lookup(0, Want::Read), Lookup::Hit(None)));
        assert!(matches!(cache.lookup(0, Want::Allocated), Lookup::Miss(_)));
        cache.install(map(7, 0, 2));
        assert!(
            matches!(cache.lookup(0, Want::Allocated), Lookup::Hit(Some(m)) if m.version == MapVersion(2))
        );
        assert!(matches!(
            cache.lookup(0, Want::NewerThan(MapVersion(2))),
            Lookup::Miss(_)
        ));
        assert!(matches!(
            cache.lookup(0, Want::NewerThan(MapVersion(1))),
            Lookup::Hit(Some(_))
        ));
    }

    #[test]
    fn install_never_goes_back_in_version() {
        let cache = MapCache::default();
        cache.install(map(7, 0, 5));
        assert_eq!(cache.install(map(7, 0, 4)).version, MapVersion(5));
        cache.install_absent(0);
        assert_eq!(cache.cached(0).unwrap().version, MapVersion(5));
        // Re-allocated after a truncate: another chunk id replaces it.
        assert_eq!(cache.install(map(9, 0, 1)).chunk, ChunkId(9));
        cache.forget_from(0);
        assert!(cache.cached(0).is_none());
    }
}
