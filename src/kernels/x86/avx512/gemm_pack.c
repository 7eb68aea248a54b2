/* gemm_pack.c - AVX-512 packing for the gemm micro-kernels (contract in kernels.h).
 *
 * Same result as mha__gemm_pack_generic_f32, faster for the two layouts the projections use:
 *   cs == 1 (rows of X contiguous along k, e.g. x·W^T's W and a row-major A): 16 x 16 blocks
 *     are loaded as rows, transposed in registers and stored as columns;
 *   rs == 1 (each p a contiguous run of r values): masked vector copies.
 * Other layouts (and r > 32) fall back to the generic packing. */
#include "simd.h" /* vf_transpose, mask_tail */

void mha__gemm_pack_avx512_f32(const float *X, int64_t rs, int64_t cs, int64_t rows, int64_t k,
                               int r, float *dst) {
    if (r > 32 || (cs != 1 && rs != 1)) {
        mha__gemm_pack_generic_f32(X, rs, cs, rows, k, r, dst);
        return;
    }
    for (int64_t i0 = 0; i0 < rows; i0 += r) {
        int64_t rr = rows - i0 < r ? rows - i0 : r;
        const float *x = X + i0 * rs;
        float *d = dst + i0 * k;
        if (cs == 1 && rs != 1) {
            for (int s0 = 0; s0 < r; s0 += 16) { /* 16 rows of the panel at a time */
                int64_t nrow = rr - s0;
                __mmask16 wmask = mask_tail(r - s0);
                for (int64_t p0 = 0; p0 < k; p0 += 16) {
                    int64_t pb = k - p0 < 16 ? k - p0 : 16;
                    __mmask16 pmask = mask_tail(pb);
                    __m512 v[16];
                    for (int i = 0; i < 16; i++)
                        v[i] = i < nrow ? _mm512_maskz_loadu_ps(pmask, x + (s0 + i) * rs + p0)
                                        : _mm512_setzero_ps();
                    vf_transpose(v);
                    for (int p = 0; p < pb; p++)
                        _mm512_mask_storeu_ps(d + (p0 + p) * r + s0, wmask, v[p]);
                }
            }
        } else { /* rs == 1: a run of rr values per p, zero up to r */
            __mmask16 l0 = mask_tail(rr), l1 = mask_tail(rr - 16);
            __mmask16 w0 = mask_tail(r), w1 = mask_tail(r - 16);
            for (int64_t p = 0; p < k; p++) {
                const float *xp = x + p * cs;
                _mm512_mask_storeu_ps(d + p * r, w0, _mm512_maskz_loadu_ps(l0, xp));
                if (r > 16)
                    _mm512_mask_storeu_ps(d + p * r + 16, w1, _mm512_maskz_loadu_ps(l1, xp + 16));
            }
        }
    }
}
