/* test_large_scores.c - fault 7: scores whose raw product |q.k| exceeds FLT_MAX while
 * |q.k| * scale does not (E = 64, H = 1, inputs ~1e19). PyTorch's nn.MultiheadAttention scales
 * q before the product (q * scale, then bmm) and stays finite; mha must too, in the core and
 * in the module, and match a float64 reference. */
#include "harness.h"

#include <float.h>

#define TEST_RNG_SEED 0x9e3779b97f4a7c15ull
#include "rng.h"

/* One head, no mask, contiguous doubles: s = (scale q) k^T, P = softmax(s), out = P v,
 * lse = logsumexp(s); returns max |q.k| (the raw product). P [L, S] may be NULL. */
static double ref_head(int64_t L, int64_t S, int64_t D, double scale, const double *q,
                       const double *k, const double *v, double *out, double *lse, double *P) {
    double raw = 0, *s = malloc(sizeof(double) * (size_t)S);
    for (int64_t i = 0; i < L; i++) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < S; j++) {
            double a = 0;
            for (int64_t d = 0; d < D; d++) a += q[i * D + d] * k[j * D + d];
            raw = fabs(a) > raw ? fabs(a) : raw;
            s[j] = a * scale;
            mx = s[j] > mx ? s[j] : mx;
        }
        for (int64_t j = 0; j < S; j++) sum += exp(s[j] - mx);
        lse[i] = mx + log(sum);
        for (int64_t d = 0; d < D; d++) out[i * D + d] = 0;
        for (int64_t j = 0; j < S; j++) {
            double p = exp(s[j] - mx) / sum;
            if (P) P[i * S + j] = p;
            for (int64_t d = 0; d < D; d++) out[i * D + d] += p * v[j * D + d];
        }
    }
    free(s);
    return raw;
}

static int all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* The core, every ISA: out, lse and weights finite and equal to the float64 reference; the
 * backward's recomputed scores stay finite too (dv = weights^T dout against the reference). */
TEST(core_scores_beyond_float_max) {
    enum {
        L = 40,
        S = 50,
        D = 64,
        NQ = L * D,
        NK = S * D
    };
    const float a = 2.5e18f;
    static float q[NQ], k[NK], v[NK], o[NQ], lse[L], w[L * S], g[NQ], dq[NQ], dk[NK], dv[NK];
    static double qd[NQ], kd[NK], vd[NK], od[NQ], ld[L], wd[L * S], dvd[NK];
    for (int i = 0; i < NQ; i++) q[i] = a * frand(), g[i] = frand();
    for (int i = 0; i < NK; i++) k[i] = a * frand(), v[i] = frand();
    for (int d = 0; d < D; d++) q[d] = k[d] = d % 3 ? a : -a; /* q0 . k0 = 64 a^2 > FLT_MAX */
    for (int i = 0; i < NQ; i++) qd[i] = q[i];
    for (int i = 0; i < NK; i++) kd[i] = k[i], vd[i] = v[i];
    double raw = ref_head(L, S, D, 0.125, qd, kd, vd, od, ld, wd);
    ASSERT_TRUE(raw > FLT_MAX && raw * 0.125 < FLT_MAX); /* the case of the fault */
    for (int64_t j = 0; j < S; j++)
        for (int64_t d = 0; d < D; d++) {
            double acc = 0;
            for (int64_t i = 0; i < L; i++) acc += wd[i * S + j] * g[i * D + d];
            dvd[j * D + d] = acc;
        }
    int64_t sq[4] = {1, 1, L, D}, sk[4] = {1, 1, S, D}, sl[3] = {1, 1, L}, sw[4] = {1, 1, L, S};
    mha_tensor tq = mha_tensor_make(q, 4, sq), tk = mha_tensor_make(k, 4, sk);
    mha_tensor tv = mha_tensor_make(v, 4, sk), to = mha_tensor_make(o, 4, sq);
    mha_tensor tl = mha_tensor_make(lse, 3, sl), tw = mha_tensor_make(w, 4, sw);
    mha_tensor tg = mha_tensor_make(g, 4, sq), tdq = mha_tensor_make(dq, 4, sq);
    mha_tensor tdk = mha_tensor_make(dk, 4, sk), tdv = mha_tensor_make(dv, 4, sk);
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        printf("  %s\n", mha_isa_name(mha_ctx_isa(ctx)));
        ASSERT_OK(ctx, mha_attn_forward(ctx, NULL, &tq, &tk, &tv, NULL, &to, &tl, &tw));
        ASSERT_TRUE(all_finite(o, NQ) && all_finite(lse, L) && all_finite(w, L * S));
        ASSERT_NEAR_TENSOR("out", o, od, NQ, 1e-5, 1e-6);
        ASSERT_NEAR_TENSOR("lse", lse, ld, L, 1e-6, 0);
        ASSERT_NEAR_TENSOR("weights", w, wd, L * S, 1e-5, 1e-6);
        ASSERT_OK(ctx, mha_attn_backward(ctx, NULL, &tq, &tk, &tv, NULL, &to, &tl, &tg, &tdq, &tdk,
                                         &tdv));
        ASSERT_TRUE(all_finite(dq, NQ) && all_finite(dk, NK) && all_finite(dv, NK));
        ASSERT_NEAR_TENSOR("dv", dv, dvd, NK, 1e-5, 1e-6);
    }
    mha_ctx_free(ctx);
}

/* The module, E = 64, H = 1, inputs x 1e19 (the reproduction of the fault): y and the weights
 * finite and equal to a float64 forward from the module's own parameters; the backward finite. */
TEST(module_inputs_1e19) {
    enum {
        B = 2,
        L = 30,
        E = 64,
        N = B * L * E
    };
    static float x[N], y[N], w[B * L * L], dy[N], dx[N];
    static double qp[N], kp[N], vp[N], att[N], yd[N], wd[B * L * L], lsed[L];
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(E, 1);
    cfg.seed = 3;
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    mha_tensor win, bin, wout, bout;
    ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_weight", &win, NULL));
    ASSERT_OK(ctx, mha_module_param(ctx, m, "in_proj_bias", &bin, NULL));
    ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.weight", &wout, NULL));
    ASSERT_OK(ctx, mha_module_param(ctx, m, "out_proj.bias", &bout, NULL));
    for (int i = 0; i < N; i++) x[i] = 1e19f * frand(), dy[i] = frand();
    /* float64 forward: projections, one head per batch, out_proj */
    double raw = 0;
    for (int64_t r = 0; r < B * L; r++)
        for (int64_t e = 0; e < E; e++) {
            double aq = bin.data[e], ak = bin.data[E + e], av = bin.data[2 * E + e];
            for (int64_t f = 0; f < E; f++) {
                double xf = x[r * E + f];
                aq += xf * win.data[e * E + f], ak += xf * win.data[(E + e) * E + f];
                av += xf * win.data[(2 * E + e) * E + f];
            }
            qp[r * E + e] = aq, kp[r * E + e] = ak, vp[r * E + e] = av;
        }
    for (int64_t b = 0; b < B; b++) {
        double rb = ref_head(L, L, E, 0.125, qp + b * L * E, kp + b * L * E, vp + b * L * E,
                             att + b * L * E, lsed, wd + b * L * L);
        raw = rb > raw ? rb : raw;
    }
    for (int64_t r = 0; r < B * L; r++)
        for (int64_t e = 0; e < E; e++) {
            double acc = bout.data[e];
            for (int64_t f = 0; f < E; f++) acc += att[r * E + f] * wout.data[e * E + f];
            yd[r * E + e] = acc;
        }
    ASSERT_TRUE(raw > FLT_MAX && raw * 0.125 < FLT_MAX); /* the case of the fault */
    double ymax = 0;
    for (int i = 0; i < N; i++) ymax = fabs(yd[i]) > ymax ? fabs(yd[i]) : ymax;
    int64_t sx[3] = {B, L, E}, sw[3] = {B, L, L};
    mha_tensor tx = mha_tensor_make(x, 3, sx), ty = mha_tensor_make(y, 3, sx);
    mha_tensor tw = mha_tensor_make(w, 3, sw), tdy = mha_tensor_make(dy, 3, sx);
    mha_tensor tdx = mha_tensor_make(dx, 3, sx);
    mha_forward_opts fo = mha_forward_opts_default();
    FOR_EACH_ISA(ctx) {
        printf("  %s\n", mha_isa_name(mha_ctx_isa(ctx)));
        ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &ty, &tw));
        ASSERT_TRUE(all_finite(y, N) && all_finite(w, B * L * L));
        /* the float projections round q and k by ~1e-7 relative: a score moves by ~1e31, far
         * below the gaps between these scores, so the weights are the same one-hot rows */
        ASSERT_NEAR_TENSOR("y", y, yd, N, 1e-4, 1e-5 * ymax);
        ASSERT_NEAR_TENSOR("weights", w, wd, B * L * L, 1e-5, 1e-6);
        ASSERT_OK(ctx, mha_module_backward(ctx, m, &tdy, &tdx, NULL, NULL));
        ASSERT_TRUE(all_finite(dx, N));
    }
    mha_module_free(m);
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(core_scores_beyond_float_max);
    RUN(module_inputs_1e19);
    return harness_report();
}
