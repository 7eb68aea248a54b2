/* cmd_viz.c - `mha viz`: run an nn.MultiheadAttention layer exported from PyTorch on .npy
 * inputs and draw its attention weights: in the terminal (default), or as SVG, PNG or a
 * self-contained HTML page. The drawing is mha_viz.h's; this file only decides the options
 * (colour from isatty and $NO_COLOR, width from --width, $COLUMNS or the terminal) and loads
 * the inputs. Usage errors exit 1, runtime failures exit 2, each with one "mha: error:" line. */
#include "cli.h"
#include "mha_viz.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static void print_help(FILE *f) {
    fputs("usage: mha viz --weights W.safetensors [--prefix P] [--heads H] --query Q.npy "
          "[options]\n\n"
          "Runs torch.nn.MultiheadAttention(batch_first=True) with the parameters of W on the\n"
          "inputs and draws its attention weights (per head, or their average).\n"
          "\nrequired:\n"
          "  --weights W.safetensors  the layer's or a whole model's state_dict (any layout\n"
          "                           mha forward reads)\n"
          "  --prefix P               which layer of W, e.g. encoder.layers.0.self_attn.\n"
          "                           (needed when W holds several: the error lists them)\n"
          "  --heads H                number of heads; optional when W records it (mha's\n"
          "                           state_dicts do), refused when it disagrees\n"
          "  --query Q.npy            float32 or float16 [B, L, E] or unbatched [L, E]\n"
          "\ninputs and masks (optional, as in mha forward):\n"
          "  --key K.npy --value V.npy   cross-attention (without them: self-attention)\n"
          "  --causal | --causal-bottom-right   causal mask, top-left (PyTorch) or bottom-right\n"
          "  --key-padding-mask M.npy bool [B, S] ([S] unbatched); true = ignore that key\n"
          "  --attn-mask A.npy        bool (true = not allowed) or float, [L, S] or\n"
          "                           [B*H, L, S] ([H, L, S] unbatched)\n"
          "  --scale X                score scale instead of 1/sqrt(E/H)\n"
          "  --dtype T                run the layer in f32 (default), bf16 or f16\n"
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
          "                           from the --out extension\n"
          "  --out FILE               write to FILE (written whole, then renamed), named\n"
          "                           .txt (term), .svg, .png, .html or .htm; term output\n"
          "                           goes to stdout without it\n"
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

/* The output formats, and the file extensions that name them (compared ignoring case). */
typedef enum {
    F_TERM,
    F_SVG,
    F_PNG,
    F_HTML,
    F_COUNT
} viz_format;
static const struct {
    const char *name, *ext[2];
} formats[F_COUNT] = {{"term", {".txt", NULL}},
                      {"svg", {".svg", NULL}},
                      {"png", {".png", NULL}},
                      {"html", {".html", ".htm"}}};

/* The format whose extension path ends with, or F_COUNT. */
static viz_format format_of_path(const char *path) {
    size_t n = strlen(path);
    for (int f = 0; f < F_COUNT; f++)
        for (int e = 0; e < 2 && formats[f].ext[e]; e++) {
            size_t k = strlen(formats[f].ext[e]);
            if (n > k && !strcasecmp(path + n - k, formats[f].ext[e])) return (viz_format)f;
        }
    return F_COUNT;
}

/* The format from --format and --out: --out's extension must name one, and agree with
 * --format when both are given; --format other than term needs --out. Returns 0 with *fmt
 * set, or a usage error (1). */
static int choose_format(const char *format, const char *out, viz_format *fmt) {
    *fmt = F_TERM;
    if (format) {
        for (*fmt = F_TERM; *fmt < F_COUNT && strcmp(format, formats[*fmt].name); (*fmt)++) {}
        if (*fmt == F_COUNT)
            return cli_usage_error("--format takes term, svg, png or html",
                                   "--format: unknown format \"%s\"", format);
    }
    if (!out) {
        if (*fmt == F_TERM) return 0;
        char hint[64];
        snprintf(hint, sizeof hint, "e.g. --out attention%s", formats[*fmt].ext[0]);
        return cli_usage_error(hint, "--format %s needs --out FILE", format);
    }
    viz_format by_ext = format_of_path(out);
    if (by_ext == F_COUNT)
        return cli_usage_error(
            "the extension names the format, e.g. --out attention.png",
            "--out: got \"%s\", expected a name ending in .txt (term), .svg, .png, .html or .htm",
            out);
    if (format && by_ext != *fmt)
        return cli_usage_error(NULL,
                               "--out: got \"%s\", expected a name ending in %s (--format %s)", out,
                               formats[*fmt].ext[0], format);
    *fmt = by_ext;
    return 0;
}

/* What one run holds besides the layer; released by run_free whatever happened. */
typedef struct {
    cli_layer l;
    mha_array out, weights;
    cli_tokens qt, kt;
} run_state;

static void run_free(run_state *r) {
    mha_array_free(&r->out);
    mha_array_free(&r->weights);
    cli_tokens_free(&r->qt);
    cli_tokens_free(&r->kt);
    cli_layer_free(&r->l);
}

int mha_cmd_viz(int argc, char **argv) {
    const char *tok = NULL, *ktok = NULL, *format = NULL, *out = NULL, *color = NULL, *title = NULL;
    long long head = 0, batch = 0, width = 0, cell_px = 0;
    int average = 0, all = 0, ascii = 0;
    cli_opt opts[] = {
        {"--tokens", CLI_OPT_STRING, &tok, 0},    {"--key-tokens", CLI_OPT_STRING, &ktok, 0},
        {"--head", CLI_OPT_INT, &head, 0},        {"--average", CLI_OPT_FLAG, &average, 0},
        {"--all", CLI_OPT_FLAG, &all, 0},         {"--batch", CLI_OPT_INT, &batch, 0},
        {"--format", CLI_OPT_STRING, &format, 0}, {"--out", CLI_OPT_STRING, &out, 0},
        {"--color", CLI_OPT_STRING, &color, 0},   {"--ascii", CLI_OPT_FLAG, &ascii, 0},
        {"--width", CLI_OPT_INT, &width, 0},      {"--cell-px", CLI_OPT_INT, &cell_px, 0},
        {"--title", CLI_OPT_STRING, &title, 0},
    };
    const int nopts = (int)(sizeof opts / sizeof opts[0]);

    /* --- the command line (exit 1) --- */
    cli_layer_args la;
    int rc = cli_layer_parse(argc, argv, &la, opts, nopts);
    if (rc == CLI_HELP) {
        print_help(stdout);
        return CLI_EXIT_OK;
    }
    if (rc) return rc;
    int has_head = cli_find(opts, nopts, "--head")->seen > 0;
    if (has_head + average + all > 1)
        return cli_usage_error("draw one head (--head N), their mean (--average) or all (--all)",
                               "--head, --average and --all exclude each other");
    if (has_head && head < 0)
        return cli_usage_error(NULL, "--head: got %lld, expected a head number >= 0", head);
    if (batch < 0) return cli_usage_error(NULL, "--batch: got %lld, expected >= 0", batch);
    if (cli_find(opts, nopts, "--width")->seen && (width < 40 || width > 100000))
        return cli_usage_error(NULL, "--width: got %lld, expected 40 .. 100000 columns", width);
    if (cli_find(opts, nopts, "--cell-px")->seen && (cell_px < 1 || cell_px > 64))
        return cli_usage_error(NULL, "--cell-px: got %lld, expected 1 .. 64", cell_px);
    if (ktok && !la.key)
        return cli_usage_error("for self-attention --tokens labels both axes",
                               "--key-tokens needs --key and --value (cross-attention)");
    viz_format fmt;
    if ((rc = choose_format(format, out, &fmt))) return rc;
    if (cli_find(opts, nopts, "--cell-px")->seen && fmt != F_SVG && fmt != F_PNG)
        return cli_usage_error(NULL, "--cell-px: applies to svg and png output, not to %s",
                               formats[fmt].name);
    if (cli_find(opts, nopts, "--width")->seen && fmt != F_TERM)
        return cli_usage_error(NULL, "--width: applies to terminal output, not to %s",
                               formats[fmt].name);
    int use_color = 0;
    if (color && strcmp(color, "auto") && strcmp(color, "always") && strcmp(color, "never"))
        return cli_usage_error("--color takes auto, always or never", "--color: got \"%s\"", color);
    if (ascii && color && !strcmp(color, "always"))
        return cli_usage_error(NULL, "--ascii and --color always exclude each other");
    if (color && !strcmp(color, "always")) use_color = 1;
    else if (!ascii && !out && (!color || !strcmp(color, "auto"))) {
        use_color = cli_term_color();
    }

    /* --- load and check (exit 2 from here on) --- */
    run_state r;
    memset(&r, 0, sizeof r);
    if ((rc = cli_layer_load(&la, &r.l))) return rc;
    cli_layer *l = &r.l;
    mha_ctx *ctx = l->ctx;
    const int64_t H = l->H, L = l->L, S = l->S;
    if (has_head && head >= H) {
        rc = cli_fail("--head: got %lld, expected 0 .. %lld (the layer has %lld heads)", head,
                      (long long)H - 1, (long long)H);
        goto done;
    }
    if (batch >= l->B) {
        rc = cli_fail("--batch: got %lld, expected 0 .. %lld (the batch of --query)", batch,
                      (long long)l->B - 1);
        goto done;
    }
    if (tok && (rc = cli_tokens_load("--tokens", tok, L, "query position", &r.qt))) goto done;
    if (ktok && (rc = cli_tokens_load("--key-tokens", ktok, S, "key position", &r.kt))) goto done;

    /* --- compute: per-head weights [B, H, L, S] / [H, L, S] --- */
    if (cli_layer_weights_alloc(l, 1, &r.weights) != MHA_OK) {
        rc = cli_fail_lib(ctx, NULL);
        goto done;
    }
    mha_forward_opts fo = mha_forward_opts_default();
    fo.average_weights = 0;
    fo.save_for_backward = 0;
    if ((rc = cli_layer_forward(l, fo, &r.out, &r.weights))) goto done;

    /* --- draw --- */
    mha_viz_opts vo = mha_viz_opts_default();
    vo.view = has_head ? MHA_VIZ_HEAD : all ? MHA_VIZ_ALL : MHA_VIZ_AVERAGE;
    vo.head = has_head ? head : 0;
    if (tok) vo.query_tokens = (const char *const *)r.qt.tok;
    if (ktok) vo.key_tokens = (const char *const *)r.kt.tok;
    vo.key_positions = la.key != NULL; /* cross-attention: --tokens labels the queries only */
    vo.title = title;
    vo.term_mode = ascii       ? MHA_VIZ_TERM_ASCII
                   : use_color ? MHA_VIZ_TERM_COLOR
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
            st = mha_viz_term(ctx, w, H, L, S, &vo, cli_write_file, stdout);
            if (st == MHA_OK && fflush(stdout) != 0) {
                rc = cli_fail("writing to stdout failed");
                goto done;
            }
        }
    }
    /* the library names the field (the PNG's size error: "use a smaller opts.cell_px"), the
     * user typed the option */
    static const char *const names[][2] = {{"opts.cell_px", "--cell-px"}, {NULL, NULL}};
    if (st != MHA_OK) rc = cli_fail_lib_named(ctx, out ? out : "stdout", names);
done:
    run_free(&r);
    return rc;
}
