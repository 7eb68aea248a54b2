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

/* exp(d) for d = x - m <= 0 (or -inf, or NaN), when the result is a probability the bf16
 * kernels round to bfloat16 (8 significant bits) as a product operand: 2^t, t = d log2(e)
 * clamped at -150 (exp(-inf) = 0 exactly, as scalef flushes), 2^t = 2^n 2^f with n = round(t)
 * and f = t - n in [-1/2, 1/2] (exact) by the degree-5 Taylor polynomial of e^(f ln2)
 * (truncation < 2.5e-6). Relative error below 8e-6 (t's rounding, up to 2^-25 |t| ln2, and
 * the truncation), 1/250 of bfloat16's half-ulp (2^-9); 10 operations where mha__vexp512
 * takes 14 (no range reduction in two parts, no upper clamp). */
static inline __m512 mha__vexp512_prob(__m512 d) {
    __m512 t = _mm512_max_ps(_mm512_set1_ps(-150.0f),
                             _mm512_mul_ps(d, _mm512_set1_ps(1.44269504088896341f)));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.3333558146428443e-3f);                 /* ln2^5 / 5! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f)); /* ln2^4 / 4! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f)); /* ln2^3 / 3! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f)); /* ln2^2 / 2! */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f)); /* ln2 */
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

#endif
