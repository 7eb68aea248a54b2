/* kv_cache.c - mha_kv_cache: a key/value cache the library owns (contiguous
 * k [B, Hkv, capacity, D], v [B, Hkv, capacity, Dv] of float32, bfloat16 or half elements,
 * int32 lengths), and its append-then-attend call over mha_attn_kvcache
 * (src/attn/attn_decode.c). */
#include "decode.h"

#include <stdio.h>
#include <string.h>

struct mha_kv_cache {
    int64_t B, cap, Hkv, D, Dv;
    mha_dtype dtype;
    void *k, *v;  /* elements of dtype */
    int32_t *len; /* [B] */
};

/* n = a * b * c * d elements of es bytes, in bytes, checked for overflow. */
static int count4(int64_t a, int64_t b, int64_t c, int64_t d, size_t es, size_t *n) {
    size_t x;
    return mha__mul_size((size_t)a, (size_t)b, &x) && mha__mul_size(x, (size_t)c, &x) &&
           mha__mul_size(x, (size_t)d, &x) && mha__mul_size(x, es, n);
}

static mha_status check_dims(mha_ctx *ctx, const char *fn, int64_t batch, int64_t capacity,
                             int64_t kv_heads, int64_t head_dim, int64_t head_dim_v,
                             mha_dtype dtype) {
    const struct {
        const char *name;
        int64_t v, min;
    } d[5] = {{"batch", batch, 1},
              {"capacity", capacity, 1},
              {"kv_heads", kv_heads, 1},
              {"head_dim", head_dim, 1},
              {"head_dim_v", head_dim_v, 0}};
    for (int i = 0; i < 5; i++)
        if (d[i].v < d[i].min)
            return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got %lld, expected >= %lld", fn,
                            d[i].name, (long long)d[i].v, (long long)d[i].min);
    /* cache_seqlens are int32: a sequence holds at most INT32_MAX tokens */
    if (capacity > INT32_MAX)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: capacity: got %lld, expected at most %d (int32 lengths)", fn,
                        (long long)capacity, INT32_MAX);
    if (dtype != MHA_DTYPE_F32 && dtype != MHA_DTYPE_BF16 && dtype != MHA_DTYPE_F16)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: dtype: got %s, expected float32, bfloat16 or float16", fn,
                        mha_dtype_name(dtype));
    return MHA_OK;
}

mha_status mha__kv_cache_create(mha_ctx *ctx, const char *fn, int64_t batch, int64_t capacity,
                                int64_t kv_heads, int64_t head_dim, int64_t head_dim_v,
                                mha_dtype dtype, mha_kv_cache **out) {
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer", fn);
    *out = NULL;
    mha_status st = check_dims(ctx, fn, batch, capacity, kv_heads, head_dim, head_dim_v, dtype);
    if (st) return st;
    size_t nk, nv, es = mha_dtype_size(dtype);
    if (!count4(batch, kv_heads, capacity, head_dim, es, &nk) ||
        !count4(batch, kv_heads, capacity, head_dim_v, es, &nv))
        return mha__err(ctx, MHA_ERR_NOMEM,
                        "%s: size overflows (%lld x %lld x %lld x %lld elements of %zu bytes)", fn,
                        (long long)batch, (long long)kv_heads, (long long)capacity,
                        (long long)head_dim, es);
    mha_kv_cache *c = mha__calloc(1, sizeof *c);
    if (c) {
        c->k = mha__calloc_stream(nk);
        c->v = mha__calloc_stream(nv > 0 ? nv : 1);
        c->len = mha__calloc((size_t)batch, sizeof(int32_t));
    }
    if (!c || !c->k || !c->v || !c->len) {
        mha_kv_cache_free(c);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (%zu + %zu bytes)", fn, nk, nv);
    }
    c->B = batch, c->cap = capacity, c->Hkv = kv_heads, c->D = head_dim, c->Dv = head_dim_v;
    c->dtype = dtype;
    *out = c;
    return MHA_OK;
}

mha_status mha_kv_cache_create(mha_ctx *ctx, int64_t batch, int64_t capacity, int64_t kv_heads,
                               int64_t head_dim, int64_t head_dim_v, mha_dtype dtype,
                               mha_kv_cache **out) {
    mha__clear(ctx);
    return mha__kv_cache_create(ctx, "mha_kv_cache_create", batch, capacity, kv_heads, head_dim,
                                head_dim_v, dtype, out);
}

void mha_kv_cache_free(mha_kv_cache *c) {
    if (!c) return;
    mha__free(c->k);
    mha__free(c->v);
    mha__free(c->len);
    mha__free(c);
}

void mha_kv_cache_reset(mha_kv_cache *c) {
    if (c) memset(c->len, 0, sizeof(int32_t) * (size_t)c->B);
}

int64_t mha_kv_cache_length(const mha_kv_cache *c, int64_t b) {
    return c && b >= 0 && b < c->B ? c->len[b] : -1;
}

/* The [B, Hkv, capacity, X] view of buffer x (contiguous, the cache's dtype). */
static mha_tensor cache_view(const mha_kv_cache *c, void *x, int64_t X) {
    const int64_t shape[4] = {c->B, c->Hkv, c->cap, X};
    const int64_t stride[4] = {c->Hkv * c->cap * X, c->cap * X, X, 1};
    return mha_tensor_typed(x, c->dtype, 4, shape, stride);
}

mha_status mha_kv_cache_views(mha_ctx *ctx, mha_kv_cache *c, mha_tensor *k, mha_tensor *v) {
    mha__clear(ctx);
    if (!c)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_kv_cache_views: c: got NULL, expected a "
                        "cache");
    if (k) *k = cache_view(c, c->k, c->D);
    if (v) *v = cache_view(c, c->v, c->Dv);
    return MHA_OK;
}

/* t (q, k_new or v_new: [B, X, R, Y]) against the cache: its dtype, batch, heads (heads_div:
 * a multiple of the cache's kv_heads, for q's grouped query heads; else equal) and last
 * dimension Y (the cache's y_name). Only a 4-d view is looked at: NULL, other ranks and bad
 * strides are mha__attn_kvcache's to report. */
static mha_status check_fits(mha_ctx *ctx, const char *fn, const mha_kv_cache *c, const char *name,
                             const mha_tensor *t, int heads_div, int64_t Y, const char *y_name) {
    if (!t || t->ndim != 4) return MHA_OK;
    if (t->dtype != c->dtype)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: %s.dtype: got %s, expected %s (the cache's dtype)", fn, name,
                        mha_dtype_name(t->dtype), mha_dtype_name(c->dtype));
    if (t->shape[0] != c->B)
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: %s.shape[0]: got %lld, expected %lld (the cache's batch)", fn, name,
                        (long long)t->shape[0], (long long)c->B);
    const int64_t h = t->shape[1];
    if (heads_div && h > 0 && h % c->Hkv != 0) /* no query head (h = 0): an empty call */
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: %s.shape[1]: got %lld, expected a multiple of the cache's %lld "
                        "kv_heads (grouped-query attention: query head h uses key/value head "
                        "h / (H / Hkv))",
                        fn, name, (long long)h, (long long)c->Hkv);
    if (!heads_div && h != c->Hkv)
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: %s.shape[1]: got %lld, expected %lld (the cache's kv_heads)", fn, name,
                        (long long)h, (long long)c->Hkv);
    if (t->shape[3] != Y)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.shape[3]: got %lld, expected %lld (%s)", fn,
                        name, (long long)t->shape[3], (long long)Y, y_name);
    return MHA_OK;
}

mha_status mha__kv_cache_attend(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                mha_kv_cache *c, const mha_tensor *q, const mha_tensor *k_new,
                                const mha_tensor *v_new, const mha_mask *mask, mha_tensor *out,
                                mha_tensor *lse) {
    mha__clear(ctx);
    if (!c) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: c: got NULL, expected a cache", fn);
    /* what mha__attn_kvcache would report against k_cache, v_cache and cache_seqlens, which
     * this caller never passed, reported against the caller's tensors in the cache's words
     * (the rest is checked there) */
    mha_status st;
    if ((st = check_fits(ctx, fn, c, "q", q, 1, c->D, "the cache's head_dim")) ||
        (st = check_fits(ctx, fn, c, "k_new", k_new, 0, c->D, "the cache's head_dim")) ||
        (st = check_fits(ctx, fn, c, "v_new", v_new, 0, c->Dv, "the cache's head_dim_v")))
        return st;
    const int64_t Lnew = k_new && k_new->ndim == 4 ? k_new->shape[2] : 0;
    for (int64_t b = 0; b < c->B && Lnew > 0; b++) {
        const int64_t room = c->cap - c->len[b]; /* no len + Lnew: it could overflow */
        if (Lnew <= room) continue;
        char what[64] = "the cache is full";
        if (room > 0)
            snprintf(what, sizeof what, "the cache has room for %lld more tokens", (long long)room);
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: %s: sequence %lld holds %lld of its %lld rows, %lld new tokens do "
                        "not fit (cache overflow: mha_kv_cache_reset, or a cache of more rows)",
                        fn, what, (long long)b, (long long)c->len[b], (long long)c->cap,
                        (long long)Lnew);
    }
    mha_tensor kc = cache_view(c, c->k, c->D), vc = cache_view(c, c->v, c->Dv);
    st = mha__attn_kvcache(ctx, fn, p, q, &kc, &vc, k_new, v_new, c->len, mask, out, lse);
    if (st || !k_new) return st;
    for (int64_t b = 0; b < c->B; b++) c->len[b] += (int32_t)k_new->shape[2];
    return MHA_OK;
}

mha_status mha_kv_cache_attend(mha_ctx *ctx, const mha_attn_params *p, mha_kv_cache *c,
                               const mha_tensor *q, const mha_tensor *k_new,
                               const mha_tensor *v_new, const mha_mask *mask, mha_tensor *out,
                               mha_tensor *lse) {
    return mha__kv_cache_attend(ctx, "mha_kv_cache_attend", p, c, q, k_new, v_new, mask, out, lse);
}
