"""test_cli_bench.py - `mha bench` shows its progress on stderr when stderr is a terminal, and
prints nothing there otherwise. The terminal is a pseudo-terminal (Python's pty module); the
sizes are tiny, nothing is timed.

Run as `MHA_BIN=build/mha build/venv/bin/python -m pytest -q tests/test_cli_bench.py` (CTest
does it via tests/viz.cmake).
"""
import json
import os
import pty
import subprocess

import pytest

TINY = ["bench", "--batch", "1", "--seq", "16", "--embed", "16", "--heads", "2", "--threads",
        "1", "--runs", "3", "--warmup", "2"]
CASES = [[], ["--backward"], ["--core", "--causal"], ["--json"]]
GEMM = ["bench", "--gemm", "8", "8", "8", "--runs", "3", "--warmup", "2"]


def mha_bin():
    b = os.environ.get("MHA_BIN")
    if not b or not os.path.isfile(b) or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return b


def run_with_tty_stderr(args):
    """Runs mha with stderr on a pseudo-terminal and stdout on a pipe; returns the exit code,
    stdout and everything the terminal received."""
    master, slave = pty.openpty()
    p = subprocess.Popen([mha_bin(), *args], stdout=subprocess.PIPE, stderr=slave,
                         stdin=subprocess.DEVNULL)
    os.close(slave)
    tty = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal's last open end
            break
        if not chunk:
            break
        tty += chunk
    out = p.stdout.read()
    code = p.wait(timeout=60)
    os.close(master)
    return code, out.decode(), tty.decode()


@pytest.mark.parametrize("extra", CASES)
def test_progress_on_a_terminal(extra):
    code, out, tty = run_with_tty_stderr(TINY + extra)
    assert code == 0, tty
    # every step says what it does, on one line rewritten in place, erased at the end
    for step in ("warm-up run 1", "warm-up run 2", "timed run 1 of 3", "timed run 3 of 3"):
        assert f"\r\x1b[Kmha bench: {step}" in tty, repr(tty)
    assert "(the last took " in tty and tty.endswith("\r\x1b[K"), repr(tty)
    assert "\n" not in tty.replace("\r\n", ""), repr(tty)  # never a line of its own
    if "--json" in extra:
        assert json.loads(out)["runs"] == 3
    else:
        assert " of 3 runs" in out


def test_progress_for_the_gemm():
    code, out, tty = run_with_tty_stderr(GEMM)
    assert code == 0 and "timed run 3 of 3" in tty and out.startswith("gemm M 8"), (out, tty)


@pytest.mark.parametrize("args", [TINY, TINY + ["--json"], GEMM])
def test_no_progress_when_stderr_is_not_a_terminal(args):
    p = subprocess.run([mha_bin(), *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.count("\n") == 1


def test_kv_heads_for_grouped_query_attention():
    # --core --kv-heads G: k and v with G heads (a divisor of --heads), reported in the JSON;
    # refused without --core and for a G that does not divide H (usage errors, exit 1)
    run = lambda *extra: subprocess.run([mha_bin(), *TINY, *extra], capture_output=True,
                                        text=True, timeout=60)
    for g in ("1", "2"):
        p = run("--core", "--backward", "--kv-heads", g, "--json")
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert r["kv_heads"] == int(g) and r["heads"] == 2 and r["what"] == "core_fwd_bwd"
    assert json.loads(run("--core", "--json").stdout)["kv_heads"] == 2  # default: H
    for extra, text in ((["--kv-heads", "1"], "applies to --core"),
                        (["--core", "--kv-heads", "3"], "expected a divisor of --heads 2"),
                        (["--core", "--kv-heads", "0"], "expected a divisor")):
        p = run(*extra)
        assert p.returncode == 1 and text in p.stderr, p.stderr
