//! The chunk server's session against an in-memory MDS that can answer,
//! fail, hang or forget the server, on tokio's paused clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;

use super::*;
use crate::chunk::memory::MemNetwork;
use crate::chunk::{ChunkStore, MemChunkStore};
use crate::membership::{DirectoryOptions, MemMemberStore, MemberDirectory};
use crate::traits::ManualClock;
use crate::types::{
    CsId, CsRegistration, HeartbeatReply, MdsId, MdsMember, MdsMembership, SpaceInfo,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers every call.
    Up,
    /// Never answers (a frozen MDS).
    Hang,
    /// Fails every call with `Unavailable` (nothing listens).
    Down,
}

/// An MDS group in memory.
struct FakeMds {
    mode: Mutex<Mode>,
    /// The next heartbeat answers `Stale` (a new leader).
    stale_once: AtomicBool,
    /// How long a registration takes.
    register_delay: Mutex<Duration>,
    registrations: AtomicU64,
    heartbeats: AtomicU64,
    reports: AtomicU64,
    /// Bad-block reports answered `Busy` before the others are answered.
    busy_reports: AtomicU64,
    members: Mutex<MdsMembership>,
    /// `cs.fence_tout` and `cs.hb_tout` sent in heartbeat replies (0: none).
    deadlines: Mutex<(u64, u64)>,
}

fn membership(ids: &[u64], config_index: u64) -> MdsMembership {
    MdsMembership {
        members: ids
            .iter()
            .map(|&id| MdsMember {
                id: MdsId(id),
                addr: format!("10.0.0.{id}:2510"),
                voter: true,
            })
            .collect(),
        leader: ids.first().copied().map(MdsId),
        term: 1,
        config_index,
    }
}

impl FakeMds {
    fn new() -> Arc<FakeMds> {
        Arc::new(FakeMds {
            mode: Mutex::new(Mode::Up),
            stale_once: AtomicBool::new(false),
            register_delay: Mutex::new(Duration::ZERO),
            registrations: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            busy_reports: AtomicU64::new(0),
            members: Mutex::new(membership(&[1], 1)),
            deadlines: Mutex::new((0, 0)),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    /// Waits as the mode says; `Err` when it fails.
    async fn behave(&self) -> Result<()> {
        let mode = *self.mode.lock();
        match mode {
            Mode::Up => Ok(()),
            Mode::Hang => std::future::pending().await,
            Mode::Down => Err(Error::unavailable("no MDS listens")),
        }
    }
}

#[async_trait]
impl CsRegistry for FakeMds {
    async fn allocate_cs_id(&self) -> Result<CsId> {
        Err(Error::invalid("not in this fake"))
    }

    async fn register_cs(&self, registration: CsRegistration) -> Result<RegisterReply> {
        self.behave().await?;
        let delay = *self.register_delay.lock();
        tokio::time::sleep(delay).await;
        assert_eq!(registration.id, CsId(7));
        self.registrations.fetch_add(1, Ordering::SeqCst);
        Ok(RegisterReply {
            delete: Vec::new(),
            stale: vec![],
            heartbeat_interval_ms: 1000,
        })
    }

    async fn heartbeat(&self, cs: CsId, _: SpaceInfo, _: CsStats) -> Result<HeartbeatReply> {
        self.behave().await?;
        if self.stale_once.swap(false, Ordering::SeqCst) {
            return Err(Error::stale(format!(
                "chunk server {cs} has not registered"
            )));
        }
        self.heartbeats.fetch_add(1, Ordering::SeqCst);
        let (fence_ms, heartbeat_timeout_ms) = *self.deadlines.lock();
        Ok(HeartbeatReply {
            scrub_period_ms: 0,
            scrub_rate_bytes_per_s: 0,
            io_timeouts: Default::default(),
            fence_ms,
            heartbeat_timeout_ms,
        })
    }

    async fn report_bad_replica(&self, _: CsId, _: ChunkId, _: FailureReason) -> Result<()> {
        self.behave().await?;
        self.reports.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn report_bad_blocks(
        &self,
        _: CsId,
        chunk: ChunkId,
        report: crate::types::BadBlocks,
    ) -> Result<crate::types::ChunkMap> {
        self.behave().await?;
        self.reports.fetch_add(1, Ordering::SeqCst);
        let busy = self
            .busy_reports
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if busy.is_ok() {
            return Err(Error::new(
                ErrorKind::Busy,
                "the only copy cannot serve yet",
            ));
        }
        Ok(crate::types::ChunkMap {
            chunk,
            index: 0,
            version: report.version,
            replicas: vec![],
        })
    }
}

#[async_trait]
impl MdsGroup for FakeMds {
    async fn allocate_mds_id(&self) -> Result<MdsId> {
        Err(Error::invalid("not in this fake"))
    }
    async fn add_mds(&self, _: MdsId, _: &str) -> Result<()> {
        Err(Error::invalid("not in this fake"))
    }
    async fn remove_mds(&self, _: MdsId) -> Result<()> {
        Err(Error::invalid("not in this fake"))
    }
    async fn members(&self) -> Result<MdsMembership> {
        self.behave().await?;
        Ok(self.members.lock().clone())
    }
}

struct Harness {
    mds: Arc<FakeMds>,
    server: Arc<ChunkServer>,
    session: Arc<CsSession>,
    store: Arc<MemMemberStore>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start() -> Harness {
    let mds = FakeMds::new();
    let server = Arc::new(ChunkServer::new(
        CsId(7),
        Arc::new(MemChunkStore::new()),
        MemNetwork::new(),
    ));
    let store = Arc::new(MemMemberStore::new());
    let members = Arc::new(MemberDirectory::new(
        vec!["10.0.0.1:2510".into()],
        Some(store.clone()),
        Arc::new(ManualClock::new(1)),
        DirectoryOptions {
            refresh_period: Duration::from_secs(5),
            ..DirectoryOptions::default()
        },
    ));
    let session = Arc::new(CsSession::new(
        server.clone(),
        mds.clone(),
        mds.clone(),
        members,
        Arc::new(ManualClock::new(1_000_000)),
        "127.0.0.1:9100".into(),
        SessionOptions::default(),
    ));
    let task = {
        let session = session.clone();
        tokio::spawn(async move { session.run().await })
    };
    Harness {
        mds,
        server,
        session,
        store,
        task,
    }
}

/// Polls `cond` every 10 ms of (paused) time until it holds; panics after
/// `limit`. Returns how long it took.
async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn registers_then_serves_and_heartbeats() {
    let h = start();
    until(Duration::from_secs(1), "serving", || h.server.is_serving()).await;
    assert_eq!(h.mds.registrations.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let beats = h.mds.heartbeats.load(Ordering::SeqCst);
    assert!(
        (9..=11).contains(&beats),
        "{beats} heartbeats in 10 s at 1/s"
    );
    assert!(h.server.is_serving());
    let state = h.session.state();
    assert_eq!(state.registrations, 1);
    assert_eq!(state.fences, 0);
    assert_eq!(
        state.last_contact_ms, 1_000_000,
        "stamped by the injected clock"
    );
}

/// A frozen MDS (calls hang) and a dead one (calls fail) both make the
/// server stop serving once the fence passes after the last successful
/// heartbeat, and not before; when the MDS answers again the server
/// registers and serves again.
#[tokio::test(start_paused = true)]
async fn the_fence_counts_from_the_last_successful_heartbeat_whether_calls_hang_or_fail() {
    for mode in [Mode::Hang, Mode::Down] {
        let h = start();
        until(Duration::from_secs(1), "serving", || h.server.is_serving()).await;
        tokio::time::sleep(Duration::from_millis(3_300)).await;
        let beats = h.mds.heartbeats.load(Ordering::SeqCst);
        // Let a heartbeat just succeed, then break the MDS.
        until(Duration::from_secs(2), "a heartbeat", || {
            h.mds.heartbeats.load(Ordering::SeqCst) > beats
        })
        .await;
        h.mds.set(mode);
        let broken_at = Instant::now();
        let took = until(Duration::from_secs(30), "fenced", || !h.server.is_serving()).await;
        assert!(
            took <= DEFAULT_FENCE && took >= DEFAULT_FENCE - Duration::from_millis(100),
            "{mode:?}: stopped serving {took:?} after the last good heartbeat"
        );
        assert_eq!(h.session.state().fences, 1, "{mode:?}");
        // It keeps trying to register, and does not serve meanwhile.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!h.server.is_serving(), "{mode:?}");
        assert_eq!(h.mds.registrations.load(Ordering::SeqCst), 1, "{mode:?}");
        // The MDS comes back: registered and serving again.
        h.mds.set(Mode::Up);
        until(
            // A hung registration has a 10 s deadline before the retry.
            DEFAULT_REGISTER_TIMEOUT + Duration::from_secs(2),
            "registered again",
            || h.server.is_serving(),
        )
        .await;
        assert_eq!(h.mds.registrations.load(Ordering::SeqCst), 2, "{mode:?}");
        assert_eq!(h.session.state().registrations, 2);
        assert!(broken_at.elapsed() > Duration::from_secs(40));
    }
}

/// The fence and heartbeat deadline follow the cluster's parameters sent in
/// heartbeat replies; a heartbeat deadline longer than half the fence is
/// cut to half of it.
#[tokio::test(start_paused = true)]
async fn the_fence_and_heartbeat_deadline_follow_the_cluster() {
    let h = start();
    *h.mds.deadlines.lock() = (4_000, 9_000);
    until(Duration::from_secs(1), "serving", || h.server.is_serving()).await;
    assert_eq!(h.session.fence_timeout(), DEFAULT_FENCE);
    until(Duration::from_secs(3), "the cluster's fence", || {
        h.session.fence_timeout() == Duration::from_millis(4_000)
    })
    .await;
    assert_eq!(h.session.heartbeat_timeout(), Duration::from_millis(2_000));
    let beats = h.mds.heartbeats.load(Ordering::SeqCst);
    until(Duration::from_secs(2), "a heartbeat", || {
        h.mds.heartbeats.load(Ordering::SeqCst) > beats
    })
    .await;
    h.mds.set(Mode::Hang);
    let took = until(Duration::from_secs(30), "fenced", || !h.server.is_serving()).await;
    assert!(
        took <= Duration::from_millis(4_000) && took >= Duration::from_millis(3_900),
        "stopped serving {took:?} after the last good heartbeat, with cs.fence_tout=4000"
    );
}

/// A heartbeat answered `Stale` (a new leader) re-registers without closing
/// the data path; only if re-registering takes past the fence does the
/// server stop serving.
#[tokio::test(start_paused = true)]
async fn stale_re_registers_while_serving_until_the_fence() {
    let h = start();
    until(Duration::from_secs(1), "serving", || h.server.is_serving()).await;
    *h.mds.register_delay.lock() = Duration::from_secs(2);
    h.mds.stale_once.store(true, Ordering::SeqCst);
    // Throughout the slow re-registration the server serves.
    until(Duration::from_secs(10), "re-registered", || {
        assert!(h.server.is_serving(), "stopped serving on Stale");
        h.mds.registrations.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(h.session.state().fences, 0);
    // Now a re-registration that never ends: fenced at the deadline.
    *h.mds.register_delay.lock() = Duration::from_secs(3600);
    let beats = h.mds.heartbeats.load(Ordering::SeqCst);
    until(Duration::from_secs(2), "a heartbeat", || {
        h.mds.heartbeats.load(Ordering::SeqCst) > beats
    })
    .await;
    h.mds.stale_once.store(true, Ordering::SeqCst);
    let took = until(Duration::from_secs(30), "fenced", || !h.server.is_serving()).await;
    assert!(
        took <= DEFAULT_FENCE && took >= DEFAULT_FENCE - Duration::from_millis(1100),
        "stopped serving {took:?} after the last good heartbeat"
    );
    assert_eq!(h.session.state().fences, 1);
}

/// The members the group reports are saved as they change (a chunk
/// server keeps them in its directory), removals included.
#[tokio::test(start_paused = true)]
async fn members_learned_are_persisted() {
    let h = start();
    until(Duration::from_secs(1), "saved", || {
        h.store.saved().is_some()
    })
    .await;
    assert_eq!(h.store.saved().unwrap(), membership(&[1], 1));
    // make-mds twice.
    *h.mds.members.lock() = membership(&[1, 2, 3], 5);
    until(Duration::from_secs(10), "grown", || {
        h.store.saved().unwrap().members.len() == 3
    })
    .await;
    // rm-mds 1: the leader moves, MDS 1 drops out.
    let mut shrunk = membership(&[2, 3], 9);
    shrunk.term = 2;
    *h.mds.members.lock() = shrunk.clone();
    until(Duration::from_secs(10), "shrunk", || {
        h.store.saved().unwrap() == shrunk
    })
    .await;
    let saves = h.store.saves();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.store.saves(), saves, "saved again without a change");
}

#[tokio::test(start_paused = true)]
async fn corrupt_replicas_are_reported_when_the_mds_answers() {
    let mds = FakeMds::new();
    mds.set(Mode::Hang);
    let (queue, reporter) = bad_replica_queue();
    let server = Arc::new(ChunkServer::new(
        CsId(7),
        Arc::new(MemChunkStore::new()),
        MemNetwork::new(),
    ));
    let task = tokio::spawn(reporter.run(mds.clone(), server, Duration::from_secs(2)));
    queue.bad_replica(ChunkId(0x1f2), MapVersion(3), "checksum mismatch".into());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!task.is_finished());
    mds.set(Mode::Up);
    drop(queue);
    // Every report sent, the reporter ends with its queue.
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the reporter did not finish")
        .unwrap();
    assert_eq!(mds.reports.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn bad_blocks_the_mds_cannot_repair_yet_are_reported_again_soon() {
    // The chain's only member with a torn block whose one other copy is on
    // a server still down: the MDS answers Busy, not "no other copy"
    // (which would hold the blocks as unrepairable at this version for
    // good: seed 1629 of the 10,000-seed campaign).
    let mds = FakeMds::new();
    mds.busy_reports.store(2, Ordering::SeqCst);
    let store = Arc::new(MemChunkStore::new());
    let chunk = ChunkId(0x1f2);
    store.create(chunk, MapVersion(3), 1 << 20).unwrap();
    store.write(chunk, 40960, &[7u8; 4096]).unwrap();
    store.flush(chunk).unwrap();
    store.corrupt(chunk, 40960 + 100).unwrap();
    let (queue, reporter) = bad_replica_queue();
    let server = Arc::new(ChunkServer::new(CsId(7), store, MemNetwork::new()));
    server.set_bad_replica_sink(queue.clone());
    let task = tokio::spawn(reporter.run(mds.clone(), server.clone(), Duration::from_secs(2)));
    assert!(
        server
            .report_damage(chunk, None, "a torn write".into())
            .await
    );
    let started = tokio::time::Instant::now();
    let reports = || mds.reports.load(Ordering::SeqCst);
    until(Duration::from_secs(60), "three reports", || reports() >= 3).await;
    let took = started.elapsed();
    // Two waits of REPAIR_WAIT_RETRY (not REPAIR_RETRY_AFTER, nor never).
    assert!(took >= 2 * crate::chunk::REPAIR_WAIT_RETRY, "{took:?}");
    assert!(took < crate::chunk::REPAIR_RETRY_AFTER, "{took:?}");
    // The third answer names no source: now unrepairable at this version,
    // so no more reports.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(reports(), 4, "found, then unrepairable, and nothing more");
    server.set_bad_replica_sink(Arc::new(crate::chunk::scrub::LogSink));
    drop(queue);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the reporter did not finish")
        .unwrap();
}
