#!/usr/bin/env python3
"""Sequential 1 MiB write and read throughput of the Python SDK next to the
Rust SDK's (`pstorage bench`), in the same run on the same cluster.

    seq_bench.py -c CLUSTER [--size BYTES] [--depths 1,16] [--pstorage PATH]

For each depth D the Python side runs D threads over one file with a write
(or read) lease, each taking the next 1 MiB offset in turn -- the pattern
of `pstorage bench --depth D` -- so both sides keep D requests in flight.
Depth 1 is the plain `f.write(block)` / `f.read(1 MiB)` loop of a single
thread. Replication 3. A benchmark, not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import threading
import time
from typing import Dict, List, Tuple

import pstorage

BLOCK = 1 << 20


def python_pass(cluster: pstorage.Cluster, path: str, size: int, depth: int, write: bool) -> float:
    """MiB/s of one sequential pass with `depth` threads."""
    blocks = size // BLOCK
    payload = os.urandom(BLOCK)
    mode = "wb" if write else "rb"
    with cluster.open(path, mode) as f:
        started = time.perf_counter()
        if depth == 1:
            for _ in range(blocks):
                if write:
                    f.write(payload)
                else:
                    assert len(f.read(BLOCK)) == BLOCK
        else:
            counter = itertools.count()
            lock = threading.Lock()
            errors: List[BaseException] = []

            def worker() -> None:
                try:
                    while True:
                        with lock:
                            i = next(counter)
                        if i >= blocks:
                            return
                        if write:
                            f.pwrite(payload, i * BLOCK)
                        else:
                            assert len(f.pread(BLOCK, i * BLOCK)) == BLOCK
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=worker) for _ in range(depth)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        if write:
            f.flush()
        elapsed = time.perf_counter() - started
    return size / BLOCK / elapsed


def rust_pass(pstorage_bin: str, cluster: str, size: int, depth: int) -> Dict[str, float]:
    """MiB/s of `pstorage bench` seq-write-1M and seq-read-1M at `depth`."""
    out = subprocess.run(
        [pstorage_bin, "-c", cluster, "bench", "--replicas", "3", "--no-local",
         "--size", str(size), "--seconds", "1", "--depth", str(depth)],
        check=True, capture_output=True, text=True,
    ).stdout
    result = {}
    for line in out.splitlines():
        m = re.match(r"replicas=3\s+(seq-(?:write|read)-1M)\s+([\d.]+)", line)
        if m:
            result[m.group(1)] = float(m.group(2))
    if len(result) != 2:
        raise RuntimeError(f"unexpected `pstorage bench` output:\n{out}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-c", "--cluster", required=True)
    p.add_argument("--conf-dir")
    p.add_argument("--size", type=int, default=512 << 20, help="bytes per pass (default 512 MiB)")
    p.add_argument("--depths", default="1,16", help="comma-separated depths (default 1,16)")
    p.add_argument("--pstorage", default="target/release/pstorage", help="the pstorage CLI")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; best of each is kept")
    args = p.parse_args()
    size = args.size // BLOCK * BLOCK
    depths = [int(d) for d in args.depths.split(",")]
    best: Dict[Tuple[str, int, str], float] = {}

    def keep(key: Tuple[str, int, str], v: float) -> None:
        best[key] = max(best.get(key, 0.0), v)

    with pstorage.Cluster(args.cluster, args.conf_dir) as cluster:
        cluster.makedirs("/.pybench", exist_ok=True)
        cluster.set_attr("/.pybench", replicas="3:2")
        path = f"/.pybench/seq-{os.getpid()}"
        try:
            for _ in range(args.rounds):
                for d in depths:
                    r = rust_pass(args.pstorage, args.cluster, size, d)
                    keep(("rust", d, "write"), r["seq-write-1M"])
                    keep(("rust", d, "read"), r["seq-read-1M"])
                    keep(("python", d, "write"), python_pass(cluster, path, size, d, True))
                    keep(("python", d, "read"), python_pass(cluster, path, size, d, False))
        finally:
            cluster.remove(path)
    print(f"sequential 1 MiB, replicas=3, {size >> 20} MiB per pass, best of {args.rounds} rounds")
    print(f"{'pattern':<14} {'depth':>5} {'Rust MiB/s':>11} {'Python MiB/s':>13} {'Python/Rust':>12}")
    for d in depths:
        for op in ("write", "read"):
            rust, py = best[("rust", d, op)], best[("python", d, op)]
            print(f"{'seq-' + op + '-1M':<14} {d:>5} {rust:>11.1f} {py:>13.1f} {py / rust:>12.0%}")
    # The plain single-threaded Python loop against Rust at its deepest queue.
    deep = max(depths)
    if deep != 1 and 1 in depths:
        for op in ("write", "read"):
            rust, py = best[("rust", deep, op)], best[("python", 1, op)]
            print(
                f"seq-{op}-1M: one Python thread {py:.1f} MiB/s = {py / rust:.0%} of Rust at depth {deep} "
                f"({rust:.1f} MiB/s)"
            )

if __name__ == "__main__":
    main()
