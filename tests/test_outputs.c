/* test_outputs.c - outputs written all or nothing (mha_outputs): a failing rename puts every
 * earlier output back, special files are refused, the same file is recognised through any path,
 * the umask applies, long names work, errno is reported as it was; and the loaders check a
 * file's magic before reading it whole. */
#define _XOPEN_SOURCE 700 /* mknod, ftruncate, symlink */
#include "harness.h"
#include "core/internal.h"
#include "io/io_internal.h"
#define MHA_IO_TEST_DIRS
#include "io_test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static char tmpdir[256];

static void in_tmp(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static int put_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fputs(text, f);
    return fclose(f) == 0;
}

/* The first 63 bytes of a file (or "" if it cannot be read). */
static const char *peek(const char *path) {
    static char buf[64];
    buf[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* An output function writing the string arg. */
static mha_status put_text(mha_ctx *ctx, void *arg, mha_write_fn write, void *user) {
    (void)ctx;
    const char *s = arg;
    return write(user, s, strlen(s)) ? MHA_ERR_IO : MHA_OK;
}

static mha_status fail_with_message(mha_ctx *ctx, void *arg, mha_write_fn write, void *user) {
    (void)arg, (void)write, (void)user;
    return mha__err(ctx, MHA_ERR_SHAPE, "renderer: weights: got nothing");
}

/* Stages "new <name>" into each of n paths. */
static mha_status stage_all(mha_ctx *ctx, mha_outputs *o, char paths[][300], int n) {
    static char text[3][16];
    for (int i = 0; i < n; i++) {
        int idx;
        mha_status st = mha_outputs_add(ctx, o, paths[i], &idx);
        if (st != MHA_OK) return st;
        snprintf(text[i], sizeof text[i], "new %d", i);
        st = mha_outputs_write(ctx, o, idx, put_text, text[i]);
        if (st != MHA_OK) return st;
    }
    return MHA_OK;
}

/* Fault 2: whichever rename fails, the outputs replaced before it are put back. */
TEST(commit_is_all_or_nothing) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char p[3][300];
    in_tmp(p[0], sizeof p[0], "a.npy");
    in_tmp(p[1], sizeof p[1], "b.npy");
    in_tmp(p[2], sizeof p[2], "c.npy"); /* a new file */
    ASSERT_TRUE(put_file(p[0], "old a") && put_file(p[1], "old b"));
    ASSERT_TRUE(chmod(p[0], 0600) == 0);
    for (int k = 0; k < 3; k++) {
        mha_outputs *o;
        ASSERT_OK(ctx, mha_outputs_create(ctx, &o));
        ASSERT_OK(ctx, stage_all(ctx, o, p, 3));
        ASSERT_EQ(count_leftovers(tmpdir), 3);
        mha__io_fail_rename_at(k, EBUSY);
        mha_status st = mha_outputs_commit(ctx, o);
        mha__io_fail_rename_at(-1, 0);
        ASSERT_EQ(st, MHA_ERR_IO);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "rename: Device or resource busy; nothing was "
                                                 "replaced");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), p[k] + strlen(tmpdir));
        ASSERT_TRUE(!strcmp(peek(p[0]), "old a") && !strcmp(peek(p[1]), "old b"));
        ASSERT_TRUE(access(p[2], F_OK) != 0);
        ASSERT_EQ(count_leftovers(tmpdir), 0);
        ASSERT_EQ(mha_outputs_count(o), 0);
        mha_outputs_free(o);
    }
    mha_outputs *o;
    ASSERT_OK(ctx, mha_outputs_create(ctx, &o));
    ASSERT_OK(ctx, stage_all(ctx, o, p, 3));
    ASSERT_OK(ctx, mha_outputs_commit(ctx, o));
    mha_outputs_free(o);
    for (int i = 0; i < 3; i++) {
        char want[16];
        snprintf(want, sizeof want, "new %d", i);
        ASSERT_TRUE(!strcmp(peek(p[i]), want));
    }
    struct stat sb;
    ASSERT_TRUE(stat(p[0], &sb) == 0 && (sb.st_mode & 0777) == 0600); /* the mode is kept */
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    for (int i = 0; i < 3; i++) unlink(p[i]);
    mha_ctx_free(ctx);
}

/* A destination that changed between the write and the commit, or was never written: nothing
 * is replaced; mha_outputs_free removes the temporaries. */
TEST(commit_checks_every_destination_first) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char p[2][300];
    in_tmp(p[0], sizeof p[0], "first.npy");
    in_tmp(p[1], sizeof p[1], "second.npy");
    ASSERT_TRUE(put_file(p[0], "old first"));
    mha_outputs *o;
    ASSERT_OK(ctx, mha_outputs_create(ctx, &o));
    ASSERT_OK(ctx, stage_all(ctx, o, p, 2));
    ASSERT_TRUE(mkdir(p[1], 0755) == 0); /* the second destination is now a directory */
    ASSERT_EQ(mha_outputs_commit(ctx, o), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "second.npy: got a directory");
    ASSERT_TRUE(!strcmp(peek(p[0]), "old first"));
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    rmdir(p[1]);
    int idx;
    ASSERT_OK(ctx, mha_outputs_add(ctx, o, p[0], &idx));
    ASSERT_OK(ctx, mha_outputs_add(ctx, o, p[1], &idx));
    ASSERT_OK(ctx, mha_outputs_write(ctx, o, 0, put_text, "x"));
    ASSERT_EQ(mha_outputs_commit(ctx, o), MHA_ERR_STATE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "output 1 was declared but not written");
    ASSERT_TRUE(!strcmp(peek(p[0]), "old first"));
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    /* Written and never committed: freeing discards it. */
    ASSERT_OK(ctx, mha_outputs_add(ctx, o, p[0], &idx));
    ASSERT_OK(ctx, mha_outputs_write(ctx, o, idx, put_text, "y"));
    ASSERT_OK(ctx, mha_outputs_write(ctx, o, idx, put_text, "z")); /* again: replaces */
    ASSERT_EQ(count_leftovers(tmpdir), 1);
    ASSERT_EQ(mha_outputs_write(ctx, o, 5, put_text, "z"), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_outputs_write(ctx, o, idx, fail_with_message, NULL), MHA_ERR_SHAPE);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "renderer: weights: got nothing");
    mha_outputs_free(o);
    mha_outputs_free(NULL);
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    ASSERT_TRUE(!strcmp(peek(p[0]), "old first"));
    unlink(p[0]);
    mha_ctx_free(ctx);
}

/* A destination replaced, created or removed by someone else between the declaration and the
 * write (the computation in between may take long), or between the write and the commit, is
 * refused: another program's file is never overwritten, and nothing is replaced. */
TEST(destination_changed_since_declared) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char p[300], other[300];
    in_tmp(p, sizeof p, "changing.npy");
    in_tmp(other, sizeof other, "other.tmp");
    for (int when = 0; when < 2; when++)    /* before the write, before the commit */
        for (int how = 0; how < 3; how++) { /* replaced, created, removed */
            unlink(p);
            if (how != 1) ASSERT_TRUE(put_file(p, "OLD"));
            mha_outputs *o;
            int idx;
            ASSERT_OK(ctx, mha_outputs_create(ctx, &o));
            ASSERT_OK(ctx, mha_outputs_add(ctx, o, p, &idx));
            if (when) ASSERT_OK(ctx, mha_outputs_write(ctx, o, idx, put_text, "mine"));
            if (how == 2) ASSERT_TRUE(unlink(p) == 0);
            else { /* another program's file, moved into place */
                ASSERT_TRUE(put_file(other, "NEW"));
                ASSERT_TRUE(rename(other, p) == 0);
            }
            mha_status st = when ? mha_outputs_commit(ctx, o)
                                 : mha_outputs_write(ctx, o, idx, put_text, "mine");
            ASSERT_EQ(st, MHA_ERR_IO);
            ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "changing.npy: changed since it was declared");
            if (!when) ASSERT_EQ(mha_outputs_commit(ctx, o), MHA_ERR_STATE); /* nothing staged */
            ASSERT_TRUE(!strcmp(peek(p), how == 2 ? "" : "NEW"));
            mha_outputs_free(o);
            ASSERT_EQ(count_leftovers(tmpdir), 0);
        }
    unlink(p);
    mha_ctx_free(ctx);
}

/* Fault 3: devices, FIFOs and directories are refused and stay what they were. */
TEST(special_destinations_are_refused) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char fifo[300], dev[300];
    in_tmp(fifo, sizeof fifo, "fifo");
    in_tmp(dev, sizeof dev, "null");
    ASSERT_TRUE(mkfifo(fifo, 0644) == 0);
    int have_dev = mknod(dev, S_IFCHR | 0666, makedev(1, 3)) == 0; /* root only */
    mha_array a;
    int64_t s[1] = {2};
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F32, 1, s, &a));
    const char *paths[3] = {fifo, have_dev ? dev : "/dev/null", tmpdir};
    for (int i = 0; i < 3; i++) {
        ASSERT_EQ(mha_npy_save(ctx, paths[i], &a), MHA_ERR_IO);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "expected a regular file or a new name");
    }
    struct stat sb;
    ASSERT_TRUE(stat(fifo, &sb) == 0 && S_ISFIFO(sb.st_mode));
    if (have_dev) ASSERT_TRUE(stat(dev, &sb) == 0 && S_ISCHR(sb.st_mode));
    ASSERT_TRUE(stat("/dev/null", &sb) == 0 && S_ISCHR(sb.st_mode));
    /* Through a symbolic link too. */
    char link_path[300];
    in_tmp(link_path, sizeof link_path, "to-fifo");
    ASSERT_TRUE(symlink("fifo", link_path) == 0);
    mha_outputs *o;
    ASSERT_OK(ctx, mha_outputs_create(ctx, &o));
    ASSERT_EQ(mha_outputs_add(ctx, o, link_path, NULL), MHA_ERR_IO);
    ASSERT_EQ(mha_outputs_count(o), 0);
    mha_outputs_free(o);
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    unlink(link_path);
    unlink(fifo);
    if (have_dev) unlink(dev);
    mha_array_free(&a);
    mha_ctx_free(ctx);
}

/* Fault 4: the same file through ".", "..", a symbolic link or a hard link. */
TEST(same_file_through_any_path) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char y[300], dot[300], up[300], sub[300], sym[300], hard[300], other[300];
    in_tmp(y, sizeof y, "y.npy");
    in_tmp(dot, sizeof dot, "./y.npy");
    in_tmp(sub, sizeof sub, "sub");
    in_tmp(up, sizeof up, "sub/../y.npy");
    in_tmp(sym, sizeof sym, "sym.npy");
    in_tmp(hard, sizeof hard, "hard.npy");
    in_tmp(other, sizeof other, "other.npy");
    ASSERT_TRUE(mkdir(sub, 0755) == 0);
    mha_outputs *o;
    ASSERT_OK(ctx, mha_outputs_create(ctx, &o));
    int idx = -1;
    ASSERT_OK(ctx, mha_outputs_add(ctx, o, y, &idx)); /* y.npy does not exist yet */
    ASSERT_EQ(idx, 0);
    ASSERT_EQ(mha_outputs_find(o, dot), 0);
    ASSERT_EQ(mha_outputs_find(o, up), 0);
    ASSERT_EQ(mha_outputs_find(o, other), -1);
    ASSERT_EQ(mha_outputs_add(ctx, o, dot, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "the same file as output 0");
    ASSERT_EQ(mha_outputs_add(ctx, o, up, NULL), MHA_ERR_INVALID_ARG);
    mha_outputs_free(o);
    /* Existing: a symbolic link and a hard link name it too. */
    ASSERT_TRUE(put_file(y, "y"));
    ASSERT_TRUE(symlink("y.npy", sym) == 0 && link(y, hard) == 0);
    ASSERT_OK(ctx, mha_outputs_create(ctx, &o));
    ASSERT_OK(ctx, mha_outputs_add(ctx, o, sym, NULL));
    ASSERT_EQ(mha_outputs_find(o, y), 0);
    ASSERT_EQ(mha_outputs_find(o, hard), 0);
    ASSERT_EQ(mha_outputs_add(ctx, o, hard, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_OK(ctx, mha_outputs_add(ctx, o, other, &idx));
    ASSERT_EQ(idx, 1);
    /* Writing through the link replaces the file it names; the link stays a link. */
    ASSERT_OK(ctx, mha_outputs_write(ctx, o, 0, put_text, "via link"));
    ASSERT_OK(ctx, mha_outputs_write(ctx, o, 1, put_text, "other"));
    ASSERT_OK(ctx, mha_outputs_commit(ctx, o));
    mha_outputs_free(o);
    struct stat sb;
    ASSERT_TRUE(lstat(sym, &sb) == 0 && S_ISLNK(sb.st_mode));
    ASSERT_TRUE(!strcmp(peek(y), "via link") && !strcmp(peek(other), "other"));
    ASSERT_TRUE(!strcmp(peek(hard), "y")); /* the hard link keeps the old file */
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    unlink(y), unlink(sym), unlink(hard), unlink(other), rmdir(sub);
    mha_ctx_free(ctx);
}

/* A dangling symbolic link as a destination: its target is created (a relative one in the
 * link's directory, through a chain of links) and the link stays; a target in a directory
 * that does not exist is refused, the link untouched. */
TEST(dangling_links_create_their_target) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char sym[300], sym2[300], target[300], bad[300];
    in_tmp(sym, sizeof sym, "dangling.npy");
    in_tmp(sym2, sizeof sym2, "chain.npy");
    in_tmp(target, sizeof target, "made.npy");
    in_tmp(bad, sizeof bad, "nowhere.npy");
    ASSERT_TRUE(symlink("made.npy", sym) == 0 && symlink("dangling.npy", sym2) == 0);
    ASSERT_TRUE(symlink("no-such-dir/t.npy", bad) == 0);
    mha_outputs *o;
    ASSERT_OK(ctx, mha_outputs_create(ctx, &o));
    int idx = -1;
    ASSERT_OK(ctx, mha_outputs_add(ctx, o, sym2, &idx));
    ASSERT_EQ(mha_outputs_find(o, target), 0);
    ASSERT_EQ(mha_outputs_add(ctx, o, sym, NULL), MHA_ERR_INVALID_ARG); /* the same file */
    ASSERT_EQ(mha_outputs_add(ctx, o, bad, NULL), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "its directory");
    ASSERT_OK(ctx, mha_outputs_write(ctx, o, idx, put_text, "made"));
    ASSERT_OK(ctx, mha_outputs_commit(ctx, o));
    mha_outputs_free(o);
    struct stat sb;
    ASSERT_TRUE(lstat(sym, &sb) == 0 && S_ISLNK(sb.st_mode));
    ASSERT_TRUE(lstat(sym2, &sb) == 0 && S_ISLNK(sb.st_mode));
    ASSERT_TRUE(lstat(bad, &sb) == 0 && S_ISLNK(sb.st_mode));
    ASSERT_TRUE(lstat(target, &sb) == 0 && S_ISREG(sb.st_mode));
    ASSERT_TRUE(!strcmp(peek(target), "made"));
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    unlink(sym), unlink(sym2), unlink(bad), unlink(target);
    mha_ctx_free(ctx);
}

/* Fault 10: the umask applies to new files; a replaced file's mode is kept; a 254- and a
 * 255-byte name work. */
TEST(modes_and_long_names) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_array a;
    int64_t s[1] = {2};
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F32, 1, s, &a));
    char p[300];
    in_tmp(p, sizeof p, "masked.npy");
    struct stat sb;
    mode_t old = umask(077);
    mha_status st = mha_npy_save(ctx, p, &a);
    umask(022);
    mha_status st2 = st == MHA_OK ? stat(p, &sb) : MHA_ERR_IO;
    ASSERT_OK(ctx, st);
    ASSERT_TRUE(st2 == 0 && (sb.st_mode & 0777) == 0600);
    unlink(p);
    ASSERT_OK(ctx, mha_npy_save(ctx, p, &a));
    ASSERT_TRUE(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0644);
    ASSERT_TRUE(chmod(p, 0640) == 0);
    ASSERT_OK(ctx, mha_npy_save(ctx, p, &a)); /* replacing keeps 0640 */
    ASSERT_TRUE(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0640);
    umask(old);
    unlink(p);
    for (int len = 254; len <= 255; len++) {
        char name[256], path[600];
        memset(name, 'n', (size_t)len);
        memcpy(name + len - 4, ".npy", 4);
        name[len] = 0;
        snprintf(path, sizeof path, "%s/%s", tmpdir, name);
        ASSERT_OK(ctx, mha_npy_save(ctx, path, &a));
        ASSERT_OK(ctx, mha_npy_save(ctx, path, &a)); /* and replacing it */
        mha_array b;
        ASSERT_OK(ctx, mha_npy_load(ctx, path, &b));
        mha_array_free(&b);
        unlink(path);
    }
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    mha_array_free(&a);
    mha_ctx_free(ctx);
}

/* Fault 8: the errno of the call that failed, e.g. a full disk. */
TEST(write_errors_keep_their_errno) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char p[300];
    in_tmp(p, sizeof p, "full.npy");
    ASSERT_TRUE(put_file(p, "old"));
    mha_array a;
    int64_t s[1] = {100000};
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F32, 1, s, &a));
    long long cuts[] = {0, 128, 70000};
    for (int i = 0; i < 3; i++) {
        mha__io_fail_write_after(cuts[i], ENOSPC);
        mha_status st = mha_npy_save(ctx, p, &a);
        mha__io_fail_write_after(-1, 0);
        ASSERT_EQ(st, MHA_ERR_IO);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "full.npy: write: No space left on device");
        ASSERT_TRUE(!strcmp(peek(p), "old"));
        ASSERT_EQ(count_leftovers(tmpdir), 0);
    }
    unlink(p);
    mha_array_free(&a);
    mha_ctx_free(ctx);
}

/* Every allocation of a two-output run failing in turn: an error, no leftovers, the old files
 * untouched. */
TEST(allocation_failures_leave_nothing) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char p[2][300];
    in_tmp(p[0], sizeof p[0], "f0");
    in_tmp(p[1], sizeof p[1], "f1");
    ASSERT_TRUE(put_file(p[0], "old 0") && put_file(p[1], "old 1"));
    int done = 0;
    for (long k = 0; k < 200 && !done; k++) {
        mha_outputs *o = NULL;
        mha__fault_after(k);
        mha_status st = mha_outputs_create(ctx, &o);
        if (st == MHA_OK) st = stage_all(ctx, o, p, 2);
        if (st == MHA_OK) st = mha_outputs_commit(ctx, o);
        mha__fault_after(-1);
        mha_outputs_free(o);
        ASSERT_EQ(count_leftovers(tmpdir), 0);
        if (st == MHA_OK) {
            done = 1;
        } else {
            ASSERT_EQ(st, MHA_ERR_NOMEM);
            ASSERT_TRUE(!strcmp(peek(p[0]), "old 0") && !strcmp(peek(p[1]), "old 1"));
        }
    }
    ASSERT_TRUE(done);
    ASSERT_TRUE(!strcmp(peek(p[0]), "new 0") && !strcmp(peek(p[1]), "new 1"));
    unlink(p[0]), unlink(p[1]);
    mha_ctx_free(ctx);
}

/* Fault 10: a huge file with a bad magic fails on its first bytes, not after reading it whole
 * (a sparse terabyte: reading it would fail with MHA_ERR_NOMEM, or take hours). */
TEST(loaders_check_the_magic_first) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char p[300];
    in_tmp(p, sizeof p, "huge");
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_TRUE(fd >= 0);
    ASSERT_TRUE(write(fd, "GARBAGE!", 8) == 8);
    int sized = ftruncate(fd, (off_t)1 << 40) == 0;
    close(fd);
    ASSERT_TRUE(sized);
    long allocs = mha__alloc_count();
    mha_array a;
    ASSERT_EQ(mha_npy_load(ctx, p, &a), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "magic: got \"GARBAG\"");
    mha_st *st = NULL;
    ASSERT_EQ(mha_st_load(ctx, p, &st), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "header size: got");
    /* A plausible header size but no JSON object. */
    fd = open(p, O_WRONLY | O_TRUNC);
    ASSERT_TRUE(fd >= 0);
    ASSERT_TRUE(write(fd, "\x10\0\0\0\0\0\0\0[", 9) == 9);
    sized = ftruncate(fd, (off_t)1 << 40) == 0;
    close(fd);
    ASSERT_TRUE(sized);
    ASSERT_EQ(mha_st_load(ctx, p, &st), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "expected '{'");
    ASSERT_EQ(mha__alloc_count(), allocs); /* nothing allocated for the file */
    unlink(p);
    mha_ctx_free(ctx);
}

int main(void) {
    (void)harness_near;
    snprintf(tmpdir, sizeof tmpdir, "outputs-tmp-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(commit_is_all_or_nothing);
    RUN(commit_checks_every_destination_first);
    RUN(destination_changed_since_declared);
    RUN(special_destinations_are_refused);
    RUN(same_file_through_any_path);
    RUN(dangling_links_create_their_target);
    RUN(modes_and_long_names);
    RUN(write_errors_keep_their_errno);
    RUN(allocation_failures_leave_nothing);
    RUN(loaders_check_the_magic_first);
    rmdir(tmpdir);
    return harness_report();
}
