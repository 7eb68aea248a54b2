#!/usr/bin/env python3
"""core_sgemm.py - issue 11's float32 target for the attention core: forward and backward rates
of `mha bench --core` as fractions of OpenBLAS's sgemm rate measured next to each one, over
sequence lengths, causal or not, head dims 64 and 128 and batch sizes. Prints a markdown
section for BENCHMARKS.md (progress on stderr).

    bench/core_sgemm.py [--build build] [--threads 2] [--budget 3] [--quick] [--seq N ...]
                        [--out FILE.md]

The sgemm of a case is the in_proj product of its layer (M = B*N, N = 3E, K = E, E = H*D, B
transposed as x W^T), the definition of BENCHMARKS.md's "core fwd / OpenBLAS sgemm" column,
timed by bench/openblas_sgemm.c (built here from Debian's libopenblas-dev) through
bench/openblas_env (OPENBLAS_CORETYPE=SkylakeX on AVX-512 CPUs, unset elsewhere so that OpenBLAS
detects its core; OPENBLAS_L2_SIZE unset) for that command only. Each case: mha's
core (median of its runs within --budget seconds), then the sgemm (median of 9), then mha's
core again and the sgemm again in reverse order; a ratio is the core's rate over the sgemm's
in the same pair, and the table gives the better pair's (a slow spell of the shared machine
hits one pair, rarely both). Stdlib only.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = 0.85


def cases(quick):
    """(B, H, N, D, causal): N 256 .. 16384, head dims 64 and 128, batch 1 and 8 (8 up to
    N = 1024, where a batch of 8 still runs in seconds), H = 8."""
    if quick:
        return [(1, 2, 128, 64, False), (2, 2, 64, 128, True)]
    out = []
    for d in (64, 128):
        for causal in (False, True):
            for n in (256, 1024, 4096, 16384):
                for b in ((1, 8) if n <= 1024 else (1,)):
                    out.append((b, 8, n, d, causal))
    return out


def run_json(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"core_sgemm: {' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def openblas(build, threads):
    """The command that times OpenBLAS (bench/openblas_sgemm.c built into BUILD, run through
    bench/openblas_env: its core type for this CPU, OPENBLAS_L2_SIZE unset) and the environment
    to run it in (THREADS threads): for these commands only."""
    ob = os.path.join(build, "openblas_sgemm")
    if subprocess.run(["cc", "-O2", "-o", ob, os.path.join(HERE, "openblas_sgemm.c"),
                       "-lopenblas", "-lm"]).returncode:
        sys.exit("cannot build bench/openblas_sgemm.c (apt-get install libopenblas-dev)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    return [os.path.join(HERE, "openblas_env"), ob], env


def emit(lines, out):
    """The section (lines, then the command that wrote it) to stdout and, given, to out."""
    md = "\n".join(lines + ["", "```", " ".join(sys.argv), "```", ""])
    sys.stdout.write(md)
    if out:
        with open(out, "w") as f:
            f.write(md)


def main():
    ap = argparse.ArgumentParser(description="the core's float32 rate over sgemm's")
    ap.add_argument("--build", default="build")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seq", type=int, action="append",
                    help="only the cases of this sequence length (repeatable)")
    ap.add_argument("--out")
    a = ap.parse_args()
    mha = os.path.join(a.build, "mha")
    ob, env = openblas(a.build, a.threads)
    load0 = os.getloadavg()
    start = time.time()
    rows = []
    for b, h, n, d, causal in cases(a.quick):
        if a.seq and n not in a.seq:
            continue
        e = h * d
        # short calls (N <= 1024: a millisecond or less at B = 1) run many times, so that a
        # median is not one wake-up of the threads
        short = n <= 1024
        core = [mha, "bench", "--core", "--backward", "--json", "--batch", str(b), "--heads",
                str(h), "--seq", str(n), "--head-dim", str(d), "--threads", str(a.threads),
                "--runs", "200" if short else "5", "--budget", f"{a.budget:g}",
                "--warmup", "1" if n <= 4096 else "0"]
        core += ["--causal"] * causal
        gemm = ob + [str(b * n), str(3 * e), str(e), "0", "1", "100" if short else "9"]
        print(f"B={b} H={h} N={n} D={d}{' causal' if causal else ''}", file=sys.stderr)
        pairs = []
        for order in (0, 1):
            steps = [lambda: run_json(core), lambda: run_json(gemm, env)]
            got = [f() for f in (steps if order == 0 else steps[::-1])]
            c, g = got if order == 0 else got[::-1]
            pairs.append((c["fwd_gflops"] / g["gflops"], c["bwd_gflops"] / g["gflops"], c, g))
        rows.append(((b, h, n, d, causal), max(pairs, key=lambda p: p[0] + p[1])))
    elapsed = time.time() - start
    L = ["## Issue 11: the float32 core against sgemm\n",
         f"Written by `bench/core_sgemm.py` ({datetime.datetime.now():%Y-%m-%d %H:%M}, "
         f"{elapsed:.0f} s); {a.threads} threads; load average before {load0[0]:.2f} "
         f"{load0[1]:.2f} {load0[2]:.2f}, after {' '.join(f'{x:.2f}' for x in os.getloadavg())}. "
         "Each row: mha's core (`mha bench --core --backward`, forward then backward, nominal "
         "FLOPs 4·B·H·N²·D, half causal, backward 2.5x) and OpenBLAS's sgemm on the layer's "
         "in_proj shape (M = B·N, N = 3E, K = E) timed next to each other, twice in "
         "alternating order; the better pair is shown. Target: forward and backward >= "
         f"{TARGET} of sgemm.\n",
         "| B | H | N | D | causal | core fwd GFLOP/s | core bwd GFLOP/s | sgemm GFLOP/s "
         f"| fwd / sgemm | bwd / sgemm | both >= {TARGET} |",
         "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for (b, h, n, d, causal), (rf, rb, c, g) in rows:
        ok = "yes" if min(rf, rb) >= TARGET else "**no**"
        L.append(f"| {b} | {h} | {n} | {d} | {'yes' if causal else 'no'} | "
                 f"{c['fwd_gflops']:.1f} | {c['bwd_gflops']:.1f} | {g['gflops']:.1f} | "
                 f"{rf:.3f} | {rb:.3f} | {ok} |")
    emit(L, a.out)


if __name__ == "__main__":
    main()
