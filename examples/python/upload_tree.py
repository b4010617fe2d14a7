#!/usr/bin/env python3
"""Uploads a local directory tree into a pstorage cluster, verifies every
file by its SHA-256 read back from the cluster, and prints the cluster's
status.

    upload_tree.py -c CLUSTER [--conf-dir DIR] [--threads N] [--replicas R] LOCAL_DIR REMOTE_DIR

Files are uploaded by several threads at once (the pstorage module releases
the GIL while it waits for the network). Exits 1 if any file differs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import posixpath
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import pstorage

PIECE = 1 << 20


class HashingReader:
    """A local file that hashes what is read from it."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "rb")
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.file.read(n)
        self.hash.update(data)
        return data


def upload(cluster: pstorage.Cluster, local: str, remote: str) -> Tuple[str, int, str]:
    """Copies one file; returns (remote path, size, SHA-256 of the local bytes)."""
    reader = HashingReader(local)
    with reader.file, cluster.open(remote, "wb") as dst:
        shutil.copyfileobj(reader, dst, PIECE)
        size = dst.tell()
    return remote, size, reader.hash.hexdigest()


def cluster_sha256(cluster: pstorage.Cluster, remote: str) -> str:
    h = hashlib.sha256()
    with cluster.open(remote, "rb") as f:
        while data := f.read(PIECE):
            h.update(data)
    return h.hexdigest()


def print_status(status: pstorage.ClusterStatus) -> None:
    print(f"cluster {status.cluster_name}: {status.health}")
    print(
        f"  {status.files} files, {status.dirs} dirs, {status.chunks} chunks "
        f"({status.chunks_degraded} degraded, {status.chunks_urgent} urgent), "
        f"{status.logical_bytes} bytes"
    )
    for m in status.mds:
        print(f"  MDS {m.id} {m.addr} {m.role}")
    for cs in status.cs:
        used = cs.total_bytes - cs.free_bytes
        print(
            f"  CS {cs.id} {cs.addr} {cs.status}: {cs.chunks} chunks, "
            f"{used / 2**30:.1f} of {cs.total_bytes / 2**30:.1f} GiB used"
        )


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-c", "--cluster", required=True, help="cluster name")
    p.add_argument("--conf-dir", help="configuration root (default $PSTORAGE_CONF_DIR)")
    p.add_argument("--threads", type=int, default=4, help="parallel uploads (default 4)")
    p.add_argument("--replicas", help="replicas of the uploaded tree, e.g. 3 or 3:2")
    p.add_argument("local_dir")
    p.add_argument("remote_dir")
    args = p.parse_args(argv)
    if not os.path.isdir(args.local_dir):
        p.error(f"{args.local_dir} is not a directory")
    if not args.remote_dir.startswith("/"):
        p.error("REMOTE_DIR must be an absolute cluster path, e.g. /backup")

    started = time.monotonic()
    with pstorage.Cluster(args.cluster, args.conf_dir) as cluster:
        cluster.makedirs(args.remote_dir, exist_ok=True)
        if args.replicas:
            cluster.set_attr(args.remote_dir, replicas=args.replicas)
        jobs: List[Tuple[str, str]] = []
        for dirpath, dirnames, filenames in os.walk(args.local_dir):
            dirnames.sort()
            rel = os.path.relpath(dirpath, args.local_dir)
            remote_dir = args.remote_dir if rel == "." else posixpath.join(args.remote_dir, *rel.split(os.sep))
            cluster.makedirs(remote_dir, exist_ok=True)
            for name in sorted(filenames):
                local = os.path.join(dirpath, name)
                if os.path.isfile(local):
                    jobs.append((local, posixpath.join(remote_dir, name)))

        with ThreadPoolExecutor(max(1, args.threads)) as pool:
            uploaded = list(pool.map(lambda job: upload(cluster, *job), jobs))
            total = sum(size for _, size, _ in uploaded)
            elapsed = time.monotonic() - started
            print(
                f"uploaded {len(uploaded)} files, {total} bytes in {elapsed:.2f} s "
                f"({total / 2**20 / max(elapsed, 1e-9):.1f} MiB/s)"
            )
            digests = list(pool.map(lambda u: cluster_sha256(cluster, u[0]), uploaded))

        bad = 0
        for (remote, size, want), got in zip(uploaded, digests):
            stat = cluster.stat(remote)
            if got != want or stat.size != size:
                bad += 1
                print(f"MISMATCH {remote}: sha256 {got} (want {want}), size {stat.size} (want {size})")
        if bad:
            print(f"verification FAILED: {bad} of {len(uploaded)} files differ")
        else:
            print(f"verified {len(uploaded)} files by SHA-256")
        print_status(cluster.status())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
