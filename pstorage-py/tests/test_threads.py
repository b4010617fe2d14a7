"""The GIL is released while the library waits for the network, so Python
threads do I/O in parallel.

Instead of racing raw throughput on a shared machine, these tests make the
servers unable to answer (SIGSTOP) and check that several threads are
inside the library at the same time while the main thread keeps running
Python code. Were the GIL held during a wait, the first blocked call would
freeze every other thread until its timeout, and the checks would fail."""

from __future__ import annotations

import threading
import time
from typing import Callable, List

import pstorage
from conftest import CHUNK_SIZE, LocalCluster, pattern

THREADS = 4


def run_blocked(calls: List[Callable[[], object]], pause: Callable[[], object]) -> List[object]:
    """Starts every call on its own thread while the servers are paused;
    asserts that all of them are waiting inside the library at once while
    this thread runs; then lets the servers go and returns the results."""
    entered = threading.Semaphore(0)
    results: List[object] = [None] * len(calls)
    done = [False] * len(calls)

    def worker(i: int) -> None:
        entered.release()
        try:
            results[i] = calls[i]()
        except BaseException as e:  # reported below
            results[i] = e
        done[i] = True

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    with pause():  # type: ignore[attr-defined]
        for t in threads:
            t.start()
        for _ in calls:
            assert entered.acquire(timeout=5), "a thread did not start: the GIL is held"
        # Python keeps running here while every call waits for the servers.
        ticks = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            ticks += 1
            time.sleep(0.001)
        assert ticks > 50, f"the main thread ran only {ticks} times: the GIL is held"
        finished = [repr(r) for r, d in zip(results, done) if d]
        assert not finished, f"{len(finished)} calls finished while the servers were stopped: {finished}"
    for t in threads:
        t.join(timeout=60)
    assert all(done)
    for r in results:
        assert not isinstance(r, BaseException), repr(r)
    return results


def test_parallel_reads_and_writes(cluster: pstorage.Cluster, local_cluster: LocalCluster, tdir: str) -> None:
    datas = [pattern(10 + i, CHUNK_SIZE + 1000) for i in range(THREADS)]
    readers, writers = [], []
    for i, data in enumerate(datas):
        with cluster.open(f"{tdir}/r{i}", "wb") as f:
            f.write(data)
        readers.append(cluster.open(f"{tdir}/r{i}", "rb"))
        writers.append(cluster.open(f"{tdir}/w{i}", "wb"))
    for f in readers:
        f.pread(10, 0)  # chunk maps cached: the calls below only need the CSes
    for f in writers:
        f.write(b"warm")
    pause = lambda: local_cluster.paused(local_cluster.cs)  # noqa: E731
    got = run_blocked([lambda f=f: f.read() for f in readers], pause)
    assert got == datas
    run_blocked([lambda f=f, d=d: f.write(d) for f, d in zip(writers, datas)], pause)
    for i, f in enumerate(writers):
        f.close()
        readers[i].close()
        with cluster.open(f"{tdir}/w{i}") as r:
            assert r.read() == b"warm" + datas[i]


def test_parallel_metadata_calls(local_cluster: LocalCluster) -> None:
    """Metadata calls made while the MDS is stopped all wait inside the
    library (with the GIL released) and all succeed once it resumes.

    Nothing answers for a stopped MDS (there is no metadata cache), and no
    call fails early: each MDS call has a deadline (8 s by default,
    PSTORAGE_MDS_CALL_TIMEOUT_MS, at most the Cluster's `timeout`), after
    which the client drops the connection and retries, on another MDS if
    there is one, until `timeout`, then raises TimeoutError (see
    test_thread_speedup_on_timeouts). The MDS is stopped here for well
    under that deadline. `paused` waits until every MDS thread has stopped:
    SIGSTOP is asynchronous, and a stat answered by a still-running MDS
    thread once made this test fail under load."""
    assert local_cluster.mds is not None
    with pstorage.Cluster(local_cluster.name, local_cluster.conf_dir) as c:
        c.stat("/")
        results = run_blocked(
            [lambda: c.stat("/").is_dir for _ in range(THREADS)],
            lambda: local_cluster.paused([local_cluster.mds]),  # type: ignore[list-item]
        )
    assert results == [True] * THREADS


def test_thread_speedup_on_timeouts(local_cluster: LocalCluster) -> None:
    """Four calls that each wait one second for a stopped MDS take about one
    second in four threads, not four: the waits overlap."""
    assert local_cluster.mds is not None
    with pstorage.Cluster(local_cluster.name, local_cluster.conf_dir, timeout=1) as c:
        c.stat("/")
        errors: List[BaseException] = []

        def call() -> None:
            try:
                c.stat("/")
            except TimeoutError as e:
                errors.append(e)

        with local_cluster.paused([local_cluster.mds]):
            started = time.monotonic()
            threads = [threading.Thread(target=call) for _ in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            elapsed = time.monotonic() - started
    assert len(errors) == THREADS
    # Serialized, the four waits would take >= 4 s.
    assert elapsed < 0.75 * THREADS, f"{THREADS} one-second waits took {elapsed:.1f} s"
