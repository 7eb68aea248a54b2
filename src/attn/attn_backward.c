/* attn_backward.c - mha_attn_backward as FlashAttention-2 (Dao, 2023) in portable C.
 *
 * Forward:  s = q k^T * scale + mask,  P = softmax(s) = exp(s - lse),  W = P * keep / (1 - p),
 *           out = W v.
 * Backward: dv = W^T dout;  dW = dout v^T;  dP = dW * keep / (1 - p);
 *           Drow_i = sum_j P_ij dP_ij = dout_i . out_i;  dS = P * (dP - Drow);
 *           dq = scale * dS k;  dk = scale * dS^T q.
 *
 * P is recomputed tile by tile from the saved lse (no L x S buffer), once per tile pair: per
 * (query tile, key tile) five tile products, S = q k^T, dP = dout v^T, dv += W^T dout,
 * dk += dS^T q, dq += dS k (attn_scores x2, attn_ptv x2, attn_pv).
 *
 * KEY CHUNKS. The S keys of a (b, h) are cut into key tiles of attn_bc and the key tiles into
 * NC <= 8 consecutive chunks. One task = one (b, h, chunk): it owns dk, dv of its keys (summed
 * over the query tiles in order) and writes the dq CONTRIBUTION of its keys, dq_c (summed over
 * its key tiles in order), into a buffer of its own: chunk 0 straight into dq, chunk c >= 1
 * into partial[c - 1]. Then dq = ((dq_0 + dq_1) + dq_2) + ... in the fixed order c = 0..NC-1,
 * parallel over (b, h, query tile). No atomics; NC and the chunk boundaries depend only on the
 * shape, the causal mask and the kernel table's tile sizes, never on the thread count, so the
 * result is bitwise identical for any thread count.
 *   Causal: a key tile is needed only by query tiles qt >= qt_first(key tile); chunk c never
 *   touches the query rows below qt_first(its first key tile) * attn_br: those rows of its
 *   partial are neither written nor summed (the order of the remaining terms is unchanged).
 *   The boundaries balance the number of unmasked tile pairs per chunk (later key tiles see
 *   fewer query tiles, so their chunks hold more key tiles).
 *   NC = min(8, key tiles, ceil(16 / (B*H))): at least ~16 tasks per call so that 2 threads
 *   stay busy even for B*H = 1, and no partials at all (NC = 1) once B*H >= 16.
 *
 * WORKSPACE (one allocation, linear in L and S):
 *   per thread: P, dP, W tiles [attn_br, attn_bc] floats, lse tile [attn_br], keep bytes
 *   Drow [B*H*L] floats
 *   partials [G, NC - 1, L, D] floats for a group of G heads (b, h) processed at once, with
 *     G = clamp(floor(2 * B*H / (NC - 1)), 1, B*H): at most max(2 * dq, (NC - 1) * L * D)
 *     floats, i.e. at most twice dq's size once B*H >= 4 (NC - 1 <= 7 heads' dq below that).
 * Tiles fully excluded by causality, key_lengths or key_padding are skipped. */
#include "attn_common.h"
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const FN = "mha_attn_backward";

#define MAX_CHUNKS 8

/* The first query tile that causality lets see key tile kt (nqt: none; 0 without causality).
 * Query tile qt (rows [qt*BR, min(L, (qt+1)*BR))) is needed iff its last row allows key
 * j0 = kt*BC, i.e. last_row + causal_shift >= j0 (as mha__attn_tile_skip decides). */
static int64_t qt_first(const mha__attn_problem *pr, int64_t BR, int64_t BC, int64_t nqt,
                        int64_t kt) {
    if (pr->mask.causal == MHA_CAUSAL_NONE) return 0;
    int64_t t = kt * BC - pr->causal_shift; /* the first row that allows key j0 */
    if (t <= 0) return 0;
    if (t > pr->L - 1) return nqt;
    return t / BR; /* tiles qt < t / BR end before row t; tile t / BR holds row t */
}

/* Cuts the nkt key tiles into nc chunks [start[c], start[c + 1]) with about equal numbers of
 * unmasked tile pairs (weight of key tile kt: nqt - qt_first(kt)); every chunk non-empty when
 * nkt >= nc. */
static void chunk_bounds(const mha__attn_problem *pr, int64_t BR, int64_t BC, int64_t nqt,
                         int64_t nkt, int nc, int64_t *start) {
    int64_t total = 0;
    for (int64_t kt = 0; kt < nkt; kt++) total += nqt - qt_first(pr, BR, BC, nqt, kt);
    start[0] = 0;
    int64_t kt = 0, cum = 0;
    for (int c = 1; c < nc; c++) {
        /* the smallest kt with cum(kt) >= c * total / nc, cum(kt) = weight of tiles < kt */
        while (kt < nkt && cum * nc < (int64_t)c * total)
            cum += nqt - qt_first(pr, BR, BC, nqt, kt), kt++;
        int64_t s = kt;
        if (total == 0) s = (int64_t)c * nkt / nc;
        if (s < start[c - 1] + 1) s = start[c - 1] + 1;
        if (s > nkt - (nc - c)) s = nkt - (nc - c);
        start[c] = s;
    }
    start[nc] = nkt;
}

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
    const int64_t BH = B * H;
    if (BH == 0) return MHA_OK;
    const mha_kernels *kern = mha__ctx_kernels(ctx);
    const int64_t BR = kern->attn_br, BC = kern->attn_bc;
    const int64_t nqt = (L + BR - 1) / BR, nkt = (S + BC - 1) / BC;
    int nt = mha__ctx_threads(ctx);

    /* key chunks (see KEY CHUNKS above): a function of the shape and the tile sizes only */
    int64_t want = (16 + BH - 1) / BH;
    int NC = (int)(want < MAX_CHUNKS ? want : MAX_CHUNKS);
    if (NC > nkt) NC = (int)nkt;
    if (NC < 1) NC = 1;
    int64_t cstart[MAX_CHUNKS + 1], cfirst[MAX_CHUNKS];
    chunk_bounds(&pr, BR, BC, nqt, nkt, NC, cstart);
    for (int c = 0; c < NC; c++) /* chunk 0 owns every row of dq: it zeroes them all */
        cfirst[c] = c == 0 ? 0 : qt_first(&pr, BR, BC, nqt, cstart[c]);
    int64_t G = NC > 1 ? 2 * BH / (NC - 1) : BH;
    if (G < 1) G = 1;
    if (G > BH) G = BH;

    /* workspace: per thread P, dP, W [BR, BC], lse tile [BR], keep [BR, BC] bytes (rounded
     * up to 64 bytes), then Drow [BH, L], then partials [G, NC - 1, L, D] */
    size_t per = 0, tot = 0, nrow = 0, npart = 0, t1, t2;
    if (!mha__mul_size((size_t)BR, 3 * (size_t)BC + (size_t)BC / sizeof(float) + 2, &t1) ||
        !mha__add_size(t1, 16, &t2) || !mha__mul_size(t2 / 16 + 1, 16 * sizeof(float), &per) ||
        !mha__mul_size(per, (size_t)nt, &tot) || !mha__mul_size((size_t)BH, (size_t)L + 16, &nrow) ||
        !mha__mul_size(nrow, sizeof(float), &nrow) || !mha__add_size(tot, nrow, &tot) ||
        !mha__mul_size((size_t)G * (size_t)(NC - 1), (size_t)L, &npart) ||
        !mha__mul_size(npart, (size_t)D * sizeof(float), &npart) ||
        !mha__add_size(tot, npart, &tot))
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace size overflows", FN);
    unsigned char *ws = mha__malloc(tot);
    if (!ws) return mha__err(ctx, MHA_ERR_NOMEM, "%s: workspace: out of memory (%zu bytes)", FN, tot);
    float *Drow = (float *)(ws + per * (size_t)nt);
    float *part = (float *)(ws + per * (size_t)nt + nrow);
    const int dropout = pr.dropout_p > 0;
    const float ks = pr.keep_scale;
    const int64_t ldq = q->stride[2], ldk = k->stride[2], ldv = v->stride[2];
    const int64_t ldg = dout->stride[2], lddq = dq->stride[2];
    const int64_t lddk = dk->stride[2], lddv = dv->stride[2];
    const int64_t nq_task = BH * nqt;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *P = (float *)(ws + per * (size_t)tid), *dP = P + BR * BC, *Wt = dP + BR * BC;
        float *lt = Wt + BR * BC;
        uint8_t *keep = (uint8_t *)(lt + BR);

        /* pass 0: Drow_i = dout_i . out_i, tasks (b, h, query tile) */
#pragma omp for schedule(static)
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

        for (int64_t g0 = 0; g0 < BH; g0 += G) {
            const int64_t gn = BH - g0 < G ? BH - g0 : G;
            /* pass 1: tasks (b, h, key chunk): dk, dv of the chunk's keys, its dq share */
#pragma omp for schedule(dynamic, 1)
            for (int64_t task = 0; task < gn * NC; task++) {
                int64_t gi = task / NC, bh = g0 + gi, b = bh / H, h = bh % H;
                int c = (int)(task % NC);
                float *dqc = c == 0 ? mha__attn_row(dq, b, h, 0)
                                    : part + ((size_t)gi * (size_t)(NC - 1) + (size_t)(c - 1)) *
                                                 (size_t)L * (size_t)D;
                const int64_t lddqc = c == 0 ? lddq : D;
                for (int64_t i = cfirst[c] * BR; i < L; i++)
                    memset(dqc + i * lddqc, 0, sizeof(float) * (size_t)D);
                const float *lrow = lse->data + b * lse->stride[0] + h * lse->stride[1];
                const float *drow = Drow + bh * L;
                const mha__attn_dropout dr = mha__attn_dropout_make(&pr, bh);
                for (int64_t kt = cstart[c]; kt < cstart[c + 1]; kt++) {
                    int64_t j0 = kt * BC, bc = S - j0 < BC ? S - j0 : BC;
                    float *dkt = mha__attn_row(dk, b, h, j0), *dvt = mha__attn_row(dv, b, h, j0);
                    const float *ktile = mha__attn_row(k, b, h, j0), *vt = mha__attn_row(v, b, h, j0);
                    for (int64_t r = 0; r < bc; r++) {
                        memset(dkt + r * lddk, 0, sizeof(float) * (size_t)D);
                        if (Dv) memset(dvt + r * lddv, 0, sizeof(float) * (size_t)Dv);
                    }
                    for (int64_t qt = qt_first(&pr, BR, BC, nqt, kt); qt < nqt; qt++) {
                        int64_t i0 = qt * BR, br = L - i0 < BR ? L - i0 : BR;
                        if (mha__attn_tile_skip(&pr, b, i0, i0 + br, j0, j0 + bc)) continue;
                        mha__attn_tile_mask mk;
                        mha__attn_tile_mask_make(&pr, b, bh, i0, j0, &mk);
                        const float *qtile = mha__attn_row(q, b, h, i0);
                        const float *gtile = mha__attn_row(dout, b, h, i0);
                        for (int64_t r = 0; r < br; r++) lt[r] = lrow[(i0 + r) * lse->stride[2]];
                        kern->attn_scores(br, bc, D, pr.scale, qtile, ldq, ktile, ldk, P, BC);
                        kern->attn_probs(br, bc, P, BC, &mk, lt);
                        kern->attn_scores(br, bc, Dv, 1.0f, gtile, ldg, vt, ldv, dP, BC);
                        const float *W = P; /* dv += W^T dout */
                        if (dropout) {
                            /* keys past the last row's end are excluded for every row: P = 0
                             * there, so W = 0 and dS = 0 whatever their keep decision */
                            int64_t bcw = mha__attn_tile_row_end(&mk, br - 1, bc);
                            kern->attn_dropout(br, bcw, &dr, i0, j0, keep, BC);
                            kern->attn_dropout_apply(br, bcw, keep, BC, ks, P, BC, Wt, BC);
                            kern->attn_dropout_apply(br, bcw, keep, BC, ks, dP, BC, dP, BC);
                            for (int64_t r = 0; r < br && bcw < bc; r++)
                                for (int64_t x = bcw; x < bc; x++)
                                    Wt[r * BC + x] = 0.0f, dP[r * BC + x] = 0.0f;
                            W = Wt;
                        }
                        kern->attn_ptv(br, bc, Dv, W, BC, gtile, ldg, dvt, lddv);
                        /* dS = scale * P * (dP - Drow), in place over dP */
                        kern->attn_dsoftmax(br, bc, P, BC, dP, BC, drow + i0, pr.scale);
                        kern->attn_ptv(br, bc, D, dP, BC, qtile, ldq, dkt, lddk);
                        kern->attn_pv(br, bc, D, dP, BC, ktile, ldk, NULL, dqc + i0 * lddqc, lddqc);
                    }
                }
            }
            /* pass 2: dq = dq_0 + dq_1 + ... in chunk order, tasks (b, h, query tile) */
            if (NC > 1) {
#pragma omp for schedule(static)
                for (int64_t task = 0; task < gn * nqt; task++) {
                    int64_t gi = task / nqt, qt = task % nqt, bh = g0 + gi, b = bh / H, h = bh % H;
                    int64_t i0 = qt * BR, i1 = L - i0 < BR ? L : i0 + BR;
                    float *dqt = mha__attn_row(dq, b, h, 0);
                    for (int c = 1; c < NC && cfirst[c] <= qt; c++) {
                        const float *pc = part + ((size_t)gi * (size_t)(NC - 1) + (size_t)(c - 1)) *
                                                     (size_t)L * (size_t)D;
                        for (int64_t i = i0; i < i1; i++) {
                            float *d = dqt + i * lddq;
                            const float *s = pc + i * D;
                            for (int64_t x = 0; x < D; x++) d[x] += s[x];
                        }
                    }
                }
            }
        }
    }
    mha__free(ws);
    return MHA_OK;
}
