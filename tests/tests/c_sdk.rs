//! The C SDK as a C programmer gets it: libpstorage is built, installed
//! with `scripts/install-sdk.sh` into a temporary prefix, the programs in
//! `examples/c/` are compiled with the system C compiler against the
//! installed header and library through pkg-config (shared and static),
//! and run against a live cluster: the sync example, the aio copy (checked
//! again through the Rust SDK), the aio benchmark mode, and the error-path
//! test of every function (`examples/c/test_errors.c`).

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pstorage_tests::{bin_dir, pattern, ClusterOptions, TestCluster};

/// Longest any one C program may run before the test kills it.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(240);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs `cmd` to completion (killing it after `PROGRAM_TIMEOUT`) and
/// returns its output, with the command in any failure message.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    // Drain the pipes on threads so a chatty program cannot block on them.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).ok();
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut v).ok();
        v
    });
    let deadline = Instant::now() + PROGRAM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} ran longer than {PROGRAM_TIMEOUT:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{text}",
        out.status
    );
    text
}

/// Installs the SDK into `prefix` from the target directory the daemons
/// come from, building the library there first if needed.
fn install_sdk(prefix: &Path) {
    let profile_dir = bin_dir();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let target_dir = profile_dir.parent().expect("target directory");
    let mut cmd = Command::new(workspace_root().join("scripts/install-sdk.sh"));
    if profile == "debug" {
        cmd.arg("--debug");
    }
    ok(cmd.arg(prefix).env("CARGO_TARGET_DIR", target_dir));
}

fn c_program(build: &Path, name: &str) -> Command {
    let mut cmd = Command::new(build.join(name));
    cmd.env("RUST_BACKTRACE", "1");
    cmd
}

#[test]
fn c_sdk_builds_installs_and_runs_against_a_live_cluster() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let prefix = cluster.dir.path().join("sdk");
    install_sdk(&prefix);

    // The installed layout: versioned library, SONAME link, dev link,
    // archive, header and pkg-config file.
    let lib = prefix.join("lib");
    for f in [
        "libpstorage.so",
        "libpstorage.so.0",
        "libpstorage.a",
        "pkgconfig/pstorage.pc",
    ] {
        assert!(lib.join(f).exists(), "{} is not installed", f);
    }
    assert_eq!(
        std::fs::read_link(lib.join("libpstorage.so.0")).expect("libpstorage.so.0 is a link"),
        PathBuf::from(format!("libpstorage.so.{}", env!("CARGO_PKG_VERSION")))
    );
    assert!(prefix.join("include/pstorage.h").exists());
    let dynamic = ok(Command::new("readelf")
        .arg("-d")
        .arg(lib.join("libpstorage.so")));
    assert!(
        dynamic.contains("Library soname: [libpstorage.so.0]"),
        "{dynamic}"
    );

    // Build the examples with the system compiler through pkg-config.
    let pkg_config_path = lib.join("pkgconfig");
    let build = cluster.dir.path().join("build");
    let examples = workspace_root().join("examples/c");
    ok(Command::new("make")
        .arg("-C")
        .arg(&examples)
        .arg(format!("OUT={}", build.display()))
        .env("PKG_CONFIG_PATH", &pkg_config_path));
    let needed = ok(Command::new("readelf")
        .arg("-d")
        .arg(build.join("hello_sync")));
    assert!(
        needed.contains("Shared library: [libpstorage.so.0]"),
        "{needed}"
    );
    // And once against the archive.
    let static_build = build.join("static");
    ok(Command::new("make")
        .arg("-C")
        .arg(&examples)
        .arg(format!("OUT={}", static_build.display()))
        .arg("STATIC=1")
        .arg(static_build.join("hello_sync"))
        .env("PKG_CONFIG_PATH", &pkg_config_path));
    let needed = ok(Command::new("readelf")
        .arg("-d")
        .arg(static_build.join("hello_sync")));
    assert!(!needed.contains("libpstorage"), "{needed}");

    let conf_root = cluster.conf_root.clone();
    let with_conf = |mut cmd: Command| {
        cmd.env("PSTORAGE_CONF_DIR", &conf_root);
        cmd
    };

    // The sync example, dynamically and statically linked.
    let out = ok(with_conf(c_program(&build, "hello_sync")).args([&cluster.name, "/hello"]));
    assert!(out.contains("read back: hello, pstorage"), "{out}");
    assert!(out.contains("hello_sync: ok"), "{out}");
    let out =
        ok(with_conf(c_program(&static_build, "hello_sync")).args([&cluster.name, "/hello2"]));
    assert!(out.contains("hello_sync: ok"), "{out}");

    // Every function's error paths.
    let out = ok(with_conf(c_program(&build, "test_errors")).arg(&cluster.name));
    assert!(out.contains(" 0 failed"), "{out}");

    // The POSIX namespace: links, special files, modes, owners, times,
    // extended attributes, rename flags.
    let out = ok(with_conf(c_program(&build, "posix_tree")).args([&cluster.name, "/posix"]));
    assert!(out.contains("posix_tree: ok"), "{out}");
    // And as the CLI lists it: kinds, modes, owners, links, targets.
    let ls = cluster.cli(&["ls", "-l", "/posix"]);
    let ls = String::from_utf8_lossy(&ls.stdout).to_string();
    for line in [
        "lrwxrwxrwx   1",
        "-> file",
        "crw--w----",
        "-rwxr-xr-x   1  1234",
    ] {
        assert!(ls.contains(line), "{line:?} not in:\n{ls}");
    }

    // The aio copy: a file over several 1 MiB chunks and not block-aligned,
    // compared by the program itself and once more through the Rust SDK.
    let data = pattern(5, 5 * (1 << 20) + 4321);
    let local = cluster.dir.path().join("local.bin");
    std::fs::write(&local, &data).expect("write the local file");
    let local_arg = local.to_str().expect("utf-8 path");
    let out = ok(with_conf(c_program(&build, "copy_aio")).args([
        &cluster.name,
        "copy",
        local_arg,
        "/copy.bin",
    ]));
    assert!(
        out.contains(&format!("{} bytes identical", data.len())),
        "{out}"
    );
    let client = cluster.conf();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stored = runtime.block_on(async {
        let client =
            pstorage_rpc::node::connect_client(&client, Default::default()).expect("connect");
        let file = client
            .open(
                "/copy.bin",
                pstorage_core::types::LeaseMode::Read,
                Default::default(),
            )
            .await
            .expect("open the copy");
        let stored = file
            .read_at_bytes(0, data.len() as u64 + 10)
            .await
            .expect("read the copy");
        file.close().await.expect("close");
        stored
    });
    assert!(stored[..] == data[..], "the copy in the cluster differs");

    // The comparison catches a difference: one flipped byte in a chunk in
    // the middle makes `verify` fail.
    let mut changed = data.clone();
    changed[3 * (1 << 20) + 17] ^= 0x40;
    runtime.block_on(async {
        let client = pstorage_rpc::node::connect_client(&cluster.conf(), Default::default())
            .expect("connect");
        let flags = pstorage_core::types::OpenFlags {
            create: true,
            ..Default::default()
        };
        let file = client
            .open(
                "/changed.bin",
                pstorage_core::types::LeaseMode::Write,
                flags,
            )
            .await
            .expect("create /changed.bin");
        file.write_at(0, &changed).await.expect("write");
        file.close().await.expect("close");
    });
    let out = ok(with_conf(c_program(&build, "copy_aio")).args([
        &cluster.name,
        "verify",
        local_arg,
        "/copy.bin",
    ]));
    assert!(out.contains("bytes identical"), "{out}");
    let mismatch = run(with_conf(c_program(&build, "copy_aio")).args([
        &cluster.name,
        "verify",
        local_arg,
        "/changed.bin",
    ]));
    assert_eq!(mismatch.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&mismatch.stderr);
    assert!(
        stderr.contains(&format!(
            "MISMATCH in the 1048576 bytes at offset {}",
            3 << 20
        )),
        "{stderr}"
    );
    // A missing local file is an error, not a crash.
    let missing = run(with_conf(c_program(&build, "copy_aio")).args([
        &cluster.name,
        "copy",
        "/nonexistent/file",
        "/x",
    ]));
    assert!(!missing.status.success());

    // The benchmark mode runs (its numbers are not judged here).
    for mode in ["cb", "poll"] {
        let out = ok(with_conf(c_program(&build, "copy_aio")).args([
            "-t",
            "1",
            "-s",
            "4",
            "-m",
            mode,
            &cluster.name,
            "bench",
            "/bench.bin",
        ]));
        for pass in ["seq-write-1M", "rand-write-4K", "rand-read-4K"] {
            assert!(out.contains(pass), "{out}");
        }
    }
}
