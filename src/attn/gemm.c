/* gemm.c - threaded driver over the kernel table's sgemm: row blocks of C per thread. */
#include "gemm.h"
#include "kernels/kernels.h"

mha_status mha__gemm(mha_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K,
                     float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                     float beta, float *C, int64_t ldc) {
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    int nt = mha__ctx_threads(ctx);
    const int64_t MB = 32;
    int64_t nblk = (M + MB - 1) / MB;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && nblk > 1)
    for (int64_t b = 0; b < nblk; b++) {
        int64_t i0 = b * MB, m = M - i0 < MB ? M - i0 : MB;
        const float *a = ta ? A + i0 : A + i0 * lda;
        kern->sgemm(ta, tb, m, N, K, alpha, a, lda, B, ldb, beta, C + i0 * ldc, ldc);
    }
    return MHA_OK;
}
