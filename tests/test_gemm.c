/* test_gemm.c - the threaded gemm (src/attn/gemm.c), its micro-kernels and packing, per ISA.
 *
 * The oracle is a float64 product of the same float inputs. Every kernel path this machine
 * supports runs every case (FOR_EACH_ISA): all ta/tb, odd shapes, K past KC, N past NC,
 * alpha/beta variants (beta 0 over NaN), padded leading dimensions; results must be bitwise
 * identical for 1, 2 and 3 threads; each micro-kernel is checked on every edge tile. */
#include "harness.h"
#include "attn/gemm.h"
#include "core/internal.h"
#include "kernels/kernels.h"

static uint32_t rng_state = 12345;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) * (1.0 / 8388608.0) - 1.0);
}

/* Logical A [M,K], B [K,N] stored as op() needs with padded leading dimensions. */
typedef struct {
    int64_t M, N, K, lda, ldb, ldc;
    int ta, tb;
    float *A, *B, *C;
    double *R;
} gcase;

static void case_free(gcase *g) { free(g->A), free(g->B), free(g->C), free(g->R); }

/* Fills A, B with random values, C with c0 (NAN for beta == 0) and R with the reference
 * alpha * A B + beta * C in float64. Pad columns of C hold 777 (checked unchanged). */
static int case_make(gcase *g, int ta, int tb, int64_t M, int64_t N, int64_t K, int pad,
                     float alpha, float beta) {
    g->M = M, g->N = N, g->K = K, g->ta = ta, g->tb = tb;
    g->lda = (ta ? M : K) + pad, g->ldb = (tb ? K : N) + pad, g->ldc = N + pad;
    g->A = malloc(sizeof(float) * (size_t)((ta ? K : M) * g->lda));
    g->B = malloc(sizeof(float) * (size_t)((tb ? N : K) * g->ldb));
    g->C = malloc(sizeof(float) * (size_t)(M * g->ldc));
    g->R = malloc(sizeof(double) * (size_t)(M * N));
    if (!g->A || !g->B || !g->C || !g->R) return 0;
    for (int64_t i = 0; i < (ta ? K : M) * g->lda; i++) g->A[i] = frand();
    for (int64_t i = 0; i < (tb ? N : K) * g->ldb; i++) g->B[i] = frand();
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < g->ldc; j++)
            g->C[i * g->ldc + j] = j >= N ? 777.0f : beta == 0.0f ? NAN : frand();
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t p = 0; p < K; p++) {
                double a = ta ? g->A[p * g->lda + i] : g->A[i * g->lda + p];
                double b = tb ? g->B[j * g->ldb + p] : g->B[p * g->ldb + j];
                s += a * b;
            }
            g->R[i * N + j] =
                alpha * s + (beta == 0.0f ? 0.0 : beta * (double)g->C[i * g->ldc + j]);
        }
    return 1;
}

/* Runs mha__gemm on a copy of C and compares; returns 1 when within tolerance. */
static int case_check(mha_ctx *ctx, const gcase *g, float alpha, float beta, float *out) {
    memcpy(out, g->C, sizeof(float) * (size_t)(g->M * g->ldc));
    mha_status st = mha__gemm(ctx, g->ta, g->tb, g->M, g->N, g->K, alpha, g->A, g->lda, g->B,
                              g->ldb, beta, out, g->ldc);
    if (st != MHA_OK) {
        FAILF("mha__gemm: %s: %s", mha_status_str(st), mha_ctx_errmsg(ctx));
        return 0;
    }
    float *packed = malloc(sizeof(float) * (size_t)(g->M * g->N + 1));
    for (int64_t i = 0; i < g->M; i++) {
        memcpy(packed + i * g->N, out + i * g->ldc, sizeof(float) * (size_t)g->N);
        for (int64_t j = g->N; j < g->ldc; j++)
            if (out[i * g->ldc + j] != 777.0f) {
                FAILF("C[%lld][%lld] past N was written", (long long)i, (long long)j);
                free(packed);
                return 0;
            }
    }
    char what[160];
    snprintf(what, sizeof what,
             "C (isa %s, ta %d, tb %d, M %lld, N %lld, K %lld, alpha %g, "
             "beta %g)",
             mha_isa_name(mha_ctx_isa(ctx)), g->ta, g->tb, (long long)g->M, (long long)g->N,
             (long long)g->K, alpha, beta);
    /* float accumulation over K terms of size <= 1: error grows ~K * eps */
    double atol = 2e-6 * (double)(g->K + 1) * (fabs(alpha) > 1 ? fabs(alpha) : 1);
    int ok = harness_near(__FILE__, __LINE__, what, packed, g->R, g->M * g->N, 1e-5, atol);
    free(packed);
    return ok;
}

static const int64_t sizes[] = {1, 2, 7, 13, 31, 64, 100, 257};
enum {
    NS = sizeof sizes / sizeof sizes[0]
};

TEST(odd_shapes_every_layout) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (int mi = 0; mi < NS; mi++)
        for (int ni = 0; ni < NS; ni++)
            for (int ki = 0; ki < NS; ki++) {
                int64_t M = sizes[mi], N = sizes[ni], K = sizes[ki];
                int t = mi + ni + ki; /* vary layout, padding and alpha over the cases */
                int ta = t & 1, tb = (t >> 1) & 1, pad = (t % 3 == 0) ? 3 : 0;
                float alpha = (t % 4 == 0) ? 1.0f : 0.75f;
                gcase g;
                ASSERT_TRUE(case_make(&g, ta, tb, M, N, K, pad, alpha, 0.0f));
                float *out = malloc(sizeof(float) * (size_t)(M * g.ldc));
                int ok = 1;
                FOR_EACH_ISA(ctx) {
                    if (ok) ok = case_check(ctx, &g, alpha, 0.0f, out);
                }
                free(out);
                case_free(&g);
                if (!ok) goto done;
            }
done:
    mha_ctx_free(ctx);
}

TEST(every_transpose_alpha_beta_and_padding) {
    static const struct {
        int64_t M, N, K;
    } shapes[] = {{13, 31, 7},    {100, 64, 257}, {257, 100, 13},
                  {31, 257, 600}, {3, 4500, 20},  {70, 33, 1}};
    static const float ab[][2] = {{1, 0}, {0.5f, 0}, {1, 1}, {-2, 0.25f}, {0, 0.5f}};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (size_t v = 0; v < sizeof ab / sizeof ab[0]; v++)
                    for (int pad = 0; pad <= 5; pad += 5) {
                        gcase g;
                        float alpha = ab[v][0], beta = ab[v][1];
                        ASSERT_TRUE(case_make(&g, ta, tb, shapes[s].M, shapes[s].N, shapes[s].K,
                                              pad, alpha, beta));
                        float *out = malloc(sizeof(float) * (size_t)(g.M * g.ldc));
                        int ok = 1;
                        FOR_EACH_ISA(ctx) {
                            if (ok) ok = case_check(ctx, &g, alpha, beta, out);
                        }
                        free(out);
                        case_free(&g);
                        if (!ok) goto done;
                    }
done:
    mha_ctx_free(ctx);
}

TEST(k_zero_and_empty) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    float C[6] = {NAN, NAN, NAN, NAN, NAN, NAN}, A[1] = {1}, B[1] = {1};
    ASSERT_OK(ctx, mha__gemm(ctx, 0, 0, 2, 3, 0, 1.0f, A, 1, B, 3, 0.0f, C, 3));
    for (int i = 0; i < 6; i++) ASSERT_TRUE(C[i] == 0.0f);
    for (int i = 0; i < 6; i++) C[i] = (float)i;
    ASSERT_OK(ctx, mha__gemm(ctx, 0, 0, 2, 3, 0, 1.0f, A, 1, B, 3, 2.0f, C, 3));
    for (int i = 0; i < 6; i++) ASSERT_TRUE(C[i] == 2.0f * i);
    ASSERT_OK(ctx, mha__gemm(ctx, 0, 0, 0, 3, 5, 1.0f, A, 5, B, 3, 0.0f, C, 3));
    ASSERT_OK(ctx, mha__gemm(ctx, 0, 0, 2, 0, 5, 1.0f, A, 5, B, 0, 0.0f, C, 0));
    for (int i = 0; i < 6; i++) ASSERT_TRUE(C[i] == 2.0f * i);
    mha_ctx_free(ctx);
}

/* The same bits for 1, 2 and 3 threads, with rows split (large M) and columns split (small
 * M), K over several KC blocks, N over several NC blocks. */
TEST(bitwise_identical_for_any_thread_count) {
    static const struct {
        int64_t M, N, K;
        int ta, tb;
    } shapes[] = {{257, 300, 600, 0, 1},
                  {300, 257, 513, 1, 0},
                  {13, 1000, 300, 0, 0},
                  {5, 9000, 40, 1, 1},
                  {100, 96, 257, 0, 1}};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        gcase g;
        ASSERT_TRUE(case_make(&g, shapes[s].ta, shapes[s].tb, shapes[s].M, shapes[s].N, shapes[s].K,
                              1, 1.0f, 0.5f));
        size_t n = (size_t)(g.M * g.ldc);
        float *c1 = malloc(sizeof(float) * n), *cn = malloc(sizeof(float) * n);
        int ok = 1;
        FOR_EACH_ISA(ctx) {
            if (!ok) continue;
            ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 1));
            memcpy(c1, g.C, sizeof(float) * n);
            ASSERT_OK(ctx, mha__gemm(ctx, g.ta, g.tb, g.M, g.N, g.K, 1.0f, g.A, g.lda, g.B, g.ldb,
                                     0.5f, c1, g.ldc));
            for (int nt = 2; nt <= 3 && ok; nt++) {
                ASSERT_OK(ctx, mha_ctx_set_threads(ctx, nt));
                memcpy(cn, g.C, sizeof(float) * n);
                ASSERT_OK(ctx, mha__gemm(ctx, g.ta, g.tb, g.M, g.N, g.K, 1.0f, g.A, g.lda, g.B,
                                         g.ldb, 0.5f, cn, g.ldc));
                if (memcmp(c1, cn, sizeof(float) * n) != 0) {
                    FAILF("isa %s, %d threads, shape %lld x %lld x %lld: differs from 1 thread",
                          mha_isa_name(mha_ctx_isa(ctx)), nt, (long long)g.M, (long long)g.N,
                          (long long)g.K);
                    ok = 0;
                }
            }
            if (ok) ok = case_check(ctx, &g, 1.0f, 0.5f, cn);
        }
        free(c1), free(cn);
        case_free(&g);
        if (!ok) break;
    }
    mha_ctx_free(ctx);
}

/* Each table's micro-kernel on every edge tile (m in 1..MR, n in 1..NR), against float64 and
 * against the generic micro-kernel on the same data; beta 0 over NaN; nothing outside the
 * m x n tile written. */
TEST(micro_kernel_edge_tiles_vs_generic) {
    const mha_kernels *gen = mha__kernels_for(MHA_ISA_GENERIC);
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        const mha_kernels *kt = mha__kernels_for((mha_isa)isa);
        int mr = kt->gemm_mr, nr = kt->gemm_nr;
        ASSERT_TRUE(mr >= 1 && nr >= 1 && kt->gemm_kc >= 1 && kt->gemm_mc % mr == 0 &&
                    kt->gemm_nc % nr == 0);
        static const int64_t ks[] = {1, 5, 256};
        for (size_t ki = 0; ki < 3; ki++) {
            int64_t k = ks[ki];
            int64_t ldx = k + 2, ldc = nr + 3;
            /* logical a [mr, k] and bt [nr, k] (rows of op(B)^T) */
            float *a = malloc(sizeof(float) * (size_t)(mr * ldx));
            float *bt = malloc(sizeof(float) * (size_t)(nr * ldx));
            float *ap = mha__malloc(sizeof(float) * (size_t)(mr * k));
            float *bp = mha__malloc(sizeof(float) * (size_t)(nr * k));
            float *gap = mha__malloc(sizeof(float) * (size_t)((mr + 4) * k));
            float *gbp = mha__malloc(sizeof(float) * (size_t)((nr + 16) * k));
            float *c = malloc(sizeof(float) * (size_t)(mr * ldc));
            float *cg = malloc(sizeof(float) * (size_t)(mr * ldc));
            ASSERT_TRUE(a && bt && ap && bp && gap && gbp && c && cg);
            for (int64_t i = 0; i < mr * ldx; i++) a[i] = frand();
            for (int64_t i = 0; i < nr * ldx; i++) bt[i] = frand();
            int ok = 1;
            for (int m = 1; m <= mr && ok; m++)
                for (int n = 1; n <= nr && ok; n++)
                    for (int bi = 0; bi < 2 && ok; bi++) {
                        float alpha = 1.25f, beta = bi ? 0.5f : 0.0f;
                        /* pack only the m x k and n x k parts: the rest must be zero-padded */
                        kt->gemm_pack(a, ldx, 1, m, k, mr, ap);
                        kt->gemm_pack(bt, ldx, 1, n, k, nr, bp);
                        for (int64_t i = 0; i < mr * ldc; i++) c[i] = bi ? frand() : NAN;
                        memcpy(cg, c, sizeof(float) * (size_t)(mr * ldc));
                        double *want = malloc(sizeof(double) * (size_t)(mr * ldc));
                        for (int i = 0; i < mr; i++)
                            for (int j = 0; j < ldc; j++) {
                                double s = 0;
                                for (int64_t p = 0; p < k && i < m && j < n; p++)
                                    s += (double)a[i * ldx + p] * bt[j * ldx + p];
                                want[i * ldc + j] =
                                    (i < m && j < n)
                                        ? alpha * s +
                                              (beta == 0 ? 0.0 : beta * (double)c[i * ldc + j])
                                        : 0.0;
                            }
                        float *c0 = malloc(sizeof(float) * (size_t)(mr * ldc));
                        memcpy(c0, c, sizeof(float) * (size_t)(mr * ldc));
                        kt->gemm_ukr(k, ap, bp, alpha, beta, c, ldc, m, n);
                        /* the generic kernel on the same tile, in 4 x 16 pieces */
                        for (int i0 = 0; i0 < m; i0 += gen->gemm_mr)
                            for (int j0 = 0; j0 < n; j0 += gen->gemm_nr) {
                                int mm = m - i0 < gen->gemm_mr ? m - i0 : gen->gemm_mr;
                                int nn = n - j0 < gen->gemm_nr ? n - j0 : gen->gemm_nr;
                                gen->gemm_pack(a + i0 * ldx, ldx, 1, mm, k, gen->gemm_mr, gap);
                                gen->gemm_pack(bt + j0 * ldx, ldx, 1, nn, k, gen->gemm_nr, gbp);
                                gen->gemm_ukr(k, gap, gbp, alpha, beta, cg + i0 * ldc + j0, ldc, mm,
                                              nn);
                            }
                        /* outside the m x n tile: the same bits as before (NaN stays) */
                        for (int i = 0; i < mr && ok; i++)
                            for (int j = 0; j < ldc && ok; j++) {
                                size_t e = (size_t)(i * ldc + j);
                                if (i < m && j < n) continue;
                                if (memcmp(c + e, c0 + e, sizeof(float)) != 0 ||
                                    memcmp(cg + e, c0 + e, sizeof(float)) != 0) {
                                    FAILF("%s m %d n %d: wrote C[%d][%d] outside the tile",
                                          kt->gemm_ukr_name, m, n, i, j);
                                    ok = 0;
                                }
                                c[e] = cg[e] = 0.0f;
                            }
                        free(c0);
                        char what[128];
                        snprintf(what, sizeof what, "%s m %d n %d k %lld beta %g",
                                 kt->gemm_ukr_name, m, n, (long long)k, beta);
                        double atol = 2e-6 * (double)(k + 1);
                        if (ok)
                            ok = harness_near(__FILE__, __LINE__, what, c, want, mr * ldc, 1e-5,
                                              atol);
                        if (ok) {
                            double *wg = want;
                            for (int64_t i = 0; i < mr * ldc; i++) wg[i] = cg[i];
                            snprintf(what, sizeof what, "%s vs generic, m %d n %d k %lld",
                                     kt->gemm_ukr_name, m, n, (long long)k);
                            ok =
                                harness_near(__FILE__, __LINE__, what, c, wg, mr * ldc, 1e-5, atol);
                        }
                        free(want);
                    }
            free(a), free(bt), free(c), free(cg);
            mha__free(ap), mha__free(bp), mha__free(gap), mha__free(gbp);
            if (!ok) return;
        }
    }
}

/* Packing: the three layouts (copy, transpose, general), zero padding of the last panel. */
TEST(pack_layouts) {
    enum {
        ROWS = 45,
        K = 37,
        LD = 47
    }; /* full and partial 16 x 16 blocks, 3 panels of 14 */
    float X[ROWS * LD], Xt[K * LD];
    for (int i = 0; i < ROWS * LD; i++) X[i] = (float)(i + 1);
    for (int i = 0; i < ROWS; i++)
        for (int p = 0; p < K; p++) Xt[p * LD + i] = X[i * LD + p];
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        const mha_kernels *kt = mha__kernels_for((mha_isa)isa);
        static const int rs_[] = {4, 6, 14, 16, 32, 40};
        for (int ri = 0; ri < 6; ri++) {
            int r = rs_[ri], np = (ROWS + r - 1) / r;
            float *d = mha__malloc(sizeof(float) * (size_t)(np * r * K));
            ASSERT_TRUE(d != NULL);
            for (int layout = 0; layout < 3; layout++) {
                memset(d, 0xff, sizeof(float) * (size_t)(np * r * K));         /* NaN garbage */
                if (layout == 0) kt->gemm_pack(X, LD, 1, ROWS, K, r, d);       /* transpose */
                else if (layout == 1) kt->gemm_pack(Xt, 1, LD, ROWS, K, r, d); /* copy */
                else kt->gemm_pack(X, 2 * LD, 2, ROWS / 2, K / 2, r, d);       /* general */
                int rows = layout == 2 ? ROWS / 2 : ROWS, kk = layout == 2 ? K / 2 : K;
                int npl = (rows + r - 1) / r;
                for (int t = 0; t < npl; t++)
                    for (int p = 0; p < kk; p++)
                        for (int i = 0; i < r; i++) {
                            int row = t * r + i;
                            float want = row >= rows   ? 0.0f
                                         : layout == 2 ? X[row * 2 * LD + p * 2]
                                                       : X[row * LD + p];
                            float got = d[t * r * kk + p * r + i];
                            if (got != want) {
                                FAILF("%s r %d layout %d: panel %d [p %d][i %d]: got %g, "
                                      "expected %g",
                                      kt->gemm_pack_name, r, layout, t, p, i, got, want);
                                mha__free(d);
                                return;
                            }
                        }
            }
            mha__free(d);
        }
    }
}

TEST(nomem_leaves_c_unchanged) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    gcase g;
    ASSERT_TRUE(case_make(&g, 0, 1, 40, 50, 30, 0, 1.0f, 1.0f));
    float *out = malloc(sizeof(float) * (size_t)(g.M * g.ldc));
    memcpy(out, g.C, sizeof(float) * (size_t)(g.M * g.ldc));
    mha__fault_after(0);
    mha_status st =
        mha__gemm(ctx, 0, 1, g.M, g.N, g.K, 1.0f, g.A, g.lda, g.B, g.ldb, 1.0f, out, g.ldc);
    mha__fault_after(-1);
    int same = memcmp(out, g.C, sizeof(float) * (size_t)(g.M * g.ldc)) == 0;
    free(out);
    case_free(&g);
    ASSERT_EQ(st, MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_gemm: out of memory (");
    ASSERT_TRUE(same);
    mha_ctx_free(ctx);
}

/* mha__gemm_ex: a kept workspace gives the same bits and is reused (the second product
 * allocates nothing), grows for a bigger product, and on NOMEM keeps C and the workspace as
 * they were; a bias gives exactly a bias fill followed by a beta = 1 product, for every
 * ISA, thread count, edge shape and K (0, < KC, > KC). */
TEST(workspace_reuse_and_fused_bias) {
    static const struct {
        int64_t M, N, K;
        int ta, tb;
    } shapes[] = {{257, 300, 600, 0, 1},
                  {300, 257, 513, 1, 0},
                  {13, 1000, 300, 0, 0},
                  {7, 5, 3, 0, 1},
                  {100, 96, 0, 0, 1}};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        gcase g;
        ASSERT_TRUE(case_make(&g, shapes[s].ta, shapes[s].tb, shapes[s].M, shapes[s].N, shapes[s].K,
                              2, 1.0f, 0.0f));
        size_t n = (size_t)(g.M * g.ldc);
        float *want = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
        float *bias = malloc(sizeof(float) * (size_t)g.N);
        for (int64_t j = 0; j < g.N; j++) bias[j] = frand();
        int ok = 1;
        FOR_EACH_ISA(ctx) {
            for (int nt = 1; nt <= 3 && ok; nt++) {
                ASSERT_OK(ctx, mha_ctx_set_threads(ctx, nt));
                /* The bias fill and a beta = 1 product, as the module did before. */
                memcpy(want, g.C, sizeof(float) * n);
                for (int64_t i = 0; i < g.M; i++)
                    memcpy(want + i * g.ldc, bias, sizeof(float) * (size_t)g.N);
                ASSERT_OK(ctx, mha__gemm(ctx, g.ta, g.tb, g.M, g.N, g.K, 0.75f, g.A, g.lda, g.B,
                                         g.ldb, 1.0f, want, g.ldc));
                mha__gemm_ws ws = {0};
                for (int rep = 0; rep < 2 && ok; rep++) {
                    memcpy(got, g.C, sizeof(float) * n); /* NaN: the old C is never read */
                    long before = mha__alloc_count();
                    if (rep == 1) mha__fault_after(0); /* the kept workspace suffices */
                    mha_status st = mha__gemm_ex(ctx, &ws, g.ta, g.tb, g.M, g.N, g.K, 0.75f, g.A,
                                                 g.lda, g.B, g.ldb, 0.0f, bias, got, g.ldc);
                    mha__fault_after(-1);
                    ASSERT_OK(ctx, st);
                    if (rep == 1) ASSERT_EQ(mha__alloc_count(), before);
                    if (memcmp(want, got, sizeof(float) * n) != 0) {
                        FAILF("isa %s, %d threads, %lld x %lld x %lld, call %d: fused bias "
                              "differs from fill + beta = 1",
                              mha_isa_name(mha_ctx_isa(ctx)), nt, (long long)g.M, (long long)g.N,
                              (long long)g.K, rep + 1);
                        ok = 0;
                    }
                }
                /* Without a bias, through the kept workspace: as mha__gemm. */
                memcpy(want, g.C, sizeof(float) * n);
                memcpy(got, g.C, sizeof(float) * n);
                ASSERT_OK(ctx, mha__gemm(ctx, g.ta, g.tb, g.M, g.N, g.K, 1.0f, g.A, g.lda, g.B,
                                         g.ldb, 0.0f, want, g.ldc));
                ASSERT_OK(ctx, mha__gemm_ex(ctx, &ws, g.ta, g.tb, g.M, g.N, g.K, 1.0f, g.A, g.lda,
                                            g.B, g.ldb, 0.0f, NULL, got, g.ldc));
                if (memcmp(want, got, sizeof(float) * n) != 0) {
                    FAILF("isa %s, %d threads: gemm_ex differs from gemm",
                          mha_isa_name(mha_ctx_isa(ctx)), nt);
                    ok = 0;
                }
                mha__gemm_ws_free(&ws);
                ASSERT_TRUE(ws.p == NULL && ws.cap == 0);
            }
        }
        free(want), free(got), free(bias);
        case_free(&g);
        if (!ok) break;
    }
    /* Growth, and NOMEM while growing: C and the workspace unchanged. */
    mha_ctx_set_threads(ctx, 2);
    gcase a, b;
    ASSERT_TRUE(case_make(&a, 0, 1, 20, 30, 10, 0, 1.0f, 0.0f));
    ASSERT_TRUE(case_make(&b, 0, 1, 200, 300, 400, 0, 1.0f, 1.0f));
    mha__gemm_ws ws = {0};
    float *ca = malloc(sizeof(float) * (size_t)(a.M * a.ldc));
    float *cb = malloc(sizeof(float) * (size_t)(b.M * b.ldc));
    ASSERT_OK(ctx, mha__gemm_ex(ctx, &ws, 0, 1, a.M, a.N, a.K, 1.0f, a.A, a.lda, a.B, a.ldb, 0.0f,
                                NULL, ca, a.ldc));
    float *p0 = ws.p;
    size_t cap0 = ws.cap;
    ASSERT_TRUE(p0 != NULL && cap0 > 0);
    memcpy(cb, b.C, sizeof(float) * (size_t)(b.M * b.ldc));
    mha__fault_after(0);
    mha_status st = mha__gemm_ex(ctx, &ws, 0, 1, b.M, b.N, b.K, 1.0f, b.A, b.lda, b.B, b.ldb, 1.0f,
                                 NULL, cb, b.ldc);
    mha__fault_after(-1);
    ASSERT_EQ(st, MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_gemm: out of memory (");
    ASSERT_TRUE(memcmp(cb, b.C, sizeof(float) * (size_t)(b.M * b.ldc)) == 0);
    ASSERT_TRUE(ws.p == p0 && ws.cap == cap0);
    ASSERT_TRUE(case_check(ctx, &b, 1.0f, 1.0f, cb)); /* via mha__gemm: the oracle */
    ASSERT_OK(ctx, mha__gemm_ex(ctx, &ws, 0, 1, b.M, b.N, b.K, 1.0f, b.A, b.lda, b.B, b.ldb, 0.0f,
                                NULL, cb, b.ldc));
    ASSERT_TRUE(ws.cap > cap0);
    mha__gemm_ws_free(&ws);
    mha__gemm_ws_free(&ws); /* twice: a no-op */
    mha__gemm_ws_free(NULL);
    free(ca), free(cb);
    case_free(&a), case_free(&b);
    mha_ctx_free(ctx);
}

/* mha_sgemm / mha_gemm: C may not share an element with A or B (it is written while they are
 * read): MHA_ERR_INVALID_ARG naming the matrix, memory unchanged. The elements each matrix
 * touches count (rows of its ld, transposed or not): C exactly A or B, a one-element overlap
 * at either end, a bf16 A whose bytes reach into C; and accepted: C right after A, C in the
 * columns A skips in the same rows (interleaved, equal ld), A and B the same memory, K = 0. */
TEST(public_c_overlap_refused) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static float buf[256], before[256], want[256], C2[64];
    static const struct {
        int ta;
        int64_t M, N, K, lda, ldb, ldc;
        int a, b, c;     /* offsets into buf */
        const char *msg; /* NULL: accepted */
    } cases[] = {
        {0, 4, 4, 4, 4, 4, 4, 0, 100, 0, "mha_sgemm: C overlaps A ("},   /* C == A */
        {0, 4, 4, 4, 4, 4, 4, 0, 100, 100, "mha_sgemm: C overlaps B ("}, /* C == B */
        {0, 4, 4, 4, 4, 4, 4, 0, 100, 15, "mha_sgemm: C overlaps A ("},  /* A's last element */
        {0, 3, 5, 2, 2, 5, 6, 100, 16, 0, "mha_sgemm: C overlaps B ("},  /* C's last = B's first */
        {0, 3, 5, 2, 2, 5, 6, 100, 17, 0, NULL},                         /* B right after C */
        {1, 2, 4, 3, 2, 4, 4, 0, 100, 5, "mha_sgemm: C overlaps A ("},   /* A^T [3, 2]: to 5 */
        {1, 2, 4, 3, 2, 4, 4, 0, 100, 6, NULL},                          /* just after A^T */
        {0, 4, 4, 4, 4, 4, 4, 0, 100, 16, NULL},                         /* right after A */
        {0, 4, 4, 4, 8, 4, 8, 0, 100, 4, NULL}, /* interleaved: A columns 0-3, C 4-7 */
        {0, 4, 4, 4, 8, 4, 8, 0, 100, 3, "mha_sgemm: C overlaps A ("}, /* ... one column */
        {0, 4, 4, 4, 4, 4, 4, 100, 100, 0, NULL}, /* A and B the same memory: only read */
        {0, 4, 4, 0, 1, 4, 4, 0, 0, 0, NULL},     /* K = 0: neither read */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int x = 0; x < 256; x++) buf[x] = before[x] = frand();
        const float *A = buf + cases[i].a, *B = buf + cases[i].b;
        float *C = buf + cases[i].c;
        const int64_t M = cases[i].M, N = cases[i].N, K = cases[i].K, ldc = cases[i].ldc;
        /* the expected C: from copies of A and B */
        static float Ac[256], Bc[256];
        memcpy(Ac, buf, sizeof Ac), memcpy(Bc, buf, sizeof Bc);
        ASSERT_OK(ctx, mha_sgemm(ctx, cases[i].ta, 0, M, N, K, 1.0f, Ac + cases[i].a, cases[i].lda,
                                 Bc + cases[i].b, cases[i].ldb, 0.0f, C2, N));
        mha_status st = mha_sgemm(ctx, cases[i].ta, 0, M, N, K, 1.0f, A, cases[i].lda, B,
                                  cases[i].ldb, 0.0f, C, ldc);
        if (cases[i].msg) {
            if (st != MHA_ERR_INVALID_ARG) FAILF("case %zu: status %d", i, st);
            ASSERT_EQ(st, MHA_ERR_INVALID_ARG);
            ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), cases[i].msg);
            ASSERT_TRUE(memcmp(buf, before, sizeof buf) == 0);
            continue;
        }
        if (st != MHA_OK) FAILF("case %zu: %s", i, mha_ctx_errmsg(ctx));
        ASSERT_OK(ctx, st);
        memcpy(want, before, sizeof want);
        for (int64_t r = 0; r < M; r++)
            memcpy(want + cases[i].c + r * ldc, C2 + r * N, sizeof(float) * (size_t)N);
        if (memcmp(buf, want, sizeof buf) != 0) FAILF("case %zu: C or its neighbours wrong", i);
        ASSERT_TRUE(memcmp(buf, want, sizeof buf) == 0);
    }
    /* mha_gemm, bf16 A of 2-byte elements: [4, 4] is 8 floats' bytes */
    static _Alignas(16) uint16_t h[64];
    float *hc = (float *)(void *)h;
    for (int x = 0; x < 64; x++) h[x] = 0x3f80; /* 1.0 */
    ASSERT_EQ(mha_gemm(ctx, 0, 0, 4, 4, 4, 1.0f, h, 4, h, 4, MHA_DTYPE_BF16, 0.0f, hc + 7, 4),
              MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_gemm: C overlaps A (");
    for (int x = 0; x < 64; x++) ASSERT_EQ(h[x], 0x3f80);
    ASSERT_OK(ctx, mha_gemm(ctx, 0, 0, 4, 4, 4, 1.0f, h, 4, h, 4, MHA_DTYPE_BF16, 0.0f, hc + 8, 4));
    ASSERT_TRUE(hc[8] == 4.0f && hc[23] == 4.0f);
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(pack_layouts);
    RUN(micro_kernel_edge_tiles_vs_generic);
    RUN(k_zero_and_empty);
    RUN(public_c_overlap_refused);
    RUN(odd_shapes_every_layout);
    RUN(every_transpose_alpha_beta_and_padding);
    RUN(bitwise_identical_for_any_thread_count);
    RUN(nomem_leaves_c_unchanged);
    RUN(workspace_reuse_and_fused_bias);
    return harness_report();
}
