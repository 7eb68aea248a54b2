/* test_threads_cap.c - thread counts are capped at MHA_MAX_THREADS (fault 1: 30000 threads, or
 * OMP_NUM_THREADS=100000, crashed inside libgomp). Run twice by CTest: as is, and with
 * OMP_NUM_THREADS=100000 (tests/threads.cmake), where the default must come out capped. */
#include "harness.h"

/* A small module forward and backward on ctx: runs without crashing, gives finite numbers. */
static mha_status run_layer(mha_ctx *ctx) {
    enum {
        E = 16,
        H = 2,
        B = 2,
        L = 33
    };
    static float x[B * L * E], y[B * L * E], dx[B * L * E];
    for (int i = 0; i < B * L * E; i++) x[i] = (float)sin(0.1 * i);
    int64_t shape[3] = {B, L, E};
    mha_tensor tx = mha_tensor_make(x, 3, shape), ty = mha_tensor_make(y, 3, shape);
    mha_tensor tdx = mha_tensor_make(dx, 3, shape);
    mha_module *m;
    mha_config cfg = mha_config_default(E, H);
    mha_status st = mha_module_create(ctx, &cfg, &m);
    if (st) return st;
    if (!(st = mha_module_forward(ctx, m, NULL, &tx, NULL, NULL, NULL, &ty, NULL)))
        st = mha_module_backward(ctx, m, &ty, &tdx, NULL, NULL);
    mha_module_free(m);
    for (int i = 0; i < B * L * E && !st; i++)
        if (!isfinite(y[i]) || !isfinite(dx[i])) st = MHA_ERR_STATE;
    return st;
}

TEST(set_threads_refuses_beyond_the_limit) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 2));
    ASSERT_EQ(mha_ctx_set_threads(ctx, 30000), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "mha_ctx_set_threads: n: got 30000, expected 1 to 1024 (MHA_MAX_THREADS)");
    ASSERT_EQ(mha_ctx_threads(ctx), 2); /* unchanged */
    ASSERT_EQ(mha_ctx_set_threads(ctx, MHA_MAX_THREADS + 1), MHA_ERR_INVALID_ARG);
    ASSERT_OK(ctx, mha_ctx_set_threads(ctx, MHA_MAX_THREADS)); /* the limit itself runs */
    ASSERT_EQ(mha_ctx_threads(ctx), MHA_MAX_THREADS);
    ASSERT_OK(ctx, run_layer(ctx));
    mha_ctx_free(ctx);
}

/* The default (and n = 0) follow $OMP_NUM_THREADS up to the limit. */
TEST(default_threads_capped) {
    const char *env = getenv("OMP_NUM_THREADS");
    long want = env ? strtol(env, NULL, 10) : 0;
    if (want > MHA_MAX_THREADS) want = MHA_MAX_THREADS;
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_TRUE(mha_ctx_threads(ctx) >= 1 && mha_ctx_threads(ctx) <= MHA_MAX_THREADS);
    if (want > 0) ASSERT_EQ(mha_ctx_threads(ctx), want);
    ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 1));
    ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 0));
    if (want > 0) ASSERT_EQ(mha_ctx_threads(ctx), want);
    ASSERT_OK(ctx, run_layer(ctx));
    ASSERT_OK(NULL, run_layer(NULL)); /* a NULL context uses the same default */
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(set_threads_refuses_beyond_the_limit);
    RUN(default_threads_capped);
    return harness_report();
}
