#!/usr/bin/env python3
"""torch_bench.py - PyTorch's side of BENCHMARKS.md: times one PyTorch attention call on random
data after a warm-up and prints one JSON line with the median (the fields of `mha bench --json`,
plus what PyTorch actually ran).

    $BUILD/venv/bin/python bench/torch_bench.py --batch 1 --seq 512 --embed 512 --heads 8 \\
        [--causal] [--sdpa] [--mode infer|train] [--need-weights] [--backward] \\
        [--threads 2] [--runs 7] [--warmup W] [--budget S]

The module (default): torch.nn.MultiheadAttention(E, H, batch_first=True), self-attention,
dropout 0, on x [B, N, E] uniform in [-1, 1):
  --mode infer     eval() and torch.inference_mode(): the fused fast path
                   (torch._native_multi_head_attention); forward only
  --mode train     train(), the forward under torch.no_grad() (nothing kept for a backward):
                   F.multi_head_attention_forward, the path training takes
  --backward       train(), a forward that records the graph, then y.backward(dy); fwd and bwd
                   are timed separately too
  --need-weights   need_weights=True, average_attn_weights=True (weights [B, N, N]); default
                   need_weights=False
  --causal         attn_mask = the bool upper triangle (True = masked, as mha's top-left causal
                   mask) and is_causal=True, the hint that lets the training path hand SDPA
                   is_causal instead of the mask
--sdpa: F.scaled_dot_product_attention(q, k, v, is_causal=--causal) on contiguous q, k, v
[B, H, N, E/H], as `mha bench --core`: the forward under inference_mode, or with --backward a
forward with requires_grad plus out.backward(dout).

Before timing, one untimed call runs under torch.profiler: its aten op names say whether the
module's fast path was taken and which attention kernel ran ("ops", "fast_path", "kernel" in
the JSON); for --sdpa, torch._fused_sdp_choice says which backend the dispatcher picks
("sdp_choice"), and the two must agree. The results are checked once before timing, and the
script exits 2 on a mismatch: SDPA's output on rows at both ends of the sequence against
float64 (and its gradients against the math backend where that is small); the fast path's
output and weights against the training path's (float64 where that is small). FLOP counts
are the nominal ones of `mha bench` (the causal core counted at half; the weights add
nothing), so rates compare directly.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

FLASH_OP = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH_OP = "aten::_scaled_dot_product_attention_math"
FAST_OP = "aten::_native_multi_head_attention"
# op names worth recording: they say which attention kernel ran
OP_KEYS = ("multi_head_attention", "scaled_dot_product", "softmax", "bmm")


@contextlib.contextmanager
def quiet_stderr():
    """The profiler's Kineto backend prints start/stop lines on fd 2: hide them."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def profiled_ops(fn):
    """Runs fn once under torch.profiler; returns the attention-related aten op names."""
    from torch.profiler import ProfilerActivity, profile
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if n.startswith("aten::") and any(k in n for k in OP_KEYS))


def kernel_name(ops):
    """What computed softmax(q k^T) v, from the op names."""
    if FLASH_OP in ops:
        return "flash (cpu)"
    if MATH_OP in ops:
        return "sdpa math"
    if "aten::_masked_softmax" in ops:
        return "bmm + masked_softmax"
    if any("softmax" in o for o in ops):
        return "bmm + softmax"
    return "?"


def check(name, got, ref, tol):
    """Exits 2 unless max |got - ref| <= tol * max |ref|; returns that relative error."""
    err = (got.double() - ref.double()).abs().max().item()
    rel = err / max(ref.abs().max().item(), 1e-30)
    if not rel <= tol:
        print(f"torch_bench.py: error: {name}: max abs error {err:.3g} against the reference, "
              f"{rel:.3g} of its largest magnitude, expected <= {tol:g}", file=sys.stderr)
        sys.exit(2)
    return rel


def ref_rows(q, k, v, rows, causal, scale):
    """softmax(q[rows] k^T * scale) v in float64 for one [N, D] head, top-left causal."""
    s = (q[rows].double() @ k.double().T) * scale
    if causal:
        j = torch.arange(k.shape[0])
        s = s.masked_fill(j[None, :] > torch.as_tensor(rows)[:, None], float("-inf"))
    return torch.softmax(s, -1) @ v.double()


def setup_sdpa(a, B, N, H, D):
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.rand(B, H, N, D, generator=g) * 2 - 1 for _ in range(4))
    if a.backward:
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))

    def fwd():
        with torch.inference_mode():
            return F.scaled_dot_product_attention(q, k, v, is_causal=a.causal)

    def fwd_bwd():
        t0 = time.perf_counter()
        o = F.scaled_dot_product_attention(q, k, v, is_causal=a.causal)
        t1 = time.perf_counter()
        o.backward(do)
        t2 = time.perf_counter()
        q.grad = k.grad = v.grad = None
        return t1 - t0, t2 - t1

    info = {"ops": profiled_ops(fwd_bwd if a.backward else fwd)}
    with torch.no_grad():
        choice = torch._fused_sdp_choice(q, k, v, is_causal=a.causal)
    info["sdp_choice"] = torch.nn.attention.SDPBackend(choice).name
    info["kernel"] = kernel_name(info["ops"])
    expected = {"FLASH_ATTENTION": "flash (cpu)", "MATH": "sdpa math"}.get(info["sdp_choice"])
    if expected != info["kernel"] or (a.backward and expected == "flash (cpu)"
                                      and FLASH_OP + "_backward" not in info["ops"]):
        print(f"torch_bench.py: error: torch._fused_sdp_choice says {info['sdp_choice']} but the "
              f"profiler saw {info['ops']}", file=sys.stderr)
        sys.exit(2)

    # The output on the first and last 64 query rows of the first and last head against float64.
    o = fwd()
    rows = sorted(set(range(min(64, N))) | set(range(max(0, N - 64), N)))
    err = 0.0  # relative to the largest magnitude of the reference
    for b, h in {(0, 0), (B - 1, H - 1)}:
        ref = ref_rows(q[b, h].detach(), k[b, h].detach(), v[b, h].detach(), rows, a.causal,
                       D ** -0.5)
        err = max(err, check("sdpa output", o[b, h, rows], ref, 1e-4))
    info["max_rel_err"] = err
    # The gradients against the math backend, where its [B, H, N, N] scores are small.
    if a.backward and expected == "flash (cpu)" and B * H * N * N <= 1 << 26:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        grads = []
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, is_causal=a.causal).backward(do)
            grads.append([t.grad for t in (q, k, v)])
            q.grad = k.grad = v.grad = None
        for name, g1, g2 in zip(("dq", "dk", "dv"), *grads):
            info["max_rel_err"] = max(info["max_rel_err"], check(name, g1, g2, 1e-4))
    return fwd, fwd_bwd, info


def setup_module(a, B, N, E, H):
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(E, H, batch_first=True)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, N, E, generator=g) * 2 - 1
    dy = torch.rand(B, N, E, generator=g) * 2 - 1
    # bool mask: True = not allowed (key j > query i), as mha's --causal (top-left)
    mask = torch.triu(torch.ones(N, N, dtype=torch.bool), 1) if a.causal else None
    kw = dict(need_weights=a.need_weights, attn_mask=mask, is_causal=a.causal)
    if a.mode == "infer" and not a.backward:
        m.eval()
    else:
        m.train()

    def call(inp):
        return m(inp, inp, inp, **kw)

    def fwd():
        if a.mode == "infer":
            with torch.inference_mode():
                return call(x)
        with torch.no_grad():
            return call(x)

    def fwd_bwd():
        xg = x.detach().requires_grad_(True)
        t0 = time.perf_counter()
        y = call(xg)[0]
        t1 = time.perf_counter()
        y.backward(dy)
        t2 = time.perf_counter()
        m.zero_grad(set_to_none=False)
        return t1 - t0, t2 - t1

    ops = profiled_ops(fwd_bwd if a.backward else fwd)
    info = {"ops": ops, "fast_path": FAST_OP in ops, "kernel": kernel_name(ops)}
    if a.mode == "infer" and not a.backward:
        if not info["fast_path"]:
            print("torch_bench.py: warning: eval() + inference_mode did not take the fast path "
                  f"({FAST_OP} not among {ops})", file=sys.stderr)
        # The fast path against the training path with the same parameters, in float64
        # unless its [B, H, N, N] scores would take more than 512 MiB.
        y, w = fwd()
        dt = torch.float64 if B * H * N * N <= 1 << 26 else torch.float32
        ref = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=dt)
        ref.load_state_dict({k_: t.to(dt) for k_, t in m.state_dict().items()})
        ref.train()
        with torch.no_grad():
            xr = x.to(dt)
            yr, wr = ref(xr, xr, xr, **kw)
        info["checked_against"] = f"training path, {str(dt).replace('torch.', '')}"
        info["max_rel_err"] = check("module output", y, yr, 1e-4)
        if a.need_weights:
            info["max_rel_err"] = max(info["max_rel_err"], check("weights", w, wr, 1e-4))
    return fwd, fwd_bwd, info


def main():
    ap = argparse.ArgumentParser(description="PyTorch's side of BENCHMARKS.md (see the top of "
                                 "this file)")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--embed", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--sdpa", action="store_true",
                    help="F.scaled_dot_product_attention on q, k, v [B, H, N, E/H]")
    ap.add_argument("--mode", choices=("infer", "train"), default="train",
                    help="module forward: eval() + inference_mode (the fast path) or train() + "
                    "no_grad (default: train; --backward is always train)")
    ap.add_argument("--need-weights", action="store_true",
                    help="module: need_weights=True, average_attn_weights=True")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--budget", type=float, default=0,
                    help="stop the timed runs once they took this many seconds (>= 1 run)")
    ap.add_argument("--warmup", type=int, default=-1,
                    help="untimed runs after the profiled one (default: 1, more up to 0.2 s)")
    a = ap.parse_args()
    if a.sdpa and (a.need_weights or a.mode == "infer"):
        ap.error("--sdpa: --need-weights and --mode apply to the module only")
    if a.backward and a.mode == "infer":
        ap.error("--backward runs in training mode: --mode infer applies to the forward only")
    if a.embed % a.heads:
        ap.error(f"--embed {a.embed} is not a multiple of --heads {a.heads}")

    torch.set_num_threads(a.threads)
    B, N, E, H = a.batch, a.seq, a.embed, a.heads
    D = E // H
    if a.sdpa:
        fwd, fwd_bwd, info = setup_sdpa(a, B, N, H, D)
    else:
        fwd, fwd_bwd, info = setup_module(a, B, N, E, H)

    warm_until = time.perf_counter() + 0.2
    w = 0
    while (w < a.warmup) if a.warmup >= 0 else (w < 1 or (w < 20 and time.perf_counter() < warm_until)):
        fwd_bwd() if a.backward else fwd()
        w += 1
    tf, tb, tt = [], [], []
    timed_from = time.perf_counter()
    for r in range(a.runs):
        if r > 0 and a.budget > 0 and time.perf_counter() - timed_from > a.budget:
            break
        if a.backward:
            f, b = fwd_bwd()
        else:
            t0 = time.perf_counter()
            fwd()
            f, b = time.perf_counter() - t0, 0.0
        tf.append(f)
        tb.append(b)
        tt.append(f + b)

    def med(v):
        v = sorted(v)
        n = len(v)
        return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])

    Fc = 4.0 * B * H * N * N * D * (0.5 if a.causal else 1.0)
    P = 0.0 if a.sdpa else 2.0 * B * N * E * 3 * E + 2.0 * B * N * E * E
    flops_f, flops_b = Fc + P, 2 * P + 2.5 * Fc
    flops = flops_f + (flops_b if a.backward else 0)
    kind = "torch_sdpa" if a.sdpa else "torch_module"
    r = {"what": kind + ("_fwd_bwd" if a.backward else "_fwd"), "batch": B, "seq": N,
         "embed": E, "heads": H, "causal": a.causal, "backward": a.backward}
    if a.sdpa:  # infer: under inference_mode; autograd: inputs with requires_grad
        r["mode"] = "autograd" if a.backward else "infer"
    else:
        r["mode"] = "train" if a.backward else a.mode
        r["need_weights"] = a.need_weights
    r.update(info)
    r.update({"threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "runs": len(tt),
              "median_ms": med(tt) * 1e3, "gflops": flops / med(tt) * 1e-9,
              "fwd_median_ms": med(tf) * 1e3, "fwd_gflops": flops_f / med(tf) * 1e-9})
    if a.backward:
        r["bwd_median_ms"] = med(tb) * 1e3
        r["bwd_gflops"] = flops_b / med(tb) * 1e-9
    print(json.dumps(r))


if __name__ == "__main__":
    main()
