/* gemm.c - the threaded matrix product (gemm.h), in the Goto/BLIS structure:
 *
 * Each thread owns a block of C (a range of rows, or of NR panels when N > M or M is small)
 * and runs
 *
 *   for jc over its columns by NC:              B block op(B)[KC, NC] lives in L2/L3
 *     for pc over K by KC:                      (fixed KC: the summation order depends on K only)
 *       pack op(B)[pc:pc+KC, jc:jc+NC] -> Bp
 *       for ic over its rows by MC:             A block [MC, KC] lives in L2
 *         pack op(A)[ic:ic+MC, pc:pc+KC] -> Ap
 *         for jr over NR panels:                B micro-panel [KC, NR] lives in L1/L2
 *           for ir over MR rows:                the micro-kernel: MR x NR accumulators
 *
 * with its own packing buffers: no barrier, so a thread that the OS preempts delays only its
 * own block. (Packing each B block once, cooperatively, into a shared double buffer with one
 * barrier per block was measured: 1-2% faster module forward/backward at 2 threads, within
 * the noise of a shared 2-core machine, so not kept.) No thread ever takes a part of K, and
 * every element of C sees the same sequence of operations whichever thread computes it: the
 * first K block applies beta (or starts from the bias, filled into the tile just before the
 * micro-kernel reads it), later blocks add with beta = 1. So the result is bitwise identical
 * for any thread count. The workspace can be kept by the caller (mha__gemm_ws).
 * mha_sgemm, the public face of this driver, validates and calls mha__gemm. */
#include "gemm.h"
#include "kernels/kernels.h"

#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
/* The part [*lo, *hi) of n items that worker w of nw gets (contiguous, balanced). */
static void split(int64_t n, int nw, int w, int64_t *lo, int64_t *hi) {
    *lo = n * w / nw;
    *hi = n * (w + 1) / nw;
}

/* C = beta * C, or C = bias when bias != NULL (K == 0); C is never read when beta == 0. */
static void scale_c(int64_t M, int64_t N, float beta, const float *bias, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            C[i * ldc + j] = bias ? bias[j] : beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

void mha__gemm_ws_free(mha__gemm_ws *ws) {
    if (!ws) return;
    mha__free(ws->p);
    ws->p = NULL;
    ws->cap = 0;
}

mha_status mha__gemm(mha_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                     int64_t ldc) {
    return mha__gemm_ex(ctx, NULL, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, NULL, C, ldc);
}

mha_status mha__gemm_ex(mha_ctx *ctx, mha__gemm_ws *ws, int ta, int tb, int64_t M, int64_t N,
                        int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                        int64_t ldb, float beta, const float *bias, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return MHA_OK;
    if (K <= 0) {
        scale_c(M, N, beta, bias, C, ldc);
        return MHA_OK;
    }
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    const int64_t mr = kern->gemm_mr, nr = kern->gemm_nr, KC = kern->gemm_kc;
    const int64_t MC = kern->gemm_mc, NC = kern->gemm_nc;
    int nt = mha__ctx_threads(ctx);
    /* Below ~2 MFLOP a second thread costs more than it saves. */
    if ((double)M * N * K < 1e6) nt = 1;

    /* Workspace per thread: a B block and an A block (each a multiple of 64 bytes). */
    int64_t kb_max = min64(KC, K);
    int64_t b_floats = round_up(kb_max * round_up(min64(NC, N), nr), 16);
    int64_t a_floats = round_up(kb_max * round_up(min64(MC, M), mr), 16);
    size_t total;
    if (!mha__mul_size((size_t)(a_floats + b_floats), (size_t)nt, &total) ||
        !mha__mul_size(total, sizeof(float), &total))
        return mha__err(ctx, MHA_ERR_NOMEM,
                        "mha__gemm: workspace: size overflows (M %lld, N %lld, K %lld)",
                        (long long)M, (long long)N, (long long)K);
    float *work;
    if (ws && ws->p && ws->cap >= total) {
        work = ws->p;
    } else {
        work = mha__malloc(total);
        if (!work)
            return mha__err(
                ctx, MHA_ERR_NOMEM,
                "mha__gemm: workspace: could not allocate %zu bytes for the packed panels", total);
        if (ws) {
            mha__free(ws->p);
            ws->p = work, ws->cap = total;
        }
    }

    /* op(A)(i, p) = A[i*a_rs + p*a_cs]; op(B)^T(j, p) = op(B)(p, j) = B[j*b_rs + p*b_cs]. */
    const int64_t a_rs = ta ? 1 : lda, a_cs = ta ? lda : 1;
    const int64_t b_rs = tb ? ldb : 1, b_cs = tb ? 1 : ldb;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid = 0, nth = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nth = omp_get_num_threads();
#endif
        float *ap = work + (a_floats + b_floats) * tid, *bp = ap + a_floats;
        /* This thread's block of C: a range of rows (in MR units) or of columns (in NR
         * panels). Threads never wait for each other, so each packs the whole of the other
         * operand: every thread packs all of op(B) when they split the rows, all of op(A) when
         * they split the columns. Split the longer side (when it has at least two panels per
         * thread): the shorter operand is the one packed twice. */
        int64_t mpan = (M + mr - 1) / mr, npan_all = (N + nr - 1) / nr;
        int64_t r_lo = 0, r_hi = mpan, c_lo = 0, c_hi = npan_all;
        if (mpan >= 2 * nth && (M >= N || npan_all < 2 * nth)) split(mpan, nth, tid, &r_lo, &r_hi);
        else split(npan_all, nth, tid, &c_lo, &c_hi);
        r_lo *= mr, r_hi = min64(r_hi * mr, M);
        c_lo *= nr, c_hi = min64(c_hi * nr, N);
        for (int64_t jc = c_lo; jc < c_hi && r_lo < r_hi; jc += NC) {
            int64_t nb = min64(NC, c_hi - jc);
            for (int64_t pc = 0; pc < K; pc += KC) {
                int64_t kb = min64(KC, K - pc);
                kern->gemm_pack(B + jc * b_rs + pc * b_cs, b_rs, b_cs, nb, kb, (int)nr, bp);
                float bk = pc == 0 && !bias ? beta : 1.0f;
                for (int64_t ic = r_lo; ic < r_hi; ic += MC) {
                    int64_t mb = min64(MC, r_hi - ic);
                    kern->gemm_pack(A + ic * a_rs + pc * a_cs, a_rs, a_cs, mb, kb, (int)mr, ap);
                    for (int64_t jr = 0; jr < nb; jr += nr) {
                        int n = (int)min64(nr, nb - jr);
                        const float *bt = bp + jr * kb;
                        float *ct = C + ic * ldc + jc + jr;
                        for (int64_t ir = 0; ir < mb; ir += mr) {
                            int m = (int)min64(mr, mb - ir);
                            if (pc == 0 && bias) /* the tile starts from the bias, in L1 */
                                for (int i = 0; i < m; i++)
                                    memcpy(ct + (ir + i) * ldc, bias + jc + jr,
                                           sizeof(float) * (size_t)n);
                            kern->gemm_ukr(kb, ap + ir * kb, bt, alpha, bk, ct + ir * ldc, ldc, m,
                                           n);
                        }
                    }
                }
            }
        }
    }
    if (work != (ws ? ws->p : NULL)) mha__free(work);
    return MHA_OK;
}

mha_status mha_sgemm(mha_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                     int64_t ldc) {
    static const char *const FN = "mha_sgemm";
    mha__clear(ctx);
    if (M < 0 || N < 0 || K < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: M, N, K: got %lld, %lld, %lld, expected >= 0", FN, (long long)M,
                        (long long)N, (long long)K);
    int64_t acols = ta ? M : K, bcols = tb ? K : N;
    if (lda < (acols > 1 ? acols : 1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: lda: got %lld, expected >= %lld (%s)", FN,
                        (long long)lda, (long long)acols, ta ? "M, A transposed" : "K");
    if (ldb < (bcols > 1 ? bcols : 1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: ldb: got %lld, expected >= %lld (%s)", FN,
                        (long long)ldb, (long long)bcols, tb ? "K, B transposed" : "N");
    if (ldc < (N > 1 ? N : 1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: ldc: got %lld, expected >= %lld (N)", FN,
                        (long long)ldc, (long long)N);
    if (M > 0 && N > 0 && !C)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: C: got NULL, expected [M, N]", FN);
    if (M > 0 && N > 0 && K > 0 && (!A || !B))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL, expected a matrix", FN,
                        !A ? "A" : "B");
    return mha__gemm(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
