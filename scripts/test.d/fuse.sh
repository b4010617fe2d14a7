#!/usr/bin/env bash
# pstorage-mount through fsx and pjdfstest: installs both (cargo install,
# once; they are not Debian packages), then runs the mount tests that need
# them (#[ignore]d in the plain cargo test run).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
for tool in fsx pjdfstest; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "installing $tool (cargo install, one time)" >&2
    cargo install --locked --quiet "$tool"
  fi
done
cargo test -p pstorage-tests --test mount -- --ignored --test-threads=1
