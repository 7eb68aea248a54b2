/* test_module.c - the module (nn.MultiheadAttention) against a naive float64 reference:
 * forward, attention weights and every gradient, for self- and cross-attention, masks,
 * dropout, unbatched and strided inputs; parameters, initialization, accumulation, safetensors
 * round trips, validation messages and allocation-failure injection.
 *
 * The reference (ref_*) is the textbook formula in double, one loop per sum, with the analytic
 * backward; a finite-difference test checks the reference itself. */
#include "harness.h"
#include "core/internal.h"
#include "attn/attn_common.h"     /* mha__dropout_keep: the core's dropout mask */
#include "attn/module_internal.h" /* saved state and dropout offset, for the fault tests */

#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * Random numbers (fixed seeds: failures reproduce)
 * ------------------------------------------------------------------------------------------- */
static uint64_t rng = 1;
static double urand(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}
static float frand(void) { return (float)(2.0 * urand() - 1.0); }

static double *dalloc(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(double)); }

/* ---------------------------------------------------------------------------------------------
 * The float64 reference of the whole module
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    int64_t E, H, kd, vd, B, L, S;
    double scale;
    const mha_mask *mask;      /* NULL: none */
    const mha_attn_params *ap; /* dropout (NULL: none) */
    /* parameters: wq [E,E], wk [E,kd], wv [E,vd], wo [E,E]; biases [E] or NULL */
    double *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo;
    /* inputs [B,L,E], [B,S,kd], [B,S,vd] */
    double *x, *xk, *xv;
    /* forward: q [B,L,E], k, v [B,S,E], p and pd (after dropout) [B,H,L,S], a [B,L,E], y */
    double *q, *k, *v, *p, *pd, *a, *y;
    /* backward (overwritten) */
    double *gwq, *gwk, *gwv, *gwo, *gbq, *gbk, *gbv, *gbo, *dx, *dxk, *dxv;
} ref_t;

static void ref_init(ref_t *R, int64_t E, int64_t H, int64_t kd, int64_t vd, int64_t B, int64_t L,
                     int64_t S, int bias) {
    memset(R, 0, sizeof *R);
    R->E = E, R->H = H, R->kd = kd, R->vd = vd, R->B = B, R->L = L, R->S = S;
    R->scale = 1.0 / sqrt((double)(E / H));
    R->wq = dalloc(E * E), R->wk = dalloc(E * kd), R->wv = dalloc(E * vd), R->wo = dalloc(E * E);
    if (bias) R->bq = dalloc(E), R->bk = dalloc(E), R->bv = dalloc(E), R->bo = dalloc(E);
    R->x = dalloc(B * L * E), R->xk = dalloc(B * S * kd), R->xv = dalloc(B * S * vd);
    R->q = dalloc(B * L * E), R->k = dalloc(B * S * E), R->v = dalloc(B * S * E);
    R->p = dalloc(B * H * L * S), R->pd = dalloc(B * H * L * S);
    R->a = dalloc(B * L * E), R->y = dalloc(B * L * E);
    R->gwq = dalloc(E * E), R->gwk = dalloc(E * kd), R->gwv = dalloc(E * vd);
    R->gwo = dalloc(E * E), R->gbq = dalloc(E), R->gbk = dalloc(E), R->gbv = dalloc(E);
    R->gbo = dalloc(E);
    R->dx = dalloc(B * L * E), R->dxk = dalloc(B * S * kd), R->dxv = dalloc(B * S * vd);
}

static void ref_free(ref_t *R) {
    double *all[] = {R->wq,  R->wk,  R->wv,  R->wo,  R->bq,  R->bk,  R->bv, R->bo,  R->x,   R->xk,
                     R->xv,  R->q,   R->k,   R->v,   R->p,   R->pd,  R->a,  R->y,   R->gwq, R->gwk,
                     R->gwv, R->gwo, R->gbq, R->gbk, R->gbv, R->gbo, R->dx, R->dxk, R->dxv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* out[r, o] = sum_i in[r, i] W[o, i] + b[o] */
static void ref_linear(const double *in, const double *W, const double *b, int64_t rows,
                       int64_t nin, int64_t nout, double *out) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < nout; o++) {
            double s = b ? b[o] : 0;
            for (int64_t i = 0; i < nin; i++) s += in[r * nin + i] * W[o * nin + i];
            out[r * nout + o] = s;
        }
}

/* 1 if key j may be attended by query i of (b, h); *add gets the float mask term. */
static int ref_allowed(const ref_t *R, int64_t b, int64_t h, int64_t i, int64_t j, double *add) {
    const mha_mask *m = R->mask;
    *add = 0;
    if (!m) return 1;
    int64_t L = R->L, S = R->S;
    if (m->causal == MHA_CAUSAL_TOP_LEFT && j > i) return 0;
    if (m->causal == MHA_CAUSAL_BOTTOM_RIGHT && j > i + (S - L)) return 0;
    if (m->key_lengths && j >= m->key_lengths[b]) return 0;
    if (m->key_padding && m->key_padding[b * S + j]) return 0;
    int64_t mi = ((m->attn_batched ? b * R->H + h : 0) * L + i) * S + j;
    if (m->attn_bool && m->attn_bool[mi]) return 0;
    if (m->attn_float) *add = m->attn_float[mi];
    return 1;
}

static double ref_keep_scale(const ref_t *R, int64_t b, int64_t h, int64_t i, int64_t j) {
    if (!R->ap || !(R->ap->dropout_p > 0)) return 1;
    if (!mha__dropout_keep(R->ap, b * R->H + h, i, j)) return 0;
    return 1.0 / (1.0 - (double)R->ap->dropout_p);
}

static void ref_forward(ref_t *R) {
    int64_t E = R->E, H = R->H, D = E / H, B = R->B, L = R->L, S = R->S;
    ref_linear(R->x, R->wq, R->bq, B * L, E, E, R->q);
    ref_linear(R->xk, R->wk, R->bk, B * S, R->kd, E, R->k);
    ref_linear(R->xv, R->wv, R->bv, B * S, R->vd, E, R->v);
    double *s = dalloc(S);
    int *ok = calloc((size_t)S + 1, sizeof(int));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++) {
                double mx = -INFINITY;
                for (int64_t j = 0; j < S; j++) {
                    double add, dot = 0;
                    ok[j] = ref_allowed(R, b, h, i, j, &add);
                    for (int64_t d = 0; d < D; d++)
                        dot +=
                            R->q[(b * L + i) * E + h * D + d] * R->k[(b * S + j) * E + h * D + d];
                    s[j] = dot * R->scale + add;
                    if (ok[j] && s[j] > mx) mx = s[j];
                }
                double sum = 0;
                for (int64_t j = 0; j < S; j++) sum += ok[j] && mx > -INFINITY ? exp(s[j] - mx) : 0;
                double *p = R->p + ((b * H + h) * L + i) * S,
                       *pd = R->pd + ((b * H + h) * L + i) * S;
                for (int64_t j = 0; j < S; j++) {
                    p[j] = ok[j] && mx > -INFINITY ? exp(s[j] - mx) / sum : 0;
                    pd[j] = p[j] * ref_keep_scale(R, b, h, i, j);
                }
                for (int64_t d = 0; d < D; d++) {
                    double o = 0;
                    for (int64_t j = 0; j < S; j++) o += pd[j] * R->v[(b * S + j) * E + h * D + d];
                    R->a[(b * L + i) * E + h * D + d] = o;
                }
            }
    ref_linear(R->a, R->wo, R->bo, B * L, E, E, R->y);
    free(s);
    free(ok);
}

/* gW[o, i] = sum_r dout[r, o] in[r, i];  gb[o] = sum_r dout[r, o];  din = dout W */
static void ref_linear_back(const double *in, const double *W, const double *dout, int64_t rows,
                            int64_t nin, int64_t nout, double *gW, double *gb, double *din) {
    for (int64_t o = 0; o < nout; o++) {
        for (int64_t i = 0; i < nin; i++) {
            double s = 0;
            for (int64_t r = 0; r < rows; r++) s += dout[r * nout + o] * in[r * nin + i];
            gW[o * nin + i] = s;
        }
        double s = 0;
        for (int64_t r = 0; r < rows; r++) s += dout[r * nout + o];
        gb[o] = s;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < nin; i++) {
            double s = 0;
            for (int64_t o = 0; o < nout; o++) s += dout[r * nout + o] * W[o * nin + i];
            din[r * nin + i] = s;
        }
}

/* Backward of ref_forward for dy [B,L,E] (ref_forward must have run). */
static void ref_backward(ref_t *R, const double *dy) {
    int64_t E = R->E, H = R->H, D = E / H, B = R->B, L = R->L, S = R->S;
    double *da = dalloc(B * L * E), *dq = dalloc(B * L * E), *dk = dalloc(B * S * E);
    double *dv = dalloc(B * S * E), *dp = dalloc(S);
    ref_linear_back(R->a, R->wo, dy, B * L, E, E, R->gwo, R->gbo, da);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++) {
                const double *p = R->p + ((b * H + h) * L + i) * S;
                const double *pd = R->pd + ((b * H + h) * L + i) * S;
                const double *dai = da + (b * L + i) * E + h * D;
                double dot = 0;
                for (int64_t j = 0; j < S; j++) {
                    double dpd = 0;
                    for (int64_t d = 0; d < D; d++) {
                        dpd += dai[d] * R->v[(b * S + j) * E + h * D + d];
                        dv[(b * S + j) * E + h * D + d] += pd[j] * dai[d];
                    }
                    dp[j] = dpd * ref_keep_scale(R, b, h, i, j);
                    dot += p[j] * dp[j];
                }
                for (int64_t j = 0; j < S; j++) {
                    double ds = p[j] * (dp[j] - dot) * R->scale;
                    for (int64_t d = 0; d < D; d++) {
                        dq[(b * L + i) * E + h * D + d] += ds * R->k[(b * S + j) * E + h * D + d];
                        dk[(b * S + j) * E + h * D + d] += ds * R->q[(b * L + i) * E + h * D + d];
                    }
                }
            }
    ref_linear_back(R->x, R->wq, dq, B * L, E, E, R->gwq, R->gbq, R->dx);
    ref_linear_back(R->xk, R->wk, dk, B * S, R->kd, E, R->gwk, R->gbk, R->dxk);
    ref_linear_back(R->xv, R->wv, dv, B * S, R->vd, E, R->gwv, R->gbv, R->dxv);
    free(da), free(dq), free(dk), free(dv), free(dp);
}

/* Copies the module's parameters into the reference. */
static void ref_from_module(ref_t *R, mha_module *m) {
    int64_t E = R->E;
    mha_tensor t;
    if (mha_module_param(NULL, m, "in_proj_weight", &t, NULL) == MHA_OK) {
        for (int64_t i = 0; i < E * E; i++) {
            R->wq[i] = t.data[i];
            R->wk[i] = t.data[E * E + i];
            R->wv[i] = t.data[2 * E * E + i];
        }
    } else {
        mha_module_param(NULL, m, "q_proj_weight", &t, NULL);
        for (int64_t i = 0; i < E * E; i++) R->wq[i] = t.data[i];
        mha_module_param(NULL, m, "k_proj_weight", &t, NULL);
        for (int64_t i = 0; i < E * R->kd; i++) R->wk[i] = t.data[i];
        mha_module_param(NULL, m, "v_proj_weight", &t, NULL);
        for (int64_t i = 0; i < E * R->vd; i++) R->wv[i] = t.data[i];
    }
    mha_module_param(NULL, m, "out_proj.weight", &t, NULL);
    for (int64_t i = 0; i < E * E; i++) R->wo[i] = t.data[i];
    if (R->bq) {
        mha_module_param(NULL, m, "in_proj_bias", &t, NULL);
        for (int64_t i = 0; i < E; i++) {
            R->bq[i] = t.data[i];
            R->bk[i] = t.data[E + i];
            R->bv[i] = t.data[2 * E + i];
        }
        mha_module_param(NULL, m, "out_proj.bias", &t, NULL);
        for (int64_t i = 0; i < E; i++) R->bo[i] = t.data[i];
    }
}

/* The reference gradient of parameter name (times mult), in the module's layout. */
static double *ref_param_grad(const ref_t *R, const char *name, double mult, int64_t *n) {
    int64_t E = R->E;
    double *g = NULL;
    const double *parts[3] = {NULL, NULL, NULL};
    int64_t sizes[3] = {0, 0, 0};
    if (!strcmp(name, "in_proj_weight"))
        parts[0] = R->gwq, parts[1] = R->gwk, parts[2] = R->gwv,
        sizes[0] = sizes[1] = sizes[2] = E * E;
    else if (!strcmp(name, "q_proj_weight")) parts[0] = R->gwq, sizes[0] = E * E;
    else if (!strcmp(name, "k_proj_weight")) parts[0] = R->gwk, sizes[0] = E * R->kd;
    else if (!strcmp(name, "v_proj_weight")) parts[0] = R->gwv, sizes[0] = E * R->vd;
    else if (!strcmp(name, "in_proj_bias"))
        parts[0] = R->gbq, parts[1] = R->gbk, parts[2] = R->gbv, sizes[0] = sizes[1] = sizes[2] = E;
    else if (!strcmp(name, "out_proj.weight")) parts[0] = R->gwo, sizes[0] = E * E;
    else if (!strcmp(name, "out_proj.bias")) parts[0] = R->gbo, sizes[0] = E;
    *n = sizes[0] + sizes[1] + sizes[2];
    g = dalloc(*n);
    int64_t o = 0;
    for (int p = 0; p < 3; p++)
        for (int64_t i = 0; i < sizes[p]; i++) g[o++] = mult * parts[p][i];
    return g;
}

/* ---------------------------------------------------------------------------------------------
 * Module vs reference, one configuration
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    int64_t E, H, kd, vd, B, L, S;
    int bias, unbatched, self, average, strided;
    mha_causal causal;
    int pad, klen, abool, afloat, batched_mask, full_mask;
    float dropout, scale;
} mcase;

/* Relative tolerance and absolute floor for float32 results vs the double reference. */
#define RTOL 2e-3
#define ATOL 2e-5

static int run_case(mha_ctx *ctx, const mcase *c, uint64_t seed) {
    int ok = 0;
    rng = seed;
    int64_t E = c->E, H = c->H, B = c->B, L = c->L;
    int64_t S = c->self ? L : c->S;
    int64_t kd = c->self ? E : (c->kd ? c->kd : E), vd = c->self ? E : (c->vd ? c->vd : E);
    mha_config cfg = mha_config_default(E, H);
    cfg.kdim = c->self ? 0 : kd;
    cfg.vdim = c->self ? 0 : vd;
    cfg.bias = c->bias;
    cfg.dropout = c->dropout;
    cfg.seed = seed;
    mha_module *m = NULL;
    ref_t R;
    ref_init(&R, E, H, kd, vd, B, L, S, c->bias);
    float *xq = NULL, *xk = NULL, *xv = NULL, *y = NULL, *w = NULL, *dy = NULL, *dq = NULL,
          *dk = NULL, *dv = NULL, *afl = NULL;
    uint8_t *pad = NULL, *abool = NULL;
    int32_t *klen = NULL;
    double *dyd = dalloc(B * L * E), *wref = NULL;
    if (mha_module_create(ctx, &cfg, &m) != MHA_OK) {
        FAILF("create: %s", mha_ctx_errmsg(ctx));
        goto out;
    }
    /* Nonzero biases, so that their paths are exercised. */
    if (c->bias) {
        mha_tensor t;
        mha_module_param(ctx, m, "in_proj_bias", &t, NULL);
        for (int64_t i = 0; i < 3 * E; i++) t.data[i] = 0.5f * frand();
        mha_module_param(ctx, m, "out_proj.bias", &t, NULL);
        for (int64_t i = 0; i < E; i++) t.data[i] = 0.5f * frand();
    }
    ref_from_module(&R, m);

    /* Inputs; strided: rows padded and batches gapped, so no [B*L, E] row view exists. */
    int64_t rq = c->strided ? E + 3 : E, bq = c->strided ? L * rq + 5 : L * E;
    int64_t ro = c->strided ? E + 1 : E, bo = c->strided ? L * ro + 2 : L * E;
    xq = calloc((size_t)(B * bq + 1), sizeof(float));
    y = calloc((size_t)(B * bo + 1), sizeof(float));
    dq = calloc((size_t)(B * bo + 1), sizeof(float));
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < L; i++)
            for (int64_t e = 0; e < E; e++) {
                float v = frand();
                xq[b * bq + i * rq + e] = v;
                R.x[(b * L + i) * E + e] = v;
            }
    if (!c->self) {
        xk = calloc((size_t)(B * S * kd + 1), sizeof(float));
        xv = calloc((size_t)(B * S * vd + 1), sizeof(float));
        dk = calloc((size_t)(B * S * kd + 1), sizeof(float));
        dv = calloc((size_t)(B * S * vd + 1), sizeof(float));
        for (int64_t i = 0; i < B * S * kd; i++) R.xk[i] = xk[i] = frand();
        for (int64_t i = 0; i < B * S * vd; i++) R.xv[i] = xv[i] = frand();
    } else {
        memcpy(R.xk, R.x, sizeof(double) * (size_t)(B * L * E));
        memcpy(R.xv, R.x, sizeof(double) * (size_t)(B * L * E));
    }
    dy = calloc((size_t)(B * L * E + 1), sizeof(float));
    for (int64_t i = 0; i < B * L * E; i++) dyd[i] = dy[i] = frand();

    /* Masks. */
    mha_mask mask = mha_mask_default();
    mask.causal = c->causal;
    int64_t nm = (c->batched_mask ? B * H : 1) * L * S;
    mask.attn_batched = c->batched_mask;
    if (c->pad || c->full_mask) {
        pad = calloc((size_t)(B * S + 1), 1);
        for (int64_t i = 0; i < B * S; i++) pad[i] = c->pad && urand() < 0.3;
        if (c->full_mask)
            for (int64_t j = 0; j < S; j++) pad[j] = 1; /* batch 0: every row fully masked */
        mask.key_padding = pad;
    }
    if (c->klen) {
        klen = calloc((size_t)B, sizeof(int32_t));
        for (int64_t b = 0; b < B; b++) klen[b] = (int32_t)(1 + (b * 7 + 3) % S);
        mask.key_lengths = klen;
    }
    if (c->abool) {
        abool = calloc((size_t)nm + 1, 1);
        for (int64_t i = 0; i < nm; i++) abool[i] = urand() < 0.25;
        if (c->full_mask && L > 1)
            for (int64_t j = 0; j < S; j++) abool[1 * S + j] = 1; /* row 1 of head 0 */
        mask.attn_bool = abool;
    }
    if (c->afloat) {
        afl = calloc((size_t)nm + 1, sizeof(float));
        for (int64_t i = 0; i < nm; i++) afl[i] = urand() < 0.1 ? -INFINITY : frand();
        mask.attn_float = afl;
    }
    R.mask = &mask;
    mha_attn_params ap = mha_attn_params_default();
    ap.dropout_p = c->dropout;
    ap.seed = seed;
    ap.offset = 0;
    R.ap = c->dropout > 0 ? &ap : NULL;
    if (c->scale != 0) R.scale = c->scale;

    /* Tensors. */
    int ub = c->unbatched;
    int64_t qs[3] = {B, L, E}, qst[3] = {bq, rq, 1}, os[3] = {B, L, E}, ost[3] = {bo, ro, 1};
    mha_tensor tq = mha_tensor_strided(xq, 3 - ub, qs + ub, qst + ub);
    mha_tensor ty = mha_tensor_strided(y, 3 - ub, os + ub, ost + ub);
    mha_tensor tdq = mha_tensor_strided(dq, 3 - ub, os + ub, ost + ub);
    int64_t ks[3] = {B, S, kd}, vs[3] = {B, S, vd};
    mha_tensor tk = mha_tensor_make(xk, 3 - ub, ks + ub), tv = mha_tensor_make(xv, 3 - ub, vs + ub);
    mha_tensor tdk = mha_tensor_make(dk, 3 - ub, ks + ub),
               tdv = mha_tensor_make(dv, 3 - ub, vs + ub);
    mha_tensor tdy = mha_tensor_make(dy, 3 - ub, qs + ub);
    int64_t wn = c->average ? B * L * S : B * H * L * S;
    w = calloc((size_t)wn + 1, sizeof(float));
    int64_t ws4[4] = {B, H, L, S}, ws3[3] = {B, L, S};
    mha_tensor tw =
        c->average ? mha_tensor_make(w, 3 - ub, ws3 + ub) : mha_tensor_make(w, 4 - ub, ws4 + ub);

    mha_forward_opts fo = mha_forward_opts_default();
    fo.training = c->dropout > 0;
    fo.average_weights = c->average;
    fo.scale = c->scale;
    if (mha_module_forward(ctx, m, &fo, &tq, c->self ? NULL : &tk, c->self ? NULL : &tv, &mask, &ty,
                           &tw) != MHA_OK) {
        FAILF("forward: %s", mha_ctx_errmsg(ctx));
        goto out;
    }
    ref_forward(&R);
    ref_backward(&R, dyd);

    /* Compare the output (gathered from its strided view). */
    {
        float *yc = malloc(sizeof(float) * (size_t)(B * L * E + 1));
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < L; i++)
                memcpy(yc + (b * L + i) * E, y + b * bo + i * ro, sizeof(float) * (size_t)E);
        int good = harness_near(__FILE__, __LINE__, "out", yc, R.y, B * L * E, RTOL, ATOL);
        if (good && c->full_mask) {
            /* Batch 0 is fully masked: the output is exactly out_proj.bias (0 without bias). */
            for (int64_t i = 0; i < L && good; i++)
                for (int64_t e = 0; e < E; e++)
                    if (yc[i * E + e] != (c->bias ? (float)R.bo[e] : 0.0f)) {
                        FAILF("fully masked row %lld: out[%lld] = %g, expected out_proj.bias %g",
                              (long long)i, (long long)e, yc[i * E + e], R.bo ? R.bo[e] : 0.0);
                        good = 0;
                        break;
                    }
        }
        free(yc);
        if (!good) goto out;
    }
    wref = dalloc(wn);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++)
                for (int64_t j = 0; j < S; j++) {
                    double v = R.pd[((b * H + h) * L + i) * S + j];
                    if (c->average) wref[(b * L + i) * S + j] += v / (double)H;
                    else wref[((b * H + h) * L + i) * S + j] = v;
                }
    if (!harness_near(__FILE__, __LINE__, "weights", w, wref, wn, RTOL, ATOL)) goto out;

    /* Backward. */
    if (mha_module_backward(ctx, m, &tdy, &tdq, c->self ? NULL : &tdk, c->self ? NULL : &tdv) !=
        MHA_OK) {
        FAILF("backward: %s", mha_ctx_errmsg(ctx));
        goto out;
    }
    {
        float *g = malloc(sizeof(float) * (size_t)(B * L * E + 1));
        double *want = dalloc(B * L * E);
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < L; i++)
                memcpy(g + (b * L + i) * E, dq + b * bo + i * ro, sizeof(float) * (size_t)E);
        for (int64_t i = 0; i < B * L * E; i++)
            want[i] = R.dx[i] + (c->self ? R.dxk[i] + R.dxv[i] : 0);
        int good = harness_near(__FILE__, __LINE__, "dquery", g, want, B * L * E, RTOL, ATOL);
        free(g);
        free(want);
        if (!good) goto out;
    }
    if (!c->self) {
        if (!harness_near(__FILE__, __LINE__, "dkey", dk, R.dxk, B * S * kd, RTOL, ATOL)) goto out;
        if (!harness_near(__FILE__, __LINE__, "dvalue", dv, R.dxv, B * S * vd, RTOL, ATOL))
            goto out;
    }
    for (int i = 0; i < mha_module_param_count(m); i++) {
        const char *name = mha_module_param_name(m, i);
        mha_tensor gt;
        int64_t n;
        mha_module_param(ctx, m, name, NULL, &gt);
        double *want = ref_param_grad(&R, name, 1.0, &n);
        int good = n == mha_tensor_numel(&gt) &&
                   harness_near(__FILE__, __LINE__, name, gt.data, want, n, RTOL, ATOL);
        free(want);
        if (!good) {
            FAILF("gradient of %s", name);
            goto out;
        }
    }
    ok = 1;
out:
    if (!ok)
        printf("  case: E=%lld H=%lld kd=%lld vd=%lld B=%lld L=%lld S=%lld bias=%d unb=%d self=%d "
               "avg=%d strided=%d causal=%d pad=%d klen=%d abool=%d afloat=%d batched=%d full=%d "
               "dropout=%g scale=%g seed=%llu isa=%s\n",
               (long long)E, (long long)H, (long long)kd, (long long)vd, (long long)B, (long long)L,
               (long long)S, c->bias, c->unbatched, c->self, c->average, c->strided, (int)c->causal,
               c->pad, c->klen, c->abool, c->afloat, c->batched_mask, c->full_mask,
               (double)c->dropout, (double)c->scale, (unsigned long long)seed,
               mha_isa_name(mha_ctx_isa(ctx)));
    mha_module_free(m);
    ref_free(&R);
    free(xq), free(xk), free(xv), free(y), free(w), free(dy), free(dq), free(dk), free(dv);
    free(afl), free(pad), free(abool), free(klen), free(dyd), free(wref);
    return ok;
}

static mcase base_case(int64_t E, int64_t H, int64_t B, int64_t L) {
    mcase c;
    memset(&c, 0, sizeof c);
    c.E = E, c.H = H, c.B = B, c.L = L, c.S = L;
    c.bias = 1, c.self = 1, c.average = 1;
    return c;
}

/* ---------------------------------------------------------------------------------------------
 * Tests
 * ------------------------------------------------------------------------------------------- */

/* The reference's analytic backward against central differences of its own forward. */
TEST(reference_matches_finite_differences) {
    for (int variant = 0; variant < 2; variant++) {
        int64_t E = 4, H = 2, kd = 3, vd = 5, B = 2, L = 2, S = 3;
        ref_t R;
        ref_init(&R, E, H, kd, vd, B, L, S, 1);
        rng = 99 + (uint64_t)variant;
        double *all[] = {R.wq, R.wk, R.wv, R.wo, R.bq, R.bk, R.bv, R.bo, R.x, R.xk, R.xv};
        double *grads[] = {R.gwq, R.gwk, R.gwv, R.gwo, R.gbq, R.gbk,
                           R.gbv, R.gbo, R.dx,  R.dxk, R.dxv};
        int64_t sizes[] = {E * E, E * kd, E * vd,    E * E,      E,         E,
                           E,     E,      B * L * E, B * S * kd, B * S * vd};
        const char *names[] = {"wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo", "x", "xk", "xv"};
        for (int a = 0; a < 11; a++)
            for (int64_t i = 0; i < sizes[a]; i++) all[a][i] = frand();
        uint8_t pad[6] = {0, 0, 1, 0, 0, 0};
        uint8_t ab[6] = {0, 1, 0, 0, 0, 0};
        float af[6] = {0.3f, -0.2f, 0.1f, 0.0f, 0.5f, -0.4f};
        mha_mask mask = mha_mask_default();
        mask.key_padding = pad;
        mask.attn_bool = ab;
        mask.attn_float = af;
        mask.causal = variant ? MHA_CAUSAL_BOTTOM_RIGHT : MHA_CAUSAL_NONE;
        mha_attn_params ap = mha_attn_params_default();
        ap.dropout_p = 0.4f;
        ap.seed = 5;
        R.mask = &mask;
        R.ap = variant ? &ap : NULL;
        double *dy = dalloc(B * L * E);
        for (int64_t i = 0; i < B * L * E; i++) dy[i] = frand();
        ref_forward(&R);
        ref_backward(&R, dy);
        int bad = 0;
        for (int a = 0; a < 11 && !bad; a++)
            for (int64_t i = 0; i < sizes[a] && !bad; i++) {
                double keep = all[a][i], h = 1e-6, lp = 0, lm = 0;
                all[a][i] = keep + h;
                ref_forward(&R);
                for (int64_t t = 0; t < B * L * E; t++) lp += R.y[t] * dy[t];
                all[a][i] = keep - h;
                ref_forward(&R);
                for (int64_t t = 0; t < B * L * E; t++) lm += R.y[t] * dy[t];
                all[a][i] = keep;
                double fd = (lp - lm) / (2 * h), an = grads[a][i];
                if (fabs(fd - an) > 1e-6 + 1e-5 * fabs(an)) {
                    FAILF("variant %d: d loss / d %s[%lld]: analytic %.9g, finite difference "
                          "%.9g",
                          variant, names[a], (long long)i, an, fd);
                    bad = 1;
                }
            }
        free(dy);
        ref_free(&R);
        if (bad) return;
    }
}

TEST(self_attention_matches_reference) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        mcase c = base_case(32, 4, 2, 7);
        ASSERT_TRUE(run_case(ctx, &c, 11));
        c.average = 0; /* per-head weights */
        ASSERT_TRUE(run_case(ctx, &c, 12));
        c = base_case(24, 3, 3, 5);
        c.bias = 0;
        ASSERT_TRUE(run_case(ctx, &c, 13));
        c = base_case(8, 8, 1, 1); /* D = 1, L = 1 */
        ASSERT_TRUE(run_case(ctx, &c, 14));
        c = base_case(16, 2, 2, 6);
        c.strided = 1;
        ASSERT_TRUE(run_case(ctx, &c, 15));
        c.scale = 0.3f;
        ASSERT_TRUE(run_case(ctx, &c, 16));
    }
    mha_ctx_free(ctx);
}

TEST(cross_attention_matches_reference) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        mcase c = base_case(16, 4, 2, 5);
        c.self = 0, c.S = 9, c.kd = 7, c.vd = 11; /* separate q/k/v_proj_weight */
        ASSERT_TRUE(run_case(ctx, &c, 21));
        c.average = 0, c.bias = 0;
        ASSERT_TRUE(run_case(ctx, &c, 22));
        c = base_case(16, 2, 2, 4);
        c.self = 0, c.S = 3; /* kdim == vdim == E: packed in_proj_weight, cross-attention */
        ASSERT_TRUE(run_case(ctx, &c, 23));
        c.strided = 1, c.kd = 5, c.vd = 16;
        ASSERT_TRUE(run_case(ctx, &c, 24));
    }
    mha_ctx_free(ctx);
}

TEST(unbatched_matches_reference) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        mcase c = base_case(12, 3, 1, 6);
        c.unbatched = 1;
        ASSERT_TRUE(run_case(ctx, &c, 31));
        c.average = 0, c.self = 0, c.S = 4, c.kd = 5, c.vd = 3, c.pad = 1, c.abool = 1;
        c.batched_mask = 1; /* [H, L, S] */
        ASSERT_TRUE(run_case(ctx, &c, 32));
    }
    mha_ctx_free(ctx);
}

TEST(masks_match_reference) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        mcase c = base_case(16, 2, 2, 9);
        c.causal = MHA_CAUSAL_TOP_LEFT;
        ASSERT_TRUE(run_case(ctx, &c, 41));
        c.self = 0, c.S = 13, c.kd = 6, c.causal = MHA_CAUSAL_BOTTOM_RIGHT;
        ASSERT_TRUE(run_case(ctx, &c, 42));
        c = base_case(16, 4, 3, 6);
        c.pad = 1, c.klen = 1;
        ASSERT_TRUE(run_case(ctx, &c, 43));
        c = base_case(16, 4, 2, 6);
        c.abool = 1, c.afloat = 1;
        ASSERT_TRUE(run_case(ctx, &c, 44));
        c.batched_mask = 1, c.average = 0, c.self = 0, c.S = 5;
        ASSERT_TRUE(run_case(ctx, &c, 45));
    }
    mha_ctx_free(ctx);
}

TEST(fully_masked_rows_give_out_proj_bias) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        mcase c = base_case(16, 4, 2, 5);
        c.full_mask = 1, c.abool = 1;
        ASSERT_TRUE(run_case(ctx, &c, 51));
        c.bias = 0, c.self = 0, c.S = 3, c.kd = 4;
        ASSERT_TRUE(run_case(ctx, &c, 52));
    }
    mha_ctx_free(ctx);
}

TEST(dropout_matches_reference_and_advances) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    FOR_EACH_ISA(ctx) {
        /* Training forward (offset 0) and backward against the reference with the core's
         * keep mask; weights are returned after dropout. */
        mcase c = base_case(16, 2, 2, 6);
        c.dropout = 0.3f, c.average = 0;
        ASSERT_TRUE(run_case(ctx, &c, 61));
        c.self = 0, c.S = 7, c.vd = 5, c.causal = MHA_CAUSAL_TOP_LEFT;
        ASSERT_TRUE(run_case(ctx, &c, 62));
        /* dropout 1 (as PyTorch's nn.MultiheadAttention(dropout=1.0)): every weight dropped,
         * out = out_proj's bias, the in_proj and out_proj weight gradients 0 */
        c.dropout = 1.0f, c.average = 1;
        ASSERT_TRUE(run_case(ctx, &c, 63));
    }
    /* The stream advances on each training forward and not in evaluation mode. */
    mha_config cfg = mha_config_default(8, 2);
    cfg.dropout = 0.5f;
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    float x[3 * 8], y1[3 * 8], y2[3 * 8], y3[3 * 8], y4[3 * 8];
    for (int i = 0; i < 24; i++) x[i] = (float)sin(i * 0.7);
    int64_t s[2] = {3, 8};
    mha_tensor tx = mha_tensor_make(x, 2, s), t1 = mha_tensor_make(y1, 2, s),
               t2 = mha_tensor_make(y2, 2, s), t3 = mha_tensor_make(y3, 2, s),
               t4 = mha_tensor_make(y4, 2, s);
    mha_forward_opts fo = mha_forward_opts_default();
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &t3, NULL));
    fo.training = 1;
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &t1, NULL));
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &t2, NULL));
    ASSERT_TRUE(memcmp(y1, y2, sizeof y1) != 0);
    ASSERT_TRUE(memcmp(y1, y3, sizeof y1) != 0);
    fo.training = 0;
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &t4, NULL));
    ASSERT_TRUE(memcmp(y3, y4, sizeof y3) == 0);
    mha_module_free(m);
    /* A new module with the same seed replays the same stream. */
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    fo.training = 1;
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tx, NULL, NULL, NULL, &t4, NULL));
    ASSERT_TRUE(memcmp(y1, y4, sizeof y1) == 0);
    mha_module_free(m);
    mha_ctx_free(ctx);
}

TEST(parameter_names_and_shapes) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    struct {
        int64_t kd, vd;
        int bias;
        int n;
        const char *names[6];
        int64_t shapes[6][2];
    } want[] = {
        {0,
         0,
         1,
         4,
         {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"},
         {{48, 16}, {48, 0}, {16, 16}, {16, 0}}},
        {16, 16, 0, 2, {"in_proj_weight", "out_proj.weight"}, {{48, 16}, {16, 16}}},
        {5,
         0,
         1,
         6,
         {"q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "out_proj.weight",
          "out_proj.bias"},
         {{16, 16}, {16, 5}, {16, 16}, {48, 0}, {16, 16}, {16, 0}}},
        {0,
         7,
         0,
         4,
         {"q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"},
         {{16, 16}, {16, 16}, {16, 7}, {16, 16}}},
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        mha_config cfg = mha_config_default(16, 4);
        cfg.kdim = want[k].kd, cfg.vdim = want[k].vd, cfg.bias = want[k].bias;
        mha_module *m;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
        ASSERT_EQ(mha_module_param_count(m), want[k].n);
        ASSERT_EQ(mha_module_config(m)->kdim, want[k].kd ? want[k].kd : 16);
        ASSERT_EQ(mha_module_config(m)->vdim, want[k].vd ? want[k].vd : 16);
        for (int i = 0; i < want[k].n; i++) {
            const char *name = mha_module_param_name(m, i);
            ASSERT_TRUE(name && strcmp(name, want[k].names[i]) == 0);
            mha_tensor v, g;
            ASSERT_OK(ctx, mha_module_param(ctx, m, name, &v, &g));
            int nd = want[k].shapes[i][1] ? 2 : 1;
            ASSERT_EQ(v.ndim, nd);
            ASSERT_EQ(g.ndim, nd);
            for (int d = 0; d < nd; d++) {
                ASSERT_EQ(v.shape[d], want[k].shapes[i][d]);
                ASSERT_EQ(g.shape[d], want[k].shapes[i][d]);
            }
            ASSERT_TRUE(v.data && g.data && v.data != g.data);
        }
        ASSERT_TRUE(mha_module_param_name(m, want[k].n) == NULL);
        ASSERT_TRUE(mha_module_param_name(m, -1) == NULL);
        ASSERT_EQ(mha_module_param(ctx, m, "out_proj.weigth", NULL, NULL), MHA_ERR_NOT_FOUND);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "name: got \"out_proj.weigth\"");
        ASSERT_EQ(mha_module_param(ctx, m, NULL, NULL, NULL), MHA_ERR_INVALID_ARG);
        mha_module_free(m);
    }
    ASSERT_EQ(mha_module_param_count(NULL), 0);
    ASSERT_TRUE(mha_module_param_name(NULL, 0) == NULL);
    ASSERT_TRUE(mha_module_config(NULL) == NULL);
    ASSERT_EQ(mha_module_param(ctx, NULL, "in_proj_weight", NULL, NULL), MHA_ERR_INVALID_ARG);
    mha_module_free(NULL);
    mha_module_zero_grad(NULL);
    mha_ctx_free(ctx);
}

/* max |w| over n values, and whether all are within bound. */
static int within(const float *w, int64_t n, double bound, double *maxabs, double *mean) {
    double mx = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!(fabs(w[i]) <= bound)) return 0;
        if (fabs(w[i]) > mx) mx = fabs(w[i]);
        s += w[i];
    }
    *maxabs = mx;
    *mean = s / (double)n;
    return 1;
}

TEST(initialization_follows_pytorch) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    const int64_t E = 64;
    for (int layout = 0; layout < 2; layout++) {
        mha_config cfg = mha_config_default(E, 8);
        cfg.seed = 1234;
        if (layout) cfg.kdim = 32, cfg.vdim = 96;
        mha_module *m, *m2, *m3;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m2));
        cfg.seed = 1235;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m3));
        for (int i = 0; i < mha_module_param_count(m); i++) {
            const char *name = mha_module_param_name(m, i);
            mha_tensor v, v2, v3, g;
            ASSERT_OK(ctx, mha_module_param(ctx, m, name, &v, &g));
            ASSERT_OK(ctx, mha_module_param(ctx, m2, name, &v2, NULL));
            ASSERT_OK(ctx, mha_module_param(ctx, m3, name, &v3, NULL));
            int64_t n = mha_tensor_numel(&v);
            for (int64_t k = 0; k < n; k++) ASSERT_TRUE(g.data[k] == 0.0f);
            ASSERT_TRUE(memcmp(v.data, v2.data, sizeof(float) * (size_t)n) == 0);
            double bound;
            if (strstr(name, "bias")) {
                for (int64_t k = 0; k < n; k++) ASSERT_TRUE(v.data[k] == 0.0f);
                continue;
            }
            ASSERT_TRUE(memcmp(v.data, v3.data, sizeof(float) * (size_t)n) != 0);
            if (!strcmp(name, "in_proj_weight")) bound = sqrt(6.0 / (E + 3 * E));
            else if (!strcmp(name, "out_proj.weight")) bound = 1.0 / sqrt((double)E);
            else bound = sqrt(6.0 / (double)(v.shape[0] + v.shape[1])); /* fan_out + fan_in */
            double mx, mean;
            if (!within(v.data, n, bound, &mx, &mean)) {
                FAILF("%s: a value outside +-%g", name, bound);
                return;
            }
            /* Uniform over the whole range: max close to the bound, mean close to 0. */
            if (mx < 0.98 * bound || fabs(mean) > 0.05 * bound) {
                FAILF("%s: max |w| %g, mean %g for bound %g", name, mx, mean, bound);
                return;
            }
        }
        mha_module_free(m);
        mha_module_free(m2);
        mha_module_free(m3);
    }
    mha_ctx_free(ctx);
}

/* Runs one self-attention forward + backward on fixed data. */
static mha_status fwd_bwd(mha_ctx *ctx, mha_module *m, int64_t B, int64_t L, int64_t E) {
    float *x = malloc(sizeof(float) * (size_t)(B * L * E)),
          *y = malloc(sizeof(float) * (size_t)(B * L * E));
    float *dx = malloc(sizeof(float) * (size_t)(B * L * E));
    for (int64_t i = 0; i < B * L * E; i++) x[i] = (float)cos((double)i * 0.37);
    int64_t s[3] = {B, L, E};
    mha_tensor tx = mha_tensor_make(x, 3, s), ty = mha_tensor_make(y, 3, s),
               tdx = mha_tensor_make(dx, 3, s);
    mha_status st = mha_module_forward(ctx, m, NULL, &tx, NULL, NULL, NULL, &ty, NULL);
    if (st == MHA_OK) st = mha_module_backward(ctx, m, &tx /* dy = x */, &tdx, NULL, NULL);
    free(x), free(y), free(dx);
    return st;
}

TEST(gradients_accumulate_and_zero_grad) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(16, 4);
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    int np = mha_module_param_count(m);
    float *once[6];
    ASSERT_OK(ctx, fwd_bwd(ctx, m, 2, 5, 16));
    for (int i = 0; i < np; i++) {
        mha_tensor g;
        mha_module_param(ctx, m, mha_module_param_name(m, i), NULL, &g);
        int64_t n = mha_tensor_numel(&g);
        once[i] = malloc(sizeof(float) * (size_t)n);
        memcpy(once[i], g.data, sizeof(float) * (size_t)n);
        double nrm = 0;
        for (int64_t k = 0; k < n; k++) nrm += fabs(g.data[k]);
        ASSERT_TRUE(nrm > 0);
    }
    ASSERT_OK(ctx, fwd_bwd(ctx, m, 2, 5, 16)); /* same data: gradients double */
    for (int i = 0; i < np; i++) {
        mha_tensor g;
        mha_module_param(ctx, m, mha_module_param_name(m, i), NULL, &g);
        int64_t n = mha_tensor_numel(&g);
        double *want = dalloc(n);
        for (int64_t k = 0; k < n; k++) want[k] = 2.0 * once[i][k];
        int good = harness_near(__FILE__, __LINE__, mha_module_param_name(m, i), g.data, want, n,
                                1e-6, 1e-7);
        free(want);
        if (!good) return;
    }
    mha_module_zero_grad(m);
    for (int i = 0; i < np; i++) {
        mha_tensor g;
        mha_module_param(ctx, m, mha_module_param_name(m, i), NULL, &g);
        for (int64_t k = 0; k < mha_tensor_numel(&g); k++) ASSERT_TRUE(g.data[k] == 0.0f);
    }
    ASSERT_OK(ctx, fwd_bwd(ctx, m, 2, 5, 16));
    for (int i = 0; i < np; i++) {
        mha_tensor g;
        mha_module_param(ctx, m, mha_module_param_name(m, i), NULL, &g);
        ASSERT_TRUE(memcmp(g.data, once[i], sizeof(float) * (size_t)mha_tensor_numel(&g)) == 0);
        free(once[i]);
    }
    mha_module_free(m);
    mha_ctx_free(ctx);
}

static char tmp_path[256];
static const char *tmpfile_path(const char *tag) {
    snprintf(tmp_path, sizeof tmp_path, "/tmp/test_module_%ld_%s.safetensors", (long)getpid(), tag);
    return tmp_path;
}

/* Gives m's biases nonzero values (PyTorch's initialization makes them 0), so that a bias
 * read as zeros shows. */
static void nonzero_biases(mha_module *m) {
    static const char *const names[] = {"in_proj_bias", "out_proj.bias"};
    for (int k = 0; k < 2; k++) {
        mha_tensor t;
        if (mha_module_param(NULL, m, names[k], &t, NULL) != MHA_OK) continue;
        for (int64_t i = 0; i < mha_tensor_numel(&t); i++) t.data[i] = 0.25f + 0.01f * (float)i;
    }
}

/* 1 if every parameter of a and b is bitwise equal. */
static int same_params(mha_module *a, mha_module *b) {
    if (mha_module_param_count(a) != mha_module_param_count(b)) return 0;
    for (int i = 0; i < mha_module_param_count(a); i++) {
        mha_tensor va, vb;
        if (mha_module_param(NULL, a, mha_module_param_name(a, i), &va, NULL) ||
            mha_module_param(NULL, b, mha_module_param_name(a, i), &vb, NULL))
            return 0;
        if (va.ndim != vb.ndim || mha_tensor_numel(&va) != mha_tensor_numel(&vb)) return 0;
        for (int d = 0; d < va.ndim; d++)
            if (va.shape[d] != vb.shape[d]) return 0;
        if (memcmp(va.data, vb.data, sizeof(float) * (size_t)mha_tensor_numel(&va))) return 0;
    }
    return 1;
}

TEST(save_load_round_trip_and_create_from_file) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    struct {
        int64_t kd, vd;
        int bias;
    } layouts[] = {{0, 0, 1}, {0, 0, 0}, {5, 9, 1}, {16, 3, 0}};
    for (size_t k = 0; k < sizeof layouts / sizeof layouts[0]; k++) {
        mha_config cfg = mha_config_default(16, 4);
        cfg.kdim = layouts[k].kd, cfg.vdim = layouts[k].vd, cfg.bias = layouts[k].bias;
        cfg.seed = 7;
        mha_module *a, *b, *c;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &a));
        if (cfg.bias) { /* nonzero biases survive too */
            mha_tensor t;
            mha_module_param(ctx, a, "out_proj.bias", &t, NULL);
            for (int i = 0; i < 16; i++) t.data[i] = (float)i * 0.1f;
        }
        cfg.seed = 8;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &b));
        ASSERT_TRUE(!same_params(a, b));
        const char *path = tmpfile_path("rt");
        ASSERT_OK(ctx, mha_module_save(ctx, a, path));
        ASSERT_OK(ctx, mha_module_load(ctx, b, path, NULL));
        ASSERT_TRUE(same_params(a, b));
        ASSERT_OK(ctx, mha_module_create_from_file(ctx, path, NULL, 0, &c));
        ASSERT_TRUE(same_params(a, c));
        const mha_config *cc = mha_module_config(c);
        ASSERT_EQ(cc->embed_dim, 16);
        ASSERT_EQ(cc->num_heads, 4);
        ASSERT_EQ(cc->kdim, layouts[k].kd ? layouts[k].kd : 16);
        ASSERT_EQ(cc->vdim, layouts[k].vd ? layouts[k].vd : 16);
        ASSERT_EQ(cc->bias, layouts[k].bias);
        mha_module *d = NULL;
        ASSERT_EQ(mha_module_create_from_file(ctx, path, NULL, 3, &d), MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "num_heads: got 3");
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "embed_dim = 16");
        ASSERT_TRUE(d == NULL);
        ASSERT_EQ(mha_module_create_from_file(ctx, path, NULL, -1, &d), MHA_ERR_INVALID_ARG);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "num_heads: got -1");
        unlink(path);
        mha_module_free(a);
        mha_module_free(b);
        mha_module_free(c);
    }
    mha_ctx_free(ctx);
}

/* Writes the parameters of m into a safetensors file, with one tensor changed:
 * mode 0: skip `name`; 1: `name` with its last dim halved; 2: `name` as I64 (no parameter
 * dtype: float64, float16 and bfloat16 are converted); 3: an extra tensor. */
static mha_status write_variant(mha_ctx *ctx, mha_module *m, const char *name, int mode,
                                const char *path) {
    mha_st *st;
    mha_status s = mha_st_create(ctx, &st);
    if (s) return s;
    for (int i = 0; i < mha_module_param_count(m) && !s; i++) {
        const char *pn = mha_module_param_name(m, i);
        mha_tensor v;
        mha_module_param(ctx, m, pn, &v, NULL);
        mha_array a;
        memset(&a, 0, sizeof a);
        a.dtype = MHA_DTYPE_F32;
        a.ndim = v.ndim;
        for (int d = 0; d < v.ndim; d++) a.shape[d] = v.shape[d];
        a.data = v.data;
        int64_t *tmp = NULL;
        if (!strcmp(pn, name)) {
            if (mode == 0) continue;
            if (mode == 1) a.shape[a.ndim - 1] /= 2;
            if (mode == 2) {
                int64_t n = mha_tensor_numel(&v);
                tmp = calloc((size_t)n, sizeof *tmp);
                for (int64_t k = 0; k < n; k++) tmp[k] = (int64_t)v.data[k];
                a.dtype = MHA_DTYPE_I64;
                a.data = tmp;
            }
        }
        s = mha_st_set(ctx, st, pn, &a);
        free(tmp);
    }
    if (!s && mode == 3) {
        float junk[3] = {1, 2, 3};
        mha_array a;
        memset(&a, 0, sizeof a);
        a.dtype = MHA_DTYPE_F32;
        a.ndim = 1;
        a.shape[0] = 3;
        a.data = junk;
        s = mha_st_set(ctx, st, "encoder.layer.0.norm.weight", &a);
    }
    if (!s) s = mha_st_save(ctx, st, path);
    mha_st_free(st);
    return s;
}

TEST(load_errors_leave_module_unchanged) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (int layout = 0; layout < 2; layout++) {
        mha_config cfg = mha_config_default(32, 4);
        if (layout) cfg.kdim = 8;
        cfg.seed = 1;
        mha_module *src, *dst, *snap;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &src));
        nonzero_biases(src);
        cfg.seed = 2;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &dst));
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &snap));
        const char *path = tmpfile_path("bad");
        const char *wname = layout ? "k_proj_weight" : "in_proj_weight";
        const char *names[] = {wname, "in_proj_bias", "out_proj.weight", "out_proj.bias"};
        char snap_path[300];
        snprintf(snap_path, sizeof snap_path, "%s.snap", path);
        ASSERT_OK(ctx, mha_module_save(ctx, snap, snap_path));
        for (int n = 0; n < 4; n++) {
            /* The first tensors load fine; a later bad one must not leave them loaded. */
            ASSERT_OK(ctx, write_variant(ctx, src, names[n], 0, path));
            if (n == 1 || n == 3) { /* one bias without the other: zeros (mha_st_layer) */
                ASSERT_OK(ctx, mha_module_load(ctx, dst, path, NULL));
                mha_tensor t;
                ASSERT_OK(ctx, mha_module_param(ctx, dst, names[n], &t, NULL));
                for (int64_t i = 0; i < mha_tensor_numel(&t); i++) ASSERT_TRUE(t.data[i] == 0.0f);
                ASSERT_OK(ctx, mha_module_load(ctx, dst, snap_path, NULL));
            } else {
                ASSERT_EQ(mha_module_load(ctx, dst, path, NULL), MHA_ERR_NOT_FOUND);
                ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), names[n]);
                /* without the anchor (in_proj_weight) there is no layer at all */
                ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx),
                                    n == 0 && !layout ? "no attention layer found" : "missing");
            }
            ASSERT_TRUE(same_params(dst, snap));
            ASSERT_OK(ctx, write_variant(ctx, src, names[n], 1, path));
            ASSERT_EQ(mha_module_load(ctx, dst, path, NULL), MHA_ERR_SHAPE);
            ASSERT_TRUE(same_params(dst, snap));
            ASSERT_OK(ctx, write_variant(ctx, src, names[n], 2, path));
            ASSERT_EQ(mha_module_load(ctx, dst, path, NULL), MHA_ERR_UNSUPPORTED);
            ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "dtype: got int64, expected float32");
            ASSERT_TRUE(same_params(dst, snap));
        }
        ASSERT_OK(ctx, write_variant(ctx, src, wname, 1, path));
        ASSERT_EQ(mha_module_load(ctx, dst, path, NULL), MHA_ERR_SHAPE);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), layout
                                                     ? "mha_module_load: k_proj_weight.shape[1]: "
                                                       "got 4, expected 8"
                                                     : "mha_module_load: in_proj_weight.shape: "
                                                       "got [96, 16], expected [3E, E]");
        /* Unknown tensors are ignored. */
        ASSERT_OK(ctx, write_variant(ctx, src, "", 3, path));
        ASSERT_OK(ctx, mha_module_load(ctx, dst, path, NULL));
        ASSERT_TRUE(same_params(dst, src));
        /* A file that is not a state_dict of this layout. */
        ASSERT_OK(ctx, write_variant(ctx, src, wname, 0, path));
        mha_module *c = NULL;
        ASSERT_TRUE(mha_module_create_from_file(ctx, path, NULL, 4, &c) != MHA_OK);
        ASSERT_TRUE(c == NULL);
        unlink(path);
        ASSERT_TRUE(mha_module_load(ctx, dst, path, NULL) != MHA_OK); /* no such file */
        unlink(snap_path);
        ASSERT_TRUE(same_params(dst, src));
        ASSERT_EQ(mha_module_load(ctx, NULL, path, NULL), MHA_ERR_INVALID_ARG);
        ASSERT_EQ(mha_module_load(ctx, dst, NULL, NULL), MHA_ERR_INVALID_ARG);
        ASSERT_EQ(mha_module_save(ctx, NULL, path), MHA_ERR_INVALID_ARG);
        ASSERT_EQ(mha_module_save(ctx, dst, NULL), MHA_ERR_INVALID_ARG);
        ASSERT_EQ(mha_module_create_from_file(ctx, NULL, NULL, 4, &c), MHA_ERR_INVALID_ARG);
        ASSERT_EQ(mha_module_create_from_file(ctx, path, NULL, 4, NULL), MHA_ERR_INVALID_ARG);
        mha_module_free(src);
        mha_module_free(dst);
        mha_module_free(snap);
    }
    mha_ctx_free(ctx);
}

/* add_bias_kv=True layers (bias_k, bias_v in the state_dict) are refused, not loaded without
 * them; a file with only one of the two biases is bias=True with zeros for the other (the
 * same layer numerically), never "bias=False". */
TEST(load_refuses_bias_kv_and_half_biases) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(16, 4);
    cfg.seed = 3;
    mha_module *src, *dst, *snap, *c = NULL;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &src));
    nonzero_biases(src);
    cfg.seed = 4;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &dst));
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &snap));
    const char *path = tmpfile_path("biaskv");
    float kv[16] = {0};
    mha_array extra;
    memset(&extra, 0, sizeof extra);
    extra.dtype = MHA_DTYPE_F32;
    extra.ndim = 3;
    extra.shape[0] = 1;
    extra.shape[1] = 1;
    extra.shape[2] = 16;
    extra.data = kv;
    const char *names[] = {"bias_k", "bias_v"};
    for (int n = 0; n < 2; n++) {
        ASSERT_OK(ctx, mha_module_save(ctx, src, path));
        mha_st *st;
        ASSERT_OK(ctx, mha_st_load(ctx, path, &st));
        ASSERT_OK(ctx, mha_st_set(ctx, st, names[n], &extra));
        ASSERT_OK(ctx, mha_st_save(ctx, st, path));
        mha_st_free(st);
        ASSERT_EQ(mha_module_load(ctx, dst, path, NULL), MHA_ERR_UNSUPPORTED);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), names[n]);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "add_bias_kv=True");
        ASSERT_TRUE(same_params(dst, snap));
        ASSERT_EQ(mha_module_create_from_file(ctx, path, NULL, 4, &c), MHA_ERR_UNSUPPORTED);
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "add_bias_kv=True");
        ASSERT_TRUE(c == NULL);
    }
    /* out_proj.bias without in_proj_bias (and the reverse): zeros, never bias=False. */
    const char *biases[] = {"in_proj_bias", "out_proj.bias"};
    for (int n = 0; n < 2; n++) {
        mha_st *full, *st;
        ASSERT_OK(ctx, mha_module_save(ctx, src, path));
        ASSERT_OK(ctx, mha_st_load(ctx, path, &full));
        ASSERT_OK(ctx, mha_st_create(ctx, &st));
        for (int i = 0; i < mha_st_count(full); i++)
            if (strcmp(mha_st_name(full, i), biases[n]))
                ASSERT_OK(ctx, mha_st_set(ctx, st, mha_st_name(full, i),
                                          mha_st_find(full, mha_st_name(full, i))));
        ASSERT_OK(ctx, mha_st_save(ctx, st, path));
        mha_st_free(st);
        mha_st_free(full);
        ASSERT_OK(ctx, mha_module_create_from_file(ctx, path, NULL, 4, &c));
        ASSERT_EQ(mha_module_config(c)->bias, 1);
        mha_tensor got, want;
        ASSERT_OK(ctx, mha_module_param(ctx, c, biases[n], &got, NULL));
        for (int64_t i = 0; i < mha_tensor_numel(&got); i++) ASSERT_TRUE(got.data[i] == 0.0f);
        ASSERT_OK(ctx, mha_module_param(ctx, c, biases[1 - n], &got, NULL));
        ASSERT_OK(ctx, mha_module_param(ctx, src, biases[1 - n], &want, NULL));
        ASSERT_TRUE(!memcmp(got.data, want.data, sizeof(float) * (size_t)mha_tensor_numel(&got)));
        mha_module_free(c);
        c = NULL;
    }
    unlink(path);
    mha_module_free(src);
    mha_module_free(dst);
    mha_module_free(snap);
    mha_ctx_free(ctx);
}

#define EXPECT_ERR(expr, status, text)                                                             \
    do {                                                                                           \
        mha_status st__ = (expr);                                                                  \
        if (st__ != (status)) {                                                                    \
            FAILF("%s: got %s, expected %s (%s)", #expr, mha_status_str(st__),                     \
                  mha_status_str(status), mha_ctx_errmsg(ctx));                                    \
            return;                                                                                \
        }                                                                                          \
        ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), text);                                            \
    } while (0)

TEST(create_validation) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_module *m = (mha_module *)&m;
    mha_config c = mha_config_default(16, 4);
    ASSERT_EQ(c.bias, 1);
    ASSERT_EQ(c.kdim, 0);
    EXPECT_ERR(mha_module_create(ctx, NULL, &m), MHA_ERR_INVALID_ARG, "cfg: got NULL");
    ASSERT_TRUE(m == NULL);
    EXPECT_ERR(mha_module_create(ctx, &c, NULL), MHA_ERR_INVALID_ARG, "out: got NULL");
    c.embed_dim = 0;
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_INVALID_ARG, "cfg->embed_dim: got 0");
    c = mha_config_default(16, 0);
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_INVALID_ARG, "cfg->num_heads: got 0");
    c = mha_config_default(16, 3);
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_INVALID_ARG,
               "mha_module_create: cfg->embed_dim: got 16, expected a multiple of num_heads = 3");
    c = mha_config_default(16, 4);
    c.kdim = -1;
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_INVALID_ARG, "cfg->kdim: got -1");
    c.kdim = 0, c.vdim = -2;
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_INVALID_ARG, "cfg->vdim: got -2");
    c.vdim = 0, c.dropout = 1.5f;
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_INVALID_ARG,
               "cfg->dropout: got 1.5, expected a value in [0, 1]");
    c.dropout = NAN;
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_INVALID_ARG, "cfg->dropout");
    c.dropout = -0.1f;
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_INVALID_ARG, "cfg->dropout");
    c = mha_config_default(INT64_MAX / 2, 1);
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_NOMEM, "overflows");
    c = mha_config_default(1 << 20, 1);
    c.kdim = INT64_MAX / 8;
    EXPECT_ERR(mha_module_create(ctx, &c, &m), MHA_ERR_NOMEM, "overflows");
    /* NULL context: the message goes to the thread-local buffer. */
    c = mha_config_default(16, 5);
    ASSERT_EQ(mha_module_create(NULL, &c, &m), MHA_ERR_INVALID_ARG);
    ASSERT_STR_CONTAINS(mha_last_errmsg(), "num_heads = 5");
    mha_ctx_free(ctx);
}

TEST(forward_backward_validation) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(8, 2);
    cfg.kdim = 6; /* separate layout: self-attention impossible */
    mha_module *m, *ms;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    cfg.kdim = 0;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &ms));
    static float buf[4096];
    int64_t B = 2, L = 3, S = 4;
    int64_t sq[3] = {B, L, 8}, sk[3] = {B, S, 6}, sv[3] = {B, S, 8}, sw[3] = {B, L, S},
            swh[4] = {B, 2, L, S};
    mha_tensor q = mha_tensor_make(buf, 3, sq), k = mha_tensor_make(buf, 3, sk),
               v = mha_tensor_make(buf, 3, sv), y = mha_tensor_make(buf + 1024, 3, sq),
               w = mha_tensor_make(buf + 2048, 3, sw), wh = mha_tensor_make(buf + 2048, 4, swh);
    mha_forward_opts fo = mha_forward_opts_default();
    ASSERT_EQ(fo.average_weights, 1);
    ASSERT_EQ(fo.save_for_backward, 1);
    ASSERT_EQ(fo.training, 0);
    /* Backward before any forward. */
    EXPECT_ERR(mha_module_backward(ctx, m, &y, NULL, NULL, NULL), MHA_ERR_STATE,
               "mha_module_backward: no saved forward");
    EXPECT_ERR(mha_module_forward(ctx, NULL, &fo, &q, &k, &v, NULL, &y, NULL), MHA_ERR_INVALID_ARG,
               "mha_module_forward: m: got NULL");
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, NULL, &k, &v, NULL, &y, NULL), MHA_ERR_INVALID_ARG,
               "query: got NULL");
    mha_tensor bad = q;
    bad.ndim = 4;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &bad, &k, &v, NULL, &y, NULL), MHA_ERR_SHAPE,
               "query.ndim: got 4");
    bad = q;
    bad.shape[2] = 7;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &bad, &k, &v, NULL, &y, NULL), MHA_ERR_SHAPE,
               "mha_module_forward: query.shape[2]: got 7, expected 8");
    bad = q;
    bad.stride[2] = 2;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &bad, &k, &v, NULL, &y, NULL), MHA_ERR_SHAPE,
               "query.stride[2]: got 2, expected 1");
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, NULL, NULL, &y, NULL), MHA_ERR_INVALID_ARG,
               "value: got NULL while key is given");
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, NULL, &v, NULL, &y, NULL), MHA_ERR_INVALID_ARG,
               "key: got NULL while value is given");
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, NULL, NULL, NULL, &y, NULL), MHA_ERR_INVALID_ARG,
               "kdim = 6");
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &v, &v, NULL, &y, NULL), MHA_ERR_SHAPE,
               "key.shape[2]: got 8, expected 6");
    bad = k;
    bad.shape[0] = 3;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &bad, &v, NULL, &y, NULL), MHA_ERR_SHAPE,
               "key.shape[0]: got 3, expected 2");
    bad = v;
    bad.shape[1] = 5;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &bad, NULL, &y, NULL), MHA_ERR_SHAPE,
               "value.shape[1]: got 5, expected 4");
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &k, NULL, &y, NULL), MHA_ERR_SHAPE,
               "value.shape[2]: got 6, expected 8");
    int64_t s2[2] = {S, 6};
    bad = mha_tensor_make(buf, 2, s2);
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &bad, &v, NULL, &y, NULL), MHA_ERR_SHAPE,
               "key.ndim: got 2, expected 3");
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, NULL, NULL, NULL), MHA_ERR_INVALID_ARG,
               "out: got NULL");
    bad = y;
    bad.shape[1] = 4;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, NULL, &bad, NULL), MHA_ERR_SHAPE,
               "out.shape[1]: got 4, expected 3");
    bad = y;
    bad.data = NULL;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, NULL, &bad, NULL), MHA_ERR_INVALID_ARG,
               "out.data: got NULL");
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, NULL, &y, &wh), MHA_ERR_SHAPE,
               "weights.ndim: got 4, expected 3");
    bad = w;
    bad.shape[2] = 3;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, NULL, &y, &bad), MHA_ERR_SHAPE,
               "weights.shape[2]: got 3, expected 4");
    fo.average_weights = 0;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, NULL, &y, &w), MHA_ERR_SHAPE,
               "weights.ndim: got 3, expected 4");
    bad = wh;
    bad.shape[1] = 1;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, NULL, &y, &bad), MHA_ERR_SHAPE,
               "weights.shape[1]: got 1, expected 2");
    fo.average_weights = 1;
    fo.scale = INFINITY;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, NULL, &y, NULL), MHA_ERR_INVALID_ARG,
               "opts->scale: got inf");
    fo.scale = 0;
    mha_mask mk = mha_mask_default();
    mk.causal = (mha_causal)7;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, &mk, &y, NULL), MHA_ERR_INVALID_ARG,
               "mask->causal: got 7");
    mk = mha_mask_default();
    mk.attn_batched = 2;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, &mk, &y, NULL), MHA_ERR_INVALID_ARG,
               "mask->attn_batched: got 2");
    int32_t lens[2] = {4, 5};
    mk = mha_mask_default();
    mk.key_lengths = lens;
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q, &k, &v, &mk, &y, NULL), MHA_ERR_INVALID_ARG,
               "mha_module_forward: mask->key_lengths[1]: got 5, expected a value in [0, 4]");
    /* Unbatched query with batched key. */
    int64_t s2q[2] = {L, 8};
    mha_tensor q2 = mha_tensor_make(buf, 2, s2q), y2 = mha_tensor_make(buf + 1024, 2, s2q);
    EXPECT_ERR(mha_module_forward(ctx, m, &fo, &q2, &k, &v, NULL, &y2, NULL), MHA_ERR_SHAPE,
               "key.ndim: got 3, expected 2");
    EXPECT_ERR(mha_module_forward(ctx, ms, &fo, &q2, NULL, NULL, NULL, &y, NULL), MHA_ERR_SHAPE,
               "out.ndim: got 3, expected 2");

    /* Backward checks against the saved forward. */
    ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &q, &k, &v, NULL, &y, NULL));
    EXPECT_ERR(mha_module_backward(ctx, NULL, &y, NULL, NULL, NULL), MHA_ERR_INVALID_ARG,
               "m: got NULL");
    EXPECT_ERR(mha_module_backward(ctx, m, NULL, NULL, NULL, NULL), MHA_ERR_INVALID_ARG,
               "dout: got NULL");
    bad = y;
    bad.shape[1] = 2;
    EXPECT_ERR(mha_module_backward(ctx, m, &bad, NULL, NULL, NULL), MHA_ERR_SHAPE,
               "mha_module_backward: dout.shape[1]: got 2, expected 3");
    EXPECT_ERR(mha_module_backward(ctx, m, &y2, NULL, NULL, NULL), MHA_ERR_SHAPE,
               "dout.ndim: got 2, expected 3");
    bad = y;
    bad.stride[2] = 3;
    EXPECT_ERR(mha_module_backward(ctx, m, &bad, NULL, NULL, NULL), MHA_ERR_SHAPE,
               "dout.stride[2]");
    float gq[48], gk[48], gv[64];
    mha_tensor tgq = mha_tensor_make(gq, 3, sq), tgk = mha_tensor_make(gk, 3, sk),
               tgv = mha_tensor_make(gv, 3, sv);
    EXPECT_ERR(mha_module_backward(ctx, m, &y, &tgk, NULL, NULL), MHA_ERR_SHAPE,
               "dquery.shape[1]: got 4, expected 3");
    EXPECT_ERR(mha_module_backward(ctx, m, &y, &tgq, &tgv, NULL), MHA_ERR_SHAPE,
               "dkey.shape[2]: got 8, expected 6");
    EXPECT_ERR(mha_module_backward(ctx, m, &y, &tgq, &tgk, &tgk), MHA_ERR_SHAPE,
               "dvalue.shape[2]: got 6, expected 8");
    ASSERT_OK(ctx, mha_module_backward(ctx, m, &y, &tgq, &tgk, &tgv));
    ASSERT_OK(ctx, mha_module_backward(ctx, m, &y, NULL, NULL, NULL)); /* all optional */
    /* Self-attention: dkey / dvalue must be NULL. */
    ASSERT_OK(ctx, mha_module_forward(ctx, ms, &fo, &q, NULL, NULL, NULL, &y, NULL));
    EXPECT_ERR(mha_module_backward(ctx, ms, &y, &tgq, &tgq, NULL), MHA_ERR_INVALID_ARG,
               "dkey: got a tensor, expected NULL");
    EXPECT_ERR(mha_module_backward(ctx, ms, &y, &tgq, NULL, &tgq), MHA_ERR_INVALID_ARG,
               "dvalue: got a tensor, expected NULL");
    /* A forward without save_for_backward drops the saved state. */
    fo.save_for_backward = 0;
    ASSERT_OK(ctx, mha_module_forward(ctx, ms, &fo, &q, NULL, NULL, NULL, &y, NULL));
    EXPECT_ERR(mha_module_backward(ctx, ms, &y, &tgq, NULL, NULL), MHA_ERR_STATE,
               "no saved forward");
    /* Empty shapes are fine. */
    int64_t s0[3] = {0, 3, 8};
    mha_tensor q0 = mha_tensor_make(buf, 3, s0), y0 = mha_tensor_make(buf + 1024, 3, s0);
    fo.save_for_backward = 1;
    ASSERT_OK(ctx, mha_module_forward(ctx, ms, &fo, &q0, NULL, NULL, NULL, &y0, NULL));
    ASSERT_OK(ctx, mha_module_backward(ctx, ms, &y0, &y0, NULL, NULL));
    mha_module_free(m);
    mha_module_free(ms);
    mha_ctx_free(ctx);
}

/* Bad ALiBi slopes (not finite, or alibi_batched neither 0 nor 1) are refused by the forward's
 * checks, naming mha_module_forward, before anything changes: out is not written and the
 * previous forward's saved state is kept (its backward gives the same gradients). */
TEST(bad_alibi_refused_before_anything_changes) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(8, 2);
    mha_module *m;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    float x[48], y[48], y2[48], dy[48], dx1[48], dx2[48];
    for (int i = 0; i < 48; i++) x[i] = (float)sin(i), dy[i] = (float)cos(3 * i);
    int64_t sx[3] = {2, 3, 8};
    mha_tensor tx = mha_tensor_make(x, 3, sx), ty = mha_tensor_make(y, 3, sx);
    mha_tensor ty2 = mha_tensor_make(y2, 3, sx), tdy = mha_tensor_make(dy, 3, sx);
    mha_tensor tdx1 = mha_tensor_make(dx1, 3, sx), tdx2 = mha_tensor_make(dx2, 3, sx);
    ASSERT_OK(ctx, mha_module_forward(ctx, m, NULL, &tx, NULL, NULL, NULL, &ty, NULL));
    ASSERT_OK(ctx, mha_module_backward(ctx, m, &tdy, &tdx1, NULL, NULL));
    float nan_slopes[2] = {0.5f, NAN}, slopes[4] = {0.5f, 0.25f, 0.5f, 0.25f};
    for (int k = 0; k < 3; k++) {
        mha_mask mk = mha_mask_default();
        const char *want;
        if (k == 0) {
            mk.alibi_slopes = nan_slopes;
            want = "mha_module_forward: mask->alibi_slopes[1]: got nan, expected a finite slope";
        } else if (k == 1) {
            mk.alibi_slopes = slopes, mk.alibi_batched = 5;
            want = "mha_module_forward: mask->alibi_batched: got 5, expected 0";
        } else {
            slopes[3] = INFINITY, mk.alibi_slopes = slopes, mk.alibi_batched = 1;
            want = "mha_module_forward: mask->alibi_slopes[3]: got inf";
        }
        for (int i = 0; i < 48; i++) y2[i] = 7.0f;
        EXPECT_ERR(mha_module_forward(ctx, m, NULL, &tx, NULL, NULL, &mk, &ty2, NULL),
                   MHA_ERR_INVALID_ARG, want);
        for (int i = 0; i < 48; i++) ASSERT_TRUE(y2[i] == 7.0f);
        /* the first forward is still the one to differentiate */
        ASSERT_OK(ctx, mha_module_backward(ctx, m, &tdy, &tdx2, NULL, NULL));
        ASSERT_TRUE(memcmp(dx1, dx2, sizeof dx1) == 0);
    }
    mha_module_free(m);
    mha_ctx_free(ctx);
}

/* The inputs may be freed (here: overwritten) after the forward: the backward uses copies. */
TEST(backward_uses_saved_copies) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_config cfg = mha_config_default(8, 2);
    cfg.kdim = 5;
    mha_module *a, *b;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &a));
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &b));
    float q[2 * 3 * 8], k[2 * 4 * 5], v[2 * 4 * 8], y[48], dq1[48], dq2[48], dk1[40], dk2[40];
    uint8_t pad[8] = {0, 1, 0, 0, 0, 0, 1, 0};
    for (int i = 0; i < 48; i++) q[i] = (float)sin(i);
    for (int i = 0; i < 40; i++) k[i] = (float)cos(i);
    for (int i = 0; i < 64; i++) v[i] = (float)sin(2 * i);
    int64_t sq[3] = {2, 3, 8}, sk[3] = {2, 4, 5}, sv[3] = {2, 4, 8};
    mha_tensor tq = mha_tensor_make(q, 3, sq), tk = mha_tensor_make(k, 3, sk),
               tv = mha_tensor_make(v, 3, sv), ty = mha_tensor_make(y, 3, sq),
               tdq1 = mha_tensor_make(dq1, 3, sq), tdq2 = mha_tensor_make(dq2, 3, sq),
               tdk1 = mha_tensor_make(dk1, 3, sk), tdk2 = mha_tensor_make(dk2, 3, sk);
    float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f}; /* [B, H] ALiBi slopes */
    mha_mask mk = mha_mask_default();
    mk.key_padding = pad;
    mk.alibi_slopes = slopes, mk.alibi_batched = 1;
    mk.window = 1, mk.window_left = 2, mk.window_right = 1;
    float dy[48];
    for (int i = 0; i < 48; i++) dy[i] = (float)cos(3 * i);
    mha_tensor tdy = mha_tensor_make(dy, 3, sq);
    ASSERT_OK(ctx, mha_module_forward(ctx, a, NULL, &tq, &tk, &tv, &mk, &ty, NULL));
    ASSERT_OK(ctx, mha_module_backward(ctx, a, &tdy, &tdq1, &tdk1, NULL));
    ASSERT_OK(ctx, mha_module_forward(ctx, b, NULL, &tq, &tk, &tv, &mk, &ty, NULL));
    memset(q, 0, sizeof q), memset(k, 0, sizeof k), memset(v, 0, sizeof v);
    memset(pad, 1, sizeof pad);
    memset(slopes, 0, sizeof slopes);
    mk.window_left = 0; /* the window is a value: the module keeps its own copy of mk */
    ASSERT_OK(ctx, mha_module_backward(ctx, b, &tdy, &tdq2, &tdk2, NULL));
    ASSERT_TRUE(memcmp(dq1, dq2, sizeof dq1) == 0);
    ASSERT_TRUE(memcmp(dk1, dk2, sizeof dk1) == 0);
    mha_module_free(a);
    mha_module_free(b);
    mha_ctx_free(ctx);
}

/* Every allocation of create, forward and backward fails in turn: NOMEM, cleanly. */
TEST(allocation_failures_are_clean) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    for (int variant = 0; variant < 2; variant++) {
        mha_config cfg = mha_config_default(8, 2);
        if (variant) cfg.kdim = 4, cfg.vdim = 6, cfg.dropout = 0.2f;
        mha_module *m = NULL;
        long n;
        mha_status st = MHA_ERR_NOMEM;
        for (n = 0; n < 1000; n++) {
            mha__fault_after(n);
            st = mha_module_create(ctx, &cfg, &m);
            mha__fault_after(-1);
            if (st == MHA_OK) break;
            ASSERT_EQ(st, MHA_ERR_NOMEM);
            ASSERT_TRUE(m == NULL);
            ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), "mha_module_create");
        }
        ASSERT_EQ(st, MHA_OK);
        ASSERT_TRUE(n > 2);
        float q[2 * 3 * 8], k[2 * 5 * 4], v[2 * 5 * 6], y[48], w[2 * 3 * 5], dq[48], dk[40], dv[60];
        uint8_t ab[15] = {0};
        float af[15] = {0};
        int32_t lens[2] = {2, 1};
        uint8_t pad[10] = {0};
        for (int i = 0; i < 48; i++) q[i] = (float)sin(i);
        for (int i = 0; i < 40; i++) k[i] = (float)cos(i);
        for (int i = 0; i < 60; i++) v[i] = (float)sin(2 * i);
        int64_t S = variant ? 5 : 3;
        int64_t sq[3] = {2, 3, 8}, sk[3] = {2, S, 4}, sv[3] = {2, S, 6}, sw[3] = {2, 3, S};
        mha_tensor tq = mha_tensor_make(q, 3, sq), tk = mha_tensor_make(k, 3, sk),
                   tv = mha_tensor_make(v, 3, sv), ty = mha_tensor_make(y, 3, sq),
                   tw = mha_tensor_make(w, 3, sw), tdq = mha_tensor_make(dq, 3, sq),
                   tdk = mha_tensor_make(dk, 3, sk), tdv = mha_tensor_make(dv, 3, sv);
        mha_mask mk = mha_mask_default();
        mk.attn_bool = ab, mk.attn_float = af, mk.key_lengths = lens, mk.key_padding = pad;
        mha_forward_opts fo = mha_forward_opts_default();
        fo.training = 1;
        for (n = 0; n < 1000; n++) {
            for (int i = 0; i < 48; i++) y[i] = 7.0f;
            for (int i = 0; i < 2 * 3 * 5; i++) w[i] = 7.0f;
            mha__fault_after(n);
            st = mha_module_forward(ctx, m, &fo, &tq, variant ? &tk : NULL, variant ? &tv : NULL,
                                    &mk, &ty, &tw);
            mha__fault_after(-1);
            if (st == MHA_OK) break;
            if (st != MHA_ERR_NOMEM) FAILF("n = %ld: %s", n, mha_ctx_errmsg(ctx));
            ASSERT_EQ(st, MHA_ERR_NOMEM);
            /* every message names the call (the products' too, not an internal function) */
            if (strncmp(mha_ctx_errmsg(ctx), "mha_module_forward: ", 20) != 0)
                FAILF("n = %ld: %s", n, mha_ctx_errmsg(ctx));
            /* ... nor writes out or the weights */
            for (int i = 0; i < 48; i++)
                if (y[i] != 7.0f || (i < 2 * 3 * S && w[i] != 7.0f)) {
                    FAILF("variant %d, allocation %ld failed: out or weights written", variant, n);
                    return;
                }
            /* A failed forward neither saves state nor advances the dropout stream. */
            ASSERT_TRUE(m->saved == NULL);
            ASSERT_EQ(m->dropout_offset, 0);
        }
        ASSERT_EQ(st, MHA_OK);
        /* Each failed once: the kept workspace, the scratch (averaged weights), the packing
         * workspace, the core's workspace. */
        ASSERT_TRUE(n >= 4);
        ASSERT_EQ(m->dropout_offset, variant ? 1 : 0);
        /* The gradients of a failed backward are left as they were (here: zero), and so are
         * dquery, dkey, dvalue. */
        for (n = 0; n < 1000; n++) {
            for (int i = 0; i < 48; i++) dq[i] = 7.0f;
            for (int i = 0; i < 40; i++) dk[i] = 7.0f;
            for (int i = 0; i < 60; i++) dv[i] = 7.0f;
            mha__fault_after(n);
            st = mha_module_backward(ctx, m, &ty, &tdq, variant ? &tdk : NULL,
                                     variant ? &tdv : NULL);
            mha__fault_after(-1);
            if (st == MHA_OK) break;
            ASSERT_EQ(st, MHA_ERR_NOMEM);
            if (strncmp(mha_ctx_errmsg(ctx), "mha_module_backward: ", 21) != 0)
                FAILF("n = %ld: %s", n, mha_ctx_errmsg(ctx));
            for (int i = 0; i < 60; i++)
                if ((i < 48 && dq[i] != 7.0f) || (i < 40 && dk[i] != 7.0f) || dv[i] != 7.0f) {
                    FAILF("variant %d, allocation %ld failed: an input gradient written", variant,
                          n);
                    return;
                }
            for (int i = 0; i < mha_module_param_count(m); i++) {
                mha_tensor g;
                mha_module_param(ctx, m, mha_module_param_name(m, i), NULL, &g);
                for (int64_t e = 0; e < mha_tensor_numel(&g); e++) ASSERT_TRUE(g.data[e] == 0.0f);
            }
        }
        ASSERT_EQ(st, MHA_OK);
        ASSERT_TRUE(n > 3);
        /* Save and load under allocation failure. */
        const char *path = tmpfile_path("fault");
        for (n = 0; n < 1000; n++) {
            mha__fault_after(n);
            st = mha_module_save(ctx, m, path);
            mha__fault_after(-1);
            if (st == MHA_OK) break;
            ASSERT_EQ(st, MHA_ERR_NOMEM);
        }
        ASSERT_EQ(st, MHA_OK);
        for (n = 0; n < 1000; n++) {
            mha_module *c = NULL;
            mha__fault_after(n);
            st = mha_module_create_from_file(ctx, path, NULL, 2, &c);
            mha__fault_after(-1);
            if (st == MHA_OK) {
                ASSERT_TRUE(same_params(m, c));
                mha_module_free(c);
                break;
            }
            ASSERT_EQ(st, MHA_ERR_NOMEM);
            ASSERT_TRUE(c == NULL);
        }
        ASSERT_EQ(st, MHA_OK);
        unlink(path);
        mha_module_free(m);
    }
    mha_ctx_free(ctx);
}

/* Fixed inputs for run_fb. */
static void fill_fixed(float *a, int64_t n, double f, double ph) {
    for (int64_t i = 0; i < n; i++) a[i] = (float)cos((double)i * f + ph);
}

/* Forward (and, when dq, backward) of a module on fixed data of shape B, L, S; self: key =
 * value = NULL. y [B*L*E], dq [B*L*E], dk [B*S*kdim], dv [B*S*vdim] (dk, dv cross only);
 * alias: dout lives in dq's memory (which the backward refuses). */
static mha_status run_fb(mha_ctx *ctx, mha_module *m, int self, int64_t B, int64_t L, int64_t S,
                         int save, float *y, float *dq, float *dk, float *dv, int alias) {
    const mha_config *c = mha_module_config(m);
    int64_t E = c->embed_dim, kd = c->kdim ? c->kdim : E, vd = c->vdim ? c->vdim : E;
    float *x = malloc(sizeof(float) * (size_t)(B * L * E + 1));
    float *k = malloc(sizeof(float) * (size_t)(B * S * kd + 1));
    float *v = malloc(sizeof(float) * (size_t)(B * S * vd + 1));
    float *dy = alias ? dq : malloc(sizeof(float) * (size_t)(B * L * E + 1));
    fill_fixed(x, B * L * E, 0.37, 0.0);
    fill_fixed(k, B * S * kd, 0.21, 0.5);
    fill_fixed(v, B * S * vd, 0.13, 1.0);
    fill_fixed(dy, B * L * E, 0.29, 2.0);
    int64_t sq[3] = {B, L, E}, sk[3] = {B, S, kd}, sv[3] = {B, S, vd};
    mha_tensor tx = mha_tensor_make(x, 3, sq), tk = mha_tensor_make(k, 3, sk),
               tv = mha_tensor_make(v, 3, sv), ty = mha_tensor_make(y, 3, sq),
               tdy = mha_tensor_make(dy, 3, sq), tdq = mha_tensor_make(dq, 3, sq),
               tdk = mha_tensor_make(dk, 3, sk), tdv = mha_tensor_make(dv, 3, sv);
    uint8_t *pad = calloc((size_t)(B * S + 1), 1);
    for (int64_t i = 0; i < B * S; i += 3) pad[i] = 1; /* key 0 of batch 0 ignored, ... */
    mha_mask mk = mha_mask_default();
    mk.key_padding = pad;
    mha_forward_opts fo = mha_forward_opts_default();
    fo.save_for_backward = save;
    mha_status st =
        mha_module_forward(ctx, m, &fo, &tx, self ? NULL : &tk, self ? NULL : &tv, &mk, &ty, NULL);
    /* The copies are what the backward uses: spoil the inputs first. */
    memset(x, 0, sizeof(float) * (size_t)(B * L * E));
    memset(pad, 1, (size_t)(B * S));
    if (st == MHA_OK && dq)
        st = mha_module_backward(ctx, m, &tdy, &tdq, self ? NULL : &tdk, self ? NULL : &tdv);
    free(x), free(k), free(v), free(pad);
    if (!alias) free(dy);
    return st;
}

/* Every parameter gradient of a and b bitwise equal. */
static int same_grads(mha_ctx *ctx, mha_module *a, mha_module *b) {
    for (int i = 0; i < mha_module_param_count(a); i++) {
        mha_tensor ga, gb;
        const char *name = mha_module_param_name(a, i);
        if (mha_module_param(ctx, a, name, NULL, &ga) || mha_module_param(ctx, b, name, NULL, &gb))
            return 0;
        if (memcmp(ga.data, gb.data, sizeof(float) * (size_t)mha_tensor_numel(&ga)) != 0) return 0;
    }
    return 1;
}

/* The module keeps its activations, temporaries and packing workspace between calls: a
 * module that has run other shapes before gives the same bits as a fresh one, allocates less
 * on a repeated shape, and its saved state is usable only after a complete forward with
 * save_for_backward (not after an inference forward, nor after a failed one). */
/* A backward whose input-gradient products need more packing workspace than anything before
 * them (dkey: [B*S, kdim] = dk Wk with kdim 4x E, K = E): an allocation failing at any point
 * leaves dquery, dkey and dvalue unchanged (the products' workspace is reserved before the
 * first writes). */
TEST(backward_allocation_failure_writes_no_input_gradient) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    enum {
        E = 256,
        KD = 1024,
        VD = 8,
        L = 3,
        S = 4
    };
    static float q[L * E], k[S * KD], v[S * VD], y[L * E], dq[L * E], dk[S * KD], dv[S * VD];
    for (int i = 0; i < L * E; i++) q[i] = (float)sin(i * 0.1);
    for (int i = 0; i < S * KD; i++) k[i] = (float)cos(i * 0.1);
    for (int i = 0; i < S * VD; i++) v[i] = (float)sin(i * 0.3);
    int64_t sq[3] = {1, L, E}, sk[3] = {1, S, KD}, sv[3] = {1, S, VD};
    mha_tensor tq = mha_tensor_make(q, 3, sq), tk = mha_tensor_make(k, 3, sk),
               tv = mha_tensor_make(v, 3, sv), ty = mha_tensor_make(y, 3, sq),
               tdq = mha_tensor_make(dq, 3, sq), tdk = mha_tensor_make(dk, 3, sk),
               tdv = mha_tensor_make(dv, 3, sv);
    mha_config cfg = mha_config_default(E, 2);
    cfg.kdim = KD, cfg.vdim = VD;
    mha_forward_opts fo = mha_forward_opts_default();
    mha_status st = MHA_ERR_NOMEM;
    long n;
    for (n = 0; n < 200 && st != MHA_OK; n++) {
        mha_module *m; /* a new module each time: its packing workspace as the forward left it */
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
        ASSERT_OK(ctx, mha_module_forward(ctx, m, &fo, &tq, &tk, &tv, NULL, &ty, NULL));
        for (int i = 0; i < L * E; i++) dq[i] = 7.0f;
        for (int i = 0; i < S * KD; i++) dk[i] = 7.0f;
        for (int i = 0; i < S * VD; i++) dv[i] = 7.0f;
        mha__fault_after(n);
        st = mha_module_backward(ctx, m, &ty, &tdq, &tdk, &tdv);
        mha__fault_after(-1);
        mha_module_free(m);
        if (st == MHA_OK) break;
        ASSERT_EQ(st, MHA_ERR_NOMEM);
        int64_t written = 0;
        for (int i = 0; i < L * E; i++) written += dq[i] != 7.0f;
        for (int i = 0; i < S * KD; i++) written += dk[i] != 7.0f;
        for (int i = 0; i < S * VD; i++) written += dv[i] != 7.0f;
        if (written) {
            FAILF("allocation %ld failed: %lld input gradient elements written", n,
                  (long long)written);
            break;
        }
    }
    ASSERT_EQ(st, MHA_OK);
    ASSERT_TRUE(n >= 3); /* the kept workspace, the core's, the packing workspace's growth */
    mha_ctx_free(ctx);
}

TEST(kept_buffers_reused_across_calls_and_shapes) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    ASSERT_OK(ctx, mha_ctx_set_threads(ctx, 2));
    enum {
        CAP = 3 * 40 * 16
    };
    static float y1[CAP], y2[CAP], q1[CAP], q2[CAP], k1[CAP], k2[CAP], v1[CAP], v2[CAP];
    static const int64_t shapes[][3] = {{2, 5, 7}, {2, 5, 7}, {3, 40, 33}, {1, 2, 3}, {2, 5, 7}};
    for (int self = 0; self < 2; self++) {
        mha_config cfg = mha_config_default(16, 4);
        if (!self) cfg.kdim = 12, cfg.vdim = 8;
        mha_module *m;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
        for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
            int64_t B = shapes[t][0], L = shapes[t][1], S = self ? L : shapes[t][2];
            size_t ny = sizeof(float) * (size_t)(B * L * 16);
            mha_module *f;
            ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &f));
            mha_module_zero_grad(m);
            void *kept[3] = {m->st.ws.p, m->bws.p, m->gws.p};
            long a0 = mha__alloc_count();
            ASSERT_OK(ctx, run_fb(ctx, m, self, B, L, S, 1, y1, q1, k1, v1, 0));
            long a1 = mha__alloc_count();
            ASSERT_OK(ctx, run_fb(ctx, f, self, B, L, S, 1, y2, q2, k2, v2, 0));
            long a2 = mha__alloc_count();
            ASSERT_TRUE(memcmp(y1, y2, ny) == 0);
            ASSERT_TRUE(memcmp(q1, q2, ny) == 0);
            if (!self) {
                ASSERT_TRUE(memcmp(k1, k2, sizeof(float) * (size_t)(B * S * 12)) == 0);
                ASSERT_TRUE(memcmp(v1, v2, sizeof(float) * (size_t)(B * S * 8)) == 0);
            }
            ASSERT_TRUE(same_grads(ctx, m, f));
            /* A repeated shape: the module's three kept workspaces (forward, backward,
             * packing) are reused where a fresh module allocates them. */
            if (t == 1) {
                ASSERT_TRUE(a1 - a0 + 3 <= a2 - a1);
                ASSERT_TRUE(kept[0] == m->st.ws.p && kept[1] == m->bws.p);
                ASSERT_TRUE(kept[2] == m->gws.p);
            }
            mha_module_free(f);
        }
        /* dout in dquery's memory: refused by the aliasing rule (mha.h), gradients untouched. */
        int64_t B = 2, L = 5, S = self ? 5 : 7;
        size_t ny = sizeof(float) * (size_t)(B * L * 16);
        mha_module *f;
        ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &f));
        ASSERT_OK(ctx, run_fb(ctx, f, self, B, L, S, 1, y1, q1, k1, v1, 0));
        mha_module_zero_grad(m);
        mha_module_zero_grad(f);
        EXPECT_ERR(run_fb(ctx, m, self, B, L, S, 1, y2, q2, k2, v2, 1), MHA_ERR_INVALID_ARG,
                   "mha_module_backward: dquery overlaps dout");
        ASSERT_TRUE(same_grads(ctx, m, f));
        mha_module_free(f);
        /* An inference forward: the same output, and nothing to differentiate. */
        ASSERT_OK(ctx, run_fb(ctx, m, self, B, L, S, 0, y2, NULL, NULL, NULL, 0));
        ASSERT_TRUE(memcmp(y1, y2, ny) == 0);
        ASSERT_TRUE(m->saved == NULL);
        int64_t sq[3] = {B, L, 16};
        mha_tensor tdy = mha_tensor_make(y2, 3, sq);
        EXPECT_ERR(mha_module_backward(ctx, m, &tdy, NULL, NULL, NULL), MHA_ERR_STATE,
                   "no saved forward");
        /* After a good forward, one that fails at each allocation in turn (here a new shape,
         * so the kept buffers are reallocated): never a saved state left to use. */
        mha_status st = MHA_ERR_NOMEM;
        long n;
        for (n = 0; n < 1000; n++) {
            ASSERT_OK(ctx, run_fb(ctx, m, self, B, L, S, 1, y2, NULL, NULL, NULL, 0));
            ASSERT_TRUE(m->saved != NULL);
            mha__fault_after(n);
            st = run_fb(ctx, m, self, 3, 40, self ? 40 : 33, 1, y2, NULL, NULL, NULL, 0);
            mha__fault_after(-1);
            if (st == MHA_OK) break;
            ASSERT_EQ(st, MHA_ERR_NOMEM);
            ASSERT_TRUE(m->saved == NULL);
            EXPECT_ERR(mha_module_backward(ctx, m, &tdy, NULL, NULL, NULL), MHA_ERR_STATE,
                       "no saved forward");
        }
        ASSERT_EQ(st, MHA_OK);
        ASSERT_TRUE(n >= 3); /* the kept workspace (a new shape), packing (grown), the core's */
        mha_module_free(m);
    }
    mha_ctx_free(ctx);
}

/* Fault 11: an output sharing memory with an input or another output is refused, naming
 * both; interleaved views of one buffer that share no element are not. */
TEST(overlapping_outputs_refused) {
    enum {
        E = 8,
        H = 2,
        B = 2,
        L = 3,
        S = 4,
        KD = 4,
        VD = 6
    };
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    mha_module *m, *c;
    mha_config cfg = mha_config_default(E, H);
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &m));
    cfg.kdim = KD, cfg.vdim = VD;
    ASSERT_OK(ctx, mha_module_create(ctx, &cfg, &c));
    /* One buffer with known gaps: q [0, 48), k [256, 288), v [512, 560), y [768, 816),
     * w [1024, 1048), and a packed [B, L, 2, E] array at 2048. */
    static float buf[4096];
    for (int i = 0; i < 4096; i++) buf[i] = (float)sin(0.7 * i);
    float *q = buf, *k = buf + 256, *v = buf + 512, *y = buf + 768, *w = buf + 1024;
    int64_t sq[3] = {B, L, E}, sk[3] = {B, S, KD}, sv[3] = {B, S, VD}, sw[3] = {B, L, S};
    mha_tensor tq = mha_tensor_make(q, 3, sq), tk = mha_tensor_make(k, 3, sk);
    mha_tensor tv = mha_tensor_make(v, 3, sv), ty = mha_tensor_make(y, 3, sq);
    mha_tensor tw = mha_tensor_make(w, 3, sw);
    const char *rule = "(outputs must not share memory with inputs or other outputs)";
    /* out on query (in place), partly on key, on value; weights on query and on out. */
    mha_tensor o = mha_tensor_make(q, 3, sq);
    EXPECT_ERR(mha_module_forward(ctx, m, NULL, &tq, NULL, NULL, NULL, &o, NULL),
               MHA_ERR_INVALID_ARG, "mha_module_forward: out overlaps query");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), rule);
    o = mha_tensor_make(k + B * S * KD - 1, 3, sq);
    EXPECT_ERR(mha_module_forward(ctx, c, NULL, &tq, &tk, &tv, NULL, &o, NULL), MHA_ERR_INVALID_ARG,
               "out overlaps key");
    o = mha_tensor_make(v, 3, sq);
    EXPECT_ERR(mha_module_forward(ctx, c, NULL, &tq, &tk, &tv, NULL, &o, NULL), MHA_ERR_INVALID_ARG,
               "out overlaps value");
    mha_tensor ow = mha_tensor_make(q + 5, 3, sw);
    EXPECT_ERR(mha_module_forward(ctx, c, NULL, &tq, &tk, &tv, NULL, &ty, &ow), MHA_ERR_INVALID_ARG,
               "weights overlaps query");
    ow = mha_tensor_make(y + B * L * E - 2, 3, sw);
    EXPECT_ERR(mha_module_forward(ctx, c, NULL, &tq, &tk, &tv, NULL, &ty, &ow), MHA_ERR_INVALID_ARG,
               "weights overlaps out");
    /* query and out interleaved in one [B, L, 2, E] buffer share no element: accepted, and
     * the same numbers as separate buffers. */
    float *pk = buf + 2048, y2[B * L * E];
    int64_t st2[3] = {L * 2 * E, 2 * E, 1};
    for (int i = 0; i < B * L; i++) memcpy(pk + i * 2 * E, q + i * E, sizeof(float) * E);
    mha_tensor iq = mha_tensor_strided(pk, 3, sq, st2);
    mha_tensor iy = mha_tensor_strided(pk + E, 3, sq, st2);
    ASSERT_OK(ctx, mha_module_forward(ctx, m, NULL, &tq, NULL, NULL, NULL, &ty, NULL));
    ASSERT_OK(ctx, mha_module_forward(ctx, m, NULL, &iq, NULL, NULL, NULL, &iy, NULL));
    for (int i = 0; i < B * L; i++) memcpy(y2 + i * E, pk + E + i * 2 * E, sizeof(float) * E);
    ASSERT_TRUE(memcmp(y, y2, sizeof y2) == 0);
    /* Backward: input gradients against dout and each other. */
    ASSERT_OK(ctx, mha_module_forward(ctx, c, NULL, &tq, &tk, &tv, NULL, &ty, &tw));
    static float gbuf[1024]; /* dq [0, 48), dk [256, 288), dv [512, 560) */
    float *dq = gbuf, *dk = gbuf + 256, *dv = gbuf + 512;
    mha_tensor tdq = mha_tensor_make(dq, 3, sq), tdk = mha_tensor_make(dk, 3, sk);
    mha_tensor tdv = mha_tensor_make(dv, 3, sv), bad;
    bad = mha_tensor_make(y + 3, 3, sk);
    EXPECT_ERR(mha_module_backward(ctx, c, &ty, &tdq, &bad, &tdv), MHA_ERR_INVALID_ARG,
               "mha_module_backward: dkey overlaps dout");
    ASSERT_STR_CONTAINS(mha_ctx_errmsg(ctx), rule);
    bad = mha_tensor_make(dk + 1, 3, sv);
    EXPECT_ERR(mha_module_backward(ctx, c, &ty, &tdq, &tdk, &bad), MHA_ERR_INVALID_ARG,
               "dvalue overlaps dkey");
    bad = mha_tensor_make(dq + B * L * E - 1, 3, sk);
    EXPECT_ERR(mha_module_backward(ctx, c, &ty, &tdq, &bad, NULL), MHA_ERR_INVALID_ARG,
               "dkey overlaps dquery");
    ASSERT_OK(ctx, mha_module_backward(ctx, c, &ty, &tdq, &tdk, &tdv));
    mha_module_free(m);
    mha_module_free(c);
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(reference_matches_finite_differences);
    RUN(self_attention_matches_reference);
    RUN(cross_attention_matches_reference);
    RUN(unbatched_matches_reference);
    RUN(masks_match_reference);
    RUN(fully_masked_rows_give_out_proj_bias);
    RUN(dropout_matches_reference_and_advances);
    RUN(parameter_names_and_shapes);
    RUN(initialization_follows_pytorch);
    RUN(gradients_accumulate_and_zero_grad);
    RUN(save_load_round_trip_and_create_from_file);
    RUN(load_errors_leave_module_unchanged);
    RUN(load_refuses_bias_kv_and_half_biases);
    RUN(create_validation);
    RUN(forward_backward_validation);
    RUN(bad_alibi_refused_before_anything_changes);
    RUN(backward_uses_saved_copies);
    RUN(allocation_failures_are_clean);
    RUN(backward_allocation_failure_writes_no_input_gradient);
    RUN(kept_buffers_reused_across_calls_and_shapes);
    RUN(overlapping_outputs_refused);
    return harness_report();
}
