#!/usr/bin/python3
"""render.py - turns bench/compare.sh's results (one JSON object a line) into BENCHMARKS.md
on stdout.   usage: render.py results.jsonl THREADS ELAPSED_SECONDS [MHA_INFO.txt]"""
import datetime
import json
import os
import subprocess
import sys


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def lscpu(field):
    for line in sh("lscpu").splitlines():
        k, _, v = line.partition(":")
        if k.strip() == field:
            return v.strip()
    return "?"


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    threads, elapsed = sys.argv[2], sys.argv[3]
    res = [dict(r["result"], label=r["label"], cmd=r["cmd"]) for r in rows]

    def find(label, what, shape=None, **kw):
        for r in res:
            if r["label"] != label or r.get("what") != what:
                continue
            if shape and (r.get("batch"), r.get("seq"), r.get("embed"), r.get("heads"),
                          bool(r.get("causal"))) != shape:
                continue
            if all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    def ms(r, key="median_ms"):
        return f"{r[key]:.2f}" if r and key in r else "-"

    def gf(r, key="gflops"):
        return f"{r[key]:.1f}" if r and key in r else "-"

    def ratio(a, b, fmt="{:.2f}x"):
        return fmt.format(a / b) if a and b else "-"

    isa = next((r["isa"] for r in res if r["label"] == "mha"), "?")
    torch_v = next((r.get("torch") for r in res if r["label"] == "torch"), "?")
    ob_v = sh("dpkg-query -W -f='${Version}' libopenblas0-pthread 2>/dev/null") or "?"
    out = []
    w = out.append
    w("# Benchmarks\n")
    w("Written by `bench/compare.sh` (`make bench`); do not edit by hand.\n")
    w(f"- Machine: {lscpu('Model name')}, {lscpu('CPU(s)')} cores "
      f"(flags include {' '.join(f for f in ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512dq') if f in sh('grep -m1 flags /proc/cpuinfo'))})")
    w(f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; one full run took {elapsed} s")
    w(f"- Threads: {threads} for everything; mha kernel path: {isa}; PyTorch {torch_v}; "
      f"OpenBLAS {ob_v} (OPENBLAS_CORETYPE=SkylakeX)")
    w("- Times are medians of up to 7 runs (the timed runs stop after 4 s, at least one run) "
      "after a warm-up run (none for N >= 2048, where a run takes seconds). GFLOP/s use "
      "nominal counts, the same for every implementation: core forward F = 4·B·H·N²·D (F/2 "
      "causal), core backward 2.5·F, projections P = 2·B·N·E·3E + 2·B·N·E·E, module forward "
      "F + P, module backward 2·P + 2.5·F.")
    w("- Load average before / after the run: "
      f"{os.environ.get('BENCH_LOAD_BEFORE', '?')} / {os.environ.get('BENCH_LOAD_AFTER', '?')}. "
      "Other work on the machine's 2 cores slows everything (multi-threaded runs most).\n")
    if len(sys.argv) > 4:
        w("The kernels measured (`mha info`):\n")
        w("```")
        w(open(sys.argv[4]).read().rstrip())
        w("```\n")

    shapes = []
    for r in res:
        if r["label"] == "mha" and r.get("what") == "module_fwd":
            shapes.append((r["batch"], r["seq"], r["embed"], r["heads"], bool(r["causal"])))

    def sname(s):
        return f"B={s[0]} N={s[1]} E={s[2]} H={s[3]}{' causal' if s[4] else ''}"

    # The targets of the performance work, against what this run measured.
    peak = max((r["gflops"] for r in res if r["label"] == "openblas"), default=None)
    w("## Targets\n")
    w("| target | reached in this run |")
    w("|---|---|")
    fw = [(find("torch", "torch_fwd", s_), find("mha", "module_fwd", s_)) for s_ in shapes]
    fb = [(find("torch", "torch_fwd_bwd", s_), find("mha", "module_fwd_bwd", s_)) for s_ in shapes]

    def span(pairs):
        v = [t["median_ms"] / m["median_ms"] for t, m in pairs if t and m]
        return f"{min(v):.2f}x to {max(v):.2f}x" if v else "-"

    w(f"| module forward >= 4x PyTorch, every shape | {span(fw)} |")
    w(f"| module forward + backward >= 4x PyTorch, every shape | {span(fb)} |")
    long_shapes = [s_ for s_ in shapes if s_[1] >= 2048]
    cr = []
    for s_ in long_shapes:
        cf = find("mha", "core_fwd", s_)
        ob = find("openblas", "openblas_sgemm", None, M=s_[0] * s_[1], N=3 * s_[2], K=s_[2], ta=0, tb=1)
        if cf and ob:
            cr.append(cf["gflops"] / ob["gflops"])
    w(f"| core forward >= 0.7x sgemm (N >= 2048) | {min(cr):.2f}x to {max(cr):.2f}x |" if cr else "| core forward >= 0.7x sgemm | - |")
    br = []
    for s_ in shapes:
        cf, cb = find("mha", "core_fwd", s_), find("mha", "core_fwd_bwd", s_)
        if cf and cb and "bwd_gflops" in cb:
            br.append(cb["bwd_gflops"] / cf["gflops"])
    w(f"| core backward >= 0.85x the forward's rate | {min(br):.2f}x to {max(br):.2f}x |" if br else "| core backward | - |")
    cc = find("mha", "core_fwd", (1, 4096, 1024, 16, True))
    cn = find("mha", "core_fwd", (1, 4096, 1024, 16, False))
    if cc and cn:
        w(f"| causal >= 1.7x faster than non-causal at N = 4096 | {cn['median_ms'] / cc['median_ms']:.2f}x |")
    mem = find("mha", "memory")
    if mem:
        w(f"| causal forward B=1 L=32768 E=512 H=8 under 1 GiB | {mem['maxrss_kb'] / 1024:.0f} MiB |")
    if peak:
        w(f"\nOn this machine OpenBLAS sgemm peaks at {peak:.0f} GFLOP/s on {threads} threads in this "
          "run (the largest rate in the matrix-product table), and mha's module runs at "
          f"{min(m['gflops'] for _, m in fw if m) / peak:.0%} to {max(m['gflops'] for _, m in fw if m) / peak:.0%} "
          "of that rate forward. A 4x speedup over PyTorch needs 4x PyTorch's GFLOP/s (next "
          "table): where that exceeds the sgemm peak it is out of reach for any implementation "
          "on this machine.\n")

    w("## The module: mha vs PyTorch nn.MultiheadAttention\n")
    w("| shape | mha fwd ms | torch fwd ms | speedup | mha fwd+bwd ms | torch fwd+bwd ms | speedup |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for s in shapes:
        mf, tf = find("mha", "module_fwd", s), find("torch", "torch_fwd", s)
        mb, tb = find("mha", "module_fwd_bwd", s), find("torch", "torch_fwd_bwd", s)
        w(f"| {sname(s)} | {ms(mf)} | {ms(tf)} | {ratio(tf and tf['median_ms'], mf and mf['median_ms'])} "
          f"| {ms(mb)} | {ms(tb)} | {ratio(tb and tb['median_ms'], mb and mb['median_ms'])} |")
    w("\nSpeedup = PyTorch time / mha time (> 1: mha is faster).\n")

    w("## Rates (GFLOP/s)\n")
    w("| shape | mha module fwd | torch fwd | mha module fwd+bwd | torch fwd+bwd | core fwd | core bwd | core bwd / fwd rate | core fwd / OpenBLAS sgemm |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in shapes:
        mf, tf = find("mha", "module_fwd", s), find("torch", "torch_fwd", s)
        mb, tb = find("mha", "module_fwd_bwd", s), find("torch", "torch_fwd_bwd", s)
        cf, cb = find("mha", "core_fwd", s), find("mha", "core_fwd_bwd", s)
        ob = find("openblas", "openblas_sgemm", None, M=s[0] * s[1], N=3 * s[2], K=s[2], ta=0, tb=1)
        w(f"| {sname(s)} | {gf(mf)} | {gf(tf)} | {gf(mb)} | {gf(tb)} | {gf(cf)} | "
          f"{gf(cb, 'bwd_gflops')} | {ratio(cb and cb.get('bwd_gflops'), cf and cf['gflops'])} | "
          f"{ratio(cf and cf['gflops'], ob and ob['gflops'], '{:.3f}')} |")
    w("\ncore fwd / OpenBLAS sgemm: the attention core's forward rate over OpenBLAS's rate on "
      "the same shape's in_proj product (M = B·N, N = 3E, K = E).\n")

    cc = find("mha", "core_fwd", (1, 4096, 1024, 16, True))
    cn = find("mha", "core_fwd", (1, 4096, 1024, 16, False))
    w("## Causal vs non-causal at N = 4096 (core forward, E = 1024, H = 16)\n")
    w(f"- non-causal {ms(cn)} ms, causal {ms(cc)} ms: causal takes "
      f"{ratio(cc and cc['median_ms'], cn and cn['median_ms'], '{:.2f}')} of the non-causal "
      "time (ideal with skipped masked tiles: about 0.5).\n")

    dr = next((r for r in res if r["label"] == "mha" and r.get("what") == "core_fwd_bwd"
               and r.get("dropout")), None)
    d0 = find("mha", "core_fwd_bwd", (1, 2048, 512, 8, False), dropout=0)
    if dr and d0:
        w("## Dropout (core, B=1 N=2048 E=512 H=8, p = 0.1)\n")
        w(f"- forward {ms(dr, 'fwd_median_ms')} ms vs {ms(d0, 'fwd_median_ms')} ms without "
          f"dropout ({dr['fwd_median_ms'] / d0['fwd_median_ms']:.2f}x); backward "
          f"{ms(dr, 'bwd_median_ms')} ms vs {ms(d0, 'bwd_median_ms')} ms "
          f"({dr['bwd_median_ms'] / d0['bwd_median_ms']:.2f}x).\n")

    mem = find("mha", "memory")
    if mem:
        w("## Memory\n")
        w(f"The module's causal forward at B=1, L=S=32768, E=512, H=8 (inference, inputs and "
          f"outputs included) peaked at {mem['maxrss_kb'] / 1024:.0f} MiB resident "
          f"({mem['median_ms'] / 1000:.1f} s, {mem['gflops']:.1f} GFLOP/s, one cold run); the "
          "target is under 1 GiB. No L x S matrix is ever allocated.\n")

    w("## Matrix products: mha gemm vs OpenBLAS sgemm\n")
    w("| M | N | K | ta | tb | mha ms | mha GFLOP/s | OpenBLAS ms | OpenBLAS GFLOP/s | mha / OpenBLAS |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res:
        if r["label"] != "mha" or r.get("what") != "gemm":
            continue
        o = find("openblas", "openblas_sgemm", None, M=r["M"], N=r["N"], K=r["K"], ta=r["ta"], tb=r["tb"])
        w(f"| {r['M']} | {r['N']} | {r['K']} | {r['ta']} | {r['tb']} | {ms(r)} | {gf(r)} | "
          f"{ms(o)} | {gf(o)} | {ratio(r['gflops'], o and o['gflops'], '{:.0%}')} |")
    w("\nShapes: in_proj forward (x·W^T, N = 3E), out_proj forward (N = E), the input gradient "
      "dX = dY·W (tb 0, K = 3E) and the weight gradient dW = dY^T·X (ta 1, K = B·N).\n")

    w("## Reproduce\n")
    w("```")
    w(f"make && bench/compare.sh        # BUILD=build THREADS={threads} OUT=BENCHMARKS.md")
    w("```\n")
    w("Every command it ran:\n")
    w("```")
    for r in res:
        w(r["cmd"])
    w("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()
