/* test_gemm_dtype.c - mha_gemm: the gemm on float32, bfloat16 and half operands, per ISA.
 *
 * The oracle is a float64 product of the rounded inputs (the bf16 / f16 values converted
 * exactly to float32). Every kernel path this machine supports runs every case
 * (FOR_EACH_ISA) for each dtype, ta/tb and edge shapes (M, N, K not multiples of the tiles,
 * K odd, K = 1, M or N = 1, K past two KC blocks of either kernel, N past NC). Beyond the
 * tolerance: F32 must give mha_sgemm's bits; a path that converts in packing (f16 everywhere,
 * bf16 on tables without a pair kernel) must give the bits of mha_sgemm on the converted
 * inputs; the vdpbf16ps path (its own summation order) must be within float32 accumulation
 * error of float64 and of the generic path. Results are bitwise identical for 1, 2, 3
 * threads; bad arguments are named and leave C unchanged; so does an allocation failure; the
 * internal mha__gemm_dt with a kept workspace and a fused bias gives a bias fill + beta = 1. */
#include "harness.h"
#include "attn/gemm.h"
#include "core/internal.h"
#include "kernels/cvt.h"
#include "kernels/kernels.h"

static uint32_t rng_state = 4242;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) * (1.0 / 8388608.0) - 1.0);
}

static const mha_dtype dtypes[] = {MHA_DTYPE_F32, MHA_DTYPE_BF16, MHA_DTYPE_F16};

static uint16_t to_h(float x, mha_dtype dt) {
    return dt == MHA_DTYPE_BF16 ? mha__f32_to_bf16(x) : mha__f32_to_f16(x);
}
static float from_h(uint16_t h, mha_dtype dt) {
    return dt == MHA_DTYPE_BF16 ? mha__bf16_to_f32(h) : mha__f16_to_f32(h);
}

/* A [n] matrix of dtype dt (x: as passed to mha_gemm) and its values in float32 (f). */
typedef struct {
    void *x;
    float *f;
} mat;

static int mat_make(mat *m, mha_dtype dt, int64_t n) {
    m->f = malloc(sizeof(float) * (size_t)n);
    m->x = dt == MHA_DTYPE_F32 ? (void *)m->f : malloc(2 * (size_t)n);
    if (!m->f || !m->x) return 0;
    for (int64_t i = 0; i < n; i++) {
        float v = frand();
        if (dt != MHA_DTYPE_F32) {
            ((uint16_t *)m->x)[i] = to_h(v, dt);
            v = from_h(((uint16_t *)m->x)[i], dt);
        }
        m->f[i] = v;
    }
    return 1;
}

static void mat_free(mat *m) {
    if (m->x != m->f) free(m->x);
    free(m->f);
}

/* Logical A [M,K], B [K,N] stored as op() needs with padded leading dimensions; C with pad
 * columns of 777; R = alpha A B + beta C in float64 on the rounded values. */
typedef struct {
    int64_t M, N, K, lda, ldb, ldc;
    int ta, tb;
    mha_dtype dt;
    float alpha, beta;
    mat A, B;
    float *C;
    double *R;
} dcase;

static void case_free(dcase *g) {
    mat_free(&g->A), mat_free(&g->B);
    free(g->C), free(g->R);
}

static int case_make(dcase *g, mha_dtype dt, int ta, int tb, int64_t M, int64_t N, int64_t K,
                     int pad, float alpha, float beta) {
    g->M = M, g->N = N, g->K = K, g->ta = ta, g->tb = tb, g->dt = dt;
    g->alpha = alpha, g->beta = beta;
    g->lda = (ta ? M : K) + pad, g->ldb = (tb ? K : N) + pad, g->ldc = N + pad;
    g->C = malloc(sizeof(float) * (size_t)(M * g->ldc));
    g->R = malloc(sizeof(double) * (size_t)(M * N));
    if (!mat_make(&g->A, dt, (ta ? K : M) * g->lda) ||
        !mat_make(&g->B, dt, (tb ? N : K) * g->ldb) || !g->C || !g->R)
        return 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < g->ldc; j++)
            g->C[i * g->ldc + j] = j >= N ? 777.0f : beta == 0.0f ? NAN : frand();
    const float *A = g->A.f, *B = g->B.f;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t p = 0; p < K; p++)
                s += (double)(ta ? A[p * g->lda + i] : A[i * g->lda + p]) *
                     (tb ? B[j * g->ldb + p] : B[p * g->ldb + j]);
            g->R[i * N + j] =
                alpha * s + (beta == 0.0f ? 0.0 : beta * (double)g->C[i * g->ldc + j]);
        }
    return 1;
}

static size_t c_bytes(const dcase *g) { return sizeof(float) * (size_t)(g->M * g->ldc); }

/* mha_gemm on a fresh copy of C into out. */
static mha_status run(mha_ctx *ctx, const dcase *g, float *out) {
    memcpy(out, g->C, c_bytes(g));
    return mha_gemm(ctx, g->ta, g->tb, g->M, g->N, g->K, g->alpha, g->A.x, g->lda, g->B.x, g->ldb,
                    g->dt, g->beta, out, g->ldc);
}

/* The m x n part of out (pad columns must still hold 777) against want, within float32
 * accumulation error over K terms of size <= 1. */
static int check_near(const dcase *g, const float *out, const double *want, mha_isa isa,
                      const char *vs) {
    float *packed = malloc(sizeof(float) * (size_t)(g->M * g->N));
    int ok = 1;
    for (int64_t i = 0; i < g->M && ok; i++) {
        memcpy(packed + i * g->N, out + i * g->ldc, sizeof(float) * (size_t)g->N);
        for (int64_t j = g->N; j < g->ldc; j++)
            if (out[i * g->ldc + j] != 777.0f) {
                FAILF("C[%lld][%lld] past N was written", (long long)i, (long long)j);
                ok = 0;
            }
    }
    char what[192];
    snprintf(what, sizeof what, "C vs %s (isa %s, dtype %s, ta %d, tb %d, M %lld, N %lld, K %lld)",
             vs, mha_isa_name(isa), mha_dtype_name(g->dt), g->ta, g->tb, (long long)g->M,
             (long long)g->N, (long long)g->K);
    double atol = 2e-6 * (double)(g->K + 1) * (fabs(g->alpha) > 1 ? fabs(g->alpha) : 1);
    if (ok) ok = harness_near(__FILE__, __LINE__, what, packed, want, g->M * g->N, 1e-5, atol);
    free(packed);
    return ok;
}

/* Whether this context's table runs bf16 on its pair micro-kernel (else: converted). */
static int pair_kernel(mha_ctx *ctx, mha_dtype dt) {
    return dt == MHA_DTYPE_BF16 && mha__ctx_kernels(ctx)->gemm_bf16_ukr != NULL;
}

/* One case on every ISA: within tolerance of float64; F32 and the converting paths bitwise
 * equal to mha_sgemm (on the float32 values); the pair kernel within tolerance of the generic
 * path (the first ISA of FOR_EACH_ISA). */
static int case_run_all(mha_ctx *ctx, dcase *g) {
    size_t n = (size_t)(g->M * g->ldc);
    float *out = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
    double *gen = malloc(sizeof(double) * (size_t)(g->M * g->N));
    int ok = 1, have_gen = 0;
    FOR_EACH_ISA(ctx) {
        if (!ok) break;
        mha_status st = run(ctx, g, out);
        if (st != MHA_OK) {
            FAILF("mha_gemm: %s: %s", mha_status_str(st), mha_ctx_errmsg(ctx));
            ok = 0;
            break;
        }
        ok = check_near(g, out, g->R, mha_ctx_isa(ctx), "float64");
        if (ok && !pair_kernel(ctx, g->dt)) {
            memcpy(ref, g->C, n * sizeof(float));
            ok = mha_sgemm(ctx, g->ta, g->tb, g->M, g->N, g->K, g->alpha, g->A.f, g->lda, g->B.f,
                           g->ldb, g->beta, ref, g->ldc) == MHA_OK &&
                 memcmp(ref, out, n * sizeof(float)) == 0;
            if (!ok)
                FAILF("isa %s, dtype %s, ta %d tb %d, %lld x %lld x %lld: not mha_sgemm's bits",
                      mha_isa_name(mha_ctx_isa(ctx)), mha_dtype_name(g->dt), g->ta, g->tb,
                      (long long)g->M, (long long)g->N, (long long)g->K);
        }
        if (ok && mha_ctx_isa(ctx) == MHA_ISA_GENERIC) {
            for (int64_t i = 0; i < g->M; i++)
                for (int64_t j = 0; j < g->N; j++) gen[i * g->N + j] = out[i * g->ldc + j];
            have_gen = 1;
        } else if (ok && pair_kernel(ctx, g->dt)) {
            ok = have_gen && check_near(g, out, gen, mha_ctx_isa(ctx), "the generic path");
        }
    }
    free(out), free(ref), free(gen);
    return ok;
}

TEST(every_isa_dtype_layout_and_edge_shape) {
    static const struct {
        int64_t M, N, K;
    } shapes[] = {{1, 1, 1},     {1, 37, 5},     {37, 1, 6},     {13, 31, 7},
                  {15, 33, 1},   {29, 65, 3},    {100, 64, 257}, {14, 32, 2},
                  {31, 70, 600}, {17, 40, 1101}, {3, 4500, 20},  {45, 97, 513}};
    static const float ab[][2] = {{1, 0}, {0.75f, 0}, {-2, 0.25f}};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    int t = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t d = 0; d < 3; d++)
            for (int ta = 0; ta < 2; ta++)
                for (int tb = 0; tb < 2; tb++, t++) {
                    dcase g;
                    const float *v = ab[t % 3];
                    ASSERT_TRUE(case_make(&g, dtypes[d], ta, tb, shapes[s].M, shapes[s].N,
                                          shapes[s].K, t % 2 ? 3 : 0, v[0], v[1]));
                    int ok = case_run_all(ctx, &g);
                    case_free(&g);
                    if (!ok) goto done;
                }
done:
    mha_ctx_free(ctx);
}

/* K = 0: C = beta C (beta 0: zeros, the old C not read), for every dtype, A and B unread. */
TEST(k_zero_and_empty) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (size_t d = 0; d < 3; d++) {
        float C[6] = {NAN, NAN, NAN, NAN, NAN, NAN};
        ASSERT_OK(ctx, mha_gemm(ctx, 0, 0, 2, 3, 0, 1.0f, NULL, 1, NULL, 3, dtypes[d], 0.0f, C, 3));
        for (int i = 0; i < 6; i++) ASSERT_TRUE(C[i] == 0.0f);
        for (int i = 0; i < 6; i++) C[i] = (float)i;
        ASSERT_OK(ctx, mha_gemm(ctx, 0, 0, 2, 3, 0, 1.0f, NULL, 1, NULL, 3, dtypes[d], 2.0f, C, 3));
        ASSERT_OK(ctx, mha_gemm(ctx, 0, 0, 0, 3, 5, 1.0f, NULL, 5, NULL, 3, dtypes[d], 0.0f, C, 3));
        ASSERT_OK(ctx, mha_gemm(ctx, 0, 0, 2, 0, 5, 1.0f, NULL, 5, NULL, 1, dtypes[d], 0.0f, C, 1));
        for (int i = 0; i < 6; i++) ASSERT_TRUE(C[i] == 2.0f * i);
    }
    mha_ctx_free(ctx);
}

/* The same bits for 1, 2 and 3 threads (rows split, columns split, K over several KC blocks
 * of both kernels), every ISA and dtype. */
TEST(bitwise_identical_for_any_thread_count) {
    static const struct {
        int64_t M, N, K;
        int ta, tb;
    } shapes[] = {{257, 300, 600, 0, 1}, {13, 1000, 1100, 0, 0}, {300, 257, 513, 1, 0}};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t d = 0; d < 3; d++) {
            dcase g;
            ASSERT_TRUE(case_make(&g, dtypes[d], shapes[s].ta, shapes[s].tb, shapes[s].M,
                                  shapes[s].N, shapes[s].K, 1, 1.0f, 0.5f));
            size_t n = (size_t)(g.M * g.ldc);
            float *c1 = malloc(sizeof(float) * n), *cn = malloc(sizeof(float) * n);
            int ok = 1;
            FOR_EACH_ISA(ctx) {
                if (!ok) break;
                ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 1));
                ASSERT_OK(ctx, run(ctx, &g, c1));
                for (int nt = 2; nt <= 3 && ok; nt++) {
                    ASSERT_OK(ctx, mha_ctx_set_threads(ctx, nt));
                    ASSERT_OK(ctx, run(ctx, &g, cn));
                    if (memcmp(c1, cn, sizeof(float) * n) != 0) {
                        FAILF("isa %s, dtype %s, %d threads, %lld x %lld x %lld: differs from "
                              "1 thread",
                              mha_isa_name(mha_ctx_isa(ctx)), mha_dtype_name(g.dt), nt,
                              (long long)g.M, (long long)g.N, (long long)g.K);
                        ok = 0;
                    }
                }
                if (ok) ok = check_near(&g, cn, g.R, mha_ctx_isa(ctx), "float64");
            }
            free(c1), free(cn);
            case_free(&g);
            if (!ok) goto done;
        }
done:
    mha_ctx_free(ctx);
}

/* gemm_pack_h of every table: the panels of gemm_pack with each element converted by
 * kernels/cvt.h (bit for bit: NaN, infinities, subnormals included), in the three layouts. */
TEST(pack_h_converts_exactly) {
    enum {
        ROWS = 45,
        K = 37,
        LD = 47
    };
    static uint16_t X[ROWS * LD], Xt[K * LD];
    for (int i = 0; i < ROWS * LD; i++) X[i] = (uint16_t)(i * 1399u + 7u); /* every range */
    X[0] = 0x7c00, X[1] = 0xfe01, X[2] = 0x0001, X[3] = 0x8000, X[4] = 0x7f80, X[5] = 0xff81;
    for (int i = 0; i < ROWS; i++)
        for (int p = 0; p < K; p++) Xt[p * LD + i] = X[i * LD + p];
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        const mha_kernels *kt = mha__kernels_for((mha_isa)isa);
        ASSERT_TRUE(kt->gemm_pack_h != NULL && kt->gemm_pack_h_name != NULL);
        static const int rs_[] = {4, 6, 14, 16, 32, 40};
        for (int ri = 0; ri < 6; ri++)
            for (int d = 1; d < 3; d++) {
                mha_dtype dt = dtypes[d];
                int r = rs_[ri], np = (ROWS + r - 1) / r;
                float *dst = mha__malloc(sizeof(float) * (size_t)(np * r * K));
                ASSERT_TRUE(dst != NULL);
                for (int layout = 0; layout < 3; layout++) {
                    memset(dst, 0xff, sizeof(float) * (size_t)(np * r * K));
                    if (layout == 0) kt->gemm_pack_h(X, dt, LD, 1, ROWS, K, r, dst);
                    else if (layout == 1) kt->gemm_pack_h(Xt, dt, 1, LD, ROWS, K, r, dst);
                    else kt->gemm_pack_h(X, dt, 2 * LD, 2, ROWS / 2, K / 2, r, dst);
                    int rows = layout == 2 ? ROWS / 2 : ROWS, kk = layout == 2 ? K / 2 : K;
                    for (int t = 0; t < (rows + r - 1) / r; t++)
                        for (int p = 0; p < kk; p++)
                            for (int i = 0; i < r; i++) {
                                int row = t * r + i;
                                float want = row >= rows   ? 0.0f
                                             : layout == 2 ? from_h(X[row * 2 * LD + p * 2], dt)
                                                           : from_h(X[row * LD + p], dt);
                                float got = dst[t * r * kk + p * r + i];
                                if (memcmp(&got, &want, sizeof got) != 0) {
                                    FAILF("%s %s r %d layout %d: panel %d [p %d][i %d]: got "
                                          "%08x, expected %08x",
                                          kt->gemm_pack_h_name, mha_dtype_name(dt), r, layout, t, p,
                                          i, mha__f32_bits(got), mha__f32_bits(want));
                                    mha__free(dst);
                                    return;
                                }
                            }
                }
                mha__free(dst);
            }
    }
}

/* cvt_to_f32 / cvt_from_f32 of every table: bit for bit kernels/cvt.h, for every 2-byte value
 * and, back, for every float32 whose low 16 bits sit at a rounding edge of bf16 or half (ties,
 * one either side) with any high 16 bits, plus a sweep; every length 0 .. 40 at 4 offsets,
 * nothing written past n. */
TEST(cvt_every_table_bit_exact) {
    enum {
        NH = 65536,
        NF = 14 * 65536 + 1048576,
        GUARD = 8
    };
    static const uint32_t lo[14] = {0,      1,      0x7fff, 0x8000, 0x8001, 0xffff, 0x0fff,
                                    0x1000, 0x1001, 0x2fff, 0x3000, 0x3001, 0x1800, 0xf001};
    uint16_t *h = mha__malloc(sizeof(uint16_t) * (NF + GUARD));
    float *f = mha__malloc(sizeof(float) * (NF + GUARD));
    ASSERT_TRUE(h != NULL && f != NULL);
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        const mha_kernels *kt = mha__kernels_for((mha_isa)isa);
        ASSERT_TRUE(kt->cvt_to_f32 != NULL && kt->cvt_from_f32 != NULL);
        for (int d = 1; d < 3; d++) {
            const mha_dtype dt = dtypes[d];
            for (uint32_t i = 0; i < NH; i++) h[i] = (uint16_t)i;
            kt->cvt_to_f32(dt, h, f, NH);
            for (uint32_t i = 0; i < NH; i++) {
                const float want = from_h((uint16_t)i, dt);
                if (memcmp(&f[i], &want, sizeof want) != 0) {
                    FAILF("%s cvt_to_f32 %s of %04x: got %08x, expected %08x", kt->name,
                          mha_dtype_name(dt), i, mha__f32_bits(f[i]), mha__f32_bits(want));
                    goto done;
                }
            }
            uint32_t x = 12345u;
            for (int64_t i = 0; i < NF; i++) {
                uint32_t u;
                if (i < 14 * 65536) u = (uint32_t)(i % 65536) << 16 | lo[i / 65536];
                else u = x = x * 1664525u + 1013904223u;
                f[i] = mha__bits_f32(u);
            }
            kt->cvt_from_f32(dt, f, h, NF);
            for (int64_t i = 0; i < NF; i++) {
                const uint16_t want = to_h(f[i], dt);
                if (h[i] != want) {
                    FAILF("%s cvt_from_f32 %s of %08x: got %04x, expected %04x", kt->name,
                          mha_dtype_name(dt), mha__f32_bits(f[i]), h[i], want);
                    goto done;
                }
            }
            for (int i = 1000; i < 1100; i++) h[i] = (uint16_t)i;
            for (int off = 0; off < 4; off++) /* the tails, unaligned, and the guards */
                for (int64_t n = 0; n <= 40; n++) {
                    memset(f + off, 0xab, sizeof(float) * (size_t)(n + GUARD));
                    kt->cvt_to_f32(dt, h + 1000 + off, f + off, n);
                    memset(h + off, 0xab, sizeof(uint16_t) * (size_t)(n + GUARD));
                    kt->cvt_from_f32(dt, f + off, h + off, n);
                    for (int64_t i = 0; i < n + GUARD; i++) {
                        const float want = from_h((uint16_t)(1000 + off + i), dt);
                        const int ok =
                            i < n ? memcmp(&f[off + i], &want, sizeof want) == 0 &&
                                        h[off + i] == to_h(want, dt)
                                  : mha__f32_bits(f[off + i]) == 0xabababab && h[off + i] == 0xabab;
                        if (!ok) {
                            FAILF("%s %s n %lld offset %d: element %lld wrong", kt->name,
                                  mha_dtype_name(dt), (long long)n, off, (long long)i);
                            goto done;
                        }
                    }
                }
        }
    }
done:
    mha__free(h), mha__free(f);
}

/* scale_f32 of every table: y = a x, one float32 multiply each, the bits of the plain C product
 * (NaN compared as NaN) for specials (zeros, subnormals, infinities, NaN, the largest finite)
 * and random bits, scales among them; in place; lengths 0..40 at 4 offsets, the guards intact. */
TEST(scale_every_table_bit_exact) {
    enum {
        N = 4096,
        GUARD = 8
    };
    static const uint32_t special[] = {0,          0x80000000, 1,          0x807fffff, 0x00800000,
                                       0x7f7fffff, 0xff7fffff, 0x7f800000, 0xff800000, 0x7fc00000,
                                       0x3f800000, 0x3f800001, 0xbeffffff, 0x3e000000};
    const int nsp = (int)(sizeof special / sizeof special[0]);
    float *x = mha__malloc(sizeof(float) * (N + GUARD)),
          *y = mha__malloc(sizeof(float) * (N + GUARD));
    ASSERT_TRUE(x != NULL && y != NULL);
    uint32_t r = 777u;
    for (int i = 0; i < N; i++) {
        r = r * 1664525u + 1013904223u;
        x[i] = mha__bits_f32(i < nsp ? special[i] : r);
    }
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        const mha_kernels *kt = mha__kernels_for((mha_isa)isa);
        ASSERT_TRUE(kt->scale_f32 != NULL);
        for (int si = 0; si < nsp + 2; si++) {
            const float a = si < nsp ? mha__bits_f32(special[si]) : si == nsp ? 0.125f : -3.5f;
            kt->scale_f32(N, a, x, y);
            for (int i = 0; i < N; i++) {
                const float want = a * x[i];
                if (isnan(want) ? !isnan(y[i]) : mha__f32_bits(y[i]) != mha__f32_bits(want)) {
                    FAILF("%s scale_f32 %08x x %08x: got %08x, expected %08x", kt->name,
                          mha__f32_bits(a), mha__f32_bits(x[i]), mha__f32_bits(y[i]),
                          mha__f32_bits(want));
                    goto done;
                }
            }
        }
        for (int off = 0; off < 4; off++) /* in place: the tails, unaligned, and the guards */
            for (int64_t n = 0; n <= 40; n++) {
                for (int64_t i = 0; i < n + GUARD; i++) y[off + i] = (float)(i + 1);
                kt->scale_f32(n, -0.5f, y + off, y + off);
                for (int64_t i = 0; i < n + GUARD; i++)
                    if (y[off + i] != (i < n ? -0.5f * (float)(i + 1) : (float)(i + 1))) {
                        FAILF("%s scale_f32 n %lld offset %d: element %lld wrong", kt->name,
                              (long long)n, off, (long long)i);
                        goto done;
                    }
            }
    }
done:
    mha__free(x), mha__free(y);
}

/* gemm_bf16_pack of every table that has one: pair words X(i, 2q) | X(i, 2q+1) << 16, the
 * element past an odd k and the rows past `rows` zero, in the three layouts, k odd and even. */
TEST(pack_bf16_pairs) {
    enum {
        ROWS = 45,
        LD = 71
    };
    static uint16_t X[ROWS * LD], Xt[LD * LD];
    for (int i = 0; i < ROWS * LD; i++) X[i] = (uint16_t)(i * 2654435761u >> 13);
    for (int i = 0; i < ROWS; i++)
        for (int p = 0; p < LD; p++) Xt[p * LD + i] = X[i * LD + p];
    int tables = 0;
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        const mha_kernels *kt = mha__kernels_for((mha_isa)isa);
        if (!kt->gemm_bf16_ukr) continue;
        tables++;
        ASSERT_TRUE(kt->gemm_bf16_pack && kt->gemm_bf16_kc % 2 == 0 &&
                    kt->gemm_bf16_mc % kt->gemm_bf16_mr == 0 &&
                    kt->gemm_bf16_nc % kt->gemm_bf16_nr == 0);
        static const int rs_[] = {4, 14, 16, 32, 40};
        static const int ks[] = {1, 2, 31, 32, 33, 64, 70};
        for (int ri = 0; ri < 5; ri++)
            for (int ki = 0; ki < 7; ki++) {
                int r = rs_[ri], np = (ROWS + r - 1) / r, k = ks[ki], kp = (k + 1) / 2;
                uint32_t *dst = mha__malloc(sizeof(uint32_t) * (size_t)(np * r * kp));
                ASSERT_TRUE(dst != NULL);
                for (int layout = 0; layout < 3; layout++) {
                    int rows = layout == 2 ? ROWS / 2 : ROWS, kk = layout == 2 ? k / 2 : k;
                    int kkp = (kk + 1) / 2;
                    if (kk == 0) continue;
                    memset(dst, 0xff, sizeof(uint32_t) * (size_t)(np * r * kp));
                    if (layout == 0) kt->gemm_bf16_pack(X, LD, 1, ROWS, k, r, dst);
                    else if (layout == 1) kt->gemm_bf16_pack(Xt, 1, LD, ROWS, k, r, dst);
                    else kt->gemm_bf16_pack(X, 2 * LD, 2, ROWS / 2, kk, r, dst);
                    for (int t = 0; t < (rows + r - 1) / r; t++)
                        for (int q = 0; q < kkp; q++)
                            for (int i = 0; i < r; i++) {
                                int row = t * r + i;
                                uint32_t want = 0;
                                for (int h = 0; h < 2; h++) {
                                    int p = 2 * q + h;
                                    if (row >= rows || p >= kk) continue;
                                    uint32_t e =
                                        layout == 2 ? X[row * 2 * LD + p * 2] : X[row * LD + p];
                                    want |= e << (16 * h);
                                }
                                uint32_t got = dst[t * r * kkp + q * r + i];
                                if (got != want) {
                                    FAILF("%s r %d k %d layout %d: panel %d [q %d][i %d]: got "
                                          "%08x, expected %08x",
                                          kt->gemm_bf16_pack_name, r, kk, layout, t, q, i, got,
                                          want);
                                    mha__free(dst);
                                    return;
                                }
                            }
                }
                mha__free(dst);
            }
    }
    ASSERT_EQ(tables, mha__cpu_avx512_bf16() ? 1 : 0);
}

/* The pair micro-kernel on every edge tile (m in 1..MR, n in 1..NR), k odd and even (one
 * pair, a zero-padded pair, a full KC block): float64 on the bf16 values, beta 0 over NaN,
 * nothing outside the m x n tile written. */
TEST(bf16_micro_kernel_edge_tiles) {
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        const mha_kernels *kt = mha__kernels_for((mha_isa)isa);
        if (!kt->gemm_bf16_ukr) continue;
        const int mr = kt->gemm_bf16_mr, nr = kt->gemm_bf16_nr;
        static const int64_t ks[] = {1, 2, 5, 512};
        for (size_t ki = 0; ki < 4; ki++) {
            int64_t k = ks[ki], kp = (k + 1) / 2, ldx = k + 2, ldc = nr + 3;
            mat a, bt; /* logical a [mr, k], bt [nr, k] (rows of op(B)^T) */
            ASSERT_TRUE(mat_make(&a, MHA_DTYPE_BF16, mr * ldx) &&
                        mat_make(&bt, MHA_DTYPE_BF16, nr * ldx));
            uint32_t *ap = mha__malloc(sizeof(uint32_t) * (size_t)(mr * kp));
            uint32_t *bp = mha__malloc(sizeof(uint32_t) * (size_t)(nr * kp));
            float *c = malloc(sizeof(float) * (size_t)(mr * ldc));
            float *c0 = malloc(sizeof(float) * (size_t)(mr * ldc));
            double *want = malloc(sizeof(double) * (size_t)(mr * ldc));
            ASSERT_TRUE(ap && bp && c && c0 && want);
            int ok = 1;
            for (int m = 1; m <= mr && ok; m++)
                for (int n = 1; n <= nr && ok; n++)
                    for (int bi = 0; bi < 2 && ok; bi++) {
                        float alpha = 1.25f, beta = bi ? 0.5f : 0.0f;
                        kt->gemm_bf16_pack(a.x, ldx, 1, m, k, mr, ap);
                        kt->gemm_bf16_pack(bt.x, ldx, 1, n, k, nr, bp);
                        for (int64_t i = 0; i < mr * ldc; i++) c[i] = bi ? frand() : NAN;
                        memcpy(c0, c, sizeof(float) * (size_t)(mr * ldc));
                        for (int i = 0; i < mr; i++)
                            for (int j = 0; j < ldc; j++) {
                                double s = 0;
                                for (int64_t p = 0; p < k && i < m && j < n; p++)
                                    s += (double)a.f[i * ldx + p] * bt.f[j * ldx + p];
                                want[i * ldc + j] =
                                    (i < m && j < n)
                                        ? alpha * s +
                                              (beta == 0 ? 0.0 : beta * (double)c[i * ldc + j])
                                        : 0.0;
                            }
                        kt->gemm_bf16_ukr(kp, ap, bp, alpha, beta, c, ldc, m, n);
                        for (int i = 0; i < mr && ok; i++)
                            for (int j = 0; j < ldc && ok; j++) {
                                size_t e = (size_t)(i * ldc + j);
                                if (i < m && j < n) continue;
                                if (memcmp(c + e, c0 + e, sizeof(float)) != 0) {
                                    FAILF("%s m %d n %d: wrote C[%d][%d] outside the tile",
                                          kt->gemm_bf16_ukr_name, m, n, i, j);
                                    ok = 0;
                                }
                                c[e] = 0.0f;
                            }
                        char what[128];
                        snprintf(what, sizeof what, "%s m %d n %d k %lld beta %g",
                                 kt->gemm_bf16_ukr_name, m, n, (long long)k, beta);
                        if (ok)
                            ok = harness_near(__FILE__, __LINE__, what, c, want, mr * ldc, 1e-5,
                                              2e-6 * (double)(k + 1));
                    }
            mat_free(&a), mat_free(&bt);
            mha__free(ap), mha__free(bp);
            free(c), free(c0), free(want);
            if (!ok) return;
        }
    }
}

/* The AVX-512 table runs bf16 on vdpbf16ps exactly when the CPU reports AVX512_BF16 (CPUID
 * leaf 7 subleaf 1, EAX bit 5; on Linux the kernel's flag avx512_bf16 says the same), and
 * names it in mha_cpu_features. */
TEST(bf16_kernel_selected_by_the_cpu_bit) {
    int bit = mha__cpu_avx512_bf16();
    ASSERT_TRUE(!bit || mha_isa_supported(MHA_ISA_AVX512));
    ASSERT_EQ(strstr(mha_cpu_features(), "avx512bf16") != NULL, bit);
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[8192];
        int flag = -1;
        while (flag < 0 && fgets(line, sizeof line, f))
            if (strncmp(line, "flags", 5) == 0) flag = strstr(line, " avx512_bf16") != NULL;
        fclose(f);
        if (flag >= 0 && mha_isa_supported(MHA_ISA_AVX512)) ASSERT_EQ(flag, bit);
    }
    for (int isa = MHA_ISA_GENERIC; isa <= MHA_ISA_AVX512; isa++) {
        if (!mha_isa_supported((mha_isa)isa)) continue;
        const mha_kernels *kt = mha__kernels_for((mha_isa)isa);
        /* (a build whose compiler lacks -mavx512bf16 fails here on such a CPU: rightly) */
        int want = isa == MHA_ISA_AVX512 && bit;
        ASSERT_EQ(kt->gemm_bf16_ukr != NULL, want);
        if (want)
            ASSERT_TRUE(strcmp(kt->gemm_bf16_ukr_name, "mha__gemm_avx512bf16_bf16_14x32") == 0);
    }
}

/* What mha_ctx_describe (`mha info`) says runs for bf16 / f16 is what runs: a spy in place of
 * the pair kernel is called by a bf16 product exactly when the description names it, with
 * its MR x NR blocks; f16 (and bf16 without it) go through the converting packing and the
 * fp32 micro-kernel. */
static struct { int calls, m, n; } s_pair, s_f32;
static void spy_pair(int64_t kp, const uint32_t *a, const uint32_t *b, float alpha, float beta,
                     float *c, int64_t ldc, int m, int n) {
    (void)kp, (void)a, (void)b, (void)alpha, (void)beta;
    s_pair.calls++;
    if (m > s_pair.m) s_pair.m = m;
    if (n > s_pair.n) s_pair.n = n;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) c[i * ldc + j] = 0.0f;
}
static void spy_f32(int64_t k, const float *a, const float *b, float alpha, float beta, float *c,
                    int64_t ldc, int m, int n) {
    (void)k, (void)a, (void)b, (void)alpha, (void)beta;
    s_f32.calls++;
    if (m > s_f32.m) s_f32.m = m;
    if (n > s_f32.n) s_f32.n = n;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) c[i * ldc + j] = 0.0f;
}

TEST(describe_names_what_runs) {
    static uint16_t A[100 * 100];
    static float C[100 * 100];
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    int seen = 0;
    FOR_EACH_ISA(ctx) {
        const mha_kernels *real = mha__ctx_kernels(ctx);
        char buf[4096];
        ASSERT_OK(ctx, mha_ctx_describe(ctx, buf, sizeof buf));
        ASSERT_TRUE(strstr(buf, real->gemm_pack_h_name) != NULL);
        const char *line = strstr(buf, "  gemm bf16     ");
        ASSERT_EQ(line != NULL, real->gemm_bf16_ukr != NULL);
        int mr = 0, nr = 0;
        if (line) {
            seen++;
            ASSERT_TRUE(strstr(line, real->gemm_bf16_ukr_name) == line + 16);
            ASSERT_TRUE(strstr(line, real->gemm_bf16_pack_name) != NULL);
            ASSERT_TRUE(sscanf(strstr(line, "MR "), "MR %d x NR %d", &mr, &nr) == 2);
        }
        mha_kernels spy = *real;
        if (spy.gemm_bf16_ukr) spy.gemm_bf16_ukr = spy_pair;
        spy.gemm_ukr = spy_f32;
        ctx->kern = &spy;
        for (int d = 1; d < 3; d++) {
            memset(&s_pair, 0, sizeof s_pair), memset(&s_f32, 0, sizeof s_f32);
            ASSERT_OK(ctx, mha_gemm(ctx, 0, 1, 100, 100, 100, 1.0f, A, 100, A, 100, dtypes[d], 0.0f,
                                    C, 100));
            int pairs = dtypes[d] == MHA_DTYPE_BF16 && line;
            ASSERT_TRUE(pairs ? s_pair.calls > 0 && s_f32.calls == 0
                              : s_f32.calls > 0 && s_pair.calls == 0);
            if (pairs) ASSERT_TRUE(s_pair.m == mr && s_pair.n == nr);
            else ASSERT_TRUE(s_f32.m == real->gemm_mr && s_f32.n == real->gemm_nr);
        }
        ctx->kern = real;
    }
    ASSERT_EQ(seen, mha__cpu_avx512_bf16() ? 1 : 0);
    mha_ctx_free(ctx);
}

/* Every bad argument is named in the message (house style) and leaves C unchanged; another
 * dtype is MHA_ERR_UNSUPPORTED naming dtype. */
TEST(bad_arguments_named_c_unchanged) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static uint16_t A[64], B[64];
    float C[64];
    for (int i = 0; i < 64; i++) C[i] = (float)i;
    static const struct {
        int ta, tb;
        int64_t M, N, K, lda, ldb, ldc;
        int nullA, nullB, nullC;
        mha_dtype dt;
        mha_status st;
        const char *msg;
    } bad[] = {
        {0, 0, -1, 4, 4, 4, 4, 4, 0, 0, 0, MHA_DTYPE_BF16, MHA_ERR_INVALID_ARG,
         "mha_gemm: M, N, K: got -1, 4, 4, expected >= 0"},
        {0, 0, 4, 4, -2, 4, 4, 4, 0, 0, 0, MHA_DTYPE_F16, MHA_ERR_INVALID_ARG, "mha_gemm: M, N, K"},
        {0, 0, 4, 4, 5, 4, 5, 4, 0, 0, 0, MHA_DTYPE_BF16, MHA_ERR_INVALID_ARG,
         "mha_gemm: lda: got 4, expected >= 5 (K)"},
        {1, 0, 6, 4, 5, 5, 4, 4, 0, 0, 0, MHA_DTYPE_F16, MHA_ERR_INVALID_ARG,
         "mha_gemm: lda: got 5, expected >= 6 (M, A transposed)"},
        {0, 0, 4, 6, 4, 4, 5, 6, 0, 0, 0, MHA_DTYPE_BF16, MHA_ERR_INVALID_ARG,
         "mha_gemm: ldb: got 5, expected >= 6 (N)"},
        {0, 1, 4, 4, 7, 7, 6, 4, 0, 0, 0, MHA_DTYPE_F32, MHA_ERR_INVALID_ARG,
         "mha_gemm: ldb: got 6, expected >= 7 (K, B transposed)"},
        {0, 0, 4, 5, 4, 4, 5, 3, 0, 0, 0, MHA_DTYPE_BF16, MHA_ERR_INVALID_ARG,
         "mha_gemm: ldc: got 3, expected >= 5 (N)"},
        {0, 0, 4, 4, 4, 4, 4, 4, 1, 0, 0, MHA_DTYPE_BF16, MHA_ERR_INVALID_ARG,
         "mha_gemm: A: got NULL, expected a matrix"},
        {0, 0, 4, 4, 4, 4, 4, 4, 0, 1, 0, MHA_DTYPE_F16, MHA_ERR_INVALID_ARG,
         "mha_gemm: B: got NULL, expected a matrix"},
        {0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 1, MHA_DTYPE_BF16, MHA_ERR_INVALID_ARG,
         "mha_gemm: C: got NULL, expected [M, N]"},
        {0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0, MHA_DTYPE_I32, MHA_ERR_UNSUPPORTED,
         "mha_gemm: dtype: got int32, expected float32, bfloat16 or float16"},
        {0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0, MHA_DTYPE_F64, MHA_ERR_UNSUPPORTED,
         "mha_gemm: dtype: got float64"},
        {0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0, (mha_dtype)99, MHA_ERR_UNSUPPORTED,
         "mha_gemm: dtype: got unknown"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mha_status st = mha_gemm(ctx, bad[i].ta, bad[i].tb, bad[i].M, bad[i].N, bad[i].K, 1.0f,
                                 bad[i].nullA ? NULL : A, bad[i].lda, bad[i].nullB ? NULL : B,
                                 bad[i].ldb, bad[i].dt, 0.0f, bad[i].nullC ? NULL : C, bad[i].ldc);
        if (st != bad[i].st) FAILF("case %zu: status %d, expected %d", i, st, bad[i].st);
        ASSERT_EQ(st, bad[i].st);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), bad[i].msg);
    }
    for (int i = 0; i < 64; i++) ASSERT_TRUE(C[i] == (float)i);
    /* mha_sgemm keeps its own name in the shared checks */
    ASSERT_EQ(mha_sgemm(ctx, 0, 0, 4, 4, 5, 1.0f, C, 4, C, 4, 0.0f, C, 4), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_sgemm: lda: got 4, expected >= 5 (K)");
    ASSERT_OK(ctx, mha_gemm(ctx, 0, 0, 4, 4, 4, 1.0f, A, 4, B, 4, MHA_DTYPE_BF16, 0.0f, C, 4));
    ASSERT_EQ(mha_ctx_errmsg(ctx)[0], 0); /* a good call clears the message */
    mha_ctx_free(ctx);
}

/* An allocation failure (the packing workspace) is MHA_ERR_NOMEM with C unchanged, for every
 * dtype and ISA (the pair panels are sized in their own words). */
TEST(allocation_failure_leaves_c_unchanged) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (size_t d = 0; d < 3; d++) {
        dcase g;
        ASSERT_TRUE(case_make(&g, dtypes[d], 0, 1, 40, 50, 31, 0, 1.0f, 1.0f));
        float *out = malloc(c_bytes(&g));
        FOR_EACH_ISA(ctx) {
            for (long n = 0;; n++) { /* fail each allocation in turn until the call succeeds */
                mha__fault_after(n);
                mha_status st = run(ctx, &g, out);
                mha__fault_after(-1);
                if (st == MHA_OK) break;
                ASSERT_EQ(st, MHA_ERR_NOMEM);
                ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_gemm: out of memory (");
                ASSERT_TRUE(memcmp(out, g.C, c_bytes(&g)) == 0);
                ASSERT_TRUE(n < 4);
            }
            ASSERT_TRUE(check_near(&g, out, g.R, mha_ctx_isa(ctx), "float64"));
        }
        free(out);
        case_free(&g);
    }
    mha_ctx_free(ctx);
}

/* mha__gemm_dt with a kept workspace and a bias (what a bf16 module's projections call): the
 * bits of a bias fill followed by a beta = 1 product, a second call allocating nothing, for
 * every ISA and dtype, K below and past the KC blocks. */
TEST(workspace_and_fused_bias_every_dtype) {
    static const int64_t Ks[] = {5, 700};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (size_t d = 0; d < 3; d++)
        for (int ki = 0; ki < 2; ki++) {
            dcase g;
            ASSERT_TRUE(case_make(&g, dtypes[d], 0, 1, 45, 70, Ks[ki], 2, 0.75f, 0.0f));
            size_t n = (size_t)(g.M * g.ldc);
            float *want = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
            float *bias = malloc(sizeof(float) * (size_t)g.N);
            for (int64_t j = 0; j < g.N; j++) bias[j] = frand();
            FOR_EACH_ISA(ctx) {
                memcpy(want, g.C, sizeof(float) * n);
                for (int64_t i = 0; i < g.M; i++)
                    memcpy(want + i * g.ldc, bias, sizeof(float) * (size_t)g.N);
                ASSERT_OK(ctx, mha__gemm_dt(ctx, NULL, 0, 1, g.M, g.N, g.K, 0.75f, g.A.x, g.lda,
                                            g.B.x, g.ldb, g.dt, 1.0f, NULL, want, g.ldc));
                mha__gemm_ws ws = {0};
                for (int rep = 0; rep < 2; rep++) {
                    memcpy(got, g.C, sizeof(float) * n); /* NaN: the old C is never read */
                    long before = mha__alloc_count();
                    if (rep == 1) mha__fault_after(0); /* the kept workspace suffices */
                    mha_status st = mha__gemm_dt(ctx, &ws, 0, 1, g.M, g.N, g.K, 0.75f, g.A.x, g.lda,
                                                 g.B.x, g.ldb, g.dt, 0.0f, bias, got, g.ldc);
                    mha__fault_after(-1);
                    ASSERT_OK(ctx, st);
                    if (rep == 1) ASSERT_EQ(mha__alloc_count(), before);
                    if (memcmp(want, got, sizeof(float) * n) != 0) {
                        FAILF("isa %s, dtype %s, K %lld, call %d: fused bias differs from fill + "
                              "beta = 1",
                              mha_isa_name(mha_ctx_isa(ctx)), mha_dtype_name(g.dt), (long long)g.K,
                              rep + 1);
                        break;
                    }
                }
                mha__gemm_ws_free(&ws);
            }
            free(want), free(got), free(bias);
            case_free(&g);
        }
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(pack_h_converts_exactly);
    RUN(cvt_every_table_bit_exact);
    RUN(scale_every_table_bit_exact);
    RUN(pack_bf16_pairs);
    RUN(bf16_micro_kernel_edge_tiles);
    RUN(bf16_kernel_selected_by_the_cpu_bit);
    RUN(describe_names_what_runs);
    RUN(k_zero_and_empty);
    RUN(every_isa_dtype_layout_and_edge_shape);
    RUN(bitwise_identical_for_any_thread_count);
    RUN(bad_arguments_named_c_unchanged);
    RUN(allocation_failure_leaves_c_unchanged);
    RUN(workspace_and_fused_bias_every_dtype);
    return harness_report();
}
