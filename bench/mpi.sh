#!/usr/bin/env bash
# mpi.sh - ring attention over MPI (issue 12, BENCHMARKS.md "Issue 12: ring attention over MPI"):
#   1. the transport between two ranks (bench/mpi_pingpong.c): latency and bandwidth;
#   2. the attention core, forward + backward, B=1 H=8 D=64 N=$SEQ, causal and not, on P = 1, 2
#      and 4 ranks (one thread each: P = 4 shares the 2 cores of this machine): each rank's
#      compute, communication wait and work, the work balance max/mean (target <= 1.05 causal
#      at P = 4), bytes per ring step against B*Hkv*(N/P)*(D+Dv)*4;
#   3. causal forwards at P = 4 of $BIG_SEQS tokens (and the first on one rank): peak memory per
#      rank, O(N / P);
#   4. the scaling model: compute per ring step from the rate measured at P = 1, communication
#      per step from the ping-pong (checked against the measured P = 2 and 4 points), then
#      predictions for 8-64 ranks over 100 Gb/s InfiniBand and 25 Gb/s Ethernet.
#
#   bench/mpi.sh    BUILD=build SEQ=4096 RUNS=3 BIG_SEQS="32768 65536" PYTHON=$BUILD/venv/bin/python
#   (RESULTS=/tmp/m.jsonl keeps the raw JSON lines; a quick try of the script itself:
#    SEQ=512 RUNS=1 BIG_SEQS=2048)
# Takes about 5 minutes with the defaults on 2 cores (the P = 4 forward of 65536 tokens alone
# takes a minute or two).
set -euo pipefail
BUILD=${BUILD:-build}
SEQ=${SEQ:-4096}
RUNS=${RUNS:-3}
BIG_SEQS=${BIG_SEQS:-32768 65536}
PY=${PYTHON:-$BUILD/venv/bin/python}
MHA=$BUILD/mha
# --bind-to none: Open MPI binds each of up to 2 ranks to one core by default, which would give
# the one-rank run's two threads a single core
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none -q)
RESULTS=${RESULTS:-$(mktemp)}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
: > "$RESULTS"

label() { sed "s/^{/{\"label\":\"$1\",/" | tee -a "$RESULTS"; }
load0=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)

# 1. the transport
mpicc -O2 bench/mpi_pingpong.c -o "$TMP/pingpong"
"${MPIRUN[@]}" -n 2 "$TMP/pingpong" 64 20 | label pingpong

# 2. forward + backward at P = 1, 2, 4
SHAPE=(--core --batch 1 --seq "$SEQ" --embed 512 --heads 8 --threads 1 --json)
for causal in "" --causal; do
  for P in 1 2 4; do
    "${MPIRUN[@]}" -n "$P" "$MHA" bench "${SHAPE[@]}" $causal --backward --runs "$RUNS" \
      --warmup 1 | label "ring_p${P}${causal:+_causal}"
  done
done

# 3. the largest causal forwards: one timed run, no warm-up
first=1
for n in $BIG_SEQS; do
  if [ "$first" = 1 ]; then
    "${MPIRUN[@]}" -n 1 "$MHA" bench --core --batch 1 --seq "$n" --embed 512 --heads 8 \
      --threads 2 --causal --runs 1 --warmup 0 --json | label "big_p1_$n"
    first=0
  fi
  "${MPIRUN[@]}" -n 4 "$MHA" bench --core --batch 1 --seq "$n" --embed 512 --heads 8 \
    --threads 1 --causal --runs 1 --warmup 0 --json | label "big_p4_$n"
done

# 4. the tables and the model
echo "$(date -u '+%F %H:%M') UTC, $(( $(date +%s) - start )) s; load average before / after:" \
  "$load0 / $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" bench/mpi_model.py "$RESULTS" "$(nproc)"
