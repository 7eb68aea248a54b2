/* npy.c - the NumPy .npy format, versions 1.0-3.0, for C-order little-endian arrays of the
 * mha_dtype values NumPy has (bool, int and uint of 8-64 bits, float16/32/64).
 *
 * Layout: "\x93NUMPY", major, minor, header length (uint16 LE for 1.0, uint32 LE for 2.0/3.0),
 * then the header, a Python dict literal such as
 *     {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * padded with spaces and a final '\n', then the raw data. Every field of an untrusted file is
 * checked before anything is allocated; the only allocation is the array itself, whose size is
 * bounded by the bytes actually present. */
#include "io_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

/* ---- header parsing ------------------------------------------------------------------ */

typedef struct {
    const char *p, *end;
} cursor;

static void skip_ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* Copies printable characters of [s, s+n) into buf for messages, escaping the rest. */
static void printable(char *buf, size_t cap, const char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\') buf[o++] = (char)ch;
        else o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", ch);
    }
    if (n && o + 5 >= cap && o + 4 <= cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
}

/* Parses a Python string literal ('...' or "...") into out (cap bytes, NUL-terminated, cut
 * when longer: *trunc set). Backslash escapes keep the escaped character. A NUL byte fails
 * (numpy refuses it too): it would cut the C string, so '<f4\0junk' would read as '<f4'. */
static int parse_pystr(cursor *c, char *out, size_t cap, int *trunc) {
    *trunc = 0;
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return 0;
    char q = *c->p++;
    size_t o = 0;
    while (c->p < c->end && *c->p != q) {
        char ch = *c->p++;
        if (ch == '\n' || ch == '\0') return 0;
        if (ch == '\\') {
            if (c->p >= c->end) return 0;
            ch = *c->p++;
            if (ch == '\0') return 0;
        }
        if (o + 1 < cap) out[o++] = ch;
        else *trunc = 1;
    }
    if (c->p >= c->end) return 0;
    c->p++;
    out[o] = 0;
    return 1;
}

typedef enum {
    PR_OK,
    PR_SYNTAX,
    PR_NEG,
    PR_BIG
} int_result;

/* A non-negative Python int literal (an optional "L" suffix from Python 2 is accepted). */
static int_result parse_pyint(cursor *c, int64_t *v) {
    int neg = 0;
    if (c->p < c->end && (*c->p == '-' || *c->p == '+')) neg = *c->p++ == '-';
    skip_ws(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9') return PR_SYNTAX;
    int big = 0;
    uint64_t x = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        unsigned d = (unsigned)(*c->p++ - '0');
        if (x > ((uint64_t)INT64_MAX - d) / 10) big = 1;
        else x = x * 10 + d;
    }
    if (c->p < c->end && (*c->p == 'L' || *c->p == 'l')) c->p++;
    if (neg && (x != 0 || big)) return PR_NEG;
    if (big) return PR_BIG;
    *v = (int64_t)x;
    return PR_OK;
}

typedef struct {
    mha_dtype dtype;
    int ndim;
    int64_t shape[MHA_MAX_DIMS];
} npy_header;

/* What the messages say mha reads. */
#define NPY_EXPECTED                                                                               \
    "'<f4', '<f8', '<f2', '|b1', '|u1', '|i1', '<i2', '<u2', '<i4', '<u4', '<i8' or '<u8'"

/* The dtype of a descr string, or an error naming what was found. */
static mha_status parse_descr(mha_ctx *ctx, const char *who, const char *d, mha_dtype *dt) {
    char o = d[0];
    const char *t = d + 1;
    if (o != '<' && o != '>' && o != '=' && o != '|') {
        o = '=';
        t = d; /* "f4" without a byte order: native */
    }
    int little = o == '<' || o == '=' || o == '|';
    if (strcmp(t, "?") == 0) t = "b1";
    const mha__dtype_info *info;
    for (int i = 0; (info = mha__dtype_at(i)); i++) {
        if (!info->npy || strcmp(t, info->npy) != 0) continue;
        /* One byte has no byte order; "|f4" is not meaningful: the order matters there. */
        if (info->size == 1) break;
        if (o == '|')
            return mha__err(ctx, MHA_ERR_UNSUPPORTED, "%s: descr: got '%s', expected " NPY_EXPECTED,
                            who, d);
        if (!little)
            return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                            "%s: descr: got '%s' (big-endian), expected " NPY_EXPECTED
                            " (convert with a.astype(a.dtype.newbyteorder('<')))",
                            who, d);
        break;
    }
    if (!info)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED, "%s: descr: got '%s', expected " NPY_EXPECTED,
                        who, d);
    *dt = info->dt;
    return MHA_OK;
}

static mha_status hdr_err(mha_ctx *ctx, const char *who, const cursor *c, const char *base,
                          const char *what) {
    char near[48];
    size_t left = (size_t)(c->end - c->p);
    printable(near, sizeof near, c->p, left < 16 ? left : 16);
    return mha__err(ctx, MHA_ERR_FORMAT, "%s: header: %s at byte %ld (near \"%s\")", who, what,
                    (long)(c->p - base), near);
}

/* 'descr': a string naming one of the supported dtypes. */
static mha_status parse_descr_value(mha_ctx *ctx, const char *who, cursor *c, const char *h,
                                    mha_dtype *dt) {
    if (c->p < c->end && *c->p == '[')
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: descr: got a structured dtype, expected " NPY_EXPECTED, who);
    char d[32], shown[80];
    int trunc;
    if (!parse_pystr(c, d, sizeof d, &trunc))
        return hdr_err(ctx, who, c, h, "descr: expected a string");
    printable(shown, sizeof shown, d, strlen(d));
    if (trunc || strlen(d) != strlen(shown) || strchr(d, '\''))
        return mha__err(ctx, MHA_ERR_UNSUPPORTED, "%s: descr: got '%s%s', expected " NPY_EXPECTED,
                        who, shown, trunc ? "..." : "");
    return parse_descr(ctx, who, d, dt);
}

/* 'fortran_order': True or False. */
static mha_status parse_fortran_value(mha_ctx *ctx, const char *who, cursor *c, const char *h,
                                      int *fortran) {
    if ((size_t)(c->end - c->p) >= 4 && memcmp(c->p, "True", 4) == 0) {
        *fortran = 1;
        c->p += 4;
    } else if ((size_t)(c->end - c->p) >= 5 && memcmp(c->p, "False", 5) == 0) {
        c->p += 5;
    } else {
        return hdr_err(ctx, who, c, h, "fortran_order: expected True or False");
    }
    return MHA_OK;
}

/* 'shape': a tuple of non-negative ints ("(3,)", "(2, 3)", "()"). */
static mha_status parse_shape_value(mha_ctx *ctx, const char *who, cursor *c, const char *h,
                                    npy_header *out) {
    if (c->p >= c->end || *c->p != '(') return hdr_err(ctx, who, c, h, "shape: expected '('");
    c->p++;
    int nd = 0, commas = 0;
    for (;;) {
        skip_ws(c);
        if (c->p < c->end && *c->p == ')') {
            c->p++;
            break;
        }
        if (nd > commas) return hdr_err(ctx, who, c, h, "shape: expected ',' or ')'");
        int64_t v = 0;
        int_result r = parse_pyint(c, &v);
        if (r == PR_SYNTAX) return hdr_err(ctx, who, c, h, "shape: expected an integer");
        if (r == PR_NEG)
            return mha__err(ctx, MHA_ERR_FORMAT,
                            "%s: shape[%d]: got a negative size, expected >= 0", who, nd);
        if (r == PR_BIG)
            return mha__err(ctx, MHA_ERR_FORMAT, "%s: shape[%d]: got a size that overflows int64",
                            who, nd);
        if (nd >= MHA_MAX_DIMS)
            return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                            "%s: shape: got more than %d dims, expected at most %d", who,
                            MHA_MAX_DIMS, MHA_MAX_DIMS);
        out->shape[nd++] = v;
        skip_ws(c);
        if (c->p < c->end && *c->p == ',') {
            c->p++;
            commas++;
        }
    }
    /* "(3)" is the int 3 in Python, not a tuple. */
    if (nd == 1 && commas == 0)
        return hdr_err(ctx, who, c, h, "shape: a 1-tuple needs a trailing comma");
    out->ndim = nd;
    return MHA_OK;
}

/* The header dict: exactly the keys 'descr', 'fortran_order' (False) and 'shape'. */
static mha_status parse_header(mha_ctx *ctx, const char *who, const char *h, size_t n,
                               npy_header *out) {
    static const char *const keys[3] = {"descr", "fortran_order", "shape"};
    cursor c = {h, h + n};
    int have[3] = {0, 0, 0}, fortran = 0;
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') return hdr_err(ctx, who, &c, h, "expected '{'");
    c.p++;
    for (;;) {
        skip_ws(&c);
        if (c.p < c.end && *c.p == '}') {
            c.p++;
            break;
        }
        char key[32];
        int trunc, k = 0;
        if (!parse_pystr(&c, key, sizeof key, &trunc))
            return hdr_err(ctx, who, &c, h, "expected a quoted key or '}'");
        skip_ws(&c);
        if (c.p >= c.end || *c.p != ':') return hdr_err(ctx, who, &c, h, "expected ':'");
        c.p++;
        skip_ws(&c);
        while (k < 3 && (trunc || strcmp(key, keys[k]) != 0)) k++;
        if (k == 3) {
            char shown[48];
            printable(shown, sizeof shown, key, strlen(key));
            return mha__err(
                ctx, MHA_ERR_FORMAT,
                "%s: header: got key '%s%s', expected only 'descr', 'fortran_order', 'shape'", who,
                shown, trunc ? "..." : "");
        }
        if (have[k]++) {
            char what[48];
            snprintf(what, sizeof what, "duplicate key '%s'", keys[k]);
            return hdr_err(ctx, who, &c, h, what);
        }
        mha_status st = k == 0   ? parse_descr_value(ctx, who, &c, h, &out->dtype)
                        : k == 1 ? parse_fortran_value(ctx, who, &c, h, &fortran)
                                 : parse_shape_value(ctx, who, &c, h, out);
        if (st != MHA_OK) return st;
        skip_ws(&c);
        if (c.p < c.end && *c.p == ',') {
            c.p++;
            continue;
        }
        if (c.p < c.end && *c.p == '}') continue;
        return hdr_err(ctx, who, &c, h, "expected ',' or '}'");
    }
    skip_ws(&c);
    if (c.p != c.end) return hdr_err(ctx, who, &c, h, "unexpected text after '}'");
    for (int k = 0; k < 3; k++)
        if (!have[k])
            return mha__err(ctx, MHA_ERR_FORMAT, "%s: header: missing key '%s'", who, keys[k]);
    if (fortran)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: fortran_order: got True, expected False (save a C-ordered array: "
                        "np.ascontiguousarray)",
                        who);
    return MHA_OK;
}

/* The fixed prefix of a file of total bytes, n of them at b: magic, version and header
 * length (*hstart, *hlen). Checked by the loader before the rest of the file is read. */
static mha_status npy_prefix(mha_ctx *ctx, const char *who, const unsigned char *b, size_t n,
                             uint64_t total, size_t *hstart, size_t *hlen) {
    if (total < 10 || n < 10)
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: got %llu bytes, expected at least 10 (too short for a .npy file)", who,
                        (unsigned long long)total);
    if (memcmp(b, npy_magic, 6) != 0) {
        char shown[48];
        printable(shown, sizeof shown, (const char *)b, 6);
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: magic: got \"%s\", expected \"\\x93NUMPY\" (not a .npy file)", who,
                        shown);
    }
    unsigned major = b[6], minor = b[7];
    if (major < 1 || major > 3 || minor != 0)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: version: got %u.%u, expected 1.0, 2.0 or 3.0", who, major, minor);
    if (major == 1) {
        *hstart = 10;
        *hlen = (size_t)b[8] | (size_t)b[9] << 8;
    } else {
        if (total < 12 || n < 12)
            return mha__err(ctx, MHA_ERR_FORMAT, "%s: got %llu bytes, expected at least 12", who,
                            (unsigned long long)total);
        *hstart = 12;
        *hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    }
    if (*hlen > total - *hstart)
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: header length: got %zu, expected at most %llu (the file ends first)",
                        who, *hlen, (unsigned long long)(total - *hstart));
    return MHA_OK;
}

/* The header of a file of total bytes, the first len of them at b (at least the header): its
 * prefix, dict and the data size it implies, which must be what the file holds after it. */
static mha_status npy_meta(mha_ctx *ctx, const char *who, const unsigned char *b, size_t len,
                           uint64_t total, npy_header *h, size_t *data_at, size_t *bytes) {
    size_t hstart, hlen;
    mha_status st = npy_prefix(ctx, who, b, len, total, &hstart, &hlen);
    if (st != MHA_OK) return st;
    memset(h, 0, sizeof *h);
    st = parse_header(ctx, who, (const char *)b + hstart, hlen, h);
    if (st != MHA_OK) return st;
    int64_t numel;
    int bad;
    char shape[160];
    mha__shape_str(shape, sizeof shape, h->ndim, h->shape);
    if (!mha__shape_bytes(h->dtype, h->ndim, h->shape, &numel, bytes, &bad))
        return mha__err(ctx, MHA_ERR_FORMAT, "%s: shape %s: size overflows (%s)", who, shape,
                        mha_dtype_name(h->dtype));
    *data_at = hstart + hlen;
    const uint64_t have = total - *data_at;
    if (have != *bytes)
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: data: got %llu bytes, expected %zu (shape %s, %s%s)", who,
                        (unsigned long long)have, *bytes, shape, mha_dtype_name(h->dtype),
                        have < *bytes ? "; truncated file" : "; trailing bytes");
    return MHA_OK;
}

/* The loader's check: the prefix, then (*want: the header's end) the whole header. */
static mha_status npy_head(mha_ctx *ctx, const char *who, const unsigned char *head, size_t n,
                           uint64_t size, size_t *want) {
    size_t hstart, hlen, data_at, bytes;
    mha_status st = npy_prefix(ctx, who, head, n, size, &hstart, &hlen);
    if (st != MHA_OK || n < hstart + hlen) {
        *want = st == MHA_OK ? hstart + hlen : 0;
        return st;
    }
    npy_header h;
    return npy_meta(ctx, who, head, n, size, &h, &data_at, &bytes);
}

static mha_status npy_parse(mha_ctx *ctx, const char *who, const unsigned char *b, size_t len,
                            mha_array *out) {
    memset(out, 0, sizeof *out);
    npy_header h;
    size_t data_at, bytes;
    mha_status st = npy_meta(ctx, who, b, len, len, &h, &data_at, &bytes);
    if (st != MHA_OK) return st;
    st = mha__array_make(ctx, who, h.dtype, h.ndim, h.shape, out);
    if (st != MHA_OK) return st;
    const unsigned char *src = b + data_at;
    if (h.dtype == MHA_DTYPE_BOOL) {
        unsigned char *dst = out->data;
        for (size_t i = 0; i < bytes; i++) dst[i] = src[i] != 0;
    } else if (bytes) {
        memcpy(out->data, src, bytes);
    }
    return MHA_OK;
}

mha_status mha_npy_parse(mha_ctx *ctx, const void *buf, size_t len, mha_array *out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_npy_parse: out: got NULL, expected a pointer");
    memset(out, 0, sizeof *out);
    if (!buf && len)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_npy_parse: buf: got NULL, expected %zu bytes", len);
    return npy_parse(ctx, "mha_npy_parse", buf, len, out);
}

mha_status mha_npy_load(mha_ctx *ctx, const char *path, mha_array *out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_npy_load: out: got NULL, expected a pointer");
    memset(out, 0, sizeof *out);
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_npy_load: path: got NULL, expected a file name");
    char who[MHA__WHO_CAP];
    mha__io_who(who, "mha_npy_load", path);
    unsigned char *buf;
    size_t len;
    mha_status st = mha__read_file(ctx, who, path, 12, npy_head, &buf, &len);
    if (st != MHA_OK) return st;
    st = npy_parse(ctx, who, buf, len, out);
    mha__free(buf);
    return st;
}

/* ---- writing ------------------------------------------------------------------------- */

/* Checks an array to write: valid (mha__array_check) and of a dtype NumPy has. */
static mha_status npy_check(mha_ctx *ctx, const char *who, const mha_array *a, size_t *bytes) {
    mha_status st = mha__array_check(ctx, who, "a", a, bytes);
    if (st == MHA_OK && !mha__dtype_at((int)a->dtype)->npy)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: a.dtype: got %s, expected a dtype NumPy has (no .npy code for it; "
                        "convert to float32, or save it in safetensors)",
                        who, mha_dtype_name(a->dtype));
    return st;
}

static mha_status npy_emit(mha_ctx *ctx, const char *who, const void *obj, mha_write_fn fn,
                           void *user) {
    const mha_array *a = obj;
    size_t bytes;
    mha_status st = npy_check(ctx, who, a, &bytes);
    if (st != MHA_OK) return st;
    const mha__dtype_info *info = mha__dtype_at((int)a->dtype);
    /* The dict, then spaces and '\n' so that the data starts at a multiple of 64 (numpy's
     * own alignment). 5 dims of at most 19 digits keep it far below 1.0's 65535 limit, but
     * version 2.0 is used if it ever is not. */
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '%c%s', 'fortran_order': False, 'shape': (",
                     info->size == 1 ? '|' : '<', info->npy);
    for (int i = 0; i < a->ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%" PRId64 "%s", a->shape[i],
                      a->ndim == 1      ? ","
                      : i + 1 < a->ndim ? ", "
                                        : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    unsigned char head[512];
    size_t pre = 10, total = pre + (size_t)n + 1;
    if (total > 0xffff + pre) pre = 12;
    total = pre + (size_t)n + 1;
    total = (total + 63) / 64 * 64;
    size_t hlen = total - pre;
    memcpy(head, npy_magic, 6);
    head[6] = pre == 10 ? 1 : 2;
    head[7] = 0;
    head[8] = (unsigned char)(hlen & 0xff);
    head[9] = (unsigned char)(hlen >> 8 & 0xff);
    if (pre == 12) {
        head[10] = (unsigned char)(hlen >> 16 & 0xff);
        head[11] = (unsigned char)(hlen >> 24 & 0xff);
    }
    memcpy(head + pre, dict, (size_t)n);
    memset(head + pre + n, ' ', total - pre - (size_t)n - 1);
    head[total - 1] = '\n';
    st = mha__emit(ctx, who, fn, user, head, total);
    if (st != MHA_OK) return st;
    return mha__emit_data(ctx, who, a->dtype, a->data, bytes, fn, user);
}

mha_status mha_npy_write(mha_ctx *ctx, const mha_array *a, mha_write_fn fn, void *user) {
    mha__clear(ctx);
    if (!fn)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_npy_write: fn: got NULL, expected a writer callback");
    return npy_emit(ctx, "mha_npy_write", a, fn, user);
}

mha_status mha_npy_save(mha_ctx *ctx, const char *path, const mha_array *a) {
    mha__clear(ctx);
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_npy_save: path: got NULL, expected a file name");
    char who[MHA__WHO_CAP];
    mha__io_who(who, "mha_npy_save", path);
    size_t bytes;
    mha_status st = npy_check(ctx, who, a, &bytes);
    if (st != MHA_OK) return st;
    return mha__save_atomic(ctx, who, path, npy_emit, a);
}
