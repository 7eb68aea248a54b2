#!/usr/bin/env python3
"""dtype.py - issue 11's speed ratios in one run: mha's attention core in bf16 and f16 against
its float32 rate, PyTorch 2.13's F.scaled_dot_product_attention in bf16 and f16 against mha in
the same dtype, and PyTorch's nn.MultiheadAttention in bf16 against mha's module. Prints the
markdown section "Issue 11: bf16 and f16" for BENCHMARKS.md: RATIOS of measurements taken side
by side in this run (progress on stderr).

    bench/dtype.py      [--build build] [--python $BUILD/venv/bin/python] [--threads 2]
                        [--rounds 3] [--budget 4] [--quick] [--only core|module]
                        [--out FILE.md] [--results FILE.jsonl] [--from FILE.jsonl]

The shapes (groups() below): the core at B=1 H=8, D=64 with N = 2048, 4096, 8192 and D=128
with N = 2048, 4096, causal and not, forward and backward, mha in f32, bf16 and f16, PyTorch's
SDPA in bf16 (and in f16 at N = 2048 only: PyTorch's f16 backward is much slower than its
bf16 on this CPU, which has no AVX512_FP16, and every shape would take the run past 15
minutes); the module at B=4 N=256 E=768 H=12 (BERT-base) and B=1 N=2048 E=1024 H=16, inference
forward and training forward + backward: PyTorch in bf16, mha in bf16 when `mha bench` runs its
module in bf16, else in float32 (the table's caption says which; issue 11's module in bf16 is a
later step). mha's gemm in bf16 is not measured here. A full run is estimated (from issue 10's
float32 rates on this machine, not timed) at 12-14 minutes on 2 quiet cores: 3 rounds of about
4 minutes. --quick: tiny shapes, one round (a check of the script, not a result: seconds,
mostly starting PyTorch). --only core / --only module: that part alone (its tables only).
--from FILE.jsonl: no measurement, the report of a run's --results file (the same options).

How: as bench/modern.py (whose Runner, Report and helpers this imports): every measurement is
a process of its own printing one JSON line, `mha bench --core --backward --json --dtype T`
(tools/cmd_bench.c), `mha bench --json` for the module, bench/torch_modern.py --dtype T
(SDPA) or bench/torch_module.py (nn.MultiheadAttention); the cases of one shape form a group
run side by side in each round (in the reverse order every other round); a ratio is computed in
every round and the report gives the median over the rounds. Stdlib only; it imports neither
torch nor mha. A command that fails is reported with its message and not run again.
"""
import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

import modern

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = ("f32", "bf16", "f16")
TARGET = 1.7  # bf16 rate / f32 rate, forward and backward, at N >= TARGET_N (issue 11)
TARGET_N = 2048


def core_case(dtype, seq, head_dim, causal, torch_dtypes):
    """mha's core in dtype at B=1 H=8 (PyTorch's SDPA too where dtype is in torch_dtypes)."""
    c = modern.case("", 1, 8, seq, head_dim, causal=causal)
    c.update(name=f"{dtype} {modern.shape_str(c)}", kind="core", dtype=dtype, backward=True,
             sides=("mha", "torch") if dtype in torch_dtypes else ("mha",))
    return c


def module_case(batch, seq, embed, heads, mode):
    """The module, self-attention [B, N, E] with H heads; mode infer (forward) or train."""
    c = modern.case("", batch, heads, seq, embed // heads)
    c.update(name=f"module B={batch} N={seq} E={embed} H={heads} {mode}", kind="module",
             embed=embed, mode=mode, backward=mode == "train", sides=("mha", "torch"))
    return c


def groups(quick):
    """{"core": [[case, ...], ...], "module": [...]}: the cases of each group run side by side."""
    if quick:
        core = [(64, 128, False), (32, 64, True)]
        f16_n, modules = 64, [(2, 32, 64, 4)]
    else:
        core = [(d, n, causal) for causal in (False, True)
                for d, ns in ((64, (2048, 4096, 8192)), (128, (2048, 4096))) for n in ns]
        f16_n, modules = 2048, [(4, 256, 768, 12), (1, 2048, 1024, 16)]
    return {"core": [[core_case(t, n, d, causal, ("bf16", "f16") if n <= f16_n else ("bf16",))
                      for t in DTYPES] for d, n, causal in core],
            "module": [[module_case(*m, mode) for mode in ("infer", "train")] for m in modules]}


def mha_module_dtype(mha):
    """("bf16", "") when `mha bench` runs the module in bf16, else ("f32", why not)."""
    p = subprocess.run([mha, "bench", "--batch", "1", "--seq", "4", "--embed", "8", "--heads",
                        "2", "--dtype", "bf16", "--runs", "1", "--warmup", "0", "--threads", "1",
                        "--json"], capture_output=True, text=True)
    if p.returncode == 0 and json.loads(p.stdout.splitlines()[-1]).get("dtype") == "bf16":
        return "bf16", ""
    return "f32", (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[0]


def bf16_kernels(mha):
    """What `mha info` says runs in bf16 and f16: its kernel entries whose label names either
    (a label in the first 16 columns, continuation lines indented past it), on one line."""
    lines = subprocess.run([mha, "info"], capture_output=True, text=True).stdout.splitlines()
    entries = []
    for line in lines:
        label = line[:16].strip()
        if line.startswith("  ") and label:
            entries.append([label, line[16:]] if "f16" in label else None)
        elif entries and entries[-1] and line.startswith(" " * 16):
            entries[-1].append(line)
        elif not line.startswith(" "):
            entries.append(None)  # a line of its own ends an entry
    entries = ["%s: %s" % (e[0], " ".join(" ".join(e[1:]).split())) for e in entries if e]
    return "`mha info`: " + ("; ".join(entries) if entries else "no bf16 or f16 kernel listed")


class Runner(modern.Runner):
    """modern.Runner with the dtype, the module's commands and --budget."""

    def command(self, side, c):
        if c["kind"] == "core":
            cmd = super().command(side, c) + ["--dtype", c["dtype"]]
        else:
            shape = [str(x) for x in ("--batch", c["batch"], "--seq", c["seq"], "--embed",
                                      c["embed"], "--heads", c["heads"])]
            shape += ["--backward"] * c["backward"]
            t = modern.timing_args(c, self.a.threads)
            if side == "mha":
                cmd = [self.a.mha, "bench", *shape, "--json", *t]
                cmd += ["--dtype", "bf16"] if self.a.module_dtype == "bf16" else []
            else:
                cmd = [self.a.python, os.path.join(HERE, "torch_module.py"), *shape, "--dtype",
                       "bf16", *t]
        cmd[cmd.index("--budget") + 1] = f"{self.a.budget:g}"
        return cmd


def first_result(runner, side, name):
    return next((r["result"] for r in runner.res if (r["side"], r["case"]) == (side, name)
                 and "result" in r), None)


def versus_cells(rep, c):
    """mha's ms, PyTorch's ms and PyTorch's time / mha's (medians over the rounds), forward
    then backward; dashes for the backward of a case that times none."""
    cells = []
    for key in ("fwd_median_ms", "bwd_median_ms")[:1 + c["backward"]]:
        _, text = rep.ratio(("torch", c["name"]), ("mha", c["name"]), key, "{:.2f}x")
        cells += [rep.ms("mha", c["name"], key), rep.ms("torch", c["name"], key), text]
    return cells + ["-"] * (6 - len(cells))


def core_rows(rep, grp, w):
    """A group's forward and backward rows of the bf16 / f16 vs f32 table."""
    by = {c["dtype"]: c for c in grp}
    f32 = by["f32"]
    for phase in ("fwd", "bwd"):
        key = phase + "_median_ms"
        cells = [rep.ms("mha", by[t]["name"], key) for t in DTYPES]
        cells.append(rep.ms("mha", by["bf16"]["name"], phase + "_gflops"))
        vals = []
        for t in ("bf16", "f16"):  # the same nominal FLOPs: rate t / rate f32 = f32 time / t's
            v, text = rep.ratio(("mha", f32["name"]), ("mha", by[t]["name"]), key, "{:.2f}x")
            cells.append(text)
            vals.append(v)
        if f32["seq"] < TARGET_N:
            met = f"n/a (N < {TARGET_N})"
        else:
            met = "-" if vals[0] is None else ("yes" if vals[0] >= TARGET else "**no**")
        w(f"| {modern.shape_str(f32)} | {phase} | " + " | ".join(cells) + f" | {met} |")


def render(runner, g, a, elapsed, info, module_why):
    rep = modern.Report(runner, list(range(1, a.rounds + 1)))
    L = []
    w = L.append
    w("## Issue 11: bf16 and f16\n")
    w(f"Written by `bench/dtype.py` ({datetime.datetime.now():%Y-%m-%d %H:%M}, {elapsed:.0f} s). "
      f"{info}\n")
    w(f"Each ratio is the median over {a.rounds} round{'s' * (a.rounds != 1)} of the ratio of "
      "two measurements made next to each other in the round (each the median of up to 5 "
      f"runs, {a.budget:g} s at most); the rounds' own values follow in brackets. mha's core: "
      "`mha bench --core --backward --dtype T` (q, k, v, out, dout, dq, dk, dv in T, the "
      "log-sum-exp in float32: mha_attn_forward saving it, then mha_attn_backward); PyTorch: "
      "bench/torch_modern.py --dtype T (F.scaled_dot_product_attention on inputs in T with "
      "requires_grad, then backward) and bench/torch_module.py "
      "(nn.MultiheadAttention(dtype=torch.bfloat16)). fwd and bwd are the two phases of the "
      "same runs. FLOP counts are the nominal ones of `mha bench`, the same for every dtype, "
      "so a rate ratio is the inverse time ratio.\n")

    if g["core"]:
        core_tables(rep, runner, g, w)
    if g["module"]:
        module_table(rep, runner, g, a, w, module_why)
    if runner.failed:
        w("### Commands that failed (not run again)\n")
        for cmd, err in runner.failed.items():
            w(f"- `{cmd}`: {err}")
        w("")
    w("### Commands\n")
    w("```")
    w(shlex.join(sys.argv))
    w("\n".join(dict.fromkeys(r["cmd"] for r in runner.res)))
    w("```")
    return "\n".join(L) + "\n"


def core_tables(rep, runner, g, w):
    """The core's two tables: bf16 / f16 vs float32, and mha vs PyTorch's SDPA."""
    w(f"### mha's core in bf16 and f16 vs float32 (rate ratios; target: bf16 >= {TARGET}x "
      f"forward and backward at N >= {TARGET_N})\n")
    w("| shape | phase | f32 ms | bf16 ms | f16 ms | bf16 GFLOP/s | bf16 rate / f32 "
      f"| f16 rate / f32 | bf16 >= {TARGET}x |")
    w("|---|---|---:|---:|---:|---:|---|---|---|")
    for grp in g["core"]:
        core_rows(rep, grp, w)
    w("")

    w("### mha vs PyTorch 2.13's F.scaled_dot_product_attention in the same dtype (speedup = "
      "PyTorch's time / mha's; > 1: mha is faster)\n")
    w("PyTorch in f16 only at the smallest N: its f16 backward is much slower than its bf16 on "
      "this CPU (no AVX512_FP16), and every shape would take the run past 15 minutes.\n")
    w("| shape | dtype | PyTorch call (kernel) | mha fwd ms | PyTorch fwd ms | fwd speedup "
      "| mha bwd ms | PyTorch bwd ms | bwd speedup |")
    w("|---|---|---|---:|---:|---|---:|---:|---|")
    for grp in g["core"]:
        for c in (c for c in grp if "torch" in c["sides"]):
            t = first_result(runner, "torch", c["name"])
            call = f"{t['impl']} ({t['kernel']})" if t else "-"
            w(f"| {modern.shape_str(c)} | {c['dtype']} | {call} | "
              + " | ".join(versus_cells(rep, c)) + " |")
    w("")


def module_table(rep, runner, g, a, w, module_why):
    """PyTorch's nn.MultiheadAttention in bf16 against mha's module."""
    if a.module_dtype == "bf16":
        caption = "mha's module in bf16 (`mha bench --dtype bf16`)"
    else:
        caption = (f"mha's module in float32: mha has no bf16 module yet (`mha bench --dtype "
                   f"bf16` without --core: \"{module_why}\"); once it runs one, this script "
                   "times it in bf16 and this caption says so")
    w(f"### PyTorch 2.13's nn.MultiheadAttention in bf16 vs {caption} (speedup = PyTorch's "
      "time / mha's)\n")
    w("| shape | mode | mha dtype | PyTorch path (kernel) | mha fwd ms | PyTorch fwd ms "
      "| fwd speedup | mha bwd ms | PyTorch bwd ms | bwd speedup |")
    w("|---|---|---|---|---:|---:|---|---:|---:|---|")
    for grp in g["module"]:
        for c in grp:
            m, t = first_result(runner, "mha", c["name"]), first_result(runner, "torch", c["name"])
            path = "-" if not t else "%s (%s)" % (
                "fast path" if t["fast_path"] else "training path", t["kernel"])
            w(f"| B={c['batch']} N={c['seq']} E={c['embed']} H={c['heads']} | {c['mode']} | "
              f"{m['dtype'] if m else '-'} | {path} | " + " | ".join(versus_cells(rep, c)) + " |")
    w("")


def main():
    ap = argparse.ArgumentParser(description="issue 11's speed ratios (see the top of this file)")
    ap.add_argument("--build", default="build")
    ap.add_argument("--python", help="the venv with torch 2.13 (default $BUILD/venv/bin/python)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, help="default 3 (1 with --quick)")
    ap.add_argument("--budget", type=float, default=4.0,
                    help="seconds of timed runs per measurement (at least one run; default 4)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes: checks the script")
    ap.add_argument("--only", choices=("core", "module"), help="that part alone")
    ap.add_argument("--out", help="write the markdown there too")
    ap.add_argument("--results", help="append every measurement's JSON line there")
    ap.add_argument("--from", dest="source", help="render this --results file, measure nothing")
    a = ap.parse_args()
    a.rounds = a.rounds if a.rounds is not None else 1 if a.quick else 3
    a.mha = os.path.join(a.build, "mha")
    a.python = a.python or os.path.join(a.build, "venv", "bin", "python")
    for f in (a.mha, a.python):
        if not os.access(f, os.X_OK):
            ap.error(f"{f}: not an executable (build mha; --python names the torch venv)")
    if a.rounds < 1 or not a.budget > 0:
        ap.error(f"--rounds {a.rounds}, --budget {a.budget:g}: expected >= 1 and > 0")
    a.module_dtype, why = mha_module_dtype(a.mha)
    info = f"{modern.describe(a)} {bf16_kernels(a.mha)}."
    g = groups(a.quick)
    if a.only:
        g = {k: (v if k == a.only else []) for k, v in g.items()}
    runner = Runner(a)
    start = time.time()
    if a.source:  # a finished run's measurements, rendered again
        with open(a.source) as f:
            runner.res = [json.loads(line) for line in f if line.strip()]
        for r in runner.res:
            if "error" in r:
                runner.failed[r["cmd"]] = r["error"]
    for rnd in range(1, a.rounds + 1 if not a.source else 1):
        print(f"round {rnd} of {a.rounds}", file=sys.stderr)
        for grp in g["core"] + g["module"]:
            order = [(side, c) for side in ("mha", "torch") for c in grp if side in c["sides"]]
            for side, c in (order if rnd % 2 else order[::-1]):
                runner.run(side, c, rnd)
    md = render(runner, g, a, time.time() - start, info, why)
    sys.stdout.write(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
