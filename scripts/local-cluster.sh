#!/usr/bin/env bash
# Starts a local pstorage cluster: one MDS and three chunk servers on
# 127.0.0.1, data under ./.local-cluster (or $PSTORAGE_LOCAL_DIR).
#   scripts/local-cluster.sh          create (first time) and start
#   scripts/local-cluster.sh stop     stop the daemons
# Environment: PSTORAGE_PASSWORD (default: a random one, kept in
# $dir/password, mode 0600, for `auth-node` of other local nodes), PSTORAGE_MDS_PORT
# (default 2510), PSTORAGE_CS_COUNT (default 3), PSTORAGE_NO_BUILD=1 (use the
# release binaries already built).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
dir=${PSTORAGE_LOCAL_DIR:-$top/.local-cluster}
name=local
port=${PSTORAGE_MDS_PORT:-2510}
count=${PSTORAGE_CS_COUNT:-3}
password=${PSTORAGE_PASSWORD:-}
bin=$top/target/release
export PSTORAGE_CONF_DIR=$dir/conf

stop() {
  for p in "$dir"/pids/*.pid; do
    [ -e "$p" ] || continue
    kill "$(cat "$p")" 2>/dev/null || true
    rm -f "$p"
  done
}
if [ "${1:-}" = stop ]; then stop; echo "stopped"; exit 0; fi

if [ -z "${PSTORAGE_NO_BUILD:-}" ]; then
  scripts/install-deps.sh
  cargo build --release --workspace --bins
fi
mkdir -p "$dir/logs" "$dir/pids"
stop

start() { # name binary data-dir
  nohup "$bin/$2" -r "$3" >>"$dir/logs/$1.log" 2>&1 &
  echo $! >"$dir/pids/$1.pid"
}

if [ ! -d "$dir/mds" ]; then
  if [ -z "$password" ]; then
    # A random cluster password (make-mds -I refuses weak ones).
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    (umask 077; echo "$password" >"$dir/password")
    echo "cluster password: in $dir/password"
  fi
  echo "$password" | "$bin/pstorage" -c $name make-mds -I -a 127.0.0.1:$port -r "$dir/mds" -p
fi
start mds pstorage-mdsd "$dir/mds"
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for i in $(seq 1 "$count"); do
  [ -d "$dir/cs$i" ] || "$bin/pstorage" -c $name make-cs -r "$dir/cs$i"
  start cs$i pstorage-csd "$dir/cs$i"
done
for _ in $(seq 100); do
  [ "$("$bin/pstorage" -c $name stat 2>/dev/null | grep -c ' active ')" -ge "$count" ] && break
  sleep 0.2
done
"$bin/pstorage" -c $name stat
cat <<MSG

A local pstorage cluster '$name' is running (logs in $dir/logs). Try:
  export PSTORAGE_CONF_DIR=$PSTORAGE_CONF_DIR PATH=$bin:\$PATH
  pstorage -c $name put /etc/services /services
  pstorage -c $name ls -l /
  pstorage -c $name get /services - | head
  pstorage -c $name bench --size 268435456 --seconds 5
Stop it with: scripts/local-cluster.sh stop
MSG
