#!/usr/bin/env bash
# The standard fio jobs (../shared/bench/run: 1 MiB sequential and 4 KiB
# random, queue depth 16; then the sequential write again, over the
# written image) through `pstorage nbd-serve` on a fresh local
# cluster (1 MDS, 3 chunk servers on 127.0.0.1, replicas 3:2, 256 MiB
# chunks: the defaults), and on the local disk under it in the same run.
#   scripts/bench-nbd.sh [LABEL]
# Environment: BIN (daemons and CLI, default target/release, built if
# missing), BENCH_DIR (default a temp dir under ./target), JOURNAL (a
# directory: every CS gets `make-cs -j JOURNAL/csN`), CS_COUNT (3).
# Everything it starts is stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
label=${1:-pstorage}
bin=${BIN:-$top/target/release}
runner=${BENCH_RUNNER:-$top/../shared/bench/run}
count=${CS_COUNT:-3}
if [ ! -x "$bin/pstorage-csd" ]; then
  cargo build --release --workspace --bins
fi
command -v fio >/dev/null || scripts/install-deps.sh
dir=${BENCH_DIR:-$(mktemp -d "$top/target/bench-nbd.XXXXXX")}
mkdir -p "$dir"
export PSTORAGE_CONF_DIR=$dir/conf
name=bench
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo bench | "$bin/pstorage" -c $name make-mds -I -a 127.0.0.1:$port -r "$dir/mds" -p >/dev/null
"$bin/pstorage-mdsd" -r "$dir/mds" >"$dir/mds.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for i in $(seq 1 "$count"); do
  args=(-r "$dir/cs$i")
  [ -n "${JOURNAL:-}" ] && args+=(-j "$JOURNAL/cs$i")
  "$bin/pstorage" -c $name make-cs "${args[@]}" >/dev/null
  "$bin/pstorage-csd" -r "$dir/cs$i" >"$dir/cs$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 200); do
  [ "$("$bin/pstorage" -c $name stat 2>/dev/null | grep -c ' active ')" -ge "$count" ] && break
  sleep 0.2
done
"$bin/pstorage" -c $name truncate -s 1G /bench.img
"$bin/pstorage" -c $name nbd-serve --listen 127.0.0.1:0 >"$dir/nbd.out" 2>"$dir/nbd.log" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$dir/nbd.out" 2>/dev/null && break; sleep 0.1; done
nbd_port=$(sed -n 's/.*listening on tcp .*:\([0-9]*\)$/\1/p' "$dir/nbd.out")
mkdir -p "$dir/local"
"$runner" "local-disk" dir "$dir/local"
"$runner" "$label" nbd "nbd://127.0.0.1:$nbd_port/bench.img"
# The same sequential job again over the written image: overwrites (big
# ones move to the blocks' other slot in the chunk files, see
# docs/formats.md) rather than writes into new space.
ENGINE=nbd TARGET="uri=nbd://127.0.0.1:$nbd_port/bench.img" DIRECT=0 \
  fio --section=seqwrite --output-format=json --output="$dir/overwrite.json" \
  "$(dirname "$runner")/jobs.fio" >/dev/null
python3 - "$dir/overwrite.json" "$label" <<'PY'
import json, sys
x = json.load(open(sys.argv[1]))["jobs"][0]["write"]
p = x.get("clat_ns", {}).get("percentile", {})
print(f'{sys.argv[2]:<16} {"overwrite":<9} write {x["bw_bytes"]/2**20:8.1f} MiB/s {x["iops"]:9.0f} IOPS '
      f'p50 {p.get("50.000000", 0)/1000:8.1f} us  p99 {p.get("99.000000", 0)/1000:8.1f} us')
PY
"$bin/pstorage" -c $name stat | sed -n '/CS nodes/,$p'
