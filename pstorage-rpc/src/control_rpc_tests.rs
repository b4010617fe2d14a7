//! Loopback tests of the control RPC: `MdsClient` / `ControlClient` against
//! `RpcServerThread` serving in-memory fakes, on ephemeral ports, without
//! authentication (plain streams are handed to the server).

use parking_lot::Mutex;
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pstorage_core::membership::{DirectoryOptions, MemMemberStore, MemberDirectory};
use pstorage_core::traits::{
    ChunkControl, ControlConnector, CsRegistry, MdsGroup, MetadataService, SystemClock,
};
use pstorage_core::types::*;
use pstorage_core::{Error, ErrorKind, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::actor::{ClientOptions, Dialer, RpcServerThread, RpcServices};
use crate::control::TcpControlConnector;
use crate::mds::MdsClient;

// ---------------------------------------------------------------------------
// Fakes: record every call's arguments, answer with fixed samples, or with a
// configured error.

fn sample_stat(ino: InodeId) -> Stat {
    Stat {
        ino,
        kind: InodeKind::File,
        size: u64::MAX,
        mode: 0o7777,
        uid: u32::MAX,
        gid: 1000,
        nlink: 65_000,
        rdev: u64::MAX - 3,
        atime: Timestamp {
            sec: -1_000,
            nsec: 1,
        },
        mtime: Timestamp {
            sec: 1_700_000_000,
            nsec: 123_456_789,
        },
        ctime: Timestamp {
            sec: i64::MAX,
            nsec: 999_999_999,
        },
        attrs: FileAttrs {
            replicas: Replicas { norm: 15, min: 7 },
            chunk_size: 64 << 10,
            ..Default::default()
        },
    }
}

fn sample_dir_stat() -> Stat {
    Stat {
        ino: ROOT_INODE,
        kind: InodeKind::Dir,
        size: 0,
        mode: 0o2755,
        uid: 0,
        gid: 0,
        nlink: 2,
        rdev: 0,
        atime: Timestamp::from_ms(1),
        mtime: Timestamp::from_ms(1),
        ctime: Timestamp::from_ms(2),
        attrs: FileAttrs::default(),
    }
}

fn sample_chunk_map(index: u64) -> ChunkMap {
    ChunkMap {
        chunk: ChunkId(0x1f2 + index),
        index,
        version: MapVersion(42),
        replicas: vec![
            Replica {
                cs: CsId(3),
                addr: "127.0.0.1:9101".into(),
            },
            Replica {
                cs: CsId(u32::MAX),
                addr: "[::1]:9102".into(),
            },
        ],
    }
}

fn sample_open_reply() -> OpenReply {
    OpenReply {
        lease: Lease {
            id: LeaseId(77),
            ino: InodeId(12),
            mode: LeaseMode::Write,
            duration_ms: 30_000,
        },
        stat: sample_stat(InodeId(12)),
        io_timeouts: IoTimeouts {
            replica_ms: 2_500,
            flush_ms: u64::MAX,
        },
        parent: Some(sample_stat(InodeId(1))),
    }
}

fn sample_entries() -> Vec<DirEntry> {
    vec![
        DirEntry {
            name: "disk.img".into(),
            stat: sample_stat(InodeId(12)),
        },
        DirEntry {
            name: "ünïcødé ☃".into(),
            stat: sample_dir_stat(),
        },
    ]
}

fn sample_cluster_status() -> ClusterStatus {
    ClusterStatus {
        cluster_name: "test-cluster".into(),
        health: ClusterHealth::Degraded,
        mds: vec![MdsInfo {
            id: MdsId(1),
            addr: "127.0.0.1:2510".into(),
            role: MdsRole::Leader,
            term: 0,
            commit_index: 0,
            applied_index: 0,
            lag: 0,
        }],
        cs: vec![
            CsInfo {
                id: CsId(3),
                addr: "127.0.0.1:9101".into(),
                status: CsStatus::Active,
                space: SpaceInfo {
                    total_bytes: 1 << 40,
                    free_bytes: 1 << 39,
                },
                chunks: 1000,
                last_seen_ms_ago: 12,
                releasing: true,
                full: false,
                io: IoRates {
                    read_ops_per_s: 1,
                    write_ops_per_s: 2,
                    read_bytes_per_s: 3,
                    write_bytes_per_s: u64::MAX,
                },
                location: "1.2.3".into(),
                host: "node-a".into(),
                tier: 2,
                capacity_bytes: 1 << 41,
                held_bytes: 1 << 30,
                journal_bytes: 256 << 20,
                journal_used_bytes: 4096,
            },
            CsInfo {
                id: CsId(4),
                addr: "127.0.0.1:9102".into(),
                status: CsStatus::Dropped,
                space: SpaceInfo::default(),
                chunks: 0,
                last_seen_ms_ago: u64::MAX,
                releasing: false,
                full: true,
                io: IoRates::default(),
                location: "0.0.0".into(),
                host: String::new(),
                tier: 0,
                capacity_bytes: 0,
                held_bytes: 0,
                journal_bytes: 0,
                journal_used_bytes: 0,
            },
        ],
        files: 5,
        dirs: 2,
        chunks: 1000,
        chunk_counts: ChunkCounts {
            healthy: 990,
            degraded: 3,
            urgent: 2,
            blocked: 1,
            replicating: 4,
        },
        replication: ReplicationStatus {
            pending_chunks: 10,
            in_flight: 4,
            done_chunks: 7,
            done_bytes: 7 << 20,
            failed_chunks: 1,
            rate_bytes_per_s: 1 << 20,
            copied_bytes: 3 << 20,
            remaining_bytes: 30 << 20,
            eta_s: Some(30),
        },
        logical_bytes: 123_456_789,
        tiers: vec![TierSpace {
            tier: 2,
            servers: 1,
            capacity_bytes: 1 << 41,
            held_bytes: 1 << 30,
            free_bytes: 1 << 39,
        }],
        rebalance: RebalanceStatus {
            state: RebalanceState::Moving,
            in_flight: 2,
            done: 5,
            pending: 7,
            spread_permille: 123,
        },
        warnings: vec!["tier 2 has 1 host(s)".into()],
    }
}

fn sample_config() -> Vec<ConfigEntry> {
    vec![ConfigEntry {
        key: "mds.wd.offline_tout".into(),
        value: 5000,
        default: 300_000,
        unit: "ms".into(),
        description: "offline after this".into(),
    }]
}

fn sample_events() -> Vec<Event> {
    vec![
        Event {
            seq: 1,
            time_ms: 1_700_000_000_000,
            kind: EventKind::CsState,
            level: EventLevel::Error,
            message: "chunk server 3 is offline".into(),
        },
        Event {
            seq: u64::MAX,
            time_ms: 0,
            kind: EventKind::Config,
            level: EventLevel::Info,
            message: "ünïcødé".into(),
        },
    ]
}

fn sample_register_reply() -> RegisterReply {
    RegisterReply {
        delete: vec![ChunkId(1), ChunkId(2), ChunkId(u64::MAX)],
        stale: vec![ChunkId(7), ChunkId(u64::MAX - 1)],
        heartbeat_interval_ms: 1000,
    }
}

fn sample_replicas() -> Vec<ChunkReplicaInfo> {
    vec![
        ChunkReplicaInfo {
            chunk: ChunkId(0x1f2),
            version: MapVersion(9),
        },
        ChunkReplicaInfo {
            chunk: ChunkId(u64::MAX),
            version: MapVersion(0),
        },
    ]
}

/// Call log and configurable failure shared by the fakes.
#[derive(Default)]
struct Script {
    calls: Mutex<Vec<String>>,
    fail_with: Mutex<Option<Error>>,
}

impl Script {
    /// Records a call and returns the configured error, if any.
    fn enter(&self, call: String) -> Result<()> {
        self.calls.lock().push(call);
        match self.fail_with.lock().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock())
    }

    fn fail_with(&self, error: Option<Error>) {
        *self.fail_with.lock() = error;
    }
}

#[derive(Default)]
struct FakeMds {
    script: Script,
    /// What `members` answers (`None`: an error).
    members: Mutex<Option<MdsMembership>>,
    /// `readdir_page` answers the same page, claiming more, every time.
    stuck_pages: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl MdsGroup for FakeMds {
    async fn allocate_mds_id(&self) -> Result<MdsId> {
        self.script.enter("allocate_mds_id".into())?;
        Ok(MdsId(7))
    }
    async fn add_mds(&self, id: MdsId, addr: &str) -> Result<()> {
        self.script.enter(format!("add_mds {id} {addr}"))
    }
    async fn remove_mds(&self, id: MdsId) -> Result<()> {
        self.script.enter(format!("remove_mds {id}"))
    }
    async fn members(&self) -> Result<MdsMembership> {
        self.script.enter("members".into())?;
        self.members
            .lock()
            .clone()
            .ok_or_else(|| Error::unavailable("no members"))
    }
}

#[async_trait]
impl MetadataService for FakeMds {
    async fn open_with(
        &self,
        path: &str,
        mode: LeaseMode,
        flags: OpenFlags,
        perms: Perms,
        _op: Option<OpTag>,
    ) -> Result<OpenReply> {
        let perms = if perms == Perms::FILE {
            String::new()
        } else {
            format!(" {perms:?}")
        };
        self.script
            .enter(format!("open {path} {mode:?} {flags:?}{perms}"))?;
        Ok(sample_open_reply())
    }
    async fn renew(&self, lease: LeaseId) -> Result<()> {
        self.script.enter(format!("renew {lease}"))
    }
    async fn close(&self, lease: LeaseId) -> Result<()> {
        self.script.enter(format!("close {lease}"))
    }
    async fn stat(&self, path: &str) -> Result<Stat> {
        // "/slow" stays in flight long enough for a test to break the
        // connection under it.
        if path == "/slow" {
            self.script.enter(format!("stat {path}"))?;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        // "/n/<i>" answers ino i, so concurrent replies can be matched up.
        if let Some(i) = path.strip_prefix("/n/") {
            return Ok(sample_stat(InodeId(i.parse().expect("numbered path"))));
        }
        self.script.enter(format!("stat {path}"))?;
        Ok(sample_stat(InodeId(12)))
    }
    async fn mkdir_with(
        &self,
        path: &str,
        parents: bool,
        perms: Perms,
        _op: Option<OpTag>,
    ) -> Result<Stat> {
        let perms = if perms == Perms::DIR {
            String::new()
        } else {
            format!(" {perms:?}")
        };
        self.script
            .enter(format!("mkdir {path} {parents}{perms}"))?;
        Ok(sample_dir_stat())
    }
    async fn make_node(&self, path: &str, node: NewNode, _op: Option<OpTag>) -> Result<Stat> {
        self.script.enter(format!("make_node {path} {node:?}"))?;
        Ok(sample_stat(InodeId(13)))
    }
    async fn link(&self, from: &str, to: &str, _op: Option<OpTag>) -> Result<Stat> {
        self.script.enter(format!("link {from} {to}"))?;
        Ok(sample_stat(InodeId(14)))
    }
    async fn readlink(&self, path: &str) -> Result<String> {
        self.script.enter(format!("readlink {path}"))?;
        Ok("../ü/target".into())
    }
    async fn set_stat(&self, path: &str, change: StatChange, _op: Option<OpTag>) -> Result<Stat> {
        self.script.enter(format!("set_stat {path} {change:?}"))?;
        Ok(sample_stat(InodeId(15)))
    }
    async fn get_xattr(&self, path: &str, name: &str) -> Result<Vec<u8>> {
        self.script.enter(format!("get_xattr {path} {name}"))?;
        Ok(vec![0, 1, 255])
    }
    async fn list_xattrs(&self, path: &str) -> Result<Vec<String>> {
        self.script.enter(format!("list_xattrs {path}"))?;
        Ok(vec!["trusted.a".into(), "user.ü".into()])
    }
    async fn set_xattr(
        &self,
        path: &str,
        name: &str,
        value: Option<Vec<u8>>,
        how: XattrSet,
        _op: Option<OpTag>,
    ) -> Result<()> {
        self.script
            .enter(format!("set_xattr {path} {name} {value:?} {how:?}"))
    }
    async fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.script.enter(format!("readdir {path}"))?;
        Ok(sample_entries())
    }
    async fn readdir_page(&self, path: &str, after: Option<&str>) -> Result<DirPage> {
        if self.stuck_pages.load(Ordering::SeqCst) {
            return Ok(DirPage {
                entries: sample_entries(),
                more: true,
            });
        }
        let entries = self.readdir(path).await?;
        Ok(pstorage_core::traits::dir_page_after(entries, after))
    }
    async fn unlink(&self, path: &str, _op: Option<OpTag>) -> Result<()> {
        self.script.enter(format!("unlink {path}"))
    }
    async fn rename_with(
        &self,
        from: &str,
        to: &str,
        flags: RenameFlags,
        _op: Option<OpTag>,
    ) -> Result<()> {
        let flags = if flags == RenameFlags::default() {
            String::new()
        } else {
            format!(" {flags:?}")
        };
        self.script.enter(format!("rename {from} {to}{flags}"))
    }
    async fn set_attr(
        &self,
        path: &str,
        update: AttrUpdate,
        recursive: bool,
        _op: Option<OpTag>,
    ) -> Result<()> {
        self.script
            .enter(format!("set_attr {path} {update:?} {recursive}"))
    }
    async fn chunk_map(
        &self,
        lease: LeaseId,
        index: u64,
        allocate: bool,
    ) -> Result<Option<ChunkMap>> {
        self.script
            .enter(format!("chunk_map {lease} {index} {allocate}"))?;
        // Odd indexes are holes.
        Ok((index & 1 == 0).then(|| sample_chunk_map(index)))
    }
    async fn report_failure(
        &self,
        lease: LeaseId,
        chunk: ChunkId,
        version: MapVersion,
        cs: CsId,
        reason: FailureReason,
    ) -> Result<ChunkMap> {
        self.script.enter(format!(
            "report_failure {lease} {chunk:?} {version} {cs} {reason:?}"
        ))?;
        Ok(sample_chunk_map(4))
    }
    async fn commit_size(&self, lease: LeaseId, size: u64) -> Result<()> {
        self.script.enter(format!("commit_size {lease} {size}"))
    }
    async fn truncate(&self, lease: LeaseId, size: u64) -> Result<()> {
        self.script.enter(format!("truncate {lease} {size}"))
    }
    async fn file_chunks(&self, path: &str) -> Result<Vec<ChunkMap>> {
        self.script.enter(format!("file_chunks {path}"))?;
        Ok(vec![sample_chunk_map(0), sample_chunk_map(2)])
    }
    async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.script.enter("cluster_status".into())?;
        Ok(sample_cluster_status())
    }
    async fn get_config(&self) -> Result<Vec<ConfigEntry>> {
        self.script.enter("get_config".into())?;
        Ok(sample_config())
    }
    async fn set_config(&self, key: &str, value: u64) -> Result<()> {
        self.script.enter(format!("set_config {key} {value}"))
    }
    async fn event_log(&self, after_seq: u64) -> Result<Vec<Event>> {
        self.script.enter(format!("event_log {after_seq}"))?;
        Ok(sample_events())
    }
    async fn remove_cs(&self, cs: CsId, force: bool) -> Result<()> {
        self.script.enter(format!("remove_cs {cs} {force}"))
    }
}

#[async_trait]
impl CsRegistry for FakeMds {
    async fn allocate_cs_id(&self) -> Result<CsId> {
        self.script.enter("allocate_cs_id".into())?;
        Ok(CsId(u32::MAX - 1))
    }
    async fn register_cs(&self, registration: CsRegistration) -> Result<RegisterReply> {
        self.script.enter(format!("register_cs {registration:?}"))?;
        Ok(sample_register_reply())
    }
    async fn heartbeat(
        &self,
        cs: CsId,
        space: SpaceInfo,
        stats: CsStats,
    ) -> Result<HeartbeatReply> {
        self.script
            .enter(format!("heartbeat {cs} {space:?} {stats:?}"))?;
        Ok(HeartbeatReply {
            scrub_period_ms: u64::MAX,
            scrub_rate_bytes_per_s: 7,
            io_timeouts: IoTimeouts {
                replica_ms: 3,
                flush_ms: u64::MAX,
            },
            fence_ms: 11,
            heartbeat_timeout_ms: u64::MAX - 1,
        })
    }
    async fn report_bad_replica(
        &self,
        cs: CsId,
        chunk: ChunkId,
        reason: FailureReason,
    ) -> Result<()> {
        self.script
            .enter(format!("report_bad_replica {cs} {chunk:?} {reason:?}"))
    }
    async fn report_bad_blocks(
        &self,
        cs: CsId,
        chunk: ChunkId,
        report: pstorage_core::types::BadBlocks,
    ) -> Result<ChunkMap> {
        self.script
            .enter(format!("report_bad_blocks {cs} {chunk:?} {report:?}"))?;
        Ok(ChunkMap {
            chunk,
            index: u64::MAX,
            version: report.version,
            replicas: vec![Replica {
                cs: CsId(u32::MAX),
                addr: "peer:1".into(),
            }],
        })
    }
}

#[derive(Default)]
struct FakeControl {
    script: Script,
}

#[async_trait]
impl ChunkControl for FakeControl {
    async fn create_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
    ) -> Result<()> {
        self.script
            .enter(format!("create_chunk {chunk:?} {version} {chunk_size}"))
    }
    async fn set_version(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.script
            .enter(format!("set_version {chunk:?} {version}"))
    }
    async fn lend_for_repair(&self, chunk: ChunkId, version: MapVersion) -> Result<()> {
        self.script
            .enter(format!("lend_for_repair {chunk:?} {version}"))
    }
    async fn zero_tail(&self, chunk: ChunkId, version: MapVersion, offset: u64) -> Result<()> {
        self.script
            .enter(format!("zero_tail {chunk:?} {version} {offset}"))
    }
    async fn delete_chunk(&self, chunk: ChunkId) -> Result<()> {
        self.script.enter(format!("delete_chunk {chunk:?}"))
    }
    async fn list_chunks(&self) -> Result<Vec<ChunkReplicaInfo>> {
        self.script.enter("list_chunks".into())?;
        Ok(sample_replicas())
    }
    async fn replicate_chunk(
        &self,
        chunk: ChunkId,
        version: MapVersion,
        chunk_size: u64,
        source: Replica,
        rate_bytes_per_s: u64,
    ) -> Result<CopyStats> {
        self.script.enter(format!(
            "replicate_chunk {chunk:?} {version} {chunk_size} {} {} {rate_bytes_per_s}",
            source.cs, source.addr
        ))?;
        Ok(sample_copy_stats(chunk_size))
    }
    async fn copy_progress(&self, chunk: ChunkId) -> Result<Option<CopyProgress>> {
        self.script.enter(format!("copy_progress {chunk:?}"))?;
        // Even chunks have a copy running, odd ones do not.
        Ok(chunk.0.is_multiple_of(2).then_some(CopyProgress {
            chunk,
            version: MapVersion(u64::MAX),
            bytes_done: chunk.0 / 2,
            bytes_total: chunk.0,
        }))
    }
    async fn ping(&self) -> Result<()> {
        self.script.enter("ping".into())
    }
}

fn sample_copy_stats(chunk_size: u64) -> CopyStats {
    CopyStats {
        bytes_copied: chunk_size / 3,
        bytes_compared: chunk_size,
        reused_base: chunk_size.is_multiple_of(2),
    }
}

// ---------------------------------------------------------------------------
// Harness

#[derive(Clone, Copy)]
enum Serve {
    Mds,
    Control,
}

/// A server thread behind an accept loop on an ephemeral loopback port.
struct Harness {
    server: Arc<RpcServerThread>,
    addr: String,
    /// A second handle on every accepted socket, to break connections.
    accepted: Arc<Mutex<Vec<std::net::TcpStream>>>,
    accepted_count: Arc<AtomicUsize>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(services: RpcServices, serve: Serve) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Harness::start_on(listener, services, serve)
    }

    fn start_on(listener: TcpListener, services: RpcServices, serve: Serve) -> Harness {
        let addr = listener.local_addr().unwrap().to_string();
        let server = Arc::new(
            RpcServerThread::spawn(
                "test rpc server",
                crate::tls::test_credentials(crate::pki::Role::Mds),
                services,
            )
            .unwrap(),
        );
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let accepted_count = Arc::new(AtomicUsize::new(0));
        let (loop_server, loop_accepted, loop_count) =
            (server.clone(), accepted.clone(), accepted_count.clone());
        let accept_loop = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let stream = stream.into_std().unwrap();
                loop_accepted.lock().push(stream.try_clone().unwrap());
                loop_count.fetch_add(1, Ordering::SeqCst);
                let mut stream = TcpStream::from_std(stream).unwrap();
                let loop_server = loop_server.clone();
                tokio::spawn(async move {
                    if crate::auth::peek_channel(&mut stream).await.is_err() {
                        return;
                    }
                    match serve {
                        Serve::Mds => loop_server.serve_mds(stream, None).unwrap(),
                        Serve::Control => loop_server.serve_control(stream, None).unwrap(),
                    }
                });
            }
        });
        Harness {
            server,
            addr,
            accepted,
            accepted_count,
            accept_loop,
        }
    }

    /// Breaks every connection accepted so far, from the server's side.
    fn kill_connections(&self) {
        for stream in self.accepted.lock().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    async fn wait_for_connections(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.server.connections() != n {
            assert!(
                Instant::now() < deadline,
                "server still has {} connections, expected {n}",
                self.server.connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

fn plain_dialer() -> Dialer {
    crate::node::control_dialer(crate::tls::test_credentials(crate::pki::Role::Mds))
}

fn fast_options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(5),
        call_timeout: None,
    }
}

async fn mds_setup() -> (Arc<FakeMds>, Harness, MdsClient) {
    let fake = Arc::new(FakeMds::default());
    let harness = Harness::start(
        RpcServices::new().with_mds(fake.clone(), fake.clone()),
        Serve::Mds,
    )
    .await;
    let client =
        MdsClient::new(vec![harness.addr.clone()], plain_dialer(), fast_options()).unwrap();
    (fake, harness, client)
}

async fn wait_until_disconnected(client: &MdsClient) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.is_connected() {
        assert!(
            Instant::now() < deadline,
            "client did not notice the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_posix_method_round_trips() {
    let (fake, _harness, client) = mds_setup().await;
    let calls = || fake.script.take_calls();
    let perms = Perms {
        mode: 0o4750,
        uid: u32::MAX,
        gid: 7,
    };
    let flags = OpenFlags {
        create: true,
        exclusive: true,
        truncate: false,
    };
    client
        .open_with("/f", LeaseMode::Write, flags, perms, None)
        .await
        .unwrap();
    assert_eq!(
        client.mkdir_with("/d", false, perms, None).await.unwrap(),
        sample_dir_stat()
    );
    assert_eq!(
        calls(),
        [
            format!("open /f Write {flags:?} {perms:?}"),
            format!("mkdir /d false {perms:?}"),
        ]
    );
    for flags in [
        RenameFlags {
            no_replace: true,
            exchange: false,
        },
        RenameFlags {
            no_replace: false,
            exchange: true,
        },
    ] {
        client.rename_with("/a", "/b", flags, None).await.unwrap();
        assert_eq!(calls(), [format!("rename /a /b {flags:?}")]);
    }
    for spec in [
        NodeSpec::File,
        NodeSpec::Symlink {
            target: "ü/../x".into(),
        },
        NodeSpec::Fifo,
        NodeSpec::Socket,
        NodeSpec::CharDevice { rdev: 0 },
        NodeSpec::BlockDevice { rdev: u64::MAX },
    ] {
        let node = NewNode { spec, perms };
        assert_eq!(
            client.make_node("/n", node.clone(), None).await.unwrap(),
            sample_stat(InodeId(13))
        );
        assert_eq!(calls(), [format!("make_node /n {node:?}")]);
    }
    assert_eq!(
        client.link("/a", "/b", None).await.unwrap(),
        sample_stat(InodeId(14))
    );
    assert_eq!(client.readlink("/l").await.unwrap(), "../ü/target");
    assert_eq!(calls(), ["link /a /b", "readlink /l"]);
    for change in [
        StatChange::default(),
        StatChange {
            mode: Some(0o1777),
            uid: Some(0),
            gid: Some(u32::MAX),
            atime: Some(TimeChange::Now),
            mtime: Some(TimeChange::At(Timestamp {
                sec: i64::MIN,
                nsec: 999_999_999,
            })),
        },
    ] {
        assert_eq!(
            client.set_stat("/s", change, None).await.unwrap(),
            sample_stat(InodeId(15))
        );
        assert_eq!(calls(), [format!("set_stat /s {change:?}")]);
    }
    assert_eq!(client.get_xattr("/x", "user.k").await.unwrap(), [0, 1, 255]);
    assert_eq!(
        client.list_xattrs("/x").await.unwrap(),
        ["trusted.a", "user.ü"]
    );
    assert_eq!(calls(), ["get_xattr /x user.k", "list_xattrs /x"]);
    for (value, how) in [
        (Some(vec![]), XattrSet::Any),
        (Some(vec![9; 3]), XattrSet::Create),
        (None, XattrSet::Replace),
    ] {
        client
            .set_xattr("/x", "user.k", value.clone(), how, None)
            .await
            .unwrap();
        assert_eq!(calls(), [format!("set_xattr /x user.k {value:?} {how:?}")]);
    }
}

#[tokio::test]
async fn every_mds_method_round_trips() {
    let (fake, _harness, client) = mds_setup().await;
    let calls = || fake.script.take_calls();

    let flags = OpenFlags {
        create: true,
        exclusive: false,
        truncate: true,
    };
    assert_eq!(
        client
            .open("/vm/disk.img", LeaseMode::Write, flags, None)
            .await
            .unwrap(),
        sample_open_reply()
    );
    assert_eq!(calls(), [format!("open /vm/disk.img Write {flags:?}")]);
    let flags = OpenFlags {
        create: false,
        exclusive: true,
        truncate: false,
    };
    client
        .open("/a", LeaseMode::Read, flags, None)
        .await
        .unwrap();
    assert_eq!(calls(), [format!("open /a Read {flags:?}")]);

    client.renew(LeaseId(u64::MAX)).await.unwrap();
    client.close(LeaseId(5)).await.unwrap();
    assert_eq!(calls(), [format!("renew {}", u64::MAX), "close 5".into()]);

    assert_eq!(client.stat("/ü").await.unwrap(), sample_stat(InodeId(12)));
    assert_eq!(
        client.mkdir("/d/e", true, None).await.unwrap(),
        sample_dir_stat()
    );
    assert_eq!(client.readdir("/").await.unwrap(), sample_entries());
    client.unlink("/x", None).await.unwrap();
    client.rename("/x", "/y z", None).await.unwrap();
    assert_eq!(
        calls(),
        [
            "stat /ü",
            "mkdir /d/e true",
            "readdir /",
            "unlink /x",
            "rename /x /y z"
        ]
    );

    for (update, recursive) in [
        (AttrUpdate::default(), false),
        (
            AttrUpdate {
                replicas: Some(Replicas { norm: 3, min: 2 }),
                chunk_size: Some(1 << 20),
                ..Default::default()
            },
            true,
        ),
        (
            AttrUpdate {
                replicas: None,
                chunk_size: Some(MIN_CHUNK_SIZE),
                ..Default::default()
            },
            false,
        ),
    ] {
        client
            .set_attr("/d", update, recursive, None)
            .await
            .unwrap();
        assert_eq!(calls(), [format!("set_attr /d {update:?} {recursive}")]);
    }

    assert_eq!(
        client.chunk_map(LeaseId(9), 2, true).await.unwrap(),
        Some(sample_chunk_map(2))
    );
    assert_eq!(client.chunk_map(LeaseId(9), 3, false).await.unwrap(), None);
    assert_eq!(calls(), ["chunk_map 9 2 true", "chunk_map 9 3 false"]);

    for reason in [
        FailureReason::Unreachable,
        FailureReason::Corrupt,
        FailureReason::NoSpace,
        FailureReason::VersionMismatch,
        FailureReason::IoError,
        FailureReason::TimedOut,
    ] {
        assert_eq!(
            client
                .report_failure(LeaseId(9), ChunkId(0x1f2), MapVersion(42), CsId(3), reason)
                .await
                .unwrap(),
            sample_chunk_map(4)
        );
        assert_eq!(calls(), [format!("report_failure 9 498 42 3 {reason:?}")]);
    }

    client.commit_size(LeaseId(9), 1 << 44).await.unwrap();
    client.truncate(LeaseId(9), 0).await.unwrap();
    assert_eq!(
        client.file_chunks("/vm/disk.img").await.unwrap(),
        [sample_chunk_map(0), sample_chunk_map(2)]
    );
    assert_eq!(
        client.cluster_status().await.unwrap(),
        sample_cluster_status()
    );
    assert_eq!(client.get_config().await.unwrap(), sample_config());
    client
        .set_config("mds.alloc.fill_margin", u64::MAX)
        .await
        .unwrap();
    assert_eq!(client.event_log(7).await.unwrap(), sample_events());
    client.remove_cs(CsId(u32::MAX), true).await.unwrap();
    assert_eq!(
        calls(),
        [
            format!("commit_size 9 {}", 1u64 << 44),
            "truncate 9 0".into(),
            "file_chunks /vm/disk.img".into(),
            "cluster_status".into(),
            "get_config".into(),
            format!("set_config mds.alloc.fill_margin {}", u64::MAX),
            "event_log 7".into(),
            format!("remove_cs {} true", u32::MAX),
        ]
    );

    assert_eq!(client.allocate_cs_id().await.unwrap(), CsId(u32::MAX - 1));
    let registration = CsRegistration {
        id: CsId(3),
        addr: "127.0.0.1:9101".into(),
        space: SpaceInfo {
            total_bytes: 100,
            free_bytes: 50,
        },
        chunks: sample_replicas(),
        unclean: vec![sample_replicas()[0].chunk],
    };
    assert_eq!(
        client.register_cs(registration.clone()).await.unwrap(),
        sample_register_reply()
    );
    let space = SpaceInfo {
        total_bytes: u64::MAX,
        free_bytes: 1,
    };
    let stats = CsStats {
        read_ops: 1,
        write_ops: 2,
        read_bytes: 3,
        write_bytes: u64::MAX,
        journal_bytes: 5,
        journal_used_bytes: 6,
    };
    assert_eq!(
        client.heartbeat(CsId(3), space, stats).await.unwrap(),
        HeartbeatReply {
            scrub_period_ms: u64::MAX,
            scrub_rate_bytes_per_s: 7,
            io_timeouts: IoTimeouts {
                replica_ms: 3,
                flush_ms: u64::MAX,
            },
            fence_ms: 11,
            heartbeat_timeout_ms: u64::MAX - 1,
        }
    );
    client
        .report_bad_replica(CsId(3), ChunkId(u64::MAX), FailureReason::Corrupt)
        .await
        .unwrap();
    assert_eq!(
        calls(),
        [
            "allocate_cs_id".into(),
            format!("register_cs {registration:?}"),
            format!("heartbeat 3 {space:?} {stats:?}"),
            format!("report_bad_replica 3 {} Corrupt", u64::MAX),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mds_errors_keep_kind_and_message() {
    let (fake, _harness, client) = mds_setup().await;
    for kind in ErrorKind::ALL {
        let error = Error::new(
            kind,
            format!("chunk 0x1f2 replica on CS 3 (127.0.0.1:9101) failed: {kind}"),
        );
        fake.script.fail_with(Some(error.clone()));
        // One method per result shape: void, struct, list, optional, u32.
        assert_eq!(client.renew(LeaseId(1)).await.unwrap_err(), error);
        assert_eq!(client.stat("/f").await.unwrap_err(), error);
        assert_eq!(client.readdir("/").await.unwrap_err(), error);
        assert_eq!(
            client.chunk_map(LeaseId(1), 0, false).await.unwrap_err(),
            error
        );
        assert_eq!(client.allocate_cs_id().await.unwrap_err(), error);
        assert_eq!(client.cluster_status().await.unwrap_err(), error);
    }
    fake.script.fail_with(None);
    client.renew(LeaseId(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_get_their_own_replies() {
    let (_fake, harness, client) = mds_setup().await;
    let tasks: Vec<_> = (0..10u64)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                let calls = (0..50u64).map(|i| {
                    let client = client.clone();
                    async move {
                        let ino = task * 1000 + i;
                        let stat = client.stat(&format!("/n/{ino}")).await.unwrap();
                        assert_eq!(stat, sample_stat(InodeId(ino)));
                    }
                });
                futures::future::join_all(calls).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // All 500 calls shared one connection.
    assert_eq!(harness.accepted_count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_the_connection_is_killed() {
    let (_fake, harness, client) = mds_setup().await;
    client.stat("/a").await.unwrap();
    assert!(client.is_connected());
    harness.kill_connections();
    wait_until_disconnected(&client).await;
    assert_eq!(client.stat("/b").await.unwrap(), sample_stat(InodeId(12)));
    assert!(client.is_connected());
    assert_eq!(harness.accepted_count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_when_the_connection_breaks_fails_unavailable() {
    let (fake, harness, client) = mds_setup().await;
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.stat("/slow").await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fake.script.calls.lock().contains(&"stat /slow".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the slow call never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    harness.kill_connections();
    let error = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("the broken call must fail promptly")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.message().contains("broke during stat"), "{error}");
    // The call was not resent; the next one reconnects.
    client.stat("/next").await.unwrap();
    assert_eq!(harness.accepted_count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_mds_fails_unavailable_after_connect_timeout() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let client = MdsClient::new(
        vec![addr.clone()],
        plain_dialer(),
        ClientOptions {
            connect_timeout: Duration::from_millis(400),
            call_timeout: None,
        },
    )
    .unwrap();
    let started = Instant::now();
    let error = client.stat("/").await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(
        error
            .message()
            .starts_with(&format!("no MDS reachable at {addr}: ")),
        "{error}"
    );
    assert!(error.message().contains("refused"), "{error}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "gave up after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_retries_until_a_late_mds_comes_up() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    // The first address is dead for good; the second comes up late.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let client =
        MdsClient::new(vec![dead, addr.to_string()], plain_dialer(), fast_options()).unwrap();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.stat("/late").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fake = Arc::new(FakeMds::default());
    let _harness = Harness::start_on(
        TcpListener::bind(addr).await.unwrap(),
        RpcServices::new().with_mds(fake.clone(), fake.clone()),
        Serve::Mds,
    );
    assert_eq!(call.await.unwrap().unwrap(), sample_stat(InodeId(12)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_is_not_retried() {
    let dialer: Dialer = Arc::new(|_addr: String| {
        Box::pin(async {
            Err(Error::new(
                ErrorKind::PermissionDenied,
                "the MDS refused the cluster key",
            ))
        })
    });
    let client = MdsClient::new(vec!["127.0.0.1:1".into()], dialer, fast_options()).unwrap();
    let started = Instant::now();
    let error = client.stat("/").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::PermissionDenied, "{error}");
    assert!(error.message().contains("127.0.0.1:1"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_kills_only_its_own_connection() {
    let (_fake, harness, client) = mds_setup().await;
    client.stat("/before").await.unwrap();
    harness.wait_for_connections(1).await;

    let garbage: [&[u8]; 3] = [
        // Not Cap'n Proto at all.
        b"GET / HTTP/1.1\r\nHost: pstorage\r\n\r\n",
        // A frame announcing a message far beyond the traversal limit.
        &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        // A well-framed one-word message whose root pointer is nonsense.
        &[
            0, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
    ];
    for bytes in garbage {
        // A client whose certificate is good, and whose messages are not.
        let mut raw = crate::auth::connect(
            &harness.addr,
            &crate::tls::test_credentials(crate::pki::Role::Client),
            crate::auth::Channel::Control,
        )
        .await
        .unwrap();
        harness.wait_for_connections(2).await;
        raw.write_all(bytes).await.unwrap();
        raw.flush().await.unwrap();
        // The server must drop this connection (the harness keeps a second
        // handle on every socket, so no EOF reaches us: its count tells).
        harness.wait_for_connections(1).await;
        // The well-behaved client's connection is unaffected.
        assert_eq!(
            client.stat("/after").await.unwrap(),
            sample_stat(InodeId(12))
        );
    }
    assert_eq!(harness.accepted_count.load(Ordering::SeqCst), 4);
}

/// A request of a client (or chunk server) certificate is read only up to
/// `wire::SMALL_REQUEST_LIMIT_WORDS` (4 MiB): a bigger one closes that
/// connection before it is read, and the server serves on; an MDS's (Raft,
/// a forwarded call) may be larger, up to `wire::MDS_REQUEST_LIMIT_WORDS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_request_is_bounded_and_a_servers_is_not() {
    let (_fake, harness, _client) = mds_setup().await;
    let dial = |role| {
        MdsClient::new(
            vec![harness.addr.clone()],
            crate::node::control_dialer(crate::tls::test_credentials(role)),
            fast_options(),
        )
        .unwrap()
    };
    let client = dial(crate::pki::Role::Client);
    let big = format!("/{}", "x".repeat(5 << 20));
    let err = client.stat(&big).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Protocol),
        "{err}"
    );
    // The server closed that connection (the harness holds a second
    // handle on every socket: break it so the client sees it too).
    harness.wait_for_connections(0).await;
    harness.kill_connections();
    wait_until_disconnected(&client).await;
    // Under the bound: served, on a new connection.
    let fits = format!("/{}", "x".repeat(3 << 20));
    assert_eq!(client.stat(&fits).await.unwrap(), sample_stat(InodeId(12)));
    // An MDS's request of the same size is read; a chunk server's is not.
    let mds = dial(crate::pki::Role::Mds);
    assert_eq!(mds.stat(&big).await.unwrap(), sample_stat(InodeId(12)));
    let cs = dial(crate::pki::Role::Cs);
    let err = CsRegistry::register_cs(
        &cs,
        CsRegistration {
            id: CsId(1),
            addr: big.clone(),
            space: SpaceInfo::default(),
            chunks: vec![],
            unclean: vec![],
        },
    )
    .await
    .expect_err("a 5 MiB request of a chunk server is refused");
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Protocol),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_methods_and_errors_round_trip() {
    let fake = Arc::new(FakeControl::default());
    let harness = Harness::start(
        RpcServices::new().with_control(fake.clone()),
        Serve::Control,
    )
    .await;
    let connector = TcpControlConnector::new(plain_dialer(), fast_options());
    let control = connector.chunk_control(&harness.addr).await.unwrap();

    control
        .create_chunk(ChunkId(0x1f2), MapVersion(1), 64 << 10)
        .await
        .unwrap();
    control
        .set_version(ChunkId(0x1f2), MapVersion(u64::MAX))
        .await
        .unwrap();
    control
        .lend_for_repair(ChunkId(u64::MAX), MapVersion(6))
        .await
        .unwrap();
    control
        .zero_tail(ChunkId(5), MapVersion(u64::MAX), u64::MAX - 2)
        .await
        .unwrap();
    control.delete_chunk(ChunkId(7)).await.unwrap();
    assert_eq!(control.list_chunks().await.unwrap(), sample_replicas());
    control.ping().await.unwrap();
    let source = Replica {
        cs: CsId(u32::MAX),
        addr: "[::1]:65535".into(),
    };
    assert_eq!(
        control
            .replicate_chunk(
                ChunkId(u64::MAX),
                MapVersion(u64::MAX - 1),
                256 << 20,
                source.clone(),
                u64::MAX
            )
            .await
            .unwrap(),
        sample_copy_stats(256 << 20)
    );
    assert_eq!(
        control
            .replicate_chunk(ChunkId(3), MapVersion(4), 64 << 10, source.clone(), 0)
            .await
            .unwrap(),
        sample_copy_stats(64 << 10)
    );
    assert_eq!(
        control.copy_progress(ChunkId(u64::MAX - 1)).await.unwrap(),
        Some(CopyProgress {
            chunk: ChunkId(u64::MAX - 1),
            version: MapVersion(u64::MAX),
            bytes_done: u64::MAX / 2,
            bytes_total: u64::MAX - 1,
        })
    );
    assert_eq!(control.copy_progress(ChunkId(7)).await.unwrap(), None);
    assert_eq!(
        fake.script.take_calls(),
        [
            format!("create_chunk 498 1 {}", 64 << 10),
            format!("set_version 498 {}", u64::MAX),
            format!("lend_for_repair {} 6", u64::MAX),
            format!("zero_tail 5 {} {}", u64::MAX, u64::MAX - 2),
            "delete_chunk 7".into(),
            "list_chunks".into(),
            "ping".into(),
            format!(
                "replicate_chunk {} {} {} {} [::1]:65535 {}",
                u64::MAX,
                u64::MAX - 1,
                256 << 20,
                u32::MAX,
                u64::MAX
            ),
            format!(
                "replicate_chunk 3 4 {} {} [::1]:65535 0",
                64 << 10,
                u32::MAX
            ),
            format!("copy_progress {}", u64::MAX - 1),
            "copy_progress 7".into(),
        ]
    );

    let error = Error::stale("chunk 0x1f2 on CS 3 is at version 9, newer than 8");
    fake.script.fail_with(Some(error.clone()));
    assert_eq!(
        control
            .set_version(ChunkId(0x1f2), MapVersion(8))
            .await
            .unwrap_err(),
        error
    );
    assert_eq!(
        control
            .lend_for_repair(ChunkId(0x1f2), MapVersion(8))
            .await
            .unwrap_err(),
        error
    );
    assert_eq!(control.list_chunks().await.unwrap_err(), error);
    assert_eq!(control.ping().await.unwrap_err(), error);
    assert_eq!(control.copy_progress(ChunkId(8)).await.unwrap_err(), error);
    let no_space = Error::new(
        ErrorKind::NoSpace,
        "chunk server 4: writing chunk 0x3: no space left",
    );
    fake.script.fail_with(Some(no_space.clone()));
    assert_eq!(
        control
            .replicate_chunk(ChunkId(3), MapVersion(4), 64 << 10, source, 0)
            .await
            .unwrap_err(),
        no_space
    );

    // The connector reuses the connection for the same address.
    let again = connector.chunk_control(&harness.addr).await.unwrap();
    fake.script.fail_with(None);
    again.delete_chunk(ChunkId(8)).await.unwrap();
    assert_eq!(harness.accepted_count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_a_missing_service_is_refused() {
    let server = RpcServerThread::spawn(
        "no services",
        crate::tls::test_credentials(crate::pki::Role::Mds),
        RpcServices::new(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let error = server.serve_mds(accepted.unwrap().0, None).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Internal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_reply_times_out() {
    let fake = Arc::new(FakeMds::default());
    let harness = Harness::start(
        RpcServices::new().with_mds(fake.clone(), fake.clone()),
        Serve::Mds,
    )
    .await;
    let options = ClientOptions {
        call_timeout: Some(Duration::from_millis(200)),
        ..fast_options()
    };
    let client = MdsClient::new(vec![harness.addr.clone()], plain_dialer(), options).unwrap();
    let error = client.stat("/slow").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
    assert!(error.message().contains("did not answer stat"), "{error}");
    assert!(error.message().contains("connection was closed"), "{error}");
    // An MDS that does not answer may be frozen: the connection was
    // dropped, and the next call makes a new one.
    client.stat("/fast").await.unwrap();
    assert_eq!(harness.accepted_count.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------
// Following the MDS group

fn group_services(fake: &Arc<FakeMds>) -> RpcServices {
    RpcServices::new()
        .with_mds(fake.clone(), fake.clone())
        .with_group(fake.clone())
}

fn sample_membership(a: &str, b: &str) -> MdsMembership {
    MdsMembership {
        members: vec![
            MdsMember {
                id: MdsId(1),
                addr: a.to_string(),
                voter: true,
            },
            MdsMember {
                id: MdsId(2),
                addr: b.to_string(),
                voter: false,
            },
        ],
        leader: Some(MdsId(2)),
        term: u64::MAX,
        config_index: 17,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mds_members_round_trips() {
    let fake = Arc::new(FakeMds::default());
    let harness = Harness::start(group_services(&fake), Serve::Mds).await;
    let client =
        MdsClient::new(vec![harness.addr.clone()], plain_dialer(), fast_options()).unwrap();
    let sample = sample_membership("127.0.0.1:1", "[::1]:2510");
    *fake.members.lock() = Some(sample.clone());
    assert_eq!(client.members().await.unwrap(), sample);
    let mut leaderless = sample;
    leaderless.leader = None;
    *fake.members.lock() = Some(leaderless.clone());
    assert_eq!(client.members().await.unwrap(), leaderless);
    *fake.members.lock() = None;
    let error = client.members().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    // An MDS without a group (no Raft) says so.
    let (_fake, _harness, plain) = mds_setup().await;
    let error = plain.members().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.message().contains("mdsMembers"), "{error}");
}

/// A client that knows one MDS learns the others from it (after its first
/// call, in the background), saves them, and dials the leader first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_client_learns_the_members_and_dials_the_leader() {
    let (first, second) = (Arc::new(FakeMds::default()), Arc::new(FakeMds::default()));
    let a = Harness::start(group_services(&first), Serve::Mds).await;
    let b = Harness::start(group_services(&second), Serve::Mds).await;
    *first.members.lock() = Some(sample_membership(&a.addr, &b.addr));
    let store = Arc::new(MemMemberStore::new());
    let members = Arc::new(MemberDirectory::new(
        vec![a.addr.clone()],
        Some(store.clone()),
        Arc::new(SystemClock),
        DirectoryOptions::default(),
    ));
    let client =
        MdsClient::following(members.clone(), plain_dialer(), fast_options(), true).unwrap();
    client.stat("/x").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.saved().is_none() {
        assert!(Instant::now() < deadline, "nothing learned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.saved().unwrap().members.len(), 2);
    assert_eq!(members.addrs(), vec![b.addr.clone(), a.addr.clone()]);
    // The connection to A breaks: the next call goes to the leader, B.
    a.kill_connections();
    wait_until_disconnected(&client).await;
    client.stat("/y").await.unwrap();
    assert_eq!(
        second.script.take_calls().first().map(String::as_str),
        Some("stat /y")
    );
}

/// A frozen MDS (the connection stands, nothing answers): the call times
/// out, the connection is dropped, and the next call goes to another
/// member, with the frozen one tried last for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_makes_the_next_one_try_another_mds() {
    // A listener whose connections are accepted and never served.
    let frozen = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let frozen_addr = frozen.local_addr().unwrap().to_string();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = {
        let held = held.clone();
        tokio::spawn(async move {
            // It finishes the handshake (TLS), then never answers.
            while let Ok((mut stream, _)) = frozen.accept().await {
                crate::auth::peek_channel(&mut stream).await.unwrap();
                let creds = crate::tls::test_credentials(crate::pki::Role::Mds);
                let (tls, _) =
                    crate::auth::accept_tls(stream, &creds, crate::auth::Channel::Control)
                        .await
                        .unwrap();
                held.lock().push(tls);
            }
        })
    };
    let fake = Arc::new(FakeMds::default());
    let healthy = Harness::start(group_services(&fake), Serve::Mds).await;
    let members = Arc::new(MemberDirectory::fixed(vec![
        frozen_addr.clone(),
        healthy.addr.clone(),
    ]));
    let options = ClientOptions {
        call_timeout: Some(Duration::from_millis(300)),
        ..fast_options()
    };
    let client = MdsClient::following(members.clone(), plain_dialer(), options, false).unwrap();
    let error = client.stat("/a").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
    assert!(error.message().contains(&frozen_addr), "{error}");
    assert_eq!(
        members.addrs(),
        vec![healthy.addr.clone(), frozen_addr.clone()]
    );
    client.stat("/b").await.unwrap();
    assert_eq!(fake.script.take_calls(), ["stat /b"]);
    assert_eq!(held.lock().len(), 1, "the frozen MDS was dialed again");
    holder.abort();
}

/// One connection may have at most `MAX_CALLS_IN_FLIGHT` calls in flight
/// on a server: one more is refused at once (`Unavailable`, "overloaded"),
/// and the connection serves on once calls end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_on_one_connection_are_bounded() {
    let (fake, _harness, client) = mds_setup().await;
    let slow: Vec<_> = (0..crate::roles::MAX_CALLS_IN_FLIGHT)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.stat("/slow").await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.script.calls.lock().len() < crate::roles::MAX_CALLS_IN_FLIGHT {
        assert!(
            Instant::now() < deadline,
            "the slow calls did not all arrive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = client.stat("/n/7").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.message().contains("calls in flight"), "{error}");
    for call in &slow {
        call.abort();
    }
    drop(slow);
}

/// A server whose pages do not move on (the same page, claiming more,
/// again and again) gets a protocol error, not a client looping forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_whose_pages_do_not_move_on_is_refused() {
    let (fake, _harness, client) = mds_setup().await;
    fake.stuck_pages.store(true, Ordering::SeqCst);
    let err = client.readdir("/vm").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("out of order"), "{err}");
    fake.stuck_pages.store(false, Ordering::SeqCst);
    assert_eq!(client.readdir("/vm").await.unwrap(), sample_entries());
}
