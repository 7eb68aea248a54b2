/* cmd_viz.c - `mha viz`: run an nn.MultiheadAttention layer exported from PyTorch on .npy
 * inputs and draw its attention weights: in the terminal (default), or as SVG, PNG or a
 * self-contained HTML page. The drawing is mha_viz.h's; this file only decides the options
 * (colour from isatty and $NO_COLOR, width from --width, $COLUMNS or the terminal) and loads
 * the inputs. Usage errors exit 1, runtime failures exit 2, each with one "mha: error:" line. */
#include "cli.h"
#include "mha_viz.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(FILE *f) {
    fputs("usage: mha viz --weights W.safetensors --heads H --query Q.npy [options]\n\n"
          "Runs torch.nn.MultiheadAttention(batch_first=True) with the parameters of W on the\n"
          "inputs and draws its attention weights (per head, or their average).\n"
          "\nrequired:\n"
          "  --weights W.safetensors  the layer's state_dict (as for mha forward)\n"
          "  --heads H                number of heads\n"
          "  --query Q.npy            float32 [B, L, E] or unbatched [L, E]\n"
          "\ninputs and masks (optional, as in mha forward):\n"
          "  --key K.npy --value V.npy   cross-attention (without them: self-attention)\n"
          "  --causal | --causal-bottom-right   causal mask, top-left (PyTorch) or bottom-right\n"
          "  --key-padding-mask M.npy bool [B, S] ([S] unbatched); true = ignore that key\n"
          "  --attn-mask A.npy        bool (true = not allowed) or float32, [L, S] or\n"
          "                           [B*H, L, S] ([H, L, S] unbatched)\n"
          "  --scale X                score scale instead of 1/sqrt(E/H)\n"
          "\nwhat to draw:\n"
          "  --head N                 one head (0-based)\n"
          "  --average                the mean over heads (the default)\n"
          "  --all                    every head, side by side when they fit\n"
          "  --batch N                which batch element to draw (default 0)\n"
          "  --tokens T.txt           query labels, one token per line (also the key labels\n"
          "                           for self-attention)\n"
          "  --key-tokens T.txt       key labels, one per line (cross-attention)\n"
          "  --title TEXT             a title line\n"
          "\noutput:\n"
          "  --format F               term (default), svg, png or html; without it, taken\n"
          "                           from the --out extension (.svg, .png, .html)\n"
          "  --out FILE               write to FILE (written whole, then renamed); term\n"
          "                           output goes to stdout without it\n"
          "  --color WHEN             term: auto (default: when stdout is a terminal and\n"
          "                           $NO_COLOR is unset), always or never\n"
          "  --ascii                  term: plain 7-bit ASCII instead of Unicode shading\n"
          "  --width N                term: columns (default $COLUMNS or the terminal's, else\n"
          "                           80; at least 40)\n"
          "  --cell-px N              svg/png: cell size in pixels (1..64)\n"
          "  --threads N, --isa NAME  as in mha forward\n"
          "  --help                   this text\n"
          "\nThe HTML page shows every head whatever was chosen: hover a token to see its\n"
          "attention, pick a head above, read each head's entropy and most attended key.\n"
          "\nexit status: 0 success, 1 usage error, 2 runtime failure\n"
          "\nexample:\n"
          "  mha viz --weights layer.safetensors --heads 4 --query x.npy --causal \\\n"
          "      --tokens tokens.txt --all\n"
          "  mha viz --weights layer.safetensors --heads 4 --query x.npy --tokens tokens.txt \\\n"
          "      --out attention.html\n",
          f);
}

/* Token labels read from a file: one per line ("\r\n" accepted); n must match. */
typedef struct {
    char *text;
    char **tok;
    int64_t n;
} tokens;

static void tokens_free(tokens *t) {
    free(t->text);
    free(t->tok);
    memset(t, 0, sizeof *t);
}

static int tokens_load(const char *opt, const char *path, int64_t want, const char *what,
                       tokens *t) {
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "rb");
    if (!f) return cli_fail("%s: cannot open %s", opt, path);
    size_t cap = 4096, n = 0;
    t->text = malloc(cap);
    for (;;) {
        if (!t->text) break;
        if (n + 1 >= cap) {
            char *q = realloc(t->text, cap *= 2);
            if (!q) {
                free(t->text);
                t->text = NULL;
                break;
            }
            t->text = q;
        }
        size_t k = fread(t->text + n, 1, cap - n - 1, f);
        if (k == 0) break;
        n += k;
    }
    int err = ferror(f);
    fclose(f);
    if (!t->text) return cli_fail("%s: out of memory reading %s", opt, path);
    if (err) {
        tokens_free(t);
        return cli_fail("%s: cannot read %s", opt, path);
    }
    t->text[n] = 0;
    if (memchr(t->text, 0, n)) {
        tokens_free(t);
        return cli_fail("%s: %s contains a NUL byte, expected text (one token per line)", opt,
                        path);
    }
    int64_t lines = 0;
    for (size_t i = 0; i < n; i++) lines += t->text[i] == '\n';
    if (n && t->text[n - 1] != '\n') lines++;
    if (lines != want) {
        int64_t got = lines;
        tokens_free(t);
        return cli_fail("%s: %s has %lld lines, expected %lld (one token per %s)", opt, path,
                        (long long)got, (long long)want, what);
    }
    t->tok = malloc((size_t)(want ? want : 1) * sizeof *t->tok);
    if (!t->tok) {
        tokens_free(t);
        return cli_fail("%s: out of memory", opt);
    }
    char *p = t->text;
    for (int64_t i = 0; i < want; i++) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        size_t len = strlen(p);
        if (len && p[len - 1] == '\r') p[len - 1] = 0;
        t->tok[i] = p;
        p = nl ? nl + 1 : p + len;
    }
    t->n = want;
    return 0;
}

static int input_ok(const mha_array *a, int batched, int64_t batch, int64_t feat) {
    if (a->ndim != (batched ? 3 : 2) || a->shape[a->ndim - 1] != feat) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] < 1) return 0;
    return !batched || batch < 0 || a->shape[0] == batch;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

static int write_stdout(void *user, const void *data, size_t size) {
    return fwrite(data, 1, size, (FILE *)user) == size ? 0 : 1;
}

typedef struct {
    mha_ctx *ctx;
    mha_module *m;
    mha_array query, key, value, kpm, amask, out, weights;
    tokens qt, kt;
} run_state;

static void run_free(run_state *r) {
    mha_array *arrs[] = {&r->query, &r->key, &r->value, &r->kpm, &r->amask, &r->out, &r->weights};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) mha_array_free(arrs[i]);
    tokens_free(&r->qt);
    tokens_free(&r->kt);
    mha_module_free(r->m);
    mha_ctx_free(r->ctx);
}

int mha_cmd_viz(int argc, char **argv) {
    const char *weights = NULL, *query = NULL, *key = NULL, *value = NULL, *kpm = NULL,
               *amask = NULL, *tok = NULL, *ktok = NULL, *format = NULL, *out = NULL,
               *color = NULL, *isa = NULL, *title = NULL;
    long long heads = 0, head = 0, batch = 0, width = 0, cell_px = 0, threads = 0;
    double scale = 0;
    int causal = 0, causal_br = 0, average = 0, all = 0, ascii = 0;
    cli_opt opts[] = {
        {"--weights", CLI_OPT_STRING, &weights, 0},
        {"--heads", CLI_OPT_INT, &heads, 0},
        {"--query", CLI_OPT_STRING, &query, 0},
        {"--key", CLI_OPT_STRING, &key, 0},
        {"--value", CLI_OPT_STRING, &value, 0},
        {"--causal", CLI_OPT_FLAG, &causal, 0},
        {"--causal-bottom-right", CLI_OPT_FLAG, &causal_br, 0},
        {"--key-padding-mask", CLI_OPT_STRING, &kpm, 0},
        {"--attn-mask", CLI_OPT_STRING, &amask, 0},
        {"--scale", CLI_OPT_FLOAT, &scale, 0},
        {"--tokens", CLI_OPT_STRING, &tok, 0},
        {"--key-tokens", CLI_OPT_STRING, &ktok, 0},
        {"--head", CLI_OPT_INT, &head, 0},
        {"--average", CLI_OPT_FLAG, &average, 0},
        {"--all", CLI_OPT_FLAG, &all, 0},
        {"--batch", CLI_OPT_INT, &batch, 0},
        {"--format", CLI_OPT_STRING, &format, 0},
        {"--out", CLI_OPT_STRING, &out, 0},
        {"--color", CLI_OPT_STRING, &color, 0},
        {"--ascii", CLI_OPT_FLAG, &ascii, 0},
        {"--width", CLI_OPT_INT, &width, 0},
        {"--cell-px", CLI_OPT_INT, &cell_px, 0},
        {"--title", CLI_OPT_STRING, &title, 0},
        {"--threads", CLI_OPT_INT, &threads, 0},
        {"--isa", CLI_OPT_STRING, &isa, 0},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);
    const char *cmd = argv[0];

    /* --- the command line (exit 1) --- */
    int rc = cli_parse(argc, argv, opts, nopts);
    if (rc == CLI_HELP) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (rc) return rc;
    if (!weights) return cli_missing(cmd, "--weights");
    if (!cli_find(opts, nopts, "--heads")->seen) return cli_missing(cmd, "--heads");
    if (!query) return cli_missing(cmd, "--query");
    if (!key != !value)
        return cli_usage_error("give both --key and --value for cross-attention, or neither",
                               "%s given without %s", key ? "--key" : "--value",
                               key ? "--value" : "--key");
    int has_head = cli_find(opts, nopts, "--head")->seen > 0;
    if (has_head + average + all > 1)
        return cli_usage_error("draw one head (--head N), their mean (--average) or all (--all)",
                               "--head, --average and --all exclude each other");
    if (causal && causal_br)
        return cli_usage_error(NULL, "--causal and --causal-bottom-right exclude each other");
    if (has_head && head < 0)
        return cli_usage_error(NULL, "--head: got %lld, expected a head number >= 0", head);
    if (batch < 0) return cli_usage_error(NULL, "--batch: got %lld, expected >= 0", batch);
    if (cli_find(opts, nopts, "--width")->seen && (width < 40 || width > 100000))
        return cli_usage_error(NULL, "--width: got %lld, expected 40 .. 100000 columns", width);
    if (cli_find(opts, nopts, "--cell-px")->seen && (cell_px < 1 || cell_px > 64))
        return cli_usage_error(NULL, "--cell-px: got %lld, expected 1 .. 64", cell_px);
    if (ktok && !key)
        return cli_usage_error("for self-attention --tokens labels both axes",
                               "--key-tokens needs --key and --value (cross-attention)");
    enum { F_TERM, F_SVG, F_PNG, F_HTML } fmt = F_TERM;
    if (format) {
        if (!strcmp(format, "term")) fmt = F_TERM;
        else if (!strcmp(format, "svg")) fmt = F_SVG;
        else if (!strcmp(format, "png")) fmt = F_PNG;
        else if (!strcmp(format, "html")) fmt = F_HTML;
        else
            return cli_usage_error("--format takes term, svg, png or html",
                                   "--format: unknown format \"%s\"", format);
    } else if (out) {
        if (ends_with(out, ".svg")) fmt = F_SVG;
        else if (ends_with(out, ".png")) fmt = F_PNG;
        else if (ends_with(out, ".html") || ends_with(out, ".htm")) fmt = F_HTML;
    }
    if (fmt != F_TERM && !out)
        return cli_usage_error("e.g. --out attention.html", "--format %s needs --out FILE",
                               format);
    int use_color = 0;
    if (color && strcmp(color, "auto") && strcmp(color, "always") && strcmp(color, "never"))
        return cli_usage_error("--color takes auto, always or never",
                               "--color: got \"%s\"", color);
    if (ascii && color && !strcmp(color, "always"))
        return cli_usage_error(NULL, "--ascii and --color always exclude each other");
    if (color && !strcmp(color, "always")) use_color = 1;
    else if (!ascii && !out && (!color || !strcmp(color, "auto"))) {
        use_color = cli_term_color();
    }
    mha_isa isa_val;
    if (isa && !cli_isa_parse(isa, &isa_val))
        return cli_usage_error("--isa takes auto, generic, avx2 or avx512",
                               "--isa: unknown kernel path \"%s\"", isa);
    if (!isfinite(scale) || scale < 0 || (cli_find(opts, nopts, "--scale")->seen && scale == 0))
        return cli_fail("--scale: got %g, expected a positive number", scale);

    /* --- load and check (exit 2 from here on) --- */
    run_state r;
    memset(&r, 0, sizeof r);
    rc = cli_ctx_create(cli_find(opts, nopts, "--threads")->seen ? &threads : NULL, isa, &r.ctx);
    if (rc) return rc;
    mha_ctx *ctx = r.ctx;
    char got[96], want[96];
    if ((rc = cli_load_module(ctx, weights, heads, &r.m))) goto done;
    const mha_config *cfg = mha_module_config(r.m);
    const int64_t E = cfg->embed_dim, H = cfg->num_heads;
    const int64_t kdim = cfg->kdim ? cfg->kdim : E, vdim = cfg->vdim ? cfg->vdim : E;
    if (!key && (kdim != E || vdim != E)) {
        rc = cli_fail("--key/--value: missing: the layer has kdim %lld, vdim %lld (E = %lld), "
                      "so self-attention is not possible", (long long)kdim, (long long)vdim,
                      (long long)E);
        goto done;
    }
    if (has_head && head >= H) {
        rc = cli_fail("--head: got %lld, expected 0 .. %lld (the layer has %lld heads)", head,
                      (long long)H - 1, (long long)H);
        goto done;
    }
    if ((rc = cli_load_f32(ctx, "--query", query, &r.query))) goto done;
    const int batched = r.query.ndim == 3;
    if (!input_ok(&r.query, batched, -1, E)) {
        rc = cli_fail("--query: shape %s, expected [B, L, %lld] or [L, %lld] (E from --weights)",
                      cli_shape_str(got, sizeof got, r.query.ndim, r.query.shape), (long long)E,
                      (long long)E);
        goto done;
    }
    const int64_t B = batched ? r.query.shape[0] : 1, L = r.query.shape[batched ? 1 : 0];
    if (batch >= B) {
        rc = cli_fail("--batch: got %lld, expected 0 .. %lld (the batch of --query)", batch,
                      (long long)B - 1);
        goto done;
    }
    int64_t S = L;
    if (key) {
        if ((rc = cli_load_f32(ctx, "--key", key, &r.key))) goto done;
        if ((rc = cli_load_f32(ctx, "--value", value, &r.value))) goto done;
        if (!input_ok(&r.key, batched, B, kdim) || !input_ok(&r.value, batched, B, vdim) ||
            r.key.shape[batched ? 1 : 0] != r.value.shape[batched ? 1 : 0]) {
            rc = cli_fail("--key/--value: shapes %s and %s, expected %s[S, %lld] and %s[S, %lld] "
                          "(kdim, vdim from --weights; batch as --query)",
                          cli_shape_str(got, sizeof got, r.key.ndim, r.key.shape),
                          cli_shape_str(want, sizeof want, r.value.ndim, r.value.shape),
                          batched ? "[B] + " : "", (long long)kdim, batched ? "[B] + " : "",
                          (long long)vdim);
            goto done;
        }
        S = r.key.shape[batched ? 1 : 0];
    }
    mha_mask mask = mha_mask_default();
    mask.causal = causal ? MHA_CAUSAL_TOP_LEFT : causal_br ? MHA_CAUSAL_BOTTOM_RIGHT
                                                           : MHA_CAUSAL_NONE;
    if (kpm) {
        if ((rc = cli_load_mask(ctx, "--key-padding-mask", kpm, 0, &r.kpm))) goto done;
        int64_t ws[2] = {B, S};
        int wn = batched ? 2 : 1;
        const int64_t *wp = batched ? ws : ws + 1;
        if (r.kpm.ndim != wn || memcmp(r.kpm.shape, wp, (size_t)wn * sizeof(int64_t))) {
            rc = cli_fail("--key-padding-mask: shape %s, expected %s",
                          cli_shape_str(got, sizeof got, r.kpm.ndim, r.kpm.shape),
                          cli_shape_str(want, sizeof want, wn, wp));
            goto done;
        }
        mask.key_padding = (const uint8_t *)r.kpm.data;
    }
    if (amask) {
        if ((rc = cli_load_mask(ctx, "--attn-mask", amask, 1, &r.amask))) goto done;
        int64_t w2[2] = {L, S}, w3[3] = {batched ? B * H : H, L, S};
        if (r.amask.ndim == 2 && !memcmp(r.amask.shape, w2, sizeof w2)) {
            mask.attn_batched = 0;
        } else if (r.amask.ndim == 3 && !memcmp(r.amask.shape, w3, sizeof w3)) {
            mask.attn_batched = 1;
        } else {
            char want3[96];
            rc = cli_fail("--attn-mask: shape %s, expected %s or %s",
                          cli_shape_str(got, sizeof got, r.amask.ndim, r.amask.shape),
                          cli_shape_str(want, sizeof want, 2, w2),
                          cli_shape_str(want3, sizeof want3, 3, w3));
            goto done;
        }
        if (r.amask.dtype == MHA_DTYPE_BOOL) mask.attn_bool = (const uint8_t *)r.amask.data;
        else mask.attn_float = (const float *)r.amask.data;
    }
    if (tok && (rc = tokens_load("--tokens", tok, L, "query position", &r.qt))) goto done;
    if (ktok && (rc = tokens_load("--key-tokens", ktok, S, "key position", &r.kt))) goto done;

    /* --- compute: per-head weights [B, H, L, S] / [H, L, S] --- */
    {
        int64_t os[3] = {B, L, E}, ws[4] = {B, H, L, S};
        if (mha_array_alloc(ctx, MHA_DTYPE_F32, r.query.ndim, batched ? os : os + 1, &r.out) ||
            mha_array_alloc(ctx, MHA_DTYPE_F32, batched ? 4 : 3, batched ? ws : ws + 1,
                            &r.weights)) {
            rc = cli_fail_lib(ctx, NULL);
            goto done;
        }
    }
    mha_forward_opts fo = mha_forward_opts_default();
    fo.scale = (float)scale;
    fo.average_weights = 0;
    fo.save_for_backward = 0;
    mha_tensor tq = cli_array_tensor(&r.query), ty = cli_array_tensor(&r.out);
    mha_tensor tw = cli_array_tensor(&r.weights), tk, tv;
    if (key) tk = cli_array_tensor(&r.key), tv = cli_array_tensor(&r.value);
    if (mha_module_forward(ctx, r.m, &fo, &tq, key ? &tk : NULL, key ? &tv : NULL, &mask, &ty,
                           &tw) != MHA_OK) {
        rc = cli_fail_lib(ctx, NULL);
        goto done;
    }

    /* --- draw --- */
    mha_viz_opts vo = mha_viz_opts_default();
    vo.view = has_head ? MHA_VIZ_HEAD : all ? MHA_VIZ_ALL : MHA_VIZ_AVERAGE;
    vo.head = has_head ? head : 0;
    if (tok) vo.query_tokens = (const char *const *)r.qt.tok;
    if (ktok) vo.key_tokens = (const char *const *)r.kt.tok;
    vo.title = title;
    vo.term_mode = ascii ? MHA_VIZ_TERM_ASCII : use_color ? MHA_VIZ_TERM_COLOR
                                                          : MHA_VIZ_TERM_UNICODE;
    vo.width = cli_term_width(width);
    vo.cell_px = (int)cell_px;
    const float *w = (const float *)r.weights.data + (size_t)batch * (size_t)(H * L * S);
    mha_status st;
    switch (fmt) {
    case F_SVG: st = mha_viz_svg_file(ctx, w, H, L, S, &vo, out); break;
    case F_PNG: st = mha_viz_png_file(ctx, w, H, L, S, &vo, out); break;
    case F_HTML: st = mha_viz_html_file(ctx, w, H, L, S, &vo, out); break;
    default:
        if (out) {
            st = mha_viz_term_file(ctx, w, H, L, S, &vo, out);
        } else {
            st = mha_viz_term(ctx, w, H, L, S, &vo, write_stdout, stdout);
            if (st == MHA_OK && fflush(stdout) != 0) {
                rc = cli_fail("writing to stdout failed");
                goto done;
            }
        }
    }
    if (st != MHA_OK) rc = cli_fail_lib(ctx, out ? out : "stdout");
done:
    run_free(&r);
    return rc;
}
