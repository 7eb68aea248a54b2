/* openblas_sgemm.c - the OpenBLAS reference for `mha bench --gemm`: times cblas_sgemm
 * (row-major, C = op(A) op(B)) on one shape and prints the median, in the same JSON line
 * format as mha bench --json.
 *
 *   cc -O2 bench/openblas_sgemm.c -o openblas_sgemm -lopenblas
 *   OPENBLAS_NUM_THREADS=2 bench/openblas_env ./openblas_sgemm M N K [ta tb [runs]]
 *
 * (bench/openblas_env: the core type for this CPU; the JSON line names the core that ran.)
 * Built by bench/compare.sh; not part of the library (mha never links a BLAS). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: openblas_sgemm M N K [ta tb [runs]]\n");
        return 1;
    }
    long M = atol(argv[1]), N = atol(argv[2]), K = atol(argv[3]);
    int ta = argc > 5 ? atoi(argv[4]) : 0, tb = argc > 5 ? atoi(argv[5]) : 1;
    int runs = argc > 6 ? atoi(argv[6]) : 15;
    if (M <= 0 || N <= 0 || K <= 0 || runs < 1 || runs > 1000) {
        fprintf(stderr, "openblas_sgemm: bad arguments\n");
        return 1;
    }
    float *A = malloc(sizeof(float) * (size_t)(M * K)),
          *B = malloc(sizeof(float) * (size_t)(K * N));
    float *C = malloc(sizeof(float) * (size_t)(M * N));
    double *t = malloc(sizeof(double) * (size_t)runs);
    if (!A || !B || !C || !t) {
        fprintf(stderr, "openblas_sgemm: out of memory\n");
        return 2;
    }
    srand(1);
    for (long i = 0; i < M * K; i++) A[i] = (float)rand() / RAND_MAX - 0.5f;
    for (long i = 0; i < K * N; i++) B[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int r = -2; r < runs; r++) { /* two warm-up runs */
        double t0 = now();
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f, C, N);
        if (r >= 0) t[r] = now() - t0;
    }
    qsort(t, (size_t)runs, sizeof(double), cmp);
    double med = t[runs / 2];
    printf("{\"what\":\"openblas_sgemm\",\"M\":%ld,\"N\":%ld,\"K\":%ld,\"ta\":%d,\"tb\":%d,"
           "\"threads\":%d,\"core\":\"%s\",\"median_ms\":%.4f,\"gflops\":%.2f}\n",
           M, N, K, ta, tb, openblas_get_num_threads(), openblas_get_corename(), med * 1e3,
           2.0 * M * N * K / med * 1e-9);
    free(A), free(B), free(C), free(t);
    return 0;
}
