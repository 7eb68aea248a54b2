"""test_py_autocast - mha's PyTorch front ends under torch.autocast("cpu", dtype=bf16 / f16).

What PyTorch 2.13 does there (measured with its own function, and what each test checks mha
against, case by case):
  - F.scaled_dot_product_attention converts query, key, value and a float attn_mask (float64
    excepted) to the autocast dtype and returns that dtype; the gradients of float32 inputs
    are float32 (autocast converts inside the graph).
  - autocast entered with enabled=False, or a nested torch.autocast(enabled=False), is off:
    float32 as outside.
Accuracy: against float64 on the float32 inputs, mha's error must be at most 2x torch's
autocast one for the output and 3x for gradients, torch's floored at half an ulp of the dtype
at the reference's scale, as test_py_module_dtype does. Off autocast exactly what it gives
outside. FlashAttention's functions are not autocast ops (flash_attn's are not): they compute
in their inputs' dtype, under autocast or not.
"""
import pytest
import torch
import torch.nn.functional as F

import mha
from mha.functional import scaled_dot_product_attention as mha_sdpa

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}
MANT = {torch.bfloat16: 8, torch.float16: 11}


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
        ea = (a.double() - r).abs().max().item()
        eb = (b.double() - r).abs().max().item()
        floor = r.abs().max().item() * 2.0 ** -MANT[dt]
        assert ea <= limit * max(eb, floor), (
            f"{what}: mha's error {ea:.3g} > {limit} x torch's {eb:.3g} (floor {floor:.3g})")


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
