"""test_checkpoints.py - any checkpoint through the CLI: whole models' state_dicts, saved by
safetensors.torch.save_file in float32, bfloat16 and float16, in every layout mha reads.

Run as `MHA_BIN=build/mha MHA_LIB=build/libmha.so build/venv/bin/python -m pytest -q
tests/test_checkpoints.py` (CTest does it via tests/checkpoints.cmake, in the test venv with
PyTorch 2.13). For each layout a PyTorch model of that shape is built (nn.TransformerEncoder and
nn.TransformerDecoder; the seed's W_q/W_k/W_v/W_o module; Hugging Face q_proj/k_proj/v_proj with
o_proj or out_proj; BERT's nested self.query/.../output.dense; GPT-2's Conv1D c_attn/c_proj),
one attention layer is picked with --prefix, and `mha forward` must give what that layer gives
in PyTorch (for bf16/f16 files: the same weights converted to float32). Also: the errors for a
file of several layers without --prefix, a wrong or ambiguous prefix, no layer at all, and a
torch.save file; and, through ctypes on the library, every dtype read and written against
NumPy and the safetensors package.
"""
import ctypes
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cli import run  # noqa: E402  (the mha binary of $MHA_BIN)

try:
    import torch
    from torch import nn
    from safetensors.torch import load_file as st_load_torch
    from safetensors.torch import save_file as st_save_torch
    TORCH_ERROR = None
except Exception as e:  # ImportError, or a broken install
    torch = None
    TORCH_ERROR = f"{type(e).__name__}: {e}"

E, H, B, L, S = 16, 4, 2, 5, 7


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def need_torch():
    if torch is None:
        pytest.fail(f"torch cannot be imported: {TORCH_ERROR} (`make test` sets up the test venv)")
    if not torch.__version__.startswith("2.13."):
        pytest.fail(f"the reference is PyTorch 2.13, this is {torch.__version__}")


def attend(q, k, v, causal=False):
    """Multi-head scaled dot-product attention on [B, T, E] projections (H heads)."""
    b, lq, e = q.shape
    d = e // H
    q, k, v = (t.reshape(b, -1, H, d).transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-2, -1) / math.sqrt(d)
    if causal:
        s = s.masked_fill(torch.ones(lq, k.shape[2], dtype=torch.bool).triu(1), float("-inf"))
    return (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, lq, e)


class SeedMHA(nn.Module):
    """The module this project started from: MultiHeadAttention(d_model, num_heads)."""

    def __init__(self, d_model, num_heads):
        super().__init__()
        self.num_heads, self.d_k = num_heads, d_model // num_heads
        self.W_q, self.W_k = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.W_v, self.W_o = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        b, t, e = x.shape
        split = lambda y: y.view(b, t, self.num_heads, self.d_k).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.W_q(x)), split(self.W_k(x)), split(self.W_v(x))
        s = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)
        if mask is not None:
            s = s.masked_fill(mask == 0, float("-inf"))
        w = torch.softmax(s, -1)
        return self.W_o((w @ v).transpose(1, 2).reshape(b, t, e)), w


class HFAttention(nn.Module):
    """Hugging Face style: q_proj, k_proj, v_proj and o_proj (Llama) or out_proj (BART,
    Whisper: whose k_proj has no bias)."""

    def __init__(self, out="o_proj", bias=(True, True, True, True)):
        super().__init__()
        self.out = out
        self.q_proj, self.k_proj = nn.Linear(E, E, bias=bias[0]), nn.Linear(E, E, bias=bias[1])
        self.v_proj = nn.Linear(E, E, bias=bias[2])
        setattr(self, out, nn.Linear(E, E, bias=bias[3]))

    def forward(self, x, kv=None):
        kv = x if kv is None else kv
        return getattr(self, self.out)(attend(self.q_proj(x), self.k_proj(kv), self.v_proj(kv)))


class HFModel(nn.Module):
    def __init__(self, out, bias, n=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(11, E)
        self.layers = nn.ModuleList(nn.Module() for _ in range(n))
        for layer in self.layers:
            layer.self_attn = HFAttention(out, bias)
            layer.mlp = nn.Module()
            layer.mlp.gate_proj, layer.mlp.down_proj = nn.Linear(E, 3 * E), nn.Linear(3 * E, E)
            layer.input_layernorm = nn.LayerNorm(E)


class BertModel(nn.Module):
    """BERT's nesting: bert.encoder.layer.N.attention.{self.query/key/value, output.dense}."""

    def __init__(self):
        super().__init__()
        self.bert = nn.Module()
        self.bert.embeddings = nn.Module()
        self.bert.embeddings.word_embeddings = nn.Embedding(11, E)
        self.bert.embeddings.register_buffer("position_ids", torch.arange(L).view(1, -1))
        self.bert.encoder = nn.Module()
        self.bert.encoder.layer = nn.ModuleList(nn.Module() for _ in range(2))
        for layer in self.bert.encoder.layer:
            layer.attention = nn.Module()
            layer.attention.self = nn.Module()
            for n in ("query", "key", "value"):
                setattr(layer.attention.self, n, nn.Linear(E, E))
            layer.attention.output = nn.Module()
            layer.attention.output.dense = nn.Linear(E, E)
            layer.attention.output.LayerNorm = nn.LayerNorm(E)
            layer.intermediate = nn.Module()
            layer.intermediate.dense = nn.Linear(E, 4 * E)
            layer.output = nn.Module()
            layer.output.dense = nn.Linear(4 * E, E)  # not an attention output

    def attention(self, i, x):
        a = self.bert.encoder.layer[i].attention
        return a.output.dense(attend(a.self.query(x), a.self.key(x), a.self.value(x)))


class Conv1D(nn.Module):
    """GPT-2's Conv1D: weight [in, out], y = x @ weight + bias."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.empty(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class GPT2Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(11, E)
        self.transformer.h = nn.ModuleList(nn.Module() for _ in range(2))
        for blk in self.transformer.h:
            blk.ln_1 = nn.LayerNorm(E)
            blk.attn = nn.Module()
            blk.attn.c_attn, blk.attn.c_proj = Conv1D(3 * E, E), Conv1D(E, E)
            # the causal-mask buffers GPT-2 checkpoints carry (ignored by mha)
            blk.attn.register_buffer("bias", torch.ones(1, 1, 8, 8, dtype=torch.bool).tril())
            blk.attn.register_buffer("masked_bias", torch.tensor(-1e4))
            blk.mlp = nn.Module()
            blk.mlp.c_fc, blk.mlp.c_proj = Conv1D(4 * E, E), Conv1D(E, 4 * E)

    def attention(self, i, x):
        a = self.transformer.h[i].attn
        q, k, v = a.c_attn(x).split(E, dim=2)
        return a.c_proj(attend(q, k, v, causal=True))


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, E)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True), 2,
            enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(E, H, 32, dropout=0.0, batch_first=True), 1)


class SeedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Module() for _ in range(2))
        for blk in self.blocks:
            blk.attn = SeedMHA(E, H)
            blk.norm = nn.LayerNorm(E)


def randomized(model, seed):
    """Every parameter drawn anew (nn.TransformerEncoder's layers are copies of one) and nonzero
    biases, so that picking the wrong layer or dropping a bias shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def save(model, path, dtype):
    """The whole state_dict, floating tensors in dtype (buffers of other dtypes kept)."""
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
          for k, v in model.state_dict().items()}
    st_save_torch(sd, str(path))


def as_saved(model, dtype):
    """The model with its weights rounded to dtype and back (what a dtype file holds)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    return model


# name -> (model builder, [(prefix, reference(model, x) -> y, extra args)])
def _layouts():
    seq = lambda: randomized(Seq2Seq(), 1)  # noqa: E731
    return {
        "nn.MultiheadAttention": (seq, [
            ("encoder.layers.1.self_attn.",
             lambda m, x, kv: m.encoder.layers[1].self_attn(x, x, x, need_weights=False)[0],
             False),
            ("decoder.layers.0.multihead_attn",
             lambda m, x, kv: m.decoder.layers[0].multihead_attn(x, kv, kv, need_weights=False)[0],
             True)]),
        "seed": (lambda: randomized(SeedModel(), 2), [
            ("blocks.1.attn.", lambda m, x, kv: m.blocks[1].attn(x)[0], False)]),
        "huggingface-o_proj": (lambda: randomized(HFModel("o_proj", (False,) * 4), 3), [
            ("layers.0", lambda m, x, kv: m.layers[0].self_attn(x), False)]),
        "huggingface-out_proj": (lambda: randomized(HFModel("out_proj", (True, False, True, True)),
                                                    4), [
            ("layers.1.self_attn", lambda m, x, kv: m.layers[1].self_attn(x, kv), True)]),
        "bert": (lambda: randomized(BertModel(), 5), [
            ("bert.encoder.layer.1.attention.", lambda m, x, kv: m.attention(1, x), False)]),
        "gpt2": (lambda: randomized(GPT2Model(), 6), [
            ("transformer.h.0.attn.", lambda m, x, kv: m.attention(0, x), False)]),
    }


LAYOUTS = _layouts() if torch is not None else {}
DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _inputs(d):
    r = np.random.default_rng(7)
    x = r.standard_normal((B, L, E)).astype(np.float32)
    kv = r.standard_normal((B, S, E)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.save(d / "kv.npy", kv)
    return x, kv


def close(got, ref, what):
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * max(1.0, scale), err_msg=what)


# ------------------------------------------------------------------------------------------
# every layout, every dtype: mha forward == the layer in PyTorch
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_forward_matches_torch(tmp_path, layout, dtype):
    build, layers = LAYOUTS[layout]
    model = build()
    f = tmp_path / "model.safetensors"
    save(model, f, getattr(torch, dtype))
    as_saved(model, getattr(torch, dtype))
    x, kv = _inputs(tmp_path)
    for prefix, ref_fn, cross in layers:
        extra = ["--key", tmp_path / "kv.npy", "--value", tmp_path / "kv.npy"] if cross else []
        if layout == "gpt2":
            extra.append("--causal")
        rc, out, err = run("forward", "--weights", f, "--prefix", prefix, "--heads", H,
                           "--query", tmp_path / "x.npy", *extra, "--out", tmp_path / "y.npy")
        assert rc == 0 and out == "" and err == "", err
        with torch.no_grad():
            ref = ref_fn(model, torch.from_numpy(x), torch.from_numpy(kv)).numpy()
        close(np.load(tmp_path / "y.npy"), ref, f"{layout} {dtype} {prefix}")


def test_backward_and_viz_take_prefix(tmp_path):
    """--prefix on every command that takes --weights; the input gradient of a GPT-2 layer
    against autograd."""
    model = randomized(GPT2Model(), 6)
    f = tmp_path / "gpt2.safetensors"
    save(model, f, torch.float32)
    x, _ = _inputs(tmp_path)
    dy = np.random.default_rng(8).standard_normal((B, L, E)).astype(np.float32)
    np.save(tmp_path / "dy.npy", dy)
    layer = ["--weights", f, "--prefix", "transformer.h.1", "--heads", H,
             "--query", tmp_path / "x.npy", "--causal"]
    rc, _, err = run("backward", *layer, "--grad-out", tmp_path / "dy.npy",
                     "--grads-out", tmp_path / "g.safetensors")
    assert rc == 0, err
    g = st_load_torch(str(tmp_path / "g.safetensors"))
    xt = torch.from_numpy(x).requires_grad_()
    model.attention(1, xt).backward(torch.from_numpy(dy))
    close(g["query"].numpy(), xt.grad.numpy(), "query gradient")
    a = model.transformer.h[1].attn
    close(g["in_proj_weight"].numpy(), a.c_attn.weight.grad.T.numpy(), "c_attn gradient")
    close(g["out_proj.bias"].numpy(), a.c_proj.bias.grad.numpy(), "c_proj.bias gradient")
    rc, _, err = run("viz", *layer, "--out", tmp_path / "a.svg")
    assert rc == 0 and (tmp_path / "a.svg").stat().st_size > 0, err
    for cmd in ("forward", "backward", "viz"):
        rc, out, _ = run(cmd, "--help")
        assert rc == 0 and "--prefix P" in out, f"mha {cmd} --help does not mention --prefix"


# ------------------------------------------------------------------------------------------
# errors: one line, the right exit code, what to do
# ------------------------------------------------------------------------------------------
def _fails(code, *args):
    rc, out, err = run(*args)
    lines = err.splitlines()
    assert rc == code and out == "", (rc, err)
    assert lines and lines[0].startswith("mha: error: "), err
    assert len(lines) == 1 or (code == 1 and len(lines) == 2 and lines[1].startswith("hint: ")), err
    return lines[0]


def test_several_layers_need_a_prefix(tmp_path):
    f = tmp_path / "model.safetensors"
    save(randomized(Seq2Seq(), 1), f, torch.float32)
    _inputs(tmp_path)
    base = ["forward", "--weights", f, "--heads", H, "--query", tmp_path / "x.npy",
            "--out", tmp_path / "y.npy"]
    msg = _fails(1, *base)
    assert ("prefix: got none, expected one of the 4 attention layers in the file: "
            "decoder.layers.0.multihead_attn., decoder.layers.0.self_attn., "
            "encoder.layers.0.self_attn., encoder.layers.1.self_attn. "
            "(pick one with --prefix / prefix=)") in msg, msg
    msg = _fails(1, *base, "--prefix", "decoder.layers.0")
    assert ("expected one of the 2 attention layers that start with it: "
            "decoder.layers.0.multihead_attn., decoder.layers.0.self_attn.") in msg, msg
    msg = _fails(1, *base, "--prefix", "encoder.layers.2")
    assert 'prefix: got "encoder.layers.2", expected one of the 4 attention layers' in msg, msg
    assert not (tmp_path / "y.npy").exists()
    # Other layouts rarely record the number of heads: --heads is required then.
    msg = _fails(1, *[a for a in base if a not in ("--heads", H)], "--prefix", "encoder.layers.0")
    assert "--heads is required" in msg, msg


def test_no_attention_layer(tmp_path):
    mlp = nn.Sequential(nn.Linear(E, E), nn.ReLU(), nn.Linear(E, E))
    f = tmp_path / "mlp.safetensors"
    save(mlp, f, torch.float32)
    _inputs(tmp_path)
    msg = _fails(2, "forward", "--weights", f, "--heads", H, "--query", tmp_path / "x.npy",
                 "--out", tmp_path / "y.npy")
    assert "--weights" in msg and "no attention layer found" in msg and "c_attn" in msg, msg


def test_grouped_query_attention_is_refused(tmp_path):
    model = randomized(HFModel("o_proj", (False,) * 4, n=1), 3)
    sd = {k: v for k, v in model.state_dict().items()}
    sd["layers.0.self_attn.k_proj.weight"] = sd["layers.0.self_attn.k_proj.weight"][: E // 4]
    sd["layers.0.self_attn.v_proj.weight"] = sd["layers.0.self_attn.v_proj.weight"][: E // 4]
    f = tmp_path / "gqa.safetensors"
    st_save_torch({k: v.contiguous() for k, v in sd.items()}, str(f))
    _inputs(tmp_path)
    msg = _fails(2, "forward", "--weights", f, "--heads", H, "--query", tmp_path / "x.npy",
                 "--out", tmp_path / "y.npy")
    assert ("layers.0.self_attn.k_proj.weight.shape[0]: got 4, expected 16 (grouped-query "
            "attention: not supported yet)") in msg, msg


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_file_says_how_to_convert(tmp_path, zip_format):
    model = randomized(SeedModel(), 2)
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt, _use_new_zipfile_serialization=zip_format)
    _inputs(tmp_path)
    msg = _fails(2, "forward", "--weights", pt, "--heads", H, "--query", tmp_path / "x.npy",
                 "--out", tmp_path / "y.npy")
    assert (f"{pt}: a PyTorch file (torch.save), not safetensors; convert it: python -c "
            f"\"import torch, mha; mha.save_file(torch.load('{pt}'), "
            f"'{tmp_path / 'model.safetensors'}')\"") in msg, msg


# ------------------------------------------------------------------------------------------
# every dtype, through the library, against NumPy and the safetensors package
# ------------------------------------------------------------------------------------------
class Array(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int), ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * 5), ("data", ctypes.c_void_p)]


# mha_dtype value -> (NumPy dtype or None, torch dtype name)
MHA_DTYPES = {0: ("<f4", "float32"), 1: ("|b1", "bool"), 2: ("<i4", "int32"),
              3: ("<f8", "float64"), 4: ("<f2", "float16"), 5: (None, "bfloat16"),
              6: ("<i8", "int64"), 7: ("|u1", "uint8"), 8: ("|i1", "int8"), 9: ("<i2", "int16"),
              10: ("<u2", "uint16"), 11: ("<u4", "uint32"), 12: ("<u8", "uint64"),
              13: (None, "float8_e4m3fn"), 14: (None, "float8_e5m2")}


@pytest.fixture
def lib():
    path = os.environ.get("MHA_LIB")
    if not path or not os.path.isfile(path):
        pytest.fail(f"MHA_LIB must name the built libmha.so (got {path!r})")
    lib = ctypes.CDLL(path)
    lib.mha_last_errmsg.restype = ctypes.c_char_p
    lib.mha_dtype_name.restype = ctypes.c_char_p
    lib.mha_st_find.restype = ctypes.POINTER(Array)
    lib.mha_st_find.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.mha_st_free.argtypes = [ctypes.c_void_p]
    lib.mha_st_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.mha_st_save.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
    lib.mha_npy_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(Array)]
    lib.mha_npy_save.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(Array)]
    lib.mha_array_free.argtypes = [ctypes.POINTER(Array)]
    return lib


def _raw(a):
    n = int(np.prod([a.shape[i] for i in range(a.ndim)], dtype=np.int64)) * \
        {0: 4, 1: 1, 2: 4, 3: 8, 4: 2, 5: 2, 6: 8, 7: 1, 8: 1, 9: 2, 10: 2, 11: 4, 12: 8,
         13: 1, 14: 1}[a.dtype]
    return ctypes.string_at(a.data, n)


def _tensor(name, shape, seed):
    g = torch.Generator().manual_seed(seed)
    if name == "bool":
        return torch.rand(shape, generator=g) < 0.5
    if name.startswith(("int", "uint")):
        lo = 0 if name.startswith("u") else -100
        return torch.randint(lo, 100, shape, generator=g).to(getattr(torch, name))
    return (torch.randn(shape, generator=g) * 3).to(getattr(torch, name))


def test_every_dtype_against_safetensors_and_numpy(tmp_path, lib):
    """safetensors.torch writes each dtype, mha reads the same bytes and writes a file that
    safetensors reads back equal; NumPy's .npy of each dtype it has round-trips the same way,
    and the others are refused when writing .npy."""
    tensors = {f"t.{name}": _tensor(name, (3, 2), code)
               for code, (_, name) in MHA_DTYPES.items()}
    src, back = tmp_path / "all.safetensors", tmp_path / "back.safetensors"
    st_save_torch(tensors, str(src))
    st = ctypes.c_void_p()
    assert lib.mha_st_load(None, str(src).encode(), ctypes.byref(st)) == 0, lib.mha_last_errmsg()
    try:
        for code, (npy, name) in MHA_DTYPES.items():
            a = lib.mha_st_find(st, f"t.{name}".encode()).contents
            assert a.dtype == code and lib.mha_dtype_name(code).decode() == name
            t = tensors[f"t.{name}"]
            want = t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else \
                t.numpy().tobytes()
            assert _raw(a) == want, name
            path = str(tmp_path / f"{name}.npy").encode()
            rc = lib.mha_npy_save(None, path, ctypes.byref(a))
            if npy is None:
                assert rc == -7 and b"expected a dtype NumPy has" in lib.mha_last_errmsg()
                continue
            assert rc == 0, lib.mha_last_errmsg()
            y = np.load(path.decode())
            assert y.dtype == np.dtype(npy) and y.tobytes() == want, name
            np.save(path.decode(), y)  # NumPy's own writer, read by mha
            b = Array()
            assert lib.mha_npy_load(None, path, ctypes.byref(b)) == 0, lib.mha_last_errmsg()
            assert b.dtype == code and _raw(b) == want, name
            lib.mha_array_free(ctypes.byref(b))
        assert lib.mha_st_save(None, st, str(back).encode()) == 0, lib.mha_last_errmsg()
    finally:
        lib.mha_st_free(st)
    again = st_load_torch(str(back))
    assert set(again) == set(tensors)
    for k, t in tensors.items():
        assert again[k].dtype == t.dtype and torch.equal(again[k].view(torch.uint8),
                                                         t.view(torch.uint8)), k
