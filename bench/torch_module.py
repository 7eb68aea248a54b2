#!/usr/bin/env python3
"""torch_module.py - PyTorch's side of bench/dtype.py's module rows: torch.nn.MultiheadAttention
in bfloat16 (or float16, float32) as PyTorch users run it; times it on random data and prints one
JSON line (the fields of `mha bench --json` for the module, plus what PyTorch ran).

    $BUILD/venv/bin/python bench/torch_module.py --batch 4 --seq 256 --embed 768 --heads 12 \\
        [--dtype bf16|f16|f32] [--backward] [--threads 2] [--runs 5] [--warmup W] [--budget S]

nn.MultiheadAttention(E, H, batch_first=True, dtype=--dtype) with PyTorch's own initialization
(seed 0), dropout 0, self-attention on x [B, N, E] uniform in [-1, 1) rounded to the dtype,
need_weights=False:
  forward (default)  eval() under torch.inference_mode(): the fused fast path
                     (torch._native_multi_head_attention) when PyTorch takes it ("fast_path")
  --backward         train(), a forward that records the graph, then y.backward(dy); each
                     phase timed (the JSON's fwd_ and bwd_ fields)
Before timing, one untimed call runs under torch.profiler (its aten ops name the kernel, as
bench/torch_bench.py records them). The output (and with --backward the input's gradient) is
checked against the same module in float64 (float32 where its [B, H, N, N] scores would pass
2^24 elements) with the same parameters and input: max error <= torch_modern.tolerance(dtype)
times the reference's largest magnitude, else exit 2.
"""
import argparse
import time

import torch

from torch_bench import FAST_OP, check, kernel_name, profiled_ops
from torch_modern import DTYPES, add_timing_args, measure, tolerance


def call(m, x):
    """Self-attention as users call the module: the output [B, N, E] only."""
    return m(x, x, x, need_weights=False)[0]


def infer(m, x):
    """The forward under torch.inference_mode() (eval(): the fast path)."""
    with torch.inference_mode():
        return call(m, x)


def forward_backward(m, x, dy):
    """x with requires_grad, the forward recording the graph, then y.backward(dy) (the
    parameters' gradients zeroed after): (y, dx, forward seconds, backward seconds)."""
    xg = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    y = call(m, xg)
    t1 = time.perf_counter()
    y.backward(dy)
    t2 = time.perf_counter()
    m.zero_grad(set_to_none=False)
    return y.detach(), xg.grad, t1 - t0, t2 - t1


def reference_check(a, m, x, dy):
    """m against a float64 copy of itself (float32 where that is large): the check's fields."""
    dt = torch.float64 if a.batch * a.heads * a.seq * a.seq <= 1 << 24 else torch.float32
    ref = torch.nn.MultiheadAttention(a.embed, a.heads, batch_first=True, dtype=dt)
    ref.load_state_dict({k: t.to(dt) for k, t in m.state_dict().items()})
    ref.train(m.training)
    tol = tolerance(x.dtype)
    if not a.backward:
        return {"checked_against": str(dt).replace("torch.", ""),
                "max_rel_err": check("module output", infer(m, x), infer(ref, x.to(dt)), tol)}
    y, dx = forward_backward(m, x, dy)[:2]
    yr, dxr = forward_backward(ref, x.to(dt), dy.to(dt))[:2]
    err = max(check("module output", y, yr, tol), check("module dx", dx, dxr, tol))
    return {"checked_against": str(dt).replace("torch.", ""), "max_rel_err": err}


def setup(a):
    dtype = DTYPES[a.dtype]
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(a.embed, a.heads, batch_first=True, dtype=dtype)
    m.train(a.backward)
    g = torch.Generator().manual_seed(0)
    x, dy = ((torch.rand(a.batch, a.seq, a.embed, generator=g) * 2 - 1).to(dtype)
             for _ in range(2))

    def fwd():
        return infer(m, x)

    def fwd_bwd():
        return forward_backward(m, x, dy)[2:]

    ops = profiled_ops(fwd_bwd if a.backward else fwd)
    info = {"ops": ops, "fast_path": FAST_OP in ops, "kernel": kernel_name(ops)}
    info.update(reference_check(a, m, x, dy))
    return fwd, fwd_bwd, info


def main():
    ap = argparse.ArgumentParser(description="PyTorch's side of bench/dtype.py's module rows "
                                 "(see the top of this file)")
    for name in ("--batch", "--seq", "--embed", "--heads"):
        ap.add_argument(name, type=int, required=True)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="bf16",
                    help="the module's parameters, x, dy and the results (default bf16)")
    ap.add_argument("--backward", action="store_true",
                    help="train(): forward with the graph, then backward")
    add_timing_args(ap)
    a = ap.parse_args()
    if min(a.batch, a.seq, a.embed, a.heads, a.runs) < 1:
        ap.error("--batch, --seq, --embed, --heads, --runs: >= 1")
    if a.embed % a.heads:
        ap.error(f"--embed {a.embed} is not a multiple of --heads {a.heads}")

    measure(a, setup, {"what": "torch_module_fwd_bwd" if a.backward else "torch_module_fwd",
                       "batch": a.batch, "seq": a.seq, "embed": a.embed, "heads": a.heads,
                       "backward": a.backward, "mode": "train" if a.backward else "infer",
                       "dtype": a.dtype})


if __name__ == "__main__":
    main()
