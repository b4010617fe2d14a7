//! Metadata high availability with real daemons: 3 or 5 MDS processes in a
//! Raft group, killed (-9), frozen (SIGSTOP), added and removed while a
//! writer streams data and a loop creates, renames and removes files.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::types::{LeaseMode, MdsRole, OpenFlags};
use pstorage_core::ErrorKind;
use pstorage_tests::{pattern, ClusterOptions, TestCluster};

const CHUNK: u64 = 1 << 20;

fn options(mds: usize) -> ClusterOptions {
    ClusterOptions {
        mds,
        chunk_servers: 3,
        chunk_size: CHUNK,
        env: vec![
            ("PSTORAGE_HEARTBEAT_MS".into(), "200".into()),
            ("PSTORAGE_RAFT_SNAPSHOT_EVERY".into(), "200".into()),
            // An open whose answer a fail-over lost leaves a lease nobody
            // renews; the retried open waits for it to expire (there is no
            // duplicate-request table yet), so keep leases short here.
            ("PSTORAGE_LEASE_MS".into(), "6000".into()),
        ],
        ..ClusterOptions::default()
    }
}

fn create() -> OpenFlags {
    OpenFlags {
        create: true,
        ..Default::default()
    }
}

/// The index of the MDS that leads now (by address), waiting for one.
fn leader(cluster: &TestCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(roles) = cluster.mds_roles() {
            if let Some((addr, _)) = roles.iter().find(|(_, r)| *r == MdsRole::Leader) {
                return cluster
                    .mds_addrs
                    .iter()
                    .position(|a| a == addr)
                    .expect("leader is one of ours");
            }
        }
        assert!(Instant::now() < deadline, "no MDS leader");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every running MDS in `expect_followers` is a follower that
/// caught up with the leader.
fn wait_caught_up(cluster: &TestCluster, members: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = cluster.status();
        if let Some(s) = &s {
            let ok = s
                .mds
                .iter()
                .filter(|m| m.role.is_in_quorum() && m.lag == 0)
                .count();
            if ok == members {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the MDS group did not catch up: {:?}",
            s.map(|s| s.mds)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A writer streaming data into one file and a loop creating, renaming and
/// removing files, until stopped. Records what was acknowledged and the
/// longest wait of any single operation.
struct Workload {
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<Vec<u8>>,
    meta: tokio::task::JoinHandle<BTreeSet<String>>,
    longest: Arc<Mutex<Duration>>,
}

impl Workload {
    async fn start(client: &Client, tag: &str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let longest = Arc::new(Mutex::new(Duration::ZERO));
        client.mkdir(&format!("/{tag}"), false).await.unwrap();
        let writer = {
            let (client, stop, longest) = (client.clone(), stop.clone(), longest.clone());
            let path = format!("/{tag}/stream.bin");
            tokio::spawn(async move {
                let file = client
                    .open(&path, LeaseMode::Write, create())
                    .await
                    .unwrap();
                let mut written = Vec::new();
                let mut seed = 0;
                while !stop.load(Ordering::SeqCst) {
                    let piece = pattern(seed, 64 << 10);
                    seed += 1;
                    let t = Instant::now();
                    file.write_at(written.len() as u64, &piece)
                        .await
                        .expect("a write failed during MDS fail-over");
                    if seed.is_multiple_of(8) {
                        file.flush()
                            .await
                            .expect("a flush failed during MDS fail-over");
                    }
                    note(&longest, t.elapsed());
                    written.extend_from_slice(&piece);
                }
                file.flush().await.unwrap();
                file.close().await.unwrap();
                written
            })
        };
        let meta = {
            let (client, stop, longest) = (client.clone(), stop.clone(), longest.clone());
            let dir = format!("/{tag}/ns");
            tokio::spawn(async move {
                client.mkdir(&dir, false).await.unwrap();
                let mut present = BTreeSet::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (a, b) = (format!("{dir}/a{i}"), format!("{dir}/b{i}"));
                    let t = Instant::now();
                    let f = client
                        .open(&a, LeaseMode::Write, create())
                        .await
                        .unwrap_or_else(|e| panic!("create {a}: {e}"));
                    f.close().await.unwrap_or_else(|e| panic!("close {a}: {e}"));
                    client
                        .rename(&a, &b)
                        .await
                        .unwrap_or_else(|e| panic!("rename {a}: {e}"));
                    if i.is_multiple_of(2) {
                        client
                            .unlink(&b)
                            .await
                            .unwrap_or_else(|e| panic!("unlink {b}: {e}"));
                    } else {
                        present.insert(format!("b{i}"));
                    }
                    note(&longest, t.elapsed());
                    i += 1;
                }
                present
            })
        };
        Workload {
            stop,
            writer,
            meta,
            longest,
        }
    }

    /// Stops it and checks every acknowledged effect is there.
    async fn finish(self, client: &Client, tag: &str) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        let written = self.writer.await.expect("writer");
        let present = self.meta.await.expect("namespace loop");
        assert!(
            !written.is_empty() && present.len() > 2,
            "the workload barely ran"
        );
        let names: BTreeSet<String> = client
            .readdir(&format!("/{tag}/ns"))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, present, "acknowledged namespace operations lost");
        let file = client
            .open(
                &format!("/{tag}/stream.bin"),
                LeaseMode::Read,
                OpenFlags::default(),
            )
            .await
            .unwrap();
        assert_eq!(file.size(), written.len() as u64);
        let back = file.read_at_bytes(0, written.len() as u64).await.unwrap();
        assert!(back[..] == written[..], "streamed data differs");
        file.close().await.unwrap();
        let longest = *self.longest.lock();
        longest
    }
}

fn note(longest: &Mutex<Duration>, d: Duration) {
    let mut l = longest.lock();
    if d > *l {
        *l = d;
    }
}

fn client(cluster: &TestCluster) -> Client {
    cluster.client_with(ClientOptions {
        io_timeout: Duration::from_secs(30),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_under_load_then_rejoins() {
    let mut cluster = TestCluster::start(options(3));
    let client = client(&cluster);
    let load = Workload::start(&client, "w").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old = leader(&cluster);
    cluster.kill_mds_at(old);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let now = leader(&cluster);
    assert_ne!(now, old);
    let longest = load.finish(&client, "w").await;
    assert!(
        longest < Duration::from_secs(10),
        "an operation waited {longest:?} during the fail-over"
    );
    // The old leader comes back as a follower and catches up.
    cluster.start_mds_at(old);
    wait_caught_up(&cluster, 3);
    assert_eq!(leader(&cluster), now);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_mds_survive_losing_two() {
    let mut cluster = TestCluster::start(options(5));
    let client = client(&cluster);
    let load = Workload::start(&client, "w").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let old = leader(&cluster);
    cluster.kill_mds_at(old);
    cluster.kill_mds_at((old + 1) % 5);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let longest = load.finish(&client, "w").await;
    assert!(longest < Duration::from_secs(10), "waited {longest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_majority_metadata_waits_then_fails_then_resumes() {
    let mut cluster = TestCluster::start(options(3));
    let client = client(&cluster);
    client.mkdir("/before", false).await.unwrap();
    let first = leader(&cluster);
    let second = (first + 1) % 3;
    cluster.kill_mds_at(first);
    cluster.kill_mds_at(second);
    let impatient = cluster.client_with(ClientOptions {
        io_timeout: Duration::from_secs(3),
        ..Default::default()
    });
    let t = Instant::now();
    let err = impatient.mkdir("/during", false).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::TimedOut),
        "{err}"
    );
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "failed at once: {err}"
    );
    assert!(
        err.message().contains("metadata") || err.message().contains("MDS"),
        "unclear error: {err}"
    );
    // One MDS back: a majority again; the same clients go on.
    cluster.start_mds_at(second);
    client.mkdir("/after", false).await.unwrap();
    impatient.mkdir("/after2", false).await.unwrap();
    let names: BTreeSet<String> = client
        .readdir("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.contains("before") && names.contains("after") && names.contains("after2"));
    assert!(!names.contains("during"), "a refused mkdir took effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_leader_cannot_commit_and_states_agree() {
    let mut cluster = TestCluster::start(options(3));
    let client = client(&cluster);
    let load = Workload::start(&client, "w").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let old = leader(&cluster);
    let pid = cluster.mds_pid(old).unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let longest = load.finish(&client, "w").await;
    assert!(longest < Duration::from_secs(10), "waited {longest:?}");
    assert_ne!(leader(&cluster), old, "the frozen leader kept leading");
    wait_caught_up(&cluster, 3);
    // Every MDS applied the same commands: stop them all and compare the
    // states their stores hold.
    for i in 0..3 {
        cluster.kill_mds_at(i);
    }
    // Each member records the committed log id behind its commit path,
    // so after kill -9 one may record an older one: compare the states at
    // the highest index any of them recorded as committed.
    use pstorage_core::mds::raft::RaftStorage;
    let top = cluster
        .mds_dirs
        .iter()
        .map(|d| RaftStorage::committed_state(d.join("mds.redb")).unwrap().0)
        .max()
        .unwrap();
    let states: Vec<_> = cluster
        .mds_dirs
        .iter()
        .map(|d| RaftStorage::state_at(d.join("mds.redb"), top).unwrap())
        .collect();
    assert_eq!(states[0], states[1]);
    assert_eq!(states[1], states[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_to_five_and_remove_the_leader_under_load() {
    let mut cluster = TestCluster::start(options(3));
    let client = client(&cluster);
    let load = Workload::start(&client, "w").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.add_mds();
    cluster.add_mds();
    wait_caught_up(&cluster, 5);
    let old = leader(&cluster);
    let id = cluster
        .status()
        .unwrap()
        .mds
        .iter()
        .find(|m| m.addr == cluster.mds_addrs[old])
        .unwrap()
        .id
        .to_string();
    let out = cluster.cli(&["rm-mds", &id]);
    assert!(
        out.status.success(),
        "rm-mds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bs = std::fs::read_to_string(cluster.conf_root.join("test").join("bs.list")).unwrap();
    assert!(
        !bs.contains(&cluster.mds_addrs[old]),
        "bs.list still names it: {bs}"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let longest = load.finish(&client, "w").await;
    assert!(longest < Duration::from_secs(10), "waited {longest:?}");
    let roles = cluster.mds_roles().unwrap();
    assert_eq!(roles.len(), 4, "{roles:?}");
    assert!(!roles.iter().any(|(a, _)| *a == cluster.mds_addrs[old]));
    cluster.kill_mds_at(old);
    let out = cluster.cli(&["stat"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("leader") && text.contains("TERM"), "{text}");
    // The event log tells the story: joins, the removal, the new election
    // (recorded by the new leader as it takes over).
    let mut log = String::new();
    for _ in 0..50 {
        let out = cluster.cli(&["get-event-log"]);
        log = String::from_utf8_lossy(&out.stdout).to_string();
        if log.matches("was elected leader").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log.matches("joined the metadata group").count(), 4, "{log}");
    assert!(
        log.contains(&format!("MDS {id} (")) && log.contains("is being removed"),
        "{log}"
    );
    let daemon_logs: String = (0..cluster.mds_dirs.len())
        .map(|i| cluster.log(&TestCluster::mds_log_name(i)))
        .flat_map(|l| {
            l.lines()
                .filter(|l| l.contains("leader") || l.contains("events"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        log.matches("was elected leader").count() >= 2,
        "{log}\n{daemon_logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_every_mds_at_once_keeps_the_state() {
    let mut cluster = TestCluster::start(options(3));
    let client = client(&cluster);
    let data = pattern(9, 3 * CHUNK as usize);
    client.mkdir("/d", false).await.unwrap();
    for i in 0..20 {
        client.mkdir(&format!("/d/{i}"), false).await.unwrap();
    }
    let f = client
        .open("/d/file", LeaseMode::Write, create())
        .await
        .unwrap();
    f.write_at(0, &data).await.unwrap();
    f.close().await.unwrap();
    let before_ns = client.readdir("/d").await.unwrap();
    let before_maps = client.file_chunks("/d/file").await.unwrap();
    for i in 0..3 {
        cluster.kill_mds_at(i);
    }
    for i in 0..3 {
        cluster.start_mds_at(i);
    }
    assert_eq!(client.readdir("/d").await.unwrap(), before_ns);
    assert_eq!(client.file_chunks("/d/file").await.unwrap(), before_maps);
    let f = client
        .open("/d/file", LeaseMode::Read, OpenFlags::default())
        .await
        .unwrap();
    assert!(f.read_at_bytes(0, data.len() as u64).await.unwrap()[..] == data[..]);
    f.close().await.unwrap();
}
