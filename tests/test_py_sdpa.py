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


# -- edge cases, against PyTorch 2.13 directly ---------------------------------------------------

def outcome(f, *args, **kw):
    """("ok", result) or (the exception's type, None)."""
    try:
        return "ok", f(*args, **kw)
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e), None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [((2, 3), (2, 3), (2, 3)), ((2, 4), (2, 2), (2, 1)),
                                   ((3,), (3,), (3,))], ids=["BHLE", "gqa k2 v1", "HLE"])
def test_dropout_p_one_gives_zeros_and_zero_gradients_as_pytorch(dtype, shape):
    # PyTorch multiplies every weight by 0: out and the gradients of q, k, v are 0
    gen = torch.Generator().manual_seed(41)
    (ql, kl, vl), L, S = shape, 5, 7
    q, k, v = (torch.randn(lead + (n, d), generator=gen).to(dtype)
               for lead, n, d in ((ql, L, 8), (kl, S, 8), (vl, S, 6)))
    kw = dict(dropout_p=1.0, enable_gqa=kl != ql, attn_mask=torch.randn(L, S).to(dtype))
    a, b = [leaf(t) for t in (q, k, v)], [leaf(t) for t in (q, k, v)]
    out, ref = sdpa(*a, **kw), F.scaled_dot_product_attention(*b, **kw)
    assert out.dtype == ref.dtype == dtype and out.shape == ref.shape
    assert torch.equal(out, ref)
    g = torch.randn(ref.shape, generator=gen).to(dtype)
    got = torch.autograd.grad((out * g).sum(), a)
    want = torch.autograd.grad((ref * g).sum(), b)
    for name, x, y in zip("qkv", got, want):
        assert x.dtype == y.dtype and torch.equal(x, y), f"grad {name}"
    with torch.no_grad():
        assert torch.equal(sdpa(q, k, v, **kw), ref.detach())


HEAD_DIM_0 = {
    "plain": dict(),
    "causal L<S": dict(is_causal=True),
    "bool mask, fully masked rows": dict(attn_mask="bool"),
    "float mask": dict(attn_mask="float"),
    "scale 0.5": dict(scale=0.5),
    "scale nan": dict(scale=float("nan")),
    "scale 0": dict(scale=0.0),
    "dropout 1": dict(dropout_p=1.0),
}


@pytest.mark.parametrize("layout", [(2, 3), (3,), (), (2, 1, 2)], ids=["BHLE", "HLE", "LE", "5-D"])
@pytest.mark.parametrize("case", list(HEAD_DIM_0))
def test_head_dim_zero_as_pytorch(layout, case):
    # E = 0: every score is 0 (1/sqrt(0) = inf scales an empty q): the mean of v over the keys
    # a row may see; fully masked rows 0; q and k get empty gradients
    gen = torch.Generator().manual_seed(43)
    L, S = 6, 9
    q, k = torch.randn(layout + (L, 0)), torch.randn(layout + (S, 0))
    v, g = torch.randn(layout + (S, 5), generator=gen), torch.randn(layout + (L, 5), generator=gen)
    kw = dict(HEAD_DIM_0[case])
    if kw.get("attn_mask") == "bool":
        m = torch.rand((L, S), generator=gen) < 0.5
        m[1] = False  # a fully masked row
        kw["attn_mask"] = m
    elif kw.get("attn_mask") == "float":
        kw["attn_mask"] = torch.randn(layout + (L, S), generator=gen)
    compare(q, k, v, g, **kw)


def test_head_dim_zero_with_causal_l_past_s_and_bfloat16():
    gen = torch.Generator().manual_seed(44)
    q, k = torch.randn(2, 3, 8, 0), torch.randn(2, 3, 5, 0)
    v, g = torch.randn(2, 3, 5, 4, generator=gen), torch.randn(2, 3, 8, 4, generator=gen)
    compare(q, k, v, g, is_causal=True)
    b = [t.bfloat16() for t in (q, k, v)]
    out, ref = sdpa(*b), F.scaled_dot_product_attention(*b)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("scale", [0.0, -0.0])
def test_scale_zero_as_pytorch(scale):
    # every score 0 with E > 0 too; q and k get zero gradients
    gen = torch.Generator().manual_seed(45)
    q, k, v, g = (torch.randn(2, 3, n, d, generator=gen)
                  for n, d in ((4, 8), (6, 8), (6, 5), (4, 5)))
    compare(q, k, v, g, scale=scale, attn_mask=torch.randn(4, 6, generator=gen))


@pytest.mark.parametrize("qdtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mdtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16,
                                    torch.int64, torch.uint8, torch.bool])
def test_attn_mask_dtypes_as_pytorch(qdtype, mdtype):
    # bool, float32 or the query's dtype; anything else: RuntimeError naming attn_mask
    q = torch.randn(1, 2, 3, 8).to(qdtype)
    m = torch.zeros(3, 3, dtype=mdtype)
    want, _ = outcome(F.scaled_dot_product_attention, q, q, q, attn_mask=m)
    got, _ = outcome(sdpa, q, q, q, attn_mask=m)
    assert got == want, f"mask {mdtype} with a {qdtype} query: mha {got}, torch {want}"
    if want is RuntimeError:
        with pytest.raises(RuntimeError, match=r"attn_mask\.dtype: got "):
            sdpa(q, q, q, attn_mask=m)


MASK_RANK_CASES = {  # (q, k, v shapes), sdpa kwargs
    "4-D": (((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4)), {}),
    "4-D Ev != E": (((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 6)), {}),
    "4-D causal": (((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4)), dict(is_causal=True)),
    "4-D dropout": (((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4)), dict(dropout_p=0.3)),
    "4-D gqa": (((2, 4, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4)), dict(enable_gqa=True)),
    "4-D gqa k2 v1": (((2, 4, 3, 4), (2, 2, 5, 4), (2, 1, 5, 4)), dict(enable_gqa=True)),
    "4-D L=0": (((2, 2, 0, 4), (2, 2, 5, 4), (2, 2, 5, 4)), {}),
    "4-D S=0": (((2, 2, 3, 4), (2, 2, 0, 4), (2, 2, 0, 4)), {}),
    "4-D Ev=0": (((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 0)), {}),
    "4-D E=0": (((2, 2, 3, 0), (2, 2, 5, 0), (2, 2, 5, 4)), {}),
    "3-D": (((2, 3, 4), (2, 5, 4), (2, 5, 4)), {}),
    "2-D": (((3, 4), (5, 4), (5, 4)), {}),
    "5-D": (((1, 2, 2, 3, 4), (1, 2, 2, 5, 4), (1, 2, 2, 5, 4)), {}),
}


# (not "4-D causal" with a mask requiring grad: PyTorch then takes its math path, which refuses
# is_causal with any attn_mask, a difference of its own)
@pytest.mark.parametrize("case, mask", [
    (c, m) for c in MASK_RANK_CASES for m in ("1-D bool", "1-D float", "0-D", "1-D requires grad")
    if (c, m) != ("4-D causal", "1-D requires grad")])
def test_attn_mask_of_one_or_no_dimension_as_pytorch(case, mask):
    # PyTorch 2.13 raises IndexError where its CPU backend selection reads attn_mask.size(-2)
    # (4-D inputs, no dropout, ...), and broadcasts the mask elsewhere
    shapes, kw = MASK_RANK_CASES[case]
    gen = torch.Generator().manual_seed(47)
    q, k, v = (torch.randn(s, generator=gen) for s in shapes)
    S = k.shape[-2]
    m = {"1-D bool": lambda: torch.rand(S, generator=gen) < 0.7,
         "1-D float": lambda: torch.randn(S, generator=gen),
         "0-D": lambda: torch.tensor(0.5),
         "1-D requires grad": lambda: torch.randn(S, generator=gen).requires_grad_()}[mask]()
    with torch.no_grad():  # (mha refuses a mask requiring grad when a gradient is recorded)
        want, ref = outcome(F.scaled_dot_product_attention, q, k, v, attn_mask=m, **kw)
        got, out = outcome(sdpa, q, k, v, attn_mask=m, **kw)
    assert got == want, f"{case}, {mask} mask: mha {got}, torch {want}"
    if want == "ok" and "dropout_p" not in kw:
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if want is IndexError:
        with torch.no_grad(), pytest.raises(IndexError, match="attn_mask"):
            sdpa(q, k, v, attn_mask=m, **kw)


@pytest.mark.parametrize("heads", [(8, 4, 2), (8, 2, 4), (12, 4, 6), (6, 1, 3), (4, 4, 1)],
                         ids=lambda h: "H{} Hk{} Hv{}".format(*h))
@pytest.mark.parametrize("mask", [None, "causal", "bool", "float"])
def test_grouped_query_attention_with_different_key_and_value_heads(heads, mask):
    # PyTorch 2.13 takes key and value with different head counts, each dividing the query's
    gen = torch.Generator().manual_seed(49)
    (H, Hk, Hv), L, S = heads, 5, 9
    q = torch.randn(2, H, L, 8, generator=gen)
    k = torch.randn(2, Hk, S, 8, generator=gen)
    v = torch.randn(2, Hv, S, 6, generator=gen)
    g = torch.randn(2, H, L, 6, generator=gen)
    kw = dict(enable_gqa=True)
    if mask == "causal":
        kw["is_causal"] = True
    elif mask == "bool":
        kw["attn_mask"] = ~keep_one(torch.rand(2, H, L, S, generator=gen) < 0.3, generator=gen)
    elif mask == "float":
        kw["attn_mask"] = torch.randn(L, S, generator=gen)
    compare(q, k, v, g, **kw)
    if mask == "bool":
        kw["attn_mask"] = kw["attn_mask"][0]
    compare(q[0], k[0], v[0], g[0], **kw)  # 3-D


def test_grouped_query_attention_heads_that_do_not_divide():
    q = torch.randn(1, 8, 3, 4)
    for hk, hv in ((3, 2), (2, 3), (16, 8)):
        k, v = torch.randn(1, hk, 5, 4), torch.randn(1, hv, 5, 4)
        with pytest.raises(RuntimeError):
            F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        with pytest.raises(ValueError, match="enable_gqa"):
            sdpa(q, k, v, enable_gqa=True)


@pytest.mark.parametrize("shapes", [
    ((2, 4, 5, 8), (1, 4, 7, 8), (1, 4, 7, 6), False),   # one key/value batch for every query's
    ((1, 4, 5, 8), (3, 4, 7, 8), (3, 1, 7, 6), False),   # query batch 1, value heads 1
    ((3, 8, 5, 8), (1, 2, 7, 8), (1, 2, 7, 8), True),    # with GQA: the batch broadcasts
    ((4, 5, 8), (2, 1, 4, 7, 8), (2, 1, 4, 7, 8), False),  # different numbers of dimensions
    ((5, 8), (2, 7, 8), (7, 8), False),
], ids=lambda s: "-".join("x".join(map(str, t)) for t in s[:3]) + ("-gqa" if s[3] else ""))
def test_leading_dimensions_broadcast_as_pytorch(shapes):
    qs, ks, vs, gqa = shapes
    gen = torch.Generator().manual_seed(61)
    q, k, v = (torch.randn(s, generator=gen) for s in (qs, ks, vs))
    out_shape = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa).shape
    g = torch.randn(out_shape, generator=gen)
    assert compare(q, k, v, g, is_causal=True, enable_gqa=gqa).shape == out_shape


def test_leading_dimensions_that_do_not_broadcast():
    q, k = torch.randn(2, 4, 5, 8), torch.randn(3, 4, 7, 8)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, k, k)
    with pytest.raises(ValueError, match=r"query, key, value: got shapes \[2, 4, 5, 8\], "
                       r"\[3, 4, 7, 8\], \[3, 4, 7, 8\], expected leading dimensions "
                       r"\(before L, E\) that broadcast"):
        sdpa(q, k, k)


def test_enable_gqa_needs_three_dimensions_as_pytorch():
    x = torch.randn(3, 4)
    for f in (F.scaled_dot_product_attention, sdpa):
        with pytest.raises(IndexError):
            f(x, x, x, enable_gqa=True)


def test_zero_heads_give_the_empty_result_as_pytorch():
    gen = torch.Generator().manual_seed(51)
    q, k, v, g = (torch.randn(2, 0, n, d, generator=gen)
                  for n, d in ((3, 4), (5, 4), (5, 6), (3, 6)))
    assert compare(q, k, v, g).shape == (2, 0, 3, 6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_query_rows_backward_of_a_sum_as_pytorch(dtype):
    # out.sum().backward() on an empty out hands the backward an expanded gradient whose
    # strides are all 0 (contiguous for torch: it is empty): zero gradients, as PyTorch's
    gen = torch.Generator().manual_seed(52)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen).to(dtype) for n in (0, 5, 5))
    mine, ref = [leaf(t) for t in (q, k, v)], [leaf(t) for t in (q, k, v)]
    got = torch.autograd.grad(sdpa(*mine).sum(), mine)
    want = torch.autograd.grad(F.scaled_dot_product_attention(*ref).sum(), ref)
    for name, a, b in zip("qkv", got, want):
        assert a.shape == b.shape and a.dtype == dtype and torch.equal(a, b), name


@pytest.mark.parametrize("L, S", [(0, 5), (4, 0)])
def test_empty_lengths_with_three_leading_dimensions(L, S):
    # 5-D inputs were reshaped to [-1, H, L, E], which torch refuses for a tensor of no
    # elements ("cannot reshape tensor of 0 elements ... ambiguous": a RuntimeError where
    # PyTorch returns the empty or zero result); found by a randomized sweep
    gen = torch.Generator().manual_seed(53)
    q, k, v = (torch.randn(2, 2, 3, n, d, generator=gen) for n, d in ((L, 8), (S, 8), (S, 6)))
    g = torch.randn(2, 2, 3, L, 6, generator=gen)
    if L == 0:
        assert compare(q, k, v, g).shape == (2, 2, 3, 0, 6)
        return
    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    out = sdpa(ql, kl, vl)  # no keys: every row fully masked, 0 (mha's, and PyTorch 2.13's)
    assert out.shape == (2, 2, 3, L, 6) and torch.equal(out, torch.zeros_like(out))
    for name, a in zip("qkv", torch.autograd.grad((out * g).sum(), [ql, kl, vl])):
        assert torch.equal(a, torch.zeros_like(a)), name
