#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer, nightly) for
# SECONDS each, starting from the committed corpus fuzz/corpus/TARGET, and
# fails (exit 1) if any target crashes, times out or runs out of memory;
# prints the executions of each. New interesting inputs go to
# target/fuzz-corpus/TARGET (kept between runs, not committed), crashes to
# fuzz/artifacts/TARGET/ (reproduce one with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`).
# The committed corpus is small seeds (see docs/design.md, "Fuzzing").
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# FUZZ_JOBS targets run at once (default: the number of CPUs, at most 4).
# FUZZ_RSS_MB (default 2048) is the memory limit of a target, and of a
# single allocation: a decoder that allocates what a length field claims
# fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh SECONDS [TARGET...]" >&2
  exit 2
fi
secs=$1
shift
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "installing the nightly toolchain (rustup, one time)" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install, one time)" >&2
  cargo install --locked --quiet cargo-fuzz
fi
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
jobs=${FUZZ_JOBS:-$(nproc)}
[ "$jobs" -gt 4 ] && jobs=4
rss=${FUZZ_RSS_MB:-2048}

# One build of every target (optimized, with debug assertions and overflow
# checks, AddressSanitizer); the runs use these binaries as built (a source
# edited meanwhile does not rebuild them halfway through).
cargo +nightly fuzz build
bin_dir=fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

logs=target/fuzz-logs
mkdir -p "$logs"
run_one() {
  local t=$1
  local corpus=target/fuzz-corpus/$t
  mkdir -p "$corpus" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  # The first corpus directory receives the new inputs; the committed one
  # is only read.
  "$bin_dir/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$secs" \
    -rss_limit_mb="$rss" -malloc_limit_mb="$rss" -timeout=10 -print_final_stats=1 -seed="${FUZZ_SEED:-0}" \
    "$corpus" "fuzz/corpus/$t" >"$logs/$t.log" 2>&1
}

status=0
declare -A pids=()
report() {
  local t=$1 rc=$2 execs
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -1 || true)
  if [ "$rc" = 0 ]; then
    printf '%-20s ok      %12s executions in %ss\n' "$t" "${execs:-?}" "$secs"
  else
    printf '%-20s FAILED  %12s executions (exit %s); log %s:\n' "$t" "${execs:-?}" "$rc" "$logs/$t.log"
    grep -E 'ERROR|panicked|Test unit written|Base64|SUMMARY' "$logs/$t.log" | head -20 | sed 's/^/    /'
    status=1
  fi
}
# Needs bash >= 5.1 (wait -p).
reap() {
  local finished rc=0
  wait -n -p finished "${!pids[@]}" || rc=$?
  report "${pids[$finished]}" "$rc"
  unset "pids[$finished]"
}
for t in "${targets[@]}"; do
  while [ "${#pids[@]}" -ge "$jobs" ]; do
    reap
  done
  run_one "$t" &
  pids[$!]=$t
done
while [ "${#pids[@]}" -gt 0 ]; do
  reap
done
exit $status
