"""mha.flash - FlashAttention 2's Python interface, computed on the CPU by mha.

``flash_attn_func``, ``flash_attn_varlen_func`` and ``flash_attn_with_kvcache`` take the
arguments and the layouts of the flash_attn package (``[batch, seqlen, nheads, headdim]``;
packed ``[total_tokens, nheads, headdim]`` with ``cu_seqlens``), so code written for it runs on
the CPU with ``from mha import flash_attn_func``; so do the packed variants
(``flash_attn_qkvpacked_func``, ``flash_attn_kvpacked_func`` and their ``varlen`` forms: q, k, v
or k, v stacked in one tensor, read in place). The tensors reach the library as strided
views (``[batch, nheads, seqlen, headdim]`` for the core): nothing is copied, and the outputs
are allocated in FlashAttention's layout. As in FlashAttention, causal masks and windows are
aligned bottom-right (query row i sits at key position i + seqlen_k - seqlen_q), ALiBi adds
``-slope * |i + seqlen_k - seqlen_q - j|``, and k/v with fewer heads than q (a divisor) are
grouped-query attention.

Where mha differs:
  - CPU tensors only; every function takes float32, bfloat16 or float16 q, k, v (computed in
    float32, outputs rounded once; bfloat16 on a CPU with AVX512_BF16 on vdpbf16ps kernels,
    which round the probabilities to bfloat16 before the product with v as FlashAttention does;
    FlashAttention: fp16/bf16 on CUDA): other dtypes and devices raise ValueError;
  - second derivatives (create_graph=True through the backward) raise NotImplementedError;
  - always deterministic (``deterministic`` is accepted and changes nothing);
  - dropout draws mha's own mask (Philox, seeded from torch's default generator:
    torch.manual_seed makes it reproducible), not FlashAttention's;
  - a query row that sees no key gives out 0 as FlashAttention, and softmax_lse -inf
    (FlashAttention: +inf);
  - softmax_lse is the log-sum-exp of the scores as defined above; with causal and ALiBi (no
    window), FlashAttention's kernels add slope * j instead of -slope * (i + seqlen_k -
    seqlen_q - j) (the same softmax, each row shifted), so its softmax_lse is mha's plus
    slope * (i + seqlen_k - seqlen_q);
  - return_attn_probs returns the probabilities after dropout (survivors scaled by
    1 / (1 - dropout_p), 0 where dropped or masked), not FlashAttention's encoded S_dmask.
"""
import ctypes
import math
import numbers

import torch

from . import _lib
from ._lib import ArgumentError
from . import _torch as T
from ._lib import lib
from ._torch import shape_str as _shape

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache",
           "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func",
           "flash_attn_varlen_qkvpacked_func", "flash_attn_varlen_kvpacked_func"]

_I32 = torch.int32
_HEADS_SECOND = (0, 2, 1, 3)  # [B, H, L, D] views of [B, L, H, D] memory


# ------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------
def _params(fn, dropout_p, softmax_scale, softcap):
    """mha_attn_params, the values checked here so that a message names the caller's argument
    (dropout_p in [0, 1], softcap finite >= 0, softmax_scale finite). softmax_scale 0 leaves the
    library's default (its 0): the caller zeroes q (_scaled_q)."""
    for name, x in (("dropout_p", dropout_p), ("softcap", softcap)):
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise ArgumentError(f"{fn}: {name}: got {x!r}, expected a number")
    if not 0 <= dropout_p <= 1:
        raise ArgumentError(f"{fn}: dropout_p: got {dropout_p!r}, expected a value in [0, 1]")
    if not (math.isfinite(softcap) and softcap >= 0) or \
            softcap > 0 and _lib.float32(softcap) == 0:  # the library's 0 would mean none
        raise ArgumentError(f"{fn}: softcap: got {softcap!r}, expected a finite number >= 0 (0: "
                            "none) that float32 can hold (0 or at least 1.4e-45)")
    scale = 0.0  # the library's default, 1/sqrt(headdim)
    if softmax_scale is not None:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real) or \
                not math.isfinite(softmax_scale):
            raise ArgumentError(f"{fn}: softmax_scale: got {softmax_scale!r}, expected a finite "
                                "number (or None: 1/sqrt(headdim))")
        scale = float(softmax_scale)
    seed = T.dropout_seed() if dropout_p > 0 else 0
    return _lib.AttnParams(scale, float(dropout_p), seed, 0, float(softcap))


def _scaled_q(q, softmax_scale):
    """q as the library gets it: with softmax_scale 0, FlashAttention's every score is 0 (the
    softmax uniform over the keys a row may see, before ALiBi), where the library's scale 0
    means its default: q * 0 under the default gives those scores, and q a zero gradient (as
    FlashAttention's dq = softmax_scale dS k). So for a nonzero softmax_scale that float32
    rounds to 0 (|x| < 1.4e-45), whose scores are 0 in float32 too, as in FlashAttention's
    float32 softmax_scale."""
    zero = softmax_scale is not None and _lib.float32(softmax_scale) == 0
    return q * 0 if zero else q


def _window(fn, window_size):
    """FlashAttention's window_size (left, right) for MaskArg: None when (-1, -1)."""
    try:
        left, right = window_size
        ok = all(isinstance(x, numbers.Integral) and not isinstance(x, bool)
                 for x in (left, right))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ArgumentError(f"{fn}: window_size: got {window_size!r}, expected (left, right), two "
                         "ints (-1: unbounded)")
    # any negative side is unbounded, as FlashAttention takes it
    left, right = max(int(left), -1), max(int(right), -1)
    return None if (left, right) == (-1, -1) else (left, right)


def _alibi(fn, slopes, batch, H):
    """ALiBi slopes as FlashAttention takes them: float32 [nheads] or [batch, nheads]."""
    if slopes is None:
        return None
    if not isinstance(slopes, torch.Tensor):
        raise ArgumentError(f"{fn}: alibi_slopes: got {type(slopes).__name__}, expected a "
                         "torch.Tensor")
    T._require_cpu_f32(slopes, "alibi_slopes", fn, "tensor", "as FlashAttention's")
    if tuple(slopes.shape) not in ((H,), (batch, H)):
        raise ArgumentError(f"{fn}: alibi_slopes: got shape {_shape(slopes)}, expected [{H}] or "
                         f"[{batch}, {H}] ([nheads] or [batch, nheads])")
    bad = (~torch.isfinite(slopes.detach())).nonzero()
    if bad.numel():
        at = ", ".join(str(i) for i in bad[0].tolist())
        raise ArgumentError(f"{fn}: alibi_slopes[{at}]: got {float(slopes[tuple(bad[0])])}, "
                            "expected a finite slope")
    return slopes.detach().contiguous()


class _Options:
    """The mask options of a call, checked: causal, window, ALiBi slopes (None: off)."""

    def __init__(self, fn, causal, window_size, alibi_slopes, batch, H):
        self.causal = _lib.CAUSAL_BOTTOM_RIGHT if causal else _lib.CAUSAL_NONE
        self.window = _window(fn, window_size)
        self.alibi = _alibi(fn, alibi_slopes, batch, H)

    def mask(self, seq=None):
        """The MaskArg of the whole call, or of sequence seq alone (its row of batched
        slopes)."""
        a = self.alibi
        if seq is not None and a is not None and a.dim() == 2:
            a = a[seq]
        return T.MaskArg(causal=self.causal, window=self.window, alibi=a)


def _as_inputs(fn, names, tensors, ndim, layout, core=False):
    """Each tensor checked (CPU, innermost stride 1) with ndim dimensions: float32 (core=False)
    or, core=True, one dtype of float32, bfloat16 and float16 (T.as_core_inputs)."""
    out = T.as_core_inputs(fn, names, tensors) if core else \
        [T.as_input(t, n, fn) for n, t in zip(names, tensors)]
    for n, t in zip(names, out):
        if t.dim() != ndim:
            raise ArgumentError(f"{fn}: {n}: got shape {_shape(t)}, expected {layout}")
    return out


def _check_headdim(fn, q):
    """q's headdim (its last dimension) must be >= 1: FlashAttention 2 has no head dim 0 (its
    default softmax_scale, headdim ** -0.5, raises ZeroDivisionError; its kernels have no such
    size), unlike torch's scaled_dot_product_attention (mha.functional takes it)."""
    if q.shape[-1] == 0:
        raise ArgumentError(f"{fn}: q: got shape {_shape(q)}, expected headdim (the last dimension) "
                         ">= 1, as FlashAttention 2 (mha.functional.scaled_dot_product_attention "
                         "takes head dim 0, as torch's)")


def _check_kv(fn, q, k, v, kn="k", vn="v", batch=None):
    """k [B, S, Hkv, D] and v [B, S, Hkv, Dv] against q [B, L, H, D] (B: batch when given), in
    FlashAttention's names (the core's own messages would number the dimensions of its
    [B, H, L, D] views)."""
    B, _, H, D = q.shape
    B = B if batch is None else batch
    for name, t, want in ((kn, k, (B, None, None, D)), (vn, v, (B,) + tuple(k.shape[1:3]) +
                                                        (None,))):
        if any(w is not None and n != w for n, w in zip(t.shape, want)):
            expect = ", ".join("?" if w is None else str(w) for w in want)
            raise ArgumentError(f"{fn}: {name}: got shape {_shape(t)}, expected [{expect}] "
                             "([batch, seqlen_k, nheads_k, headdim] as q, v as k)")
    if k.shape[2] == 0 or H % k.shape[2]:
        raise ArgumentError(f"{fn}: {kn}.shape[2]: got {k.shape[2]}, expected a divisor of q's {H} "
                         "heads (grouped-query attention)")


def _run(call, q, k, v):
    """out of the core call, through autograd when a gradient may be needed."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return T.CoreFunction.apply(call, q, k, v)
    return call.forward(q, k, v)[0]


def _heads_second(*ts):
    return [t.transpose(1, 2) if t is not None else None for t in ts]


# ------------------------------------------------------------------------------------------
# flash_attn_func
# ------------------------------------------------------------------------------------------
def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False):
    """FlashAttention 2's ``flash_attn_func`` on the CPU:
    ``softmax(softcap(q k^T * softmax_scale) + alibi + mask) v`` per batch and head.

    Parameters
    ----------
    q : Tensor [batch, seqlen_q, nheads, headdim]
    k : Tensor [batch, seqlen_k, nheads_k, headdim]
    v : Tensor [batch, seqlen_k, nheads_k, headdim_v]
        float32, bfloat16 or float16, the three of one dtype (RuntimeError otherwise);
        bfloat16 / float16 are computed in float32 and out is rounded once (to nearest
        even); bfloat16 on a CPU with AVX512_BF16 also rounds the probabilities to bfloat16
        before the product with v (vdpbf16ps kernels; with return_attn_probs, the probabilities
        are those kernels' scores' float32 softmax, and out is the same as without them).
        nheads_k divides nheads (grouped-query attention: query head h uses key/value
        head h // (nheads / nheads_k)). Any strides with the innermost one 1 are read in place.
    dropout_p : float
        Probability of dropping an attention weight (mha's Philox dropout, seeded from torch's
        generator).
    softmax_scale : float, optional
        Default 1/sqrt(headdim); 0 makes every score 0 (uniform attention before ALiBi), as in
        FlashAttention.
    causal : bool
        Key j takes part in query row i only if j <= i + seqlen_k - seqlen_q (bottom-right).
    window_size : (int, int)
        (left, right): keys i + seqlen_k - seqlen_q - left <= j <= ... + right; -1 (any
        negative, as FlashAttention): unbounded.
    softcap : float
        > 0: scores -> softcap * tanh(scores / softcap) (after the scale).
    alibi_slopes : Tensor [nheads] or [batch, nheads], float32, optional
        Adds -slope * |i + seqlen_k - seqlen_q - j| to the scores.
    deterministic : bool
        Accepted; mha is always deterministic.
    return_attn_probs : bool
        Also return softmax_lse and the attention probabilities.

    Returns
    -------
    out : Tensor [batch, seqlen_q, nheads, headdim_v] (contiguous) in q's dtype,
        differentiable with respect to q, k and v through mha's fused backward (gradients in
        that dtype).
    With return_attn_probs: (out, softmax_lse [batch, nheads, seqlen_q] (float32, as
    FlashAttention's: log-sum-exp of the scaled scores; -inf for a row with no key),
    attn_probs [batch, nheads, seqlen_q, seqlen_k] (after dropout, 0 where masked) in q's
    dtype, as FlashAttention returns S_dmask: computed in float32, rounded once).

    Example
    -------
    >>> import torch, mha
    >>> q = torch.randn(2, 16, 8, 64); kv = torch.randn(2, 16, 2, 64)
    >>> mha.flash_attn_func(q, kv, kv, causal=True).shape
    torch.Size([2, 16, 8, 64])
    >>> mha.flash_attn_func(q.half(), kv.half(), kv.half()).dtype
    torch.float16
    """
    return _dense("flash_attn_func", q, k, v, dropout_p, softmax_scale, causal, window_size,
                  softcap, alibi_slopes, return_attn_probs)


def _dense(fn, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
           return_attn_probs):
    """flash_attn_func for the public function fn (see its docstring)."""
    layout = "[batch, seqlen, nheads, headdim]"
    q, k, v = _as_inputs(fn, "qkv", (q, k, v), 4, layout, core=True)
    _check_headdim(fn, q)
    _check_kv(fn, q, k, v)
    opts = _Options(fn, causal, window_size, alibi_slopes, q.shape[0], q.shape[2])
    call = T.CoreCall(_params(fn, dropout_p, softmax_scale, softcap), opts.mask(),
                      weights=return_attn_probs, out_order=_HEADS_SECOND)
    out = _run(call, *_heads_second(_scaled_q(q, softmax_scale), k, v)).transpose(1, 2)
    if not return_attn_probs:
        return out
    return out, call.lse, call.weights.to(q.dtype)


# ------------------------------------------------------------------------------------------
# flash_attn_varlen_func
# ------------------------------------------------------------------------------------------
class VarlenCall(T.CoreCall):
    """One call of the packed-batch core (mha_attn_varlen_forward / _backward): q [Tq, H, D],
    k, v [Tk, Hkv, D], out [Tq, H, Dv], lse [H, Tq]; cu_q, cu_k contiguous int32 [batch + 1]."""

    def __init__(self, params, mask, cu_q, cu_k):
        super().__init__(params, mask)
        self.cu_q, self.cu_k, self.batch = cu_q, cu_k, cu_q.numel() - 1

    def new_outputs(self, q, v):
        Tq, H = q.shape[0], q.shape[1]
        return torch.empty((Tq, H, v.shape[2]), dtype=q.dtype), torch.empty((H, Tq),
                                                                           dtype=T._F32)

    def run_forward(self, c, tq, tk, tv, to, tl, tw):
        return lib.mha_attn_varlen_forward(
            c, ctypes.byref(self.params), ctypes.byref(tq), ctypes.byref(tk), ctypes.byref(tv),
            self.cu_q.data_ptr(), self.cu_k.data_ptr(), self.batch, ctypes.byref(self.mask.c),
            ctypes.byref(to), ctypes.byref(tl))

    def run_backward(self, c, tq, tk, tv, to, tl, tdo, tdq, tdk, tdv):
        return lib.mha_attn_varlen_backward(
            c, ctypes.byref(self.params), ctypes.byref(tq), ctypes.byref(tk), ctypes.byref(tv),
            self.cu_q.data_ptr(), self.cu_k.data_ptr(), self.batch, ctypes.byref(self.mask.c),
            ctypes.byref(to), ctypes.byref(tl), ctypes.byref(tdo), ctypes.byref(tdq),
            ctypes.byref(tdk), ctypes.byref(tdv))


def _int32_vector(fn, name, t, what):
    """t: an int32 CPU tensor with one dimension (FlashAttention's cu_seqlens, cache_seqlens),
    contiguous."""
    if not isinstance(t, torch.Tensor):
        raise ArgumentError(f"{fn}: {name}: got {type(t).__name__}, expected an int32 tensor {what}")
    if t.device.type != "cpu":
        raise ArgumentError(f"{fn}: {name}: got a tensor on {t.device}, expected a CPU tensor")
    if t.dtype != _I32:
        raise ArgumentError(f"{fn}: {name}.dtype: got {t.dtype}, expected torch.int32 (as "
                         "FlashAttention)")
    if t.dim() != 1:
        raise ArgumentError(f"{fn}: {name}: got shape {_shape(t)}, expected {what}")
    return t.contiguous()


def _check_max_seqlen(fn, name, m, cu):
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0:
        raise ArgumentError(f"{fn}: {name}: got {m!r}, expected an int >= 0")
    lens = cu[1:] - cu[:-1]
    if lens.numel() and bool((lens >= 0).all()) and int(lens.max()) > m:  # else the library
        raise ArgumentError(f"{fn}: {name}: got {m}, expected >= {int(lens.max())} (the longest "
                         f"sequence of cu_seqlens_{name[-1]})")


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, block_table=None):
    """FlashAttention 2's ``flash_attn_varlen_func`` on the CPU: a batch of sequences of
    different lengths, packed one after another (no padding stored or computed).

    Parameters
    ----------
    q : Tensor [total_q, nheads, headdim], float32, bfloat16 or float16 (k and v the same)
    k : Tensor [total_k, nheads_k, headdim]
    v : Tensor [total_k, nheads_k, headdim_v]
    cu_seqlens_q, cu_seqlens_k : int32 Tensor [batch + 1]
        Prefix sums of the sequences' lengths: sequence s has the query rows
        cu_seqlens_q[s] .. cu_seqlens_q[s + 1] - 1 and the keys cu_seqlens_k[s] .. [s + 1] - 1
        (0 first, non-decreasing, total last: checked by the library).
    max_seqlen_q, max_seqlen_k : int
        At least the longest sequence (checked); the size of attn_probs.
    dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic
        As in ``flash_attn_func``, applied to every sequence alone (causal and windows aligned
        bottom-right to its own lengths); alibi_slopes [nheads] or [batch, nheads]. Dropout
        draws for sequence s the mask flash_attn_func draws for batch entry s.
    return_attn_probs : bool
        Also return softmax_lse and the probabilities (dropout_p must then be 0: they are
        recomputed sequence by sequence).
    block_table : int32 Tensor [batch, max_num_blocks_per_seq], optional
        Paged caches (vLLM's PagedAttention; an engine's step mixing sequences that decode one
        token with chunks of prompts): k and v are then pools of pages [num_blocks,
        page_block_size, nheads_k, headdim(_v)], sequence s's keys are its first
        cu_seqlens_k[s + 1] - cu_seqlens_k[s] tokens, key j row j % page_block_size of page
        block_table[s, j // page_block_size] (any page size), and its queries sit at the end
        of them (bottom-right). The pools are only read: write the new tokens' k, v into
        their pages first. Inference only, as in FlashAttention: dropout_p must be 0, and no
        gradient (RuntimeError when one would be needed: call it under torch.no_grad() or
        torch.inference_mode()); return_attn_probs is not implemented with it. The library's
        mha_attn_varlen_paged: consecutive sequences with the same number of query rows run
        as one batch (flash-decoding for the decoding ones).

    Returns
    -------
    out : Tensor [total_q, nheads, headdim_v] in q's dtype, differentiable with respect to q,
    k and v (gradients in that dtype; not with block_table).
    With return_attn_probs: (out, softmax_lse [nheads, total_q] (float32), attn_probs [batch,
    nheads, max_seqlen_q, max_seqlen_k] in q's dtype, 0 past each sequence's lengths).

    Example
    -------
    >>> import torch, mha
    >>> cu = torch.tensor([0, 3, 10], dtype=torch.int32)        # lengths 3 and 7
    >>> q = torch.randn(10, 4, 32)
    >>> mha.flash_attn_varlen_func(q, q, q, cu, cu, 7, 7, causal=True).shape
    torch.Size([10, 4, 32])
    """
    return _varlen("flash_attn_varlen_func", q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                   max_seqlen_k, dropout_p, softmax_scale, causal, window_size, softcap,
                   alibi_slopes, return_attn_probs, block_table)


def _varlen(fn, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
            softmax_scale, causal, window_size, softcap, alibi_slopes, return_attn_probs,
            block_table):
    """flash_attn_varlen_func for the public function fn (see its docstring)."""
    if block_table is not None:
        return _varlen_paged(fn, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                             max_seqlen_k, dropout_p, softmax_scale, causal, window_size,
                             softcap, alibi_slopes, return_attn_probs, block_table)
    layout = "[total_tokens, nheads, headdim]"
    q, k, v = _as_inputs(fn, "qkv", (q, k, v), 3, layout, core=True)
    _check_headdim(fn, q)
    cq = _int32_vector(fn, "cu_seqlens_q", cu_seqlens_q, "[batch + 1]")
    ck = _int32_vector(fn, "cu_seqlens_k", cu_seqlens_k, "[batch + 1]")
    if cq.numel() < 1 or ck.numel() != cq.numel():
        raise ArgumentError(f"{fn}: cu_seqlens_q, cu_seqlens_k: got shapes {_shape(cq)}, "
                         f"{_shape(ck)}, expected [batch + 1] both")
    _check_max_seqlen(fn, "max_seqlen_q", max_seqlen_q, cq)
    _check_max_seqlen(fn, "max_seqlen_k", max_seqlen_k, ck)
    if return_attn_probs and dropout_p:
        raise ArgumentError(f"{fn}: return_attn_probs with dropout_p {dropout_p}: not supported "
                         "(the probabilities are recomputed per sequence, which would draw "
                         "another dropout mask; flash_attn_func returns them with dropout)")
    batch = cq.numel() - 1
    opts = _Options(fn, causal, window_size, alibi_slopes, batch, q.shape[1])
    params = _params(fn, dropout_p, softmax_scale, softcap)
    call = VarlenCall(params, opts.mask(), cq, ck)
    qs = _scaled_q(q, softmax_scale)
    out = _run(call, qs, k, v)
    if not return_attn_probs:
        return out
    probs = torch.zeros((batch, q.shape[1], max_seqlen_q, max_seqlen_k), dtype=T._F32)
    with torch.no_grad():
        for s in range(batch):
            i0, i1, j0, j1 = int(cq[s]), int(cq[s + 1]), int(ck[s]), int(ck[s + 1])
            one = T.CoreCall(params, opts.mask(s), weights=True)
            one.forward(*(t[a:b].transpose(0, 1)[None] for t, a, b in
                          ((qs, i0, i1), (k, j0, j1), (v, j0, j1))))
            probs[s, :, :i1 - i0, :j1 - j0] = one.weights[0]
    return out, call.lse, probs.to(q.dtype)


def _varlen_paged(fn, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                  return_attn_probs, block_table):
    """flash_attn_varlen_func with block_table (see its docstring): mha_attn_varlen_paged."""
    if dropout_p:
        raise ArgumentError(f"{fn}: dropout_p: got {dropout_p!r} with block_table, expected 0 "
                            "(paged caches are for inference, as in FlashAttention)")
    if return_attn_probs:
        raise NotImplementedError(f"{fn}: return_attn_probs with block_table (paged caches) is "
                                  "not implemented")
    q, k, v = T.as_core_inputs(fn, "qkv", (q, k, v))
    for name, t, nd, layout in (("q", q, 3, "[total_q, nheads, headdim]"),
                                ("k", k, 4, "[num_blocks, page_block_size, nheads_k, headdim] "
                                 "(a pool of pages: block_table is given)"),
                                ("v", v, 4, "[num_blocks, page_block_size, nheads_k, headdim_v] "
                                 "as k")):
        if t.dim() != nd:
            raise ArgumentError(f"{fn}: {name}: got shape {_shape(t)}, expected {layout}")
    _check_headdim(fn, q)
    H, D = q.shape[1], q.shape[2]
    if k.shape[3] != D or tuple(v.shape[:3]) != tuple(k.shape[:3]):
        raise ArgumentError(f"{fn}: k, v: got shapes {_shape(k)}, {_shape(v)}, expected "
                            f"[num_blocks, page_block_size, nheads_k, {D}] and v the same but "
                            "its headdim (pools of pages: block_table is given)")
    if k.shape[2] == 0 or H % k.shape[2]:
        raise ArgumentError(f"{fn}: k.shape[2]: got {k.shape[2]}, expected a divisor of q's {H} "
                            "heads (grouped-query attention)")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError(f"{fn}: block_table: no gradient through paged caches (inference "
                           "only, as in FlashAttention): call it under torch.no_grad() or "
                           "torch.inference_mode(), or detach q, k and v")
    cq = _int32_vector(fn, "cu_seqlens_q", cu_seqlens_q, "[batch + 1]")
    ck = _int32_vector(fn, "cu_seqlens_k", cu_seqlens_k, "[batch + 1]")
    if cq.numel() < 1 or ck.numel() != cq.numel():
        raise ArgumentError(f"{fn}: cu_seqlens_q, cu_seqlens_k: got shapes {_shape(cq)}, "
                            f"{_shape(ck)}, expected [batch + 1] both")
    batch = cq.numel() - 1
    block_table = _block_table(fn, block_table, batch)
    rows = block_table.shape[1] * k.shape[1]  # a sequence's capacity
    ks = ck.tolist()
    for s, n in enumerate(ks):
        if (s == 0 and n != 0) or (s > 0 and n < ks[s - 1]):
            raise ArgumentError(f"{fn}: cu_seqlens_k[{s}]: got {n}, expected "
                                f"{'0' if s == 0 else f'>= {ks[s - 1]}'} (prefix sums of the "
                                "sequences' keys, from 0, non-decreasing)")
        if s > 0 and n - ks[s - 1] > rows:
            raise ArgumentError(f"{fn}: cu_seqlens_k: got {n - ks[s - 1]} keys for sequence "
                                f"{s - 1}, expected at most {rows} (block_table's "
                                f"{block_table.shape[1]} blocks x page_block_size {k.shape[1]})")
    _check_max_seqlen(fn, "max_seqlen_q", max_seqlen_q, cq)
    _check_max_seqlen(fn, "max_seqlen_k", max_seqlen_k, ck)
    seqlens_k = (ck[1:] - ck[:-1]).to(_I32).contiguous()
    opts = _Options(fn, causal, window_size, alibi_slopes, batch, H)
    params = _params(fn, 0.0, softmax_scale, softcap)
    qs = _scaled_q(q, softmax_scale)
    out = torch.empty((q.shape[0], H, v.shape[3]), dtype=q.dtype)
    tq, to = T.view(qs), T.view(out)
    tk, tv = (T.view(t.transpose(1, 2)) for t in (k, v))  # [P, Hkv, page, D] views
    mask = opts.mask()
    c = _lib.ctx()
    _lib.check(lib.mha_attn_varlen_paged(
        c, ctypes.byref(params), ctypes.byref(tq), ctypes.byref(tk), ctypes.byref(tv),
        _table_ptr(block_table), block_table.shape[1],
        ctypes.c_void_p(cq.data_ptr()), ctypes.c_void_p(seqlens_k.data_ptr()), batch,
        ctypes.byref(mask.c), ctypes.byref(to), None), c)
    return out


# ------------------------------------------------------------------------------------------
# The packed variants: q, k, v (or k, v) stacked in one tensor, as a fused projection makes them
# ------------------------------------------------------------------------------------------
def _unpack(fn, name, t, n, nd, layout):
    """The n tensors stacked in dimension -3 of t, an nd-dimensional tensor (FlashAttention's
    qkv: 3, kv: 2), as views (no copy: gradients flow back into t, stacked the same way)."""
    if not isinstance(t, torch.Tensor):
        raise ArgumentError(f"{fn}: {name}: got {type(t).__name__}, expected a torch.Tensor "
                            f"{layout}")
    if t.dim() != nd or t.shape[-3] != n:
        raise ArgumentError(f"{fn}: {name}: got shape {_shape(t)}, expected {layout}")
    return t.unbind(-3)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False,
                              window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                              deterministic=False, return_attn_probs=False):
    """FlashAttention 2's ``flash_attn_qkvpacked_func``: ``flash_attn_func`` of q, k, v stacked
    in one tensor (the output of a fused qkv projection), read in place.

    qkv : Tensor [batch, seqlen, 3, nheads, headdim]
        q = qkv[:, :, 0], k = qkv[:, :, 1], v = qkv[:, :, 2] (an error about q, k or v names
        these); its gradient comes back stacked the same way.

    The other arguments and the returns: ``flash_attn_func``'s.

    >>> import torch, mha
    >>> qkv = torch.randn(2, 16, 3, 4, 32, requires_grad=True)
    >>> mha.flash_attn_qkvpacked_func(qkv, causal=True).sum().backward(); qkv.grad.shape
    torch.Size([2, 16, 3, 4, 32])
    """
    fn = "flash_attn_qkvpacked_func"
    q, k, v = _unpack(fn, "qkv", qkv, 3, 5, "[batch, seqlen, 3, nheads, headdim]")
    return _dense(fn, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                  alibi_slopes, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False,
                             window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                             deterministic=False, return_attn_probs=False):
    """FlashAttention 2's ``flash_attn_kvpacked_func``: ``flash_attn_func`` with k and v stacked
    in one tensor, read in place.

    q : Tensor [batch, seqlen_q, nheads, headdim]
    kv : Tensor [batch, seqlen_k, 2, nheads_k, headdim]
        k = kv[:, :, 0], v = kv[:, :, 1]; nheads_k a divisor of nheads (grouped-query
        attention); its gradient comes back stacked the same way.

    The other arguments and the returns: ``flash_attn_func``'s.
    """
    fn = "flash_attn_kvpacked_func"
    k, v = _unpack(fn, "kv", kv, 2, 5, "[batch, seqlen_k, 2, nheads_k, headdim]")
    return _dense(fn, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                  alibi_slopes, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False, window_size=(-1, -1),
                                     softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """FlashAttention 2's ``flash_attn_varlen_qkvpacked_func``: ``flash_attn_varlen_func`` of
    packed sequences whose q, k, v are stacked in one tensor, read in place.

    qkv : Tensor [total_tokens, 3, nheads, headdim]
        q = qkv[:, 0], k = qkv[:, 1], v = qkv[:, 2]; its gradient comes back stacked the same
        way.
    cu_seqlens : int32 Tensor [batch + 1]
        The sequences' prefix sums, for the queries and the keys.
    max_seqlen : int
        At least the longest sequence.

    The other arguments and the returns: ``flash_attn_varlen_func``'s.
    """
    fn = "flash_attn_varlen_qkvpacked_func"
    q, k, v = _unpack(fn, "qkv", qkv, 3, 4, "[total_tokens, 3, nheads, headdim]")
    return _varlen(fn, q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p,
                   softmax_scale, causal, window_size, softcap, alibi_slopes, return_attn_probs,
                   None)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, dropout_p=0.0, softmax_scale=None, causal=False,
                                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                                    deterministic=False, return_attn_probs=False):
    """FlashAttention 2's ``flash_attn_varlen_kvpacked_func``: ``flash_attn_varlen_func`` with
    k and v stacked in one tensor, read in place.

    q : Tensor [total_q, nheads, headdim]
    kv : Tensor [total_k, 2, nheads_k, headdim]
        k = kv[:, 0], v = kv[:, 1]; nheads_k a divisor of nheads; its gradient comes back
        stacked the same way.

    The other arguments and the returns: ``flash_attn_varlen_func``'s.
    """
    fn = "flash_attn_varlen_kvpacked_func"
    k, v = _unpack(fn, "kv", kv, 2, 4, "[total_k, 2, nheads_k, headdim]")
    return _varlen(fn, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                   dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                   return_attn_probs, None)


# ------------------------------------------------------------------------------------------
# flash_attn_with_kvcache
# ------------------------------------------------------------------------------------------
def _no_copy(fn, name, t):
    """A cache is updated in place: ValueError for strides that as_input would copy."""
    if isinstance(t, torch.Tensor) and t.dim() and t.stride(-1) != 1 and t.shape[-1] > 1:
        raise ArgumentError(f"{fn}: {name}.stride(): got {tuple(t.stride())}, expected the "
                         "innermost dimension contiguous (the cache is updated in place, so it "
                         "cannot be copied)")


_NO_BLOCKS = ctypes.c_int32(0)  # what an empty block_table points the library at (not NULL)


def _table_ptr(t):
    """The address of a block_table for the library: an empty one (batch 0) has no storage
    (data_ptr() 0), which the library takes for a missing table when max_blocks > 0; it never
    reads a table of no sequences, so any valid address does."""
    return ctypes.c_void_p(t.data_ptr() if t.numel() else ctypes.addressof(_NO_BLOCKS))


def _block_table(fn, t, batch):
    """FlashAttention's block_table: an int32 CPU tensor [batch, max_num_blocks_per_seq],
    contiguous (a copy when it is not: it is only read)."""
    what = f"[{batch}, max_num_blocks_per_seq] (batch, blocks)"
    if not isinstance(t, torch.Tensor):
        raise ArgumentError(f"{fn}: block_table: got {type(t).__name__}, expected an int32 "
                            f"tensor {what}")
    if t.device.type != "cpu":
        raise ArgumentError(f"{fn}: block_table: got a tensor on {t.device}, expected a CPU "
                            "tensor")
    if t.dtype != _I32:
        raise ArgumentError(f"{fn}: block_table.dtype: got {t.dtype}, expected torch.int32 (as "
                            "FlashAttention)")
    if t.dim() != 2 or t.shape[0] != batch:
        raise ArgumentError(f"{fn}: block_table: got shape {_shape(t)}, expected {what}")
    return t.contiguous()


def _check_cache_lengths(fn, lens, new, rows):
    """0 <= lens[b] and lens[b] + new <= rows for each b, with the library's message."""
    for b, n in enumerate(lens.tolist()):
        if n < 0:
            raise ArgumentError(f"{fn}: cache_seqlens[{b}]: got {n}, expected >= 0 (tokens in the "
                                "cache)")
        if n + new > rows:
            raise ArgumentError(f"{fn}: cache_seqlens[{b}]: got {n}, expected at most {rows - new} "
                                f"(cache overflow: {n} + {new} new tokens exceed the cache's "
                                f"{rows} rows)")


def _rotary(x, cos, sin, pos, interleaved):
    """x [B, T, H, D] with its first rotary_dim = 2 cos.shape[1] dimensions rotated by the
    angles of row pos[b, t] of cos, sin [seqlen_ro, rotary_dim / 2] (FlashAttention's
    apply_rotary_emb): pairs (2i, 2i + 1) when interleaved (GPT-J), else (i, i + rotary_dim / 2)
    (GPT-NeoX); the library's mha_rotary (float32, rounded once to x's dtype). A new tensor."""
    out = x.contiguous().clone()
    c, s = cos.float().contiguous(), sin.float().contiguous()
    p = pos.to(_I32).contiguous()
    tx, tc, ts = T.view(out.transpose(1, 2)), T.view(c), T.view(s)
    ctx = _lib.ctx()
    _lib.check(lib.mha_rotary(ctx, ctypes.byref(tx), ctypes.byref(tc), ctypes.byref(ts),
                              ctypes.c_void_p(p.data_ptr()), 1 if interleaved else 0), ctx)
    return out


def _kv_rotary(fn, rotary_cos, rotary_sin, q, k, lens, causal, window, seqlen_cache,
               interleaved):
    """q and k rotated as flash_attn_with_kvcache rotates them (see its docstring)."""
    if (rotary_cos is None) != (rotary_sin is None):
        raise ArgumentError(f"{fn}: rotary_cos, rotary_sin: got only "
                         f"{'rotary_cos' if rotary_sin is None else 'rotary_sin'}, expected both")
    if k is None:
        raise ArgumentError(f"{fn}: rotary_cos: got rotary embeddings without k, v, expected the "
                         "new tokens' k and v too (they are rotated at their positions)")
    for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or \
                not t.is_floating_point() or t.dim() != 2:
            got = f"{t.dtype} {_shape(t)} on {t.device}" if isinstance(t, torch.Tensor) \
                else type(t).__name__
            raise ArgumentError(f"{fn}: {name}: got {got}, expected a float CPU tensor "
                             "[seqlen_ro, rotary_dim / 2]")
    if rotary_cos.shape != rotary_sin.shape or rotary_cos.shape[1] == 0 or \
            2 * rotary_cos.shape[1] > q.shape[3]:
        raise ArgumentError(f"{fn}: rotary_sin: got shapes {_shape(rotary_cos)}, "
                         f"{_shape(rotary_sin)}, expected two equal [seqlen_ro, rotary_dim / 2] "
                         f"with 0 < rotary_dim <= headdim {q.shape[3]}")
    B, L, Lnew = q.shape[0], q.shape[1], k.shape[1]
    base = lens.long().unsqueeze(1)
    kpos = base + torch.arange(Lnew)
    # q's rows at their own positions when causal or local, as FlashAttention's, whose window
    # is local when a side is bounded (window: _window's, any negative side unbounded) and
    # narrower than the cache (a side >= seqlen_cache, the cache's rows, counts as unbounded:
    # it excludes no key)
    local = window is not None and any(0 <= w < seqlen_cache for w in window)
    qpos = base + torch.arange(L) if causal or local else base.expand(B, L)
    need = int(max(kpos.max() if Lnew else 0, qpos.max() if L else 0)) + 1
    if need > rotary_cos.shape[0]:
        raise ArgumentError(f"{fn}: rotary_cos: got {rotary_cos.shape[0]} positions, expected at "
                         f"least {need} (cache_seqlens + the new tokens)")
    return (_rotary(q, rotary_cos, rotary_sin, qpos, interleaved),
            _rotary(k, rotary_cos, rotary_sin, kpos, interleaved))


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None,
                            block_table=None, softmax_scale=None, causal=False,
                            window_size=(-1, -1), softcap=0.0, rotary_interleaved=True,
                            alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """FlashAttention 2's ``flash_attn_with_kvcache`` on the CPU (inference: no gradient), with
    its parameters in its order: appends k, v to the caches in place at cache_seqlens, then
    attends q to each sequence's cache_seqlens[b] + seqlen_new keys.

    Parameters
    ----------
    q : Tensor [batch, seqlen_q, nheads, headdim], float32, bfloat16 or float16 (the caches,
        k and v the same)
    k_cache : Tensor [batch_cache, seqlen_cache, nheads_k, headdim]
    v_cache : Tensor [batch_cache, seqlen_cache, nheads_k, headdim_v]
        Updated in place (rows cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1 of the
        cache of batch b); any strides with the innermost one 1 (never copied), but with new
        tokens not a view whose elements share memory (expand()); without them the caches
        are only read and may (k_cache = v_cache, a prompt's cache expand()ed over the batch).
        batch_cache is batch without cache_batch_idx.
    k, v : Tensor [batch, seqlen_new, nheads_k, headdim(_v)], optional
        The new tokens' keys and values (both or neither).
    rotary_cos, rotary_sin : Tensor [seqlen_ro, rotary_dim / 2], optional
        Rotary embeddings (needs k and v): the new keys are rotated at positions
        cache_seqlens[b], cache_seqlens[b] + 1, ... before they are appended; q is rotated at
        positions cache_seqlens[b] + i (query row i) when causal or with a window (one whose
        bounded side is narrower than the cache's seqlen_cache rows, as FlashAttention
        decides), else every row at cache_seqlens[b]; the first rotary_dim dimensions of each head, pairs (0, 1),
        (2, 3), ... when rotary_interleaved (GPT-J), else (0, rotary_dim / 2), ... (GPT-NeoX).
        Computed in float32 and rounded once to q's dtype. q itself is not modified.
    cache_seqlens : int or int32 Tensor [batch], optional
        The tokens already in each cache. Not modified (as FlashAttention: advance it
        yourself). None, as in FlashAttention: every cache is full, q attends to all
        seqlen_cache rows; then k and v must be None (ValueError, as FlashAttention refuses
        new tokens without cache_seqlens).
    cache_batch_idx : int32 Tensor [batch], optional
        The cache of batch b is batch cache_batch_idx[b] of k_cache, v_cache (None: b). With
        repeated indices and new tokens, the last batch writing an index wins.
    cache_leftpad : int32 Tensor [batch], optional
        Where each sequence starts in its cache (None: 0): its keys are rows cache_leftpad[b]
        .. cache_seqlens[b] + seqlen_new - 1, positions (causal, window, ALiBi) counted from
        cache_leftpad[b]; 0 <= cache_leftpad[b] <= cache_seqlens[b] (seqlen_cache when None).
        Not with rotary
        embeddings (NotImplementedError).
    block_table : int32 Tensor [batch, max_num_blocks_per_seq], optional
        Paged caches (vLLM's PagedAttention): k_cache, v_cache are then pools of pages
        [num_blocks, page_block_size, nheads_k, headdim(_v)], and key j of sequence b is row
        j % page_block_size of page block_table[b, j // page_block_size] (any page size: mha
        has no multiple-of-256 rule). Each sequence holds up to max_num_blocks_per_seq *
        page_block_size tokens; the blocks it uses must name pages of the pool, and a page the
        new tokens go to must be used by no other block (sequences may share pages they only
        read, e.g. a common prompt's). Not with cache_batch_idx or cache_leftpad (as
        FlashAttention).
    softmax_scale, causal, window_size, softcap, alibi_slopes
        As in ``flash_attn_func``, aligned bottom-right to each sequence's keys (query row i
        at key position i + seqlen_k - seqlen_q).
    num_splits : int
        Accepted and ignored: mha splits the cache into fixed chunks, and the result does not
        depend on any split.
    return_softmax_lse : bool
        Also return softmax_lse [batch, nheads, seqlen_q] (float32; -inf for a row that sees no
        key).

    Returns
    -------
    out : Tensor [batch, seqlen_q, nheads, headdim_v] (contiguous) in q's dtype, and
    softmax_lse with return_softmax_lse.

    Example
    -------
    >>> import torch, mha
    >>> k_cache = torch.zeros(1, 64, 2, 32); v_cache = torch.zeros(1, 64, 2, 32)
    >>> q, k, v = torch.randn(1, 1, 8, 32), torch.randn(1, 1, 2, 32), torch.randn(1, 1, 2, 32)
    >>> mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=5).shape
    torch.Size([1, 1, 8, 32])
    """
    fn = "flash_attn_with_kvcache"
    layout = "[batch, seqlen, nheads, headdim]"
    paged = block_table is not None
    if paged and cache_batch_idx is not None:
        raise ArgumentError(f"{fn}: cache_batch_idx: got a tensor with block_table, expected None "
                            "(paged caches do not support cache_batch_idx, as FlashAttention)")
    if paged and cache_leftpad is not None:
        raise NotImplementedError(f"{fn}: cache_leftpad with block_table (paged caches) is not "
                                  "implemented (nor in FlashAttention)")
    if isinstance(num_splits, bool) or not isinstance(num_splits, numbers.Integral) or \
            num_splits < 0:
        raise ArgumentError(f"{fn}: num_splits: got {num_splits!r}, expected an int >= 0")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        _no_copy(fn, name, t)
    q, k_cache, v_cache = _as_inputs(fn, ["q", "k_cache", "v_cache"], [q, k_cache, v_cache], 4,
                                     layout, core=True)
    _check_headdim(fn, q)
    B, L, H = q.shape[0], q.shape[1], q.shape[2]
    # the caches against q, their batch apart (cache_batch_idx may pick among more or fewer;
    # paged: pages)
    _check_kv(fn, q, k_cache, v_cache, "k_cache", "v_cache", batch=k_cache.shape[0])
    if paged:
        block_table = _block_table(fn, block_table, B)
    seqlen_cache = block_table.shape[1] * k_cache.shape[1] if paged else k_cache.shape[1]
    if (k is None) != (v is None):
        raise ArgumentError(f"{fn}: k, v: got only {'k' if v is None else 'v'}, expected both "
                         "(new tokens) or neither")
    if k is not None:
        k, v = _as_inputs(fn, "kv", (k, v), 4, layout, core=True)
        if k.dtype != q.dtype:
            raise RuntimeError(f"{fn}: k.dtype: got {k.dtype}, expected {q.dtype} (the dtype of "
                               "q and the caches)")
        _check_kv(fn, q, k, v)
        hk = (k_cache.shape[2], k_cache.shape[3], v_cache.shape[3])
        if (k.shape[2], k.shape[3], v.shape[3]) != hk:
            raise ArgumentError(f"{fn}: k, v: got shapes {_shape(k)}, {_shape(v)}, expected "
                             f"nheads_k {hk[0]} and headdims {hk[1]}, {hk[2]} as the caches")
    if cache_seqlens is None:
        # FlashAttention without seqlens_k attends to the whole cache (seqlen_k is the cache's
        # size) and refuses new tokens; the library's NULL would mean empty caches
        if k is not None:
            raise ArgumentError(f"{fn}: cache_seqlens: got None with new tokens k, v, expected "
                             "the tokens already in each cache (an int or an int32 tensor "
                             "[batch]), as FlashAttention")
        lens = torch.full((B,), seqlen_cache, dtype=_I32)
    elif isinstance(cache_seqlens, numbers.Integral) and not isinstance(cache_seqlens, bool):
        lens = torch.full((B,), int(cache_seqlens), dtype=_I32)
    else:
        lens = _int32_vector(fn, "cache_seqlens", cache_seqlens, f"[{B}] (batch) or an int")
        if lens.numel() != B:
            raise ArgumentError(f"{fn}: cache_seqlens: got shape {_shape(lens)}, expected [{B}] "
                             "(batch) or an int")
    rows = None  # the cache batch of each batch (cache_batch_idx), and where it starts (leftpad)
    if cache_batch_idx is not None:
        rows = _int32_vector(fn, "cache_batch_idx", cache_batch_idx, f"[{B}] (batch)")
        if rows.numel() != B:
            raise ArgumentError(f"{fn}: cache_batch_idx: got shape {_shape(rows)}, expected [{B}] "
                             "(batch)")
        bad = [int(x) for x in rows if not 0 <= int(x) < k_cache.shape[0]]
        if bad:
            raise ArgumentError(f"{fn}: cache_batch_idx: got {bad[0]}, expected an index into the "
                             f"caches' {k_cache.shape[0]} batches")
    elif not paged and k_cache.shape[0] != B:
        raise ArgumentError(f"{fn}: k_cache: got shape {_shape(k_cache)}, expected batch {B} as q "
                         "(or pass cache_batch_idx)")
    if rows is not None or cache_leftpad is not None:
        # these run one call per sequence (below): what differs between sequences is checked
        # before the first call appends, so that nothing is written when a later one would
        # fail, and the message has the sequence's own index (each call sees a batch of one)
        _check_cache_lengths(fn, lens, 0 if k is None else k.shape[1], k_cache.shape[1])
    starts = None
    if cache_leftpad is not None:
        starts = _int32_vector(fn, "cache_leftpad", cache_leftpad, f"[{B}] (batch)")
        if starts.numel() != B:
            raise ArgumentError(f"{fn}: cache_leftpad: got shape {_shape(starts)}, expected [{B}] "
                             "(batch)")
        for b in range(B):
            if not 0 <= int(starts[b]) <= int(lens[b]):
                raise ArgumentError(f"{fn}: cache_leftpad[{b}]: got {int(starts[b])}, expected 0 .. "
                                 f"cache_seqlens[{b}] = {int(lens[b])} (where the sequence "
                                 "starts in its cache)")
        if rotary_cos is not None or rotary_sin is not None:
            raise NotImplementedError(f"{fn}: cache_leftpad with rotary embeddings is not "
                                      "implemented")
    opts = _Options(fn, causal, window_size, alibi_slopes, B, H)
    params = _params(fn, 0.0, softmax_scale, softcap)
    if rotary_cos is not None or rotary_sin is not None:
        q, k = _kv_rotary(fn, rotary_cos, rotary_sin, q, k, lens, causal, opts.window,
                          seqlen_cache, rotary_interleaved)
    out = torch.empty_permuted((B, H, L, v_cache.shape[3]), _HEADS_SECOND, dtype=q.dtype)
    lse = torch.empty((B, H, L), dtype=torch.float32) if return_softmax_lse else None
    tq, tkc, tvc, tk, tv = _heads_second(_scaled_q(q, softmax_scale), k_cache, v_cache, k, v)

    def call(b0, b1, kc, vc, ln, mask):
        c = _lib.ctx()
        tn = [T.view(t[b0:b1]) if t is not None else None for t in (tk, tv)]
        views = [T.view(t) for t in (tq[b0:b1], kc, vc, out[b0:b1])]
        tl = T.view(lse[b0:b1]) if lse is not None else None
        new = [ctypes.byref(t) if t is not None else None for t in tn]
        args = (ctypes.c_void_p(ln.data_ptr()), ctypes.byref(mask.c), ctypes.byref(views[3]),
                ctypes.byref(tl) if tl is not None else None)
        if paged:
            st = lib.mha_attn_kvcache_paged(
                c, ctypes.byref(params), ctypes.byref(views[0]), ctypes.byref(views[1]),
                ctypes.byref(views[2]), _table_ptr(block_table),
                block_table.shape[1], *new, *args)
        else:
            st = lib.mha_attn_kvcache(c, ctypes.byref(params), ctypes.byref(views[0]),
                                      ctypes.byref(views[1]), ctypes.byref(views[2]), *new, *args)
        _lib.check(st, c)

    if rows is None and starts is None:
        call(0, B, tkc, tvc, lens, opts.mask())
    else:  # one sequence at a time, on a view of its cache from where it starts
        for b in range(B):
            r = int(rows[b]) if rows is not None else b
            s0 = int(starts[b]) if starts is not None else 0
            ln = torch.tensor([int(lens[b]) - s0], dtype=_I32)
            call(b, b + 1, tkc[r:r + 1, :, s0:], tvc[r:r + 1, :, s0:], ln, opts.mask(b))
    out = out.transpose(1, 2)
    return (out, lse) if return_softmax_lse else out
