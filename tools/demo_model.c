/* demo_model.c - the model of `mha demo` (see demo_model.h): embeddings, one mha attention
 * layer with its real backward, a linear readout, softmax cross-entropy, Adam. The embedding,
 * readout and loss backward passes are written out here; `mha demo --self-check` compares the
 * whole gradient with finite differences. */
#include "demo_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
    P_TOK,
    P_POS,
    P_RW,
    P_RB,
    P_OWN
}; /* our own parameters; the module's follow */
#define DEMO_MAX_PARAMS 16

struct demo_model {
    demo_config cfg;
    mha_module *attn;
    int nparams;
    demo_param p[DEMO_MAX_PARAMS];
    float *adam_m[DEMO_MAX_PARAMS], *adam_v[DEMO_MAX_PARAMS];
    float *own;                      /* values and grads of our own parameters */
    float *x, *y, *dy, *dx, *logits; /* activations, sized for max_batch */
};

demo_config demo_config_default(void) {
    demo_config c;
    c.vocab = 10;
    c.classes = 10;
    c.len = 8;
    c.embed = 32;
    c.heads = 2;
    c.max_batch = 256;
    c.lr = 1e-2f;
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.dropout = 0.1f;
    c.seed = 1;
    return c;
}

/* ---------------------------------------------------------------------------------------------
 * Random numbers: splitmix64 as a hash of (seed, stream, index), so that any sequence or weight
 * can be produced on its own, in any order, with the same result.
 * ------------------------------------------------------------------------------------------- */
static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t demo_hash(uint64_t seed, uint64_t stream, uint64_t idx) {
    return mix64(mix64(mix64(seed) ^ stream) ^ idx);
}

double demo_unit(uint64_t h) { return (double)(h >> 11) * (1.0 / 9007199254740992.0); }

/* Standard normal (Box-Muller) from two hashes. */
static double normal(uint64_t seed, uint64_t stream, uint64_t idx) {
    double u1 = demo_unit(demo_hash(seed, stream, 2 * idx));
    double u2 = demo_unit(demo_hash(seed, stream, 2 * idx + 1));
    return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

/* ---------------------------------------------------------------------------------------------
 * Creation
 * ------------------------------------------------------------------------------------------- */
int demo_model_param_count(const demo_model *m) { return m->nparams; }
demo_param demo_model_param(const demo_model *m, int i) { return m->p[i]; }
const demo_config *demo_model_config(const demo_model *m) { return &m->cfg; }

void demo_model_free(demo_model *m) {
    if (!m) return;
    mha_module_free(m->attn);
    for (int i = 0; i < DEMO_MAX_PARAMS; i++) {
        free(m->adam_m[i]);
        free(m->adam_v[i]);
    }
    free(m->own);
    free(m->x);
    free(m->y);
    free(m->dy);
    free(m->dx);
    free(m->logits);
    free(m);
}

mha_status demo_model_create(mha_ctx *ctx, const demo_config *cfg, demo_model **out) {
    *out = NULL;
    if (cfg->vocab < 1 || cfg->classes < 2 || cfg->len < 1 || cfg->len > 256 || cfg->embed < 1 ||
        cfg->heads < 1 || cfg->embed % cfg->heads || cfg->max_batch < 1)
        return MHA_ERR_INVALID_ARG;
    demo_model *m = calloc(1, sizeof *m);
    if (!m) return MHA_ERR_NOMEM;
    m->cfg = *cfg;
    const int64_t V = cfg->vocab, C = cfg->classes, L = cfg->len, E = cfg->embed;
    const int64_t B = cfg->max_batch;

    mha_config mc = mha_config_default(E, cfg->heads);
    mc.seed = mix64(cfg->seed ^ 0x6d6861ull);
    mc.dropout = cfg->dropout;
    mha_status st = mha_module_create(ctx, &mc, &m->attn);
    if (st != MHA_OK) {
        demo_model_free(m);
        return st;
    }

    /* Our own parameters, values then grads, in one block. */
    const int64_t own_n[P_OWN] = {V * E, L * E, C * E, C};
    static const char *const own_name[P_OWN] = {"tok_emb", "pos_emb", "readout.weight",
                                                "readout.bias"};
    int64_t total = 0;
    for (int i = 0; i < P_OWN; i++) total += own_n[i];
    m->own = calloc((size_t)(2 * total), sizeof(float));
    m->x = malloc((size_t)(B * L * E) * sizeof(float));
    m->y = malloc((size_t)(B * L * E) * sizeof(float));
    m->dy = malloc((size_t)(B * L * E) * sizeof(float));
    m->dx = malloc((size_t)(B * L * E) * sizeof(float));
    m->logits = malloc((size_t)(B * L * C) * sizeof(float));
    if (!m->own || !m->x || !m->y || !m->dy || !m->dx || !m->logits) {
        demo_model_free(m);
        return MHA_ERR_NOMEM;
    }
    float *vp = m->own, *gp = m->own + total;
    for (int i = 0; i < P_OWN; i++) {
        m->p[i] = (demo_param){own_name[i], vp, gp, own_n[i]};
        vp += own_n[i];
        gp += own_n[i];
    }
    /* nn.Embedding's N(0, 1); nn.Linear's uniform(+-1/sqrt(E)). */
    const uint64_t s = cfg->seed;
    for (int64_t i = 0; i < V * E; i++) m->p[P_TOK].value[i] = (float)normal(s, 1, (uint64_t)i);
    for (int64_t i = 0; i < L * E; i++) m->p[P_POS].value[i] = (float)normal(s, 2, (uint64_t)i);
    const double bound = 1.0 / sqrt((double)E);
    for (int64_t i = 0; i < C * E; i++)
        m->p[P_RW].value[i] =
            (float)((2.0 * demo_unit(demo_hash(s, 3, (uint64_t)i)) - 1.0) * bound);
    for (int64_t i = 0; i < C; i++)
        m->p[P_RB].value[i] =
            (float)((2.0 * demo_unit(demo_hash(s, 4, (uint64_t)i)) - 1.0) * bound);

    /* The attention layer's parameters, as the module names them (in_proj_weight, ...). */
    m->nparams = P_OWN;
    int n = mha_module_param_count(m->attn);
    for (int i = 0; i < n && m->nparams < DEMO_MAX_PARAMS; i++) {
        const char *name = mha_module_param_name(m->attn, i);
        mha_tensor v, g;
        st = mha_module_param(ctx, m->attn, name, &v, &g);
        if (st != MHA_OK) {
            demo_model_free(m);
            return st;
        }
        /* Flat updates need contiguous views. */
        int64_t want = 1;
        for (int d = v.ndim - 1; d >= 0; d--) {
            if ((v.shape[d] > 1 && v.stride[d] != want) ||
                (g.shape[d] > 1 && g.stride[d] != want)) {
                demo_model_free(m);
                return MHA_ERR_UNSUPPORTED;
            }
            want *= v.shape[d];
        }
        m->p[m->nparams++] = (demo_param){name, v.data, g.data, mha_tensor_numel(&v)};
    }
    for (int i = 0; i < m->nparams; i++) {
        m->adam_m[i] = calloc((size_t)m->p[i].numel, sizeof(float));
        m->adam_v[i] = calloc((size_t)m->p[i].numel, sizeof(float));
        if (!m->adam_m[i] || !m->adam_v[i]) {
            demo_model_free(m);
            return MHA_ERR_NOMEM;
        }
    }
    *out = m;
    return MHA_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Forward and backward
 * ------------------------------------------------------------------------------------------- */
/* x[b, i, :] = tok_emb[t[b, i]] + pos_emb[i] */
static void embed_forward(const demo_model *m, int B, const int32_t *tokens) {
    const int L = m->cfg.len, E = m->cfg.embed;
    for (int n = 0; n < B * L; n++) {
        const float *te = m->p[P_TOK].value + (size_t)tokens[n] * E;
        const float *pe = m->p[P_POS].value + (size_t)(n % L) * E;
        float *x = m->x + (size_t)n * E;
        for (int e = 0; e < E; e++) x[e] = te[e] + pe[e];
    }
}

mha_status demo_model_loss(mha_ctx *ctx, demo_model *m, int B, const int32_t *tokens,
                           const int32_t *targets, int backward, double *loss, int64_t *correct,
                           int64_t *answered) {
    const int L = m->cfg.len, E = m->cfg.embed, C = m->cfg.classes, N = B * L;
    if (B < 1 || B > m->cfg.max_batch) return MHA_ERR_INVALID_ARG;
    int64_t A = 0; /* answered positions */
    for (int n = 0; n < N; n++) {
        if (tokens[n] < 0 || tokens[n] >= m->cfg.vocab || targets[n] < -1 || targets[n] >= C)
            return MHA_ERR_INVALID_ARG;
        A += targets[n] >= 0;
    }

    embed_forward(m, B, tokens);
    const int64_t xs[3] = {B, L, E};
    mha_tensor x = mha_tensor_make(m->x, 3, xs), y = mha_tensor_make(m->y, 3, xs);
    mha_forward_opts fo = mha_forward_opts_default();
    fo.save_for_backward = backward ? 1 : 0;
    fo.training = backward ? 1 : 0; /* attention dropout only while training */
    mha_status st = mha_module_forward(ctx, m->attn, &fo, &x, NULL, NULL, NULL, &y, NULL);
    if (st != MHA_OK) return st;

    /* logits[n, c] = rb[c] + sum_e y[n, e] rw[c, e];  loss = mean over the A answered n of
     * (lse_n - logits[n, t_n]). Backward: dlogits[n, c] = (softmax[n, c] - [c == t_n]) / A,
     * 0 where there is no answer, kept in m->logits. */
    const float *rw = m->p[P_RW].value, *rb = m->p[P_RB].value;
    st = mha_sgemm(ctx, 0, 1, N, C, E, 1.0f, m->y, E, rw, E, 0.0f, m->logits, C);
    if (st != MHA_OK) return st;
    double total = 0.0;
    int64_t good = 0;
    for (int n = 0; n < N; n++) {
        float *lg = m->logits + (size_t)n * C;
        int best = 0;
        for (int c = 0; c < C; c++) {
            lg[c] += rb[c];
            if (lg[c] > lg[best]) best = c;
        }
        if (targets[n] < 0) {
            if (backward) memset(lg, 0, (size_t)C * sizeof *lg);
            continue;
        }
        good += best == targets[n];
        /* One exp per class: e_c = exp(logit_c - max), kept for the backward. */
        const float mx = lg[best];
        total -= (double)(lg[targets[n]] - mx);
        double sum = 0.0;
        for (int c = 0; c < C; c++) {
            const float e = expf(lg[c] - mx);
            sum += e;
            if (backward) lg[c] = e;
        }
        total += log(sum);
        if (backward)
            for (int c = 0; c < C; c++)
                lg[c] = (float)(((double)lg[c] / sum - (c == targets[n])) / (double)A);
    }
    if (loss) *loss = A ? total / (double)A : 0.0;
    if (correct) *correct = good;
    if (answered) *answered = A;
    if (!backward) return MHA_OK;

    /* Readout: drw[C, E] += dlogits^T y;  drb[c] += sum_n dlogits[n, c];  dy[N, E] = dlogits rw. */
    float *drb = m->p[P_RB].grad;
    st = mha_sgemm(ctx, 1, 0, C, E, N, 1.0f, m->logits, C, m->y, E, 1.0f, m->p[P_RW].grad, E);
    if (st == MHA_OK) st = mha_sgemm(ctx, 0, 0, N, E, C, 1.0f, m->logits, C, rw, E, 0.0f, m->dy, E);
    if (st != MHA_OK) return st;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) drb[c] += m->logits[(size_t)n * C + c];

    /* The attention layer: dx, and its parameter gradients accumulated by the module. */
    mha_tensor dy = mha_tensor_make(m->dy, 3, xs), dx = mha_tensor_make(m->dx, 3, xs);
    st = mha_module_backward(ctx, m->attn, &dy, &dx, NULL, NULL);
    if (st != MHA_OK) return st;

    /* Embeddings: x = tok_emb[t] + pos_emb[i], so both rows receive dx. */
    float *dtok = m->p[P_TOK].grad, *dpos = m->p[P_POS].grad;
    for (int n = 0; n < N; n++) {
        const float *d = m->dx + (size_t)n * E;
        float *gt = dtok + (size_t)tokens[n] * E, *gp = dpos + (size_t)(n % L) * E;
        for (int e = 0; e < E; e++) {
            gt[e] += d[e];
            gp[e] += d[e];
        }
    }
    return MHA_OK;
}

void demo_model_zero_grad(demo_model *m) {
    for (int i = 0; i < P_OWN; i++) memset(m->p[i].grad, 0, (size_t)m->p[i].numel * sizeof(float));
    mha_module_zero_grad(m->attn);
}

/* Adam (Kingma & Ba), as torch.optim.Adam without weight decay:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) */
void demo_model_adam_step(demo_model *m, int64_t step) {
    const float b1 = m->cfg.beta1, b2 = m->cfg.beta2, lr = m->cfg.lr, eps = m->cfg.eps;
    const float c1 = (float)(1.0 - pow(b1, (double)step));
    const float c2 = (float)(1.0 - pow(b2, (double)step));
    for (int i = 0; i < m->nparams; i++) {
        float *p = m->p[i].value, *mm = m->adam_m[i], *vv = m->adam_v[i];
        const float *g = m->p[i].grad;
        for (int64_t k = 0; k < m->p[i].numel; k++) {
            mm[k] = b1 * mm[k] + (1.0f - b1) * g[k];
            vv[k] = b2 * vv[k] + (1.0f - b2) * g[k] * g[k];
            p[k] -= lr * (mm[k] / c1) / (sqrtf(vv[k] / c2) + eps);
        }
    }
}

const mha_module *demo_model_attn(const demo_model *m) { return m->attn; }

mha_status demo_model_embed(const demo_model *m, const int32_t *tokens, float *x) {
    const int L = m->cfg.len, E = m->cfg.embed;
    for (int i = 0; i < L; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab) return MHA_ERR_INVALID_ARG;
    embed_forward(m, 1, tokens);
    if (x) memcpy(x, m->x, (size_t)L * E * sizeof *x);
    return MHA_OK;
}

mha_status demo_model_attention(mha_ctx *ctx, demo_model *m, const int32_t *tokens,
                                float *weights) {
    const int L = m->cfg.len, E = m->cfg.embed, H = m->cfg.heads;
    mha_status st = demo_model_embed(m, tokens, NULL);
    if (st != MHA_OK) return st;
    const int64_t xs[3] = {1, L, E}, ws[4] = {1, H, L, L};
    mha_tensor x = mha_tensor_make(m->x, 3, xs), y = mha_tensor_make(m->y, 3, xs);
    mha_tensor w = mha_tensor_make(weights, 4, ws);
    mha_forward_opts fo = mha_forward_opts_default();
    fo.average_weights = 0;
    fo.save_for_backward = 0;
    return mha_module_forward(ctx, m->attn, &fo, &x, NULL, NULL, NULL, &y, &w);
}
