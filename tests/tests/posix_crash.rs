//! The POSIX namespace survives its MDS being killed (-9) in the middle of
//! a stream of link, symlink, rename, chmod and setxattr operations: after
//! the restart the store's state passes `MdsState::check_invariants`, and
//! every acknowledged operation is there (the client's exactly-once tags
//! carry the one that was in flight across the restart). At the cluster's
//! defaults (256 MiB chunks, default heartbeats and timeouts).

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pstorage_core::client::Client;
use pstorage_core::mds::raft::RaftStorage;
use pstorage_core::types::{
    InodeKind, LeaseMode, OpenFlags, XattrSet, DEFAULT_CHUNK_SIZE, S_ISUID,
};
use pstorage_tests::{ClusterOptions, TestCluster};

/// What one round of the stream did, once every step was acknowledged.
#[derive(Debug, Clone, Copy)]
struct Round(u32);

/// One round: a symbolic link, a hard link renamed to its final name, a
/// chmod and an extended attribute on the renamed name.
async fn round(client: &Client, i: u32) -> pstorage_core::Result<()> {
    client
        .symlink(&format!("target-{i}"), &format!("/t/s{i}"), 1000, 1000)
        .await?;
    client.link("/t/f", &format!("/t/h{i}")).await?;
    client
        .rename(&format!("/t/h{i}"), &format!("/t/r{i}"))
        .await?;
    client.chmod(&format!("/t/r{i}"), 0o4750 | (i % 8)).await?;
    client
        .set_xattr(
            &format!("/t/s{i}"),
            "user.round",
            i.to_string().as_bytes(),
            XattrSet::Create,
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_namespace_survives_kill_9_mid_stream() {
    let mut cluster = TestCluster::start(ClusterOptions {
        chunk_size: DEFAULT_CHUNK_SIZE,
        env: Vec::new(),
        ..ClusterOptions::default()
    });
    let client = cluster.client();
    client.mkdir("/t", false).await.unwrap();
    let f = client
        .open(
            "/t/f",
            LeaseMode::Write,
            OpenFlags {
                create: true,
                ..OpenFlags::default()
            },
        )
        .await
        .unwrap();
    f.close().await.unwrap();

    let done: Arc<Mutex<Vec<Round>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let (client, done, stop) = (client.clone(), done.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                round(&client, i)
                    .await
                    .unwrap_or_else(|e| panic!("round {i} failed across the MDS restart: {e}"));
                done.lock().push(Round(i));
                i += 1;
            }
        })
    };
    // Kill the MDS while rounds run, restart it: the stream waits it out.
    while done.lock().len() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill_mds_at(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.start_mds_at(0);
    let resumed = done.lock().len();
    while done.lock().len() < resumed + 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    stream.await.unwrap();
    let rounds = done.lock().clone();

    // What the SDK sees, live.
    let file = client.stat("/t/f").await.unwrap();
    assert_eq!(file.nlink as usize, 1 + rounds.len(), "{file:?}");
    for Round(i) in &rounds {
        assert_eq!(
            client.readlink(&format!("/t/s{i}")).await.unwrap(),
            format!("target-{i}")
        );
        let r = client.stat(&format!("/t/r{i}")).await.unwrap();
        assert_eq!(r.ino, file.ino);
        assert!(!client.exists(&format!("/t/h{i}")).await.unwrap());
    }

    // What the store holds, offline: the invariants, and every round.
    cluster.kill_mds_at(0);
    // A group of one commits each entry it appended (the committed id it
    // records is written behind and may lag after a kill).
    let (_, state) = RaftStorage::logged_state(cluster.mds_dirs[0].join("mds.redb")).unwrap();
    state.check_invariants().unwrap();
    let ino = state.lookup("/t/f").unwrap();
    let node = state.inode(ino).unwrap();
    assert_eq!(node.links.len(), rounds.len(), "one more name per round");
    let last = rounds.last().unwrap().0;
    let stat = state.stat_of(ino).unwrap();
    assert_eq!(stat.mode, 0o4750 | (last % 8), "the last chmod");
    assert_eq!(stat.mode & S_ISUID, S_ISUID);
    for Round(i) in &rounds {
        let s = state.lookup(&format!("/t/s{i}")).unwrap();
        assert_eq!(state.inode(s).unwrap().kind, InodeKind::Symlink);
        assert_eq!(
            state.get_xattr(&format!("/t/s{i}"), "user.round").unwrap(),
            i.to_string().as_bytes()
        );
        assert_eq!(state.lookup(&format!("/t/r{i}")).unwrap(), ino);
    }
}
