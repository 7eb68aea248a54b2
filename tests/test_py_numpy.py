"""test_py_numpy.py - mha.attention / mha.attention_backward on NumPy arrays, against a float64
NumPy reference, and mha.set_num_threads / get_num_threads.

Covers: random shapes (L = 1, E = 7 and 80, L != S), every kind of mask (bool and float,
shared [L, S], key padding [B, 1, 1, S], broadcast to [B, H, L, S]), causal in both
alignments, fully masked rows (0, lse -inf, no gradient), strided views of packed arrays read
in place, bad inputs, and that the NumPy path neither needs nor imports PyTorch.
"""
import os
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest

import mha
from mha import _lib, _numpy

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.join(os.path.dirname(HERE), "python")


# ------------------------------------------------------------------------------------------
# float64 reference
# ------------------------------------------------------------------------------------------
def ref_scores(q, k, mask, causal, scale):
    """Scaled, masked scores [B, H, L, S] in float64 and the allowed-key matrix."""
    q, k = q.astype(np.float64), k.astype(np.float64)
    L, S = q.shape[2], k.shape[2]
    s = np.einsum("bhle,bhse->bhls", q, k) * scale
    allowed = np.ones(s.shape, bool)
    if mask is not None:
        if mask.dtype == np.bool_:
            allowed &= ~np.broadcast_to(mask, s.shape)
        else:
            s = s + np.broadcast_to(mask.astype(np.float64), s.shape)
    if causal:
        shift = S - L if causal == "bottom_right" else 0
        i, j = np.arange(L)[:, None], np.arange(S)[None, :]
        allowed &= j <= i + shift
    allowed &= s > -np.inf
    return np.where(allowed, s, -np.inf), allowed


def ref_forward(q, k, v, mask=None, causal=False, scale=None):
    """(out, lse, P) in float64; fully masked rows: out 0, lse -inf, P 0."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s, allowed = ref_scores(q, k, mask, causal, scale)
    any_ = allowed.any(-1, keepdims=True)
    mx = np.where(any_, np.where(allowed, s, -np.inf).max(-1, keepdims=True), 0)
    e = np.where(allowed, np.exp(s - mx), 0)
    tot = e.sum(-1, keepdims=True)
    p = np.where(any_, e / np.where(any_, tot, 1), 0)
    out = p @ v.astype(np.float64)
    with np.errstate(divide="ignore"):
        lse = np.where(any_, mx + np.log(np.where(any_, tot, 1)), -np.inf)[..., 0]
    return out, lse, p


def ref_backward(q, k, v, dout, mask=None, causal=False, scale=None):
    """(dq, dk, dv) of sum(out * dout), in float64."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    _, _, p = ref_forward(q, k, v, mask, causal, scale)
    q, k, v, dout = (x.astype(np.float64) for x in (q, k, v, dout))
    dv = np.swapaxes(p, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = ds @ k * scale
    dk = np.swapaxes(ds, -1, -2) @ q * scale
    return dq, dk, dv


def close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=what)


# ------------------------------------------------------------------------------------------
# random configurations
# ------------------------------------------------------------------------------------------
SHAPES = [  # B, H, L, S, E, Ev
    (1, 1, 1, 1, 7, 7),
    (2, 3, 1, 9, 7, 5),
    (1, 2, 17, 33, 80, 80),
    (2, 1, 40, 13, 16, 24),
    (1, 2, 65, 65, 64, 64),
]


def make_mask(kind, rng, B, H, L, S):
    if kind is None:
        return None
    if kind == "bool_LS":
        return rng.random((L, S)) < 0.3
    if kind == "float_LS":
        m = rng.standard_normal((L, S)).astype(np.float32)
        m[rng.random((L, S)) < 0.2] = -np.inf
        return m
    if kind == "bool_S":  # 1-D, broadcast over everything
        return rng.random(S) < 0.3
    if kind == "key_padding":
        return rng.random((B, 1, 1, S)) < 0.3
    if kind == "float_key_padding":
        return np.where(rng.random((B, 1, 1, S)) < 0.3, -np.inf, 0).astype(np.float32)
    if kind == "bool_BHLS":
        return rng.random((B, H, L, S)) < 0.3
    if kind == "float_HLS":  # 3-D: one mask per head, shared by the batches
        return rng.standard_normal((H, L, S)).astype(np.float32)
    if kind == "bool_B1LS":
        return rng.random((B, 1, L, S)) < 0.3
    raise AssertionError(kind)


MASKS = [None, "bool_LS", "float_LS", "bool_S", "key_padding", "float_key_padding", "bool_BHLS",
         "float_HLS", "bool_B1LS"]
CAUSAL = [False, True, "bottom_right"]


def inputs(rng, B, H, L, S, E, Ev):
    q = rng.standard_normal((B, H, L, E)).astype(np.float32)
    k = rng.standard_normal((B, H, S, E)).astype(np.float32)
    v = rng.standard_normal((B, H, S, Ev)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", MASKS, ids=str)
@pytest.mark.parametrize("causal", CAUSAL, ids=str)
def test_forward_backward_vs_reference(shape, kind, causal):
    B, H, L, S, E, Ev = shape
    rng = np.random.default_rng(zlib.crc32(repr((shape, kind, causal)).encode()))
    q, k, v = inputs(rng, B, H, L, S, E, Ev)
    mask = make_mask(kind, rng, B, H, L, S)
    out, lse = mha.attention(q, k, v, mask=mask, causal=causal, return_lse=True)
    assert out.dtype == np.float32 and out.shape == (B, H, L, Ev)
    assert lse.dtype == np.float32 and lse.shape == (B, H, L)
    r_out, r_lse, _ = ref_forward(q, k, v, mask, causal)
    close(out, r_out, "out")
    close(lse, r_lse, "lse")  # -inf where fully masked, on both sides
    assert np.array_equal(mha.attention(q, k, v, mask=mask, causal=causal), out)

    dout = rng.standard_normal(out.shape).astype(np.float32)
    dq, dk, dv = mha.attention_backward(q, k, v, out, lse, dout, mask=mask, causal=causal)
    r = ref_backward(q, k, v, dout, mask, causal)
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), r):
        assert got.shape == want.shape and got.dtype == np.float32
        close(got, want, name)


def test_scale():
    rng = np.random.default_rng(1)
    q, k, v = inputs(rng, 2, 2, 5, 6, 8, 8)
    out, lse = mha.attention(q, k, v, scale=0.7, return_lse=True)
    r_out, r_lse, _ = ref_forward(q, k, v, scale=0.7)
    close(out, r_out, "out")
    close(lse, r_lse, "lse")
    dout = rng.standard_normal(out.shape).astype(np.float32)
    for got, want in zip(mha.attention_backward(q, k, v, out, lse, dout, scale=0.7),
                         ref_backward(q, k, v, dout, scale=0.7)):
        close(got, want, "grad")
    # the default is 1/sqrt(E), not something else
    assert np.array_equal(mha.attention(q, k, v), mha.attention(q, k, v, scale=8 ** -0.5))
    assert not np.allclose(mha.attention(q, k, v), out)


def test_fully_masked_rows_give_zero():
    rng = np.random.default_rng(2)
    q, k, v = inputs(rng, 1, 2, 4, 6, 8, 8)
    mask = np.zeros((4, 6), bool)
    mask[1] = True  # query 1 sees no key
    out, lse = mha.attention(q, k, v, mask=mask, return_lse=True)
    assert np.all(out[:, :, 1] == 0) and np.all(lse[:, :, 1] == -np.inf)
    assert np.all(np.abs(out[:, :, 0]) > 0)
    dq, dk, dv = mha.attention_backward(q, k, v, out, lse, np.ones_like(out), mask=mask)
    assert np.all(dq[:, :, 1] == 0)
    # bottom-right causality with L > S: queries i < L - S see no key
    q2 = rng.standard_normal((1, 1, 7, 8)).astype(np.float32)
    out2 = mha.attention(q2, k[:, :1], v[:, :1], causal="bottom_right")
    assert np.all(out2[0, 0, :1] == 0) and np.all(out2[0, 0, 1:] != 0)


def test_causal_alignments_differ():
    rng = np.random.default_rng(3)
    q, k, v = inputs(rng, 1, 1, 3, 8, 4, 4)
    top = mha.attention(q, k, v, causal="top_left")
    assert np.array_equal(top, mha.attention(q, k, v, causal=True))
    bottom = mha.attention(q, k, v, causal="bottom_right")
    close(top, ref_forward(q, k, v, causal=True)[0], "top_left")
    close(bottom, ref_forward(q, k, v, causal="bottom_right")[0], "bottom_right")
    assert not np.allclose(top, bottom)


# ------------------------------------------------------------------------------------------
# strided views: read in place
# ------------------------------------------------------------------------------------------
def test_packed_qkv_views():
    rng = np.random.default_rng(4)
    B, H, L, E = 2, 3, 11, 16
    qkv = rng.standard_normal((B, H, L, 3, E)).astype(np.float32)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    assert not q.flags.c_contiguous
    out, lse = mha.attention(q, k, v, causal=True, return_lse=True)
    qc, kc, vc = (np.ascontiguousarray(x) for x in (q, k, v))
    close(out, ref_forward(qc, kc, vc, causal=True)[0], "out")
    dout = rng.standard_normal(out.shape).astype(np.float32)
    for got, want in zip(mha.attention_backward(q, k, v, out, lse, dout, causal=True),
                         ref_backward(qc, kc, vc, dout, causal=True)):
        close(got, want, "grad")

    # [B, L, 3, H, E] (what a fused projection gives), transposed to [B, H, L, E]
    blhe = rng.standard_normal((B, L, 3, H, E)).astype(np.float32)
    q2, k2, v2 = (blhe[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    close(mha.attention(q2, k2, v2),
          ref_forward(*(np.ascontiguousarray(x) for x in (q2, k2, v2)))[0], "transposed")

    # broadcast keys and values (stride 0 over the heads)
    kb = np.broadcast_to(kc[:, :1], kc.shape)
    vb = np.broadcast_to(vc[:, :1], vc.shape)
    close(mha.attention(qc, kb, vb), ref_forward(qc, np.ascontiguousarray(kb),
                                                 np.ascontiguousarray(vb))[0], "broadcast")


def test_views_are_not_copies():
    """The library receives the caller's memory and NumPy's strides in elements."""
    qkv = np.zeros((2, 3, 5, 3, 8), np.float32)
    q = qkv[:, :, :, 1]
    t = _numpy.view("attention", "q", q, 4)
    assert t.data == q.ctypes.data == qkv.ctypes.data + 8 * 4
    assert list(t.shape[:4]) == [2, 3, 5, 8]
    assert list(t.stride[:4]) == [3 * 5 * 3 * 8, 5 * 3 * 8, 3 * 8, 1]
    # a dimension of size 1 may carry any stride in NumPy: it is never used
    one = np.zeros((4, 1), np.float32).T  # shape (1, 4), strides (4, 4)
    assert list(_numpy.view("f", "x", one, 2).stride[:2]) == [0, 1]


# ------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------
def test_bad_dtypes_are_not_converted():
    q = np.zeros((1, 1, 2, 4), np.float32)
    for name, i in (("q", 0), ("k", 1), ("v", 2)):
        args = [q, q, q]
        args[i] = q.astype(np.float64)
        with pytest.raises(ValueError, match=rf"attention: {name}\.dtype: got float64, "
                                             "expected float32"):
            mha.attention(*args)
    with pytest.raises(ValueError, match=r"attention: k: got list, expected a numpy.ndarray$"):
        mha.attention(q, [[1.0]], q)
    torch_like = type("Tensor", (), {"__module__": "torch"})()  # torch itself not needed
    with pytest.raises(ValueError, match=r"attention: v: got Tensor, expected a numpy.ndarray "
                                         r"\(for torch tensors: mha.functional.scaled_dot"):
        mha.attention(q, q, torch_like)
    out, lse = mha.attention(q, q, q, return_lse=True)
    with pytest.raises(ValueError, match=r"attention_backward: dout\.dtype: got float16"):
        mha.attention_backward(q, q, q, out, lse, out.astype(np.float16))
    with pytest.raises(ValueError, match=r"attention_backward: lse\.ndim: got 4, expected 3"):
        mha.attention_backward(q, q, q, out, out, out)
    with pytest.raises(ValueError, match=r"attention: q\.ndim: got 3, expected 4"):
        mha.attention(q[0], q, q)


def test_bad_strides():
    base = np.zeros((1, 1, 3, 8), np.float32)
    for bad in (base[..., ::2], base[:, :, ::-1]):
        with pytest.raises(ValueError, match=r"attention: q\.strides: .*np\.ascontiguousarray"):
            mha.attention(bad, base[..., :bad.shape[-1]], base[..., :bad.shape[-1]])
    odd = np.lib.stride_tricks.as_strided(np.zeros(64, np.float32), (1, 1, 3, 4), (0, 0, 18, 4))
    with pytest.raises(ValueError, match=r"attention: k\.strides: got \(0, 0, 18, 4\) bytes"):
        mha.attention(base[..., :4], odd, base[..., :4])
    assert mha.attention(base, np.ascontiguousarray(base[:, :, ::-1]), base).shape == base.shape


def test_library_errors_come_through():
    q = np.zeros((1, 2, 3, 8), np.float32)
    k = np.zeros((1, 2, 4, 6), np.float32)
    with pytest.raises(ValueError, match=r"^mha_attn_forward: ") as e:
        mha.attention(q, k, k)
    assert e.value.status == _lib.ERR_SHAPE
    with pytest.raises(ValueError, match=r"^mha_attn_backward: "):
        mha.attention_backward(q, q, q, q, np.zeros((1, 2, 4), np.float32), q)


def test_bad_masks_and_options():
    q = np.zeros((2, 2, 3, 4), np.float32)
    k = np.zeros((2, 2, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"mask\.shape: got \(3, 4\), expected a shape "
                                         r"broadcastable to \[B, H, L, S\] = \[2, 2, 3, 5\]"):
        mha.attention(q, k, k, mask=np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match=r"mask\.shape: got \(3, 2, 3, 5\)"):
        mha.attention(q, k, k, mask=np.zeros((3, 2, 3, 5), bool))
    with pytest.raises(ValueError, match=r"mask\.dtype: got int64, expected bool"):
        mha.attention(q, k, k, mask=np.zeros((3, 5), np.int64))
    with pytest.raises(ValueError, match=r"mask\.dtype: got float64"):
        mha.attention(q, k, k, mask=np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"causal: got 'top', expected False, True"):
        mha.attention(q, k, k, causal="top")
    with pytest.raises(ValueError, match=r"scale: got 0.0, expected a nonzero number"):
        mha.attention(q, k, k, scale=0.0)
    # nor a nonzero scale that float32 rounds to 0 (the library's float32 0: its default)
    with pytest.raises(ValueError, match=r"scale: got 1e-50, expected a nonzero number float32 "
                                         r"can hold"):
        mha.attention(q, k, k, scale=1e-50)
    with pytest.raises(ValueError, match=r"scale: got 'x'"):
        mha.attention(q, k, k, scale="x")


# ------------------------------------------------------------------------------------------
# no PyTorch
# ------------------------------------------------------------------------------------------
def run_python(code):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_numpy_path_without_torch():
    out = run_python(
        "import sys\n"
        "sys.modules['torch'] = None  # import torch now raises ImportError\n"
        "import numpy as np, mha\n"
        "q = np.ones((1, 2, 3, 4), np.float32)\n"
        "o, l = mha.attention(q, q, q, causal=True, return_lse=True)\n"
        "mha.attention_backward(q, q, q, o, l, o)\n"
        "assert sys.modules['torch'] is None\n"
        "print(float(o.sum()))\n")
    assert float(out) == 24.0
    # and with torch importable, the NumPy path still does not import it
    run_python("import sys, numpy as np, mha\n"
               "import importlib.util; assert importlib.util.find_spec('torch')\n"
               "q = np.ones((1, 2, 3, 4), np.float32)\n"
               "mha.attention(q, q, q)\n"
               "assert 'torch' not in sys.modules, 'torch was imported'\n")


def test_import_mha_imports_neither_numpy_nor_torch():
    run_python("import sys, mha\n"
               "assert 'numpy' not in sys.modules and 'torch' not in sys.modules, "
               "sorted(m for m in sys.modules if m in ('numpy', 'torch'))\n"
               "assert callable(mha.attention) and 'numpy' in sys.modules\n"
               "assert 'torch' not in sys.modules\n")


# ------------------------------------------------------------------------------------------
# threads
# ------------------------------------------------------------------------------------------
@pytest.fixture
def default_threads():
    yield
    mha.set_num_threads(0)


def test_threads_values(default_threads):
    mha.set_num_threads(0)
    default = mha.get_num_threads()
    assert default >= 1
    for n in (1, 2, 3, 1024):
        mha.set_num_threads(n)
        assert mha.get_num_threads() == n
    mha.set_num_threads(0)
    assert mha.get_num_threads() == default


def test_threads_bad_values(default_threads):
    mha.set_num_threads(2)
    for bad in (-1, 1025):
        with pytest.raises(ValueError, match=rf"^mha_ctx_set_threads: n: got {bad}, expected 1 "
                                             r"to 1024 \(MHA_MAX_THREADS\), or 0 for all cores$"):
            mha.set_num_threads(bad)
    for bad in ("2", 2.0, True, None):
        with pytest.raises(ValueError, match=r"set_num_threads: n: got .*, expected an int"):
            mha.set_num_threads(bad)
    assert mha.get_num_threads() == 2  # unchanged by the failures


def test_threads_follow_in_other_python_threads(default_threads):
    mha.set_num_threads(3)
    seen, ready, go = [], threading.Event(), threading.Event()

    def worker():
        seen.append(mha.get_num_threads())  # this thread's context, created now
        ready.set()
        go.wait(30)
        seen.append(mha.get_num_threads())  # renewed after the main thread's change

    t = threading.Thread(target=worker)
    t.start()
    ready.wait(30)
    mha.set_num_threads(1)
    go.set()
    t.join(30)
    assert seen == [3, 1]

    t = threading.Thread(target=mha.set_num_threads, args=(2,))
    t.start()
    t.join(30)
    assert mha.get_num_threads() == 2


def test_results_do_not_depend_on_threads(default_threads):
    rng = np.random.default_rng(5)
    q, k, v = inputs(rng, 2, 4, 70, 90, 32, 32)
    mha.set_num_threads(1)
    one = mha.attention(q, k, v, causal=True, return_lse=True)
    mha.set_num_threads(2)
    two = mha.attention(q, k, v, causal=True, return_lse=True)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
