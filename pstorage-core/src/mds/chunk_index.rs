//! What the leader's periodic work looks up instead of scanning every chunk
//! and every file: the chunks each chunk server is in (and their bytes),
//! the chunks whose chain is shorter or longer than their file's
//! `replicas` norm, and the placement classes of the files that hold
//! chunks.
//!
//! It is derived from an [`MdsState`](super::state::MdsState), never
//! persisted nor replicated: a state builds it the first time it is asked
//! for it (a decoded or installed state starts without one), and from then
//! on every change to a chunk record, to a file's chunks or to a file's
//! attributes updates it. `MdsState::check_invariants` compares a built
//! index with one counted afresh, so every test and simulation that checks
//! the state checks it too.
//!
//! Before it, the MDS tick (every 500 ms) and every replication planning
//! round walked every chunk and every inode under the core mutex, on the
//! MDS's one thread, and the walk grew with the namespace: at ~100,000
//! empty files a create cost the leader 434-517 us of CPU instead of
//! 304-308 (three MDSes, 8 SDK clients; docs/design.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use super::state::{ChunkRecord, Inode};
use crate::types::{ChunkId, CsId, FailureDomain, FileAttrs, InodeId, InodeKind};

/// (tier, failure domain, replicas norm): where a file's chunks must be
/// placed, as far as `check_domains` is concerned.
pub type PlacementClass = (u8, FailureDomain, u8);

/// The chunks one server is in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    /// The chunks whose chain names it.
    pub chunks: BTreeSet<ChunkId>,
    /// Their chunk sizes, summed.
    pub bytes: u64,
}

/// See the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkIndex {
    /// Servers named by at least one chain (no empty entries).
    by_cs: BTreeMap<CsId, Holding>,
    /// Chunks with fewer members than their file's norm.
    short: BTreeSet<ChunkId>,
    /// Chunks with more members than their file's norm.
    long: BTreeSet<ChunkId>,
    /// Files that hold chunks, counted by class (no zero counts).
    classes: BTreeMap<PlacementClass, u64>,
}

/// The class of a file that holds chunks; `None` for anything else.
pub fn class_of(node: &Inode) -> Option<PlacementClass> {
    (node.kind == InodeKind::File && !node.chunks.is_empty()).then_some((
        node.attrs.tier,
        node.attrs.failure_domain,
        node.attrs.replicas.norm,
    ))
}

impl ChunkIndex {
    /// Counted afresh from a state's inodes and chunk records. A chunk
    /// whose file is missing (a broken state) is left out.
    pub fn build(
        inodes: &BTreeMap<InodeId, Inode>,
        chunks: &BTreeMap<ChunkId, ChunkRecord>,
    ) -> ChunkIndex {
        let mut index = ChunkIndex::default();
        for node in inodes.values() {
            index.change_class(None, class_of(node));
        }
        for (&chunk, rec) in chunks {
            if let Some(node) = inodes.get(&rec.file) {
                index.add_chunk(chunk, &rec.replicas, &node.attrs);
            }
        }
        index
    }

    /// A chain `replicas` of a file with `attrs` now holds `chunk`.
    pub fn add_chunk(&mut self, chunk: ChunkId, replicas: &[CsId], attrs: &FileAttrs) {
        for &cs in replicas {
            let holding = self.by_cs.entry(cs).or_default();
            holding.chunks.insert(chunk);
            holding.bytes = holding.bytes.saturating_add(attrs.chunk_size);
        }
        let norm = usize::from(attrs.replicas.norm);
        if replicas.len() < norm {
            self.short.insert(chunk);
        } else if replicas.len() > norm {
            self.long.insert(chunk);
        }
    }

    /// `chunk` (chain `replicas`, file attributes `attrs`, as
    /// [`add_chunk`](Self::add_chunk) was told) is gone.
    pub fn remove_chunk(&mut self, chunk: ChunkId, replicas: &[CsId], attrs: &FileAttrs) {
        for cs in replicas {
            if let Some(holding) = self.by_cs.get_mut(cs) {
                holding.chunks.remove(&chunk);
                holding.bytes = holding.bytes.saturating_sub(attrs.chunk_size);
                if holding.chunks.is_empty() {
                    self.by_cs.remove(cs);
                }
            }
        }
        self.short.remove(&chunk);
        self.long.remove(&chunk);
    }

    /// A file's class went from `before` to `after` (see [`class_of`]).
    pub fn change_class(&mut self, before: Option<PlacementClass>, after: Option<PlacementClass>) {
        if before == after {
            return;
        }
        if let Some(class) = before {
            if let Some(n) = self.classes.get_mut(&class) {
                *n -= 1;
                if *n == 0 {
                    self.classes.remove(&class);
                }
            }
        }
        if let Some(class) = after {
            *self.classes.entry(class).or_default() += 1;
        }
    }

    /// The chunks `cs` is a member of, and their bytes.
    pub fn holding(&self, cs: CsId) -> Option<&Holding> {
        self.by_cs.get(&cs)
    }

    /// Every server some chain names, with what it holds.
    pub fn servers(&self) -> impl Iterator<Item = (CsId, &Holding)> {
        self.by_cs.iter().map(|(&cs, h)| (cs, h))
    }

    /// Chunks with fewer members than their file's norm.
    pub fn short(&self) -> &BTreeSet<ChunkId> {
        &self.short
    }

    /// Chunks with more members than their file's norm.
    pub fn long(&self) -> &BTreeSet<ChunkId> {
        &self.long
    }

    /// The classes of the files that hold chunks.
    pub fn classes(&self) -> impl Iterator<Item = PlacementClass> + '_ {
        self.classes.keys().copied()
    }
}

/// A state's index, built on first use. Derived data: two states are
/// equal whatever their indexes (built or not), it is not serialized, and a
/// clone of a state starts without one (the clones are snapshots, taken
/// under the core mutex: copying the index there would only lengthen it).
#[derive(Default)]
pub(crate) struct LazyIndex(OnceLock<ChunkIndex>);

impl Clone for LazyIndex {
    fn clone(&self) -> Self {
        LazyIndex::default()
    }
}

impl LazyIndex {
    /// The index, built from `inodes` and `chunks` if it is not yet.
    pub(crate) fn get_or_build(
        &self,
        inodes: &BTreeMap<InodeId, Inode>,
        chunks: &BTreeMap<ChunkId, ChunkRecord>,
    ) -> &ChunkIndex {
        self.0.get_or_init(|| ChunkIndex::build(inodes, chunks))
    }

    /// The index if it is built (to update it; an index not built has
    /// nothing to update).
    pub(crate) fn built_mut(&mut self) -> Option<&mut ChunkIndex> {
        self.0.get_mut()
    }

    /// The index if it is built.
    pub(crate) fn built(&self) -> Option<&ChunkIndex> {
        self.0.get()
    }
}

impl PartialEq for LazyIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LazyIndex {}

impl std::fmt::Debug for LazyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(_) => f.write_str("LazyIndex(built)"),
            None => f.write_str("LazyIndex(not built)"),
        }
    }
}
