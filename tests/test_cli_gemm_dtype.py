"""test_cli_gemm_dtype.py - `mha bench --gemm M N K --dtype f32|bf16|f16` runs mha_gemm on A and B
of that dtype and says so (text and JSON, GFLOP/s of 2 M N K); a bad --dtype is a usage error
naming the flag (the module's --dtype: test_cli_dtype); `mha info` names the bf16 micro-kernel
exactly when the CPU has AVX512_BF16 (the kernel's flag avx512_bf16 in /proc/cpuinfo). The
sizes are tiny, nothing is timed.

Run as `MHA_BIN=build/mha build/venv/bin/python -m pytest -q tests/test_cli_gemm_dtype.py`
(CTest does it via tests/gemm_dtype.cmake).
"""
import json
import os
import subprocess

import pytest

GEMM = ["bench", "--gemm", "33", "17", "9", "--runs", "2", "--warmup", "1", "--threads", "1"]


def mha(*args, env=None):
    b = os.environ.get("MHA_BIN")
    if not b or not os.path.isfile(b) or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return subprocess.run([b, *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
def test_gemm_dtype_json_and_text(dtype):
    r = mha(*GEMM, "--dtype", dtype, "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["what"] == "gemm" and j["dtype"] == dtype, j
    assert (j["M"], j["N"], j["K"]) == (33, 17, 9) and j["flops"] == 2 * 33 * 17 * 9, j
    assert j["gflops"] > 0, j
    r = mha(*GEMM, "--dtype", dtype)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"gemm M 33 N 17 K 9 (ta 0, tb 1, {dtype}), isa "), r.stdout
    assert "GFLOP/s" in r.stdout, r.stdout


def test_gemm_default_dtype_is_f32():
    r = mha(*GEMM, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["dtype"] == "f32", (r.stdout, r.stderr)


@pytest.mark.parametrize("args,msg", [
    (GEMM + ["--dtype", "i8"], '--dtype: got "i8", expected f32, bf16 or f16'),
    (GEMM + ["--dtype", "BF16"], '--dtype: got "BF16", expected f32, bf16 or f16'),
])
def test_bad_dtype_is_a_usage_error(args, msg):
    r = mha(*args)
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout)
    assert r.stderr.startswith("mha: error: " + msg), r.stderr


def cpu_has_bf16():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return " avx512_bf16" in line.rstrip() + " "
    pytest.fail("/proc/cpuinfo has no flags line")


def test_info_names_the_bf16_kernel_when_it_runs():
    env = {k: v for k, v in os.environ.items() if k != "MHA_ISA"}
    r = mha("info", env=env)
    assert r.returncode == 0, r.stderr
    has = cpu_has_bf16() and "path: avx512" in r.stdout
    line = "gemm bf16     mha__gemm_avx512bf16_bf16_14x32 (vdpbf16ps)"
    assert (line in r.stdout) == has, r.stdout
    features = r.stdout.split("\n")[1]
    assert features.startswith("cpu features:") and ("avx512bf16" in features) == cpu_has_bf16()
    # a forced path without the pair kernel converts bf16 and f16 for its fp32 micro-kernel
    r = mha("info", env={**env, "MHA_ISA": "generic"})
    assert r.returncode == 0, r.stderr
    assert "gemm bf16/f16 converted to float32 by mha__gemm_pack_generic_h" in r.stdout, r.stdout
    assert "vdpbf16ps" not in r.stdout, r.stdout
