/* cmd_explain.c - `mha explain`: one attention computation walked through step by step (input,
 * Q, K, V, heads, scores, scale, mask, softmax, weights x V, concatenation, output projection;
 * with --backward every gradient; with --tiles FlashAttention-2's online softmax), on a
 * built-in example or the user's layer and input, ending with a check against mha's fused
 * kernel. The steps are computed in explain_math.c and written by explain_steps.c; this file
 * parses the options, builds the layer, runs the library and checks.
 *
 *   mha explain [--causal | --causal-bottom-right] [--step N] [--backward | --tiles]
 *               [--html FILE]
 *   mha explain --weights W [--heads H] --query X.npy [--key K.npy --value V.npy] [masks]
 *               [--tokens T.txt] ... (the same)
 *
 * Usage errors exit 1, runtime failures (files, a check that fails) 2, each with one
 * "mha: error:" line. */
#include "cli.h"
#include "explain.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(FILE *f) {
    fputs("usage: mha explain [options]\n"
          "       mha explain --weights W.safetensors [--heads H] --query X.npy [options]\n\n"
          "Walks one multi-head attention computation step by step: input, Q, K, V\n"
          "projections, split into heads, scores Q K^T, scale, mask, softmax, weights x V,\n"
          "concatenation, output projection. Each step prints its shape, formula, numbers\n"
          "and why. The last line compares the step-by-step result (plain double loops)\n"
          "with mha's fused float32 kernel; it fails (exit 2) beyond float32 rounding.\n"
          "\nthe example (default: built in, 6 tokens, E = 8, 2 heads, from a fixed seed):\n"
          "  --weights W.safetensors  your layer instead (any layout mha forward reads)\n"
          "  --prefix P, --heads H    which layer of W, its number of heads (as mha forward)\n"
          "  --query X.npy            with --weights: float32 [B, L, E] or [L, E]\n"
          "  --key K.npy --value V.npy   cross-attention\n"
          "  --causal | --causal-bottom-right   a causal mask (also on the built-in example)\n"
          "  --key-padding-mask M.npy, --attn-mask A.npy   masks, as in mha forward\n"
          "  --scale X                score scale instead of 1/sqrt(E/H)\n"
          "  --tokens T.txt           query labels, one per line (--key-tokens: the keys')\n"
          "\nwhat to show:\n"
          "  --step N                 only step N (1-10; 11-18 with --backward); still checks\n"
          "  --backward               continue with the gradients: dy -> dO -> dV, dP -> dS ->\n"
          "                           dQ, dK -> the input's and the parameters' gradients,\n"
          "                           checked against mha's fused backward\n"
          "  --grad-out DY.npy        with --backward: dy, shaped as the output (default: fixed\n"
          "                           random numbers)\n"
          "  --tiles                  how the fused kernel computes it: FlashAttention-2's key\n"
          "                           tiles with a running max and sum, tile by tile\n"
          "  --html FILE              write the walkthrough as one self-contained HTML page\n"
          "                           (the terminal gets only the checks)\n"
          "  --threads N, --isa NAME  as in mha forward (the fused kernel's)\n"
          "  --help                   this text\n"
          "\nA long input is computed whole but shown through a window: batch 0, the first\n"
          "8 tokens and features, the first 2 heads (and the weights of all as heatmaps).\n"
          "\nexit status: 0 success, 1 usage error, 2 runtime failure (files, shapes, or the\n"
          "fused kernel differing from the walkthrough beyond float32 rounding)\n"
          "\nexample:\n"
          "  mha explain\n"
          "  mha explain --causal --step 7\n"
          "  mha explain --tiles\n"
          "  mha explain --backward --html explain.html\n"
          "  mha explain --weights layer.safetensors --heads 4 --query x.npy --tokens t.txt\n",
          f);
}

/* ---------------------------------------------------------------------------------------------
 * The built-in example: "the cat sat on the mat", E = 8, 2 heads, everything from fixed seeds
 * ------------------------------------------------------------------------------------------- */
static const char *const example_tokens[] = {"the", "cat", "sat", "on", "the", "mat"};
#define EXAMPLE_L 6
#define EXAMPLE_E 8
#define EXAMPLE_H 2
#define EXAMPLE_SEED 7

/* Uniform numbers in [-1, 1) from a counter (splitmix64): the same on every machine. */
static double uniform(uint64_t seed, uint64_t i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + (i + 1) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0 * 2 - 1;
}

/* Fills a float32 view (contiguous) with scale * uniform(seed, i). */
static void fill_uniform(float *x, int64_t n, uint64_t seed, double scale) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)(scale * uniform(seed, (uint64_t)i));
}

/* The example's input: each word's embedding (fixed random numbers per distinct word, large
 * enough for the heads to attend sharply rather than almost uniformly) plus a
 * sinusoidal position code (Vaswani et al.), so that the two "the" differ by position. */
static void example_input(float *x) {
    for (int64_t i = 0; i < EXAMPLE_L; i++) {
        int64_t word = 0;
        while (strcmp(example_tokens[word], example_tokens[i])) word++;
        for (int64_t c = 0; c < EXAMPLE_E; c++) {
            const double freq = pow(10000.0, -(double)(c / 2 * 2) / EXAMPLE_E);
            const double pos = c % 2 ? cos((double)i * freq) : sin((double)i * freq);
            x[i * EXAMPLE_E + c] =
                (float)(2 * uniform(EXAMPLE_SEED + 1, (uint64_t)(word * EXAMPLE_E + c)) + pos);
        }
    }
}

/* A cli_layer holding the example: a module initialized as PyTorch does from a fixed seed, with
 * small biases (zero biases would hide the "+ b" of the projections), and its input. */
static int example_layer(const cli_layer_args *a, cli_layer *l) {
    memset(l, 0, sizeof *l);
    l->mask = mha_mask_default();
    l->mask.causal = a->causal                ? MHA_CAUSAL_TOP_LEFT
                     : a->causal_bottom_right ? MHA_CAUSAL_BOTTOM_RIGHT
                                              : MHA_CAUSAL_NONE;
    l->scale = (float)a->scale; /* (cli_layer_parse_optional checked it) */
    int rc = cli_ctx_create(a->threads_given ? &a->threads : NULL, a->isa, &l->ctx);
    if (rc) return rc;
    mha_config cfg = mha_config_default(EXAMPLE_E, EXAMPLE_H);
    cfg.seed = EXAMPLE_SEED;
    const int64_t xs[2] = {EXAMPLE_L, EXAMPLE_E};
    mha_tensor bin, bout;
    if (mha_module_create(l->ctx, &cfg, &l->module) != MHA_OK ||
        mha_module_param(l->ctx, l->module, "in_proj_bias", &bin, NULL) != MHA_OK ||
        mha_module_param(l->ctx, l->module, "out_proj.bias", &bout, NULL) != MHA_OK ||
        mha_array_alloc(l->ctx, MHA_DTYPE_F32, 2, xs, &l->query) != MHA_OK) {
        rc = cli_fail_lib(l->ctx, "the built-in example");
        cli_layer_free(l);
        return rc;
    }
    fill_uniform(bin.data, 3 * EXAMPLE_E, EXAMPLE_SEED + 2, 0.2);
    fill_uniform(bout.data, EXAMPLE_E, EXAMPLE_SEED + 3, 0.2);
    example_input((float *)l->query.data);
    l->B = 1, l->L = l->S = EXAMPLE_L, l->E = EXAMPLE_E, l->H = EXAMPLE_H;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The run
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    cli_layer l;
    cli_tokens qt, kt;
    mha_array y, dy, dquery, dkey, dvalue;
    ex_run run;
    ex_show show;
    ex_cmp fwd, bwd, core; /* the checks: y, the gradients, the attention core (--tiles) */
    double tiles_diff;
    int backward, tiles;
    char subtitle[512];
} state;

static void state_free(state *s) {
    mha_array *arrs[] = {&s->y, &s->dy, &s->dquery, &s->dkey, &s->dvalue};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) mha_array_free(arrs[i]);
    cli_tokens_free(&s->qt);
    cli_tokens_free(&s->kt);
    ex_run_free(&s->run);
    cli_layer_free(&s->l);
}

/* Doubles from float32. */
static void to_double(ex_mat m, const float *x) {
    for (int64_t i = 0; i < m.rows; i++)
        for (int64_t j = 0; j < m.cols; j++) m.v[i * m.ld + j] = x[i * m.cols + j];
}

/* A parameter's part: its name, where its values go in the run, where its gradient is. */
typedef struct {
    const char *name, *label;
    ex_mat *value, *grad;
    int64_t offset; /* elements into the parameter */
} param_part;

static int param_parts(ex_run *r, int bias, param_part *p) {
    const int in_proj = r->kdim == r->E && r->vdim == r->E;
    const int64_t EE = r->E * r->E;
    int n = 0;
    p[n++] = (param_part){in_proj ? "in_proj_weight" : "q_proj_weight", "dWq", &r->wq, &r->dwq, 0};
    p[n++] = (param_part){in_proj ? "in_proj_weight" : "k_proj_weight", "dWk", &r->wk, &r->dwk,
                          in_proj ? EE : 0};
    p[n++] = (param_part){in_proj ? "in_proj_weight" : "v_proj_weight", "dWv", &r->wv, &r->dwv,
                          in_proj ? 2 * EE : 0};
    p[n++] = (param_part){"out_proj.weight", "dWo", &r->wo, &r->dwo, 0};
    if (!bias) return n;
    p[n++] = (param_part){"in_proj_bias", "dbq", &r->bq, &r->dbq, 0};
    p[n++] = (param_part){"in_proj_bias", "dbk", &r->bk, &r->dbk, r->E};
    p[n++] = (param_part){"in_proj_bias", "dbv", &r->bv, &r->dbv, 2 * r->E};
    p[n++] = (param_part){"out_proj.bias", "dbo", &r->bo, &r->dbo, 0};
    return n;
}

/* The parameter's values (grad 0) or gradient (grad 1) as a contiguous float32 array. */
static int param_array(cli_layer *l, const char *name, int grad, mha_array *out) {
    mha_tensor t;
    memset(out, 0, sizeof *out);
    if (mha_module_param(l->ctx, l->module, name, grad ? NULL : &t, grad ? &t : NULL) != MHA_OK ||
        cli_tensor_to_array(l->ctx, &t, out) != MHA_OK)
        return cli_fail_lib(l->ctx, name);
    return 0;
}

/* The walkthrough's largest sizes: beyond them plain double loops take too long or too much
 * memory (mha forward runs any size). */
#define MAX_MULADDS 2e9
#define MAX_DOUBLES 3.2e7 /* 256 MiB */

/* Sizes, parameters and inputs into s->run, checked and allocated. */
static int run_setup(state *s) {
    cli_layer *l = &s->l;
    ex_run *r = &s->run;
    const mha_config *cfg = mha_module_config(l->module);
    r->B = l->B, r->L = l->L, r->S = l->S, r->E = l->E, r->H = l->H, r->cross = l->cross;
    r->bias = cfg->bias;
    r->kdim = cfg->kdim ? cfg->kdim : l->E;
    r->vdim = cfg->vdim ? cfg->vdim : l->E;
    r->mask = l->mask;
    r->scale = l->scale > 0 ? l->scale : 1 / sqrt((double)(l->E / l->H));
    double doubles, muladds = ex_run_cost(r->B, r->L, r->S, r->E, r->H, r->kdim, r->vdim,
                                          s->backward, &doubles);
    if (muladds > MAX_MULADDS || doubles > MAX_DOUBLES)
        return cli_fail("--query: the walkthrough computes every step in plain double loops and "
                        "keeps every score: B = %lld, L = %lld, S = %lld, E = %lld, H = %lld "
                        "take %.3g multiply-adds and %.3g doubles, at most %.3g and %.3g; use a "
                        "shorter input (mha forward runs any size)",
                        (long long)r->B, (long long)r->L, (long long)r->S, (long long)r->E,
                        (long long)r->H, muladds, doubles, MAX_MULADDS, MAX_DOUBLES);
    if (ex_run_alloc(r, s->backward)) return cli_fail("out of memory for the walkthrough");
    param_part parts[8];
    const int n = param_parts(r, cfg->bias, parts);
    for (int i = 0; i < n; i++) {
        mha_array a;
        int rc = param_array(l, parts[i].name, 0, &a);
        if (rc) return rc;
        to_double(*parts[i].value, (const float *)a.data + parts[i].offset);
        mha_array_free(&a);
    }
    to_double(r->x, (const float *)l->query.data);
    if (r->cross) {
        to_double(r->xk, (const float *)l->key.data);
        to_double(r->xv, (const float *)l->value.data);
    }
    return 0;
}

/* dy: --grad-out, or fixed random numbers; then the walkthrough's backward and the fused one. */
static int run_backward(state *s, const char *grad_out) {
    cli_layer *l = &s->l;
    ex_run *r = &s->run;
    int64_t shape[3];
    const int n = cli_layer_out_shape(l, shape);
    int rc;
    if (grad_out) {
        if ((rc = cli_load_f32(l->ctx, "--grad-out", grad_out, &s->dy))) return rc;
        if (s->dy.ndim != n || memcmp(s->dy.shape, shape, (size_t)n * sizeof(int64_t))) {
            char got[96], want[96];
            return cli_fail("--grad-out: shape %s, expected %s (the output's shape)",
                            cli_shape_str(got, sizeof got, s->dy.ndim, s->dy.shape),
                            cli_shape_str(want, sizeof want, n, shape));
        }
    } else {
        if (mha_array_alloc(l->ctx, MHA_DTYPE_F32, n, shape, &s->dy) != MHA_OK)
            return cli_fail_lib(l->ctx, NULL);
        fill_uniform((float *)s->dy.data, mha_array_numel(&s->dy), EXAMPLE_SEED + 4, 1);
    }
    to_double(r->dy, (const float *)s->dy.data);
    ex_backward(r);

    if (mha_array_alloc(l->ctx, MHA_DTYPE_F32, l->query.ndim, l->query.shape, &s->dquery) ||
        (l->cross && mha_array_alloc(l->ctx, MHA_DTYPE_F32, l->key.ndim, l->key.shape, &s->dkey)) ||
        (l->cross &&
         mha_array_alloc(l->ctx, MHA_DTYPE_F32, l->value.ndim, l->value.shape, &s->dvalue)))
        return cli_fail_lib(l->ctx, NULL);
    mha_tensor tdy = cli_array_tensor(&s->dy), tdq = cli_array_tensor(&s->dquery), tdk, tdv;
    if (l->cross) tdk = cli_array_tensor(&s->dkey), tdv = cli_array_tensor(&s->dvalue);
    mha_module_zero_grad(l->module);
    if (mha_module_backward(l->ctx, l->module, &tdy, &tdq, l->cross ? &tdk : NULL,
                            l->cross ? &tdv : NULL) != MHA_OK)
        return cli_fail_lib(l->ctx, NULL);

    const int64_t batch_rows = l->batched ? r->L : 0, key_rows = l->batched ? r->S : 0;
    ex_compare(&s->bwd, (const float *)s->dquery.data, r->E, r->dx, l->cross ? "dquery" : "dx",
               batch_rows);
    if (l->cross) {
        ex_compare(&s->bwd, (const float *)s->dkey.data, r->kdim, r->dxk, "dkey", key_rows);
        ex_compare(&s->bwd, (const float *)s->dvalue.data, r->vdim, r->dxv, "dvalue", key_rows);
    }
    param_part parts[8];
    const int np = param_parts(r, mha_module_config(l->module)->bias, parts);
    for (int i = 0; i < np; i++) {
        mha_array g;
        if ((rc = param_array(l, parts[i].name, 1, &g))) return rc;
        ex_compare(&s->bwd, (const float *)g.data + parts[i].offset, parts[i].grad->cols,
                   *parts[i].grad, parts[i].label, 0);
        mha_array_free(&g);
    }
    return 0;
}

/* --tiles: every head's tiles against step 8, and the library's attention core on the same
 * q, k, v (rounded to float32) against step 8 within its bounds. */
static int run_tiles(state *s) {
    ex_run *r = &s->run;
    cli_layer *l = &s->l;
    const int64_t B = r->B, H = r->H, L = r->L, S = r->S, E = r->E, D = r->D;
    double *ot = malloc((size_t)(B * L * E) * sizeof(double));
    float *q = malloc((size_t)(B * L * E + 2 * B * S * E + B * H * L * D) * sizeof(float));
    int rc = 0;
    if (!ot || !q) rc = cli_fail("out of memory for --tiles");
    for (int64_t b = 0; b < B && !rc; b++)
        for (int64_t h = 0; h < H && !rc; h++)
            if (ex_tiles(r, b, h, L, s->show.tile_rows, s->show.tile_keys, ot + b * L * E + h * D,
                         E, NULL, NULL, NULL))
                rc = cli_fail("out of memory for --tiles");
    for (int64_t i = 0; i < B * L * E && !rc; i++) {
        const double d = fabs(ot[i] - r->o.v[i]);
        if (!(d <= s->tiles_diff)) s->tiles_diff = d;
    }
    if (!rc) {
        float *k = q + B * L * E, *v = k + B * S * E, *out = v + B * S * E;
        for (int64_t i = 0; i < B * L * E; i++) q[i] = (float)r->q.v[i];
        for (int64_t i = 0; i < B * S * E; i++) k[i] = (float)r->k.v[i], v[i] = (float)r->v.v[i];
        /* [B, H, N, D] views of the [B, N, E] projections: head h is columns h*D .. */
        const int64_t qs[4] = {B, H, L, D}, ks[4] = {B, H, S, D}, os[4] = {B, H, L, D};
        const int64_t qst[4] = {L * E, D, E, 1}, kst[4] = {S * E, D, E, 1};
        mha_tensor tq = mha_tensor_strided(q, 4, qs, qst), tk = mha_tensor_strided(k, 4, ks, kst);
        mha_tensor tv = mha_tensor_strided(v, 4, ks, kst), to = mha_tensor_make(out, 4, os);
        mha_attn_params p = mha_attn_params_default();
        p.scale = (float)r->scale;
        if (mha_attn_forward(l->ctx, &p, &tq, &tk, &tv, &l->mask, &to, NULL, NULL) != MHA_OK)
            rc = cli_fail_lib(l->ctx, "mha_attn_forward");
        for (int64_t b = 0; b < B && !rc; b++)
            for (int64_t h = 0; h < H; h++)
                ex_compare(&s->core, out + (b * H + h) * L * D, D,
                           ex_view(r->o, b * L, h * D, L, D), "O", 0);
    }
    free(ot);
    free(q);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Writing: the steps, then the checks
 * ------------------------------------------------------------------------------------------- */
/* A check's line into buf: "explain: <what>, max |diff| = ... (...)". */
static void check_line(char *buf, size_t cap, const char *what, const ex_cmp *c) {
    snprintf(buf, cap, "explain: %s, max |diff| = %.3g (float32 rounding bound up to %.3g)", what,
             c->max_diff, c->max_bound);
}

/* The check lines, in order, the forward's last; NULL-terminated. */
static int check_lines(const state *s, char lines[3][200]) {
    int n = 0;
    if (s->tiles) check_line(lines[n++], 200, "the tiles match the fused attention core", &s->core);
    if (s->backward) check_line(lines[n++], 200, "gradients match the fused backward", &s->bwd);
    check_line(lines[n++], 200, "matches the fused kernel", &s->fwd);
    return n;
}

static void write_walkthrough(ex_out *o, const state *s, int with_checks) {
    ex_doc_begin(o, "mha explain: multi-head attention, step by step", s->subtitle);
    if (s->tiles) {
        ex_steps_tiles(o, &s->run, &s->show, s->tiles_diff, &s->core);
    } else {
        ex_steps(o, &s->run, &s->show, 1, s->backward ? EX_LAST_STEP : EX_FORWARD_STEPS);
    }
    if (with_checks) {
        char lines[3][200];
        const int n = check_lines(s, lines);
        ex_section(o, 0, "check", "Check against the fused kernel");
        ex_text(o, EX_NOTE,
                "the same input through mha's fused float32 kernel "
                "(mha_module_forward%s): every element must be within its float32 rounding "
                "bound, derived from the magnitudes and sizes of each step",
                s->backward ? ", mha_module_backward" : "");
        for (int i = 0; i < n; i++) ex_text(o, EX_CHECK, "%s", lines[i]);
    }
    ex_doc_end(o);
}

typedef struct {
    const state *s;
    int only;
} html_arg;

static mha_status write_html(mha_ctx *ctx, void *arg, mha_write_fn write, void *user) {
    const html_arg *h = arg;
    ex_out o = {
        .fmt = EX_HTML, .write = write, .user = user, .ctx = ctx, .width = 100, .only = h->only};
    write_walkthrough(&o, h->s, 1);
    return o.failed ? MHA_ERR_IO : MHA_OK;
}

/* The first failed check as one error line (2), or 0. */
static int check_failure(const state *s) {
    const ex_cmp *c = s->fwd.failed    ? &s->fwd
                      : s->bwd.failed  ? &s->bwd
                      : s->core.failed ? &s->core
                                       : NULL;
    if (!c) return 0;
    /* "float32 cannot compute this" only where something overflows: a step-by-step value
     * beyond float32's range, or an infinity or NaN from the fused kernel where the exact
     * value is finite; any other failure is a difference beyond the bound */
    double big = 0;
    const char *step = ex_overflow(&s->run, &big);
    if (step)
        return cli_fail("explain: float32 cannot compute this input: %s reach %.3g, beyond "
                        "float32's range (about 3.4e38), so no rounding bound holds; at %s the "
                        "fused kernel gives %.9g against %.9g",
                        step, big, c->where, c->got, c->want);
    if (!isfinite(c->got) && isfinite(c->want))
        return cli_fail("explain: float32 cannot compute this input: the fused kernel "
                        "overflows, giving %.9g at %s against %.9g",
                        c->got, c->where, c->want);
    return cli_fail("explain: the fused kernel differs from the step-by-step result beyond "
                    "float32 rounding: %s = %.9g (fused) against %.9g, |diff| = %.3g, bound %.3g",
                    c->where, c->got, c->want, fabs(c->got - c->want), c->bound);
}

/* ---------------------------------------------------------------------------------------------
 * The command
 * ------------------------------------------------------------------------------------------- */
typedef struct {
    const char *tokens, *key_tokens, *html, *grad_out;
    long long step;
    int backward, tiles;
} explain_args;

/* What the command line alone settles (exit 1). */
static int check_args(const cli_layer_args *la, const explain_args *ea, int step_given) {
    if (!la->weights) {
        const char *needs = la->query              ? "--query"
                            : la->key              ? "--key"
                            : la->prefix           ? "--prefix"
                            : la->heads_given      ? "--heads"
                            : la->key_padding_mask ? "--key-padding-mask"
                            : la->attn_mask        ? "--attn-mask"
                            : ea->tokens           ? "--tokens"
                            : ea->key_tokens       ? "--key-tokens"
                                                   : NULL;
        if (needs)
            return cli_usage_error("without --weights explain uses its built-in example",
                                   "%s needs --weights", needs);
    } else if (!la->query) {
        return cli_missing("explain", "--query");
    }
    if (la->dtype != MHA_DTYPE_F32)
        return cli_usage_error("mha forward --dtype runs a layer in bf16 or f16",
                               "--dtype: got %s, expected f32 (explain walks the float32 "
                               "computation)",
                               la->dtype_name);
    if (ea->key_tokens && !la->key)
        return cli_usage_error("for self-attention --tokens labels both axes",
                               "--key-tokens needs --key and --value (cross-attention)");
    if (ea->tiles && ea->backward)
        return cli_usage_error("run them one after the other",
                               "--tiles and --backward exclude each other");
    if (ea->tiles && step_given)
        return cli_usage_error("--tiles is one section of its own",
                               "--tiles and --step exclude each other");
    if (ea->grad_out && !ea->backward)
        return cli_usage_error("--grad-out gives the output gradient --backward starts from",
                               "--grad-out needs --backward");
    const int last = ea->backward ? EX_LAST_STEP : EX_FORWARD_STEPS;
    if (step_given && (ea->step < 1 || ea->step > last))
        return cli_usage_error(ea->step > EX_FORWARD_STEPS && ea->step <= EX_LAST_STEP
                                   ? "steps 11 to 18 are the backward: add --backward"
                                   : NULL,
                               "--step: got %lld, expected 1 to %d", ea->step, last);
    return 0;
}

/* The line under the title: what the example is. */
static void describe(state *s, const cli_layer_args *la) {
    const ex_run *r = &s->run;
    if (!la->weights)
        snprintf(s->subtitle, sizeof s->subtitle,
                 "The built-in example: the %d tokens \"the cat sat on the mat\", E = %d "
                 "features, %d heads of d = %d, a layer initialized as PyTorch does from a fixed "
                 "seed. Every number is computed in plain double-precision loops, then checked "
                 "against mha's fused float32 kernel.",
                 EXAMPLE_L, EXAMPLE_E, EXAMPLE_H, EXAMPLE_E / EXAMPLE_H);
    else
        snprintf(s->subtitle, sizeof s->subtitle,
                 "The layer in %s (E = %lld, %lld heads of d = %lld) on %s (%lld batch(es) of "
                 "%lld tokens%s). Every number is computed in plain double-precision loops, then "
                 "checked against mha's fused float32 kernel.",
                 la->weights, (long long)r->E, (long long)r->H, (long long)r->D, la->query,
                 (long long)r->B, (long long)r->L, r->cross ? ", cross-attention" : "");
}

/* The layer, its input, the labels and what is shown (exit 2 on failure). */
static int load(state *s, const cli_layer_args *la, const explain_args *ea) {
    cli_layer *l = &s->l;
    int rc;
    s->backward = ea->backward, s->tiles = ea->tiles;
    if ((rc = la->weights ? cli_layer_load(la, l) : example_layer(la, l))) return rc;
    if (ea->tokens &&
        (rc = cli_tokens_load("--tokens", ea->tokens, l->L, "query position", &s->qt)))
        return rc;
    if (ea->key_tokens &&
        (rc = cli_tokens_load("--key-tokens", ea->key_tokens, l->S, "key position", &s->kt)))
        return rc;
    if ((rc = run_setup(s))) return rc;
    ex_show *sh = &s->show;
    sh->qtok = !la->weights ? example_tokens : ea->tokens ? (const char *const *)s->qt.tok : NULL;
    sh->ktok = ea->key_tokens ? (const char *const *)s->kt.tok : NULL;
    sh->scale_given = la->scale_given;
    sh->input_note =
        la->weights ? NULL
                    : "x[i] = the word's embedding (fixed random numbers in [-2, 2] per word) + a "
                      "sinusoidal position code (Vaswani et al.): the two \"the\" differ only by "
                      "their position";
    sh->dy_note = ea->grad_out ? "dy from --grad-out"
                               : "here fixed random numbers (--grad-out DY.npy gives your own)";
    /* tiles small enough for several per row, at most 8 of them */
    sh->tile_rows = 2;
    sh->tile_keys = l->S <= 16 ? 2 : (l->S + 7) / 8;
    describe(s, la);
    return 0;
}

/* The walkthrough, the fused kernel and the checks. */
static int compute(state *s, const explain_args *ea) {
    cli_layer *l = &s->l;
    int rc;
    ex_forward(&s->run);
    mha_forward_opts fo = mha_forward_opts_default();
    fo.training = 0;
    fo.save_for_backward = s->backward;
    if ((rc = cli_layer_forward(l, fo, &s->y, NULL))) return rc;
    ex_compare(&s->fwd, (const float *)s->y.data, s->run.E, s->run.y, "y", l->batched ? l->L : 0);
    if (s->backward && (rc = run_backward(s, ea->grad_out))) return rc;
    if (s->tiles && (rc = run_tiles(s))) return rc;
    return 0;
}

/* The terminal's walkthrough (without --html), then the failed check, or the page (all or
 * nothing: only when the checks pass), then the check lines. */
static int write_outputs(state *s, const explain_args *ea, cli_outputs *outs, int i_html) {
    mha_ctx *ctx = s->l.ctx;
    int rc;
    if (!ea->html) {
        ex_out o = {.fmt = EX_TERM,
                    .write = cli_write_file,
                    .user = stdout,
                    .ctx = ctx,
                    .color = cli_term_color(),
                    .width = cli_term_width(0),
                    .only = (int)ea->step};
        write_walkthrough(&o, s, 0);
        if (o.viz_status != MHA_OK)
            return o.fail_msg ? cli_fail("%s", o.fail_msg) : cli_fail_lib(ctx, "heatmap");
    }
    if ((rc = check_failure(s))) return rc;
    if (ea->html) {
        html_arg h = {s, (int)ea->step};
        if ((rc = cli_outputs_write(ctx, outs, i_html, write_html, &h)) ||
            (rc = cli_outputs_commit(ctx, outs)))
            return rc;
        printf("explain: wrote %s\n", ea->html);
    }
    char lines[3][200];
    const int n = check_lines(s, lines);
    if (!ea->html) printf("\n");
    for (int i = 0; i < n; i++) printf("%s\n", lines[i]);
    return fflush(stdout) ? cli_fail("writing to stdout failed") : CLI_EXIT_OK;
}

int mha_cmd_explain(int argc, char **argv) {
    explain_args ea;
    memset(&ea, 0, sizeof ea);
    cli_opt opts[] = {
        {"--step", CLI_OPT_INT, &ea.step, 0},
        {"--backward", CLI_OPT_FLAG, &ea.backward, 0},
        {"--tiles", CLI_OPT_FLAG, &ea.tiles, 0},
        {"--html", CLI_OPT_STRING, &ea.html, 0},
        {"--grad-out", CLI_OPT_STRING, &ea.grad_out, 0},
        {"--tokens", CLI_OPT_STRING, &ea.tokens, 0},
        {"--key-tokens", CLI_OPT_STRING, &ea.key_tokens, 0},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);

    /* --- the command line (exit 1), and the page declared before anything is computed --- */
    cli_layer_args la;
    int rc = cli_layer_parse_optional(argc, argv, &la, opts, nopts);
    if (rc == CLI_HELP) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (rc) return rc;
    if ((rc = check_args(&la, &ea, cli_find(opts, nopts, "--step")->seen > 0))) return rc;
    cli_outputs outs;
    memset(&outs, 0, sizeof outs);
    int i_html = -1;
    if (ea.html && (rc = cli_outputs_add(&outs, "--html", ea.html, &i_html))) {
        cli_outputs_free(&outs);
        return rc;
    }

    /* --- load, compute, write (exit 2 from here on) --- */
    state s;
    memset(&s, 0, sizeof s);
    if (!(rc = load(&s, &la, &ea)) && !(rc = compute(&s, &ea)))
        rc = write_outputs(&s, &ea, &outs, i_html);
    cli_outputs_free(&outs);
    state_free(&s);
    return rc;
}
