//! [`ChunkServer`]: a chunk server's request logic over a [`ChunkStore`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::traits::{
    ChunkConnector, ChunkControl, ChunkService, ReplicaError, WritePayload, WriteRequest,
};
use crate::types::{
    ChunkId, ChunkReplicaInfo, CsId, CsRegistration, MapVersion, RegisterReply, MAX_IO_SIZE,
};

use super::ChunkStore;

/// Store operations on at most this many bytes run on the async task
/// itself (a 4 KiB pwrite into the page cache takes microseconds); larger
/// ones, and everything that syncs, go to tokio's blocking pool.
const INLINE_IO_MAX_BYTES: u64 = 64 << 10;

/// One chunk server: serves the data path ([`ChunkService`]: version-checked
/// reads, writes forwarded down the replica chain, flushes) and the MDS's
/// control operations ([`ChunkControl`]) from a [`ChunkStore`].
///
/// It starts closed: every [`ChunkService`] call fails with `Unavailable`
/// until [`set_serving(true)`](ChunkServer::set_serving), which the daemon
/// calls once it has registered with the MDS and applied its reply
/// ([`registration`](ChunkServer::registration),
/// [`apply_register_reply`](ChunkServer::apply_register_reply)).
/// [`ChunkControl`] works regardless. All methods need a tokio runtime.
pub struct ChunkServer {
    id: CsId,
    store: Arc<dyn ChunkStore>,
    connector: Arc<dyn ChunkConnector>,
    serving: AtomicBool,
}

impl ChunkServer {
    /// A chunk server `id` over `store`, forwarding chain writes through
    /// `connector`. Not serving yet.
    pub fn new(
        id: CsId,
        store: Arc<dyn ChunkStore>,
        connector: Arc<dyn ChunkConnector>,
    ) -> ChunkServer {
        ChunkServer {
            id,
            store,
            connector,
            serving: AtomicBool::new(false),
        }
    }

    /// This chunk server's id.
    pub fn id(&self) -> CsId {
        self.id
    }

    /// The store it serves from.
    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    /// Opens or closes the data path. Close it before re-registering with
    /// an MDS, open it after applying the MDS's reply.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    /// Whether the data path is open.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// What to send the MDS in `register_cs`: every replica held and the
    /// disk space, with `addr` as the data address.
    pub async fn registration(&self, addr: &str) -> Result<CsRegistration> {
        let (chunks, space) = self
            .blocking(|store| Ok((store.list()?, store.space()?)))
            .await?;
        Ok(CsRegistration {
            id: self.id,
            addr: addr.to_string(),
            space,
            chunks,
        })
    }

    /// Deletes the replicas the MDS declared stale or unknown. Call before
    /// [`set_serving(true)`](ChunkServer::set_serving).
    pub async fn apply_register_reply(&self, reply: &RegisterReply) -> Result<()> {
        let delete = reply.delete.clone();
        self.blocking(move |store| {
            for chunk in delete {
                store.delete(chunk)?;
            }
            Ok(())
        })
        .await
    }

    fn check_serving(&self) -> Result<()> {
        if self.is_serving() {
            Ok(())
        } else {
            Err(Error::unavailable(format!(
                "chunk server {} has not registered with the MDS yet: retry shortly",
                self.id
            )))
        }
    }

    fn context(&self, e: Error) -> Error {
        e.context(format_args!("chunk server {}", self.id))
    }

    /// Runs `op` on the blocking pool.
    async fn blocking<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ChunkStore) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || op(store.as_ref()))
            .await
            .map_err(|e| {
                Error::internal(format!(
                    "chunk server {}: a storage task failed: {e}",
                    self.id
                ))
            })?
            .map_err(|e| self.context(e))
    }

    /// Applies a write to the local replica, at `version` only.
    async fn apply_local(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        payload: &WritePayload,
    ) -> Result<()> {
        if payload.len() <= INLINE_IO_MAX_BYTES {
            let result = match payload {
                WritePayload::Data(data) => {
                    self.store.write_checked(chunk, Some(version), offset, data)
                }
                WritePayload::Zeros(len) => {
                    self.store.zero_checked(chunk, Some(version), offset, *len)
                }
            };
            return result.map_err(|e| self.context(e));
        }
        let payload = payload.clone();
        self.blocking(move |store| match &payload {
            WritePayload::Data(data) => store.write_checked(chunk, Some(version), offset, data),
            WritePayload::Zeros(len) => store.zero_checked(chunk, Some(version), offset, *len),
        })
        .await
    }

    /// Fails with `Stale` (naming both versions) unless the replica is at
    /// `version`.
    fn check_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        let actual = self.store.version(chunk).map_err(|e| self.context(e))?;
        super::check_version(chunk, Some(version), actual).map_err(|e| self.context(e))
    }
}

#[async_trait]
impl ChunkService for ChunkServer {
    async fn write(&self, request: WriteRequest) -> Result<(), ReplicaError> {
        self.check_serving().map_err(ReplicaError::local)?;
        let WriteRequest {
            chunk,
            version,
            offset,
            payload,
            chain,
        } = request;
        // Zeros carry no bytes, so truncating a whole chunk is one request.
        if let WritePayload::Data(data) = &payload {
            if data.len() as u64 > MAX_IO_SIZE {
                return Err(ReplicaError::local(Error::invalid(format!(
                    "chunk {chunk:#x}: a write of {} bytes exceeds the limit of {MAX_IO_SIZE}: \
                     split it",
                    data.len()
                ))));
            }
        }
        // Refusing here saves forwarding a write this replica will refuse
        // anyway; the authoritative check is the store's, atomic with the
        // write.
        self.check_version(chunk, version)
            .map_err(ReplicaError::local)?;

        let Some((next, rest)) = chain.split_first() else {
            return self
                .apply_local(chunk, version, offset, &payload)
                .await
                .map_err(ReplicaError::local);
        };
        let forward = async {
            let downstream = self
                .connector
                .chunk_service(&next.addr)
                .await
                .map_err(|e| ReplicaError {
                    failed_cs: Some(next.cs),
                    error: e.context(format_args!(
                        "chunk server {} forwarding chunk {chunk:#x} to chunk server {} ({})",
                        self.id, next.cs, next.addr
                    )),
                })?;
            downstream
                .write(WriteRequest {
                    chunk,
                    version,
                    offset,
                    payload: payload.clone(),
                    chain: rest.to_vec(),
                })
                .await
                .map_err(|e| ReplicaError {
                    failed_cs: Some(e.failed_replica(next.cs)),
                    error: e.error,
                })
        };
        // The forward is polled first so the request is on its way to the
        // next replica while this one writes locally.
        let (forwarded, local) =
            futures::future::join(forward, self.apply_local(chunk, version, offset, &payload))
                .await;
        match (local, forwarded) {
            (Err(e), _) => Err(ReplicaError::local(e)),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    async fn read(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        self.check_serving()?;
        if len > MAX_IO_SIZE {
            return Err(Error::invalid(format!(
                "chunk {chunk:#x}: a read of {len} bytes exceeds the limit of {MAX_IO_SIZE}: split it"
            )));
        }
        if len <= INLINE_IO_MAX_BYTES {
            let mut buf = vec![0u8; len as usize];
            self.store
                .read_checked(chunk, Some(version), offset, &mut buf)
                .map_err(|e| self.context(e))?;
            return Ok(Bytes::from(buf));
        }
        self.blocking(move |store| {
            let mut buf = vec![0u8; len as usize];
            store.read_checked(chunk, Some(version), offset, &mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn flush(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.check_serving()?;
        self.check_version(chunk, version)?;
        self.blocking(move |store| store.flush(chunk)).await
    }
}

#[async_trait]
impl ChunkControl for ChunkServer {
    async fn create_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
    ) -> Result<()> {
        self.blocking(move |store| store.create(chunk, version, chunk_size))
            .await
    }

    async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.blocking(move |store| store.set_version(chunk, version))
            .await
    }

    async fn delete_chunk(&self, chunk: ChunkId) -> Result<()> {
        self.blocking(move |store| store.delete(chunk)).await
    }

    async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>> {
        self.blocking(|store| store.list()).await
    }
}
