#!/usr/bin/env python3
"""torch_decode.py - PyTorch's side of the decode rows of BENCHMARKS.md: one decoding step as
PyTorch users write it, with a preallocated cache, timed after a warm-up; prints one JSON line
with the fields of `mha bench --core --decode --json` (minus the bandwidth, which mha measures).

    $BUILD/venv/bin/python bench/torch_decode.py --batch 1 --seq 32768 --heads 32 \\
        --kv-heads 8 --head-dim 128 [--layout bhsd|bshd] [--threads 2] [--runs 20]

The step, under torch.inference_mode(), on caches allocated once for --seq tokens, the new
token's k, v written at position S - 1 (as mha's bench: the cache holds S - 1 tokens):
    bhsd  k_cache [B, G, S, D]:  k_cache[:, :, S-1:S] = k;  v likewise
          out = F.scaled_dot_product_attention(q, k_cache[:, :, :S], v_cache[:, :, :S],
                                               enable_gqa=True)        # q [B, H, 1, D]
    bshd  k_cache [B, S, G, D] (FlashAttention's layout):  k_cache[:, S-1:S] = k
          out = F.scaled_dot_product_attention(q, k_cache[:, :S].transpose(1, 2), ...)
kv_gbps counts the K and V rows read, B * G * S * 2D floats per step, as mha's. The output is
checked once against float64 before timing (exit 2 on a mismatch).
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=32768)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--layout", choices=["bhsd", "bshd"], default="bhsd")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    B, S, H, G, D = a.batch, a.seq, a.heads, a.kv_heads, a.head_dim
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, generator=g) * 2 - 1

    bshd = a.layout == "bshd"
    kc = rand(B, S, G, D) if bshd else rand(B, G, S, D)
    vc = rand(B, S, G, D) if bshd else rand(B, G, S, D)
    q, kn, vn = rand(B, H, 1, D), rand(B, G, 1, D), rand(B, G, 1, D)

    def step():
        if bshd:
            kc[:, S - 1:S] = kn.transpose(1, 2)
            vc[:, S - 1:S] = vn.transpose(1, 2)
            k, v = kc[:, :S].transpose(1, 2), vc[:, :S].transpose(1, 2)
        else:
            kc[:, :, S - 1:S] = kn
            vc[:, :, S - 1:S] = vn
            k, v = kc[:, :, :S], vc[:, :, :S]
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    with torch.inference_mode():
        out = step()
        k = (kc.transpose(1, 2) if bshd else kc).double().repeat_interleave(H // G, dim=1)
        v = (vc.transpose(1, 2) if bshd else vc).double().repeat_interleave(H // G, dim=1)
        w = torch.softmax(q.double() @ k.transpose(-1, -2) / D ** 0.5, dim=-1)
        err = (out.double() - w @ v).abs().max().item()
        if err > 1e-4:
            print(f"torch_decode.py: output differs from float64 by {err}", file=sys.stderr)
            sys.exit(2)
        for _ in range(a.warmup):
            step()
        t = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            step()
            t.append(time.perf_counter() - t0)
    med = statistics.median(t)
    kv_bytes = B * G * S * 2 * D * 4
    print(json.dumps({
        "what": "torch_decode", "batch": B, "seq_k": S, "heads": H, "kv_heads": G,
        "head_dim": D, "layout": a.layout, "threads": torch.get_num_threads(),
        "runs": a.runs, "median_ms": round(med * 1e3, 4), "kv_bytes": kv_bytes,
        "kv_gbps": round(kv_bytes / med * 1e-9, 3), "torch": torch.__version__,
        "max_abs_err": err}))


if __name__ == "__main__":
    main()
