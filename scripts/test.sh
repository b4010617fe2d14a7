#!/usr/bin/env bash
# Runs the whole pstorage test suite: formatting, lints, unit tests,
# integration tests with real daemons on 127.0.0.1 in temp dirs, then every
# extra suite in scripts/test.d/ (SDKs, real clients), in name order.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests run the daemons' binaries of the same profile.
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
for suite in scripts/test.d/*.sh; do
  [ -e "$suite" ] || continue
  echo "== $suite"
  "$suite"
done
