//! Deadlines on the data path, end to end in memory: the real client, MDS
//! service and chunk servers over [`MemNetwork`], on tokio's paused clock.
//! A frozen chunk server (SIGSTOP) is reported by whoever waits on it and
//! dropped once the MDS's own probe fails; a chunk server that one client
//! cannot reach, or that is slow but alive, keeps its replicas. A writer
//! lost mid-write leaves members that differ; the fence of the next open
//! brings them to one content (with the head inactive, a member hung, and
//! at the default chunk size too).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{Client, ClientOptions, File, ProblemKind};
use crate::chunk::memory::MemNetwork;
use crate::chunk::ChunkStore;
use crate::chunk::MemChunkStore;
use crate::error::Result;
use crate::mds::{ClusterParams, MdsConfig, MdsService, MdsState};
use crate::traits::{
    ChunkControl, ChunkService, ControlConnector, CsRegistry, ManualClock, MetadataService,
    WritePayload, WriteRequest,
};
use crate::types::{
    ChunkId, ChunkMap, ChunkReplicaInfo, CopyProgress, CopyStats, CsId, FileAttrs, IoTimeouts,
    LeaseMode, MapVersion, OpenFlags, Replica, Replicas,
};
use crate::ErrorKind;

const T: Duration = Duration::from_millis(IoTimeouts::DEFAULT_REPLICA_MS);
/// The MDS's probe deadline (the default of `mds.cs.probe_tout`).
fn probe_timeout() -> Duration {
    Duration::from_millis(ClusterParams::default().cs_probe_timeout_ms)
}

/// Counts the MDS's pings, forwarding every control call to the network.
struct CountingControl {
    net: Arc<MemNetwork>,
    pings: Arc<AtomicUsize>,
}

struct Counted {
    inner: Arc<dyn ChunkControl>,
    pings: Arc<AtomicUsize>,
}

#[async_trait]
impl ControlConnector for CountingControl {
    async fn chunk_control(&self, addr: &str) -> Result<Arc<dyn ChunkControl>> {
        Ok(Arc::new(Counted {
            inner: self.net.chunk_control(addr).await?,
            pings: self.pings.clone(),
        }))
    }
}

#[async_trait]
impl ChunkControl for Counted {
    async fn create_chunk(&self, chunk: ChunkId, version: MapVersion, size: u64) -> Result<()> {
        self.inner.create_chunk(chunk, version, size).await
    }
    async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.inner.set_version(chunk, version).await
    }
    async fn lend_for_repair(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.inner.lend_for_repair(chunk, version).await
    }
    async fn zero_tail(&self, chunk: ChunkId, version: MapVersion, offset: u64) -> Result<()> {
        self.inner.zero_tail(chunk, version, offset).await
    }
    async fn delete_chunk(&self, chunk: ChunkId) -> Result<()> {
        self.inner.delete_chunk(chunk).await
    }
    async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>> {
        self.inner.list_chunks().await
    }
    async fn replicate_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: Replica,
        rate: u64,
    ) -> Result<CopyStats> {
        self.inner
            .replicate_chunk(chunk, version, chunk_size, source, rate)
            .await
    }
    async fn copy_progress(&self, chunk: ChunkId) -> Result<Option<CopyProgress>> {
        self.inner.copy_progress(chunk).await
    }
    async fn ping(&self) -> Result<()> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        self.inner.ping().await
    }
}

/// An MDS and four chunk servers (replicas 3:2) in memory.
struct Rig {
    net: Arc<MemNetwork>,
    mds: Arc<MdsService>,
    pings: Arc<AtomicUsize>,
    /// The MDS's wall clock (leases expire by it).
    clock: Arc<ManualClock>,
    /// Each chunk server's store.
    stores: Vec<(CsId, Arc<MemChunkStore>)>,
}

impl Rig {
    async fn new() -> Rig {
        Rig::with_chunk_size(1 << 20).await
    }

    async fn with_chunk_size(chunk_size: u64) -> Rig {
        let net = MemNetwork::new();
        let pings = Arc::new(AtomicUsize::new(0));
        let clock = Arc::new(ManualClock::new(1_000_000));
        let attrs = FileAttrs {
            replicas: Replicas { norm: 3, min: 2 },
            chunk_size,
            ..Default::default()
        };
        let mds = Arc::new(MdsService::in_memory(
            MdsState::new(attrs).unwrap(),
            Arc::new(CountingControl {
                net: net.clone(),
                pings: pings.clone(),
            }),
            clock.clone(),
            MdsConfig {
                params: ClusterParams {
                    fill_margin_percent: 0,
                    ..ClusterParams::default()
                },
                ..MdsConfig::default()
            },
        ));
        let mut stores = Vec::new();
        for _ in 0..4 {
            let id = mds.allocate_cs_id().await.unwrap();
            let addr = format!("cs{id}");
            let store = Arc::new(MemChunkStore::new());
            stores.push((id, store.clone()));
            let server = net.add_server(id, &addr, store);
            let registration = server.registration(&addr).await.unwrap();
            mds.register_cs(registration).await.unwrap();
        }
        Rig {
            net,
            mds,
            pings,
            clock,
            stores,
        }
    }

    fn store(&self, cs: CsId) -> &MemChunkStore {
        &self
            .stores
            .iter()
            .find(|(id, _)| *id == cs)
            .expect("a store")
            .1
    }

    /// A client named `name` (see [`MemNetwork::client_view`]).
    fn client(&self, name: &str, io_timeout: Duration) -> Client {
        Client::new(
            self.mds.clone(),
            self.net.client_view(name),
            ClientOptions {
                io_timeout,
                ..ClientOptions::default()
            },
        )
    }

    fn map(&self, path: &str) -> ChunkMap {
        let state = self.mds.state_snapshot();
        let ino = state.lookup(path).unwrap();
        state.file_chunk_map(ino, 0).unwrap()
    }
}

async fn create(client: &Client, path: &str) -> File {
    let file = client
        .open(
            path,
            LeaseMode::Write,
            OpenFlags {
                create: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    file.write_at(0, &[1u8; 4096]).await.unwrap();
    file
}

fn chain(map: &ChunkMap) -> Vec<CsId> {
    map.replicas.iter().map(|r| r.cs).collect()
}

fn data(seed: u8) -> Bytes {
    Bytes::from((0..64 << 10).map(|i| (i as u8) ^ seed).collect::<Vec<u8>>())
}

/// Freezes the replica at `position` of a 3-replica chain under a writer:
/// the write completes on the survivors, the frozen one (and only it) is
/// dropped, within the budget of that position.
async fn frozen_member_is_dropped(position: usize) {
    let rig = Rig::new().await;
    let client = rig.client("vm", Duration::from_secs(60));
    let file = create(&client, "/disk").await;
    let before = rig.map("/disk");
    assert_eq!(before.replicas.len(), 3);
    let frozen = before.replicas[position].clone();
    rig.net.set_frozen(&frozen.addr, true);

    let started = Instant::now();
    file.write_at_bytes(0, data(position as u8)).await.unwrap();
    let paused = started.elapsed();

    let after = rig.map("/disk");
    let expected: Vec<CsId> = chain(&before)
        .into_iter()
        .filter(|cs| *cs != frozen.cs)
        .collect();
    assert_eq!(
        chain(&after),
        expected,
        "only the frozen replica is dropped"
    );
    assert_eq!(after.version, before.version + 1);
    // Whoever waits on the frozen replica reports it: the client for the
    // head (n shares), the head for the middle (2 shares), the middle for
    // the tail (1 share). Then the MDS's probe times out.
    let shares = 3 - position as u32;
    assert!(paused >= T * shares, "{paused:?} for position {position}");
    assert!(
        paused <= T * shares + probe_timeout() + Duration::from_millis(500),
        "{paused:?} for position {position}"
    );
    assert!(paused < Duration::from_secs(15), "the guest's pause budget");
    assert_eq!(rig.pings.load(Ordering::SeqCst), 1, "one probe");
    assert_eq!(
        file.read_at_bytes(0, 64 << 10).await.unwrap(),
        data(position as u8)
    );
    // Thawed, the server is out of the chain and a later write does not
    // touch it.
    rig.net.set_frozen(&frozen.addr, false);
    file.write_at_bytes(0, data(9)).await.unwrap();
    assert_eq!(rig.map("/disk").version, after.version);
    rig.net.clear();
}

#[tokio::test(start_paused = true)]
async fn a_frozen_tail_is_reported_by_the_middle_and_dropped() {
    frozen_member_is_dropped(2).await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_middle_is_reported_by_the_head_and_dropped() {
    frozen_member_is_dropped(1).await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_head_is_reported_by_the_client_and_dropped() {
    frozen_member_is_dropped(0).await;
}

#[tokio::test(start_paused = true)]
async fn reads_fail_over_from_a_frozen_replica() {
    let rig = Rig::new().await;
    let client = rig.client("vm", Duration::from_secs(60));
    let file = create(&client, "/disk").await;
    file.write_at_bytes(0, data(3)).await.unwrap();
    let before = rig.map("/disk");
    rig.net.set_frozen(&before.replicas[1].addr, true);
    // Every read completes, each within one replica deadline of failover.
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(file.read_at_bytes(0, 64 << 10).await.unwrap(), data(3));
        assert!(started.elapsed() <= T + Duration::from_millis(100));
    }
    rig.net.clear();
}

#[tokio::test(start_paused = true)]
async fn a_flush_fails_over_from_a_frozen_replica_after_its_own_deadline() {
    let rig = Rig::new().await;
    let client = rig.client("vm", Duration::from_secs(60));
    let file = create(&client, "/disk").await;
    file.write_at_bytes(0, data(4)).await.unwrap();
    let before = rig.map("/disk");
    let frozen = before.replicas[1].clone();
    rig.net.set_frozen(&frozen.addr, true);
    let started = Instant::now();
    file.flush().await.unwrap();
    let paused = started.elapsed();
    let flush_deadline = IoTimeouts::default().flush();
    assert!(paused >= flush_deadline, "{paused:?}");
    assert!(paused <= flush_deadline + probe_timeout() + Duration::from_millis(500));
    let after = rig.map("/disk");
    assert!(!chain(&after).contains(&frozen.cs), "{after:?}");
    assert_eq!(after.replicas.len(), 2);
    rig.net.clear();
}

#[tokio::test(start_paused = true)]
async fn reports_about_one_frozen_server_in_many_chains_cost_few_probes() {
    let rig = Rig::new().await;
    let client = rig.client("vm", Duration::from_secs(60));
    let mut files = Vec::new();
    for i in 0..4 {
        files.push(create(&client, &format!("/f{i}")).await);
    }
    // Placement spreads chunks; freeze a server that is in most chains.
    let maps: Vec<ChunkMap> = (0..4).map(|i| rig.map(&format!("/f{i}"))).collect();
    let victim = (1..=4u32)
        .map(CsId)
        .max_by_key(|cs| maps.iter().filter(|m| chain(m).contains(cs)).count())
        .unwrap();
    let hit = maps.iter().filter(|m| chain(m).contains(&victim)).count();
    assert!(hit >= 2, "{maps:?}");
    rig.net.set_frozen(&format!("cs{victim}"), true);
    let writes = files
        .iter()
        .enumerate()
        .map(|(i, f)| f.write_at_bytes(0, data(i as u8)));
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    for i in 0..4 {
        assert!(!chain(&rig.map(&format!("/f{i}"))).contains(&victim));
    }
    assert!(
        rig.pings.load(Ordering::SeqCst) <= 2,
        "{} probes for {hit} chains",
        rig.pings.load(Ordering::SeqCst)
    );
    rig.net.clear();
}

#[tokio::test(start_paused = true)]
async fn a_client_cut_off_from_one_server_does_not_strip_its_replicas() {
    let rig = Rig::new().await;
    let cut_off = rig.client("cut-off", Duration::from_secs(20));
    let other = rig.client("other", Duration::from_secs(60));
    let file = create(&cut_off, "/a").await;
    let before = rig.map("/a");
    let head = before.replicas[0].clone();
    rig.net.set_refused("cut-off", &head.addr, true);

    // The cut-off client's reads go around the head.
    assert_eq!(
        file.read_at_bytes(0, 4096).await.unwrap(),
        Bytes::from(vec![1u8; 4096])
    );
    // Its writes wait (the MDS reaches the head, so it stays) and fail
    // after its I/O timeout, saying why.
    let started = Instant::now();
    let e = file.write_at_bytes(0, data(1)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.message().contains("reachable from the MDS"), "{e}");
    assert!(started.elapsed() >= Duration::from_secs(20));
    let after = rig.map("/a");
    assert_eq!(
        (chain(&after), after.version),
        (chain(&before), before.version)
    );

    // Another client writes through the same server, unaffected.
    let g = create(&other, "/b").await;
    let started = Instant::now();
    g.write_at_bytes(0, data(2)).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(g.read_at_bytes(0, 64 << 10).await.unwrap(), data(2));
    assert_eq!(rig.map("/b").replicas.len(), 3);
    rig.net.clear();
}

#[tokio::test(start_paused = true)]
async fn a_slow_but_alive_server_is_not_dropped() {
    let rig = Rig::new().await;
    let client = rig.client("vm", Duration::from_secs(60));
    let file = create(&client, "/disk").await;
    let before = rig.map("/disk");
    let slow = before.replicas[2].addr.clone();
    // An fsync storm: every data-path call takes 5 s (more than the
    // replica deadline) for 20 s; the server still answers the MDS.
    rig.net.set_data_delay(&slow, Duration::from_secs(5));
    let net = rig.net.clone();
    let storm = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        net.set_data_delay(&slow, Duration::ZERO);
    });
    let started = Instant::now();
    file.write_at_bytes(0, data(7)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(20),
        "it waited out the storm"
    );
    storm.await.unwrap();
    let after = rig.map("/disk");
    assert_eq!(chain(&after), chain(&before), "nothing dropped");
    // Each timed-out attempt moved the chunk to a new version (so that the
    // attempt, still queued at the slow server, is refused when it lands).
    assert!(after.version > before.version);
    assert!(rig.pings.load(Ordering::SeqCst) >= 1, "the MDS checked it");
    assert_eq!(file.read_at_bytes(0, 64 << 10).await.unwrap(), data(7));
    rig.net.clear();
}

#[tokio::test(start_paused = true)]
async fn chunk_servers_and_clients_apply_the_cluster_deadlines() {
    let rig = Rig::new().await;
    rig.mds.set_config("io.replica_tout", 1_000).await.unwrap();
    let client = rig.client("vm", Duration::from_secs(60));
    let file = create(&client, "/disk").await;
    let before = rig.map("/disk");
    // Chunk servers learn it from heartbeat replies.
    let reply = rig
        .mds
        .heartbeat(CsId(1), Default::default(), Default::default())
        .await
        .unwrap();
    assert_eq!(reply.io_timeouts.replica_ms, 1_000);
    for r in &before.replicas {
        rig.net
            .server(&r.addr)
            .unwrap()
            .set_io_timeouts(reply.io_timeouts);
    }
    rig.net.set_frozen(&before.replicas[2].addr, true);
    let started = Instant::now();
    file.write_at_bytes(0, data(1)).await.unwrap();
    let paused = started.elapsed();
    assert!(paused >= Duration::from_secs(1), "{paused:?}");
    assert!(paused <= Duration::from_secs(1) + probe_timeout() + Duration::from_millis(500));
    rig.net.clear();
}

/// A write attempt that timed out at a slow (but alive) head is still
/// queued there and lands late. It must not overwrite the writes
/// acknowledged after it (sim seed 3079: a flushed write lost): the MDS,
/// told of the timeout, moves the chunk to a new version, so the late
/// attempt is refused.
#[tokio::test(start_paused = true)]
async fn a_timed_out_write_attempt_never_lands_over_a_later_write() {
    let rig = Rig::new().await;
    let client = rig.client("vm", Duration::from_secs(60));
    let file = create(&client, "/disk").await;
    let head = rig.map("/disk").replicas[0].addr.clone();
    // Longer than the head's deadline (its share of the chain's: 3 x T).
    rig.net
        .set_data_delay(&head, T * 3 + Duration::from_secs(3));
    let net = rig.net.clone();
    let slow = head.clone();
    let calm = tokio::spawn(async move {
        tokio::time::sleep(T * 3 + Duration::from_millis(100)).await;
        net.set_data_delay(&slow, Duration::ZERO);
    });
    // The first attempt times out at the head; a retry succeeds.
    file.write_at_bytes(0, data(1)).await.unwrap();
    calm.await.unwrap();
    file.write_at_bytes(0, data(2)).await.unwrap();
    // Past the moment the first attempt reaches the head.
    tokio::time::sleep(T * 3 + Duration::from_secs(10)).await;
    file.flush().await.unwrap();
    let map = rig.map("/disk");
    assert_eq!(map.replicas.len(), 3, "nothing dropped");
    for (cs, bytes) in member_contents(&rig, &map, 64 << 10).await {
        assert!(
            bytes == data(2),
            "CS {cs} holds the last acknowledged write"
        );
    }
    assert_eq!(file.read_at_bytes(0, 64 << 10).await.unwrap(), data(2));
    rig.net.clear();
}

/// What each member of `map`'s chain holds in its first `len` bytes.
async fn member_contents(rig: &Rig, map: &ChunkMap, len: u64) -> Vec<(CsId, Bytes)> {
    let mut out = Vec::new();
    for r in &map.replicas {
        let server = rig.net.server(&r.addr).expect("a server");
        let bytes = ChunkService::read_verified(&*server, map.chunk, map.version, 0, len)
            .await
            .unwrap();
        out.push((r.cs, bytes));
    }
    out
}

/// A writer lost in the middle of a chain write (its process killed after
/// the head applied the write and before the rest of the chain did) leaves
/// the members different at one version: reads rotating over them would
/// return two contents for one block. Once its lease expires, the next
/// open fences the file and brings every member to the head's content
/// before it answers, and the event log says so.
#[tokio::test(start_paused = true)]
async fn a_writer_lost_mid_write_leaves_no_replicas_different() {
    writer_lost_mid_write(true, 1 << 20).await;
}

/// The same at the default chunk size (256 MiB): the whole CRC table of
/// each member is compared (65,536 entries, paged).
#[tokio::test(start_paused = true)]
async fn a_writer_lost_mid_write_at_the_default_chunk_size() {
    writer_lost_mid_write(true, FileAttrs::default().chunk_size).await;
}

/// The same with the head's server inactive (not heard from lately) when
/// the file is fenced: the next member is the source, and the head, whose
/// extra write no one acknowledged, takes its content.
#[tokio::test(start_paused = true)]
async fn a_lost_write_on_an_inactive_head_is_undone_from_the_next_member() {
    writer_lost_mid_write(false, 1 << 20).await;
}

/// Chunk 0 of /disk written and flushed, then a write that only its head
/// applied (its forward never left) and a writer that vanishes: returns
/// the chain and what each member holds.
async fn lose_a_write(rig: &Rig) -> (ChunkMap, Vec<(CsId, Bytes)>) {
    let client = rig.client("vm", Duration::from_secs(60));
    let file = create(&client, "/disk").await;
    file.write_at_bytes(0, data(1)).await.unwrap();
    file.flush().await.unwrap();
    let map = rig.map("/disk");
    assert_eq!(map.replicas.len(), 3);
    // The lost write: the head applied it, its forward never left.
    let head = rig.net.server(&map.replicas[0].addr).unwrap();
    ChunkService::write(
        &*head,
        WriteRequest::new(
            map.chunk,
            map.version,
            8192,
            WritePayload::Data(Bytes::from(vec![7u8; 8192])),
            Vec::new(),
        ),
    )
    .await
    .unwrap();
    file.abandon();
    let before = member_contents(rig, &map, 64 << 10).await;
    assert!(before[0].1 != before[1].1, "the head and the rest differ");
    assert!(before[1].1 == before[2].1);
    (map, before)
}

/// Lets the lost writer's lease expire, with `heard` hearing from the
/// MDS meanwhile.
async fn expire_the_lost_lease(rig: &Rig, heard: &[Replica]) {
    rig.clock
        .advance(MdsConfig::default().lease_duration_ms + 1);
    for r in heard {
        rig.mds
            .heartbeat(r.cs, Default::default(), Default::default())
            .await
            .unwrap();
    }
    rig.mds.tick().await;
}

async fn writer_lost_mid_write(head_active: bool, chunk_size: u64) {
    let rig = Rig::with_chunk_size(chunk_size).await;
    let (map, before) = lose_a_write(&rig).await;

    // Nobody renews the lease: the next writer waits for it to expire.
    let other = rig.client("vm2", Duration::from_secs(60));
    let busy = other
        .open("/disk", LeaseMode::Write, OpenFlags::default())
        .await
        .unwrap_err();
    assert_eq!(busy.kind(), ErrorKind::Busy);
    // The chunk servers heartbeat meanwhile (active: sources of copies).
    let heard = if head_active { 0 } else { 1 };
    expire_the_lost_lease(&rig, &map.replicas[heard..]).await;
    let reopened = other
        .open("/disk", LeaseMode::Write, OpenFlags::default())
        .await
        .unwrap();

    let after_map = rig.map("/disk");
    assert!(after_map.version > map.version, "fenced");
    assert_eq!(chain(&after_map), chain(&map), "every member stays");
    let after = member_contents(&rig, &after_map, 64 << 10).await;
    let source = &before[heard].1;
    for (cs, bytes) in &after {
        assert!(bytes == source, "CS {cs} holds the source's content");
    }
    let read = reopened.read_at_bytes(8192, 8192).await.unwrap();
    assert_eq!(
        read.iter().all(|b| *b == 7),
        head_active,
        "the lost write reads back from every member, or from none"
    );
    let events = rig.mds.event_log(0).await.unwrap();
    let resynced: Vec<_> = events
        .iter()
        .filter(|e| e.message.contains("writer was lost mid-write"))
        .collect();
    // Both other members differed from the head, or the head from the
    // source.
    let expected = if head_active { 2 } else { 1 };
    assert_eq!(resynced.len(), expected, "{events:#?}");
    let state = rig.mds.state_snapshot();
    let ino = state.lookup("/disk").unwrap();
    assert!(!state.inode(ino).unwrap().fence_pending);
    rig.net.clear();
}

/// The same with a member that hangs (SIGSTOP) when the file is fenced:
/// it cannot take the new version, answers no probe and leaves the chain;
/// the open still succeeds, within the probe deadlines, and the members
/// left agree with the head.
#[tokio::test(start_paused = true)]
async fn a_member_hung_when_a_lost_writer_is_fenced_leaves_the_chain() {
    let rig = Rig::new().await;
    let (map, before) = lose_a_write(&rig).await;
    expire_the_lost_lease(&rig, &map.replicas).await;
    let hung = map.replicas[2].clone();
    rig.net.set_frozen(&hung.addr, true);
    let other = rig.client("vm2", Duration::from_secs(60));
    let started = Instant::now();
    other
        .open("/disk", LeaseMode::Write, OpenFlags::default())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let after_map = rig.map("/disk");
    assert_eq!(chain(&after_map), chain(&map)[..2].to_vec());
    for (cs, bytes) in member_contents(&rig, &after_map, 64 << 10).await {
        assert!(bytes == before[0].1, "CS {cs} holds the head's content");
    }
    rig.net.set_frozen(&hung.addr, false);
    rig.net.clear();
}

/// `pstorage verify`: finds a block whose replicas hold different bytes
/// (with the groups that agree) and a block a replica cannot read, and a
/// repair makes every replica of the range equal to the head's.
#[tokio::test(start_paused = true)]
async fn verify_finds_replicas_that_differ_and_repair_makes_them_equal() {
    let rig = Rig::new().await;
    let client = rig.client("verifier", Duration::from_secs(10));
    let file = create(&client, "/disk").await;
    file.write_at_bytes(0, data(1)).await.unwrap();
    file.close().await.unwrap();
    let len = data(1).len() as u64;

    let clean = client.verify("/disk", false).await.unwrap();
    assert_eq!((clean.chunks, clean.replicas), (1, 3));
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    assert_eq!(clean.bytes_read, 3 * len);

    // The tail gets other bytes in block 3, behind the chain's back.
    let map = rig.map("/disk");
    let tail = map.replicas[2].cs;
    rig.store(tail)
        .write(map.chunk, 3 * 4096, &[9u8; 4096])
        .unwrap();
    let found = client.verify("/disk", false).await.unwrap();
    assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
    let p = &found.problems[0];
    assert_eq!((p.offset, p.len), (3 * 4096, 4096));
    assert_eq!(
        p.kind,
        ProblemKind::Differ {
            groups: vec![chain(&map)[..2].to_vec(), vec![tail]]
        }
    );
    assert!(p.to_string().contains("replicas differ"), "{p}");

    let repaired = client.verify("/disk", true).await.unwrap();
    assert!(repaired.problems.is_empty(), "{:?}", repaired.problems);
    assert_eq!(repaired.repaired.len(), 1);
    let map = rig.map("/disk");
    for (cs, bytes) in member_contents(&rig, &map, len).await {
        assert!(bytes == data(1), "CS {cs} still differs");
    }

    // A block that fails its CRC on one replica is unreadable there.
    let middle = map.replicas[1].cs;
    rig.store(middle).corrupt(map.chunk, 5 * 4096 + 10).unwrap();
    let found = client.verify("/disk", false).await.unwrap();
    assert!(
        found.problems.iter().any(|p| matches!(&p.kind,
            ProblemKind::Unreadable { cs, .. } if *cs == middle)
            && p.offset <= 5 * 4096
            && p.offset + p.len > 5 * 4096),
        "{:?}",
        found.problems
    );
}

// ----- end-to-end checksums --------------------------------------------

/// A write whose bytes change on the wire (to the head, or between two
/// chunk servers of the chain) is refused by the server that sees it, sent
/// again by the client, and lands everywhere; no replica is blamed.
#[tokio::test(start_paused = true)]
async fn a_write_changed_on_the_wire_is_refused_and_sent_again() {
    let rig = Rig::new().await;
    let client = rig.client("vm", Duration::from_secs(60));
    let file = create(&client, "/disk").await;
    let before = rig.map("/disk");
    for (round, member) in [0usize, 1, 2].into_iter().enumerate() {
        rig.net.damage_writes(&before.replicas[member].addr, 1);
        let bytes = data(10 + round as u8);
        file.write_at_bytes(0, bytes.clone()).await.unwrap();
        file.flush().await.unwrap();
        assert_eq!(
            rig.map("/disk"),
            before,
            "a replica was blamed (member {member})"
        );
        for (cs, content) in member_contents(&rig, &before, bytes.len() as u64).await {
            assert_eq!(
                content, bytes,
                "CS {cs} holds other bytes (damaged member {member})"
            );
        }
    }
    rig.net.clear();
}

/// A block damaged after its chunk server checked it (a bad buffer, a bug:
/// the stored CRC still goes with it) is caught by the reader's own check;
/// the read gets the right bytes from a replica and no replica is blamed.
#[tokio::test(start_paused = true)]
async fn a_block_damaged_after_its_check_is_caught_by_the_reader() {
    let rig = Rig::new().await;
    let client = rig.client("vm", Duration::from_secs(60));
    let file = create(&client, "/disk").await;
    file.write_at_bytes(0, data(4)).await.unwrap();
    file.flush().await.unwrap();
    let before = rig.map("/disk");
    // Every replica damages its next block read: the first round of
    // attempts fails everywhere, the next one succeeds.
    for r in &before.replicas {
        rig.store(r.cs).misread(1);
    }
    assert_eq!(
        file.read_at_bytes(0, 4096).await.unwrap(),
        data(4).slice(..4096)
    );
    for r in &before.replicas {
        assert_eq!(
            rig.store(r.cs).misreads_left(),
            0,
            "CS {} was not read",
            r.cs
        );
    }
    assert_eq!(rig.map("/disk"), before, "a replica was blamed");
    rig.net.clear();
}
