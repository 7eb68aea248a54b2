"""mha - multi-head attention on the CPU, exact against PyTorch, fast (FlashAttention-2 kernels).

The Python face of the C library libmha. Importing ``mha`` loads the library and nothing else:
NumPy is imported by the functions that take arrays, PyTorch only by the modules and functions
that take tensors (``mha.MultiheadAttention``, ``mha.MultiHeadAttention``, ``mha.functional``).

PyTorch (change one import)::

    import mha
    layer = mha.MultiheadAttention(512, 8, batch_first=True)   # torch.nn.MultiheadAttention's
    out, weights = layer(x, x, x)                                # forward, state_dict, gradients

NumPy (no PyTorch needed)::

    out, lse = mha.attention(q, k, v, causal=True, return_lse=True)   # [batch, heads, L, E]

Threads: ``mha.set_num_threads(n)`` / ``mha.get_num_threads()``. Errors are raised as
``mha.ArgumentError`` (arguments, shapes, dtypes: a ValueError, and a RuntimeError as PyTorch's
own checks raise), MemoryError, OSError (files) and RuntimeError (calls out of order), with the
library's message; ``mha.Error`` is the base of mha's own classes.
"""
import importlib

from ._lib import (LIBRARY_PATH, ArgumentError, Error, get_num_threads,  # noqa: F401
                   set_num_threads, describe)

__version__ = "0.1.0"

# Attributes whose modules import NumPy or PyTorch, loaded on first use (PEP 562).
_LAZY = {
    "MultiheadAttention": ("mha.nn", "MultiheadAttention"),
    "MultiHeadAttention": ("mha.nn", "MultiHeadAttention"),
    "functional": ("mha.functional", None),
    "nn": ("mha.nn", None),
    "attention": ("mha._numpy", "attention"),
    "attention_backward": ("mha._numpy", "attention_backward"),
    "save_file": ("mha._files", "save_file"),
    "load_file": ("mha._files", "load_file"),
    "load_metadata": ("mha._files", "load_metadata"),
    "load_layer": ("mha._files", "load_layer"),
    "export": ("mha._files", "export"),
    "viz": ("mha.viz", None),
    "flash_attn_func": ("mha.flash", "flash_attn_func"),
    "flash_attn_varlen_func": ("mha.flash", "flash_attn_varlen_func"),
    "flash_attn_with_kvcache": ("mha.flash", "flash_attn_with_kvcache"),
    "flash_attn_qkvpacked_func": ("mha.flash", "flash_attn_qkvpacked_func"),
    "flash_attn_kvpacked_func": ("mha.flash", "flash_attn_kvpacked_func"),
    "flash_attn_varlen_qkvpacked_func": ("mha.flash", "flash_attn_varlen_qkvpacked_func"),
    "flash_attn_varlen_kvpacked_func": ("mha.flash", "flash_attn_varlen_kvpacked_func"),
}

__all__ = ["set_num_threads", "get_num_threads", "describe", "ArgumentError", "Error"] + \
    sorted(_LAZY)


def __getattr__(name):
    try:
        mod, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mha' has no attribute {name!r}") from None
    m = importlib.import_module(mod)
    value = m if attr is None else getattr(m, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
