/* safetensors.c - the safetensors format: a collection of named arrays.
 *
 * Layout: an 8-byte little-endian header size N, N bytes of JSON
 *     {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...,
 *      "__metadata__": {"key": "value", ...}}                      (metadata optional)
 * padded with spaces, then the data area: every tensor's little-endian bytes at
 * [data_offsets[0], data_offsets[1]) relative to the start of the area.
 *
 * Reading untrusted files: the JSON parser below is small and strict (it only knows this
 * schema, so its recursion depth is fixed), every integer is range-checked, and the tensors must
 * tile the data area exactly (no overlap, no gap, no trailing bytes, as the reference
 * implementation requires) before any tensor is allocated: the total allocated is then bounded
 * by the file size. */
#include "io_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reference implementation's limit on the header size. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

typedef struct {
    char *key, *value;
} st_meta;

struct mha_st {
    int count, cap;
    char **names;      /* sorted by strcmp */
    mha_array *arrays; /* arrays[i] is named names[i] */
    int nmeta, meta_cap;
    st_meta *meta; /* "__metadata__", sorted by key */
};

static void meta_free(st_meta *m, int n) {
    for (int i = 0; i < n; i++) {
        mha__free(m[i].key);
        mha__free(m[i].value);
    }
    mha__free(m);
}

/* ---- the collection -------------------------------------------------------------------- */

mha_status mha_st_create(mha_ctx *ctx, mha_st **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_st_create: out: got NULL, expected a pointer");
    *out = mha__calloc(1, sizeof **out);
    if (!*out) return mha__err(ctx, MHA_ERR_NOMEM, "mha_st_create: out of memory");
    return MHA_OK;
}

void mha_st_free(mha_st *st) {
    if (!st) return;
    for (int i = 0; i < st->count; i++) {
        mha__free(st->names[i]);
        mha_array_free(&st->arrays[i]);
    }
    mha__free(st->names);
    mha__free(st->arrays);
    meta_free(st->meta, st->nmeta);
    mha__free(st);
}

int mha_st_count(const mha_st *st) { return st ? st->count : 0; }

const char *mha_st_name(const mha_st *st, int i) {
    if (!st || i < 0 || i >= st->count) return NULL;
    return st->names[i];
}

/* Index of key in base[0 .. n) (elements of stride bytes, each starting with its char * key,
 * sorted by strcmp), or -(insertion point) - 1. Serves the names and the metadata. */
static int sorted_find(const void *base, int n, size_t stride, const char *key) {
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(*(char *const *)((const char *)base + (size_t)mid * stride), key);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -lo - 1;
}

static int st_search(const mha_st *st, const char *name) {
    return sorted_find(st->names, st->count, sizeof *st->names, name);
}

const mha_array *mha_st_find(const mha_st *st, const char *name) {
    if (!st || !name) return NULL;
    int i = st_search(st, name);
    return i >= 0 ? &st->arrays[i] : NULL;
}

/* Grows the two parallel arrays to hold at least want entries. */
static int st_reserve(mha_st *st, int want) {
    if (want <= st->cap) return 1;
    int cap = st->cap ? st->cap : 8;
    while (cap < want) {
        if (cap > INT32_MAX / 2) return 0;
        cap *= 2;
    }
    char **names = mha__calloc((size_t)cap, sizeof *names);
    mha_array *arrays = mha__calloc((size_t)cap, sizeof *arrays);
    if (!names || !arrays) {
        mha__free(names);
        mha__free(arrays);
        return 0;
    }
    if (st->count) {
        memcpy(names, st->names, (size_t)st->count * sizeof *names);
        memcpy(arrays, st->arrays, (size_t)st->count * sizeof *arrays);
    }
    mha__free(st->names);
    mha__free(st->arrays);
    st->names = names;
    st->arrays = arrays;
    st->cap = cap;
    return 1;
}

mha_status mha__st_adopt(mha_ctx *ctx, const char *who, mha_st *st, const char *name,
                         mha_array *a) {
    int i = st_search(st, name);
    if (i >= 0) {
        mha_array_free(&st->arrays[i]);
        st->arrays[i] = *a;
        memset(a, 0, sizeof *a);
        return MHA_OK;
    }
    i = -i - 1;
    size_t nlen = strlen(name);
    char *nm = mha__malloc(nlen + 1);
    if (!nm || st->count == INT32_MAX || !st_reserve(st, st->count + 1)) {
        mha__free(nm);
        mha_array_free(a);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    }
    memcpy(nm, name, nlen + 1);
    memmove(st->names + i + 1, st->names + i, (size_t)(st->count - i) * sizeof *st->names);
    memmove(st->arrays + i + 1, st->arrays + i, (size_t)(st->count - i) * sizeof *st->arrays);
    st->names[i] = nm;
    st->arrays[i] = *a;
    memset(a, 0, sizeof *a);
    st->count++;
    return MHA_OK;
}

static size_t utf8_len(const unsigned char *p, const unsigned char *end);

/* A name, key or value the header will hold: UTF-8, as the reader requires (JSON strings). */
static mha_status st_check_utf8(mha_ctx *ctx, const char *who, const char *what, const char *s) {
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
    for (size_t k; p < end; p += k)
        if (!(k = utf8_len(p, end)))
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: %s: got bytes that are not UTF-8 (at byte %zu: 0x%02x), expected "
                            "a UTF-8 string (safetensors headers are JSON)",
                            who, what, (size_t)(p - (const unsigned char *)s), *p);
    return MHA_OK;
}

mha_status mha_st_set(mha_ctx *ctx, mha_st *st, const char *name, const mha_array *a) {
    mha__clear(ctx);
    static const char *who = "mha_st_set";
    if (!st)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: st: got NULL, expected a collection", who);
    if (!name)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: name: got NULL, expected a string", who);
    if (strcmp(name, "__metadata__") == 0)
        return mha__err(
            ctx, MHA_ERR_INVALID_ARG,
            "%s: name: got \"__metadata__\", expected another name (reserved by the format)", who);
    size_t bytes;
    mha_status s = st_check_utf8(ctx, who, "name", name);
    if (s != MHA_OK || (s = mha__array_check(ctx, who, "a", a, &bytes)) != MHA_OK) return s;
    mha_array copy;
    s = mha__array_make(ctx, who, a->dtype, a->ndim, a->shape, &copy);
    if (s != MHA_OK) return s;
    if (a->dtype == MHA_DTYPE_BOOL) {
        const unsigned char *src = a->data;
        unsigned char *dst = copy.data;
        for (size_t i = 0; i < bytes; i++) dst[i] = src[i] != 0;
    } else if (bytes) {
        memcpy(copy.data, a->data, bytes);
    }
    return mha__st_adopt(ctx, who, st, name, &copy);
}

/* Grows *arr (elements of size sz) to hold at least n + 1. */
static int grow(void **arr, int n, int *cap, size_t sz) {
    if (n < *cap) return 1;
    int ncap = *cap ? *cap * 2 : 16;
    void *na = *cap < INT32_MAX / 4 ? mha__calloc((size_t)ncap, sz) : NULL;
    if (!na) return 0;
    if (n) memcpy(na, *arr, (size_t)n * sz);
    mha__free(*arr);
    *arr = na;
    *cap = ncap;
    return 1;
}

/* ---- metadata ---------------------------------------------------------------------------- */

static int meta_search(const mha_st *st, const char *key) {
    return sorted_find(st->meta, st->nmeta, sizeof *st->meta, key);
}

const char *mha_st_meta_get(const mha_st *st, const char *key) {
    if (!st || !key) return NULL;
    int i = meta_search(st, key);
    return i >= 0 ? st->meta[i].value : NULL;
}

int mha_st_meta_count(const mha_st *st) { return st ? st->nmeta : 0; }

const char *mha_st_meta_key(const mha_st *st, int i) {
    return st && i >= 0 && i < st->nmeta ? st->meta[i].key : NULL;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = mha__malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

mha_status mha_st_meta_set(mha_ctx *ctx, mha_st *st, const char *key, const char *value) {
    mha__clear(ctx);
    static const char *who = "mha_st_meta_set";
    if (!st)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: st: got NULL, expected a collection", who);
    if (!key)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: key: got NULL, expected a string", who);
    mha_status s = st_check_utf8(ctx, who, "key", key);
    if (s != MHA_OK || (value && (s = st_check_utf8(ctx, who, "value", value)) != MHA_OK)) return s;
    int i = meta_search(st, key);
    if (!value) { /* removal */
        if (i < 0) return MHA_OK;
        mha__free(st->meta[i].key);
        mha__free(st->meta[i].value);
        memmove(st->meta + i, st->meta + i + 1, (size_t)(st->nmeta - i - 1) * sizeof *st->meta);
        st->nmeta--;
        return MHA_OK;
    }
    char *v = dup_str(value), *k = i < 0 ? dup_str(key) : NULL;
    if (!v ||
        (i < 0 && (!k || !grow((void **)&st->meta, st->nmeta, &st->meta_cap, sizeof *st->meta)))) {
        mha__free(v);
        mha__free(k);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    }
    if (i >= 0) {
        mha__free(st->meta[i].value);
        st->meta[i].value = v;
        return MHA_OK;
    }
    i = -i - 1;
    memmove(st->meta + i + 1, st->meta + i, (size_t)(st->nmeta - i) * sizeof *st->meta);
    st->meta[i].key = k;
    st->meta[i].value = v;
    st->nmeta++;
    return MHA_OK;
}

/* ---- JSON -------------------------------------------------------------------------------- */

typedef struct {
    const char *p, *end, *base;
    mha_ctx *ctx;
    const char *who;
} json;

static void j_ws(json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static mha_status j_err(json *j, const char *what) {
    char near[64];
    size_t o = 0, left = (size_t)(j->end - j->p);
    for (size_t i = 0; i < left && i < 12; i++) {
        unsigned char ch = (unsigned char)j->p[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\') near[o++] = (char)ch;
        else o += (size_t)snprintf(near + o, sizeof near - o, "\\x%02x", ch);
    }
    near[o] = 0;
    return mha__err(j->ctx, MHA_ERR_FORMAT, "%s: header: %s at byte %ld (near \"%s\")", j->who,
                    what, (long)(j->p - j->base), near);
}

static int j_lit(json *j, char ch) {
    j_ws(j);
    if (j->p < j->end && *j->p == ch) {
        j->p++;
        return 1;
    }
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int j_hex4(json *j, unsigned *v) {
    if (j->end - j->p < 4) return 0;
    unsigned x = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->p[i]);
        if (h < 0) return 0;
        x = x << 4 | (unsigned)h;
    }
    j->p += 4;
    *v = x;
    return 1;
}

/* The length of the well-formed UTF-8 sequence at p (before end), or 0 (RFC 3629: no overlong
 * forms, no surrogates, nothing past U+10FFFF). */
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
    const unsigned char c = p[0];
    size_t k;
    unsigned char lo = 0x80, hi = 0xbf; /* the range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) k = 2;
    else if (c >= 0xe0 && c <= 0xef) k = 3;
    else if (c >= 0xf0 && c <= 0xf4) k = 4;
    else return 0;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
    if ((size_t)(end - p) < k || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < k; i++)
        if (p[i] < 0x80 || p[i] > 0xbf) return 0;
    return k;
}

/* Decodes a JSON string at j->p (after whitespace). Writes at most cap - 1 bytes and a NUL to
 * out (if out is not NULL); *n receives the full decoded length. Raw bytes must be UTF-8, as
 * JSON requires (and the reference implementation checks): names are Python str. */
static mha_status j_string(json *j, char *out, size_t cap, size_t *n) {
    j_ws(j);
    if (j->p >= j->end || *j->p != '"') return j_err(j, "expected a string");
    j->p++;
    size_t o = 0;
    for (;;) {
        if (j->p >= j->end) return j_err(j, "unterminated string");
        unsigned char ch = (unsigned char)*j->p;
        if (ch == '"') {
            j->p++;
            break;
        }
        if (ch < 0x20) return j_err(j, "control character in a string");
        unsigned char enc[4];
        size_t k = utf8_len((const unsigned char *)j->p, (const unsigned char *)j->end);
        if (k == 0) return j_err(j, "invalid UTF-8 in a string");
        memcpy(enc, j->p, k);
        j->p += k;
        if (ch == '\\') {
            if (j->p >= j->end) return j_err(j, "unterminated string");
            char e = *j->p++;
            switch (e) {
            case '"': enc[0] = '"'; break;
            case '\\': enc[0] = '\\'; break;
            case '/': enc[0] = '/'; break;
            case 'b': enc[0] = '\b'; break;
            case 'f': enc[0] = '\f'; break;
            case 'n': enc[0] = '\n'; break;
            case 'r': enc[0] = '\r'; break;
            case 't': enc[0] = '\t'; break;
            case 'u': {
                unsigned u, lo;
                if (!j_hex4(j, &u)) return j_err(j, "bad \\u escape");
                if (u >= 0xdc00 && u <= 0xdfff) return j_err(j, "unpaired surrogate");
                if (u >= 0xd800 && u <= 0xdbff) {
                    if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                        return j_err(j, "unpaired surrogate");
                    j->p += 2;
                    if (!j_hex4(j, &lo) || lo < 0xdc00 || lo > 0xdfff)
                        return j_err(j, "unpaired surrogate");
                    u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
                }
                if (u < 0x80) {
                    enc[0] = (unsigned char)u;
                } else if (u < 0x800) {
                    enc[0] = (unsigned char)(0xc0 | u >> 6);
                    enc[1] = (unsigned char)(0x80 | (u & 0x3f));
                    k = 2;
                } else if (u < 0x10000) {
                    enc[0] = (unsigned char)(0xe0 | u >> 12);
                    enc[1] = (unsigned char)(0x80 | (u >> 6 & 0x3f));
                    enc[2] = (unsigned char)(0x80 | (u & 0x3f));
                    k = 3;
                } else {
                    enc[0] = (unsigned char)(0xf0 | u >> 18);
                    enc[1] = (unsigned char)(0x80 | (u >> 12 & 0x3f));
                    enc[2] = (unsigned char)(0x80 | (u >> 6 & 0x3f));
                    enc[3] = (unsigned char)(0x80 | (u & 0x3f));
                    k = 4;
                }
                break;
            }
            default: j->p--; return j_err(j, "bad escape");
            }
        }
        for (size_t i = 0; i < k; i++, o++)
            if (out && o + 1 < cap) out[o] = (char)enc[i];
    }
    if (out && cap) out[o < cap ? o : cap - 1] = 0;
    *n = o;
    return MHA_OK;
}

/* A JSON number that must be a non-negative integer below 2^63. */
static mha_status j_uint(json *j, const char *what, int64_t *v) {
    j_ws(j);
    const char *start = j->p;
    int neg = 0, big = 0, frac = 0;
    if (j->p < j->end && *j->p == '-') {
        neg = 1;
        j->p++;
    }
    if (j->p >= j->end || *j->p < '0' || *j->p > '9') {
        j->p = start;
        char m[96];
        snprintf(m, sizeof m, "%s: expected an integer", what);
        return j_err(j, m);
    }
    uint64_t x = 0;
    if (*j->p == '0') {
        j->p++;
    } else {
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
            unsigned d = (unsigned)(*j->p++ - '0');
            if (x > ((uint64_t)INT64_MAX - d) / 10) big = 1;
            else x = x * 10 + d;
        }
    }
    if (j->p < j->end && *j->p == '.') {
        frac = 1;
        j->p++;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        frac = 1;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9') j->p++;
    }
    int len = (int)(j->p - start > 40 ? 40 : j->p - start);
    if (frac || (j->p < j->end && *j->p >= '0' && *j->p <= '9'))
        return mha__err(j->ctx, MHA_ERR_FORMAT, "%s: %s: got %.*s, expected an integer", j->who,
                        what, len, start);
    if (neg)
        return mha__err(j->ctx, MHA_ERR_FORMAT, "%s: %s: got %.*s, expected >= 0", j->who, what,
                        len, start);
    if (big)
        return mha__err(j->ctx, MHA_ERR_FORMAT, "%s: %s: got %.*s, expected < 2^63", j->who, what,
                        len, start);
    *v = (int64_t)x;
    return MHA_OK;
}

/* ---- parsing ----------------------------------------------------------------------------- */

typedef struct {
    char *name;
    mha_dtype dtype;
    int ndim;
    int64_t shape[MHA_MAX_DIMS];
    int64_t begin, end;
    size_t bytes;
} st_entry;

/* The first len bytes of name for messages: at most 80 bytes, non-printables (NUL included)
 * escaped. */
static void shown_bytes(char *buf, size_t cap, const char *name, size_t len) {
    size_t o = 0;
    for (size_t i = 0; i < len && o + 8 < cap; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (i >= 80) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (ch >= 0x20 && ch != 0x7f && ch != '\\' && ch != '\'') buf[o++] = (char)ch;
        else o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", ch);
    }
    buf[o] = 0;
}

static void shown_name(char *buf, size_t cap, const char *name) {
    shown_bytes(buf, cap, name, strlen(name));
}

static mha_status parse_dtype(json *j, const char *tname, mha_dtype *dt) {
    char s[24];
    size_t n;
    mha_status st = j_string(j, s, sizeof s, &n);
    if (st != MHA_OK) return st;
    const mha__dtype_info *d;
    if (n < sizeof s && strlen(s) == n)
        for (int i = 0; (d = mha__dtype_at(i)); i++)
            if (strcmp(s, d->st) == 0) {
                *dt = d->dt;
                return MHA_OK;
            }
    char shown[64];
    shown_bytes(shown, sizeof shown, s, n < sizeof s ? n : sizeof s - 1);
    return mha__err(j->ctx, MHA_ERR_UNSUPPORTED,
                    "%s: tensor '%s': dtype: got %s%s, expected one of F32, F64, F16, BF16, BOOL, "
                    "U8, I8, I16, U16, I32, U32, I64, U64, F8_E4M3, F8_E5M2",
                    j->who, tname, shown, n >= sizeof s ? "..." : "");
}

/* "shape": [d0, d1, ...] of tensor tname. */
static mha_status parse_shape(json *j, st_entry *e, const char *tname) {
    char what[200];
    if (!j_lit(j, '[')) {
        snprintf(what, sizeof what, "tensor '%s': shape: expected '['", tname);
        return j_err(j, what);
    }
    e->ndim = 0;
    if (j_lit(j, ']')) return MHA_OK;
    for (;;) {
        if (e->ndim >= MHA_MAX_DIMS)
            return mha__err(j->ctx, MHA_ERR_UNSUPPORTED,
                            "%s: tensor '%s': shape: got more than %d dims, expected at most %d",
                            j->who, tname, MHA_MAX_DIMS, MHA_MAX_DIMS);
        snprintf(what, sizeof what, "tensor '%s': shape[%d]", tname, e->ndim);
        mha_status st = j_uint(j, what, &e->shape[e->ndim]);
        if (st != MHA_OK) return st;
        e->ndim++;
        if (j_lit(j, ']')) return MHA_OK;
        if (!j_lit(j, ',')) return j_err(j, "shape: expected ',' or ']'");
    }
}

/* "data_offsets": [begin, end] of tensor tname. */
static mha_status parse_offsets(json *j, st_entry *e, const char *tname) {
    char what[200];
    snprintf(what, sizeof what, "tensor '%s': data_offsets", tname);
    if (!j_lit(j, '[')) return j_err(j, "data_offsets: expected '['");
    mha_status st = j_uint(j, what, &e->begin);
    if (st != MHA_OK) return st;
    if (!j_lit(j, ',')) return j_err(j, "data_offsets: expected ','");
    st = j_uint(j, what, &e->end);
    if (st != MHA_OK) return st;
    if (!j_lit(j, ']')) return j_err(j, "data_offsets: expected 2 integers and ']'");
    return MHA_OK;
}

/* The entry's fields agree: its size fits, its offsets lie in the data area and span exactly
 * its bytes. */
static mha_status check_entry(json *j, st_entry *e, int64_t data_size, const char *tname) {
    char shape[160];
    mha__shape_str(shape, sizeof shape, e->ndim, e->shape);
    int64_t numel;
    int bad;
    if (!mha__shape_bytes(e->dtype, e->ndim, e->shape, &numel, &e->bytes, &bad))
        return mha__err(j->ctx, MHA_ERR_FORMAT, "%s: tensor '%s': shape %s: size overflows (%s)",
                        j->who, tname, shape, mha_dtype_name(e->dtype));
    if (e->begin > e->end)
        return mha__err(j->ctx, MHA_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets: got [%" PRId64 ", %" PRId64
                        "], expected begin <= end",
                        j->who, tname, e->begin, e->end);
    if (e->end > data_size)
        return mha__err(j->ctx, MHA_ERR_FORMAT,
                        "%s: tensor '%s': data_offsets: got [%" PRId64 ", %" PRId64
                        "], expected end <= %" PRId64
                        " (the size of the data area; truncated file?)",
                        j->who, tname, e->begin, e->end, data_size);
    if ((uint64_t)(e->end - e->begin) != (uint64_t)e->bytes)
        return mha__err(j->ctx, MHA_ERR_FORMAT,
                        "%s: tensor '%s': data: got %" PRId64 " bytes, expected %zu (shape %s, %s)",
                        j->who, tname, e->end - e->begin, e->bytes, shape,
                        mha_dtype_name(e->dtype));
    return MHA_OK;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]} for the tensor named e->name. */
static mha_status parse_entry(json *j, st_entry *e, int64_t data_size) {
    static const char *const keys[3] = {"dtype", "shape", "data_offsets"};
    char tname[128];
    shown_name(tname, sizeof tname, e->name);
    int have[3] = {0, 0, 0};
    if (!j_lit(j, '{')) {
        char what[200];
        snprintf(what, sizeof what, "tensor '%s': expected an object", tname);
        return j_err(j, what);
    }
    while (!j_lit(j, '}')) {
        if ((have[0] || have[1] || have[2]) && !j_lit(j, ','))
            return j_err(j, "expected ',' or '}'");
        char key[16];
        size_t n;
        mha_status st = j_string(j, key, sizeof key, &n);
        if (st != MHA_OK) return st;
        if (!j_lit(j, ':')) return j_err(j, "expected ':'");
        int k = 0;
        while (k < 3 && !(n < sizeof key && strlen(key) == n && !strcmp(key, keys[k]))) k++;
        if (k == 3) {
            char shown[64];
            shown_name(shown, sizeof shown, n < sizeof key ? key : "(long key)");
            return mha__err(
                j->ctx, MHA_ERR_FORMAT,
                "%s: tensor '%s': got key '%s', expected only dtype, shape, data_offsets", j->who,
                tname, shown);
        }
        if (have[k]++)
            return mha__err(j->ctx, MHA_ERR_FORMAT, "%s: tensor '%s': duplicate key", j->who,
                            tname);
        st = k == 0   ? parse_dtype(j, tname, &e->dtype)
             : k == 1 ? parse_shape(j, e, tname)
                      : parse_offsets(j, e, tname);
        if (st != MHA_OK) return st;
    }
    for (int k = 0; k < 3; k++)
        if (!have[k])
            return mha__err(j->ctx, MHA_ERR_FORMAT, "%s: tensor '%s': missing key %s", j->who,
                            tname, keys[k]);
    return check_entry(j, e, data_size, tname);
}

static int cmp_offsets(const void *a, const void *b) {
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}

/* What the header holds: the tensors' entries and the metadata, before anything is built. */
typedef struct {
    st_entry *es;
    int n, cap;
    st_meta *meta;
    int nmeta, meta_cap;
} st_parsed;

static void header_free(st_parsed *h) {
    for (int i = 0; i < h->n; i++) mha__free(h->es[i].name);
    mha__free(h->es);
    meta_free(h->meta, h->nmeta);
    memset(h, 0, sizeof *h);
}

/* A JSON string at j->p, decoded into a new allocation (measured first); one containing
 * \u0000 is refused (what names it in the message). */
static mha_status j_string_dup(json *j, const char *what, char **out) {
    *out = NULL;
    json save = *j;
    size_t len;
    mha_status st = j_string(j, NULL, 0, &len);
    if (st != MHA_OK) return st;
    char *s = mha__malloc(len + 1);
    if (!s) return mha__err(j->ctx, MHA_ERR_NOMEM, "%s: out of memory", j->who);
    json again = save;
    (void)j_string(&again, s, len + 1, &len); /* succeeded above */
    if (strlen(s) != len) {
        mha__free(s);
        *j = save;
        char m[96];
        snprintf(m, sizeof m, "%s contains \\u0000", what);
        return j_err(j, m);
    }
    *out = s;
    return MHA_OK;
}

/* "__metadata__": an object of string values, appended to h->meta. */
static mha_status parse_metadata(json *j, st_parsed *h) {
    if (!j_lit(j, '{')) return j_err(j, "__metadata__: expected an object");
    if (j_lit(j, '}')) return MHA_OK;
    for (;;) {
        if (!grow((void **)&h->meta, h->nmeta, &h->meta_cap, sizeof *h->meta))
            return mha__err(j->ctx, MHA_ERR_NOMEM, "%s: out of memory", j->who);
        st_meta *m = &h->meta[h->nmeta];
        mha_status st = j_string_dup(j, "__metadata__ key", &m->key);
        if (st != MHA_OK) return st;
        h->nmeta++; /* m->key is owned from here, m->value once parsed */
        if (!j_lit(j, ':')) return j_err(j, "expected ':'");
        j_ws(j);
        if (j->p >= j->end || *j->p != '"')
            return j_err(j, "__metadata__: expected a string value");
        st = j_string_dup(j, "__metadata__ value", &m->value);
        if (st != MHA_OK) return st;
        if (j_lit(j, '}')) return MHA_OK;
        if (!j_lit(j, ',')) return j_err(j, "expected ',' or '}'");
    }
}

/* One "key": value member of the header object: the metadata or a tensor's entry. */
static mha_status parse_member(json *j, st_parsed *h, int64_t data_size, int *have_meta) {
    char *name;
    json at = *j;
    mha_status st = j_string_dup(j, "tensor name", &name);
    if (st != MHA_OK) return st;
    if (!j_lit(j, ':')) {
        mha__free(name);
        return j_err(j, "expected ':'");
    }
    if (strcmp(name, "__metadata__") == 0) {
        mha__free(name);
        if ((*have_meta)++) {
            *j = at;
            return j_err(j, "duplicate __metadata__");
        }
        return parse_metadata(j, h);
    }
    if (!grow((void **)&h->es, h->n, &h->cap, sizeof *h->es)) {
        mha__free(name);
        return mha__err(j->ctx, MHA_ERR_NOMEM, "%s: out of memory", j->who);
    }
    memset(&h->es[h->n], 0, sizeof h->es[h->n]);
    h->es[h->n].name = name;
    h->n++;
    return parse_entry(j, &h->es[h->n - 1], data_size);
}

/* A file torch.save wrote: a zip archive ("PK\x03\x04", the format since PyTorch 1.6) or a
 * bare pickle (0x80, then protocol 2..5: the legacy format). Such a file is refused with the
 * command that converts it (path NULL: mha_st_parse, which has no file name). */
static mha_status torch_file(mha_ctx *ctx, const char *who, const char *path,
                             const unsigned char *b, size_t n) {
    int zip = n >= 4 && memcmp(b, "PK\x03\x04", 4) == 0;
    int pickle = n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5;
    /* A safetensors header of 640 bytes also starts 0x80 0x02: its JSON follows at byte 8. */
    if ((!zip && !pickle) || (n > 8 && b[8] == '{')) return MHA_OK;
    if (!path) path = "model.pt";
    /* The converted file's name: path with .pt, .pth or .bin replaced, else appended to. */
    size_t len = strlen(path), stem = len;
    static const char *const exts[] = {".pt", ".pth", ".bin"};
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        size_t el = strlen(exts[i]);
        if (len > el && strcmp(path + len - el, exts[i]) == 0) stem = len - el;
    }
    return mha__err(ctx, MHA_ERR_FORMAT,
                    "%s: a PyTorch file (torch.save), not safetensors; convert it: python -c "
                    "\"import torch, mha; mha.save_file(torch.load('%s'), '%.*s.safetensors')\"",
                    who, path, (int)stem, path);
}

/* The 8-byte header size of a file of total bytes (n of them at b) in *hn, checked against the
 * file's size: the loader's check before the rest of the file is read (n >= 9 there). path
 * (may be NULL) names the file in the conversion command a torch.save file gets. */
static mha_status st_prefix(mha_ctx *ctx, const char *who, const char *path, const unsigned char *b,
                            size_t n, uint64_t total, uint64_t *hn) {
    mha_status st = torch_file(ctx, who, path, b, n);
    if (st != MHA_OK) return st;
    if (total < 8 || n < 8)
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: got %" PRIu64
                        " bytes, expected at least 8 (too short for a safetensors file)",
                        who, total);
    *hn = 0;
    for (int i = 7; i >= 0; i--) *hn = *hn << 8 | b[i];
    if (*hn > total - 8)
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: header size: got %" PRIu64 ", expected at most %" PRIu64
                        " (the file ends first; not a safetensors file?)",
                        who, *hn, total - 8);
    if (*hn > ST_MAX_HEADER)
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: header size: got %" PRIu64 ", expected at most %" PRIu64, who, *hn,
                        ST_MAX_HEADER);
    if (*hn == 0)
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: header size: got 0, expected the size of a JSON object (at least "
                        "2 bytes: \"{}\")",
                        who);
    if (n > 8 && b[8] != '{') { /* quoting the header's bytes only */
        const uint64_t end = 8 + *hn < n ? 8 + *hn : n;
        json j = {(const char *)b + 8, (const char *)b + end, (const char *)b + 8, ctx, who};
        return j_err(&j, "expected '{'");
    }
    return MHA_OK;
}

static const char ST_LOAD[] = "mha_st_load";

/* Validate: the header JSON (hn bytes at hdr, starting with '{') into h. */
static mha_status st_read_header(mha_ctx *ctx, const char *who, const char *hdr, uint64_t hn,
                                 int64_t data_size, st_parsed *h) {
    json j = {hdr + 1, hdr + hn, hdr, ctx, who};
    int have_meta = 0;
    if (!j_lit(&j, '}')) {
        for (;;) {
            mha_status st = parse_member(&j, h, data_size, &have_meta);
            if (st != MHA_OK) return st;
            if (j_lit(&j, '}')) break;
            if (!j_lit(&j, ',')) return j_err(&j, "expected ',' or '}'");
        }
    }
    j_ws(&j);
    if (j.p != j.end) return j_err(&j, "unexpected text after the header object");
    return MHA_OK;
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const st_meta *)a)->key, ((const st_meta *)b)->key);
}

/* Plan: the tensors must tile the data area (sorted by offsets, each starts where the previous
 * ended), which bounds what st_build allocates by the file size; names and metadata keys are
 * unique. Leaves h->es sorted by name and h->meta by key. */
static mha_status st_plan(mha_ctx *ctx, const char *who, st_parsed *h, int64_t data_size) {
    char a[128], p[128];
    if (h->n) qsort(h->es, (size_t)h->n, sizeof *h->es, cmp_offsets);
    int64_t at = 0;
    for (int i = 0; i < h->n; i++) {
        const st_entry *e = &h->es[i];
        if (e->begin != at) {
            shown_name(a, sizeof a, e->name);
            if (e->begin > at)
                return mha__err(ctx, MHA_ERR_FORMAT,
                                "%s: tensor '%s': data_offsets: got [%" PRId64 ", %" PRId64
                                "], expected begin %" PRId64 " (no gap "
                                "between tensors)",
                                who, a, e->begin, e->end, at);
            shown_name(p, sizeof p, h->es[i - 1].name);
            return mha__err(ctx, MHA_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets: got [%" PRId64 ", %" PRId64
                            "], overlaps tensor '%s'",
                            who, a, e->begin, e->end, p);
        }
        at = e->end;
    }
    if (at != data_size)
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: data area: got %" PRId64 " bytes, expected %" PRId64
                        " (the tensors' total; trailing bytes)",
                        who, data_size, at);
    if (h->n) qsort(h->es, (size_t)h->n, sizeof *h->es, cmp_names);
    for (int i = 1; i < h->n; i++)
        if (strcmp(h->es[i].name, h->es[i - 1].name) == 0) {
            shown_name(a, sizeof a, h->es[i].name);
            return mha__err(ctx, MHA_ERR_FORMAT, "%s: tensor '%s': duplicate name", who, a);
        }
    if (h->nmeta) qsort(h->meta, (size_t)h->nmeta, sizeof *h->meta, cmp_meta);
    for (int i = 1; i < h->nmeta; i++)
        if (strcmp(h->meta[i].key, h->meta[i - 1].key) == 0) {
            shown_name(a, sizeof a, h->meta[i].key);
            return mha__err(ctx, MHA_ERR_FORMAT, "%s: __metadata__: duplicate key '%s'", who, a);
        }
    return MHA_OK;
}

/* Build: the collection, moving names and metadata out of h and copying each tensor's bytes
 * from the data area. */
static mha_status st_build(mha_ctx *ctx, const char *who, st_parsed *h, const unsigned char *data,
                           mha_st **out) {
    mha_st *s = mha__calloc(1, sizeof *s);
    if (!s || !st_reserve(s, h->n)) {
        mha__free(s);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    }
    for (int i = 0; i < h->n; i++) {
        st_entry *e = &h->es[i];
        mha_status st = mha__array_make(ctx, who, e->dtype, e->ndim, e->shape, &s->arrays[i]);
        if (st != MHA_OK) {
            mha_st_free(s);
            return st;
        }
        s->names[i] = e->name;
        e->name = NULL;
        s->count = i + 1;
        const unsigned char *src = data + e->begin;
        if (e->dtype == MHA_DTYPE_BOOL) {
            unsigned char *dst = s->arrays[i].data;
            for (size_t k = 0; k < e->bytes; k++) dst[k] = src[k] != 0;
        } else if (e->bytes) {
            memcpy(s->arrays[i].data, src, e->bytes);
        }
    }
    s->meta = h->meta;
    s->nmeta = s->meta_cap = h->nmeta;
    h->meta = NULL;
    h->nmeta = 0;
    *out = s;
    return MHA_OK;
}

/* The loader's check of the file's first bytes, then (*want: the header's end) of the whole
 * header and the data area it implies; who is "<fn>: <path>" (mha__io_who). */
static mha_status st_head(mha_ctx *ctx, const char *who, const unsigned char *head, size_t n,
                          uint64_t size, size_t *want) {
    uint64_t hn;
    const char *sep = strstr(who, ": ");
    const char *path = sep ? sep + 2 : NULL;
    mha_status st = st_prefix(ctx, who, path, head, n, size, &hn);
    if (st != MHA_OK || n < 8 + hn) {
        *want = st == MHA_OK ? (size_t)(8 + hn) : 0;
        return st;
    }
    const int64_t data_size = (int64_t)(size - 8 - hn);
    st_parsed h;
    memset(&h, 0, sizeof h);
    st = st_read_header(ctx, who, (const char *)head + 8, hn, data_size, &h);
    if (st == MHA_OK) st = st_plan(ctx, who, &h, data_size);
    header_free(&h);
    return st;
}

static mha_status st_parse(mha_ctx *ctx, const char *who, const unsigned char *b, size_t len,
                           mha_st **out) {
    *out = NULL;
    uint64_t hn;
    mha_status st = st_prefix(ctx, who, NULL, b, len, len, &hn);
    if (st != MHA_OK) return st;
    int64_t data_size = (int64_t)(len - 8 - hn);
    st_parsed h;
    memset(&h, 0, sizeof h);
    st = st_read_header(ctx, who, (const char *)b + 8, hn, data_size, &h);
    if (st == MHA_OK) st = st_plan(ctx, who, &h, data_size);
    if (st == MHA_OK) st = st_build(ctx, who, &h, b + 8 + hn, out);
    header_free(&h);
    return st;
}

mha_status mha_st_parse(mha_ctx *ctx, const void *buf, size_t len, mha_st **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_st_parse: out: got NULL, expected a pointer");
    *out = NULL;
    if (!buf && len)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "mha_st_parse: buf: got NULL, expected %zu bytes",
                        len);
    return st_parse(ctx, "mha_st_parse", buf, len, out);
}

mha_status mha_st_load(mha_ctx *ctx, const char *path, mha_st **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "mha_st_load: out: got NULL, expected a pointer");
    *out = NULL;
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_st_load: path: got NULL, expected a file name");
    return mha__st_load_as(ctx, ST_LOAD, path, out);
}

mha_status mha__st_load_as(mha_ctx *ctx, const char *fn, const char *path, mha_st **out) {
    *out = NULL;
    char who[MHA__WHO_CAP];
    mha__io_who(who, fn, path);
    unsigned char *buf;
    size_t len;
    mha_status st = mha__read_file(ctx, who, path, 9, st_head, &buf, &len);
    if (st != MHA_OK) return st;
    st = st_parse(ctx, who, buf, len, out);
    mha__free(buf);
    return st;
}

/* ---- writing ----------------------------------------------------------------------------- */

typedef struct {
    char *out; /* NULL: only count */
    size_t n;
} sbuf;

static void put(sbuf *s, const char *p, size_t k) {
    if (s->out) memcpy(s->out + s->n, p, k);
    s->n += k;
}

static void puts_(sbuf *s, const char *p) { put(s, p, strlen(p)); }

static void put_json_str(sbuf *s, const char *str) {
    put(s, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)str; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            put(s, esc, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            put(s, esc, 6);
        } else {
            put(s, (const char *)p, 1);
        }
    }
    put(s, "\"", 1);
}

/* The header JSON, padded with spaces to a multiple of 8. */
static void st_header(const mha_st *st, const size_t *bytes, sbuf *s) {
    char num[64];
    uint64_t off = 0;
    puts_(s, "{");
    if (st->nmeta) {
        puts_(s, "\"__metadata__\":{");
        for (int i = 0; i < st->nmeta; i++) {
            if (i) puts_(s, ",");
            put_json_str(s, st->meta[i].key);
            puts_(s, ":");
            put_json_str(s, st->meta[i].value);
        }
        puts_(s, st->count ? "}," : "}");
    }
    for (int i = 0; i < st->count; i++) {
        const mha_array *a = &st->arrays[i];
        if (i) puts_(s, ",");
        put_json_str(s, st->names[i]);
        puts_(s, ":{\"dtype\":\"");
        puts_(s, mha__dtype_at((int)a->dtype)->st); /* checked by st_emit */
        puts_(s, "\",\"shape\":[");
        for (int d = 0; d < a->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", a->shape[d]);
            puts_(s, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off,
                 off + bytes[i]);
        puts_(s, num);
        off += bytes[i];
    }
    puts_(s, "}");
    while (s->n % 8) puts_(s, " ");
}

static mha_status st_emit(mha_ctx *ctx, const char *who, const void *obj, mha_write_fn fn,
                          void *user) {
    const mha_st *st = obj;
    size_t *bytes = mha__calloc(st->count ? (size_t)st->count : 1, sizeof *bytes);
    if (!bytes) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    mha_status r = MHA_OK;
    for (int i = 0; i < st->count && r == MHA_OK; i++) {
        char nm[200];
        snprintf(nm, sizeof nm, "tensor '%.128s'", st->names[i]);
        r = mha__array_check(ctx, who, nm, &st->arrays[i], &bytes[i]);
    }
    sbuf s = {NULL, 0};
    if (r == MHA_OK) {
        st_header(st, bytes, &s);
        s.out = mha__malloc(s.n + 8);
        if (!s.out) r = mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", who);
    }
    if (r == MHA_OK) {
        uint64_t hn = s.n;
        s.n = 8;
        st_header(st, bytes, &s);
        for (int i = 0; i < 8; i++) s.out[i] = (char)(hn >> (8 * i) & 0xff);
        r = mha__emit(ctx, who, fn, user, s.out, s.n);
    }
    for (int i = 0; i < st->count && r == MHA_OK; i++)
        r = mha__emit_data(ctx, who, st->arrays[i].dtype, st->arrays[i].data, bytes[i], fn, user);
    mha__free(s.out);
    mha__free(bytes);
    return r;
}

mha_status mha_st_write(mha_ctx *ctx, const mha_st *st, mha_write_fn fn, void *user) {
    mha__clear(ctx);
    if (!st)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_st_write: st: got NULL, expected a collection");
    if (!fn)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_st_write: fn: got NULL, expected a writer callback");
    return st_emit(ctx, "mha_st_write", st, fn, user);
}

mha_status mha_st_save(mha_ctx *ctx, const mha_st *st, const char *path) {
    mha__clear(ctx);
    if (!st)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_st_save: st: got NULL, expected a collection");
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_st_save: path: got NULL, expected a file name");
    return mha__st_save_as(ctx, "mha_st_save", st, path);
}

mha_status mha__st_save_as(mha_ctx *ctx, const char *fn, const mha_st *st, const char *path) {
    char who[MHA__WHO_CAP];
    mha__io_who(who, fn, path);
    return mha__save_atomic(ctx, who, path, st_emit, st);
}
