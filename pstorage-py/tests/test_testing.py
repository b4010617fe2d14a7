"""``pstorage.testing.LocalCluster``: a real cluster inside the pytest
process (no daemon binary), at the product's defaults (256 MiB chunks,
replicas 3:2), driven as a user's test would drive it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

import pstorage
import pstorage.testing
from conftest import pattern


@pytest.fixture(scope="module")
def inproc() -> Iterator[pstorage.testing.LocalCluster]:
    """The fixture the module documentation shows."""
    with pstorage.testing.LocalCluster(mds=3, cs=4) as cluster:
        yield cluster


def test_writes_go_on_through_a_cs_kill_and_a_leader_kill(
    inproc: pstorage.testing.LocalCluster,
) -> None:
    assert inproc.mds_count == 3 and inproc.cs_count == 4
    assert os.path.exists(inproc.bs_list)
    piece = 1 << 20
    with inproc.client(timeout=60) as c:
        with c.open("/data.bin", "wb") as f:
            assert c.get_attr("/data.bin").chunk_size == 256 << 20
            f.write(pattern(0, piece))
            f.flush()
            inproc.kill_cs(1)
            assert not inproc.cs_running(1)
            f.write(pattern(1, piece))
            f.flush()
            inproc.restart_cs(1)
            inproc.wait_healthy(180)
            leader = inproc.leader_mds()
            inproc.kill_mds(leader)
            f.write(pattern(2, piece))
            f.flush()
            assert inproc.leader_mds() != leader
        with c.open("/data.bin") as f:
            assert f.read() == pattern(0, piece) + pattern(1, piece) + pattern(2, piece)
        inproc.restart_mds(leader)
        status = inproc.wait_healthy(180)
        assert status.health == "healthy"
        assert len(status.mds) == 3 and len(status.cs) == 4


def test_cli_style_access_through_conf_dir(inproc: pstorage.testing.LocalCluster) -> None:
    # Any tool finds the cluster through conf_dir and the name.
    with pstorage.Cluster(inproc.name, inproc.conf_dir, timeout=30) as c:
        c.makedirs("/tools/x", exist_ok=True)
        assert c.exists("/tools/x")


def test_stop_removes_the_directory_and_closes_clients(tmp_path: Path) -> None:
    cluster = pstorage.testing.LocalCluster(cs=1, replicas="1:1", parent_dir=tmp_path)
    d = cluster.dir
    assert d.startswith(str(tmp_path)) and os.path.isdir(d)
    c = cluster.client()
    c.mkdir("/a")
    cluster.stop()
    assert cluster.stopped and c.closed and not os.path.exists(d)
    cluster.stop()  # again: nothing
    with pytest.raises(ValueError, match="stopped"):
        cluster.kill_cs(0)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(pstorage.InvalidArgument, match="at least 1 MDS"):
        pstorage.testing.LocalCluster(mds=0, parent_dir=tmp_path)
    with pytest.raises(pstorage.InvalidArgument, match="cannot hold replicas.min=2"):
        pstorage.testing.LocalCluster(cs=1, parent_dir=tmp_path)
    with pytest.raises(pstorage.InvalidArgument, match="replicas=2:3 is invalid"):
        pstorage.testing.LocalCluster(replicas="2:3", parent_dir=tmp_path)
    with pytest.raises(ValueError):  # InvalidArgument is a ValueError
        pstorage.testing.LocalCluster(chunk_size=1000, parent_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
