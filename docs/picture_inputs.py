"""picture_inputs.py DIR IMG - the layer and the inputs that docs/make_pictures.sh draws with
`mha viz` (into DIR), and the tile map of docs/attention.md (IMG/tiles.svg, drawn by mha.viz: the
library's SVG renderer).

The layer is made by hand, not trained, so that each head does one thing you can read off its
weights (docs/attention.md, "A layer made by hand"): E = 16, H = 2 heads of D = 8.
  input row x_i = [position one-hot (8) | token one-hot (8)]
  head 0, "previous token": q_i = c e_{i-1} (the position shifted by one), k_j = e_j, so the
          score of key j is scale * c = 6 when j = i - 1, else 0;
  head 1, "same token":     q_i = c t_i, k_j = t_j (token one-hots), so the score is 6 when
          token j is token i, else 0;
  v = x and out_proj = identity, biases 0.
with c = 6 sqrt(D), the scale being 1/sqrt(D). Needs numpy and the mha package (save_file,
viz.save): PYTHONPATH=python, MHA_LIBRARY=build/libmha.so.
"""
import math
import os
import sys

import numpy as np

import mha
import mha.viz

E, H, D, NPOS = 16, 2, 8, 8
C = 6 * math.sqrt(D)  # every strong score becomes scale * C = 6
TOKENS = ["the", "cat", "sat", "on", "the", "mat", "and", "purred"]
PADDED = ["<pad>", "<pad>", "the", "cat", "sat", "on", "the", "mat"]
# the tile map's tiles: 4 query rows x 8 keys, small so that a 32 x 32 picture shows several
# (the generic kernels use 16 x 32: src/kernels/generic/init.c, attn_fwd_br and attn_fwd_bc)
TILE_R, TILE_C = 4, 8


def layer():
    """The in_proj_weight [3E, E], in_proj_bias, out_proj.weight and out_proj.bias described
    above, as nn.MultiheadAttention names them."""
    w = np.zeros((3 * E, E), np.float32)
    for a in range(D - 1):  # head 0 query: position i -> c e_{i-1}
        w[a, a + 1] = C
    for a in range(D):
        w[D + a, NPOS + a] = C   # head 1 query: c * token one-hot
        w[E + a, a] = 1          # head 0 key: position one-hot
        w[E + D + a, NPOS + a] = 1  # head 1 key: token one-hot
    w[2 * E:, :] = np.eye(E, dtype=np.float32)  # v = x
    return {"in_proj_weight": w, "in_proj_bias": np.zeros(3 * E, np.float32),
            "out_proj.weight": np.eye(E, dtype=np.float32),
            "out_proj.bias": np.zeros(E, np.float32)}


def inputs(tokens):
    """x [L, E]: position and token one-hots (tokens numbered in order of first appearance)."""
    vocab = {}
    x = np.zeros((len(tokens), E), np.float32)
    for i, t in enumerate(tokens):
        x[i, i] = 1
        x[i, NPOS + vocab.setdefault(t, len(vocab))] = 1
    return x


def window_mask(L, S, left, right):
    """The bool mask (true = not allowed) that excludes what mask.window = (left, right)
    excludes: allowed iff i + (S - L) - left <= j <= i + (S - L) + right."""
    i = np.arange(L)[:, None] + (S - L)
    j = np.arange(S)[None, :]
    return ~((j >= i - left) & (j <= i + right))


def alibi_mask(L, S, slopes):
    """The float mask [H, L, S] that adds what ALiBi adds: -slope_h |i + (S - L) - j|."""
    dist = np.abs(np.arange(L)[:, None] + (S - L) - np.arange(S)[None, :]).astype(np.float32)
    return np.stack([-s * dist for s in slopes]).astype(np.float32)


def tile_map(L, S):
    """[L, S] picture of the causal forward's work: 0 = a tile that is skipped (every key of it
    excluded for every row of it), 0.5 = a score computed in a visited tile and then excluded
    (its probability exactly 0), 1 = a score that counts."""
    m = np.zeros((L, S), np.float32)
    for i0 in range(0, L, TILE_R):
        for j0 in range(0, S, TILE_C):
            i1, j1 = min(L, i0 + TILE_R), min(S, j0 + TILE_C)
            if i1 - 1 < j0:  # the tile's last row allows no key of it: skipped
                continue
            for i in range(i0, i1):
                for j in range(j0, j1):
                    m[i, j] = 1.0 if j <= i else 0.5
    return m


def main(out, img):
    os.makedirs(out, exist_ok=True)
    mha.viz.save(tile_map(32, 32), os.path.join(img, "tiles.svg"))
    mha.save_file(layer(), os.path.join(out, "layer.safetensors"), metadata={"num_heads": "2"})
    x = inputs(TOKENS)
    np.save(os.path.join(out, "x.npy"), x)
    np.save(os.path.join(out, "x_last3.npy"), x[5:])
    np.save(os.path.join(out, "x_padded.npy"), inputs(PADDED))
    np.save(os.path.join(out, "pad.npy"), np.array([t == "<pad>" for t in PADDED]))
    np.save(os.path.join(out, "window.npy"), window_mask(8, 8, 2, 0))
    np.save(os.path.join(out, "alibi.npy"), alibi_mask(8, 8, [1.0, 0.25]))
    for name, toks in (("tokens.txt", TOKENS), ("tokens_last3.txt", TOKENS[5:]),
                       ("tokens_padded.txt", PADDED)):
        with open(os.path.join(out, name), "w") as f:
            f.write("\n".join(toks) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: picture_inputs.py DIR IMG")
    sys.exit(main(sys.argv[1], sys.argv[2]))
