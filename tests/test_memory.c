/* test_memory.c - memory grows with the sequence length, not its square: the module's causal
 * forward and backward at L = S = 16384 (one head of 64) must stay far below the 1 GiB that a
 * single L x S float matrix would take. Peak resident memory from getrusage; nothing timed. */
#include "harness.h"

#include <sys/resource.h>

static long peak_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024; /* Linux: kilobytes */
}

TEST(long_causal_forward_and_backward_stay_linear) {
    const int64_t L = 16384, E = 64, H = 1;
    mha_ctx *ctx;
    mha_module *m;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(E, H);
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    float *x = malloc(sizeof(float) * L * E), *y = malloc(sizeof(float) * L * E);
    float *dx = malloc(sizeof(float) * L * E);
    ASSERT_TRUE(x && y && dx);
    for (int64_t i = 0; i < L * E; i++) x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    int64_t shape[3] = {1, L, E};
    mha_tensor tx = mha_tensor_make(x, 3, shape), ty = mha_tensor_make(y, 3, shape);
    mha_tensor tdx = mha_tensor_make(dx, 3, shape);
    mha_mask mask = mha_mask_default();
    mask.causal = MHA_CAUSAL_TOP_LEFT;
    mha_forward_opts fo = mha_forward_opts_default();
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, &mask, &ty, NULL));
    ASSERT_OK(ctx, mha_module_backward(ctx, m, &ty, &tdx, NULL, NULL)); /* dY = Y */
    long mib = peak_rss_mib();
    printf("  peak resident memory: %ld MiB (an L x S matrix alone: 1024 MiB)\n", mib);
    ASSERT_TRUE(mib < 256);
    for (int64_t i = 0; i < L * E; i++) ASSERT_TRUE(isfinite(y[i]) && isfinite(dx[i]));
    free(x), free(y), free(dx);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(long_causal_forward_and_backward_stay_linear);
    return harness_report();
}
