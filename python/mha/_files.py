"""mha._files - safetensors files without the safetensors package: ``mha.save_file``,
``mha.load_file``, ``mha.load_metadata`` and ``mha.export``.

The library reads and writes the files (mha_st_*): it validates every field of a file it
loads, and replaces a file only once the new one is completely written (all or nothing).
PyTorch is imported only to return torch tensors (``framework="pt"``); tensors given to
``save_file`` are recognised without importing it.
"""
import ctypes
import math
import os

import numpy as np

from . import _lib
from ._lib import ArgumentError

# mha_dtype: code, safetensors name, NumPy dtype (None: NumPy has none), torch dtype, bytes
_DTYPES = [
    (0, "F32", "<f4", "float32", 4),
    (1, "BOOL", "|b1", "bool", 1),
    (2, "I32", "<i4", "int32", 4),
    (3, "F64", "<f8", "float64", 8),
    (4, "F16", "<f2", "float16", 2),
    (5, "BF16", None, "bfloat16", 2),
    (6, "I64", "<i8", "int64", 8),
    (7, "U8", "|u1", "uint8", 1),
    (8, "I8", "|i1", "int8", 1),
    (9, "I16", "<i2", "int16", 2),
    (10, "U16", "<u2", "uint16", 2),
    (11, "U32", "<u4", "uint32", 4),
    (12, "U64", "<u8", "uint64", 8),
    (13, "F8_E4M3", None, "float8_e4m3fn", 1),
    (14, "F8_E5M2", None, "float8_e5m2", 1),
]
_BY_CODE = {d[0]: d for d in _DTYPES}
_BY_NUMPY = {np.dtype(d[2]).str[1:]: d for d in _DTYPES if d[2]}  # "f4", "b1", ... (any order)
_BY_TORCH = {"torch." + d[3]: d for d in _DTYPES}
_FRAMEWORKS = {"numpy": "numpy", "np": "numpy", "pt": "pt", "torch": "pt"}


def _is_torch(x):
    return type(x).__module__.startswith("torch")


def _raw(fn, name, x):
    """(dtype entry, shape, bytes as a uint8 ndarray) of an ndarray or a torch tensor."""
    where = f"{fn}: tensors[{name!r}]"
    if _is_torch(x) and hasattr(x, "detach"):
        t = x.detach().cpu().contiguous()
        d = _BY_TORCH.get(str(t.dtype))
        if d is None:
            raise ArgumentError(f"{where}.dtype: got {t.dtype}, expected one of "
                             f"{', '.join('torch.' + d[3] for d in _DTYPES)}")
        shape = tuple(t.shape)
        raw = t.reshape(-1).view(_torch().uint8).numpy()
    elif isinstance(x, np.ndarray):
        d = _BY_NUMPY.get(x.dtype.str[1:])  # either byte order: written little-endian
        if d is None:
            raise ArgumentError(f"{where}.dtype: got {x.dtype}, expected one of "
                             f"{', '.join(str(np.dtype(d[2])) for d in _DTYPES if d[2])} "
                             "(or a torch tensor for bfloat16 and float8)")
        shape = x.shape
        raw = np.ascontiguousarray(x, dtype=np.dtype(d[2])).reshape(-1).view(np.uint8)
    else:
        raise ArgumentError(f"{where}: got {type(x).__name__}, expected a numpy.ndarray or a "
                         "torch.Tensor")
    if len(shape) > _lib.MAX_DIMS:
        raise ArgumentError(f"{where}.ndim: got {len(shape)}, expected 0 .. {_lib.MAX_DIMS} "
                         "(mha's limit)")
    return d, shape, raw


def _torch():
    import torch
    return torch


def _st_load(path):
    c = _lib.ctx()
    st = ctypes.c_void_p()
    _lib.check(_lib.lib.mha_st_load(c, os.fsencode(os.fspath(path)), ctypes.byref(st)), c)
    return st


def save_file(tensors, path, metadata=None):
    """Writes tensors to a safetensors file (what ``safetensors.*.save_file`` does).

    Parameters
    ----------
    tensors : dict of str -> numpy.ndarray or torch.Tensor
        Up to 5 dimensions each. NumPy: float32, float64, float16, bool, int8/16/32/64,
        uint8/16/32/64 (any byte order and strides: written little-endian, C order).
        PyTorch: the same, plus bfloat16 (written as BF16) and float8_e4m3fn / float8_e5m2
        (F8_E4M3 / F8_E5M2); tensors on any device are copied to the CPU.
    path : str or os.PathLike
    metadata : dict of str -> str, optional
        Stored in the file's "__metadata__" (e.g. {"num_heads": "8"}).

    The file is replaced only once the new one is completely written: on any error the
    previous file, if any, is unchanged and no temporary file is left.

    Example
    -------
    >>> import numpy as np, mha
    >>> mha.save_file({"w": np.eye(4, dtype=np.float32)}, "w.safetensors", {"note": "eye"})
    """
    fn = "save_file"
    if not isinstance(tensors, dict):
        raise ArgumentError(f"{fn}: tensors: got {type(tensors).__name__}, expected a dict of str "
                         "-> array")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise ArgumentError(f"{fn}: metadata: got {type(metadata).__name__}, expected a dict of "
                         "str -> str")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ArgumentError(f"{fn}: metadata[{k!r}]: got {type(k).__name__} -> "
                             f"{type(v).__name__}, expected str -> str (the format's rule)")
    items = []
    for name, x in tensors.items():
        if not isinstance(name, str):
            raise ArgumentError(f"{fn}: tensors: got a key of type {type(name).__name__}, "
                             "expected str")
        items.append((name, *_raw(fn, name, x)))
    c = _lib.ctx()
    st = ctypes.c_void_p()
    _lib.check(_lib.lib.mha_st_create(c, ctypes.byref(st)), c)
    try:
        for name, d, shape, raw in items:
            a = _lib.Array(d[0], len(shape), _lib._Dims(*shape), raw.ctypes.data)
            _lib.check(_lib.lib.mha_st_set(c, st, name.encode(), ctypes.byref(a)), c)
        for k, v in metadata.items():
            _lib.check(_lib.lib.mha_st_meta_set(c, st, k.encode(), v.encode()), c)
        _lib.check(_lib.lib.mha_st_save(c, st, os.fsencode(os.fspath(path))), c)
    finally:
        _lib.lib.mha_st_free(st)


def _array(fn, name, a, framework):
    """An owned copy of the library's array a (mha_array) for framework."""
    d = _BY_CODE.get(a.dtype)
    if d is None:
        raise ArgumentError(f"{fn}: tensor {name!r}: dtype code {a.dtype} is unknown to this "
                         "version of the package")
    shape = tuple(a.shape[:a.ndim])
    if framework == "pt":
        torch = _torch()
        out = torch.empty(shape, dtype=getattr(torch, d[3]))
        dst = out.data_ptr()
    elif d[2] is None and d[1] != "BF16":
        raise ArgumentError(f"{fn}: tensor {name!r}: dtype {d[1]} has no NumPy equivalent "
                         "(load it with framework=\"pt\")")
    else:
        out = np.empty(shape, d[2] or "<u2")
        dst = out.ctypes.data
    n = math.prod(shape) * d[4]
    if n:
        ctypes.memmove(dst, a.data, n)
    if framework != "pt" and d[1] == "BF16":  # bfloat16 is the upper half of a float32
        out = (out.astype("<u4") << 16).view("<f4")
    return out


def load_file(path, framework="numpy"):
    """Reads every tensor of a safetensors file (what ``safetensors.*.load_file`` does).

    Parameters
    ----------
    path : str or os.PathLike
    framework : "numpy" (or "np"), or "pt" (or "torch")
        What to return: NumPy arrays, or torch tensors (on the CPU).
        With NumPy, BF16 tensors are CONVERTED to float32 (exactly: NumPy has no bfloat16),
        and float8 tensors (F8_E4M3, F8_E5M2) raise ValueError (load them with "pt").

    Returns
    -------
    dict of str -> array, in the order of the names (byte order), each a new array the caller
    owns.

    Raises OSError (the file cannot be read), ValueError (not a valid safetensors file, with
    the library's message saying what is wrong).

    Example
    -------
    >>> import mha
    >>> w = mha.load_file("w.safetensors")["w"]      # numpy.ndarray
    """
    fn = "load_file"
    fw = _FRAMEWORKS.get(framework) if isinstance(framework, str) else None
    if fw is None:
        raise ArgumentError(f"{fn}: framework: got {framework!r}, expected \"numpy\" (\"np\") or "
                         "\"pt\" (\"torch\")")
    st = _st_load(path)
    try:
        lib = _lib.lib
        out = {}
        for i in range(lib.mha_st_count(st)):
            name = lib.mha_st_name(st, i)
            out[name.decode()] = _array(fn, name.decode(), lib.mha_st_find(st, name).contents,
                                        fw)
        return out
    finally:
        _lib.lib.mha_st_free(st)


def load_metadata(path):
    """The string metadata ("__metadata__") of a safetensors file, as a dict ({} when the file
    has none). The whole file is read and validated.

    Example
    -------
    >>> import mha
    >>> mha.load_metadata("layer.safetensors")
    {'num_heads': '8'}
    """
    st = _st_load(path)
    try:
        lib = _lib.lib
        keys = [lib.mha_st_meta_key(st, i) for i in range(lib.mha_st_meta_count(st))]
        return {k.decode(): lib.mha_st_meta_get(st, k).decode() for k in keys}
    finally:
        _lib.lib.mha_st_free(st)


def load_layer(path, prefix=None, num_heads=None):
    """One attention layer of a safetensors checkpoint, in nn.MultiheadAttention's names and
    layout, whatever layout the file has.

    Parameters
    ----------
    path : str or os.PathLike
        A layer's or a whole model's state_dict saved as safetensors. Layouts, detected from the
        names: nn.MultiheadAttention (in_proj_* or q/k/v_proj_weight), the W_q/W_k/W_v/W_o
        module, Hugging Face q_proj/k_proj/v_proj + out_proj or o_proj, BERT's
        query/key/value + output.dense, GPT-2's c_attn/c_proj (Conv1D, transposed here).
        bfloat16, float16 and float64 parameters are converted to float32.
    prefix : str, optional
        Picks the layer in a model's file, e.g. "encoder.layers.0.self_attn." or
        "bert.encoder.layer.3.attention." (a prefix naming a component, "encoder.layers.1",
        works too). Without one the file must hold one layer; with several, the error lists
        them.
    num_heads : int, optional
        Needed when the file does not record it ({"num_heads": "8"} in its metadata, as
        mha.export writes); must agree with it when it does.

    Returns
    -------
    (state_dict, num_heads): dict of str -> float32 numpy.ndarray with the names
    ``in_proj_weight`` (or ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``),
    ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias`` (no biases when the layer has
    none; a layer with only some biases gets zeros for the others), and the number of heads.

    Example
    -------
    >>> import mha
    >>> sd, heads = mha.load_layer("bert.safetensors", "bert.encoder.layer.0.attention.", 12)
    >>> sd["in_proj_weight"].shape
    (2304, 768)
    """
    fn = "load_layer"
    if prefix is not None and not isinstance(prefix, str):
        raise ArgumentError(f"{fn}: prefix: got {type(prefix).__name__}, expected a str or None")
    if num_heads is not None and (isinstance(num_heads, bool) or not isinstance(num_heads, int)
                                  or num_heads < 1):
        raise ArgumentError(f"{fn}: num_heads: got {num_heads!r}, expected a positive int or None")
    st = _st_load(path)
    layer = ctypes.c_void_p()
    try:
        c = _lib.ctx()
        pre = prefix.encode() if prefix is not None else None
        _lib.check(_lib.lib.mha_st_layer(c, st, pre, ctypes.byref(layer)), c)
    finally:
        _lib.lib.mha_st_free(st)
    try:
        lib = _lib.lib
        names = [lib.mha_st_name(layer, i) for i in range(lib.mha_st_count(layer))]
        sd = {n.decode(): _array(fn, n.decode(), lib.mha_st_find(layer, n).contents, "numpy")
              for n in names}
        rec = lib.mha_st_meta_get(layer, b"num_heads")
        where = lib.mha_st_meta_get(layer, b"prefix").decode() or "(top level)"
    finally:
        _lib.lib.mha_st_free(layer)
    recorded = int(rec.decode()) if rec else None
    if num_heads is None and recorded is None:
        raise ArgumentError(f"{fn}: num_heads: got None, expected the number of heads: {path} does "
                         "not record it (files mha.export writes do)")
    if num_heads is not None and recorded is not None and num_heads != recorded:
        raise ArgumentError(f"{fn}: num_heads: got {num_heads}, expected {recorded} (the number "
                         f"the layer in {path} was saved with)")
    heads = num_heads if num_heads is not None else recorded
    E = sd["out_proj.weight"].shape[0]
    if E % heads != 0:
        raise ArgumentError(f"{fn}: num_heads: got {heads}, expected a divisor of the embedding "
                         f"size {E} (layer {where} of {path})")
    return sd, heads


def export(module, path):
    """Writes an attention module's parameters to a safetensors file that the ``mha`` CLI and
    the C library load without being told the number of heads.

    Parameters
    ----------
    module : torch.nn.Module with a ``num_heads`` attribute
        ``torch.nn.MultiheadAttention``, ``mha.MultiheadAttention``, ``mha.MultiHeadAttention``
        (the seed's ``W_q``, ``W_k``, ``W_v``, ``W_o``), ...
    path : str or os.PathLike

    Writes ``module.state_dict()`` with the metadata {"num_heads": str(module.num_heads)},
    through ``save_file`` (all or nothing).

    Example
    -------
    >>> import torch, mha
    >>> mha.export(torch.nn.MultiheadAttention(512, 8, batch_first=True), "layer.safetensors")
    >>> # then: mha forward --weights layer.safetensors --query x.npy --out y.npy
    """
    heads = getattr(module, "num_heads", None)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ArgumentError(f"export: module.num_heads: got {heads!r}, expected a positive int "
                         "(an attention module such as torch.nn.MultiheadAttention)")
    if not callable(getattr(module, "state_dict", None)):
        raise ArgumentError(f"export: module: got {type(module).__name__}, expected a "
                         "torch.nn.Module")
    save_file(dict(module.state_dict()), path, {"num_heads": str(heads)})
