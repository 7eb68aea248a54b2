/* attn_forward.c - mha_attn_forward: out = dropout(softmax(q k^T * scale + mask)) v, as
 * FlashAttention-2 (Dao, 2023) in portable C over the kernel table's tile kernels.
 *
 * One task = one (batch, head, query tile of br rows); tasks are independent, so OpenMP hands
 * them to threads in any order and the result is the same for every thread count.
 * Per task, for each key tile of bc columns (tiles fully excluded by causality, key_lengths or
 * key_padding are skipped):
 *     S = q_tile k_tile^T * scale                                 attn_scores  [br, bc]
 *     mask, m' = max(m, rowmax S), P = exp(S - m'), alpha = exp(m - m'),
 *     l = alpha l + rowsum P                                      attn_softmax (in place)
 *     P *= keep (dropout; the 1/(1-p) is folded into the final division)
 *     acc = diag(alpha) acc + P v_tile                            attn_pv      [br, Dv]
 * then out = acc * (1/(1-p)) / l, lse = m + log(l) (l == 0: out 0, lse -inf). No L x S buffer:
 * the score tile stays in cache; the optional weights are recomputed tile by tile from lse
 * (attn_probs) straight into the caller's weights rows. */
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
    const int64_t BR = kern->attn_br, BC = kern->attn_bc;
    int nt = mha__ctx_threads(ctx);
    /* per thread: S tile [BR, BC], acc [BR, Dv], m, l, alpha, lse [BR], keep [BC] bytes */
    size_t per = 0, tot = 0, t1, t2;
    if (!mha__mul_size((size_t)BR, (size_t)BC + (size_t)Dv + 4, &t1) ||
        !mha__add_size(t1, (size_t)BC / sizeof(float) + 16, &t2) ||
        !mha__mul_size(t2 / 16 + 1, 16 * sizeof(float), &per) ||
        !mha__mul_size(per, (size_t)nt, &tot))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace size overflows", FN);
    unsigned char *ws = mha__malloc(tot);
    if (!ws) return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace: out of memory (%zu bytes)", FN, tot);
    const int64_t nqt = (L + BR - 1) / BR, nkt = (S + BC - 1) / BC, ntask = B * H * nqt;
    const int dropout = pr.dropout_p > 0;
    mha_attn_params dp = {0, pr.dropout_p, pr.seed, pr.offset};
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1 && ntask > 1)
    for (int64_t task = 0; task < ntask; task++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *St = (float *)(ws + per * (size_t)tid);
        float *acc = St + BR * BC, *m = acc + BR * Dv, *l = m + BR, *alpha = l + BR;
        float *lt = alpha + BR;
        uint8_t *keep = (uint8_t *)(lt + BR);
        int64_t bh = task / nqt, i0 = (task % nqt) * BR, b = bh / H, h = bh % H;
        int64_t br = L - i0 < BR ? L - i0 : BR;
        const float *qt = mha__attn_row(q, b, h, i0);
        for (int64_t r = 0; r < br; r++) m[r] = -INFINITY, l[r] = 0;
        for (int64_t x = 0; x < br * Dv; x++) acc[x] = 0;
        for (int64_t kt = 0; kt < nkt; kt++) {
            int64_t j0 = kt * BC, bc = S - j0 < BC ? S - j0 : BC;
            if (mha__attn_tile_skip(&pr, b, i0, i0 + br, j0, j0 + bc)) continue;
            mha__attn_tile_mask mk;
            mha__attn_tile_mask_make(&pr, b, bh, i0, j0, &mk);
            kern->attn_scores(br, bc, D, pr.scale, qt, q->stride[2], mha__attn_row(k, b, h, j0),
                              k->stride[2], St, BC);
            kern->attn_softmax(br, bc, St, BC, &mk, m, l, alpha);
            if (dropout)
                for (int64_t r = 0; r < br; r++) {
                    mha__dropout_row(&dp, bh, i0 + r, j0, bc, keep);
                    for (int64_t c = 0; c < bc; c++)
                        if (!keep[c]) St[r * BC + c] = 0;
                }
            kern->attn_pv(br, bc, Dv, St, BC, mha__attn_row(v, b, h, j0), v->stride[2], alpha,
                          acc, Dv);
        }
        for (int64_t r = 0; r < br; r++) {
            float *o = mha__attn_row(out, b, h, i0 + r);
            if (l[r] > 0) {
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
        /* weights = dropout(exp(s - lse)), recomputed per key tile into the caller's rows */
        float *wt = mha__attn_row(weights, b, h, i0);
        const int64_t ldw = weights->stride[2];
        for (int64_t kt = 0; kt < nkt; kt++) {
            int64_t j0 = kt * BC, bc = S - j0 < BC ? S - j0 : BC;
            if (mha__attn_tile_skip(&pr, b, i0, i0 + br, j0, j0 + bc)) {
                for (int64_t r = 0; r < br; r++)
                    for (int64_t c = 0; c < bc; c++) wt[r * ldw + j0 + c] = 0;
                continue;
            }
            mha__attn_tile_mask mk;
            mha__attn_tile_mask_make(&pr, b, bh, i0, j0, &mk);
            kern->attn_scores(br, bc, D, pr.scale, qt, q->stride[2], mha__attn_row(k, b, h, j0),
                              k->stride[2], wt + j0, ldw);
            kern->attn_probs(br, bc, wt + j0, ldw, &mk, lt);
            if (dropout)
                for (int64_t r = 0; r < br; r++) {
                    mha__dropout_row(&dp, bh, i0 + r, j0, bc, keep);
                    float *w = wt + r * ldw + j0;
                    for (int64_t c = 0; c < bc; c++) w[c] = keep[c] ? w[c] * pr.keep_scale : 0.0f;
                }
        }
    }
    mha__free(ws);
    return MHA_OK;
}
