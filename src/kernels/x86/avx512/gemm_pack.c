/* gemm_pack.c - AVX-512 packing for the gemm micro-kernels (contract in kernels.h): the loop
 * of ../gemm_pack_skel.h on 16 x 16 blocks. Same result as mha__gemm_pack_generic_f32 / _h;
 * layouts other than cs == 1 or rs == 1 fall back to them. The elements are float32, or
 * bfloat16 / half widened exactly to float32 as they are loaded (gemm_pack_h: a shift, or
 * vcvtph2ps). Also the bulk conversions cvt_to_f32 / cvt_from_f32 (../cvt_skel.h). */
#include "simd.h" /* vf_transpose, mask_tail */

INL vf pack_load(const void *X, mha_dtype dt, int64_t e, int64_t n) {
    if (dt == MHA_DTYPE_F32) return _mm512_maskz_loadu_ps(mask_tail(n), (const float *)X + e);
    __m256i h = _mm256_maskz_loadu_epi16(mask_tail(n), (const uint16_t *)X + e);
    if (dt == MHA_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#include "../cvt_skel.h"
#include "../gemm_pack_skel.h"

void mha__gemm_pack_avx512_f32(const float *X, int64_t rs, int64_t cs, int64_t rows, int64_t k,
                               int r, float *dst) {
    if (cs != 1 && rs != 1) mha__gemm_pack_generic_f32(X, rs, cs, rows, k, r, dst);
    else pack_skel(X, MHA_DTYPE_F32, rs, cs, rows, k, r, dst);
}

void mha__gemm_pack_avx512_h(const uint16_t *X, mha_dtype dt, int64_t rs, int64_t cs, int64_t rows,
                             int64_t k, int r, float *dst) {
    if (cs != 1 && rs != 1) mha__gemm_pack_generic_h(X, dt, rs, cs, rows, k, r, dst);
    else if (dt == MHA_DTYPE_BF16) pack_skel(X, MHA_DTYPE_BF16, rs, cs, rows, k, r, dst);
    else pack_skel(X, MHA_DTYPE_F16, rs, cs, rows, k, r, dst);
}
