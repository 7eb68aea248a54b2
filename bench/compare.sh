#!/usr/bin/env bash
# compare.sh - mha side by side with PyTorch and OpenBLAS, on one thread count; writes
# BENCHMARKS.md. Called by `make bench` (after the build); takes ~10 minutes on 2 cores.
#
#   bench/compare.sh                  BUILD=build THREADS=2 OUT=BENCHMARKS.md by default
#   (quick check: SHAPES="1,512,512,8,0" GEMM_SIZES="512,512" NONCAUSAL_4096=0 OUT=/tmp/b.md)
#
# What runs (each: warm-up, then the median of several runs):
#   mha bench     module forward, module forward+backward, core forward, core forward+backward
#                 on the shapes (B, N, E, H) below;
#   PyTorch       nn.MultiheadAttention(batch_first=True), need_weights=False, forward (no_grad)
#                 and forward+backward, via /usr/bin/python3 bench/torch_bench.py;
#   OpenBLAS      cblas_sgemm via bench/openblas_sgemm.c (Debian's libopenblas-dev), with
#                 OPENBLAS_CORETYPE=SkylakeX and OPENBLAS_L2_SIZE unset for that command only;
#   mha gemm      `mha bench --gemm` on the same projection shapes.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
T=${THREADS:-2}
OUT=${OUT:-BENCHMARKS.md}
MHA=$BUILD/mha
PY=/usr/bin/python3
OB=$BUILD/openblas_sgemm
[ -x "$MHA" ] || { echo "compare.sh: $MHA not found (run make first)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
RES=$TMP/results.jsonl
CMDS=$TMP/commands.txt
: > "$RES"
: > "$CMDS"

[ -x /usr/bin/time ] || { echo "compare.sh: /usr/bin/time not found (hint: apt-get install time)" >&2; exit 1; }
if ! cc -O2 -o "$OB" bench/openblas_sgemm.c -lopenblas -lm; then
    echo "compare.sh: cannot build bench/openblas_sgemm.c (hint: apt-get install libopenblas-dev)" >&2
    exit 1
fi

# run LABEL CMD...: runs CMD, appends {"label":..., "cmd":..., "result": <its JSON line>}
run() {
    local label=$1; shift
    local line
    echo "  $*" >&2
    line=$("$@" | tail -n 1)
    printf '%s\n' "$*" >> "$CMDS"
    "$PY" -c 'import json,sys; print(json.dumps({"label": sys.argv[1], "cmd": sys.argv[2], "result": json.loads(sys.argv[3])}))' \
        "$label" "$*" "$line" >> "$RES"
}

start=$(date +%s)
export BENCH_LOAD_BEFORE; BENCH_LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# B,N,E,H,causal
SHAPES=${SHAPES:-"1,512,512,8,0 1,2048,512,8,0 1,2048,512,8,1 4,256,768,12,0 1,4096,1024,16,1"}
for s in $SHAPES; do
    IFS=, read -r B N E H C <<< "$s"
    causal=(); [ "$C" = 1 ] && causal=(--causal)
    # up to 7 runs, fewer where one run is long (--budget: stop after that many seconds);
    # no warm-up run where a single run takes seconds
    if [ "$N" -ge 2048 ]; then R=(--runs 7 --budget 4 --warmup 0); else R=(--runs 7 --budget 4); fi
    shape=(--batch "$B" --seq "$N" --embed "$E" --heads "$H" "${causal[@]}" --threads "$T")
    echo "shape B=$B N=$N E=$E H=$H causal=$C" >&2
    run mha "$MHA" bench "${shape[@]}" "${R[@]}" --json
    run mha "$MHA" bench "${shape[@]}" "${R[@]}" --backward --json
    run mha "$MHA" bench "${shape[@]}" "${R[@]}" --core --json
    run mha "$MHA" bench "${shape[@]}" "${R[@]}" --core --backward --json
    run torch "$PY" bench/torch_bench.py "${shape[@]}" "${R[@]}"
    run torch "$PY" bench/torch_bench.py "${shape[@]}" "${R[@]}" --backward
done
# causal vs non-causal at N = 4096: the core forward without the mask
[ "${NONCAUSAL_4096:-1}" = 1 ] && run mha "$MHA" bench --batch 1 --seq 4096 --embed 1024 --heads 16 --threads "$T" --runs 1 \
    --warmup 0 --core --json

# What attention dropout costs: the core forward + backward with p = 0.1 (the p = 0 run is in
# the table above)
[ "${DROPOUT:-1}" = 1 ] && run mha "$MHA" bench --batch 1 --seq 2048 --embed 512 --heads 8 \
    --threads "$T" --runs 7 --budget 4 --warmup 0 --core --backward --dropout 0.1 --json

# The projections' matrix products: forward x W^T (ta 0, tb 1) for in_proj (N = 3E) and
# out_proj (N = E); backward dX = dY W (ta 0, tb 0) and dW = dY^T X (ta 1, tb 0).
for s in ${GEMM_SIZES:-512,512 2048,512 1024,768 4096,1024}; do
    IFS=, read -r M E <<< "$s"
    for g in "$M $((3 * E)) $E 0 1" "$M $E $E 0 1" "$M $E $((3 * E)) 0 0" "$((3 * E)) $E $M 1 0"; do
        read -r gm gn gk ta tb <<< "$g"
        run mha "$MHA" bench --gemm "$gm" "$gn" "$gk" --ta "$ta" --tb "$tb" --threads "$T" \
            --runs 10 --json
        run openblas env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=SkylakeX OPENBLAS_NUM_THREADS="$T" \
            "$OB" "$gm" "$gn" "$gk" "$ta" "$tb" 10
    done
done
# Peak memory: the module's causal forward at B=1, L=S=32768, E=512, H=8 (inference, inputs
# and outputs included), as resident set size from GNU time.
if [ "${MEMORY:-1}" = 1 ]; then
    mem_cmd=("$MHA" bench --batch 1 --seq 32768 --embed 512 --heads 8 --causal --threads "$T" \
        --runs 1 --warmup 0 --json)
    echo "  /usr/bin/time -f %M ${mem_cmd[*]}" >&2
    /usr/bin/time -o "$TMP/rss" -f %M "${mem_cmd[@]}" > "$TMP/mem.json"
    printf '%s\n' "/usr/bin/time -f %M ${mem_cmd[*]}" >> "$CMDS"
    "$PY" -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); r["what"]="memory"; r["maxrss_kb"]=int(open(sys.argv[2]).read().split()[-1]); print(json.dumps({"label":"mha","cmd":sys.argv[3],"result":r}))' \
        "$TMP/mem.json" "$TMP/rss" "/usr/bin/time -f %M ${mem_cmd[*]}" >> "$RES"
fi
elapsed=$(( $(date +%s) - start ))

export BENCH_LOAD_AFTER; BENCH_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
"$MHA" info --threads "$T" > "$TMP/info.txt"
"$PY" bench/render.py "$RES" "$T" "$elapsed" "$TMP/info.txt" > "$TMP/out.md"
mv "$TMP/out.md" "$OUT"
echo "compare.sh: wrote $OUT (${elapsed}s)" >&2
