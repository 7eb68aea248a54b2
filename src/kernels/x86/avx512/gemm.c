/* gemm.c - AVX-512 gemm micro-kernel, 14 x 32 (contract in kernels.h).
 *
 *   C[m,n] = alpha * Ap[14,k] * Bp[k,32] + beta * C       (top-left m x n of a 14 x 32 block)
 *
 * 28 zmm accumulators (14 rows x 2 vectors of 16 columns) + 2 for the B row = 30 of the 32
 * registers; the A value of a row is an embedded broadcast operand of the FMA. Per k step:
 * 2 loads, 14 broadcasts, 28 FMAs, enough independent chains to cover the FMA latency on two
 * 512-bit pipes. Edge tiles: n < 32 uses masked loads and stores, m < 14 skips rows; the
 * arithmetic of an element is the same in every case. */
#include "../../kernels.h"

#include <immintrin.h>

#define MR 14
#define NR 32

/* The accumulators of row i: c<i>0 (columns 0..15) and c<i>1 (16..31). */
#define DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define FMA(i)                                                                                     \
    {                                                                                              \
        __m512 ai = _mm512_set1_ps(a[i]);                                                          \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);                                                \
        c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1);                                                \
    }
/* c = alpha * acc (beta == 0: C not read) or alpha * acc + beta * c. */
#define STORE(i)                                                                                   \
    if (i < m) {                                                                                   \
        float *ci = c + (i)*ldc;                                                                   \
        __m512 r0 = _mm512_mul_ps(va, c##i##0), r1 = _mm512_mul_ps(va, c##i##1);                   \
        if (beta != 0.0f) {                                                                        \
            r0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(k0, ci), r0);                           \
            r1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(k1, ci + 16), r1);                      \
        }                                                                                          \
        _mm512_mask_storeu_ps(ci, k0, r0);                                                         \
        _mm512_mask_storeu_ps(ci + 16, k1, r1);                                                    \
    }

void mha__gemm_avx512_f32_14x32(int64_t k, const float *a, const float *b, float alpha, float beta,
                                float *c, int64_t ldc, int m, int n) {
    /* one register block: the macro calls laid out as the block's rows */
    /* clang-format off */
    DECL(0) DECL(1) DECL(2) DECL(3) DECL(4) DECL(5) DECL(6)
    DECL(7) DECL(8) DECL(9) DECL(10) DECL(11) DECL(12) DECL(13)
    /* Fetch the C tile now (every cache line of its m rows), so that its misses overlap the
     * k loop instead of stalling the stores at the end: for a C larger than the caches, later
     * K blocks read it back from memory, and the first one's stores miss too. */
    for (int i = 0; i < m; i++) {
        const char *ci = (const char *)(c + i * ldc);
        _mm_prefetch(ci, _MM_HINT_T0);
        _mm_prefetch(ci + 4 * (n - 1 < 16 ? n - 1 : 16), _MM_HINT_T0);
        _mm_prefetch(ci + 4 * (n - 1), _MM_HINT_T0);
    }
    for (int64_t p = 0; p < k; p++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        _mm_prefetch((const char *)(b + 8 * NR), _MM_HINT_T0);
        FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6)
        FMA(7) FMA(8) FMA(9) FMA(10) FMA(11) FMA(12) FMA(13)
        a += MR;
        b += NR;
    }
    __mmask16 k0 = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    __mmask16 k1 = n >= 32 ? (__mmask16)0xffff : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5) STORE(6)
    STORE(7) STORE(8) STORE(9) STORE(10) STORE(11) STORE(12) STORE(13)
    /* clang-format on */
}
