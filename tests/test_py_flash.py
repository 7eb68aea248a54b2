"""test_py_flash - mha.flash_attn_func and mha.flash_attn_varlen_func (FlashAttention 2's
interface) against FlashAttention's attention_ref semantics in float64 (flash_ref.py):
outputs, softmax_lse, attention probabilities and the gradients of q, k, v (torch.autograd) for
causal (bottom-right), sliding windows, softcap, ALiBi slopes ([nheads] and [batch, nheads]),
grouped-query heads, softmax_scale, L != S, head dims past the tiles, strided inputs; dropout
(kept weights from return_attn_probs, reproducible under torch.manual_seed); varlen equal to
flash_attn_func sequence by sequence (and, with dropout, to the dense batch); bad inputs raise
ValueError naming the argument. Tolerances: py_util (float32 against float64).
"""
import random

import pytest
import torch

import mha
from flash_ref import attention_ref
from py_util import GRAD_TOL, assert_close, assert_mha_backward, leaf, zero_fraction_bounds


def draw(i):
    r = random.Random(7000 + i)
    H = r.choice([1, 2, 4, 6])
    D = r.choice([8, 16, 32, 64, 80])
    return dict(seed=i, B=r.choice([1, 2, 3]), L=r.choice([1, 7, 33, 100]),
                S=r.choice([1, 9, 33, 130]), H=H, Hkv=r.choice([h for h in (1, 2, 3, 6) if
                                                                 H % h == 0]),
                D=D, Dv=r.choice([D, 8]), causal=r.random() < 0.5,
                window=r.choice([(-1, -1), (-1, -1), (8, 0), (4, 4), (-1, 3), (20, -1)]),
                softcap=r.choice([0.0, 0.0, 2.5, 30.0]), alibi=r.choice([None, None, "H", "BH"]),
                scale=r.choice([None, None, 0.3]))


CASES = [draw(i) for i in range(40)]


def case_id(c):
    return "-".join(f"{k}{v}" for k, v in c.items() if k != "seed") + f"-{c['seed']}"


def inputs(c, gen):
    B, L, S, H, Hkv, D, Dv = (c[x] for x in ("B", "L", "S", "H", "Hkv", "D", "Dv"))
    q = torch.randn(B, L, H, D, generator=gen)
    k = torch.randn(B, S, Hkv, D, generator=gen)
    v = torch.randn(B, S, Hkv, Dv, generator=gen)
    g = torch.randn(B, L, H, Dv, generator=gen)
    slopes = None
    if c["alibi"]:
        shape = (H,) if c["alibi"] == "H" else (B, H)
        slopes = torch.rand(shape, generator=gen) * 0.5
    return q, k, v, g, slopes


def options(c, slopes):
    return dict(causal=c["causal"], window_size=c["window"], softcap=c["softcap"],
                alibi_slopes=slopes, softmax_scale=c["scale"])


def compare(q, k, v, g, dropout=False, **kw):
    """flash_attn_func against attention_ref: out, lse, probs, and the gradients of q, k, v.
    With dropout, the reference drops what mha dropped (the zero probabilities where the
    softmax is not 0)."""
    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    out, lse, probs = mha.flash_attn_func(ql, kl, vl, return_attn_probs=True, **kw)
    qr, kr, vr = leaf(q.double()), leaf(k.double()), leaf(v.double())
    ref_kw = {x: kw[x] for x in ("causal", "window_size", "softcap", "alibi_slopes",
                                 "softmax_scale") if x in kw}
    keep = None
    if dropout:
        keep = probs != 0
        ref_kw.update(keep=keep, dropout_p=kw["dropout_p"])
    out_r, lse_r, probs_r = attention_ref(qr, kr, vr, **ref_kw)
    assert out.shape == out_r.shape and out.is_contiguous()
    assert_close(out, out_r, "out")
    assert_close(lse, lse_r, "softmax_lse")
    assert_close(probs, probs_r, "attn_probs")
    got = torch.autograd.grad((out * g).sum(), [ql, kl, vl])
    want = torch.autograd.grad((out_r * g.double()).sum(), [qr, kr, vr])
    for name, a, b in zip("qkv", got, want):
        assert_close(a, b, f"grad {name}", GRAD_TOL)
    return out, lse, probs, got


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_flash_attn_func_matches_attention_ref(c):
    gen = torch.Generator().manual_seed(c["seed"])
    q, k, v, g, slopes = inputs(c, gen)
    compare(q, k, v, g, **options(c, slopes))


@pytest.mark.parametrize("D", [64, 128])
def test_long_sequences_causal_window_alibi_softcap_gqa(D):
    gen = torch.Generator().manual_seed(D)
    q = torch.randn(1, 300, 8, D, generator=gen)
    k, v = torch.randn(1, 400, 2, D, generator=gen), torch.randn(1, 400, 2, D, generator=gen)
    g = torch.randn(1, 300, 8, D, generator=gen)
    compare(q, k, v, g, causal=True, window_size=(64, 0), softcap=20.0,
            alibi_slopes=torch.rand(8, generator=gen))


def test_each_option_changes_the_result():
    # the options reach the library: each one alone gives another output than none
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 12, 2, 8, generator=gen) for _ in range(3))
    base = mha.flash_attn_func(q, k, v)
    for kw in (dict(causal=True), dict(window_size=(2, 1)), dict(softcap=0.5),
               dict(alibi_slopes=torch.tensor([0.5, 0.25])), dict(softmax_scale=0.1)):
        assert not torch.allclose(mha.flash_attn_func(q, k, v, **kw), base), kw


def test_softmax_scale_zero_makes_every_score_zero():
    # FlashAttention's softmax_scale 0: uniform attention over the keys a row may see (ALiBi
    # still added), q's gradient 0; the library's own scale 0 means its default, so the
    # package must not pass it on as such
    gen = torch.Generator().manual_seed(11)
    q, k, v, g = (torch.randn(2, n, h, 8, generator=gen) for n, h in ((5, 4), (9, 2), (9, 2),
                                                                       (5, 4)))
    compare(q, k, v, g, causal=True, softmax_scale=0.0)
    compare(q, k, v, g, window_size=(3, 1), softmax_scale=0, softcap=2.0,
            alibi_slopes=torch.rand(4, generator=gen))
    # varlen, the probabilities recomputed per sequence included
    cu = torch.tensor([0, 5], dtype=torch.int32), torch.tensor([0, 9], dtype=torch.int32)
    out, _, probs = mha.flash_attn_varlen_func(q[0], k[0], v[0], *cu, 5, 9, causal=True,
                                               softmax_scale=0, return_attn_probs=True)
    ref, _, probs_r = attention_ref(q[:1].double(), k[:1].double(), v[:1].double(), causal=True,
                                    softmax_scale=0)
    assert_close(out, ref[0], "varlen out")
    assert_close(probs, probs_r, "varlen probs")


def test_a_softmax_scale_float32_rounds_to_zero_is_zero_not_the_default():
    # the library's float32 scale holds 1e-50 as 0, its "default" (1/sqrt(headdim)): the
    # scores are 0 in float32 (as in FlashAttention, whose softmax_scale is a float), so the
    # result is scale 0's, uniform attention; a softcap that small would silently be "none"
    # and is refused; the same for the functional SDPA's scale (PyTorch: uniform too)
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(1, 6, 2, 16, generator=gen) for _ in range(3))
    zero = mha.flash_attn_func(q, k, v, softmax_scale=0.0)
    for tiny in (1e-50, -1e-50, 1e-46):
        assert torch.equal(mha.flash_attn_func(q, k, v, softmax_scale=tiny), zero), tiny
    assert_close(zero, v.double().mean(1, keepdim=True).expand_as(zero), "uniform")
    with pytest.raises(ValueError, match=r"softcap: got 1e-50, expected a finite number >= 0 "
                                         r"\(0: none\) that float32 can hold"):
        mha.flash_attn_func(q, k, v, softcap=1e-50)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    got = mha.functional.scaled_dot_product_attention(qh, kh, vh, scale=1e-50)
    want = torch.nn.functional.scaled_dot_product_attention(qh.double(), kh.double(),
                                                            vh.double(), scale=1e-50)
    assert_close(got, want, "sdpa scale 1e-50")
    # a scale that is a 0-dim tensor (a number c_float does not take) still works
    got = mha.functional.scaled_dot_product_attention(qh, kh, vh, scale=torch.tensor(0.3))
    want = torch.nn.functional.scaled_dot_product_attention(qh.double(), kh.double(),
                                                            vh.double(), scale=0.3)
    assert_close(got, want, "sdpa scale tensor(0.3)")


def test_a_negative_window_side_is_unbounded_as_flashattention():
    # FlashAttention takes any negative side of window_size as unbounded, not only -1
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(1, 9, 2, 8, generator=gen) for _ in range(3))
    for w, same in (((-2, 0), (-1, 0)), ((3, -5), (3, -1)), ((-7, -3), (-1, -1))):
        assert torch.equal(mha.flash_attn_func(q, k, v, window_size=w),
                           mha.flash_attn_func(q, k, v, window_size=same)), w


def test_causal_is_bottom_right():
    # L < S: the last query row sees every key; L > S: the first L - S rows see none
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, n, 2, 8, generator=gen) for n in (3, 7, 7))
    out = mha.flash_attn_func(q, k, v, causal=True)
    full = mha.flash_attn_func(q[:, -1:], k, v)
    assert_close(out[:, -1:], full.double(), "last row sees every key")
    q2 = torch.randn(1, 9, 2, 8, generator=gen)
    out2, lse2, _ = mha.flash_attn_func(q2, k, v, causal=True, return_attn_probs=True)
    assert torch.count_nonzero(out2[:, :2]) == 0 and torch.isneginf(lse2[:, :, :2]).all()


def test_strided_inputs_and_layout():
    # q, k, v as views of FlashAttention's packed qkv [B, L, 3, H, D] (read in place) and v with
    # an innermost stride of 2 (copied); out is contiguous [B, L, H, Dv]
    gen = torch.Generator().manual_seed(5)
    qkv = torch.randn(2, 10, 3, 4, 16, generator=gen)
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    v = torch.randn(2, 10, 4, 32, generator=gen)[..., ::2]
    assert not q.is_contiguous() and v.stride(-1) == 2
    g = torch.randn(2, 10, 4, 16, generator=gen)
    out = compare(q, k, v, g, causal=True)[0]
    assert out.is_contiguous() and out.shape == (2, 10, 4, 16)


def test_gradients_come_from_mhas_backward_and_deterministic_is_accepted():
    q = torch.randn(2, 5, 4, 8, requires_grad=True)
    k = torch.randn(2, 6, 2, 8, requires_grad=True)
    out = mha.flash_attn_func(q, k, k, causal=True, dropout_p=0.1)
    assert_mha_backward(out, "flash_attn_func")
    torch.manual_seed(0)
    a = mha.flash_attn_func(q, k, k, dropout_p=0.2, deterministic=True)
    torch.manual_seed(0)
    assert torch.equal(a, mha.flash_attn_func(q, k, k, dropout_p=0.2))
    with torch.no_grad():
        assert mha.flash_attn_func(q, k, k).grad_fn is None


# -- dropout -----------------------------------------------------------------------------------
P = 0.25


def test_dropout_probs_outputs_and_gradients():
    gen = torch.Generator().manual_seed(8)
    q, k = torch.randn(2, 20, 4, 16, generator=gen), torch.randn(2, 30, 2, 16, generator=gen)
    v, g = torch.randn(2, 30, 2, 12, generator=gen), torch.randn(2, 20, 4, 12, generator=gen)
    torch.manual_seed(1)
    _, _, probs, _ = compare(q, k, v, g, dropout=True, dropout_p=P, causal=True,
                             window_size=(12, -1), softcap=5.0,
                             alibi_slopes=torch.rand(2, 4, generator=gen))
    allowed = attention_ref(q, k, v, causal=True, window_size=(12, -1))[2] > 0
    dropped = (probs == 0) & allowed
    frac = dropped.sum().item() / allowed.sum().item()
    lo, hi = zero_fraction_bounds(allowed.sum().item(), P)
    assert lo < frac < hi, f"dropped fraction: got {frac:.4f}, expected {P}"


def test_dropout_one_drops_every_weight():
    # dropout_p = 1.0: out 0 and every gradient 0, as PyTorch's dropout(p = 1); the varlen
    # function the same (mha refused 1.0 before)
    gen = torch.Generator().manual_seed(10)
    q, k, v = (torch.randn(2, 9, 2, 8, generator=gen).requires_grad_() for _ in range(3))
    out = mha.flash_attn_func(q, k, v, dropout_p=1.0, causal=True)
    out.backward(torch.randn(out.shape, generator=gen))
    assert out.shape == (2, 9, 2, 8) and not out.any()
    assert not q.grad.any() and not k.grad.any() and not v.grad.any()
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    flat = [t.detach()[0].clone().requires_grad_() for t in (q, k, v)]
    out = mha.flash_attn_varlen_func(*flat, cu, cu, 5, 5, dropout_p=1.0)
    out.sum().backward()
    assert not out.any() and not any(t.grad.any() for t in flat)


def test_dropout_reproducible_under_manual_seed():
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(2, 16, 2, 8, generator=gen) for _ in range(3))
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(mha.flash_attn_func(q, k, v, dropout_p=P))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


# -- varlen ------------------------------------------------------------------------------------
def packed(lens, H, D, gen):
    return torch.randn(sum(lens), H, D, generator=gen)


def cu(lens):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)


VARLEN = [  # lens_q, lens_k, H, Hkv, D, Dv, options
    ([5, 1, 9], [7, 3, 9], 4, 4, 16, 16, dict()),
    ([30, 0, 70, 9], [50, 10, 70, 1], 4, 2, 16, 8, dict(causal=True)),
    ([33, 17], [17, 33], 3, 1, 32, 32, dict(causal=True, window_size=(4, 2), softcap=3.0)),
    ([140, 5, 64], [100, 40, 0], 2, 2, 64, 64, dict(window_size=(20, 10), alibi="BH")),
    ([1, 1, 1, 1], [33, 1, 64, 5], 4, 2, 8, 8, dict(causal=True, alibi="H", softmax_scale=0.5)),
]


def varlen_case(lq, lk, H, Hkv, D, Dv, opts, gen):
    q, k, v = packed(lq, H, D, gen), packed(lk, Hkv, D, gen), packed(lk, Hkv, Dv, gen)
    g = torch.randn(sum(lq), H, Dv, generator=gen)
    opts = dict(opts)
    alibi = opts.pop("alibi", None)
    slopes = None if alibi is None else torch.rand((H,) if alibi == "H" else (len(lq), H),
                                                   generator=gen)
    return q, k, v, g, slopes, opts


@pytest.mark.parametrize("case", VARLEN, ids=lambda c: f"{c[0]}x{c[1]}-H{c[2]}/{c[3]}-{c[6]}")
def test_varlen_equals_flash_attn_func_per_sequence(case):
    gen = torch.Generator().manual_seed(sum(case[0]))
    q, k, v, g, slopes, opts = varlen_case(*case, gen)
    cq, ck = cu(case[0]), cu(case[1])
    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    out, lse, probs = mha.flash_attn_varlen_func(
        ql, kl, vl, cq, ck, max(case[0]), max(case[1]), alibi_slopes=slopes,
        return_attn_probs=True, **opts)
    assert out.shape == (q.shape[0], q.shape[1], v.shape[2]) and lse.shape == (q.shape[1],
                                                                               q.shape[0])
    assert probs.shape == (len(case[0]), q.shape[1], max(case[0]), max(case[1]))
    assert_mha_backward(out, "flash_attn_varlen_func")
    dq, dk, dv = torch.autograd.grad((out * g).sum(), [ql, kl, vl])
    for s in range(len(case[0])):
        i0, i1, j0, j1 = int(cq[s]), int(cq[s + 1]), int(ck[s]), int(ck[s + 1])
        one = [leaf(t[a:b][None]) for t, a, b in ((q, i0, i1), (k, j0, j1), (v, j0, j1))]
        sl = None if slopes is None else slopes if slopes.dim() == 1 else slopes[s:s + 1]
        o1, l1, p1 = mha.flash_attn_func(*one, alibi_slopes=sl, return_attn_probs=True, **opts)
        what = f"sequence {s}"
        assert torch.equal(out[i0:i1], o1[0]), what
        assert torch.equal(lse[:, i0:i1], l1[0]), what
        assert torch.equal(probs[s, :, :i1 - i0, :j1 - j0], p1[0]), what
        assert torch.count_nonzero(probs[s]) == torch.count_nonzero(p1), what
        if i1 > i0:
            grads = torch.autograd.grad((o1 * g[i0:i1][None]).sum(), one)
            for name, a, b in zip("qkv", (dq[i0:i1], dk[j0:j1], dv[j0:j1]), grads):
                assert torch.equal(a, b[0]), f"{what}: grad {name}"
        else:  # no query: its keys get no gradient
            assert torch.count_nonzero(dk[j0:j1]) == 0 and torch.count_nonzero(dv[j0:j1]) == 0
        # and the oracle directly
        ref = attention_ref(*(t[a:b][None] for t, a, b in ((q, i0, i1), (k, j0, j1),
                                                          (v, j0, j1))),
                            alibi_slopes=sl, **opts)
        assert_close(out[i0:i1], ref[0][0], f"{what}: out against attention_ref")


def test_varlen_dropout_equals_the_dense_batch():
    # equal lengths: sequence s draws the dropout mask of batch entry s of flash_attn_func
    gen = torch.Generator().manual_seed(12)
    B, L, S, H, Hkv, D = 3, 20, 33, 4, 2, 16
    q, k, v = torch.randn(B, L, H, D, generator=gen), torch.randn(B, S, Hkv, D, generator=gen), \
        torch.randn(B, S, Hkv, D, generator=gen)
    g = torch.randn(B, L, H, D, generator=gen)
    opts = dict(dropout_p=P, causal=True, window_size=(9, -1), alibi_slopes=torch.rand(B, H))
    dense = [leaf(t) for t in (q, k, v)]
    torch.manual_seed(5)
    out_d = mha.flash_attn_func(*dense, **opts)
    flat = [leaf(t.reshape(-1, t.shape[2], t.shape[3])) for t in (q, k, v)]
    torch.manual_seed(5)
    out_v = mha.flash_attn_varlen_func(*flat, cu([L] * B), cu([S] * B), L, S, **opts)
    assert_close(out_v, out_d.reshape(B * L, H, D).double(), "varlen with dropout")
    gd = torch.autograd.grad((out_d * g).sum(), dense)
    gv = torch.autograd.grad((out_v * g.reshape(B * L, H, D)).sum(), flat)
    for name, a, b in zip("qkv", gv, gd):
        assert_close(a, b.reshape(a.shape).double(), f"varlen with dropout: grad {name}",
                     GRAD_TOL)
    torch.manual_seed(6)  # another seed, another mask
    assert not torch.equal(mha.flash_attn_varlen_func(*flat, cu([L] * B), cu([S] * B), L, S,
                                                      **opts), out_v)


# -- bad inputs --------------------------------------------------------------------------------
def _qkv(B=2, L=5, S=6, H=4, Hkv=2, D=8):
    return torch.randn(B, L, H, D), torch.randn(B, S, Hkv, D), torch.randn(B, S, Hkv, D)


def _packed(Tq=8, Tk=12, H=4, Hkv=2, D=8):
    return torch.randn(Tq, H, D), torch.randn(Tk, Hkv, D), torch.randn(Tk, Hkv, D)


def _varlen(q, k, v, cq=(0, 3, 5, 8), ck=(0, 4, 8, 12), mq=16, mk=16, **kw):
    as_cu = [torch.tensor(c, dtype=torch.int32) if isinstance(c, tuple) else c for c in (cq, ck)]
    return mha.flash_attn_varlen_func(q, k, v, *as_cu, mq, mk, **kw)


F = mha.flash_attn_func
BAD = [
    ("q float64", lambda: F(*(t.double() for t in _qkv())),
     "flash_attn_func: q.dtype: got torch.float64, expected torch.float32"),
    ("q on meta", lambda: F(torch.empty(2, 5, 4, 8, device="meta"), *_qkv()[1:]),
     "flash_attn_func: q: got a tensor on meta, expected a CPU tensor"),
    ("q 3-D", lambda: F(torch.randn(5, 4, 8), *_qkv()[1:]),
     "flash_attn_func: q: got shape [5, 4, 8], expected [batch, seqlen, nheads, headdim]"),
    ("heads", lambda: F(*_qkv(Hkv=3)),
     "flash_attn_func: k.shape[2]: got 3, expected a divisor of q's 4 heads"),
    ("no kv heads", lambda: F(*_qkv(Hkv=0)),
     "flash_attn_func: k.shape[2]: got 0, expected a divisor of q's 4 heads"),
    ("headdim", lambda: F(_qkv()[0], torch.randn(2, 6, 2, 7), torch.randn(2, 6, 2, 7)),
     "flash_attn_func: k: got shape [2, 6, 2, 7], expected [2, ?, ?, 8]"),
    ("v length", lambda: F(*_qkv()[:2], torch.randn(2, 5, 2, 8)),
     "flash_attn_func: v: got shape [2, 5, 2, 8], expected [2, 6, 2, ?]"),
    ("window type", lambda: F(*_qkv(), window_size=(1,)),
     "flash_attn_func: window_size: got (1,), expected (left, right), two ints"),
    ("softcap", lambda: F(*_qkv(), softcap=-1.0),
     "flash_attn_func: softcap: got -1.0, expected a finite number >= 0 (0: none)"),
    ("softcap inf", lambda: F(*_qkv(), softcap=float("inf")),
     "flash_attn_func: softcap: got inf, expected a finite number >= 0 (0: none)"),
    ("dropout_p", lambda: F(*_qkv(), dropout_p=1.5),
     "flash_attn_func: dropout_p: got 1.5, expected a value in [0, 1]"),
    ("varlen dropout_p", lambda: _varlen(*_packed(), dropout_p=-0.1),
     "flash_attn_varlen_func: dropout_p: got -0.1, expected a value in [0, 1]"),
    ("softmax_scale", lambda: F(*_qkv(), softmax_scale=float("inf")),
     "flash_attn_func: softmax_scale: got inf, expected a finite number"),
    ("alibi shape", lambda: F(*_qkv(), alibi_slopes=torch.rand(3)),
     "flash_attn_func: alibi_slopes: got shape [3], expected [4] or [2, 4]"),
    ("alibi dtype", lambda: F(*_qkv(), alibi_slopes=torch.rand(4, dtype=torch.float64)),
     "flash_attn_func: alibi_slopes.dtype: got torch.float64, expected torch.float32"),
    ("alibi nan", lambda: F(*_qkv(), alibi_slopes=torch.tensor([0.5, float("nan"), 0, 0])),
     "flash_attn_func: alibi_slopes[1]: got nan, expected a finite slope"),
    ("alibi inf batched", lambda: _varlen(*_packed(), alibi_slopes=torch.tensor(
        [[0.5] * 4, [0.5] * 4, [0, 0, float("-inf"), 0]])),
     "flash_attn_varlen_func: alibi_slopes[2, 2]: got -inf, expected a finite slope"),
    ("cu dtype", lambda: _varlen(*_packed(), cq=torch.tensor([0, 3, 5, 8])),
     "flash_attn_varlen_func: cu_seqlens_q.dtype: got torch.int64, expected torch.int32"),
    ("cu past total", lambda: _varlen(*_packed(), cq=(0, 3, 5, 10)),
     "mha_attn_varlen_forward: cu_seqlens_q[3]: got 10, expected <= 8 (total tokens "
     "q.shape[0])"),
    ("cu decreasing", lambda: _varlen(*_packed(), ck=(0, 4, 3, 12)),
     "mha_attn_varlen_forward: cu_seqlens_k[2]: got 3, expected >= 4"),
    ("cu start", lambda: _varlen(*_packed(), cq=(1, 3, 5, 8)),
     "mha_attn_varlen_forward: cu_seqlens_q[0]: got 1, expected 0"),
    ("cu total", lambda: _varlen(*_packed(), ck=(0, 4, 8, 11)),
     "mha_attn_varlen_forward: cu_seqlens_k[3]: got 11, expected 12"),
    ("cu lengths", lambda: _varlen(*_packed(), ck=(0, 12)),
     "flash_attn_varlen_func: cu_seqlens_q, cu_seqlens_k: got shapes [4], [2], expected"),
    ("varlen heads", lambda: _varlen(*_packed(Hkv=3)),
     "mha_attn_varlen_forward: k.shape[1]: got 3, expected a divisor of q's 4 heads"),
    ("varlen q 4-D", lambda: _varlen(torch.randn(1, 8, 4, 8), *_packed()[1:]),
     "flash_attn_varlen_func: q: got shape [1, 8, 4, 8], expected [total_tokens, nheads, "
     "headdim]"),
    ("varlen dtype", lambda: _varlen(*(t.double() for t in _packed())),
     "flash_attn_varlen_func: q.dtype: got torch.float64, expected"),
    ("max_seqlen", lambda: _varlen(*_packed(), mq=2),
     "flash_attn_varlen_func: max_seqlen_q: got 2, expected >= 3 (the longest sequence of "
     "cu_seqlens_q)"),
    ("varlen alibi", lambda: _varlen(*_packed(), alibi_slopes=torch.rand(2, 4)),
     "flash_attn_varlen_func: alibi_slopes: got shape [2, 4], expected [4] or [3, 4]"),
    ("probs with dropout", lambda: _varlen(*_packed(), dropout_p=0.1, return_attn_probs=True),
     "flash_attn_varlen_func: return_attn_probs with dropout_p 0.1: not supported"),
    # head dim 0: FlashAttention 2 has none (its default scale 0 ** -0.5 raises
    # ZeroDivisionError), though torch's scaled_dot_product_attention takes it
    ("headdim 0", lambda: F(*(t[..., :0] for t in _qkv())),
     "flash_attn_func: q: got shape [2, 5, 4, 0], expected headdim (the last dimension) >= 1"),
    ("headdim 0 scaled", lambda: F(*(t[..., :0] for t in _qkv()[:2]), _qkv()[2],
                                   softmax_scale=0.5),
     "flash_attn_func: q: got shape [2, 5, 4, 0], expected headdim (the last dimension) >= 1"),
    ("varlen headdim 0", lambda: _varlen(*(t[..., :0] for t in _packed()[:2]), _packed()[2]),
     "flash_attn_varlen_func: q: got shape [8, 4, 0], expected headdim (the last dimension) "
     ">= 1"),
    ("kvcache headdim 0", lambda: mha.flash_attn_with_kvcache(*(t[..., :0] for t in _qkv())),
     "flash_attn_with_kvcache: q: got shape [2, 5, 4, 0], expected headdim (the last "
     "dimension) >= 1"),
]


@pytest.mark.parametrize("name,call,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_raise_value_error_naming_the_argument(name, call, msg):
    with pytest.raises(ValueError) as e:
        call()
    assert msg in str(e.value), f"{name}: {e.value}"


def test_names_are_exported():
    assert {"flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache",
            "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func",
            "flash_attn_varlen_qkvpacked_func",
            "flash_attn_varlen_kvpacked_func"} <= set(mha.__all__)
    from mha.flash import flash_attn_func
    assert mha.flash_attn_func is flash_attn_func


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_no_query_rows_backward_of_a_sum(dtype):
    # out.sum().backward() on an empty out hands the backward an expanded gradient whose
    # strides are all 0 (contiguous for torch: it is empty): zero gradients for k and v
    gen = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(2, n, h, 8, generator=gen).to(dtype) for n, h in ((0, 4), (6, 2),
                                                                            (6, 2)))
    dense = [leaf(t) for t in (q, k, v)]
    packed = [leaf(t.reshape(-1, t.shape[2], t.shape[3])) for t in (q, k, v)]
    for name, ts, out in (
            ("flash_attn_func", dense, lambda: mha.flash_attn_func(*dense, causal=True)),
            ("flash_attn_varlen_func", packed,
             lambda: mha.flash_attn_varlen_func(*packed, cu([0, 0]), cu([6, 6]), 0, 6))):
        grads = torch.autograd.grad(out().sum(), ts)
        for t, g in zip(ts, grads):
            assert g.shape == t.shape and g.dtype == dtype and not g.any(), name


# ------------------------------------------------------------------------------------------
# the packed variants
# ------------------------------------------------------------------------------------------
def _grads(out, g, leaves):
    return torch.autograd.grad((out * g).sum(), leaves)


@pytest.mark.parametrize("kw", [dict(causal=True), dict(window_size=(3, 1), softcap=2.0),
                                dict(alibi_slopes="H", softmax_scale=0.3)])
def test_packed_variants_equal_the_unpacked_functions(kw):
    # FlashAttention's qkv [B, L, 3, H, D] / kv [B, S, 2, Hkv, D] (and [T, 3, H, D] / [T, 2,
    # Hkv, D] packed sequences) read in place: the same out, lse, probs and gradients as
    # flash_attn_func / flash_attn_varlen_func on the views, the gradient stacked as the input
    gen = torch.Generator().manual_seed(21)
    B, L, S, H, Hkv, D = 2, 7, 9, 4, 2, 16
    if kw.get("alibi_slopes") == "H":
        kw = dict(kw, alibi_slopes=torch.rand(H, generator=gen))
    qkv = torch.randn(B, L, 3, H, D, generator=gen)
    q = torch.randn(B, L, H, D, generator=gen)
    kv = torch.randn(B, S, 2, Hkv, D, generator=gen)
    g = torch.randn(B, L, H, D, generator=gen)
    # qkvpacked
    p = leaf(qkv)
    out, lse, probs = mha.flash_attn_qkvpacked_func(p, return_attn_probs=True, **kw)
    views = [leaf(t) for t in qkv.unbind(2)]
    out_r, lse_r, probs_r = F(*views, return_attn_probs=True, **kw)
    assert torch.equal(out, out_r) and torch.equal(lse, lse_r) and torch.equal(probs, probs_r)
    (dp,) = _grads(out, g, [p])
    assert dp.shape == qkv.shape
    assert torch.equal(dp, torch.stack(_grads(out_r, g, views), 2))
    # kvpacked, grouped heads
    ql, p = leaf(q), leaf(kv)
    out = mha.flash_attn_kvpacked_func(ql, p, **kw)
    ql_r, views = leaf(q), [leaf(t) for t in kv.unbind(2)]
    out_r = F(ql_r, *views, **kw)
    assert torch.equal(out, out_r)
    dq, dp = _grads(out, g, [ql, p])
    dq_r, dk_r, dv_r = _grads(out_r, g, [ql_r] + views)
    assert torch.equal(dq, dq_r) and torch.equal(dp, torch.stack([dk_r, dv_r], 2))
    # the varlen forms: sequences of 3 and 4 (qkv), 4 and 5 keys (kv)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    cuk = torch.tensor([0, 4, 9], dtype=torch.int32)
    t = leaf(qkv[0])  # [7, 3, H, D]
    out = mha.flash_attn_varlen_qkvpacked_func(t, cu, 4, **kw)
    views = [leaf(x) for x in qkv[0].unbind(1)]
    out_r = mha.flash_attn_varlen_func(*views, cu, cu, 4, 4, **kw)
    assert torch.equal(out, out_r)
    (dt,) = _grads(out, g[0], [t])
    assert torch.equal(dt, torch.stack(_grads(out_r, g[0], views), 1))
    ql, t = leaf(q[0]), leaf(kv[0])  # [7, H, D], [9, 2, Hkv, D]
    out = mha.flash_attn_varlen_kvpacked_func(ql, t, cu, cuk, 4, 5, **kw)
    ql_r, views = leaf(q[0]), [leaf(x) for x in kv[0].unbind(1)]
    out_r = mha.flash_attn_varlen_func(ql_r, *views, cu, cuk, 4, 5, **kw)
    assert torch.equal(out, out_r)
    dq, dt = _grads(out, g[0], [ql, t])
    dq_r, dk_r, dv_r = _grads(out_r, g[0], [ql_r] + views)
    assert torch.equal(dq, dq_r) and torch.equal(dt, torch.stack([dk_r, dv_r], 1))


def test_packed_variants_check_the_stacking():
    cases = [
        (lambda: mha.flash_attn_qkvpacked_func(torch.randn(2, 5, 2, 4, 8)),
         "flash_attn_qkvpacked_func: qkv: got shape [2, 5, 2, 4, 8], expected [batch, seqlen, "
         "3, nheads, headdim]"),
        (lambda: mha.flash_attn_qkvpacked_func(torch.randn(5, 3, 4, 8)),
         "flash_attn_qkvpacked_func: qkv: got shape [5, 3, 4, 8]"),
        (lambda: mha.flash_attn_qkvpacked_func([1, 2, 3]),
         "flash_attn_qkvpacked_func: qkv: got list, expected a torch.Tensor"),
        (lambda: mha.flash_attn_kvpacked_func(torch.randn(2, 5, 4, 8), torch.randn(2, 6, 3, 2, 8)),
         "flash_attn_kvpacked_func: kv: got shape [2, 6, 3, 2, 8], expected [batch, seqlen_k, 2, "
         "nheads_k, headdim]"),
        (lambda: mha.flash_attn_kvpacked_func(torch.randn(2, 5, 4, 8), torch.randn(2, 6, 2, 3, 8)),
         "flash_attn_kvpacked_func: k.shape[2]: got 3, expected a divisor of q's 4 heads"),
        (lambda: mha.flash_attn_varlen_qkvpacked_func(torch.randn(7, 2, 4, 8), torch.tensor(
            [0, 7], dtype=torch.int32), 7),
         "flash_attn_varlen_qkvpacked_func: qkv: got shape [7, 2, 4, 8], expected [total_tokens, "
         "3, nheads, headdim]"),
        (lambda: mha.flash_attn_varlen_qkvpacked_func(torch.randn(7, 3, 4, 8), torch.tensor(
            [0, 7], dtype=torch.int32), 6),
         "flash_attn_varlen_qkvpacked_func: max_seqlen_q: got 6, expected >= 7"),
        (lambda: mha.flash_attn_varlen_kvpacked_func(
            torch.randn(7, 4, 8), torch.randn(9, 2, 2, 8), torch.tensor([0, 7], dtype=torch.int32),
            torch.tensor([0, 8], dtype=torch.int32), 7, 9),
         "cu_seqlens_k[1]: got 8, expected 9 (the last prefix sum is the total tokens "
         "k.shape[0])"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert msg in str(e.value), str(e.value)
