//! Many `LocalCluster`s started, exercised (a kill and a restart of each
//! kind of node) and stopped one after the other in one process leave no
//! thread, file descriptor or port behind.
//!
//! Its own test binary: it counts this process's threads and descriptors.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::time::Duration;

use pstorage_rpc::local::LocalCluster;

mod common;
use common::{eventually, fd_count, fd_targets, pattern, read_file, thread_names, write_file};

const ROUNDS: usize = 4;
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(180);

/// One cluster's life: start, write, kill and restart a chunk server and
/// the MDS, stop. Returns the MDS address it had.
async fn one_cluster(round: usize) -> String {
    let cluster = LocalCluster::builder()
        .start_timeout(HEALTHY_TIMEOUT)
        .start()
        .await
        .unwrap_or_else(|e| panic!("round {round}: start: {e}"));
    let addr = cluster.mds_addr(0).unwrap();
    let client = cluster.client().unwrap();
    let data = pattern(round as u64, 256 << 10);
    write_file(&client, "/f", &data).await;
    cluster.kill_cs(round % 3).await.unwrap();
    cluster.restart_cs(round % 3).await.unwrap();
    // The MDS restarts on its own directory: Raft storage released by the kill.
    cluster.kill_mds(0).await.unwrap();
    cluster.restart_mds(0).await.unwrap();
    cluster
        .wait_healthy(HEALTHY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
    assert!(
        read_file(&client, "/f").await == data,
        "round {round}: the file reads back"
    );
    drop(client);
    cluster.stop().await.unwrap();
    addr
}

#[test]
fn many_clusters_in_a_row_leak_no_threads_fds_or_ports() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fds = fd_count();
    let threads = thread_names().len();
    // Threads and sockets on their way out (a client connection thread ends
    // when its last handle is dropped, an idle blocking thread after 10 s).
    let settle = Duration::from_secs(60);
    let mut addrs = Vec::new();
    for round in 0..ROUNDS {
        addrs.push(runtime.block_on(one_cluster(round)));
    }
    assert!(
        eventually(settle, || fd_count() <= fds),
        "file descriptors: {} before, {} after {ROUNDS} clusters: {:?}",
        fds,
        fd_count(),
        fd_targets()
    );
    assert!(
        eventually(settle, || thread_names().len() <= threads),
        "threads: {} before, {} after {ROUNDS} clusters: {:?}",
        threads,
        thread_names().len(),
        thread_names()
    );
    for addr in addrs {
        std::net::TcpListener::bind(&addr)
            .unwrap_or_else(|e| panic!("the MDS address {addr} is still taken: {e}"));
    }
}
