"""The POSIX namespace of pstorage.Cluster: links, special files, modes,
owners, times with nanoseconds, extended attributes, rename flags."""

from __future__ import annotations

import os
import stat

import pytest

import pstorage


def test_symlinks_and_hard_links(cluster: pstorage.Cluster, tdir: str) -> None:
    with cluster.open(f"{tdir}/f", "wb") as f:
        f.write(b"data")
    cluster.symlink("f", f"{tdir}/l")
    assert cluster.readlink(f"{tdir}/l") == "f"
    s = cluster.lstat(f"{tdir}/l")
    assert s.kind == "symlink" and stat.S_ISLNK(s.mode) and s.size == 1
    with pytest.raises(pstorage.InvalidArgument):
        cluster.readlink(f"{tdir}/f")
    with pytest.raises(FileExistsError):
        cluster.symlink("x", f"{tdir}/l")
    with pytest.raises(FileNotFoundError):
        cluster.symlink("", f"{tdir}/empty")
    kinds = {e.name: (e.is_symlink(), e.is_file()) for e in cluster.scandir(tdir)}
    assert kinds == {"f": (False, True), "l": (True, False)}
    cluster.link(f"{tdir}/f", f"{tdir}/g")
    a, b = cluster.stat(f"{tdir}/f"), cluster.stat(f"{tdir}/g")
    assert a.ino == b.ino and a.nlink == b.nlink == 2
    with pytest.raises(pstorage.PermissionDenied):
        cluster.link(tdir, f"{tdir}/dirlink")
    cluster.remove(f"{tdir}/f")
    assert cluster.stat(f"{tdir}/g").nlink == 1
    with cluster.open(f"{tdir}/g", "rb") as f:
        assert f.read() == b"data"


def test_special_files(cluster: pstorage.Cluster, tdir: str) -> None:
    cluster.mkfifo(f"{tdir}/p", 0o640)
    s = cluster.stat(f"{tdir}/p")
    assert s.kind == "fifo" and stat.S_ISFIFO(s.mode) and stat.S_IMODE(s.mode) == 0o640
    assert (s.uid, s.gid) == (os.geteuid(), os.getegid())
    cluster.mknod(f"{tdir}/c", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    c = cluster.stat(f"{tdir}/c")
    assert c.kind == "chardev" and c.rdev == os.makedev(1, 3)
    cluster.mknod(f"{tdir}/s", stat.S_IFSOCK | 0o600)
    assert cluster.stat(f"{tdir}/s").kind == "socket"
    with pytest.raises(pstorage.InvalidArgument):
        cluster.mknod(f"{tdir}/d", stat.S_IFDIR | 0o755)
    with pytest.raises(pstorage.InvalidArgument):
        cluster.open(f"{tdir}/p", "rb")


def test_modes_owners_and_times(cluster: pstorage.Cluster, tdir: str) -> None:
    d = cluster.mkdir_mode(f"{tdir}/shared", 0o2775)
    assert stat.S_IMODE(d.mode) == 0o2775 and d.nlink == 2
    cluster.chown(f"{tdir}/shared", 1000, 50)
    with cluster.open(f"{tdir}/shared/f", "wb") as f:
        f.write(b"x")
    assert cluster.stat(f"{tdir}/shared/f").gid == 50, "a set-group-id directory's group"
    cluster.chmod(f"{tdir}/shared/f", 0o4755)
    cluster.chown(f"{tdir}/shared/f", 7, -1)
    s = cluster.stat(f"{tdir}/shared/f")
    assert (s.uid, s.gid, stat.S_IMODE(s.mode)) == (7, 50, 0o755), "chown clears set-user-id"
    cluster.utime(f"{tdir}/shared/f", ns=(-5_000_000_001, 1_700_000_000_123_456_789))
    s = cluster.stat(f"{tdir}/shared/f")
    assert (s.atime_ns, s.mtime_ns) == (-5_000_000_001, 1_700_000_000_123_456_789)
    cluster.utime(f"{tdir}/shared/f")
    assert cluster.stat(f"{tdir}/shared/f").mtime_ns > 1_700_000_000_123_456_789
    with pytest.raises(pstorage.InvalidArgument):
        cluster.chmod(f"{tdir}/shared/f", 0o100644)


def test_extended_attributes(cluster: pstorage.Cluster, tdir: str) -> None:
    p = f"{tdir}/x"
    with cluster.open(p, "wb"):
        pass
    cluster.setxattr(p, "user.color", b"blue", os.XATTR_CREATE)
    with pytest.raises(FileExistsError):
        cluster.setxattr(p, "user.color", b"red", os.XATTR_CREATE)
    with pytest.raises(pstorage.NoData):
        cluster.setxattr(p, "user.none", b"x", os.XATTR_REPLACE)
    with pytest.raises(pstorage.NotSupported):
        cluster.setxattr(p, "system.posix_acl_access", b"x")
    with pytest.raises(pstorage.NoSpace):
        cluster.setxattr(p, "user.big", bytes(64 * 1024 + 1))
    cluster.setxattr(p, "trusted.t", b"")
    assert cluster.getxattr(p, "user.color") == b"blue"
    assert cluster.listxattr(p) == ["trusted.t", "user.color"]
    cluster.removexattr(p, "user.color")
    with pytest.raises(pstorage.NoData) as e:
        cluster.getxattr(p, "user.color")
    assert e.value.errno == 61  # ENODATA
    assert cluster.listxattr(p) == ["trusted.t"]


def test_rename_flags(cluster: pstorage.Cluster, tdir: str) -> None:
    cluster.mkdir(f"{tdir}/d")
    cluster.mkfifo(f"{tdir}/p")
    ino_d, ino_p = cluster.stat(f"{tdir}/d").ino, cluster.stat(f"{tdir}/p").ino
    cluster.rename2(f"{tdir}/d", f"{tdir}/p", exchange=True)
    assert (cluster.stat(f"{tdir}/d").ino, cluster.stat(f"{tdir}/p").ino) == (ino_p, ino_d)
    with pytest.raises(FileExistsError):
        cluster.rename2(f"{tdir}/d", f"{tdir}/p", noreplace=True)
    with pytest.raises(FileNotFoundError):
        cluster.rename2(f"{tdir}/d", f"{tdir}/none", exchange=True)
    cluster.rename2(f"{tdir}/d", f"{tdir}/q", noreplace=True)
    assert cluster.stat(f"{tdir}/q").kind == "fifo"
