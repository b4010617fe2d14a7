//! Leases across steps of the MDS's wall clock (`mds::leader_time`): an
//! `MdsService` over a one-member Raft group, its clock a `ManualClock`.

use async_trait::async_trait;

use super::*;
use crate::mds::{MdsConfig, MdsService};
use crate::traits::{ChunkControl, ControlConnector, ManualClock, MetadataService};
use crate::types::{LeaseMode, OpenFlags};

/// No chunk server is reachable (leases need none).
struct NoServers;

#[async_trait]
impl ControlConnector for NoServers {
    async fn chunk_control(&self, addr: &str) -> Result<Arc<dyn ChunkControl>> {
        Err(Error::unavailable(format!("{addr}: no chunk servers here")))
    }
}

/// The default lease (30 s).
fn config() -> MdsConfig {
    MdsConfig {
        cluster_name: "test".into(),
        ..MdsConfig::default()
    }
}

/// MDS 1 over `storage`, leading its one-member group.
pub(super) async fn start_mds(
    net: &Net,
    storage: RaftStorage,
    clock: Arc<ManualClock>,
    initialize: bool,
) -> (Arc<MdsService>, MdsRaft) {
    let state = storage.initial_state().unwrap();
    let mds = Arc::new(MdsService::new(
        state,
        None,
        Arc::new(NoServers),
        clock,
        config(),
    ));
    let (log, sm) = storage.into_parts(mds.clone());
    let raft_conf = Arc::new(raft_config("test", DEFAULT_SNAPSHOT_EVERY).unwrap());
    let raft = MdsRaft::new(MdsId(1), raft_conf, net.factory(MdsId(1)), log, sm)
        .await
        .unwrap();
    net.register(MdsId(1), raft.clone());
    mds.attach_raft(MdsId(1), raft.clone()).unwrap();
    if initialize {
        raft.initialize(BTreeMap::from([(MdsId(1), node_info(MdsId(1)))]))
            .await
            .unwrap();
    }
    raft.wait(Some(TIMEOUT))
        .state(ServerState::Leader, "MDS 1 leads")
        .await
        .unwrap();
    mds.leadership_changed().await;
    (mds, raft)
}

/// Stops MDS 1, steps its clock by `step_ms`, and starts it again 2 s later
/// (a new term).
async fn restart(
    net: &Net,
    (mds, raft): (Arc<MdsService>, MdsRaft),
    path: &Path,
    clock: &Arc<ManualClock>,
    step_ms: i64,
) -> (Arc<MdsService>, MdsRaft) {
    net.unregister(MdsId(1));
    raft.shutdown().await.unwrap();
    drop((mds, raft));
    clock.step(step_ms);
    clock.advance(2_000);
    start_mds(net, reopen(path).await, clock.clone(), false).await
}

#[tokio::test]
async fn leases_are_measured_on_the_leaders_monotonic_clock_whatever_its_wall_clock_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mds1.redb");
    let storage = RaftStorage::create(&path, &MdsState::new(cluster_attrs()).unwrap()).unwrap();
    let net = Net::default();
    let clock = Arc::new(ManualClock::new(1_767_225_600_000));
    let (mds, raft) = start_mds(&net, storage, clock.clone(), true).await;
    let flags = OpenFlags {
        create: true,
        ..OpenFlags::default()
    };

    // NTP steps the leader's clock back 172 s; a writer opens a file and
    // renews its lease 10 s later; NTP steps the clock forward again 10 s
    // after that. Before, the lease expired 132 s in the past of the
    // corrected clock, and the next tick revoked it.
    clock.step(-172_000);
    let lease = mds
        .open("/vm.img", LeaseMode::Write, flags, None)
        .await
        .unwrap()
        .lease;
    clock.advance(10_000);
    mds.renew(lease.id).await.unwrap();
    clock.step(172_000);
    clock.advance(10_000);
    mds.tick().await;
    mds.renew(lease.id)
        .await
        .expect("a step back and forth of the leader's clock revokes no lease");
    mds.chunk_map(lease.id, 0, false).await.unwrap();

    // The MDS restarts (a new term) with its clock 10 min ahead: its first
    // command gives every lease a whole duration on its clock.
    let (mds, raft) = restart(&net, (mds, raft), &path, &clock, 600_000).await;
    mds.tick().await;
    mds.renew(lease.id)
        .await
        .expect("a new leader whose clock is ahead revokes no lease");
    mds.chunk_map(lease.id, 0, false).await.unwrap();

    // It restarts again, its clock now 20 min behind, and the writer is
    // gone: its lease ends one duration after the take-over, not 20 min
    // later (seed 100311 of --all-faults: a dead client's lease held its
    // file `Busy` for good).
    let (mds, raft) = restart(&net, (mds, raft), &path, &clock, -1_200_000).await;
    mds.tick().await;
    clock.advance(29_000);
    mds.tick().await;
    mds.chunk_map(lease.id, 0, false).await.unwrap();
    clock.advance(2_000);
    mds.tick().await;
    let gone = mds.renew(lease.id).await.unwrap_err();
    assert_eq!(gone.kind(), ErrorKind::Stale, "{gone}");
    let reopened = mds.open("/vm.img", LeaseMode::Write, OpenFlags::default(), None);
    reopened.await.expect("another writer opens the file");
    net.unregister(MdsId(1));
    raft.shutdown().await.unwrap();
}
