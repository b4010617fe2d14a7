#!/usr/bin/env bash
# Installs the system packages pstorage's build and tests use, if missing.
# Each scripts/apt.d/*.list line is "COMMAND PACKAGE..." : the packages are
# installed when COMMAND is not on the PATH. Safe to run again; uses sudo
# when not root.
set -euo pipefail
cd "$(dirname "$0")"
need=()
for list in apt.d/*.list; do
  while read -r cmd pkgs; do
    case "$cmd" in ''|\#*) continue ;; esac
    command -v "$cmd" >/dev/null 2>&1 || need+=($pkgs)
  done <"$list"
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
