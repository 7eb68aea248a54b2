/* gemm.h - the threaded matrix product the drivers use (projections and their backward).
 *
 *   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C      (row-major, as kernels.h sgemm)
 *
 * Splits C into blocks over the context's threads and calls the context's kernels. The result
 * is bitwise identical for any thread count: every element of C is computed by exactly one
 * thread with a summation order that depends only on K. Returns MHA_ERR_NOMEM if a packing
 * workspace cannot be allocated (C is then unchanged). */
#ifndef MHA_GEMM_H
#define MHA_GEMM_H

#include "core/internal.h"

mha_status mha__gemm(mha_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K,
                     float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                     float beta, float *C, int64_t ldc);

#endif
