#!/bin/sh
# build_without_mpi.sh SRC_DIR - everything but libmha_mpi builds without MPI: configures the
# source tree with MPI disabled in a temporary directory (the STATUS message must say so) and
# builds the library and the CLI there, which must not produce libmha_mpi.
set -u
src=$1
d=$(mktemp -d) || exit 1
trap 'rm -rf "$d"' EXIT
fail() {
    echo "build_without_mpi: $1"
    cat "$d/log"
    exit 1
}
cmake -S "$src" -B "$d/b" -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON -DMHA_BUILD_TESTS=OFF >"$d/log" 2>&1 ||
    fail "configuring failed"
grep -q "MPI not found: libmha_mpi" "$d/log" || fail "no STATUS message saying MPI was not found"
cmake --build "$d/b" -j2 --target mha_static mha_shared mha_cli >>"$d/log" 2>&1 ||
    fail "building failed"
for f in libmha_mpi.a libmha_mpi.so; do
    [ ! -e "$d/b/$f" ] || fail "$f was built without MPI"
done
for f in libmha.a libmha.so mha; do
    [ -e "$d/b/$f" ] || fail "$f missing"
done
echo "build_without_mpi: ok (libmha, libmha.so and mha built; no libmha_mpi)"
