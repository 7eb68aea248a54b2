/* decode.c - the generic flash-decoding chunk kernel (mha__attn_decode_generic), the reference
 * for the SIMD one (../x86/decode_skel.h). Contract: DECODE KERNEL in ../kernels.h.
 *
 * Per head and query row, two passes over the chunk's allowed keys: the row max of the scores, then
 * l = sum exp(s - m) and O = sum exp(s - m) V (scores recomputed: this is the oracle, plain
 * and obviously right, not the fast path). Keys and values are read in the cache's element
 * type (float32, bfloat16 or half), each element converted to float32 as it is read (exact:
 * ../cvt.h). */
#include "../cvt.h"
#include "../kernels.h"

#include <math.h>

/* Element i of a cache row x of element type kv, as float32. */
static float kv_at(mha_dtype kv, const void *x, int64_t i) {
    switch (kv) {
    case MHA_DTYPE_BF16: return mha__bf16_to_f32(((const uint16_t *)x)[i]);
    case MHA_DTYPE_F16: return mha__f16_to_f32(((const uint16_t *)x)[i]);
    default: return ((const float *)x)[i];
    }
}

/* Row c of a cache matrix x of element type kv with row stride ld (elements). */
static const void *kv_row(mha_dtype kv, const void *x, int64_t c, int64_t ld) {
    return (const char *)x + c * ld * (kv == MHA_DTYPE_F32 ? 4 : 2);
}

/* The score of row a against key row k: a . k, softcap, ALiBi (the contract's definition). */
static float decode_score(mha_dtype kv, const float *a, const void *k, int64_t n,
                          const mha__attn_decode_mask *md, int64_t r, int64_t c) {
    float s = 0;
    for (int64_t d = 0; d < n; d++) s += a[d] * kv_at(kv, k, d);
    if (md->softcap > 0) s = md->softcap * tanhf(s / md->softcap);
    if (md->slope) s -= md->slope[r] * fabsf((float)(md->pos[r] - c));
    return s;
}

/* One head: its rows' partial softmax over the chunk into m, l, O [rows, nv] (with
 * md->accumulate, continued from theirs: O and l scaled by exp(m - m'), m' the new max). */
static void decode_head(mha_dtype kv, int64_t rows, int64_t n, int64_t nv, const float *A,
                        int64_t lda, const void *K, int64_t ldk, const void *V, int64_t ldv,
                        const mha__attn_decode_mask *md, float *m, float *l, float *O) {
    for (int64_t r = 0; r < rows; r++) {
        const float *a = A + r * lda;
        float *o = O + r * nv, mx = -INFINITY, sum = 0, m0 = -INFINITY, l0 = 0;
        if (md->accumulate) m0 = m[r], l0 = l[r];
        else
            for (int64_t x = 0; x < nv; x++) o[x] = 0;
        for (int64_t c = md->lo[r]; c < md->hi[r]; c++) {
            float s = decode_score(kv, a, kv_row(kv, K, c, ldk), n, md, r, c);
            if (s > mx || isnan(s)) mx = s;
        }
        if (m0 > mx || isnan(m0)) mx = m0;
        if (mx == -INFINITY) { /* nothing allowed, or every allowed score -inf */
            m[r] = -INFINITY, l[r] = 0;
            continue;
        }
        if (md->accumulate) { /* the earlier keys' sums, rescaled to the new max */
            const float alpha = m0 == -INFINITY ? 0.0f : expf(m0 - mx);
            sum = alpha * l0;
            for (int64_t x = 0; x < nv; x++) o[x] *= alpha;
        }
        for (int64_t c = md->lo[r]; c < md->hi[r]; c++) {
            float s = decode_score(kv, a, kv_row(kv, K, c, ldk), n, md, r, c);
            if (s == -INFINITY) continue;
            float p = expf(s - mx);
            sum += p;
            const void *v = kv_row(kv, V, c, ldv);
            for (int64_t x = 0; x < nv; x++) o[x] += p * kv_at(kv, v, x);
        }
        m[r] = mx, l[r] = sum;
    }
}

void mha__attn_decode_generic(mha_dtype kv, int64_t nh, int64_t rows, int64_t bc, int64_t n,
                              int64_t nv, const float *A, int64_t lda, int64_t sa, const void *K,
                              int64_t ldk, int64_t sk, const void *V, int64_t ldv, int64_t sv,
                              const mha__attn_decode_mask *md, float *P, int64_t sp) {
    (void)bc;
    for (int64_t t = 0; t < nh; t++) {
        mha__attn_decode_mask mh = *md; /* the head's slopes */
        if (md->slope) mh.slope = md->slope + t * rows;
        float *m = P + t * sp;
        decode_head(kv, rows, n, nv, A + t * sa, lda, kv_row(kv, K, t, sk), ldk,
                    kv_row(kv, V, t, sv), ldv, &mh, m, m + rows, m + 2 * rows);
    }
}
