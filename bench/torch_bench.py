#!/usr/bin/python3
"""torch_bench.py - PyTorch's side of BENCHMARKS.md: times torch.nn.MultiheadAttention
(batch_first=True, self-attention, need_weights=False) forward, or forward + backward, on random
data after a warm-up, and prints one JSON line with the median (the same fields as
`mha bench --json`).

    /usr/bin/python3 bench/torch_bench.py --batch 1 --seq 512 --embed 512 --heads 8 \
        [--causal] [--backward] [--threads 2] [--runs 10] [--warmup W] [--budget S]

The forward alone runs under torch.no_grad() (inference, as `mha bench` without --backward);
--backward times a forward that records the graph plus the backward. The FLOP count is the
nominal one of `mha bench` (the causal core counted at half), so rates compare directly.
"""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--embed", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--budget", type=float, default=0,
                    help="stop the timed runs once they took this many seconds (>= 1 run)")
    ap.add_argument("--warmup", type=int, default=-1,
                    help="untimed runs first (default: 1, more up to 0.2 s)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    B, N, E, H = a.batch, a.seq, a.embed, a.heads
    D = E // H
    m = torch.nn.MultiheadAttention(E, H, batch_first=True)
    x = torch.rand(B, N, E) * 2 - 1
    dy = torch.rand(B, N, E) * 2 - 1
    # bool mask: True = not allowed (key j > query i), as mha's --causal (top-left)
    mask = torch.triu(torch.ones(N, N, dtype=torch.bool), 1) if a.causal else None

    def fwd():
        with torch.no_grad():
            return m(x, x, x, need_weights=False, attn_mask=mask)[0]

    def fwd_bwd():
        xg = x.detach().requires_grad_(True)
        t0 = time.perf_counter()
        y = m(xg, xg, xg, need_weights=False, attn_mask=mask)[0]
        t1 = time.perf_counter()
        y.backward(dy)
        t2 = time.perf_counter()
        m.zero_grad(set_to_none=False)
        return t1 - t0, t2 - t1

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

    F = 4.0 * B * H * N * N * D * (0.5 if a.causal else 1.0)
    P = 2.0 * B * N * E * 3 * E + 2.0 * B * N * E * E
    flops_f, flops_b = F + P, 2 * P + 2.5 * F
    flops = flops_f + (flops_b if a.backward else 0)
    r = {"what": "torch_fwd_bwd" if a.backward else "torch_fwd", "batch": B, "seq": N,
         "embed": E, "heads": H, "causal": a.causal, "backward": a.backward,
         "threads": torch.get_num_threads(), "torch": torch.__version__, "runs": len(tt),
         "median_ms": med(tt) * 1e3, "gflops": flops / med(tt) * 1e-9,
         "fwd_median_ms": med(tf) * 1e3, "fwd_gflops": flops_f / med(tf) * 1e-9}
    if a.backward:
        r["bwd_median_ms"] = med(tb) * 1e3
        r["bwd_gflops"] = flops_b / med(tb) * 1e-9
    print(json.dumps(r))


if __name__ == "__main__":
    main()
