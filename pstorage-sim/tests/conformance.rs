//! The chunk-server seam suites (`pstorage_core::conformance`) run against
//! the simulator's `SimPeer` (what `SimConnector` hands out): the data path
//! and the control path over the simulated network, with its per-message
//! delays, must keep every contract the real transports keep; the
//! `CsRegistry` and `MetadataService` suites against the simulator's MDS
//! client (`SimMdsClient`) reaching the suites' MDS over the simulated
//! network; and the `MdsGroup` suite against a simulated one-MDS Raft
//! group, in process and through the simulator's MDS client.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use parking_lot::Mutex;
use std::sync::Arc;

use async_trait::async_trait;
use std::time::Duration;

use pstorage_core::conformance::mds_group::{self, Group, GroupFixture};
use pstorage_core::conformance::{
    chunk_control, chunk_service, cs_registry, metadata, ChunkTransport, ChunkWorld, MdsTransport,
};
use pstorage_core::mds::MdsService;
use pstorage_core::membership::{DirectoryOptions, MemberDirectory};
use pstorage_core::traits::{
    ChunkConnector, ChunkControl, ChunkService, ControlConnector, CsRegistry, MdsGroup,
    MetadataService,
};
use pstorage_core::types::CsId;
use pstorage_sim::cluster::{Cluster, SimClock};
use pstorage_sim::net::{NodeId, Services, SimNet};
use pstorage_sim::rpc::{MdsEndpoint, SimConnector, SimMdsClient, CONTROL_CALL_TIMEOUT};
use pstorage_sim::trace::Trace;
use pstorage_sim::SimConfig;
use rand::rngs::StdRng;
use rand::SeedableRng;

/// One simulated network; each call (re)starts the world's server on it.
struct SimChunks {
    net: Arc<SimNet>,
}

impl SimChunks {
    fn new() -> SimChunks {
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(11)));
        let net = SimNet::new(rng, Arc::new(Trace::new(false)));
        net.add_client(NodeId::Client(1));
        SimChunks { net }
    }

    fn connector(&self, world: &ChunkWorld, id: CsId) -> (SimConnector, String) {
        let node = NodeId::Cs(id.0);
        self.net.start(node, Services::Cs(world.server(id).clone()));
        let connector = SimConnector::new(
            self.net.clone(),
            NodeId::Client(1),
            Some(CONTROL_CALL_TIMEOUT),
        );
        (connector, node.addr())
    }
}

#[async_trait]
impl ChunkTransport for SimChunks {
    async fn service(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkService> {
        let (connector, addr) = self.connector(world, id);
        connector.chunk_service(&addr).await.unwrap()
    }

    async fn control(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkControl> {
        let (connector, addr) = self.connector(world, id);
        connector.chunk_control(&addr).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_service_over_the_simulated_network() {
    chunk_service::run(&SimChunks::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_control_over_the_simulated_network() {
    chunk_control::run(&SimChunks::new()).await;
}

/// The suites' MDS (no Raft) served on a simulated network as MDS 1, and
/// reached through the simulator's MDS client, as a client or a chunk
/// server of the simulation reaches its MDSes: the call, its reply and
/// their delays cross the network, the error kinds must survive it.
struct SimMds;

impl SimMds {
    fn client(&self, mds: &Arc<MdsService>) -> Arc<SimMdsClient> {
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(13)));
        let net = SimNet::new(rng, Arc::new(Trace::new(false)));
        let node = NodeId::Mds(1);
        let endpoint =
            MdsEndpoint::standalone(pstorage_core::types::MdsId(1), mds.clone(), net.clone());
        net.start(node, Services::Mds(Arc::new(endpoint)));
        net.add_client(NodeId::Client(1));
        let directory = Arc::new(MemberDirectory::new(
            vec![node.addr()],
            None,
            SimClock::new(tokio::time::Instant::now()),
            DirectoryOptions::default(),
        ));
        Arc::new(SimMdsClient::new(net, NodeId::Client(1), directory))
    }
}

#[async_trait]
impl MdsTransport for SimMds {
    async fn registry(&self, mds: &Arc<MdsService>) -> Arc<dyn CsRegistry> {
        self.client(mds)
    }

    async fn metadata(&self, mds: &Arc<MdsService>) -> Arc<dyn MetadataService> {
        self.client(mds)
    }
}

#[tokio::test(start_paused = true)]
async fn cs_registry_over_the_simulated_network() {
    cs_registry::run(&SimMds).await;
}

#[tokio::test(start_paused = true)]
async fn metadata_over_the_simulated_network() {
    metadata::run(&SimMds).await;
}

/// A fresh simulated group of one MDS; the implementation under test is
/// the leader's `MdsService` itself, or the simulator's MDS client.
struct SimGroup {
    direct: bool,
}

#[async_trait]
impl GroupFixture for SimGroup {
    async fn fresh(&self) -> Group {
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(12)));
        let net = SimNet::new(rng.clone(), Arc::new(Trace::new(false)));
        let config = SimConfig {
            mds: 1,
            cs: 0,
            clients: 0,
            ..SimConfig::default()
        };
        let cluster = Cluster::new(net, rng, config).await.unwrap();
        let leader = loop {
            if let Some((_, mds)) = cluster.leader() {
                break mds;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let group: Arc<dyn MdsGroup> = if self.direct {
            leader
        } else {
            cluster.mds_client(NodeId::Client(9))
        };
        Group {
            group,
            id: pstorage_core::types::MdsId(1),
            addr: NodeId::Mds(1).addr(),
            keep: Box::new(cluster),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn mds_group_of_the_mds_service_in_process() {
    mds_group::run(&SimGroup { direct: true }).await;
}

#[tokio::test(start_paused = true)]
async fn mds_group_over_the_simulated_network() {
    mds_group::run(&SimGroup { direct: false }).await;
}
