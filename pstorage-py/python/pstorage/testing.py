"""``pstorage.testing``: a real pstorage cluster inside the test process.

:class:`LocalCluster` starts metadata servers and chunk servers on 127.0.0.1
in a temporary directory, with the same code as the daemons (no daemon
binary, no root), hands out connected :class:`pstorage.Cluster` clients,
kills and restarts nodes, and removes everything when it stops::

    import pytest
    import pstorage.testing

    @pytest.fixture(scope="session")
    def pstorage_cluster():
        with pstorage.testing.LocalCluster(mds=3, cs=4) as cluster:
            yield cluster

    def test_survives_a_chunk_server_crash(pstorage_cluster):
        with pstorage_cluster.client() as c, c.open("/data", "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            pstorage_cluster.kill_cs(0)
            f.write(b"y" * 4096)      # 2 of 3 replicas are enough (replicas 3:2)
            f.flush()
            pstorage_cluster.restart_cs(0)
        pstorage_cluster.wait_healthy()

A kill is as close to ``kill -9`` as one process allows: every task of the
node stops where it waits, no shutdown code runs, and its sockets close;
what it wrote stays in the page cache (no power loss, no torn writes).
Freezes, partitions and disk faults are not modeled.
"""

from __future__ import annotations

import os
import weakref
from types import TracebackType
from typing import Optional, Type, Union

from ._cluster import Cluster
from ._pstorage import ClusterStatus, RawLocalCluster

__all__ = ["LocalCluster"]


class LocalCluster:
    """A running in-process cluster; a context manager that stops it.

    The defaults are the product's: 1 MDS, ``replicas.norm`` (3) chunk
    servers, 256 MiB chunks, replicas ``"3:2"``. Nodes are numbered from 0
    in the order they were added. Starting returns once the cluster is
    healthy; bad options raise :class:`pstorage.InvalidArgument` (0 MDSes,
    fewer chunk servers than ``replicas`` min, a bad chunk size, ...).

    :param mds: metadata servers (1, or 3 or 5 for a Raft group).
    :param cs: chunk servers (default: the replicas' norm).
    :param chunk_size: chunk size in bytes (default 256 MiB).
    :param replicas: ``"NORM:MIN"`` of the root directory (default ``"3:2"``).
    :param password: derive the cluster key from it (default: a random key).
    :param name: the cluster's name (default ``"local"``).
    :param parent_dir: where the temporary directory is made.
    :param keep_dir: keep the directory after stopping (to inspect it).
    :param start_timeout: seconds to wait for a healthy cluster.
    """

    def __init__(
        self,
        mds: int = 1,
        cs: Optional[int] = None,
        *,
        chunk_size: Optional[int] = None,
        replicas: Optional[str] = None,
        password: Optional[str] = None,
        name: str = "local",
        parent_dir: Union[str, "os.PathLike[str]", None] = None,
        keep_dir: bool = False,
        start_timeout: float = 120.0,
    ) -> None:
        self._raw = RawLocalCluster(
            mds,
            cs,
            chunk_size,
            replicas,
            password,
            name,
            None if parent_dir is None else os.fspath(parent_dir),
            keep_dir,
            float(start_timeout),
        )
        self._clients: "weakref.WeakSet[Cluster]" = weakref.WeakSet()

    # -- where it is --------------------------------------------------------

    @property
    def name(self) -> str:
        """The cluster's name."""
        return self._raw.name

    @property
    def conf_dir(self) -> str:
        """The configuration root: ``conf_dir`` of :class:`pstorage.Cluster`,
        ``--conf-dir`` of the ``pstorage`` CLI, ``$PSTORAGE_CONF_DIR``."""
        return os.fspath(self._raw.conf_dir)

    @property
    def bs_list(self) -> str:
        """The cluster's ``bs.list`` (one MDS address per line)."""
        return os.path.join(self.conf_dir, self.name, "bs.list")

    @property
    def dir(self) -> str:
        """The directory holding everything (configuration, node data)."""
        return os.fspath(self._raw.dir)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._raw.stopped

    def __repr__(self) -> str:
        state = " stopped" if self.stopped else ""
        return f"<pstorage.testing.LocalCluster {self.name!r} dir={self.dir!r}{state}>"

    # -- clients and status -------------------------------------------------

    def client(self, *, timeout: float = 60.0) -> Cluster:
        """A connected :class:`pstorage.Cluster`; closed by :meth:`stop` if
        it is still open then."""
        c = Cluster(self.name, self.conf_dir, timeout=timeout)
        self._clients.add(c)
        return c

    def status(self) -> ClusterStatus:
        """The cluster status, as ``pstorage stat`` shows it."""
        return self._raw.status()

    def wait_healthy(self, timeout: float = 120.0) -> ClusterStatus:
        """Waits until an MDS leads, every running node is up and every chunk
        has its norm copies; raises :class:`pstorage.TimedOut` naming what is
        missing, or the error of a node that ended on its own."""
        return self._raw.wait_healthy(timeout)

    # -- nodes ----------------------------------------------------------------

    @property
    def mds_count(self) -> int:
        """MDSes ever added (running or not)."""
        return self._raw.mds_count()

    @property
    def cs_count(self) -> int:
        """Chunk servers ever added (running or not)."""
        return self._raw.cs_count()

    def mds_addr(self, i: int) -> str:
        """The address MDS ``i`` listens on."""
        return self._raw.mds_addr(i)

    def cs_id(self, i: int) -> int:
        """The cluster id of chunk server ``i`` (as ``status().cs`` shows it)."""
        return self._raw.cs_id(i)

    def mds_running(self, i: int) -> bool:
        return self._raw.mds_running(i)

    def cs_running(self, i: int) -> bool:
        return self._raw.cs_running(i)

    def leader_mds(self) -> int:
        """The index of the MDS that leads the group now."""
        return self._raw.leader_mds()

    def kill_cs(self, i: int) -> None:
        """Kills chunk server ``i`` (like ``kill -9``)."""
        self._raw.kill_cs(i)

    def stop_cs(self, i: int) -> None:
        """Stops chunk server ``i`` cleanly."""
        self._raw.stop_cs(i)

    def restart_cs(self, i: int) -> None:
        """Starts chunk server ``i`` again on its data (it serves once it has
        registered: :meth:`wait_healthy`)."""
        self._raw.restart_cs(i)

    def kill_mds(self, i: int) -> None:
        """Kills MDS ``i`` (like ``kill -9``)."""
        self._raw.kill_mds(i)

    def stop_mds(self, i: int) -> None:
        """Stops MDS ``i`` cleanly."""
        self._raw.stop_mds(i)

    def restart_mds(self, i: int) -> None:
        """Starts MDS ``i`` again on its data and address."""
        self._raw.restart_mds(i)

    def add_cs(self) -> int:
        """Adds and starts a chunk server; returns its index."""
        return self._raw.add_cs()

    def add_mds(self) -> int:
        """Adds an MDS to the group; returns its index once it votes."""
        return self._raw.add_mds()

    # -- lifetime -------------------------------------------------------------

    def stop(self) -> None:
        """Closes the clients :meth:`client` gave that are still open, stops
        every node and removes the directory (unless ``keep_dir``). Stopping
        again does nothing."""
        try:
            for c in list(self._clients):
                c.close()
        finally:
            self._raw.stop()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()
