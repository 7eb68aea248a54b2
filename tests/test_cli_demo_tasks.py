"""test_cli_demo_tasks.py - `mha demo --task NAME` end to end through the binary: every task
reaches its held-out accuracy, its heads learn the pattern the task needs (checked on the
attention `mha forward` recomputes from the saved layer and example, against expectations
written here from the example's tokens, not from the demo's own statistics), the loss is
printed as it falls (plain progress lines when stderr is not a terminal, a redrawn line when it
is, a sparkline on stdout), and the pictures are written per task.

Training is deterministic for a seed, so every check is on a fixed run; nothing is timed.
Run as `MHA_BIN=build/mha build/venv/bin/python -m pytest -q tests/test_cli_demo_tasks.py`
(CTest does it via tests/demo.cmake).
"""
import os
import pty
import re
import subprocess

import numpy as np
import pytest

TASKS = ["reverse", "lookup", "prevmax"]
SPARK = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"


def mha_bin():
    b = os.environ.get("MHA_BIN")
    if not b or not os.path.isfile(b) or not os.access(b, os.X_OK):
        pytest.fail(f"MHA_BIN must name the built mha binary (got {b!r})")
    return os.path.abspath(b)  # some runs change the working directory


def run(*args, cwd=None, timeout=120):
    p = subprocess.run([mha_bin(), *map(str, args)], capture_output=True, timeout=timeout,
                       cwd=cwd)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


_runs = {}


def demo(task, tmp_path_factory, seed=1):
    """One run of a task (cached: several tests look at the same run)."""
    key = (task, seed)
    if key not in _runs:
        out = tmp_path_factory.mktemp(f"demo_{task}_{seed}")
        rc, so, se = run("demo", "--task", task, "--seed", seed, "--threads", 1, "--out-dir", out)
        assert rc == 0, se
        _runs[key] = (out, so, se)
    return _runs[key]


def example_tokens(stdout):
    m = re.search(r"^what the heads learned, on the held-out input (.*) \(answers (.*)\):$",
                  stdout, re.M)
    assert m, stdout
    return m.group(1).split(" "), m.group(2).split(" ")


def head_weights(out, tmp_path):
    """The per-head attention [H, L, L] of the saved example, recomputed by `mha forward`."""
    rc, _, se = run("forward", "--weights", out / "layer.safetensors", "--query",
                    out / "example.npy", "--out", tmp_path / "y.npy", "--attn-out",
                    tmp_path / "a.npy", "--per-head")
    assert rc == 0, se
    return np.load(tmp_path / "a.npy")


def test_list_tasks():
    rc, so, se = run("demo", "--list-tasks")
    assert rc == 0, se
    assert so.splitlines() == TASKS  # one name a line, the default first
    rc, so, _ = run("demo", "--help")
    assert rc == 0
    for t in TASKS:
        assert re.search(rf"^  {t} ", so, re.M), f"--help does not describe {t}"


def test_unknown_task():
    rc, so, se = run("demo", "--task", "sort")
    assert rc == 1 and so == ""
    assert se.splitlines()[0] == ('mha: error: --task: got "sort", expected one of '
                                  + ", ".join(TASKS))
    assert se.splitlines()[1] == "hint: mha demo --help describes the tasks"


@pytest.mark.parametrize("task", TASKS)
def test_task_accuracy_and_files(task, tmp_path_factory):
    out, so, se = demo(task, tmp_path_factory)
    lines = so.splitlines()
    assert lines[0].startswith(f"mha demo {task}: one attention layer")
    m = re.fullmatch(r"accuracy: ([01]\.\d{3})", lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) >= 0.99, f"{task}: held-out accuracy {m.group(1)}"
    for f in ["attention.svg", "attention.html", "layer.safetensors", "example.npy"]:
        assert (out / f).stat().st_size > 0 and f"wrote {out / f}" in so
    svg = (out / "attention.svg").read_text()
    assert f"mha demo {task}: attention of each head" in svg
    tokens, _ = example_tokens(so)
    assert all(f">{t}<" in svg for t in tokens), "the SVG is not labelled with the tokens"


@pytest.mark.parametrize("task", TASKS)
def test_loss_falls(task, tmp_path_factory):
    """Plain progress lines on stderr (not a terminal here), a sparkline on stdout."""
    _, so, se = demo(task, tmp_path_factory)
    assert "\r" not in se
    steps = [(int(a), float(b), c) for a, b, c in re.findall(
        r"^  step +(\d+)  loss (\d+\.\d+)  validation accuracy (-|\d\.\d{3})$", se, re.M)]
    assert len(steps) >= 5, se
    assert [s for s, _, _ in steps][:5] == [1, 2, 4, 8, 16]
    assert [s for s, _, _ in steps] == sorted({s for s, _, _ in steps})
    assert steps[0][2] == "-" and float(steps[-1][2]) >= 0.999
    assert steps[-1][1] < steps[0][1] / 5, se
    m = re.search(rf"^  loss (\d+\.\d+) ([{SPARK}]+) (\d+\.\d+)  \(steps 1 to (\d+), log scale",
                  so, re.M)
    assert m, so
    first, spark, last, n = float(m.group(1)), m.group(2), float(m.group(3)), int(m.group(4))
    assert last < first / 5 and spark[0] == SPARK[-1] and SPARK[0] in spark
    assert len(spark) == min(n, 48)
    assert re.search(rf"^  stopped after {n} steps", so, re.M)


def test_reverse_heads_are_positional(tmp_path_factory, tmp_path):
    out, so, _ = demo("reverse", tmp_path_factory)
    w = head_weights(out, tmp_path)
    H, L, _ = w.shape
    for h in range(H):
        for i in range(L):
            assert w[h, i, L - 1 - i] > 0.9, f"head {h} row {i}: {w[h, i]}"


def test_lookup_heads_match_contents(tmp_path_factory, tmp_path):
    """Query i looks at the other token with the same key letter, wherever it is."""
    out, so, _ = demo("lookup", tmp_path_factory)
    tokens, answers = example_tokens(so)
    w = head_weights(out, tmp_path)
    H, L, _ = w.shape
    for i, t in enumerate(tokens):
        twin = [j for j, u in enumerate(tokens) if j != i and u[0] == t[0]]
        assert len(twin) == 1 and answers[i] == tokens[twin[0]][1:]
        for h in range(H):
            assert w[h, i].argmax() == twin[0] and w[h, i, twin[0]] > 0.5, (h, i, w[h, i])
        # The demo picks an example no positional pattern explains: no twins mirrored (the
        # reversal's pattern) or side by side.
        assert twin[0] not in (L - 1 - i, i - 1, i + 1), tokens


def test_prevmax_heads_split_the_work(tmp_path_factory, tmp_path):
    """One head looks one key back, the other at the largest digit, on every answered row."""
    out, so, _ = demo("prevmax", tmp_path_factory)
    tokens, answers = example_tokens(so)
    digits = [int(t) for t in tokens]
    top = digits.index(max(digits))
    assert answers[0] == "-" and answers[1:] == [f"{d},{max(digits)}" for d in digits[:-1]]
    w = head_weights(out, tmp_path)
    H, L, _ = w.shape
    assert H == 2
    prev = [h for h in range(H) if all(w[h, i, i - 1] > 0.9 for i in range(1, L))]
    big = [h for h in range(H) if all(w[h, i, top] > 0.9 for i in range(L))]
    assert len(prev) == 1 and len(big) == 1 and prev != big, w.round(2)
    # The demo's own summary says the same.
    for h, role in [(prev[0], "the digit before"), (big[0], "the largest digit")]:
        line = re.search(rf"^  head {h}: (.*)$", so, re.M).group(1)
        share = float(re.search(rf"(\d+\.\d)% on {role}", line).group(1))
        assert share >= 90.0, line


@pytest.mark.parametrize("task", TASKS)
def test_task_gradient(task):
    rc, so, se = run("demo", "--self-check", "--task", task, "--seed", 3)
    assert rc == 0, so + se
    assert f"gradient check (task {task})" in so and "gradient check passed" in so


def test_same_seed_same_output_any_threads(tmp_path):
    """A task other than the default, whose readout runs on mha_sgemm: 1 or 2 threads, same
    bytes."""
    a = run("demo", "--task", "prevmax", "--threads", 1, "--out-dir", tmp_path / "a")
    b = run("demo", "--task", "prevmax", "--threads", 2, "--out-dir", tmp_path / "a")
    assert a[0] == 0 and b[0] == 0
    assert a[1] == b[1]


def test_default_task_and_directory(tmp_path):
    """Plain `mha demo` (what `make demo` runs) trains reverse into mha-demo/reverse."""
    rc, so, se = run("demo", "--steps", 200, cwd=tmp_path)
    assert rc == 0, se
    assert so.startswith("mha demo reverse: ")
    assert (tmp_path / "mha-demo" / "reverse" / "attention.svg").stat().st_size > 0


def test_progress_line_on_a_terminal(tmp_path):
    """On a terminal the progress is one line redrawn with \\r, ending with the time taken."""
    master, slave = pty.openpty()
    p = subprocess.Popen([mha_bin(), "demo", "--out-dir", str(tmp_path)],
                         stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert p.wait(timeout=120) == 0
    err = b"".join(chunks).decode()
    assert "\r  [" in err and re.search(r"loss \d\.\d{4}  acc \d\.\d{3}  done in", err), err
    assert "validation accuracy" not in err  # no plain lines on a terminal
