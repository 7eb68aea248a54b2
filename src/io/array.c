/* array.c - owned n-dimensional arrays: dtypes, sizes, allocation. */
#include "io_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* One row per mha_dtype, in enum order: element size, PyTorch's name, safetensors' name, and
 * NumPy's type code without the byte order (NULL: NumPy has no such dtype). */
static const mha__dtype_info dtypes[] = {
    {MHA_DTYPE_F32, 4, "float32", "F32", "f4"},
    {MHA_DTYPE_BOOL, 1, "bool", "BOOL", "b1"},
    {MHA_DTYPE_I32, 4, "int32", "I32", "i4"},
    {MHA_DTYPE_F64, 8, "float64", "F64", "f8"},
    {MHA_DTYPE_F16, 2, "float16", "F16", "f2"},
    {MHA_DTYPE_BF16, 2, "bfloat16", "BF16", NULL},
    {MHA_DTYPE_I64, 8, "int64", "I64", "i8"},
    {MHA_DTYPE_U8, 1, "uint8", "U8", "u1"},
    {MHA_DTYPE_I8, 1, "int8", "I8", "i1"},
    {MHA_DTYPE_I16, 2, "int16", "I16", "i2"},
    {MHA_DTYPE_U16, 2, "uint16", "U16", "u2"},
    {MHA_DTYPE_U32, 4, "uint32", "U32", "u4"},
    {MHA_DTYPE_U64, 8, "uint64", "U64", "u8"},
    {MHA_DTYPE_F8_E4M3, 1, "float8_e4m3fn", "F8_E4M3", NULL},
    {MHA_DTYPE_F8_E5M2, 1, "float8_e5m2", "F8_E5M2", NULL},
};

const mha__dtype_info *mha__dtype_at(int i) {
    return i >= 0 && (size_t)i < sizeof dtypes / sizeof dtypes[0] ? &dtypes[i] : NULL;
}

int mha__dtype_valid(mha_dtype dt) { return mha__dtype_at((int)dt) != NULL; }

size_t mha_dtype_size(mha_dtype dt) {
    const mha__dtype_info *d = mha__dtype_at((int)dt);
    return d ? d->size : 0;
}

const char *mha_dtype_name(mha_dtype dt) {
    const mha__dtype_info *d = mha__dtype_at((int)dt);
    return d ? d->name : "unknown";
}

int64_t mha_array_numel(const mha_array *a) {
    int64_t n = 0;
    size_t bytes;
    int bad;
    if (!a || !mha__dtype_valid(a->dtype)) return 0;
    if (!mha__shape_bytes(a->dtype, a->ndim, a->shape, &n, &bytes, &bad)) return 0;
    return n;
}

void mha__io_who(char *who, const char *fn, const char *path) {
    if (path) snprintf(who, MHA__WHO_CAP, "%s: %.200s", fn, path);
    else snprintf(who, MHA__WHO_CAP, "%s", fn);
}

/* Sizes stay below 2^62 bytes so that offsets also fit in int64_t and sums cannot wrap. */
#define MAX_BYTES ((uint64_t)1 << 62)

int mha__shape_bytes(mha_dtype dt, int ndim, const int64_t *shape, int64_t *numel, size_t *bytes,
                     int *bad_dim) {
    *bad_dim = -1;
    if (ndim < 0 || ndim > MHA_MAX_DIMS || (ndim > 0 && !shape)) return 0;
    /* The product of the nonzero dims must fit, even when another dim is 0 (as NumPy). */
    uint64_t n = 1, nz = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            *bad_dim = i;
            return 0;
        }
        if (shape[i] == 0) {
            n = 0;
            continue;
        }
        uint64_t d = (uint64_t)shape[i];
        if (d > MAX_BYTES / nz) return 0;
        nz *= d;
        n *= d;
    }
    uint64_t es = mha_dtype_size(dt);
    if (es == 0 || nz > MAX_BYTES / es) return 0;
    if (n * es > (uint64_t)SIZE_MAX) return 0;
    *numel = (int64_t)n;
    *bytes = (size_t)(n * es);
    return 1;
}

void mha__shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t used = 0;
    int w = snprintf(buf, cap, "[");
    if (w > 0) used = (size_t)w;
    for (int i = 0; i < ndim && used < cap; i++) {
        w = snprintf(buf + used, cap - used, "%s%" PRId64, i ? ", " : "", shape[i]);
        if (w < 0) return;
        used += (size_t)w;
    }
    if (used < cap) snprintf(buf + used, cap - used, "]");
}

mha_status mha__array_make(mha_ctx *ctx, const char *who, mha_dtype dt, int ndim,
                           const int64_t *shape, mha_array *out) {
    memset(out, 0, sizeof *out);
    if (!mha__dtype_valid(dt))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: dtype: got %d, expected an mha_dtype value",
                        who, (int)dt);
    if (ndim < 0 || ndim > MHA_MAX_DIMS)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: ndim: got %d, expected 0..%d", who, ndim,
                        MHA_MAX_DIMS);
    if (ndim > 0 && !shape)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: shape: got NULL, expected %d dims", who,
                        ndim);
    int64_t numel;
    size_t bytes;
    int bad;
    if (!mha__shape_bytes(dt, ndim, shape, &numel, &bytes, &bad)) {
        if (bad >= 0)
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: shape[%d]: got %" PRId64 ", expected >= 0", who, bad, shape[bad]);
        char s[160];
        mha__shape_str(s, sizeof s, ndim, shape);
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: shape %s: size overflows (%s)", who, s,
                        mha_dtype_name(dt));
    }
    void *p = mha__calloc(1, bytes);
    if (!p) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (%zu bytes)", who, bytes);
    out->dtype = dt;
    out->ndim = ndim;
    for (int i = 0; i < ndim; i++) out->shape[i] = shape[i];
    out->data = p;
    return MHA_OK;
}

mha_status mha_array_alloc(mha_ctx *ctx, mha_dtype dt, int ndim, const int64_t *shape,
                           mha_array *out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_array_alloc: out: got NULL, expected a pointer");
    return mha__array_make(ctx, "mha_array_alloc", dt, ndim, shape, out);
}

void mha_array_free(mha_array *a) {
    if (!a) return;
    mha__free(a->data);
    memset(a, 0, sizeof *a);
}

mha_status mha__array_check(mha_ctx *ctx, const char *who, const char *name, const mha_array *a,
                            size_t *bytes) {
    if (!a)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL, expected an array", who, name);
    if (!mha__dtype_valid(a->dtype))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: %s.dtype: got %d, expected an mha_dtype value", who, name,
                        (int)a->dtype);
    if (a->ndim < 0 || a->ndim > MHA_MAX_DIMS)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s.ndim: got %d, expected 0..%d", who, name,
                        a->ndim, MHA_MAX_DIMS);
    int64_t numel;
    int bad;
    if (!mha__shape_bytes(a->dtype, a->ndim, a->shape, &numel, bytes, &bad)) {
        if (bad >= 0)
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: %s.shape[%d]: got %" PRId64 ", expected >= 0", who, name, bad,
                            a->shape[bad]);
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s.shape: size overflows", who, name);
    }
    if (!a->data && *bytes)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s.data: got NULL, expected %zu bytes", who,
                        name, *bytes);
    return MHA_OK;
}

mha_status mha__emit(mha_ctx *ctx, const char *who, mha_write_fn fn, void *user, const void *data,
                     size_t size) {
    if (size == 0) return MHA_OK;
    int r = fn(user, data, size);
    if (r != 0)
        return mha__err(ctx, MHA_ERR_IO, "%s: writer: callback returned %d, expected 0", who, r);
    return MHA_OK;
}

mha_status mha__emit_data(mha_ctx *ctx, const char *who, mha_dtype dt, const void *data,
                          size_t bytes, mha_write_fn fn, void *user) {
    if (dt != MHA_DTYPE_BOOL) return mha__emit(ctx, who, fn, user, data, bytes);
    const unsigned char *src = data;
    unsigned char chunk[4096];
    while (bytes) {
        size_t n = bytes < sizeof chunk ? bytes : sizeof chunk;
        for (size_t i = 0; i < n; i++) chunk[i] = src[i] != 0;
        mha_status st = mha__emit(ctx, who, fn, user, chunk, n);
        if (st != MHA_OK) return st;
        src += n;
        bytes -= n;
    }
    return MHA_OK;
}
