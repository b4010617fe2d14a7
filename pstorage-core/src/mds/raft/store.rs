//! Persistent Raft storage of one MDS: vote, purged log id and the latest
//! snapshot in one redb database file (table `raft_meta`, next to the
//! pre-Raft [`MdsStore`] tables), the log and the committed log id in
//! segment files beside it (`mds.redb.log`, [`LogFiles`]; layout 12 of
//! the database: before it, the log was the table `raft_log`, moved out
//! when a newer build first opens it).
//!
//! Every record is a format version byte ([`STORE_FORMAT_VERSION`](crate::mds::STORE_FORMAT_VERSION))
//! followed by postcard bytes, like the pre-Raft store, read with the
//! frozen types of its format (`mds::format`). A write is a redb commit
//! or a segment write, synced before openraft is told it happened.
//!
//! The MDS state itself is not written on every apply: it lives in the
//! service ([`StateHost`]) and is persisted by snapshots. A restarted MDS
//! starts from [`RaftStorage::initial_state`] (the last snapshot) and
//! openraft re-applies the committed entries after it (the committed log
//! id is persisted too, so that happens at once on start).

use std::fmt;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, SnapshotPolicy, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::log_files::LogFiles;
use super::{MdsId, MdsNode, MdsRaft, MdsRaftConfig, RaftResponse, StateHost};
use crate::chunk::{CrashDisk, Disk, RealDisk};
use crate::error::{Error, ErrorKind, Result};
use crate::mds::format;
use crate::mds::state::MdsState;
use crate::mds::store::{decode_body, encode, split_record, MdsStore};
use crate::mds::store_error::{self, MdsStoreError};

/// Log entries: index -> version byte + postcard(`Entry<MdsRaftConfig>`),
/// before layout 12 (read once, to move them to the segment files).
const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Everything else, by key (see the `*_KEY` constants).
const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The pre-Raft store's metadata table (see [`MdsStore`]); it holds an MDS
/// when it has a "snapshot" key.
const LEGACY_META: TableDefinition<&str, &[u8]> = TableDefinition::new("mds_meta");
const LEGACY_SNAPSHOT_KEY: &str = "snapshot";

/// Marks the file as holding Raft state: one byte, the layout (see
/// [`LOG_LAYOUT_VERSION`]).
const FORMAT_KEY: &str = "format";
/// The layout [`FORMAT_KEY`] holds since the log is in segment files
/// ([`LogFiles`]); a lower one (a store format, 3 to 11) has it in the
/// table [`RAFT_LOG`]. A build that reads store format 11 or older refuses
/// it as a newer format.
pub(crate) const LOG_LAYOUT_VERSION: u8 = 12;
/// The last vote: version + postcard(`Vote`).
const VOTE_KEY: &str = "vote";
/// The last committed log id: version + postcard(`Option<LogId>`), before
/// layout 12 (now a record of the log).
const COMMITTED_KEY: &str = "committed";
/// The last purged log id: version + postcard(`Option<LogId>`).
const PURGED_KEY: &str = "purged";
/// The latest snapshot, exactly the bytes served to openraft:
/// version + postcard([`SnapshotRecord`]).
const SNAPSHOT_KEY: &str = "snapshot";
/// The latest snapshot's metadata alone: version + postcard(`SnapshotMeta`).
const SNAPSHOT_META_KEY: &str = "snapshot_meta";

/// The id of the snapshot a new cluster (or an imported pre-Raft store)
/// starts from; it covers no log entry.
const INITIAL_SNAPSHOT_ID: &str = "initial";

/// Default of [`raft_config`]'s `snapshot_every`: a snapshot every this many
/// applied log entries.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;

type Meta = SnapshotMeta<MdsId, MdsNode>;
type Membership = StoredMembership<MdsId, MdsNode>;
type StorageResult<T> = std::result::Result<T, StorageError<MdsId>>;

/// A snapshot as stored and sent to other MDSes, decoded.
struct SnapshotRecord {
    meta: Meta,
    state: MdsState,
}

/// A snapshot record as written.
#[derive(Serialize)]
struct SnapshotRecordRef<'a> {
    meta: &'a Meta,
    state: &'a MdsState,
}

/// The snapshot record (what [`SNAPSHOT_KEY`] holds and openraft
/// transfers) of `state` with `meta`, in [`STORE_FORMAT_VERSION`](crate::mds::STORE_FORMAT_VERSION).
pub(crate) fn encode_snapshot_record(meta: &Meta, state: &MdsState) -> Result<Vec<u8>> {
    encode(&SnapshotRecordRef { meta, state })
}

/// The open database, shared by the log store, its readers, the state
/// machine and its snapshot builders. redb serializes write transactions
/// and lets reads run concurrently.
struct Db {
    db: Database,
    path: PathBuf,
    /// The file system of the log (the machine's, or memory's).
    disk: Arc<dyn Disk>,
    /// The log, once opened ([`RaftStorage::from_shared`]).
    log: std::sync::OnceLock<LogFiles>,
    /// Dropped after `db` (fields drop in declaration order): set once the
    /// database file is closed, which [`StorageClosed`] waits for.
    closed: ClosedFlag,
}

/// Set when dropped.
#[derive(Default)]
struct ClosedFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ClosedFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Db {
    fn new(db: Database, path: &Path, disk: Arc<dyn Disk>) -> Db {
        Db {
            db,
            path: path.to_path_buf(),
            disk,
            log: std::sync::OnceLock::new(),
            closed: ClosedFlag::default(),
        }
    }

    /// The log's directory: `mds.redb.log` beside `mds.redb`.
    fn log_dir(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".log");
        PathBuf::from(name)
    }

    fn log(&self) -> &LogFiles {
        self.log.get().expect("the log is opened with the database")
    }

    /// Opens the log, moving it out of the database first if an older
    /// layout holds it there.
    fn open_log(&self) -> Result<()> {
        if self.log.get().is_some() {
            return Ok(());
        }
        let layout = self
            .layout()?
            .ok_or_else(|| Error::not_found(format!("{} holds no MDS", self.path.display())))?;
        let log = if layout >= LOG_LAYOUT_VERSION {
            LogFiles::open(Arc::clone(&self.disk), &self.log_dir())?
        } else {
            self.move_log_out()?
        };
        if let Some(purged) = self
            .read_meta::<Option<LogId<MdsId>>>(PURGED_KEY, "MDS Raft purged log id")?
            .flatten()
        {
            log.purge(purged.index)?;
        }
        // Set once: `from_shared` runs again only on a database whose log
        // it opened already.
        let _ = self.log.set(log);
        Ok(())
    }

    /// Moves the log of a store of layout 11 or older from the table
    /// [`RAFT_LOG`] into segment files, then marks the database layout 12
    /// and drops the table (one commit: a crash before it starts again
    /// from the table).
    fn move_log_out(&self) -> Result<LogFiles> {
        let entries: Vec<(u64, Vec<u8>)> = {
            let txn = self.db.begin_read().map_err(|e| self.error(e))?;
            match txn.open_table(RAFT_LOG) {
                Ok(table) => table
                    .iter()
                    .map_err(|e| self.error(e))?
                    .map(|item| {
                        let (k, v) = item.map_err(|e| self.error(e))?;
                        Ok((k.value(), v.value().to_vec()))
                    })
                    .collect::<Result<_>>()?,
                Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
                Err(e) => return Err(self.error(e)),
            }
        };
        let committed =
            self.read_record(COMMITTED_KEY, "MDS Raft committed log id", |b, _, _| {
                Ok(b.to_vec())
            })?;
        let log = LogFiles::create(Arc::clone(&self.disk), &self.log_dir())?;
        if let Some(c) = committed {
            let id = decode_committed(&c, &self.path)?;
            log.want_committed(id.map(|i| i.index), c);
        }
        // A few MiB per write; the log holds its entries since the
        // snapshot (about 10,000).
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            bytes += entry.1.len();
            batch.push(entry);
            if bytes >= 4 << 20 {
                log.append(&std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        log.append(&batch)?;
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut meta = txn.open_table(RAFT_META).map_err(|e| self.error(e))?;
            meta.insert(FORMAT_KEY, [LOG_LAYOUT_VERSION].as_slice())
                .map_err(|e| self.error(e))?;
            meta.remove(COMMITTED_KEY).map_err(|e| self.error(e))?;
        }
        txn.delete_table(RAFT_LOG).map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))?;
        tracing::info!(
            path = %self.path.display(),
            log = %self.log_dir().display(),
            "moved the MDS Raft log into segment files (layout 12)"
        );
        Ok(log)
    }

    fn error(&self, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        db_error(&self.path, e)
    }

    /// Reads a record of openraft's own types (vote, log ids): their
    /// shape is the same in every format.
    fn read_meta<T: for<'de> Deserialize<'de>>(&self, key: &str, what: &str) -> Result<Option<T>> {
        self.read_record(key, what, |bytes, what, path| {
            let (_, body) = split_record(bytes, what, path)?;
            decode_body(body, what, path)
        })
    }

    /// Reads the record at `key` with `decode`.
    fn read_record<T>(
        &self,
        key: &str,
        what: &str,
        decode: impl FnOnce(&[u8], &str, &Path) -> Result<T>,
    ) -> Result<Option<T>> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = match txn.open_table(RAFT_META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let Some(value) = table.get(key).map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        decode(value.value(), what, &self.path).map(Some)
    }

    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.write_meta_with(key, value, redb::Durability::Immediate)
    }

    /// [`Db::write_meta`] with `durability`: `None` commits without a
    /// sync of its own; the next durable commit (every log append is one)
    /// makes it durable, and a crash before that keeps an older value
    /// (redb's durable state is always a prefix of its commits).
    fn write_meta_with<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: redb::Durability,
    ) -> Result<()> {
        let bytes = encode(value)?;
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(durability).map_err(|e| self.error(e))?;
        {
            let mut meta = txn.open_table(RAFT_META).map_err(|e| self.error(e))?;
            meta.insert(key, bytes.as_slice())
                .map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    /// Whether the file holds Raft state (`Protocol` for a newer format).
    fn is_raft(&self) -> Result<bool> {
        Ok(self.layout()?.is_some())
    }

    /// The layout the file's Raft state is in, if it holds any: a store
    /// format (3 to 11: the log in the table [`RAFT_LOG`]) or
    /// [`LOG_LAYOUT_VERSION`]. `Protocol` for a newer one.
    fn layout(&self) -> Result<Option<u8>> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = match txn.open_table(RAFT_META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let Some(value) = table.get(FORMAT_KEY).map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        match value.value() {
            [layout] if *layout == LOG_LAYOUT_VERSION => Ok(Some(*layout)),
            [layout] if *layout > LOG_LAYOUT_VERSION => Err(Error::new(
                ErrorKind::Protocol,
                format!(
                    "MDS Raft format marker in {} has layout {layout}, this build reads layout {LOG_LAYOUT_VERSION}; run a pstorage release that supports it",
                    self.path.display()
                ),
            )),
            bytes => {
                let (version, _) =
                    split_record(bytes, "MDS Raft format marker", &self.path)?;
                Ok(Some(version))
            }
        }
    }

    /// Whether the file holds a pre-Raft [`MdsStore`].
    fn is_legacy(&self) -> Result<bool> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = match txn.open_table(LEGACY_META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(self.error(e)),
        };
        Ok(table
            .get(LEGACY_SNAPSHOT_KEY)
            .map_err(|e| self.error(e))?
            .is_some())
    }

    /// Marks the file as Raft storage, with `seed` as its snapshot.
    fn init(&self, seed: Option<&MdsState>) -> Result<()> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut meta = txn.open_table(RAFT_META).map_err(|e| self.error(e))?;
            meta.insert(FORMAT_KEY, [LOG_LAYOUT_VERSION].as_slice())
                .map_err(|e| self.error(e))?;
            if let Some(state) = seed {
                let snapshot_meta = Meta {
                    snapshot_id: INITIAL_SNAPSHOT_ID.to_string(),
                    ..Meta::default()
                };
                let record = encode_snapshot_record(&snapshot_meta, state)?;
                meta.insert(SNAPSHOT_KEY, record.as_slice())
                    .map_err(|e| self.error(e))?;
                meta.insert(SNAPSHOT_META_KEY, encode(&snapshot_meta)?.as_slice())
                    .map_err(|e| self.error(e))?;
            }
        }
        txn.commit().map_err(|e| self.error(e))?;
        let log = LogFiles::create(Arc::clone(&self.disk), &self.log_dir())?;
        let _ = self.log.set(log);
        Ok(())
    }

    fn snapshot_meta(&self) -> Result<Option<Meta>> {
        self.read_record(
            SNAPSHOT_META_KEY,
            "MDS Raft snapshot metadata",
            format::raft_snapshot_meta,
        )
    }

    fn snapshot_bytes(&self) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = match txn.open_table(RAFT_META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let value = table.get(SNAPSHOT_KEY).map_err(|e| self.error(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Stores a snapshot unless a newer one is stored already (a snapshot
    /// built from an older state can finish after a newer one was
    /// installed). Returns whether it was stored.
    fn store_snapshot(&self, meta: &Meta, bytes: &[u8]) -> Result<bool> {
        let meta_bytes = encode(meta)?;
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut table = txn.open_table(RAFT_META).map_err(|e| self.error(e))?;
            let stored: Option<Meta> =
                match table.get(SNAPSHOT_META_KEY).map_err(|e| self.error(e))? {
                    Some(v) => Some(format::raft_snapshot_meta(
                        v.value(),
                        "MDS Raft snapshot metadata",
                        &self.path,
                    )?),
                    None => None,
                };
            if stored.is_some_and(|s| s.last_log_id > meta.last_log_id) {
                return Ok(false);
            }
            table
                .insert(SNAPSHOT_KEY, bytes)
                .map_err(|e| self.error(e))?;
            table
                .insert(SNAPSHOT_META_KEY, meta_bytes.as_slice())
                .map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))?;
        Ok(true)
    }

    fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry<MdsRaftConfig>>> {
        use std::ops::Bound;
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_sub(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => u64::MAX,
        };
        if from > to {
            return Ok(Vec::new());
        }
        self.log()
            .read(from, to)?
            .into_iter()
            .map(|(index, bytes)| self.decode_entry(index, &bytes))
            .collect()
    }

    fn decode_entry(&self, index: u64, bytes: &[u8]) -> Result<Entry<MdsRaftConfig>> {
        let what = format!("MDS Raft log entry {index}");
        let entry = format::raft_entry(bytes, &what, &self.path)?;
        if entry.log_id.index != index {
            return Err(Error::corrupt(format!(
                "{what} in {} claims index {}",
                self.path.display(),
                entry.log_id.index
            )));
        }
        Ok(entry)
    }

    fn last_entry(&self) -> Result<Option<Entry<MdsRaftConfig>>> {
        let Some(last) = self.log().last_index() else {
            return Ok(None);
        };
        Ok(self.read_entries(last..=last)?.pop())
    }

    /// The committed log id the log records last.
    fn committed(&self) -> Result<Option<LogId<MdsId>>> {
        let Some(bytes) = self.log().committed() else {
            return Ok(None);
        };
        decode_committed(&bytes, &self.log_dir())
    }
}

/// Decodes a committed log id record (of the log files, or of
/// [`COMMITTED_KEY`] before layout 12) found in `path`.
fn decode_committed(bytes: &[u8], path: &Path) -> Result<Option<LogId<MdsId>>> {
    let what = "MDS Raft committed log id";
    let (_, body) = split_record(bytes, what, path)?;
    decode_body(body, what, path)
}

fn db_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    store_error::db_error("MDS Raft database", path, e)
}

/// Decodes a snapshot record (the bytes [`SNAPSHOT_KEY`] holds and
/// openraft transfers). `Protocol` for a newer format, `Corrupt` for
/// garbage or a format that had no Raft snapshots.
fn decode_snapshot(bytes: &[u8], path: &Path) -> Result<SnapshotRecord> {
    let (meta, state) = format::raft_snapshot(bytes, path)?;
    Ok(SnapshotRecord { meta, state })
}

/// An openraft storage error carrying a pstorage error's kind and message
/// (which name the database file).
fn storage_error(subject: ErrorSubject<MdsId>, verb: ErrorVerb, e: Error) -> StorageError<MdsId> {
    StorageIOError::new(subject, verb, AnyError::error(e)).into()
}

/// Runs a database write off the async runtime's threads (a redb commit
/// waits for fsync).
async fn blocking<T: Send + 'static>(
    db: &Arc<Db>,
    f: impl FnOnce(&Db) -> Result<T> + Send + 'static,
) -> Result<T> {
    let db = Arc::clone(db);
    crate::runtime::run_blocking("MDS Raft storage", move || f(&db)).await?
}

/// The Raft storage of one MDS, before it is handed to openraft with
/// [`RaftStorage::into_parts`].
pub struct RaftStorage {
    db: Arc<Db>,
    /// The stored snapshot's metadata; `None` while a joining MDS has no
    /// state yet.
    snapshot: Option<Meta>,
}

impl fmt::Debug for RaftStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftStorage")
            .field("path", &self.db.path)
            .field("snapshot", &self.snapshot.as_ref().map(|m| m.last_log_id))
            .finish()
    }
}

impl RaftStorage {
    fn create_db(path: &Path) -> Result<Db> {
        crate::private_files::prepare_private_file(path)?;
        let db = Database::create(path).map_err(|e| db_error(path, e))?;
        let db = Db::new(db, path, Arc::new(RealDisk));
        if db.is_raft()? || db.is_legacy()? {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "{} already holds an MDS; remove it or use another directory",
                    path.display()
                ),
            ));
        }
        Ok(db)
    }

    /// Creates the storage of the first MDS of a new cluster at `path`:
    /// `initial` becomes its snapshot, covering no log entry. The caller
    /// then initializes the Raft group (and should call
    /// [`compact_log_now`] so joining MDSes get that state as a snapshot).
    /// `AlreadyExists` if `path` already holds an MDS.
    pub fn create(path: impl AsRef<Path>, initial: &MdsState) -> Result<RaftStorage> {
        let db = Self::create_db(path.as_ref())?;
        db.init(Some(initial))?;
        Self::from_db(db)
    }

    /// Creates the storage of an MDS joining an existing cluster: no state
    /// until the leader sends a snapshot. `AlreadyExists` if `path` already
    /// holds an MDS.
    pub fn create_empty(path: impl AsRef<Path>) -> Result<RaftStorage> {
        let db = Self::create_db(path.as_ref())?;
        db.init(None)?;
        Self::from_db(db)
    }

    /// Opens existing Raft storage. `NotFound` if there is none at `path`
    /// (or it holds a pre-Raft store: see
    /// [`RaftStorage::open_legacy_or_raft`]); `Protocol` if it was written
    /// by a newer format, `Corrupt` if its records do not decode.
    pub fn open(path: impl AsRef<Path>) -> Result<RaftStorage> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::not_found(format!(
                "no MDS database at {}; create the cluster with make-mds",
                path.display()
            )));
        }
        crate::private_files::make_private(path)?;
        let db = Database::open(path).map_err(|e| db_error(path, e))?;
        let db = Db::new(db, path, Arc::new(RealDisk));
        if !db.is_raft()? {
            let why = if db.is_legacy()? {
                "holds a pre-Raft MDS store; open it with RaftStorage::open_legacy_or_raft to import it"
            } else {
                "holds no MDS; create the cluster with make-mds"
            };
            return Err(Error::not_found(format!("{} {why}", path.display())));
        }
        Self::from_db(db)
    }

    /// Opens the MDS database at `path` whatever it holds: Raft storage as
    /// [`RaftStorage::open`] does, or a pre-Raft [`MdsStore`] (a cluster
    /// made before Raft), whose state is imported as the Raft snapshot
    /// (covering no log entry, like [`RaftStorage::create`]). The old
    /// tables are left in place but no longer read. `NotFound` if `path`
    /// holds neither.
    pub fn open_legacy_or_raft(path: impl AsRef<Path>) -> Result<RaftStorage> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(Error::not_found(format!(
                "no MDS database at {}; create the cluster with make-mds",
                path.display()
            )));
        }
        crate::private_files::make_private(path)?;
        let legacy = {
            let db = Database::open(path).map_err(|e| db_error(path, e))?;
            let db = Db::new(db, path, Arc::new(RealDisk));
            !db.is_raft()? && db.is_legacy()?
        };
        if !legacy {
            return Self::open(path);
        }
        // The database is closed again: redb allows one open handle per
        // file and MdsStore opens its own.
        let state = MdsStore::open(path)?.load()?;
        let db = Database::open(path).map_err(|e| db_error(path, e))?;
        let db = Db::new(db, path, Arc::new(RealDisk));
        db.init(Some(&state))?;
        tracing::info!(
            path = %path.display(),
            "imported the pre-Raft MDS store as the Raft snapshot"
        );
        Self::from_db(db)
    }

    /// Creates Raft storage in memory (the simulator): the same records in
    /// a redb database on redb's in-memory backend, named `name` in
    /// messages. `initial`: the state of the first MDS of a new cluster
    /// (as [`RaftStorage::create`]); `None` for a joining MDS (as
    /// [`RaftStorage::create_empty`]). Keep a [`RaftDisk`] of it to start
    /// the MDS again after a simulated crash.
    pub fn create_in_memory(name: &str, initial: Option<&MdsState>) -> Result<RaftStorage> {
        let path = PathBuf::from(name);
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| db_error(&path, e))?;
        let db = Db::new(db, &path, Arc::new(CrashDisk::new()));
        db.init(initial)?;
        Self::from_db(db)
    }

    /// The database under this storage, to open it again with
    /// [`RaftStorage::reopen`] once the Raft node using it has stopped.
    pub fn disk(&self) -> RaftDisk {
        RaftDisk {
            db: Arc::clone(&self.db),
        }
    }

    /// Opens the storage of `disk` again, as after a restart: what was
    /// committed is there (every write is a redb commit before openraft is
    /// told), nothing else. The Raft node that used it must have stopped.
    pub fn reopen(disk: &RaftDisk) -> Result<RaftStorage> {
        Self::from_shared(Arc::clone(&disk.db))
    }

    /// Reads and checks every record openraft will read at start, so a
    /// damaged or newer file is refused here with a clear error.
    fn from_db(db: Db) -> Result<RaftStorage> {
        Self::from_shared(Arc::new(db))
    }

    fn from_shared(db: Arc<Db>) -> Result<RaftStorage> {
        let snapshot = db.snapshot_meta()?;
        db.read_meta::<Vote<MdsId>>(VOTE_KEY, "MDS Raft vote")?;
        db.read_meta::<Option<LogId<MdsId>>>(PURGED_KEY, "MDS Raft purged log id")?;
        db.open_log()?;
        db.committed()?;
        db.last_entry()?;
        Ok(RaftStorage { db, snapshot })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// Whether the storage holds a state (false for a joining MDS until it
    /// receives its first snapshot).
    pub fn has_state(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The log id the stored snapshot covers up to (`None` for the initial
    /// state of a new cluster, or no state at all).
    pub fn snapshot_log_id(&self) -> Option<LogId<MdsId>> {
        self.snapshot.as_ref().and_then(|m| m.last_log_id)
    }

    /// The state the MDS service starts from: the last persisted snapshot
    /// (openraft then re-applies the committed entries after it through
    /// [`StateHost::apply_committed`]). A joining MDS without a snapshot
    /// gets an empty state, replaced wholesale when the leader's snapshot
    /// arrives ([`StateHost::install_state`]).
    pub fn initial_state(&self) -> Result<MdsState> {
        match self.db.snapshot_bytes()? {
            Some(bytes) => Ok(decode_snapshot(&bytes, &self.db.path)?.state),
            None => Ok(MdsState::default()),
        }
    }

    /// The state this store holds as committed, with its log index: the
    /// snapshot plus every committed log entry after it, applied in order
    /// (offline inspection: tests compare the members of a stopped group).
    /// The committed log id it records is written behind the commit path,
    /// so after a crash it may be older than what the group committed:
    /// compare members with [`RaftStorage::state_at`] at the highest.
    pub fn committed_state(path: impl AsRef<Path>) -> Result<(u64, MdsState)> {
        let storage = RaftStorage::open(path)?;
        let committed = storage.db.committed()?.map(|l| l.index);
        storage.replay(committed)
    }

    /// The state of a stopped store with every entry its log holds
    /// applied, and the index of the last: what a group of one committed
    /// (it commits each entry once appended; the committed id it records
    /// may lag after a crash, see [`RaftStorage::committed_state`]).
    pub fn logged_state(path: impl AsRef<Path>) -> Result<(u64, MdsState)> {
        RaftStorage::open(path)?.replay(Some(u64::MAX))
    }

    /// The state of a stopped store at log index `index`: the snapshot
    /// plus the log entries after it up to `index`, applied in order
    /// (offline inspection: an index the group committed, which this
    /// member's record of the committed id may not have reached).
    /// `InvalidArgument` if the log does not hold every entry up to it.
    pub fn state_at(path: impl AsRef<Path>, index: u64) -> Result<MdsState> {
        let storage = RaftStorage::open(path)?;
        let (at, state) = storage.replay(Some(index))?;
        if at != index {
            return Err(Error::invalid(format!(
                "{}: the log ends at index {at}, before {index}",
                storage.db.path.display()
            )));
        }
        Ok(state)
    }

    /// The snapshot's state plus the entries after it up to `upto`, and
    /// the index of the last one applied.
    fn replay(&self, upto: Option<u64>) -> Result<(u64, MdsState)> {
        let mut state = self.initial_state()?;
        let from = self.snapshot_log_id().map(|l| l.index + 1).unwrap_or(0);
        let mut last = from.saturating_sub(1);
        let Some(upto) = upto.filter(|&upto| upto >= from) else {
            return Ok((last, state));
        };
        for entry in self.db.read_entries(from..=upto)? {
            last = entry.log_id.index;
            if let openraft::EntryPayload::Normal(request) = entry.payload {
                for cmd in request.cmds {
                    // A refused command changes nothing, as when it was applied.
                    let _ = state.apply(cmd);
                }
            }
        }
        Ok((last, state))
    }

    /// A handle that tells when every part of this storage handed to
    /// openraft is gone, i.e. the database file is closed and may be opened
    /// again (in this process too).
    pub fn closed(&self) -> StorageClosed {
        StorageClosed {
            closed: self.db.closed.0.clone(),
        }
    }

    /// Hands the storage to openraft: the log store and the state machine
    /// applying to `host` (which must hold [`RaftStorage::initial_state`]).
    pub fn into_parts(self, host: Arc<dyn StateHost>) -> (RaftLogStore, MdsStateMachine) {
        let (last_applied, membership) = match &self.snapshot {
            Some(meta) => (meta.last_log_id, meta.last_membership.clone()),
            None => (None, Membership::default()),
        };
        let sm = MdsStateMachine {
            db: Arc::clone(&self.db),
            host,
            last_applied,
            membership,
            has_state: self.snapshot.is_some(),
        };
        let log = RaftLogStore {
            db: self.db,
            committed_saved: None,
        };
        (log, sm)
    }
}

/// See [`RaftStorage::closed`].
#[derive(Debug, Clone)]
pub struct StorageClosed {
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl StorageClosed {
    /// Whether the database is closed now (its file too: redb may still be
    /// writing its clean-shutdown record after the last handle is gone).
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until the database is closed (openraft's tasks and the storage
    /// work they started let go of it after `Raft::shutdown`, shortly after
    /// it returns), at most `timeout`. Returns whether it closed.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_closed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// The database of a [`RaftStorage`], kept across a simulated crash of
/// its MDS ([`RaftStorage::reopen`]).
#[derive(Clone)]
pub struct RaftDisk {
    db: Arc<Db>,
}

impl fmt::Debug for RaftDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftDisk")
            .field("path", &self.db.path)
            .finish()
    }
}

/// openraft's log storage (and log reader) of one MDS: entries, vote and
/// purged log id, each durable before it is reported; the committed log id
/// is written behind the commit path ([`RaftLogStorage::save_committed`]).
#[derive(Clone)]
pub struct RaftLogStore {
    db: Arc<Db>,
    /// The committed log id openraft last saved (it reads back this one,
    /// recorded in the log or not yet).
    committed_saved: Option<Option<LogId<MdsId>>>,
}

impl fmt::Debug for RaftLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftLogStore")
            .field("path", &self.db.path)
            .finish()
    }
}

impl RaftLogReader<MdsRaftConfig> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<MdsRaftConfig>>> {
        self.db
            .read_entries(range)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<MdsRaftConfig> for RaftLogStore {
    type LogReader = RaftLogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<MdsRaftConfig>> {
        let read = |e| storage_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let last_purged_log_id = self
            .db
            .read_meta::<Option<LogId<MdsId>>>(PURGED_KEY, "MDS Raft purged log id")
            .map_err(read)?
            .flatten();
        let last_log_id = match self.db.last_entry().map_err(read)? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<MdsId>) -> StorageResult<()> {
        let vote = *vote;
        blocking(&self.db, move |db| db.write_meta(VOTE_KEY, &vote))
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<MdsId>>> {
        self.db
            .read_meta(VOTE_KEY, "MDS Raft vote")
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<MdsId>>) -> StorageResult<()> {
        // Not written on its own (a sync per commit round doubled the
        // syncs of every command): it goes in front of the next append,
        // durable with it, or when the log closes. It only lets a restart
        // apply at once what it can find committed anyway, and one lost
        // with a crash is an older one, covering entries that were durable
        // before it.
        self.committed_saved = Some(committed);
        let bytes = encode(&committed)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.db
            .log()
            .want_committed(committed.map(|c| c.index), bytes);
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<MdsId>>> {
        if let Some(saved) = self.committed_saved {
            return Ok(saved);
        }
        self.db
            .committed()
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<MdsRaftConfig>,
    ) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<MdsRaftConfig>> + Send,
        I::IntoIter: Send,
    {
        let records = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode(&entry)?)))
            .collect::<Result<Vec<(u64, Vec<u8>)>>>();
        let result = match records {
            Ok(records) => blocking(&self.db, move |db| db.log().append(&records)).await,
            Err(e) => Err(e),
        };
        // Only now (synced, or failed) may openraft learn of it.
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<MdsId>) -> StorageResult<()> {
        blocking(&self.db, move |db| db.log().truncate(log_id.index))
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<MdsId>) -> StorageResult<()> {
        blocking(&self.db, move |db| {
            // The purged id first: the log never has a hole after a crash
            // (entries up to it are never read again).
            db.write_meta(PURGED_KEY, &Some(log_id))?;
            db.log().purge(log_id.index)
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// openraft's state machine of one MDS: applies committed commands to the
/// service's live state through [`StateHost`], and builds, stores, serves
/// and installs snapshots of it.
pub struct MdsStateMachine {
    db: Arc<Db>,
    host: Arc<dyn StateHost>,
    last_applied: Option<LogId<MdsId>>,
    membership: Membership,
    /// False for a joining MDS until its first snapshot: it must not apply
    /// commands to a state it does not have.
    has_state: bool,
}

impl fmt::Debug for MdsStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MdsStateMachine")
            .field("path", &self.db.path)
            .field("last_applied", &self.last_applied)
            .field("membership", &self.membership)
            .field("has_state", &self.has_state)
            .finish()
    }
}

/// Builds a snapshot from the state captured when openraft asked for a
/// builder (the state machine keeps applying meanwhile).
pub struct MdsSnapshotBuilder {
    db: Arc<Db>,
    /// `None` if the MDS had no state to snapshot.
    state: Option<MdsState>,
    last_applied: Option<LogId<MdsId>>,
    membership: Membership,
}

impl RaftSnapshotBuilder<MdsRaftConfig> for MdsSnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<MdsRaftConfig>> {
        let subject = ErrorSubject::Snapshot(None);
        let Some(state) = self.state.take() else {
            return Err(storage_error(
                subject,
                ErrorVerb::Write,
                Error::internal(format!(
                    "MDS Raft database {}: cannot snapshot before this MDS received the cluster state from the leader",
                    self.db.path.display()
                )),
            ));
        };
        let snapshot_id = match self.last_applied {
            Some(id) => format!(
                "{}-{}-{}-{:016x}",
                id.leader_id.term,
                id.leader_id.node_id,
                id.index,
                rand::Rng::gen::<u64>(&mut crate::runtime::thread_rng())
            ),
            None => format!(
                "none-{:016x}",
                rand::Rng::gen::<u64>(&mut crate::runtime::thread_rng())
            ),
        };
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let (bytes, meta) = blocking(&self.db, move |db| {
            let bytes = encode_snapshot_record(&meta, &state)?;
            db.store_snapshot(&meta, &bytes)?;
            Ok((bytes, meta))
        })
        .await
        .map_err(|e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        tracing::debug!(last_log_id = ?meta.last_log_id, size = bytes.len(), "MDS snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<MdsRaftConfig> for MdsStateMachine {
    type SnapshotBuilder = MdsSnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<MdsId>>, Membership)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<RaftResponse>>
    where
        I: IntoIterator<Item = Entry<MdsRaftConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        for entry in entries {
            let response = match entry.payload {
                EntryPayload::Blank => RaftResponse::Empty,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    RaftResponse::Empty
                }
                EntryPayload::Normal(req) => {
                    if !self.has_state {
                        // Replaying commands onto an empty state would
                        // silently diverge from the leader (the initial
                        // state is only in snapshots): stop instead.
                        return Err(storage_error(
                            ErrorSubject::Apply(entry.log_id),
                            ErrorVerb::Write,
                            Error::internal(format!(
                                "MDS Raft database {}: log entry {} arrived before the cluster state; the leader must send a snapshot first (compact its log with compact_log_now)",
                                self.db.path.display(),
                                entry.log_id
                            )),
                        ));
                    }
                    RaftResponse::Commands(
                        req.cmds
                            .into_iter()
                            .map(|cmd| RaftResponse::from_result(self.host.apply_committed(cmd)))
                            .collect(),
                    )
                }
            };
            self.last_applied = Some(entry.log_id);
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MdsSnapshotBuilder {
            db: Arc::clone(&self.db),
            state: self.has_state.then(|| self.host.snapshot_state()),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let write = |e| {
            storage_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        let bytes = snapshot.into_inner();
        let record = decode_snapshot(&bytes, &self.db.path).map_err(write)?;
        if record.meta.last_log_id != meta.last_log_id
            || record.meta.last_membership != meta.last_membership
        {
            return Err(write(Error::corrupt(format!(
                "MDS snapshot {} received for {}: its contents cover {:?}, not {:?}",
                meta.snapshot_id,
                self.db.path.display(),
                record.meta.last_log_id,
                meta.last_log_id
            ))));
        }
        let stored_meta = meta.clone();
        blocking(&self.db, move |db| {
            db.store_snapshot(&stored_meta, &bytes).map(|_| ())
        })
        .await
        .map_err(write)?;
        self.host.install_state(record.state);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.has_state = true;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<MdsRaftConfig>>> {
        let read = |e| storage_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
        let Some(meta) = self.db.snapshot_meta().map_err(read)? else {
            return Ok(None);
        };
        // The initial state covers no log entry: not a Raft snapshot. (A
        // leader only sends snapshots after purging its log, and it
        // purges only entries covered by a real one.)
        if meta.last_log_id.is_none() {
            return Ok(None);
        }
        let bytes = self.db.snapshot_bytes().map_err(read)?.ok_or_else(|| {
            read(Error::corrupt(format!(
                "MDS Raft database {} has snapshot metadata but no snapshot",
                self.db.path.display()
            )))
        })?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

/// The openraft configuration of the MDS group, for MDSes on one LAN (or
/// loopback): heartbeat every 150 ms, election timeout 600-1200 ms (a dead
/// leader is replaced in about 1-2 s), a snapshot every `snapshot_every`
/// applied entries (at least 1; [`DEFAULT_SNAPSHOT_EVERY`] in production),
/// after which the log it covers is purged except the last 100 entries
/// (so briefly lagging followers still catch up from the log).
/// `InvalidArgument` if the result does not validate.
pub fn raft_config(cluster_name: &str, snapshot_every: u64) -> Result<openraft::Config> {
    let snapshot_every = snapshot_every.max(1);
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        // Sending and installing a whole snapshot of a large namespace.
        install_snapshot_timeout: 30_000,
        max_payload_entries: 300,
        replication_lag_threshold: snapshot_every.saturating_mul(2).max(1000),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: 100.min(snapshot_every),
        purge_batch_size: 1,
        ..openraft::Config::default()
    };
    config.validate().map_err(|source| {
        MdsStoreError::RaftConfig {
            cluster: cluster_name.to_string(),
            source,
        }
        .into()
    })
}

/// Takes a snapshot now and purges the log it covers, waiting up to
/// `timeout` for both. Call it on the first MDS right after initializing
/// the group (once it applied its first entries) and before any other MDS
/// joins: the initial state (root attributes chosen by make-mds) is only
/// in snapshots, so a joining MDS must start from a snapshot, which the
/// leader sends only for purged entries. `TimedOut` if it does not finish
/// in time, `Unavailable` if Raft stopped.
pub async fn compact_log_now(raft: &MdsRaft, timeout: Duration) -> Result<()> {
    let fatal = |e: openraft::error::Fatal<MdsId>| {
        let message = format!("MDS Raft stopped while compacting its log: {e}");
        Error::with_source(ErrorKind::Unavailable, message, e)
    };
    let wait_error = |what: &str, e: openraft::metrics::WaitError| match e {
        openraft::metrics::WaitError::Timeout(..) => Error::new(
            ErrorKind::TimedOut,
            format!("MDS Raft did not {what} within {timeout:?}"),
        ),
        e => {
            let message = format!("MDS Raft stopped before it could {what}: {e}");
            Error::with_source(ErrorKind::Unavailable, message, e)
        }
    };
    let applied = raft
        .wait(Some(timeout))
        .metrics(|m| m.last_applied.is_some(), "apply its first entry")
        .await
        .map_err(|e| wait_error("apply its first entry", e))?
        .last_applied;
    raft.trigger().snapshot().await.map_err(fatal)?;
    let snapshot = raft
        .wait(Some(timeout))
        .metrics(|m| m.snapshot >= applied, "take a snapshot")
        .await
        .map_err(|e| wait_error("take a snapshot", e))?
        .snapshot
        .ok_or_else(|| Error::internal("MDS Raft reported no snapshot after taking one"))?;
    raft.trigger()
        .purge_log(snapshot.index)
        .await
        .map_err(fatal)?;
    raft.wait(Some(timeout))
        .metrics(|m| m.purged >= Some(snapshot), "purge its log")
        .await
        .map_err(|e| wait_error("purge its log", e))?;
    Ok(())
}
