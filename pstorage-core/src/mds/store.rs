//! Durable MDS state in one redb database: a log of applied [`Command`]s
//! and a snapshot of the [`MdsState`] at some log index. The state is the
//! snapshot plus a replay of the log entries after it. Every record starts
//! with a format version byte followed by postcard bytes.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::format;
use super::state::{Command, MdsState};
use super::store_error::{db_error, MdsStoreError};
use crate::error::{Error, ErrorKind, Result};

/// Log records: index (1-based, gap-free) -> version byte + postcard(Command).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("mds_log");
/// Metadata: "snapshot" -> version byte + postcard(Snapshot).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("mds_meta");
const SNAPSHOT_KEY: &str = "snapshot";

/// The format version of log and snapshot records written by this build.
///
/// 2 added cluster parameters, the event log and graceful chunk server
/// removal to the state, and commands after `DropCs`. 3 added the MDS id
/// counter to the state and `AllocateMdsId` (and the Raft records of
/// [`super::raft::RaftStorage`]). 4 added chunk server locations, hosts,
/// tiers and capacities, file tiers and failure domains, and the commands
/// `SetAttr` (the older one, with fewer attributes, is `SetAttrV3`) and
/// `SetCsPlacement`. 5 added `BeginFence` and `FinishFence` (a fence in
/// two steps; `FenceFile` is no longer logged). 6 added client sessions to
/// the state and `Tagged` (exactly-once namespace mutations). 7 added
/// `RefreshLeases` (a new leader's first command). 8 puts several commands
/// in one Raft log entry (the leader's group commit). 9 added the POSIX
/// attributes (permissions, owners, times in nanoseconds, hard and symbolic
/// links, special files, extended attributes) and `MakeNode`, `Link`,
/// `SetStat`, `SetXattr`. 10 added byte-range locks (the state's lock
/// table, `SetLock`) and in-place lease upgrades (`UpgradeLease`). 11
/// added certificates (the state's certificate table, the event kind
/// `Security`, `RecordCertificate`, `RevokeCertificates`). Records
/// of every format are read with that format's frozen types and upgraded
/// (`mds::format`): a change of a stored live type needs a new format.
pub const STORE_FORMAT_VERSION: u8 = 11;
/// The oldest format this build reads.
pub(crate) const OLDEST_FORMAT_VERSION: u8 = 1;
/// Default number of log entries after which a snapshot is taken.
pub const DEFAULT_COMPACT_EVERY: u64 = 10_000;

/// A decoded snapshot.
struct Snapshot {
    /// The last log index the state includes.
    last_index: u64,
    state: MdsState,
}

/// Where applied commands go before their effect becomes visible: the
/// local store, or (later) a Raft log.
pub trait CommandLog: Send {
    /// Makes `cmd` durable; on error the command must be treated as never
    /// applied.
    fn append(&mut self, cmd: &Command) -> Result<()>;
    /// Called with the state after each applied command; may compact.
    /// An error here loses nothing (the command is already durable).
    fn applied(&mut self, state: &MdsState) -> Result<()>;
}

/// The redb-backed MDS store. Not thread-safe by itself: the service keeps
/// it behind its state mutex.
pub struct MdsStore {
    db: Database,
    path: PathBuf,
    /// Index the next appended command gets.
    next_index: u64,
    /// Last index covered by the stored snapshot.
    snapshot_index: u64,
    compact_every: u64,
}

impl std::fmt::Debug for MdsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdsStore")
            .field("path", &self.path)
            .field("next_index", &self.next_index)
            .field("snapshot_index", &self.snapshot_index)
            .finish()
    }
}

/// A record: [`STORE_FORMAT_VERSION`] followed by postcard bytes.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![STORE_FORMAT_VERSION];
    out.extend(
        postcard::to_allocvec(value)
            .map_err(|source| Error::from(MdsStoreError::Encode { source }))?,
    );
    Ok(out)
}

/// Splits a record into its format version and body; `Protocol` for a
/// format this build does not read.
pub(crate) fn split_record<'a>(bytes: &'a [u8], what: &str, path: &Path) -> Result<(u8, &'a [u8])> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| Error::corrupt(format!("{what} in {} is empty", path.display())))?;
    if !(OLDEST_FORMAT_VERSION..=STORE_FORMAT_VERSION).contains(&version) {
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "{what} in {} has format version {version}, this build reads version {STORE_FORMAT_VERSION}; run a pstorage release that supports it",
                path.display()
            ),
        ));
    }
    Ok((version, body))
}

/// Decodes a record's postcard body; `Corrupt` if it does not decode.
pub(crate) fn decode_body<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    what: &str,
    path: &Path,
) -> Result<T> {
    postcard::from_bytes(body).map_err(|source| {
        MdsStoreError::Decode {
            what: what.to_string(),
            path: path.to_path_buf(),
            source,
        }
        .into()
    })
}

/// Decodes a snapshot record of any readable format.
fn decode_snapshot(bytes: &[u8], path: &Path) -> Result<Snapshot> {
    let (last_index, state) = format::store_snapshot(bytes, path)?;
    Ok(Snapshot { last_index, state })
}

/// A snapshot record of `state` covering the log up to `last_index`, in
/// [`STORE_FORMAT_VERSION`].
pub(crate) fn encode_snapshot(last_index: u64, state: &MdsState) -> Result<Vec<u8>> {
    encode(&SnapshotRef { last_index, state })
}

impl MdsStore {
    fn db_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        db_error("MDS database", path, e)
    }

    /// Creates a new store at `path` holding `initial` (a new cluster).
    /// `AlreadyExists` if the store there already holds a cluster.
    pub fn create(path: impl AsRef<Path>, initial: &MdsState) -> Result<MdsStore> {
        let path = path.as_ref().to_path_buf();
        crate::private_files::prepare_private_file(&path)?;
        let db = Database::create(&path).map_err(|e| Self::db_error(&path, e))?;
        let mut store = MdsStore {
            db,
            path,
            next_index: 1,
            snapshot_index: 0,
            compact_every: DEFAULT_COMPACT_EVERY,
        };
        if store.read_snapshot()?.is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} already holds an MDS; remove it or use another directory",
                    store.path.display()
                ),
            ));
        }
        store.write_snapshot(0, initial)?;
        Ok(store)
    }

    /// Opens an existing store. `NotFound` if there is none at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<MdsStore> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::not_found(format!(
                "no MDS database at {}; create the cluster with make-mds",
                path.display()
            )));
        }
        crate::private_files::make_private(&path)?;
        let db = Database::open(&path).map_err(|e| Self::db_error(&path, e))?;
        let mut store = MdsStore {
            db,
            path,
            next_index: 1,
            snapshot_index: 0,
            compact_every: DEFAULT_COMPACT_EVERY,
        };
        let snapshot_index = store
            .read_snapshot()?
            .map(|s| s.last_index)
            .ok_or_else(|| {
                Error::not_found(format!(
                    "{} holds no MDS state; create the cluster with make-mds",
                    store.path.display()
                ))
            })?;
        let last_logged = {
            let txn = store
                .db
                .begin_read()
                .map_err(|e| Self::db_error(&store.path, e))?;
            match txn.open_table(LOG) {
                Ok(table) => table
                    .last()
                    .map_err(|e| Self::db_error(&store.path, e))?
                    .map(|(k, _)| k.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(Self::db_error(&store.path, e)),
            }
        };
        store.snapshot_index = snapshot_index;
        store.next_index = last_logged.unwrap_or(snapshot_index).max(snapshot_index) + 1;
        Ok(store)
    }

    /// Takes a snapshot (and trims the log) every `n` appended commands
    /// (at least 1).
    pub fn set_compact_every(&mut self, n: u64) {
        self.compact_every = n.max(1);
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of log entries not yet covered by the snapshot.
    pub fn log_len(&self) -> u64 {
        self.next_index - 1 - self.snapshot_index
    }

    fn read_snapshot(&self) -> Result<Option<Snapshot>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| Self::db_error(&self.path, e))?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(Self::db_error(&self.path, e)),
        };
        let value = table
            .get(SNAPSHOT_KEY)
            .map_err(|e| Self::db_error(&self.path, e))?;
        value
            .map(|v| decode_snapshot(v.value(), &self.path))
            .transpose()
    }

    fn write_snapshot(&mut self, last_index: u64, state: &MdsState) -> Result<()> {
        let bytes = encode_snapshot(last_index, state)?;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| Self::db_error(&self.path, e))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| Self::db_error(&self.path, e))?;
            meta.insert(SNAPSHOT_KEY, bytes.as_slice())
                .map_err(|e| Self::db_error(&self.path, e))?;
            let mut log = txn
                .open_table(LOG)
                .map_err(|e| Self::db_error(&self.path, e))?;
            log.retain_in(..=last_index, |_, _| false)
                .map_err(|e| Self::db_error(&self.path, e))?;
        }
        txn.commit().map_err(|e| Self::db_error(&self.path, e))?;
        self.snapshot_index = last_index;
        Ok(())
    }

    /// The state: the snapshot plus every logged command after it, applied
    /// in order. `Corrupt` if a record does not decode or apply; `Protocol`
    /// if it was written by a newer format.
    pub fn load(&self) -> Result<MdsState> {
        let snapshot = self.read_snapshot()?.ok_or_else(|| {
            Error::not_found(format!(
                "{} holds no MDS state; create the cluster with make-mds",
                self.path.display()
            ))
        })?;
        let mut state = snapshot.state;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| Self::db_error(&self.path, e))?;
        let table = match txn.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(state),
            Err(e) => return Err(Self::db_error(&self.path, e)),
        };
        let entries = table
            .range(snapshot.last_index + 1..)
            .map_err(|e| Self::db_error(&self.path, e))?;
        for (entry, expected) in entries.zip(snapshot.last_index + 1..) {
            let (k, v) = entry.map_err(|e| Self::db_error(&self.path, e))?;
            let index = k.value();
            if index != expected {
                return Err(Error::corrupt(format!(
                    "MDS log in {} jumps from entry {} to {index}",
                    self.path.display(),
                    expected - 1
                )));
            }
            let what = format!("MDS log entry {index}");
            let cmd = format::store_command(v.value(), &what, &self.path)?;
            // A tagged command is logged with its refusal, which replays.
            let tagged = matches!(cmd, Command::Tagged { .. });
            match state.apply(cmd) {
                Err(source) if !tagged => {
                    return Err(MdsStoreError::Replay {
                        what,
                        path: self.path.clone(),
                        source,
                    }
                    .into())
                }
                _ => {}
            }
        }
        Ok(state)
    }

    /// Appends a command durably (committed with fsync before returning);
    /// returns its log index.
    pub fn append(&mut self, cmd: &Command) -> Result<u64> {
        let bytes = encode(cmd)?;
        let index = self.next_index;
        let txn = self
            .db
            .begin_write()
            .map_err(|e| Self::db_error(&self.path, e))?;
        {
            let mut log = txn
                .open_table(LOG)
                .map_err(|e| Self::db_error(&self.path, e))?;
            log.insert(index, bytes.as_slice())
                .map_err(|e| Self::db_error(&self.path, e))?;
        }
        txn.commit().map_err(|e| Self::db_error(&self.path, e))?;
        self.next_index += 1;
        Ok(index)
    }

    /// Writes a snapshot of `state` (which must include every appended
    /// command) and trims the log it covers.
    pub fn compact(&mut self, state: &MdsState) -> Result<()> {
        self.write_snapshot(self.next_index - 1, state)
    }
}

/// A snapshot as written: the last log index it covers and the state.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    last_index: u64,
    state: &'a MdsState,
}

impl CommandLog for MdsStore {
    fn append(&mut self, cmd: &Command) -> Result<()> {
        MdsStore::append(self, cmd).map(|_| ())
    }

    fn applied(&mut self, state: &MdsState) -> Result<()> {
        if self.log_len() >= self.compact_every {
            self.compact(state)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LeaseId;
    use crate::types::{ChunkId, CsId, InodeId};

    fn write_raw(store: &MdsStore, index: u64, bytes: &[u8]) {
        let txn = store.db.begin_write().unwrap();
        txn.open_table(LOG).unwrap().insert(index, bytes).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn newer_or_garbled_records_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mds.redb");
        let mut store = MdsStore::create(&path, &MdsState::default()).unwrap();
        store.append(&Command::AllocateCsId).unwrap();
        assert_eq!(store.load().unwrap().next_chunk_id(), ChunkId(1));

        let mut newer = vec![STORE_FORMAT_VERSION + 1];
        newer.extend(postcard::to_allocvec(&Command::AllocateCsId).unwrap());
        write_raw(&store, 2, &newer);
        let err = store.load().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(
            err.message()
                .contains(&format!("format version {}", STORE_FORMAT_VERSION + 1)),
            "{err}"
        );
        assert!(err.message().contains("entry 2"), "{err}");

        write_raw(&store, 2, &[STORE_FORMAT_VERSION, 0xff, 0xff, 0xff]);
        assert_eq!(store.load().unwrap_err().kind(), ErrorKind::Corrupt);

        // A command that does not apply (a gap in ids) is corruption too.
        let bad = encode(&Command::SetCsAddr {
            cs: CsId(9),
            addr: "h:1".into(),
        })
        .unwrap();
        write_raw(&store, 2, &bad);
        let err = store.load().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        assert!(err.message().contains("does not replay"), "{err}");

        // A gap in the log is detected.
        write_raw(&store, 2, &encode(&Command::AllocateCsId).unwrap());
        write_raw(&store, 4, &encode(&Command::AllocateCsId).unwrap());
        assert_eq!(store.load().unwrap_err().kind(), ErrorKind::Corrupt);
    }

    /// [`crate::mds::Inode`] as formats 1 to 3 wrote it, field for field
    /// (before tiers and failure domains).
    #[derive(Serialize)]
    struct InodeOld {
        ino: crate::types::InodeId,
        kind: crate::types::InodeKind,
        parent: crate::types::InodeId,
        name: String,
        children: std::collections::BTreeMap<String, crate::types::InodeId>,
        size: u64,
        mtime_ms: u64,
        ctime_ms: u64,
        attrs: (crate::types::Replicas, u64),
        chunks: std::collections::BTreeMap<u64, crate::types::ChunkId>,
        fence_pending: bool,
    }

    impl From<&crate::mds::Inode> for InodeOld {
        fn from(n: &crate::mds::Inode) -> InodeOld {
            InodeOld {
                ino: n.ino,
                kind: n.kind,
                parent: n.parent,
                name: n.name.clone(),
                children: n.children.clone(),
                size: n.size,
                mtime_ms: n.mtime.as_ms(),
                ctime_ms: n.ctime.as_ms(),
                attrs: (n.attrs.replicas, n.attrs.chunk_size),
                chunks: n.chunks.clone(),
                fence_pending: n.fence_pending,
            }
        }
    }

    /// `bytes`, checked against (or, with `PSTORAGE_BLESS_GOLDEN=1`, written
    /// to) the golden file `name` under `src/mds/golden/`: the records of the
    /// pre-Raft formats, built here from their shapes once and kept as bytes.
    fn golden(name: &str, bytes: &[u8]) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/mds/golden")
            .join(name);
        if std::env::var_os("PSTORAGE_BLESS_GOLDEN").is_some() {
            std::fs::write(&path, bytes).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            golden, bytes,
            "{name}: the record built from the format's shape no longer matches its golden file"
        );
        golden
    }

    #[test]
    fn a_format_1_store_is_upgraded() {
        use std::collections::BTreeMap;

        use crate::mds::state::LeaseRecord;
        use crate::types::{ChunkId, CsId, InodeId, LeaseId};

        // The shape format 1 wrote, field for field.
        #[derive(Serialize)]
        struct CsRecordV1 {
            id: CsId,
            addr: String,
            dropped: bool,
        }
        #[derive(Serialize)]
        struct StateV1 {
            inodes: BTreeMap<InodeId, InodeOld>,
            chunks: BTreeMap<ChunkId, crate::mds::ChunkRecord>,
            servers: BTreeMap<CsId, CsRecordV1>,
            leases: BTreeMap<LeaseId, LeaseRecord>,
            next_ino: InodeId,
            next_chunk: ChunkId,
            next_lease: LeaseId,
            next_cs: CsId,
        }
        let mut expected = MdsState::default();
        expected.apply(Command::AllocateCsId).unwrap();
        expected
            .apply(Command::SetCsAddr {
                cs: CsId(1),
                addr: "h:1".into(),
            })
            .unwrap();
        let root = expected.inode(crate::types::ROOT_INODE).unwrap().clone();
        let v1 = StateV1 {
            inodes: BTreeMap::from([(root.ino, InodeOld::from(&root))]),
            chunks: BTreeMap::new(),
            servers: BTreeMap::from([(
                CsId(1),
                CsRecordV1 {
                    id: CsId(1),
                    addr: "h:1".into(),
                    dropped: false,
                },
            )]),
            leases: BTreeMap::new(),
            next_ino: InodeId(2),
            next_chunk: ChunkId(1),
            next_lease: LeaseId(1),
            next_cs: CsId(2),
        };
        #[derive(Serialize)]
        struct SnapshotV1Out {
            last_index: u64,
            state: StateV1,
        }
        let mut bytes = vec![1u8];
        bytes.extend(
            postcard::to_allocvec(&SnapshotV1Out {
                last_index: 0,
                state: v1,
            })
            .unwrap(),
        );
        let bytes = golden("mds_format1_snapshot.bin", &bytes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mds.redb");
        let store = MdsStore::create(&path, &MdsState::default()).unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SNAPSHOT_KEY, bytes.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        // A format 1 log record after it.
        let mut record = vec![1u8];
        record.extend(postcard::to_allocvec(&Command::AllocateCsId).unwrap());
        let record = golden("mds_format1_command.bin", &record);
        write_raw(&store, 1, &record);
        expected.apply(Command::AllocateCsId).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded, expected);
        loaded.check_invariants().unwrap();
    }

    #[test]
    fn a_format_2_store_is_upgraded() {
        let mut expected = MdsState::default();
        expected.apply(Command::AllocateCsId).unwrap();
        expected
            .apply(Command::SetParam {
                key: "mds.repl.concurrency".into(),
                value: 3,
                now_ms: 5,
            })
            .unwrap();
        // The shape format 2 wrote, field for field (format 3 appended
        // `next_mds`, format 4 placement fields to inodes and servers).
        #[derive(Serialize)]
        struct StateV2 {
            inodes: std::collections::BTreeMap<crate::types::InodeId, InodeOld>,
            chunks: std::collections::BTreeMap<crate::types::ChunkId, crate::mds::ChunkRecord>,
            servers: std::collections::BTreeMap<
                crate::types::CsId,
                (crate::types::CsId, String, bool, bool),
            >,
            leases: std::collections::BTreeMap<crate::types::LeaseId, crate::mds::LeaseRecord>,
            next_ino: crate::types::InodeId,
            next_chunk: crate::types::ChunkId,
            next_lease: crate::types::LeaseId,
            next_cs: crate::types::CsId,
            params: std::collections::BTreeMap<String, u64>,
            events: Vec<crate::types::Event>,
            next_event: u64,
        }
        let root = expected.inode(crate::types::ROOT_INODE).unwrap();
        let v2 = StateV2 {
            inodes: std::collections::BTreeMap::from([(root.ino, InodeOld::from(root))]),
            chunks: Default::default(),
            servers: Default::default(),
            leases: Default::default(),
            next_ino: InodeId(2),
            next_chunk: ChunkId(1),
            next_lease: LeaseId(1),
            next_cs: CsId(2),
            params: expected.param_overrides().clone(),
            events: expected.events_after(0).cloned().collect(),
            next_event: 2,
        };
        let mut bytes = vec![2u8];
        bytes.extend(postcard::to_allocvec(&(0u64, v2)).unwrap());
        let bytes = golden("mds_format2_snapshot.bin", &bytes);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mds.redb");
        let store = MdsStore::create(&path, &MdsState::default()).unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SNAPSHOT_KEY, bytes.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let mut record = vec![2u8];
        record.extend(postcard::to_allocvec(&Command::AllocateCsId).unwrap());
        let record = golden("mds_format2_command.bin", &record);
        write_raw(&store, 1, &record);
        expected.apply(Command::AllocateCsId).unwrap();
        let mut loaded = store.load().unwrap();
        assert_eq!(loaded, expected);
        loaded.check_invariants().unwrap();
        // The upgraded state hands out MDS ids after the first MDS's.
        assert_eq!(
            loaded.apply(Command::AllocateMdsId).unwrap(),
            crate::mds::ApplyOutcome::MdsId(2)
        );
        assert!(loaded.mds_allocated(1) && loaded.mds_allocated(2));
        assert!(!loaded.mds_allocated(3) && !loaded.mds_allocated(0));
        assert_eq!(loaded.next_mds_id(), 3);
    }

    #[test]
    fn mds_ids_are_never_reused() {
        let mut state = MdsState::default();
        let ids: Vec<_> = (0..3)
            .map(|_| state.apply(Command::AllocateMdsId).unwrap())
            .collect();
        assert_eq!(ids, [2, 3, 4].map(crate::mds::ApplyOutcome::MdsId).to_vec());
        state.check_invariants().unwrap();
        // The counter survives a snapshot round trip.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mds.redb");
        let mut store = MdsStore::create(&path, &state).unwrap();
        store.append(&Command::AllocateMdsId).unwrap();
        state.apply(Command::AllocateMdsId).unwrap();
        let mut loaded = store.load().unwrap();
        assert_eq!(loaded, state);
        assert_eq!(
            loaded.apply(Command::AllocateMdsId).unwrap(),
            crate::mds::ApplyOutcome::MdsId(6)
        );
    }

    #[test]
    fn reopen_continues_after_the_last_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mds.redb");
        let mut store = MdsStore::create(&path, &MdsState::default()).unwrap();
        let mut state = MdsState::default();
        for _ in 0..5 {
            store.append(&Command::AllocateCsId).unwrap();
            state.apply(Command::AllocateCsId).unwrap();
        }
        store.compact(&state).unwrap();
        assert_eq!(store.log_len(), 0);
        store.append(&Command::AllocateCsId).unwrap();
        state.apply(Command::AllocateCsId).unwrap();
        drop(store);
        let mut store = MdsStore::open(&path).unwrap();
        assert_eq!(store.log_len(), 1);
        assert_eq!(store.append(&Command::AllocateCsId).unwrap(), 7);
        state.apply(Command::AllocateCsId).unwrap();
        assert_eq!(store.load().unwrap(), state);
    }

    /// A tagged command is logged with its refusal (its session remembers
    /// it): the log replays it, and a snapshot keeps the sessions.
    #[test]
    fn a_tagged_refusal_replays_and_sessions_survive_a_snapshot() {
        use crate::types::{OpTag, SessionId};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mds.redb");
        let mut store = MdsStore::create(&path, &MdsState::default()).unwrap();
        let mut state = MdsState::default();
        let op = OpTag {
            session: SessionId(9),
            seq: 1,
            done_below: 1,
        };
        let cmd = Command::Tagged {
            op,
            now_ms: 5,
            cmd: Box::new(Command::Unlink {
                path: "/missing".into(),
                now_ms: 5,
            }),
        };
        store.append(&cmd).unwrap();
        let refused = state.apply(cmd.clone()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::NotFound);
        assert_eq!(state.sessions().len(), 1);
        drop(store);
        let store = MdsStore::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded, state);
        let mut store = store;
        store.compact(&state).unwrap();
        drop(store);
        let mut reloaded = MdsStore::open(&path).unwrap().load().unwrap();
        assert_eq!(reloaded, state);
        // The replayed answer is the remembered refusal.
        let again = reloaded.apply(cmd).unwrap_err();
        assert_eq!(
            (again.kind(), again.message()),
            (refused.kind(), refused.message())
        );
    }
}
