/* atomic.c - whole-file reads and atomic saves (temporary file, fsync, rename). */
#include "io_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

mha_status mha__read_file(mha_ctx *ctx, const char *who, const char *path, unsigned char **buf,
                          size_t *len) {
    *buf = NULL;
    *len = 0;
    int fd;
    do fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block */
    while (fd < 0 && errno == EINTR);
    if (fd < 0) return mha__err(ctx, MHA_ERR_IO, "%s: open: %s", who, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return mha__err(ctx, MHA_ERR_IO, "%s: stat: %s", who, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return mha__err(ctx, MHA_ERR_IO, "%s: got a %s, expected a regular file", who,
                        S_ISDIR(sb.st_mode) ? "directory" : "special file");
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size >= (uint64_t)SIZE_MAX) {
        close(fd);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: file too large (%lld bytes)", who,
                        (long long)sb.st_size);
    }
    size_t size = (size_t)sb.st_size;
    unsigned char *p = mha__malloc(size ? size : 1);
    if (!p) {
        close(fd);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (%zu bytes)", who, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, p + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            mha__free(p);
            return mha__err(ctx, MHA_ERR_IO, "%s: read: %s", who, strerror(e));
        }
        if (r == 0) break; /* the file shrank: parse what is there */
        got += (size_t)r;
    }
    close(fd);
    *buf = p;
    *len = got;
    return MHA_OK;
}

/* ---- atomic save ------------------------------------------------------------------------ */

static long long fail_write_after = -1;
void mha__io_fail_write_after(long long n) { fail_write_after = n; }

#define WBUF_CAP ((size_t)1 << 16)

typedef struct {
    int fd;
    unsigned char *buf;
    size_t used;
    int err; /* errno of the first failure, 0 if none */
} file_writer;

static int write_all(file_writer *w, const unsigned char *p, size_t n) {
    while (n) {
        size_t chunk = n;
        if (fail_write_after >= 0) {
            if (fail_write_after == 0) {
                w->err = EIO;
                return -1;
            }
            if ((long long)chunk > fail_write_after) chunk = (size_t)fail_write_after;
        }
        ssize_t r = write(w->fd, p, chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            w->err = r < 0 ? errno : EIO;
            return -1;
        }
        if (fail_write_after >= 0) fail_write_after -= r;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int file_writer_flush(file_writer *w) {
    if (w->err) return -1;
    if (w->used && write_all(w, w->buf, w->used) != 0) return -1;
    w->used = 0;
    return 0;
}

static int file_writer_cb(void *user, const void *data, size_t size) {
    file_writer *w = user;
    const unsigned char *p = data;
    if (w->err) return -1;
    if (size >= WBUF_CAP) {
        if (file_writer_flush(w) != 0) return -1;
        return write_all(w, p, size) ? -1 : 0;
    }
    if (w->used + size > WBUF_CAP && file_writer_flush(w) != 0) return -1;
    memcpy(w->buf + w->used, p, size);
    w->used += size;
    return 0;
}

/* Makes the rename durable: fsync the directory holding path (best effort). */
static void sync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) {
        strcpy(dir, ".");
    } else {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof dir) return;
        if (n == 0) n = 1; /* "/file" */
        memcpy(dir, path, n);
        dir[n] = 0;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

mha_status mha__save_atomic(mha_ctx *ctx, const char *who, const char *path, mha__emit_fn emit,
                            const void *obj) {
    static const char suffix[] = ".tmp-XXXXXX";
    size_t plen = strlen(path), tlen;
    if (plen == 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got \"\", expected a file name", who);
    if (!mha__add_size(plen, sizeof suffix, &tlen))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: path too long", who);
    char *tmp = mha__malloc(tlen);
    if (!tmp) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, suffix, sizeof suffix);

    file_writer w = {-1, NULL, 0, 0};
    w.buf = mha__malloc(WBUF_CAP);
    if (!w.buf) {
        mha__free(tmp);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    }
    w.fd = mkstemp(tmp);
    if (w.fd < 0) {
        int e = errno;
        mha__free(w.buf);
        mha__free(tmp);
        return mha__err(ctx, MHA_ERR_IO, "%s: create temporary file: %s", who, strerror(e));
    }
    /* mkstemp makes the file 0600: give the new file the mode of the one it replaces, or the
     * usual 0644. */
    struct stat sb;
    mode_t mode = 0644;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) mode = sb.st_mode & 07777;
    (void)fchmod(w.fd, mode);

    mha_status st = emit(ctx, who, obj, file_writer_cb, &w);
    if (st == MHA_OK && file_writer_flush(&w) != 0) st = MHA_ERR_IO;
    if (w.err) st = mha__err(ctx, MHA_ERR_IO, "%s: write: %s", who, strerror(w.err));
    if (st == MHA_OK && fsync(w.fd) != 0)
        st = mha__err(ctx, MHA_ERR_IO, "%s: fsync: %s", who, strerror(errno));
    if (close(w.fd) != 0 && st == MHA_OK)
        st = mha__err(ctx, MHA_ERR_IO, "%s: close: %s", who, strerror(errno));
    if (st == MHA_OK && rename(tmp, path) != 0)
        st = mha__err(ctx, MHA_ERR_IO, "%s: rename: %s", who, strerror(errno));
    if (st != MHA_OK) unlink(tmp);
    else sync_parent_dir(path);
    mha__free(w.buf);
    mha__free(tmp);
    return st;
}
