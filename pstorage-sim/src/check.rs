//! The checkers: models of what a correct cluster may answer, fed with
//! what the clients did and saw, and checks of the cluster's own state.
//! Each returns `Err(description)` for a violation.

use pstorage_core::types::MapVersion;
use std::collections::{BTreeMap, BTreeSet};

use pstorage_core::chunk::ChunkStore;
use pstorage_core::mds::MdsState;
use pstorage_core::types::{ChunkId, CsId, BLOCK_SIZE};

/// The value of a block as the workload writes it: a nonzero id in the
/// first 8 bytes, the block's index in the next 8, the rest a fill byte
/// derived from the id, so a torn or misplaced block does not decode.
pub fn encode_block(value: u64, block: u64) -> Vec<u8> {
    let mut bytes = vec![(value as u8) | 1; BLOCK_SIZE as usize];
    bytes[..8].copy_from_slice(&value.to_le_bytes());
    bytes[8..16].copy_from_slice(&block.to_le_bytes());
    bytes
}

/// The value a block read back holds: `Ok(0)` for zeros (never written),
/// `Err` for bytes no write produced.
pub fn decode_block(bytes: &[u8], block: u64) -> Result<u64, String> {
    if bytes.iter().all(|b| *b == 0) {
        return Ok(0);
    }
    let value = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if bytes == encode_block(value, block).as_slice() {
        Ok(value)
    } else {
        Err(format!(
            "block {block} holds bytes no write produced (starts with value {value:#x}, index {})",
            u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"))
        ))
    }
}

/// One 4 KiB block of a file with one writer, whose operations are
/// sequential: which values a read may return (linearizability), and which
/// must survive (durability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockModel {
    /// Values a read may return now: the last acknowledged write, plus
    /// writes that failed after it (they may have been applied), plus,
    /// after a chunk server crash, the values unflushed writes may have
    /// fallen back to.
    pub allowed: BTreeSet<u64>,
    /// The values one of which was durable at the last successful flush.
    pub flushed: BTreeSet<u64>,
    /// Values written since the last successful flush (acknowledged or
    /// not).
    pub since_flush: BTreeSet<u64>,
}

impl Default for BlockModel {
    fn default() -> Self {
        BlockModel {
            allowed: BTreeSet::from([0]),
            flushed: BTreeSet::from([0]),
            since_flush: BTreeSet::new(),
        }
    }
}

impl BlockModel {
    /// A write of `value` ended, acknowledged (`ok`) or not.
    pub fn write_done(&mut self, value: u64, ok: bool) {
        if ok {
            self.allowed = BTreeSet::from([value]);
        } else {
            self.allowed.insert(value);
        }
        self.since_flush.insert(value);
    }

    /// A flush returned success: whatever may be read now is durable.
    pub fn flush_done(&mut self) {
        self.flushed = self.allowed.clone();
        self.since_flush.clear();
    }

    /// A chunk server crashed: writes not flushed may be lost, so a read
    /// may also return what was flushed or any unflushed write.
    pub fn crashed(&mut self) {
        if !self.since_flush.is_empty() {
            self.allowed.extend(self.flushed.iter().copied());
            self.allowed.extend(self.since_flush.iter().copied());
        }
    }

    /// A read returned `value`.
    pub fn check_read(&mut self, block: u64, value: u64) -> Result<(), String> {
        if self.allowed.contains(&value) {
            // Linearizable: later reads see this value or a later write.
            self.allowed = BTreeSet::from([value]);
            if self.since_flush.is_empty() {
                self.flushed = self.allowed.clone();
            }
            return Ok(());
        }
        let lost = !self.flushed.contains(&value) && !self.since_flush.contains(&value);
        Err(format!(
            "block {block}: read value {value:#x}, but only {} may be read ({})",
            fmt_set(&self.allowed),
            if lost {
                format!(
                    "a flushed write was lost: at the last flush it held one of {}",
                    fmt_set(&self.flushed)
                )
            } else {
                "a stale value: a later write was acknowledged".to_string()
            }
        ))
    }
}

fn fmt_set(values: &BTreeSet<u64>) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:#x}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// What a client knows about one name in its own directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameState {
    Present,
    Absent,
    /// An operation on it failed: it may or may not have taken effect.
    Unknown,
}

/// The names of one client's directory (namespace operations are
/// linearizable: a listing shows every name known present and none known
/// absent).
#[derive(Debug, Clone, Default)]
pub struct NamespaceModel {
    pub names: BTreeMap<String, NameState>,
}

impl NamespaceModel {
    pub fn set(&mut self, name: &str, state: NameState) {
        self.names.insert(name.to_string(), state);
    }

    /// A listing returned `listed`.
    pub fn check_listing(&mut self, listed: &BTreeSet<String>) -> Result<(), String> {
        for (name, state) in &self.names {
            match state {
                NameState::Present if !listed.contains(name) => {
                    return Err(format!("{name} was created but the listing misses it"))
                }
                NameState::Absent if listed.contains(name) => {
                    return Err(format!("{name} was removed but the listing shows it"))
                }
                _ => {}
            }
        }
        for name in listed {
            if !self.names.contains_key(name) {
                return Err(format!("the listing shows {name}, which was never created"));
            }
        }
        for (name, state) in self.names.iter_mut() {
            *state = if listed.contains(name) {
                NameState::Present
            } else {
                NameState::Absent
            };
        }
        Ok(())
    }
}

/// `MdsState::check_invariants` of one MDS.
pub fn check_mds(id: u64, state: &MdsState) -> Result<(), String> {
    state
        .check_invariants()
        .map_err(|e| format!("MDS {id}: state invariant broken: {e}"))
}

/// Once the cluster is quiet: every chunk has `replicas.norm` replicas in
/// its chain, each held by a running chunk server at the map's version,
/// all identical (equal CRC tables).
pub fn check_replicas(
    state: &MdsState,
    stores: &BTreeMap<CsId, &dyn ChunkStore>,
) -> Result<(), String> {
    for (chunk, record) in state.chunks() {
        let norm = state
            .inode(record.file)
            .map(|i| i.attrs.replicas.norm as usize)
            .unwrap_or(0);
        if record.replicas.len() != norm {
            return Err(format!(
                "chunk {chunk:#x} has {} replicas ({:?}), not replicas.norm = {norm}",
                record.replicas.len(),
                record.replicas
            ));
        }
        let mut first: Option<(CsId, Vec<u64>)> = None;
        for cs in &record.replicas {
            let store = stores
                .get(cs)
                .ok_or_else(|| format!("chunk {chunk:#x}: chunk server {cs} is not running"))?;
            let table = replica_table(*store, *chunk, record.version.0)
                .map_err(|e| format!("chunk {chunk:#x} on chunk server {cs}: {e}"))?;
            // Every block must pass its checksum (a flipped bit is repaired).
            let mut bytes = vec![0u8; (table.len() as u64 * BLOCK_SIZE) as usize];
            store
                .read_checked(*chunk, Some(record.version), 0, &mut bytes)
                .map_err(|e| format!("chunk {chunk:#x} on chunk server {cs}: {e}"))?;
            match &first {
                None => first = Some((*cs, table)),
                Some((other, expected)) => {
                    if let Some(block) = expected.iter().zip(&table).position(|(a, b)| a != b) {
                        return Err(format!(
                            "chunk {chunk:#x} version {}: replicas on chunk servers {other} and \
                             {cs} differ at block {block}",
                            record.version
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn replica_table(store: &dyn ChunkStore, chunk: ChunkId, version: u64) -> Result<Vec<u64>, String> {
    let size = store.chunk_size(chunk).map_err(|e| e.to_string())?;
    store
        .crc_entries(chunk, Some(MapVersion(version)), 0, size / BLOCK_SIZE)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use pstorage_core::chunk::MemChunkStore;
    use pstorage_core::types::FileAttrs;

    use super::*;

    #[test]
    fn a_block_decodes_to_its_value_and_garbage_is_refused() {
        assert_eq!(decode_block(&encode_block(42, 3), 3), Ok(42));
        assert_eq!(decode_block(&[0; BLOCK_SIZE as usize], 3), Ok(0));
        assert!(decode_block(&encode_block(42, 3), 4).is_err());
        let mut torn = encode_block(42, 3);
        torn[100] ^= 1;
        assert!(decode_block(&torn, 3).is_err());
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_refused() {
        let mut block = BlockModel::default();
        block.write_done(1, true);
        block.write_done(2, true);
        assert!(block.check_read(0, 1).unwrap_err().contains("stale"));
        assert!(block.check_read(0, 2).is_ok());
    }

    #[test]
    fn a_lost_flushed_write_is_refused_even_after_a_crash() {
        let mut block = BlockModel::default();
        block.write_done(1, true);
        block.flush_done();
        block.write_done(2, true);
        block.crashed();
        // The unflushed write may be lost, the flushed one may not.
        assert!(block.clone().check_read(0, 1).is_ok());
        assert!(block.clone().check_read(0, 2).is_ok());
        assert!(block
            .check_read(0, 0)
            .unwrap_err()
            .contains("flushed write was lost"));
    }

    #[test]
    fn a_failed_write_may_or_may_not_be_read_but_not_both_ways() {
        let mut block = BlockModel::default();
        block.write_done(1, true);
        block.write_done(2, false);
        assert!(block.clone().check_read(0, 1).is_ok());
        assert!(block.check_read(0, 2).is_ok());
        // Once 2 was read, reading 1 again goes back in time.
        assert!(block.check_read(0, 1).is_err());
    }

    #[test]
    fn a_listing_must_show_created_names_and_hide_removed_ones() {
        let mut ns = NamespaceModel::default();
        ns.set("a", NameState::Present);
        ns.set("b", NameState::Absent);
        ns.set("c", NameState::Unknown);
        let listed = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        assert!(ns.clone().check_listing(&listed(&["a"])).is_ok());
        assert!(ns.clone().check_listing(&listed(&["a", "c"])).is_ok());
        assert!(ns.clone().check_listing(&listed(&[])).is_err());
        assert!(ns.clone().check_listing(&listed(&["a", "b"])).is_err());
        assert!(ns.check_listing(&listed(&["a", "z"])).is_err());
    }

    #[test]
    fn a_broken_mds_state_is_refused() {
        let state = MdsState::new(FileAttrs::default()).unwrap();
        assert!(check_mds(1, &state).is_ok());
        // The same state with its inode counter behind its inodes.
        let mut json = serde_json::to_value(&state).unwrap();
        json["next_ino"] = serde_json::json!(0);
        let broken: MdsState = serde_json::from_value(json).unwrap();
        assert!(check_mds(1, &broken).unwrap_err().contains("bad id"));
    }

    /// A state with file /f of one chunk on chunk servers 1 and 2, norm 2.
    fn one_chunk_state() -> MdsState {
        use pstorage_core::mds::{ApplyOutcome, Command};
        use pstorage_core::types::{LeaseMode, OpenFlags, Replicas};
        let attrs = FileAttrs {
            chunk_size: 64 << 10,
            replicas: Replicas { norm: 2, min: 1 },
            ..Default::default()
        };
        let mut state = MdsState::new(attrs).unwrap();
        for cs in [1, 2] {
            state.apply(Command::AllocateCsId).unwrap();
            state
                .apply(Command::SetCsAddr {
                    cs: CsId(cs),
                    addr: format!("cs{cs}:1"),
                })
                .unwrap();
        }
        let opened = state
            .apply(Command::Open {
                perms: pstorage_core::types::Perms::FILE,
                path: "/f".into(),
                mode: LeaseMode::Write,
                flags: OpenFlags {
                    create: true,
                    ..OpenFlags::default()
                },
                now_ms: 1,
                lease_duration_ms: 30_000,
            })
            .unwrap();
        let ApplyOutcome::Opened { lease, .. } = opened else {
            panic!("open: {opened:?}");
        };
        state
            .apply(Command::AllocateChunk {
                lease: lease.id,
                index: 0,
                chunk: state.next_chunk_id(),
                version: MapVersion(1),
                replicas: vec![CsId(1), CsId(2)],
                now_ms: 1,
            })
            .unwrap();
        state
    }

    #[test]
    fn differing_or_missing_replicas_are_refused() {
        let state = one_chunk_state();
        let (chunk, record) = state.chunks().next().map(|(c, r)| (*c, r.clone())).unwrap();
        let a = MemChunkStore::new();
        let b = MemChunkStore::new();
        for s in [&a, &b] {
            s.create(chunk, record.version, 64 << 10).unwrap();
        }
        let both = BTreeMap::from([
            (CsId(1), &a as &dyn ChunkStore),
            (CsId(2), &b as &dyn ChunkStore),
        ]);
        assert!(check_replicas(&state, &both).is_ok());
        b.write(chunk, 0, &encode_block(5, 0)).unwrap();
        assert!(check_replicas(&state, &both)
            .unwrap_err()
            .contains("differ at block 0"));
        let only_a = BTreeMap::from([(CsId(1), &a as &dyn ChunkStore)]);
        assert!(check_replicas(&state, &only_a)
            .unwrap_err()
            .contains("not running"));
    }
}
