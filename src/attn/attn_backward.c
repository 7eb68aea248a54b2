/* attn_backward.c - mha_attn_backward as FlashAttention-2 (Dao, 2023) in portable C.
 *
 * Forward:  s = q k^T * scale + mask,  P = softmax(s) = exp(s - lse),  W = P * keep / (1 - p),
 *           out = W v.
 * Backward: dv = W^T dout;  dW = dout v^T;  dP = dW * keep / (1 - p);
 *           Drow_i = sum_j P_ij dP_ij = dout_i . out_i;  dS = P * (dP - Drow);
 *           dq = scale * dS k;  dk = scale * dS^T q.
 *
 * P is recomputed tile by tile from the saved lse (no L x S buffer). Three passes, each
 * parallel over independent tasks, no atomics, fixed summation order (bitwise identical for
 * any thread count), work finer than batch x heads:
 *   0. Drow for every row                            tasks: (b, h, query tile)
 *   1. dk, dv of one key tile, summed over the       tasks: (b, h, key tile)
 *      query tiles in order
 *   2. dq of one query tile, summed over the key     tasks: (b, h, query tile)
 *      tiles in order
 * Tiles fully excluded by causality, key_lengths or key_padding are skipped. */
#include "attn_common.h"
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const FN = "mha_attn_backward";

mha_status mha_attn_backward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                             const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                             const mha_tensor *out, const mha_tensor *lse,
                             const mha_tensor *dout, mha_tensor *dq, mha_tensor *dk,
                             mha_tensor *dv) {
    mha__clear(ctx);
    mha__attn_problem pr;
    mha_status st = mha__attn_check_inputs(ctx, FN, p, q, k, v, mask, &pr);
    if (st) return st;
    int64_t B = pr.B, H = pr.H, L = pr.L, S = pr.S, D = pr.D, Dv = pr.Dv;
    int64_t wo[4] = {B, H, L, Dv}, wl[3] = {B, H, L}, wq[4] = {B, H, L, D};
    int64_t wk[4] = {B, H, S, D}, wv[4] = {B, H, S, Dv};
    if ((st = mha__check_tensor(ctx, FN, "out", out, 4, wo, "[B, H, L, Dv]"))) return st;
    if ((st = mha__check_tensor(ctx, FN, "lse", lse, 3, wl, "[B, H, L]"))) return st;
    if ((st = mha__check_tensor(ctx, FN, "dout", dout, 4, wo, "[B, H, L, Dv]"))) return st;
    if ((st = mha__check_tensor(ctx, FN, "dq", dq, 4, wq, "[B, H, L, D]"))) return st;
    if ((st = mha__check_tensor(ctx, FN, "dk", dk, 4, wk, "[B, H, S, D]"))) return st;
    if ((st = mha__check_tensor(ctx, FN, "dv", dv, 4, wv, "[B, H, S, Dv]"))) return st;
    int64_t BH = B * H;
    if (BH == 0) return MHA_OK;
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    const int64_t BR = kern->attn_br, BC = kern->attn_bc;
    int nt = mha__ctx_threads(ctx);
    /* Drow [B*H*L]; per thread: P, dP, W [BR, BC], lse tile [BR], keep [BR, BC] bytes */
    size_t nrow = 0, per = 0, tot = 0, t1, t2;
    if (!mha__mul_size((size_t)BH, (size_t)L + 1, &nrow) ||
        !mha__mul_size((size_t)BR, 3 * (size_t)BC + (size_t)BC / sizeof(float) + 2, &t1) ||
        !mha__add_size(t1, 16, &t2) || !mha__mul_size(t2 / 16 + 1, 16 * sizeof(float), &per) ||
        !mha__mul_size(per, (size_t)nt, &tot) || !mha__mul_size(nrow, sizeof(float), &nrow) ||
        !mha__add_size(tot, nrow, &tot))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace size overflows", FN);
    unsigned char *ws = mha__malloc(tot);
    if (!ws) return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace: out of memory (%zu bytes)", FN, tot);
    float *Drow = (float *)(ws + per * (size_t)nt);
    const int64_t nqt = (L + BR - 1) / BR, nkt = (S + BC - 1) / BC;
    const int dropout = pr.dropout_p > 0;
    const float ks = pr.keep_scale;
    mha_attn_params dp = {0, pr.dropout_p, pr.seed, pr.offset};

    /* pass 0: Drow_i = dout_i . out_i */
    const int64_t nq_task = BH * nqt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && nq_task > 1)
    for (int64_t task = 0; task < nq_task; task++) {
        int64_t bh = task / nqt, i0 = (task % nqt) * BR, b = bh / H, h = bh % H;
        int64_t i1 = L - i0 < BR ? L : i0 + BR;
        for (int64_t i = i0; i < i1; i++) {
            const float *o = mha__attn_row(out, b, h, i), *g = mha__attn_row(dout, b, h, i);
            float acc = 0;
            for (int64_t x = 0; x < Dv; x++) acc += g[x] * o[x];
            Drow[bh * L + i] = acc;
        }
    }

    /* pass 1: dk, dv per key tile (parallel over (b, h, key tile)) */
    const int64_t nk_task = BH * nkt;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1 && nk_task > 1)
    for (int64_t task = 0; task < nk_task; task++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *P = (float *)(ws + per * (size_t)tid), *dP = P + BR * BC, *Wt = dP + BR * BC;
        float *lt = Wt + BR * BC;
        uint8_t *keep = (uint8_t *)(lt + BR);
        int64_t bh = task / nkt, j0 = (task % nkt) * BC, b = bh / H, h = bh % H;
        int64_t bc = S - j0 < BC ? S - j0 : BC;
        float *dkt = mha__attn_row(dk, b, h, j0), *dvt = mha__attn_row(dv, b, h, j0);
        const float *kt = mha__attn_row(k, b, h, j0), *vt = mha__attn_row(v, b, h, j0);
        for (int64_t c = 0; c < bc; c++) {
            for (int64_t x = 0; x < D; x++) dkt[c * dk->stride[2] + x] = 0;
            for (int64_t x = 0; x < Dv; x++) dvt[c * dv->stride[2] + x] = 0;
        }
        for (int64_t qt = 0; qt < nqt; qt++) {
            int64_t i0 = qt * BR, br = L - i0 < BR ? L - i0 : BR;
            if (mha__attn_tile_skip(&pr, b, i0, i0 + br, j0, j0 + bc)) continue;
            mha__attn_tile_mask mk;
            mha__attn_tile_mask_make(&pr, b, bh, i0, j0, &mk);
            const float *qtile = mha__attn_row(q, b, h, i0), *gtile = mha__attn_row(dout, b, h, i0);
            for (int64_t r = 0; r < br; r++)
                lt[r] = lse->data[b * lse->stride[0] + h * lse->stride[1] + (i0 + r) * lse->stride[2]];
            kern->attn_scores(br, bc, D, pr.scale, qtile, q->stride[2], kt, k->stride[2], P, BC);
            kern->attn_probs(br, bc, P, BC, &mk, lt);
            kern->attn_scores(br, bc, Dv, 1.0f, gtile, dout->stride[2], vt, v->stride[2], dP, BC);
            const float *W = P; /* dv += W^T dout */
            if (dropout) {
                for (int64_t r = 0; r < br; r++) {
                    uint8_t *kr = keep + r * BC;
                    mha__dropout_row(&dp, bh, i0 + r, j0, bc, kr);
                    for (int64_t c = 0; c < bc; c++) {
                        Wt[r * BC + c] = kr[c] ? P[r * BC + c] * ks : 0.0f;
                        dP[r * BC + c] = kr[c] ? dP[r * BC + c] * ks : 0.0f;
                    }
                }
                W = Wt;
            }
            kern->attn_ptv(br, bc, Dv, W, BC, gtile, dout->stride[2], dvt, dv->stride[2]);
            kern->attn_dsoftmax(br, bc, P, BC, dP, BC, Drow + bh * L + i0, pr.scale);
            kern->attn_ptv(br, bc, D, dP, BC, qtile, q->stride[2], dkt, dk->stride[2]);
        }
    }
    /* pass 2: dq per query tile (parallel over (b, h, query tile)) */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1 && nq_task > 1)
    for (int64_t task = 0; task < nq_task; task++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *P = (float *)(ws + per * (size_t)tid), *dP = P + BR * BC, *lt = dP + 2 * BR * BC;
        uint8_t *keep = (uint8_t *)(lt + BR);
        int64_t bh = task / nqt, i0 = (task % nqt) * BR, b = bh / H, h = bh % H;
        int64_t br = L - i0 < BR ? L - i0 : BR;
        const float *qtile = mha__attn_row(q, b, h, i0), *gtile = mha__attn_row(dout, b, h, i0);
        float *dqt = mha__attn_row(dq, b, h, i0);
        for (int64_t r = 0; r < br; r++) {
            for (int64_t x = 0; x < D; x++) dqt[r * dq->stride[2] + x] = 0;
            lt[r] = lse->data[b * lse->stride[0] + h * lse->stride[1] + (i0 + r) * lse->stride[2]];
        }
        for (int64_t kt = 0; kt < nkt; kt++) {
            int64_t j0 = kt * BC, bc = S - j0 < BC ? S - j0 : BC;
            if (mha__attn_tile_skip(&pr, b, i0, i0 + br, j0, j0 + bc)) continue;
            mha__attn_tile_mask mk;
            mha__attn_tile_mask_make(&pr, b, bh, i0, j0, &mk);
            const float *ktile = mha__attn_row(k, b, h, j0), *vtile = mha__attn_row(v, b, h, j0);
            kern->attn_scores(br, bc, D, pr.scale, qtile, q->stride[2], ktile, k->stride[2], P, BC);
            kern->attn_probs(br, bc, P, BC, &mk, lt);
            kern->attn_scores(br, bc, Dv, 1.0f, gtile, dout->stride[2], vtile, v->stride[2], dP, BC);
            if (dropout)
                for (int64_t r = 0; r < br; r++) {
                    mha__dropout_row(&dp, bh, i0 + r, j0, bc, keep);
                    for (int64_t c = 0; c < bc; c++)
                        dP[r * BC + c] = keep[c] ? dP[r * BC + c] * ks : 0.0f;
                }
            kern->attn_dsoftmax(br, bc, P, BC, dP, BC, Drow + bh * L + i0, pr.scale);
            kern->attn_pv(br, bc, D, dP, BC, ktile, k->stride[2], NULL, dqt, dq->stride[2]);
        }
    }
    mha__free(ws);
    return MHA_OK;
}
