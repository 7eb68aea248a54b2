"""test_py_autocast - mha's PyTorch front ends under torch.autocast("cpu", dtype=bf16 / f16).

What PyTorch 2.13 does there (measured with its own layer and function, and what each test
checks mha against, case by case):
  - torch.nn.MultiheadAttention (batch first or not, need_weights or not, training, eval with
    grad, no_grad, inference_mode) returns its output and weights in the autocast dtype; inputs
    and parameters are converted inside the graph, so the gradients of float32 parameters and
    inputs are float32 (an input of another low dtype gets its gradient in that dtype).
  - F.scaled_dot_product_attention converts query, key, value and a float attn_mask (float64
    excepted) to the autocast dtype and returns that dtype.
  - The walkthrough's module (test_py_seed.SeedReference: Linear, matmul, softmax) returns
    its output and weights in the autocast dtype, gradients float32, as the layer.
  - autocast entered with enabled=False, or a nested torch.autocast(enabled=False), is off:
    float32 as outside.
Accuracy: against float64 on the float32 inputs and parameters (the computation autocast
approximates), mha's error must be at most 2x torch's autocast one for outputs and weights and
3x for gradients, torch's floored at half an ulp of the dtype at the reference's scale, as
test_py_module_dtype does. Exactness: under autocast the layer gives, bit for bit, what mha's
layer of that dtype gives on the rounded values (as torch's does), and off autocast exactly
what it gives outside. FlashAttention's functions are not autocast ops (flash_attn's are not):
they compute in their inputs' dtype, under autocast or not.
"""
import pytest
import torch
import torch.nn.functional as F

import mha
from py_util import MANT, assert_error_within, assert_layer_errors_within
from mha.functional import scaled_dot_product_attention as mha_sdpa

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}
MODES = ("train", "eval_grad", "no_grad", "inference_mode")


def _pair(E=16, H=4, seed=0, **kw):
    """An mha layer and a torch layer with the same float32 parameters (biases nonzero)."""
    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(E, H, **kw)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "bias" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    ours = mha.MultiheadAttention(E, H, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _grad_mode(mode):
    return {"train": torch.enable_grad, "eval_grad": torch.enable_grad,
            "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]()


def _call(layer, x, dt, mode, **kw):
    """layer(x, x, x) under autocast dt in mode: (out, weights, [x.grad] + parameter grads)."""
    layer.train(mode == "train")
    x = x.clone().requires_grad_(mode in ("train", "eval_grad"))
    with _grad_mode(mode), torch.autocast("cpu", dtype=dt):
        out, w = layer(x, x, x, **kw)
    grads = []
    if x.requires_grad:
        out.float().sum().backward()
        grads = [x.grad] + [p.grad for _, p in sorted(layer.named_parameters())]
    return out, w, grads


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("dname", DTYPES)
def test_layer_dtypes_as_torch(dname, batch_first, need_weights, mode):
    dt = DTYPES[dname]
    ours, ref = _pair(batch_first=batch_first)
    x = torch.randn(2, 5, 16)
    got = _call(ours, x, dt, mode, need_weights=need_weights)
    want = _call(ref, x, dt, mode, need_weights=need_weights)
    assert got[0].dtype == want[0].dtype == dt
    assert (got[1] is None) == (want[1] is None) == (not need_weights)
    if need_weights:
        assert got[1].dtype == want[1].dtype == dt
    assert len(got[2]) == len(want[2]) == (0 if mode in ("no_grad", "inference_mode") else 5)
    assert [g.dtype for g in got[2]] == [g.dtype for g in want[2]]
    assert all(g.dtype == torch.float32 for g in got[2])


@pytest.mark.parametrize("dname", DTYPES)
def test_layer_other_shapes_dtypes_as_torch(dname):
    """Unbatched, per-head weights, no query rows, cross-attention with kdim / vdim."""
    dt = DTYPES[dname]
    ours, ref = _pair(batch_first=True)
    x = torch.randn(5, 16)
    for layer in (ours, ref):
        with torch.autocast("cpu", dtype=dt):
            out, w = layer(x, x, x, average_attn_weights=False)
        assert out.dtype == w.dtype == dt and w.shape == (4, 5, 5)
        e = torch.randn(2, 0, 16, requires_grad=True)
        with torch.autocast("cpu", dtype=dt):
            out, w = layer(e, e, e)
        assert out.dtype == w.dtype == dt and out.shape == (2, 0, 16)
        out.float().sum().backward()
        assert e.grad.dtype == torch.float32 and layer.in_proj_weight.grad.dtype == torch.float32
    ours, ref = _pair(E=12, H=3, kdim=7, vdim=5, batch_first=True)
    q, k, v = (torch.randn(2, n, d, requires_grad=True) for n, d in ((4, 12), (6, 7), (6, 5)))
    for layer in (ours, ref):
        with torch.autocast("cpu", dtype=dt):
            out, w = layer(q, k, v)
        assert out.dtype == w.dtype == dt
        out.float().sum().backward()
        assert all(t.grad.dtype == torch.float32 for t in (q, k, v))
        assert layer.q_proj_weight.grad.dtype == layer.v_proj_weight.grad.dtype == torch.float32


@pytest.mark.parametrize("dname", DTYPES)
def test_layer_low_precision_inputs_as_torch(dname):
    """Inputs already bfloat16 / float16 are converted to the autocast dtype too; their
    gradients come back in their own dtype, the parameters' in float32, as torch's."""
    dt = DTYPES[dname]
    ours, ref = _pair(batch_first=True)
    for xdt in DTYPES.values():
        x = torch.randn(2, 5, 16).to(xdt)
        got = _call(ours, x, dt, "train")
        want = _call(ref, x, dt, "train")
        assert got[0].dtype == want[0].dtype == dt and got[1].dtype == want[1].dtype == dt
        assert [g.dtype for g in got[2]] == [g.dtype for g in want[2]]
        assert got[2][0].dtype == xdt


# name, E, H, kdim, vdim, N, L, S, cross, masks
CASES = [
    ("self", 64, 4, None, None, 2, 33, 33, False, None),
    ("cross_kv_dims", 48, 3, 40, 24, 2, 17, 29, True, None),
    ("padding_causal", 64, 2, None, None, 3, 40, 40, False, "padding_causal"),
    ("float_mask", 32, 4, None, None, 2, 20, 20, False, "float"),
]


def _masks(mask, N, L, S):
    if mask == "padding_causal":
        kpm = torch.zeros(N, S, dtype=torch.bool)
        kpm[0, -5:] = True
        return {"key_padding_mask": kpm,
                "attn_mask": torch.triu(torch.ones(L, S, dtype=torch.bool), 1)}
    if mask == "float":
        return {"attn_mask": torch.randn(L, S, generator=torch.Generator().manual_seed(4))}
    return {}


def _run(layer, q, k, v, dout, kw, cross, dt):
    q = q.clone().requires_grad_()
    k = k.clone().requires_grad_() if cross else q
    v = v.clone().requires_grad_() if cross else q
    with torch.autocast("cpu", dtype=dt, enabled=dt is not None):
        out, w = layer(q, k, v, **kw)
    out.backward(dout.to(out.dtype))
    grads = [q.grad] + ([k.grad, v.grad] if cross else [])
    grads += [p.grad for _, p in sorted(layer.named_parameters())]
    return out, w, grads


@pytest.mark.parametrize("dname", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_layer_accuracy_against_torch(dname, case):
    dt = DTYPES[dname]
    name, E, H, kdim, vdim, N, L, S, cross, mask = case
    ours, ref = _pair(E, H, seed=11, kdim=kdim, vdim=vdim, batch_first=True)
    r64 = torch.nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, batch_first=True,
                                      dtype=torch.float64)
    r64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()}, strict=True)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(N, L, E, generator=g)
    k = torch.randn(N, S, kdim or E, generator=g)
    v = torch.randn(N, S, vdim or E, generator=g)
    dout = torch.randn(N, L, E, generator=g).to(dt)  # what flows back into a dt output
    kw = dict(_masks(mask, N, L, S), need_weights=True,
              average_attn_weights=name != "padding_causal")
    got = _run(ours, q, k, v, dout, kw, cross, dt)
    tor = _run(ref, q, k, v, dout, kw, cross, dt)
    kw64 = {n: (m.double() if m.is_floating_point() else m) if torch.is_tensor(m) else m
            for n, m in kw.items()}
    want = _run(r64, q.double(), k.double(), v.double(), dout.double(), kw64, cross, None)
    assert got[0].dtype == got[1].dtype == dt
    assert all(x.dtype == torch.float32 for x in got[2])
    assert_layer_errors_within(got, tor, want, ours, cross, dt)


@pytest.mark.parametrize("dname", DTYPES)
def test_layer_is_the_layer_of_that_dtype(dname):
    """Under autocast the float32 layer gives bit for bit what mha's layer of the dtype gives
    on the rounded parameters and inputs (torch's layer does the same), and its gradients are
    those of the dtype layer, converted to float32."""
    dt = DTYPES[dname]
    ours, _ = _pair(E=32, H=4, seed=3, batch_first=True)
    low = mha.MultiheadAttention(32, 4, batch_first=True, dtype=dt)
    low.load_state_dict({k: v.to(dt) for k, v in ours.state_dict().items()}, strict=True)
    x = torch.randn(2, 9, 32)
    a = _call(ours, x, dt, "eval_grad")
    low.eval()
    xl = x.to(dt).requires_grad_()
    ol, wl = low(xl, xl, xl)
    ol.float().sum().backward()
    assert torch.equal(a[0], ol) and torch.equal(a[1], wl)
    assert torch.equal(a[2][0], xl.grad.float())
    for ga, (_, p) in zip(a[2][1:], sorted(low.named_parameters())):
        assert torch.equal(ga, p.grad.float())


@pytest.mark.parametrize("dname", DTYPES)
def test_layer_autocast_off_is_float32_bitwise(dname):
    """Autocast on gives the dtype; autocast entered with enabled=False, or disabled inside by
    a nested torch.autocast(enabled=False), gives exactly the float32 results of a call outside
    autocast (outputs, weights and gradients, bit for bit)."""
    dt = DTYPES[dname]
    ours, _ = _pair(E=32, H=4, seed=7, batch_first=True)
    x = torch.randn(2, 9, 32)

    def run(ctx):
        ours.zero_grad()
        xx = x.clone().requires_grad_()
        with ctx():
            out, w = ours(xx, xx, xx)
        out.float().sum().backward()
        return [out, w, xx.grad] + [p.grad.clone() for _, p in sorted(ours.named_parameters())]

    def nested():
        class Ctx:
            def __enter__(self):
                self.a = torch.autocast("cpu", dtype=dt)
                self.b = torch.autocast("cpu", enabled=False)
                self.a.__enter__()
                self.b.__enter__()

            def __exit__(self, *e):
                self.b.__exit__(*e)
                self.a.__exit__(*e)
        return Ctx()

    on = run(lambda: torch.autocast("cpu", dtype=dt))
    assert on[0].dtype == on[1].dtype == dt
    plain = run(torch.enable_grad)
    assert plain[0].dtype == torch.float32
    for ctx in (lambda: torch.autocast("cpu", dtype=dt, enabled=False), nested):
        got = run(ctx)
        for a, b in zip(got, plain):
            assert a.dtype == torch.float32 and torch.equal(a, b)


def test_layer_in_and_out_of_autocast_keeps_saved_forwards():
    """A forward under autocast, one outside, one under the other dtype, then their backwards
    in any order: each gets the gradients it gets alone (the C module of one does not
    replace the other's between its forward and its backward)."""
    ours, _ = _pair(E=16, H=2, seed=9, batch_first=True)
    x = torch.randn(2, 6, 16)
    dts = (torch.bfloat16, None, torch.float16)

    def fwd(dt):
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dt or torch.bfloat16, enabled=dt is not None):
            out, _ = ours(xx, xx, xx, need_weights=False)
        return xx, out

    alone = []
    for dt in dts:
        xx, out = fwd(dt)
        out.float().sum().backward()
        alone.append(xx.grad)
    runs = [fwd(dt) for dt in dts]
    assert [o.dtype for _, o in runs] == [torch.bfloat16, torch.float32, torch.float16]
    for i in (2, 0, 1):
        runs[i][1].float().sum().backward()
        assert torch.equal(runs[i][0].grad, alone[i])


def test_training_step_under_autocast():
    """One optimizer step under bf16 autocast: float32 gradients, float32 weights that change,
    and the same step as torch's layer takes (within bf16 rounding)."""
    ours, ref = _pair(E=32, H=4, seed=2, batch_first=True)
    x = torch.randn(2, 8, 32)
    for layer in (ours, ref):
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = layer(x, x, x, need_weights=False)
            loss = out.float().square().mean()
        assert out.dtype == torch.bfloat16
        loss.backward()
        assert layer.in_proj_weight.grad.dtype == torch.float32
        opt.step()
        assert layer.in_proj_weight.dtype == torch.float32
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert (a.grad - b.grad).abs().max() <= 0.02 * b.grad.abs().max()


# ------------------------------------------------------------------------------------------
# The seed module (mha.MultiHeadAttention)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dname", DTYPES)
def test_seed_module_as_its_reference(dname, mode):
    """The walkthrough's module (test_py_seed.SeedReference) under autocast returns its output
    and weights in the dtype, gradients float32; mha's does the same, within 2x (values) / 3x
    (gradients) the reference's autocast error against float64. float16 without a mask: the
    reference's masked_fill(-1e9) overflows float16 under autocast (mha's takes it)."""
    from test_py_seed import SeedReference
    dt = DTYPES[dname]
    torch.manual_seed(6)
    ref = SeedReference(32, 4, dropout=0.0)
    ours = mha.MultiHeadAttention(32, 4, dropout=0.0)
    ours.load_state_dict(ref.state_dict(), strict=True)
    r64 = SeedReference(32, 4, dropout=0.0).double()
    r64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()}, strict=True)
    x = torch.randn(2, 9, 32)
    mask = torch.tril(torch.ones(9, 9)) if dt == torch.bfloat16 else None
    grad = mode in ("train", "eval_grad")

    def run(m, xx, cast):
        m.train(mode == "train")
        xx = xx.clone().requires_grad_(grad)
        with _grad_mode(mode), torch.autocast("cpu", dtype=dt, enabled=cast):
            out, w = m(xx, mask)
        if not grad:
            return [out, w]
        out.float().sum().backward()
        return [out, w, xx.grad] + [p.grad for _, p in sorted(m.named_parameters())]

    got, tor, want = run(ours, x, True), run(ref, x, True), run(r64, x.double(), False)
    assert got[0].dtype == got[1].dtype == tor[0].dtype == tor[1].dtype == dt
    assert all(g.dtype == torch.float32 for g in got[2:] + tor[2:])
    for i, (a, b, r) in enumerate(zip(got, tor, want)):
        assert_error_within(f"result {i}", a, b, r, 2 if i < 2 else 3, dt)


# ------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ------------------------------------------------------------------------------------------
def _sdpa(f, dt, q, k, v, **kw):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=dt):
        out = f(q, k, v, **kw)
    out.float().sum().backward()
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("dname", DTYPES)
def test_sdpa_dtypes_as_torch(dname):
    dt = DTYPES[dname]
    q, k, v = (torch.randn(2, 3, n, 8) for n in (5, 7, 7))
    for xdt in (torch.float32, torch.bfloat16, torch.float16):
        args = [t.to(xdt) for t in (q, k, v)]
        got = _sdpa(mha_sdpa, dt, *args)
        want = _sdpa(F.scaled_dot_product_attention, dt, *args)
        assert got[0].dtype == want[0].dtype == dt
        assert [g.dtype for g in got[1:]] == [g.dtype for g in want[1:]] == [xdt] * 3
    # mixed dtypes (an error outside autocast) are all converted, as in torch
    mixed = (q, k.bfloat16(), v.half())
    assert _sdpa(mha_sdpa, dt, *mixed)[0].dtype == dt
    with torch.no_grad(), torch.autocast("cpu", dtype=dt):
        assert mha_sdpa(q, k, v).dtype == F.scaled_dot_product_attention(q, k, v).dtype == dt


@pytest.mark.parametrize("dname", DTYPES)
def test_sdpa_float_mask_converted_as_torch(dname):
    """A float32 (or other low dtype) mask is converted to the autocast dtype, as torch does:
    bit for bit mha's result on the converted tensors; a float64 one raises as in torch."""
    dt = DTYPES[dname]
    q, k, v = (torch.randn(2, 3, n, 8) for n in (5, 7, 7))
    m = torch.randn(5, 7)
    other = torch.float16 if dt == torch.bfloat16 else torch.bfloat16
    for mask in (m, m.to(other)):
        with torch.autocast("cpu", dtype=dt):
            got = mha_sdpa(q, k, v, attn_mask=mask)
        want = mha_sdpa(q.to(dt), k.to(dt), v.to(dt), attn_mask=mask.to(dt))
        assert got.dtype == dt and torch.equal(got, want)
    with torch.autocast("cpu", dtype=dt):
        with pytest.raises(RuntimeError):
            F.scaled_dot_product_attention(q, k, v, attn_mask=m.double())
        with pytest.raises(RuntimeError, match="attn_mask.dtype: got torch.float64"):
            mha_sdpa(q, k, v, attn_mask=m.double())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dname", DTYPES)
def test_sdpa_accuracy_against_torch(dname, causal):
    dt = DTYPES[dname]
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, n, 64, generator=g) for n in (33, 47, 47))
    got = _sdpa(mha_sdpa, dt, q, k, v, is_causal=causal)
    tor = _sdpa(F.scaled_dot_product_attention, dt, q, k, v, is_causal=causal)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    o64 = F.scaled_dot_product_attention(q64, k64, v64, is_causal=causal)
    o64.sum().backward()
    want = (o64, q64.grad, k64.grad, v64.grad)
    assert got[0].dtype == tor[0].dtype == dt
    assert all(t.dtype == torch.float32 for t in got[1:])
    for what, a, b, r, limit in zip(("out", "dq", "dk", "dv"), got, tor, want, (2, 3, 3, 3)):
        assert_error_within(what, a, b, r, limit, dt)


@pytest.mark.parametrize("dname", DTYPES)
def test_sdpa_autocast_off_is_float32_bitwise(dname):
    dt = DTYPES[dname]
    q, k, v = (torch.randn(2, 3, n, 8) for n in (5, 7, 7))
    with torch.autocast("cpu", dtype=dt):
        assert mha_sdpa(q, k, v).dtype == dt
        with torch.autocast("cpu", enabled=False):
            nested = mha_sdpa(q, k, v)
    with torch.autocast("cpu", dtype=dt, enabled=False):
        off = mha_sdpa(q, k, v)
    plain = mha_sdpa(q, k, v)
    assert plain.dtype == torch.float32
    assert torch.equal(nested, plain) and torch.equal(off, plain)


# ------------------------------------------------------------------------------------------
# FlashAttention's functions: not autocast ops (a decision, as flash_attn's; not a change)
# ------------------------------------------------------------------------------------------
def test_flash_functions_ignore_autocast():
    """flash_attn_func and flash_attn_with_kvcache compute in their inputs' dtype under
    autocast as outside it, bit for bit (flash_attn's own functions are not autocast ops)."""
    q, k, v = (torch.randn(2, n, 3, 8) for n in (5, 7, 7))
    plain = mha.flash_attn_func(q, k, v, causal=True)
    kc, vc = torch.zeros(2, 9, 3, 8), torch.zeros(2, 9, 3, 8)
    lens = torch.tensor([2, 0], dtype=torch.int32)
    cache_plain = mha.flash_attn_with_kvcache(q[:, :1], kc.clone(), vc.clone(), k[:, :1],
                                              v[:, :1], cache_seqlens=lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mha.flash_attn_func(q, k, v, causal=True)
        cache_got = mha.flash_attn_with_kvcache(q[:, :1], kc.clone(), vc.clone(), k[:, :1],
                                                v[:, :1], cache_seqlens=lens)
    assert got.dtype == torch.float32 and torch.equal(got, plain)
    assert torch.equal(cache_got, cache_plain)
