"""Namespace operations of pstorage.Cluster against a real cluster."""

from __future__ import annotations

import time

import pytest

import pstorage
from conftest import CHUNK_SERVERS, CHUNK_SIZE, LocalCluster


def test_mkdir_listdir_stat(cluster: pstorage.Cluster, tdir: str) -> None:
    cluster.mkdir(f"{tdir}/b")
    cluster.mkdir(f"{tdir}/a")
    with cluster.open(f"{tdir}/f", "wb") as f:
        f.write(b"12345")
    assert cluster.listdir(tdir) == ["a", "b", "f"]
    d = cluster.stat(f"{tdir}/a")
    assert d.is_dir and not d.is_file and d.kind == "dir" and d.size == 0
    s = cluster.stat(f"{tdir}/f")
    assert s.is_file and not s.is_dir and s.kind == "file"
    assert s.size == 5
    assert abs(s.mtime - time.time()) < 120
    assert s.mtime_ms // 1000 == int(s.mtime)
    assert (s.replicas, s.replicas_min, s.chunk_size) == (3, 2, CHUNK_SIZE)
    assert "size=5" in repr(s)
    entries = cluster.scandir(tdir)
    assert [(e.name, e.path, e.is_dir()) for e in entries] == [
        ("a", f"{tdir}/a", True),
        ("b", f"{tdir}/b", True),
        ("f", f"{tdir}/f", False),
    ]
    assert entries[2].stat.size == 5


def test_exists_remove_rmdir(cluster: pstorage.Cluster, tdir: str) -> None:
    assert cluster.exists(tdir)
    assert not cluster.exists(f"{tdir}/nope")
    cluster.mkdir(f"{tdir}/d")
    with cluster.open(f"{tdir}/d/f", "wb"):
        pass
    with pytest.raises(pstorage.NotEmpty) as e:
        cluster.remove(f"{tdir}/d")
    assert e.value.errno == 39  # ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        cluster.rmdir(f"{tdir}/d/f")
    cluster.remove(f"{tdir}/d/f")
    assert not cluster.exists(f"{tdir}/d/f")
    cluster.rmdir(f"{tdir}/d")
    assert not cluster.exists(f"{tdir}/d")
    with pytest.raises(FileNotFoundError):
        cluster.remove(f"{tdir}/d")


def test_makedirs(cluster: pstorage.Cluster, tdir: str) -> None:
    cluster.makedirs(f"{tdir}/x/y/z")
    assert cluster.stat(f"{tdir}/x/y/z").is_dir
    with pytest.raises(FileExistsError):
        cluster.makedirs(f"{tdir}/x/y/z")
    cluster.makedirs(f"{tdir}/x/y/z", exist_ok=True)
    cluster.makedirs(f"{tdir}/x/y/w")  # parent exists, leaf does not
    assert cluster.listdir(f"{tdir}/x/y") == ["w", "z"]
    with cluster.open(f"{tdir}/file", "wb"):
        pass
    with pytest.raises(FileExistsError):  # a file is in the way, like os.makedirs
        cluster.makedirs(f"{tdir}/file", exist_ok=True)
    with pytest.raises(FileNotFoundError):
        cluster.mkdir(f"{tdir}/missing/leaf")


def test_rename(cluster: pstorage.Cluster, tdir: str) -> None:
    with cluster.open(f"{tdir}/a", "wb") as f:
        f.write(b"aaa")
    with cluster.open(f"{tdir}/b", "wb") as f:
        f.write(b"b")
    cluster.rename(f"{tdir}/a", f"{tdir}/c")
    assert cluster.listdir(tdir) == ["b", "c"]
    cluster.rename(f"{tdir}/c", f"{tdir}/b")  # replaces a file
    assert cluster.listdir(tdir) == ["b"]
    with cluster.open(f"{tdir}/b") as f:
        assert f.read() == b"aaa"
    cluster.mkdir(f"{tdir}/d")
    cluster.rename(f"{tdir}/d", f"{tdir}/e")
    assert cluster.stat(f"{tdir}/e").is_dir
    with pytest.raises(FileNotFoundError):
        cluster.rename(f"{tdir}/nope", f"{tdir}/x")


def test_get_set_attr(cluster: pstorage.Cluster, tdir: str) -> None:
    a = cluster.get_attr(tdir)
    assert (a.replicas, a.replicas_min, a.chunk_size) == (3, 2, CHUNK_SIZE)
    cluster.set_attr(tdir, replicas="2:1", chunk_size=2 * CHUNK_SIZE)
    a = cluster.get_attr(tdir)
    assert (a.replicas, a.replicas_min, a.chunk_size) == (2, 1, 2 * CHUNK_SIZE)
    with cluster.open(f"{tdir}/f", "wb") as f:  # new files inherit
        f.write(b"x")
    assert cluster.get_attr(f"{tdir}/f") == a
    cluster.set_attr(tdir, replicas=3, recursive=True)  # min defaults to 3/2+1
    assert cluster.stat(f"{tdir}/f").replicas == 3
    assert cluster.get_attr(f"{tdir}/f").replicas_min == 2
    with pytest.raises(pstorage.InvalidArgument) as e:
        cluster.set_attr(tdir, replicas="1:2")
    assert isinstance(e.value, ValueError) and e.value.errno == 22
    assert "replicas=1:2 is invalid" in str(e.value)
    with pytest.raises(ValueError):
        cluster.set_attr(tdir, chunk_size=1000)


def test_walk(cluster: pstorage.Cluster, tdir: str) -> None:
    cluster.makedirs(f"{tdir}/a/b")
    for p in (f"{tdir}/top", f"{tdir}/a/one", f"{tdir}/a/b/two"):
        with cluster.open(p, "wb"):
            pass
    assert list(cluster.walk(tdir)) == [
        (tdir, ["a"], ["top"]),
        (f"{tdir}/a", ["b"], ["one"]),
        (f"{tdir}/a/b", [], ["two"]),
    ]


def test_status(cluster: pstorage.Cluster, local_cluster: LocalCluster) -> None:
    s = cluster.status()
    assert s.cluster_name == local_cluster.name
    assert s.health in ("healthy", "degraded")
    assert len(s.cs) == CHUNK_SERVERS
    assert all(c.status == "active" and c.total_bytes > 0 for c in s.cs)
    assert [m.addr for m in s.mds] == [local_cluster.mds_addr]
    assert s.dirs >= 1
    assert "ClusterStatus(" in repr(s)


def test_closed_cluster(local_cluster: LocalCluster) -> None:
    c = pstorage.Cluster(local_cluster.name, local_cluster.conf_dir)
    f = c.open("/closed-cluster-file", "wb")
    f.write(b"kept")
    c.close()
    assert c.closed and f.closed  # close() closed (and flushed) the open file
    c.close()  # again: a no-op
    with pytest.raises(ValueError, match="closed"):
        c.stat("/")
    with pstorage.Cluster(local_cluster.name, str(local_cluster.conf_dir)) as c2:
        assert c2.stat("/closed-cluster-file").size == 4
        c2.remove("/closed-cluster-file")
    assert c2.closed


def test_conf_dir_from_environment(local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSTORAGE_CONF_DIR", str(local_cluster.conf_dir))
    with pstorage.Cluster(local_cluster.name) as c:
        assert c.conf_dir == str(local_cluster.conf_dir)
        assert c.stat("/").is_dir


def test_verify_compares_every_replica(cluster: pstorage.Cluster, tdir: str) -> None:
    with cluster.open(f"{tdir}/v", "wb") as f:
        f.write(b"v" * (CHUNK_SIZE + 5000))
    report = cluster.verify(f"{tdir}/v")
    assert report["chunks"] == 2
    assert report["replicas"] == 2 * min(3, CHUNK_SERVERS)
    assert report["problems"] == [] and report["repaired"] == []
    assert report["bytes_read"] >= min(3, CHUNK_SERVERS) * (CHUNK_SIZE + 5000)
    assert cluster.verify(f"{tdir}/v", repair=True)["problems"] == []
    with pytest.raises(FileNotFoundError):
        cluster.verify(f"{tdir}/nope")
