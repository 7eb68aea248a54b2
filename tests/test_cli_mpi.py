"""test_cli_mpi.py - `mpirun -n P mha forward / backward / bench` (tools/cli_mpi.c).

Run as `MHA_BIN=build/mha MHA_MPIEXEC=mpirun build/venv/bin/python -m pytest -q
tests/test_cli_mpi.py` (CTest does it via tests/cli_mpi.cmake when CMake found MPI). Every
mpirun gets --allow-run-as-root (the tests may run as root), --oversubscribe (P up to 4 on 2
cores) and -q (mpirun's own notes about a rank's exit code would add lines to the one error
line checked here), and a timeout: a hang fails the test.
  - the same outputs as one process: for P = 1..4, `mha forward` and `mha backward` (the output
    and every gradient) within 1e-5 relative of the run without mpirun, causal and not, with a
    key padding mask (one batch entry with every key padded: its rows are 0), cross-attention;
  - errors: every rank exits with the same code (mpirun's), one error line (rank 0's, or
    "mha[rank R]:" from the only rank that knows), no output file, no hang;
  - `mha bench --core` reports every rank's times, work and peak memory and the balance;
  - plain `mha` (no mpirun) never starts MPI.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mha_py  # noqa: E402
from test_cli_bench import mha_bin  # noqa: E402  (MHA_BIN, checked)

TIMEOUT = 90  # seconds for one mpirun; a hang fails the test here
E, H, B, L, S, KDIM, VDIM = 16, 2, 3, 24, 36, 12, 20  # L and S split for P = 1..4 (zigzag too)
OLD = b"previous content, must survive a failed run\n"


def mpiexec():
    m = os.environ.get("MHA_MPIEXEC")
    if not m:
        pytest.fail("MHA_MPIEXEC must name mpirun (tests/cli_mpi.cmake sets it)")
    return m


def launcher(P):
    return [mpiexec(), "--allow-run-as-root", "--oversubscribe", "-q", "-n", str(P)]


def run(cmd, env=None):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT,
                       env=env)
    return p.returncode, p.stdout, p.stderr


def one(*args):
    """mha in one process, without mpirun."""
    return run([mha_bin(), *args])


def mpi(P, *args):
    """mpirun -n P mha ..."""
    return run([*launcher(P), mha_bin(), *args])


def mpmd(*parts):
    """mpirun -n P1 mha ARGS1 : -n P2 mha ARGS2 ...: ranks that run different command lines."""
    cmd = launcher(parts[0][0])
    for i, (P, args) in enumerate(parts):
        cmd += ([":", "-n", str(P)] if i else []) + [mha_bin(), *args]
    return run(cmd)


def sd_numpy(E, kdim=None, vdim=None, seed=0):
    r = np.random.default_rng(seed)
    f = lambda *s: (r.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    if kdim is None:
        sd = {"in_proj_weight": f(3 * E, E)}
    else:
        sd = {"q_proj_weight": f(E, E), "k_proj_weight": f(E, kdim), "v_proj_weight": f(E, vdim)}
    sd.update({"in_proj_bias": f(3 * E), "out_proj.weight": f(E, E), "out_proj.bias": f(E)})
    return sd


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A self-attention and a cross-attention layer, their inputs, output gradients and key
    padding masks (batch entry 1 has every key padded)."""
    d = tmp_path_factory.mktemp("mpi")
    r = np.random.default_rng(7)
    x = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    mha_py.save_safetensors(d / "w.safetensors", sd_numpy(E))
    mha_py.save_safetensors(d / "wx.safetensors", sd_numpy(E, KDIM, VDIM, seed=1))
    np.save(d / "q.npy", x(B, L, E))
    np.save(d / "q20.npy", x(B, 20, E))
    np.save(d / "q48.npy", x(B, 48, E))
    np.save(d / "q1.npy", x(L, E))  # unbatched
    np.save(d / "k.npy", x(B, S, KDIM))
    np.save(d / "v.npy", x(B, S, VDIM))
    np.save(d / "dy.npy", x(B, L, E))
    np.save(d / "dy1.npy", x(L, E))
    for name, n in (("kpm", L), ("kpmx", S)):
        m = r.random((B, n)) < 0.3
        m[1] = True  # every key of batch entry 1 ignored: its rows give 0
        np.save(d / f"{name}.npy", m)
    return d


def inputs(d, case):
    """The command line of a case: (layer and inputs, output gradient file)."""
    if case == "cross":
        return ["--weights", d / "wx.safetensors", "--heads", H, "--query", d / "q.npy",
                "--key", d / "k.npy", "--value", d / "v.npy",
                "--key-padding-mask", d / "kpmx.npy"], d / "dy.npy"
    if case == "unbatched_causal":
        return ["--weights", d / "w.safetensors", "--heads", H, "--query", d / "q1.npy",
                "--causal"], d / "dy1.npy"
    a = ["--weights", d / "w.safetensors", "--heads", H, "--query", d / "q.npy"]
    a += {"causal": ["--causal"], "padding": ["--key-padding-mask", d / "kpm.npy"],
          "causal_padding": ["--causal", "--key-padding-mask", d / "kpm.npy"],
          "bottom_right": ["--causal-bottom-right"]}[case]
    return a, d / "dy.npy"


def close(got, ref, what):
    err = np.abs(got.astype(np.float64) - ref).max() if ref.size else 0.0
    scale = np.abs(ref).max() if ref.size else 0.0
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: not finite"
    assert err <= 1e-5 * max(scale, 1e-30), f"{what}: max abs error {err:.3g}, scale {scale:.3g}"


# ------------------------------------------------------------------------------------------
# the same outputs as one process
# ------------------------------------------------------------------------------------------
CASES = ["causal", "padding", "causal_padding", "cross", "unbatched_causal", "bottom_right"]


@pytest.fixture(scope="module")
def reference(d):
    """One process's forward output and backward gradients of every case."""
    ref = {}
    for case in CASES:
        a, dy = inputs(d, case)
        y, g = d / f"ref_{case}_y.npy", d / f"ref_{case}_g.safetensors"
        rc, _, err = one("backward", *a, "--grad-out", dy, "--grads-out", g, "--out", y,
                         "--threads", 1)
        assert rc == 0, err
        ref[case] = (np.load(y), mha_py.load_safetensors(g))
    return ref


@pytest.mark.parametrize("P", [1, 2, 3, 4])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_one_process(d, reference, case, P):
    a, _ = inputs(d, case)
    y = d / f"y_{case}_{P}.npy"
    rc, out, err = mpi(P, "forward", *a, "--out", y, "--threads", 1)
    assert rc == 0 and out == "" and err == "", (rc, out, err)
    got, ref = np.load(y), reference[case][0]
    close(got, ref, f"{case} P={P} out")
    if "padding" in case:  # batch entry 1: every key ignored, its output is out_proj's bias
        assert np.allclose(got[1], got[1][0]), "fully padded rows differ"


@pytest.mark.parametrize("P", [1, 2, 3, 4])
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_one_process(d, reference, case, P):
    a, dy = inputs(d, case)
    y, g = d / f"by_{case}_{P}.npy", d / f"bg_{case}_{P}.safetensors"
    rc, out, err = mpi(P, "backward", *a, "--grad-out", dy, "--grads-out", g, "--out", y,
                       "--threads", 1)
    assert rc == 0 and out == "" and err == "", (rc, out, err)
    ref_y, ref_g = reference[case]
    close(np.load(y), ref_y, f"{case} P={P} out")
    got = mha_py.load_safetensors(g)
    assert sorted(got) == sorted(ref_g), (sorted(got), sorted(ref_g))
    want = {"query", "in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}
    if case == "cross":
        want = {"query", "key", "value", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                "in_proj_bias", "out_proj.weight", "out_proj.bias"}
    assert want <= set(got), sorted(got)
    for name in ref_g:
        close(got[name], ref_g[name], f"{case} P={P} gradient {name}")


# ------------------------------------------------------------------------------------------
# errors: one line, one exit code on every rank, no output, no hang
# ------------------------------------------------------------------------------------------
def error_lines(err):
    return [ln for ln in err.splitlines() if re.match(r"mha(\[rank \d+\])?: error: ", ln)]


def check_failure(rc, err, code, start, y):
    assert rc == code, f"exit {rc}, expected {code}; stderr: {err!r}"
    lines = err.splitlines()
    assert len(error_lines(err)) == 1 and lines[0].startswith(start), err
    # the error line and at most a hint: nothing from the other ranks, nothing from mpirun
    assert len(lines) <= 2 and all(ln.startswith("hint: ") for ln in lines[1:]), err
    assert y.read_bytes() == OLD, "the output file changed"
    left = [f for f in os.listdir(y.parent) if f.startswith(".mha-")]
    assert not left, f"temporary files left behind: {left}"


@pytest.fixture
def y(tmp_path):
    y = tmp_path / "y.npy"
    y.write_bytes(OLD)
    return y


@pytest.mark.parametrize("P", [2, 3])
def test_usage_error_is_one_line_from_rank_0(d, y, P):
    a, _ = inputs(d, "causal")
    rc, out, err = mpi(P, "forward", *a, "--out", y, "--bogus")
    check_failure(rc, err, 1, 'mha: error: unknown option "--bogus"', y)
    rc, out, err = mpi(P, "forward", *a)  # --out missing
    check_failure(rc, err, 1, "mha: error: --out is required", y)


def test_attention_weights_are_refused_under_mpirun(d, y):
    a, _ = inputs(d, "causal")
    rc, out, err = mpi(2, "forward", *a, "--out", y, "--attn-out", y.parent / "w.npy")
    check_failure(rc, err, 1, "mha: error: --attn-out: the attention weights are not", y)
    assert not (y.parent / "w.npy").exists()
    rc, out, err = mpi(2, "forward", *a, "--out", y, "--attn-mask", d / "kpm.npy")
    check_failure(rc, err, 1, "mha: error: --attn-mask: not supported under mpirun", y)
    rc, out, err = mpi(2, "forward", *a, "--out", y, "--dtype", "bf16")
    check_failure(rc, err, 1, "mha: error: --dtype bf16: not supported under mpirun", y)


@pytest.mark.parametrize("cmd", ["forward", "backward"])
def test_length_that_does_not_split(d, y, cmd):
    # 20 tokens, causal over 3 ranks: zigzag needs a multiple of 6; without the mask over 3
    # ranks a multiple of 3
    for extra, want in ((["--causal"], "a multiple of 6"), ([], "a multiple of 3")):
        a = ["--weights", d / "w.safetensors", "--heads", H, "--query", d / "q20.npy", *extra]
        if cmd == "forward":
            a += ["--out", y]
        else:
            a += ["--grad-out", d / "q20.npy", "--grads-out", y]
        rc, out, err = mpi(3, cmd, *a)
        check_failure(rc, err, 2, "mha: error: --query: mha_mpi_shard: n: got 20", y)
        assert want in err, err


def test_input_unreadable_on_one_rank_only(d, y):
    """Ranks 0 and 1 read the query, rank 2 cannot: rank 2 alone knows, and says so; every
    rank exits 2 and nothing is written."""
    a, _ = inputs(d, "causal")
    bad = [x if x != d / "q.npy" else d / "missing.npy" for x in a]
    rc, out, err = mpmd((2, ["forward", *a, "--out", y]), (1, ["forward", *bad, "--out", y]))
    check_failure(rc, err, 2, "mha[rank 2]: error: --query: ", y)
    assert "missing.npy" in err


def rank_codes(tmp, parts):
    """Each rank's own exit code (mpirun reports one, and by default ends the other ranks once
    one exits with an error: here it lets them finish): every rank's command wrapped in sh,
    which records it. parts as mpmd's; returns (stderr, the codes in rank order)."""
    wrap = 'c=0; "$@" || c=$?; echo $c > "%s/code.$OMPI_COMM_WORLD_RANK"; exit $c' % tmp
    cmd = launcher(parts[0][0]) + ["--mca", "orte_abort_on_non_zero_status", "0"]
    for i, (P, args) in enumerate(parts):
        cmd += ([":", "-n", str(P)] if i else []) + ["sh", "-c", wrap, "sh", mha_bin(), *args]
    _, _, err = run(cmd)
    n = sum(P for P, _ in parts)
    return err, [int((tmp / f"code.{r}").read_text()) for r in range(n)]


def test_every_rank_exits_with_the_same_code(d, y, tmp_path):
    a, _ = inputs(d, "causal")
    bad = [x if x != d / "q.npy" else d / "missing.npy" for x in a]
    # rank 1 of 3 alone cannot read its input
    err, codes = rank_codes(tmp_path, [(1, ["forward", *a, "--out", y]),
                                       (1, ["forward", *bad, "--out", y]),
                                       (1, ["forward", *a, "--out", y])])
    assert codes == [2, 2, 2], (codes, err)
    assert err.startswith("mha[rank 1]: error: --query") and len(error_lines(err)) == 1, err
    # rank 0 alone cannot write; a usage error; success
    for args, want in ((["--out", y.parent / "no" / "y.npy"], 2), (["--out", y, "--nope"], 1),
                       (["--out", y], 0)):
        err, codes = rank_codes(tmp_path, [(3, ["forward", *a, *args])])
        assert codes == [want] * 3 and len(error_lines(err)) == (want > 0), (codes, err)


def test_output_only_rank_0_can_declare(d, y):
    a, _ = inputs(d, "causal")
    out = y.parent / "no" / "such" / "dir" / "y.npy"
    rc, _, err = mpi(3, "forward", *a, "--out", out)
    check_failure(rc, err, 2, "mha: error: --out: ", y)
    assert not out.parent.exists()


def test_ranks_that_disagree_on_shapes(d, y):
    """Rank 1 reads a query twice as long: the library's agreement refuses on every rank."""
    a, _ = inputs(d, "causal")
    other = [x if x != d / "q.npy" else d / "q48.npy" for x in a]
    rc, out, err = mpmd((1, ["forward", *a, "--out", y]), (1, ["forward", *other, "--out", y]))
    check_failure(rc, err, 2, "mha: error: ", y)
    assert "rank 1" in err, err


def test_backward_grad_out_of_the_wrong_shape(d, y):
    a, _ = inputs(d, "causal")
    rc, out, err = mpi(2, "backward", *a, "--grad-out", d / "q20.npy", "--grads-out", y)
    check_failure(rc, err, 2, "mha: error: --grad-out: shape [3, 20, 16], expected", y)


# ------------------------------------------------------------------------------------------
# mha bench --core
# ------------------------------------------------------------------------------------------
BENCH = ["bench", "--core", "--batch", 1, "--seq", 64, "--embed", 32, "--heads", 2, "--runs", 2,
         "--warmup", 1, "--threads", 1]


@pytest.mark.parametrize("P", [2, 4])
@pytest.mark.parametrize("causal", [True, False])
def test_bench_reports_every_rank_and_the_balance(P, causal):
    extra = ["--backward"] + (["--causal"] if causal else [])
    rc, out, err = mpi(P, *BENCH, *extra)
    assert rc == 0 and err == "", (rc, err)
    lines = out.splitlines()
    assert lines[0].startswith("core_fwd_bwd B 1 N 64 E 32 H 2") and " of 2 runs" in lines[0], out
    assert f"mpi: {P} ranks, {'zigzag' if causal else 'contiguous'} layout" in out, out
    for r in range(P):
        m = re.search(rf"^  rank {r}: forward compute ([\d.]+) ms, comm wait ([\d.]+) ms, "
                      rf"total ([\d.]+) ms, work (\S+) MAC, sent ([\d.]+) MiB; backward .*"
                      rf"; peak memory ([\d.]+) MiB$", out, re.M)
        assert m, out
        assert float(m.group(3)) > 0 and float(m.group(4)) > 0 and float(m.group(6)) > 0, out
    m = re.search(r"work balance max/mean: forward ([\d.]+), backward ([\d.]+)", out)
    assert m and 1.0 <= float(m.group(1)) <= 1.05 and 1.0 <= float(m.group(2)) <= 1.05, out


def test_bench_json_has_the_ranks():
    P = 3
    rc, out, err = mpi(P, *BENCH, "--causal", "--seq", 96, "--json")
    assert rc == 0 and err == "" and out.count("\n") == 1, (rc, out, err)
    r = json.loads(out)
    assert r["what"] == "core_fwd" and r["seq"] == 96 and r["median_ms"] > 0, r
    m = r["mpi"]
    assert m["ranks"] == P and m["layout"] == "zigzag" and len(m["per_rank"]) == P, m
    assert 1.0 <= m["fwd_work_balance"] <= 1.05 and "bwd_work_balance" not in m, m
    # zigzag: every rank computes the same (query chunk, key chunk) pairs' work
    works = [x["fwd_work"] for x in m["per_rank"]]
    assert min(works) > 0 and max(works) == min(works), works
    for i, x in enumerate(m["per_rank"]):
        assert x["rank"] == i and x["fwd_total_ms"] > 0 and x["peak_rss_mib"] > 0, x
        assert x["fwd_bytes_sent"] > 0, x


def test_bench_under_mpirun_is_the_core():
    args = [a for a in BENCH if a != "--core"]
    rc, out, err = mpi(2, *args)
    assert rc == 1 and out == "" and len(error_lines(err)) == 1, (rc, out, err)
    assert err.startswith("mha: error: under mpirun mha bench times the ring attention core")
    rc, out, err = mpi(2, *BENCH, "--alibi")
    assert rc == 1 and err.startswith("mha: error: --alibi: not supported under mpirun"), err
    rc, out, err = mpi(3, *BENCH, "--causal", "--seq", 64)  # 64 is not a multiple of 6
    assert rc == 2 and err.startswith("mha: error: --seq: mha_mpi_shard: n: got 64"), err


def test_bench_ranks_given_different_timing_options():
    """The timed runs are collectives: ranks given different --budget, --runs, --warmup or
    --backward (an MPMD launch) are refused with one usage error, not left waiting for each
    other (a rank with --budget 0 skipped the clock's all-reduce another rank made)."""
    base = ["bench", "--core", "--batch", 1, "--seq", 64, "--embed", 32, "--heads", 2, "--threads",
            1]
    for mine, other in ((["--budget", 0], ["--budget", 5]), (["--runs", 2], ["--runs", 3]),
                        (["--warmup", 1], ["--warmup", 0]), ([], ["--backward"])):
        rc, out, err = mpmd((1, [*base, *mine]), (1, [*base, *other]))
        assert rc == 1 and out == "" and len(error_lines(err)) == 1, (other, rc, out, err)
        assert err.startswith("mha: error: --runs, --warmup, --budget, --backward: the ranks "
                              "were given different values"), err


# ------------------------------------------------------------------------------------------
# plain mha never starts MPI
# ------------------------------------------------------------------------------------------
def test_plain_mha_does_not_start_mpi(d, tmp_path):
    """With a component MPI cannot load forced by the environment, MPI_Init would fail (an
    Open MPI singleton start): plain mha runs as ever, so it never called it."""
    env = dict(os.environ, OMPI_MCA_pml="no_such_component")
    for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"):
        env.pop(v, None)
    a, _ = inputs(d, "causal")
    rc, out, err = run([mha_bin(), "forward", *a, "--out", tmp_path / "y.npy"], env=env)
    assert rc == 0 and err == "", err
    rc, out, err = run([mha_bin(), *BENCH], env=env)
    assert rc == 0 and err == "" and "mpi:" not in out, (out, err)
    # and the same environment does break MPI under mpirun: the test can fail
    rc, out, err = run([*launcher(1), mha_bin(), *BENCH], env=env)
    assert rc != 0, (rc, out, err)
