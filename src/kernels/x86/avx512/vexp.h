/* vexp.h - vectorized expf for the AVX-512 attention kernels (internal to this folder).
 *
 *   exp(x) = 2^n * exp(r),  n = round(x / ln2),  r = x - n ln2 in [-ln2/2, ln2/2]
 *
 * r by Cody-Waite (ln2 = LN2_HI + LN2_LO, LN2_HI with 15 significant bits so n LN2_HI is
 * exact), exp(r) by its degree-7 Taylor polynomial (truncation < 1e-8 on the interval),
 * Horner with FMAs; 2^n applied by vscalefps, which rounds once into the subnormal range and
 * flushes to exactly 0 below it. x is clamped to [-110, 88.72] first: exp(-inf) = 0 exactly,
 * large negatives give 0 (never NaN), NaN propagates (max/min return their second operand on
 * NaN). Max relative error over [-88, 1] about 2e-7 (tests/test_attn_kernels.c sweeps it). */
#ifndef MHA_AVX512_VEXP_H
#define MHA_AVX512_VEXP_H

#include <immintrin.h>

static inline __m512 mha__vexp512(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-110.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(88.72f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

#endif
