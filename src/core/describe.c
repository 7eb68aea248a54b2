/* describe.c - mha_ctx_describe: the kernels a context runs and their tile sizes, read from its
 * kernel table (what the drivers call), for `mha info`. */
#include "internal.h"
#include "kernels/kernels.h"

#include <stdio.h>

/* Which table's implementation a slot holds: the generic one, or the table's own. */
static const char *by(const mha_kernels *k, int generic) { return generic ? "generic" : k->name; }

mha_status mha_ctx_describe(mha_ctx *ctx, char *buf, size_t n) {
    mha__clear(ctx);
    if (!buf || n == 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_ctx_describe: buf: got %s, expected a buffer of n >= 1 bytes",
                        buf ? "n = 0" : "NULL");
    const mha_kernels *k = mha__ctx_kernels(ctx), *g = mha__kernels_for(MHA_ISA_GENERIC);
    size_t used = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        int w_ = snprintf(buf + used, n - used, __VA_ARGS__);                                      \
        if (w_ > 0) used = used + (size_t)w_ < n ? used + (size_t)w_ : n - 1;                      \
    } while (0)
#define BY(slot) by(k, k->slot == g->slot)
    PUT("kernels of the %s table (the ones that run):\n", k->name);
    PUT("  gemm micro    %s: MR %d x NR %d; blocks KC %d, MC %d, NC %d\n", k->gemm_ukr_name,
        k->gemm_mr, k->gemm_nr, k->gemm_kc, k->gemm_mc, k->gemm_nc);
    PUT("  gemm packing  %s\n", k->gemm_pack_name);
    if (k->gemm_bf16_ukr)
        PUT("  gemm bf16     %s (vdpbf16ps): MR %d x NR %d; blocks KC %d,\n"
            "                MC %d, NC %d; bf16 pairs packed by %s\n",
            k->gemm_bf16_ukr_name, k->gemm_bf16_mr, k->gemm_bf16_nr, k->gemm_bf16_kc,
            k->gemm_bf16_mc, k->gemm_bf16_nc, k->gemm_bf16_pack_name);
    PUT("  gemm %-8s converted to float32 by %s for the gemm micro-kernel\n",
        k->gemm_bf16_ukr ? "f16" : "bf16/f16", k->gemm_pack_h_name);
    PUT("  forward       attn_fwd (%s), fused, on %lld x %lld tiles (query rows x keys); keys\n"
        "                packed by attn_kpack (%s)\n",
        BY(attn_fwd), (long long)k->attn_fwd_br, (long long)k->attn_fwd_bc, BY(attn_kpack));
    PUT("  with dropout  attn_fwd_drop (%s), keep decisions by attn_dropout (%s)\n",
        BY(attn_fwd_drop), BY(attn_dropout));
    PUT("  weights       attn_scores (%s), attn_probs (%s) on %lld x %lld tiles (when asked for)\n",
        BY(attn_scores), BY(attn_probs), (long long)k->attn_br, (long long)k->attn_bc);
    PUT("  backward      %lld x %lld tiles: attn_scores_kp (%s), attn_probs (%s),\n"
        "                attn_ptv (%s), attn_pv (%s), attn_dsoftmax (%s);\n"
        "                keys packed by attn_kpack; with dropout attn_dropout (%s),\n"
        "                attn_dropout_apply (%s)\n",
        (long long)k->attn_br, (long long)k->attn_bc, BY(attn_scores_kp), BY(attn_probs),
        BY(attn_ptv), BY(attn_pv), BY(attn_dsoftmax), BY(attn_dropout), BY(attn_dropout_apply));
    PUT("  decoding      attn_decode (%s): a few query rows against a key/value cache in\n"
        "                fixed chunks of keys read in place (mha_attn_kvcache)\n",
        BY(attn_decode));
    if (k->attn_fwd_bf16)
        PUT("  bf16          %s and the backward's attn_*_bf16: vdpbf16ps\n"
            "                products, the same tiles; f16: the float32 kernels on float32 "
            "copies\n",
            k->attn_bf16_name);
    else PUT("  bf16, f16     the float32 kernels on float32 copies (no bf16 kernels here)\n");
#undef BY
#undef PUT
    return MHA_OK;
}
