/* tensor.c - tensor views, mask and option defaults, validation helpers. */
#include "internal.h"

#include <math.h>
#include <string.h>

mha_tensor mha_tensor_strided(float *data, int ndim, const int64_t *shape, const int64_t *stride) {
    mha_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    if (ndim < 0 || ndim > MHA_MAX_DIMS) {
        t.ndim = -1; /* rejected by every validating call */
        return t;
    }
    t.ndim = ndim;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t.shape[i] = shape[i];
        t.stride[i] = stride ? stride[i] : s;
        s *= shape[i];
    }
    return t;
}

mha_tensor mha_tensor_make(float *data, int ndim, const int64_t *shape) {
    return mha_tensor_strided(data, ndim, shape, NULL);
}

int64_t mha_tensor_numel(const mha_tensor *t) {
    if (!t || t->ndim < 0) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
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

mha_status mha__check_tensor(mha_ctx *ctx, const char *fn, const char *name,
                             const mha_tensor *t, int ndim, const int64_t *want,
                             const char *why) {
    if (!t) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL, expected a tensor", fn, name);
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
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.stride[%d]: got %lld, expected 1 (innermost "
                        "dimension must be contiguous)", fn, name, ndim - 1,
                        (long long)t->stride[ndim - 1]);
    for (int i = 0; i < ndim; i++)
        if (t->stride[i] < 0)
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.stride[%d]: got %lld, expected >= 0", fn,
                            name, i, (long long)t->stride[i]);
    if (numel > 0 && !t->data)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s.data: got NULL, expected %lld floats",
                        fn, name, (long long)numel);
    return MHA_OK;
}
