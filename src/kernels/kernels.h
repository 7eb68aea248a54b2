/* kernels.h - the kernel table and the micro-kernel contracts: all that drivers see.
 *
 * Generic first, then override: mha__kernels_init_avx2() starts from the generic table and
 * replaces only what it implements, so every table is complete. Drivers (src/attn, the module)
 * call through the table chosen by the context; kernels never allocate, never call back up,
 * and take no thread decisions (drivers split the work and call kernels per block).
 *
 * CONTRACTS
 *   sgemm: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major, single-threaded.
 *     op(A) = A (lda >= K) or A^T (ta != 0: A is [K,M], lda >= M); same for B with tb.
 *     beta == 0: C is never read (may hold NaN). M, N, K may be 0. Every M, N, K is the
 *     kernel's job (edge tiles included). The summation order over K for an element of C
 *     depends only on K, never on M, N or the position: the result is the same whichever
 *     block of rows or columns a driver hands a thread.
 */
#ifndef MHA_KERNELS_H
#define MHA_KERNELS_H

#include "mha.h"
#include <stddef.h>
#include <stdint.h>

typedef void (*mha__sgemm_fn)(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                              const float *A, int64_t lda, const float *B, int64_t ldb,
                              float beta, float *C, int64_t ldc);

typedef struct mha_kernels {
    const char *name; /* "generic", "avx2", "avx512" */
    mha__sgemm_fn sgemm;
    const char *sgemm_name; /* e.g. "mha__sgemm_generic_f32" */
} mha_kernels;

/* The table for isa, or NULL when that path was not compiled in. Never MHA_ISA_AUTO. */
const mha_kernels *mha__kernels_for(mha_isa isa);
/* The best path that both this build and this machine support. */
mha_isa mha__best_isa(void);

void mha__kernels_init_generic(mha_kernels *k);
#ifdef MHA_HAVE_AVX2
void mha__kernels_init_avx2(mha_kernels *k);
#endif
#ifdef MHA_HAVE_AVX512
void mha__kernels_init_avx512(mha_kernels *k);
#endif

/* Generic kernels (the oracle for the others). */
void mha__sgemm_generic_f32(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                            const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                            float *C, int64_t ldc);

#endif
