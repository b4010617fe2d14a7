"""A real pstorage cluster for the tests: one MDS and three chunk servers,
processes of the workspace's binaries (target/debug, or $PSTORAGE_BIN_DIR)
on 127.0.0.1 with ephemeral ports in a temporary directory. Every process
is killed in the fixture's teardown, and by the kernel if pytest dies
(PR_SET_PDEATHSIG)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

import pstorage

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "test-password"
CHUNK_SIZE = 1 << 20
CHUNK_SERVERS = 3


def bin_dir() -> Path:
    d = Path(os.environ.get("PSTORAGE_BIN_DIR", REPO / "target" / "debug"))
    if not (d / "pstorage").exists():
        pytest.exit(
            f"{d} has no pstorage binary: run `cargo build --workspace --bins` first "
            "(scripts/test.sh does)",
            returncode=2,
        )
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Daemons must not outlive a pytest that was killed.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalCluster:
    """A running test cluster: its name, config root, and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = "pytest"
        self.conf_dir = root / "conf"
        self.bin = bin_dir()
        self.mds_addr = f"127.0.0.1:{free_port()}"
        self.mds: Optional[subprocess.Popen[bytes]] = None
        self.cs: List[subprocess.Popen[bytes]] = []
        self.env: Dict[str, str] = dict(
            os.environ,
            PSTORAGE_CONF_DIR=str(self.conf_dir),
            PSTORAGE_HEARTBEAT_MS="200",
            PSTORAGE_LOG="info",
        )

    def cli(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """Runs `pstorage --conf-dir ROOT -c NAME ARGS...`."""
        cmd = [str(self.bin / "pstorage"), "--conf-dir", str(self.conf_dir), "-c", self.name, *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, env=self.env, timeout=120)

    def _daemon(self, binary: str, data_dir: Path, log: str) -> subprocess.Popen[bytes]:
        out = open(self.root / log, "ab")
        try:
            return subprocess.Popen(
                [str(self.bin / binary), "-r", str(data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()

    def log(self, name: str) -> str:
        try:
            return (self.root / name).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        out = self.cli(
            "make-mds", "-I", "-a", self.mds_addr, "-r", str(self.root / "mds"), "-p",
            "--chunk-size", str(CHUNK_SIZE),
            stdin=f"{PASSWORD}\n".encode(),
        )
        assert out.returncode == 0, f"make-mds failed: {out.stderr.decode()}"
        self.mds = self._daemon("pstorage-mdsd", self.root / "mds", "mds.log")
        host, port = self.mds_addr.rsplit(":", 1)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.2):
                break
            assert self.mds.poll() is None, f"the MDS exited: {self.log('mds.log')}"
            assert time.monotonic() < deadline, f"the MDS did not start: {self.log('mds.log')}"
            time.sleep(0.05)
        for i in range(CHUNK_SERVERS):
            d = self.root / f"cs{i}"
            out = self.cli("make-cs", "-r", str(d))
            assert out.returncode == 0, f"make-cs failed: {out.stderr.decode()}"
            self.cs.append(self._daemon("pstorage-csd", d, f"cs{i}.log"))
        self.wait_active(CHUNK_SERVERS)

    def wait_active(self, n: int) -> None:
        deadline = time.monotonic() + 30
        active = 0
        with pstorage.Cluster(self.name, self.conf_dir, timeout=5) as c:
            while time.monotonic() < deadline:
                with contextlib.suppress(pstorage.Error):
                    active = sum(cs.status == "active" for cs in c.status().cs)
                    if active >= n:
                        return
                time.sleep(0.1)
        raise AssertionError(f"only {active} of {n} chunk servers became active: {self.log('mds.log')}")

    def stop(self) -> None:
        procs = [p for p in [*self.cs, self.mds] if p is not None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGCONT)  # a stopped process cannot die of SIGTERM
                p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)

    @contextlib.contextmanager
    def paused(self, procs: List["subprocess.Popen[bytes]"], limit_s: float = 15) -> Iterator[None]:
        """SIGSTOPs the processes for the block (SIGCONT even on failure).

        A separate watchdog process resumes them after `limit_s` anyway: if
        the code under test wrongly held the GIL while it waits for them,
        this process could not run Python to resume them, and the test would
        hang instead of failing."""
        pids = " ".join(str(p.pid) for p in procs)
        watchdog = subprocess.Popen(
            ["sh", "-c", f"sleep {limit_s}; kill -CONT {pids}"], preexec_fn=_die_with_parent
        )
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        try:
            for p in procs:
                _wait_stopped(p.pid)
            yield
        finally:
            for p in procs:
                p.send_signal(signal.SIGCONT)
            watchdog.kill()
            watchdog.wait()


def _wait_stopped(pid: int, timeout_s: float = 10) -> None:
    """Waits until every thread of `pid` is stopped.

    kill(SIGSTOP) returns once the signal is queued, not once the process
    stopped: the kernel wakes one thread to take the signal, and only that
    thread tells the others to stop. Until each is scheduled (long, on a
    loaded machine), the rest keep running: a daemon's RPC thread could
    still answer a request sent right after kill() returned. That is how
    test_parallel_metadata_calls once saw a stat answered by a "stopped"
    MDS."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that just exited
                stat = (task / "stat").read_text()
                # The state follows the parenthesized command name.
                states.append(stat.rsplit(")", 1)[1].split()[0])
        if states and all(st in ("T", "t") for st in states):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop within {timeout_s} s: {states}")
        time.sleep(0.005)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    lc = LocalCluster(tmp_path_factory.mktemp("pstorage"))
    try:
        lc.start()
        yield lc
    finally:
        lc.stop()


@pytest.fixture
def cluster(local_cluster: LocalCluster) -> Iterator[pstorage.Cluster]:
    """A client connected to the test cluster, closed after the test."""
    with pstorage.Cluster(local_cluster.name, local_cluster.conf_dir, timeout=30) as c:
        yield c


@pytest.fixture
def tdir(cluster: pstorage.Cluster, request: pytest.FixtureRequest) -> str:
    """A fresh directory in the cluster for one test."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name[:40])
    path = f"/{safe}-{uuid.uuid4().hex[:8]}"
    cluster.mkdir(path)
    return path


def pattern(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    import random

    return random.Random(seed).randbytes(size)
