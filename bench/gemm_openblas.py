#!/usr/bin/env python3
"""gemm_openblas.py - issue 11's gemm target: mha's float32 gemm at least 0.95 of OpenBLAS's
sgemm on every projection shape of the benchmark's layers. For each layer (B*N tokens, E) of
bench/compare.sh's module table, its four products: in_proj x W^T (M = B*N, N = 3E, K = E),
out_proj (N = E), the input gradient dY W (K = 3E) and the weight gradient dY^T X (M = 3E,
N = E, K = B*N). Each round times `mha bench --gemm` and OpenBLAS (bench/openblas_sgemm.c
through bench/openblas_env: its core type for this CPU, OPENBLAS_L2_SIZE unset, for that command
only) next to each other; a ratio is the round's mha rate over the round's OpenBLAS rate, and the
table gives the median of the rounds' ratios (a neighbour's burst on the shared machine hits one
side of one round).
Prints a markdown section for BENCHMARKS.md (progress on stderr). Stdlib only.

    bench/gemm_openblas.py [--build build] [--threads 2] [--rounds 5] [--quick] [--out F.md]
"""
import argparse
import datetime
import os
import statistics
import sys
import time

from core_sgemm import emit, openblas, run_json

TARGET = 0.95
LAYERS = [(512, 512), (2048, 512), (1024, 768), (4096, 1024)]  # (B*N, E)


def shapes(quick):
    """(M, N, K, ta, tb) of each layer's products, as BENCHMARKS.md's gemm table."""
    layers = [(64, 32)] if quick else LAYERS
    out = []
    for t, e in layers:
        out += [(t, 3 * e, e, 0, 1), (t, e, e, 0, 1), (t, e, 3 * e, 0, 0), (3 * e, e, t, 1, 0)]
    return out


def main():
    ap = argparse.ArgumentParser(description="mha's gemm over OpenBLAS's sgemm")
    ap.add_argument("--build", default="build")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    ob, env = openblas(a.build, a.threads)
    load0 = os.getloadavg()
    start = time.time()
    rows = []
    for m, n, k, ta, tb in shapes(a.quick):
        print(f"M={m} N={n} K={k} ta={ta} tb={tb}", file=sys.stderr)
        mine = [os.path.join(a.build, "mha"), "bench", "--gemm", str(m), str(n), str(k), "--ta",
                str(ta), "--tb", str(tb), "--threads", str(a.threads), "--runs", "10", "--json"]
        theirs = ob + [str(m), str(n), str(k), str(ta), str(tb), "10"]
        rates = [(run_json(mine)["gflops"], run_json(theirs, env)["gflops"])
                 for _ in range(a.rounds)]
        ratios = [x / y for x, y in rates]
        rows.append(((m, n, k, ta, tb), statistics.median(x for x, _ in rates),
                     statistics.median(y for _, y in rates), statistics.median(ratios), ratios))
    elapsed = time.time() - start
    L = ["### mha's gemm against OpenBLAS's sgemm (`bench/gemm_openblas.py`)\n",
         f"Written by `bench/gemm_openblas.py` ({datetime.datetime.now():%Y-%m-%d %H:%M}, "
         f"{elapsed:.0f} s); {a.threads} threads; {a.rounds} rounds; load average before "
         f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}. Rates are the medians of the rounds; "
         "the ratio is the median of the rounds' own ratios (theirs in brackets). Target: "
         f">= {TARGET}.\n",
         "| M | N | K | ta | tb | mha GFLOP/s | OpenBLAS GFLOP/s | mha / OpenBLAS | "
         f">= {TARGET} |",
         "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for (m, n, k, ta, tb), mr, orate, r, rs in rows:
        each = ", ".join(f"{x:.2f}" for x in rs)
        L.append(f"| {m} | {n} | {k} | {ta} | {tb} | {mr:.1f} | {orate:.1f} | {r:.3f} ({each}) "
                 f"| {'yes' if r >= TARGET else '**no**'} |")
    emit(L, a.out)


if __name__ == "__main__":
    main()
