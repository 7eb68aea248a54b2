"""test_docs_formulas.py - the formulas and numbers of docs/attention.md, checked against mha
(tests/docs.cmake).

Each test takes a claim of the page, computes it the way the page says in float64 NumPy, and
compares with what mha computes: the score definition (scale, softcap, ALiBi, masks and their
bottom-right alignment), the dropout scaling, the backward formulas, the online softmax's
worked example (its table is read from the page), the hand-made layer's weights (read from the
committed pictures), and the pictures' stand-ins for the window and ALiBi.
"""
import math
import os
import re
import sys

import numpy as np
import pytest
import torch

import mha

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
sys.path.insert(0, DOCS)
import picture_inputs  # noqa: E402  (docs/picture_inputs.py: the pictures' layer and masks)

RTOL, ATOL = 2e-5, 2e-6


def page():
    with open(os.path.join(DOCS, "attention.md"), encoding="utf-8") as f:
        return f.read()


def softmax_rows(s):
    """The page's section 5: exp(s - m) / l per row; a row with no finite score gives 0."""
    m = np.max(s, axis=-1, keepdims=True)
    e = np.where(np.isfinite(s), np.exp(s - np.where(np.isfinite(m), m, 0)), 0.0)
    l = e.sum(-1, keepdims=True)
    return np.divide(e, l, out=np.zeros_like(e), where=l > 0), l


def scores(q, k, L, S, scale, softcap=0.0, slopes=None, window=None, causal=None):
    """The page's score definition for q [H, L, D], k [H, S, D] (float64): scale, softcap,
    ALiBi from i + (S - L), then the exclusions (-inf)."""
    s = scale * np.einsum("hld,hsd->hls", q, k)
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    i = np.arange(L)[:, None] + (S - L)  # bottom-right: the query's position among the keys
    j = np.arange(S)[None, :]
    if slopes is not None:
        s = s - np.asarray(slopes, np.float64)[:, None, None] * np.abs(i - j)
    allowed = np.ones((L, S), bool)
    if window is not None:
        allowed &= (j >= i - window[0]) & (j <= i + window[1])
    if causal == "top_left":
        allowed &= j <= np.arange(L)[:, None]
    if causal == "bottom_right":
        allowed &= j <= i
    return np.where(allowed, s, -np.inf)


def rand(*shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def flash(q, k, v, **kw):
    """mha.flash_attn_func on [H, L, D] arrays (batch 1): out [H, L, Dv], lse, probs."""
    t = [torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)[None])) for x in (q, k, v)]
    out, lse, probs = mha.flash_attn_func(*t, return_attn_probs=True, **kw)
    return out[0].transpose(0, 1).numpy(), lse[0].numpy(), probs[0].numpy()


@pytest.mark.parametrize("L,S", [(5, 9), (9, 9)])
def test_score_definition_softcap_alibi_window_bottom_right(L, S):
    H, D = 2, 8
    q, k, v = rand(H, L, D, seed=1) * 3, rand(H, S, D, seed=2) * 3, rand(H, S, D, seed=3)
    slopes = [0.5, 0.125]
    for kw, ref in [
        (dict(softcap=2.0), dict(softcap=2.0)),
        (dict(alibi_slopes=torch.tensor(slopes)), dict(slopes=slopes)),
        (dict(window_size=(2, 1)), dict(window=(2, 1))),
        (dict(causal=True), dict(causal="bottom_right")),
        (dict(softcap=2.0, alibi_slopes=torch.tensor(slopes), window_size=(3, 0), causal=True),
         dict(softcap=2.0, slopes=slopes, window=(3, 0), causal="bottom_right")),
    ]:
        out, lse, probs = flash(q, k, v, **kw)
        s = scores(q.astype(np.float64), k.astype(np.float64), L, S, 1 / math.sqrt(D), **ref)
        p, l = softmax_rows(s)
        np.testing.assert_allclose(probs, p, rtol=RTOL, atol=ATOL, err_msg=str(kw))
        np.testing.assert_allclose(out, p @ v, rtol=1e-4, atol=1e-5, err_msg=str(kw))
        m = s.max(-1)
        np.testing.assert_allclose(lse, m + np.log(l[..., 0]), rtol=RTOL, err_msg=str(kw))


def test_causal_top_left_and_a_fully_masked_row():
    H, L, S, D = 1, 4, 7, 8
    q, k, v = rand(1, H, L, D, seed=4), rand(1, H, S, D, seed=5), rand(1, H, S, D, seed=6)
    mask = np.zeros((L, S), bool)
    mask[2, :] = True  # every key of row 2 excluded
    out, lse = mha.attention(q, k, v, mask=mask, causal=True, return_lse=True)
    s = scores(q[0].astype(np.float64), k[0].astype(np.float64), L, S, 1 / math.sqrt(D),
               causal="top_left")
    s[:, 2, :] = -np.inf
    p, _ = softmax_rows(s)
    np.testing.assert_allclose(out[0], p @ v[0], rtol=1e-4, atol=1e-5)
    assert np.all(out[0, :, 2] == 0) and np.all(lse[0, :, 2] == -np.inf)


def test_dropout_scales_the_kept_weights_by_one_over_one_minus_p():
    H, L, S, D, p = 2, 16, 24, 8, 0.25
    q, k, v = rand(H, L, D, seed=7), rand(H, S, D, seed=8), rand(H, S, D, seed=9)
    torch.manual_seed(0)
    out, _, w = flash(q, k, v, dropout_p=p)
    _, _, probs = flash(q, k, v)
    kept = w != 0
    assert 0.6 < kept.mean() < 0.9  # about 1 - p kept
    np.testing.assert_allclose(w[kept], probs[kept] / (1 - p), rtol=1e-5)
    np.testing.assert_allclose(out, np.einsum("hls,hsd->hld", w, v), rtol=1e-4, atol=1e-5)


def test_backward_formulas():
    """dV = W^T dO, D_i = dO_i . O_i = sum_j P_ij dP_ij, dS = P (dP - D), dQ = scale dS K,
    dK = scale dS^T Q (section 8), against mha's fused backward, with a causal mask."""
    B, H, L, S, D = 1, 2, 11, 13, 8
    q, k, v = rand(B, H, L, D, seed=10), rand(B, H, S, D, seed=11), rand(B, H, S, D, seed=12)
    do = rand(B, H, L, D, seed=13)
    scale = 0.3
    out, lse = mha.attention(q, k, v, causal="bottom_right", scale=scale, return_lse=True)
    dq, dk, dv = mha.attention_backward(q, k, v, out, lse, do, causal="bottom_right",
                                        scale=scale)
    Q, K, V, dO = (x[0].astype(np.float64) for x in (q, k, v, do))
    P, _ = softmax_rows(scores(Q, K, L, S, scale, causal="bottom_right"))
    O = P @ V
    dV = np.swapaxes(P, 1, 2) @ dO
    dP = dO @ np.swapaxes(V, 1, 2)
    Drow = (dO * O).sum(-1, keepdims=True)
    np.testing.assert_allclose(Drow, (P * dP).sum(-1, keepdims=True), rtol=1e-10, atol=1e-12)
    dS = P * (dP - Drow)
    dQ, dK = scale * dS @ K, scale * np.swapaxes(dS, 1, 2) @ Q
    for got, want in ((dq, dQ), (dk, dK), (dv, dV)):
        np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
    # P = exp(s - lse): the saved log-sum-exp brings back every weight (section 5)
    s = scores(Q, K, L, S, scale, causal="bottom_right")
    np.testing.assert_allclose(np.exp(s - lse[0][..., None].astype(np.float64)), P,
                               rtol=1e-5, atol=1e-7)


def test_softcap_backward_multiplies_by_one_minus_tanh_squared():
    H, L, S, D, cap = 2, 6, 6, 8, 1.5
    q, k, v = rand(H, L, D, seed=14) * 2, rand(H, S, D, seed=15) * 2, rand(H, S, D, seed=16)
    do = rand(H, L, D, seed=17)
    tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2)[None]))
                  .requires_grad_() for x in (q, k, v))
    out = mha.flash_attn_func(tq, tk, tv, softcap=cap)
    out.backward(torch.from_numpy(np.ascontiguousarray(do.transpose(1, 0, 2)[None])))
    scale = 1 / math.sqrt(D)
    Q, K, V, dO = (x.astype(np.float64) for x in (q, k, v, do))
    r = scale * Q @ np.swapaxes(K, 1, 2)
    P, _ = softmax_rows(cap * np.tanh(r / cap))
    dP = dO @ np.swapaxes(V, 1, 2)
    dS = P * (dP - (dO * (P @ V)).sum(-1, keepdims=True)) * (1 - np.tanh(r / cap) ** 2)
    np.testing.assert_allclose(tq.grad[0].transpose(0, 1).numpy(), scale * dS @ K,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tk.grad[0].transpose(0, 1).numpy(),
                               scale * np.swapaxes(dS, 1, 2) @ Q, rtol=1e-4, atol=1e-5)


def worked_example():
    """The rows of the table under "A worked example" and the values v, from the page."""
    text = page().split("### A worked example", 1)[1].split("###", 1)[0]
    values = [float(x) for x in re.split(r"[,|]", re.search(r"values `v = \(([^)]*)\)`",
                                                           text).group(1))]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows.append([[float(x) for x in c.split(",")] for c in cells])
    return text, values, rows


def test_the_worked_example_of_the_online_softmax():
    text, values, rows = worked_example()
    assert len(rows) == 2 and len(values) == 4
    m, l, acc, scores_all = -math.inf, 0.0, 0.0, []
    for t, (tile, s, m_new, alpha, p, l_doc, acc_doc) in enumerate(rows):
        v = values[2 * t: 2 * t + 2]
        scores_all += s
        mn = max(m, max(s))
        a = math.exp(m - mn) if m != -math.inf else 0.0
        pv = [math.exp(x - mn) for x in s]
        l = a * l + sum(pv)
        acc = a * acc + sum(pj * vj for pj, vj in zip(pv, v))
        m = mn
        for doc, want in ((m_new, [mn]), (alpha, [a]), (p, pv), (l_doc, [l]), (acc_doc, [acc])):
            np.testing.assert_allclose(doc, want, atol=6e-5, err_msg=f"tile {tile}")
    o_doc = float(re.search(r"`o = [\d.]+ / [\d.]+ = ([\d.]+)`", text).group(1))
    lse_doc = float(re.search(r"`lse = 5 \+ log\([\d.]+\) = ([\d.]+)`", text).group(1))
    np.testing.assert_allclose([acc / l, m + math.log(l)], [o_doc, lse_doc], atol=6e-5)
    # the same row through mha: D = 1, q = 1, scale 1, so the scores are the keys
    q = np.ones((1, 1, 1, 1), np.float32)
    k = np.array(scores_all, np.float32).reshape(1, 1, 4, 1)
    v = np.array(values, np.float32).reshape(1, 1, 4, 1)
    out, lse = mha.attention(q, k, v, scale=1.0, return_lse=True)
    np.testing.assert_allclose([out.item(), lse.item()], [o_doc, lse_doc], atol=6e-5)


def tooltip(svg, head, query, key):
    """The weight in a picture's tooltip of head (panel), query row and key column."""
    panel = svg.split(f'id="panel-{head}"', 1)[1].split('id="panel-', 1)[0]
    m = re.search(rf'<title>query {query} "[^"]*" → key {key} "[^"]*": ([\d.]+)</title>', panel)
    return float(m.group(1))


def test_the_hand_made_layer_weights_in_the_page_and_its_picture():
    text = page()
    with open(os.path.join(DOCS, "img", "heads.svg"), encoding="utf-8") as f:
        svg = f.read()
    e6 = math.exp(6)
    one = float(re.search(r"`e\^6 / \(e\^6 \+ 7\) = ([\d.]+)`", text).group(1))
    two = float(re.search(r"`e\^6 / \(2 e\^6 \+ 6\) = ([\d.]+)`", text).group(1))
    flat = float(re.search(r"`1/8 = ([\d.]+)`", text).group(1))
    np.testing.assert_allclose([one, two, flat], [e6 / (e6 + 7), e6 / (2 * e6 + 6), 1 / 8],
                               atol=6e-5)
    assert tooltip(svg, 0, 1, 0) == pytest.approx(one, abs=1e-4)  # "cat" -> "the"
    assert tooltip(svg, 0, 0, 5) == pytest.approx(flat, abs=1e-4)  # "the" has no token before
    assert tooltip(svg, 1, 4, 0) == pytest.approx(two, abs=1e-4)  # "the" -> both "the"
    assert tooltip(svg, 1, 4, 4) == pytest.approx(two, abs=1e-4)
    assert tooltip(svg, 1, 2, 2) == pytest.approx(one, abs=1e-4)  # "sat" -> itself


def test_window_and_alibi_pictures_stand_for_the_real_options():
    """The window and ALiBi pictures pass their masks as a bool / float mask (mha viz has no
    such options): mha's window and ALiBi give the same weights."""
    H, L, D = 2, 8, 8
    q, k, v = rand(H, L, D, seed=18), rand(H, L, D, seed=19), rand(H, L, D, seed=20)
    _, _, w_window = flash(q, k, v, window_size=(2, 0))
    _, _, w_alibi = flash(q, k, v, alibi_slopes=torch.tensor([1.0, 0.25]))
    Q, K = q.astype(np.float64), k.astype(np.float64)
    s = 1 / math.sqrt(D) * Q @ np.swapaxes(K, 1, 2)
    p_bool, _ = softmax_rows(np.where(picture_inputs.window_mask(L, L, 2, 0), -np.inf, s))
    p_float, _ = softmax_rows(s + picture_inputs.alibi_mask(L, L, [1.0, 0.25]))
    np.testing.assert_allclose(w_window, p_bool, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(w_alibi, p_float, rtol=RTOL, atol=ATOL)


def test_the_tile_map_skips_what_the_page_says():
    m = picture_inputs.tile_map(32, 32)
    R, C = picture_inputs.TILE_R, picture_inputs.TILE_C
    tiles = m.reshape(32 // R, R, 32 // C, C).swapaxes(1, 2)
    skipped = int((tiles == 0).all(axis=(2, 3)).sum())
    claim = re.search(r"skipped: (\d+) of the (\d+) tiles here", page())
    assert (skipped, tiles.shape[0] * tiles.shape[1]) == (int(claim.group(1)),
                                                         int(claim.group(2)))
    assert np.array_equal(m == 1, np.tril(np.ones((32, 32), bool)))  # yellow: j <= i


def test_the_window_and_alibi_pictures_show_the_mask_alone():
    """Drawn with every score 0: the window spreads each row evenly over its keys (1, 1/2,
    1/3, ...), ALiBi gives key j of row i a weight proportional to e^(-slope |i - j|)."""
    with open(os.path.join(DOCS, "img", "window.svg"), encoding="utf-8") as f:
        window = f.read()
    with open(os.path.join(DOCS, "img", "alibi.svg"), encoding="utf-8") as f:
        alibi = f.read()
    assert "(1, then 1/2, then 1/3 per row)" in page()
    for h in (0, 1):
        for i in range(8):
            for j in range(8):
                allowed = i - 2 <= j <= i
                want = 1 / min(i + 1, 3) if allowed else 0.0
                assert tooltip(window, h, i, j) == pytest.approx(want, abs=1e-4), (h, i, j)
    for h, slope in enumerate([1.0, 0.25]):
        for i in range(8):
            e = np.exp(-slope * np.abs(i - np.arange(8)))
            got = [tooltip(alibi, h, i, j) for j in range(8)]
            np.testing.assert_allclose(got, e / e.sum(), atol=1e-4)
