"""test_py_seed - mha.MultiHeadAttention, the seed repository's module, against an independent
PyTorch implementation of it (SeedReference below, the classic "Attention Is All You Need"
walkthrough code): parameters and state_dict (strict loading both ways), outputs, weights and
every gradient in eval mode and in training mode with dropout 0, masks of every broadcast shape
and dtype, dropout from mha's Philox stream, and the documented fully masked row.

The reference runs in float64 on the same parameters; tolerances: see py_util.
"""
import math
import random

import pytest
import torch
import torch.nn as nn

import mha
from py_util import (GRAD_TOL, assert_close, assert_grads_close, assert_mha_backward,
                     float64_copy, grads, keep_one, leaf, zero_fraction_bounds)


class SeedReference(nn.Module):
    """The seed module as its walkthrough writes it (mask == 0 -> -1e9 before the softmax)."""

    def __init__(self, d_model, num_heads, dropout=0.1):
        super().__init__()
        assert d_model % num_heads == 0
        self.d_model, self.num_heads, self.d_k = d_model, num_heads, d_model // num_heads
        self.W_q = nn.Linear(d_model, d_model)
        self.W_k = nn.Linear(d_model, d_model)
        self.W_v = nn.Linear(d_model, d_model)
        self.W_o = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def split_heads(self, t):
        B, T, _ = t.shape
        return t.view(B, T, self.num_heads, self.d_k).transpose(1, 2)

    def forward(self, x, mask=None):
        B, T, _ = x.shape
        Q, K, V = (self.split_heads(w(x)) for w in (self.W_q, self.W_k, self.W_v))
        scores = torch.matmul(Q, K.transpose(-2, -1)) / math.sqrt(self.d_k)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, -1e9)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(weights, V).transpose(1, 2).contiguous().view(B, T, self.d_model)
        return self.W_o(out), weights


KEYS = [f"W_{p}.{t}" for p in "qkvo" for t in ("weight", "bias")]


def test_state_dict_is_the_seed_modules():
    layer = mha.MultiHeadAttention(16, 4)
    assert list(layer.state_dict()) == KEYS
    for p in "qkvo":
        lin = getattr(layer, f"W_{p}")
        assert isinstance(lin, nn.Linear) and lin.in_features == lin.out_features == 16
        assert lin.bias is not None
    assert all(t.dtype == torch.float32 for t in layer.state_dict().values())


def test_gradients_come_from_mhas_backward():
    layer = mha.MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8, requires_grad=True)
    assert_mha_backward(layer(x, torch.ones(3, 3).tril())[0], "seed module")


def test_same_initial_values_as_the_reference_under_manual_seed():
    # each projection an nn.Linear created in the order W_q, W_k, W_v, W_o: PyTorch's init
    torch.manual_seed(3)
    ref = SeedReference(24, 4)
    torch.manual_seed(3)
    layer = mha.MultiHeadAttention(24, 4)
    for name, t in ref.state_dict().items():
        assert torch.equal(layer.state_dict()[name], t), f"{name}: initial values differ"


def test_state_dict_loads_strictly_both_ways():
    torch.manual_seed(4)
    ref = SeedReference(12, 3)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    layer = mha.MultiHeadAttention(12, 3)
    layer.load_state_dict(ref.state_dict(), strict=True)
    back = SeedReference(12, 3)
    back.load_state_dict(layer.state_dict(), strict=True)
    for name, t in ref.state_dict().items():
        assert torch.equal(layer.state_dict()[name], t), name
        assert torch.equal(back.state_dict()[name], t), name
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict(nn.MultiheadAttention(12, 3).state_dict(), strict=True)


def test_loaded_and_updated_parameters_are_used():
    # load_state_dict and an optimizer step both change the parameters in place; the next
    # forward must see them (mha's layer reads the module's own tensors)
    torch.manual_seed(5)
    ref = SeedReference(8, 2, dropout=0.0).eval()
    layer = mha.MultiHeadAttention(8, 2, dropout=0.0).eval()
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 8)
    # SGD, not Adam: W_k.bias's gradient is 0 up to rounding (a shift of every score of a row),
    # and Adam would turn that rounding noise into full-size steps
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (layer, ref)]
    for _ in range(3):
        for m, o in zip((layer, ref), opts):
            o.zero_grad()
            m(x)[0].square().sum().backward()
            o.step()
    for name, t in ref.state_dict().items():
        assert_close(layer.state_dict()[name], t, f"after 3 SGD steps: {name}", GRAD_TOL)
    ref64 = float64_copy(SeedReference, layer, 8, 2, dropout=0.0)
    assert_close(layer(x)[0], ref64(x.double())[0], "forward after the steps")


@pytest.mark.parametrize("how", ["load_state_dict(assign=True)", "functional_call"])
def test_parameters_replaced_from_outside(how):
    # the module's parameters replaced by other tensors (assign=True, torch.func): computed
    # with those, gradients to those
    torch.manual_seed(6)
    layer = mha.MultiHeadAttention(12, 3).eval()
    new = {n: leaf(torch.randn(p.shape) * 0.3) for n, p in layer.named_parameters()}
    ref = SeedReference(12, 3).double().eval()
    ref_params = {n: leaf(p.double()) for n, p in new.items()}
    x = torch.randn(2, 6, 12)
    if how == "functional_call":
        out = torch.func.functional_call(layer, new, (x,))[0]
        targets = new
    else:
        layer.load_state_dict(new, assign=True)
        out = layer(x)[0]
        targets = dict(layer.named_parameters())
    out_r = torch.func.functional_call(ref, ref_params, (x.double(),))[0]
    assert_close(out, out_r, f"{how}: output")
    out.square().sum().backward()
    out_r.square().sum().backward()
    for n in new:
        assert_close(targets[n].grad, ref_params[n].grad, f"{how}: grad {n}", GRAD_TOL)


# Masks: (shape as a function of B, H, T, dtype); every one leaves each query row a key.
MASK_SHAPES = {
    "none": None,
    "causal[T,T]": lambda B, H, T: (T, T),
    "padding[B,1,1,T]": lambda B, H, T: (B, 1, 1, T),
    "[B,1,T,T]": lambda B, H, T: (B, 1, T, T),
    "[B,H,T,T]": lambda B, H, T: (B, H, T, T),
    "[1,1,T,T]": lambda B, H, T: (1, 1, T, T),
    "[1,H,1,T]": lambda B, H, T: (1, H, 1, T),
    "[1,T,T]": lambda B, H, T: (1, T, T),
}


def make_mask(kind, dtype, B, H, T, gen):
    """1 = take part, 0 = masked (the seed module's convention), in `dtype`."""
    if kind == "none":
        return None
    shape = MASK_SHAPES[kind](B, H, T)
    if kind.startswith("causal"):
        keep = torch.ones(T, T, dtype=torch.bool).tril()
    else:
        keep = ~keep_one(torch.rand(shape, generator=gen) < 0.35, generator=gen)
    return keep.to(dtype)


def draw_case(i):
    r = random.Random(7000 + i)
    H = r.choice([1, 2, 4, 8])
    return dict(seed=i, H=H, d_model=H * r.choice([1, 3, 8, 16]), B=r.choice([1, 2, 3]),
                T=r.choice([1, 2, 7, 16, 29]), mask=list(MASK_SHAPES)[i % len(MASK_SHAPES)],
                dtype=r.choice([torch.bool, torch.int64, torch.float32]),
                mode=r.choice(["eval", "train, dropout 0"]))


CASES = [draw_case(i) for i in range(24)]


def case_id(c):
    return (f"{c['seed']}-d{c['d_model']}H{c['H']}B{c['B']}T{c['T']}-{c['mask']}-"
            f"{str(c['dtype']).split('.')[-1]}-{c['mode'].split(',')[0]}")


def run(m, x, mask, g, conv):
    xl = leaf(conv(x))
    out, w = m(xl, mask)
    return out, w, grads((out * conv(g)).sum(), {"x": xl}, m)


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_random_configuration_matches_the_reference(c):
    torch.manual_seed(c["seed"])
    train = c["mode"] != "eval"
    layer = mha.MultiHeadAttention(c["d_model"], c["H"], dropout=0.0 if train else 0.1)
    layer.train(train)
    ref = float64_copy(SeedReference, layer, c["d_model"], c["H"], dropout=0.0 if train else 0.1)
    gen = torch.Generator().manual_seed(c["seed"])
    B, T = c["B"], c["T"]
    x = torch.randn(B, T, c["d_model"], generator=gen)
    mask = make_mask(c["mask"], c["dtype"], B, c["H"], T, gen)
    g = torch.randn(B, T, c["d_model"], generator=gen)
    out_r, w_r, g_r = run(ref, x, mask, g, lambda t: t.double())
    out, w, g_m = run(layer, x, mask, g, lambda t: t.detach())
    assert_close(out, out_r, "output")
    assert_close(w, w_r, "attention weights")
    assert_grads_close(g_m, g_r, "seed module")


def test_two_forwards_then_one_backward():
    # two calls of one module in one graph (an encoder applied twice, say)
    torch.manual_seed(11)
    layer = mha.MultiHeadAttention(12, 3).eval()
    ref = float64_copy(SeedReference, layer, 12, 3).eval()
    gen = torch.Generator().manual_seed(11)
    x1, x2 = torch.randn(2, 5, 12, generator=gen), torch.randn(3, 8, 12, generator=gen)
    mask = torch.ones(8, 8).tril()

    def total(m, conv):
        a, b = leaf(conv(x1)), leaf(conv(x2))
        loss = m(a)[0].square().sum() + m(m(b, mask)[0], mask)[0].sum()
        return torch.autograd.grad(loss, [a, b] + list(m.parameters()))

    names = ["x1", "x2"] + [n for n, _ in layer.named_parameters()]
    for name, got, want in zip(names, total(layer, lambda t: t), total(ref, lambda t: t.double())):
        assert_close(got, want, f"two forwards: grad {name}", GRAD_TOL)


def test_fully_masked_row_is_the_documented_difference():
    # mha: weights 0 and output W_o.bias on a row that masks every key (the reference's -1e9
    # gives uniform weights there); the other rows as the reference
    torch.manual_seed(8)
    layer = mha.MultiHeadAttention(8, 2).eval()
    with torch.no_grad():
        layer.W_o.bias.normal_()
    ref = float64_copy(SeedReference, layer, 8, 2).eval()
    x = leaf(torch.randn(2, 4, 8))
    mask = torch.ones(2, 1, 4, 4)
    mask[0, :, 1] = 0  # batch 0, query 1: no key
    out, w = layer(x, mask)
    out_r, w_r = ref(x.double(), mask)
    assert torch.equal(out[0, 1], layer.W_o.bias.detach()), "masked row: output != W_o.bias"
    assert torch.count_nonzero(w[0, :, 1]) == 0, "masked row: weights not 0"
    live = torch.ones(2, 4, dtype=torch.bool)
    live[0, 1] = False
    assert_close(out[live], out_r[live], "rows with a key")
    assert_close(w[:, :, :][live[:, None].expand(2, 2, 4)], w_r[live[:, None].expand(2, 2, 4)],
                 "weights of rows with a key")
    (gx,) = torch.autograd.grad(out.sum(), [x])
    assert torch.isfinite(gx).all()


# -- dropout ------------------------------------------------------------------------------------

def test_default_dropout_is_0_1_and_active_in_training():
    torch.manual_seed(9)
    layer = mha.MultiHeadAttention(16, 4).train()
    x = torch.randn(4, 20, 16)
    _, w = layer(x)
    lo, hi = zero_fraction_bounds(w.numel(), 0.1)
    frac = (w == 0).double().mean().item()
    assert lo < frac < hi, f"dropped fraction with the default dropout: {frac:.4f}"


def test_dropout_reproducible_scaled_and_consistent_with_the_output():
    p = 0.3
    torch.manual_seed(10)
    layer = mha.MultiHeadAttention(16, 4, dropout=p)
    x = torch.randn(2, 24, 16)
    layer.eval()
    out0, w0 = layer(x)
    layer.train()
    torch.manual_seed(1)
    out1, w1 = layer(x)
    torch.manual_seed(1)
    out1b, w1b = layer(x)
    torch.manual_seed(2)
    _, w2 = layer(x)
    assert torch.equal(out1, out1b) and torch.equal(w1, w1b), "same seed, different result"
    assert not torch.equal(w1 != 0, w2 != 0), "seeds 1 and 2 dropped the same weights"
    dropped = w1 == 0
    lo, hi = zero_fraction_bounds(w1.numel(), p)
    assert lo < dropped.double().mean().item() < hi
    assert_close(w1[~dropped], w0[~dropped].double() / (1 - p), "survivors scaled by 1/(1-p)")
    # the output is the one these weights give: W_o(merge(w @ V)); and its gradients too
    ref = float64_copy(SeedReference, layer, 16, 4, dropout=p)
    xl, xr = leaf(x), leaf(x.double())
    torch.manual_seed(1)
    out, w = layer(xl)
    V = ref.split_heads(ref.W_v(xr))
    out_r = ref.W_o((w.detach().double() @ V).transpose(1, 2).reshape(2, 24, 16))
    assert_close(out, out_r, "output from the returned weights")
    Q, K = ref.split_heads(ref.W_q(xr)), ref.split_heads(ref.W_k(xr))
    scores = Q @ K.transpose(-1, -2) / math.sqrt(ref.d_k)
    w_r = torch.softmax(scores, -1) * (w != 0) / (1 - p)
    out_r = ref.W_o((w_r @ V).transpose(1, 2).reshape(2, 24, 16))
    g = torch.randn(2, 24, 16)
    got = grads((out * g).sum(), {"x": xl}, layer)
    want = grads((out_r * g.double()).sum(), {"x": xr}, ref)
    assert_grads_close(got, want, "dropout")
    layer.eval()
    assert torch.equal(layer(x)[1], w0), "eval after training: dropout still applied"
