/* module.c - mha_mpi_module_forward / _backward: the module (src/attn/module.c's formulas) with
 * the sequence split across ranks. The projections are row-wise, so each rank projects its own
 * tokens; only the attention core needs the other ranks' keys: the ring (ring.c).
 *
 * FORWARD (this rank's B x Lr queries, B x Sr keys)
 *   q, k, v = projections of the rank's rows (self-attention: one product into packed
 *             [B*Lr, 3E] rows, as module.c)
 *   a       = mha_mpi_attn_forward(q, k, v) on [B, H, *, D] views        [B*Lr, E]
 *   y       = a Wo^T + bo
 * BACKWARD
 *   da = dy Wo;  (dq, dk, dv) = mha_mpi_attn_backward(da);  input gradients as module.c
 *   parameter gradients: this rank's sums (dWo = dy^T a, ...), then gathered from every rank
 *   and summed in rank order (deterministic: MPI_Allreduce's order is not specified), added
 *   (+=) to the module's gradients on every rank.
 * The saved forward lives in m->mpi_saved (module_internal.h), apart from the module's own. */
#include "mpi/mpi_internal.h"

#include "attn/attn_common.h"
#include "attn/module_internal.h"
#include "core/plan.h"

#include <math.h>
#include <string.h>

static const char *const FN_FWD = "mha_mpi_module_forward";
static const char *const FN_BWD = "mha_mpi_module_backward";

/* What the backward needs from its forward: views into one allocation (mem). */
typedef struct {
    int64_t B, Lr, Sr;
    int self;
    float *x, *xk, *xv;   /* the inputs' rows: [B*Lr, E], [B*Sr, kdim], [B*Sr, vdim] */
    float *qkv, *k2, *v2; /* projections: self q | k | v packed [B*Lr, 3E] (k2, v2 empty);
                             cross q [B*Lr, E] in qkv, k [B*Sr, E], v [B*Sr, E] */
    float *attn, *lse;    /* the core's output [B*Lr, E] and lse [B, H, Lr] */
    uint8_t *pad;         /* the key padding [B, Sr] (a copy) */
    float *y;             /* staging for the output rows [B*Lr, E] */
    mha_mask mask;
    mha_attn_params ap;
    void *mem;
} saved;

static void saved_free(void *p) {
    saved *s = p;
    if (!s) return;
    mha__free(s->mem);
    mha__free(s);
}

/* m's MPI saved forward released. */
static void saved_drop(mha_module *m) {
    if (m->mpi_free) m->mpi_free(m->mpi_saved);
    m->mpi_saved = NULL, m->mpi_free = NULL;
}

/* A [B, H, R, D] view of head-interleaved rows (row stride ld). */
static mha_tensor heads(float *base, int64_t B, int64_t H, int64_t R, int64_t D, int64_t ld) {
    int64_t shape[4] = {B, H, R, D}, stride[4] = {R * ld, D, ld, 1};
    return mha_tensor_strided(base, 4, shape, stride);
}

/* The core's q, k, v views of s. */
static void qkv_views(const mha_module *m, const saved *s, mha_tensor *q, mha_tensor *k,
                      mha_tensor *v) {
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, D = E / H;
    const int64_t ld = s->self ? 3 * E : E;
    *q = heads(s->qkv, s->B, H, s->Lr, D, ld);
    *k = heads(s->self ? s->qkv + E : s->k2, s->B, H, s->Sr, D, ld);
    *v = heads(s->self ? s->qkv + 2 * E : s->v2, s->B, H, s->Sr, D, ld);
}

/* ---------------------------------------------------------------------------------------------
 * Forward
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    const mha_forward_opts *opts;
    const mha_tensor *query, *key, *value;
    const mha_mask *mask;
    mha_tensor *out;
    int64_t B, Lr, Sr;
    int self;
} fwd_call;

/* This rank's arguments (before any agreement). */
static mha_status fwd_check(mha_ctx *ctx, const mha_module *m, fwd_call *f) {
    mha_status st;
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_FWD);
    mha_tensor w; /* the parameters' dtype, as the public API gives it */
    if ((st = mha_module_param(ctx, (mha_module *)m, "out_proj.weight", &w, NULL))) return st;
    if (w.dtype != MHA_DTYPE_F32)
        return mha__err(ctx, MHA_ERR_UNSUPPORTED,
                        "%s: m's dtype: got %s, expected float32 (the MPI calls take float32 "
                        "modules)",
                        FN_FWD, mha_dtype_name(w.dtype));
    const int64_t E = m->cfg.embed_dim;
    if (!isfinite(f->opts->scale))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: opts->scale: got %g, expected a finite value (0: 1/sqrt(E/H))", FN_FWD,
                        (double)f->opts->scale);
    int64_t wq[3] = {-1, -1, E};
    if ((st = mha__check_tensor(ctx, FN_FWD, "query", f->query, 3, wq, "[B, Lr, E]"))) return st;
    f->B = f->query->shape[0], f->Lr = f->Sr = f->query->shape[1];
    f->self = !f->key && !f->value;
    if (!f->key != !f->value)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: %s: got NULL while %s is given, expected both or neither (NULL, NULL: "
                        "self-attention)",
                        FN_FWD, f->key ? "value" : "key", f->key ? "key" : "value");
    if (f->self && !m->packed)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: key: got NULL (self-attention), expected a tensor (kdim = %lld, vdim "
                        "= %lld differ from embed_dim = %lld)",
                        FN_FWD, (long long)m->cfg.kdim, (long long)m->cfg.vdim, (long long)E);
    if (!f->self) {
        int64_t wk[3] = {f->B, -1, m->cfg.kdim};
        if ((st = mha__check_tensor(ctx, FN_FWD, "key", f->key, 3, wk, "[B, Sr, kdim]"))) return st;
        f->Sr = f->key->shape[1];
        int64_t wv[3] = {f->B, f->Sr, m->cfg.vdim};
        if ((st = mha__check_tensor(ctx, FN_FWD, "value", f->value, 3, wv, "[B, Sr, vdim]")))
            return st;
    }
    int64_t wo[3] = {f->B, f->Lr, E};
    if ((st = mha__check_tensor(ctx, FN_FWD, "out", f->out, 3, wo, "as query")) ||
        (st = mha__attn_check_mask(ctx, FN_FWD, f->mask, f->B, f->Sr)) ||
        (st = mha__mpi_check_mask(ctx, FN_FWD, f->mask)))
        return st;
    if (f->mask && f->mask->causal && f->Sr != f->Lr)
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: key.shape[1]: got %lld, expected %lld (causal across ranks: the keys "
                        "of the queries' shard, L == S)",
                        FN_FWD, (long long)f->Sr, (long long)f->Lr);
    if (f->mask && f->mask->causal && f->Lr % 2 != 0)
        return mha__err(ctx, MHA_ERR_SHAPE,
                        "%s: query.shape[1]: got %lld, expected an even shard length (zigzag: "
                        "chunks r and 2P-1-r of the sequence cut into 2P, so L %% 2P == 0)",
                        FN_FWD, (long long)f->Lr);
    const mha__attn_arg in[3] = {{"query", f->query}, {"key", f->key}, {"value", f->value}};
    const mha__attn_arg out[1] = {{"out", f->out}};
    if ((st = mha__attn_check_aliases(ctx, FN_FWD, out, 1, in, 3))) return st;
    return mha__module_check_outputs(ctx, FN_FWD, m, out, 1, 0);
}

static mha_status fwd_agree(mha__mpi_call *c, const mha_module *m, const fwd_call *f) {
    const mha_config *g = &m->cfg;
    const mha__fp fp[] = {
        {"m's embed_dim", MHA__FP_INT, MHA_ERR_INVALID_ARG, g->embed_dim},
        {"m's num_heads", MHA__FP_INT, MHA_ERR_INVALID_ARG, g->num_heads},
        {"m's kdim", MHA__FP_INT, MHA_ERR_INVALID_ARG, g->kdim},
        {"m's vdim", MHA__FP_INT, MHA_ERR_INVALID_ARG, g->vdim},
        {"m's bias", MHA__FP_INT, MHA_ERR_INVALID_ARG, g->bias},
        {"m's dropout", MHA__FP_FLOAT, MHA_ERR_INVALID_ARG, mha__fp_float(g->dropout)},
        {"m's dropout seed", MHA__FP_INT, MHA_ERR_INVALID_ARG, (int64_t)m->dropout_seed},
        {"m's dropout offset", MHA__FP_INT, MHA_ERR_INVALID_ARG, (int64_t)m->dropout_offset},
        {"opts->scale", MHA__FP_FLOAT, MHA_ERR_INVALID_ARG, mha__fp_float(f->opts->scale)},
        {"opts->training", MHA__FP_INT, MHA_ERR_INVALID_ARG, f->opts->training != 0},
        {"opts->save_for_backward", MHA__FP_INT, MHA_ERR_INVALID_ARG,
         f->opts->save_for_backward != 0},
        {"key", MHA__FP_GIVEN, MHA_ERR_INVALID_ARG, !f->self},
        {"query.shape[0]", MHA__FP_INT, MHA_ERR_SHAPE, f->B},
        {"query.shape[1]", MHA__FP_INT, MHA_ERR_SHAPE, f->Lr},
        {"key.shape[1]", MHA__FP_INT, MHA_ERR_SHAPE, f->Sr},
        {"mask->causal", MHA__FP_CAUSAL, MHA_ERR_INVALID_ARG, f->mask ? f->mask->causal : 0},
        {"mask->key_padding", MHA__FP_GIVEN, MHA_ERR_INVALID_ARG, f->mask && f->mask->key_padding},
    };
    return mha__mpi_agree_fp(c, fp, (int)(sizeof fp / sizeof fp[0]));
}

/* The saved state's regions, in one allocation. */
static mha_status fwd_alloc(mha_ctx *ctx, const mha_module *m, const fwd_call *f, saved **out) {
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, BL = f->B * f->Lr;
    const int64_t BS = f->self ? 0 : f->B * f->Sr;
    *out = NULL;
    saved *s = mha__calloc(1, sizeof *s);
    if (!s) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory", FN_FWD);
    mha__plan pl;
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, saved, x, sizeof(float), BL, E);
    MHA__PLAN_ADD(&pl, saved, xk, sizeof(float), BS, m->cfg.kdim);
    MHA__PLAN_ADD(&pl, saved, xv, sizeof(float), BS, m->cfg.vdim);
    MHA__PLAN_ADD(&pl, saved, qkv, sizeof(float), BL, f->self ? 3 * E : E);
    MHA__PLAN_ADD(&pl, saved, k2, sizeof(float), BS, E);
    MHA__PLAN_ADD(&pl, saved, v2, sizeof(float), BS, E);
    MHA__PLAN_ADD(&pl, saved, attn, sizeof(float), BL, E);
    MHA__PLAN_ADD(&pl, saved, lse, sizeof(float), f->B * H, f->Lr);
    MHA__PLAN_ADD(&pl, saved, pad, 1, f->mask && f->mask->key_padding ? f->B : 0, f->Sr);
    MHA__PLAN_ADD(&pl, saved, y, sizeof(float), BL, E);
    mha_status st = mha__plan_alloc(&pl, ctx, FN_FWD, 1, &s->mem);
    if (st) {
        mha__free(s);
        return st;
    }
    mha__plan_point(&pl, s->mem, 0, s);
    s->B = f->B, s->Lr = f->Lr, s->Sr = f->Sr, s->self = f->self;
    *out = s;
    return MHA_OK;
}

/* The inputs copied, the masks and the core's parameters set, the projections computed. */
static mha_status fwd_project(mha_ctx *ctx, mha_module *m, const fwd_call *f, saved *s) {
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, kd = m->cfg.kdim;
    const int64_t vd = m->cfg.vdim, BL = s->B * s->Lr, BS = s->B * s->Sr;
    const int nt = mha__ctx_threads(ctx);
    s->mask = mha_mask_default();
    s->mask.causal = f->mask ? f->mask->causal : MHA_CAUSAL_NONE;
    if (f->mask && f->mask->key_padding)
        s->mask.key_padding = memcpy(s->pad, f->mask->key_padding, (size_t)BS);
    s->ap = mha_attn_params_default();
    s->ap.scale = f->opts->scale != 0 ? f->opts->scale : (float)(1.0 / sqrt((double)(E / H)));
    s->ap.dropout_p = f->opts->training && m->cfg.dropout > 0 ? m->cfg.dropout : 0.0f;
    s->ap.seed = m->dropout_seed, s->ap.offset = m->dropout_offset;
    mha__tensor_to_f32(mha__ctx_kernels(ctx), f->query, s->x, nt);
    if (s->self)
        return mha__gemm_ex(ctx, &m->gws, 0, 1, BL, 3 * E, E, 1.0f, s->x, E, m->wq, E, 0.0f, m->bin,
                            s->qkv, 3 * E);
    mha__tensor_to_f32(mha__ctx_kernels(ctx), f->key, s->xk, nt);
    mha__tensor_to_f32(mha__ctx_kernels(ctx), f->value, s->xv, nt);
    const float *bq = m->bin, *bk = bq ? bq + E : NULL, *bv = bq ? bq + 2 * E : NULL;
    mha_status st;
    if ((st = mha__gemm_ex(ctx, &m->gws, 0, 1, BL, E, E, 1.0f, s->x, E, m->wq, E, 0.0f, bq, s->qkv,
                           E)) ||
        (st = mha__gemm_ex(ctx, &m->gws, 0, 1, BS, E, kd, 1.0f, s->xk, kd, m->wk, kd, 0.0f, bk,
                           s->k2, E)))
        return st;
    return mha__gemm_ex(ctx, &m->gws, 0, 1, BS, E, vd, 1.0f, s->xv, vd, m->wv, vd, 0.0f, bv, s->v2,
                        E);
}

/* The ring over the projections (it agrees on its own), then y = a Wo^T + bo into out. */
static mha_status fwd_attend(mha__mpi_call *c, mha_module *m, const fwd_call *f, saved *s) {
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, BL = s->B * s->Lr;
    mha_tensor q, k, v;
    qkv_views(m, s, &q, &k, &v);
    mha_tensor a = heads(s->attn, s->B, H, s->Lr, E / H, E);
    int64_t ls[3] = {s->B, H, s->Lr};
    mha_tensor l = mha_tensor_make(s->lse, 3, ls);
    mha_mpi_stats rs;
    mha_status st =
        mha_mpi_attn_forward(c->ctx, c->comm, &s->ap, &q, &k, &v, &s->mask, &a, &l, &rs);
    c->st.compute_s += rs.compute_s, c->st.comm_wait_s += rs.comm_wait_s;
    c->st.work += rs.work, c->st.bytes_sent += rs.bytes_sent, c->st.steps += rs.steps;
    if (st) return st;
    st = mha__mpi_agree(c, mha__gemm_ex(c->ctx, &m->gws, 0, 1, BL, E, E, 1.0f, s->attn, E, m->wo, E,
                                        0.0f, m->bo, s->y, E));
    /* out written once every rank has its rows */
    if (!st) mha__tensor_from_f32(mha__ctx_kernels(c->ctx), s->y, f->out, mha__ctx_threads(c->ctx));
    return st;
}

mha_status mha_mpi_module_forward(mha_ctx *ctx, MPI_Comm comm, mha_module *m,
                                  const mha_forward_opts *opts, const mha_tensor *query,
                                  const mha_tensor *key, const mha_tensor *value,
                                  const mha_mask *mask, mha_tensor *out, mha_mpi_stats *stats) {
    mha__mpi_call c;
    mha_status st = mha__mpi_begin(&c, ctx, FN_FWD, comm);
    if (st) return mha__mpi_end(&c, st, stats);
    const mha_forward_opts od = mha_forward_opts_default();
    fwd_call f = {opts ? opts : &od, query, key, value, mask, out, 0, 0, 0, 0};
    if ((st = mha__mpi_agree(&c, fwd_check(ctx, m, &f))) || (st = fwd_agree(&c, m, &f)))
        return mha__mpi_end(&c, st, stats);
    m->gws.fn = FN_FWD; /* its products' messages */
    saved_drop(m);      /* this forward replaces the saved one, even if it fails */
    saved *s = NULL;
    if ((st = mha__mpi_agree(&c, fwd_alloc(ctx, m, &f, &s)))) {
        saved_free(s);
        return mha__mpi_end(&c, st, stats);
    }
    const double t = mha__mpi_now();
    st = mha__mpi_agree(&c, fwd_project(ctx, m, &f, s));
    c.st.compute_s += mha__mpi_now() - t;
    if (!st) st = fwd_attend(&c, m, &f, s);
    if (st || !f.opts->save_for_backward) saved_free(s);
    if (st) return mha__mpi_end(&c, st, stats);
    if (s->ap.dropout_p > 0) m->dropout_offset++;
    if (f.opts->save_for_backward) m->mpi_saved = s, m->mpi_free = saved_free;
    return mha__mpi_end(&c, MHA_OK, stats);
}

/* ---------------------------------------------------------------------------------------------
 * Backward
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    const mha_tensor *dout;
    mha_tensor *dquery, *dkey, *dvalue;
    /* the workspace */
    float *dy;             /* dout's rows [B*Lr, E] */
    float *da;             /* d attention [B*Lr, E] */
    float *dqkv, *dk, *dv; /* the core's gradients, laid out as the forward's q, k, v */
    float *gw;             /* this rank's parameter gradients, back to back in parameter order */
    float *all;            /* every rank's gw, rank after rank */
    float *ones;           /* a row of ones: column sums as products */
    float *gq, *gk, *gv;   /* the input gradients' rows [B*Lr, E], [B*Sr, kdim], [B*Sr, vdim]
                              (those asked for), copied to the caller's views once every rank
                              has all of its results: nothing is written on error */
} bwd_call;

static int64_t param_total(const mha_module *m) {
    int64_t n = 0;
    for (int i = 0; i < m->nparams; i++) n += m->p[i].numel;
    return n;
}

/* The place in gw of the module's gradient g (a pointer into one of its parameters' gradients),
 * NULL for NULL. */
static float *gw_of(const mha_module *m, float *gw, const float *g) {
    for (int i = 0; g && i < m->nparams; gw += m->p[i].numel, i++) {
        const float *p = (const float *)m->p[i].grad; /* float32 modules only (fwd_check) */
        if (g >= p && g < p + m->p[i].numel) return gw + (g - p);
    }
    return NULL;
}

static mha_status bwd_check(mha_ctx *ctx, const mha_module *m, const bwd_call *b) {
    if (!m) return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: m: got NULL, expected a module", FN_BWD);
    const saved *s = m->mpi_saved;
    if (!s)
        return mha__err(ctx, MHA_ERR_STATE,
                        "%s: no saved forward (call mha_mpi_module_forward with "
                        "opts->save_for_backward = 1 first)",
                        FN_BWD);
    const int64_t E = m->cfg.embed_dim;
    int64_t wo[3] = {s->B, s->Lr, E}, wk[3] = {s->B, s->Sr, m->cfg.kdim};
    int64_t wv[3] = {s->B, s->Sr, m->cfg.vdim};
    mha_status st;
    if ((st = mha__check_tensor(ctx, FN_BWD, "dout", b->dout, 3, wo, "the saved forward's out")))
        return st;
    if (s->self && (b->dkey || b->dvalue))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: %s: got a tensor, expected NULL (self-attention: dquery receives the "
                        "whole input gradient)",
                        FN_BWD, b->dkey ? "dkey" : "dvalue");
    if ((b->dquery && (st = mha__check_tensor(ctx, FN_BWD, "dquery", b->dquery, 3, wo,
                                              "as "
                                              "query"))) ||
        (b->dkey && (st = mha__check_tensor(ctx, FN_BWD, "dkey", b->dkey, 3, wk, "as key"))) ||
        (b->dvalue &&
         (st = mha__check_tensor(ctx, FN_BWD, "dvalue", b->dvalue, 3, wv, "as value"))))
        return st;
    const mha__attn_arg in[1] = {{"dout", b->dout}};
    const mha__attn_arg out[3] = {{"dquery", b->dquery}, {"dkey", b->dkey}, {"dvalue", b->dvalue}};
    if ((st = mha__attn_check_aliases(ctx, FN_BWD, out, 3, in, 1)) ||
        (st = mha__module_check_outputs(ctx, FN_BWD, m, out, 3, 1)))
        return st;
    return mha__module_check_grads(ctx, FN_BWD, m, b->dout); /* gw mirrors them by address */
}

static mha_status bwd_agree(mha__mpi_call *c, const mha_module *m) {
    const saved *s = m->mpi_saved;
    const mha__fp fp[] = {
        {"m's embed_dim", MHA__FP_INT, MHA_ERR_INVALID_ARG, m->cfg.embed_dim},
        {"m's kdim", MHA__FP_INT, MHA_ERR_INVALID_ARG, m->cfg.kdim},
        {"m's vdim", MHA__FP_INT, MHA_ERR_INVALID_ARG, m->cfg.vdim},
        {"m's bias", MHA__FP_INT, MHA_ERR_INVALID_ARG, m->cfg.bias},
        {"the saved forward's key", MHA__FP_GIVEN, MHA_ERR_STATE, !s->self},
        {"dout.shape[0]", MHA__FP_INT, MHA_ERR_STATE, s->B},
        {"dout.shape[1]", MHA__FP_INT, MHA_ERR_STATE, s->Lr},
        {"the saved forward's key.shape[1]", MHA__FP_INT, MHA_ERR_STATE, s->Sr},
    };
    return mha__mpi_agree_fp(c, fp, (int)(sizeof fp / sizeof fp[0]));
}

static mha_status bwd_alloc(mha__mpi_call *c, const mha_module *m, bwd_call *b, void **mem) {
    const saved *s = m->mpi_saved;
    const int64_t E = m->cfg.embed_dim, BL = s->B * s->Lr, BS = s->self ? 0 : s->B * s->Sr;
    const int64_t T = param_total(m), rows = BL > s->B * s->Sr ? BL : s->B * s->Sr;
    if (T > INT32_MAX)
        return mha__err(c->ctx, MHA_ERR_UNSUPPORTED,
                        "%s: %lld parameters: too many for one MPI message", FN_BWD, (long long)T);
    mha__plan pl;
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, bwd_call, dy, sizeof(float), BL, E);
    MHA__PLAN_ADD(&pl, bwd_call, da, sizeof(float), BL, E);
    MHA__PLAN_ADD(&pl, bwd_call, dqkv, sizeof(float), BL, s->self ? 3 * E : E);
    MHA__PLAN_ADD(&pl, bwd_call, dk, sizeof(float), BS, E);
    MHA__PLAN_ADD(&pl, bwd_call, dv, sizeof(float), BS, E);
    MHA__PLAN_ADD(&pl, bwd_call, gw, sizeof(float), T, 1);
    MHA__PLAN_ADD(&pl, bwd_call, all, sizeof(float), T, c->P);
    MHA__PLAN_ADD(&pl, bwd_call, ones, sizeof(float), rows, 1);
    MHA__PLAN_ADD(&pl, bwd_call, gq, sizeof(float), b->dquery ? BL : 0, E);
    MHA__PLAN_ADD(&pl, bwd_call, gk, sizeof(float), b->dkey ? BS : 0, m->cfg.kdim);
    MHA__PLAN_ADD(&pl, bwd_call, gv, sizeof(float), b->dvalue ? BS : 0, m->cfg.vdim);
    mha_status st = mha__plan_alloc(&pl, c->ctx, FN_BWD, 1, mem);
    if (st) return st;
    mha__plan_point(&pl, *mem, 0, b);
    for (int64_t r = 0; r < rows; r++) b->ones[r] = 1;
    return MHA_OK;
}

/* g[1, n] = sum over the rows of A [rows, n] (row stride lda): a product with a row of ones. */
static mha_status col_sums(mha_ctx *ctx, mha_module *m, const bwd_call *b, float *g, const float *A,
                           int64_t lda, int64_t rows, int64_t n) {
    return mha__gemm_ex(ctx, &m->gws, 0, 0, 1, n, rows, 1.0f, b->ones, rows, A, lda, 0.0f, NULL, g,
                        n);
}

/* da = dy Wo;  dWo = dy^T a,  dbo = sum_rows dy   (this rank's rows). */
static mha_status bwd_out_proj(mha_ctx *ctx, mha_module *m, bwd_call *b) {
    const saved *s = m->mpi_saved;
    const int64_t E = m->cfg.embed_dim, BL = s->B * s->Lr;
    mha__tensor_to_f32(mha__ctx_kernels(ctx), b->dout, b->dy, mha__ctx_threads(ctx));
    mha_status st;
    if ((st = mha__gemm_ex(ctx, &m->gws, 0, 0, BL, E, E, 1.0f, b->dy, E, m->wo, E, 0.0f, NULL,
                           b->da, E)) ||
        (st = mha__gemm_ex(ctx, &m->gws, 1, 0, E, E, BL, 1.0f, b->dy, E, s->attn, E, 0.0f, NULL,
                           gw_of(m, b->gw, m->gwo), E)))
        return st;
    return m->gbo ? col_sums(ctx, m, b, gw_of(m, b->gw, m->gbo), b->dy, E, BL, E) : MHA_OK;
}

/* The core's backward over the ranks (it agrees on its own). */
static mha_status bwd_core(mha__mpi_call *c, mha_module *m, bwd_call *b) {
    const saved *s = m->mpi_saved;
    const int64_t E = m->cfg.embed_dim, H = m->cfg.num_heads, D = E / H;
    const int64_t ld = s->self ? 3 * E : E;
    mha_tensor q, k, v;
    qkv_views(m, s, &q, &k, &v);
    mha_tensor o = heads(s->attn, s->B, H, s->Lr, D, E), dout = heads(b->da, s->B, H, s->Lr, D, E);
    mha_tensor dq = heads(b->dqkv, s->B, H, s->Lr, D, ld);
    mha_tensor dk = heads(s->self ? b->dqkv + E : b->dk, s->B, H, s->Sr, D, ld);
    mha_tensor dv = heads(s->self ? b->dqkv + 2 * E : b->dv, s->B, H, s->Sr, D, ld);
    int64_t ls[3] = {s->B, H, s->Lr};
    mha_tensor l = mha_tensor_make(s->lse, 3, ls);
    mha_mpi_stats rs;
    mha_status st = mha_mpi_attn_backward(c->ctx, c->comm, &s->ap, &q, &k, &v, &s->mask, &o, &l,
                                          &dout, &dq, &dk, &dv, &rs);
    c->st.compute_s += rs.compute_s, c->st.comm_wait_s += rs.comm_wait_s;
    c->st.work += rs.work, c->st.bytes_sent += rs.bytes_sent, c->st.steps += rs.steps;
    return st;
}

/* d [rows, X] = dY W (dY [rows, n] row stride ldd, W [n, X]) when the caller asked for it (t). */
static mha_status input_grad(mha_ctx *ctx, mha_module *m, const mha_tensor *t, float *d,
                             const float *dy, int64_t ldd, int64_t rows, int64_t n, int64_t X,
                             const float *W) {
    if (!t) return MHA_OK;
    return mha__gemm_ex(ctx, &m->gws, 0, 0, rows, X, n, 1.0f, dy, ldd, W, X, 0.0f, NULL, d, X);
}

/* The input gradients into the caller's views. */
static void bwd_write_inputs(mha_ctx *ctx, const bwd_call *b) {
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    const int nt = mha__ctx_threads(ctx);
    if (b->dquery) mha__tensor_from_f32(kern, b->gq, b->dquery, nt);
    if (b->dkey) mha__tensor_from_f32(kern, b->gk, b->dkey, nt);
    if (b->dvalue) mha__tensor_from_f32(kern, b->gv, b->dvalue, nt);
}

/* Input gradients (this rank's rows, into gq, gk, gv) and this rank's share of the
 * in-projection's gradients: module.c's bwd_inputs and bwd_in_proj. */
static mha_status bwd_in_proj(mha_ctx *ctx, mha_module *m, bwd_call *b) {
    const saved *s = m->mpi_saved;
    const int64_t E = m->cfg.embed_dim, kd = m->cfg.kdim, vd = m->cfg.vdim;
    const int64_t BL = s->B * s->Lr, BS = s->B * s->Sr;
    float *gbin = gw_of(m, b->gw, m->gbin);
    mha_status st;
    if (s->self) {
        if ((st = input_grad(ctx, m, b->dquery, b->gq, b->dqkv, 3 * E, BL, 3 * E, E, m->wq)) ||
            (st = mha__gemm_ex(ctx, &m->gws, 1, 0, 3 * E, E, BL, 1.0f, b->dqkv, 3 * E, s->x, E,
                               0.0f, NULL, gw_of(m, b->gw, m->gwq), E)))
            return st;
        return gbin ? col_sums(ctx, m, b, gbin, b->dqkv, 3 * E, BL, 3 * E) : MHA_OK;
    }
    if ((st = input_grad(ctx, m, b->dquery, b->gq, b->dqkv, E, BL, E, E, m->wq)) ||
        (st = input_grad(ctx, m, b->dkey, b->gk, b->dk, E, BS, E, kd, m->wk)) ||
        (st = input_grad(ctx, m, b->dvalue, b->gv, b->dv, E, BS, E, vd, m->wv)) ||
        (st = mha__gemm_ex(ctx, &m->gws, 1, 0, E, E, BL, 1.0f, b->dqkv, E, s->x, E, 0.0f, NULL,
                           gw_of(m, b->gw, m->gwq), E)) ||
        (st = mha__gemm_ex(ctx, &m->gws, 1, 0, E, kd, BS, 1.0f, b->dk, E, s->xk, kd, 0.0f, NULL,
                           gw_of(m, b->gw, m->gwk), kd)) ||
        (st = mha__gemm_ex(ctx, &m->gws, 1, 0, E, vd, BS, 1.0f, b->dv, E, s->xv, vd, 0.0f, NULL,
                           gw_of(m, b->gw, m->gwv), vd)))
        return st;
    if (gbin && ((st = col_sums(ctx, m, b, gbin, b->dqkv, E, BL, E)) ||
                 (st = col_sums(ctx, m, b, gbin + E, b->dk, E, BS, E)) ||
                 (st = col_sums(ctx, m, b, gbin + 2 * E, b->dv, E, BS, E))))
        return st;
    return MHA_OK;
}

/* Every rank's parameter gradients, summed in rank order, added to the module's. */
static mha_status bwd_reduce(mha__mpi_call *c, mha_module *m, bwd_call *b) {
    const int64_t T = param_total(m);
    if (MPI_Allgather(b->gw, (int)T, MPI_FLOAT, b->all, (int)T, MPI_FLOAT, c->comm) != MPI_SUCCESS)
        return mha__err(c->ctx, MHA_ERR_IO, "%s: MPI_Allgather failed (the parameter gradients)",
                        FN_BWD);
    for (int64_t e = 0; e < T; e++) {
        float g = b->all[e];
        for (int r = 1; r < c->P; r++) g += b->all[(int64_t)r * T + e];
        b->gw[e] = g;
    }
    const float *src = b->gw;
    for (int i = 0; i < m->nparams; src += m->p[i].numel, i++)
        for (int64_t e = 0; e < m->p[i].numel; e++) ((float *)m->p[i].grad)[e] += src[e];
    return MHA_OK;
}

mha_status mha_mpi_module_backward(mha_ctx *ctx, MPI_Comm comm, mha_module *m,
                                   const mha_tensor *dout, mha_tensor *dquery, mha_tensor *dkey,
                                   mha_tensor *dvalue, mha_mpi_stats *stats) {
    mha__mpi_call c;
    mha_status st = mha__mpi_begin(&c, ctx, FN_BWD, comm);
    if (st) return mha__mpi_end(&c, st, stats);
    bwd_call b;
    memset(&b, 0, sizeof b);
    b.dout = dout, b.dquery = dquery, b.dkey = dkey, b.dvalue = dvalue;
    if ((st = mha__mpi_agree(&c, bwd_check(ctx, m, &b))) || (st = bwd_agree(&c, m)))
        return mha__mpi_end(&c, st, stats);
    m->gws.fn = FN_BWD;
    void *mem = NULL;
    if ((st = mha__mpi_agree(&c, bwd_alloc(&c, m, &b, &mem)))) {
        mha__free(mem);
        return mha__mpi_end(&c, st, stats);
    }
    double t = mha__mpi_now();
    st = mha__mpi_agree(&c, bwd_out_proj(ctx, m, &b));
    c.st.compute_s += mha__mpi_now() - t;
    if (!st) st = bwd_core(&c, m, &b);
    t = mha__mpi_now();
    if (!st) st = mha__mpi_agree(&c, bwd_in_proj(ctx, m, &b));
    c.st.compute_s += mha__mpi_now() - t;
    /* the module's gradients and dquery, dkey, dvalue change only once every rank has all of
     * its own */
    if (!st) st = bwd_reduce(&c, m, &b);
    if (!st) bwd_write_inputs(ctx, &b), saved_drop(m);
    mha__free(mem);
    return mha__mpi_end(&c, st, stats);
}
