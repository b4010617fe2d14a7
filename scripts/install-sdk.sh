#!/usr/bin/env bash
# Installs the libpstorage C SDK into PREFIX:
#   PREFIX/lib/libpstorage.so.X.Y.Z, its SONAME link libpstorage.so.X and the
#   development link libpstorage.so; PREFIX/lib/libpstorage.a;
#   PREFIX/include/pstorage.h; PREFIX/lib/pkgconfig/pstorage.pc.
# Builds the library first (cargo build -p pstorage-ffi).
#
# Usage: scripts/install-sdk.sh [--debug] [--no-build] PREFIX
#   --debug     install the debug build (target/debug) instead of release
#   --no-build  install what is already built
# Then: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig cc app.c $(pkg-config --cflags --libs pstorage)
set -euo pipefail
profile=release
build=1
prefix=""
for arg in "$@"; do
  case "$arg" in
    --debug) profile=debug ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "install-sdk.sh: unknown option $arg" >&2; exit 2 ;;
    *) [ -z "$prefix" ] || { echo "install-sdk.sh: one PREFIX only" >&2; exit 2; }; prefix=$arg ;;
  esac
done
[ -n "$prefix" ] || { echo "usage: scripts/install-sdk.sh [--debug] [--no-build] PREFIX" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
if [ "$build" = 1 ]; then
  flags=(-p pstorage-ffi)
  [ "$profile" = release ] && flags+=(--release)
  (cd "$root" && cargo build "${flags[@]}")
fi
lib="$target/$profile"
for f in libpstorage.so libpstorage.a; do
  [ -f "$lib/$f" ] || { echo "install-sdk.sh: $lib/$f is missing; build it with cargo build -p pstorage-ffi" >&2; exit 1; }
done
# The SONAME's major number must match pstorage-ffi/build.rs.
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")
major=0
soname=$(readelf -d "$lib/libpstorage.so" 2>/dev/null | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p' || true)
if [ -n "$soname" ] && [ "$soname" != "libpstorage.so.$major" ]; then
  echo "install-sdk.sh: $lib/libpstorage.so has SONAME $soname, expected libpstorage.so.$major" >&2
  exit 1
fi
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
prefix=$(cd "$prefix" && pwd)
install -m 0755 "$lib/libpstorage.so" "$prefix/lib/libpstorage.so.$version"
ln -sf "libpstorage.so.$version" "$prefix/lib/libpstorage.so.$major"
ln -sf "libpstorage.so.$major" "$prefix/lib/libpstorage.so"
install -m 0644 "$lib/libpstorage.a" "$prefix/lib/libpstorage.a"
install -m 0644 "$root/include/pstorage.h" "$prefix/include/pstorage.h"
cat >"$prefix/lib/pkgconfig/pstorage.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: pstorage
Description: C SDK of the pstorage distributed storage system
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lpstorage
Libs.private: -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
PC
echo "installed libpstorage $version ($profile) into $prefix"
