/* read.c - whole-file reads of untrusted input: regular files only, never blocking on a FIFO,
 * and the format's first bytes checked before the rest is read or allocated. */
#include "io_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reads up to n bytes at p; returns the count (short only at the end of the file), or -1 with
 * errno set. */
static ssize_t read_full(int fd, unsigned char *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break; /* the file shrank: parse what is there */
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static mha_status open_regular(mha_ctx *ctx, const char *who, const char *path, int *fd,
                               uint64_t *size) {
    do *fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block */
    while (*fd < 0 && errno == EINTR);
    if (*fd < 0) return mha__err(ctx, MHA_ERR_IO, "%s: open: %s", who, strerror(errno));
    struct stat sb;
    mha_status st = MHA_OK;
    if (fstat(*fd, &sb) != 0) st = mha__err(ctx, MHA_ERR_IO, "%s: stat: %s", who, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = mha__err(ctx, MHA_ERR_IO, "%s: got a %s, expected a regular file", who,
                      S_ISDIR(sb.st_mode) ? "directory" : "special file");
    else if (sb.st_size < 0 || (uint64_t)sb.st_size >= (uint64_t)SIZE_MAX)
        st = mha__err(ctx, MHA_ERR_NOMEM, "%s: file too large (%lld bytes)", who,
                      (long long)sb.st_size);
    if (st != MHA_OK) {
        close(*fd);
        *fd = -1;
        return st;
    }
    *size = (uint64_t)sb.st_size;
    return MHA_OK;
}

mha_status mha__read_file(mha_ctx *ctx, const char *who, const char *path, size_t head_len,
                          mha__head_fn check, unsigned char **buf, size_t *len) {
    *buf = NULL;
    *len = 0;
    int fd;
    uint64_t size64 = 0;
    mha_status st = open_regular(ctx, who, path, &fd, &size64);
    if (st != MHA_OK) return st;
    size_t size = (size_t)size64;
    /* The format's first bytes, checked against the file's size before the whole is read:
     * a huge file that is not of the format fails here, having cost a few bytes. */
    unsigned char head[MHA__HEAD_CAP];
    if (head_len > sizeof head) head_len = sizeof head;
    ssize_t h = read_full(fd, head, head_len < size ? head_len : size);
    if (h < 0) st = mha__err(ctx, MHA_ERR_IO, "%s: read: %s", who, strerror(errno));
    size_t want = 0, got = h < 0 ? 0 : (size_t)h;
    if (st == MHA_OK && check) st = check(ctx, who, head, got, size64, &want);
    /* The header the check wants (within the file), checked before the rest is read: a huge
     * file with a broken header fails having cost its header. */
    unsigned char *hdr = NULL, *p = NULL;
    ssize_t r = 0;
    if (st == MHA_OK && want > got && want <= size) {
        if (!(hdr = mha__malloc(want)))
            st = mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (%zu bytes)", who, want);
        else if ((r = read_full(fd, hdr + got, want - got)) >= 0) {
            memcpy(hdr, head, got);
            got += (size_t)r;
            size_t again = 0;
            if (got == want) st = check(ctx, who, hdr, got, size64, &again);
        }
    }
    if (st == MHA_OK && r >= 0 && !(p = mha__malloc(size ? size : 1)))
        st = mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (%zu bytes)", who, size);
    if (st == MHA_OK && r >= 0) {
        memcpy(p, hdr ? hdr : head, got);
        r = got == size ? 0 : read_full(fd, p + got, size - got);
        if (r >= 0) got += (size_t)r;
    }
    if (st == MHA_OK && r < 0) st = mha__err(ctx, MHA_ERR_IO, "%s: read: %s", who, strerror(errno));
    close(fd);
    mha__free(hdr);
    if (st != MHA_OK) {
        mha__free(p);
        return st;
    }
    *buf = p;
    *len = got;
    return MHA_OK;
}
