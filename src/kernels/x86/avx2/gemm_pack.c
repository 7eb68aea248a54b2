/* gemm_pack.c - AVX2 packing of bfloat16 / half operands into float32 panels (kernels.h:
 * gemm_pack_h): the loop of ../gemm_pack_skel.h on 8 x 8 blocks, half widened by F16C's
 * vcvtph2ps, bfloat16 by a shift. Same result as mha__gemm_pack_generic_h; layouts other than
 * cs == 1 or rs == 1 fall back to it. (This table's float32 packing is the generic one.) Also
 * the bulk conversions cvt_to_f32 / cvt_from_f32 (../cvt_skel.h). */
#include "simd.h" /* vf_transpose, mask_tail */

/* AVX2 has no masked 16-bit load: a short run goes through a zeroed buffer. */
INL vf pack_load(const void *X, mha_dtype dt, int64_t e, int64_t n) {
    const uint16_t *x = (const uint16_t *)X + e;
    __m128i h;
    if (n >= 8) {
        h = _mm_loadu_si128((const __m128i *)x);
    } else {
        uint16_t t[8] = {0};
        for (int64_t i = 0; i < n; i++) t[i] = x[i];
        h = _mm_loadu_si128((const __m128i *)t);
    }
    if (dt == MHA_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

#include "../cvt_skel.h"
#include "../gemm_pack_skel.h"

void mha__gemm_pack_avx2_h(const uint16_t *X, mha_dtype dt, int64_t rs, int64_t cs, int64_t rows,
                           int64_t k, int r, float *dst) {
    if (cs != 1 && rs != 1) mha__gemm_pack_generic_h(X, dt, rs, cs, rows, k, r, dst);
    else if (dt == MHA_DTYPE_BF16) pack_skel(X, MHA_DTYPE_BF16, rs, cs, rows, k, r, dst);
    else pack_skel(X, MHA_DTYPE_F16, rs, cs, rows, k, r, dst);
}
