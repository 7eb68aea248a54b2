/* module_io.c - module parameters from and to safetensors files (a PyTorch state_dict()).
 *
 * Loading validates every parameter (present, F32, exact shape) before copying any, so an
 * error leaves the module unchanged. Other tensors in the file (e.g. a bigger model's) are
 * ignored, except bias_k and bias_v: they mean add_bias_kv=True, which changes the result and
 * is not supported, so they are refused rather than silently dropped. */
#include "module_internal.h"

#include <string.h>

static const char *const FN_LOAD = "mha_module_load";
static const char *const FN_SAVE = "mha_module_save";
static const char *const FN_FROM = "mha_module_create_from_file";

/* Checks every parameter of m against st, then copies them all. */
static mha_status load_from_st(mha_ctx *ctx, const char *fn, mha_module *m, const mha_st *st,
                               const char *path) {
    static const char *const kv_biases[] = {"bias_k", "bias_v"};
    for (size_t i = 0; i < sizeof kv_biases / sizeof kv_biases[0]; i++)
        if (mha_st_find(st, kv_biases[i]))
            return mha__err(ctx, MHA_ERR_UNSUPPORTED, "%s: %s: found in %s, expected no %s "
                            "(a layer made with add_bias_kv=True, which mha does not support)",
                            fn, kv_biases[i], path, kv_biases[i]);
    for (int i = 0; i < m->nparams; i++) {
        const mha__param *p = &m->p[i];
        const mha_array *a = mha_st_find(st, p->name);
        if (!a)
            return mha__err(ctx, MHA_ERR_NOT_FOUND, "%s: %s: missing from %s (expected a float32 "
                            "tensor of %d dims)", fn, p->name, path, p->ndim);
        if (a->dtype != MHA_DTYPE_F32)
            return mha__err(ctx, MHA_ERR_UNSUPPORTED, "%s: %s.dtype: got %s, expected float32",
                            fn, p->name, mha_dtype_name(a->dtype));
        if (a->ndim != p->ndim)
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.ndim: got %d, expected %d", fn, p->name,
                            a->ndim, p->ndim);
        for (int d = 0; d < p->ndim; d++)
            if (a->shape[d] != p->shape[d])
                return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.shape[%d]: got %lld, expected %lld",
                                fn, p->name, d, (long long)a->shape[d], (long long)p->shape[d]);
        if (p->numel > 0 && !a->data)
            return mha__err(ctx, MHA_ERR_FORMAT, "%s: %s: no data", fn, p->name);
    }
    for (int i = 0; i < m->nparams; i++) {
        const mha__param *p = &m->p[i];
        const mha_array *a = mha_st_find(st, p->name);
        if (p->numel > 0) memcpy(p->value, a->data, sizeof(float) * (size_t)p->numel);
    }
    return MHA_OK;
}

mha_status mha_module_load(mha_ctx *ctx, mha_module *m, const char *path) {
    mha__clear(ctx);
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_LOAD);
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got NULL, expected a file name",
                        FN_LOAD);
    mha_st *st = NULL;
    mha_status s = mha_st_load(ctx, path, &st);
    if (s) return s;
    s = load_from_st(ctx, FN_LOAD, m, st, path);
    mha_st_free(st);
    return s;
}

mha_status mha_module_save(mha_ctx *ctx, const mha_module *m, const char *path) {
    mha__clear(ctx);
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_SAVE);
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got NULL, expected a file name",
                        FN_SAVE);
    mha_st *st = NULL;
    mha_status s = mha_st_create(ctx, &st);
    if (s) return s;
    for (int i = 0; i < m->nparams && !s; i++) {
        const mha__param *p = &m->p[i];
        mha_array a; /* a view: mha_st_set copies it */
        memset(&a, 0, sizeof a);
        a.dtype = MHA_DTYPE_F32;
        a.ndim = p->ndim;
        for (int d = 0; d < p->ndim; d++) a.shape[d] = p->shape[d];
        a.data = p->value;
        s = mha_st_set(ctx, st, p->name, &a);
    }
    if (!s) s = mha_st_save(ctx, st, path);
    mha_st_free(st);
    return s;
}

/* The [R, C] shape of a 2-D tensor named name, or an error. */
static mha_status shape2(mha_ctx *ctx, const mha_st *st, const char *name, const char *path,
                         int64_t *r, int64_t *c) {
    const mha_array *a = mha_st_find(st, name);
    if (!a)
        return mha__err(ctx, MHA_ERR_NOT_FOUND, "%s: %s: missing from %s", FN_FROM, name, path);
    if (a->ndim != 2)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.ndim: got %d, expected 2", FN_FROM, name,
                        a->ndim);
    *r = a->shape[0];
    *c = a->shape[1];
    return MHA_OK;
}

mha_status mha_module_create_from_file(mha_ctx *ctx, const char *path, int64_t num_heads,
                                       mha_module **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer", FN_FROM);
    *out = NULL;
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got NULL, expected a file name",
                        FN_FROM);
    if (num_heads <= 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: num_heads: got %lld, expected > 0",
                        FN_FROM, (long long)num_heads);
    mha_st *st = NULL;
    mha_status s = mha_st_load(ctx, path, &st);
    if (s) return s;
    int64_t E, kd, vd, r, c;
    const char *from;
    if (mha_st_find(st, "in_proj_weight")) {
        /* Packed: in_proj_weight [3E, E]. */
        from = "in_proj_weight";
        if ((s = shape2(ctx, st, from, path, &r, &c))) goto done;
        E = kd = vd = c;
        if (E <= 0 || r != 3 * E) {
            s = mha__err(ctx, MHA_ERR_SHAPE, "%s: in_proj_weight.shape: got [%lld, %lld], "
                         "expected [3E, E] with E > 0", FN_FROM, (long long)r, (long long)c);
            goto done;
        }
    } else if (mha_st_find(st, "q_proj_weight")) {
        /* Separate: q [E, E], k [E, kdim], v [E, vdim]. */
        from = "q_proj_weight";
        if ((s = shape2(ctx, st, from, path, &r, &c))) goto done;
        E = c;
        if (E <= 0 || r != E) {
            s = mha__err(ctx, MHA_ERR_SHAPE, "%s: q_proj_weight.shape: got [%lld, %lld], expected "
                         "[E, E] with E > 0", FN_FROM, (long long)r, (long long)c);
            goto done;
        }
        if ((s = shape2(ctx, st, "k_proj_weight", path, &r, &kd))) goto done;
        if (r != E || kd <= 0) {
            s = mha__err(ctx, MHA_ERR_SHAPE, "%s: k_proj_weight.shape: got [%lld, %lld], "
                         "expected [%lld, kdim] with kdim > 0", FN_FROM, (long long)r,
                         (long long)kd, (long long)E);
            goto done;
        }
        if ((s = shape2(ctx, st, "v_proj_weight", path, &r, &vd))) goto done;
        if (r != E || vd <= 0) {
            s = mha__err(ctx, MHA_ERR_SHAPE, "%s: v_proj_weight.shape: got [%lld, %lld], "
                         "expected [%lld, vdim] with vdim > 0", FN_FROM, (long long)r,
                         (long long)vd, (long long)E);
            goto done;
        }
        if (kd == E && vd == E) {
            s = mha__err(ctx, MHA_ERR_FORMAT, "%s: q/k/v_proj_weight: got kdim = vdim = "
                         "embed_dim = %lld, expected in_proj_weight (PyTorch packs q, k, v "
                         "when kdim == vdim == embed_dim)", FN_FROM, (long long)E);
            goto done;
        }
    } else {
        s = mha__err(ctx, MHA_ERR_NOT_FOUND, "%s: in_proj_weight: missing from %s (and no "
                     "q_proj_weight either: not a MultiheadAttention state_dict)", FN_FROM, path);
        goto done;
    }
    if (E % num_heads != 0) {
        s = mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: num_heads: got %lld, expected a divisor of "
                     "embed_dim = %lld (from %s)", FN_FROM, (long long)num_heads, (long long)E,
                     from);
        goto done;
    }
    mha_config cfg = mha_config_default(E, num_heads);
    cfg.kdim = kd;
    cfg.vdim = vd;
    /* Either bias means bias=True: a file with only one of them then fails as "missing"
     * instead of silently dropping the other. */
    cfg.bias = mha_st_find(st, "in_proj_bias") != NULL ||
               mha_st_find(st, "out_proj.bias") != NULL;
    mha_module *m = NULL;
    if ((s = mha_module_create(ctx, &cfg, &m))) goto done;
    if ((s = load_from_st(ctx, FN_FROM, m, st, path))) {
        mha_module_free(m);
        goto done;
    }
    *out = m;
done:
    mha_st_free(st);
    return s;
}
