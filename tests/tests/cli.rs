//! The CLI tour of the README, run for real: stat, mkdir, put/get through
//! files and pipes, ls, set-attr/get-attr with inheritance, rm.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use pstorage_tests::{pattern, ClusterOptions, TestCluster};

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cli_tour() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let stat = ok(cluster.cli(&["stat"]));
    assert!(stat.contains("healthy"), "{stat}");
    assert_eq!(stat.matches("active").count(), 3, "{stat}");

    ok(cluster.cli(&["mkdir", "-p", "/vm/images"]));
    let local = cluster.dir.path().join("in.bin");
    let data = pattern(1, 3 * (1 << 20) + 77);
    std::fs::write(&local, &data).unwrap();
    ok(cluster.cli(&["put", local.to_str().unwrap(), "/vm/images/a.bin"]));
    ok(cluster.cli_stdin(&["put", "-", "/vm/images/b.bin"], &data[..1000]));

    let out = cluster.dir.path().join("out.bin");
    ok(cluster.cli(&["get", "/vm/images/a.bin", out.to_str().unwrap()]));
    assert!(std::fs::read(&out).unwrap() == data);
    let piped = cluster.cli(&["get", "/vm/images/b.bin", "-"]);
    assert!(piped.status.success());
    assert_eq!(piped.stdout, &data[..1000]);

    let ls = ok(cluster.cli(&["ls", "-l", "/vm/images"]));
    assert!(
        ls.contains("a.bin") && ls.contains(&data.len().to_string()),
        "{ls}"
    );
    assert_eq!(ok(cluster.cli(&["ls", "/vm"])).trim(), "images");

    // Attributes are inherited from the directory at creation.
    ok(cluster.cli(&["set-attr", "-R", "/vm", "replicas=2:1"]));
    assert!(ok(cluster.cli(&["get-attr", "/vm/images/a.bin"])).contains("replicas=2:1"));
    ok(cluster.cli_stdin(&["put", "-", "/vm/images/c.bin"], b"hello"));
    assert!(ok(cluster.cli(&["get-attr", "/vm/images/c.bin"])).contains("replicas=2:1"));
    assert!(ok(cluster.cli(&["get-attr", "/"])).contains("replicas=3:2"));
    let chunks = ok(cluster.cli(&["chunks", "/vm/images/c.bin"]));
    assert_eq!(chunks.lines().count(), 2, "{chunks}");
    assert_eq!(
        chunks.lines().nth(1).unwrap().matches("cs").count(),
        2,
        "{chunks}"
    );

    ok(cluster.cli(&["mv", "/vm/images/b.bin", "/vm/b.bin"]));
    ok(cluster.cli(&["rm", "/vm/images/a.bin"]));
    ok(cluster.cli(&["rm", "/vm/images/c.bin"]));
    let out = cluster.cli(&["rm", "/vm"]);
    assert!(
        !out.status.success(),
        "removing a non-empty directory must fail"
    );
    ok(cluster.cli(&["rm", "/vm/images"]));
    assert_eq!(ok(cluster.cli(&["ls", "/vm"])).trim(), "b.bin");
}

/// `pstorage bench --metadata` runs every pass on the cluster and the local
/// disk, reports each one's operations, and leaves nothing behind.
#[test]
fn bench_metadata_measures_every_pass_and_cleans_up() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let local = cluster.dir.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let out = ok(cluster.cli(&[
        "bench",
        "--metadata",
        "--clients",
        "3",
        "--files",
        "7",
        "--local-dir",
        local.to_str().unwrap(),
    ]));
    for target in ["local", "cluster"] {
        for pass in ["create", "stat", "rename", "unlink"] {
            let row = out
                .lines()
                .find(|l| {
                    let mut cols = l.split_whitespace();
                    cols.next() == Some(target) && cols.next() == Some(pass)
                })
                .unwrap_or_else(|| panic!("no {target} {pass} row: {out}"));
            let ops: u64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert_eq!(ops, 21, "3 clients x 7 files: {row}");
        }
    }
    // Its directories are gone, here and there.
    assert_eq!(std::fs::read_dir(&local).unwrap().count(), 0);
    assert_eq!(ok(cluster.cli(&["ls", "/.bench"])).trim(), "");
    let bad = cluster.cli(&["bench", "--metadata", "--clients", "0"]);
    assert!(!bad.status.success(), "0 clients is refused");
}

/// `pstorage-csd --threads`: a count out of range is refused before
/// anything starts; chunk servers on a multi-thread runtime (`--threads 2`)
/// serve the replica chain like the default's one thread.
#[test]
fn chunk_servers_run_on_more_threads_and_refuse_a_bad_count() {
    for bad in ["0", "65"] {
        let out = std::process::Command::new(pstorage_tests::bin_dir().join("pstorage-csd"))
            .args(["-r", "/nonexistent-pstorage-cs", "--threads", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(why.contains("--threads must be within 1..64"), "{why}");
    }
    // The defaults: 256 MiB chunks, default heartbeats.
    let mut cluster = TestCluster::start(ClusterOptions {
        chunk_size: 256 << 20,
        env: Vec::new(),
        ..ClusterOptions::default()
    });
    for i in 0..3 {
        cluster.stop_cs(i);
        cluster.start_cs_with(i, &["--threads", "2"]);
    }
    cluster.wait_active(3);
    let local = cluster.dir.path().join("in.bin");
    let data = pattern(2, 3 * (1 << 20) + 4096 * 5 + 11);
    std::fs::write(&local, &data).unwrap();
    ok(cluster.cli(&["put", local.to_str().unwrap(), "/t.bin"]));
    let out = cluster.dir.path().join("out.bin");
    ok(cluster.cli(&["get", "/t.bin", out.to_str().unwrap()]));
    assert!(std::fs::read(&out).unwrap() == data);
    let logs: String = (0..3).map(|i| cluster.log(&format!("cs{i}.log"))).collect();
    assert!(!logs.contains("panicked"), "{logs}");
}

/// What a cluster stores is its owner's only: every file the daemons and
/// `make-mds`/`make-cs` create (MDS store, replicas, journals, service
/// configuration, the cluster key) is mode 0600 or stricter, in
/// directories they created 0700; a key file others may read is refused.
#[test]
fn stored_files_and_the_key_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = TestCluster::start(ClusterOptions::default());
    ok(cluster.cli_stdin(&["put", "-", "/f"], &pattern(1, 100_000)));
    fn walk(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                let mode = meta.permissions().mode() & 0o777;
                assert_eq!(mode, 0o700, "{} is {mode:04o}", path.display());
                walk(&path, files);
            } else {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    let mut roots = vec![
        cluster.mds_dir.clone(),
        cluster.conf_root.join(&cluster.name),
    ];
    roots.extend(cluster.cs_dirs.iter().cloned());
    for root in &roots {
        let mode = std::fs::metadata(root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:04o}", root.display());
        walk(root, &mut files);
    }
    let chunk_files = files
        .iter()
        .filter(|p| p.to_string_lossy().contains("chunk"))
        .count();
    assert!(chunk_files >= 3, "no replicas among {files:?}");
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:04o}", f.display());
    }

    // A key others may read: refused with the fix, and nothing connects.
    let key = cluster.conf_root.join(&cluster.name).join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cluster.cli(&["stat"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(cluster.cli(&["stat"]));
}

/// A directory of more entries than one `readdir` page (1,024) and a file
/// of more chunks than one `fileChunks` page (256), at the default chunk
/// size and replication (the file's directory has 1 MiB chunks, see
/// below): `ls` and `chunks` show them whole, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_and_chunks_show_more_than_a_page() {
    use pstorage_core::types::{LeaseMode, OpenFlags, DEFAULT_CHUNK_SIZE};
    let cluster = TestCluster::start(ClusterOptions {
        chunk_size: DEFAULT_CHUNK_SIZE,
        ..Default::default()
    });
    let client = cluster.client();
    client.mkdir("/many", false).await.unwrap();
    let entries = 1_100;
    for i in (0..entries).rev() {
        client
            .mkdir(&format!("/many/d{i:04}"), false)
            .await
            .unwrap();
    }
    let names = ok(cluster.cli(&["ls", "/many"]));
    let expected: Vec<String> = (0..entries).map(|i| format!("d{i:04}")).collect();
    assert_eq!(names.lines().collect::<Vec<_>>(), expected);

    // One byte in each of 260 chunks. At the default chunk size that file
    // would reserve 65 GiB per replica, more than this machine's disk
    // offers, so its directory has 1 MiB chunks (a user's attribute; the
    // page bound counts chunks, not bytes).
    ok(cluster.cli(&["mkdir", "/small"]));
    ok(cluster.cli(&["set-attr", "/small", "chunk-size=1048576"]));
    let chunk_size = 1u64 << 20;
    let chunks = 260u64;
    let f = client
        .open(
            "/small/sparse.bin",
            LeaseMode::Write,
            OpenFlags {
                create: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for k in 0..chunks {
        f.write_at(k * chunk_size + k % 4096, &[k as u8 | 1])
            .await
            .unwrap();
    }
    f.flush().await.unwrap();
    f.close().await.unwrap();
    let listed = ok(cluster.cli(&["chunks", "/small/sparse.bin"]));
    let indexes: Vec<u64> = listed
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(indexes, (0..chunks).collect::<Vec<_>>(), "{listed}");
    assert!(
        listed.lines().skip(1).all(|l| l.matches("cs").count() == 3),
        "three replicas each: {listed}"
    );
}
