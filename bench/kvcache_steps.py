#!/usr/bin/env python3
"""kvcache_steps.py - the time of one mha.flash_attn_with_kvcache step (FlashAttention's decoding
call, no new tokens appended) over shapes from one query token to speculative decoding's few,
with and without grouped heads, both cache layouts: which path a shape takes (flash-decoding or
the dense core's tiles) shows in its time. Run it on two builds of the library to compare them:

    PYTHONPATH=python MHA_LIBRARY=OLD/libmha.so build/venv/bin/python bench/kvcache_steps.py
    PYTHONPATH=python MHA_LIBRARY=build/libmha.so build/venv/bin/python bench/kvcache_steps.py

One line per shape: the median of 9 steps (after one warm-up) in ms. B=1, D=128, float32,
causal, the library's threads (MHA_NUM_THREADS, default every core).
"""
import time

import torch

import mha

D = 128
SHAPES = [(32, 8, 1), (32, 8, 4), (32, 4, 2), (32, 4, 3), (32, 4, 4), (32, 4, 8), (64, 8, 8),
          (16, 16, 4), (8, 8, 40)]  # H, Hkv, L (query tokens)


def step_ms(S, H, Hkv, L, layout):
    gen = torch.Generator().manual_seed(S + H + Hkv + L)
    shape = (1, S, Hkv, D) if layout == "bshd" else (1, Hkv, S, D)
    kc, vc = (torch.randn(shape, generator=gen) for _ in range(2))
    if layout == "bhsd":
        kc, vc = kc.transpose(1, 2), vc.transpose(1, 2)  # [B, S, Hkv, D] views of bhsd memory
    lens = torch.tensor([S], dtype=torch.int32)
    q = torch.randn(1, L, H, D, generator=gen)
    mha.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True)
    ts = []
    for _ in range(9):
        t = time.perf_counter()
        mha.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True)
        ts.append(time.perf_counter() - t)
    return sorted(ts)[4] * 1e3


def main():
    print(f"library {mha.LIBRARY_PATH}")
    for S in (32768, 2048):
        for H, Hkv, L in SHAPES:
            for layout in ("bhsd", "bshd"):
                print(f"S={S} H={H} Hkv={Hkv} L={L} rows={L * H // Hkv} {layout}: "
                      f"{step_ms(S, H, Hkv, L, layout):.2f} ms", flush=True)


if __name__ == "__main__":
    main()
