"""mha_py - small Python helpers shared by the test scripts and the golden generator.

safetensors reading and writing of our own (the golden files are what this writes, byte for byte,
whatever safetensors package is installed): an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}}, then the raw little-endian bytes. Run everything with the
test venv's Python (build/venv/bin/python: PyTorch 2.13, numpy), as `make test` does.
"""
import json
import struct

import numpy as np

_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("bool"): "BOOL",
           np.dtype("<i4"): "I32", np.dtype("<i8"): "I64", np.dtype("<f2"): "F16"}
_NP = {v: k for k, v in _DTYPES.items()}


def save_safetensors(path, tensors, metadata=None):
    """Writes {name: numpy array} as safetensors (arrays made C-contiguous little-endian)."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        a = np.require(tensors[name], requirements="C")
        if a.dtype.newbyteorder("<") in _DTYPES and a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        dt = _DTYPES[a.dtype]
        raw = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    """Reads a safetensors file into {name: numpy array}."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[8 + n + b:8 + n + e], dtype=_NP[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def state_dict_numpy(module):
    """A torch module's state_dict as float32 numpy arrays under PyTorch's names."""
    return {k: v.detach().cpu().float().numpy() for k, v in module.state_dict().items()}
