#!/usr/bin/env bash
# Measures re-replication after the loss of a chunk server, next to a local
# copy of the same bytes on the same disk, in one run:
#   1. starts a local cluster (release build, 1 MDS, --cs chunk servers,
#      default 256 MiB chunks, replicas 3:2) in a temp dir,
#   2. writes --size GiB of random data and waits until it is healthy,
#   3. kill -9 of the chunk server holding the most bytes; the offline
#      timeout is set to 3 s so the wait for it does not hide the copy,
#   4. waits for `stat` to say every chunk is healthy again and reports the
#      rate: the bytes the lost server held / time from the first copy in
#      flight to healthy, and also from the kill,
#   5. copies the lost server's chunk files on the local disk (cp + sync)
#      and reports the ratio.
# usage: scripts/bench-recovery.sh [--size GIB] [--cs N] [--bandwidth BYTES_PER_S]
#   (PSTORAGE_NO_BUILD=1 uses the release binaries already built)
#   --bandwidth sets mds.repl.bandwidth (the cluster default is kept when absent;
#   0 = unlimited).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
size_gib=4
cs_count=4
bandwidth=
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size_gib=$2; shift 2 ;;
    --cs) cs_count=$2; shift 2 ;;
    --bandwidth) bandwidth=$2; shift 2 ;;
    *) echo "usage: $0 [--size GIB] [--cs N] [--bandwidth BYTES_PER_S]" >&2; exit 2 ;;
  esac
done
dir=$(mktemp -d "${TMPDIR:-/var/tmp}/pstorage-recovery.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export PSTORAGE_LOCAL_DIR=$dir PSTORAGE_MDS_PORT=$port PSTORAGE_CS_COUNT=$cs_count
export PSTORAGE_CONF_DIR=$dir/conf
cleanup() {
  scripts/local-cluster.sh stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
scripts/local-cluster.sh >"$dir.start.log" 2>&1 || { cat "$dir.start.log"; exit 1; }
rm -f "$dir.start.log"
pst() { "$top/target/release/pstorage" -c local "$@"; }
now() { date +%s.%N; }
# "Chunks: 16 total: 16 healthy, ..." -> "16 16"
chunk_counts() { pst stat | sed -n 's/^Chunks: \([0-9]*\) total: \([0-9]*\) healthy.*/\1 \2/p'; }
healthy() { local c; c=$(chunk_counts); [ -n "$c" ] && [ "${c% *}" = "${c#* }" ] && [ "${c% *}" != 0 ]; }
in_flight() { pst stat | sed -n 's/^Replication: [0-9]* chunk(s) pending, \([0-9]*\) in flight.*/\1/p'; }

[ -n "$bandwidth" ] && pst set-config "mds.repl.bandwidth=$bandwidth" >/dev/null
pst set-config mds.wd.offline_tout=3000 >/dev/null
echo "writing $size_gib GiB of random data"
head -c $((size_gib << 30)) /dev/urandom | pst put - /data.bin
for _ in $(seq 600); do healthy && break; sleep 0.5; done
healthy || { echo "the cluster never became healthy after the write" >&2; pst stat >&2; exit 1; }

# The victim: the chunk server whose data directory holds the most bytes.
victim= ; victim_bytes=0
for i in $(seq 1 "$cs_count"); do
  b=$(du -sb "$dir/cs$i" | cut -f1)
  if [ "$b" -gt "$victim_bytes" ]; then victim=$i; victim_bytes=$b; fi
done
echo "killing cs$victim, which holds $((victim_bytes >> 20)) MiB"
kill -9 "$(cat "$dir/pids/cs$victim.pid")"
rm -f "$dir/pids/cs$victim.pid"
killed=$(now)
started=
for _ in $(seq 7200); do
  if [ -z "$started" ] && [ "$(in_flight)" != 0 ]; then started=$(now); fi
  if [ -n "$started" ] && healthy; then break; fi
  sleep 0.5
done
done_at=$(now)
healthy || { echo "not healthy an hour after the kill" >&2; pst stat >&2; exit 1; }
pst stat | grep '^Replication:'

# The same bytes copied on the local disk, made durable.
sync
t0=$(now)
cp -r "$dir/cs$victim" "$dir/local-copy"
sync
t1=$(now)
python3 - "$victim_bytes" "$killed" "$started" "$done_at" "$t0" "$t1" <<'PY'
import sys
b, killed, started, done, t0, t1 = int(sys.argv[1]), *map(float, sys.argv[2:])
mib = b / 2**20
copy = done - started
local = t1 - t0
print(f"recovery: lost_cs_bytes={b} ({mib:.0f} MiB) copy_s={copy:.1f} "
      f"rate={mib / copy:.1f} MiB/s from_kill_s={done - killed:.1f} "
      f"local_copy={mib / local:.1f} MiB/s ratio={(mib / copy) / (mib / local):.2f}")
PY
