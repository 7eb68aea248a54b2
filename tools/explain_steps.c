/* explain_steps.c - the steps of `mha explain`: for each, its title, shape, formula, one
 * sentence on why, and its numbers (batch 0, the first heads, a window of a long input), from
 * an ex_run that explain_math.c computed. The same calls write the terminal text and the HTML
 * page (explain_out.c). */
#include "explain.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A matrix view as a table. */
static void table(ex_out *o, const char *title, ex_mat m, const char *const *rl,
                  const char *const *cl, ex_scale sc) {
    const ex_table t = {title, m.v, m.rows, m.cols, m.ld, rl, cl, sc, 0, 0};
    ex_table_write(o, &t);
}

static int64_t heads_shown(const ex_run *r) {
    return r->H < EX_HEADS_SHOWN ? r->H : EX_HEADS_SHOWN;
}

/* The labels of the keys: their own tokens, or the queries' for self-attention. */
static const char *const *key_labels(const ex_run *r, const ex_show *sh) {
    return sh->ktok ? sh->ktok : r->cross ? NULL : sh->qtok;
}

/* Batch 0's rows of a [B*N, F] matrix. */
static ex_mat batch0(ex_mat m, int64_t n) { return ex_view(m, 0, 0, n, m.cols); }
/* Head h of batch 0 in a [B*N, E] matrix, and in a stacked [B*H*L, S] one. */
static ex_mat head(const ex_run *r, ex_mat m, int64_t n, int64_t h) {
    return ex_view(m, 0, h * r->D, n, r->D);
}
static ex_mat head_scores(const ex_run *r, ex_mat m, int64_t h) {
    return ex_view(m, h * r->L, 0, r->L, m.cols);
}

/* Says which heads are not shown, if any. */
static void heads_note(ex_out *o, const ex_run *r) {
    if (r->H > heads_shown(r))
        ex_text(o, EX_NOTE, "heads %lld to %lld are computed and checked too, not shown",
                (long long)heads_shown(r), (long long)r->H - 1);
}

/* Tables of one quantity per shown head: "<name> (head h)". */
static void per_head(ex_out *o, const ex_run *r, const char *name, ex_mat m, int scores, int64_t n,
                     const char *const *rl, const char *const *cl, ex_scale sc) {
    char title[64];
    for (int64_t h = 0; h < heads_shown(r); h++) {
        snprintf(title, sizeof title, "%s (head %lld)", name, (long long)h);
        table(o, title, scores ? head_scores(r, m, h) : head(r, m, n, h), rl, cl, sc);
    }
    heads_note(o, r);
}

/* The names of the projections' parameters in PyTorch's state_dict. */
static const char *in_proj_names(const ex_run *r) {
    const int in_proj = r->kdim == r->E && r->vdim == r->E;
    if (!r->bias)
        return in_proj ? "Wq, Wk, Wv are rows 0..E-1, E..2E-1, 2E..3E-1 of in_proj_weight [3E, E]; "
                         "the layer has no biases (bq = bk = bv = bo = 0)"
                       : "Wq, Wk, Wv are q_proj_weight [E, E], k_proj_weight [E, kdim], "
                         "v_proj_weight [E, vdim]; the layer has no biases (bq = bk = bv = bo = 0)";
    return in_proj ? "Wq, Wk, Wv are rows 0..E-1, E..2E-1, 2E..3E-1 of in_proj_weight [3E, E] "
                     "and bq, bk, bv the same parts of in_proj_bias"
                   : "Wq, Wk, Wv are q_proj_weight [E, E], k_proj_weight [E, kdim], "
                     "v_proj_weight [E, vdim]; bq, bk, bv the parts of in_proj_bias [3E]";
}

/* ---------------------------------------------------------------------------------------------
 * The words of each step: title, formula (NULL: the step writes its own from the run) and why
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    const char *title, *formula, *why;
} step_words;

static const step_words words[EX_LAST_STEP + 1] = {
    [1] = {"Input", "x[i] = the vector of E numbers that stands for token i",
           "Attention works on vectors: each token enters as one row of features, and everything "
           "below is arithmetic on these rows."},
    [2] = {"Q, K, V projections", NULL,
           "Each token asks with a query, is matched by its key and carries its value: three "
           "learned linear maps of the input, so the layer learns what to look for, what to be "
           "found by and what to pass on."},
    [3] = {"Split into heads", "Q_h = Q[:, h*d : (h+1)*d]   (K_h and V_h likewise)",
           "Each head attends with its own slice of d features, so H heads can look for H "
           "different things for the cost of one; it is a reshape, no number changes."},
    [4] = {"Scores Q K^T",
           "scores_h[i, j] = Q_h[i] . K_h[j] = sum over c < d of Q_h[i, c] K_h[j, c]",
           "A dot product is large when query i and key j point the same way: one number per "
           "(query, key) pair says how well they match."},
    [5] = {"Scale", NULL,
           "A sum of d products grows like sqrt(d): dividing by it keeps the scores near 1 "
           "whatever d is, so the softmax does not saturate into one-hot rows whose gradients "
           "vanish."},
    [6] = {"Mask",
           "scores_h[i, j] = -inf where a mask excludes key j for query i;\n"
           "a float mask is added instead",
           "A masked key must get weight exactly 0, and exp(-inf) = 0: a causal mask keeps a "
           "token from seeing the ones after it, a padding mask hides filler positions."},
    [7] = {"Softmax",
           "P_h[i, j] = exp(s_ij - m_i) / sum over j' of exp(s_ij' - m_i)\n"
           "m_i = max over j of s_ij",
           "It turns each row of scores into weights that are positive and sum to 1; "
           "subtracting the row's maximum first changes nothing mathematically and keeps exp "
           "from overflowing."},
    [8] = {"Weights x V", "O_h = P_h V_h:  O_h[i] = sum over j of P_h[i, j] V_h[j]",
           "Each query's output is the average of the values weighted by its attention: a token "
           "gathers what the tokens it attends to carry."},
    [9] = {"Concatenate heads", NULL,
           "The heads' findings sit side by side again, E features per token: the reverse "
           "reshape of step 3, no arithmetic."},
    [10] = {"Output projection",
            "y = O Wo^T + bo   (Wo: out_proj.weight [E, E], bo: out_proj.bias)",
            "A last learned linear map mixes what the heads found into one vector per token: the "
            "layer's output, what mha forward writes and torch.nn.MultiheadAttention returns."},
    [11] = {"Output gradient", "dy = dLoss/dy, the gradient of some loss with respect to y",
            "Backpropagation starts from how the loss changes with the layer's output and runs "
            "every step backwards with the chain rule."},
    [12] = {"Back through the output projection",
            "dO = dy Wo,  dWo = dy^T O,  dbo = sum over rows of dy",
            "For y = O Wo^T + bo the gradient reaches O through Wo, and Wo's gradient is what it "
            "multiplied (summed over every token, and over the batch)."},
    [13] = {"Split dO into heads", "dO_h = dO[:, h*d : (h+1)*d]",
            "The concatenation of step 9 only placed the heads side by side, so its gradient "
            "only takes them apart again."},
    [14] = {"Back through weights x V", "dV_h = P_h^T dO_h,  dP_h = dO_h V_h^T",
            "O_h = P_h V_h is a matrix product: each factor's gradient is the output's gradient "
            "times the other factor, transposed."},
    [15] = {"Back through the softmax",
            "D_i = sum over j of P_ij dP_ij = dO_i . O_i\n"
            "dS_h[i, j] = P_h[i, j] (dP_h[i, j] - D_i)",
            "The softmax's Jacobian is diag(P) - P P^T, and applied to dP it gives this; "
            "FlashAttention computes D_i as dO_i . O_i, which needs no row of P, and masked keys "
            "(P = 0) get no gradient."},
    [16] = {"Back through the scale and Q K^T", NULL,
            "The scaled scores are again a product, scale Q_h K_h^T: the same rule as step 14, "
            "with the scale carried along."},
    [17] = {"Concatenate the heads' gradients", NULL,
            "The reverse of step 3's split: each head's gradient goes back to its own d "
            "columns."},
    [18] = {"Back through the projections", NULL, NULL},
};

/* Starts step n: its section, then its shape (printf-style), formula (the table's, or the
 * given one) and why (likewise). */
static void begin(ex_out *o, int n, const char *formula, const char *why, const char *shape, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;
static void begin(ex_out *o, int n, const char *formula, const char *why, const char *shape, ...) {
    char id[16], buf[256];
    snprintf(id, sizeof id, "step-%d", n);
    ex_section(o, n, id, words[n].title);
    va_list ap;
    va_start(ap, shape);
    vsnprintf(buf, sizeof buf, shape, ap);
    va_end(ap);
    ex_text(o, EX_SHAPE, "%s", buf);
    ex_text(o, EX_FORMULA, "%s", formula ? formula : words[n].formula);
    ex_text(o, EX_WHY, "%s", why ? why : words[n].why);
}

/* "[H, L, S] = [2, 6, 6]" and the like. */
#define LL(x) ((long long)(x))

/* ---------------------------------------------------------------------------------------------
 * Forward: steps 1 - 10
 * ------------------------------------------------------------------------------------------- */
static void step_input(ex_out *o, const ex_run *r, const ex_show *sh) {
    if (r->cross)
        begin(o, 1, NULL, NULL,
              "query x [L, E] = [%lld, %lld], key [S, kdim] = [%lld, %lld], value [S, vdim] = "
              "[%lld, %lld]",
              LL(r->L), LL(r->E), LL(r->S), LL(r->kdim), LL(r->S), LL(r->vdim));
    else begin(o, 1, NULL, NULL, "x [L, E] = [%lld, %lld]", LL(r->L), LL(r->E));
    if (sh->input_note) ex_text(o, EX_NOTE, "%s", sh->input_note);
    if (r->B > 1 || r->L > EX_WINDOW || r->S > EX_WINDOW || r->E > EX_WINDOW)
        ex_text(o, EX_NOTE,
                "showing batch 0 of %lld and at most the first %d tokens, features and keys of "
                "each matrix; every number of every batch is computed and checked",
                LL(r->B), EX_WINDOW);
    table(o, "x", batch0(r->x, r->L), sh->qtok, NULL, EX_SIGNED);
    if (r->cross) {
        table(o, "key input", batch0(r->xk, r->S), sh->ktok, NULL, EX_SIGNED);
        table(o, "value input", batch0(r->xv, r->S), sh->ktok, NULL, EX_SIGNED);
    }
}

static void step_projections(ex_out *o, const ex_run *r, const ex_show *sh) {
    const char *const *kl = key_labels(r, sh);
    begin(o, 2,
          r->cross ? "Q = x Wq^T + bq,  K = key Wk^T + bk,  V = value Wv^T + bv"
                   : "Q = x Wq^T + bq,  K = x Wk^T + bk,  V = x Wv^T + bv",
          NULL, "Q [L, E] = [%lld, %lld], K and V [S, E] = [%lld, %lld]", LL(r->L), LL(r->E),
          LL(r->S), LL(r->E));
    ex_text(o, EX_NOTE, "%s (PyTorch's layout).", in_proj_names(r));
    table(o, "Q", batch0(r->q, r->L), sh->qtok, NULL, EX_SIGNED);
    table(o, "K", batch0(r->k, r->S), kl, NULL, EX_SIGNED);
    table(o, "V", batch0(r->v, r->S), kl, NULL, EX_SIGNED);
}

static void step_split(ex_out *o, const ex_run *r, const ex_show *sh) {
    const char *const *kl = key_labels(r, sh);
    begin(o, 3, NULL, NULL, "Q_h [H, L, d] = [%lld, %lld, %lld], d = E / H = %lld / %lld = %lld",
          LL(r->H), LL(r->L), LL(r->D), LL(r->E), LL(r->H), LL(r->D));
    for (int64_t h = 0; h < heads_shown(r); h++) {
        char t[3][32];
        snprintf(t[0], sizeof t[0], "Q (head %lld)", LL(h));
        snprintf(t[1], sizeof t[1], "K (head %lld)", LL(h));
        snprintf(t[2], sizeof t[2], "V (head %lld)", LL(h));
        table(o, t[0], head(r, r->q, r->L, h), sh->qtok, NULL, EX_SIGNED);
        table(o, t[1], head(r, r->k, r->S, h), kl, NULL, EX_SIGNED);
        table(o, t[2], head(r, r->v, r->S, h), kl, NULL, EX_SIGNED);
    }
    heads_note(o, r);
}

static void step_scores(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 4, NULL, NULL, "[H, L, S] = [%lld, %lld, %lld]", LL(r->H), LL(r->L), LL(r->S));
    per_head(o, r, "Q K^T", r->raw, 1, 0, sh->qtok, key_labels(r, sh), EX_SIGNED);
}

static void step_scale(ex_out *o, const ex_run *r, const ex_show *sh) {
    char f[128];
    if (sh->scale_given)
        snprintf(f, sizeof f, "scores_h * scale,  scale = %.6g (--scale)", r->scale);
    else
        snprintf(f, sizeof f, "scores_h * scale,  scale = 1 / sqrt(d) = 1 / sqrt(%lld) = %.6g",
                 LL(r->D), r->scale);
    begin(o, 5, f, NULL, "[H, L, S] = [%lld, %lld, %lld]", LL(r->H), LL(r->L), LL(r->S));
    ex_text(o, EX_NOTE,
            "mha multiplies q by the scale before the product, (scale q) . k: the same number, "
            "and finite whenever the scaled product is.");
    per_head(o, r, "scaled scores", r->scaled, 1, 0, sh->qtok, key_labels(r, sh), EX_SIGNED);
}

static void step_mask(ex_out *o, const ex_run *r, const ex_show *sh) {
    const mha_mask *m = &r->mask;
    begin(o, 6, NULL, NULL, "[H, L, S] = [%lld, %lld, %lld]", LL(r->H), LL(r->L), LL(r->S));
    if (!ex_has_mask(r)) {
        ex_text(o, EX_NOTE,
                "no mask here: every query sees every key, and the scores of step 5 go on "
                "unchanged (try --causal)");
        return;
    }
    if (m->causal == MHA_CAUSAL_TOP_LEFT)
        ex_text(o, EX_NOTE, "--causal (PyTorch's, top-left): key j is excluded when j > i");
    if (m->causal == MHA_CAUSAL_BOTTOM_RIGHT)
        ex_text(o, EX_NOTE,
                "--causal-bottom-right (FlashAttention's): key j is excluded when j > i + (S - L) "
                "= i + %lld",
                LL(r->S - r->L));
    if (m->key_padding)
        ex_text(o, EX_NOTE,
                "--key-padding-mask: the keys marked true are excluded for every query");
    if (m->attn_bool) ex_text(o, EX_NOTE, "--attn-mask (bool): true = excluded");
    if (m->attn_float) ex_text(o, EX_NOTE, "--attn-mask (float): added to the scaled scores");
    per_head(o, r, "masked scores", r->masked, 1, 0, sh->qtok, key_labels(r, sh), EX_SIGNED);
}

/* Rows of batch 0 in which every key is masked (their weights are all 0). */
static int64_t masked_rows(const ex_run *r) {
    int64_t n = 0;
    for (int64_t i = 0; i < r->H * r->L; i++) {
        int all = 1;
        for (int64_t j = 0; j < r->S && all; j++) all = r->masked.v[i * r->S + j] == -INFINITY;
        n += all;
    }
    return n;
}

static void step_softmax(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 7, NULL, NULL, "P [H, L, S] = [%lld, %lld, %lld]", LL(r->H), LL(r->L), LL(r->S));
    const int64_t dead = masked_rows(r);
    if (dead)
        ex_text(o, EX_NOTE,
                "%lld row(s) have every key masked: nothing to weigh, so their weights are 0 "
                "(mha's rule, as F.scaled_dot_product_attention; nn.MultiheadAttention with "
                "need_weights gives NaN)",
                LL(dead));
    per_head(o, r, "P", r->p, 1, 0, sh->qtok, key_labels(r, sh), EX_PROB);
    if (r->L <= EX_WINDOW && r->S <= EX_WINDOW && r->H <= EX_HEADS_SHOWN) return;
    float *w = malloc((size_t)(r->H * r->L * r->S) * sizeof(float));
    if (!w) {
        o->viz_status = MHA_ERR_NOMEM;
        o->fail_msg = "the heatmaps' weights: out of memory";
        return;
    }
    for (int64_t i = 0; i < r->H * r->L * r->S; i++) w[i] = (float)r->p.v[i];
    ex_text(o, EX_NOTE, "every head's weights (batch 0) as heatmaps:");
    ex_heatmap(o, w, r->H, r->L, r->S, sh->qtok, sh->ktok, r->cross);
    free(w);
}

static void step_weights_v(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 8, NULL, NULL, "O_h [H, L, d] = [%lld, %lld, %lld]", LL(r->H), LL(r->L), LL(r->D));
    per_head(o, r, "O", r->o, 0, r->L, sh->qtok, NULL, EX_SIGNED);
}

/* "X = [X_0 | X_1]", "X = [X_0 | ... | X_7]": the concatenation of H heads. */
static void concat_formula(char *buf, size_t cap, const char *x, int64_t H, const char *rest) {
    snprintf(buf, cap, "%s = [%s_0 | %s%s_%lld]   %s", x, x, H > 2 ? "... | " : "", x, LL(H - 1),
             rest);
}

static void step_concat(ex_out *o, const ex_run *r, const ex_show *sh) {
    char f[128];
    concat_formula(f, sizeof f, "O", r->H, "(side by side, d columns each)");
    begin(o, 9, f, NULL, "O [L, E] = [%lld, %lld]", LL(r->L), LL(r->E));
    table(o, "O", batch0(r->o, r->L), sh->qtok, NULL, EX_SIGNED);
}

static void step_output(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 10, NULL, NULL, "y [L, E] = [%lld, %lld]", LL(r->L), LL(r->E));
    table(o, "y", batch0(r->y, r->L), sh->qtok, NULL, EX_SIGNED);
}

/* ---------------------------------------------------------------------------------------------
 * Backward: steps 11 - 18
 * ------------------------------------------------------------------------------------------- */
static void step_dy(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 11, NULL, NULL, "dy [L, E] = [%lld, %lld]", LL(r->L), LL(r->E));
    if (sh->dy_note) ex_text(o, EX_NOTE, "%s", sh->dy_note);
    table(o, "dy", batch0(r->dy, r->L), sh->qtok, NULL, EX_SIGNED);
}

static void step_dout_proj(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 12, NULL, NULL, "dO [L, E], dWo [E, E], dbo [E]");
    table(o, "dO", batch0(r->do_, r->L), sh->qtok, NULL, EX_SIGNED);
    table(o, "dWo (out_proj.weight)", r->dwo, NULL, NULL, EX_SIGNED);
    table(o, "dbo (out_proj.bias)", r->dbo, NULL, NULL, EX_SIGNED);
}

static void step_dsplit(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 13, NULL, NULL, "dO_h [H, L, d] = [%lld, %lld, %lld]", LL(r->H), LL(r->L), LL(r->D));
    per_head(o, r, "dO", r->do_, 0, r->L, sh->qtok, NULL, EX_SIGNED);
}

static void step_dpv(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 14, NULL, NULL, "dV_h [H, S, d], dP_h [H, L, S]");
    per_head(o, r, "dV", r->dv, 0, r->S, key_labels(r, sh), NULL, EX_SIGNED);
    per_head(o, r, "dP", r->dp, 1, 0, sh->qtok, key_labels(r, sh), EX_SIGNED);
}

static void step_dsoftmax(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 15, NULL, NULL, "D [H, L], dS_h [H, L, S]");
    char title[48];
    for (int64_t h = 0; h < heads_shown(r); h++) {
        snprintf(title, sizeof title, "D (head %lld)", LL(h));
        table(o, title, ex_view(r->drow, h * r->L, 0, r->L, 1), sh->qtok, NULL, EX_SIGNED);
    }
    per_head(o, r, "dS", r->ds, 1, 0, sh->qtok, key_labels(r, sh), EX_SIGNED);
}

static void step_dqk(ex_out *o, const ex_run *r, const ex_show *sh) {
    char f[128];
    snprintf(f, sizeof f, "dQ_h = scale dS_h K_h,  dK_h = scale dS_h^T Q_h   (scale = %.6g)",
             r->scale);
    begin(o, 16, f, NULL, "dQ_h [H, L, d], dK_h [H, S, d]");
    per_head(o, r, "dQ", r->dq, 0, r->L, sh->qtok, NULL, EX_SIGNED);
    per_head(o, r, "dK", r->dk, 0, r->S, key_labels(r, sh), NULL, EX_SIGNED);
}

static void step_dconcat(ex_out *o, const ex_run *r, const ex_show *sh) {
    const char *const *kl = key_labels(r, sh);
    char f[128];
    concat_formula(f, sizeof f, "dQ", r->H, "(dK and dV likewise)");
    begin(o, 17, f, NULL, "dQ [L, E], dK and dV [S, E]");
    table(o, "dQ", batch0(r->dq, r->L), sh->qtok, NULL, EX_SIGNED);
    table(o, "dK", batch0(r->dk, r->S), kl, NULL, EX_SIGNED);
    table(o, "dV", batch0(r->dv, r->S), kl, NULL, EX_SIGNED);
}

static void step_dproj(ex_out *o, const ex_run *r, const ex_show *sh) {
    begin(o, 18,
          r->cross ? "dquery = dQ Wq,  dkey = dK Wk,  dvalue = dV Wv\n"
                     "dWq = dQ^T x,  dWk = dK^T key,  dWv = dV^T value\n"
                     "dbq, dbk, dbv = sums over rows of dQ, dK, dV"
                   : "dx = dQ Wq + dK Wk + dV Wv\n"
                     "dWq = dQ^T x,  dWk = dK^T x,  dWv = dV^T x\n"
                     "dbq, dbk, dbv = sums over rows of dQ, dK, dV",
          r->cross ? "Each input fed one projection, so its gradient comes back through that "
                     "projection's weights alone."
                   : "In self-attention x fed all three projections, so its gradient is the sum "
                     "of the three paths back.",
          "dx [L, E]; dWq [E, E], dWk [E, kdim], dWv [E, vdim]; dbq, dbk, dbv [E]");
    ex_text(o, EX_NOTE, "%s; PyTorch accumulates the parameter gradients, as mha does.",
            in_proj_names(r));
    if (r->bias)
        ex_text(o, EX_NOTE,
                "dbk is 0 up to rounding: adding one vector to every key shifts all the scores "
                "of a row by the same amount, which the softmax ignores.");
    if (r->cross) {
        table(o, "dquery", batch0(r->dx, r->L), sh->qtok, NULL, EX_SIGNED);
        table(o, "dkey", batch0(r->dxk, r->S), sh->ktok, NULL, EX_SIGNED);
        table(o, "dvalue", batch0(r->dxv, r->S), sh->ktok, NULL, EX_SIGNED);
    } else {
        table(o, "dx", batch0(r->dx, r->L), sh->qtok, NULL, EX_SIGNED);
    }
    const struct {
        const char *title;
        ex_mat m;
    } params[] = {{"dWq", r->dwq}, {"dWk", r->dwk}, {"dWv", r->dwv},
                  {"dbq", r->dbq}, {"dbk", r->dbk}, {"dbv", r->dbv}};
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
        table(o, params[i].title, params[i].m, NULL, NULL, EX_SIGNED);
}

/* Every step's function, by number. */
typedef void (*step_fn)(ex_out *o, const ex_run *r, const ex_show *sh);
static const step_fn step_fns[EX_LAST_STEP + 1] = {
    NULL,          step_input, step_projections, step_split,     step_scores,
    step_scale,    step_mask,  step_softmax,     step_weights_v, step_concat,
    step_output,   step_dy,    step_dout_proj,   step_dsplit,    step_dpv,
    step_dsoftmax, step_dqk,   step_dconcat,     step_dproj,
};

void ex_steps(ex_out *o, const ex_run *r, const ex_show *sh, int first, int last) {
    for (int n = first; n <= last; n++) step_fns[n](o, r, sh);
}

/* ---------------------------------------------------------------------------------------------
 * The tiles: FlashAttention-2's forward of head 0, tile by tile
 * ------------------------------------------------------------------------------------------- */
#define TRACE_COLS_MAX 40

typedef struct {
    ex_out *o;
    const ex_run *r;
    const ex_show *sh;
    double *trace; /* [br, bc + 5 + D] one visit's table */
} tile_ctx;

/* The rows (or keys) n0 .. n0 + n - 1 with their labels: "rows 0-1 (the, cat)", each label
 * cut to 12 characters (ex_label); the labels that do not fit in cap end the list with ", ...)"
 * (the list is always closed). */
static void span(char *buf, size_t cap, const char *what, int64_t n0, int64_t n,
                 const char *const *lab) {
    int k = snprintf(buf, cap, "%s %lld-%lld", what, (long long)n0, (long long)(n0 + n - 1));
    if (n == 1) k = snprintf(buf, cap, "%s %lld", what, (long long)n0);
    static const char more[] = ", ...)";
    if (!lab || k < 0 || (size_t)k + sizeof more > cap) return;
    size_t at = (size_t)k;
    for (int64_t i = 0; i < n; i++) {
        char one[64];
        ex_label(one, sizeof one, lab, n0 + i, 12);
        const size_t len = strlen(one), last = i == n - 1;
        /* this label, and room after it for ", ...)" (or its ")" when it is the last) */
        if (at + 2 + len + (last ? 1 : sizeof more - 1) >= cap) {
            snprintf(buf + at, cap - at, "%s", i ? more : " (...)");
            return;
        }
        at += (size_t)snprintf(buf + at, cap - at, "%s%s%s", i ? ", " : " (", one, last ? ")" : "");
    }
}

/* Column labels of a trace table: "s2", "m_old", "acc0", ... */
typedef struct {
    char text[TRACE_COLS_MAX][24];
    const char *ptr[TRACE_COLS_MAX];
    int n;
} col_labels;

/* Adds "<name><index>" (index < 0: just name). */
static void col_add(col_labels *c, const char *name, int64_t index) {
    if (c->n == TRACE_COLS_MAX) return;
    if (index < 0) snprintf(c->text[c->n], sizeof c->text[0], "%s", name);
    else snprintf(c->text[c->n], sizeof c->text[0], "%s%lld", name, (long long)index);
    c->ptr[c->n] = c->text[c->n];
    c->n++;
}

/* A trace table of the block's rows (labelled by their tokens) with the given columns. */
static void trace_table(const tile_ctx *c, const ex_tile *t, const char *title,
                        const col_labels *cols) {
    const char *const *rl = c->sh->qtok ? c->sh->qtok + t->r0 : NULL;
    const ex_table tab = {title, c->trace,  t->br,    cols->n, cols->n,
                          rl,    cols->ptr, EX_PLAIN, t->br,   cols->n};
    ex_table_write(c->o, &tab);
}

/* One visit as a table: the tile's scores, then m_old, m_new, rescale, l and acc per row. A tile
 * of a long input (S > 224: 8 tiles of more than 28 keys) has more scores than a table has
 * columns: the first ns are shown, and the title says so. */
static void tile_table(const tile_ctx *c, const ex_tile *t, const char *keys) {
    const int64_t D = c->r->D, shown = D < EX_WINDOW ? D : EX_WINDOW;
    const int64_t ns = t->bc < TRACE_COLS_MAX - 4 - shown ? t->bc : TRACE_COLS_MAX - 4 - shown;
    col_labels cols = {.n = 0};
    for (int64_t j = 0; j < ns; j++) col_add(&cols, "s", t->c0 + j);
    col_add(&cols, "m_old", -1);
    col_add(&cols, "m_new", -1);
    col_add(&cols, "rescale", -1);
    col_add(&cols, "l", -1);
    for (int64_t d = 0; d < shown; d++) col_add(&cols, "acc", d);
    for (int64_t i = 0; i < t->br; i++) {
        double *row = c->trace + i * cols.n;
        for (int64_t j = 0; j < ns; j++) row[j] = t->s[i * t->bc + j];
        row[ns] = t->m_old[i];
        row[ns + 1] = t->m_new[i];
        row[ns + 2] = t->alpha[i];
        row[ns + 3] = t->l[i];
        for (int64_t d = 0; d < shown; d++) row[ns + 4 + d] = t->acc[i * D + d];
    }
    char title[192];
    if (ns < t->bc)
        snprintf(title, sizeof title, "tile %s (the scores of its first %lld keys shown)", keys,
                 (long long)ns);
    else snprintf(title, sizeof title, "tile %s", keys);
    trace_table(c, t, title, &cols);
}

/* The block is done: O = acc / l, and the log-sum-exp the backward keeps. */
static void block_done(const tile_ctx *c, const ex_tile *t, const char *rows) {
    const int64_t D = c->r->D, shown = D < EX_WINDOW ? D : EX_WINDOW;
    col_labels cols = {.n = 0};
    for (int64_t d = 0; d < shown; d++) col_add(&cols, "O", d);
    col_add(&cols, "lse", -1);
    for (int64_t i = 0; i < t->br; i++) {
        double *row = c->trace + i * cols.n;
        for (int64_t d = 0; d < shown; d++) row[d] = t->l[i] > 0 ? t->acc[i * D + d] / t->l[i] : 0;
        row[shown] = t->l[i] > 0 ? t->m_new[i] + log(t->l[i]) : -INFINITY;
    }
    char title[160];
    snprintf(title, sizeof title, "%s done: O = acc / l, lse = m + log(l)", rows);
    trace_table(c, t, title, &cols);
}

static void tile_visit(void *arg, const ex_tile *t) {
    const tile_ctx *c = arg;
    char rows[96], keys[96];
    span(rows, sizeof rows, "rows", t->r0, t->br, c->sh->qtok);
    span(keys, sizeof keys, "keys", t->c0, t->bc, key_labels(c->r, c->sh));
    if (t->c0 == 0) ex_text(c->o, EX_NOTE, "query block %s: m = -inf, l = 0, acc = 0", rows);
    if (t->skipped)
        ex_text(c->o, EX_NOTE,
                "tile %s: every key is masked for these rows: skipped, nothing "
                "computed",
                keys);
    else tile_table(c, t, keys);
    if (t->last) block_done(c, t, rows);
}

void ex_steps_tiles(ex_out *o, const ex_run *r, const ex_show *sh, double tiles_diff,
                    const ex_cmp *core) {
    const int64_t br = sh->tile_rows, bc = sh->tile_keys;
    ex_section(o, 0, "tiles", "How the fused kernel computes it: FlashAttention-2 tiles");
    ex_text(o, EX_SHAPE,
            "query blocks of %lld rows, key tiles of %lld keys: at most a "
            "[%lld, %lld] tile of scores exists at any time, never the [%lld, %lld] matrix",
            (long long)br, (long long)bc, (long long)br, (long long)bc, (long long)r->L,
            (long long)r->S);
    ex_text(o, EX_FORMULA,
            "for each block of query rows:       m = -inf, l = 0, acc = 0\n"
            "  for each tile of keys:            s = scale Q_blk K_tile^T, masked\n"
            "    m_new = max(m, rowmax(s)),      rescale = exp(m - m_new)\n"
            "    p = exp(s - m_new),             l = rescale l + rowsum(p)\n"
            "    acc = rescale acc + p V_tile,   m = m_new\n"
            "  O_blk = acc / l,                  lse = m + log(l)   (kept for the backward)");
    ex_text(o, EX_WHY,
            "The running max m and sum l let each new tile rescale what was summed so "
            "far, so the result is exactly softmax(scores) V without ever storing the L x S "
            "scores: memory linear in L, and the tiles stay in cache.");
    ex_text(o, EX_NOTE,
            "head 0 of batch 0, with Q, K, V of steps 2-3 (mha explain --step 3); "
            "mha's kernels run the same loop in float32 with larger tiles (mha info)");
    table(o, "Q (head 0)", head(r, r->q, r->L, 0), sh->qtok, NULL, EX_SIGNED);
    table(o, "K (head 0)", head(r, r->k, r->S, 0), key_labels(r, sh), NULL, EX_SIGNED);
    table(o, "V (head 0)", head(r, r->v, r->S, 0), key_labels(r, sh), NULL, EX_SIGNED);
    const int64_t shown = r->D < EX_WINDOW ? r->D : EX_WINDOW;
    tile_ctx c = {o, r, sh, malloc((size_t)(br * (bc + 5 + shown)) * sizeof(double))};
    /* only the blocks of the first rows are written (a long input would fill pages) */
    const int64_t rows = r->L < EX_WINDOW ? r->L : EX_WINDOW;
    if (c.trace && ex_tiles(r, 0, 0, rows, br, bc, NULL, 0, NULL, tile_visit, &c) == 0) {
        if (rows < r->L)
            ex_text(o, EX_NOTE,
                    "the blocks of rows %lld to %lld are computed the same way, not "
                    "shown",
                    (long long)rows, (long long)r->L - 1);
    } else {
        o->viz_status = MHA_ERR_NOMEM;
        o->fail_msg = "the tiles' trace: out of memory";
    }
    free(c.trace);
    ex_text(o, EX_NOTE,
            "every head's tiles give step 8's O: max |O_tiles - O_steps| = %.3g "
            "(both in double: the two orders of summation differ by rounding)",
            tiles_diff);
    ex_text(o, EX_NOTE,
            "mha_attn_forward, mha's fused attention core, on the same Q, K, V in "
            "float32: max |diff| = %.3g (float32 rounding bound up to %.3g)",
            core->max_diff, core->max_bound);
}
