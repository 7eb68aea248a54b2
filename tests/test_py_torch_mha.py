"""test_py_torch_mha - mha.MultiheadAttention as a drop-in for torch.nn.MultiheadAttention
(PyTorch 2.13): the same parameters, state_dict and initial values; forward and every gradient
against PyTorch in float64 over seeded random configurations (both batch layouts, unbatched,
cross-attention with kdim/vdim, bool and float masks 2-D and 3-D, need_weights and
average_attn_weights both ways, the is_causal hint); the documented differences (a fully masked
row, dropout from mha's Philox stream); autograd graphs holding two forwards; from_file.

Written from issue 9's contract, not from the implementation. Tolerances: see py_util.
"""
import math
import random
import warnings

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import mha
from py_util import (GRAD_TOL, assert_close, assert_grads_close, assert_mha_backward,
                     causal_mask, float64_copy, grads, leaf, random_mask,
                     softmax_dropout_reference, to_ref, zero_fraction_bounds)

MASK_KINDS = ["none", "kpm_bool", "kpm_float", "attn2_bool", "attn2_float", "attn3_bool",
              "attn3_float", "both_bool", "both_float", "causal_bool", "causal_float"]


def draw_case(i):
    """One seeded random configuration of layer, inputs, masks and call options."""
    r = random.Random(9000 + i)
    H = r.choice([1, 2, 3, 4, 8])
    E = H * r.choice([1, 3, 4, 8, 16])  # E not a multiple of 8 often (3, 9, 12, 24, ...)
    cross = r.random() < 0.4
    unbatched = r.random() < 0.2
    L = r.choice([1, 2, 5, 7, 16, 33])
    S = r.choice([1, 3, 8, 17, 31]) if cross or r.random() < 0.3 else L
    mask = MASK_KINDS[i % len(MASK_KINDS)]
    if mask.startswith("causal"):
        S = L  # the hint describes a square causal mask
    return dict(
        seed=i, E=E, H=H, L=L, S=S, B=1 if unbatched else r.choice([1, 2, 3]),
        kdim=r.choice([None, 5, 12]) if cross else None,
        vdim=r.choice([None, 7, 12]) if cross else None,
        bias=r.random() < 0.8, batch_first=r.random() < 0.5, unbatched=unbatched,
        self_attn=not cross and S == L and r.random() < 0.5, mask=mask,
        need_weights=r.random() < 0.6, average=r.random() < 0.5, train=r.random() < 0.5)


CASES = [draw_case(i) for i in range(36)]


def case_id(c):
    return (f"{c['seed']}-E{c['E']}H{c['H']}L{c['L']}S{c['S']}B{c['B']}"
            f"{'-unbatched' if c['unbatched'] else ''}{'-bf' if c['batch_first'] else ''}"
            f"-{c['mask']}{'-nw' if c['need_weights'] else ''}")


def layer_kwargs(c):
    return dict(embed_dim=c["E"], num_heads=c["H"], bias=c["bias"], kdim=c["kdim"],
                vdim=c["vdim"], batch_first=c["batch_first"])


def make_inputs(c, gen):
    """query, key, value (the same tensor three times for self-attention) and the call's
    keyword arguments (masks in nn.MultiheadAttention's convention)."""
    E, L, S, B, H = c["E"], c["L"], c["S"], c["B"], c["H"]
    kdim, vdim = c["kdim"] or E, c["vdim"] or E

    def shaped(n, d):
        if c["unbatched"]:
            return torch.randn(n, d, generator=gen)
        return torch.randn(*((B, n) if c["batch_first"] else (n, B)), d, generator=gen)

    q = shaped(L, E)
    if c["self_attn"]:
        k = v = q
    else:
        k, v = shaped(S, kdim), shaped(S, vdim)
    kind = c["mask"]
    dtype = "bool" if kind.endswith("bool") else "float"
    kpm_shape = (S,) if c["unbatched"] else (B, S)
    attn3 = (H, L, S) if c["unbatched"] else (B * H, L, S)
    kpm = attn = None
    is_causal = False
    if kind.startswith("kpm") or kind.startswith("both"):
        kpm = random_mask(kpm_shape, dtype, gen)
    if kind.startswith("attn2") or kind.startswith("both"):
        attn = random_mask((L, S), dtype, gen)
    if kind.startswith("attn3"):
        attn = random_mask(attn3, dtype, gen)
    if kind.startswith("both"):  # one key free in both, so no row loses every key
        j = int(torch.randint(0, S, (1,), generator=gen))
        kpm[..., j] = False if dtype == "bool" else 0.0
        attn[..., j] = False if dtype == "bool" else 0.0
    if kind.startswith("causal"):
        attn, is_causal = causal_mask(L, S, dtype), True
    kwargs = dict(key_padding_mask=kpm, attn_mask=attn, need_weights=c["need_weights"],
                  average_attn_weights=c["average"], is_causal=is_causal)
    return q, k, v, kwargs


def run(layer, q, k, v, kwargs, g, as_ref):
    """Forward, then the gradients of sum(out * g) w.r.t. the inputs and every parameter."""
    conv = to_ref if as_ref else (lambda t: t.detach() if t is not None else None)
    if k is q and v is q:
        x = leaf(conv(q))
        inputs = {"x": x}
        q_, k_, v_ = x, x, x
    elif k is v:
        q_, m_ = leaf(conv(q)), leaf(conv(k))
        inputs = {"query": q_, "memory": m_}
        k_ = v_ = m_
    else:
        q_, k_, v_ = leaf(conv(q)), leaf(conv(k)), leaf(conv(v))
        inputs = {"query": q_, "key": k_, "value": v_}
    kw = dict(kwargs)
    kw["key_padding_mask"] = conv(kw["key_padding_mask"])
    kw["attn_mask"] = conv(kw["attn_mask"])
    out, weights = layer(q_, k_, v_, **kw)
    loss = (out * conv(g)).sum()
    return out, weights, grads(loss, inputs, layer)


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_random_configuration_matches_torch(c):
    torch.manual_seed(c["seed"])
    layer = mha.MultiheadAttention(**layer_kwargs(c)).train(c["train"])
    ref = float64_copy(nn.MultiheadAttention, layer, **layer_kwargs(c))
    gen = torch.Generator().manual_seed(c["seed"])
    q, k, v, kwargs = make_inputs(c, gen)
    g = torch.randn(q.shape[:-1] + (c["E"],), generator=gen)  # the output's shape
    out_ref, w_ref, g_ref = run(ref, q, k, v, kwargs, g, True)
    out, w, g_mha = run(layer, q, k, v, kwargs, g, False)
    assert out.dtype == torch.float32
    assert_close(out, out_ref, "output")
    if c["need_weights"]:
        assert_close(w, w_ref, "attention weights")
    else:
        assert w is None, "need_weights=False: weights: got a tensor, expected None"
    assert_grads_close(g_mha, g_ref, "random configuration")


# -- parameters, state_dict, initialization -----------------------------------------------------

CONFIGS = [dict(embed_dim=16, num_heads=4), dict(embed_dim=12, num_heads=3, bias=False),
           dict(embed_dim=8, num_heads=2, kdim=5, vdim=7),
           dict(embed_dim=8, num_heads=1, kdim=8, vdim=8, batch_first=True),
           dict(embed_dim=6, num_heads=2, kdim=3, bias=False)]


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
def test_same_state_dict_and_initial_values_as_torch(kw):
    torch.manual_seed(5)
    ref = nn.MultiheadAttention(**kw)
    torch.manual_seed(5)
    layer = mha.MultiheadAttention(**kw)
    sd_ref, sd = ref.state_dict(), layer.state_dict()
    assert list(sd) == list(sd_ref)
    for name in sd_ref:
        assert sd[name].shape == sd_ref[name].shape, name
        assert sd[name].dtype == torch.float32, name
        assert torch.equal(sd[name], sd_ref[name]), f"{name}: initial values differ from torch's"
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert all(p.requires_grad for p in layer.parameters())


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
def test_state_dict_loads_strictly_both_ways(kw):
    torch.manual_seed(6)
    ref = nn.MultiheadAttention(**kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()  # values that no initialization would give
    layer = mha.MultiheadAttention(**kw)
    layer.load_state_dict(ref.state_dict(), strict=True)
    for name, t in ref.state_dict().items():
        assert torch.equal(layer.state_dict()[name], t), name
    back = nn.MultiheadAttention(**kw)
    back.load_state_dict(layer.state_dict(), strict=True)
    for name, t in ref.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name


def test_state_dict_of_another_shape_is_refused():
    layer = mha.MultiheadAttention(16, 4)
    with pytest.raises(RuntimeError, match="size mismatch"):
        layer.load_state_dict(nn.MultiheadAttention(8, 4).state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict(nn.MultiheadAttention(16, 4, kdim=5).state_dict(), strict=True)


@pytest.mark.parametrize("kw", [dict(), dict(batch_first=True), dict(kdim=5, vdim=7)], ids=str)
def test_gradients_come_from_mhas_backward(kw):
    torch.manual_seed(29)
    layer = mha.MultiheadAttention(8, 2, **kw)
    lead = (lambda n: (2, n)) if kw.get("batch_first") else (lambda n: (n, 2))
    q = torch.randn(lead(3) + (8,), requires_grad=True)
    k = torch.randn(lead(4) + (kw.get("kdim", 8),), requires_grad=True)
    v = torch.randn(lead(4) + (kw.get("vdim", 8),), requires_grad=True)
    for need_weights in (True, False):
        assert_mha_backward(layer(q, k, v, need_weights=need_weights)[0], str(kw))
    x = torch.randn(3, 8, requires_grad=True)  # unbatched self-attention, parameters only
    assert_mha_backward(mha.MultiheadAttention(8, 2)(x, x, x)[0], "unbatched")


def test_parameter_updates_are_seen_by_the_next_forward():
    # an optimizer step changes the parameters in place: mha must compute with the new values
    torch.manual_seed(1)
    layer = mha.MultiheadAttention(8, 2, batch_first=True)
    ref = nn.MultiheadAttention(8, 2, batch_first=True)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 5, 8)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):
        for m, o in ((layer, opt), (ref, opt_ref)):
            o.zero_grad()
            m(x, x, x, need_weights=False)[0].square().sum().backward()
            o.step()
    for name, t in ref.state_dict().items():
        assert_close(layer.state_dict()[name], t, f"after 3 SGD steps: {name}", GRAD_TOL)
    assert_close(layer(x, x, x)[0], ref(x, x, x)[0].double(), "forward after the steps")



@pytest.mark.parametrize("missing", ["in_proj_bias", "out_proj.bias"])
@pytest.mark.parametrize("kw", [dict(), dict(kdim=5, vdim=7)], ids=str)
def test_one_bias_alone_counts_as_in_pytorch(missing, kw):
    # A layer with an output bias only (bias=False, then an out_proj.bias: how a projection
    # with qkv_bias=False and a biased output comes over) or input biases only. mha ran the
    # first without out_proj.bias, silently (and gave it no gradient): out off by the bias.
    torch.manual_seed(3)
    layers = []
    for cls in (mha.MultiheadAttention, nn.MultiheadAttention):
        m = cls(8, 2, bias=missing == "out_proj.bias", batch_first=True, **kw)
        if missing == "in_proj_bias":
            m.out_proj.bias = nn.Parameter(torch.randn(8))
        else:
            m.out_proj.bias = None
        layers.append(m)
    layer, ref = layers
    ref.load_state_dict(layer.state_dict(), strict=True)
    ref.double()
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 5, 8, generator=gen)
    k = torch.randn(2, 6, kw.get("kdim", 8), generator=gen)
    v = torch.randn(2, 6, kw.get("vdim", 8), generator=gen)
    g = torch.randn(2, 5, 8, generator=gen)
    kwargs = dict(key_padding_mask=None, attn_mask=None)
    out_ref, w_ref, g_ref = run(ref, q, k, v, kwargs, g, True)
    out, w, g_mha = run(layer, q, k, v, kwargs, g, False)
    assert_close(out, out_ref, f"output without {missing}")
    assert_close(w, w_ref, f"weights without {missing}")
    assert_grads_close(g_mha, g_ref, f"without {missing}")

# -- targeted cases ----------------------------------------------------------------------------

def compare_call(layer_kw, q, k, v, seed=0, **kwargs):
    """mha against the float64 oracle on one call: outputs, weights and every gradient."""
    torch.manual_seed(seed)
    layer = mha.MultiheadAttention(**layer_kw)
    ref = float64_copy(nn.MultiheadAttention, layer, **layer_kw)
    kwargs.setdefault("key_padding_mask", None)
    kwargs.setdefault("attn_mask", None)
    g = torch.randn(q.shape[:-1] + (layer_kw["embed_dim"],))
    out_ref, w_ref, g_ref = run(ref, q, k, v, kwargs, g, True)
    out, w, g_mha = run(layer, q, k, v, kwargs, g, False)
    assert_close(out, out_ref, "output")
    if w_ref is None:
        assert w is None
    else:
        assert_close(w, w_ref, "weights")
    assert_grads_close(g_mha, g_ref, "call")
    return out, w


@pytest.mark.parametrize("L,S", [(1, 1), (1, 9), (9, 1), (5, 13)])
def test_short_and_unequal_lengths(L, S):
    torch.manual_seed(2)
    q, k, v = torch.randn(L, 2, 10), torch.randn(S, 2, 10), torch.randn(S, 2, 10)
    compare_call(dict(embed_dim=10, num_heads=5), q, k, v, average_attn_weights=False)


def test_one_head_batch_one_and_unbatched_give_the_same():
    torch.manual_seed(3)
    x = torch.randn(7, 9)
    out_u, w_u = compare_call(dict(embed_dim=9, num_heads=1), x, x, x)
    assert out_u.shape == (7, 9) and w_u.shape == (7, 7)
    out_b, w_b = compare_call(dict(embed_dim=9, num_heads=1), x[:, None], x[:, None],
                              x[:, None])
    assert_close(out_b[:, 0], out_u.double(), "batch of one against unbatched")


def test_unbatched_weights_per_head_and_3d_mask():
    torch.manual_seed(4)
    q, k = torch.randn(4, 12), torch.randn(6, 12)
    attn = random_mask((3, 4, 6), "float", torch.Generator().manual_seed(4))
    kpm = random_mask((6,), "bool", torch.Generator().manual_seed(5))
    kpm[0] = False
    attn[..., 0] = 0.0
    _, w = compare_call(dict(embed_dim=12, num_heads=3), q, k, k, attn_mask=attn,
                        key_padding_mask=kpm.float().masked_fill(kpm, float("-inf")),
                        average_attn_weights=False)
    assert w.shape == (3, 4, 6)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_is_causal_hint_with_its_mask(need_weights, kind):
    torch.manual_seed(5)
    x = torch.randn(2, 6, 8)
    out, _ = compare_call(dict(embed_dim=8, num_heads=2, batch_first=True), x, x, x,
                          attn_mask=causal_mask(6, 6, kind), is_causal=True,
                          need_weights=need_weights)
    # the first query sees only the first key, whatever comes later
    y = x.clone()
    y[:, 1:] = torch.randn(2, 5, 8)
    torch.manual_seed(0)  # compare_call's layer
    layer = mha.MultiheadAttention(8, 2, batch_first=True)
    out_y, _ = layer(y, y, y, attn_mask=causal_mask(6, 6, kind), is_causal=True,
                     need_weights=need_weights)
    assert_close(out_y[:, 0], out[:, 0].double(), "causal: first row independent of the rest")


@pytest.mark.parametrize("hd", [32, 64, 80, 128])
def test_wide_heads_and_lengths_past_the_tiles(hd):
    # the kernels' head sizes and lengths that cross several tiles (and leave a partial one)
    torch.manual_seed(25)
    H = 2
    gen = torch.Generator().manual_seed(hd)
    q = torch.randn(2, 131, H * hd, generator=gen) * 0.5
    kv = torch.randn(2, 97, H * hd, generator=gen) * 0.5
    kpm = random_mask((2, 97), "bool", gen, p=0.2)
    compare_call(dict(embed_dim=H * hd, num_heads=H, batch_first=True), q, kv, kv,
                 key_padding_mask=kpm, average_attn_weights=False)


@pytest.mark.parametrize("kinds", [("bool", "float"), ("float", "bool")],
                         ids=["kpm bool, attn float", "kpm float, attn bool"])
def test_mixed_mask_types(kinds):
    # deprecated by PyTorch (a warning) but computed: both masks apply
    gen = torch.Generator().manual_seed(26)
    q, kv = torch.randn(5, 2, 12, generator=gen), torch.randn(7, 2, 12, generator=gen)
    kpm = random_mask((2, 7), kinds[0], gen)
    attn = random_mask((5, 7), kinds[1], gen)
    kpm[:, 3] = False if kinds[0] == "bool" else 0.0
    attn[:, 3] = False if kinds[1] == "bool" else 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Support for mismatched", UserWarning)
        compare_call(dict(embed_dim=12, num_heads=3), q, kv, kv, key_padding_mask=kpm,
                     attn_mask=attn)


def test_key_is_value_memory():
    # cross-attention to one memory tensor passed as key and value: its gradient is the sum
    torch.manual_seed(27)
    q, mem = torch.randn(2, 6, 16), torch.randn(2, 9, 16)
    compare_call(dict(embed_dim=16, num_heads=4, batch_first=True), q, mem, mem)


@pytest.mark.parametrize("E,H", [(8, 2), (1, 1)])
def test_upstream_gradient_with_zero_strides(E, H):
    # out.sum().backward() hands the backward an expanded tensor (every stride 0), and a
    # broadcast upstream gradient has stride 0 in an outer dimension: read as the values
    torch.manual_seed(30)
    layer = mha.MultiheadAttention(E, H)
    ref = float64_copy(nn.MultiheadAttention, layer, E, H)
    x = torch.randn(4, 3, E)
    for g in (None, torch.randn(4, 1, E).expand(4, 3, E)):
        xl, xr = leaf(x), leaf(x.double())
        out, out_r = layer(xl, xl, xl)[0], ref(xr, xr, xr)[0]
        if g is None:
            out.sum().backward()
            out_r.sum().backward()
        else:
            out.backward(g)
            out_r.backward(g.double())
        assert_close(xl.grad, xr.grad, f"grad x (upstream {'sum' if g is None else 'expanded'})",
                     GRAD_TOL)


def test_self_attention_gradient_accumulates_over_query_key_value():
    # one tensor passed three times: its gradient is the sum of the three (autograd's rule)
    torch.manual_seed(6)
    x = torch.randn(3, 5, 16)
    compare_call(dict(embed_dim=16, num_heads=4), x, x, x)


def test_views_with_strided_outer_and_inner_dimensions():
    # outer dimensions strided (a transpose, a slice): a view; innermost dimension strided:
    # the documented copy. Masks as views too. Results as with contiguous tensors.
    torch.manual_seed(7)
    base = torch.randn(6, 3, 32)
    q = base.transpose(0, 1)[:, :, ::2]          # [3, 6, 16], no dimension contiguous
    k = torch.randn(3, 20, 16)[:, ::2]           # [3, 10, 16], strided rows
    v = torch.randn(3, 10, 32)[..., 16:]         # [3, 10, 16], offset rows
    kpm = random_mask((3, 20), "float", torch.Generator().manual_seed(1))[:, ::2]
    kpm[:, 0] = 0.0
    attn = random_mask((10, 6), "float", torch.Generator().manual_seed(2)).t()  # [6, 10]
    attn[:, 1] = 0.0
    assert not q.is_contiguous() and not k.is_contiguous() and not attn.is_contiguous()
    out, _ = compare_call(dict(embed_dim=16, num_heads=4, batch_first=True), q, k, v,
                          key_padding_mask=kpm, attn_mask=attn)
    torch.manual_seed(0)
    layer = mha.MultiheadAttention(16, 4, batch_first=True)
    out_c, _ = layer(q.contiguous(), k.contiguous(), v.contiguous(),
                     key_padding_mask=kpm.contiguous(), attn_mask=attn.contiguous())
    assert_close(out_c, out.double(), "contiguous copies against the views")


def test_no_grad_and_inference_mode_forward():
    torch.manual_seed(8)
    layer = mha.MultiheadAttention(16, 2)
    ref = float64_copy(nn.MultiheadAttention, layer, 16, 2)
    x = torch.randn(5, 2, 16)
    expected = ref(x.double(), x.double(), x.double())
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            out, w = layer(x, x, x)
        assert not out.requires_grad
        assert_close(out, expected[0], f"{ctx.__name__}: output")
        assert_close(w, expected[1], f"{ctx.__name__}: weights")


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("value", [-1e9, torch.finfo(torch.float32).min], ids=["-1e9", "min"])
def test_row_of_huge_negative_float_mask(value, need_weights):
    # Additive masks use -1e9 or finfo.min (Hugging Face's padding): a query row whose every
    # key has it (a padding row) rounds, in float32, to equal scores: uniform weights in
    # PyTorch, not a masked row. The oracle is PyTorch in float32 here, as float64 would keep
    # the scores that float32 inputs cannot. Output and weights as PyTorch's. Gradients:
    # mha's backward, like PyTorch's SDPA path (need_weights=False), recomputes that row's
    # probabilities from its float32 log-sum-exp, which loses log(S) next to 1e9: the
    # documented limitation, so the gradient oracle is PyTorch's need_weights=False path.
    torch.manual_seed(22)
    layer = mha.MultiheadAttention(8, 2, batch_first=True)
    ref = nn.MultiheadAttention(8, 2, batch_first=True)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 8)
    mask = torch.zeros(4, 4)
    mask[1] = value
    mask[2, :2] = value
    kw = dict(key_padding_mask=None, attn_mask=mask, need_weights=need_weights,
              average_attn_weights=False, is_causal=False)
    out, w, g_m = run(layer, x, x, x, kw, torch.ones(2, 4, 8), False)
    out_r, w_r, _ = run(ref, x, x, x, kw, torch.ones(2, 4, 8), False)
    _, _, g_r = run(ref, x, x, x, dict(kw, need_weights=False), torch.ones(2, 4, 8), False)
    assert_close(out, out_r, "output")
    if need_weights:
        assert_close(w[:, :, 1], torch.full((2, 2, 4), 0.25), "weights of the -1e9 row")
        assert_close(w, w_r, "weights")
    assert_grads_close(g_m, g_r, "huge negative mask row")


def test_results_are_not_overwritten_by_later_calls():
    # returned tensors are the caller's: later calls (with or without a graph, after the
    # graph was freed) never write into them
    torch.manual_seed(23)
    layer = mha.MultiheadAttention(8, 2)
    x = torch.randn(4, 2, 8, requires_grad=True)
    out1, w1 = layer(x, x, x)
    keep = out1.detach().clone(), w1.detach().clone()
    out1.sum().backward()
    with torch.no_grad():
        out2, w2 = layer(x * 2, x, x)
    keep2 = out2.clone(), w2.clone()
    for _ in range(2):
        y = torch.randn(4, 2, 8, requires_grad=True)
        layer(y, y, y)[0].sum().backward()
        layer(y.detach(), y.detach(), y.detach(), average_attn_weights=False)
    assert torch.equal(out1.detach(), keep[0]) and torch.equal(w1.detach(), keep[1])
    assert torch.equal(out2, keep2[0]) and torch.equal(w2, keep2[1])


@pytest.mark.parametrize("shape", [(4, 0, 8), (0, 2, 8)], ids=["batch 0", "L 0"])
def test_empty_batch_or_query(shape):
    torch.manual_seed(24)
    layer = mha.MultiheadAttention(8, 2)
    ref = nn.MultiheadAttention(8, 2)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(shape, requires_grad=True)
    out, w = layer(x, x, x)
    out_r, w_r = ref(x, x, x)
    assert out.shape == out_r.shape and w.shape == w_r.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("L,S", [(0, 5), (3, 0)], ids=["L 0", "S 0"])
def test_empty_query_or_key_with_a_float_key_padding_mask_and_3d_attn_mask(L, S):
    # the float key padding mask is merged into the attention mask with view(-1, H, L, S),
    # which torch refuses for a mask of no elements ("cannot reshape tensor of 0 elements");
    # found by a randomized sweep
    torch.manual_seed(26)
    layer = mha.MultiheadAttention(8, 2, batch_first=True)
    ref = nn.MultiheadAttention(8, 2, batch_first=True)
    ref.load_state_dict(layer.state_dict())
    q, k = torch.randn(2, L, 8), torch.randn(2, S, 8)
    kpm, am = torch.randn(2, S), torch.randn(4, L, S)
    out, w = layer(q, k, k, key_padding_mask=kpm, attn_mask=am)
    out_r, w_r = ref(q, k, k, key_padding_mask=kpm, attn_mask=am)
    assert out.shape == out_r.shape == (2, L, 8) and w.shape == w_r.shape
    assert_close(out, out_r, "output")


@pytest.mark.parametrize("kw", [dict(), dict(kdim=5, vdim=7), dict(bias=False)], ids=str)
@pytest.mark.parametrize("Lq,N", [(0, 2), (3, 0)], ids=["L 0", "batch 0"])
def test_empty_query_gives_zero_gradients_to_key_value_and_every_parameter(kw, Lq, N):
    # PyTorch's empty output still comes from key, value and the projections: each gets a zero
    # gradient (torch.autograd.grad would raise for one not in the graph; .grad stays None)
    torch.manual_seed(25)
    layer = mha.MultiheadAttention(8, 2, **kw)
    ref = nn.MultiheadAttention(8, 2, **kw)
    ref.load_state_dict(layer.state_dict())
    q = torch.randn(Lq, N, 8)
    k, v = torch.randn(4, N, kw.get("kdim", 8)), torch.randn(4, N, kw.get("vdim", 8))
    for module in (layer, ref):
        inputs = [leaf(t) for t in (q, k, v)]
        out, _ = module(*inputs)
        names = ["query", "key", "value"] + [n for n, _ in module.named_parameters()]
        got = torch.autograd.grad(out.sum(), inputs + list(module.parameters()))
        for name, g, t in zip(names, got, inputs + list(module.parameters())):
            assert g.shape == t.shape and not g.any(), f"{type(module).__module__}: {name}"


# -- documented difference: a fully masked row ---------------------------------------------

@pytest.mark.parametrize("how", ["key_padding_mask", "attn_mask"])
def test_fully_masked_row_gives_out_proj_bias_and_zero_weights(how):
    # mha: output = out_proj.bias, weights 0, finite gradients (the masked row contributes
    # only to out_proj.bias's gradient). PyTorch gives NaN there (need_weights=True), so the
    # oracle is PyTorch on the rows that keep a key.
    torch.manual_seed(10)
    E, H, L, S = 8, 2, 4, 5
    layer = mha.MultiheadAttention(E, H, batch_first=True)
    with torch.no_grad():
        layer.out_proj.bias.normal_()
        layer.in_proj_bias.normal_()
    ref = float64_copy(nn.MultiheadAttention, layer, E, H, batch_first=True)
    q, kv = leaf(torch.randn(2, L, E)), leaf(torch.randn(2, S, E))
    g = torch.randn(2, L, E)
    if how == "key_padding_mask":  # batch 0 loses every key; batch 1 keeps them all
        kw = dict(key_padding_mask=torch.tensor([[True] * S, [False] * S]))
        dead = (0, slice(None))
    else:  # query row 2 loses every key in both batches
        m = torch.zeros(L, S, dtype=torch.bool)
        m[2] = True
        kw = dict(attn_mask=m)
        dead = (slice(None), 2)
    out, w = layer(q, kv, kv, average_attn_weights=False, **kw)
    bias = layer.out_proj.bias.detach()
    assert torch.equal(out[dead], bias.expand_as(out[dead])), "masked row: output != out_proj.bias"
    w_dead = w[dead[0], :, dead[1]] if how == "attn_mask" else w[0]
    assert torch.count_nonzero(w_dead) == 0, "masked row: weights not 0"
    gq, gkv, gb = torch.autograd.grad((out * g).sum(), [q, kv, layer.out_proj.bias])
    for name, t in (("query", gq), ("key/value", gkv), ("out_proj.bias", gb)):
        assert torch.isfinite(t).all(), f"masked row: grad {name} not finite"
    if how == "key_padding_mask":
        # batch 1 alone through PyTorch; batch 0 contributes g[0] summed to out_proj.bias
        qr, kvr = leaf(q[1:].double()), leaf(kv[1:].double())
        out_r, w_r = ref(qr, kvr, kvr, average_attn_weights=False)
        assert_close(out[1:], out_r, "unmasked batch")
        assert_close(w[1:], w_r, "unmasked batch weights")
        gqr, gkvr, gbr = torch.autograd.grad((out_r * g[1:].double()).sum(),
                                             [qr, kvr, ref.out_proj.bias])
        assert_close(gq[1:], gqr, "grad query (unmasked batch)", GRAD_TOL)
        assert_close(gkv[1:], gkvr, "grad key/value (unmasked batch)", GRAD_TOL)
        assert torch.count_nonzero(gq[0]) == 0 and torch.count_nonzero(gkv[0]) == 0
        assert_close(gb, gbr + g[0].double().sum(0), "grad out_proj.bias", GRAD_TOL)


def test_fully_masked_row_averaged_weights_are_zero():
    torch.manual_seed(11)
    layer = mha.MultiheadAttention(8, 4, batch_first=True)
    x = torch.randn(2, 3, 8)
    kpm = torch.tensor([[True, True, True], [False, True, False]])
    out, w = layer(x, x, x, key_padding_mask=kpm)
    assert torch.count_nonzero(w[0]) == 0
    assert_close(w[1].sum(-1), torch.ones(3, dtype=torch.float64), "row sums of batch 1")


# -- dropout: mha's Philox stream under torch.manual_seed ----------------------------------

P = 0.25


def dropout_layer(seed=12, **kw):
    torch.manual_seed(seed)
    return mha.MultiheadAttention(16, 4, dropout=P, batch_first=True, **kw).train()


def dropout_inputs():
    gen = torch.Generator().manual_seed(13)
    return torch.randn(2, 24, 16, generator=gen), torch.randn(2, 24, 16, generator=gen)


def test_dropout_reproducible_under_manual_seed_and_differs_across_seeds():
    layer = dropout_layer()
    q, kv = dropout_inputs()
    results = {}
    for s in (1, 1, 2):
        torch.manual_seed(s)
        results.setdefault(s, []).append(layer(q, kv, kv, average_attn_weights=False))
    (o1, w1), (o1b, w1b) = results[1]
    o2, w2 = results[2][0]
    assert torch.equal(o1, o1b) and torch.equal(w1, w1b), "same seed, different result"
    assert not torch.equal(w1 != 0, w2 != 0), "seeds 1 and 2 dropped the same weights"
    # without reseeding the stream moves on: two calls in a row differ
    torch.manual_seed(1)
    wa = layer(q, kv, kv, average_attn_weights=False)[1]
    wb = layer(q, kv, kv, average_attn_weights=False)[1]
    assert not torch.equal(wa != 0, wb != 0), "two calls in a row dropped the same weights"
    # averaged weights: the mean over heads of the same dropped weights
    torch.manual_seed(1)
    w_avg = layer(q, kv, kv)[1]
    assert_close(w_avg, w1.double().mean(1), "averaged weights after dropout")
    # need_weights=False (the training path) is reproducible too, and is not the eval output
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(layer(q, kv, kv, need_weights=False)[0])
    assert torch.equal(outs[0], outs[1])
    layer.eval()
    assert not torch.allclose(outs[0], layer(q, kv, kv, need_weights=False)[0])


def test_dropout_zeroes_the_expected_fraction_and_scales_survivors():
    layer = dropout_layer()
    q, kv = dropout_inputs()
    layer.eval()
    _, w0 = layer(q, kv, kv, average_attn_weights=False)
    layer.train()
    torch.manual_seed(4)
    _, w = layer(q, kv, kv, average_attn_weights=False)
    assert w.shape == w0.shape == (2, 4, 24, 24)
    dropped = w == 0
    lo, hi = zero_fraction_bounds(w.numel(), P)
    frac = dropped.double().mean().item()
    assert lo < frac < hi, f"dropped fraction: got {frac:.4f}, expected {P} +- {hi - P:.4f}"
    assert_close(w[~dropped], w0[~dropped].double() / (1 - P), "survivors scaled by 1/(1-p)")


def test_eval_mode_has_no_dropout():
    layer = dropout_layer().eval()
    ref = float64_copy(nn.MultiheadAttention, layer, 16, 4, dropout=P, batch_first=True)
    q, kv = dropout_inputs()
    out1, w1 = layer(q, kv, kv)
    out2, w2 = layer(q, kv, kv)
    assert torch.equal(out1, out2) and torch.equal(w1, w2)
    out_r, w_r = ref(q.double(), kv.double(), kv.double())
    assert_close(out1, out_r, "eval output")
    assert_close(w1, w_r, "eval weights")


def test_dropout_one_drops_every_weight_as_pytorch():
    # nn.MultiheadAttention(dropout=1.0) in training: every weight dropped, out = out_proj's bias,
    # the weights 0; the gradients of in_proj and out_proj.weight 0, out_proj.bias's the sum
    # of dout, the inputs' 0 (mha refused dropout 1.0 before)
    gen = torch.Generator().manual_seed(13)
    q, kv = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 7, 16, generator=gen)
    g, bias = torch.randn(2, 5, 16, generator=gen), torch.randn(16, generator=gen)
    got = []
    for cls in (nn.MultiheadAttention, mha.MultiheadAttention):
        torch.manual_seed(3)
        layer = cls(16, 4, dropout=1.0, batch_first=True).train()
        with torch.no_grad():
            layer.out_proj.bias.copy_(bias)
        qq, kk = q.clone().requires_grad_(), kv.clone().requires_grad_()
        out, w = layer(qq, kk, kk)
        out.backward(g)
        got.append((out, w, qq.grad, kk.grad, {n: t.grad for n, t in layer.named_parameters()}))
    (out_t, w_t, dq_t, dk_t, gp_t), (out_m, w_m, dq_m, dk_m, gp_m) = got
    assert torch.equal(out_m, layer.out_proj.bias.detach().expand(2, 5, 16))
    assert torch.equal(out_m, out_t) and torch.equal(w_m, w_t) and not w_m.any()
    assert not dq_m.any() and not dk_m.any() and not dq_t.any() and not dk_t.any()
    for name in gp_t:
        assert_close(gp_m[name], gp_t[name].double(), f"{name}.grad")
    assert not gp_m["in_proj_weight"].any() and not gp_m["out_proj.weight"].any()


def manual_mha(params, q, k, v, H, keep, p):
    """nn.MultiheadAttention's computation written out (batch_first, in_proj packed), with
    dropout given by the keep mask [B, H, L, S]: out, weights after dropout."""
    B, L, E = q.shape
    S, hd = k.shape[1], E // H
    wq, wk, wv = params["in_proj_weight"].chunk(3)
    bq, bk, bv = params["in_proj_bias"].chunk(3)

    def heads(t, w, b, n):
        return (t @ w.t() + b).view(B, n, H, hd).transpose(1, 2)

    scores = heads(q, wq, bq, L) @ heads(k, wk, bk, S).transpose(-1, -2) / math.sqrt(hd)
    weights = softmax_dropout_reference(scores, keep, p)
    attn = (weights @ heads(v, wv, bv, S)).transpose(1, 2).reshape(B, L, E)
    return attn @ params["out_proj.weight"].t() + params["out_proj.bias"], weights


def check_dropout_gradients(layer, calls):
    """calls: [(q, kv, seed)]: forwards with dropout in one graph, one backward of the sum;
    the oracle recomputes each call with the keep mask that call returned."""
    params = {n: leaf(p.double()) for n, p in layer.named_parameters()}
    loss, loss_ref, leaves = 0, 0, []
    for q, kv, seed in calls:
        ql, kvl = leaf(q), leaf(kv)
        qr, kvr = leaf(q.double()), leaf(kv.double())
        torch.manual_seed(seed)
        out, w = layer(ql, kvl, kvl, average_attn_weights=False)
        out_r, w_r = manual_mha(params, qr, kvr, kvr, layer.num_heads, w != 0, P)
        assert_close(w, w_r, "weights after dropout")
        assert_close(out, out_r, "output computed with the returned weights")
        g = torch.randn(out.shape)
        loss = loss + (out * g).sum()
        loss_ref = loss_ref + (out_r * g.double()).sum()
        leaves.append((ql, kvl, qr, kvr))
    mine = [t for ql, kvl, _, _ in leaves for t in (ql, kvl)] + list(layer.parameters())
    theirs = [t for _, _, qr, kvr in leaves for t in (qr, kvr)] + list(params.values())
    names = [f"call{i}.{n}" for i in range(len(calls)) for n in ("query", "key/value")]
    names += list(params)
    for name, a, b in zip(names, torch.autograd.grad(loss, mine),
                          torch.autograd.grad(loss_ref, theirs)):
        assert_close(a, b, f"dropout: grad {name}", GRAD_TOL)


def test_dropout_gradients_use_the_forward_mask():
    layer = dropout_layer()
    q, kv = dropout_inputs()
    check_dropout_gradients(layer, [(q, kv, 21)])


def test_two_dropout_forwards_in_one_graph():
    # each backward must recompute its own forward's mask, not the stream's latest
    layer = dropout_layer()
    q, kv = dropout_inputs()
    check_dropout_gradients(layer, [(q, kv, 31), (q[:, :9] * 2, kv[:, 3:], 32)])


def test_dropout_finite_differences_with_the_seed_reapplied():
    # float32 end to end: d/dt f(x + t d) at 0, by central differences with the same seed
    # (hence the same mask) in every evaluation, against the backward's <grad, d>
    layer = dropout_layer()
    x = dropout_inputs()[0][:, :12]
    gen = torch.Generator().manual_seed(14)
    g, d = torch.randn(2, 12, 16, generator=gen), torch.randn(2, 12, 16, generator=gen)

    def f(t):
        torch.manual_seed(41)
        return (layer(t, t, t, need_weights=False)[0].double() * g.double()).sum()

    xl = leaf(x)
    (gx,) = torch.autograd.grad(f(xl), [xl])
    h = 1e-2
    with torch.no_grad():
        fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
    an = (gx.double() * d.double()).sum()
    assert abs(fd - an) <= 1e-2 * abs(an) + 1e-3, f"finite difference {fd:.6f} vs {an:.6f}"


# -- autograd graphs ---------------------------------------------------------------------------

@pytest.mark.parametrize("need_weights", [True, False])
def test_two_forwards_then_one_backward(need_weights):
    torch.manual_seed(15)
    layer = mha.MultiheadAttention(12, 3, kdim=5, vdim=7)
    ref = float64_copy(nn.MultiheadAttention, layer, 12, 3, kdim=5, vdim=7)
    gen = torch.Generator().manual_seed(15)
    shapes = [(4, 6), (9, 2)]  # (L, S) of each call; batch 2
    data = [(torch.randn(L, 2, 12, generator=gen), torch.randn(S, 2, 5, generator=gen),
             torch.randn(S, 2, 7, generator=gen), torch.randn(L, 2, 12, generator=gen))
            for L, S in shapes]

    def total(m, conv):
        loss, ins = 0, []
        for q, k, v, g in data:
            q, k, v = leaf(conv(q)), leaf(conv(k)), leaf(conv(v))
            ins += [q, k, v]
            loss = loss + (m(q, k, v, need_weights=need_weights)[0] * conv(g)).sum()
            with torch.no_grad():  # a call outside the graph in between changes nothing
                m(torch.ones(3, 2, 12, dtype=q.dtype), k, v)
        return torch.autograd.grad(loss, ins + list(m.parameters()))

    names = [f"call{i}.{n}" for i in range(2) for n in ("query", "key", "value")]
    names += [n for n, _ in layer.named_parameters()]
    for name, a, b in zip(names, total(layer, lambda t: t), total(ref, to_ref)):
        assert_close(a, b, f"two forwards: grad {name}", GRAD_TOL)


@pytest.mark.parametrize("backwards", [1, 2])
def test_parameter_gradients_inputs_without_grad_and_retain_graph(backwards):
    # inputs that need no gradient still give the parameters theirs; a second backward of the
    # same graph (retain_graph=True) accumulates the same gradients again, as in PyTorch
    torch.manual_seed(16)
    layer = mha.MultiheadAttention(8, 2)
    ref = float64_copy(nn.MultiheadAttention, layer, 8, 2)
    x = torch.randn(5, 2, 8)
    g = torch.randn(5, 2, 8)
    for m, conv in ((layer, lambda t: t), (ref, to_ref)):
        loss = (m(conv(x), conv(x), conv(x))[0] * conv(g)).sum()
        for i in range(backwards):
            loss.backward(retain_graph=i + 1 < backwards)
    for (n, p), (_, pr) in zip(layer.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, pr.grad, f"{backwards} backward(s): grad {n}", GRAD_TOL)


def test_inside_transformer_encoder_layer():
    # the one-import change inside a model: TransformerEncoderLayer's self_attn replaced,
    # training (mha's forward and backward) and eval without grad (PyTorch's fast path reads
    # the layer's attributes and parameters)
    torch.manual_seed(17)
    block = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0,
                                       batch_first=True)
    ref = float64_copy(nn.TransformerEncoderLayer, block, 16, 4, dim_feedforward=32,
                       dropout=0.0, batch_first=True)
    sd = block.self_attn.state_dict()
    block.self_attn = mha.MultiheadAttention(16, 4, dropout=0.0, batch_first=True)
    block.self_attn.load_state_dict(sd, strict=True)
    x = torch.randn(2, 7, 16)
    kpm = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    mask = causal_mask(7, 7, "bool")
    out = block(x, src_mask=mask, src_key_padding_mask=kpm, is_causal=True)
    out_r = ref(x.double(), src_mask=mask, src_key_padding_mask=kpm, is_causal=True)
    assert_close(out, out_r, "encoder layer output")
    out.square().sum().backward()
    out_r.square().sum().backward()
    for (n, p), (_, pr) in zip(block.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, pr.grad, f"encoder layer: grad {n}", GRAD_TOL)
    block.eval()
    ref.eval()
    with torch.no_grad():
        assert_close(block(x, src_key_padding_mask=kpm)[:1],
                     ref(x.double(), src_key_padding_mask=kpm)[:1], "eval, no grad")


def test_functional_call_substitutes_the_parameters():
    # torch.func.functional_call (ensembles, meta-learning) swaps the parameters for a call:
    # mha must compute with the swapped ones and give them their gradients
    torch.manual_seed(28)
    layer = mha.MultiheadAttention(8, 2, kdim=5, vdim=6)
    ref = float64_copy(nn.MultiheadAttention, layer, 8, 2, kdim=5, vdim=6)
    swapped = {n: leaf(p * 1.5 + 0.1) for n, p in layer.named_parameters()}
    swapped_r = {n: leaf(p.double()) for n, p in swapped.items()}
    q, k, v = torch.randn(4, 2, 8), torch.randn(3, 2, 5), torch.randn(3, 2, 6)
    out = torch.func.functional_call(layer, swapped, (q, k, v))[0]
    out_r = torch.func.functional_call(ref, swapped_r, (q.double(), k.double(), v.double()))[0]
    assert_close(out, out_r, "functional_call: output")
    out.square().sum().backward()
    out_r.square().sum().backward()
    for n in swapped:
        assert_close(swapped[n].grad, swapped_r[n].grad, f"functional_call: grad {n}", GRAD_TOL)
    assert all(p.grad is None for p in layer.parameters()), "the module's own got gradients"


def test_deep_copies_inside_transformer_encoder_and_pickling(tmp_path):
    # nn.TransformerEncoder deep-copies its layer; torch.save pickles the whole model: each
    # copy computes with its own parameters
    torch.manual_seed(20)
    block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    sd = block.self_attn.state_dict()
    block.self_attn = mha.MultiheadAttention(8, 2, batch_first=True)
    block.self_attn.load_state_dict(sd)
    enc = nn.TransformerEncoder(block, 2, enable_nested_tensor=False)
    with torch.no_grad():
        enc.layers[1].self_attn.in_proj_weight.mul_(-0.5)  # the copies now differ
    ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16,
                                                           dropout=0.0, batch_first=True), 2,
                                enable_nested_tensor=False).double()
    ref.load_state_dict(enc.state_dict(), strict=True)
    x = torch.randn(2, 5, 8)
    assert_close(enc(x), ref(x.double()), "two deep-copied layers")
    path = tmp_path / "model.pt"
    torch.save(enc, path)
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded.layers[0].self_attn, mha.MultiheadAttention)
    assert_close(loaded(x), ref(x.double()), "after torch.save / torch.load")


def test_threads_calling_one_layer():
    # two threads forward and backward through one layer at once: each result as alone
    import concurrent.futures
    torch.manual_seed(21)
    layer = mha.MultiheadAttention(16, 4, batch_first=True)
    xs = [torch.randn(2, 3 + i, 16) for i in range(8)]

    def step(x):
        xl = leaf(x)
        out, _ = layer(xl, xl, xl)
        (gx,) = torch.autograd.grad(out.square().sum(), [xl])
        return out.detach(), gx

    alone = [step(x) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        together = list(pool.map(step, xs))
    for i, ((o1, g1), (o2, g2)) in enumerate(zip(alone, together)):
        assert_close(o2, o1, f"call {i} in threads: output")
        assert_close(g2, g1, f"call {i} in threads: gradient", GRAD_TOL)


# -- from_file -------------------------------------------------------------------------------

def saved_torch_layer(tmp_path, name, num_heads_meta, **kw):
    torch.manual_seed(18)
    ref = nn.MultiheadAttention(**kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    path = tmp_path / name
    meta = {"num_heads": str(kw["num_heads"])} if num_heads_meta else None
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path), metadata=meta)
    return ref, str(path)


@pytest.mark.parametrize("kw", [dict(embed_dim=12, num_heads=3),
                                dict(embed_dim=8, num_heads=2, kdim=5, vdim=7),
                                dict(embed_dim=8, num_heads=4, bias=False)], ids=str)
@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "passed"])
def test_from_file_of_a_torch_state_dict(tmp_path, kw, recorded):
    ref, path = saved_torch_layer(tmp_path, "layer.safetensors", recorded, **kw)
    extra = {} if recorded else {"num_heads": kw["num_heads"]}
    layer = mha.MultiheadAttention.from_file(path, **extra)
    assert isinstance(layer, mha.MultiheadAttention)
    assert list(layer.state_dict()) == list(ref.state_dict())
    for name, t in ref.state_dict().items():
        assert torch.equal(layer.state_dict()[name], t), name
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(5, 2, kw["embed_dim"], generator=gen)
    k = torch.randn(6, 2, kw.get("kdim") or kw["embed_dim"], generator=gen)
    v = torch.randn(6, 2, kw.get("vdim") or kw["embed_dim"], generator=gen)
    out, w = layer(q, k, v)
    ref64 = float64_copy(nn.MultiheadAttention, ref, **kw)
    out_r, w_r = ref64(q.double(), k.double(), v.double())
    assert_close(out, out_r, "from_file: output")
    assert_close(w, w_r, "from_file: weights")


def test_from_file_with_prefix_batch_first_and_dropout(tmp_path):
    torch.manual_seed(19)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2,
                                  enable_nested_tensor=False)
    path = str(tmp_path / "encoder.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    want = model.layers[1].self_attn
    layer = mha.MultiheadAttention.from_file(path, prefix="layers.1.self_attn.", num_heads=2,
                                             batch_first=True, dropout=0.5)
    for name, t in want.state_dict().items():
        assert torch.equal(layer.state_dict()[name], t), name
    x = torch.randn(3, 4, 8)
    layer.eval()
    ref = float64_copy(nn.MultiheadAttention, want, 8, 2, batch_first=True)
    ref.eval()
    out_r, w_r = ref(x.double(), x.double(), x.double())
    out, w = layer(x, x, x)
    assert_close(out, out_r, "from_file(prefix, batch_first): output")
    assert_close(w, w_r, "from_file(prefix, batch_first): weights")
    layer.train()
    torch.manual_seed(1)
    _, w = layer(x, x, x, average_attn_weights=False)
    lo, hi = zero_fraction_bounds(w.numel(), 0.5)
    assert lo < (w == 0).double().mean().item() < hi, "from_file(dropout=0.5) in training"


def test_expanded_inputs_get_dense_gradients():
    # An input broadcast with expand() has stride 0: its gradient cannot have that layout (the
    # rows would share memory), so mha gives it dense strides; autograd sums it back
    torch.manual_seed(25)
    layer = mha.MultiheadAttention(8, 2, batch_first=True)
    ref = nn.MultiheadAttention(8, 2, batch_first=True)
    ref.load_state_dict(layer.state_dict())
    x, m = leaf(torch.randn(1, 5, 8)), leaf(torch.randn(1, 1, 8))
    x2, m2 = leaf(x.detach()), leaf(m.detach())
    g = torch.randn(3, 5, 8)  # a different gradient per batch element: per-batch grads differ
    for lay, xx, mm in ((layer, x, m), (ref, x2, m2)):
        xe, me = xx.expand(3, 5, 8), mm.expand(3, 4, 8)
        ((lay(xe, xe, xe)[0] * g).sum() + (lay(xe, me, me)[0] * g).sum()).backward()
    assert_close(x.grad, x2.grad, "expanded query")
    assert_close(m.grad, m2.grad, "expanded memory")
    # the seed module: its input broadcast the same way
    seed = mha.MultiHeadAttention(8, 2, dropout=0.0)
    z = leaf(torch.randn(1, 5, 8))
    (seed(z.expand(3, 5, 8))[0] * g).sum().backward()
    z2 = leaf(z.detach())
    (seed(z2.expand(3, 5, 8).contiguous())[0] * g).sum().backward()
    assert_close(z.grad, z2.grad, "expanded seed input")
