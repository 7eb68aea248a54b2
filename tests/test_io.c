/* test_io.c - arrays, .npy and safetensors: round trips, every malformed-file error, mutation
 * fuzzing of valid files, atomic saves and allocation-failure injection. */
#define _GNU_SOURCE /* memmem */
#include "harness.h"
#include "core/internal.h"
#include "io/io_internal.h"
#define MHA_IO_TEST_DIRS
#include "io_test_util.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------------------- */

static char tmpdir[256];

static void path_in_tmp(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static int write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    size_t w = n ? fwrite(p, 1, n, f) : 0;
    return fclose(f) == 0 && w == n;
}

static unsigned char *read_whole(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *p = NULL;
    size_t cap = 0;
    *n = 0;
    for (;;) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 4096;
            p = realloc(p, cap);
        }
        size_t r = fread(p + *n, 1, cap - *n, f);
        if (r == 0) break;
        *n += r;
    }
    fclose(f);
    return p;
}

/* Fills an array with deterministic values of its dtype (bools: 0/1). */
static void fill(mha_array *a, unsigned seed) {
    int64_t n = mha_array_numel(a);
    for (int64_t i = 0; i < n; i++) {
        unsigned v = (unsigned)i * 2654435761u + seed * 40503u;
        switch (a->dtype) {
        case MHA_DTYPE_F32: ((float *)a->data)[i] = (float)((int)(v % 2001) - 1000) / 7.0f; break;
        case MHA_DTYPE_F64:
            ((double *)a->data)[i] = (double)((int)(v % 20001) - 10000) / 3.0;
            break;
        case MHA_DTYPE_I32: ((int32_t *)a->data)[i] = (int32_t)(v ^ 0x80000000u); break;
        case MHA_DTYPE_BOOL: ((uint8_t *)a->data)[i] = (uint8_t)(v >> 7 & 1); break;
        default: /* the other dtypes are stored as bytes: any pattern round-trips */
            for (size_t b = 0; b < mha_dtype_size(a->dtype); b++)
                ((uint8_t *)a->data)[(size_t)i * mha_dtype_size(a->dtype) + b] =
                    (uint8_t)(v >> (3 * b));
        }
    }
}

static int same_array(const mha_array *a, const mha_array *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    size_t bytes = (size_t)mha_array_numel(a) * mha_dtype_size(a->dtype);
    return bytes == 0 || memcmp(a->data, b->data, bytes) == 0;
}

/* Builds a .npy file from a raw header string (no padding added) and data. */
static size_t make_npy(unsigned char *out, int major, const char *header, const void *data,
                       size_t dlen) {
    size_t hl = strlen(header), pre = major == 1 ? 10 : 12;
    memcpy(out, "\x93NUMPY", 6);
    out[6] = (unsigned char)major;
    out[7] = 0;
    out[8] = (unsigned char)(hl & 0xff);
    out[9] = (unsigned char)(hl >> 8);
    if (pre == 12) out[10] = out[11] = 0;
    memcpy(out + pre, header, hl);
    if (dlen) memcpy(out + pre + hl, data, dlen);
    return pre + hl + dlen;
}

/* Builds a safetensors file from a header string and data. */
static size_t make_st(unsigned char *out, const char *header, const void *data, size_t dlen) {
    size_t hl = strlen(header);
    for (int i = 0; i < 8; i++) out[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(out + 8, header, hl);
    if (dlen) memcpy(out + 8 + hl, data, dlen);
    return 8 + hl + dlen;
}

static const int64_t shapes[6][5] = {{0}, {7}, {2, 3}, {3, 1, 4}, {2, 3, 2, 5}, {1, 2, 3, 2, 2}};

/* ---- arrays ------------------------------------------------------------------------------- */

TEST(array_basics) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_EQ(mha_dtype_size(MHA_DTYPE_F32), 4);
    ASSERT_EQ(mha_dtype_size(MHA_DTYPE_BOOL), 1);
    ASSERT_EQ(mha_dtype_size(MHA_DTYPE_I32), 4);
    ASSERT_EQ(mha_dtype_size(MHA_DTYPE_F64), 8);
    /* Every dtype safetensors has, under PyTorch's names. */
    static const struct {
        mha_dtype dt;
        size_t size;
        const char *name;
    } all[] = {{MHA_DTYPE_F16, 2, "float16"},
               {MHA_DTYPE_BF16, 2, "bfloat16"},
               {MHA_DTYPE_I64, 8, "int64"},
               {MHA_DTYPE_U8, 1, "uint8"},
               {MHA_DTYPE_I8, 1, "int8"},
               {MHA_DTYPE_I16, 2, "int16"},
               {MHA_DTYPE_U16, 2, "uint16"},
               {MHA_DTYPE_U32, 4, "uint32"},
               {MHA_DTYPE_U64, 8, "uint64"},
               {MHA_DTYPE_F8_E4M3, 1, "float8_e4m3fn"},
               {MHA_DTYPE_F8_E5M2, 1, "float8_e5m2"}};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        ASSERT_EQ(mha_dtype_size(all[i].dt), all[i].size);
        ASSERT_TRUE(strcmp(mha_dtype_name(all[i].dt), all[i].name) == 0);
    }
    ASSERT_EQ((int)MHA_DTYPE_F8_E5M2, 14);
    ASSERT_EQ(mha_dtype_size((mha_dtype)15), 0);
    ASSERT_EQ(mha_dtype_size((mha_dtype)-1), 0);
    ASSERT_TRUE(strcmp(mha_dtype_name(MHA_DTYPE_F32), "float32") == 0);
    ASSERT_TRUE(strcmp(mha_dtype_name(MHA_DTYPE_BOOL), "bool") == 0);
    ASSERT_TRUE(strcmp(mha_dtype_name(MHA_DTYPE_I32), "int32") == 0);
    ASSERT_TRUE(strcmp(mha_dtype_name(MHA_DTYPE_F64), "float64") == 0);
    ASSERT_TRUE(strcmp(mha_dtype_name((mha_dtype)15), "unknown") == 0);
    mha_array a;
    int64_t s[3] = {2, 3, 4};
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F64, 3, s, &a));
    ASSERT_EQ(mha_array_numel(&a), 24);
    for (int i = 0; i < 24; i++) ASSERT_TRUE(((double *)a.data)[i] == 0.0);
    mha_array_free(&a);
    ASSERT_TRUE(a.data == NULL && a.ndim == 0);
    mha_array_free(NULL);
    ASSERT_EQ(mha_array_numel(NULL), 0);
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_BOOL, 0, NULL, &a));
    ASSERT_EQ(mha_array_numel(&a), 1);
    mha_array_free(&a);
    int64_t neg[2] = {2, -1};
    ASSERT_EQ(mha_array_alloc(ctx, MHA_DTYPE_F32, 2, neg, &a), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "shape[1]: got -1, expected >= 0");
    int64_t big[2] = {(int64_t)1 << 62, 8};
    ASSERT_EQ(mha_array_alloc(ctx, MHA_DTYPE_F32, 2, big, &a), MHA_ERR_NOMEM);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "size overflows");
    ASSERT_TRUE(a.data == NULL);
    ASSERT_EQ(mha_array_alloc(ctx, MHA_DTYPE_F32, 6, s, &a), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_array_alloc(ctx, (mha_dtype)15, 1, s, &a), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_array_alloc(ctx, MHA_DTYPE_F32, 1, s, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_array_alloc(NULL, MHA_DTYPE_F32, 2, NULL, &a), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "mha_array_alloc: shape: got NULL");
    mha__fault_after(0);
    ASSERT_EQ(mha_array_alloc(ctx, MHA_DTYPE_F32, 3, s, &a), MHA_ERR_NOMEM);
    mha_ctx_free(ctx);
}

/* ---- .npy ---------------------------------------------------------------------------------- */

/* 1 for the dtypes NumPy has (all but bfloat16 and the fp8 types). */
static int npy_has(int dt) {
    return dt != MHA_DTYPE_BF16 && dt != MHA_DTYPE_F8_E4M3 && dt != MHA_DTYPE_F8_E5M2;
}

TEST(npy_roundtrip_every_dtype_and_ndim) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const char *const descr[] = {"'<f4'", "'|b1'", "'<i4'", "'<f8'", "'<f2'",
                                        NULL,    "'<i8'", "'|u1'", "'|i1'", "'<i2'",
                                        "'<u2'", "'<u4'", "'<u8'", NULL,    NULL};
    for (int dt = 0; dt <= MHA_DTYPE_F8_E5M2; dt++)
        for (int nd = 0; nd <= MHA_MAX_DIMS; nd++) {
            mha_array a, b;
            ASSERT_OK(ctx, mha_array_alloc(ctx, (mha_dtype)dt, nd, shapes[nd], &a));
            fill(&a, (unsigned)(dt * 10 + nd));
            if (!npy_has(dt)) { /* no .npy code: refused, naming the dtype, no file left */
                membuf m = membuf_new();
                ASSERT_EQ(mha_npy_write(ctx, &a, mem_write, &m), MHA_ERR_UNSUPPORTED);
                ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), mha_dtype_name((mha_dtype)dt));
                ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "expected a dtype NumPy has");
                ASSERT_EQ(m.n, 0);
                char path[300];
                path_in_tmp(path, sizeof path, "nonpy.npy");
                ASSERT_EQ(mha_npy_save(ctx, path, &a), MHA_ERR_UNSUPPORTED);
                ASSERT_TRUE(access(path, F_OK) != 0);
                mha_array_free(&a);
                continue;
            }
            membuf m = membuf_new();
            ASSERT_OK(ctx, mha_npy_write(ctx, &a, mem_write, &m));
            /* numpy's layout: the data starts at a multiple of 64, the header ends in '\n'. */
            size_t hl = (size_t)m.p[8] | (size_t)m.p[9] << 8;
            ASSERT_EQ(m.p[6], 1);
            ASSERT_EQ((10 + hl) % 64, 0);
            ASSERT_EQ(m.p[10 + hl - 1], '\n');
            ASSERT_TRUE(memmem(m.p, m.n, descr[dt], strlen(descr[dt])) != NULL);
            ASSERT_OK(ctx, mha_npy_parse(ctx, m.p, m.n, &b));
            if (!same_array(&a, &b)) FAILF("dtype %d ndim %d: memory round trip differs", dt, nd);
            mha_array_free(&b);
            char path[300];
            path_in_tmp(path, sizeof path, "rt.npy");
            ASSERT_OK(ctx, mha_npy_save(ctx, path, &a));
            ASSERT_OK(ctx, mha_npy_load(ctx, path, &b));
            if (!same_array(&a, &b)) FAILF("dtype %d ndim %d: file round trip differs", dt, nd);
            size_t fl;
            unsigned char *f = read_whole(path, &fl);
            ASSERT_TRUE(f && fl == m.n && memcmp(f, m.p, fl) == 0);
            free(f);
            mha_array_free(&a);
            mha_array_free(&b);
            free(m.p);
        }
    /* A zero-sized dim. */
    int64_t z[3] = {2, 0, 3};
    mha_array a, b;
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F32, 3, z, &a));
    membuf m = membuf_new();
    ASSERT_OK(ctx, mha_npy_write(ctx, &a, mem_write, &m));
    ASSERT_OK(ctx, mha_npy_parse(ctx, m.p, m.n, &b));
    ASSERT_TRUE(same_array(&a, &b) && mha_array_numel(&b) == 0);
    mha_array_free(&a);
    mha_array_free(&b);
    free(m.p);
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    mha_ctx_free(ctx);
}

TEST(npy_header_variants) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static unsigned char buf[4096];
    float d[3] = {1.5f, -2.0f, 3.25f};
    const char *ok[] = {
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }     \n",
        "{'shape': (3,), 'fortran_order': False, 'descr': '<f4'}",
        "{ \"descr\" :\"<f4\",'shape':( 3 , ),'fortran_order':False}\n",
        "{'descr': '=f4', 'fortran_order': False, 'shape': (3L,)}",
        "{'fortran_order': False, 'descr': '<f4', 'shape': (1, 3)}",
        "{'fortran_order': False, 'descr': '<f4', 'shape': (1, 3,), }",
    };
    for (int v = 1; v <= 3; v++)
        for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
            size_t n = make_npy(buf, v, ok[i], d, sizeof d);
            mha_array a;
            ASSERT_OK(ctx, mha_npy_parse(ctx, buf, n, &a));
            ASSERT_EQ(a.dtype, MHA_DTYPE_F32);
            ASSERT_EQ(mha_array_numel(&a), 3);
            ASSERT_TRUE(((float *)a.data)[2] == 3.25f);
            mha_array_free(&a);
        }
    /* A scalar: shape (). */
    double x = 42.5;
    size_t n = make_npy(buf, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': ()}", &x, 8);
    mha_array a;
    ASSERT_OK(ctx, mha_npy_parse(ctx, buf, n, &a));
    ASSERT_EQ(a.ndim, 0);
    ASSERT_TRUE(((double *)a.data)[0] == 42.5);
    mha_array_free(&a);
    /* Bools: any nonzero byte reads as 1. */
    unsigned char bits[4] = {0, 1, 7, 255};
    n = make_npy(buf, 1, "{'descr': '|b1', 'fortran_order': False, 'shape': (4,)}", bits, 4);
    ASSERT_OK(ctx, mha_npy_parse(ctx, buf, n, &a));
    ASSERT_EQ(a.dtype, MHA_DTYPE_BOOL);
    unsigned char *bp = a.data;
    ASSERT_TRUE(bp[0] == 0 && bp[1] == 1 && bp[2] == 1 && bp[3] == 1);
    mha_array_free(&a);
    int32_t iv[2] = {-5, 7};
    n = make_npy(buf, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,)}", iv, 8);
    ASSERT_OK(ctx, mha_npy_parse(ctx, buf, n, &a));
    ASSERT_TRUE(a.dtype == MHA_DTYPE_I32 && ((int32_t *)a.data)[0] == -5);
    mha_array_free(&a);
    mha_ctx_free(ctx);
}

/* Parses buf and expects status want and a message containing needle. */
#define EXPECT_NPY(buf, n, want, needle)                                                           \
    do {                                                                                           \
        mha_array a_;                                                                              \
        mha_status s_ = mha_npy_parse(ctx, buf, n, &a_);                                           \
        if (s_ != (want)) {                                                                        \
            FAILF("npy: got %s (%s), expected %s", mha_status_str(s_), mha_ctx_errmsg(ctx),        \
                  mha_status_str(want));                                                           \
            mha_array_free(&a_);                                                                   \
            return;                                                                                \
        }                                                                                          \
        ASSERT_TRUE(a_.data == NULL);                                                              \
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), needle);                                          \
    } while (0)

TEST(npy_malformed) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static unsigned char buf[4096];
    static float d[100];
    const char *h3 = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
    size_t n = make_npy(buf, 1, h3, d, 12);
    buf[1] = 'X';
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "magic: got \"\\x93XUMPY\"");
    n = make_npy(buf, 9, h3, d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "version: got 9.0");
    n = make_npy(buf, 1, h3, d, 12);
    buf[8] = buf[9] = 0xff; /* header length past the end of the file */
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "header length: got 65535");
    n = make_npy(buf, 2, h3, d, 12);
    buf[11] = 0x80;
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "header length: got");
    EXPECT_NPY(buf, 5, MHA_ERR_FORMAT, "expected at least 10");
    EXPECT_NPY(NULL, 0, MHA_ERR_FORMAT, "got 0 bytes");
    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 10), }", d, 100);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT,
               "mha_npy_parse: data: got 100 bytes, expected 400 (shape [10, 10], float32");
    n = make_npy(buf, 1, h3, d, 13);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "data: got 13 bytes, expected 12");
    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }", d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "shape[0]: got a negative size");
    n = make_npy(buf, 1,
                 "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }", d,
                 12);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "shape [4611686018427387904, 8]: size overflows");
    n = make_npy(buf, 1,
                 "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", d,
                 12);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "overflows int64");
    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1), }", d,
                 4);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "more than 5 dims");
    n = make_npy(buf, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }", d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "descr: got '>f4' (big-endian)");
    n = make_npy(buf, 1, "{'descr': '>i8', 'fortran_order': False, 'shape': (3,), }", d, 24);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "descr: got '>i8' (big-endian)");
    n = make_npy(buf, 1, "{'descr': '|f2', 'fortran_order': False, 'shape': (3,), }", d, 6);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "descr: got '|f2', expected '<f4', '<f8', '<f2'");
    n = make_npy(buf, 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }", d, 24);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "descr: got '<c8'");
    n = make_npy(buf, 1, "{'descr': '<V2', 'fortran_order': False, 'shape': (3,), }", d, 6);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "descr: got '<V2'");
    n = make_npy(buf, 1, "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", d, 24);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "descr: got '|O'");
    n = make_npy(buf, 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }", d,
                 12);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "structured dtype");
    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }", d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_UNSUPPORTED, "fortran_order: got True");
    n = make_npy(buf, 1, "{'descr': '<f4', 'shape': (3,), }", d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "missing key 'fortran_order'");
    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}", d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "got key 'x'");
    n = make_npy(buf, 1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,)}",
                 d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "duplicate key 'descr'");
    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3)}", d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "trailing comma");
    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)} x", d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "unexpected text after '}'");
    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3 3)}", d, 12);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "shape: expected ',' or ')'");
    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,", d, 0);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "header:");
    n = make_npy(buf, 1, "garbage", d, 0);
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "expected '{'");
    /* A NUL byte inside a string must not cut it short ('<f4\0x' is not '<f4'). */
    n = make_npy(buf, 1, "{'descr': '<f4@x', 'fortran_order': False, 'shape': (3,), }", d, 12);
    *(unsigned char *)memchr(buf, '@', n) = 0;
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "descr: expected a string");
    n = make_npy(buf, 1, "{'descr@x': '<f4', 'fortran_order': False, 'shape': (3,), }", d, 12);
    *(unsigned char *)memchr(buf, '@', n) = 0;
    EXPECT_NPY(buf, n, MHA_ERR_FORMAT, "header:");

    /* Every truncation of a valid file fails cleanly. */
    mha_array a;
    int64_t s2[2] = {3, 5};
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F32, 2, s2, &a));
    membuf m = membuf_new();
    ASSERT_OK(ctx, mha_npy_write(ctx, &a, mem_write, &m));
    mha_array_free(&a);
    for (size_t cut = 0; cut < m.n; cut++) {
        mha_array b;
        mha_status st = mha_npy_parse(ctx, m.p, cut, &b);
        if (st != MHA_ERR_FORMAT) {
            FAILF("truncated at %zu of %zu: got %s (%s)", cut, m.n, mha_status_str(st),
                  mha_ctx_errmsg(ctx));
            mha_array_free(&b);
            break;
        }
    }
    ASSERT_TRUE(strstr(mha_ctx_errmsg(ctx), "expected 60 (shape [3, 5], float32; truncated"));
    free(m.p);

    /* Argument checks. */
    ASSERT_EQ(mha_npy_parse(ctx, buf, n, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_npy_parse(ctx, NULL, 10, &a), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_npy_load(ctx, NULL, &a), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_npy_write(ctx, NULL, mem_write, &m), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_npy_save(ctx, NULL, &a), MHA_ERR_INVALID_ARG);
    mha_ctx_free(ctx);
}

TEST(npy_load_errors_name_the_file) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char path[300];
    mha_array a;
    path_in_tmp(path, sizeof path, "missing.npy");
    ASSERT_EQ(mha_npy_load(ctx, path, &a), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "missing.npy: open: No such file or directory");
    ASSERT_EQ(mha_npy_load(ctx, tmpdir, &a), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "expected a regular file");
    static unsigned char buf[1024];
    static float d[100];
    size_t n =
        make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 10), }", d, 100);
    path_in_tmp(path, sizeof path, "x.npy");
    ASSERT_TRUE(write_file(path, buf, n));
    ASSERT_EQ(mha_npy_load(ctx, path, &a), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_npy_load: ");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                        "x.npy: data: got 100 bytes, expected 400 (shape [10, 10], float32");
    unlink(path);
    mha_ctx_free(ctx);
}

/* A huge file with a wrong header fails on the header, which the loaders read and check (with
 * the data size it implies) before they allocate for the rest: here 1 TiB, sparse, that would
 * otherwise fail for memory, or fill it, before the header's error. */
TEST(huge_file_fails_on_its_header) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static unsigned char buf[256];
    const off_t huge = (off_t)1 << 40;
    char npy[300], st[300];
    path_in_tmp(npy, sizeof npy, "huge.npy");
    path_in_tmp(st, sizeof st, "huge.safetensors");
    mha_array a;
    size_t n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
                        NULL, 0);
    ASSERT_TRUE(write_file(npy, buf, n) && truncate(npy, huge) == 0);
    ASSERT_EQ(mha_npy_load(ctx, npy, &a), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "huge.npy: header: got key 'x'");
    n = make_npy(buf, 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", NULL, 0);
    ASSERT_TRUE(write_file(npy, buf, n) && truncate(npy, huge) == 0);
    ASSERT_EQ(mha_npy_load(ctx, npy, &a), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "expected 8 (shape [2], float32; trailing bytes)");
    mha_st *s = NULL;
    n = make_st(buf, "{\"a\": nul}", NULL, 0);
    ASSERT_TRUE(write_file(st, buf, n) && truncate(st, huge) == 0);
    ASSERT_EQ(mha_st_load(ctx, st, &s), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "huge.safetensors: header: tensor 'a': expected an");
    n = make_st(buf, "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
                NULL, 0);
    ASSERT_TRUE(write_file(st, buf, n) && truncate(st, huge) == 0);
    ASSERT_EQ(mha_st_load(ctx, st, &s), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "data area: got 1099511627");
    ASSERT_TRUE(s == NULL);
    unlink(npy);
    unlink(st);
    mha_ctx_free(ctx);
}

/* ---- safetensors --------------------------------------------------------------------------- */

static mha_st *sample_st(mha_ctx *ctx) {
    mha_st *st;
    if (mha_st_create(ctx, &st) != MHA_OK) return NULL;
    char name[64];
    for (int dt = 0; dt <= MHA_DTYPE_F8_E5M2; dt++)
        for (int nd = 0; nd <= MHA_MAX_DIMS; nd++) {
            mha_array a;
            if (mha_array_alloc(ctx, (mha_dtype)dt, nd, shapes[nd], &a) != MHA_OK) break;
            fill(&a, (unsigned)(dt * 7 + nd));
            snprintf(name, sizeof name, "t%d.%s", 9 - nd, mha_dtype_name((mha_dtype)dt));
            mha_status s = mha_st_set(ctx, st, name, &a);
            mha_array_free(&a);
            if (s != MHA_OK) {
                mha_st_free(st);
                return NULL;
            }
        }
    return st;
}

static int same_st(const mha_st *a, const mha_st *b) {
    if (mha_st_count(a) != mha_st_count(b)) return 0;
    for (int i = 0; i < mha_st_count(a); i++) {
        const char *n = mha_st_name(a, i);
        if (strcmp(n, mha_st_name(b, i)) != 0) return 0;
        if (!same_array(mha_st_find(a, n), mha_st_find(b, n))) return 0;
    }
    return 1;
}

TEST(st_roundtrip) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_st *st = sample_st(ctx), *back = NULL;
    ASSERT_TRUE(st != NULL);
    ASSERT_EQ(mha_st_count(st), 90); /* 15 dtypes x 6 ranks */
    for (int i = 1; i < mha_st_count(st); i++)
        ASSERT_TRUE(strcmp(mha_st_name(st, i - 1), mha_st_name(st, i)) < 0);
    ASSERT_TRUE(mha_st_name(st, 90) == NULL && mha_st_name(st, -1) == NULL);
    ASSERT_TRUE(mha_st_find(st, "nope") == NULL && mha_st_find(st, NULL) == NULL);
    membuf m = membuf_new();
    ASSERT_OK(ctx, mha_st_write(ctx, st, mem_write, &m));
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--) hn = hn << 8 | m.p[i];
    ASSERT_EQ(hn % 8, 0);
    ASSERT_OK(ctx, mha_st_parse(ctx, m.p, m.n, &back));
    ASSERT_TRUE(same_st(st, back));
    mha_st_free(back);
    char path[300];
    path_in_tmp(path, sizeof path, "rt.safetensors");
    ASSERT_OK(ctx, mha_st_save(ctx, st, path));
    ASSERT_OK(ctx, mha_st_load(ctx, path, &back));
    ASSERT_TRUE(same_st(st, back));
    mha_st_free(back);
    free(m.p);

    /* Replacing keeps the count; the copy is independent of the caller's array. */
    mha_array a;
    int64_t s1[1] = {2};
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_BOOL, 1, s1, &a));
    ((uint8_t *)a.data)[0] = 5;
    ASSERT_OK(ctx, mha_st_set(ctx, st, "t9.float32", &a));
    ((uint8_t *)a.data)[1] = 1;
    ASSERT_EQ(mha_st_count(st), 90); /* 15 dtypes x 6 ranks */
    const mha_array *f = mha_st_find(st, "t9.float32");
    ASSERT_TRUE(f && f->dtype == MHA_DTYPE_BOOL && ((uint8_t *)f->data)[0] == 1 &&
                ((uint8_t *)f->data)[1] == 0);
    ASSERT_EQ(mha_st_set(ctx, st, "__metadata__", &a), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_st_set(ctx, st, NULL, &a), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_st_set(ctx, st, "x", NULL), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_st_set(ctx, NULL, "x", &a), MHA_ERR_INVALID_ARG);
    /* What the reader refuses is refused when set: a name, key or value not UTF-8 (a raw 0xff,
     * an overlong '/', a surrogate, a sequence cut short), the collection unchanged. */
    const char *bad[4] = {"w\xff", "\xc0\xaf", "\xed\xa0\x80", "ok \xe2\x82"};
    for (int i = 0; i < 4; i++) {
        ASSERT_EQ(mha_st_set(ctx, st, bad[i], &a), MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_st_set: name: got bytes that are not UTF-8");
        ASSERT_EQ(mha_st_meta_set(ctx, st, bad[i], "v"), MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_st_meta_set: key: got bytes");
        ASSERT_EQ(mha_st_meta_set(ctx, st, "k", bad[i]), MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_st_meta_set: value: got bytes");
    }
    ASSERT_EQ(mha_st_count(st), 90);
    ASSERT_TRUE(mha_st_meta_get(st, "k") == NULL);
    /* Names that need escaping survive the JSON. */
    const char *odd = "a \"quoted\"\\ name\n\x01 \xc3\xa9";
    ASSERT_OK(ctx, mha_st_set(ctx, st, odd, &a));
    mha_array_free(&a);
    m = membuf_new();
    ASSERT_OK(ctx, mha_st_write(ctx, st, mem_write, &m));
    ASSERT_OK(ctx, mha_st_parse(ctx, m.p, m.n, &back));
    ASSERT_TRUE(same_st(st, back));
    ASSERT_TRUE(mha_st_find(back, odd) != NULL);
    mha_st_free(back);
    free(m.p);
    /* An empty collection. */
    mha_st *empty;
    ASSERT_OK(ctx, mha_st_create(ctx, &empty));
    m = membuf_new();
    ASSERT_OK(ctx, mha_st_write(ctx, empty, mem_write, &m));
    ASSERT_EQ(m.n, 16);
    ASSERT_OK(ctx, mha_st_parse(ctx, m.p, m.n, &back));
    ASSERT_EQ(mha_st_count(back), 0);
    mha_st_free(back);
    mha_st_free(empty);
    free(m.p);
    mha_st_free(st);
    mha_st_free(NULL);
    ASSERT_EQ(mha_st_count(NULL), 0);
    mha_ctx_free(ctx);
}

TEST(st_reads_other_writers) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static unsigned char buf[4096];
    float d[6] = {1, 2, 3, 4, 5, 6};
    /* Metadata, key order, whitespace, escapes, a surrogate pair. */
    size_t n =
        make_st(buf,
                "{\"__metadata__\": {\"format\": \"pt\", \"x\\u00e9\": \"\"},\n"
                "  \"b\\u00e9\\ud83d\\ude00\" : {\"data_offsets\": [8, 24], \"shape\": [2, 2],"
                " \"dtype\": \"F32\"}, \"a\": {\"shape\": [2], \"dtype\": \"F32\", "
                "\"data_offsets\": [0, 8]}}   ",
                d, 24);
    mha_st *st;
    ASSERT_OK(ctx, mha_st_parse(ctx, buf, n, &st));
    ASSERT_EQ(mha_st_count(st), 2);
    ASSERT_TRUE(strcmp(mha_st_name(st, 0), "a") == 0);
    ASSERT_TRUE(strcmp(mha_st_name(st, 1), "b\xc3\xa9\xf0\x9f\x98\x80") == 0);
    const mha_array *b = mha_st_find(st, "b\xc3\xa9\xf0\x9f\x98\x80");
    ASSERT_TRUE(b && b->ndim == 2 && ((float *)b->data)[3] == 6.0f);
    mha_st_free(st);
    mha_ctx_free(ctx);
}

#define EXPECT_ST(hdr, data, dlen, want, needle)                                                   \
    do {                                                                                           \
        size_t n_ = make_st(buf, hdr, data, dlen);                                                 \
        mha_st *s_ = (mha_st *)1;                                                                  \
        mha_status st_ = mha_st_parse(ctx, buf, n_, &s_);                                          \
        if (st_ != (want)) {                                                                       \
            FAILF("st %s: got %s (%s), expected %s", hdr, mha_status_str(st_),                     \
                  mha_ctx_errmsg(ctx), mha_status_str(want));                                      \
            mha_st_free(st_ == MHA_OK ? s_ : NULL);                                                \
            return;                                                                                \
        }                                                                                          \
        ASSERT_TRUE(s_ == NULL);                                                                   \
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), needle);                                          \
    } while (0)

TEST(st_malformed) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static unsigned char buf[1 << 16];
    static float d[64];
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]", d, 8,
              MHA_ERR_FORMAT, "header: expected ',' or '}'");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], }", d, 8, MHA_ERR_FORMAT,
              "header: expected a string");
    EXPECT_ST("[1, 2]", d, 0, MHA_ERR_FORMAT, "expected '{'");
    EXPECT_ST("", d, 0, MHA_ERR_FORMAT, "header size: got 0, expected the size of a JSON object");
    EXPECT_ST("{\"a\": nul}", d, 0, MHA_ERR_FORMAT, "tensor 'a': expected an object");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2]}}", d, 8, MHA_ERR_FORMAT,
              "tensor 'a': missing key data_offsets");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", d, 4,
              MHA_ERR_FORMAT, "tensor 'a': data_offsets: got [0, 8], expected end <= 4");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", d, 8,
              MHA_ERR_FORMAT, "expected begin <= end");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", d, 8,
              MHA_ERR_FORMAT, "tensor 'a': data: got 8 bytes, expected 12 (shape [3], float32)");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
              " \"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
              d, 16, MHA_ERR_FORMAT, "tensor 'a': duplicate name");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
              " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
              d, 12, MHA_ERR_FORMAT, "overlaps tensor 'a'");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", d, 12,
              MHA_ERR_FORMAT, "expected begin 0 (no gap");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", d, 12,
              MHA_ERR_FORMAT, "data area: got 12 bytes, expected 8");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8], \"x\": 1}}",
              d, 8, MHA_ERR_FORMAT, "tensor 'a': got key 'x'");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"dtype\": \"F32\", \"shape\": [2], "
              "\"data_offsets\": [0, 8]}}",
              d, 8, MHA_ERR_FORMAT, "duplicate key");
    EXPECT_ST("{\"w\": {\"dtype\": \"F4\", \"shape\": [2], \"data_offsets\": [0, 1]}}", d, 1,
              MHA_ERR_UNSUPPORTED,
              "tensor 'w': dtype: got F4, expected one of F32, F64, F16, BF16, BOOL, U8, I8, I16, "
              "U16, I32, U32, I64, U64, F8_E4M3, F8_E5M2");
    EXPECT_ST("{\"w\": {\"dtype\": \"f16\", \"shape\": [2], \"data_offsets\": [0, 4]}}", d, 4,
              MHA_ERR_UNSUPPORTED, "dtype: got f16");
    EXPECT_ST("{\"w\": {\"dtype\": \"BF16\", \"shape\": [3], \"data_offsets\": [0, 4]}}", d, 4,
              MHA_ERR_FORMAT, "tensor 'w': data: got 4 bytes, expected 6 (shape [3], bfloat16)");
    /* an escaped NUL inside the dtype string is shown, not cut off */
    EXPECT_ST("{\"w\": {\"dtype\": \"F32\\u0000x\", \"shape\": [1], \"data_offsets\": [0, 4]}}", d,
              4, MHA_ERR_UNSUPPORTED, "dtype: got F32\\x00x, expected");
    EXPECT_ST("{\"w\": {\"dtype\": \"I64\", \"shape\": [2], \"data_offsets\": [0, 8]}}", d, 8,
              MHA_ERR_FORMAT, "data: got 8 bytes, expected 16 (shape [2], int64)");
    EXPECT_ST("{\"w\": {\"dtype\": \"C64\", \"shape\": [2], \"data_offsets\": [0, 16]}}", d, 16,
              MHA_ERR_UNSUPPORTED, "dtype: got C64");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}", d, 8,
              MHA_ERR_FORMAT, "tensor 'a': shape[0]: got -2, expected >= 0");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904, 8], "
              "\"data_offsets\": [0, 8]}}",
              d, 8, MHA_ERR_FORMAT, "shape [4611686018427387904, 8]: size overflows");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [99999999999999999999], "
              "\"data_offsets\": [0, 8]}}",
              d, 8, MHA_ERR_FORMAT, "expected < 2^63");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [2.5], \"data_offsets\": [0, 8]}}", d, 8,
              MHA_ERR_FORMAT, "got 2.5, expected an integer");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1], \"data_offsets\": [0, 4]}}",
              d, 4, MHA_ERR_UNSUPPORTED, "more than 5 dims");
    EXPECT_ST("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", d, 8,
              MHA_ERR_FORMAT, "data_offsets: expected 2 integers");
    EXPECT_ST("{\"a\\u0000b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", d,
              4, MHA_ERR_FORMAT, "\\u0000");
    EXPECT_ST("{\"a\\ud800\": {}}", d, 0, MHA_ERR_FORMAT, "unpaired surrogate");
    EXPECT_ST("{\"a\\q\": {}}", d, 0, MHA_ERR_FORMAT, "bad escape");
    EXPECT_ST("{\"a\tb\": {}}", d, 0, MHA_ERR_FORMAT, "control character");
    /* Raw bytes in names and metadata must be UTF-8 (JSON's rule, which the reference reader
     * checks): a name that is not would reach Python as an undecodable str. */
    EXPECT_ST("{\"a\xff\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", d, 4,
              MHA_ERR_FORMAT, "header: invalid UTF-8 in a string at byte 3 (near \"\\xff");
    EXPECT_ST("{\"\xc0\xaf\": {}}", d, 0, MHA_ERR_FORMAT, "invalid UTF-8");     /* overlong '/' */
    EXPECT_ST("{\"\xed\xa0\x80\": {}}", d, 0, MHA_ERR_FORMAT, "invalid UTF-8"); /* surrogate */
    EXPECT_ST("{\"\xf4\x90\x80\x80\": {}}", d, 0, MHA_ERR_FORMAT, "invalid UTF-8"); /* > 10FFFF */
    EXPECT_ST("{\"\xe2\x82\": {}}", d, 0, MHA_ERR_FORMAT, "invalid UTF-8");         /* cut short */
    EXPECT_ST("{\"__metadata__\": {\"num_heads\": \"\x80\"}}", d, 0, MHA_ERR_FORMAT,
              "invalid UTF-8");
    EXPECT_ST("{\"__metadata__\": {\"a\": 1}}", d, 0, MHA_ERR_FORMAT, "expected a string value");
    EXPECT_ST("{\"__metadata__\": {}, \"__metadata__\": {}}", d, 0, MHA_ERR_FORMAT,
              "duplicate __metadata__");
    EXPECT_ST("{} {}", d, 0, MHA_ERR_FORMAT, "unexpected text after the header object");
    /* Deep nesting is just a syntax error: the parser's depth is fixed by the schema. */
    {
        static char deep[20000];
        strcpy(deep, "{\"a\": ");
        size_t k = strlen(deep);
        for (int i = 0; i < 15000; i++) deep[k++] = '[';
        deep[k] = 0;
        EXPECT_ST(deep, d, 0, MHA_ERR_FORMAT, "tensor 'a': expected an object");
    }
    /* Header sizes that lie. */
    size_t n = make_st(buf, "{}      ", d, 0);
    buf[0] = 9;
    mha_st *s = NULL;
    ASSERT_EQ(mha_st_parse(ctx, buf, n, &s), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "header size: got 9, expected at most 8");
    memset(buf, 0xff, 8);
    ASSERT_EQ(mha_st_parse(ctx, buf, n, &s), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "header size: got 18446744073709551615");
    ASSERT_EQ(mha_st_parse(ctx, buf, 3, &s), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "expected at least 8");

    /* Every truncation of a valid file fails cleanly. */
    mha_st *full = sample_st(ctx);
    ASSERT_TRUE(full != NULL);
    membuf m = membuf_new();
    ASSERT_OK(ctx, mha_st_write(ctx, full, mem_write, &m));
    mha_st_free(full);
    for (size_t cut = 0; cut < m.n; cut++) {
        mha_status st = mha_st_parse(ctx, m.p, cut, &s);
        if (st != MHA_ERR_FORMAT || s != NULL) {
            FAILF("truncated at %zu of %zu: got %s (%s)", cut, m.n, mha_status_str(st),
                  mha_ctx_errmsg(ctx));
            mha_st_free(s);
            break;
        }
    }
    free(m.p);
    ASSERT_EQ(mha_st_parse(ctx, buf, 8, NULL), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_st_parse(ctx, NULL, 8, &s), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_st_write(ctx, NULL, mem_write, &m), MHA_ERR_INVALID_ARG);
    ASSERT_EQ(mha_st_create(ctx, NULL), MHA_ERR_INVALID_ARG);
    mha_ctx_free(ctx);
}

TEST(st_load_errors_name_the_file) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char path[300];
    mha_st *s = (mha_st *)1;
    path_in_tmp(path, sizeof path, "missing.safetensors");
    ASSERT_EQ(mha_st_load(ctx, path, &s), MHA_ERR_IO);
    ASSERT_TRUE(s == NULL);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_st_load: ");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "missing.safetensors: open: No such file");
    ASSERT_EQ(mha_st_load(ctx, tmpdir, &s), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "got a directory, expected a regular file");
    ASSERT_EQ(mha_st_load(ctx, NULL, &s), MHA_ERR_INVALID_ARG);
    static unsigned char buf[256];
    float d[2] = {0};
    size_t n = make_st(
        buf, "{\"q\": {\"dtype\": \"F6_E2M3\", \"shape\": [2], \"data_offsets\": [0, 2]}}", d, 2);
    path_in_tmp(path, sizeof path, "fp6.safetensors");
    ASSERT_TRUE(write_file(path, buf, n));
    ASSERT_EQ(mha_st_load(ctx, path, &s), MHA_ERR_UNSUPPORTED);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "fp6.safetensors: tensor 'q': dtype: got F6_E2M3");
    unlink(path);
    mha_ctx_free(ctx);
}

/* Each safetensors dtype name reads as its mha_dtype with its element size, and is written
 * back under the same name (a whole model's file: int64 position_ids, bf16 or fp8 weights). */
TEST(st_every_dtype_by_name) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const char *const names[] = {"F32",  "BOOL", "I32", "F64",     "F16",
                                        "BF16", "I64",  "U8",  "I8",      "I16",
                                        "U16",  "U32",  "U64", "F8_E4M3", "F8_E5M2"};
    static unsigned char buf[512], data[24];
    for (int dt = 0; dt <= MHA_DTYPE_F8_E5M2; dt++) {
        size_t es = mha_dtype_size((mha_dtype)dt), bytes = 3 * es;
        for (size_t i = 0; i < bytes; i++)
            data[i] = (unsigned char)(dt == MHA_DTYPE_BOOL ? i % 2 : 7 * i + 1);
        char hdr[160];
        snprintf(hdr, sizeof hdr,
                 "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}", names[dt],
                 bytes);
        size_t n = make_st(buf, hdr, data, bytes);
        mha_st *st;
        ASSERT_OK(ctx, mha_st_parse(ctx, buf, n, &st));
        const mha_array *a = mha_st_find(st, "t");
        ASSERT_TRUE(a && a->dtype == (mha_dtype)dt && a->ndim == 1 && a->shape[0] == 3);
        ASSERT_TRUE(memcmp(a->data, data, bytes) == 0);
        membuf m = membuf_new();
        ASSERT_OK(ctx, mha_st_write(ctx, st, mem_write, &m));
        char want[32];
        snprintf(want, sizeof want, "\"dtype\":\"%s\"", names[dt]);
        ASSERT_TRUE(memmem(m.p, m.n, want, strlen(want)) != NULL);
        ASSERT_TRUE(m.n >= bytes && memcmp(m.p + m.n - bytes, data, bytes) == 0);
        free(m.p);
        mha_st_free(st);
    }
    mha_ctx_free(ctx);
}

/* torch.save files (zip since PyTorch 1.6, a bare pickle before) are refused with the command
 * that converts them; a safetensors file whose header size starts with the same bytes is not. */
TEST(st_torch_save_files_say_how_to_convert) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    static const unsigned char zip[] = "PK\x03\x04\x00\x00\x08\x00\x00\x00archive/data.pkl";
    static const unsigned char pickle[] = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8";
    const struct {
        const unsigned char *p;
        size_t n;
        const char *file, *converted;
    } cases[] = {{zip, sizeof zip - 1, "model.pt", "'model.safetensors'"},
                 {pickle, sizeof pickle - 1, "old.pth", "'old.safetensors'"},
                 {zip, sizeof zip - 1, "pytorch_model.bin", "'pytorch_model.safetensors'"},
                 {zip, 5, "weights", "'weights.safetensors'"},
                 {pickle, 2, "p.pt", "'p.safetensors'"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mha_st *st = (mha_st *)1;
        ASSERT_EQ(mha_st_parse(ctx, cases[i].p, cases[i].n, &st), MHA_ERR_FORMAT);
        ASSERT_TRUE(st == NULL);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                            "mha_st_parse: a PyTorch file (torch.save), not safetensors; convert "
                            "it: python -c \"import torch, mha; mha.save_file(torch.load("
                            "'model.pt'), 'model.safetensors')\"");
        char path[300], want[600];
        path_in_tmp(path, sizeof path, cases[i].file);
        ASSERT_TRUE(write_file(path, cases[i].p, cases[i].n));
        ASSERT_EQ(mha_st_load(ctx, path, &st), MHA_ERR_FORMAT);
        snprintf(want, sizeof want, "mha_st_load: %s: a PyTorch file (torch.save)", path);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
        snprintf(want, sizeof want, "mha.save_file(torch.load('%s'), '%s/%s)\"", path, tmpdir,
                 cases[i].converted + 1);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), want);
        unlink(path);
    }
    /* Header sizes 640 (0x80 0x02 ...) and 0x04034b50 ("PK\x03\x04"): the JSON decides. */
    static unsigned char buf[1024];
    char hdr[700];
    int k = snprintf(hdr, sizeof hdr, "{\"__metadata__\":{\"pad\":\"");
    while (k < 640 - 3) hdr[k++] = 'x';
    memcpy(hdr + k, "\"}}", 4);
    size_t n = make_st(buf, hdr, NULL, 0);
    ASSERT_TRUE(buf[0] == 0x80 && buf[1] == 0x02);
    mha_st *st;
    ASSERT_OK(ctx, mha_st_parse(ctx, buf, n, &st));
    mha_st_free(st);
    memcpy(buf, "PK\x03\x04\x00\x00\x00\x00", 8);
    ASSERT_EQ(mha_st_parse(ctx, buf, n, &st), MHA_ERR_FORMAT);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "header size: got 67324752");
    mha_ctx_free(ctx);
}

/* The golden fixtures are written by tests/golden/gen_golden.py (through mha_py): all load. */
TEST(st_loads_golden_fixtures) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    DIR *d = opendir(MHA_TEST_DIR "/golden");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors") != 0) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/golden/%s", MHA_TEST_DIR, e->d_name);
        mha_st *s;
        mha_status st = mha_st_load(ctx, path, &s);
        if (st != MHA_OK) {
            FAILF("%s: %s", e->d_name, mha_ctx_errmsg(ctx));
            break;
        }
        if (mha_st_count(s) == 0) FAILF("%s: no tensors", e->d_name);
        mha_st_free(s);
        n++;
    }
    if (d) closedir(d);
    printf("  (%d golden files)\n", n);
    mha_ctx_free(ctx);
}

/* ---- mutation fuzzing ------------------------------------------------------------------- */

static uint64_t rng_state;
static uint32_t rnd(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Applies 1-4 random mutations to buf (len bytes, room for cap); returns the new length. */
static size_t mutate(unsigned char *buf, size_t len, size_t cap, size_t hot_end) {
    static const unsigned char interesting[] = {0,   1,   0xff, 0x7f, 0x80, '0', '9',
                                                '-', ',', '"',  '[',  ']',  '{', '}',
                                                '(', ')', ':',  '\\', ' ',  'e', '.'};
    int k = 1 + (int)(rnd() % 4);
    for (int i = 0; i < k && len > 0; i++) {
        /* Half the mutations land in the header, where the parsing is. */
        size_t at = (rnd() & 1) && hot_end ? rnd() % (hot_end < len ? hot_end : len) : rnd() % len;
        switch (rnd() % 6) {
        case 0: buf[at] ^= (unsigned char)(1u << (rnd() % 8)); break;
        case 1: buf[at] = (unsigned char)rnd(); break;
        case 2: buf[at] = interesting[rnd() % sizeof interesting]; break;
        case 3: len = rnd() % (len + 1); break;
        case 4: /* insert a byte */
            if (len < cap) {
                memmove(buf + at + 1, buf + at, len - at);
                buf[at] = interesting[rnd() % sizeof interesting];
                len++;
            }
            break;
        case 5: /* delete a byte */
            memmove(buf + at, buf + at + 1, len - at - 1);
            len--;
            break;
        }
    }
    return len;
}

static int status_known(mha_status s) {
    return s == MHA_OK || s == MHA_ERR_FORMAT || s == MHA_ERR_UNSUPPORTED;
}

TEST(mutation_fuzz_never_crashes) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    rng_state = 12345;
    /* Seeds: a few npy files (v1, v3) and a safetensors file. */
    membuf npys[3] = {membuf_new(), membuf_new(), membuf_new()};
    for (int i = 0; i < 3; i++) {
        mha_array a;
        ASSERT_OK(ctx, mha_array_alloc(ctx, (mha_dtype)(i + 1), i + 1, shapes[i + 1], &a));
        fill(&a, (unsigned)i);
        ASSERT_OK(ctx, mha_npy_write(ctx, &a, mem_write, &npys[i]));
        mha_array_free(&a);
    }
    npys[2].p[6] = 3; /* version 3.0 with a 4-byte header length: shift the header */
    {
        membuf *m = &npys[2];
        unsigned char *p = malloc(m->n + 2);
        size_t hl = (size_t)m->p[8] | (size_t)m->p[9] << 8;
        memcpy(p, m->p, 8);
        p[8] = (unsigned char)hl;
        p[9] = (unsigned char)(hl >> 8);
        p[10] = p[11] = 0;
        memcpy(p + 12, m->p + 10, m->n - 10);
        free(m->p);
        m->p = p;
        m->n += 2;
        mha_array chk;
        ASSERT_OK(ctx, mha_npy_parse(ctx, m->p, m->n, &chk));
        mha_array_free(&chk);
    }
    mha_st *full = sample_st(ctx);
    ASSERT_TRUE(full != NULL);
    membuf stm = membuf_new();
    ASSERT_OK(ctx, mha_st_write(ctx, full, mem_write, &stm));
    mha_st_free(full);
    size_t st_hot = 8 + ((size_t)stm.p[0] | (size_t)stm.p[1] << 8);
    size_t cap = stm.n + 64;
    unsigned char *buf = malloc(cap);
    int ok_npy = 0, ok_st = 0;
    for (int it = 0; it < 6000; it++) {
        if (it % 2 == 0) {
            membuf *src = &npys[(it / 2) % 3];
            memcpy(buf, src->p, src->n);
            size_t len = mutate(buf, src->n, cap, 128);
            /* An exact-size copy so that any over-read is caught by ASan/valgrind. */
            unsigned char *exact = malloc(len ? len : 1);
            memcpy(exact, buf, len);
            mha_array a;
            mha_status st = mha_npy_parse(ctx, exact, len, &a);
            free(exact);
            if (!status_known(st)) {
                FAILF("iteration %d: npy: unexpected %s (%s)", it, mha_status_str(st),
                      mha_ctx_errmsg(ctx));
                break;
            }
            if (st == MHA_OK) {
                ok_npy++;
                ASSERT_TRUE(a.ndim >= 0 && a.ndim <= MHA_MAX_DIMS && a.data != NULL);
                mha_array_free(&a);
            } else {
                ASSERT_TRUE(a.data == NULL && mha_ctx_errmsg(ctx)[0] != 0);
            }
        } else {
            memcpy(buf, stm.p, stm.n);
            size_t len = mutate(buf, stm.n, cap, st_hot);
            unsigned char *exact = malloc(len ? len : 1);
            memcpy(exact, buf, len);
            mha_st *s = NULL;
            mha_status st = mha_st_parse(ctx, exact, len, &s);
            free(exact);
            if (!status_known(st)) {
                FAILF("iteration %d: st: unexpected %s (%s)", it, mha_status_str(st),
                      mha_ctx_errmsg(ctx));
                break;
            }
            if (st == MHA_OK) {
                ok_st++;
                for (int i = 0; i < mha_st_count(s); i++)
                    ASSERT_TRUE(mha_st_find(s, mha_st_name(s, i)) != NULL);
                mha_st_free(s);
            } else {
                ASSERT_TRUE(s == NULL && mha_ctx_errmsg(ctx)[0] != 0);
            }
        }
    }
    /* Some mutations (data bytes) must still parse, or the fuzzer tests nothing but errors. */
    ASSERT_TRUE(ok_npy > 50 && ok_st > 50);
    free(buf);
    for (int i = 0; i < 3; i++) free(npys[i].p);
    free(stm.p);
    mha_ctx_free(ctx);
}

/* ---- atomic saves ----------------------------------------------------------------------- */

TEST(save_into_missing_directory) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char path[300], dir[300];
    path_in_tmp(dir, sizeof dir, "no-such-dir");
    path_in_tmp(path, sizeof path, "no-such-dir/x.npy");
    mha_array a;
    int64_t s[1] = {3};
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F32, 1, s, &a));
    ASSERT_EQ(mha_npy_save(ctx, path, &a), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "no-such-dir/x.npy: its directory: No such file or "
                                             "directory");
    mha_st *st;
    ASSERT_OK(ctx, mha_st_create(ctx, &st));
    ASSERT_OK(ctx, mha_st_set(ctx, st, "a", &a));
    ASSERT_EQ(mha_st_save(ctx, st, path), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_st_save: ");
    struct stat sb;
    ASSERT_TRUE(stat(dir, &sb) != 0 && errno == ENOENT);
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    /* A directory as the target: refused before anything is written, in it or beside it (a
     * directory of this test's own: the working directory is shared with tests running at
     * the same time, whose outputs' temporary files come and go there). */
    char sub[300];
    path_in_tmp(sub, sizeof sub, "a-directory");
    ASSERT_EQ(mkdir(sub, 0700), 0);
    ASSERT_EQ(mha_npy_save(ctx, sub, &a), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "got a directory, expected a regular file");
    ASSERT_EQ(mha_st_save(ctx, st, sub), MHA_ERR_IO);
    ASSERT_EQ(count_leftovers(sub), 0);
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    ASSERT_EQ(rmdir(sub), 0);
    ASSERT_EQ(mha_npy_save(ctx, "", &a), MHA_ERR_INVALID_ARG);
    mha_st_free(st);
    mha_array_free(&a);
    mha_ctx_free(ctx);
}

TEST(failed_save_keeps_earlier_file) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    char npath[300], spath[300];
    path_in_tmp(npath, sizeof npath, "keep.npy");
    path_in_tmp(spath, sizeof spath, "keep.safetensors");
    mha_array a, b;
    int64_t s[2] = {300, 100}; /* 120 KB: more than the writer's buffer */
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F32, 2, s, &a));
    ASSERT_OK(ctx, mha_array_alloc(ctx, MHA_DTYPE_F32, 2, s, &b));
    fill(&a, 1);
    fill(&b, 2);
    mha_st *sa = sample_st(ctx), *sb;
    ASSERT_TRUE(sa != NULL);
    ASSERT_OK(ctx, mha_st_create(ctx, &sb));
    ASSERT_OK(ctx, mha_st_set(ctx, sb, "big", &b));
    ASSERT_OK(ctx, mha_npy_save(ctx, npath, &a));
    ASSERT_OK(ctx, mha_st_save(ctx, sa, spath));
    size_t n0, s0;
    unsigned char *before_n = read_whole(npath, &n0), *before_s = read_whole(spath, &s0);
    ASSERT_TRUE(before_n && before_s);
    /* Writes failing after k bytes (EIO from the test hook). */
    long long cuts[] = {0, 1, 100, 65535, 65536, 70000, 120000};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        mha__io_fail_write_after(cuts[i], EIO);
        mha_status st = mha_npy_save(ctx, npath, &b);
        mha__io_fail_write_after(-1, 0);
        ASSERT_EQ(st, MHA_ERR_IO);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "keep.npy: write: Input/output error");
        mha__io_fail_write_after(cuts[i], EIO);
        st = mha_st_save(ctx, sb, spath);
        mha__io_fail_write_after(-1, 0);
        ASSERT_EQ(st, MHA_ERR_IO);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "keep.safetensors: write:");
    }
    /* Every allocation failing in turn. */
    for (long k = 0; k < 20; k++) {
        mha__fault_after(k);
        mha_status st = mha_st_save(ctx, sb, spath);
        mha__fault_after(-1);
        if (st == MHA_OK) break;
        ASSERT_EQ(st, MHA_ERR_NOMEM);
    }
    /* That loop ended with a successful save: put the earlier file back, then try npy. */
    ASSERT_OK(ctx, mha_st_save(ctx, sa, spath));
    for (long k = 0; k < 20; k++) {
        mha__fault_after(k);
        mha_status st = mha_npy_save(ctx, npath, &b);
        mha__fault_after(-1);
        if (st == MHA_OK) {
            ASSERT_OK(ctx, mha_npy_save(ctx, npath, &a));
            break;
        }
        ASSERT_EQ(st, MHA_ERR_NOMEM);
    }
    size_t n1, s1;
    unsigned char *after_n = read_whole(npath, &n1), *after_s = read_whole(spath, &s1);
    ASSERT_TRUE(after_n && n1 == n0 && memcmp(after_n, before_n, n0) == 0);
    ASSERT_TRUE(after_s && s1 == s0 && memcmp(after_s, before_s, s0) == 0);
    ASSERT_EQ(count_leftovers(tmpdir), 0);
    /* A failing writer callback. */
    membuf m = membuf_new();
    m.fail_at = 1;
    ASSERT_EQ(mha_npy_write(ctx, &a, mem_write, &m), MHA_ERR_IO);
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_npy_write: writer: callback returned -1");
    free(m.p);
    m = membuf_new();
    m.fail_at = 0;
    ASSERT_EQ(mha_st_write(ctx, sb, mem_write, &m), MHA_ERR_IO);
    free(m.p);
    free(before_n);
    free(before_s);
    free(after_n);
    free(after_s);
    mha_st_free(sa);
    mha_st_free(sb);
    mha_array_free(&a);
    mha_array_free(&b);
    unlink(npath);
    unlink(spath);
    mha_ctx_free(ctx);
}

/* ---- allocation failures in the parsers ----------------------------------------------- */

TEST(fault_injection_in_parsers) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_st *full = sample_st(ctx);
    ASSERT_TRUE(full != NULL);
    membuf stm = membuf_new(), npm = membuf_new();
    ASSERT_OK(ctx, mha_st_write(ctx, full, mem_write, &stm));
    ASSERT_OK(ctx, mha_npy_write(ctx, mha_st_find(full, "t7.float32"), mem_write, &npm));
    int done = 0;
    for (long k = 0; k < 1000 && !done; k++) {
        mha_st *s = NULL;
        mha__fault_after(k);
        mha_status st = mha_st_parse(ctx, stm.p, stm.n, &s);
        mha__fault_after(-1);
        if (st == MHA_OK) {
            ASSERT_TRUE(same_st(s, full));
            mha_st_free(s);
            done = 1;
        } else {
            ASSERT_EQ(st, MHA_ERR_NOMEM);
            ASSERT_TRUE(s == NULL);
        }
    }
    ASSERT_TRUE(done);
    done = 0;
    for (long k = 0; k < 100 && !done; k++) {
        mha_array a;
        mha__fault_after(k);
        mha_status st = mha_npy_parse(ctx, npm.p, npm.n, &a);
        mha__fault_after(-1);
        if (st == MHA_OK) {
            mha_array_free(&a);
            done = 1;
        } else {
            ASSERT_EQ(st, MHA_ERR_NOMEM);
        }
    }
    ASSERT_TRUE(done);
    /* mha_st_set and mha_st_write under allocation failure: no leak, no half-made entry. */
    done = 0;
    for (long k = 0; k < 1000 && !done; k++) {
        mha_st *s = NULL;
        mha__fault_after(k);
        mha_status st = mha_st_create(ctx, &s);
        for (int i = 0; st == MHA_OK && i < mha_st_count(full); i++)
            st = mha_st_set(ctx, s, mha_st_name(full, i), mha_st_find(full, mha_st_name(full, i)));
        membuf m = membuf_new();
        if (st == MHA_OK) st = mha_st_write(ctx, s, mem_write, &m);
        mha__fault_after(-1);
        if (st == MHA_OK) {
            ASSERT_TRUE(m.n == stm.n && memcmp(m.p, stm.p, m.n) == 0);
            done = 1;
        } else {
            ASSERT_EQ(st, MHA_ERR_NOMEM);
        }
        free(m.p);
        mha_st_free(s);
    }
    ASSERT_TRUE(done);
    free(stm.p);
    free(npm.p);
    mha_st_free(full);
    mha_ctx_free(ctx);
}

static void rm_tree_flat(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

int main(void) {
    (void)harness_near;
    snprintf(tmpdir, sizeof tmpdir, "io-tmp-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(array_basics);
    RUN(npy_roundtrip_every_dtype_and_ndim);
    RUN(npy_header_variants);
    RUN(npy_malformed);
    RUN(npy_load_errors_name_the_file);
    RUN(huge_file_fails_on_its_header);
    RUN(st_roundtrip);
    RUN(st_reads_other_writers);
    RUN(st_malformed);
    RUN(st_load_errors_name_the_file);
    RUN(st_every_dtype_by_name);
    RUN(st_torch_save_files_say_how_to_convert);
    RUN(st_loads_golden_fixtures);
    RUN(mutation_fuzz_never_crashes);
    RUN(save_into_missing_directory);
    RUN(failed_save_keeps_earlier_file);
    RUN(fault_injection_in_parsers);
    rm_tree_flat(tmpdir);
    return harness_report();
}
