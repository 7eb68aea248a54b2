/* cli_common.c - helpers every command of the mha tool shares: one-line error reporting,
 * option parsing, loading/saving with messages that name the option at fault, and the options,
 * loading and checks of one layer call (mha forward, backward and viz). */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * Errors: always exactly one line ("mha: error: ..."), plus an optional "hint: ..." line
 * ------------------------------------------------------------------------------------------- */

/* Prints s with line breaks turned into spaces, so a message can never span lines, and other
 * control characters (a file's tensor names may hold terminal escapes) as \xNN. */
static void put_one_line(FILE *f, const char *s) {
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '\n' || c == '\r') fputc(' ', f);
        else if (c < 0x20 || c == 0x7f) fprintf(f, "\\x%02x", c);
        else fputc(c, f);
    }
}

static void vreport(const char *fmt, va_list ap) {
    char buf[2048];
    vsnprintf(buf, sizeof buf, fmt, ap);
    fputs("mha: error: ", stderr);
    put_one_line(stderr, buf);
    fputc('\n', stderr);
}

int cli_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    return CLI_EXIT_RUNTIME;
}

int cli_usage_error(const char *hint, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    if (hint) {
        fputs("hint: ", stderr);
        put_one_line(stderr, hint);
        fputc('\n', stderr);
    }
    return CLI_EXIT_USAGE;
}

int cli_positive_float(double x) {
    const float f = (float)x;
    return x > 0 && f > 0 && isfinite(f);
}

int cli_fail_lib(const mha_ctx *ctx, const char *what) {
    const char *msg = mha_ctx_errmsg(ctx);
    if (!msg || !*msg) msg = "unknown failure";
    if (what) return cli_fail("%s: %s", what, msg);
    return cli_fail("%s", msg);
}

int cli_fail_lib_named(const mha_ctx *ctx, const char *what, const char *const (*names)[2]) {
    const char *msg = mha_ctx_errmsg(ctx);
    if (!msg || !*msg) return cli_fail_lib(ctx, what);
    char out[1024];
    size_t n = 0;
    while (*msg && n + 1 < sizeof out) {
        size_t k = 0;
        for (; names[k][0]; k++) { /* a whole name: not the start of a longer one */
            const size_t m = strlen(names[k][0]);
            if (!strncmp(msg, names[k][0], m) && !isalnum((unsigned char)msg[m]) && msg[m] != '_')
                break;
        }
        const char *put = names[k][0] ? names[k][1] : msg;
        size_t len = names[k][0] ? strlen(put) : 1;
        if (n + len >= sizeof out) break;
        memcpy(out + n, put, len);
        n += len;
        msg += names[k][0] ? strlen(names[k][0]) : 1;
    }
    out[n] = 0;
    if (what) return cli_fail("%s: %s", what, out);
    return cli_fail("%s", out);
}

char *cli_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = 0;
    if (cap == 0) return buf;
    buf[0] = '\0';
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* ---------------------------------------------------------------------------------------------
 * Option parsing
 * ------------------------------------------------------------------------------------------- */
static void help_hint(char *buf, size_t cap, const char *cmd) {
    snprintf(buf, cap, "mha %s --help lists the options", cmd);
}

int cli_missing(const char *cmd, const char *opt) {
    char hint[128];
    help_hint(hint, sizeof hint, cmd);
    return cli_usage_error(hint, "%s is required", opt);
}

const cli_opt *cli_find(const cli_opt *opts, int nopts, const char *name) {
    for (int i = 0; i < nopts; i++)
        if (!strcmp(opts[i].name, name)) return &opts[i];
    return NULL;
}

static int parse_value(const char *cmd, cli_opt *o, const char *v) {
    char hint[128];
    help_hint(hint, sizeof hint, cmd);
    if (o->kind == CLI_OPT_STRING) {
        if (!*v) return cli_usage_error(hint, "%s: empty value", o->name);
        *(const char **)o->dest = v;
        return 0;
    }
    char *end = NULL;
    errno = 0;
    if (isspace((unsigned char)*v)) /* strtoll / strtod would skip it */
        return cli_usage_error(hint, "%s: \"%s\" is not a number (it starts with a blank)", o->name,
                               v);
    if (o->kind == CLI_OPT_INT) {
        long long x = strtoll(v, &end, 10);
        if (end == v || *end || errno == ERANGE)
            return cli_usage_error(hint, "%s: \"%s\" is %s", o->name, v,
                                   errno == ERANGE ? "out of range" : "not a whole number");
        *(long long *)o->dest = x;
        return 0;
    }
    double x = strtod(v, &end);
    if (end == v || *end || errno == ERANGE || !isfinite(x))
        return cli_usage_error(hint, "%s: \"%s\" is not a finite number", o->name, v);
    *(double *)o->dest = x;
    return 0;
}

int cli_parse(int argc, char **argv, cli_opt *opts, int nopts) {
    const char *cmd = argc > 0 ? argv[0] : "?";
    char hint[128];
    help_hint(hint, sizeof hint, cmd);
    for (int i = 0; i < nopts; i++) opts[i].seen = 0;
    for (int i = 1; i < argc; i++) { /* --help anywhere an option may stand, not as a value */
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return CLI_HELP;
        if (strncmp(a, "--", 2) != 0 || strchr(a, '=')) continue;
        for (int k = 0; k < nopts; k++)
            if (!strcmp(opts[k].name, a) && opts[k].kind != CLI_OPT_FLAG && i + 1 < argc &&
                strncmp(argv[i + 1], "--", 2) != 0)
                i++; /* its value, whatever it reads */
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0')
            return cli_usage_error(hint, "unexpected argument \"%s\"", a);
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        cli_opt *o = NULL;
        for (int k = 0; k < nopts; k++)
            if (strlen(opts[k].name) == len && !strncmp(opts[k].name, a, len)) o = &opts[k];
        if (!o) return cli_usage_error(hint, "unknown option \"%.*s\"", (int)len, a);
        o->seen++;
        if (o->kind == CLI_OPT_FLAG) {
            if (eq) return cli_usage_error(hint, "%s takes no value", o->name);
            *(int *)o->dest = 1;
            continue;
        }
        const char *v;
        if (eq) {
            v = eq + 1;
        } else {
            if (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2))
                return cli_usage_error(hint, "%s needs a value", o->name);
            v = argv[++i];
        }
        int rc = parse_value(cmd, o, v);
        if (rc) return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Context, module, files
 * ------------------------------------------------------------------------------------------- */
int cli_isa_parse(const char *name, mha_isa *out) {
    static const mha_isa all[] = {MHA_ISA_AUTO, MHA_ISA_GENERIC, MHA_ISA_AVX2, MHA_ISA_AVX512};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (!strcmp(name, mha_isa_name(all[i]))) {
            *out = all[i];
            return 1;
        }
    return 0;
}

int cli_ctx_create(const long long *threads, const char *isa, mha_ctx **out) {
    mha_ctx *ctx = NULL;
    *out = NULL;
    mha_status st = mha_ctx_create(&ctx);
    if (st != MHA_OK) {
        int rc = cli_fail("%s", ctx ? mha_ctx_errmsg(ctx) : mha_last_errmsg());
        mha_ctx_free(ctx);
        return rc;
    }
    if (threads) {
        if (*threads < 0 || *threads > MHA_MAX_THREADS) {
            mha_ctx_free(ctx);
            return cli_usage_error(
                NULL, "--threads: got %lld, expected 0 (all cores) or 1 to %d (MHA_MAX_THREADS)",
                *threads, MHA_MAX_THREADS);
        }
        if (mha_ctx_set_threads(ctx, (int)*threads) != MHA_OK) {
            int rc = cli_fail_lib(ctx, "--threads");
            mha_ctx_free(ctx);
            return rc;
        }
    }
    if (isa) {
        mha_isa want;
        if (!cli_isa_parse(isa, &want)) {
            mha_ctx_free(ctx);
            return cli_usage_error(
                NULL, "--isa: got \"%s\", expected auto, generic, avx2 or avx512", isa);
        }
        if (mha_ctx_set_isa(ctx, want) != MHA_OK) {
            int rc = cli_fail_lib(ctx, "--isa");
            mha_ctx_free(ctx);
            return rc;
        }
    }
    *out = ctx;
    return 0;
}

/* The float32 module m as a new module of dtype dt (mha_module_copy: each parameter rounded
 * once, so a bf16 / f16 file's values come back with their own bits), replacing it. */
static mha_status module_to(mha_ctx *ctx, mha_module **m, mha_dtype dt) {
    mha_module *t = NULL;
    mha_status st = mha_module_copy(ctx, *m, dt, &t);
    if (st != MHA_OK) return st;
    mha_module_free(*m);
    *m = t;
    return MHA_OK;
}

int cli_load_module(mha_ctx *ctx, const char *path, const char *prefix, long long heads,
                    mha_dtype dt, mha_module **out) {
    *out = NULL;
    mha_st *st = NULL, *layer = NULL;
    if (mha_st_load(ctx, path, &st) != MHA_OK) return cli_fail_lib(ctx, "--weights");
    /* The layer first (converted once): which one is a choice of the command line. */
    mha_status s = mha_st_layer(ctx, st, prefix, &layer);
    mha_st_free(st);
    if (s == MHA_ERR_INVALID_ARG) return cli_usage_error(NULL, "--prefix: %s", mha_ctx_errmsg(ctx));
    if (s != MHA_OK) return cli_fail_lib(ctx, "--weights");
    mha_config cfg;
    int rc = 0;
    if (mha_module_config_from_st(ctx, layer, NULL, &cfg) != MHA_OK)
        rc = cli_fail_lib(ctx, "--weights");
    else if (!heads && !cfg.num_heads)
        rc = cli_usage_error("files written by mha record it; others need --heads",
                             "--heads is required: %s does not record the number of heads", path);
    else if (heads && cfg.num_heads && heads != cfg.num_heads)
        rc = cli_usage_error(
            "leave --heads out to use the file's number",
            "--heads: got %lld, expected %lld (the number of heads the layer in %s was saved with)",
            heads, (long long)cfg.num_heads, path);
    else if (heads && cfg.embed_dim % heads != 0)
        rc = cli_usage_error(NULL,
                             "--heads: got %lld, expected a divisor of the embedding size %lld",
                             heads, (long long)cfg.embed_dim);
    else if (mha_module_create_from_st(ctx, layer, NULL, heads, out) != MHA_OK ||
             (dt != MHA_DTYPE_F32 && module_to(ctx, out, dt) != MHA_OK))
        rc = cli_fail_lib(ctx, "--weights");
    mha_st_free(layer);
    if (rc) {
        mha_module_free(*out);
        *out = NULL;
    }
    return rc;
}

static int load_npy(mha_ctx *ctx, const char *opt, const char *path, mha_array *out) {
    memset(out, 0, sizeof *out);
    if (mha_npy_load(ctx, path, out) != MHA_OK) {
        memset(out, 0, sizeof *out);
        return cli_fail_lib(ctx, opt);
    }
    return 0;
}

/* The .npy code of a dtype the .npy reader returns, for messages ("'|u1'"). */
static const char *npy_code(mha_dtype dt) {
    static const char *const codes[] = {"'<f4'", "'|b1'", "'<i4'", "'<f8'", "'<f2'",
                                        "",      "'<i8'", "'|u1'", "'|i1'", "'<i2'",
                                        "'<u2'", "'<u4'", "'<u8'"};
    return (unsigned)dt < sizeof codes / sizeof codes[0] ? codes[dt] : "";
}

int cli_dtype_parse(const char *name, mha_dtype *out) {
    static const struct {
        const char *name;
        mha_dtype dt;
    } names[] = {{"f32", MHA_DTYPE_F32}, {"bf16", MHA_DTYPE_BF16}, {"f16", MHA_DTYPE_F16}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i].name)) {
            *out = names[i].dt;
            return 1;
        }
    return 0;
}

mha_status cli_array_to(mha_ctx *ctx, mha_array *a, mha_dtype dt) {
    if (a->dtype == dt) return MHA_OK;
    mha_array b;
    mha_status st = mha_array_alloc(ctx, dt, a->ndim, a->shape, &b);
    if (st != MHA_OK) return st;
    mha_tensor src = cli_array_tensor(a), dst = cli_array_tensor(&b);
    if (mha_array_numel(a) > 0 && (st = mha_tensor_convert(ctx, &src, &dst)) != MHA_OK) {
        mha_array_free(&b);
        return st;
    }
    mha_array_free(a);
    *a = b;
    return MHA_OK;
}

int cli_load_float(mha_ctx *ctx, const char *opt, const char *path, mha_dtype dt, mha_array *out) {
    int rc = load_npy(ctx, opt, path, out);
    if (rc) return rc;
    if (out->dtype != MHA_DTYPE_F32 && out->dtype != MHA_DTYPE_F16) {
        rc = cli_fail("%s: %s: dtype: got %s %s, expected float32 '<f4' or float16 '<f2'", opt,
                      path, npy_code(out->dtype), mha_dtype_name(out->dtype));
        mha_array_free(out);
        return rc;
    }
    if (cli_array_to(ctx, out, dt) != MHA_OK) {
        mha_array_free(out);
        return cli_fail_lib(ctx, opt);
    }
    return 0;
}

int cli_load_f32(mha_ctx *ctx, const char *opt, const char *path, mha_array *out) {
    return cli_load_float(ctx, opt, path, MHA_DTYPE_F32, out);
}

int cli_load_mask(mha_ctx *ctx, const char *opt, const char *path, int allow_float,
                  mha_array *out) {
    int rc = load_npy(ctx, opt, path, out);
    if (rc) return rc;
    if (out->dtype == MHA_DTYPE_BOOL || (allow_float && out->dtype == MHA_DTYPE_F32)) return 0;
    if (allow_float && out->dtype == MHA_DTYPE_F16) { /* float masks are float32 in the library */
        if (cli_array_to(ctx, out, MHA_DTYPE_F32) == MHA_OK) return 0;
        mha_array_free(out);
        return cli_fail_lib(ctx, opt);
    }
    rc = cli_fail("%s: %s: dtype: got %s %s, expected %s", opt, path, npy_code(out->dtype),
                  mha_dtype_name(out->dtype),
                  allow_float ? "bool '|b1' (true = not allowed) or float32 '<f4' / float16 "
                                "'<f2' (added to the scores)"
                              : "bool '|b1' (true = ignore that key)");
    mha_array_free(out);
    return rc;
}

int cli_outputs_add(cli_outputs *s, const char *opt, const char *path, int *index) {
    if (!s->o && mha_outputs_create(NULL, &s->o) != MHA_OK) return cli_fail_lib(NULL, opt);
    int n = mha_outputs_count(s->o), same = mha_outputs_find(s->o, path);
    if (same >= 0)
        return cli_usage_error("give each output its own file",
                               "%s and %s name the same file "
                               "(\"%s\")",
                               s->opt[same], opt, path);
    if (n >= CLI_MAX_OUTPUTS) /* a bug in the command, not the user's */
        return cli_fail("internal error: more than %d outputs", CLI_MAX_OUTPUTS);
    if (mha_outputs_add(NULL, s->o, path, index) != MHA_OK) return cli_fail_lib(NULL, opt);
    s->opt[n] = opt;
    return 0;
}

/* The option of output index, for messages. */
static const char *output_opt(const cli_outputs *s, int index) {
    return index >= 0 && index < CLI_MAX_OUTPUTS && s->opt[index] ? s->opt[index] : "output";
}

int cli_outputs_write_npy(mha_ctx *ctx, cli_outputs *s, int index, const mha_array *a) {
    if (mha_outputs_write_npy(ctx, s->o, index, a) != MHA_OK)
        return cli_fail_lib(ctx, output_opt(s, index));
    return 0;
}

int cli_outputs_write_st(mha_ctx *ctx, cli_outputs *s, int index, const mha_st *st) {
    if (mha_outputs_write_st(ctx, s->o, index, st) != MHA_OK)
        return cli_fail_lib(ctx, output_opt(s, index));
    return 0;
}

int cli_outputs_write(mha_ctx *ctx, cli_outputs *s, int index, mha_output_fn fn, void *arg) {
    if (mha_outputs_write(ctx, s->o, index, fn, arg) != MHA_OK)
        return cli_fail_lib(ctx, output_opt(s, index));
    return 0;
}

int cli_outputs_commit(mha_ctx *ctx, cli_outputs *s) {
    if (s->o && mha_outputs_commit(ctx, s->o) != MHA_OK) return cli_fail_lib(ctx, NULL);
    return 0;
}

void cli_outputs_free(cli_outputs *s) {
    mha_outputs_free(s->o);
    memset(s, 0, sizeof *s);
}

/* ---------------------------------------------------------------------------------------------
 * One layer call: the options, loading and checks mha forward, backward and viz share
 * ------------------------------------------------------------------------------------------- */
enum {
    LAYER_NOPTS = 14
};

/* cli_layer_parse, with --weights and --query required (need_layer) or not. */
static int layer_parse(int argc, char **argv, cli_layer_args *a, cli_opt *extra, int nextra,
                       int need_layer) {
    memset(a, 0, sizeof *a);
    if (nextra < 0 || nextra > CLI_LAYER_MAX_EXTRA) /* a bug in the command, not the user's */
        return cli_fail("internal error: %d options for %s, at most %d", nextra, argv[0],
                        CLI_LAYER_MAX_EXTRA);
    cli_opt opts[LAYER_NOPTS + CLI_LAYER_MAX_EXTRA] = {
        {"--weights", CLI_OPT_STRING, &a->weights, 0},
        {"--prefix", CLI_OPT_STRING, &a->prefix, 0},
        {"--heads", CLI_OPT_INT, &a->heads, 0},
        {"--query", CLI_OPT_STRING, &a->query, 0},
        {"--key", CLI_OPT_STRING, &a->key, 0},
        {"--value", CLI_OPT_STRING, &a->value, 0},
        {"--causal", CLI_OPT_FLAG, &a->causal, 0},
        {"--causal-bottom-right", CLI_OPT_FLAG, &a->causal_bottom_right, 0},
        {"--key-padding-mask", CLI_OPT_STRING, &a->key_padding_mask, 0},
        {"--attn-mask", CLI_OPT_STRING, &a->attn_mask, 0},
        {"--scale", CLI_OPT_FLOAT, &a->scale, 0},
        {"--threads", CLI_OPT_INT, &a->threads, 0},
        {"--isa", CLI_OPT_STRING, &a->isa, 0},
        {"--dtype", CLI_OPT_STRING, &a->dtype_name, 0},
    };
    for (int i = 0; i < nextra; i++) opts[LAYER_NOPTS + i] = extra[i];
    const int nopts = LAYER_NOPTS + nextra;
    int rc = cli_parse(argc, argv, opts, nopts);
    for (int i = 0; i < nextra; i++) extra[i].seen = opts[LAYER_NOPTS + i].seen;
    if (rc) return rc;
    a->heads_given = cli_find(opts, nopts, "--heads")->seen > 0;
    a->threads_given = cli_find(opts, nopts, "--threads")->seen > 0;
    a->scale_given = cli_find(opts, nopts, "--scale")->seen > 0;
    if (a->scale_given && !cli_positive_float(a->scale))
        return cli_usage_error("leave --scale out for the default 1/sqrt(head dim)",
                               "--scale: got %g, expected a positive number a float holds "
                               "(%g to %g)",
                               a->scale, (double)FLT_TRUE_MIN, (double)FLT_MAX);

    const char *cmd = argv[0];
    if (need_layer && !a->weights) return cli_missing(cmd, "--weights");
    if (a->heads_given && (a->heads < 1 || a->heads > INT32_MAX))
        return cli_usage_error("or leave --heads out when the weights file records it",
                               "--heads: got %lld, expected a positive number of heads", a->heads);
    if (need_layer && !a->query) return cli_missing(cmd, "--query");
    if (!a->key != !a->value)
        return cli_usage_error("give both --key and --value for cross-attention, or neither "
                               "for self-attention",
                               "%s given without %s", a->key ? "--key" : "--value",
                               a->key ? "--value" : "--key");
    if (a->causal && a->causal_bottom_right)
        return cli_usage_error(NULL, "--causal and --causal-bottom-right exclude each other");
    mha_isa isa;
    if (a->isa && !cli_isa_parse(a->isa, &isa))
        return cli_usage_error("--isa takes auto, generic, avx2 or avx512",
                               "--isa: unknown kernel path \"%s\"", a->isa);
    a->dtype = MHA_DTYPE_F32;
    if (a->dtype_name && !cli_dtype_parse(a->dtype_name, &a->dtype))
        return cli_usage_error("--dtype takes f32, bf16 or f16",
                               "--dtype: got \"%s\", expected f32, bf16 or f16", a->dtype_name);
    return 0;
}

int cli_layer_parse(int argc, char **argv, cli_layer_args *a, cli_opt *extra, int nextra) {
    return layer_parse(argc, argv, a, extra, nextra, 1);
}

int cli_layer_parse_optional(int argc, char **argv, cli_layer_args *a, cli_opt *extra, int nextra) {
    return layer_parse(argc, argv, a, extra, nextra, 0);
}

static int all_positive(const mha_array *a) {
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] < 1) return 0;
    return 1;
}

/* Checks an input of the layer: [B, N, feat] when batched, [N, feat] when not; batch < 0 (for
 * the query) accepts either and any B. */
static int check_input(const char *opt, const mha_array *a, int batched, int64_t batch,
                       int64_t feat, const char *feat_name) {
    char got[96];
    cli_shape_str(got, sizeof got, a->ndim, a->shape);
    int ok = a->ndim == (batched ? 3 : 2) && a->shape[a->ndim - 1] == feat && all_positive(a) &&
             (!batched || batch < 0 || a->shape[0] == batch);
    if (ok) return 0;
    if (batch < 0)
        return cli_fail("%s: shape %s, expected [B, L, %lld] or [L, %lld] (%s %lld from --weights, "
                        "B and L at least 1)",
                        opt, got, (long long)feat, (long long)feat, feat_name, (long long)feat);
    if (batched)
        return cli_fail(
            "%s: shape %s, expected [%lld, S, %lld] (batch of --query, %s %lld from --weights)",
            opt, got, (long long)batch, (long long)feat, feat_name, (long long)feat);
    return cli_fail(
        "%s: shape %s, expected [S, %lld] (unbatched like --query, %s %lld from --weights)", opt,
        got, (long long)feat, feat_name, (long long)feat);
}

/* cli_layer_load after the context: the module, the inputs, the masks. */
static int layer_load_inputs(const cli_layer_args *a, cli_layer *l) {
    mha_ctx *ctx = l->ctx;
    char got[96], want[96];
    int rc;
    l->dtype = a->dtype;
    if ((rc = cli_load_module(ctx, a->weights, a->prefix, a->heads, a->dtype, &l->module)))
        return rc;
    const mha_config *cfg = mha_module_config(l->module);
    const int64_t E = cfg->embed_dim, H = cfg->num_heads;
    const int64_t kdim = cfg->kdim ? cfg->kdim : E, vdim = cfg->vdim ? cfg->vdim : E;
    l->E = E;
    l->H = H;
    l->cross = a->key != NULL;
    if (!l->cross && (kdim != E || vdim != E))
        return cli_fail("--key/--value: missing: the layer in --weights has kdim %lld and vdim "
                        "%lld (not E = %lld), so self-attention is not possible",
                        (long long)kdim, (long long)vdim, (long long)E);

    if ((rc = cli_load_float(ctx, "--query", a->query, l->dtype, &l->query))) return rc;
    if ((rc = check_input("--query", &l->query, l->query.ndim == 3, -1, E, "embed_dim"))) return rc;
    const int batched = l->batched = l->query.ndim == 3;
    const int64_t B = l->B = batched ? l->query.shape[0] : 1;
    const int64_t L = l->L = l->query.shape[batched ? 1 : 0];
    int64_t S = L;
    if (l->cross) {
        if ((rc = cli_load_float(ctx, "--key", a->key, l->dtype, &l->key))) return rc;
        if ((rc = check_input("--key", &l->key, batched, batched ? B : 0, kdim, "kdim"))) return rc;
        if ((rc = cli_load_float(ctx, "--value", a->value, l->dtype, &l->value))) return rc;
        if ((rc = check_input("--value", &l->value, batched, batched ? B : 0, vdim, "vdim")))
            return rc;
        S = l->key.shape[batched ? 1 : 0];
        if (l->value.shape[batched ? 1 : 0] != S)
            return cli_fail("--value: %lld positions, expected %lld (the key length of --key)",
                            (long long)l->value.shape[batched ? 1 : 0], (long long)S);
    }
    l->S = S;

    l->mask.causal = a->causal                ? MHA_CAUSAL_TOP_LEFT
                     : a->causal_bottom_right ? MHA_CAUSAL_BOTTOM_RIGHT
                                              : MHA_CAUSAL_NONE;
    if (a->key_padding_mask) {
        if ((rc = cli_load_mask(ctx, "--key-padding-mask", a->key_padding_mask, 0, &l->kpm)))
            return rc;
        int64_t ws[2] = {B, S};
        int wn = batched ? 2 : 1;
        const int64_t *wp = batched ? ws : ws + 1;
        if (l->kpm.ndim != wn || memcmp(l->kpm.shape, wp, (size_t)wn * sizeof(int64_t)))
            return cli_fail("--key-padding-mask: shape %s, expected %s (%s)",
                            cli_shape_str(got, sizeof got, l->kpm.ndim, l->kpm.shape),
                            cli_shape_str(want, sizeof want, wn, wp),
                            batched ? "batch, key length" : "key length");
        l->mask.key_padding = (const uint8_t *)l->kpm.data;
    }
    if (a->attn_mask) {
        if ((rc = cli_load_mask(ctx, "--attn-mask", a->attn_mask, 1, &l->amask))) return rc;
        int64_t w2[2] = {L, S}, w3[3] = {batched ? B * H : H, L, S};
        if (l->amask.ndim == 2 && !memcmp(l->amask.shape, w2, sizeof w2)) {
            l->mask.attn_batched = 0;
        } else if (l->amask.ndim == 3 && !memcmp(l->amask.shape, w3, sizeof w3)) {
            l->mask.attn_batched = 1;
        } else {
            char want3[96];
            return cli_fail("--attn-mask: shape %s, expected %s (query length, key length) or %s "
                            "(%s, query length, key length)",
                            cli_shape_str(got, sizeof got, l->amask.ndim, l->amask.shape),
                            cli_shape_str(want, sizeof want, 2, w2),
                            cli_shape_str(want3, sizeof want3, 3, w3),
                            batched ? "batch*heads" : "heads");
        }
        if (l->amask.dtype == MHA_DTYPE_BOOL) l->mask.attn_bool = (const uint8_t *)l->amask.data;
        else l->mask.attn_float = (const float *)l->amask.data;
    }
    return 0;
}

int cli_layer_load(const cli_layer_args *a, cli_layer *l) {
    memset(l, 0, sizeof *l);
    l->mask = mha_mask_default();
    l->scale = (float)a->scale; /* (cli_layer_parse checked it) */
    int rc = cli_ctx_create(a->threads_given ? &a->threads : NULL, a->isa, &l->ctx);
    if (rc) return rc;
    if ((rc = layer_load_inputs(a, l))) cli_layer_free(l);
    return rc;
}

void cli_layer_free(cli_layer *l) {
    mha_array *arrs[] = {&l->query, &l->key, &l->value, &l->kpm, &l->amask};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) mha_array_free(arrs[i]);
    mha_module_free(l->module);
    mha_ctx_free(l->ctx);
    memset(l, 0, sizeof *l);
}

int cli_layer_out_shape(const cli_layer *l, int64_t shape[3]) {
    int64_t s[3] = {l->B, l->L, l->E};
    int n = l->batched ? 3 : 2;
    memcpy(shape, l->batched ? s : s + 1, (size_t)n * sizeof(int64_t));
    return n;
}

mha_status cli_layer_weights_alloc(const cli_layer *l, int per_head, mha_array *out) {
    int64_t ws[4] = {l->B, l->H, l->L, l->S}, wa[3] = {l->B, l->L, l->S};
    const int64_t *wp = per_head ? (l->batched ? ws : ws + 1) : (l->batched ? wa : wa + 1);
    int wn = (per_head ? 4 : 3) - (l->batched ? 0 : 1);
    return mha_array_alloc(l->ctx, MHA_DTYPE_F32, wn, wp, out);
}

int cli_layer_forward(cli_layer *l, mha_forward_opts fo, mha_array *out, mha_array *weights) {
    int64_t os[3];
    int on = cli_layer_out_shape(l, os);
    if (mha_array_alloc(l->ctx, l->dtype, on, os, out) != MHA_OK) return cli_fail_lib(l->ctx, NULL);
    fo.scale = l->scale;
    mha_tensor tq = cli_array_tensor(&l->query), ty = cli_array_tensor(out), tk, tv, tw;
    if (l->cross) {
        tk = cli_array_tensor(&l->key);
        tv = cli_array_tensor(&l->value);
    }
    if (weights) tw = cli_array_tensor(weights);
    if (mha_module_forward(l->ctx, l->module, &fo, &tq, l->cross ? &tk : NULL,
                           l->cross ? &tv : NULL, &l->mask, &ty, weights ? &tw : NULL) != MHA_OK ||
        cli_array_to(l->ctx, out, MHA_DTYPE_F32) != MHA_OK) /* outputs are float32 */
        return cli_fail_lib(l->ctx, NULL);
    return 0;
}

double cli_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int cli_write_file(void *user, const void *data, size_t size) {
    return fwrite(data, 1, size, (FILE *)user) == size ? 0 : 1;
}

mha_tensor cli_array_tensor(mha_array *a) {
    return mha_tensor_typed(a->data, a->dtype, a->ndim, a->shape, NULL);
}

mha_status cli_tensor_to_array(mha_ctx *ctx, const mha_tensor *t, mha_array *out) {
    mha_status st = mha_array_alloc(ctx, MHA_DTYPE_F32, t->ndim, t->shape, out);
    if (st != MHA_OK || mha_array_numel(out) == 0) return st;
    mha_tensor dst = cli_array_tensor(out);
    if ((st = mha_tensor_convert(ctx, t, &dst)) != MHA_OK) mha_array_free(out);
    return st;
}

int cli_term_width(long long opt) {
    long w = 0;
    if (opt > 0) w = (long)opt;
    const char *c = getenv("COLUMNS");
    if (!w && c && *c) {
        char *end;
        long v = strtol(c, &end, 10);
        if (!*end && v > 0) w = v;
    }
#ifdef TIOCGWINSZ
    struct winsize ws;
    if (!w && isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col)
        w = ws.ws_col;
#endif
    if (!w) w = 80;
    if (w < 40) w = 40;
    if (w > 100000) w = 100000;
    return (int)w;
}

int cli_term_color(void) {
    const char *nc = getenv("NO_COLOR"), *term = getenv("TERM");
    return isatty(STDOUT_FILENO) && !(nc && *nc) && !(term && !strcmp(term, "dumb"));
}
