/* test_decode.c - decoding with a key/value cache: mha_attn_kvcache (both paths: flash-decoding
 * and the prefill through the dense core), the mha_kv_cache object and the module's
 * incremental call, against a plain float64 reference of the score definition (mha.h) on
 * every ISA; thread counts bitwise; strided [B, S, H, D] caches; every bad input with nothing
 * written. Every case runs with float32, bfloat16 and half tensors (the reference computed from
 * the same rounded inputs; the tolerance grows by the output's rounding). */
#include "harness.h"
#include "core/internal.h"
#include "kernels/cvt.h"
#include "kernels/kernels.h"

/* The dtypes every case runs with. */
static const mha_dtype DTYPES[3] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};

/* x rounded to dt (bits), and back (exact). */
static uint16_t to_half(mha_dtype dt, float x) {
    return dt == MHA_DTYPE_BF16 ? mha__f32_to_bf16(x) : mha__f32_to_f16(x);
}
static float from_half(mha_dtype dt, uint16_t h) {
    return dt == MHA_DTYPE_BF16 ? mha__bf16_to_f32(h) : mha__f16_to_f32(h);
}

/* ------------------------------------------------------------------------------------------
 * Random numbers and views
 * ---------------------------------------------------------------------------------------- */
#define TEST_RNG_SEED 0x9E3779B97F4A7C15ull
#include "rng.h"

typedef struct {
    float *buf;
    size_t n; /* floats in buf */
    mha_tensor t;
    uint16_t *h;   /* a 2-byte dtype: buf's values in that dtype, the same layout (else NULL) */
    mha_tensor ht; /* its view */
} tview;

/* A [B, H, R, X] view: contiguous (layout 0), or of [B, R, H, X + 3] memory (layout 1: the
 * [batch, seqlen, heads, headdim] layout FlashAttention's users have, rows padded). */
static tview view_alloc(int64_t B, int64_t H, int64_t R, int64_t X, int layout) {
    tview v;
    int64_t shape[4] = {B, H, R, X};
    if (layout == 0) {
        v.n = (size_t)(B * H * R * X) + 1;
        v.buf = calloc(v.n, sizeof(float));
        v.t = mha_tensor_make(v.buf, 4, shape);
    } else {
        int64_t xs = X + 3;
        v.n = (size_t)(B * R * H * xs) + 1;
        v.buf = calloc(v.n, sizeof(float));
        int64_t stride[4] = {R * H * xs, xs, H * xs, 1};
        v.t = mha_tensor_strided(v.buf, 4, shape, stride);
    }
    return v;
}
static float *vat(const mha_tensor *t, int64_t b, int64_t h, int64_t r, int64_t x) {
    return t->data + b * t->stride[0] + h * t->stride[1] + r * t->stride[2] + x * t->stride[3];
}
static void view_fill(tview *v) {
    for (size_t i = 0; i < v->n; i++) v->buf[i] = frand();
}
static void view_free(tview *v) { free(v->buf), free(v->h); }
/* For a 2-byte dtype: buf rounded to dt, and h (allocated once) = those values in dt. */
static void view_push(tview *v, mha_dtype dt) {
    if (dt == MHA_DTYPE_F32) return;
    if (!v->h) {
        v->h = calloc(v->n, sizeof(uint16_t));
        v->ht = mha_tensor_typed(v->h, dt, 4, v->t.shape, v->t.stride);
    }
    for (size_t i = 0; i < v->n; i++)
        v->h[i] = to_half(dt, v->buf[i]), v->buf[i] = from_half(dt, v->h[i]);
}
/* buf = h's values (after a call on the 2-byte views). */
static void view_pull(tview *v, mha_dtype dt) {
    if (dt == MHA_DTYPE_F32) return;
    for (size_t i = 0; i < v->n; i++) v->buf[i] = from_half(dt, v->h[i]);
}
/* The view a call gets: the float32 one or the 2-byte one. */
static mha_tensor *view_arg(tview *v) { return v->h ? &v->ht : &v->t; }
/* The view's elements in [B, H, R, X] order. */
static void view_get(const mha_tensor *t, float *dst) {
    int64_t at = 0;
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (int64_t h = 0; h < t->shape[1]; h++)
            for (int64_t r = 0; r < t->shape[2]; r++)
                for (int64_t x = 0; x < t->shape[3]; x++) dst[at++] = *vat(t, b, h, r, x);
}

/* ------------------------------------------------------------------------------------------
 * A case and its float64 reference
 * ---------------------------------------------------------------------------------------- */
typedef struct {
    int64_t B, H, Hkv, L, D, Dv, Smax, Lnew;
    int32_t lens[4]; /* cache_seqlens (B <= 4) */
    int no_lens;     /* pass cache_seqlens = NULL (all 0) */
    int causal, window;
    int64_t wl, wr;
    int alibi, alibi_batched;
    float softcap, scale;
    int layout;   /* 0: [B, H, S, D] caches; 1: [B, S, H, D] caches, q, out */
    mha_dtype dt; /* of q, the caches, the new rows and out (0: float32) */
} dcase;

static int32_t case_len(const dcase *c, int64_t b) { return c->no_lens ? 0 : c->lens[b]; }

typedef struct {
    tview q, kc, vc, kn, vn, out;
    float *lse, *slopes;
    mha_tensor lse_t;
    mha_mask mask;
    mha_attn_params p;
} dbufs;

static void bufs_make(const dcase *c, dbufs *d) {
    d->q = view_alloc(c->B, c->H, c->L, c->D, c->layout);
    d->kc = view_alloc(c->B, c->Hkv, c->Smax, c->D, c->layout);
    d->vc = view_alloc(c->B, c->Hkv, c->Smax, c->Dv, c->layout);
    d->kn = view_alloc(c->B, c->Hkv, c->Lnew, c->D, c->layout);
    d->vn = view_alloc(c->B, c->Hkv, c->Lnew, c->Dv, c->layout);
    d->out = view_alloc(c->B, c->H, c->L, c->Dv, c->layout);
    view_fill(&d->q), view_fill(&d->kc), view_fill(&d->vc), view_fill(&d->kn), view_fill(&d->vn);
    d->q.h = d->kc.h = d->vc.h = d->kn.h = d->vn.h = d->out.h = NULL;
    view_push(&d->q, c->dt), view_push(&d->kc, c->dt), view_push(&d->vc, c->dt);
    view_push(&d->kn, c->dt), view_push(&d->vn, c->dt), view_push(&d->out, c->dt);
    int64_t ls[3] = {c->B, c->H, c->L};
    d->lse = calloc((size_t)(c->B * c->H * c->L) + 1, sizeof(float));
    d->lse_t = mha_tensor_make(d->lse, 3, ls);
    d->slopes = calloc((size_t)(c->B * c->H), sizeof(float));
    for (int64_t x = 0; x < c->B * c->H; x++) d->slopes[x] = (float)(0.05 + 0.5 * urand());
    d->mask = mha_mask_default();
    d->mask.causal = c->causal ? MHA_CAUSAL_BOTTOM_RIGHT : MHA_CAUSAL_NONE;
    d->mask.window = c->window, d->mask.window_left = c->wl, d->mask.window_right = c->wr;
    d->mask.alibi_slopes = c->alibi ? d->slopes : NULL;
    d->mask.alibi_batched = c->alibi_batched;
    d->p = mha_attn_params_default();
    d->p.scale = c->scale, d->p.softcap = c->softcap;
}

static void bufs_free(dbufs *d) {
    view_free(&d->q), view_free(&d->kc), view_free(&d->vc), view_free(&d->kn);
    view_free(&d->vn), view_free(&d->out);
    free(d->lse), free(d->slopes);
}

/* The call on c's dtype's views; with a 2-byte dtype, the caches' and out's values are then
 * read back into the float32 buffers (which the checks read). */
static mha_status run_kvcache(mha_ctx *ctx, const dcase *c, dbufs *d) {
    mha_status st =
        mha_attn_kvcache(ctx, &d->p, view_arg(&d->q), view_arg(&d->kc), view_arg(&d->vc),
                         c->Lnew ? view_arg(&d->kn) : NULL, c->Lnew ? view_arg(&d->vn) : NULL,
                         c->no_lens ? NULL : c->lens, &d->mask, view_arg(&d->out), &d->lse_t);
    view_pull(&d->out, c->dt), view_pull(&d->kc, c->dt), view_pull(&d->vc, c->dt);
    return st;
}

/* The relative tolerance of an output of dtype dt: float32 accumulation, plus one rounding to
 * dt (half an ulp: 2^-9 for bfloat16, 2^-11 for half; a value within float32's error of a
 * tie may round either way: a whole ulp for bfloat16). */
static double out_rtol(mha_dtype dt) {
    return 2e-4 + (dt == MHA_DTYPE_BF16 ? 0x1p-8 : dt == MHA_DTYPE_F16 ? 0x1p-11 : 0);
}

/* Key j of (b, kv head kh) as the call sees it after the append: the cache's row, or the new
 * row j - cache_seqlens[b]; from the inputs' values BEFORE the call (kc0: a copy of the
 * cache's views in [B, Hkv, Smax, X] order). */
static double kv_val(const dcase *c, const float *c0, const mha_tensor *nw, int64_t X, int64_t b,
                     int64_t kh, int64_t j, int64_t x) {
    const int64_t n = case_len(c, b);
    if (j < n) return c0[((b * c->Hkv + kh) * c->Smax + j) * X + x];
    return *vat(nw, b, kh, j - n, x);
}

/* out [B, H, L, Dv] and lse [B, H, L] of the score definition (mha.h), in double; pv [B, H, L,
 * Dv] = sum_j P_j |v_j| (the scale of an error in the probabilities). */
static void reference(const dcase *c, const dbufs *d, const float *k0, const float *v0, double *out,
                      double *lse, double *pv) {
    const int64_t g = c->H / c->Hkv;
    const double scale = c->scale != 0 ? c->scale : 1.0 / sqrt((double)c->D);
    double *s = malloc(sizeof(double) * (size_t)(c->Smax + 1));
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->H; h++)
            for (int64_t i = 0; i < c->L; i++) {
                const int64_t kh = h / g, len = case_len(c, b) + c->Lnew, qp = i + len - c->L;
                const double slope =
                    c->alibi ? d->slopes[(c->alibi_batched ? b * c->H : 0) + h] : 0;
                double mx = -INFINITY;
                for (int64_t j = 0; j < len; j++) {
                    int ok = (!c->causal || j <= qp) &&
                             (!c->window || c->wl < 0 || j >= qp - c->wl) &&
                             (!c->window || c->wr < 0 || j <= qp + c->wr);
                    double x = 0;
                    for (int64_t e = 0; e < c->D; e++)
                        x += (double)(float)(scale * *vat(&d->q.t, b, h, i, e)) *
                             kv_val(c, k0, &d->kn.t, c->D, b, kh, j, e);
                    if (c->softcap > 0) x = c->softcap * tanh(x / c->softcap);
                    x -= slope * fabs((double)(qp - j));
                    s[j] = ok ? x : -INFINITY;
                    if (s[j] > mx) mx = s[j];
                }
                double *o = out + ((b * c->H + h) * c->L + i) * c->Dv, sum = 0;
                double *pa = pv + ((b * c->H + h) * c->L + i) * c->Dv;
                for (int64_t x = 0; x < c->Dv; x++) o[x] = 0, pa[x] = 0;
                if (mx == -INFINITY) {
                    lse[(b * c->H + h) * c->L + i] = -INFINITY;
                    continue;
                }
                for (int64_t j = 0; j < len; j++) {
                    if (s[j] == -INFINITY) continue;
                    double p = exp(s[j] - mx);
                    sum += p;
                    for (int64_t x = 0; x < c->Dv; x++)
                        o[x] += p * kv_val(c, v0, &d->vn.t, c->Dv, b, kh, j, x),
                            pa[x] += p * fabs(kv_val(c, v0, &d->vn.t, c->Dv, b, kh, j, x));
                }
                for (int64_t x = 0; x < c->Dv; x++) o[x] /= sum, pa[x] /= sum;
                lse[(b * c->H + h) * c->L + i] = mx + log(sum);
            }
    free(s);
}

/* Runs case c on ctx's ISA and compares out, lse and the appended cache rows with the
 * reference; returns 1 when all agree. */
static int check_case(mha_ctx *ctx, const dcase *c, const char *what) {
    dbufs d;
    bufs_make(c, &d);
    const size_t nk = (size_t)(c->B * c->Hkv * c->Smax);
    float *k0 = malloc(sizeof(float) * (nk * (size_t)c->D + 1));
    float *v0 = malloc(sizeof(float) * (nk * (size_t)c->Dv + 1));
    view_get(&d.kc.t, k0), view_get(&d.vc.t, v0);
    const int64_t no = c->B * c->H * c->L * c->Dv, nl = c->B * c->H * c->L;
    double *ro = malloc(sizeof(double) * (size_t)(no + 1));
    double *rl = malloc(sizeof(double) * (size_t)(nl + 1));
    float *go = malloc(sizeof(float) * (size_t)(no + 1));
    double *rp = malloc(sizeof(double) * (size_t)(no + 1));
    reference(c, &d, k0, v0, ro, rl, rp);
    int ok = 1;
    mha_status st = run_kvcache(ctx, c, &d);
    if (st != MHA_OK) {
        FAILF("%s [%s, %s]: %s: %s", what, mha_isa_name(mha_ctx_isa(ctx)), mha_dtype_name(c->dt),
              mha_status_str(st), mha_ctx_errmsg(ctx));
        ok = 0;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "%s [%s, %s] out", what, mha_isa_name(mha_ctx_isa(ctx)),
             mha_dtype_name(c->dt));
    view_get(&d.out.t, go);
    if (c->dt == MHA_DTYPE_BF16 && (c->L * c->H / c->Hkv > MHA__ATTN_DECODE_ROWS ||
                                    mha__kernels_for(mha_ctx_isa(ctx))->attn_fwd_bf16))
        /* a bfloat16 prefill, or a decode step with bf16 dot products: the dense core's bf16
         * kernel and the decode kernel of a table with one (AVX512_BF16) round the probabilities
         * to bf16 for the product with V: that rounding's bound, 2^-8 sum_j P_j |v_j| (as
         * test_attn_dtype), taken off each element's error before the usual tolerance */
        for (int64_t x = 0; x < no; x++) {
            const double e = (double)go[x] - ro[x], extra = 0x1p-8 * rp[x];
            go[x] = (float)(ro[x] + (fabs(e) <= extra ? 0 : e > 0 ? e - extra : e + extra));
        }
    if (ok) ok = harness_near(__FILE__, __LINE__, msg, go, ro, no, out_rtol(c->dt), 2e-5);
    snprintf(msg, sizeof msg, "%s [%s, %s] lse", what, mha_isa_name(mha_ctx_isa(ctx)),
             mha_dtype_name(c->dt));
    for (int64_t x = 0; ok && x < nl; x++) {
        if ((rl[x] == -INFINITY) != (d.lse[x] == -INFINITY)) {
            FAILF("%s: [%lld] got %g, expected %g", msg, (long long)x, (double)d.lse[x], rl[x]);
            ok = 0;
        }
        if (rl[x] == -INFINITY) rl[x] = 0, d.lse[x] = 0; /* (harness_near: inf - inf is NaN) */
    }
    if (ok) ok = harness_near(__FILE__, __LINE__, msg, d.lse, rl, nl, 1e-5, 1e-5);
    /* the new rows are in the cache, the others untouched */
    for (int64_t b = 0; ok && b < c->B; b++)
        for (int64_t kh = 0; ok && kh < c->Hkv; kh++)
            for (int64_t j = 0; ok && j < c->Smax; j++)
                for (int64_t x = 0; ok && x < c->D; x++) {
                    int64_t n = case_len(c, b);
                    float want = j >= n && j < n + c->Lnew
                                     ? *vat(&d.kn.t, b, kh, j - n, x)
                                     : k0[((b * c->Hkv + kh) * c->Smax + j) * c->D + x];
                    if (*vat(&d.kc.t, b, kh, j, x) != want) {
                        FAILF("%s: k_cache[%lld, %lld, %lld, %lld] = %g, expected %g", what,
                              (long long)b, (long long)kh, (long long)j, (long long)x,
                              (double)*vat(&d.kc.t, b, kh, j, x), (double)want);
                        ok = 0;
                    }
                }
    free(k0), free(v0), free(ro), free(rl), free(go), free(rp);
    bufs_free(&d);
    return ok;
}

/* check_case with each of DTYPES. */
static int check_dtypes(mha_ctx *ctx, const dcase *c, const char *what) {
    for (int i = 0; i < 3; i++) {
        dcase cd = *c;
        cd.dt = DTYPES[i];
        if (!check_case(ctx, &cd, what)) return 0;
    }
    return 1;
}

static mha_ctx *new_ctx(void) {
    mha_ctx *ctx = NULL;
    mha_ctx_create(&ctx);
    return ctx;
}

/* ------------------------------------------------------------------------------------------
 * mha_attn_kvcache against the reference
 * ---------------------------------------------------------------------------------------- */

/* Decode shapes: MHA, GQA, MQA; L = 1 and L > 1; head dims 1, 7, 64, 80, 128; lengths across
 * several 512-key chunks and different per sequence; with and without new rows. */
TEST(decode_reference) {
    const dcase cases[] = {
        {.B = 2,
         .H = 2,
         .Hkv = 2,
         .L = 1,
         .D = 64,
         .Dv = 64,
         .Smax = 40,
         .Lnew = 1,
         .lens = {5, 30}},
        {.B = 1,
         .H = 8,
         .Hkv = 2,
         .L = 1,
         .D = 128,
         .Dv = 128,
         .Smax = 1300,
         .Lnew = 1,
         .lens = {1290}},
        {.B = 2,
         .H = 4,
         .Hkv = 1,
         .L = 4,
         .D = 7,
         .Dv = 5,
         .Smax = 1100,
         .Lnew = 4,
         .lens = {0, 1096},
         .causal = 1},
        {.B = 3,
         .H = 8,
         .Hkv = 4,
         .L = 2,
         .D = 80,
         .Dv = 80,
         .Smax = 600,
         .Lnew = 2,
         .lens = {511, 512, 3},
         .causal = 1},
        {.B = 1, .H = 16, .Hkv = 1, .L = 1, .D = 1, .Dv = 3, .Smax = 70, .Lnew = 0, .lens = {70}},
        {.B = 2,
         .H = 3,
         .Hkv = 3,
         .L = 3,
         .D = 16,
         .Dv = 0,
         .Smax = 20,
         .Lnew = 3,
         .lens = {2, 17},
         .causal = 1},
        {.B = 2,
         .H = 2,
         .Hkv = 1,
         .L = 2,
         .D = 32,
         .Dv = 24,
         .Smax = 9,
         .Lnew = 2,
         .no_lens = 1,
         .causal = 1,
         .scale = 0.3f},
        {.B = 1,
         .H = 1,
         .Hkv = 1,
         .L = 1,
         .D = 64,
         .Dv = 64,
         .Smax = 3000,
         .Lnew = 1,
         .lens = {2999}},
    };
    mha_ctx *ctx = new_ctx();
    FOR_EACH_ISA(ctx) {
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            char what[32];
            snprintf(what, sizeof what, "case %zu", k);
            if (!check_dtypes(ctx, &cases[k], what)) break;
        }
    }
    mha_ctx_free(ctx);
}

/* The decode path's score options, alone and combined: softcap, ALiBi ([H] and [B, H]),
 * windows (left, right, both, with causal), on every ISA. */
TEST(decode_score_options) {
    const dcase base = {.B = 2,
                        .H = 4,
                        .Hkv = 2,
                        .L = 2,
                        .D = 32,
                        .Dv = 16,
                        .Smax = 1100,
                        .Lnew = 2,
                        .lens = {1040, 37}};
    dcase cases[8];
    for (int k = 0; k < 8; k++) cases[k] = base;
    cases[0].softcap = 0.7f;                          /* scores well past the cap */
    cases[1].softcap = 30.0f, cases[1].scale = 40.0f; /* both tanh branches */
    cases[2].alibi = 1;                               /* slopes [H] */
    cases[3].alibi = 1, cases[3].alibi_batched = 1;   /* [B, H] */
    cases[4].window = 1, cases[4].wl = 600, cases[4].wr = -1;
    cases[5].window = 1, cases[5].wl = 3, cases[5].wr = 0, cases[5].causal = 1;
    cases[6].window = 1, cases[6].wl = -1, cases[6].wr = 1, cases[6].causal = 0;
    cases[7].causal = 1, cases[7].softcap = 2.0f, cases[7].alibi = 1, cases[7].window = 1;
    cases[7].wl = 700, cases[7].wr = 5;
    mha_ctx *ctx = new_ctx();
    FOR_EACH_ISA(ctx) {
        for (int k = 0; k < 8; k++) {
            char what[32];
            snprintf(what, sizeof what, "options %d", k);
            if (!check_dtypes(ctx, &cases[k], what)) break;
        }
    }
    mha_ctx_free(ctx);
}

/* Rows without an allowed key (causal with L > len, an empty cache, a window before the
 * keys): out 0 and lse -inf, never NaN. */
TEST(decode_masked_rows) {
    const dcase cases[] = {
        {.B = 1,
         .H = 2,
         .Hkv = 1,
         .L = 4,
         .D = 8,
         .Dv = 8,
         .Smax = 8,
         .Lnew = 0,
         .lens = {2},
         .causal = 1},
        {.B = 2, .H = 2, .Hkv = 2, .L = 1, .D = 8, .Dv = 8, .Smax = 8, .Lnew = 0, .lens = {0, 3}},
        {.B = 1,
         .H = 1,
         .Hkv = 1,
         .L = 3,
         .D = 8,
         .Dv = 4,
         .Smax = 900,
         .Lnew = 0,
         .lens = {1},
         .window = 1,
         .wl = 0,
         .wr = 0},
        /* no key at all: every sequence empty, nothing appended */
        {.B = 2, .H = 2, .Hkv = 1, .L = 1, .D = 8, .Dv = 8, .Smax = 8, .Lnew = 0, .lens = {0, 0}},
    };
    mha_ctx *ctx = new_ctx();
    FOR_EACH_ISA(ctx) {
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            char what[32];
            snprintf(what, sizeof what, "masked %zu", k);
            if (!check_dtypes(ctx, &cases[k], what)) break;
        }
    }
    mha_ctx_free(ctx);
}

/* More rows than decoding takes (L * H / Hkv > 16 with a key/value head per query head, > 64
 * with grouped heads): the prefill through the dense core, per sequence, causal, window and
 * ALiBi aligned bottom-right to each length, softcap; and beside them the decode shapes of 16
 * rows and of grouped heads' 17 to 64 rows (the same reference). */
TEST(prefill_reference) {
    const dcase cases[] = {
        {.B = 2,
         .H = 4,
         .Hkv = 1,
         .L = 5,
         .D = 16,
         .Dv = 16,
         .Smax = 300,
         .Lnew = 5,
         .lens = {0, 270},
         .causal = 1},
        {.B = 2,
         .H = 4,
         .Hkv = 1,
         .L = 4,
         .D = 16,
         .Dv = 16,
         .Smax = 300,
         .Lnew = 4,
         .lens = {0, 270},
         .causal = 1},
        {.B = 1,
         .H = 2,
         .Hkv = 2,
         .L = 40,
         .D = 64,
         .Dv = 32,
         .Smax = 700,
         .Lnew = 40,
         .lens = {600},
         .causal = 1},
        {.B = 2,
         .H = 6,
         .Hkv = 2,
         .L = 7,
         .D = 8,
         .Dv = 8,
         .Smax = 64,
         .Lnew = 0,
         .lens = {5, 64},
         .causal = 1},
        {.B = 1, .H = 1, .Hkv = 1, .L = 20, .D = 8, .Dv = 8, .Smax = 64, .Lnew = 20, .lens = {30}},
        /* the score options through the dense core (per sequence, aligned to its length) */
        {.B = 2,
         .H = 6,
         .Hkv = 2,
         .L = 6,
         .D = 16,
         .Dv = 12,
         .Smax = 400,
         .Lnew = 6,
         .lens = {300, 9},
         .causal = 1,
         .softcap = 1.5f,
         .alibi = 1,
         .alibi_batched = 1},
        {.B = 2,
         .H = 4,
         .Hkv = 4,
         .L = 17,
         .D = 32,
         .Dv = 32,
         .Smax = 300,
         .Lnew = 17,
         .lens = {250, 0},
         .causal = 1,
         .window = 1,
         .wl = 40,
         .wr = 0},
        {.B = 1,
         .H = 8,
         .Hkv = 1,
         .L = 3,
         .D = 8,
         .Dv = 8,
         .Smax = 200,
         .Lnew = 0,
         .lens = {150},
         .window = 1,
         .wl = 20,
         .wr = 2,
         .softcap = 4.0f,
         .alibi = 1},
        /* grouped heads past 64 rows: the dense core */
        {.B = 2,
         .H = 4,
         .Hkv = 1,
         .L = 20,
         .D = 16,
         .Dv = 16,
         .Smax = 300,
         .Lnew = 20,
         .lens = {0, 270},
         .causal = 1},
        {.B = 2,
         .H = 6,
         .Hkv = 2,
         .L = 25,
         .D = 16,
         .Dv = 12,
         .Smax = 400,
         .Lnew = 25,
         .lens = {300, 9},
         .causal = 1,
         .softcap = 1.5f,
         .alibi = 1,
         .alibi_batched = 1},
    };
    mha_ctx *ctx = new_ctx();
    FOR_EACH_ISA(ctx) {
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            char what[32];
            snprintf(what, sizeof what, "prefill %zu", k);
            if (!check_dtypes(ctx, &cases[k], what)) break;
        }
    }
    mha_ctx_free(ctx);
}

/* FlashAttention's memory layout: caches [B, Smax, Hkv, D], q and out [B, L, H, D] (padded
 * rows), as strided views: both layouts agree with the reference and give the same bits (the
 * decode kernel walks the interleaved heads' keys in pieces, the same arithmetic; the last case
 * takes 4 heads a call, 1100 keys). */
TEST(strided_bshd) {
    const dcase cases[] = {
        {.B = 2,
         .H = 8,
         .Hkv = 2,
         .L = 1,
         .D = 64,
         .Dv = 64,
         .Smax = 1200,
         .Lnew = 1,
         .lens = {1100, 17},
         .softcap = 5.0f,
         .alibi = 1},
        {.B = 2,
         .H = 4,
         .Hkv = 2,
         .L = 9,
         .D = 32,
         .Dv = 32,
         .Smax = 200,
         .Lnew = 9,
         .lens = {100, 0},
         .causal = 1},
        {.B = 1,
         .H = 8,
         .Hkv = 4,
         .L = 1,
         .D = 128,
         .Dv = 128,
         .Smax = 1200,
         .Lnew = 1,
         .lens = {1100},
         .alibi = 1},
    };
    const size_t ncase = sizeof cases / sizeof cases[0];
    mha_ctx *ctx = new_ctx();
    FOR_EACH_ISA(ctx) {
        for (size_t k = 0; k < 3 * ncase; k++) {
            dcase c = cases[k / 3];
            c.dt = DTYPES[k % 3];
            c.layout = 1;
            if (!check_case(ctx, &c, "bshd reference")) return;
            c.layout = 0;
            dbufs a, b;
            rng_state = 77, c.layout = 0, bufs_make(&c, &a);
            rng_state = 77, c.layout = 1, bufs_make(&c, &b);
            /* the same values in both layouts */
            memcpy(b.slopes, a.slopes, sizeof(float) * (size_t)(c.B * c.H));
            float *tmp = malloc(sizeof(float) * (size_t)(c.B * c.Hkv * c.Smax * c.D + 1));
            tview *va[5] = {&a.q, &a.kc, &a.vc, &a.kn, &a.vn},
                  *vb[5] = {&b.q, &b.kc, &b.vc, &b.kn, &b.vn};
            for (int t = 0; t < 5; t++) {
                const mha_tensor *x = &vb[t]->t;
                for (int64_t i = 0; i < x->shape[0]; i++)
                    for (int64_t h = 0; h < x->shape[1]; h++)
                        for (int64_t r = 0; r < x->shape[2]; r++)
                            for (int64_t e = 0; e < x->shape[3]; e++)
                                *vat(x, i, h, r, e) = *vat(&va[t]->t, i, h, r, e);
                view_push(vb[t], c.dt);
            }
            ASSERT_OK(ctx, run_kvcache(ctx, &c, &b));
            c.layout = 0;
            ASSERT_OK(ctx, run_kvcache(ctx, &c, &a));
            int64_t n = c.B * c.H * c.L * c.Dv;
            float *oa = malloc(sizeof(float) * (size_t)(n + 1)),
                  *ob = malloc(sizeof(float) * (size_t)(n + 1));
            view_get(&a.out.t, oa), view_get(&b.out.t, ob);
            int same = !memcmp(oa, ob, sizeof(float) * (size_t)n) &&
                       !memcmp(a.lse, b.lse, sizeof(float) * (size_t)(c.B * c.H * c.L));
            free(oa), free(ob), free(tmp);
            bufs_free(&a), bufs_free(&b);
            if (!same)
                FAILF("[%s, %s] case %zu: bshd and bhsd results differ",
                      mha_isa_name(mha_ctx_isa(ctx)), mha_dtype_name(c.dt), k / 3);
            ASSERT_TRUE(same);
        }
    }
    mha_ctx_free(ctx);
}

/* Flash-decoding splits a single query token (B = 1, H = 1) over every thread, one 512-key
 * chunk per task, and groups key/value heads per task by the thread count; the merge runs in
 * chunk order: 1, 2 and 3 threads give the same bits. */
TEST(threads_bitwise) {
    const dcase cases[] = {
        {.B = 1,
         .H = 1,
         .Hkv = 1,
         .L = 1,
         .D = 128,
         .Dv = 128,
         .Smax = 4000,
         .Lnew = 1,
         .lens = {3990}},
        {.B = 2,
         .H = 8,
         .Hkv = 2,
         .L = 2,
         .D = 64,
         .Dv = 64,
         .Smax = 3000,
         .Lnew = 2,
         .lens = {2900, 1300},
         .causal = 1,
         .softcap = 3.0f,
         .alibi = 1},
        /* 2 chunks, 4 heads: grouped 2 per task on 1 thread, 1 per task on 2 and 3 */
        {.B = 1,
         .H = 8,
         .Hkv = 4,
         .L = 1,
         .D = 64,
         .Dv = 48,
         .Smax = 1000,
         .Lnew = 1,
         .lens = {990},
         .alibi = 1,
         .window = 1,
         .wl = 700,
         .wr = -1},
        /* the same with [B, S, H, D] caches: the interleaved heads' blocks whatever the group */
        {.B = 1,
         .H = 8,
         .Hkv = 4,
         .L = 1,
         .D = 64,
         .Dv = 48,
         .Smax = 1000,
         .Lnew = 1,
         .lens = {990},
         .alibi = 1,
         .layout = 1},
    };
    mha_ctx *ctx = new_ctx();
    FOR_EACH_ISA(ctx) {
        for (size_t k = 0; k < 3 * sizeof cases / sizeof cases[0]; k++) {
            dcase cd = cases[k / 3];
            cd.dt = DTYPES[k % 3];
            const dcase *c = &cd;
            const int64_t n = c->B * c->H * c->L * c->Dv, nl = c->B * c->H * c->L;
            float *o1 = malloc(sizeof(float) * (size_t)n), *on = malloc(sizeof(float) * (size_t)n);
            float *l1 = malloc(sizeof(float) * (size_t)nl);
            int same = 1;
            for (int nt = 1; nt <= 3; nt++) {
                dbufs d;
                rng_state = 99;
                bufs_make(c, &d);
                ASSERT_OK(ctx, mha_ctx_set_threads(ctx, nt));
                ASSERT_OK(ctx, run_kvcache(ctx, c, &d));
                view_get(&d.out.t, nt == 1 ? o1 : on);
                if (nt == 1) {
                    memcpy(l1, d.lse, sizeof(float) * (size_t)nl);
                } else if (memcmp(o1, on, sizeof(float) * (size_t)n) ||
                           memcmp(l1, d.lse, sizeof(float) * (size_t)nl)) {
                    FAILF("[%s, %s] case %zu: %d threads differ from 1",
                          mha_isa_name(mha_ctx_isa(ctx)), mha_dtype_name(c->dt), k / 3, nt);
                    same = 0;
                }
                bufs_free(&d);
            }
            free(o1), free(on), free(l1);
            ASSERT_TRUE(same);
        }
        ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 0));
    }
    mha_ctx_free(ctx);
}

/* ------------------------------------------------------------------------------------------
 * Bad input: an error naming the argument, and nothing written
 * ---------------------------------------------------------------------------------------- */

typedef struct {
    const char *name, *msg;
    mha_status st;
} bad_case;

/* Every bad argument of a valid decode call (and a prefill one): the status, a message naming
 * it, and the caches, out and lse untouched. */
TEST(bad_inputs_nothing_written) {
    const dcase c = {
        .B = 2, .H = 4, .Hkv = 2, .L = 1, .D = 8, .Dv = 8, .Smax = 16, .Lnew = 2, .lens = {3, 14}};
    mha_ctx *ctx = new_ctx();
    dbufs d;
    bufs_make(&c, &d);
    const size_t nkc = d.kc.n, nvc = d.vc.n, no = d.out.n, nl = (size_t)(c.B * c.H * c.L);
    float *kc0 = malloc(sizeof(float) * nkc), *vc0 = malloc(sizeof(float) * nvc);
    float *o0 = malloc(sizeof(float) * no), *l0 = malloc(sizeof(float) * nl);
    for (size_t i = 0; i < no; i++) d.out.buf[i] = 7.0f;
    for (size_t i = 0; i < nl; i++) d.lse[i] = 7.0f;
    memcpy(kc0, d.kc.buf, sizeof(float) * nkc), memcpy(vc0, d.vc.buf, sizeof(float) * nvc);
    memcpy(o0, d.out.buf, sizeof(float) * no), memcpy(l0, d.lse, sizeof(float) * nl);
    for (int k = 0;; k++) {
        /* fresh arguments, then one made bad */
        mha_tensor q = d.q.t, kc = d.kc.t, vc = d.vc.t, kn = d.kn.t, vn = d.vn.t, out = d.out.t;
        mha_tensor lse = d.lse_t, *pkn = &kn, *pvn = &vn, *pq = &q, *plse = &lse;
        int32_t lens[2] = {3, 14};
        mha_mask mask = mha_mask_default();
        mha_attn_params p = mha_attn_params_default();
        uint8_t pad[32] = {0};
        float fm[32] = {0}, nan_slopes[8] = {0, 0, NAN, 0, 0, 0, 0, 0};
        int32_t kl[2] = {1, 1};
        const char *want;
        mha_status wst = MHA_ERR_SHAPE;
        switch (k) {
        case 0: pq = NULL, want = "q: got NULL", wst = MHA_ERR_INVALID_ARG; break;
        case 1: q.ndim = 3, want = "q.ndim: got 3"; break;
        case 2: kc.shape[0] = 1, want = "k_cache.shape[0]: got 1, expected 2"; break;
        case 3: kc.shape[3] = 4, want = "k_cache.shape[3]: got 4, expected 8"; break;
        case 4: /* 3 key/value heads do not divide 4 */
            kc.shape[1] = 3, want = "k_cache.shape[1]: got 3, expected a divisor";
            break;
        case 5: vc.shape[2] = 15, want = "v_cache.shape[2]: got 15, expected 16"; break;
        case 6:
            pvn = NULL, want = "v_new: got NULL while k_new is given", wst = MHA_ERR_INVALID_ARG;
            break;
        case 7: kn.shape[1] = 1, want = "k_new.shape[1]: got 1, expected 2"; break;
        case 8: vn.shape[2] = 1, want = "v_new.shape[2]: got 1, expected 2"; break;
        case 9: out.shape[3] = 4, want = "out.shape[3]: got 4, expected 8"; break;
        case 10: lse.shape[1] = 2, want = "lse.shape[1]: got 2, expected 4"; break;
        case 11:
            lens[1] = 15, wst = MHA_ERR_INVALID_ARG;
            want = "cache_seqlens[1]: got 15, expected at most 14 (cache overflow: 15 + 2 new";
            break;
        case 12:
            lens[0] = -1, want = "cache_seqlens[0]: got -1, expected >= 0",
            wst = MHA_ERR_INVALID_ARG;
            break;
        case 13:
            p.dropout_p = 0.1f, want = "p->dropout_p: got 0.1, expected 0",
            wst = MHA_ERR_INVALID_ARG;
            break;
        case 14: p.softcap = -1, want = "p->softcap: got -1", wst = MHA_ERR_INVALID_ARG; break;
        case 15: p.scale = INFINITY, want = "p->scale: got inf", wst = MHA_ERR_INVALID_ARG; break;
        case 16:
            mask.key_padding = pad, want = "mask->key_padding: got a mask",
            wst = MHA_ERR_UNSUPPORTED;
            break;
        case 17:
            mask.key_lengths = kl, want = "mask->key_lengths: got a mask",
            wst = MHA_ERR_UNSUPPORTED;
            break;
        case 18:
            mask.attn_bool = pad, want = "mask->attn_bool: got a mask", wst = MHA_ERR_UNSUPPORTED;
            break;
        case 19:
            mask.attn_float = fm, want = "mask->attn_float: got a mask", wst = MHA_ERR_UNSUPPORTED;
            break;
        case 20:
            mask.window = 1, mask.window_left = -2, want = "mask->window_left: got -2",
            wst = MHA_ERR_INVALID_ARG;
            break;
        case 21:
            mask.alibi_slopes = nan_slopes, want = "mask->alibi_slopes[2]: got nan",
            wst = MHA_ERR_INVALID_ARG;
            break;
        case 22:
            mask.causal = (mha_causal)7, want = "mask->causal: got 7", wst = MHA_ERR_INVALID_ARG;
            break;
        case 23: /* out over the key cache */
            out.data = d.kc.buf, want = "out overlaps k_cache", wst = MHA_ERR_INVALID_ARG;
            break;
        case 24: /* the new keys inside the cache they are appended to */
            kn.data = d.kc.buf, want = "k_cache overlaps k_new", wst = MHA_ERR_INVALID_ARG;
            break;
        case 25:
            vc.data = d.kc.buf, vc.shape[3] = 8, want = "v_cache overlaps k_cache",
            wst = MHA_ERR_INVALID_ARG;
            break;
        case 26:
            plse = NULL, lse.data = NULL, out.data = d.q.buf, want = "out overlaps q",
            wst = MHA_ERR_INVALID_ARG;
            break;
        case 27: /* a prefill (L * H / Hkv > 16) checks as much before writing */
            q.shape[2] = 9, out.shape[2] = 9, plse = NULL, lens[1] = 13,
            want = "cache_seqlens[1]: got 13, expected at most 12", wst = MHA_ERR_INVALID_ARG;
            kn.shape[2] = vn.shape[2] = 4;
            break;
        case 28: kc.stride[3] = 2, want = "k_cache.stride[3]: got 2, expected 1"; break;
        /* dtypes: one for q, the caches, the new rows and out (q's); lse float32 */
        case 29:
            vc.dtype = MHA_DTYPE_F16, want = "v_cache.dtype: got float16, expected float32",
            wst = MHA_ERR_UNSUPPORTED;
            break;
        case 30:
            q.dtype = kc.dtype = MHA_DTYPE_BF16, vc.dtype = MHA_DTYPE_F16,
            want = "v_cache.dtype: got float16, expected bfloat16 (the dtype of the call's inputs)",
            wst = MHA_ERR_UNSUPPORTED;
            break;
        case 31:
            q.dtype = kc.dtype = vc.dtype = kn.dtype = vn.dtype = MHA_DTYPE_F16;
            out.dtype = MHA_DTYPE_BF16, want = "out.dtype: got bfloat16, expected float16";
            wst = MHA_ERR_UNSUPPORTED;
            break;
        case 32:
            q.dtype = kc.dtype = vc.dtype = kn.dtype = vn.dtype = out.dtype = MHA_DTYPE_BF16;
            lse.dtype = MHA_DTYPE_BF16, want = "lse.dtype: got bfloat16, expected float32";
            wst = MHA_ERR_UNSUPPORTED;
            break;
        case 33:
            q.dtype = MHA_DTYPE_I32, want = "q.dtype: got int32, expected float32";
            wst = MHA_ERR_UNSUPPORTED;
            break;
        case 34: /* a bfloat16 prefill too */
            q.dtype = kc.dtype = vc.dtype = kn.dtype = vn.dtype = MHA_DTYPE_BF16;
            q.shape[2] = 9, out.shape[2] = 9, plse = NULL, kn.shape[2] = vn.shape[2] = 4;
            want = "out.dtype: got float32, expected bfloat16", wst = MHA_ERR_UNSUPPORTED;
            break;
        case 35: /* a cache expand()ed over the batch: the new rows of both would share it */
            kc.stride[0] = 0, wst = MHA_ERR_INVALID_ARG;
            want = "k_cache: got a view whose elements share memory (a stride-0 dimension";
            break;
        case 36: /* v_cache's rows overlap (a row stride smaller than a row) */
            vc.stride[2] = 4, wst = MHA_ERR_INVALID_ARG;
            want = "v_cache: got a view whose elements share memory";
            break;
        default: want = NULL; break;
        }
        if (!want) break;
        mha_status st = mha_attn_kvcache(ctx, &p, pq, &kc, &vc, pkn, pvn, lens, &mask, &out, plse);
        if (st != wst) {
            FAILF("case %d: got %s (%s), expected %s", k, mha_status_str(st), mha_ctx_errmsg(ctx),
                  mha_status_str(wst));
            break;
        }
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_kvcache: ");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
        if (memcmp(kc0, d.kc.buf, sizeof(float) * nkc) ||
            memcmp(vc0, d.vc.buf, sizeof(float) * nvc) ||
            memcmp(o0, d.out.buf, sizeof(float) * no) || memcmp(l0, d.lse, sizeof(float) * nl)) {
            FAILF("case %d (%s): something was written", k, want);
            break;
        }
    }
    /* cache_seqlens in out's memory: read while out is written */
    {
        const int32_t lens[2] = {3, 14};
        memcpy(d.out.buf, lens, sizeof lens);
        mha_status st = mha_attn_kvcache(ctx, NULL, &d.q.t, &d.kc.t, &d.vc.t, &d.kn.t, &d.vn.t,
                                         (const int32_t *)(void *)d.out.buf, NULL, &d.out.t, NULL);
        ASSERT_EQ(st, MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_kvcache: out overlaps cache_seqlens");
        ASSERT_TRUE(memcmp(kc0, d.kc.buf, sizeof(float) * nkc) == 0);
        ASSERT_TRUE(memcmp(lens, d.out.buf, sizeof lens) == 0);
    }
    /* and the valid call writes */
    ASSERT_OK(ctx, run_kvcache(ctx, &c, &d));
    ASSERT_TRUE(memcmp(kc0, d.kc.buf, sizeof(float) * nkc) != 0);
    ASSERT_TRUE(memcmp(o0, d.out.buf, sizeof(float) * no) != 0);
    free(kc0), free(vc0), free(o0), free(l0);
    bufs_free(&d);
    mha_ctx_free(ctx);
}

/* ------------------------------------------------------------------------------------------
 * The cache object
 * ---------------------------------------------------------------------------------------- */

/* Step by step through mha_kv_cache_attend: the same bits as mha_attn_kvcache on the same
 * memory with the lengths passed by hand; lengths advance only on success. */
TEST(kv_cache_object) {
    const int64_t B = 2, H = 4, G = 2, D = 16, Dv = 8, cap = 600;
    mha_ctx *ctx = new_ctx();
    mha_kv_cache *c;
    ASSERT_OK(ctx, mha_kv_cache_create(ctx, B, cap, G, D, Dv, MHA_DTYPE_F32, &c));
    mha_tensor kv, vv;
    ASSERT_OK(ctx, mha_kv_cache_views(ctx, c, &kv, &vv));
    ASSERT_EQ(kv.shape[2], cap);
    ASSERT_EQ(vv.shape[3], Dv);
    float *mk = calloc((size_t)(B * G * cap * D), sizeof(float));
    float *mv = calloc((size_t)(B * G * cap * Dv), sizeof(float));
    int64_t sk[4] = {B, G, cap, D}, sv[4] = {B, G, cap, Dv};
    mha_tensor tk = mha_tensor_make(mk, 4, sk), tv = mha_tensor_make(mv, 4, sv);
    int32_t lens[2] = {0, 0};
    int64_t steps[4] = {5, 1, 300, 2}; /* a prompt, then tokens and a chunk */
    for (int s = 0; s < 4; s++) {
        const int64_t L = steps[s];
        int64_t sq[4] = {B, H, L, D}, sn[4] = {B, G, L, D}, snv[4] = {B, G, L, Dv};
        int64_t so[4] = {B, H, L, Dv};
        float *q = malloc(sizeof(float) * (size_t)(B * H * L * D));
        float *kn = malloc(sizeof(float) * (size_t)(B * G * L * D));
        float *vn = malloc(sizeof(float) * (size_t)(B * G * L * Dv));
        float *o1 = malloc(sizeof(float) * (size_t)(B * H * L * Dv));
        float *o2 = malloc(sizeof(float) * (size_t)(B * H * L * Dv));
        for (int64_t i = 0; i < B * H * L * D; i++) q[i] = frand();
        for (int64_t i = 0; i < B * G * L * D; i++) kn[i] = frand();
        for (int64_t i = 0; i < B * G * L * Dv; i++) vn[i] = frand();
        mha_tensor tq = mha_tensor_make(q, 4, sq), tkn = mha_tensor_make(kn, 4, sn);
        mha_tensor tvn = mha_tensor_make(vn, 4, snv), to1 = mha_tensor_make(o1, 4, so);
        mha_tensor to2 = mha_tensor_make(o2, 4, so);
        mha_mask mask = mha_mask_default();
        mask.causal = MHA_CAUSAL_BOTTOM_RIGHT;
        ASSERT_OK(ctx, mha_kv_cache_attend(ctx, NULL, c, &tq, &tkn, &tvn, &mask, &to1, NULL));
        ASSERT_OK(ctx,
                  mha_attn_kvcache(ctx, NULL, &tq, &tk, &tv, &tkn, &tvn, lens, &mask, &to2, NULL));
        for (int b = 0; b < 2; b++) lens[b] += (int32_t)L;
        ASSERT_EQ(mha_kv_cache_length(c, 0), lens[0]);
        ASSERT_EQ(mha_kv_cache_length(c, 1), lens[1]);
        ASSERT_TRUE(!memcmp(o1, o2, sizeof(float) * (size_t)(B * H * L * Dv)));
        ASSERT_TRUE(!memcmp(kv.data, mk, sizeof(float) * (size_t)(B * G * cap * D)));
        free(q), free(kn), free(vn), free(o1), free(o2);
    }
    /* an overflow: an error naming the call, the lengths unchanged */
    {
        const int64_t L = 300;
        int64_t sq[4] = {B, H, L, D}, sn[4] = {B, G, L, D}, snv[4] = {B, G, L, Dv};
        int64_t so[4] = {B, H, L, Dv};
        float *buf = calloc((size_t)(B * H * L * (2 * D + 2 * Dv)), sizeof(float));
        mha_tensor tq = mha_tensor_make(buf, 4, sq),
                   tkn = mha_tensor_make(buf + B * H * L * D, 4, sn);
        mha_tensor tvn = mha_tensor_make(buf + B * H * L * D + B * G * L * D, 4, snv);
        mha_tensor to = mha_tensor_make(buf + B * H * L * (2 * D) + B * G * L * Dv, 4, so);
        ASSERT_EQ(mha_kv_cache_attend(ctx, NULL, c, &tq, &tkn, &tvn, NULL, &to, NULL),
                  MHA_ERR_INVALID_ARG);
        /* not full: says how much room is left ("the cache is full" misled here) */
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                            "mha_kv_cache_attend: the cache has room for 292 more tokens: "
                            "sequence 0 holds 308 of its 600 rows");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "300 new tokens do not fit (cache overflow");
        /* a batch other than the cache's: named as q's */
        tq.shape[0] = B - 1;
        ASSERT_EQ(mha_kv_cache_attend(ctx, NULL, c, &tq, NULL, NULL, NULL, &to, NULL),
                  MHA_ERR_SHAPE);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_kv_cache_attend: q.shape[0]: got");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "(the cache's batch)");
        ASSERT_EQ(mha_kv_cache_length(c, 0), 308);
        free(buf);
    }
    ASSERT_EQ(mha_kv_cache_length(c, 2), -1);
    ASSERT_EQ(mha_kv_cache_length(NULL, 0), -1);
    mha_kv_cache_reset(c);
    ASSERT_EQ(mha_kv_cache_length(c, 1), 0);
    mha_kv_cache_free(c);
    mha_kv_cache_free(NULL);
    mha_kv_cache_reset(NULL);
    free(mk), free(mv);
    mha_ctx_free(ctx);
}

TEST(kv_cache_create_errors) {
    mha_ctx *ctx = new_ctx();
    mha_kv_cache *c = (mha_kv_cache *)1;
    ASSERT_EQ(mha_kv_cache_create(ctx, 1, 8, 2, 4, 4, MHA_DTYPE_I32, &c), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_kv_cache_create: dtype: got int32, expected float32, bfloat16 or "
                        "float16");
    ASSERT_TRUE(c == NULL);
    ASSERT_EQ(mha_kv_cache_create(ctx, 1, 8, 2, 4, 4, MHA_DTYPE_F64, &c), MHA_ERR_UNSUPPORTED);
    ASSERT_EQ(mha_kv_cache_create(ctx, 1, 0, 2, 4, 4, MHA_DTYPE_F32, &c), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "capacity: got 0, expected >= 1");
    ASSERT_EQ(mha_kv_cache_create(ctx, 1, 8, 0, 4, 4, MHA_DTYPE_F32, &c), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "kv_heads: got 0");
    ASSERT_EQ(mha_kv_cache_create(ctx, 1, (int64_t)1 << 40, 2, 4, 4, MHA_DTYPE_F32, &c),
              MHA_ERR_INVALID_ARG);
    ASSERT_EQ(
        mha_kv_cache_create(ctx, (int64_t)1 << 40, 1 << 30, 1 << 20, 1 << 20, 4, MHA_DTYPE_F32, &c),
        MHA_ERR_NOMEM);
    ASSERT_EQ(mha_kv_cache_create(ctx, 1, 8, 2, 4, 4, MHA_DTYPE_F32, NULL), MHA_ERR_INVALID_ARG);
    /* every allocation failing in turn: NOMEM, nothing leaked (valgrind_test_decode) */
    for (long n = 0; n < 4; n++) {
        mha__fault_after(n);
        mha_status st = mha_kv_cache_create(ctx, 2, 8, 2, 4, 4, MHA_DTYPE_F32, &c);
        mha__fault_after(-1);
        if (st == MHA_OK) {
            mha_kv_cache_free(c);
            break;
        }
        ASSERT_EQ(st, MHA_ERR_NOMEM);
        ASSERT_TRUE(c == NULL);
    }
    ASSERT_EQ(mha_kv_cache_views(ctx, NULL, NULL, NULL), MHA_ERR_INVALID_ARG);
    mha_ctx_free(ctx);
}

/* mha_kv_cache_attend's caller passes q, k_new and v_new, not the cache's views: a tensor that
 * does not fit the cache is named, with what the cache has ("q.dtype: got float32, expected
 * bfloat16 (the cache's dtype)"), never as a k_cache or v_cache the caller did not pass; nothing
 * is written (out, the cache's rows and lengths). */
TEST(kv_cache_errors_name_the_callers_tensor) {
    const int64_t B = 1, H = 4, G = 2, D = 4, Dv = 6, cap = 8;
    mha_ctx *ctx = new_ctx();
    mha_kv_cache *c;
    ASSERT_OK(ctx, mha_kv_cache_create(ctx, B, cap, G, D, Dv, MHA_DTYPE_BF16, &c));
    mha_tensor kv, vv;
    ASSERT_OK(ctx, mha_kv_cache_views(ctx, c, &kv, &vv));
    uint16_t q[64], kn[64], vn[64], out[64], kc0[B * G * cap * D], vc0[B * G * cap * Dv];
    for (int i = 0; i < 64; i++) q[i] = kn[i] = vn[i] = to_half(MHA_DTYPE_BF16, frand());
    memcpy(kc0, kv.ptr, sizeof kc0), memcpy(vc0, vv.ptr, sizeof vc0);
    for (int k = 0;; k++) {
        int64_t sq[4] = {B, H, 1, D}, sn[4] = {B, G, 1, D}, snv[4] = {B, G, 1, Dv};
        int64_t so[4] = {B, H, 1, Dv};
        mha_dtype dq = MHA_DTYPE_BF16, dn = MHA_DTYPE_BF16, dv = MHA_DTYPE_BF16;
        const char *want;
        mha_status wst = MHA_ERR_SHAPE;
        switch (k) {
        case 0:
            dq = dn = dv = MHA_DTYPE_F16, wst = MHA_ERR_UNSUPPORTED;
            want = "q.dtype: got float16, expected bfloat16 (the cache's dtype)";
            break;
        case 1:
            dn = MHA_DTYPE_F16, wst = MHA_ERR_UNSUPPORTED;
            want = "k_new.dtype: got float16, expected bfloat16 (the cache's dtype)";
            break;
        case 2:
            sq[3] = 8, sn[3] = 8;
            want = "q.shape[3]: got 8, expected 4 (the cache's head_dim)";
            break;
        case 3:
            sq[1] = 3, so[1] = 3;
            want = "q.shape[1]: got 3, expected a multiple of the cache's 2 kv_heads";
            break;
        case 4: sn[1] = 1, want = "k_new.shape[1]: got 1, expected 2 (the cache's kv_heads)"; break;
        case 5: sn[3] = 5, want = "k_new.shape[3]: got 5, expected 4 (the cache's head_dim)"; break;
        case 6:
            snv[3] = 4, so[3] = 4;
            want = "v_new.shape[3]: got 4, expected 6 (the cache's head_dim_v)";
            break;
        case 7: sn[0] = 2, want = "k_new.shape[0]: got 2, expected 1 (the cache's batch)"; break;
        default: want = NULL; break;
        }
        if (!want) break;
        mha_tensor tq = mha_tensor_typed(q, dq, 4, sq, NULL);
        mha_tensor tkn = mha_tensor_typed(kn, dn, 4, sn, NULL);
        mha_tensor tvn = mha_tensor_typed(vn, dv, 4, snv, NULL);
        mha_tensor to = mha_tensor_typed(out, dq, 4, so, NULL);
        for (int i = 0; i < 64; i++) out[i] = 0x7777;
        mha_status st = mha_kv_cache_attend(ctx, NULL, c, &tq, &tkn, &tvn, NULL, &to, NULL);
        if (st != wst) {
            FAILF("case %d: got %s (%s), expected %s", k, mha_status_str(st), mha_ctx_errmsg(ctx),
                  mha_status_str(wst));
            break;
        }
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_kv_cache_attend: ");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
        ASSERT_EQ(mha_kv_cache_length(c, 0), 0);
        ASSERT_TRUE(!memcmp(kc0, kv.ptr, sizeof kc0) && !memcmp(vc0, vv.ptr, sizeof vc0));
        for (int i = 0; i < 64; i++) ASSERT_EQ(out[i], 0x7777);
    }
    mha_kv_cache_free(c);
    mha_ctx_free(ctx);
}

/* A decode call whose workspace (one allocation) cannot be allocated writes nothing either, in
 * every dtype. */
TEST(decode_nomem_nothing_written) {
    const dcase dec = {
        .B = 1, .H = 2, .Hkv = 1, .L = 1, .D = 8, .Dv = 8, .Smax = 1200, .Lnew = 1, .lens = {1100}};
    mha_ctx *ctx = new_ctx();
    for (int k = 0; k < 3; k++) {
        dcase c = dec;
        c.dt = DTYPES[k];
        dbufs d;
        bufs_make(&c, &d);
        float *kc0 = malloc(sizeof(float) * d.kc.n);
        memcpy(kc0, d.kc.buf, sizeof(float) * d.kc.n);
        mha__fault_after(0);
        mha_status st = run_kvcache(ctx, &c, &d);
        mha__fault_after(-1);
        ASSERT_EQ(st, MHA_ERR_NOMEM);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_kvcache: workspace");
        ASSERT_TRUE(!memcmp(kc0, d.kc.buf, sizeof(float) * d.kc.n));
        ASSERT_OK(ctx, run_kvcache(ctx, &c, &d));
        ASSERT_TRUE(memcmp(kc0, d.kc.buf, sizeof(float) * d.kc.n) != 0);
        free(kc0);
        bufs_free(&d);
    }
    mha_ctx_free(ctx);
}

/* Caches of bfloat16 and half: typed views of the cache's memory; mha_kv_cache_attend step by
 * step gives the bits of mha_attn_kvcache on a copy with the lengths passed by hand (decode
 * and prefill steps); another dtype's inputs are refused, naming the tensor, with the lengths
 * unchanged; the module (float32) refuses such a cache. */
TEST(kv_cache_object_2byte) {
    const int64_t B = 2, H = 4, G = 2, D = 16, Dv = 8, cap = 700;
    mha_ctx *ctx = new_ctx();
    for (int di = 1; di < 3; di++) {
        const mha_dtype dt = DTYPES[di];
        mha_kv_cache *c;
        ASSERT_OK(ctx, mha_kv_cache_create(ctx, B, cap, G, D, Dv, dt, &c));
        mha_tensor kv, vv;
        ASSERT_OK(ctx, mha_kv_cache_views(ctx, c, &kv, &vv));
        ASSERT_EQ(kv.dtype, dt);
        ASSERT_EQ(vv.dtype, dt);
        ASSERT_EQ(kv.stride[1], cap * D);
        ASSERT_EQ(vv.stride[2], Dv);
        const size_t nk = (size_t)(B * G * cap * D), nvv = (size_t)(B * G * cap * Dv);
        uint16_t *mk = calloc(nk, 2), *mv = calloc(nvv, 2);
        int64_t sk[4] = {B, G, cap, D}, sv[4] = {B, G, cap, Dv};
        mha_tensor tk = mha_tensor_typed(mk, dt, 4, sk, NULL);
        mha_tensor tv = mha_tensor_typed(mv, dt, 4, sv, NULL);
        int32_t lens[2] = {0, 0};
        const int64_t steps[4] = {5, 1, 600, 2}; /* decode, decode, prefill, decode */
        for (int s = 0; s < 4; s++) {
            const int64_t L = steps[s], nq = B * H * L * D, nn = B * G * L * D;
            const int64_t nnv = B * G * L * Dv, no = B * H * L * Dv;
            int64_t sq[4] = {B, H, L, D}, sn[4] = {B, G, L, D}, snv[4] = {B, G, L, Dv};
            int64_t so[4] = {B, H, L, Dv};
            uint16_t *q = malloc(2 * (size_t)nq), *kn = malloc(2 * (size_t)nn);
            uint16_t *vn = malloc(2 * (size_t)nnv), *o1 = malloc(2 * (size_t)no);
            uint16_t *o2 = malloc(2 * (size_t)no);
            for (int64_t i = 0; i < nq; i++) q[i] = to_half(dt, frand());
            for (int64_t i = 0; i < nn; i++) kn[i] = to_half(dt, frand());
            for (int64_t i = 0; i < nnv; i++) vn[i] = to_half(dt, frand());
            mha_tensor tq = mha_tensor_typed(q, dt, 4, sq, NULL);
            mha_tensor tkn = mha_tensor_typed(kn, dt, 4, sn, NULL);
            mha_tensor tvn = mha_tensor_typed(vn, dt, 4, snv, NULL);
            mha_tensor to1 = mha_tensor_typed(o1, dt, 4, so, NULL);
            mha_tensor to2 = mha_tensor_typed(o2, dt, 4, so, NULL);
            mha_mask mask = mha_mask_default();
            mask.causal = MHA_CAUSAL_BOTTOM_RIGHT;
            if (s == 1) { /* a float32 output: refused, nothing appended */
                float of[64];
                mha_tensor tof = mha_tensor_make(of, 4, so);
                ASSERT_EQ(mha_kv_cache_attend(ctx, NULL, c, &tq, &tkn, &tvn, &mask, &tof, NULL),
                          MHA_ERR_UNSUPPORTED);
                ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_kv_cache_attend: out.dtype: got "
                                                         "float32, expected ");
                ASSERT_EQ(mha_kv_cache_length(c, 0), lens[0]);
            }
            ASSERT_OK(ctx, mha_kv_cache_attend(ctx, NULL, c, &tq, &tkn, &tvn, &mask, &to1, NULL));
            ASSERT_OK(ctx, mha_attn_kvcache(ctx, NULL, &tq, &tk, &tv, &tkn, &tvn, lens, &mask, &to2,
                                            NULL));
            for (int b = 0; b < 2; b++) lens[b] += (int32_t)L;
            ASSERT_EQ(mha_kv_cache_length(c, 1), lens[1]);
            ASSERT_TRUE(!memcmp(o1, o2, 2 * (size_t)no));
            ASSERT_TRUE(!memcmp(kv.ptr, mk, 2 * nk));
            ASSERT_TRUE(!memcmp(vv.ptr, mv, 2 * nvv));
            int nonzero = 0;
            for (int64_t i = 0; i < no; i++) nonzero |= o1[i] != 0;
            ASSERT_TRUE(nonzero);
            free(q), free(kn), free(vn), free(o1), free(o2);
        }
        /* the module's cached call: a float32 module refuses a 2-byte cache */
        mha_config cfg = mha_config_default(G * D, G);
        mha_module *m;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
        float x[32], y[32];
        int64_t sx[3] = {1, 1, G * D};
        mha_tensor tx = mha_tensor_make(x, 3, sx), ty = mha_tensor_make(y, 3, sx);
        for (int i = 0; i < 32; i++) x[i] = frand();
        mha_kv_cache *c1;
        ASSERT_OK(ctx, mha_kv_cache_create(ctx, 1, 8, G, D, D, dt, &c1));
        ASSERT_EQ(mha_module_forward_cached(ctx, m, c1, &tx, NULL, &ty), MHA_ERR_UNSUPPORTED);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "dtype: got ");
        mha_kv_cache_free(c1);
        mha_module_free(m);
        mha_kv_cache_free(c);
        free(mk), free(mv);
    }
    mha_ctx_free(ctx);
}

/* ------------------------------------------------------------------------------------------
 * The module's incremental call
 * ---------------------------------------------------------------------------------------- */

/* mha_module_kv_cache_create's errors name it (not mha_kv_cache_create, which the caller did
 * not call), and a module that cannot decode incrementally (kdim or vdim != embed_dim) gets no
 * cache that mha_module_forward_cached would refuse later. */
TEST(module_kv_cache_create_errors) {
    mha_ctx *ctx = new_ctx();
    mha_config cfg = mha_config_default(8, 2);
    mha_module *m, *mx;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    mha_kv_cache *c = (mha_kv_cache *)1;
    ASSERT_EQ(mha_module_kv_cache_create(ctx, m, 0, 4, &c), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_module_kv_cache_create: batch: got 0, expected >= 1");
    ASSERT_TRUE(c == NULL);
    ASSERT_EQ(mha_module_kv_cache_create(ctx, m, 1, 0, &c), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_module_kv_cache_create: capacity: got 0, expected >= 1");
    ASSERT_EQ(mha_module_kv_cache_create(ctx, m, 1, 4, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_kv_cache_create: out: got NULL");
    cfg.kdim = 6;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &mx));
    c = (mha_kv_cache *)1;
    ASSERT_EQ(mha_module_kv_cache_create(ctx, mx, 1, 4, &c), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_kv_cache_create: m: got kdim = 6, vdim "
                                             "= 8, expected both = embed_dim = 8");
    ASSERT_TRUE(c == NULL);
    ASSERT_OK(ctx, mha_module_kv_cache_create(ctx, m, 1, 4, &c));
    ASSERT_EQ(mha_kv_cache_length(c, 0), 0);
    mha_kv_cache_free(c);
    mha_module_free(mx);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* Feeding a sequence one token at a time, or in chunks, through mha_module_forward_cached
 * gives the module's causal forward on the whole sequence (within 1e-5), also with a window
 * and ALiBi, on every ISA (one token: the decode path; chunks: the prefill). */
TEST(module_cached_matches_full_forward) {
    const int64_t B = 2, T = 37, E = 32, H = 4;
    mha_ctx *ctx = new_ctx();
    mha_config cfg = mha_config_default(E, H);
    cfg.seed = 5;
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    mha_tensor bias;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_bias", &bias, NULL));
    for (int64_t i = 0; i < 3 * E; i++) bias.data[i] = 0.1f * frand(); /* biases matter too */
    float *x = malloc(sizeof(float) * (size_t)(B * T * E));
    float *yf = malloc(sizeof(float) * (size_t)(B * T * E));
    float *yc = malloc(sizeof(float) * (size_t)(B * T * E));
    double *want = malloc(sizeof(double) * (size_t)(B * T * E));
    for (int64_t i = 0; i < B * T * E; i++) x[i] = frand();
    int64_t sx[3] = {B, T, E};
    mha_tensor tx = mha_tensor_make(x, 3, sx), ty = mha_tensor_make(yf, 3, sx);
    /* causal; causal with a window (6, 0) and ALiBi (the cached call ignores mask->causal) */
    const float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
    mha_mask masks[2] = {mha_mask_default(), mha_mask_default()};
    masks[0].causal = masks[1].causal = MHA_CAUSAL_TOP_LEFT;
    masks[1].window = 1, masks[1].window_left = 6, masks[1].window_right = 0;
    masks[1].alibi_slopes = slopes;
    mha_forward_opts fo = mha_forward_opts_default();
    fo.save_for_backward = 0;
    FOR_EACH_ISA(ctx) {
        for (int mi = 0; mi < 2; mi++) {
            ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, &masks[mi], &ty, NULL));
            for (int64_t i = 0; i < B * T * E; i++) want[i] = yf[i];
            mha_mask mc = masks[mi];
            mc.causal = MHA_CAUSAL_NONE;
            const int64_t chunks[3] = {1, 5, T}; /* token by token, chunks of 5, all at once */
            for (int k = 0; k < 3; k++) {
                mha_kv_cache *c;
                ASSERT_OK(ctx, mha_module_kv_cache_create(ctx, m, B, T, &c));
                for (int64_t t0 = 0; t0 < T; t0 += chunks[k]) {
                    const int64_t L = T - t0 < chunks[k] ? T - t0 : chunks[k];
                    int64_t sl[3] = {B, L, E}, st[3] = {T * E, E, 1};
                    mha_tensor q = mha_tensor_strided(x + t0 * E, 3, sl, st);
                    mha_tensor o = mha_tensor_strided(yc + t0 * E, 3, sl, st);
                    ASSERT_OK(ctx, mha_module_forward_cached(ctx, m, c, &q, &mc, &o));
                    ASSERT_EQ(mha_kv_cache_length(c, 1), t0 + L);
                }
                mha_kv_cache_free(c);
                char what[64];
                snprintf(what, sizeof what, "[%s] mask %d, chunks of %lld",
                         mha_isa_name(mha_ctx_isa(ctx)), mi, (long long)chunks[k]);
                ASSERT_NEAR_TENSOR(what, yc, want, B * T * E, 1e-5, 1e-5);
            }
        }
    }
    free(x), free(yf), free(yc), free(want);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* One step projects only its own tokens: the cache's new rows are exactly those tokens' k and
 * v projections (x Wk^T + bk), the earlier rows stay as they were, and the step's output
 * follows whatever the cache holds for the earlier tokens (it reads them, never re-projects). */
TEST(module_cached_projects_new_tokens_only) {
    const int64_t E = 16, H = 2, D = E / H, N = 6;
    mha_ctx *ctx = new_ctx();
    mha_config cfg = mha_config_default(E, H);
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    mha_tensor w, bias;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_weight", &w, NULL));
    ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_bias", &bias, NULL));
    for (int64_t i = 0; i < 3 * E; i++) bias.data[i] = 0.1f * frand();
    mha_kv_cache *c;
    ASSERT_OK(ctx, mha_module_kv_cache_create(ctx, m, 1, N + 1, &c));
    mha_tensor kc, vc;
    ASSERT_OK(ctx, mha_kv_cache_views(ctx, c, &kc, &vc));
    float x[(6 + 1) * 16], y[16], y2[16];
    for (int64_t i = 0; i < (N + 1) * E; i++) x[i] = frand();
    int64_t s1[3] = {1, 1, E}, sn[3] = {1, N, E};
    mha_tensor xn = mha_tensor_make(x, 3, sn), yo = mha_tensor_make(y, 3, s1);
    float *ybig = malloc(sizeof(float) * (size_t)(N * E));
    mha_tensor yn = mha_tensor_make(ybig, 3, sn);
    ASSERT_OK(ctx, mha_module_forward_cached(ctx, m, c, &xn, NULL, &yn));
    float before[6 * 16];
    for (int64_t h = 0; h < H; h++)
        for (int64_t j = 0; j < N; j++)
            for (int64_t d = 0; d < D; d++)
                before[(h * N + j) * D + d] = kc.data[(h * (N + 1) + j) * D + d];
    mha_tensor x1 = mha_tensor_make(x + N * E, 3, s1);
    ASSERT_OK(ctx, mha_module_forward_cached(ctx, m, c, &x1, NULL, &yo));
    for (int64_t h = 0; h < H; h++) {
        for (int64_t j = 0; j < N; j++)
            for (int64_t d = 0; d < D; d++)
                ASSERT_TRUE(before[(h * N + j) * D + d] == kc.data[(h * (N + 1) + j) * D + d]);
        for (int64_t d = 0; d < D; d++) { /* row N: the new token's k and v */
            double k = bias.data[E + h * D + d], v = bias.data[2 * E + h * D + d];
            for (int64_t e = 0; e < E; e++) {
                k += (double)w.data[(E + h * D + d) * E + e] * x[N * E + e];
                v += (double)w.data[(2 * E + h * D + d) * E + e] * x[N * E + e];
            }
            ASSERT_TRUE(fabs(kc.data[(h * (N + 1) + N) * D + d] - k) < 1e-5);
            ASSERT_TRUE(fabs(vc.data[(h * (N + 1) + N) * D + d] - v) < 1e-5);
        }
    }
    /* the same step against a cache whose earlier values were changed: a different output */
    for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++) vc.data[(h * (N + 1) + 0) * D + d] += 3.0f;
    mha_kv_cache *c2;
    ASSERT_OK(ctx, mha_module_kv_cache_create(ctx, m, 1, N + 1, &c2));
    mha_tensor kc2, vc2;
    ASSERT_OK(ctx, mha_kv_cache_views(ctx, c2, &kc2, &vc2));
    memcpy(kc2.data, kc.data, sizeof(float) * (size_t)(H * (N + 1) * D));
    memcpy(vc2.data, vc.data, sizeof(float) * (size_t)(H * (N + 1) * D));
    /* the cache object's length comes from its own appends: fill it with N tokens first */
    ASSERT_OK(ctx, mha_module_forward_cached(ctx, m, c2, &xn, NULL, &yn));
    for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++) vc2.data[(h * (N + 1) + 0) * D + d] += 3.0f;
    mha_tensor yo2 = mha_tensor_make(y2, 3, s1);
    ASSERT_OK(ctx, mha_module_forward_cached(ctx, m, c2, &x1, NULL, &yo2));
    int differs = 0;
    for (int64_t e = 0; e < E; e++) differs |= y[e] != y2[e];
    ASSERT_TRUE(differs);
    /* errors: a cache of another shape, a module with kdim != E */
    mha_kv_cache *bad;
    ASSERT_OK(ctx, mha_kv_cache_create(ctx, 1, 8, 1, D, D, MHA_DTYPE_F32, &bad));
    ASSERT_EQ(mha_module_forward_cached(ctx, m, bad, &x1, NULL, &yo), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_forward_cached: cache (keys).shape[1]");
    ASSERT_EQ(mha_module_forward_cached(ctx, m, NULL, &x1, NULL, &yo), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_module_forward_cached(ctx, m, c, &x1, NULL, &x1), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "out overlaps query");
    ASSERT_EQ(mha_module_forward_cached(ctx, m, c, &x1, NULL, &yo), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), /* c is full */
                        "mha_module_forward_cached: the cache is full: sequence 0 holds");
    mha_config cx = mha_config_default(E, H);
    cx.kdim = 8;
    mha_module *mx;
    ASSERT_OK(ctx, mha_module_create(ctx, &cx, &mx));
    ASSERT_EQ(mha_module_forward_cached(ctx, mx, c, &x1, NULL, &yo), MHA_ERR_UNSUPPORTED);
    mha_module_free(mx);
    mha_kv_cache_free(bad);
    mha_kv_cache_free(c2);
    mha_kv_cache_free(c);
    free(ybig);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* ------------------------------------------------------------------------------------------
 * The decode kernel itself: every ISA's against the generic one
 * ---------------------------------------------------------------------------------------- */

/* attn_decode of each table against the generic kernel on edge shapes: 1..64 rows (partial
 * register blocks), 1..4 heads per call with strides, the heads one after another or
 * interleaved key by key (the [B, S, H, D] layout: shorter blocks), chunks of 1 key to several
 * blocks, head dims 1, 7, 64, 80, 128, 200 and nv 0 to 200 (float32 pv panels of a whole row
 * and a part), rows with empty, partial and full key ranges, softcap and ALiBi; m and l within
 * rounding, O within rounding of its scale. */
TEST(decode_kernel_vs_generic) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    const int64_t shapes[][6] = {/* nh, rows, bc, n, nv, heads interleaved */
                                 {1, 1, 1, 1, 1, 0},
                                 {1, 4, 64, 64, 64, 0},
                                 {2, 3, 65, 7, 5, 0},
                                 {3, 16, 200, 80, 80, 0},
                                 {1, 5, 130, 128, 0, 0},
                                 {2, 8, 512, 16, 33, 0},
                                 {3, 4, 150, 128, 200, 1},
                                 {2, 1, 40, 200, 128, 0},
                                 {4, 5, 70, 64, 64, 1},
                                 {1, 2, 33, 128, 128, 1},
                                 /* grouped heads' rows past 16: fewer heads per scratch */
                                 {3, 24, 150, 64, 64, 1},
                                 {2, 64, 130, 128, 40, 0},
                                 {4, 40, 70, 16, 16, 1},
                                 {1, 37, 65, 7, 9, 0}};
    for (int isa = MHA_ISA_AVX2; isa <= MHA_ISA_AVX512; isa++) {
        const mha_kernels *kk = mha__kernels_for((mha_isa)isa);
        if (!kk) continue;
        for (size_t k = 0; k < 3 * sizeof shapes / sizeof shapes[0]; k++)
            for (int mods = 0; mods < 4; mods++) {
                const mha_dtype dt = DTYPES[k % 3]; /* the cache's element type */
                const int64_t nh = shapes[k / 3][0], rows = shapes[k / 3][1], bc = shapes[k / 3][2];
                const int64_t n = shapes[k / 3][3], nv = shapes[k / 3][4], il = shapes[k / 3][5];
                /* a head's rows ldk apart, its heads sk apart: in turn, or within a key */
                const int64_t ldk = il ? nh * (n + 5) : n + 5, ldv = il ? nh * (nv + 3) : nv + 3;
                const int64_t sk = il ? n + 5 : bc * ldk, sv = il ? nv + 3 : bc * ldv;
                const int64_t sa = rows * n, sp = rows * (2 + nv);
                const int64_t nK = nh * bc * (n + 5), nV = nh * bc * (nv + 3); /* elements */
                float *A = malloc(sizeof(float) * (size_t)(nh * sa));
                float *K = malloc(sizeof(float) * (size_t)nK);
                float *V = malloc(sizeof(float) * (size_t)(nV + 1));
                float *P1 = malloc(sizeof(float) * (size_t)(nh * sp));
                float *P2 = malloc(sizeof(float) * (size_t)(nh * sp));
                float slope[4 * MHA__ATTN_DECODE_ROWS];
                int64_t lo[MHA__ATTN_DECODE_ROWS], hi[MHA__ATTN_DECODE_ROWS];
                int64_t pos[MHA__ATTN_DECODE_ROWS];
                for (int64_t i = 0; i < nh * sa; i++) A[i] = 2 * frand();
                for (int64_t i = 0; i < nK; i++) K[i] = frand();
                for (int64_t i = 0; i < nV + 1; i++) V[i] = frand();
                for (int i = 0; i < 4 * MHA__ATTN_DECODE_ROWS; i++)
                    slope[i] = (float)(0.3 * urand());
                for (int64_t r = 0; r < rows; r++) { /* row 1 empty, others partial or full */
                    lo[r] = r % 3 == 2 ? (int64_t)(urand() * (double)bc) : 0;
                    hi[r] = r == 1  ? lo[r]
                            : r % 2 ? bc
                                    : lo[r] + (int64_t)(urand() * (double)(bc - lo[r])) + 1;
                    if (hi[r] > bc) hi[r] = bc;
                    pos[r] = (int64_t)(urand() * (double)bc);
                }
                /* a bf16 cache: the query rows also in bf16, unscaled (qb: the AVX512_BF16
                 * table's vdpbf16ps scores), A = scale x them */
                const float qscale = 0.3f;
                uint16_t *Qb =
                    dt == MHA_DTYPE_BF16 ? malloc(sizeof(uint16_t) * (size_t)(nh * sa)) : NULL;
                for (int64_t i = 0; Qb && i < nh * sa; i++)
                    Qb[i] = to_half(dt, A[i]), A[i] = qscale * from_half(dt, Qb[i]);
                const mha__attn_decode_mask md = {.softcap = mods & 1 ? 0.8f : 0.0f,
                                                  .lo = lo,
                                                  .hi = hi,
                                                  .slope = mods & 2 ? slope : NULL,
                                                  .pos = pos,
                                                  .qb = Qb,
                                                  .ldqb = n,
                                                  .sqb = sa,
                                                  .scale = qscale};
                /* a 2-byte cache: K and V in dt, the same layout */
                uint16_t *Kh = malloc(sizeof(uint16_t) * (size_t)nK);
                uint16_t *Vh = malloc(sizeof(uint16_t) * (size_t)(nV + 1));
                const void *Kx = K, *Vx = V;
                if (dt != MHA_DTYPE_F32) {
                    for (int64_t i = 0; i < nK; i++) Kh[i] = to_half(dt, K[i]);
                    for (int64_t i = 0; i < nV + 1; i++) Vh[i] = to_half(dt, V[i]);
                    Kx = Kh, Vx = Vh;
                }
                gen->attn_decode(dt, nh, rows, bc, n, nv, A, n, sa, Kx, ldk, sk, Vx, ldv, sv, &md,
                                 P1, sp);
                kk->attn_decode(dt, nh, rows, bc, n, nv, A, n, sa, Kx, ldk, sk, Vx, ldv, sv, &md,
                                P2, sp);
                /* a bf16 cache on a table with bf16 dot products: P rounded to bf16 for the
                 * product with V (kernels.h), within 2^-8 sum_c P_c |V_c| / l: those sums by the
                 * generic kernel on |V| (P3) */
                const int pairs = dt == MHA_DTYPE_BF16 && kk->attn_fwd_bf16;
                float *P3 = pairs ? malloc(sizeof(float) * (size_t)(nh * sp)) : NULL;
                if (pairs) {
                    for (int64_t i = 0; i < nV + 1; i++) Vh[i] &= 0x7fff;
                    gen->attn_decode(dt, nh, rows, bc, n, nv, A, n, sa, Kx, ldk, sk, Vh, ldv, sv,
                                     &md, P3, sp);
                }
                free(Kh), free(Vh), free(Qb);
                int bad = 0;
                for (int64_t t = 0; t < nh && !bad; t++)
                    for (int64_t r = 0; r < rows && !bad; r++) {
                        const float *p1 = P1 + t * sp, *p2 = P2 + t * sp;
                        const float m1 = p1[r], m2 = p2[r], l1 = p1[rows + r], l2 = p2[rows + r];
                        if (lo[r] >= hi[r]) {
                            bad = !(m2 == -INFINITY && l2 == 0);
                            for (int64_t x = 0; x < nv; x++) bad |= p2[2 * rows + r * nv + x] != 0;
                            continue;
                        }
                        /* compare the normalized rows: O / l (m may differ within rounding) */
                        bad = fabsf(m1 - m2) > 1e-5f * (1 + fabsf(m1)) ||
                              fabsf(l1 - l2 * expf(m2 - m1)) > 1e-4f * l1;
                        for (int64_t x = 0; x < nv; x++) {
                            float o1 = p1[2 * rows + r * nv + x] / l1;
                            float o2 = p2[2 * rows + r * nv + x] / l2;
                            const float *p3 = pairs ? P3 + t * sp : NULL;
                            float tol = 1e-5f;
                            if (p3) tol += 0x1p-8f * p3[2 * rows + r * nv + x] / p3[rows + r];
                            bad |= fabsf(o1 - o2) > tol;
                        }
                        if (bad)
                            FAILF("%s, %s: shape %zu mods %d head %lld row %lld: m %g / %g, l %g / "
                                  "%g",
                                  kk->name, mha_dtype_name(dt), k / 3, mods, (long long)t,
                                  (long long)r, (double)m1, (double)m2, (double)l1, (double)l2);
                    }
                free(A), free(K), free(V), free(P1), free(P2), free(P3);
                ASSERT_TRUE(!bad);
            }
    }
}

/* The kernels' loads of 2-byte cache elements are exact, the bits of kernels/cvt.h, on every
 * table: with one key and a unit query, the row max m is the key's first element (every finite
 * value of the type, one per head, the head dims after it random) and the output O is the
 * value row (every bit pattern, infinities and NaNs included, in one row of 65539 values: full
 * vectors and a cut one; NaNs compared quieted, which the product with the weight does). */
TEST(decode_kernel_loads_exact) {
    const int64_t n = 19, nv = 65539; /* n: a full vector (two for AVX2) and a cut one */
    const int64_t lo[1] = {0}, hi[1] = {1}, pos[1] = {0};
    const mha__attn_decode_mask md = {.lo = lo, .hi = hi, .pos = pos}; /* A, not qb */
    float *A = calloc((size_t)n, sizeof(float));
    uint16_t *K = malloc(sizeof(uint16_t) * 65536 * (size_t)n),
             *V = malloc(sizeof(uint16_t) * 65540);
    float *P = malloc(sizeof(float) * 65536 * 3), *PO = malloc(sizeof(float) * (size_t)(2 + nv));
    A[0] = 1;
    for (int di = 1; di < 3; di++) {
        const mha_dtype dt = DTYPES[di];
        const uint16_t expo = dt == MHA_DTYPE_BF16 ? 0x7f80 : 0x7c00; /* all ones: inf, NaN */
        int64_t nh = 0;
        for (uint32_t u = 0; u < 65536; u++) {
            if ((u & expo) == expo) continue;
            uint16_t *k = K + nh++ * n;
            k[0] = (uint16_t)u;
            for (int64_t d = 1; d < n; d++) k[d] = to_half(dt, frand());
        }
        for (int64_t x = 0; x < nv; x++) V[x] = (uint16_t)(x * 7919 % 65536);
        for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
            const mha_kernels *kk = mha__kernels_for((mha_isa)isa);
            if (!kk) continue;
            /* K: one head per value (sa = 0: every head the same query; nv = 0) */
            kk->attn_decode(dt, nh, 1, 1, n, 0, A, n, 0, K, n, n, V, 0, 0, &md, P, 2);
            int64_t bad = 0;
            for (int64_t t = 0, u = 0; t < nh; t++, u++) {
                while (((uint16_t)u & expo) == expo) u++;
                const float want = from_half(dt, (uint16_t)u);
                if (P[2 * t] != want || P[2 * t + 1] != 1) {
                    if (!bad)
                        FAILF("%s, %s: key 0x%04x: m %a, l %g, expected m %a", kk->name,
                              mha_dtype_name(dt), (unsigned)u, (double)P[2 * t],
                              (double)P[2 * t + 1], (double)want);
                    bad++;
                }
            }
            /* V: one row of every bit pattern (zeros compared as values: 0 + -0 is +0) */
            kk->attn_decode(dt, 1, 1, 1, n, nv, A, n, 0, K, n, 0, V, nv, 0, &md, PO, 2 + nv);
            /* a table with bf16 dot products: the product with V by vdpbf16ps, on which a
             * subnormal bf16 element counts as 0 (kernels.h) */
            const int daz = dt == MHA_DTYPE_BF16 && kk->attn_fwd_bf16;
            for (int64_t x = 0; x < nv; x++) {
                float want = from_half(dt, V[x]);
                const float got = PO[2 + x];
                if (daz && fpclassify(want) == FP_SUBNORMAL) want = 0;
                uint32_t gb, wb;
                memcpy(&gb, &got, 4), memcpy(&wb, &want, 4);
                if (isnan(want)) /* the product quiets a signaling NaN (bfloat16 keeps them) */
                    gb |= 0x400000u, wb |= 0x400000u;
                if (gb != wb && !(got == 0 && want == 0)) {
                    if (bad < 4)
                        FAILF("%s, %s: value 0x%04x: got 0x%08x, expected 0x%08x", kk->name,
                              mha_dtype_name(dt), (unsigned)V[x], (unsigned)gb, (unsigned)wb);
                    bad++;
                }
            }
            ASSERT_EQ(bad, 0);
        }
    }
    free(A), free(K), free(V), free(P), free(PO);
}

/* H = 0 query heads: an empty problem (as mha_attn_forward's), with caches of Hkv = 0 or 2
 * heads: the new rows are appended all the same (the cache's contract), out and lse are empty
 * and untouched; mha_kv_cache_attend advances the lengths. */
TEST(kvcache_zero_heads) {
    enum {
        B = 2,
        L = 3,
        LNEW = 2,
        D = 4,
        DV = 3,
        SMAX = 6,
        N = 512
    };
    mha_ctx *ctx = new_ctx();
    static float in[N], kc[N], vc[N], outb[N];
    for (int x = 0; x < N; x++) in[x] = (float)(x + 1);
    int32_t lens[B] = {1, 4};
    for (int64_t G = 0; G <= 2; G += 2) {
        memset(kc, 0, sizeof kc), memset(vc, 0, sizeof vc);
        for (int x = 0; x < N; x++) outb[x] = 7.0f;
        int64_t sq[4] = {B, 0, L, D}, skc[4] = {B, G, SMAX, D}, svc[4] = {B, G, SMAX, DV};
        int64_t skn[4] = {B, G, LNEW, D}, svn[4] = {B, G, LNEW, DV}, so[4] = {B, 0, L, DV};
        int64_t sl[3] = {B, 0, L};
        mha_tensor q = mha_tensor_make(in, 4, sq), kn = mha_tensor_make(in, 4, skn);
        mha_tensor vn = mha_tensor_make(in + 100, 4, svn), tkc = mha_tensor_make(kc, 4, skc);
        mha_tensor tvc = mha_tensor_make(vc, 4, svc), o = mha_tensor_make(outb, 4, so);
        mha_tensor l = mha_tensor_make(outb + 64, 3, sl);
        mha_mask m = mha_mask_default();
        m.causal = MHA_CAUSAL_BOTTOM_RIGHT;
        ASSERT_OK(ctx, mha_attn_kvcache(ctx, NULL, &q, &tkc, &tvc, &kn, &vn, lens, &m, &o, &l));
        for (int x = 0; x < N; x++)
            if (outb[x] != 7.0f) {
                FAILF("G %lld: out or lse element %d written", (long long)G, x);
                return;
            }
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < G; h++)
                for (int64_t t = 0; t < LNEW; t++) {
                    const int64_t r = (b * G + h) * SMAX + lens[b] + t, n = (b * G + h) * LNEW + t;
                    ASSERT_TRUE(kc[r * D] == in[n * D] && kc[r * D + D - 1] == in[n * D + D - 1]);
                    ASSERT_TRUE(vc[r * DV] == in[100 + n * DV]);
                }
    }
    /* the cache object: kv_heads >= 1 (mha_kv_cache_create), queries of 0 heads */
    mha_kv_cache *c;
    ASSERT_OK(ctx, mha_kv_cache_create(ctx, B, SMAX, 1, D, DV, MHA_DTYPE_F32, &c));
    int64_t sq[4] = {B, 0, L, D}, skn[4] = {B, 1, LNEW, D}, svn[4] = {B, 1, LNEW, DV};
    int64_t so[4] = {B, 0, L, DV};
    mha_tensor q = mha_tensor_make(in, 4, sq), kn = mha_tensor_make(in, 4, skn);
    mha_tensor vn = mha_tensor_make(in + 100, 4, svn), o = mha_tensor_make(outb, 4, so);
    ASSERT_OK(ctx, mha_kv_cache_attend(ctx, NULL, c, &q, &kn, &vn, NULL, &o, NULL));
    ASSERT_EQ(mha_kv_cache_length(c, 0), LNEW);
    ASSERT_EQ(mha_kv_cache_length(c, 1), LNEW);
    mha_kv_cache_free(c);
    mha_ctx_free(ctx);
}

/* Without new rows the caches are only read, as q: they may share memory, one tensor as both
 * k_cache and v_cache, a sequence's cache expand()ed over the batch (stride 0), and give the
 * bits of distinct copies on both paths (decode, prefill); with new rows, still refused. */
TEST(kvcache_read_only_caches_may_share_memory) {
    enum {
        B = 3,
        H = 4,
        HKV = 2,
        D = 8,
        SMAX = 40,
        ONE = HKV * SMAX * D,
        NQ = B * H * 24 * D
    };
    mha_ctx *ctx = new_ctx();
    static float one[ONE], kf[B * ONE], vf[B * ONE], q[NQ], o1[NQ], o2[NQ];
    for (int x = 0; x < ONE; x++) one[x] = frand();
    for (int x = 0; x < NQ; x++) q[x] = frand();
    for (int b = 0; b < B; b++)
        memcpy(kf + b * ONE, one, sizeof one), memcpy(vf + b * ONE, one, sizeof one);
    const int32_t lens[B] = {30, 25, 40};
    int64_t cs[4] = {B, HKV, SMAX, D}, es[4] = {0, SMAX * D, D, 1};
    mha_tensor tk = mha_tensor_make(kf, 4, cs), tv = mha_tensor_make(vf, 4, cs);
    mha_tensor te = mha_tensor_strided(one, 4, cs, es); /* one[] over the batch */
    mha_mask m = mha_mask_default();
    m.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    for (int64_t L = 1; L <= 24; L += 23) {
        int64_t qs[4] = {B, H, L, D};
        mha_tensor tq = mha_tensor_make(q, 4, qs), t1 = mha_tensor_make(o1, 4, qs);
        mha_tensor t2 = mha_tensor_make(o2, 4, qs);
        ASSERT_OK(ctx, mha_attn_kvcache(ctx, NULL, &tq, &tk, &tv, NULL, NULL, lens, &m, &t1, NULL));
        ASSERT_OK(ctx, mha_attn_kvcache(ctx, NULL, &tq, &te, &te, NULL, NULL, lens, &m, &t2, NULL));
        ASSERT_TRUE(memcmp(o1, o2, sizeof(float) * (size_t)(B * H * L * D)) == 0);
        ASSERT_OK(ctx, mha_attn_kvcache(ctx, NULL, &tq, &tk, &tk, NULL, NULL, lens, &m, &t2, NULL));
        ASSERT_TRUE(memcmp(o1, o2, sizeof(float) * (size_t)(B * H * L * D)) == 0);
    }
    int64_t ns[4] = {B, HKV, 1, D}, qs[4] = {B, H, 1, D};
    mha_tensor tn = mha_tensor_make(q, 4, ns), tq = mha_tensor_make(q, 4, qs);
    mha_tensor t1 = mha_tensor_make(o1, 4, qs);
    const int32_t room[B] = {1, 2, 3};
    ASSERT_TRUE(mha_attn_kvcache(ctx, NULL, &tq, &tk, &tk, &tn, &tn, room, &m, &t1, NULL) ==
                MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "v_cache overlaps k_cache");
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(decode_reference);
    RUN(decode_score_options);
    RUN(decode_masked_rows);
    RUN(decode_kernel_vs_generic);
    RUN(decode_kernel_loads_exact);
    RUN(prefill_reference);
    RUN(strided_bshd);
    RUN(threads_bitwise);
    RUN(bad_inputs_nothing_written);
    RUN(kv_cache_object);
    RUN(kvcache_zero_heads);
    RUN(kvcache_read_only_caches_may_share_memory);
    RUN(kv_cache_create_errors);
    RUN(decode_nomem_nothing_written);
    RUN(kv_cache_object_2byte);
    RUN(kv_cache_errors_name_the_callers_tensor);
    RUN(module_kv_cache_create_errors);
    RUN(module_cached_matches_full_forward);
    RUN(module_cached_projects_new_tokens_only);
    return harness_report();
}
