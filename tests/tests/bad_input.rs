//! Invariants 8 and 9 with real daemons: connections without the cluster
//! key are refused before any operation; garbage and malformed frames on the
//! MDS and CS ports, bad paths and offsets, bad CLI arguments give clear
//! errors; the daemons keep running and nothing stored changes.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use pstorage_core::types::{LeaseMode, OpenFlags, MAX_FILE_SIZE};
use pstorage_core::ErrorKind;
use pstorage_rpc::auth::{self, Channel};
use pstorage_tests::{pattern, ClusterOptions, TestCluster};

fn small() -> ClusterOptions {
    ClusterOptions {
        chunk_servers: 3,
        chunk_size: 1 << 20,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_certificate_of_the_cluster_are_refused() {
    let cluster = TestCluster::start(small());
    // A cluster of the same name elsewhere: its own CA.
    let other = pstorage_rpc::pki::ClusterCa::generate(&cluster.conf().name).unwrap();
    let wrong = pstorage_rpc::tls::Credentials::new(
        other
            .issue_identity(pstorage_rpc::pki::Role::Admin, "intruder")
            .unwrap(),
    )
    .unwrap();
    let mut targets = vec![cluster.mds_addr.clone()];
    targets.extend(cluster.cs_addrs());
    for addr in &targets {
        for channel in [Channel::Control, Channel::Data] {
            let err = auth::connect(addr, &wrong, channel).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{addr}: {err}");
        }
    }
    // A wrong password through the CLI is a clear error and stores nothing.
    let cert = cluster.conf().dir.join("node.crt");
    let before = std::fs::read(&cert).unwrap();
    let out = cluster.cli_stdin(&["auth-node"], b"not-the-password\n");
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("wrong password"), "{msg}");
    assert_eq!(std::fs::read(&cert).unwrap(), before);
    // The right one works.
    let out = cluster.cli_stdin(
        &["auth-node"],
        format!("{}\n", pstorage_tests::PASSWORD).as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `bytes` to `addr` and reads until the peer closes (or 3 s pass).
fn send_garbage(addr: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(bytes);
    let mut sink = [0u8; 4096];
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_port_changes_nothing() {
    let mut cluster = TestCluster::start(small());
    let client = cluster.client();
    let data = pattern(3, 1_500_000);
    let f = client
        .open(
            "/keep.bin",
            LeaseMode::Write,
            OpenFlags {
                create: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    f.write_at(0, &data).await.unwrap();
    f.close().await.unwrap();

    let mut targets = vec![cluster.mds_addr.clone()];
    targets.extend(cluster.cs_addrs());
    let key = pstorage_rpc::node::node_credentials(&cluster.conf()).unwrap();
    for addr in &targets {
        send_garbage(addr, b"GET / HTTP/1.0\r\n\r\n");
        send_garbage(addr, &pattern(11, 100_000));
        send_garbage(addr, &[0xff; 64]);
        // Authenticated, then garbage on both channels.
        for channel in [Channel::Control, Channel::Data] {
            use tokio::io::AsyncWriteExt;
            let mut s = auth::connect(addr, &key, channel).await.unwrap();
            let _ = s.write_all(&pattern(5, 65536)).await;
            let _ = s.write_all(&[0xff; 4096]).await;
            drop(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        cluster.mds_running(),
        "MDS died: {}",
        cluster.log("mds.log")
    );
    for i in 0..3 {
        assert!(
            cluster.cs_running(i),
            "CS {i} died: {}",
            cluster.log(&format!("cs{i}.log"))
        );
    }
    let f = client
        .open("/keep.bin", LeaseMode::Read, OpenFlags::default())
        .await
        .unwrap();
    let mut buf = vec![0u8; data.len()];
    assert_eq!(f.read_at(0, &mut buf).await.unwrap(), data.len());
    assert!(buf == data);
    f.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_give_clear_errors() {
    let cluster = TestCluster::start(small());
    let client = cluster.client();
    let err = client
        .open("/missing", LeaseMode::Read, OpenFlags::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.message().contains("/missing"), "{err}");
    let err = client.stat("relative/path").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = client.mkdir("/a/b", false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    let f = client
        .open(
            "/f",
            LeaseMode::Write,
            OpenFlags {
                create: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let err = f.write_at(MAX_FILE_SIZE - 2, b"abcd").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FileTooLarge, "{err}");
    let mut buf = [0u8; 16];
    assert_eq!(
        f.read_at(MAX_FILE_SIZE + 10, &mut buf).await.unwrap_or(0),
        0
    );
    assert_eq!(f.size(), 0, "a refused write must not change the file");
    // A second writer is refused while the first holds the lease.
    let err = client
        .open("/f", LeaseMode::Write, OpenFlags::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    f.close().await.unwrap();
    assert_eq!(client.stat("/f").await.unwrap().size, 0);
}

#[test]
fn bad_cli_arguments_are_clear_errors() {
    let cluster = TestCluster::start(ClusterOptions {
        chunk_servers: 1,
        ..small()
    });
    let cases: &[&[&str]] = &[
        &["set-attr", "/", "replicas=5:9"],
        &["set-attr", "/", "color=blue"],
        &["get", "/nope", "-"],
        &["ls", "no-slash"],
        &["mkdir", "/x/y/z"],
        &["no-such-command"],
        &["make-cs", "-r"],
    ];
    for args in cases {
        let out = cluster.cli(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty(), "{args:?} printed no error");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let out = cluster.cli(&["get-attr", "/"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("replicas=3:2"));
    // No cluster name at all.
    let out = std::process::Command::new(pstorage_tests::bin_dir().join("pstorage"))
        .arg("stat")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
