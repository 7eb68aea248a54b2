/* gemm_pack.c - AVX-512 packing for the gemm micro-kernels (contract in kernels.h).
 *
 * Same result as mha__gemm_pack_generic_f32 / _h, faster for the two layouts the projections
 * use:
 *   cs == 1 (rows of X contiguous along k, e.g. x·W^T's W and a row-major A): 16 x 16 blocks
 *     are loaded as rows, transposed in registers and stored as columns;
 *   rs == 1 (each p a contiguous run of r values): masked vector copies.
 * Other layouts (and r > 32) fall back to the generic packing. The elements are float32, or
 * bfloat16 / half widened exactly to float32 as they are loaded (gemm_pack_h: a shift, or
 * vcvtph2ps): one loop for every dtype, specialized per dtype by the compiler. */
#include "simd.h" /* vf_transpose, mask_tail */

/* The elements e .. e+15 of X (lanes outside m zero, not read) as float32. */
INL __m512 load16(const void *X, mha_dtype dt, int64_t e, __mmask16 m) {
    if (dt == MHA_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)X + e);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)X + e);
    if (dt == MHA_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

INL void pack(const void *X, mha_dtype dt, int64_t rs, int64_t cs, int64_t rows, int64_t k, int r,
              float *dst) {
    for (int64_t i0 = 0; i0 < rows; i0 += r) {
        int64_t rr = rows - i0 < r ? rows - i0 : r;
        int64_t x = i0 * rs; /* element (i0, 0) */
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
                        v[i] = i < nrow ? load16(X, dt, x + (s0 + i) * rs + p0, pmask)
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
                int64_t xp = x + p * cs;
                _mm512_mask_storeu_ps(d + p * r, w0, load16(X, dt, xp, l0));
                if (r > 16) _mm512_mask_storeu_ps(d + p * r + 16, w1, load16(X, dt, xp + 16, l1));
            }
        }
    }
}

void mha__gemm_pack_avx512_f32(const float *X, int64_t rs, int64_t cs, int64_t rows, int64_t k,
                               int r, float *dst) {
    if (r > 32 || (cs != 1 && rs != 1)) mha__gemm_pack_generic_f32(X, rs, cs, rows, k, r, dst);
    else pack(X, MHA_DTYPE_F32, rs, cs, rows, k, r, dst);
}

void mha__gemm_pack_avx512_h(const uint16_t *X, mha_dtype dt, int64_t rs, int64_t cs, int64_t rows,
                             int64_t k, int r, float *dst) {
    if (r > 32 || (cs != 1 && rs != 1)) mha__gemm_pack_generic_h(X, dt, rs, cs, rows, k, r, dst);
    else if (dt == MHA_DTYPE_BF16) pack(X, MHA_DTYPE_BF16, rs, cs, rows, k, r, dst);
    else pack(X, MHA_DTYPE_F16, rs, cs, rows, k, r, dst);
}
