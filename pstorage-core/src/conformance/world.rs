//! The servers a suite case runs against, and how an implementation under
//! test reaches them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::chunk::memory::MemNetwork;
use crate::chunk::{ChunkServer, MemChunkStore};
use crate::mds::{MdsConfig, MdsService, MdsState};
use crate::traits::{
    ChunkConnector, ChunkControl, ChunkService, ControlConnector, CsRegistry, ManualClock,
    MetadataService,
};
use crate::types::{CsId, FileAttrs, Replica};

/// Three real chunk servers (ids 1, 2, 3 at addresses `cs1`, `cs2`, `cs3`),
/// each on its own [`MemChunkStore`], serving, joined by a [`MemNetwork`]
/// (their chain writes and copies between them go through it).
pub struct ChunkWorld {
    /// The in-memory network the chunk servers serve on.
    pub net: Arc<MemNetwork>,
    /// The chunk servers, in id order.
    pub servers: Vec<Arc<ChunkServer>>,
    /// Each server's store, in the same order.
    pub stores: Vec<Arc<MemChunkStore>>,
}

impl ChunkWorld {
    /// Fresh servers with empty stores.
    pub fn new() -> ChunkWorld {
        let net = MemNetwork::new();
        let stores: Vec<Arc<MemChunkStore>> =
            (1..=3).map(|_| Arc::new(MemChunkStore::new())).collect();
        let servers = (1..=3)
            .map(|id| {
                net.add_server(
                    CsId(id),
                    &Self::addr(CsId(id)),
                    stores[id as usize - 1].clone(),
                )
            })
            .collect();
        ChunkWorld {
            net,
            servers,
            stores,
        }
    }

    /// The address of server `id` on the network.
    pub fn addr(id: CsId) -> String {
        format!("cs{id}")
    }

    /// Server `id` (1-based) as a chain member.
    pub fn replica(&self, id: CsId) -> Replica {
        Replica {
            cs: id,
            addr: Self::addr(id),
        }
    }

    /// Server `id` itself (1-based).
    pub fn server(&self, id: CsId) -> &Arc<ChunkServer> {
        &self.servers[id.0 as usize - 1]
    }
}

impl Default for ChunkWorld {
    fn default() -> Self {
        ChunkWorld::new()
    }
}

impl Drop for ChunkWorld {
    fn drop(&mut self) {
        // The servers hold the network and the network holds them.
        self.net.clear();
    }
}

/// How an implementation of [`ChunkService`] / [`ChunkControl`] reaches a
/// chunk server (in process, over a socket, through a simulated network).
#[async_trait]
pub trait ChunkTransport: Send + Sync {
    /// Server `id` of `world` seen through the data path under test.
    async fn service(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkService>;
    /// Server `id` of `world` seen through the control path under test.
    async fn control(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkControl>;
}

/// The chunk server itself, called in process.
pub struct DirectChunks;

#[async_trait]
impl ChunkTransport for DirectChunks {
    async fn service(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkService> {
        world.server(id).clone()
    }
    async fn control(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkControl> {
        world.server(id).clone()
    }
}

/// The links of the world's [`MemNetwork`] (what chunk servers and the
/// in-process cluster use between themselves).
pub struct MemLinks;

#[async_trait]
impl ChunkTransport for MemLinks {
    async fn service(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkService> {
        world
            .net
            .chunk_service(&ChunkWorld::addr(id))
            .await
            .expect("every server of the world is reachable")
    }
    async fn control(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkControl> {
        world
            .net
            .chunk_control(&ChunkWorld::addr(id))
            .await
            .expect("every server of the world is reachable")
    }
}

/// A fresh metadata service without Raft (every command applied in
/// memory), reaching the chunk servers of a [`ChunkWorld`] for its control
/// calls, on a manual clock, with the product's default file attributes
/// (256 MiB chunks, replicas 3:2).
pub struct MdsWorld {
    /// The chunk servers and their network.
    pub chunks: ChunkWorld,
    /// The MDS.
    pub mds: Arc<MdsService>,
    /// The clock every component reads (advanced by the tests).
    pub clock: Arc<ManualClock>,
}

impl MdsWorld {
    /// Fresh servers: an empty namespace and no chunk server registered.
    pub fn new() -> MdsWorld {
        let chunks = ChunkWorld::new();
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let state = MdsState::new(FileAttrs::default()).expect("default attributes are valid");
        let mds = Arc::new(MdsService::new(
            state,
            None,
            chunks.net.clone(),
            clock.clone(),
            MdsConfig::default(),
        ));
        MdsWorld { chunks, mds, clock }
    }
}

impl Default for MdsWorld {
    fn default() -> Self {
        MdsWorld::new()
    }
}

/// How an implementation of [`MetadataService`] / [`CsRegistry`] reaches
/// an MDS.
#[async_trait]
pub trait MdsTransport: Send + Sync {
    /// `mds` seen through the registry under test.
    async fn registry(&self, mds: &Arc<MdsService>) -> Arc<dyn CsRegistry>;
    /// `mds` seen through the metadata client under test.
    async fn metadata(&self, mds: &Arc<MdsService>) -> Arc<dyn MetadataService>;
}

/// The MDS itself, called in process.
pub struct DirectMds;

#[async_trait]
impl MdsTransport for DirectMds {
    async fn registry(&self, mds: &Arc<MdsService>) -> Arc<dyn CsRegistry> {
        mds.clone()
    }
    async fn metadata(&self, mds: &Arc<MdsService>) -> Arc<dyn MetadataService> {
        mds.clone()
    }
}
