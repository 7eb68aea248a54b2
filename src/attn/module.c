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
 * Every product goes through mha__gemm_dt (biases added inside the product, one packing
 * workspace kept by the module); everything else is O(rows * E) glue.
 * DTYPES: a module of cfg.dtype bf16 / f16 keeps its parameters, inputs, outputs and
 * activations (x, q, k, v, attn, and their gradients) in that dtype. Each product accumulates
 * in float32 (its bias added in float32) and is rounded into its destination once (mod_gemm:
 * through float32 staging rows); the core runs in the dtype (mha_attn_forward); parameter
 * gradients are computed in float32 (c->gw) and added to the stored gradients, each sum
 * rounded once. A float32 module runs exactly the float32 code (the same bits). Each workspace is
 * planned once (src/core/plan.h: fwd_plan, bwd_plan): its regions declared in one place, one
 * allocation, kept in the module and reused by the next call of the same sizes
 * (module_internal.h). */
#include "module_internal.h"
#include "attn/attn_common.h"
#include "attn/decode.h"
#include "attn/gemm.h"
#include "core/plan.h"
#include "kernels/cvt.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const FN_CREATE = "mha_module_create";
static const char *const FN_COPY = "mha_module_copy";
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
    if (a < 0 || b < 0 || !mha__mul_size((size_t)a, (size_t)b, &n) || !mha__mul_size(n, es, &bytes))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: %s: size overflows (%lld x %lld elements)", fn,
                        what, (long long)a, (long long)b);
    *out = mha__malloc(bytes);
    if (!*out)
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: %s: out of memory (%zu bytes)", fn, what, bytes);
    return MHA_OK;
}

static void buf_free(mha__buf *b) {
    mha__free(b->p);
    b->p = NULL;
    b->cap = 0;
}

/* Points views (the struct pl's regions were declared with) into the kept buffer kb: reused
 * when the plan fits it (see mha__buf in module_internal.h), else allocated anew. NOMEM with a
 * message naming the region whose size overflowed, or the bytes; kb then empty. */
static mha_status kept_point(mha_ctx *ctx, const char *fn, const mha__plan *pl, mha__buf *kb,
                             void *views) {
    size_t bytes;
    if (!mha__plan_bytes(pl, 1, &bytes) || !kb->p || bytes > kb->cap || bytes < kb->cap / 4) {
        buf_free(kb);
        mha_status st = mha__plan_alloc(pl, ctx, fn, 1, &kb->p);
        if (st) return st;
        kb->cap = pl->per_copy;
    }
    mha__plan_point(pl, kb->p, 0, views);
    return MHA_OK;
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

/* Copies a [B, R, X] / [R, X] view (any dtype) into contiguous [B*R, X] memory. */
static void copy_rows(const mha_tensor *t, void *buf) {
    const int batched = t->ndim == 3;
    const int64_t B = batched ? t->shape[0] : 1, R = t->shape[batched], X = t->shape[batched + 1];
    const int64_t sb = batched ? t->stride[0] : 0, sr = t->stride[batched];
    const size_t es = mha__tensor_elsize(t);
    if (X == 0) return;
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < R; r++)
            memcpy((char *)buf + (size_t)((b * R + r) * X) * es,
                   (const char *)t->ptr + (size_t)(b * sb + r * sr) * es, es * (size_t)X);
}

/* g[j] = sum_r A[r, j] over rows of A [rows, n] (dtype dt, row stride lda), summed in double
 * in row order: deterministic, independent of threads. acc: n doubles of workspace. */
static void col_sums(float *g, mha_dtype dt, const void *A, int64_t lda, int64_t rows, int64_t n,
                     double *acc) {
    for (int64_t j = 0; j < n; j++) acc[j] = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) acc[j] += mha__load_f32(dt, A, r * lda + j);
    for (int64_t j = 0; j < n; j++) g[j] = (float)acc[j];
}

/* The address of element i of an array of the module's dtype. */
static void *el(const mha_module *m, const void *p, int64_t i) {
    return (char *)p + i * (int64_t)m->es;
}

/* A [B, H, R, D] view (the module's dtype) of head-interleaved rows: element (b, h, r, d) at
 * base[(b * R + r) * ld + h * D + d]. */
static mha_tensor heads_view(const mha_module *m, void *base, int64_t B, int64_t H, int64_t R,
                             int64_t D, int64_t ld) {
    int64_t shape[4] = {B, H, R, D}, stride[4] = {R * ld, D, ld, 1};
    return mha_tensor_typed(base, m->cfg.dtype, 4, shape, stride);
}

/* A [rows, n] view (the module's dtype) of rows with stride ld. */
static mha_tensor rows_view(const mha_module *m, void *base, int64_t rows, int64_t n, int64_t ld) {
    int64_t shape[2] = {rows, n}, stride[2] = {ld, 1};
    return mha_tensor_typed(base, m->cfg.dtype, 2, shape, stride);
}

/* Whether the [B, R, X] input t is read in place (no copy): only when nothing is saved and its
 * strides allow rows. */
static int in_place(const mha_tensor *t, int save) { return !save && rows_ld(t) >= 0; }

/* The float32 staging a mod_gemm of [M, N] into dst needs, in floats: none for a float32
 * module writing rows it can address (dst NULL: the module's own rows), else M * N (plus N
 * for the bias converted to float32). */
static int64_t stage_n(const mha_module *m, const mha_tensor *dst, int64_t M, int64_t N) {
    if (m->cfg.dtype == MHA_DTYPE_F32) return !dst || rows_ld(dst) >= 0 ? 0 : M * N;
    return M * N + N;
}

/* dst [M, N] (a view of the module's dtype: an output of any strides, or activation rows) =
 * op(A) op(B) + bias, with A, B and bias (NULL: none) of the module's dtype, accumulated in
 * float32. A float32 module's product writes dst directly when its rows allow; otherwise, and
 * always for bf16 / f16, the product goes to the float32 staging f (stage_n floats: the bias
 * converted to float32, then [M, N]) and is rounded (copied) into dst once. */
static mha_status mod_gemm(mha_ctx *ctx, mha_module *m, int ta, int tb, int64_t M, int64_t N,
                           int64_t K, const void *A, int64_t lda, const void *B, int64_t ldb,
                           const void *bias, const mha_tensor *dst, float *f) {
    const mha_dtype dt = m->cfg.dtype;
    const int64_t ld = rows_ld(dst);
    if (dt == MHA_DTYPE_F32 && ld >= 0)
        return mha__gemm_ex(ctx, &m->gws, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, bias,
                            dst->data, ld);
    const float *b32 = bias;
    if (bias && dt != MHA_DTYPE_F32) {
        for (int64_t j = 0; j < N; j++) f[j] = mha__load_f32(dt, bias, j);
        b32 = f, f += N;
    }
    mha_status st =
        mha__gemm_dt(ctx, &m->gws, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, dt, 0.0f, b32, f, N);
    if (!st) mha__tensor_from_f32(mha__ctx_kernels(ctx), f, dst, mha_ctx_threads(ctx));
    return st;
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
                        "(embed_dim must be divisible by num_heads)",
                        fn, (long long)cfg->embed_dim, (long long)cfg->num_heads);
    if (cfg->kdim < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: cfg->kdim: got %lld, expected >= 0 (0: embed_dim)", fn,
                        (long long)cfg->kdim);
    if (cfg->vdim < 0)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: cfg->vdim: got %lld, expected >= 0 (0: embed_dim)", fn,
                        (long long)cfg->vdim);
    if (!(cfg->dropout >= 0 && cfg->dropout <= 1))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: cfg->dropout: got %g, expected a value in [0, 1]", fn,
                        (double)cfg->dropout);
    if (cfg->dtype != MHA_DTYPE_F32 && cfg->dtype != MHA_DTYPE_BF16 && cfg->dtype != MHA_DTYPE_F16)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: cfg->dtype: got %s, expected float32, bfloat16 or float16", fn,
                        mha_dtype_name(cfg->dtype));
    return MHA_OK;
}

mha__param *mha__module_find_param(const mha_module *m, const char *name) {
    if (!m || !name) return NULL;
    for (int i = 0; i < m->nparams; i++)
        if (strcmp(m->p[i].name, name) == 0) return (mha__param *)&m->p[i];
    return NULL;
}

mha_status mha__module_check_outputs(mha_ctx *ctx, const char *fn, const mha_module *m,
                                     const mha__attn_arg *outs, int nout, int grads) {
    for (int i = 0; i < m->nparams; i++) {
        const mha__param *p = &m->p[i];
        const mha_tensor mem[2] = {
            mha_tensor_typed(p->value, m->cfg.dtype, p->ndim, p->shape, NULL),
            mha_tensor_typed(p->grad, m->cfg.dtype, p->ndim, p->shape, NULL)};
        for (int o = 0; o < nout; o++)
            for (int g = 0; g < 1 + (grads != 0); g++)
                if (outs[o].t && mha__tensors_overlap(outs[o].t, &mem[g]))
                    return mha__err(ctx, MHA_ERR_INVALID_ARG,
                                    "%s: %s overlaps the module's %s%s (outputs must not share "
                                    "memory with the module's parameters%s)",
                                    fn, outs[o].name, g ? "gradient of " : "parameter ", p->name,
                                    grads ? " or their gradients" : "");
    }
    return MHA_OK;
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
static void init_uniform(mha_dtype dt, void *w, int64_t n, uint64_t seed, uint32_t stream,
                         double bound) {
    for (int64_t g = 0; g * 4 < n; g++) {
        uint32_t r[4];
        mha__philox4x32(seed, (uint32_t)g, (uint32_t)((uint64_t)g >> 32), stream, 0x494E4954u, r);
        for (int t = 0; t < 4 && g * 4 + t < n; t++) {
            double u = (double)(r[t] >> 8) * (1.0 / 16777216.0);
            mha__store_f32(dt, w, g * 4 + t, (float)((2.0 * u - 1.0) * bound));
        }
    }
}

/* Every parameter's size must fit (3E x E, E x kdim, E x vdim floats). */
static mha_status check_param_sizes(mha_ctx *ctx, const char *fn, const mha_config *cfg) {
    int64_t E = cfg->embed_dim, kd = cfg->kdim ? cfg->kdim : E, vd = cfg->vdim ? cfg->vdim : E;
    size_t n;
    int64_t mx = kd > vd ? kd : vd;
    if (E > (int64_t)(SIZE_MAX / sizeof(float)) / 3 || !mha__mul_size((size_t)E, 3, &n) ||
        !mha__mul_size(n, (size_t)(mx > E ? mx : E), &n) || !mha__mul_size(n, sizeof(float), &n) ||
        n > (size_t)INT64_MAX)
        return mha__err(ctx, MHA_ERR_NOMEM,
                        "%s: parameter size overflows (embed_dim = %lld, kdim = %lld, vdim = %lld)",
                        fn, (long long)E, (long long)kd, (long long)vd);
    return MHA_OK;
}

/* wq ... bo (and their gradients) into the parameters' buffers. */
static void point_params(mha_module *m) {
    const int64_t E = m->cfg.embed_dim;
    int k = 0;
    if (m->packed) {
        m->wq = m->p[0].value, m->gwq = m->p[0].grad;
        m->wk = el(m, m->wq, E * E), m->gwk = el(m, m->gwq, E * E);
        m->wv = el(m, m->wq, 2 * E * E), m->gwv = el(m, m->gwq, 2 * E * E);
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
}

/* Declares the parameters in PyTorch's named_parameters() order and allocates each one's value
 * and gradient buffer, zeroed. On NOMEM the caller frees m. */
static mha_status alloc_params(mha_ctx *ctx, const char *fn, mha_module *m) {
    const int64_t E = m->cfg.embed_dim, kd = m->cfg.kdim, vd = m->cfg.vdim;
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
        mha_status st;
        if ((st = alloc_n(ctx, fn, p->name, &v, rows, cols, m->es)) ||
            (st = alloc_n(ctx, fn, p->name, &g, rows, cols, m->es))) {
            if (v) mha__free(v);
            return st;
        }
        p->value = p->own_value = v;
        p->grad = p->own_grad = g;
        memset(v, 0, m->es * (size_t)p->numel);
        memset(g, 0, m->es * (size_t)p->numel);
    }
    point_params(m);
    return MHA_OK;
}

/* _reset_parameters: xavier_uniform_ (gain 1, bound sqrt(6 / (fan_in + fan_out))) on the whole
 * in_proj_weight [3E, E], or on each of q/k/v_proj_weight; out_proj.weight keeps Linear's
 * kaiming_uniform_(a = sqrt(5)): bound = 1 / sqrt(fan_in = E); biases zero. */
static void init_params(mha_module *m) {
    const int64_t E = m->cfg.embed_dim, kd = m->cfg.kdim, vd = m->cfg.vdim;
    const uint64_t seed = m->cfg.seed;
    const mha_dtype dt = m->cfg.dtype;
    if (m->packed) {
        init_uniform(dt, m->wq, 3 * E * E, seed, 1, sqrt(6.0 / (double)(E + 3 * E)));
    } else {
        init_uniform(dt, m->wq, E * E, seed, 2, sqrt(6.0 / (double)(E + E)));
        init_uniform(dt, m->wk, E * kd, seed, 3, sqrt(6.0 / (double)(kd + E)));
        init_uniform(dt, m->wv, E * vd, seed, 4, sqrt(6.0 / (double)(vd + E)));
    }
    init_uniform(dt, m->wo, E * E, seed, 5, 1.0 / sqrt((double)E));
}

/* A module of configuration cfg (validated here; fn names the call in messages), its
 * parameters initialized as PyTorch's _reset_parameters when init, else zero. */
static mha_status module_new(mha_ctx *ctx, const char *fn, const mha_config *cfg, int init,
                             mha_module **out) {
    mha_status st;
    if ((st = check_config(ctx, fn, cfg)) || (st = check_param_sizes(ctx, fn, cfg))) return st;
    mha_module *m = mha__calloc(1, sizeof *m);
    if (!m) return mha__err(ctx, MHA_ERR_NOMEM, "%s: module: out of memory", fn);
    m->cfg = *cfg;
    int64_t E = cfg->embed_dim;
    m->cfg.kdim = cfg->kdim ? cfg->kdim : E;
    m->cfg.vdim = cfg->vdim ? cfg->vdim : E;
    m->cfg.bias = cfg->bias != 0;
    m->packed = m->cfg.kdim == E && m->cfg.vdim == E;
    m->es = cfg->dtype == MHA_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
    if ((st = alloc_params(ctx, fn, m))) {
        mha_module_free(m);
        return st;
    }
    if (init) init_params(m);
    m->dropout_seed = cfg->seed;
    *out = m;
    return MHA_OK;
}

mha_status mha_module_create(mha_ctx *ctx, const mha_config *cfg, mha_module **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer",
                        FN_CREATE);
    *out = NULL;
    return module_new(ctx, FN_CREATE, cfg, 1, out);
}

mha_status mha_module_copy(mha_ctx *ctx, const mha_module *m, mha_dtype dtype, mha_module **out) {
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer", FN_COPY);
    *out = NULL;
    if (!m)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_COPY);
    if (dtype != MHA_DTYPE_F32 && dtype != MHA_DTYPE_BF16 && dtype != MHA_DTYPE_F16)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: dtype: got %s, expected float32, bfloat16 or float16", FN_COPY,
                        mha_dtype_name(dtype));
    mha_config cfg = m->cfg;
    cfg.dtype = dtype;
    mha_module *c = NULL;
    mha_status st = module_new(ctx, FN_COPY, &cfg, 0, &c);
    if (st) return st;
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    for (int i = 0; i < m->nparams; i++) { /* the same names, shapes and order */
        const mha__param *a = &m->p[i];
        mha__convert_elems(kern, m->cfg.dtype, a->value, dtype, c->p[i].value, a->numel);
        mha__convert_elems(kern, m->cfg.dtype, a->grad, dtype, c->p[i].grad, a->numel);
    }
    c->dropout_seed = m->dropout_seed, c->dropout_offset = m->dropout_offset;
    *out = c;
    return MHA_OK;
}

/* Frees the backward's kept workspace and the packing workspace. */
static void bwd_release(mha_module *m) {
    buf_free(&m->bws);
    mha__gemm_ws_free(&m->gws);
}

void mha_module_free(mha_module *m) {
    if (!m) return;
    for (int i = 0; i < m->nparams; i++) {
        mha__free(m->p[i].own_value);
        mha__free(m->p[i].own_grad);
    }
    m->saved = NULL;
    buf_free(&m->st.ws);
    buf_free(&m->fws);
    bwd_release(m);
    if (m->mpi_free) m->mpi_free(m->mpi_saved); /* an MPI forward's saved state (mha_mpi.h) */
    mha__free(m);
}

const mha_config *mha_module_config(const mha_module *m) { return m ? &m->cfg : NULL; }

int mha_module_param_count(const mha_module *m) { return m ? m->nparams : 0; }

const char *mha_module_param_name(const mha_module *m, int i) {
    if (!m || i < 0 || i >= m->nparams) return NULL;
    return m->p[i].name;
}

/* The parameter name of m for function fn, or an error naming the parameters there are. */
static mha_status lookup_param(mha_ctx *ctx, const char *fn, const mha_module *m, const char *name,
                               mha__param **out) {
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", fn);
    if (!name)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: name: got NULL, expected a parameter name",
                        fn);
    if ((*out = mha__module_find_param(m, name))) return MHA_OK;
    char names[256] = "";
    for (int i = 0; i < m->nparams; i++) {
        size_t n = strlen(names);
        snprintf(names + n, sizeof names - n, "%s%s", i ? ", " : "", m->p[i].name);
    }
    return mha__err(ctx, MHA_ERR_NOT_FOUND, "%s: name: got \"%s\", expected one of %s", fn, name,
                    names);
}

mha_status mha_module_param(mha_ctx *ctx, mha_module *m, const char *name, mha_tensor *value,
                            mha_tensor *grad) {
    mha__clear(ctx);
    mha__param *p;
    mha_status st = lookup_param(ctx, "mha_module_param", m, name, &p);
    if (st) return st;
    if (value) *value = mha_tensor_typed(p->value, m->cfg.dtype, p->ndim, p->shape, NULL);
    if (grad) *grad = mha_tensor_typed(p->grad, m->cfg.dtype, p->ndim, p->shape, NULL);
    return MHA_OK;
}

mha_status mha_module_param_bind(mha_ctx *ctx, mha_module *m, const char *name, void *value,
                                 void *grad) {
    mha__clear(ctx);
    mha__param *p;
    mha_status st = lookup_param(ctx, "mha_module_param_bind", m, name, &p);
    if (st) return st;
    if (value) p->value = value;
    if (grad) p->grad = grad;
    point_params(m);
    return MHA_OK;
}

mha_status mha_module_set_dropout_rng(mha_ctx *ctx, mha_module *m, uint64_t seed, uint64_t offset) {
    mha__clear(ctx);
    if (!m)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_module_set_dropout_rng: m: got NULL, expected a module");
    m->dropout_seed = seed;
    m->dropout_offset = offset;
    return MHA_OK;
}

void mha_module_zero_grad(mha_module *m) {
    if (!m) return;
    for (int i = 0; i < m->nparams; i++) memset(m->p[i].grad, 0, m->es * (size_t)m->p[i].numel);
}

/* ---------------------------------------------------------------------------------------------
 * Forward: validate (fwd_check_*), plan (fwd_plan), compute (fwd_inputs ... fwd_output)
 * ------------------------------------------------------------------------------------------- */

/* One forward call: its arguments, and the sizes validation derives from them. */
typedef struct {
    const mha_forward_opts *opts;
    const mha_tensor *query, *key, *value; /* key == value == NULL: self-attention */
    const mha_mask *mask;
    mha_tensor *out, *weights;
    int64_t B, L, S;
    int unb, self, save;
} fwd_call;

/* The forward's kept workspace (m->st.ws): the regions the backward reads. */
typedef struct {
    void *x, *xk, *xv;    /* copies of the query, key, value rows (in_place: 0 bytes) */
    void *q, *k, *v;      /* projections; self-attention: q holds [B*L, 3E], k and v nothing */
    void *attn;           /* the core's output [B*L, E] */
    float *lse;           /* [B*H, L] */
    uint8_t *pad, *abool; /* copies of the masks, with save_for_backward */
    int32_t *klen;
    float *afloat;
    float *slopes; /* a copy of the ALiBi slopes, with save_for_backward */
} fwd_views;

/* The forward's scratch (kept in m->fws): the products' float32 staging (mod_gemm). */
typedef struct {
    float *f;
} fwd_scratch;

/* The expected shape of a [B, R, X] tensor of the module's dtype, or [R, X] when unbatched. */
static mha_status check_bx(mha_ctx *ctx, const char *fn, const char *name, const mha_tensor *t,
                           const mha_module *m, int unbatched, int64_t B, int64_t R, int64_t X,
                           const char *why) {
    int64_t w[3] = {B, R, X};
    return mha__check_tensor_as(ctx, fn, name, t, m->cfg.dtype, unbatched ? 2 : 3, w + unbatched,
                                why);
}

/* opts, query, key, value; sets c's sizes. */
static mha_status fwd_check_inputs(mha_ctx *ctx, const mha_module *m, fwd_call *c) {
    const int64_t E = m->cfg.embed_dim, kd = m->cfg.kdim, vd = m->cfg.vdim;
    const mha_tensor *query = c->query, *key = c->key, *value = c->value;
    mha_status st;
    if (!isfinite(c->opts->scale))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: opts->scale: got %g, expected a finite value (0: 1/sqrt(E/H))", FN_FWD,
                        (double)c->opts->scale);
    if (!query)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: query: got NULL, expected a [B, L, E] tensor", FN_FWD);
    if (query->ndim != 2 && query->ndim != 3)
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: query.ndim: got %d, expected 3 ([B, L, E]) or 2 ([L, E], unbatched)",
                        FN_FWD, query->ndim);
    const int unb = c->unb = query->ndim == 2;
    c->B = unb ? 1 : query->shape[0], c->L = c->S = query->shape[unb ? 0 : 1];
    if ((st = check_bx(ctx, FN_FWD, "query", query, m, unb, -1, -1, E, "embed_dim"))) return st;
    c->self = !key && !value;
    if (!key != !value)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: %s: got NULL while %s is given, expected both or neither (NULL, NULL: "
                        "self-attention)",
                        FN_FWD, key ? "value" : "key", key ? "key" : "value");
    if (c->self && !m->packed)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: key: got NULL (self-attention), expected a tensor (kdim = %lld, vdim "
                        "= %lld differ from embed_dim = %lld)",
                        FN_FWD, (long long)kd, (long long)vd, (long long)E);
    if (c->self) return MHA_OK;
    if (key->ndim != query->ndim)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: key.ndim: got %d, expected %d (as query)", FN_FWD,
                        key->ndim, query->ndim);
    if ((st = check_bx(ctx, FN_FWD, "key", key, m, unb, c->B, -1, kd, "[B, S, kdim]"))) return st;
    c->S = key->shape[unb ? 0 : 1];
    if (value->ndim != query->ndim)
        return mha__err(ctx, MHA_ERR_SHAPE, "%s: value.ndim: got %d, expected %d (as query)",
                        FN_FWD, value->ndim, query->ndim);
    return check_bx(ctx, FN_FWD, "value", value, m, unb, c->B, c->S, vd, "[B, S, vdim]");
}

/* out, weights, mask, and the aliasing rule. */
static mha_status fwd_check_outputs(mha_ctx *ctx, const mha_module *m, const fwd_call *c) {
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, B = c->B, L = c->L, S = c->S;
    mha_status st;
    if (!c->out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a [B, L, E] tensor",
                        FN_FWD);
    if ((st = check_bx(ctx, FN_FWD, "out", c->out, m, c->unb, B, L, E, "as query"))) return st;
    if (c->weights && c->opts->average_weights) { /* float32 in every dtype */
        int64_t w[3] = {B, L, S};
        if ((st = mha__check_tensor(ctx, FN_FWD, "weights", c->weights, c->unb ? 2 : 3, w + c->unb,
                                    "[B, L, S], averaged over heads")))
            return st;
    }
    if (c->weights && !c->opts->average_weights) {
        int64_t w[4] = {B, H, L, S};
        if ((st = mha__check_tensor(ctx, FN_FWD, "weights", c->weights, c->unb ? 3 : 4, w + c->unb,
                                    "[B, H, L, S], per head")))
            return st;
    }
    if ((st = mha__attn_check_mask(ctx, FN_FWD, c->mask, B, S)) ||
        (st = mha__attn_check_alibi(ctx, FN_FWD, c->mask, B, H)))
        return st;
    const mha__attn_arg in[3] = {{"query", c->query}, {"key", c->key}, {"value", c->value}};
    const mha__attn_arg out[2] = {{"out", c->out}, {"weights", c->weights}};
    if ((st = mha__attn_check_aliases(ctx, FN_FWD, out, 2, in, 3))) return st;
    return mha__module_check_outputs(ctx, FN_FWD, m, out, 2, 0);
}

/* Declares the kept workspace (into m->st.ws, views in v) and the scratch (into m->fws, views
 * in sc; released when a call needs none): input copies only where the backward needs them or
 * the strides force one, mask copies only with save_for_backward. */
static mha_status fwd_plan(mha_ctx *ctx, mha_module *m, const fwd_call *c, fwd_views *v,
                           fwd_scratch *sc) {
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, B = c->B, L = c->L, S = c->S;
    const int64_t BL = B * L, BS = c->self ? 0 : B * S;
    const mha_mask *mk = c->save ? c->mask : NULL;
    const int64_t nml = mk && mk->attn_batched ? B * H * L : L; /* attn mask rows */
    const size_t es = m->es;
    mha__plan pl;
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, fwd_views, x, es, in_place(c->query, c->save) ? 0 : BL, E);
    MHA__PLAN_ADD(&pl, fwd_views, xk, es, c->self || in_place(c->key, c->save) ? 0 : BS,
                  m->cfg.kdim);
    MHA__PLAN_ADD(&pl, fwd_views, xv, es, c->self || in_place(c->value, c->save) ? 0 : BS,
                  m->cfg.vdim);
    MHA__PLAN_ADD(&pl, fwd_views, q, es, BL, c->self ? 3 * E : E);
    MHA__PLAN_ADD(&pl, fwd_views, k, es, BS, E);
    MHA__PLAN_ADD(&pl, fwd_views, v, es, BS, E);
    MHA__PLAN_ADD(&pl, fwd_views, attn, es, BL, E);
    MHA__PLAN_ADD(&pl, fwd_views, lse, sizeof(float), B * H, L);
    MHA__PLAN_ADD(&pl, fwd_views, pad, 1, mk && mk->key_padding ? B : 0, S);
    MHA__PLAN_ADD(&pl, fwd_views, klen, sizeof(int32_t), mk && mk->key_lengths ? B : 0, 1);
    MHA__PLAN_ADD(&pl, fwd_views, abool, 1, mk && mk->attn_bool ? nml : 0, S);
    MHA__PLAN_ADD(&pl, fwd_views, afloat, sizeof(float), mk && mk->attn_float ? nml : 0, S);
    MHA__PLAN_ADD(&pl, fwd_views, slopes, sizeof(float),
                  mk && mk->alibi_slopes ? (mk->alibi_batched ? B : 1) : 0, H);
    mha_status st = kept_point(ctx, FN_FWD, &pl, &m->st.ws, v);
    if (st) return st;
    /* The staging of the largest product: the projections (into rows the module addresses:
     * stage_n of a contiguous view) and the output projection into out. */
    int64_t nf = stage_n(m, NULL, BL > BS ? BL : BS, c->self ? 3 * E : E);
    if (stage_n(m, c->out, BL, E) > nf) nf = stage_n(m, c->out, BL, E);
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, fwd_scratch, f, sizeof(float), nf, 1);
    memset(sc, 0, sizeof *sc);
    if (!pl.bad && pl.per_copy == 0) { /* no scratch this call */
        buf_free(&m->fws);
        return MHA_OK;
    }
    return kept_point(ctx, FN_FWD, &pl, &m->fws, sc);
}

/* The rows of the [B, R, X] input t: its own memory when in place (*ld its row stride), else
 * copied into copy. */
static const void *input_rows(const mha_tensor *t, int save, void *copy, int64_t *ld) {
    if (in_place(t, save)) {
        *ld = rows_ld(t);
        return t->ptr;
    }
    copy_rows(t, copy);
    *ld = t->shape[t->ndim - 1];
    return copy;
}

/* Fills the saved state m->st: sizes, inputs (in place or copied), views of the projections,
 * and the masks (copied with save_for_backward: the backward must see the same ones). */
static void fwd_inputs(mha_module *m, const fwd_call *c, const fwd_views *v) {
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads;
    mha__saved *s = &m->st;
    s->B = c->B, s->L = c->L, s->S = c->S, s->unbatched = c->unb, s->self_attn = c->self;
    s->x = input_rows(c->query, c->save, v->x, &s->ldx);
    s->xk = c->self ? NULL : input_rows(c->key, c->save, v->xk, &s->ldxk);
    s->xv = c->self ? NULL : input_rows(c->value, c->save, v->xv, &s->ldxv);
    if (c->self) {
        s->q = v->q, s->k = el(m, v->q, E), s->v = el(m, v->q, 2 * E);
        s->ldq = s->ldk = s->ldv = 3 * E;
    } else {
        s->q = v->q, s->k = v->k, s->v = v->v;
        s->ldq = s->ldk = s->ldv = E;
    }
    s->attn = v->attn, s->lse = v->lse;
    const mha_mask *mk = c->mask;
    s->mask = mk ? *mk : mha_mask_default();
    if (!mk || !c->save) return;
    /* The sizes fwd_plan declared (and checked). */
    const size_t BS = (size_t)(c->B * c->S);
    const size_t nls = (size_t)(mk->attn_batched ? c->B * H * c->L : c->L) * (size_t)c->S;
    if (mk->key_padding) s->mask.key_padding = memcpy(v->pad, mk->key_padding, BS);
    if (mk->key_lengths)
        s->mask.key_lengths = memcpy(v->klen, mk->key_lengths, sizeof(int32_t) * (size_t)c->B);
    if (mk->attn_bool) s->mask.attn_bool = memcpy(v->abool, mk->attn_bool, nls);
    if (mk->attn_float) s->mask.attn_float = memcpy(v->afloat, mk->attn_float, sizeof(float) * nls);
    if (mk->alibi_slopes) {
        const size_t ns = (size_t)((mk->alibi_batched ? c->B : 1) * H);
        s->mask.alibi_slopes = memcpy(v->slopes, mk->alibi_slopes, sizeof(float) * ns);
    }
}

/* q = query Wq^T + bq, ... (the bias added by the product); self-attention: one product into
 * the packed [B*L, 3E] rows. f: the staging (fwd_scratch). */
static mha_status fwd_project(mha_ctx *ctx, mha_module *m, float *f) {
    const mha__saved *s = &m->st;
    const int64_t E = m->cfg.embed_dim, kd = m->cfg.kdim, vd = m->cfg.vdim;
    const int64_t BL = s->B * s->L, BS = s->B * s->S;
    mha_tensor q = rows_view(m, s->q, BL, s->self_attn ? 3 * E : E, s->ldq);
    if (s->self_attn)
        return mod_gemm(ctx, m, 0, 1, BL, 3 * E, E, s->x, s->ldx, m->wq, E, m->bin, &q, f);
    const void *bq = m->bin, *bk = bq ? el(m, bq, E) : NULL, *bv = bq ? el(m, bq, 2 * E) : NULL;
    mha_tensor k = rows_view(m, s->k, BS, E, s->ldk), v = rows_view(m, s->v, BS, E, s->ldv);
    mha_status st;
    if ((st = mod_gemm(ctx, m, 0, 1, BL, E, E, s->x, s->ldx, m->wq, E, bq, &q, f)) ||
        (st = mod_gemm(ctx, m, 0, 1, BS, E, kd, s->xk, s->ldxk, m->wk, kd, bk, &k, f)))
        return st;
    return mod_gemm(ctx, m, 0, 1, BS, E, vd, s->xv, s->ldxv, m->wv, vd, bv, &v, f);
}

/* The core on [B, H, *, D] views of the projections (no copies); the weights go to the
 * caller's tensor, per head, or averaged over heads by the core itself (mean over dim 1, as
 * PyTorch's average_attn_weights: ((w_0 + w_1) + ...) / H, without a [B, H, L, S] buffer). */
static mha_status fwd_attend(mha_ctx *ctx, mha_module *m, const fwd_call *c) {
    mha__saved *s = &m->st;
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, D = E / H;
    const int64_t B = c->B, L = c->L, S = c->S;
    s->ap = mha_attn_params_default();
    s->ap.scale = c->opts->scale != 0 ? c->opts->scale : (float)(1.0 / sqrt((double)D));
    s->ap.dropout_p = c->opts->training && m->cfg.dropout > 0 ? m->cfg.dropout : 0.0f;
    s->ap.seed = m->dropout_seed;
    s->ap.offset = m->dropout_offset;
    mha_tensor qv = heads_view(m, s->q, B, H, L, D, s->ldq);
    mha_tensor kv = heads_view(m, s->k, B, H, S, D, s->ldk);
    mha_tensor vv = heads_view(m, s->v, B, H, S, D, s->ldv);
    mha_tensor av = heads_view(m, s->attn, B, H, L, D, E);
    int64_t lshape[3] = {B, H, L}, ws[4] = {B, H, L, S}, was[3] = {B, L, S};
    mha_tensor lv = mha_tensor_make(s->lse, 3, lshape), wv;
    const mha_tensor *w = c->weights;
    if (w && c->opts->average_weights) { /* [B, L, S] ([L, S] as [1, L, S]) */
        int64_t wst[3] = {c->unb ? L * w->stride[0] : w->stride[0], w->stride[c->unb ? 0 : 1], 1};
        wv = mha_tensor_strided(w->data, 3, was, wst);
        return mha__attn_forward_named(ctx, FN_FWD, &s->ap, &qv, &kv, &vv, &s->mask, &av, &lv, NULL,
                                       &wv);
    }
    if (w && c->unb) { /* [H, L, S] as [1, H, L, S] */
        int64_t wst[4] = {H * w->stride[0], w->stride[0], w->stride[1], w->stride[2]};
        wv = mha_tensor_strided(w->data, 4, ws, wst);
    } else if (w) {
        wv = *w;
    }
    return mha__attn_forward_named(ctx, FN_FWD, &s->ap, &qv, &kv, &vv, &s->mask, &av, &lv,
                                   w ? &wv : NULL, NULL);
}

/* y = a Wo^T + bo into out. */
static mha_status fwd_output(mha_ctx *ctx, mha_module *m, const fwd_call *c,
                             const fwd_scratch *sc) {
    const int64_t E = m->cfg.embed_dim;
    return mod_gemm(ctx, m, 0, 1, c->B * c->L, E, E, m->st.attn, E, m->wo, E, m->bo, c->out, sc->f);
}

mha_status mha_module_forward(mha_ctx *ctx, mha_module *m, const mha_forward_opts *opts,
                              const mha_tensor *query, const mha_tensor *key,
                              const mha_tensor *value, const mha_mask *mask, mha_tensor *out,
                              mha_tensor *weights) {
    mha__clear(ctx);
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_FWD);
    m->gws.fn = FN_FWD; /* its products' messages */
    const mha_forward_opts od = mha_forward_opts_default();
    fwd_call c = {opts ? opts : &od, query, key, value, mask, out, weights, 0, 0, 0, 0, 0, 0};
    c.save = c.opts->save_for_backward != 0;
    mha_status st;
    if ((st = fwd_check_inputs(ctx, m, &c)) || (st = fwd_check_outputs(ctx, m, &c))) return st;

    /* From here on the kept buffers are overwritten: no saved forward until this one
     * completes. */
    m->saved = NULL;
    fwd_views v;
    fwd_scratch sc;
    if (!(st = fwd_plan(ctx, m, &c, &v, &sc))) {
        fwd_inputs(m, &c, &v);
        if (!(st = fwd_project(ctx, m, sc.f)) && !(st = fwd_attend(ctx, m, &c)))
            st = fwd_output(ctx, m, &c, &sc);
    }
    if (st == MHA_ERR_NOMEM) { /* give the memory back; the next call starts afresh */
        buf_free(&m->st.ws);
        buf_free(&m->fws);
        bwd_release(m);
    }
    if (st) return st;
    if (m->st.ap.dropout_p > 0) m->dropout_offset++;
    /* The backward differentiates the most recent forward: without save, there is none. */
    if (c.save) m->saved = &m->st;
    return MHA_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Incremental decoding: the next tokens' projections only, their k, v appended to a cache
 *   qkv = query_new [B*L, E] in_proj_weight^T + in_proj_bias     [B*L, 3E] = [B, L, 3, H, D]
 *   a   = mha_kv_cache_attend(q, k_new = k, v_new = v), causal bottom-right   [B*L, E]
 *   y   = a Wo^T + bo
 * ------------------------------------------------------------------------------------------- */

static const char *const FN_CACHED = "mha_module_forward_cached";

/* m can decode incrementally: self-attention's packed projections (kdim == vdim == E). */
static mha_status check_packed(mha_ctx *ctx, const char *fn, const mha_module *m) {
    if (m->packed) return MHA_OK;
    return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                    "%s: m: got kdim = %lld, vdim = %lld, expected both = embed_dim = %lld "
                    "(incremental self-attention)",
                    fn, (long long)m->cfg.kdim, (long long)m->cfg.vdim,
                    (long long)m->cfg.embed_dim);
}

mha_status mha_module_kv_cache_create(mha_ctx *ctx, const mha_module *m, int64_t batch,
                                      int64_t capacity, mha_kv_cache **out) {
    static const char *const fn = "mha_module_kv_cache_create";
    mha__clear(ctx);
    if (out) *out = NULL;
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", fn);
    mha_status st = check_packed(ctx, fn, m);
    if (st) return st;
    const int64_t H = m->cfg.num_heads, D = m->cfg.embed_dim / H;
    return mha__kv_cache_create(ctx, fn, batch, capacity, H, D, D, m->cfg.dtype, out);
}

/* The scratch of an incremental call (kept in m->fws). */
typedef struct {
    void *x;    /* [B*L, E] the query rows, when its strides need a copy */
    void *qkv;  /* [B*L, 3E] the new tokens' projections */
    void *attn; /* [B*L, E] the attention output, [B, L, H, D] */
    float *f;   /* the products' float32 staging (mod_gemm) */
} cached_views;

/* query, out and the cache against the module: [B, L, E], a cache of H heads of E/H. */
static mha_status cached_check(mha_ctx *ctx, const mha_module *m, mha_kv_cache *cache,
                               const mha_tensor *query, const mha_tensor *out) {
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads;
    mha_status st;
    if ((st = check_packed(ctx, FN_CACHED, m))) return st;
    if ((st = check_bx(ctx, FN_CACHED, "query", query, m, 0, -1, -1, E, "[B, L, E]"))) return st;
    const int64_t B = query->shape[0], L = query->shape[1];
    if ((st = check_bx(ctx, FN_CACHED, "out", out, m, 0, B, L, E, "as query"))) return st;
    mha_tensor kc, vc;
    if ((st = mha_kv_cache_views(ctx, cache, &kc, &vc))) return st;
    mha__clear(ctx);
    int64_t want[4] = {B, H, -1, E / H};
    if ((st = mha__check_tensor_as(ctx, FN_CACHED, "cache (keys)", &kc, m->cfg.dtype, 4, want,
                                   "[B, H, capacity, E / H]: mha_module_kv_cache_create")) ||
        (st = mha__check_tensor_as(ctx, FN_CACHED, "cache (values)", &vc, m->cfg.dtype, 4, want,
                                   "[B, H, capacity, E / H]: mha_module_kv_cache_create")))
        return st;
    /* out is written after the new tokens are in the cache: it may not share its memory */
    const mha__attn_arg in[3] = {
        {"query", query}, {"the cache's keys", &kc}, {"the cache's values", &vc}};
    const mha__attn_arg outs[1] = {{"out", out}};
    if ((st = mha__attn_check_aliases(ctx, FN_CACHED, outs, 1, in, 3))) return st;
    return mha__module_check_outputs(ctx, FN_CACHED, m, outs, 1, 0);
}

mha_status mha_module_forward_cached(mha_ctx *ctx, mha_module *m, mha_kv_cache *cache,
                                     const mha_tensor *query, const mha_mask *mask,
                                     mha_tensor *out) {
    mha__clear(ctx);
    if (!m)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_CACHED);
    m->gws.fn = FN_CACHED;
    if (!cache)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: cache: got NULL, expected a cache",
                        FN_CACHED);
    mha_status st = cached_check(ctx, m, cache, query, out);
    if (st) return st;
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, D = E / H;
    const int64_t B = query->shape[0], L = query->shape[1], BL = B * L;
    const int64_t ldq = rows_ld(query);
    int64_t nf = stage_n(m, NULL, BL, 3 * E);
    if (stage_n(m, out, BL, E) > nf) nf = stage_n(m, out, BL, E);
    mha__plan pl;
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, cached_views, x, m->es, ldq < 0 ? BL : 0, E);
    MHA__PLAN_ADD(&pl, cached_views, qkv, m->es, BL, 3 * E);
    MHA__PLAN_ADD(&pl, cached_views, attn, m->es, BL, E);
    MHA__PLAN_ADD(&pl, cached_views, f, sizeof(float), nf, 1);
    cached_views v;
    if ((st = kept_point(ctx, FN_CACHED, &pl, &m->fws, &v))) return st;
    if (BL == 0) return MHA_OK;
    int64_t ldx;
    const void *x = input_rows(query, 0, v.x, &ldx);
    mha_tensor qkv = rows_view(m, v.qkv, BL, 3 * E, 3 * E);
    if ((st = mod_gemm(ctx, m, 0, 1, BL, 3 * E, E, x, ldx, m->wq, E, m->bin, &qkv, v.f))) return st;
    mha_tensor q = heads_view(m, v.qkv, B, H, L, D, 3 * E),
               kn = heads_view(m, el(m, v.qkv, E), B, H, L, D, 3 * E);
    mha_tensor vn = heads_view(m, el(m, v.qkv, 2 * E), B, H, L, D, 3 * E),
               a = heads_view(m, v.attn, B, H, L, D, E);
    mha_mask mk = mask ? *mask : mha_mask_default();
    mk.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    if ((st = mha__kv_cache_attend(ctx, FN_CACHED, NULL, cache, &q, &kn, &vn, &mk, &a, NULL)))
        return st;
    return mod_gemm(ctx, m, 0, 1, BL, E, E, v.attn, E, m->wo, E, m->bo, out, v.f);
}

/* ---------------------------------------------------------------------------------------------
 * A saved forward moved out of the module and back (autograd: several forwards, then their
 * backwards in any order)
 * ------------------------------------------------------------------------------------------- */

mha_status mha_module_saved_take(mha_ctx *ctx, mha_module *m, mha_module_saved **out) {
    static const char *const fn = "mha_module_saved_take";
    mha__clear(ctx);
    if (!out)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: out: got NULL, expected a pointer", fn);
    *out = NULL;
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", fn);
    if (!m->saved)
        return mha__err(ctx, MHA_ERR_STATE,
                        "%s: no saved forward (call mha_module_forward with "
                        "opts->save_for_backward = 1 first)",
                        fn);
    mha_module_saved *s = mha__malloc(sizeof *s);
    if (!s) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", fn);
    s->owner = m;
    s->st = m->st; /* its views point into st.ws, which moves with it */
    memset(&m->st, 0, sizeof m->st);
    m->saved = NULL;
    *out = s;
    return MHA_OK;
}

mha_status mha_module_saved_restore(mha_ctx *ctx, mha_module *m, mha_module_saved *s) {
    static const char *const fn = "mha_module_saved_restore";
    mha__clear(ctx);
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", fn);
    if (!s)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: s: got NULL, expected a saved forward", fn);
    if (s->owner != m)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: s: got the saved forward of another module, expected one of m's", fn);
    m->saved = NULL;
    buf_free(&m->st.ws);
    m->st = s->st;
    m->saved = &m->st;
    mha__free(s);
    return MHA_OK;
}

void mha_module_saved_free(mha_module_saved *s) {
    if (!s) return;
    buf_free(&s->st.ws);
    mha__free(s);
}

/* ---------------------------------------------------------------------------------------------
 * Backward: validate (bwd_check), plan (bwd_plan), compute (bwd_out_proj ... bwd_in_proj)
 * ------------------------------------------------------------------------------------------- */

/* g [N1, N2] (float32, contiguous) = dY^T X for dY [rows, N1] and X [rows, N2] of the module's
 * dtype (row strides ldd, ldx): a parameter's gradient, accumulated in float32. */
static mha_status param_grad(mha_ctx *ctx, mha_module *m, int64_t N1, int64_t N2, int64_t rows,
                             const void *dy, int64_t ldd, const void *x, int64_t ldx, float *g) {
    return mha__gemm_dt(ctx, &m->gws, 1, 0, N1, N2, rows, 1.0f, dy, ldd, x, ldx, m->cfg.dtype, 0.0f,
                        NULL, g, N2);
}

/* d = dY W for dY [rows, E] (row stride ldd) and W [E, X]: into the view t (overwritten). */
static mha_status input_grad(mha_ctx *ctx, mha_module *m, mha_tensor *t, const void *dy,
                             int64_t ldd, int64_t rows, int64_t E, int64_t X, const void *W,
                             float *f) {
    return mod_gemm(ctx, m, 0, 0, rows, X, E, dy, ldd, W, X, NULL, t, f);
}

/* Total number of parameter elements. */
static int64_t param_total(const mha_module *m) {
    int64_t n = 0;
    for (int i = 0; i < m->nparams; i++) n += m->p[i].numel;
    return n;
}

/* The place in gw (all gradients back to back in float32, in parameter order) that mirrors
 * g, a pointer into one of the module's gradient buffers (NULL for NULL: no such parameter). */
static float *mirror(const mha_module *m, float *gw, const void *g) {
    int64_t o = 0;
    for (int i = 0; g && i < m->nparams; o += m->p[i].numel, i++) {
        const char *b = m->p[i].grad, *e = el(m, b, m->p[i].numel);
        if ((const char *)g >= b && (const char *)g < e)
            return gw + o + ((const char *)g - b) / (int64_t)m->es;
    }
    return NULL;
}

/* One backward call: its arguments, and the workspace bwd_plan points into m->bws. */
typedef struct {
    const mha_tensor *dout;
    mha_tensor *dquery, *dkey, *dvalue; /* each optional */
    /* The workspace's regions (the module's dtype but gw, f and acc). */
    void *dyc;          /* dout's rows, copied only when its strides need it */
    void *da;           /* d attention [B*L, E] = [B, L, H, D] */
    void *dq, *dk, *dv; /* the core's gradients; self-attention: dq holds packed [B*L, 3E] */
    float *gw;          /* new parameter gradients, mirroring the parameters back to back */
    float *f;           /* the products' float32 staging (mod_gemm) */
    double *acc;        /* column sums [3E] */
    /* Set by bwd_plan. */
    const void *dy;   /* dout's rows (row stride ldy) */
    int64_t ldy, ldg; /* ldg: row stride of dq, dk, dv (3E self, else E) */
} bwd_call;

mha_status mha__module_check_grads(mha_ctx *ctx, const char *fn, const mha_module *m,
                                   const mha_tensor *dout) {
    const mha_dtype dt = m->cfg.dtype;
    for (int i = 0; i < m->nparams; i++) {
        const mha__param *a = &m->p[i];
        const mha_tensor g = mha_tensor_typed(a->grad, dt, a->ndim, a->shape, NULL);
        if (mha__tensors_overlap(&g, dout))
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: the module's gradient of %s overlaps dout (a gradient, "
                            "accumulated into, must not share memory with the inputs)",
                            fn, a->name);
        for (int j = 0; j < m->nparams; j++) {
            const mha__param *b = &m->p[j];
            const mha_tensor v = mha_tensor_typed(b->value, dt, b->ndim, b->shape, NULL);
            const mha_tensor h = mha_tensor_typed(b->grad, dt, b->ndim, b->shape, NULL);
            const int on_value = mha__tensors_overlap(&g, &v);
            if (on_value || (j > i && mha__tensors_overlap(&g, &h)))
                return mha__err(ctx, MHA_ERR_INVALID_ARG,
                                "%s: the module's gradient of %s overlaps the module's %s%s "
                                "(mha_module_param_bind: a gradient must not share memory with "
                                "a parameter or another gradient)",
                                fn, a->name, on_value ? "parameter " : "gradient of ", b->name);
        }
    }
    return MHA_OK;
}

/* dout against the saved forward, the input gradients' shapes, the aliasing rule. */
static mha_status bwd_check(mha_ctx *ctx, const mha_module *m, const bwd_call *c) {
    const mha__saved *s = m->saved;
    const int64_t E = m->cfg.embed_dim, B = s->B, L = s->L, S = s->S;
    const int unb = s->unbatched, nd = unb ? 2 : 3;
    const int64_t w[3] = {B, L, E};
    mha_status st;
    if (!c->dout)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: dout: got NULL, expected a [B, L, E] tensor",
                        FN_BWD);
    if (c->dout->ndim != nd)
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: dout.ndim: got %d, expected %d (the saved forward's out)", FN_BWD,
                        c->dout->ndim, nd);
    for (int d = 0; d < nd; d++)
        if (c->dout->shape[d] != w[d + unb])
            return mha__err(ctx, MHA_ERR_SHAPE,
                            "%s: dout.shape[%d]: got %lld, expected %lld (the saved forward's out)",
                            FN_BWD, d, (long long)c->dout->shape[d], (long long)w[d + unb]);
    if ((st = check_bx(ctx, FN_BWD, "dout", c->dout, m, unb, B, L, E, "as out"))) return st;
    if (s->self_attn && (c->dkey || c->dvalue))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: %s: got a tensor, expected NULL (self-attention: dquery receives the "
                        "whole input gradient)",
                        FN_BWD, c->dkey ? "dkey" : "dvalue");
    if ((c->dquery &&
         (st = check_bx(ctx, FN_BWD, "dquery", c->dquery, m, unb, B, L, E, "as query"))) ||
        (c->dkey &&
         (st = check_bx(ctx, FN_BWD, "dkey", c->dkey, m, unb, B, S, m->cfg.kdim, "as key"))) ||
        (c->dvalue &&
         (st = check_bx(ctx, FN_BWD, "dvalue", c->dvalue, m, unb, B, S, m->cfg.vdim, "as value"))))
        return st;
    const mha__attn_arg in[1] = {{"dout", c->dout}};
    const mha__attn_arg out[3] = {{"dquery", c->dquery}, {"dkey", c->dkey}, {"dvalue", c->dvalue}};
    if ((st = mha__attn_check_aliases(ctx, FN_BWD, out, 3, in, 1)) ||
        (st = mha__module_check_outputs(ctx, FN_BWD, m, out, 3, 1)))
        return st;
    return mha__module_check_grads(ctx, FN_BWD, m, c->dout);
}

/* The larger of a and the staging of a product of [M, N] into t (when given). */
static int64_t staging(const mha_module *m, int64_t a, const mha_tensor *t, int64_t M, int64_t N) {
    const int64_t b = t ? stage_n(m, t, M, N) : 0;
    return b > a ? b : a;
}

/* Declares the backward's workspace (kept in m->bws) and points c's regions into it. */
static mha_status bwd_plan(mha_ctx *ctx, mha_module *m, bwd_call *c) {
    const mha__saved *s = m->saved;
    const int64_t E = m->cfg.embed_dim, BL = s->B * s->L, BS = s->self_attn ? 0 : s->B * s->S;
    int64_t nf = stage_n(m, NULL, BL, E); /* da */
    nf = staging(m, staging(m, staging(m, nf, c->dquery, BL, E), c->dkey, BS, m->cfg.kdim),
                 c->dvalue, BS, m->cfg.vdim);
    c->ldy = rows_ld(c->dout);
    const size_t es = m->es;
    mha__plan pl;
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, bwd_call, dyc, es, c->ldy < 0 ? BL : 0, E);
    MHA__PLAN_ADD(&pl, bwd_call, da, es, BL, E);
    MHA__PLAN_ADD(&pl, bwd_call, dq, es, BL, s->self_attn ? 3 * E : E);
    MHA__PLAN_ADD(&pl, bwd_call, dk, es, BS, E);
    MHA__PLAN_ADD(&pl, bwd_call, dv, es, BS, E);
    MHA__PLAN_ADD(&pl, bwd_call, gw, sizeof(float), param_total(m), 1);
    MHA__PLAN_ADD(&pl, bwd_call, f, sizeof(float), nf, 1);
    MHA__PLAN_ADD(&pl, bwd_call, acc, sizeof(double), 3, E);
    mha_status st = kept_point(ctx, FN_BWD, &pl, &m->bws, c);
    if (st) return st;
    if (s->self_attn) c->dk = el(m, c->dq, E), c->dv = el(m, c->dq, 2 * E);
    c->ldg = s->self_attn ? 3 * E : E;
    c->dy = c->dout->ptr;
    if (c->ldy < 0) {
        copy_rows(c->dout, c->dyc);
        c->dy = c->dyc, c->ldy = E;
    }
    return MHA_OK;
}

/* da = dy Wo   [B*L, E] = [B, L, H, D];  dWo = dy^T a,  dbo = sum_rows dy. */
static mha_status bwd_out_proj(mha_ctx *ctx, mha_module *m, const bwd_call *c) {
    const mha__saved *s = m->saved;
    const int64_t E = m->cfg.embed_dim, BL = s->B * s->L;
    mha_tensor da = rows_view(m, c->da, BL, E, E);
    mha_status st;
    if ((st = mod_gemm(ctx, m, 0, 0, BL, E, E, c->dy, c->ldy, m->wo, E, NULL, &da, c->f)) ||
        (st = param_grad(ctx, m, E, E, BL, c->dy, c->ldy, s->attn, E, mirror(m, c->gw, m->gwo))))
        return st;
    if (m->gbo) col_sums(mirror(m, c->gw, m->gbo), m->cfg.dtype, c->dy, c->ldy, BL, E, c->acc);
    return MHA_OK;
}

/* The core backward into dq, dk, dv, on [B, H, *, D] views (its forward: fwd_attend). */
static mha_status bwd_core(mha_ctx *ctx, const mha_module *m, const bwd_call *c) {
    const mha__saved *s = m->saved;
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, D = E / H;
    const int64_t B = s->B, L = s->L, S = s->S;
    mha_tensor qv = heads_view(m, s->q, B, H, L, D, s->ldq);
    mha_tensor kv = heads_view(m, s->k, B, H, S, D, s->ldk);
    mha_tensor vv = heads_view(m, s->v, B, H, S, D, s->ldv);
    mha_tensor ov = heads_view(m, s->attn, B, H, L, D, E);
    mha_tensor dov = heads_view(m, c->da, B, H, L, D, E);
    mha_tensor dqv = heads_view(m, c->dq, B, H, L, D, c->ldg);
    mha_tensor dkv = heads_view(m, c->dk, B, H, S, D, c->ldg);
    mha_tensor dvv = heads_view(m, c->dv, B, H, S, D, c->ldg);
    int64_t lshape[3] = {B, H, L};
    mha_tensor lv = mha_tensor_make(s->lse, 3, lshape);
    return mha__attn_backward_seq(ctx, FN_BWD, &s->ap, &qv, &kv, &vv, &s->mask, &ov, &lv, &dov,
                                  &dqv, &dkv, &dvv, (mha__attn_origin){0, 0, 0});
}

/* Input gradients (overwritten): dquery = dq Wq, ...; self-attention: dquery = [dq dk dv]
 * [Wq; Wk; Wv], the three paths summed by one product. */
static mha_status bwd_inputs(mha_ctx *ctx, mha_module *m, const bwd_call *c) {
    const mha__saved *s = m->saved;
    const int64_t E = m->cfg.embed_dim, BL = s->B * s->L, BS = s->B * s->S;
    mha_status st = MHA_OK;
    if (s->self_attn)
        return c->dquery ? input_grad(ctx, m, c->dquery, c->dq, 3 * E, BL, 3 * E, E, m->wq, c->f)
                         : MHA_OK;
    /* the packing workspace grown for all three products first: none can then fail after
     * another has written the caller's view */
    const mha_dtype dt = m->cfg.dtype;
    if ((c->dquery && (st = mha__gemm_ws_reserve(ctx, &m->gws, BL, E, E, dt))) ||
        (c->dkey && (st = mha__gemm_ws_reserve(ctx, &m->gws, BS, m->cfg.kdim, E, dt))) ||
        (c->dvalue && (st = mha__gemm_ws_reserve(ctx, &m->gws, BS, m->cfg.vdim, E, dt))))
        return st;
    if ((c->dquery && (st = input_grad(ctx, m, c->dquery, c->dq, E, BL, E, E, m->wq, c->f))) ||
        (c->dkey &&
         (st = input_grad(ctx, m, c->dkey, c->dk, E, BS, E, m->cfg.kdim, m->wk, c->f))) ||
        (c->dvalue &&
         (st = input_grad(ctx, m, c->dvalue, c->dv, E, BS, E, m->cfg.vdim, m->wv, c->f))))
        return st;
    return MHA_OK;
}

/* dWq = dq^T query, dbq = sum_rows dq (and so on for k and v; self-attention: one product of
 * the packed rows). */
static mha_status bwd_in_proj(mha_ctx *ctx, mha_module *m, const bwd_call *c) {
    const mha__saved *s = m->saved;
    const int64_t E = m->cfg.embed_dim, kd = m->cfg.kdim, vd = m->cfg.vdim;
    const int64_t BL = s->B * s->L, BS = s->B * s->S;
    const mha_dtype dt = m->cfg.dtype;
    float *gbin = mirror(m, c->gw, m->gbin);
    mha_status st;
    if (s->self_attn) {
        if ((st = param_grad(ctx, m, 3 * E, E, BL, c->dq, 3 * E, s->x, s->ldx,
                             mirror(m, c->gw, m->gwq))))
            return st;
        if (gbin) col_sums(gbin, dt, c->dq, 3 * E, BL, 3 * E, c->acc);
        return MHA_OK;
    }
    if ((st = param_grad(ctx, m, E, E, BL, c->dq, E, s->x, s->ldx, mirror(m, c->gw, m->gwq))) ||
        (st = param_grad(ctx, m, E, kd, BS, c->dk, E, s->xk, s->ldxk, mirror(m, c->gw, m->gwk))) ||
        (st = param_grad(ctx, m, E, vd, BS, c->dv, E, s->xv, s->ldxv, mirror(m, c->gw, m->gwv))))
        return st;
    if (gbin) {
        col_sums(gbin, dt, c->dq, E, BL, E, c->acc);
        col_sums(gbin + E, dt, c->dk, E, BS, E, c->acc);
        col_sums(gbin + 2 * E, dt, c->dv, E, BS, E, c->acc);
    }
    return MHA_OK;
}

mha_status mha_module_backward(mha_ctx *ctx, mha_module *m, const mha_tensor *dout,
                               mha_tensor *dquery, mha_tensor *dkey, mha_tensor *dvalue) {
    mha__clear(ctx);
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_BWD);
    m->gws.fn = FN_BWD;
    if (!m->saved)
        return mha__err(ctx, MHA_ERR_STATE,
                        "%s: no saved forward (call mha_module_forward with "
                        "opts->save_for_backward = 1 first)",
                        FN_BWD);
    bwd_call c;
    memset(&c, 0, sizeof c);
    c.dout = dout, c.dquery = dquery, c.dkey = dkey, c.dvalue = dvalue;
    mha_status st;
    if ((st = bwd_check(ctx, m, &c))) return st;
    /* Parameter gradients go to c.gw (a mirror of the parameters) and are added at the end, so
     * a failure leaves the module's gradients as they were; grad = grad + new, as autograd. */
    /* The caller's dquery, dkey, dvalue are written last (bwd_inputs), by products whose
     * workspace is reserved before the first: an allocation that fails leaves them unchanged. */
    if ((st = bwd_plan(ctx, m, &c)) || (st = bwd_out_proj(ctx, m, &c)) ||
        (st = bwd_core(ctx, m, &c)) || (st = bwd_in_proj(ctx, m, &c)) ||
        (st = bwd_inputs(ctx, m, &c))) {
        if (st == MHA_ERR_NOMEM) bwd_release(m); /* the saved forward stays: a retry can work */
        return st;
    }
    const float *src = c.gw;
    const mha_dtype dt = m->cfg.dtype;
    for (int i = 0; i < m->nparams; src += m->p[i].numel, i++) {
        void *g = m->p[i].grad;
        for (int64_t e = 0; e < m->p[i].numel; e++)
            mha__store_f32(dt, g, e, mha__load_f32(dt, g, e) + src[e]);
    }
    return MHA_OK;
}
