"""test_cli.py - the command-line contract of `mha forward` and `mha backward`.

Run as `MHA_BIN=build/mha build/venv/bin/python -m pytest -q tests/test_cli.py` (CTest does it
via tests/cli.cmake, with the test venv that `make test` sets up). Two halves:
  - error paths and help texts: need only numpy. Every failure exits 1 (usage) or 2 (runtime)
    with exactly one "mha: error: ..." line (usage errors may add one "hint: ..." line) that
    names the problem, leaves an existing output file byte-for-byte unchanged and no temporary
    file behind;
  - live round trips against torch.nn.MultiheadAttention and autograd (forward output,
    attention weights, every input and parameter gradient), against PyTorch 2.13. Without
    torch they fail; they skip only when MHA_ISA forces a kernel path this CPU cannot run.
"""
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mha_py  # noqa: E402

try:
    import torch
    TORCH_ERROR = None
except Exception as e:  # ImportError, or a broken install
    torch = None
    TORCH_ERROR = f"{type(e).__name__}: {e}"

OLD = b"previous content, must survive a failed run\n"


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def mha_bin():
    b = os.environ.get("MHA_BIN")
    if not b or not os.path.isfile(b) or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return b


def run(*args):
    p = subprocess.run([mha_bin(), *map(str, args)], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr


def need_torch():
    isa = os.environ.get("MHA_ISA")
    if isa and run("info")[0] != 0:  # the forced kernel path cannot run on this machine
        pytest.skip(f"MHA_ISA={isa} is not supported here")
    if torch is None:
        pytest.fail(f"torch cannot be imported: {TORCH_ERROR} (`make test` sets up the test venv)")
    if not torch.__version__.startswith("2.13."):
        pytest.fail(f"the reference is PyTorch 2.13, this is {torch.__version__} "
                    "(`make test` sets up the test venv)")


def np_state_dict(E, kdim=None, vdim=None, bias=True, seed=0):
    """An nn.MultiheadAttention state_dict built with numpy only (for the error tests)."""
    r = np.random.default_rng(seed)
    kdim, vdim = kdim or E, vdim or E
    f = lambda *s: r.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
    sd = {}
    if kdim == E and vdim == E:
        sd["in_proj_weight"] = f(3 * E, E)
    else:
        sd["q_proj_weight"], sd["k_proj_weight"], sd["v_proj_weight"] = \
            f(E, E), f(E, kdim), f(E, vdim)
    sd["out_proj.weight"] = f(E, E)
    if bias:
        sd["in_proj_bias"], sd["out_proj.bias"] = f(3 * E), f(E)
    return sd


# ------------------------------------------------------------------------------------------
# (a) error paths
# ------------------------------------------------------------------------------------------
E, H, B, L, S = 8, 2, 2, 5, 7


@pytest.fixture
def fx(tmp_path):
    """A small layer (E=8, H=2) and valid inputs, plus output files holding OLD."""
    r = np.random.default_rng(1)
    d = tmp_path
    mha_py.save_safetensors(d / "w.safetensors", np_state_dict(E))
    mha_py.save_safetensors(d / "wkv.safetensors", np_state_dict(E, kdim=3, vdim=5))
    np.save(d / "q.npy", r.standard_normal((B, L, E)).astype(np.float32))
    np.save(d / "k.npy", r.standard_normal((B, S, E)).astype(np.float32))
    np.save(d / "v.npy", r.standard_normal((B, S, E)).astype(np.float32))
    np.save(d / "dy.npy", r.standard_normal((B, L, E)).astype(np.float32))
    np.save(d / "kpm.npy", np.zeros((B, S), bool))
    np.save(d / "am.npy", np.zeros((L, S), bool))
    for name in ("y.npy", "a.npy", "g.safetensors"):
        (d / name).write_bytes(OLD)
    return d


def base(d, cross=False):
    a = ["--weights", d / "w.safetensors", "--heads", H, "--query", d / "q.npy"]
    if cross:
        a += ["--key", d / "k.npy", "--value", d / "v.npy"]
    return a


def fwd(d, *extra, cross=False):
    return ["forward", *base(d, cross), "--out", d / "y.npy", *extra]


def bwd(d, *extra, cross=False):
    return ["backward", *base(d, cross), "--grad-out", d / "dy.npy",
            "--grads-out", d / "g.safetensors", *extra]


def drop(args, opt, nvalues=1):
    """args without option opt (and its value)."""
    args = list(args)
    i = [str(a) for a in args].index(opt)
    del args[i:i + 1 + nvalues]
    return args


def check_failure(d, args, code, *needles):
    rc, out, err = run(*args)
    lines = err.splitlines()
    assert rc == code, f"exit {rc}, expected {code}; stderr: {err!r}"
    assert lines and lines[0].startswith("mha: error: "), f"stderr: {err!r}"
    if code == 1:
        assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), err
    else:
        assert len(lines) == 1, f"expected a single line, got: {err!r}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    for name in ("y.npy", "a.npy", "g.safetensors"):
        assert (d / name).read_bytes() == OLD, f"{name} was changed by a failed run"
    left = [p.name for p in d.iterdir() if p.name.startswith(".mha-")]
    assert not left, f"temporary files left behind: {left}"
    return lines[0]


USAGE_CASES = [
    # (name, args builder, needles)
    ("no options", lambda d: ["forward"], ["--weights", "required"]),
    ("unknown option", lambda d: fwd(d, "--bogus", "1"), ["--bogus"]),
    ("positional", lambda d: fwd(d, "stray"), ["stray"]),
    ("missing weights", lambda d: drop(fwd(d), "--weights"), ["--weights"]),
    ("missing heads", lambda d: drop(fwd(d), "--heads"), ["--heads"]),
    ("missing query", lambda d: drop(fwd(d), "--query"), ["--query"]),
    ("missing out", lambda d: drop(fwd(d), "--out"), ["--out"]),
    ("missing grad-out", lambda d: drop(bwd(d), "--grad-out"), ["--grad-out"]),
    ("missing grads-out", lambda d: drop(bwd(d), "--grads-out"), ["--grads-out"]),
    ("value missing at end", lambda d: fwd(d, "--attn-out"), ["--attn-out", "value"]),
    ("value missing before option", lambda d: ["forward", "--heads", "--weights",
                                               d / "w.safetensors"], ["--heads", "value"]),
    ("heads not a number", lambda d: fwd(d, "--heads", "two"), ["--heads", "two"]),
    ("heads fractional", lambda d: fwd(d, "--heads", "2.5"), ["--heads", "2.5"]),
    ("heads zero", lambda d: _with(fwd(d), "--heads", "0"), ["--heads: got 0, expected"]),
    ("heads negative", lambda d: _with(fwd(d), "--heads", "-1"), ["--heads: got -1, expected"]),
    ("heads do not divide E", lambda d: _with(fwd(d), "--heads", "3"),
     ["--heads: got 3, expected a divisor of the embedding size 8"]),
    ("threads not a number", lambda d: fwd(d, "--threads", "x"), ["--threads"]),
    ("threads with a leading blank", lambda d: fwd(d, "--threads", " 2"),
     ['--threads: " 2" is not a number']),
    ("threads negative", lambda d: fwd(d, "--threads", "-3"), ["--threads: got -3"]),
    ("threads too many", lambda d: fwd(d, "--threads", "99999999999"),
     ["--threads: got 99999999999", "MHA_MAX_THREADS"]),
    ("scale not a number", lambda d: fwd(d, "--scale", "abc"), ["--scale"]),
    ("scale nan", lambda d: fwd(d, "--scale", "nan"), ["--scale"]),
    ("scale negative", lambda d: fwd(d, "--scale", "-1"), ["--scale: got -1, expected"]),
    ("scale zero", lambda d: fwd(d, "--scale", "0"), ["--scale: got 0, expected"]),
    # a float would make these 0 (the default scale, silently) or infinity
    ("scale below float", lambda d: fwd(d, "--scale", "1e-50"),
     ["--scale: got 1e-50, expected a positive number a float holds"]),
    ("scale above float", lambda d: fwd(d, "--scale", "1e39"), ["--scale: got 1e+39"]),
    ("per-head without attn-out", lambda d: fwd(d, "--per-head"), ["--per-head", "--attn-out"]),
    ("key without value", lambda d: fwd(d, "--key", d / "k.npy"), ["--key", "--value"]),
    ("value without key", lambda d: fwd(d, "--value", d / "v.npy"), ["--value", "--key"]),
    ("two causal masks", lambda d: fwd(d, "--causal", "--causal-bottom-right"), ["--causal"]),
    ("unknown isa", lambda d: fwd(d, "--isa", "sse9"), ["--isa", "sse9"]),
    ("flag with value", lambda d: fwd(d, "--causal=1"), ["--causal"]),
    ("backward unknown option", lambda d: bwd(d, "--nope"), ["--nope"]),
    ("forward has no grad-out", lambda d: fwd(d, "--grad-out", d / "dy.npy"), ["--grad-out"]),
]


@pytest.mark.parametrize("name,build,needles", USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_usage_errors(fx, name, build, needles):
    check_failure(fx, build(fx), 1, *needles)


def _write(path, data):
    path.write_bytes(data)
    return path


def _npy(d, name, arr):
    np.save(d / name, arr)
    return d / name


def _sd_without(d, key):
    sd = np_state_dict(E)
    del sd[key]
    mha_py.save_safetensors(d / "w_missing.safetensors", sd)
    return d / "w_missing.safetensors"


def _sd_i64(d):
    """Parameters as int64: no float dtype (float64, float16, bfloat16 are converted)."""
    sd = {k: (v * 100).astype(np.int64) for k, v in np_state_dict(E).items()}
    mha_py.save_safetensors(d / "w64.safetensors", sd)
    return d / "w64.safetensors"


def _with(args, opt, value):
    args = list(args)
    args[[str(a) for a in args].index(opt) + 1] = value
    return args


RUNTIME_CASES = [
    ("weights missing file", lambda d: _with(fwd(d), "--weights", d / "nope.safetensors"),
     ["--weights", "nope.safetensors"]),
    ("weights garbage", lambda d: _with(fwd(d), "--weights", _write(d / "bad.st", b"\x01" * 5)),
     ["--weights"]),
    ("weights truncated", lambda d: _with(fwd(d), "--weights", _write(
        d / "trunc.st", (d / "w.safetensors").read_bytes()[:-17])), ["--weights"]),
    ("weights missing tensor", lambda d: _with(fwd(d), "--weights",
                                               _sd_without(d, "out_proj.weight")),
     ["--weights", "out_proj.weight"]),
    ("weights int64", lambda d: _with(fwd(d), "--weights", _sd_i64(d)),
     ["--weights", "dtype: got int64"]),
    ("query bool", lambda d: _with(fwd(d), "--query", _npy(d, "qb.npy", np.zeros(
        (B, L, E), bool))), ["--query", "bool", "float32"]),
    ("query missing file", lambda d: _with(fwd(d), "--query", d / "nope.npy"),
     ["--query", "nope.npy"]),
    ("query garbage", lambda d: _with(fwd(d), "--query", _write(d / "g.npy", b"not an npy")),
     ["--query"]),
    ("query truncated", lambda d: _with(fwd(d), "--query", _write(
        d / "t.npy", (d / "q.npy").read_bytes()[:-9])), ["--query"]),
    ("query float64", lambda d: _with(fwd(d), "--query", _npy(d, "q64.npy", np.zeros(
        (B, L, E)))), ["--query", "float64", "float32"]),
    ("query wrong E", lambda d: _with(fwd(d), "--query", _npy(d, "qe.npy", np.zeros(
        (B, L, E + 1), np.float32))), ["--query", "[2, 5, 9]"]),
    ("query 4-d", lambda d: _with(fwd(d), "--query", _npy(d, "q4.npy", np.zeros(
        (1, B, L, E), np.float32))), ["--query"]),
    ("key wrong batch", lambda d: _with(fwd(d, cross=True), "--key", _npy(d, "kb.npy", np.zeros(
        (B + 1, S, E), np.float32))), ["--key", "[3, 7, 8]"]),
    ("value wrong length", lambda d: _with(fwd(d, cross=True), "--value", _npy(
        d, "vl.npy", np.zeros((B, S + 1, E), np.float32))), ["--value"]),
    ("kdim layer without key", lambda d: _with(fwd(d), "--weights", d / "wkv.safetensors"),
     ["--key"]),
    ("kpm wrong shape", lambda d: fwd(d, "--key-padding-mask", _npy(
        d, "kpm6.npy", np.zeros((B, 6), bool)), cross=True),
     ["--key-padding-mask", "[2, 6]", "[2, 7]"]),
    ("kpm float", lambda d: fwd(d, "--key-padding-mask", _npy(
        d, "kpmf.npy", np.zeros((B, S), np.float32)), cross=True),
     ["--key-padding-mask", "float32", "bool"]),
    ("attn mask wrong shape", lambda d: fwd(d, "--attn-mask", _npy(
        d, "am4.npy", np.zeros((L, S), bool))),
     ["--attn-mask", "[5, 7]", "[5, 5]", "[4, 5, 5]"]),
    ("attn mask int32", lambda d: fwd(d, "--attn-mask", _npy(
        d, "ami.npy", np.zeros((L, L), np.int32))), ["--attn-mask", "int32"]),
    ("attn mask missing file", lambda d: fwd(d, "--attn-mask", d / "none.npy"),
     ["--attn-mask", "none.npy"]),
    ("grad-out wrong shape", lambda d: _with(bwd(d), "--grad-out", _npy(
        d, "dy2.npy", np.zeros((B, L + 1, E), np.float32))), ["--grad-out", "[2, 6, 8]"]),
    ("grad-out missing file", lambda d: _with(bwd(d), "--grad-out", d / "none.npy"),
     ["--grad-out"]),
    ("out directory missing", lambda d: _with(fwd(d), "--out", d / "no" / "dir" / "y.npy"),
     ["--out"]),
    ("grads-out directory missing", lambda d: _with(bwd(d), "--grads-out",
                                                    d / "no" / "g.safetensors"),
     ["--grads-out"]),
]


@pytest.mark.parametrize("name,build,needles", RUNTIME_CASES, ids=[c[0] for c in RUNTIME_CASES])
def test_runtime_errors(fx, name, build, needles):
    check_failure(fx, build(fx), 2, *needles)


# Paths of the shared layer loading (tools/cli_common.c: cli_layer_load) the cases above miss.
MORE_RUNTIME_CASES = [
    ("key unbatched, query batched", lambda d: _with(fwd(d, cross=True), "--key", _npy(
        d, "ku.npy", np.zeros((S, E), np.float32))), ["--key", "[7, 8]", "[2, S, 8]"]),
    ("value batched, query unbatched", lambda d: _with(_with(fwd(d, cross=True), "--query", _npy(
        d, "qu.npy", np.zeros((L, E), np.float32))), "--key", _npy(
        d, "ku.npy", np.zeros((S, E), np.float32))), ["--value", "[2, 7, 8]", "[S, 8]"]),
    ("value wrong vdim", lambda d: _with(_with(fwd(d, cross=True), "--weights",
                                               d / "wkv.safetensors"), "--key", _npy(
        d, "k3.npy", np.zeros((B, S, 3), np.float32))), ["--value", "vdim 5"]),
    ("query empty batch", lambda d: _with(fwd(d), "--query", _npy(d, "q0.npy", np.zeros(
        (0, L, E), np.float32))), ["--query", "[0, 5, 8]"]),
    ("kpm batched, query unbatched", lambda d: _with(fwd(d, "--key-padding-mask", _npy(
        d, "kpmL.npy", np.zeros((B, L), bool))), "--query", _npy(
        d, "qu.npy", np.zeros((L, E), np.float32))), ["--key-padding-mask", "[2, 5]", "[5]"]),
    ("attn mask per head only, batched", lambda d: fwd(d, "--attn-mask", _npy(
        d, "amh.npy", np.zeros((H, L, L), np.float32))), ["--attn-mask", "[2, 5, 5]",
                                                           "[4, 5, 5]"]),
]


@pytest.mark.parametrize("name,build,needles", MORE_RUNTIME_CASES,
                         ids=[c[0] for c in MORE_RUNTIME_CASES])
def test_more_runtime_errors(fx, name, build, needles):
    check_failure(fx, build(fx), 2, *needles)


# `mha viz` takes the same layer options and loads them with the same code: every refusal of
# the layer's inputs must come with the same exit code and the same message as `mha forward`'s.
_NOT_LAYER = {"no options", "unknown option", "positional", "missing out", "missing grad-out",
              "missing grads-out", "value missing at end", "value missing before option",
              "per-head without attn-out", "backward unknown option", "forward has no grad-out",
              "grad-out wrong shape", "grad-out missing file", "out directory missing",
              "grads-out directory missing"}
LAYER_CASES = [(n, b, 1) for n, b, _ in USAGE_CASES if n not in _NOT_LAYER] + \
    [(n, b, 2) for n, b, _ in RUNTIME_CASES + MORE_RUNTIME_CASES if n not in _NOT_LAYER]


@pytest.mark.parametrize("name,build,code", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_viz_refuses_layer_inputs_like_forward(fx, name, build, code):
    args = build(fx)
    assert str(args[0]) == "forward"
    first = check_failure(fx, args, code)
    viz = ["viz", *drop(args[1:], "--out")]
    assert check_failure(fx, viz, code) == first


def test_failed_write_keeps_earlier_outputs_whole(fx):
    """--out could be written, --attn-out cannot: the run fails (2) with one line and no
    output changes at all (outputs are staged, then renamed together), no temporary left."""
    rc, _, err = run(*fwd(fx, "--attn-out", fx / "missing-dir" / "a.npy"))
    assert rc == 2 and len(err.splitlines()) == 1 and "--attn-out" in err, err
    assert (fx / "y.npy").read_bytes() == OLD
    assert not [p for p in fx.iterdir() if p.name.startswith(".mha-")]
    # the last output's destination is a directory: refused before any rename
    (fx / "gdir").mkdir()
    rc, _, err = run(*_with(bwd(fx), "--grads-out", fx / "gdir"), "--out", fx / "y.npy")
    assert rc == 2 and len(err.splitlines()) == 1 and "--grads-out" in err, err
    assert (fx / "y.npy").read_bytes() == OLD
    assert not [p for p in fx.iterdir() if p.name.startswith(".mha-")]


def test_outputs_sharing_a_file_are_refused(fx):
    """--out, --attn-out and --grads-out naming one file: a usage error before anything runs
    (otherwise the second write silently replaces the first); the file is left as it was."""
    same = fx / "same.npy"
    same.write_bytes(OLD)
    for args in (fwd(fx, "--attn-out", fx / "y.npy"),
                 _with(bwd(fx), "--grads-out", same) + ["--out", same]):
        rc, out, err = run(*args)
        lines = err.splitlines()
        assert rc == 1 and out == "" and len(lines) == 2, (rc, err)
        assert "name the same file" in lines[0] and lines[1].startswith("hint: "), err
    assert same.read_bytes() == OLD
    assert (fx / "y.npy").read_bytes() == OLD


def test_success_writes_outputs(fx):
    rc, out, err = run(*fwd(fx, "--attn-out", fx / "a.npy", "--per-head"))
    assert rc == 0, err
    assert err == ""
    y, a = np.load(fx / "y.npy"), np.load(fx / "a.npy")
    assert y.dtype == np.float32 and y.shape == (B, L, E)
    assert a.dtype == np.float32 and a.shape == (B, H, L, L)
    np.testing.assert_allclose(a.sum(-1), 1, rtol=1e-5)
    rc, _, err = run(*bwd(fx, cross=True))
    assert rc == 0, err
    g = mha_py.load_safetensors(fx / "g.safetensors")
    assert set(g) == {"query", "key", "value", "in_proj_weight", "in_proj_bias",
                      "out_proj.weight", "out_proj.bias"}
    assert not [p for p in fx.iterdir() if p.name.startswith(".mha-")]


def test_threads_do_not_change_results(fx):
    outs = []
    for t in (1, 2):
        p = fx / f"y{t}.npy"
        rc, _, err = run(*_with(fwd(fx, "--threads", t, "--causal"), "--out", p))
        assert rc == 0, err
        outs.append(p.read_bytes())
    assert outs[0] == outs[1]


def test_fully_masked_rows_follow_mha_convention(fx):
    """Every key of batch 1 masked: mha documents output 0 before out_proj, i.e. y = out_proj.bias,
    and weights 0 (torch gives NaN there); the gradients stay finite."""
    kpm = np.zeros((B, L), bool)
    kpm[1] = True
    np.save(fx / "kpm_all.npy", kpm)
    rc, _, err = run(*fwd(fx, "--key-padding-mask", fx / "kpm_all.npy", "--attn-out", fx / "a.npy"))
    assert rc == 0, err
    y, a = np.load(fx / "y.npy"), np.load(fx / "a.npy")
    bias = mha_py.load_safetensors(fx / "w.safetensors")["out_proj.bias"]
    np.testing.assert_allclose(y[1], np.broadcast_to(bias, (L, E)), rtol=1e-6, atol=1e-6)
    assert np.all(a[1] == 0)
    np.testing.assert_allclose(a[0].sum(-1), 1, rtol=1e-5)
    rc, _, err = run(*bwd(fx, "--key-padding-mask", fx / "kpm_all.npy"))
    assert rc == 0, err
    for name, g in mha_py.load_safetensors(fx / "g.safetensors").items():
        assert np.all(np.isfinite(g)), name


ALL_OPTIONS = ["--weights", "--heads", "--query", "--key", "--value", "--causal",
               "--causal-bottom-right", "--key-padding-mask", "--attn-mask", "--scale",
               "--out", "--attn-out", "--per-head", "--threads", "--isa", "--help"]


@pytest.mark.parametrize("cmd", ["forward", "backward"])
def test_help(cmd):
    rc, out, err = run(cmd, "--help")
    assert rc == 0 and err == "", err
    opts = ALL_OPTIONS + (["--grad-out", "--grads-out"] if cmd == "backward" else [])
    for o in opts:
        assert o in out, f"mha {cmd} --help does not mention {o}"
    assert f"mha {cmd} --weights" in out, "no example"
    rc2, out2, _ = run(cmd, "-h")
    assert rc2 == 0 and out2 == out


def test_main_help():
    rc, out, err = run("--help")
    assert rc == 0 and err == ""
    for c in ("forward", "backward"):
        assert c in out
    assert "example" in out


@pytest.mark.parametrize("extra", [[], ["--need-weights"], ["--need-weights", "--backward"],
                                   ["--core", "--backward", "--causal"]])
def test_bench_json(extra):
    """`mha bench --json` (what bench/compare.sh reads) on a tiny shape: one JSON line with the
    shape, the options and positive times."""
    import json
    rc, out, err = run("bench", "--batch", 1, "--seq", 16, "--embed", 16, "--heads", 2,
                       "--runs", 1, "--warmup", 0, "--threads", 1, "--json", *extra)
    assert rc == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert (r["batch"], r["seq"], r["embed"], r["heads"]) == (1, 16, 16, 2), r
    assert r["need_weights"] == ("--need-weights" in extra), r
    assert r["backward"] == ("--backward" in extra) and r["core"] == ("--core" in extra), r
    assert r["median_ms"] > 0 and r["runs"] == 1, r


def test_bench_need_weights_is_for_the_module():
    rc, out, err = run("bench", "--batch", 1, "--seq", 16, "--embed", 16, "--heads", 2,
                       "--core", "--need-weights")
    assert rc == 1 and out == "" and err.startswith("mha: error: --need-weights"), (rc, err)


@pytest.mark.parametrize("args", [["info"], ["--help"], ["forward", "--help"],
                                  ["bench", "--batch", "1", "--seq", "8", "--embed", "8",
                                   "--heads", "1", "--runs", "1", "--json"]])
def test_a_failed_write_to_stdout_is_a_runtime_error(args):
    """stdout on a full device: exit 2 with one line, never a silent success."""
    with open("/dev/full", "w") as full:
        p = subprocess.run([mha_bin(), *args], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr == "mha: error: writing to stdout failed\n", p.stderr


def test_an_option_value_may_read_like_help(fx):
    """`-h` as an option's value is that value (here: the output file's name), not --help."""
    p = subprocess.run([mha_bin(), *map(str, _with(fwd(fx), "--out", "-h"))], cwd=fx,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and (fx / "-h").is_file(), (p.returncode, p.stderr)
    rc, stdout, err = run("forward", "--out", "-h", "--weights", fx / "w.safetensors")
    assert rc == 1 and "usage" not in stdout and err.startswith("mha: error: "), (rc, err)


def test_unknown_command_is_one_line_whatever_it_holds():
    rc, out, err = run("a\nb\x1b[31m")
    lines = err.splitlines()
    assert rc == 1 and len(lines) == 2, (rc, err)
    # a line break becomes a space, a terminal escape is shown, not obeyed
    assert lines[0] == 'mha: error: unknown command "a b\\x1b[31m"', lines[0]
    assert lines[1].startswith("hint: ")


@pytest.mark.parametrize("cmd", ["forward", "backward", "viz", "explain", "demo", "bench",
                                 "info"])
def test_help_command_shows_the_commands_help(cmd):
    assert run("help", cmd) == run(cmd, "--help")


def test_file_size_limit_is_a_write_error_not_a_kill(fx):
    """A write past `ulimit -f` (SIGXFSZ) ends in exit 2 with one line; the outputs keep their
    old content and no temporary is left behind."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
    p = subprocess.run([mha_bin(), *map(str, fwd(fx, "--attn-out", fx / "a.npy", "--per-head"))],
                       capture_output=True, text=True, timeout=60, preexec_fn=limit)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, (p.returncode, p.stderr)
    assert "File too large" in p.stderr, p.stderr
    assert (fx / "y.npy").read_bytes() == OLD
    assert not [q for q in fx.iterdir() if q.name.startswith(".mha-")]


@pytest.mark.parametrize("cmd", [["demo"], ["bench", "--batch", "1", "--seq", "8", "--embed",
                                          "8", "--heads", "1", "--runs", "1"]])
def test_threads_refused_alike_by_every_command(cmd):
    for bad in ("5000", "-1"):
        rc, out, err = run(*cmd, "--threads", bad)
        assert rc == 1 and err.startswith(
            f"mha: error: --threads: got {bad}, expected 0 (all cores) or 1 to 1024 "
            "(MHA_MAX_THREADS)"), (rc, err)


def test_number_out_of_range_says_so():
    rc, out, err = run("demo", "--seed", "9223372036854775808")
    assert rc == 1 and err.startswith(
        'mha: error: --seed: "9223372036854775808" is out of range'), err


def test_bench_window_out_of_range():
    rc, out, err = run("bench", "--core", "--window", "99999999999999999999,1", "--runs", 1)
    assert rc == 1 and err.startswith('mha: error: --window: got "99999999999999999999,1"'), err


def test_bench_gemm_refuses_the_layers_shape_options():
    rc, out, err = run("bench", "--gemm", 4, 4, 4, "--batch", 2, "--runs", 1)
    assert rc == 1 and out == "" and err.startswith(
        "mha: error: --batch: applies to the module and the core, not to --gemm M N K"), err


def test_main_without_command_is_a_one_line_usage_error():
    """`mha` alone is a usage error like any other: exit 1, one error line and one hint."""
    rc, out, err = run()
    lines = err.splitlines()
    assert rc == 1 and out == "", (rc, out, err)
    assert len(lines) == 2 and lines[0].startswith("mha: error: "), err
    assert "forward" in lines[0] and lines[1].startswith("hint: "), err


# ------------------------------------------------------------------------------------------
# (b) live round trips against torch.nn.MultiheadAttention
# ------------------------------------------------------------------------------------------
WORST = {}  # what -> largest max|got - ref| / max|ref| seen in the round trips


def close(got, ref, what):
    ref = np.asarray(ref, np.float64)
    scale = float(np.abs(ref).max(initial=0))
    if scale > 0:
        rel = float(np.abs(np.asarray(got, np.float64) - ref).max()) / scale
        key = what.split()[0] if what.startswith("gradient") else what
        WORST[key] = max(WORST.get(key, 0.0), rel)
    atol = 1e-5 * max(1.0, scale)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=atol, err_msg=what)


# name, E, H, kdim, vdim, bias, batched, L, S (None: self-attention), masks, per_head
CASES = [
    ("self-bias", 8, 2, None, None, True, True, 5, None, (), False),
    ("self-nobias-unbatched", 12, 3, None, None, False, False, 4, None, (), True),
    ("self-causal", 8, 4, None, None, True, True, 6, None, ("causal",), False),
    ("self-kpm", 16, 2, None, None, True, True, 5, None, ("kpm",), True),
    ("self-bool-2d", 8, 2, None, None, True, True, 5, None, ("bool2",), False),
    ("self-float-3d", 8, 2, None, None, True, True, 5, None, ("float3",), True),
    ("cross-kdim-vdim", 8, 4, 5, 7, True, True, 3, 6, (), False),
    ("cross-kdim-nobias-unbatched", 6, 2, 4, 3, False, False, 4, 5, ("kpm", "bool3"), True),
    ("cross-same-dims", 16, 1, None, None, True, True, 4, 9, ("float2",), False),
    ("cross-bottom-right", 8, 2, None, None, True, True, 3, 6, ("causal_br", "kpm"), False),
    ("combined", 12, 4, 5, None, True, True, 5, 5, ("causal", "kpm", "float3"), True),
    ("combined-unbatched", 8, 2, None, None, True, False, 6, None,
     ("causal", "kpm", "bool2"), False),
]


def _masks(kinds, r, B, H, L, S, batched):
    """Our mask files and torch's (key_padding_mask, attn_mask). Key 0 is never masked, so no
    row is fully masked (mha gives 0 there, torch NaN)."""
    files, kpm_t, attn = {}, None, None
    nb = B * H if batched else H
    if "kpm" in kinds:
        kpm = r.random((B, S) if batched else (S,)) < 0.25
        kpm[..., 0] = False
        files["--key-padding-mask"] = kpm
        kpm_t = torch.from_numpy(kpm)
    if any(k.startswith("bool") for k in kinds):
        shape = (L, S) if "bool2" in kinds else (nb, L, S)
        m = r.random(shape) < 0.3
        m[..., 0] = False
        files["--attn-mask"] = m
        attn = torch.from_numpy(m)
    if "float2" in kinds or "float3" in kinds:
        shape = (L, S) if "float2" in kinds else (nb, L, S)
        m = r.standard_normal(shape).astype(np.float32)
        m[..., 1:][r.random(m[..., 1:].shape) < 0.2] = -np.inf
        files["--attn-mask"] = m
        attn = torch.from_numpy(m)
    causal = None
    if "causal" in kinds:
        causal = torch.triu(torch.ones(L, S, dtype=torch.bool), diagonal=1)
    if "causal_br" in kinds:
        causal = torch.triu(torch.ones(L, S, dtype=torch.bool), diagonal=S - L + 1)
    if causal is not None:
        if attn is None:
            attn = causal
        elif attn.dtype == torch.bool:
            attn = attn | causal
        else:
            attn = attn.masked_fill(causal, float("-inf"))
    return files, kpm_t, attn


def _torch_mha(E, H, kdim, vdim, bias, seed):
    torch.manual_seed(seed)
    m = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    with torch.no_grad():  # non-zero biases, so that bias gradients and values matter
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return m.train()  # dropout 0: deterministic, and never torch's inference fast path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_round_trip(tmp_path, case):
    need_torch()
    name, E_, H_, kdim, vdim, bias, batched, L_, S_, kinds, per_head = case
    seed = zlib.crc32(name.encode()) % 1000
    r = np.random.default_rng(seed)
    cross = S_ is not None
    S2 = S_ if cross else L_
    B_ = 2 if batched else 1
    lead = (B_,) if batched else ()
    m = _torch_mha(E_, H_, kdim, vdim, bias, seed)
    d = tmp_path
    mha_py.save_safetensors(d / "w.safetensors", mha_py.state_dict_numpy(m))

    x = r.standard_normal(lead + (L_, E_)).astype(np.float32)
    np.save(d / "q.npy", x)
    args = ["--weights", d / "w.safetensors", "--heads", H_, "--query", d / "q.npy"]
    if cross:
        k = r.standard_normal(lead + (S2, kdim or E_)).astype(np.float32)
        v = r.standard_normal(lead + (S2, vdim or E_)).astype(np.float32)
        np.save(d / "k.npy", k)
        np.save(d / "v.npy", v)
        args += ["--key", d / "k.npy", "--value", d / "v.npy"]
    files, kpm_t, attn_t = _masks(kinds, r, B_, H_, L_, S2, batched)
    for opt, arr in files.items():
        np.save(d / (opt.strip("-") + ".npy"), arr)
        args += [opt, d / (opt.strip("-") + ".npy")]
    if "causal" in kinds:
        args.append("--causal")
    if "causal_br" in kinds:
        args.append("--causal-bottom-right")
    args += ["--attn-out", d / "a.npy"] + (["--per-head"] if per_head else [])
    dy = r.standard_normal(lead + (L_, E_)).astype(np.float32)
    np.save(d / "dy.npy", dy)

    # torch, with autograd
    xt = torch.from_numpy(x).requires_grad_()
    if cross:
        kt, vt = torch.from_numpy(k).requires_grad_(), torch.from_numpy(v).requires_grad_()
    else:
        kt = vt = xt
    y_ref, w_ref = m(xt, kt, vt, key_padding_mask=kpm_t, attn_mask=attn_t, need_weights=True,
                     average_attn_weights=not per_head)
    y_ref.backward(torch.from_numpy(dy))

    rc, _, err = run("forward", *args, "--out", d / "y.npy")
    assert rc == 0, err
    close(np.load(d / "y.npy"), y_ref.detach().numpy(), "forward output")
    close(np.load(d / "a.npy"), w_ref.detach().numpy(), "attention weights")

    (d / "y.npy").unlink()
    rc, _, err = run("backward", *args, "--grad-out", d / "dy.npy",
                     "--grads-out", d / "g.safetensors", "--out", d / "y.npy")
    assert rc == 0, err
    close(np.load(d / "y.npy"), y_ref.detach().numpy(), "backward's --out")
    g = mha_py.load_safetensors(d / "g.safetensors")
    expect = {"query": xt.grad}
    if cross:
        expect.update(key=kt.grad, value=vt.grad)
    for pname, p in m.named_parameters():
        expect[pname] = p.grad
    assert set(g) == set(expect), f"tensors: {sorted(g)}, expected {sorted(expect)}"
    for gname, ref in expect.items():
        assert g[gname].shape == tuple(ref.shape), gname
        close(g[gname], ref.numpy(), f"gradient {gname}")


def test_round_trip_report(capsys):
    """Prints the largest relative errors of the round trips (visible with pytest -s)."""
    need_torch()
    if not WORST:
        pytest.skip("run together with test_round_trip")
    with capsys.disabled():
        for what, rel in sorted(WORST.items()):
            print(f"\nround trip vs torch: largest relative error of {what}: {rel:.2e}", end="")
        print()


@pytest.mark.parametrize("separate", [False, True])
def test_scale(tmp_path, separate):
    """--scale s equals PyTorch's layer whose query projection is multiplied by s*sqrt(D)."""
    need_torch()
    E_, H_, L_ = 8, 2, 5
    m = _torch_mha(E_, H_, 6 if separate else None, 6 if separate else None, True, 7)
    mha_py.save_safetensors(tmp_path / "w.safetensors", mha_py.state_dict_numpy(m))
    r = np.random.default_rng(3)
    x = r.standard_normal((2, L_, E_)).astype(np.float32)
    np.save(tmp_path / "q.npy", x)
    args = ["forward", "--weights", tmp_path / "w.safetensors", "--heads", H_,
            "--query", tmp_path / "q.npy", "--scale", "0.7", "--out", tmp_path / "y.npy"]
    kv = x
    if separate:
        kv = r.standard_normal((2, 3, 6)).astype(np.float32)
        np.save(tmp_path / "k.npy", kv)
        args += ["--key", tmp_path / "k.npy", "--value", tmp_path / "k.npy"]
    c = 0.7 * np.sqrt(E_ // H_)
    with torch.no_grad():
        qw = m.q_proj_weight if separate else m.in_proj_weight[:E_]
        qw.mul_(c)
        m.in_proj_bias[:E_].mul_(c)
        y_ref, _ = m(torch.from_numpy(x), torch.from_numpy(kv), torch.from_numpy(kv))
    rc, _, err = run(*args)
    assert rc == 0, err
    close(np.load(tmp_path / "y.npy"), y_ref.numpy(), "--scale output")


def test_isa_generic_matches_default(fx):
    outs = []
    for extra in ([], ["--isa", "generic"]):
        p = fx / f"y{len(extra)}.npy"
        rc, _, err = run(*_with(fwd(fx, *extra), "--out", p))
        assert rc == 0, err
        outs.append(np.load(p))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# (c) where PyTorch 2.13 and 1.13 differ, mha follows 2.13 (README: "PyTorch 2.13 and 1.13")
# ------------------------------------------------------------------------------------------
def _layer_files(d, m, x, *mask_files):
    """Writes the layer and input; returns the common `mha forward/backward` arguments."""
    mha_py.save_safetensors(d / "w.safetensors", mha_py.state_dict_numpy(m))
    np.save(d / "q.npy", x)
    args = ["--weights", d / "w.safetensors", "--heads", m.num_heads, "--query", d / "q.npy"]
    for opt, arr in mask_files:
        np.save(d / (opt.strip("-") + ".npy"), arr)
        args += [opt, d / (opt.strip("-") + ".npy")]
    return args


def _mha_forward(d, args, *extra):
    rc, _, err = run("forward", *args, *extra, "--out", d / "y.npy")
    assert rc == 0, err
    return np.load(d / "y.npy")


def _torch_ops(fn):
    """Names of the aten ops that fn() runs (torch.profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_torch213_eval_fast_path_gives_mha_numbers(tmp_path):
    """In eval mode under inference_mode, nn.MultiheadAttention (self-attention, batch_first,
    even heads, bool masks) runs its fused fast path (_native_multi_head_attention). Its output
    is mha's within float rounding; on a fully masked row the fast path gives NaN and mha gives
    out_proj.bias (mha's convention, as 2.13's training-mode SDPA path)."""
    need_torch()
    E_, H_, B_, L_ = 16, 4, 2, 7
    m = _torch_mha(E_, H_, None, None, True, 31).eval()
    r = np.random.default_rng(31)
    x = r.standard_normal((B_, L_, E_)).astype(np.float32)
    kpm = r.random((B_, L_)) < 0.3
    kpm[:, 0] = False
    kpm[1, :] = True  # batch 1: every key padded, every row fully masked
    args = _layer_files(tmp_path, m, x, ("--key-padding-mask", kpm))
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        call = lambda: m(xt, xt, xt, key_padding_mask=torch.from_numpy(kpm),  # noqa: E731
                         need_weights=False)[0]
        assert "aten::_native_multi_head_attention" in _torch_ops(call), "fast path not taken"
        y_fast = call().numpy()
    y = _mha_forward(tmp_path, args)
    close(y[0], y_fast[0], "fast path output, batch 0")
    assert np.isnan(y_fast[1]).all(), "torch 2.13's fast path no longer gives NaN on dead rows"
    np.testing.assert_array_equal(y[1], np.broadcast_to(m.out_proj.bias.detach().numpy(),
                                                        y[1].shape))


def test_torch213_fully_masked_rows_match_need_weights_false(tmp_path):
    """PyTorch 2.13 computes attention with need_weights=False through
    scaled_dot_product_attention, whose softmax gives 0 on a fully masked row: output
    out_proj.bias there and finite gradients, exactly mha's convention, so the output and every
    gradient match torch on all rows. need_weights=True still gives NaN on those rows."""
    need_torch()
    E_, H_, B_, L_, S_ = 8, 2, 2, 5, 6
    m = _torch_mha(E_, H_, None, None, True, 41)
    r = np.random.default_rng(41)
    x = r.standard_normal((B_, L_, E_)).astype(np.float32)
    kv = r.standard_normal((B_, S_, E_)).astype(np.float32)
    am = r.random((B_ * H_, L_, S_)) < 0.3
    am[..., 0] = False
    am[0:H_, 2, :] = True  # row 2 of batch 0: dead in every head
    am[H_ + 1, 3, :] = True  # row 3 of batch 1: dead in head 1 only
    dy = r.standard_normal((B_, L_, E_)).astype(np.float32)
    args = _layer_files(tmp_path, m, x, ("--attn-mask", am))
    np.save(tmp_path / "kv.npy", kv)
    np.save(tmp_path / "dy.npy", dy)
    args += ["--key", tmp_path / "kv.npy", "--value", tmp_path / "kv.npy"]

    xt, kvt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(kv).requires_grad_()
    y_ref, w_none = m(xt, kvt, kvt, attn_mask=torch.from_numpy(am), need_weights=False)
    assert w_none is None
    assert torch.isfinite(y_ref).all(), "torch 2.13 need_weights=False gave NaN on a dead row"
    y_ref.backward(torch.from_numpy(dy))
    y_nan, _ = m(xt, kvt, kvt, attn_mask=torch.from_numpy(am), need_weights=True)
    nan_rows = torch.isnan(y_nan).any(-1)
    assert nan_rows[0, 2] and nan_rows[1, 3] and int(nan_rows.sum()) == 2, nan_rows

    rc, _, err = run("backward", *args, "--grad-out", tmp_path / "dy.npy",
                     "--grads-out", tmp_path / "g.safetensors", "--out", tmp_path / "y.npy")
    assert rc == 0, err
    close(np.load(tmp_path / "y.npy"), y_ref.detach().numpy(), "output with dead rows")
    g = mha_py.load_safetensors(tmp_path / "g.safetensors")
    # key and value are one file given twice: mha reports each; torch sums them into kvt.grad
    close(g["query"], xt.grad.numpy(), "gradient query (dead rows)")
    close(g["key"] + g["value"], kvt.grad.numpy(), "gradient key+value (dead rows)")
    for pname, p in m.named_parameters():
        close(g[pname], p.grad.numpy(), f"gradient {pname} (dead rows)")


def test_torch213_is_causal_is_mha_causal(tmp_path):
    """In 2.13 `is_causal=True` is only a hint that attn_mask is the causal mask (torch raises
    without one); with the mask, need_weights=False sends is_causal to SDPA. `mha --causal`
    needs no mask file and gives the same numbers."""
    need_torch()
    E_, H_, B_, L_ = 16, 2, 2, 9
    m = _torch_mha(E_, H_, None, None, True, 51)
    x = np.random.default_rng(51).standard_normal((B_, L_, E_)).astype(np.float32)
    args = _layer_files(tmp_path, m, x)
    xt = torch.from_numpy(x)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        m(xt, xt, xt, is_causal=True)
    causal = torch.triu(torch.ones(L_, L_, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        y_ref = m(xt, xt, xt, attn_mask=causal, is_causal=True, need_weights=False)[0]
    close(_mha_forward(tmp_path, args, "--causal"), y_ref.numpy(), "--causal vs is_causal")


def test_torch213_mask_type_rules(tmp_path):
    """2.13 accepts only bool and floating masks (uint8, deprecated in 1.13, is an error) and
    deprecates mixing a bool key_padding_mask with a float attn_mask (a warning; the result is
    the combination). mha refuses uint8 masks too and combines mixed masks as torch does."""
    need_torch()
    E_, H_, B_, L_ = 8, 2, 2, 5
    m = _torch_mha(E_, H_, None, None, True, 61)
    r = np.random.default_rng(61)
    x = r.standard_normal((B_, L_, E_)).astype(np.float32)
    xt = torch.from_numpy(x)
    u8 = np.triu(np.ones((L_, L_), np.uint8), 1)
    with pytest.raises(AssertionError, match="only bool and floating"):
        m(xt, xt, xt, attn_mask=torch.from_numpy(u8))
    with pytest.raises(AssertionError, match="only bool and floating"):
        m(xt, xt, xt, key_padding_mask=torch.from_numpy(u8[:B_]))
    args = _layer_files(tmp_path, m, x)
    np.save(tmp_path / "u8.npy", u8)
    rc, _, err = run("forward", *args, "--attn-mask", tmp_path / "u8.npy",
                     "--out", tmp_path / "y.npy")
    assert rc == 2 and "got '|u1'" in err and "'|b1'" in err, err

    kpm = r.random((B_, L_)) < 0.3
    kpm[:, 0] = False
    fm = r.standard_normal((L_, L_)).astype(np.float32)
    args = _layer_files(tmp_path, m, x, ("--key-padding-mask", kpm), ("--attn-mask", fm))
    with pytest.warns(UserWarning, match="mismatched key_padding_mask and attn_mask"):
        with torch.no_grad():
            y_ref = m(xt, xt, xt, key_padding_mask=torch.from_numpy(kpm),
                      attn_mask=torch.from_numpy(fm), need_weights=False)[0]
    close(_mha_forward(tmp_path, args), y_ref.numpy(), "bool key padding + float attn_mask")
