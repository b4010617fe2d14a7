#!/usr/bin/env bash
# The Python SDK suite: builds the pstorage wheel (maturin, abi3) into a
# virtualenv under target/, installs it, and runs the pytest suite in
# pstorage-py/tests against a real local cluster (daemons from target/debug).
# Needs CPython >= 3.9 with pip; PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
venv=target/py-venv
if [ ! -x "$venv/bin/python" ]; then
  if ! "$py" -m venv "$venv" 2>/dev/null; then
    # Debian/Ubuntu ship venv separately (python3.X-venv).
    rm -rf "$venv"
    ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "python$ver-venv" >/dev/null
    "$py" -m venv "$venv"
  fi
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.5,<2" "pytest>=7.3" "mypy>=1.5"
rm -rf target/wheels/python
(cd pstorage-py && "../$venv/bin/maturin" build --quiet --out ../target/wheels/python)
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/python/pstorage-*.whl
# Run from outside the source tree so the installed wheel is what is tested.
cd pstorage-py/tests
exec "../../$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" .
