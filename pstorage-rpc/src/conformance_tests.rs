//! The seam traits' conformance suites (`pstorage_core::conformance`) run
//! against this crate's implementations, over loopback sockets with the
//! daemons' own stack: the framed data client (`TcpChunkConnector`) and the
//! Cap'n Proto control client (`TcpControlConnector`) in front of a real
//! `ChunkServer`, both behind the authenticated handshake a chunk server
//! accepts; the Cap'n Proto `MdsClient` in front of a real `MdsService`.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pstorage_core::conformance::{
    chunk_control, chunk_service, cs_registry, metadata, ChunkTransport, ChunkWorld, MdsTransport,
};
use pstorage_core::mds::MdsService;
use pstorage_core::traits::{
    ChunkConnector, ChunkControl, ChunkService, ControlConnector, CsRegistry, MetadataService,
};
use pstorage_core::types::CsId;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::actor::{ClientOptions, Dialer, RpcServerThread, RpcServices};
use crate::auth::{self, Channel};
use crate::control::TcpControlConnector;
use crate::data::{serve_data_connection, TcpChunkConnector};
use crate::mds::MdsClient;

fn creds() -> crate::tls::Credentials {
    crate::tls::test_credentials(crate::pki::Role::Mds)
}

fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(10),
        call_timeout: None,
    }
}

/// Servers started for a suite; stopped when the transport is dropped.
#[derive(Default)]
struct Servers {
    threads: Mutex<Vec<Arc<RpcServerThread>>>,
    accept_loops: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for task in self.accept_loops.lock().drain(..) {
            task.abort();
        }
    }
}

/// A chunk server's listener as the daemon has it: one port, the
/// authenticated handshake choosing the data or the control channel.
#[derive(Default)]
struct LoopbackChunks {
    servers: Servers,
}

impl LoopbackChunks {
    async fn listen(&self, world: &ChunkWorld, id: CsId) -> String {
        let server = world.server(id).clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let rpc = Arc::new(
            RpcServerThread::spawn(
                "conformance chunk server",
                creds(),
                RpcServices::new().with_control(server.clone()),
            )
            .unwrap(),
        );
        self.servers.threads.lock().push(rpc.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (server, rpc) = (server.clone(), rpc.clone());
                tokio::spawn(async move {
                    match auth::peek_channel(&mut stream).await {
                        Ok(Channel::Data) => {
                            let (tls, peer) = auth::accept_tls(stream, &creds(), Channel::Data)
                                .await
                                .unwrap();
                            serve_data_connection(tls, peer, server).await
                        }
                        Ok(Channel::Control) => rpc.serve_control(stream, None).unwrap(),
                        other => panic!("handshake of a conformance client failed: {other:?}"),
                    }
                });
            }
        });
        self.servers.accept_loops.lock().push(task);
        addr
    }
}

#[async_trait]
impl ChunkTransport for LoopbackChunks {
    async fn service(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkService> {
        let addr = self.listen(world, id).await;
        TcpChunkConnector::new(creds())
            .chunk_service(&addr)
            .await
            .unwrap()
    }

    async fn control(&self, world: &ChunkWorld, id: CsId) -> Arc<dyn ChunkControl> {
        let addr = self.listen(world, id).await;
        let dialer = crate::node::control_dialer(creds());
        TcpControlConnector::new(dialer, options())
            .chunk_control(&addr)
            .await
            .unwrap()
    }
}

fn tls_dialer() -> Dialer {
    crate::node::control_dialer(creds())
}

/// The MDS served by the RPC server thread, reached by `MdsClient`.
#[derive(Default)]
struct LoopbackMds {
    servers: Servers,
}

impl LoopbackMds {
    async fn client(&self, mds: &Arc<MdsService>) -> Arc<MdsClient> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let rpc = Arc::new(
            RpcServerThread::spawn(
                "conformance mds",
                creds(),
                RpcServices::new().with_mds(mds.clone(), mds.clone()),
            )
            .unwrap(),
        );
        self.servers.threads.lock().push(rpc.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let rpc = rpc.clone();
                tokio::spawn(async move {
                    if let Ok(Channel::Control) = auth::peek_channel(&mut stream).await {
                        rpc.serve_mds(stream, None).unwrap();
                    }
                });
            }
        });
        self.servers.accept_loops.lock().push(task);
        Arc::new(MdsClient::new(vec![addr], tls_dialer(), options()).unwrap())
    }
}

#[async_trait]
impl MdsTransport for LoopbackMds {
    async fn registry(&self, mds: &Arc<MdsService>) -> Arc<dyn CsRegistry> {
        self.client(mds).await
    }

    async fn metadata(&self, mds: &Arc<MdsService>) -> Arc<dyn MetadataService> {
        self.client(mds).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_service_over_the_framed_data_protocol() {
    chunk_service::run(&LoopbackChunks::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_control_over_capnp() {
    chunk_control::run(&LoopbackChunks::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cs_registry_over_capnp() {
    cs_registry::run(&LoopbackMds::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_capnp() {
    metadata::run(&LoopbackMds::default()).await;
}

// The same suites with every connection hosted on one thread, as
// `pstorage-mdsd` runs them (`actor::run_hosted`): servers, clients and the
// services' tasks share a current-thread runtime.

#[test]
fn chunk_control_over_capnp_hosted() {
    crate::actor::run_hosted(chunk_control::run(&LoopbackChunks::default())).unwrap();
}

#[test]
fn cs_registry_over_capnp_hosted() {
    crate::actor::run_hosted(cs_registry::run(&LoopbackMds::default())).unwrap();
}

#[test]
fn metadata_over_capnp_hosted() {
    crate::actor::run_hosted(metadata::run(&LoopbackMds::default())).unwrap();
}

#[test]
fn hosted_servers_and_clients_start_no_thread() {
    let threaded = RpcServerThread::spawn("threaded", creds(), RpcServices::new()).unwrap();
    assert!(threaded.runs_on_own_thread());
    let world = pstorage_core::conformance::MdsWorld::new();
    crate::actor::run_hosted(async {
        let server = RpcServerThread::spawn("hosted", creds(), RpcServices::new()).unwrap();
        assert!(!server.runs_on_own_thread());
        // A whole call through a hosted server and a hosted client.
        let transport = LoopbackMds::default();
        let client = transport.client(&world.mds).await;
        assert!(!client.runs_on_own_thread());
        client.stat("/").await.unwrap();
    })
    .unwrap();
    // Once the hosting future ended, servers get a thread again.
    let after = RpcServerThread::spawn("after", creds(), RpcServices::new()).unwrap();
    assert!(after.runs_on_own_thread());
}
