//! An in-memory network of chunk servers, for tests and simulation.
//!
//! [`MemNetwork`] maps addresses to [`ChunkServer`]s and implements
//! [`ChunkConnector`] and [`ControlConnector`] over them, so chain writes
//! run through several servers in one process. An address can be made
//! unreachable to simulate a dead or partitioned chunk server: calls through
//! connections opened before fail too, like a broken TCP connection. A
//! server can also be *frozen* (SIGSTOP: connections still open, calls never
//! answer until it is thawed), *slow* (data-path calls take extra time, a
//! disk in an fsync storm; control calls answer at once), or refused to one
//! named client only ([`MemNetwork::client_view`]: a partition between one
//! client and one server).

use crate::traits::CheckedBytes;
use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::traits::{
    ChunkConnector, ChunkControl, ChunkService, ControlConnector, ReplicaError, WritePayload,
    WriteRequest,
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
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<Inner>,
    /// Wakes calls waiting on a frozen server when any server thaws.
    thawed: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    servers: HashMap<String, Arc<ChunkServer>>,
    unreachable: HashSet<String>,
    frozen: HashSet<String>,
    /// Extra latency of every data-path call to an address.
    delay: HashMap<String, Duration>,
    /// (client name, address) pairs whose calls are refused.
    refused: HashSet<(String, String)>,
    /// Data writes to an address still to arrive damaged.
    damaged_writes: HashMap<String, u64>,
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

    /// Freezes the server at `addr` (like SIGSTOP: connections open, every
    /// call, data or control, waits without an answer) or thaws it (the
    /// waiting calls proceed).
    pub fn set_frozen(&self, addr: &str, frozen: bool) {
        {
            let mut inner = lock(&self.inner);
            if frozen {
                inner.frozen.insert(addr.to_string());
            } else {
                inner.frozen.remove(addr);
            }
        }
        if !frozen {
            self.inner.thawed.notify_waiters();
        }
    }

    /// Makes every data-path call to `addr` take `delay` longer (a slow
    /// disk); control calls (the MDS's) are not delayed. `Duration::ZERO`
    /// ends it.
    pub fn set_data_delay(&self, addr: &str, delay: Duration) {
        let mut inner = lock(&self.inner);
        if delay.is_zero() {
            inner.delay.remove(addr);
        } else {
            inner.delay.insert(addr.to_string(), delay);
        }
    }

    /// Makes the next `count` data writes sent to `addr` (by clients or by
    /// chunk servers forwarding down a chain) arrive with the first byte of
    /// their data flipped and their CRCs as sent: bytes changed on the wire.
    pub fn damage_writes(&self, addr: &str, count: u64) {
        lock(&self.inner)
            .damaged_writes
            .insert(addr.to_string(), count);
    }

    /// Refuses (or allows again) every call from the client named `client`
    /// (see [`client_view`](MemNetwork::client_view)) to `addr`; everyone
    /// else still reaches it.
    pub fn set_refused(&self, client: &str, addr: &str, refused: bool) {
        let pair = (client.to_string(), addr.to_string());
        let mut inner = lock(&self.inner);
        if refused {
            inner.refused.insert(pair);
        } else {
            inner.refused.remove(&pair);
        }
    }

    /// This network as the client named `client` sees it: a connector
    /// subject to [`set_refused`](MemNetwork::set_refused) for that name.
    pub fn client_view(&self, client: &str) -> Arc<MemClientView> {
        Arc::new(MemClientView {
            inner: self.inner.clone(),
            client: client.to_string(),
        })
    }

    /// Drops every server (breaking the server <-> network reference cycle).
    pub fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.servers.clear();
        inner.unreachable.clear();
        inner.frozen.clear();
        drop(inner);
        self.inner.thawed.notify_waiters();
    }

    fn link(&self, addr: &str) -> Result<Link> {
        link(&self.inner, None, addr)
    }
}

/// A view of a [`MemNetwork`] from one named client.
pub struct MemClientView {
    inner: Arc<Shared>,
    client: String,
}

#[async_trait]
impl ChunkConnector for MemClientView {
    async fn chunk_service(&self, addr: &str) -> Result<Arc<dyn ChunkService>> {
        Ok(Arc::new(link(&self.inner, Some(&self.client), addr)?))
    }
}

fn link(inner: &Arc<Shared>, client: Option<&str>, addr: &str) -> Result<Link> {
    let link = Link {
        inner: inner.clone(),
        client: client.map(str::to_string),
        addr: addr.to_string(),
    };
    resolve(&lock(inner), client, addr)?;
    Ok(link)
}

fn lock(inner: &Shared) -> MutexGuard<'_, Inner> {
    inner.state.lock()
}

fn resolve(inner: &Inner, client: Option<&str>, addr: &str) -> Result<Arc<ChunkServer>> {
    if let Some(client) = client {
        if inner
            .refused
            .contains(&(client.to_string(), addr.to_string()))
        {
            return Err(Error::unavailable(format!(
                "chunk server at {addr} refuses {client} (connection refused)"
            )));
        }
    }
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

/// A "connection" to one address: every call checks reachability first,
/// waits while the server is frozen, and pays its data-path delay.
struct Link {
    inner: Arc<Shared>,
    client: Option<String>,
    addr: String,
}

impl Link {
    async fn server(&self, data_path: bool) -> Result<Arc<ChunkServer>> {
        let (server, delay) = self.reach(data_path).await?;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        Ok(server)
    }

    /// The server, once reachable and not frozen, and the delay its
    /// data-path calls pay now.
    async fn reach(&self, data_path: bool) -> Result<(Arc<ChunkServer>, Option<Duration>)> {
        let (server, delay) = loop {
            let thawed = self.inner.thawed.notified();
            tokio::pin!(thawed);
            // Registered before the check, so a thaw in between is not missed.
            thawed.as_mut().enable();
            {
                let inner = lock(&self.inner);
                let server = resolve(&inner, self.client.as_deref(), &self.addr)?;
                if !inner.frozen.contains(&self.addr) {
                    let delay = inner.delay.get(&self.addr).copied();
                    break (server, delay.filter(|_| data_path));
                }
            }
            thawed.await;
        };
        Ok((server, delay))
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
    async fn write(&self, mut request: WriteRequest) -> Result<(), ReplicaError> {
        let (server, delay) = self.reach(true).await.map_err(ReplicaError::local)?;
        if let WritePayload::Data(data) = &request.payload {
            let damage = {
                let mut inner = lock(&self.inner);
                match inner.damaged_writes.get_mut(&self.addr) {
                    Some(n) if *n > 0 && !data.is_empty() => {
                        *n -= 1;
                        true
                    }
                    _ => false,
                }
            };
            if damage {
                let mut bytes = data.to_vec();
                bytes[0] ^= 0x01;
                request.payload = WritePayload::Data(bytes.into());
            }
        }
        // Once sent, a write is executed even if its caller stops waiting
        // (as over TCP): a slow server applies a timed-out attempt late.
        let sent = tokio::spawn(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            server.write(request).await
        });
        sent.await.unwrap_or_else(|e| {
            Err(ReplicaError::local(crate::Error::internal(format!(
                "the write task ended: {e}"
            ))))
        })
    }

    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<CheckedBytes> {
        self.server(true)
            .await?
            .read(chunk, version, offset, len)
            .await
    }

    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        ChunkService::flush(self.server(true).await?.as_ref(), chunk, version).await
    }

    async fn block_crcs(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u64>> {
        self.server(true)
            .await?
            .block_crcs(chunk, version, offset, len)
            .await
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
        self.server(false)
            .await?
            .create_chunk(chunk, version, chunk_size)
            .await
    }

    async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        ChunkControl::set_version(self.server(false).await?.as_ref(), chunk, version).await
    }

    async fn lend_for_repair(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        ChunkControl::lend_for_repair(self.server(false).await?.as_ref(), chunk, version).await
    }

    async fn zero_tail(&self, chunk: ChunkId, version: MapVersion, offset: u64) -> Result<()> {
        self.server(false)
            .await?
            .zero_tail(chunk, version, offset)
            .await
    }

    async fn delete_chunk(&self, chunk: ChunkId) -> Result<()> {
        self.server(false).await?.delete_chunk(chunk).await
    }

    async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>> {
        self.server(false).await?.list_chunks().await
    }

    async fn replicate_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: Replica,
        rate_bytes_per_s: u64,
    ) -> Result<CopyStats> {
        self.server(false)
            .await?
            .replicate_chunk(chunk, version, chunk_size, source, rate_bytes_per_s)
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.server(false).await?.ping().await
    }

    async fn copy_progress(&self, chunk: ChunkId) -> Result<Option<CopyProgress>> {
        self.server(false).await?.copy_progress(chunk).await
    }
}
