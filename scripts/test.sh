#!/usr/bin/env bash
# Runs the whole pstorage test suite: formatting, lints, unit tests,
# integration tests with real daemons on 127.0.0.1 in temp dirs, then every
# extra suite in scripts/test.d/ (SDKs, real clients), in name order.
#
# `scripts/test.sh --long` then runs the long campaigns too: every test
# named `long_*` and marked `#[ignore = "long: ..."]` (twins at the default
# timeouts, large copies, long fault campaigns), and every script in
# scripts/long.d/. Run it before resolving an issue whose behaviour it covers.
set -euo pipefail
cd "$(dirname "$0")/.."
long=0
for arg in "$@"; do
  case "$arg" in
    --long) long=1 ;;
    *) echo "usage: scripts/test.sh [--long]" >&2; exit 2 ;;
  esac
done
scripts/install-deps.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if [ "${CI:-}" = true ]; then
  # A clean one-shot build gains nothing from incremental caches, which
  # would take as much disk as the build itself; the test clusters' chunk
  # servers share this disk.
  export CARGO_INCREMENTAL=0
fi
df -h . || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# rustdoc's warnings (broken or private intra-doc links) fail the suite too.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
# The integration tests run the daemons' binaries of the same profile.
cargo build --workspace --bins
# Every test binary runs even after one fails, so a red run names all of
# its failures (a disk as small as CI's once failed 39 tests in 10
# binaries; cargo had stopped at the first).
cargo test --workspace --no-fail-fast -- --test-threads=2
for suite in scripts/test.d/*.sh; do
  [ -e "$suite" ] || continue
  echo "== $suite"
  "$suite"
done
if [ "$long" = 1 ]; then
  echo "== long tests (cargo test -- --ignored long_)"
  cargo test --workspace -- --ignored --test-threads=1 long_
  for suite in scripts/long.d/*.sh; do
    [ -e "$suite" ] || continue
    echo "== $suite"
    "$suite"
  done
fi
