"""test_cli_decode.py - `mha bench --core --decode`: one decoding step (mha_attn_kvcache, one
query token per sequence against a cache of --seq S tokens) with the memory read bandwidth
measured in the same run; both cache layouts, paged caches (--page-size), several new tokens
(--tokens), the dtypes (--dtype f32, bf16, f16: 4 or 2
bytes per K/V element), text and JSON, and the flags' usage errors.
Tiny sizes, nothing timed: only the report's fields and their consistency are checked.

Run as `MHA_BIN=build/mha build/venv/bin/python -m pytest -q tests/test_cli_decode.py` (CTest
does it via tests/decode.cmake).
"""
import json
import os
import subprocess

import pytest

SMALL = ["bench", "--core", "--decode", "--batch", "2", "--seq", "700", "--embed", "64",
         "--heads", "4", "--kv-heads", "2", "--runs", "2", "--warmup", "1", "--bw-mib", "4",
         "--threads", "2"]


def mha(*args):
    b = os.environ.get("MHA_BIN")
    if not b or not os.path.isfile(b) or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return subprocess.run([b, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("layout", [None, "bhsd", "bshd"])
def test_json_report(layout):
    args = SMALL + ["--json"] + (["--layout", layout] if layout else [])
    r = mha(*args)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    j = json.loads(r.stdout)
    assert j["what"] == "core_decode"
    assert (j["batch"], j["seq_k"], j["heads"], j["kv_heads"], j["head_dim"]) == (2, 700, 4, 2, 16)
    assert j["layout"] == (layout or "bhsd")
    assert j["page_size"] == 0
    assert j["dtype"] == "f32"
    assert j["threads"] == 2 and j["runs"] == 2 and j["mem_read_mib"] == 4
    # K and V rows of every sequence and key/value head: B * G * S * 2D floats
    assert j["kv_bytes"] == 2 * 2 * 700 * 2 * 16 * 4
    assert j["median_ms"] > 0 and j["kv_gbps"] > 0 and j["mem_read_gbps"] > 0
    # the median of each run's K/V rate over the streaming read's right after it
    assert 0 < j["kv_vs_mem"] < float("inf")
    assert j["isa"] in ("generic", "avx2", "avx512")


def test_bandwidth_paired():
    """One run: the K/V rate over the memory rate is that run's, the streaming read timed right
    after the decoding step (so the two medians give it exactly)."""
    at = SMALL.index("--runs")
    r = mha(*SMALL[:at], "--runs", "1", *SMALL[at + 2:], "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["runs"] == 1
    assert j["kv_vs_mem"] == pytest.approx(j["kv_gbps"] / j["mem_read_gbps"], rel=2e-3)


@pytest.mark.parametrize("dtype,size", [("f32", 4), ("bf16", 2), ("f16", 2)])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_dtype(dtype, size, layout):
    """--dtype: q, the caches and out in that dtype; the K/V bytes read count its elements'
    size (the rate in GB/s is of the bytes actually read)."""
    r = mha(*SMALL, "--json", "--dtype", dtype, "--layout", layout)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["dtype"] == dtype and j["layout"] == layout
    assert j["kv_bytes"] == 2 * 2 * 700 * 2 * 16 * size
    assert j["kv_gbps"] == pytest.approx(j["kv_bytes"] / j["median_ms"] * 1e-6, rel=1e-2)


def test_dtype_on_every_isa():
    """The 2-byte decode step runs on every kernel path (the text report names the dtype)."""
    for isa in ("generic", "avx2", "avx512"):
        for dtype in ("bf16", "f16"):
            r = mha(*SMALL, "--dtype", dtype, "--isa", isa)
            if r.returncode != 0 and "a path this cpu supports" in r.stderr:
                continue  # an ISA this machine lacks
            assert r.returncode == 0, r.stderr
            assert f", dtype {dtype}, isa {isa}, " in r.stdout.splitlines()[0]


def test_seq_k_head_dim_and_score_options():
    """--seq-k and --head-dim give the cache's length and head dim (--seq, --embed unused);
    the window, softcap and ALiBi apply to the decoding step too."""
    r = mha("bench", "--core", "--decode", "--seq-k", "600", "--head-dim", "24", "--heads", "6",
            "--kv-heads", "3", "--runs", "2", "--warmup", "1", "--bw-mib", "2", "--threads", "1",
            "--window", "100,0", "--softcap", "30", "--alibi", "--causal", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert (j["seq_k"], j["head_dim"], j["heads"], j["kv_heads"]) == (600, 24, 6, 3)
    # the options that change what the step reads and computes are in the line
    assert (j["causal"], j["window"], j["softcap"], j["alibi"]) == (True, [100, 0], 30, True)
    # the keys the token may see, which the step reads: the window's last 101 of the 600
    assert j["kv_bytes"] == 1 * 3 * 101 * 2 * 24 * 4
    assert j["kv_gbps"] == pytest.approx(j["kv_bytes"] / j["median_ms"] * 1e-6, rel=1e-2)
    # 8 new tokens at 592 .. 599: the first sees from 492 on, the last 108 keys are read
    r = mha("bench", "--core", "--decode", "--seq-k", "600", "--head-dim", "24", "--heads", "6",
            "--kv-heads", "3", "--runs", "2", "--warmup", "1", "--bw-mib", "2", "--threads", "1",
            "--window", "100,0", "--causal", "--tokens", "8", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kv_bytes"] == 1 * 3 * 108 * 2 * 24 * 4


def test_text_report():
    r = mha(*SMALL, "--layout", "bshd", "--isa", "generic")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("core_decode B 2 S 700 H 4 G 2 D 16, layout bshd, dtype f32, "
                               "isa generic, 2 threads: median ")
    assert "K/V read" in lines[0] and "GB/s" in lines[0]
    assert lines[1].startswith("  memory read bandwidth ")
    assert "4 MiB streamed, 2 threads" in lines[1]


@pytest.mark.parametrize("page", [16, 7, 512, 1000])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_paged_caches(page, layout):
    """--page-size P: mha_attn_kvcache_paged on pools of P-row pages (the same K/V bytes read)."""
    r = mha(*SMALL, "--json", "--layout", layout, "--page-size", str(page))
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["page_size"] == page and j["layout"] == layout
    assert j["kv_bytes"] == 2 * 2 * 700 * 2 * 16 * 4
    assert j["median_ms"] > 0 and j["kv_gbps"] > 0
    r = mha(*SMALL, "--page-size", str(page))
    assert r.returncode == 0, r.stderr
    assert f", pages of {page} rows, dtype f32" in r.stdout.splitlines()[0]


@pytest.mark.parametrize("tokens", [4, 20])
def test_tokens(tokens):
    """--tokens T: T new tokens per sequence (speculative decoding's check), the cache holding
    --seq S keys with them: the same K/V bytes read; 4 tokens x 2 query heads per key/value
    head decode, 20 (40 rows) too (grouped heads), in the text report too."""
    r = mha(*SMALL, "--json", "--tokens", str(tokens), "--causal")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["tokens"] == tokens and j["seq_k"] == 700
    assert j["kv_bytes"] == 2 * 2 * 700 * 2 * 16 * 4
    assert j["median_ms"] > 0 and j["kv_gbps"] > 0
    r = mha(*SMALL, "--tokens", str(tokens))
    assert r.returncode == 0, r.stderr
    assert f", {tokens} new tokens, dtype f32" in r.stdout.splitlines()[0]
    assert json.loads(mha(*SMALL, "--json").stdout)["tokens"] == 1


@pytest.mark.parametrize("args,msg", [
    (["bench", "--decode"], "--decode: applies to --core"),
    (["bench", "--core", "--tokens", "2"], "--tokens: applies to --decode"),
    (["bench", "--core", "--decode", "--tokens", "0"], "--tokens: got 0, expected 1..512"),
    (["bench", "--core", "--decode", "--seq-k", "100", "--tokens", "101"],
     "--tokens: got 101, expected 1..100"),
    (["bench", "--core", "--layout", "bshd"], "--layout: applies to --decode"),
    (["bench", "--core", "--decode", "--layout", "sbhd"],
     '--layout: got "sbhd", expected bhsd or bshd'),
    (["bench", "--core", "--decode", "--backward"], "--decode: cannot be combined with --backward"),
    (["bench", "--core", "--decode", "--bw-mib", "0"], "--bw-mib: got 0, expected 1.."),
    (["bench", "--core", "--page-size", "16"], "--page-size: applies to --decode"),
    (["bench", "--core", "--decode", "--page-size", "0"], "--page-size: got 0, expected 1.."),
    (["bench", "--core", "--decode", "--heads", "4", "--kv-heads", "3"],
     "--kv-heads: got 3, expected a divisor of --heads 4"),
    (["bench", "--core", "--decode", "--dtype", "f64"],
     '--dtype: got "f64", expected f32, bf16 or f16'),
    (["bench", "--core", "--decode", "--dtype", "BF16"],
     '--dtype: got "BF16", expected f32, bf16 or f16'),
])
def test_usage_errors(args, msg):
    r = mha(*args)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith("mha: error: " + msg), r.stderr
    assert "hint: mha bench --help" in r.stderr


def test_help_lists_the_flags():
    r = mha("bench", "--help")
    assert r.returncode == 0
    for flag in ("--decode", "--layout L", "bshd", "--page-size P", "--bw-mib", "--dtype T",
                 "bf16", "f16", "--tokens T"):
        assert flag in r.stdout
