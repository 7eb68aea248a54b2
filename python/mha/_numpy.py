"""mha._numpy - the attention core on NumPy arrays: ``mha.attention`` and
``mha.attention_backward`` (no PyTorch needed).

q, k, v and the gradients are passed to the library as views of the caller's arrays (strides
in elements, as NumPy's), so a slice of a packed QKV array is read in place, without a copy.
float32 and float16 are accepted (no silent conversion; NumPy has no bfloat16): q, k, v, out
and the gradients of one dtype, lse float32; the innermost dimension must be contiguous. Masks
are converted to the layouts the library reads (see ``attention``).
"""
import ctypes
import math
import numbers

import numpy as np

from . import _lib
from ._lib import ArgumentError

_F32 = np.dtype(np.float32)
_F16 = np.dtype(np.float16)
_MHA_DTYPE = {_F32: 0, _F16: 4}  # NumPy dtype -> mha_dtype (MHA_DTYPE_F32, MHA_DTYPE_F16)

_CAUSAL = {False: _lib.CAUSAL_NONE, None: _lib.CAUSAL_NONE, True: _lib.CAUSAL_TOP_LEFT,
           "top_left": _lib.CAUSAL_TOP_LEFT, "bottom_right": _lib.CAUSAL_BOTTOM_RIGHT}


def view(fn, name, a, ndim, dtype=_F32, why="the log-sum-exp is float32"):
    """The mha_tensor view of an ndarray of dtype with ndim dimensions, without copying it.

    Raises ValueError naming fn and the argument: not an ndarray, another dtype (why: the
    reason dtype is expected), another number of dimensions, or strides the library cannot
    read (an innermost stride other than 1 element, negative strides, strides that are not
    whole elements)."""
    if not isinstance(a, np.ndarray):
        hint = (" (for torch tensors: mha.functional.scaled_dot_product_attention)"
                if type(a).__module__.startswith("torch") else "")
        raise ArgumentError(f"{fn}: {name}: got {type(a).__name__}, expected a numpy.ndarray{hint}")
    if a.dtype != dtype:
        raise ArgumentError(f"{fn}: {name}.dtype: got {a.dtype}, expected {dtype} ({why})")
    if a.ndim != ndim:
        raise ArgumentError(f"{fn}: {name}.ndim: got {a.ndim}, expected {ndim}")
    size = dtype.itemsize
    strides = []
    for d, (n, s) in enumerate(zip(a.shape, a.strides)):
        if n <= 1:  # one position: its stride is never used (NumPy leaves any value there)
            s = size if d == ndim - 1 else 0
        if s < 0 or s % size or (d == ndim - 1 and s != size):
            raise ArgumentError(
                f"{fn}: {name}.strides: got {a.strides} bytes, expected non-negative whole "
                f"{dtype} elements with the innermost dimension contiguous (pass "
                f"np.ascontiguousarray({name}))")
        strides.append(s // size)
    return _lib.tensor(a.ctypes.data, a.shape, strides, _MHA_DTYPE[dtype])


def _dtype(fn, q):
    """q's dtype, the one of q, k, v, out and the gradients: float32 or float16."""
    if isinstance(q, np.ndarray) and q.dtype not in _MHA_DTYPE:
        raise ArgumentError(f"{fn}: q.dtype: got {q.dtype}, expected float32 or float16 (convert "
                         "it with q.astype(np.float32))")
    return q.dtype if isinstance(q, np.ndarray) else _F32


def _views(fn, dtype, names, arrays, ndim=4):
    """The views of arrays of dtype (q's: the message says so)."""
    return [view(fn, n, a, ndim, dtype, f"q's dtype: q, k, v, out, dout and the gradients "
                 "have one") for n, a in zip(names, arrays)]


def _causal(fn, causal):
    try:
        return _CAUSAL[causal]
    except (KeyError, TypeError):
        raise ArgumentError(f"{fn}: causal: got {causal!r}, expected False, True, \"top_left\" or "
                         "\"bottom_right\"") from None


def _mask(fn, mask, causal, B, H, L, S, dtype=_F32):
    """The mha_mask for mask (broadcastable to [B, H, L, S]; bool, float32 or q's dtype, read
    as float32) and causal, and the arrays it points to (kept alive by the caller for the
    duration of the call)."""
    m = _lib.Mask()
    m.causal = _causal(fn, causal)
    if mask is None:
        return m, None
    if not isinstance(mask, np.ndarray):
        raise ArgumentError(f"{fn}: mask: got {type(mask).__name__}, expected a numpy.ndarray")
    is_bool = mask.dtype == np.bool_
    if not is_bool and mask.dtype not in (_F32, dtype):
        raise ArgumentError(f"{fn}: mask.dtype: got {mask.dtype}, expected bool (True = masked) "
                         f"or float32{' or ' + str(dtype) if dtype != _F32 else ''} (added to "
                         "the scaled scores)")
    if not is_bool:
        mask = mask.astype(_F32, copy=False)  # the library reads float masks as float32
    full = (B, H, L, S)
    try:
        fits = np.broadcast_shapes(mask.shape, full) == full
    except ValueError:
        fits = False
    if not fits:
        raise ArgumentError(f"{fn}: mask.shape: got {mask.shape}, expected a shape broadcastable "
                         f"to [B, H, L, S] = {list(full)}")
    if all(n == 1 for n in mask.shape[:-2]):  # one [L, S] mask for every batch and head
        arr = np.ascontiguousarray(np.broadcast_to(mask.reshape(mask.shape[-2:]), (L, S)))
    elif is_bool and mask.ndim == 4 and mask.shape[:3] == (B, 1, 1):  # key padding [B, S]
        arr = np.ascontiguousarray(np.broadcast_to(mask, (B, 1, 1, S)).reshape(B, S))
        m.key_padding = arr.ctypes.data
        return m, arr
    else:  # anything else, one [L, S] mask per batch and head
        arr = np.ascontiguousarray(np.broadcast_to(mask, full)).reshape(B * H, L, S)
        m.attn_batched = 1
    if is_bool:
        m.attn_bool = arr.ctypes.data
    else:
        m.attn_float = arr.ctypes.data
    return m, arr


def _params(fn, scale, E):
    p = _lib.lib.mha_attn_params_default()
    if scale is None:
        p.scale = 1.0 / math.sqrt(E) if E > 0 else 0.0
    else:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise ArgumentError(f"{fn}: scale: got {scale!r}, expected a number or None")
        # the library reads 0 as "the default", which would be a silent change; so does a
        # nonzero scale float32 rounds to 0
        if _lib.float32(scale) == 0:
            raise ArgumentError(f"{fn}: scale: got {scale!r}, expected a nonzero number float32 "
                                "can hold, |scale| >= 1.4e-45 (or None: 1/sqrt(E))")
        p.scale = float(scale)
    return p


def attention(q, k, v, *, mask=None, causal=False, scale=None, return_lse=False):
    """Scaled dot-product attention on float32 or float16 NumPy arrays (mha's fused forward).

    ``out = softmax(q @ k^T * scale + mask) @ v`` per batch and head.

    MASK CONVENTION: a bool mask is True where attention is NOT allowed (masked out), as in
    mha and ``torch.nn.MultiheadAttention`` -- the OPPOSITE of
    ``torch.nn.functional.scaled_dot_product_attention``, where True means "take part".
    A query row whose every key is masked gives 0 (not NaN).

    Parameters
    ----------
    q : float32 or float16 ndarray [batch, heads, L, E]
    k : ndarray [batch, heads_kv, S, E], q's dtype
    v : ndarray [batch, heads_kv, S, Ev], q's dtype
        float16: computed in float32 on the exact values, out rounded to float16 once (to
        nearest even). heads_kv = heads, or a divisor of it (grouped-query attention: query
        head h uses key/value head h // (heads / heads_kv), without a copy). Any strides whose
        innermost one is 1 element: views such as ``qkv[:, :, :, 0]`` of a packed array are
        read in place, not copied. No conversion is made: other dtypes, and
        other strides, raise ValueError (use ``np.ascontiguousarray(x, np.float32)``).
    mask : bool, float32 or q's dtype ndarray broadcastable to [batch, heads, L, S], optional
        bool: True = masked (excluded). float: added to the scaled scores, in float32 (-inf
        masks).
        An [L, S] mask (or one whose leading dimensions are all 1) is shared by every batch
        and head; a bool [batch, 1, 1, S] mask is a key padding mask; any other shape is
        expanded to one [L, S] mask per batch and head.
    causal : False, True, "top_left" or "bottom_right"
        True or "top_left": query i sees keys j <= i (PyTorch's is_causal);
        "bottom_right": keys j <= i + S - L (FlashAttention's alignment when L != S).
    scale : float, optional
        Score scale; None: 1/sqrt(E).
    return_lse : bool
        Also return the per-row log-sum-exp of the scaled, masked scores (-inf for a fully
        masked row), which ``attention_backward`` needs.

    Returns
    -------
    out : ndarray [batch, heads, L, Ev], q's dtype
    lse : float32 ndarray [batch, heads, L] (only with return_lse=True; float32 for float16
        q too)

    Raises ValueError for wrong dtypes, shapes or strides (with the library's message for
    shapes), MemoryError when out of memory.

    Example
    -------
    >>> import numpy as np, mha
    >>> q = np.random.rand(2, 4, 16, 32).astype(np.float32)
    >>> out, lse = mha.attention(q, q, q, causal=True, return_lse=True)
    >>> out.shape, lse.shape
    ((2, 4, 16, 32), (2, 4, 16))
    >>> mha.attention(q.astype(np.float16), q.astype(np.float16), q.astype(np.float16)).dtype
    dtype('float16')
    """
    fn = "attention"
    dtype = _dtype(fn, q)
    tq, tk, tv = _views(fn, dtype, "qkv", (q, k, v))
    B, H, L, E = q.shape
    S, Ev = k.shape[2], v.shape[3]
    m, keep = _mask(fn, mask, causal, B, H, L, S, dtype)
    p = _params(fn, scale, E)
    out = np.empty((B, H, L, Ev), dtype)
    lse = np.empty((B, H, L), np.float32) if return_lse else None
    to = view(fn, "out", out, 4, dtype)
    tl = view(fn, "lse", lse, 3) if return_lse else None
    c = _lib.ctx()
    _lib.check(_lib.lib.mha_attn_forward(c, ctypes.byref(p), tq, tk, tv, ctypes.byref(m), to,
                                         tl, None), c)
    del keep
    return (out, lse) if return_lse else out


def attention_backward(q, k, v, out, lse, dout, *, mask=None, causal=False, scale=None):
    """Gradients of ``attention`` (mha's fused backward, FlashAttention-2 style).

    Parameters
    ----------
    q, k, v : float32 or float16 ndarrays [batch, heads, L, E], [batch, heads_kv, S, E],
        [batch, heads_kv, S, Ev]: the forward's inputs (one dtype).
    out : ndarray [batch, heads, L, Ev], q's dtype
    lse : float32 ndarray [batch, heads, L]
        What ``attention(q, k, v, ..., return_lse=True)`` returned.
    dout : ndarray [batch, heads, L, Ev], q's dtype
        The gradient of the loss with respect to out.
    mask, causal, scale
        Exactly as given to the forward (bool masks: True = masked, see ``attention``).

    Returns
    -------
    dq, dk, dv : ndarrays shaped as q, k, v in q's dtype (new arrays; float16: accumulated
        in float32, rounded once); with grouped-query attention dk, dv sum the contributions
        of each group's query heads.

    Example
    -------
    >>> import numpy as np, mha
    >>> q = np.random.rand(1, 2, 8, 16).astype(np.float32)
    >>> out, lse = mha.attention(q, q, q, return_lse=True)
    >>> dq, dk, dv = mha.attention_backward(q, q, q, out, lse, np.ones_like(out))
    """
    fn = "attention_backward"
    dtype = _dtype(fn, q)
    tq, tk, tv, to = _views(fn, dtype, ("q", "k", "v", "out"), (q, k, v, out))
    tl = view(fn, "lse", lse, 3)
    td, = _views(fn, dtype, ("dout",), (dout,))
    B, H, L, E = q.shape
    m, keep = _mask(fn, mask, causal, B, H, L, k.shape[2], dtype)
    p = _params(fn, scale, E)
    dq, dk, dv = (np.empty(x.shape, dtype) for x in (q, k, v))
    tdq, tdk, tdv = _views(fn, dtype, ("dq", "dk", "dv"), (dq, dk, dv))
    c = _lib.ctx()
    _lib.check(_lib.lib.mha_attn_backward(c, ctypes.byref(p), tq, tk, tv, ctypes.byref(m), to,
                                          tl, td, tdq, tdk, tdv), c)
    del keep
    return dq, dk, dv
