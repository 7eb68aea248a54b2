/* gemm_cpu.c - mha_sgemm and OpenBLAS's cblas_sgemm on one thread, alternating in one process,
 * compared by CPU time: on a shared, oversubscribed machine the wall time of a run says more
 * about the other tenants than about the code, the CPU time it took much less so. Prints the
 * median (and range) over the rounds of the rate ratio mha / OpenBLAS, and the largest
 * difference between the two results.
 *
 *   cc -O2 -Iinclude bench/gemm_cpu.c build/libmha.a -fopenmp -lopenblas -lm -lpng -lz \
 *       -o build/gemm_cpu
 *   OPENBLAS_NUM_THREADS=1 bench/openblas_env build/gemm_cpu M N K ta tb [rounds]
 *
 * One thread only: two thread pools in one process (libgomp's and OpenBLAS's) would fight for
 * the cores. Not part of the library (mha never links a BLAS). */
#include <cblas.h>
#include <mha.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: gemm_cpu M N K ta tb [rounds]\n");
        return 1;
    }
    long M = atol(argv[1]), N = atol(argv[2]), K = atol(argv[3]);
    int ta = atoi(argv[4]), tb = atoi(argv[5]), rounds = argc > 6 ? atoi(argv[6]) : 7;
    if (M <= 0 || N <= 0 || K <= 0 || rounds < 1 || rounds > 1000) {
        fprintf(stderr, "gemm_cpu: bad arguments\n");
        return 1;
    }
    float *A = malloc(sizeof(float) * (size_t)(M * K)),
          *B = malloc(sizeof(float) * (size_t)(K * N));
    float *C = malloc(sizeof(float) * (size_t)(M * N)),
          *R = malloc(sizeof(float) * (size_t)(M * N));
    double *ratio = malloc(sizeof(double) * (size_t)rounds);
    mha_ctx *ctx = NULL;
    if (!A || !B || !C || !R || !ratio || mha_ctx_create(&ctx) != MHA_OK ||
        mha_ctx_set_threads(ctx, 1) != MHA_OK) {
        fprintf(stderr, "gemm_cpu: out of memory\n");
        return 2;
    }
    srand(1);
    for (long i = 0; i < M * K; i++) A[i] = (float)rand() / RAND_MAX - 0.5f;
    for (long i = 0; i < K * N; i++) B[i] = (float)rand() / RAND_MAX - 0.5f;
    long lda = ta ? M : K, ldb = tb ? K : N;
    for (int r = -1; r < rounds; r++) { /* one warm-up round */
        double t0 = cpu_now();
        if (mha_sgemm(ctx, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N) != MHA_OK) {
            fprintf(stderr, "gemm_cpu: %s\n", mha_ctx_errmsg(ctx));
            return 2;
        }
        double t1 = cpu_now();
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    (int)M, (int)N, (int)K, 1.0f, A, (int)lda, B, (int)ldb, 0.0f, R, (int)N);
        double t2 = cpu_now();
        if (r >= 0) ratio[r] = (t2 - t1) / (t1 - t0); /* rate ratio = time ratio inverted */
    }
    double maxdiff = 0;
    for (long i = 0; i < M * N; i++) {
        double d = C[i] > R[i] ? C[i] - R[i] : R[i] - C[i];
        if (d > maxdiff) maxdiff = d;
    }
    qsort(ratio, (size_t)rounds, sizeof(double), cmp);
    printf("{\"what\":\"gemm_cpu\",\"M\":%ld,\"N\":%ld,\"K\":%ld,\"ta\":%d,\"tb\":%d,\"rounds\":%d,"
           "\"ratio_median\":%.4f,\"ratio_min\":%.4f,\"ratio_max\":%.4f,\"maxdiff\":%.3g}\n",
           M, N, K, ta, tb, rounds, ratio[rounds / 2], ratio[0], ratio[rounds - 1], maxdiff);
    mha_ctx_free(ctx);
    free(A), free(B), free(C), free(R), free(ratio);
    return 0;
}
