#!/bin/sh
# make_pictures.sh [IMG_DIR] - redraws the pictures of docs/attention.md with mha itself: the
# hand-made layer and inputs of docs/picture_inputs.py run through `mha viz --format svg`, and
# the tile map drawn by the Python package's mha.viz.save. IMG_DIR defaults to docs/img.
#
#   MHA      the mha binary             (default: build/mha of this checkout)
#   PYTHON   a Python with numpy        (default: python3)
#   MHA_LIB  the library mha.viz loads  (default: build/libmha.so of this checkout)
#
# The kernels are pinned to the generic ones (MHA_ISA=generic), so the pictures are the same
# bytes on every machine; tests/test_docs_links.py runs this script and compares.
set -eu
docs=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$docs")
img=${1:-$docs/img}
MHA=${MHA:-$root/build/mha}
PYTHON=${PYTHON:-python3}
MHA_LIB=${MHA_LIB:-$root/build/libmha.so}
export MHA_ISA=generic

mkdir -p "$img"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
PYTHONPATH="$root/python" MHA_LIBRARY="$MHA_LIB" "$PYTHON" "$docs/picture_inputs.py" "$tmp" "$img"

# draw NAME TITLE [mha viz options...]: the layer on the sentence, every head, as IMG/NAME.svg
draw() {
    name=$1 title=$2
    shift 2
    "$MHA" viz --weights "$tmp/layer.safetensors" --all --cell-px 28 --title "$title" \
        --out "$img/$name.svg" "$@"
}
x="--query $tmp/x.npy --tokens $tmp/tokens.txt"
# shellcheck disable=SC2086 # $x is two options and their values, split on purpose
{
    draw heads "no mask: head 0 looks one token back, head 1 at the same word" $x
    draw causal "causal (top-left): query i sees keys 0..i" $x --causal
    # the scale nearly 0 makes every score 0: what shapes these weights is the mask alone
    draw window "window (2, 0) as its bool mask, scores all 0: keys i-2..i" $x --scale 1e-12 \
        --attn-mask "$tmp/window.npy"
    draw alibi "ALiBi slopes (1, 0.25) as their float mask, scores all 0" $x --scale 1e-12 \
        --attn-mask "$tmp/alibi.npy"
}
kv="--key $tmp/x.npy --value $tmp/x.npy --key-tokens $tmp/tokens.txt"
# shellcheck disable=SC2086
{
    draw cross_top_left "L = 3 queries, S = 8 keys, causal top-left: j <= i" \
        --query "$tmp/x_last3.npy" --tokens "$tmp/tokens_last3.txt" $kv --causal
    draw cross_bottom_right "L = 3 queries, S = 8 keys, causal bottom-right: j <= i + 5" \
        --query "$tmp/x_last3.npy" --tokens "$tmp/tokens_last3.txt" $kv --causal-bottom-right
}
draw padding "key padding on keys 0, 1 with the causal mask: rows 0, 1 fully masked" \
    --query "$tmp/x_padded.npy" --tokens "$tmp/tokens_padded.txt" \
    --key-padding-mask "$tmp/pad.npy" --causal
