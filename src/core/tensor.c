/* tensor.c - tensor views, mask and option defaults, validation helpers. */
#include "internal.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A view every validating call rejects (ndim = -1); data is kept for the caller's messages. */
static mha_tensor invalid_view(float *data) {
    mha_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.ndim = -1;
    return t;
}

mha_tensor mha_tensor_strided(float *data, int ndim, const int64_t *shape, const int64_t *stride) {
    if (ndim < 0 || ndim > MHA_MAX_DIMS || (ndim > 0 && !shape)) return invalid_view(data);
    mha_tensor t = invalid_view(data);
    t.ndim = ndim;
    int64_t s = 1; /* the contiguous stride of dimension i: the product of the inner sizes */
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = stride ? stride[i] : s;
        if (!stride && i > 0 && __builtin_mul_overflow(s, shape[i], &s))
            return invalid_view(data); /* contiguous strides beyond int64: no such buffer */
    }
    return t;
}

mha_tensor mha_tensor_make(float *data, int ndim, const int64_t *shape) {
    return mha_tensor_strided(data, ndim, shape, NULL);
}

mha_tensor mha_tensor_typed(void *data, mha_dtype dtype, int ndim, const int64_t *shape,
                            const int64_t *stride) {
    mha_tensor t = mha_tensor_strided((float *)data, ndim, shape, stride);
    if (dtype != MHA_DTYPE_F32 && dtype != MHA_DTYPE_BF16 && dtype != MHA_DTYPE_F16) t.ndim = -1;
    t.dtype = dtype;
    return t;
}

size_t mha__tensor_elsize(const mha_tensor *t) {
    return t->dtype == MHA_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
}

int64_t mha_tensor_numel(const mha_tensor *t) {
    if (!t || t->ndim < 0 || t->ndim > MHA_MAX_DIMS) return -1;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) return -1;
        if (t->shape[i] == 0) n = 0;
    }
    for (int i = 0; i < t->ndim && n != 0; i++)
        if (__builtin_mul_overflow(n, t->shape[i], &n)) return -1;
    return n;
}

/* The last element of a validated view, in elements from data (0 for an empty view). */
static __int128 view_span(const mha_tensor *t) {
    __int128 s = 0;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] > 0) s += (__int128)(t->shape[i] - 1) * t->stride[i];
    return s;
}

/* Whether delta = sum over dims[x..nd) of k_d * stride_d for some k_d in
 * [-(b.shape_d - 1), a.shape_d - 1] (dims sorted by stride, largest first). Each level tries
 * the few k_d that leave a remainder the smaller strides can still reach; -1: too many to try. */
static int reach(const mha_tensor *a, const mha_tensor *b, const int *dims, int nd, int x,
                 __int128 delta) {
    if (x == nd) return delta == 0;
    __int128 up = 0, down = 0; /* reach of the smaller strides: [-down, up] */
    for (int y = x + 1; y < nd; y++) {
        up += (__int128)(a->shape[dims[y]] - 1) * a->stride[dims[y]];
        down += (__int128)(b->shape[dims[y]] - 1) * a->stride[dims[y]];
    }
    const __int128 s = a->stride[dims[x]];
    __int128 lo = delta - up, hi = delta + down; /* k s must fall in [lo, hi] */
    __int128 k0 = lo / s, k1 = hi / s;
    if (k0 * s < lo) k0++;
    if (k1 * s > hi) k1--;
    if (k0 < -(b->shape[dims[x]] - 1)) k0 = -(b->shape[dims[x]] - 1);
    if (k1 > a->shape[dims[x]] - 1) k1 = a->shape[dims[x]] - 1;
    if (k1 - k0 > 3) return -1;
    for (__int128 k = k0; k <= k1; k++) {
        int r = reach(a, b, dims, nd, x + 1, delta - k * s);
        if (r) return r;
    }
    return 0;
}

static __int128 abs128(int64_t x) { return x < 0 ? -(__int128)x : (__int128)x; }

int mha__tensor_self_overlaps(const mha_tensor *t) {
    if (!t || mha_tensor_numel(t) <= 0) return 0;
    /* the dimensions of more than one element, by |stride|, smallest first: each stride must
     * step past everything the smaller ones reach, or two indices may share an element */
    int dims[MHA_MAX_DIMS], nd = 0;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] > 1) dims[nd++] = i;
    for (int i = 1; i < nd; i++)
        for (int j = i; j > 0 && abs128(t->stride[dims[j]]) < abs128(t->stride[dims[j - 1]]); j--) {
            int x = dims[j];
            dims[j] = dims[j - 1];
            dims[j - 1] = x;
        }
    __int128 reach = 0; /* of the smaller strides */
    for (int i = 0; i < nd; i++) {
        const __int128 s = abs128(t->stride[dims[i]]);
        if (s <= reach) return 1;
        reach += s * (t->shape[dims[i]] - 1);
    }
    return 0;
}

int mha__tensors_overlap(const mha_tensor *a, const mha_tensor *b) {
    if (!a || !b || !a->data || !b->data || mha_tensor_numel(a) <= 0 || mha_tensor_numel(b) <= 0)
        return 0;
    const __int128 ea = (__int128)mha__tensor_elsize(a), eb = (__int128)mha__tensor_elsize(b);
    const __int128 a0 = (__int128)(uintptr_t)a->data, b0 = (__int128)(uintptr_t)b->data;
    const __int128 a1 = a0 + (view_span(a) + 1) * ea, b1 = b0 + (view_span(b) + 1) * eb;
    if (a1 <= b0 || b1 <= a0) return 0; /* disjoint address ranges */
    if (ea != eb || (b0 - a0) % ea || a->ndim != b->ndim) return 1;
    /* Interleaved views of one buffer (q, k and v of a packed [B, T, 3, H, D] array): with
     * the same strides, a shared element means (i - j) . stride = b.data - a.data for some
     * index differences k_d = i_d - j_d in [-(b.shape_d - 1), a.shape_d - 1]: a search over
     * the dimensions, largest stride first, that for views of a row-major array tries one
     * or two k_d per dimension. Different strides, or too many candidates: assume overlap. */
    int dims[MHA_MAX_DIMS], nd = 0;
    for (int i = 0; i < a->ndim; i++) {
        if (a->stride[i] != b->stride[i]) return 1;
        if (a->stride[i] > 0 && (a->shape[i] > 1 || b->shape[i] > 1)) dims[nd++] = i;
    }
    for (int i = 1; i < nd; i++) /* by stride, largest first */
        for (int j = i; j > 0 && a->stride[dims[j]] > a->stride[dims[j - 1]]; j--) {
            int t = dims[j];
            dims[j] = dims[j - 1];
            dims[j - 1] = t;
        }
    return reach(a, b, dims, nd, 0, (b0 - a0) / ea) != 0;
}

mha_mask mha_mask_default(void) {
    mha_mask m;
    memset(&m, 0, sizeof m);
    return m;
}

mha_attn_params mha_attn_params_default(void) {
    mha_attn_params p;
    memset(&p, 0, sizeof p);
    return p;
}

mha_status mha__check_tensor(mha_ctx *ctx, const char *fn, const char *name, const mha_tensor *t,
                             int ndim, const int64_t *want, const char *why) {
    return mha__check_tensor_as(ctx, fn, name, t, MHA_DTYPE_F32, ndim, want, why);
}

mha_status mha__check_tensor_as(mha_ctx *ctx, const char *fn, const char *name, const mha_tensor *t,
                                mha_dtype dtype, int ndim, const int64_t *want, const char *why) {
    if (!t)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL, expected a tensor", fn, name);
    if (t->dtype != dtype)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED, "%s: %s.dtype: got %s, expected %s%s", fn, name,
                        mha_dtype_name(t->dtype), mha_dtype_name(dtype),
                        dtype == MHA_DTYPE_F32 ? "" : " (the dtype of the call's inputs)");
    if (t->ndim != ndim)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.ndim: got %d, expected %d%s%s%s", fn, name,
                        t->ndim, ndim, why ? " (" : "", why ? why : "", why ? ")" : "");
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (t->shape[i] < 0)
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.shape[%d]: got %lld, expected >= 0", fn,
                            name, i, (long long)t->shape[i]);
        if (want && want[i] >= 0 && t->shape[i] != want[i])
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.shape[%d]: got %lld, expected %lld%s%s%s",
                            fn, name, i, (long long)t->shape[i], (long long)want[i],
                            why ? " (" : "", why ? why : "", why ? ")" : "");
        if (t->shape[i] > 0 && numel > INT64_MAX / t->shape[i])
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s: shape overflows int64", fn, name);
        numel *= t->shape[i];
    }
    if (ndim > 0 && t->shape[ndim - 1] > 1 && t->stride[ndim - 1] != 1)
        return mha__err(
            ctx, MHA_ERR_SHAPE,
            "%s: %s.stride[%d]: got %lld, expected 1 (innermost dimension must be contiguous)", fn,
            name, ndim - 1, (long long)t->stride[ndim - 1]);
    for (int i = 0; i < ndim; i++)
        if (t->stride[i] < 0)
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.stride[%d]: got %lld, expected >= 0", fn,
                            name, i, (long long)t->stride[i]);
    if (numel > 0 && !t->data)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s.data: got NULL, expected %lld %s values",
                        fn, name, (long long)numel, mha_dtype_name(dtype));
    /* the last element's byte offset must be an offset at all (the kernels form addresses from
     * it): a stride the offsets overflow with is refused, naming the largest such stride */
    if (numel > 0 && (view_span(t) + 1) * (__int128)mha__tensor_elsize(t) > (__int128)PTRDIFF_MAX) {
        int big = 0;
        for (int i = 1; i < ndim; i++)
            if (t->stride[i] > t->stride[big]) big = i;
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: %s.stride[%d]: got %lld, expected strides whose offsets fit in "
                        "memory (the last element is beyond any address)",
                        fn, name, big, (long long)t->stride[big]);
    }
    return MHA_OK;
}
