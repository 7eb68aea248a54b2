/* attn_forward.c - mha_attn_forward: out = dropout(softmax((scale q) k^T + mask)) v, as
 * FlashAttention-2 (Dao, 2023) in portable C over the kernel table's tile kernels.
 *
 * One task = one (batch, head, query tile of br rows), or all the query tiles of a head when
 * the heads are many and short (fwd_plan: each thread then fetches its next head's rows and
 * the task's out rows while it computes, through the fused kernel: fwd_prefetch_head); tasks
 * are independent, so OpenMP hands them to threads in any order and the result is the same
 * for every thread count (the tile grid is fixed by the table's fused tile sizes attn_fwd_br
 * x attn_fwd_bc, never by the thread count, and a tile's result does not depend on the task
 * that runs it).
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
#include "kernels/cvt.h"
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* One call: its validated arguments and its plan. */
typedef struct {
    mha__attn_problem pr;
    const mha_kernels *kern;
    const mha_tensor *q, *k, *v;
    mha_tensor *out, *lse, *weights; /* lse, weights: NULL when not wanted */
    mha_tensor *wavg;                /* [B, L, S] weights averaged over heads, or NULL */
    float *ml;                       /* [B*H*L, 2] each row's final max and sum, for wavg */
    int64_t BR, BC;                  /* the fused kernel's tiles */
    int64_t WR, WC;                  /* the weights recompute's tiles (the separate kernels') */
    int64_t nqt, nkt, nslot;
    int64_t tpt, ntask; /* query tiles per task (1, or a head's nqt), tasks */
    int nt;
    int bf;         /* bf16 on the table's bf16 kernels (attn_fwd_bf16): q, k, v, out bf16 */
    int64_t np;     /* bf: the head dim rounded up to even (the kernels' pairs) */
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
    /* fwd_avg only: every head's scaled query rows [H * WR, D] (bf: qhb, its bf16 rows
     * [H * WR, np]), their shift (the row max) and sum [H * WR], and one head's weights tile
     * [WR, WC] */
    float *qh, *sh, *sl, *wt;
    /* bf only: the query tile [BR, np] (zero past D) and the packed key and value tiles of
     * each slot ([nslot, BC * np], [nslot, BC * Dv]), instead of qs and kp; with the weights,
     * a weights tile's keys packed [BC * np] (wk) */
    uint16_t *qb, *kb, *vb, *wk, *qhb;
} fwd_ws;

/* One task: query rows [i0, i0 + br) of head (b, h), bh = b*H + h. */
typedef struct {
    int64_t b, h, bh, i0, br;
    const float *q;   /* row i0 of head (b, h) (bf: NULL, fwd_qrows_bf16) */
    mha__attn_pf *pf; /* lines to fetch while computing, or NULL */
    mha__attn_dropout dr;
} fwd_task;

/* Validates a call (weights per head, or wavg averaged over heads: not both) into c. */
static mha_status fwd_check(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                            const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                            const mha_mask *mask, mha_tensor *out, mha_tensor *lse,
                            mha_tensor *weights, mha_tensor *wavg, fwd_call *c) {
    mha__attn_problem *pr = &c->pr;
    mha_status st = mha__attn_check_inputs(ctx, fn, p, q, k, v, mask, pr);
    if (st) return st;
    int64_t wo[4] = {pr->B, pr->H, pr->L, pr->Dv};
    if ((st = mha__check_tensor_as(ctx, fn, "out", out, pr->dt, 4, wo, "[B, H, L, Dv]"))) return st;
    int64_t wl[3] = {pr->B, pr->H, pr->L}, ww[4] = {pr->B, pr->H, pr->L, pr->S};
    if (lse && (st = mha__check_tensor(ctx, fn, "lse", lse, 3, wl, "[B, H, L]"))) return st;
    if (weights && (st = mha__check_tensor(ctx, fn, "weights", weights, 4, ww, "[B, H, L, S]")))
        return st;
    int64_t wa[3] = {pr->B, pr->L, pr->S};
    if (wavg && (st = mha__check_tensor(ctx, fn, "weights", wavg, 3, wa, "[B, L, S], averaged")))
        return st;
    const mha__attn_arg ins[3] = {{"q", q}, {"k", k}, {"v", v}};
    const mha__attn_arg outs[4] = {
        {"out", out}, {"lse", lse}, {"weights", weights}, {"weights", wavg}};
    if ((st = mha__attn_check_aliases(ctx, fn, outs, 4, ins, 3))) return st;
    c->q = q, c->k = k, c->v = v, c->out = out, c->lse = lse, c->weights = weights;
    c->wavg = wavg, c->ml = NULL;
    return MHA_OK;
}

/* Tiles, thread count and the per-thread workspace of a validated call with B*H*L > 0. */
static void fwd_plan(mha_ctx *ctx, fwd_call *c) {
    const mha__attn_problem *pr = &c->pr;
    const mha_kernels *kern = c->kern = mha__ctx_kernels(ctx);
    c->BR = kern->attn_fwd_br, c->BC = kern->attn_fwd_bc;
    c->WR = kern->attn_br, c->WC = kern->attn_bc;
    c->nqt = (pr->L + c->BR - 1) / c->BR, c->nkt = (pr->S + c->BC - 1) / c->BC;
    c->nt = mha__ctx_threads(ctx);
    /* a tiny problem is not worth waking threads for (as the gemm driver) */
    if ((double)pr->B * pr->H * pr->L * pr->S * (pr->D + pr->Dv) < (double)(1 << 21)) c->nt = 1;
    /* a head's query tiles in one task when the threads fetch the next head while computing
     * one (mha__attn_prefetch_heads): the thread also packs the head's key tiles once (not
     * once per thread running some of its tiles) */
    const double head_bytes =
        (double)(pr->L + pr->S) * (double)(pr->D + pr->Dv) * (double)mha_dtype_size(pr->dt);
    c->tpt = mha__attn_prefetch_heads(pr, c->nt, head_bytes) ? c->nqt : 1;
    c->ntask = pr->B * pr->H * (c->nqt / c->tpt);
    /* every key tile of a head when their packed copies fit 16 MiB, else fewer slots (tile kt
     * in slot kt % nslot) */
    int64_t cap = ((int64_t)1 << 22) / (c->BC * pr->D);
    c->nslot = c->nkt < cap ? c->nkt : cap;
    if (c->nslot < 1) c->nslot = 1;
    const int64_t keep =
        pr->dropout_p > 0 ? (c->BR * c->BC > c->WR * c->WC ? c->BR * c->BC : c->WR * c->WC) : 0;
    const int bf = c->bf;
    c->np = (pr->D + 1) / 2 * 2;
    mha__plan *pl = &c->plan;
    mha__plan_init(pl);
    MHA__PLAN_ADD(pl, fwd_ws, qs, sizeof(float), bf ? 0 : c->BR, pr->D);
    MHA__PLAN_ADD(pl, fwd_ws, kp, sizeof(float), bf ? 0 : c->nslot, c->BC * pr->D);
    MHA__PLAN_ADD(pl, fwd_ws, qb, sizeof(uint16_t), bf ? c->BR : 0, c->np);
    MHA__PLAN_ADD(pl, fwd_ws, kb, sizeof(uint16_t), bf ? c->nslot : 0, c->BC * c->np);
    MHA__PLAN_ADD(pl, fwd_ws, vb, sizeof(uint16_t), bf ? c->nslot : 0, c->BC * pr->Dv);
    MHA__PLAN_ADD(pl, fwd_ws, tag, sizeof(int64_t), c->nslot, 1);
    MHA__PLAN_ADD(pl, fwd_ws, st, sizeof(float), c->BR, c->BC);
    MHA__PLAN_ADD(pl, fwd_ws, acc, sizeof(float), c->BR, pr->Dv);
    MHA__PLAN_ADD(pl, fwd_ws, m, sizeof(float), c->BR, 1);
    MHA__PLAN_ADD(pl, fwd_ws, l, sizeof(float), c->BR, 1);
    MHA__PLAN_ADD(pl, fwd_ws, lt, sizeof(float), c->BR, 1);
    MHA__PLAN_ADD(pl, fwd_ws, keep, 1, keep, 1);
    const int64_t hw = c->wavg ? pr->H * c->WR : 0, wants = c->weights || c->wavg;
    MHA__PLAN_ADD(pl, fwd_ws, wk, sizeof(uint16_t), bf && wants ? c->BC : 0, c->np);
    MHA__PLAN_ADD(pl, fwd_ws, qhb, sizeof(uint16_t), bf ? hw : 0, c->np);
    MHA__PLAN_ADD(pl, fwd_ws, qh, sizeof(float), bf ? 0 : hw, pr->D);
    MHA__PLAN_ADD(pl, fwd_ws, sh, sizeof(float), hw, 1);
    MHA__PLAN_ADD(pl, fwd_ws, sl, sizeof(float), hw, 1);
    MHA__PLAN_ADD(pl, fwd_ws, wt, sizeof(float), c->wavg ? c->WR : 0, c->WC);
}

/* The online softmax of a task over every key tile it may see:
 *   qs = scale * q tile;  m = -inf, l = 0, acc = 0;
 *   per key tile: acc, m, l updated by attn_fwd (attn_fwd_drop) on qs with scale 1 */
/* bf: the (head, key tile) of slot `slot` packed for the bf16 kernels (k pairs of the head
 * dim, v pairs of keys). */
static void fwd_pack_bf16(const fwd_call *c, const fwd_task *t, fwd_ws *w, int64_t slot, int64_t j0,
                          int64_t bc) {
    const mha__attn_problem *pr = &c->pr;
    const uint16_t *k = mha__attn_row_at(c->k, t->b, t->h / pr->kv_group, j0);
    const uint16_t *v = mha__attn_row_at(c->v, t->b, t->h / pr->kv_group, j0);
    c->kern->attn_kpack_bf16(bc, pr->D, k, c->k->stride[2], w->kb + slot * c->BC * c->np);
    c->kern->attn_vpack_bf16(bc, pr->Dv, v, c->v->stride[2], w->vb + slot * c->BC * pr->Dv);
}

/* bf: query rows [i0, i0 + n) of head (b, h) as they are (bf16) into dst [n, np], zero past D
 * (the scale goes to the scores) */
static void fwd_qrows_bf16(const fwd_call *c, int64_t b, int64_t h, int64_t i0, int64_t n,
                           uint16_t *dst) {
    for (int64_t r = 0; r < n; r++) {
        const uint16_t *q = mha__attn_row_at(c->q, b, h, i0 + r);
        memcpy(dst + r * c->np, q, sizeof(uint16_t) * (size_t)c->pr.D);
        if (c->np > c->pr.D) dst[r * c->np + c->pr.D] = 0;
    }
}

static void fwd_rows(const fwd_call *c, const fwd_task *t, fwd_ws *w) {
    const mha__attn_problem *pr = &c->pr;
    const mha_kernels *kern = c->kern;
    const int64_t BC = c->BC, D = pr->D, Dv = pr->Dv, br = t->br, i0 = t->i0;
    const int64_t ldv = c->v->stride[2];
    if (c->bf) fwd_qrows_bf16(c, t->b, t->h, t->i0, t->br, w->qb);
    else mha__attn_scale_tile(kern, br, D, pr->scale, t->q, c->q->stride[2], w->qs);
    for (int64_t r = 0; r < br; r++) w->m[r] = -INFINITY, w->l[r] = 0;
    memset(w->acc, 0, sizeof(float) * (size_t)(br * Dv));
    for (int64_t kt = 0; kt < c->nkt; kt++) {
        int64_t j0 = kt * BC, bc = pr->S - j0 < BC ? pr->S - j0 : BC;
        if (mha__attn_tile_skip(pr, t->b, i0, i0 + br, j0, j0 + bc)) continue;
        mha__attn_tile_mask mk;
        mha__attn_tile_mask_make(pr, t->b, t->bh, i0, j0, &mk);
        mk.pf = t->pf;
        const float *vr = c->bf ? NULL : mha__attn_kv_row(pr, c->v, t->b, t->h, j0);
        int64_t slot = kt % c->nslot, tag = (t->b * pr->Hkv + t->h / pr->kv_group) * c->nkt + kt;
        float *kpt = w->kp + slot * BC * D;
        if (w->tag[slot] != tag) { /* pack once per thread, key/value head and key tile */
            if (c->bf) fwd_pack_bf16(c, t, w, slot, j0, bc);
            else
                kern->attn_kpack(bc, D, mha__attn_kv_row(pr, c->k, t->b, t->h, j0), c->k->stride[2],
                                 kpt);
            w->tag[slot] = tag;
        }
        const uint8_t *keep = NULL;
        if (pr->dropout_p > 0) { /* keep decisions of the keys some row of the tile may use */
            int64_t bcw = mha__attn_tile_row_end(&mk, br - 1, bc);
            kern->attn_dropout(br, bcw, &t->dr, pr->row0 + i0, pr->col0 + j0, w->keep, BC);
            keep = w->keep;
        }
        if (c->bf) {
            kern->attn_fwd_bf16(br, bc, D, Dv, pr->scale, w->qb, c->np, w->kb + slot * BC * c->np,
                                w->vb + slot * BC * Dv, &mk, w->m, w->l, w->acc, Dv, w->st, BC,
                                keep, BC);
            continue;
        }
        if (!keep) {
            kern->attn_fwd(br, bc, D, Dv, 1.0f, w->qs, D, kpt, vr, ldv, &mk, w->m, w->l, w->acc, Dv,
                           w->st, BC);
            continue;
        }
        kern->attn_fwd_drop(br, bc, D, Dv, 1.0f, w->qs, D, kpt, vr, ldv, &mk, w->m, w->l, w->acc,
                            Dv, w->st, BC, keep, BC);
    }
}

/* out = acc * (1/(1-p)) / l and lse = m + log(l) of a task's rows (l == 0: every key masked,
 * out 0 and lse -inf; a NaN l propagates). */
static void fwd_finish(const fwd_call *c, const fwd_task *t, fwd_ws *w) {
    const int64_t Dv = c->pr.Dv;
    for (int64_t r = 0; r < t->br; r++) {
        float *o = c->bf ? w->acc + r * Dv : mha__attn_row(c->out, t->b, t->h, t->i0 + r);
        if (w->l[r] != 0) {
            c->kern->scale_f32(Dv, c->pr.keep_scale / w->l[r], w->acc + r * Dv, o);
            w->lt[r] = w->m[r] + logf(w->l[r]);
        } else {
            for (int64_t x = 0; x < Dv; x++) o[x] = 0;
            w->lt[r] = -INFINITY;
        }
        if (c->bf) { /* rounded once */
            c->kern->cvt_from_f32(MHA_DTYPE_BF16, o,
                                  mha__attn_row_at(c->out, t->b, t->h, t->i0 + r), Dv);
        }
    }
    if (c->ml) { /* for fwd_avg */
        float *ml = c->ml + (t->bh * c->pr.L + t->i0) * 2;
        for (int64_t r = 0; r < t->br; r++) ml[2 * r] = w->m[r], ml[2 * r + 1] = w->l[r];
    }
    if (!c->lse) return;
    const mha_tensor *lse = c->lse;
    float *lr = lse->data + t->b * lse->stride[0] + t->h * lse->stride[1];
    for (int64_t r = 0; r < t->br; r++) lr[(t->i0 + r) * lse->stride[2]] = w->lt[r];
}

/* The shift of a row's weights, exp(s - shift) / l: its final max, or -inf for a fully masked
 * row (l == 0: every weight 0). */
static inline float weights_shift(float m, float l) { return l != 0 ? m : -INFINITY; }

/* One tile of head (b, h)'s weights, rows [ir, ir + wr) x keys [j0, j0 + bc), into dst (row
 * stride ldd): dropout(exp(s - m) / l) from the query rows qr, each row's final max m (shift:
 * m, or -inf for a fully masked row, l == 0) and sum l: the softmax as written, by the
 * separate kernels (an element's value does not depend on the tiling). qr: the scaled query
 * rows [wr, D] (float), or with bf their bf16 rows [wr, np] (uint16_t), the scores then by
 * the bf16 kernels as the bf16 forward computes them (the key tile packed into w->wk, the
 * scale on the float32 sums, its exp). Not exp(s - lse): lse = m + log(l) in float32 loses
 * log(l) when |m| is huge (a row whose every key has -1e9 added would get weights 1 instead
 * of 1/S). */
static void weights_tile(const fwd_call *c, fwd_ws *w, int64_t b, int64_t h, int64_t ir, int64_t wr,
                         int64_t j0, int64_t bc, const void *qr, const float *shift, const float *l,
                         float *dst, int64_t ldd) {
    const mha__attn_problem *pr = &c->pr;
    const mha_kernels *kern = c->kern;
    const int64_t bh = b * pr->H + h;
    if (mha__attn_tile_skip(pr, b, ir, ir + wr, j0, j0 + bc)) {
        for (int64_t r = 0; r < wr; r++)
            for (int64_t x = 0; x < bc; x++) dst[r * ldd + x] = 0;
        return;
    }
    mha__attn_tile_mask mk;
    mha__attn_tile_mask_make(pr, b, bh, ir, j0, &mk);
    if (c->bf) {
        kern->attn_kpack_bf16(bc, pr->D, mha__attn_row_at(c->k, b, h / pr->kv_group, j0),
                              c->k->stride[2], w->wk);
        kern->attn_scores_bf16(wr, bc, pr->D, pr->scale, qr, c->np, w->wk, dst, ldd);
        kern->attn_probs_bf16(wr, bc, dst, ldd, &mk, shift, NULL);
    } else {
        kern->attn_scores(wr, bc, pr->D, 1.0f, qr, pr->D, mha__attn_kv_row(pr, c->k, b, h, j0),
                          c->k->stride[2], dst, ldd);
        kern->attn_probs(wr, bc, dst, ldd, &mk, shift, NULL);
    }
    for (int64_t r = 0; r < wr; r++) {
        if (l[r] == 0) continue; /* fully masked: 0 already */
        const float inv = 1.0f / l[r];
        for (int64_t x = 0; x < bc; x++) dst[r * ldd + x] *= inv;
    }
    if (pr->dropout_p == 0) return;
    mha__attn_dropout dr = mha__attn_dropout_make(pr, bh);
    kern->attn_dropout(wr, bc, &dr, pr->row0 + ir, pr->col0 + j0, w->keep, c->WC);
    kern->attn_dropout_apply(wr, bc, w->keep, c->WC, pr->keep_scale, dst, ldd, dst, ldd);
}

/* The weights of a task's rows into the caller's [B, H, L, S] rows, in WR x WC tiles, from the
 * query tile that fwd_rows left (qs scaled, or bf: qb). */
static void fwd_weights(const fwd_call *c, const fwd_task *t, fwd_ws *w) {
    const int64_t WR = c->WR, WC = c->WC, S = c->pr.S, ldw = c->weights->stride[2];
    for (int64_t r = 0; r < t->br; r++) w->lt[r] = weights_shift(w->m[r], w->l[r]);
    for (int64_t r0 = 0; r0 < t->br; r0 += WR) {
        int64_t wr = t->br - r0 < WR ? t->br - r0 : WR, ir = t->i0 + r0;
        float *wt = mha__attn_row(c->weights, t->b, t->h, ir);
        for (int64_t j0 = 0; j0 < S; j0 += WC)
            weights_tile(c, w, t->b, t->h, ir, wr, j0, S - j0 < WC ? S - j0 : WC,
                         c->bf ? (const void *)(w->qb + c->np * r0) : w->qs + c->pr.D * r0,
                         w->lt + r0, w->l + r0, wt + j0, ldw);
    }
}

/* The weights averaged over heads, rows [i0, i0 + wr) of batch b (task = b * row tiles + the
 * row tile): per key tile, every head's weights tile summed in head order into the caller's
 * rows, then / H: ((w_0 + w_1) + ...) / H, exactly what averaging the per-head weights gives,
 * without a [B, H, L, S] buffer. Runs after every task of the forward (it needs each row's
 * final m and l, c->ml). */
static void fwd_avg(const fwd_call *c, fwd_ws *w, int64_t task) {
    const mha__attn_problem *pr = &c->pr;
    const int64_t WR = c->WR, WC = c->WC, D = pr->D, H = pr->H, L = pr->L, S = pr->S;
    const int64_t nrt = (L + WR - 1) / WR, b = task / nrt, i0 = (task % nrt) * WR;
    const int64_t wr = L - i0 < WR ? L - i0 : WR, ldd = c->wavg->stride[1];
    float *dst = c->wavg->data + b * c->wavg->stride[0] + i0 * ldd;
    for (int64_t h = 0; h < H; h++) {
        if (c->bf) fwd_qrows_bf16(c, b, h, i0, wr, w->qhb + h * WR * c->np);
        else
            mha__attn_scale_tile(c->kern, wr, D, pr->scale, mha__attn_row(c->q, b, h, i0),
                                 c->q->stride[2], w->qh + h * WR * D);
        const float *ml = c->ml + ((b * H + h) * L + i0) * 2;
        for (int64_t r = 0; r < wr; r++) {
            w->sl[h * WR + r] = ml[2 * r + 1];
            w->sh[h * WR + r] = weights_shift(ml[2 * r], ml[2 * r + 1]);
        }
    }
    for (int64_t j0 = 0; j0 < S; j0 += WC) {
        const int64_t bc = S - j0 < WC ? S - j0 : WC;
        float *d = dst + j0;
        for (int64_t h = 0; h < H; h++) {
            float *t = h == 0 ? d : w->wt;
            int64_t ldt = h == 0 ? ldd : WC;
            const void *qr = c->bf ? (const void *)(w->qhb + h * WR * c->np) : w->qh + h * WR * D;
            weights_tile(c, w, b, h, i0, wr, j0, bc, qr, w->sh + h * WR, w->sl + h * WR, t, ldt);
            if (h == 0) continue;
            for (int64_t r = 0; r < wr; r++)
                for (int64_t x = 0; x < bc; x++) d[r * ldd + x] += t[r * WC + x];
        }
        for (int64_t r = 0; r < wr; r++)
            for (int64_t x = 0; x < bc; x++) d[r * ldd + x] /= (float)H;
    }
}

/* Part u of n of head bh's q, k and v rows added to a task's stream of lines (kernels.h:
 * mha__attn_pf), which the fused kernel asks of the outer caches a few lines at a time while
 * the thread computes head cur (fwd_run); k and v unless cur reads the same ones (grouped
 * heads). The same rows asked for in one burst before the task (the stream's predecessor)
 * filled the miss buffers and stalled the core for 5-6% of the time; spread, causal N = 256
 * ran 4-8% faster (B = 8 and 32, D = 64 and 128), non-causal 4%, bf16 3-4%. */
static void fwd_prefetch_head(const fwd_call *c, int64_t cur, int64_t bh, int64_t u, int64_t n,
                              mha__attn_pf *pf) {
    const mha__attn_problem *pr = &c->pr;
    const int64_t b = bh / pr->H, g = bh % pr->H / pr->kv_group;
    const int64_t l0 = pr->L * u / n, l1 = pr->L * (u + 1) / n;
    const int64_t s0 = pr->S * u / n, s1 = pr->S * (u + 1) / n;
    mha__attn_pf_add(pf, c->q, b, bh % pr->H, l0, l1, pr->D);
    if (cur / pr->H == b && cur % pr->H / pr->kv_group == g) return;
    mha__attn_pf_add(pf, c->k, b, g, s0, s1, pr->D);
    mha__attn_pf_add(pf, c->v, b, g, s0, s1, pr->Dv);
}

static void fwd_run(const fwd_call *c, fwd_ws *w, int64_t task) {
    fwd_task t;
    /* causal (no left bound): a head's row tiles in reverse, the longest first, so that the
     * tasks the threads finish on are the short ones */
    const mha__attn_problem *pr = &c->pr;
    const int rev = pr->hi_shift != MHA__ATTN_NO_DIAG && pr->lo_shift == -MHA__ATTN_NO_DIAG;
    for (int64_t u = 0; u < c->tpt; u++) {
        const int64_t qt = (task * c->tpt + u) % c->nqt;
        t.bh = (task * c->tpt + u) / c->nqt, t.i0 = (rev ? c->nqt - 1 - qt : qt) * c->BR;
        t.b = t.bh / c->pr.H, t.h = t.bh % c->pr.H;
        t.br = c->pr.L - t.i0 < c->BR ? c->pr.L - t.i0 : c->BR;
        t.q = c->bf ? NULL : mha__attn_row(c->q, t.b, t.h, t.i0);
        t.dr = mha__attn_dropout_make(&c->pr, t.bh);
        /* heads grouped: the task's out rows (written at its end: their lines then come
         * from L3 or memory), then the next head's q, k, v */
        mha__attn_pf pf = {.row = -1};
        t.pf = NULL;
        if (c->tpt > 1) {
            mha__attn_pf_add(&pf, c->out, t.b, t.h, t.i0, t.i0 + t.br, pr->Dv);
            if (task + c->nt < c->ntask) fwd_prefetch_head(c, task, task + c->nt, u, c->tpt, &pf);
            t.pf = &pf;
        }
        fwd_rows(c, &t, w);
        if (t.pf) mha__attn_pf_flush(t.pf);
        fwd_finish(c, &t, w);
        if (c->weights) fwd_weights(c, &t, w);
    }
}

/* Runs body(c, w, task) for every task in [0, n) on c->nt threads, each with its workspace. */
static void fwd_parallel(const fwd_call *c, void *ws, int64_t n,
                         void (*body)(const fwd_call *, fwd_ws *, int64_t)) {
#pragma omp parallel num_threads(c->nt) if (c->nt > 1 && n > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        fwd_ws w;
        mha__plan_point(&c->plan, ws, tid, &w);
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < n; task++) body(c, &w, task);
    }
}

static mha_status attn_forward(mha_ctx *ctx, const char *fn, mha__attn_origin at,
                               const mha_attn_params *p, const mha_tensor *q, const mha_tensor *k,
                               const mha_tensor *v, const mha_mask *mask, mha_tensor *out,
                               mha_tensor *lse, mha_tensor *weights, mha_tensor *wavg);

/* A validated call on bf16 / f16 views: the float32 forward on exact float32 copies of q, k
 * and v, out rounded once (lse and the weights are float32 views, written directly). */
static mha_status fwd_lowp(mha_ctx *ctx, const char *fn, mha__attn_origin at,
                           const mha_attn_params *p, const mha_tensor *q, const mha_tensor *k,
                           const mha_tensor *v, const mha_mask *mask, mha_tensor *out,
                           mha_tensor *lse, mha_tensor *weights, mha_tensor *wavg) {
    const mha__lowp_arg args[4] = {{"q", q, 0}, {"k", k, 0}, {"v", v, 0}, {"out", out, 1}};
    mha__lowp lp;
    mha_status st = mha__lowp_begin(ctx, fn, &lp, 4, args);
    if (st) return st;
    st = attn_forward(ctx, fn, at, p, mha__lowp_view(&lp, 0), mha__lowp_view(&lp, 1),
                      mha__lowp_view(&lp, 2), mask, mha__lowp_view(&lp, 3), lse, weights, wavg);
    mha__lowp_end(&lp, st);
    return st;
}

/* Every weight of a validated [B, L, S] averaged weights view = 0. */
static void wavg_zero(const mha_tensor *w) {
    for (int64_t b = 0; b < w->shape[0]; b++)
        for (int64_t i = 0; i < w->shape[1]; i++)
            for (int64_t j = 0; j < w->shape[2]; j++)
                w->data[b * w->stride[0] + i * w->stride[1] + j * w->stride[2]] = 0;
}

/* A validated call with dropout_p = 1: every weight dropped (as PyTorch's dropout(p = 1)),
 * out and the weights 0; lse is the softmax's, as without dropout (FlashAttention's
 * softmax_lse does not depend on dropout), computed by the call without dropout when wanted. */
static mha_status fwd_drop_all(mha_ctx *ctx, const char *fn, mha__attn_origin at,
                               const mha_attn_params *p, const mha_mask *mask, const fwd_call *c) {
    if (c->lse) {
        mha_attn_params p0 = *p;
        p0.dropout_p = 0;
        mha_status st =
            attn_forward(ctx, fn, at, &p0, c->q, c->k, c->v, mask, c->out, c->lse, NULL, NULL);
        if (st) return st;
    }
    mha__attn_zero_view(c->out);
    if (c->weights) mha__attn_zero_view(c->weights);
    if (c->wavg) wavg_zero(c->wavg);
    return MHA_OK;
}

static mha_status attn_forward(mha_ctx *ctx, const char *fn, mha__attn_origin at,
                               const mha_attn_params *p, const mha_tensor *q, const mha_tensor *k,
                               const mha_tensor *v, const mha_mask *mask, mha_tensor *out,
                               mha_tensor *lse, mha_tensor *weights, mha_tensor *wavg) {
    mha__clear(ctx);
    fwd_call c;
    mha_status st = fwd_check(ctx, fn, p, q, k, v, mask, out, lse, weights, wavg, &c);
    if (st) return st;
    /* bf16 on the table's bf16 kernels where it has them (the weights too: their scores and
     * exp by the bf16 backward's kernels, so out does not depend on whether they are asked
     * for); else in float32 on float32 copies */
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    c.bf = c.pr.dt == MHA_DTYPE_BF16 && kern->attn_fwd_bf16 &&
           (!(weights || wavg) || (kern->attn_scores_bf16 && kern->attn_probs_bf16));
    if (c.pr.dt != MHA_DTYPE_F32 && !c.bf)
        return fwd_lowp(ctx, fn, at, p, q, k, v, mask, out, lse, weights, wavg);
    c.pr.bh0 = at.bh0, c.pr.row0 = at.row0, c.pr.col0 = at.col0;
    if (c.pr.dropout_p >= 1 && c.pr.B * c.pr.H * c.pr.L > 0)
        return fwd_drop_all(ctx, fn, at, p, mask, &c);
    if (c.pr.B * c.pr.H * c.pr.L == 0) {
        if (wavg) wavg_zero(wavg); /* H == 0: no head to average, weights 0 */
        return MHA_OK;
    }
    fwd_plan(ctx, &c);
    void *ws, *mlb = NULL;
    if ((st = mha__plan_alloc(&c.plan, ctx, fn, c.nt, &ws))) return st;
    if (wavg) { /* each row's final max and sum, for fwd_avg */
        mha__plan pl;
        mha__plan_init(&pl);
        MHA__PLAN_ADD(&pl, fwd_call, ml, sizeof(float), c.pr.B * c.pr.H * c.pr.L, 2);
        if ((st = mha__plan_alloc(&pl, ctx, fn, 1, &mlb))) {
            mha__free(ws);
            return st;
        }
        mha__plan_point(&pl, mlb, 0, &c);
    }
    for (int t = 0; t < c.nt; t++) { /* empty key tile caches */
        fwd_ws w;
        mha__plan_point(&c.plan, ws, t, &w);
        for (int64_t x = 0; x < c.nslot; x++) w.tag[x] = -1;
    }
    fwd_parallel(&c, ws, c.ntask, fwd_run);
    if (wavg) fwd_parallel(&c, ws, c.pr.B * ((c.pr.L + c.WR - 1) / c.WR), fwd_avg);
    mha__free(mlb);
    mha__free(ws);
    return MHA_OK;
}

mha_status mha_attn_forward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                            const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                            mha_tensor *out, mha_tensor *lse, mha_tensor *weights) {
    return attn_forward(ctx, "mha_attn_forward", (mha__attn_origin){0, 0, 0}, p, q, k, v, mask, out,
                        lse, weights, NULL);
}

mha_status mha__attn_forward_seq(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                 const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                 const mha_mask *mask, mha_tensor *out, mha_tensor *lse,
                                 mha__attn_origin at) {
    return attn_forward(ctx, fn, at, p, q, k, v, mask, out, lse, NULL, NULL);
}

mha_status mha__attn_forward_named(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                   const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                   const mha_mask *mask, mha_tensor *out, mha_tensor *lse,
                                   mha_tensor *weights, mha_tensor *wavg) {
    return attn_forward(ctx, fn, (mha__attn_origin){0, 0, 0}, p, q, k, v, mask, out, lse, weights,
                        wavg);
}
