/* gemm.c - AVX2 + FMA gemm micro-kernel, 6 x 16 (contract in kernels.h).
 *
 *   C[m,n] = alpha * Ap[6,k] * Bp[k,16] + beta * C        (top-left m x n of a 6 x 16 block)
 *
 * 12 ymm accumulators (6 rows x 2 vectors of 8 columns) + 2 for the B row + 1 broadcast = 15
 * of the 16 registers. Edge tiles: n < 16 uses maskload/maskstore (whole tiles store plainly:
 * vmaskmovps to memory is microcoded on AMD's Zen cores, about 20 cycles on Zen 3), m < 6
 * skips rows; the arithmetic of an element is the same in every case. */
#include "../../kernels.h"

#include <immintrin.h>

#define MR 6
#define NR 16

#define DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps();
#define FMA(i)                                                                                     \
    {                                                                                              \
        __m256 ai = _mm256_broadcast_ss(a + (i));                                                  \
        c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0);                                                \
        c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1);                                                \
    }
#define STORE(i)                                                                                   \
    if (i < m) {                                                                                   \
        float *ci = c + (i)*ldc;                                                                   \
        __m256 r0 = _mm256_mul_ps(va, c##i##0), r1 = _mm256_mul_ps(va, c##i##1);                   \
        if (beta != 0.0f) {                                                                        \
            __m256 o0 = n == NR ? _mm256_loadu_ps(ci) : _mm256_maskload_ps(ci, k0);                \
            __m256 o1 = n == NR ? _mm256_loadu_ps(ci + 8) : _mm256_maskload_ps(ci + 8, k1);        \
            r0 = _mm256_fmadd_ps(vb, o0, r0);                                                      \
            r1 = _mm256_fmadd_ps(vb, o1, r1);                                                      \
        }                                                                                          \
        if (n == NR) {                                                                             \
            _mm256_storeu_ps(ci, r0);                                                              \
            _mm256_storeu_ps(ci + 8, r1);                                                          \
        } else {                                                                                   \
            _mm256_maskstore_ps(ci, k0, r0);                                                       \
            _mm256_maskstore_ps(ci + 8, k1, r1);                                                   \
        }                                                                                          \
    }

/* loadu(lanes + 8 - n): the first n lanes set. */
static const int32_t lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

void mha__gemm_avx2_f32_6x16(int64_t k, const float *a, const float *b, float alpha, float beta,
                             float *c, int64_t ldc, int m, int n) {
    /* one register block: the macro calls laid out as the block's rows */
    /* clang-format off */
    DECL(0) DECL(1) DECL(2) DECL(3) DECL(4) DECL(5)
    for (int64_t p = 0; p < k; p++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5)
        a += MR;
        b += NR;
    }
    int n0 = n < 8 ? n : 8, n1 = n > 8 ? n - 8 : 0;
    __m256i k0 = _mm256_loadu_si256((const __m256i *)(lanes + 8 - n0));
    __m256i k1 = _mm256_loadu_si256((const __m256i *)(lanes + 8 - n1));
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5)
    /* clang-format on */
}
