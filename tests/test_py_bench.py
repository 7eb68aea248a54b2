"""test_py_bench.py - the Python benchmark (bench/py_bench.py, py_render.py, py_compare.sh)
runs every comparison it promises, stops on results that disagree, and reports every ratio.
Tiny shapes, one run each: nothing here judges a time.

Run as `MHA_BIN=build/mha PYTHONPATH=python MHA_LIBRARY=build/libmha.so build/venv/bin/python
-m pytest -q tests/test_py_bench.py` (CTest does it via tests/py_bench.cmake).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import py_bench  # noqa: E402
import py_render  # noqa: E402

SHAPES = [(1, 16, 16, 2, 1), (2, 8, 16, 4, 0)]
OVERHEAD = [(1, 16, 16, 2, 0), (1, 80, 64, 2, 1)]  # a small call (B*N*E <= 4096), a larger one
SMALL = [(1, 2, 16, 2)]


def mha_bin():
    b = os.environ.get("MHA_BIN")
    if not b or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return b


def shapes_arg(shapes):
    return " ".join(",".join(map(str, s)) for s in shapes)


@pytest.fixture(scope="module")
def tiny_run():
    """py_bench.py on tiny shapes: its JSON records (one run each, no warm-up to speak of)."""
    cmd = [sys.executable, os.path.join(BENCH, "py_bench.py"), "--mha-bin", mha_bin(),
           "--threads", "1", "--shapes", shapes_arg(SHAPES), "--overhead-shapes",
           shapes_arg(OVERHEAD), "--small-shapes", shapes_arg(SMALL), "--runs", "1",
           "--budget", "0", "--rounds", "2", "--small-iters", "3", "--small-rounds", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def key(r):
    return (r["what"], tuple(r["shape"]) + ((int(r["causal"]),) if "causal" in r else ()),
            r.get("mode"), r.get("need_weights"))


def test_every_comparison_is_measured(tiny_run):
    got = {key(r) for r in tiny_run if r["what"] not in ("run", "done")}
    want = set()
    for s in SHAPES:
        want |= {("module", s, m, nw) for m in ("infer", "train", "fwd_bwd") for nw in (0, 1)}
        want |= {(w, s, m, None) for w in ("seed", "sdpa") for m in ("fwd", "fwd_bwd")}
    for s in SMALL:
        want |= {("small", s, m, nw) for m in ("infer", "train", "grad") for nw in (0, 1)}
    for s in OVERHEAD:
        # a causal shape has no need_weights variant (not the C benchmark's work)
        want |= {("overhead", s, m, nw) for m, nw in
                 (("infer", False), ("infer", True), ("fwd_bwd", False)) if not (nw and s[4])}
    assert got == want
    assert len(got) == len(tiny_run) - 2  # one record per measurement
    assert tiny_run[0]["what"] == "run" and tiny_run[-1]["what"] == "done"
    assert tiny_run[0]["threads"] == tiny_run[0]["torch_threads"] == \
        tiny_run[0]["mha_threads"] == 1


def test_records_hold_their_times_and_ratios(tiny_run):
    for r in tiny_run:
        if r["what"] in ("module", "seed", "sdpa"):
            assert r["mha_ms"] > 0 and r["torch_ms"] > 0 and r["runs"] == 1
            assert r["ratio"] == pytest.approx(r["torch_ms"] / r["mha_ms"])
            assert 0 <= r["max_rel_err"] <= 1e-4
            assert r["torch_kernel"] != "?", r
            if r["mode"] == "fwd_bwd":
                assert r["mha_fwd_ms"] > 0 and r["mha_bwd_ms"] > 0 and r["torch_bwd_ms"] > 0
        elif r["what"] == "small":
            assert r["mha_us"] > 0 and r["torch_us"] > 0 and r["iters"] == 3
            assert r["ratio"] == pytest.approx(r["torch_us"] / r["mha_us"])
        elif r["what"] == "overhead":
            assert len(r["c_ms_rounds"]) == len(r["py_ms_rounds"]) == 2
            assert r["c_ms"] == min(r["c_ms_rounds"]) and r["py_ms"] == min(r["py_ms_rounds"])
            assert r["overhead"] == pytest.approx(r["py_ms"] / r["c_ms"] - 1)
            # the C benchmark ran the same shape and mode
            c = r["c_cmd"].split()
            B, N, E, H = r["shape"]
            assert c[c.index("--batch") + 1:c.index("--batch") + 8:2] == \
                [str(B), str(N), str(E), str(H)]
            assert ("--backward" in c) == (r["mode"] == "fwd_bwd")
            assert ("--need-weights" in c) == r["need_weights"]
            assert ("--causal" in c) == r["causal"]
            # a small call is timed --small-iters times (3 here), others --runs times (1)
            runs = 3 if B * N * E <= py_bench.SMALL_CALL else 1
            assert c[c.index("--runs") + 1] == str(runs) and r["c_runs"] == r["py_runs"] == runs


def test_markdown_reports_every_ratio(tiny_run):
    md = py_render.render(tiny_run, "bench/py_compare.sh")
    assert md.startswith("# Python benchmark")
    assert "bench/py_compare.sh\n" in md and "bench/py_bench.py --mha-bin" in md
    for r in tiny_run:
        if "ratio" in r:
            assert f"{r['ratio']:.2f}x" in md, r
        if r["what"] == "overhead":
            assert f"{r['overhead']:+.1%}" in md
    for title in ("## Targets", "## mha.MultiheadAttention vs torch.nn.MultiheadAttention",
                  "## mha.MultiHeadAttention (the seed module)", "## mha.functional vs",
                  "## Python overhead over the C benchmark", "## Small calls"):
        assert title in md
    assert "did not finish" not in md


def record(what, ratio, **kw):
    r = {"what": what, "shape": [1, 8, 64, 4], "mode": "infer", "need_weights": False,
         "causal": False, "ratio": ratio, "mha_us": 10.0, "torch_us": 10.0 * ratio}
    r.update(kw)
    return r


def test_markdown_marks_missed_targets():
    overhead = {"what": "overhead", "shape": [1, 2048, 512, 8], "causal": False, "mode": "infer",
                "need_weights": False, "c_ms": 100.0, "py_ms": 110.0, "overhead": 0.10,
                "c_ms_rounds": [100.0], "py_ms_rounds": [110.0], "c_cmd": "mha bench"}
    recs = [record("small", 0.5), overhead]
    md = py_render.render(recs)
    assert "**0.50x**" in md  # PyTorch faster: bold
    assert "+10.0% (**missed**)" in md
    assert "Where PyTorch was faster" in md
    assert "did not finish" in md  # no "done" record


def side(**t):
    return {k: (torch.tensor(v) if v is not None else None) for k, v in t.items()}


def test_agree_passes_within_tolerance():
    ref = side(output=[1.0, -2.0], **{"d W_o.weight": [100.0], "d W_k.bias": [1e-7]})
    got = side(output=[1.0, -2.0001], **{"d W_o.weight": [100.001], "d W_k.bias": [-2e-6]})
    # the key bias's gradient is rounding noise on both sides: measured against the floor
    assert py_bench.agree("t", got, ref, 1e-4) == pytest.approx(5e-5, rel=1e-2)


@pytest.mark.parametrize("got, message", [
    (side(output=[1.0, -2.01]), "output: mha and PyTorch differ by 0.005"),
    (side(output=[1.0, -2.0, 0.0]), "output: got shape [3] from mha, expected [2]"),
    (side(output=None), "output: mha returned nothing, PyTorch a tensor"),
])
def test_agree_stops_on_a_mismatch(got, message, capsys):
    with pytest.raises(SystemExit) as e:
        py_bench.agree("module x", got, side(output=[1.0, -2.0]), 1e-4)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("py_bench.py: error: module x: ") and message in err


def test_seed_skips_what_does_not_fit(monkeypatch, capsys):
    monkeypatch.setattr(py_bench, "SEED_MAX_SCORES", 2 * 16 * 16 - 1)
    py_bench.bench_seed(None, 1, 16, 16, 2, 0)
    r = json.loads(capsys.readouterr().out)
    assert r["what"] == "seed" and "skipped" in r and r["shape"] == [1, 16, 16, 2]


def test_compare_script_needs_a_build(tmp_path):
    p = subprocess.run(["bash", os.path.join(BENCH, "py_compare.sh")], capture_output=True,
                       text=True, env=dict(os.environ, BUILD=str(tmp_path)))
    assert p.returncode == 1
    assert f"py_compare.sh: {tmp_path}/mha not found (run make first)" in p.stderr
