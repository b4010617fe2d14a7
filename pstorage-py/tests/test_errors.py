"""Library errors become the right Python exceptions, with errno and the
library's message."""

from __future__ import annotations

import errno
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import pstorage
from conftest import LocalCluster

BUILTIN = {
    pstorage.NotFound: FileNotFoundError,
    pstorage.AlreadyExists: FileExistsError,
    pstorage.NotADirectory: NotADirectoryError,
    pstorage.IsADirectory: IsADirectoryError,
    pstorage.PermissionDenied: PermissionError,
    pstorage.TimedOut: TimeoutError,
    pstorage.Unavailable: ConnectionError,
    pstorage.InvalidArgument: ValueError,
}


def test_hierarchy() -> None:
    assert issubclass(pstorage.Error, OSError)
    for name in pstorage.__all__:
        obj = getattr(pstorage, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, pstorage.Error), name
            assert obj.kind == name or obj is pstorage.Error
    for cls, builtin in BUILTIN.items():
        assert issubclass(cls, builtin), cls


def check(e: BaseException, cls: type, code: int, *words: str) -> None:
    assert type(e) is cls, repr(e)
    assert isinstance(e, pstorage.Error) and isinstance(e, OSError)
    assert e.errno == code  # type: ignore[attr-defined]
    for w in words:
        assert w in str(e), (w, str(e))


def test_not_found(cluster: pstorage.Cluster, tdir: str) -> None:
    with pytest.raises(FileNotFoundError) as e:
        cluster.open(f"{tdir}/missing")
    check(e.value, pstorage.NotFound, errno.ENOENT, f"{tdir}/missing")
    with pytest.raises(FileNotFoundError) as e:
        cluster.stat(f"{tdir}/missing")
    check(e.value, pstorage.NotFound, errno.ENOENT, "missing")


def test_exists(cluster: pstorage.Cluster, tdir: str) -> None:
    with pytest.raises(FileExistsError) as e:
        cluster.mkdir(tdir)
    check(e.value, pstorage.AlreadyExists, errno.EEXIST, tdir)
    with cluster.open(f"{tdir}/f", "wb"):
        pass
    with pytest.raises(FileExistsError) as e:
        cluster.open(f"{tdir}/f", "xb")
    check(e.value, pstorage.AlreadyExists, errno.EEXIST, f"{tdir}/f")


def test_is_a_directory(cluster: pstorage.Cluster, tdir: str) -> None:
    for mode in ("rb", "wb", "r+b"):
        with pytest.raises(IsADirectoryError) as e:
            cluster.open(tdir, mode)
        check(e.value, pstorage.IsADirectory, errno.EISDIR, tdir)


def test_not_a_directory(cluster: pstorage.Cluster, tdir: str) -> None:
    with cluster.open(f"{tdir}/file", "wb"):
        pass
    with pytest.raises(NotADirectoryError) as e:
        cluster.mkdir(f"{tdir}/file/sub")
    check(e.value, pstorage.NotADirectory, errno.ENOTDIR, f"{tdir}/file")
    with pytest.raises(NotADirectoryError) as e:
        cluster.listdir(f"{tdir}/file")
    check(e.value, pstorage.NotADirectory, errno.ENOTDIR)


def test_invalid_path(cluster: pstorage.Cluster) -> None:
    with pytest.raises(pstorage.InvalidArgument) as e:
        cluster.stat("relative/path")
    check(e.value, pstorage.InvalidArgument, errno.EINVAL)


def test_permission_denied(local_cluster: LocalCluster, tmp_path: Path) -> None:
    # A node that is not authenticated: no certificate.
    root = tmp_path / "conf"
    node = root / local_cluster.name
    node.mkdir(parents=True)
    shutil.copy(local_cluster.conf_dir / local_cluster.name / "bs.list", node)
    with pytest.raises(PermissionError) as e:
        pstorage.Cluster(local_cluster.name, root)
    check(e.value, pstorage.PermissionDenied, errno.EACCES, "node.crt", "auth-node")
    # A key file others may read is refused, saying how to fix it.
    for name in ("ca.crt", "node.crt", "node.key"):
        shutil.copy(local_cluster.conf_dir / local_cluster.name / name, node)
    (node / "node.key").chmod(0o644)
    with pytest.raises(PermissionError) as e:
        pstorage.Cluster(local_cluster.name, root)
    check(e.value, pstorage.PermissionDenied, errno.EACCES, "chmod 600")
    # A node of another cluster (its own CA, made with openssl): the TLS
    # handshake refuses it.
    other = tmp_path / "other"
    other.mkdir()
    run = lambda *args: subprocess.run(args, cwd=other, check=True, capture_output=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=other CA", "-days", "1")
    run("openssl", "req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=intruder/OU=admin")
    (other / "ext").write_text("subjectAltName=DNS:pstorage-node\n")
    run("openssl", "x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "node.crt", "-days", "1", "-extfile", "ext")
    for name in ("ca.crt", "node.crt", "node.key"):
        shutil.copy(other / name, node)
    (node / "node.key").chmod(0o600)
    with pstorage.Cluster(local_cluster.name, root, timeout=10) as c:
        with pytest.raises(PermissionError) as e:
            c.stat("/")
    check(e.value, pstorage.PermissionDenied, errno.EACCES)


def test_unavailable(local_cluster: LocalCluster, tmp_path: Path) -> None:
    # Nothing listens at the bootstrap address.
    root = tmp_path / "conf"
    (root / local_cluster.name).mkdir(parents=True)
    for name in ("ca.crt", "node.crt", "node.key"):
        shutil.copy(local_cluster.conf_dir / local_cluster.name / name, root / local_cluster.name)
    from conftest import free_port

    (root / local_cluster.name / "bs.list").write_text(f"127.0.0.1:{free_port()}\n")
    with pstorage.Cluster(local_cluster.name, root, timeout=1) as c:
        with pytest.raises(ConnectionError) as e:
            c.stat("/")
    check(e.value, pstorage.Unavailable, errno.EAGAIN, "no MDS reachable")


def test_timeout(local_cluster: LocalCluster) -> None:
    assert local_cluster.mds is not None
    with pstorage.Cluster(local_cluster.name, local_cluster.conf_dir, timeout=1) as c:
        c.stat("/")  # connected
        started = time.monotonic()
        with local_cluster.paused([local_cluster.mds]):
            with pytest.raises(TimeoutError) as e:
                c.stat("/")
        assert time.monotonic() - started < 10
    check(e.value, pstorage.TimedOut, errno.ETIMEDOUT)


def test_bad_arguments_are_python_errors(cluster: pstorage.Cluster) -> None:
    with pytest.raises(TypeError):
        cluster.stat(b"/bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pstorage.Cluster("x", timeout=0)
    with pytest.raises(pstorage.InvalidArgument):
        pstorage.Cluster("bad/name")
