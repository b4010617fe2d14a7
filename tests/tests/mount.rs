//! pstorage-mount (FUSE) through real tools nobody here wrote: cp, rsync,
//! diff, sha256sum, dd, fio, qemu-img, and (run by scripts/test.d/fuse.sh,
//! which installs them) fsx and pjdfstest.
//!
//! Every test mounts a real cluster on a temp-dir mount point. The [`Mount`]
//! guard always unmounts (`fusermount3 -u`, lazily if busy) and kills the
//! mount process, also when the test fails.

#![allow(clippy::unwrap_used, reason = "a test: a step that fails panics")]

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pstorage_core::error::ErrorKind;
use pstorage_core::types::{LeaseMode, OpenFlags};
use pstorage_tests::{bin_dir, pattern, ClusterOptions, TestCluster};

/// A mounted cluster; unmounts and stops the mount process on drop.
struct Mount {
    mountpoint: PathBuf,
    log: PathBuf,
    /// The foreground mount process (`-f`).
    child: Option<Child>,
    /// The daemon's pid (daemon mode).
    daemon_pid: Option<i32>,
    _dir: tempfile::TempDir,
}

fn is_mounted(mountpoint: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = mountpoint.to_str().unwrap();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want))
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

impl Mount {
    /// Mounts `cluster` in the foreground (`-f`) with `extra` arguments and
    /// waits until the mount point answers.
    fn start(cluster: &TestCluster, extra: &[&str]) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let log = dir.path().join("mount.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin_dir().join("pstorage-mount"))
            .arg("--conf-dir")
            .arg(&cluster.conf_root)
            .args(["-c", &cluster.name, "-f"])
            .args(extra)
            .arg(&mountpoint)
            .env("PSTORAGE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn pstorage-mount");
        let mut m = Mount {
            mountpoint,
            log,
            child: Some(child),
            daemon_pid: None,
            _dir: dir,
        };
        m.wait_mounted();
        m
    }

    /// Mounts `cluster` as a daemon: the command returns once the mount is
    /// ready.
    fn start_daemon(cluster: &TestCluster) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let log = dir.path().join("mount.log");
        let pid_file = dir.path().join("mount.pid");
        let out = Command::new(bin_dir().join("pstorage-mount"))
            .arg("--conf-dir")
            .arg(&cluster.conf_root)
            .args(["-c", &cluster.name])
            .arg("--log")
            .arg(&log)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&mountpoint)
            .env("PSTORAGE_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .expect("run pstorage-mount");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let m = Mount {
            mountpoint,
            log,
            child: None,
            daemon_pid: pid,
            _dir: dir,
        };
        assert!(
            out.status.success(),
            "pstorage-mount failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            m.log()
        );
        assert!(pid.is_some(), "no pid file after a successful mount");
        // Ready means ready: no polling.
        assert!(is_mounted(&m.mountpoint), "returned before mounting");
        m
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&self.mountpoint) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("pstorage-mount exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "not mounted: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `fusermount3 -u` and waits for the mount process to exit by itself.
    fn unmount(&mut self) {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mountpoint)
            .output()
            .expect("fusermount3");
        assert!(
            out.status.success(),
            "fusermount3 -u: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let gone = match (&mut self.child, self.daemon_pid) {
                (Some(c), _) => c.try_wait().unwrap().is_some(),
                (None, Some(pid)) => !pid_alive(pid),
                (None, None) => true,
            };
            if gone {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the mount process did not exit after unmount: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!is_mounted(&self.mountpoint));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mountpoint)
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(mut c) = self.child.take() {
            // Give it a moment to close its files cleanly, then make sure.
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.daemon_pid {
            let deadline = Instant::now() + Duration::from_secs(5);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                // SAFETY: our own daemon, by pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sh(script: &str) -> Output {
    run(Command::new("sh").arg("-c").arg(script))
}

/// A small tree of files (empty, small, multi-chunk, odd sizes) and dirs.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("small.txt"), b"hello pstorage\n").unwrap();
    std::fs::write(root.join("a/big.bin"), pattern(1, 3 * (1 << 20) + 12345)).unwrap();
    for i in 0..20 {
        std::fs::write(
            root.join(format!("a/b/f{i}")),
            pattern(100 + i, 1000 * i as usize + 1),
        )
        .unwrap();
    }
    std::fs::write(root.join("a/b/c/deep"), pattern(7, 65536)).unwrap();
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[test]
fn real_tools_copy_verify_and_namespace() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let mut m = Mount::start_daemon(&cluster);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tree");
    make_tree(&src);

    // cp -r and rsync -a in, diff -r against the source.
    run(Command::new("cp").arg("-r").arg(&src).arg(m.path("cp")));
    run(Command::new("diff").arg("-r").arg(&src).arg(m.path("cp")));
    let mut dst = m.path("rsync").into_os_string();
    dst.push("/");
    let mut from = src.clone().into_os_string();
    from.push("/");
    run(Command::new("rsync").arg("-a").arg(&from).arg(&dst));
    run(Command::new("diff")
        .arg("-r")
        .arg(&src)
        .arg(m.path("rsync")));
    // rsync again: nothing to do, and still equal.
    run(Command::new("rsync").arg("-a").arg(&from).arg(&dst));
    run(Command::new("diff")
        .arg("-r")
        .arg(&src)
        .arg(m.path("rsync")));

    // dd with conv=fsync, then sha256sum on both sides.
    let local = work.path().join("dd.bin");
    std::fs::write(&local, pattern(9, 5 * (1 << 20) + 333)).unwrap();
    run(Command::new("dd")
        .arg(format!("if={}", local.display()))
        .arg(format!("of={}", m.path("dd.bin").display()))
        .args(["bs=1M", "conv=fsync", "status=none"]));
    let sums = sh(&format!(
        "sha256sum < {} && sha256sum < {}",
        local.display(),
        m.path("dd.bin").display()
    ));
    let sums = String::from_utf8(sums.stdout).unwrap();
    let lines: Vec<&str> = sums.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], lines[1], "sha256 differs");

    // Sizes and times in stat; the SDK sees what the mount wrote.
    let md = std::fs::metadata(m.path("dd.bin")).unwrap();
    assert_eq!(md.len(), 5 * (1 << 20) + 333);
    let age = std::time::SystemTime::now()
        .duration_since(md.modified().unwrap())
        .unwrap_or_default();
    assert!(age < Duration::from_secs(120), "mtime {age:?} old");
    assert!(md.is_file() && std::fs::metadata(m.path("cp/a")).unwrap().is_dir());
    let got = cluster.cli(&["get", "/dd.bin", "-"]);
    assert!(got.status.success());
    assert!(got.stdout == std::fs::read(&local).unwrap());

    // statfs is the cluster's capacity.
    let df = String::from_utf8(
        sh(&format!(
            "df -B1 --output=size,avail {}",
            m.mountpoint.display()
        ))
        .stdout,
    )
    .unwrap();
    let nums: Vec<u64> = df
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(nums[0] > 0 && nums[1] > 0 && nums[1] <= nums[0], "{df}");

    // rename, unlink, rmdir (a non-empty one is refused).
    std::fs::rename(m.path("cp/small.txt"), m.path("cp/a/moved.txt")).unwrap();
    std::fs::rename(m.path("cp/a/b"), m.path("b-moved")).unwrap();
    assert_eq!(
        std::fs::read(m.path("b-moved/c/deep")).unwrap(),
        pattern(7, 65536)
    );
    assert_eq!(
        std::fs::read(m.path("cp/a/moved.txt")).unwrap(),
        b"hello pstorage\n"
    );
    assert_eq!(
        errno_of(std::fs::remove_dir(m.path("b-moved"))),
        libc::ENOTEMPTY
    );
    std::fs::remove_dir_all(m.path("b-moved")).unwrap();
    assert!(!m.path("b-moved").exists());
    std::fs::remove_file(m.path("cp/a/moved.txt")).unwrap();
    assert_eq!(
        errno_of(std::fs::metadata(m.path("cp/a/moved.txt"))),
        libc::ENOENT
    );

    // Unlinking a file that is still open: it stays readable and writable
    // through the open descriptor, and is gone from the namespace.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.path("open-unlinked"))
        .unwrap();
    f.write_all_at(b"still here", 0).unwrap();
    std::fs::remove_file(m.path("open-unlinked")).unwrap();
    assert!(!m.path("open-unlinked").exists());
    let mut buf = [0u8; 10];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"still here");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    let listing: Vec<String> = std::fs::read_dir(&m.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        listing.iter().all(|n| !n.starts_with(".pstorage")),
        "{listing:?}"
    );

    // The POSIX namespace: symbolic and hard links, FIFOs, modes, owners,
    // times with nanoseconds, extended attributes, rename flags.
    let target = m.path("dd.bin");
    std::os::unix::fs::symlink("dd.bin", m.path("sym")).unwrap();
    assert_eq!(
        std::fs::read_link(m.path("sym")).unwrap(),
        Path::new("dd.bin")
    );
    assert_eq!(
        std::fs::read(m.path("sym")).unwrap(),
        std::fs::read(&target).unwrap(),
        "the kernel follows the link"
    );
    assert!(std::fs::symlink_metadata(m.path("sym"))
        .unwrap()
        .file_type()
        .is_symlink());
    std::fs::hard_link(&target, m.path("hard")).unwrap();
    let (t, h) = (
        std::fs::metadata(&target).unwrap(),
        std::fs::metadata(m.path("hard")).unwrap(),
    );
    assert_eq!((t.ino(), t.nlink()), (h.ino(), 2));
    std::fs::remove_file(&target).unwrap();
    assert_eq!(std::fs::metadata(m.path("hard")).unwrap().nlink(), 1);
    std::fs::rename(m.path("hard"), &target).unwrap();
    let fifo = std::ffi::CString::new(m.path("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid C path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    let meta = std::fs::symlink_metadata(m.path("fifo")).unwrap();
    assert_eq!(meta.mode() & 0o170777, libc::S_IFIFO | 0o640);
    run(Command::new("chmod").arg("4751").arg(&target));
    run(Command::new("chown").arg("1234:5678").arg(&target));
    run(Command::new("touch")
        .arg("-d")
        .arg("2001-02-03 04:05:06.123456789")
        .arg(&target));
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o751, 1234, 5678),
        "chown cleared the set-user-id bit"
    );
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (981_173_106, 123_456_789)
    );
    let name = std::ffi::CString::new("user.origin").unwrap();
    let c_target = std::ffi::CString::new(target.to_str().unwrap()).unwrap();
    // SAFETY: valid C strings and a buffer of the length given.
    let set = unsafe {
        libc::setxattr(
            c_target.as_ptr(),
            name.as_ptr(),
            b"pstorage".as_ptr().cast(),
            8,
            libc::XATTR_CREATE,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    let mut value = [0u8; 64];
    // SAFETY: as above.
    let n = unsafe {
        libc::getxattr(
            c_target.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert_eq!(&value[..n as usize], b"pstorage");
    // RENAME_EXCHANGE swaps a file and a directory atomically.
    std::fs::create_dir(m.path("xdir")).unwrap();
    let (a, b) = (
        std::ffi::CString::new(target.to_str().unwrap()).unwrap(),
        std::ffi::CString::new(m.path("xdir").to_str().unwrap()).unwrap(),
    );
    // SAFETY: valid C paths; renameat2 has no libc wrapper here.
    let swapped = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(swapped, 0, "{}", std::io::Error::last_os_error());
    assert!(std::fs::metadata(&target).unwrap().is_dir());
    assert!(std::fs::metadata(m.path("xdir")).unwrap().is_file());
    assert_eq!(
        errno_of(std::fs::write(m.path(&"n".repeat(256)), b"x")),
        libc::ENAMETOOLONG
    );

    // Both names of an open file go while it is open: it stays usable, and
    // nothing is left behind once it is closed.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.path("two-names"))
        .unwrap();
    f.write_all_at(b"kept", 0).unwrap();
    std::fs::hard_link(m.path("two-names"), m.path("two-names-2")).unwrap();
    std::fs::remove_file(m.path("two-names")).unwrap();
    std::fs::remove_file(m.path("two-names-2")).unwrap();
    let mut buf = [0u8; 4];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"kept");
    let meta = f.metadata().unwrap();
    assert_eq!((meta.len(), meta.nlink()), (4, 0));
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cluster.cli(&["ls", "/.pstorage-mount-unlinked"]);
        if out.status.success() && out.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hidden names stay: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    m.unmount();
}

/// A stat right after a close sees what the closed handle wrote: the
/// release (asynchronous in FUSE) commits the size while a getattr waits
/// for it, instead of handing the kernel the MDS's older size (which
/// shrank the file in the kernel's eyes: 1 to 3 runs in 10 failed).
#[test]
fn a_stat_right_after_an_append_sees_it() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let mut m = Mount::start(&cluster, &[]);
    let script = format!(
        "set -e; cd '{}'; for i in $(seq 1 40); do printf a > f$i; echo b >> f$i; \
         s=$(stat -c %s f$i); [ \"$s\" = 3 ] || {{ echo \"f$i: $s bytes\"; exit 1; }}; done",
        m.mountpoint.display()
    );
    sh(&script);
    m.unmount();
}

#[test]
fn writes_drop_set_id_bits_and_capabilities() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let mut m = Mount::start(&cluster, &["-o", "allow_other"]);
    let f = m.path("suid");
    std::fs::write(&f, b"a").unwrap();
    run(Command::new("chmod").arg("6777").arg(&f));
    // Another user writes: set-user-id and (with group execute)
    // set-group-id go, as on Linux.
    run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg("sh")
        .arg("-c")
        .arg(format!("echo b >> '{}'", f.display())));
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o777);
    // A capability goes at the next write, root's too.
    let caps = m.path("caps");
    std::fs::write(&caps, b"a").unwrap();
    run(Command::new("setfattr")
        .args([
            "-n",
            "security.capability",
            "-v",
            "0x0100000200200000000000000000000000000000",
        ])
        .arg(&caps));
    run(Command::new("getfattr")
        .args(["-n", "security.capability"])
        .arg(&caps));
    sh(&format!("echo b >> '{}'", caps.display()));
    let out = Command::new("getfattr")
        .args(["-n", "security.capability"])
        .arg(&caps)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the capability survived a write");
    assert_eq!(std::fs::read(&caps).unwrap(), b"ab\n", "{}", m.log());
    m.unmount();
}

/// Bytes allocated on disk to chunk replicas (files under each chunk
/// server's `chunks` directory).
fn chunk_bytes_on_disk(cluster: &TestCluster) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    walk(&e.path())
                } else {
                    meta.blocks() * 512
                }
            })
            .sum()
    }
    cluster
        .cs_dirs
        .iter()
        .map(|d| walk(&d.join("chunks")))
        .sum()
}

#[test]
fn punching_a_hole_frees_space_on_every_replica() {
    // At the defaults: 256 MiB chunks, replicas 3:2.
    let cluster = TestCluster::start(ClusterOptions {
        chunk_size: pstorage_core::types::DEFAULT_CHUNK_SIZE,
        env: Vec::new(),
        ..ClusterOptions::default()
    });
    let mut m = Mount::start(&cluster, &[]);
    let file = m.path("disk.img");
    std::fs::write(&file, pattern(3, 48 << 20)).unwrap();
    run(Command::new("sync").arg(&file));
    let before = chunk_bytes_on_disk(&cluster);
    assert!(
        before >= 3 * (48 << 20),
        "{before} bytes for three replicas of 48 MiB"
    );
    // What a VM's discard becomes: punch 32 MiB out of the middle.
    run(Command::new("fallocate")
        .args(["--punch-hole", "--offset", "8MiB", "--length", "32MiB"])
        .arg(&file));
    run(Command::new("sync").arg(&file));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = chunk_bytes_on_disk(&cluster);
        // Each replica gives back nearly all of the 32 MiB.
        if before - after.min(before) >= 3 * (30 << 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{before} bytes before the punch, {after} after: the replicas kept the space"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let data = std::fs::read(&file).unwrap();
    let mut want = pattern(3, 48 << 20);
    want[8 << 20..40 << 20].fill(0);
    assert!(data == want, "the hole reads as zeros, the rest as written");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 48 << 20);
    m.unmount();
}

/// A tree as containers and VM image directories hold them: symbolic
/// links (relative, absolute, dangling, to a directory), hard links, a
/// FIFO, modes with set-id bits, other owners, old times with nanoseconds,
/// extended attributes.
fn make_posix_tree(root: &Path) {
    make_tree(root);
    sh(&format!(
        "set -e; cd '{}'; ln -s small.txt rel-link; ln -s /etc/hostname abs-link; \
         ln -s missing dangling; ln -s a/b dir-link; ln small.txt hard-a; \
         ln a/b/f3 a/hard-b; mkfifo pipe; chmod 4755 a/b/f1; chmod 2775 a/b; \
         chmod 1777 empty-dir; chown 1000:1000 a/b/f2; chown -h 7:8 rel-link; \
         touch -h -d '1999-12-31 23:59:59.5' rel-link; \
         touch -d '2001-02-03 04:05:06.123456789' a/big.bin; \
         setfattr -n user.kind -v tree a/b/f4",
        root.display()
    ));
}

#[test]
fn posix_trees_copy_through_cp_rsync_and_tar_unchanged() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let mut m = Mount::start(&cluster, &[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tree");
    make_posix_tree(&src);
    let same = |copy: &Path, how: &str| {
        // diff compares no FIFOs: it names each pair (and exits 1 for them,
        // ext4 to ext4 too); anything else it prints is a difference.
        let out = Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&src)
            .arg(copy)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let differences: Vec<&str> = text
            .lines()
            .filter(|l| !(l.starts_with("File ") && l.ends_with(" is a fifo")))
            .collect();
        assert!(
            differences.is_empty() && out.status.code() != Some(2),
            "{how}: diff -r --no-dereference: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // rsync's itemized dry run lists every difference of content,
        // kind, link target, mode, owner, group, time, hard link.
        let out = run(Command::new("rsync")
            .args(["-n", "-a", "-H", "-X", "-i", "--checksum"])
            .arg(format!("{}/", src.display()))
            .arg(format!("{}/", copy.display())));
        let changes = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            changes.trim().is_empty(),
            "{how}: rsync sees differences:\n{changes}"
        );
    };
    run(Command::new("cp").arg("-a").arg(&src).arg(m.path("cp")));
    same(&m.path("cp"), "cp -a");
    run(Command::new("rsync")
        .args(["-a", "-H", "-X"])
        .arg(format!("{}/", src.display()))
        .arg(m.path("rsync")));
    same(&m.path("rsync"), "rsync -aHX");
    std::fs::create_dir(m.path("tar")).unwrap();
    sh(&format!(
        "set -e; tar -C '{}' --xattrs -cf - . | tar -C '{}' --xattrs --same-owner -xpf -",
        src.display(),
        m.path("tar").display()
    ));
    same(&m.path("tar"), "tar");
    // And back out of the mount.
    let back = work.path().join("back");
    run(Command::new("cp").arg("-a").arg(m.path("cp")).arg(&back));
    same(&back, "cp -a out of the mount");
    let hard = std::fs::metadata(m.path("cp/hard-a")).unwrap();
    assert_eq!(hard.nlink(), 2);
    assert_eq!(
        hard.ino(),
        std::fs::metadata(m.path("cp/small.txt")).unwrap().ino()
    );
    m.unmount();
}

#[test]
fn fio_verify_jobs_through_the_mount() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let m = Mount::start(&cluster, &[]);
    let file = m.path("fio.dat");
    // Direct I/O with libaio, queue depth 16 (the mount announces async
    // direct I/O), random 4 KiB writes verified with crc32c.
    run(Command::new("fio")
        .args([
            "--name=direct",
            "--ioengine=libaio",
            "--direct=1",
            "--iodepth=16",
        ])
        .args(["--rw=randwrite", "--bs=4k", "--size=16M", "--verify=crc32c"])
        .args(["--do_verify=1", "--verify_fatal=1", "--randrepeat=1"])
        .arg("--verify_state_save=0")
        .arg(format!("--filename={}", file.display())));
    // Buffered (page cache) mixed sizes, verified.
    run(Command::new("fio")
        .args(["--name=buffered", "--ioengine=psync", "--rw=randwrite"])
        .args([
            "--bsrange=4k-256k",
            "--size=24M",
            "--verify=md5",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ])
        .arg(format!("--filename={}", m.path("fio2.dat").display())));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 16 << 20);
}

#[test]
fn qemu_img_creates_and_converts_a_qcow2_on_the_mount() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let m = Mount::start(&cluster, &[]);
    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("disk.raw");
    // A sparse-ish image: data at the start, in the middle and at the end.
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&pattern(1, 3 << 20), 0).unwrap();
    f.write_all_at(&pattern(2, 1 << 20), 30 << 20).unwrap();
    f.write_all_at(&pattern(3, 4096), (64 << 20) - 4096)
        .unwrap();
    drop(f);
    let qcow = m.path("vm/disk.qcow2");
    std::fs::create_dir(m.path("vm")).unwrap();
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2"])
        .arg(m.path("vm/blank.qcow2"))
        .arg("1G"));
    run(Command::new("qemu-img")
        .args(["check"])
        .arg(m.path("vm/blank.qcow2")));
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow));
    run(Command::new("qemu-img").arg("check").arg(&qcow));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&raw)
        .arg(&qcow));
    // And back out of the mount.
    let back = work.path().join("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&qcow)
        .arg(&back));
    run(Command::new("cmp").arg(&raw).arg(&back));
}

#[test]
fn leases_keep_other_clients_out_and_the_page_cache_fresh() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let m = Mount::start(&cluster, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = {
        let _g = rt.enter();
        cluster.client()
    };

    // Written and read through the mount: the pages are cached now.
    let v1 = pattern(1, 300_000);
    std::fs::write(m.path("shared.bin"), &v1).unwrap();
    assert!(std::fs::read(m.path("shared.bin")).unwrap() == v1);

    // While the mount has it open for writing, another client is refused.
    let held = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("shared.bin"))
        .unwrap();
    let e = rt
        .block_on(client.open("/shared.bin", LeaseMode::Read, OpenFlags::default()))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    drop(held);

    // The release reaches the mount asynchronously; wait until the lease is
    // free, then change the file from the other client.
    // Same size: a size change alone makes the kernel drop cached pages; the
    // lease rule must do it when only the contents changed.
    let v2 = pattern(2, 300_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    let file = loop {
        match rt.block_on(client.open("/shared.bin", LeaseMode::Write, OpenFlags::default())) {
            Ok(f) => break f,
            Err(e) if e.kind() == ErrorKind::Busy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("open by the other client: {e}"),
        }
    };
    rt.block_on(async {
        file.write_at(0, &v2).await.unwrap();
    });

    // While the other client holds the write lease, the mount is refused
    // with EBUSY (not a hang, not EIO).
    assert_eq!(
        errno_of(std::fs::File::open(m.path("shared.bin"))),
        libc::EBUSY
    );
    rt.block_on(file.close()).unwrap();

    // A new open acquires a fresh lease and must not serve the old pages.
    let got = std::fs::read(m.path("shared.bin")).unwrap();
    assert_eq!(got.len(), v2.len());
    assert!(
        got == v2,
        "the mount served stale data after another client wrote"
    );
}

#[test]
fn read_cache_serves_hot_blocks_and_sees_writes() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let work = tempfile::tempdir().unwrap();
    let cache_file = work.path().join("ssd.cache");
    // direct_io: every read reaches the mount (no kernel page cache in
    // front), so the local cache is what serves repeated reads.
    let mut m = Mount::start(
        &cluster,
        &[
            "-C",
            cache_file.to_str().unwrap(),
            "-R",
            "4M",
            "-o",
            "direct_io",
        ],
    );
    let block = 64 << 10;
    let data = pattern(5, 2 << 20);
    std::fs::write(m.path("hot.bin"), &data).unwrap();
    let f = std::fs::File::open(m.path("hot.bin")).unwrap();
    // Non-sequential order, three rounds: admitted after two, served on the
    // third; every byte checked every time.
    let order = [7usize, 2, 19, 11, 0, 25, 4];
    let mut buf = vec![0u8; block];
    for _round in 0..3 {
        for &b in &order {
            f.read_exact_at(&mut buf, (b * block) as u64).unwrap();
            assert!(buf == data[b * block..(b + 1) * block], "block {b}");
        }
    }
    // A write through the mount invalidates what it touches.
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("hot.bin"))
        .unwrap();
    let new = pattern(6, block);
    w.write_all_at(&new, (7 * block) as u64).unwrap();
    for _ in 0..3 {
        f.read_exact_at(&mut buf, (7 * block) as u64).unwrap();
        assert!(buf == new, "stale block served after a write");
        f.read_exact_at(&mut buf, (2 * block) as u64).unwrap();
        assert!(buf == data[2 * block..3 * block]);
    }
    drop(w);
    drop(f);
    m.unmount();
    let log = m.log();
    let stats = log
        .lines()
        .find(|l| l.contains("read cache: CacheStats"))
        .unwrap_or_else(|| panic!("no cache stats in the log: {log}"));
    let field = |name: &str| -> u64 {
        let rest = &stats[stats.find(&format!("{name}: ")).unwrap() + name.len() + 2..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("hits") >= order.len() as u64, "{stats}");
    assert!(field("admitted") >= order.len() as u64, "{stats}");
    assert!(field("invalidated") >= 1, "{stats}");
    assert_eq!(field("corrupt"), 0, "{stats}");
}

/// The daemon's way out besides `fusermount3 -u`: SIGTERM unmounts and the
/// daemon exits; SIGINT does the same in the foreground. A mount that fails
/// once daemonized (conflicting kernel options) exits 1 with the daemon's
/// reason on stderr.
#[test]
fn signals_unmount_and_a_failed_mount_exits_1() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let m = Mount::start_daemon(&cluster);
    std::fs::write(m.path("kept"), b"kept").unwrap();
    let out = Command::new(bin_dir().join("pstorage-mount"))
        .arg("--conf-dir")
        .arg(&cluster.conf_root)
        .args(["-c", &cluster.name, "-o", "ro,rw"])
        .arg(&m.mountpoint)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("pstorage-mount: cannot mount at") && stderr.contains("Conflicting"),
        "{stderr}"
    );
    // Said once, by the waiting parent: the daemon child that failed does not
    // also write to the caller's stderr (the two interleaved in CI).
    assert_eq!(stderr.matches("cannot mount at").count(), 1, "{stderr}");
    assert!(is_mounted(&m.mountpoint), "the first mount is untouched");

    let pid = m.daemon_pid.unwrap();
    // SAFETY: our own daemon, by pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "still running: {}", m.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&m.mountpoint), "{}", m.log());
    assert!(m.log().contains("signal: unmounting"), "{}", m.log());

    let mut f = Mount::start(&cluster, &[]);
    assert_eq!(std::fs::read(f.path("kept")).unwrap(), b"kept");
    let pid = f.child.as_ref().unwrap().id() as i32;
    // SAFETY: our own child, by pid.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = f.child.as_mut().unwrap().wait().unwrap();
    assert!(status.success(), "{status}: {}", f.log());
    assert!(!is_mounted(&f.mountpoint), "{}", f.log());
}

/// Runs `tool` with `args` and asserts it exists (scripts/test.d/fuse.sh
/// installs it).
fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: scripts/test.d/fuse.sh installs it (cargo install {name})"
    );
    Command::new(name)
}

#[test]
#[ignore = "needs fsx (cargo install fsx): run by scripts/test.d/fuse.sh"]
fn fsx_exercises_the_mount() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let m = Mount::start(&cluster, &[]);
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("fsx.toml");
    // Every operation fsx has: pread/pwrite, mmap reads and writes, msync
    // invalidation, truncate, fsync/fdatasync, posix_fallocate, hole
    // punching, sendfile, fadvise, copy_file_range, close/reopen. The file
    // grows to 4 MiB: 4 chunks of the test cluster.
    std::fs::write(
        &conf,
        "flen = 4194304\n[opsize]\nmax = 131072\n[weights]\nclose_open = 1\nread = 10\n\
         write = 10\nmapread = 5\nmapwrite = 5\ninvalidate = 1\ntruncate = 2\nfsync = 1\n\
         fdatasync = 1\nposix_fallocate = 1\npunch_hole = 1\nsendfile = 1\nposix_fadvise = 1\n\
         copy_file_range = 1\n",
    )
    .unwrap();
    let out = tool("fsx")
        .arg("-f")
        .arg(&conf)
        .args(["-N", "20000", "-S", "20260101"])
        .arg("-P")
        .arg(work.path())
        .arg(m.path("fsx.dat"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("All operations completed A-OK"),
        "fsx failed: {text}\nmount log: {}",
        m.log()
    );
}

/// pjdfstest cases that fail on pstorage-mount, each with the reason: none
/// (2026-12-06: 382 passed, 16 skipped, 0 failed of 398). The bound the
/// project set is 25 (MooseFS's mount fails 49 on this machine, a
/// passthrough FUSE file system over ext4 about 31). The 16 skipped need a
/// read-only remount (`erofs_*`), a second file system (`exdev_*`) or a
/// configured link limit (`link_count_max`).
const PJDFSTEST_KNOWN_FAILURES: &[(&str, &str)] = &[];

/// The most pjdfstest failures allowed.
const PJDFSTEST_MAX_FAILURES: usize = 25;

#[test]
#[ignore = "needs pjdfstest (cargo install pjdfstest): run by scripts/test.d/fuse.sh"]
fn pjdfstest_every_group() {
    let cluster = TestCluster::start(ClusterOptions::default());
    // pjdfstest switches to other users: they must reach the mount.
    let m = Mount::start(&cluster, &["-o", "allow_other"]);
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("pjdfstest.toml");
    // Dummy users that exist on Debian (pjdfstest's default "tests" does
    // not). Every feature this file system has; chflags and NFSv4 ACLs are
    // BSD's and not run.
    std::fs::write(
        &conf,
        "[features]\nposix_fallocate = {}\nrename_ctime = {}\nutime_now = {}\nutimensat = {}\n\
         [settings]\nnaptime = 0.01\nallow_remount = false\n\
         [dummy_auth]\nentries = [[\"nobody\", \"nogroup\"], [\"daemon\", \"daemon\"]]\n",
    )
    .unwrap();
    std::fs::create_dir(m.path("pjd")).unwrap();
    let out = tool("pjdfstest")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(m.path("pjd"))
        .env("RUST_BACKTRACE", "0")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (mut passed, mut known, mut unexpected) = (0, Vec::new(), Vec::new());
    let mut skipped = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(result)) = (words.next(), words.last()) else {
            continue;
        };
        if !name.contains("::") {
            continue;
        }
        match result {
            "ok" => passed += 1,
            "skipped" | "SKIPPED" => skipped.push(line.to_string()),
            "FAILED" => match PJDFSTEST_KNOWN_FAILURES.iter().find(|(n, _)| *n == name) {
                Some((_, why)) => known.push(format!("{name} ({why})")),
                None => unexpected.push(name.to_string()),
            },
            _ => {}
        }
    }
    eprintln!(
        "pjdfstest: {passed} passed, {} skipped, {} failed (known):\n  {}\nskipped:\n  {}",
        skipped.len(),
        known.len(),
        known.join("\n  "),
        skipped.join("\n  ")
    );
    assert!(
        unexpected.is_empty(),
        "pjdfstest cases failed that are not known failures: {unexpected:?}\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        known.len() <= PJDFSTEST_MAX_FAILURES,
        "{} pjdfstest failures, at most {PJDFSTEST_MAX_FAILURES} are allowed",
        known.len()
    );
    assert!(
        passed >= 380,
        "only {passed} pjdfstest cases passed:\n{text}"
    );
}

/// A Python program that takes one lock on a path and holds it until it
/// is killed (or its stdin closes). `how`: `flock-ex`, `flock-sh` (on a
/// read-only descriptor), `lockf-sh` (fcntl F_RDLCK of the whole file on a
/// read-only descriptor), `posix-wr:START:LEN` and `ofd-wr:START:LEN` (on a
/// read-write descriptor).
const LOCK_HOLDER: &str = r#"
import fcntl, os, struct, sys
path, how = sys.argv[1], sys.argv[2]
kind = how.split(":")[0]
if kind in ("flock-ex", "flock-sh", "lockf-sh"):
    fd = os.open(path, os.O_RDONLY)
else:
    fd = os.open(path, os.O_RDWR)
if kind == "flock-ex":
    fcntl.flock(fd, fcntl.LOCK_EX)
elif kind == "flock-sh":
    fcntl.flock(fd, fcntl.LOCK_SH)
elif kind == "lockf-sh":
    fcntl.lockf(fd, fcntl.LOCK_SH)
else:
    _, start, length = how.split(":")
    cmd = fcntl.F_SETLK if kind == "posix-wr" else fcntl.F_OFD_SETLK
    fcntl.fcntl(fd, cmd, struct.pack("hhqqixxxx", fcntl.F_WRLCK, 0, int(start), int(length), 0))
print("locked", flush=True)
sys.stdin.read()
"#;

/// One lock request on a fresh descriptor, printed as `ok`, `EAGAIN` or,
/// for a test (`getlk`), `TYPE START LEN PID` of the lock in the way
/// (`unlocked` if none). argv: path, mode (`r`/`rw`), op (`setlk`,
/// `ofd-setlk`, `getlk`, `ofd-getlk`), type (`rd`/`wr`), start, len.
const LOCK_TRY: &str = r#"
import errno, fcntl, os, struct, sys
path, mode, op, typ, start, length = sys.argv[1:7]
fd = os.open(path, os.O_RDONLY if mode == "r" else os.O_RDWR)
t = fcntl.F_RDLCK if typ == "rd" else fcntl.F_WRLCK
ofd = op.startswith("ofd-")
arg = struct.pack("hhqqixxxx", t, 0, int(start), int(length), 0)
if op.endswith("getlk"):
    got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK if ofd else fcntl.F_GETLK, arg)
    t, _, s, l, pid = struct.unpack("hhqqixxxx", got)
    names = {fcntl.F_RDLCK: "rd", fcntl.F_WRLCK: "wr", fcntl.F_UNLCK: "unlocked"}
    print("unlocked" if t == fcntl.F_UNLCK else f"{names[t]} {s} {l} {pid}")
else:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK if ofd else fcntl.F_SETLK, arg)
        print("ok")
    except OSError as e:
        print(errno.errorcode[e.errno])
"#;

/// A lock holder process; killed with SIGKILL on drop.
struct Holder(Child);

impl Holder {
    fn start(path: &Path, how: &str) -> Holder {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args(["-c", LOCK_HOLDER])
            .arg(path)
            .arg(how)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked", "{how} on {}", path.display());
        Holder(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// kill -9, and waits for the process to be gone.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn try_lock(path: &Path, mode: &str, op: &str, typ: &str, start: u64, len: u64) -> String {
    let out = run(Command::new("python3")
        .args(["-c", LOCK_TRY])
        .arg(path)
        .args([mode, op, typ, &start.to_string(), &len.to_string()]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `flock -n [-s] PATH true`: whether the lock was free.
fn flock_free(path: &Path, shared: bool) -> bool {
    let mut cmd = Command::new("flock");
    cmd.arg("-n");
    if shared {
        cmd.arg("-s");
    }
    let status = cmd.arg(path).arg("true").status().unwrap();
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("flock -n {}: {other:?}", path.display()),
    }
}

/// Waits for `child` to exit (at most `secs`) and returns its status.
fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} still running after {secs} s", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Locks hold across two mounts of one cluster (two hosts) and between
/// processes of one mount, go with their descriptor, their process or
/// their client, and a waiter is woken by the release or by a signal.
#[test]
fn locks_hold_across_mounts_and_go_with_their_holder() {
    let cluster = TestCluster::start(ClusterOptions::default());
    let a = Mount::start(&cluster, &[]);
    let b = Mount::start(&cluster, &[]);
    std::fs::write(a.path("f"), b"shared file").unwrap();
    let (fa, fb) = (a.path("f"), b.path("f"));

    // flock: an exclusive lock on host A keeps out host B and other
    // descriptions on A, shared or exclusive.
    let holder = Holder::start(&fa, "flock-ex");
    assert!(!flock_free(&fb, false), "B took a lock A holds");
    assert!(
        !flock_free(&fb, true),
        "B took a shared lock under A's exclusive one"
    );
    assert!(!flock_free(&fa, false), "another description on A took it");
    // A blocking waiter on B, and one killed while it waits (kill -9 must
    // end it: the mount answers EINTR once the waiter has a signal).
    let mut waiter = Command::new("flock")
        .arg(&fb)
        .args(["-c", "echo got"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut doomed = Command::new("flock").arg(&fb).arg("true").spawn().unwrap();
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the waiter did not wait"
    );
    let _ = doomed.kill();
    wait_exit(&mut doomed, 10);
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the waiter did not wait"
    );
    // The holder dies: its lock goes with its file description.
    holder.kill();
    assert!(wait_exit(&mut waiter, 30).success());
    assert!(flock_free(&fb, false));
    // Shared locks share, across hosts too.
    let s1 = Holder::start(&fa, "flock-sh");
    let s2 = Holder::start(&fb, "flock-sh");
    assert!(!flock_free(&fa, false));
    assert!(flock_free(&fb, true));
    drop((s1, s2));

    // fcntl record locks across hosts: both read the file (read leases);
    // B's F_GETLK sees A's read lock and its process, a read lock is
    // granted beside it.
    let reader = Holder::start(&fa, "lockf-sh");
    assert_eq!(
        try_lock(&fb, "r", "getlk", "wr", 0, 0),
        format!("rd 0 0 {}", reader.pid())
    );
    assert_eq!(try_lock(&fb, "r", "setlk", "rd", 100, 10), "ok");
    // A process on A opens it for writing: A's read lease becomes a write
    // lease in place and the reader's lock survives it.
    assert_eq!(try_lock(&fa, "rw", "setlk", "wr", 0, 1), "EAGAIN");
    assert_eq!(try_lock(&fa, "rw", "ofd-setlk", "wr", 0, 1), "EAGAIN");
    reader.kill();
    assert_eq!(try_lock(&fa, "rw", "setlk", "wr", 0, 1), "ok");

    // Processes of one mount: POSIX locks by range, OFD locks by
    // description; F_GETLK reports the holder; a close drops a process's
    // POSIX locks.
    let writer = Holder::start(&fa, "posix-wr:0:10");
    assert_eq!(try_lock(&fa, "rw", "setlk", "wr", 5, 1), "EAGAIN");
    assert_eq!(try_lock(&fa, "rw", "setlk", "rd", 9, 5), "EAGAIN");
    assert_eq!(try_lock(&fa, "rw", "setlk", "wr", 10, 10), "ok");
    assert_eq!(
        try_lock(&fa, "rw", "getlk", "rd", 0, 0),
        format!("wr 0 10 {}", writer.pid())
    );
    let ofd = Holder::start(&fa, "ofd-wr:20:10");
    assert_eq!(try_lock(&fa, "rw", "ofd-setlk", "wr", 25, 1), "EAGAIN");
    assert_eq!(try_lock(&fa, "rw", "setlk", "rd", 29, 100), "EAGAIN");
    writer.kill();
    ofd.kill();
    assert_eq!(try_lock(&fa, "rw", "setlk", "wr", 0, 0), "ok");

    // qemu locks its images with OFD locks: a second qemu on the same host
    // is refused the image, -U (force share) reads it; on another host the
    // image is busy (the running VM's write lease).
    run(Command::new("qemu-img")
        .args(["create", "-f", "qcow2"])
        .arg(a.path("vm.qcow2"))
        .arg("64M"));
    let mut vm = Command::new("qemu-io")
        .arg(a.path("vm.qcow2"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::{BufRead, Write};
        let stdin = vm.stdin.as_mut().unwrap();
        writeln!(stdin, "write -P 7 0 64k").unwrap();
        let mut out = std::io::BufReader::new(vm.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("wrote") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "qemu-io ended");
        }
    }
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(a.path("vm.qcow2"))
        .output()
        .unwrap();
    assert!(
        !info.status.success(),
        "a second qemu opened a running VM's image"
    );
    let err = String::from_utf8_lossy(&info.stderr);
    assert!(err.contains("lock"), "{err}");
    run(Command::new("qemu-img")
        .args(["info", "-U"])
        .arg(a.path("vm.qcow2")));
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(b.path("vm.qcow2"))
        .output()
        .unwrap();
    assert!(
        !info.status.success(),
        "another host opened a running VM's image"
    );
    drop(vm.stdin.take());
    assert!(wait_exit(&mut vm, 30).success());

    // A client that dies holding a lock (its mount killed with the lock
    // holder inside): the lock goes when its lease expires (30 s by
    // default), and a waiter on the other host gets it then.
    let dying = Holder::start(&fb, "flock-ex");
    assert!(!flock_free(&fa, false));
    let mut b = b;
    if let Some(c) = b.child.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut waiter = Command::new("flock")
        .args(["-w", "90"])
        .arg(&fa)
        .arg("true")
        .spawn()
        .unwrap();
    assert!(
        wait_exit(&mut waiter, 120).success(),
        "the dead client's lock stayed"
    );
    drop(dying);
}
