#!/usr/bin/env bash
# install_test.sh BUILD_DIR SOURCE_DIR - `make install` into a temporary prefix, then build the
# README's example with the README's own compile command (read from README.md), in a fresh
# environment (no LD_LIBRARY_PATH, nothing but PATH and PKG_CONFIG_PATH), and run it there.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in include/mha.h lib/libmha.a lib/libmha.so bin/mha lib/pkgconfig/mha.pc; do
  [ -e "$tmp/prefix/$f" ] || { echo "install: missing $f"; exit 1; }
done
command -v pkg-config >/dev/null || { echo "install: pkg-config not found"; exit 1; }
cmd=$(grep -o 'cc app\.c \$(pkg-config [^)]*)' "$src/README.md" | head -n 1)
[ -n "$cmd" ] || { echo "install: README.md has no 'cc app.c \$(pkg-config ...)' line"; exit 1; }
echo "install: README command: $cmd"
cp "$src/examples/quickstart.c" "$tmp/app.c"
# The README's command, and the same without --static: both must give a program that starts.
for c in "$cmd" "${cmd/ --static/}"; do
  rm -f "$tmp/a.out"
  env -i PATH="$PATH" PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" HOME="$tmp" \
    sh -c "cd '$tmp' && $c && ./a.out" >"$tmp/log" 2>&1 ||
    { echo "install: '$c' failed:"; cat "$tmp/log"; exit 1; }
done
echo "install: ok"
