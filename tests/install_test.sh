#!/usr/bin/env bash
# install_test.sh BUILD_DIR SOURCE_DIR - `make install` into a temporary prefix, then build the
# README's example against the installed header and library through pkg-config.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in include/mha.h lib/libmha.a lib/libmha.so bin/mha lib/pkgconfig/mha.pc; do
  [ -e "$tmp/prefix/$f" ] || { echo "install: missing $f"; exit 1; }
done
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
command -v pkg-config >/dev/null || { echo "install: pkg-config not found"; exit 1; }
cc "$src/examples/quickstart.c" -o "$tmp/quickstart" $(pkg-config --cflags --libs mha) \
  -Wl,-rpath,"$tmp/prefix/lib"
"$tmp/quickstart"
echo "install: ok"
