/* quickstart.c - the README's example: a causal self-attention layer, forward and backward. */
#include <mha.h>
#include <stdio.h>

int main(void) {
    enum {
        B = 2,
        L = 16,
        E = 64,
        H = 4
    };
    static float x[B * L * E], y[B * L * E], dy[B * L * E], dx[B * L * E];
    for (int i = 0; i < B * L * E; i++)
        x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f, dy[i] = 1;
    mha_ctx *ctx;
    mha_module *m;
    mha_config cfg = mha_config_default(E, H); /* nn.MultiheadAttention(64, 4) */
    if (mha_ctx_create(&ctx) != MHA_OK || mha_module_create(ctx, &cfg, &m) != MHA_OK) {
        fprintf(stderr, "%s\n", mha_ctx_errmsg(ctx)); /* e.g. "...: got 3, expected ..." */
        return 1;
    }
    int64_t shape[3] = {B, L, E};
    mha_tensor tx = mha_tensor_make(x, 3, shape), ty = mha_tensor_make(y, 3, shape);
    mha_tensor tdy = mha_tensor_make(dy, 3, shape), tdx = mha_tensor_make(dx, 3, shape);
    mha_mask mask = mha_mask_default();
    mask.causal = MHA_CAUSAL_TOP_LEFT; /* query i sees keys 0..i */
    mha_forward_opts fo = mha_forward_opts_default();
    mha_status st = mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, &mask, &ty, NULL);
    if (st == MHA_OK) st = mha_module_backward(ctx, m, &tdy, &tdx, NULL, NULL);
    if (st != MHA_OK) fprintf(stderr, "mha: %s\n", mha_ctx_errmsg(ctx));
    else printf("y[0] = %f, dx[0] = %f\n", y[0], dx[0]);
    mha_module_free(m);
    mha_ctx_free(ctx);
    return st == MHA_OK ? 0 : 1;
}
