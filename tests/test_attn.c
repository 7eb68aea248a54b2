/* test_attn.c - the attention core (mha_attn_forward / mha_attn_backward) against a naive
 * float64 reference with the same mask and dropout semantics, its analytic backward, and
 * float64 central finite differences of the reference forward. */
#include "harness.h"
#include "attn/attn_common.h"
#include "core/internal.h"
#include "kernels/kernels.h"

/* ------------------------------------------------------------------------------------------
 * Random numbers (xorshift64*, reproducible; the seed is printed on failure through `what`)
 * ---------------------------------------------------------------------------------------- */
#define TEST_RNG_SEED 0x1234567ull
#include "rng.h"

/* ------------------------------------------------------------------------------------------
 * A test case: sizes, masks, dropout, memory layout
 * ---------------------------------------------------------------------------------------- */
typedef struct {
    int64_t B, H, L, S, D, Dv;
    int64_t Hkv;   /* key/value heads (grouped-query attention); 0: H */
    int causal;    /* mha_causal */
    int pad, lens; /* key_padding, key_lengths */
    int abool, afloat, batched;
    int fullrow; /* force fully masked rows through the attn masks */
    float drop, scale;
    int layout; /* 0: contiguous [B,H,R,X]; 1: [B,R,H,X+3] memory (strided views) */
    uint64_t seed;
} tcase;

/* The key/value heads of a case, and the one query head h of batch b reads (as [B*Hkv] rows). */
static int64_t kv_heads(const tcase *c) { return c->Hkv ? c->Hkv : c->H; }
static int64_t kv_of(const tcase *c, int64_t b, int64_t h) {
    return b * kv_heads(c) + h / (c->H / kv_heads(c));
}

typedef struct {
    float *buf;
    mha_tensor t;
} tview;

static tview view_alloc(int64_t B, int64_t H, int64_t R, int64_t X, int layout) {
    tview v;
    int64_t shape[4] = {B, H, R, X};
    if (layout == 0) {
        size_t n = (size_t)(B * H * R * X) + 1;
        v.buf = calloc(n, sizeof(float));
        v.t = mha_tensor_make(v.buf, 4, shape);
    } else {
        int64_t xs = X + 3;
        size_t n = (size_t)(B * R * H * xs) + 1;
        v.buf = calloc(n, sizeof(float));
        int64_t stride[4] = {R * H * xs, xs, H * xs, 1};
        v.t = mha_tensor_strided(v.buf, 4, shape, stride);
    }
    return v;
}
static float *vat(const mha_tensor *t, int64_t b, int64_t h, int64_t r, int64_t x) {
    return t->data + b * t->stride[0] + h * t->stride[1] + r * t->stride[2] + x * t->stride[3];
}
static void view_fill(tview *v) {
    const mha_tensor *t = &v->t;
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (int64_t h = 0; h < t->shape[1]; h++)
            for (int64_t r = 0; r < t->shape[2]; r++)
                for (int64_t x = 0; x < t->shape[3]; x++) *vat(t, b, h, r, x) = frand();
}
/* Copies a view into a contiguous double array (caller frees). */
static double *view_to_d(const mha_tensor *t) {
    int64_t n = mha_tensor_numel(t), at = 0;
    double *d = malloc(sizeof(double) * (size_t)(n + 1));
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (int64_t h = 0; h < t->shape[1]; h++)
            for (int64_t r = 0; r < t->shape[2]; r++)
                for (int64_t x = 0; x < t->shape[3]; x++) d[at++] = *vat(t, b, h, r, x);
    return d;
}
static float *view_to_f(const mha_tensor *t) {
    int64_t n = mha_tensor_numel(t), at = 0;
    float *d = malloc(sizeof(float) * (size_t)(n + 1));
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (int64_t h = 0; h < t->shape[1]; h++)
            for (int64_t r = 0; r < t->shape[2]; r++)
                for (int64_t x = 0; x < t->shape[3]; x++) d[at++] = *vat(t, b, h, r, x);
    return d;
}

typedef struct {
    mha_mask m;
    uint8_t *pad, *abool;
    int32_t *lens;
    float *afloat;
} tmask;

static void mask_make(const tcase *c, tmask *tm) {
    memset(tm, 0, sizeof *tm);
    tm->m = mha_mask_default();
    tm->m.causal = (mha_causal)c->causal;
    int64_t B = c->B, H = c->H, L = c->L, S = c->S, nm = c->batched ? B * H : 1;
    if (c->pad) {
        tm->pad = calloc((size_t)(B * S) + 1, 1);
        for (int64_t i = 0; i < B * S; i++) tm->pad[i] = urand() < 0.25;
        tm->m.key_padding = tm->pad;
    }
    if (c->lens) {
        tm->lens = calloc((size_t)B + 1, sizeof(int32_t));
        for (int64_t b = 0; b < B; b++) tm->lens[b] = (int32_t)((b * 7 + S / 2 + 1) % (S + 1));
        if (B > 1) tm->lens[B - 1] = 0; /* a batch with no key at all */
        tm->m.key_lengths = tm->lens;
    }
    if (c->abool) {
        tm->abool = calloc((size_t)(nm * L * S) + 1, 1);
        for (int64_t i = 0; i < nm * L * S; i++) tm->abool[i] = urand() < 0.2;
        if (c->fullrow) memset(tm->abool, 1, (size_t)S); /* row 0 of head 0 */
        tm->m.attn_bool = tm->abool;
    }
    if (c->afloat) {
        tm->afloat = calloc((size_t)(nm * L * S) + 1, sizeof(float));
        for (int64_t i = 0; i < nm * L * S; i++)
            tm->afloat[i] = urand() < 0.1 ? -INFINITY : 2 * frand();
        if (c->fullrow && L > 1)
            for (int64_t j = 0; j < S; j++) tm->afloat[S + j] = -INFINITY; /* row 1 */
        tm->m.attn_float = tm->afloat;
    }
    tm->m.attn_batched = c->batched;
}
static void mask_free(tmask *tm) {
    free(tm->pad);
    free(tm->abool);
    free(tm->lens);
    free(tm->afloat);
}

/* ------------------------------------------------------------------------------------------
 * The float64 reference, written from the mask table in mha.h (independent of the library's
 * helpers except the dropout generator, whose mask it must share).
 * ---------------------------------------------------------------------------------------- */
static int ref_allowed(const tcase *c, const mha_mask *m, int64_t b, int64_t h, int64_t i,
                       int64_t j) {
    if (m->causal == MHA_CAUSAL_TOP_LEFT && j > i) return 0;
    if (m->causal == MHA_CAUSAL_BOTTOM_RIGHT && j > i + (c->S - c->L)) return 0;
    if (m->key_padding && m->key_padding[b * c->S + j]) return 0;
    if (m->key_lengths && j >= m->key_lengths[b]) return 0;
    int64_t mi = ((m->attn_batched ? b * c->H + h : 0) * c->L + i) * c->S + j;
    if (m->attn_bool && m->attn_bool[mi]) return 0;
    return 1;
}
static double ref_fbias(const tcase *c, const mha_mask *m, int64_t b, int64_t h, int64_t i,
                        int64_t j) {
    if (!m->attn_float) return 0;
    return m->attn_float[((m->attn_batched ? b * c->H + h : 0) * c->L + i) * c->S + j];
}

/* q [B,H,L,D], k [B,Hkv,S,D], v [B,Hkv,S,Dv] contiguous doubles. Outputs: out [B,H,L,Dv],
 * lse [B,H,L], P [B,H,L,S] (pre-dropout probabilities), W (post-dropout). */
static void ref_forward(const tcase *c, const mha_mask *m, const mha_attn_params *p,
                        const double *q, const double *k, const double *v, double *out, double *lse,
                        double *P, double *W) {
    int64_t B = c->B, H = c->H, L = c->L, S = c->S, D = c->D, Dv = c->Dv;
    double scale = p->scale != 0 ? p->scale : 1.0 / sqrt((double)D);
    double ks = 1.0 / (1.0 - p->dropout_p);
    double *s = malloc(sizeof(double) * (size_t)(S + 1));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++) {
                int64_t bh = b * H + h, row = bh * L + i;
                const double *qi = q + row * D;
                double mx = -INFINITY;
                for (int64_t j = 0; j < S; j++) {
                    s[j] = -INFINITY;
                    if (!ref_allowed(c, m, b, h, i, j)) continue;
                    double a = 0;
                    for (int64_t d = 0; d < D; d++)
                        a += qi[d] * k[(kv_of(c, b, h) * S + j) * D + d];
                    s[j] = a * scale + ref_fbias(c, m, b, h, i, j);
                    if (s[j] > mx) mx = s[j];
                }
                double sum = 0;
                for (int64_t j = 0; j < S; j++) sum += mx == -INFINITY ? 0 : exp(s[j] - mx);
                lse[row] = mx == -INFINITY ? -INFINITY : mx + log(sum);
                for (int64_t d = 0; d < Dv; d++) out[row * Dv + d] = 0;
                for (int64_t j = 0; j < S; j++) {
                    double pij = mx == -INFINITY ? 0 : exp(s[j] - mx) / sum;
                    double w = mha__dropout_keep(p, bh, i, j) ? pij * ks : 0;
                    if (P) P[row * S + j] = pij;
                    if (W) W[row * S + j] = w;
                    for (int64_t d = 0; d < Dv; d++)
                        out[row * Dv + d] += w * v[(kv_of(c, b, h) * S + j) * Dv + d];
                }
            }
    free(s);
}

/* Analytic backward of ref_forward for dout (contiguous), from its P and W. */
static void ref_backward(const tcase *c, const mha_attn_params *p, const double *q, const double *k,
                         const double *v, const double *P, const double *W, const double *dout,
                         double *dq, double *dk, double *dv) {
    int64_t B = c->B, H = c->H, L = c->L, S = c->S, D = c->D, Dv = c->Dv;
    double scale = p->scale != 0 ? p->scale : 1.0 / sqrt((double)D);
    memset(dq, 0, sizeof(double) * (size_t)(B * H * L * D));
    memset(dk, 0, sizeof(double) * (size_t)(B * kv_heads(c) * S * D));
    memset(dv, 0, sizeof(double) * (size_t)(B * kv_heads(c) * S * Dv));
    double *dP = malloc(sizeof(double) * (size_t)(S + 1));
    for (int64_t bh = 0; bh < B * H; bh++)
        for (int64_t i = 0; i < L; i++) {
            int64_t row = bh * L + i, kh = kv_of(c, bh / H, bh % H); /* dk, dv: group sums */
            double dot = 0;
            for (int64_t j = 0; j < S; j++) {
                double pij = P[row * S + j], wij = W[row * S + j];
                double dw = 0;
                for (int64_t d = 0; d < Dv; d++) {
                    dw += dout[row * Dv + d] * v[(kh * S + j) * Dv + d];
                    dv[(kh * S + j) * Dv + d] += wij * dout[row * Dv + d];
                }
                /* W = P * keep * ks, so dP = dW * (W / P) for P > 0 */
                dP[j] = pij > 0 ? dw * (wij / pij) : 0;
                dot += pij * dP[j];
            }
            for (int64_t j = 0; j < S; j++) {
                double ds = P[row * S + j] * (dP[j] - dot) * scale;
                for (int64_t d = 0; d < D; d++) {
                    dq[row * D + d] += ds * k[(kh * S + j) * D + d];
                    dk[(kh * S + j) * D + d] += ds * q[row * D + d];
                }
            }
        }
    free(dP);
}

/* ------------------------------------------------------------------------------------------
 * Comparisons
 * ---------------------------------------------------------------------------------------- */
/* lse: -inf must match exactly; the rest within tolerance. */
static int near_lse(const char *file, int line, const float *got, const double *want, int64_t n) {
    float *g = malloc(sizeof(float) * (size_t)(n + 1));
    double *w = malloc(sizeof(double) * (size_t)(n + 1));
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        if ((got[i] == -INFINITY) != (want[i] == -INFINITY)) {
            printf("  %s:%d: [%s] lse[%lld]: got %g, expected %g\n", file, line, harness_cur,
                   (long long)i, got[i], want[i]);
            harness_cur_failed = 1;
            ok = 0;
            break;
        }
        g[i] = got[i] == -INFINITY ? 0 : got[i];
        w[i] = want[i] == -INFINITY ? 0 : want[i];
    }
    if (ok) ok = harness_near(file, line, "lse", g, w, n, 1e-5, 1e-5);
    free(g);
    free(w);
    return ok;
}

static void case_name(const tcase *c, char *buf, size_t n) {
    snprintf(buf, n,
             "B%lld H%lld Hkv%lld L%lld S%lld D%lld Dv%lld causal%d pad%d lens%d bool%d float%d "
             "batched%d full%d drop%g layout%d seed%llu",
             (long long)c->B, (long long)c->H, (long long)kv_heads(c), (long long)c->L,
             (long long)c->S, (long long)c->D, (long long)c->Dv, c->causal, c->pad, c->lens,
             c->abool, c->afloat, c->batched, c->fullrow, (double)c->drop, c->layout,
             (unsigned long long)c->seed);
}

/* Runs forward and backward for c on ctx and compares with the reference; with fd, also
 * checks gradients against central finite differences of the reference forward.
 * Returns 1 on success. */
static int run_case(mha_ctx *ctx, const tcase *c, int fd) {
    char name[256];
    case_name(c, name, sizeof name);
    rng_state = c->seed * 0x9E3779B97F4A7C15ull + 1;
    int64_t B = c->B, H = c->H, L = c->L, S = c->S, D = c->D, Dv = c->Dv, Hk = kv_heads(c);
    tview q = view_alloc(B, H, L, D, c->layout), k = view_alloc(B, Hk, S, D, c->layout);
    tview v = view_alloc(B, Hk, S, Dv, c->layout), o = view_alloc(B, H, L, Dv, c->layout);
    tview go = view_alloc(B, H, L, Dv, c->layout), gq = view_alloc(B, H, L, D, c->layout);
    tview gk = view_alloc(B, Hk, S, D, c->layout), gv = view_alloc(B, Hk, S, Dv, c->layout);
    tview wt = view_alloc(B, H, L, S, c->layout);
    view_fill(&q), view_fill(&k), view_fill(&v), view_fill(&go);
    /* garbage in the outputs: they must be overwritten */
    view_fill(&o), view_fill(&gq), view_fill(&gk), view_fill(&gv), view_fill(&wt);
    float *lse = malloc(sizeof(float) * (size_t)(B * H * L + 1));
    int64_t ls[3] = {B, H, L};
    mha_tensor lt = mha_tensor_make(lse, 3, ls);
    tmask tm;
    mask_make(c, &tm);
    mha_attn_params p = mha_attn_params_default();
    p.dropout_p = c->drop;
    p.scale = c->scale;
    p.seed = c->seed + 77;
    p.offset = c->seed * 3;

    int ok = 0;
    double *qd = view_to_d(&q.t), *kd = view_to_d(&k.t), *vd = view_to_d(&v.t);
    double *god = view_to_d(&go.t);
    double *od = malloc(sizeof(double) * (size_t)(B * H * L * Dv + 1));
    double *lsed = malloc(sizeof(double) * (size_t)(B * H * L + 1));
    double *Pd = malloc(sizeof(double) * (size_t)(B * H * L * S + 1));
    double *Wd = malloc(sizeof(double) * (size_t)(B * H * L * S + 1));
    double *dqd = malloc(sizeof(double) * (size_t)(B * H * L * D + 1));
    double *dkd = malloc(sizeof(double) * (size_t)(B * Hk * S * D + 1));
    double *dvd = malloc(sizeof(double) * (size_t)(B * Hk * S * Dv + 1));
    float *of = NULL, *wf = NULL, *gqf = NULL, *gkf = NULL, *gvf = NULL;
    mha_status st = mha_attn_forward(ctx, &p, &q.t, &k.t, &v.t, &tm.m, &o.t, &lt, &wt.t);
    if (st != MHA_OK) {
        FAILF("%s: forward: %s: %s", name, mha_status_str(st), mha_ctx_errmsg(ctx));
        goto done;
    }
    st = mha_attn_backward(ctx, &p, &q.t, &k.t, &v.t, &tm.m, &o.t, &lt, &go.t, &gq.t, &gk.t, &gv.t);
    if (st != MHA_OK) {
        FAILF("%s: backward: %s: %s", name, mha_status_str(st), mha_ctx_errmsg(ctx));
        goto done;
    }
    ref_forward(c, &tm.m, &p, qd, kd, vd, od, lsed, Pd, Wd);
    ref_backward(c, &p, qd, kd, vd, Pd, Wd, god, dqd, dkd, dvd);
    of = view_to_f(&o.t), wf = view_to_f(&wt.t);
    gqf = view_to_f(&gq.t), gkf = view_to_f(&gk.t), gvf = view_to_f(&gv.t);
    if (!harness_near(__FILE__, __LINE__, name, of, od, B * H * L * Dv, 1e-5, 1e-5)) goto done;
    if (!near_lse(__FILE__, __LINE__, lse, lsed, B * H * L)) goto done;
    if (!harness_near(__FILE__, __LINE__, name, wf, Wd, B * H * L * S, 1e-5, 1e-6)) goto done;
    if (!harness_near(__FILE__, __LINE__, name, gqf, dqd, B * H * L * D, 1e-4, 2e-5)) goto done;
    if (!harness_near(__FILE__, __LINE__, name, gkf, dkd, B * Hk * S * D, 1e-4, 2e-5)) goto done;
    if (!harness_near(__FILE__, __LINE__, name, gvf, dvd, B * Hk * S * Dv, 1e-4, 2e-5)) goto done;
    if (fd) {
        /* loss = sum(out * dout); central differences in double on the reference forward */
        double *ob = malloc(sizeof(double) * (size_t)(B * H * L * Dv + 1));
        double *fdg[3];
        double *xs[3] = {qd, kd, vd};
        int64_t ns[3] = {B * H * L * D, B * Hk * S * D, B * Hk * S * Dv};
        const double eps = 1e-6;
        for (int a = 0; a < 3; a++) {
            fdg[a] = malloc(sizeof(double) * (size_t)(ns[a] + 1));
            for (int64_t e = 0; e < ns[a]; e++) {
                double x0 = xs[a][e], lp = 0, lm = 0;
                xs[a][e] = x0 + eps;
                ref_forward(c, &tm.m, &p, qd, kd, vd, ob, lsed, NULL, NULL);
                for (int64_t t = 0; t < B * H * L * Dv; t++) lp += ob[t] * god[t];
                xs[a][e] = x0 - eps;
                ref_forward(c, &tm.m, &p, qd, kd, vd, ob, lsed, NULL, NULL);
                for (int64_t t = 0; t < B * H * L * Dv; t++) lm += ob[t] * god[t];
                xs[a][e] = x0;
                fdg[a][e] = (lp - lm) / (2 * eps);
            }
        }
        int fok = harness_near(__FILE__, __LINE__, "dq vs finite differences", gqf, fdg[0], ns[0],
                               1e-4, 1e-4) &&
                  harness_near(__FILE__, __LINE__, "dk vs finite differences", gkf, fdg[1], ns[1],
                               1e-4, 1e-4) &&
                  harness_near(__FILE__, __LINE__, "dv vs finite differences", gvf, fdg[2], ns[2],
                               1e-4, 1e-4);
        /* the analytic reference itself must agree with the differences */
        float *dqr = malloc(sizeof(float) * (size_t)(ns[0] + 1));
        for (int64_t e = 0; e < ns[0]; e++) dqr[e] = (float)dqd[e];
        if (fok)
            fok = harness_near(__FILE__, __LINE__, "reference dq vs finite differences", dqr,
                               fdg[0], ns[0], 1e-4, 1e-5);
        free(dqr);
        for (int a = 0; a < 3; a++) free(fdg[a]);
        free(ob);
        if (!fok) {
            printf("    case: %s\n", name);
            goto done;
        }
    }
    for (int64_t t = 0; t < B * H * L * Dv; t++)
        if (isnan(of[t])) {
            FAILF("%s: NaN in out", name);
            goto done;
        }
    ok = 1;
done:
    free(qd), free(kd), free(vd), free(god), free(od), free(lsed), free(Pd), free(Wd);
    free(dqd), free(dkd), free(dvd), free(of), free(wf), free(gqf), free(gkf), free(gvf);
    free(q.buf), free(k.buf), free(v.buf), free(o.buf), free(go.buf), free(gq.buf);
    free(gk.buf), free(gv.buf), free(wt.buf), free(lse);
    mask_free(&tm);
    return ok;
}

static tcase tc(int64_t B, int64_t H, int64_t L, int64_t S, int64_t D, int64_t Dv) {
    tcase c;
    memset(&c, 0, sizeof c);
    c.B = B, c.H = H, c.L = L, c.S = S, c.D = D, c.Dv = Dv, c.seed = 1;
    return c;
}

/* ------------------------------------------------------------------------------------------
 * Tests
 * ---------------------------------------------------------------------------------------- */
TEST(shapes_no_mask) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const int64_t shapes[][6] = {
        {1, 1, 1, 1, 1, 1},     {1, 1, 1, 9, 7, 7},     {2, 3, 17, 33, 7, 5},
        {1, 2, 40, 1, 64, 64},  {1, 1, 37, 45, 80, 80}, {1, 1, 19, 70, 128, 128},
        {2, 1, 50, 29, 64, 32}, {1, 2, 65, 66, 1, 3},   {1, 1, 3, 0, 4, 4},
    };
    FOR_EACH_ISA(ctx) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            tcase c = tc(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4],
                         shapes[s][5]);
            c.seed = s + 1;
            c.layout = (int)(s & 1);
            if (s == 3) c.scale = 0.3f;
            if (!run_case(ctx, &c, 0)) goto out;
        }
    }
out:
    mha_ctx_free(ctx);
}

TEST(masks_each_and_combined) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    /* lengths that straddle the tiles (generic: 16 x 32), causal diagonals crossing tiles */
    static const int64_t shapes[][6] = {
        {2, 2, 21, 45, 16, 8}, {1, 3, 45, 21, 8, 16}, {2, 1, 40, 40, 7, 7}};
    FOR_EACH_ISA(ctx) {
        for (size_t s = 0; s < 3; s++)
            for (int kind = 0; kind < 12; kind++) {
                tcase c = tc(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4],
                             shapes[s][5]);
                c.seed = 100 + s * 16 + (uint64_t)kind;
                switch (kind) {
                case 0: c.causal = 1; break;
                case 1: c.causal = 2; break;
                case 2: c.pad = 1; break;
                case 3: c.lens = 1; break;
                case 4: c.abool = 1; break;
                case 5: c.afloat = 1; break;
                case 6: c.abool = c.afloat = c.batched = 1; break;
                case 7: c.abool = c.afloat = c.fullrow = 1; break;
                case 8: c.causal = 2, c.pad = c.lens = c.abool = c.afloat = 1; break;
                case 9: c.causal = 1, c.pad = c.lens = c.abool = c.afloat = c.batched = 1; break;
                case 10: c.causal = 2, c.afloat = c.batched = c.fullrow = 1, c.layout = 1; break;
                case 11: c.causal = 1, c.lens = 1, c.drop = 0.25f, c.layout = 1; break;
                }
                if (!run_case(ctx, &c, 0)) goto out;
            }
    }
out:
    mha_ctx_free(ctx);
}

TEST(backward_finite_differences) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        for (int kind = 0; kind < 9; kind++) {
            tcase c = kind % 2 ? tc(1, 2, 5, 7, 3, 4) : tc(2, 1, 6, 4, 4, 3);
            c.seed = 300 + (uint64_t)kind;
            switch (kind) {
            case 0: break;
            case 1: c.causal = 1; break;
            case 2: c.causal = 2; break;
            case 3: c.pad = 1, c.lens = 1; break;
            case 4: c.abool = 1, c.batched = 1; break;
            case 5: c.afloat = 1, c.fullrow = 1; break;
            case 6: c.drop = 0.3f; break;
            case 7: c.drop = 0.5f, c.causal = 2, c.abool = c.afloat = 1, c.layout = 1; break;
            case 8: c.causal = 1, c.pad = c.abool = c.fullrow = 1, c.scale = 0.7f; break;
            }
            if (!run_case(ctx, &c, 1)) goto out;
        }
    }
out:
    mha_ctx_free(ctx);
}

/* A packed [B, L, 3, H, D] QKV buffer viewed without copy; out and every gradient written into
 * [B, L, H, D] memory. */
TEST(packed_qkv_views) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    const int64_t B = 2, L = 19, H = 3, D = 8;
    float *qkv = malloc(sizeof(float) * (size_t)(B * L * 3 * H * D));
    float *o = malloc(sizeof(float) * (size_t)(B * L * H * D));
    float *g = malloc(sizeof(float) * (size_t)(B * L * H * D));
    float *dqkv = malloc(sizeof(float) * (size_t)(B * L * 3 * H * D));
    float *lse = malloc(sizeof(float) * (size_t)(B * H * L));
    rng_state = 99;
    for (int64_t i = 0; i < B * L * 3 * H * D; i++) qkv[i] = frand();
    for (int64_t i = 0; i < B * L * H * D; i++) g[i] = frand();
    int64_t shape[4] = {B, H, L, D}, pst[4] = {L * 3 * H * D, D, 3 * H * D, 1};
    int64_t ost[4] = {L * H * D, D, H * D, 1};
    mha_tensor q = mha_tensor_strided(qkv, 4, shape, pst);
    mha_tensor k = mha_tensor_strided(qkv + H * D, 4, shape, pst);
    mha_tensor v = mha_tensor_strided(qkv + 2 * H * D, 4, shape, pst);
    mha_tensor dq = mha_tensor_strided(dqkv, 4, shape, pst);
    mha_tensor dk = mha_tensor_strided(dqkv + H * D, 4, shape, pst);
    mha_tensor dv = mha_tensor_strided(dqkv + 2 * H * D, 4, shape, pst);
    mha_tensor ot = mha_tensor_strided(o, 4, shape, ost), gt = mha_tensor_strided(g, 4, shape, ost);
    int64_t ls[3] = {B, H, L};
    mha_tensor lt = mha_tensor_make(lse, 3, ls);
    mha_mask m = mha_mask_default();
    m.causal = MHA_CAUSAL_TOP_LEFT;
    tcase c = tc(B, H, L, L, D, D);
    c.causal = 1;
    FOR_EACH_ISA(ctx) {
        ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &q, &k, &v, &m, &ot, &lt, NULL));
        ASSERT_OK(ctx, mha_attn_backward(ctx, NULL, &q, &k, &v, &m, &ot, &lt, &gt, &dq, &dk, &dv));
        mha_attn_params p = mha_attn_params_default();
        double *qd = view_to_d(&q), *kd = view_to_d(&k), *vd = view_to_d(&v);
        double *gd = view_to_d(&gt);
        size_t n = (size_t)(B * H * L * D), nw = (size_t)(B * H * L * L);
        double *od = malloc(sizeof(double) * n), *ld = malloc(sizeof(double) * (size_t)(B * H * L));
        double *P = malloc(sizeof(double) * nw), *W = malloc(sizeof(double) * nw);
        double *dqd = malloc(sizeof(double) * n), *dkd = malloc(sizeof(double) * n);
        double *dvd = malloc(sizeof(double) * n);
        ref_forward(&c, &m, &p, qd, kd, vd, od, ld, P, W);
        ref_backward(&c, &p, qd, kd, vd, P, W, gd, dqd, dkd, dvd);
        float *of = view_to_f(&ot), *dqf = view_to_f(&dq), *dkf = view_to_f(&dk);
        float *dvf = view_to_f(&dv);
        int ok = harness_near(__FILE__, __LINE__, "out", of, od, (int64_t)n, 1e-5, 1e-5) &&
                 harness_near(__FILE__, __LINE__, "dq", dqf, dqd, (int64_t)n, 1e-4, 2e-5) &&
                 harness_near(__FILE__, __LINE__, "dk", dkf, dkd, (int64_t)n, 1e-4, 2e-5) &&
                 harness_near(__FILE__, __LINE__, "dv", dvf, dvd, (int64_t)n, 1e-4, 2e-5);
        free(qd), free(kd), free(vd), free(gd), free(od), free(ld), free(P), free(W);
        free(dqd), free(dkd), free(dvd), free(of), free(dqf), free(dkf), free(dvf);
        if (!ok) break;
    }
    free(qkv), free(o), free(g), free(dqkv), free(lse);
    mha_ctx_free(ctx);
}

/* Every output and gradient bitwise identical for 1, 2 and 3 threads, also with B*H = 1. With
 * B*H = 36 the forward's tasks are whole heads on 1 and 2 threads (B*H >= 16 threads: each
 * thread fetches its next head while computing one) and single query tiles on 3: the same bits
 * either way. */
TEST(threads_bitwise_identical) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const int64_t shapes[][6] = {
        {1, 1, 70, 90, 24, 20}, {2, 3, 33, 17, 16, 16}, {4, 9, 130, 110, 16, 24}};
    FOR_EACH_ISA(ctx) {
        for (int s = 0; s < 3; s++) {
            int64_t B = shapes[s][0], H = shapes[s][1], L = shapes[s][2], S = shapes[s][3];
            int64_t D = shapes[s][4], Dv = shapes[s][5];
            size_t nq = (size_t)(B * H * L * D), nk = (size_t)(B * H * S * D);
            size_t nv = (size_t)(B * H * S * Dv), no = (size_t)(B * H * L * Dv);
            size_t nw = (size_t)(B * H * L * S), nl = (size_t)(B * H * L);
            size_t total = no + nw + nl + nq + nk + nv; /* out, weights, lse, grads */
            float *in = malloc(sizeof(float) * (nq + nk + nv + no));
            float *res[3];
            rng_state = 7 + (uint64_t)s;
            for (size_t i = 0; i < nq + nk + nv + no; i++) in[i] = frand();
            tcase c = tc(B, H, L, S, D, Dv);
            c.causal = s ? 1 : 2, c.pad = 1, c.lens = s, c.afloat = 1, c.drop = 0.2f;
            tmask tm;
            mask_make(&c, &tm);
            mha_attn_params p = mha_attn_params_default();
            p.dropout_p = 0.2f, p.seed = 5;
            int64_t sq[4] = {B, H, L, D}, sk[4] = {B, H, S, D}, sv[4] = {B, H, S, Dv};
            int64_t so[4] = {B, H, L, Dv}, sw[4] = {B, H, L, S}, sl[3] = {B, H, L};
            mha_tensor q = mha_tensor_make(in, 4, sq), k = mha_tensor_make(in + nq, 4, sk);
            mha_tensor v = mha_tensor_make(in + nq + nk, 4, sv);
            mha_tensor g = mha_tensor_make(in + nq + nk + nv, 4, so);
            int bad = 0;
            for (int t = 0; t < 3; t++) {
                res[t] = malloc(sizeof(float) * total);
                float *r = res[t];
                mha_tensor o = mha_tensor_make(r, 4, so), w = mha_tensor_make(r + no, 4, sw);
                mha_tensor l = mha_tensor_make(r + no + nw, 3, sl);
                float *gr = r + no + nw + nl;
                mha_tensor dq = mha_tensor_make(gr, 4, sq), dk = mha_tensor_make(gr + nq, 4, sk);
                mha_tensor dv = mha_tensor_make(gr + nq + nk, 4, sv);
                mha_ctx_set_threads(ctx, t + 1);
                if (mha_attn_forward(ctx, &p, &q, &k, &v, &tm.m, &o, &l, &w) ||
                    mha_attn_backward(ctx, &p, &q, &k, &v, &tm.m, &o, &l, &g, &dq, &dk, &dv)) {
                    FAILF("threads %d: %s", t + 1, mha_ctx_errmsg(ctx));
                    bad = 1;
                }
                if (t > 0 && !bad && memcmp(res[0], r, sizeof(float) * total) != 0) {
                    size_t at = 0;
                    while (memcmp(&res[0][at], &r[at], sizeof(float)) == 0) at++;
                    FAILF("shape %d: %d threads differ from 1 thread at float %zu of %zu "
                          "(%.9g vs %.9g)",
                          s, t + 1, at, total, res[0][at], r[at]);
                    bad = 1;
                }
                if (bad) {
                    for (int u = 0; u <= t; u++) free(res[u]);
                    break;
                }
            }
            if (!bad)
                for (int t = 0; t < 3; t++) free(res[t]);
            mask_free(&tm);
            free(in);
            if (bad) goto out;
        }
    }
out:
    mha_ctx_set_threads(ctx, 0);
    mha_ctx_free(ctx);
}

TEST(dropout_statistics) {
    mha_attn_params p = mha_attn_params_default();
    p.dropout_p = 0.3f, p.seed = 42, p.offset = 7;
    const int64_t BH = 4, L = 64, S = 96;
    uint8_t *row = malloc((size_t)S);
    int64_t kept = 0, n = 0, differ_seed = 0, differ_off = 0;
    mha_attn_params p2 = p, p3 = p;
    p2.seed = 43, p3.offset = 8;
    /* rows from the generic tile generator the drivers use (kernels.h attn_dropout) */
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    mha__attn_problem pr;
    memset(&pr, 0, sizeof pr);
    pr.dropout_p = p.dropout_p, pr.seed = p.seed, pr.offset = p.offset;
    pr.drop_thr = (uint64_t)ceil((double)p.dropout_p * 4294967296.0);
    for (int64_t bh = 0; bh < BH; bh++)
        for (int64_t i = 0; i < L; i++) {
            mha__attn_dropout dr = mha__attn_dropout_make(&pr, bh);
            gen->attn_dropout(1, S, &dr, i, 0, row, S);
            for (int64_t j = 0; j < S; j++) {
                int kk = mha__dropout_keep(&p, bh, i, j);
                ASSERT_EQ(kk, row[j]);
                kept += kk, n++;
                differ_seed += kk != mha__dropout_keep(&p2, bh, i, j);
                differ_off += kk != mha__dropout_keep(&p3, bh, i, j);
            }
            /* an unaligned start gives the same decisions */
            gen->attn_dropout(1, S - 5, &dr, i, 3, row, S - 5);
            for (int64_t j = 3; j < S - 2; j++)
                ASSERT_EQ(row[j - 3], mha__dropout_keep(&p, bh, i, j));
        }
    double frac = (double)kept / (double)n; /* 24576 draws: sd 0.003 */
    if (fabs(frac - 0.7) > 0.02) FAILF("kept fraction %g, expected ~0.7", frac);
    /* independent masks disagree with probability 2 * 0.3 * 0.7 = 0.42 */
    if (fabs((double)differ_seed / (double)n - 0.42) > 0.03)
        FAILF("seed change: %lld", (long long)differ_seed);
    if (fabs((double)differ_off / (double)n - 0.42) > 0.03)
        FAILF("offset change: %lld", (long long)differ_off);
    free(row);

    /* The weights of the forward: dropped exactly where the mask says, scaled mean preserved,
     * the same (seed, offset) reproducible, another seed different. */
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    const int64_t B = 2, H = 2, D = 8;
    float *buf = malloc(sizeof(float) * (size_t)(B * H * (L + 2 * S) * D));
    rng_state = 3;
    for (int64_t i = 0; i < B * H * (L + 2 * S) * D; i++) buf[i] = frand();
    int64_t sq[4] = {B, H, L, D}, sk[4] = {B, H, S, D}, so[4] = {B, H, L, D}, sw[4] = {B, H, L, S};
    mha_tensor q = mha_tensor_make(buf, 4, sq), k = mha_tensor_make(buf + B * H * L * D, 4, sk);
    mha_tensor v = mha_tensor_make(buf + B * H * (L + S) * D, 4, sk);
    size_t nw = (size_t)(B * H * L * S), no = (size_t)(B * H * L * D);
    float *w0 = malloc(sizeof(float) * nw), *w1 = malloc(sizeof(float) * nw);
    float *w2 = malloc(sizeof(float) * nw), *o = malloc(sizeof(float) * no);
    mha_tensor o_t = mha_tensor_make(o, 4, so);
    mha_tensor w0t = mha_tensor_make(w0, 4, sw), w1t = mha_tensor_make(w1, 4, sw);
    mha_tensor w2t = mha_tensor_make(w2, 4, sw);
    mha_attn_params p0 = mha_attn_params_default();
    FOR_EACH_ISA(ctx) {
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p0, &q, &k, &v, NULL, &o_t, NULL, &w0t));
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &q, &k, &v, NULL, &o_t, NULL, &w1t));
        double s0 = 0, s1 = 0;
        for (size_t t = 0; t < nw; t++) {
            int64_t j = (int64_t)t % S, i = (int64_t)t / S % L, bh = (int64_t)t / (S * L);
            int kk = mha__dropout_keep(&p, bh, i, j);
            float want = kk ? w0[t] / (1 - p.dropout_p) : 0.0f;
            if (fabsf(w1[t] - want) > 1e-6f * (1 + fabsf(want))) {
                FAILF("weights[%zu]: got %g, expected %g (keep %d)", t, w1[t], want, kk);
                break;
            }
            s0 += w0[t], s1 += w1[t];
        }
        if (fabs(s1 / s0 - 1) > 0.03) FAILF("dropout changed the mean: %g vs %g", s1, s0);
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &q, &k, &v, NULL, &o_t, NULL, &w2t));
        ASSERT_TRUE(memcmp(w1, w2, sizeof(float) * nw) == 0);
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p2, &q, &k, &v, NULL, &o_t, NULL, &w2t));
        ASSERT_TRUE(memcmp(w1, w2, sizeof(float) * nw) != 0);
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p3, &q, &k, &v, NULL, &o_t, NULL, &w2t));
        ASSERT_TRUE(memcmp(w1, w2, sizeof(float) * nw) != 0);
    }
    free(buf), free(w0), free(w1), free(w2), free(o);
    mha_ctx_free(ctx);
}

/* Fully masked rows: out 0, weights 0, lse -inf, zero gradients, no NaN anywhere. */
TEST(fully_masked_rows) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    const int64_t B = 2, H = 1, L = 6, S = 4, D = 3;
    float buf[2 * 1 * 6 * 3 * 2 + 2 * 1 * 4 * 3 * 2];
    rng_state = 11;
    for (size_t i = 0; i < sizeof buf / sizeof buf[0]; i++) buf[i] = frand();
    float o[36], w[48], l[12], dq[36], dk[24], dv[24], g[36];
    for (int i = 0; i < 36; i++) g[i] = 1;
    int64_t sq[4] = {B, H, L, D}, sk[4] = {B, H, S, D}, sw[4] = {B, H, L, S}, sl[3] = {B, H, L};
    mha_tensor q = mha_tensor_make(buf, 4, sq), k = mha_tensor_make(buf + 36, 4, sk);
    mha_tensor v = mha_tensor_make(buf + 60, 4, sk);
    mha_tensor ot = mha_tensor_make(o, 4, sq), wt = mha_tensor_make(w, 4, sw);
    mha_tensor lt = mha_tensor_make(l, 3, sl), gt = mha_tensor_make(g, 4, sq);
    mha_tensor dqt = mha_tensor_make(dq, 4, sq), dkt = mha_tensor_make(dk, 4, sk);
    mha_tensor dvt = mha_tensor_make(dv, 4, sk);
    int32_t lens[2] = {0, 4};
    mha_mask m = mha_mask_default();
    m.key_lengths = lens;               /* batch 0: nothing to attend */
    m.causal = MHA_CAUSAL_BOTTOM_RIGHT; /* batch 1: rows 0, 1 see no key (L - S = 2) */
    FOR_EACH_ISA(ctx) {
        memset(o, 0xff, sizeof o), memset(dq, 0xff, sizeof dq), memset(dk, 0xff, sizeof dk);
        memset(dv, 0xff, sizeof dv), memset(w, 0xff, sizeof w); /* NaN garbage */
        ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &q, &k, &v, &m, &ot, &lt, &wt));
        ASSERT_OK(ctx,
                  mha_attn_backward(ctx, NULL, &q, &k, &v, &m, &ot, &lt, &gt, &dqt, &dkt, &dvt));
        for (int i = 0; i < 6; i++) ASSERT_TRUE(l[i] == -INFINITY);
        for (int i = 6; i < 8; i++) ASSERT_TRUE(l[i] == -INFINITY);
        for (int i = 8; i < 12; i++) ASSERT_TRUE(isfinite(l[i]));
        for (int i = 0; i < 24; i++) ASSERT_TRUE(o[i] == 0 && dq[i] == 0);
        for (int i = 24; i < 36; i++) ASSERT_TRUE(isfinite(o[i]) && isfinite(dq[i]));
        for (int i = 0; i < 32; i++) ASSERT_TRUE(w[i] == 0);
        for (int i = 0; i < 12; i++) ASSERT_TRUE(dk[i] == 0 && dv[i] == 0);
        for (int i = 12; i < 24; i++) ASSERT_TRUE(isfinite(dk[i]) && isfinite(dv[i]));
    }
    mha_ctx_free(ctx);
}

/* A NaN score (here a NaN in one key) must reach out and lse as NaN, as in PyTorch: before
 * the fix the NaN row sum looked like a fully masked row and every output became 0. */
TEST(nan_key_propagates) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    enum {
        L = 3,
        S = 5,
        D = 2
    };
    float q[L * D], k[S * D], v[S * D], o[L * D], l[L];
    rng_state = 5;
    for (int i = 0; i < L * D; i++) q[i] = frand();
    for (int i = 0; i < S * D; i++) k[i] = frand(), v[i] = frand();
    k[1 * D] = NAN; /* key 1 */
    int64_t sq[4] = {1, 1, L, D}, sk[4] = {1, 1, S, D}, sl[3] = {1, 1, L};
    mha_tensor tq = mha_tensor_make(q, 4, sq), tk = mha_tensor_make(k, 4, sk);
    mha_tensor tv = mha_tensor_make(v, 4, sk), to = mha_tensor_make(o, 4, sq);
    mha_tensor tl = mha_tensor_make(l, 3, sl);
    FOR_EACH_ISA(ctx) {
        ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &tq, &tk, &tv, NULL, &to, &tl, NULL));
        for (int i = 0; i < L * D; i++) ASSERT_TRUE(isnan(o[i]));
        for (int i = 0; i < L; i++) ASSERT_TRUE(isnan(l[i]));
    }
    mha_ctx_free(ctx);
}

TEST(validation_errors) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    float buf[4096];
    memset(buf, 0, sizeof buf);
    int64_t sq[4] = {2, 2, 3, 4}, sk[4] = {2, 2, 5, 4}, sv[4] = {2, 2, 5, 6}, so[4] = {2, 2, 3, 6};
    int64_t sl[3] = {2, 2, 3}, sw[4] = {2, 2, 3, 5};
    mha_tensor q = mha_tensor_make(buf, 4, sq), k = mha_tensor_make(buf, 4, sk);
    mha_tensor v = mha_tensor_make(buf, 4, sv), o = mha_tensor_make(buf + 1024, 4, so);
    mha_tensor l = mha_tensor_make(buf + 2048, 3, sl), w = mha_tensor_make(buf + 2100, 4, sw);
    mha_tensor g = mha_tensor_make(buf, 4, so), dq = mha_tensor_make(buf + 3000, 4, sq);
    mha_tensor dk = mha_tensor_make(buf + 3100, 4, sk), dv = mha_tensor_make(buf + 3200, 4, sv);
    mha_attn_params p = mha_attn_params_default();
    mha_mask m = mha_mask_default();
    ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &q, &k, &v, &m, &o, &l, &w));
    ASSERT_OK(ctx, mha_attn_backward(ctx, &p, &q, &k, &v, &m, &o, &l, &g, &dq, &dk, &dv));
#define EXPECT_FWD(status, msg, ...)                                                               \
    do {                                                                                           \
        ASSERT_EQ(mha_attn_forward(__VA_ARGS__), status);                                          \
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), msg);                                             \
    } while (0)
#define EXPECT_BWD(status, msg, ...)                                                               \
    do {                                                                                           \
        ASSERT_EQ(mha_attn_backward(__VA_ARGS__), status);                                         \
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), msg);                                             \
    } while (0)
    mha_tensor bad;
    /* params */
    p.dropout_p = 1.5f;
    EXPECT_FWD(MHA_ERR_INVALID_ARG,
               "mha_attn_forward: p->dropout_p: got 1.5, expected a value in [0, 1]", ctx, &p, &q,
               &k, &v, &m, &o, &l, &w);
    p.dropout_p = -0.1f;
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "mha_attn_backward: p->dropout_p", ctx, &p, &q, &k, &v, &m, &o,
               &l, &g, &dq, &dk, &dv);
    p.dropout_p = NAN;
    EXPECT_FWD(MHA_ERR_INVALID_ARG, "p->dropout_p: got nan", ctx, &p, &q, &k, &v, &m, &o, &l, &w);
    p = mha_attn_params_default();
    p.scale = INFINITY;
    EXPECT_FWD(MHA_ERR_INVALID_ARG, "p->scale: got inf", ctx, &p, &q, &k, &v, &m, &o, &l, &w);
    p.scale = NAN;
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "p->scale: got nan", ctx, &p, &q, &k, &v, &m, &o, &l, &g, &dq,
               &dk, &dv);
    p = mha_attn_params_default();
    /* NULL tensors */
    EXPECT_FWD(MHA_ERR_INVALID_ARG, "mha_attn_forward: q: got NULL", ctx, &p, NULL, &k, &v, &m, &o,
               &l, &w);
    EXPECT_FWD(MHA_ERR_INVALID_ARG, "mha_attn_forward: k: got NULL", ctx, &p, &q, NULL, &v, &m, &o,
               &l, &w);
    EXPECT_FWD(MHA_ERR_INVALID_ARG, "mha_attn_forward: v: got NULL", ctx, &p, &q, &k, NULL, &m, &o,
               &l, &w);
    EXPECT_FWD(MHA_ERR_INVALID_ARG, "mha_attn_forward: out: got NULL", ctx, &p, &q, &k, &v, &m,
               NULL, &l, &w);
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "mha_attn_backward: out: got NULL", ctx, &p, &q, &k, &v, &m,
               NULL, &l, &g, &dq, &dk, &dv);
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "mha_attn_backward: lse: got NULL", ctx, &p, &q, &k, &v, &m, &o,
               NULL, &g, &dq, &dk, &dv);
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "mha_attn_backward: dout: got NULL", ctx, &p, &q, &k, &v, &m,
               &o, &l, NULL, &dq, &dk, &dv);
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "mha_attn_backward: dq: got NULL", ctx, &p, &q, &k, &v, &m, &o,
               &l, &g, NULL, &dk, &dv);
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "mha_attn_backward: dk: got NULL", ctx, &p, &q, &k, &v, &m, &o,
               &l, &g, &dq, NULL, &dv);
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "mha_attn_backward: dv: got NULL", ctx, &p, &q, &k, &v, &m, &o,
               &l, &g, &dq, &dk, NULL);
    bad = q, bad.data = NULL;
    EXPECT_FWD(MHA_ERR_INVALID_ARG, "q.data: got NULL", ctx, &p, &bad, &k, &v, &m, &o, &l, &w);
    /* shapes */
    int64_t s80[4] = {2, 2, 5, 80};
    bad = mha_tensor_make(buf, 4, s80);
    EXPECT_FWD(MHA_ERR_SHAPE, "mha_attn_forward: k.shape[3]: got 80, expected 4 (q head dim)", ctx,
               &p, &q, &bad, &v, &m, &o, &l, &w);
    int64_t sb[4] = {3, 2, 5, 4};
    bad = mha_tensor_make(buf, 4, sb);
    EXPECT_FWD(MHA_ERR_SHAPE, "k.shape[0]: got 3, expected 2 (q batch)", ctx, &p, &q, &bad, &v, &m,
               &o, &l, &w);
    int64_t sh[4] = {2, 2, 4, 6};
    bad = mha_tensor_make(buf, 4, sh);
    EXPECT_FWD(MHA_ERR_SHAPE, "v.shape[2]: got 4, expected 5 (k length)", ctx, &p, &q, &k, &bad, &m,
               &o, &l, &w);
    bad = mha_tensor_make(buf, 3, sh);
    EXPECT_FWD(MHA_ERR_SHAPE, "q.ndim: got 3, expected 4", ctx, &p, &bad, &k, &v, &m, &o, &l, &w);
    int64_t sd0[4] = {2, 2, 3, 0};
    bad = mha_tensor_make(buf, 4, sd0);
    EXPECT_FWD(MHA_ERR_SHAPE, "q.shape[3]: got 0, expected >= 1 (head dim)", ctx, &p, &bad, &k, &v,
               &m, &o, &l, &w);
    bad = mha_tensor_make(buf + 1024, 4, sq); /* out with Dv = 4 instead of 6 */
    EXPECT_FWD(MHA_ERR_SHAPE, "out.shape[3]: got 4, expected 6", ctx, &p, &q, &k, &v, &m, &bad, &l,
               &w);
    int64_t sl2[3] = {2, 2, 4};
    bad = mha_tensor_make(buf + 2048, 3, sl2);
    EXPECT_FWD(MHA_ERR_SHAPE, "lse.shape[2]: got 4, expected 3", ctx, &p, &q, &k, &v, &m, &o, &bad,
               &w);
    EXPECT_BWD(MHA_ERR_SHAPE, "mha_attn_backward: lse.shape[2]: got 4, expected 3", ctx, &p, &q, &k,
               &v, &m, &o, &bad, &g, &dq, &dk, &dv);
    bad = mha_tensor_make(buf + 2100, 4, so);
    EXPECT_FWD(MHA_ERR_SHAPE, "weights.shape[3]: got 6, expected 5", ctx, &p, &q, &k, &v, &m, &o,
               &l, &bad);
    bad = mha_tensor_make(buf, 4, sq);
    EXPECT_BWD(MHA_ERR_SHAPE, "dout.shape[3]: got 4, expected 6", ctx, &p, &q, &k, &v, &m, &o, &l,
               &bad, &dq, &dk, &dv);
    EXPECT_BWD(MHA_ERR_SHAPE, "dk.shape[2]: got 3, expected 5", ctx, &p, &q, &k, &v, &m, &o, &l, &g,
               &dq, &bad, &dv);
    EXPECT_BWD(MHA_ERR_SHAPE, "dv.shape[2]: got 3, expected 5", ctx, &p, &q, &k, &v, &m, &o, &l, &g,
               &dq, &dk, &bad);
    bad = mha_tensor_make(buf, 4, so);
    EXPECT_BWD(MHA_ERR_SHAPE, "dq.shape[3]: got 6, expected 4", ctx, &p, &q, &k, &v, &m, &o, &l, &g,
               &bad, &dk, &dv);
    bad = q, bad.stride[3] = 2;
    EXPECT_FWD(MHA_ERR_SHAPE, "q.stride[3]: got 2, expected 1", ctx, &p, &bad, &k, &v, &m, &o, &l,
               &w);
    /* masks */
    m.causal = (mha_causal)3;
    EXPECT_FWD(MHA_ERR_INVALID_ARG, "mha_attn_forward: mask->causal: got 3", ctx, &p, &q, &k, &v,
               &m, &o, &l, &w);
    m = mha_mask_default(), m.attn_batched = 2;
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "mask->attn_batched: got 2", ctx, &p, &q, &k, &v, &m, &o, &l,
               &g, &dq, &dk, &dv);
    int32_t lens[2] = {5, 6};
    m = mha_mask_default(), m.key_lengths = lens;
    EXPECT_FWD(MHA_ERR_INVALID_ARG, "mask->key_lengths[1]: got 6, expected a value in [0, 5]", ctx,
               &p, &q, &k, &v, &m, &o, &l, &w);
    lens[0] = -1;
    EXPECT_BWD(MHA_ERR_INVALID_ARG, "mask->key_lengths[0]: got -1", ctx, &p, &q, &k, &v, &m, &o, &l,
               &g, &dq, &dk, &dv);
    /* a successful call clears the message */
    m = mha_mask_default();
    ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &q, &k, &v, &m, &o, NULL, NULL));
    ASSERT_TRUE(strcmp(mha_ctx_errmsg(ctx), "") == 0);
    /* NULL context: message in the thread-local buffer */
    ASSERT_EQ(mha_attn_forward(NULL, &p, NULL, &k, &v, &m, &o, &l, &w), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "mha_attn_forward: q: got NULL");
    /* allocation failure: NOMEM, never a crash; then it works again */
    mha__fault_after(0);
    mha_status st = mha_attn_forward(ctx, &p, &q, &k, &v, &m, &o, &l, &w);
    mha__fault_after(-1);
    ASSERT_EQ(st, MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_forward: workspace: out of memory (");
    mha__fault_after(0);
    st = mha_attn_backward(ctx, &p, &q, &k, &v, &m, &o, &l, &g, &dq, &dk, &dv);
    mha__fault_after(-1);
    ASSERT_EQ(st, MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_backward: workspace: out of memory (");
    ASSERT_OK(ctx, mha_attn_backward(ctx, &p, &q, &k, &v, &m, &o, &l, &g, &dq, &dk, &dv));
    mha_ctx_free(ctx);
}

/* Fault 11: an output that shares memory with an input or with another output is refused with
 * MHA_ERR_INVALID_ARG naming both, before anything is written: every (output, input) and
 * (output, output) pair of the forward and the backward, a one-element overlap, and its
 * disjoint neighbour (accepted). */
TEST(aliasing_rejected) {
    enum {
        B = 2,
        H = 2,
        L = 5,
        S = 6,
        D = 4,
        N = 256
    };
    static float pool[16 * N];
    rng_state = 8;
    for (int i = 0; i < 16 * N; i++) pool[i] = frand();
    int64_t sq[4] = {B, H, L, D}, sk[4] = {B, H, S, D}, sl[3] = {B, H, L}, sw[4] = {B, H, L, S};
    /* forward: q k v | out lse weights;  backward: q k v out lse dout | dq dk dv */
    mha_tensor t[10] = {mha_tensor_make(pool, 4, sq),         mha_tensor_make(pool + N, 4, sk),
                        mha_tensor_make(pool + 2 * N, 4, sk), mha_tensor_make(pool + 3 * N, 4, sq),
                        mha_tensor_make(pool + 4 * N, 3, sl), mha_tensor_make(pool + 5 * N, 4, sw),
                        mha_tensor_make(pool + 6 * N, 4, sq), mha_tensor_make(pool + 7 * N, 4, sq),
                        mha_tensor_make(pool + 8 * N, 4, sk), mha_tensor_make(pool + 9 * N, 4, sk)};
    static const char *const name[10] = {"q",       "k",    "v",  "out", "lse",
                                         "weights", "dout", "dq", "dk",  "dv"};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static float saved[16 * N];
    memcpy(saved, pool, sizeof pool);
    char want[160];
    /* forward: output o (3..5) against every input and every earlier output */
    for (int o = 3; o < 6; o++)
        for (int x = 0; x < o; x++) {
            mha_tensor a[10];
            memcpy(a, t, sizeof a);
            a[o].data = t[x].data;
            mha_status st =
                mha_attn_forward(ctx, NULL, &a[0], &a[1], &a[2], NULL, &a[3], &a[4], &a[5]);
            snprintf(want, sizeof want,
                     "mha_attn_forward: %s overlaps %s (outputs must not "
                     "share memory with inputs or other outputs)",
                     name[o], name[x]);
            ASSERT_EQ(st, MHA_ERR_INVALID_ARG);
            ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
            ASSERT_TRUE(memcmp(pool, saved, sizeof pool) == 0); /* nothing written */
        }
    /* backward: gradient o (7..9) against the six inputs and the earlier gradients */
    static const int bin[9] = {0, 1, 2, 3, 4, 6, 7, 8, 9};
    for (int o = 6; o < 9; o++)
        for (int x = 0; x < o; x++) {
            mha_tensor a[10];
            memcpy(a, t, sizeof a);
            a[bin[o]].data = t[bin[x]].data;
            mha_status st = mha_attn_backward(ctx, NULL, &a[0], &a[1], &a[2], NULL, &a[3], &a[4],
                                              &a[6], &a[7], &a[8], &a[9]);
            snprintf(want, sizeof want,
                     "mha_attn_backward: %s overlaps %s (outputs must not "
                     "share memory with inputs or other outputs)",
                     name[bin[o]], name[bin[x]]);
            ASSERT_EQ(st, MHA_ERR_INVALID_ARG);
            ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
            ASSERT_TRUE(memcmp(pool, saved, sizeof pool) == 0);
        }
    /* out's last element is v's first: refused; one element earlier: accepted */
    mha_tensor out = mha_tensor_make(t[2].data - (B * H * L * D - 1), 4, sq);
    ASSERT_EQ(mha_attn_forward(ctx, NULL, &t[0], &t[1], &t[2], NULL, &out, NULL, NULL),
              MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_forward: out overlaps v");
    out.data--;
    ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &t[0], &t[1], &t[2], NULL, &out, NULL, NULL));
    /* strides whose offsets overflow (an element beyond any address): refused, not read */
    int64_t huge[4] = {0, 0, INT64_MAX / 7, 1}, hsh[4] = {1, 1, 8, D};
    mha_tensor hk = mha_tensor_strided(pool + N, 4, hsh, huge);
    mha_tensor hq = mha_tensor_make(pool, 4, (int64_t[4]){1, 1, 2, D});
    mha_tensor hv = mha_tensor_make(pool + 2 * N, 4, hsh),
               ho = mha_tensor_make(pool + 3 * N, 4, (int64_t[4]){1, 1, 2, D});
    ASSERT_EQ(mha_attn_forward(ctx, NULL, &hq, &hk, &hv, NULL, &ho, NULL, NULL), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_forward: k.stride[2]: got ");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "expected strides whose offsets fit in memory");
    /* an output that overlaps itself (expand()ed over the batch: stride 0) is refused too */
    memcpy(saved, pool, sizeof pool);
    int64_t bst[4] = {0, L * D, D, 1};
    mha_tensor bout = mha_tensor_strided(pool + 3 * N, 4, sq, bst);
    ASSERT_EQ(mha_attn_forward(ctx, NULL, &t[0], &t[1], &t[2], NULL, &bout, NULL, NULL),
              MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_forward: out: got a view whose elements "
                                             "share memory");
    ASSERT_EQ(mha_attn_backward(ctx, NULL, &t[0], &t[1], &t[2], NULL, &t[3], &t[4], &t[6], &bout,
                                &t[8], &t[9]),
              MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_attn_backward: dq: got a view whose elements");
    ASSERT_TRUE(memcmp(pool, saved, sizeof pool) == 0);
    mha_ctx_free(ctx);
}

/* Views that interleave without sharing an element are accepted and give the same bits as
 * separate buffers: out interleaved with q, k, v in one packed [B, T, 4, H, D] buffer, and
 * dq, dk, dv interleaved with q, k, v in one [B, T, 6, H, D] buffer. */
TEST(aliasing_interleaved_views_accepted) {
    enum {
        B = 2,
        T = 37,
        H = 3,
        D = 8,
        P = 6
    };
    const int64_t n = (int64_t)B * T * H * D;
    float *pk = malloc(sizeof(float) * (size_t)(B * T * P * H * D));
    float *sep = malloc(sizeof(float) * (size_t)(4 * n)), *lse = malloc(sizeof(float) * B * H * T);
    float *g = malloc(sizeof(float) * (size_t)n);
    rng_state = 12;
    for (int64_t i = 0; i < B * T * P * H * D; i++) pk[i] = frand();
    for (int64_t i = 0; i < n; i++) g[i] = frand();
    int64_t sh[4] = {B, H, T, D}, ps[4] = {T * P * H * D, D, P * H * D, 1}, sl[3] = {B, H, T};
    mha_tensor v6[P]; /* slot s of the packed buffer */
    for (int sl6 = 0; sl6 < P; sl6++) v6[sl6] = mha_tensor_strided(pk + sl6 * H * D, 4, sh, ps);
    mha_tensor so = mha_tensor_make(sep, 4, sh), sdq = mha_tensor_make(sep + n, 4, sh);
    mha_tensor sdk = mha_tensor_make(sep + 2 * n, 4, sh), sdv = mha_tensor_make(sep + 3 * n, 4, sh);
    mha_tensor lt = mha_tensor_make(lse, 3, sl), gt = mha_tensor_make(g, 4, sh);
    mha_mask m = mha_mask_default();
    m.causal = MHA_CAUSAL_TOP_LEFT;
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        /* out in slot 3 of q, k, v's buffer */
        ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &v6[0], &v6[1], &v6[2], &m, &so, &lt, NULL));
        ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &v6[0], &v6[1], &v6[2], &m, &v6[3], &lt, NULL));
        float *a = view_to_f(&so), *b = view_to_f(&v6[3]);
        int same = memcmp(a, b, sizeof(float) * (size_t)n) == 0;
        free(a), free(b);
        ASSERT_TRUE(same);
        /* dq, dk, dv in slots 3, 4, 5 (out from the separate buffer) */
        ASSERT_OK(ctx, mha_attn_backward(ctx, NULL, &v6[0], &v6[1], &v6[2], &m, &so, &lt, &gt, &sdq,
                                         &sdk, &sdv));
        ASSERT_OK(ctx, mha_attn_backward(ctx, NULL, &v6[0], &v6[1], &v6[2], &m, &so, &lt, &gt,
                                         &v6[3], &v6[4], &v6[5]));
        for (int x = 0; x < 3; x++) {
            a = view_to_f(x == 0 ? &sdq : x == 1 ? &sdk : &sdv), b = view_to_f(&v6[3 + x]);
            same = memcmp(a, b, sizeof(float) * (size_t)n) == 0;
            free(a), free(b);
            ASSERT_TRUE(same);
        }
    }
    mha_ctx_free(ctx);
    free(pk), free(sep), free(lse), free(g);
}

/* Runs the backward of c with 1, 2 and 3 threads; returns 1 when dq, dk, dv are bitwise equal. */
static int bwd_threads_identical(mha_ctx *ctx, const tcase *c) {
    char name[256];
    case_name(c, name, sizeof name);
    rng_state = c->seed * 0x9E3779B97F4A7C15ull + 5;
    int64_t B = c->B, H = c->H, L = c->L, S = c->S, D = c->D, Dv = c->Dv, Hk = kv_heads(c);
    tview q = view_alloc(B, H, L, D, c->layout), k = view_alloc(B, Hk, S, D, c->layout);
    tview v = view_alloc(B, Hk, S, Dv, c->layout), o = view_alloc(B, H, L, Dv, c->layout);
    tview go = view_alloc(B, H, L, Dv, c->layout);
    tview gq[3], gk[3], gv[3];
    view_fill(&q), view_fill(&k), view_fill(&v), view_fill(&go);
    float *lse = malloc(sizeof(float) * (size_t)(B * H * L + 1));
    int64_t ls[3] = {B, H, L};
    mha_tensor lt = mha_tensor_make(lse, 3, ls);
    tmask tm;
    mask_make(c, &tm);
    mha_attn_params p = mha_attn_params_default();
    p.dropout_p = c->drop, p.seed = c->seed + 3;
    int ok = mha_attn_forward(ctx, &p, &q.t, &k.t, &v.t, &tm.m, &o.t, &lt, NULL) == MHA_OK;
    for (int t = 0; t < 3; t++) {
        gq[t] = view_alloc(B, H, L, D, c->layout), gk[t] = view_alloc(B, Hk, S, D, c->layout);
        gv[t] = view_alloc(B, Hk, S, Dv, c->layout);
        mha_ctx_set_threads(ctx, t + 1);
        if (ok && mha_attn_backward(ctx, &p, &q.t, &k.t, &v.t, &tm.m, &o.t, &lt, &go.t, &gq[t].t,
                                    &gk[t].t, &gv[t].t) != MHA_OK) {
            FAILF("%s: %d threads: %s", name, t + 1, mha_ctx_errmsg(ctx));
            ok = 0;
        }
        mha_tensor *a[3] = {&gq[0].t, &gk[0].t, &gv[0].t}, *b[3] = {&gq[t].t, &gk[t].t, &gv[t].t};
        for (int g = 0; g < 3 && ok && t > 0; g++) {
            float *fa = view_to_f(a[g]), *fb = view_to_f(b[g]);
            int64_t n = mha_tensor_numel(a[g]), at = 0;
            while (at < n && memcmp(&fa[at], &fb[at], sizeof(float)) == 0) at++;
            if (at < n) {
                FAILF("%s: %s with %d threads differs from 1 thread at %lld (%.9g vs %.9g)", name,
                      g == 0   ? "dq"
                      : g == 1 ? "dk"
                               : "dv",
                      t + 1, (long long)at, fb[at], fa[at]);
                ok = 0;
            }
            free(fa), free(fb);
        }
    }
    mha_ctx_set_threads(ctx, 0);
    for (int t = 0; t < 3; t++) free(gq[t].buf), free(gk[t].buf), free(gv[t].buf);
    free(q.buf), free(k.buf), free(v.buf), free(o.buf), free(go.buf), free(lse);
    mask_free(&tm);
    return ok;
}

/* Grouped-query attention (Hkv key/value heads shared by groups of H / Hkv query heads; MQA
 * at Hkv = 1): forward, weights and every gradient against the reference (dk, dv summed over
 * each group), alone and with every mask, dropout and strided views, on every ISA; gradients
 * against finite differences once; the backward bitwise equal for 1, 2 and 3 threads. */
TEST(grouped_query_attention) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const int64_t shapes[][7] = {
        /* B, H, Hkv, L, S, D, Dv */
        {1, 4, 2, 9, 13, 8, 8},   {2, 6, 1, 17, 33, 16, 12},   {1, 8, 4, 70, 150, 64, 64},
        {2, 4, 1, 1, 40, 32, 32}, {1, 2, 1, 130, 130, 80, 80},
    };
    FOR_EACH_ISA(ctx) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int variant = 0; variant < 4; variant++) {
                tcase c = tc(shapes[s][0], shapes[s][1], shapes[s][3], shapes[s][4], shapes[s][5],
                             shapes[s][6]);
                c.Hkv = shapes[s][2];
                c.seed = 100 + s * 4 + variant;
                c.layout = variant & 1;
                if (variant == 1) c.causal = MHA_CAUSAL_TOP_LEFT, c.pad = 1;
                if (variant == 2) c.causal = MHA_CAUSAL_BOTTOM_RIGHT, c.abool = 1, c.batched = 1;
                if (variant == 3) c.afloat = 1, c.batched = 1, c.lens = 1, c.drop = 0.2f;
                if (!run_case(ctx, &c, 0)) goto out;
            }
        tcase f = tc(1, 4, 3, 5, 3, 2);
        f.Hkv = 2, f.causal = MHA_CAUSAL_BOTTOM_RIGHT;
        if (!run_case(ctx, &f, 1)) goto out;
        tcase t = tc(2, 6, 200, 300, 32, 32);
        t.Hkv = 2, t.causal = MHA_CAUSAL_TOP_LEFT, t.drop = 0.1f;
        if (!bwd_threads_identical(ctx, &t)) goto out;
    }
    /* k and v heads must divide q's and agree */
    {
        int64_t qs[4] = {1, 6, 4, 8}, ks[4] = {1, 4, 4, 8}, vs[4] = {1, 2, 4, 8};
        static float qb[1 * 6 * 4 * 8], kb[1 * 4 * 4 * 8], vb[1 * 4 * 4 * 8], ob[1 * 6 * 4 * 8];
        mha_tensor q = mha_tensor_make(qb, 4, qs), k = mha_tensor_make(kb, 4, ks);
        mha_tensor v = mha_tensor_make(vb, 4, ks), o = mha_tensor_make(ob, 4, qs);
        ASSERT_EQ(mha_attn_forward(ctx, NULL, &q, &k, &v, NULL, &o, NULL, NULL), MHA_ERR_SHAPE);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "k.shape[1]: got 4, expected a divisor of q's 6");
        ks[1] = 2;
        k = mha_tensor_make(kb, 4, ks), v = mha_tensor_make(vb, 4, (int64_t[4]){1, 3, 4, 8});
        ASSERT_EQ(mha_attn_forward(ctx, NULL, &q, &k, &v, NULL, &o, NULL, NULL), MHA_ERR_SHAPE);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "v.shape[1]: got 3, expected 2 (k heads)");
        v = mha_tensor_make(vb, 4, vs);
        ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &q, &k, &v, NULL, &o, NULL, NULL));
    }
out:
    mha_ctx_free(ctx);
}

/* The backward's key chunks (attn_backward.c: NC <= 8 chunks of key tiles per head, dq summed
 * from per-chunk partials): S spans several key tiles of every ISA (up to 128 keys each), so
 * B*H = 1, 2, 4 give 8, 8 and 4 chunks (fewer where there are fewer key tiles), in one or more
 * groups of heads; causal chunks that skip the rows above the diagonal, rows that see no key
 * (bottom-right with L > S), padding, lengths and dropout. Against the reference, and bitwise
 * equal for 1, 2 and 3 threads. */
TEST(backward_key_chunks) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const int64_t shapes[][6] = {{1, 1, 150, 700, 16, 12},
                                        {1, 1, 600, 300, 8, 8},
                                        {2, 1, 40, 520, 8, 8},
                                        {1, 4, 64, 400, 8, 4}};
    FOR_EACH_ISA(ctx) {
        for (int kind = 0; kind < 7; kind++) {
            int s = kind < 3 ? 0 : kind == 6 ? 3 : kind - 2;
            tcase c = tc(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4],
                         shapes[s][5]);
            c.seed = 500 + (uint64_t)kind;
            switch (kind) {
            case 0: break;
            case 1: c.causal = 1; break;
            case 2: c.causal = 2, c.pad = c.lens = 1, c.drop = 0.2f; break;
            case 3: c.causal = 2, c.afloat = 1; break;
            case 4: c.causal = 1, c.layout = 1; break;
            case 5: c.causal = 2, c.drop = 0.1f, c.lens = 1; break;
            case 6: c.causal = 1, c.pad = 1; break;
            }
            if (!run_case(ctx, &c, 0) || !bwd_threads_identical(ctx, &c)) goto out;
        }
    }
out:
    mha_ctx_free(ctx);
}

/* A tolerance for sums of products: the SIMD kernels sum in another order and with fused
 * multiply-add, the generic ones in order with a rounding per product, so a fixed atol is
 * either too loose for small sums or too tight for large ones. Each float result of a sum of
 * m terms is within gamma ~ m * 2^-24 * sum |term| of the exact value (plus a rounding for a
 * scale), so two of them differ by at most bound = 2 * (m + 2) * 2^-24 * mag, mag = sum |term|
 * per element (computed in double). Returns the number of elements beyond the bound; when
 * `what` is non-NULL, reports the worst one as a failure. */
static int64_t near_sum(const char *file, int line, const char *what, const float *got,
                        const double *want, const double *mag, int64_t m, int64_t n) {
    int64_t bad = 0, worst = -1;
    double worst_ratio = 0, u = ldexp(1.0, -24);
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]), bound = 2.0 * (double)(m + 2) * u * mag[i];
        if (d > bound || isnan(d)) {
            double ratio = bound > 0 ? d / bound : INFINITY;
            if (worst < 0 || ratio > worst_ratio || isnan(d)) worst = i, worst_ratio = ratio;
            bad++;
        }
    }
    if (bad && what)
        FAILF("%s:%d: %s: %lld of %lld elements beyond 2 (m + 2) 2^-24 sum|terms| (m = %lld); "
              "worst [%lld]: got %.9g, expected %.9g, sum|terms| %.3g (%.3g x the bound)",
              file, line, what, (long long)bad, (long long)n, (long long)m, (long long)worst,
              got[worst], want[worst], mag[worst], worst_ratio);
    return bad;
}

/* mag for S[br, bc] (ld) = scale * A[br, n] B[bc, n]^T */
static void mag_scores(int64_t br, int64_t bc, int64_t n, double scale, const float *A, int64_t lda,
                       const float *Bm, int64_t ldb, double *mag, int64_t ld) {
    for (int64_t r = 0; r < br; r++)
        for (int64_t c = 0; c < ld; c++) {
            double s = 0;
            for (int64_t x = 0; c < bc && x < n; x++)
                s += fabs((double)A[r * lda + x] * Bm[c * ldb + x]);
            mag[r * ld + c] = fabs(scale) * s;
        }
}
/* mag for O[br, n] (ldo, rows up to `rows`) = alpha O + P[br, bc] X[bc, n] (alpha NULL: 1) */
static void mag_pv(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp, const float *X,
                   int64_t ldx, const float *alpha, const float *O, int64_t ldo, int64_t rows,
                   double *mag) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t x = 0; x < ldo; x++) {
            double s = 0;
            if (r < br && x < n) {
                s = fabs((double)(alpha ? alpha[r] : 1.0f) * O[r * ldo + x]);
                for (int64_t c = 0; c < bc; c++) s += fabs((double)P[r * ldp + c] * X[c * ldx + x]);
            }
            mag[r * ldo + x] = s;
        }
}
/* mag for G[bc, n] (ldg, rows up to `rows`) += P[br, bc]^T X[br, n] */
static void mag_ptv(int64_t br, int64_t bc, int64_t n, const float *P, int64_t ldp, const float *X,
                    int64_t ldx, const float *G, int64_t ldg, int64_t rows, double *mag) {
    for (int64_t c = 0; c < rows; c++)
        for (int64_t x = 0; x < ldg; x++) {
            double s = 0;
            if (c < bc && x < n) {
                s = fabs((double)G[c * ldg + x]);
                for (int64_t r = 0; r < br; r++) s += fabs((double)P[r * ldp + c] * X[r * ldx + x]);
            }
            mag[c * ldg + x] = s;
        }
}

/* Every ISA's tile kernels against the generic ones on edge tiles (br, bc below the tile
 * sizes, odd head dims, masks cutting through the tile): the SIMD paths' contract test. The
 * sums (scores, pv, ptv) are compared within near_sum's bound, the exp-based steps within a
 * relative 1e-5. (The online-softmax step is inside attn_fwd: test_attn_kernels.c.) */
TEST(tile_kernels_match_generic) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa) || !mha__kernels_for((mha_isa)isa)) continue;
        const mha_kernels *kk = mha__kernels_for((mha_isa)isa);
        const int64_t BR = kk->attn_br, BC = kk->attn_bc, ld = BC + 5, ldx = 133;
        const int64_t brs[3] = {1, BR - 1, BR}, bcs[3] = {1, BC > 7 ? 7 : BC, BC};
        const int64_t ns[4] = {1, 7, 64, 80};
        float *A = malloc(sizeof(float) * (size_t)(BR * ldx)),
              *Bm = malloc(sizeof(float) * (size_t)(BC * ldx));
        float *S1 = malloc(sizeof(float) * (size_t)(BR * ld)),
              *S2 = malloc(sizeof(float) * (size_t)(BR * ld));
        float *O1 = malloc(sizeof(float) * (size_t)(BC * ldx)),
              *O2 = malloc(sizeof(float) * (size_t)(BC * ldx));
        double *want = malloc(sizeof(double) * (size_t)(BC * ldx));
        double *mag =
            malloc(sizeof(double) * (size_t)((BC > BR ? BC : BR) * (ldx > ld ? ldx : ld)));
        float *fm = malloc(sizeof(float) * (size_t)(BR * ld));
        uint8_t *bm = malloc((size_t)(BR * ld)), *pad = malloc((size_t)ld);
        float *rows = malloc(sizeof(float) * (size_t)(3 * BR));
        float *a1 = rows, *lse = a1 + BR, *dr = lse + BR;
        int bad = 0;
        rng_state = 5;
        for (int64_t t = 0; t < BR * ldx; t++) A[t] = frand();
        for (int64_t t = 0; t < BC * ldx; t++) Bm[t] = frand();
        for (int64_t t = 0; t < BR * ld; t++)
            fm[t] = urand() < 0.1 ? -INFINITY : frand(), bm[t] = urand() < 0.2;
        for (int64_t t = 0; t < ld; t++) pad[t] = urand() < 0.2;
        for (int64_t r = 0; r < BR; r++) lse[r] = r == 2 ? -INFINITY : 1 + frand(), dr[r] = frand();
        for (int64_t r = 0; r < BR; r++) a1[r] = r % 3 ? (float)urand() : r % 2 ? 1.0f : 0.0f;
        for (int a = 0; a < 3 && !bad; a++)
            for (int c = 0; c < 3 && !bad; c++)
                for (int e = 0; e < 4 && !bad; e++) {
                    int64_t br = brs[a], bc = bcs[c], n = ns[e], nn = br * ld;
                    mha__attn_tile_mask mk = {.col_end = bc - 1,
                                              .diag = 1 - (int64_t)c,
                                              .pad = c ? pad : NULL,
                                              .bmask = e & 1 ? bm : NULL,
                                              .fmask = e & 2 ? fm : NULL,
                                              .ld_mask = ld};
                    gen->attn_scores(br, bc, n, 0.37f, A, ldx, Bm, ldx, S1, ld);
                    kk->attn_scores(br, bc, n, 0.37f, A, ldx, Bm, ldx, S2, ld);
                    double *w = want;
                    for (int64_t t = 0; t < nn; t++)
                        w[t] = t % ld < bc ? S1[t] : 0, S2[t] = t % ld < bc ? S2[t] : 0;
                    mag_scores(br, bc, n, 0.37, A, ldx, Bm, ldx, mag, ld);
                    bad |= near_sum(__FILE__, __LINE__, kk->name, S2, w, mag, n, nn) != 0;
                    memcpy(S2, S1, sizeof(float) * (size_t)nn);
                    gen->attn_probs(br, bc, S1, ld, &mk, lse, NULL);
                    kk->attn_probs(br, bc, S2, ld, &mk, lse, NULL);
                    for (int64_t t = 0; t < nn; t++)
                        w[t] = t % ld < bc ? S1[t] : 0, S2[t] = t % ld < bc ? S2[t] : 0;
                    bad |= !harness_near(__FILE__, __LINE__, "probs", S2, w, nn, 1e-5, 1e-6);
                    /* pv: O[br, n] = alpha O + P X;  ptv: G[bc, n] += P^T X */
                    const float *al = e & 1 ? a1 : NULL;
                    for (int64_t t = 0; t < BC * ldx; t++) O1[t] = O2[t] = frand();
                    mag_pv(br, bc, n, S1, ld, Bm, ldx, al, O1, ldx, BC, mag);
                    gen->attn_pv(br, bc, n, S1, ld, Bm, ldx, al, O1, ldx);
                    kk->attn_pv(br, bc, n, S1, ld, Bm, ldx, al, O2, ldx);
                    for (int64_t t = 0; t < BC * ldx; t++) w[t] = O1[t];
                    bad |= near_sum(__FILE__, __LINE__, "pv", O2, w, mag, bc + 1, BC * ldx) != 0;
                    memcpy(O2, O1, sizeof(float) * (size_t)(BC * ldx));
                    mag_ptv(br, bc, n, S1, ld, A, ldx, O1, ldx, BC, mag);
                    gen->attn_ptv(br, bc, n, S1, ld, A, ldx, O1, ldx);
                    kk->attn_ptv(br, bc, n, S1, ld, A, ldx, O2, ldx);
                    for (int64_t t = 0; t < BC * ldx; t++) w[t] = O1[t];
                    bad |= near_sum(__FILE__, __LINE__, "ptv", O2, w, mag, br + 1, BC * ldx) != 0;
                    for (int64_t t = 0; t < nn; t++) O1[t] = O2[t] = frand();
                    gen->attn_dsoftmax(br, bc, S1, ld, O1, ld, dr, 0.37f, NULL);
                    kk->attn_dsoftmax(br, bc, S1, ld, O2, ld, dr, 0.37f, NULL);
                    for (int64_t t = 0; t < nn; t++) w[t] = O1[t];
                    bad |= !harness_near(__FILE__, __LINE__, "dsoftmax", O2, w, nn, 1e-5, 1e-6);
                }
        free(A), free(Bm), free(S1), free(S2), free(O1), free(O2), free(want), free(mag);
        free(fm), free(bm), free(pad), free(rows);
        if (bad) return;
    }
}

/* near_sum can fail: kernels with the classic edge bugs (the last head dim, key or query row
 * dropped) are caught on a full tile, and a result off by a relative 1e-5 too. */
TEST(tile_tolerance_catches_wrong_kernels) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    const int64_t br = 16, bc = 32, n = 64, ld = 40, ldx = 70;
    float *A = malloc(sizeof(float) * (size_t)(br * ldx)),
          *Bm = malloc(sizeof(float) * (size_t)(bc * ldx));
    float *S = malloc(sizeof(float) * (size_t)(br * ld)),
          *R = malloc(sizeof(float) * (size_t)(bc * ldx));
    float *O = malloc(sizeof(float) * (size_t)(bc * ldx)),
          *O0 = malloc(sizeof(float) * (size_t)(bc * ldx));
    double *want = malloc(sizeof(double) * (size_t)(bc * ldx)),
           *mag = malloc(sizeof(double) * (size_t)(bc * ldx));
    rng_state = 17;
    for (int64_t t = 0; t < br * ldx; t++) A[t] = frand();
    for (int64_t t = 0; t < bc * ldx; t++) Bm[t] = frand(), O0[t] = frand();
    /* scores without the last head dim */
    gen->attn_scores(br, bc, n, 0.5f, A, ldx, Bm, ldx, S, ld);
    for (int64_t t = 0; t < br * ld; t++) want[t] = S[t] = t % ld < bc ? S[t] : 0;
    mag_scores(br, bc, n, 0.5, A, ldx, Bm, ldx, mag, ld);
    ASSERT_EQ(near_sum(__FILE__, __LINE__, NULL, S, want, mag, n, br * ld), 0);
    gen->attn_scores(br, bc, n - 1, 0.5f, A, ldx, Bm, ldx, S, ld);
    for (int64_t t = 0; t < br * ld; t++) S[t] = t % ld < bc ? S[t] : 0;
    ASSERT_TRUE(near_sum(__FILE__, __LINE__, NULL, S, want, mag, n, br * ld) > 0);
    /* pv without the last key */
    for (int64_t t = 0; t < br * ld; t++) S[t] = (float)urand();
    memcpy(O, O0, sizeof(float) * (size_t)(bc * ldx));
    mag_pv(br, bc, n, S, ld, Bm, ldx, NULL, O, ldx, bc, mag);
    gen->attn_pv(br, bc, n, S, ld, Bm, ldx, NULL, O, ldx);
    for (int64_t t = 0; t < bc * ldx; t++) want[t] = O[t];
    memcpy(R, O0, sizeof(float) * (size_t)(bc * ldx));
    gen->attn_pv(br, bc - 1, n, S, ld, Bm, ldx, NULL, R, ldx);
    ASSERT_TRUE(near_sum(__FILE__, __LINE__, NULL, R, want, mag, bc + 1, bc * ldx) > 0);
    /* a result off by a relative 1e-5 (e.g. a sloppy reduction) */
    for (int64_t t = 0; t < bc * ldx; t++) R[t] = O[t] * (1 + 1e-5f);
    ASSERT_TRUE(near_sum(__FILE__, __LINE__, NULL, R, want, mag, bc + 1, bc * ldx) > 0);
    /* ptv without the last query row */
    memcpy(O, O0, sizeof(float) * (size_t)(bc * ldx));
    mag_ptv(br, bc, n, S, ld, A, ldx, O, ldx, bc, mag);
    gen->attn_ptv(br, bc, n, S, ld, A, ldx, O, ldx);
    for (int64_t t = 0; t < bc * ldx; t++) want[t] = O[t];
    ASSERT_EQ(near_sum(__FILE__, __LINE__, NULL, O, want, mag, br + 1, bc * ldx), 0);
    memcpy(R, O0, sizeof(float) * (size_t)(bc * ldx));
    gen->attn_ptv(br - 1, bc, n, S, ld, A, ldx, R, ldx);
    ASSERT_TRUE(near_sum(__FILE__, __LINE__, NULL, R, want, mag, br + 1, bc * ldx) > 0);
    free(A), free(Bm), free(S), free(R), free(O), free(O0), free(want), free(mag);
}

/* Dropout on the fused forward's tiles (SIMD: 96 x 256, so several query and key tiles with
 * partial edges; key_lengths and causality cut tiles so that the keep decisions are computed
 * only up to the last row's end): the weights are exactly 0 where mha__dropout_keep drops or a
 * mask excludes, positive elsewhere; a batch with key length 0 has out 0 and lse -inf; out
 * equals weights v (float64) within rounding; lse is the undropped one (weights / keep_scale
 * sum to 1 over the kept and dropped keys alike, i.e. lse does not depend on the seed). */
TEST(dropout_fused_tiles) {
    enum {
        B = 2,
        H = 2,
        L = 200,
        S = 300,
        D = 16,
        DV = 12
    };
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    size_t nq = (size_t)B * H * L * D, nk = (size_t)B * H * S * D, nv = (size_t)B * H * S * DV;
    size_t no = (size_t)B * H * L * DV, nw = (size_t)B * H * L * S, nl = (size_t)B * H * L;
    float *q = malloc(sizeof(float) * nq), *k = malloc(sizeof(float) * nk);
    float *v = malloc(sizeof(float) * nv), *o = malloc(sizeof(float) * no);
    float *w = malloc(sizeof(float) * nw), *lse = malloc(sizeof(float) * nl);
    float *lse2 = malloc(sizeof(float) * nl);
    rng_state = 31;
    for (size_t t = 0; t < nq; t++) q[t] = frand();
    for (size_t t = 0; t < nk; t++) k[t] = frand();
    for (size_t t = 0; t < nv; t++) v[t] = frand();
    int64_t sq[4] = {B, H, L, D}, sk[4] = {B, H, S, D}, sv[4] = {B, H, S, DV};
    int64_t so[4] = {B, H, L, DV}, sw[4] = {B, H, L, S}, sl[3] = {B, H, L};
    mha_tensor tq = mha_tensor_make(q, 4, sq), tk = mha_tensor_make(k, 4, sk);
    mha_tensor tv = mha_tensor_make(v, 4, sv), to = mha_tensor_make(o, 4, so);
    mha_tensor tw = mha_tensor_make(w, 4, sw), tl = mha_tensor_make(lse, 3, sl);
    mha_tensor tl2 = mha_tensor_make(lse2, 3, sl);
    const int32_t lens[B] = {270, 0};
    mha_mask m = mha_mask_default();
    m.causal = MHA_CAUSAL_BOTTOM_RIGHT, m.key_lengths = lens; /* row i sees j <= i + 100 */
    mha_attn_params p = mha_attn_params_default();
    p.dropout_p = 0.15f, p.seed = 123, p.offset = (1ull << 33) + 5;
    FOR_EACH_ISA(ctx) {
        const char *isa = mha_isa_name(mha_ctx_isa(ctx));
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &tq, &tk, &tv, &m, &to, &tl, &tw));
        mha_attn_params p2 = p;
        p2.seed = 999;
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p2, &tq, &tk, &tv, &m, &to, &tl2, NULL));
        ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &tq, &tk, &tv, &m, &to, &tl, NULL));
        int64_t bad = 0, dropped = 0, kept = 0;
        for (int64_t bh = 0; bh < B * H && !bad; bh++)
            for (int64_t i = 0; i < L && !bad; i++) {
                int64_t end = i + 100 + 1 < lens[bh / H] ? i + 100 + 1 : lens[bh / H];
                const float *wr = w + (bh * L + i) * S;
                for (int64_t j = 0; j < S; j++) {
                    int keep = mha__dropout_keep(&p, bh, i, j);
                    if (j < end && keep ? !(wr[j] > 0) : wr[j] != 0.0f) {
                        FAILF("%s: weights[%lld, %lld, %lld] = %g (allowed %d, kept %d)", isa,
                              (long long)bh, (long long)i, (long long)j, wr[j], j < end, keep);
                        bad = 1;
                        break;
                    }
                    if (j < end) dropped += !keep, kept += keep;
                }
                float l1 = lse[bh * L + i], l2 = lse2[bh * L + i];
                if (end == 0 ? !(l1 == -INFINITY && l2 == -INFINITY) : l1 != l2) {
                    FAILF("%s: lse[%lld, %lld] %g / %g with another seed (end %lld)", isa,
                          (long long)bh, (long long)i, l1, l2, (long long)end);
                    bad = 1;
                }
                for (int64_t x = 0; x < DV && !bad; x++) { /* out = weights v */
                    double ref = 0, mag = 0;
                    for (int64_t j = 0; j < end; j++) {
                        double y = (double)wr[j] * v[(bh * S + j) * DV + x];
                        ref += y, mag += fabs(y);
                    }
                    float got = o[(bh * L + i) * DV + x];
                    if (end == 0 ? got != 0.0f : !(fabs(got - ref) <= 1e-5 * mag + 1e-7)) {
                        FAILF("%s: out[%lld, %lld, %lld] = %.9g, weights v = %.9g", isa,
                              (long long)bh, (long long)i, (long long)x, got, ref);
                        bad = 1;
                    }
                }
            }
        /* the dropped fraction is p (about 60000 allowed keys: 0.15 +- 0.005) */
        double frac = (double)dropped / (double)(dropped + kept);
        if (!bad && fabs(frac - p.dropout_p) > 0.01) FAILF("%s: dropped fraction %g", isa, frac);
        if (bad) break;
    }
    mha_ctx_free(ctx);
    free(q), free(k), free(v), free(o), free(w), free(lse), free(lse2);
}

/* H = 0 query heads is an empty problem, as B, L or S = 0 (F.scaled_dot_product_attention
 * returns an empty tensor): with Hkv = 0, and with any Hkv > 0 (0 is a multiple of every Hkv),
 * in float32, bfloat16 and float16. The forward writes nothing; the backward sets dk, dv to 0
 * (no query head reads k, v). H > 0 with Hkv = 0 stays refused. */
/* dropout_p = 1 drops every weight, as PyTorch's dropout(p = 1): out 0 and the weights 0, lse
 * bit for bit the call's without dropout (FlashAttention's softmax_lse does not depend on
 * dropout), and the backward's dq, dk, dv 0; in every dtype, on every kernel path, causal,
 * grouped heads. */
TEST(dropout_drops_all) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    enum {
        B = 2,
        H = 4,
        HKV = 2,
        L = 9,
        S = 13,
        D = 8,
        DV = 6
    };
    static const mha_dtype dts[3] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};
    static float in[4 * B * H * S * D], o[B * H * L * DV], w[B * H * L * S], l[B * H * L];
    static float l0[B * H * L], o0[B * H * L * DV], grads[3 * B * H * S * D];
    for (size_t x = 0; x < sizeof in / sizeof *in; x++) in[x] = frand();
    FOR_EACH_ISA(ctx) {
        for (int di = 0; di < 3; di++) {
            const mha_dtype dt = dts[di];
            const size_t es = dt == MHA_DTYPE_F32 ? 4 : 2;
            int64_t sq[4] = {B, H, L, D}, sk[4] = {B, HKV, S, D}, sv[4] = {B, HKV, S, DV};
            int64_t so[4] = {B, H, L, DV}, sl[3] = {B, H, L}, sw[4] = {B, H, L, S};
            mha_tensor q = mha_tensor_typed(in, dt, 4, sq, NULL);
            mha_tensor k = mha_tensor_typed(in + B * H * S * D, dt, 4, sk, NULL);
            mha_tensor v = mha_tensor_typed(in + 2 * B * H * S * D, dt, 4, sv, NULL);
            mha_tensor g = mha_tensor_typed(in + 3 * B * H * S * D, dt, 4, so, NULL);
            mha_tensor to = mha_tensor_typed(o, dt, 4, so, NULL),
                       to0 = mha_tensor_typed(o0, dt, 4, so, NULL);
            mha_tensor tw = mha_tensor_make(w, 4, sw), tl = mha_tensor_make(l, 3, sl);
            mha_tensor tl0 = mha_tensor_make(l0, 3, sl);
            mha_tensor dq = mha_tensor_typed(grads, dt, 4, sq, NULL);
            mha_tensor dk = mha_tensor_typed(grads + B * H * S * D, dt, 4, sk, NULL);
            mha_tensor dv = mha_tensor_typed(grads + 2 * B * H * S * D, dt, 4, sv, NULL);
            mha_mask m = mha_mask_default();
            m.causal = MHA_CAUSAL_TOP_LEFT;
            mha_attn_params p = mha_attn_params_default();
            ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &q, &k, &v, &m, &to0, &tl0, NULL));
            p.dropout_p = 1, p.seed = 9;
            for (size_t x = 0; x < sizeof o / sizeof *o; x++) o[x] = 7.0f;
            for (size_t x = 0; x < sizeof w / sizeof *w; x++) w[x] = 7.0f;
            for (size_t x = 0; x < sizeof grads / sizeof *grads; x++) grads[x] = 7.0f;
            ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &q, &k, &v, &m, &to, &tl, &tw));
            const unsigned char *ob = (const unsigned char *)o, *gb = (const unsigned char *)grads;
            for (size_t x = 0; x < B * H * L * DV * es; x++)
                if (ob[x] != 0) {
                    FAILF("%s: out byte %zu not 0", mha_dtype_name(dt), x);
                    goto out;
                }
            for (size_t x = 0; x < sizeof w / sizeof *w; x++)
                if (w[x] != 0) {
                    FAILF("%s: weight %zu: %g, expected 0", mha_dtype_name(dt), x, (double)w[x]);
                    goto out;
                }
            if (memcmp(l, l0, sizeof l) != 0) {
                FAILF("%s: lse differs from the call's without dropout", mha_dtype_name(dt));
                goto out;
            }
            ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &q, &k, &v, &m, &to, NULL, NULL));
            ASSERT_OK(ctx, mha_attn_backward(ctx, &p, &q, &k, &v, &m, &to, &tl, &g, &dq, &dk, &dv));
            const size_t ng[3] = {B * H * L * D, B * HKV * S * D, B * HKV * S * DV};
            for (int t = 0; t < 3; t++)
                for (size_t x = 0; x < ng[t] * es; x++)
                    if (gb[t * B * H * S * D * sizeof(float) + x] != 0) {
                        FAILF("%s: %s byte %zu not 0", mha_dtype_name(dt),
                              t == 0   ? "dq"
                              : t == 1 ? "dk"
                                       : "dv",
                              x);
                        goto out;
                    }
        }
    }
out:
    mha_ctx_free(ctx);
}

TEST(zero_heads_empty_problem) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    enum {
        B = 2,
        L = 3,
        S = 5,
        D = 4,
        DV = 6,
        N = 512
    };
    static const mha_dtype dts[3] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};
    static float in[N], outb[N], dkb[N], dvb[N];
    for (int x = 0; x < N; x++) in[x] = frand();
    for (int di = 0; di < 3; di++)
        for (int64_t Hkv = 0; Hkv <= 2; Hkv += 2) {
            const mha_dtype dt = dts[di];
            int64_t sq[4] = {B, 0, L, D}, sk[4] = {B, Hkv, S, D}, sv[4] = {B, Hkv, S, DV};
            int64_t so[4] = {B, 0, L, DV}, sl[3] = {B, 0, L}, sw[4] = {B, 0, L, S};
            for (int x = 0; x < N; x++) outb[x] = 7.0f, dkb[x] = 7.0f, dvb[x] = 7.0f;
            mha_tensor q = mha_tensor_typed(in, dt, 4, sq, NULL);
            mha_tensor k = mha_tensor_typed(in, dt, 4, sk, NULL);
            mha_tensor v = mha_tensor_typed(in, dt, 4, sv, NULL);
            mha_tensor o = mha_tensor_typed(outb, dt, 4, so, NULL);
            mha_tensor l = mha_tensor_make(outb + 128, 3, sl);
            mha_tensor w = mha_tensor_make(outb + 256, 4, sw);
            mha_tensor g = mha_tensor_typed(in, dt, 4, so, NULL);
            mha_tensor dq = mha_tensor_typed(outb + 384, dt, 4, sq, NULL);
            mha_tensor dk = mha_tensor_typed(dkb, dt, 4, sk, NULL);
            mha_tensor dv = mha_tensor_typed(dvb, dt, 4, sv, NULL);
            mha_mask m = mha_mask_default();
            m.causal = MHA_CAUSAL_TOP_LEFT;
            ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &q, &k, &v, &m, &o, &l, &w));
            ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &q, &k, &v, NULL, &o, NULL, NULL));
            for (int x = 0; x < N; x++)
                if (outb[x] != 7.0f) {
                    FAILF("%s Hkv %lld: forward wrote element %d of an empty output",
                          mha_dtype_name(dt), (long long)Hkv, x);
                    return;
                }
            ASSERT_OK(ctx, mha_attn_backward(ctx, NULL, &q, &k, &v, &m, &o, &l, &g, &dq, &dk, &dv));
            const int64_t nk = B * Hkv * S * D, nv = B * Hkv * S * DV;
            const size_t es = dt == MHA_DTYPE_F32 ? 4 : 2;
            const unsigned char *kbytes = (const unsigned char *)dkb;
            const unsigned char *vbytes = (const unsigned char *)dvb;
            for (int64_t x = 0; x < (int64_t)(N * sizeof(float)); x++) {
                const int in_k = x < nk * (int64_t)es, in_v = x < nv * (int64_t)es;
                if ((in_k && kbytes[x] != 0) || (in_v && vbytes[x] != 0)) {
                    FAILF("%s Hkv %lld: byte %lld of dk / dv not 0", mha_dtype_name(dt),
                          (long long)Hkv, (long long)x);
                    return;
                }
                if (!in_k && x % 4 == 0 && dkb[x / 4] != 7.0f) {
                    FAILF("%s Hkv %lld: dk written past its end (float %lld)", mha_dtype_name(dt),
                          (long long)Hkv, (long long)(x / 4));
                    return;
                }
            }
            for (int x = 0; x < N; x++)
                if (outb[x] != 7.0f) {
                    FAILF("%s Hkv %lld: backward wrote element %d of an empty dq",
                          mha_dtype_name(dt), (long long)Hkv, x);
                    return;
                }
        }
    /* H > 0 with Hkv = 0: no head to read, refused */
    int64_t sq[4] = {1, 2, 3, 4}, sk[4] = {1, 0, 3, 4};
    mha_tensor q = mha_tensor_make(in, 4, sq), k = mha_tensor_make(in, 4, sk);
    mha_tensor o = mha_tensor_make(outb, 4, sq);
    ASSERT_EQ(mha_attn_forward(ctx, NULL, &q, &k, &k, NULL, &o, NULL, NULL), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_attn_forward: k.shape[1]: got 0, expected a divisor of q's 2 heads");
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(validation_errors);
    RUN(shapes_no_mask);
    RUN(masks_each_and_combined);
    RUN(fully_masked_rows);
    RUN(nan_key_propagates);
    RUN(backward_finite_differences);
    RUN(packed_qkv_views);
    RUN(aliasing_rejected);
    RUN(aliasing_interleaved_views_accepted);
    RUN(dropout_statistics);
    RUN(threads_bitwise_identical);
    RUN(backward_key_chunks);
    RUN(grouped_query_attention);
    RUN(zero_heads_empty_problem);
    RUN(dropout_drops_all);
    RUN(dropout_fused_tiles);
    RUN(tile_kernels_match_generic);
    RUN(tile_tolerance_catches_wrong_kernels);
    return harness_report();
}
