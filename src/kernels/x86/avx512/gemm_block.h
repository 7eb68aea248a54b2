/* gemm_block.h - what the AVX-512 14 x 32 gemm micro-kernels share (gemm.c: float32 FMAs,
 * ../avx512bf16/gemm.c: bf16 pairs by vdpbf16ps): the 28 zmm accumulators, the C tile's
 * prefetch and the final c = alpha * acc (+ beta * c). Only the product of a k step differs.
 *
 *   GEMM_DECL(i)     declares row i's accumulators c<i>0 (columns 0..15), c<i>1 (16..31)
 *   gemm_prefetch_c  fetches every cache line of the tile's m rows before the k loop, so that
 *                    their misses overlap it instead of stalling the stores at the end (for a C
 *                    larger than the caches later K blocks read it back from memory)
 *   gemm_prefetch_b  fetches the B micro-panel's row 8 k steps ahead: both of its cache lines
 *                    (32 4-byte elements; the panel, KC x 32 floats, is read from L2). One line
 *                    a step left the other to the hardware: M 2048 N 1536 K 512, 2 threads,
 *                    8 alternating runs: 192 -> 198 GFLOP/s, other shapes within 1%
 *   GEMM_STORE(i)    row i < m: c = alpha * acc (beta == 0: C not read) or alpha * acc +
 *                    beta * c, columns cut by the masks k0, k1 (with va, vb = alpha, beta)
 *   GEMM_DECL_ALL    the 14 rows' accumulators; GEMM_STORE_ALL: every row stored (the
 *                    kernel's end; its m, n, c, ldc, alpha, beta in scope) */
#ifndef MHA_AVX512_GEMM_BLOCK_H
#define MHA_AVX512_GEMM_BLOCK_H

#include <immintrin.h>
#include <stdint.h>

#define GEMM_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define GEMM_STORE(i)                                                                              \
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

/* clang-format off */
#define GEMM_DECL_ALL                                                                              \
    GEMM_DECL(0) GEMM_DECL(1) GEMM_DECL(2) GEMM_DECL(3) GEMM_DECL(4) GEMM_DECL(5) GEMM_DECL(6)     \
    GEMM_DECL(7) GEMM_DECL(8) GEMM_DECL(9) GEMM_DECL(10) GEMM_DECL(11) GEMM_DECL(12) GEMM_DECL(13)
#define GEMM_STORE_ALL                                                                             \
    {                                                                                              \
        __mmask16 k0, k1;                                                                          \
        gemm_col_masks(n, &k0, &k1);                                                               \
        __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);                              \
        GEMM_STORE(0) GEMM_STORE(1) GEMM_STORE(2) GEMM_STORE(3) GEMM_STORE(4) GEMM_STORE(5)        \
        GEMM_STORE(6) GEMM_STORE(7) GEMM_STORE(8) GEMM_STORE(9) GEMM_STORE(10) GEMM_STORE(11)      \
        GEMM_STORE(12) GEMM_STORE(13)                                                              \
    }
/* clang-format on */

static inline __attribute__((always_inline)) void gemm_prefetch_c(const float *c, int64_t ldc,
                                                                  int m, int n) {
    for (int i = 0; i < m; i++) {
        const char *ci = (const char *)(c + i * ldc);
        _mm_prefetch(ci, _MM_HINT_T0);
        _mm_prefetch(ci + 4 * (n - 1 < 16 ? n - 1 : 16), _MM_HINT_T0);
        _mm_prefetch(ci + 4 * (n - 1), _MM_HINT_T0);
    }
}

static inline __attribute__((always_inline)) void gemm_prefetch_b(const void *b, int64_t ahead) {
    const char *p = (const char *)b + ahead * 32 * 4;
    _mm_prefetch(p, _MM_HINT_T0);
    _mm_prefetch(p + 64, _MM_HINT_T0);
}

/* The column masks of a tile n wide (n <= 32). */
static inline __attribute__((always_inline)) void gemm_col_masks(int n, __mmask16 *k0,
                                                                 __mmask16 *k1) {
    *k0 = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    *k1 = n >= 32 ? (__mmask16)0xffff : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
}

#endif
