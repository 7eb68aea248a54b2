"""mha.functional - torch.nn.functional's attention, computed by mha.

``scaled_dot_product_attention`` takes PyTorch 2.13's arguments and layout and runs mha's fused
forward and backward (FlashAttention-2 tiles: no L x S matrix is stored).
"""
import math

import torch
import torch.nn.functional as F

from . import _lib
from ._lib import ArgumentError
from . import _torch as T
from ._torch import shape_str as _shape

__all__ = ["scaled_dot_product_attention"]



def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """softmax(query key^T * scale + mask) value, as torch.nn.functional's.

    Parameters
    ----------
    query : Tensor [..., L, E]          e.g. [batch, heads, L, E]
    key : Tensor [..., S, E]            leading dimensions that broadcast with query's
    value : Tensor [..., S, Ev]         (e.g. one key/value batch for every query; with
                                        enable_gqa the heads apart), as PyTorch's
        float32, bfloat16 or float16, all three the same dtype (RuntimeError otherwise, as
        PyTorch). bfloat16 / float16: the products are accumulated, and softmax computed, in
        float32 on the exact values; the output is rounded to the dtype once (to nearest
        even), so it is the float32 result of the same inputs, rounded (bfloat16 on a CPU
        with AVX512_BF16: vdpbf16ps kernels, which also round the probabilities to bfloat16
        before the product with value, as FlashAttention does). E may be 0: every score is
        then 0, and each row the mean of value over the keys it may see, as PyTorch's.
    attn_mask : Tensor, optional
        Broadcastable to [..., L, S]. bool: True marks the positions that TAKE PART
        (SDPA's convention, the opposite of nn.MultiheadAttention's); float: added to the
        scaled scores (in float32). Its dtype is bool, float32 or the query's, as PyTorch
        (RuntimeError otherwise). A 0-D or 1-D mask raises IndexError where PyTorch 2.13 does
        (4-D query, key and value without dropout) and broadcasts elsewhere, as there.
    dropout_p : float
        Probability of zeroing a weight (mha's Philox dropout, seeded from torch's generator:
        torch.manual_seed makes it reproducible). Applied whenever it is > 0, as in PyTorch;
        in [0, 1]. 1.0 drops every weight: the output and the gradients are zeros, as
        PyTorch's (which are NaN where an input is NaN or inf; mha's are 0 there too).
    is_causal : bool
        Key j takes part in row i only if j <= i (top-left alignment); with an attn_mask too,
        both apply (as PyTorch 2.13 does on the CPU, whatever its docstring says).
    scale : float, optional
        Default 1/sqrt(E). Finite; 0 makes every score 0, as E = 0 does (the gradients of
        query and key are then 0, as PyTorch's). With E = 0 it is ignored, as in PyTorch.
    enable_gqa : bool
        Grouped-query attention: key and value may have Hk and Hv heads (dim -3), each a
        divisor of the query's H; query head h uses key head h // (H / Hk) and value head
        h // (H / Hv), as PyTorch (their gradients are summed over each group). With Hk = Hv,
        or one of them 1, no copy of key and value is made; with two other counts the one with
        fewer heads is repeated to lcm(Hk, Hv) heads (a copy). Needs at least 3 dimensions
        (IndexError otherwise, as PyTorch).

    Returns
    -------
    Tensor [..., L, Ev] in the query's dtype. Under torch.autocast("cpu", dtype=bfloat16 or
    float16), as PyTorch's: query, key, value and a float attn_mask of another floating dtype
    than float64 are first converted to that dtype (differentiably), so the result is in it. Differentiable with respect to query, key and
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
    ac = T.autocast_dtype()
    if ac is not None:  # torch.autocast("cpu"): torch's SDPA converts q, k, v and a float mask
        query, key, value, attn_mask = (T.autocast_to(t, ac) for t in
                                        (query, key, value, attn_mask))
    q, k, v = T.as_core_inputs(fn, ("query", "key", "value"), (query, key, value))
    _check_mask_dtype(attn_mask, q.dtype, fn)
    if min(q.dim(), k.dim(), v.dim()) < 2:
        raise ArgumentError(f"{fn}: query, key, value: got shapes {_shape(q)}, {_shape(k)}, "
                         f"{_shape(v)}, expected [..., L, E], [..., S, E], [..., S, Ev] (at least "
                         "2 dimensions)")
    if enable_gqa and min(q.dim(), k.dim(), v.dim()) < 3:
        raise IndexError(f"{fn}: enable_gqa=True: got {q.dim()}-D query, key, value, expected "
                         "at least 3 dimensions [..., heads, L, E] (PyTorch 2.13 reads their "
                         "size(-3) and raises IndexError)")
    q, k, v = _broadcast(fn, q, k, v, enable_gqa)
    lead = tuple(q.shape[:-2])
    # enable_gqa: key and value may each have fewer heads (dim -3) than query, a divisor of its
    # number (not necessarily the same one, as in PyTorch)
    gqa = enable_gqa and q.dim() >= 3
    klead, vlead = ((lead[:-1] + tuple(t.shape[-3:-2]) for t in (k, v)) if gqa else
                    (lead, lead))
    if tuple(k.shape[:-2]) != klead or tuple(v.shape[:-2]) != vlead or gqa and any(
            h[-1] < 1 or lead[-1] % h[-1] != 0 for h in (klead, vlead)):
        raise ArgumentError(f"{fn}: key, value: got shapes {_shape(k)}, {_shape(v)}, expected the "
                         f"leading dimensions of query {_shape(q)}" +
                         (" (with enable_gqa=True, key and value heads (dim -3) each dividing the "
                          "query's)" if enable_gqa else ""))
    L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    if k.shape[-1] != E or v.shape[-2] != S:
        raise ArgumentError(f"{fn}: key, value: got shapes {_shape(k)}, {_shape(v)}, expected "
                         f"[..., S, {E}] and [..., S, Ev] with S the same")
    # scores all 0 (E = 0, or scale 0, or a scale float32 rounds to 0, as PyTorch's float32
    # kernels take it): PyTorch's softmax is uniform over the keys a row may see, whatever the
    # scale (with E = 0, even 1/sqrt(0) = inf: the scaled q is empty)
    zero_scores = E == 0 or scale is not None and _lib.float32(scale) == 0
    if not zero_scores and scale is not None and not math.isfinite(scale):
        raise ArgumentError(f"{fn}: scale: got {scale}, expected a finite number")
    if not 0.0 <= dropout_p <= 1.0:
        raise ArgumentError(f"{fn}: dropout_p: got {dropout_p}, expected a value in [0, 1]")
    _check_mask_rank(attn_mask, q, k, v, dropout_p, enable_gqa, fn)
    # The core's [B, H, L, E] views: up to 4 dimensions without a copy.
    nd = q.dim()
    B, H = math.prod(lead[:-1]), lead[-1] if nd > 2 else 1
    mask = _mask(attn_mask, lead, B, H, L, S, 1 if is_causal else 0, fn)
    if dropout_p == 1.0 or B * H == 0:
        # every weight dropped: PyTorch multiplies them by 0, so out and the gradients are 0
        # (for finite inputs; a NaN or inf there gives NaN in PyTorch's)
        shape = lead + (L, Ev)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return _Zeros.apply(shape, q, k, v)
        return torch.zeros(shape, dtype=q.dtype)
    if zero_scores:  # q, k of head dim 1, zeros (their gradients: 0, as PyTorch's)
        q, k, scale = F.pad(q[..., :0], (0, 1)), F.pad(k[..., :0], (0, 1)), None
    if gqa and k.shape[-3] != v.shape[-3]:  # the core reads one number of key/value heads
        G = math.lcm(k.shape[-3], v.shape[-3])
        k, v = _repeat_heads(k, G), _repeat_heads(v, G)
    if nd == 2:
        q4, k4, v4 = q[None, None], k[None, None], v[None, None]
    elif nd == 3:
        q4, k4, v4 = q[None], k[None], v[None]
    elif nd == 4:
        q4, k4, v4 = q, k, v
    else:  # B, not -1: an empty L or S leaves -1 ambiguous (reshape raises)
        q4, k4, v4 = (t.reshape((B,) + tuple(t.shape[-3:])) for t in (q, k, v))
    params = _lib.AttnParams(float(scale) if scale is not None else 0.0, float(dropout_p),
                             T.dropout_seed() if dropout_p > 0 else 0, 0)
    call = T.CoreCall(params, mask)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = T.CoreFunction.apply(call, q4, k4, v4)
    else:
        out, _ = call.forward(q4, k4, v4)
    return out.reshape(lead + (L, Ev)) if nd != 4 else out


def _broadcast(fn, q, k, v, gqa):
    """query, key and value with their leading dimensions broadcast against each other, as
    PyTorch's matmuls broadcast them (a key and value of batch 1 for every query sequence,
    say): expanded views, whose gradients autograd sums back. With enable_gqa (gqa) the heads
    (dim -3) stay each tensor's own: the dimensions before them broadcast."""
    keep = 3 if gqa else 2
    try:
        lead = torch.broadcast_shapes(*(tuple(t.shape[:-keep]) for t in (q, k, v)))
    except RuntimeError:
        raise ArgumentError(f"{fn}: query, key, value: got shapes {_shape(q)}, {_shape(k)}, "
                            f"{_shape(v)}, expected leading dimensions (before "
                            f"{'heads, ' if gqa else ''}L, E) that broadcast") from None
    return (t if tuple(t.shape[:-keep]) == tuple(lead) else
            t.expand(tuple(lead) + tuple(t.shape[-keep:])) for t in (q, k, v))


def _check_mask_dtype(m, dtype, fn):
    """PyTorch's attn_mask dtypes: bool, float32 or the query's dtype (RuntimeError, as
    PyTorch 2.13 raises, whatever the mask's shape)."""
    if isinstance(m, torch.Tensor) and m.dtype not in (torch.bool, torch.float32, dtype):
        want = "torch.bool or torch.float32" if dtype == torch.float32 else \
            f"torch.bool, torch.float32 or {dtype} (the query's dtype)"
        raise RuntimeError(f"{fn}: attn_mask.dtype: got {m.dtype}, expected {want}, as "
                           "PyTorch")


def _check_mask_rank(m, q, k, v, dropout_p, enable_gqa, fn):
    """A 0-D or 1-D attn_mask raises IndexError where PyTorch 2.13 does: when its CPU backend
    selection considers the fused kernel, which reads attn_mask.size(-2) (4-D query, key and
    value with the same batch and heads, or with enable_gqa key and value of the same heads
    dividing the query's; no dropout; a mask that does not require grad; an output that is
    not empty and keys). Elsewhere such a mask broadcasts, as in PyTorch."""
    if not isinstance(m, torch.Tensor) or m.dim() >= 2 or q.dim() != 4 or dropout_p > 0 or \
            m.requires_grad:
        return
    B, H, L, _ = q.shape
    Hk, S, Hv, Ev = k.shape[1], k.shape[2], v.shape[1], v.shape[3]
    if Hk != Hv or not (Hk == H or enable_gqa and H % Hk == 0) or 0 in (B, H, L, S, Ev):
        return
    raise IndexError(f"{fn}: attn_mask: got a {m.dim()}-D mask of shape {_shape(m)}, expected "
                     "[..., L, S], at least 2 dimensions (PyTorch 2.13 reads its size(-2) with "
                     "4-D query, key, value and no dropout, and raises IndexError)")


def _repeat_heads(t, G):
    """t [..., Hx, S, D] with each head repeated G / Hx times in place (repeat_interleave, as
    PyTorch's enable_gqa reads it): a view when Hx is 1, else a copy."""
    if t.shape[-3] == G:
        return t
    if t.shape[-3] == 1:
        return t.expand(t.shape[:-3] + (G,) + t.shape[-2:])
    return t.repeat_interleave(G // t.shape[-3], dim=-3)


class _Zeros(torch.autograd.Function):
    """out = 0 of a given shape, in q's dtype, and gradients 0 for q, k, v: the result of
    PyTorch's attention when dropout drops every weight (dropout_p = 1)."""

    @staticmethod
    def forward(ctx, shape, q, k, v):
        ctx.metas = [(t.shape, t.dtype) for t in (q, k, v)]
        return torch.zeros(shape, dtype=q.dtype)

    @staticmethod
    def backward(ctx, dout):
        return (None,) + tuple(torch.zeros(s, dtype=d) for s, d in ctx.metas)


def _mask(m, lead, B, H, L, S, causal, fn):
    """SDPA's attn_mask as an mha_mask: bool True = take part (inverted for mha: nonzero =
    excluded), float added (in float32); [L, S] shared, [B, 1, 1, S] as key padding, else
    [B*H, L, S]. Its dtype was checked by _check_mask_dtype."""
    if m is None:
        return T.MaskArg(causal=causal) if causal else T.NO_MASK
    T.check_mask(m, "attn_mask", fn)
    full = lead + (L, S)
    try:
        if torch.broadcast_shapes(m.shape, full) != torch.Size(full):
            raise RuntimeError
    except RuntimeError:
        raise ArgumentError(f"{fn}: attn_mask: got shape {_shape(m)}, expected a shape "
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
