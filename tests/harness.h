/* harness.h - a tiny test harness (after libuv's test/task.h).
 *
 *   TEST(name) { ... ASSERT_EQ(a, b); ... }
 *   int main(void) { RUN(name); ...; return harness_report(); }
 *
 * Failures print file:line, both values and, for tensors, the worst index, the max absolute
 * and relative errors. harness_report() prints "N passed, N failed" and returns the exit code.
 * FOR_EACH_ISA(ctx) runs a block once per kernel path this machine supports. */
#ifndef MHA_HARNESS_H
#define MHA_HARNESS_H

#include "mha.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int harness_passed, harness_failed, harness_cur_failed;
static const char *harness_cur = "";

#define TEST(name) static void test_##name(void)
#define RUN(name)                                                                                  \
    do {                                                                                           \
        harness_cur = #name;                                                                       \
        harness_cur_failed = 0;                                                                    \
        test_##name();                                                                             \
        if (harness_cur_failed) {                                                                  \
            harness_failed++;                                                                      \
            printf("FAIL %s\n", #name);                                                            \
        } else {                                                                                   \
            harness_passed++;                                                                      \
            printf("ok   %s\n", #name);                                                            \
        }                                                                                          \
        fflush(stdout);                                                                            \
    } while (0)

#define FAILF(...)                                                                                 \
    do {                                                                                           \
        printf("  %s:%d: [%s] ", __FILE__, __LINE__, harness_cur);                                 \
        printf(__VA_ARGS__);                                                                       \
        printf("\n");                                                                              \
        harness_cur_failed = 1;                                                                    \
    } while (0)

#define ASSERT_TRUE(c)                                                                             \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            FAILF("expected true: %s", #c);                                                        \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define ASSERT_EQ(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            FAILF("%s == %s: got %lld vs %lld", #a, #b, a_, b_);                                   \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define ASSERT_STR_CONTAINS(hay, needle)                                                           \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (!h_ || !strstr(h_, n_)) {                                                              \
            FAILF("expected \"%s\" to contain \"%s\"", h_ ? h_ : "(null)", n_);                    \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* A status check that prints the context's message. */
#define ASSERT_OK(ctx, expr)                                                                       \
    do {                                                                                           \
        mha_status st_ = (expr);                                                                   \
        if (st_ != MHA_OK) {                                                                       \
            FAILF("%s: %s: %s", #expr, mha_status_str(st_), mha_ctx_errmsg(ctx));                  \
            return;                                                                                \
        }                                                                                          \
    } while (0)

/* Compares n floats with a double reference: |got - want| <= atol + rtol * |want|.
 * Prints the worst element. Returns 1 when all are within tolerance. */
static inline int harness_near(const char *file, int line, const char *what, const float *got,
                               const double *want, int64_t n, double rtol, double atol) {
    int64_t worst = -1, bad = 0;
    double worst_excess = 0, max_abs = 0, max_rel = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], w = want[i], d = fabs(g - w);
        int nan_mismatch = isnan(g) != isnan(w);
        if (!isnan(g) && !isnan(w)) {
            if (d > max_abs) max_abs = d;
            if (fabs(w) > 1e-30 && d / fabs(w) > max_rel) max_rel = d / fabs(w);
        }
        double excess = nan_mismatch ? INFINITY : d - (atol + rtol * fabs(w));
        if (excess > 0 || isnan(excess)) {
            bad++;
            if (worst < 0 || excess > worst_excess) worst = i, worst_excess = excess;
        }
    }
    if (bad) {
        printf("  %s:%d: [%s] %s: %lld of %lld elements out of tolerance (rtol %g, atol %g); "
               "worst [%lld]: got %.9g, expected %.9g; max abs err %.3g, max rel err %.3g\n",
               file, line, harness_cur, what, (long long)bad, (long long)n, rtol, atol,
               (long long)worst, got[worst], want[worst], max_abs, max_rel);
        harness_cur_failed = 1;
        return 0;
    }
    return 1;
}

#define ASSERT_NEAR_TENSOR(what, got, want, n, rtol, atol)                                         \
    do {                                                                                           \
        if (!harness_near(__FILE__, __LINE__, what, got, want, n, rtol, atol)) return;             \
    } while (0)

/* Runs the following block once per ISA the machine supports, with ctx set to it. */
#define FOR_EACH_ISA(ctx)                                                                          \
    for (int isa_i_ = MHA_ISA_GENERIC; isa_i_ <= MHA_ISA_AVX512; isa_i_++)                         \
        if (mha_isa_supported((mha_isa)isa_i_) && mha_ctx_set_isa(ctx, (mha_isa)isa_i_) == MHA_OK)

static inline int harness_report(void) {
    printf("%d passed, %d failed\n", harness_passed, harness_failed);
    return harness_failed ? 1 : 0;
}

#endif
