/* module.c - torch.nn.MultiheadAttention(E, H, dropout, bias, kdim, vdim, batch_first=True):
 * creation and initialization, parameters, forward and backward.
 *
 * FORWARD (B batches, L queries, S keys, H heads of D = E / H features)
 *   q = query Wq^T + bq      [B*L, E]     self-attention: one product query [B*L, E] x
 *   k = key   Wk^T + bk      [B*S, E]     in_proj_weight^T [E, 3E] into a packed
 *   v = value Wv^T + bv      [B*S, E]     [B, L, 3, H, D] buffer; the core reads strided views
 *   a = attention core (q, k, v) as [B, H, L, D] views of [B, L, H, D] memory   [B*L, E]
 *   y = a Wo^T + bo          [B*L, E]
 * BACKWARD (dy given)
 *   da = dy Wo,  dWo += dy^T a,  dbo += sum_rows dy,  (dq, dk, dv) = core backward (da)
 *   dWq += dq^T query, dbq += sum_rows dq, dquery = dq Wq   (same for k and v; for
 *   self-attention dquery = [dq dk dv] in_proj_weight, the sum of the three paths)
 * Every product goes through mha__gemm_ex (biases added inside the product, one packing
 * workspace kept by the module); everything else is O(rows * E) glue. The buffers live in
 * the module and are reused by the next call of the same sizes (module_internal.h). */
#include "module_internal.h"
#include "attn/attn_common.h"
#include "attn/gemm.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const FN_CREATE = "mha_module_create";
static const char *const FN_FWD = "mha_module_forward";
static const char *const FN_BWD = "mha_module_backward";

mha_config mha_config_default(int64_t embed_dim, int64_t num_heads) {
    mha_config c;
    memset(&c, 0, sizeof c);
    c.embed_dim = embed_dim;
    c.num_heads = num_heads;
    c.bias = 1;
    return c;
}

mha_forward_opts mha_forward_opts_default(void) {
    mha_forward_opts o;
    memset(&o, 0, sizeof o);
    o.average_weights = 1;
    o.save_for_backward = 1;
    return o;
}

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */

/* Allocates a * b elements of size es, with an overflow check; NOMEM with a message. */
static mha_status alloc_n(mha_ctx *ctx, const char *fn, const char *what, void **out, int64_t a,
                          int64_t b, size_t es) {
    size_t n, bytes;
    *out = NULL;
    if (a < 0 || b < 0 || !mha__mul_size((size_t)a, (size_t)b, &n) ||
        !mha__mul_size(n, es, &bytes))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: %s: size overflows (%lld x %lld elements)", fn,
                        what, (long long)a, (long long)b);
    *out = mha__malloc(bytes);
    if (!*out)
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: %s: out of memory (%zu bytes)", fn, what, bytes);
    return MHA_OK;
}

static mha_status alloc_f(mha_ctx *ctx, const char *fn, const char *what, float **out,
                          int64_t a, int64_t b) {
    void *p;
    mha_status st = alloc_n(ctx, fn, what, &p, a, b, sizeof(float));
    *out = p;
    return st;
}

/* *out = a buffer of a * b elements of size es, from the kept buffer kb (reused when it fits,
 * see mha__buf in module_internal.h); NOMEM with a message, kb then empty. */
static mha_status buf_get(mha_ctx *ctx, const char *fn, const char *what, mha__buf *kb,
                          void **out, int64_t a, int64_t b, size_t es) {
    size_t n, bytes;
    *out = NULL;
    if (a < 0 || b < 0 || !mha__mul_size((size_t)a, (size_t)b, &n) ||
        !mha__mul_size(n, es, &bytes))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: %s: size overflows (%lld x %lld elements)", fn,
                        what, (long long)a, (long long)b);
    if (!kb->p || bytes > kb->cap || bytes < kb->cap / 4) {
        mha__free(kb->p);
        kb->cap = 0;
        if (!(kb->p = mha__malloc(bytes)))
            return mha__err(ctx, MHA_ERR_NOMEM, "%s: %s: out of memory (%zu bytes)", fn, what,
                            bytes);
        kb->cap = bytes;
    }
    *out = kb->p;
    return MHA_OK;
}

static mha_status buf_f(mha_ctx *ctx, const char *fn, const char *what, mha__buf *kb,
                        float **out, int64_t a, int64_t b) {
    void *p;
    mha_status st = buf_get(ctx, fn, what, kb, &p, a, b, sizeof(float));
    *out = p;
    return st;
}

static void buf_free(mha__buf *b) {
    mha__free(b->p);
    b->p = NULL;
    b->cap = 0;
}

/* A [B, R, X] view (or [R, X] when ndim == 2) as B*R rows of X floats: the row stride, or -1
 * when the strides do not allow it (then the caller goes through a contiguous copy). Rows
 * must not overlap (the view is written). */
static int64_t rows_ld(const mha_tensor *t) {
    int64_t X = t->shape[t->ndim - 1], ld;
    if (t->ndim == 2) {
        ld = t->shape[0] > 1 ? t->stride[0] : X;
    } else {
        int64_t B = t->shape[0], R = t->shape[1];
        if (B <= 1 && R <= 1) ld = X;
        else if (B <= 1) ld = t->stride[1];
        else if (R == 1) ld = t->stride[0];
        else if (t->stride[0] == R * t->stride[1]) ld = t->stride[1];
        else return -1;
    }
    return ld >= X ? ld : -1;
}

/* Copies a [B, R, X] / [R, X] view into contiguous [B*R, X] memory, or back. */
static void copy_view(const mha_tensor *t, float *buf, int to_view) {
    int batched = t->ndim == 3;
    int64_t B = batched ? t->shape[0] : 1, R = t->shape[batched], X = t->shape[batched + 1];
    int64_t sb = batched ? t->stride[0] : 0, sr = t->stride[batched];
    if (X == 0) return;
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < R; r++) {
            float *v = t->data + b * sb + r * sr, *c = buf + (b * R + r) * X;
            if (to_view) memcpy(v, c, sizeof(float) * (size_t)X);
            else memcpy(c, v, sizeof(float) * (size_t)X);
        }
}

/* g[j] = sum_r A[r, j] over rows of A [rows, n] (row stride lda), summed in double in row
 * order: deterministic, independent of threads. acc: n doubles of workspace. */
static void col_sums(float *g, const float *A, int64_t lda, int64_t rows, int64_t n,
                     double *acc) {
    for (int64_t j = 0; j < n; j++) acc[j] = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) acc[j] += A[r * lda + j];
    for (int64_t j = 0; j < n; j++) g[j] = (float)acc[j];
}

/* A [B, H, R, D] view of head-interleaved rows: element (b, h, r, d) at
 * base[(b * R + r) * ld + h * D + d]. */
static mha_tensor heads_view(float *base, int64_t B, int64_t H, int64_t R, int64_t D,
                             int64_t ld) {
    int64_t shape[4] = {B, H, R, D}, stride[4] = {R * ld, D, ld, 1};
    return mha_tensor_strided(base, 4, shape, stride);
}

/* ---------------------------------------------------------------------------------------------
 * Creation, initialization, parameters
 * ------------------------------------------------------------------------------------------- */

static mha_status check_config(mha_ctx *ctx, const char *fn, const mha_config *cfg) {
    if (!cfg) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: cfg: got NULL, expected a config", fn);
    if (cfg->embed_dim <= 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: cfg->embed_dim: got %lld, expected > 0", fn,
                        (long long)cfg->embed_dim);
    if (cfg->num_heads <= 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: cfg->num_heads: got %lld, expected > 0", fn,
                        (long long)cfg->num_heads);
    if (cfg->embed_dim % cfg->num_heads != 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: cfg->embed_dim: got %lld, expected a multiple of num_heads = %lld "
                        "(embed_dim must be divisible by num_heads)", fn,
                        (long long)cfg->embed_dim, (long long)cfg->num_heads);
    if (cfg->kdim < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: cfg->kdim: got %lld, expected >= 0 "
                        "(0: embed_dim)", fn, (long long)cfg->kdim);
    if (cfg->vdim < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: cfg->vdim: got %lld, expected >= 0 "
                        "(0: embed_dim)", fn, (long long)cfg->vdim);
    if (!(cfg->dropout >= 0 && cfg->dropout < 1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: cfg->dropout: got %g, expected a value in "
                        "[0, 1)", fn, (double)cfg->dropout);
    return MHA_OK;
}

mha__param *mha__module_find_param(const mha_module *m, const char *name) {
    if (!m || !name) return NULL;
    for (int i = 0; i < m->nparams; i++)
        if (strcmp(m->p[i].name, name) == 0) return (mha__param *)&m->p[i];
    return NULL;
}

static void add_param(mha_module *m, const char *name, int64_t rows, int64_t cols) {
    mha__param *p = &m->p[m->nparams++];
    p->name = name;
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols;
    p->numel = cols ? rows * cols : rows;
}

/* Fills w[n] with values uniform in [-bound, bound), reproducible from (seed, stream): element
 * i is word i % 4 of Philox4x32-10(key = seed, counter = (i / 4, (i / 4) >> 32, stream,
 * "INIT")), its top 24 bits as u in [0, 1), w = (2u - 1) * bound. */
static void init_uniform(float *w, int64_t n, uint64_t seed, uint32_t stream, double bound) {
    for (int64_t g = 0; g * 4 < n; g++) {
        uint32_t r[4];
        mha__philox4x32(seed, (uint32_t)g, (uint32_t)((uint64_t)g >> 32), stream, 0x494E4954u, r);
        for (int t = 0; t < 4 && g * 4 + t < n; t++) {
            double u = (double)(r[t] >> 8) * (1.0 / 16777216.0);
            w[g * 4 + t] = (float)((2.0 * u - 1.0) * bound);
        }
    }
}

mha_status mha_module_create(mha_ctx *ctx, const mha_config *cfg, mha_module **out) {
    mha__clear(ctx);
    mha_status st;
    if (!out) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer",
                              FN_CREATE);
    *out = NULL;
    if ((st = check_config(ctx, FN_CREATE, cfg))) return st;
    {
        /* Every parameter's element count must fit (3E x E, E x kdim, E x vdim). */
        int64_t E = cfg->embed_dim, kd = cfg->kdim ? cfg->kdim : E, vd = cfg->vdim ? cfg->vdim : E;
        size_t n;
        int64_t mx = kd > vd ? kd : vd;
        if (E > (int64_t)(SIZE_MAX / sizeof(float)) / 3 || !mha__mul_size((size_t)E, 3, &n) ||
            !mha__mul_size(n, (size_t)(mx > E ? mx : E), &n) ||
            !mha__mul_size(n, sizeof(float), &n) || n > (size_t)INT64_MAX)
            return mha__err(ctx, MHA_ERR_NOMEM, "%s: parameter size overflows (embed_dim = %lld, "
                            "kdim = %lld, vdim = %lld)", FN_CREATE, (long long)E, (long long)kd,
                            (long long)vd);
    }
    mha_module *m = mha__calloc(1, sizeof *m);
    if (!m) return mha__err(ctx, MHA_ERR_NOMEM, "%s: module: out of memory", FN_CREATE);
    m->cfg = *cfg;
    int64_t E = cfg->embed_dim;
    m->cfg.kdim = cfg->kdim ? cfg->kdim : E;
    m->cfg.vdim = cfg->vdim ? cfg->vdim : E;
    m->cfg.bias = cfg->bias != 0;
    int64_t kd = m->cfg.kdim, vd = m->cfg.vdim;
    m->packed = kd == E && vd == E;
    /* PyTorch's named_parameters() order. */
    if (m->packed) {
        add_param(m, "in_proj_weight", 3 * E, E);
    } else {
        add_param(m, "q_proj_weight", E, E);
        add_param(m, "k_proj_weight", E, kd);
        add_param(m, "v_proj_weight", E, vd);
    }
    if (m->cfg.bias) add_param(m, "in_proj_bias", 3 * E, 0);
    add_param(m, "out_proj.weight", E, E);
    if (m->cfg.bias) add_param(m, "out_proj.bias", E, 0);
    for (int i = 0; i < m->nparams; i++) {
        mha__param *p = &m->p[i];
        void *v, *g;
        int64_t rows = p->shape[0], cols = p->ndim == 2 ? p->shape[1] : 1;
        if ((st = alloc_n(ctx, FN_CREATE, p->name, &v, rows, cols, sizeof(float))) ||
            (st = alloc_n(ctx, FN_CREATE, p->name, &g, rows, cols, sizeof(float)))) {
            if (v) mha__free(v);
            mha_module_free(m);
            return st;
        }
        p->value = v;
        p->grad = g;
        memset(v, 0, sizeof(float) * (size_t)p->numel);
        memset(g, 0, sizeof(float) * (size_t)p->numel);
    }
    int k = 0;
    if (m->packed) {
        m->wq = m->p[0].value, m->gwq = m->p[0].grad;
        m->wk = m->wq + E * E, m->gwk = m->gwq + E * E;
        m->wv = m->wq + 2 * E * E, m->gwv = m->gwq + 2 * E * E;
        k = 1;
    } else {
        m->wq = m->p[0].value, m->gwq = m->p[0].grad;
        m->wk = m->p[1].value, m->gwk = m->p[1].grad;
        m->wv = m->p[2].value, m->gwv = m->p[2].grad;
        k = 3;
    }
    if (m->cfg.bias) m->bin = m->p[k].value, m->gbin = m->p[k].grad, k++;
    m->wo = m->p[k].value, m->gwo = m->p[k].grad, k++;
    if (m->cfg.bias) m->bo = m->p[k].value, m->gbo = m->p[k].grad;

    /* _reset_parameters: xavier_uniform_ (gain 1, bound sqrt(6 / (fan_in + fan_out))) on the
     * whole in_proj_weight [3E, E], or on each of q/k/v_proj_weight; out_proj.weight keeps
     * Linear's kaiming_uniform_(a = sqrt(5)): bound = 1 / sqrt(fan_in = E); biases zero. */
    uint64_t seed = cfg->seed;
    if (m->packed) {
        init_uniform(m->wq, 3 * E * E, seed, 1, sqrt(6.0 / (double)(E + 3 * E)));
    } else {
        init_uniform(m->wq, E * E, seed, 2, sqrt(6.0 / (double)(E + E)));
        init_uniform(m->wk, E * kd, seed, 3, sqrt(6.0 / (double)(kd + E)));
        init_uniform(m->wv, E * vd, seed, 4, sqrt(6.0 / (double)(vd + E)));
    }
    init_uniform(m->wo, E * E, seed, 5, 1.0 / sqrt((double)E));
    *out = m;
    return MHA_OK;
}

/* Frees the forward's kept buffers (m->saved must be NULL first). */
static void saved_release(mha__saved *s) {
    mha__buf *b[] = {&s->bx, &s->bxk, &s->bxv, &s->bqkv, &s->battn, &s->blse, &s->bpad,
                     &s->babool, &s->bklen, &s->bafloat};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) buf_free(b[i]);
}

/* Frees the backward's kept temporaries and the packing workspace. */
static void bwd_release(mha_module *m) {
    mha__buf *b[] = {&m->bdy, &m->bda, &m->bdqkv, &m->bacc, &m->bgw, &m->btmp};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) buf_free(b[i]);
    mha__gemm_ws_free(&m->gws);
}

void mha_module_free(mha_module *m) {
    if (!m) return;
    for (int i = 0; i < m->nparams; i++) {
        mha__free(m->p[i].value);
        mha__free(m->p[i].grad);
    }
    m->saved = NULL;
    saved_release(&m->st);
    bwd_release(m);
    mha__free(m);
}

const mha_config *mha_module_config(const mha_module *m) { return m ? &m->cfg : NULL; }

int mha_module_param_count(const mha_module *m) { return m ? m->nparams : 0; }

const char *mha_module_param_name(const mha_module *m, int i) {
    if (!m || i < 0 || i >= m->nparams) return NULL;
    return m->p[i].name;
}

mha_status mha_module_param(mha_ctx *ctx, mha_module *m, const char *name, mha_tensor *value,
                            mha_tensor *grad) {
    mha__clear(ctx);
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "mha_module_param: m: got NULL, expected a "
                            "module");
    if (!name) return mha__err(ctx, MHA_ERR_INVALID_ARG, "mha_module_param: name: got NULL, "
                               "expected a parameter name");
    mha__param *p = mha__module_find_param(m, name);
    if (!p) {
        char names[256] = "";
        for (int i = 0; i < m->nparams; i++) {
            size_t n = strlen(names);
            snprintf(names + n, sizeof names - n, "%s%s", i ? ", " : "", m->p[i].name);
        }
        return mha__err(ctx, MHA_ERR_NOT_FOUND, "mha_module_param: name: got \"%s\", expected one "
                        "of %s", name, names);
    }
    if (value) *value = mha_tensor_make(p->value, p->ndim, p->shape);
    if (grad) *grad = mha_tensor_make(p->grad, p->ndim, p->shape);
    return MHA_OK;
}

void mha_module_zero_grad(mha_module *m) {
    if (!m) return;
    for (int i = 0; i < m->nparams; i++)
        memset(m->p[i].grad, 0, sizeof(float) * (size_t)m->p[i].numel);
}

/* ---------------------------------------------------------------------------------------------
 * Forward
 * ------------------------------------------------------------------------------------------- */

/* Copies the caller's masks into s's buffers (the backward must see the same ones); without
 * save, s->mask just points at the caller's. */
static mha_status save_mask(mha_ctx *ctx, mha__saved *s, const mha_mask *mk, int64_t H,
                            int save) {
    mha_status st;
    s->mask = mk ? *mk : mha_mask_default();
    if (!mk || !save) return MHA_OK;
    int64_t B = s->B, L = s->L, S = s->S, nm = (mk->attn_batched ? B * H : 1);
    void *p;
    if (mk->key_padding) {
        if ((st = buf_get(ctx, FN_FWD, "mask->key_padding copy", &s->bpad, &p, B, S, 1)))
            return st;
        memcpy(p, mk->key_padding, (size_t)(B * S));
        s->mask.key_padding = p;
    }
    if (mk->key_lengths) {
        if ((st = buf_get(ctx, FN_FWD, "mask->key_lengths copy", &s->bklen, &p, B, 1,
                          sizeof(int32_t))))
            return st;
        memcpy(p, mk->key_lengths, sizeof(int32_t) * (size_t)B);
        s->mask.key_lengths = p;
    }
    size_t n;
    if ((mk->attn_bool || mk->attn_float) &&
        (!mha__mul_size((size_t)nm, (size_t)L, &n) || !mha__mul_size(n, (size_t)S, &n)))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: attn mask size overflows", FN_FWD);
    if (mk->attn_bool) {
        if ((st = buf_get(ctx, FN_FWD, "mask->attn_bool copy", &s->babool, &p, nm * L, S, 1)))
            return st;
        memcpy(p, mk->attn_bool, n);
        s->mask.attn_bool = p;
    }
    if (mk->attn_float) {
        if ((st = buf_get(ctx, FN_FWD, "mask->attn_float copy", &s->bafloat, &p, nm * L, S,
                          sizeof(float))))
            return st;
        memcpy(p, mk->attn_float, sizeof(float) * n);
        s->mask.attn_float = p;
    }
    return MHA_OK;
}

/* The rows of the [B, R, X] input t as s's x (or xk, xv): the caller's own memory when
 * nothing is saved and its strides allow (*ld its row stride), else a copy into kb. */
static mha_status input_rows(mha_ctx *ctx, const char *what, const mha_tensor *t, int save,
                             mha__buf *kb, int64_t rows, int64_t X, const float **x,
                             int64_t *ld) {
    int64_t tld = rows_ld(t);
    if (!save && tld >= 0) {
        *x = t->data, *ld = tld;
        return MHA_OK;
    }
    float *c;
    mha_status st = buf_f(ctx, FN_FWD, what, kb, &c, rows, X);
    if (st) return st;
    copy_view(t, c, 0);
    *x = c, *ld = X;
    return MHA_OK;
}

/* The expected shape of a [B, R, X] tensor, or [R, X] when unbatched. */
static mha_status check_bx(mha_ctx *ctx, const char *fn, const char *name, const mha_tensor *t,
                           int unbatched, int64_t B, int64_t R, int64_t X, const char *why) {
    int64_t w[3] = {B, R, X};
    return mha__check_tensor(ctx, fn, name, t, unbatched ? 2 : 3, w + unbatched, why);
}

mha_status mha_module_forward(mha_ctx *ctx, mha_module *m, const mha_forward_opts *opts,
                              const mha_tensor *query, const mha_tensor *key,
                              const mha_tensor *value, const mha_mask *mask, mha_tensor *out,
                              mha_tensor *weights) {
    mha__clear(ctx);
    mha_status st;
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_FWD);
    mha_forward_opts od = mha_forward_opts_default();
    if (!opts) opts = &od;
    if (!isfinite(opts->scale))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: opts->scale: got %g, expected a finite "
                        "value (0: 1/sqrt(E/H))", FN_FWD, (double)opts->scale);
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, D = E / H;
    const int64_t kd = m->cfg.kdim, vd = m->cfg.vdim;

    /* Shapes. */
    if (!query) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: query: got NULL, expected a "
                                "[B, L, E] tensor", FN_FWD);
    if (query->ndim != 2 && query->ndim != 3)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: query.ndim: got %d, expected 3 ([B, L, E]) or 2 "
                        "([L, E], unbatched)", FN_FWD, query->ndim);
    const int unb = query->ndim == 2;
    const int64_t B = unb ? 1 : query->shape[0], L = query->shape[unb ? 0 : 1];
    if ((st = check_bx(ctx, FN_FWD, "query", query, unb, -1, -1, E, "embed_dim"))) return st;
    const int self = !key && !value;
    if (!key != !value)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got NULL while %s is given, expected "
                        "both or neither (NULL, NULL: self-attention)", FN_FWD,
                        key ? "value" : "key", key ? "key" : "value");
    if (self && !m->packed)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: key: got NULL (self-attention), expected a "
                        "tensor (kdim = %lld, vdim = %lld differ from embed_dim = %lld)", FN_FWD,
                        (long long)kd, (long long)vd, (long long)E);
    int64_t S = L;
    if (!self) {
        if (key->ndim != query->ndim)
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: key.ndim: got %d, expected %d (as query)",
                            FN_FWD, key->ndim, query->ndim);
        if ((st = check_bx(ctx, FN_FWD, "key", key, unb, B, -1, kd, "[B, S, kdim]"))) return st;
        S = key->shape[unb ? 0 : 1];
        if (value->ndim != query->ndim)
            return mha__err(ctx, MHA_ERR_SHAPE, "%s: value.ndim: got %d, expected %d (as query)",
                            FN_FWD, value->ndim, query->ndim);
        if ((st = check_bx(ctx, FN_FWD, "value", value, unb, B, S, vd, "[B, S, vdim]")))
            return st;
    }
    if (!out) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a [B, L, E] "
                              "tensor", FN_FWD);
    if ((st = check_bx(ctx, FN_FWD, "out", out, unb, B, L, E, "as query"))) return st;
    if (weights) {
        if (opts->average_weights) {
            if ((st = check_bx(ctx, FN_FWD, "weights", weights, unb, B, L, S,
                               "[B, L, S], averaged over heads")))
                return st;
        } else {
            int64_t w[4] = {B, H, L, S};
            if ((st = mha__check_tensor(ctx, FN_FWD, "weights", weights, unb ? 3 : 4, w + unb,
                                        "[B, H, L, S], per head")))
                return st;
        }
    }
    if ((st = mha__attn_check_mask(ctx, FN_FWD, mask, B, S))) return st;

    /* Everything the forward and backward need, in the module's kept buffers. From here on
     * they are overwritten: no saved forward until this one completes. */
    const int save = opts->save_for_backward != 0;
    mha__saved *s = &m->st;
    m->saved = NULL;
    s->B = B, s->L = L, s->S = S, s->unbatched = unb, s->self_attn = self;
    float *wtmp = NULL, *ytmp = NULL;
    const int64_t BL = B * L, BS = B * S;
    int64_t ldy = rows_ld(out);
    if ((st = input_rows(ctx, "query copy", query, save, &s->bx, BL, E, &s->x, &s->ldx)))
        goto fail;
    if (self) {
        if ((st = buf_f(ctx, FN_FWD, "qkv", &s->bqkv, &s->qkv, BL, 3 * E))) goto fail;
        s->q = s->qkv, s->k = s->qkv + E, s->v = s->qkv + 2 * E;
        s->ldq = s->ldk = s->ldv = 3 * E;
        s->xk = s->xv = NULL;
    } else {
        size_t rows;
        if (!mha__add_size((size_t)BL, (size_t)BS, &rows) ||
            !mha__add_size(rows, (size_t)BS, &rows) || rows > INT64_MAX) {
            st = mha__err(ctx, MHA_ERR_NOMEM, "%s: q, k, v: size overflows", FN_FWD);
            goto fail;
        }
        if ((st = input_rows(ctx, "key copy", key, save, &s->bxk, BS, kd, &s->xk, &s->ldxk)) ||
            (st = input_rows(ctx, "value copy", value, save, &s->bxv, BS, vd, &s->xv,
                             &s->ldxv)) ||
            (st = buf_f(ctx, FN_FWD, "q, k, v", &s->bqkv, &s->qkv, (int64_t)rows, E)))
            goto fail;
        s->q = s->qkv, s->k = s->q + BL * E, s->v = s->k + BS * E;
        s->ldq = s->ldk = s->ldv = E;
    }
    if ((st = buf_f(ctx, FN_FWD, "attention output", &s->battn, &s->attn, BL, E)) ||
        (st = buf_f(ctx, FN_FWD, "lse", &s->blse, &s->lse, B * H, L)))
        goto fail;
    if (weights && opts->average_weights &&
        (st = alloc_f(ctx, FN_FWD, "per-head weights", &wtmp, B * H * L, S)))
        goto fail;
    if (ldy < 0 && (st = alloc_f(ctx, FN_FWD, "output", &ytmp, BL, E))) goto fail;
    if ((st = save_mask(ctx, s, mask, H, save))) goto fail;

    /* Input projections: q = query Wq^T + bq, ... (the bias added by the product). */
    if (self) {
        if ((st = mha__gemm_ex(ctx, &m->gws, 0, 1, BL, 3 * E, E, 1.0f, s->x, s->ldx, m->wq, E,
                               0.0f, m->bin, s->qkv, 3 * E)))
            goto fail;
    } else {
        const float *bq = m->bin, *bk = bq ? bq + E : NULL, *bv = bq ? bq + 2 * E : NULL;
        if ((st = mha__gemm_ex(ctx, &m->gws, 0, 1, BL, E, E, 1.0f, s->x, s->ldx, m->wq, E, 0.0f,
                               bq, s->q, E)) ||
            (st = mha__gemm_ex(ctx, &m->gws, 0, 1, BS, E, kd, 1.0f, s->xk, s->ldxk, m->wk, kd,
                               0.0f, bk, s->k, E)) ||
            (st = mha__gemm_ex(ctx, &m->gws, 0, 1, BS, E, vd, 1.0f, s->xv, s->ldxv, m->wv, vd,
                               0.0f, bv, s->v, E)))
            goto fail;
    }

    /* The core on [B, H, *, D] views: no copies. */
    s->ap = mha_attn_params_default();
    s->ap.scale = opts->scale != 0 ? opts->scale : (float)(1.0 / sqrt((double)D));
    s->ap.dropout_p = opts->training && m->cfg.dropout > 0 ? m->cfg.dropout : 0.0f;
    s->ap.seed = m->cfg.seed;
    s->ap.offset = m->dropout_offset;
    mha_tensor qv = heads_view(s->q, B, H, L, D, s->ldq);
    mha_tensor kv = heads_view(s->k, B, H, S, D, s->ldk);
    mha_tensor vv = heads_view(s->v, B, H, S, D, s->ldv);
    mha_tensor av = heads_view(s->attn, B, H, L, D, E);
    int64_t lshape[3] = {B, H, L};
    mha_tensor lv = mha_tensor_make(s->lse, 3, lshape);
    mha_tensor wv, *wp = NULL;
    if (weights) {
        if (opts->average_weights) {
            int64_t ws[4] = {B, H, L, S};
            wv = mha_tensor_make(wtmp, 4, ws);
        } else if (unb) {
            int64_t ws[4] = {1, H, L, S};
            int64_t wst[4] = {H * weights->stride[0], weights->stride[0], weights->stride[1],
                              weights->stride[2]};
            wv = mha_tensor_strided(weights->data, 4, ws, wst);
        } else {
            wv = *weights;
        }
        wp = &wv;
    }
    if ((st = mha_attn_forward(ctx, &s->ap, &qv, &kv, &vv, &s->mask, &av, &lv, wp))) goto fail;

    /* y = a Wo^T + bo. */
    float *y = ldy >= 0 ? out->data : ytmp;
    if (ldy < 0) ldy = E;
    if ((st = mha__gemm_ex(ctx, &m->gws, 0, 1, BL, E, E, 1.0f, s->attn, E, m->wo, E, 0.0f, m->bo,
                           y, ldy)))
        goto fail;
    if (ytmp) copy_view(out, ytmp, 1);

    /* Weights averaged over heads (mean over dim 1, as PyTorch's average_attn_weights). */
    if (weights && opts->average_weights) {
        int64_t sb = unb ? 0 : weights->stride[0], si = weights->stride[unb ? 0 : 1];
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < L; i++) {
                float *dst = weights->data + b * sb + i * si;
                for (int64_t j = 0; j < S; j++) {
                    float acc = 0;
                    for (int64_t h = 0; h < H; h++) acc += wtmp[((b * H + h) * L + i) * S + j];
                    dst[j] = acc / (float)H;
                }
            }
    }

    mha__free(wtmp);
    mha__free(ytmp);
    if (s->ap.dropout_p > 0) m->dropout_offset++;
    /* The backward differentiates the most recent forward: without save, there is none. */
    if (save) m->saved = s;
    return MHA_OK;
fail:
    mha__free(wtmp);
    mha__free(ytmp);
    if (st == MHA_ERR_NOMEM) { /* give the memory back; the next call starts afresh */
        saved_release(s);
        bwd_release(m);
    }
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * Backward
 * ------------------------------------------------------------------------------------------- */

/* d = dY W for dY [rows, E] (row stride ldd) and W [E, X]: into the view t (overwritten),
 * directly when its strides allow, else through tmp. */
static mha_status input_grad(mha_ctx *ctx, mha__gemm_ws *ws, mha_tensor *t, const float *dy,
                             int64_t ldd, int64_t rows, int64_t E, int64_t X, const float *W,
                             float *tmp) {
    int64_t ld = rows_ld(t);
    float *dst = ld >= 0 ? t->data : tmp;
    mha_status st = mha__gemm_ex(ctx, ws, 0, 0, rows, X, E, 1.0f, dy, ldd, W, X, 0.0f, NULL, dst,
                                 ld >= 0 ? ld : X);
    if (st) return st;
    if (ld < 0) copy_view(t, tmp, 1);
    return MHA_OK;
}

/* Total number of parameter elements. */
static int64_t param_total(const mha_module *m) {
    int64_t n = 0;
    for (int i = 0; i < m->nparams; i++) n += m->p[i].numel;
    return n;
}

/* The place in gw (all gradients back to back, in parameter order) that mirrors g, a pointer
 * into one of the module's gradient buffers. */
static float *mirror(const mha_module *m, float *gw, const float *g) {
    int64_t o = 0;
    for (int i = 0; i < m->nparams; o += m->p[i].numel, i++)
        if (g >= m->p[i].grad && g < m->p[i].grad + m->p[i].numel) return gw + o + (g - m->p[i].grad);
    return NULL; /* not reached: g always points into a gradient */
}

mha_status mha_module_backward(mha_ctx *ctx, mha_module *m, const mha_tensor *dout,
                               mha_tensor *dquery, mha_tensor *dkey, mha_tensor *dvalue) {
    mha__clear(ctx);
    mha_status st;
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_BWD);
    const mha__saved *s = m->saved;
    if (!s)
        return mha__err(ctx, MHA_ERR_STATE, "%s: no saved forward (call mha_module_forward with "
                        "opts->save_for_backward = 1 first)", FN_BWD);
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, D = E / H;
    const int64_t kd = m->cfg.kdim, vd = m->cfg.vdim;
    const int64_t B = s->B, L = s->L, S = s->S, BL = B * L, BS = B * S;
    const int unb = s->unbatched;
    if (!dout) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: dout: got NULL, expected a "
                               "[B, L, E] tensor", FN_BWD);
    {
        int64_t w[3] = {B, L, E};
        int nd = unb ? 2 : 3;
        if (dout->ndim != nd)
            return mha__err(ctx, MHA_ERR_STATE, "%s: dout.ndim: got %d, expected %d (the saved "
                            "forward's out)", FN_BWD, dout->ndim, nd);
        for (int d = 0; d < nd; d++)
            if (dout->shape[d] != w[d + unb])
                return mha__err(ctx, MHA_ERR_STATE, "%s: dout.shape[%d]: got %lld, expected %lld "
                                "(the saved forward's out)", FN_BWD, d,
                                (long long)dout->shape[d], (long long)w[d + unb]);
        if ((st = check_bx(ctx, FN_BWD, "dout", dout, unb, B, L, E, "as out"))) return st;
    }
    if (s->self_attn && (dkey || dvalue))
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: %s: got a tensor, expected NULL "
                        "(self-attention: dquery receives the whole input gradient)", FN_BWD,
                        dkey ? "dkey" : "dvalue");
    if (dquery && (st = check_bx(ctx, FN_BWD, "dquery", dquery, unb, B, L, E, "as query")))
        return st;
    if (dkey && (st = check_bx(ctx, FN_BWD, "dkey", dkey, unb, B, S, kd, "as key"))) return st;
    if (dvalue && (st = check_bx(ctx, FN_BWD, "dvalue", dvalue, unb, B, S, vd, "as value")))
        return st;

    /* Workspace (the module's kept buffers): dy (a copy only when dout's strides need it),
     * da, d(q|k|v), parameter gradients, column sums, a staging buffer for strided input
     * gradients. */
    float *dyc = NULL, *da = NULL, *dqkv = NULL, *tmp = NULL, *gw = NULL;
    double *acc = NULL;
    int64_t tmp_n = 0;
    if (dquery && rows_ld(dquery) < 0) tmp_n = BL * E;
    if (dkey && rows_ld(dkey) < 0 && BS * kd > tmp_n) tmp_n = BS * kd;
    if (dvalue && rows_ld(dvalue) < 0 && BS * vd > tmp_n) tmp_n = BS * vd;
    int64_t ldy = rows_ld(dout);
    void *accp = NULL;
    size_t grows;
    if (!mha__add_size((size_t)BL, (size_t)BS, &grows) ||
        !mha__add_size(grows, (size_t)BS, &grows) || grows > INT64_MAX)
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: d q, k, v: size overflows", FN_BWD);
    if ((ldy < 0 && (st = buf_f(ctx, FN_BWD, "dout copy", &m->bdy, &dyc, BL, E))) ||
        (st = buf_f(ctx, FN_BWD, "d attention", &m->bda, &da, BL, E)) ||
        (st = buf_f(ctx, FN_BWD, "d q, k, v", &m->bdqkv, &dqkv, (int64_t)grows, E)) ||
        (st = buf_get(ctx, FN_BWD, "column sums", &m->bacc, &accp, 3, E, sizeof(double))) ||
        (st = buf_f(ctx, FN_BWD, "parameter gradients", &m->bgw, &gw, param_total(m), 1)) ||
        (tmp_n && (st = buf_f(ctx, FN_BWD, "input gradient", &m->btmp, &tmp, tmp_n, 1))))
        goto done;
    acc = accp;
    const float *dy = dout->data;
    if (ldy < 0) {
        copy_view(dout, dyc, 0);
        dy = dyc, ldy = E;
    }
    /* Parameter gradients go to gw (a mirror of the parameters) and are added at the end, so
     * a failure leaves the module's gradients as they were; grad = grad + new, as autograd. */
    float *gwq = mirror(m, gw, m->gwq), *gwk = mirror(m, gw, m->gwk);
    float *gwv = mirror(m, gw, m->gwv), *gwo = mirror(m, gw, m->gwo);
    float *gbin = m->gbin ? mirror(m, gw, m->gbin) : NULL;
    float *gbo = m->gbo ? mirror(m, gw, m->gbo) : NULL;

    /* da = dy Wo   [B*L, E] = [B, L, H, D];  dWo = dy^T a,  dbo = sum_rows dy: every use of
     * dy first, as dout may be the memory of an input gradient written below. */
    if ((st = mha__gemm_ex(ctx, &m->gws, 0, 0, BL, E, E, 1.0f, dy, ldy, m->wo, E, 0.0f, NULL, da,
                           E)) ||
        (st = mha__gemm_ex(ctx, &m->gws, 1, 0, E, E, BL, 1.0f, dy, ldy, s->attn, E, 0.0f, NULL,
                           gwo, E)))
        goto done;
    if (gbo) col_sums(gbo, dy, ldy, BL, E, acc);

    /* Core backward into packed (self) or separate (cross) d(q|k|v) buffers. */
    float *dq, *dk, *dv;
    int64_t ldg;
    if (s->self_attn) {
        dq = dqkv, dk = dqkv + E, dv = dqkv + 2 * E, ldg = 3 * E;
    } else {
        dq = dqkv, dk = dq + BL * E, dv = dk + BS * E, ldg = E;
    }
    {
        mha_tensor qv = heads_view(s->q, B, H, L, D, s->ldq);
        mha_tensor kv = heads_view(s->k, B, H, S, D, s->ldk);
        mha_tensor vv = heads_view(s->v, B, H, S, D, s->ldv);
        mha_tensor ov = heads_view(s->attn, B, H, L, D, E);
        mha_tensor dov = heads_view(da, B, H, L, D, E);
        mha_tensor dqv = heads_view(dq, B, H, L, D, ldg);
        mha_tensor dkv = heads_view(dk, B, H, S, D, ldg);
        mha_tensor dvv = heads_view(dv, B, H, S, D, ldg);
        int64_t lshape[3] = {B, H, L};
        mha_tensor lv = mha_tensor_make(s->lse, 3, lshape);
        if ((st = mha_attn_backward(ctx, &s->ap, &qv, &kv, &vv, &s->mask, &ov, &lv, &dov, &dqv,
                                    &dkv, &dvv)))
            goto done;
    }

    /* Input gradients (overwritten). */
    if (s->self_attn) {
        /* dquery = [dq dk dv] [Wq; Wk; Wv]: the three paths summed by one product. */
        if (dquery &&
            (st = input_grad(ctx, &m->gws, dquery, dqkv, 3 * E, BL, 3 * E, E, m->wq, tmp)))
            goto done;
    } else {
        if ((dquery && (st = input_grad(ctx, &m->gws, dquery, dq, E, BL, E, E, m->wq, tmp))) ||
            (dkey && (st = input_grad(ctx, &m->gws, dkey, dk, E, BS, E, kd, m->wk, tmp))) ||
            (dvalue && (st = input_grad(ctx, &m->gws, dvalue, dv, E, BS, E, vd, m->wv, tmp))))
            goto done;
    }

    /* dWq = dq^T query, dbq = sum_rows dq (and so on for k and v). */
    if (s->self_attn) {
        if ((st = mha__gemm_ex(ctx, &m->gws, 1, 0, 3 * E, E, BL, 1.0f, dqkv, 3 * E, s->x, s->ldx,
                               0.0f, NULL, gwq, E)))
            goto done;
        if (gbin) col_sums(gbin, dqkv, 3 * E, BL, 3 * E, acc);
    } else {
        if ((st = mha__gemm_ex(ctx, &m->gws, 1, 0, E, E, BL, 1.0f, dq, E, s->x, s->ldx, 0.0f,
                               NULL, gwq, E)) ||
            (st = mha__gemm_ex(ctx, &m->gws, 1, 0, E, kd, BS, 1.0f, dk, E, s->xk, s->ldxk, 0.0f,
                               NULL, gwk, kd)) ||
            (st = mha__gemm_ex(ctx, &m->gws, 1, 0, E, vd, BS, 1.0f, dv, E, s->xv, s->ldxv, 0.0f,
                               NULL, gwv, vd)))
            goto done;
        if (gbin) {
            col_sums(gbin, dq, E, BL, E, acc);
            col_sums(gbin + E, dk, E, BS, E, acc);
            col_sums(gbin + 2 * E, dv, E, BS, E, acc);
        }
    }
    const float *src = gw;
    for (int i = 0; i < m->nparams; src += m->p[i].numel, i++)
        for (int64_t e = 0; e < m->p[i].numel; e++) m->p[i].grad[e] += src[e];
    st = MHA_OK;
done:
    if (st == MHA_ERR_NOMEM) bwd_release(m); /* the saved forward stays: a retry can work */
    return st;
}
