/* cli_tokens.c - token labels read from a text file, one per line (mha viz --tokens, mha explain
 * --tokens): opened without blocking and checked before any read, so that a FIFO, a device or a
 * huge file is refused instead of hanging or filling memory. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A token file larger than this is refused before reading it: far more than any sequence that
 * can be drawn, and small enough that reading it is harmless. */
#define TOKENS_MAX_BYTES ((size_t)64 << 20)

void cli_tokens_free(cli_tokens *t) {
    free(t->text);
    free(t->tok);
    memset(t, 0, sizeof *t);
}

static const char *file_kind(mode_t m) {
    return S_ISDIR(m)    ? "directory"
           : S_ISFIFO(m) ? "FIFO"
           : S_ISCHR(m)  ? "character device"
           : S_ISBLK(m)  ? "block device"
           : S_ISSOCK(m) ? "socket"
                         : "special file";
}

/* Reads the whole of path (a regular file of at most TOKENS_MAX_BYTES) into *text, NUL
 * terminated. Opened non-blocking and checked with fstat before any read, so that a FIFO, a
 * device (/dev/zero) or a huge file is refused instead of hanging or filling memory. */
static int tokens_read(const char *opt, const char *path, char **text, size_t *len) {
    *text = NULL, *len = 0;
    int fd;
    do fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) return cli_fail("%s: cannot open %s: %s", opt, path, strerror(errno));
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) != 0) rc = cli_fail("%s: cannot stat %s: %s", opt, path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        rc = cli_fail("%s: %s: got a %s, expected a regular file (one token per line)", opt, path,
                      file_kind(sb.st_mode));
    else if ((uint64_t)sb.st_size > TOKENS_MAX_BYTES)
        rc = cli_fail("%s: %s: got %lld bytes, expected at most %zu MiB (one token per line)", opt,
                      path, (long long)sb.st_size, TOKENS_MAX_BYTES >> 20);
    size_t size = rc ? 0 : (size_t)sb.st_size, n = 0;
    char *p = rc ? NULL : malloc(size + 1);
    if (!rc && !p) rc = cli_fail("%s: out of memory reading %s", opt, path);
    while (!rc && n < size) { /* a file that grew meanwhile is read up to its size at fstat */
        ssize_t k = read(fd, p + n, size - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) rc = cli_fail("%s: cannot read %s: %s", opt, path, strerror(errno));
        if (k <= 0) break;
        n += (size_t)k;
    }
    close(fd);
    if (rc) {
        free(p);
        return rc;
    }
    p[n] = 0;
    *text = p, *len = n;
    return 0;
}

int cli_tokens_load(const char *opt, const char *path, int64_t want, const char *what,
                    cli_tokens *t) {
    memset(t, 0, sizeof *t);
    size_t n;
    int rc = tokens_read(opt, path, &t->text, &n);
    if (rc) return rc;
    if (memchr(t->text, 0, n)) {
        cli_tokens_free(t);
        return cli_fail("%s: %s contains a NUL byte, expected text (one token per line)", opt,
                        path);
    }
    /* a UTF-8 byte order mark (Windows editors write one) is not part of the first token */
    size_t bom = n >= 3 && !memcmp(t->text, "\xef\xbb\xbf", 3) ? 3 : 0;
    if (bom) memmove(t->text, t->text + 3, (n -= 3) + 1);
    int64_t lines = 0;
    for (size_t i = 0; i < n; i++) lines += t->text[i] == '\n';
    if (n && t->text[n - 1] != '\n') lines++;
    if (lines != want) {
        int64_t got = lines;
        cli_tokens_free(t);
        return cli_fail("%s: %s has %lld lines, expected %lld (one token per %s)", opt, path,
                        (long long)got, (long long)want, what);
    }
    t->tok = malloc((size_t)(want ? want : 1) * sizeof *t->tok);
    if (!t->tok) {
        cli_tokens_free(t);
        return cli_fail("%s: out of memory", opt);
    }
    char *p = t->text;
    for (int64_t i = 0; i < want; i++) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        size_t len = strlen(p);
        if (len && p[len - 1] == '\r') p[len - 1] = 0;
        t->tok[i] = p;
        p = nl ? nl + 1 : p + len;
    }
    t->n = want;
    return 0;
}
