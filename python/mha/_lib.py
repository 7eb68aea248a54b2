"""mha._lib - the C library through ctypes: finding and loading it, its structs, its functions,
its status codes as Python exceptions, and one context per thread.

Everything else in the package calls the library through this module. Nothing here imports
torch or numpy: the NumPy and PyTorch front ends build the tensor views (``Tensor``) from their
own arrays. ctypes releases the GIL for the duration of every call into the library.

Where the library is looked for, first found wins:
  1. the path in the environment variable ``MHA_LIBRARY``;
  2. ``libmha.so`` beside this file (an installed package carries its own copy);
  3. ``build/libmha.so`` of the checkout this file is in (``make`` builds it), so that
     ``PYTHONPATH=python python -c "import mha"`` works from a checkout.
"""
import ctypes
import os
import threading
from ctypes import (POINTER, Structure, byref, c_char_p, c_float, c_int, c_int32, c_int64,
                    c_size_t, c_uint64, c_void_p)

MAX_DIMS = 5

# mha_status
OK, ERR_INVALID_ARG, ERR_SHAPE, ERR_NOMEM, ERR_IO, ERR_FORMAT, ERR_NOT_FOUND, \
    ERR_UNSUPPORTED, ERR_STATE = 0, -1, -2, -3, -4, -5, -6, -7, -8

# mha_causal
CAUSAL_NONE, CAUSAL_TOP_LEFT, CAUSAL_BOTTOM_RIGHT = 0, 1, 2

_Dims = c_int64 * MAX_DIMS


class Tensor(Structure):
    """mha_tensor: a view (dtype: mha_dtype, 0 = float32), strides in elements, the innermost 1."""
    _fields_ = [("data", c_void_p), ("ndim", c_int), ("shape", _Dims), ("stride", _Dims),
                ("dtype", c_int)]


class Mask(Structure):
    """mha_mask (pointers to caller-owned, contiguous mask memory)."""
    _fields_ = [("causal", c_int), ("key_padding", c_void_p), ("key_lengths", c_void_p),
                ("attn_bool", c_void_p), ("attn_float", c_void_p), ("attn_batched", c_int),
                ("window", c_int), ("window_left", c_int64), ("window_right", c_int64),
                ("alibi_slopes", c_void_p), ("alibi_batched", c_int)]


class AttnParams(Structure):
    """mha_attn_params."""
    _fields_ = [("scale", c_float), ("dropout_p", c_float), ("seed", c_uint64),
                ("offset", c_uint64), ("softcap", c_float)]


class Config(Structure):
    """mha_config."""
    _fields_ = [("embed_dim", c_int64), ("num_heads", c_int64), ("kdim", c_int64),
                ("vdim", c_int64), ("bias", c_int), ("dropout", c_float), ("seed", c_uint64),
                ("dtype", c_int)]


class ForwardOpts(Structure):
    """mha_forward_opts."""
    _fields_ = [("scale", c_float), ("training", c_int), ("average_weights", c_int),
                ("save_for_backward", c_int)]


class Array(Structure):
    """mha_array: an owned n-dimensional array (mha_array_free releases data)."""
    _fields_ = [("dtype", c_int), ("ndim", c_int), ("shape", _Dims), ("data", c_void_p)]


class VizOpts(Structure):
    """mha_viz_opts (mha_viz.h)."""
    _fields_ = [("view", c_int), ("head", c_int64), ("query_tokens", c_void_p),
                ("key_tokens", c_void_p), ("head_titles", c_void_p), ("title", c_char_p),
                ("vmin", c_float), ("vmax", c_float), ("term_mode", c_int), ("width", c_int),
                ("cell_px", c_int), ("key_positions", c_int)]


WRITE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)

_P = c_void_p  # opaque handles (mha_ctx *, mha_module *, mha_st *, ...)
_T = POINTER(Tensor)

# name: (restype, argtypes). Only what the package uses.
_PROTOTYPES = {
    "mha_status_str": (c_char_p, [c_int]),
    "mha_ctx_create": (c_int, [POINTER(_P)]),
    "mha_ctx_free": (None, [_P]),
    "mha_ctx_errmsg": (c_char_p, [_P]),
    "mha_ctx_set_threads": (c_int, [_P, c_int]),
    "mha_ctx_threads": (c_int, [_P]),
    "mha_ctx_describe": (c_int, [_P, c_char_p, c_size_t]),
    "mha_attn_params_default": (AttnParams, []),
    "mha_attn_forward": (c_int, [_P, POINTER(AttnParams), _T, _T, _T, POINTER(Mask), _T, _T,
                                 _T]),
    "mha_attn_backward": (c_int, [_P, POINTER(AttnParams), _T, _T, _T, POINTER(Mask), _T, _T,
                                  _T, _T, _T, _T]),
    "mha_attn_kvcache": (c_int, [_P, POINTER(AttnParams), _T, _T, _T, _T, _T, c_void_p,
                                 POINTER(Mask), _T, _T]),
    "mha_rotary": (c_int, [_P, _T, _T, _T, c_void_p, c_int]),
    "mha_attn_kvcache_paged": (c_int, [_P, POINTER(AttnParams), _T, _T, _T, c_void_p, c_int64,
                                       _T, _T, c_void_p, POINTER(Mask), _T, _T]),
    "mha_attn_varlen_paged": (c_int, [_P, POINTER(AttnParams), _T, _T, _T, c_void_p, c_int64,
                                      c_void_p, c_void_p, c_int64, POINTER(Mask), _T, _T]),
    "mha_attn_varlen_forward": (c_int, [_P, POINTER(AttnParams), _T, _T, _T, c_void_p,
                                        c_void_p, c_int64, POINTER(Mask), _T, _T]),
    "mha_attn_varlen_backward": (c_int, [_P, POINTER(AttnParams), _T, _T, _T, c_void_p,
                                         c_void_p, c_int64, POINTER(Mask), _T, _T, _T, _T, _T,
                                         _T]),
    "mha_config_default": (Config, [c_int64, c_int64]),
    "mha_module_create": (c_int, [_P, POINTER(Config), POINTER(_P)]),
    "mha_module_free": (None, [_P]),
    "mha_module_param_count": (c_int, [_P]),
    "mha_module_param_name": (c_char_p, [_P, c_int]),
    "mha_module_param": (c_int, [_P, _P, c_char_p, _T, _T]),
    "mha_module_param_bind": (c_int, [_P, _P, c_char_p, c_void_p, c_void_p]),
    "mha_module_set_dropout_rng": (c_int, [_P, _P, c_uint64, c_uint64]),
    "mha_forward_opts_default": (ForwardOpts, []),
    "mha_module_forward": (c_int, [_P, _P, POINTER(ForwardOpts), _T, _T, _T, POINTER(Mask), _T,
                                   _T]),
    "mha_module_backward": (c_int, [_P, _P, _T, _T, _T, _T]),
    "mha_module_saved_take": (c_int, [_P, _P, POINTER(_P)]),
    "mha_module_saved_restore": (c_int, [_P, _P, _P]),
    "mha_module_saved_free": (None, [_P]),
    "mha_array_free": (None, [POINTER(Array)]),
    "mha_dtype_size": (c_size_t, [c_int]),
    "mha_dtype_name": (c_char_p, [c_int]),
    "mha_st_create": (c_int, [_P, POINTER(_P)]),
    "mha_st_load": (c_int, [_P, c_char_p, POINTER(_P)]),
    "mha_st_free": (None, [_P]),
    "mha_st_count": (c_int, [_P]),
    "mha_st_name": (c_char_p, [_P, c_int]),
    "mha_st_find": (POINTER(Array), [_P, c_char_p]),
    "mha_st_set": (c_int, [_P, _P, c_char_p, POINTER(Array)]),
    "mha_st_meta_get": (c_char_p, [_P, c_char_p]),
    "mha_st_meta_set": (c_int, [_P, _P, c_char_p, c_char_p]),
    "mha_st_meta_count": (c_int, [_P]),
    "mha_st_meta_key": (c_char_p, [_P, c_int]),
    "mha_st_save": (c_int, [_P, _P, c_char_p]),
    "mha_st_layer": (c_int, [_P, _P, c_char_p, POINTER(_P)]),
    "mha_viz_opts_default": (VizOpts, []),
    "mha_viz_term": (c_int, [_P, c_void_p, c_int64, c_int64, c_int64, POINTER(VizOpts),
                             WRITE_FN, c_void_p]),
    "mha_viz_svg_file": (c_int, [_P, c_void_p, c_int64, c_int64, c_int64, POINTER(VizOpts),
                                 c_char_p]),
    "mha_viz_png_file": (c_int, [_P, c_void_p, c_int64, c_int64, c_int64, POINTER(VizOpts),
                                 c_char_p]),
    "mha_viz_html_file": (c_int, [_P, c_void_p, c_int64, c_int64, c_int64, POINTER(VizOpts),
                                  c_char_p]),
    "mha_viz_html": (c_int, [_P, c_void_p, c_int64, c_int64, c_int64, POINTER(VizOpts),
                             WRITE_FN, c_void_p]),
}


def _candidates():
    env = os.environ.get("MHA_LIBRARY")
    if env:
        return [os.path.abspath(env)]  # a bare name would make dlopen search the system
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(here, "libmha.so"),
            os.path.join(os.path.dirname(os.path.dirname(here)), "build", "libmha.so")]


def _load():
    tried = []
    for path in _candidates():
        if os.path.exists(path):
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                raise ImportError(f"mha: cannot load the C library {path}: {e}") from None
            break
        tried.append(path)
    else:
        raise ImportError("mha: the C library was not found (tried: " + ", ".join(tried) +
                          "); build it with `make` in the checkout, install the package with "
                          "`pip install .`, or set MHA_LIBRARY to the path of libmha.so")
    for name, (res, args) in _PROTOTYPES.items():
        try:
            f = getattr(lib, name)
        except AttributeError:
            raise ImportError(f"mha: {lib._name} has no {name}: an older build of the library? "
                              "(rebuild it with `make`)") from None
        f.restype, f.argtypes = res, args
    return lib


lib = _load()
LIBRARY_PATH = lib._name


# ------------------------------------------------------------------------------------------
# Errors: a status and the context's message as a Python exception
# ------------------------------------------------------------------------------------------
class Error(Exception):
    """Base of mha's own exception classes; ``status`` is the library's status code."""
    status = 0


class ArgumentError(Error, ValueError, RuntimeError):
    """A bad argument (a value, shape, dtype or device; the library's invalid-argument, shape,
    format, not-found and unsupported statuses): a ValueError, and a RuntimeError too, the type
    PyTorch's and FlashAttention's own checks raise, so that code written for them that catches
    RuntimeError catches mha's (as NumPy's AxisError is both a ValueError and an IndexError)."""


def _exc_class(status):
    if status == ERR_NOMEM:
        return MemoryError
    if status == ERR_IO:
        return OSError
    if status == ERR_STATE:
        return RuntimeError
    return ArgumentError  # invalid argument, shape, format, not found, unsupported


def error(status, message):
    """The exception for a failed call: MemoryError (out of memory), OSError (files),
    RuntimeError (calls out of order), ArgumentError (everything about the arguments: a
    ValueError and a RuntimeError)."""
    e = _exc_class(status)(message)
    e.status = status
    return e


# ------------------------------------------------------------------------------------------
# One context per thread (a context is used by one thread at a time)
# ------------------------------------------------------------------------------------------
class _Ctx:
    __slots__ = ("ptr", "gen")

    def __init__(self, threads, gen):
        p = c_void_p()
        st = lib.mha_ctx_create(byref(p))
        if st != OK:
            msg = lib.mha_ctx_errmsg(p).decode() if p else "out of memory"
            lib.mha_ctx_free(p)
            raise error(st, msg)
        self.ptr = p
        self.gen = gen
        if threads:
            check(lib.mha_ctx_set_threads(p, threads), p)

    def __del__(self, _free=lib.mha_ctx_free):
        if self.ptr:
            _free(self.ptr)
            self.ptr = None


_tls = threading.local()
_settings = {"threads": 0, "gen": 0}  # threads 0: the library's default (all cores)
_settings_lock = threading.Lock()


def ctx():
    """This thread's context (created on first use, renewed after set_num_threads)."""
    c = getattr(_tls, "c", None)
    if c is None or c.gen != _settings["gen"]:
        c = _tls.c = _Ctx(_settings["threads"], _settings["gen"])
    return c.ptr


def float32(x):
    """x as a float32 field of the library's parameters holds it: a nonzero x below float32's
    smallest subnormal (about 1.4e-45) becomes 0, which the library reads as "the default" (a
    scale) or "none" (a softcap), so callers test this before passing a small number on."""
    try:
        return c_float(x).value
    except TypeError:  # a number c_float does not take (a 0-dim tensor): its float value
        if not hasattr(x, "__float__"):
            raise
        return c_float(x.__float__()).value


def check(status, c=None):
    """Raises the exception for a failed status, with the message of context c (this
    thread's by default)."""
    if status != OK:
        p = c if c is not None else ctx()
        raise error(status, lib.mha_ctx_errmsg(p).decode("utf-8", "replace"))


def set_num_threads(n):
    """Threads for mha's calls from now on, in every Python thread: 1 .. 1024, or 0 for the
    default (every core: OpenMP's omp_get_max_threads(), which follows OMP_NUM_THREADS)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ArgumentError(f"set_num_threads: n: got {n!r}, expected an int")
    c = _Ctx(0, -1)  # validates n with the library's own message, before anything changes
    check(lib.mha_ctx_set_threads(c.ptr, n), c.ptr)
    with _settings_lock:
        _settings["threads"] = n
        _settings["gen"] += 1


def get_num_threads():
    """The number of threads mha's calls use."""
    return lib.mha_ctx_threads(ctx())


# ------------------------------------------------------------------------------------------
# Tensor views
# ------------------------------------------------------------------------------------------
def tensor(ptr, shape, strides, dtype=0):
    """An mha_tensor of memory at ptr (an int) with shape and strides (in elements); dtype: an
    mha_dtype (0: float32)."""
    n = len(shape)
    return Tensor(ptr, n, _Dims(*shape), _Dims(*strides), dtype)


def describe():
    """The library's description of its kernels on this machine (as `mha info` prints)."""
    buf = ctypes.create_string_buffer(8192)
    check(lib.mha_ctx_describe(ctx(), buf, len(buf)))
    return buf.value.decode()
