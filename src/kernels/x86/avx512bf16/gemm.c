/* gemm.c - the AVX512_BF16 gemm: bfloat16 pair packing and a 14 x 32 micro-kernel on
 * vdpbf16ps (contract in kernels.h), and the init that adds them to the AVX-512 table.
 *
 *   C[m,n] = alpha * Ap[14,k] * Bp[k,32] + beta * C       (top-left m x n of a 14 x 32 block)
 *
 * The only file compiled with -mavx512bf16 (on top of the AVX-512 flags); kernels.c calls
 * mha__kernels_init_avx512bf16 only when the CPU reports AVX512_BF16. vdpbf16ps multiplies
 * two bfloat16 pairs per 32-bit lane and adds both products to a float32 accumulator, so k
 * runs in pairs: A and B are packed as 32-bit words holding (op(X)[.][2q], op(X)[.][2q+1]),
 * an odd k padded with a zero. Products of bfloat16 values are exact in float32; the
 * accumulation is float32, one pair at a time (a different order of roundings than the fp32
 * kernel, which adds one product at a time: the two agree within float32 accumulation
 * error, not bitwise). vdpbf16ps treats subnormal inputs and results as zero (DAZ, FTZ). */
#include "../avx512/gemm_block.h" /* the 14 x 32 block's accumulators, C prefetch, store */
#include "../avx512/simd.h"       /* vf_transpose, mask_tail */

#define BMR 14 /* the block: MR x NR (simd.h has its own MR) */
#define BNR 32

/* The 16-lane (32 bfloat16) chunk: lanes past `pairs` zero. A 32-bit mask of elements. */
static __mmask32 mask_elems(int64_t n) {
    return n >= 32 ? (__mmask32)0xffffffffu : n <= 0 ? 0 : (__mmask32)((1u << n) - 1);
}

/* dst[q*r + i] for rows i of a panel, X(i, p) = X[i*rs + p*cs] (any layout; the fallback). */
static void pack_pairs_scalar(const uint16_t *x, int64_t rs, int64_t cs, int64_t rr, int64_t k,
                              int r, uint32_t *d) {
    for (int64_t q = 0; q < (k + 1) / 2; q++)
        for (int i = 0; i < r; i++) {
            uint32_t lo = 0, hi = 0;
            if (i < rr) {
                lo = x[i * rs + 2 * q * cs];
                if (2 * q + 1 < k) hi = x[i * rs + (2 * q + 1) * cs];
            }
            d[q * r + i] = lo | hi << 16;
        }
}

void mha__gemm_pack_avx512bf16_bf16(const uint16_t *X, int64_t rs, int64_t cs, int64_t rows,
                                    int64_t k, int r, uint32_t *dst) {
    const int64_t kp = (k + 1) / 2;
    for (int64_t i0 = 0; i0 < rows; i0 += r) {
        int64_t rr = rows - i0 < r ? rows - i0 : r;
        const uint16_t *x = X + i0 * rs;
        uint32_t *d = dst + i0 * kp;
        if (r > 32 || (cs != 1 && rs != 1)) {
            pack_pairs_scalar(x, rs, cs, rr, k, r, d);
        } else if (cs == 1 && rs != 1) {
            /* rows contiguous along k: a row's 32 elements are 16 pair words; 16 rows of
             * them are transposed in registers as 16 x 16 32-bit values */
            for (int s0 = 0; s0 < r; s0 += 16) {
                int64_t nrow = rr - s0;
                __mmask16 wmask = mask_tail(r - s0);
                for (int64_t q0 = 0; q0 < kp; q0 += 16) {
                    int64_t qb = kp - q0 < 16 ? kp - q0 : 16;
                    __mmask32 emask = mask_elems(k - 2 * q0);
                    __m512 v[16];
                    for (int i = 0; i < 16; i++)
                        v[i] = i < nrow ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(
                                              emask, x + (s0 + i) * rs + 2 * q0))
                                        : _mm512_setzero_ps();
                    vf_transpose(v);
                    for (int q = 0; q < qb; q++)
                        _mm512_mask_storeu_ps((float *)(d + (q0 + q) * r + s0), wmask, v[q]);
                }
            }
        } else { /* rs == 1: elements p = 2q and 2q + 1 are runs of rr values; interleave */
            for (int64_t q = 0; q < kp; q++)
                for (int s0 = 0; s0 < r; s0 += 16) {
                    __mmask16 l = mask_tail(rr - s0);
                    const uint16_t *xq = x + 2 * q * cs + s0;
                    __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(l, xq));
                    __m512i hi = _mm512_setzero_si512();
                    if (2 * q + 1 < k)
                        hi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(l, xq + cs));
                    _mm512_mask_storeu_epi32(d + q * r + s0, mask_tail(r - s0),
                                             _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
                }
        }
    }
}

/* The accumulators of row i: c<i>0 (columns 0..15) and c<i>1 (16..31). */
/* c += both products of row i's pair (broadcast) with each column's pair */
#define DOT(i)                                                                                     \
    {                                                                                              \
        __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]);                                      \
        c##i##0 = _mm512_dpbf16_ps(c##i##0, ai, b0);                                               \
        c##i##1 = _mm512_dpbf16_ps(c##i##1, ai, b1);                                               \
    }
void mha__gemm_avx512bf16_bf16_14x32(int64_t kp, const uint32_t *a, const uint32_t *b, float alpha,
                                     float beta, float *c, int64_t ldc, int m, int n) {
    /* one register block: the macro calls laid out as the block's rows */
    /* clang-format off */
    GEMM_DECL_ALL
    gemm_prefetch_c(c, ldc, m, n);
    for (int64_t q = 0; q < kp; q++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
        gemm_prefetch_b(b, 8);
        DOT(0) DOT(1) DOT(2) DOT(3) DOT(4) DOT(5) DOT(6)
        DOT(7) DOT(8) DOT(9) DOT(10) DOT(11) DOT(12) DOT(13)
        a += BMR;
        b += BNR;
    }
    GEMM_STORE_ALL
    /* clang-format on */
}
