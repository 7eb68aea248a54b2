"""mha.functional - torch.nn.functional's attention, computed by mha.

``scaled_dot_product_attention`` takes PyTorch 2.13's arguments and layout and runs mha's fused
forward and backward (FlashAttention-2 tiles: no L x S matrix is stored).
"""
import math

import torch

from . import _lib
from . import _torch as T
from ._torch import shape_str as _shape

__all__ = ["scaled_dot_product_attention"]



def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """softmax(query key^T * scale + mask) value, as torch.nn.functional's.

    Parameters
    ----------
    query : Tensor [..., L, E]          e.g. [batch, heads, L, E]
    key : Tensor [..., S, E]            the same leading dimensions as query
    value : Tensor [..., S, Ev]
        float32, bfloat16 or float16, all three the same dtype (RuntimeError otherwise, as
        PyTorch). bfloat16 / float16: the products are accumulated, and softmax computed, in
        float32 on the exact values; the output is rounded to the dtype once (to nearest
        even), so it is the float32 result of the same inputs, rounded (bfloat16 on a CPU
        with AVX512_BF16: vdpbf16ps kernels, which also round the probabilities to bfloat16
        before the product with value, as FlashAttention does).
    attn_mask : Tensor, optional
        Broadcastable to [..., L, S]. bool: True marks the positions that TAKE PART
        (SDPA's convention, the opposite of nn.MultiheadAttention's); float: added to the
        scaled scores (in float32; with a bfloat16 / float16 query, a mask of the query's
        dtype or float32, as PyTorch).
    dropout_p : float
        Probability of zeroing a weight (mha's Philox dropout, seeded from torch's generator:
        torch.manual_seed makes it reproducible). Applied whenever it is > 0, as in PyTorch;
        in [0, 1) (1.0, which PyTorch answers with zeros, raises ValueError).
    is_causal : bool
        Key j takes part in row i only if j <= i (top-left alignment); with an attn_mask too,
        both apply (as PyTorch 2.13 does on the CPU, whatever its docstring says).
    scale : float, optional
        Default 1/sqrt(E). Must be nonzero.
    enable_gqa : bool
        Grouped-query attention: key and value may have Hkv heads (dim -3), a divisor of the
        query's H; query head h uses key/value head h // (H / Hkv), as PyTorch (no copy of key
        and value is made; their gradients are summed over each group). Key and value have the
        same number of heads (PyTorch also takes two different divisors: ValueError here).

    Returns
    -------
    Tensor [..., L, Ev] in the query's dtype. Differentiable with respect to query, key and
    value through mha's own backward (gradients in that dtype, each rounded once from
    float32). A fully masked row gives 0 (as PyTorch 2.13's CPU kernels).

    Example
    -------
    >>> import torch
    >>> from mha.functional import scaled_dot_product_attention
    >>> q = k = v = torch.randn(2, 4, 16, 32)
    >>> scaled_dot_product_attention(q, k, v, is_causal=True).shape
    torch.Size([2, 4, 16, 32])
    >>> qb = q.bfloat16()
    >>> scaled_dot_product_attention(qb, qb, qb).dtype
    torch.bfloat16
    """
    fn = "mha.functional.scaled_dot_product_attention"
    q, k, v = T.as_core_inputs(fn, ("query", "key", "value"), (query, key, value))
    if q.dim() < 2 or k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(f"{fn}: query, key, value: got shapes {_shape(q)}, {_shape(k)}, "
                         f"{_shape(v)}, expected [..., L, E], [..., S, E], [..., S, Ev] with the "
                         "same number of dimensions (at least 2)")
    lead = tuple(q.shape[:-2])
    # enable_gqa: key/value may have fewer heads (dim -3) than query, a divisor of its number
    klead = lead if not enable_gqa or q.dim() < 3 else lead[:-1] + tuple(k.shape[-3:-2])
    if tuple(k.shape[:-2]) != klead or tuple(v.shape[:-2]) != klead or (
            enable_gqa and q.dim() >= 3 and lead[-1] % klead[-1] != 0):
        raise ValueError(f"{fn}: key, value: got shapes {_shape(k)}, {_shape(v)}, expected the "
                         f"leading dimensions of query {_shape(q)} (broadcasting them is not "
                         "supported" + ("; with enable_gqa=True, key/value heads (dim -3) "
                                        "dividing the query's" if enable_gqa else "") + ")")
    L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    if k.shape[-1] != E or v.shape[-2] != S:
        raise ValueError(f"{fn}: key, value: got shapes {_shape(k)}, {_shape(v)}, expected "
                         f"[..., S, {E}] and [..., S, Ev] with S the same")
    if scale is not None and (scale == 0 or not math.isfinite(scale)):
        raise ValueError(f"{fn}: scale: got {scale}, expected a finite nonzero number")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{fn}: dropout_p: got {dropout_p}, expected a value in [0, 1)")
    # The core's [B, H, L, E] views: up to 4 dimensions without a copy.
    nd = q.dim()
    if nd == 2:
        q4, k4, v4 = q[None, None], k[None, None], v[None, None]
    elif nd == 3:
        q4, k4, v4 = q[None], k[None], v[None]
    elif nd == 4:
        q4, k4, v4 = q, k, v
    else:
        q4, k4, v4 = (t.reshape((-1,) + tuple(t.shape[-3:])) for t in (q, k, v))
    B, H = q4.shape[0], q4.shape[1]
    params = _lib.AttnParams(float(scale) if scale is not None else 0.0, float(dropout_p),
                             T.dropout_seed() if dropout_p > 0 else 0, 0)
    mask = _mask(attn_mask, q.dtype, lead, B, H, L, S, 1 if is_causal else 0, fn)
    call = T.CoreCall(params, mask)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = T.CoreFunction.apply(call, q4, k4, v4)
    else:
        out, _ = call.forward(q4, k4, v4)
    return out.reshape(lead + (L, Ev)) if nd != 4 else out


def _mask(m, dtype, lead, B, H, L, S, causal, fn):
    """SDPA's attn_mask as an mha_mask: bool True = take part (inverted for mha: nonzero =
    excluded), float added (in float32); [L, S] shared, [B, 1, 1, S] as key padding, else
    [B*H, L, S]. dtype: the query's (a bfloat16 / float16 query takes a float mask of its own
    dtype or float32, as PyTorch)."""
    if m is None:
        return T.MaskArg(causal=causal) if causal else T.NO_MASK
    T.check_mask(m, "attn_mask", fn)
    if dtype != torch.float32 and m.is_floating_point() and m.dtype not in (dtype,
                                                                            torch.float32):
        raise ValueError(f"{fn}: attn_mask.dtype: got {m.dtype}, expected torch.bool, "
                         f"torch.float32 or {dtype} (the query's dtype, as PyTorch)")
    full = lead + (L, S)
    try:
        if torch.broadcast_shapes(m.shape, full) != torch.Size(full):
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"{fn}: attn_mask: got shape {_shape(m)}, expected a shape "
                         f"broadcastable to [{', '.join(map(str, full))}]") from None
    is_bool = m.dtype == torch.bool
    x = ~m if is_bool else m.to(torch.float32)
    xf = x.reshape((1,) * (len(full) - x.dim()) + tuple(x.shape))  # right-aligned to full
    if all(d == 1 for d in xf.shape[:-2]):
        shared = xf.reshape(xf.shape[-2:]).expand(L, S)
        if T.is_causal_mask(shared, True if is_bool else float("-inf")):
            return T.MaskArg(causal=1)  # the same numbers without the mask, half the work
        shared = shared.contiguous()
        return T.MaskArg(causal, attn_bool=shared) if is_bool else \
            T.MaskArg(causal, attn_float=shared)
    if is_bool and len(full) == 4 and xf.shape[1] == 1 and xf.shape[2] == 1:
        return T.MaskArg(causal, key_padding=xf[:, 0, 0].expand(B, S).contiguous())
    per = xf.expand(full).reshape(B * H, L, S).contiguous()
    return T.MaskArg(causal, attn_bool=per, batched=True) if is_bool else \
        T.MaskArg(causal, attn_float=per, batched=True)
