//! The group commit (`mds::group_commit`): commands proposed together go
//! as one log entry, and each keeps its own outcome.

use super::leader_clock::start_mds;
use super::*;
use crate::traits::{ManualClock, MetadataService};
use openraft::EntryPayload;

/// MDS 1 leading its one-member group, its database `mds1.redb` in the
/// returned directory.
async fn one_mds() -> (tempfile::TempDir, Net, Arc<crate::mds::MdsService>, MdsRaft) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds1.redb");
    let storage = RaftStorage::create(&path, &MdsState::new(cluster_attrs()).unwrap()).unwrap();
    let net = Net::default();
    let clock = Arc::new(ManualClock::new(1_767_225_600_000));
    let (mds, raft) = start_mds(&net, storage, clock, true).await;
    (dir, net, mds, raft)
}

/// Stops MDS 1 and returns the entries of its log, read back from `path`.
async fn stop_and_read_log(
    net: Net,
    mds: Arc<crate::mds::MdsService>,
    raft: MdsRaft,
    path: &std::path::Path,
) -> Vec<openraft::Entry<crate::mds::raft::MdsRaftConfig>> {
    net.unregister(MdsId(1));
    raft.shutdown().await.unwrap();
    drop((mds, raft));
    let (mut log, _sm) = reopen(path)
        .await
        .into_parts(TestHost::new(MdsState::new(cluster_attrs()).unwrap()));
    openraft::RaftLogReader::try_get_log_entries(&mut log, 0..)
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_commands_share_log_entries_and_keep_their_own_outcomes() {
    let (dir, net, mds, raft) = one_mds().await;
    let path = dir.path().join("mds1.redb");

    // 40 directories, each asked for twice at once: one of each pair is
    // created, the other refused, whichever entry either lands in.
    let calls = (0..80).map(|i| {
        let mds = mds.clone();
        async move { mds.mkdir(&format!("/d{}", i % 40), false, None).await }
    });
    let results = futures::future::join_all(calls).await;
    for d in 0..40 {
        let (first, second) = (&results[d], &results[d + 40]);
        let created = [first, second].iter().filter(|r| r.is_ok()).count();
        assert_eq!(created, 1, "/d{d}: {first:?} {second:?}");
        let refused = if first.is_ok() { second } else { first };
        assert_eq!(
            refused.as_ref().unwrap_err().kind(),
            ErrorKind::AlreadyExists,
            "/d{d}"
        );
    }
    assert_eq!(mds.readdir("/").await.unwrap().len(), 40);
    // The metrics count what the log shows below.
    let stats = mds.commit_stats();
    assert!(stats.commands >= 80, "{stats:?}");
    assert!(stats.entries < stats.commands, "{stats:?}");
    assert_eq!(stats.waiting, 0, "{stats:?}");

    // They shared entries: fewer entries than commands, one of several.
    let entries = stop_and_read_log(net, mds, raft, &path).await;
    let batches: Vec<usize> = entries
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(r) => Some(r.cmds.len()),
            _ => None,
        })
        .collect();
    let mkdirs: usize = batches.iter().sum();
    assert!(mkdirs >= 80, "every proposal is in the log: {batches:?}");
    assert!(
        batches.iter().any(|&n| n > 1),
        "concurrent proposals share entries: {batches:?}"
    );
    assert!(batches
        .iter()
        .all(|&n| n <= crate::mds::group_commit::MAX_BATCH));

    // Replayed from the log, the state is the same.
    let (_, state) = RaftStorage::committed_state(&path).unwrap();
    state.check_invariants().unwrap();
    for d in 0..40 {
        state.lookup(&format!("/d{d}")).unwrap();
    }
}

/// The only voter of its group reads without barrier rounds; once a
/// second voter joins, every read takes a round again, and concurrent
/// reads share them.
#[tokio::test]
async fn concurrent_reads_share_read_barrier_rounds() {
    let (dir, net, mds, raft) = one_mds().await;
    mds.mkdir("/d", false, None).await.unwrap();
    let stats = |mds: &crate::mds::MdsService| {
        let s = mds.commit_stats();
        assert_eq!(s.barrier_rounds, mds.barriers.rounds());
        assert_eq!(s.barrier_waiting, 0);
        (s.barrier_rounds, s.barrier_skipped)
    };
    let reads = |n: usize| {
        futures::future::join_all((0..n).map(|_| {
            let mds = mds.clone();
            async move { mds.stat("/d").await }
        }))
    };

    let (rounds, skipped) = stats(&mds);
    for stat in reads(10).await {
        assert_eq!(stat.unwrap().kind, crate::types::InodeKind::Dir);
    }
    assert_eq!(stats(&mds), (rounds, skipped + 10), "one voter: no rounds");

    // A joining MDS starts from a snapshot.
    compact_log_now(&raft, TIMEOUT).await.unwrap();
    let storage = RaftStorage::create_empty(dir.path().join("mds2.redb")).unwrap();
    let n2 = start(&net, MdsId(2), storage, DEFAULT_SNAPSHOT_EVERY).await;
    raft.add_learner(MdsId(2), node_info(MdsId(2)), true)
        .await
        .unwrap();
    raft.change_membership(BTreeSet::from([MdsId(1), MdsId(2)]), false)
        .await
        .unwrap();
    let (rounds, skipped) = stats(&mds);
    for stat in reads(50).await {
        assert_eq!(stat.unwrap().kind, crate::types::InodeKind::Dir);
    }
    let (after, skipped_after) = stats(&mds);
    assert_eq!(
        skipped_after, skipped,
        "two voters: every read takes a round"
    );
    assert!(
        (1..50).contains(&(after - rounds)),
        "50 concurrent reads took {} barrier rounds",
        after - rounds
    );
    net.unregister(MdsId(1));
    net.unregister(MdsId(2));
    raft.shutdown().await.unwrap();
    n2.raft.shutdown().await.unwrap();
}

/// A command past `MAX_COMMAND_BYTES` is refused before it is proposed,
/// even one whose own refusal would be logged (tagged); entries of large
/// commands stay within `MAX_ENTRY_BYTES` or hold one command.
#[tokio::test]
async fn an_oversized_command_is_refused_and_large_ones_get_entries_of_their_own() {
    use crate::mds::group_commit::{MAX_COMMAND_BYTES, MAX_ENTRY_BYTES};
    use crate::types::{OpTag, SessionId, XattrSet};
    let (dir, net, mds, raft) = one_mds().await;
    let path = dir.path().join("mds1.redb");
    for i in 0..32 {
        mds.mkdir(&format!("/x{i}"), false, None).await.unwrap();
    }
    let huge = format!("/{}", "a".repeat(MAX_COMMAND_BYTES));
    let op = OpTag {
        session: SessionId(7),
        seq: 1,
        done_below: 1,
    };
    let err = mds.mkdir(&huge, false, Some(op)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("largest"), "{err}");
    // 32 values of 60 KiB at once (one per directory: a node holds at
    // most 64 KiB): about 2 MiB, in entries of at most
    // MAX_ENTRY_BYTES each.
    let calls = (0..32).map(|i| {
        let mds = mds.clone();
        async move {
            mds.set_xattr(
                &format!("/x{i}"),
                "user.v",
                Some(vec![i as u8; 60 << 10]),
                XattrSet::Any,
                None,
            )
            .await
        }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let entries = stop_and_read_log(net, mds, raft, &path).await;
    for e in &entries {
        if let EntryPayload::Normal(r) = &e.payload {
            let bytes: usize = r
                .cmds
                .iter()
                .map(crate::mds::group_commit::encoded_size)
                .sum();
            assert!(
                r.cmds.len() == 1 || bytes <= MAX_ENTRY_BYTES,
                "{} commands of {bytes} bytes in one entry",
                r.cmds.len()
            );
        }
    }
}

/// A close is answered before its release commits
/// (`MdsService::commit_later`): the release goes with the next command
/// (one entry for the close of one file and the create of the next), a
/// command the lease would refuse waits for it, and a release nothing
/// follows commits on its own.
#[tokio::test]
async fn a_release_is_answered_at_once_and_goes_with_the_next_command() {
    use crate::types::{LeaseMode, OpenFlags};
    let (dir, net, mds, raft) = one_mds().await;
    let path = dir.path().join("mds1.redb");
    let create = OpenFlags {
        create: true,
        exclusive: true,
        ..Default::default()
    };
    let a = mds
        .open("/a", LeaseMode::Write, create, None)
        .await
        .unwrap();
    mds.close(a.lease.id).await.unwrap();
    // Answered before it commits: the lease is still there.
    assert!(mds.core().state.lease(a.lease.id).is_some());
    let b = mds
        .open("/b", LeaseMode::Write, create, None)
        .await
        .unwrap();
    // Applied before the open that came after it.
    assert!(mds.core().state.lease(a.lease.id).is_none());

    // Untagged, this open is checked against the state before it is
    // proposed, where /b's lease still excludes it: it waits for the
    // release instead of answering `Busy`.
    mds.close(b.lease.id).await.unwrap();
    let again = mds
        .open("/b", LeaseMode::Write, OpenFlags::default(), None)
        .await
        .unwrap();
    assert!(mds.core().state.lease(b.lease.id).is_none());

    // A release that nothing follows commits within LATER_DELAY.
    mds.close(again.lease.id).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while mds.core().state.has_leases() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("a lone release commits on its own");
    assert_eq!(mds.commit_stats().waiting, 0);

    let entries = stop_and_read_log(net, mds, raft, &path).await;
    let batches: Vec<Vec<&'static str>> = entries
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Normal(r) => Some(
                r.cmds
                    .iter()
                    .filter_map(|c| match c {
                        Command::Open { path, .. } if path == "/b" => Some("open /b"),
                        Command::ReleaseLease { lease, .. } if *lease == a.lease.id => {
                            Some("release /a")
                        }
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .filter(|names: &Vec<&str>| !names.is_empty())
        .collect();
    assert!(
        batches.contains(&vec!["release /a", "open /b"]),
        "the release and the next open share an entry: {batches:?}"
    );
}
