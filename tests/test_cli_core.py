"""test_cli_core.py - the CLI and the thread limit (fault 1).

`--threads 100000` (within the range the CLI parses) or OMP_NUM_THREADS=100000 once crashed
inside libgomp. Now the first is refused as a usage error naming the limit, and the
second runs on MHA_MAX_THREADS threads. Run as `MHA_BIN=build/mha python -m pytest -q
tests/test_cli_core.py` (CTest: tests/cli.cmake); needs numpy only.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mha_py  # noqa: E402

MAX_THREADS = 1024  # MHA_MAX_THREADS in include/mha.h
E, H = 8, 2


def run(*args, env=None):
    b = os.environ.get("MHA_BIN")
    if not b or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    e = dict(os.environ, **(env or {}))
    p = subprocess.run([b, *map(str, args)], capture_output=True, text=True, timeout=120, env=e)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def fwd(tmp_path):
    r = np.random.default_rng(3)
    sd = {"in_proj_weight": r.standard_normal((3 * E, E)).astype(np.float32) * 0.3,
          "out_proj.weight": r.standard_normal((E, E)).astype(np.float32) * 0.3}
    mha_py.save_safetensors(tmp_path / "w.safetensors", sd)
    np.save(tmp_path / "q.npy", r.standard_normal((2, 5, E)).astype(np.float32))
    return ["forward", "--weights", tmp_path / "w.safetensors", "--heads", H,
            "--query", tmp_path / "q.npy", "--out", tmp_path / "y.npy"], tmp_path / "y.npy"


def test_threads_beyond_the_limit_refused_as_a_usage_error(fwd):
    args, out = fwd
    rc, _, err = run(*args, "--threads", 100000)
    assert rc == 1, (rc, err)  # a usage error, not a signal or libgomp's exit
    assert "mha: error:" in err and "libgomp" not in err, err
    assert f"--threads: got 100000, expected 0 (all cores) or 1 to {MAX_THREADS}" in err, err
    assert not out.exists()


def test_threads_at_the_limit_run(fwd):
    args, out = fwd
    rc, _, err = run(*args, "--threads", MAX_THREADS)
    assert rc == 0, err
    assert np.isfinite(np.load(out)).all()


def test_huge_omp_num_threads_is_capped(fwd):
    args, out = fwd
    rc, _, err = run(*args, env={"OMP_NUM_THREADS": "100000"})
    assert rc == 0, err
    assert np.isfinite(np.load(out)).all()
    rc, info, err = run("info", env={"OMP_NUM_THREADS": "100000"})
    assert rc == 0, err
    assert f"threads: {MAX_THREADS}" in info, info
