#!/usr/bin/env bash
# gemm_side.sh - mha's gemm and OpenBLAS sgemm side by side on the projection shapes of
# bench/compare.sh, alternating the two programs ROUNDS times per shape; prints a markdown table
# of the median rate ratio (and its range): on a shared machine only ratios of neighbouring runs
# mean something.
#
#   bench/gemm_side.sh        BUILD=build THREADS=2 ROUNDS=5 RUNS=10 MHA=$BUILD/mha
#   (GEMM_SIZES="4096,1024" for the E = 1024 shapes only, as in compare.sh: M,E pairs;
#    OLD=/path/to/an/older/mha adds its ratio, measured in the same rounds: before and after)
#
# OpenBLAS: bench/openblas_sgemm.c (Debian's libopenblas-dev) through bench/openblas_env (its
# core type for this CPU, OPENBLAS_L2_SIZE unset, for that command only), as compare.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
T=${THREADS:-2}
ROUNDS=${ROUNDS:-5}
RUNS=${RUNS:-10}
MHA=${MHA:-$BUILD/mha}
OB=$BUILD/openblas_sgemm
OLD=${OLD:-}
[ -x "$MHA" ] || { echo "gemm_side.sh: $MHA not found (build first)" >&2; exit 1; }
if [ -n "$OLD" ] && [ ! -x "$OLD" ]; then
    echo "gemm_side.sh: OLD=$OLD: not an executable" >&2
    exit 1
fi
if ! cc -O2 -o "$OB" bench/openblas_sgemm.c -lopenblas -lm; then
    echo "gemm_side.sh: cannot build bench/openblas_sgemm.c" >&2
    echo "hint: apt-get install libopenblas-dev" >&2
    exit 1
fi

# gflops CMD...: the "gflops" field of the last JSON line CMD prints
gflops() { "$@" | tail -n 1 | sed -n 's/.*"gflops":\([0-9.e+-]*\).*/\1/p'; }

ratio() { awk -v m="$1" -v o="$2" 'BEGIN { printf "%.3f", m / o }'; }
med() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
    END { printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { printf '%s\n' "$@" | sort -g | sed -n '1p;$p' | paste -sd- -; }
old_head="" old_rule=""
if [ -n "$OLD" ]; then
    old_head=" old mha / OpenBLAS (median) | range |" old_rule="---:|---|"
fi
printf '| M | N | K | ta | tb | mha GFLOP/s | OpenBLAS GFLOP/s | %s |%s\n' \
    "mha / OpenBLAS (median) | range" "$old_head"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---|$old_rule"
for s in ${GEMM_SIZES:-512,512 2048,512 1024,768 4096,1024}; do
    IFS=, read -r M E <<< "$s"
    for g in "$M $((3 * E)) $E 0 1" "$M $E $E 0 1" "$M $E $((3 * E)) 0 0" \
        "$((3 * E)) $E $M 1 0"; do
        read -r gm gn gk ta tb <<< "$g"
        rs=() ms=() os=() qs=()
        for _ in $(seq "$ROUNDS"); do
            args=(bench --gemm "$gm" "$gn" "$gk" --ta "$ta" --tb "$tb" --threads "$T" --runs "$RUNS"
                --json)
            if [ -n "$OLD" ]; then q=$(gflops "$OLD" "${args[@]}"); fi
            m=$(gflops "$MHA" "${args[@]}")
            o=$(gflops env OPENBLAS_NUM_THREADS="$T" bench/openblas_env \
                "$OB" "$gm" "$gn" "$gk" "$ta" "$tb" "$RUNS")
            ms+=("$m") os+=("$o") rs+=("$(ratio "$m" "$o")")
            if [ -n "$OLD" ]; then qs+=("$(ratio "$q" "$o")"); fi
        done
        old_cols=""
        if [ -n "$OLD" ]; then old_cols=" $(med "${qs[@]}") | $(range "${qs[@]}") |"; fi
        printf '| %s | %s | %s | %s | %s | %.1f | %.1f | %s | %s |%s\n' "$gm" "$gn" "$gk" "$ta" \
            "$tb" "$(med "${ms[@]}")" "$(med "${os[@]}")" "$(med "${rs[@]}")" \
            "$(range "${rs[@]}")" "$old_cols"
    done
done
