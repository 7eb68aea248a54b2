/* test_attn_dtype.c - the attention core on bfloat16 and float16 views (issue 11).
 *
 * The contract (mha.h): q, k, v, out (dout, dq, dk, dv) of one dtype; lse float32; computed in
 * float32 from the exact inputs, each output rounded once to nearest even. Checked here:
 *   - against a float64 reference on the ROUNDED inputs (written below from the formulas, not
 *     from the library): the error stays within the output's rounding (half an ulp of the
 *     dtype) plus float32 accumulation, forward and every gradient;
 *   - exactly: a bf16 / f16 output equals the float32 call on the converted inputs, rounded
 *     (the backward's with the float32 forward's out: it recomputes out in float32)
 *     (src/kernels/cvt.h's conversions are checked against the hardware's elsewhere: here
 *     against an independent float64 rounding below), and lse equals the float32 call's lse;
 *     except the bf16 forward on a table with bf16 kernels (vdpbf16ps: sums in pairs, the
 *     probabilities rounded to bf16 for the product with V), checked against the float64
 *     reference with that rounding's bound added: 2^-8 sum_j P_ij |v_j| per element;
 *   - contiguous and strided ([B, L, H, D] memory) views, grouped-query heads, causal, key
 *     padding with a fully masked row (0, never NaN), on every ISA; 1 and 2 threads bitwise;
 *   - bad input: mismatched dtypes, a float32-only tensor given bf16, an unknown dtype, an
 *     allocation failure: a status naming the tensor, outputs untouched;
 *   - the calls that take float32 only refuse bf16 views naming the tensor. */
#include "harness.h"
#include "core/internal.h"   /* mha__fault_after, mha__ctx_kernels */
#include "kernels/kernels.h" /* whether the table has bf16 kernels */

static uint64_t rng = 0x1234567ull;
static float frand(void) { /* [-1, 1) */
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (float)((double)((rng * 2685821657736338717ull) >> 11) / 4503599627370496.0 - 1);
}

/* Rounding to the dtype, written independently of the library: the nearest representable
 * value, ties to the even significand, computed in double. */
static double round_to(mha_dtype dt, double x) {
    const int bits = dt == MHA_DTYPE_BF16 ? 8 : 11; /* significand bits, with the implicit 1 */
    if (x == 0 || !isfinite(x)) return x;
    int e;
    frexp(x, &e);                                /* x = f 2^e, 0.5 <= |f| < 1 */
    if (dt == MHA_DTYPE_F16 && e < -13) e = -13; /* half's subnormals: a fixed step 2^-24 */
    const double step = ldexp(1.0, e - bits), q = x / step, r = nearbyint(q); /* FE_TONEAREST */
    return r * step;
}

static uint16_t to_bits(mha_dtype dt, double x) { /* x representable in dt */
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    if (dt == MHA_DTYPE_BF16) return (uint16_t)(u >> 16);
    /* half from a float32 that is exactly a half value */
    const uint32_t sign = (u >> 16) & 0x8000;
    const double a = fabs(x);
    if (a == 0) return (uint16_t)sign;
    if (a < ldexp(1, -14)) return (uint16_t)(sign | (uint32_t)(a / ldexp(1, -24)));
    int e;
    double f2 = frexp(a, &e); /* a = f2 2^e */
    return (uint16_t)(sign | (uint32_t)(e - 1 + 15) << 10 | (uint32_t)((f2 * 2 - 1) * 1024));
}

static double from_bits(mha_dtype dt, uint16_t h) {
    if (dt == MHA_DTYPE_BF16) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    const int e = (h >> 10) & 31, f = h & 1023;
    double v = e == 31 ? (f ? NAN : INFINITY) : e ? ldexp(1 + f / 1024.0, e - 15) : ldexp(f, -24);
    return h & 0x8000 ? -v : v;
}

/* A [B, X, R, C] tensor of dtype dt (contiguous, or [B, R, X, C] memory when strided) with a
 * double copy of its values (contiguous [B, X, R, C]). */
typedef struct {
    uint16_t *mem;
    double *val;
    mha_tensor t;
    int64_t n;
} lp_tensor;

static lp_tensor lp_make(mha_dtype dt, int64_t B, int64_t X, int64_t R, int64_t C, int strided,
                         int fill) {
    lp_tensor a;
    a.n = B * X * R * C;
    a.mem = malloc(sizeof(uint16_t) * (size_t)(a.n + 1));
    a.val = calloc((size_t)a.n + 1, sizeof(double));
    int64_t sh[4] = {B, X, R, C}, st[4] = {R * X * C, C, X * C, 1};
    a.t = mha_tensor_typed(a.mem, dt, 4, sh, strided ? st : NULL);
    for (int64_t b = 0; b < B; b++)
        for (int64_t x = 0; x < X; x++)
            for (int64_t r = 0; r < R; r++)
                for (int64_t c = 0; c < C; c++) {
                    int64_t i = ((b * X + x) * R + r) * C + c;
                    int64_t o = b * a.t.stride[0] + x * a.t.stride[1] + r * a.t.stride[2] + c;
                    double v = fill ? round_to(dt, frand()) : 0;
                    a.val[i] = v;
                    a.mem[o] = fill ? to_bits(dt, v) : 0x7fc1; /* outputs: a NaN sentinel */
                }
    return a;
}
static void lp_free(lp_tensor *a) { free(a->mem), free(a->val); }

/* The element (b, x, r, c) of a view of 2-byte elements, as a double. */
static double lp_at(const lp_tensor *a, int64_t b, int64_t x, int64_t r, int64_t c) {
    const mha_tensor *t = &a->t;
    return from_bits(t->dtype, a->mem[b * t->stride[0] + x * t->stride[1] + r * t->stride[2] + c]);
}

typedef struct {
    int64_t B, H, Hkv, L, S, D, Dv;
    int causal, pad, strided;
} dcase;

static const dcase cases[] = {
    {1, 2, 2, 5, 7, 8, 8, 0, 0, 0},         {2, 4, 2, 33, 40, 16, 12, 1, 1, 1},
    {1, 4, 1, 70, 70, 64, 64, 1, 0, 0},     {2, 2, 1, 17, 130, 32, 32, 0, 1, 1},
    {1, 8, 2, 129, 129, 128, 128, 1, 1, 0}, {1, 2, 1, 9, 11, 7, 5, 1, 0, 1},
};

typedef struct {
    dcase c;
    mha_dtype dt;
    lp_tensor q, k, v, out, dout, dq, dk, dv;
    float *lse;
    mha_tensor lse_t;
    uint8_t *pad;
    mha_mask m;
    char name[160];
} prob;

static void prob_make(prob *p, const dcase *c, mha_dtype dt, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->c = *c, p->dt = dt;
    rng = seed * 0x9E3779B97F4A7C15ull + 3;
    int s = c->strided;
    p->q = lp_make(dt, c->B, c->H, c->L, c->D, s, 1);
    p->k = lp_make(dt, c->B, c->Hkv, c->S, c->D, s, 1);
    p->v = lp_make(dt, c->B, c->Hkv, c->S, c->Dv, s, 1);
    p->dout = lp_make(dt, c->B, c->H, c->L, c->Dv, s, 1);
    p->out = lp_make(dt, c->B, c->H, c->L, c->Dv, s, 0);
    p->dq = lp_make(dt, c->B, c->H, c->L, c->D, s, 0);
    p->dk = lp_make(dt, c->B, c->Hkv, c->S, c->D, s, 0);
    p->dv = lp_make(dt, c->B, c->Hkv, c->S, c->Dv, s, 0);
    p->lse = malloc(sizeof(float) * (size_t)(c->B * c->H * c->L + 1));
    int64_t ls[3] = {c->B, c->H, c->L};
    p->lse_t = mha_tensor_make(p->lse, 3, ls);
    p->m = mha_mask_default();
    p->m.causal = c->causal ? MHA_CAUSAL_TOP_LEFT : MHA_CAUSAL_NONE;
    p->pad = calloc((size_t)(c->B * c->S), 1);
    if (c->pad) { /* batch 0: the last third padded; batch B-1 (if any): every key */
        for (int64_t j = 2 * c->S / 3; j < c->S; j++) p->pad[j] = 1;
        if (c->B > 1)
            for (int64_t j = 0; j < c->S; j++) p->pad[(c->B - 1) * c->S + j] = 1;
        p->m.key_padding = p->pad;
    }
    snprintf(p->name, sizeof p->name, "%s B%lld H%lld Hkv%lld L%lld S%lld D%lld Dv%lld c%d p%d s%d",
             mha_dtype_name(dt), (long long)c->B, (long long)c->H, (long long)c->Hkv,
             (long long)c->L, (long long)c->S, (long long)c->D, (long long)c->Dv, c->causal, c->pad,
             c->strided);
}

static void prob_free(prob *p) {
    lp_tensor *all[8] = {&p->q, &p->k, &p->v, &p->out, &p->dout, &p->dq, &p->dk, &p->dv};
    for (int i = 0; i < 8; i++) lp_free(all[i]);
    free(p->lse), free(p->pad);
}

static int allowed(const prob *p, int64_t b, int64_t i, int64_t j) {
    if (p->c.causal && j > i) return 0;
    if (p->m.key_padding && p->pad[b * p->c.S + j]) return 0;
    return 1;
}

/* The float64 reference on the rounded inputs: out [B, H, L, Dv] and dq, dk, dv (contiguous). */
/* out, dq, dk, dv: the float64 reference; outabs, dqa, dka, dva: the sums of the absolute
 * values of each element's products (sum_j P_ij |v_j|, sum_j |dS_ij| |k_j|, ...): the scale of
 * the error a bf16 rounding of P or dS in those products may add. rounded_out: Drow from the
 * forward's rounded out, as the bf16 kernels read it (else from the exact out, as the float32
 * backward on converted inputs recomputes it). */
static void reference(const prob *p, double *out, double *outabs, double *dq, double *dk,
                      double *dv, double *dqa, double *dka, double *dva, int rounded_out) {
    const dcase *c = &p->c;
    const int64_t G = c->H / c->Hkv;
    const double scale = 1.0 / sqrt((double)c->D);
    double *P = malloc(sizeof(double) * (size_t)c->S), *dP = malloc(sizeof(double) * (size_t)c->S);
    memset(dk, 0, sizeof(double) * (size_t)p->k.n);
    memset(dv, 0, sizeof(double) * (size_t)p->v.n);
    memset(dqa, 0, sizeof(double) * (size_t)p->q.n);
    memset(dka, 0, sizeof(double) * (size_t)p->k.n);
    memset(dva, 0, sizeof(double) * (size_t)p->v.n);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->H; h++)
            for (int64_t i = 0; i < c->L; i++) {
                const int64_t g = h / G;
                const double *q = p->q.val + ((b * c->H + h) * c->L + i) * c->D;
                const double *go = p->dout.val + ((b * c->H + h) * c->L + i) * c->Dv;
                double *o = out + ((b * c->H + h) * c->L + i) * c->Dv;
                double *oa = outabs + ((b * c->H + h) * c->L + i) * c->Dv;
                double *dqi = dq + ((b * c->H + h) * c->L + i) * c->D;
                double mx = -INFINITY, sum = 0, drow = 0;
                for (int64_t j = 0; j < c->S; j++) {
                    P[j] = -INFINITY;
                    if (!allowed(p, b, i, j)) continue;
                    const double *k = p->k.val + ((b * c->Hkv + g) * c->S + j) * c->D;
                    double s = 0;
                    for (int64_t x = 0; x < c->D; x++) s += q[x] * k[x];
                    P[j] = s * scale;
                    if (P[j] > mx) mx = P[j];
                }
                for (int64_t j = 0; j < c->S; j++)
                    sum += P[j] = mx == -INFINITY ? 0 : exp(P[j] - mx);
                for (int64_t x = 0; x < c->Dv; x++) o[x] = 0, oa[x] = 0;
                for (int64_t x = 0; x < c->D; x++) dqi[x] = 0;
                if (sum == 0) continue; /* fully masked: out 0, no gradient */
                for (int64_t j = 0; j < c->S; j++) {
                    P[j] /= sum;
                    const double *v = p->v.val + ((b * c->Hkv + g) * c->S + j) * c->Dv;
                    dP[j] = 0;
                    for (int64_t x = 0; x < c->Dv; x++) {
                        o[x] += P[j] * v[x], dP[j] += go[x] * v[x];
                        oa[x] += P[j] * fabs(v[x]);
                    }
                }
                /* Drow = dout . out: the forward's rounded out with the bf16 kernels (read as
                 * the backward receives it), else out exact (recomputed in float32) */
                for (int64_t x = 0; x < c->Dv; x++)
                    drow += go[x] * (rounded_out ? lp_at(&p->out, b, h, i, x) : o[x]);
                for (int64_t j = 0; j < c->S; j++) {
                    if (P[j] == 0) continue;
                    const double ds = P[j] * (dP[j] - drow) * scale;
                    const int64_t kr = ((b * c->Hkv + g) * c->S + j);
                    const double *k = p->k.val + kr * c->D;
                    for (int64_t x = 0; x < c->D; x++)
                        dqi[x] += ds * k[x], dk[kr * c->D + x] += ds * q[x];
                    for (int64_t x = 0; x < c->Dv; x++) dv[kr * c->Dv + x] += P[j] * go[x];
                    double *dqai = dqa + ((b * c->H + h) * c->L + i) * c->D;
                    for (int64_t x = 0; x < c->D; x++)
                        dqai[x] += fabs(ds * k[x]), dka[kr * c->D + x] += fabs(ds * q[x]);
                    for (int64_t x = 0; x < c->Dv; x++) dva[kr * c->Dv + x] += fabs(P[j] * go[x]);
                }
            }
    free(P), free(dP);
}

/* Every element of a within the output's rounding of want (+ float32 accumulation). */
static int close_to(const char *what, const prob *p, const lp_tensor *a, const double *want,
                    const double *extra) {
    const double rel = p->dt == MHA_DTYPE_BF16 ? 0x1p-8 : 0x1p-11;
    double big = 0;
    for (int64_t i = 0; i < a->n; i++) big = fmax(big, fabs(want[i]));
    const mha_tensor *t = &a->t;
    int64_t bad = 0, i = 0;
    for (int64_t b = 0; b < t->shape[0]; b++)
        for (int64_t x = 0; x < t->shape[1]; x++)
            for (int64_t r = 0; r < t->shape[2]; r++)
                for (int64_t c = 0; c < t->shape[3]; c++, i++) {
                    const double got = lp_at(a, b, x, r, c);
                    const double tol = rel * fabs(want[i]) + 2e-5 * big + (extra ? extra[i] : 0);
                    if (!(fabs(got - want[i]) <= tol)) {
                        if (bad++ < 3)
                            FAILF("%s %s [%lld,%lld,%lld,%lld]: got %.9g, want %.9g\n", p->name,
                                  what, (long long)b, (long long)x, (long long)r, (long long)c, got,
                                  want[i]);
                    }
                }
    return bad == 0;
}

static mha_status run_fwd(mha_ctx *ctx, prob *p) {
    return mha_attn_forward(ctx, NULL, &p->q.t, &p->k.t, &p->v.t, &p->m, &p->out.t, &p->lse_t,
                            NULL);
}
static mha_status run_bwd(mha_ctx *ctx, prob *p) {
    return mha_attn_backward(ctx, NULL, &p->q.t, &p->k.t, &p->v.t, &p->m, &p->out.t, &p->lse_t,
                             &p->dout.t, &p->dq.t, &p->dk.t, &p->dv.t);
}

/* Float32 copies of p's q, k, v (their exact values) in f[0..2], t[0..2], and a float32 out
 * of p's shape in f[3], t[3] (free each f[i]): the float32 call on the same inputs. */
static void f32_twin(const prob *p, float *f[4], mha_tensor t[4]) {
    const lp_tensor *in[3] = {&p->q, &p->k, &p->v};
    for (int i = 0; i < 3; i++) {
        f[i] = malloc(sizeof(float) * (size_t)(in[i]->n + 1));
        for (int64_t e = 0; e < in[i]->n; e++) f[i][e] = (float)in[i]->val[e];
        t[i] = mha_tensor_make(f[i], 4, in[i]->t.shape);
    }
    f[3] = malloc(sizeof(float) * (size_t)(p->out.n + 1));
    t[3] = mha_tensor_make(f[3], 4, p->out.t.shape);
}

/* The float32 call on the converted inputs: out and dq, dk, dv rounded, and lse, compared
 * bitwise with the low-precision call's (fwd_exact 0: dq, dk and dv only). */
static void check_exact_f32(mha_ctx *ctx, prob *p, int fwd_exact) {
    const dcase *c = &p->c;
    lp_tensor *in[4] = {&p->q, &p->k, &p->v, &p->dout}, *res[4] = {&p->out, &p->dq, &p->dk, &p->dv};
    float *f[8];
    mha_tensor t[9];
    for (int i = 0; i < 4; i++) {
        f[i] = malloc(sizeof(float) * (size_t)(in[i]->n + 1));
        for (int64_t e = 0; e < in[i]->n; e++) f[i][e] = (float)in[i]->val[e];
        t[i] = mha_tensor_make(f[i], 4, in[i]->t.shape);
        f[4 + i] = malloc(sizeof(float) * (size_t)(res[i]->n + 1));
        t[4 + i] = mha_tensor_make(f[4 + i], 4, res[i]->t.shape);
    }
    float *lse = malloc(sizeof(float) * (size_t)(c->B * c->H * c->L + 1));
    t[8] = mha_tensor_make(lse, 3, p->lse_t.shape);
    ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &t[0], &t[1], &t[2], &p->m, &t[4], &t[8], NULL));
    /* the backward's out: the float32 forward's, unrounded (the low-precision backward
     * recomputes it so), and the low-precision forward's lse (with bf16 kernels not the
     * float32 forward's) */
    ASSERT_OK(ctx, mha_attn_backward(ctx, NULL, &t[0], &t[1], &t[2], &p->m, &t[4], &p->lse_t, &t[3],
                                     &t[5], &t[6], &t[7]));
    int64_t bad = 0;
    for (int64_t e = 0; e < c->B * c->H * c->L && fwd_exact; e++)
        bad += memcmp(&lse[e], &p->lse[e], 4) != 0;
    for (int i = fwd_exact ? 0 : 1; i < 4; i++) {
        const mha_tensor *v = &res[i]->t;
        int64_t e = 0;
        for (int64_t b = 0; b < v->shape[0]; b++)
            for (int64_t x = 0; x < v->shape[1]; x++)
                for (int64_t r = 0; r < v->shape[2]; r++)
                    for (int64_t cc = 0; cc < v->shape[3]; cc++, e++) {
                        uint16_t want = to_bits(p->dt, round_to(p->dt, f[4 + i][e]));
                        uint16_t got =
                            res[i]
                                ->mem[b * v->stride[0] + x * v->stride[1] + r * v->stride[2] + cc];
                        if (got != want && bad++ < 3)
                            FAILF("%s: tensor %d elem %lld: got %04x, want %04x\n", p->name, i,
                                  (long long)e, got, want);
                    }
    }
    ASSERT_EQ(bad, 0);
    for (int i = 0; i < 8; i++) free(f[i]);
    free(lse);
}

TEST(forward_backward_vs_float64) {
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    mha_ctx_set_threads(ctx, 2);
    FOR_EACH_ISA(ctx) {
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
            for (int d = 0; d < 2; d++) {
                prob p;
                prob_make(&p, &cases[ci], d ? MHA_DTYPE_F16 : MHA_DTYPE_BF16, ci * 7 + (uint64_t)d);
                double *out = calloc((size_t)p.out.n + 1, 8), *dq = calloc((size_t)p.dq.n + 1, 8);
                double *dk = calloc((size_t)p.dk.n + 1, 8), *dv = calloc((size_t)p.dv.n + 1, 8);
                double *oa = calloc((size_t)p.out.n + 1, 8), *dqa = calloc((size_t)p.dq.n + 1, 8);
                double *dka = calloc((size_t)p.dk.n + 1, 8), *dva = calloc((size_t)p.dv.n + 1, 8);
                /* bf16 on vdpbf16ps: P (and in the backward dS) rounded to bf16 as operands */
                const int bfk = !d && mha__ctx_kernels(ctx)->attn_fwd_bf16;
                const int bbk = !d && mha__ctx_kernels(ctx)->attn_scores_bf16;
                ASSERT_OK(ctx, run_fwd(ctx, &p));
                /* after the forward: its rounded out */
                reference(&p, out, oa, dq, dk, dv, dqa, dka, dva, bbk);
                for (int64_t e = 0; e < p.out.n; e++) oa[e] *= bfk ? 0x1p-8 : 0;
                for (int64_t e = 0; e < p.dq.n; e++) dqa[e] *= bbk ? 0x1p-8 : 0;
                for (int64_t e = 0; e < p.dk.n; e++) dka[e] *= bbk ? 0x1p-8 : 0;
                for (int64_t e = 0; e < p.dv.n; e++) dva[e] *= bbk ? 0x1p-8 : 0;
                ASSERT_OK(ctx, run_bwd(ctx, &p));
                int ok = close_to("out", &p, &p.out, out, oa) &&
                         close_to("dq", &p, &p.dq, dq, dqa) && close_to("dk", &p, &p.dk, dk, dka) &&
                         close_to("dv", &p, &p.dv, dv, dva);
                if (!ok) printf("  (isa %s)\n", mha_isa_name(mha_ctx_isa(ctx)));
                if (!bbk) check_exact_f32(ctx, &p, !bfk);
                free(dqa), free(dka), free(dva);
                free(oa);
                if (p.c.pad && p.c.B > 1) /* the fully masked batch: lse -inf, out exactly 0 */
                    ASSERT_TRUE(isinf(p.lse[(p.c.B - 1) * p.c.H * p.c.L]) &&
                                p.out.mem[p.out.t.stride[0] * (p.c.B - 1)] == 0);
                free(out), free(dq), free(dk), free(dv);
                prob_free(&p);
            }
    }
    mha_ctx_free(ctx);
}

/* The bf16 forward with every option (softcap, ALiBi, a window with causal, dropout, key
 * padding, GQA) against the float32 forward on the converted inputs (itself checked against
 * float64 in test_attn_mods): within the bf16 rounding of the output and of the probabilities
 * (|v| < 1: 2^-8 (|out| + 1)), on every ISA (bf16 kernels where the table has them). */
TEST(bf16_options_vs_float32) {
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    mha_ctx_set_threads(ctx, 2);
    FOR_EACH_ISA(ctx) {
        for (int drop = 0; drop < 2; drop++) {
            prob p;
            prob_make(&p, &cases[1], MHA_DTYPE_BF16, 40 + (uint64_t)drop);
            const dcase *c = &p.c;
            float slopes[4] = {0.5f, 0.25f, 0.125f, 1.0f};
            p.m.alibi_slopes = slopes;
            p.m.window = 1, p.m.window_left = 8, p.m.window_right = 0;
            mha_attn_params ap = mha_attn_params_default();
            ap.softcap = 2.0f, ap.dropout_p = drop ? 0.25f : 0, ap.seed = 7;
            ASSERT_OK(ctx, mha_attn_forward(ctx, &ap, &p.q.t, &p.k.t, &p.v.t, &p.m, &p.out.t,
                                            &p.lse_t, NULL));
            float *f[4];
            mha_tensor t[4];
            f32_twin(&p, f, t);
            ASSERT_OK(ctx,
                      mha_attn_forward(ctx, &ap, &t[0], &t[1], &t[2], &p.m, &t[3], NULL, NULL));
            int64_t e = 0, bad = 0;
            double worst = 0;
            for (int64_t b = 0; b < c->B; b++)
                for (int64_t h = 0; h < c->H; h++)
                    for (int64_t i = 0; i < c->L; i++)
                        for (int64_t x = 0; x < c->Dv; x++, e++) {
                            double got = lp_at(&p.out, b, h, i, x), want = f[3][e];
                            double err = fabs(got - want) / (0x1p-8 * (fabs(want) + 1));
                            worst = fmax(worst, err);
                            bad += !(err <= 1);
                        }
            if (bad)
                FAILF("%s drop %d isa %s: %lld elements off, worst %.2f x the bound\n", p.name,
                      drop, mha_isa_name(mha_ctx_isa(ctx)), (long long)bad, worst);
            for (int i = 0; i < 4; i++) free(f[i]);
            prob_free(&p);
        }
    }
    mha_ctx_free(ctx);
}

/* Found by a randomized sweep: in the bf16 backward (vdpbf16ps kernels), a key block that no
 * row of an odd-sized query tile sees (key_lengths, bottom-right causality) still ran on row
 * br - 1 (rs rounded down to a row pair before the test), reading W and dS where that row's
 * block had not computed them: the keys past key_lengths got dk, dv from whatever the
 * workspace held (up to 1e30) instead of 0, and differed between thread counts. The first
 * call leaves probabilities in the workspace; each masked key's dk, dv must then be 0. */
TEST(masked_key_block_of_odd_rows_bf16) {
    static const dcase odd[] = {{1, 1, 1, 1, 33, 3, 3, 0, 0, 0}, {1, 1, 1, 21, 35, 3, 3, 0, 0, 0}};
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    mha_ctx_set_threads(ctx, 1);
    FOR_EACH_ISA(ctx) {
        for (size_t ci = 0; ci < sizeof odd / sizeof odd[0]; ci++) {
            prob p;
            prob_make(&p, &odd[ci], MHA_DTYPE_BF16, 5 + ci);
            ASSERT_OK(ctx, run_fwd(ctx, &p));
            ASSERT_OK(ctx, run_bwd(ctx, &p));
            const int32_t len = ci ? 20 : 1;
            p.m.key_lengths = &len;
            p.m.causal = MHA_CAUSAL_BOTTOM_RIGHT;
            ASSERT_OK(ctx, run_fwd(ctx, &p));
            ASSERT_OK(ctx, run_bwd(ctx, &p));
            for (int64_t j = len; j < p.c.S; j++)
                for (int64_t x = 0; x < p.c.D; x++)
                    if (lp_at(&p.dk, 0, 0, j, x) != 0 || lp_at(&p.dv, 0, 0, j, x) != 0) {
                        FAILF("%s isa %s: key %lld (past key_lengths %d): dk %g dv %g, expected "
                              "0",
                              p.name, mha_isa_name(mha_ctx_isa(ctx)), (long long)j, len,
                              lp_at(&p.dk, 0, 0, j, x), lp_at(&p.dv, 0, 0, j, x));
                        prob_free(&p);
                        mha_ctx_free(ctx);
                        return;
                    }
            prob_free(&p);
        }
    }
    mha_ctx_free(ctx);
}

TEST(threads_bitwise) {
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    for (int d = 0; d < 2; d++) {
        prob a, b;
        const mha_dtype dt = d ? MHA_DTYPE_F16 : MHA_DTYPE_BF16;
        prob_make(&a, &cases[4], dt, 99), prob_make(&b, &cases[4], dt, 99);
        mha_ctx_set_threads(ctx, 1);
        ASSERT_OK(ctx, run_fwd(ctx, &a));
        ASSERT_OK(ctx, run_bwd(ctx, &a));
        mha_ctx_set_threads(ctx, 2);
        ASSERT_OK(ctx, run_fwd(ctx, &b));
        ASSERT_OK(ctx, run_bwd(ctx, &b));
        ASSERT_EQ(memcmp(a.out.mem, b.out.mem, 2 * (size_t)a.out.n), 0);
        ASSERT_EQ(memcmp(a.dq.mem, b.dq.mem, 2 * (size_t)a.dq.n), 0);
        ASSERT_EQ(memcmp(a.dk.mem, b.dk.mem, 2 * (size_t)a.dk.n), 0);
        ASSERT_EQ(memcmp(a.dv.mem, b.dv.mem, 2 * (size_t)a.dv.n), 0);
        prob_free(&a), prob_free(&b);
    }
    mha_ctx_free(ctx);
}

/* A call asking for the weights. Without bf16 kernels (f16 always) it runs the float32 kernels
 * on float32 copies: its out is the float32 call's on the exact values rounded once, and its
 * weights are that call's, bit for bit. A bf16 call on a table with bf16 kernels runs them for
 * the weights too: its out is bit for bit the same call's without the weights (asking for them
 * changes nothing), each weights row sums to 1 (0 for a fully masked row), and the weights are
 * the float32 call's within 1e-4 relative (their scores are the same products summed in
 * another order, pairs by vdpbf16ps, and their exp the bf16 kernels', relative error below
 * 8e-6: a wrong key, head, scale or mask is off by far more). */
TEST(weights_calls) {
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    FOR_EACH_ISA(ctx) {
        for (int d = 0; d < 2; d++)
            for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
                const dcase *c = &cases[ci];
                prob b;
                const mha_dtype dt = d ? MHA_DTYPE_F16 : MHA_DTYPE_BF16;
                const int bfk = !d && mha__ctx_kernels(ctx)->attn_fwd_bf16;
                if (!bfk && ci % 2) continue; /* the float32 path: every other case is enough */
                prob_make(&b, c, dt, 5 + ci);
                const char *isa = mha_isa_name(mha_ctx_isa(ctx));
                const int64_t nw = c->B * c->H * c->L * c->S;
                float *w = malloc(sizeof(float) * (size_t)(nw + 1));
                float *w32 = malloc(sizeof(float) * (size_t)(nw + 1));
                int64_t sw[4] = {c->B, c->H, c->L, c->S};
                mha_tensor tw = mha_tensor_make(w, 4, sw), tw32 = mha_tensor_make(w32, 4, sw);
                ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &b.q.t, &b.k.t, &b.v.t, &b.m, &b.out.t,
                                                &b.lse_t, &tw));
                float *f[4];
                mha_tensor t[4];
                f32_twin(&b, f, t);
                ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &t[0], &t[1], &t[2], &b.m, &t[3], NULL,
                                                &tw32));
                if (bfk) {
                    uint16_t *o = malloc(sizeof(uint16_t) * (size_t)b.out.n);
                    memcpy(o, b.out.mem, sizeof(uint16_t) * (size_t)b.out.n);
                    ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &b.q.t, &b.k.t, &b.v.t, &b.m,
                                                    &b.out.t, NULL, NULL));
                    if (memcmp(o, b.out.mem, sizeof(uint16_t) * (size_t)b.out.n))
                        FAILF("%s (%s): out differs from the call's without the weights", b.name,
                              isa);
                    free(o);
                    int64_t far = 0, badsum = 0;
                    for (int64_t r = 0; r < c->B * c->H * c->L; r++) {
                        double sum = 0, sum32 = 0;
                        for (int64_t j = 0; j < c->S; j++) {
                            const double x = w[r * c->S + j], y = w32[r * c->S + j];
                            far += !(fabs(x - y) <= 1e-4 * fabs(y) + 1e-30);
                            sum += x, sum32 += y;
                        }
                        badsum += !(fabs(sum - sum32) <= 1e-5);
                    }
                    if (far || badsum)
                        FAILF("%s (%s): %lld weights off the float32 call's by more than 1e-4 "
                              "relative, %lld row sums",
                              b.name, isa, (long long)far, (long long)badsum);
                } else {
                    if (memcmp(w, w32, sizeof(float) * (size_t)nw))
                        FAILF("%s (%s): weights differ from the float32 call's", b.name, isa);
                    int64_t e = 0, bad = 0;
                    for (int64_t x0 = 0; x0 < c->B; x0++)
                        for (int64_t x1 = 0; x1 < c->H; x1++)
                            for (int64_t x2 = 0; x2 < c->L; x2++)
                                for (int64_t x3 = 0; x3 < c->Dv; x3++, e++)
                                    bad += round_to(dt, f[3][e]) != lp_at(&b.out, x0, x1, x2, x3);
                    if (bad)
                        FAILF("%s (%s): %lld elements of out are not the float32 call's rounded",
                              b.name, isa, (long long)bad);
                }
                for (int i = 0; i < 4; i++) free(f[i]);
                free(w), free(w32);
                prob_free(&b);
            }
    }
    mha_ctx_free(ctx);
}

/* A call refused: the status, a message naming `needle`, and out / dq untouched. */
static void refused(mha_ctx *ctx, prob *p, int bwd, mha_status want, const char *needle) {
    mha_status st = bwd ? run_bwd(ctx, p) : run_fwd(ctx, p);
    ASSERT_EQ(st, want);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), needle);
    const lp_tensor *o = bwd ? &p->dq : &p->out;
    for (int64_t e = 0; e < o->n; e++)
        if (o->mem[e] != 0x7fc1) {
            FAILF("%s: output written at %lld\n", needle, (long long)e);
            break;
        }
}

TEST(bad_dtypes) {
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    prob p;
    prob_make(&p, &cases[1], MHA_DTYPE_BF16, 5);
    p.k.t.dtype = MHA_DTYPE_F16;
    refused(ctx, &p, 0, MHA_ERR_UNSUPPORTED,
            "mha_attn_forward: k.dtype: got float16, expected bfloat16");
    p.k.t.dtype = MHA_DTYPE_BF16;
    p.out.t.dtype = MHA_DTYPE_F32;
    refused(ctx, &p, 0, MHA_ERR_UNSUPPORTED, "out.dtype: got float32, expected bfloat16");
    p.out.t.dtype = MHA_DTYPE_BF16;
    p.lse_t.dtype = MHA_DTYPE_BF16;
    refused(ctx, &p, 0, MHA_ERR_UNSUPPORTED, "lse.dtype: got bfloat16, expected float32");
    p.lse_t.dtype = MHA_DTYPE_F32;
    p.dv.t.dtype = MHA_DTYPE_F16;
    refused(ctx, &p, 1, MHA_ERR_UNSUPPORTED, "mha_attn_backward: dv.dtype: got float16");
    p.dv.t.dtype = MHA_DTYPE_BF16;
    p.dout.t.dtype = MHA_DTYPE_F32;
    refused(ctx, &p, 1, MHA_ERR_UNSUPPORTED, "dout.dtype");
    p.dout.t.dtype = MHA_DTYPE_BF16;
    p.q.t.dtype = MHA_DTYPE_F64; /* set by hand: mha_tensor_typed refuses it */
    refused(ctx, &p, 0, MHA_ERR_UNSUPPORTED,
            "q.dtype: got float64, expected float32, bfloat16 or float16");
    int64_t sh[4] = {1, 1, 1, 1};
    mha_tensor bad = mha_tensor_typed(p.q.mem, MHA_DTYPE_I32, 4, sh, NULL);
    ASSERT_EQ(bad.ndim, -1);
    p.q.t = bad;
    refused(ctx, &p, 0, MHA_ERR_UNSUPPORTED, "q.dtype: got int32");
    prob_free(&p);
    mha_ctx_free(ctx);
}

TEST(allocation_failure_writes_nothing) {
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    for (int bwd = 0; bwd < 2; bwd++) {
        prob p;
        prob_make(&p, &cases[1], MHA_DTYPE_F16, 8);
        if (bwd) {
            ASSERT_OK(ctx, run_fwd(ctx, &p));
            for (int64_t e = 0; e < p.dq.n; e++) p.dq.mem[e] = 0x7fc1;
        }
        int failed = 0;
        for (long n = 0; n < 50; n++) {
            mha__fault_after(n);
            mha_status st = bwd ? run_bwd(ctx, &p) : run_fwd(ctx, &p);
            mha__fault_after(-1);
            if (st == MHA_OK) break;
            failed++;
            ASSERT_EQ(st, MHA_ERR_NOMEM);
            const lp_tensor *o = bwd ? &p.dq : &p.out;
            for (int64_t e = 0; e < o->n; e++)
                if (o->mem[e] != 0x7fc1) {
                    FAILF("fault %ld: output written at %lld\n", n, (long long)e);
                    break;
                }
        }
        ASSERT_TRUE(failed >= 2); /* the float32 copies, then the core's workspace */
        prob_free(&p);
    }
    mha_ctx_free(ctx);
}

TEST(float32_only_calls_refuse_bf16) {
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    mha_config cfg = mha_config_default(8, 2);
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    uint16_t xb[2 * 3 * 8] = {0};
    float yb[2 * 3 * 8];
    int64_t sh[3] = {2, 3, 8};
    mha_tensor x = mha_tensor_typed(xb, MHA_DTYPE_BF16, 3, sh, NULL),
               y = mha_tensor_make(yb, 3, sh);
    mha_forward_opts o = mha_forward_opts_default();
    ASSERT_EQ(mha_module_forward(ctx, m, &o, &x, &x, &x, NULL, &y, NULL), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "dtype: got bfloat16, expected float32");
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* mha_tensor_convert: every pair of dtypes, strided views, exact up and rounded down (checked
 * against this file's own rounding in double), NaN and infinities, and bad arguments. */
TEST(tensor_convert) {
    mha_ctx *ctx;
    mha_ctx_create(&ctx);
    const mha_dtype dts[3] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};
    float src[3 * 7], back[3 * 7];
    for (int i = 0; i < 21; i++) src[i] = frand() * (i % 3 == 0 ? 70000.0f : 3.0f);
    src[4] = NAN, src[5] = INFINITY, src[6] = -0.0f, src[7] = 1e-6f;
    int64_t sh[2] = {3, 5}, st[2] = {7, 1}; /* 3 rows of 5 in rows of 7 */
    for (int a = 0; a < 3; a++) {
        uint16_t mid[3 * 7];
        memset(mid, 0xab, sizeof mid);
        mha_tensor s = mha_tensor_strided(src, 2, sh, st);
        mha_tensor d = mha_tensor_typed(a ? (void *)mid : (void *)back, dts[a], 2, sh, st);
        ASSERT_OK(ctx, mha_tensor_convert(ctx, &s, &d));
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 7; c++) {
                const int i = r * 7 + c;
                if (!a || c >= 5) continue;
                ASSERT_EQ(mid[i] == 0xabab, c >= 5); /* the gaps untouched */
                const double x = src[i], got = from_bits(dts[a], mid[i]);
                const double want = dts[a] == MHA_DTYPE_F16 && fabs(x) >= 65520
                                        ? copysign(INFINITY, x)
                                        : round_to(dts[a], x);
                if (isnan(x) ? !isnan(got) : got != want)
                    FAILF("%s: %.9g -> %.9g, want %.9g\n", mha_dtype_name(dts[a]), x, got, want);
            }
        if (!a) continue;
        mha_tensor b = mha_tensor_strided(back, 2, sh, st); /* and back up: exact */
        ASSERT_OK(ctx, mha_tensor_convert(ctx, &d, &b));
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 5; c++) {
                const double got = back[r * 7 + c], want = from_bits(dts[a], mid[r * 7 + c]);
                ASSERT_TRUE(isnan(want) ? isnan(got) : got == want);
            }
    }
    /* bad arguments, dst untouched */
    uint16_t out[15];
    memset(out, 0x11, sizeof out);
    int64_t sh2[2] = {3, 4};
    mha_tensor s = mha_tensor_strided(src, 2, sh, st),
               d = mha_tensor_typed(out, MHA_DTYPE_BF16, 2, sh2, NULL);
    ASSERT_EQ(mha_tensor_convert(ctx, &s, &d), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_tensor_convert: dst.shape[1]: got 4, expected 5");
    d = mha_tensor_typed(out, MHA_DTYPE_BF16, 2, sh, NULL);
    d.dtype = MHA_DTYPE_I32;
    ASSERT_EQ(mha_tensor_convert(ctx, &s, &d), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "dst.dtype: got int32, expected float32, bfloat16 or float16");
    ASSERT_EQ(mha_tensor_convert(ctx, NULL, &d), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "src: got NULL");
    mha_tensor o = mha_tensor_typed((uint16_t *)src + 2, MHA_DTYPE_BF16, 2, sh, st);
    ASSERT_EQ(mha_tensor_convert(ctx, &s, &o), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "dst overlaps src");
    d = mha_tensor_typed(out, MHA_DTYPE_BF16, 2, sh, NULL);
    mha__fault_after(0); /* its row buffer */
    ASSERT_EQ(mha_tensor_convert(ctx, &s, &d), MHA_ERR_NOMEM);
    mha__fault_after(-1);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_tensor_convert: out of memory");
    for (int i = 0; i < 15; i++) ASSERT_EQ(out[i], 0x1111);
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(forward_backward_vs_float64);
    RUN(bf16_options_vs_float32);
    RUN(threads_bitwise);
    RUN(masked_key_block_of_odd_rows_bf16);
    RUN(weights_calls);
    RUN(bad_dtypes);
    RUN(allocation_failure_writes_nothing);
    RUN(float32_only_calls_refuse_bf16);
    RUN(tensor_convert);
    return harness_report();
}
