/* io_test_util.h - what the io tests share: an in-memory writer for mha_write_fn (with an
 * injected failure) and the count of staged-output leftovers in a directory. Header-only,
 * static inline functions: each test executable (and the fuzzer) includes it once. */
#ifndef MHA_IO_TEST_UTIL_H
#define MHA_IO_TEST_UTIL_H

#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned char *p;
    size_t n, cap;
    long calls, fail_at; /* the fail_at-th call (0-based) returns -1; < 0: never */
} membuf;

static inline membuf membuf_new(void) {
    membuf m = {NULL, 0, 0, 0, -1};
    return m;
}

/* An mha_write_fn appending to the membuf user. */
static inline int mem_write(void *user, const void *data, size_t size) {
    membuf *m = user;
    if (m->fail_at >= 0 && m->calls++ == m->fail_at) return -1;
    if (m->n + size > m->cap) {
        size_t cap = m->cap ? m->cap : 256;
        while (cap < m->n + size) cap *= 2;
        unsigned char *p = realloc(m->p, cap);
        if (!p) return -2;
        m->p = p;
        m->cap = cap;
    }
    memcpy(m->p + m->n, data, size);
    m->n += size;
    return 0;
}

#ifdef MHA_IO_TEST_DIRS
#include <dirent.h>
/* Entries of dir that mha_outputs leaves only by mistake: ".mha-tmp-*" and ".mha-old-*". */
static inline int count_leftovers(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, ".mha-", 5)) n++;
    closedir(d);
    return n;
}
#endif

#endif
