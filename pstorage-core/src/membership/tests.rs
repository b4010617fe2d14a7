use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use super::*;
use crate::traits::ManualClock;

fn member(id: u64, port: u16, voter: bool) -> MdsMember {
    MdsMember {
        id: MdsId(id),
        addr: format!("127.0.0.1:{port}"),
        voter,
    }
}

fn group(members: Vec<MdsMember>, leader: Option<u64>, term: u64, config: u64) -> MdsMembership {
    MdsMembership {
        members,
        leader: leader.map(MdsId),
        term,
        config_index: config,
    }
}

fn sample() -> MdsMembership {
    group(
        vec![
            member(1, 2510, true),
            member(2, 2511, true),
            MdsMember {
                id: MdsId(3),
                addr: "10.0.0.3:2510".into(),
                voter: false,
            },
        ],
        Some(2),
        3,
        12,
    )
}

fn directory(
    bootstrap: &[&str],
    store: Option<Arc<dyn MemberStore>>,
    options: DirectoryOptions,
) -> MemberDirectory {
    MemberDirectory::new(
        bootstrap.iter().map(|s| s.to_string()).collect(),
        store,
        Arc::new(ManualClock::new(1_000)),
        options,
    )
}

#[test]
fn member_list_format_1_matches_the_golden_file() {
    let golden = include_str!("mds_list_v1.golden");
    // Members are written by id whatever their order in the answer.
    let mut shuffled = sample();
    shuffled.members.reverse();
    assert_eq!(encode_member_list(&shuffled, 1_700_000_000_000), golden);
    let (decoded, saved_at) = decode_member_list(golden).unwrap();
    assert_eq!(decoded, sample());
    assert_eq!(saved_at, 1_700_000_000_000);
    // Without a known leader the line is left out, and read back as None.
    let mut leaderless = sample();
    leaderless.leader = None;
    let text = encode_member_list(&leaderless, 5);
    assert!(!text.contains("leader"), "{text}");
    assert_eq!(decode_member_list(&text).unwrap().0, leaderless);
}

#[test]
fn member_list_refuses_newer_and_malformed_files() {
    let newer =
        include_str!("mds_list_v1.golden").replace("pstorage-mds-list 1", "pstorage-mds-list 2");
    let e = decode_member_list(&newer).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("newer"), "{e}");
    for bad in [
        "",
        "bs.list style\n127.0.0.1:2510\n",
        "pstorage-mds-list x\nmds 1 127.0.0.1:2510 voter\n",
        "pstorage-mds-list 1\nterm 1\n",
        "pstorage-mds-list 1\nmds 1 127.0.0.1:2510 boss\n",
        "pstorage-mds-list 1\nmds one 127.0.0.1:2510 voter\n",
        "pstorage-mds-list 1\nmds 1 127.0.0.1:port voter\n",
        "pstorage-mds-list 1\nmds 1 a:1 voter\nmds 1 b:1 voter\n",
        "pstorage-mds-list 1\nmds 1 a:1 voter\nwhat 7\n",
    ] {
        let e = decode_member_list(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{bad:?}: {e}");
    }
    // Comments and blank lines are fine.
    let commented = format!(
        "# saved by pstorage\n\n{}",
        include_str!("mds_list_v1.golden")
    );
    assert_eq!(decode_member_list(&commented).unwrap().0, sample());
}

#[test]
fn file_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileMemberStore::in_dir(dir.path());
    assert_eq!(store.load().unwrap(), None);
    store.save(&sample(), 42).unwrap();
    assert_eq!(store.load().unwrap(), Some((sample(), 42)));
    let text = std::fs::read_to_string(dir.path().join(MEMBER_LIST_FILE)).unwrap();
    assert!(text.starts_with("pstorage-mds-list 1\n"), "{text}");
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // A corrupt file is an error of load, and a directory ignores it.
    std::fs::write(store.path(), "garbage").unwrap();
    assert_eq!(store.load().unwrap_err().kind(), ErrorKind::Corrupt);
    let d = directory(
        &["127.0.0.1:9"],
        Some(Arc::new(store.clone())),
        DirectoryOptions::default(),
    );
    assert_eq!(d.addrs(), vec!["127.0.0.1:9".to_string()]);
    // Saving into a directory that does not exist fails; the directory
    // only warns.
    let missing = FileMemberStore::new(dir.path().join("no/such/dir/mds.list"));
    assert!(missing.save(&sample(), 1).is_err());
    let d = directory(
        &["127.0.0.1:9"],
        Some(Arc::new(missing)),
        DirectoryOptions::default(),
    );
    assert!(d.learn(sample()));
}

#[test]
fn dial_order_is_leader_voters_learners_then_bootstrap() {
    let d = directory(
        &["127.0.0.1:2510", "127.0.0.1:7777"],
        None,
        DirectoryOptions::default(),
    );
    assert_eq!(d.addrs(), vec!["127.0.0.1:2510", "127.0.0.1:7777"]);
    assert!(d.learn(sample()));
    assert_eq!(
        d.addrs(),
        vec![
            "127.0.0.1:2511",
            "127.0.0.1:2510",
            "10.0.0.3:2510",
            "127.0.0.1:7777"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failed_addresses_go_last_for_a_while() {
    let d = directory(
        &[],
        None,
        DirectoryOptions {
            failure_memory: Duration::from_secs(30),
            ..DirectoryOptions::default()
        },
    );
    d.learn(sample());
    d.note_failure("127.0.0.1:2511");
    tokio::time::advance(Duration::from_secs(1)).await;
    d.note_failure("127.0.0.1:2510");
    assert_eq!(
        d.addrs(),
        vec!["10.0.0.3:2510", "127.0.0.1:2511", "127.0.0.1:2510"],
        "oldest failure first among the failed"
    );
    // A connection clears it.
    d.note_connected("127.0.0.1:2510");
    assert_eq!(
        d.addrs(),
        vec!["127.0.0.1:2510", "10.0.0.3:2510", "127.0.0.1:2511"]
    );
    // And failures are forgotten after a while.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        d.addrs(),
        vec!["127.0.0.1:2511", "127.0.0.1:2510", "10.0.0.3:2510"]
    );
}

#[test]
fn stale_answers_do_not_undo_newer_knowledge() {
    let store = Arc::new(MemMemberStore::new());
    let d = directory(
        &["127.0.0.1:2510"],
        Some(store.clone()),
        DirectoryOptions::default(),
    );
    assert!(d.learn(sample()));
    assert_eq!(store.saves(), 1);
    // The same answer again: nothing to save.
    assert!(!d.learn(sample()));
    assert_eq!(store.saves(), 1);
    // A lagging follower: older member list, older term, no leader.
    let old = group(vec![member(1, 2510, true)], None, 2, 5);
    assert!(!d.learn(old));
    assert_eq!(d.membership().unwrap(), sample());
    // Same term, no leader known (an election in progress elsewhere):
    // keep the leader we know.
    assert!(!d.learn(group(sample().members, None, 3, 12)));
    assert_eq!(d.membership().unwrap().leader, Some(MdsId(2)));
    // A newer term elects MDS 1.
    assert!(d.learn(group(sample().members, Some(1), 4, 12)));
    assert_eq!(d.addrs()[0], "127.0.0.1:2510");
    assert_eq!(store.saved().unwrap().leader, Some(MdsId(1)));
    // MDS 1 is removed (rm-mds): newer config, it drops out, and so does
    // its leadership.
    let removed = group(
        vec![member(2, 2511, true), sample().members[2].clone()],
        Some(1),
        4,
        20,
    );
    assert!(d.learn(removed));
    let m = d.membership().unwrap();
    assert_eq!(m.members.len(), 2);
    assert_eq!(m.leader, None, "a removed MDS cannot lead");
    assert_eq!(
        store
            .saved()
            .unwrap()
            .members
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        vec![MdsId(2), MdsId(3)]
    );
    // Still dialed as a last resort: it is in bs.list.
    assert_eq!(d.addrs().last().unwrap(), "127.0.0.1:2510");
    // An MDS that has not joined yet knows no members: ignored.
    assert!(!d.learn(group(vec![], None, 9, 99)));
    assert_eq!(d.membership().unwrap().members.len(), 2);
}

#[test]
fn a_saved_list_is_used_at_start_and_replaced_by_the_first_answer() {
    let store = Arc::new(MemMemberStore::new());
    store.save(&sample(), 7).unwrap();
    // Every bootstrap MDS is gone: the saved list still names the group.
    let d = directory(
        &["127.0.0.1:1"],
        Some(store.clone()),
        DirectoryOptions::default(),
    );
    assert_eq!(
        d.addrs(),
        vec![
            "127.0.0.1:2511",
            "127.0.0.1:2510",
            "10.0.0.3:2510",
            "127.0.0.1:1"
        ]
    );
    // The cluster was rebuilt meanwhile (lower indexes): the first answer
    // wins all the same.
    let rebuilt = group(vec![member(1, 3000, true)], Some(1), 1, 1);
    assert!(d.learn(rebuilt.clone()));
    assert_eq!(d.membership().unwrap(), rebuilt);
    assert_eq!(store.saved().unwrap(), rebuilt);
    // From then on, ordering rules apply.
    assert!(!d.learn(group(sample().members, None, 0, 0)));
}

/// An `MdsGroup` that answers `members` from a settable value, or hangs.
struct FakeGroup {
    answer: Mutex<Result<MdsMembership>>,
    hang: std::sync::atomic::AtomicBool,
    calls: AtomicUsize,
}

impl FakeGroup {
    fn new(answer: Result<MdsMembership>) -> FakeGroup {
        FakeGroup {
            answer: Mutex::new(answer),
            hang: Default::default(),
            calls: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl MdsGroup for FakeGroup {
    async fn allocate_mds_id(&self) -> Result<MdsId> {
        Err(Error::invalid("not in this fake"))
    }
    async fn add_mds(&self, _id: MdsId, _addr: &str) -> Result<()> {
        Err(Error::invalid("not in this fake"))
    }
    async fn remove_mds(&self, _id: MdsId) -> Result<()> {
        Err(Error::invalid("not in this fake"))
    }
    async fn members(&self) -> Result<MdsMembership> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.answer.lock().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn refresh_is_due_after_connections_failures_and_periods() {
    let d = directory(
        &["127.0.0.1:2510"],
        None,
        DirectoryOptions {
            refresh_period: Duration::from_secs(10),
            ..DirectoryOptions::default()
        },
    );
    let g = FakeGroup::new(Ok(sample()));
    assert!(d.refresh_due(), "never refreshed");
    assert!(d.refresh(&g, Duration::from_secs(1)).await.unwrap());
    assert!(!d.refresh_due());
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(!d.refresh_due());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(d.refresh_due(), "period passed");
    assert!(!d.refresh(&g, Duration::from_secs(1)).await.unwrap());
    assert!(!d.refresh_due());
    d.note_connected("127.0.0.1:2511");
    assert!(d.refresh_due(), "a new connection");
    d.refresh(&g, Duration::from_secs(1)).await.unwrap();
    d.note_failure("127.0.0.1:2511");
    assert!(d.refresh_due(), "a failure");

    // A hanging MDS: the refresh times out and stays due.
    g.hang.store(true, Ordering::SeqCst);
    let e = d.refresh(&g, Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(d.refresh_due());
    // An error answer too.
    g.hang.store(false, Ordering::SeqCst);
    *g.answer.lock() = Err(Error::unavailable("down"));
    assert!(d.refresh(&g, Duration::from_secs(2)).await.is_err());
    assert!(d.refresh_due());
    assert_eq!(g.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn one_refresh_at_a_time() {
    let d = Arc::new(directory(
        &["127.0.0.1:2510"],
        None,
        DirectoryOptions::default(),
    ));
    let g = Arc::new(FakeGroup::new(Ok(sample())));
    g.hang.store(true, Ordering::SeqCst);
    let first = {
        let (d, g) = (d.clone(), g.clone());
        tokio::spawn(async move { d.refresh(&*g, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!d.refresh_due(), "one is running");
    assert!(!d.refresh(&*g, Duration::from_secs(5)).await.unwrap());
    assert_eq!(g.calls.load(Ordering::SeqCst), 1);
    // Cancelling the running one frees the slot.
    first.abort();
    let _ = first.await;
    assert!(d.refresh_due());
}
