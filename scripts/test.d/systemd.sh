#!/usr/bin/env bash
# The systemd units of packaging/systemd: `systemd-analyze verify` must
# accept them without a word (an unknown key is only a warning there, so
# any output fails), they run as the dedicated user `pstorage`, and
# `systemd-analyze security --offline` rates their exposure at most 2.0
# ("OK"). There is no running systemd here: the units are checked, not
# started. ExecStart points at this build's binaries for the check.
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in packaging/systemd/*@.service; do
  name=$(basename "$unit")
  sed "s|/usr/bin/|$top/target/debug/|" "$unit" >"$work/$name"
  instance=${name/@.service/@check.service}
  grep -q '^User=pstorage$' "$unit" || { echo "$unit does not run as pstorage" >&2; exit 1; }
  out=$(cd "$work" && systemd-analyze verify "$instance" 2>&1) || { echo "$out" >&2; exit 1; }
  if [ -n "$out" ]; then echo "systemd-analyze verify $name: $out" >&2; exit 1; fi
  score=$(cd "$work" && systemd-analyze security --offline=true "$instance" 2>&1 |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  if [ -z "$score" ] || ! awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
    echo "$name: exposure ${score:-unknown}, more than 2.0" >&2
    exit 1
  fi
  echo "$name: verified, exposure $score"
done
