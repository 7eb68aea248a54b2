/* module_io.c - module parameters from and to safetensors files (a PyTorch state_dict()).
 *
 * Loading validates every parameter (present, F32, exact shape) before copying any, so an
 * error leaves the module unchanged. Other tensors in the file (e.g. a bigger model's) are
 * ignored, except bias_k and bias_v: they mean add_bias_kv=True, which changes the result and
 * is not supported, so they are refused rather than silently dropped.
 *
 * The number of heads is not in the tensors' shapes: mha records it in the file's metadata
 * ({"num_heads": "8"}) and, reading a file that has it, uses it and refuses another. */
#include "module_internal.h"

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

/* Checks every parameter of m against st, then copies them all. */
static mha_status load_from_st(mha_ctx *ctx, const char *fn, mha_module *m, const mha_st *st,
                               const char *path) {
    static const char *const kv_biases[] = {"bias_k", "bias_v"};
    for (size_t i = 0; i < sizeof kv_biases / sizeof kv_biases[0]; i++)
        if (mha_st_find(st, kv_biases[i]))
            return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                            "%s: %s: found in %s, expected no %s (a layer made with "
                            "add_bias_kv=True, which mha does not support)",
                            fn, kv_biases[i], path, kv_biases[i]);
    for (int i = 0; i < m->nparams; i++) {
        const mha__param *p = &m->p[i];
        const mha_array *a = mha_st_find(st, p->name);
        if (!a)
            return mha__err(ctx, MHA_ERR_NOT_FOUND,
                            "%s: %s: missing from %s (expected a float32 tensor of %d dims)", fn,
                            p->name, path, p->ndim);
        if (a->dtype != MHA_DTYPE_F32)
            return mha__err(ctx, MHA_ERR_UNSUPPORTED, "%s: %s.dtype: got %s, expected float32", fn,
                            p->name, mha_dtype_name(a->dtype));
        if (a->ndim != p->ndim)
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.ndim: got %d, expected %d", fn, p->name,
                            a->ndim, p->ndim);
        for (int d = 0; d < p->ndim; d++)
            if (a->shape[d] != p->shape[d])
                return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.shape[%d]: got %lld, expected %lld", fn,
                                p->name, d, (long long)a->shape[d], (long long)p->shape[d]);
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
    if (!m)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_LOAD);
    if (!path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got NULL, expected a file name",
                        FN_LOAD);
    mha_st *st = NULL;
    mha_status s = mha_st_load(ctx, path, &st);
    if (s) return s;
    int64_t heads;
    s = heads_from_st(ctx, FN_LOAD, st, m->cfg.embed_dim, &heads);
    if (!s && heads && heads != m->cfg.num_heads)
        s = mha__err(ctx, MHA_ERR_INVALID_ARG,
                     "%s: num_heads: got a module of %lld heads, expected %lld (the number of "
                     "heads %s was saved with)",
                     FN_LOAD, (long long)m->cfg.num_heads, (long long)heads, path);
    if (!s) s = load_from_st(ctx, FN_LOAD, m, st, path);
    mha_st_free(st);
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
        a.dtype = MHA_DTYPE_F32;
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
    if (!s) s = mha_st_save(ctx, st, path);
    mha_st_free(st);
    return s;
}

/* The [R, C] shape of a 2-D tensor named name, or an error. */
static mha_status shape2(mha_ctx *ctx, const char *fn, const mha_st *st, const char *name,
                         const char *path, int64_t *r, int64_t *c) {
    const mha_array *a = mha_st_find(st, name);
    if (!a) return mha__err(ctx, MHA_ERR_NOT_FOUND, "%s: %s: missing from %s", fn, name, path);
    if (a->ndim != 2)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: %s.ndim: got %d, expected 2", fn, name, a->ndim);
    *r = a->shape[0];
    *c = a->shape[1];
    return MHA_OK;
}

/* The dims of a packed (in_proj_weight [3E, E]) or separate (q [E, E], k [E, kdim],
 * v [E, vdim]) state_dict into cfg; *from names the tensor E was read from. */
static mha_status dims_from_st(mha_ctx *ctx, const char *fn, const mha_st *st, const char *path,
                               mha_config *cfg, const char **from) {
    int64_t r, c, kd, vd;
    mha_status s;
    if (mha_st_find(st, "in_proj_weight")) {
        *from = "in_proj_weight";
        if ((s = shape2(ctx, fn, st, *from, path, &r, &c))) return s;
        if (c <= 0 || r != 3 * c)
            return mha__err(
                ctx, MHA_ERR_SHAPE,
                "%s: in_proj_weight.shape: got [%lld, %lld], expected [3E, E] with E > 0", fn,
                (long long)r, (long long)c);
        cfg->embed_dim = cfg->kdim = cfg->vdim = c;
        return MHA_OK;
    }
    if (!mha_st_find(st, "q_proj_weight"))
        return mha__err(ctx, MHA_ERR_NOT_FOUND,
                        "%s: in_proj_weight: missing from %s (and no "
                        "q_proj_weight either: not a MultiheadAttention state_dict)",
                        fn, path);
    *from = "q_proj_weight";
    if ((s = shape2(ctx, fn, st, *from, path, &r, &c))) return s;
    const int64_t E = c;
    if (E <= 0 || r != E)
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: q_proj_weight.shape: got [%lld, %lld], expected [E, E] with E > 0", fn,
                        (long long)r, (long long)c);
    if ((s = shape2(ctx, fn, st, "k_proj_weight", path, &r, &kd))) return s;
    if (r != E || kd <= 0)
        return mha__err(
            ctx, MHA_ERR_SHAPE,
            "%s: k_proj_weight.shape: got [%lld, %lld], expected [%lld, kdim] with kdim > 0", fn,
            (long long)r, (long long)kd, (long long)E);
    if ((s = shape2(ctx, fn, st, "v_proj_weight", path, &r, &vd))) return s;
    if (r != E || vd <= 0)
        return mha__err(
            ctx, MHA_ERR_SHAPE,
            "%s: v_proj_weight.shape: got [%lld, %lld], expected [%lld, vdim] with vdim > 0", fn,
            (long long)r, (long long)vd, (long long)E);
    if (kd == E && vd == E)
        return mha__err(ctx, MHA_ERR_FORMAT,
                        "%s: q/k/v_proj_weight: got kdim = vdim = embed_dim = %lld, expected "
                        "in_proj_weight (PyTorch packs q, k, v when kdim == vdim == embed_dim)",
                        fn, (long long)E);
    cfg->embed_dim = E;
    cfg->kdim = kd;
    cfg->vdim = vd;
    return MHA_OK;
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

static mha_status config_from_st(mha_ctx *ctx, const char *fn, const mha_st *st, const char *path,
                                 mha_config *cfg, const char **from) {
    *cfg = mha_config_default(0, 0);
    mha_status s = dims_from_st(ctx, fn, st, path, cfg, from);
    if (!s) s = heads_from_st(ctx, fn, st, cfg->embed_dim, &cfg->num_heads);
    /* Either bias means bias=True: a file with only one of them then fails as "missing"
     * instead of silently dropping the other. */
    cfg->bias = mha_st_find(st, "in_proj_bias") != NULL || mha_st_find(st, "out_proj.bias") != NULL;
    return s;
}

mha_status mha_module_config_from_st(mha_ctx *ctx, const mha_st *st, mha_config *cfg) {
    mha__clear(ctx);
    if (!st || !cfg)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL, expected a pointer", FN_CFG,
                        st ? "cfg" : "st");
    const char *from;
    return config_from_st(ctx, FN_CFG, st, "the collection", cfg, &from);
}

/* create_from_file and create_from_st: num_heads 0 takes the file's; otherwise it must agree. */
static mha_status create_from_st(mha_ctx *ctx, const char *fn, const mha_st *st, const char *path,
                                 int64_t num_heads, mha_module **out) {
    if (num_heads < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: num_heads: got %lld, expected > 0 (or 0: the number the file records)",
                        fn, (long long)num_heads);
    mha_config cfg;
    const char *from;
    mha_status s = config_from_st(ctx, fn, st, path, &cfg, &from);
    if (s) return s;
    if (num_heads && cfg.embed_dim % num_heads != 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: num_heads: got %lld, expected a divisor of embed_dim = %lld (from %s)",
                        fn, (long long)num_heads, (long long)cfg.embed_dim, from);
    if (num_heads == 0 && cfg.num_heads == 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: num_heads: got 0, expected the layer's number of heads (%s does not "
                        "record it in __metadata__)",
                        fn, path);
    if (num_heads && cfg.num_heads && num_heads != cfg.num_heads)
        return mha__err(
            ctx, MHA_ERR_INVALID_ARG,
            "%s: num_heads: got %lld, expected %lld (the number of heads %s was saved with)", fn,
            (long long)num_heads, (long long)cfg.num_heads, path);
    if (num_heads) cfg.num_heads = num_heads;
    mha_module *m = NULL;
    if ((s = mha_module_create(ctx, &cfg, &m))) return s;
    if ((s = load_from_st(ctx, fn, m, st, path))) {
        mha_module_free(m);
        return s;
    }
    *out = m;
    return MHA_OK;
}

mha_status mha_module_create_from_st(mha_ctx *ctx, const mha_st *st, int64_t num_heads,
                                     mha_module **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer", FN_FST);
    *out = NULL;
    if (!st)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: st: got NULL, expected a collection",
                        FN_FST);
    return create_from_st(ctx, FN_FST, st, "the collection", num_heads, out);
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
    if (num_heads < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: num_heads: got %lld, expected > 0 (or 0: the number the file records)",
                        FN_FROM, (long long)num_heads);
    mha_st *st = NULL;
    mha_status s = mha_st_load(ctx, path, &st);
    if (!s) s = create_from_st(ctx, FN_FROM, st, path, num_heads, out);
    mha_st_free(st);
    return s;
}
