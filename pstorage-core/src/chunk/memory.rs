//! An in-memory network of chunk servers, for tests and simulation.
//!
//! [`MemNetwork`] maps addresses to [`ChunkServer`]s and implements
//! [`ChunkConnector`] and [`ControlConnector`] over them, so chain writes
//! run through several servers in one process. An address can be made
//! unreachable to simulate a dead or partitioned chunk server: calls through
//! connections opened before fail too, like a broken TCP connection.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::traits::{
    ChunkConnector, ChunkControl, ChunkService, ControlConnector, ReplicaError, WriteRequest,
};
use crate::types::{ChunkId, ChunkReplicaInfo, CopyProgress, CopyStats, CsId, MapVersion, Replica};

use super::{ChunkServer, ChunkStore};

/// Chunk servers reachable by address, in memory.
///
/// Servers added here hold the network as their connector, and the network
/// holds them: call [`clear`](MemNetwork::clear) to break the cycle when a
/// long-running test wants the memory back.
#[derive(Default)]
pub struct MemNetwork {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    servers: HashMap<String, Arc<ChunkServer>>,
    unreachable: HashSet<String>,
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Arc<MemNetwork> {
        Arc::new(MemNetwork::default())
    }

    /// Creates chunk server `id` over `store` at `addr`, connected to this
    /// network, already serving (as if registered with an MDS; call
    /// `set_serving(false)` to test the gate). Replaces any server at `addr`.
    pub fn add_server(
        self: &Arc<Self>,
        id: CsId,
        addr: &str,
        store: Arc<dyn ChunkStore>,
    ) -> Arc<ChunkServer> {
        let server = Arc::new(ChunkServer::new(id, store, self.clone()));
        server.set_serving(true);
        self.insert(addr, server.clone());
        server
    }

    /// Puts an existing server at `addr` (replacing any other).
    pub fn insert(&self, addr: &str, server: Arc<ChunkServer>) {
        lock(&self.inner).servers.insert(addr.to_string(), server);
    }

    /// Removes the server at `addr`, as if its process ended.
    pub fn remove(&self, addr: &str) -> Option<Arc<ChunkServer>> {
        lock(&self.inner).servers.remove(addr)
    }

    /// The server at `addr`, if any (reachable or not).
    pub fn server(&self, addr: &str) -> Option<Arc<ChunkServer>> {
        lock(&self.inner).servers.get(addr).cloned()
    }

    /// Makes `addr` unreachable (every call fails with `Unavailable`) or
    /// reachable again.
    pub fn set_reachable(&self, addr: &str, reachable: bool) {
        let mut inner = lock(&self.inner);
        if reachable {
            inner.unreachable.remove(addr);
        } else {
            inner.unreachable.insert(addr.to_string());
        }
    }

    /// Drops every server (breaking the server <-> network reference cycle).
    pub fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.servers.clear();
        inner.unreachable.clear();
    }

    fn link(&self, addr: &str) -> Result<Link> {
        resolve(&self.inner, addr)?;
        Ok(Link {
            inner: self.inner.clone(),
            addr: addr.to_string(),
        })
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().expect("memory network lock poisoned")
}

fn resolve(inner: &Mutex<Inner>, addr: &str) -> Result<Arc<ChunkServer>> {
    let inner = lock(inner);
    if inner.unreachable.contains(addr) {
        return Err(Error::unavailable(format!(
            "chunk server at {addr} is unreachable (connection refused): check that it runs"
        )));
    }
    inner.servers.get(addr).cloned().ok_or_else(|| {
        Error::unavailable(format!(
            "no chunk server listens at {addr} (connection refused): check that it runs"
        ))
    })
}

/// A "connection" to one address: every call checks reachability first.
struct Link {
    inner: Arc<Mutex<Inner>>,
    addr: String,
}

impl Link {
    fn server(&self) -> Result<Arc<ChunkServer>> {
        resolve(&self.inner, &self.addr)
    }
}

#[async_trait]
impl ChunkConnector for MemNetwork {
    async fn chunk_service(&self, addr: &str) -> Result<Arc<dyn ChunkService>> {
        Ok(Arc::new(self.link(addr)?))
    }
}

#[async_trait]
impl ControlConnector for MemNetwork {
    async fn chunk_control(&self, addr: &str) -> Result<Arc<dyn ChunkControl>> {
        Ok(Arc::new(self.link(addr)?))
    }
}

#[async_trait]
impl ChunkService for Link {
    async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError> {
        let server = self.server().map_err(ReplicaError::local)?;
        server.write(request).await
    }

    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        self.server()?.read(chunk, version, offset, len).await
    }

    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        ChunkService::flush(self.server()?.as_ref(), chunk, version).await
    }

    async fn block_crcs(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u64>> {
        self.server()?.block_crcs(chunk, version, offset, len).await
    }
}

#[async_trait]
impl ChunkControl for Link {
    async fn create_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
    ) -> Result<()> {
        self.server()?
            .create_chunk(chunk, version, chunk_size)
            .await
    }

    async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        ChunkControl::set_version(self.server()?.as_ref(), chunk, version).await
    }

    async fn delete_chunk(&self, chunk: ChunkId) -> Result<()> {
        self.server()?.delete_chunk(chunk).await
    }

    async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>> {
        self.server()?.list_chunks().await
    }

    async fn replicate_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: Replica,
        rate_bytes_per_s: u64,
    ) -> Result<CopyStats> {
        self.server()?
            .replicate_chunk(chunk, version, chunk_size, source, rate_bytes_per_s)
            .await
    }

    async fn copy_progress(&self, chunk: ChunkId) -> Result<Option<CopyProgress>> {
        self.server()?.copy_progress(chunk).await
    }
}
