/* cvt.h - scalar conversions between float32 and the 2-byte float types (bfloat16, IEEE half):
 * the definition every SIMD conversion follows bit for bit. To float32: exact. From float32:
 * round to nearest, ties to even, once; NaN stays NaN (quiet), infinities stay infinite,
 * overflow gives infinity, and half's subnormals are produced as IEEE 754 says: the same bits as
 * F16C's vcvtps2ph / vcvtph2ps (every float32 checked), and as AVX512_BF16's vcvtneps2bf16 except
 * that float32 subnormals round as numbers (that instruction flushes them to 0; PyTorch's
 * conversion does not). */
#ifndef MHA_KERNELS_CVT_H
#define MHA_KERNELS_CVT_H

#include "mha.h"

#include <stdint.h>
#include <string.h>

static inline uint32_t mha__f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float mha__bits_f32(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* bfloat16: the top 16 bits of a float32. */
static inline float mha__bf16_to_f32(uint16_t h) { return mha__bits_f32((uint32_t)h << 16); }

static inline uint16_t mha__f32_to_bf16(float x) {
    uint32_t u = mha__f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1); /* ties to even; carries into the exponent (to inf) */
    return (uint16_t)(u >> 16);
}

/* IEEE half: 1 sign, 5 exponent (bias 15), 10 fraction bits. */
static inline float mha__f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e == 0x1f) /* inf; NaN quieted, as F16C converts */
        return mha__bits_f32(sign | 0x7f800000u | (f ? 0x400000u | (f << 13) : 0));
    if (e != 0) return mha__bits_f32(sign | ((e + 112) << 23) | (f << 13));
    /* zero or subnormal: f * 2^-24, exact in float32 */
    const float v = (float)f * 0x1p-24f;
    return sign ? -v : v;
}

static inline uint16_t mha__f32_to_f16(float x) {
    const uint32_t u = mha__f32_bits(x), sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff)); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (a >= 0x38800000u) {           /* normal half (>= 2^-14): drop 13 bits, ties to even */
        uint32_t r = a - 0x38000000u; /* rebias 127 -> 15 */
        r += 0xfffu + ((r >> 13) & 1);
        return (uint16_t)(sign | (r >> 13));
    }
    /* subnormal half or zero: the value in units of 2^-24, rounded to nearest even by the
     * float32 addition of 2^-24 * 2^23 (the rounding a float32 add performs at that scale) */
    const float v = mha__bits_f32(a) + 0.5f; /* 0.5 = 2^-1: keeps 2^-24 steps (ulp 2^-24) */
    return (uint16_t)(sign | (mha__f32_bits(v) - 0x3f000000u));
}

/* Element i of an array of dtype dt (MHA_DTYPE_F32, BF16 or F16) as float32, exactly; and
 * element i set to x rounded once. For glue code that works on any element type; kernels
 * convert whole vectors. */
static inline float mha__load_f32(mha_dtype dt, const void *p, int64_t i) {
    if (dt == MHA_DTYPE_F32) return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    return dt == MHA_DTYPE_BF16 ? mha__bf16_to_f32(h) : mha__f16_to_f32(h);
}

static inline void mha__store_f32(mha_dtype dt, void *p, int64_t i, float x) {
    if (dt == MHA_DTYPE_F32) ((float *)p)[i] = x;
    else ((uint16_t *)p)[i] = dt == MHA_DTYPE_BF16 ? mha__f32_to_bf16(x) : mha__f32_to_f16(x);
}

#endif
