//! `--metrics ADDR:PORT` on `pstorage-mdsd`, `pstorage-csd`,
//! `pstorage nbd-serve` and `pstorage-mount`: the Prometheus text format on `/metrics`, checked
//! with `promtool check metrics` (Debian package prometheus, installed by
//! scripts/install-deps.sh) and read for values that follow what the
//! cluster did. Default chunk size (256 MiB) and replicas (3:2).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pstorage_tests::{free_port, ClusterOptions, NbdServer, TestCluster};

/// `GET /metrics` of `addr`: the body, once the endpoint answers 200.
fn scrape(addr: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    Some(body.to_string())
}

/// Scrapes `addr` until `ready` holds for the text (or fails after 60 s).
fn scrape_until(addr: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(addr);
        if let Some(text) = text.as_deref().filter(|t| ready(t)) {
            return text.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s; last scrape of {addr}: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the series `series` (name with labels, as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Each of `series` is in `text` with a value of at least 1.
fn counted_at_least_once(text: &str, series: &[&str]) {
    for s in series {
        assert!(value(text, s).is_some_and(|n| n >= 1.0), "{s}: {text}");
    }
}

/// `promtool check metrics` accepts `text`.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus; run scripts/install-deps.sh)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feeding promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn daemons_serve_metrics_that_promtool_accepts_and_that_follow_the_cluster() {
    let mut cluster = TestCluster::start(ClusterOptions {
        chunk_size: 256 << 20,
        ..ClusterOptions::default()
    });
    // The MDS and one chunk server again, each with an endpoint.
    let mds_metrics = format!("127.0.0.1:{}", free_port());
    cluster.kill_mds_at(0);
    cluster.start_mds_at_with(0, &["--metrics", &mds_metrics]);
    let cs_metrics = format!("127.0.0.1:{}", free_port());
    cluster.stop_cs(0);
    cluster.start_cs_with(0, &["--metrics", &cs_metrics]);

    let mds = scrape_until(&mds_metrics, "the MDS leads with 3 active servers", |t| {
        value(t, "pstorage_mds_is_leader") == Some(1.0)
            && value(t, "pstorage_cluster_chunk_servers{status=\"active\"}") == Some(3.0)
    });
    promtool_accepts(&mds);
    assert!(
        value(&mds, "pstorage_mds_raft_term").is_some_and(|t| t >= 1.0),
        "{mds}"
    );
    assert_eq!(
        value(&mds, "pstorage_cluster_health{health=\"healthy\"}"),
        Some(1.0),
        "{mds}"
    );

    // Writes through NBD: the server counts them, the chunk server too.
    cluster.cli_ok(&["truncate", "-s", "8M", "/disk.img"]);
    let nbd_metrics = format!("127.0.0.1:{}", free_port());
    let server = NbdServer::start(&cluster, "nbd.log", &["--metrics", &nbd_metrics]);
    let io = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "read -P 0x5a 0 1M",
            "-c",
            "flush",
            &server.uri("/disk.img"),
        ])
        .output()
        .expect("qemu-io (package qemu-utils; run scripts/install-deps.sh)");
    assert!(
        io.status.success(),
        "{}",
        String::from_utf8_lossy(&io.stderr)
    );
    let nbd = scrape(&nbd_metrics).expect("nbd-serve answers /metrics");
    promtool_accepts(&nbd);
    assert_eq!(
        value(&nbd, "pstorage_nbd_written_bytes_total"),
        Some(f64::from(1u32 << 20)),
        "{nbd}"
    );
    assert_eq!(
        value(&nbd, "pstorage_nbd_read_bytes_total"),
        Some(f64::from(1u32 << 20)),
        "{nbd}"
    );
    assert!(
        value(&nbd, "pstorage_nbd_request_seconds_count{op=\"FLUSH\"}").is_some_and(|n| n >= 1.0),
        "{nbd}"
    );
    assert_eq!(value(&nbd, "pstorage_nbd_errors_total"), Some(0.0), "{nbd}");
    // The SDK inside nbd-serve: its data-path requests and MDS calls.
    counted_at_least_once(
        &nbd,
        &[
            "pstorage_client_cs_request_seconds_count{op=\"write\"}",
            "pstorage_client_cs_request_seconds_count{op=\"read\"}",
            "pstorage_client_cs_request_seconds_count{op=\"flush\"}",
            "pstorage_client_mds_request_seconds_count{op=\"open\"}",
        ],
    );
    assert_eq!(
        value(&nbd, "pstorage_client_cs_requests_in_flight"),
        Some(0.0),
        "{nbd}"
    );

    // The MDS timed the calls it served, and committed the open's
    // commands through its group commit.
    let mds = scrape(&mds_metrics).expect("the MDS answers /metrics");
    promtool_accepts(&mds);
    counted_at_least_once(
        &mds,
        &[
            "pstorage_mds_request_seconds_count{op=\"open\"}",
            "pstorage_mds_request_seconds_count{op=\"chunk_map\"}",
            "pstorage_mds_commit_entries_total",
        ],
    );
    assert!(
        value(&mds, "pstorage_mds_raft_snapshot_index").is_some(),
        "{mds}"
    );
    assert!(
        value(&mds, "pstorage_mds_commit_commands_total")
            >= value(&mds, "pstorage_mds_commit_entries_total"),
        "{mds}"
    );

    // The leader times its periodic duties (the tick, the replication
    // planning rounds).
    let mds = scrape_until(&mds_metrics, "the MDS ran its duties", |t| {
        ["tick", "plan"].iter().all(|d| {
            value(t, &format!("pstorage_mds_duty_runs_total{{duty=\"{d}\"}}"))
                .is_some_and(|n| n >= 1.0)
        })
    });
    assert!(
        value(&mds, "pstorage_mds_duty_seconds_total{duty=\"tick\"}").is_some_and(|s| s > 0.0),
        "{mds}"
    );

    // Every chunk of the file has a replica on each of the 3 servers.
    let cs = scrape_until(&cs_metrics, "the chunk server took the writes", |t| {
        value(t, "pstorage_cs_write_bytes_total").is_some_and(|b| b >= f64::from(1u32 << 20))
    });
    promtool_accepts(&cs);
    assert_eq!(value(&cs, "pstorage_cs_serving"), Some(1.0), "{cs}");
    assert!(
        value(&cs, "pstorage_cs_replicas").is_some_and(|n| n >= 1.0),
        "{cs}"
    );
    assert!(
        value(&cs, "pstorage_cs_flush_ops_total").is_some_and(|n| n >= 1.0),
        "{cs}"
    );
    assert!(
        value(&cs, "pstorage_cs_space_free_bytes").is_some_and(|n| n > 0.0),
        "{cs}"
    );
    assert!(value(&cs, "pstorage_cs_ring_reads_total").is_some(), "{cs}");
    assert!(
        value(&cs, "pstorage_cs_request_seconds_count{op=\"write\"}").is_some_and(|n| n >= 1.0),
        "{cs}"
    );
    drop(server);

    // The sample Grafana dashboard names only metrics the daemons export.
    let exported: std::collections::BTreeSet<&str> = [&mds, &nbd, &cs]
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana/pstorage.json"),
    )
    .expect("examples/grafana/pstorage.json");
    let mut named = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !word.starts_with("pstorage_") {
            continue;
        }
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| word.strip_suffix(s))
            .filter(|f| exported.contains(f))
            .unwrap_or(word);
        assert!(
            exported.contains(family),
            "the dashboard names {word}, which no daemon exports: {exported:?}"
        );
        named += 1;
    }
    assert!(named >= 10, "{named} metric names in the dashboard");
}

#[test]
fn a_metrics_address_in_use_fails_the_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(pstorage_tests::bin_dir().join("pstorage-csd"))
        .args(["-r", "/nonexistent-pstorage-cs", "--metrics", &addr])
        .output()
        .expect("pstorage-csd");
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains(&format!("cannot serve metrics at {addr}")),
        "{why}"
    );
}

/// `pstorage-mount --metrics`: FUSE requests by operation, the SDK's calls
/// and the read cache, in a format promtool accepts; a busy address fails
/// the mount on the terminal, before anything is mounted.
#[test]
fn the_mount_serves_metrics_and_refuses_a_busy_address() {
    let cluster = TestCluster::start(ClusterOptions {
        chunk_size: 256 << 20,
        ..ClusterOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let mount = |extra: &[&str]| {
        let mut c = Command::new(pstorage_tests::bin_dir().join("pstorage-mount"));
        c.arg("--conf-dir")
            .arg(&cluster.conf_root)
            .args(["-c", &cluster.name])
            .args(extra)
            .arg(&mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == mountpoint.to_str())
    };

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let out = mount(&["--metrics", &busy]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains(&format!("cannot serve metrics at {busy}")),
        "{why}"
    );
    assert!(!mounted());

    let addr = format!("127.0.0.1:{}", free_port());
    let cache = dir.path().join("cache.bin");
    let mut child = mount(&[
        "-f",
        "--metrics",
        &addr,
        "-C",
        cache.to_str().unwrap(),
        "-R",
        "64M",
    ])
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mounted() {
        assert!(child.try_wait().unwrap().is_none(), "pstorage-mount exited");
        assert!(Instant::now() < deadline, "not mounted within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = pstorage_tests::pattern(3, 1 << 20);
    std::fs::write(mountpoint.join("f.bin"), &data).unwrap();
    assert!(std::fs::read(mountpoint.join("f.bin")).unwrap() == data);

    let text = scrape(&addr).expect("pstorage-mount answers /metrics");
    let unmount = Command::new("fusermount3")
        .arg("-u")
        .arg(&mountpoint)
        .status();
    let exited = child.wait();
    promtool_accepts(&text);
    counted_at_least_once(
        &text,
        &[
            "pstorage_fuse_request_seconds_count{op=\"create\"}",
            "pstorage_fuse_request_seconds_count{op=\"write\"}",
            "pstorage_fuse_request_seconds_count{op=\"lookup\"}",
            "pstorage_client_cs_request_seconds_count{op=\"write\"}",
            "pstorage_client_mds_request_seconds_count{op=\"open\"}",
        ],
    );
    assert!(
        value(&text, "pstorage_mount_cache_hits_total").is_some(),
        "{text}"
    );
    assert!(unmount.is_ok_and(|s| s.success()), "fusermount3 -u");
    assert!(exited.is_ok_and(|s| s.success()));
}
