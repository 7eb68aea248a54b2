/* attn_backward.c - mha_attn_backward as FlashAttention-2 (Dao, 2023) in portable C.
 *
 * Forward:  s = (scale q) k^T + mask,  P = softmax(s) = exp(s - lse),  W = P * keep / (1 - p),
 *           out = W v.
 * Backward: dv = W^T dout;  dW = dout v^T;  dP = dW * keep / (1 - p);
 *           Drow_i = sum_j P_ij dP_ij = dout_i . out_i;  dS = P * (dP - Drow);
 *           dq = scale * dS k;  dk = scale * dS^T q.
 *
 * P is recomputed tile by tile from the saved lse (no L x S buffer), once per tile pair, with
 * the scale applied to q before the product as in the forward: per (query tile, key tile)
 * five tile products, S = (scale q) k^T, dP = dout v^T, dv += W^T dout,
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
 * WORKSPACE (one allocation, linear in L and S, planned once in bwd_plan):
 *   per thread, together: P, dP, W tiles [attn_br, attn_bc] floats, lse tile [attn_br], keep
 *     bytes, the scaled query tile [attn_br, D]
 *   Drow [B*H*L] floats
 *   partials [G, NC - 1, L, D] floats for a group of G heads (b, h) processed at once, with
 *     G = clamp(floor(2 * B*H / (NC - 1)), 1, B*H): at most max(2 * dq, (NC - 1) * L * D)
 *     floats, i.e. at most twice dq's size once B*H >= 4 (NC - 1 <= 7 heads' dq below that).
 * Tiles fully excluded by causality, the window, key_lengths or key_padding are skipped (and
 * a key tile's query tiles run from qt_first to qt_end only); of a tile pair on the causal
 * diagonal, the products skip the excluded corner in blocks of 16 rows and keys (THE CORNER A
 * TILE PAIR SKIPS, below).
 *
 * The steps: bwd_check validates, bwd_plan chooses tiles, chunks and groups and declares the
 * workspace, bwd_drow / bwd_chunk (bwd_pair per tile pair) / bwd_sum are the three passes. */
#include "attn_common.h"
#include "core/plan.h"
#include "kernels/cvt.h"
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_CHUNKS 8

/* The first query tile that causality (and the window's right bound) lets see key tile kt
 * (nqt: none; 0 without them). Query tile qt (rows [qt*BR, min(L, (qt+1)*BR))) is needed only
 * if its last row allows key j0 = kt*BC, i.e. last_row + hi_shift >= j0 (as
 * mha__attn_tile_skip decides). */
static int64_t qt_first(const mha__attn_problem *pr, int64_t BR, int64_t BC, int64_t nqt,
                        int64_t kt) {
    if (pr->hi_shift == MHA__ATTN_NO_DIAG) return 0;
    int64_t t = kt * BC - pr->hi_shift; /* the first row that allows key j0 */
    if (t <= 0) return 0;
    if (t > pr->L - 1) return nqt;
    return t / BR; /* tiles qt < t / BR end before row t; tile t / BR holds row t */
}

/* One past the last query tile that the window's left bound lets see key tile kt (nqt without
 * a left bound): query tile qt is needed only if its first row allows the tile's last key j1 - 1,
 * i.e. first_row + lo_shift <= j1 - 1. */
static int64_t qt_end(const mha__attn_problem *pr, int64_t BR, int64_t BC, int64_t nqt,
                      int64_t kt) {
    if (pr->lo_shift == -MHA__ATTN_NO_DIAG) return nqt;
    int64_t j1 = (kt + 1) * BC < pr->S ? (kt + 1) * BC : pr->S;
    int64_t t = j1 - 1 - pr->lo_shift; /* the last row that allows key j1 - 1 */
    if (t < 0) return 0;
    return t / BR + 1 < nqt ? t / BR + 1 : nqt;
}

/* The number of query tiles that may see key tile kt (the unmasked tile pairs of its column). */
static int64_t qt_count(const mha__attn_problem *pr, int64_t BR, int64_t BC, int64_t nqt,
                        int64_t kt) {
    int64_t n = qt_end(pr, BR, BC, nqt, kt) - qt_first(pr, BR, BC, nqt, kt);
    return n > 0 ? n : 0;
}

/* Cuts the nkt key tiles into nc chunks [start[c], start[c + 1]) with about equal numbers of
 * unmasked tile pairs (weight of key tile kt: qt_count(kt)); every chunk non-empty when
 * nkt >= nc. */
static void chunk_bounds(const mha__attn_problem *pr, int64_t BR, int64_t BC, int64_t nqt,
                         int64_t nkt, int nc, int64_t *start) {
    int64_t total = 0;
    for (int64_t kt = 0; kt < nkt; kt++) total += qt_count(pr, BR, BC, nqt, kt);
    start[0] = 0;
    int64_t kt = 0, cum = 0;
    for (int c = 1; c < nc; c++) {
        /* the smallest kt with cum(kt) >= c * total / nc, cum(kt) = weight of tiles < kt */
        while (kt < nkt && cum * nc < (int64_t)c * total)
            cum += qt_count(pr, BR, BC, nqt, kt), kt++;
        int64_t s = kt;
        if (total == 0) s = (int64_t)c * nkt / nc;
        if (s < start[c - 1] + 1) s = start[c - 1] + 1;
        if (s > nkt - (nc - c)) s = nkt - (nc - c);
        start[c] = s;
    }
    start[nc] = nkt;
}

/* One call: its validated arguments and its plan. */
typedef struct {
    mha__attn_problem pr;
    const mha_kernels *kern;
    const mha_tensor *q, *k, *v, *out, *lse, *dout;
    mha_tensor *dq, *dk, *dv;  /* dk, dv: the caller's, or per query head (grouped, below) */
    mha_tensor *dk_kv, *dv_kv; /* the caller's [B, Hkv, S, *] */
    mha_tensor dk_h, dv_h;     /* grouped-query: per query head [B, H, S, *], summed at the end */
    int64_t BR, BC, nqt, nkt;
    int NC;                         /* key chunks per head */
    int64_t cstart[MAX_CHUNKS + 1]; /* chunk c: key tiles [cstart[c], cstart[c + 1]) */
    int64_t cfirst[MAX_CHUNKS];     /* the first query tile chunk c touches */
    int64_t G;                      /* heads per group (the partials' size) */
    int nt;
    int bf;          /* bf16 inputs on the table's bf16 kernels (dq, dk, dv summed in float32) */
    int dkv_tiles;   /* bf without grouped heads: dk, dv (the caller's bf16 views) summed per key
                        tile in float32 tiles of each thread and rounded into them tile by tile */
    int64_t np, nvp; /* bf: D and Dv rounded up to even (the kernels' pairs) */
    mha__plan tiles; /* one bwd_tiles, nt copies */
    mha__plan plan;  /* one bwd_ws */
} bwd_call;

/* The workspace, declared in bwd_plan: the shared regions and one copy of bwd_tiles per
 * thread. */
typedef struct {
    float *drow;   /* [B*H, L] Drow = rowsum(dout * out) */
    float *part;   /* [G * (NC - 1), L * D] dq contributions of chunks c >= 1 */
    float *dkh;    /* grouped-query only: dk and dv per query head, [B*H*S, D] and */
    float *dvh;    /* [B*H*S, Dv], summed over each group into the caller's dk, dv (pass 3) */
    void *threads; /* nt copies of bwd_tiles's regions (plan c->tiles), one after the other */
} bwd_ws;

/* One thread's tiles: a copy of its own, so that each thread's tiles lie together (as the
 * threads of one core share its caches, their tiles must not all start at the same offset). */
typedef struct {
    float *P, *dP, *W; /* [BR, BC] each */
    float *lt;         /* [BR] the lse of a query tile */
    uint8_t *keep;     /* [BR, BC] dropout keep bytes */
    float *G;          /* [BR, BC] the softcap's derivative (softcap only: else 0 bytes) */
    float *qs;         /* [BR, D] a query tile times scale */
    float *kpf, *vpf;  /* float32 only: the key tile's k and v packed by attn_kpack (each FBC x D,
                        * FBC x Dv), once for all its query tiles (attn_scores_kp) */
    float *dkt, *dvt;  /* dkv_tiles only: a key tile's dk [BC, D] and dv [BC, Dv] */
    /* bf only (else 0 bytes), the BFLOAT16 BACKWARD operands: per key tile, k in panels over
     * D, v in panels over Dv, k in pairs of keys; per tile pair the pairs of W^T / dS^T; per
     * task, every query row of the head: q and dout rows (zero past D, Dv) and in row pairs */
    uint16_t *kp, *vp, *kv, *T;
    uint16_t *qa, *ga, *q2, *g2;
} bwd_tiles;

/* One pass-1 task: key chunk ch of head (b, h), bh = b*H + h. */
typedef struct {
    int64_t b, h, bh;
    int ch;
    float *dqc; /* its dq contribution: dq itself (ch 0) or its partial */
    int64_t lddqc;
    const float *lrow; /* lse of the head, row i at i * lse->stride[2] */
    const float *drow; /* Drow of the head [L] */
    mha__attn_dropout dr;
} bwd_task;

static mha_status bwd_check(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                            const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                            const mha_mask *mask, const mha_tensor *out, const mha_tensor *lse,
                            const mha_tensor *dout, mha_tensor *dq, mha_tensor *dk, mha_tensor *dv,
                            bwd_call *c) {
    mha__attn_problem *pr = &c->pr;
    mha_status st = mha__attn_check_inputs(ctx, fn, p, q, k, v, mask, pr);
    if (st) return st;
    int64_t B = pr->B, H = pr->H, L = pr->L, S = pr->S, D = pr->D, Dv = pr->Dv;
    int64_t wo[4] = {B, H, L, Dv}, wl[3] = {B, H, L}, wq[4] = {B, H, L, D};
    int64_t wk[4] = {B, pr->Hkv, S, D}, wv[4] = {B, pr->Hkv, S, Dv};
    const mha_dtype dt = pr->dt;
    if ((st = mha__check_tensor_as(ctx, fn, "out", out, dt, 4, wo, "[B, H, L, Dv]"))) return st;
    if ((st = mha__check_tensor(ctx, fn, "lse", lse, 3, wl, "[B, H, L]"))) return st;
    if ((st = mha__check_tensor_as(ctx, fn, "dout", dout, dt, 4, wo, "[B, H, L, Dv]"))) return st;
    if ((st = mha__check_tensor_as(ctx, fn, "dq", dq, dt, 4, wq, "[B, H, L, D]"))) return st;
    if ((st = mha__check_tensor_as(ctx, fn, "dk", dk, dt, 4, wk, "[B, Hkv, S, D] as k"))) return st;
    if ((st = mha__check_tensor_as(ctx, fn, "dv", dv, dt, 4, wv, "[B, Hkv, S, Dv] as v")))
        return st;
    const mha__attn_arg ins[6] = {{"q", q},     {"k", k},     {"v", v},
                                  {"out", out}, {"lse", lse}, {"dout", dout}};
    const mha__attn_arg outs[3] = {{"dq", dq}, {"dk", dk}, {"dv", dv}};
    if ((st = mha__attn_check_aliases(ctx, fn, outs, 3, ins, 6))) return st;
    c->q = q, c->k = k, c->v = v, c->out = out, c->lse = lse, c->dout = dout;
    c->dq = dq, c->dk = c->dk_kv = dk, c->dv = c->dv_kv = dv;
    return MHA_OK;
}

/* Tiles, key chunks, head groups and the workspace of a validated call with B*H > 0. */
static void bwd_plan(mha_ctx *ctx, bwd_call *c) {
    const mha__attn_problem *pr = &c->pr;
    const mha_kernels *kern = c->kern = mha__ctx_kernels(ctx);
    const int64_t BH = pr->B * pr->H, BR = c->BR = kern->attn_br, BC = c->BC = kern->attn_bc;
    const int64_t nqt = c->nqt = (pr->L + BR - 1) / BR, nkt = c->nkt = (pr->S + BC - 1) / BC;
    c->nt = mha__ctx_threads(ctx);
    /* key chunks (see KEY CHUNKS above): a function of the shape and the tile sizes only */
    int64_t want = (16 + BH - 1) / BH;
    int NC = (int)(want < MAX_CHUNKS ? want : MAX_CHUNKS);
    if (NC > nkt) NC = (int)nkt;
    if (NC < 1) NC = 1;
    c->NC = NC;
    chunk_bounds(pr, BR, BC, nqt, nkt, NC, c->cstart);
    for (int ch = 0; ch < NC; ch++) /* chunk 0 owns every row of dq: it zeroes them all */
        c->cfirst[ch] = ch == 0 ? 0 : qt_first(pr, BR, BC, nqt, c->cstart[ch]);
    c->G = NC > 1 ? 2 * BH / (NC - 1) : BH;
    if (c->G < 1) c->G = 1;
    if (c->G > BH) c->G = BH;
    mha__plan *tl = &c->tiles, *pl = &c->plan;
    mha__plan_init(tl);
    MHA__PLAN_ADD(tl, bwd_tiles, P, sizeof(float), BR, BC);
    MHA__PLAN_ADD(tl, bwd_tiles, dP, sizeof(float), BR, BC);
    MHA__PLAN_ADD(tl, bwd_tiles, W, sizeof(float), BR, BC);
    MHA__PLAN_ADD(tl, bwd_tiles, lt, sizeof(float), BR, 1);
    MHA__PLAN_ADD(tl, bwd_tiles, keep, 1, BR, BC);
    MHA__PLAN_ADD(tl, bwd_tiles, G, sizeof(float), pr->softcap > 0 ? BR : 0, BC);
    MHA__PLAN_ADD(tl, bwd_tiles, qs, sizeof(float), c->bf ? 0 : BR, pr->D);
    const int64_t FBC = c->bf ? 0 : kern->attn_fwd_bc; /* attn_kpack's tile (kernels.h) */
    MHA__PLAN_ADD(tl, bwd_tiles, kpf, sizeof(float), FBC, pr->D);
    MHA__PLAN_ADD(tl, bwd_tiles, vpf, sizeof(float), FBC, pr->Dv);
    MHA__PLAN_ADD(tl, bwd_tiles, dkt, sizeof(float), c->dkv_tiles ? BC : 0, pr->D);
    MHA__PLAN_ADD(tl, bwd_tiles, dvt, sizeof(float), c->dkv_tiles ? BC : 0, pr->Dv);
    const int64_t bf = c->bf, L2 = (pr->L + 1) / 2 * 2; /* rows in whole pairs */
    c->np = (pr->D + 1) / 2 * 2, c->nvp = (pr->Dv + 1) / 2 * 2;
    MHA__PLAN_ADD(tl, bwd_tiles, kp, sizeof(uint16_t), bf * BC, c->np);
    MHA__PLAN_ADD(tl, bwd_tiles, vp, sizeof(uint16_t), bf * BC, c->nvp);
    MHA__PLAN_ADD(tl, bwd_tiles, kv, sizeof(uint16_t), bf * (BC + 1) / 2 * 2, pr->D);
    MHA__PLAN_ADD(tl, bwd_tiles, T, sizeof(uint16_t), bf * (BR + 1) / 2 * 2, BC);
    MHA__PLAN_ADD(tl, bwd_tiles, qa, sizeof(uint16_t), bf * pr->L, c->np);
    MHA__PLAN_ADD(tl, bwd_tiles, ga, sizeof(uint16_t), bf * pr->L, c->nvp);
    MHA__PLAN_ADD(tl, bwd_tiles, q2, sizeof(uint16_t), bf * L2, pr->D);
    MHA__PLAN_ADD(tl, bwd_tiles, g2, sizeof(uint16_t), bf * L2, pr->Dv);
    mha__plan_init(pl);
    MHA__PLAN_ADD(pl, bwd_ws, drow, sizeof(float), BH, pr->L);
    MHA__PLAN_ADD(pl, bwd_ws, part, sizeof(float), c->G * (NC - 1), pr->L * pr->D);
    const int64_t nh = pr->kv_group > 1 ? BH * pr->S : 0;
    MHA__PLAN_ADD(pl, bwd_ws, dkh, sizeof(float), nh, pr->D);
    MHA__PLAN_ADD(pl, bwd_ws, dvh, sizeof(float), nh, pr->Dv);
    MHA__PLAN_ADD_COPIES(pl, bwd_ws, threads, tl, c->nt);
}

/* pass 0, task (b, h, query tile): Drow_i = dout_i . out_i, summed in vector lanes (omp simd:
 * an order fixed by the build, the same for every thread; a sequential sum was 3% of a causal
 * N = 256 backward) */
static void bwd_drow(const bwd_call *c, const bwd_ws *ws, int64_t task) {
    const int64_t L = c->pr.L, BR = c->BR;
    int64_t bh = task / c->nqt, i0 = (task % c->nqt) * BR, b = bh / c->pr.H, h = bh % c->pr.H;
    int64_t i1 = L - i0 < BR ? L : i0 + BR;
    for (int64_t i = i0; i < i1; i++) {
        float acc = 0;
        if (c->bf) { /* bf16 out and dout, exactly in float32 */
            const uint16_t *o = mha__attn_row_at(c->out, b, h, i);
            const uint16_t *g = mha__attn_row_at(c->dout, b, h, i);
#pragma omp simd reduction(+ : acc)
            for (int64_t x = 0; x < c->pr.Dv; x++)
                acc += mha__bf16_to_f32(g[x]) * mha__bf16_to_f32(o[x]);
        } else {
            const float *o = mha__attn_row(c->out, b, h, i), *g = mha__attn_row(c->dout, b, h, i);
#pragma omp simd reduction(+ : acc)
            for (int64_t x = 0; x < c->pr.Dv; x++) acc += g[x] * o[x];
        }
        ws->drow[bh * L + i] = acc;
    }
}

/* A tile pair of a pass-1 task: query rows [i0, i0 + br), keys [j0, j0 + bc), its masks. */
typedef struct {
    int64_t i0, br, j0, bc;
    mha__attn_tile_mask mk;
    float *dk, *dv; /* rows j0 .. of dk and dv (float32), row strides lddk, lddv */
    int64_t lddk, lddv;
} bwd_tile;

/* Tile pair (query tile qt, key tile kt) into *x and the lse of its rows into w->lt; 0 when
 * the masks exclude the whole pair (skipped). */
static int bwd_tile_begin(const bwd_call *c, const bwd_task *t, const bwd_tiles *w, int64_t kt,
                          int64_t qt, bwd_tile *x) {
    const mha__attn_problem *pr = &c->pr;
    x->j0 = kt * c->BC, x->bc = pr->S - x->j0 < c->BC ? pr->S - x->j0 : c->BC;
    x->i0 = qt * c->BR, x->br = pr->L - x->i0 < c->BR ? pr->L - x->i0 : c->BR;
    if (mha__attn_tile_skip(pr, t->b, x->i0, x->i0 + x->br, x->j0, x->j0 + x->bc)) return 0;
    mha__attn_tile_mask_make(pr, t->b, t->bh, x->i0, x->j0, &x->mk);
    for (int64_t r = 0; r < x->br; r++) w->lt[r] = t->lrow[(x->i0 + r) * c->lse->stride[2]];
    return 1;
}

/* With dropout, rows [r0, r0 + br) of the tile's W = P * keep / (1-p) (into w->W) and
 * dP *= keep / (1-p), keys [0, bc); returns W (P itself without dropout). mk: the masks of
 * those rows (row r0 first). Keys past the last row's end are excluded for every row: P = 0
 * there, so W = 0 and dS = 0 whatever their keep decision. */
static const float *bwd_dropout(const bwd_call *c, const bwd_task *t, const bwd_tiles *w,
                                const mha__attn_tile_mask *mk, int64_t i0, int64_t j0, int64_t r0,
                                int64_t br, int64_t bc) {
    const mha_kernels *kern = c->kern;
    const int64_t BC = c->BC;
    if (c->pr.dropout_p == 0) return w->P;
    const float ks = c->pr.keep_scale;
    float *W = w->W + r0 * BC, *dP = w->dP + r0 * BC;
    uint8_t *keep = w->keep + r0 * BC;
    int64_t bcw = mha__attn_tile_row_end(mk, br - 1, bc);
    kern->attn_dropout(br, bcw, &t->dr, c->pr.row0 + i0 + r0, c->pr.col0 + j0, keep, BC);
    kern->attn_dropout_apply(br, bcw, keep, BC, ks, w->P + r0 * BC, BC, W, BC);
    kern->attn_dropout_apply(br, bcw, keep, BC, ks, dP, BC, dP, BC);
    for (int64_t r = 0; r < br && bcw < bc; r++)
        for (int64_t x = bcw; x < bc; x++) W[r * BC + x] = 0.0f, dP[r * BC + x] = 0.0f;
    return w->W;
}

/* THE CORNER A TILE PAIR SKIPS. Where causality (or the window's right bound, or key_lengths)
 * excludes the upper right of a tile pair, its products skip what they can (their weights
 * there are exactly 0: kernels.h lets kernels skip those; the sums keep their order):
 *   the products along rows (the scores, dP, dsoftmax, dq += dS k) run in row blocks of TRIM
 *   rows, each over keys [0, w) with w its last row's end rounded up to TRIM (the keys past it
 *   are excluded for the whole block);
 *   the products summed over rows (dv += W^T dout, dk += dS^T q) run in key blocks of TRIM
 *   keys, each from the first row that allows its first key (the rows before see none of it).
 * Every element a key block reads was written by its row block: a row that allows key c0
 * (a multiple of TRIM) has w >= c0 + TRIM. A tile pair nothing excludes, or larger than
 * BLK_MAX blocks, is one block each way. */
#define TRIM 16
#define BLK_MAX 16
typedef struct {
    int nr, nk;
    /* row block j: rows [r0[j], r0[j + 1]), keys [0, w[j]) */
    int64_t r0[BLK_MAX + 1], w[BLK_MAX];
    /* key block k: keys [c0[k], c0[k + 1]), rows [rs[k], br) */
    int64_t c0[BLK_MAX + 1], rs[BLK_MAX];
} bwd_blocks;

static void bwd_blocks_make(const bwd_tile *x, bwd_blocks *bl) {
    const int64_t br = x->br, bc = x->bc;
    int64_t w0 = mha__attn_tile_row_end(&x->mk, br < TRIM ? br - 1 : TRIM - 1, bc);
    if (w0 >= bc || br > TRIM * BLK_MAX || bc > TRIM * BLK_MAX) {
        bl->nr = bl->nk = 1;
        bl->r0[0] = 0, bl->r0[1] = br, bl->w[0] = bc;
        bl->c0[0] = 0, bl->c0[1] = bc, bl->rs[0] = 0;
        return;
    }
    bl->nr = 0;
    for (int64_t r = 0; r < br; r += TRIM) {
        const int64_t r1 = br - r < TRIM ? br : r + TRIM;
        const int64_t e = mha__attn_tile_row_end(&x->mk, r1 - 1, bc);
        bl->r0[bl->nr] = r;
        bl->w[bl->nr++] = (e + TRIM - 1) / TRIM * TRIM < bc ? (e + TRIM - 1) / TRIM * TRIM : bc;
    }
    bl->r0[bl->nr] = br;
    bl->nk = 0;
    int64_t rs = 0;
    for (int64_t c = 0; c < bc; c += TRIM) {
        while (rs < br && mha__attn_tile_row_end(&x->mk, rs, bc) <= c) rs++;
        bl->c0[bl->nk] = c;
        bl->rs[bl->nk++] = rs;
    }
    bl->c0[bl->nk] = bc;
}

/* The five products of the tile pair (query tile qt, key tile kt) of a pass-1 task:
 *   P = exp((scale q) k^T + mask - lse)   (attn_scores_kp on the scaled tile, attn_probs)
 *   dP = dout v^T (attn_scores_kp; k and v packed once per key tile by bwd_run);
 *   with dropout W = P * keep / (1-p), dP = dP * keep / (1-p)
 *   dv += W^T dout;  dS = scale * P * (dP - Drow) (* the softcap's derivative);
 *   dk += dS^T q;  dq_c += dS k */
static void bwd_pair(const bwd_call *c, const bwd_task *t, const bwd_tiles *w, const bwd_tile *x) {
    const mha__attn_problem *pr = &c->pr;
    const mha_kernels *kern = c->kern;
    const int64_t BC = c->BC, D = pr->D, Dv = pr->Dv, b = t->b, h = t->h;
    const int64_t i0 = x->i0, br = x->br, j0 = x->j0;
    const int64_t ldq = c->q->stride[2], ldk = c->k->stride[2], ldg = c->dout->stride[2];
    const int64_t lddk = x->lddk, lddv = x->lddv;
    const float *qtile = mha__attn_row(c->q, b, h, i0), *gtile = mha__attn_row(c->dout, b, h, i0);
    const float *ktile = mha__attn_kv_row(pr, c->k, b, h, j0);
    float *dkt = x->dk, *dvt = x->dv;
    float *P = w->P, *dP = w->dP, *G = pr->softcap > 0 ? w->G : NULL; /* G: softcap's derivative */
    const float *W = P;
    bwd_blocks bl;
    bwd_blocks_make(x, &bl);
    mha__attn_scale_tile(c->kern, br, D, pr->scale, qtile, ldq, w->qs);
    for (int j = 0; j < bl.nr; j++) { /* P, dP (and with dropout W) of the row blocks */
        const int64_t r0 = bl.r0[j], n = bl.r0[j + 1] - r0, bc = bl.w[j];
        if (bc == 0) continue;
        const mha__attn_tile_mask mk = mha__attn_tile_mask_rows(&x->mk, r0);
        kern->attn_scores_kp(n, bc, D, 1.0f, w->qs + r0 * D, D, w->kpf, P + r0 * BC, BC);
        kern->attn_probs(n, bc, P + r0 * BC, BC, &mk, w->lt + r0, G ? G + r0 * BC : NULL);
        kern->attn_scores_kp(n, bc, Dv, 1.0f, gtile + r0 * ldg, ldg, w->vpf, dP + r0 * BC, BC);
        W = bwd_dropout(c, t, w, &mk, i0, j0, r0, n, bc);
    }
    for (int k = 0; k < bl.nk; k++) { /* dv += W^T dout */
        const int64_t c0 = bl.c0[k], rs = bl.rs[k];
        if (rs < br)
            kern->attn_ptv(br - rs, bl.c0[k + 1] - c0, Dv, W + rs * BC + c0, BC, gtile + rs * ldg,
                           ldg, dvt + c0 * lddv, lddv);
    }
    for (int j = 0; j < bl.nr; j++) { /* dS = scale * P * (dP - Drow), in place over dP */
        const int64_t r0 = bl.r0[j];
        if (bl.w[j])
            kern->attn_dsoftmax(bl.r0[j + 1] - r0, bl.w[j], P + r0 * BC, BC, dP + r0 * BC, BC,
                                t->drow + i0 + r0, pr->scale, G ? G + r0 * BC : NULL);
    }
    for (int k = 0; k < bl.nk; k++) { /* dk += dS^T q */
        const int64_t c0 = bl.c0[k], rs = bl.rs[k];
        if (rs < br)
            kern->attn_ptv(br - rs, bl.c0[k + 1] - c0, D, dP + rs * BC + c0, BC, qtile + rs * ldq,
                           ldq, dkt + c0 * lddk, lddk);
    }
    for (int j = 0; j < bl.nr; j++) { /* dq_c += dS k */
        const int64_t r0 = bl.r0[j];
        if (bl.w[j])
            kern->attn_pv(bl.r0[j + 1] - r0, bl.w[j], D, dP + r0 * BC, BC, ktile, ldk, NULL,
                          t->dqc + (i0 + r0) * t->lddqc, t->lddqc);
    }
}

/* bwd_pair with bf16 products (BFLOAT16 BACKWARD in kernels.h): the same five, on the packed
 * operands of w (bwd_pack_rows, bwd_pack_keys); P, dP and dS in float32, rounded to bf16 pairs
 * only as operands of the products. The same blocks (TRIM is even: row blocks and the rows a
 * key block starts from keep the row pairs of q2 and g2, as i0 is even). */
static void bwd_pair_bf16(const bwd_call *c, const bwd_task *t, const bwd_tiles *w,
                          const bwd_tile *x) {
    const mha__attn_problem *pr = &c->pr;
    const mha_kernels *kern = c->kern;
    const int64_t BC = c->BC, D = pr->D, Dv = pr->Dv;
    const int64_t i0 = x->i0, br = x->br, j0 = x->j0;
    const int64_t lddk = x->lddk, lddv = x->lddv;
    float *dkt = x->dk, *dvt = x->dv;
    float *P = w->P, *dP = w->dP, *G = pr->softcap > 0 ? w->G : NULL;
    const float *W = P;
    bwd_blocks bl;
    bwd_blocks_make(x, &bl);
    for (int j = 0; j < bl.nr; j++) {
        const int64_t r0 = bl.r0[j], n = bl.r0[j + 1] - r0, bc = bl.w[j];
        if (bc == 0) continue;
        const mha__attn_tile_mask mk = mha__attn_tile_mask_rows(&x->mk, r0);
        kern->attn_scores_bf16(n, bc, D, pr->scale, w->qa + (i0 + r0) * c->np, c->np, w->kp,
                               P + r0 * BC, BC);
        kern->attn_probs_bf16(n, bc, P + r0 * BC, BC, &mk, w->lt + r0, G ? G + r0 * BC : NULL);
        kern->attn_scores_bf16(n, bc, Dv, 1.0f, w->ga + (i0 + r0) * c->nvp, c->nvp, w->vp,
                               dP + r0 * BC, BC);
        W = bwd_dropout(c, t, w, &mk, i0, j0, r0, n, bc);
    }
    for (int k = 0; k < bl.nk; k++) { /* dv += W^T dout (pairs of query rows) */
        const int64_t c0 = bl.c0[k], rs = bl.rs[k] / 2 * 2, bc = bl.c0[k + 1] - c0;
        /* no row sees the block (tested before rounding down: an odd br would run row br - 1,
         * whose row block left these keys of W unwritten) */
        if (bl.rs[k] >= br) continue;
        kern->attn_tpairs_bf16(br - rs, bc, W + rs * BC + c0, BC, w->T, BC);
        kern->attn_ptv_bf16(br - rs, bc, Dv, w->T, BC, w->g2 + (i0 + rs) * Dv, dvt + c0 * lddv,
                            lddv);
    }
    for (int j = 0; j < bl.nr; j++) {
        const int64_t r0 = bl.r0[j];
        if (bl.w[j])
            kern->attn_dsoftmax(bl.r0[j + 1] - r0, bl.w[j], P + r0 * BC, BC, dP + r0 * BC, BC,
                                t->drow + i0 + r0, pr->scale, G ? G + r0 * BC : NULL);
    }
    for (int k = 0; k < bl.nk; k++) { /* dk += dS^T q */
        const int64_t c0 = bl.c0[k], rs = bl.rs[k] / 2 * 2, bc = bl.c0[k + 1] - c0;
        if (bl.rs[k] >= br) continue; /* as above */
        kern->attn_tpairs_bf16(br - rs, bc, dP + rs * BC + c0, BC, w->T, BC);
        kern->attn_ptv_bf16(br - rs, bc, D, w->T, BC, w->q2 + (i0 + rs) * D, dkt + c0 * lddk, lddk);
    }
    for (int j = 0; j < bl.nr; j++) { /* dq_c += dS k (dS in pairs of keys, in place) */
        const int64_t r0 = bl.r0[j], n = bl.r0[j + 1] - r0;
        if (!bl.w[j]) continue;
        kern->attn_pairs_bf16(n, bl.w[j], dP + r0 * BC, BC);
        kern->attn_pv_bf16(n, bl.w[j], D, dP + r0 * BC, BC, w->kv, t->dqc + (i0 + r0) * t->lddqc,
                           t->lddqc);
    }
}

/* bf: every query row of head (b, h) for bwd_pair_bf16: q and dout rows zero-padded to np,
 * nvp, and in pairs of rows (attn_vpack_bf16). */
static void bwd_pack_rows(const bwd_call *c, const bwd_tiles *w, int64_t b, int64_t h) {
    const mha__attn_problem *pr = &c->pr;
    const int64_t L = pr->L, D = pr->D, Dv = pr->Dv;
    for (int64_t i = 0; i < L; i++) {
        memcpy(w->qa + i * c->np, mha__attn_row_at(c->q, b, h, i), sizeof(uint16_t) * (size_t)D);
        if (c->np > D) w->qa[i * c->np + D] = 0;
        memcpy(w->ga + i * c->nvp, mha__attn_row_at(c->dout, b, h, i),
               sizeof(uint16_t) * (size_t)Dv);
        if (c->nvp > Dv) w->ga[i * c->nvp + Dv] = 0;
    }
    c->kern->attn_vpack_bf16(L, D, mha__attn_row_at(c->q, b, h, 0), c->q->stride[2], w->q2);
    c->kern->attn_vpack_bf16(L, Dv, mha__attn_row_at(c->dout, b, h, 0), c->dout->stride[2], w->g2);
}

/* bf: key tile [j0, j0 + bc) of the key/value head query head h reads, packed for
 * bwd_pair_bf16: k in panels over D and in pairs of keys, v in panels over Dv. */
static void bwd_pack_keys(const bwd_call *c, const bwd_tiles *w, int64_t b, int64_t h, int64_t j0,
                          int64_t bc) {
    const int64_t g = h / c->pr.kv_group;
    const uint16_t *k = mha__attn_row_at(c->k, b, g, j0), *v = mha__attn_row_at(c->v, b, g, j0);
    c->kern->attn_kpack_bf16(bc, c->pr.D, k, c->k->stride[2], w->kp);
    c->kern->attn_kpack_bf16(bc, c->pr.Dv, v, c->v->stride[2], w->vp);
    c->kern->attn_vpack_bf16(bc, c->pr.D, k, c->k->stride[2], w->kv);
}

/* pass 1, task (head g0 + task / NC, chunk task % NC): dk, dv of the chunk's keys (summed
 * over the query tiles in order) and its dq contribution (summed over its key tiles). */
static void bwd_chunk(const bwd_call *c, const bwd_ws *ws, const bwd_tiles *w, int64_t g0,
                      int64_t task) {
    const mha__attn_problem *pr = &c->pr;
    const int64_t L = pr->L, D = pr->D, Dv = pr->Dv, NC = c->NC;
    bwd_task t;
    int64_t gi = task / NC;
    t.bh = g0 + gi, t.b = t.bh / pr->H, t.h = t.bh % pr->H, t.ch = (int)(task % NC);
    t.dqc = t.ch == 0 ? mha__attn_row(c->dq, t.b, t.h, 0)
                      : ws->part + (gi * (NC - 1) + t.ch - 1) * L * D;
    t.lddqc = t.ch == 0 ? c->dq->stride[2] : D;
    for (int64_t i = c->cfirst[t.ch] * c->BR; i < L; i++)
        memset(t.dqc + i * t.lddqc, 0, sizeof(float) * (size_t)D);
    t.lrow = c->lse->data + t.b * c->lse->stride[0] + t.h * c->lse->stride[1];
    t.drow = ws->drow + t.bh * L;
    /* one chunk a head: the head's Drow here (pass 0 skipped), its dout rows then in cache */
    if (NC == 1)
        for (int64_t qt = 0; qt < c->nqt; qt++) bwd_drow(c, ws, t.bh * c->nqt + qt);
    t.dr = mha__attn_dropout_make(pr, t.bh);
    if (c->bf) bwd_pack_rows(c, w, t.b, t.h);
    for (int64_t kt = c->cstart[t.ch]; kt < c->cstart[t.ch + 1]; kt++) {
        int64_t j0 = kt * c->BC, bc = pr->S - j0 < c->BC ? pr->S - j0 : c->BC;
        bwd_tile x;
        if (c->dkv_tiles) x.dk = w->dkt, x.dv = w->dvt, x.lddk = D, x.lddv = Dv;
        else {
            x.dk = mha__attn_row(c->dk, t.b, t.h, j0), x.dv = mha__attn_row(c->dv, t.b, t.h, j0);
            x.lddk = c->dk->stride[2], x.lddv = c->dv->stride[2];
        }
        for (int64_t r = 0; r < bc; r++) {
            memset(x.dk + r * x.lddk, 0, sizeof(float) * (size_t)D);
            if (Dv) memset(x.dv + r * x.lddv, 0, sizeof(float) * (size_t)Dv);
        }
        const int64_t qe = qt_end(pr, c->BR, c->BC, c->nqt, kt),
                      q0 = qt_first(pr, c->BR, c->BC, c->nqt, kt);
        if (c->bf && q0 < qe) bwd_pack_keys(c, w, t.b, t.h, j0, bc);
        if (!c->bf && q0 < qe) { /* k and v packed once for the tile's pairs (bwd_pair) */
            c->kern->attn_kpack(bc, D, mha__attn_kv_row(pr, c->k, t.b, t.h, j0), c->k->stride[2],
                                w->kpf);
            if (Dv)
                c->kern->attn_kpack(bc, Dv, mha__attn_kv_row(pr, c->v, t.b, t.h, j0),
                                    c->v->stride[2], w->vpf);
        }
        for (int64_t qt = q0; qt < qe; qt++) {
            if (!bwd_tile_begin(c, &t, w, kt, qt, &x)) continue;
            if (c->bf) bwd_pair_bf16(c, &t, w, &x);
            else bwd_pair(c, &t, w, &x);
        }
        for (int64_t r = 0; c->dkv_tiles && r < bc; r++) { /* the key tile's dk, dv: rounded once */
            c->kern->cvt_from_f32(MHA_DTYPE_BF16, x.dk + r * D,
                                  mha__attn_row_at(c->dk, t.b, t.h, j0 + r), D);
            c->kern->cvt_from_f32(MHA_DTYPE_BF16, x.dv + r * Dv,
                                  mha__attn_row_at(c->dv, t.b, t.h, j0 + r), Dv);
        }
    }
}

/* pass 2, task (head g0 + task / nqt, query tile task % nqt): dq = dq_0 + dq_1 + ... in
 * chunk order */
static void bwd_sum(const bwd_call *c, const bwd_ws *ws, int64_t g0, int64_t task) {
    const int64_t L = c->pr.L, D = c->pr.D, BR = c->BR, lddq = c->dq->stride[2];
    int64_t gi = task / c->nqt, qt = task % c->nqt, bh = g0 + gi;
    int64_t i0 = qt * BR, i1 = L - i0 < BR ? L : i0 + BR;
    float *dqt = mha__attn_row(c->dq, bh / c->pr.H, bh % c->pr.H, 0);
    for (int ch = 1; ch < c->NC && c->cfirst[ch] <= qt; ch++) {
        const float *pc = ws->part + (gi * (c->NC - 1) + ch - 1) * L * D;
        for (int64_t i = i0; i < i1; i++) {
            float *d = dqt + i * lddq;
            const float *s = pc + i * D;
            for (int64_t x = 0; x < D; x++) d[x] += s[x];
        }
    }
}

/* pass 3 (grouped-query only), task = row (b, g, j) of the caller's dk, dv: the sum of the
 * group's query heads' rows, in head order (fixed: the same bits for any thread count). */
static void bwd_group_sum(const bwd_call *c, int64_t task) {
    const mha__attn_problem *pr = &c->pr;
    const int64_t S = pr->S, n = pr->kv_group, bg = task / S, j = task % S;
    const int64_t b = bg / pr->Hkv, g = bg % pr->Hkv;
    float *dk = mha__attn_row(c->dk_kv, b, g, j), *dv = mha__attn_row(c->dv_kv, b, g, j);
    for (int64_t x = 0; x < pr->D; x++) dk[x] = mha__attn_row(c->dk, b, g * n, j)[x];
    for (int64_t x = 0; x < pr->Dv; x++) dv[x] = mha__attn_row(c->dv, b, g * n, j)[x];
    for (int64_t i = 1; i < n; i++) {
        const float *sk = mha__attn_row(c->dk, b, g * n + i, j);
        const float *sv = mha__attn_row(c->dv, b, g * n + i, j);
        for (int64_t x = 0; x < pr->D; x++) dk[x] += sk[x];
        for (int64_t x = 0; x < pr->Dv; x++) dv[x] += sv[x];
    }
}

static mha_status bwd_run(mha_ctx *ctx, const char *fn, bwd_call *cp);

/* A validated bf16 call on a table with bf16 kernels: q, k, v, out, dout read as they are; dq
 * accumulated in a float32 buffer, dk and dv in float32 tiles (or buffers, grouped heads), each
 * element rounded once. */
static mha_status bwd_bf16(mha_ctx *ctx, const char *fn, bwd_call *c) {
    /* without grouped heads each key tile's dk and dv are complete when its chunk has seen
     * every query tile: summed in float32 tiles and rounded into the caller's views there (no
     * float32 buffers of the whole dk and dv); grouped heads sum them over the group first */
    const int tiles = c->pr.kv_group == 1;
    const mha__lowp_arg args[3] = {
        {"dq", c->dq, 1}, {"dk", tiles ? NULL : c->dk, 1}, {"dv", tiles ? NULL : c->dv, 1}};
    mha__lowp lp;
    mha_status st = mha__lowp_begin(ctx, fn, &lp, 3, args);
    if (st) return st;
    c->dq = mha__lowp_view(&lp, 0);
    if (!tiles) {
        c->dk = c->dk_kv = mha__lowp_view(&lp, 1);
        c->dv = c->dv_kv = mha__lowp_view(&lp, 2);
    }
    c->bf = 1, c->dkv_tiles = tiles;
    st = bwd_run(ctx, fn, c);
    mha__lowp_end(&lp, st);
    return st;
}

/* A validated call on bf16 / f16 views: the float32 backward on exact float32 copies of q, k,
 * v and dout, dq, dk and dv rounded once. out is recomputed in float32 from those copies (the
 * forward the caller ran, before its rounding; the same mask, dropout and origin), not copied
 * from the rounded out: Drow = dout . out cancels against dP where one key takes most of a
 * row's weight, and out's rounding then made dq, dk 5-15x PyTorch's errors in float16 (L = 1,
 * large scores). One float32 forward more; the bf16 kernels' path (bwd_bf16) reads out as it
 * is. */
static mha_status bwd_lowp(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                           const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                           const mha_mask *mask, const mha_tensor *out, const mha_tensor *lse,
                           const mha_tensor *dout, mha_tensor *dq, mha_tensor *dk, mha_tensor *dv,
                           mha__attn_origin at) {
    /* out: a float32 buffer the forward below fills (the given out is not read) */
    const mha__lowp_arg args[8] = {{"q", q, 0},       {"k", k, 0},   {"v", v, 0},   {"out", out, 2},
                                   {"dout", dout, 0}, {"dq", dq, 1}, {"dk", dk, 1}, {"dv", dv, 1}};
    mha__lowp lp;
    mha_status st = mha__lowp_begin(ctx, fn, &lp, 8, args);
    if (st) return st;
    st = mha__attn_forward_seq(ctx, fn, p, mha__lowp_view(&lp, 0), mha__lowp_view(&lp, 1),
                               mha__lowp_view(&lp, 2), mask, mha__lowp_view(&lp, 3), NULL, at);
    if (!st)
        st = mha__attn_backward_seq(ctx, fn, p, mha__lowp_view(&lp, 0), mha__lowp_view(&lp, 1),
                                    mha__lowp_view(&lp, 2), mask, mha__lowp_view(&lp, 3), lse,
                                    mha__lowp_view(&lp, 4), mha__lowp_view(&lp, 5),
                                    mha__lowp_view(&lp, 6), mha__lowp_view(&lp, 7), at);
    mha__lowp_end(&lp, st);
    return st;
}

mha_status mha__attn_backward_seq(mha_ctx *ctx, const char *fn, const mha_attn_params *p,
                                  const mha_tensor *q, const mha_tensor *k, const mha_tensor *v,
                                  const mha_mask *mask, const mha_tensor *out,
                                  const mha_tensor *lse, const mha_tensor *dout, mha_tensor *dq,
                                  mha_tensor *dk, mha_tensor *dv, mha__attn_origin at) {
    mha__clear(ctx);
    bwd_call c;
    mha_status st = bwd_check(ctx, fn, p, q, k, v, mask, out, lse, dout, dq, dk, dv, &c);
    if (st) return st;
    /* no query head (H = 0; Hkv may be > 0): nothing reads k, v; dropout_p = 1: every weight
     * dropped, out did not depend on q, k, v */
    if (c.pr.B * c.pr.H == 0 || c.pr.dropout_p >= 1) {
        mha__attn_zero_view(dq);
        mha__attn_zero_view(dk);
        mha__attn_zero_view(dv);
        return MHA_OK;
    }
    c.pr.bh0 = at.bh0, c.pr.row0 = at.row0, c.pr.col0 = at.col0, c.bf = 0, c.dkv_tiles = 0;
    if (c.pr.dt == MHA_DTYPE_F32) return bwd_run(ctx, fn, &c);
    if (c.pr.dt == MHA_DTYPE_BF16 && mha__ctx_kernels(ctx)->attn_scores_bf16)
        return bwd_bf16(ctx, fn, &c);
    return bwd_lowp(ctx, fn, p, q, k, v, mask, out, lse, dout, dq, dk, dv, at);
}

/* The three passes of a validated call. */
static mha_status bwd_run(mha_ctx *ctx, const char *fn, bwd_call *cp) {
    bwd_call c = *cp;
    mha_status st;
    const int64_t BH = c.pr.B * c.pr.H; /* > 0: mha__attn_backward_seq returned before */
    bwd_plan(ctx, &c);
    void *mem;
    if ((st = mha__plan_alloc(&c.plan, ctx, fn, 1, &mem))) return st;
    bwd_ws ws;
    mha__plan_point(&c.plan, mem, 0, &ws);
    if (c.pr.kv_group > 1) { /* passes 1-2 write each query head's dk, dv; pass 3 sums them */
        int64_t sk[4] = {c.pr.B, c.pr.H, c.pr.S, c.pr.D}, sv[4] = {c.pr.B, c.pr.H, c.pr.S, c.pr.Dv};
        c.dk_h = mha_tensor_make(ws.dkh, 4, sk), c.dv_h = mha_tensor_make(ws.dvh, 4, sv);
        c.dk = &c.dk_h, c.dv = &c.dv_h;
    }
#pragma omp parallel num_threads(c.nt) if (c.nt > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        bwd_tiles w;
        mha__plan_point(&c.tiles, ws.threads, tid, &w);
        if (c.NC > 1) { /* else each pass-1 task computes its head's (bwd_chunk) */
#pragma omp for schedule(static)
            for (int64_t task = 0; task < BH * c.nqt; task++) bwd_drow(&c, &ws, task);
        }
        for (int64_t g0 = 0; g0 < BH; g0 += c.G) {
            const int64_t gn = BH - g0 < c.G ? BH - g0 : c.G;
#pragma omp for schedule(dynamic, 1)
            for (int64_t task = 0; task < gn * c.NC; task++) bwd_chunk(&c, &ws, &w, g0, task);
            if (c.NC > 1) {
#pragma omp for schedule(static)
                for (int64_t task = 0; task < gn * c.nqt; task++) bwd_sum(&c, &ws, g0, task);
            }
        }
        if (c.pr.kv_group > 1) {
#pragma omp for schedule(static)
            for (int64_t task = 0; task < c.pr.B * c.pr.Hkv * c.pr.S; task++)
                bwd_group_sum(&c, task);
        }
    }
    mha__free(mem);
    return MHA_OK;
}

mha_status mha_attn_backward(mha_ctx *ctx, const mha_attn_params *p, const mha_tensor *q,
                             const mha_tensor *k, const mha_tensor *v, const mha_mask *mask,
                             const mha_tensor *out, const mha_tensor *lse, const mha_tensor *dout,
                             mha_tensor *dq, mha_tensor *dk, mha_tensor *dv) {
    return mha__attn_backward_seq(ctx, "mha_attn_backward", p, q, k, v, mask, out, lse, dout, dq,
                                  dk, dv, (mha__attn_origin){0, 0, 0});
}
