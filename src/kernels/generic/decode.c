/* decode.c - the generic flash-decoding chunk kernel (mha__attn_decode_generic), the reference
 * for the SIMD one (../x86/decode_skel.h). Contract: DECODE KERNEL in ../kernels.h.
 *
 * Per head and query row, two passes over the chunk's allowed keys: the row max of the scores, then
 * l = sum exp(s - m) and O = sum exp(s - m) V (scores recomputed: this is the oracle, plain
 * and obviously right, not the fast path). */
#include "../kernels.h"

#include <math.h>

/* The score of row a against key row k: a . k, softcap, ALiBi (the contract's definition). */
static float decode_score(const float *a, const float *k, int64_t n,
                          const mha__attn_decode_mask *md, int64_t r, int64_t c) {
    float s = 0;
    for (int64_t d = 0; d < n; d++) s += a[d] * k[d];
    if (md->softcap > 0) s = md->softcap * tanhf(s / md->softcap);
    if (md->slope) s -= md->slope[r] * fabsf((float)(md->pos[r] - c));
    return s;
}

/* One head: its rows' partial softmax over the chunk into m, l, O [rows, nv]. */
static void decode_head(int64_t rows, int64_t n, int64_t nv, const float *A, int64_t lda,
                        const float *K, int64_t ldk, const float *V, int64_t ldv,
                        const mha__attn_decode_mask *md, float *m, float *l, float *O) {
    for (int64_t r = 0; r < rows; r++) {
        const float *a = A + r * lda;
        float *o = O + r * nv, mx = -INFINITY, sum = 0;
        for (int64_t x = 0; x < nv; x++) o[x] = 0;
        for (int64_t c = md->lo[r]; c < md->hi[r]; c++) {
            float s = decode_score(a, K + c * ldk, n, md, r, c);
            if (s > mx || isnan(s)) mx = s;
        }
        if (mx == -INFINITY) { /* nothing allowed, or every allowed score -inf */
            m[r] = -INFINITY, l[r] = 0;
            continue;
        }
        for (int64_t c = md->lo[r]; c < md->hi[r]; c++) {
            float s = decode_score(a, K + c * ldk, n, md, r, c);
            if (s == -INFINITY) continue;
            float p = expf(s - mx);
            sum += p;
            const float *v = V + c * ldv;
            for (int64_t x = 0; x < nv; x++) o[x] += p * v[x];
        }
        m[r] = mx, l[r] = sum;
    }
}

void mha__attn_decode_generic(int64_t nh, int64_t rows, int64_t bc, int64_t n, int64_t nv,
                              const float *A, int64_t lda, int64_t sa, const float *K, int64_t ldk,
                              int64_t sk, const float *V, int64_t ldv, int64_t sv,
                              const mha__attn_decode_mask *md, float *P, int64_t sp) {
    (void)bc;
    for (int64_t t = 0; t < nh; t++) {
        mha__attn_decode_mask mh = *md; /* the head's slopes */
        if (md->slope) mh.slope = md->slope + t * rows;
        float *m = P + t * sp;
        decode_head(rows, n, nv, A + t * sa, lda, K + t * sk, ldk, V + t * sv, ldv, &mh, m,
                    m + rows, m + 2 * rows);
    }
}
