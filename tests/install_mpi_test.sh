#!/usr/bin/env bash
# install_mpi_test.sh BUILD_DIR - `make install` into a temporary prefix installs libmha_mpi
# (header, static and shared library, mha_mpi.pc); a program built with
# `cc app.c $(pkg-config --cflags --libs mha_mpi)` in a fresh environment runs under mpirun with
# 2 ranks and gets the one-process attention's output on each rank's shard.
set -euo pipefail
build=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
for f in include/mha_mpi.h include/mha.h lib/libmha_mpi.a lib/libmha_mpi.so lib/pkgconfig/mha_mpi.pc; do
  [ -e "$tmp/prefix/$f" ] || { echo "install_mpi: missing $f"; exit 1; }
done
cat >"$tmp/app.c" <<'C'
#include <math.h>
#include <stdio.h>
#include "mha_mpi.h"
/* q = k = v rows of the sequence [1, 1, 8, 2]: each rank compares its rows with one process. */
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, P, bad = 0, any = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    float x[16], out[16], lse[8], xr[16], outr[16];
    for (int i = 0; i < 16; i++) x[i] = (float)((i * 7) % 5) / 4.0f - 0.5f;
    mha_mask m = mha_mask_default();
    m.causal = MHA_CAUSAL_TOP_LEFT;
    int64_t s[4] = {1, 1, 8, 2}, start[2], len[2];
    mha_tensor t = mha_tensor_make(x, 4, s), o = mha_tensor_make(out, 4, s);
    int64_t sl[3] = {1, 1, 8};
    mha_tensor l = mha_tensor_make(lse, 3, sl);
    if (mha_attn_forward(NULL, NULL, &t, &t, &t, &m, &o, &l, NULL)) return 1;
    if (mha_mpi_shard(NULL, mha_mpi_layout_for(&m), 8, rank, P, start, len)) return 1;
    int64_t n = 0;
    for (int r = 0; r < 2; r++)
        for (int64_t i = 0; i < len[r]; i++, n++)
            xr[2 * n] = x[2 * (start[r] + i)], xr[2 * n + 1] = x[2 * (start[r] + i) + 1];
    int64_t sr[4] = {1, 1, n, 2};
    mha_tensor tr = mha_tensor_make(xr, 4, sr), orr = mha_tensor_make(outr, 4, sr);
    if (mha_mpi_attn_forward(NULL, MPI_COMM_WORLD, NULL, &tr, &tr, &tr, &m, &orr, NULL, NULL)) {
        printf("rank %d: %s\n", rank, mha_last_errmsg());
        return 1;
    }
    n = 0;
    for (int r = 0; r < 2; r++)
        for (int64_t i = 0; i < len[r]; i++, n++)
            for (int d = 0; d < 2; d++)
                bad += fabsf(outr[2 * n + d] - out[2 * (start[r] + i) + d]) > 1e-6f;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) printf("%s\n", any ? "different" : "same");
    MPI_Finalize();
    return any;
}
C
command -v pkg-config >/dev/null || { echo "install_mpi: pkg-config not found"; exit 1; }
env -i PATH="$PATH" PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig" HOME="$tmp" \
  sh -c "cd '$tmp' && cc app.c \$(pkg-config --cflags --libs mha_mpi) -lm -o app" >"$tmp/log" 2>&1 ||
  { echo "install_mpi: building app.c failed:"; cat "$tmp/log"; exit 1; }
env -i PATH="$PATH" HOME="$tmp" OMP_NUM_THREADS=1 \
  mpirun --allow-run-as-root --oversubscribe -n 2 "$tmp/app" >"$tmp/log" 2>&1 ||
  { echo "install_mpi: the app failed:"; cat "$tmp/log"; exit 1; }
grep -qx same "$tmp/log" || { echo "install_mpi: unexpected output:"; cat "$tmp/log"; exit 1; }
echo "install_mpi: ok (built with pkg-config mha_mpi, ran on 2 ranks)"
