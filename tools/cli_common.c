/* cli_common.c - helpers every command of the mha tool shares: one-line error reporting,
 * option parsing, and loading/saving with messages that name the option at fault. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * Errors: always exactly one line ("mha: error: ..."), plus an optional "hint: ..." line
 * ------------------------------------------------------------------------------------------- */

/* Prints s with line breaks turned into spaces, so a message can never span lines. */
static void put_one_line(FILE *f, const char *s) {
    for (; *s; s++) fputc((*s == '\n' || *s == '\r') ? ' ' : *s, f);
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

int cli_fail_lib(const mha_ctx *ctx, const char *what) {
    const char *msg = mha_ctx_errmsg(ctx);
    if (!msg || !*msg) msg = "unknown failure";
    if (what) return cli_fail("%s: %s", what, msg);
    return cli_fail("%s", msg);
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
    if (o->kind == CLI_OPT_INT) {
        long long x = strtoll(v, &end, 10);
        if (end == v || *end || errno == ERANGE)
            return cli_usage_error(hint, "%s: \"%s\" is not a whole number", o->name, v);
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
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return CLI_HELP;
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
        if (*threads < 0 || *threads > 1 << 20) {
            mha_ctx_free(ctx);
            return cli_fail("--threads: got %lld, expected 0 (all cores) or a positive count",
                            *threads);
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
            return cli_fail("--isa: got \"%s\", expected auto, generic, avx2 or avx512", isa);
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

int cli_load_module(mha_ctx *ctx, const char *path, long long heads, mha_module **out) {
    *out = NULL;
    if (heads <= 0)
        return cli_fail("--heads: got %lld, expected a positive number of heads", heads);
    if (heads > INT32_MAX)
        return cli_fail("--heads: got %lld, expected at most %d", heads, (int)INT32_MAX);
    if (mha_module_create_from_file(ctx, path, (int64_t)heads, out) != MHA_OK) {
        *out = NULL;
        return cli_fail_lib(ctx, "--weights");
    }
    return 0;
}

static int load_npy(mha_ctx *ctx, const char *opt, const char *path, mha_array *out) {
    memset(out, 0, sizeof *out);
    if (mha_npy_load(ctx, path, out) != MHA_OK) {
        memset(out, 0, sizeof *out);
        return cli_fail_lib(ctx, opt);
    }
    return 0;
}

int cli_load_f32(mha_ctx *ctx, const char *opt, const char *path, mha_array *out) {
    int rc = load_npy(ctx, opt, path, out);
    if (rc) return rc;
    if (out->dtype != MHA_DTYPE_F32) {
        rc = cli_fail("%s: %s: dtype %s, expected float32 ('<f4')", opt, path,
                      mha_dtype_name(out->dtype));
        mha_array_free(out);
        return rc;
    }
    return 0;
}

int cli_load_mask(mha_ctx *ctx, const char *opt, const char *path, int allow_float,
                  mha_array *out) {
    int rc = load_npy(ctx, opt, path, out);
    if (rc) return rc;
    if (out->dtype == MHA_DTYPE_BOOL || (allow_float && out->dtype == MHA_DTYPE_F32)) return 0;
    rc = cli_fail("%s: %s: dtype %s, expected %s", opt, path, mha_dtype_name(out->dtype),
                  allow_float ? "bool (true = not allowed) or float32 (added to the scores)"
                              : "bool (true = ignore that key)");
    mha_array_free(out);
    return rc;
}

int cli_save_npy(mha_ctx *ctx, const char *opt, const char *path, const mha_array *a) {
    if (mha_npy_save(ctx, path, a) != MHA_OK) return cli_fail_lib(ctx, opt);
    return 0;
}

int cli_save_st(mha_ctx *ctx, const char *opt, const char *path, const mha_st *st) {
    if (mha_st_save(ctx, st, path) != MHA_OK) return cli_fail_lib(ctx, opt);
    return 0;
}

mha_tensor cli_array_tensor(mha_array *a) {
    return mha_tensor_make((float *)a->data, a->ndim, a->shape);
}

mha_status cli_tensor_to_array(mha_ctx *ctx, const mha_tensor *t, mha_array *out) {
    mha_status st = mha_array_alloc(ctx, MHA_DTYPE_F32, t->ndim, t->shape, out);
    if (st != MHA_OK) return st;
    int64_t n = mha_array_numel(out);
    if (n == 0) return MHA_OK;
    float *dst = (float *)out->data;
    int64_t idx[MHA_MAX_DIMS] = {0};
    /* Walk the elements in C order, following the view's strides. */
    for (int64_t e = 0; e < n; e++) {
        int64_t off = 0;
        for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
        dst[e] = t->data[off];
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d]) break;
            idx[d] = 0;
        }
    }
    return MHA_OK;
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
