//! Test harness: a real pstorage cluster of daemon processes on 127.0.0.1
//! with ephemeral ports and a temporary directory. Every process it starts
//! is killed when the [`TestCluster`] is dropped, also when a test panics.

#![allow(
    clippy::unwrap_used,
    reason = "a test harness: a step that fails panics, and the test with it"
)]

pub mod chaos;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pstorage_core::client::{Client, ClientOptions};
use pstorage_core::conf::ClusterConf;
use pstorage_core::types::{
    ChunkMap, ClusterStatus, CsId, CsStatus, EventKind, LeaseMode, MdsRole, OpenFlags,
};

mod nbd_server;
pub use nbd_server::NbdServer;

/// The password every test cluster is created with.
pub const PASSWORD: &str = "test-password";

/// Where the workspace's binaries are: `$PSTORAGE_BIN_DIR`, else the
/// directory above this test executable's `deps/` (`target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PSTORAGE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    assert!(
        dir.join("pstorage").exists(),
        "{} has no pstorage binary: run `cargo build --workspace --bins` first (the README's test command does)",
        dir.display()
    );
    dir
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Options of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Metadata servers (1, or 3/5 for a Raft group).
    pub mds: usize,
    pub chunk_servers: usize,
    pub chunk_size: u64,
    /// Extra environment for the daemons (e.g. `PSTORAGE_LEASE_MS`).
    pub env: Vec<(String, String)>,
    /// Extra arguments of `make-mds -I` (e.g. `--data-encryption off`).
    pub make_mds_args: Vec<String>,
    /// `mds.alloc.fill_margin_max`, set before the chunk servers start
    /// (`None`: the cluster's default, 4 GiB).
    ///
    /// A test's chunk servers share one file system with each other, with
    /// the test's own files and with the tests running beside it, and
    /// each server reports all of its free space as its own. At the
    /// default cap a test needs 4 GiB free beyond what it writes, whatever
    /// it writes: on a CI machine with 6 GB free, tests writing a few
    /// hundred MiB found every server "full". The tests' default is
    /// [`TEST_FILL_MARGIN_MAX`]; the tests of the margin itself, and the
    /// `long_*` twins of the tests that write gigabytes, keep the
    /// cluster's default.
    pub fill_margin_max: Option<u64>,
}

/// The tests' `mds.alloc.fill_margin_max` (see
/// [`ClusterOptions::fill_margin_max`]).
pub const TEST_FILL_MARGIN_MAX: u64 = 512 << 20;

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            mds: 1,
            chunk_servers: 3,
            chunk_size: 1 << 20,
            env: vec![("PSTORAGE_HEARTBEAT_MS".into(), "200".into())],
            make_mds_args: Vec::new(),
            fill_margin_max: Some(TEST_FILL_MARGIN_MAX),
        }
    }
}

/// A running cluster: MDS processes (the first is `mds_dir`/`mds_addr`)
/// and N chunk servers.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub conf_root: PathBuf,
    pub mds_dir: PathBuf,
    pub mds_addr: String,
    /// Every MDS ever made, by index (0 is the first); removed ones stay.
    pub mds_dirs: Vec<PathBuf>,
    pub mds_addrs: Vec<String>,
    pub cs_dirs: Vec<PathBuf>,
    bin: PathBuf,
    env: Vec<(String, String)>,
    mds: Vec<Option<Child>>,
    cs: Vec<Option<Child>>,
}

impl TestCluster {
    /// Creates and starts a cluster; returns when every CS is active.
    pub fn start(options: ClusterOptions) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // The chunk servers' free space is this file system's: a failure
        // that says "full" can be read against it.
        if let Some(free) = free_bytes(dir.path()) {
            eprintln!(
                "test cluster in {} ({} MiB free on its file system)",
                dir.path().display(),
                free >> 20
            );
        }
        let conf_root = dir.path().join("conf");
        let mds_dir = dir.path().join("mds");
        let mds_addr = format!("127.0.0.1:{}", free_port());
        let mut cluster = TestCluster {
            name: "test".to_string(),
            conf_root,
            mds_dirs: vec![mds_dir.clone()],
            mds_addrs: vec![mds_addr.clone()],
            mds_dir,
            mds_addr,
            cs_dirs: Vec::new(),
            bin: bin_dir(),
            env: options.env.clone(),
            mds: vec![None],
            cs: Vec::new(),
            dir,
        };
        let chunk_size = options.chunk_size.to_string();
        let mds_dir = cluster.mds_dir.to_str().unwrap().to_string();
        let addr = cluster.mds_addr.clone();
        let mut args = vec![
            "make-mds",
            "-I",
            "-a",
            &addr,
            "-r",
            &mds_dir,
            "-p",
            "--chunk-size",
            &chunk_size,
        ];
        args.extend(options.make_mds_args.iter().map(String::as_str));
        let out = cluster.cli_stdin(&args, format!("{PASSWORD}\n").as_bytes());
        assert!(
            out.status.success(),
            "make-mds failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start_mds();
        for _ in 1..options.mds {
            cluster.add_mds();
        }
        if let Some(bytes) = options.fill_margin_max {
            cluster.cli_ok(&["set-config", &format!("mds.alloc.fill_margin_max={bytes}")]);
        }
        for i in 0..options.chunk_servers {
            let d = cluster.dir.path().join(format!("cs{i}"));
            let out = cluster.cli(&["make-cs", "-r", d.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "make-cs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            cluster.cs_dirs.push(d);
            cluster.cs.push(None);
            cluster.start_cs(i);
        }
        cluster.wait_active(options.chunk_servers);
        cluster
    }

    fn daemon_with(&self, name: &str, dir: &Path, log: &str, extra: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .expect("log file");
        let mut cmd = Command::new(self.bin.join(name));
        cmd.arg("-r")
            .arg(dir)
            .args(extra)
            .env("PSTORAGE_CONF_DIR", &self.conf_root)
            .env("PSTORAGE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
    }

    /// Starts (or restarts) the first MDS and waits until it accepts
    /// connections.
    pub fn start_mds(&mut self) {
        self.start_mds_at(0);
    }

    /// kill -9 of the first MDS.
    pub fn kill_mds(&mut self) {
        self.kill_mds_at(0);
    }

    /// The log file name of MDS `i`.
    pub fn mds_log_name(i: usize) -> String {
        if i == 0 {
            "mds.log".to_string()
        } else {
            format!("mds{i}.log")
        }
    }

    /// Starts (or restarts) MDS `i` and waits until it accepts connections.
    pub fn start_mds_at(&mut self, i: usize) {
        self.start_mds_at_with(i, &[]);
    }

    /// [`start_mds_at`](Self::start_mds_at) with extra `pstorage-mdsd`
    /// arguments (e.g. `--metrics ADDR:PORT`).
    pub fn start_mds_at_with(&mut self, i: usize, extra: &[&str]) {
        assert!(self.mds[i].is_none(), "MDS {i} already running");
        let dir = self.mds_dirs[i].clone();
        self.mds[i] = Some(self.daemon_with("pstorage-mdsd", &dir, &Self::mds_log_name(i), extra));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.mds_addrs[i]).is_err() {
            assert!(
                Instant::now() < deadline,
                "MDS {i} did not start: {}",
                self.log(&Self::mds_log_name(i))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9 of MDS `i`.
    pub fn kill_mds_at(&mut self, i: usize) {
        if let Some(mut c) = self.mds[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id of MDS `i`, if it runs (for SIGSTOP/SIGCONT).
    pub fn mds_pid(&self, i: usize) -> Option<u32> {
        self.mds[i].as_ref().map(|c| c.id())
    }

    /// Makes a new MDS with `make-mds` (joining the running group), starts
    /// it and waits until it is a voting member. Returns its index.
    pub fn add_mds(&mut self) -> usize {
        let i = self.mds_dirs.len();
        let dir = self.dir.path().join(format!("mds{i}"));
        let addr = format!("127.0.0.1:{}", free_port());
        let out = self.cli(&["make-mds", "-a", &addr, "-r", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "make-mds (join) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mds_dirs.push(dir);
        self.mds_addrs.push(addr.clone());
        self.mds.push(None);
        self.start_mds_at(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let voting = self.mds_roles().is_some_and(|roles| {
                roles.iter().any(|(a, r)| {
                    *a == addr && !matches!(r, MdsRole::Learner | MdsRole::Unreachable)
                })
            });
            if voting {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "MDS {i} at {addr} did not join the group\n{}",
                self.log(&Self::mds_log_name(i))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (address, role) of every MDS as the leader reports them.
    pub fn mds_roles(&self) -> Option<Vec<(String, MdsRole)>> {
        self.status()
            .map(|s| s.mds.into_iter().map(|m| (m.addr, m.role)).collect())
    }

    /// A copy of this node's cluster configuration (`bs.list` and its
    /// credentials: `ca.crt`, `node.crt`, `node.key`) under a new root
    /// `<test dir>/<tag>-conf`, as another node made with the same
    /// `bs.list` would have it: later edits of this node's `bs.list`
    /// (make-mds, rm-mds) do not reach it. Returns the root.
    pub fn copy_conf(&self, tag: &str) -> PathBuf {
        let root = self.dir.path().join(format!("{tag}-conf"));
        let to = root.join(&self.name);
        pstorage_core::private_files::create_private_dir_all(&to).expect("conf dir");
        let from = self.conf_root.join(&self.name);
        for file in ["bs.list", "ca.crt", "node.crt", "node.key"] {
            std::fs::copy(from.join(file), to.join(file))
                .unwrap_or_else(|e| panic!("copying {file}: {e}"));
        }
        root
    }

    /// Makes a chunk server with `make-cs` run against the cluster
    /// configuration under `conf_root` (see [`TestCluster::copy_conf`]),
    /// which the server then keeps reading, and starts it. Returns its
    /// index; does not wait for it to be active.
    pub fn add_cs_with_conf(&mut self, conf_root: &Path) -> usize {
        let i = self.cs_dirs.len();
        let d = self.dir.path().join(format!("cs{i}"));
        let out = self.cli_in(conf_root, &["make-cs", "-r", d.to_str().unwrap()], b"");
        assert!(
            out.status.success(),
            "make-cs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.cs_dirs.push(d);
        self.cs.push(None);
        self.start_cs(i);
        i
    }

    /// Makes a chunk server with `make-cs` and extra arguments (e.g.
    /// `--host h1 --location r.1.1 -t 1 --capacity 8G`) and starts it.
    /// Returns its index; does not wait for it to be active.
    pub fn add_cs_args(&mut self, args: &[&str]) -> usize {
        let i = self.cs_dirs.len();
        let d = self.dir.path().join(format!("cs{i}"));
        let mut full = vec!["make-cs", "-r", d.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = self.cli(&full);
        assert!(
            out.status.success(),
            "make-cs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.cs_dirs.push(d);
        self.cs.push(None);
        self.start_cs(i);
        i
    }

    /// An SDK client configured from `conf_root` instead of this node's
    /// configuration (needs a tokio runtime).
    pub fn client_in(&self, conf_root: &Path, options: ClientOptions) -> Client {
        let conf = ClusterConf::new(conf_root, &self.name).expect("conf");
        pstorage_rpc::node::connect_client(&conf, options).expect("connect")
    }

    /// Starts (or restarts) chunk server `i`.
    pub fn start_cs(&mut self, i: usize) {
        self.start_cs_with(i, &[]);
    }

    /// [`start_cs`](Self::start_cs) with extra `pstorage-csd` arguments.
    pub fn start_cs_with(&mut self, i: usize, extra: &[&str]) {
        assert!(self.cs[i].is_none(), "CS {i} already running");
        let dir = self.cs_dirs[i].clone();
        self.cs[i] = Some(self.daemon_with("pstorage-csd", &dir, &format!("cs{i}.log"), extra));
    }

    /// kill -9 of chunk server `i`.
    pub fn kill_cs(&mut self, i: usize) {
        if let Some(mut c) = self.cs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops chunk server `i` cleanly (SIGTERM: it applies its journal,
    /// flushes and exits) and waits for it to exit.
    pub fn stop_cs(&mut self, i: usize) {
        if let Some(mut c) = self.cs[i].take() {
            // SAFETY: a signal to our own child process.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let status = c.wait().expect("waiting for a chunk server");
            assert!(status.success(), "chunk server {i} stopped with {status}");
        }
    }

    /// The process id of chunk server `i`, if it runs (for SIGSTOP/SIGCONT).
    pub fn cs_pid(&self, i: usize) -> Option<u32> {
        self.cs[i].as_ref().map(|c| c.id())
    }

    /// Whether the process of CS `i` is still alive.
    pub fn cs_running(&mut self, i: usize) -> bool {
        matches!(self.cs[i].as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Whether the first MDS process is still alive.
    pub fn mds_running(&mut self) -> bool {
        matches!(self.mds[0].as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// A daemon's log so far (for assertion messages).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Runs `pstorage --conf-dir ROOT -c NAME ARGS...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, b"")
    }

    /// Runs the CLI and asserts it succeeded; returns its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "pstorage {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The id in `cs.conf` of chunk server `i`.
    pub fn cs_id(&self, i: usize) -> CsId {
        let text = std::fs::read_to_string(self.cs_dirs[i].join("cs.conf")).expect("cs.conf");
        let conf: serde_json::Value = serde_json::from_str(&text).expect("cs.conf json");
        CsId(conf["id"].as_u64().expect("id") as u32)
    }

    /// The index of the chunk server whose id is `id`.
    pub fn cs_index(&self, id: CsId) -> usize {
        (0..self.cs_dirs.len())
            .find(|&i| self.cs_id(i) == id)
            .unwrap_or_else(|| panic!("no chunk server {id} in this cluster"))
    }

    /// Polls `check` every 200 ms until it returns `Some`, failing after
    /// `timeout` with `what`, the last status and the MDS log's tail.
    pub async fn wait_for<T, F, Fut>(&self, timeout: Duration, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nstatus: {:?}\nMDS log (tail):\n{}",
                    self.status(),
                    tail(&self.log("mds.log"), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs the CLI with `stdin` as its standard input.
    pub fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.cli_in(&self.conf_root, args, stdin)
    }

    /// Runs the CLI with the cluster configuration under `conf_root`.
    pub fn cli_in(&self, conf_root: &Path, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(self.bin.join("pstorage"))
            .arg("--conf-dir")
            .arg(conf_root)
            .arg("-c")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pstorage");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("pstorage output");
        let _ = writer.join();
        out
    }

    /// The cluster's configuration on this "node".
    pub fn conf(&self) -> ClusterConf {
        ClusterConf::new(&self.conf_root, &self.name).expect("conf")
    }

    /// An SDK client (needs a tokio runtime).
    pub fn client(&self) -> Client {
        self.client_with(ClientOptions::default())
    }

    /// An SDK client with options.
    pub fn client_with(&self, options: ClientOptions) -> Client {
        pstorage_rpc::node::connect_client(&self.conf(), options).expect("connect")
    }

    /// How many chunk servers the MDS reports active (None: MDS unreachable).
    /// Runs on its own thread so it works inside and outside async tests.
    pub fn active_chunk_servers(&self) -> Option<usize> {
        self.status()
            .map(|s| s.cs.iter().filter(|c| c.status == CsStatus::Active).count())
    }

    /// The cluster status (None: no MDS answered). Works inside and outside
    /// async tests.
    pub fn status(&self) -> Option<ClusterStatus> {
        let conf = self.conf();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let options = pstorage_rpc::ClientOptions {
                    connect_timeout: Duration::from_secs(2),
                    call_timeout: Some(Duration::from_secs(5)),
                };
                let mds = pstorage_rpc::node::connect_mds(&conf, options).ok()?;
                pstorage_core::traits::MetadataService::cluster_status(&mds)
                    .await
                    .ok()
            })
        })
        .join()
        .expect("status thread")
    }

    /// The addresses of the chunk servers the MDS knows (every port a
    /// client reaches besides the MDSes'). Works inside and outside async
    /// tests.
    pub fn cs_addrs(&self) -> Vec<String> {
        self.status()
            .expect("the MDS answers")
            .cs
            .into_iter()
            .map(|c| c.addr)
            .collect()
    }

    /// Waits until `n` chunk servers are active.
    pub fn wait_active(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let active = self.active_chunk_servers();
            if active.unwrap_or(0) >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {active:?} of {n} chunk servers became active\nMDS log:\n{}",
                self.log("mds.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.cs.len() {
            self.kill_cs(i);
        }
        for i in 0..self.mds.len() {
            self.kill_mds_at(i);
        }
    }
}

/// The last `lines` lines of `text`.
/// Bytes free for unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; all zeros is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Creates (or opens) `path`, writes `data` at 0 in pieces of 8 MiB,
/// flushes and closes.
pub async fn write_file(client: &Client, path: &str, data: &[u8]) {
    let flags = OpenFlags {
        create: true,
        ..Default::default()
    };
    let file = client.open(path, LeaseMode::Write, flags).await.unwrap();
    for (i, piece) in data.chunks(8 << 20).enumerate() {
        file.write_at((i as u64) << 23, piece).await.unwrap();
    }
    file.flush().await.unwrap();
    file.close().await.unwrap();
}

/// The chunk servers of a chunk's chain, in order.
pub fn chain(map: &ChunkMap) -> Vec<CsId> {
    map.replicas.iter().map(|r| r.cs).collect()
}

/// Every chunk has its norm copies and nothing is left to copy.
pub fn all_chunks_healthy(s: &ClusterStatus) -> bool {
    s.chunk_counts.healthy == s.chunks && s.replication.pending_chunks == 0
}

/// The messages of every event of `kind` in the event log, one per line.
pub async fn events(client: &Client, kind: EventKind) -> String {
    client
        .mds()
        .event_log(0)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.message)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole content of `path`, read through a read lease.
pub async fn read_all(client: &Client, path: &str) -> Vec<u8> {
    let file = client
        .open(
            path,
            pstorage_core::types::LeaseMode::Read,
            pstorage_core::types::OpenFlags::default(),
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; file.size() as usize];
    let mut off = 0;
    while off < buf.len() {
        let n = file.read_at(off as u64, &mut buf[off..]).await.unwrap();
        assert!(n > 0, "short read of {path} at {off}");
        off += n;
    }
    file.close().await.unwrap();
    buf
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
