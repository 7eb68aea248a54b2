/* test_paged.c - mha_attn_kvcache_paged: paged key/value caches (a pool of pages and a block
 * table) against mha_attn_kvcache on the same rows laid out contiguously (which test_decode.c
 * checks against a float64 reference): out and lse bitwise the same where the contract says so
 * (a page a multiple of the 512-key decode chunk, and every prefill), within float rounding
 * otherwise; the new rows appended to the right page rows and nothing else written; pages shared
 * between sequences that only read them; 1 and 2 threads bitwise; every ISA, float32, bfloat16
 * and half; every bad table with a message naming the entry and nothing written. The pool's
 * unused rows hold NaN, so that a read of a row the call must not see shows in out. */
#include "harness.h"
#include "kernels/cvt.h"

#define TEST_RNG_SEED 0x2545F4914F6CDD1Dull
#include "rng.h"

static size_t esize(mha_dtype dt) { return dt == MHA_DTYPE_F32 ? 4 : 2; }

/* Element i of a buffer of dtype dt = x (rounded to dt), or as float (kernels/cvt.h). */
#define put mha__store_f32
#define get mha__load_f32

typedef struct {
    mha_dtype dt;
    int64_t B, H, Hkv, L, D, Dv, Smax, Lnew, page;
    int causal, window, alibi, layout; /* layout 1: the pool in [P, page, Hkv, X + 2] memory */
    int64_t wl, wr;
    float softcap;
} pcase;

/* A call's buffers: q, the new rows, the contiguous caches and the pool, out and lse twice. */
typedef struct {
    int64_t nbt, P;
    int32_t *lens, *bt;
    void *q, *kn, *vn, *kc, *vc, *kp, *vp, *out0, *out1;
    float *lse0, *lse1, *slopes;
    mha_tensor tq, tkn, tvn, tkc, tvc, tkp, tvp, to0, to1, tl0, tl1;
    size_t kp_bytes, vp_bytes;
} pbufs;

static void *fill_rand(mha_dtype dt, int64_t n) {
    void *p = malloc((size_t)(n > 0 ? n : 1) * esize(dt));
    for (int64_t i = 0; i < n; i++) put(dt, p, i, (float)(2 * urand() - 1));
    return p;
}

static mha_tensor t4(mha_dtype dt, void *p, int64_t a, int64_t b, int64_t c, int64_t d) {
    const int64_t shape[4] = {a, b, c, d};
    return mha_tensor_typed(p, dt, 4, shape, NULL);
}

/* The pool of page rows X wide: [P, Hkv, page, X], contiguous or (layout 1) in [P, page, Hkv,
 * X + 2] memory; every element NaN. */
static mha_tensor pool_make(const pcase *c, int64_t P, int64_t X, void **buf, size_t *bytes) {
    const int64_t xs = c->layout ? X + 2 : X, n = P * c->page * c->Hkv * xs;
    *bytes = (size_t)(n > 0 ? n : 1) * esize(c->dt);
    *buf = malloc(*bytes);
    for (int64_t i = 0; i < n; i++) put(c->dt, *buf, i, NAN);
    const int64_t shape[4] = {P, c->Hkv, c->page, X};
    int64_t st[4] = {c->Hkv * c->page * X, c->page * X, X, 1};
    if (c->layout) st[0] = c->page * c->Hkv * xs, st[1] = xs, st[2] = c->Hkv * xs, st[3] = 1;
    return mha_tensor_typed(*buf, c->dt, 4, shape, st);
}

/* Element x of row j of key/value head h of sequence b in the pool t. */
static int64_t pool_index(const pbufs *d, const mha_tensor *t, int64_t b, int64_t h, int64_t j,
                          int64_t x, int64_t page) {
    const int64_t pg = d->bt[b * d->nbt + j / page];
    return pg * t->stride[0] + h * t->stride[1] + (j % page) * t->stride[2] + x;
}

static void bufs_make(const pcase *c, pbufs *d) {
    const mha_dtype dt = c->dt;
    const int64_t B = c->B, Hkv = c->Hkv, D = c->D, Dv = c->Dv, Smax = c->Smax;
    d->nbt = (Smax + c->page - 1) / c->page;
    d->P = B * d->nbt + 3; /* spare pages, never used */
    d->lens = malloc(sizeof(int32_t) * (size_t)(B > 0 ? B : 1));
    for (int64_t b = 0; b < B; b++) d->lens[b] = (int32_t)irand(Smax - c->Lnew + 1);
    if (B > 1) d->lens[B - 1] = (int32_t)(Smax - c->Lnew); /* one full to the last row */
    /* a random permutation of the pages over the blocks */
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)d->P);
    for (int64_t i = 0; i < d->P; i++) perm[i] = (int32_t)i;
    for (int64_t i = d->P - 1; i > 0; i--) {
        int64_t j = irand(i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    d->bt = malloc(sizeof(int32_t) * (size_t)(B * d->nbt + 1));
    for (int64_t i = 0; i < B * d->nbt; i++) d->bt[i] = perm[i];
    free(perm);
    d->q = fill_rand(dt, B * c->H * c->L * D);
    d->kn = fill_rand(dt, B * Hkv * c->Lnew * D), d->vn = fill_rand(dt, B * Hkv * c->Lnew * Dv);
    d->kc = fill_rand(dt, B * Hkv * Smax * D), d->vc = fill_rand(dt, B * Hkv * Smax * Dv);
    d->tq = t4(dt, d->q, B, c->H, c->L, D);
    d->tkn = t4(dt, d->kn, B, Hkv, c->Lnew, D), d->tvn = t4(dt, d->vn, B, Hkv, c->Lnew, Dv);
    d->tkc = t4(dt, d->kc, B, Hkv, Smax, D), d->tvc = t4(dt, d->vc, B, Hkv, Smax, Dv);
    d->tkp = pool_make(c, d->P, D, &d->kp, &d->kp_bytes);
    d->tvp = pool_make(c, d->P, Dv, &d->vp, &d->vp_bytes);
    /* the contiguous caches' rows [0, lens[b]) into the pages (the rest stays NaN) */
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hkv; h++)
            for (int64_t j = 0; j < d->lens[b]; j++) {
                for (int64_t x = 0; x < D; x++)
                    put(dt, d->kp, pool_index(d, &d->tkp, b, h, j, x, c->page),
                        get(dt, d->kc, ((b * Hkv + h) * Smax + j) * D + x));
                for (int64_t x = 0; x < Dv; x++)
                    put(dt, d->vp, pool_index(d, &d->tvp, b, h, j, x, c->page),
                        get(dt, d->vc, ((b * Hkv + h) * Smax + j) * Dv + x));
            }
    const int64_t no = B * c->H * c->L * Dv, nl = B * c->H * c->L;
    d->out0 = fill_rand(dt, no), d->out1 = fill_rand(dt, no);
    d->lse0 = calloc((size_t)nl + 1, sizeof(float)),
    d->lse1 = calloc((size_t)nl + 1, sizeof(float));
    d->to0 = t4(dt, d->out0, B, c->H, c->L, Dv), d->to1 = t4(dt, d->out1, B, c->H, c->L, Dv);
    const int64_t ls[3] = {B, c->H, c->L};
    d->tl0 = mha_tensor_make(d->lse0, 3, ls), d->tl1 = mha_tensor_make(d->lse1, 3, ls);
    d->slopes = malloc(sizeof(float) * (size_t)(c->H + 1));
    for (int64_t h = 0; h < c->H; h++) d->slopes[h] = 0.05f * (float)(h + 1);
}

static void bufs_free(pbufs *d) {
    void *ps[] = {d->lens, d->bt, d->q,    d->kn,   d->vn,   d->kc,   d->vc,
                  d->kp,   d->vp, d->out0, d->out1, d->lse0, d->lse1, d->slopes};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) free(ps[i]);
}

static mha_mask case_mask(const pcase *c, const pbufs *d) {
    mha_mask m = mha_mask_default();
    m.causal = c->causal ? MHA_CAUSAL_BOTTOM_RIGHT : MHA_CAUSAL_NONE;
    m.window = c->window, m.window_left = c->wl, m.window_right = c->wr;
    if (c->alibi) m.alibi_slopes = d->slopes;
    return m;
}

static mha_status run_paged(mha_ctx *ctx, const pcase *c, pbufs *d, const int32_t *bt,
                            int64_t nbt) {
    mha_attn_params p = mha_attn_params_default();
    p.softcap = c->softcap;
    mha_mask m = case_mask(c, d);
    const int nw = c->Lnew > 0;
    return mha_attn_kvcache_paged(ctx, &p, &d->tq, &d->tkp, &d->tvp, bt, nbt, nw ? &d->tkn : NULL,
                                  nw ? &d->tvn : NULL, d->lens, &m, &d->to1, &d->tl1);
}

/* The float64 reference of every output row (the score definition in mha.h), from the
 * contiguous caches after their call (the new rows appended): ref [B, H, L, Dv]. */
static void reference(const pcase *c, const pbufs *d, double *ref) {
    const int64_t Smax = c->Smax, D = c->D, Dv = c->Dv, group = c->H / c->Hkv;
    const double scale = 1.0 / sqrt((double)D);
    double *s = malloc(sizeof(double) * (size_t)Smax);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->H; h++)
            for (int64_t i = 0; i < c->L; i++) {
                const int64_t len = d->lens[b] + c->Lnew, qp = i + len - c->L, kh = h / group;
                double *o = ref + ((b * c->H + h) * c->L + i) * Dv, mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < len; j++) {
                    int ok = !c->causal || j <= qp;
                    if (c->window && c->wl >= 0 && j < qp - c->wl) ok = 0;
                    if (c->window && c->wr >= 0 && j > qp + c->wr) ok = 0;
                    double x = 0;
                    for (int64_t e = 0; e < D; e++)
                        x += (double)get(c->dt, d->q, ((b * c->H + h) * c->L + i) * D + e) *
                             get(c->dt, d->kc, ((b * c->Hkv + kh) * Smax + j) * D + e);
                    x *= scale;
                    if (c->softcap > 0) x = c->softcap * tanh(x / c->softcap);
                    if (c->alibi) x -= d->slopes[h] * fabs((double)(qp - j));
                    s[j] = ok ? x : -INFINITY;
                    if (s[j] > mx) mx = s[j];
                }
                for (int64_t x = 0; x < Dv; x++) o[x] = 0;
                if (mx == -INFINITY) continue;
                for (int64_t j = 0; j < len; j++) {
                    if (s[j] == -INFINITY) continue;
                    const double e = exp(s[j] - mx);
                    sum += e;
                    for (int64_t x = 0; x < Dv; x++)
                        o[x] += e * get(c->dt, d->vc, ((b * c->Hkv + kh) * Smax + j) * Dv + x);
                }
                for (int64_t x = 0; x < Dv; x++) o[x] /= sum;
            }
    free(s);
}

/* Runs both calls and compares; bitwise: out and lse must be the same bits. */
static int check_case(mha_ctx *ctx, const pcase *c, int bitwise, const char *what) {
    pbufs d;
    bufs_make(c, &d);
    mha_attn_params p = mha_attn_params_default();
    p.softcap = c->softcap;
    mha_mask m = case_mask(c, &d);
    const int nw = c->Lnew > 0;
    mha_status st = mha_attn_kvcache(ctx, &p, &d.tq, &d.tkc, &d.tvc, nw ? &d.tkn : NULL,
                                     nw ? &d.tvn : NULL, d.lens, &m, &d.to0, &d.tl0);
    int ok = 1;
    if (st != MHA_OK) {
        FAILF("%s: mha_attn_kvcache: %s", what, mha_ctx_errmsg(ctx));
        ok = 0;
    }
    st = run_paged(ctx, c, &d, d.bt, d.nbt);
    if (ok && st != MHA_OK) {
        FAILF("%s: mha_attn_kvcache_paged: %s", what, mha_ctx_errmsg(ctx));
        ok = 0;
    }
    const int64_t no = c->B * c->H * c->L * c->Dv, nl = c->B * c->H * c->L;
    if (ok) { /* both against float64, with test_decode's tolerance */
        double *ref = malloc(sizeof(double) * (size_t)(no + 1));
        float *got = malloc(sizeof(float) * (size_t)(no + 1));
        reference(c, &d, ref);
        const double rt = 2e-4 + (c->dt == MHA_DTYPE_BF16  ? 0x1p-8
                                  : c->dt == MHA_DTYPE_F16 ? 0x1p-11
                                                           : 0);
        char msg[300];
        for (int k = 0; k < 2 && ok; k++) {
            for (int64_t i = 0; i < no; i++) got[i] = get(c->dt, k ? d.out1 : d.out0, i);
            snprintf(msg, sizeof msg, "%s [%s] %s out vs float64", what,
                     mha_isa_name(mha_ctx_isa(ctx)), k ? "paged" : "contiguous");
            /* bf16 on AVX512_BF16 rounds each probability to bf16 before the product with V
             * (kernels.h): up to 2^-9 of each term, in sums that cancel */
            ok = harness_near(__FILE__, __LINE__, msg, got, ref, no, rt,
                              c->dt == MHA_DTYPE_BF16 ? 2e-3 : 2e-5);
        }
        free(ref), free(got);
    }
    for (int64_t i = 0; ok && bitwise && i < no; i++) {
        const size_t es = esize(c->dt);
        if (memcmp((char *)d.out1 + i * (int64_t)es, (char *)d.out0 + i * (int64_t)es, es) != 0) {
            FAILF("%s: out[%lld]: paged %.9g, contiguous %.9g (expected the same bits)", what,
                  (long long)i, get(c->dt, d.out1, i), get(c->dt, d.out0, i));
            ok = 0;
        }
    }
    for (int64_t i = 0; ok && i < nl; i++) {
        const float a = d.lse1[i], b = d.lse0[i];
        const int same = bitwise ? memcmp(&a, &b, 4) == 0 : a == b || fabsf(a - b) <= 1e-5f;
        if (!same) {
            FAILF("%s: lse[%lld]: paged %.9g, contiguous %.9g", what, (long long)i, a, b);
            ok = 0;
        }
    }
    /* every row a sequence uses holds the contiguous cache's (the new rows appended) */
    for (int64_t b = 0; ok && b < c->B; b++)
        for (int64_t h = 0; ok && h < c->Hkv; h++)
            for (int64_t j = 0; ok && j < d.lens[b] + c->Lnew; j++) {
                for (int64_t x = 0; ok && x < c->D; x++)
                    if (get(c->dt, d.kp, pool_index(&d, &d.tkp, b, h, j, x, c->page)) !=
                        get(c->dt, d.kc, ((b * c->Hkv + h) * c->Smax + j) * c->D + x)) {
                        FAILF("%s: k row %lld of sequence %lld head %lld differs", what,
                              (long long)j, (long long)b, (long long)h);
                        ok = 0;
                    }
                for (int64_t x = 0; ok && x < c->Dv; x++)
                    if (get(c->dt, d.vp, pool_index(&d, &d.tvp, b, h, j, x, c->page)) !=
                        get(c->dt, d.vc, ((b * c->Hkv + h) * c->Smax + j) * c->Dv + x)) {
                        FAILF("%s: v row %lld of sequence %lld differs", what, (long long)j,
                              (long long)b);
                        ok = 0;
                    }
            }
    /* the spare pages were not written */
    for (int64_t pg = c->B * d.nbt; ok && pg < d.P; pg++) {
        int32_t used = 0;
        for (int64_t i = 0; i < c->B * d.nbt; i++) used |= d.bt[i] == pg;
        if (used) continue;
        const mha_tensor *t = &d.tkp;
        for (int64_t h = 0; h < c->Hkv; h++)
            for (int64_t r = 0; r < c->page; r++)
                if (!isnan(get(c->dt, d.kp,
                               pg * t->stride[0] + h * t->stride[1] + r * t->stride[2]))) {
                    FAILF("%s: spare page %lld was written", what, (long long)pg);
                    ok = 0;
                    r = c->page, h = c->Hkv;
                }
    }
    bufs_free(&d);
    return ok;
}

static const mha_dtype DTYPES[3] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};

static const char *case_name(const pcase *c, char *buf, size_t n) {
    snprintf(buf, n,
             "%s B%lld H%lld/%lld L%lld D%lld/%lld S%lld new%lld page%lld causal%d window%d(%lld,"
             "%lld) alibi%d softcap%g layout%d",
             mha_dtype_name(c->dt), (long long)c->B, (long long)c->H, (long long)c->Hkv,
             (long long)c->L, (long long)c->D, (long long)c->Dv, (long long)c->Smax,
             (long long)c->Lnew, (long long)c->page, c->causal, c->window, (long long)c->wl,
             (long long)c->wr, c->alibi, (double)c->softcap, c->layout);
    return buf;
}

static mha_ctx *new_ctx(int threads) {
    mha_ctx *ctx;
    if (mha_ctx_create(&ctx) != MHA_OK) abort();
    mha_ctx_set_threads(ctx, threads);
    return ctx;
}

/* Decoding (L x group <= 16 rows per key/value head, or up to 64 of grouped heads): a page of a
 * multiple of 512 gives the contiguous cache's bits; smaller pages (chunks spanning pages, pages
 * not dividing 512) the same up to rounding. */
TEST(decode_matches_contiguous) {
    mha_ctx *ctx = new_ctx(2);
    const int64_t pages[] = {512, 1024, 256, 48, 16, 7, 1};
    FOR_EACH_ISA(ctx) {
        for (int di = 0; di < 3; di++)
            for (size_t pi = 0; pi < sizeof pages / sizeof pages[0]; pi++) {
                for (int v = 0; v < 4; v++) { /* v 3: 8 query heads x 5 tokens = 40 rows */
                    pcase c = {.dt = DTYPES[di],
                               .B = 3,
                               .H = v >= 2 ? 8 : 4,
                               .Hkv = v == 0 ? 4 : 2,
                               .L = v == 1   ? 3
                                    : v == 3 ? 5
                                             : 1,
                               .D = v == 2 ? 40 : 64,
                               .Dv = v == 2 ? 24 : 64,
                               .Smax = pages[pi] >= 256 ? 1500 : 300,
                               .Lnew = v == 1   ? 3
                                       : v == 3 ? 5
                                                : 1,
                               .page = pages[pi],
                               .causal = v != 2,
                               .window = v == 1,
                               .wl = 200,
                               .wr = 0,
                               .alibi = v == 2,
                               .softcap = v == 0 ? 0 : 20,
                               .layout = (int)(pi % 2)};
                    char name[256];
                    if (!check_case(ctx, &c, pages[pi] % 512 == 0,
                                    case_name(&c, name, sizeof name)))
                        goto done;
                }
            }
    }
done:
    mha_ctx_free(ctx);
}

/* A prefill (more rows) runs the dense core on a contiguous copy of the pages: the contiguous
 * cache's bits for every page size. */
TEST(prefill_matches_contiguous) {
    mha_ctx *ctx = new_ctx(2);
    const int64_t pages[] = {512, 64, 5};
    FOR_EACH_ISA(ctx) {
        for (int di = 0; di < 3; di++)
            for (size_t pi = 0; pi < 3; pi++) {
                pcase c = {.dt = DTYPES[di],
                           .B = 2,
                           .H = 4,
                           .Hkv = 2,
                           .L = 40, /* 80 rows per key/value head: a prefill */
                           .D = 32,
                           .Dv = 48,
                           .Smax = 240,
                           .Lnew = 40,
                           .page = pages[pi],
                           .causal = 1,
                           .window = pi == 1,
                           .wl = 50,
                           .wr = 3,
                           .alibi = pi == 2,
                           .layout = (int)(pi % 2)};
                char name[256];
                if (!check_case(ctx, &c, 1, case_name(&c, name, sizeof name))) goto done;
            }
    }
done:
    mha_ctx_free(ctx);
}

/* 1 and 2 threads: the same bits, pages spanning chunks included. */
TEST(threads_bitwise) {
    for (int di = 0; di < 3; di++) {
        pcase c = {.dt = DTYPES[di],
                   .B = 2,
                   .H = 8,
                   .Hkv = 2,
                   .L = 2,
                   .D = 64,
                   .Dv = 64,
                   .Smax = 3000,
                   .Lnew = 2,
                   .page = 48,
                   .causal = 1,
                   .layout = 1};
        void *outs[2];
        float *lses[2];
        const int64_t no = c.B * c.H * c.L * c.Dv, nl = c.B * c.H * c.L;
        for (int t = 0; t < 2; t++) {
            rng_state = 77; /* the same buffers */
            pbufs d;
            bufs_make(&c, &d);
            mha_ctx *ctx = new_ctx(t + 1);
            ASSERT_OK(ctx, run_paged(ctx, &c, &d, d.bt, d.nbt));
            mha_ctx_free(ctx);
            outs[t] = malloc((size_t)no * esize(c.dt)),
            lses[t] = malloc(sizeof(float) * (size_t)nl);
            memcpy(outs[t], d.out1, (size_t)no * esize(c.dt));
            memcpy(lses[t], d.lse1, sizeof(float) * (size_t)nl);
            bufs_free(&d);
        }
        ASSERT_TRUE(memcmp(outs[0], outs[1], (size_t)no * esize(c.dt)) == 0);
        ASSERT_TRUE(memcmp(lses[0], lses[1], sizeof(float) * (size_t)nl) == 0);
        for (int t = 0; t < 2; t++) free(outs[t]), free(lses[t]);
    }
}

/* Two sequences reading one prompt's pages (no new rows): each attends the shared rows. With new
 * rows, pages of their own take them while the prompt's stay shared. */
TEST(shared_prefix_pages) {
    mha_ctx *ctx = new_ctx(2);
    for (int nw = 0; nw < 2; nw++) {
        pcase c = {.dt = MHA_DTYPE_F32,
                   .B = 2,
                   .H = 2,
                   .Hkv = 1,
                   .L = 1,
                   .D = 16,
                   .Dv = 16,
                   .Smax = 64,
                   .Lnew = nw,
                   .page = 16,
                   .causal = 1};
        pbufs d;
        bufs_make(&c, &d);
        /* sequence 1 = sequence 0's first 32 rows (pages 0, 1 of its table), then its own */
        d.lens[0] = d.lens[1] = 32;
        d.bt[d.nbt + 0] = d.bt[0], d.bt[d.nbt + 1] = d.bt[1];
        for (int64_t j = 0; j < 32; j++)
            for (int64_t x = 0; x < 16; x++) {
                ((float *)d.kc)[(64 + j) * 16 + x] = ((float *)d.kc)[j * 16 + x];
                ((float *)d.vc)[(64 + j) * 16 + x] = ((float *)d.vc)[j * 16 + x];
                ((float *)d.kp)[pool_index(&d, &d.tkp, 0, 0, j, x, 16)] =
                    ((float *)d.kc)[j * 16 + x];
                ((float *)d.vp)[pool_index(&d, &d.tvp, 0, 0, j, x, 16)] =
                    ((float *)d.vc)[j * 16 + x];
            }
        mha_mask m = case_mask(&c, &d);
        mha_attn_params p = mha_attn_params_default();
        ASSERT_OK(ctx, mha_attn_kvcache(ctx, &p, &d.tq, &d.tkc, &d.tvc, nw ? &d.tkn : NULL,
                                        nw ? &d.tvn : NULL, d.lens, &m, &d.to0, &d.tl0));
        ASSERT_OK(ctx, run_paged(ctx, &c, &d, d.bt, d.nbt));
        for (int64_t i = 0; i < 2 * 2 * 16; i++) /* chunks span pages: rounding */
            ASSERT_TRUE(fabsf(((float *)d.out0)[i] - ((float *)d.out1)[i]) <= 1e-5f);
        bufs_free(&d);
    }
    mha_ctx_free(ctx);
}

/* Every bad table: the error names the entry (or argument), and nothing is written. */
TEST(bad_tables_nothing_written) {
    mha_ctx *ctx = new_ctx(2);
    pcase c = {.dt = MHA_DTYPE_F32,
               .B = 2,
               .H = 4,
               .Hkv = 2,
               .L = 1,
               .D = 8,
               .Dv = 8,
               .Smax = 40,
               .Lnew = 1,
               .page = 8,
               .causal = 1};
    for (int k = 0; k < 13; k++) {
        pbufs d;
        bufs_make(&c, &d);
        d.lens[0] = 20, d.lens[1] = 9; /* blocks 0..2 and 0..1 used (with the new row) */
        int32_t *bt = d.bt;
        int64_t nbt = d.nbt;
        const char *want = NULL;
        mha_tensor keep = d.tkp;
        switch (k) {
        case 0:
            bt[1] = (int32_t)d.P, want = "block_table[0][1]: got 13, expected a page in [0, 13)";
            break;
        case 1:
            bt[d.nbt + 1] = -1, want = "block_table[1][1]: got -1, expected a page in [0, 13)";
            break;
        case 2: /* sequence 1 writes its new row to page 1 of sequence 0's table */
            bt[d.nbt + 1] = bt[1];
            want = "block_table[1][1]: got page";
            break;
        case 3: d.lens[1] = 40, want = "cache_seqlens[1]: got 40, expected at most 39"; break;
        case 4: nbt = -1, want = "max_blocks: got -1"; break;
        case 5: bt = NULL, want = "block_table: got NULL with max_blocks 5"; break;
        case 6: d.tkp.shape[2] = 0, want = "k_pages.shape[2]: got 0"; break;
        case 7: d.tvp.shape[0] = d.P - 1, want = "v_pages.shape[0]: got 12, expected 13"; break;
        /* the overlap messages named k_cache, v_cache (mha_attn_kvcache's arguments) */
        case 8: d.tvp = d.tkp, want = "v_pages overlaps k_pages"; break;
        case 9:
            d.tkp.stride[2] = 0, want = "k_pages: got a view whose elements share memory";
            break;
        case 10:
            d.tvn.shape[3] = 7;
            want = "v_new.shape[3]: got 7, expected 8 ([B, Hkv, Lnew, Dv] as k_new and v_pages)";
            break;
        case 12: /* no blocks at all: the new row alone overflows (was "cache_seqlens[0]: got
                  * 20, expected at most -1") */
            nbt = 0, want = "k_new.shape[2]: got 1, expected at most 0 (cache overflow: the cache "
                            "has 0 rows: max_blocks x page)";
            break;
        case 11: /* max_blocks x page rows past int64 */
            nbt = INT64_MAX / 2 + 1, want = "max_blocks: got 4611686018427387904, expected 0 .. "
                                            "1152921504606846975";
            break;
        }
        const size_t ko = d.kp_bytes, vo = d.vp_bytes, no = sizeof(float) * 2 * 4 * 8;
        void *k0 = malloc(ko), *v0 = malloc(vo), *o0 = malloc(no);
        memcpy(k0, d.kp, ko), memcpy(v0, d.vp, vo), memcpy(o0, d.out1, no);
        mha_status st = run_paged(ctx, &c, &d, bt, nbt);
        ASSERT_TRUE(st != MHA_OK);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_kvcache_paged: ");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
        ASSERT_TRUE(memcmp(k0, d.kp, ko) == 0);
        ASSERT_TRUE(memcmp(v0, d.vp, vo) == 0);
        ASSERT_TRUE(memcmp(o0, d.out1, no) == 0);
        free(k0), free(v0), free(o0);
        d.tkp = keep;
        bufs_free(&d);
    }
    /* pages of one row, 3 sequences: B x max_blocks table entries past int64 (b * max_blocks
     * would overflow) are refused before the table is read */
    pcase c1 = c;
    c1.B = 3, c1.page = 1;
    pbufs d1;
    bufs_make(&c1, &d1);
    ASSERT_EQ(run_paged(ctx, &c1, &d1, d1.bt, INT64_MAX / 2), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "max_blocks: got 4611686018427387903, expected 0 .. "
                                             "3074457345618258602");
    bufs_free(&d1);
    /* a bad entry past the blocks a sequence uses is never read */
    pbufs d;
    bufs_make(&c, &d);
    d.lens[0] = 3, d.lens[1] = 3;
    d.bt[4] = 1000, d.bt[d.nbt + 4] = -7;
    ASSERT_OK(ctx, run_paged(ctx, &c, &d, d.bt, d.nbt));
    bufs_free(&d);
    mha_ctx_free(ctx);
}

/* A page of near INT64_MAX rows (a stride-0 view, read only): the blocks a sequence uses were
 * counted as (len + page - 1) / page, which overflowed, so no entry was checked and a bad page
 * was read; now the entry is refused as any other. */
TEST(huge_page_table_checked) {
    mha_ctx *ctx = new_ctx(1);
    float pool[8] = {1, 2, 3, 4, 5, 6, 7, 8}, q[1] = {1}, out[1] = {42}, lse[1] = {42};
    const int64_t pages[3] = {INT64_MAX, INT64_MAX - 3, (int64_t)1 << 62};
    for (int k = 0; k < 3; k++) {
        const int64_t sp[4] = {1, 1, pages[k], 1}, st[4] = {1, 0, 0, 1};
        const int64_t sq[4] = {1, 1, 1, 1}, sl[3] = {1, 1, 1};
        mha_tensor tk = mha_tensor_strided(pool, 4, sp, st), tq = mha_tensor_make(q, 4, sq);
        mha_tensor to = mha_tensor_make(out, 4, sq), tl = mha_tensor_make(lse, 3, sl);
        const int32_t bt[1] = {3}, lens[1] = {5};
        mha_status s = mha_attn_kvcache_paged(ctx, NULL, &tq, &tk, &tk, bt, 1, NULL, NULL, lens,
                                              NULL, &to, &tl);
        ASSERT_EQ(s, MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                            "block_table[0][0]: got 3, expected a page in [0, 1)");
        ASSERT_TRUE(out[0] == 42 && lse[0] == 42);
    }
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(decode_matches_contiguous);
    RUN(prefill_matches_contiguous);
    RUN(threads_bitwise);
    RUN(shared_prefix_pages);
    RUN(bad_tables_nothing_written);
    RUN(huge_page_table_checked);
    return harness_report();
}
