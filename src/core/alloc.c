/* alloc.c - aligned allocation with fault injection, and overflow-checked sizes. */
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE */
#include "internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* Fault injection and the allocation count are process-wide, and distinct contexts may
 * allocate on distinct threads at once (mha.h): both are C11 atomics. A countdown shared by
 * threads fails one allocation, whichever thread makes it. */
static atomic_long fault_countdown = -1;
static atomic_long alloc_count = 0;

void mha__fault_after(long n) { atomic_store(&fault_countdown, n < 0 ? -1 : n); }
long mha__alloc_count(void) { return atomic_load(&alloc_count); }

/* 1 if this allocation is the one to fail: counts the countdown down to 0, then disarms it. */
static int fault_now(void) {
    long c = atomic_load_explicit(&fault_countdown, memory_order_relaxed);
    while (c >= 0)
        if (atomic_compare_exchange_weak_explicit(&fault_countdown, &c, c == 0 ? -1 : c - 1,
                                                  memory_order_relaxed, memory_order_relaxed))
            return c == 0;
    return 0;
}

void *mha__malloc(size_t size) {
    if (fault_now()) return NULL;
    atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
    if (size == 0) size = 1;
    size_t rounded = (size + 63) & ~(size_t)63;
    if (rounded < size) return NULL;
    return aligned_alloc(64, rounded);
}

void *mha__calloc(size_t n, size_t size) {
    size_t total;
    if (!mha__mul_size(n, size, &total)) return NULL;
    void *p = mha__malloc(total);
    if (p) memset(p, 0, total);
    return p;
}

/* Large buffers read as streams (KV caches): 2 MiB aligned and, on Linux, advised into
 * transparent huge pages (where the system leaves that to madvise). The hardware prefetchers
 * stop at 4 KiB page boundaries; a decoding step streamed a 256 MiB fp32 cache 5-20% faster
 * from huge pages (bench/decode.sh, side by side). Zeroed, as mha__calloc. */
void *mha__calloc_stream(size_t size) {
    const size_t huge = (size_t)1 << 21;
    if (size < huge) return mha__calloc(1, size);
    if (fault_now()) return NULL;
    size_t rounded = (size + huge - 1) & ~(huge - 1);
    if (rounded < size) return NULL;
    void *p = aligned_alloc(huge, rounded);
    if (!p) return NULL;
    atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    (void)madvise(p, rounded, MADV_HUGEPAGE); /* advice only: a refusal changes nothing */
#endif
    memset(p, 0, rounded);
    return p;
}

void mha__free(void *p) { free(p); }

int mha__mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

int mha__add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return 0;
    *out = a + b;
    return 1;
}
