/* sgemm.c - portable single-threaded sgemm: C = alpha * op(A) op(B) + beta * C.
 * Row-major. The sum over K for each C element runs k = 0..K-1 in order, in float, so the
 * result does not depend on how a driver splits M or N. */
#include "../kernels.h"

#include <string.h>

#define NB 256 /* columns of C per pass: a row strip of C stays in L1 */

void mha__sgemm_generic_f32(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                            const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                            float *C, int64_t ldc) {
    float acc[NB];
    for (int64_t j0 = 0; j0 < N; j0 += NB) {
        int64_t nb = N - j0 < NB ? N - j0 : NB;
        for (int64_t i = 0; i < M; i++) {
            memset(acc, 0, sizeof(float) * (size_t)nb);
            for (int64_t kk = 0; kk < K; kk++) {
                float a = ta ? A[kk * lda + i] : A[i * lda + kk];
                if (!tb) {
                    const float *b = B + kk * ldb + j0;
                    for (int64_t j = 0; j < nb; j++) acc[j] += a * b[j];
                } else {
                    const float *b = B + j0 * ldb + kk;
                    for (int64_t j = 0; j < nb; j++) acc[j] += a * b[j * ldb];
                }
            }
            float *c = C + i * ldc + j0;
            if (beta == 0.0f)
                for (int64_t j = 0; j < nb; j++) c[j] = alpha * acc[j];
            else
                for (int64_t j = 0; j < nb; j++) c[j] = alpha * acc[j] + beta * c[j];
        }
    }
}
