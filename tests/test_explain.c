/* test_explain.c - the arithmetic behind `mha explain` (tools/explain_math.c, compiled into this
 * test: it belongs to the CLI, not to the library): its float32 rounding bounds hold for what
 * float32 computes (mha_sgemm on every kernel path, a plain float32 softmax), the comparison
 * fails just beyond a bound, and the FlashAttention-2 tiles give the step-by-step output and
 * log-sum-exp. The walkthrough against PyTorch and the fused kernel: tests/test_cli_explain.py. */
#include "harness.h"

#include "../tools/explain_math.c"

/* Uniform in [-1, 1) from a seed (xorshift64*). */
static double rnd(uint64_t *s) {
    *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
    return (double)((*s * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0 * 2 - 1;
}

/* A matrix of rows x cols floats of varied magnitudes (2^-8 .. 2^8), and its ex_mat (e = 0:
 * exact inputs). */
static void random_input(uint64_t *s, int64_t rows, int64_t cols, float *f, ex_mat *m) {
    for (int64_t i = 0; i < rows * cols; i++) {
        f[i] = (float)(rnd(s) * ldexp(1, (int)(8 * rnd(s))));
        m->v[i] = f[i];
        m->e[i] = 0;
    }
}

static ex_mat mat(double *mem, int64_t rows, int64_t cols) {
    return (ex_mat){mem, mem + rows * cols, rows, cols, cols};
}

TEST(mm_bound_holds_for_sgemm_on_every_path) {
    static const int64_t Ks[] = {1, 5, 64, 301};
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    const int64_t M = 9, N = 7;
    uint64_t seed = 42;
    for (size_t t = 0; t < sizeof Ks / sizeof Ks[0]; t++) {
        const int64_t K = Ks[t];
        float *A = malloc((size_t)(M * K + N * K + M * N) * sizeof(float)), *B = A + M * K;
        float *C = B + N * K;
        double *mem = malloc((size_t)(2 * (M * K + N * K + M * N)) * sizeof(double));
        ASSERT_TRUE(A && mem);
        ex_mat a = mat(mem, M, K), b = mat(mem + 2 * M * K, N, K);
        ex_mat c = mat(mem + 2 * (M * K + N * K), M, N);
        random_input(&seed, M, K, A, &a);
        random_input(&seed, N, K, B, &b);
        for (int pass = 0; pass < 2; pass++) {
            const double alpha = pass ? 0.3710 : 1;
            ex_mm(c, alpha, a, 0, b, 1, 0); /* C = alpha A B^T */
            FOR_EACH_ISA(ctx) {
                ASSERT_OK(ctx, mha_sgemm(ctx, 0, 1, M, N, K, (float)alpha, A, K, B, K, 0, C, N));
                for (int64_t i = 0; i < M * N; i++)
                    if (!(fabs(C[i] - c.v[i]) <= c.e[i])) {
                        FAILF("K %lld alpha %g isa %s: C[%lld] = %.9g, exact %.17g, |diff| %.3g "
                              "> bound %.3g",
                              (long long)K, alpha, mha_isa_name(mha_ctx_isa(ctx)), (long long)i,
                              C[i], c.v[i], fabs(C[i] - c.v[i]), c.e[i]);
                        free(A), free(mem), mha_ctx_free(ctx);
                        return;
                    }
            }
        }
        free(A);
        free(mem);
    }
    mha_ctx_free(ctx);
}

TEST(softmax_bound_holds_for_float32) {
    enum {
        R = 6,
        S = 40
    };
    double mem[4 * R * S];
    ex_mat s = mat(mem, R, S), p = mat(mem + 2 * R * S, R, S);
    uint64_t seed = 7;
    float sf[R * S];
    for (int64_t i = 0; i < R * S; i++) {
        /* scores as float32 computed them: a value and its rounding */
        s.v[i] = 30 * rnd(&seed) * (i / S + 1) / R;
        sf[i] = (float)s.v[i];
        s.e[i] = fabs(sf[i] - s.v[i]);
    }
    s.v[3] = -INFINITY, sf[3] = -INFINITY, s.e[3] = 0; /* a masked key */
    for (int64_t j = 0; j < S; j++) s.v[S + j] = -INFINITY, sf[S + j] = -INFINITY, s.e[S + j] = 0;
    softmax_rows(s, p);
    for (int64_t i = 0; i < R; i++) {
        float mx = -INFINITY, sum = 0, pf[S];
        for (int64_t j = 0; j < S; j++) mx = sf[i * S + j] > mx ? sf[i * S + j] : mx;
        for (int64_t j = 0; j < S; j++) {
            pf[j] = mx == -INFINITY || sf[i * S + j] == -INFINITY ? 0 : expf(sf[i * S + j] - mx);
            sum += pf[j];
        }
        for (int64_t j = 0; j < S; j++) {
            const float got = sum > 0 ? pf[j] / sum : 0;
            const int64_t a = i * S + j;
            if (!(fabs(got - p.v[a]) <= p.e[a])) {
                FAILF("P[%lld, %lld] = %.9g, exact %.17g, bound %.3g", (long long)i, (long long)j,
                      got, p.v[a], p.e[a]);
                return;
            }
        }
    }
    ASSERT_TRUE(p.v[3] == 0 && p.e[3] == 0);
    for (int64_t j = 0; j < S; j++) ASSERT_TRUE(p.v[S + j] == 0); /* fully masked: 0 */
}

TEST(compare_fails_just_beyond_the_bound) {
    double mem[2 * 4 * 3];
    ex_mat m = mat(mem, 4, 3);
    float got[12];
    for (int i = 0; i < 12; i++) m.v[i] = 0.25 * i, m.e[i] = 1e-3, got[i] = (float)(m.v[i] + 9e-4);
    ex_cmp c;
    memset(&c, 0, sizeof c);
    ex_compare(&c, got, 3, m, "y", 2);
    ASSERT_TRUE(!c.failed && c.count == 12 && fabs(c.max_diff - 9e-4) < 1e-6);
    got[11] = (float)(m.v[11] + 1.2e-3);
    ex_compare(&c, got, 3, m, "y", 2);
    ASSERT_TRUE(c.failed);
    ASSERT_STR_CONTAINS(c.where, "y[1, 1, 2]");
    memset(&c, 0, sizeof c);
    got[11] = NAN; /* NaN against a number: a failure */
    ex_compare(&c, got, 3, m, "O", 0);
    ASSERT_TRUE(c.failed && isinf(c.max_diff));
    ASSERT_STR_CONTAINS(c.where, "O[3, 2]");
    memset(&c, 0, sizeof c);
    m.v[11] = NAN; /* the same NaN on both sides: the same propagation */
    ex_compare(&c, got, 3, m, "O", 0);
    ASSERT_TRUE(!c.failed);
    memset(&c, 0, sizeof c);
    m.v[11] = 1, m.e[11] = INFINITY, got[11] = 2; /* no finite bound: nothing holds */
    ex_compare(&c, got, 3, m, "O", 0);
    ASSERT_TRUE(c.failed);
}

/* Large score scales (--scale 1e3 .. 1e10): the softmax is one-hot and float32's output is
 * within a few ulps of the exact one. The bound must say so (not exceed float32's range, nor
 * the values' range), must hold for mha_attn_forward on every path, and a result off by twice
 * the bound must fail the comparison. */
TEST(large_scale_bound_is_tight_and_holds) {
    static const double scales[] = {1e3, 1e10};
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    for (size_t t = 0; t < sizeof scales / sizeof scales[0]; t++) {
        ex_run r;
        memset(&r, 0, sizeof r);
        r.B = 1, r.L = 5, r.S = 7, r.E = 8, r.H = 2, r.kdim = 8, r.vdim = 8, r.cross = 1;
        r.scale = scales[t];
        r.mask = mha_mask_default();
        ASSERT_TRUE(ex_run_alloc(&r, 0) == 0);
        uint64_t seed = 11;
        ex_mat *in[] = {&r.wq, &r.wk, &r.wv, &r.wo, &r.x, &r.xk, &r.xv};
        for (size_t k = 0; k < sizeof in / sizeof in[0]; k++)
            for (int64_t i = 0; i < in[k]->rows * in[k]->cols; i++) in[k]->v[i] = (float)rnd(&seed);
        ex_forward(&r);
        double vmax = 0, omax = 0, big = 0;
        for (int64_t i = 0; i < r.S * r.E; i++) vmax = fmax(vmax, fabs(r.v.v[i]));
        for (int64_t i = 0; i < r.L * r.E; i++) omax = fmax(omax, r.o.e[i]);
        /* a bound of a few ulps of the values, where e^(2 delta) - 1 overflowed (1e10) or
         * exceeded the values themselves (1e3: about 10 times them) */
        if (!(omax <= 1e-5 * vmax))
            FAILF("scale %g: O's bound %.3g, values up to %.3g", scales[t], omax, vmax);
        ASSERT_TRUE(ex_overflow(&r, &big) == NULL);
        float q[5 * 8], k[7 * 8], v[7 * 8], out[5 * 8];
        for (int64_t i = 0; i < 5 * 8; i++) q[i] = (float)r.q.v[i];
        for (int64_t i = 0; i < 7 * 8; i++) k[i] = (float)r.k.v[i], v[i] = (float)r.v.v[i];
        const int64_t qs[4] = {1, 2, 5, 4}, ks[4] = {1, 2, 7, 4}, qst[4] = {40, 4, 8, 1};
        const int64_t kst[4] = {56, 4, 8, 1}, ost[4] = {40, 4, 8, 1};
        mha_tensor tq = mha_tensor_strided(q, 4, qs, qst), tk = mha_tensor_strided(k, 4, ks, kst);
        mha_tensor tv = mha_tensor_strided(v, 4, ks, kst), to = mha_tensor_strided(out, 4, qs, ost);
        mha_attn_params p = mha_attn_params_default();
        p.scale = (float)r.scale;
        FOR_EACH_ISA(ctx) {
            ASSERT_OK(ctx, mha_attn_forward(ctx, &p, &tq, &tk, &tv, &r.mask, &to, NULL, NULL));
            ex_cmp c;
            memset(&c, 0, sizeof c);
            ex_compare(&c, out, 8, r.o, "O", 0);
            if (c.failed)
                FAILF("scale %g isa %s: %s = %.9g against %.17g, bound %.3g", scales[t],
                      mha_isa_name(mha_ctx_isa(ctx)), c.where, c.got, c.want, c.bound);
            out[13] = (float)(r.o.v[13] + 2 * r.o.e[13] + 1e-6 * fabs(r.o.v[13]));
            memset(&c, 0, sizeof c);
            ex_compare(&c, out, 8, r.o, "O", 0);
            ASSERT_TRUE(c.failed);
            ASSERT_STR_CONTAINS(c.where, "O[1, 5]");
        }
        ex_run_free(&r);
    }
    mha_ctx_free(ctx);
}

typedef struct {
    int visits, last, skipped;
} visit_count;

static void count_visit(void *arg, const ex_tile *t) {
    visit_count *v = arg;
    v->visits++;
    v->last += t->last;
    v->skipped += t->skipped;
}

TEST(tiles_give_the_steps_output_and_lse) {
    /* cross-attention, two batches, bottom-right causal + key padding + a float mask */
    ex_run r;
    memset(&r, 0, sizeof r);
    r.B = 2, r.L = 5, r.S = 7, r.E = 8, r.H = 2, r.kdim = 6, r.vdim = 3, r.cross = 1;
    r.scale = 0.5;
    uint8_t pad[2 * 7] = {0};
    pad[6] = pad[7 + 5] = 1;
    float fmask[2 * 2 * 5 * 7];
    uint64_t seed = 3;
    for (int i = 0; i < 2 * 2 * 5 * 7; i++) fmask[i] = (float)rnd(&seed);
    r.mask = mha_mask_default();
    r.mask.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    r.mask.key_padding = pad;
    r.mask.attn_float = fmask;
    r.mask.attn_batched = 1;
    ASSERT_TRUE(ex_run_alloc(&r, 0) == 0);
    ex_mat *in[] = {&r.wq, &r.wk, &r.wv, &r.wo, &r.bq, &r.bk, &r.bv, &r.bo, &r.x, &r.xk, &r.xv};
    for (size_t k = 0; k < sizeof in / sizeof in[0]; k++)
        for (int64_t i = 0; i < in[k]->rows * in[k]->cols; i++) in[k]->v[i] = 2 * rnd(&seed);
    ex_forward(&r);
    double o[5 * 4], lse[5];
    for (int64_t b = 0; b < r.B; b++)
        for (int64_t h = 0; h < r.H; h++) {
            visit_count vc = {0, 0, 0};
            ASSERT_TRUE(ex_tiles(&r, b, h, r.L, 2, 3, o, r.D, lse, count_visit, &vc) == 0);
            ASSERT_EQ(vc.visits, 3 * 3); /* ceil(5 / 2) blocks x ceil(7 / 3) tiles */
            ASSERT_EQ(vc.last, 3);
            /* key 6 (tile 2) is visible to row 4 only (j <= i + 2), and padded in batch 0 */
            ASSERT_EQ(vc.skipped, b == 0 ? 3 : 2);
            for (int64_t i = 0; i < r.L; i++) {
                const double *s = r.masked.v + ((b * r.H + h) * r.L + i) * r.S;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < r.S; j++) mx = s[j] > mx ? s[j] : mx;
                for (int64_t j = 0; j < r.S; j++) sum += s[j] == -INFINITY ? 0 : exp(s[j] - mx);
                if (fabs(lse[i] - (mx + log(sum))) > 1e-12) {
                    FAILF("lse[%lld] %.17g vs %.17g", (long long)i, lse[i], mx + log(sum));
                    return;
                }
                for (int64_t d = 0; d < r.D; d++) {
                    const double want = r.o.v[(b * r.L + i) * r.E + h * r.D + d];
                    if (fabs(o[i * r.D + d] - want) > 1e-12) {
                        FAILF("O[%lld, %lld, %lld, %lld] tiles %.17g steps %.17g", (long long)b,
                              (long long)h, (long long)i, (long long)d, o[i * r.D + d], want);
                        return;
                    }
                }
            }
        }
    /* a top-left causal mask: the tiles right of a block's diagonal are skipped */
    r.mask = mha_mask_default();
    r.mask.causal = MHA_CAUSAL_TOP_LEFT;
    r.S = r.L; /* the same keys' first L rows: a square problem */
    visit_count vc = {0, 0, 0};
    ASSERT_TRUE(ex_tiles(&r, 0, 0, r.L, 2, 2, o, r.D, NULL, count_visit, &vc) == 0);
    ASSERT_EQ(vc.visits, 9);
    ASSERT_EQ(vc.skipped, 3); /* rows 0-1: keys 2-3 and 4; rows 2-3: key 4 */
    ex_run_free(&r);
}

int main(void) {
    RUN(mm_bound_holds_for_sgemm_on_every_path);
    RUN(softmax_bound_holds_for_float32);
    RUN(compare_fails_just_beyond_the_bound);
    RUN(large_scale_bound_is_tight_and_holds);
    RUN(tiles_give_the_steps_output_and_lse);
    return harness_report();
}
