/* ring.c - mha_mpi_attn_forward and mha_mpi_attn_backward: ring attention over MPI
 * (include/mha_mpi.h; Liu et al., 2023), zigzag for causal.
 *
 * Rank r of P holds nch query chunks and nch key chunks (zigzag: nch = 2, chunks r and
 * 2P - 1 - r; contiguous: nch = 1, chunk r). At step s = 0 .. P - 1 it holds the key/value block
 * of rank o = r - s (mod P), its own at s = 0, and runs the core on each (query chunk a, key
 * chunk b) pair: in full (a > b, or no causal mask), causal (a == b) or not at all (a < b).
 * Each core call is a part of the one-process problem: the dropout mask is drawn at the
 * pair's global positions (mha__attn_origin {0, a * cq, b * ck}).
 *
 *   forward   out_ab, lse_ab = core(q_a, k_b, v_b)            per computed pair
 *             (out, lse) = merge((out, lse), (out_ab, lse_ab))   by log-sum-exp, float32
 *   backward  dq_a, dk_b, dv_b = core'(q_a, k_b, v_b, out_a, lse_a, dout_a)  (final out, lse)
 *             dq += dq_a (kept);  the block's dk, dv += dk_b, dv_b  (travelling with it)
 *
 * THE BLOCK (one contiguous buffer, what travels): k [B, Hkv, Sr, D], v [B, Hkv, Sr, Dv] float32,
 * and the key padding as nch contiguous [B, ck] byte arrays (chunk-major: the core takes a
 * contiguous [B, S] key_padding). In the backward the block's dk [B, Hkv, Sr, D] and
 * dv [B, Hkv, Sr, Dv] travel in a second buffer, one step behind the block: they are sent after
 * this rank's contribution is added (the block itself is sent before the compute, so its
 * transfer overlaps it), and after the last step they arrive at the block's owner.
 */
#include "mpi/mpi_internal.h"

#include "attn/attn_common.h"
#include "core/plan.h"

#include <math.h>
#include <string.h>

static const char *const FN_FWD = "mha_mpi_attn_forward";
static const char *const FN_BWD = "mha_mpi_attn_backward";

enum {
    TAG_BLOCK = 11,
    TAG_GRAD = 12
};

/* A validated ring call. */
typedef struct {
    mha__mpi_call *c;
    int64_t B, H, Hkv, Lr, Sr, D, Dv;
    int zz;         /* zigzag (causal) */
    int nch;        /* chunks per shard */
    int64_t cq, ck; /* query rows per chunk, keys per chunk */
    mha_attn_params p;
    mha_causal causal;
    const uint8_t *pad; /* the caller's key_padding [B, Sr], or NULL */
    /* the block: byte offsets of k, v and the padding, and its size */
    size_t k_off, v_off, pad_off, block_bytes;
    size_t grad_bytes; /* the travelling dk | dv */
} ring;

/* The global chunk index of local chunk li of rank r. */
static int64_t chunk_id(const ring *g, int r, int li) {
    return g->zz && li == 1 ? 2 * (int64_t)g->c->P - 1 - r : r;
}

/* How query chunk a meets key chunk b: 0 skipped, 1 in full, 2 causal (the diagonal). */
static int pair_kind(const ring *g, int64_t a, int64_t b) {
    if (!g->zz) return 1;
    return a > b ? 1 : a == b ? 2 : 0;
}

/* Multiply-adds of a pair (causal: the allowed half, diagonal included). */
static double pair_work(const ring *g, int kind) {
    const double n =
        kind == 2 ? (double)g->cq * (double)(g->cq + 1) / 2 : (double)g->cq * (double)g->ck;
    return (double)g->B * (double)g->H * n * (double)(g->D + g->Dv);
}

/* ---------------------------------------------------------------------------------------------
 * Validation and agreement
 * ------------------------------------------------------------------------------------------- */

/* q, k, v, mask and p on this rank (the call c begun): sizes into g. */
static mha_status check_qkv(ring *g, mha__mpi_call *c, const mha_attn_params *p,
                            const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                            const mha_mask *mask) {
    memset(g, 0, sizeof *g);
    g->c = c;
    mha__attn_problem pr;
    mha_status st;
    if ((st = mha__attn_check_inputs(c->ctx, c->fn, p, q, k, v, mask, &pr))) return st;
    if (pr.dt != MHA_DTYPE_F32)
        return mha__err(c->ctx, MHA_ERR_UNSUPPORTED,
                        "%s: q.dtype: got %s, expected float32 (the MPI calls take float32)", c->fn,
                        mha_dtype_name(pr.dt));
    if ((st = mha__mpi_check_mask(c->ctx, c->fn, mask))) return st;
    g->B = pr.B, g->H = pr.H, g->Hkv = pr.Hkv, g->Lr = pr.L, g->Sr = pr.S;
    g->D = pr.D, g->Dv = pr.Dv;
    g->p = p ? *p : mha_attn_params_default();
    g->causal = mask ? mask->causal : MHA_CAUSAL_NONE;
    g->pad = mask ? mask->key_padding : NULL;
    g->zz = mha_mpi_layout_for(mask) == MHA_MPI_ZIGZAG;
    g->nch = g->zz ? 2 : 1;
    if (g->zz && g->Sr != g->Lr)
        return mha__err(c->ctx, MHA_ERR_SHAPE,
                        "%s: k.shape[2]: got %lld, expected %lld (causal across ranks: the keys of "
                        "the queries' shard, L == S)",
                        c->fn, (long long)g->Sr, (long long)g->Lr);
    if (g->zz && g->Lr % 2 != 0)
        return mha__err(c->ctx, MHA_ERR_SHAPE,
                        "%s: q.shape[2]: got %lld, expected an even shard length (zigzag: chunks "
                        "r and 2P-1-r of the sequence cut into 2P, so L %% 2P == 0)",
                        c->fn, (long long)g->Lr);
    g->cq = g->Lr / g->nch, g->ck = g->Sr / g->nch;
    /* the block's layout, its size checked once */
    mha__plan pl;
    typedef struct {
        float *k, *v;
        uint8_t *pad;
    } block_views;
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, block_views, k, sizeof(float), g->B * g->Hkv * g->Sr, g->D);
    MHA__PLAN_ADD(&pl, block_views, v, sizeof(float), g->B * g->Hkv * g->Sr, g->Dv);
    MHA__PLAN_ADD(&pl, block_views, pad, 1, g->pad ? g->B : 0, g->Sr);
    size_t gk, gv;
    if (pl.bad || !mha__mul_size((size_t)(g->B * g->Hkv * g->Sr), (size_t)g->D, &gk) ||
        !mha__mul_size((size_t)(g->B * g->Hkv * g->Sr), (size_t)g->Dv, &gv) ||
        !mha__add_size(gk, gv, &g->grad_bytes) ||
        !mha__mul_size(g->grad_bytes, sizeof(float), &g->grad_bytes) ||
        pl.per_copy > mha__xfer_max_bytes() || g->grad_bytes > mha__xfer_max_bytes())
        return mha__err(c->ctx, MHA_ERR_UNSUPPORTED,
                        "%s: a key/value block of %lld x %lld x %lld x (%lld + %lld): too large "
                        "for one ring message (use more ranks)",
                        c->fn, (long long)g->B, (long long)g->Hkv, (long long)g->Sr,
                        (long long)g->D, (long long)g->Dv);
    g->k_off = pl.reg[0].offset, g->v_off = pl.reg[1].offset, g->pad_off = pl.reg[2].offset;
    g->block_bytes = pl.per_copy;
    return MHA_OK;
}

/* The ranks' fingerprints of a validated call (extra: the lse's presence, forward). */
static mha_status agree_ring(ring *g, int has_lse) {
    const mha__fp fp[] = {
        {"q.shape[0]", MHA__FP_INT, MHA_ERR_SHAPE, g->B},
        {"q.shape[1]", MHA__FP_INT, MHA_ERR_SHAPE, g->H},
        {"q.shape[2]", MHA__FP_INT, MHA_ERR_SHAPE, g->Lr},
        {"q.shape[3]", MHA__FP_INT, MHA_ERR_SHAPE, g->D},
        {"k.shape[1]", MHA__FP_INT, MHA_ERR_SHAPE, g->Hkv},
        {"k.shape[2]", MHA__FP_INT, MHA_ERR_SHAPE, g->Sr},
        {"v.shape[3]", MHA__FP_INT, MHA_ERR_SHAPE, g->Dv},
        {"mask->causal", MHA__FP_CAUSAL, MHA_ERR_INVALID_ARG, g->causal},
        {"mask->key_padding", MHA__FP_GIVEN, MHA_ERR_INVALID_ARG, g->pad != NULL},
        {"lse", MHA__FP_GIVEN, MHA_ERR_INVALID_ARG, has_lse},
        {"p->scale", MHA__FP_FLOAT, MHA_ERR_INVALID_ARG, mha__fp_float(g->p.scale)},
        {"p->dropout_p", MHA__FP_FLOAT, MHA_ERR_INVALID_ARG, mha__fp_float(g->p.dropout_p)},
        {"p->seed", MHA__FP_INT, MHA_ERR_INVALID_ARG, (int64_t)g->p.seed},
        {"p->offset", MHA__FP_INT, MHA_ERR_INVALID_ARG, (int64_t)g->p.offset},
        {"p->softcap", MHA__FP_FLOAT, MHA_ERR_INVALID_ARG, mha__fp_float(g->p.softcap)},
    };
    return mha__mpi_agree_fp(g->c, fp, (int)(sizeof fp / sizeof fp[0]));
}

/* After this rank's checks (st): the agreements, and the workspace (alloc) allocated everywhere
 * or nowhere (*mem NULL then). */
static mha_status ring_prepare(ring *g, mha_status st, int has_lse,
                               mha_status (*alloc)(const ring *, void **, void *), void **mem,
                               void *ws) {
    *mem = NULL;
    if ((st = mha__mpi_agree(g->c, st)) || (st = agree_ring(g, has_lse))) return st;
    if ((st = mha__mpi_agree(g->c, alloc(g, mem, ws)))) {
        mha__free(*mem);
        *mem = NULL;
    }
    return st;
}

/* Posts step s's exchange of the blocks (none after the last step): the block at hand to the next
 * rank, the next step's from the previous one. */
static mha_status block_post(const ring *g, mha__xfer *x, int s, void *const blk[2]) {
    mha__mpi_call *c = g->c;
    const int P = c->P;
    mha__xfer_init(x);
    if (s == P - 1) return MHA_OK;
    mha_status st =
        mha__xfer_recv(c, x, blk[(s + 1) % 2], g->block_bytes, (c->rank + P - 1) % P, TAG_BLOCK);
    return st ? st : mha__xfer_send(c, x, blk[s % 2], g->block_bytes, (c->rank + 1) % P, TAG_BLOCK);
}

/* ---------------------------------------------------------------------------------------------
 * Views
 * ------------------------------------------------------------------------------------------- */

/* Rows [r0, r0 + n) of a [B, X, R, Y] view. */
static mha_tensor rows_view(const mha_tensor *t, int64_t r0, int64_t n) {
    mha_tensor v = *t;
    v.data = t->data + r0 * t->stride[2];
    v.shape[2] = n;
    return v;
}

/* Rows [r0, r0 + n) of a [B, H, R] lse view. */
static mha_tensor lse_rows(const mha_tensor *t, int64_t r0, int64_t n) {
    mha_tensor v = *t;
    v.data = t->data + r0 * t->stride[2];
    v.shape[2] = n;
    return v;
}

/* A contiguous [B, X, R, Y] view of data. */
static mha_tensor flat4(float *data, int64_t B, int64_t X, int64_t R, int64_t Y) {
    int64_t s[4] = {B, X, R, Y};
    return mha_tensor_make(data, 4, s);
}

/* Key chunk lk of a block: k, v views [B, Hkv, ck, D / Dv] and its padding [B, ck]. */
typedef struct {
    mha_tensor k, v;
    const uint8_t *pad;
} chunk_views;

static chunk_views block_chunk(const ring *g, void *block, int lk) {
    chunk_views x;
    float *k = (float *)((char *)block + g->k_off), *v = (float *)((char *)block + g->v_off);
    x.k = flat4(k, g->B, g->Hkv, g->Sr, g->D);
    x.k = rows_view(&x.k, lk * g->ck, g->ck);
    x.v = flat4(v, g->B, g->Hkv, g->Sr, g->Dv);
    x.v = rows_view(&x.v, lk * g->ck, g->ck);
    x.pad = g->pad ? (const uint8_t *)block + g->pad_off + (size_t)(lk * g->B * g->ck) : NULL;
    return x;
}

/* This rank's block: its k and v, and its key padding chunk-major. */
static void block_pack(const ring *g, const mha_tensor *k, const mha_tensor *v, void *block) {
    const int nt = mha__ctx_threads(g->c->ctx);
    const mha_kernels *kern = mha__ctx_kernels(g->c->ctx);
    mha__tensor_to_f32(kern, k, (float *)((char *)block + g->k_off), nt);
    mha__tensor_to_f32(kern, v, (float *)((char *)block + g->v_off), nt);
    if (!g->pad) return;
    uint8_t *pad = (uint8_t *)block + g->pad_off;
    for (int lk = 0; lk < g->nch; lk++)
        for (int64_t b = 0; b < g->B; b++)
            memcpy(pad + (lk * g->B + b) * g->ck, g->pad + b * g->Sr + lk * g->ck, (size_t)g->ck);
}

/* The core's mask for a pair of kind `kind` on key chunk x. */
static mha_mask pair_mask(const chunk_views *x, int kind) {
    mha_mask m = mha_mask_default();
    m.causal = kind == 2 ? MHA_CAUSAL_TOP_LEFT : MHA_CAUSAL_NONE;
    m.key_padding = x->pad;
    return m;
}

/* A computed (query chunk, key chunk) pair of a step: local chunks li, lk, global a, b. */
typedef struct {
    int li, lk, kind;
    int64_t a, b;
    chunk_views x; /* key chunk lk of the block */
    mha_mask m;    /* the core's mask for the pair */
} ring_pair;

/* The pairs this rank computes with the block of rank o (in blk), in a fixed order: their
 * number (at most 4) into n. */
static int step_pairs(const ring *g, void *blk, int o, ring_pair pr[4]) {
    int n = 0;
    for (int li = 0; li < g->nch; li++)
        for (int lk = 0; lk < g->nch; lk++) {
            ring_pair *x = &pr[n];
            x->li = li, x->lk = lk;
            x->a = chunk_id(g, g->c->rank, li), x->b = chunk_id(g, o, lk);
            x->kind = pair_kind(g, x->a, x->b);
            if (!x->kind) continue;
            x->x = block_chunk(g, blk, lk);
            x->m = pair_mask(&x->x, x->kind);
            n++;
        }
    return n;
}

/* ---------------------------------------------------------------------------------------------
 * Forward
 * ------------------------------------------------------------------------------------------- */

/* Merges rows n of a partial result (o [n, Dv], l [n]) into the running (acc, lacc), by
 * log-sum-exp: a side with lse -inf (no key so far) contributes nothing, so a row masked
 * everywhere stays 0 with lse -inf. */
static void merge_rows(int64_t n, int64_t Dv, float *acc, float *lacc, const float *o,
                       const float *l) {
    for (int64_t r = 0; r < n; r++) {
        const float la = lacc[r], lb = l[r];
        float *a = acc + r * Dv;
        const float *b = o + r * Dv;
        if (lb == -INFINITY) continue;
        if (la == -INFINITY) {
            memcpy(a, b, sizeof(float) * (size_t)Dv);
            lacc[r] = lb;
            continue;
        }
        const double m = la > lb ? la : lb;
        const double lse = m + log(exp((double)la - m) + exp((double)lb - m));
        const float wa = (float)exp((double)la - lse), wb = (float)exp((double)lb - lse);
        for (int64_t x = 0; x < Dv; x++) a[x] = a[x] * wa + b[x] * wb;
        lacc[r] = (float)lse;
    }
}

typedef struct {
    void *blk[2];      /* the ring's two blocks */
    float *acc, *lacc; /* running out [B, H, Lr, Dv] and lse [B, H, Lr] */
    float *po, *plse;  /* a pair's out [B, H, cq, Dv] and lse [B, H, cq] */
} fwd_ws;

static mha_status fwd_alloc(const ring *g, void **mem, void *w) {
    mha__plan pl;
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, fwd_ws, blk[0], 1, 1, (int64_t)g->block_bytes);
    MHA__PLAN_ADD(&pl, fwd_ws, blk[1], 1, g->c->P > 1, (int64_t)g->block_bytes);
    MHA__PLAN_ADD(&pl, fwd_ws, acc, sizeof(float), g->B * g->H * g->Lr, g->Dv);
    MHA__PLAN_ADD(&pl, fwd_ws, lacc, sizeof(float), g->B * g->H, g->Lr);
    MHA__PLAN_ADD(&pl, fwd_ws, po, sizeof(float), g->B * g->H * g->cq, g->Dv);
    MHA__PLAN_ADD(&pl, fwd_ws, plse, sizeof(float), g->B * g->H, g->cq);
    mha_status st = mha__plan_alloc(&pl, g->c->ctx, g->c->fn, 1, mem);
    if (st) return st;
    mha__plan_point(&pl, *mem, 0, w);
    return MHA_OK;
}

/* Every computed pair of this rank's query chunks with the block of rank o (in blk). */
static mha_status fwd_step(const ring *g, const mha_tensor *q, fwd_ws *w, void *blk, int o) {
    mha__mpi_call *c = g->c;
    ring_pair pr[4];
    for (int i = 0, n = step_pairs(g, blk, o, pr); i < n; i++) {
        const ring_pair *x = &pr[i];
        const int64_t i0 = x->li * g->cq, ls[3] = {g->B, g->H, g->cq};
        mha_tensor qa = rows_view(q, i0, g->cq), po = flat4(w->po, g->B, g->H, g->cq, g->Dv);
        mha_tensor pl = mha_tensor_make(w->plse, 3, ls);
        mha_status st =
            mha__attn_forward_seq(c->ctx, c->fn, &g->p, &qa, &x->x.k, &x->x.v, &x->m, &po, &pl,
                                  (mha__attn_origin){0, x->a * g->cq, x->b * g->ck});
        if (st) return st;
        c->st.work += pair_work(g, x->kind);
        mha__mpi_progress(c); /* the ring's transfers move on while the next pair computes */
        const int nt = mha__ctx_threads(c->ctx);
        (void)nt; /* (without OpenMP) */
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && g->B * g->H > 1)
        for (int64_t bh = 0; bh < g->B * g->H; bh++)
            merge_rows(g->cq, g->Dv, w->acc + (bh * g->Lr + i0) * g->Dv, w->lacc + bh * g->Lr + i0,
                       w->po + bh * g->cq * g->Dv, w->plse + bh * g->cq);
    }
    return MHA_OK;
}

/* The ring: P steps, the next block's transfer posted before each step's compute. A compute
 * error stops the compute, not the transfers (the others wait for them). */
static mha_status fwd_ring(const ring *g, const mha_tensor *q, fwd_ws *w) {
    mha__mpi_call *c = g->c;
    const int P = c->P;
    mha_status err = MHA_OK, st;
    for (int64_t x = 0; x < g->B * g->H * g->Lr; x++) w->lacc[x] = -INFINITY;
    memset(w->acc, 0, sizeof(float) * (size_t)(g->B * g->H * g->Lr * g->Dv));
    for (int s = 0; s < P; s++) {
        mha__xfer x;
        if ((st = block_post(g, &x, s, w->blk))) return st;
        const double t = mha__mpi_now();
        if (!err) err = fwd_step(g, q, w, w->blk[s % 2], (c->rank + P - s) % P);
        c->st.compute_s += mha__mpi_now() - t;
        c->st.steps++;
        if ((st = mha__xfer_wait(c, &x, "the forward's key/value block"))) return st;
    }
    return err;
}

mha_status mha_mpi_attn_forward(mha_ctx *ctx, MPI_Comm comm, const mha_attn_params *p,
                                const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                const mha_mask *mask, mha_tensor *out, mha_tensor *lse,
                                mha_mpi_stats *stats) {
    mha__mpi_call c;
    mha_status st = mha__mpi_begin(&c, ctx, FN_FWD, comm);
    if (st) return mha__mpi_end(&c, st, stats);
    ring g;
    if (!(st = check_qkv(&g, &c, p, q, k, v, mask))) {
        int64_t wo[4] = {g.B, g.H, g.Lr, g.Dv}, wl[3] = {g.B, g.H, g.Lr};
        const mha__attn_arg ins[3] = {{"q", q}, {"k", k}, {"v", v}};
        const mha__attn_arg outs[2] = {{"out", out}, {"lse", lse}};
        if (!(st = mha__check_tensor(ctx, FN_FWD, "out", out, 4, wo, "[B, H, Lr, Dv]")) && lse)
            st = mha__check_tensor(ctx, FN_FWD, "lse", lse, 3, wl, "[B, H, Lr]");
        if (!st) st = mha__attn_check_aliases(ctx, FN_FWD, outs, 2, ins, 3);
    }
    void *mem;
    fwd_ws w;
    if ((st = ring_prepare(&g, st, lse != NULL, fwd_alloc, &mem, &w)))
        return mha__mpi_end(&c, st, stats);
    block_pack(&g, k, v, w.blk[0]);
    st = mha__mpi_agree(&c, fwd_ring(&g, q, &w));
    if (!st) {
        const int nt = mha__ctx_threads(ctx);
        const mha_kernels *kern = mha__ctx_kernels(ctx);
        mha__tensor_from_f32(kern, w.acc, out, nt);
        if (lse) mha__tensor_from_f32(kern, w.lacc, lse, nt);
    }
    mha__free(mem);
    return mha__mpi_end(&c, st, stats);
}

/* ---------------------------------------------------------------------------------------------
 * Backward
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    void *blk[2];           /* the ring's two blocks */
    float *grad[2];         /* the travelling dk | dv of the blocks */
    float *sg;              /* this step's contribution to the block's dk | dv */
    float *dq;              /* this rank's dq [B, H, Lr, D], summed over the steps */
    float *pdq, *pdk, *pdv; /* a pair's gradients [B, H, cq, D], [B, Hkv, ck, D / Dv] */
} bwd_ws;

static mha_status bwd_alloc(const ring *g, void **mem, void *w) {
    const int64_t nk = g->B * g->Hkv * g->Sr, two = g->c->P > 1;
    mha__plan pl;
    mha__plan_init(&pl);
    MHA__PLAN_ADD(&pl, bwd_ws, blk[0], 1, 1, (int64_t)g->block_bytes);
    MHA__PLAN_ADD(&pl, bwd_ws, blk[1], 1, two, (int64_t)g->block_bytes);
    MHA__PLAN_ADD(&pl, bwd_ws, grad[0], sizeof(float), nk, g->D + g->Dv);
    MHA__PLAN_ADD(&pl, bwd_ws, grad[1], sizeof(float), two ? nk : 0, g->D + g->Dv);
    MHA__PLAN_ADD(&pl, bwd_ws, sg, sizeof(float), nk, g->D + g->Dv);
    MHA__PLAN_ADD(&pl, bwd_ws, dq, sizeof(float), g->B * g->H * g->Lr, g->D);
    MHA__PLAN_ADD(&pl, bwd_ws, pdq, sizeof(float), g->B * g->H * g->cq, g->D);
    MHA__PLAN_ADD(&pl, bwd_ws, pdk, sizeof(float), g->B * g->Hkv * g->ck, g->D);
    MHA__PLAN_ADD(&pl, bwd_ws, pdv, sizeof(float), g->B * g->Hkv * g->ck, g->Dv);
    mha_status st = mha__plan_alloc(&pl, g->c->ctx, g->c->fn, 1, mem);
    if (st) return st;
    mha__plan_point(&pl, *mem, 0, w);
    return MHA_OK;
}

/* rows n of dst (row stride ldd, n rows of X) += src (contiguous rows of X), for every one of
 * nb leading (batch, head) entries: dst entry e at dst + e * lde, src entry e at src + e * n X;
 * on nt threads (each element's sum is the same for any nt). */
static void add_rows(int nt, int64_t nb, int64_t n, int64_t X, float *dst, int64_t lde,
                     const float *src) {
    (void)nt; /* (without OpenMP) */
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && nb > 1)
    for (int64_t e = 0; e < nb; e++)
        for (int64_t x = 0; x < n * X; x++) dst[e * lde + x] += src[e * n * X + x];
}

/* This rank's queries against the block of rank o: dq accumulated, the block's contribution
 * into w->sg (dk [B, Hkv, Sr, D] then dv [B, Hkv, Sr, Dv]). */
static mha_status bwd_step(const ring *g, const mha_tensor *q, const mha_tensor *out,
                           const mha_tensor *lse, const mha_tensor *dout, bwd_ws *w, void *blk,
                           int o) {
    mha__mpi_call *c = g->c;
    const int64_t nkv = g->B * g->Hkv, nk = nkv * g->Sr;
    float *sdk = w->sg, *sdv = w->sg + nk * g->D;
    memset(w->sg, 0, sizeof(float) * (size_t)(nk * (g->D + g->Dv)));
    ring_pair pr[4];
    for (int i = 0, n = step_pairs(g, blk, o, pr); i < n; i++) {
        const ring_pair *x = &pr[i];
        const int64_t i0 = x->li * g->cq, j0 = x->lk * g->ck;
        mha_tensor qa = rows_view(q, i0, g->cq), oa = rows_view(out, i0, g->cq);
        mha_tensor doa = rows_view(dout, i0, g->cq), la = lse_rows(lse, i0, g->cq);
        mha_tensor pdq = flat4(w->pdq, g->B, g->H, g->cq, g->D);
        mha_tensor pdk = flat4(w->pdk, g->B, g->Hkv, g->ck, g->D);
        mha_tensor pdv = flat4(w->pdv, g->B, g->Hkv, g->ck, g->Dv);
        mha_status st = mha__attn_backward_seq(c->ctx, c->fn, &g->p, &qa, &x->x.k, &x->x.v, &x->m,
                                               &oa, &la, &doa, &pdq, &pdk, &pdv,
                                               (mha__attn_origin){0, x->a * g->cq, x->b * g->ck});
        if (st) return st;
        c->st.work += 2 * pair_work(g, x->kind);
        mha__mpi_progress(c);
        const int nt = mha__ctx_threads(c->ctx);
        add_rows(nt, g->B * g->H, g->cq, g->D, w->dq + i0 * g->D, g->Lr * g->D, w->pdq);
        add_rows(nt, nkv, g->ck, g->D, sdk + j0 * g->D, g->Sr * g->D, w->pdk);
        add_rows(nt, nkv, g->ck, g->Dv, sdv + j0 * g->Dv, g->Sr * g->Dv, w->pdv);
    }
    return MHA_OK;
}

/* The ring: the blocks travel as in the forward; the block's gradient one step behind (sent
 * once this rank's contribution is added, received while the next step computes); after the
 * last step every rank receives its own block's gradient, summed over the ranks in ring order
 * from the owner on. *final points at it. */
static mha_status bwd_ring(const ring *g, const mha_tensor *q, const mha_tensor *out,
                           const mha_tensor *lse, const mha_tensor *dout, bwd_ws *w,
                           float **final) {
    mha__mpi_call *c = g->c;
    const int P = c->P, next = (c->rank + 1) % P, prev = (c->rank + P - 1) % P;
    const size_t nkv = (size_t)(g->B * g->Hkv * g->Sr * (g->D + g->Dv));
    mha_status err = MHA_OK, st;
    mha__xfer gs[2], gr; /* the gradient sends of the last two steps, its receive */
    mha__xfer_init(&gs[0]), mha__xfer_init(&gs[1]), mha__xfer_init(&gr);
    memset(w->dq, 0, sizeof(float) * (size_t)(g->B * g->H * g->Lr * g->D));
    for (int s = 0; s < P; s++) {
        float *gcur = w->grad[s % 2];
        mha__xfer x;
        if ((st = block_post(g, &x, s, w->blk))) return st;
        /* the block's gradient so far, from the previous rank (into the buffer whose send of
         * two steps ago must be done) */
        if (s > 0 && ((st = mha__xfer_wait(c, &gs[s % 2], "the backward's dk, dv")) ||
                      (st = mha__xfer_recv(c, &gr, gcur, nkv * sizeof(float), prev, TAG_GRAD))))
            return st;
        double t = mha__mpi_now();
        if (!err) err = bwd_step(g, q, out, lse, dout, w, w->blk[s % 2], (c->rank + P - s) % P);
        c->st.compute_s += mha__mpi_now() - t;
        c->st.steps++;
        if ((st = mha__xfer_wait(c, &gr, "the backward's dk, dv"))) return st;
        t = mha__mpi_now();
        if (s == 0) memcpy(gcur, w->sg, nkv * sizeof(float));
        else
            for (size_t e = 0; e < nkv; e++) gcur[e] += w->sg[e];
        c->st.compute_s += mha__mpi_now() - t;
        if (P > 1 &&
            (st = mha__xfer_send(c, &gs[s % 2], gcur, nkv * sizeof(float), next, TAG_GRAD)))
            return st;
        if ((st = mha__xfer_wait(c, &x, "the backward's key/value block"))) return st;
    }
    *final = w->grad[0];
    if (P > 1) { /* the own block's gradient, back from the last rank that added to it */
        *final = w->grad[P % 2];
        if ((st = mha__xfer_wait(c, &gs[P % 2], "the backward's dk, dv")) ||
            (st = mha__xfer_recv(c, &gr, *final, nkv * sizeof(float), prev, TAG_GRAD)) ||
            (st = mha__xfer_wait(c, &gr, "the backward's dk, dv")) ||
            (st = mha__xfer_wait(c, &gs[(P + 1) % 2], "the backward's dk, dv")))
            return st;
    }
    return err;
}

mha_status mha_mpi_attn_backward(mha_ctx *ctx, MPI_Comm comm, const mha_attn_params *p,
                                 const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                 const mha_mask *mask, const mha_tensor *out, const mha_tensor *lse,
                                 const mha_tensor *dout, mha_tensor *dq, mha_tensor *dk,
                                 mha_tensor *dv, mha_mpi_stats *stats) {
    mha__mpi_call c;
    mha_status st = mha__mpi_begin(&c, ctx, FN_BWD, comm);
    if (st) return mha__mpi_end(&c, st, stats);
    ring g;
    if (!(st = check_qkv(&g, &c, p, q, k, v, mask))) {
        int64_t wo[4] = {g.B, g.H, g.Lr, g.Dv}, wl[3] = {g.B, g.H, g.Lr};
        int64_t wq[4] = {g.B, g.H, g.Lr, g.D}, wk[4] = {g.B, g.Hkv, g.Sr, g.D};
        int64_t wv[4] = {g.B, g.Hkv, g.Sr, g.Dv};
        const mha__attn_arg ins[6] = {{"q", q},     {"k", k},     {"v", v},
                                      {"out", out}, {"lse", lse}, {"dout", dout}};
        const mha__attn_arg outs[3] = {{"dq", dq}, {"dk", dk}, {"dv", dv}};
        if ((st = mha__check_tensor(ctx, FN_BWD, "out", out, 4, wo, "as the forward's")) ||
            (st = mha__check_tensor(ctx, FN_BWD, "lse", lse, 3, wl, "as the forward's")) ||
            (st = mha__check_tensor(ctx, FN_BWD, "dout", dout, 4, wo, "as out")) ||
            (st = mha__check_tensor(ctx, FN_BWD, "dq", dq, 4, wq, "as q")) ||
            (st = mha__check_tensor(ctx, FN_BWD, "dk", dk, 4, wk, "as k")) ||
            (st = mha__check_tensor(ctx, FN_BWD, "dv", dv, 4, wv, "as v")))
            ;
        else st = mha__attn_check_aliases(ctx, FN_BWD, outs, 3, ins, 6);
    }
    void *mem;
    bwd_ws w;
    if ((st = ring_prepare(&g, st, 1, bwd_alloc, &mem, &w))) return mha__mpi_end(&c, st, stats);
    block_pack(&g, k, v, w.blk[0]);
    float *final = NULL;
    st = mha__mpi_agree(&c, bwd_ring(&g, q, out, lse, dout, &w, &final));
    if (!st) {
        const int nt = mha__ctx_threads(ctx);
        const mha_kernels *kern = mha__ctx_kernels(ctx);
        mha__tensor_from_f32(kern, w.dq, dq, nt);
        mha__tensor_from_f32(kern, final, dk, nt);
        mha__tensor_from_f32(kern, final + g.B * g.Hkv * g.Sr * g.D, dv, nt);
    }
    mha__free(mem);
    return mha__mpi_end(&c, st, stats);
}
