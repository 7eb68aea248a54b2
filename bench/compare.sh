#!/usr/bin/env bash
# compare.sh - mha side by side with PyTorch 2.13 (CPU) and OpenBLAS, on one thread count;
# writes BENCHMARKS.md. Called by `make bench` (after the build); takes ~10-15 minutes on 2 cores.
#
#   bench/compare.sh      BUILD=build THREADS=2 OUT=BENCHMARKS.md PYTHON=$BUILD/venv/bin/python
#   (quick check: SHAPES="1,512,512,8,0" CORE_SHAPES="1,2048,1024,8,1" GEMM_SIZES="512,512"
#    NONCAUSAL_4096=0 MEMORY=0 DROPOUT=0 OUT=/tmp/b.md; CORE_SHAPES="" drops the core-only rows;
#    RESULTS=/tmp/r.jsonl keeps the raw JSON lines; ROUNDS=1 for one round instead of two)
#
# The Python package has its own comparison, bench/py_compare.sh (bench/py_bench.py): mha's
# Python modules (mha.MultiheadAttention, the seed mha.MultiHeadAttention, mha.functional)
# against PyTorch in ONE process on the same SHAPES, the small calls of decoding (1,8,64,4),
# and the Python overhead over `mha bench`; it writes markdown to OUT=/tmp/py_bench.md
# (QUICK=1 for a one-minute try). This script measures the C library through the CLI only.
#
# What runs (each: warm-up, then the median of several runs), on the module shapes SHAPES
# (B, N, E, H, causal):
#   mha bench     the module forward and forward + backward, each without and with
#                 --need-weights (averaged weights [B, N, N]); the core (mha_attn_forward on
#                 q, k, v [B, H, N, E/H]) forward and forward + backward;
#   PyTorch       bench/torch_bench.py in the Python environment $PY (torch==2.13.0):
#                 nn.MultiheadAttention(batch_first=True) with need_weights False and True:
#                 forward in inference (eval() + inference_mode: the fused fast path) and in
#                 training mode (train() + no_grad), and forward + backward (train());
#                 F.scaled_dot_product_attention on q, k, v [B, H, N, E/H], forward and
#                 forward + backward (the backend it ran is recorded);
# and on CORE_SHAPES only the core and SDPA (head dim 128, and N = 8192);
#   OpenBLAS      cblas_sgemm via bench/openblas_sgemm.c (Debian's libopenblas-dev), with
#                 bench/openblas_env (OPENBLAS_CORETYPE=SkylakeX on AVX-512 CPUs, unset elsewhere;
#                 OPENBLAS_L2_SIZE unset) for that command only;
#   mha gemm      `mha bench --gemm` on the same projection shapes.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
T=${THREADS:-2}
OUT=${OUT:-BENCHMARKS.md}
MHA=$BUILD/mha
PY=${PYTHON:-$BUILD/venv/bin/python}
OB=$BUILD/openblas_sgemm
[ -x "$MHA" ] || { echo "compare.sh: $MHA not found (run make first)" >&2; exit 1; }
if [ ! -x "$PY" ]; then
    echo "compare.sh: $PY not found: the benchmark needs the Python environment with torch==2.13.0" >&2
    echo "hint: \`make test\` (scripts/deps.sh) creates $BUILD/venv; or set PYTHON=/path/to/venv/bin/python" >&2
    exit 1
fi
if ! torch_v=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "compare.sh: $PY cannot import torch" >&2
    echo "hint: install tests/requirements.txt into that environment (torch==2.13.0, CPU build)" >&2
    exit 1
fi
case "$torch_v" in
    2.13.*) ;;
    *) if [ "${ANY_TORCH:-0}" != 1 ]; then
           echo "compare.sh: $PY has torch $torch_v, expected 2.13.* (BENCHMARKS.md compares with PyTorch 2.13)" >&2
           echo "hint: use the environment from tests/requirements.txt, or ANY_TORCH=1 to run anyway" >&2
           exit 1
       fi ;;
esac
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

# core ARGS...: mha's attention core and PyTorch's F.scaled_dot_product_attention, forward and
# forward + backward
core() {
    run mha "$MHA" bench "$@" --core --json
    run mha "$MHA" bench "$@" --core --backward --json
    run torch "$PY" bench/torch_bench.py "$@" --sdpa
    run torch "$PY" bench/torch_bench.py "$@" --sdpa --backward
}

# cpu_busy: CPU time (s) all processes used so far: user nice system irq softirq steal in
# /proc/stat. Its growth over the run, minus the run's own CPU time (`times`), is what other
# work (and the hypervisor's steal) took from the measurements.
cpu_busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.2f\n", ($2+$3+$4+$7+$8+$9)/hz}' /proc/stat; }
# own_cpu: user + system seconds of this shell (line 1 of `times`) and its children (line 2);
# `times` must run in this shell, not in a $(...) subshell
own_cpu() {
    times > "$TMP/times"
    awk '{ for (i = 1; i <= 2; i++) { split($i, t, "m"); s += t[1] * 60 + t[2] } }
         END { printf "%.2f\n", s }' "$TMP/times"
}

start=$(date +%s)
busy0=$(cpu_busy)
own_cpu > "$TMP/own0"
export BENCH_LOAD_BEFORE; BENCH_LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# The module and core comparisons run ROUNDS times (default 2), one round after the other, and
# render.py keeps each command's best median: a slow spell of the shared machine then has to hit
# the same command in every round to show, and it hits mha's and PyTorch's commands alike.
ROUNDS=${ROUNDS:-2}
export BENCH_ROUNDS=$ROUNDS
for round in $(seq "$ROUNDS"); do
    echo "round $round of $ROUNDS" >&2
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
        for nw in "" --need-weights; do
            run mha "$MHA" bench "${shape[@]}" "${R[@]}" $nw --json
            run mha "$MHA" bench "${shape[@]}" "${R[@]}" $nw --backward --json
            run torch "$PY" bench/torch_bench.py "${shape[@]}" "${R[@]}" $nw --mode infer
            run torch "$PY" bench/torch_bench.py "${shape[@]}" "${R[@]}" $nw --mode train
            run torch "$PY" bench/torch_bench.py "${shape[@]}" "${R[@]}" $nw --backward
        done
        core "${shape[@]}" "${R[@]}"
    done
    # The core alone on more shapes: head dim 128 (causal and not) and N = 8192
    # (B,N,E,H,causal; set CORE_SHAPES="" for none)
    CORE_SHAPES=${CORE_SHAPES-"1,2048,1024,8,0 1,2048,1024,8,1 1,8192,1024,8,1"}
    for s in $CORE_SHAPES; do
        IFS=, read -r B N E H C <<< "$s"
        causal=(); [ "$C" = 1 ] && causal=(--causal)
        if [ "$N" -ge 2048 ]; then R=(--runs 7 --budget 4 --warmup 0); else R=(--runs 7 --budget 4); fi
        echo "core shape B=$B N=$N E=$E H=$H causal=$C" >&2
        core --batch "$B" --seq "$N" --embed "$E" --heads "$H" "${causal[@]}" --threads "$T" "${R[@]}"
    done
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
        run openblas env OPENBLAS_NUM_THREADS="$T" bench/openblas_env \
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
busy1=$(cpu_busy)
own_cpu > "$TMP/own1"
export BENCH_CPU_OTHER
BENCH_CPU_OTHER=$(awk -v b="$busy1 - $busy0" 'NR == 1 { o0 = $1 } NR == 2 { split(b, x, " ");
    printf "%.1f\n", x[1] - x[3] - ($1 - o0) }' "$TMP/own0" "$TMP/own1")

export BENCH_LOAD_AFTER; BENCH_LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
"$MHA" info --threads "$T" > "$TMP/info.txt"
# RESULTS=path keeps the raw results (render.py can redo the markdown from them)
[ -n "${RESULTS:-}" ] && cp "$RES" "$RESULTS"
"$PY" bench/render.py "$RES" "$T" "$elapsed" "$TMP/info.txt" > "$TMP/out.md"
# the sections other scripts measured (bench/py_compare.sh, bench/modern.py, bench/decode.sh)
# follow a marker line in the existing file: keep them
MARK='<!-- compare.sh keeps everything below this line -->'
if [ -f "$OUT" ] && grep -qxF "$MARK" "$OUT"; then
    printf '\n' >> "$TMP/out.md"
    sed -n "/^$MARK\$/,\$p" "$OUT" >> "$TMP/out.md"
fi
mv "$TMP/out.md" "$OUT"
echo "compare.sh: wrote $OUT (${elapsed}s)" >&2
