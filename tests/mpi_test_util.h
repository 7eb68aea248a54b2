/* mpi_test_util.h - what the MPI tests (tests/test_mpi_*.c, run under mpirun by tests/mpi.cmake)
 * share: inputs generated from a seed (the same on every rank), a rank's shard of a whole
 * tensor, comparisons that record a failure without leaving the test (so that every rank
 * still makes every collective call), and the job's verdict (failed anywhere: failed). */
#ifndef MHA_MPI_TEST_UTIL_H
#define MHA_MPI_TEST_UTIL_H

#include "harness.h"
#include "mha_mpi.h"

static int mt_rank, mt_P;

static uint64_t mt_rng = 1;
static void mt_seed(uint64_t s) { mt_rng = s * 0x9E3779B97F4A7C15ull + 1; }
static float mt_rand(void) { /* [-1, 1) */
    mt_rng ^= mt_rng >> 12;
    mt_rng ^= mt_rng << 25;
    mt_rng ^= mt_rng >> 27;
    return (float)((double)((mt_rng * 2685821657736338717ull) >> 11) / 4503599627370496.0 - 1);
}

/* n floats from the generator, scaled. */
static float *mt_randn(int64_t n, float scale) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) p[i] = scale * mt_rand();
    return p;
}

/* The rows this rank holds of a length-n sequence, as runs (mha_mpi_shard). */
typedef struct {
    int64_t start[2], len[2], n; /* n: the shard's length */
} mt_shard;

static mt_shard mt_shard_of(mha_mpi_layout layout, int64_t n) {
    mt_shard s;
    mha_status st = mha_mpi_shard(NULL, layout, n, mt_rank, mt_P, s.start, s.len);
    if (st) {
        printf("mha_mpi_shard: %s\n", mha_last_errmsg());
        exit(1);
    }
    s.n = s.len[0] + s.len[1];
    return s;
}

/* This rank's rows of a contiguous [A, X, n, Y] array (dim 2 the sequence), contiguous
 * [A, X, shard n, Y], malloc'd. Y = 1 with A = batch, X = 1 gives a [A, n] mask's rows. */
static void *mt_take(const void *full, size_t elem, int64_t A, int64_t X, int64_t n, int64_t Y,
                     const mt_shard *s) {
    char *out = malloc(elem * (size_t)(A * X * s->n * Y) + 1);
    const char *in = full;
    for (int64_t a = 0; a < A * X; a++) {
        int64_t r = 0;
        for (int run = 0; run < 2; run++)
            for (int64_t i = 0; i < s->len[run]; i++, r++)
                memcpy(out + ((size_t)(a * s->n + r) * (size_t)Y) * elem,
                       in + ((size_t)(a * n + s->start[run] + i) * (size_t)Y) * elem,
                       elem * (size_t)Y);
    }
    return out;
}

/* |got - want| <= atol + rtol |want| for every element; equal infinities match. Records a
 * failure (printing the worst element and the rank) and returns 0, without leaving the test. */
static int mt_near(int line, const char *what, const float *got, const float *want, int64_t n,
                   double rtol, double atol) {
    int64_t bad = 0, worst = -1;
    double worst_x = 0;
    for (int64_t i = 0; i < n; i++) {
        const double g = got[i], w = want[i];
        if (g == w) continue; /* equal, infinities included */
        const double x = fabs(g - w) - (atol + rtol * fabs(w));
        if (x > 0 || isnan(x)) {
            bad++;
            if (worst < 0 || x > worst_x || isnan(x)) worst = i, worst_x = x;
        }
    }
    if (!bad) return 1;
    printf("  line %d: [%s] rank %d of %d: %s: %lld of %lld out of tolerance (rtol %g, atol %g); "
           "worst [%lld]: got %.9g, expected %.9g\n",
           line, harness_cur, mt_rank, mt_P, what, (long long)bad, (long long)n, rtol, atol,
           (long long)worst, got[worst], want[worst]);
    harness_cur_failed = 1;
    return 0;
}
/* The largest finite |x| of n values (0: none). */
static double mt_max_abs(const float *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(x[i]) && fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}
/* Within 1e-5 relative: of each element, or of the tensor's largest element (a sum that cancels
 * to a small value carries the rounding of its large terms: float32 sums in another order differ
 * by a few ulps of those, not of the result). */
#define MT_NEAR(what, got, want, n)                                                                \
    mt_near(__LINE__, what, got, want, n, 1e-5, 1e-5 * mt_max_abs(want, n))

/* Records a failure unless cond (no return: every rank keeps making the collective calls). */
#define MT_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("  line %d: [%s] rank %d of %d: expected %s: ", __LINE__, harness_cur, mt_rank, \
                   mt_P, #cond);                                                                   \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            harness_cur_failed = 1;                                                                \
        }                                                                                          \
    } while (0)

/* A status and a message that must contain want. */
#define MT_STATUS(ctx, got, want_st, want_msg)                                                     \
    MT_CHECK((got) == (want_st) && strstr(mha_ctx_errmsg(ctx), (want_msg)),                        \
             "status %s (expected %s), message \"%s\" (expected to contain \"%s\")",               \
             mha_status_str(got), mha_status_str(want_st), mha_ctx_errmsg(ctx), (want_msg))

/* Runs run(&cases[i]) for every case of the array, naming the cases that fail. */
#define MT_RUN_CASES(cases, run)                                                                   \
    for (size_t i_ = 0; i_ < sizeof(cases) / sizeof((cases)[0]); i_++) {                           \
        const int before_ = harness_cur_failed;                                                    \
        harness_cur_failed = 0;                                                                    \
        run(&(cases)[i_]);                                                                         \
        if (harness_cur_failed) printf("  (case %s)\n", (cases)[i_].name);                         \
        harness_cur_failed |= before_;                                                             \
    }

static void mt_init(int *argc, char ***argv) {
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mt_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mt_P);
}

/* The job's verdict on every rank: failed if a test failed on any rank. */
static int mt_finish(void) {
    int mine = harness_failed, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (mt_rank == 0) printf("%d ranks: %s\n", mt_P, any ? "FAILED" : "all passed");
    harness_report();
    MPI_Finalize();
    return any ? 1 : 0;
}

#endif
