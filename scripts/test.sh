#!/usr/bin/env bash
# Runs the whole pstorage test suite: formatting, lints, unit tests,
# and integration tests with real daemons on 127.0.0.1 in temp dirs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests run the daemons' binaries of the same profile.
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
