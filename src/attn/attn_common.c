/* attn_common.c - validation and dropout for the attention core (see attn_common.h). */
#include "attn_common.h"

#include <assert.h>
#include <math.h>
#include <string.h>

static uint64_t drop_threshold(float p) {
    /* P(word < thr) = thr / 2^32 ~= p; p < 1 so thr <= 2^32 - 1 after ceil for any float p
     * (p = 1: 2^32, every word below it; the kernels never see it, attn_forward and
     * attn_backward answer it before them). */
    if (!(p > 0)) return 0;
    return (uint64_t)ceil((double)p * 4294967296.0);
}

static uint64_t philox_key(uint64_t seed, uint64_t offset) {
    return seed ^ ((offset >> 32) * 0x9E3779B97F4A7C15ull);
}

static void philox_group(const mha_attn_params *p, int64_t bh, int64_t i, int64_t g,
                         uint32_t w[4]) {
    mha__philox4x32(philox_key(p->seed, p->offset), (uint32_t)g, (uint32_t)i, (uint32_t)bh,
                    (uint32_t)p->offset, w);
}

mha__attn_dropout mha__attn_dropout_make(const mha__attn_problem *pr, int64_t bh) {
    mha__attn_dropout d;
    d.key = philox_key(pr->seed, pr->offset);
    d.bh = (uint32_t)(pr->bh0 + bh);
    d.ctr3 = (uint32_t)pr->offset;
    /* drop_thr = ceil(p 2^32) <= 2^32 - 256 for a float p < 1 (validated) */
    assert(pr->drop_thr <= UINT32_MAX);
    d.thr = (uint32_t)pr->drop_thr;
    return d;
}

int mha__dropout_keep(const mha_attn_params *p, int64_t bh, int64_t i, int64_t j) {
    if (!p || !(p->dropout_p > 0)) return 1;
    uint32_t w[4];
    philox_group(p, bh, i, j >> 2, w);
    return (uint64_t)w[j & 3] >= drop_threshold(p->dropout_p);
}

mha_status mha__attn_check_mask(mha_ctx *ctx, const char *fn, const mha_mask *m, int64_t B,
                                int64_t S) {
    if (!m) return MHA_OK;
    if (m->causal != MHA_CAUSAL_NONE && m->causal != MHA_CAUSAL_TOP_LEFT &&
        m->causal != MHA_CAUSAL_BOTTOM_RIGHT)
        return mha__err(
            ctx, MHA_ERR_INVALID_ARG,
            "%s: mask->causal: got %d, expected MHA_CAUSAL_NONE, _TOP_LEFT or _BOTTOM_RIGHT", fn,
            (int)m->causal);
    if (m->attn_batched != 0 && m->attn_batched != 1)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: mask->attn_batched: got %d, expected 0 ([L, S]) or 1 ([B*H, L, S])",
                        fn, m->attn_batched);
    if (m->window && (m->window_left < -1 || m->window_right < -1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: mask->window_%s: got %lld, expected >= -1 (-1: unbounded)", fn,
                        m->window_left < -1 ? "left" : "right",
                        (long long)(m->window_left < -1 ? m->window_left : m->window_right));
    if (m->key_lengths)
        for (int64_t b = 0; b < B; b++)
            if (m->key_lengths[b] < 0 || m->key_lengths[b] > S)
                return mha__err(ctx, MHA_ERR_INVALID_ARG,
                                "%s: mask->key_lengths[%lld]: got %d, expected a value in [0, "
                                "%lld] (key length S)",
                                fn, (long long)b, (int)m->key_lengths[b], (long long)S);
    return MHA_OK;
}

mha_status mha__attn_check_alibi(mha_ctx *ctx, const char *fn, const mha_mask *m, int64_t B,
                                 int64_t H) {
    if (!m || !m->alibi_slopes) return MHA_OK;
    if (m->alibi_batched != 0 && m->alibi_batched != 1)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: mask->alibi_batched: got %d, expected 0 (slopes [H]) or 1 ([B, H])",
                        fn, m->alibi_batched);
    const int64_t n = (m->alibi_batched ? B : 1) * H;
    for (int64_t x = 0; x < n; x++)
        if (!isfinite(m->alibi_slopes[x]))
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: mask->alibi_slopes[%lld]: got %g, expected a finite slope", fn,
                            (long long)x, (double)m->alibi_slopes[x]);
    return MHA_OK;
}

mha_status mha__attn_check_aliases(mha_ctx *ctx, const char *fn, const mha__attn_arg *outs,
                                   int nout, const mha__attn_arg *ins, int nin) {
    for (int o = 0; o < nout; o++) {
        if (mha__tensor_self_overlaps(outs[o].t))
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: %s: got a view whose elements share memory (a stride-0 "
                            "dimension, as from expand()?), expected distinct elements (it is "
                            "written)",
                            fn, outs[o].name);
        /* against every input, then against the outputs before it */
        for (int i = 0; i < nin + o; i++) {
            const mha__attn_arg *x = i < nin ? &ins[i] : &outs[i - nin];
            if (outs[o].t && x->t && mha__tensors_overlap(outs[o].t, x->t))
                return mha__err(ctx, MHA_ERR_INVALID_ARG,
                                "%s: %s overlaps %s (outputs must not share memory with inputs "
                                "or other outputs)",
                                fn, outs[o].name, x->name);
        }
    }
    return MHA_OK;
}

mha_status mha__attn_check_params(mha_ctx *ctx, const char *fn, const mha_attn_params *p) {
    if (!(p->dropout_p >= 0 && p->dropout_p <= 1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: p->dropout_p: got %g, expected a value in [0, 1]", fn,
                        (double)p->dropout_p);
    if (!isfinite(p->scale))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: p->scale: got %g, expected a finite value (0: 1/sqrt(D))", fn,
                        (double)p->scale);
    if (!(p->softcap >= 0) || !isfinite(p->softcap))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: p->softcap: got %g, expected a finite value >= 0 (0: off)", fn,
                        (double)p->softcap);
    return MHA_OK;
}

mha_status mha__attn_check_inputs(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                  const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                  const mha_mask *mask, mha__attn_problem *pr) {
    mha_status st;
    memset(pr, 0, sizeof *pr);
    mha_attn_params dp = mha_attn_params_default();
    if (!p) p = &dp;
    if ((st = mha__attn_check_params(ctx, fn, p))) return st;
    const mha_dtype dt = q ? q->dtype : MHA_DTYPE_F32;
    if (dt != MHA_DTYPE_F32 && dt != MHA_DTYPE_BF16 && dt != MHA_DTYPE_F16)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: q.dtype: got %s, expected float32, bfloat16 or float16", fn,
                        mha_dtype_name(dt));
    if ((st = mha__check_tensor_as(ctx, fn, "q", q, dt, 4, NULL, "[B, H, L, D]"))) return st;
    int64_t B = q->shape[0], H = q->shape[1], L = q->shape[2], D = q->shape[3];
    if (D < 1)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: q.shape[3]: got %lld, expected >= 1 (head dim)",
                        fn, (long long)D);
    int64_t wk[4] = {B, -1, -1, D};
    if ((st = mha__check_tensor_as(ctx, fn, "k", k, dt, 4, NULL, "[B, Hkv, S, D]"))) return st;
    static const char *const kwhy[4] = {"q batch", "", "", "q head dim"};
    for (int d = 0; d < 4; d++)
        if (wk[d] >= 0 && k->shape[d] != wk[d])
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: k.shape[%d]: got %lld, expected %lld (%s)", fn,
                            d, (long long)k->shape[d], (long long)wk[d], kwhy[d]);
    const int64_t Hkv = k->shape[1];
    /* Hkv divides H; H = 0 (no query head) is an empty problem as B, L or S = 0 are, and 0
     * is a multiple of any Hkv, 0 included */
    if (H > 0 && (Hkv < 1 || H % Hkv != 0))
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: k.shape[1]: got %lld, expected a divisor of q's %lld heads "
                        "(grouped-query attention: query head h uses key/value head h / (H / Hkv))",
                        fn, (long long)Hkv, (long long)H);
    int64_t S = k->shape[2];
    if ((st = mha__check_tensor_as(ctx, fn, "v", v, dt, 4, NULL, "[B, Hkv, S, Dv]"))) return st;
    int64_t wv[3] = {B, Hkv, S};
    static const char *const vwhy[3] = {"q batch", "k heads", "k length"};
    for (int d = 0; d < 3; d++)
        if (v->shape[d] != wv[d])
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: v.shape[%d]: got %lld, expected %lld (%s)", fn,
                            d, (long long)v->shape[d], (long long)wv[d], vwhy[d]);
    pr->B = B, pr->H = H, pr->L = L, pr->S = S, pr->D = D, pr->Dv = v->shape[3];
    pr->Hkv = Hkv, pr->kv_group = H > 0 ? H / Hkv : 1, pr->dt = dt; /* 1: no head divides */
    pr->scale = p->scale != 0 ? p->scale : (float)(1.0 / sqrt((double)D));
    pr->dropout_p = p->dropout_p;
    /* dropout_p = 1 (every weight dropped) never reaches the kernels: keep_scale unused */
    pr->keep_scale = p->dropout_p >= 1  ? 0.0f
                     : p->dropout_p > 0 ? (float)(1.0 / (1.0 - (double)p->dropout_p))
                                        : 1.0f;
    pr->drop_thr = drop_threshold(p->dropout_p);
    pr->seed = p->seed;
    pr->offset = p->offset;

    pr->softcap = p->softcap;

    pr->mask = mask ? *mask : mha_mask_default();
    if ((st = mha__attn_check_mask(ctx, fn, &pr->mask, B, S))) return st;
    if ((st = mha__attn_check_alibi(ctx, fn, &pr->mask, B, H))) return st;
    /* causal: key j allowed iff j <= i + (S - L) (bottom-right) or j <= i (top-left) */
    const int64_t causal_shift = pr->mask.causal == MHA_CAUSAL_BOTTOM_RIGHT ? S - L : 0;
    pr->hi_shift = pr->mask.causal != MHA_CAUSAL_NONE ? causal_shift : MHA__ATTN_NO_DIAG;
    pr->lo_shift = -MHA__ATTN_NO_DIAG;
    if (pr->mask.window) { /* bounds beyond +-(L + S) exclude nothing: clamp them there */
        const int64_t far = L + S + 1;
        if (pr->mask.window_right >= 0) {
            int64_t r = pr->mask.window_right < far ? pr->mask.window_right : far;
            if (S - L + r < pr->hi_shift) pr->hi_shift = S - L + r;
        }
        if (pr->mask.window_left >= 0)
            pr->lo_shift = S - L - (pr->mask.window_left < far ? pr->mask.window_left : far);
    }
    return MHA_OK;
}

void mha__attn_pf_add(mha__attn_pf *pf, const mha_tensor *t, int64_t b, int64_t h, int64_t r0,
                      int64_t r1, int64_t x) {
    if (r1 <= r0 || x <= 0 || pf->nspan == MHA__PF_SPANS) return;
    const int64_t es = (int64_t)mha__tensor_elsize(t), ld = t->stride[2] * es;
    const char *base = mha__attn_row_at(t, b, h, r0);
    int64_t rows = r1 - r0, bytes = x * es;
    if (ld == bytes) bytes *= rows, rows = 1;
    pf->s[pf->nspan].base = base, pf->s[pf->nspan].rows = rows;
    pf->s[pf->nspan].ld = ld, pf->s[pf->nspan].bytes = bytes;
    pf->nspan++;
}

void mha__attn_pf_flush(mha__attn_pf *pf) {
    while (pf->left > 0 || mha__attn_pf_next(pf))
        for (; pf->left > 0; pf->left--, pf->p += 64) __builtin_prefetch(pf->p, 0, 2);
}

void mha__attn_zero_view(const mha_tensor *t) {
    const size_t row = mha__tensor_elsize(t) * (size_t)t->shape[3];
    for (int64_t b = 0; b < t->shape[0] && row > 0; b++)
        for (int64_t h = 0; h < t->shape[1]; h++)
            for (int64_t i = 0; i < t->shape[2]; i++) memset(mha__attn_row_at(t, b, h, i), 0, row);
}

/* cu: int32 [batch + 1], 0 = cu[0] <= cu[1] <= ... <= cu[batch] = total (t's token rows). */
mha_status mha__attn_check_cu(mha_ctx *ctx, const char *fn, const char *name, const int32_t *cu,
                              int64_t batch, int64_t total, const char *t) {
    if (!cu)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: %s: got NULL, expected int32 [batch + 1] = [%lld] prefix sums", fn,
                        name, (long long)(batch + 1));
    for (int64_t s = 0; s <= batch; s++) {
        const long long c = cu[s];
        if (s == 0 && c != 0)
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: %s[0]: got %lld, expected 0 (prefix sums start at 0)", fn, name,
                            c);
        if (s > 0 && c < cu[s - 1])
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: %s[%lld]: got %lld, expected >= %d (%s[%lld]: prefix sums do "
                            "not decrease)",
                            fn, name, (long long)s, c, (int)cu[s - 1], name, (long long)(s - 1));
        if (c > total)
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: %s[%lld]: got %lld, expected <= %lld (total tokens %s.shape[0])",
                            fn, name, (long long)s, c, (long long)total, t);
        if (s == batch && c != total)
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: %s[%lld]: got %lld, expected %lld (the last prefix sum is the "
                            "total tokens %s.shape[0])",
                            fn, name, (long long)s, c, (long long)total, t);
    }
    return MHA_OK;
}
