"""gen_golden.py - golden vectors for the mha module, from PyTorch.

Run from anywhere, with PyTorch 2.13 (the test venv that `make test` sets up):
    build/venv/bin/python tests/golden/gen_golden.py [OUT_DIR]
It rewrites every tests/golden/<case>.safetensors (and removes stale ones). Deterministic: each
case has its own seed, so the files are byte-identical from run to run on the same torch.

Why a reference of our own: mha's semantics differ from nn.MultiheadAttention on purpose in a
few places (see the mask table at the top of include/mha.h): a query row whose keys are all
masked gives attention output 0 and weights 0 (PyTorch: NaN), there is a bottom-right causal
mask and a key_lengths mask, and a custom softmax scale. So the expected values come from
`reference()` below, a float64 implementation of the layer with mha's semantics written with
plain torch ops (autograd gives the gradients). Before a case is written, `check_with_torch()`
asserts that the reference agrees with PyTorch 2.13's nn.MultiheadAttention in float64 (~1e-10):
with need_weights=False (scaled_dot_product_attention, which like mha gives 0 on a fully masked
row) the output and every gradient on every row; with need_weights=True the weights, and NaN
output rows exactly where mha sees a fully masked row.

The expected values are computed from the float32 inputs and parameters stored in the file
(upcast to float64), so the C library sees exactly the inputs the reference saw.

File layout (one safetensors file per case; names are what tests/test_golden.c reads):
  parameters       under PyTorch's state_dict() names, F32
  query            F32 [B, L, E] (or unbatched [L, E])
  key, value       F32 [B, S, kdim], [B, S, vdim]; absent for self-attention (key = value = query)
  key_padding_mask BOOL [B, S] ([S] unbatched), true = ignore that key      (optional)
  key_lengths      I32 [B]                                                     (optional)
  attn_mask        BOOL or F32, [L, S] or [B*H, L, S] ([H, L, S] unbatched)   (optional)
  cfg.num_heads    I32 [1]
  cfg.causal       I32 [1]: 0 none, 1 top-left, 2 bottom-right
  cfg.average_weights I32 [1]: 1 weights averaged over heads, 0 per head
  cfg.attn_batched I32 [1]: 1 if attn_mask is [B*H, L, S]
  cfg.scale        F32 [1]: softmax scale, 0 = default 1/sqrt(E/H)
  dout             F32, shape of the output: the upstream gradient for the backward
  expect.out       F64 output
  expect.weights   F64 [B, L, S] averaged or [B, H, L, S] per head
  expect.grad.query (+ expect.grad.key, expect.grad.value for cross-attention)  F64
  expect.grad.<parameter name>  F64, for every parameter
"""
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
OUT = HERE  # where the fixtures go: this folder, or the folder given as the first argument
from mha_py import save_safetensors  # noqa: E402

TOL = 1e-10  # reference vs nn.MultiheadAttention, both float64


# --------------------------------------------------------------------------------------------
# The float64 reference with mha's semantics
# --------------------------------------------------------------------------------------------
def allowed_mask(c, B, H, L, S):
    """[B, H, L, S] bool: True where key j may be attended by query i (before float masks)."""
    ok = torch.ones(B, H, L, S, dtype=torch.bool)
    i = torch.arange(L).view(L, 1)
    j = torch.arange(S).view(1, S)
    if c["causal"] == 1:
        ok &= (j <= i).view(1, 1, L, S)
    elif c["causal"] == 2:
        ok &= (j <= i + (S - L)).view(1, 1, L, S)
    if c.get("key_padding_mask") is not None:
        ok &= ~torch.as_tensor(c["key_padding_mask"]).reshape(B, 1, 1, S)
    if c.get("key_lengths") is not None:
        lens = torch.as_tensor(c["key_lengths"]).long().view(B, 1, 1, 1)
        ok &= j.view(1, 1, 1, S) < lens
    am = c.get("attn_mask")
    if am is not None and am.dtype == np.bool_:
        t = torch.as_tensor(am)
        ok &= ~(t.reshape(B, H, L, S) if c["attn_batched"] else t.reshape(1, 1, L, S))
    return ok


def float_mask(c, B, H, L, S):
    am = c.get("attn_mask")
    if am is None or am.dtype == np.bool_:
        return None
    t = torch.as_tensor(am).double()
    return t.reshape(B, H, L, S) if c["attn_batched"] else t.reshape(1, 1, L, S)


def reference(c, P, x):
    """mha's layer in float64. P: {name: float64 tensor}, x: {"query", "key", "value"}.
    Returns (out, weights) with the unbatched dimension restored."""
    E, H = c["E"], c["H"]
    D = E // H
    q_in = x["query"]
    unbatched = q_in.dim() == 2
    k_in = x.get("key", q_in)
    v_in = x.get("value", q_in)
    if unbatched:
        q_in, k_in, v_in = q_in[None], k_in[None], v_in[None]
    B, L, _ = q_in.shape
    S = k_in.shape[1]
    if "in_proj_weight" in P:
        Wq, Wk, Wv = P["in_proj_weight"].split(E, 0)
    else:
        Wq, Wk, Wv = P["q_proj_weight"], P["k_proj_weight"], P["v_proj_weight"]
    if "in_proj_bias" in P:
        bq, bk, bv = P["in_proj_bias"].split(E, 0)
    else:
        bq = bk = bv = None

    def lin(t, W, b):
        y = t @ W.t()
        return y + b if b is not None else y

    q = lin(q_in, Wq, bq).view(B, L, H, D).transpose(1, 2)  # [B, H, L, D]
    k = lin(k_in, Wk, bk).view(B, S, H, D).transpose(1, 2)  # [B, H, S, D]
    v = lin(v_in, Wv, bv).view(B, S, H, D).transpose(1, 2)  # [B, H, S, D]
    scale = c["scale"] if c["scale"] != 0 else 1.0 / math.sqrt(D)
    s = (q @ k.transpose(-1, -2)) * scale  # [B, H, L, S]
    fm = float_mask(c, B, H, L, S)
    if fm is not None:
        s = s + fm
    ok = allowed_mask(c, B, H, L, S)
    s = torch.where(ok, s, torch.tensor(-math.inf, dtype=s.dtype))
    # Softmax where a row with no finite score gives 0 (mha), not NaN (PyTorch). The row max is
    # a constant for the derivative (softmax is shift invariant), so it is detached.
    m = s.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True)
    p = e / torch.where(den > 0, den, torch.ones_like(den))
    a = (p @ v).transpose(1, 2).reshape(B, L, E)
    out = lin(a, P["out_proj.weight"], P.get("out_proj.bias"))
    w = p.mean(1) if c["average_weights"] else p
    if unbatched:
        out, w = out[0], w[0]
    return out, w, (p.detach().sum(-1) == 0)  # last: [B, H, L] fully masked rows


# --------------------------------------------------------------------------------------------
# The same case through nn.MultiheadAttention, for the cross-check
# --------------------------------------------------------------------------------------------
def torch_masks(c, B, H, L, S, unbatched):
    """mha's masks expressed with nn.MultiheadAttention's arguments (float64)."""
    kpm = None
    if c.get("key_padding_mask") is not None:
        kpm = torch.as_tensor(c["key_padding_mask"]).reshape(B, S).clone()
    if c.get("key_lengths") is not None:
        lens = torch.as_tensor(c["key_lengths"]).long().view(B, 1)
        kl = torch.arange(S).view(1, S) >= lens
        kpm = kl if kpm is None else (kpm | kl)
    # Causal and attn_mask become one float mask [B*H, L, S] (PyTorch has no bottom-right).
    # key_padding_mask stays separate (float too), so that PyTorch's merging of the two is
    # part of what is checked.
    am = torch.zeros(B * H, L, S, dtype=torch.float64)
    i = torch.arange(L).view(L, 1)
    j = torch.arange(S).view(1, S)
    if c["causal"] == 1:
        am = am.masked_fill(~(j <= i), -math.inf)
    elif c["causal"] == 2:
        am = am.masked_fill(~(j <= i + (S - L)), -math.inf)
    a = c.get("attn_mask")
    if a is not None:
        t = torch.as_tensor(a)
        t = t.reshape(B * H, L, S) if c["attn_batched"] else t.view(1, L, S)
        if t.dtype == torch.bool:
            am = am.masked_fill(t, -math.inf)
        else:
            am = am + t.double()
    if kpm is not None:
        # the same type as attn_mask: 2.13 deprecates mixing a bool and a float mask
        kpm = torch.zeros(kpm.shape, dtype=torch.float64).masked_fill(kpm, -math.inf)
        if unbatched:
            kpm = kpm[0]
    return kpm, am


def check_with_torch(c, P32, x32, dout32, out_ref, w_ref, grads_ref, dead):
    """The reference against nn.MultiheadAttention(...).double() of PyTorch 2.13, twice:
    need_weights=True (the explicit softmax: NaN on a fully masked row) for the weights, and
    need_weights=False (scaled_dot_product_attention, whose softmax gives 0 on such a row, as
    mha does) for the output and every gradient, on every row."""
    E, H = c["E"], c["H"]
    D = E // H
    unbatched = x32["query"].ndim == 2
    mod = torch.nn.MultiheadAttention(E, H, bias=c["bias"], kdim=c["kdim"], vdim=c["vdim"],
                                      batch_first=True).double()
    mod.train()  # dropout 0; grads on, so never the inference fast path
    names = [n for n, _ in mod.named_parameters()]
    assert sorted(names) == sorted(P32), (names, list(P32))
    # A custom scale is the default scale with the q projection multiplied by f.
    f = c["scale"] * math.sqrt(D) if c["scale"] != 0 else 1.0
    with torch.no_grad():
        for n, p in mod.named_parameters():
            t = torch.as_tensor(P32[n]).double()
            if n in ("in_proj_weight", "in_proj_bias"):
                t = t.clone()
                t[:E] *= f
            elif n == "q_proj_weight":
                t = t * f
            p.copy_(t)
    xs = {k: torch.as_tensor(v).double().requires_grad_(True) for k, v in x32.items()}
    q = xs["query"]
    k = xs.get("key", q)
    v = xs.get("value", q)
    Bq = 1 if unbatched else q.shape[0]
    L = q.shape[-2]
    S = k.shape[-2]
    kpm, am = torch_masks(c, Bq, H, L, S, unbatched)

    # need_weights=True: weights; NaN rows exactly where mha calls a row fully masked
    out, w = mod(q, k, v, key_padding_mask=kpm, need_weights=True, attn_mask=am,
                 average_attn_weights=bool(c["average_weights"]))
    ok_w = ~torch.isnan(w)
    d_w = (w - w_ref).abs()[ok_w].max().item() if ok_w.any() else 0.0
    nan_rows = torch.isnan(out).any(-1)  # [B, L] or [L]
    dead_rows = dead.any(1)  # [B, L]
    if unbatched:
        dead_rows = dead_rows[0]
    assert torch.equal(nan_rows, dead_rows), (c["name"], nan_rows, dead_rows)

    # need_weights=False: output and gradients everywhere. A top-left causal mask alone goes as
    # 2.13's is_causal hint (with the mask it requires), so SDPA's own causal path is checked.
    is_causal = (c["causal"] == 1 and kpm is None and c.get("attn_mask") is None)
    if is_causal:
        am = torch.triu(torch.ones(L, S, dtype=torch.bool), diagonal=1)
    out, _ = mod(q, k, v, key_padding_mask=kpm, need_weights=False, attn_mask=am,
                 is_causal=is_causal)
    assert torch.isfinite(out).all(), c["name"]
    d_o = (out - out_ref).abs().max().item()
    assert d_o < TOL and d_w < TOL, (c["name"], d_o, d_w)
    (out * torch.as_tensor(dout32).double()).sum().backward()
    d_g = 0.0
    for n, p in mod.named_parameters():
        g = p.grad.clone()
        if n in ("in_proj_weight", "in_proj_bias"):
            g[:E] *= f
        elif n == "q_proj_weight":
            g = g * f
        d_g = max(d_g, (g - grads_ref[n]).abs().max().item())
    for n, t in xs.items():
        d_g = max(d_g, (t.grad - grads_ref[n]).abs().max().item())
    assert d_g < TOL, (c["name"], d_g)
    return d_o, d_w, d_g


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
def make_case(name, seed, E=8, H=2, B=2, L=5, S=None, kdim=None, vdim=None, bias=True,
              cross=False, unbatched=False, causal=0, kpm=None, key_lengths=None,
              attn=None, attn_batched=0, average_weights=1, scale=0.0):
    """attn: None, "bool", "float" (random, some -inf), or a callable(gen, shape) -> ndarray.
    kpm: None, "random" or an ndarray. cross: separate key/value tensors (S may differ)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if S is None:
        S = L
    if not cross:
        assert S == L and kdim is None and vdim is None
    kd = kdim or E
    vd = vdim or E
    mod = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    # Random biases too (PyTorch initializes them to zero, which would test nothing).
    with torch.no_grad():
        for n, p in mod.named_parameters():
            if "bias" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    P32 = {n: t.detach().float().numpy().copy() for n, t in mod.state_dict().items()}
    Bq = 1 if unbatched else B

    def rnd(*shape):
        t = torch.randn(*shape, generator=g, dtype=torch.float64).float().numpy()
        return t[0] if unbatched else t

    x32 = {"query": rnd(Bq, L, E)}
    if cross:
        x32["key"] = rnd(Bq, S, kd)
        x32["value"] = rnd(Bq, S, vd)
    c = dict(name=name, E=E, H=H, kdim=kdim, vdim=vdim, bias=bias, causal=causal,
             attn_batched=attn_batched, average_weights=average_weights, scale=scale)
    if isinstance(kpm, str):
        m = torch.rand(Bq, S, generator=g) < 0.3
        m[:, 0] = False  # at least one key per batch
        kpm = m.numpy()
    if kpm is not None:
        c["key_padding_mask"] = kpm[0] if unbatched else kpm
    if key_lengths is not None:
        c["key_lengths"] = np.asarray(key_lengths, dtype=np.int32)
    mshape = (Bq * H, L, S) if attn_batched else (L, S)
    if attn == "bool":
        m = torch.rand(*mshape, generator=g) < 0.3
        m[..., 0] = False  # keep one key per row: no fully masked row unless a case wants it
        a = m.numpy()
    elif attn == "float":
        t = torch.randn(*mshape, generator=g, dtype=torch.float64) * 1.5
        t = t.masked_fill(torch.rand(*mshape, generator=g) < 0.2, -math.inf)
        t[..., 0] = torch.randn(mshape[:-1], generator=g, dtype=torch.float64)
        a = t.float().numpy()
    elif callable(attn):
        a = attn(g, mshape)
    else:
        a = None
    if a is not None:
        if unbatched and attn_batched:
            a = a.reshape(H, L, S)
        c["attn_mask"] = a

    # float64 reference from the float32 values
    P = {n: torch.as_tensor(t).double().requires_grad_(True) for n, t in P32.items()}
    x = {n: torch.as_tensor(t).double().requires_grad_(True) for n, t in x32.items()}
    out, w, dead = reference(c, P, x)
    dout32 = torch.randn(out.shape, generator=g, dtype=torch.float64).float().numpy()
    (out * torch.as_tensor(dout32).double()).sum().backward()
    grads = {n: t.grad.detach().clone() for n, t in list(P.items()) + list(x.items())}
    out, w = out.detach(), w.detach()
    for t in [out, w] + list(grads.values()):
        assert torch.isfinite(t).all(), name
    # Rows mha treats as fully masked: output equals out_proj.bias (or 0), weights 0.
    if dead.any():
        dead_rows = dead.all(1)
        if unbatched:
            dead_rows = dead_rows[0]
        bo = P["out_proj.bias"].detach() if bias else torch.zeros(E, dtype=torch.float64)
        assert torch.equal(out[dead_rows], bo.expand_as(out[dead_rows])), name
    d_o, d_w, d_g = check_with_torch(c, P32, x32, dout32, out, w, grads, dead)

    T = dict(P32)
    T.update(x32)
    for k in ("key_padding_mask", "key_lengths", "attn_mask"):
        if c.get(k) is not None:
            T[k] = np.ascontiguousarray(c[k])
    T["cfg.num_heads"] = np.array([H], dtype=np.int32)
    T["cfg.causal"] = np.array([causal], dtype=np.int32)
    T["cfg.average_weights"] = np.array([average_weights], dtype=np.int32)
    T["cfg.attn_batched"] = np.array([attn_batched], dtype=np.int32)
    T["cfg.scale"] = np.array([scale], dtype=np.float32)
    T["dout"] = dout32
    T["expect.out"] = out.numpy()
    T["expect.weights"] = w.numpy()
    for n, t in grads.items():
        T["expect.grad." + n] = t.numpy()
    meta = {"case": name, "seed": seed, "torch": torch.__version__,
            "generator": "tests/golden/gen_golden.py",
            "fully_masked_rows": int(dead.any(1).sum().item()) if dead.any() else 0}
    path = os.path.join(OUT, name + ".safetensors")
    save_safetensors(path, T, meta)
    print("%-24s vs torch: out %.1e  weights %.1e  grads %.1e  (%d bytes)"
          % (name, d_o, d_w, d_g, os.path.getsize(path)))
    return path


def fully_masked_bool(g, shape):
    """A bool [B*H, L, S] mask with whole rows masked: row 2 in every head of batch 0 (the
    output row is out_proj.bias) and row 3 in head 1 of batch 1 only (a partly dead row:
    averaged weights mix a zero head with live ones)."""
    m = torch.rand(*shape, generator=g) < 0.25
    m[..., 0] = False
    H = 2
    m[0:H, 2, :] = True
    m[H + 1, 3, :] = True
    return m.numpy()


CASES = [
    dict(name="no_mask", seed=1),
    dict(name="causal_tl_self", seed=2, causal=1, E=12, H=3),
    dict(name="causal_tl_cross", seed=3, cross=True, L=5, S=7, causal=1),
    dict(name="causal_br_l_lt_s", seed=4, cross=True, L=4, S=7, causal=2, E=16, H=4),
    dict(name="causal_br_l_gt_s", seed=5, cross=True, L=7, S=4, causal=2),  # rows 0-2 dead
    dict(name="key_padding", seed=6, cross=True, L=5, S=7, kpm="random"),
    dict(name="key_lengths", seed=7, cross=True, L=5, S=7, key_lengths=[7, 3]),
    dict(name="attn_bool_2d", seed=8, cross=True, L=5, S=7, attn="bool"),
    dict(name="attn_float_2d", seed=9, cross=True, L=5, S=7, attn="float"),
    dict(name="attn_bool_3d", seed=10, cross=True, L=5, S=7, attn="bool", attn_batched=1,
         average_weights=0),
    dict(name="attn_float_3d", seed=11, cross=True, L=5, S=7, attn="float", attn_batched=1,
         E=12, H=3),
    dict(name="combined", seed=12, causal=1, kpm="random", attn="float", E=16, H=4, L=6),
    dict(name="combined_br_lengths", seed=13, cross=True, L=5, S=8, causal=2, kpm="random",
         key_lengths=[6, 8], attn="bool", attn_batched=1, average_weights=0),
    dict(name="fully_masked", seed=14, cross=True, L=5, S=7, key_lengths=[7, 0],
         attn=fully_masked_bool, attn_batched=1),
    dict(name="fully_masked_per_head", seed=15, cross=True, L=5, S=7,
         attn=fully_masked_bool, attn_batched=1, average_weights=0),
    dict(name="cross_kdim_vdim", seed=16, cross=True, E=12, H=3, L=5, S=7, kdim=6, vdim=10),
    dict(name="cross_kdim_vdim_masked", seed=17, cross=True, E=12, H=2, L=6, S=5, kdim=10,
         vdim=4, causal=2, kpm="random", average_weights=0),
    dict(name="no_bias", seed=18, bias=False, causal=1),
    dict(name="no_bias_kdim", seed=19, bias=False, cross=True, L=5, S=7, kdim=5, vdim=9,
         attn="float"),
    dict(name="per_head_weights", seed=20, E=16, H=4, average_weights=0),
    dict(name="unbatched_self", seed=21, unbatched=True, kpm="random", causal=1),
    dict(name="unbatched_cross", seed=22, unbatched=True, cross=True, L=5, S=7, kdim=6,
         attn="float", attn_batched=1, average_weights=0),
    dict(name="custom_scale", seed=23, cross=True, L=5, S=7, scale=0.2, E=12, H=3),
    dict(name="custom_scale_masked", seed=24, scale=0.9, causal=1, attn="bool"),
    dict(name="query_len_1", seed=25, cross=True, L=1, S=7, kpm="random"),
    dict(name="single_head", seed=26, cross=True, E=8, H=1, L=5, S=7, attn="float"),
    dict(name="larger", seed=27, cross=True, B=3, E=48, H=3, L=13, S=19, causal=2,
         kpm="random"),
]


def main():
    global OUT
    if not torch.__version__.startswith("2.13."):
        sys.exit(f"gen_golden.py: the reference is PyTorch 2.13, this is {torch.__version__} "
                 "(use the test venv: build/venv/bin/python)")
    if len(sys.argv) > 1:
        OUT = sys.argv[1]
    torch.set_num_threads(1)
    written = set()
    for case in CASES:
        written.add(os.path.basename(make_case(**case)))
    for f in os.listdir(OUT):
        if f.endswith(".safetensors") and f not in written:
            os.remove(os.path.join(OUT, f))
            print("removed stale", f)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in written)
    print("%d cases, %d bytes" % (len(written), total))
    assert total < 2 * 1024 * 1024


if __name__ == "__main__":
    main()
