/* ab_core.c - two builds of libmha.so timed against each other in one process: the attention
 * core's forward (or backward) of one shape, the two libraries alternating round by round.
 *
 *     cc -O2 -Iinclude bench/ab_core.c -ldl -o ab_core
 *     ./ab_core LIB_A LIB_B B H N D [--causal] [--backward] [--bf16] [--rounds R] [--check]
 *     ./ab_core LIB_A LIB_B --gemm M N K TA TB [--rounds R] [--check]
 *
 * --check first runs each library once and compares their outputs byte for byte (out and lse;
 * with --backward dq, dk and dv too; C for --gemm), printing which differ: a change meant to
 * keep the bits (a new blocking, a prefetch) is checked in the same command that times it.
 * --gemm times mha_sgemm (C = op(A) op(B), op transposing when TA / TB is 1) instead of the core.
 *
 * Each library is dlopen'ed on its own (RTLD_LOCAL: its calls stay within itself), with its own
 * context on 2 threads. A round times a batch of calls of A and a batch of B (the order
 * alternating from round to round), each the median of its batch, and takes the ratio B / A;
 * the median ratio over the rounds and its quartiles are printed, with each library's best
 * rate. On a shared machine whose speed moves by 10% from one minute to the next, the ratio of
 * two measurements made a second apart is what a change is judged by (BENCHMARKS.md); a
 * library against itself gives 1.00 +- 0.03.
 *
 * Stdlib and libdl only; the libraries' own functions are found by dlsym. */
#include "mha.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef mha_status (*fwd_fn)(mha_ctx *, const mha_attn_params *, const mha_tensor *,
                             const mha_tensor *, const mha_tensor *, const mha_mask *, mha_tensor *,
                             mha_tensor *, mha_tensor *);
typedef mha_status (*bwd_fn)(mha_ctx *, const mha_attn_params *, const mha_tensor *,
                             const mha_tensor *, const mha_tensor *, const mha_mask *,
                             const mha_tensor *, const mha_tensor *, const mha_tensor *,
                             mha_tensor *, mha_tensor *, mha_tensor *);

typedef struct {
    void *h;
    mha_ctx *ctx;
    fwd_fn fwd;
    bwd_fn bwd;
    mha_status (*sgemm)(mha_ctx *, int, int, int64_t, int64_t, int64_t, float, const float *,
                        int64_t, const float *, int64_t, float, float *, int64_t);
    const char *(*errmsg)(const mha_ctx *);
} lib;

static void *sym(void *h, const char *path, const char *name) {
    void *f = dlsym(h, name);
    if (!f) {
        fprintf(stderr, "ab_core: %s: no symbol %s\n", path, name);
        exit(2);
    }
    return f;
}

static void lib_open(lib *l, const char *path) {
    l->h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!l->h) {
        fprintf(stderr, "ab_core: %s\n", dlerror());
        exit(2);
    }
    mha_status (*create)(mha_ctx **) = (mha_status(*)(mha_ctx **))sym(l->h, path, "mha_ctx_create");
    mha_status (*threads)(mha_ctx *, int) =
        (mha_status(*)(mha_ctx *, int))sym(l->h, path, "mha_ctx_set_threads");
    l->fwd = (fwd_fn)sym(l->h, path, "mha_attn_forward");
    l->bwd = (bwd_fn)sym(l->h, path, "mha_attn_backward");
    l->sgemm = (mha_status(*)(mha_ctx *, int, int, int64_t, int64_t, int64_t, float, const float *,
                              int64_t, const float *, int64_t, float, float *,
                              int64_t))sym(l->h, path, "mha_sgemm");
    l->errmsg = (const char *(*)(const mha_ctx *))sym(l->h, path, "mha_ctx_errmsg");
    if (create(&l->ctx) || threads(l->ctx, 2)) {
        fprintf(stderr, "ab_core: %s: cannot make a context\n", path);
        exit(2);
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* --gemm: C[M, N] = op(A) op(B) with op(A) [M, K], op(B) [K, N], row-major, stored as given */
static struct {
    int on, ta, tb;
    int64_t M, N, K;
    float *A, *B, *C;
} G;

static mha_status gemm_call(const lib *l) {
    return l->sgemm(l->ctx, G.ta, G.tb, G.M, G.N, G.K, 1.0f, G.A, G.ta ? G.M : G.K, G.B,
                    G.tb ? G.K : G.N, 0.0f, G.C, G.N);
}

/* One call of the forward (and the backward) of library l on the tensors t (q, k, v, out, dout,
 * dq, dk, dv) and lse (with --gemm: one product); exits on an error. */
static void run_once(const lib *l, const char *path, const mha_attn_params *p, const mha_mask *m,
                     mha_tensor *t, mha_tensor *tl, int backward) {
    mha_status st =
        G.on ? gemm_call(l) : l->fwd(l->ctx, p, &t[0], &t[1], &t[2], m, &t[3], tl, NULL);
    if (!st && backward)
        st = l->bwd(l->ctx, p, &t[0], &t[1], &t[2], m, &t[3], tl, &t[4], &t[5], &t[6], &t[7]);
    if (st) {
        fprintf(stderr, "ab_core: %s: %s\n", path, l->errmsg(l->ctx));
        exit(2);
    }
}

/* --check: the outputs of one call of each library, byte for byte (bytes: of each of out, dq,
 * dk, dv). Prints the result; returns nonzero when they differ. */
static int compare(const lib *L, char **argv, const mha_attn_params *p, const mha_mask *m,
                   mha_tensor *t, mha_tensor *tl, size_t bytes, int backward) {
    static const char *names[5] = {"out", "dq", "dk", "dv", "lse"};
    if (G.on) { /* C */
        const size_t nb = sizeof(float) * (size_t)(G.M * G.N);
        float *c0 = malloc(nb);
        if (!c0) exit(2);
        run_once(&L[0], argv[1], p, m, t, tl, 0);
        memcpy(c0, G.C, nb);
        run_once(&L[1], argv[2], p, m, t, tl, 0);
        const int differ = memcmp(c0, G.C, nb) != 0;
        printf(differ ? "check: C differs\n" : "check: the same bytes (C)\n");
        free(c0);
        return differ;
    }
    const size_t lbytes = sizeof(float) * (size_t)(t[0].shape[0] * t[0].shape[1] * t[0].shape[2]);
    void *ref[5] = {NULL};
    const void *cur[5] = {t[3].data, t[5].data, t[6].data, t[7].data, tl->data};
    int differ = 0, nout = backward ? 5 : 2;
    run_once(&L[0], argv[1], p, m, t, tl, backward);
    for (int i = 0; i < 5; i++) {
        const size_t nb = i == 4 ? lbytes : bytes;
        if (!(ref[i] = malloc(nb))) exit(2);
        memcpy(ref[i], cur[i], nb);
    }
    run_once(&L[1], argv[2], p, m, t, tl, backward);
    for (int j = 0; j < nout; j++) {
        const int i = j == 1 && !backward ? 4 : j; /* forward: out and lse */
        const size_t nb = i == 4 ? lbytes : bytes;
        if (memcmp(ref[i], cur[i], nb)) {
            printf("check: %s differs\n", names[i]);
            differ = 1;
        }
    }
    if (!differ)
        printf("check: the same bytes (%s)\n", backward ? "out, lse, dq, dk, dv" : "out, lse");
    for (int i = 0; i < 5; i++) free(ref[i]);
    return differ;
}

#define MAX_CALLS 400
#define MAX_ROUNDS 200

int main(int argc, char **argv) {
    G.on = argc > 3 && !strcmp(argv[3], "--gemm");
    if (argc < 7 + 2 * G.on) {
        fprintf(stderr, "usage: ab_core LIB_A LIB_B B H N D [--causal] [--backward] [--bf16] "
                        "[--rounds R] [--check]\n"
                        "       ab_core LIB_A LIB_B --gemm M N K TA TB [--rounds R] [--check]\n");
        return 1;
    }
    /* (--gemm: the core's shape a token one, unused) */
    const int64_t B = G.on ? 1 : atol(argv[3]), H = G.on ? 1 : atol(argv[4]),
                  N = G.on ? 1 : atol(argv[5]), D = G.on ? 1 : atol(argv[6]);
    if (G.on) {
        G.M = atol(argv[4]), G.N = atol(argv[5]), G.K = atol(argv[6]);
        G.ta = atoi(argv[7]) != 0, G.tb = atoi(argv[8]) != 0;
    }
    int causal = 0, backward = 0, bf16 = 0, rounds = 20, check = 0;
    for (int i = 7 + 2 * G.on; i < argc; i++) {
        if (!strcmp(argv[i], "--causal")) causal = 1;
        else if (!strcmp(argv[i], "--backward")) backward = 1;
        else if (!strcmp(argv[i], "--bf16")) bf16 = 1;
        else if (!strcmp(argv[i], "--check")) check = 1;
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else {
            fprintf(stderr, "ab_core: unknown option %s\n", argv[i]);
            return 1;
        }
    }
    if (B < 1 || H < 1 || N < 1 || D < 1 || rounds < 1 || rounds > MAX_ROUNDS ||
        (G.on && (G.M < 1 || G.N < 1 || G.K < 1 || causal || backward || bf16))) {
        fprintf(stderr,
                "ab_core: B, H, N, D (or M, N, K) >= 1 and 1 <= rounds <= %d expected "
                "(--gemm: float32, no core options)\n",
                MAX_ROUNDS);
        return 1;
    }
    if (G.on) { /* deterministic values in [-0.5, 0.5) */
        float **mats[3] = {&G.A, &G.B, &G.C};
        const int64_t sizes[3] = {G.M * G.K, G.K * G.N, G.M * G.N};
        for (int i = 0; i < 3; i++) {
            if (!(*mats[i] = malloc(sizeof(float) * (size_t)sizes[i]))) return 2;
            for (int64_t j = 0; j < sizes[i]; j++)
                (*mats[i])[j] = (float)(((j + 7 * i) * 2654435761u) % 1000u) / 1000.0f - 0.5f;
        }
    }
    lib L[2];
    lib_open(&L[0], argv[1]);
    lib_open(&L[1], argv[2]);
    mha_tensor (*make)(float *, int, const int64_t *) =
        (mha_tensor(*)(float *, int, const int64_t *))sym(L[0].h, argv[1], "mha_tensor_make");
    mha_attn_params (*params_default)(void) =
        (mha_attn_params(*)(void))sym(L[0].h, argv[1], "mha_attn_params_default");
    mha_mask (*mask_default)(void) = (mha_mask(*)(void))sym(L[0].h, argv[1], "mha_mask_default");

    /* q, k, v, out, dout, dq, dk, dv: deterministic values in [-0.5, 0.5) */
    const size_t n = (size_t)(B * H * N * D), es = bf16 ? 2 : 4;
    const int64_t s4[4] = {B, H, N, D}, s3[3] = {B, H, N};
    mha_tensor t[8];
    for (int i = 0; i < 8; i++) {
        char *buf = malloc(n * es);
        if (!buf) return 2;
        for (size_t j = 0; j < n; j++) {
            float x = (float)(((j + 7u * (size_t)i) * 2654435761u) % 1000u) / 1000.0f - 0.5f;
            if (bf16) {
                uint32_t u;
                memcpy(&u, &x, 4);
                ((uint16_t *)buf)[j] = (uint16_t)(u >> 16);
            } else ((float *)buf)[j] = x;
        }
        t[i] = make((float *)buf, 4, s4);
        if (bf16) t[i].dtype = MHA_DTYPE_BF16;
    }
    float *lse = malloc(sizeof(float) * (size_t)(B * H * N));
    if (!lse) return 2;
    mha_tensor tl = make(lse, 3, s3);
    const mha_attn_params p = params_default();
    mha_mask m = mask_default();
    if (causal) m.causal = MHA_CAUSAL_TOP_LEFT;

    if (check && compare(L, argv, &p, &m, t, &tl, n * es, backward)) return 3;

    /* batches of about 20 ms at 200 GFLOP/s, 3 to MAX_CALLS calls */
    const double flops = G.on ? 2.0 * (double)G.M * (double)G.N * (double)G.K
                              : 4.0 * (double)(B * H * N) * (double)(N * D) * (causal ? 0.5 : 1) *
                                    (backward ? 2.5 : 1);
    int calls = (int)(4e9 / flops) + 3;
    if (calls > MAX_CALLS) calls = MAX_CALLS;
    double ratio[MAX_ROUNDS], best[2] = {0, 0};
    for (int r = 0; r < rounds; r++) {
        double rate[2];
        for (int k = 0; k < 2; k++) {
            const int which = r % 2 ? 1 - k : k;
            lib *l = &L[which];
            double ts[MAX_CALLS];
            for (int c = 0; c < calls; c++) {
                mha_status st;
                double t0 = now();
                if (G.on) st = gemm_call(l);
                else if (!backward)
                    st = l->fwd(l->ctx, &p, &t[0], &t[1], &t[2], &m, &t[3], &tl, NULL);
                else {
                    st = l->fwd(l->ctx, &p, &t[0], &t[1], &t[2], &m, &t[3], &tl, NULL);
                    t0 = now();
                    if (!st)
                        st = l->bwd(l->ctx, &p, &t[0], &t[1], &t[2], &m, &t[3], &tl, &t[4], &t[5],
                                    &t[6], &t[7]);
                }
                ts[c] = now() - t0;
                if (st) {
                    fprintf(stderr, "ab_core: %s: %s\n", argv[1 + which], l->errmsg(l->ctx));
                    return 2;
                }
            }
            qsort(ts, (size_t)calls, sizeof(double), cmp_double);
            rate[which] = flops / ts[calls / 2] / 1e9;
            if (rate[which] > best[which]) best[which] = rate[which];
        }
        ratio[r] = rate[1] / rate[0];
    }
    qsort(ratio, (size_t)rounds, sizeof(double), cmp_double);
    if (G.on)
        printf("gemm M=%lld N=%lld K=%lld ta %d tb %d: B / A %.3f (quartiles %.3f %.3f), best "
               "GFLOP/s A %.1f B %.1f, %d rounds of %d calls\n",
               (long long)G.M, (long long)G.N, (long long)G.K, G.ta, G.tb, ratio[rounds / 2],
               ratio[rounds / 4], ratio[3 * rounds / 4], best[0], best[1], rounds, calls);
    else
        printf(
            "B=%lld H=%lld N=%lld D=%lld%s%s%s: B / A %.3f (quartiles %.3f %.3f), best GFLOP/s A "
            "%.1f B %.1f, %d rounds of %d calls\n",
            (long long)B, (long long)H, (long long)N, (long long)D, causal ? " causal" : "",
            backward ? " backward" : " forward", bf16 ? " bf16" : "", ratio[rounds / 2],
            ratio[rounds / 4], ratio[3 * rounds / 4], best[0], best[1], rounds, calls);
    return 0;
}
