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

/// Authenticates another node (its own configuration directory under the
/// test directory, named `tag`) with `auth-node --role ROLE`; returns the
/// configuration root and the certificate's serial.
fn another_node(cluster: &TestCluster, tag: &str, role: &str) -> (std::path::PathBuf, String) {
    let root = cluster.dir.path().join(format!("{tag}-conf"));
    let node = root.join(&cluster.name);
    pstorage_core::private_files::create_private_dir_all(&node).unwrap();
    std::fs::copy(cluster.conf().bs_list_path(), node.join("bs.list")).unwrap();
    let out = cluster.cli_in(
        &root,
        &["auth-node", "--role", role],
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let serial = said
        .split("certificate serial ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no serial in {said:?}"))
        .to_string();
    (root, serial)
}

/// A revoked certificate cannot connect to an MDS or a chunk server, the
/// connections it held are closed, its holder cannot enroll it again, and
/// a restarted chunk server still refuses it; `certs` lists every
/// certificate issued (those of `make-mds -I` too) with the revocation;
/// the event log has the issue, the revocation and a refused enrollment;
/// an MDS member's certificate cannot be revoked; `renew-cert` gives a
/// node and a chunk server new certificates that work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_cannot_connect_and_a_renewed_one_can() {
    let mut cluster = TestCluster::start(defaults());
    let (root, serial) = another_node(&cluster, "doomed", "client");
    let conf = pstorage_core::conf::ClusterConf::new(&root, &cluster.name).unwrap();

    // The doomed node works: files through the SDK, a data connection to
    // every chunk server.
    let options = pstorage_core::client::ClientOptions {
        io_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let doomed = cluster.client_in(&root, options.clone());
    let data = pstorage_tests::pattern(1, 1 << 20);
    pstorage_tests::write_file(&doomed, "/before", &data).await;
    let creds = pstorage_rpc::node::node_credentials(&conf).unwrap();
    for addr in cluster.cs_addrs() {
        pstorage_rpc::auth::connect(&addr, &creds, pstorage_rpc::auth::Channel::Data)
            .await
            .unwrap();
    }

    // Every certificate is listed: the MDS's and the admin's made by
    // `make-mds -I`, the chunk servers', the new node's.
    let listed = cluster.cli_ok(&["certs"]);
    for (role, name) in [
        ("mds", "mds 1"),
        ("admin", ""),
        ("cs", "cs 1"),
        ("client", ""),
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(role) && l.contains(name)),
            "{role} {name}: {listed}"
        );
    }
    assert_eq!(listed.lines().count(), 1 + 2 + 3 + 1, "{listed}");
    assert!(listed.contains(&serial), "{listed}");

    // An MDS member's certificate cannot be revoked.
    let out = cluster.cli(&["revoke", "mds 1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rm-mds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = cluster.cli_ok(&["revoke", &serial]);
    assert!(
        out.contains(&format!("revoked certificate {serial}")),
        "{out}"
    );

    // New connections: refused by the MDS and, within their sync period,
    // by every chunk server.
    cluster
        .wait_for(Duration::from_secs(30), "the MDS refusing the node", || {
            let out = cluster.cli_in(&root, &["stat"], b"");
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            std::future::ready((!out.status.success() && err.contains("was revoked")).then_some(()))
        })
        .await;
    for addr in cluster.cs_addrs() {
        let creds = creds.clone();
        cluster
            .wait_for(
                Duration::from_secs(30),
                "a chunk server refusing it",
                || {
                    let (creds, addr) = (creds.clone(), addr.clone());
                    async move {
                        let refused = pstorage_rpc::auth::connect(
                            &addr,
                            &creds,
                            pstorage_rpc::auth::Channel::Data,
                        )
                        .await;
                        match refused {
                            Err(e) if e.kind() == ErrorKind::PermissionDenied => Some(()),
                            _ => None,
                        }
                    }
                },
            )
            .await;
    }
    // The connections the SDK client held were closed: it fails.
    let err = doomed
        .open(
            "/after",
            LeaseMode::Write,
            OpenFlags {
                create: true,
                ..OpenFlags::default()
            },
        )
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    drop(doomed);

    // A wrong password is refused and logged; the revocation too.
    let out = cluster.cli_in(&root, &["auth-node"], b"not-the-password\n");
    assert!(!out.status.success());
    let admin = cluster.client();
    let security = pstorage_tests::events(&admin, pstorage_core::types::EventKind::Security).await;
    assert!(security.contains("wrong cluster password"), "{security}");
    assert!(
        security.contains(&format!("certificate {serial}")),
        "{security}"
    );
    assert!(security.contains("revoked"), "{security}");

    // A restarted chunk server refuses it from its start (its saved list).
    let cs_dir = cluster.cs_dirs[0].clone();
    let saved = std::fs::read_to_string(cs_dir.join("revoked")).unwrap();
    assert!(saved.starts_with("pstorage-revoked 1\n"), "{saved}");
    assert!(saved.contains(&serial), "{saved}");

    // Renewal: this node's certificate and a chunk server's.
    let before = std::fs::read_to_string(cluster.conf().dir.join("node.crt")).unwrap();
    let out = cluster.cli_ok(&["renew-cert"]);
    assert!(out.contains("renewed this node's certificate"), "{out}");
    assert_ne!(
        before,
        std::fs::read_to_string(cluster.conf().dir.join("node.crt")).unwrap()
    );
    cluster.cli_ok(&["stat"]);
    let out = cluster.cli_ok(&["renew-cert", "-r", cs_dir.to_str().unwrap()]);
    assert!(out.contains("restart the daemon"), "{out}");
    let id = cluster.cs_id(0);
    let addr_before = cluster
        .status()
        .unwrap()
        .cs
        .into_iter()
        .find(|c| c.id == id)
        .unwrap()
        .addr;
    cluster.stop_cs(0);
    cluster.start_cs(0);
    cluster.wait_active(3);
    let renewed = pstorage_rpc::pki::NodeIdentity::load(&cs_dir, "cs", "").unwrap();
    assert!(
        cluster
            .cli_ok(&["certs"])
            .contains(&renewed.peer.serial.to_string()),
        "the renewal is recorded"
    );
    // The restarted server refuses the revoked certificate from its start
    // (its address as the MDS has it once it registered again: a new port).
    let id = cluster.cs_id(0);
    let addr = cluster
        .wait_for(Duration::from_secs(30), "the new address of CS 0", || {
            let now = cluster
                .status()
                .and_then(|s| s.cs.into_iter().find(|c| c.id == id))
                .map(|c| c.addr);
            std::future::ready(now.filter(|a| *a != addr_before))
        })
        .await;
    let err = pstorage_rpc::auth::connect(&addr, &creds, pstorage_rpc::auth::Channel::Data)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // A chunk server whose saved list is damaged starts all the same and
    // fetches the list again.
    std::fs::write(cluster.cs_dirs[1].join("revoked"), b"garbage\n").unwrap();
    cluster.stop_cs(1);
    cluster.start_cs(1);
    cluster.wait_active(3);
    let id = cluster.cs_id(1);
    cluster
        .wait_for(
            Duration::from_secs(30),
            "the restarted server refusing it",
            || {
                // Its address as the MDS has it now (a new port at each start).
                let addr = cluster
                    .status()
                    .and_then(|s| s.cs.into_iter().find(|c| c.id == id))
                    .map(|c| c.addr);
                let creds = creds.clone();
                async move {
                    let refused = pstorage_rpc::auth::connect(
                        &addr?,
                        &creds,
                        pstorage_rpc::auth::Channel::Data,
                    )
                    .await;
                    matches!(refused, Err(e) if e.kind() == ErrorKind::PermissionDenied)
                        .then_some(())
                }
            },
        )
        .await;
    // And the data written before is intact.
    assert_eq!(pstorage_tests::read_all(&admin, "/before").await, data);
}

/// A cluster made with `--data-encryption off`: a write crosses loopback
/// in clear on the data channel (the choice took effect), while the
/// control channel stays encrypted and every connection still starts with
/// TLS that checks both certificates: one of another CA is refused on the
/// data port, and `openssl s_client` sees TLS 1.3 there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_data_path_sends_data_in_clear_after_a_checked_handshake() {
    let cluster = TestCluster::start(ClusterOptions {
        make_mds_args: vec!["--data-encryption".into(), "off".into()],
        ..defaults()
    });
    let conf = cluster.conf().dir;
    let creds = pstorage_rpc::node::node_credentials(&cluster.conf()).unwrap();
    assert_eq!(
        creds.data_path(),
        pstorage_rpc::pki::DataPath::Clear,
        "the CA carries the choice"
    );
    let cs = cluster.cs_addrs();
    for addr in &cs {
        let summary = s_client(&conf, addr);
        assert!(summary.contains("TLSv1.3"), "{addr}: {summary}");
        // Another cluster's certificate: refused before any data.
        let other = pstorage_rpc::pki::ClusterCa::generate_with(
            &cluster.name,
            pstorage_rpc::pki::DataPath::Clear,
        )
        .unwrap();
        let wrong = pstorage_rpc::tls::Credentials::new(
            other
                .issue_identity(pstorage_rpc::pki::Role::Admin, "x")
                .unwrap(),
        )
        .unwrap();
        let err = pstorage_rpc::auth::connect(addr, &wrong, pstorage_rpc::auth::Channel::Data)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{addr}: {err}");
        // Ours: the data channel leaves TLS, the control channel stays.
        let data = pstorage_rpc::auth::connect(addr, &creds, pstorage_rpc::auth::Channel::Data)
            .await
            .unwrap();
        assert!(data.is_clear());
        let control =
            pstorage_rpc::auth::connect(addr, &creds, pstorage_rpc::auth::Channel::Control)
                .await
                .unwrap();
        assert!(!control.is_clear());
    }

    let mut ports = vec![port_of(&cluster.mds_addr)];
    ports.extend(cs.iter().map(|a| port_of(a)));
    let pcap = cluster.dir.path().join("write.pcap");
    let capture = Capture::start(&pcap, &ports);
    let marker = b"pstorage-plaintext-marker-0123456789/";
    let data: Vec<u8> = marker.iter().copied().cycle().take(1 << 20).collect();
    let client = cluster.client();
    pstorage_tests::write_file(&client, "/clear.bin", &data).await;
    assert_eq!(pstorage_tests::read_all(&client, "/clear.bin").await, data);
    capture.stop();
    let captured = std::fs::read(&pcap).unwrap();
    assert!(
        captured.windows(marker.len()).any(|w| w == marker),
        "the data path of this cluster is clear: the bytes are in the capture"
    );
    // The file's name travels on the control channel: encrypted.
    assert!(!captured.windows(10).any(|w| w == b"/clear.bin"));
}

/// Revoking a live chunk server's certificate (a stolen disk server):
/// the MDS closes its connections and refuses new ones, so it goes
/// offline, and its chunks are copied to another server: the cluster
/// heals without an operator and the data stays readable. `offline_ms`
/// is the cluster's offline timeout (`None`: the default, 300 s).
async fn a_revoked_chunk_server_is_replaced(cluster: TestCluster, offline_ms: Option<u64>) {
    let mut cluster = cluster;
    if let Some(ms) = offline_ms {
        cluster.cli_ok(&["set-config", &format!("mds.wd.offline_tout={ms}")]);
    }
    let client = cluster.client();
    let data = pstorage_tests::pattern(7, 1 << 20);
    pstorage_tests::write_file(&client, "/kept", &data).await;
    let maps = client.mds().file_chunks("/kept").await.unwrap();
    let victim = pstorage_tests::chain(&maps[0])[0];
    let out = cluster.cli_ok(&["revoke", &format!("cs {}", victim.0)]);
    assert!(out.contains("revoked certificate"), "{out}");
    let deadline = Duration::from_secs(offline_ms.map_or(600, |ms| ms / 1000 + 120));
    cluster
        .wait_for(deadline, "the revoked server replaced", || {
            let status = cluster.status();
            let maps = maps.clone();
            let client = &client;
            async move {
                let status = status?;
                let gone = status
                    .cs
                    .iter()
                    .any(|c| c.id == victim && c.status != pstorage_core::types::CsStatus::Active);
                let now = client.mds().file_chunks("/kept").await.ok()?;
                let chain = pstorage_tests::chain(&now[0]);
                (gone
                    && pstorage_tests::all_chunks_healthy(&status)
                    && chain.len() == 3
                    && !chain.contains(&victim)
                    && now[0].chunk == maps[0].chunk)
                    .then_some(())
            }
        })
        .await;
    assert_eq!(pstorage_tests::read_all(&client, "/kept").await, data);
    // The revoked server still runs, refused: it is dropped by hand.
    assert!(cluster.cs_running(cluster.cs_index(victim)));
    cluster.cli_ok(&["rm-cs", "--force", &victim.0.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_chunk_server_goes_offline_and_its_chunks_are_copied() {
    let cluster = TestCluster::start(ClusterOptions {
        chunk_servers: 4,
        ..defaults()
    });
    a_revoked_chunk_server_is_replaced(cluster, Some(3_000)).await;
}

/// [`a_revoked_chunk_server_goes_offline_and_its_chunks_are_copied`] at the
/// defaults: 256 MiB chunks, the 300 s offline timeout, default heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: waits out the default 300 s offline timeout"]
async fn long_a_revoked_chunk_server_is_replaced_at_the_defaults() {
    let cluster = TestCluster::start(ClusterOptions {
        chunk_servers: 4,
        env: Vec::new(),
        ..defaults()
    });
    a_revoked_chunk_server_is_replaced(cluster, None).await;
}
