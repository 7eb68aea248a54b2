/* attn_forward.c - mha_attn_forward: out = dropout(softmax((scale q) k^T + mask)) v, as
 * FlashAttention-2 (Dao, 2023) in portable C over the kernel table's tile kernels.
 *
 * One task = one (batch, head, query tile of br rows); tasks are independent, so OpenMP hands
 * them to threads in any order and the result is the same for every thread count (the tile
 * grid is fixed by the table's fused tile sizes attn_fwd_br x attn_fwd_bc, never by the thread
 * count).
 * Per task, for each key tile of bc columns (tiles fully excluded by causality, key_lengths or
 * key_padding are skipped), on the table's fused kernel:
 *     Kp = the key tile packed by attn_kpack, cached per thread: a thread packs a (head, key
 *          tile) once and reuses it for all the query tiles of that head it runs
 *     attn_fwd: S = (scale q_tile) Kp^T, mask, m' = max(m, rowmax S), P = exp(S - m'),
 *          alpha = exp(m - m'), l = alpha l + rowsum P, acc = diag(alpha) acc + P v_tile
 *          (row block by row block, the scores' row maxima taken while in registers)
 *   with dropout, first keep[br, bc'] = the tile's keep decisions (attn_dropout: SIMD
 *     Philox, bc' = the keys the tile's last row may use), then attn_fwd_drop: the same step
 *     with l summing every P but acc += (P * keep) v_tile (the 1/(1-p) is folded into the
 *     final division)
 * then out = acc * (1/(1-p)) / l, lse = m + log(l) (l == 0: out 0, lse -inf; a NaN score makes
 * l NaN, and out and lse NaN as in PyTorch, never a silent 0). No L x S buffer:
 * the score tile stays in cache; the optional weights are recomputed tile by tile from lse
 * (attn_probs, then * keep / (1-p)) straight into the caller's weights rows. A tiny problem
 * runs on one thread.
 *
 * The query tile is scaled once per task into the workspace (q_tile * scale) and the kernels
 * run with scale 1: the scale is applied where PyTorch's nn.MultiheadAttention applies it
 * (q * scale, then the product), so a score whose |q.k| exceeds FLT_MAX while |q.k| * scale
 * does not stays finite (fault 7).
 *
 * The steps: fwd_check validates, fwd_plan chooses the tiles, the thread count and declares
 * each thread's workspace (plan.h), fwd_rows / fwd_finish / fwd_weights compute one task. */
#include "attn_common.h"
#include "core/plan.h"
#include "kernels/kernels.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const FN = "mha_attn_forward";

/* One call: its validated arguments and its plan. */
typedef struct {
    mha__attn_problem pr;
    const mha_kernels *kern;
    const mha_tensor *q, *k, *v;
    mha_tensor *out, *lse, *weights; /* lse, weights: NULL when not wanted */
    int64_t BR, BC;                  /* the fused kernel's tiles */
    int64_t WR, WC;                  /* the weights recompute's tiles (the separate kernels') */
    int64_t nqt, nkt, ntask, nslot;
    int nt;
    mha__plan plan; /* one fwd_ws per thread */
} fwd_call;

/* One thread's workspace, declared in fwd_plan. */
typedef struct {
    float *qs;     /* [BR, D] the task's query tile times scale */
    float *kp;     /* [nslot, BC * D] packed key tiles: a cache of (head, key tile) -> slot */
    int64_t *tag;  /* [nslot] bh * nkt + kt of the tile in each slot, -1: empty */
    float *st;     /* [BR, BC] score / probability tile (the fused kernel's scratch) */
    float *acc;    /* [BR, Dv] output accumulator */
    float *m, *l;  /* [BR] running max and row sum */
    float *lt;     /* [BR] the tile's lse, then the weights' shift (fwd_weights) */
    uint8_t *keep; /* dropout keep bytes: a [BR, BC] tile, or the weights' [WR, WC] */
} fwd_ws;

/* One task: query rows [i0, i0 + br) of head (b, h), bh = b*H + h. */
typedef struct {
    int64_t b, h, bh, i0, br;
    const float *q; /* row i0 of head (b, h) */
    mha__attn_dropout dr;
} fwd_task;

static mha_status fwd_check(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                            const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                            mha_tensor *out, mha_tensor *lse, mha_tensor *weights, fwd_call *c) {
    mha__attn_problem *pr = &c->pr;
    mha_status st = mha__attn_check_inputs(ctx, FN, p, q, k, v, mask, pr);
    if (st) return st;
    int64_t wo[4] = {pr->B, pr->H, pr->L, pr->Dv};
    if ((st = mha__check_tensor(ctx, FN, "out", out, 4, wo, "[B, H, L, Dv]"))) return st;
    int64_t wl[3] = {pr->B, pr->H, pr->L}, ww[4] = {pr->B, pr->H, pr->L, pr->S};
    if (lse && (st = mha__check_tensor(ctx, FN, "lse", lse, 3, wl, "[B, H, L]"))) return st;
    if (weights && (st = mha__check_tensor(ctx, FN, "weights", weights, 4, ww, "[B, H, L, S]")))
        return st;
    const mha__attn_arg ins[3] = {{"q", q}, {"k", k}, {"v", v}};
    const mha__attn_arg outs[3] = {{"out", out}, {"lse", lse}, {"weights", weights}};
    if ((st = mha__attn_check_aliases(ctx, FN, outs, 3, ins, 3))) return st;
    c->q = q, c->k = k, c->v = v, c->out = out, c->lse = lse, c->weights = weights;
    return MHA_OK;
}

/* Tiles, thread count and the per-thread workspace of a validated call with B*H*L > 0. */
static void fwd_plan(mha_ctx *ctx, fwd_call *c) {
    const mha__attn_problem *pr = &c->pr;
    const mha_kernels *kern = c->kern = mha__ctx_kernels(ctx);
    c->BR = kern->attn_fwd_br, c->BC = kern->attn_fwd_bc;
    c->WR = kern->attn_br, c->WC = kern->attn_bc;
    c->nqt = (pr->L + c->BR - 1) / c->BR, c->nkt = (pr->S + c->BC - 1) / c->BC;
    c->ntask = pr->B * pr->H * c->nqt;
    c->nt = mha__ctx_threads(ctx);
    /* a tiny problem is not worth waking threads for (as the gemm driver) */
    if ((double)pr->B * pr->H * pr->L * pr->S * (pr->D + pr->Dv) < (double)(1 << 21)) c->nt = 1;
    /* every key tile of a head when their packed copies fit 16 MiB, else fewer slots (tile kt
     * in slot kt % nslot) */
    int64_t cap = ((int64_t)1 << 22) / (c->BC * pr->D);
    c->nslot = c->nkt < cap ? c->nkt : cap;
    if (c->nslot < 1) c->nslot = 1;
    const int64_t keep =
        pr->dropout_p > 0 ? (c->BR * c->BC > c->WR * c->WC ? c->BR * c->BC : c->WR * c->WC) : 0;
    mha__plan *pl = &c->plan;
    mha__plan_init(pl);
    MHA__PLAN_ADD(pl, fwd_ws, qs, sizeof(float), c->BR, pr->D);
    MHA__PLAN_ADD(pl, fwd_ws, kp, sizeof(float), c->nslot, c->BC * pr->D);
    MHA__PLAN_ADD(pl, fwd_ws, tag, sizeof(int64_t), c->nslot, 1);
    MHA__PLAN_ADD(pl, fwd_ws, st, sizeof(float), c->BR, c->BC);
    MHA__PLAN_ADD(pl, fwd_ws, acc, sizeof(float), c->BR, pr->Dv);
    MHA__PLAN_ADD(pl, fwd_ws, m, sizeof(float), c->BR, 1);
    MHA__PLAN_ADD(pl, fwd_ws, l, sizeof(float), c->BR, 1);
    MHA__PLAN_ADD(pl, fwd_ws, lt, sizeof(float), c->BR, 1);
    MHA__PLAN_ADD(pl, fwd_ws, keep, 1, keep, 1);
}

/* The online softmax of a task over every key tile it may see:
 *   qs = scale * q tile;  m = -inf, l = 0, acc = 0;
 *   per key tile: acc, m, l updated by attn_fwd (attn_fwd_drop) on qs with scale 1 */
static void fwd_rows(const fwd_call *c, const fwd_task *t, fwd_ws *w) {
    const mha__attn_problem *pr = &c->pr;
    const mha_kernels *kern = c->kern;
    const int64_t BC = c->BC, D = pr->D, Dv = pr->Dv, br = t->br, i0 = t->i0;
    const int64_t ldv = c->v->stride[2];
    mha__attn_scale_tile(br, D, pr->scale, t->q, c->q->stride[2], w->qs);
    for (int64_t r = 0; r < br; r++) w->m[r] = -INFINITY, w->l[r] = 0;
    for (int64_t x = 0; x < br * Dv; x++) w->acc[x] = 0;
    for (int64_t kt = 0; kt < c->nkt; kt++) {
        int64_t j0 = kt * BC, bc = pr->S - j0 < BC ? pr->S - j0 : BC;
        if (mha__attn_tile_skip(pr, t->b, i0, i0 + br, j0, j0 + bc)) continue;
        mha__attn_tile_mask mk;
        mha__attn_tile_mask_make(pr, t->b, t->bh, i0, j0, &mk);
        const float *vr = mha__attn_row(c->v, t->b, t->h, j0);
        int64_t slot = kt % c->nslot;
        float *kpt = w->kp + slot * BC * D;
        if (w->tag[slot] != t->bh * c->nkt + kt) { /* pack once per thread, head and key tile */
            kern->attn_kpack(bc, D, mha__attn_row(c->k, t->b, t->h, j0), c->k->stride[2], kpt);
            w->tag[slot] = t->bh * c->nkt + kt;
        }
        if (pr->dropout_p == 0) {
            kern->attn_fwd(br, bc, D, Dv, 1.0f, w->qs, D, kpt, vr, ldv, &mk, w->m, w->l, w->acc, Dv,
                           w->st, BC);
            continue;
        }
        /* keep decisions of the keys some row of the tile may use */
        int64_t bcw = mha__attn_tile_row_end(&mk, br - 1, bc);
        kern->attn_dropout(br, bcw, &t->dr, i0, j0, w->keep, BC);
        kern->attn_fwd_drop(br, bc, D, Dv, 1.0f, w->qs, D, kpt, vr, ldv, &mk, w->m, w->l, w->acc,
                            Dv, w->st, BC, w->keep, BC);
    }
}

/* out = acc * (1/(1-p)) / l and lse = m + log(l) of a task's rows (l == 0: every key masked,
 * out 0 and lse -inf; a NaN l propagates). */
static void fwd_finish(const fwd_call *c, const fwd_task *t, fwd_ws *w) {
    const int64_t Dv = c->pr.Dv;
    for (int64_t r = 0; r < t->br; r++) {
        float *o = mha__attn_row(c->out, t->b, t->h, t->i0 + r);
        if (w->l[r] != 0) {
            float inv = c->pr.keep_scale / w->l[r];
            for (int64_t x = 0; x < Dv; x++) o[x] = w->acc[r * Dv + x] * inv;
            w->lt[r] = w->m[r] + logf(w->l[r]);
        } else {
            for (int64_t x = 0; x < Dv; x++) o[x] = 0;
            w->lt[r] = -INFINITY;
        }
    }
    if (!c->lse) return;
    const mha_tensor *lse = c->lse;
    float *lr = lse->data + t->b * lse->stride[0] + t->h * lse->stride[1];
    for (int64_t r = 0; r < t->br; r++) lr[(t->i0 + r) * lse->stride[2]] = w->lt[r];
}

/* weights = dropout(exp(s - m) / l) of a task's rows (the softmax as written, with the rows'
 * final max m and sum l), recomputed into the caller's rows by the separate kernels in their
 * WR x WC tiles (an element's value does not depend on the tiling), from the scaled query tile
 * qs that fwd_rows left. Not exp(s - lse): lse = m + log(l) in float32 loses log(l) when |m|
 * is huge (a row whose every key has -1e9 added would get weights 1 instead of 1/S). */
static void fwd_weights(const fwd_call *c, const fwd_task *t, fwd_ws *w) {
    const mha__attn_problem *pr = &c->pr;
    const mha_kernels *kern = c->kern;
    const int64_t WR = c->WR, WC = c->WC, ldw = c->weights->stride[2], D = pr->D;
    for (int64_t r = 0; r < t->br; r++) w->lt[r] = w->l[r] != 0 ? w->m[r] : -INFINITY;
    for (int64_t r0 = 0; r0 < t->br; r0 += WR) {
        int64_t wr = t->br - r0 < WR ? t->br - r0 : WR, ir = t->i0 + r0;
        float *wt = mha__attn_row(c->weights, t->b, t->h, ir);
        for (int64_t j0 = 0; j0 < pr->S; j0 += WC) {
            int64_t bc = pr->S - j0 < WC ? pr->S - j0 : WC;
            if (mha__attn_tile_skip(pr, t->b, ir, ir + wr, j0, j0 + bc)) {
                for (int64_t r = 0; r < wr; r++)
                    for (int64_t x = 0; x < bc; x++) wt[r * ldw + j0 + x] = 0;
                continue;
            }
            mha__attn_tile_mask mk;
            mha__attn_tile_mask_make(pr, t->b, t->bh, ir, j0, &mk);
            kern->attn_scores(wr, bc, D, 1.0f, w->qs + r0 * D, D,
                              mha__attn_row(c->k, t->b, t->h, j0), c->k->stride[2], wt + j0, ldw);
            kern->attn_probs(wr, bc, wt + j0, ldw, &mk, w->lt + r0);
            for (int64_t r = 0; r < wr; r++) {
                if (w->l[r0 + r] == 0) continue; /* fully masked: 0 already */
                const float inv = 1.0f / w->l[r0 + r];
                for (int64_t x = 0; x < bc; x++) wt[r * ldw + j0 + x] *= inv;
            }
            if (pr->dropout_p == 0) continue;
            kern->attn_dropout(wr, bc, &t->dr, ir, j0, w->keep, WC);
            kern->attn_dropout_apply(wr, bc, w->keep, WC, pr->keep_scale, wt + j0, ldw, wt + j0,
                                     ldw);
        }
    }
}

static void fwd_run(const fwd_call *c, fwd_ws *w, int64_t task) {
    fwd_task t;
    t.bh = task / c->nqt, t.i0 = (task % c->nqt) * c->BR;
    t.b = t.bh / c->pr.H, t.h = t.bh % c->pr.H;
    t.br = c->pr.L - t.i0 < c->BR ? c->pr.L - t.i0 : c->BR;
    t.q = mha__attn_row(c->q, t.b, t.h, t.i0);
    t.dr = mha__attn_dropout_make(&c->pr, t.bh);
    fwd_rows(c, &t, w);
    fwd_finish(c, &t, w);
    if (c->weights) fwd_weights(c, &t, w);
}

mha_status mha_attn_forward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                            const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                            mha_tensor *out, mha_tensor *lse, mha_tensor *weights) {
    mha__clear(ctx);
    fwd_call c;
    mha_status st = fwd_check(ctx, p, q, k, v, mask, out, lse, weights, &c);
    if (st) return st;
    if (c.pr.B * c.pr.H * c.pr.L == 0) return MHA_OK;
    fwd_plan(ctx, &c);
    void *ws;
    if ((st = mha__plan_alloc(&c.plan, ctx, FN, c.nt, &ws))) return st;
    for (int t = 0; t < c.nt; t++) { /* empty key tile caches */
        fwd_ws w;
        mha__plan_point(&c.plan, ws, t, &w);
        for (int64_t x = 0; x < c.nslot; x++) w.tag[x] = -1;
    }
#pragma omp parallel num_threads(c.nt) if (c.nt > 1 && c.ntask > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        fwd_ws w;
        mha__plan_point(&c.plan, ws, tid, &w);
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < c.ntask; task++) fwd_run(&c, &w, task);
    }
    mha__free(ws);
    return MHA_OK;
}
