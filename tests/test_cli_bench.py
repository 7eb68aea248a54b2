"""test_cli_bench.py - `mha bench` shows its progress on stderr when stderr is a terminal, and
prints nothing there otherwise; the core's options (--kv-heads, --seq-k, --head-dim, --window,
--softcap, --alibi) reach the JSON, and bad values are usage errors naming the flag. The
terminal is a pseudo-terminal (Python's pty module); the sizes are tiny, nothing is timed.

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


def test_heads_not_dividing_the_default_embed():
    # --heads 3 without --embed: the error names --heads and the default it does not divide,
    # not an "--embed: got 512" the command line never had; an --embed given is named as such
    p = subprocess.run([mha_bin(), "bench", "--heads", "3"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1 and p.stdout == "", p.stderr
    assert p.stderr.startswith("mha: error: --heads: got 3, expected a divisor of 512 (the "
                               "default --embed; give --embed, or --head-dim with --core)"), \
        p.stderr
    p = subprocess.run([mha_bin(), "bench", "--heads", "3", "--embed", "16"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.startswith("mha: error: --embed: got 16, expected a multiple of --heads 3")


def bench(*extra):
    return subprocess.run([mha_bin(), *TINY, *extra], capture_output=True, text=True, timeout=60)


def test_core_seq_k_and_head_dim():
    # --seq-k S: k and v of S keys (cross-attention); --head-dim D: the core's head dim, not
    # E / H (--embed becomes H * D). Causal with S != N is aligned bottom-right: row i sees
    # keys j <= i + S - N, so the FLOP count is that of the exact pairs:
    # sum over i < 16 of (i + 9) = 264 pairs, 4 * B * H * D * 264 forward, 2.5x that backward.
    p = bench("--core", "--seq-k", "24", "--head-dim", "8", "--kv-heads", "1", "--causal",
              "--backward", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert (r["seq"], r["seq_k"], r["head_dim"], r["embed"], r["kv_heads"]) == (16, 24, 8, 16, 1)
    assert r["window"] is None and r["softcap"] == 0 and r["alibi"] is False
    assert r["flops"] == 3.5 * 4 * 1 * 2 * 8 * 264
    # without them: S = N, D = E / H, and the causal count stays the nominal N * N / 2
    r = json.loads(bench("--core", "--causal", "--json").stdout)
    assert (r["seq_k"], r["head_dim"], r["flops"]) == (16, 8, 4 * 2 * 8 * 16 * 16 / 2)
    # without --embed, --head-dim frees --heads from dividing the default --embed (512 / 3)
    p = subprocess.run([mha_bin(), "bench", "--core", "--seq", "8", "--heads", "3",
                        "--head-dim", "4", "--runs", "1", "--json"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout)["embed"] == 12, p.stderr
    # the text line names them
    p = bench("--core", "--seq-k", "24", "--head-dim", "8")
    assert p.returncode == 0 and " S 24 D 8," in p.stdout, p.stdout


def test_core_window_softcap_alibi():
    # --window L,R, --softcap C and --alibi reach the core and the JSON (window as [L, R]);
    # with a window the FLOP count is that of the allowed pairs: N = 16, causal, window (4, 0):
    # row i sees min(i, 4) + 1 keys, 10 + 12 * 5 = 70 pairs; (-1, 2) without causal: row i
    # sees keys 0 .. min(i + 2, 15), all 256 pairs but the 13 * 14 / 2 above that band
    for extra, window, pairs in ((["--causal", "--window", "4,0"], [4, 0], 70),
                                 (["--window", "-1,2", "--softcap", "20", "--alibi"], [-1, 2],
                                  16 * 16 - (13 * 14) // 2)):
        p = bench("--core", "--kv-heads", "1", "--json", *extra)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert r["window"] == window and r["flops"] == 4 * 2 * 8 * pairs, r
    assert (r["softcap"], r["alibi"]) == (20, True), r
    p = bench("--core", "--causal", "--window", "4,0", "--softcap", "20", "--alibi")
    assert p.returncode == 0 and " causal window (4, 0) softcap 20 alibi," in p.stdout, p.stdout


def test_text_report_names_the_dropout():
    # the text line says what ran, as the JSON does ("dropout": 0.25)
    for extra in (["--core"], []):
        p = bench(*extra, "--dropout", "0.25")
        assert p.returncode == 0 and " dropout 0.25," in p.stdout, p.stdout


@pytest.mark.parametrize("extra, text", [
    (["--core", "--seq-k", "0"], "--seq-k: got 0, expected 1.."),
    (["--core", "--head-dim", "0"], "--head-dim: got 0, expected 1.."),
    (["--core", "--head-dim", "6"], "--head-dim: got 6, expected --embed / --heads = 16 / 2"),
    (["--core", "--window", "4"], '--window: got "4", expected L,R'),
    (["--core", "--window", "4,-2"], '--window: got "4,-2", expected L,R'),
    (["--core", "--window", "a,0"], '--window: got "a,0", expected L,R'),
    (["--core", "--window", "1,2,3"], '--window: got "1,2,3", expected L,R'),
    (["--core", "--window", "1,"], '--window: got "1,", expected L,R'),
    (["--core", "--softcap", "0"], "--softcap: got 0, expected a number > 0"),
    (["--core", "--softcap", "-5"], "--softcap: got -5, expected a number > 0"),
    (["--seq-k", "8"], "--seq-k: applies to --core"),
    (["--head-dim", "8"], "--head-dim: applies to --core"),
    (["--window", "1,1"], "--window: applies to --core"),
    (["--softcap", "30"], "--softcap: applies to --core"),
    (["--alibi"], "--alibi: applies to --core"),
])
def test_core_option_errors(extra, text):
    # bad values are usage errors (exit 1) whose error line names the flag
    p = bench(*extra)
    assert p.returncode == 1 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr.startswith("mha: error: " + text), p.stderr
