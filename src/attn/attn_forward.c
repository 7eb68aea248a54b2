/* attn_forward.c - mha_attn_forward: out = dropout(softmax(q k^T * scale + mask)) v, as
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
 *     attn_fwd: S = q_tile Kp^T * scale, mask, m' = max(m, rowmax S), P = exp(S - m'),
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
 * runs on one thread. */
#include "attn_common.h"
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const FN = "mha_attn_forward";

mha_status mha_attn_forward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                            const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                            mha_tensor *out, mha_tensor *lse, mha_tensor *weights) {
    mha__clear(ctx);
    mha__attn_problem pr;
    mha_status st = mha__attn_check_inputs(ctx, FN, p, q, k, v, mask, &pr);
    if (st) return st;
    int64_t wo[4] = {pr.B, pr.H, pr.L, pr.Dv};
    if ((st = mha__check_tensor(ctx, FN, "out", out, 4, wo, "[B, H, L, Dv]"))) return st;
    if (lse) {
        int64_t wl[3] = {pr.B, pr.H, pr.L};
        if ((st = mha__check_tensor(ctx, FN, "lse", lse, 3, wl, "[B, H, L]"))) return st;
    }
    if (weights) {
        int64_t ww[4] = {pr.B, pr.H, pr.L, pr.S};
        if ((st = mha__check_tensor(ctx, FN, "weights", weights, 4, ww, "[B, H, L, S]")))
            return st;
    }
    int64_t B = pr.B, H = pr.H, L = pr.L, S = pr.S, D = pr.D, Dv = pr.Dv;
    if (B * H * L == 0) return MHA_OK;
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    const int dropout = pr.dropout_p > 0;
    /* the fused kernel (packed keys; attn_fwd_drop with dropout), in its own tile sizes */
    const int64_t WR = kern->attn_br, WC = kern->attn_bc; /* the weights recompute's tiles */
    const int64_t BR = kern->attn_fwd_br, BC = kern->attn_fwd_bc;
    /* keep bytes: a [BR, BC] tile (the weights recompute uses [WR, WC] of it) */
    const int64_t KB = dropout ? (BR * BC > WR * WC ? BR * BC : WR * WC) : 0;
    const int64_t nqt = (L + BR - 1) / BR, nkt = (S + BC - 1) / BC, ntask = B * H * nqt;
    int nt = mha__ctx_threads(ctx);
    /* a tiny problem is not worth waking threads for (as the gemm driver) */
    if ((double)B * H * L * S * (D + Dv) < (double)(1 << 21)) nt = 1;
    /* Per-thread workspace, regions in floats rounded to 16 (64 bytes):
     *   kp    nslot packed key tiles [BC * D] (fused), a cache keyed by (head, key tile):
     *         every key tile of a head when that fits 16 MiB, else fewer slots (slot kt % nslot)
     *   St    score / probability tile [BR, BC]
     *   acc   output accumulator [BR, Dv]
     *   m, l, alpha, lt  [BR] each;  keep [BR, BC] (or [WR, WC]) bytes;  tag [nslot] int64 */
    size_t cap = ((size_t)1 << 22) / ((size_t)BC * (size_t)D);
    size_t nslot = (size_t)nkt < cap ? (size_t)nkt : cap;
    if (nslot < 1) nslot = 1;
    size_t r_kp = 0, r_st = 0, r_acc = 0, r_small = 0, per = 0, tot = 0, t1, t2;
    int ok = mha__mul_size(nslot, (size_t)BC * (size_t)D, &r_kp) &&
             mha__mul_size((size_t)BR, (size_t)BC, &r_st) &&
             mha__mul_size((size_t)BR, (size_t)Dv, &r_acc) &&
             mha__mul_size(nslot, 2, &t1) &&
             mha__add_size(4 * (size_t)BR + 2 * (((size_t)KB + 7) / 8), t1, &r_small);
    size_t regions[4] = {r_kp, r_st, r_acc, r_small}, off[4];
    for (int i = 0; i < 4 && ok; i++) {
        off[i] = per;
        ok = mha__add_size(regions[i], 15, &t2) && mha__add_size(per, t2 / 16 * 16, &per);
    }
    if (!ok || !mha__mul_size(per, (size_t)nt * sizeof(float), &tot))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace size overflows", FN);
    float *ws = mha__malloc(tot);
    if (!ws) return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace: out of memory (%zu bytes)", FN, tot);
    for (int t = 0; t < nt; t++) { /* empty key tile caches */
        int64_t *tag = (int64_t *)(ws + per * (size_t)t + off[3] + 4 * BR + 2 * ((KB + 7) / 8));
        for (size_t x = 0; x < nslot; x++) tag[x] = -1;
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1 && ntask > 1)
    for (int64_t task = 0; task < ntask; task++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *base = ws + per * (size_t)tid;
        float *kp = base + off[0], *St = base + off[1], *acc = base + off[2];
        float *m = base + off[3], *l = m + BR, *alpha = l + BR, *lt = alpha + BR;
        uint8_t *keep = (uint8_t *)(lt + BR);
        int64_t *tag = (int64_t *)(lt + BR + 2 * ((KB + 7) / 8)); /* 8-byte aligned */
        int64_t bh = task / nqt, i0 = (task % nqt) * BR, b = bh / H, h = bh % H;
        int64_t br = L - i0 < BR ? L - i0 : BR;
        const mha__attn_dropout dr = mha__attn_dropout_make(&pr, bh);
        const float *qt = mha__attn_row(q, b, h, i0);
        for (int64_t r = 0; r < br; r++) m[r] = -INFINITY, l[r] = 0;
        for (int64_t x = 0; x < br * Dv; x++) acc[x] = 0;
        for (int64_t kt = 0; kt < nkt; kt++) {
            int64_t j0 = kt * BC, bc = S - j0 < BC ? S - j0 : BC;
            if (mha__attn_tile_skip(&pr, b, i0, i0 + br, j0, j0 + bc)) continue;
            mha__attn_tile_mask mk;
            mha__attn_tile_mask_make(&pr, b, bh, i0, j0, &mk);
            const float *kr = mha__attn_row(k, b, h, j0), *vr = mha__attn_row(v, b, h, j0);
            size_t slot = (size_t)kt % nslot;
            float *kpt = kp + slot * (size_t)(BC * D);
            if (tag[slot] != bh * nkt + kt) { /* pack once per thread, head and key tile */
                kern->attn_kpack(bc, D, kr, k->stride[2], kpt);
                tag[slot] = bh * nkt + kt;
            }
            if (!dropout) {
                kern->attn_fwd(br, bc, D, Dv, pr.scale, qt, q->stride[2], kpt, vr,
                               v->stride[2], &mk, m, l, acc, Dv, St, BC);
                continue;
            }
            /* keep decisions of the keys some row of the tile may use */
            int64_t bcw = mha__attn_tile_row_end(&mk, br - 1, bc);
            kern->attn_dropout(br, bcw, &dr, i0, j0, keep, BC);
            kern->attn_fwd_drop(br, bc, D, Dv, pr.scale, qt, q->stride[2], kpt, vr,
                                v->stride[2], &mk, m, l, acc, Dv, St, BC, keep, BC);
        }
        for (int64_t r = 0; r < br; r++) {
            float *o = mha__attn_row(out, b, h, i0 + r);
            if (l[r] != 0) { /* 0: every key masked; NaN (a NaN score) propagates */
                float inv = pr.keep_scale / l[r];
                for (int64_t x = 0; x < Dv; x++) o[x] = acc[r * Dv + x] * inv;
                lt[r] = m[r] + logf(l[r]);
            } else {
                for (int64_t x = 0; x < Dv; x++) o[x] = 0;
                lt[r] = -INFINITY;
            }
            if (lse) lse->data[b * lse->stride[0] + h * lse->stride[1] + (i0 + r) * lse->stride[2]] = lt[r];
        }
        if (!weights) continue;
        /* weights = dropout(exp(s - lse)), recomputed into the caller's rows by the separate
         * kernels, in their WR x WC tiles (an element's value does not depend on the tiling) */
        const int64_t ldw = weights->stride[2];
        for (int64_t r0 = 0; r0 < br; r0 += WR) {
            int64_t wr = br - r0 < WR ? br - r0 : WR, ir = i0 + r0;
            float *wt = mha__attn_row(weights, b, h, ir);
            for (int64_t j0 = 0; j0 < S; j0 += WC) {
                int64_t bc = S - j0 < WC ? S - j0 : WC;
                if (mha__attn_tile_skip(&pr, b, ir, ir + wr, j0, j0 + bc)) {
                    for (int64_t r = 0; r < wr; r++)
                        for (int64_t c = 0; c < bc; c++) wt[r * ldw + j0 + c] = 0;
                    continue;
                }
                mha__attn_tile_mask mk;
                mha__attn_tile_mask_make(&pr, b, bh, ir, j0, &mk);
                kern->attn_scores(wr, bc, D, pr.scale, qt + r0 * q->stride[2], q->stride[2],
                                  mha__attn_row(k, b, h, j0), k->stride[2], wt + j0, ldw);
                kern->attn_probs(wr, bc, wt + j0, ldw, &mk, lt + r0);
                if (dropout) {
                    kern->attn_dropout(wr, bc, &dr, ir, j0, keep, WC);
                    kern->attn_dropout_apply(wr, bc, keep, WC, pr.keep_scale, wt + j0, ldw,
                                             wt + j0, ldw);
                }
            }
        }
    }
    mha__free(ws);
    return MHA_OK;
}
