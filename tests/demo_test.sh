#!/bin/sh
# demo_test.sh MODE MHA_BIN WORKDIR HAVE_PNG - checks of `mha demo` (registered by demo.cmake).
#   run        accuracy line, >= 0.99, the pictures, same seed => same stdout (1 vs 2 threads)
#   gradcheck  mha demo --self-check passes
#   errors     exit codes and one-line messages
set -u
mode=$1 mha=$2 work=$3 have_png=$4
rm -rf "$work" && mkdir -p "$work" || exit 1
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

case $mode in
run)
    # A nested out dir checks that missing parents are created.
    "$mha" demo --seed 7 --threads 1 --out-dir "$work/a/pics" >"$work/out1" 2>"$work/err1"
    rc=$?
    [ $rc -eq 0 ] || { fail "first run exited $rc"; cat "$work/err1"; }
    last=$(tail -n 1 "$work/out1")
    echo "last line: $last"
    echo "$last" | grep -Eq '^accuracy: [01]\.[0-9]{3}$' || fail "last line is not 'accuracy: X'"
    acc=${last#accuracy: }
    awk -v a="$acc" 'BEGIN { exit !(a + 0 >= 0.99) }' || fail "accuracy $acc < 0.99"
    files="attention.svg attention.html"
    [ "$have_png" = 1 ] && files="$files attention.png"
    for f in $files; do
        [ -s "$work/a/pics/$f" ] || fail "$f missing or empty"
        grep -q "wrote $work/a/pics/$f" "$work/out1" || fail "the path of $f is not printed"
    done
    if [ "$have_png" = 1 ]; then
        head -c 8 "$work/a/pics/attention.png" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a' ||
            fail "attention.png has no PNG signature"
    else
        grep -q 'no PNG support' "$work/out1" || fail "a build without PNG does not say so"
    fi
    grep -q '<svg' "$work/a/pics/attention.svg" || fail "attention.svg has no <svg>"
    grep -qi '<html' "$work/a/pics/attention.html" || fail "attention.html has no <html>"
    # Heads are numbered from 0, as in `mha viz`.
    grep -q '^  head 0: ' "$work/out1" && grep -q '^  head 1: ' "$work/out1" &&
        ! grep -q '^  head 2: ' "$work/out1" || fail "heads are not numbered 0 and 1"
    # The trained layer records its number of heads: `mha forward` on it needs no --heads and
    # refuses a wrong one (usage error); example.npy is the example's input.
    pics=$work/a/pics
    for f in layer.safetensors example.npy; do
        grep -q "wrote $pics/$f" "$work/out1" || fail "the path of $f is not printed"
    done
    "$mha" forward --weights "$pics/layer.safetensors" --query "$pics/example.npy" \
        --out "$work/y.npy" 2>"$work/errf" || fail "forward without --heads: $(cat "$work/errf")"
    "$mha" forward --weights "$pics/layer.safetensors" --query "$pics/example.npy" --heads 1 \
        --out "$work/y1.npy" 2>"$work/errh"
    [ $? -eq 1 ] || fail "--heads 1 on a 2-head layer did not exit 1"
    grep -q -- '--heads: got 1, expected 2' "$work/errh" || fail "--heads 1: $(cat "$work/errh")"
    # The heatmap is labelled with the digits of the held-out example (query rows).
    grep -q 'held-out input' "$work/out1" || fail "no heatmap header"
    # Same seed, another thread count, same directory: the same bytes on stdout and in the SVG.
    cp "$work/a/pics/attention.svg" "$work/svg1"
    "$mha" demo --seed 7 --threads 2 --out-dir "$work/a/pics" >"$work/out2" 2>"$work/err2" ||
        fail "second run failed"
    cmp -s "$work/out1" "$work/out2" || { fail "same seed, different output"; diff "$work/out1" "$work/out2"; }
    cmp -s "$work/svg1" "$work/a/pics/attention.svg" || fail "same seed, different attention.svg"
    # Another seed trains another model (the seed is really used).
    "$mha" demo --seed 8 --threads 1 --out-dir "$work/b" >"$work/out3" 2>/dev/null ||
        fail "seed 8 failed"
    cmp -s "$work/out1" "$work/out3" && fail "seeds 7 and 8 print the same thing"
    tail -n 1 "$work/out3" | grep -Eq '^accuracy: (0\.99[0-9]|1\.000)$' || fail "seed 8: $(tail -n 1 "$work/out3")"
    # A step budget too small to learn the task still ends with the accuracy line (and a low one).
    "$mha" demo --seed 7 --steps 1 --out-dir "$work/c" >"$work/out4" 2>/dev/null || fail "--steps 1 failed"
    tail -n 1 "$work/out4" | grep -Eq '^accuracy: 0\.[0-8]' || fail "--steps 1: $(tail -n 1 "$work/out4")"
    ;;
gradcheck)
    "$mha" demo --self-check --seed 3 >"$work/out" 2>"$work/err"
    rc=$?
    cat "$work/out" "$work/err"
    [ $rc -eq 0 ] || fail "--self-check exited $rc"
    grep -q '^gradient check passed' "$work/out" || fail "no 'gradient check passed' line"
    # Every parameter tensor is checked, the attention layer's included.
    for p in tok_emb pos_emb readout.weight readout.bias in_proj_weight in_proj_bias \
             out_proj.weight out_proj.bias; do
        grep -q " $p " "$work/out" || fail "$p not checked"
    done
    ;;
errors)
    # expect EXIT_CODE PATTERN ARGS...: the exit code, exactly one stderr line matching PATTERN.
    expect() {
        want=$1 pat=$2
        shift 2
        "$mha" demo "$@" >"$work/o" 2>"$work/e"
        rc=$?
        [ $rc -eq "$want" ] || fail "mha demo $*: exit $rc, expected $want"
        head -n 1 "$work/e" | grep -Eq "^mha: error: .*$pat" ||
            fail "mha demo $*: stderr '$(head -n 1 "$work/e")' does not match '$pat'"
        [ "$(grep -c 'mha: error:' "$work/e")" -eq 1 ] || fail "mha demo $*: not one error line"
    }
    expect 1 'unknown option' --bogus
    expect 1 'needs a value' --seed
    expect 1 'not a whole number' --seed abc
    expect 1 '--seed' --seed -1
    expect 1 '--steps' --steps 0
    expect 1 '--threads' --threads -2
    expect 1 'unexpected argument' extra
    : >"$work/file"
    expect 2 '--out-dir' --out-dir "$work/file/sub" --steps 1
    expect 2 '--out-dir' --out-dir "$work/file" --steps 1
    "$mha" demo --help >"$work/o" 2>&1 || fail "--help failed"
    grep -q '^example:' "$work/o" || fail "--help has no example"
    ;;
*)
    echo "unknown mode $mode"
    exit 2
    ;;
esac
[ $fails -eq 0 ] && echo "demo $mode: ok"
[ $fails -eq 0 ]
