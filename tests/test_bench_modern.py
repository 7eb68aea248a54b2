"""test_bench_modern.py - bench/modern.py and bench/torch_modern.py (issue 10's speed ratios)
without timing anything: the report's ratios are the medians of per-round ratios, and its
verdicts follow the targets; the commands it builds are accepted by `mha bench` and by
torch_modern.py and come back with the shape asked for; PyTorch's masks say what mha.h's
definition says, and torch_modern.py's calls agree with its float64 reference.

Run as `MHA_BIN=build/mha build/venv/bin/python -m pytest -q tests/test_bench_modern.py`
(CTest does it via tests/bench.cmake).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import modern  # noqa: E402
import torch_modern  # noqa: E402


def mha_bin():
    b = os.environ.get("MHA_BIN")
    if not b or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return b


class FakeRunner:
    """What modern.Runner holds after a run: results per (side, case, round) and failures."""

    def __init__(self, times, failed=None):
        self.res = [{"side": side, "case": name, "round": rnd, "cmd": f"{side} {name}",
                     "result": {"fwd_median_ms": f, "bwd_median_ms": b, "impl": "F.sdpa",
                                "kernel": "flash (cpu)"}}
                    for (side, name, rnd), (f, b) in times.items()]
        self.failed = failed or {}


def row(md, start):
    lines = [l for l in md.splitlines() if l.startswith("| " + start)]
    assert len(lines) == 1, (start, md)
    return [c.strip() for c in lines[0].strip("|").split("|")]


def test_report_ratios_are_medians_over_rounds():
    g = modern.groups(quick=True)
    g = {"gqa": g["gqa"][:1], "window": g["window"]}
    (gq, mh), (full, win) = g["gqa"][0], g["window"][0]
    times = {}
    # GQA vs MHA: rate ratio = MHA time / GQA time per round: fwd 1.02, 0.9, 0.99 (median
    # 0.99); bwd 1.0, 0.96, 0.97 (median 0.97): both >= 0.95, the target is met
    rounds = [(10, 10.2, 20, 20), (10, 9, 25, 24), (10, 9.9, 100, 97)]
    for rnd, (gf, mf, gb, mb) in enumerate(rounds, 1):
        times["mha", gq["name"], rnd] = (gf, gb)
        times["mha", mh["name"], rnd] = (mf, mb)
        times["torch", gq["name"], rnd] = (2 * gf, 3 * gb)
    # window / causal time: fwd 0.05, 0.07, 0.09 (median 0.07); bwd 0.1 each: not met
    for rnd, wf in enumerate([5, 7, 9], 1):
        times["mha", full["name"], rnd] = (100, 200)
        times["mha", win["name"], rnd] = (wf, 20)
    fail = {"mha bench --window": "mha: error: not yet"}
    a = argparse.Namespace(rounds=3)
    md = modern.render(FakeRunner(times, fail), g, a, 1.0, "info")
    r = row(md, modern.shape_str(gq) + " vs")
    assert r[1:] == ["10.00", "9.90", "0.990 (1.020, 0.900, 0.990)", "25.00", "24.00",
                     "0.970 (1.000, 0.960, 0.970)", "yes"], r
    r = row(md, modern.shape_str(win) + " vs")
    assert r[3] == "0.070 (0.050, 0.070, 0.090)" and r[6].startswith("0.100") and \
        r[7] == "**no**", r
    # mha vs PyTorch: PyTorch's time / mha's, per round then the median
    r = row(md, modern.shape_str(gq) + " | ")
    assert r[4] == "2.00x (2.00x, 2.00x, 2.00x)" and r[7] == "3.00x (3.00x, 3.00x, 3.00x)", r
    # no PyTorch result for the window: dashes, not a number
    r = row(md, modern.shape_str(win) + " | ")
    assert r[1] == "-" and r[3] == "-" and r[4] == "-", r
    assert "- `mha bench --window`: mha: error: not yet" in md


def test_a_missing_side_gives_no_verdict():
    g = {"gqa": modern.groups(quick=True)["gqa"][:1]}
    gq, mh = g["gqa"][0]
    md = modern.render(FakeRunner({("mha", gq["name"], 1): (1, 2)}), g,
                       argparse.Namespace(rounds=1), 1.0, "info")
    assert row(md, modern.shape_str(gq) + " vs")[1:] == ["1.00", "-", "-", "2.00", "-", "-",
                                                          "-"]


def test_mha_bench_accepts_the_commands():
    # every mha command modern.py builds (quick shapes): a usage error would exit 1; the shape
    # in the JSON is the case's
    runner = modern.Runner(argparse.Namespace(mha=mha_bin(), python=sys.executable, threads=1,
                                              results=None))
    for sec in modern.groups(quick=True).values():
        for grp in sec:
            for c in grp:
                cmd = runner.command("mha", c)
                cmd[cmd.index("--runs") + 1] = "1"
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                assert p.returncode == 0, (cmd, p.stderr)
                r = json.loads(p.stdout)
                for k in ("batch", "heads", "kv_heads", "seq", "seq_k", "head_dim", "causal",
                          "softcap", "alibi"):
                    assert r[k] == c[k], (k, r, c)
                assert r["window"] == (list(c["window"]) if c["window"] else None)


def test_allowed_keys_follow_the_definition():
    # mha.h: key j of row i allowed iff j <= i + S - L (causal, bottom-right) and
    # i + S - L - left <= j <= i + S - L + right (window). L = 3, S = 5, causal, window (1, 0):
    a = argparse.Namespace(seq=3, seq_k=5, causal=True, window=(1, 0))
    want = [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
    assert torch_modern.allowed_keys(a, range(3)).int().tolist() == want
    a.causal, a.window = False, (-1, 1)  # unbounded left, one key right of the diagonal
    want = [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert torch_modern.allowed_keys(a, range(3)).int().tolist() == want


def test_alibi_slopes():
    # 2^(-8 h / H), h = 1..H: H = 8 gives 1/2, 1/4, ..., 1/256 (the ALiBi paper's)
    assert torch_modern.alibi_slopes(8).tolist() == [2.0 ** -h for h in range(1, 9)]


@pytest.mark.parametrize("extra, impl", [
    ([], "F.sdpa, enable_gqa"),
    (["--causal", "--seq-k", "29"], "F.sdpa, bool mask, enable_gqa"),
    (["--causal", "--window", "5,0"], "F.sdpa, bool mask, enable_gqa"),
    (["--causal", "--alibi", "--window", "3,2"], "F.sdpa, float ALiBi mask, enable_gqa"),
    (["--causal", "--softcap", "2", "--window", "6,-1"], "eager: matmul, tanh softcap"),
])
def test_torch_side_agrees_with_the_reference(extra, impl, monkeypatch, capsys):
    # torch_modern.py exits 2 unless its output matches the float64 reference; the JSON
    # carries the shape and what ran. Nothing here is timed: one run (in this process, as
    # `python bench/torch_modern.py ARGS` would).
    monkeypatch.setattr(sys, "argv", [
        "torch_modern.py", "--batch", "2", "--heads", "4", "--kv-heads", "2", "--seq", "23",
        "--head-dim", "8", "--threads", "1", "--runs", "1", "--warmup", "0", "--backward",
        *extra])
    torch_modern.main()
    r = json.loads(capsys.readouterr().out)
    assert r["impl"].startswith(impl) and r["max_rel_err"] <= 1e-4, r
    assert (r["heads"], r["kv_heads"], r["head_dim"], r["backward"]) == (4, 2, 8, True)
    assert r["seq_k"] == (29 if "--seq-k" in extra else 23) and r["runs"] == 1


def test_torch_side_refuses_a_wrong_result(monkeypatch):
    # the check bites: a reference that disagrees (ALiBi's sign flipped) stops the script
    a = argparse.Namespace(batch=1, heads=2, kv_heads=2, seq=16, seq_k=16, head_dim=8,
                           causal=True, window=None, softcap=0.0, alibi=True, backward=False,
                           max_gib=1.0)
    real = torch_modern.alibi_slopes
    torch_modern.setup(a)  # agrees
    calls = []

    def flipped(H):
        calls.append(H)
        return -real(H) if len(calls) > 1 else real(H)  # the mask right, the reference not
    monkeypatch.setattr(torch_modern, "alibi_slopes", flipped)
    with pytest.raises(SystemExit) as e:
        torch_modern.setup(a)
    assert e.value.code == 2


def test_softcap_memory_guard():
    a = argparse.Namespace(batch=1, heads=32, kv_heads=8, seq=16384, seq_k=16384, head_dim=128,
                           causal=True, window=None, softcap=30.0, alibi=False, max_gib=8.0)
    with pytest.raises(SystemExit) as e:
        torch_modern.attention(a)
    assert e.value.code == 2
