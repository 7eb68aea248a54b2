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

mha_status mha__gemm(mha_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                     int64_t ldc);

/* A packing workspace kept between products (start from {0}): a caller that makes the same
 * products again and again (the module) saves an allocation and its page faults per call.
 * It grows when a product needs more; mha__gemm_ws_free releases it (and zeroes it). */
typedef struct {
    float *p;
    size_t cap;     /* bytes */
    const char *fn; /* the public call its products serve, for their messages (NULL: mha_gemm) */
} mha__gemm_ws;
void mha__gemm_ws_free(mha__gemm_ws *ws);
/* Grows ws (not NULL) to what a product of that shape and dtype needs on ctx's threads (if it
 * holds less), so that products made after it allocate nothing: a caller writing several
 * outputs reserves for all of them first and then cannot fail between two. On NOMEM ws is
 * unchanged. */
mha_status mha__gemm_ws_reserve(mha_ctx *ctx, mha__gemm_ws *ws, int64_t M, int64_t N, int64_t K,
                                mha_dtype dt);

/* mha__gemm with a reusable workspace (ws may be NULL: allocated per call) and an optional
 * bias [N] (NULL: none). With a bias, C = alpha * op(A) op(B) + bias (broadcast over the rows;
 * beta and the old C are ignored), computed exactly as a fill of C with the bias followed by
 * a beta = 1 product, tile by tile while the tile is in L1. On NOMEM, C and ws are unchanged. */
mha_status mha__gemm_ex(mha_ctx *ctx, mha__gemm_ws *ws, int ta, int tb, int64_t M, int64_t N,
                        int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                        int64_t ldb, float beta, const float *bias, float *C, int64_t ldc);

/* mha__gemm_ex on A and B of dtype dt (MHA_DTYPE_F32, BF16 or F16; C, bias, alpha and beta
 * float32): products accumulated in float32. F32 is mha__gemm_ex itself (the same bits);
 * bf16 / f16 are packed by the table's gemm_pack_h (converted exactly to float32) for its
 * fp32 micro-kernel, or, bf16 on a table with gemm_bf16_ukr (AVX512_BF16), packed as pairs
 * for it. Bitwise identical for any thread count, as mha__gemm_ex. */
mha_status mha__gemm_dt(mha_ctx *ctx, mha__gemm_ws *ws, int ta, int tb, int64_t M, int64_t N,
                        int64_t K, float alpha, const void *A, int64_t lda, const void *B,
                        int64_t ldb, mha_dtype dt, float beta, const float *bias, float *C,
                        int64_t ldc);

#endif
