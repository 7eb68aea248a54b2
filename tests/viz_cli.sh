#!/bin/sh
# viz_cli.sh MHA DIR PYTHON - `mha viz` end to end: exit codes and messages, terminal output (ASCII,
# Unicode, colour only on request), and the svg/png/html files. Fixtures: a random layer and
# input written with numpy (tests/mha_py.py's safetensors writer). Registered in viz.cmake.
mha=$1
dir=$2
py=$3 # the test venv's python (numpy)
here=$(cd "$(dirname "$0")" && pwd)
fails=0
mkdir -p "$dir" && cd "$dir" || exit 1
"$py" - "$here" <<'PY' || exit 1
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from mha_py import save_safetensors
r = np.random.default_rng(7)
E = 8
save_safetensors("w.safetensors", {
    "in_proj_weight": r.standard_normal((3 * E, E)).astype(np.float32),
    "in_proj_bias": r.standard_normal(3 * E).astype(np.float32) * 0.1,
    "out_proj.weight": r.standard_normal((E, E)).astype(np.float32),
    "out_proj.bias": np.zeros(E, np.float32)})
np.save("x.npy", r.standard_normal((2, 5, E)).astype(np.float32))
open("tok.txt", "w").write("a\nbb\nccc\ndd\ne\n")
open("tok4.txt", "w").write("a\nb\nc\nd\n")
PY
base="--weights w.safetensors --heads 2 --query x.npy"

# expect CODE PATTERN CMD...: runs CMD, checks the exit code and that stdout+stderr match
# PATTERN (grep -E; "" = anything)
expect() {
    want=$1 pat=$2
    shift 2
    "$@" >out.txt 2>err.txt
    got=$?
    if [ "$got" != "$want" ]; then
        echo "FAIL (exit $got, expected $want): $*"; cat err.txt; fails=$((fails + 1)); return
    fi
    if [ -n "$pat" ] && ! cat out.txt err.txt | grep -Eq -- "$pat"; then
        echo "FAIL (no \"$pat\" in the output): $*"; head -5 out.txt err.txt; fails=$((fails + 1)); return
    fi
    echo "ok   $*"
}

expect 0 "example:" "$mha" viz --help
expect 1 "^mha: error: --weights is required" "$mha" viz --heads 2 --query x.npy
expect 1 "^mha: error: --format: unknown format" "$mha" viz $base --format gif --out a.gif
expect 1 "needs --out" "$mha" viz $base --format svg
expect 1 "exclude each other" "$mha" viz $base --head 0 --all
expect 1 "--key-tokens needs --key" "$mha" viz $base --key-tokens tok.txt
expect 1 "--width: got 10" "$mha" viz $base --width 10
printf '\357\273\277a\nbb\nccc\ndd\ne\n' >bom.txt # a byte order mark: not part of token "a"
expect 0 "" "$mha" viz $base --tokens bom.txt --ascii --head 0
if grep -q '?a' out.txt; then echo "FAIL: the byte order mark shows in a token"; fails=$((fails + 1)); fi
expect 1 "--cell-px: applies to svg and png output, not to term" "$mha" viz $base --cell-px 4
expect 1 "--width: applies to terminal output, not to svg" "$mha" viz $base --out w.svg --width 80
expect 2 "^mha: error: --head: got 5, expected 0 .. 1" "$mha" viz $base --head 5
expect 2 "^mha: error: --batch: got 2" "$mha" viz $base --batch 2
expect 2 "tok4.txt has 4 lines, expected 5" "$mha" viz $base --tokens tok4.txt
expect 2 "^mha: error: " "$mha" viz --weights missing.safetensors --heads 2 --query x.npy
expect 0 "Key Position" "$mha" viz $base --ascii --head 1
if grep -q "$(printf '\033')" out.txt || LC_ALL=C grep -q '[^ -~]' out.txt; then
    echo "FAIL: --ascii output is not plain ASCII"; fails=$((fails + 1))
fi
expect 0 "head 1" "$mha" viz $base --tokens tok.txt --all --causal --width 100
grep -q "$(printf '\033')" out.txt && { echo "FAIL: colour escapes when stdout is not a terminal"; fails=$((fails + 1)); }
expect 0 "ccc" env NO_COLOR=1 "$mha" viz $base --tokens tok.txt --color auto
expect 0 "$(printf '\033')\\[48;2;" "$mha" viz $base --color always --batch 1
expect 0 "" "$mha" viz $base --tokens tok.txt --all --out a.svg
"$py" "$here/viz_svg_check.py" a.svg 50 || fails=$((fails + 1))
expect 0 "" "$mha" viz $base --tokens tok.txt --format html --out a.html
grep -q '"H":2,"L":5,"S":5' a.html || { echo "FAIL: a.html lacks its data"; fails=$((fails + 1)); }
expect 0 "" "$mha" viz $base --out term.txt --head 0
grep -q "Key Position" term.txt || { echo "FAIL: term.txt"; fails=$((fails + 1)); }
"$mha" viz $base --out a.png --cell-px 4 >out.txt 2>err.txt
rc=$?
if [ $rc = 0 ]; then
    head -c 8 a.png | od -An -c | grep -q "P   N   G" || { echo "FAIL: a.png is not a PNG"; fails=$((fails + 1)); }
    echo "ok   png"
elif ! grep -q "png support not built" err.txt; then
    echo "FAIL: png: exit $rc"; cat err.txt; fails=$((fails + 1))
fi
ls ./.mha-tmp-* >/dev/null 2>&1 && { echo "FAIL: temporary files left behind"; fails=$((fails + 1)); }
[ $fails = 0 ] && echo "all mha viz checks passed" || echo "$fails check(s) failed"
[ $fails = 0 ]
