"""test_py_files.py - mha.save_file / load_file / load_metadata / export (safetensors without
the safetensors package), checked against the safetensors package both ways, and an exported
torch.nn.MultiheadAttention run by the mha CLI without --heads.

test_new_dtypes covers the dtypes beyond F32, BOOL, I32 and F64 (F16, BF16, the integers,
float8): it needs the C library's dtype table of the same issue.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import mha

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.join(os.path.dirname(HERE), "python")

RNG = np.random.default_rng(0)


def base_arrays():
    """One array of each of the four original dtypes, in awkward shapes and layouts."""
    return {
        "f32": RNG.standard_normal((3, 4, 5)).astype(np.float32),
        "f32.transposed": RNG.standard_normal((4, 6)).astype(np.float32).T,  # not C order
        "f32.scalar": np.array(2.5, np.float32),
        "f32.empty": np.zeros((0, 3), np.float32),
        "f32.5d": RNG.standard_normal((1, 2, 1, 3, 2)).astype(np.float32),
        "bool": RNG.random((2, 7)) < 0.5,
        "i32": RNG.integers(-2**31, 2**31, (9,), dtype=np.int32),
        "f64": RNG.standard_normal((2, 2)),
        "f64.bigendian": np.arange(5, dtype=">f8"),
    }


def same(got, want):
    assert got.keys() == want.keys()
    for k in want:
        w = want[k]
        w = w.numpy() if isinstance(w, torch.Tensor) else w
        g = got[k].numpy() if isinstance(got[k], torch.Tensor) else got[k]
        assert g.shape == w.shape, k
        assert g.dtype == w.dtype.newbyteorder("="), k
        assert np.array_equal(g, w), k


def tmp_files(d):
    return sorted(f for f in os.listdir(d) if f.startswith(".mha-"))


# ------------------------------------------------------------------------------------------
# round trips and the safetensors package
# ------------------------------------------------------------------------------------------
def test_numpy_round_trip(tmp_path):
    arrays = base_arrays()
    p = tmp_path / "a.safetensors"
    mha.save_file(arrays, p, {"name": "arrays", "heads": "8"})
    for fw in ("numpy", "np"):
        got = mha.load_file(p, framework=fw)
        assert all(isinstance(a, np.ndarray) and a.flags.writeable for a in got.values())
        same(got, arrays)
    assert mha.load_metadata(str(p)) == {"name": "arrays", "heads": "8"}
    mha.save_file({"x": arrays["f32"]}, p)
    assert mha.load_metadata(p) == {}
    assert list(mha.load_file(p)) == ["x"]


def test_torch_round_trip(tmp_path):
    tensors = {
        "w": torch.randn(4, 3, requires_grad=True),  # saved detached
        "w.t": torch.randn(3, 5).t(),  # not contiguous
        "p": torch.nn.Parameter(torch.randn(2)),
        "mask": torch.rand(3, 3) < 0.5,
        "idx": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "d": torch.randn(2, dtype=torch.float64),
        "empty": torch.zeros(0, 2),
        "scalar": torch.tensor(1.5),
    }
    p = tmp_path / "t.safetensors"
    mha.save_file(tensors, p)
    for fw in ("pt", "torch"):
        got = mha.load_file(p, framework=fw)
        assert got.keys() == tensors.keys()
        for k, t in tensors.items():
            assert isinstance(got[k], torch.Tensor) and got[k].dtype == t.dtype, k
            assert got[k].shape == t.shape and torch.equal(got[k], t.detach()), k
    same(mha.load_file(p), {k: t.detach().numpy() for k, t in tensors.items()})


def test_written_here_read_by_safetensors(tmp_path):
    arrays = base_arrays()
    p = tmp_path / "a.safetensors"
    mha.save_file(arrays, p, {"format": "np", "num_heads": "4"})
    same(safetensors.numpy.load_file(p), arrays)
    with safetensors.safe_open(p, framework="np") as f:
        assert f.metadata() == {"format": "np", "num_heads": "4"}
    t = {"a": torch.randn(2, 3), "b": torch.tensor([True, False])}
    mha.save_file(t, p)
    got = safetensors.torch.load_file(p)
    assert all(torch.equal(got[k], t[k]) for k in t)


def test_written_by_safetensors_read_here(tmp_path):
    arrays = {k: np.ascontiguousarray(v, v.dtype.newbyteorder("<"))
              for k, v in base_arrays().items()}
    p = tmp_path / "s.safetensors"
    safetensors.numpy.save_file(arrays, p, metadata={"a": "1", "b": "two"})
    same(mha.load_file(p), arrays)
    assert mha.load_metadata(p) == {"a": "1", "b": "two"}
    t = {"x": torch.randn(3, 2), "y": torch.arange(4, dtype=torch.int32)}
    safetensors.torch.save_file(t, p)
    got = mha.load_file(p, framework="pt")
    assert all(torch.equal(got[k], t[k]) for k in t)


# ------------------------------------------------------------------------------------------
# every safetensors dtype (needs the C library's full dtype table)
# ------------------------------------------------------------------------------------------
def test_new_dtypes(tmp_path):
    p = tmp_path / "n.safetensors"
    ints = {f"{n}": RNG.integers(np.iinfo(n).min, np.iinfo(n).max, (3, 4), dtype=n,
                                 endpoint=True)
            for n in ("int64", "uint8", "int8", "int16", "uint16", "uint32", "uint64")}
    arrays = {**ints, "f16": RNG.standard_normal((2, 5)).astype(np.float16),
              "f16.bigendian": np.arange(3, dtype=">f2")}
    # NumPy: here, and both ways with the safetensors package
    mha.save_file(arrays, p, {"m": "x"})
    same(mha.load_file(p), arrays)
    same(safetensors.numpy.load_file(p), arrays)
    little = {k: np.ascontiguousarray(v, v.dtype.newbyteorder("<")) for k, v in arrays.items()}
    safetensors.numpy.save_file(little, p, metadata={"m": "y"})
    same(mha.load_file(p), little)
    assert mha.load_metadata(p) == {"m": "y"}

    # PyTorch: bfloat16 and float8 too, raw bits kept
    t = {"bf16": torch.randn(3, 4).bfloat16(), "f16": torch.randn(5).half(),
         "e4m3": torch.randn(2, 3).to(torch.float8_e4m3fn),
         "e5m2": torch.randn(2, 3).to(torch.float8_e5m2),
         "i64": torch.arange(-3, 3), "u8": torch.arange(200, 206, dtype=torch.uint8),
         "i8": torch.arange(-3, 3, dtype=torch.int8), "i16": torch.arange(-3, 3).short(),
         "u16": torch.arange(60000, 60003, dtype=torch.int32).to(torch.uint16),
         "u32": torch.tensor([2**32 - 1, 7], dtype=torch.uint32),
         "u64": torch.tensor([2**63 + 5], dtype=torch.uint64)}

    def bits(x):
        return x.reshape(-1).view(torch.uint8)

    def same_torch(got):
        assert got.keys() == t.keys()
        for k in t:
            assert got[k].dtype == t[k].dtype and got[k].shape == t[k].shape, k
            assert torch.equal(bits(got[k]), bits(t[k])), k

    mha.save_file(t, p)
    same_torch(mha.load_file(p, framework="pt"))
    same_torch(safetensors.torch.load_file(p))
    safetensors.torch.save_file(t, p)
    same_torch(mha.load_file(p, framework="pt"))

    # NumPy has no bfloat16: converted to float32 (exactly); float8: an error naming "pt"
    bf = {"bf16": t["bf16"], "f16": t["f16"]}
    mha.save_file(bf, p)
    got = mha.load_file(p)
    assert got["bf16"].dtype == np.float32
    assert np.array_equal(got["bf16"], t["bf16"].float().numpy())
    assert got["f16"].dtype == np.float16 and np.array_equal(got["f16"], t["f16"].numpy())
    mha.save_file({"e4m3": t["e4m3"]}, p)
    with pytest.raises(ValueError, match=r"load_file: tensor 'e4m3': dtype F8_E4M3 has no "
                                         r"NumPy equivalent \(load it with framework=\"pt\"\)"):
        mha.load_file(p)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def test_bad_values(tmp_path):
    p = tmp_path / "b.safetensors"
    ok = np.zeros(2, np.float32)
    cases = [
        ({"c": np.zeros(2, np.complex64)}, None,
         r"save_file: tensors\['c'\]\.dtype: got complex64, expected one of float32, bool"),
        ({"c": torch.zeros(2, dtype=torch.complex64)}, None,
         r"save_file: tensors\['c'\]\.dtype: got torch\.complex64, expected one of "
         r"torch\.float32"),
        ({"s": np.array(["a"])}, None, r"tensors\['s'\]\.dtype: got <U1"),
        ({"l": [1.0, 2.0]}, None,
         r"save_file: tensors\['l'\]: got list, expected a numpy\.ndarray or a torch\.Tensor"),
        ({"six": np.zeros((1,) * 6, np.float32)}, None,
         r"save_file: tensors\['six'\]\.ndim: got 6, expected 0 \.\. 5"),
        ({1: ok}, None, r"save_file: tensors: got a key of type int, expected str"),
        ({"x": ok}, {"n": 8}, r"save_file: metadata\['n'\]: got str -> int, expected str -> str"),
        ({"x": ok}, ["n"], r"save_file: metadata: got list, expected a dict"),
        ({"__metadata__": ok}, None, r"^mha_st_set: name: got \"__metadata__\""),
    ]
    p.write_bytes(b"old")
    for tensors, meta, msg in cases:
        with pytest.raises(ValueError, match=msg):
            mha.save_file({"first": ok, **tensors}, p, meta)
        assert p.read_bytes() == b"old"  # all or nothing
    assert tmp_files(tmp_path) == []
    with pytest.raises(ValueError, match=r"save_file: tensors: got list"):
        mha.save_file([ok], p)
    with pytest.raises(ValueError, match=r"load_file: framework: got 'tf', expected \"numpy\""):
        mha.load_file(p, framework="tf")


def test_file_errors(tmp_path):
    with pytest.raises(OSError, match=r"nope\.safetensors"):
        mha.load_file(tmp_path / "nope.safetensors")
    with pytest.raises(OSError):
        mha.load_metadata(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match=r"^mha_st_"):
        mha.load_file(bad)
    # a name or metadata that is not UTF-8: the library's error naming the file, not a
    # UnicodeDecodeError from decoding the name
    for header in (b'{"\xff":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}',
                   b'{"__metadata__":{"k":"\xc3"},"a":{"dtype":"F32","shape":[],'
                   b'"data_offsets":[0,4]}}'):
        bad.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
        for load in (mha.load_file, mha.load_metadata):
            with pytest.raises(ValueError, match=r"^mha_st_load: .*bad\.safetensors: header: "
                                                 r"invalid UTF-8"):
                load(bad)
    with pytest.raises(OSError):  # a directory is never replaced
        mha.save_file({"x": np.zeros(1, np.float32)}, tmp_path)
    with pytest.raises(OSError):
        mha.save_file({"x": np.zeros(1, np.float32)}, tmp_path / "no" / "such.safetensors")
    assert tmp_files(tmp_path) == []


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------
class Seed(torch.nn.Module):
    """The seed repository's module's parameters (W_q, W_k, W_v, W_o) and num_heads."""

    def __init__(self, d_model, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.W_q, self.W_k = torch.nn.Linear(d_model, d_model), torch.nn.Linear(d_model, d_model)
        self.W_v, self.W_o = torch.nn.Linear(d_model, d_model), torch.nn.Linear(d_model, d_model)


def test_export_writes_state_dict_and_heads(tmp_path):
    for m in (torch.nn.MultiheadAttention(16, 4, batch_first=True), Seed(16, 2),
              torch.nn.MultiheadAttention(12, 3, kdim=5, vdim=7)):
        p = tmp_path / "m.safetensors"
        mha.export(m, p)
        assert mha.load_metadata(p) == {"num_heads": str(m.num_heads)}
        got = mha.load_file(p, framework="pt")
        sd = m.state_dict()
        assert got.keys() == sd.keys()
        assert all(torch.equal(got[k], sd[k]) for k in sd)
        m.load_state_dict(got, strict=True)
    with pytest.raises(ValueError, match=r"export: module\.num_heads: got None, expected a "
                                         r"positive int"):
        mha.export(torch.nn.Linear(2, 2), tmp_path / "l.safetensors")
    assert not (tmp_path / "l.safetensors").exists()


def test_exported_layer_runs_in_the_cli_without_heads(tmp_path):
    mha_bin = os.environ.get("MHA_BIN")
    assert mha_bin and os.access(mha_bin, os.X_OK), f"MHA_BIN must name the mha binary: {mha_bin}"
    torch.manual_seed(0)
    E, H, B, L = 32, 4, 2, 9
    layer = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    with torch.no_grad():
        layer.in_proj_bias.normal_()
        layer.out_proj.bias.normal_()
    w = tmp_path / "layer.safetensors"
    mha.export(layer, w)
    x = torch.randn(B, L, E)
    np.save(tmp_path / "x.npy", x.numpy())

    def forward():
        return subprocess.run([mha_bin, "forward", "--weights", str(w), "--query",
                               str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy")],
                              capture_output=True, text=True, timeout=60)

    r = forward()
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        want = layer(x, x, x, need_weights=False)[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-5)

    # the same file without the metadata: the CLI needs --heads (what export adds)
    mha.save_file(mha.load_file(w), w)
    r = forward()
    assert r.returncode != 0 and "heads" in r.stderr


def test_files_do_not_import_torch_for_numpy(tmp_path):
    p = tmp_path / "a.safetensors"
    code = ("import sys, numpy as np, mha\n"
            f"mha.save_file({{'a': np.ones(3, np.float32)}}, {str(p)!r}, {{'k': 'v'}})\n"
            f"assert mha.load_file({str(p)!r})['a'].sum() == 3\n"
            f"assert mha.load_metadata({str(p)!r}) == {{'k': 'v'}}\n"
            "assert 'torch' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=PYTHON_DIR), timeout=120)
    assert r.returncode == 0, r.stderr
