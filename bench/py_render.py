#!/usr/bin/env python3
"""py_render.py - turns bench/py_bench.py's JSON lines into a markdown report on stdout.

    usage: py_render.py results.jsonl [REPRODUCE_COMMAND]

REPRODUCE_COMMAND (bench/py_compare.sh passes its own command line) is printed at the top
with py_bench.py's exact command. Every ratio is labelled where it is printed: "torch/mha" is
PyTorch's time over mha's (> 1: mha is faster; below 1, in bold: PyTorch is faster);
"overhead" is the Python module's time over the C benchmark's, minus 1.
"""
import datetime
import json
import shlex
import sys

from render import lscpu

OVERHEAD_SHAPE = [1, 2048, 512, 8]  # the overhead target: under 5% there
SMALL_SHAPE = [1, 8, 64, 4]         # the small-call target: mha's forward beats torch's
MODES = {"infer": "forward, eval() + inference_mode", "train": "forward, train() + no_grad",
         "fwd_bwd": "forward + backward, train()", "fwd": "forward",
         "grad": "forward, train(), grad enabled"}


def sname(r):
    B, N, E, H = r["shape"]
    return f"B={B} N={N} E={E} H={H}{' causal' if r.get('causal') else ''}"


def t(v):
    """A time in ms, as µs below 1 ms (the small calls)."""
    return f"{v:.2f}" if v >= 1 else f"{v * 1e3:.1f} µs"


def ratio(v):
    return f"{v:.2f}x" if v >= 1 else f"**{v:.2f}x**"


def render(recs, reproduce=None):
    run = next((r for r in recs if r["what"] == "run"), {})
    done = next((r for r in recs if r["what"] == "done"), {})

    def of(what):
        return [r for r in recs if r["what"] == what]

    out = []
    w = out.append
    w("# Python benchmark: mha's modules vs PyTorch in one process\n")
    w("Written by `bench/py_compare.sh` (bench/py_bench.py, bench/py_render.py). Reproduce:\n")
    w("```")
    if reproduce:
        w(reproduce)
    if run.get("argv"):
        w(f"PYTHONPATH=python MHA_LIBRARY={run.get('mha_library', 'build/libmha.so')} "
          f"{run.get('python_exe', 'build/venv/bin/python')} {shlex.join(run['argv'])}")
    w("```\n")
    w(f"- Machine: {lscpu('Model name')}, {lscpu('CPU(s)')} cores; "
      f"date {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
      + (f"; the run took {done['elapsed_s']:.0f} s" if "elapsed_s" in done else ""))
    w(f"- Threads: {run.get('threads', '?')} for both (torch {run.get('torch_threads', '?')}, "
      f"mha {run.get('mha_threads', '?')}); mha {run.get('mha', '?')}, kernel path "
      f"{run.get('isa', '?')}; PyTorch {run.get('torch', '?')} (ATen CPU capability "
      f"{run.get('cpu_capability', '?')}); Python {run.get('python', '?')}"
      + ("; **QUICK mode (few runs, one shape): not representative**" if run.get("quick")
         else ""))
    w(f"- Each comparison: one checked call per side first (outputs, weights and every gradient "
      f"agree within {run.get('tol', '?')} of PyTorch's largest magnitude, else the run stops), "
      f"then mha and PyTorch timed alternately (a b, b a, ...), {run.get('runs', '?')} runs "
      f"each at most, stopping after {run.get('budget', '?')} s per comparison but not before "
      "3 runs; medians. Small "
      f"calls: rounds of {run.get('small_iters', '?')} calls, median of "
      f"{run.get('small_rounds', '?')} rounds per side.")
    w(f"- Load average before / after: {run.get('load_before', '?')} / "
      f"{done.get('load_after', '?')}")
    if "cpu_other_s" in done and done.get("elapsed_s"):
        share = done["cpu_other_s"] / (done.get("cores", 1) * done["elapsed_s"])
        w(f"- CPU time other processes took during the run: {done['cpu_other_s']:.1f} s, "
          f"{share:.1%} of the {done.get('cores', '?')} cores' time")
        if share > 0.05:
            w("- **Warning: other work used more than 5% of the CPU during the run: the "
              "numbers below are not representative.**")
    if not done:
        w("- **The run did not finish: the results below are partial.**")
    w("")

    # Targets
    mods, seeds, sdpas = of("module"), [r for r in of("seed") if "skipped" not in r], of("sdpa")
    small, ovh = of("small"), of("overhead")
    w("## Targets\n")
    w("| target | this run |")
    w("|---|---|")
    o = [r for r in ovh if r["shape"] == OVERHEAD_SHAPE and not r["causal"]]
    w("| Python overhead over the C benchmark at (1,2048,512,8) < 5% | " +
      ("; ".join(f"{MODES[r['mode']]}, need_weights={r['need_weights']}: "
                 f"{r['overhead']:+.1%}{'' if r['overhead'] < 0.05 else ' (**missed**)'}"
                 for r in o) or "-") + " |")
    s = [r for r in small if r["shape"] == SMALL_SHAPE]
    w("| small calls: mha's module forward beats PyTorch's at (1,8,64,4) (torch/mha > 1) | " +
      ("; ".join(f"{r['mode']}, need_weights={r['need_weights']}: {ratio(r['ratio'])}"
                 for r in s) or "-") + " |")
    for label, rs in (("drop-in module (every shape and mode)", mods),
                      ("seed module", seeds), ("SDPA", sdpas)):
        if rs:
            lo, hi = (f(rs, key=lambda r: r["ratio"]) for f in (min, max))
            nw = f", need_weights={lo['need_weights']}" if "need_weights" in lo else ""
            w(f"| mha faster than PyTorch 2.13, {label}: torch/mha | {lo['ratio']:.2f}x to "
              f"{hi['ratio']:.2f}x (lowest: {sname(lo)}, {MODES[lo['mode']]}{nw}) |")
    w("")
    slower = [r for r in mods + seeds + sdpas + small if r["ratio"] < 1]
    if slower:
        w("Where PyTorch was faster in this run (the largest gap first):\n")
        for r in sorted(slower, key=lambda r: r["ratio"]):
            nw = f", need_weights={r['need_weights']}" if "need_weights" in r else ""
            w(f"- {r['what']} {sname(r)}, {MODES[r['mode']]}{nw}: torch/mha {r['ratio']:.3f}")
        w("")

    def ms(r, k):
        return f"{r[k]:.2f}" if k in r else "-"

    if mods:
        w("## mha.MultiheadAttention vs torch.nn.MultiheadAttention\n")
        w("| shape | mode | need_weights | mha ms | torch ms | torch/mha | mha fwd / bwd ms | "
          "torch fwd / bwd ms | PyTorch's attention |")
        w("|---|---|---|---:|---:|---:|---:|---:|---|")
        for r in mods:
            split = lambda p: f"{r[p + '_fwd_ms']:.2f} / {r[p + '_bwd_ms']:.2f}" \
                if p + "_fwd_ms" in r else "-"
            w(f"| {sname(r)} | {MODES[r['mode']]} | {r['need_weights']} | {ms(r, 'mha_ms')} | "
              f"{ms(r, 'torch_ms')} | {ratio(r['ratio'])} | {split('mha')} | {split('torch')} | "
              f"{r.get('torch_kernel', '-')} |")
        w("\nBoth modules built with the same state_dict; self-attention on x [B, N, E] "
          "(batch_first=True). Causal: the bool upper-triangle attn_mask with is_causal=True on "
          "both sides. PyTorch's attention: the aten ops torch.profiler saw in its checked call "
          "(flash (cpu) = `_scaled_dot_product_flash_attention_for_cpu`; bmm + softmax = the "
          "score matrix materialized).\n")
    if seeds or of("seed"):
        w("## mha.MultiHeadAttention (the seed module) vs the plain PyTorch module\n")
        w("| shape | mode | mha ms | plain PyTorch ms | torch/mha |")
        w("|---|---|---:|---:|---:|")
        for r in of("seed"):
            if "skipped" in r:
                w(f"| {sname(r)} | skipped: {r['skipped']} | - | - | - |")
            else:
                w(f"| {sname(r)} | {MODES[r['mode']]} | {ms(r, 'mha_ms')} | {ms(r, 'torch_ms')} "
                  f"| {ratio(r['ratio'])} |")
        w("\nThe plain module: W_q/W_k/W_v/W_o nn.Linear, scores / sqrt(d_k), "
          "masked_fill(mask == 0, -1e9), softmax, dropout (p = 0), @ V; both return the "
          "weights [B, H, N, N]. Causal: the 0/1 lower-triangular mask. Forward in eval() "
          "under no_grad.\n")
    if sdpas:
        w("## mha.functional vs F.scaled_dot_product_attention\n")
        w("| q, k, v [B, H, N, D] | causal | mode | mha ms | torch ms | torch/mha | "
          "PyTorch's kernel |")
        w("|---|---|---|---:|---:|---:|---|")
        for r in sdpas:
            B, N, E, H = r["shape"]
            w(f"| B={B} H={H} N={N} D={E // H} | {'yes' if r['causal'] else 'no'} | "
              f"{MODES[r['mode']]} | {ms(r, 'mha_ms')} | {ms(r, 'torch_ms')} | "
              f"{ratio(r['ratio'])} | {r.get('torch_kernel', '-')} |")
        w("\nForward under inference_mode; forward + backward with q, k, v requiring grad.\n")
    if ovh:
        w("## Python overhead over the C benchmark\n")
        w("| shape | mode | need_weights | C `mha bench` ms | Python module ms | overhead | "
          "per round (C / Python ms) |")
        w("|---|---|---|---:|---:|---:|---|")
        for r in ovh:
            rounds = ", ".join(f"{t(c)} / {t(p)}" for c, p in zip(r["c_ms_rounds"],
                                                                  r["py_ms_rounds"]))
            w(f"| {sname(r)} | {MODES[r['mode']]} | {r['need_weights']} | {t(r['c_ms'])} | "
              f"{t(r['py_ms'])} | {r['overhead']:+.1%} | {rounds} |")
        w("\nOverhead = Python time / C time - 1, each the best of its rounds' medians (C and "
          "Python alternate round by round; a small call's medians are of --small-iters "
          "single calls). C: `mha bench` (a subprocess; the module forward "
          "without saving, with --backward forward with saving + backward); Python: "
          "mha.MultiheadAttention in this process doing the same: eval() under inference_mode "
          "for the forward, train() + y.backward(dy) for forward + backward. Causal shapes have "
          "no need_weights row: the Python layer then hands the library the mask (is_causal is "
          "only a hint there, as in PyTorch) where `mha bench --causal` sets the causal flag.\n")
    if small:
        w("## Small calls\n")
        w("| shape | mode | need_weights | mha µs | torch µs | torch/mha |")
        w("|---|---|---|---:|---:|---:|")
        for r in small:
            w(f"| {sname(r)} | {MODES[r['mode']]} | {r['need_weights']} | {r['mha_us']:.1f} | "
              f"{r['torch_us']:.1f} | {ratio(r['ratio'])} |")
        w("\nTime per module forward call (a round of calls in a loop / the number of calls). "
          "grad: train() with autograd recording (the parameters require grad), no backward.\n")
    cmds = sorted({r["c_cmd"] for r in ovh})
    if cmds:
        w("The C benchmark commands:\n")
        w("```")
        w("\n".join(cmds))
        w("```\n")
    if run.get("mha_info"):
        w("The kernels measured (`mha.describe()`):\n")
        w("```")
        w(run["mha_info"].rstrip())
        w("```")
    return "\n".join(out)


def main():
    if len(sys.argv) not in (2, 3):
        print("usage: py_render.py results.jsonl [REPRODUCE_COMMAND]", file=sys.stderr)
        sys.exit(1)
    with open(sys.argv[1]) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    print(render(recs, sys.argv[2] if len(sys.argv) > 2 else None))


if __name__ == "__main__":
    main()
