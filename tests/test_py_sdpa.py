"""test_py_sdpa - mha.functional.scaled_dot_product_attention against PyTorch 2.13's
torch.nn.functional.scaled_dot_product_attention (run in float64): layouts [..., H, L, E] with
0 to 3 leading dimensions before H, L != S, Ev != E, bool masks (True = TAKE PART, SDPA's
convention) and float masks of every broadcast shape, is_causal alone and with a mask, scale,
the gradients of q, k and v; fully masked rows; dropout_p from mha's Philox stream under
torch.manual_seed. Tolerances: see py_util.
"""
import random

import pytest
import torch
import torch.nn.functional as F

from mha.functional import scaled_dot_product_attention as sdpa
from py_util import (GRAD_TOL, assert_close, assert_mha_backward, keep_one, leaf,
                     softmax_dropout_reference, zero_fraction_bounds)

LAYOUTS = {"HLE": (3,), "BHLE": (2, 3), "ABHLE": (2, 2, 3), "BHLE-1": (1, 1)}

# mask shapes from the leading dimensions `lead` (..., H) and L, S
MASKS = {
    "none": None,
    "[L,S]": lambda lead, L, S: (L, S),
    "[...,H,L,S]": lambda lead, L, S: lead + (L, S),
    "[...,1,1,S]": lambda lead, L, S: lead[:-1] + (1, 1, S),
    "[H,L,S]": lambda lead, L, S: lead[-1:] + (L, S),
    "[lead[1:],L,S]": lambda lead, L, S: lead[1:] + (L, S),
    "[1,...,1,L,S]": lambda lead, L, S: (1,) * len(lead) + (L, S),
}


def draw_case(i):
    r = random.Random(5000 + i)
    layout = list(LAYOUTS)[i % len(LAYOUTS)]
    E = r.choice([1, 3, 8, 16, 33, 64])
    mask = list(MASKS)[(i // len(LAYOUTS)) % len(MASKS)]
    # is_causal with a mask: test_is_causal_with_an_attn_mask_as_pytorch_2_13
    return dict(seed=i, layout=layout, L=r.choice([1, 2, 9, 17, 40]),
                S=r.choice([1, 3, 9, 16, 41]), E=E, Ev=r.choice([E, 1, 5, 24]), mask=mask,
                dtype=r.choice(["bool", "float"]), is_causal=mask == "none" and r.random() < 0.6,
                scale=r.choice([None, None, 0.37, 1.9]))


CASES = [draw_case(i) for i in range(42)]


def case_id(c):
    return (f"{c['seed']}-{c['layout']}-L{c['L']}S{c['S']}E{c['E']}Ev{c['Ev']}-{c['mask']}-"
            f"{c['dtype']}{'-causal' if c['is_causal'] else ''}"
            f"{'-scale' if c['scale'] else ''}")


def sdpa_mask(shape, dtype, gen, free_first_key):
    """An SDPA mask (bool: True = take part; float: added) keeping a key in every row."""
    out = keep_one(torch.rand(shape, generator=gen) < 0.35, generator=gen)
    if free_first_key:  # with is_causal, row 0 sees only key 0
        out[..., 0] = False
    if dtype == "bool":
        return ~out
    return torch.randn(shape, generator=gen).masked_fill(out, float("-inf"))


def compare(q, k, v, g, **kw):
    """mha against the float64 oracle: outputs and the gradients of q, k, v."""
    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    qr, kr, vr = leaf(q.double()), leaf(k.double()), leaf(v.double())
    m = kw.get("attn_mask")
    kw_ref = dict(kw, attn_mask=m.double() if m is not None and m.is_floating_point() else m)
    out = sdpa(ql, kl, vl, **kw)
    out_r = F.scaled_dot_product_attention(qr, kr, vr, **kw_ref)
    assert out.dtype == torch.float32
    assert_close(out, out_r, "output")
    got = torch.autograd.grad((out * g).sum(), [ql, kl, vl])
    want = torch.autograd.grad((out_r * g.double()).sum(), [qr, kr, vr])
    for name, a, b in zip("qkv", got, want):
        assert_close(a, b, f"grad {name}", GRAD_TOL)
    return out


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_random_configuration_matches_torch(c):
    gen = torch.Generator().manual_seed(c["seed"])
    lead, L, S = LAYOUTS[c["layout"]], c["L"], c["S"]
    q = torch.randn(lead + (L, c["E"]), generator=gen)
    k = torch.randn(lead + (S, c["E"]), generator=gen)
    v = torch.randn(lead + (S, c["Ev"]), generator=gen)
    g = torch.randn(lead + (L, c["Ev"]), generator=gen)
    mask = None
    if c["mask"] != "none":
        mask = sdpa_mask(MASKS[c["mask"]](lead, L, S), c["dtype"], gen, c["is_causal"])
    compare(q, k, v, g, attn_mask=mask, is_causal=c["is_causal"], scale=c["scale"])


@pytest.mark.parametrize("E,Ev", [(64, 64), (80, 80), (128, 128), (128, 32)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_wide_heads_and_lengths_past_the_tiles(E, Ev, is_causal):
    gen = torch.Generator().manual_seed(E + Ev)
    q = torch.randn(1, 2, 150, E, generator=gen)
    k = torch.randn(1, 2, 133, E, generator=gen)
    v = torch.randn(1, 2, 133, Ev, generator=gen)
    g = torch.randn(1, 2, 150, Ev, generator=gen)
    mask = None if is_causal else sdpa_mask((1, 1, 150, 133), "float", gen, False)
    compare(q, k, v, g, attn_mask=mask, is_causal=is_causal)


def test_gradients_come_from_mhas_backward():
    for shape in ((2, 3, 4, 8), (3, 4, 8), (2, 2, 3, 4, 8)):
        q = torch.randn(shape, requires_grad=True)
        assert_mha_backward(sdpa(q, q, q, is_causal=True, dropout_p=0.1), str(shape))


def test_default_scale_is_one_over_sqrt_e():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 7, 20, generator=gen) for _ in range(3))
    assert_close(sdpa(q, k, v), sdpa(q, k, v, scale=20 ** -0.5).double(), "default scale")
    assert_close(sdpa(q, k, v, scale=0.5), F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), scale=0.5), "scale=0.5")


@pytest.mark.parametrize("scale", [-0.6, 1e-6, 40.0])
def test_two_dimensional_inputs_and_unusual_scales(scale):
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(n, 6, generator=gen) for n in (5, 7, 7))
    compare(q, k, v, torch.randn(5, 6, generator=gen), scale=scale)


@pytest.mark.parametrize("L,S", [(5, 5), (3, 8), (8, 3)])
def test_is_causal_is_top_left(L, S):
    # PyTorch's is_causal: key j takes part in query row i iff j <= i, whatever L and S
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 2, L, 8, generator=gen), torch.randn(2, 2, S, 8, generator=gen)
    v, g = torch.randn(2, 2, S, 6, generator=gen), torch.randn(2, 2, L, 6, generator=gen)
    out = compare(q, k, v, g, is_causal=True)
    tril = torch.ones(L, S, dtype=torch.bool).tril()
    assert_close(out, sdpa(q, k, v, attn_mask=tril).double(), "is_causal against its mask")


def test_bool_mask_true_takes_part():
    # SDPA's convention, the opposite of nn.MultiheadAttention's: a row allowed only key 2
    # gives value row 2 exactly
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 1, 4, 8, generator=gen) for _ in range(3))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 2] = True
    assert_close(sdpa(q, k, v, attn_mask=mask)[0, 0], v[0, 0, 2].double().expand(4, 8),
                 "only key 2 takes part")


def test_is_causal_with_an_attn_mask_as_pytorch_2_13():
    # PyTorch 2.13 on the CPU applies both (its docstring says it raises; it does not)
    gen = torch.Generator().manual_seed(4)
    q, k, v, g = (torch.randn(2, 2, 6, 8, generator=gen) for _ in range(4))
    mask = sdpa_mask((6, 6), "bool", gen, True)
    compare(q, k, v, g, attn_mask=mask, is_causal=True)


def test_strided_views():
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(2, 6, 3, 32, generator=gen)
    q = base.transpose(1, 2)[..., :16]   # [2, 3, 6, 16], a [B, L, H, E] buffer viewed
    k = base.transpose(1, 2)[..., 16:]
    v = torch.randn(2, 3, 6, 40, generator=gen)[..., ::2]  # innermost stride 2: copied
    mask = sdpa_mask((6, 2, 6), "float", gen, False).transpose(0, 1)[:, None]  # [2, 1, 6, 6]
    g = torch.randn(2, 3, 6, 20, generator=gen)
    assert not q.is_contiguous() and v.stride(-1) == 2 and not mask.is_contiguous()
    compare(q, k, v, g, attn_mask=mask)


@pytest.mark.parametrize("dtype", ["bool", "float"])
def test_fully_masked_row(dtype):
    # PyTorch 2.13's CPU SDPA gives 0 on a row that no key takes part in (bool False
    # everywhere, or float -inf everywhere), and finite gradients; mha gives 0 by design.
    # Found here: the two agree, output and gradients.
    gen = torch.Generator().manual_seed(6)
    q, k, v, g = (torch.randn(2, 2, 5, 8, generator=gen) for _ in range(4))
    mask = sdpa_mask((2, 2, 5, 5), dtype, gen, False)
    mask[0, 1, 3] = False if dtype == "bool" else float("-inf")
    out = compare(q, k, v, g, attn_mask=mask)
    assert torch.count_nonzero(out[0, 1, 3]) == 0


# -- dropout -----------------------------------------------------------------------------------

P = 0.2


def weights_through_identity(q, k, seed, **kw):
    """value = the identity [S, S]: the output is the attention weights (after dropout)."""
    S = k.shape[-2]
    v = torch.eye(S).expand(q.shape[:-2] + (S, S))
    if seed is not None:
        torch.manual_seed(seed)
    return sdpa(q, k, v, **kw)


def test_dropout_reproducible_under_manual_seed():
    gen = torch.Generator().manual_seed(7)
    q, k = torch.randn(2, 4, 24, 16, generator=gen), torch.randn(2, 4, 24, 16, generator=gen)
    w1 = weights_through_identity(q, k, 1, dropout_p=P)
    w1b = weights_through_identity(q, k, 1, dropout_p=P)
    w2 = weights_through_identity(q, k, 2, dropout_p=P)
    assert torch.equal(w1, w1b), "same seed, different result"
    assert not torch.equal(w1 != 0, w2 != 0), "seeds 1 and 2 dropped the same weights"
    w0 = weights_through_identity(q, k, None)
    dropped = w1 == 0
    lo, hi = zero_fraction_bounds(w1.numel(), P)
    frac = dropped.double().mean().item()
    assert lo < frac < hi, f"dropped fraction: got {frac:.4f}, expected {P}"
    assert_close(w1[~dropped], w0[~dropped].double() / (1 - P), "survivors scaled by 1/(1-p)")
    # any value: the same seed, the same output
    v = torch.randn(2, 4, 24, 5, generator=gen)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(sdpa(q, k, v, dropout_p=P))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], sdpa(q, k, v))


def test_dropout_gradients_use_the_forward_mask():
    gen = torch.Generator().manual_seed(8)
    q, k = torch.randn(2, 3, 10, 8, generator=gen), torch.randn(2, 3, 12, 8, generator=gen)
    v = torch.eye(12).expand(2, 3, 12, 12)
    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    qr, kr, vr = leaf(q.double()), leaf(k.double()), leaf(v.double())
    torch.manual_seed(9)
    out = sdpa(ql, kl, vl, dropout_p=P, is_causal=True)
    causal = torch.ones(10, 12, dtype=torch.bool).tril()
    scores = (qr @ kr.transpose(-1, -2) * 8 ** -0.5).masked_fill(~causal, float("-inf"))
    out_r = softmax_dropout_reference(scores, out != 0, P) @ vr
    assert_close(out, out_r, "output with the kept weights")
    g = torch.randn(2, 3, 10, 12, generator=gen)
    got = torch.autograd.grad((out * g).sum(), [ql, kl, vl])
    want = torch.autograd.grad((out_r * g.double()).sum(), [qr, kr, vr])
    for name, a, b in zip("qkv", got, want):
        assert_close(a, b, f"dropout: grad {name}", GRAD_TOL)


@pytest.mark.parametrize("shape", [((2, 8), (2, 2)), ((1, 6), (1, 1)), ((4,), (2,)),
                                   ((2, 2, 4), (2, 2, 1))],
                         ids=["B2 H8 Hkv2", "MQA H6", "3-D H4 Hkv2", "5-D H4 Hkv1"])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "float"])
def test_grouped_query_attention_as_pytorch(shape, mask):
    # enable_gqa=True: key/value with fewer heads; outputs and the gradients of q, k, v (the
    # key/value gradients summed over each group) against PyTorch's enable_gqa in float64
    gen = torch.Generator().manual_seed(31)
    (qlead, kvlead), L, S, E = shape, 7, 11, 16
    q = torch.randn(qlead + (L, E), generator=gen)
    k = torch.randn(kvlead + (S, E), generator=gen)
    v = torch.randn(kvlead + (S, 12), generator=gen)
    g = torch.randn(qlead + (L, 12), generator=gen)
    kw = dict(enable_gqa=True)
    if mask == "causal":
        kw["is_causal"] = True
    elif mask == "bool":
        kw["attn_mask"] = torch.rand(qlead + (L, S), generator=gen) < 0.8
    elif mask == "float":
        kw["attn_mask"] = torch.randn((L, S), generator=gen)
    compare(q, k, v, g, **kw)
