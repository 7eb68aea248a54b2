#!/usr/bin/env bash
# decode.sh - the decode targets of issue 10 (BENCHMARKS.md's decode rows), on a quiet machine:
#   1. B=1, H=32, Hkv=8, D=128, S=32768, fp32 cache: mha's K/V read rate against the memory
#      read bandwidth measured in the same run (target >= 0.80), and PyTorch 2.13's decode
#      step as users write it (bench/torch_decode.py) beside it;
#   2. B=1, H=1, D=128, S=32768: 2 threads against 1 (target >= 1.7x), and the streaming read's
#      own 2-thread / 1-thread ratio (the step reads its 32 MiB from memory: each timed run
#      follows a streaming read of --bw-mib MiB, so no run finds the cache in L3);
#   3. the strided [B, S, Hkv, D] cache (bshd) against the contiguous one (bhsd): not slower;
#   4. (issue 11) the shape of 1. with a bf16 and an f16 cache (q, cache and out in that dtype:
#      half the bytes): the fp32 step's time over theirs (target >= 1.8 for bf16);
#   5. the shape of 1. on paged caches (mha_attn_kvcache_paged, --page-size: pages of 16, 64
#      and 256 rows in shuffled order) against the contiguous cache of the same layout;
#   6. speculative decoding's check of 4 and 8 drafted tokens (--tokens) with 8 query heads per
#      key/value head (H=32, Hkv=4: 32 and 64 rows per head, decoded: the same bytes read)
#      against the one-token step of that shape: the time ratio;
#   7. the ratios of 1.-4. again, each measured in pairs in one process (bench/decode_pairs.c,
#      built here against $BUILD/libmha.so: the two sides alternate round by round, so that the
#      memory's state, which switches between commands, is the same for both).
#
#   bench/decode.sh     BUILD=build THREADS=2 RUNS=20 PYTHON=$BUILD/venv/bin/python
#   (RESULTS=/tmp/d.jsonl keeps the raw JSON lines; a quick try of the script itself, not of
#    the targets: SEQ=2048 BW_MIB=64 RUNS=3)
# Prints one line per measurement and the ratios. Takes about a minute and a half.
set -euo pipefail
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
RUNS=${RUNS:-20}
SEQ=${SEQ:-32768}
BW_MIB=${BW_MIB:-1024}
PY=${PYTHON:-$BUILD/venv/bin/python}
MHA=$BUILD/mha
RESULTS=${RESULTS:-$(mktemp)}
: > "$RESULTS"

bench() { # label, then mha bench arguments
  local label=$1; shift
  "$MHA" bench --core --decode --runs "$RUNS" --bw-mib "$BW_MIB" --json "$@" \
    | sed "s/^{/{\"label\":\"$label\",/" | tee -a "$RESULTS"
}
torch() { # label, then torch_decode.py arguments
  local label=$1; shift
  "$PY" bench/torch_decode.py --runs "$RUNS" "$@" | sed "s/^{/{\"label\":\"$label\",/" \
    | tee -a "$RESULTS"
}

BIG=(--batch 1 --seq-k "$SEQ" --heads 32 --kv-heads 8 --head-dim 128)
ONE=(--batch 1 --seq-k "$SEQ" --heads 1 --kv-heads 1 --head-dim 128)
bench big_bhsd "${BIG[@]}" --threads "$THREADS" --layout bhsd
bench big_bshd "${BIG[@]}" --threads "$THREADS" --layout bshd
bench one_t1 "${ONE[@]}" --threads 1
bench one_t2 "${ONE[@]}" --threads 2
bench big_bf16 "${BIG[@]}" --threads "$THREADS" --layout bhsd --dtype bf16
bench big_f16 "${BIG[@]}" --threads "$THREADS" --layout bhsd --dtype f16
for P in 16 64 256; do bench "page${P}_bshd" "${BIG[@]}" --threads "$THREADS" --layout bshd \
  --page-size "$P"; done
bench page16_bhsd "${BIG[@]}" --threads "$THREADS" --layout bhsd --page-size 16
SPEC=(--batch 1 --seq-k "$SEQ" --heads 32 --kv-heads 4 --head-dim 128 --threads "$THREADS" --causal)
for T in 1 4 8; do bench "spec$T" "${SPEC[@]}" --tokens "$T"; done
torch torch_bhsd --batch 1 --seq "$SEQ" --heads 32 --kv-heads 8 --head-dim 128 \
  --threads "$THREADS" --layout bhsd
torch torch_bshd --batch 1 --seq "$SEQ" --heads 32 --kv-heads 8 --head-dim 128 \
  --threads "$THREADS" --layout bshd

"$PY" - "$RESULTS" <<'PYEOF'
import json, sys
r = {j["label"]: j for j in map(json.loads, open(sys.argv[1]))}
b, s = r["big_bhsd"], r["big_bshd"]
print(f"decode B=1 H=32 Hkv=8 D=128 S={b['seq_k']}, {b['threads']} threads ({b['isa']}):")
print(f"  mha bhsd {b['kv_gbps']:.2f} GB/s of K/V, memory read {b['mem_read_gbps']:.2f} GB/s: "
      f"{b['kv_vs_mem']:.2f} of it (target >= 0.80)")
print(f"  mha bshd {s['kv_gbps']:.2f} GB/s ({s['kv_vs_mem']:.2f} of its run's bandwidth); "
      f"bshd / bhsd time {s['median_ms'] / b['median_ms']:.3f} (target <= 1)")
for lay in ("bhsd", "bshd"):
    t = r["torch_" + lay]
    m = b if lay == "bhsd" else s
    print(f"  PyTorch {t['torch']} {lay} {t['kv_gbps']:.2f} GB/s: "
          f"mha {t['median_ms'] / m['median_ms']:.2f}x faster")
o1, o2 = r["one_t1"], r["one_t2"]
print(f"B=1 H=1 D=128 S={o1['seq_k']}: 1 thread {o1['median_ms']:.3f} ms, "
      f"2 threads {o2['median_ms']:.3f} ms: "
      f"{o1['median_ms'] / o2['median_ms']:.2f}x (target >= 1.7); the streaming read on 2 "
      f"threads / on 1 in the same commands: {o2['mem_read_gbps'] / o1['mem_read_gbps']:.2f}x")
for dt in ("bf16", "f16"):
    h = r["big_" + dt]
    print(f"{dt} / fp32 decode speedup (B=1 H=32 Hkv=8 D=128 S={h['seq_k']}, bhsd): "
          f"{b['median_ms'] / h['median_ms']:.2f}x (target >= 1.8); {dt} "
          f"{h['median_ms']:.3f} ms, {h['kv_gbps']:.2f} GB/s of K/V "
          f"({h['kv_vs_mem']:.2f} of its run's bandwidth)")
for lay, pages in (("bshd", (16, 64, 256)), ("bhsd", (16,))):
    c = r["big_" + lay]
    for P in pages:
        g = r[f"page{P}_{lay}"]
        print(f"paged {lay}, pages of {P} rows: {g['median_ms']:.3f} ms, {g['kv_vs_mem']:.2f} of "
              f"its run's bandwidth; paged / contiguous time {g['median_ms'] / c['median_ms']:.3f}")
one = r["spec1"]
for T in (4, 8):
    t = r[f"spec{T}"]
    print(f"speculative decoding, {T} tokens (B=1 H=32 Hkv=4 D=128 S={t['seq_k']}, "
          f"{T * 8} rows per key/value head): {t['median_ms']:.3f} ms, "
          f"{t['median_ms'] / one['median_ms']:.2f}x the one-token step's {one['median_ms']:.3f} ms")
PYEOF
cc -O2 -fopenmp -Iinclude bench/decode_pairs.c "$BUILD/libmha.so" -Wl,-rpath,"$(cd "$BUILD" && pwd)" \
  -o "$BUILD/decode_pairs"
"$BUILD/decode_pairs" --seq "$SEQ" --bw-mib "$BW_MIB"
