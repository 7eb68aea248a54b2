"""test_cli_dtype.py - `--dtype f32|bf16|f16` on `mha forward`, `mha backward` and `mha bench`
(the module), and float16 .npy inputs.

A layer is made with torch in bfloat16 (float16), saved as BF16 (F16) safetensors; mha runs it
with --dtype of that type on inputs rounded to it, and writes float32 files. Against a float64
torch layer on the same values, mha's error must be at most 2x the error of torch's own layer of
that dtype for the output, 3x for every gradient (floored at half an ulp of the dtype at the
reference's scale, as test_py_dtype). --dtype f32 (default) on float16 inputs: the float32 layer
on the exactly converted values. Bad values: usage errors (exit 1, one line); another .npy dtype:
exit 2 naming the option and the dtypes it takes.
"""
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

TORCH = {"bf16": torch.bfloat16, "f16": torch.float16}
MANT = {"bf16": 8, "f16": 11}


def mha(*args):
    b = os.environ.get("MHA_BIN")
    if not b or not os.path.isfile(b) or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return subprocess.run([b, *map(str, args)], capture_output=True, text=True)


def _layer(dt, E=64, H=4, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=dt)
    with torch.no_grad():
        m.in_proj_bias.copy_(torch.randn(3 * E).to(dt) * 0.1)
        m.out_proj.bias.copy_(torch.randn(E).to(dt) * 0.1)
    r64 = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    r64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    return m, r64


def _err(x, ref):
    return (torch.as_tensor(x).double() - ref).abs().max().item()


def _check(what, ours, theirs, ref, limit, d):
    ea, eb = _err(ours, ref), _err(theirs, ref)
    floor = ref.abs().max().item() * 2.0 ** -MANT[d]
    assert ea <= limit * max(eb, floor), f"{what}: mha {ea:.3g} > {limit} x torch {eb:.3g}"


@pytest.mark.parametrize("d", ["bf16", "f16"])
def test_forward_and_backward_in_dtype(d, tmp_path):
    dt = TORCH[d]
    m, r64 = _layer(dt)
    w = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(w))
    assert load_file(str(w))["in_proj_weight"].dtype == dt  # stored as it is
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 64, generator=g).to(dt)
    dy = torch.randn(2, 24, 64, generator=g).to(dt)
    # .npy has no bfloat16: the bf16 values written as float32 (exact), f16 as float16
    npdt = np.float32 if d == "bf16" else np.float16
    np.save(tmp_path / "x.npy", x.float().numpy().astype(npdt))
    np.save(tmp_path / "dy.npy", dy.float().numpy().astype(npdt))
    causal = torch.triu(torch.ones(24, 24, dtype=torch.bool), 1)
    r = mha("forward", "--weights", w, "--heads", 4, "--query", tmp_path / "x.npy", "--causal",
            "--dtype", d, "--out", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32
    assert np.array_equal(y, torch.from_numpy(y).to(dt).float().numpy())  # values of dt
    r = mha("backward", "--weights", w, "--heads", 4, "--query", tmp_path / "x.npy", "--causal",
            "--dtype", d, "--grad-out", tmp_path / "dy.npy", "--grads-out", tmp_path / "g.st")
    assert r.returncode == 0, r.stderr
    grads = load_file(str(tmp_path / "g.st"))
    assert all(t.dtype == torch.float32 for t in grads.values())

    def run(layer, xx, dyy):
        xx = xx.clone().requires_grad_()
        out, _ = layer(xx, xx, xx, attn_mask=causal, need_weights=False)
        out.backward(dyy)
        return out, {"query": xx.grad, **{n: p.grad for n, p in layer.named_parameters()}}

    ty, tg = run(m, x, dy)
    ry, rg = run(r64, x.double(), dy.double())
    _check("out", y, ty, ry, 2, d)
    for n in rg:
        _check(n, grads[n], tg[n], rg[n], 3, d)


def test_float16_inputs_with_float32_compute(tmp_path):
    m, r64 = _layer(torch.float32, E=32, H=2)
    w = tmp_path / "w.safetensors"
    save_file(m.state_dict(), str(w))
    x = np.random.default_rng(3).standard_normal((3, 10, 32)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    r = mha("forward", "--weights", w, "--heads", 2, "--query", tmp_path / "x.npy", "--out",
            tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    xt = torch.from_numpy(x.astype(np.float32))
    want, _ = m(xt, xt, xt, need_weights=False)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want.detach().numpy(), rtol=1e-5,
                               atol=1e-5)


def test_f32_dtype_is_the_default_bitwise(tmp_path):
    m, _ = _layer(torch.float32, E=32, H=2)
    w = tmp_path / "w.safetensors"
    save_file(m.state_dict(), str(w))
    np.save(tmp_path / "x.npy", np.random.default_rng(4).standard_normal((7, 32)).astype("f4"))
    base = ["forward", "--weights", w, "--heads", 2, "--query", tmp_path / "x.npy"]
    assert mha(*base, "--out", tmp_path / "a.npy").returncode == 0
    assert mha(*base, "--dtype", "f32", "--out", tmp_path / "b.npy").returncode == 0
    assert mha(*base, "--dtype", "bf16", "--out", tmp_path / "c.npy").returncode == 0
    a, b, c = (np.load(tmp_path / f"{n}.npy") for n in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and np.abs(a - c).max() < 0.05


def test_bad_dtype_and_inputs(tmp_path):
    m, _ = _layer(torch.float32, E=16, H=2)
    w = tmp_path / "w.safetensors"
    save_file(m.state_dict(), str(w))
    np.save(tmp_path / "x.npy", np.zeros((4, 16), dtype=np.float32))
    np.save(tmp_path / "xi.npy", np.zeros((4, 16), dtype=np.int32))
    base = ["forward", "--weights", w, "--heads", 2, "--out", tmp_path / "y.npy"]
    r = mha(*base, "--query", tmp_path / "x.npy", "--dtype", "f64")
    assert r.returncode == 1 and r.stderr.startswith(
        'mha: error: --dtype: got "f64", expected f32, bf16 or f16'), r.stderr
    r = mha(*base, "--query", tmp_path / "xi.npy", "--dtype", "bf16")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("mha: error: --query: ") and "expected float32 '<f4' or float16 " \
        "'<f2'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("d", ["f32", "bf16", "f16"])
def test_bench_module_dtype(d):
    r = mha("bench", "--batch", 1, "--seq", 16, "--embed", 32, "--heads", 2, "--backward",
            "--dtype", d, "--runs", 1, "--warmup", 1, "--threads", 1, "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j.get("dtype", "f32") == d, j


def test_viz_takes_dtype(tmp_path):
    m, _ = _layer(torch.float32, E=16, H=2)
    w = tmp_path / "w.safetensors"
    save_file(m.state_dict(), str(w))
    np.save(tmp_path / "x.npy", np.random.default_rng(5).standard_normal((6, 16)).astype("f2"))
    base = ["viz", "--weights", w, "--heads", 2, "--query", tmp_path / "x.npy", "--width", 60]
    r = mha(*base, "--dtype", "bf16")
    assert r.returncode == 0 and "Query" in r.stdout, r.stderr
    r = mha(*base, "--dtype", "int8")
    assert r.returncode == 1 and r.stderr.startswith("mha: error: --dtype: got \"int8\"")
