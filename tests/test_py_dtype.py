"""test_py_dtype - bfloat16 and float16 in the Python package (issue 11).

Accuracy: for each case (shapes with head dims 64 and 128, L != S, causal or not, key padding,
boolean and float masks, grouped-query attention; fixed seeds) the inputs are drawn in float32
and rounded to the dtype; the reference is attention written here from its formula in float64
on those ROUNDED inputs (forward, and its gradients by float64 autograd). The error of a result
x against it is

    err(x) = max |x.double() - ref|        (max-abs)
    rms(x) = sqrt(mean (x.double() - ref)^2)

and mha's must be at most 2x (output) and 3x (dq, dk, dv) PyTorch 2.13's own bfloat16 /
float16 scaled_dot_product_attention on the same tensors (CPU, autograd), in both forms. So
that the bound stays meaningful when PyTorch happens to be very accurate, PyTorch's error is
floored at half an ulp of the dtype at the reference's scale (its largest magnitude for
max-abs; its RMS for rms): rounding a correct result to the dtype once can cost that much.

Exactness: mha's bfloat16 / float16 output is its float32 output on the rounded inputs,
rounded (bit for bit), and the gradients are the float32 backward's on the same float32
values, rounded (also with FlashAttention's windows, softcap, ALiBi and dropout); the thread
count changes no bit. Except bfloat16 where mha runs its vdpbf16ps kernels (AVX512_BF16, as
mha.describe() says): they also round P and dS to bfloat16 as operands of their products, so
there the results are compared with the float32 ones within that rounding (ROUNDED_P below;
the accuracy test above holds either way, and the test_py_dtype_generic / _avx2 runs check
the bits). Wiring: dtypes in and out of every function
that takes them, masks in the query's dtype, and the errors of the ones that do not.
"""
import math

import numpy as np
import pytest
import torch

import mha
from mha.functional import scaled_dot_product_attention as mha_sdpa

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}
MANT = {torch.bfloat16: 8, torch.float16: 11}  # significand bits: half an ulp is 2^-MANT

# name, B, H, Hkv, L, S, D, causal, mask ("none", "padding", "bool", "float"), input scale
CASES = [
    ("d64", 2, 4, 4, 128, 128, 64, False, "none", 1.0),
    ("d128-cross", 1, 2, 2, 100, 160, 128, False, "none", 1.0),
    ("d64-causal", 2, 3, 3, 96, 96, 64, True, "none", 1.0),
    ("d128-causal-cross", 1, 2, 2, 80, 144, 128, True, "none", 1.0),
    ("d64-padding", 3, 2, 2, 64, 96, 64, False, "padding", 1.0),
    ("d64-bool", 2, 2, 2, 72, 72, 64, False, "bool", 1.0),
    ("d128-float-mask", 1, 4, 4, 64, 80, 128, False, "float", 1.0),
    ("d128-gqa-causal", 1, 8, 2, 128, 128, 128, True, "none", 1.0),
    ("d64-gqa-padding", 2, 4, 1, 48, 112, 64, False, "padding", 1.0),
    ("d64-sharp", 1, 4, 4, 64, 64, 64, True, "none", 3.0),
    ("d64-decode", 2, 4, 4, 1, 200, 64, False, "none", 1.0),
]
IDS = [c[0] for c in CASES]


def rounded(shape, dtype, gen, scale=1.0):
    """float32 normal draws rounded to dtype (the values every side is given)."""
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def make_case(case, dtype):
    """(q, k, v, dout, attn_mask in SDPA's convention or None, is_causal) for a case."""
    name, B, H, Hkv, L, S, D, causal, mask, sc = case
    gen = torch.Generator().manual_seed(1100 + IDS.index(name))
    q = rounded((B, H, L, D), dtype, gen, sc)
    k = rounded((B, Hkv, S, D), dtype, gen, sc)
    v = rounded((B, Hkv, S, D), dtype, gen)
    dout = rounded((B, H, L, D), dtype, gen)
    if mask == "padding":  # [B, 1, 1, S], True = take part: each batch keeps a prefix
        lens = torch.randint(S // 3, S + 1, (B,), generator=gen)
        m = (torch.arange(S)[None] < lens[:, None])[:, None, None]
    elif mask == "bool":  # [L, S], random, the diagonal always kept (no empty row)
        m = (torch.rand((L, S), generator=gen) < 0.6) | torch.eye(L, S, dtype=torch.bool)
    elif mask == "float":  # [B, H, L, S] additive, in the query's dtype
        m = (torch.randn((B, H, L, S), generator=gen) * 2).to(dtype)
    else:
        m = None
    return q, k, v, dout, m, causal


def reference(q, k, v, dout, m, causal):
    """out, dq, dk, dv in float64 from the formula softmax(q k^T / sqrt(D) + mask) v."""
    q, k, v, dout = (t.double() for t in (q, k, v, dout))
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    g = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = q @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1])
    L, S = s.shape[-2:]
    if causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), float("-inf"))
    if m is not None and m.dtype == torch.bool:
        s = s.masked_fill(~m, float("-inf"))
    elif m is not None:
        s = s + m.double()
    out = torch.softmax(s, dim=-1) @ vv
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def run(sdpa, q, k, v, dout, m, causal):
    """out, dq, dk, dv of sdpa on leaf copies of q, k, v (autograd)."""
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = sdpa(q, k, v, attn_mask=m, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def errors(x, ref, dtype):
    """(max-abs error, its floor), (rms error, its floor) of x against ref."""
    d = x.double() - ref
    half_ulp = 2.0 ** -MANT[dtype]
    big = ref.abs().max().item()
    rms_ref = ref.pow(2).mean().sqrt().item()
    scale = lambda a: 2.0 ** math.floor(math.log2(a)) if a > 0 else 0.0  # noqa: E731
    return ((d.abs().max().item(), half_ulp * scale(big)),
            (d.pow(2).mean().sqrt().item(), half_ulp * scale(rms_ref)))


def ratios(case, dtype):
    """{"out"/"dq"/"dk"/"dv": (max-abs ratio, rms ratio)} of mha's errors to PyTorch's
    (floored), and the errors themselves for messages."""
    args = make_case(case, dtype)
    ref = reference(*args)
    ours = run(mha_sdpa, *args)
    theirs = run(torch.nn.functional.scaled_dot_product_attention, *args)
    out = {}
    for i, what in enumerate(("out", "dq", "dk", "dv")):
        assert ours[i].dtype == dtype and ours[i].shape == ref[i].shape, what
        e_ours, e_theirs = errors(ours[i], ref[i], dtype), errors(theirs[i], ref[i], dtype)
        out[what] = tuple((a[0] / max(b[0], b[1]), a[0], b[0], b[1])
                          for a, b in zip(e_ours, e_theirs))
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dt", DTYPES)
def test_accuracy_against_pytorch(case, dt):
    r = ratios(case, DTYPES[dt])
    for what, bound in (("out", 2.0), ("dq", 3.0), ("dk", 3.0), ("dv", 3.0)):
        for form, (ratio, ours, theirs, floor) in zip(("max-abs", "rms"), r[what]):
            assert ratio <= bound, (
                f"{dt} {case[0]} {what}: {form} error {ours:.3g}, PyTorch's {theirs:.3g} "
                f"(floor {floor:.3g}): ratio {ratio:.2f} > {bound}")


# ------------------------------------------------------------------------------------------
# exactness: the float32 computation on the rounded values, rounded once; threads
# ------------------------------------------------------------------------------------------
def bits_equal(a, b):
    """Whether two tensors (or ndarrays) of one 2-byte dtype have the same bits."""
    a, b = (torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in (a, b))
    return a.dtype == b.dtype and a.shape == b.shape and \
        torch.equal(a.contiguous().view(torch.int16), b.contiguous().view(torch.int16))


# bfloat16 calls run on the vdpbf16ps kernels (mha info: "attn_*_bf16")
BF16_KERNELS = "attn_fwd_bf16" in mha.describe()


def rounded_once(a32, low, dtype, scale):
    """low is a32 rounded to dtype, bit for bit; or, for bfloat16 on the vdpbf16ps kernels,
    within their rounding of P / dS (2^-8 of the values' scale: |v| or the gradient's largest
    magnitude) plus the output's own rounding."""
    if not (dtype == torch.bfloat16 and BF16_KERNELS):
        return bits_equal(a32.to(dtype), low)
    err = (low.double() - a32.double()).abs()
    return bool((err <= 2.0 ** -8 * (a32.double().abs() + scale)).all())


def numpy_mask(m):
    """An SDPA attn_mask (bool True = take part) in mha.attention's convention (True =
    masked), as a float32 or bool ndarray."""
    if m is None:
        return None
    return (~m).numpy() if m.dtype == torch.bool else m.float().numpy()


EXACT = [c for c in CASES if c[0] in ("d128-cross", "d64-padding", "d64-bool",
                                      "d128-float-mask", "d128-gqa-causal", "d64-decode")]


@pytest.mark.parametrize("case", EXACT, ids=[c[0] for c in EXACT])
@pytest.mark.parametrize("dt", DTYPES)
def test_float32_rounded_once(case, dt):
    dtype = DTYPES[dt]
    q, k, v, dout, m, causal = make_case(case, dtype)
    out, dq, dk, dv = run(mha_sdpa, q, k, v, dout, m, causal)
    f32 = [t.float() for t in (q, k, v)]
    m32 = m.float() if m is not None and m.is_floating_point() else m
    out32 = mha_sdpa(*f32, attn_mask=m32, is_causal=causal, enable_gqa=True)
    assert rounded_once(out32, out, dtype, v.float().abs().max()), f"{dt} {case[0]}: out"
    # the backward: mha's float32 backward on the same float32 values (dout as the dtype holds
    # it, the forward's lse, and out as the backward reads it: recomputed in float32, or with
    # the bf16 kernels the forward's rounded out), rounded once
    qn, kn, vn = (t.numpy() for t in f32)
    nm = numpy_mask(m)
    _, lse = mha.attention(qn, kn, vn, mask=nm, causal=causal, return_lse=True)
    o = out.float() if dtype == torch.bfloat16 and BF16_KERNELS else out32
    grads = mha.attention_backward(qn, kn, vn, o.numpy(), lse, dout.float().numpy(), mask=nm,
                                   causal=causal)
    for what, g32, g in zip(("dq", "dk", "dv"), grads, (dq, dk, dv)):
        g32 = torch.from_numpy(g32)
        assert rounded_once(g32, g, dtype, g32.abs().max()), f"{dt} {case[0]}: {what}"


@pytest.mark.parametrize("dt", DTYPES)
def test_threads_change_no_bit(dt):
    dtype = DTYPES[dt]
    results = []
    try:
        for n in (1, 2, 3):
            mha.set_num_threads(n)
            assert mha.get_num_threads() == n
            for case in (CASES[3], CASES[7], CASES[8]):
                args = make_case(case, dtype)
                results.append((n, case[0], run(mha_sdpa, *args)))
    finally:
        mha.set_num_threads(0)
    per_case = len(results) // 3
    for i in range(per_case):
        _, name, one = results[i]
        for n, name2, other in results[i + per_case::per_case]:
            assert name2 == name
            for what, a, b in zip(("out", "dq", "dk", "dv"), one, other):
                assert bits_equal(a, b), f"{dt} {name} {what}: 1 thread vs {n}"


# ------------------------------------------------------------------------------------------
# flash_attn_func and NumPy
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attn_func(dt, causal):
    """bottom-right causal, GQA, L != S; attn_probs in q's dtype (FlashAttention's S_dmask),
    lse float32; out and attn_probs the float32 call's on the rounded values, rounded once,
    and the gradients the float32 backward's on the float32 values of q, k, v, dout and out as
    the backward reads it (recomputed in float32; with the bf16 kernels the rounded out)."""
    dtype = DTYPES[dt]
    gen = torch.Generator().manual_seed(7)
    q, k, v = (rounded(s, dtype, gen) for s in ((2, 40, 6, 64), (2, 56, 3, 64), (2, 56, 3, 64)))
    dout = rounded((2, 40, 6, 64), dtype, gen)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse, probs = mha.flash_attn_func(*leaves, causal=causal, return_attn_probs=True)
    out.backward(dout)
    out32, lse32, probs32 = mha.flash_attn_func(*(t.float() for t in (q, k, v)), causal=causal,
                                                return_attn_probs=True)
    kernels = dtype == torch.bfloat16 and BF16_KERNELS  # sums in pairs: lse within rounding
    assert lse.dtype == torch.float32
    assert torch.allclose(lse, lse32, rtol=1e-6, atol=1e-6) if kernels else torch.equal(lse, lse32)
    for what, a, b in (("out", out, out32), ("attn_probs", probs, probs32)):
        assert a.dtype == dtype and rounded_once(b, a, dtype, 1.0), f"{dt} {what}"
    o = out.detach() if kernels else out32
    heads_second = [t.float().transpose(1, 2).numpy() for t in (q, k, v, o, dout)]
    grads = mha.attention_backward(*heads_second[:4], lse.numpy(), heads_second[4],
                                   causal="bottom_right" if causal else False)
    for what, g32, g in zip(("dq", "dk", "dv"), grads, (t.grad for t in leaves)):
        assert g.dtype == dtype, what
        g32 = torch.from_numpy(g32).transpose(1, 2)
        assert rounded_once(g32, g, dtype, g32.abs().max()), f"{dt} {what}"


@pytest.mark.parametrize("dt", DTYPES)
def test_probabilities_change_no_output(dt):
    """Asking for the attention probabilities changes no bit of the output, in every dtype:
    flash_attn_func with and without return_attn_probs, a MultiheadAttention layer with
    need_weights True (averaged or per head) and False."""
    dtype = DTYPES[dt]
    gen = torch.Generator().manual_seed(21)
    q, k, v = (rounded(s, dtype, gen) for s in ((2, 37, 4, 32), (2, 45, 2, 32), (2, 45, 2, 32)))
    for causal in (False, True):
        plain = mha.flash_attn_func(q, k, v, causal=causal)
        out, _, probs = mha.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
        assert bits_equal(plain, out), f"{dt} causal={causal}"
        assert probs.dtype == dtype
        rows = probs.float().sum(-1)  # every row allowed some key: sums 1 within bf16 rounding
        assert torch.allclose(rows, torch.ones_like(rows), atol=2.0 ** -6), dt
    torch.manual_seed(5)
    layer = mha.MultiheadAttention(64, 4, batch_first=True, dtype=dtype)
    x = rounded((2, 19, 64), dtype, gen)
    with torch.no_grad():
        ref, _ = layer(x, x, x, need_weights=False)
        for average in (True, False):
            out, w = layer(x, x, x, need_weights=True, average_attn_weights=average)
            assert bits_equal(ref, out) and w is not None, f"{dt} average={average}"


FLASH_OPTIONS = {
    "window-softcap": dict(causal=True, window_size=(9, 0), softcap=5.0),
    "alibi": dict(alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625])),
    "dropout": dict(dropout_p=0.25, causal=True),
}


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("opt", FLASH_OPTIONS)
def test_options_rounded_once(dt, opt):
    """Windows, softcap, ALiBi and dropout (the same Philox mask under the same torch seed) in
    bfloat16 / float16: out and attn_probs the float32 call's, rounded once; gradients in the
    dtype. scaled_dot_product_attention with dropout likewise."""
    dtype = DTYPES[dt]
    gen = torch.Generator().manual_seed(11)
    q, k, v = (rounded(s, dtype, gen) for s in ((1, 33, 4, 64), (1, 47, 2, 64), (1, 47, 2, 64)))
    kw = FLASH_OPTIONS[opt]
    results = []
    for ts in ((q, k, v), tuple(t.float() for t in (q, k, v))):
        torch.manual_seed(3)
        leaves = [t.clone().requires_grad_() for t in ts]
        out, _, probs = mha.flash_attn_func(*leaves, return_attn_probs=True, **kw)
        out.sum().backward()
        results.append((out.detach(), probs) + tuple(t.grad for t in leaves))
    low, f32 = results
    for what, a, b in zip(("out", "attn_probs", "dq", "dk", "dv"), low, f32):
        assert a.dtype == dtype, what
        if what in ("out", "attn_probs"):
            assert rounded_once(b, a, dtype, 1.0), f"{dt} {opt} {what}"
    if "dropout_p" in kw:
        heads = [t.transpose(1, 2) for t in (q, k, v)]
        outs = []
        for ts in (heads, [t.float() for t in heads]):
            torch.manual_seed(4)
            outs.append(mha_sdpa(*ts, dropout_p=0.25, enable_gqa=True))
        assert outs[0].dtype == dtype and rounded_once(outs[1], outs[0], dtype, 1.0)
        assert not bits_equal(outs[0], mha_sdpa(*heads, enable_gqa=True))


def test_numpy_float16():
    """mha.attention / attention_backward on float16 arrays: float16 results (lse float32),
    the float32 call's on the same values, rounded once; masks in float16 or float32."""
    gen = np.random.default_rng(3)
    q, k, v, dout = (gen.standard_normal(s).astype(np.float16)
                     for s in ((2, 4, 24, 64), (2, 2, 40, 64), (2, 2, 40, 64), (2, 4, 24, 64)))
    fmask = gen.standard_normal((24, 40)).astype(np.float16)
    for mask in (None, fmask, fmask.astype(np.float32), gen.random((2, 1, 1, 40)) < 0.3):
        out, lse = mha.attention(q, k, v, mask=mask, causal="bottom_right", return_lse=True)
        assert out.dtype == np.float16 and lse.dtype == np.float32
        f32 = [a.astype(np.float32) for a in (q, k, v)]
        m32 = mask.astype(np.float32) if mask is not None and mask.dtype != bool else mask
        out32, lse32 = mha.attention(*f32, mask=m32, causal="bottom_right", return_lse=True)
        assert bits_equal(out32.astype(np.float16), out) and np.array_equal(lse, lse32)
        grads = mha.attention_backward(q, k, v, out, lse, dout, mask=mask,
                                       causal="bottom_right")
        # (out as the float16 backward reads it: recomputed in float32)
        grads32 = mha.attention_backward(*f32, out32, lse, dout.astype(np.float32), mask=m32,
                                         causal="bottom_right")
        for g, g32 in zip(grads, grads32):
            assert g.dtype == np.float16 and bits_equal(g32.astype(np.float16), g)


def test_numpy_dtype_errors():
    q = np.zeros((1, 2, 3, 8), np.float16)
    with pytest.raises(ValueError, match=r"^attention: k\.dtype: got float32, expected float16 "
                                         r"\(q's dtype"):
        mha.attention(q, q.astype(np.float32), q)
    with pytest.raises(ValueError, match=r"^attention: q\.dtype: got float64, expected float32 "
                                         r"or float16"):
        mha.attention(q.astype(np.float64), q, q)
    with pytest.raises(ValueError, match=r"^attention: mask\.dtype: got float64, expected bool "
                                         r"\(True = masked\) or float32 or float16"):
        mha.attention(q, q, q, mask=np.zeros((3, 3)))
    out, lse = mha.attention(q, q, q, return_lse=True)
    with pytest.raises(ValueError, match=r"^attention_backward: lse\.dtype: got float16, "
                                         r"expected float32 \(the log-sum-exp is float32\)"):
        mha.attention_backward(q, q, q, out, lse.astype(np.float16), out)
    with pytest.raises(ValueError, match=r"^attention_backward: dout\.dtype: got float32, "
                                         r"expected float16"):
        mha.attention_backward(q, q, q, out, lse, out.astype(np.float32))


# ------------------------------------------------------------------------------------------
# the PyTorch side's dtype rules
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
def test_mismatch_raises_as_pytorch(dt):
    """q, k, v of different supported dtypes: RuntimeError naming the argument, as PyTorch's
    scaled_dot_product_attention raises RuntimeError."""
    dtype = DTYPES[dt]
    q = torch.randn(1, 2, 3, 8)
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    for args, name in (((q.to(dtype), q.to(other), q.to(dtype)), "key"),
                       ((q.to(dtype), q.to(dtype), q), "value"),
                       ((q, q.to(dtype), q), "key")):
        with pytest.raises(RuntimeError):
            torch.nn.functional.scaled_dot_product_attention(*args)
        got = args[1 if name == "key" else 2].dtype
        with pytest.raises(RuntimeError, match=rf"^mha.functional.scaled_dot_product_attention: "
                                               rf"{name}\.dtype: got {got}, "
                                               rf"expected {args[0].dtype}"):
            mha_sdpa(*args)
        f = [t.transpose(1, 2) for t in args]
        with pytest.raises(RuntimeError, match=rf"^flash_attn_func: {name[0]}\.dtype: got "):
            mha.flash_attn_func(*f)
    with pytest.raises(ValueError, match=r"^mha.functional.scaled_dot_product_attention: "
                                         r"query\.dtype: got torch.float64, expected "
                                         r"torch.float32, torch.bfloat16 or torch.float16"):
        mha_sdpa(q.double(), q.double(), q.double())


@pytest.mark.parametrize("dt", DTYPES)
def test_float_masks(dt):
    """A bfloat16 / float16 query takes a float mask of its own dtype or float32 (the same
    numbers when the values are the same), and refuses another, as PyTorch."""
    dtype = DTYPES[dt]
    gen = torch.Generator().manual_seed(5)
    q = rounded((2, 3, 10, 16), dtype, gen)
    m = rounded((10, 10), dtype, gen)
    a = mha_sdpa(q, q, q, attn_mask=m)
    assert a.dtype == dtype
    assert bits_equal(a, mha_sdpa(q, q, q, attn_mask=m.float()))
    assert not bits_equal(a, mha_sdpa(q, q, q))
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    for bad in (other, torch.float64):
        with pytest.raises(RuntimeError, match="attn_mask"):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=m.to(bad))
        with pytest.raises(RuntimeError, match=rf"^mha.functional.scaled_dot_product_attention: "
                                               rf"attn_mask\.dtype: got {bad}, expected "
                                               rf"torch.bool, torch.float32 or {dtype}"):
            mha_sdpa(q, q, q, attn_mask=m.to(bad))


NEED_F32 = "float32 is needed here"


@pytest.mark.parametrize("dt", DTYPES)
def test_kvcache(dt):
    """flash_attn_with_kvcache with bfloat16 / float16 caches: the caches updated in place with
    the new rows as they are, out in the dtype and bitwise flash_attn_func's on the cache's
    first keys (one token: the decode kernel, within its float32 sums and one rounding: 2^-7 of
    the scale; a prefill of 40 tokens, 80 rows per key/value head: the dense core, bitwise); a
    dtype mismatch refused."""
    dtype = DTYPES[dt]
    gen = torch.Generator().manual_seed(9)
    kc, vc = (torch.zeros(2, 64, 2, 32, dtype=dtype) for _ in range(2))
    for L, pos in ((40, 0), (1, 40)):
        q = rounded((2, L, 4, 32), dtype, gen)
        k, v = (rounded((2, L, 2, 32), dtype, gen) for _ in range(2))
        out = mha.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=pos, causal=True)
        assert out.dtype == dtype
        assert bits_equal(kc[:, pos:pos + L], k) and bits_equal(vc[:, pos:pos + L], v)
        ref = mha.flash_attn_func(q, kc[:, :pos + L], vc[:, :pos + L], causal=True)
        if L > 1:
            assert bits_equal(ref, out)
        else:
            err = (out.double() - ref.double()).abs().max()
            assert err <= 2.0 ** -7 * (ref.double().abs().max() + 1), err
    with pytest.raises(RuntimeError, match="k.dtype"):
        mha.flash_attn_with_kvcache(q, kc, vc, k.float(), v.float(), cache_seqlens=21)


@pytest.mark.parametrize("dt", DTYPES)
def test_varlen(dt):
    """flash_attn_varlen_func in bfloat16 / float16: each sequence's out, lse, attn_probs and
    gradients bitwise flash_attn_func's on that sequence alone (the same core on the same
    values, asked for the probabilities the same way: with them, a bf16 call runs on float32
    copies, see mha.h), in the dtype (lse float32)."""
    dtype = DTYPES[dt]
    gen = torch.Generator().manual_seed(5)
    lq, lk = (3, 9, 6), (7, 9, 11)
    cq = torch.tensor([0, 3, 12, 18], dtype=torch.int32)
    ck = torch.tensor([0, 7, 16, 27], dtype=torch.int32)
    q = rounded((18, 4, 32), dtype, gen).requires_grad_()
    k, v = (rounded((27, 2, 32), dtype, gen).requires_grad_() for _ in range(2))
    _, lse, probs = mha.flash_attn_varlen_func(q, k, v, cq, ck, 9, 11, causal=True,
                                               return_attn_probs=True)
    out = mha.flash_attn_varlen_func(q, k, v, cq, ck, 9, 11, causal=True)
    assert out.dtype == dtype and probs.dtype == dtype and lse.dtype == torch.float32
    dout = rounded(out.shape, dtype, gen)
    out.backward(dout)
    for s in range(3):
        i0, i1, j0, j1 = int(cq[s]), int(cq[s + 1]), int(ck[s]), int(ck[s + 1])
        leaves = [t.detach()[a:b][None].clone().requires_grad_()
                  for t, a, b in ((q, i0, i1), (k, j0, j1), (v, j0, j1))]
        _, l1, p1 = mha.flash_attn_func(*leaves, causal=True, return_attn_probs=True)
        o1 = mha.flash_attn_func(*leaves, causal=True)
        o1.backward(dout[i0:i1][None])
        assert bits_equal(o1[0], out[i0:i1].detach())
        if dtype == torch.bfloat16 and BF16_KERNELS:  # lse from the kernels vs float32 copies
            assert torch.allclose(l1[0], lse[:, i0:i1], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(l1[0], lse[:, i0:i1])
        assert bits_equal(p1[0], probs[s, :, :lq[s], :lk[s]])
        for g1, g, a, b in ((leaves[0].grad, q.grad, i0, i1), (leaves[1].grad, k.grad, j0, j1),
                            (leaves[2].grad, v.grad, j0, j1)):
            assert g.dtype == dtype and bits_equal(g1[0], g[a:b]), (dt, s)


@pytest.mark.parametrize("dt", DTYPES)
def test_float32_only_functions_say_so(dt):
    """A float32 layer refuses bfloat16 / float16 inputs (a layer of that dtype takes them:
    test_py_module_dtype), and the seed module stays float32: ValueError naming the
    argument, saying float32 is needed there (and where bfloat16 / float16 go), never "mha
    computes in float32"."""
    dtype = DTYPES[dt]
    x = torch.randn(2, 5, 8, dtype=dtype)
    calls = {
        "query": lambda: mha.MultiheadAttention(8, 2, batch_first=True)(x, x, x),
        "x": lambda: mha.MultiHeadAttention(8, 2)(x),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert f"{name}.dtype: got {dtype}" in msg or f"{name}: got {dtype}" in msg, msg
        assert NEED_F32 in msg and "computes in float32" not in msg, msg
