//! [`FsOps`] in-process against a real cluster on loopback
//! ([`LocalCluster`]: 1 MDS, 3 chunk servers, 256 MiB chunks, replicas 3:2).

use std::time::Duration;

use bytes::Bytes;
use pstorage_core::error::ErrorKind;
use pstorage_core::types::{CsStatus, InodeKind, Perms, StatChange, ROOT_INODE};
use pstorage_rpc::local::LocalCluster;

use super::ops::{time_of, DirEntry, FsConfig, FsOps, HIDDEN_DIR_NAME, STATFS_BLOCK_BYTES};

const ROOT: u64 = ROOT_INODE.0;

/// A fresh cluster and the file system over a client of it.
async fn setup() -> (LocalCluster, FsOps) {
    let cluster = LocalCluster::builder().start().await.unwrap();
    let ops = FsOps::new(cluster.client().unwrap(), FsConfig::default(), None)
        .await
        .unwrap();
    (cluster, ops)
}

/// `len` bytes that differ at every offset of a chunk boundary's
/// neighbourhood.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

/// The names `opendir` + `readdir` list in directory `ino`.
async fn list(ops: &FsOps, ino: u64) -> Vec<String> {
    let fh = ops.opendir(ino).await.unwrap();
    let names = ops
        .readdir(fh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    ops.releasedir(fh);
    names
}

/// Reads the whole of `len` bytes at `offset` through `fh`, in
/// kernel-sized requests.
async fn read_all(ops: &FsOps, fh: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let want = (len - out.len()).min(1 << 20) as u32;
        let got = ops.read(fh, offset + out.len() as u64, want).await.unwrap();
        assert!(
            !got.is_empty(),
            "short read at {}",
            offset + out.len() as u64
        );
        out.extend_from_slice(&got);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_write_read_back() {
    let (cluster, ops) = setup().await;
    let (attr, opened) = ops
        .create(
            ROOT,
            "f",
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            Perms::FILE,
        )
        .await
        .unwrap();
    assert_eq!((attr.kind, attr.size, attr.nlink), (InodeKind::File, 0, 1));
    assert!(!opened.keep_cache && !opened.direct_io, "{opened:?}");
    let data = pattern(1, 300_000);
    let n = ops
        .write(opened.fh, 0, Bytes::from(data.clone()), false)
        .await
        .unwrap();
    assert_eq!(n as usize, data.len());
    // The size this mount knows before the MDS does (nothing committed yet).
    assert_eq!(ops.getattr(attr.ino).await.unwrap().size, data.len() as u64);
    assert_eq!(read_all(&ops, opened.fh, 0, data.len()).await, data);
    ops.flush(opened.fh).unwrap();
    ops.fsync(opened.fh).await.unwrap();
    ops.release(opened.fh).await.unwrap();

    let looked = ops.lookup(ROOT, "f").await.unwrap();
    assert_eq!((looked.ino, looked.size), (attr.ino, data.len() as u64));
    assert_eq!(looked.blocks, (data.len() as u64).div_ceil(512));
    let ro = ops.open(attr.ino, libc::O_RDONLY).await.unwrap();
    assert!(!ro.keep_cache, "a fresh lease drops the page cache");
    assert_eq!(read_all(&ops, ro.fh, 1000, 5000).await, &data[1000..6000]);
    // Short at the end, empty past it.
    let tail = ops.read(ro.fh, data.len() as u64 - 10, 4096).await.unwrap();
    assert_eq!(&tail[..], &data[data.len() - 10..]);
    assert!(ops.read(ro.fh, 1 << 30, 4096).await.unwrap().is_empty());
    ops.release(ro.fh).await.unwrap();
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_crosses_a_chunk_boundary() {
    let (cluster, ops) = setup().await;
    let (attr, opened) = ops
        .create(ROOT, "big", libc::O_RDWR, Perms::FILE)
        .await
        .unwrap();
    let boundary: u64 = 256 << 20;
    let start = boundary - 100_000;
    let data = pattern(2, 300_000);
    ops.write(opened.fh, start, Bytes::from(data.clone()), false)
        .await
        .unwrap();
    ops.release(opened.fh).await.unwrap();

    let st = ops.getattr(attr.ino).await.unwrap();
    assert_eq!(st.size, start + data.len() as u64);
    let ro = ops.open(attr.ino, libc::O_RDONLY).await.unwrap();
    // One request across the boundary, as the kernel would send it.
    let got = ops.read(ro.fh, start, data.len() as u32).await.unwrap();
    assert_eq!(&got[..], &data[..]);
    // The hole before the data reads as zeros.
    let hole = ops.read(ro.fh, start - 4096, 4096).await.unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    ops.release(ro.fh).await.unwrap();
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setattr_truncates_and_extends() {
    let (cluster, ops) = setup().await;
    let (attr, opened) = ops
        .create(ROOT, "t", libc::O_RDWR, Perms::FILE)
        .await
        .unwrap();
    let data = pattern(3, 10_000);
    ops.write(opened.fh, 0, Bytes::from(data.clone()), false)
        .await
        .unwrap();
    // Through the open handle.
    let st = ops
        .setattr(attr.ino, Some(opened.fh), Some(100), StatChange::default())
        .await
        .unwrap();
    assert_eq!(st.size, 100);
    let got = ops.read(opened.fh, 0, 4096).await.unwrap();
    assert_eq!(&got[..], &data[..100]);
    ops.release(opened.fh).await.unwrap();

    // Without a handle: a temporary write lease, released at once.
    let st = ops
        .setattr(attr.ino, None, Some(4096), StatChange::default())
        .await
        .unwrap();
    assert_eq!(st.size, 4096);
    assert_eq!(ops.lookup(ROOT, "t").await.unwrap().size, 4096);
    let ro = ops.open(attr.ino, libc::O_RDONLY).await.unwrap();
    let got = ops.read(ro.fh, 0, 8192).await.unwrap();
    assert_eq!(got.len(), 4096);
    assert_eq!(&got[..100], &data[..100]);
    assert!(got[100..].iter().all(|&b| b == 0), "extended with zeros");
    ops.release(ro.fh).await.unwrap();

    // No size: only the attributes back (mode, owner, times are ignored).
    assert_eq!(
        ops.setattr(attr.ino, None, None, StatChange::default())
            .await
            .unwrap()
            .size,
        4096
    );
    let dir = ops.mkdir(ROOT, "d", Perms::DIR).await.unwrap();
    let e = ops
        .setattr(dir.ino, None, Some(0), StatChange::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::IsADirectory, "{e}");
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_readdir_rename_unlink_rmdir() {
    let (cluster, ops) = setup().await;
    let dir = ops.mkdir(ROOT, "d", Perms::DIR).await.unwrap();
    assert_eq!((dir.kind, dir.perm, dir.nlink), (InodeKind::Dir, 0o755, 2));
    let (a, opened) = ops
        .create(dir.ino, "a", libc::O_WRONLY, Perms::FILE)
        .await
        .unwrap();
    ops.release(opened.fh).await.unwrap();
    let sub = ops.mkdir(dir.ino, "sub", Perms::DIR).await.unwrap();

    let fh = ops.opendir(dir.ino).await.unwrap();
    let mut entries = ops.readdir(fh).unwrap().to_vec();
    ops.releasedir(fh);
    assert_eq!(
        entries[..2],
        [
            DirEntry {
                ino: dir.ino,
                kind: InodeKind::Dir,
                name: ".".into()
            },
            DirEntry {
                ino: ROOT,
                kind: InodeKind::Dir,
                name: "..".into()
            },
        ]
    );
    entries.drain(..2);
    entries.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        entries,
        [
            DirEntry {
                ino: a.ino,
                kind: InodeKind::File,
                name: "a".into()
            },
            DirEntry {
                ino: sub.ino,
                kind: InodeKind::Dir,
                name: "sub".into()
            },
        ]
    );
    // The hidden directory is not listed at the root.
    assert_eq!(list(&ops, ROOT).await, [".", "..", "d"]);

    ops.rename(dir.ino, "a", dir.ino, "b", 0).await.unwrap();
    let e = ops.lookup(dir.ino, "a").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(ops.lookup(dir.ino, "b").await.unwrap().ino, a.ino);
    // Into another directory, under the same name.
    ops.rename(dir.ino, "b", ROOT, "b", 0).await.unwrap();
    assert_eq!(ops.lookup(ROOT, "b").await.unwrap().ino, a.ino);
    assert_eq!(list(&ops, dir.ino).await, [".", "..", "sub"]);

    let e = ops.rmdir(ROOT, "d").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotEmpty, "{e}");
    assert_eq!(e.kind().errno(), libc::ENOTEMPTY);
    ops.rmdir(dir.ino, "sub").await.unwrap();
    ops.rmdir(ROOT, "d").await.unwrap();
    ops.unlink(ROOT, "b").await.unwrap();
    for name in ["d", "b"] {
        let e = ops.lookup(ROOT, name).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{name}: {e}");
    }
    assert_eq!(list(&ops, ROOT).await, [".", ".."]);
    cluster.stop().await.unwrap();
}

/// The kernel drops a directory's attributes after each create in it and
/// asks again at its next path walk: the create brought them back, and
/// the mount answers with them for the attribute TTL (as the kernel's own
/// cache would), until a change of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_answers_the_next_getattr_of_its_directory() {
    let cluster = LocalCluster::builder().start().await.unwrap();
    // A TTL that no step of the test outlasts.
    let cfg = FsConfig {
        attr_ttl: Duration::from_secs(3600),
        ..FsConfig::default()
    };
    let ops = FsOps::new(cluster.client().unwrap(), cfg, None)
        .await
        .unwrap();
    let other = cluster.client().unwrap();
    let dir = ops.mkdir(ROOT, "d", Perms::DIR).await.unwrap();
    let (_, opened) = ops
        .create(dir.ino, "f", libc::O_WRONLY, Perms::FILE)
        .await
        .unwrap();
    ops.release(opened.fh).await.unwrap();
    let after_create = other.stat("/d").await.unwrap();
    // Another client changes the directory: the mount still answers with
    // the directory as the create left it.
    other.chmod("/d", 0o700).await.unwrap();
    let attr = ops.getattr(dir.ino).await.unwrap();
    assert_eq!(attr.perm, 0o755);
    assert_eq!(attr.mtime, time_of(after_create.mtime));
    assert_eq!(attr.ctime, time_of(after_create.ctime));
    // A change of the mount's own forgets it.
    ops.mkdir(dir.ino, "sub", Perms::DIR).await.unwrap();
    let attr = ops.getattr(dir.ino).await.unwrap();
    assert_eq!((attr.perm, attr.nlink), (0o700, 3));
    // So does a lookup of the directory, which read it anew.
    let (_, opened) = ops
        .create(dir.ino, "g", libc::O_WRONLY, Perms::FILE)
        .await
        .unwrap();
    ops.release(opened.fh).await.unwrap();
    other.chmod("/d", 0o750).await.unwrap();
    assert_eq!(ops.getattr(dir.ino).await.unwrap().perm, 0o700);
    assert_eq!(ops.lookup(ROOT, "d").await.unwrap().perm, 0o750);
    assert_eq!(ops.getattr(dir.ino).await.unwrap().perm, 0o750);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_their_kinds() {
    let (cluster, ops) = setup().await;
    let e = ops.lookup(ROOT, "missing").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(e.kind().errno(), libc::ENOENT);
    // The hidden directory does not exist for the mount's users.
    let e = ops.lookup(ROOT, HIDDEN_DIR_NAME).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = ops
        .mkdir(ROOT, HIDDEN_DIR_NAME, Perms::DIR)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");

    ops.mkdir(ROOT, "d", Perms::DIR).await.unwrap();
    let e = ops.mkdir(ROOT, "d", Perms::DIR).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(e.kind().errno(), libc::EEXIST);
    let (_, opened) = ops
        .create(ROOT, "f", libc::O_RDWR, Perms::FILE)
        .await
        .unwrap();
    // O_EXCL on a file this mount has open, and on one it has not.
    let e = ops
        .create(ROOT, "f", libc::O_EXCL, Perms::FILE)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    ops.release(opened.fh).await.unwrap();
    let e = ops
        .create(ROOT, "f", libc::O_EXCL, Perms::FILE)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = ops
        .mknod(ROOT, "f", pstorage_core::types::NodeSpec::File, Perms::FILE)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = ops
        .rename(ROOT, "d", ROOT, "f", libc::RENAME_NOREPLACE)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = ops
        .rename(ROOT, "d", ROOT, "f", libc::RENAME_WHITEOUT)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");

    let e = ops.rmdir(ROOT, "f").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotADirectory, "{e}");
    let e = ops.rmdir(ROOT, "missing").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = ops.unlink(ROOT, "missing").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // Handles this mount never gave out.
    let e = ops.read(999, 0, 10).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadHandle, "{e}");
    assert_eq!(e.kind().errno(), libc::EBADF);
    let e = ops.readdir(999).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadHandle, "{e}");
    // An inode the mount does not know.
    let e = ops.getattr(123_456).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");

    // A read-only handle cannot write, nor fallocate; unknown modes are
    // refused.
    let f = ops.lookup(ROOT, "f").await.unwrap();
    let ro = ops.open(f.ino, libc::O_RDONLY).await.unwrap();
    let e = ops
        .fallocate(ro.fh, 0, 4096, libc::FALLOC_FL_KEEP_SIZE)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadHandle, "{e}");
    ops.release(ro.fh).await.unwrap();
    let rw = ops.open(f.ino, libc::O_RDWR).await.unwrap();
    let e = ops
        .fallocate(rw.fh, 0, 4096, libc::FALLOC_FL_COLLAPSE_RANGE)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    ops.fallocate(rw.fh, 0, 8192, 0).await.unwrap();
    assert_eq!(ops.getattr(f.ino).await.unwrap().size, 8192);
    ops.release(rw.fh).await.unwrap();
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statfs_counts_the_space_and_the_files() {
    let (cluster, ops) = setup().await;
    let status = cluster.status().await.unwrap();
    let (total, free) = status
        .cs
        .iter()
        .filter(|cs| cs.status != CsStatus::Dropped)
        .fold((0, 0), |(t, f), cs| {
            (t + cs.space.total_bytes, f + cs.space.free_bytes)
        });
    let s = ops.statfs().await.unwrap();
    assert_eq!(s.block_size as u64, STATFS_BLOCK_BYTES);
    assert_eq!(s.fragment_size as u64, STATFS_BLOCK_BYTES);
    assert_eq!(s.name_max, 255);
    assert_eq!(s.files_free, u32::MAX as u64);
    assert_eq!(s.blocks, total / STATFS_BLOCK_BYTES);
    assert!(s.blocks > 0 && s.blocks_free <= s.blocks, "{s:?}");
    // Free space moves with the disks the chunk servers share: roughly.
    let free_blocks = free / STATFS_BLOCK_BYTES;
    assert!(s.blocks_free.abs_diff(free_blocks) < s.blocks / 10, "{s:?}");
    assert_eq!(s.blocks_available, s.blocks_free);
    // The root and the hidden directory.
    assert_eq!(s.files, status.files + status.dirs);
    let before = s.files;
    ops.mkdir(ROOT, "d", Perms::DIR).await.unwrap();
    let (_, opened) = ops
        .create(ROOT, "f", libc::O_RDWR, Perms::FILE)
        .await
        .unwrap();
    ops.release(opened.fh).await.unwrap();
    assert_eq!(ops.statfs().await.unwrap().files, before + 2);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_share_one_lease_and_an_unlinked_open_file_lives_on() {
    let (cluster, ops) = setup().await;
    let client = cluster.client().unwrap();
    let (attr, w) = ops
        .create(ROOT, "f", libc::O_WRONLY, Perms::FILE)
        .await
        .unwrap();
    ops.write(w.fh, 0, Bytes::from_static(b"hello"), false)
        .await
        .unwrap();
    ops.release(w.fh).await.unwrap();
    let r1 = ops.open(attr.ino, libc::O_RDONLY).await.unwrap();
    let r2 = ops.open(attr.ino, libc::O_RDONLY).await.unwrap();
    assert!(!r1.keep_cache, "a fresh read lease");
    assert!(r2.keep_cache, "the read lease was held all along");
    let rw = ops.open(attr.ino, libc::O_RDWR).await.unwrap();
    assert!(
        rw.keep_cache,
        "the upgrade keeps the lease in place: nobody else changed the file"
    );
    ops.write(rw.fh, 5, Bytes::from_static(b" world"), false)
        .await
        .unwrap();
    assert_eq!(&ops.read(r1.fh, 0, 100).await.unwrap()[..], b"hello world");

    // Unlinked while open: gone from the namespace, still readable.
    ops.unlink(ROOT, "f").await.unwrap();
    let e = ops.lookup(ROOT, "f").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(list(&ops, ROOT).await, [".", ".."]);
    let st = ops.getattr(attr.ino).await.unwrap();
    assert_eq!((st.nlink, st.size), (0, 11));
    assert_eq!(&ops.read(r2.fh, 6, 100).await.unwrap()[..], b"world");
    let hidden = format!("/{HIDDEN_DIR_NAME}");
    assert_eq!(client.readdir(&hidden).await.unwrap().len(), 1);
    for fh in [r1.fh, r2.fh, rw.fh] {
        ops.release(fh).await.unwrap();
    }
    // Removed at the last release.
    assert!(client.readdir(&hidden).await.unwrap().is_empty());
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_record_the_access_time_once_per_open_as_relatime_says() {
    let (cluster, ops) = setup().await;
    let (attr, opened) = ops
        .create(ROOT, "f", libc::O_RDWR, Perms::FILE)
        .await
        .unwrap();
    ops.write(opened.fh, 0, Bytes::from_static(b"hello"), false)
        .await
        .unwrap();
    ops.release(opened.fh).await.unwrap();
    // Both times far in the past: the next read is due an access time.
    let past = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let change =
        super::ops::posix::stat_change(None, None, None, Some(Some(past)), Some(Some(past)));
    let before = ops.setattr(attr.ino, None, None, change).await.unwrap();
    assert_eq!((before.atime, before.mtime), (past, past));
    // Opening and closing without reading records nothing.
    let o = ops.open(attr.ino, libc::O_RDONLY).await.unwrap();
    ops.release(o.fh).await.unwrap();
    assert_eq!(ops.getattr(attr.ino).await.unwrap().atime, past);
    // Reading: the access time moves at the close, not at each read.
    let o = ops.open(attr.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(read_all(&ops, o.fh, 0, 5).await, b"hello");
    assert_eq!(read_all(&ops, o.fh, 1, 4).await, b"ello");
    assert_eq!(ops.getattr(attr.ino).await.unwrap().atime, past);
    ops.release(o.fh).await.unwrap();
    let read = ops.getattr(attr.ino).await.unwrap();
    assert!(read.atime > past, "{read:?}");
    assert_eq!(read.mtime, past, "reading leaves the mtime");
    // Now after the mtime and fresh: the next read records nothing.
    let o = ops.open(attr.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(read_all(&ops, o.fh, 0, 5).await, b"hello");
    ops.release(o.fh).await.unwrap();
    assert_eq!(ops.getattr(attr.ino).await.unwrap().atime, read.atime);
    cluster.stop().await.unwrap();
}
