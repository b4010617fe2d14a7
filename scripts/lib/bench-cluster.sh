# Sourced by the bench scripts: builds the release binaries if missing,
# starts a fresh local cluster (1 MDS, CS_COUNT chunk servers on
# 127.0.0.1, replicas 3:2, 256 MiB chunks: the defaults) with a 1 GiB
# image served by `pstorage nbd-serve`, and stops it all at exit.
# Run from the repository's top. Environment: BIN, BENCH_RUNNER, CS_COUNT,
# JOURNAL, BENCH_DIR; CS_ARGS (more pstorage-csd arguments, e.g.
# "--threads 2"), CS_ENV and NBD_ENV (VAR=value words for the chunk
# servers' and nbd-serve's environment), MAKE_MDS_ARGS (more `make-mds -I`
# arguments: "--data-encryption off" for a clear data path).
# Sets top, bin, runner, dir, name, nbd_port.
top=$PWD
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
echo bench-password | "$bin/pstorage" -c $name make-mds -I -a 127.0.0.1:$port -r "$dir/mds" -p ${MAKE_MDS_ARGS:-} >/dev/null
"$bin/pstorage-mdsd" -r "$dir/mds" >"$dir/mds.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for i in $(seq 1 "$count"); do
  args=(-r "$dir/cs$i")
  [ -n "${JOURNAL:-}" ] && args+=(-j "$JOURNAL/cs$i")
  "$bin/pstorage" -c $name make-cs "${args[@]}" >/dev/null
  env ${CS_ENV:-} "$bin/pstorage-csd" -r "$dir/cs$i" ${CS_ARGS:-} >"$dir/cs$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 200); do
  [ "$("$bin/pstorage" -c $name stat 2>/dev/null | grep -c ' active ')" -ge "$count" ] && break
  sleep 0.2
done
"$bin/pstorage" -c $name truncate -s 1G /bench.img
env ${NBD_ENV:-} "$bin/pstorage" -c $name nbd-serve --listen 127.0.0.1:0 >"$dir/nbd.out" 2>"$dir/nbd.log" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$dir/nbd.out" 2>/dev/null && break; sleep 0.1; done
nbd_port=$(sed -n 's/.*listening on tcp .*:\([0-9]*\)$/\1/p' "$dir/nbd.out")
