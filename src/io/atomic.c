/* atomic.c - staged outputs (mha_outputs): every output is written to a temporary file beside
 * its destination and synced; the commit then checks every destination, keeps a hard link to
 * each file it replaces, renames all temporaries into place, and puts the old files back if a
 * rename fails. The library's savers and the CLI write through it.
 *
 * Names: temporaries are "<dir>/.mha-tmp-XXXXXX", the commit's backups "<dir>/.mha-old-XXXXXX"
 * (15 bytes whatever the destination's name, so a 255-byte name works). A crash may leave
 * them behind; nothing else does. */
#define _XOPEN_SOURCE 700 /* realpath */
#include "io_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char *path;     /* the destination: its directory resolved (realpath), then its name */
    size_t dir_len; /* path[0 .. dir_len) is the directory ("/" is 1) */
    char *tmp;      /* the staged temporary, NULL until written */
    char *bak;      /* during the commit: the link to the replaced file */
    int aside;      /* bak is not a link yet: the old file is to be renamed there */
    int stranded;   /* a failed commit could not put the old file back from bak */
    int exists;     /* path named a regular file when declared */
    dev_t dev;
    ino_t ino;
    mode_t mode;
} out_entry;

struct mha_outputs {
    int n, cap;
    out_entry *e;
};

/* ---- test hooks ------------------------------------------------------------------------- */

static long long fail_write_after = -1;
static int fail_write_errno = EIO;
static int fail_rename_at = -1, fail_rename_errno = EIO;

void mha__io_fail_write_after(long long n, int err) {
    fail_write_after = n;
    fail_write_errno = err;
}

void mha__io_fail_rename_at(int k, int err) {
    fail_rename_at = k;
    fail_rename_errno = err;
}

/* rename(2), failing with the hook's errno when its countdown reaches 0. */
static int do_rename(const char *from, const char *to) {
    if (fail_rename_at >= 0 && fail_rename_at-- == 0) {
        errno = fail_rename_errno;
        return -1;
    }
    return rename(from, to);
}

/* ---- names ------------------------------------------------------------------------------- */

/* "<dir>/.mha-<tag>-XXXXXX" with six random letters or digits; a new draw each call. */
static char *sibling_name(const out_entry *e, const char *tag) {
    static const char digits[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static _Atomic unsigned long long counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long long x = atomic_fetch_add(&counter, 1) * 0x9e3779b97f4a7c15ull ^
                           (unsigned long long)ts.tv_nsec ^ (unsigned long long)getpid() << 32 ^
                           (unsigned long long)ts.tv_sec;
    x ^= x >> 31; /* splitmix64's finalizer */
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    size_t n = e->dir_len + sizeof "/.mha-tmp-XXXXXX";
    char *s = mha__malloc(n);
    if (!s) return NULL;
    memcpy(s, e->path, e->dir_len);
    size_t o = e->dir_len;
    if (!(o == 1 && s[0] == '/')) s[o++] = '/';
    memcpy(s + o, ".mha-", 5);
    memcpy(s + o + 5, tag, 3);
    s[o + 8] = '-';
    for (int i = 0; i < 6; i++, x /= 62) s[o + 9 + i] = digits[x % 62];
    s[o + 15] = 0;
    return s;
}

/* ---- declaring an output ---------------------------------------------------------------- */

/* The name a symbolic link at e->path (resolved: e->dir_len its directory) points to, as a
 * path (a relative one taken from the link's directory), or NULL (errno set). */
static char *link_target(const out_entry *e) {
    char buf[4096];
    const ssize_t n = readlink(e->path, buf, sizeof buf);
    if (n < 0) return NULL;
    if ((size_t)n == sizeof buf) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    const size_t dl = buf[0] == '/' ? 0 : e->dir_len + 1; /* "dir/" before a relative one */
    char *t = malloc(dl + (size_t)n + 1);
    if (!t) return NULL;
    memcpy(t, e->path, dl);
    if (dl) t[dl - 1] = '/';
    memcpy(t + dl, buf, (size_t)n);
    t[dl + (size_t)n] = 0;
    return t;
}

/* e->path = realpath(directory of path) + "/" + its last component; a symlink to a regular
 * file is followed, so that the file it names is replaced and the link kept, and so is a
 * dangling one (its target is created, as a shell's > would; the link was replaced by the
 * output before). depth: the links followed so far. */
static mha_status resolve_at(mha_ctx *ctx, const char *who, const char *path, out_entry *e,
                             int depth) {
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (!*base || !strcmp(base, ".") || !strcmp(base, ".."))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: got a directory name, expected a file name",
                        who);
    char *dir = mha__malloc(slash ? (size_t)(slash - path) + 2 : 2);
    if (!dir) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    if (!slash) strcpy(dir, ".");
    else if (slash == path) strcpy(dir, "/");
    else memcpy(dir, path, (size_t)(slash - path)), dir[slash - path] = 0;
    char *rdir = realpath(dir, NULL);
    int e_dir = errno;
    mha__free(dir);
    if (!rdir) return mha__err(ctx, MHA_ERR_IO, "%s: its directory: %s", who, strerror(e_dir));
    size_t dl = strlen(rdir), bl = strlen(base), n;
    int root = dl == 1;
    if (!mha__add_size(dl + bl, 2, &n) || !(e->path = mha__malloc(n))) {
        free(rdir);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    }
    memcpy(e->path, rdir, dl);
    if (!root) e->path[dl] = '/';
    memcpy(e->path + dl + !root, base, bl + 1);
    e->dir_len = dl;
    free(rdir);
    struct stat sb;
    if (lstat(e->path, &sb) != 0 || !S_ISLNK(sb.st_mode)) return MHA_OK;
    const int live = stat(e->path, &sb) == 0;
    if (live ? !S_ISREG(sb.st_mode) : errno != ENOENT) return MHA_OK; /* check_dest refuses */
    if (depth >= 40) /* as the kernel's limit on links in a path */
        return mha__err(ctx, MHA_ERR_IO, "%s: %s", who, strerror(ELOOP));
    /* live: the file it names, no link left; dangling: the name it holds (maybe a link) */
    char *target = live ? realpath(e->path, NULL) : link_target(e);
    if (!target) return mha__err(ctx, MHA_ERR_IO, "%s: %s", who, strerror(errno));
    mha__free(e->path);
    e->path = NULL;
    out_entry t = {0};
    mha_status st = resolve_at(ctx, who, target, &t, depth + 1);
    free(target);
    e->path = t.path;
    e->dir_len = t.dir_len;
    return st;
}

static mha_status resolve(mha_ctx *ctx, const char *who, const char *path, out_entry *e) {
    return resolve_at(ctx, who, path, e, 0);
}

/* Whether this process may create or replace the file at e->path (sb: the file, NULL when new):
 * its directory writable (not on a read-only file system), and in a sticky directory (/tmp)
 * the file or the directory its own, which rename(2) requires too. Checked before anything is
 * written or renamed, so that a commit does not fail half way for these reasons. */
static mha_status check_replaceable(mha_ctx *ctx, const char *who, const out_entry *e,
                                    const struct stat *sb) {
    char *dir = mha__malloc(e->dir_len + 1);
    if (!dir) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    memcpy(dir, e->path, e->dir_len);
    dir[e->dir_len] = 0;
    struct stat db;
    int err = 0;
    if (faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) != 0 || stat(dir, &db) != 0) err = errno;
    mha__free(dir);
    if (err) return mha__err(ctx, MHA_ERR_IO, "%s: cannot replace it: %s", who, strerror(err));
    uid_t me = geteuid();
    if (sb && (db.st_mode & S_ISVTX) && me != 0 && me != sb->st_uid && me != db.st_uid)
        return mha__err(ctx, MHA_ERR_IO,
                        "%s: cannot replace it: %s (a sticky directory, and "
                        "the file belongs to another user)",
                        who, strerror(EPERM));
    return MHA_OK;
}

/* Where e->path stands now: *exists and the file's identity; refuses what is not a regular
 * file (a device, a FIFO, a directory, a socket): outputs never replace those. */
static mha_status check_dest(mha_ctx *ctx, const char *who, out_entry *e) {
    struct stat sb;
    if (stat(e->path, &sb) != 0) {
        if (errno != ENOENT) return mha__err(ctx, MHA_ERR_IO, "%s: stat: %s", who, strerror(errno));
        e->exists = 0;
        return check_replaceable(ctx, who, e, NULL);
    }
    if (!S_ISREG(sb.st_mode))
        return mha__err(ctx, MHA_ERR_IO,
                        "%s: got a %s, expected a regular file or a new name (outputs replace "
                        "files, never directories or special files)",
                        who, S_ISDIR(sb.st_mode) ? "directory" : "device or other special file");
    e->exists = 1;
    e->dev = sb.st_dev;
    e->ino = sb.st_ino;
    e->mode = sb.st_mode & 0777;
    return check_replaceable(ctx, who, e, &sb);
}

/* Whether e->path still stands as declared (absent, or the same regular file), as now (its
 * current state, filled by check_dest from a copy of e): MHA_ERR_IO when it changed. */
static mha_status still_declared(mha_ctx *ctx, const char *who, const out_entry *e,
                                 out_entry *now) {
    *now = *e;
    mha_status st = check_dest(ctx, who, now);
    if (st == MHA_OK &&
        (now->exists != e->exists || (e->exists && (now->dev != e->dev || now->ino != e->ino))))
        st = mha__err(ctx, MHA_ERR_IO,
                      "%s: changed since it was declared (another program writes it?); nothing "
                      "was replaced",
                      who);
    return st;
}

static int same_file(const out_entry *a, const out_entry *b) {
    return !strcmp(a->path, b->path) ||
           (a->exists && b->exists && a->dev == b->dev && a->ino == b->ino);
}

static void entry_free(out_entry *e) {
    if (e->tmp) unlink(e->tmp);
    mha__free(e->tmp);
    mha__free(e->bak);
    mha__free(e->path);
    memset(e, 0, sizeof *e);
}

/* Resolves and checks path into *e (zeroed first; released on failure). */
static mha_status declare(mha_ctx *ctx, const char *who, const char *path, out_entry *e) {
    memset(e, 0, sizeof *e);
    if (!path || !*path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got %s, expected a file name", who,
                        path ? "\"\"" : "NULL");
    mha_status st = resolve(ctx, who, path, e);
    if (st == MHA_OK) st = check_dest(ctx, who, e);
    if (st != MHA_OK) entry_free(e);
    return st;
}

mha_status mha_outputs_create(mha_ctx *ctx, mha_outputs **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_outputs_create: out: got NULL, expected a pointer");
    *out = mha__calloc(1, sizeof **out);
    if (!*out) return mha__err(ctx, MHA_ERR_NOMEM, "mha_outputs_create: out of memory");
    return MHA_OK;
}

void mha_outputs_free(mha_outputs *o) {
    if (!o) return;
    for (int i = 0; i < o->n; i++) entry_free(&o->e[i]);
    mha__free(o->e);
    mha__free(o);
}

int mha_outputs_count(const mha_outputs *o) { return o ? o->n : 0; }

int mha_outputs_find(const mha_outputs *o, const char *path) {
    if (!o || !path) return -1;
    mha_ctx quiet; /* declare's messages go nowhere */
    memset(&quiet, 0, sizeof quiet);
    out_entry e;
    if (declare(&quiet, "mha_outputs_find", path, &e) != MHA_OK) return -1;
    int found = -1;
    for (int i = 0; i < o->n && found < 0; i++)
        if (same_file(&o->e[i], &e)) found = i;
    entry_free(&e);
    return found;
}

/* mha_outputs_add with the caller's message prefix. */
static mha_status outputs_add(mha_ctx *ctx, const char *who, mha_outputs *o, const char *path,
                              int *index) {
    out_entry e;
    mha_status st = declare(ctx, who, path, &e);
    if (st != MHA_OK) return st;
    for (int i = 0; i < o->n; i++)
        if (same_file(&o->e[i], &e)) {
            entry_free(&e);
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: the same file as output %d (%.200s), expected a file of its own",
                            who, i, o->e[i].path);
        }
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 4;
        out_entry *ne = o->cap < 1 << 20 ? mha__calloc((size_t)cap, sizeof *ne) : NULL;
        if (!ne) {
            entry_free(&e);
            return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
        }
        if (o->n) memcpy(ne, o->e, (size_t)o->n * sizeof *ne);
        mha__free(o->e);
        o->e = ne;
        o->cap = cap;
    }
    o->e[o->n] = e;
    if (index) *index = o->n;
    o->n++;
    return MHA_OK;
}

mha_status mha_outputs_add(mha_ctx *ctx, mha_outputs *o, const char *path, int *index) {
    mha__clear(ctx);
    if (!o)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_outputs_add: o: got NULL, expected an mha_outputs");
    char who[MHA__WHO_CAP];
    mha__io_who(who, "mha_outputs_add", path);
    return outputs_add(ctx, who, o, path, index);
}

/* ---- writing a temporary ---------------------------------------------------------------- */

#define WBUF_CAP ((size_t)1 << 16)

typedef struct {
    int fd;
    unsigned char *buf;
    size_t used;
    int err; /* errno of the first failure, taken right after the call that failed */
} file_writer;

static int write_all(file_writer *w, const unsigned char *p, size_t n) {
    while (n) {
        size_t chunk = n;
        if (fail_write_after >= 0) {
            if (fail_write_after == 0) {
                w->err = fail_write_errno;
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

/* Creates e's temporary with O_EXCL and mode 0666 (the umask applies), or with the mode of
 * the file it will replace. */
static mha_status create_tmp(mha_ctx *ctx, const char *who, out_entry *e, int *fd) {
    for (int attempt = 0; attempt < 100; attempt++) {
        char *t = sibling_name(e, "tmp");
        if (!t) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
        do *fd = open(t, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        while (*fd < 0 && errno == EINTR);
        if (*fd >= 0) {
            e->tmp = t;
            if (e->exists && fchmod(*fd, e->mode) != 0)
                return mha__err(ctx, MHA_ERR_IO, "%s: chmod: %s", who, strerror(errno));
            return MHA_OK;
        }
        int err = errno;
        mha__free(t);
        if (err != EEXIST)
            return mha__err(ctx, MHA_ERR_IO, "%s: create a temporary file beside it: %s", who,
                            strerror(err));
    }
    return mha__err(ctx, MHA_ERR_IO, "%s: create a temporary file beside it: %s", who,
                    strerror(EEXIST));
}

/* Writes obj through emit into e's temporary (replacing an earlier one), then fsync, close.
 * On failure the temporary is removed. */
static mha_status write_entry(mha_ctx *ctx, const char *who, out_entry *e, mha__emit_fn emit,
                              const void *obj) {
    if (e->tmp) unlink(e->tmp);
    mha__free(e->tmp);
    e->tmp = NULL;
    file_writer w = {-1, mha__malloc(WBUF_CAP), 0, 0};
    if (!w.buf) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    out_entry now; /* still as declared, and the mode to keep as of now */
    mha_status st = still_declared(ctx, who, e, &now);
    if (st == MHA_OK) e->mode = now.mode;
    if (st == MHA_OK) st = create_tmp(ctx, who, e, &w.fd);
    if (st == MHA_OK) {
        st = emit(ctx, who, obj, file_writer_cb, &w);
        if (st == MHA_OK && file_writer_flush(&w) != 0) st = MHA_ERR_IO;
        if (w.err) st = mha__err(ctx, MHA_ERR_IO, "%s: write: %s", who, strerror(w.err));
        if (st == MHA_OK && fsync(w.fd) != 0)
            st = mha__err(ctx, MHA_ERR_IO, "%s: fsync: %s", who, strerror(errno));
    }
    if (w.fd >= 0 && close(w.fd) != 0 && st == MHA_OK)
        st = mha__err(ctx, MHA_ERR_IO, "%s: close: %s", who, strerror(errno));
    mha__free(w.buf);
    if (st != MHA_OK && e->tmp) {
        unlink(e->tmp);
        mha__free(e->tmp);
        e->tmp = NULL;
    }
    return st;
}

static mha_status outputs_write(mha_ctx *ctx, const char *who, mha_outputs *o, int index,
                                mha__emit_fn emit, const void *obj) {
    if (!o || index < 0 || index >= o->n)
        return mha__err(
            ctx, MHA_ERR_INVALID_ARG,
            "%s: index: got %d, expected 0 .. %d (an output declared with mha_outputs_add)", who,
            index, o ? o->n - 1 : -1);
    return write_entry(ctx, who, &o->e[index], emit, obj);
}

static mha_status emit_npy(mha_ctx *ctx, const char *who, const void *obj, mha_write_fn fn,
                           void *user) {
    (void)who;
    return mha_npy_write(ctx, obj, fn, user);
}

static mha_status emit_st(mha_ctx *ctx, const char *who, const void *obj, mha_write_fn fn,
                          void *user) {
    (void)who;
    return mha_st_write(ctx, obj, fn, user);
}

typedef struct {
    mha_output_fn fn;
    void *arg;
} user_job;

static mha_status emit_user(mha_ctx *ctx, const char *who, const void *obj, mha_write_fn fn,
                            void *user) {
    const user_job *j = obj;
    mha_status st = j->fn(ctx, j->arg, fn, user);
    if (st != MHA_OK && !*mha_ctx_errmsg(ctx))
        return mha__err(ctx, st, "%s: the output function failed (%s)", who, mha_status_str(st));
    return st;
}

/* who = "fn: <the declared path>" for the messages of the write functions. */
static mha_status write_public(mha_ctx *ctx, const char *fn, mha_outputs *o, int index,
                               mha__emit_fn emit, const void *obj) {
    mha__clear(ctx);
    char who[MHA__WHO_CAP];
    mha__io_who(who, fn, o && index >= 0 && index < o->n ? o->e[index].path : NULL);
    if (!o)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: o: got NULL, expected an mha_outputs", who);
    return outputs_write(ctx, who, o, index, emit, obj);
}

mha_status mha_outputs_write_npy(mha_ctx *ctx, mha_outputs *o, int index, const mha_array *a) {
    return write_public(ctx, "mha_outputs_write_npy", o, index, emit_npy, a);
}

mha_status mha_outputs_write_st(mha_ctx *ctx, mha_outputs *o, int index, const mha_st *st) {
    if (!st)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_outputs_write_st: st: got NULL, expected a collection");
    return write_public(ctx, "mha_outputs_write_st", o, index, emit_st, st);
}

mha_status mha_outputs_write(mha_ctx *ctx, mha_outputs *o, int index, mha_output_fn fn, void *arg) {
    if (!fn)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_outputs_write: fn: got NULL, expected an output function");
    user_job j = {fn, arg};
    return write_public(ctx, "mha_outputs_write", o, index, emit_user, &j);
}

/* ---- the commit ------------------------------------------------------------------------- */

/* fsync of the directory holding e: makes its renames durable (best effort: some file
 * systems refuse to sync a directory). */
static void sync_dir(const out_entry *e) {
    char *dir = mha__malloc(e->dir_len + 1);
    if (!dir) return;
    memcpy(dir, e->path, e->dir_len);
    dir[e->dir_len] = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    mha__free(dir);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

static void commit_who(char *who, const char *who1, const out_entry *e) {
    if (who1) snprintf(who, MHA__WHO_CAP, "%s", who1);
    else mha__io_who(who, "mha_outputs_commit", e->path);
}

/* Before anything is renamed: every output written, every destination still a regular file
 * or absent (and the same file it was when declared), and a hard link kept to each file that
 * will be replaced. Returns the first failure's status; backups made so far are in e->bak. */
static mha_status commit_prepare(mha_ctx *ctx, const char *who1, mha_outputs *o) {
    char who[MHA__WHO_CAP];
    for (int i = 0; i < o->n; i++) {
        out_entry *e = &o->e[i];
        commit_who(who, who1, e);
        if (!e->tmp)
            return mha__err(ctx, MHA_ERR_STATE,
                            "%s: output %d was declared but not written "
                            "(nothing was replaced)",
                            who, i);
        out_entry now;
        mha_status st = still_declared(ctx, who, e, &now);
        if (st != MHA_OK) return st;
    }
    for (int i = 0; i < o->n; i++) {
        out_entry *e = &o->e[i];
        if (!e->exists) continue;
        commit_who(who, who1, e);
        for (int attempt = 0; !e->bak && attempt < 100; attempt++) {
            char *b = sibling_name(e, "old");
            if (!b) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
            if (link(e->path, b) == 0) {
                e->bak = b;
                break;
            }
            int err = errno;
            if (err == EPERM || err == EMLINK || err == ENOTSUP || err == EOPNOTSUPP ||
                err == ENOSYS) {
                /* No hard link here (e.g. FAT): the old file is renamed aside instead. */
                e->bak = b;
                e->aside = 1;
                break;
            }
            mha__free(b);
            if (err != EEXIST)
                return mha__err(ctx, MHA_ERR_IO,
                                "%s: keep the old file (hard link): %s; "
                                "nothing was replaced",
                                who, strerror(err));
        }
        if (!e->bak) return mha__err(ctx, MHA_ERR_IO, "%s: keep the old file: no free name", who);
    }
    return MHA_OK;
}

/* Undoes renames [0, done): the old files back from their links, new files removed. */
static void commit_undo(mha_outputs *o, int done) {
    for (int i = 0; i < done; i++) {
        out_entry *e = &o->e[i];
        if (e->bak) {
            if (rename(e->bak, e->path) == 0) {
                mha__free(e->bak);
                e->bak = NULL;
            } else {
                e->stranded = 1;
            }
        } else {
            unlink(e->path);
        }
    }
}

/* Renames e's temporary over its destination, the old file first aside when it could not be
 * linked. Returns 0, or -1 with errno set and the destination as it was. */
static int replace_one(out_entry *e) {
    int moved = e->aside;
    if (moved) {
        if (rename(e->path, e->bak) != 0) return -1;
        e->aside = 0;
    }
    if (do_rename(e->tmp, e->path) == 0) return 0;
    int err = errno;
    if (moved) { /* the old file comes back */
        if (rename(e->bak, e->path) == 0) {
            mha__free(e->bak);
            e->bak = NULL;
        } else {
            e->stranded = 1;
        }
    }
    errno = err;
    return -1;
}

/* The commit; messages start with who (one output) or "mha_outputs_commit: <path>". */
static mha_status commit(mha_ctx *ctx, const char *who1, mha_outputs *o) {
    mha_status st = commit_prepare(ctx, who1, o);
    int done = 0;
    for (; st == MHA_OK && done < o->n; done++) {
        out_entry *e = &o->e[done];
        if (replace_one(e) != 0) {
            int err = errno;
            char who[MHA__WHO_CAP];
            commit_who(who, who1, e);
            commit_undo(o, done);
            int kept = 1;
            for (int i = 0; i <= done; i++) kept &= !o->e[i].stranded;
            st = mha__err(ctx, MHA_ERR_IO, "%s: rename: %s; %s", who, strerror(err),
                          kept ? "nothing was replaced"
                               : "restoring an earlier output failed: its old content is in "
                                 "a .mha-old-* file beside it");
            break;
        }
        mha__free(e->tmp);
        e->tmp = NULL;
    }
    /* Success: drop the old files' links and sync each directory. Failure: drop the links
     * whose files are in place again, and the temporaries (by freeing the entries). */
    for (int i = 0; i < o->n; i++) {
        out_entry *e = &o->e[i];
        if (e->bak && !e->aside && !e->stranded) unlink(e->bak);
        if (st == MHA_OK) {
            int seen = 0;
            for (int j = 0; j < i && !seen; j++)
                seen = o->e[j].dir_len == e->dir_len && !memcmp(o->e[j].path, e->path, e->dir_len);
            if (!seen) sync_dir(e);
        }
    }
    for (int i = 0; i < o->n; i++) entry_free(&o->e[i]);
    o->n = 0;
    return st;
}

mha_status mha_outputs_commit(mha_ctx *ctx, mha_outputs *o) {
    mha__clear(ctx);
    if (!o)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_outputs_commit: o: got NULL, expected an mha_outputs");
    return commit(ctx, NULL, o);
}

/* ---- one file ----------------------------------------------------------------------------- */

mha_status mha__save_atomic(mha_ctx *ctx, const char *who, const char *path, mha__emit_fn emit,
                            const void *obj) {
    mha_outputs o = {0, 0, NULL};
    out_entry e;
    mha_status st = declare(ctx, who, path, &e);
    if (st != MHA_OK) return st;
    o.e = &e;
    o.n = o.cap = 1;
    st = write_entry(ctx, who, &e, emit, obj);
    if (st == MHA_OK) st = commit(ctx, who, &o);
    entry_free(&e);
    return st;
}
