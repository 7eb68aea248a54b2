"""test_bench_dtype.py - bench/dtype.py (issue 11's bf16 / f16 speed ratios), the --dtype of
bench/torch_modern.py and bench/torch_module.py, without timing anything: one --quick run gives
the section "Issue 11: bf16 and f16" with its three tables, one row per case, every cell read
from the measurement it names, and the exact commands, each accepted and answered with the
shape and dtype asked for; on made-up results the ratios are per-round medians and the verdict
follows the 1.7x target; mha's module is timed in bf16 exactly when `mha bench` runs it so, and
the caption says which; PyTorch's side in bf16 and f16 passes its float64 check, which still
catches wrong results at the wider tolerance.

Run as `MHA_BIN=build/mha build/venv/bin/python -m pytest -q tests/test_bench_dtype.py`
(CTest does it via tests/bench.cmake).
"""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import dtype  # noqa: E402
import torch_modern  # noqa: E402
import torch_module  # noqa: E402
from test_bench_modern import mha_bin  # noqa: E402

MS = re.compile(r"^\d+\.\d\d$")
RATIO = re.compile(r"^\d+\.\d\dx$")  # one round: no per-round values in brackets


def tables(md):
    """{### heading: [row cells, ...]} (the header and separator rows left out)."""
    out, head = {}, None
    for line in md.splitlines():
        if line.startswith("### "):
            head = line[4:]
            out[head] = []
        elif line.startswith("| ") and head:
            out[head].append([c.strip() for c in line.strip("|").split("|")])
    return {h: rows[1:] for h, rows in out.items()}  # rows[0]: the header


def table(md, start):
    hits = [rows for h, rows in tables(md).items() if h.startswith(start)]
    assert len(hits) == 1, (start, md)
    return hits[0]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One --quick run (1 round, 1 thread): (markdown, its JSON lines, groups)."""
    d = tmp_path_factory.mktemp("quick")
    out, res = d / "dtype.md", d / "dtype.jsonl"
    cmd = [sys.executable, str(BENCH / "dtype.py"), "--build", os.path.dirname(mha_bin()),
           "--python", sys.executable, "--quick", "--threads", "1", "--out", str(out),
           "--results", str(res)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stderr
    assert out.read_text() == p.stdout
    return p.stdout, [json.loads(l) for l in res.read_text().splitlines()], dtype.groups(True)


def test_quick_section_structure(quick):
    md, recs, g = quick
    assert md.startswith("## Issue 11: bf16 and f16\n\nWritten by `bench/dtype.py`")
    assert "CPU: " in md and "threads 1" in md and "PyTorch 2.13" in md and "`mha info`" in md
    heads = [l[4:] for l in md.splitlines() if l.startswith("### ")]
    assert [h.split(" ")[0:3] for h in heads] == [
        ["mha's", "core", "in"], ["mha", "vs", "PyTorch"], ["PyTorch", "2.13's",
                                                             "nn.MultiheadAttention"],
        ["Commands"]], heads  # no "Commands that failed"
    # every command ran once (one round) and answered
    assert all("result" in r for r in recs) and len({r["cmd"] for r in recs}) == len(recs)
    cases = [c for grp in g["core"] + g["module"] for c in grp]
    assert sorted((r["side"], r["case"]) for r in recs) == sorted(
        (s, c["name"]) for c in cases for s in c["sides"])
    # the commands block: this run's command line, then every command in the order run
    block = md.split("### Commands\n\n```\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert "dtype.py" in block[0] and "--quick" in block[0]
    assert block[1:] == [r["cmd"] for r in recs]


def test_quick_commands_answer_the_shape_and_dtype(quick):
    # each JSON line is of the case's shape and dtype: mha's core in the case's dtype, PyTorch's
    # SDPA too, PyTorch's module in bf16, mha's module in the dtype the probe found
    md, recs, g = quick
    by = {c["name"]: c for grp in g["core"] + g["module"] for c in grp}
    module_dtype = dtype.mha_module_dtype(mha_bin())[0]
    for rec in recs:
        c, r = by[rec["case"]], rec["result"]
        assert (r["batch"], r["seq"], r["heads"], r["backward"]) == (
            c["batch"], c["seq"], c["heads"], c["backward"]), (rec, c)
        if c["kind"] == "core":
            assert (r["dtype"], r["head_dim"], r["causal"]) == (c["dtype"], c["head_dim"],
                                                                 c["causal"]), (rec, c)
        else:
            want = module_dtype if rec["side"] == "mha" else "bf16"
            assert (r["dtype"], r["embed"]) == (want, c["embed"]), (rec, c)
        assert ("--dtype" in rec["cmd"]) == (c["kind"] == "core" or rec["side"] == "torch"
                                             or module_dtype == "bf16"), rec


def test_quick_tables_read_their_measurements(quick):
    md, recs, g = quick
    res = {(r["side"], r["case"]): r["result"] for r in recs}

    def ms(side, c, key):
        return f"{res[side, c['name']][key]:.2f}"

    rows = table(md, "mha's core in bf16 and f16 vs float32")
    assert len(rows) == 2 * len(g["core"])
    for grp, fwd, bwd in zip(g["core"], rows[::2], rows[1::2]):
        f32, bf, f16 = grp
        for row, phase in ((fwd, "fwd"), (bwd, "bwd")):
            key = phase + "_median_ms"
            assert row[:2] == [dtype.modern.shape_str(f32), phase], row
            assert row[2:6] == [ms("mha", f32, key), ms("mha", bf, key), ms("mha", f16, key),
                                ms("mha", bf, phase + "_gflops")], row
            for cell, c in ((row[6], bf), (row[7], f16)):  # rate ratio: f32 time / c's
                want = res["mha", f32["name"]][key] / res["mha", c["name"]][key]
                assert RATIO.match(cell) and cell == f"{want:.2f}x", row
            assert row[8] == "n/a (N < 2048)", row  # quick shapes are below the target's N

    rows = table(md, "mha vs PyTorch 2.13's F.scaled_dot_product_attention")
    with_torch = [c for grp in g["core"] for c in grp if "torch" in c["sides"]]
    assert {c["dtype"] for c in with_torch} == {"bf16", "f16"}
    assert len(rows) == len(with_torch)
    for row, c in zip(rows, with_torch):
        t = res["torch", c["name"]]
        assert row[:3] == [dtype.modern.shape_str(c), c["dtype"],
                           f"{t['impl']} ({t['kernel']})"], row
        assert row[3:5] == [ms("mha", c, "fwd_median_ms"), ms("torch", c, "fwd_median_ms")]
        assert row[6:8] == [ms("mha", c, "bwd_median_ms"), ms("torch", c, "bwd_median_ms")]
        assert RATIO.match(row[5]) and RATIO.match(row[8]), row

    rows = table(md, "PyTorch 2.13's nn.MultiheadAttention in bf16 vs")
    mods = [c for grp in g["module"] for c in grp]
    assert [r[1] for r in rows] == [c["mode"] for c in mods] == ["infer", "train"]
    for row, c in zip(rows, mods):
        t = res["torch", c["name"]]
        path = ("fast path" if t["fast_path"] else "training path") + f" ({t['kernel']})"
        assert row[2:5] == [res["mha", c["name"]]["dtype"], path,
                            ms("mha", c, "fwd_median_ms")], row
        assert MS.match(row[5]) and RATIO.match(row[6]), row
        if c["mode"] == "infer":
            assert row[7:] == ["-", "-", "-"], row
        else:
            assert MS.match(row[7]) and MS.match(row[8]) and RATIO.match(row[9]), row


class FakeRunner:
    """What dtype.Runner holds after a run: results per (side, case, round)."""

    def __init__(self, times):
        self.failed = {}
        self.res = []
        for (side, name, rnd), (f, b) in times.items():
            r = {"fwd_median_ms": f, "fwd_gflops": 1000.0 / f, "impl": "F.sdpa",
                 "kernel": "flash (cpu)", "fast_path": True, "dtype": "f32"}
            if b is not None:
                r.update(bwd_median_ms=b, bwd_gflops=2500.0 / b)
            self.res.append({"side": side, "case": name, "round": rnd, "cmd": f"{side} {name}",
                             "result": r})


def args(rounds, module_dtype="f32"):
    return argparse.Namespace(rounds=rounds, budget=4.0, module_dtype=module_dtype)


def test_ratios_are_medians_and_the_verdict_follows_the_target():
    full = dtype.groups(quick=False)
    grp = full["core"][0]  # D=64 N=2048, not causal: the 1.7x target applies
    f32, bf, f16 = grp
    assert (f32["seq"], bf["dtype"], f16["sides"]) == (2048, "bf16", ("mha", "torch"))
    times = {}
    # fwd: f32 100 ms, bf16 50, 80, 40 ms: rate ratios 2.0, 1.25, 2.5 (median 2.0: met);
    # bwd: f32 200 ms, bf16 250, 100, 125 ms: 0.8, 2.0, 1.6 (median 1.6: missed)
    for rnd, (bf_f, bf_b) in enumerate([(50, 250), (80, 100), (40, 125)], 1):
        times["mha", f32["name"], rnd] = (100, 200)
        times["mha", bf["name"], rnd] = (bf_f, bf_b)
        times["mha", f16["name"], rnd] = (200, 400)
        times["torch", bf["name"], rnd] = (3 * bf_f, 2 * bf_b)  # PyTorch 3x, 2x mha's time
    md = dtype.render(FakeRunner(times), {"core": [grp], "module": []}, args(3), 1.0, "info",
                      "why")
    fwd, bwd = table(md, "mha's core")
    assert fwd[1:] == ["fwd", "100.00", "50.00", "200.00", "20.00",
                       "2.00x (2.00x, 1.25x, 2.50x)", "0.50x (0.50x, 0.50x, 0.50x)", "yes"], fwd
    assert bwd[1:] == ["bwd", "200.00", "125.00", "400.00", "20.00",
                       "1.60x (0.80x, 2.00x, 1.60x)", "0.50x (0.50x, 0.50x, 0.50x)",
                       "**no**"], bwd
    sdpa = table(md, "mha vs PyTorch")
    # bf16 measured on both sides; f16 on mha's only: its PyTorch cells are dashes
    assert [r[1] for r in sdpa] == ["bf16", "f16"]
    assert sdpa[0][5] == "3.00x (3.00x, 3.00x, 3.00x)" and \
        sdpa[0][8] == "2.00x (2.00x, 2.00x, 2.00x)", sdpa[0]
    assert sdpa[1][2:] == ["-", "200.00", "-", "-", "400.00", "-", "-"], sdpa[1]


def test_a_missing_measurement_gives_no_verdict():
    grp = dtype.groups(quick=False)["core"][0]
    times = {("mha", grp[0]["name"], 1): (100, 200)}  # bf16 failed: no ratio, no verdict
    md = dtype.render(FakeRunner(times), {"core": [grp], "module": []}, args(1), 1.0, "i", "w")
    for row in table(md, "mha's core"):
        assert row[3:] == ["-", "-", "-", "-", "-", "-"], row


def test_module_rows_follow_what_mha_ran(tmp_path):
    # `mha bench` refusing --dtype bf16 for the module (as now): float32, with its message in
    # the caption; accepting it (a later issue): bf16, the flag on mha's command
    refuse, accept = tmp_path / "refuse", tmp_path / "accept"
    refuse.write_text("#!/bin/sh\necho 'mha: error: --dtype bf16: not for the module' >&2\n"
                      "exit 1\n")
    accept.write_text('#!/bin/sh\necho \'{"what":"module_fwd","dtype":"bf16"}\'\n')
    for f in (refuse, accept):
        f.chmod(0o755)
    assert dtype.mha_module_dtype(str(refuse)) == (
        "f32", "mha: error: --dtype bf16: not for the module")
    assert dtype.mha_module_dtype(str(accept)) == ("bf16", "")

    g = {"core": [], "module": dtype.groups(quick=True)["module"]}
    infer, train = g["module"][0]
    for mod_dtype in ("f32", "bf16"):
        a = argparse.Namespace(mha="mha", python="python", threads=1, results=None,
                               budget=4.0, module_dtype=mod_dtype)
        runner = dtype.Runner(a)
        for c in (infer, train):
            cmd = runner.command("mha", c)
            assert ("--dtype" in cmd) == (mod_dtype == "bf16"), cmd
            assert ("--backward" in cmd) == (c is train), cmd
            tcmd = runner.command("torch", c)
            assert tcmd[tcmd.index("--dtype") + 1] == "bf16" and tcmd[1].endswith(
                "torch_module.py"), tcmd
            assert cmd[cmd.index("--budget") + 1] == "4", cmd
        fake = FakeRunner({("mha", infer["name"], 1): (2, None),
                           ("torch", infer["name"], 1): (3, None),
                           ("mha", train["name"], 1): (2, 4),
                           ("torch", train["name"], 1): (5, 6)})
        for r in fake.res:
            r["result"]["dtype"] = mod_dtype if r["side"] == "mha" else "bf16"
        md = dtype.render(fake, g, args(1, mod_dtype), 1.0, "info", "mha: error: no bf16")
        head = next(l for l in md.splitlines() if "nn.MultiheadAttention in bf16 vs" in l)
        rows = table(md, "PyTorch 2.13's nn.MultiheadAttention")
        assert [r[2] for r in rows] == [mod_dtype, mod_dtype], rows
        if mod_dtype == "f32":
            assert "mha's module in float32: mha has no bf16 module yet" in head and \
                '"mha: error: no bf16"' in head, head
        else:
            assert "mha's module in bf16" in head and "float32" not in head, head
        assert rows[0][4:] == ["2.00", "3.00", "1.50x", "-", "-", "-"], rows[0]
        assert rows[1][4:] == ["2.00", "5.00", "2.50x", "4.00", "6.00", "1.50x"], rows[1]


INFO = """mha 0.1.0
path: avx512 (auto)
kernels of the avx512 table (the ones that run):
  gemm micro    mha__gemm_avx512_f32_14x32: MR 14 x NR 32; blocks KC 256, MC 336,
                NC 4096
  gemm bf16     mha__gemm_bf16: MR 14 x NR 32;
                bf16 pairs
  forward       attn_fwd (avx512), fused
  bf16          mha__attn_fwd_bf16 and the backward's attn_*_bf16: vdpbf16ps
                products; f16: the float32 kernels on float32 copies
threads: 2 (all cores)
                not a continuation
"""


def test_bf16_kernels_from_mha_info(tmp_path):
    # the entries of `mha info` whose label names bf16 or f16, continuation lines joined
    fake = tmp_path / "mha"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{INFO}EOF\n")
    fake.chmod(0o755)
    assert dtype.bf16_kernels(str(fake)) == (
        "`mha info`: gemm bf16: mha__gemm_bf16: MR 14 x NR 32; bf16 pairs; bf16: "
        "mha__attn_fwd_bf16 and the backward's attn_*_bf16: vdpbf16ps products; f16: the "
        "float32 kernels on float32 copies")
    fake.write_text("#!/bin/sh\necho 'path: generic'\n")
    assert dtype.bf16_kernels(str(fake)) == "`mha info`: no bf16 or f16 kernel listed"


def test_tolerances():
    # 1e-4 in float32 (as before --dtype); two machine epsilons in bf16 (2^-7) and f16 (2^-10)
    torch = torch_modern.torch
    assert torch_modern.tolerance(torch.float32) == 1e-4
    assert torch_modern.tolerance(torch.bfloat16) == 2.0 ** -6
    assert torch_modern.tolerance(torch.float16) == 2.0 ** -9


@pytest.mark.parametrize("dt", ["bf16", "f16"])
@pytest.mark.parametrize("extra, impl", [
    ([], "F.sdpa, enable_gqa"),
    (["--causal"], "F.sdpa, bool mask, enable_gqa"),  # causal with S != N: a bool mask
    (["--causal", "--alibi", "--window", "3,2"], "F.sdpa, float ALiBi mask, enable_gqa"),
    (["--causal", "--softcap", "2", "--window", "6,-1"], "eager: matmul, tanh softcap"),
])
def test_torch_modern_in_low_precision(dt, extra, impl, monkeypatch, capsys):
    # torch_modern.py --dtype: the call in bf16 / f16 agrees with the float64 reference on the
    # rounded inputs within the dtype's tolerance (else it exits 2); the JSON says the dtype
    monkeypatch.setattr(sys, "argv", [
        "torch_modern.py", "--batch", "2", "--heads", "4", "--kv-heads", "2", "--seq", "23",
        "--seq-k", "29", "--head-dim", "8", "--threads", "1", "--runs", "1", "--warmup", "0",
        "--backward", "--dtype", dt, *extra])
    torch_modern.main()
    r = json.loads(capsys.readouterr().out)
    tol = torch_modern.tolerance(torch_modern.DTYPES[dt])
    assert r["dtype"] == dt and r["impl"].startswith(impl) and r["max_rel_err"] <= tol, r
    assert r["bwd_median_ms"] > 0 and r["runs"] == 1


def wrong_bf16_scale(monkeypatch):
    """F.scaled_dot_product_attention with a softmax scale 10% off, in bf16 only."""
    real = torch_modern.F.scaled_dot_product_attention

    def wrong(q, k, v, *rest, scale=None, **kw):
        if q.dtype == torch_modern.torch.bfloat16:
            scale = 1.1 * q.shape[-1] ** -0.5
        return real(q, k, v, *rest, scale=scale, **kw)
    monkeypatch.setattr(torch_modern.F, "scaled_dot_product_attention", wrong)


def check_refuses_a_wrong_bf16_result(setup, a, monkeypatch):
    """setup(a) passes its reference check, and exits 2 with the wrong scale."""
    setup(a)
    wrong_bf16_scale(monkeypatch)
    with pytest.raises(SystemExit) as e:
        setup(a)
    assert e.value.code == 2


@pytest.mark.parametrize("extra", [dict(), dict(causal=True),
                                   dict(causal=True, alibi=True, window=(3, 2))])
def test_torch_modern_check_bites_in_bf16(extra, monkeypatch):
    # at bf16's tolerance the check still refuses a result 10% off in the softmax scale
    # (plain, causal, and with a float ALiBi mask and a window)
    a = argparse.Namespace(batch=2, heads=4, kv_heads=2, seq=23, seq_k=23, head_dim=8,
                           causal=False, window=None, softcap=0.0, alibi=False, backward=False,
                           max_gib=1.0, dtype="bf16")
    vars(a).update(extra)
    check_refuses_a_wrong_bf16_result(torch_modern.setup, a, monkeypatch)


@pytest.mark.parametrize("dt", ["bf16", "f16"])
@pytest.mark.parametrize("backward", [False, True])
def test_torch_module_in_low_precision(dt, backward, monkeypatch, capsys):
    # torch_module.py: nn.MultiheadAttention in the dtype, the fast path for inference, the
    # training path with --backward, within the dtype's tolerance of the float64 module
    monkeypatch.setattr(sys, "argv", [
        "torch_module.py", "--batch", "2", "--seq", "12", "--embed", "32", "--heads", "4",
        "--dtype", dt, "--threads", "1", "--runs", "1", "--warmup", "0"] + ["--backward"] *
        backward)
    torch_module.main()
    r = json.loads(capsys.readouterr().out)
    assert (r["dtype"], r["backward"], r["mode"]) == (dt, backward, "train" if backward else
                                                      "infer"), r
    assert r["fast_path"] == (not backward) and r["checked_against"] == "float64", r
    assert r["max_rel_err"] <= torch_modern.tolerance(torch_modern.DTYPES[dt]), r
    assert ("bwd_median_ms" in r) == backward and (r["batch"], r["seq"], r["embed"],
                                                   r["heads"]) == (2, 12, 32, 4), r


def test_torch_module_check_bites(monkeypatch):
    # the training path (which calls F.scaled_dot_product_attention) 10% off in bf16: refused
    a = argparse.Namespace(batch=2, seq=12, embed=32, heads=4, backward=True, dtype="bf16")
    check_refuses_a_wrong_bf16_result(torch_module.setup, a, monkeypatch)
