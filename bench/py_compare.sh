#!/usr/bin/env bash
# py_compare.sh - mha's Python modules against PyTorch 2.13 in one process, and the Python
# overhead over the C benchmark (issue 9, "Speed"); writes a markdown report. Builds nothing:
# run `make` (and `make test` for the venv) first. ~15 minutes on 2 cores; QUICK=1: a minute.
#
#   bench/py_compare.sh    BUILD=build THREADS=2 OUT=/tmp/py_bench.md PYTHON=$BUILD/venv/bin/python
#   (QUICK=1 for one small shape and few runs; RESULTS=/tmp/py.jsonl keeps the JSON lines, from
#    which `bench/py_render.py /tmp/py.jsonl` redoes the markdown; extra arguments go to
#    bench/py_bench.py, e.g. --shapes "1,2048,512,8,0")
#
# What it measures and how: the top of bench/py_bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
T=${THREADS:-2}
OUT=${OUT:-/tmp/py_bench.md}
PY=${PYTHON:-$BUILD/venv/bin/python}
for f in "$BUILD/mha" "$BUILD/libmha.so"; do
    [ -e "$f" ] || { echo "py_compare.sh: $f not found (run make first)" >&2; exit 1; }
done
if [ ! -x "$PY" ]; then
    echo "py_compare.sh: $PY not found (the Python environment with torch==2.13.0)" >&2
    echo "hint: \`make test\` creates $BUILD/venv; or set PYTHON=/path/to/venv/bin/python" >&2
    exit 1
fi
quick=(); [ "${QUICK:-0}" = 1 ] && quick=(--quick)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cmd=(bench/py_bench.py --mha-bin "$BUILD/mha" --threads "$T" "${quick[@]}" "$@")
# py_bench.py prints what it is doing on stderr and one JSON line per measurement on stdout
PYTHONPATH=python MHA_LIBRARY=$BUILD/libmha.so "$PY" "${cmd[@]}" > "$TMP/results.jsonl"
[ -n "${RESULTS:-}" ] && cp "$TMP/results.jsonl" "$RESULTS"
# the command line that reproduces this run, for the top of the report
repro="BUILD=$BUILD THREADS=$T${QUICK:+ QUICK=$QUICK}${PYTHON:+ PYTHON=$PYTHON}"
repro="$repro bench/py_compare.sh${*:+ ${*@Q}}"
"$PY" bench/py_render.py "$TMP/results.jsonl" "$repro" > "$TMP/out.md"
mv "$TMP/out.md" "$OUT"
echo "py_compare.sh: wrote $OUT" >&2
