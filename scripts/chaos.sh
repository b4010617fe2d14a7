#!/usr/bin/env bash
# The chaos suite with real processes: a local cluster of 3 MDSes and 5
# chunk servers at the default settings (256 MiB chunks, replicas 3:2,
# default timeouts), built from this checkout, under two verifying writers
# (fio with crc32c verify through `pstorage nbd-serve`, and the SDK writer
# `pstorage-chaos-writer`), while random MDSes and chunk servers are
# killed (-9), frozen (SIGSTOP/SIGCONT) and restarted, never more at once
# than the replication tolerates (see "Fault model" in docs/design.md).
# Then the faults stop, the cluster must become healthy (every chunk at 3
# copies) within --heal-timeout, and every byte the writers wrote is
# checked.
#
#   scripts/chaos.sh [--minutes M] [--seed S] [--dir DIR] [--heal-timeout S] [--release] [--keep]
#
# --minutes: how long faults are injected (default 3). --seed: the seed of
# the fault schedule and the writers' data (default: random; printed, so a
# run can be repeated with the same schedule). --dir: where the cluster
# lives (default: a new temp dir). --release: use target/release.
# --heal-timeout: how long the cluster may take to become healthy once
# the faults stop (default 180 s). --keep: keep the directory on success.
#
# Last line: `chaos: faults=N verified_bytes=N writer_errors=N lost_bytes=N`.
# Exit 0 only if writer_errors and lost_bytes are 0, the cluster became
# healthy, and no daemon died unless killed; otherwise exit 1 and the
# cluster's directory (logs/ inside) is kept and named. Every process it
# starts is stopped at exit, also on Ctrl-C or failure.
set -euo pipefail
# The whole script is one block: bash reads it all before running it, so
# editing this file during a run does not change the run.
{
cd "$(dirname "$0")/.."
top=$PWD

minutes=3
seed=""
dir=""
heal_timeout=180
profile=debug
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --heal-timeout) heal_timeout=$2; shift 2 ;;
    --release) profile=release; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "chaos: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$minutes" in ''|*[!0-9.]*) echo "chaos: --minutes takes a number" >&2; exit 2 ;; esac
if [ -z "$seed" ]; then
  seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
fi
case "$seed" in ''|*[!0-9]*) echo "chaos: --seed takes a non-negative integer" >&2; exit 2 ;; esac
fault_secs=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')

scripts/install-deps.sh
if [ "$profile" = release ]; then
  cargo build --release --workspace --bins
else
  cargo build --workspace --bins
fi
bin=$top/target/$profile

if [ -z "$dir" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/pstorage-chaos.XXXXXX")
else
  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || { echo "chaos: $dir is not empty" >&2; exit 2; }
fi
dir=$(cd "$dir" && pwd)
logs=$dir/logs
mkdir -p "$logs" "$dir/fio"
export PSTORAGE_CONF_DIR=$dir/conf
export PSTORAGE_LOG=${PSTORAGE_LOG:-info}
export NO_COLOR=1
name=chaos
password=chaos-password
start_time=$SECONDS

log() { echo "chaos: [$(date -u +%H:%M:%S) t=$((SECONDS - start_time))s] $*"; }
echo "chaos: seed=$seed minutes=$minutes dir=$dir (repeat with: scripts/chaos.sh --minutes $minutes --seed $seed)"

# --- the schedule's random numbers: a 64-bit LCG in bash arithmetic, so
# the same seed gives the same schedule on any machine (bash's $RANDOM is
# not used for the schedule).
rng=$(( seed * 2862933555777941757 + 3037000493 ))
R=0
rand() { # rand N: R = a number in [0, N)
  rng=$(( rng * 6364136223846793005 + 1442695040888963407 ))
  R=$(( ((rng >> 33) & 0x7fffffff) % $1 ))
}

# --- every process this script starts, stopped at exit
declare -A pid=()   # node name -> pid (mds1..3, cs1..5, nbd, sdk, fio)
declare -A state=() # node name -> up | down | frozen
failures=()
finished=0
announced=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "${pid[fio]:-}" ] && [ -e "$dir/fio/pid" ]; then
    pid[fio-round]=$(cat "$dir/fio/pid")
  fi
  for n in "${!pid[@]}"; do
    kill -CONT "${pid[$n]}" 2>/dev/null || true
    kill -TERM "${pid[$n]}" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local alive=0
    for n in "${!pid[@]}"; do kill -0 "${pid[$n]}" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for n in "${!pid[@]}"; do kill -KILL "${pid[$n]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$finished" = 1 ] && [ "$rc" = 0 ] && [ "$keep" = 0 ]; then
    rm -rf "$dir"
  elif [ "$announced" = 0 ]; then
    echo "chaos: the cluster's directory and logs are kept in $dir (logs in $logs)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "chaos: interrupted" >&2; exit 130' INT TERM HUP

# A free port below the kernel's ephemeral range, so that no outgoing
# connection takes it while its server is down.
ephemeral_low=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
  local p span=$(( ephemeral_low - 10000 ))
  [ $span -gt 1000 ] || span=20000
  while :; do
    p=$(( 10000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % span ))
    if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then echo "$p"; return; fi
  done
}

cli() { timeout 60 "$bin/pstorage" -c $name "$@"; }

start_node() { # start_node mds1 | cs3
  local n=$1 daemon
  case "$n" in mds*) daemon=pstorage-mdsd ;; cs*) daemon=pstorage-csd ;; esac
  echo "=== $(date -u +%H:%M:%S.%N) start" >>"$logs/$n.log"
  "$bin/$daemon" -r "$dir/$n" </dev/null >>"$logs/$n.log" 2>&1 &
  pid[$n]=$!
  state[$n]=up
}

wait_port() { # wait_port PORT WHAT
  for _ in $(seq 300); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "chaos: $2 does not listen on port $1" >&2
  return 1
}

# `pstorage stat`, also appended to logs/stat.log with the time.
status() {
  local s
  s=$(timeout 20 "$bin/pstorage" -c $name stat 2>&1 || true)
  printf '=== %s\n%s\n' "$(date -u +%H:%M:%S.%N)" "$s" >>"$logs/stat.log"
  echo "$s"
}

# healthy: every chunk at replicas.norm copies on active servers.
is_healthy() {
  local s
  s=$(status)
  grep -q "^Cluster '$name': healthy" <<<"$s" || return 1
  awk '/^Chunks:/ { exit !($2 == $4) }' <<<"$s"
}

# every MDS a voter that answers, and one leader.
mds_group_whole() {
  local s
  s=$(status)
  awk '
    /^MDS nodes:/ { t = 1; next }
    t && /^ *MDSID/ { next }
    t && NF == 0 { t = 0 }
    t { n++; if ($2 == "leader") l++; else if ($2 != "follower") bad++ }
    END { exit !(n == 3 && l == 1 && bad == 0) }' <<<"$s"
}

# --- the cluster: 3 MDSes, 5 chunk servers, default settings (but one)
for i in 1 2 3; do mds_port[$i]=$(free_port); done
echo "$password" | cli make-mds -I -a 127.0.0.1:"${mds_port[1]}" -r "$dir/mds1" -p >"$logs/setup.log" 2>&1
start_node mds1
wait_port "${mds_port[1]}" mds1
# The one exception to the defaults: the five chunk servers share this
# machine's file system, and each counts all of its free space as its own,
# so the default fill margin (at most 4 GiB free per server) would need
# 4 GiB free besides what the run writes (CI machines have had 6 GB).
cli set-config mds.alloc.fill_margin_max=$((512 << 20)) >>"$logs/setup.log" 2>&1
for i in 2 3; do
  cli make-mds -a 127.0.0.1:"${mds_port[$i]}" -r "$dir/mds$i" >>"$logs/setup.log" 2>&1
  start_node mds$i
  wait_port "${mds_port[$i]}" mds$i
done
for i in 1 2 3 4 5; do
  # a fixed address, as a real deployment has (a restart keeps it)
  cli make-cs -r "$dir/cs$i" -a 127.0.0.1:"$(free_port)" >>"$logs/setup.log" 2>&1
  start_node cs$i
done
deadline=$((SECONDS + 120))
until mds_group_whole && [ "$(status | grep -c ' active ')" -ge 5 ]; do
  [ $SECONDS -lt $deadline ] || { status; echo "chaos: the cluster did not come up" >&2; exit 1; }
  sleep 0.5
done
log "cluster up: 3 MDSes, 5 chunk servers"

# --- the writers
cli mkdir -p /chaos >>"$logs/setup.log" 2>&1
cli truncate -s 1G /chaos/fio.img >>"$logs/setup.log" 2>&1
rm -f "$dir/stop" "$dir/verify"

"$bin/pstorage-chaos-writer" --conf-dir "$PSTORAGE_CONF_DIR" -c $name --path /chaos/sdk.bin \
  --size $((512 << 20)) --seed "$seed" --stop-file "$dir/stop" --verify-file "$dir/verify" \
  --compare-replicas /chaos/fio.img \
  </dev/null >"$logs/sdk-writer.out" 2>"$logs/sdk-writer.log" &
pid[sdk]=$!

"$bin/pstorage" -c $name nbd-serve --listen 127.0.0.1:0 </dev/null >"$logs/nbd-serve.out" 2>"$logs/nbd-serve.log" &
pid[nbd]=$!
nbd_port=""
for _ in $(seq 600); do
  nbd_port=$(sed -n 's/^nbd-serve: listening on tcp 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$logs/nbd-serve.out")
  [ -n "$nbd_port" ] && break
  kill -0 "${pid[nbd]}" 2>/dev/null || break
  sleep 0.1
done
[ -n "$nbd_port" ] || { cat "$logs/nbd-serve.log" >&2; echo "chaos: nbd-serve did not start" >&2; exit 1; }
uri="nbd://127.0.0.1:$nbd_port/chaos/fio.img"

# fio: rounds of random writes (4-64 KiB, queue depth 8, 8 MiB/s, an NBD
# flush every 64 writes) over one
# of 7 regions of 64 MiB (three of them across a chunk boundary), each
# followed by a crc32c verify of the region. A region's last complete
# round is verified again at the end (fio --verify_only); a round that
# failed leaves its region unchecked (its error is counted).
M=$((1 << 20))
fio_args() { # fio_args ROUND: the job of that round
  local r=$1 k=$(( $1 % 7 ))
  echo "--name=chaos-r$r --ioengine=nbd --uri=$uri --rw=randwrite --bsrange=4k-64k" \
    "--iodepth=8 --offset=$(( (128 * k + 96) * M )) --size=$((64 * M)) --rate=8m --fsync=64" \
    "--randseed=$(( seed % 1000000007 * 1000 + r ))" \
    "--verify=crc32c --verify_fatal=0 --continue_on_error=verify --verify_state_save=0"
}
# Lost bytes from fio's stderr: the length of every block that failed
# its verify; I/O errors are writer errors.
fio_account() { # fio_account ROUND_PREFIX RC
  local p=$1 rc=$2 lost errs
  lost=$({ grep -o 'requested block: offset=[0-9]*, length=[0-9]*' "$p.err" || true; } \
    | sed 's/.*length=//' | awk '{ s += $1 } END { print s + 0 }')
  errs=$(grep -c 'io_u error\|fio: pid=.*err=' "$p.err" || true)
  if [ "$rc" != 0 ] && [ "$lost" = 0 ] && [ "$errs" = 0 ]; then errs=1; fi
  echo "$errs $lost"
}
fio_loop() {
  local r=0 k rc acc
  while [ ! -e "$dir/stop" ]; do
    k=$((r % 7))
    rc=0
    # shellcheck disable=SC2046
    timeout 600 fio $(fio_args $r) --do_verify=1 --output-format=json \
      >"$dir/fio/round$r.json" 2>"$dir/fio/round$r.err" &
    echo $! >"$dir/fio/pid"
    wait $! || rc=$?
    acc=$(fio_account "$dir/fio/round$r" $rc)
    echo "$r $k $rc $acc" >>"$dir/fio/rounds"
    if [ "$acc" = "0 0" ] && [ $rc = 0 ]; then
      echo "$r" >"$dir/fio/region$k"
    else
      rm -f "$dir/fio/region$k"
      echo "chaos: fio round $r (region $k) failed: rc=$rc errors/lost: $acc; see $dir/fio/round$r.err" >>"$logs/fio.log"
    fi
    r=$((r + 1))
  done
}
fio_loop &
pid[fio]=$!
log "writers started: SDK writer on /chaos/sdk.bin (512 MiB), fio through nbd-serve on $uri"

# --- the faults
# At most one MDS and at most one chunk server are out (killed, frozen or
# restarting) at any time, and a new fault of a kind starts only once the
# previous one of that kind is repaired: for MDSes, the group has its 3
# members answering and a leader; for chunk servers, `stat` says healthy
# (every chunk back at 3 copies), since a chunk that has lost a copy
# tolerates no second loss without going below replicas.min.
faults=0
check_alive() {
  local n
  for n in "${!state[@]}"; do
    if [ "${state[$n]}" = up ] && ! kill -0 "${pid[$n]}" 2>/dev/null; then
      failures+=("$n exited on its own (see $logs/$n.log)")
      log "FAIL: $n exited on its own"
      state[$n]=dead
    fi
  done
}
inject() { # inject NODE KIND
  local n=$1
  case "$2" in
    kill|restart) kill -KILL "${pid[$n]}"; wait "${pid[$n]}" 2>/dev/null || true; state[$n]=down
      echo "=== $(date -u +%H:%M:%S.%N) chaos: kill -9" >>"$logs/$n.log" ;;
    freeze) kill -STOP "${pid[$n]}"; state[$n]=frozen
      echo "=== $(date -u +%H:%M:%S.%N) chaos: SIGSTOP" >>"$logs/$n.log" ;;
  esac
}
repair() { # repair NODE
  local n=$1
  case "${state[$n]}" in
    down) start_node "$n" ;;
    frozen) kill -CONT "${pid[$n]}"; state[$n]=up
      echo "=== $(date -u +%H:%M:%S.%N) chaos: SIGCONT" >>"$logs/$n.log" ;;
  esac
}
out_mds=""; out_mds_until=0
out_cs=""; out_cs_until=0
end=$((SECONDS + fault_secs))
next_at=$((SECONDS + 5))
waiting_since=""; waited=""
pending="" # the next fault, drawn ahead: "NODE KIND SECONDS"
while [ $SECONDS -lt $end ]; do
  check_alive
  if [ -n "$out_mds" ] && [ $SECONDS -ge $out_mds_until ]; then
    repair "$out_mds"; log "repaired $out_mds"; out_mds=""
  fi
  if [ -n "$out_cs" ] && [ $SECONDS -ge $out_cs_until ]; then
    repair "$out_cs"; log "repaired $out_cs"; out_cs=""
  fi
  if [ -z "$pending" ]; then
    rand 8; if [ $R -lt 3 ]; then rand 3; node=mds$((R + 1)); else rand 5; node=cs$((R + 1)); fi
    rand 10
    if [ $R -lt 4 ]; then kind=kill; elif [ $R -lt 8 ]; then kind=freeze; else kind=restart; fi
    rand 10 # durations: mostly short, some past the timeouts (fence 10 s, offline probes)
    if [ $R -lt 5 ]; then rand 5; secs=$((R + 1)); elif [ $R -lt 8 ]; then rand 10; secs=$((R + 5)); else rand 25; secs=$((R + 15)); fi
    [ $kind = restart ] && secs=0
    rand 12; gap=$((R + 2))
    pending="$node $kind $secs"
  fi
  if [ $SECONDS -ge $next_at ]; then
    read -r node kind secs <<<"$pending"
    ready=0
    case $node in
      mds*) [ -z "$out_mds" ] && [ "${state[$node]}" = up ] && mds_group_whole && ready=1 ;;
      cs*) [ -z "$out_cs" ] && [ "${state[$node]}" = up ] && is_healthy && ready=1 ;;
    esac
    if [ $ready = 0 ]; then
      waiting_since=${waiting_since:-$SECONDS}
      if [ $((SECONDS - waiting_since)) -ge 60 ] && [ -z "$waited" ]; then
        waited=1; log "the next fault ($pending) waits for the cluster to recover for 60s already"
      fi
    fi
    if [ $ready = 1 ]; then
      waited=""
      inject "$node" "$kind"
      faults=$((faults + 1))
      if [ $kind = restart ]; then what="kill -9 and restart $node"; else what="$kind $node for ${secs}s"; fi
      log "fault $faults: $what (next in ${gap}s)"
      waiting_since=""
      case $node in
        mds*) out_mds=$node; out_mds_until=$((SECONDS + secs)) ;;
        cs*) out_cs=$node; out_cs_until=$((SECONDS + secs)) ;;
      esac
      pending=""
      next_at=$((SECONDS + gap))
    fi
  fi
  sleep 0.5
done
for n in "$out_mds" "$out_cs"; do
  [ -n "$n" ] && { repair "$n"; log "repaired $n"; }
done
check_alive
log "faults stopped after $faults faults; stopping the writers"

# --- stop the writers, wait for healthy, check every byte
touch "$dir/stop"
deadline=$((SECONDS + 900))
while kill -0 "${pid[fio]}" 2>/dev/null || ! grep -q '^sdk-writer: stopped' "$logs/sdk-writer.out"; do
  if [ $SECONDS -ge $deadline ] || ! kill -0 "${pid[sdk]}" 2>/dev/null; then
    grep -q '^sdk-writer: stopped' "$logs/sdk-writer.out" || failures+=("the SDK writer did not stop (see $logs/sdk-writer.log)")
    kill -0 "${pid[fio]}" 2>/dev/null && failures+=("fio did not stop")
    break
  fi
  sleep 0.5
done
wait "${pid[fio]}" 2>/dev/null || true
unset 'pid[fio]'
log "$(grep '^sdk-writer: stopped' "$logs/sdk-writer.out" || echo "sdk-writer: did not stop")"
log "writers stopped; waiting for healthy (at most ${heal_timeout}s)"
heal_start=$SECONDS
healthy=0
while [ $((SECONDS - heal_start)) -lt "$heal_timeout" ]; do
  check_alive
  if is_healthy; then healthy=1; break; fi
  sleep 2
done
status >"$logs/stat-final.txt"
cli get-event-log >"$logs/event-log.txt" 2>&1 || true
if [ $healthy = 1 ]; then
  log "healthy after $((SECONDS - heal_start))s"
else
  failures+=("not healthy ${heal_timeout}s after the faults stopped (see $logs/stat-final.txt)")
  log "FAIL: not healthy after ${heal_timeout}s"
  cat "$logs/stat-final.txt"
fi

# The SDK writer reads its whole file back.
touch "$dir/verify"
sdk_rc=0
wait "${pid[sdk]}" || sdk_rc=$?
unset 'pid[sdk]'
sdk_line=$(grep '^sdk-writer: writes=' "$logs/sdk-writer.out" | tail -1 || true)
log "${sdk_line:-sdk-writer: no result (exit $sdk_rc)}"
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | tail -1; }
sdk_verified=$(field "$sdk_line" verified_bytes); sdk_verified=${sdk_verified:-0}
sdk_errors=$(field "$sdk_line" writer_errors); sdk_errors=${sdk_errors:-1}
sdk_lost=$(field "$sdk_line" lost_bytes); sdk_lost=${sdk_lost:-0}
replica_diff=$(field "$sdk_line" replica_diff_bytes); replica_diff=${replica_diff:-0}
[ "$replica_diff" = 0 ] || failures+=("$replica_diff bytes differ between the replicas of a chunk (see $logs/sdk-writer.log)")
[ $sdk_rc = 0 ] || [ "$sdk_errors" != 0 ] || [ "$sdk_lost" != 0 ] || [ "$replica_diff" != 0 ] \
  || failures+=("the SDK writer exited with $sdk_rc")

# fio: every region's last complete round, verified again.
fio_errors=0; fio_lost=0; fio_verified=0; rounds=0
if [ -e "$dir/fio/rounds" ]; then
  while read -r _ _ _ e l; do
    rounds=$((rounds + 1)); fio_errors=$((fio_errors + e)); fio_lost=$((fio_lost + l))
  done <"$dir/fio/rounds"
fi
for k in 0 1 2 3 4 5 6; do
  [ -e "$dir/fio/region$k" ] || continue
  r=$(cat "$dir/fio/region$k")
  rc=0
  # shellcheck disable=SC2046
  timeout 600 fio $(fio_args "$r") --verify_only --output-format=json \
    >"$dir/fio/final$k.json" 2>"$dir/fio/final$k.err" || rc=$?
  read -r e l <<<"$(fio_account "$dir/fio/final$k" $rc)"
  if [ "$e" = 0 ] && [ "$l" = 0 ] && ! grep -q '"error" : [1-9]' "$dir/fio/final$k.json"; then
    fio_verified=$((fio_verified + 64 * M))
  else
    [ "$e" = 0 ] && [ "$l" = 0 ] && e=1
    log "FAIL: the final verify of fio region $k (round $r): errors=$e lost_bytes=$l; see $dir/fio/final$k.err"
  fi
  fio_errors=$((fio_errors + e)); fio_lost=$((fio_lost + l))
done
fio_max_ms=$(cat "$dir"/fio/round*.json 2>/dev/null | awk '/"clat_ns"|"sync" : \{/ { f = 1 } f && /"max"/ { v = $3 + 0; if (v > m) m = v; f = 0 } END { printf "%d", m / 1e6 }')
log "fio: $rounds rounds, verified_bytes=$fio_verified writer_errors=$fio_errors lost_bytes=$fio_lost longest_io_ms=$fio_max_ms"
[ "$rounds" -gt 0 ] || failures+=("fio ran no round")

writer_errors=$((sdk_errors + fio_errors))
lost_bytes=$((sdk_lost + fio_lost))
verified_bytes=$((sdk_verified + fio_verified))
for f in "${failures[@]}"; do echo "chaos: FAIL: $f"; done
ok=0
[ "$writer_errors" = 0 ] && [ "$lost_bytes" = 0 ] && [ ${#failures[@]} = 0 ] && ok=1
if [ $ok = 0 ] || [ "$keep" = 1 ]; then
  echo "chaos: the cluster's directory and logs are kept in $dir (logs in $logs)"
  announced=1
fi
echo "chaos: faults=$faults verified_bytes=$verified_bytes writer_errors=$writer_errors lost_bytes=$lost_bytes"
finished=1
[ $ok = 1 ] && exit 0
exit 1
}
