#!/usr/bin/env python3
"""render.py - turns bench/compare.sh's results (one JSON object a line) into BENCHMARKS.md
on stdout.   usage: render.py results.jsonl THREADS ELAPSED_SECONDS [MHA_INFO.txt]

Every ratio is labelled where it is printed; "speedup" is always PyTorch's time over mha's
(> 1: mha is faster, < 1: PyTorch is faster, printed in bold)."""
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
    # compare.sh runs the module and core commands in several rounds: keep each command's best
    # median (at its first place in the order)
    best = {}
    for r in res:
        if r["cmd"] not in best or r.get("median_ms", 0) < best[r["cmd"]].get("median_ms", 0):
            best[r["cmd"]] = r
    seen = set()
    res = [best[r["cmd"]] for r in res if not (r["cmd"] in seen or seen.add(r["cmd"]))]
    rounds = os.environ.get("BENCH_ROUNDS", "1")

    def key(r):
        return (r.get("batch"), r.get("seq"), r.get("embed"), r.get("heads"), bool(r.get("causal")))

    def find(label, what, shape=None, **kw):
        for r in res:
            if r["label"] != label or r.get("what") != what:
                continue
            if shape and key(r) != shape:
                continue
            if all(r.get(k) == v for k, v in kw.items()):
                return r
        return None

    def ms(r, k="median_ms"):
        return f"{r[k]:.2f}" if r and k in r else "-"

    def gf(r, k="gflops"):
        return f"{r[k]:.1f}" if r and k in r else "-"

    def ratio(a, b, fmt="{:.2f}x"):
        return fmt.format(a / b) if a and b else "-"

    def speedup(t, m, k="median_ms"):
        """PyTorch's time over mha's, bold where PyTorch is faster."""
        if not (t and m and k in t and k in m):
            return "-"
        v = t[k] / m[k]
        return f"{v:.2f}x" if v >= 1 else f"**{v:.2f}x**"

    def mod(what, s, nw, **kw):  # an mha module result
        return find("mha", what, s, need_weights=nw, dropout=0, **kw)

    def tmod(what, s, nw, mode):  # a PyTorch module result
        return find("torch", what, s, need_weights=nw, mode=mode)

    isa = next((r["isa"] for r in res if r["label"] == "mha" and "isa" in r), "?")
    tr = next((r for r in res if r["label"] == "torch"), {})
    ob_v = sh("dpkg-query -W -f='${Version}' libopenblas0-pthread 2>/dev/null") or "?"
    ob_core = next((r["core"] for r in res if r["label"] == "openblas" and "core" in r), "?")
    load_before = os.environ.get("BENCH_LOAD_BEFORE", "?")
    out = []
    w = out.append
    w("# Benchmarks\n")
    w("Written by `bench/compare.sh` (`make bench`); do not edit by hand.\n")
    w(f"- Machine: {lscpu('Model name')}, {lscpu('CPU(s)')} cores "
      f"(flags include {' '.join(f for f in ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512dq') if f in sh('grep -m1 flags /proc/cpuinfo'))})")
    w(f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; one full run took {elapsed} s")
    w(f"- Threads: {threads} for everything; mha kernel path: {isa}; PyTorch "
      f"{tr.get('torch', '?')} (pip CPU build, ATen CPU capability {tr.get('cpu_capability', '?')}); "
      f"OpenBLAS {ob_v} (its {ob_core} kernels, bench/openblas_env)")
    w(f"- Times are the best of {rounds} rounds (the module and core commands run once per "
      "round, one round after the other) of medians of up to 7 runs (the timed runs stop after "
      "4 s, at least one run) "
      "after a warm-up run (none for N >= 2048, where a run takes seconds; PyTorch's runs "
      "follow one untimed profiled call in any case). GFLOP/s use nominal counts, the same for "
      "every implementation: core forward F = 4·B·H·N²·D (F/2 causal), core backward 2.5·F, "
      "projections P = 2·B·N·E·3E + 2·B·N·E·E, module forward F + P, module backward "
      "2·P + 2.5·F; returning the weights adds nothing to the count.")
    w("- Load average before / after the run: "
      f"{load_before} / {os.environ.get('BENCH_LOAD_AFTER', '?')}. "
      "Other work on the machine's 2 cores slows everything (multi-threaded runs most, "
      "PyTorch's OpenMP threads far more than mha's).")
    try:
        other = float(os.environ["BENCH_CPU_OTHER"])
        cores = os.cpu_count() or 1
        share = max(other, 0.0) / (cores * max(float(elapsed), 1.0))
        w(f"- CPU time other processes (and the hypervisor's steal) took during the run: "
          f"{max(other, 0.0):.1f} s, {share:.1%} of the {cores} cores' time over the run's {elapsed} s.")
        if share > 0.05:
            w("- **Warning: other work used more than 5% of the CPU during the run: the numbers "
              "below are not representative (PyTorch's suffer most).**")
    except (KeyError, ValueError):
        pass
    w("")
    if len(sys.argv) > 4:
        w("The kernels measured (`mha info`):\n")
        w("```")
        w(open(sys.argv[4]).read().rstrip())
        w("```\n")

    # Module shapes: those with an mha module forward; core shapes: those with an SDPA run.
    shapes, core_shapes = [], []
    for r in res:
        if r["label"] == "mha" and r.get("what") == "module_fwd" and key(r) not in shapes:
            shapes.append(key(r))
        if r["label"] == "torch" and r.get("what") == "torch_sdpa_fwd" and key(r) not in core_shapes:
            core_shapes.append(key(r))

    def sname(s):
        return f"B={s[0]} N={s[1]} E={s[2]} H={s[3]}{' causal' if s[4] else ''}"

    def cname(s):
        return f"B={s[0]} H={s[3]} N={s[1]} D={s[2] // s[3]}"

    def best_fwd(s, nw):
        """PyTorch's faster forward of inference (fast path) and training mode."""
        c = [t for t in (tmod("torch_module_fwd", s, nw, "infer"),
                         tmod("torch_module_fwd", s, nw, "train")) if t]
        return min(c, key=lambda t: t["median_ms"]) if c else None

    # The targets of the performance work, against what this run measured.
    peak = max((r["gflops"] for r in res if r["label"] == "openblas"), default=None)
    w("## Targets\n")
    w("| target | reached in this run |")
    w("|---|---|")
    fw = [(best_fwd(s_, False), mod("module_fwd", s_, False)) for s_ in shapes]
    fb = [(tmod("torch_module_fwd_bwd", s_, False, "train"), mod("module_fwd_bwd", s_, False))
          for s_ in shapes]

    def span(pairs):
        v = [t["median_ms"] / m["median_ms"] for t, m in pairs if t and m]
        return f"{min(v):.2f}x to {max(v):.2f}x" if v else "-"

    w(f"| module forward >= 4x PyTorch (its faster forward, need_weights=False), every shape | {span(fw)} |")
    w(f"| module forward + backward >= 4x PyTorch (need_weights=False), every shape | {span(fb)} |")
    long_shapes = [s_ for s_ in shapes if s_[1] >= 2048]
    cr = []
    for s_ in long_shapes:
        cf = find("mha", "core_fwd", s_, dropout=0)
        ob = find("openblas", "openblas_sgemm", None, M=s_[0] * s_[1], N=3 * s_[2], K=s_[2], ta=0, tb=1)
        if cf and ob:
            cr.append(cf["gflops"] / ob["gflops"])
    w(f"| core forward >= 0.7x sgemm (N >= 2048) | {min(cr):.2f}x to {max(cr):.2f}x |" if cr else "| core forward >= 0.7x sgemm (N >= 2048) | - |")
    br = []
    for s_ in shapes + core_shapes:
        cf, cb = find("mha", "core_fwd", s_, dropout=0), find("mha", "core_fwd_bwd", s_, dropout=0)
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
    mg = [m["gflops"] for _, m in fw if m]
    if peak and mg:
        w(f"\nOn this machine OpenBLAS sgemm peaks at {peak:.0f} GFLOP/s on {threads} threads in this "
          "run (the largest rate in the matrix-product table), and mha's module runs at "
          f"{min(mg) / peak:.0%} to {max(mg) / peak:.0%} of that rate forward. A 4x speedup over "
          "PyTorch needs 4x PyTorch's GFLOP/s (the rates table): where that exceeds the sgemm "
          "peak it is out of reach for any implementation on this machine.")
    w("")

    # Every comparison where PyTorch took less time than mha: the next work.
    slower = []

    def note(what, s, m, t, how, k="median_ms"):
        if m and t and k in m and k in t and t[k] < m[k]:
            who = f"PyTorch {how}" if how else "PyTorch"
            slower.append((m[k] / t[k], f"{what}, {s}: mha {m[k]:.2f} ms, {who} {t[k]:.2f} ms "
                                        f"(mha takes {m[k] / t[k]:.3f}x PyTorch's time)"))

    for s in shapes:
        for nw in (False, True):
            wl = f"need_weights={nw}"
            mf, mb = mod("module_fwd", s, nw), mod("module_fwd_bwd", s, nw)
            ti = tmod("torch_module_fwd", s, nw, "infer")
            tt = tmod("torch_module_fwd", s, nw, "train")
            tb = tmod("torch_module_fwd_bwd", s, nw, "train")
            note(f"module forward, {wl}", sname(s), mf, ti, f"inference ({ti and ti['kernel']})")
            note(f"module forward, {wl}", sname(s), mf, tt, f"training mode ({tt and tt['kernel']})")
            note(f"module forward + backward, {wl}", sname(s), mb, tb, f"({tb and tb['kernel']})")
            note(f"module backward alone, {wl}", sname(s), mb, tb, "", "bwd_median_ms")
    for s in core_shapes:
        cf, cb = find("mha", "core_fwd", s, dropout=0), find("mha", "core_fwd_bwd", s, dropout=0)
        sf, sb = find("torch", "torch_sdpa_fwd", s), find("torch", "torch_sdpa_fwd_bwd", s)
        c = f"{cname(s)}{' causal' if s[4] else ''}"
        note("core forward vs SDPA", c, cf, sf, f"({sf and sf['kernel']})")
        note("core forward + backward vs SDPA", c, cb, sb, f"({sb and sb['kernel']})")
        note("core backward alone vs SDPA's", c, cb, sb, "", "bwd_median_ms")
    w("## Where PyTorch is faster\n")
    if slower:
        w("Every comparison in this run where PyTorch took less time than mha, the largest gap "
          "first (the next work):\n")
        for _, line in sorted(slower, key=lambda x: -x[0]):
            w(f"- {line}")
    else:
        w("Nowhere in this run: mha took less time than PyTorch in every comparison below.")
    w("")

    w("## The module: mha vs PyTorch nn.MultiheadAttention, forward\n")
    w("| shape | need_weights | mha ms | PyTorch inference ms | speedup | PyTorch training-mode ms | speedup | PyTorch attention: inference / training |")
    w("|---|---|---:|---:|---:|---:|---:|---|")

    def kern(t, infer=False):
        if not t:
            return "-"
        if infer:
            fp = "fast path" if t.get("fast_path") else "**fast path NOT taken**"
            return f"{fp}, {t['kernel']}"
        return t["kernel"]

    for s in shapes:
        for nw in (False, True):
            mf = mod("module_fwd", s, nw)
            ti = tmod("torch_module_fwd", s, nw, "infer")
            tt = tmod("torch_module_fwd", s, nw, "train")
            w(f"| {sname(s)} | {nw} | {ms(mf)} | {ms(ti)} | {speedup(ti, mf)} | {ms(tt)} | "
              f"{speedup(tt, mf)} | {kern(ti, True)} / {kern(tt)} |")
    w("\nSpeedup = PyTorch time / mha time (> 1: mha is faster; below 1, in bold: PyTorch is "
      "faster). mha: `mha_module_forward` without saving for a backward (`mha bench`, with "
      "`--need-weights` for the averaged weights [B, N, N]). PyTorch inference: `eval()` under "
      "`torch.inference_mode()`, which takes the fused fast path `_native_multi_head_attention`; "
      "training mode: `train()` with the forward under `torch.no_grad()` "
      "(`F.multi_head_attention_forward`). need_weights=True returns the weights averaged over "
      "heads (average_attn_weights=True) on both sides. Causal: PyTorch gets the boolean mask "
      "and is_causal=True. The last column names the ops that computed the attention, read from "
      "`torch.profiler` on an untimed call: flash (cpu) = "
      "`_scaled_dot_product_flash_attention_for_cpu`; bmm + (masked_)softmax = the score matrix "
      "materialized. Before timing, the fast path's output (and weights) were checked against "
      "the training path's.\n")
    fast = [tmod("torch_module_fwd", s_, False, "infer") for s_ in shapes]
    fast = [t for t in fast if t]
    if fast and all(t.get("fast_path") and t["kernel"] != "flash (cpu)" for t in fast):
        w("In this run the CPU fast path never called SDPA's flash kernel, need_weights=False "
          f"included: it computed the scores with {' and '.join(sorted({t['kernel'] for t in fast}))} "
          "(an L x S matrix per head).\n")

    w("## The module: forward + backward (training)\n")
    w("| shape | need_weights | mha ms | PyTorch ms | speedup | mha fwd / bwd ms | PyTorch fwd / bwd ms | bwd speedup | PyTorch attention |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for s in shapes:
        for nw in (False, True):
            mb = mod("module_fwd_bwd", s, nw)
            tb = tmod("torch_module_fwd_bwd", s, nw, "train")
            w(f"| {sname(s)} | {nw} | {ms(mb)} | {ms(tb)} | {speedup(tb, mb)} | "
              f"{ms(mb, 'fwd_median_ms')} / {ms(mb, 'bwd_median_ms')} | "
              f"{ms(tb, 'fwd_median_ms')} / {ms(tb, 'bwd_median_ms')} | "
              f"{speedup(tb, mb, 'bwd_median_ms')} | {kern(tb)} |")
    w("\nBoth sides in training mode: mha's forward saves what the backward needs, PyTorch's "
      "forward records the autograd graph (`train()`, input with requires_grad); then the "
      "backward of the output (input and parameter gradients). Speedup = PyTorch time / mha "
      "time.\n")

    w("## The attention core: mha vs PyTorch F.scaled_dot_product_attention\n")
    w("| q, k, v [B, H, N, D] | causal | mha fwd ms | SDPA fwd ms | speedup | mha fwd+bwd ms | SDPA fwd+bwd ms | speedup | bwd speedup | SDPA backend (fwd / fwd+bwd) |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in core_shapes:
        cf, cb = find("mha", "core_fwd", s, dropout=0), find("mha", "core_fwd_bwd", s, dropout=0)
        sf, sb = find("torch", "torch_sdpa_fwd", s), find("torch", "torch_sdpa_fwd_bwd", s)

        def be(t):
            return f"{t['sdp_choice']} ({t['kernel']})" if t else "-"

        bs = be(sf) if be(sf) == be(sb) else f"{be(sf)} / {be(sb)}"
        w(f"| {cname(s)} | {'yes' if s[4] else 'no'} | {ms(cf)} | {ms(sf)} | {speedup(sf, cf)} | "
          f"{ms(cb)} | {ms(sb)} | {speedup(sb, cb)} | {speedup(sb, cb, 'bwd_median_ms')} | {bs} |")
    w("\nmha: `mha_attn_forward` / `mha_attn_backward` (`mha bench --core`); PyTorch: "
      "`F.scaled_dot_product_attention(q, k, v, is_causal=...)` on contiguous float32 tensors, "
      "the forward under `torch.inference_mode()`, forward + backward with requires_grad. "
      "Speedup = PyTorch time / mha time. The backend is the one `torch._fused_sdp_choice` "
      "picks for these tensors (FLASH_ATTENTION or MATH), confirmed by the aten ops "
      "`torch.profiler` saw (flash (cpu) = `_scaled_dot_product_flash_attention_for_cpu` and "
      "its `_backward`); the script stops if the two disagree. Before timing, SDPA's output "
      "was checked against a float64 reference on 128 query rows of two heads (and its "
      "gradients against the math backend where B·H·N² <= 2^26).\n")

    w("## Rates (GFLOP/s)\n")
    w("| shape | mha module fwd | PyTorch fwd (faster mode) | mha module fwd+bwd | PyTorch fwd+bwd | core fwd | SDPA fwd | core bwd | SDPA bwd | core bwd / fwd rate | core fwd / OpenBLAS sgemm |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in shapes + [c for c in core_shapes if c not in shapes]:
        mf, tf = mod("module_fwd", s, False), best_fwd(s, False)
        mb, tb = mod("module_fwd_bwd", s, False), tmod("torch_module_fwd_bwd", s, False, "train")
        cf, cb = find("mha", "core_fwd", s, dropout=0), find("mha", "core_fwd_bwd", s, dropout=0)
        sf, sb = find("torch", "torch_sdpa_fwd", s), find("torch", "torch_sdpa_fwd_bwd", s)
        ob = find("openblas", "openblas_sgemm", None, M=s[0] * s[1], N=3 * s[2], K=s[2], ta=0, tb=1)
        w(f"| {sname(s)} | {gf(mf)} | {gf(tf)} | {gf(mb)} | {gf(tb)} | {gf(cf)} | {gf(sf)} | "
          f"{gf(cb, 'bwd_gflops')} | {gf(sb, 'bwd_gflops')} | "
          f"{ratio(cb and cb.get('bwd_gflops'), cf and cf['gflops'])} | "
          f"{ratio(cf and cf['gflops'], ob and ob['gflops'], '{:.3f}')} |")
    w("\nModule columns with need_weights=False. core fwd / OpenBLAS sgemm: the attention "
      "core's forward rate over OpenBLAS's rate on the same shape's in_proj product (M = B·N, "
      "N = 3E, K = E; '-' where that product was not timed).\n")

    cc = find("mha", "core_fwd", (1, 4096, 1024, 16, True))
    cn = find("mha", "core_fwd", (1, 4096, 1024, 16, False))
    if cc or cn:
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
      "dX = dY·W (tb 0, K = 3E) and the weight gradient dW = dY^T·X (ta 1, K = B·N). mha / "
      "OpenBLAS is a rate ratio (> 100%: mha is faster).\n")

    w("## Reproduce\n")
    w("```")
    w(f"make && bench/compare.sh        # BUILD=build THREADS={threads} OUT=BENCHMARKS.md "
      "PYTHON=build/venv/bin/python (torch==2.13.0; `make test` creates it)")
    w("```\n")
    w("Every command it ran (each prints the JSON line its numbers come from):\n")
    w("```")
    for r in res:
        w(r["cmd"])
    w("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()
