//! The `ChunkControl` interface: the MDS's control of chunk servers over
//! the network.
//!
//! The chunk server serves its `ChunkControl` on an
//! [`RpcServerThread`](crate::actor::RpcServerThread); the MDS reaches it
//! through [`ControlClient`], usually via [`TcpControlConnector`].

use parking_lot::Mutex;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use pstorage_core::traits::{ChunkControl, ControlConnector};
use pstorage_core::types::{
    ChunkId, ChunkReplicaInfo, CopyProgress, CopyStats, MapVersion, Replica, ReplicaPage,
};
use pstorage_core::{Error, Result};

use crate::actor::{ClientActor, ClientOptions, Dialer};
use crate::generated::pstorage_capnp::chunk_control;
use crate::wire::{decode_request, WireReply, WireStruct};

// ---------------------------------------------------------------------------
// Server

/// Serves one connection's `ChunkControl` calls from the local chunk server.
struct ControlServer {
    control: Arc<dyn ChunkControl>,
}

/// The bootstrap capability of a `ChunkControl` connection.
/// Every call is checked against the role of `peer` ([`crate::roles`]).
pub(crate) fn bootstrap(
    control: Arc<dyn ChunkControl>,
    peer: crate::pki::Peer,
) -> capnp::capability::Client {
    let dispatch =
        <chunk_control::Client as capnp::capability::FromServer<ControlServer>>::from_server(
            Rc::new(ControlServer { control }),
        );
    crate::roles::Gate::new(dispatch, peer, crate::roles::control_allows, "ChunkControl")
        .into_client()
}

impl chunk_control::Server for ControlServer {
    async fn create_chunk(
        self: Rc<Self>,
        params: chunk_control::CreateChunkParams,
        mut results: chunk_control::CreateChunkResults,
    ) -> capnp::Result<()> {
        let outcome = async {
            let (chunk, version, chunk_size) = decode_request("createChunk", || {
                let p = params.get()?;
                Ok((p.get_chunk(), p.get_version(), p.get_chunk_size()))
            })?;
            self.control
                .create_chunk(ChunkId(chunk), MapVersion(version), chunk_size)
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn set_version(
        self: Rc<Self>,
        params: chunk_control::SetVersionParams,
        mut results: chunk_control::SetVersionResults,
    ) -> capnp::Result<()> {
        let outcome = async {
            let (chunk, version) = decode_request("setVersion", || {
                let p = params.get()?;
                Ok((p.get_chunk(), p.get_version()))
            })?;
            self.control
                .set_version(ChunkId(chunk), MapVersion(version))
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn lend_for_repair(
        self: Rc<Self>,
        params: chunk_control::LendForRepairParams,
        mut results: chunk_control::LendForRepairResults,
    ) -> capnp::Result<()> {
        let outcome = async {
            let (chunk, version) = decode_request("lendForRepair", || {
                let p = params.get()?;
                Ok((p.get_chunk(), p.get_version()))
            })?;
            self.control
                .lend_for_repair(ChunkId(chunk), MapVersion(version))
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn zero_tail(
        self: Rc<Self>,
        params: chunk_control::ZeroTailParams,
        mut results: chunk_control::ZeroTailResults,
    ) -> capnp::Result<()> {
        let outcome = async {
            let (chunk, version, offset) = decode_request("zeroTail", || {
                let p = params.get()?;
                Ok((p.get_chunk(), p.get_version(), p.get_offset()))
            })?;
            self.control
                .zero_tail(ChunkId(chunk), MapVersion(version), offset)
                .await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn delete_chunk(
        self: Rc<Self>,
        params: chunk_control::DeleteChunkParams,
        mut results: chunk_control::DeleteChunkResults,
    ) -> capnp::Result<()> {
        let outcome = async {
            let chunk = decode_request("deleteChunk", || Ok(params.get()?.get_chunk()))?;
            self.control.delete_chunk(ChunkId(chunk)).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn list_chunks(
        self: Rc<Self>,
        params: chunk_control::ListChunksParams,
        mut results: chunk_control::ListChunksResults,
    ) -> capnp::Result<()> {
        let outcome = async {
            let from = decode_request("listChunks", || Ok(params.get()?.get_from()))?;
            self.control.list_chunks_page(ChunkId(from)).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn replicate_chunk(
        self: Rc<Self>,
        params: chunk_control::ReplicateChunkParams,
        mut results: chunk_control::ReplicateChunkResults,
    ) -> capnp::Result<()> {
        let outcome = async {
            let (chunk, version, chunk_size, source, rate) =
                decode_request("replicateChunk", || {
                    let p = params.get()?;
                    Ok((
                        p.get_chunk(),
                        p.get_version(),
                        p.get_chunk_size(),
                        Replica::read(p.get_source()?)?,
                        p.get_rate_bytes_per_s(),
                    ))
                })?;
            self.control
                .replicate_chunk(
                    ChunkId(chunk),
                    MapVersion(version),
                    chunk_size,
                    source,
                    rate,
                )
                .await
        }
        .await;
        let mut r = results.get();
        WireReply::write_result(
            &outcome.as_ref().map(|_| ()).map_err(Clone::clone),
            r.reborrow().init_result(),
        );
        if let Ok(stats) = &outcome {
            stats.write(r.init_stats());
        }
        Ok(())
    }

    async fn copy_progress(
        self: Rc<Self>,
        params: chunk_control::CopyProgressParams,
        mut results: chunk_control::CopyProgressResults,
    ) -> capnp::Result<()> {
        let outcome = async {
            let chunk = decode_request("copyProgress", || Ok(params.get()?.get_chunk()))?;
            self.control.copy_progress(ChunkId(chunk)).await
        }
        .await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }

    async fn ping(
        self: Rc<Self>,
        _params: chunk_control::PingParams,
        mut results: chunk_control::PingResults,
    ) -> capnp::Result<()> {
        let outcome = self.control.ping().await;
        WireReply::write_result(&outcome, results.get().init_result());
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Client

/// The `ChunkControl` of a remote chunk server, over one Cap'n Proto
/// connection owned by a dedicated thread.
///
/// `Send + Sync`, cheap to clone. Connects at the first call and reconnects
/// at the first call after the connection broke, retrying for
/// `ClientOptions::connect_timeout` before failing with `Unavailable`. A call
/// in flight when the connection breaks fails with `Unavailable` and is not
/// resent.
#[derive(Clone)]
pub struct ControlClient {
    actor: ClientActor<chunk_control::Client>,
}

impl ControlClient {
    /// A client of the chunk server control service at `addr` (`host:port`),
    /// reached through `dialer`. Does not connect yet.
    pub fn new(addr: String, dialer: Dialer, options: ClientOptions) -> Result<ControlClient> {
        Ok(ControlClient {
            actor: ClientActor::spawn("chunk server", vec![addr], dialer, options)?,
        })
    }

    /// Whether a connection is established right now (diagnostics).
    pub fn is_connected(&self) -> bool {
        self.actor.is_connected()
    }
}

#[async_trait]
impl ChunkControl for ControlClient {
    async fn create_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
    ) -> Result<()> {
        self.actor
            .call("createChunk", move |cs| async move {
                let mut request = cs.create_chunk_request();
                let mut p = request.get();
                p.set_chunk(chunk.0);
                p.set_version(version.0);
                p.set_chunk_size(chunk_size);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }

    async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.actor
            .call("setVersion", move |cs| async move {
                let mut request = cs.set_version_request();
                let mut p = request.get();
                p.set_chunk(chunk.0);
                p.set_version(version.0);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }

    async fn zero_tail(&self, chunk: ChunkId, version: MapVersion, offset: u64) -> Result<()> {
        self.actor
            .call("zeroTail", move |cs| async move {
                let mut request = cs.zero_tail_request();
                let mut p = request.get();
                p.set_chunk(chunk.0);
                p.set_version(version.0);
                p.set_offset(offset);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }

    async fn lend_for_repair(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.actor
            .call("lendForRepair", move |cs| async move {
                let mut request = cs.lend_for_repair_request();
                let mut p = request.get();
                p.set_chunk(chunk.0);
                p.set_version(version.0);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }

    async fn delete_chunk(&self, chunk: ChunkId) -> Result<()> {
        self.actor
            .call("deleteChunk", move |cs| async move {
                let mut request = cs.delete_chunk_request();
                request.get().set_chunk(chunk.0);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }

    async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>> {
        let mut replicas = Vec::new();
        let mut from = ChunkId(0);
        loop {
            let page = self.list_chunks_page(from).await?;
            // Each page must move on: chunk ids grow from `from`.
            if page
                .replicas
                .iter()
                .try_fold(from.0, |due, r| {
                    (r.chunk.0 >= due).then(|| r.chunk.0.saturating_add(1))
                })
                .is_none()
            {
                return Err(Error::protocol(
                    "listChunks: the chunk server answered a page out of order",
                ));
            }
            let next = page.replicas.last().map(|r| r.chunk);
            replicas.extend(page.replicas);
            match next {
                Some(ChunkId(last)) if page.more && last < u64::MAX => from = ChunkId(last + 1),
                _ if page.more => {
                    return Err(Error::protocol(
                        "listChunks: a page that claims more replicas follow ended with none, or \
                         with the last chunk id",
                    ))
                }
                _ => return Ok(replicas),
            }
        }
    }

    async fn list_chunks_page(&self, from: ChunkId) -> Result<ReplicaPage> {
        self.actor
            .call("listChunks", move |cs| async move {
                let mut request = cs.list_chunks_request();
                request.get().set_from(from.0);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }

    async fn replicate_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: Replica,
        rate_bytes_per_s: u64,
    ) -> Result<CopyStats> {
        self.actor
            .call("replicateChunk", move |cs| async move {
                let mut request = cs.replicate_chunk_request();
                let mut p = request.get();
                p.set_chunk(chunk.0);
                p.set_version(version.0);
                p.set_chunk_size(chunk_size);
                source.write(p.reborrow().init_source());
                p.set_rate_bytes_per_s(rate_bytes_per_s);
                let response = request.send().promise.await?;
                let r = response.get()?;
                Ok(match <()>::read_result(r.get_result()?)? {
                    Ok(()) => Ok(CopyStats::read(r.get_stats()?)?),
                    Err(e) => Err(e),
                })
            })
            .await
    }

    async fn copy_progress(&self, chunk: ChunkId) -> Result<Option<CopyProgress>> {
        self.actor
            .call("copyProgress", move |cs| async move {
                let mut request = cs.copy_progress_request();
                request.get().set_chunk(chunk.0);
                let response = request.send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.actor
            .call("ping", move |cs| async move {
                let response = cs.ping_request().send().promise.await?;
                WireReply::read_result(response.get()?.get_result()?)
            })
            .await
    }
}

/// A [`ControlConnector`] over TCP: one cached [`ControlClient`] (and so one
/// connection and one thread) per chunk server address.
pub struct TcpControlConnector {
    dialer: Dialer,
    options: ClientOptions,
    clients: Mutex<HashMap<String, ControlClient>>,
}

impl TcpControlConnector {
    /// A connector that reaches chunk servers through `dialer`.
    pub fn new(dialer: Dialer, options: ClientOptions) -> TcpControlConnector {
        TcpControlConnector {
            dialer,
            options,
            clients: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl ControlConnector for TcpControlConnector {
    /// The client for `addr`, created on first use. Never fails because the
    /// server is down: the client connects at its first call.
    async fn chunk_control(&self, addr: &str) -> Result<Arc<dyn ChunkControl>> {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(addr) {
            return Ok(Arc::new(client.clone()));
        }
        let client =
            ControlClient::new(addr.to_owned(), self.dialer.clone(), self.options.clone())?;
        clients.insert(addr.to_owned(), client.clone());
        Ok(Arc::new(client))
    }
}
