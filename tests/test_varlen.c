/* test_varlen.c - packed variable-length batches (mha_attn_varlen_forward / _backward).
 *
 * The oracle is the dense core (itself checked against a float64 reference in test_attn.c):
 *   - each sequence of a packed batch, copied into a contiguous [1, H, L_s, D] problem and run
 *     through mha_attn_forward / mha_attn_backward, gives bitwise the packed call's out, lse,
 *     dq, dk and dv rows (no dropout: a dense B = 1 call draws head indices 0..H-1);
 *   - with dropout, the packed call equals the dense batch [batch, H, L, D] (equal lengths; or
 *     unequal ones padded with key_lengths where nothing is aligned to the lengths), which
 *     draws the same mask for sequence s as for batch entry s;
 * on every ISA, with causal (both alignments), sliding windows, softcap, ALiBi slopes ([H] and
 * [batch, H]: each sequence its row), grouped-query heads, strided packed views, a scale, empty
 * sequences; and bad inputs: each refused with a message naming the argument and
 * nothing written. */
#include "harness.h"
#include "core/internal.h" /* mha__fault_after: allocation failures */

#include <stdlib.h>

#define TEST_RNG_SEED 0x5eed1234ull
#include "rng.h"

#define MAXSEQ 8

typedef struct {
    int64_t batch, H, Hkv, D, Dv;
    int32_t lq[MAXSEQ], lk[MAXSEQ];
    int causal;
    float drop, scale;
    int layout; /* 0: contiguous [T, H, X]; 1: [H, T, X + 3] memory (strided views) */
    uint64_t seed;
    float softcap;
    int window;     /* window (wl, wr) */
    int64_t wl, wr; /* -1: unbounded */
    int alibi;      /* 0: none, 1: slopes [H], 2: [batch, H] */
} vcase;

/* A packed [T, H, X] tensor and its memory. */
typedef struct {
    float *buf;
    mha_tensor t;
} pview;

static pview packed(int64_t T, int64_t H, int64_t X, int layout) {
    pview p;
    int64_t shape[3] = {T, H, X};
    size_t n = (size_t)(T * H * (X + 3)) + 1;
    p.buf = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p.buf[i] = frand(); /* garbage in outputs: overwritten */
    if (layout == 0) {
        p.t = mha_tensor_make(p.buf, 3, shape);
    } else {
        int64_t stride[3] = {X + 3, T * (X + 3), 1};
        p.t = mha_tensor_strided(p.buf, 3, shape, stride);
    }
    return p;
}
static float *pat(const mha_tensor *t, int64_t r, int64_t h, int64_t x) {
    return t->data + r * t->stride[0] + h * t->stride[1] + x * t->stride[2];
}
static float *lat(const mha_tensor *t, int64_t h, int64_t r) {
    return t->data + h * t->stride[0] + r * t->stride[1];
}

/* One packed problem, its outputs and gradients. */
typedef struct {
    vcase c;
    int32_t cq[MAXSEQ + 1], ck[MAXSEQ + 1];
    int64_t Tq, Tk;
    pview q, k, v, out, dout, dq, dk, dv;
    float *lbuf;
    size_t nl;      /* floats in lbuf */
    mha_tensor lse; /* [H, Tq] */
    mha_attn_params p;
    mha_mask m;
    float slopes[MAXSEQ * 16];
    char name[240];
} vrun;

static void vrun_make(vrun *r, const vcase *c) {
    memset(r, 0, sizeof *r);
    r->c = *c;
    rng_state = c->seed * 0x9E3779B97F4A7C15ull + 7;
    for (int64_t s = 0; s < c->batch; s++) {
        r->cq[s + 1] = r->cq[s] + c->lq[s];
        r->ck[s + 1] = r->ck[s] + c->lk[s];
    }
    int64_t Tq = r->Tq = r->cq[c->batch], Tk = r->Tk = r->ck[c->batch], H = c->H, L = c->layout;
    r->q = packed(Tq, H, c->D, L), r->k = packed(Tk, c->Hkv, c->D, L);
    r->v = packed(Tk, c->Hkv, c->Dv, L), r->out = packed(Tq, H, c->Dv, L);
    r->dout = packed(Tq, H, c->Dv, L), r->dq = packed(Tq, H, c->D, L);
    r->dk = packed(Tk, c->Hkv, c->D, L), r->dv = packed(Tk, c->Hkv, c->Dv, L);
    int64_t ld = Tq + (L ? 5 : 0), ls[2] = {H, Tq}, lst[2] = {ld, 1};
    r->nl = (size_t)(H * ld);
    r->lbuf = malloc(sizeof(float) * (r->nl + 1));
    for (int64_t i = 0; i < H * ld; i++) r->lbuf[i] = frand();
    r->lse = mha_tensor_strided(r->lbuf, 2, ls, lst);
    r->p = mha_attn_params_default();
    r->p.dropout_p = c->drop, r->p.scale = c->scale;
    r->p.seed = c->seed + 11, r->p.offset = c->seed * 5;
    r->m = mha_mask_default();
    r->m.causal = (mha_causal)c->causal;
    r->p.softcap = c->softcap;
    r->m.window = c->window, r->m.window_left = c->wl, r->m.window_right = c->wr;
    for (int64_t i = 0; i < MAXSEQ * 16; i++) r->slopes[i] = 0.5f * (1 + frand());
    if (c->alibi) r->m.alibi_slopes = r->slopes, r->m.alibi_batched = c->alibi == 2;
    snprintf(r->name, sizeof r->name,
             "batch%lld H%lld Hkv%lld D%lld Dv%lld causal%d drop%g layout%d seed%llu softcap%g "
             "window%d(%lld,%lld) alibi%d",
             (long long)c->batch, (long long)H, (long long)c->Hkv, (long long)c->D,
             (long long)c->Dv, c->causal, (double)c->drop, c->layout, (unsigned long long)c->seed,
             (double)c->softcap, c->window, (long long)c->wl, (long long)c->wr, c->alibi);
}

static void vrun_free(vrun *r) {
    pview *all[8] = {&r->q, &r->k, &r->v, &r->out, &r->dout, &r->dq, &r->dk, &r->dv};
    for (int i = 0; i < 8; i++) free(all[i]->buf);
    free(r->lbuf);
}

static mha_status vrun_forward(mha_ctx *ctx, vrun *r) {
    return mha_attn_varlen_forward(ctx, &r->p, &r->q.t, &r->k.t, &r->v.t, r->cq, r->ck, r->c.batch,
                                   &r->m, &r->out.t, &r->lse);
}
static mha_status vrun_backward(mha_ctx *ctx, vrun *r) {
    return mha_attn_varlen_backward(ctx, &r->p, &r->q.t, &r->k.t, &r->v.t, r->cq, r->ck, r->c.batch,
                                    &r->m, &r->out.t, &r->lse, &r->dout.t, &r->dq.t, &r->dk.t,
                                    &r->dv.t);
}

/* Runs the packed forward and backward; 1 on success. */
static int vrun_go(mha_ctx *ctx, vrun *r) {
    mha_status st = vrun_forward(ctx, r);
    if (st == MHA_OK) st = vrun_backward(ctx, r);
    if (st != MHA_OK) FAILF("%s: %s: %s", r->name, mha_status_str(st), mha_ctx_errmsg(ctx));
    return st == MHA_OK;
}

/* A dense [B, H, R, X] contiguous buffer (zeros) and its view. */
typedef struct {
    float *buf;
    mha_tensor t;
} dview;
static dview dense(int64_t B, int64_t H, int64_t R, int64_t X) {
    dview d;
    int64_t shape[4] = {B, H, R, X};
    d.buf = calloc((size_t)(B * H * R * X) + 1, sizeof(float));
    d.t = mha_tensor_make(d.buf, 4, shape);
    return d;
}
static float *dat(const dview *d, int64_t b, int64_t h, int64_t r, int64_t x) {
    const mha_tensor *t = &d->t;
    return t->data + b * t->stride[0] + h * t->stride[1] + r * t->stride[2] + x;
}

/* Copies rows r0 .. r0 + n - 1 of packed p into batch entry b of dense d (or back: to_dense 0). */
static void copy_rows(const mha_tensor *p, int64_t r0, int64_t n, dview *d, int64_t b,
                      int to_dense) {
    for (int64_t h = 0; h < p->shape[1]; h++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t x = 0; x < p->shape[2]; x++) {
                float *a = pat(p, r0 + i, h, x), *z = dat(d, b, h, i, x);
                if (to_dense) *z = *a;
                else *a = *z;
            }
}

/* Rows r0 .. r0 + n - 1 of packed p against batch entry b of dense d: bitwise (tol < 0) or
 * within |got - want| <= tol * (1 + |want|). 1 when they agree. */
static int same_rows(const char *name, const char *what, int64_t s, const mha_tensor *p, int64_t r0,
                     int64_t n, const dview *d, int64_t b, double tol) {
    for (int64_t h = 0; h < p->shape[1]; h++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t x = 0; x < p->shape[2]; x++) {
                float g = *pat(p, r0 + i, h, x), w = *dat(d, b, h, i, x);
                int ok = tol < 0 ? memcmp(&g, &w, sizeof g) == 0
                                 : fabs((double)g - w) <= tol * (1 + fabs((double)w));
                if (!ok) {
                    FAILF("%s: %s of sequence %lld, row %lld head %lld [%lld]: got %.9g, "
                          "expected %.9g (dense)",
                          name, what, (long long)s, (long long)i, (long long)h, (long long)x, g, w);
                    return 0;
                }
            }
    return 1;
}
static int same_lse(const char *name, int64_t s, const mha_tensor *l, int64_t r0, int64_t n,
                    const float *dl, int64_t ldh, double tol) {
    for (int64_t h = 0; h < l->shape[0]; h++)
        for (int64_t i = 0; i < n; i++) {
            float g = *lat(l, h, r0 + i), w = dl[h * ldh + i];
            int ok = tol < 0 || isinf(w) ? memcmp(&g, &w, sizeof g) == 0
                                         : fabs((double)g - w) <= tol * (1 + fabs((double)w));
            if (!ok) {
                FAILF("%s: lse of sequence %lld, head %lld row %lld: got %.9g, expected %.9g", name,
                      (long long)s, (long long)h, (long long)i, g, w);
                return 0;
            }
        }
    return 1;
}

/* The dense problem of batch entries [B, H, Lmax, .] filled from the packed sequences (zero
 * padded), run forward and backward with mask m; its outputs compared with the packed ones
 * (tol < 0: bitwise) for sequences s0 .. s0 + B - 1. */
static int check_dense(mha_ctx *ctx, vrun *r, int64_t s0, int64_t B, const mha_mask *m,
                       double tol) {
    const vcase *c = &r->c;
    int64_t Lm = 0, Sm = 0, H = c->H;
    for (int64_t b = 0; b < B; b++) {
        if (c->lq[s0 + b] > Lm) Lm = c->lq[s0 + b];
        if (c->lk[s0 + b] > Sm) Sm = c->lk[s0 + b];
    }
    dview q = dense(B, H, Lm, c->D), k = dense(B, c->Hkv, Sm, c->D);
    dview v = dense(B, c->Hkv, Sm, c->Dv), o = dense(B, H, Lm, c->Dv);
    dview go = dense(B, H, Lm, c->Dv), gq = dense(B, H, Lm, c->D);
    dview gk = dense(B, c->Hkv, Sm, c->D), gv = dense(B, c->Hkv, Sm, c->Dv);
    float *lse = calloc((size_t)(B * H * Lm) + 1, sizeof(float));
    int64_t ls[3] = {B, H, Lm};
    mha_tensor lt = mha_tensor_make(lse, 3, ls);
    for (int64_t b = 0; b < B; b++) {
        int64_t i0 = r->cq[s0 + b], L = c->lq[s0 + b], j0 = r->ck[s0 + b], S = c->lk[s0 + b];
        copy_rows(&r->q.t, i0, L, &q, b, 1), copy_rows(&r->dout.t, i0, L, &go, b, 1);
        copy_rows(&r->k.t, j0, S, &k, b, 1), copy_rows(&r->v.t, j0, S, &v, b, 1);
    }
    int ok = 0;
    mha_mask mm = *m; /* batched slopes: from sequence s0's row */
    if (mm.alibi_slopes && mm.alibi_batched) mm.alibi_slopes += s0 * H;
    mha_status st = mha_attn_forward(ctx, &r->p, &q.t, &k.t, &v.t, &mm, &o.t, &lt, NULL);
    if (st == MHA_OK)
        st = mha_attn_backward(ctx, &r->p, &q.t, &k.t, &v.t, &mm, &o.t, &lt, &go.t, &gq.t, &gk.t,
                               &gv.t);
    if (st != MHA_OK) {
        FAILF("%s: dense: %s: %s", r->name, mha_status_str(st), mha_ctx_errmsg(ctx));
        goto done;
    }
    for (int64_t b = 0; b < B; b++) {
        int64_t s = s0 + b, i0 = r->cq[s], L = c->lq[s], j0 = r->ck[s], S = c->lk[s];
        if (!same_rows(r->name, "out", s, &r->out.t, i0, L, &o, b, tol) ||
            !same_lse(r->name, s, &r->lse, i0, L, lse + b * H * Lm, Lm, tol) ||
            !same_rows(r->name, "dq", s, &r->dq.t, i0, L, &gq, b, tol) ||
            !same_rows(r->name, "dk", s, &r->dk.t, j0, S, &gk, b, tol) ||
            !same_rows(r->name, "dv", s, &r->dv.t, j0, S, &gv, b, tol))
            goto done;
    }
    ok = 1;
done:
    free(q.buf), free(k.buf), free(v.buf), free(o.buf), free(go.buf);
    free(gq.buf), free(gk.buf), free(gv.buf), free(lse);
    return ok;
}

/* Every sequence alone as a dense B = 1 problem: bitwise the packed results (no dropout). */
static int check_each_sequence(mha_ctx *ctx, vrun *r) {
    for (int64_t s = 0; s < r->c.batch; s++)
        if (!check_dense(ctx, r, s, 1, &r->m, -1)) return 0;
    return 1;
}

/* The whole packed batch as one dense batch (padded, keys beyond each length excluded by
 * key_lengths): equal with dropout, as sequence s draws batch entry s's mask. */
static int check_dense_batch(mha_ctx *ctx, vrun *r) {
    int32_t lens[MAXSEQ];
    mha_mask m = r->m;
    memcpy(lens, r->c.lk, sizeof lens);
    m.key_lengths = lens;
    return check_dense(ctx, r, 0, r->c.batch, &m, 2e-5);
}

static const vcase CASES[] = {
    /* batch, H, Hkv, D, Dv, lq, lk, causal, drop, scale, layout, seed */
    {3, 4, 4, 16, 16, {5, 1, 9}, {7, 3, 9}, MHA_CAUSAL_NONE, 0, 0, 0, 1, 0, 0, 0, 0, 0},
    {4,
     6,
     2,
     32,
     24,
     {100, 0, 37, 130},
     {150, 20, 0, 130},
     MHA_CAUSAL_BOTTOM_RIGHT,
     0,
     0,
     1,
     2,
     0,
     0,
     0,
     0,
     0},
    {2, 4, 1, 64, 64, {97, 300}, {97, 260}, MHA_CAUSAL_TOP_LEFT, 0, 0.3f, 0, 3, 0, 0, 0, 0, 0},
    {5,
     2,
     2,
     7,
     5,
     {1, 1, 1, 1, 1},
     {33, 1, 0, 64, 5},
     MHA_CAUSAL_BOTTOM_RIGHT,
     0,
     0,
     1,
     4,
     0,
     0,
     0,
     0,
     0},
    {3,
     4,
     2,
     80,
     80,
     {20, 45, 3},
     {64, 45, 130},
     MHA_CAUSAL_BOTTOM_RIGHT,
     0,
     0,
     0,
     5,
     0,
     0,
     0,
     0,
     0},
    /* windows, softcap and ALiBi (batched: each sequence its own slopes), aligned per sequence */
    {4,
     4,
     2,
     16,
     16,
     {30, 0, 70, 9},
     {50, 10, 70, 1},
     MHA_CAUSAL_BOTTOM_RIGHT,
     0,
     0,
     1,
     6,
     5.0f,
     1,
     8,
     0,
     2},
    {3, 2, 1, 32, 32, {140, 5, 64}, {100, 40, 64}, MHA_CAUSAL_NONE, 0, 0, 0, 7, 0, 1, 20, 10, 1},
    {2, 3, 3, 8, 8, {33, 17}, {17, 33}, MHA_CAUSAL_TOP_LEFT, 0, 0.5f, 1, 8, 2.0f, 1, -1, 4, 0},
};

/* Runs every case on every ISA through the packed calls, then check. */
static void run_cases(const vcase *cases, size_t n, int (*check)(mha_ctx *, vrun *)) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        for (size_t i = 0; i < n; i++) {
            vrun r;
            vrun_make(&r, &cases[i]);
            int ok = vrun_go(ctx, &r) && check(ctx, &r);
            vrun_free(&r);
            if (!ok) {
                printf("  (isa %s)\n", mha_isa_name(mha_ctx_isa(ctx)));
                goto out;
            }
        }
    }
out:
    mha_ctx_free(ctx);
}

TEST(varlen_equals_dense_per_sequence) {
    run_cases(CASES, sizeof CASES / sizeof CASES[0], check_each_sequence);
}

TEST(varlen_dropout_equals_dense_batch) {
    static const vcase cases[] = {
        /* equal lengths: causal and grouped-query heads too */
        {3,
         4,
         2,
         16,
         16,
         {40, 40, 40},
         {70, 70, 70},
         MHA_CAUSAL_BOTTOM_RIGHT,
         0.3f,
         0,
         1,
         21,
         0,
         0,
         0,
         0,
         0},
        {2,
         2,
         2,
         32,
         8,
         {130, 130},
         {130, 130},
         MHA_CAUSAL_TOP_LEFT,
         0.1f,
         0,
         0,
         22,
         0,
         0,
         0,
         0,
         0},
        {3,
         4,
         2,
         16,
         16,
         {40, 40, 40},
         {70, 70, 70},
         MHA_CAUSAL_BOTTOM_RIGHT,
         0.3f,
         0,
         0,
         24,
         3.0f,
         1,
         16,
         4,
         2},
        /* unequal lengths: padded with key_lengths (nothing aligned to the lengths) */
        {4,
         2,
         1,
         8,
         8,
         {10, 33, 0, 5},
         {50, 3, 12, 0},
         MHA_CAUSAL_NONE,
         0.2f,
         0,
         1,
         23,
         0,
         0,
         0,
         0,
         0},
    };
    run_cases(cases, sizeof cases / sizeof cases[0], check_dense_batch);
}

/* Results are bitwise the same for 1, 2 and 3 threads (each sequence runs on every thread). */
TEST(varlen_threads_bitwise) {
    static const vcase c = {
        3,    4, 2,  32, 16, {70, 0, 200}, {90, 33, 150}, MHA_CAUSAL_BOTTOM_RIGHT, 0.2f, 0, 1, 51,
        4.0f, 1, 40, 8,  2};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    vrun r[3];
    int ok = 1;
    for (int t = 0; t < 3; t++) {
        vrun_make(&r[t], &c);
        ASSERT_OK(ctx, mha_ctx_set_threads(ctx, t + 1));
        ok = ok && vrun_go(ctx, &r[t]);
    }
    for (int t = 1; t < 3 && ok; t++) {
        pview *a[4] = {&r[0].out, &r[0].dq, &r[0].dk, &r[0].dv};
        pview *b[4] = {&r[t].out, &r[t].dq, &r[t].dk, &r[t].dv};
        for (int i = 0; i < 4 && ok; i++) {
            size_t n = (size_t)(a[i]->t.shape[0] * a[i]->t.shape[1] * (a[i]->t.shape[2] + 3));
            if (memcmp(a[i]->buf, b[i]->buf, n * sizeof(float)) != 0) {
                FAILF("%s: output %d differs between 1 and %d threads", r[0].name, i, t + 1);
                ok = 0;
            }
        }
        if (ok && memcmp(r[0].lbuf, r[t].lbuf, r[0].nl * sizeof(float)) != 0) {
            FAILF("%s: lse differs between 1 and %d threads", r[0].name, t + 1);
            ok = 0;
        }
    }
    for (int t = 0; t < 3; t++) vrun_free(&r[t]);
    mha_ctx_free(ctx);
}

/* Small sequences run side by side, one thread each (src/attn/attn_varlen.c): an allocation
 * that fails on one of those threads is MHA_ERR_NOMEM with the call's message in the caller's
 * context, for every allocation in turn, and the call works again afterwards. */
TEST(varlen_side_by_side_allocation_failures) {
    static const vcase c = {
        3, 4, 2, 32, 16, {70, 5, 200}, {90, 33, 150}, MHA_CAUSAL_BOTTOM_RIGHT, 0, 0, 0, 8,
        0, 0, 0, 0,  0};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 2));
    vrun r;
    vrun_make(&r, &c);
    int failures = 0;
    for (long n = 0; n < 64; n++) {
        mha__fault_after(n);
        mha_status st = vrun_forward(ctx, &r);
        if (st == MHA_OK) st = vrun_backward(ctx, &r);
        mha__fault_after(-1);
        if (st == MHA_OK) break;
        failures++;
        ASSERT_EQ(st, MHA_ERR_NOMEM);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_varlen_");
    }
    ASSERT_TRUE(failures >= 3); /* every sequence's forward allocates */
    ASSERT_TRUE(vrun_go(ctx, &r));
    vrun_free(&r);
    mha_ctx_free(ctx);
}

/* Sequences with no query (nothing to compute; their keys get zero gradients), with no key
 * (out 0, lse -inf, dq 0), both, and an empty batch. */
TEST(varlen_empty_sequences) {
    static const vcase c = {4, 2, 2, 8, 4, {0, 4, 0, 3}, {5, 0, 0, 6}, MHA_CAUSAL_NONE, 0, 0, 0, 31,
                            0, 0, 0, 0, 0};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        vrun r;
        vrun_make(&r, &c);
        int ok = vrun_go(ctx, &r);
        for (int64_t h = 0; ok && h < 2; h++) {
            for (int64_t i = 0; i < 4; i++) { /* sequence 1: rows 0..3, no key */
                if (*lat(&r.lse, h, i) != -INFINITY) {
                    FAILF("lse[%lld, %lld]", (long long)h, (long long)i);
                    ok = 0;
                }
                for (int64_t x = 0; x < 4; x++)
                    if (*pat(&r.out.t, i, h, x) != 0) {
                        FAILF("out row %lld", (long long)i);
                        ok = 0;
                    }
                for (int64_t x = 0; x < 8; x++)
                    if (*pat(&r.dq.t, i, h, x) != 0) {
                        FAILF("dq row %lld", (long long)i);
                        ok = 0;
                    }
            }
            for (int64_t j = 0; j < 5; j++) { /* sequence 0: keys 0..4, no query */
                for (int64_t x = 0; x < 8; x++)
                    if (*pat(&r.dk.t, j, h, x) != 0) {
                        FAILF("dk row %lld", (long long)j);
                        ok = 0;
                    }
                for (int64_t x = 0; x < 4; x++)
                    if (*pat(&r.dv.t, j, h, x) != 0) {
                        FAILF("dv row %lld", (long long)j);
                        ok = 0;
                    }
            }
        }
        ok = ok && check_each_sequence(ctx, &r);
        vrun_free(&r);
        if (!ok) break;
    }
    { /* batch 0: cu = {0}, no token */
        int32_t cu[1] = {0};
        int64_t s0[3] = {0, 2, 8}, l0[2] = {2, 0};
        mha_tensor q = mha_tensor_make(NULL, 3, s0), l = mha_tensor_make(NULL, 2, l0);
        ASSERT_OK(ctx, mha_attn_varlen_forward(ctx, NULL, &q, &q, &q, cu, cu, 0, NULL, &q, &l));
        ASSERT_OK(ctx, mha_attn_varlen_backward(ctx, NULL, &q, &q, &q, cu, cu, 0, NULL, &q, &l, &q,
                                                &q, &q, &q));
    }
    mha_ctx_free(ctx);
}

/* A bad argument: the status, the message, and no output written (out and lse keep their
 * contents, as do dq, dk, dv in the backward). */
static int refused(mha_ctx *ctx, vrun *r, mha_status want, const char *msg) {
    size_t nb[5] = {(size_t)(r->Tq * r->c.H * (r->c.Dv + 3)),
                    (size_t)(r->Tq * r->c.H * (r->c.D + 3)),
                    (size_t)(r->Tk * r->c.Hkv * (r->c.D + 3)),
                    (size_t)(r->Tk * r->c.Hkv * (r->c.Dv + 3)), r->nl};
    float *bufs[5] = {r->out.buf, r->dq.buf, r->dk.buf, r->dv.buf, r->lbuf}, *copy[5];
    for (int i = 0; i < 5; i++) {
        copy[i] = malloc(sizeof(float) * (nb[i] + 1));
        memcpy(copy[i], bufs[i], sizeof(float) * nb[i]);
    }
    int ok = 1;
    for (int dir = 0; dir < 2 && ok; dir++) {
        mha_status st = dir == 0 ? vrun_forward(ctx, r) : vrun_backward(ctx, r);
        const char *fn = dir == 0 ? "mha_attn_varlen_forward: " : "mha_attn_varlen_backward: ";
        if (st != want || !strstr(mha_ctx_errmsg(ctx), msg) ||
            strncmp(mha_ctx_errmsg(ctx), fn, strlen(fn)) != 0) {
            FAILF("%sexpected %s \"%s\", got %s \"%s\"", fn, mha_status_str(want), msg,
                  mha_status_str(st), mha_ctx_errmsg(ctx));
            ok = 0;
        }
        for (int i = 0; i < 5 && ok; i++)
            if (memcmp(copy[i], bufs[i], sizeof(float) * nb[i]) != 0) {
                FAILF("%s: output %d written by a refused call", msg, i);
                ok = 0;
            }
    }
    for (int i = 0; i < 5; i++) free(copy[i]);
    return ok;
}

TEST(varlen_bad_inputs) {
    static const vcase c = {3, 4,  2, 8, 8, {3, 2, 3}, {4, 4, 4}, MHA_CAUSAL_NONE, 0, 0,
                            0, 41, 0, 0, 0, 0,         0};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    vrun r;
    vrun_make(&r, &c); /* Tq = 8, Tk = 12 */
    int32_t cq[4], ck[4];
    memcpy(cq, r.cq, sizeof cq), memcpy(ck, r.ck, sizeof ck);
#define BAD(want, msg)                                                                             \
    do {                                                                                           \
        if (!refused(ctx, &r, want, msg)) goto out;                                                \
        memcpy(r.cq, cq, sizeof cq), memcpy(r.ck, ck, sizeof ck);                                  \
    } while (0)
    r.cq[0] = 1;
    BAD(MHA_ERR_INVALID_ARG, "cu_seqlens_q[0]: got 1, expected 0 (prefix sums start at 0)");
    r.cq[2] = 2;
    BAD(MHA_ERR_INVALID_ARG, "cu_seqlens_q[2]: got 2, expected >= 3 (cu_seqlens_q[1]");
    r.cq[3] = 10;
    BAD(MHA_ERR_INVALID_ARG, "cu_seqlens_q[3]: got 10, expected <= 8 (total tokens q.shape[0])");
    r.ck[3] = 11; /* every earlier sequence fine: still nothing written */
    BAD(MHA_ERR_INVALID_ARG, "cu_seqlens_k[3]: got 11, expected 12 (the last prefix sum");
    r.ck[1] = 13;
    BAD(MHA_ERR_INVALID_ARG, "cu_seqlens_k[1]: got 13, expected <= 12 (total tokens k.shape[0])");
    if (mha_attn_varlen_forward(ctx, NULL, &r.q.t, &r.k.t, &r.v.t, r.cq, NULL, 3, NULL, &r.out.t,
                                NULL) != MHA_ERR_INVALID_ARG)
        FAILF("NULL cu_seqlens_k accepted");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "cu_seqlens_k: got NULL, expected int32 [batch + 1]");
    if (mha_attn_varlen_forward(ctx, NULL, &r.q.t, &r.k.t, &r.v.t, r.cq, r.ck, -1, NULL, &r.out.t,
                                NULL) != MHA_ERR_INVALID_ARG)
        FAILF("batch -1 accepted");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "batch: got -1, expected >= 0");
    /* heads and shapes */
    r.k.t.shape[1] = 3, r.v.t.shape[1] = 3;
    BAD(MHA_ERR_SHAPE, "k.shape[1]: got 3, expected a divisor of q's 4 heads");
    r.k.t.shape[1] = 2, r.v.t.shape[1] = 2;
    r.v.t.shape[1] = 1;
    BAD(MHA_ERR_SHAPE, "v.shape[1]: got 1, expected 2 (k heads)");
    r.v.t.shape[1] = 2;
    r.k.t.shape[2] = 7;
    BAD(MHA_ERR_SHAPE, "k.shape[2]: got 7, expected 8 ([Tk, Hkv, D], q head dim)");
    r.k.t.shape[2] = 8;
    r.lse.shape[1] = 7;
    BAD(MHA_ERR_SHAPE, "lse.shape[1]: got 7, expected 8 ([H, Tq])");
    r.lse.shape[1] = 8;
    r.q.t.ndim = 4;
    BAD(MHA_ERR_SHAPE, "q.ndim: got 4, expected 3 ([Tq, H, D])");
    r.q.t.ndim = 3;
    /* masks that need a dense layout, slopes, parameters, aliasing */
    int32_t lens[3] = {4, 4, 4};
    r.m.key_lengths = lens;
    BAD(MHA_ERR_INVALID_ARG, "mask->key_lengths: got a mask, expected NULL");
    r.m.key_lengths = NULL;
    uint8_t pad[12] = {0};
    r.m.key_padding = pad;
    BAD(MHA_ERR_INVALID_ARG, "mask->key_padding: got a mask, expected NULL");
    r.m.key_padding = NULL;
    float slopes[12] = {0.5f, 0.25f, 0.125f, 0.0625f, 1, 1, 1, 1, 1, NAN, 1, 1};
    r.m.alibi_slopes = slopes, r.m.alibi_batched = 1;
    BAD(MHA_ERR_INVALID_ARG, "mask->alibi_slopes[9]: got nan, expected a finite slope");
    r.m.alibi_slopes = NULL, r.m.alibi_batched = 0;
    r.m.causal = (mha_causal)7;
    BAD(MHA_ERR_INVALID_ARG, "mask->causal: got 7");
    r.m.causal = MHA_CAUSAL_NONE;
    r.m.window = 1, r.m.window_left = -2;
    BAD(MHA_ERR_INVALID_ARG, "mask->window_left: got -2, expected >= -1 (-1: unbounded)");
    r.m.window = 0, r.m.window_left = 0;
    r.p.softcap = -1;
    BAD(MHA_ERR_INVALID_ARG, "p->softcap: got -1, expected a finite value >= 0");
    r.p.softcap = 0;
    r.p.dropout_p = 1.5f;
    BAD(MHA_ERR_INVALID_ARG, "p->dropout_p: got 1.5, expected a value in [0, 1]");
    r.p.dropout_p = 0;
    float *o = r.out.t.data;
    r.out.t.data = r.q.t.data;
    if (vrun_forward(ctx, &r) != MHA_ERR_INVALID_ARG) FAILF("out aliasing q accepted");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_varlen_forward: out overlaps q");
    r.out.t.data = o;
    r.dk.t.data = r.k.t.data;
    if (vrun_backward(ctx, &r) != MHA_ERR_INVALID_ARG) FAILF("dk aliasing k accepted");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_varlen_backward: dk overlaps k");
    r.dk.t.data = r.dk.buf;
    /* the prefix sums in an output's memory: read while it is written */
    memcpy(r.out.t.data, r.cq, sizeof(int32_t) * 4);
    if (mha_attn_varlen_forward(ctx, NULL, &r.q.t, &r.k.t, &r.v.t,
                                (const int32_t *)(void *)r.out.t.data, r.ck, 3, NULL, &r.out.t,
                                NULL) != MHA_ERR_INVALID_ARG)
        FAILF("out over cu_seqlens_q accepted");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_varlen_forward: out overlaps cu_seqlens_q");
    memcpy(r.dq.t.data, r.ck, sizeof(int32_t) * 4);
    if (mha_attn_varlen_backward(ctx, NULL, &r.q.t, &r.k.t, &r.v.t, r.cq,
                                 (const int32_t *)(void *)r.dq.t.data, 3, NULL, &r.out.t, &r.lse,
                                 &r.dout.t, &r.dq.t, &r.dk.t, &r.dv.t) != MHA_ERR_INVALID_ARG)
        FAILF("dq over cu_seqlens_k accepted");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_varlen_backward: dq overlaps cu_seqlens_k");
    if (mha_attn_varlen_backward(ctx, NULL, &r.q.t, &r.k.t, &r.v.t, r.cq, r.ck, 3, NULL, &r.out.t,
                                 NULL, &r.dout.t, &r.dq.t, &r.dk.t, &r.dv.t) != MHA_ERR_INVALID_ARG)
        FAILF("backward without lse accepted");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_varlen_backward: lse: got NULL");
    /* and the same arguments, fixed, work */
    ASSERT_OK(ctx, vrun_forward(ctx, &r));
    ASSERT_OK(ctx, vrun_backward(ctx, &r));
#undef BAD
out:
    vrun_free(&r);
    mha_ctx_free(ctx);
}

/* bfloat16 and float16 packed batches: each sequence's out, lse, dq, dk and dv bitwise those of
 * the dense core on a [1, H, L_s, D] view of the same packed memory (the dense core's bf16 and
 * f16 are checked against float64 in test_attn_dtype), on every ISA; a mismatched dtype is
 * refused naming the tensor. */
TEST(varlen_bf16_f16_equal_dense_per_sequence) {
    enum {
        NS = 3,
        H = 4,
        HKV = 2,
        D = 16
    };
    const int32_t cq[NS + 1] = {0, 5, 5, 23}, ck[NS + 1] = {0, 9, 12, 31};
    const int64_t Tq = cq[NS], Tk = ck[NS];
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    for (int d = 0; d < 2; d++) {
        const mha_dtype dt = d ? MHA_DTYPE_F16 : MHA_DTYPE_BF16;
        uint16_t *buf[8];
        int64_t T[8] = {Tq, Tk, Tk, Tq, Tq, Tq, Tk, Tk}, Hs[8] = {H, HKV, HKV, H, H, H, HKV, HKV};
        mha_tensor t[8]; /* q k v out dout dq dk dv, packed [T, heads, D] */
        for (int i = 0; i < 8; i++) {
            buf[i] = malloc(sizeof(uint16_t) * (size_t)(2 * T[i] * Hs[i] * D));
            int64_t sh[3] = {T[i], Hs[i], D};
            for (int64_t e = 0; e < T[i] * Hs[i] * D; e++) /* small values, exact in both */
                buf[i][e] = i < 5 ? (dt == MHA_DTYPE_BF16 ? 0x3c00 : 0x2400) +
                                        (uint16_t)(frand() * 200 + 200)
                                  : 0;
            t[i] = mha_tensor_typed(buf[i], dt, 3, sh, NULL);
        }
        float lse[H * 23], lse1[H * 23];
        int64_t ls[2] = {H, Tq};
        mha_tensor tl = mha_tensor_make(lse, 2, ls);
        mha_mask m = mha_mask_default();
        m.causal = MHA_CAUSAL_BOTTOM_RIGHT;
        FOR_EACH_ISA(ctx) {
            ASSERT_OK(ctx, mha_attn_varlen_forward(ctx, NULL, &t[0], &t[1], &t[2], cq, ck, NS, &m,
                                                   &t[3], &tl));
            ASSERT_OK(ctx, mha_attn_varlen_backward(ctx, NULL, &t[0], &t[1], &t[2], cq, ck, NS, &m,
                                                    &t[3], &tl, &t[4], &t[5], &t[6], &t[7]));
            for (int s = 0; s < NS; s++) {
                const int64_t L = cq[s + 1] - cq[s], S = ck[s + 1] - ck[s];
                if (L == 0) continue;
                mha_tensor v[8]; /* the sequence's [1, heads, len, D] views, into copies of the
                                  * outputs (so the comparison is with fresh results) */
                uint16_t *o[8] = {0};
                for (int i = 0; i < 8; i++) {
                    const int64_t r0 = i == 0 || i == 3 || i == 4 || i == 5 ? cq[s] : ck[s];
                    const int64_t n = r0 == cq[s] && (i == 0 || i >= 3) && i <= 5 ? L : S;
                    int64_t sh[4] = {1, Hs[i], n, D}, st[4] = {0, D, Hs[i] * D, 1};
                    uint16_t *base = buf[i] + r0 * Hs[i] * D;
                    if (i >= 3 && i != 4) { /* outputs: a copy of the packed rows' layout */
                        o[i] = calloc((size_t)(T[i] * Hs[i] * D), sizeof(uint16_t));
                        base = o[i];
                    }
                    v[i] = mha_tensor_typed(base, dt, 4, sh, st);
                }
                int64_t l1[3] = {1, H, L}, l1s[3] = {0, L, 1};
                mha_tensor t1 = mha_tensor_strided(lse1, 3, l1, l1s);
                ASSERT_OK(ctx,
                          mha_attn_forward(ctx, NULL, &v[0], &v[1], &v[2], &m, &v[3], &t1, NULL));
                mha_tensor vo = v[3]; /* the backward reads the packed call's out */
                vo.ptr = buf[3] + cq[s] * H * D;
                ASSERT_OK(ctx, mha_attn_backward(ctx, NULL, &v[0], &v[1], &v[2], &m, &vo, &t1,
                                                 &v[4], &v[5], &v[6], &v[7]));
                for (int i = 3; i < 8; i++) {
                    if (i == 4) continue;
                    const int64_t r0 = i <= 5 ? cq[s] : ck[s], n = i <= 5 ? L : S;
                    ASSERT_EQ(memcmp(o[i], buf[i] + r0 * Hs[i] * D,
                                     sizeof(uint16_t) * (size_t)(n * Hs[i] * D)),
                              0);
                    free(o[i]);
                }
                for (int h = 0; h < H; h++)
                    ASSERT_EQ(memcmp(lse1 + h * L, lse + h * Tq + cq[s], sizeof(float) * (size_t)L),
                              0);
            }
        }
        mha_tensor bad = t[1];
        bad.dtype = d ? MHA_DTYPE_BF16 : MHA_DTYPE_F16;
        ASSERT_EQ(
            mha_attn_varlen_forward(ctx, NULL, &t[0], &bad, &t[2], cq, ck, NS, &m, &t[3], &tl),
            MHA_ERR_UNSUPPORTED);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_varlen_forward: k.dtype: got");
        for (int i = 0; i < 8; i++) free(buf[i]);
    }
    mha_ctx_free(ctx);
}

/* H = 0 query heads: an empty problem (as mha_attn_forward's), with Hkv = 0 or any Hkv > 0:
 * nothing written in the forward, dk and dv set to 0 in the backward. */
TEST(varlen_zero_heads) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    enum {
        TQ = 5,
        TK = 7,
        D = 4,
        DV = 3,
        N = 256
    };
    int32_t cq[3] = {0, 2, TQ}, ck[3] = {0, 4, TK};
    static float in[N], outb[N], dkb[N], dvb[N];
    for (int x = 0; x < N; x++) in[x] = (float)x / N;
    for (int64_t Hkv = 0; Hkv <= 2; Hkv += 2) {
        for (int x = 0; x < N; x++) outb[x] = dkb[x] = dvb[x] = 7.0f;
        int64_t sq[3] = {TQ, 0, D}, sk[3] = {TK, Hkv, D}, sv[3] = {TK, Hkv, DV};
        int64_t so[3] = {TQ, 0, DV}, sl[2] = {0, TQ};
        mha_tensor q = mha_tensor_make(in, 3, sq), k = mha_tensor_make(in, 3, sk);
        mha_tensor v = mha_tensor_make(in, 3, sv), o = mha_tensor_make(outb, 3, so);
        mha_tensor l = mha_tensor_make(outb + 64, 2, sl), g = mha_tensor_make(in, 3, so);
        mha_tensor dq = mha_tensor_make(outb + 128, 3, sq), dk = mha_tensor_make(dkb, 3, sk);
        mha_tensor dv = mha_tensor_make(dvb, 3, sv);
        mha_mask m = mha_mask_default();
        m.causal = MHA_CAUSAL_BOTTOM_RIGHT;
        ASSERT_OK(ctx, mha_attn_varlen_forward(ctx, NULL, &q, &k, &v, cq, ck, 2, &m, &o, &l));
        ASSERT_OK(ctx, mha_attn_varlen_backward(ctx, NULL, &q, &k, &v, cq, ck, 2, &m, &o, &l, &g,
                                                &dq, &dk, &dv));
        for (int x = 0; x < N; x++) {
            if (outb[x] != 7.0f)
                FAILF("Hkv %lld: out, lse or dq element %d written", (long long)Hkv, x);
            if (dkb[x] != (x < TK * Hkv * D ? 0.0f : 7.0f))
                FAILF("Hkv %lld: dk float %d: got %g", (long long)Hkv, x, dkb[x]);
            if (dvb[x] != (x < TK * Hkv * DV ? 0.0f : 7.0f))
                FAILF("Hkv %lld: dv float %d: got %g", (long long)Hkv, x, dvb[x]);
            if (harness_cur_failed) return;
        }
    }
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(varlen_equals_dense_per_sequence);
    RUN(varlen_dropout_equals_dense_batch);
    RUN(varlen_threads_bitwise);
    RUN(varlen_side_by_side_allocation_failures);
    RUN(varlen_empty_sequences);
    RUN(varlen_zero_heads);
    RUN(varlen_bad_inputs);
    RUN(varlen_bf16_f16_equal_dense_per_sequence);
    return harness_report();
}
