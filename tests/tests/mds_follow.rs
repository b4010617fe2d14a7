//! Every node follows the MDS group (DESIGN.md section 5, "Metadata HA"):
//! chunk servers and clients made when the cluster had one MDS learn the
//! MDSes added later with `make-mds` from the group itself (their own
//! `bs.list` never changes), survive the loss of the first MDS, forget a
//! removed one, and a chunk server restarts from the member list it saved
//! when every MDS of its `bs.list` is gone. Real daemons, default 256 MiB
//! chunks and default timeouts (only the MDS's heartbeat interval is short).

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::membership::{decode_member_list, MEMBER_LIST_FILE};
use pstorage_core::types::{CsStatus, LeaseMode, MdsMembership, OpenFlags};
use pstorage_tests::{pattern, read_all, ClusterOptions, TestCluster};

const CHUNK: u64 = 256 << 20;

fn create() -> OpenFlags {
    OpenFlags {
        create: true,
        ..Default::default()
    }
}

/// The member list saved in `dir`, if any.
fn saved_members(dir: &Path) -> Option<MdsMembership> {
    let text = std::fs::read_to_string(dir.join(MEMBER_LIST_FILE)).ok()?;
    Some(
        decode_member_list(&text)
            .expect("a saved member list decodes")
            .0,
    )
}

/// Waits until the member list saved in every one of `dirs` satisfies
/// `cond`.
fn wait_saved(dirs: &[&Path], what: &str, cond: impl Fn(&MdsMembership) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lists: Vec<_> = dirs.iter().map(|d| saved_members(d)).collect();
        if lists.iter().all(|l| l.as_ref().is_some_and(&cond)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: saved member lists are {lists:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A writer appending 64 KiB and flushing, again and again, recording
/// when each write+flush started and ended.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<(Instant, Instant)>>>,
    task: tokio::task::JoinHandle<Vec<u8>>,
}

impl Writer {
    fn start(client: &Client, path: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (client, stop, done, path) =
                (client.clone(), stop.clone(), done.clone(), path.to_string());
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
                    let started = Instant::now();
                    file.write_at(written.len() as u64, &piece)
                        .await
                        .unwrap_or_else(|e| panic!("a write failed: {e}"));
                    file.flush()
                        .await
                        .unwrap_or_else(|e| panic!("a flush failed: {e}"));
                    done.lock().push((started, Instant::now()));
                    written.extend_from_slice(&piece);
                }
                file.close().await.unwrap();
                written
            })
        };
        Writer { stop, done, task }
    }

    fn count(&self) -> usize {
        self.done.lock().len()
    }

    /// The first write+flush that started at or after `t`, waiting for it.
    async fn first_started_after(&self, t: Instant) -> (Instant, Instant) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(&found) = self.done.lock().iter().find(|(s, _)| *s >= t) {
                return found;
            }
            assert!(!self.task.is_finished(), "the writer stopped");
            assert!(Instant::now() < deadline, "no write+flush since the kill");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_count(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.count() < n {
            assert!(!self.task.is_finished(), "the writer stopped");
            assert!(Instant::now() < deadline, "the writer is stuck");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the writer failed")
    }
}

/// The README's way to grow: 1 MDS and 3 chunk servers running, then
/// `make-mds` twice, then kill -9 of the first MDS. Chunk servers and the
/// client know only the first MDS from their `bs.list`; they learned the
/// others from the group, so writes go on (the first write+flush after the
/// kill within 10 s) and no chunk server fences itself. Then the dead MDS
/// is removed with `rm-mds` (it drops out of every saved list), and a
/// chunk server whose `bs.list` names only that MDS restarts, registers
/// through the list it saved and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_grown_with_make_mds_survives_losing_the_first_mds() {
    let mut cluster = TestCluster::start(ClusterOptions {
        mds: 1,
        chunk_servers: 0,
        chunk_size: CHUNK,
        ..ClusterOptions::default()
    });
    let first = cluster.mds_addrs[0].clone();
    // Each chunk server and the writer get their own copy of bs.list, as
    // on other nodes: it names only the first MDS, for good.
    let mut confs = Vec::new();
    for i in 0..3 {
        let root = cluster.copy_conf(&format!("cs{i}"));
        cluster.add_cs_with_conf(&root);
        confs.push(root);
    }
    cluster.wait_active(3);
    let client_root = cluster.copy_conf("client");
    let client_conf_dir = client_root.join(&cluster.name);
    let client = cluster.client_in(&client_root, ClientOptions::default());
    let writer = Writer::start(&client, "/stream.bin");
    writer.wait_count(5).await;

    cluster.add_mds();
    cluster.add_mds();
    let cs_dirs: Vec<_> = cluster.cs_dirs.clone();
    let mut dirs: Vec<&Path> = cs_dirs.iter().map(|d| d.as_path()).collect();
    dirs.push(&client_conf_dir);
    wait_saved(&dirs, "learning the grown group", |m| m.members.len() == 3);
    for root in confs.iter().chain([&client_root]) {
        let bs = std::fs::read_to_string(root.join(&cluster.name).join("bs.list")).unwrap();
        assert_eq!(bs.trim(), first, "a private bs.list changed");
    }

    let before = writer.count();
    cluster.kill_mds_at(0);
    let killed = Instant::now();
    let (started, ended) = writer.first_started_after(killed).await;
    let pause = ended - killed;
    println!(
        "first write+flush after kill -9 of the first MDS: started {:?} and done {:?} after the kill",
        started - killed,
        pause
    );
    assert!(
        pause < Duration::from_secs(10),
        "writes resumed only {pause:?} after the MDS was killed"
    );
    writer.wait_count(writer.count() + 20).await;
    assert!(writer.count() > before);
    for i in 0..3 {
        let log = cluster.log(&format!("cs{i}.log"));
        assert!(
            !log.contains("stop serving"),
            "CS {i} fenced itself:\n{log}"
        );
    }

    // The first MDS is gone for good: rm-mds (through the survivors).
    let status = cluster.status().expect("status");
    let id = status
        .mds
        .iter()
        .find(|m| m.addr == first)
        .expect("the dead MDS is still a member")
        .id
        .to_string();
    let out = cluster.cli(&["rm-mds", &id]);
    assert!(
        out.status.success(),
        "rm-mds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_saved(&dirs, "forgetting the removed MDS", |m| {
        m.members.len() == 2 && !m.members.iter().any(|x| x.addr == first)
    });

    // Restart a chunk server: its bs.list names only the removed MDS.
    cluster.kill_cs(0);
    cluster.start_cs(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let registered = cluster
            .log("cs0.log")
            .matches("registered with the MDS")
            .count();
        let active = cluster
            .status()
            .map(|s| s.cs.iter().filter(|c| c.status == CsStatus::Active).count());
        if registered >= 2 && active == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted CS did not register ({registered} registrations, {active:?} active):\n{}",
            cluster.log("cs0.log")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let written = writer.finish().await;
    assert_eq!(read_all(&client, "/stream.bin").await, written);
    // It serves: a new file's chain holds every server, and reads back.
    let data = pattern(77, 1 << 20);
    let file = client
        .open("/after.bin", LeaseMode::Write, create())
        .await
        .unwrap();
    file.write_at(0, &data).await.unwrap();
    file.flush().await.unwrap();
    file.close().await.unwrap();
    let chunks = client.file_chunks("/after.bin").await.unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!(
        chunks[0].replicas.len(),
        3,
        "a replica was dropped: {chunks:?}"
    );
    assert_eq!(read_all(&client, "/after.bin").await, data);
}
