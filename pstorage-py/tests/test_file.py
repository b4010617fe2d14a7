"""pstorage.File: modes, io.RawIOBase behaviour, buffered wrappers,
copyfileobj, hashlib, seek/tell/truncate, pread/pwrite."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest

import pstorage
from conftest import CHUNK_SIZE, pattern


def test_is_a_raw_io(cluster: pstorage.Cluster, tdir: str) -> None:
    with cluster.open(f"{tdir}/f", "wb") as f:
        assert isinstance(f, io.RawIOBase) and isinstance(f, io.IOBase)
        assert (f.readable(), f.writable(), f.seekable()) == (False, True, True)
        assert f.name == f"{tdir}/f" and f.mode == "wb"
        assert not f.isatty()
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()
        with pytest.raises(io.UnsupportedOperation):
            f.read(1)
        assert f.write(b"hello") == 5
    assert f.closed
    with pytest.raises(ValueError):
        f.write(b"x")
    with pytest.raises(ValueError):
        f.tell()
    f.close()  # closing again is a no-op
    with cluster.open(f"{tdir}/f") as r:
        assert (r.readable(), r.writable(), r.mode) == (True, False, "rb")
        with pytest.raises(io.UnsupportedOperation):
            r.write(b"x")
        with pytest.raises(io.UnsupportedOperation):
            r.truncate(0)
        assert r.read() == b"hello"


def test_modes(cluster: pstorage.Cluster, tdir: str) -> None:
    p = f"{tdir}/m"
    with pytest.raises(FileNotFoundError):
        cluster.open(p, "rb")
    with pytest.raises(FileNotFoundError):
        cluster.open(p, "r+b")
    with cluster.open(p, "xb") as f:
        f.write(b"0123456789")
    with pytest.raises(FileExistsError):
        cluster.open(p, "xb")
    with cluster.open(p, "ab") as f:
        assert f.tell() == 10
        f.seek(0)
        f.write(b"ab")  # append mode writes at the end wherever the position is
        assert f.tell() == 12
    with cluster.open(p, "r+b") as f:  # no truncate; read and write
        assert f.read(3) == b"012"
        f.write(b"XY")
        f.seek(0)
        assert f.read() == b"012XY56789ab"
    with cluster.open(p, "wb") as f:  # truncates
        assert f.size == 0
        f.write(b"new")
    with cluster.open(p, "w+b") as f:
        f.write(b"plus")
        f.seek(0)
        assert f.read() == b"plus"
    with cluster.open(p, "a+b") as f:
        f.write(b"!")
        f.seek(0)
        assert f.read() == b"plus!"
    for mode in ("rt", "r", "b", "rw", "rbb", "q", "r+"):
        if mode in ("r", "r+"):
            cluster.open(p, mode).close()  # 'b' is optional, as for io.FileIO
            continue
        with pytest.raises(ValueError):
            cluster.open(p, mode)


def test_write_lease_is_exclusive(cluster: pstorage.Cluster, local_cluster, tdir: str) -> None:
    with cluster.open(f"{tdir}/x", "wb"):
        with pstorage.Cluster(local_cluster.name, local_cluster.conf_dir) as other:
            with pytest.raises(pstorage.Busy) as e:
                other.open(f"{tdir}/x", "rb")
            assert e.value.errno == 16  # EBUSY
    with cluster.open(f"{tdir}/x", "rb"), cluster.open(f"{tdir}/x", "rb"):
        pass  # read leases are shared


def test_multi_chunk_read_write(cluster: pstorage.Cluster, tdir: str) -> None:
    data = pattern(1, 3 * CHUNK_SIZE + 12345)
    with cluster.open(f"{tdir}/big", "wb") as f:
        # Writes that cross chunk boundaries, of uneven sizes.
        pos = 0
        for n in (1, 4095, CHUNK_SIZE, 700_000, len(data)):
            piece = data[pos : pos + n]
            if not piece:
                break
            assert f.write(piece) == len(piece)
            pos += len(piece)
        assert f.tell() == len(data) == f.size
    assert cluster.stat(f"{tdir}/big").size == len(data)
    with cluster.open(f"{tdir}/big") as f:
        assert f.read(10) == data[:10]
        assert f.read(CHUNK_SIZE) == data[10 : 10 + CHUNK_SIZE]
        assert f.readall() == data[10 + CHUNK_SIZE :]
        assert f.read(10) == b""
        f.seek(0)
        assert f.read() == data
        buf = bytearray(CHUNK_SIZE + 7)
        f.seek(CHUNK_SIZE - 3)
        assert f.readinto(buf) == len(buf)
        assert bytes(buf) == data[CHUNK_SIZE - 3 : 2 * CHUNK_SIZE + 4]
        f.seek(len(data) - 5)
        assert f.readinto(buf) == 5 and bytes(buf[:5]) == data[-5:]
        assert f.readinto(buf) == 0


def test_readinto_and_write_take_any_buffer(cluster: pstorage.Cluster, tdir: str) -> None:
    import array

    with cluster.open(f"{tdir}/f", "w+b") as f:
        assert f.write(bytearray(b"ab")) == 2
        assert f.write(memoryview(b"xxcdxx")[2:4]) == 2
        assert f.write(array.array("I", [0x64636261])) == 4  # 4 bytes, any item format
        f.seek(0)
        arr = array.array("H", [0, 0, 0, 0])
        assert f.readinto(arr) == 8
        assert arr.tobytes() == b"abcdabcd"
        with pytest.raises(TypeError):
            f.write("text")  # type: ignore[arg-type]


def test_seek_tell_truncate(cluster: pstorage.Cluster, tdir: str) -> None:
    with cluster.open(f"{tdir}/s", "w+b") as f:
        f.write(b"0123456789")
        assert f.seek(2) == 2 and f.tell() == 2
        assert f.seek(3, os.SEEK_CUR) == 5
        assert f.seek(-1, os.SEEK_END) == 9
        assert f.read() == b"9"
        with pytest.raises(OSError) as e:
            f.seek(-20, os.SEEK_END)
        assert e.value.errno == 22 and isinstance(e.value, ValueError)
        with pytest.raises(ValueError):
            f.seek(0, 7)
        # Writing beyond the end leaves zeros.
        f.seek(15)
        f.write(b"Z")
        f.seek(0)
        assert f.read() == b"0123456789\0\0\0\0\0Z"
        # truncate: default size is the position; the position stays.
        f.seek(4)
        assert f.truncate() == 4
        assert f.tell() == 4 and f.size == 4
        f.seek(0)
        assert f.read() == b"0123"
        assert f.truncate(8) == 8  # grows with zeros
        f.seek(0)
        assert f.read() == b"0123\0\0\0\0"
        with pytest.raises(ValueError):
            f.truncate(-1)
    assert cluster.stat(f"{tdir}/s").size == 8


def test_truncate_across_chunks(cluster: pstorage.Cluster, tdir: str) -> None:
    data = pattern(2, 2 * CHUNK_SIZE + 100)
    with cluster.open(f"{tdir}/t", "w+b") as f:
        f.write(data)
        f.truncate(CHUNK_SIZE + 10)
        f.truncate(2 * CHUNK_SIZE)
        f.seek(0)
        got = f.read()
    assert got == data[: CHUNK_SIZE + 10] + bytes(CHUNK_SIZE - 10)


def test_flush_commits_size(cluster: pstorage.Cluster, tdir: str) -> None:
    with cluster.open(f"{tdir}/fl", "wb") as f:
        f.write(b"x" * 1000)
        f.flush()
        assert cluster.stat(f"{tdir}/fl").size == 1000
        assert f.stat().size == 1000


def test_pread_pwrite(cluster: pstorage.Cluster, tdir: str) -> None:
    with cluster.open(f"{tdir}/p", "w+b") as f:
        assert f.pwrite(b"world", 6) == 5
        assert f.pwrite(b"hello ", 0) == 6
        assert f.tell() == 0  # positioned I/O leaves the position alone
        assert f.pread(5, 6) == b"world"
        assert f.pread(100, 0) == b"hello world"
        assert f.pread(10, 100) == b""
        with pytest.raises(ValueError):
            f.pread(-1, 0)
        with pytest.raises(ValueError):
            f.pwrite(b"x", -1)
        # pwrite ignores append mode and the position, like os.pwrite.
        big = pattern(3, CHUNK_SIZE + 5000)
        f.pwrite(big, CHUNK_SIZE - 2500)
        assert f.pread(len(big), CHUNK_SIZE - 2500) == big
    with cluster.open(f"{tdir}/p") as r:
        assert r.pread(11, 0) == b"hello world"
        with pytest.raises(io.UnsupportedOperation):
            r.pwrite(b"x", 0)
    with cluster.open(f"{tdir}/p", "wb") as w:
        with pytest.raises(io.UnsupportedOperation):
            w.pread(1, 0)


def test_buffered_reader_and_writer(cluster: pstorage.Cluster, tdir: str) -> None:
    lines = [f"line {i} {'x' * (i % 97)}\n".encode() for i in range(20000)]
    with io.BufferedWriter(cluster.open(f"{tdir}/lines", "wb"), buffer_size=64 << 10) as w:
        for line in lines:
            w.write(line)
    expected = b"".join(lines)
    assert len(expected) > CHUNK_SIZE
    assert cluster.stat(f"{tdir}/lines").size == len(expected)
    with io.BufferedReader(cluster.open(f"{tdir}/lines"), buffer_size=32 << 10) as r:
        assert r.peek(4)[:4] == b"line"
        got = list(r)  # readline over the buffered reader
        assert got == lines
    with io.BufferedReader(cluster.open(f"{tdir}/lines")) as r:
        r.seek(len(expected) - 10)
        assert r.read() == expected[-10:]
        r.seek(5)
        assert r.read(3) == expected[5:8]
    with io.TextIOWrapper(io.BufferedReader(cluster.open(f"{tdir}/lines")), encoding="ascii") as t:
        assert t.readline() == "line 0 \n"
        assert t.readline() == "line 1 x\n"
    with io.BufferedRandom(cluster.open(f"{tdir}/lines", "r+b")) as rw:
        rw.seek(5)
        rw.write(b"X")
        rw.seek(0)
        assert rw.read(8) == b"line X \n"


def test_copyfileobj_and_hashlib(cluster: pstorage.Cluster, tdir: str, tmp_path: Path) -> None:
    data = pattern(4, 2 * CHUNK_SIZE + 333)
    local = tmp_path / "src.bin"
    local.write_bytes(data)
    with open(local, "rb") as src, cluster.open(f"{tdir}/copy", "wb") as dst:
        shutil.copyfileobj(src, dst, 256 << 10)
    h = hashlib.sha256()
    with cluster.open(f"{tdir}/copy") as f:
        while chunk := f.read(300_000):
            h.update(chunk)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    # And back out, through a buffered reader, with the default buffer size.
    back = tmp_path / "back.bin"
    with io.BufferedReader(cluster.open(f"{tdir}/copy")) as src, open(back, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert back.read_bytes() == data
    with cluster.open(f"{tdir}/copy") as f:
        if hasattr(hashlib, "file_digest"):  # Python 3.11+
            assert hashlib.file_digest(f, "sha256").hexdigest() == h.hexdigest()


def test_unclosed_file_is_closed_by_gc(cluster: pstorage.Cluster, tdir: str) -> None:
    import gc

    f = cluster.open(f"{tdir}/gc", "wb")
    f.write(b"abc")
    del f
    gc.collect()
    # The finalizer flushed and released the write lease.
    with cluster.open(f"{tdir}/gc", "rb") as r:
        assert r.read() == b"abc"
