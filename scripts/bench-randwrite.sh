#!/usr/bin/env bash
# The standard 4 KiB random write job (../shared/bench/jobs.fio: qd16,
# 15 s) through `pstorage nbd-serve` on a fresh local cluster (see
# scripts/lib/bench-cluster.sh), after the standard 1 GiB sequential
# write lays out the image, with more than the runner prints: p99.9, max
# and mean latency, the whole machine's CPU per write, and the latency
# in 500 ms windows (whether the tail is spread or comes in stalls).
#   scripts/bench-randwrite.sh [LABEL]
# Environment: BIN, JOURNAL, BENCH_DIR, CS_COUNT as for bench-nbd.sh;
# KEEP_CACHES=1 skips the `sync; drop_caches` between the two jobs (the
# runner drops them); PERF=FILE records `perf record -a -g` for 8 s in
# the middle of the job (PERF_ARGS replaces `-a -g`, e.g. "-p PID
# --call-graph dwarf" for the callers of glibc's malloc, which keeps no
# frame pointers); WINDOWS=1 prints the windows.
# JOB=randread runs the standard 4 KiB random read job instead (after the
# same sequential write and cache drop: cold reads first). RUNTIME=120
# runs the job for 120 s instead of the standard 15 (the steady state, with
# the writeback of three replicas and the journal's trims competing); QD=1
# at queue depth 1 instead of 16 (latency). LOCAL=1 also runs the job on
# the local disk under the cluster (libaio, O_DIRECT), for the ratio.
# Compare builds by alternating runs of this script with BIN pointing at
# each (or CS_ARGS, e.g. "--threads 2"); the CPU figure includes
# everything on the machine, perf included.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-pstorage}
. scripts/lib/bench-cluster.sh
export ENGINE=nbd TARGET="uri=nbd://127.0.0.1:$nbd_port/bench.img" DIRECT=0
jobs=$(dirname "$runner")/jobs.fio
fio --section=seqwrite --output-format=json --output="$dir/seq.json" "$jobs" >/dev/null
if [ -z "${KEEP_CACHES:-}" ]; then
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || echo "cannot drop caches (not root)" >&2
fi
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
job=${JOB:-randwrite}
case $job in randwrite) dir_key=write ;; randread) dir_key=read ;; *) echo "JOB: randwrite or randread" >&2; exit 2 ;; esac
if [ -n "${RUNTIME:-}${QD:-}" ]; then
  # A section's own options win over the command line's: a copy says them.
  sed -e "s/^runtime=.*/runtime=${RUNTIME:-15}/" -e "s/^iodepth=.*/iodepth=${QD:-16}/" \
    "$jobs" >"$dir/jobs.fio"
  jobs=$dir/jobs.fio
fi
if [ -n "${LOCAL:-}" ]; then
  mkdir -p "$dir/local"
  ENGINE=libaio TARGET="filename=$dir/local/fio.dat" DIRECT=1 \
    fio --section=seqwrite --output-format=json --output="$dir/lseq.json" "$jobs" >/dev/null
  ENGINE=libaio TARGET="filename=$dir/local/fio.dat" DIRECT=1 \
    fio --section="$job" --output-format=json --output="$dir/local.json" "$jobs" >/dev/null
  python3 - "$dir/local.json" "$job" "$dir_key" <<'PY'
import json, sys
x = json.load(open(sys.argv[1]))["jobs"][0][sys.argv[3]]
p = x["clat_ns"].get("percentile", {})
print(f'{"local-disk":<12} {sys.argv[2]} {x["iops"]:7.0f} IOPS  p50 {p["50.000000"]/1e3:6.0f}  '
      f'p99 {p["99.000000"]/1e3:6.0f}  p99.9 {p["99.900000"]/1e3:6.0f}  mean {x["clat_ns"]["mean"]/1e3:6.0f} us')
PY
  rm -f "$dir/local/fio.dat"
fi
t0=$(cpu_ticks)
fio --section="$job" --output-format=json --output="$dir/rw.json" \
  --write_lat_log="$dir/rw" "$jobs" >/dev/null &
fio_pid=$!
if [ -n "${PERF:-}" ]; then
  sleep 3
  # shellcheck disable=SC2086 # PERF_ARGS is a list of options
  perf record ${PERF_ARGS:--a -g} -o "$PERF" -- sleep 8 >/dev/null 2>&1
fi
wait $fio_pid
t1=$(cpu_ticks)
python3 - "$dir/rw.json" "$dir/rw_clat.1.log" "$label" $((t1 - t0)) "${WINDOWS:-}" "$job" "$dir_key" <<'PY'
import json, os, sys
from collections import defaultdict
x = json.load(open(sys.argv[1]))["jobs"][0][sys.argv[7]]
c = x["clat_ns"]
p = c.get("percentile", {})
cpu = int(sys.argv[4]) / os.sysconf("SC_CLK_TCK") / x["total_ios"] * 1e6
print(f'{sys.argv[3]:<12} {sys.argv[6]} {x["iops"]:7.0f} IOPS  p50 {p["50.000000"]/1e3:6.0f}  '
      f'p99 {p["99.000000"]/1e3:6.0f}  p99.9 {p["99.900000"]/1e3:6.0f}  '
      f'mean {c["mean"]/1e3:6.0f} us  max {c["max"]/1e6:6.1f} ms  cpu/op {cpu:5.1f} us')
if sys.argv[5]:
    windows = defaultdict(list)
    for line in open(sys.argv[2]):
        t, lat = line.split(",")[:2]
        windows[int(t) // 500].append(int(lat))
    for w in sorted(windows):
        v = sorted(windows[w])
        n = len(v)
        print(f'  {w / 2:5.1f} s  {n:5d} writes  p50 {v[n // 2] / 1e6:5.2f}  '
              f'p99 {v[int(n * .99)] / 1e6:5.2f}  max {v[-1] / 1e6:6.1f} ms')
PY
