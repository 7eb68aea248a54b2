"""test_py_causal_mask.py - a mask that is exactly the causal one runs as the library's causal
flag (no L x S mask read, the tiles above the diagonal skipped), with the same numbers; any other
mask, even one element off, runs as a mask."""
import torch

import mha
from mha import _torch as T
from mha.functional import scaled_dot_product_attention as sdpa


def causal(L, S, kind):
    above = torch.ones(L, S, dtype=torch.bool).triu(1)
    if kind == "excluded":  # nn.MultiheadAttention's bool: True = excluded
        return above
    if kind == "keep":  # SDPA's bool, the seed module's 1/0: True = takes part
        return ~above
    return torch.zeros(L, S).masked_fill(above, float("-inf"))  # generate_square_subsequent_mask


def test_detection():
    for L, S in ((5, 5), (4, 7), (7, 4), (64, 64)):
        assert T.is_causal_mask(causal(L, S, "excluded"), True)
        assert T.is_causal_mask(causal(L, S, "keep"), False)
        assert T.is_causal_mask(causal(L, S, "float"), float("-inf"))
        for i, j in ((L - 1, 0), (L // 2, min(L // 2 + 1, S - 1)), (L - 1, S - 1)):
            m = causal(L, S, "excluded").clone()
            m[i, j] = ~m[i, j]
            assert not T.is_causal_mask(m, True), (L, S, i, j)
        f = causal(L, S, "float").clone()
        f[L - 1, 0] = -1.0
        assert not T.is_causal_mask(f, float("-inf"))
    assert not T.is_causal_mask(torch.zeros(1, 1, dtype=torch.bool), True)


def test_layers_and_sdpa_use_the_flag_with_the_same_numbers():
    torch.manual_seed(0)
    L = 9
    layer = mha.MultiheadAttention(16, 2, batch_first=True)
    ref = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, L, 16)
    for kind in ("excluded", "float"):
        m = causal(L, L, kind)
        arg = layer._mask(None, m, False, True, 2, 2, L, L, "t")
        assert arg.c.causal == 1 and not arg.c.attn_bool and not arg.c.attn_float
        out, w = layer(x, x, x, attn_mask=m, average_attn_weights=False)
        out_r, w_r = ref(x, x, x, attn_mask=m, average_attn_weights=False)
        torch.testing.assert_close(out, out_r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w, w_r, atol=1e-6, rtol=1e-5)
    off = causal(L, L, "excluded").clone()
    off[3, 5] = False  # one key more for row 3: not causal, read as a mask
    arg = layer._mask(None, off, False, True, 2, 2, L, L, "t")
    assert arg.c.causal == 0 and arg.c.attn_bool
    out, _ = layer(x, x, x, attn_mask=off)
    torch.testing.assert_close(out, ref(x, x, x, attn_mask=off)[0], atol=1e-5, rtol=1e-5)
    # The seed module's tril mask and SDPA's keep mask.
    seed = mha.MultiHeadAttention(16, 2)
    assert seed._mask(torch.tril(torch.ones(L, L)), 2, 2, L, "t").c.causal == 1
    q = torch.randn(2, 2, L, 8)
    torch.testing.assert_close(sdpa(q, q, q, attn_mask=causal(L, L, "keep")),
                               torch.nn.functional.scaled_dot_product_attention(q, q, q,
                                                                                is_causal=True),
                               atol=1e-5, rtol=1e-5)
