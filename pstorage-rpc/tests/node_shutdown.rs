//! `run_mds` and `run_cs` release everything they hold once their shutdown
//! future resolves, on the caller's runtime (no runtime of their own that
//! could be dropped to clean up): their ports, the connections they
//! accepted (the data connections of clients still connected too), their
//! RPC server threads, the Raft storage and the chunk files. So a node can
//! be stopped and started again on the same directory in one process.
//!
//! Its own test binary: it counts this process's threads and descriptors.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::FutureExt;
use pstorage_core::client::ClientOptions;
use pstorage_core::conf::{ClusterConf, ClusterKey};
use pstorage_core::mds::raft::RaftStorage;
use pstorage_core::traits::MetadataService;
use pstorage_core::types::{CsStatus, DEFAULT_CHUNK_SIZE};
use pstorage_rpc::node;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod common;
use common::{established_on, fds_under, pattern, read_file, thread_names, write_file};

const CHUNK_SERVERS: usize = 3;
const DEADLINE: Duration = Duration::from_secs(120);

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<pstorage_core::Result<()>>,
}

fn start(dir: &Path, mds: bool) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let dir = dir.to_path_buf();
    let shutdown = stopped.map(|_| ());
    let task = if mds {
        tokio::spawn(async move { node::run_mds(&dir, shutdown).await })
    } else {
        tokio::spawn(async move { node::run_cs(&dir, shutdown).await })
    };
    Running { stop, task }
}

async fn stop(node: Running) {
    node.stop.send(()).unwrap();
    node.task.await.unwrap().unwrap();
}

/// The local port a chunk server registered (its address in the status).
async fn cs_ports(conf: &ClusterConf) -> Vec<u16> {
    let mds = node::connect_mds(conf, pstorage_rpc::ClientOptions::default()).unwrap();
    mds.cluster_status()
        .await
        .unwrap()
        .cs
        .iter()
        .map(|c| c.addr.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect()
}

async fn wait_active(conf: &ClusterConf, n: usize) {
    let mds = node::connect_mds(conf, pstorage_rpc::ClientOptions::default()).unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(status) = mds.cluster_status().await {
            if status
                .cs
                .iter()
                .filter(|c| c.status == CsStatus::Active)
                .count()
                >= n
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} chunk servers did not become active"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_mds_and_run_cs_release_everything_when_stopped() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path().join("conf");
    let conf = ClusterConf::new(&root, "shutdown").unwrap();
    let key = ClusterKey([7; 32]);
    let mds_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mds_port: u16 = mds_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let mds_dir = temp.path().join("mds");
    node::create_cluster_mds(&conf, &mds_dir, &mds_addr, &key, DEFAULT_CHUNK_SIZE).unwrap();
    let cs_dirs: Vec<PathBuf> = (0..CHUNK_SERVERS)
        .map(|i| temp.path().join(format!("cs{i}")))
        .collect();
    let data = pattern(1, 3 << 20);

    for round in 0..2 {
        let mds = start(&mds_dir, true);
        if round == 0 {
            for dir in &cs_dirs {
                node::create_cs(
                    &conf,
                    &root,
                    dir,
                    "127.0.0.1:0",
                    Default::default(),
                    &Default::default(),
                )
                .await
                .unwrap();
            }
        }
        let chunk_servers: Vec<Running> = cs_dirs.iter().map(|d| start(d, false)).collect();
        wait_active(&conf, CHUNK_SERVERS).await;
        let ports = cs_ports(&conf).await;

        // A client that stays connected while the nodes stop.
        let client = node::connect_client(&conf, ClientOptions::default()).unwrap();
        if round == 0 {
            write_file(&client, "/f", &data).await;
        }
        // Round 1 reads what round 0 wrote, through restarted nodes.
        assert!(
            read_file(&client, "/f").await == data,
            "round {round}: the file reads back"
        );
        // The lease is released; the client's data connections stay.
        assert!(
            ports.iter().any(|p| established_on(*p)),
            "the client holds data connections to the chunk servers"
        );

        for cs in chunk_servers {
            stop(cs).await;
        }
        for dir in &cs_dirs {
            assert_eq!(
                fds_under(dir),
                Vec::<PathBuf>::new(),
                "round {round}: chunk files of {} still open",
                dir.display()
            );
        }
        for port in &ports {
            assert!(
                !established_on(*port),
                "round {round}: a connection to the CS port {port} is still served"
            );
            std::net::TcpListener::bind(("127.0.0.1", *port))
                .unwrap_or_else(|e| panic!("round {round}: CS port {port} still taken: {e}"));
        }
        assert!(
            !thread_names().iter().any(|n| n == "cs-rpc"),
            "round {round}: a CS RPC server thread is left: {:?}",
            thread_names()
        );

        stop(mds).await;
        assert_eq!(
            fds_under(&mds_dir),
            Vec::<PathBuf>::new(),
            "round {round}: mds.redb still open"
        );
        RaftStorage::open_legacy_or_raft(mds_dir.join("mds.redb"))
            .unwrap_or_else(|e| panic!("round {round}: the Raft storage is still held: {e}"));
        assert!(
            !established_on(mds_port),
            "round {round}: an MDS connection is still served"
        );
        std::net::TcpListener::bind(&mds_addr)
            .unwrap_or_else(|e| panic!("round {round}: the MDS port is still taken: {e}"));
        assert!(
            !thread_names().iter().any(|n| n == "mds-rpc"),
            "round {round}: the MDS RPC server thread is left: {:?}",
            thread_names()
        );
        drop(client);
    }
}
