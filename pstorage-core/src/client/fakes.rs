//! In-memory fakes of the MDS and chunk servers for the client's unit tests.
//!
//! The fake MDS keeps a namespace, chunk maps with versions and 3 replicas
//! per chunk (placed on the first 3 servers of its placement list), and
//! behaves like the contract in `traits.rs`: failure reports drop the
//! replica and bump the version on the survivors, `Unavailable` below
//! `replicas_min`. Fake chunk servers apply chain writes and forward them,
//! and can be told to fail, be unreachable, answer corrupt data or hold
//! another version.

use crate::traits::CheckedBytes;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::traits::{
    ChunkConnector, ChunkService, MetadataService, ReplicaError, WritePayload, WriteRequest,
};
use crate::types::*;

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

#[derive(Default)]
struct StoredReplica {
    version: MapVersion,
    chunk_size: u64,
    data: Vec<u8>,
}

#[derive(Default)]
pub struct CsState {
    chunks: HashMap<ChunkId, StoredReplica>,
    /// Fail every write received with this kind.
    pub fail_writes: Option<ErrorKind>,
    /// Fail every read with this kind.
    pub fail_reads: Option<ErrorKind>,
    /// Refuse connections and forwarded writes.
    pub unreachable: bool,
    /// Answer reads with `Corrupt` (a failed block checksum).
    pub corrupt: bool,
    /// Answer reads that touch these 4 KiB blocks (of any chunk) with
    /// `Corrupt`.
    pub corrupt_blocks: std::collections::BTreeSet<u64>,
    pub writes: u64,
    pub reads: u64,
    pub flushes: u64,
    /// Fail every flush received with this kind.
    pub fail_flushes: Option<ErrorKind>,
    /// How long a flush takes before it counts as done.
    pub flush_delay: std::time::Duration,
    /// Flushes that finished (after `flush_delay`).
    pub flushes_done: u64,
}

/// A fake chunk server.
pub struct FakeCs {
    pub id: CsId,
    pub addr: String,
    pub state: Mutex<CsState>,
    cluster: Weak<FakeCluster>,
}

impl FakeCs {
    pub fn create(&self, chunk: ChunkId, version: MapVersion, chunk_size: u64) {
        lock(&self.state).chunks.insert(
            chunk,
            StoredReplica {
                version,
                chunk_size,
                data: Vec::new(),
            },
        );
    }

    pub fn set_version(&self, chunk: ChunkId, version: MapVersion) {
        if let Some(r) = lock(&self.state).chunks.get_mut(&chunk) {
            r.version = version;
        }
    }

    pub fn version(&self, chunk: ChunkId) -> Option<MapVersion> {
        lock(&self.state).chunks.get(&chunk).map(|r| r.version)
    }

    /// The stored bytes of a replica (unwritten tail not included).
    pub fn data(&self, chunk: ChunkId) -> Option<Vec<u8>> {
        lock(&self.state).chunks.get(&chunk).map(|r| r.data.clone())
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut CsState) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// The replica falls back to `data` (a power cut lost what was not
    /// flushed).
    pub fn fall_back(&self, chunk: ChunkId, data: Vec<u8>) {
        if let Some(r) = lock(&self.state).chunks.get_mut(&chunk) {
            r.data = data;
        }
    }

    fn check(
        st: &mut CsState,
        id: CsId,
        chunk: ChunkId,
        version: MapVersion,
    ) -> Result<&mut StoredReplica> {
        let r = st.chunks.get_mut(&chunk).ok_or_else(|| {
            Error::not_found(format!("CS {id} holds no replica of chunk {chunk:#x}"))
        })?;
        if r.version != version {
            return Err(Error::stale(format!(
                "CS {id}: chunk {chunk:#x} is at version {}, request has {version}",
                r.version
            )));
        }
        Ok(r)
    }
}

#[async_trait]
impl ChunkService for FakeCs {
    async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError> {
        // Yield once so concurrent I/Os really interleave.
        tokio::task::yield_now().await;
        {
            let mut st = lock(&self.state);
            st.writes += 1;
            if st.unreachable {
                return Err(ReplicaError::local(Error::unavailable(format!(
                    "CS {} is unreachable",
                    self.id
                ))));
            }
            if let Some(kind) = st.fail_writes {
                return Err(ReplicaError::local(Error::new(
                    kind,
                    format!("CS {} was told to fail writes", self.id),
                )));
            }
            let id = self.id;
            let r = Self::check(&mut st, id, request.chunk, request.version)
                .map_err(ReplicaError::local)?;
            let end = request.offset + request.payload.len();
            if end > r.chunk_size {
                return Err(ReplicaError::local(Error::invalid(format!(
                    "write ends at {end}, beyond the chunk size {}",
                    r.chunk_size
                ))));
            }
            if r.data.len() < end as usize {
                r.data.resize(end as usize, 0);
            }
            let range = request.offset as usize..end as usize;
            match &request.payload {
                WritePayload::Data(b) => r.data[range].copy_from_slice(b),
                WritePayload::Zeros(_) => r.data[range].fill(0),
            }
        }
        let Some((next, rest)) = request.chain.split_first() else {
            return Ok(());
        };
        let cluster = self.cluster.upgrade().expect("cluster alive");
        let service = cluster
            .chunk_service(&next.addr)
            .await
            .map_err(|error| ReplicaError {
                failed_cs: Some(next.cs),
                error,
            })?;
        service
            .write(WriteRequest {
                chain: rest.to_vec(),
                ..request
            })
            .await
            .map_err(|e| ReplicaError {
                failed_cs: Some(e.failed_replica(next.cs)),
                error: e.error,
            })
    }

    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<CheckedBytes> {
        tokio::task::yield_now().await;
        let mut st = lock(&self.state);
        st.reads += 1;
        if st.unreachable {
            return Err(Error::unavailable(format!("CS {} is unreachable", self.id)));
        }
        if let Some(kind) = st.fail_reads {
            return Err(Error::new(kind, format!("CS {} fails reads", self.id)));
        }
        let first = offset / crate::types::BLOCK_SIZE;
        let last = (offset + len.max(1) - 1) / crate::types::BLOCK_SIZE;
        if st.corrupt || st.corrupt_blocks.range(first..=last).next().is_some() {
            return Err(Error::corrupt(format!(
                "CS {}: block checksum mismatch in chunk {chunk:#x}",
                self.id
            )));
        }
        let id = self.id;
        let r = Self::check(&mut st, id, chunk, version)?;
        if offset + len > r.chunk_size {
            return Err(Error::invalid("read beyond the chunk"));
        }
        let mut out = vec![0u8; len as usize];
        let start = (offset as usize).min(r.data.len());
        let end = ((offset + len) as usize).min(r.data.len());
        out[..end - start].copy_from_slice(&r.data[start..end]);
        Ok(CheckedBytes::new(offset, Bytes::from(out)))
    }

    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        let delay = {
            let mut st = lock(&self.state);
            if st.unreachable {
                return Err(Error::unavailable(format!("CS {} is unreachable", self.id)));
            }
            let id = self.id;
            Self::check(&mut st, id, chunk, version)?;
            st.flushes += 1;
            if let Some(kind) = st.fail_flushes {
                return Err(Error::new(
                    kind,
                    format!("CS {}: injected flush failure", self.id),
                ));
            }
            st.flush_delay
        };
        tokio::time::sleep(delay).await;
        lock(&self.state).flushes_done += 1;
        Ok(())
    }

    /// Entries computed from the stored bytes: 0 for an all-zero block
    /// (this fake does not tell unwritten from zeroed).
    async fn block_crcs(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u64>> {
        let mut st = lock(&self.state);
        if st.unreachable {
            return Err(Error::unavailable(format!("CS {} is unreachable", self.id)));
        }
        let id = self.id;
        let r = Self::check(&mut st, id, chunk, version)?;
        if !offset.is_multiple_of(BLOCK_SIZE)
            || !len.is_multiple_of(BLOCK_SIZE)
            || offset + len > r.chunk_size
        {
            return Err(Error::invalid(
                "CRC entries of unaligned blocks or beyond the chunk",
            ));
        }
        let bs = BLOCK_SIZE as usize;
        Ok((offset / BLOCK_SIZE..(offset + len) / BLOCK_SIZE)
            .map(|b| {
                let mut block = vec![0u8; bs];
                let start = (b as usize * bs).min(r.data.len());
                let end = (start + bs).min(r.data.len());
                block[..end - start].copy_from_slice(&r.data[start..end]);
                if block.iter().all(|&x| x == 0) {
                    0
                } else {
                    crate::chunk::encode_block_crc(crate::chunk::crc64(&block))
                }
            })
            .collect())
    }
}

/// The fake chunk servers, reachable by address `csN`.
pub struct FakeCluster {
    servers: Mutex<BTreeMap<CsId, Arc<FakeCs>>>,
}

impl FakeCluster {
    pub fn new(count: u32) -> Arc<FakeCluster> {
        Arc::new_cyclic(|weak: &Weak<FakeCluster>| {
            let servers = (1..=count)
                .map(|id| {
                    (
                        CsId(id),
                        Arc::new(FakeCs {
                            id: CsId(id),
                            addr: format!("cs{id}"),
                            state: Mutex::new(CsState::default()),
                            cluster: weak.clone(),
                        }),
                    )
                })
                .collect();
            FakeCluster {
                servers: Mutex::new(servers),
            }
        })
    }

    pub fn cs(&self, id: CsId) -> Arc<FakeCs> {
        lock(&self.servers)[&id].clone()
    }
}

#[async_trait]
impl ChunkConnector for FakeCluster {
    async fn chunk_service(&self, addr: &str) -> Result<Arc<dyn ChunkService>> {
        let cs = lock(&self.servers)
            .values()
            .find(|cs| cs.addr == addr)
            .cloned()
            .ok_or_else(|| Error::unavailable(format!("no chunk server at {addr}")))?;
        if lock(&cs.state).unreachable {
            return Err(Error::unavailable(format!(
                "connecting to CS {} ({addr}): connection refused",
                cs.id
            )));
        }
        Ok(cs)
    }
}

struct FakeFile {
    stat: Stat,
    chunks: BTreeMap<u64, ChunkMap>,
}

pub struct FakeLease {
    path: String,
    mode: LeaseMode,
}

#[derive(Default)]
pub struct MdsState {
    dirs: BTreeMap<String, Stat>,
    files: BTreeMap<String, FakeFile>,
    pub leases: HashMap<LeaseId, FakeLease>,
    next_ino: u64,
    next_chunk: u64,
    next_lease: u64,
    /// Servers new chunks go to, in chain order (the first 3 are used).
    pub placement: Vec<CsId>,
    /// Every failure report received, outdated or refused ones included.
    pub reports: Vec<(ChunkId, MapVersion, CsId, FailureReason)>,
    pub chunk_map_calls: u64,
    /// Answer this many of the next chunk_map calls with `Unavailable`
    /// (an MDS leader change).
    pub chunk_map_failures: u32,
    pub renewals: u64,
    /// Answer the next renew calls with these errors (front first).
    pub renew_failures: std::collections::VecDeque<Error>,
    /// How long each failure of `renew_failures` takes to arrive (front
    /// first; none: at once), as a call that times out does.
    pub renew_failure_delays: std::collections::VecDeque<Duration>,
    /// When each renew call arrived, answered or failed.
    pub renew_times: Vec<tokio::time::Instant>,
    pub commits: Vec<u64>,
    pub closes: u64,
    /// Closes to answer `Ok` without releasing (a release lost in a
    /// fail-over: the real MDS answers before it commits).
    pub lose_closes: u64,
}

/// A fake MDS.
pub struct FakeMds {
    pub state: Mutex<MdsState>,
    cluster: Arc<FakeCluster>,
    pub lease_ms: u64,
    /// Delay of every chunk_map call, to widen races in tests.
    pub chunk_map_delay: Duration,
    /// Data-path deadlines handed out at open.
    pub io_timeouts: crate::types::IoTimeouts,
}

fn parent_of(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => path[..i].to_string(),
    }
}

fn normalize(path: &str) -> Result<String> {
    let parts = split_path(path)?;
    Ok(format!("/{}", parts.join("/")))
}

impl FakeMds {
    pub fn new(cluster: Arc<FakeCluster>, chunk_size: u64) -> FakeMds {
        let mut state = MdsState {
            next_ino: 2,
            next_chunk: 0x100,
            next_lease: 1,
            placement: vec![CsId(1), CsId(2), CsId(3)],
            ..Default::default()
        };
        state.dirs.insert(
            "/".into(),
            Stat {
                ino: ROOT_INODE,
                kind: InodeKind::Dir,
                size: 0,
                mode: Perms::DIR.mode,
                uid: 0,
                gid: 0,
                nlink: 2,
                rdev: 0,
                atime: Timestamp::default(),
                mtime: Timestamp::default(),
                ctime: Timestamp::default(),
                attrs: FileAttrs {
                    replicas: Replicas { norm: 3, min: 2 },
                    chunk_size,
                    ..Default::default()
                },
            },
        );
        FakeMds {
            state: Mutex::new(state),
            cluster,
            lease_ms: 60_000,
            io_timeouts: crate::types::IoTimeouts::default(),
            chunk_map_delay: Duration::ZERO,
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut MdsState) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// The current map of chunk `index` of `path`.
    pub fn map(&self, path: &str, index: u64) -> Option<ChunkMap> {
        lock(&self.state).files[path].chunks.get(&index).cloned()
    }

    pub fn size(&self, path: &str) -> u64 {
        lock(&self.state).files[path].stat.size
    }

    /// Bumps the version of a chunk on the MDS and all its replicas, as a
    /// re-replication would; cached client maps become stale.
    pub fn bump_version(&self, path: &str, index: u64) -> ChunkMap {
        let mut st = lock(&self.state);
        let map = st
            .files
            .get_mut(path)
            .unwrap()
            .chunks
            .get_mut(&index)
            .unwrap();
        map.version += 1;
        for r in &map.replicas {
            self.cluster.cs(r.cs).set_version(map.chunk, map.version);
        }
        map.clone()
    }

    /// Forgets a lease, as its expiry would.
    pub fn revoke_all_leases(&self) {
        lock(&self.state).leases.clear();
    }

    fn lease(st: &MdsState, lease: LeaseId) -> Result<&FakeLease> {
        st.leases
            .get(&lease)
            .ok_or_else(|| Error::stale(format!("lease {lease} expired")))
    }
}

#[async_trait]
impl MetadataService for FakeMds {
    async fn open_with(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        _op: Option<OpTag>,
    ) -> Result<OpenReply> {
        let path = normalize(path)?;
        let mut st = lock(&self.state);
        if st.dirs.contains_key(&path) {
            return Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path} is a directory"),
            ));
        }
        let exists = st.files.contains_key(&path);
        if exists && flags.create && flags.exclusive {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{path} exists"),
            ));
        }
        if !exists {
            if !flags.create {
                return Err(Error::not_found(format!("{path} does not exist")));
            }
            let parent = st
                .dirs
                .get(&parent_of(&path))
                .cloned()
                .ok_or_else(|| Error::not_found(format!("parent of {path} does not exist")))?;
            let ino = st.next_ino;
            st.next_ino += 1;
            st.files.insert(
                path.clone(),
                FakeFile {
                    stat: Stat {
                        ino: InodeId(ino),
                        kind: InodeKind::File,
                        size: 0,
                        mode: perms.mode,
                        uid: perms.uid,
                        gid: perms.gid,
                        nlink: 1,
                        rdev: 0,
                        atime: Timestamp::default(),
                        mtime: Timestamp::default(),
                        ctime: Timestamp::default(),
                        attrs: parent.attrs,
                    },
                    chunks: BTreeMap::new(),
                },
            );
        }
        let conflict = st
            .leases
            .values()
            .any(|l| l.path == path && (l.mode == LeaseMode::Write || mode == LeaseMode::Write));
        if conflict {
            return Err(Error::new(ErrorKind::Busy, format!("{path} is leased")));
        }
        if flags.truncate {
            let f = st.files.get_mut(&path).unwrap();
            f.stat.size = 0;
            f.chunks.clear();
        }
        let id = LeaseId(st.next_lease);
        st.next_lease += 1;
        st.leases.insert(
            id,
            FakeLease {
                path: path.clone(),
                mode,
            },
        );
        let stat = st.files[&path].stat.clone();
        Ok(OpenReply {
            lease: Lease {
                id,
                ino: stat.ino,
                mode,
                duration_ms: self.lease_ms,
            },
            stat,
            io_timeouts: self.io_timeouts,
            // As an MDS older than the field.
            parent: None,
        })
    }

    async fn renew(&self, lease: LeaseId) -> Result<()> {
        let (failure, delay) = {
            let mut st = lock(&self.state);
            st.renew_times.push(tokio::time::Instant::now());
            let failure = st.renew_failures.pop_front();
            let delay = failure.as_ref().and(st.renew_failure_delays.pop_front());
            (failure, delay)
        };
        if let Some(e) = failure {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            return Err(e);
        }
        let mut st = lock(&self.state);
        Self::lease(&st, lease)?;
        st.renewals += 1;
        Ok(())
    }

    async fn close(&self, lease: LeaseId) -> Result<()> {
        let mut st = lock(&self.state);
        st.closes += 1;
        if st.lose_closes > 0 {
            st.lose_closes -= 1;
            return Ok(());
        }
        st.leases.remove(&lease);
        Ok(())
    }

    async fn stat(&self, path: &str) -> Result<Stat> {
        let path = normalize(path)?;
        let st = lock(&self.state);
        st.dirs
            .get(&path)
            .or_else(|| st.files.get(&path).map(|f| &f.stat))
            .cloned()
            .ok_or_else(|| Error::not_found(format!("{path} does not exist")))
    }

    async fn mkdir_with(
        &self,
        path: &str,
        parents: bool,
        perms: Perms,
        _op: Option<OpTag>,
    ) -> Result<Stat> {
        let path = normalize(path)?;
        let mut st = lock(&self.state);
        if st.files.contains_key(&path) || (st.dirs.contains_key(&path) && !parents) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{path} exists"),
            ));
        }
        // Every missing directory from the top down.
        let mut missing = vec![];
        let mut p = path.clone();
        while !st.dirs.contains_key(&p) {
            if st.files.contains_key(&p) {
                return Err(Error::new(
                    ErrorKind::NotADirectory,
                    format!("{p} is a file"),
                ));
            }
            missing.push(p.clone());
            p = parent_of(&p);
        }
        if missing.len() > 1 && !parents {
            return Err(Error::not_found(format!("parent of {path} does not exist")));
        }
        for dir in missing.into_iter().rev() {
            let mut stat = st.dirs[&parent_of(&dir)].clone();
            stat.ino = InodeId(st.next_ino);
            (stat.mode, stat.uid, stat.gid) = (perms.mode, perms.uid, perms.gid);
            st.next_ino += 1;
            st.dirs.insert(dir, stat);
        }
        Ok(st.dirs[&path].clone())
    }

    async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let path = normalize(path)?;
        let st = lock(&self.state);
        if !st.dirs.contains_key(&path) {
            return Err(Error::not_found(format!("{path} is not a directory")));
        }
        let mut out: Vec<DirEntry> = st
            .dirs
            .iter()
            .filter(|(p, _)| p.as_str() != "/")
            .map(|(p, s)| (p, s.clone()))
            .chain(st.files.iter().map(|(p, f)| (p, f.stat.clone())))
            .filter(|(p, _)| parent_of(p) == path)
            .map(|(p, stat)| DirEntry {
                name: p.rsplit('/').next().unwrap().to_string(),
                stat,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn unlink(&self, path: &str, _op: Option<OpTag>) -> Result<()> {
        let path = normalize(path)?;
        let mut st = lock(&self.state);
        if st.files.contains_key(&path) {
            if st.leases.values().any(|l| l.path == path) {
                return Err(Error::new(ErrorKind::Busy, format!("{path} is open")));
            }
            st.files.remove(&path);
            return Ok(());
        }
        if st.dirs.contains_key(&path) {
            let prefix = format!("{path}/");
            if st
                .files
                .keys()
                .chain(st.dirs.keys())
                .any(|p| p.starts_with(&prefix))
            {
                return Err(Error::new(
                    ErrorKind::NotEmpty,
                    format!("{path} is not empty"),
                ));
            }
            st.dirs.remove(&path);
            return Ok(());
        }
        Err(Error::not_found(format!("{path} does not exist")))
    }

    async fn rename_with(
        &self,
        from: &str,
        to: &str,
        _flags: RenameFlags,
        _op: Option<OpTag>,
    ) -> Result<()> {
        let (from, to) = (normalize(from)?, normalize(to)?);
        let mut st = lock(&self.state);
        if let Some(f) = st.files.remove(&from) {
            st.files.insert(to, f);
            return Ok(());
        }
        let Some(d) = st.dirs.remove(&from) else {
            return Err(Error::not_found(format!("{from} does not exist")));
        };
        st.dirs.insert(to.clone(), d);
        let prefix = format!("{from}/");
        let moved: Vec<String> = st
            .dirs
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .cloned()
            .collect();
        for p in moved {
            let s = st.dirs.remove(&p).unwrap();
            st.dirs.insert(format!("{to}/{}", &p[prefix.len()..]), s);
        }
        let moved: Vec<String> = st
            .files
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .cloned()
            .collect();
        for p in moved {
            let f = st.files.remove(&p).unwrap();
            st.files.insert(format!("{to}/{}", &p[prefix.len()..]), f);
        }
        Ok(())
    }

    async fn set_attr(
        &self,
        path: &str,
        update: AttrUpdate,
        recursive: bool,
        _op: Option<OpTag>,
    ) -> Result<()> {
        let path = normalize(path)?;
        let mut st = lock(&self.state);
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut found = false;
        for (p, s) in st.dirs.iter_mut() {
            if *p == path || (recursive && p.starts_with(&prefix)) {
                update.apply_to(&mut s.attrs);
                found = true;
            }
        }
        for (p, f) in st.files.iter_mut() {
            if *p == path || (recursive && p.starts_with(&prefix)) {
                update.apply_to(&mut f.stat.attrs);
                found = true;
            }
        }
        if found {
            Ok(())
        } else {
            Err(Error::not_found(format!("{path} does not exist")))
        }
    }

    async fn chunk_map(
        &self,
        lease: LeaseId,
        index: u64,
        allocate: bool,
    ) -> Result<Option<ChunkMap>> {
        if !self.chunk_map_delay.is_zero() {
            tokio::time::sleep(self.chunk_map_delay).await;
        }
        let mut st = lock(&self.state);
        st.chunk_map_calls += 1;
        if st.chunk_map_failures > 0 {
            st.chunk_map_failures -= 1;
            return Err(Error::unavailable("MDS leader election in progress"));
        }
        let (path, mode) = {
            let l = Self::lease(&st, lease)?;
            (l.path.clone(), l.mode)
        };
        if allocate && mode != LeaseMode::Write {
            return Err(Error::new(
                ErrorKind::BadHandle,
                "allocation needs a write lease",
            ));
        }
        let chunk_id = st.next_chunk;
        let placement = st.placement.clone();
        let file = st.files.get_mut(&path).unwrap();
        if let Some(m) = file.chunks.get(&index) {
            return Ok(Some(m.clone()));
        }
        if !allocate {
            return Ok(None);
        }
        let chunk_size = file.stat.attrs.chunk_size;
        let replicas: Vec<Replica> = placement
            .iter()
            .take(file.stat.attrs.replicas.norm as usize)
            .map(|&cs| Replica {
                cs,
                addr: format!("cs{cs}"),
            })
            .collect();
        for r in &replicas {
            self.cluster
                .cs(r.cs)
                .create(ChunkId(chunk_id), MapVersion(1), chunk_size);
        }
        let map = ChunkMap {
            chunk: ChunkId(chunk_id),
            index,
            version: MapVersion(1),
            replicas,
        };
        file.chunks.insert(index, map.clone());
        st.next_chunk += 1;
        Ok(Some(map))
    }

    async fn report_failure(
        &self,
        lease: LeaseId,
        chunk: ChunkId,
        version: MapVersion,
        cs: CsId,
        reason: FailureReason,
    ) -> Result<ChunkMap> {
        let mut st = lock(&self.state);
        st.reports.push((chunk, version, cs, reason));
        let path = Self::lease(&st, lease)?.path.clone();
        let file = st.files.get_mut(&path).unwrap();
        let min = file.stat.attrs.replicas.min as usize;
        let map = file
            .chunks
            .values_mut()
            .find(|m| m.chunk == chunk)
            .ok_or_else(|| Error::not_found(format!("chunk {chunk:#x} is not in {path}")))?;
        if version < map.version || !map.replicas.iter().any(|r| r.cs == cs) {
            return Ok(map.clone());
        }
        if map.replicas.len() - 1 < min {
            return Err(Error::unavailable(format!(
                "chunk {chunk:#x}: {} of {min} required replicas would remain without CS {cs}",
                map.replicas.len() - 1
            )));
        }
        map.replicas.retain(|r| r.cs != cs);
        map.version += 1;
        for r in &map.replicas {
            self.cluster.cs(r.cs).set_version(chunk, map.version);
        }
        Ok(map.clone())
    }

    async fn commit_size(&self, lease: LeaseId, size: u64) -> Result<()> {
        let mut st = lock(&self.state);
        let path = Self::lease(&st, lease)?.path.clone();
        st.commits.push(size);
        let f = st.files.get_mut(&path).unwrap();
        f.stat.size = f.stat.size.max(size);
        Ok(())
    }

    async fn truncate(&self, lease: LeaseId, size: u64) -> Result<()> {
        let mut st = lock(&self.state);
        let path = Self::lease(&st, lease)?.path.clone();
        let f = st.files.get_mut(&path).unwrap();
        f.stat.size = size;
        let first_gone = size.div_ceil(f.stat.attrs.chunk_size);
        f.chunks.retain(|index, _| *index < first_gone);
        Ok(())
    }

    async fn file_chunks(&self, path: &str) -> Result<Vec<ChunkMap>> {
        let path = normalize(path)?;
        let st = lock(&self.state);
        let f = st
            .files
            .get(&path)
            .ok_or_else(|| Error::not_found(format!("{path} does not exist")))?;
        Ok(f.chunks.values().cloned().collect())
    }

    async fn cluster_status(&self) -> Result<ClusterStatus> {
        let st = lock(&self.state);
        Ok(ClusterStatus {
            cluster_name: "fake".into(),
            health: ClusterHealth::Healthy,
            mds: vec![],
            cs: vec![],
            files: st.files.len() as u64,
            dirs: st.dirs.len() as u64,
            chunks: st.files.values().map(|f| f.chunks.len() as u64).sum(),
            chunk_counts: ChunkCounts::default(),
            replication: ReplicationStatus::default(),
            logical_bytes: st.files.values().map(|f| f.stat.size).sum(),
            tiers: Vec::new(),
            rebalance: RebalanceStatus::default(),
            warnings: Vec::new(),
        })
    }

    // Administration is not what the client tests exercise: the fake has
    // no parameters, events or chunk servers to remove.
    async fn get_config(&self) -> Result<Vec<ConfigEntry>> {
        Ok(Vec::new())
    }

    async fn set_config(&self, key: &str, _value: u64) -> Result<()> {
        Err(Error::invalid(format!(
            "unknown cluster parameter {key:?}: the fake MDS has none"
        )))
    }

    async fn event_log(&self, _after_seq: u64) -> Result<Vec<Event>> {
        Ok(Vec::new())
    }

    async fn remove_cs(&self, cs: CsId, _force: bool) -> Result<()> {
        Err(Error::not_found(format!(
            "chunk server {cs} is not known to the fake MDS"
        )))
    }
}
