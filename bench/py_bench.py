#!/usr/bin/env python3
"""py_bench.py - mha's Python modules against PyTorch 2.13 in one process (issue 9, "Speed"):
prints one JSON line per measurement on stdout (bench/py_render.py turns them into markdown;
bench/py_compare.sh runs both).

    PYTHONPATH=python MHA_LIBRARY=build/libmha.so build/venv/bin/python bench/py_bench.py \\
        [--mha-bin build/mha] [--threads 2] [--quick] [--shapes "B,N,E,H,causal ..."] \\
        [--overhead-shapes "..."] [--small-shapes "B,N,E,H ..."] [--runs 7] [--budget 6] \\
        [--rounds 3] [--small-iters 2000] [--small-rounds 7] [--tol 1e-4]

What is measured, each on x uniform in [-1, 1), self-attention, dropout 0, --threads threads for
both libraries (torch.set_num_threads and mha.set_num_threads):
  module   mha.MultiheadAttention vs torch.nn.MultiheadAttention(E, H, batch_first=True) with
           the same state_dict, need_weights False and True (weights averaged over heads), in
           three modes: "infer" = eval() under torch.inference_mode() (PyTorch's fused fast
           path), "train" = train() under torch.no_grad() (the path training takes), and
           "fwd_bwd" = train(), a forward that records the graph, then y.backward(dy) (forward
           and backward also timed apart). Causal shapes: attn_mask = the bool upper triangle
           and is_causal=True, the same call on both sides.
  seed     mha.MultiHeadAttention (the seed module) vs a plain PyTorch implementation of it
           (SeedReference below), forward (eval(), no_grad) and forward + backward; causal
           shapes pass the lower-triangular 0/1 mask. Skipped where one [B, H, N, N] tensor
           would exceed 256 MiB (N = 4096): the plain module materializes several.
  sdpa     mha.functional.scaled_dot_product_attention vs F.scaled_dot_product_attention on
           q, k, v [B, H, N, E/H]: forward under inference_mode, forward + backward.
  small    many calls at a small shape ((1, 8, 64, 4) and (1, 1, 64, 4)): the module forward
           in "infer", "train" (no_grad) and "grad" (train(), autograd recording, no backward)
           modes, need_weights False and True; per-call time = a round of --small-iters calls
           / --small-iters, median over --small-rounds rounds.
  overhead the C benchmark `mha bench ... --json` (a subprocess: the same module call on the
           same shape, without Python) against mha.MultiheadAttention doing the same work in
           this process: forward in inference (eval(), inference_mode, need_weights False /
           True) and forward + backward (train()); overhead = Python time / C time - 1.
           Shapes (1,2048,512,8) (the issue's target: under 5%), the others but N = 4096, and
           the small call (1,8,64,4) (timed --small-iters times per round on both sides).

Every comparison first runs each side once and checks that they agree (max abs difference
<= --tol times the largest magnitude of PyTorch's result, for the output, the weights and
every gradient; see agree()); it exits 2 if not. That call is the warm-up (PyTorch's runs under
torch.profiler, whose op names say which attention kernel PyTorch ran). Then the two sides
are timed alternately (mha, PyTorch, then PyTorch, mha, ...) so that noise on the shared
machine hits both alike, up to --runs times each, stopping once the pair took --budget
seconds (at least 3 runs each, or --runs if fewer); the median of each side is reported.
--quick: one small shape and few runs, for trying the script.
"""
import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import mha
import mha.functional
from torch_bench import kernel_name, profiled_ops

SHAPES = "1,512,512,8,0 1,2048,512,8,0 1,2048,512,8,1 4,256,768,12,0 1,4096,1024,16,1"
OVERHEAD_SHAPES = "1,2048,512,8,0 1,512,512,8,0 1,2048,512,8,1 4,256,768,12,0 1,8,64,4,0"
SMALL_SHAPES = "1,8,64,4 1,1,64,4"
QUICK = dict(shapes="1,512,512,8,1", overhead_shapes="1,512,512,8,0 1,8,64,4,0", runs=3,
             budget=1.0, rounds=2, small_iters=200, small_rounds=3)
SMALL_CALL = 1 << 12  # B * N * E up to which an overhead shape is timed as a small call
SEED_MAX_SCORES = 1 << 26  # elements of one [B, H, N, N] tensor the seed comparison allows

now = time.perf_counter


def say(msg):
    print(f"py_bench.py: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    print(f"py_bench.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def emit(rec):
    print(json.dumps(rec), flush=True)


def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def parse_shapes(s, n):
    """'B,N,E,H[,causal] ...' into tuples of n ints."""
    out = []
    for item in s.split():
        t = tuple(int(x) for x in item.split(","))
        if len(t) != n:
            raise ValueError(f"shape {item!r}: got {len(t)} numbers, expected {n}")
        out.append(t)
    return out


def sname(B, N, E, H, causal=False):
    return f"B={B} N={N} E={E} H={H}{' causal' if causal else ''}"


# ------------------------------------------------------------------------------------------
# Agreement
# ------------------------------------------------------------------------------------------
GRAD_FLOOR = 1e-3  # a gradient is measured against at least this share of the largest one


def agree(what, got, ref, tol):
    """got, ref: dicts name -> tensor or None (the same keys; gradients are named "d ...").
    Each result is measured against its own largest magnitude in ref, a gradient against at
    least GRAD_FLOOR times the largest gradient magnitude of the call (the key projection's
    bias gets a gradient that is 0 in exact arithmetic -- softmax ignores a constant added to
    a row -- so both sides return rounding noise there). Returns the largest relative error;
    exits 2 when one exceeds tol or the two sides disagree on what they returned."""
    grads = [r.abs().max().item() for n, r in ref.items() if n.startswith("d ") and r is not None]
    floor = GRAD_FLOOR * max(grads, default=0.0)
    worst = 0.0
    for name, r in ref.items():
        g = got[name]
        if (g is None) != (r is None):
            fail(f"{what}: {name}: mha returned {'nothing' if g is None else 'a tensor'}, "
                 f"PyTorch {'nothing' if r is None else 'a tensor'}")
        if r is None:
            continue
        if tuple(g.shape) != tuple(r.shape):
            fail(f"{what}: {name}: got shape {list(g.shape)} from mha, expected "
                 f"{list(r.shape)} (PyTorch's)")
        scale = r.abs().max().item()
        if name.startswith("d "):
            scale = max(scale, floor)
        e = (g.double() - r.double()).abs().max().item() / max(scale, 1e-30)
        if not e <= tol:
            fail(f"{what}: {name}: mha and PyTorch differ by {e:.3g} of the largest magnitude "
                 f"of PyTorch's, expected <= {tol:g}")
        worst = max(worst, e)
    return worst


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------
class Side:
    """One side of a comparison: run() returns the results to check (dict name -> tensor),
    timed() runs once more and returns (forward seconds, backward seconds)."""

    def __init__(self, run, timed):
        self.run, self.timed = run, timed


MIN_RUNS = 3  # timed runs of each side even when they take longer than the budget


def time_sides(sides, runs, budget, warmup):
    """Warm-up, then up to runs timed calls of each side, alternating the order every round
    (a b, b a, ...), until the rounds took budget seconds (at least MIN_RUNS rounds, or runs
    if fewer). Returns, per side, the medians (total, forward, backward seconds) and the
    number of runs."""
    for _ in range(warmup):
        for s in sides:
            s.timed()
    t = [([], [], []) for _ in sides]
    start = now()
    for r in range(runs):
        if r >= MIN_RUNS and now() - start > budget:
            break
        order = range(len(sides)) if r % 2 == 0 else reversed(range(len(sides)))
        for i in order:
            f, b = sides[i].timed()
            t[i][0].append(f + b)
            t[i][1].append(f)
            t[i][2].append(b)
    return [(median(tt), median(tf), median(tb), len(tt)) for tt, tf, tb in t]


def fwd_side(call, context):
    """A forward-only side: call() under the context manager context()."""
    def run():
        with context():
            return call()

    def timed():  # the call alone, not entering the context
        with context():
            t0 = now()
            call()
            t1 = now()
        return t1 - t0, 0.0
    return run, timed


def fwd_bwd_side(module, call, inputs, dy):
    """A forward + backward side: call(*leaves) returns (y, weights); y.backward(dy).
    inputs: the tensors that get requires_grad (fresh leaves every call)."""
    def leaves():
        return [t.detach().requires_grad_(True) for t in inputs]

    def run():
        module.zero_grad(set_to_none=True)
        xs = leaves()
        y, w = call(*xs)
        y.backward(dy)
        res = {"output": y.detach(), "weights": None if w is None else w.detach()}
        for i, t in enumerate(xs):
            res[f"d input {i}"] = t.grad
        for n, p in module.named_parameters():
            res[f"d {n}"] = p.grad
        return res

    def timed():
        xs = leaves()
        t0 = now()
        y = call(*xs)[0]
        t1 = now()
        y.backward(dy)
        t2 = now()
        module.zero_grad(set_to_none=False)
        return t1 - t0, t2 - t1
    return run, timed


class Bench:
    def __init__(self, a):
        self.a = a

    def compare(self, rec, mha_side, torch_side, warmup):
        """Checks, times and emits one comparison; rec: the fields that name it."""
        what = rec["what"] + " " + sname(*rec["shape"], rec.get("causal", False)) + \
            "".join(f" {k}={rec[k]}" for k in ("mode", "need_weights") if k in rec)
        say(what)
        got = mha_side.run()
        box = {}
        ops = profiled_ops(lambda: box.update(ref=torch_side.run()))
        rec["max_rel_err"] = agree(what, got, box["ref"], self.a.tol)
        rec["torch_kernel"], rec["torch_ops"] = kernel_name(ops), ops
        del got, box  # the checked results (weights, gradients) need not stay during timing
        (mt, mf, mb, n), (tt, tf, tb, _) = time_sides([mha_side, torch_side], self.a.runs,
                                                      self.a.budget, warmup)
        rec.update(runs=n, mha_ms=mt * 1e3, torch_ms=tt * 1e3, ratio=tt / mt)
        if rec.get("mode") == "fwd_bwd":
            rec.update(mha_fwd_ms=mf * 1e3, mha_bwd_ms=mb * 1e3, torch_fwd_ms=tf * 1e3,
                       torch_bwd_ms=tb * 1e3)
        emit(rec)

    def warmup(self, N):
        """Untimed calls after the checked one: none where a call takes long (N >= 2048)."""
        return 0 if N >= 2048 or self.a.quick else 1


# ------------------------------------------------------------------------------------------
# The drop-in: mha.MultiheadAttention vs torch.nn.MultiheadAttention
# ------------------------------------------------------------------------------------------
def inputs(B, N, E, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, N, E, generator=g) * 2 - 1
    dy = torch.rand(B, N, E, generator=g) * 2 - 1
    return x, dy


def layer_pair(E, H):
    torch.manual_seed(0)
    t = nn.MultiheadAttention(E, H, batch_first=True)
    m = mha.MultiheadAttention(E, H, batch_first=True)
    m.load_state_dict(t.state_dict(), strict=True)
    return m, t


def layer_sides(layer, x, dy, mode, kw):
    """The two sides' callables for one layer in one mode."""
    def call(inp):
        return layer(inp, inp, inp, **kw)
    if mode == "fwd_bwd":
        layer.train()
        return Side(*fwd_bwd_side(layer, call, [x], dy))
    layer.train(mode == "train")
    context = torch.inference_mode if mode == "infer" else torch.no_grad

    def run():
        y, w = call(x)
        return {"output": y, "weights": w}
    return Side(*fwd_side(run, context))


def causal_kw(N, causal):
    """nn.MultiheadAttention's causal call: the bool upper triangle (True = masked) with the
    is_causal hint; nothing for a non-causal shape."""
    if not causal:
        return {}
    return dict(attn_mask=torch.triu(torch.ones(N, N, dtype=torch.bool), 1), is_causal=True)


def bench_module(bench, B, N, E, H, causal):
    x, dy = inputs(B, N, E)
    m, t = layer_pair(E, H)
    for mode in ("infer", "train", "fwd_bwd"):
        for nw in (False, True):
            kw = dict(need_weights=nw, **causal_kw(N, causal))
            rec = {"what": "module", "shape": [B, N, E, H], "causal": bool(causal), "mode": mode,
                   "need_weights": nw}
            bench.compare(rec, layer_sides(m, x, dy, mode, kw), layer_sides(t, x, dy, mode, kw),
                          bench.warmup(N))


# ------------------------------------------------------------------------------------------
# The seed module: mha.MultiHeadAttention vs a plain PyTorch implementation
# ------------------------------------------------------------------------------------------
class SeedReference(nn.Module):
    """The multi-head attention module of the walkthrough this project started from, in plain
    PyTorch: W_q, W_k, W_v, W_o, scores / sqrt(d_k), masked_fill(mask == 0, -1e9), softmax,
    dropout, @ V. forward(x, mask) returns (output, attention weights [B, H, N, N])."""

    def __init__(self, d_model, num_heads, dropout=0.1):
        super().__init__()
        self.num_heads, self.d_k = num_heads, d_model // num_heads
        self.W_q = nn.Linear(d_model, d_model)
        self.W_k = nn.Linear(d_model, d_model)
        self.W_v = nn.Linear(d_model, d_model)
        self.W_o = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def split_heads(self, x):
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.d_k).transpose(1, 2)

    def forward(self, x, mask=None):
        B, N, E = x.shape
        q, k, v = (self.split_heads(w(x)) for w in (self.W_q, self.W_k, self.W_v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e9)
        attn = self.dropout(torch.softmax(scores, dim=-1))
        out = (attn @ v).transpose(1, 2).contiguous().view(B, N, E)
        return self.W_o(out), attn


def bench_seed(bench, B, N, E, H, causal):
    if B * H * N * N > SEED_MAX_SCORES:
        say(f"seed {sname(B, N, E, H, causal)}: skipped ([B, H, N, N] too large)")
        emit({"what": "seed", "shape": [B, N, E, H], "causal": bool(causal), "skipped":
              f"one [B, H, N, N] float32 tensor takes {B * H * N * N * 4 >> 20} MiB and the "
              f"plain module materializes several (limit {SEED_MAX_SCORES * 4 >> 20} MiB)"})
        return
    x, dy = inputs(B, N, E)
    torch.manual_seed(0)
    m = mha.MultiHeadAttention(E, H, dropout=0.0)
    ref = SeedReference(E, H, dropout=0.0)
    ref.load_state_dict(m.state_dict(), strict=True)
    mask = torch.tril(torch.ones(N, N)) if causal else None

    def sides(layer, mode):
        def call(inp):
            return layer(inp, mask)
        if mode == "fwd_bwd":
            layer.train()
            return Side(*fwd_bwd_side(layer, call, [x], dy))
        layer.eval()

        def run():
            y, w = call(x)
            return {"output": y, "weights": w}
        return Side(*fwd_side(run, torch.no_grad))

    for mode in ("fwd", "fwd_bwd"):
        rec = {"what": "seed", "shape": [B, N, E, H], "causal": bool(causal), "mode": mode}
        bench.compare(rec, sides(m, mode), sides(ref, mode), bench.warmup(N))


# ------------------------------------------------------------------------------------------
# The core: mha.functional vs F.scaled_dot_product_attention
# ------------------------------------------------------------------------------------------
def bench_sdpa(bench, B, N, E, H, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.rand(B, H, N, E // H, generator=g) * 2 - 1 for _ in range(4))

    class Grads(nn.Module):  # no parameters: fwd_bwd_side's zero_grad and gradients of inputs
        pass

    for mode in ("fwd", "fwd_bwd"):
        rec = {"what": "sdpa", "shape": [B, N, E, H], "causal": bool(causal), "mode": mode}
        sides = []
        for fn in (mha.functional.scaled_dot_product_attention, F.scaled_dot_product_attention):
            def call(q_, k_, v_, fn=fn):
                return fn(q_, k_, v_, is_causal=bool(causal)), None
            if mode == "fwd_bwd":
                sides.append(Side(*fwd_bwd_side(Grads(), call, [q, k, v], do)))
            else:
                def run(call=call):
                    return {"output": call(q, k, v)[0]}
                sides.append(Side(*fwd_side(run, torch.inference_mode)))
        bench.compare(rec, *sides, bench.warmup(N))


# ------------------------------------------------------------------------------------------
# Small calls
# ------------------------------------------------------------------------------------------
def bench_small(bench, B, N, E, H):
    a = bench.a
    x, _ = inputs(B, N, E)
    m, t = layer_pair(E, H)
    contexts = {"infer": torch.inference_mode, "train": torch.no_grad,
                "grad": contextlib.nullcontext}
    for mode in ("infer", "train", "grad"):
        for nw in (False, True):
            rec = {"what": "small", "shape": [B, N, E, H], "mode": mode, "need_weights": nw,
                   "iters": a.small_iters}
            what = f"small {sname(B, N, E, H)} mode={mode} need_weights={nw}"
            say(what)
            sides = []
            for layer in (m, t):
                layer.train(mode != "infer")

                def run(layer=layer):
                    with contexts[mode]():
                        y, w = layer(x, x, x, need_weights=nw)
                    return {"output": y.detach(), "weights": None if w is None else w.detach()}

                def timed(layer=layer):
                    t0 = now()
                    with contexts[mode]():
                        for _ in range(a.small_iters):
                            layer(x, x, x, need_weights=nw)
                    return (now() - t0) / a.small_iters, 0.0
                sides.append(Side(run, timed))
            rec["max_rel_err"] = agree(what, sides[0].run(), sides[1].run(), a.tol)
            (mt, _, _, n), (tt, _, _, _) = time_sides(sides, a.small_rounds, 1e9, 1)
            rec.update(rounds=n, mha_us=mt * 1e6, torch_us=tt * 1e6, ratio=tt / mt)
            emit(rec)


# ------------------------------------------------------------------------------------------
# Overhead over the C benchmark
# ------------------------------------------------------------------------------------------
def c_bench(a, B, N, E, H, causal, nw, bwd, runs, warmup):
    cmd = [a.mha_bin, "bench", "--batch", str(B), "--seq", str(N), "--embed", str(E),
           "--heads", str(H), "--threads", str(a.threads), "--runs", str(runs), "--budget",
           f"{a.budget / 2:g}", "--warmup", str(warmup), "--json"]
    cmd += ["--causal"] * bool(causal) + ["--need-weights"] * nw + ["--backward"] * bwd
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        fail(f"{shlex.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return json.loads(p.stdout.splitlines()[-1]), shlex.join(cmd)


def bench_overhead(bench, B, N, E, H, causal):
    a = bench.a
    x, dy = inputs(B, N, E)
    m, _ = layer_pair(E, H)
    # the C benchmark has no checked call: one more warm-up; a small call (a few µs) is timed
    # --small-iters times on both sides
    tiny = B * N * E <= SMALL_CALL
    runs, warmup = (a.small_iters, 10) if tiny else (a.runs, bench.warmup(N) + 1)
    # need_weights with a causal shape: the Python layer hands the library the mask tensor
    # (is_causal is only a hint there, as in PyTorch) while `mha bench --causal` sets the
    # causal flag: not the same work, so not compared.
    variants = [("infer", False), ("infer", True), ("fwd_bwd", False)]
    for mode, nw in variants:
        if nw and causal:
            continue
        rec = {"what": "overhead", "shape": [B, N, E, H], "causal": bool(causal), "mode": mode,
               "need_weights": nw}
        say(f"overhead {sname(B, N, E, H, causal)} mode={mode} need_weights={nw}")
        side = layer_sides(m, x, dy, mode, dict(need_weights=nw, **causal_kw(N, causal)))
        c_ms, py_ms = [], []
        for _ in range(a.rounds):
            r, cmd = c_bench(a, B, N, E, H, causal, nw, mode == "fwd_bwd", runs, warmup)
            c_ms.append(r["median_ms"])
            (pt, _, _, n), = time_sides([side], runs, a.budget / 2, warmup)
            py_ms.append(pt * 1e3)
        rec.update(c_cmd=cmd, c_isa=r.get("isa"), rounds=a.rounds, c_runs=r["runs"], py_runs=n,
                   c_ms=min(c_ms),
                   py_ms=min(py_ms), overhead=min(py_ms) / min(c_ms) - 1,
                   c_ms_rounds=c_ms, py_ms_rounds=py_ms)
        emit(rec)


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------
def cpu_busy():
    """CPU seconds every process has used (user nice system irq softirq steal, /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = f.readline().split()[1:]
        return sum(int(v[i]) for i in (0, 1, 2, 5, 6, 7)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def own_cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description="mha's Python modules vs PyTorch in one process "
                                 "(see the top of this file)")
    ap.add_argument("--mha-bin", default=os.environ.get("MHA_BIN", "build/mha"),
                    help="the mha CLI for the overhead's C benchmark (default: $MHA_BIN or "
                    "build/mha)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", default=os.environ.get("QUICK") == "1",
                    help="one small shape, few runs (also QUICK=1)")
    ap.add_argument("--shapes", help=f"B,N,E,H,causal ... (default: {SHAPES})")
    ap.add_argument("--overhead-shapes", help=f"B,N,E,H,causal ... (default: {OVERHEAD_SHAPES};"
                    " \"\" for none)")
    ap.add_argument("--small-shapes", help=f"B,N,E,H ... (default: {SMALL_SHAPES})")
    ap.add_argument("--runs", type=int, help="timed runs per side (default 7)")
    ap.add_argument("--budget", type=float, help="seconds after which a comparison's timed "
                    "runs stop, at least 3 runs each (default 6)")
    ap.add_argument("--rounds", type=int, help="overhead: C / Python rounds, best median of "
                    "each kept (default 5)")
    ap.add_argument("--small-iters", type=int, help="calls per small-call round (default 2000)")
    ap.add_argument("--small-rounds", type=int, help="small-call rounds per side (default 7)")
    ap.add_argument("--tol", type=float, default=1e-4, help="agreement: max abs difference "
                    "over PyTorch's largest magnitude (default 1e-4)")
    a = ap.parse_args()
    defaults = dict(shapes=SHAPES, overhead_shapes=OVERHEAD_SHAPES, small_shapes=SMALL_SHAPES,
                    runs=7, budget=6.0, rounds=5, small_iters=2000, small_rounds=7)
    if a.quick:
        defaults.update(QUICK)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    try:
        shapes = parse_shapes(a.shapes, 5)
        overhead_shapes = parse_shapes(a.overhead_shapes, 5)
        small_shapes = parse_shapes(a.small_shapes, 4)
    except ValueError as e:
        ap.error(str(e))
    for s in shapes + overhead_shapes + small_shapes:
        if s[2] % s[3]:
            ap.error(f"shape {s}: E = {s[2]} is not a multiple of H = {s[3]}")
    if overhead_shapes and not (os.path.isfile(a.mha_bin) and os.access(a.mha_bin, os.X_OK)):
        ap.error(f"--mha-bin {a.mha_bin}: not an executable (the overhead needs `mha bench`)")
    if min(a.runs, a.rounds, a.small_iters, a.small_rounds, a.threads) < 1:
        ap.error("--runs, --rounds, --small-iters, --small-rounds and --threads must be >= 1")

    torch.set_num_threads(a.threads)
    mha.set_num_threads(a.threads)
    desc = mha.describe()
    isa = re.search(r"kernels of the (\w+) table", desc)
    start, busy0, own0 = now(), cpu_busy(), own_cpu()
    emit({"what": "run", "argv": [os.path.relpath(sys.argv[0])] + sys.argv[1:],
          "python": platform.python_version(), "python_exe": sys.executable,
          "torch": torch.__version__,
          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mha": mha.__version__,
          "mha_library": mha.LIBRARY_PATH, "isa": isa.group(1) if isa else "?",
          "threads": a.threads, "torch_threads": torch.get_num_threads(),
          "mha_threads": mha.get_num_threads(), "quick": a.quick, "runs": a.runs,
          "budget": a.budget, "rounds": a.rounds, "small_iters": a.small_iters,
          "small_rounds": a.small_rounds, "tol": a.tol, "load_before": loadavg(),
          "mha_info": desc})
    bench = Bench(a)
    for B, N, E, H, c in shapes:
        bench_module(bench, B, N, E, H, c)
        bench_seed(bench, B, N, E, H, c)
        bench_sdpa(bench, B, N, E, H, c)
    for B, N, E, H in small_shapes:
        bench_small(bench, B, N, E, H)
    for B, N, E, H, c in overhead_shapes:
        bench_overhead(bench, B, N, E, H, c)
    elapsed = now() - start
    emit({"what": "done", "elapsed_s": elapsed, "load_after": loadavg(),
          "cpu_other_s": max(cpu_busy() - busy0 - (own_cpu() - own0), 0.0),
          "cores": os.cpu_count()})
    say(f"done in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
