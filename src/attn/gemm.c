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
 * mha_sgemm and mha_gemm (bf16 / f16 operands: the dtype enters only at the packing and the
 * micro-kernel, mha__gemm_dt), the public faces of this driver, validate and call it. */
#include "gemm.h"
#include "kernels/kernels.h"

#include <stddef.h>
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
    return mha__gemm_dt(ctx, ws, ta, tb, M, N, K, alpha, A, lda, B, ldb, MHA_DTYPE_F32, beta, bias,
                        C, ldc);
}

/* The rows x k block of X that starts at its element e, packed into r-row micro-panels:
 * float32 as it is, bf16 / f16 converted to float32 (for the fp32 micro-kernel), or bf16 as
 * pairs (pairs: for the table's bf16 micro-kernel). */
static void pack(const mha_kernels *kern, int pairs, mha_dtype dt, const void *X, int64_t e,
                 int64_t rs, int64_t cs, int64_t rows, int64_t k, int r, float *dst) {
    if (dt == MHA_DTYPE_F32) kern->gemm_pack((const float *)X + e, rs, cs, rows, k, r, dst);
    else if (pairs) kern->gemm_bf16_pack((const uint16_t *)X + e, rs, cs, rows, k, r, (void *)dst);
    else kern->gemm_pack_h((const uint16_t *)X + e, dt, rs, cs, rows, k, r, dst);
}

/* A product's blocking: the table's register block and cache blocks for its dtype, its thread
 * count, and its workspace (per thread an A block and a B block, in 4-byte words: a float32
 * value or a bf16 pair; total: every thread's, in bytes). */
typedef struct {
    int pairs, nt;
    int64_t mr, nr, KC, MC, NC, a_floats, b_floats;
    size_t total;
} gemm_blocking;

/* The public call a product serves, for its messages: ws's, else mha_gemm (a workspace-less
 * product is mha_gemm's). */
static const char *gemm_fn(const mha__gemm_ws *ws) { return ws && ws->fn ? ws->fn : "mha_gemm"; }

static mha_status gemm_blocking_make(mha_ctx *ctx, const mha__gemm_ws *ws, int64_t M, int64_t N,
                                     int64_t K, mha_dtype dt, gemm_blocking *g) {
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    /* bf16 on a table with a pair micro-kernel: its own register block and blocking, and
     * panels of ceil(kb / 2) 32-bit pairs; otherwise kb float32 values */
    const int pairs = g->pairs = dt == MHA_DTYPE_BF16 && kern->gemm_bf16_ukr;
    g->mr = pairs ? kern->gemm_bf16_mr : kern->gemm_mr;
    g->nr = pairs ? kern->gemm_bf16_nr : kern->gemm_nr;
    g->KC = pairs ? kern->gemm_bf16_kc : kern->gemm_kc;
    g->MC = pairs ? kern->gemm_bf16_mc : kern->gemm_mc;
    g->NC = pairs ? kern->gemm_bf16_nc : kern->gemm_nc;
    g->nt = mha__ctx_threads(ctx);
    /* Below ~2 MFLOP a second thread costs more than it saves. */
    if ((double)M * N * K < 1e6) g->nt = 1;
    /* each block a multiple of 64 bytes */
    const int64_t kb_max = pairs ? (min64(g->KC, K) + 1) / 2 : min64(g->KC, K);
    g->b_floats = round_up(kb_max * round_up(min64(g->NC, N), g->nr), 16);
    g->a_floats = round_up(kb_max * round_up(min64(g->MC, M), g->mr), 16);
    if (!mha__mul_size((size_t)(g->a_floats + g->b_floats), (size_t)g->nt, &g->total) ||
        !mha__mul_size(g->total, sizeof(float), &g->total))
        return mha__err(ctx, MHA_ERR_NOMEM,
                        "%s: out of memory (a matrix product's packed panels: their size "
                        "overflows; M %lld, N %lld, K %lld)",
                        gemm_fn(ws), (long long)M, (long long)N, (long long)K);
    return MHA_OK;
}

/* *work = total bytes for a product: ws's memory when it holds them, else a new allocation
 * (kept in ws when given, in place of its old one; ws unchanged on NOMEM). */
static mha_status gemm_work(mha_ctx *ctx, mha__gemm_ws *ws, size_t total, float **work) {
    if (ws && ws->p && ws->cap >= total) {
        *work = ws->p;
        return MHA_OK;
    }
    *work = mha__malloc(total);
    if (!*work)
        return mha__err(ctx, MHA_ERR_NOMEM,
                        "%s: out of memory (%zu bytes for a matrix product's packed panels)",
                        gemm_fn(ws), total);
    if (ws) {
        mha__free(ws->p);
        ws->p = *work, ws->cap = total;
    }
    return MHA_OK;
}

mha_status mha__gemm_ws_reserve(mha_ctx *ctx, mha__gemm_ws *ws, int64_t M, int64_t N, int64_t K,
                                mha_dtype dt) {
    if (!ws || M <= 0 || N <= 0 || K <= 0) return MHA_OK; /* nothing to keep, or to need */
    gemm_blocking g;
    float *work;
    mha_status st = gemm_blocking_make(ctx, ws, M, N, K, dt, &g);
    return st ? st : gemm_work(ctx, ws, g.total, &work);
}

mha_status mha__gemm_dt(mha_ctx *ctx, mha__gemm_ws *ws, int ta, int tb, int64_t M, int64_t N,
                        int64_t K, float alpha, const void *A, int64_t lda, const void *B,
                        int64_t ldb, mha_dtype dt, float beta, const float *bias, float *C,
                        int64_t ldc) {
    if (M <= 0 || N <= 0) return MHA_OK;
    if (K <= 0) {
        scale_c(M, N, beta, bias, C, ldc);
        return MHA_OK;
    }
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    gemm_blocking g;
    float *work;
    mha_status st = gemm_blocking_make(ctx, ws, M, N, K, dt, &g);
    if (st || (st = gemm_work(ctx, ws, g.total, &work))) return st;
    const int pairs = g.pairs;
    const int64_t mr = g.mr, nr = g.nr, KC = g.KC, MC = g.MC, NC = g.NC;
    const int64_t a_floats = g.a_floats, b_floats = g.b_floats;

    /* op(A)(i, p) = A[i*a_rs + p*a_cs]; op(B)^T(j, p) = op(B)(p, j) = B[j*b_rs + p*b_cs]. */
    const int64_t a_rs = ta ? 1 : lda, a_cs = ta ? lda : 1;
    const int64_t b_rs = tb ? ldb : 1, b_cs = tb ? 1 : ldb;

#pragma omp parallel num_threads(g.nt) if (g.nt > 1)
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
                int64_t kb = min64(KC, K - pc), kw = pairs ? (kb + 1) / 2 : kb; /* words */
                pack(kern, pairs, dt, B, jc * b_rs + pc * b_cs, b_rs, b_cs, nb, kb, (int)nr, bp);
                float bk = pc == 0 && !bias ? beta : 1.0f;
                for (int64_t ic = r_lo; ic < r_hi; ic += MC) {
                    int64_t mb = min64(MC, r_hi - ic);
                    pack(kern, pairs, dt, A, ic * a_rs + pc * a_cs, a_rs, a_cs, mb, kb, (int)mr,
                         ap);
                    for (int64_t jr = 0; jr < nb; jr += nr) {
                        int n = (int)min64(nr, nb - jr);
                        const float *bt = bp + jr * kw;
                        float *ct = C + ic * ldc + jc + jr;
                        for (int64_t ir = 0; ir < mb; ir += mr) {
                            int m = (int)min64(mr, mb - ir);
                            if (pc == 0 && bias) /* the tile starts from the bias, in L1 */
                                for (int i = 0; i < m; i++)
                                    memcpy(ct + (ir + i) * ldc, bias + jc + jr,
                                           sizeof(float) * (size_t)n);
                            if (pairs)
                                kern->gemm_bf16_ukr(kw, (const void *)(ap + ir * kw),
                                                    (const void *)bt, alpha, bk, ct + ir * ldc, ldc,
                                                    m, n);
                            else
                                kern->gemm_ukr(kb, ap + ir * kb, bt, alpha, bk, ct + ir * ldc, ldc,
                                               m, n);
                        }
                    }
                }
            }
        }
    }
    if (work != (ws ? ws->p : NULL)) mha__free(work);
    return MHA_OK;
}

/* The [rows, cols] matrix of row stride ld at x as a view of dtype dt (for the overlap test). */
static mha_tensor matrix_view(const void *x, mha_dtype dt, int64_t rows, int64_t cols, int64_t ld) {
    const int64_t shape[2] = {rows, cols}, stride[2] = {ld, 1};
    return mha_tensor_typed((void *)x, dt, 2, shape, stride);
}

/* The arguments of mha_sgemm / mha_gemm (fn names the caller in messages; dt: A's and B's). */
static mha_status check_args(mha_ctx *ctx, const char *fn, int ta, int tb, int64_t M, int64_t N,
                             int64_t K, const void *A, int64_t lda, const void *B, int64_t ldb,
                             mha_dtype dt, const float *C, int64_t ldc) {
    if (M < 0 || N < 0 || K < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: M, N, K: got %lld, %lld, %lld, expected >= 0", fn, (long long)M,
                        (long long)N, (long long)K);
    int64_t acols = ta ? M : K, bcols = tb ? K : N;
    const char *one = ", at least 1"; /* (a zero-length row still needs a stride) */
    if (lda < (acols > 1 ? acols : 1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: lda: got %lld, expected >= %lld (%s%s)", fn,
                        (long long)lda, (long long)(acols > 1 ? acols : 1),
                        ta ? "M, A transposed" : "K", acols < 1 ? one : "");
    if (ldb < (bcols > 1 ? bcols : 1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: ldb: got %lld, expected >= %lld (%s%s)", fn,
                        (long long)ldb, (long long)(bcols > 1 ? bcols : 1),
                        tb ? "K, B transposed" : "N", bcols < 1 ? one : "");
    if (ldc < (N > 1 ? N : 1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: ldc: got %lld, expected >= %lld (N%s)", fn,
                        (long long)ldc, (long long)(N > 1 ? N : 1), N < 1 ? one : "");
    /* every element's offset an offset at all (the kernels form addresses from them, and round
     * the sizes up to their blocks): A [rows, lda], B [rows, ldb], C [M, ldc] of 4-byte elements
     * (2-byte A, B: the same bound, checked in floats) */
    const struct {
        const char *name;
        int64_t rows, ld;
    } mats[3] = {{"A", ta ? K : M, lda}, {"B", tb ? N : K, ldb}, {"C", M, ldc}};
    for (int i = 0; i < 3; i++)
        if ((__int128)mats[i].rows * mats[i].ld * (__int128)sizeof(float) >
            (__int128)PTRDIFF_MAX / 2)
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: %s: got %lld rows of %lld elements, expected a matrix whose "
                            "offsets fit in memory",
                            fn, mats[i].name, (long long)mats[i].rows, (long long)mats[i].ld);
    if (M > 0 && N > 0 && !C)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: C: got NULL, expected [M, N]", fn);
    if (M > 0 && N > 0 && K > 0 && (!A || !B))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL, expected a matrix", fn,
                        !A ? "A" : "B");
    /* C is written tile by tile while A and B are still read: the elements each one touches
     * (rows of ld, as views: interleaved columns of one buffer do not overlap) must be apart.
     * A and B, only read, may share memory. K = 0 reads neither. */
    const mha_tensor c = matrix_view(C, MHA_DTYPE_F32, M, N, ldc);
    const mha_tensor ab[2] = {matrix_view(A, dt, mats[0].rows, ta ? M : K, lda),
                              matrix_view(B, dt, mats[1].rows, tb ? K : N, ldb)};
    for (int i = 0; i < 2 && K > 0; i++)
        if (mha__tensors_overlap(&c, &ab[i]))
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: C overlaps %s (C is written while A and B are read: it must not "
                            "share memory with them)",
                            fn, mats[i].name);
    return MHA_OK;
}

mha_status mha_sgemm(mha_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                     const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                     int64_t ldc) {
    mha__clear(ctx);
    mha_status st =
        check_args(ctx, "mha_sgemm", ta, tb, M, N, K, A, lda, B, ldb, MHA_DTYPE_F32, C, ldc);
    if (st != MHA_OK) return st;
    return mha__gemm(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

mha_status mha_gemm(mha_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                    const void *A, int64_t lda, const void *B, int64_t ldb, mha_dtype dtype,
                    float beta, float *C, int64_t ldc) {
    static const char *const FN = "mha_gemm";
    mha__clear(ctx);
    if (dtype != MHA_DTYPE_F32 && dtype != MHA_DTYPE_BF16 && dtype != MHA_DTYPE_F16)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: dtype: got %s, expected float32, bfloat16 or float16", FN,
                        mha_dtype_name(dtype));
    mha_status st = check_args(ctx, FN, ta, tb, M, N, K, A, lda, B, ldb, dtype, C, ldc);
    if (st != MHA_OK) return st;
    return mha__gemm_dt(ctx, NULL, ta, tb, M, N, K, alpha, A, lda, B, ldb, dtype, beta, NULL, C,
                        ldc);
}
