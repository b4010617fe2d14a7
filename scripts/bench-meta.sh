#!/usr/bin/env bash
# Metadata operations per second on a fresh local cluster (MDS_COUNT MDSes,
# 3 chunk servers, defaults), next to the local file system in the same
# run: `pstorage bench --metadata` (create, stat, rename, unlink through the
# SDK with CLIENTS clients of FILES files each), then, unless NO_MOUNT is
# set, empty-file creates through `pstorage-mount` by CLIENTS processes
# (FILES each) against the same on the local directory. After the SDK
# passes it prints, from each MDS's metrics, the mean time the calls it
# served took inside it and the commands per Raft entry (the batching).
#   scripts/bench-meta.sh [LABEL]
# Environment: BIN (default target/release, built if missing), MDS_COUNT
# (1 or 3, default 1), CLIENTS (8), FILES (1000), BENCH_DIR, BENCH_CLI (the
# `pstorage` that runs the bench, default BIN's: an older build's daemons
# can be measured with this build's bench).
# Everything it starts is stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-pstorage}
top=$PWD
bin=${BIN:-$top/target/release}
mds_count=${MDS_COUNT:-1}
clients=${CLIENTS:-8}
files=${FILES:-1000}
if [ ! -x "$bin/pstorage-csd" ]; then
  cargo build --release --workspace --bins
fi
dir=${BENCH_DIR:-$(mktemp -d "$top/target/bench-meta.XXXXXX")}
mkdir -p "$dir"
export PSTORAGE_CONF_DIR=$dir/conf
name=benchmeta
pids=()
mnt=$dir/mnt
cleanup() {
  fusermount3 -u "$mnt" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; }

for i in $(seq 1 "$mds_count"); do
  port=$(free_port)
  if [ "$i" = 1 ]; then
    echo bench-password | "$bin/pstorage" -c $name make-mds -I -a 127.0.0.1:$port -r "$dir/mds$i" -p >/dev/null
  else
    "$bin/pstorage" -c $name make-mds -a 127.0.0.1:$port -r "$dir/mds$i" >/dev/null
  fi
  metrics_port[$i]=$(free_port)
  "$bin/pstorage-mdsd" -r "$dir/mds$i" --metrics 127.0.0.1:${metrics_port[$i]} >"$dir/mds$i.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
done
for i in 1 2 3; do
  "$bin/pstorage" -c $name make-cs -r "$dir/cs$i" >/dev/null
  "$bin/pstorage-csd" -r "$dir/cs$i" >"$dir/cs$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 200); do
  [ "$("$bin/pstorage" -c $name stat 2>/dev/null | grep -c ' active ')" -ge 3 ] && break
  sleep 0.2
done
echo "== $label: $mds_count MDS(es), $clients clients x $files files (SDK)"
mkdir -p "$dir/local"
"${BENCH_CLI:-$bin/pstorage}" -c $name bench --metadata --clients "$clients" --files "$files" --local-dir "$dir/local"
# Where the time goes: the mean time each kind of call took inside a
# server (from its metrics; the bench's figures include the network and
# the client) since a snapshot of them, and for an MDS how many commands
# shared a Raft entry.
#   means WHO PORT SNAPSHOT: prints WHO's means since SNAPSHOT (a file, or
#   /dev/null for all), then saves its metrics there (not to /dev/null).
means() {
  local who=$1 port=$2 snapshot=$3 now
  now=$(curl -s "http://127.0.0.1:$port/metrics")
  printf '%s\n' "$now" | python3 -c "
import re, sys
def read(lines):
    sums, counts, stats = {}, {}, {}
    for line in lines:
        m = re.match(r'pstorage_(?:mds|fuse)_request_seconds_(sum|count)\{op=\"(\w+)\"\} (\S+)', line)
        if m:
            (sums if m[1] == 'sum' else counts)[m[2]] = float(m[3])
        m = re.match(r'pstorage_mds_commit_(entries|commands)_total (\S+)', line)
        if m:
            stats[m[1]] = float(m[2])
    return sums, counts, stats
sums, counts, stats = read(sys.stdin)
s0, c0, t0 = read(open(sys.argv[1]))
counts = {op: n - c0.get(op, 0) for op, n in counts.items()}
ops = ', '.join(f'{op} {(sums[op] - s0.get(op, 0)) / counts[op] * 1e6:.0f} us ({counts[op]:.0f})'
                for op in sorted(counts) if counts[op] >= 100)
entries = stats.get('entries', 0) - t0.get('entries', 0)
batch = f'; {(stats[\"commands\"] - t0.get(\"commands\", 0)) / entries:.1f} commands per Raft entry' if entries else ''
print(f'$who (served): mean {ops}{batch}')
" "$snapshot"
  [ "$snapshot" = /dev/null ] || printf '%s\n' "$now" >"$snapshot"
}
for i in $(seq 1 "$mds_count"); do
  means "mds$i" "${metrics_port[$i]}" /dev/null
  curl -s "http://127.0.0.1:${metrics_port[$i]}/metrics" >"$dir/mds$i.metrics"
done
[ -n "${NO_MOUNT:-}" ] && exit 0

# Creates through the mount: CLIENTS processes, FILES empty files each.
creates() { # DIR: prints files per second, from the first start to the last end
  local root=$1
  for c in $(seq 1 "$clients"); do mkdir -p "$root/c$c"; done
  for c in $(seq 1 "$clients"); do
    python3 - "$root/c$c" "$files" >"$root/c$c.time" <<'PY' &
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
start = time.time()
for j in range(n):
    os.close(os.open(os.path.join(d, f"f{j}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
print(start, time.time())
PY
  done
  wait
  cat "$root"/c*.time | python3 -c "
import sys
t = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
print(f'{$clients * $files / (max(e for _, e in t) - min(s for s, _ in t)):.0f}')"
}
mkdir -p "$mnt" "$dir/local-mount"
mount_metrics=$(free_port)
"$bin/pstorage-mount" -f -c $name --metrics 127.0.0.1:$mount_metrics "$mnt" >"$dir/mount.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
local_rate=$(creates "$dir/local-mount")
mount_rate=$(creates "$mnt")
python3 -c "print(f'mount    create ({$clients} processes): {$mount_rate} files/s; local {$local_rate} files/s; ratio {$mount_rate / $local_rate:.3f}x')"
# Where a create through the mount went: the mount's requests (what the
# kernel asked for each file), and the MDSes' calls during the pass.
means mount "$mount_metrics" /dev/null
for i in $(seq 1 "$mds_count"); do means "mds$i" "${metrics_port[$i]}" "$dir/mds$i.metrics"; done
