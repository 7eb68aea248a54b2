/* module_io.c - module parameters from and to safetensors files (a PyTorch state_dict()).
 *
 * Loading first picks one attention layer out of the file and converts it to
 * nn.MultiheadAttention's names and float32 (mha_st_layer, src/io/layers.c: any layout, any
 * prefix; bias_k and bias_v, add_bias_kv=True, are refused there rather than silently dropped),
 * then validates every parameter (present, exact shape) before copying any, so an error leaves
 * the module unchanged.
 *
 * The number of heads is not in the tensors' shapes: mha records it in the file's metadata
 * ({"num_heads": "8"}) and, reading a file that has it, uses it and refuses another. */
#include "module_internal.h"
#include "io/io_internal.h" /* mha__st_layer */
#include "kernels/cvt.h"

#include <stdio.h>
#include <string.h>

static const char *const FN_LOAD = "mha_module_load";
static const char *const FN_SAVE = "mha_module_save";
static const char *const FN_FROM = "mha_module_create_from_file";
static const char *const FN_FST = "mha_module_create_from_st";
static const char *const FN_CFG = "mha_module_config_from_st";
static const char *const FN_DICT = "mha_module_state_dict";
/* The metadata key of the number of heads (values are strings: "8"). */
#define MHA_META_NUM_HEADS "num_heads"

static mha_status heads_from_st(mha_ctx *ctx, const char *fn, const mha_st *st, int64_t E,
                                int64_t *heads);

/* Checks every parameter of m against layer (mha__st_layer's result), then copies them all. */
static mha_status load_from_st(mha_ctx *ctx, const char *fn, mha_module *m, const mha_st *layer,
                               const char *path) {
    for (int i = 0; i < m->nparams; i++) {
        const mha__param *p = &m->p[i];
        const mha_array *a = mha_st_find(layer, p->name);
        if (!a)
            return mha__err(ctx, MHA_ERR_NOT_FOUND,
                            "%s: %s: missing from %s (expected a float32 tensor of %d dims)", fn,
                            p->name, path, p->ndim);
        if (a->ndim != p->ndim)
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.ndim: got %d, expected %d", fn, p->name,
                            a->ndim, p->ndim);
        for (int d = 0; d < p->ndim; d++)
            if (a->shape[d] != p->shape[d])
                return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.shape[%d]: got %lld, expected %lld", fn,
                                p->name, d, (long long)a->shape[d], (long long)p->shape[d]);
    }
    for (int i = 0; i < m->nparams; i++) {
        const mha__param *p = &m->p[i];
        const mha_array *a = mha_st_find(layer, p->name);
        if (m->cfg.dtype == MHA_DTYPE_F32) { /* the float32 values as they are */
            if (p->numel > 0) memcpy(p->value, a->data, sizeof(float) * (size_t)p->numel);
            continue;
        }
        /* rounded once into a bf16 / f16 module: a file's bf16 (f16) values come back with
         * their own bits (mha__st_layer converted them to float32 exactly) */
        for (int64_t e = 0; e < p->numel; e++)
            mha__store_f32(m->cfg.dtype, p->value, e, ((const float *)a->data)[e]);
    }
    return MHA_OK;
}

mha_status mha_module_load(mha_ctx *ctx, mha_module *m, const char *path, const char *prefix) {
    mha__clear(ctx);
    if (!m)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_LOAD);
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got NULL, expected a file name",
                        FN_LOAD);
    mha_st *st = NULL, *layer = NULL;
    mha_status s = mha__st_load_as(ctx, FN_LOAD, path, &st);
    if (!s) s = mha__st_layer(ctx, FN_LOAD, st, prefix, path, &layer, NULL);
    mha_st_free(st);
    if (s) return s;
    int64_t heads;
    s = heads_from_st(ctx, FN_LOAD, layer, m->cfg.embed_dim, &heads);
    if (!s && heads && heads != m->cfg.num_heads)
        s = mha__err(ctx, MHA_ERR_INVALID_ARG,
                     "%s: num_heads: got a module of %lld heads, expected %lld (the number of "
                     "heads %s was saved with)",
                     FN_LOAD, (long long)m->cfg.num_heads, (long long)heads, path);
    if (!s) s = load_from_st(ctx, FN_LOAD, m, layer, path);
    mha_st_free(layer);
    return s;
}

mha_status mha_module_state_dict(mha_ctx *ctx, const mha_module *m, mha_st **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer", FN_DICT);
    *out = NULL;
    if (!m)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_DICT);
    mha_st *st = NULL;
    mha_status s = mha_st_create(ctx, &st);
    for (int i = 0; i < m->nparams && !s; i++) {
        const mha__param *p = &m->p[i];
        mha_array a; /* a view: mha_st_set copies it */
        memset(&a, 0, sizeof a);
        a.dtype = m->cfg.dtype;
        a.ndim = p->ndim;
        for (int d = 0; d < p->ndim; d++) a.shape[d] = p->shape[d];
        a.data = p->value;
        s = mha_st_set(ctx, st, p->name, &a);
    }
    char heads[24];
    snprintf(heads, sizeof heads, "%lld", (long long)m->cfg.num_heads);
    if (!s) s = mha_st_meta_set(ctx, st, MHA_META_NUM_HEADS, heads);
    if (s) {
        mha_st_free(st);
        return s;
    }
    *out = st;
    return MHA_OK;
}

mha_status mha_module_save(mha_ctx *ctx, const mha_module *m, const char *path) {
    mha__clear(ctx);
    if (!m)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_SAVE);
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got NULL, expected a file name",
                        FN_SAVE);
    mha_st *st = NULL;
    mha_status s = mha_module_state_dict(ctx, m, &st);
    if (!s) s = mha__st_save_as(ctx, FN_SAVE, st, path);
    mha_st_free(st);
    return s;
}

/* The "num_heads" metadata into *heads (0 when the file does not record it): a decimal number
 * that divides E. */
static mha_status heads_from_st(mha_ctx *ctx, const char *fn, const mha_st *st, int64_t E,
                                int64_t *heads) {
    const char *v = mha_st_meta_get(st, MHA_META_NUM_HEADS);
    *heads = 0;
    if (!v) return MHA_OK;
    int64_t h = 0;
    const char *p = v;
    for (; *p >= '0' && *p <= '9' && h <= INT32_MAX; p++) h = h * 10 + (*p - '0');
    if (p == v || *p || h <= 0 || h > INT32_MAX || E % h != 0)
        return mha__err(
            ctx, MHA_ERR_FORMAT,
            "%s: __metadata__ num_heads: got \"%.40s\", expected a divisor of embed_dim = %lld", fn,
            v, (long long)E);
    *heads = h;
    return MHA_OK;
}

/* The configuration of a layer from mha__st_layer: its sizes, the heads it records. */
static mha_status config_from_layer(mha_ctx *ctx, const char *fn, const mha_st *layer,
                                    const mha__layer_dims *dims, mha_config *cfg) {
    *cfg = mha_config_default(dims->embed_dim, 0);
    cfg->kdim = dims->kdim;
    cfg->vdim = dims->vdim;
    cfg->bias = dims->bias;
    return heads_from_st(ctx, fn, layer, cfg->embed_dim, &cfg->num_heads);
}

mha_status mha_module_config_from_st(mha_ctx *ctx, const mha_st *st, const char *prefix,
                                     mha_config *cfg) {
    mha__clear(ctx);
    if (!st || !cfg)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL, expected a pointer", FN_CFG,
                        st ? "cfg" : "st");
    mha_st *layer;
    mha__layer_dims dims;
    mha_status s = mha__st_layer(ctx, FN_CFG, st, prefix, NULL, &layer, &dims);
    if (!s) s = config_from_layer(ctx, FN_CFG, layer, &dims, cfg);
    mha_st_free(layer);
    return s;
}

/* create_from_file and create_from_st: num_heads 0 takes the file's; otherwise it must agree. */
static mha_status create_from_st(mha_ctx *ctx, const char *fn, const mha_st *st, const char *path,
                                 const char *prefix, int64_t num_heads, mha_module **out) {
    if (num_heads < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: num_heads: got %lld, expected > 0 (or 0: the number the file records)",
                        fn, (long long)num_heads);
    mha_st *layer;
    mha__layer_dims dims;
    mha_status s = mha__st_layer(ctx, fn, st, prefix, path, &layer, &dims);
    if (s) return s;
    const char *where = path ? path : "the collection";
    mha_config cfg;
    mha_module *m = NULL;
    s = config_from_layer(ctx, fn, layer, &dims, &cfg);
    if (!s && num_heads && cfg.embed_dim % num_heads != 0)
        s = mha__err(ctx, MHA_ERR_INVALID_ARG,
                     "%s: num_heads: got %lld, expected a divisor of embed_dim = %lld (from %s)",
                     fn, (long long)num_heads, (long long)cfg.embed_dim, where);
    else if (!s && num_heads == 0 && cfg.num_heads == 0)
        s = mha__err(ctx, MHA_ERR_INVALID_ARG,
                     "%s: num_heads: got 0, expected the layer's number of heads (%s does not "
                     "record it in __metadata__)",
                     fn, where);
    else if (!s && num_heads && cfg.num_heads && num_heads != cfg.num_heads)
        s = mha__err(
            ctx, MHA_ERR_INVALID_ARG,
            "%s: num_heads: got %lld, expected %lld (the number of heads %s was saved with)", fn,
            (long long)num_heads, (long long)cfg.num_heads, where);
    if (!s && num_heads) cfg.num_heads = num_heads;
    if (!s) s = mha_module_create(ctx, &cfg, &m);
    if (!s) s = load_from_st(ctx, fn, m, layer, where);
    mha_st_free(layer);
    if (s) {
        mha_module_free(m);
        return s;
    }
    *out = m;
    return MHA_OK;
}

mha_status mha_module_create_from_st(mha_ctx *ctx, const mha_st *st, const char *prefix,
                                     int64_t num_heads, mha_module **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer", FN_FST);
    *out = NULL;
    if (!st)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: st: got NULL, expected a collection",
                        FN_FST);
    return create_from_st(ctx, FN_FST, st, NULL, prefix, num_heads, out);
}

mha_status mha_module_create_from_file(mha_ctx *ctx, const char *path, const char *prefix,
                                       int64_t num_heads, mha_module **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer", FN_FROM);
    *out = NULL;
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got NULL, expected a file name",
                        FN_FROM);
    if (num_heads < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: num_heads: got %lld, expected > 0 (or 0: the number the file records)",
                        FN_FROM, (long long)num_heads);
    mha_st *st = NULL;
    mha_status s = mha__st_load_as(ctx, FN_FROM, path, &st);
    if (!s) s = create_from_st(ctx, FN_FROM, st, path, prefix, num_heads, out);
    mha_st_free(st);
    return s;
}
