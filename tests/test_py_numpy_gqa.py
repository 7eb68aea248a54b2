"""test_py_numpy_gqa.py - mha.attention / mha.attention_backward on NumPy arrays with
grouped-query attention: k and v with heads_kv heads dividing q's (multi-query: 1), against
test_py_numpy's float64 reference run on k and v with each head repeated for its group (the
gradients of k and v: the repeated heads' gradients summed over each group); masks, causal,
strided views; heads that do not divide: the library's message. No PyTorch.
"""
import zlib

import numpy as np
import pytest

import mha
from test_py_numpy import close, make_mask, ref_backward, ref_forward


def expand(x, group):
    """[B, Hkv, S, X] -> [B, Hkv * group, S, X]: key/value head h // group for query head h."""
    return np.repeat(x, group, axis=1)


def fold(dx, group):
    """The gradient of expand: each group's heads summed."""
    B, H, S, X = dx.shape
    return dx.reshape(B, H // group, group, S, X).sum(axis=2)


SHAPES = [  # B, H, Hkv, L, S, E, Ev
    (1, 4, 2, 9, 13, 8, 8),
    (2, 6, 1, 17, 33, 16, 12),
    (1, 8, 4, 70, 150, 64, 64),
    (2, 4, 1, 1, 40, 32, 32),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", [None, "bool_LS", "key_padding", "bool_BHLS"], ids=str)
@pytest.mark.parametrize("causal", [False, True, "bottom_right"], ids=str)
def test_grouped_query_attention_vs_reference(shape, kind, causal):
    B, H, Hkv, L, S, E, Ev = shape
    group = H // Hkv
    rng = np.random.default_rng(zlib.crc32(repr((shape, kind, causal)).encode()))
    q = rng.standard_normal((B, H, L, E)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, S, E)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, S, Ev)).astype(np.float32)
    dout = rng.standard_normal((B, H, L, Ev)).astype(np.float32)
    mask = make_mask(kind, rng, B, H, L, S)
    out, lse = mha.attention(q, k, v, mask=mask, causal=causal, return_lse=True)
    kr, vr = expand(k, group), expand(v, group)
    r_out, r_lse, _ = ref_forward(q, kr, vr, mask, causal)
    close(out, r_out, "out")
    close(lse, r_lse, "lse")
    dq, dk, dv = mha.attention_backward(q, k, v, out, lse, dout, mask=mask, causal=causal)
    assert dk.shape == k.shape and dv.shape == v.shape
    r_dq, r_dk, r_dv = ref_backward(q, kr, vr, dout, mask, causal)
    close(dq, r_dq, "dq")
    close(dk, fold(r_dk, group), "dk")
    close(dv, fold(r_dv, group), "dv")


def test_strided_kv_views_with_fewer_heads():
    # k and v as views of a packed [B, S, 2, Hkv, E] array, transposed to [B, Hkv, S, E]
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 6, 5, 16)).astype(np.float32)
    kv = rng.standard_normal((2, 7, 2, 2, 16)).astype(np.float32)
    k, v = kv[:, :, 0].transpose(0, 2, 1, 3), kv[:, :, 1].transpose(0, 2, 1, 3)
    assert not k.flags.c_contiguous
    out = mha.attention(q, k, v, causal=True)
    close(out, ref_forward(q, expand(k, 3), expand(v, 3), None, True)[0], "out")


def test_heads_that_do_not_divide():
    q = np.zeros((1, 6, 4, 8), np.float32)
    k = np.zeros((1, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match=r"mha_attn_forward: k.shape\[1\]: got 4, expected a "
                                         r"divisor of q's 6 heads"):
        mha.attention(q, k, k)
    with pytest.raises(ValueError, match=r"v.shape\[1\]: got 3, expected 2 \(k heads\)"):
        mha.attention(q, k[:, :2], np.zeros((1, 3, 4, 8), np.float32))
