/* describe.c - mha_ctx_describe: the kernels a context uses, for `mha info`. */
#include "internal.h"
#include "kernels/kernels.h"

#include <stdio.h>

mha_status mha_ctx_describe(const mha_ctx *ctx, char *buf, size_t n) {
    if (!buf || n == 0)
        return mha__err(NULL, MHA_ERR_INVALID_ARG,
                        "mha_ctx_describe: buf: got %s, expected a buffer of n >= 1 bytes",
                        buf ? "n = 0" : "NULL");
    const mha_kernels *k = mha__ctx_kernels(ctx), *g = mha__kernels_for(MHA_ISA_GENERIC);
    size_t used = 0;
#define PUT(...)                                                                             \
    do {                                                                                     \
        int w_ = snprintf(buf + used, n - used, __VA_ARGS__);                                \
        if (w_ > 0) used = used + (size_t)w_ < n ? used + (size_t)w_ : n - 1;               \
    } while (0)
    PUT("kernels (%s table):\n", k->name);
    PUT("  gemm micro      %s  (MR %d x NR %d; blocks KC %d, MC %d, NC %d)\n", k->gemm_ukr_name,
        k->gemm_mr, k->gemm_nr, k->gemm_kc, k->gemm_mc, k->gemm_nc);
    PUT("  gemm packing    %s\n", k->gemm_pack_name);
    PUT("  attention tiles BR %lld x BC %lld:", (long long)k->attn_br, (long long)k->attn_bc);
    const struct {
        const char *name;
        int generic;
    } at[] = {{"scores", k->attn_scores == g->attn_scores},
              {"probs", k->attn_probs == g->attn_probs},
              {"pv", k->attn_pv == g->attn_pv},
              {"ptv", k->attn_ptv == g->attn_ptv},
              {"dsoftmax", k->attn_dsoftmax == g->attn_dsoftmax}};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++)
        PUT(" %s (%s)", at[i].name, at[i].generic ? "generic" : k->name);
    PUT("\n");
#undef PUT
    return MHA_OK;
}
