/* explain_math.c - the arithmetic of `mha explain`: every step of multi-head attention, forward
 * and backward, as plain double-precision loops a reader can follow, each value carrying a
 * bound on the float32 rounding error of computing it (explain.h says how), and the
 * FlashAttention-2 forward of one head, tile by tile. Nothing here prints. */
#include "explain.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Higham's gamma_n = n u / (1 - n u): the relative error bound of a float32 sum of n terms. */
static double gamma_n(double n) { return n * EX_U / (1 - n * EX_U); }

ex_mat ex_view(ex_mat m, int64_t r0, int64_t c0, int64_t rows, int64_t cols) {
    ex_mat s = m;
    s.v += r0 * m.ld + c0;
    s.e += r0 * m.ld + c0;
    s.rows = rows;
    s.cols = cols;
    return s;
}

/* Element (i, j) of op(X): X[i, j], or X[j, i] when transposed. */
static int64_t at(const ex_mat *x, int t, int64_t i, int64_t j) {
    return t ? j * x->ld + i : i * x->ld + j;
}

void ex_mm(ex_mat c, double alpha, ex_mat a, int ta, ex_mat b, int tb, int accumulate) {
    const int64_t K = ta ? a.rows : a.cols;
    /* alpha != 1: its own rounding to float32 and that of the product by it */
    const double g = gamma_n((double)K + 2 * (alpha != 1) + (accumulate != 0));
    for (int64_t i = 0; i < c.rows; i++)
        for (int64_t j = 0; j < c.cols; j++) {
            double sum = 0, mag = 0, err = 0;
            for (int64_t k = 0; k < K; k++) {
                const int64_t ia = at(&a, ta, i, k), ib = at(&b, tb, k, j);
                const double x = a.v[ia], y = b.v[ib], ex = a.e[ia], ey = b.e[ib];
                sum += x * y;
                mag += fabs(x * y);
                err += ex * fabs(y) + fabs(x) * ey + ex * ey;
            }
            double *cv = &c.v[i * c.ld + j], *ce = &c.e[i * c.ld + j];
            sum *= alpha, mag *= fabs(alpha), err *= fabs(alpha);
            if (accumulate) sum += *cv, mag += fabs(*cv), err += *ce;
            *cv = sum;
            *ce = err + g * mag + (double)(K + 2) * EX_TINY;
        }
}

/* C += the row vector bias (added to every row), with the addition's rounding. */
static void add_bias(ex_mat c, ex_mat bias) {
    for (int64_t i = 0; i < c.rows; i++)
        for (int64_t j = 0; j < c.cols; j++) {
            double *cv = &c.v[i * c.ld + j];
            *cv += bias.v[j];
            c.e[i * c.ld + j] += bias.e[j] + EX_U * fabs(*cv) + EX_TINY;
        }
}

/* ---------------------------------------------------------------------------------------------
 * The run's memory: planned once, one allocation, named views into it
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    ex_mat *m;
    int64_t rows, cols;
} plan_entry;

/* The matrices of r and their sizes (the backward's only with backward); returns how many. */
static int plan(ex_run *r, int backward, plan_entry *p) {
    const int64_t BL = r->B * r->L, BS = r->B * r->S, BHL = r->B * r->H * r->L, E = r->E;
    const plan_entry all[] = {
        {&r->wq, E, E},
        {&r->wk, E, r->kdim},
        {&r->wv, E, r->vdim},
        {&r->wo, E, E},
        {&r->bq, 1, E},
        {&r->bk, 1, E},
        {&r->bv, 1, E},
        {&r->bo, 1, E},
        {&r->x, BL, E},
        {&r->xk, r->cross ? BS : 0, r->kdim},
        {&r->xv, r->cross ? BS : 0, r->vdim},
        {&r->q, BL, E},
        {&r->k, BS, E},
        {&r->v, BS, E},
        {&r->raw, BHL, r->S},
        {&r->scaled, BHL, r->S},
        {&r->masked, BHL, r->S},
        {&r->p, BHL, r->S},
        {&r->o, BL, E},
        {&r->y, BL, E},
        /* the backward */
        {&r->dy, BL, E},
        {&r->do_, BL, E},
        {&r->dwo, E, E},
        {&r->dbo, 1, E},
        {&r->dv, BS, E},
        {&r->dp, BHL, r->S},
        {&r->drow, BHL, 1},
        {&r->ds, BHL, r->S},
        {&r->dq, BL, E},
        {&r->dk, BS, E},
        {&r->dx, BL, E},
        {&r->dxk, r->cross ? BS : 0, r->kdim},
        {&r->dxv, r->cross ? BS : 0, r->vdim},
        {&r->dwq, E, E},
        {&r->dwk, E, r->kdim},
        {&r->dwv, E, r->vdim},
        {&r->dbq, 1, E},
        {&r->dbk, 1, E},
        {&r->dbv, 1, E},
        {&r->ones, 1, BL > BS ? BL : BS},
    };
    const int nfwd = 20, n = (int)(sizeof all / sizeof all[0]);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (i < nfwd || backward) p[k++] = all[i];
    return k;
}

#define PLAN_MAX 48

static double plan_doubles(const plan_entry *p, int n) {
    double total = 0;
    for (int i = 0; i < n; i++) total += 2.0 * (double)p[i].rows * (double)p[i].cols;
    return total;
}

double ex_run_cost(int64_t B, int64_t L, int64_t S, int64_t E, int64_t H, int64_t kdim,
                   int64_t vdim, int backward, double *doubles) {
    ex_run r;
    memset(&r, 0, sizeof r);
    r.B = B, r.L = L, r.S = S, r.E = E, r.H = H, r.kdim = kdim, r.vdim = vdim, r.cross = 1;
    plan_entry p[PLAN_MAX];
    *doubles = plan_doubles(p, plan(&r, backward, p));
    const double b = (double)B, l = (double)L, s = (double)S, e = (double)E;
    /* projections in and out, then per head: Q K^T twice (raw and scaled) and P V */
    const double fwd = b * (2 * l * e * e + s * e * (double)(kdim + vdim)) + 3 * b * l * s * e;
    return backward ? 3 * fwd : fwd;
}

int ex_run_alloc(ex_run *r, int backward) {
    r->D = r->E / r->H;
    plan_entry p[PLAN_MAX];
    const int n = plan(r, backward, p);
    const double total = plan_doubles(p, n);
    if (total > (double)(SIZE_MAX / sizeof(double) / 2)) return -1;
    r->mem = calloc((size_t)total + 1, sizeof(double));
    if (!r->mem) return -1;
    double *next = r->mem;
    for (int i = 0; i < n; i++) {
        const size_t size = (size_t)(p[i].rows * p[i].cols);
        *p[i].m = (ex_mat){next, next + size, p[i].rows, p[i].cols, p[i].cols};
        next += 2 * size;
    }
    if (!r->cross) r->xk = r->xv = r->x; /* self-attention: key = value = query */
    if (backward)
        for (int64_t j = 0; j < r->ones.cols; j++) r->ones.v[j] = 1;
    r->has_backward = backward;
    return 0;
}

void ex_run_free(ex_run *r) {
    free(r->mem);
    r->mem = NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Masks and the softmax
 * ------------------------------------------------------------------------------------------- */
double ex_mask_score(const ex_run *r, int64_t b, int64_t h, int64_t i, int64_t j, double s) {
    const mha_mask *m = &r->mask;
    if (m->causal == MHA_CAUSAL_TOP_LEFT && j > i) return -INFINITY;
    if (m->causal == MHA_CAUSAL_BOTTOM_RIGHT && j > i + r->S - r->L) return -INFINITY;
    if (m->key_padding && m->key_padding[b * r->S + j]) return -INFINITY;
    const int64_t a = (m->attn_batched ? (b * r->H + h) * r->L * r->S : 0) + i * r->S + j;
    if (m->attn_bool && m->attn_bool[a]) return -INFINITY;
    if (m->attn_float) s += m->attn_float[a];
    return s;
}

int ex_has_mask(const ex_run *r) {
    const mha_mask *m = &r->mask;
    return m->causal != MHA_CAUSAL_NONE || m->key_padding || m->attn_bool || m->attn_float;
}

/* P = softmax of each row of s (masked scores; a row with no finite score gives 0). The error:
 * scores off by at most delta_k each (their own bound, plus the rounding of s_k - max) give
 *   p~_j = p_j e^(eps_j) / sum_k p_k e^(eps_k),  |eps_k| <= delta_k,
 * so p~_j - p_j = p_j [(1 - p_j)(e^eps_j - 1) - sum_(k != j) p_k (e^eps_k - 1)] / sum_k p_k e^eps_k
 * and |p~_j - p_j| <= p_j e^dmax [(1 - p_j)(e^delta_j - 1) + sum_(k != j) p_k (e^delta_k - 1)]:
 * near 0 for the winner of a nearly one-hot row. Two more bounds hold and the smallest is
 * kept: p_j (e^(2 dmax) - 1), and, from p~_j <= p~_j / p~_top, for a key j below the top one
 *   |p~_j - p_j| <= e^(s_j - max + delta_j + delta_top)
 * and for the top key the sum of those over the others (1 - p~_top is their sum): finite
 * however large delta is, as long as the gaps between the scores exceed it. float32's exp (a
 * few ulps), its sum of S terms, the division and, in the fused kernel, the rescaling of the
 * running sums after each key tile (at most S of them) add a relative g. Both P and P~ lie in
 * [0, 1 + g]: where every bound exceeds that (scores so close that their error may reorder
 * them), 1 + g is the bound. */
static void softmax_rows(ex_mat s, ex_mat p) {
    const double g = gamma_n(11.0 * (double)s.cols + 16);
    for (int64_t i = 0; i < s.rows; i++) {
        const double *sv = s.v + i * s.ld, *se = s.e + i * s.ld;
        double *pv = p.v + i * p.ld, *pe = p.e + i * p.ld;
        double mx = -INFINITY, rest = 0, dmax = 0, t_rest = 0, t_top = 0, d_top, gaps = 0;
        int64_t top = -1; /* the first key at the maximum: e^(s - max) = 1 */
        for (int64_t j = 0; j < s.cols; j++)
            if (sv[j] > mx) mx = sv[j], top = j;
        if (mx == -INFINITY) {
            for (int64_t j = 0; j < s.cols; j++) pv[j] = 0, pe[j] = 0;
            continue;
        }
        /* rest = sum over k != top of e^(s_k - max): the sum is 1 + rest, and 1 - p_top =
         * rest / (1 + rest) without cancellation */
        for (int64_t j = 0; j < s.cols; j++) {
            if (sv[j] == -INFINITY) continue;
            if (j != top) rest += exp(sv[j] - mx);
            const double d = se[j] + EX_U * (fabs(sv[j]) + fabs(mx));
            if (d > dmax) dmax = d;
        }
        const double sum = 1 + rest;
        d_top = se[top] + 2 * EX_U * fabs(mx);
        for (int64_t j = 0; j < s.cols; j++)
            if (j != top && sv[j] != -INFINITY)
                gaps += exp(sv[j] - mx + se[j] + EX_U * (fabs(sv[j]) + fabs(mx)) + d_top);
        for (int64_t j = 0; j < s.cols; j++) {
            pv[j] = sv[j] == -INFINITY ? 0 : exp(sv[j] - mx) / sum;
            if (sv[j] == -INFINITY) continue;
            const double d = se[j] + EX_U * (fabs(sv[j]) + fabs(mx));
            if (j == top) t_top = pv[j] * expm1(d);
            else t_rest += pv[j] * expm1(d);
        }
        const double wide = exp(2 * dmax) * (1 + g) - 1, e_max = exp(dmax);
        for (int64_t j = 0; j < s.cols; j++) {
            if (sv[j] == -INFINITY) {
                pe[j] = 0;
                continue;
            }
            const double delta = se[j] + EX_U * (fabs(sv[j]) + fabs(mx)), d = expm1(delta);
            const double not_j = j == top ? rest / sum : (1 + (rest - exp(sv[j] - mx))) / sum;
            /* sum over k != j of p_k (e^delta_k - 1), with a margin for its cancellation */
            double others = j == top ? t_rest : t_top + t_rest - pv[j] * d;
            others = (others > 0 ? others : 0) + 4 * DBL_EPSILON * (t_top + t_rest);
            const double tight = pv[j] * e_max * (not_j * d + others) * (1 + g) + pv[j] * g;
            const double gap = j == top ? gaps : exp(sv[j] - mx + delta + d_top);
            /* fmin: a NaN (0 * inf) loses */
            double err = fmin(fmin(pv[j] * wide, tight), gap * (1 + g) + pv[j] * g);
            if (!(err <= 1 + g)) err = 1 + g;
            pe[j] = err + EX_TINY; /* exp may underflow to 0 */
        }
    }
}

/* The outputs of a head are convex combinations of its value rows, in exact arithmetic (P) as
 * in float32 (P~ / its sum, up to the rounding g of the sums, the rescalings and the division):
 * both lie between the smallest and the largest value any unmasked key can have (v -+ its
 * bound), so their difference never exceeds that range (plus the rounding). This caps o's
 * bound where the softmax's is loose (large scores, --scale 1e3 and beyond). */
static void cap_by_values(ex_mat o, ex_mat mk, ex_mat v) {
    const double g = gamma_n(11.0 * (double)v.rows + 16);
    for (int64_t i = 0; i < o.rows; i++)
        for (int64_t d = 0; d < o.cols; d++) {
            double lo = INFINITY, hi = -INFINITY;
            for (int64_t j = 0; j < v.rows; j++) {
                if (mk.v[i * mk.ld + j] == -INFINITY) continue;
                const double x = v.v[j * v.ld + d], e = v.e[j * v.ld + d];
                if (x - e < lo) lo = x - e;
                if (x + e > hi) hi = x + e;
            }
            if (lo > hi) continue; /* a fully masked row: 0 on both sides, its bound stands */
            const double big = fabs(lo) > fabs(hi) ? fabs(lo) : fabs(hi);
            const double cap = (hi - lo) + 3 * g * big + (double)(v.rows + 2) * EX_TINY;
            double *e = &o.e[i * o.ld + d];
            if (!(*e <= cap)) *e = cap;
        }
}

/* dS = P * (dP - D_i) per row: the softmax's backward (its Jacobian diag(P) - P P^T applied
 * to dP, with D_i = sum_j P_ij dP_ij = dO_i . O_i). */
static void softmax_backward_rows(ex_mat p, ex_mat dp, ex_mat drow, ex_mat ds) {
    const double g = gamma_n(2);
    for (int64_t i = 0; i < p.rows; i++)
        for (int64_t j = 0; j < p.cols; j++) {
            const int64_t a = i * p.ld + j;
            const double diff = dp.v[a] - drow.v[i * drow.ld];
            const double ediff = dp.e[a] + drow.e[i * drow.ld];
            ds.v[a] = p.v[a] * diff;
            ds.e[a] = p.e[a] * fabs(diff) + p.v[a] * ediff + p.e[a] * ediff +
                      g * p.v[a] * fabs(diff) + 2 * EX_TINY;
        }
}

/* ---------------------------------------------------------------------------------------------
 * Forward and backward
 * ------------------------------------------------------------------------------------------- */
/* The views of head h of batch b: rows of its tokens, the head's D columns. */
static ex_mat head_rows(const ex_run *r, ex_mat m, int64_t b, int64_t n, int64_t h) {
    return ex_view(m, b * n, h * r->D, n, r->D);
}
static ex_mat head_scores(const ex_run *r, ex_mat m, int64_t b, int64_t h) {
    return ex_view(m, (b * r->H + h) * r->L, 0, r->L, m.cols);
}

void ex_forward(ex_run *r) {
    /* Step 2: Q = x Wq^T + bq, K = xk Wk^T + bk, V = xv Wv^T + bv */
    ex_mm(r->q, 1, r->x, 0, r->wq, 1, 0);
    add_bias(r->q, r->bq);
    ex_mm(r->k, 1, r->xk, 0, r->wk, 1, 0);
    add_bias(r->k, r->bk);
    ex_mm(r->v, 1, r->xv, 0, r->wv, 1, 0);
    add_bias(r->v, r->bv);
    for (int64_t b = 0; b < r->B; b++)
        for (int64_t h = 0; h < r->H; h++) {
            /* Step 3: the head's slices (views, nothing moves) */
            const ex_mat qh = head_rows(r, r->q, b, r->L, h), kh = head_rows(r, r->k, b, r->S, h);
            const ex_mat vh = head_rows(r, r->v, b, r->S, h);
            const ex_mat raw = head_scores(r, r->raw, b, h), sc = head_scores(r, r->scaled, b, h);
            const ex_mat mk = head_scores(r, r->masked, b, h), p = head_scores(r, r->p, b, h);
            ex_mm(raw, 1, qh, 0, kh, 1, 0);       /* step 4: Q_h K_h^T */
            ex_mm(sc, r->scale, qh, 0, kh, 1, 0); /* step 5: scaled (q scaled first in mha) */
            for (int64_t i = 0; i < r->L; i++)    /* step 6: the masks */
                for (int64_t j = 0; j < r->S; j++) {
                    const int64_t a = i * sc.ld + j;
                    mk.v[a] = ex_mask_score(r, b, h, i, j, sc.v[a]);
                    mk.e[a] = mk.v[a] == -INFINITY ? 0
                              : r->mask.attn_float ? sc.e[a] + EX_U * fabs(mk.v[a])
                                                   : sc.e[a];
                }
            softmax_rows(mk, p);                                      /* step 7 */
            ex_mm(head_rows(r, r->o, b, r->L, h), 1, p, 0, vh, 0, 0); /* step 8: P_h V_h */
            cap_by_values(head_rows(r, r->o, b, r->L, h), mk, vh);
        }
    /* Step 9 is the layout of o (heads side by side); step 10: y = O Wo^T + bo */
    ex_mm(r->y, 1, r->o, 0, r->wo, 1, 0);
    add_bias(r->y, r->bo);
}

/* dW = dX^T input and db = sum of dX's rows: a linear map's parameter gradients. */
static void param_grads(const ex_run *r, ex_mat dw, ex_mat db, ex_mat dx, ex_mat input) {
    ex_mm(dw, 1, dx, 1, input, 0, 0);
    ex_mm(db, 1, ex_view(r->ones, 0, 0, 1, dx.rows), 0, dx, 0, 0);
}

void ex_backward(ex_run *r) {
    /* Step 12: y = O Wo^T + bo backwards */
    ex_mm(r->do_, 1, r->dy, 0, r->wo, 0, 0);
    param_grads(r, r->dwo, r->dbo, r->dy, r->o);
    for (int64_t b = 0; b < r->B; b++)
        for (int64_t h = 0; h < r->H; h++) {
            const ex_mat qh = head_rows(r, r->q, b, r->L, h), kh = head_rows(r, r->k, b, r->S, h);
            const ex_mat vh = head_rows(r, r->v, b, r->S, h), oh = head_rows(r, r->o, b, r->L, h);
            const ex_mat doh = head_rows(r, r->do_, b, r->L, h); /* step 13 */
            const ex_mat p = head_scores(r, r->p, b, h), dp = head_scores(r, r->dp, b, h);
            const ex_mat ds = head_scores(r, r->ds, b, h), drow = head_scores(r, r->drow, b, h);
            ex_mm(head_rows(r, r->dv, b, r->S, h), 1, p, 1, doh, 0, 0); /* 14: dV = P^T dO */
            ex_mm(dp, 1, doh, 0, vh, 1, 0);                             /*     dP = dO V^T */
            for (int64_t i = 0; i < r->L; i++)                          /* 15: D_i = dO_i . O_i */
                ex_mm(ex_view(drow, i, 0, 1, 1), 1, ex_view(doh, i, 0, 1, r->D), 0,
                      ex_view(oh, i, 0, 1, r->D), 1, 0);
            softmax_backward_rows(p, dp, drow, ds);                            /* dS */
            ex_mm(head_rows(r, r->dq, b, r->L, h), r->scale, ds, 0, kh, 0, 0); /* 16 */
            ex_mm(head_rows(r, r->dk, b, r->S, h), r->scale, ds, 1, qh, 0, 0);
        }
    /* Step 17 is the layout of dq, dk, dv; step 18: through the projections */
    if (r->cross) {
        ex_mm(r->dx, 1, r->dq, 0, r->wq, 0, 0);
        ex_mm(r->dxk, 1, r->dk, 0, r->wk, 0, 0);
        ex_mm(r->dxv, 1, r->dv, 0, r->wv, 0, 0);
    } else { /* x fed all three projections: its gradient is the sum of the three paths */
        ex_mm(r->dx, 1, r->dq, 0, r->wq, 0, 0);
        ex_mm(r->dx, 1, r->dk, 0, r->wk, 0, 1);
        ex_mm(r->dx, 1, r->dv, 0, r->wv, 0, 1);
    }
    param_grads(r, r->dwq, r->dbq, r->dq, r->x);
    param_grads(r, r->dwk, r->dbk, r->dk, r->xk);
    param_grads(r, r->dwv, r->dbv, r->dv, r->xv);
}

/* ---------------------------------------------------------------------------------------------
 * FlashAttention-2, one head: never more than a br x bc tile of scores
 * ------------------------------------------------------------------------------------------- */
int ex_tiles(const ex_run *r, int64_t b, int64_t h, int64_t rows, int64_t br, int64_t bc, double *o,
             int64_t ld, double *lse, ex_tile_fn visit, void *arg) {
    const int64_t D = r->D;
    double *mem = calloc((size_t)(br * bc + 4 * br + br * D), sizeof(double));
    if (!mem) return -1;
    double *s = mem, *m_old = s + br * bc, *m = m_old + br, *alpha = m + br, *l = alpha + br;
    double *acc = l + br;
    const ex_mat qh = head_rows(r, r->q, b, r->L, h), kh = head_rows(r, r->k, b, r->S, h);
    const ex_mat vh = head_rows(r, r->v, b, r->S, h);
    for (int64_t r0 = 0; r0 < rows; r0 += br) {
        const int64_t nr = br < rows - r0 ? br : rows - r0;
        for (int64_t i = 0; i < nr; i++) m[i] = -INFINITY, l[i] = 0;
        memset(acc, 0, (size_t)(nr * D) * sizeof(double));
        for (int64_t c0 = 0; c0 < r->S; c0 += bc) {
            const int64_t nc = bc < r->S - c0 ? bc : r->S - c0;
            int any = 0;
            for (int64_t i = 0; i < nr; i++) /* s = scale q_i . k_j, masked */
                for (int64_t j = 0; j < nc; j++) {
                    double dot = 0;
                    for (int64_t d = 0; d < D; d++)
                        dot += qh.v[(r0 + i) * qh.ld + d] * kh.v[(c0 + j) * kh.ld + d];
                    s[i * nc + j] = ex_mask_score(r, b, h, r0 + i, c0 + j, r->scale * dot);
                    any |= s[i * nc + j] != -INFINITY;
                }
            memcpy(m_old, m, (size_t)nr * sizeof(double));
            for (int64_t i = 0; i < nr && any; i++) {
                double mx = m[i];
                for (int64_t j = 0; j < nc; j++)
                    if (s[i * nc + j] > mx) mx = s[i * nc + j];
                /* the sums so far were relative to the old max: rescale them to the new one */
                alpha[i] = mx == -INFINITY ? 1 : m[i] == -INFINITY ? 0 : exp(m[i] - mx);
                l[i] *= alpha[i];
                for (int64_t d = 0; d < D; d++) acc[i * D + d] *= alpha[i];
                for (int64_t j = 0; j < nc && mx != -INFINITY; j++) {
                    const double pj = s[i * nc + j] == -INFINITY ? 0 : exp(s[i * nc + j] - mx);
                    l[i] += pj;
                    for (int64_t d = 0; d < D; d++)
                        acc[i * D + d] += pj * vh.v[(c0 + j) * vh.ld + d];
                }
                m[i] = mx;
            }
            if (!any)
                for (int64_t i = 0; i < nr; i++) alpha[i] = 1;
            if (visit) {
                const ex_tile t = {r0,    nr, c0,    nc, !any, s,
                                   m_old, m,  alpha, l,  acc,  c0 + nc >= r->S};
                visit(arg, &t);
            }
        }
        for (int64_t i = 0; i < nr; i++) { /* the block's rows are done: normalize once */
            for (int64_t d = 0; d < D && o; d++)
                o[(r0 + i) * ld + d] = l[i] > 0 ? acc[i * D + d] / l[i] : 0;
            if (lse) lse[r0 + i] = l[i] > 0 ? m[i] + log(l[i]) : -INFINITY;
        }
    }
    free(mem);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Overflow
 * ------------------------------------------------------------------------------------------- */
const char *ex_overflow(const ex_run *r, double *value) {
    const struct {
        const ex_mat *m;
        const char *name;
        int backward;
    } steps[] = {
        {&r->q, "Q", 0},
        {&r->k, "K", 0},
        {&r->v, "V", 0},
        {&r->raw, "scores Q K^T", 0},
        {&r->scaled, "scaled scores", 0},
        {&r->masked, "masked scores", 0},
        {&r->o, "O", 0},
        {&r->y, "y", 0},
        {&r->do_, "dO", 1},
        {&r->dv, "dV", 1},
        {&r->dp, "dP", 1},
        {&r->ds, "dS", 1},
        {&r->dq, "dQ", 1},
        {&r->dk, "dK", 1},
        {&r->dx, "dx", 1},
        {&r->dwq, "the gradients of the weights", 1},
        {&r->dwk, "the gradients of the weights", 1},
        {&r->dwv, "the gradients of the weights", 1},
        {&r->dwo, "the gradients of the weights", 1},
    };
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        const ex_mat *m = steps[s].m;
        if (steps[s].backward && !r->has_backward) continue;
        for (int64_t i = 0; i < m->rows; i++)
            for (int64_t j = 0; j < m->cols; j++) {
                const double x = m->v[i * m->ld + j];
                if (isfinite(x) && fabs(x) > FLT_MAX) {
                    *value = x;
                    return steps[s].name;
                }
            }
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Comparing
 * ------------------------------------------------------------------------------------------- */
void ex_compare(ex_cmp *c, const float *got, int64_t ld, ex_mat m, const char *name,
                int64_t rows_per_batch) {
    for (int64_t i = 0; i < m.rows; i++)
        for (int64_t j = 0; j < m.cols; j++) {
            const double g = got[i * ld + j], w = m.v[i * m.ld + j], bound = m.e[i * m.ld + j];
            double d = fabs(g - w);
            if (g == w || (isnan(g) && isnan(w))) d = 0; /* equal, or the same propagation */
            else if (!isfinite(d)) d = INFINITY;
            c->count++;
            if (d > c->max_diff) c->max_diff = d;
            if (bound > c->max_bound) c->max_bound = bound;
            /* a bound beyond float32's range says float32 cannot compute this at all */
            if (d == 0 || (d <= bound && bound <= FLT_MAX) || c->failed) continue;
            c->failed = 1;
            c->got = g, c->want = w, c->bound = bound;
            if (rows_per_batch > 0)
                snprintf(c->where, sizeof c->where, "%s[%lld, %lld, %lld]", name,
                         (long long)(i / rows_per_batch), (long long)(i % rows_per_batch),
                         (long long)j);
            else
                snprintf(c->where, sizeof c->where, "%s[%lld, %lld]", name, (long long)i,
                         (long long)j);
        }
}
