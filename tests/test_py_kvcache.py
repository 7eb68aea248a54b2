"""test_py_kvcache - mha.flash_attn_with_kvcache (FlashAttention 2's decoding call, over the C
library's mha_attn_kvcache): the caches updated in place at cache_seqlens (checked bitwise,
nothing else of them touched), and the output against FlashAttention's attention_ref in float64
(flash_ref.py) over each sequence's filled prefix of the updated cache, aligned bottom-right to
it: decode (one query token) and prefill (many), new tokens or none, cache_seqlens as an int,
an int32 tensor or None (the whole cache, as FlashAttention), causal, windows, softcap, ALiBi, grouped-query heads, caches that are
views of a larger buffer; a cache overflow and other bad inputs raise ValueError and leave the
caches untouched. Paged caches (block_table): the same calls on a pool of pages against the
same rows laid out contiguously, bitwise where mha's contract says so; flash_attn_varlen_func
with block_table (packed queries of sequences decoding and prefilling together) against each
sequence's own paged call (bitwise), attention_ref and the unpaged varlen call, and its errors.
"""
import pytest
import torch

import mha
from flash_ref import attention_ref
from py_util import assert_close


def setup(B, Smax, H, Hkv, D, Dv, Lq, Lnew, seed):
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(B, Smax, Hkv, D, generator=gen)
    v_cache = torch.randn(B, Smax, Hkv, Dv, generator=gen)
    q = torch.randn(B, Lq, H, D, generator=gen)
    k = torch.randn(B, Lnew, Hkv, D, generator=gen) if Lnew else None
    v = torch.randn(B, Lnew, Hkv, Dv, generator=gen) if Lnew else None
    return gen, q, k_cache, v_cache, k, v


def updated(cache, new, lens):
    """What the cache must hold after the call: new at rows lens[b] .. of batch b."""
    want = cache.clone()
    if new is not None:
        for b, n in enumerate(lens):
            want[b, n:n + new.shape[1]] = new[b]
    return want


CASES = [  # B, Smax, H, Hkv, D, Dv, Lq, Lnew, lens, options
    (2, 40, 4, 2, 16, 16, 1, 1, [5, 17], dict(causal=True)),
    (3, 64, 8, 2, 32, 8, 1, 1, [0, 63, 30], dict()),
    (2, 40, 4, 4, 16, 16, 3, 3, [5, 20], dict(causal=True, window_size=(6, 0))),
    (1, 600, 8, 1, 64, 64, 1, 0, [550], dict(softcap=5.0, alibi="H")),
    (2, 50, 6, 3, 8, 8, 20, 20, [0, 30], dict(causal=True, alibi="BH", softmax_scale=0.4)),
    (2, 32, 2, 1, 16, 16, 4, 0, None, dict(causal=True)),
    (2, 32, 4, 2, 16, 16, 2, 2, 7, dict(window_size=(3, 1))),
    (2, 40, 4, 2, 16, 16, 3, 1, [5, 17], dict(causal=True, alibi="H", softmax_scale=0.0)),
]


def case_id(c):
    return f"B{c[0]}-Smax{c[1]}-H{c[2]}/{c[3]}-D{c[4]}/{c[5]}-L{c[6]}-new{c[7]}-lens{c[8]}-{c[9]}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kvcache_updates_in_place_and_matches_attention_ref(case):
    B, Smax, H, Hkv, D, Dv, Lq, Lnew, lens, opts = case
    gen, q, k_cache, v_cache, k, v = setup(B, Smax, H, Hkv, D, Dv, Lq, Lnew, sum(case[:8]))
    opts = dict(opts)
    alibi = opts.pop("alibi", None)
    slopes = None if alibi is None else torch.rand((H,) if alibi == "H" else (B, H),
                                                   generator=gen)
    lens_list = [Smax] * B if lens is None else [lens] * B if isinstance(lens, int) else lens
    arg = lens if not isinstance(lens, list) else torch.tensor(lens, dtype=torch.int32)
    want_k, want_v = updated(k_cache, k, lens_list), updated(v_cache, v, lens_list)
    kc_ptr = k_cache.data_ptr()
    out = mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=arg,
                                      alibi_slopes=slopes, **opts)
    assert k_cache.data_ptr() == kc_ptr
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v), "cache update"
    assert out.shape == (B, Lq, H, Dv) and out.is_contiguous()
    key_lengths = torch.tensor(lens_list) + Lnew
    ref = attention_ref(q, want_k, want_v, alibi_slopes=slopes, key_lengths=key_lengths, **opts)
    assert_close(out, ref[0], "out")


def test_no_cache_seqlens_attends_to_the_whole_cache():
    # FlashAttention without cache_seqlens (seqlens_k) takes seqlen_k = seqlen_cache: q attends
    # to every row of the cache, not to an empty one; new tokens need cache_seqlens there
    gen, q, k_cache, v_cache, k, v = setup(2, 12, 4, 2, 8, 8, 3, 1, 11)
    slopes = torch.rand(4, generator=gen)
    before = k_cache.clone(), v_cache.clone()
    for opts in (dict(), dict(causal=True, alibi_slopes=slopes)):
        out, lse = mha.flash_attn_with_kvcache(q, k_cache, v_cache, return_softmax_lse=True,
                                               **opts)
        ref = attention_ref(q, k_cache, v_cache, **opts)
        assert_close(out, ref[0], f"out {opts}")
        assert_close(lse, ref[1], f"lse {opts}")
    pad = torch.tensor([4, 12], dtype=torch.int32)  # sequence 1 sees no key: out 0
    out = mha.flash_attn_with_kvcache(q, k_cache, v_cache, cache_leftpad=pad, causal=True)
    assert_close(out[:1], attention_ref(q[:1], k_cache[:1, 4:], v_cache[:1, 4:],
                                        causal=True)[0], "leftpad")
    assert torch.count_nonzero(out[1]) == 0
    with pytest.raises(ValueError, match=r"flash_attn_with_kvcache: cache_seqlens: got None "
                                         r"with new tokens k, v"):
        mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v)
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])


def test_caches_as_views_of_one_buffer_and_decode_steps():
    # FlashAttention's usual cache: one [B, Smax, 2, Hkv, D] buffer; three decode steps, the
    # caller advancing cache_seqlens, equal attention over the whole sequence so far
    gen = torch.Generator().manual_seed(2)
    B, Smax, H, Hkv, D = 2, 16, 4, 2, 8
    kv = torch.zeros(B, Smax, 2, Hkv, D)
    k_cache, v_cache = kv[:, :, 0], kv[:, :, 1]
    ks, vs = torch.randn(B, 3, Hkv, D, generator=gen), torch.randn(B, 3, Hkv, D, generator=gen)
    qs = torch.randn(B, 3, H, D, generator=gen)
    lens = torch.zeros(B, dtype=torch.int32)
    for t in range(3):
        out = mha.flash_attn_with_kvcache(qs[:, t:t + 1], k_cache, v_cache, ks[:, t:t + 1],
                                          vs[:, t:t + 1], cache_seqlens=lens, causal=True)
        lens += 1
        ref = attention_ref(qs[:, t:t + 1], ks[:, :t + 1], vs[:, :t + 1], causal=True)
        assert_close(out, ref[0], f"step {t}")
    assert torch.equal(kv[:, :3, 0], ks) and torch.equal(kv[:, :3, 1], vs)
    assert torch.count_nonzero(kv[:, 3:]) == 0


def test_overflow_and_bad_inputs_leave_the_caches_untouched():
    _, q, k_cache, v_cache, k, v = setup(2, 10, 4, 2, 8, 8, 1, 3, 5)
    before = k_cache.clone(), v_cache.clone()
    lens = torch.tensor([8, 0], dtype=torch.int32)  # 8 + 3 new > 10 rows
    with pytest.raises(ValueError, match=r"mha_attn_kvcache: cache_seqlens\[0\]: got 8"):
        mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens)
    bad = [
        (dict(k=k, v=None), "flash_attn_with_kvcache: k, v: got only k, expected both"),
        (dict(k=k, v=v, cache_seqlens=torch.tensor([1, 2])),
         "flash_attn_with_kvcache: cache_seqlens.dtype: got torch.int64, expected torch.int32"),
        (dict(cache_seqlens=torch.tensor([1, 2, 3], dtype=torch.int32)),
         "flash_attn_with_kvcache: cache_seqlens: got shape [3], expected [2] (batch) or an int"),
        (dict(cache_seqlens=1.5), "flash_attn_with_kvcache: cache_seqlens: got float"),
        (dict(k=torch.randn(2, 3, 2, 4), v=torch.randn(2, 3, 2, 8)),
         "flash_attn_with_kvcache: k: got shape [2, 3, 2, 4], expected [2, ?, ?, 8]"),
        (dict(alibi_slopes=torch.rand(3)),
         "flash_attn_with_kvcache: alibi_slopes: got shape [3], expected [4] or [2, 4]"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError) as e:
            mha.flash_attn_with_kvcache(q, k_cache, v_cache, **kw)
        assert msg in str(e.value), str(e.value)
    with pytest.raises(ValueError, match=r"k_cache.stride\(\): got .*the cache is updated in "
                                         r"place"):
        mha.flash_attn_with_kvcache(q, torch.randn(2, 10, 2, 16)[..., ::2], v_cache)
    with pytest.raises(ValueError, match=r"q.dtype: got torch.float64"):
        mha.flash_attn_with_kvcache(q.double(), k_cache, v_cache)
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])


def test_a_cache_expanded_over_the_batch_is_refused():
    # expand() gives every batch entry the same memory: appending each sequence's new token
    # there would make them overwrite each other (torch refuses writes into such views too)
    _, q, k_cache, v_cache, k, v = setup(2, 10, 4, 2, 8, 8, 1, 1, 6)
    kb, vb = k_cache[:1].clone(), v_cache[:1].clone()
    ke, ve = kb.expand(2, -1, -1, -1), vb.expand(2, -1, -1, -1)
    with pytest.raises(ValueError, match=r"mha_attn_kvcache: k_cache: got a view whose elements "
                                         r"share memory \(a stride-0 dimension"):
        mha.flash_attn_with_kvcache(q, ke, ve, k, v, cache_seqlens=3)
    assert torch.equal(kb, k_cache[:1]) and torch.equal(vb, v_cache[:1])


@pytest.mark.parametrize("Lq", [1, 24], ids=["decode", "prefill"])
def test_without_new_tokens_the_caches_are_only_read(Lq):
    # as in FlashAttention, caches that are not written may share memory: a prompt's cache
    # expand()ed over the batch (beams, samples), one tensor as k_cache and v_cache
    _, q, k_cache, v_cache, _, _ = setup(3, 40, 4, 2, 8, 8, Lq, 0, 12)
    shared = k_cache[:1].clone()
    lens = torch.tensor([30, 25, 40], dtype=torch.int32)
    for kc, vc in ((shared.expand(3, -1, -1, -1), v_cache), (k_cache, k_cache),
                   (shared.expand(3, -1, -1, -1), shared.expand(3, -1, -1, -1))):
        before = kc.clone(), vc.clone()
        out = mha.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True)
        ref = attention_ref(q, before[0], before[1], causal=True, key_lengths=lens)
        assert_close(out, ref[0], "out")
        assert torch.equal(kc, before[0]) and torch.equal(vc, before[1])


# -- FlashAttention 2's full signature ----------------------------------------------------------

def test_positional_arguments_in_flash_attention_order():
    # (q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, ...): code written for
    # flash_attn passes cache_seqlens eighth
    _, q, k_cache, v_cache, k, v = setup(2, 12, 4, 2, 8, 8, 1, 1, 7)
    kc2, vc2 = k_cache.clone(), v_cache.clone()
    lens = torch.tensor([3, 5], dtype=torch.int32)
    a = mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, None, None, lens)
    b = mha.flash_attn_with_kvcache(q, kc2, vc2, k=k, v=v, cache_seqlens=lens)
    assert torch.equal(a, b) and torch.equal(k_cache, kc2) and torch.equal(v_cache, vc2)
    assert torch.equal(k_cache[0, 3], k[0, 0]) and torch.equal(k_cache[1, 5], k[1, 0])


@pytest.mark.parametrize("causal", [False, True])
def test_return_softmax_lse(causal):
    _, q, k_cache, v_cache, k, v = setup(2, 20, 4, 2, 8, 8, 3, 3, 8)
    lens = torch.tensor([4, 0], dtype=torch.int32)
    out, lse = mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens,
                                           causal=causal, num_splits=3,
                                           return_softmax_lse=True)
    ref = attention_ref(q, k_cache, v_cache, causal=causal, key_lengths=lens + 3)
    assert lse.shape == (2, 4, 3) and lse.dtype == torch.float32
    assert_close(out, ref[0], "out")
    assert_close(lse, ref[1], "lse")
    assert torch.equal(mha.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens + 3,
                                                   causal=causal), out)


def test_cache_batch_idx_picks_each_sequences_cache():
    gen, q, _, _, k, v = setup(3, 16, 4, 2, 8, 8, 2, 2, 9)
    k_cache, v_cache = torch.randn(5, 16, 2, 8, generator=gen), torch.randn(5, 16, 2, 8,
                                                                           generator=gen)
    idx = torch.tensor([4, 0, 2], dtype=torch.int32)
    lens = torch.tensor([6, 1, 9], dtype=torch.int32)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    for b, (r, n) in enumerate(zip(idx.tolist(), lens.tolist())):
        want_k[r, n:n + 2], want_v[r, n:n + 2] = k[b], v[b]
    out = mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens,
                                      cache_batch_idx=idx, causal=True)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    ref = attention_ref(q, want_k[idx.long()], want_v[idx.long()], causal=True,
                        key_lengths=lens + 2)
    assert_close(out, ref[0], "out")
    with pytest.raises(ValueError, match=r"cache_batch_idx: got 5, expected an index into the "
                                         r"caches' 5 batches"):
        mha.flash_attn_with_kvcache(q, k_cache, v_cache, cache_batch_idx=torch.tensor(
            [0, 5, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"k_cache: got shape \[5, 16, 2, 8\], expected batch 3"):
        mha.flash_attn_with_kvcache(q, k_cache, v_cache)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


@pytest.mark.parametrize("opts", [dict(causal=True), dict(window_size=(2, 0)),
                                  dict(alibi=True)])
def test_cache_leftpad_starts_each_sequence_later(opts):
    gen, q, k_cache, v_cache, k, v = setup(2, 20, 4, 2, 8, 8, 2, 2, 10)
    opts = dict(opts)
    slopes = torch.rand(2, 4, generator=gen) if opts.pop("alibi", False) else None
    lens = torch.tensor([7, 12], dtype=torch.int32)
    pad = torch.tensor([3, 0], dtype=torch.int32)
    want_k, want_v = updated(k_cache, k, lens.tolist()), updated(v_cache, v, lens.tolist())
    out = mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lens,
                                      cache_leftpad=pad, alibi_slopes=slopes, **opts)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    for b in range(2):  # sequence b: cache rows pad[b] .. lens[b] + 2, positions from there
        p0, n = int(pad[b]), int(lens[b]) + 2
        ref = attention_ref(q[b:b + 1], want_k[b:b + 1, p0:n], want_v[b:b + 1, p0:n],
                            alibi_slopes=None if slopes is None else slopes[b:b + 1], **opts)
        assert_close(out[b:b + 1], ref[0], f"sequence {b}")
    with pytest.raises(ValueError, match=r"cache_leftpad\[1\]: got 13, expected 0 .. "
                                         r"cache_seqlens\[1\] = 12"):
        mha.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens,
                                    cache_leftpad=torch.tensor([0, 13], dtype=torch.int32))


BATCH_IDX = torch.tensor([1, 0], dtype=torch.int32)
PER_SEQUENCE = [  # what only the second sequence gets wrong, with cache_batch_idx or leftpad
    (dict(cache_seqlens=torch.tensor([2, 8], dtype=torch.int32)),
     "flash_attn_with_kvcache: cache_seqlens[1]: got 8, expected at most 7 (cache overflow: "
     "8 + 3 new tokens exceed the cache's 10 rows)"),
    (dict(cache_seqlens=torch.tensor([2, -1], dtype=torch.int32)),
     "flash_attn_with_kvcache: cache_seqlens[1]: got -1, expected >= 0"),
    (dict(cache_seqlens=2, alibi_slopes=torch.tensor([[.5, .5, .5, .5], [.5, .5, float("nan"),
                                                                         .5]])),
     "flash_attn_with_kvcache: alibi_slopes[1, 2]: got nan, expected a finite slope"),
]


@pytest.mark.parametrize("extra", [dict(cache_batch_idx=BATCH_IDX),
                                   dict(cache_leftpad=torch.tensor([0, 0], dtype=torch.int32))],
                         ids=["cache_batch_idx", "cache_leftpad"])
@pytest.mark.parametrize("kw,msg", PER_SEQUENCE, ids=["overflow", "negative", "alibi"])
def test_a_later_sequences_error_leaves_every_cache_untouched(extra, kw, msg):
    # these options run one library call per sequence: the first sequence's new rows must not
    # be appended when the second one fails, and the message names the second one
    _, q, k_cache, v_cache, k, v = setup(2, 10, 4, 2, 8, 8, 1, 3, 11)
    before = k_cache.clone(), v_cache.clone()
    with pytest.raises(ValueError) as e:
        mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, **kw, **extra)
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])
    assert msg in str(e.value), str(e.value)


def rotary_ref(x, cos, sin, pos, interleaved):
    """FlashAttention's apply_rotary_emb in float64: x [B, T, H, D], positions pos [B, T]."""
    x = x.double()
    rd = 2 * cos.shape[1]
    c, s = cos.double()[pos].unsqueeze(2), sin.double()[pos].unsqueeze(2)
    y = x.clone()
    if interleaved:
        a, b = x[..., 0:rd:2], x[..., 1:rd:2]
        y[..., 0:rd:2], y[..., 1:rd:2] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., :rd // 2], x[..., rd // 2:rd]
        y[..., :rd // 2], y[..., rd // 2:rd] = a * c - b * s, a * s + b * c
    return y


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_embeddings(interleaved, causal, dtype):
    gen, q, k_cache, v_cache, k, v = setup(2, 24, 4, 2, 16, 8, 3, 3, 11)
    q, k_cache, v_cache, k, v = (t.to(dtype) for t in (q, k_cache, v_cache, k, v))
    rd, seqlen_ro = 12, 30  # rotary_dim 12 of headdim 16: the last 4 dimensions not rotated
    angle = torch.rand(seqlen_ro, rd // 2, generator=gen) * 6
    cos, sin = angle.cos(), angle.sin()
    lens = torch.tensor([5, 0], dtype=torch.int32)
    q0, k0 = q.clone(), k.clone()
    out = mha.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cos, sin, lens, causal=causal,
                                      rotary_interleaved=interleaved)
    assert torch.equal(q, q0) and torch.equal(k, k0), "q and k are not modified"
    base = lens.long().view(2, 1)
    kpos = base + torch.arange(3)
    qpos = base + torch.arange(3) if causal else base.expand(2, 3)
    kr = rotary_ref(k, cos, sin, kpos, interleaved)
    qr = rotary_ref(q, cos, sin, qpos, interleaved)
    for b in range(2):  # the rotated keys were appended (rounded once to the cache's dtype)
        n = int(lens[b])
        tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
        assert_close(k_cache[b, n:n + 3], kr[b], f"rotated keys of {b}", tol=tol)
    ref = attention_ref(qr.to(dtype), k_cache, v_cache, causal=causal, key_lengths=lens + 3)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    assert_close(out, ref[0], "out", tol=tol)


def test_rotary_positions_with_a_window_that_is_no_window():
    # any negative side of window_size is unbounded (FlashAttention's), so (-2, -1) is no
    # window: q is rotated at cache_seqlens as with (-1, -1), not at per-row positions (the
    # rotary code compared the raw tuple with (-1, -1) and took (-2, -1) for a local window)
    gen, q, k_cache, v_cache, k, v = setup(1, 16, 2, 2, 8, 8, 3, 2, 11)
    angle = torch.rand(20, 4, generator=gen) * 6
    outs = []
    for window in ((-1, -1), (-2, -1), (-1, -5)):
        kc, vc = k_cache.clone(), v_cache.clone()
        outs.append(mha.flash_attn_with_kvcache(q, kc, vc, k, v, angle.cos(), angle.sin(), 4,
                                                window_size=window))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_rotary_positions_with_a_window_wider_than_the_cache():
    # FlashAttention takes a window side >= the cache's rows (seqlen_cache, 16 here) as
    # unbounded, so such a window is not local: q is rotated at cache_seqlens as without a
    # window (the mask is the same too); a side narrower than the cache is local: q's rows at
    # cache_seqlens + i (the keys are rotated the same way in every case)
    gen, q, k_cache, v_cache, k, v = setup(1, 16, 2, 2, 8, 8, 3, 2, 11)
    angle = torch.rand(20, 4, generator=gen) * 6

    def run(window):
        kc, vc = k_cache.clone(), v_cache.clone()
        return mha.flash_attn_with_kvcache(q, kc, vc, k, v, angle.cos(), angle.sin(), 4,
                                           window_size=window), kc
    none, kc0 = run((-1, -1))
    for window in ((16, -1), (100, 100), (-1, 16)):
        out, kc = run(window)
        assert torch.equal(out, none) and torch.equal(kc, kc0), window
    # narrower on one side: local, q's rows at their own positions (compared with a window
    # that excludes no key here but is local: (15, 15) on 16 rows, 4 + 2 = 6 of them used)
    local, kc = run((15, -1))
    assert torch.equal(kc, kc0)
    assert torch.equal(local, run((15, 15))[0]) and torch.equal(local, run((-1, 15))[0])
    assert not torch.allclose(local, none)
    qpos = (4 + torch.arange(3)).view(1, 3)
    qr = rotary_ref(q, angle.cos(), angle.sin(), qpos, True)
    ref = attention_ref(qr.float(), kc, v_cache.clone().index_copy_(
        1, torch.arange(4, 6), v), key_lengths=torch.tensor([6], dtype=torch.int32))
    assert_close(local, ref[0], "local window out", tol=dict(atol=1e-5, rtol=1e-5))


def test_rotary_and_paging_errors():
    gen, q, k_cache, v_cache, k, v = setup(2, 12, 4, 2, 8, 8, 1, 1, 12)
    before = k_cache.clone(), v_cache.clone()
    cos = sin = torch.ones(12, 2)
    cases = [
        (dict(rotary_cos=cos, rotary_sin=sin), ValueError, "rotary_cos: got rotary embeddings "
         "without k, v"),
        (dict(k=k, v=v, rotary_cos=cos, cache_seqlens=3), ValueError,
         "got only rotary_cos, expected both"),
        (dict(k=k, v=v, rotary_cos=torch.ones(12, 5), rotary_sin=torch.ones(12, 5),
              cache_seqlens=3), ValueError, "0 < rotary_dim <= headdim 8"),
        (dict(k=k, v=v, rotary_cos=cos[:4], rotary_sin=sin[:4], cache_seqlens=5), ValueError,
         "rotary_cos: got 4 positions, expected at least 6"),
        (dict(k=k, v=v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=3,
              cache_leftpad=torch.tensor([1, 1], dtype=torch.int32)), NotImplementedError,
         "cache_leftpad with rotary embeddings"),
        (dict(num_splits=-1), ValueError, "num_splits: got -1, expected an int >= 0"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc) as e:
            mha.flash_attn_with_kvcache(q, k_cache, v_cache, **kw)
        assert msg in str(e.value), str(e.value)
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])


def paged_setup(B, nb, page, H, Hkv, D, Dv, Lq, Lnew, seed, dtype=torch.float32):
    """A pool of pages with the blocks of B sequences in a random order (and 3 spare pages
    holding NaN, never read), and the same rows laid out contiguously [B, nb * page, ...]."""
    gen = torch.Generator().manual_seed(seed)
    P = B * nb + 3
    kp = torch.full((P, page, Hkv, D), float("nan"), dtype=dtype)
    vp = torch.full((P, page, Hkv, Dv), float("nan"), dtype=dtype)
    table = torch.randperm(P, generator=gen)[:B * nb].reshape(B, nb).to(torch.int32)
    idx = table.long()
    kp[idx] = torch.randn(B, nb, page, Hkv, D, generator=gen).to(dtype)
    vp[idx] = torch.randn(B, nb, page, Hkv, Dv, generator=gen).to(dtype)
    kc = kp[idx].reshape(B, nb * page, Hkv, D).clone()
    vc = vp[idx].reshape(B, nb * page, Hkv, Dv).clone()
    q = torch.randn(B, Lq, H, D, generator=gen).to(dtype)
    k = torch.randn(B, Lnew, Hkv, D, generator=gen).to(dtype) if Lnew else None
    v = torch.randn(B, Lnew, Hkv, Dv, generator=gen).to(dtype) if Lnew else None
    return gen, table, kp, vp, kc, vc, q, k, v


PAGED = [  # B, blocks, page, H, Hkv, D, Dv, Lq, Lnew, lens, options
    (2, 3, 512, 8, 2, 64, 64, 1, 1, [700, 1535], dict(causal=True)),
    (2, 6, 16, 8, 2, 32, 32, 1, 1, [37, 80], dict(causal=True)),
    (3, 20, 7, 4, 4, 16, 8, 3, 3, [0, 60, 137], dict(causal=True, window_size=(20, 0))),
    (2, 9, 5, 4, 2, 16, 16, 20, 20, [0, 25], dict(causal=True, alibi_slopes=True)),
    (2, 4, 16, 4, 2, 16, 16, 2, 0, None, dict(softcap=3.0)),
    (1, 70, 1, 2, 1, 8, 8, 1, 1, 30, dict(causal=True)),
]


@pytest.mark.parametrize("case", PAGED, ids=lambda c: f"B{c[0]}-blocks{c[1]}-page{c[2]}-L{c[7]}-"
                         f"new{c[8]}-lens{c[9]}-{sorted(c[10])}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_caches_match_the_contiguous_caches(case, dtype):
    B, nb, page, H, Hkv, D, Dv, Lq, Lnew, lens, opts = case
    gen, table, kp, vp, kc, vc, q, k, v = paged_setup(B, nb, page, H, Hkv, D, Dv, Lq, Lnew,
                                                      sum(case[:9]), dtype)
    opts = dict(opts)
    if opts.get("alibi_slopes"):
        opts["alibi_slopes"] = torch.rand(B, H, generator=gen)
    arg = torch.tensor(lens, dtype=torch.int32) if isinstance(lens, list) else lens
    want = mha.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=arg, **opts)
    ptr = kp.data_ptr()
    out = mha.flash_attn_with_kvcache(q, kp, vp, k, v, cache_seqlens=arg, block_table=table,
                                      **opts)
    assert kp.data_ptr() == ptr
    # the pool's pages in table order hold the contiguous caches' rows after their call
    assert torch.equal(kp[table.long()].reshape(kc.shape), kc)
    assert torch.equal(vp[table.long()].reshape(vc.shape), vc)
    assert not kp[[i for i in range(kp.shape[0]) if i not in table.flatten().tolist()]].isfinite().any()
    rows = Lq * H // Hkv  # per key/value head: decoding up to 16, or 64 of grouped heads
    if page % 512 == 0 or rows > (16 if H == Hkv else 64):  # one page per chunk, or a prefill
        assert torch.equal(out, want)
    else:  # chunks spanning pages: combined page by page
        tol = 2e-6 if dtype == torch.float32 else 2e-2
        assert (out.float() - want.float()).abs().max() <= tol
    lens_list = [nb * page] * B if lens is None else [lens] * B if isinstance(lens, int) else lens
    ref = attention_ref(q, kc, vc, key_lengths=torch.tensor(lens_list) + Lnew, **opts)
    if dtype == torch.float32:
        assert_close(out, ref[0], "out")


def test_paged_errors_leave_the_pool_untouched():
    gen, table, kp, vp, kc, vc, q, k, v = paged_setup(2, 4, 8, 4, 2, 8, 8, 1, 1, 5)
    before = kp.clone(), vp.clone()
    lens = torch.tensor([3, 9], dtype=torch.int32)
    shared = table.clone()
    shared[1, 1] = shared[0, 0]  # sequence 1 writes its new row to sequence 0's first page
    far = table.clone()
    far[0, 0] = 100
    cases = [
        (dict(block_table=table.long()), ValueError, "block_table.dtype: got torch.int64, "
         "expected torch.int32"),
        (dict(block_table=table[:1]), ValueError, "block_table: got shape [1, 4], expected [2, "
         "max_num_blocks_per_seq]"),
        (dict(block_table=table, cache_batch_idx=torch.tensor([0, 1], dtype=torch.int32)),
         ValueError, "paged caches do not support cache_batch_idx"),
        (dict(block_table=table, cache_leftpad=torch.tensor([0, 1], dtype=torch.int32)),
         NotImplementedError, "cache_leftpad with block_table"),
        (dict(block_table=far), ValueError, "block_table[0][0]: got 100, expected a page in "
         "[0, 11)"),
        (dict(block_table=shared), ValueError, "which new rows are written to, also used by "
         "block_table["),
        (dict(block_table=table, cache_seqlens=torch.tensor([3, 32], dtype=torch.int32)),
         ValueError, "cache_seqlens[1]: got 32, expected at most 31"),
    ]
    for kw, exc, msg in cases:
        kw.setdefault("cache_seqlens", lens)
        with pytest.raises(exc) as e:
            mha.flash_attn_with_kvcache(q, kp, vp, k, v, **kw)
        assert msg in str(e.value), str(e.value)
        assert torch.equal(kp.view(torch.int32), before[0].view(torch.int32))  # NaN: bits
        assert torch.equal(vp.view(torch.int32), before[1].view(torch.int32))
    # sequences sharing a page they only read (no new tokens): the contiguous result
    table2 = table.clone()
    table2[1, 0] = table[0, 0]
    kc2, vc2 = kc.clone(), vc.clone()
    kc2[1, :8], vc2[1, :8] = kc[0, :8], vc[0, :8]
    out = mha.flash_attn_with_kvcache(q, kp, vp, cache_seqlens=lens, block_table=table2)
    want = mha.flash_attn_with_kvcache(q, kc2, vc2, cache_seqlens=lens)
    assert (out - want).abs().max() <= 2e-6  # 8-row pages: the chunk combined page by page


# ------------------------------------------------------------------------------------------
# flash_attn_varlen_func with block_table (mha_attn_varlen_paged): packed queries of many
# sequences, decoding and prefilling in one call, against their paged caches
# ------------------------------------------------------------------------------------------
def varlen_paged_setup(Lq, Lk, page, H, Hkv, D, Dv, seed, dtype=torch.float32):
    """Sequences of Lq[s] queries and Lk[s] keys: the packed q, a pool whose spare rows and
    pages hold NaN (a stray read shows), its table (pages in a random order), the prefix
    sums."""
    gen = torch.Generator().manual_seed(seed)
    nbs = [(n + page - 1) // page for n in Lk]
    nb, used = max(nbs + [1]), sum(nbs)
    P = used + 3
    kp = torch.full((P, page, Hkv, D), float("nan"), dtype=dtype)
    vp = torch.full((P, page, Hkv, Dv), float("nan"), dtype=dtype)
    order = torch.randperm(P, generator=gen).tolist()
    table = torch.full((len(Lq), nb), 10 ** 6, dtype=torch.int32)  # unused blocks: never read
    for s, n in enumerate(Lk):
        for i in range(nbs[s]):
            x = order.pop()
            table[s, i] = x
            rows = min(page, n - i * page)
            kp[x, :rows] = torch.randn(rows, Hkv, D, generator=gen).to(dtype)
            vp[x, :rows] = torch.randn(rows, Hkv, Dv, generator=gen).to(dtype)
    q = torch.randn(sum(Lq), H, D, generator=gen).to(dtype)
    cu = [torch.tensor([0] + torch.tensor(x).cumsum(0).tolist(), dtype=torch.int32)
          for x in (Lq, Lk)]
    return gen, q, kp, vp, table, cu[0], cu[1]


def gathered(pool, table, s, n):
    """Sequence s's first n rows of a pool, contiguous [n, Hkv, X]."""
    page = pool.shape[1]
    rows = [pool[int(table[s, j // page]), j % page] for j in range(n)]
    return torch.stack(rows) if rows else pool.new_zeros((0,) + tuple(pool.shape[2:]))


VARLEN_PAGED = [  # Lq, Lk, page, H, Hkv, D, Dv, options
    ([1, 1, 5, 0, 1, 40, 3], [30, 0, 100, 7, 200, 120, 2], 16, 8, 2, 32, 32, dict(causal=True)),
    ([1, 1, 1, 1], [600, 1, 513, 1100], 512, 8, 1, 64, 64, dict(causal=True, softcap=4.0)),
    ([3, 24, 2, 2], [3, 40, 90, 0], 7, 4, 4, 16, 8, dict(causal=True, window_size=(9, 0))),
    ([6, 1, 17], [6, 45, 50], 1, 4, 2, 16, 16, dict(causal=True, alibi_slopes=True)),
    ([2, 9, 1], [20, 9, 3], 5, 6, 3, 8, 8, dict(softmax_scale=0.3)),
]


@pytest.mark.parametrize("case", VARLEN_PAGED, ids=lambda c: f"Lq{c[0]}-Lk{c[1]}-page{c[2]}-"
                         f"H{c[3]}/{c[4]}-{sorted(c[7])}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_varlen_paged_matches_each_sequences_paged_call_and_attention_ref(case, dtype):
    Lq, Lk, page, H, Hkv, D, Dv, opts = case
    gen, q, kp, vp, table, cq, ck = varlen_paged_setup(Lq, Lk, page, H, Hkv, D, Dv,
                                                       sum(Lq) + sum(Lk), dtype)
    opts = dict(opts)
    if opts.get("alibi_slopes"):
        opts["alibi_slopes"] = torch.rand(len(Lq), H, generator=gen)
    before = kp.clone(), vp.clone()
    out = mha.flash_attn_varlen_func(q, kp, vp, cq, ck, max(Lq), max(Lk), block_table=table,
                                     **opts)
    assert out.shape == (sum(Lq), H, Dv) and out.dtype == dtype
    # the pools are only read
    assert torch.equal(kp.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       before[0].view(torch.int16 if dtype != torch.float32 else torch.int32))
    for s, (L, S) in enumerate(zip(Lq, Lk)):
        if L == 0:
            continue
        rows = out[int(cq[s]):int(cq[s + 1])]
        o = dict(opts)
        if "alibi_slopes" in o:
            o["alibi_slopes"] = o["alibi_slopes"][s:s + 1]
        # bitwise the sequence's own paged decoding call (the C contract)
        want = mha.flash_attn_with_kvcache(q[None, int(cq[s]):int(cq[s + 1])], kp, vp,
                                           cache_seqlens=torch.tensor([S], dtype=torch.int32),
                                           block_table=table[s:s + 1], **o)
        assert torch.equal(rows, want[0]), f"sequence {s}"
        if dtype == torch.float32:
            k, v = gathered(kp, table, s, S), gathered(vp, table, s, S)
            ref = attention_ref(q[None, int(cq[s]):int(cq[s + 1])], k[None], v[None], **o)
            assert_close(rows, ref[0][0], f"sequence {s}")


def test_varlen_paged_gives_the_unpaged_varlen_result():
    Lq, Lk = [1, 4, 1, 30], [50, 4, 1, 64]
    gen, q, kp, vp, table, cq, ck = varlen_paged_setup(Lq, Lk, 8, 8, 2, 32, 32, 11)
    k = torch.cat([gathered(kp, table, s, n) for s, n in enumerate(Lk)])
    v = torch.cat([gathered(vp, table, s, n) for s, n in enumerate(Lk)])
    out = mha.flash_attn_varlen_func(q, kp, vp, cq, ck, 30, 64, causal=True, block_table=table)
    want = mha.flash_attn_varlen_func(q, k, v, cq, ck, 30, 64, causal=True)
    assert (out - want).abs().max() <= 2e-6


def test_varlen_paged_errors():
    gen, q, kp, vp, table, cq, ck = varlen_paged_setup([1, 3], [9, 20], 8, 4, 2, 8, 8, 3)
    call = dict(q=q, k=kp, v=vp, cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=3,
                max_seqlen_k=20, block_table=table)
    far = table.clone()
    far[1, 2] = 99
    i32 = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    cases = [
        (dict(dropout_p=0.1), ValueError, "dropout_p: got 0.1 with block_table, expected 0"),
        (dict(return_attn_probs=True), NotImplementedError, "return_attn_probs with "
         "block_table"),
        (dict(q=q.clone().requires_grad_()), RuntimeError, "no gradient through paged caches"),
        (dict(k=kp[:, :, :, :4]), ValueError, "k, v: got shapes"),
        (dict(k=kp[0]), ValueError, "k: got shape [8, 2, 8], expected [num_blocks, "
         "page_block_size, nheads_k, headdim]"),
        (dict(block_table=far), ValueError, "block_table[1][2]: got 99, expected a page in"),
        (dict(block_table=table[:, :2]), ValueError, "cu_seqlens_k: got 20 keys for sequence 1, "
         "expected at most 16"),
        (dict(cu_seqlens_k=i32([0, 9, 5])), ValueError, "cu_seqlens_k[2]: got 5, expected >= 9"),
        (dict(cu_seqlens_k=i32([1, 9, 29])), ValueError, "cu_seqlens_k[0]: got 1, expected 0"),
        (dict(cu_seqlens_q=i32([0, 1, 5]), max_seqlen_q=4), ValueError, "cu_seqlens_q[2]: got "
         "5, expected <= 4 (total tokens q.shape[0])"),
        (dict(max_seqlen_k=19), ValueError, "max_seqlen_k: got 19, expected >= 20"),
        (dict(block_table=table.long()), ValueError, "block_table.dtype: got torch.int64"),
        (dict(v=vp.to(torch.bfloat16)), RuntimeError, "v.dtype: got torch.bfloat16"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc) as e:
            mha.flash_attn_varlen_func(**dict(call, **kw))
        assert msg in str(e.value), str(e.value)
    with torch.no_grad():  # no gradient needed: fine
        mha.flash_attn_varlen_func(**dict(call, q=q.clone().requires_grad_()))


def test_paged_calls_with_no_sequences():
    """batch 0 with a block_table of shape [0, max_blocks]: nothing to compute (an empty tensor's
    data_ptr() is 0, which must not reach the library as a missing table)."""
    kp, vp = torch.zeros(3, 16, 2, 8), torch.zeros(3, 16, 2, 8)
    table = torch.zeros((0, 2), dtype=torch.int32)
    cu = torch.zeros(1, dtype=torch.int32)
    with torch.no_grad():
        out = mha.flash_attn_varlen_func(torch.zeros(0, 4, 8), kp, vp, cu, cu, 0, 0,
                                         block_table=table)
    assert out.shape == (0, 4, 8)
    out = mha.flash_attn_with_kvcache(torch.zeros(0, 1, 4, 8), kp, vp,
                                      cache_seqlens=torch.zeros(0, dtype=torch.int32),
                                      block_table=table)
    assert out.shape == (0, 1, 4, 8)
    k = torch.zeros(0, 1, 2, 8)
    out = mha.flash_attn_with_kvcache(torch.zeros(0, 1, 4, 8), kp, vp, k, k,
                                      cache_seqlens=torch.zeros(0, dtype=torch.int32),
                                      block_table=table)
    assert out.shape == (0, 1, 4, 8)
