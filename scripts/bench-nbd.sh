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
label=${1:-pstorage}
. scripts/lib/bench-cluster.sh
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
