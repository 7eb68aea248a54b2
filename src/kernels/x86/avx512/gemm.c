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

#include "gemm_block.h"

#include <immintrin.h>

#define MR 14
#define NR 32

#define FMA(i)                                                                                     \
    {                                                                                              \
        __m512 ai = _mm512_set1_ps(a[i]);                                                          \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);                                                \
        c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1);                                                \
    }
void mha__gemm_avx512_f32_14x32(int64_t k, const float *a, const float *b, float alpha, float beta,
                                float *c, int64_t ldc, int m, int n) {
    /* one register block: the macro calls laid out as the block's rows */
    /* clang-format off */
    GEMM_DECL_ALL
    gemm_prefetch_c(c, ldc, m, n);
    for (int64_t p = 0; p < k; p++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        gemm_prefetch_b(b, 8);
        FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6)
        FMA(7) FMA(8) FMA(9) FMA(10) FMA(11) FMA(12) FMA(13)
        a += MR;
        b += NR;
    }
    GEMM_STORE_ALL
    /* clang-format on */
}
