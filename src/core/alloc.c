/* alloc.c - aligned allocation with fault injection, and overflow-checked sizes. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* Fault injection is process-wide and only used by single-threaded tests. */
static long fault_countdown = -1;
static long alloc_count = 0;

void mha__fault_after(long n) { fault_countdown = n; }
long mha__alloc_count(void) { return alloc_count; }

void *mha__malloc(size_t size) {
    if (fault_countdown == 0) {
        fault_countdown = -1;
        return NULL;
    }
    if (fault_countdown > 0) fault_countdown--;
    alloc_count++;
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
