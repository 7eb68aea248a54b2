"""test_cli_explain.py - `mha explain`, end to end through the binary.

Run as `MHA_BIN=build/mha build/venv/bin/python -m pytest -q tests/test_cli_explain.py` (CTest
does it via tests/explain.cmake). The walkthrough's printed numbers are read back from its
tables and compared with PyTorch 2.13 (torch.nn.MultiheadAttention and autograd) and with
`mha forward`; its own check against the fused kernel must pass on the built-in example and on
random layers (masks, causal, cross-attention, batches, long inputs) on every kernel path this
CPU has, and must fail where float32 cannot compute the input. Usage errors exit 1, runtime
failures 2, each with one "mha: error:" line.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mha_py  # noqa: E402
from test_cli import mha_bin, need_torch, torch  # noqa: E402  (torch: None when it cannot load)

FINAL = re.compile(r"^explain: matches the fused kernel, max \|diff\| = (\S+) "
                   r"\(float32 rounding bound up to (\S+)\)$")
# The tables print 4 decimals: a value read back is within 5e-5 of the computed one.
PRINTED = 1.2e-4


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def run(*args, env=None):
    e = dict(os.environ, COLUMNS="100", NO_COLOR="1", **(env or {}))
    p = subprocess.run([mha_bin(), "explain", *map(str, args)], capture_output=True, text=True,
                       timeout=120, env=e)
    return p.returncode, p.stdout, p.stderr


def one_error(err, code):
    lines = err.splitlines()
    assert lines and lines[0].startswith("mha: error: "), err
    assert len(lines) == 1 or (code == 1 and len(lines) == 2 and lines[1].startswith("hint: ")), err
    return lines[0]


def isas():
    """The kernel paths this CPU runs (the check must hold on each)."""
    out = subprocess.run([mha_bin(), "info"], capture_output=True, text=True).stdout
    paths = re.findall(r"(\w+) \(supported\)", re.search(r"^paths: .*$", out, re.M).group(0))
    assert "generic" in paths, out
    return paths


def final_diff(out):
    """The last line, which must be the check; returns its max |diff|."""
    last = out.rstrip("\n").splitlines()[-1]
    m = FINAL.match(last)
    assert m, f"last line is not the check: {last!r}"
    diff, bound = float(m.group(1)), float(m.group(2))
    assert 0 <= diff <= bound, last
    return diff


def tables(out):
    """Every table the walkthrough printed: {title: [array, ...]} (a title may repeat, e.g. in
    the tiles). A table is a line "  TITLE  [R, C]", a header line, then min(R, 8) rows whose
    last min(C, shown) fields are the numbers."""
    found = {}
    lines = out.splitlines()
    head = re.compile(r"^  (\S.*?)  \[(\d+), (\d+)\]$")
    for i, line in enumerate(lines):
        m = head.match(line)
        if not m:
            continue
        title, rows, cols = m.group(1), int(m.group(2)), int(m.group(3))
        ncols = len(lines[i + 1].split()) if cols > 1 else 1
        ncols = min(cols, ncols)
        data = []
        for row in lines[i + 2:i + 2 + min(rows, 8)]:
            data.append([float(v) for v in row.split()[-ncols:]])
        found.setdefault(title, []).append(np.array(data))
    return found


def table(out, title):
    t = tables(out)
    assert title in t, f"no table {title!r}; tables: {sorted(t)}"
    return t[title][0]


def sections(out):
    return re.findall(r"^== (\d+)\. ", out, re.M)


# ------------------------------------------------------------------------------------------
# the built-in example
# ------------------------------------------------------------------------------------------
def test_builtin_example_walks_every_step_and_matches_the_fused_kernel():
    code, out, err = run()
    assert code == 0, err
    assert sections(out) == [str(n) for n in range(1, 11)]
    for word in ("shape", "formula", "why"):
        assert len(re.findall(rf"^{word} ", out, re.M)) == 10, word
    diff = final_diff(out)
    assert diff < 1e-6
    # the example is the same on every run (fixed seeds)
    assert run()[1] == out


def test_builtin_numbers_follow_the_formulas():
    """Each step's printed numbers are what its formula gives from the printed numbers before
    it (read back at 4 decimals)."""
    code, out, err = run("--causal")
    assert code == 0, err
    scale = 0.5  # 1 / sqrt(d), d = 8 / 2
    q, k, v = table(out, "Q"), table(out, "K"), table(out, "V")
    o_cat = table(out, "O")
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        qh, kh, vh = (table(out, f"{m} (head {h})") for m in "QKV")
        np.testing.assert_allclose(qh, q[:, cols], atol=0)  # a reshape: the same numbers
        np.testing.assert_allclose(vh, v[:, cols], atol=0)
        raw = table(out, f"Q K^T (head {h})")
        np.testing.assert_allclose(raw, qh @ kh.T, atol=8 * PRINTED)
        scaled = table(out, f"scaled scores (head {h})")
        np.testing.assert_allclose(scaled, raw * scale, atol=PRINTED)
        masked = table(out, f"masked scores (head {h})")
        upper = np.triu(np.ones((6, 6), bool), 1)
        assert np.all(np.isneginf(masked[upper])) and np.all(np.isfinite(masked[~upper]))
        np.testing.assert_allclose(masked[~upper], scaled[~upper], atol=0)
        p = table(out, f"P (head {h})")
        e = np.where(upper, 0, np.exp(np.where(upper, 0, masked) - masked.max(1, keepdims=True)))
        np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), atol=4 * PRINTED)
        oh = table(out, f"O (head {h})")
        np.testing.assert_allclose(oh, p @ vh, atol=4 * PRINTED)
        np.testing.assert_allclose(o_cat[:, cols], oh, atol=0)
    final_diff(out)


def test_rows_are_labelled_by_the_example_tokens():
    code, out, err = run("--step", "1")
    assert code == 0, err
    lines = out.splitlines()
    at = lines.index("  x  [6, 8]")
    assert [line.split()[0] for line in lines[at + 2:at + 8]] == \
        ["the", "cat", "sat", "on", "the", "mat"], out


# ------------------------------------------------------------------------------------------
# random layers against PyTorch, on every kernel path
# ------------------------------------------------------------------------------------------
CASES = {
    # name: (E, H, L, S, batch, cross (kdim, vdim) or None, bias, masks)
    "self": (8, 2, 5, 5, 0, None, True, {}),
    "causal": (8, 4, 7, 7, 0, None, True, {"causal": True}),
    "bottom-right-cross": (8, 2, 3, 6, 0, (8, 8), False, {"causal_bottom_right": True}),
    "kdim-vdim-padding": (6, 3, 4, 6, 2, (5, 3), True, {"kpm": True}),
    "bool-mask-dead-row": (8, 2, 5, 5, 0, None, True, {"bool": True}),
    "float-mask-batched": (8, 2, 4, 4, 2, None, True, {"float": True}),
    "long": (24, 3, 20, 20, 0, None, True, {"causal": True}),
    "many-keys": (8, 2, 4, 300, 0, (8, 8), True, {}),
}


def make_case(tmp_path, name, seed=0):
    """Saves a random nn.MultiheadAttention layer and its inputs; returns (args, layer, inputs,
    the masks as torch tensors)."""
    E, H, L, S, B, cross, bias, masks = CASES[name]
    g = torch.Generator().manual_seed(seed)
    kdim, vdim = cross if cross else (E, E)
    layer = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    mha_py.save_safetensors(tmp_path / "w.safetensors",
                            {k: v.detach().numpy() for k, v in layer.state_dict().items()})
    lead = (B,) if B else ()
    x = torch.randn(*lead, L, E, generator=g)
    args = ["--weights", tmp_path / "w.safetensors", "--heads", H, "--query", tmp_path / "x.npy"]
    np.save(tmp_path / "x.npy", x.numpy())
    key = value = x
    if cross:
        key = torch.randn(*lead, S, kdim, generator=g)
        value = torch.randn(*lead, S, vdim, generator=g)
        np.save(tmp_path / "k.npy", key.numpy())
        np.save(tmp_path / "v.npy", value.numpy())
        args += ["--key", tmp_path / "k.npy", "--value", tmp_path / "v.npy"]
    kw = {}
    if masks.get("causal"):
        args.append("--causal")
        kw["attn_mask"], kw["is_causal"] = torch.triu(torch.ones(L, S, dtype=torch.bool), 1), True
    if masks.get("causal_bottom_right"):
        args.append("--causal-bottom-right")
        kw["attn_mask"] = torch.triu(torch.ones(L, S, dtype=torch.bool), 1 + S - L)
    if masks.get("kpm"):
        kpm = torch.zeros(*lead, S, dtype=torch.bool)
        kpm[..., -2:] = True
        np.save(tmp_path / "kpm.npy", kpm.numpy())
        args += ["--key-padding-mask", tmp_path / "kpm.npy"]
        kw["key_padding_mask"] = kpm
    if masks.get("bool"):
        am = torch.rand(L, S, generator=g) < 0.4
        am[2, :] = True  # a row with every key masked: weights and output 0 (mha's rule)
        np.save(tmp_path / "am.npy", am.numpy())
        args += ["--attn-mask", tmp_path / "am.npy"]
        kw["attn_mask"] = am
    if masks.get("float"):
        am = torch.randn(B * H, L, S, generator=g)
        np.save(tmp_path / "am.npy", am.numpy())
        args += ["--attn-mask", tmp_path / "am.npy"]
        kw["attn_mask"] = am
    return args, layer, (x, key, value), kw


def torch_forward(layer, inputs, kw):
    """Output and per-head weights as mha computes them (a fully masked row: 0)."""
    x, key, value = inputs
    layer.train()  # need_weights=False path of 2.13: SDPA, 0 on a fully masked row
    y = layer(x, key, value, need_weights=False, **kw)[0]
    layer.eval()
    kw2 = {k: v for k, v in kw.items() if k != "is_causal"}
    w = layer(x, key, value, need_weights=True, average_attn_weights=False, **kw2)[1]
    return y, torch.nan_to_num(w, nan=0.0)


@pytest.mark.parametrize("name", list(CASES))
def test_random_layer_matches_torch_and_the_fused_kernel(tmp_path, name):
    need_torch()
    args, layer, inputs, kw = make_case(tmp_path, name)
    y, w = torch_forward(layer, inputs, kw)
    y, w = y.detach().numpy(), w.detach().numpy()
    batched = y.ndim == 3
    y0, w0 = (y[0], w[0]) if batched else (y, w)
    L, E = y0.shape
    for isa in isas():
        code, out, err = run(*args, "--isa", isa)
        assert code == 0, f"{isa}: {err}"
        final_diff(out)
        win = (slice(0, min(L, 8)), slice(0, min(E, 8)))
        np.testing.assert_allclose(table(out, "y"), y0[win], atol=PRINTED, err_msg=isa)
        for h in range(min(layer.num_heads, 2)):
            S = w0.shape[-1]
            np.testing.assert_allclose(table(out, f"P (head {h})"),
                                       w0[h][:min(L, 8), :min(S, 8)], atol=PRINTED, err_msg=isa)
    if L > 8:  # a long input: a window, said so, and every head's weights as heatmaps
        assert "(showing 8 of 20 rows and 8 of 24 columns)" in out
        assert "every head's weights (batch 0) as heatmaps:" in out
        assert re.search("head 2", out)
    # `mha forward` writes the same output
    fwd = subprocess.run([mha_bin(), "forward", *map(str, args), "--out", tmp_path / "y.npy"],
                         capture_output=True, text=True)
    assert fwd.returncode == 0, fwd.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), y, atol=2e-5)


@pytest.mark.parametrize("name", ["self", "causal", "kdim-vdim-padding", "float-mask-batched"])
def test_backward_matches_torch_autograd(tmp_path, name):
    need_torch()
    args, layer, inputs, kw = make_case(tmp_path, name, seed=1)
    x, key, value = [t.clone().requires_grad_(True) for t in inputs]
    cross = CASES[name][5] is not None
    if not cross:
        key = value = x
    layer.train()
    y = layer(x, key, value, need_weights=False, **kw)[0]
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "dy.npy", dy.numpy())
    y.backward(dy)
    for isa in isas():
        code, out, err = run(*args, "--backward", "--grad-out", tmp_path / "dy.npy", "--isa", isa)
        assert code == 0, f"{isa}: {err}"
        assert sections(out) == [str(n) for n in range(1, 19)]
        lines = out.rstrip("\n").splitlines()
        assert lines[-2].startswith("explain: gradients match the fused backward, max |diff| = ")
        final_diff(out)
        b0 = (lambda t: t[0]) if x.ndim == 3 else (lambda t: t)
        win = lambda a: a[:8, :8]  # noqa: E731
        np.testing.assert_allclose(table(out, "dy"), win(b0(dy.numpy())), atol=PRINTED)
        dx_name = "dquery" if cross else "dx"
        np.testing.assert_allclose(table(out, dx_name), win(b0(x.grad.numpy())), atol=PRINTED)
        if cross:
            np.testing.assert_allclose(table(out, "dvalue"), win(b0(value.grad.numpy())),
                                       atol=PRINTED)
        E = layer.embed_dim
        if layer.in_proj_weight is not None:
            g = layer.in_proj_weight.grad.numpy()
            dwq, dwk, dwv = g[:E], g[E:2 * E], g[2 * E:]
        else:
            dwq, dwk, dwv = (layer.q_proj_weight.grad.numpy(), layer.k_proj_weight.grad.numpy(),
                             layer.v_proj_weight.grad.numpy())
        for title, ref in (("dWq", dwq), ("dWk", dwk), ("dWv", dwv),
                           ("dWo (out_proj.weight)", layer.out_proj.weight.grad.numpy())):
            got = table(out, title)
            np.testing.assert_allclose(got, win(ref), atol=PRINTED * max(1, np.abs(ref).max()),
                                       err_msg=title)


def test_long_input_shows_a_window_and_checks_everything(tmp_path):
    need_torch()
    args, layer, inputs, kw = make_case(tmp_path, "long")
    code, out, err = run(*args, "--step", "1")
    assert code == 0, err
    assert "showing batch 0 of 1 and at most the first 8 tokens" in out
    assert "(showing 8 of 20 rows and 8 of 24 columns)" in out
    final_diff(out)


# ------------------------------------------------------------------------------------------
# --step, --tiles, --tokens
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("step", [1, 6, 7, 10])
def test_step_shows_one_step_and_still_checks(step):
    code, out, err = run("--step", step, "--causal")
    assert code == 0, err
    assert sections(out) == [str(step)]
    final_diff(out)


def test_backward_step():
    code, out, err = run("--backward", "--step", 15)
    assert code == 0, err
    assert sections(out) == ["15"]
    assert "dS_h[i, j] = P_h[i, j] (dP_h[i, j] - D_i)" in out
    final_diff(out)


def test_tiles_end_with_the_steps_output():
    code, out, err = run("--tiles", "--causal")
    assert code == 0, err
    t = tables(out)
    visits = [k for k in t if k.startswith("tile keys")]
    assert visits == ["tile keys 0-1 (the, cat)", "tile keys 2-3 (sat, on)",
                      "tile keys 4-5 (the, mat)"]
    # causal: block 0 sees tile 0 only, block 1 tiles 0-1, block 2 all three
    assert [len(t[k]) for k in visits] == [3, 2, 1]
    assert out.count("every key is masked for these rows: skipped") == 3
    # the running max never decreases, and the rescale is exp(m_old - m_new)
    for k in visits:
        for a in t[k]:
            s_cols = a.shape[1] - 8  # s.., m_old, m_new, rescale, l, acc0..acc3
            m_old, m_new, rescale = a[:, s_cols], a[:, s_cols + 1], a[:, s_cols + 2]
            assert np.all(m_new >= m_old)
            np.testing.assert_allclose(rescale, np.exp(m_old - m_new), atol=PRINTED)
    o_tiles = np.vstack([a[:, :4] for k, v in t.items() if "done: O = acc / l" in k for a in v])
    code, steps, err = run("--causal", "--step", 8)
    np.testing.assert_allclose(o_tiles, table(steps, "O (head 0)"), atol=PRINTED)
    lines = out.rstrip("\n").splitlines()
    assert lines[-2].startswith("explain: the tiles match the fused attention core, max |diff| = ")
    final_diff(out)


def test_tile_captions_stay_utf8_and_closed(tmp_path):
    # labels are cut to 12 characters, not bytes (a cut inside a Cyrillic letter wrote invalid
    # UTF-8, which run()'s decoding refuses), and a list that does not fit the caption ends
    # with ", ...)" (it was cut mid-token, its parenthesis left open)
    need_torch()
    args, _, _, _ = make_case(tmp_path, "many-keys")  # 4 queries, 300 keys: tiles of 38
    qt = [f"q{'ключ' * 3}{i}" for i in range(4)]
    kt = [f"k{'ключ' * 3}{i}" for i in range(300)]
    for name, toks in (("q.txt", qt), ("k.txt", kt)):
        (tmp_path / name).write_text("\n".join(toks) + "\n", encoding="utf-8")
    code, out, err = run(*args, "--tokens", tmp_path / "q.txt", "--key-tokens",
                         tmp_path / "k.txt", "--tiles")
    assert code == 0, err
    captions = re.findall(r"^  tile keys \d+-\d+ \((.*)\) \(the scores", out, re.M)
    assert len(captions) == 2 * 8, out  # 2 query blocks of 2 rows, 8 tiles each
    for c in captions:
        *shown, end = c.split(", ")
        assert end == "..." and shown and all(t in {x[:12] for x in kt} for t in shown), c
    rows = re.findall(r"query block rows \d+-\d+ \((.*?)\):", out)
    assert rows and all(t in {x[:12] for x in qt} for r in rows for t in r.split(", ")), rows


def test_tiles_of_many_keys_show_their_first_scores(tmp_path):
    # 300 keys: 8 tiles of 38, more scores than a trace table has columns (it failed with
    # "heatmap: unknown failure"): each table shows the tile's first 32 scores, then m_old,
    # m_new, rescale, l and acc0..acc3 (head dim 4), and the checks run as for a short input
    need_torch()
    args, _, _, _ = make_case(tmp_path, "many-keys")
    code, out, err = run(*args, "--tiles")
    assert code == 0, err
    t = tables(out)
    visits = [k for k in t if k.startswith("tile keys")]
    assert visits[0] == "tile keys 0-37 (the scores of its first 32 keys shown)"
    assert visits[-1] == "tile keys 266-299 (the scores of its first 32 keys shown)"
    assert len(visits) == 8
    assert all(a.shape[1] == 32 + 8 for k in visits for a in t[k])
    lines = out.rstrip("\n").splitlines()
    assert lines[-2].startswith("explain: the tiles match the fused attention core, max |diff| = ")
    final_diff(out)


def test_tokens_label_a_users_layer(tmp_path):
    need_torch()
    args, _, _, _ = make_case(tmp_path, "self")
    (tmp_path / "t.txt").write_text("a\nb\nc\nd\ne\n")
    code, out, err = run(*args, "--tokens", tmp_path / "t.txt", "--step", 7)
    assert code == 0, err
    assert re.search(r"^\s+a\s+b\s+c\s+d\s+e$", out, re.M), out
    code, out, err = run(*args, "--tokens", tmp_path / "t.txt", "--key-tokens", tmp_path / "t.txt")
    assert code == 1 and "--key-tokens needs --key and --value" in one_error(err, 1)
    (tmp_path / "t.txt").write_text("a\nb\n")
    code, out, err = run(*args, "--tokens", tmp_path / "t.txt")
    assert code == 2 and "has 2 lines, expected 5" in one_error(err, 2)


# ------------------------------------------------------------------------------------------
# --html: all or nothing
# ------------------------------------------------------------------------------------------
def test_html_is_written_whole_and_the_terminal_gets_the_checks(tmp_path):
    page = tmp_path / "page.html"
    page.write_text("old")
    code, out, err = run("--backward", "--html", page)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"explain: wrote {page}" and len(lines) == 3, out
    final_diff(out)
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert [f'id="step-{n}"' in html for n in range(1, 19)] == [True] * 18
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".mha-")]


def test_html_to_a_directory_fails_before_computing(tmp_path):
    code, out, err = run("--html", tmp_path)
    assert code == 2 and "--html" in one_error(err, 2) and out == ""


# ------------------------------------------------------------------------------------------
# the check fails where float32 cannot compute the input
# ------------------------------------------------------------------------------------------
def test_check_fails_when_float32_overflows(tmp_path):
    r = np.random.default_rng(0)
    E = 8
    mha_py.save_safetensors(tmp_path / "w.safetensors", {
        "in_proj_weight": (r.standard_normal((3 * E, E)) * 0.3).astype(np.float32),
        "out_proj.weight": (r.standard_normal((E, E)) * 0.3).astype(np.float32)})
    np.save(tmp_path / "x.npy", (r.standard_normal((5, E)) * 1e20).astype(np.float32))
    page = tmp_path / "page.html"
    code, out, err = run("--weights", tmp_path / "w.safetensors", "--heads", 2, "--query",
                         tmp_path / "x.npy", "--html", page)
    msg = one_error(err, 2)
    assert code == 2 and "float32 cannot compute this input" in msg and "y[0, " in msg, msg
    assert not page.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".mha-")]
    code, out, err = run("--weights", tmp_path / "w.safetensors", "--heads", 2, "--query",
                         tmp_path / "x.npy")
    assert code == 2 and "matches the fused kernel" not in out and "== 10. " in out


@pytest.mark.parametrize("scale", ["1e3", "1e10"])
def test_large_scales_pass_with_a_bound_that_means_something(scale):
    # one-hot softmax rows: float32 agrees to a few ulps, and the bound must say so (it was
    # 0.04 at 1e3, and infinite at 1e10 with "values exceed float32's range")
    code, out, err = run("--scale", scale)
    assert code == 0 and err == "", err
    last = out.rstrip("\n").splitlines()[-1]
    final_diff(out)
    assert float(FINAL.match(last).group(2)) < 1e-4, last


def test_overflowing_scores_name_the_step():
    code, out, err = run("--scale", "3e38")
    msg = one_error(err, 2)
    assert code == 2 and "float32 cannot compute this input: scaled scores reach" in msg, msg


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle,hint", [
    (["--step", "0"], "--step: got 0, expected 1 to 10", None),
    (["--step", "12"], "--step: got 12, expected 1 to 10", "add --backward"),
    (["--backward", "--step", "19"], "--step: got 19, expected 1 to 18", None),
    (["--tiles", "--backward"], "--tiles and --backward exclude each other", None),
    (["--tiles", "--step", "3"], "--tiles and --step exclude each other", None),
    (["--grad-out", "dy.npy"], "--grad-out needs --backward", None),
    (["--query", "x.npy"], "--query needs --weights", "built-in example"),
    (["--attn-mask", "a.npy"], "--attn-mask needs --weights", "built-in example"),
    (["--tokens", "t.txt"], "--tokens needs --weights", "built-in example"),
    (["--weights", "w.safetensors"], "--query is required", None),
    (["--causal", "--causal-bottom-right"], "exclude each other", None),
    (["--step", "x"], "is not a whole number", None),
    (["--bogus"], "unknown option", None),
])
def test_usage_errors(args, needle, hint):
    code, out, err = run(*args)
    assert code == 1 and out == "", err
    assert needle in one_error(err, 1)
    if hint:
        assert hint in err.splitlines()[1]


def test_dtype_is_refused(tmp_path):
    """The walkthrough and its bounds are float32's: a layer run in bf16 or f16 is refused."""
    need_torch()
    args, _, _, _ = make_case(tmp_path, "self")
    code, out, err = run(*args, "--dtype", "bf16")
    assert code == 1 and out == "" and "--dtype" in one_error(err, 1)
    code, out, err = run("--dtype", "f16")  # the built-in example too
    assert code == 1 and out == "" and "--dtype: got f16, expected f32" in one_error(err, 1)
    code, out, err = run("--dtype", "f32")
    assert code == 0 and "explain: matches the fused kernel" in out


def test_runtime_errors(tmp_path):
    need_torch()
    args, _, _, _ = make_case(tmp_path, "self")
    np.save(tmp_path / "dy.npy", np.zeros((4, 8), np.float32))
    code, out, err = run(*args, "--backward", "--grad-out", tmp_path / "dy.npy")
    assert code == 2 and "--grad-out: shape [4, 8], expected [5, 8]" in one_error(err, 2)
    code, out, err = run(*args[:-1], tmp_path / "missing.npy")
    assert code == 2 and "--query" in one_error(err, 2)
    np.save(tmp_path / "big.npy", np.zeros((1, 3000, 8), np.float32))
    code, out, err = run(*args[:-1], tmp_path / "big.npy")
    assert code == 2 and "use a shorter input" in one_error(err, 2)


def test_help_and_command_list():
    p = subprocess.run([mha_bin(), "explain", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--tiles" in p.stdout and "--html FILE" in p.stdout
    p = subprocess.run([mha_bin(), "--help"], capture_output=True, text=True)
    assert re.search(r"^  explain ", p.stdout, re.M)
    p = subprocess.run([mha_bin()], capture_output=True, text=True)
    assert p.returncode == 1 and "explain" in p.stderr
