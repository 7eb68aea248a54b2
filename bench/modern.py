#!/usr/bin/env python3
"""modern.py - issue 10's speed targets in one run: grouped-query attention against the same
shape's multi-head attention, a causal sliding window against full causal attention, what
softcap and ALiBi cost, and mha against PyTorch 2.13 on the same shapes. Prints a markdown
report of RATIOS of measurements taken side by side in this run (progress on stderr).

    bench/modern.py     [--build build] [--python $BUILD/venv/bin/python] [--threads 2]
                        [--rounds 3] [--only gqa,window,mods] [--quick] [--out FILE.md]
                        [--results FILE.jsonl]

The shapes (groups() below): GQA B=1 H=32 Hkv=8 vs 32, N=4096, D=128 and 64; the causal
window (256, 0) against full causal at B=1 H=8 N=S=16384 D=128; softcap 50, ALiBi, and
softcap with GQA (Hkv=2) and a window (256, 0), against plain causal at B=1 H=8 N=2048 D=128,
all causal. A full run takes about 12-15
minutes on 2 quiet cores (3 rounds of about 4 minutes; the PyTorch window at N=16384, which
computes every tile, is a quarter of it). --quick: the same comparisons on small shapes (a
check of the script, not a result: about a minute a round, mostly starting PyTorch).
Stdlib only; it imports neither torch nor mha: every measurement is a process of its own,
`mha bench --core --backward --json` (tools/cmd_bench.c) or bench/torch_modern.py (PyTorch's
side, the call as PyTorch users write it: see its top), each printing one JSON line with the
median forward and backward times of its runs.

How: the shapes form groups (the cases one ratio compares, e.g. GQA and MHA at one shape).
Each round runs every group's mha commands, then its PyTorch commands (the reverse order in
every other round), so the two sides of a ratio run next to each other; a ratio is computed in
every round and the report gives the median over the rounds (each round's value listed too).
A command that fails (e.g. "not yet" before the kernels apply the window) is reported with its
message and not run again; the rest goes on.
"""
import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def case(name, batch, heads, seq, head_dim, kv_heads=None, seq_k=None, causal=False,
         window=None, softcap=0.0, alibi=False):
    return dict(name=name, batch=batch, heads=heads, kv_heads=kv_heads or heads, seq=seq,
                seq_k=seq_k or seq, head_dim=head_dim, causal=causal, window=window,
                softcap=softcap, alibi=alibi)


def groups(quick):
    """{section: [[case, ...], ...]}: the cases of each group run side by side."""
    if quick:
        gqa = [(1, 4, 2, 256, d) for d in (64, 32)]
        win = (1, 2, 1024, 64, (64, 0))
        mods = (1, 2, 256, 64)
    else:
        gqa = [(1, 32, 8, 4096, d) for d in (128, 64)]  # Llama-like: H=32, Hkv=8
        win = (1, 8, 16384, 128, (256, 0))
        mods = (1, 8, 2048, 128)
    out = {"gqa": [[case(f"gqa{d}", b, h, n, d, kv_heads=g), case(f"mha{d}", b, h, n, d)]
                   for b, h, g, n, d in gqa]}
    b, h, n, d, w = win
    out["window"] = [[case("causal", b, h, n, d, causal=True),
                      case("window", b, h, n, d, causal=True, window=w)]]
    b, h, n, d = mods
    out["mods"] = [[case("plain", b, h, n, d, causal=True),
                    case("softcap", b, h, n, d, causal=True, softcap=50.0),
                    case("alibi", b, h, n, d, causal=True, alibi=True),
                    case("combined", b, h, n, d, kv_heads=max(1, h // 4), causal=True,
                         window=(n // 8, 0), softcap=50.0)]]
    return out


def core_args(c):
    """The command-line arguments mha bench --core and torch_modern.py share for case c."""
    a = ["--batch", c["batch"], "--heads", c["heads"], "--kv-heads", c["kv_heads"],
         "--seq", c["seq"], "--head-dim", c["head_dim"]]
    if c["seq_k"] != c["seq"]:
        a += ["--seq-k", c["seq_k"]]
    if c["causal"]:
        a.append("--causal")
    if c["window"]:
        a += ["--window", "%d,%d" % c["window"]]
    if c["softcap"]:
        a += ["--softcap", "%g" % c["softcap"]]
    if c["alibi"]:
        a.append("--alibi")
    return [str(x) for x in a]


def shape_str(c):
    s = f"B={c['batch']} H={c['heads']} Hkv={c['kv_heads']} N={c['seq']}"
    s += f" S={c['seq_k']}" if c["seq_k"] != c["seq"] else ""
    s += f" D={c['head_dim']}" + (" causal" if c["causal"] else "")
    s += " window (%d, %d)" % c["window"] if c["window"] else ""
    s += f" softcap {c['softcap']:g}" if c["softcap"] else ""
    return s + (" alibi" if c["alibi"] else "")


def timing_args(c, threads):
    """Up to 5 runs, stopping after 6 s; no warm-up run where one run takes seconds (PyTorch's
    profiled call warms it up in any case)."""
    flops = 4.0 * c["batch"] * c["heads"] * c["seq"] * c["seq_k"] * c["head_dim"]
    warm = 0 if flops > 5e10 else 1
    return ["--threads", str(threads), "--runs", "5", "--budget", "6", "--warmup", str(warm)]


class Runner:
    def __init__(self, a):
        self.a = a
        self.res = []      # {"side", "case", "round", "cmd", "result" | "error"}
        self.failed = {}   # command -> error message: not run again

    def command(self, side, c):
        t = timing_args(c, self.a.threads)
        if side == "mha":
            return [self.a.mha, "bench", "--core", "--backward", "--json", *core_args(c), *t]
        return [self.a.python, os.path.join(HERE, "torch_modern.py"), "--backward",
                *core_args(c), *t]

    def run(self, side, c, rnd):
        cmd = self.command(side, c)
        line = shlex.join(cmd)
        rec = {"side": side, "case": c["name"], "round": rnd, "cmd": line}
        if line in self.failed:
            return
        print(f"  {line}", file=sys.stderr, flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        out = p.stdout.strip().splitlines()
        if p.returncode == 0 and out:
            rec["result"] = json.loads(out[-1])
        else:
            err = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[0]
            self.failed[line] = rec["error"] = err
            print(f"    failed: {err}", file=sys.stderr)
        self.res.append(rec)
        if self.a.results:
            with open(self.a.results, "a") as f:
                f.write(json.dumps(rec) + "\n")


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


class Report:
    """Ratios per round from the runner's results, their medians over the rounds."""

    def __init__(self, runner, rounds):
        self.res, self.rounds = runner.res, rounds

    def get(self, side, name, rnd):
        for r in self.res:
            if (r["side"], r["case"], r["round"]) == (side, name, rnd):
                return r.get("result")
        return None

    def ms(self, side, name, key):
        v = [r[key] for rnd in self.rounds if (r := self.get(side, name, rnd))]
        return f"{median(v):.2f}" if v else "-"

    def ratio(self, num, den, key, fmt="{:.3f}"):
        """median over rounds of num[key] / den[key]; num, den: (side, case name)."""
        v = []
        for rnd in self.rounds:
            x, y = self.get(*num, rnd), self.get(*den, rnd)
            if x and y:
                v.append(x[key] / y[key])
        if not v:
            return None, "-"
        each = ", ".join(fmt.format(x) for x in v)
        return median(v), fmt.format(median(v)) + (f" ({each})" if len(v) > 1 else "")


def render(runner, g, a, elapsed, info):
    rep = Report(runner, list(range(1, a.rounds + 1)))
    L = []
    w = L.append
    w("# Issue 10: grouped-query attention, sliding window, softcap, ALiBi\n")
    w(f"Written by `bench/modern.py` ({datetime.datetime.now():%Y-%m-%d %H:%M}, {elapsed:.0f} s). "
      f"{info}\n")
    w(f"Each ratio is the median over {a.rounds} rounds of the ratio of two measurements made "
      "next to each other in the round (each the median of up to 5 runs, 6 s at most); the "
      "rounds' own values follow in brackets. mha: `mha bench --core --backward` "
      "(mha_attn_forward saving the log-sum-exp, then mha_attn_backward); PyTorch: "
      "bench/torch_modern.py, forward with requires_grad then backward. fwd and bwd are the "
      "two phases of the same runs.\n")

    def target_row(label, first, second, num, den, ok):
        """first's and second's fwd and bwd times, the ratios num / den (rounds' medians),
        and whether ok holds for both."""
        cells, vals = [], []
        for key in ("fwd_median_ms", "bwd_median_ms"):
            v, text = rep.ratio(("mha", num["name"]), ("mha", den["name"]), key)
            cells += [rep.ms("mha", first["name"], key), rep.ms("mha", second["name"], key), text]
            vals.append(v)
        met = "-" if None in vals else ("yes" if all(map(ok, vals)) else "**no**")
        w(f"| {label} | " + " | ".join(cells) + f" | {met} |")

    if "gqa" in g:
        w("## GQA vs MHA, same shape (mha; target: the GQA rate within 5% of the MHA rate)\n")
        w("| shape | GQA fwd ms | MHA fwd ms | fwd rate GQA / MHA | GQA bwd ms | MHA bwd ms | "
          "bwd rate GQA / MHA | >= 0.95 |")
        w("|---|---:|---:|---|---:|---:|---|---|")
        for gq, mh in g["gqa"]:
            # the same FLOPs: rate GQA / rate MHA = time MHA / time GQA
            target_row(f"{shape_str(gq)} vs Hkv={mh['kv_heads']}", gq, mh, mh, gq,
                       lambda v: v >= 0.95)
        w("")
    if "window" in g:
        w("## Causal sliding window vs full causal (mha; target: the window's time <= 8% of "
          "full causal)\n")
        w("| shape | window fwd ms | causal fwd ms | fwd time window / causal | window bwd ms | "
          "causal bwd ms | bwd time window / causal | <= 0.08 |")
        w("|---|---:|---:|---|---:|---:|---|---|")
        for full, win in g["window"]:
            target_row(f"{shape_str(win)} vs causal", win, full, win, full, lambda v: v <= 0.08)
        w("")
    if "mods" in g:
        w("## What softcap, ALiBi and their combination cost mha (time over plain causal)\n")
        w("| shape | fwd ms | fwd time / plain causal | bwd ms | bwd time / plain causal |")
        w("|---|---:|---|---:|---|")
        for grp in g["mods"]:
            base = grp[0]
            for c in grp:
                _, fs = rep.ratio(("mha", c["name"]), ("mha", base["name"]), "fwd_median_ms")
                _, bs = rep.ratio(("mha", c["name"]), ("mha", base["name"]), "bwd_median_ms")
                w(f"| {shape_str(c)} | {rep.ms('mha', c['name'], 'fwd_median_ms')} | {fs} "
                  f"| {rep.ms('mha', c['name'], 'bwd_median_ms')} | {bs} |")
        w("")
    w("## mha vs PyTorch 2.13 (speedup = PyTorch's time / mha's; > 1: mha is faster)\n")
    w("| shape | PyTorch call (kernel) | mha fwd ms | PyTorch fwd ms | fwd speedup | mha bwd ms "
      "| PyTorch bwd ms | bwd speedup |")
    w("|---|---|---:|---:|---|---:|---:|---|")
    for sec in g.values():
        for grp in sec:
            for c in grp:
                t = next((r["result"] for r in runner.res if r["side"] == "torch"
                          and r["case"] == c["name"] and "result" in r), None)
                call = f"{t['impl']} ({t['kernel']})" if t else "-"
                _, fs = rep.ratio(("torch", c["name"]), ("mha", c["name"]), "fwd_median_ms",
                                  "{:.2f}x")
                _, bs = rep.ratio(("torch", c["name"]), ("mha", c["name"]), "bwd_median_ms",
                                  "{:.2f}x")
                w(f"| {shape_str(c)} | {call} | {rep.ms('mha', c['name'], 'fwd_median_ms')} "
                  f"| {rep.ms('torch', c['name'], 'fwd_median_ms')} | {fs} "
                  f"| {rep.ms('mha', c['name'], 'bwd_median_ms')} "
                  f"| {rep.ms('torch', c['name'], 'bwd_median_ms')} | {bs} |")
    w("")
    if runner.failed:
        w("## Commands that failed (not run again)\n")
        for cmd, err in runner.failed.items():
            w(f"- `{cmd}`: {err}")
        w("")
    w("## Commands\n")
    w("```")
    w(shlex.join(sys.argv))
    seen = []
    for r in runner.res:
        if r["cmd"] not in seen:
            seen.append(r["cmd"])
    w("\n".join(seen))
    w("```")
    return "\n".join(L) + "\n"


def describe(a):
    """The machine and the software, in one line."""
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    torch_v = subprocess.run([a.python, "-c", "import torch; print(torch.__version__)"],
                             capture_output=True, text=True).stdout.strip() or "?"
    info = subprocess.run([a.mha, "info", "--threads", str(a.threads)], capture_output=True,
                          text=True).stdout
    path = next((l.split(":", 1)[1].strip().split()[0] for l in info.splitlines()
                 if l.startswith("path:")), "?")
    load = open("/proc/loadavg").read().split()[:3]
    return (f"CPU: {model}, {os.cpu_count()} cores; threads {a.threads}; mha path {path}; "
            f"PyTorch {torch_v}; load average before the run {' '.join(load)}.")


def main():
    ap = argparse.ArgumentParser(description="issue 10's speed ratios (see the top of this file)")
    ap.add_argument("--build", default="build")
    ap.add_argument("--python", help="the venv with torch 2.13 (default $BUILD/venv/bin/python)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="gqa,window,mods",
                    help="comma-separated sections: gqa, window, mods")
    ap.add_argument("--quick", action="store_true", help="small shapes: checks the script")
    ap.add_argument("--out", help="write the markdown there too")
    ap.add_argument("--results", help="append every measurement's JSON line there")
    a = ap.parse_args()
    a.mha = os.path.join(a.build, "mha")
    a.python = a.python or os.path.join(a.build, "venv", "bin", "python")
    for f in (a.mha, a.python):
        if not os.access(f, os.X_OK):
            ap.error(f"{f}: not an executable (build mha; --python names the torch venv)")
    only = a.only.split(",")
    g = {k: v for k, v in groups(a.quick).items() if k in only}
    if not g or len(g) != len(only) or a.rounds < 1:
        ap.error(f"--only: got {a.only!r}, expected some of gqa,window,mods; --rounds >= 1")
    info = describe(a)
    runner = Runner(a)
    start = time.time()
    for rnd in range(1, a.rounds + 1):
        print(f"round {rnd} of {a.rounds}", file=sys.stderr)
        for sec in g.values():
            for grp in sec:
                order = [("mha", c) for c in grp] + [("torch", c) for c in grp]
                for side, c in (order if rnd % 2 else order[::-1]):
                    runner.run(side, c, rnd)
    md = render(runner, g, a, time.time() - start, info)
    sys.stdout.write(md)
    if a.out:
        with open(a.out, "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
