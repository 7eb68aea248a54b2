/* decode.h - the KV-cache attention's internal entry point (src/attn/attn_decode.c), shared by
 * the cache object (kv_cache.c) and the module's incremental call (module.c). Never installed. */
#ifndef MHA_ATTN_DECODE_H
#define MHA_ATTN_DECODE_H

#include "core/internal.h"

/* mha_attn_kvcache with messages naming fn. */
mha_status mha__attn_kvcache(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                             const mha_tensor *q, mha_tensor *k_cache, mha_tensor *v_cache,
                             const mha_tensor *k_new, const mha_tensor *v_new,
                             const int32_t *cache_seqlens, const mha_mask *mask, mha_tensor *out,
                             mha_tensor *lse);

/* mha_kv_cache_attend with messages naming fn. */
mha_status mha__kv_cache_attend(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                mha_kv_cache *c, const mha_tensor *q, const mha_tensor *k_new,
                                const mha_tensor *v_new, const mha_mask *mask, mha_tensor *out,
                                mha_tensor *lse);

#endif
