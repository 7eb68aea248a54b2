/* cvt_skel.h - the bulk conversions between 2-byte floats and float32 (kernels.h: cvt_to_f32,
 * cvt_from_f32) and the bulk scaling (scale_f32), written once over an ISA's mapping (simd.h:
 * VL, SIMD_ISA, mask_tail, vf_load_v, vf_store_v, vf_load_bf16_v, vf_load_f16_v, vh,
 * vf_to_bf16, vf_to_f16, vh_store_v, vf_set1, vf_mul): VL elements a step, the last step cut
 * by a mask. Bit for bit ../cvt.h and the generic table's loops. */
#ifndef MHA_CVT_SKEL_H
#define MHA_CVT_SKEL_H

#define CVT_CAT_(a, b) a##b
#define CVT_CAT(a, b) CVT_CAT_(a, b)
#define CVT(kind) CVT_CAT(mha__cvt_##kind##_, SIMD_ISA) /* mha__cvt_<kind>_<isa> */

/* bf (a compile-time constant): bfloat16, else half */
INL void cvt_to(const int bf, const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += VL) {
        const int last = n - i < VL;
        const vmask kl = mask_tail(n - i);
        vf_store_v(dst + i, last, kl,
                   bf ? vf_load_bf16_v(src + i, last, kl) : vf_load_f16_v(src + i, last, kl));
    }
}

INL void cvt_from(const int bf, const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += VL) {
        const int last = n - i < VL;
        const vmask kl = mask_tail(n - i);
        const vf x = vf_load_v(src + i, last, kl);
        vh_store_v(dst + i, last, kl, bf ? vf_to_bf16(x) : vf_to_f16(x));
    }
}

void CVT(to_f32)(mha_dtype dt, const uint16_t *src, float *dst, int64_t n) {
    if (dt == MHA_DTYPE_BF16) cvt_to(1, src, dst, n);
    else cvt_to(0, src, dst, n);
}

void CVT(from_f32)(mha_dtype dt, const float *src, uint16_t *dst, int64_t n) {
    if (dt == MHA_DTYPE_BF16) cvt_from(1, src, dst, n);
    else cvt_from(0, src, dst, n);
}

/* the name mha__scale_f32_<isa> */
#define SCALE_F32 CVT_CAT(mha__scale_f32_, SIMD_ISA)

void SCALE_F32(int64_t n, float a, const float *x, float *y) {
    const vf va = vf_set1(a);
    for (int64_t i = 0; i < n; i += VL) {
        const int last = n - i < VL;
        const vmask kl = mask_tail(n - i);
        vf_store_v(y + i, last, kl, vf_mul(va, vf_load_v(x + i, last, kl)));
    }
}

#endif
