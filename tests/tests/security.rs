//! Issue 17 with real daemons: every port speaks TLS 1.3 with the cluster
//! CA (checked with `openssl s_client`), a capture of a write on loopback
//! does not contain its bytes (tcpdump), and a client's certificate cannot
//! administer the cluster, drive a chunk server or enroll as a server.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pstorage_core::traits::ControlConnector;
use pstorage_core::types::{ChunkId, LeaseMode, OpenFlags, DEFAULT_CHUNK_SIZE};
use pstorage_core::ErrorKind;
use pstorage_tests::{ClusterOptions, TestCluster, PASSWORD};

fn defaults() -> ClusterOptions {
    ClusterOptions {
        chunk_size: DEFAULT_CHUNK_SIZE,
        ..Default::default()
    }
}

/// `openssl s_client` with this node's certificate against `addr`: its
/// summary (stderr with `-brief`).
fn s_client(conf: &Path, addr: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            addr,
            "-brief",
            "-verify_return_error",
        ])
        .args(["-servername", pstorage_rpc::pki::CLUSTER_SERVER_NAME])
        .arg("-CAfile")
        .arg(conf.join("ca.crt"))
        .arg("-cert")
        .arg(conf.join("node.crt"))
        .arg("-key")
        .arg(conf.join("node.key"))
        .stdin(Stdio::null())
        .output()
        .expect("openssl (scripts/install-deps.sh installs it)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_speaks_tls_1_3_with_the_cluster_ca() {
    let cluster = TestCluster::start(defaults());
    let conf = cluster.conf().dir;
    let mut targets = vec![cluster.mds_addr.clone()];
    targets.extend(cluster.cs_addrs());
    for addr in &targets {
        let summary = s_client(&conf, addr);
        assert!(
            summary.contains("Protocol version: TLSv1.3"),
            "{addr}: {summary}"
        );
        // Verified against ca.crt, the cluster CA, and nothing else.
        assert!(summary.contains("Verification: OK"), "{addr}: {summary}");
        assert!(
            summary.contains("OU = mds") || summary.contains("OU = cs"),
            "{addr}: {summary}"
        );
    }
    // Another CA file: the same servers fail verification.
    let other = tempfile::tempdir().unwrap();
    let ca = pstorage_rpc::pki::ClusterCa::generate(&cluster.name).unwrap();
    let id = ca
        .issue_identity(pstorage_rpc::pki::Role::Admin, "stranger")
        .unwrap();
    id.save(other.path(), "node").unwrap();
    let summary = s_client(other.path(), &cluster.mds_addr);
    assert!(!summary.contains("Verification: OK"), "{summary}");
}

/// tcpdump on loopback, limited to `ports`, writing into `file`; stopped
/// (SIGINT, so that it flushes) by [`Capture::stop`].
struct Capture {
    child: std::process::Child,
}

impl Capture {
    fn start(file: &Path, ports: &[u16]) -> Capture {
        let filter = ports
            .iter()
            .map(|p| format!("port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-s", "0", "-w"])
            .arg(file)
            .arg(format!("tcp and ({filter})"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (scripts/install-deps.sh installs it)");
        // It says "listening on lo" once it captures.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("tcpdump did not start capturing (is this root?)");
        Capture { child }
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "tcpdump did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_of_a_write_does_not_contain_its_bytes() {
    let cluster = TestCluster::start(defaults());
    let mut ports = vec![port_of(&cluster.mds_addr)];
    ports.extend(cluster.cs_addrs().iter().map(|a| port_of(a)));
    let pcap = cluster.dir.path().join("write.pcap");
    let capture = Capture::start(&pcap, &ports);

    let marker = b"pstorage-plaintext-marker-0123456789/";
    let data: Vec<u8> = marker.iter().copied().cycle().take(1 << 20).collect();
    let client = cluster.client();
    let f = client
        .open(
            "/secret.bin",
            LeaseMode::Write,
            OpenFlags {
                create: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    f.write_at(0, &data).await.unwrap();
    f.flush().await.unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(f.read_at(0, &mut back).await.unwrap(), data.len());
    assert!(back == data);
    f.close().await.unwrap();
    capture.stop();

    let captured = std::fs::read(&pcap).unwrap();
    // Three replicas went over loopback, and the read came back.
    assert!(
        captured.len() > 3 * data.len(),
        "the capture holds only {} bytes",
        captured.len()
    );
    assert!(
        !captured.windows(marker.len()).any(|w| w == marker),
        "the written bytes are in the capture in the clear"
    );
    // The file's name (a control message) is not either.
    assert!(!captured.windows(11).any(|w| w == b"/secret.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cannot_administer_or_drive_chunk_servers() {
    let mut cluster = TestCluster::start(defaults());
    // Another node, authenticated with `auth-node --role client`.
    let root = cluster.dir.path().join("client-conf");
    let node = root.join(&cluster.name);
    pstorage_core::private_files::create_private_dir_all(&node).unwrap();
    std::fs::copy(cluster.conf().bs_list_path(), node.join("bs.list")).unwrap();
    let out = cluster.cli_in(
        &root,
        &["auth-node", "--role", "client"],
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("role client"), "{said}");

    // Files and status: yes.
    let out = cluster.cli_in(&root, &["stat"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster.cli_in(&root, &["mkdir", "/from-client"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Administration: no, with a clear error, and nothing changes.
    for args in [
        &["set-config", "mds.alloc.fill_margin=7"][..],
        &["rm-cs", "1"][..],
        &["rm-mds", "1"][..],
    ] {
        let out = cluster.cli_in(&root, args, b"");
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("permission denied"), "{args:?}: {err}");
    }
    let config = cluster.cli_ok(&["get-config"]);
    let line = config
        .lines()
        .find(|l| l.starts_with("mds.alloc.fill_margin "))
        .unwrap();
    assert_eq!(
        line.split_whitespace().nth(1),
        line.split_whitespace().nth(2),
        "{line}"
    );
    // Making a chunk server needs an admin.
    let dir = cluster.dir.path().join("cs-by-client");
    let out = cluster.cli_in(&root, &["make-cs", "-r", dir.to_str().unwrap()], b"");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A chunk server's control interface: no.
    let client_conf = pstorage_core::conf::ClusterConf::new(&root, &cluster.name).unwrap();
    let creds = pstorage_rpc::node::node_credentials(&client_conf).unwrap();
    let connector = pstorage_rpc::control::TcpControlConnector::new(
        pstorage_rpc::node::control_dialer(creds),
        pstorage_rpc::ClientOptions::default(),
    );
    for addr in cluster.cs_addrs() {
        let control = connector.chunk_control(&addr).await.unwrap();
        let err = control.delete_chunk(ChunkId(1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{addr}: {err}");
        let err = control.list_chunks().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{addr}: {err}");
    }
    // The cluster is as it was: every chunk server serves on.
    cluster.add_cs_args(&[]);
    cluster.wait_active(4);
}
