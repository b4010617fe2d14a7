//! `LocalCluster`: a real cluster inside the test process, at the product's
//! defaults (256 MiB chunks, replicas 3:2, default timeouts), driven the way
//! a user's test would drive it.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::time::Duration;

use pstorage_core::client::File;
use pstorage_core::types::{LeaseMode, OpenFlags};
use pstorage_core::ErrorKind;
use pstorage_rpc::local::LocalCluster;

mod common;
use common::pattern;

/// Generous: the machine running the suite is loaded.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(180);

const PIECE: usize = 1 << 20;

async fn write_piece(file: &File, n: u64) {
    file.write_at(n * PIECE as u64, &pattern(n, PIECE))
        .await
        .unwrap_or_else(|e| panic!("writing piece {n}: {e}"));
    file.flush()
        .await
        .unwrap_or_else(|e| panic!("flushing piece {n}: {e}"));
}

async fn check_pieces(file: &File, count: u64) {
    let mut buf = vec![0u8; PIECE];
    for n in 0..count {
        let mut done = 0;
        while done < PIECE {
            let got = file
                .read_at(n * PIECE as u64 + done as u64, &mut buf[done..])
                .await
                .unwrap_or_else(|e| panic!("reading piece {n}: {e}"));
            assert!(got > 0, "short read of piece {n}");
            done += got;
        }
        assert!(
            buf == pattern(n, PIECE),
            "piece {n} differs from what was written"
        );
    }
}

/// The scenario: 3 MDSes and 4 chunk servers at the default chunk
/// size; a file written and flushed; a chunk server of its chain killed
/// while writing goes on; that server restarted; the leader MDS killed
/// while writing goes on; everything read back; a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mds_four_cs_survive_a_cs_kill_and_a_leader_kill() {
    let cluster = LocalCluster::builder()
        .mds(3)
        .cs(4)
        .start_timeout(HEALTHY_TIMEOUT)
        .start()
        .await
        .expect("start 3 MDS + 4 CS");
    assert_eq!(cluster.mds_count(), 3);
    assert_eq!(cluster.cs_count(), 4);
    let status = cluster.status().await.unwrap();
    assert_eq!(status.mds.len(), 3, "{status:?}");
    assert_eq!(status.cs.len(), 4, "{status:?}");
    assert!(cluster.bs_list().exists());

    let client = cluster.client().unwrap();
    let flags = OpenFlags {
        create: true,
        ..Default::default()
    };
    let file = client
        .open("/data.bin", LeaseMode::Write, flags)
        .await
        .unwrap();
    let attrs = client.get_attr("/data.bin").await.unwrap();
    assert_eq!(attrs.chunk_size, 256 << 20, "the default chunk size");
    assert_eq!(attrs.replicas.to_string(), "3:2", "the default replicas");
    let mut pieces = 0;
    write_piece(&file, pieces).await;
    pieces += 1;

    // Kill a chunk server of the chain of chunk 0.
    let chain = client.file_chunks("/data.bin").await.unwrap()[0]
        .replicas
        .clone();
    assert_eq!(chain.len(), 3, "{chain:?}");
    let victim = (0..cluster.cs_count())
        .find(|&i| cluster.cs_id(i).unwrap() == chain[1].cs)
        .expect("the chain's CS is one of ours");
    cluster.kill_cs(victim).await.unwrap();
    assert!(!cluster.cs_running(victim));
    for _ in 0..3 {
        write_piece(&file, pieces).await;
        pieces += 1;
    }
    let after_kill = client.file_chunks("/data.bin").await.unwrap()[0]
        .replicas
        .clone();
    assert!(
        after_kill.iter().all(|r| r.cs != chain[1].cs),
        "the killed CS was dropped from the chain: {after_kill:?}"
    );

    cluster.restart_cs(victim).await.unwrap();
    assert!(cluster.cs_running(victim));
    cluster.wait_healthy(HEALTHY_TIMEOUT).await.unwrap();
    write_piece(&file, pieces).await;
    pieces += 1;

    // Kill the leader MDS: writes go on through the other two.
    let leader = cluster.leader_mds().await.unwrap();
    cluster.kill_mds(leader).await.unwrap();
    assert!(!cluster.mds_running(leader));
    for _ in 0..2 {
        write_piece(&file, pieces).await;
        pieces += 1;
    }
    let new_leader = cluster.leader_mds().await.unwrap();
    assert_ne!(new_leader, leader, "a new leader was elected");
    check_pieces(&file, pieces).await;

    cluster.restart_mds(leader).await.unwrap();
    cluster.wait_healthy(HEALTHY_TIMEOUT).await.unwrap();
    file.close().await.unwrap();
    let reader = client
        .open("/data.bin", LeaseMode::Read, OpenFlags::default())
        .await
        .unwrap();
    assert_eq!(reader.size(), pieces * PIECE as u64);
    check_pieces(&reader, pieces).await;
    reader.close().await.unwrap();
    drop(client);

    let dir = cluster.dir().to_path_buf();
    cluster.stop().await.unwrap();
    assert!(!dir.exists(), "{} was removed", dir.display());
}

/// Bad options fail before anything starts, naming the option and the fix.
#[tokio::test]
async fn bad_options_are_refused_with_the_fix() {
    let cases = [
        (LocalCluster::builder().mds(0), "at least 1 MDS"),
        (LocalCluster::builder().cs(1), "cannot hold replicas.min=2"),
        (
            LocalCluster::builder().cs(0).replicas(1, 1),
            "cannot hold replicas.min=1",
        ),
        (
            LocalCluster::builder().replicas(2, 3),
            "replicas=2:3 is invalid",
        ),
        (
            LocalCluster::builder().replicas(0, 0),
            "replicas=0:0 is invalid",
        ),
        (
            LocalCluster::builder().chunk_size(1000),
            "chunk size 1000 is invalid",
        ),
        (LocalCluster::builder().name("no/slash"), "bad cluster name"),
    ];
    let parent = tempfile::tempdir().unwrap();
    for (builder, message) in cases {
        let err = builder
            .parent_dir(parent.path())
            .start()
            .await
            .expect_err(message);
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(
            err.to_string().contains(message),
            "{err} (expected {message:?})"
        );
    }
    assert_eq!(
        std::fs::read_dir(parent.path()).unwrap().count(),
        0,
        "nothing was created"
    );
}

/// A one-replica cluster of one MDS and one chunk server; the node
/// methods refuse what does not exist or does not run; `keep_dir` keeps
/// the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cluster_node_errors_and_kept_dir() {
    let parent = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::builder()
        .cs(1)
        .replicas(1, 1)
        .password("secret")
        .parent_dir(parent.path())
        .keep_dir(true)
        .start_timeout(HEALTHY_TIMEOUT)
        .start()
        .await
        .expect("start 1 MDS + 1 CS");
    let err = cluster.kill_cs(1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(
        err.to_string().contains("there is no chunk server 1"),
        "{err}"
    );
    let err = cluster.restart_mds(3).await.unwrap_err();
    assert!(err.to_string().contains("there is no MDS 3"), "{err}");
    cluster.stop_cs(0).await.unwrap();
    let err = cluster.kill_cs(0).await.unwrap_err();
    assert!(err.to_string().contains("is not running"), "{err}");
    cluster.restart_cs(0).await.unwrap();
    // The cluster's password is "secret": another node gets a client's
    // certificate with it (`auth-node --role client`), not with another.
    let other_node = tempfile::tempdir().unwrap();
    let other = pstorage_core::conf::ClusterConf::new(other_node.path(), "local").unwrap();
    std::fs::create_dir_all(&other.dir).unwrap();
    std::fs::copy(cluster.bs_list(), other.bs_list_path()).unwrap();
    let wrong = pstorage_rpc::node::auth_node(&other, "guess", pstorage_rpc::pki::Role::Client)
        .await
        .unwrap_err();
    assert_eq!(
        wrong.kind(),
        pstorage_core::ErrorKind::PermissionDenied,
        "{wrong}"
    );
    let identity = pstorage_rpc::node::auth_node(&other, "secret", pstorage_rpc::pki::Role::Client)
        .await
        .unwrap();
    assert_eq!(identity.peer.role, pstorage_rpc::pki::Role::Client);
    let stat =
        pstorage_rpc::node::connect_client(&other, pstorage_core::client::ClientOptions::default())
            .unwrap()
            .stat("/")
            .await
            .unwrap();
    assert_eq!(stat.ino, pstorage_core::types::InodeId(1));
    let added = cluster.add_cs().await.unwrap();
    assert_eq!(added, 1);
    cluster.wait_healthy(HEALTHY_TIMEOUT).await.unwrap();
    let client = cluster.client().unwrap();
    client.mkdir("/a", false).await.unwrap();
    assert!(client.exists("/a").await.unwrap());
    drop(client);
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    assert!(dir.join("mds0").exists(), "kept");
    std::fs::remove_dir_all(&dir).unwrap();
}
