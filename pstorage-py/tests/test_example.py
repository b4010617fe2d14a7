"""examples/python/upload_tree.py against the test cluster, and the type
information the wheel ships (checked with mypy when it is installed)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pstorage
from conftest import CHUNK_SIZE, REPO, LocalCluster, pattern

EXAMPLE = REPO / "examples" / "python" / "upload_tree.py"


def make_tree(root: Path) -> dict:
    files = {
        "a.txt": b"hello\n",
        "empty": b"",
        "sub/b.bin": pattern(20, 3000),
        "sub/deeper/big.bin": pattern(21, 2 * CHUNK_SIZE + 17),
        "sub/deeper/c": pattern(22, 4096),
        "other/d": pattern(23, 100_000),
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "emptydir").mkdir()
    return files


def test_upload_tree(cluster: pstorage.Cluster, local_cluster: LocalCluster, tdir: str, tmp_path: Path) -> None:
    files = make_tree(tmp_path / "tree")
    remote = f"{tdir}/backup"
    out = subprocess.run(
        [
            sys.executable, str(EXAMPLE), "-c", local_cluster.name,
            "--conf-dir", str(local_cluster.conf_dir), "--replicas", "2",
            str(tmp_path / "tree"), remote,
        ],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"uploaded {len(files)} files" in out.stdout
    assert f"verified {len(files)} files by SHA-256" in out.stdout
    assert f"cluster {local_cluster.name}: " in out.stdout
    assert out.stdout.count("  CS ") == 3
    for rel, data in files.items():
        with cluster.open(f"{remote}/{rel}") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest(), rel
        assert cluster.stat(f"{remote}/{rel}").replicas == 2
    assert cluster.stat(f"{remote}/emptydir").is_dir


def test_upload_tree_bad_arguments(local_cluster: LocalCluster, tmp_path: Path) -> None:
    base = [sys.executable, str(EXAMPLE), "-c", local_cluster.name, "--conf-dir", str(local_cluster.conf_dir)]
    out = subprocess.run([*base, str(tmp_path / "nope"), "/x"], capture_output=True, text=True)
    assert out.returncode == 2 and "is not a directory" in out.stderr
    out = subprocess.run([*base, str(tmp_path), "relative"], capture_output=True, text=True)
    assert out.returncode == 2 and "absolute" in out.stderr


def test_wheel_ships_type_information() -> None:
    pkg = Path(pstorage.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_pstorage.pyi").exists()


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_types_check_with_mypy(tmp_path: Path) -> None:
    # The package, the example and a misuse, checked against the installed package.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pstorage\n"
        "c = pstorage.Cluster('x')\n"
        "n: int = c.stat('/').kind\n"
    )
    env = dict(os.environ, MYPYPATH="")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *a],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    for target in ([str(EXAMPLE)], ["-p", "pstorage"]):
        good = run(*target)
        assert good.returncode == 0, good.stdout + good.stderr
    out = run(str(bad))
    assert out.returncode == 1 and "Incompatible types in assignment" in out.stdout, out.stdout
