"""mha._torch - PyTorch tensors into the C library and back: views without copies, masks, the
C module behind the nn modules, and the autograd Functions that run mha's own backward.

Conventions shared by the PyTorch front end (mha.nn, mha.functional, mha.flash):
  - Tensors must be on the CPU. The attention core (mha.functional, flash_attn_func) takes
    float32, bfloat16 or float16 q, k, v of one dtype, computes in float32 and rounds its
    outputs to that dtype once; mha.MultiheadAttention computes in its parameters' dtype
    (float32, bfloat16 or float16: inputs, outputs and gradients in it, products accumulated
    in float32); the rest (the seed-module layer, ALiBi slopes) is float32 only. A wrong dtype
    raises ValueError naming the argument; q, k, v of different supported dtypes raise
    RuntimeError, as PyTorch's attention does. Any strides
    are passed as they are (no copy) as long as the innermost dimension has stride 1; a tensor
    whose innermost stride is not 1 is copied with .contiguous() (the documented conversion).
  - Library errors become ValueError / MemoryError / RuntimeError with the library's message.
  - Under torch.autocast("cpu", dtype=bfloat16 / float16) (autocast_dtype) mha.nn and
    mha.functional convert their floating inputs and parameters as PyTorch's autocast converts
    those of its layer and SDPA (autocast_to); mha.flash does not: FlashAttention's functions
    are not autocast ops.
"""
import functools
import threading
from ctypes import byref, c_void_p

import torch

from . import _lib
from ._lib import ArgumentError
from ._lib import lib

_F32 = torch.float32


# ------------------------------------------------------------------------------------------
# Tensors
# ------------------------------------------------------------------------------------------
def shape_str(t):
    """A tensor's shape as messages write it: [2, 10, 64]."""
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


# torch dtype -> the mha_dtype the attention core takes it as (MHA_DTYPE_F32, _F16, _BF16)
CORE_DTYPES = {torch.float32: 0, torch.float16: 4, torch.bfloat16: 5}
_CORE_NAMES = "torch.float32, torch.bfloat16 or torch.float16"
# Why a function refuses bfloat16 / float16 (a float32 layer, the seed module, ALiBi slopes):
# F32_ONLY for a tensor, F32_ONLY_DTYPE for a dtype argument
_LOWP_GOES_TO = ("bfloat16 and float16 go to mha.functional.scaled_dot_product_attention, "
                 "mha.flash_attn_func and mha.MultiheadAttention(..., dtype=torch.bfloat16)")
F32_ONLY = "float32 is needed here: .float(); " + _LOWP_GOES_TO
F32_ONLY_DTYPE = "float32 is needed here; " + _LOWP_GOES_TO


def _require_cpu(t, name, fn, what):
    if t.device.type != "cpu":
        raise ArgumentError(f"{fn}: {name}: got a {what} on {t.device}, expected a CPU tensor "
                         "(mha computes on the CPU: .cpu())")


def _require_cpu_f32(t, name, fn, what, why=F32_ONLY):
    """ValueError unless t (a tensor, or what: "parameter") is float32 on the CPU; why: the
    reason float32 is needed, for the message."""
    _require_cpu(t, name, fn, what)
    if t.dtype != _F32:
        raise ArgumentError(f"{fn}: {name}.dtype: got {t.dtype}, expected torch.float32 ({why})")


def _innermost_contiguous(t):
    if t.dim() and t.stride(-1) != 1 and t.shape[-1] > 1:
        # an empty tensor counts as contiguous whatever its strides (contiguous() returns it
        # as it is: the 0 strides of an empty loss's expanded gradient), the library does not
        return t.contiguous() if t.numel() else torch.empty(t.shape, dtype=t.dtype)
    return t


def _require_tensor(t, name, fn):
    if not isinstance(t, torch.Tensor):
        raise ArgumentError(f"{fn}: {name}: got {type(t).__name__}, expected a torch.Tensor")


def as_input(t, name, fn, dtype=None):
    """t checked for the library: a CPU tensor of dtype (None: float32, with the message of
    the float32-only functions) whose innermost stride is 1 (copied when it is not). Returns
    the tensor to pass (keep it alive during the call)."""
    _require_tensor(t, name, fn)
    if dtype is None:
        _require_cpu_f32(t, name, fn, "tensor")
    else:
        _require_cpu(t, name, fn, "tensor")
        if t.dtype != dtype:
            raise ArgumentError(f"{fn}: {name}.dtype: got {t.dtype}, expected {dtype}")
    return _innermost_contiguous(t)


def as_core_inputs(fn, names, tensors):
    """q, k, v for the attention core, checked as as_input does: CPU tensors of one dtype,
    float32, bfloat16 or float16. Another dtype: ValueError naming the first such argument;
    supported dtypes that differ: RuntimeError naming the argument that differs from the
    first, as PyTorch's scaled_dot_product_attention raises."""
    for n, t in zip(names, tensors):
        _require_tensor(t, n, fn)
        _require_cpu(t, n, fn, "tensor")
        if t.dtype not in CORE_DTYPES:
            raise ArgumentError(f"{fn}: {n}.dtype: got {t.dtype}, expected {_CORE_NAMES} "
                             "(convert it: .float())")
    first = tensors[0].dtype
    for n, t in zip(names, tensors):
        if t.dtype != first:
            raise RuntimeError(f"{fn}: {n}.dtype: got {t.dtype}, expected {first} ({names[0]}'s "
                               f"dtype: {', '.join(names)} must have the same dtype, as in "
                               "PyTorch)")
    return [_innermost_contiguous(t) for t in tensors]


_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def autocast_dtype():
    """The dtype torch.autocast("cpu", ...) casts to here, bfloat16 or float16; None when CPU
    autocast is off (not entered, entered with enabled=False, or a nested one that disables
    it), as torch.is_autocast_enabled("cpu") says."""
    if torch.is_autocast_enabled("cpu"):
        dt = torch.get_autocast_dtype("cpu")
        if dt in _AUTOCAST_DTYPES:
            return dt
    return None


def autocast_to(t, dtype):
    """t as CPU autocast casts an operand of a lower-precision op to dtype: a floating tensor
    other than float64 converted with .to() (differentiable: its gradient comes back in t's
    dtype, as PyTorch's), anything else (None, bool, float64) as it is."""
    if isinstance(t, torch.Tensor) and t.is_floating_point() and \
            t.dtype not in (dtype, torch.float64):
        return t.to(dtype)
    return t


def view(t):
    """The mha_tensor view of a tensor already checked by as_input (or made here)."""
    return _lib.Tensor(t.data_ptr(), t.dim(), _lib._Dims(*t.shape), _lib._Dims(*t.stride()),
                       CORE_DTYPES[t.dtype])


def ptr(t):
    return t.data_ptr() if t is not None else None


def new_like(shape, stride, dtype=_F32):
    return torch.empty_strided(shape, stride, dtype=dtype)


def check_param(p, name, fn, dtype=_F32):
    """A parameter must be of dtype (the layer's) on the CPU, and contiguous (the C module reads
    parameters as contiguous memory): ValueError saying which."""
    if dtype == _F32:
        _require_cpu_f32(p, name, fn, "parameter")
    else:
        _require_cpu(p, name, fn, "parameter")
        if p.dtype != dtype:
            raise ArgumentError(f"{fn}: {name}.dtype: got {p.dtype}, expected {dtype} (the dtype "
                             "of the layer's other parameters)")
    if not p.is_contiguous():
        raise ArgumentError(f"{fn}: {name}: got a non-contiguous parameter (strides "
                         f"{tuple(p.stride())}), expected a contiguous one")


def dropout_seed():
    """A 63-bit seed for mha's Philox dropout drawn from torch's default generator, so that
    torch.manual_seed makes mha's dropout reproducible."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


# ------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------
class MaskArg:
    """An mha_mask and the tensors its pointers point into (kept alive with it)."""
    __slots__ = ("c", "keep")

    def __init__(self, causal=0, key_padding=None, attn_bool=None, attn_float=None,
                 batched=False, window=None, alibi=None):
        """window: (left, right), FlashAttention's window_size (-1: unbounded), or None;
        alibi: contiguous float32 slopes [H] or [B, H], or None."""
        self.keep = (key_padding, attn_bool, attn_float, alibi)
        self.c = _lib.Mask(causal, ptr(key_padding), None, ptr(attn_bool), ptr(attn_float),
                           1 if batched else 0)
        if window is not None:
            self.c.window, (self.c.window_left, self.c.window_right) = 1, window
        if alibi is not None:
            self.c.alibi_slopes, self.c.alibi_batched = alibi.data_ptr(), alibi.dim() - 1


NO_MASK = MaskArg()


_CAUSAL_PATTERNS = {}


def is_causal_mask(m, excluded):
    """Whether the 2-D mask m [L, S] is exactly the top-left causal one: key j excluded from
    row i iff j > i. excluded: m's value of an excluded position (True, False for a "keep"
    mask, or -inf for a float mask whose kept positions are 0). Then the library's causal flag
    gives the same numbers without reading L x S mask bytes, and skips the tiles above the
    diagonal (twice as fast). Three probes first, so that other masks cost almost nothing."""
    L, S = m.shape
    if L < 2 or S < 2:
        return False
    if m[0, 1] != excluded or m[0, 0] == excluded or m[L - 1, 0] == excluded:
        return False
    key = (L, S, m.dtype, excluded)
    pat = _CAUSAL_PATTERNS.get(key)
    if pat is None:
        above = torch.ones((L, S), dtype=torch.bool).triu_(1)
        if m.dtype == torch.bool:
            pat = above if excluded else ~above
        else:
            pat = torch.zeros((L, S), dtype=m.dtype).masked_fill_(above, excluded)
        if len(_CAUSAL_PATTERNS) >= 4:
            _CAUSAL_PATTERNS.clear()
        _CAUSAL_PATTERNS[key] = pat
    return torch.equal(m, pat)


def check_mask(m, name, fn):
    """A mask must be a bool or floating tensor on the CPU (PyTorch 2.13 refuses other types);
    a float mask that requires grad is refused (no gradient flows into masks)."""
    if m is None:
        return
    if not isinstance(m, torch.Tensor):
        raise ArgumentError(f"{fn}: {name}: got {type(m).__name__}, expected a torch.Tensor")
    if m.device.type != "cpu":
        raise ArgumentError(f"{fn}: {name}: got a tensor on {m.device}, expected a CPU tensor")
    if m.dtype != torch.bool and not m.is_floating_point():
        raise ArgumentError(f"{fn}: {name}.dtype: got {m.dtype}, expected torch.bool or a float "
                         "type (as PyTorch 2.13, which refuses other mask types)")
    if m.is_floating_point() and m.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(f"{fn}: {name}: the gradient with respect to a float mask is "
                                  f"not supported (pass {name}.detach())")


def bool_bytes(m):
    """A bool tensor as contiguous bytes the library reads as uint8 (nonzero = excluded)."""
    return m.contiguous()


def float_mask(m):
    return m.to(_F32).contiguous()


# ------------------------------------------------------------------------------------------
# The C module behind an nn module
# ------------------------------------------------------------------------------------------
class CModule:
    """Owns one mha_module, created on first use for a configuration, and the pointers bound
    to it. Not copied by copy.deepcopy or pickled: a copy creates its own on first use."""

    def __init__(self):
        self.ptr = None
        self.cfg = None
        self.bound = {}
        self.lock = threading.Lock()

    def __deepcopy__(self, memo):
        return CModule()

    def __reduce__(self):
        return (CModule, ())

    def __del__(self, _free=lib.mha_module_free):
        if self.ptr:
            _free(self.ptr)
            self.ptr = None

    def get(self, E, H, kdim, vdim, bias, dropout, dtype=_F32):
        """The module for this configuration (re-created when it changed: a layer's dropout
        attribute may be set between calls). A forward saved by the one it replaces can still
        be differentiated: the saved state carries its own dropout and is given back to the
        module of the same address only (mha_module_saved_restore checks the owner)."""
        key = (E, H, kdim, vdim, bias, dropout, dtype)
        if self.ptr is None or self.cfg != key:
            if self.ptr:
                lib.mha_module_free(self.ptr)
                self.ptr = None
            if not 0.0 <= dropout <= 1.0:
                raise ArgumentError(f"mha: dropout: got {dropout}, expected a value in [0, 1]")
            cfg = lib.mha_config_default(E, H)
            cfg.kdim, cfg.vdim, cfg.bias = kdim, vdim, 1 if bias else 0
            cfg.dropout = dropout
            cfg.dtype = CORE_DTYPES[dtype]
            p = c_void_p()
            _lib.check(lib.mha_module_create(_lib.ctx(), byref(cfg), byref(p)))
            self.ptr, self.cfg, self.bound = p, key, {}
        return self.ptr

    def bind_values(self, names, values):
        """Points the module's parameters at the tensors values (contiguous, of the module's
        dtype)."""
        b = self.bound
        for name, t in zip(names, values):
            p = t.data_ptr()
            if b.get(name) != p:
                _lib.check(lib.mha_module_param_bind(_lib.ctx(), self.ptr, name, p, None))
                b[name] = p

    def bind_grads(self, names, grads):
        for name, g in zip(names, grads):
            _lib.check(lib.mha_module_param_bind(_lib.ctx(), self.ptr, name, None,
                                                 g.data_ptr()))


class Saved:
    """A forward's saved state taken out of its C module. Its backward gives it to the module,
    runs, and takes it back, so that a second backward (retain_graph=True) finds it again.
    When the graph goes away, the state's buffers go back to the module for its next forward
    to reuse (two buffers then alternate in a training loop instead of fresh pages for every
    step), or are freed when the module is busy or gone."""
    __slots__ = ("ptr", "cmod")

    def __init__(self, p, cmod):
        self.ptr, self.cmod = p, cmod

    def __del__(self, _free=lib.mha_module_saved_free, _restore=lib.mha_module_saved_restore):
        p, self.ptr = self.ptr, None
        if not p:
            return
        cm = self.cmod
        # Never wait, never re-enter: the garbage collector may run this inside a call that
        # holds the lock (then the module's state must not change under it).
        if cm.ptr and cm.lock.acquire(False):
            try:
                if _restore(_lib.ctx(), cm.ptr, p) == _lib.OK:
                    return
            except Exception:  # e.g. at interpreter exit, when no context can be made
                pass
            finally:
                cm.lock.release()
        _free(p)


class LayerCall:
    """One call of a layer: its C module, parameter names and tensors (contiguous, of the
    layer's dtype, in the C module's order), masks and options. self_attn: key = value =
    query. Attention weights come back in the layer's dtype, as PyTorch's."""

    def __init__(self, cmod, names, values, mask, training, dropout, average, need_weights,
                 heads):
        self.cmod, self.names, self.values = cmod, names, values
        self.mask, self.training, self.dropout = mask, training, dropout
        self.average, self.need_weights, self.heads = average, need_weights, heads

    def run_forward(self, q, k, v, save):
        """q [N, L, E] (or [L, E]), k/v [N, S, kdim/vdim] or None (self-attention): any
        strides with innermost 1. Returns (out like q, weights or None, Saved or None)."""
        cm = self.cmod
        out = torch.empty_like(q)
        if self.need_weights:
            S = (k if k is not None else q).shape[-2]
            lead = q.shape[:-1]
            shape = lead + (S,) if self.average else \
                lead[:-1] + (self.heads,) + lead[-1:] + (S,)
            weights = torch.empty(shape, dtype=_F32)  # float32 in the library
        else:
            weights = None
        opts = _lib.ForwardOpts(0.0, 1 if self.training else 0, 1 if self.average else 0,
                                1 if save else 0)
        c = _lib.ctx()
        with cm.lock:
            cm.bind_values(self.names, self.values)
            if self.training and self.dropout > 0:
                _lib.check(lib.mha_module_set_dropout_rng(c, cm.ptr, dropout_seed(), 0), c)
            tq, to = view(q), view(out)
            tk = view(k) if k is not None else None
            tv = view(v) if v is not None else None
            tw = view(weights) if weights is not None else None
            st = lib.mha_module_forward(c, cm.ptr, byref(opts), byref(tq),
                                        byref(tk) if tk is not None else None,
                                        byref(tv) if tv is not None else None,
                                        byref(self.mask.c), byref(to),
                                        byref(tw) if tw is not None else None)
            _lib.check(st, c)
            saved = None
            if save:
                sp = c_void_p()
                _lib.check(lib.mha_module_saved_take(c, cm.ptr, byref(sp)), c)
                saved = Saved(sp, cm)
        if weights is not None and q.dtype != _F32:
            weights = weights.to(q.dtype)
        return out, weights, saved

    def run_backward(self, saved, dout, values, qmeta, kmeta, vmeta):
        """Input gradients (like the forward's q, k, v) and the parameter gradients."""
        cm = self.cmod
        grads = [torch.zeros_like(t) for t in values]
        dt = values[0].dtype
        dq = new_like(*qmeta, dt)
        dk = new_like(*kmeta, dt) if kmeta is not None else None
        dv = new_like(*vmeta, dt) if vmeta is not None else None
        dout = as_input(dout, "grad of out", "backward", None if dt == _F32 else dt)
        c = _lib.ctx()
        with cm.lock:
            cm.bind_values(self.names, values)
            cm.bind_grads(self.names, grads)
            _lib.check(lib.mha_module_saved_restore(c, cm.ptr, saved.ptr), c)
            saved.ptr = None  # the module owns it now; taken back below
            tdo, tdq = view(dout), view(dq)
            tdk = view(dk) if dk is not None else None
            tdv = view(dv) if dv is not None else None
            st = lib.mha_module_backward(c, cm.ptr, byref(tdo), byref(tdq),
                                         byref(tdk) if tdk is not None else None,
                                         byref(tdv) if tdv is not None else None)
            sp = c_void_p()
            took = lib.mha_module_saved_take(c, cm.ptr, byref(sp))
            saved.ptr = sp if took == _lib.OK else None
            _lib.check(st, c)
            _lib.check(took, c)
        return dq, dk, dv, grads


def grad_layout(t):
    """The shape and strides a gradient of t gets: t's own (a transposed view's gradient is
    laid out as the view, then transposed back for free), or contiguous strides when t's
    elements share memory (an expanded tensor: stride 0), which a gradient cannot."""
    if t is None:
        return None
    if any(st == 0 and n > 1 for n, st in zip(t.shape, t.stride())):
        stride, acc = [], 1
        for n in reversed(t.shape):
            stride.append(acc)
            acc *= max(n, 1)
        return tuple(t.shape), tuple(reversed(stride))
    return tuple(t.shape), tuple(t.stride())


def layer_forward(ctx, call, q, k, v, keep):
    """The forward both layer Functions share: runs the call saving its state into ctx, and
    saves the tensors keep (the parameters: autograd checks at backward time that they were
    not changed in place)."""
    out, weights, saved = call.run_forward(q, k, v, save=True)
    ctx.call, ctx.saved_c = call, saved
    ctx.metas = (grad_layout(q), grad_layout(k), grad_layout(v))
    ctx.save_for_backward(*keep)
    ctx.set_materialize_grads(False)
    return out, weights


def layer_backward(ctx, dout, dweights, values):
    """The backward both layer Functions share: (dq, dk, dv, parameter grads), or None when
    the output has no gradient. values: the parameters the forward ran with."""
    if dweights is not None:
        raise NotImplementedError(
            "mha: the gradient through the returned attention weights is not supported (mha's "
            "backward differentiates the output; detach the weights, or use them without "
            "backpropagating through them)")
    if dout is None:
        return None
    if ctx.saved_c.ptr is None:
        raise RuntimeError("mha: the saved state of this layer call is gone (an earlier "
                           "backward through it failed)")
    return ctx.call.run_backward(ctx.saved_c, dout, values, *ctx.metas)


def first_order_only(backward):
    """An autograd Function's backward that is not itself differentiable (mha's fused
    backwards): under create_graph=True (grad mode on inside the backward) it raises
    NotImplementedError, since the graph of its result would silently leave out the second
    derivative (a gradient penalty would come out as the first-order gradient alone)."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            raise NotImplementedError(
                "mha: backward with create_graph=True: second derivatives of mha's attention "
                "are not implemented (its fused backward is not itself differentiable)")
        return backward(ctx, *grads)
    return wrapper


class LayerFunction(torch.autograd.Function):
    """out, weights = layer(q, k, v) with mha's fused forward and backward. Parameters are
    inputs (their gradients are returned, autograd accumulates them); the C module's saved
    forward travels with the graph node, so several calls of one layer before one backward
    are differentiated right."""

    @staticmethod
    def forward(ctx, call, q, k, v, *params):
        return layer_forward(ctx, call, q, k, v, params)

    @staticmethod
    @first_order_only
    def backward(ctx, dout, dweights):
        r = layer_backward(ctx, dout, dweights, ctx.saved_tensors)
        if r is None:
            return (None,) * (4 + len(ctx.call.names))
        dq, dk, dv, grads = r
        return (None, dq, dk, dv) + tuple(grads)


def run_layer(call, q, k, v, params_need_grad):
    """The forward through autograd when a gradient may be needed, else directly."""
    if torch.is_grad_enabled() and (params_need_grad or q.requires_grad or
                                    (k is not None and (k.requires_grad or v.requires_grad))):
        return LayerFunction.apply(call, q, k, v, *call.values)
    out, weights, _ = call.run_forward(q, k, v, save=False)
    return out, weights


# ------------------------------------------------------------------------------------------
# The attention core (mha.functional)
# ------------------------------------------------------------------------------------------
class CoreCall:
    """One call of the core on [B, H, L, E] views of one dtype (float32, bfloat16 or float16:
    out and the gradients in it, lse float32): params and mask. weights=True: the forward
    also computes the attention probabilities after dropout, kept in self.weights [B, H, L, S]
    (float32, as self.lse); out_order: the memory order of out's dimensions, outermost first, as
    torch.empty_permuted takes it ((0, 2, 1, 3): [B, L, H, Ev] memory), None: contiguous.
    Subclasses (mha.flash's packed batches) replace new_outputs and the two library calls."""

    def __init__(self, params, mask, weights=False, out_order=None):
        self.params, self.mask = params, mask
        self.want_weights, self.out_order = weights, out_order
        self.lse = self.weights = None

    def new_outputs(self, q, v):
        """Empty out (q's dtype) and lse (float32) for the forward of q, v."""
        shape = q.shape[:-1] + (v.shape[-1],)
        out = torch.empty(shape, dtype=q.dtype) if self.out_order is None else \
            torch.empty_permuted(shape, self.out_order, dtype=q.dtype)
        return out, torch.empty(q.shape[:-1], dtype=_F32)

    def run_forward(self, c, tq, tk, tv, to, tl, tw):
        return lib.mha_attn_forward(c, byref(self.params), byref(tq), byref(tk), byref(tv),
                                    byref(self.mask.c), byref(to), byref(tl),
                                    byref(tw) if tw is not None else None)

    def run_backward(self, c, tq, tk, tv, to, tl, tdo, tdq, tdk, tdv):
        return lib.mha_attn_backward(c, byref(self.params), byref(tq), byref(tk), byref(tv),
                                     byref(self.mask.c), byref(to), byref(tl), byref(tdo),
                                     byref(tdq), byref(tdk), byref(tdv))

    def forward(self, q, k, v):
        out, lse = self.new_outputs(q, v)
        w = torch.empty(q.shape[:-1] + (k.shape[-2],), dtype=_F32) if self.want_weights \
            else None
        c = _lib.ctx()
        _lib.check(self.run_forward(c, view(q), view(k), view(v), view(out), view(lse),
                                    view(w) if w is not None else None), c)
        self.lse, self.weights = lse, w
        return out, lse

    def backward(self, q, k, v, out, lse, dout):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dout = as_input(dout, "grad of out", "backward", out.dtype)
        views = [view(t) for t in (q, k, v, out, lse, dout, dq, dk, dv)]
        c = _lib.ctx()
        _lib.check(self.run_backward(c, *views), c)
        return dq, dk, dv


class CoreFunction(torch.autograd.Function):
    """out = softmax(q k^T * scale + mask) v (dropout inside) with mha's fused backward."""

    @staticmethod
    def forward(ctx, call, q, k, v):
        out, lse = call.forward(q, k, v)
        ctx.call = call
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    @first_order_only
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.call.backward(q, k, v, out, lse, dout)
        return None, dq, dk, dv
