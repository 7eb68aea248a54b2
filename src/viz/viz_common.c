/* viz_common.c - shared by the renderers: options, colour map, statistics, argument
 * validation, label clean-up, buffered output and the atomic file wrapper. */
#include "viz_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mha_viz_opts mha_viz_opts_default(void) {
    mha_viz_opts o;
    memset(&o, 0, sizeof o);
    o.view = MHA_VIZ_HEAD;
    o.term_mode = MHA_VIZ_TERM_UNICODE;
    return o;
}

/* Five anchors sampled from a perceptually uniform dark-blue → teal → green → yellow map. */
void mha_viz_color(float t, uint8_t rgb[3]) {
    static const uint8_t anchors[5][3] = {
        {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
    if (!(t > 0)) t = 0; /* also NaN */
    if (t > 1) t = 1;
    float x = t * 4;
    int i = (int)x;
    if (i > 3) i = 3;
    float f = x - (float)i;
    for (int c = 0; c < 3; c++) {
        float v = anchors[i][c] + f * ((float)anchors[i + 1][c] - (float)anchors[i][c]);
        rgb[c] = (uint8_t)lrintf(v);
    }
}

/* ---- validation ---------------------------------------------------------------------- */

static mha_status check_sizes(mha_ctx *ctx, const char *fn, const float *w, int64_t H, int64_t L,
                              int64_t S, size_t *numel) {
    if (!w)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: w: got NULL, expected [H, L, S] weights",
                        fn);
    if (H < 1 || L < 1 || S < 1)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: sizes: got H=%lld L=%lld S=%lld, expected each >= 1", fn, (long long)H,
                        (long long)L, (long long)S);
    size_t n;
    /* 2^31 elements is far beyond anything drawable; it also keeps int arithmetic safe. */
    if (!mha__mul_size((size_t)H, (size_t)L, &n) || !mha__mul_size(n, (size_t)S, &n) ||
        n > ((size_t)1 << 31))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: sizes: got H=%lld L=%lld S=%lld, expected at most 2^31 weights", fn,
                        (long long)H, (long long)L, (long long)S);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(w[i]))
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: w[%zu]: got %g, expected a finite weight", fn, i, (double)w[i]);
    *numel = n;
    return MHA_OK;
}

mha_status mha_viz_head_stats(mha_ctx *ctx, const float *w, int64_t H, int64_t L, int64_t S,
                              mha_viz_stats *stats) {
    mha__clear(ctx);
    size_t n;
    mha_status st = check_sizes(ctx, "mha_viz_head_stats", w, H, L, S, &n);
    if (st) return st;
    if (!stats)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "mha_viz_head_stats: stats: got NULL, expected an array of H");
    double *colsum = mha__calloc((size_t)S, sizeof *colsum);
    if (!colsum)
        return mha__err(ctx, MHA_ERR_NOMEM, "mha_viz_head_stats: out of memory (%lld keys)",
                        (long long)S);
    for (int64_t h = 0; h < H; h++) {
        const float *m = w + (size_t)h * (size_t)L * (size_t)S;
        double ent = 0, mx = 0;
        memset(colsum, 0, (size_t)S * sizeof *colsum);
        for (int64_t i = 0; i < L; i++) {
            const float *r = m + (size_t)i * (size_t)S;
            double sum = 0;
            for (int64_t j = 0; j < S; j++)
                if (r[j] > 0) sum += r[j];
            for (int64_t j = 0; j < S; j++) {
                colsum[j] += r[j];
                if (r[j] > mx) mx = r[j];
                if (r[j] > 0 && sum > 0) {
                    double p = r[j] / sum; /* renormalised: dropout leaves rows unnormalised */
                    ent -= p * log2(p);
                }
            }
        }
        int64_t top = 0;
        for (int64_t j = 1; j < S; j++)
            if (colsum[j] > colsum[top]) top = j;
        stats[h].entropy = ent / (double)L;
        stats[h].max_entropy = log2((double)S);
        stats[h].top_key = top;
        stats[h].top_key_mean = colsum[top] / (double)L;
        stats[h].max_weight = mx;
    }
    mha__free(colsum);
    return MHA_OK;
}

/* ---- labels ---------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 if invalid. */
static int utf8_len(const unsigned char *s) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int n;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07;
    else return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    /* C1 controls and U+2028/2029 (line separators) are not drawable either */
    if ((cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029) return -n;
    return n;
}

char *mha__viz_clean(const char *s, int ascii_only) {
    size_t len = strlen(s);
    char *r = mha__malloc(len + 1);
    if (!r) return NULL;
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    while (*p) {
        int n = utf8_len(p);
        if (n == 1) {
            r[o++] = (*p < 0x20 || *p == 0x7F) ? '?' : (char)*p;
            p++;
        } else if (n <= 0 || ascii_only) {
            r[o++] = '?';
            p += n < 0 ? -n : (n == 0 ? 1 : n);
        } else {
            memcpy(r + o, p, (size_t)n);
            o += (size_t)n;
            p += n;
        }
    }
    r[o] = 0;
    return r;
}

size_t mha__viz_cols(const char *s) {
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) n++;
    return n;
}

size_t mha__viz_prefix(const char *s, size_t max_cols) {
    size_t cols = 0, i = 0;
    for (; s[i]; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (cols == max_cols) break;
            cols++;
        }
    }
    return i;
}

/* ---- display widths -------------------------------------------------------------------- */

int mha__viz_cp_width(uint32_t cp) {
    /* [first, last] code point ranges, sorted. Wide: the East Asian Wide and Fullwidth blocks
     * and the common emoji blocks; zero: combining marks, zero-width space/joiners, bidi marks
     * and the emoji presentation selector. A fixed table, not the C locale: the output must
     * be the same on every machine. */
    static const uint32_t zero[][2] = {{0x0300, 0x036F}, {0x1AB0, 0x1AFF}, {0x1DC0, 0x1DFF},
                                       {0x200B, 0x200F}, {0x20D0, 0x20FF}, {0xFE0F, 0xFE0F},
                                       {0xFE20, 0xFE2F}};
    static const uint32_t wide[][2] = {{0x1100, 0x115F},   {0x2E80, 0x303E},   {0x3041, 0x33FF},
                                       {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},   {0xA000, 0xA4CF},
                                       {0xAC00, 0xD7A3},   {0xF900, 0xFAFF},   {0xFE30, 0xFE4F},
                                       {0xFF00, 0xFF60},   {0xFFE0, 0xFFE6},   {0x1F300, 0x1F64F},
                                       {0x1F900, 0x1F9FF}, {0x20000, 0x2FFFD}, {0x30000, 0x3FFFD}};
    if (cp < 0x300) return 1; /* ASCII and Latin-1: the common case */
    for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++)
        if (cp >= zero[i][0] && cp <= zero[i][1]) return 0;
    for (size_t i = 0; i < sizeof wide / sizeof wide[0]; i++)
        if (cp >= wide[i][0] && cp <= wide[i][1]) return 2;
    return 1;
}

size_t mha__viz_utf8_next(const char *s, uint32_t *cp) {
    const unsigned char *p = (const unsigned char *)s;
    int n = utf8_len(p);
    if (n < 0) n = -n;
    if (n <= 1) { /* ASCII, or an invalid byte (cleaned text has none): one column */
        *cp = n == 1 ? p[0] : '?';
        return 1;
    }
    uint32_t c = p[0] & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
    for (int i = 1; i < n; i++) c = (c << 6) | (p[i] & 0x3F);
    *cp = c;
    return (size_t)n;
}

size_t mha__viz_width(const char *s) {
    size_t cols = 0;
    while (*s) {
        uint32_t cp;
        s += mha__viz_utf8_next(s, &cp);
        cols += (size_t)mha__viz_cp_width(cp);
    }
    return cols;
}

size_t mha__viz_width_prefix(const char *s, size_t max_cols, size_t *cols_out) {
    size_t cols = 0, i = 0;
    while (s[i]) {
        uint32_t cp;
        size_t n = mha__viz_utf8_next(s + i, &cp);
        size_t w = (size_t)mha__viz_cp_width(cp);
        if (cols + w > max_cols) break; /* zero-width marks after a kept character stay */
        cols += w, i += n;
    }
    if (cols_out) *cols_out = cols;
    return i;
}

size_t mha__viz_cluster(const char *s, size_t *cols_out) {
    size_t i = 0, cols = 0;
    uint32_t cp;
    int base = 0;
    while (s[i]) {
        size_t n = mha__viz_utf8_next(s + i, &cp);
        int w = mha__viz_cp_width(cp);
        if (w > 0) {
            if (base) break;
            base = 1, cols = (size_t)w;
        }
        i += n;
    }
    if (cols_out) *cols_out = cols;
    return i;
}

/* ---- views ----------------------------------------------------------------------------- */

static void free_strs(char **a, int64_t n) {
    if (!a) return;
    for (int64_t i = 0; i < n; i++) mha__free(a[i]);
    mha__free(a);
}

void mha__viz_view_free(viz_view *v) {
    if (!v) return;
    mha__free(v->m);
    free_strs(v->titles, v->n);
    free_strs(v->qtok, v->L);
    free_strs(v->ktok, v->S);
    memset(v, 0, sizeof *v);
}

/* The automatic scale: vmin = min(0, smallest value), vmax = the largest of v->m. */
static void fit_scale(viz_view *v) {
    float lo = 0, hi = -INFINITY;
    for (size_t e = 0; e < (size_t)v->n * (size_t)v->R * (size_t)v->C; e++) {
        if (v->m[e] < lo) lo = v->m[e];
        if (v->m[e] > hi) hi = v->m[e];
    }
    v->vmin = lo;
    v->vmax = hi > lo ? hi : lo + 1;
}

float mha__viz_block_mean(const float *m, int64_t L, int64_t S, int64_t f, int64_t ci, int64_t cj) {
    const int64_t i0 = ci * f, j0 = cj * f;
    const int64_t i1 = i0 + f < L ? i0 + f : L, j1 = j0 + f < S ? j0 + f : S;
    double s = 0;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t j = j0; j < j1; j++) s += m[(size_t)i * (size_t)S + (size_t)j];
    return (float)(s / (double)((i1 - i0) * (j1 - j0)));
}

mha_status mha__viz_view_downsample(mha_ctx *ctx, const char *fn, viz_view *v, int64_t f) {
    if (f <= 1) return MHA_OK;
    const int64_t R = (v->L + f - 1) / f, C = (v->S + f - 1) / f;
    float *d = mha__malloc((size_t)v->n * (size_t)R * (size_t)C * sizeof *d);
    if (!d)
        return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (%lld x %lld blocks)", fn,
                        (long long)R, (long long)C);
    const size_t LS = (size_t)v->L * (size_t)v->S, RC = (size_t)R * (size_t)C;
    for (int p = 0; p < v->n; p++)
        for (int64_t i = 0; i < R; i++)
            for (int64_t j = 0; j < C; j++)
                d[(size_t)p * RC + (size_t)i * (size_t)C + (size_t)j] =
                    mha__viz_block_mean(v->m + (size_t)p * LS, v->L, v->S, f, i, j);
    mha__free(v->m);
    v->m = d, v->f = f, v->R = R, v->C = C;
    if (v->auto_scale) fit_scale(v);
    return MHA_OK;
}

static mha_status copy_tokens(mha_ctx *ctx, const char *fn, const char *what,
                              const char *const *src, int64_t n, int ascii_only, char ***out) {
    for (int64_t i = 0; i < n; i++)
        if (!src[i])
            return mha__err(ctx, MHA_ERR_INVALID_ARG,
                            "%s: opts.%s[%lld]: got NULL, expected a string", fn, what,
                            (long long)i);
    char **a = mha__calloc((size_t)n, sizeof *a);
    if (!a) return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (labels)", fn);
    for (int64_t i = 0; i < n; i++) {
        a[i] = mha__viz_clean(src[i], ascii_only);
        if (!a[i]) {
            free_strs(a, n);
            return mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (labels)", fn);
        }
    }
    *out = a;
    return MHA_OK;
}

mha_status mha__viz_view_make(mha_ctx *ctx, const char *fn, const float *w, int64_t H, int64_t L,
                              int64_t S, const mha_viz_opts *opts, int all_heads, int ascii_only,
                              viz_view *v) {
    memset(v, 0, sizeof *v);
    mha_viz_opts def = mha_viz_opts_default();
    if (!opts) opts = &def;
    size_t numel;
    mha_status st = check_sizes(ctx, fn, w, H, L, S, &numel);
    if (st) return st;
    if ((int)opts->view < MHA_VIZ_HEAD || (int)opts->view > MHA_VIZ_ALL)
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: opts.view: got %d, expected MHA_VIZ_HEAD, _AVERAGE or _ALL", fn,
                        (int)opts->view);
    if (opts->view == MHA_VIZ_HEAD && (opts->head < 0 || opts->head >= H))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: opts.head: got %lld, expected 0 <= head < %lld (H)", fn,
                        (long long)opts->head, (long long)H);
    if (!isfinite(opts->vmin) || !isfinite(opts->vmax))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: opts.vmin, vmax: got %g, %g, expected finite values", fn,
                        (double)opts->vmin, (double)opts->vmax);
    if (H > 4096 && (all_heads || opts->view == MHA_VIZ_ALL))
        return mha__err(ctx, MHA_ERR_INVALID_ARG,
                        "%s: H: got %lld, expected at most 4096 heads in a grid", fn, (long long)H);
    const char *const *kt = opts->key_tokens;
    if (!kt && opts->query_tokens && L == S && !opts->key_positions) kt = opts->query_tokens;

    v->H = H, v->L = L, v->S = S;
    v->n = (all_heads || opts->view == MHA_VIZ_ALL) ? (int)H : 1;
    v->title = opts->title;
    size_t LS = (size_t)L * (size_t)S;
    v->m = mha__malloc((size_t)v->n * LS * sizeof(float));
    v->titles = mha__calloc((size_t)v->n, sizeof(char *));
    if (!v->m || !v->titles) goto nomem;
    if (all_heads || opts->view == MHA_VIZ_ALL) {
        memcpy(v->m, w, numel * sizeof(float));
    } else if (opts->view == MHA_VIZ_HEAD) {
        memcpy(v->m, w + (size_t)opts->head * LS, LS * sizeof(float));
    } else {
        mha__viz_average(w, H, LS, v->m);
    }
    for (int p = 0; p < v->n; p++) {
        int64_t h = opts->view == MHA_VIZ_HEAD && !all_heads ? opts->head : p;
        char buf[64];
        const char *src = buf;
        if (v->n == 1 && opts->view == MHA_VIZ_AVERAGE && !all_heads)
            snprintf(buf, sizeof buf, "average of %lld head%s", (long long)H, H == 1 ? "" : "s");
        else if (opts->head_titles && opts->head_titles[h]) src = opts->head_titles[h];
        else snprintf(buf, sizeof buf, "head %lld", (long long)h);
        v->titles[p] = mha__viz_clean(src, ascii_only);
        if (!v->titles[p]) goto nomem;
    }
    if (opts->query_tokens &&
        (st = copy_tokens(ctx, fn, "query_tokens", opts->query_tokens, L, ascii_only, &v->qtok)))
        goto fail;
    if (kt && (st = copy_tokens(ctx, fn, opts->key_tokens ? "key_tokens" : "query_tokens", kt, S,
                                ascii_only, &v->ktok)))
        goto fail;

    v->f = 1, v->R = L, v->C = S;
    if (opts->vmax > opts->vmin) {
        v->vmin = opts->vmin, v->vmax = opts->vmax;
    } else {
        v->auto_scale = 1;
        fit_scale(v);
    }
    return MHA_OK;
nomem:
    st = mha__err(ctx, MHA_ERR_NOMEM, "%s: out of memory (%lld x %lld x %lld weights)", fn,
                  (long long)H, (long long)L, (long long)S);
fail:
    mha__viz_view_free(v);
    return st;
}

void mha__viz_average(const float *w, int64_t H, size_t LS, float *out) {
    for (size_t e = 0; e < LS; e++) {
        double s = 0;
        for (int64_t h = 0; h < H; h++) s += w[(size_t)h * LS + e];
        out[e] = (float)(s / (double)H);
    }
}

float mha__viz_norm(const viz_view *v, float x) {
    /* in double: the difference of two floats can overflow float (weights from -3e38 to 3e38
     * gave inf / inf, and a NaN shade index); a NaN t (a zero range) counts as 0 */
    const double t = ((double)x - v->vmin) / ((double)v->vmax - v->vmin);
    return t > 0 ? (t < 1 ? (float)t : 1.0f) : 0.0f;
}

/* ---- output ---------------------------------------------------------------------------- */

void mha__viz_out_init(viz_out *o, mha_write_fn fn, void *user) {
    o->fn = fn, o->user = user, o->failed = 0, o->n = 0;
}

static void flush(viz_out *o) {
    if (o->n && !o->failed && o->fn(o->user, o->buf, o->n) != 0) o->failed = 1;
    o->n = 0;
}

void mha__viz_put(viz_out *o, const void *data, size_t n) {
    const char *p = data;
    while (n && !o->failed) {
        if (o->n == sizeof o->buf) flush(o);
        size_t k = sizeof o->buf - o->n;
        if (k > n) k = n;
        memcpy(o->buf + o->n, p, k);
        o->n += k, p += k, n -= k;
    }
}

void mha__viz_puts(viz_out *o, const char *s) { mha__viz_put(o, s, strlen(s)); }

void mha__viz_printf(viz_out *o, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    mha__viz_put(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

mha_status mha__viz_out_finish(mha_ctx *ctx, const char *fn, viz_out *o) {
    flush(o);
    if (o->failed)
        return mha__err(ctx, MHA_ERR_IO, "%s: the write callback failed (returned nonzero)", fn);
    return MHA_OK;
}

void mha__viz_xml(viz_out *o, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': mha__viz_puts(o, "&amp;"); break;
        case '<': mha__viz_puts(o, "&lt;"); break;
        case '>': mha__viz_puts(o, "&gt;"); break;
        case '"': mha__viz_puts(o, "&quot;"); break;
        case '\'': mha__viz_puts(o, "&#39;"); break;
        default: mha__viz_put(o, s, 1);
        }
    }
}

/* ---- files ----------------------------------------------------------------------------- */

/* A renderer run into a staged output (mha_outputs, the public all-or-nothing writer). */
typedef struct {
    viz_render_fn render;
    const float *w;
    int64_t H, L, S;
    const mha_viz_opts *opts;
} render_job;

static mha_status render_job_write(mha_ctx *ctx, void *arg, mha_write_fn write, void *user) {
    const render_job *j = arg;
    return j->render(ctx, j->w, j->H, j->L, j->S, j->opts, write, user);
}

mha_status mha__viz_to_file(mha_ctx *ctx, const char *fn, viz_render_fn render, const float *w,
                            int64_t H, int64_t L, int64_t S, const mha_viz_opts *opts,
                            const char *path) {
    mha__clear(ctx);
    if (!path || !*path)
        return mha__err(ctx, MHA_ERR_INVALID_ARG, "%s: path: got %s, expected a file name", fn,
                        path ? "\"\"" : "NULL");
    render_job j = {render, w, H, L, S, opts};
    mha_outputs *o = NULL;
    int index = 0;
    mha_status st = mha_outputs_create(ctx, &o);
    if (!st) st = mha_outputs_add(ctx, o, path, &index);
    if (!st) st = mha_outputs_write(ctx, o, index, render_job_write, &j);
    if (!st) st = mha_outputs_commit(ctx, o);
    mha_outputs_free(o);
    if (st) { /* the wrapper's name first */
        char msg[MHA__MSG_CAP];
        snprintf(msg, sizeof msg, "%s", mha_ctx_errmsg(ctx));
        mha__err(ctx, st, "%s: %s", fn, msg);
    }
    return st;
}
