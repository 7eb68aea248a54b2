#!/usr/bin/env python3
"""torch_modern.py - PyTorch's side of bench/modern.py: the attention core with issue 10's
options (grouped-query heads, cross-attention, a sliding window, ALiBi, softcap) written as
PyTorch 2.13 users write them; times forward + backward on random data and prints one JSON line
(the fields of `mha bench --core --json` for the same shape, plus what PyTorch ran).

    $BUILD/venv/bin/python bench/torch_modern.py --batch 1 --heads 32 --kv-heads 8 \\
        --seq 4096 --head-dim 128 [--seq-k S] [--causal] [--window L,R] [--softcap C] \\
        [--alibi] [--backward] [--dtype f32|bf16|f16] [--threads 2] [--runs 5] [--warmup W]
        [--budget S]

q [B, H, N, D], k and v [B, G, S, D] (G = --kv-heads, default H; S = --seq-k, default N),
contiguous, uniform in [-1, 1): float32 (--dtype f32, the default), or those values rounded to
torch.bfloat16 (bf16) or torch.float16 (f16), dout too, as `mha bench --core --dtype`; the
float masks below are of that dtype too. The arguments and their meaning are those of
`mha bench --core` (causal aligned bottom-right when S != N; the window, ALiBi's slopes
2^(-8 h / H) for h = 1..H, the softcap as in include/mha.h). What runs:
  no softcap   F.scaled_dot_product_attention(q, k, v, enable_gqa=G < H): is_causal=--causal
               when that is all (and S = N); otherwise attn_mask = the bool mask of the keys
               allowed [N, S] (causal and window, as users of a sliding window write it), or
               with --alibi the float mask [1, H, N, S] = -slope_h * |i + S - N - j|, -inf
               where not allowed (as BLOOM's and MPT's PyTorch code builds it)
  --softcap C  no SDPA option exists: the eager attention of Gemma 2's PyTorch code, k and v
               repeated to H heads (repeat_kv), scores = (q k^T) * scale, C * tanh(scores / C),
               plus the float mask, softmax in float32, times v; refused (exit 2) where its
               [B, H, N, S] intermediates would need more than --max-gib GiB
Forward only (the default): under torch.inference_mode(); --backward: inputs with
requires_grad, the forward then out.backward(dout), each phase timed (the JSON's fwd_ and bwd_
fields). Before timing, one untimed call runs under torch.profiler (its aten ops name the
kernel, as bench/torch_bench.py records them), and the output on 64 query rows at each end of
the first and last head is checked against a float64 reference of mha.h's score definition on
the same (rounded) inputs (exit 2 on a mismatch): max error <= tolerance(dtype) times the
reference's largest magnitude (1e-4 in float32; 2 machine epsilons in bf16 and f16, whose
outputs are rounded to 8 and 11 significant bits).
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from torch_bench import check, kernel_name, profiled_ops

# --dtype: the element type of q, k, v, dout (and of the output and gradients)
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def tolerance(dtype):
    """The reference check's bound, relative to the reference's largest magnitude: 1e-4 for
    float32; for bf16 and f16 two machine epsilons (the output's own rounding is up to half of
    one; PyTorch's intermediate roundings, e.g. of the probabilities for the product with V, add
    to it: about half an epsilon is what its bf16 and f16 calls show)."""
    return 1e-4 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps


def parse_window(text):
    try:
        left, right = (int(x) for x in text.split(","))
    except ValueError:
        left = right = -2
    if left < -1 or right < -1:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected L,R: two whole numbers >= -1")
    return left, right


def alibi_slopes(H):
    """ALiBi's slopes 2^(-8 h / H), h = 1..H (the same as `mha bench --alibi`)."""
    return torch.tensor([2.0 ** (-8.0 * h / H) for h in range(1, H + 1)], dtype=torch.float64)


def allowed_keys(a, rows):
    """Bool [len(rows), S]: key j allowed for query row i (bottom-right causal and window)."""
    i = torch.as_tensor(rows)[:, None] + (a.seq_k - a.seq)  # row i's diagonal key
    j = torch.arange(a.seq_k)[None, :]
    ok = torch.ones(len(rows), a.seq_k, dtype=torch.bool)
    if a.causal:
        ok &= j <= i
    if a.window and a.window[0] >= 0:
        ok &= j >= i - a.window[0]
    if a.window and a.window[1] >= 0:
        ok &= j <= i + a.window[1]
    return ok


def float_mask(a, dtype):
    """[1, H, N, S] (with --alibi) or [N, S]: 0 where allowed, -inf elsewhere, minus ALiBi."""
    rows = range(a.seq)
    m = torch.zeros(a.seq, a.seq_k, dtype=dtype).masked_fill(~allowed_keys(a, rows), -math.inf)
    if not a.alibi:
        return m
    i = torch.arange(a.seq)[:, None] + (a.seq_k - a.seq)
    dist = (i - torch.arange(a.seq_k)[None, :]).abs().to(dtype)
    return (m - alibi_slopes(a.heads).to(dtype)[:, None, None] * dist)[None]


def ref_rows(a, q, k, v, b, h, rows):
    """float64 output rows of head (b, h), straight from mha.h's score definition."""
    kh = h // (a.heads // a.kv_heads)
    s = (q[b, h, rows].double() * a.head_dim ** -0.5) @ k[b, kh].double().T
    if a.softcap:
        s = a.softcap * torch.tanh(s / a.softcap)
    if a.alibi:
        i = torch.as_tensor(rows)[:, None] + (a.seq_k - a.seq)
        s = s - alibi_slopes(a.heads)[h] * (i - torch.arange(a.seq_k)[None, :]).abs()
    s = s.masked_fill(~allowed_keys(a, rows), -math.inf)
    return torch.softmax(s, -1) @ v[b, kh].double()


def attention(a, dtype=torch.float32):
    """The call as PyTorch users write it (see the top of this file) on q, k, v of dtype:
    (fn(q, k, v), what)."""
    plain = not (a.window or a.alibi or (a.causal and a.seq_k != a.seq))
    if not a.softcap:
        gqa = a.kv_heads < a.heads
        if plain:
            what = "F.sdpa" + (", is_causal" if a.causal else "")
            return (lambda q, k, v: F.scaled_dot_product_attention(
                q, k, v, is_causal=a.causal, enable_gqa=gqa)), what + (", enable_gqa" * gqa)
        mask = float_mask(a, dtype) if a.alibi else allowed_keys(a, range(a.seq))
        what = "F.sdpa, " + ("float ALiBi mask" if a.alibi else "bool mask")
        return (lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=gqa)), what + (", enable_gqa" * gqa)
    need = 6 * 4 * a.batch * a.heads * a.seq * a.seq_k / 2 ** 30
    if need > a.max_gib:
        print(f"torch_modern.py: error: --softcap: the eager attention's intermediates need about "
              f"{need:.1f} GiB, expected <= --max-gib {a.max_gib:g}", file=sys.stderr)
        sys.exit(2)
    mask = None if not (a.causal or a.window or a.alibi) else float_mask(a, dtype)
    rep, scale, cap = a.heads // a.kv_heads, a.head_dim ** -0.5, a.softcap

    def eager(q, k, v):  # Gemma 2's eager_attention_forward
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        s = torch.matmul(q, k.transpose(2, 3)) * scale
        s = torch.tanh(s / cap) * cap
        if mask is not None:
            s = s + mask
        return torch.matmul(torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype), v)
    return eager, "eager: matmul, tanh softcap, float mask, softmax, matmul"


def setup(a):
    g = torch.Generator().manual_seed(0)
    B, H, G, N, S, D = a.batch, a.heads, a.kv_heads, a.seq, a.seq_k, a.head_dim
    q, do = (torch.rand(B, H, N, D, generator=g) * 2 - 1 for _ in range(2))
    k, v = (torch.rand(B, G, S, D, generator=g) * 2 - 1 for _ in range(2))
    dtype = DTYPES[getattr(a, "dtype", "f32")]  # (a namespace made without --dtype: float32)
    q, k, v, do = (t.to(dtype) for t in (q, k, v, do))
    if a.backward:
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    fn, what = attention(a, dtype)

    def fwd():
        with torch.inference_mode():
            return fn(q, k, v)

    def fwd_bwd():
        t0 = time.perf_counter()
        o = fn(q, k, v)
        t1 = time.perf_counter()
        o.backward(do)
        t2 = time.perf_counter()
        q.grad = k.grad = v.grad = None
        return t1 - t0, t2 - t1

    info = {"impl": what, "ops": profiled_ops(fwd_bwd if a.backward else fwd)}
    info["kernel"] = kernel_name(info["ops"])
    o = fwd()
    rows = sorted(set(range(min(64, N))) | set(range(max(0, N - 64), N)))
    err = 0.0
    for b, h in {(0, 0), (B - 1, H - 1)}:
        ref = ref_rows(a, q.detach(), k.detach(), v.detach(), b, h, rows)
        err = max(err, check("output", o[b, h, rows], ref, tolerance(dtype)))
    info["max_rel_err"] = err
    return fwd, fwd_bwd, info


def timed(a, fwd, fwd_bwd):
    """Warm-up, then up to --runs runs (stopping after --budget s): the forward and backward
    seconds of each run."""
    def step():
        if a.backward:
            return fwd_bwd()
        t0 = time.perf_counter()
        fwd()
        return time.perf_counter() - t0, 0.0

    for _ in range(a.warmup):
        step()
    times, start = [], time.perf_counter()
    while len(times) < a.runs and (not times or time.perf_counter() - start <= a.budget):
        times.append(step())
    return times


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def add_timing_args(ap):
    """The options of timed(): --threads, --runs, --warmup, --budget."""
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs after the profiled one")
    ap.add_argument("--budget", type=float, default=math.inf,
                    help="stop the timed runs once they took this many seconds (>= 1 run)")


def timing_fields(a, times):
    """The JSON's fields from timed()'s (forward, backward) seconds: threads, PyTorch's version,
    runs, the median total, forward (and with --backward, backward) times in ms."""
    tf, tb = [t[0] for t in times], [t[1] for t in times]
    r = {"threads": torch.get_num_threads(), "torch": torch.__version__, "runs": len(times),
         "median_ms": median([f + b for f, b in times]) * 1e3, "fwd_median_ms": median(tf) * 1e3}
    if a.backward:
        r["bwd_median_ms"] = median(tb) * 1e3
    return r


def measure(a, setup, fields):
    """On --threads: setup(a), timed() runs, then the JSON line: fields, setup's info and the
    timing fields."""
    torch.set_num_threads(a.threads)
    fwd, fwd_bwd, info = setup(a)
    times = timed(a, fwd, fwd_bwd)
    print(json.dumps({**fields, **info, **timing_fields(a, times)}))


def main():
    ap = argparse.ArgumentParser(description="PyTorch's side of bench/modern.py (see the top "
                                 "of this file)")
    for name in ("--batch", "--heads", "--seq", "--head-dim"):
        ap.add_argument(name, type=int, required=True)
    ap.add_argument("--kv-heads", type=int, help="default: --heads")
    ap.add_argument("--seq-k", type=int, help="default: --seq")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--window", type=parse_window, help="L,R (-1: unbounded)")
    ap.add_argument("--softcap", type=float, default=0.0)
    ap.add_argument("--alibi", action="store_true")
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="f32",
                    help="q, k, v, dout and the results in float32, bfloat16 or float16")
    add_timing_args(ap)
    ap.add_argument("--max-gib", type=float, default=8.0,
                    help="--softcap: the most memory the eager intermediates may take")
    a = ap.parse_args()
    a.kv_heads = a.kv_heads or a.heads
    a.seq_k = a.seq_k or a.seq
    if min(a.batch, a.heads, a.seq, a.seq_k, a.head_dim, a.kv_heads, a.runs) < 1:
        ap.error("--batch, --heads, --kv-heads, --seq, --seq-k, --head-dim, --runs: >= 1")
    if a.heads % a.kv_heads:
        ap.error(f"--kv-heads {a.kv_heads} does not divide --heads {a.heads}")
    if not a.softcap >= 0:
        ap.error(f"--softcap: got {a.softcap}, expected >= 0")

    measure(a, setup, {
        "what": "torch_core_fwd_bwd" if a.backward else "torch_core_fwd", "batch": a.batch,
        "seq": a.seq, "heads": a.heads, "kv_heads": a.kv_heads, "causal": a.causal,
        "backward": a.backward, "seq_k": a.seq_k, "head_dim": a.head_dim,
        "window": list(a.window) if a.window else None, "softcap": a.softcap,
        "alibi": a.alibi, "dtype": a.dtype})


if __name__ == "__main__":
    main()
