/* decode_pairs.c - issue 10's decode ratios measured in pairs, in one process: the two sides of
 * each ratio timed one right after the other, round after round (the order alternating), so
 * that the machine's memory, which switches between a shared state and a quiet one from one
 * minute to the next, is the same for both sides of a pair. `bench/decode.sh` runs each side as
 * its own command, seconds apart; a switch between them moves a ratio by 30% either way.
 *
 *     cc -O2 -fopenmp -Iinclude bench/decode_pairs.c build/libmha.so -o decode_pairs
 *     ./decode_pairs [--seq S] [--rounds R] [--runs N] [--bw-mib M]
 *
 * Pairs (B = 1, D = 128, S = 32768 keys, one query token, mha_attn_kvcache, no new rows):
 *   layout   H = 32, Hkv = 8, float32 cache, 2 threads: [B, S, Hkv, D] memory (bshd, strided
 *            views) over [B, Hkv, S, D] (bhsd); target <= 1
 *   threads  H = Hkv = 1, float32: 1 thread over 2 threads (target >= 1.7), and the streaming
 *            read's own 1-thread / 2-thread time in the same rounds
 *   bf16     H = 32, Hkv = 8, bhsd, 2 threads: float32 cache over bfloat16 cache (target >= 1.8)
 * Each side of a round: N steps, each after a streaming read of M MiB on the step's threads
 * (no step finds the cache in L3), the median step; a round's ratio is its two medians', and
 * the result is the median over the rounds with their range. Prints one line per pair.
 * Stdlib, OpenMP and libmha only. */
#include "mha.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* The streaming read: words read on nt threads (each a contiguous part); seconds. */
static uint64_t *bw;
static size_t bw_words;
static double stream(int nt) {
    static volatile uint64_t sink;
    uint64_t acc = 0;
    const double t0 = now();
#pragma omp parallel for num_threads(nt) schedule(static) reduction(^ : acc)
    for (size_t i = 0; i < bw_words; i += 4) acc ^= bw[i] ^ bw[i + 1] ^ bw[i + 2] ^ bw[i + 3];
    sink ^= acc;
    return now() - t0;
}

/* One side of a pair: a decode step's arguments and its context (its thread count). */
typedef struct {
    mha_ctx *ctx;
    int threads;
    mha_tensor q, kc, vc, out;
    int32_t len;
    void *buf[4];
} side;

/* A side of B = 1, H heads, Hkv key/value heads, D = 128, S keys of dtype dt (bshd: strided
 * views of [1, S, Hkv, D] memory), on nt threads; values random. */
static void side_make(side *s, int64_t H, int64_t Hkv, int64_t S, mha_dtype dt, int bshd, int nt) {
    const int64_t D = 128;
    const size_t es = dt == MHA_DTYPE_F32 ? 4 : 2, nkv = (size_t)(Hkv * S * D);
    memset(s, 0, sizeof *s);
    if (mha_ctx_create(&s->ctx) != MHA_OK || mha_ctx_set_threads(s->ctx, nt) != MHA_OK) exit(2);
    s->threads = nt, s->len = (int32_t)S;
    for (int i = 0; i < 4; i++) {
        const size_t n = i < 2 ? nkv : (size_t)(H * D);
        s->buf[i] = malloc(n * es);
        if (!s->buf[i]) exit(2);
        for (size_t j = 0; j < n; j++) {
            const float x = (float)((j * 2654435761u) % 1000) / 1000.0f - 0.5f;
            uint32_t u;
            memcpy(&u, &x, sizeof u);
            if (es == 4) ((float *)s->buf[i])[j] = x;
            else ((uint16_t *)s->buf[i])[j] = (uint16_t)(u >> 16); /* bf16 by truncation */
        }
    }
    const int64_t sh[4] = {1, Hkv, S, D}, st[4] = {S * Hkv * D, D, Hkv * D, 1};
    const int64_t sq[4] = {1, H, 1, D};
    s->kc = mha_tensor_typed(s->buf[0], dt, 4, sh, bshd ? st : NULL);
    s->vc = mha_tensor_typed(s->buf[1], dt, 4, sh, bshd ? st : NULL);
    s->q = mha_tensor_typed(s->buf[2], dt, 4, sq, NULL);
    s->out = mha_tensor_typed(s->buf[3], dt, 4, sq, NULL);
}

static void side_free(side *s) {
    for (int i = 0; i < 4; i++) free(s->buf[i]);
    mha_ctx_free(s->ctx);
}

/* The median of n steps, each after a streaming read; *mem: the median streaming read's time. */
static double side_time(side *s, int n, double *mem) {
    double *t = malloc(sizeof(double) * (size_t)n), *m = malloc(sizeof(double) * (size_t)n);
    for (int r = 0; r < n; r++) {
        m[r] = stream(s->threads);
        const double t0 = now();
        if (mha_attn_kvcache(s->ctx, NULL, &s->q, &s->kc, &s->vc, NULL, NULL, &s->len, NULL,
                             &s->out, NULL) != MHA_OK) {
            fprintf(stderr, "decode_pairs: %s\n", mha_ctx_errmsg(s->ctx));
            exit(2);
        }
        t[r] = now() - t0;
    }
    const double med = median(t, n);
    *mem = median(m, n);
    free(t), free(m);
    return med;
}

/* rounds of a and b alternating; prints the median of a's time over b's (and of the streaming
 * reads' ratio, when with_mem) */
static void pair(const char *what, side *a, side *b, int rounds, int runs, int with_mem) {
    double *r = malloc(sizeof(double) * (size_t)rounds),
           *rm = malloc(sizeof(double) * (size_t)rounds);
    double ta = 0, tb = 0;
    for (int k = 0; k < rounds; k++) {
        double ma, mb;
        if (k % 2) tb = side_time(b, runs, &mb), ta = side_time(a, runs, &ma);
        else ta = side_time(a, runs, &ma), tb = side_time(b, runs, &mb);
        r[k] = ta / tb, rm[k] = ma / mb;
    }
    const double med = median(r, rounds), mm = median(rm, rounds);
    printf("%s: %.3f (rounds %.3f .. %.3f; last round %.3f / %.3f ms)", what, med, r[0],
           r[rounds - 1], ta * 1e3, tb * 1e3);
    if (with_mem) printf("; the streaming read's own ratio %.3f", mm);
    printf("\n");
    free(r), free(rm);
}

int main(int argc, char **argv) {
    int64_t S = 32768, mib = 1024;
    int rounds = 8, runs = 9;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--seq")) S = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--runs")) runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--bw-mib")) mib = atoll(argv[i + 1]);
        else {
            fprintf(stderr, "usage: decode_pairs [--seq S] [--rounds R] [--runs N] [--bw-mib M]\n");
            return 1;
        }
    }
    if (S < 1 || rounds < 1 || runs < 1 || mib < 1) {
        fprintf(stderr, "decode_pairs: every value must be >= 1\n");
        return 1;
    }
    bw_words = (size_t)mib << 17;
    bw = malloc(bw_words * sizeof(uint64_t));
    if (!bw) return 2;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < bw_words; i++) bw[i] = i;
    printf("decode_pairs: B=1 D=128 S=%lld, %d rounds of %d steps per side, %lld MiB streamed "
           "before each step\n",
           (long long)S, rounds, runs, (long long)mib);
    side a, b;
    side_make(&a, 32, 8, S, MHA_DTYPE_F32, 1, 2), side_make(&b, 32, 8, S, MHA_DTYPE_F32, 0, 2);
    pair("bshd / bhsd time, H=32 Hkv=8 float32, 2 threads (target <= 1)", &a, &b, rounds, runs, 0);
    side_free(&a), side_free(&b);
    side_make(&a, 1, 1, S, MHA_DTYPE_F32, 0, 1), side_make(&b, 1, 1, S, MHA_DTYPE_F32, 0, 2);
    pair("1 thread / 2 threads time, H=Hkv=1 float32 (target >= 1.7)", &a, &b, rounds, runs, 1);
    side_free(&a), side_free(&b);
    side_make(&a, 32, 8, S, MHA_DTYPE_F32, 0, 2), side_make(&b, 32, 8, S, MHA_DTYPE_BF16, 0, 2);
    pair("float32 / bfloat16 cache time, H=32 Hkv=8 bhsd, 2 threads (target >= 1.8)", &a, &b,
         rounds, runs, 0);
    side_free(&a), side_free(&b);
    free(bw);
    return 0;
}
