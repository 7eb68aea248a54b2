/* gemm_ukr.c - the reference gemm micro-kernel (contract in kernels.h), plain C.
 *
 *   C[m,n] = alpha * Ap[4,k] * Bp[k,16] + beta * C        (top-left m x n of a 4 x 16 block)
 *
 * Every element accumulates p = 0..k-1 in order in float, whatever m, n or its position: the
 * SIMD kernels are checked against this one, and the driver relies on the position rule for
 * results that do not depend on the thread count. */
#include "../kernels.h"

#define MR 4
#define NR 16

void mha__gemm_generic_f32_4x16(int64_t k, const float *a, const float *b, float alpha, float beta,
                                float *c, int64_t ldc, int m, int n) {
    float acc[MR][NR] = {{0}};
    for (int64_t p = 0; p < k; p++) {
        const float *ap = a + p * MR, *bp = b + p * NR;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] += ap[i] * bp[j];
    }
    for (int i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        if (beta == 0.0f) /* C is never read: it may hold NaN */
            for (int j = 0; j < n; j++) ci[j] = alpha * acc[i][j];
        else
            for (int j = 0; j < n; j++) ci[j] = alpha * acc[i][j] + beta * ci[j];
    }
}
