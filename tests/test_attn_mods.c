/* test_attn_mods.c - the attention core's issue-10 options: the sliding window, ALiBi and the
 * softcap, alone and combined with causality, every mask, grouped-query attention and dropout.
 *
 * The oracle is a plain float64 reference written from the score definition in include/mha.h
 * (below mha_attn_params_default), not from the kernels:
 *     s = scale * (q_i . k_j);  s = softcap * tanh(s / softcap);  s -= slope * |i + S - L - j|;
 *     s += attn_float;  s = -inf where causal, the window, key_padding, key_lengths or attn_bool
 *     exclude key j;  P = softmax(s);  out = dropout(P) v
 * with its gradients derived by hand (through tanh for the softcap) and checked against float64
 * central differences of itself. The dropout keep decisions are mha's Philox stream
 * (mha__dropout_keep, the one internal function used). Every case runs on every ISA the machine
 * has, forward (out, lse, weights) and backward (dq, dk, dv).
 *
 * Tolerances (float32 kernels against the float64 reference), element by element:
 *     |got - want| <= rtol * |want| + atol * max(1, max |want| over the tensor)
 *     out, lse: rtol 1e-5, atol 1e-5;  weights: rtol 1e-5, atol 1e-6;
 *     dq, dk, dv: rtol 1e-4, atol 2e-5;  -inf (a fully masked row's lse) must match exactly,
 * and a row with no allowed key must give out 0, weights 0, dq 0 exactly (never NaN), a key no
 * row can see dk 0 and dv 0 exactly.
 * The test reference_catches_mutants shows that these tolerances fail an implementation with any
 * of the option's likely mistakes (the window not applied or aligned top-left, ALiBi's distance
 * without the S - L shift or the |.|, the batch's slopes ignored, the softcap applied after the
 * bias or without its derivative ...): each mutant of the reference is caught by the cases. */
#include "harness.h"
#include "attn/attn_common.h" /* mha__dropout_keep: the mask mha draws */

/* ------------------------------------------------------------------------------------------
 * Random numbers: splitmix64, reproducible from a case's seed
 * ---------------------------------------------------------------------------------------- */
static uint64_t rnd_state;
static uint64_t rnd_u64(void) {
    uint64_t z = (rnd_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rnd_unit(void) { return (double)(rnd_u64() >> 11) * 0x1p-53; } /* [0, 1) */
static float rnd_sym(void) { return (float)(2 * rnd_unit() - 1); }           /* [-1, 1) */

/* ------------------------------------------------------------------------------------------
 * A case: sizes, options, masks, layout
 * ---------------------------------------------------------------------------------------- */
/* key_padding: none, 25% of the keys at random, every key j with j % 3 == 1 */
enum {
    PAD_NONE,
    PAD_RANDOM,
    PAD_DIAG
};
/* ALiBi slopes: none, [H], [B, H], [H] with zeros and negative slopes */
enum {
    ALIBI_NONE,
    ALIBI_HEADS,
    ALIBI_BATCHED,
    ALIBI_SIGNS
};

typedef struct {
    int64_t B, H, Hkv, L, S, D, Dv; /* Hkv 0: H */
    int causal;                     /* mha_causal */
    int window;
    int64_t wl, wr;
    int alibi; /* ALIBI_* */
    float softcap, scale, drop;
    float qmul; /* q's values in [-qmul, qmul) (0: 1): large scores */
    int pad;    /* PAD_* */
    int lens, abool, afloat, batched;
    int bl; /* q, k, v, out and the gradients in [B, R, H, X + 1] memory (strided views) */
    uint64_t seed;
} mcase;

#define SHAPE(b, h, g, l, s, d, dv) .B = b, .H = h, .Hkv = g, .L = l, .S = s, .D = d, .Dv = dv
#define WIN(l, r) .window = 1, .wl = l, .wr = r

static void case_str(const mcase *c, const char *isa, char *buf, size_t n) {
    snprintf(buf, n,
             "%s: B%lld H%lld Hkv%lld L%lld S%lld D%lld Dv%lld causal%d window%d(%lld,%lld) "
             "alibi%d softcap%g scale%g drop%g qmul%g pad%d lens%d bool%d float%d batched%d bl%d "
             "seed%llu",
             isa, (long long)c->B, (long long)c->H, (long long)c->Hkv, (long long)c->L,
             (long long)c->S, (long long)c->D, (long long)c->Dv, c->causal, c->window,
             (long long)c->wl, (long long)c->wr, c->alibi, (double)c->softcap, (double)c->scale,
             (double)c->drop, (double)c->qmul, c->pad, c->lens, c->abool, c->afloat, c->batched,
             c->bl, (unsigned long long)c->seed);
}

/* The tensors of a problem, inputs first. */
enum {
    T_Q,
    T_K,
    T_V,
    T_DO,
    T_O,
    T_LSE,
    T_W,
    T_DQ,
    T_DK,
    T_DV,
    T_N
};
static const char *const tname[T_N] = {"q",   "k",       "v",  "dout", "out",
                                       "lse", "weights", "dq", "dk",   "dv"};

typedef struct {
    mcase c;
    mha_mask m;
    mha_attn_params p;
    uint8_t *pad, *abool;
    int32_t *lens;
    float *afloat, *slopes;
    float *mem[T_N];
    size_t nmem[T_N]; /* floats in mem[t] */
    mha_tensor t[T_N];
} prob;

static int tensor_shape(const mcase *c, int t, int64_t sh[4]) {
    int64_t B = c->B, H = c->H, G = c->Hkv, L = c->L, S = c->S, D = c->D, Dv = c->Dv;
    int64_t rows = t == T_K || t == T_V || t == T_DK || t == T_DV ? S : L;
    int64_t heads = t == T_K || t == T_V || t == T_DK || t == T_DV ? G : H;
    int64_t x = t == T_Q || t == T_K || t == T_DQ || t == T_DK ? D : t == T_W ? S : Dv;
    sh[0] = B, sh[1] = heads, sh[2] = rows, sh[3] = x;
    return t == T_LSE ? 3 : 4;
}

/* The memory offset of element e (in row-major order of the shape) of a view. */
static int64_t elem_off(const mha_tensor *t, int64_t e) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (e % t->shape[d]) * t->stride[d];
        e /= t->shape[d];
    }
    return off;
}
static void to_double(const mha_tensor *t, double *out) {
    int64_t n = mha_tensor_numel(t);
    for (int64_t e = 0; e < n; e++) out[e] = t->data[elem_off(t, e)];
}
static double *new_doubles(int64_t n) { return calloc((size_t)n + 1, sizeof(double)); }

static void prob_make(prob *pb, const mcase *cs) {
    memset(pb, 0, sizeof *pb);
    mcase *c = &pb->c;
    *c = *cs;
    if (!c->Hkv) c->Hkv = c->H;
    if (!c->seed) c->seed = (uint64_t)(c->L * 131 + c->S * 7 + c->D + c->window + c->alibi);
    rnd_state = c->seed;
    int64_t B = c->B, H = c->H, L = c->L, S = c->S;
    for (int t = 0; t < T_N; t++) {
        int64_t sh[4];
        int nd = tensor_shape(c, t, sh);
        if (c->bl && nd == 4 && t != T_W) { /* [B, R, heads, X + 1] memory */
            int64_t xs = sh[3] + 1, st[4] = {sh[2] * sh[1] * xs, xs, sh[1] * xs, 1};
            pb->nmem[t] = (size_t)(sh[0] * sh[1] * sh[2] * xs) + 1;
            pb->mem[t] = malloc(sizeof(float) * pb->nmem[t]);
            pb->t[t] = mha_tensor_strided(pb->mem[t], 4, sh, st);
        } else {
            pb->nmem[t] = (size_t)(sh[0] * sh[1] * sh[2] * (nd == 4 ? sh[3] : 1)) + 1;
            pb->mem[t] = malloc(sizeof(float) * pb->nmem[t]);
            pb->t[t] = mha_tensor_make(pb->mem[t], nd, sh);
        }
        memset(pb->mem[t], 0xff, sizeof(float) * pb->nmem[t]); /* NaN: outputs must be written */
        if (t <= T_DO) {
            double mul = t == T_Q && c->qmul > 0 ? c->qmul : 1;
            int64_t n = mha_tensor_numel(&pb->t[t]);
            for (int64_t e = 0; e < n; e++)
                pb->mem[t][elem_off(&pb->t[t], e)] = (float)(mul * rnd_sym());
        }
    }
    mha_mask *m = &pb->m;
    *m = mha_mask_default();
    m->causal = (mha_causal)c->causal;
    m->window = c->window, m->window_left = c->wl, m->window_right = c->wr;
    if (c->pad) {
        pb->pad = calloc((size_t)(B * S) + 1, 1);
        for (int64_t e = 0; e < B * S; e++)
            pb->pad[e] = c->pad == PAD_DIAG ? e % S % 3 == 1 : rnd_unit() < 0.25;
        m->key_padding = pb->pad;
    }
    if (c->lens) {
        pb->lens = calloc((size_t)B + 1, sizeof(int32_t));
        for (int64_t b = 0; b < B; b++) pb->lens[b] = (int32_t)((b * 7 + S * 2 / 3 + 1) % (S + 1));
        m->key_lengths = pb->lens;
    }
    int64_t nm = (c->batched ? B * H : 1) * L * S;
    if (c->abool) {
        pb->abool = calloc((size_t)nm + 1, 1);
        for (int64_t e = 0; e < nm; e++) pb->abool[e] = rnd_unit() < 0.15;
        m->attn_bool = pb->abool;
    }
    if (c->afloat) {
        pb->afloat = calloc((size_t)nm + 1, sizeof(float));
        for (int64_t e = 0; e < nm; e++)
            pb->afloat[e] = rnd_unit() < 0.1 ? -INFINITY : 2 * rnd_sym();
        m->attn_float = pb->afloat;
    }
    m->attn_batched = c->batched;
    if (c->alibi) {
        int64_t nb = c->alibi == ALIBI_BATCHED ? B : 1;
        pb->slopes = calloc((size_t)(nb * H) + 1, sizeof(float));
        for (int64_t b = 0; b < nb; b++)
            for (int64_t h = 0; h < H; h++) { /* ALiBi's geometric slopes, another set per batch */
                double s = exp2(-4.0 * (double)(h + 1) / (double)H) * (1 + 0.6 * (double)b);
                if (c->alibi == ALIBI_SIGNS) s = h % 3 == 0 ? 0 : h % 3 == 1 ? -0.05 : s;
                pb->slopes[b * H + h] = (float)s;
            }
        m->alibi_slopes = pb->slopes;
        m->alibi_batched = c->alibi == ALIBI_BATCHED;
    }
    pb->p = mha_attn_params_default();
    pb->p.scale = c->scale, pb->p.softcap = c->softcap, pb->p.dropout_p = c->drop;
    pb->p.seed = c->seed * 31 + 7, pb->p.offset = c->seed % 5;
}

static void prob_free(prob *pb) {
    for (int t = 0; t < T_N; t++) free(pb->mem[t]);
    free(pb->pad), free(pb->abool), free(pb->lens), free(pb->afloat), free(pb->slopes);
}

static mha_status lib_forward(mha_ctx *ctx, prob *pb) {
    mha_tensor *t = pb->t;
    return mha_attn_forward(ctx, &pb->p, &t[T_Q], &t[T_K], &t[T_V], &pb->m, &t[T_O], &t[T_LSE],
                            &t[T_W]);
}
static mha_status lib_backward(mha_ctx *ctx, prob *pb) {
    mha_tensor *t = pb->t;
    return mha_attn_backward(ctx, &pb->p, &t[T_Q], &t[T_K], &t[T_V], &pb->m, &t[T_O], &t[T_LSE],
                             &t[T_DO], &t[T_DQ], &t[T_DK], &t[T_DV]);
}

/* ------------------------------------------------------------------------------------------
 * The float64 reference, from the score definition in mha.h. `mut` selects a deliberate
 * mistake (reference_catches_mutants: the tolerances must catch each one).
 * ---------------------------------------------------------------------------------------- */
enum {
    MUT_NONE,
    MUT_NO_WINDOW,             /* the window ignored */
    MUT_WINDOW_TOP_LEFT,       /* the window around j = i instead of j = i + S - L */
    MUT_WINDOW_SWAPPED,        /* left and right exchanged */
    MUT_WINDOW_EXCLUSIVE,      /* bounds excluded instead of included */
    MUT_WINDOW_CAUSAL_NO_LEFT, /* with causality, the window's left bound lost */
    MUT_NO_ALIBI,              /* no bias */
    MUT_ALIBI_TOP_LEFT,        /* distance |i - j| */
    MUT_ALIBI_SIGNED,          /* distance i + S - L - j without |.| */
    MUT_ALIBI_UNBATCHED,       /* slopes[h] for every batch */
    MUT_NO_SOFTCAP,            /* no tanh */
    MUT_SOFTCAP_AFTER_BIAS,    /* tanh after ALiBi and the float mask */
    MUT_SOFTCAP_BEFORE_SCALE,  /* softcap * tanh(q.k / softcap) * scale */
    MUT_SOFTCAP_NO_DERIVATIVE, /* the backward without tanh's derivative */
    MUT_COUNT
};
static const char *const mut_name[MUT_COUNT] = {"none",
                                                "no window",
                                                "window top-left",
                                                "window swapped",
                                                "window exclusive",
                                                "causal window without left",
                                                "no alibi",
                                                "alibi top-left",
                                                "alibi signed",
                                                "alibi unbatched",
                                                "no softcap",
                                                "softcap after bias",
                                                "softcap before scale",
                                                "softcap without derivative"};

typedef struct {
    double *in[4]; /* q, k, v, dout as contiguous doubles ([B, H, L, D], [B, Hkv, S, D], ...) */
    double *out, *lse, *P, *W, *G; /* P, W: weights before and after dropout; G: ds / ds_raw */
    double *dq, *dk, *dv;
} ref;

static int ref_allowed(const prob *pb, int mut, int64_t b, int64_t i, int64_t j) {
    const mcase *c = &pb->c;
    const mha_mask *m = &pb->m;
    int64_t d = j - i - (c->S - c->L); /* key j's offset from row i's bottom-right diagonal */
    if (m->causal == MHA_CAUSAL_TOP_LEFT && j > i) return 0;
    if (m->causal == MHA_CAUSAL_BOTTOM_RIGHT && d > 0) return 0;
    if (m->window && mut != MUT_NO_WINDOW) {
        int64_t dw = mut == MUT_WINDOW_TOP_LEFT ? j - i : d;
        int64_t lo = m->window_left, hi = m->window_right, x = mut == MUT_WINDOW_EXCLUSIVE;
        if (mut == MUT_WINDOW_SWAPPED) lo = m->window_right, hi = m->window_left;
        if (mut == MUT_WINDOW_CAUSAL_NO_LEFT && m->causal) lo = -1;
        if (hi >= 0 && dw > hi - x) return 0; /* -1 (any negative): unbounded */
        if (lo >= 0 && -dw > lo - x) return 0;
    }
    if (m->key_padding && m->key_padding[b * c->S + j]) return 0;
    if (m->key_lengths && j >= m->key_lengths[b]) return 0;
    return 1;
}

/* Index of (b, h, i, j) in an attention mask of the case. */
static int64_t mask_at(const prob *pb, int64_t b, int64_t h, int64_t i, int64_t j) {
    const mcase *c = &pb->c;
    return ((c->batched ? b * c->H + h : 0) * c->L + i) * c->S + j;
}

/* Score of (b, h, i, j) with key j allowed; *g = d s / d (scale q.k). */
static double ref_score(const prob *pb, int mut, const double *const *in, int64_t b, int64_t h,
                        int64_t i, int64_t j, double *g) {
    const mcase *c = &pb->c;
    int64_t H = c->H, L = c->L, S = c->S, D = c->D, kh = b * c->Hkv + h / (H / c->Hkv);
    double scale = c->scale != 0 ? c->scale : 1 / sqrt((double)D), cap = c->softcap;
    const double *qi = in[T_Q] + ((b * H + h) * L + i) * D, *kj = in[T_K] + (kh * S + j) * D;
    int before = mut == MUT_SOFTCAP_BEFORE_SCALE && cap > 0; /* cap * tanh(q.k / cap) * scale */
    double s = 0;
    for (int64_t x = 0; x < D; x++) s += (before ? 1 : scale) * qi[x] * kj[x];
    *g = 1;
    if (cap > 0 && mut != MUT_NO_SOFTCAP && mut != MUT_SOFTCAP_AFTER_BIAS) {
        double t = tanh(s / cap);
        s = cap * t * (before ? scale : 1), *g = 1 - t * t;
    }
    if (pb->m.alibi_slopes && mut != MUT_NO_ALIBI) {
        double dist = (double)(i + (mut == MUT_ALIBI_TOP_LEFT ? 0 : S - L) - j);
        int batched = pb->m.alibi_batched && mut != MUT_ALIBI_UNBATCHED;
        s -= pb->m.alibi_slopes[batched ? b * H + h : h] *
             (mut == MUT_ALIBI_SIGNED ? dist : fabs(dist));
    }
    if (pb->m.attn_bool && pb->m.attn_bool[mask_at(pb, b, h, i, j)]) return -INFINITY;
    if (pb->m.attn_float) s += pb->m.attn_float[mask_at(pb, b, h, i, j)];
    if (cap > 0 && mut == MUT_SOFTCAP_AFTER_BIAS) {
        double t = tanh(s / cap);
        s = cap * t, *g = 1 - t * t;
    }
    if (mut == MUT_SOFTCAP_NO_DERIVATIVE) *g = 1;
    return s;
}

/* Forward: out [B, H, L, Dv], lse [B, H, L]; P, W, G [B, H, L, S] when not NULL. */
static void ref_forward(const prob *pb, int mut, const double *const *in, double *out, double *lse,
                        double *P, double *W, double *G) {
    const mcase *c = &pb->c;
    int64_t B = c->B, H = c->H, L = c->L, S = c->S, Dv = c->Dv;
    double ks = 1 / (1 - (double)c->drop);
    double *s = new_doubles(S), *g = new_doubles(S);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++) {
                int64_t row = (b * H + h) * L + i, kh = b * c->Hkv + h / (H / c->Hkv);
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < S; j++) {
                    s[j] = -INFINITY, g[j] = 0;
                    if (ref_allowed(pb, mut, b, i, j))
                        s[j] = ref_score(pb, mut, in, b, h, i, j, &g[j]);
                    if (s[j] > mx) mx = s[j];
                }
                for (int64_t j = 0; j < S && mx > -INFINITY; j++) sum += exp(s[j] - mx);
                lse[row] = mx > -INFINITY ? mx + log(sum) : -INFINITY;
                for (int64_t x = 0; x < Dv; x++) out[row * Dv + x] = 0;
                for (int64_t j = 0; j < S; j++) {
                    double pij = mx > -INFINITY ? exp(s[j] - mx) / sum : 0;
                    double wij = c->drop > 0 && !mha__dropout_keep(&pb->p, b * H + h, i, j) ? 0
                                 : c->drop > 0 ? pij * ks
                                               : pij;
                    if (P) P[row * S + j] = pij, W[row * S + j] = wij, G[row * S + j] = g[j];
                    for (int64_t x = 0; x < Dv; x++)
                        out[row * Dv + x] += wij * in[T_V][(kh * S + j) * Dv + x];
                }
            }
    free(s), free(g);
}

/* Backward of ref_forward for loss = sum(out * dout), from its P, W, G:
 *     dv_j += W_ij dout_i;  dP_ij = (dout_i . v_j) * W_ij / P_ij (the dropout's keep * scale)
 *     ds_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij');  ds_raw = ds * G  (tanh's derivative)
 *     dq_i += ds_raw scale k_j;  dk_j += ds_raw scale q_i  (dk, dv summed over a group) */
static void ref_backward(const prob *pb, ref *r) {
    const mcase *c = &pb->c;
    int64_t B = c->B, H = c->H, G = c->Hkv, L = c->L, S = c->S, D = c->D, Dv = c->Dv;
    double scale = c->scale != 0 ? c->scale : 1 / sqrt((double)D);
    double *dP = new_doubles(S);
    memset(r->dq, 0, sizeof(double) * (size_t)(B * H * L * D));
    memset(r->dk, 0, sizeof(double) * (size_t)(B * G * S * D));
    memset(r->dv, 0, sizeof(double) * (size_t)(B * G * S * Dv));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++) {
                int64_t row = (b * H + h) * L + i, kh = b * G + h / (H / G);
                const double *go = r->in[T_DO] + row * Dv, *qi = r->in[T_Q] + row * D;
                double dot = 0;
                for (int64_t j = 0; j < S; j++) {
                    double pij = r->P[row * S + j], wij = r->W[row * S + j], dw = 0;
                    for (int64_t x = 0; x < Dv; x++) {
                        dw += go[x] * r->in[T_V][(kh * S + j) * Dv + x];
                        r->dv[(kh * S + j) * Dv + x] += wij * go[x];
                    }
                    dP[j] = pij > 0 ? dw * wij / pij : 0;
                    dot += pij * dP[j];
                }
                for (int64_t j = 0; j < S; j++) {
                    double pij = r->P[row * S + j];
                    double ds = pij * (dP[j] - dot) * r->G[row * S + j] * scale;
                    for (int64_t x = 0; x < D; x++) {
                        r->dq[row * D + x] += ds * r->in[T_K][(kh * S + j) * D + x];
                        r->dk[(kh * S + j) * D + x] += ds * qi[x];
                    }
                }
            }
    free(dP);
}

static int64_t tnumel(const prob *pb, int t) { return mha_tensor_numel(&pb->t[t]); }

static void ref_make(const prob *pb, ref *r) {
    memset(r, 0, sizeof *r);
    for (int t = 0; t <= T_DO; t++) {
        r->in[t] = new_doubles(tnumel(pb, t));
        to_double(&pb->t[t], r->in[t]);
    }
    r->out = new_doubles(tnumel(pb, T_O)), r->lse = new_doubles(tnumel(pb, T_LSE));
    r->P = new_doubles(tnumel(pb, T_W)), r->W = new_doubles(tnumel(pb, T_W));
    r->G = new_doubles(tnumel(pb, T_W));
    r->dq = new_doubles(tnumel(pb, T_DQ)), r->dk = new_doubles(tnumel(pb, T_DK));
    r->dv = new_doubles(tnumel(pb, T_DV));
}
static void ref_run(const prob *pb, int mut, ref *r) {
    ref_forward(pb, mut, (const double *const *)r->in, r->out, r->lse, r->P, r->W, r->G);
    ref_backward(pb, r);
}
static void ref_free(ref *r) {
    for (int t = 0; t <= T_DO; t++) free(r->in[t]);
    free(r->out), free(r->lse), free(r->P), free(r->W), free(r->G);
    free(r->dq), free(r->dk), free(r->dv);
}

/* ------------------------------------------------------------------------------------------
 * Comparisons
 * ---------------------------------------------------------------------------------------- */
/* Elements beyond |got - want| <= rtol |want| + atol max(1, max |want|); infinities and NaN
 * must match exactly. With name, the worst is reported as a failure. */
static int64_t n_bad(const char *name, const char *what, const double *got, const double *want,
                     int64_t n, double rtol, double atol) {
    double mag = 1, max_abs = 0;
    for (int64_t e = 0; e < n; e++)
        if (isfinite(want[e]) && fabs(want[e]) > mag) mag = fabs(want[e]);
    int64_t bad = 0, worst = -1;
    double worst_x = 0;
    for (int64_t e = 0; e < n; e++) {
        double d = fabs(got[e] - want[e]), x;
        if (!isfinite(want[e]) || !isfinite(got[e]))
            x = got[e] == want[e] || (isnan(got[e]) && isnan(want[e])) ? 0 : INFINITY;
        else x = d / (rtol * fabs(want[e]) + atol * mag), max_abs = d > max_abs ? d : max_abs;
        if (x > 1) {
            if (worst < 0 || x > worst_x) worst = e, worst_x = x;
            bad++;
        }
    }
    if (bad && name)
        FAILF("%s: %s: %lld of %lld elements beyond rtol %g, atol %g x %.3g; worst [%lld]: got "
              "%.9g, expected %.9g (%.3g x the tolerance); max abs err %.3g",
              name, what, (long long)bad, (long long)n, rtol, atol, mag, (long long)worst,
              got[worst], want[worst], worst_x, max_abs);
    return bad;
}

typedef struct {
    double *out, *lse, *W, *dq, *dk, *dv;
} results;

/* Compares results (the library's, or a mutant reference's) with the reference r: the number
 * of tensors out of tolerance (0: all agree). */
static int compare(const char *name, const prob *pb, const results *x, const ref *r) {
    static const double rtol[6] = {1e-5, 1e-5, 1e-5, 1e-4, 1e-4, 1e-4};
    static const double atol[6] = {1e-5, 1e-5, 1e-6, 2e-5, 2e-5, 2e-5};
    static const int tt[6] = {T_O, T_LSE, T_W, T_DQ, T_DK, T_DV};
    const double *got[6] = {x->out, x->lse, x->W, x->dq, x->dk, x->dv};
    const double *want[6] = {r->out, r->lse, r->W, r->dq, r->dk, r->dv};
    int bad = 0;
    for (int e = 0; e < 6; e++)
        bad += n_bad(name, tname[tt[e]], got[e], want[e], tnumel(pb, tt[e]), rtol[e], atol[e]) > 0;
    return bad;
}

/* Exact zeros where the reference has nothing to compute: a row with no allowed key (lse
 * -inf): out, weights and dq 0; a key with weight 0 in every row (before dropout): dk, dv 0. */
static int exact_zeros(const char *name, const prob *pb, const results *x, const ref *r) {
    const mcase *c = &pb->c;
    int64_t H = c->H, G = c->Hkv, L = c->L, S = c->S, D = c->D, Dv = c->Dv;
    for (int64_t row = 0; row < c->B * H * L; row++) {
        if (r->lse[row] != -INFINITY) continue;
        for (int64_t e = 0; e < Dv; e++)
            if (x->out[row * Dv + e] != 0) {
                FAILF("%s: out[row %lld] = %g, expected 0 (no allowed key)", name, (long long)row,
                      x->out[row * Dv + e]);
                return 0;
            }
        for (int64_t e = 0; e < D; e++)
            if (x->dq[row * D + e] != 0) {
                FAILF("%s: dq[row %lld] = %g, expected 0 (no allowed key)", name, (long long)row,
                      x->dq[row * D + e]);
                return 0;
            }
        for (int64_t j = 0; j < S; j++)
            if (x->W[row * S + j] != 0) {
                FAILF("%s: weights[row %lld, %lld] = %g, expected 0", name, (long long)row,
                      (long long)j, x->W[row * S + j]);
                return 0;
            }
    }
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t j = 0; j < S; j++)
            for (int64_t kh = 0; kh < G; kh++) {
                int seen = 0;
                for (int64_t h = kh * (H / G); h < (kh + 1) * (H / G) && !seen; h++)
                    for (int64_t i = 0; i < L && !seen; i++)
                        seen = r->P[((b * H + h) * L + i) * S + j] > 0;
                if (seen) continue;
                int64_t at = (b * G + kh) * S + j;
                for (int64_t e = 0; e < D; e++)
                    if (x->dk[at * D + e] != 0) {
                        FAILF("%s: dk[%lld, %lld, %lld] = %g, expected 0 (a key no row sees)", name,
                              (long long)b, (long long)kh, (long long)j, x->dk[at * D + e]);
                        return 0;
                    }
                for (int64_t e = 0; e < Dv; e++)
                    if (x->dv[at * Dv + e] != 0) {
                        FAILF("%s: dv[%lld, %lld, %lld] = %g, expected 0 (a key no row sees)", name,
                              (long long)b, (long long)kh, (long long)j, x->dv[at * Dv + e]);
                        return 0;
                    }
            }
    return 1;
}

static void results_alloc(const prob *pb, results *x) {
    x->out = new_doubles(tnumel(pb, T_O)), x->lse = new_doubles(tnumel(pb, T_LSE));
    x->W = new_doubles(tnumel(pb, T_W)), x->dq = new_doubles(tnumel(pb, T_DQ));
    x->dk = new_doubles(tnumel(pb, T_DK)), x->dv = new_doubles(tnumel(pb, T_DV));
}
static void results_free(results *x) {
    free(x->out), free(x->lse), free(x->W), free(x->dq), free(x->dk), free(x->dv);
}

/* One check of a case on the context's ISA, with the case's reference; 1 when it passes. */
typedef int (*case_check)(mha_ctx *ctx, prob *pb, const ref *r, const char *name);

/* Runs check on every case of a table on every ISA (the reference computed once per case). */
static int run_table(const mcase *cases, size_t n, case_check check) {
    mha_ctx *ctx;
    if (mha_ctx_create(&ctx) != MHA_OK) {
        FAILF("mha_ctx_create: %s", mha_ctx_errmsg(ctx));
        mha_ctx_free(ctx);
        return 0;
    }
    int ok = 1;
    for (size_t e = 0; e < n && ok; e++) {
        prob pb;
        ref r;
        char name[512];
        prob_make(&pb, &cases[e]);
        ref_make(&pb, &r);
        ref_run(&pb, MUT_NONE, &r);
        FOR_EACH_ISA(ctx) {
            case_str(&pb.c, mha_isa_name(mha_ctx_isa(ctx)), name, sizeof name);
            if (!(ok = check(ctx, &pb, &r, name))) break;
        }
        ref_free(&r);
        prob_free(&pb);
    }
    mha_ctx_free(ctx);
    return ok;
}
#define NCASES(a) (sizeof(a) / sizeof((a)[0]))
#define RUN_TABLE(cases, check) ASSERT_TRUE(run_table(cases, NCASES(cases), check))

/* Forward and backward (outputs filled with NaN first) against the reference. */
static int check_reference(mha_ctx *ctx, prob *pb, const ref *r, const char *name) {
    for (int t = T_O; t < T_N; t++) memset(pb->mem[t], 0xff, sizeof(float) * pb->nmem[t]);
    mha_status st = lib_forward(ctx, pb);
    if (st == MHA_OK) st = lib_backward(ctx, pb);
    if (st != MHA_OK) {
        FAILF("%s: %s: %s", name, mha_status_str(st), mha_ctx_errmsg(ctx));
        return 0;
    }
    results x;
    results_alloc(pb, &x);
    to_double(&pb->t[T_O], x.out), to_double(&pb->t[T_LSE], x.lse), to_double(&pb->t[T_W], x.W);
    to_double(&pb->t[T_DQ], x.dq), to_double(&pb->t[T_DK], x.dk), to_double(&pb->t[T_DV], x.dv);
    int ok = compare(name, pb, &x, r) == 0 && exact_zeros(name, pb, &x, r);
    results_free(&x);
    return ok;
}

/* ------------------------------------------------------------------------------------------
 * The cases (generic tiles: 16 x 32; AVX2 64 x 64; AVX-512 64 x 128; the SIMD forward
 * 96 x 256, the backward 64 x 128)
 * ---------------------------------------------------------------------------------------- */
static const mcase window_cases[] = {
    {SHAPE(2, 2, 2, 37, 37, 16, 16), WIN(8, -1)},              /* left only */
    {SHAPE(1, 3, 3, 45, 45, 8, 8), WIN(-1, 5)},                /* right only */
    {SHAPE(2, 2, 2, 40, 40, 7, 5), WIN(4, 3), .bl = 1},        /* both, strided views */
    {SHAPE(1, 2, 2, 33, 33, 3, 3), WIN(0, 0)},                 /* only the diagonal key */
    {SHAPE(1, 2, 2, 20, 50, 8, 8), WIN(0, 0)},                 /* L < S: key i + 30 */
    {SHAPE(1, 2, 2, 50, 20, 8, 8), WIN(0, 0)},                 /* L > S: rows i < 30 see none */
    {SHAPE(1, 1, 1, 30, 20, 5, 4), WIN(100, 100)},             /* wider than S */
    {SHAPE(2, 1, 1, 25, 31, 8, 8), WIN(-1, -1)},               /* unbounded: no window */
    {SHAPE(1, 2, 2, 19, 23, 4, 4), WIN(INT64_MAX, INT64_MAX)}, /* no overflow */
    {SHAPE(1, 2, 2, 17, 61, 16, 8), WIN(5, 2)},                /* L < S */
    {SHAPE(1, 2, 2, 61, 17, 8, 16), WIN(3, 6)},                /* L > S */
    {SHAPE(1, 1, 1, 19, 19, 8, 8), WIN(0, 7)},                 /* left 0 */
    {SHAPE(1, 2, 2, 40, 70, 8, 8), WIN(-1, 0)},                /* bottom-right causality */
    {SHAPE(1, 1, 1, 100, 100, 16, 16), WIN(17, 33)},           /* across the generic tiles */
    {SHAPE(1, 1, 1, 50, 20, 8, 8), WIN(0, INT64_MAX)},         /* S - L < 0, huge right */
    {SHAPE(1, 1, 1, 20, 50, 8, 8), WIN(INT64_MAX - 1, 0)},     /* huge left */
};
static const mcase window_causal_cases[] = {
    {SHAPE(2, 2, 2, 50, 50, 8, 8), .causal = 1, WIN(6, -1)},
    {SHAPE(1, 2, 2, 30, 50, 8, 8), .causal = 1, WIN(6, 4)}, /* top-left rows, bottom-right window */
    {SHAPE(1, 2, 2, 50, 30, 8, 8), .causal = 2, WIN(-1, 3)},
    {SHAPE(1, 2, 2, 50, 30, 8, 8), .causal = 1, WIN(10, 10)},
    {SHAPE(1, 2, 2, 30, 50, 16, 16), .causal = 2, WIN(12, 5)},
    {SHAPE(2, 1, 1, 130, 130, 16, 16), .causal = 1, WIN(70, 0), .pad = PAD_RANDOM},
    {SHAPE(1, 2, 2, 70, 200, 8, 8), .causal = 1, WIN(150, 0)}, /* bounds from both sides */
};
static const mcase alibi_cases[] = {
    {SHAPE(2, 4, 4, 29, 29, 16, 16), .alibi = ALIBI_HEADS},
    {SHAPE(2, 3, 3, 23, 41, 8, 8), .alibi = ALIBI_BATCHED},
    {SHAPE(2, 3, 3, 41, 23, 8, 8), .alibi = ALIBI_BATCHED, .bl = 1},
    {SHAPE(1, 2, 2, 41, 23, 8, 8), .alibi = ALIBI_HEADS, .causal = 1},
    {SHAPE(1, 2, 2, 23, 41, 8, 8), .alibi = ALIBI_HEADS, .causal = 2},
    {SHAPE(2, 2, 2, 70, 70, 16, 16), .alibi = ALIBI_BATCHED, WIN(8, 2)},
    {SHAPE(1, 2, 2, 30, 60, 16, 16), .alibi = ALIBI_HEADS, WIN(10, 3)},
    {SHAPE(1, 3, 3, 30, 45, 8, 8), .alibi = ALIBI_SIGNS}, /* zero and negative slopes */
    {SHAPE(2, 4, 2, 33, 47, 8, 8), .alibi = ALIBI_BATCHED, .causal = 2},
    {SHAPE(1, 2, 2, 37, 37, 8, 8), .alibi = ALIBI_HEADS, .afloat = 1, .abool = 1, .batched = 1},
};
static const mcase softcap_cases[] = {
    {SHAPE(2, 2, 2, 33, 40, 16, 16), .softcap = 30},              /* large cap */
    {SHAPE(1, 2, 2, 30, 35, 16, 16), .softcap = 1000, .qmul = 4}, /* tanh(x) at small x */
    {SHAPE(2, 2, 2, 33, 40, 16, 16), .softcap = 1, .qmul = 3},    /* scores ~ the cap */
    {SHAPE(1, 2, 2, 40, 33, 4, 8), .softcap = 1, .qmul = 40},     /* tanh saturates */
    {SHAPE(1, 2, 2, 45, 45, 8, 8), .softcap = 0.5f, .qmul = 10, .causal = 1},
    {SHAPE(2, 2, 2, 31, 53, 8, 8), .softcap = 2, .qmul = 3, .alibi = ALIBI_BATCHED},
    {SHAPE(1, 3, 3, 29, 29, 16, 16), .softcap = 5, .scale = 0.9f, .alibi = ALIBI_HEADS,
     .afloat = 1},
    {SHAPE(1, 2, 2, 30, 30, 8, 8), .softcap = 1, .qmul = 2, .scale = 2.5f, .bl = 1},
};
/* The "GQA + window + causal + softcap + padding" (+ float mask, ALiBi, masks). */
static const mcase gqa_cases[] = {
    {SHAPE(2, 4, 1, 37, 53, 16, 16), .causal = 2, WIN(7, 0), .softcap = 3, .qmul = 2,
     .pad = PAD_RANDOM, .afloat = 1, .batched = 1},
    {SHAPE(2, 4, 2, 37, 53, 16, 16), .causal = 1, WIN(5, 5), .softcap = 2, .qmul = 2,
     .pad = PAD_RANDOM, .afloat = 1},
    {SHAPE(1, 6, 3, 70, 150, 64, 64), .causal = 2, WIN(40, 0), .softcap = 4, .pad = PAD_RANDOM,
     .afloat = 1, .bl = 1},
    {SHAPE(2, 4, 1, 50, 50, 8, 8), .causal = 1, WIN(9, -1), .softcap = 2, .pad = PAD_RANDOM,
     .afloat = 1, .alibi = ALIBI_BATCHED, .lens = 1, .abool = 1},
    {SHAPE(1, 8, 4, 97, 97, 32, 32), .causal = 2, WIN(20, 3), .softcap = 1.5f, .qmul = 2,
     .pad = PAD_RANDOM, .afloat = 1, .batched = 1, .alibi = ALIBI_HEADS},
};
static const mcase dropout_cases[] = {
    {SHAPE(2, 2, 2, 40, 60, 8, 8), .drop = 0.2f, WIN(10, 0), .alibi = ALIBI_HEADS},
    {SHAPE(1, 4, 2, 45, 45, 16, 16), .drop = 0.3f, .softcap = 2, .qmul = 2, .causal = 1},
    {SHAPE(2, 4, 1, 33, 70, 8, 12), .drop = 0.1f, .causal = 2, WIN(12, 4), .alibi = ALIBI_BATCHED,
     .softcap = 3, .pad = PAD_RANDOM, .afloat = 1, .bl = 1},
    {SHAPE(1, 2, 2, 200, 300, 16, 16), .drop = 0.15f, WIN(90, 30), .alibi = ALIBI_HEADS,
     .softcap = 5},
};
static const mcase edge_cases[] = {
    {SHAPE(1, 1, 1, 97, 97, 1, 3), WIN(20, 20), .softcap = 2},        /* D = 1 */
    {SHAPE(1, 2, 2, 1, 129, 3, 7), WIN(50, 0), .alibi = ALIBI_HEADS}, /* one query row */
    {SHAPE(1, 2, 2, 129, 1, 3, 5), WIN(0, 0), .alibi = ALIBI_HEADS, .causal = 2}, /* one key */
    {SHAPE(1, 2, 1, 130, 257, 64, 80), WIN(64, -1), .alibi = ALIBI_BATCHED, .causal = 2},
    {SHAPE(1, 1, 1, 193, 193, 80, 80), WIN(100, 0), .softcap = 10, .alibi = ALIBI_HEADS},
    {SHAPE(1, 2, 2, 65, 300, 128, 64), WIN(40, 40), .causal = 2},
    {SHAPE(2, 2, 2, 257, 97, 128, 128), WIN(16, 16), .softcap = 4, .alibi = ALIBI_BATCHED},
    {SHAPE(1, 1, 1, 95, 255, 7, 7), WIN(3, 300), .softcap = 1, .qmul = 2},
    {SHAPE(1, 2, 2, 17, 63, 3, 1), WIN(2, 1), .alibi = ALIBI_HEADS, .softcap = 2, .bl = 1},
    {SHAPE(1, 2, 2, 5, 0, 4, 4), WIN(1, 1), .alibi = ALIBI_HEADS, .softcap = 1},   /* no key */
    {SHAPE(2, 2, 1, 0, 7, 4, 4), WIN(1, 1), .alibi = ALIBI_BATCHED, .softcap = 1}, /* no row */
};
/* Whole tiles outside the window: the kernels skip them, the results stay exact. */
static const mcase long_cases[] = {
    {SHAPE(1, 2, 1, 700, 700, 16, 16), WIN(32, 0)},
    {SHAPE(1, 2, 2, 700, 700, 16, 16), WIN(32, 0), .causal = 1, .alibi = ALIBI_HEADS, .softcap = 3},
    {SHAPE(1, 2, 2, 300, 700, 32, 32), WIN(50, 10), .alibi = ALIBI_BATCHED, .softcap = 5},
    {SHAPE(1, 1, 1, 700, 300, 16, 16), WIN(40, 0)}, /* rows i < 400 see no key */
    {SHAPE(1, 1, 1, 700, 700, 64, 64), WIN(100, 100), .pad = PAD_RANDOM},
};
/* Rows with no allowed key because of the window: out 0, lse -inf, gradients 0. */
static const mcase masked_row_cases[] = {
    {SHAPE(2, 2, 2, 40, 40, 8, 8), WIN(0, 0), .pad = PAD_DIAG},
    {SHAPE(1, 2, 2, 30, 45, 8, 8), WIN(0, 0), .pad = PAD_DIAG, .alibi = ALIBI_HEADS, .softcap = 2},
    {SHAPE(2, 2, 2, 50, 30, 8, 8), WIN(2, 0), .lens = 1},
    {SHAPE(1, 2, 2, 40, 40, 8, 8), WIN(0, 0), .pad = PAD_DIAG, .drop = 0.3f},
    {SHAPE(1, 1, 1, 20, 300, 8, 8), WIN(5, -1), .causal = 1}, /* every row empty */
    {SHAPE(1, 4, 2, 33, 33, 8, 8), WIN(1, 0), .pad = PAD_DIAG, .afloat = 1, .batched = 1},
};

/* Small cases for float64 finite differences of the reference itself. */
static const mcase fd_cases[] = {
    {SHAPE(1, 2, 1, 5, 7, 3, 4), .softcap = 1, .qmul = 3, .alibi = ALIBI_HEADS, WIN(2, 1),
     .causal = 2, .drop = 0.3f, .pad = PAD_RANDOM, .afloat = 1},
    {SHAPE(2, 2, 2, 6, 4, 4, 3), .softcap = 0.7f, .qmul = 2, .alibi = ALIBI_SIGNS, WIN(1, -1)},
    {SHAPE(2, 2, 2, 4, 6, 2, 2), .softcap = 2, .qmul = 40, .alibi = ALIBI_BATCHED},
    {SHAPE(1, 3, 3, 5, 5, 3, 3), .softcap = 1.5f, .scale = 0.8f, .qmul = 2, .abool = 1},
};

/* ------------------------------------------------------------------------------------------
 * The oracle's own checks (no library call)
 * ---------------------------------------------------------------------------------------- */
/* The hand-derived reference gradients equal float64 central differences of the reference
 * forward's loss sum(out * dout), with softcap, ALiBi, window, GQA and dropout. */
TEST(reference_gradients_finite_differences) {
    for (size_t e = 0; e < NCASES(fd_cases); e++) {
        prob pb;
        ref r;
        char name[512];
        prob_make(&pb, &fd_cases[e]);
        case_str(&pb.c, "reference", name, sizeof name);
        ref_make(&pb, &r);
        ref_run(&pb, MUT_NONE, &r);
        double *o = new_doubles(tnumel(&pb, T_O)), *l = new_doubles(tnumel(&pb, T_LSE));
        const double *grad[3] = {r.dq, r.dk, r.dv};
        int ok = 1;
        for (int t = T_Q; t <= T_V && ok; t++) {
            int64_t n = tnumel(&pb, t), no = tnumel(&pb, T_O);
            double *fd = new_doubles(n);
            for (int64_t x = 0; x < n; x++) {
                double x0 = r.in[t][x], lp = 0, lm = 0, eps = 1e-6;
                r.in[t][x] = x0 + eps;
                ref_forward(&pb, MUT_NONE, (const double *const *)r.in, o, l, NULL, NULL, NULL);
                for (int64_t y = 0; y < no; y++) lp += o[y] * r.in[T_DO][y];
                r.in[t][x] = x0 - eps;
                ref_forward(&pb, MUT_NONE, (const double *const *)r.in, o, l, NULL, NULL, NULL);
                for (int64_t y = 0; y < no; y++) lm += o[y] * r.in[T_DO][y];
                r.in[t][x] = x0;
                fd[x] = (lp - lm) / (2 * eps);
            }
            ok = n_bad(name, tname[T_DQ + t], grad[t], fd, n, 1e-5, 1e-6) == 0;
            free(fd);
        }
        free(o), free(l);
        ref_free(&r);
        prob_free(&pb);
        if (!ok) return;
    }
}

/* The tolerances can fail: each deliberate mistake in the reference (MUT_*), as an
 * implementation might make it, is caught by at least one case of the tables. */
TEST(reference_catches_mutants) {
    static const struct {
        const mcase *c;
        size_t n;
    } tables[] = {
        {window_cases, NCASES(window_cases)}, {window_causal_cases, NCASES(window_causal_cases)},
        {alibi_cases, NCASES(alibi_cases)},   {softcap_cases, NCASES(softcap_cases)},
        {gqa_cases, NCASES(gqa_cases)},       {dropout_cases, NCASES(dropout_cases)},
        {edge_cases, NCASES(edge_cases)},     {masked_row_cases, NCASES(masked_row_cases)}};
    int caught[MUT_COUNT] = {0};
    for (size_t tb = 0; tb < NCASES(tables); tb++)
        for (size_t e = 0; e < tables[tb].n; e++) {
            prob pb;
            ref r, m;
            prob_make(&pb, &tables[tb].c[e]);
            ref_make(&pb, &r), ref_make(&pb, &m);
            ref_run(&pb, MUT_NONE, &r);
            for (int mut = 1; mut < MUT_COUNT; mut++) {
                ref_run(&pb, mut, &m);
                results x = {m.out, m.lse, m.W, m.dq, m.dk, m.dv};
                caught[mut] += compare(NULL, &pb, &x, &r) > 0;
            }
            ref_free(&r), ref_free(&m);
            prob_free(&pb);
        }
    for (int mut = 1; mut < MUT_COUNT; mut++) {
        printf("  mutant \"%s\": caught by %d cases\n", mut_name[mut], caught[mut]);
        if (!caught[mut]) FAILF("mutant \"%s\" passes every case", mut_name[mut]);
    }
}

/* ------------------------------------------------------------------------------------------
 * The library against the reference, every ISA
 * ---------------------------------------------------------------------------------------- */
TEST(window_alone) { RUN_TABLE(window_cases, check_reference); }
TEST(window_with_causal) { RUN_TABLE(window_causal_cases, check_reference); }
TEST(alibi) { RUN_TABLE(alibi_cases, check_reference); }
TEST(softcap) { RUN_TABLE(softcap_cases, check_reference); }
TEST(gqa_window_causal_softcap_padding) { RUN_TABLE(gqa_cases, check_reference); }
TEST(dropout_with_options) { RUN_TABLE(dropout_cases, check_reference); }
TEST(edge_tiles_and_head_dims) { RUN_TABLE(edge_cases, check_reference); }
TEST(long_sequences_skipped_tiles) { RUN_TABLE(long_cases, check_reference); }
TEST(window_fully_masked_rows) { RUN_TABLE(masked_row_cases, check_reference); }

/* Central differences in float64 of loss = sum(out * dout), out from mha's (float32) forward,
 * against mha's backward, for softcap and ALiBi: at the 3 largest gradient elements of q, k
 * and v and 3 random ones. Loose: |fd - g| <= 3e-3 max(1, max|g|) + 2e-2 |g|. The same
 * differences disagree with the gradient lacking tanh's derivative (so the check can fail). */
static const mcase fd_lib_cases[] = {
    {SHAPE(1, 2, 2, 5, 7, 4, 3), .softcap = 1, .qmul = 3},
    {SHAPE(2, 2, 2, 6, 9, 4, 4), .alibi = ALIBI_BATCHED, WIN(3, 1)},
    {SHAPE(1, 4, 1, 7, 5, 3, 3), .softcap = 0.8f, .qmul = 2, .alibi = ALIBI_HEADS, .causal = 2},
};

static double lib_loss(mha_ctx *ctx, prob *pb) {
    if (lib_forward(ctx, pb) != MHA_OK) return NAN;
    double loss = 0;
    for (int64_t e = 0; e < tnumel(pb, T_O); e++)
        loss += (double)pb->t[T_O].data[elem_off(&pb->t[T_O], e)] *
                pb->t[T_DO].data[elem_off(&pb->t[T_DO], e)];
    return loss;
}

static int check_differences(mha_ctx *ctx, prob *pb, const ref *r, const char *name) {
    (void)r;
    if (lib_forward(ctx, pb) != MHA_OK || lib_backward(ctx, pb) != MHA_OK) {
        FAILF("%s: %s", name, mha_ctx_errmsg(ctx));
        return 0;
    }
    ref nod; /* the reference gradient without tanh's derivative */
    ref_make(pb, &nod);
    ref_run(pb, MUT_SOFTCAP_NO_DERIVATIVE, &nod);
    int ok = 1, differs = 0;
    for (int t = T_Q; t <= T_V && ok; t++) {
        mha_tensor *xt = &pb->t[t];
        int64_t n = tnumel(pb, t), pick[6];
        double *g = new_doubles(n), gmax = 1;
        to_double(&pb->t[T_DQ + t], g);
        for (int64_t x = 0; x < n; x++) gmax = fabs(g[x]) > gmax ? fabs(g[x]) : gmax;
        for (int a = 0; a < 6; a++) { /* 3 largest |g|, then 3 random */
            pick[a] = a < 3 ? -1 : (int64_t)(rnd_unit() * (double)n);
            for (int64_t x = 0; x < n && a < 3; x++) {
                int used = 0;
                for (int u = 0; u < a; u++) used |= pick[u] == x;
                if (!used && (pick[a] < 0 || fabs(g[x]) > fabs(g[pick[a]]))) pick[a] = x;
            }
        }
        const double *nodg = t == T_Q ? nod.dq : t == T_K ? nod.dk : nod.dv;
        for (int a = 0; a < 6 && ok; a++) {
            float *xp = xt->data + elem_off(xt, pick[a]), x0 = *xp;
            const double eps = 0x1p-8;
            float hi = (float)(x0 + eps), lo = (float)(x0 - eps);
            *xp = hi;
            double lp = lib_loss(ctx, pb);
            *xp = lo;
            double lm = lib_loss(ctx, pb);
            *xp = x0;
            double fd = (lp - lm) / ((double)hi - (double)lo), want = g[pick[a]];
            double tol = 3e-3 * gmax + 2e-2 * fabs(want);
            if (!(fabs(fd - want) <= tol)) {
                FAILF("%s: d loss / d %s[%lld]: mha's backward %.7g, differences %.7g "
                      "(tolerance %.3g)",
                      name, tname[t], (long long)pick[a], want, fd, tol);
                ok = 0;
            }
            differs |= fabs(fd - nodg[pick[a]]) > 3e-3 * gmax + 2e-2 * fabs(nodg[pick[a]]);
        }
        free(g);
    }
    if (ok && pb->c.softcap > 0 && !differs) {
        FAILF("%s: the differences do not tell the softcap's derivative apart", name);
        ok = 0;
    }
    ref_free(&nod);
    return ok;
}
TEST(finite_differences_through_mha) { RUN_TABLE(fd_lib_cases, check_differences); }

/* Every output and gradient bitwise identical for 1, 2 and 3 threads with every option on. */
static const mcase thread_cases[] = {
    {SHAPE(2, 4, 2, 150, 333, 24, 20), .causal = 2, WIN(40, 5), .alibi = ALIBI_BATCHED,
     .softcap = 3, .qmul = 2, .pad = PAD_RANDOM, .lens = 1, .abool = 1, .afloat = 1, .batched = 1,
     .drop = 0.15f},
    {SHAPE(1, 2, 1, 300, 700, 16, 16), .causal = 1, WIN(32, 0), .alibi = ALIBI_HEADS, .softcap = 2,
     .drop = 0.1f, .bl = 1},
    {SHAPE(1, 1, 1, 700, 700, 32, 32), WIN(64, 64), .alibi = ALIBI_HEADS, .softcap = 4,
     .afloat = 1},
};

static int check_threads(mha_ctx *ctx, prob *pb, const ref *r, const char *name) {
    (void)r;
    float *first[T_N] = {0};
    int ok = 1;
    for (int th = 1; th <= 3 && ok; th++) {
        mha_ctx_set_threads(ctx, th);
        for (int t = T_O; t < T_N; t++) memset(pb->mem[t], 0xff, sizeof(float) * pb->nmem[t]);
        if (lib_forward(ctx, pb) != MHA_OK || lib_backward(ctx, pb) != MHA_OK) {
            FAILF("%s: %d threads: %s", name, th, mha_ctx_errmsg(ctx));
            ok = 0;
        }
        for (int t = T_O; t < T_N && ok; t++) {
            int64_t n = tnumel(pb, t), at = 0;
            float *v = malloc(sizeof(float) * (size_t)(n + 1));
            for (int64_t x = 0; x < n; x++) v[x] = pb->t[t].data[elem_off(&pb->t[t], x)];
            if (th == 1) {
                first[t] = v;
                continue;
            }
            while (at < n && memcmp(&v[at], &first[t][at], sizeof(float)) == 0) at++;
            if (at < n) {
                FAILF("%s: %s with %d threads differs from 1 thread at %lld (%.9g vs %.9g)", name,
                      tname[t], th, (long long)at, v[at], first[t][at]);
                ok = 0;
            }
            free(v);
        }
    }
    mha_ctx_set_threads(ctx, 0);
    for (int t = 0; t < T_N; t++) free(first[t]);
    return ok;
}
TEST(threads_bitwise_identical_all_options) { RUN_TABLE(thread_cases, check_threads); }

/* ------------------------------------------------------------------------------------------
 * Bad input: MHA_ERR_INVALID_ARG naming the field, outputs untouched (forward and backward)
 * ---------------------------------------------------------------------------------------- */
/* Calls forward (which 0) or backward (1) on pb and checks status, message and that no output
 * byte changed. */
static int expect_refused(mha_ctx *ctx, prob *pb, int which, const char *msg) {
    float *saved[T_N];
    for (int t = T_O; t < T_N; t++) {
        for (size_t x = 0; x < pb->nmem[t]; x++) pb->mem[t][x] = (float)(x % 7) - 1234.5f;
        saved[t] = malloc(sizeof(float) * pb->nmem[t]);
        memcpy(saved[t], pb->mem[t], sizeof(float) * pb->nmem[t]);
    }
    mha_status st = which ? lib_backward(ctx, pb) : lib_forward(ctx, pb);
    const char *fn = which ? "mha_attn_backward: " : "mha_attn_forward: ";
    int ok = 1;
    if (st != MHA_ERR_INVALID_ARG) {
        FAILF("%s%s: got status %s (%s), expected invalid argument", fn, msg, mha_status_str(st),
              mha_ctx_errmsg(ctx));
        ok = 0;
    } else if (strncmp(mha_ctx_errmsg(ctx), fn, strlen(fn)) != 0 ||
               !strstr(mha_ctx_errmsg(ctx), msg)) {
        FAILF("message \"%s\", expected \"%s...%s...\"", mha_ctx_errmsg(ctx), fn, msg);
        ok = 0;
    }
    for (int t = T_O; t < T_N; t++) {
        if (ok && memcmp(saved[t], pb->mem[t], sizeof(float) * pb->nmem[t]) != 0) {
            FAILF("%s%s: %s was written", fn, msg, tname[t]);
            ok = 0;
        }
        free(saved[t]);
    }
    return ok;
}

TEST(bad_input) {
    mha_ctx *ctx;
    ASSERT_OK(ctx, mha_ctx_create(&ctx));
    const mcase c = {SHAPE(2, 2, 2, 5, 6, 4, 4), .seed = 9};
    prob pb;
    prob_make(&pb, &c);
    float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
    int ok = 1;
    for (int which = 0; which < 2 && ok; which++) {
        pb.m = mha_mask_default(), pb.m.window = 1, pb.m.window_left = -2;
        ok = ok && expect_refused(ctx, &pb, which, "mask->window_left: got -2");
        pb.m.window_left = 3, pb.m.window_right = INT64_MIN;
        ok = ok && expect_refused(ctx, &pb, which, "mask->window_right: got ");
        pb.m = mha_mask_default(), pb.m.alibi_slopes = slopes, pb.m.alibi_batched = 1;
        slopes[3] = NAN;
        ok = ok && expect_refused(ctx, &pb, which, "mask->alibi_slopes[3]: got ");
        slopes[3] = 0.0625f, slopes[1] = -INFINITY;
        ok = ok && expect_refused(ctx, &pb, which, "mask->alibi_slopes[1]: got -inf");
        slopes[1] = INFINITY, pb.m.alibi_batched = 0;
        ok = ok && expect_refused(ctx, &pb, which, "mask->alibi_slopes[1]: got inf");
        slopes[1] = 0.25f, pb.m.alibi_batched = 2;
        ok = ok && expect_refused(ctx, &pb, which, "mask->alibi_batched: got 2");
        pb.m = mha_mask_default();
        pb.p.softcap = -1;
        ok = ok && expect_refused(ctx, &pb, which, "p->softcap: got -1");
        pb.p.softcap = NAN;
        ok = ok && expect_refused(ctx, &pb, which, "p->softcap: got ");
        pb.p.softcap = INFINITY;
        ok = ok && expect_refused(ctx, &pb, which, "p->softcap: got inf");
        pb.p.softcap = 0;
    }
    /* with `window` 0 the bounds are not read: the result is the unmasked one, bitwise */
    if (ok) {
        size_t no = sizeof(float) * pb.nmem[T_O];
        float *plain = malloc(no);
        pb.m = mha_mask_default();
        ASSERT_OK(ctx, lib_forward(ctx, &pb));
        memcpy(plain, pb.mem[T_O], no);
        pb.m.window_left = -7, pb.m.window_right = -9;
        ASSERT_OK(ctx, lib_forward(ctx, &pb));
        ASSERT_OK(ctx, lib_backward(ctx, &pb));
        ok = memcmp(plain, pb.mem[T_O], no) == 0;
        if (!ok) FAILF("window 0 with bounds (-7, -9) changed out");
        free(plain);
    }
    prob_free(&pb);
    mha_ctx_free(ctx);
}

int main(void) {
    RUN(reference_gradients_finite_differences);
    RUN(reference_catches_mutants);
    RUN(bad_input);
    RUN(window_alone);
    RUN(window_with_causal);
    RUN(alibi);
    RUN(softcap);
    RUN(gqa_window_causal_softcap_padding);
    RUN(dropout_with_options);
    RUN(edge_tiles_and_head_dims);
    RUN(long_sequences_skipped_tiles);
    RUN(window_fully_masked_rows);
    RUN(finite_differences_through_mha);
    RUN(threads_bitwise_identical_all_options);
    return harness_report();
}
