/* test_core.c - contexts, status strings, tensor views, ISA selection, allocation. */
#include "harness.h"
#include "core/internal.h"
#include "kernels/kernels.h"
#include "core/plan.h"

TEST(status_strings) {
    for (int s = 0; s >= MHA_ERR_STATE; s--) {
        const char *str = mha_status_str((mha_status)s);
        ASSERT_TRUE(str && *str && strcmp(str, "unknown status") != 0);
    }
    ASSERT_TRUE(strcmp(mha_status_str((mha_status)-99), "unknown status") == 0);
}

TEST(ctx_threads_and_errors) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_TRUE(mha_ctx_threads(ctx) >= 1);
    ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 3));
    ASSERT_EQ(mha_ctx_threads(ctx), 3);
    ASSERT_EQ(mha_ctx_set_threads(ctx, -1), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_ctx_set_threads: n: got -1");
    ASSERT_EQ(mha_ctx_set_threads(NULL, 1), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "ctx: got NULL");
    ASSERT_EQ(mha_ctx_create(NULL), MHA_ERR_INVALID_ARG);
    mha_ctx_free(ctx);
    mha_ctx_free(NULL);
}

TEST(isa_selection) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_TRUE(mha_isa_supported(MHA_ISA_GENERIC));
    ASSERT_OK(ctx, mha_ctx_set_isa(ctx, MHA_ISA_GENERIC));
    ASSERT_EQ(mha_ctx_isa(ctx), MHA_ISA_GENERIC);
    for (int i = MHA_ISA_GENERIC; i <= MHA_ISA_AVX512; i++) {
        mha_status st = mha_ctx_set_isa(ctx, (mha_isa)i);
        if (mha_isa_supported((mha_isa)i)) {
            ASSERT_EQ(st, MHA_OK);
            ASSERT_TRUE(strcmp(mha__ctx_kernels(ctx)->name, mha_isa_name((mha_isa)i)) == 0);
        } else {
            ASSERT_EQ(st, MHA_ERR_UNSUPPORTED);
        }
    }
    ASSERT_EQ(mha_ctx_set_isa(ctx, (mha_isa)42), MHA_ERR_INVALID_ARG);
    ASSERT_TRUE(strlen(mha_cpu_features()) > 0);
    mha_ctx_free(ctx);
}

TEST(env_isa_is_validated) {
    mha_ctx *ctx = NULL;
    setenv("MHA_ISA", "sse9", 1);
    ASSERT_EQ(mha_ctx_create(&ctx), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "$MHA_ISA: got \"sse9\"");
    mha_ctx_free(ctx);
    setenv("MHA_ISA", "generic", 1);
    ASSERT_EQ(mha_ctx_create(&ctx), MHA_OK);
    ASSERT_EQ(mha_ctx_isa(ctx), MHA_ISA_GENERIC);
    mha_ctx_free(ctx);
    unsetenv("MHA_ISA");
}

TEST(tensor_views) {
    float buf[24];
    int64_t shape[3] = {2, 3, 4};
    mha_tensor t = mha_tensor_make(buf, 3, shape);
    ASSERT_EQ(t.stride[0], 12);
    ASSERT_EQ(t.stride[1], 4);
    ASSERT_EQ(t.stride[2], 1);
    ASSERT_EQ(mha_tensor_numel(&t), 24);
    int64_t want[3] = {2, 3, 5};
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_EQ(mha__check_tensor(ctx, "f", "x", &t, 3, want, "why"), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "f: x.shape[2]: got 4, expected 5 (why)");
    ASSERT_EQ(mha__check_tensor(ctx, "f", "x", &t, 2, NULL, NULL), MHA_ERR_SHAPE);
    t.stride[2] = 2;
    ASSERT_EQ(mha__check_tensor(ctx, "f", "x", &t, 3, NULL, NULL), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "stride[2]: got 2, expected 1");
    mha_ctx_free(ctx);
}

/* Fault 9: a NULL shape gives an invalid view (no crash) that validation rejects; element
 * counts beyond int64 are -1, never a wrapped product (signed overflow). */
TEST(tensor_views_invalid_and_overflowing) {
    float buf[4];
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_tensor t = mha_tensor_make(buf, 3, NULL);
    ASSERT_EQ(t.ndim, -1);
    ASSERT_EQ(mha_tensor_numel(&t), -1);
    ASSERT_EQ(mha__check_tensor(ctx, "f", "x", &t, 3, NULL, NULL), MHA_ERR_SHAPE);
    int64_t one[1] = {4};
    mha_tensor a = mha_tensor_make(buf, 1, one);
    mha_attn_params p = mha_attn_params_default();
    ASSERT_EQ(mha_attn_forward(ctx, &p, &t, &t, &t, NULL, &a, NULL, NULL), MHA_ERR_SHAPE);
    t = mha_tensor_strided(buf, 2, NULL, NULL);
    ASSERT_EQ(t.ndim, -1);
    t = mha_tensor_make(buf, 0, NULL); /* a scalar needs no shape */
    ASSERT_EQ(t.ndim, 0);
    ASSERT_EQ(mha_tensor_numel(&t), 1);
    t = mha_tensor_make(buf, MHA_MAX_DIMS + 1, one);
    ASSERT_EQ(t.ndim, -1);
    ASSERT_EQ(mha_tensor_numel(NULL), -1);
    /* Contiguous strides beyond int64 (the inner sizes alone overflow): invalid. */
    int64_t big[3] = {0, INT64_MAX / 2, 3};
    ASSERT_EQ(mha_tensor_make(buf, 3, big).ndim, -1);
    /* Element counts: exact up to INT64_MAX, -1 beyond, 0 with any empty dimension. */
    int64_t lim[2] = {INT64_MAX / 7, 7}, over[2] = {INT64_MAX / 7 + 1, 7};
    int64_t st[2] = {0, 1}, neg[2] = {-2, 3}, empty[3] = {INT64_MAX, INT64_MAX, 0};
    t = mha_tensor_strided(buf, 2, lim, st);
    ASSERT_EQ(mha_tensor_numel(&t), INT64_MAX / 7 * 7);
    t = mha_tensor_strided(buf, 2, over, st);
    ASSERT_EQ(mha_tensor_numel(&t), -1);
    ASSERT_EQ(mha__check_tensor(ctx, "f", "x", &t, 2, NULL, NULL), MHA_ERR_SHAPE);
    t = mha_tensor_strided(buf, 2, neg, st);
    ASSERT_EQ(mha_tensor_numel(&t), -1);
    int64_t est[3] = {0, 0, 1};
    t = mha_tensor_strided(buf, 3, empty, est);
    ASSERT_EQ(mha_tensor_numel(&t), 0);
    mha_ctx_free(ctx);
}

TEST(alloc_fault_injection_and_overflow) {
    size_t out;
    ASSERT_TRUE(!mha__mul_size(SIZE_MAX / 2, 3, &out));
    ASSERT_TRUE(mha__mul_size(1000, 1000, &out) && out == 1000000);
    ASSERT_TRUE(!mha__add_size(SIZE_MAX, 1, &out));
    mha__fault_after(1);
    void *a = mha__malloc(10), *b = mha__malloc(10), *c = mha__malloc(10);
    ASSERT_TRUE(a != NULL && b == NULL && c != NULL);
    ASSERT_EQ(((uintptr_t)a) % 64, 0);
    mha__free(a);
    mha__free(c);
    ASSERT_TRUE(mha__calloc(SIZE_MAX / 4, 8) == NULL);
}

TEST(philox_is_deterministic_and_uniform) {
    uint32_t a[4], b[4];
    mha__philox4x32(42, 1, 2, 3, 4, a);
    mha__philox4x32(42, 1, 2, 3, 4, b);
    ASSERT_TRUE(memcmp(a, b, sizeof a) == 0);
    mha__philox4x32(43, 1, 2, 3, 4, b);
    ASSERT_TRUE(memcmp(a, b, sizeof a) != 0);
    /* Known-answer test from the Random123 distribution (philox4x32-10, all-zero inputs). */
    mha__philox4x32(0, 0, 0, 0, 0, a);
    ASSERT_EQ(a[0], 0x6627e8d5u);
    ASSERT_EQ(a[1], 0xe169c58du);
    ASSERT_EQ(a[2], 0xbc57ac4cu);
    ASSERT_EQ(a[3], 0x9b00dbd8u);
    double sum = 0;
    for (uint32_t i = 0; i < 10000; i++) {
        mha__philox4x32(7, i, 0, 0, 0, a);
        for (int j = 0; j < 4; j++) sum += a[j] / 4294967296.0;
    }
    ASSERT_TRUE(fabs(sum / 40000 - 0.5) < 0.01);
}

TEST(generic_sgemm_matches_reference) {
    enum {
        M = 7,
        N = 300,
        K = 13
    };
    static float A[M * K], At[K * M], B[K * N], Bt[N * K], C[M * N];
    static double R[M * N];
    for (int i = 0; i < M * K; i++) A[i] = (float)((i * 37 % 101) - 50) / 50.0f;
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) At[k * M + i] = A[i * K + k];
    for (int i = 0; i < K * N; i++) B[i] = (float)((i * 53 % 97) - 48) / 48.0f;
    for (int k = 0; k < K; k++)
        for (int j = 0; j < N; j++) Bt[j * K + k] = B[k * N + j];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)A[i * K + k] * B[k * N + j];
            R[i * N + j] = 2.0 * s;
        }
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            for (int i = 0; i < M * N; i++) C[i] = NAN;
            mha__sgemm_generic_f32(ta, tb, M, N, K, 2.0f, ta ? At : A, ta ? M : K, tb ? Bt : B,
                                   tb ? K : N, 0.0f, C, N);
            ASSERT_NEAR_TENSOR("C", C, R, M * N, 1e-5, 1e-5);
        }
}

TEST(public_sgemm_validates_and_computes) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1}, C[4];
    /* [2,3] x [3,2] */
    FOR_EACH_ISA(ctx) {
        ASSERT_OK(ctx, mha_sgemm(ctx, 0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2));
        ASSERT_TRUE(C[0] == 4 && C[1] == 5 && C[2] == 10 && C[3] == 11);
    }
    ASSERT_EQ(mha_sgemm(ctx, 0, 0, 2, 2, 3, 1.0f, A, 2, B, 2, 0.0f, C, 2), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_sgemm: lda: got 2, expected >= 3");
    ASSERT_EQ(mha_sgemm(ctx, 0, 0, -1, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_sgemm(ctx, 0, 0, 2, 2, 3, 1.0f, NULL, 3, B, 2, 0.0f, C, 2), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "A: got NULL");
    char buf[1024];
    ASSERT_OK(ctx, mha_ctx_describe(ctx, buf, sizeof buf));
    ASSERT_STR_CONTAINS(buf, "gemm micro");
    char tiny[8];
    ASSERT_OK(ctx, mha_ctx_describe(ctx, tiny, sizeof tiny));
    ASSERT_EQ(strlen(tiny), 7);
    ASSERT_EQ(mha_ctx_describe(ctx, NULL, 10), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_ctx_describe: buf: got NULL"); /* in ctx */
    ASSERT_OK(ctx, mha_ctx_describe(ctx, buf, sizeof buf));
    ASSERT_TRUE(!strcmp(mha_ctx_errmsg(ctx), "")); /* and cleared by the next success */
    /* K = 0 (C = beta C): lda >= 1 is asked for, and said so */
    ASSERT_EQ(mha_sgemm(ctx, 0, 0, 2, 2, 0, 1.0f, A, 0, B, 2, 0.5f, C, 2), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_sgemm: lda: got 0, expected >= 1 (K, at least 1)");
    /* sizes whose offsets overflow: refused before anything is formed from them, C unchanged */
    for (int i = 0; i < 4; i++) C[i] = 7.0f;
    ASSERT_EQ(mha_sgemm(ctx, 0, 0, INT64_MAX, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2),
              MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_sgemm: A: got 9223372036854775807 rows of 2");
    ASSERT_EQ(mha_sgemm(ctx, 0, 0, 2, 2, INT64_MAX, 1.0f, A, INT64_MAX, B, 2, 0.0f, C, 2),
              MHA_ERR_INVALID_ARG);
    ASSERT_EQ(
        mha_gemm(ctx, 0, 0, INT64_MAX / 4, 2, 2, 1.0f, A, 2, B, 2, MHA_DTYPE_BF16, 0.0f, C, 2),
        MHA_ERR_INVALID_ARG);
    for (int i = 0; i < 4; i++) ASSERT_TRUE(C[i] == 7.0f);
    mha_ctx_free(ctx);
}

TEST(workspace_plan) {
    typedef struct {
        float *a;
        uint8_t *b;
        double *c;
    } views;
    mha__plan pl;
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, views, a, sizeof(float), 3, 5);
    MHA__PLAN_ADD(&pl, views, b, 1, 0, 7);
    MHA__PLAN_ADD(&pl, views, c, sizeof(double), 2, 1);
    ASSERT_EQ((long long)pl.per_copy, 64 + 0 + 64);
    void *ws;
    ASSERT_EQ(mha__plan_alloc(&pl, NULL, "t", 3, &ws), MHA_OK);
    views v0, v2;
    mha__plan_point(&pl, ws, 0, &v0);
    mha__plan_point(&pl, ws, 2, &v2);
    ASSERT_TRUE((void *)v0.a == ws && (uintptr_t)v0.c % 64 == 0);
    ASSERT_TRUE((char *)v2.a == (char *)ws + 2 * pl.per_copy);
    ASSERT_TRUE((char *)v2.c == (char *)v2.a + 64);
    mha__free(ws);
    /* a size that overflows is named, and nothing is allocated */
    MHA__PLAN_ADD(&pl, views, b, sizeof(float), INT64_MAX / 2, 4);
    ASSERT_EQ(mha__plan_alloc(&pl, NULL, "fn", 1, &ws), MHA_ERR_NOMEM);
    ASSERT_TRUE(ws == NULL);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "fn: workspace: the size of 'b' overflows");
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, views, a, sizeof(float), -1, 1);
    ASSERT_EQ(mha__plan_alloc(&pl, NULL, "fn", 1, &ws), MHA_ERR_NOMEM);
    /* nested: per-thread copies of an inner plan, each copy's regions together */
    typedef struct {
        float *x;
        uint8_t *y;
    } tiles;
    typedef struct {
        double *shared;
        void *threads;
    } outer;
    mha__plan in, out;
    mha__plan_init(&in);
    MHA__PLAN_ADD(&in, tiles, x, sizeof(float), 20, 1); /* 80 -> 128 bytes */
    MHA__PLAN_ADD(&in, tiles, y, 1, 3, 1);              /* 3 -> 64 */
    mha__plan_init(&out);
    MHA__PLAN_ADD(&out, outer, shared, sizeof(double), 1, 1);
    MHA__PLAN_ADD_COPIES(&out, outer, threads, &in, 3);
    ASSERT_EQ((long long)out.per_copy, 64 + 3 * 192);
    ASSERT_EQ(mha__plan_alloc(&out, NULL, "t", 1, &ws), MHA_OK);
    outer o;
    tiles t1;
    mha__plan_point(&out, ws, 0, &o);
    mha__plan_point(&in, o.threads, 1, &t1);
    ASSERT_TRUE((char *)t1.x == (char *)ws + 64 + 192 && (char *)t1.y == (char *)t1.x + 128);
    mha__free(ws);
    MHA__PLAN_ADD(&in, tiles, x, sizeof(float), INT64_MAX, 2);
    mha__plan_init(&out);
    MHA__PLAN_ADD_COPIES(&out, outer, threads, &in, 2);
    ASSERT_EQ(mha__plan_alloc(&out, NULL, "fn", 1, &ws), MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "the size of 'threads' overflows");
    /* allocation failure is reported */
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, views, a, sizeof(float), 4, 4);
    mha__fault_after(0);
    ASSERT_EQ(mha__plan_alloc(&pl, NULL, "fn", 2, &ws), MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "fn: workspace: out of memory (128 bytes)");
}

TEST(tensor_overlap) {
    static float buf[2 * 5 * 3 * 4 * 8];
    /* a packed [B=2, T=5, 3, H=4, D=8] buffer: q, k, v as [B, H, T, D] views */
    int64_t sh[4] = {2, 4, 5, 8}, st[4] = {5 * 3 * 4 * 8, 8, 3 * 4 * 8, 1};
    mha_tensor q = mha_tensor_strided(buf, 4, sh, st), k = mha_tensor_strided(buf + 32, 4, sh, st),
               v = mha_tensor_strided(buf + 64, 4, sh, st);
    ASSERT_EQ(mha__tensors_overlap(&q, &k), 0);
    ASSERT_EQ(mha__tensors_overlap(&k, &v), 0);
    ASSERT_EQ(mha__tensors_overlap(&v, &q), 0);
    ASSERT_EQ(mha__tensors_overlap(&q, &q), 1);
    mha_tensor k1 = mha_tensor_strided(buf + 33, 4, sh, st); /* shifted by one float */
    ASSERT_EQ(mha__tensors_overlap(&k, &k1), 1);
    ASSERT_EQ(mha__tensors_overlap(&q, &k1), 0); /* q's last column is 7, k1 starts at 33 */
    mha_tensor q2 = mha_tensor_strided(buf + 120 * 5, 4, sh, st); /* the next batch's row */
    ASSERT_EQ(mha__tensors_overlap(&q, &q2), 1);
    /* contiguous neighbours and disjoint halves */
    int64_t s2[2] = {4, 10};
    mha_tensor x = mha_tensor_make(buf, 2, s2), y = mha_tensor_make(buf + 40, 2, s2),
               z = mha_tensor_make(buf + 39, 2, s2);
    ASSERT_EQ(mha__tensors_overlap(&x, &y), 0);
    ASSERT_EQ(mha__tensors_overlap(&x, &z), 1);
    /* different strides with intersecting ranges: assumed to overlap */
    int64_t s3[2] = {10, 4};
    mha_tensor w = mha_tensor_make(buf + 20, 2, s3);
    ASSERT_EQ(mha__tensors_overlap(&x, &w), 1);
    int64_t s0[2] = {0, 4};
    mha_tensor e = mha_tensor_make(buf, 2, s0);
    ASSERT_EQ(mha__tensors_overlap(&x, &e), 0);
}

/* A view overlaps itself when two indices may address one element: stride-0 (broadcast)
 * dimensions and strides that do not step past the smaller ones; contiguous, transposed,
 * sliced and packed-interleaved views do not. */
TEST(tensor_self_overlap) {
    static float buf[1024];
    int64_t sh[4] = {2, 4, 5, 8}, st[4] = {5 * 3 * 4 * 8, 8, 3 * 4 * 8, 1};
    mha_tensor q = mha_tensor_strided(buf, 4, sh, st); /* a slice of packed [2, 5, 3, 4, 8] */
    ASSERT_EQ(mha__tensor_self_overlaps(&q), 0);
    int64_t s2[2] = {4, 10}, t2[2] = {1, 4}; /* a transposed [10, 4] */
    mha_tensor c = mha_tensor_make(buf, 2, s2), tr = mha_tensor_strided(buf, 2, s2, t2);
    ASSERT_EQ(mha__tensor_self_overlaps(&c), 0);
    t2[0] = 1, t2[1] = 3; /* elements (1, 0) and ... stride 3 <= reach 3 of stride 1: shared */
    tr = mha_tensor_strided(buf, 2, s2, t2);
    ASSERT_EQ(mha__tensor_self_overlaps(&tr), 1);
    int64_t b3[3] = {3, 2, 4}, z3[3] = {0, 4, 1}; /* expand() of a [1, 2, 4] along dim 0 */
    mha_tensor e = mha_tensor_strided(buf, 3, b3, z3);
    ASSERT_EQ(mha__tensor_self_overlaps(&e), 1);
    int64_t o3[3] = {1, 2, 4}; /* the same strides with one row along the stride-0 dim: fine */
    mha_tensor e1 = mha_tensor_strided(buf, 3, o3, z3);
    ASSERT_EQ(mha__tensor_self_overlaps(&e1), 0);
    int64_t r2[2] = {2, 8}, w2[2] = {4, 1}; /* rows 4 apart, 8 long: rows share 4 elements */
    mha_tensor rw = mha_tensor_strided(buf, 2, r2, w2);
    ASSERT_EQ(mha__tensor_self_overlaps(&rw), 1);
    w2[0] = 8;
    rw = mha_tensor_strided(buf, 2, r2, w2);
    ASSERT_EQ(mha__tensor_self_overlaps(&rw), 0);
    int64_t e0[2] = {0, 8}; /* empty */
    mha_tensor em = mha_tensor_strided(buf, 2, e0, z3 + 1);
    ASSERT_EQ(mha__tensor_self_overlaps(&em), 0);
    ASSERT_EQ(mha__tensor_self_overlaps(NULL), 0);
    /* mha_tensor_convert refuses such a dst and leaves it unchanged */
    mha_ctx *ctx;
    ASSERT_OK(NULL, mha_ctx_create(&ctx));
    static float src[8] = {1, 2, 3, 4, 5, 6, 7, 8}, dst[8];
    int64_t s8[2] = {2, 4}, d8[2] = {0, 1};
    mha_tensor ts = mha_tensor_make(src, 2, s8), td = mha_tensor_strided(dst, 2, s8, d8);
    ASSERT_EQ(mha_tensor_convert(ctx, &ts, &td), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_tensor_convert: dst: got a view whose elements");
    for (int i = 0; i < 8; i++) ASSERT_TRUE(dst[i] == 0);
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(status_strings);
    RUN(ctx_threads_and_errors);
    RUN(isa_selection);
    RUN(env_isa_is_validated);
    RUN(tensor_views);
    RUN(tensor_views_invalid_and_overflowing);
    RUN(alloc_fault_injection_and_overflow);
    RUN(philox_is_deterministic_and_uniform);
    RUN(generic_sgemm_matches_reference);
    RUN(public_sgemm_validates_and_computes);
    RUN(workspace_plan);
    RUN(tensor_overlap);
    RUN(tensor_self_overlap);
    return harness_report();
}
