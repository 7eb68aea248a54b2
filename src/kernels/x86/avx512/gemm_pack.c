/* gemm_pack.c - AVX-512 packing for the gemm micro-kernels (contract in kernels.h).
 *
 * Same result as mha__gemm_pack_generic_f32, faster for the two layouts the projections use:
 *   cs == 1 (rows of X contiguous along k, e.g. x·W^T's W and a row-major A): 16 x 16 blocks
 *     are loaded as rows, transposed in registers and stored as columns;
 *   rs == 1 (each p a contiguous run of r values): masked vector copies.
 * Other layouts (and r > 32) fall back to the generic packing. */
#include "../../kernels.h"

#include <immintrin.h>

/* In-place 16 x 16 transpose of v[0..15] (row i -> column i). */
static inline void transpose16(__m512 v[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);     /* a0 b0 a1 b1 | per 128-bit lane */
        t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]); /* a2 b2 a3 b3 */
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);     /* a0 b0 c0 d0 */
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee); /* a1 b1 c1 d1 */
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    /* u[4g + c] holds, in 128-bit lane l, column 4l + c of rows 4g..4g+3. */
    for (int c = 0; c < 4; c++) {
        __m512 lo0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);      /* lanes 0,2 of g0, g1 */
        __m512 hi0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);      /* lanes 1,3 */
        __m512 lo1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        __m512 hi1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
        v[c] = _mm512_shuffle_f32x4(lo0, lo1, 0x88);      /* column c: lane 0 of each g */
        v[8 + c] = _mm512_shuffle_f32x4(lo0, lo1, 0xdd);  /* column 8 + c: lane 2 */
        v[4 + c] = _mm512_shuffle_f32x4(hi0, hi1, 0x88);  /* column 4 + c: lane 1 */
        v[12 + c] = _mm512_shuffle_f32x4(hi0, hi1, 0xdd); /* column 12 + c: lane 3 */
    }
}

static __mmask16 lanes(int64_t n) {
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

void mha__gemm_pack_avx512_f32(const float *X, int64_t rs, int64_t cs, int64_t rows,
                               int64_t k, int r, float *dst) {
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
                __mmask16 wmask = lanes(r - s0);
                for (int64_t p0 = 0; p0 < k; p0 += 16) {
                    int64_t pb = k - p0 < 16 ? k - p0 : 16;
                    __mmask16 pmask = lanes(pb);
                    __m512 v[16];
                    for (int i = 0; i < 16; i++)
                        v[i] = i < nrow ? _mm512_maskz_loadu_ps(pmask, x + (s0 + i) * rs + p0)
                                        : _mm512_setzero_ps();
                    transpose16(v);
                    for (int p = 0; p < pb; p++)
                        _mm512_mask_storeu_ps(d + (p0 + p) * r + s0, wmask, v[p]);
                }
            }
        } else { /* rs == 1: a run of rr values per p, zero up to r */
            __mmask16 l0 = lanes(rr), l1 = lanes(rr - 16), w0 = lanes(r), w1 = lanes(r - 16);
            for (int64_t p = 0; p < k; p++) {
                const float *xp = x + p * cs;
                _mm512_mask_storeu_ps(d + p * r, w0, _mm512_maskz_loadu_ps(l0, xp));
                if (r > 16)
                    _mm512_mask_storeu_ps(d + p * r + 16, w1, _mm512_maskz_loadu_ps(l1, xp + 16));
            }
        }
    }
}
