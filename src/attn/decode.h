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

/* mha_kv_cache_create with messages naming fn (the context's message is not cleared). */
mha_status mha__kv_cache_create(mha_ctx *ctx, const char *fn, int64_t batch, int64_t capacity,
                                int64_t kv_heads, int64_t head_dim, int64_t head_dim_v,
                                mha_dtype dtype, mha_kv_cache **out);

/* mha_kv_cache_attend with messages naming fn. */
mha_status mha__kv_cache_attend(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                mha_kv_cache *c, const mha_tensor *q, const mha_tensor *k_new,
                                const mha_tensor *v_new, const mha_mask *mask, mha_tensor *out,
                                mha_tensor *lse);

#endif
